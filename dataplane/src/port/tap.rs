//! TAP ports: the switch holds the file descriptors of a TAP device whose network side
//! is the pod's interface (or, for the host port, an interface in the node's namespace).
//!
//! Devices are created with `tun-rs` as multi-queue (`IFF_MULTI_QUEUE`: one queue per
//! worker that serves the port, so the kernel spreads the pod's flows over workers and
//! every worker transmits on its own queue) and with `IFF_VNET_HDR`: each frame is
//! preceded by a virtio-net header, and with offloads on (`TUNSETOFFLOAD` checksum,
//! TSO4/6, USO) a pod's 64 KiB TCP segment crosses the switch as one super-frame.
//!
//! Devices are persistent (`TUNSETPERSIST`): when the daemon stops or dies, the pod keeps
//! its interface, addresses and routes, and a restarted daemon reopens the queues by
//! name from inside the pod's namespace ([`reopen`]).
//!
//! I/O is one `readv`/`writev` per frame: the kernel has no batch call for a TAP fd. A
//! receive reads until `EAGAIN` or the batch is full, so one epoll wake-up serves a
//! batch.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use tun_rs::{DeviceBuilder, Layer, SyncDevice};

use crate::frame::{Frame, FramePool, Offload};
use crate::queue::{Handover, PortError, PortQueue, TxOutcome};
use crate::wire::offload::{self, VNET_HDR_LEN};
use vswitch_sys::{Context, SysError};

// <linux/if_tun.h>
nix::ioctl_write_int!(tun_set_persist, b'T', 203);
nix::ioctl_write_int!(tun_set_offload, b'T', 208);
nix::ioctl_write_ptr!(tun_set_vnet_hdr_sz, b'T', 216, libc::c_int);
// TUNGETIFF is declared as reading an unsigned int but writes a whole struct ifreq.
nix::ioctl_read_bad!(
    tun_get_iff,
    nix::request_code_read!(b'T', 210, std::mem::size_of::<libc::c_uint>()),
    libc::ifreq
);

// TUNSETOFFLOAD flags (<linux/if_tun.h>; the UDP-tunnel ones since Linux 6.17).
const TUN_F_CSUM: u64 = 0x01;
const TUN_F_TSO4: u64 = 0x02;
const TUN_F_TSO6: u64 = 0x04;
const TUN_F_UDP_TUNNEL_GSO: u64 = 0x80;
const TUN_F_UDP_TUNNEL_GSO_CSUM: u64 = 0x100;

/// How to create a TAP.
#[derive(Clone, Debug)]
pub struct TapOptions {
    /// Queues to open (one per serving worker), 1..=256.
    pub queues: usize,
    /// Let the kernel hand over TSO/GSO super-frames and partial checksums.
    pub offloads: bool,
    pub mac: Option<[u8; 6]>,
    pub mtu: Option<u16>,
}

/// One queue of a TAP device.
pub struct TapQueue {
    /// Ours alone from creation on (tun-rs opens the device; it cannot adopt a queue
    /// with a virtio-net header, which a takeover needs: [`adopt`]).
    dev: OwnedFd,
    label: String,
    offloads: bool,
    /// A tunnel port's queue: the 32-byte header describing UDP-tunnel super-frames
    /// ([`enable_tunnel_offloads`]).
    tunnel: bool,
    /// A large buffer the next read spills into when a frame exceeds an ordinary one.
    spill: Option<Frame>,
}

/// The virtio-net header is always on (tun-rs enables it together with offloads);
/// without offloads the offload mask is cleared afterwards, so frames arrive finished.
fn builder(name: &str) -> DeviceBuilder {
    DeviceBuilder::new().name(name).layer(Layer::L2).multi_queue(true).offload(true)
}

fn set_persist(dev: &impl AsRawFd, on: bool) -> std::io::Result<()> {
    // SAFETY: TUNSETPERSIST takes the flag by value; the fd is a TAP device we own.
    unsafe { tun_set_persist(dev.as_raw_fd(), u64::from(on)) }.map(|_| ()).map_err(std::io::Error::from)
}

