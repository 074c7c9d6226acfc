//! Request/response latency at a fixed rate, for the packet-rate harness: a UDP echo
//! server, and a probe that sends one request every `1/rate` seconds, waits for its
//! answer, and reports round-trip percentiles. One request in flight at a time, so the
//! figure is the path's latency, not a queue's.
//!
//! Usage: `udp-echo serve <ip> <port>`;
//! `udp-echo probe <ip> <port> <requests per second> <seconds>` prints one JSON line:
//! `{"sent": N, "answered": N, "p50_us": x, "p99_us": x}`.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "udp-echo serve <ip> <port> | udp-echo probe <ip> <port> <rate> <seconds>";
    let addr = |i: usize| -> SocketAddr {
        format!("{}:{}", args.get(i).expect(usage), args.get(i + 1).expect(usage))
            .parse()
            .expect("ip and port")
    };
    match args.get(1).map(String::as_str) {
        Some("serve") => serve(addr(2)),
        Some("probe") => {
            let rate: f64 = args.get(4).expect(usage).parse().expect("rate");
            let seconds: f64 = args.get(5).expect(usage).parse().expect("seconds");
            probe(addr(2), rate, seconds)
        }
        _ => panic!("{usage}"),
    }
}

fn serve(addr: SocketAddr) {
    let sock = UdpSocket::bind(addr).expect("bind");
    let mut buf = [0u8; 2048];
    loop {
        let (n, from) = sock.recv_from(&mut buf).expect("recv");
        let _ = sock.send_to(&buf[..n], from);
    }
}

fn probe(server: SocketAddr, rate: f64, seconds: f64) {
    let sock = UdpSocket::bind("0.0.0.0:0").expect("bind");
    sock.connect(server).expect("connect");
    let interval = Duration::from_secs_f64(1.0 / rate);
    let timeout = Duration::from_millis(100);
    let start = Instant::now();
    let mut rtts_ns: Vec<u64> = Vec::new();
    let mut sent = 0u64;
    let mut buf = [0u8; 64];
    while start.elapsed().as_secs_f64() < seconds {
        let slot = start + interval * sent as u32;
        if let Some(wait) = slot.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let request = sent.to_be_bytes();
        sent += 1;
        let t0 = Instant::now();
        if sock.send(&request).is_err() {
            continue;
        }
        // Wait for this request's answer; a late answer to an earlier one is skipped.
        loop {
            let left = timeout.saturating_sub(t0.elapsed());
            if left.is_zero() {
                break;
            }
            sock.set_read_timeout(Some(left)).expect("timeout");
            match sock.recv(&mut buf) {
                Ok(8) if buf[..8] == request => {
                    rtts_ns.push(t0.elapsed().as_nanos() as u64);
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    rtts_ns.sort_unstable();
    // JSON null when nothing came back.
    let pct = |p: f64| match rtts_ns.len() {
        0 => "null".to_string(),
        n => format!("{:.1}", rtts_ns[((n - 1) as f64 * p).round() as usize] as f64 / 1000.0),
    };
    println!(
        "{{\"sent\": {sent}, \"answered\": {}, \"p50_us\": {}, \"p99_us\": {}}}",
        rtts_ns.len(),
        pct(0.50),
        pct(0.99)
    );
}
