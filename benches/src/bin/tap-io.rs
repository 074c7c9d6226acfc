//! What one frame costs to write into and read from a TAP, with the switch's own path
//! (one `writev`/`readv` per frame, `TapQueue`) and with io_uring batches of the same
//! operations on the same file descriptor: the measurement behind keeping the TAP I/O on
//! plain system calls (docs/BENCHMARKS.md, "TAP I/O: system calls or io_uring").
//!
//! In a namespace of its own: a TAP (offloads on, as the switch makes them), up; written
//! frames carry a foreign destination MAC, so the kernel takes them in and drops them at
//! once and the figure is the TAP's write path; frames to read are queued by a packet
//! socket sending on the TAP. Each figure is the median of `--runs` runs (default 5) of
//! `--frames` frames (default 200 000), per frame, on the CPU the tool is pinned to.
//!
//! Usage (root): `cargo run --release -p vswitch-benches --bin tap-io -- [--runs N] [--frames N]`.

#![allow(unsafe_code)]

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use io_uring::{IoUring, opcode, types};
use vswitch_benches::node::median;
use vswitch_dataplane::frame::{DEFAULT_BUF_SIZE, FramePool};
use vswitch_dataplane::port::PortQueue;
use vswitch_dataplane::port::tap::{self, TapOptions, TapQueue};
use vswitch_dataplane::testing::FrameSpec;
use vswitch_dataplane::wire::MacAddr;
use vswitch_sys::netns::Netns as NsHandle;
use vswitch_testbed::{Netns, unique_prefix};

const BATCH: usize = 64;
const VNET_HDR: [u8; 12] = [0; 12];

fn frame() -> Vec<u8> {
    let (ours, foreign) = (MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2]));
    let ip = std::net::Ipv4Addr::new(10, 99, 0, 2);
    FrameSpec::udp(ours, foreign, ip, ip, 9000, 9).payload(&[0u8; 18]).build()
}

/// Nanoseconds per frame written with the switch's own TAP transmit (a `writev` each).
fn write_syscalls(q: &mut TapQueue, pool: &mut FramePool, bytes: &[u8], frames: usize) -> f64 {
    let mut batch = Vec::with_capacity(BATCH);
    let start = Instant::now();
    for _ in 0..frames / BATCH {
        batch.extend((0..BATCH).map(|_| pool.copy_of(bytes).expect("a buffer")));
        let out = q.tx_batch(&mut batch, pool);
        assert_eq!(out.sent, BATCH, "every frame written");
    }
    start.elapsed().as_nanos() as f64 / (frames / BATCH * BATCH) as f64
}

/// Nanoseconds per frame written as io_uring `writev`s, one submission per batch.
fn write_uring(ring: &mut IoUring, fd: RawFd, bytes: &[u8], frames: usize) -> f64 {
    let iov = [
        libc::iovec { iov_base: VNET_HDR.as_ptr() as *mut _, iov_len: VNET_HDR.len() },
        libc::iovec { iov_base: bytes.as_ptr() as *mut _, iov_len: bytes.len() },
    ];
    let start = Instant::now();
    for _ in 0..frames / BATCH {
        for _ in 0..BATCH {
            let entry = opcode::Writev::new(types::Fd(fd), iov.as_ptr(), 2).build();
            // SAFETY: the iovecs and the buffers they point to outlive the submission:
            // it is waited for below, before they go out of scope.
            unsafe { ring.submission().push(&entry).expect("room for a batch") };
        }
        ring.submit_and_wait(BATCH).expect("io_uring_enter");
        for done in ring.completion() {
            assert!(done.result() > 0, "write failed: {}", done.result());
        }
    }
    start.elapsed().as_nanos() as f64 / (frames / BATCH * BATCH) as f64
}

