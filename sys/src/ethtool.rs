//! ethtool feature switches and channel counts, through the `SIOCETHTOOL` ioctl.
//!
//! AF_XDP copies raw frame bytes: a frame the pod's stack left with a partial checksum,
//! or a TSO super-frame, would reach the switch unfinished (or not fit a UMEM frame at
//! all). So the pod end of an AF_XDP veth pair has its transmit offloads switched off,
//! as any AF_XDP-based CNI does, and its stack sends finished, MTU-sized frames.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::os::fd::AsRawFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socket};

use super::{Context, SysError};

// Legacy ethtool commands taking a `struct ethtool_value` (<linux/ethtool.h>).
const ETHTOOL_STXCSUM: u32 = 0x17;
const ETHTOOL_SSG: u32 = 0x19;
const ETHTOOL_STSO: u32 = 0x1f;
const ETHTOOL_SGSO: u32 = 0x24;
const ETHTOOL_SGRO: u32 = 0x2c;
const ETHTOOL_GCHANNELS: u32 = 0x3c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct EthtoolChannels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// Runs the ethtool command whose `struct ethtool_*` (starting with its `cmd`) is `data`.
fn ethtool<T>(ifname: &str, data: &mut T) -> std::io::Result<()> {
    let sock = socket(AddressFamily::Inet, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None)?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    let name = ifname.as_bytes();
    if name.len() >= ifr.ifr_name.len() {
        return Err(std::io::Error::from_raw_os_error(libc::ENAMETOOLONG));
    }
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    ifr.ifr_ifru.ifru_data = (data as *mut T).cast();
    // SAFETY: SIOCETHTOOL reads `ifr` (a NUL-terminated name and a pointer to `data`,
    // a repr(C) ethtool struct of the kind its `cmd` names) and reads/writes `data`,
    // both alive and exclusively borrowed for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &raw mut ifr) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

fn set(ifname: &str, cmd: u32, data: u32) -> std::io::Result<()> {
    ethtool(ifname, &mut EthtoolValue { cmd, data })
}

/// How many receive queues `ifname` has (combined plus receive-only channels), in the
/// calling thread's namespace; 1 for a device that does not say.
pub fn rx_queues(ifname: &str) -> Result<u32, SysError> {
    let mut ch = EthtoolChannels { cmd: ETHTOOL_GCHANNELS, ..Default::default() };
    match ethtool(ifname, &mut ch) {
        Ok(()) => Ok((ch.rx_count + ch.combined_count).max(1)),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(1),
        Err(e) => Err(SysError::new(format!("ethtool: channels of {ifname}"), e)),
    }
}

/// Switches off transmit checksumming, scatter-gather, TSO, GSO and GRO on `ifname`
/// in the calling thread's namespace.
pub fn disable_offloads(ifname: &str) -> Result<(), SysError> {
    // Checksum first: TSO and SG depend on it and the kernel drops them along with it.
    for (cmd, what) in [
        (ETHTOOL_STXCSUM, "tx-checksumming"),
        (ETHTOOL_SSG, "scatter-gather"),
        (ETHTOOL_STSO, "tcp-segmentation-offload"),
        (ETHTOOL_SGSO, "generic-segmentation-offload"),
        (ETHTOOL_SGRO, "generic-receive-offload"),
    ] {
        set(ifname, cmd, 0).context(|| format!("ethtool: switching {what} off on {ifname}"))?;
    }
    Ok(())
}