/// Opens the remaining queues after `first`. On failure a device this call made
/// persistent (`created`) is released again, so it vanishes with its fds.
fn finish_queues(
    first: SyncDevice,
    name: &str,
    opts: &TapOptions,
    created: bool,
) -> Result<Vec<TapQueue>, SysError> {
    let mut devs = vec![first];
    let opened = (|| {
        for q in 1..opts.queues {
            let dev = devs[0].try_clone().context(|| format!("opening queue {q} of TAP {name}"))?;
            devs.push(dev);
        }
        // After the clones: each one re-applies tun-rs's offload mask to the whole device.
        if !opts.offloads {
            // SAFETY: TUNSETOFFLOAD takes the flags by value; the fd is a TAP we own.
            unsafe { tun_set_offload(devs[0].as_raw_fd(), 0) }
                .map_err(std::io::Error::from)
                .context(|| format!("switching offloads off on TAP {name}"))?;
        }
        for dev in &devs {
            dev.set_nonblocking(true).context(|| format!("making TAP {name} non-blocking"))?;
        }
        Ok(())
    })();
    if let Err(e) = opened {
        if created {
            let _ = set_persist(&devs[0], false);
        }
        return Err(e);
    }
    Ok(devs
        .into_iter()
        .map(|dev| TapQueue {
            // SAFETY: into_raw_fd gives up the device's ownership of its open fd (tun-rs
            // keeps no copy and closes nothing after it).
            dev: unsafe { OwnedFd::from_raw_fd(dev.into_raw_fd()) },
            label: name.to_string(),
            offloads: opts.offloads,
            tunnel: false,
            spill: None,
        })
        .collect())
}

/// Creates the persistent TAP `name` in the calling thread's namespace (down) and opens
/// its queues. The device must not exist yet.
pub fn create(name: &str, opts: &TapOptions) -> Result<Vec<TapQueue>, SysError> {
    if nix::net::if_::if_nametoindex(name).is_ok() {
        return Err(SysError::new(
            format!("creating TAP {name}"),
            std::io::Error::from_raw_os_error(libc::EEXIST),
        ));
    }
    let mut b = builder(name).enable(false);
    if let Some(mac) = opts.mac {
        b = b.mac_addr(mac);
    }
    if let Some(mtu) = opts.mtu {
        b = b.mtu(mtu);
    }
    let first = b.build_sync().context(|| format!("creating TAP {name}"))?;
    // Not yet persistent: if this fails, dropping `first` removes the device.
    set_persist(&first, true).context(|| format!("making TAP {name} persistent"))?;
    finish_queues(first, name, opts, true)
}

/// Opens the queues of the existing TAP `name` in the calling thread's namespace, as it
/// is: address, MTU, MAC and up/down state untouched (a restarted daemon re-attaching).
pub fn reopen(name: &str, opts: &TapOptions) -> Result<Vec<TapQueue>, SysError> {
    // TUNSETIFF would create a fresh device if the name were free: check first.
    nix::net::if_::if_nametoindex(name)
        .map_err(std::io::Error::from)
        .context(|| format!("looking up TAP {name} to re-attach"))?;
    let first =
        builder(name).inherit_enable_state().build_sync().context(|| format!("re-attaching TAP {name}"))?;
    finish_queues(first, name, opts, false)
}