/// Queues `count` frames on the TAP for the switch to read (the kernel transmitting on it).
fn queue_frames(sock: RawFd, ifindex: i32, bytes: &[u8], count: usize) {
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    to.sll_family = libc::AF_PACKET as u16;
    to.sll_ifindex = ifindex;
    to.sll_halen = 6;
    for _ in 0..count {
        // SAFETY: `bytes` and `to` are valid for the lengths given.
        let sent = unsafe {
            libc::sendto(
                sock,
                bytes.as_ptr().cast(),
                bytes.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(sent, bytes.len() as isize, "{}", std::io::Error::last_os_error());
    }
}

/// Nanoseconds per frame read with the switch's own TAP receive (a `readv` each, and
/// the one that finds the queue empty), `BATCH` frames queued at a time.
fn read_syscalls(q: &mut TapQueue, pool: &mut FramePool, fill: &dyn Fn(usize), frames: usize) -> f64 {
    let mut batch = Vec::with_capacity(BATCH);
    let (mut spent, mut read) = (Duration::ZERO, 0);
    for _ in 0..frames / BATCH {
        fill(BATCH);
        let start = Instant::now();
        // Room for one more: the empty read that ends a batch is part of the cost.
        let got = q.rx_batch(pool, &mut batch, 2 * BATCH).expect("read");
        spent += start.elapsed();
        assert!(got >= BATCH, "read {got} of {BATCH}");
        read += got;
        batch.drain(..).for_each(|f| pool.put(f));
    }
    spent.as_nanos() as f64 / read as f64
}

/// The same as io_uring `readv`s, one submission per batch. A read of an empty TAP does
/// not complete with EAGAIN under io_uring (it waits for a frame), so exactly as many
/// reads as frames are queued: the most favourable case for io_uring.
fn read_uring(ring: &mut IoUring, fd: RawFd, fill: &dyn Fn(usize), frames: usize) -> f64 {
    let mut hdrs = [[0u8; 12]; BATCH];
    let mut bufs = vec![[0u8; DEFAULT_BUF_SIZE]; BATCH];
    let mut spent = Duration::ZERO;
    for _ in 0..frames / BATCH {
        fill(BATCH);
        let iovs: Vec<[libc::iovec; 2]> = hdrs
            .iter_mut()
            .zip(bufs.iter_mut())
            .map(|(h, b)| {
                [
                    libc::iovec { iov_base: h.as_mut_ptr().cast(), iov_len: h.len() },
                    libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() },
                ]
            })
            .collect();
        let start = Instant::now();
        for iov in &iovs {
            let entry = opcode::Readv::new(types::Fd(fd), iov.as_ptr(), 2).build();
            // SAFETY: the iovecs and buffers outlive the submission, waited for below.
            unsafe { ring.submission().push(&entry).expect("room for a batch") };
        }
        ring.submit_and_wait(BATCH).expect("io_uring_enter");
        let read = ring.completion().filter(|c| c.result() > 0).count();
        spent += start.elapsed();
        assert_eq!(read, BATCH);
    }
    spent.as_nanos() as f64 / (frames / BATCH * BATCH) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let runs: usize = arg("--runs").map_or(5, |v| v.parse().expect("--runs N"));
    let frames: usize = arg("--frames").map_or(200_000, |v| v.parse().expect("--frames N"));

    let ns = Netns::new(&unique_prefix("vstapio"));
    let handle = NsHandle::open(&ns.path()).expect("the namespace");
    let opts = TapOptions { queues: 1, offloads: true, mac: None, mtu: None };
    let mut q = handle.run(|| tap::create("tio0", &opts)).expect("setns").expect("a TAP").remove(0);
    // No IPv6 on it: the kernel's own solicitations would mix with the measured frames.
    ns.ok(&["sysctl", "-qw", "net.ipv6.conf.tio0.disable_ipv6=1"]);
    ns.ok(&["ip", "link", "set", "tio0", "up"]);
    let fd = q.readiness_fd().expect("a TAP has an fd");
    let bytes = frame();

    let (sock, ifindex) = handle
        .run(|| {
            // SAFETY: plain socket(2) and if_nametoindex(3) calls; the results are checked.
            let sock = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
            let ifindex = unsafe { libc::if_nametoindex(c"tio0".as_ptr()) } as i32;
            (sock, ifindex)
        })
        .expect("setns");
    assert!(sock >= 0 && ifindex > 0, "a packet socket on tio0");
    let fill = |n: usize| queue_frames(sock, ifindex, &bytes, n);
    // The kernel's own chatter (IPv6 router solicitations) out of the way.
    std::thread::sleep(Duration::from_millis(200));
    let mut pool = FramePool::standalone(DEFAULT_BUF_SIZE);
    let mut drain = Vec::new();
    while q.rx_batch(&mut pool, &mut drain, BATCH).map_or(0, |n| n) > 0 {
        drain.drain(..).for_each(|f| pool.put(f));
    }

    let mut ring: IoUring =
        IoUring::builder().setup_single_issuer().build(256).expect("io_uring (is it allowed?)");
    let mut figures = [Vec::new(), Vec::new(), Vec::new(), Vec::new()];
    for _ in 0..runs {
        figures[0].push(write_syscalls(&mut q, &mut pool, &bytes, frames));
        figures[1].push(write_uring(&mut ring, fd, &bytes, frames));
        figures[2].push(read_syscalls(&mut q, &mut pool, &fill, frames));
        figures[3].push(read_uring(&mut ring, fd, &fill, frames));
    }
    // SAFETY: our own socket, closed once.
    unsafe { libc::close(sock) };
    q.release_device().expect("release the TAP");

    let [wsys, wring, rsys, rring] = figures.map(median);
    println!(
        "| per frame, batches of {BATCH} | system call each (the switch's path) | io_uring, one submission per batch | io_uring vs system calls |"
    );
    println!("|---|---:|---:|---:|");
    println!("| write into the TAP | {wsys:.0} ns | {wring:.0} ns | {:.2}× |", wring / wsys);
    println!("| read from the TAP | {rsys:.0} ns | {rring:.0} ns | {:.2}× |", rring / rsys);
}
