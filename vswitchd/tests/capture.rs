//! `vswitchctl capture` end to end: frames between real pods captured as pcapng and read
//! back by tshark; bad requests refused before anything starts; a reader that stops
//! reading costs copies, not daemon memory.

mod harness;

use std::io::{Read, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use harness::testbed::{Scratch, unique_prefix, wait_until};
use harness::{Node, Pod};
use vswitch_api::Backend;

fn ip(host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, 1, host)
}

/// tshark's reading of `file`: one line per frame, `fields` separated by `|`.
fn tshark(file: &Path, fields: &[&str]) -> Vec<String> {
    let mut args = vec!["-r".to_string(), file.display().to_string(), "-T".into(), "fields".into()];
    for f in fields {
        args.extend(["-e".to_string(), f.to_string()]);
    }
    args.extend(["-E".into(), "separator=|".into()]);
    let out = std::process::Command::new("tshark").args(&args).output().expect("tshark runs");
    assert!(out.status.success(), "tshark: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).lines().map(str::to_string).collect()
}

/// The name the daemon gives `pod`'s port (stats, captures).
fn port_name(node: &Node, pod: &Pod) -> String {
    node.stats().ports.iter().find(|p| p.id == pod.port.id).expect("the pod's port").name.clone()
}

/// pcapng's direction flags as tshark prints them.
const INBOUND: &str = "0x00000001";
const OUTBOUND: &str = "0x00000002";

fn captures_open(node: &Node) -> usize {
    node.api(|c| async move { c.status().await }).expect("status").captures_open
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_ping_between_pods_is_captured_on_both_ports_with_its_directions() {
    let node = Node::start("cap", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Tap);
    let files = Scratch::new(&unique_prefix("capf"));
    let everywhere = files.0.join("all.pcapng");
    let at_a = files.0.join("a.pcapng");
    let mut all = node.start_capture(&["--filter", "icmp", "--count", "8"], &everywhere);
    let mut only_a = node.start_capture(&[&a.port.container_id, "--filter", "icmp", "--count", "4"], &at_a);
    assert_eq!(captures_open(&node), 2);
    assert!(a.ping(b.ip, 2));
    for (p, what) in [(&mut all, "every port"), (&mut only_a, "a's port")] {
        let out = p
            .wait_output(Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{what}: the capture ends at its count"));
        assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(String::from_utf8_lossy(&out.stderr).contains("frames written"), "{what}");
    }
    assert!(wait_until(Duration::from_secs(5), || captures_open(&node) == 0), "sessions closed at their end");

    let (name_a, name_b) = (port_name(&node, &a), port_name(&node, &b));
    let fields = ["frame.interface_name", "frame.packet_flags_direction", "icmp.type", "ip.src", "ip.dst"];
    let mut seen = tshark(&everywhere, &fields);
    seen.sort();
    let (req, rep) = (format!("8|{}|{}", a.ip, b.ip), format!("0|{}|{}", b.ip, a.ip));
    let mut wanted = Vec::new();
    for _ in 0..2 {
        wanted.push(format!("{name_a}|{INBOUND}|{req}")); // a's port received the request
        wanted.push(format!("{name_b}|{OUTBOUND}|{req}")); // b's port sent it
        wanted.push(format!("{name_b}|{INBOUND}|{rep}")); // b's port received the reply
        wanted.push(format!("{name_a}|{OUTBOUND}|{rep}")); // a's port sent it
    }
    wanted.sort();
    assert_eq!(seen, wanted, "tshark's reading of the capture of every port");
    let mut at_a_seen = tshark(&at_a, &fields);
    at_a_seen.sort();
    let mut wanted_a: Vec<String> =
        wanted.iter().filter(|l| l.starts_with(&format!("{name_a}|"))).cloned().collect();
    wanted_a.sort();
    assert_eq!(at_a_seen, wanted_a, "one port's capture");
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn bad_capture_requests_fail_before_anything_starts() {
    let node = Node::start("cbd", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let files = Scratch::new(&unique_prefix("cbdf"));
    let file = files.0.join("x.pcapng");
    let file_s = file.display().to_string();
    let refused = |args: &[&str], says: &str| {
        let out = node.ctl_output(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} refused");
        assert!(err.contains(says), "{args:?}: {err}");
    };
    refused(&["capture", "--filter", "tcp or udp", "-w", &file_s], "joined by `and`");
    refused(&["capture", "--filter", "host 10.0.0", "-w", &file_s], "not an IPv4 address");
    refused(&["capture", "no-such-pod", "-w", &file_s], "no port");
    refused(&["capture", "--drops", "bogus_reason", "-w", &file_s], "no reason");
    assert!(!file.exists(), "no file left by a refused capture");
    refused(&["capture", &a.port.container_id, "-w", "/nonexistent-vswitch-dir/x.pcapng"], "cannot write");
    assert_eq!(captures_open(&node), 0, "nothing started");
}

/// A client that asks for a capture of everything, and another for the flow log, and
/// both read nothing for 30 s while traffic flows: the daemon keeps at most its rings,
/// loses copies (counted in the capture's end), and the pods' traffic loses nothing.
#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn a_capture_client_that_reads_nothing_does_not_grow_the_daemon() {
    let node = Node::start("cslow", "");
    let a = node.pod("a", ip(2), Backend::Tap);
    let b = node.pod("b", ip(3), Backend::Tap);
    let rss_before = node.daemon_rss_kib();
    let mut conn = UnixStream::connect(&node.socket).expect("API socket");
    let body = r#"{"seconds": 30}"#;
    write!(
        conn,
        "POST /v1/capture HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request sent");
    assert!(wait_until(Duration::from_secs(5), || captures_open(&node) == 1));
    // And a flow log nobody reads, beside it.
    let mut flows_conn = UnixStream::connect(&node.socket).expect("API socket");
    write!(
        flows_conn,
        "POST /v1/flows HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("request sent");
    let flow_logs = || node.api(|c| async move { c.status().await }).expect("status").flow_logs_open;
    assert!(wait_until(Duration::from_secs(5), || flow_logs() == 1));
    // About 30 s of 1000-byte UDP at 5000 packets a second: 150 000 frames each way.
    let _server = b.ns.spawn(&["iperf3", "-s", "-1", "-p", "5201"]);
    assert!(wait_until(Duration::from_secs(5), || b.ns.ok(&["ss", "-ltn"]).contains(":5201")));
    let out = a.ns.ok(&[
        "iperf3",
        "-c",
        &b.ip.to_string(),
        "-p",
        "5201",
        "-u",
        "-b",
        "40M",
        "-l",
        "1000",
        "-t",
        "28",
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&out).expect("iperf3 JSON");
    let lost = json["end"]["sum"]["lost_percent"].as_f64().expect("lost_percent");
    assert!(lost < 1.0, "the traffic itself is not slowed by the capture: {lost}% lost");
    let rss_after = node.daemon_rss_kib();
    // The ring holds 4096 copies of ~1 KB; the rest went.
    assert!(
        rss_after < rss_before + 16 * 1024,
        "daemon memory grew from {rss_before} to {rss_after} KiB under a client reading nothing"
    );
    // Now read it all: the stream ends at its 30 s with the count of copies lost.
    conn.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer);
    let text_end = answer.windows(4).position(|w| w == b"\r\n\r\n").expect("headers") + 4;
    let pcapng = dechunk(&answer[text_end..]);
    let (frames, lost) = vswitch_api::capture_summary(&pcapng);
    assert!(lost > 0, "copies were lost ({frames} written)");
    assert!(frames < 20_000, "what waited was bounded: {frames} frames");
    assert!(wait_until(Duration::from_secs(5), || captures_open(&node) == 0));
    // The flow log ends at its 30 s too, with the iperf3 flow in it.
    flows_conn.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let mut answer = Vec::new();
    let _ = flows_conn.read_to_end(&mut answer);
    let text = String::from_utf8_lossy(&answer);
    assert!(text.contains(&format!("\"server\":\"{}:5201\"", b.ip)), "{}", &text[..text.len().min(2000)]);
    assert!(wait_until(Duration::from_secs(5), || flow_logs() == 0));
}

/// The body of an HTTP/1.1 chunked answer.
fn dechunk(mut bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = bytes.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(std::str::from_utf8(&bytes[..eol]).expect("hex size").trim(), 16)
            .expect("chunk size");
        if size == 0 || bytes.len() < eol + 2 + size {
            break;
        }
        out.extend_from_slice(&bytes[eol + 2..eol + 2 + size]);
        bytes = &bytes[eol + 2 + size + 2..];
    }
    out
}