/// Makes the TAP of `queues` (all of one device, opened with offloads) a tunnel port:
/// a 32-byte virtio-net header that describes UDP-tunnel (VXLAN) super-frames both ways
/// (`TUN_F_UDP_TUNNEL_GSO`, Linux 6.17). An older kernel refuses it: the caller falls
/// back to another underlay.
pub fn enable_tunnel_offloads(queues: &mut [TapQueue]) -> Result<(), SysError> {
    let Some(first) = queues.first() else { return Ok(()) };
    let name = first.label.clone();
    let size = offload::TUNNEL_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one int through the pointer, which is live for the
    // call; the fd is a TAP we own. The size is the device's, for all its queues.
    unsafe { tun_set_vnet_hdr_sz(first.dev.as_raw_fd(), &size) }
        .map_err(std::io::Error::from)
        .context(|| format!("setting a {size}-byte virtio-net header on TAP {name}"))?;
    let flags = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_UDP_TUNNEL_GSO | TUN_F_UDP_TUNNEL_GSO_CSUM;
    // SAFETY: TUNSETOFFLOAD takes the flags by value; the fd is a TAP we own.
    unsafe { tun_set_offload(first.dev.as_raw_fd(), flags) }
        .map_err(std::io::Error::from)
        .context(|| format!("enabling UDP-tunnel offloads on TAP {name}"))?;
    for q in queues.iter_mut() {
        q.tunnel = true;
        q.offloads = true;
    }
    Ok(())
}

/// Takes a queue a previous daemon handed over ([`Handover::Tap`]) if it is one: a
/// multi-queue TAP with a virtio-net header, named `name`. Anything else is closed.
pub fn adopt(fd: OwnedFd, name: &str, offloads: bool, tunnel: bool) -> Result<TapQueue, SysError> {
    let ctx = || format!("adopting a queue of TAP {name}");
    // /dev/net/tun (character device 10:200) first: another driver could read the
    // ioctl below as something else.
    let stat = nix::sys::stat::fstat(&fd).map_err(std::io::Error::from).context(ctx)?;
    let is_tun = stat.st_mode & libc::S_IFMT == libc::S_IFCHR
        && libc::major(stat.st_rdev) == 10
        && libc::minor(stat.st_rdev) == 200;
    if !is_tun {
        return Err(SysError::new(
            ctx(),
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "the fd is not a queue of /dev/net/tun"),
        ));
    }
    // SAFETY: ifreq is plain C data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: the fd is /dev/net/tun's (checked above), whose TUNGETIFF writes one
    // struct ifreq through the pointer, live for the call (EBADFD on a queue not
    // attached to a device, without writing).
    unsafe { tun_get_iff(fd.as_raw_fd(), &mut req) }.map_err(std::io::Error::from).context(ctx)?;
    // SAFETY: a successful TUNGETIFF leaves a NUL-terminated name in ifr_name.
    let found = unsafe { std::ffi::CStr::from_ptr(req.ifr_name.as_ptr()) }.to_string_lossy().into_owned();
    // SAFETY: TUNGETIFF filled the flags member of the union.
    let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags });
    let wanted = libc::IFF_TAP | libc::IFF_MULTI_QUEUE | libc::IFF_VNET_HDR;
    if found != name || flags & wanted != wanted {
        return Err(SysError::new(
            ctx(),
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the fd is a queue of {found:?} (flags {flags:#x}), not a multi-queue TAP {name} with a virtio-net header"
                ),
            ),
        ));
    }
    // The previous daemon made it non-blocking; the flag belongs to the open file,
    // which is shared, but setting it again costs nothing and assumes nothing.
    nix::fcntl::fcntl(&fd, nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK))
        .map_err(std::io::Error::from)
        .context(ctx)?;
    Ok(TapQueue { dev: fd, label: name.to_string(), offloads, tunnel, spill: None })
}

impl TapQueue {
    /// The name used in errors and logs (e.g. the pod and interface it serves).
    pub fn set_label(&mut self, label: String) {
        self.label = label;
    }

    /// Makes the device disappear when its last queue closes (undoes persistence).
    pub fn release_device(&self) -> Result<(), SysError> {
        set_persist(&self.dev, false).context(|| format!("releasing TAP {}", self.label))
    }

    fn error(&self, op: &'static str, source: std::io::Error) -> PortError {
        PortError { port: self.label.clone(), op, source }
    }
}

