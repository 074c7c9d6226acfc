//! What a pod's CNI ADD costs: vswitch-cni against the reference `bridge` plugin
//! (containernetworking-plugins), both with `host-local` IPAM, on the same machine in
//! the same run.
//!
//! Each plugin is executed as a runtime does, through `nsenter --net=<node>` so its host
//! side is a node namespace of ours; the CPU time (user + system) of the plugin and its
//! IPAM child comes from `getrusage(RUSAGE_CHILDREN)` around each call, minus the cost of
//! `nsenter … true` measured the same way. vswitch-cni hands the kernel work (creating
//! and moving the interface) to vswitchd, so vswitchd's CPU per ADD is reported too.
//!
//! Usage (root): `cargo run --release -p vswitch-benches --bin cni-add-cost -- [--pods N]`

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::resource::{UsageWho, getrusage};
use vswitch_benches::node::sibling_binary;
use vswitch_testbed::{Netns, Process, Scratch, unique_prefix, wait_until};

fn children_cpu() -> f64 {
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

/// Runs `program` in `node`'s namespace with `env` and `stdin`; returns (CPU s, wall s, ok).
fn run(node: &Netns, program: &Path, env: &[(&str, String)], stdin: &str) -> (f64, f64, bool) {
    let cpu0 = children_cpu();
    let t0 = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net={}", node.path().display()))
        .arg("--")
        .arg(program)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nsenter runs");
    child.stdin.take().expect("piped").write_all(stdin.as_bytes()).expect("stdin");
    let out = child.wait_with_output().expect("waits");
    if !out.status.success() {
        eprintln!("{} failed: {}", program.display(), String::from_utf8_lossy(&out.stdout));
    }
    (children_cpu() - cpu0, t0.elapsed().as_secs_f64(), out.status.success())
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn daemon_cpu(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

struct Row {
    name: &'static str,
    cpu_add: f64,
    wall_add: f64,
    cpu_del: f64,
    daemon_per_add: Option<f64>,
}

fn measure(
    name: &'static str,
    node: &Netns,
    plugin: &Path,
    conf: &str,
    pods: &[Netns],
    baseline: f64,
    daemon: Option<u32>,
) -> Row {
    let env = |cmd: &str, pod: &Netns, i: usize| {
        vec![
            ("CNI_COMMAND", cmd.to_string()),
            ("CNI_CONTAINERID", format!("bench{i}")),
            ("CNI_NETNS", pod.path().display().to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", "/usr/lib/cni".to_string()),
        ]
    };
    let d0 = daemon.map(daemon_cpu);
    let (mut cpu_add, mut wall_add, mut cpu_del) = (Vec::new(), Vec::new(), Vec::new());
    for (i, pod) in pods.iter().enumerate() {
        let (c, w, ok) = run(node, plugin, &env("ADD", pod, i), conf);
        assert!(ok, "{name} ADD");
        cpu_add.push(c - baseline);
        wall_add.push(w);
    }
    let daemon_per_add = daemon.zip(d0).map(|(pid, d0)| (daemon_cpu(pid) - d0) / pods.len() as f64);
    for (i, pod) in pods.iter().enumerate() {
        let (c, _, ok) = run(node, plugin, &env("DEL", pod, i), conf);
        assert!(ok, "{name} DEL");
        cpu_del.push(c - baseline);
    }
    Row {
        name,
        cpu_add: median(cpu_add),
        wall_add: median(wall_add),
        cpu_del: median(cpu_del),
        daemon_per_add,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args
        .iter()
        .position(|a| a == "--pods")
        .and_then(|i| args.get(i + 1))
        .map_or(30, |v| v.parse().expect("--pods N"));
    let bin = sibling_binary;
    let prefix = unique_prefix("vca");
    // Removed at the end, on a panic too, like the namespaces.
    let scratch_dir = Scratch::new(&prefix);
    let scratch = scratch_dir.0.clone();
    let node = Netns::new(&format!("{prefix}n"));

    // vswitchd in the node namespace.
    let socket = scratch.join("api.sock");
    std::fs::write(
        scratch.join("vswitchd.toml"),
        format!(
            "api_socket = {:?}\nstate_file = {:?}\nworkers = 1\nmetrics_address = \"\"\n",
            socket.display().to_string(),
            scratch.join("state.json").display().to_string()
        ),
    )
    .expect("config");
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node.name()])
        .arg(bin("vswitchd"))
        .arg("--config")
        .arg(scratch.join("vswitchd.toml"));
    cmd.env("RUST_LOG", "warn");
    let daemon = Process::spawn(&mut cmd).expect("vswitchd starts");
    assert!(wait_until(Duration::from_secs(20), || socket.exists()), "vswitchd socket");
    std::thread::sleep(Duration::from_millis(300));

    let baseline = median((0..n).map(|_| run(&node, Path::new("/bin/true"), &[], "").0).collect());
    let vswitch_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "bench-vswitch", "type": "vswitch-cni", "socket": socket,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "dataDir": scratch.join("ipam")},
    })
    .to_string();
    let bridge_conf = serde_json::json!({
        "cniVersion": "1.0.0", "name": "bench-bridge", "type": "bridge", "bridge": "cnib0", "isGateway": true,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.2.0/24"}]], "dataDir": scratch.join("ipam")},
    })
    .to_string();

    let mut rows = Vec::new();
    for (name, plugin, conf, pid) in [
        ("vswitch-cni", bin("vswitch-cni"), &vswitch_conf, Some(daemon.pid())),
        ("bridge (reference)", PathBuf::from("/usr/lib/cni/bridge"), &bridge_conf, None),
    ] {
        let pods: Vec<Netns> = (0..n).map(|i| Netns::new(&format!("{prefix}{}{i}", &name[..1]))).collect();
        rows.push(measure(name, &node, &plugin, conf, &pods, baseline, pid));
    }
    drop(daemon);

    println!(
        "| plugin | CPU per ADD (median) | wall per ADD (median) | CPU per DEL (median) | vswitchd CPU per ADD |"
    );
    println!("|---|---:|---:|---:|---:|");
    for r in &rows {
        let daemon = r.daemon_per_add.map_or("–".to_string(), |d| format!("{:.2} ms", d * 1e3));
        println!(
            "| {} | {:.2} ms | {:.2} ms | {:.2} ms | {daemon} |",
            r.name,
            r.cpu_add * 1e3,
            r.wall_add * 1e3,
            r.cpu_del * 1e3
        );
    }
    println!(
        "\n{n} pods each; CPU is user+system of the plugin and its host-local child, minus `nsenter … true` ({:.2} ms).",
        baseline * 1e3
    );
}
