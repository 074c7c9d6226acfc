//! What the namespace harnesses (`packet-rate`, `service-scale`) share: a scratch
//! directory, a `vswitchd` started in a node namespace and driven with `vswitchctl`, an
//! Open vSwitch of the harness's own (userspace datapath), and CPU accounting.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vswitch_testbed::{Netns, Process, ok, wait_until};

pub use vswitch_testbed::Scratch;

/// A binary of this workspace, next to the running harness.
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent().expect("target dir").join(name)
}

/// `vswitchd` running in a node namespace; killed (by PID) on drop.
pub struct Vswitchd {
    process: Process,
    socket: String,
    config: PathBuf,
    node: String,
}

impl Vswitchd {
    /// Starts the daemon in `node` with its socket and state in `dir`, no metrics and no
    /// host port, plus `extra` TOML; returns once it answers.
    pub fn start(node: &Netns, dir: &Path, extra: &str) -> Vswitchd {
        let socket = dir.join("api.sock").display().to_string();
        let config = dir.join("vswitchd.toml");
        std::fs::write(
            &config,
            format!(
                "api_socket = {socket:?}\nstate_file = {:?}\nmetrics_address = \"\"\nhost_port = \"\"\n{extra}\n",
                dir.join("state.json").display().to_string()
            ),
        )
        .expect("config");
        let process = spawn(node.name(), &config, &[]);
        let d = Vswitchd { process, socket, config, node: node.name().to_string() };
        d.wait_for_api();
        d
    }

    fn wait_for_api(&self) {
        let ctl = sibling_binary("vswitchctl");
        assert!(
            wait_until(Duration::from_secs(20), || Command::new(&ctl)
                .args(["--socket", &self.socket, "status"])
                .output()
                .is_ok_and(|o| o.status.success())),
            "vswitchd answers"
        );
    }

    /// A new vswitchd takes this one's place (`--takeover`); returns the old one's log
    /// (warnings, and the takeover's lines with the pause).
    pub fn take_over(&mut self) -> String {
        let new = spawn(&self.node, &self.config, &["--takeover"]);
        let mut old = std::mem::replace(&mut self.process, new);
        let out = old.wait_output(Duration::from_secs(30)).expect("the old vswitchd exits");
        assert!(out.status.success(), "old vswitchd: {}", String::from_utf8_lossy(&out.stderr));
        self.wait_for_api();
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// SIGTERM, then a new start on the same configuration and state.
    pub fn restart(&mut self) {
        self.process.signal(vswitch_testbed::Signal::SIGTERM);
        let out = self.process.wait_output(Duration::from_secs(30)).expect("vswitchd stops");
        assert!(out.status.success(), "vswitchd: {}", String::from_utf8_lossy(&out.stderr));
        self.process = spawn(&self.node, &self.config, &[]);
        self.wait_for_api();
    }

    /// Runs `vswitchctl` against the daemon; panics unless it succeeds.
    pub fn ctl(&self, args: &[&str]) -> String {
        let mut all = vec!["--socket", self.socket.as_str()];
        all.extend_from_slice(args);
        ok(sibling_binary("vswitchctl").to_str().expect("utf-8 path"), &all)
    }

    /// Attaches `pod` with `ip`/24 over `backend` and configures the address.
    pub fn attach(&self, pod: &Netns, ip: Ipv4Addr, backend: &str) {
        let netns = pod.path().display().to_string();
        let cidr = format!("{ip}/24");
        self.ctl(&[
            "attach",
            "--container-id",
            pod.name(),
            "--netns",
            &netns,
            "--ip",
            &cidr,
            "--backend",
            backend,
        ]);
        pod.ok(&["ip", "addr", "add", &cidr, "dev", "eth0"]);
    }

    /// CPU seconds the daemon has used so far (user + system).
    pub fn cpu_seconds(&self) -> Option<f64> {
        process_cpu_seconds(self.process.pid())
    }
}

fn spawn(node: &str, config: &Path, extra: &[&str]) -> Process {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", node])
        .arg(sibling_binary("vswitchd"))
        .arg("--config")
        .arg(config)
        .args(extra)
        .env("RUST_LOG", "warn,vswitchd::takeover=info")
        .stdout(std::process::Stdio::null())
        // Read when the process is gone (a takeover's pause is in it); a few lines.
        .stderr(std::process::Stdio::piped());
    Process::spawn(&mut cmd).expect("vswitchd starts")
}

/// A veth pair from `node` (end `host_end`) into `pod` (end `eth0`, still down).
pub fn veth_to_pod(node: &Netns, host_end: &str, pod: &Netns) {
    node.ok(&["ip", "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", pod.name()]);
}

/// CPU seconds process `pid` has used so far (user + system, all its threads).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / USER_HZ)
}