impl PortQueue for TapQueue {
    fn rx_batch(
        &mut self,
        pool: &mut FramePool,
        batch: &mut Vec<Frame>,
        max: usize,
    ) -> Result<usize, PortError> {
        let mut n = 0;
        while n < max {
            let mut frame = pool.get();
            let spill = self.spill.get_or_insert_with(|| pool.get_large());
            let small_cap = frame.capacity();
            let mut hdr = [0u8; offload::TUNNEL_HDR_LEN];
            let hdr_len = if self.tunnel { offload::TUNNEL_HDR_LEN } else { VNET_HDR_LEN };
            let read = {
                let mut iov = [
                    IoSliceMut::new(&mut hdr[..hdr_len]),
                    IoSliceMut::new(frame.spare_mut()),
                    IoSliceMut::new(spill.spare_from_mut(small_cap)),
                ];
                nix::sys::uio::readv(self.dev.as_fd(), &mut iov).map_err(std::io::Error::from)
            };
            let len = match read {
                Ok(len) if len > hdr_len => len - hdr_len,
                Ok(_) => {
                    // Shorter than the header: passed on empty, so the pipeline counts it
                    // (as truncated_ethernet) like any other runt.
                    frame.set_len(0);
                    batch.push(frame);
                    n += 1;
                    continue;
                }
                Err(e) => {
                    pool.put(frame);
                    // Only an empty queue may end a batch short: the worker reads this
                    // queue again only after its next readiness edge.
                    match e.kind() {
                        std::io::ErrorKind::WouldBlock => break,
                        std::io::ErrorKind::Interrupted => continue,
                        _ => {}
                    }
                    return Err(self.error("read", e));
                }
            };
            if len > small_cap {
                // The frame continues in the spill buffer: move its head there and keep
                // that one; the ordinary buffer goes back.
                frame.set_len(small_cap);
                let mut big = self.spill.take().expect("inserted above");
                big.spare_mut()[..small_cap].copy_from_slice(frame.data());
                big.set_len(len);
                pool.put(frame);
                frame = big;
            } else {
                frame.set_len(len);
            }
            frame.offload = if hdr[..VNET_HDR_LEN] == [0; VNET_HDR_LEN] {
                Offload::NONE
            } else if self.tunnel {
                offload::decode_tunnel(&hdr, frame.data()).unwrap_or(Offload::INVALID)
            } else {
                let legacy: &[u8; VNET_HDR_LEN] = hdr[..VNET_HDR_LEN].try_into().expect("a prefix");
                offload::decode(legacy, frame.data()).unwrap_or(Offload::INVALID)
            };
            batch.push(frame);
            n += 1;
        }
        Ok(n)
    }

    fn tx_batch(&mut self, frames: &mut Vec<Frame>, pool: &mut FramePool) -> TxOutcome {
        let mut out = TxOutcome::default();
        for mut frame in frames.drain(..) {
            if frame.offload.is_pending() && !self.offloads {
                // Offloads were switched off after the frame was routed here: finish it.
                let mut off = frame.offload;
                offload::complete_checksum(frame.data_mut(), &mut off);
                frame.offload = off;
            }
            let mut hdr = [0u8; offload::TUNNEL_HDR_LEN];
            let hdr: &[u8] = if self.tunnel {
                hdr = offload::encode_tunnel(&frame.offload, frame.data());
                &hdr
            } else {
                if frame.offload != Offload::NONE {
                    hdr[..VNET_HDR_LEN].copy_from_slice(&offload::encode(&frame.offload, frame.data()));
                }
                &hdr[..VNET_HDR_LEN]
            };
            match nix::sys::uio::writev(self.dev.as_fd(), &[IoSlice::new(hdr), IoSlice::new(frame.data())])
                .map_err(std::io::Error::from)
            {
                Ok(_) => {
                    out.sent += 1;
                    out.sent_bytes += frame.len() as u64;
                }
                // The interface is down or its queue is full: the frame is lost, as on
                // a NIC.
                Err(_) => out.dropped += 1,
            }
            pool.put(frame);
        }
        out
    }

    fn name(&self) -> &str {
        &self.label
    }

    fn readiness_fd(&self) -> Option<RawFd> {
        Some(self.dev.as_raw_fd())
    }

    fn handover(&self) -> Option<Handover<'_>> {
        Some(Handover::Tap { fd: self.dev.as_fd(), offloads: self.offloads, tunnel: self.tunnel })
    }

    fn release(&mut self) -> Result<(), PortError> {
        set_persist(&self.dev, false).map_err(|e| self.error("release", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{arp_reply, mac};
    use crate::wire::{Net, parse};
    use std::net::Ipv4Addr;
    use std::time::{Duration, Instant};
    use vswitch_sys::netns::Netns as NsHandle;
    use vswitch_testbed::{Netns, unique_prefix};

    /// Receives from any of `queues` until `pred` accepts a frame or 5 s pass.
    fn receive_until(queues: &mut [TapQueue], pool: &mut FramePool, pred: impl Fn(&Frame) -> bool) -> Frame {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut batch = Vec::new();
        while Instant::now() < deadline {
            for q in queues.iter_mut() {
                q.rx_batch(pool, &mut batch, 32).unwrap();
            }
            if let Some(i) = batch.iter().position(&pred) {
                return batch.swap_remove(i);
            }
            batch.clear();
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("no matching frame from the TAP within 5 s");
    }

    /// The kernel side of a TAP talks ARP with us through its queues: what it sends
    /// arrives whole with an empty virtio header, what we send it learns from.
    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn frames_cross_a_real_tap_both_ways() {
        let ns = Netns::new(&unique_prefix("vttap"));
        let handle = NsHandle::open(&ns.path()).unwrap();
        let opts = TapOptions { queues: 2, offloads: true, mac: Some(mac(0x10).0), mtu: Some(1400) };
        let mut queues = handle.run(|| create("vt0", &opts)).unwrap().unwrap();
        assert_eq!(queues.len(), 2);
        assert!(handle.run(|| create("vt0", &opts)).unwrap().is_err(), "an existing name is refused");
        ns.ok(&["ip", "addr", "add", "10.9.0.1/24", "dev", "vt0"]);
        ns.ok(&["ip", "link", "set", "vt0", "up"]);
        let link = ns.ok(&["ip", "link", "show", "vt0"]);
        assert!(link.contains("mtu 1400") && link.contains(&mac(0x10).to_string()), "{link}");

        // The kernel resolves 10.9.0.2: its ARP request comes out of one of our queues.
        let _ping = ns.spawn(&["ping", "-c", "3", "-W", "1", "10.9.0.2"]);
        let mut pool = FramePool::standalone(crate::frame::DEFAULT_BUF_SIZE);
        let req = receive_until(
            &mut queues,
            &mut pool,
            |f| matches!(parse(f.data()).map(|m| m.net), Ok(Net::Arp(a)) if a.target_ip == Ipv4Addr::new(10, 9, 0, 2)),
        );
        assert_eq!(req.offload, Offload::NONE);

        // We answer on queue 1; the kernel's neighbour table shows the answer.
        let reply = arp_reply(mac(0x20), Ipv4Addr::new(10, 9, 0, 2), mac(0x10), Ipv4Addr::new(10, 9, 0, 1));
        let mut out = vec![pool.copy_of(&reply).unwrap()];
        assert_eq!(queues[1].tx_batch(&mut out, &mut pool).sent, 1);
        let learned = vswitch_testbed::wait_until(Duration::from_secs(5), || {
            ns.ok(&["ip", "neigh", "show", "10.9.0.2"]).contains(&mac(0x20).to_string())
        });
        assert!(learned, "{}", ns.ok(&["ip", "neigh"]));

        // Persistent: the device outlives its queues until released.
        queues[0].release_device().unwrap();
        drop(queues);
        assert!(vswitch_testbed::wait_until(Duration::from_secs(5), || ns
            .run(&["ip", "link", "show", "vt0"])
            .status
            .code()
            != Some(0)));
    }

    /// A takeover's queue: frames the kernel queued before the hand-over are read by
    /// the adopter, which sends through it too; an fd of another device, or no TAP at
    /// all, is refused (and closed).
    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn a_handed_over_queue_keeps_its_frames() {
        let ns = Netns::new(&unique_prefix("vttap"));
        let handle = NsHandle::open(&ns.path()).unwrap();
        let opts = TapOptions { queues: 1, offloads: true, mac: Some(mac(0x10).0), mtu: None };
        let queues = handle.run(|| create("vt0", &opts)).unwrap().unwrap();
        ns.ok(&["ip", "addr", "add", "10.9.0.1/24", "dev", "vt0"]);
        ns.ok(&["ip", "link", "set", "vt0", "up"]);
        // Queued while nobody reads: the ARP requests of a ping.
        let _ping = ns.spawn(&["ping", "-c", "2", "-W", "1", "10.9.0.2"]);
        std::thread::sleep(Duration::from_millis(300));
        let Some(Handover::Tap { fd, offloads: true, tunnel: false }) = queues[0].handover() else {
            panic!("a TAP queue hands over its fd and settings")
        };
        let fd = fd.try_clone_to_owned().unwrap();
        assert!(adopt(fd.try_clone().unwrap(), "vt1", true, false).is_err(), "another name");
        let null = OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let refused = adopt(null, "vt0", true, false).err().unwrap().to_string();
        assert!(
            refused.contains("adopting a queue of TAP vt0") && refused.contains("not a queue"),
            "{refused}"
        );
        let adopted = adopt(fd, "vt0", true, false).unwrap();
        drop(queues);
        let mut pool = FramePool::standalone(crate::frame::DEFAULT_BUF_SIZE);
        let mut adopted = [adopted];
        receive_until(&mut adopted, &mut pool, |f| matches!(parse(f.data()).map(|m| m.net), Ok(Net::Arp(_))));
        let reply = arp_reply(mac(0x20), Ipv4Addr::new(10, 9, 0, 2), mac(0x10), Ipv4Addr::new(10, 9, 0, 1));
        let mut out = vec![pool.copy_of(&reply).unwrap()];
        assert_eq!(adopted[0].tx_batch(&mut out, &mut pool).sent, 1);
        adopted[0].release_device().unwrap();
    }

    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn offloads_stay_off_on_every_queue() {
        let ns = Netns::new(&unique_prefix("vttap"));
        let handle = NsHandle::open(&ns.path()).unwrap();
        let opts = TapOptions { queues: 3, offloads: false, mac: None, mtu: None };
        let queues = handle.run(|| create("vt0", &opts)).unwrap().unwrap();
        let features = ns.ok(&["ethtool", "-k", "vt0"]);
        assert!(features.contains("tcp-segmentation-offload: off"), "{features}");
        assert!(features.contains("tx-checksumming: off"), "{features}");
        queues[0].release_device().unwrap();
    }

    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn reopen_finds_the_device_or_refuses() {
        let ns = Netns::new(&unique_prefix("vttap"));
        let handle = NsHandle::open(&ns.path()).unwrap();
        let opts = TapOptions { queues: 1, offloads: false, mac: None, mtu: None };
        assert!(handle.run(|| reopen("vt0", &opts)).unwrap().is_err(), "no device: no new one either");
        assert!(ns.run(&["ip", "link", "show", "vt0"]).status.code() != Some(0));
        let first = handle.run(|| create("vt0", &opts)).unwrap().unwrap();
        drop(first); // persistent: still there
        let again = handle.run(|| reopen("vt0", &TapOptions { queues: 3, ..opts.clone() })).unwrap().unwrap();
        assert_eq!(again.len(), 3);
        again[0].release_device().unwrap();
    }
}