/// The unit of /proc's CPU times (`sysconf(_SC_CLK_TCK)`, 100 on Linux everywhere).
const USER_HZ: f64 = 100.0;

/// Seconds all CPUs have spent in softirq so far (/proc/stat): where the kernel's own
/// forwarding (bridge, veth, VXLAN) runs.
pub fn softirq_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu = stat.lines().find(|l| l.starts_with("cpu ")).expect("the cpu line");
    // cpu user nice system idle iowait irq softirq ...
    cpu.split_whitespace().nth(7).and_then(|v| v.parse::<f64>().ok()).expect("softirq field") / USER_HZ
}

/// Seconds all CPUs have been busy so far (/proc/stat: user, nice, system, irq and
/// softirq; not idle, iowait or time stolen by the hypervisor).
pub fn busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").expect("/proc/stat");
    let cpu = stat.lines().find(|l| l.starts_with("cpu ")).expect("the cpu line");
    let field =
        |i: usize| cpu.split_whitespace().nth(i).and_then(|v| v.parse::<f64>().ok()).expect("cpu field");
    [1, 2, 3, 6, 7].into_iter().map(field).sum::<f64>() / USER_HZ
}

/// CPU seconds (user + system) of every child process this one has waited for, with
/// their own waited-for descendants: a finished generator's whole cost.
pub fn reaped_children_cpu_seconds() -> f64 {
    let usage =
        nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 * 1e-6;
    secs(usage.user_time()) + secs(usage.system_time())
}

/// Open vSwitch (Debian's 3.1) run by the harness in a node namespace: its own database,
/// sockets, pid-less foreground processes and logs in `dir`, so it touches no system
/// instance; `ovs-vswitchd` and its PMD threads pinned to `cpu`. Killed on drop.
pub struct Ovs {
    dir: PathBuf,
    db: String,
    _ovsdb: Process,
    vswitchd: Process,
}

impl Ovs {
    pub fn start(node: &Netns, dir: &Path, cpu: usize) -> Ovs {
        let d = dir.display().to_string();
        let db = format!("unix:{d}/db.sock");
        ok("ovsdb-tool", &["create", &format!("{d}/conf.db"), "/usr/share/openvswitch/vswitch.ovsschema"]);
        let spawn = |args: &[&str]| {
            let mut cmd = Command::new("ip");
            cmd.args(["netns", "exec", node.name()]).args(args);
            for var in ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"] {
                cmd.env(var, dir);
            }
            Process::spawn(cmd.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()))
                .expect("OVS starts")
        };
        let ovsdb = spawn(&[
            "ovsdb-server",
            &format!("{d}/conf.db"),
            &format!("--remote=punix:{d}/db.sock"),
            &format!("--unixctl={d}/ovsdb.ctl"),
            &format!("--log-file={d}/ovsdb.log"),
        ]);
        let db_up = || Command::new("ovs-vsctl").args([&format!("--db={db}"), "--no-wait", "init"]).status();
        assert!(
            wait_until(Duration::from_secs(10), || db_up().is_ok_and(|s| s.success())),
            "ovsdb-server answers"
        );
        let cpu_list = cpu.to_string();
        let mask = format!("other_config:pmd-cpu-mask=0x{:x}", 1u64 << cpu);
        ok("ovs-vsctl", &[&format!("--db={db}"), "--no-wait", "set", "Open_vSwitch", ".", &mask]);
        let vswitchd = spawn(&[
            "taskset",
            "-c",
            &cpu_list,
            "ovs-vswitchd",
            &db,
            &format!("--unixctl={d}/ovs-vswitchd.ctl"),
            &format!("--log-file={d}/ovs-vswitchd.log"),
        ]);
        let ovs = Ovs { dir: dir.to_path_buf(), db, _ovsdb: ovsdb, vswitchd };
        // Without --no-wait, ovs-vsctl returns once ovs-vswitchd has applied the change.
        ovs.vsctl(&["add-br", "br0", "--", "set", "bridge", "br0", "datapath_type=netdev"]);
        ovs
    }

    /// Runs `ovs-vsctl` against this instance (waiting for ovs-vswitchd to apply it).
    pub fn vsctl(&self, args: &[&str]) -> String {
        let mut all = vec![format!("--db={}", self.db), "--timeout=20".to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        let all: Vec<&str> = all.iter().map(String::as_str).collect();
        ok("ovs-vsctl", &all)
    }

    /// CPU seconds ovs-vswitchd (main thread, PMD threads, handlers) has used so far.
    pub fn cpu_seconds(&self) -> Option<f64> {
        process_cpu_seconds(self.vswitchd.pid())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("ovs-vswitchd.log")).unwrap_or_default()
    }
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
