//! The end-to-end harness: a node (a network namespace running `vswitchd`) and pods
//! (namespaces attached through the daemon's API and configured as the CNI plugin would
//! configure them).
//!
//! Everything is named with a test-unique prefix and removed by guards on drop, also when
//! a test fails: namespaces with their interfaces, the daemon (killed by PID), its
//! scratch directory. A failing test prints the daemon's log.
//!
//! `vswitchd` and `vswitchctl` are this package's binaries (cargo builds them for the
//! tests); the CNI plugin, another package's, is built on first use.
//!
//! Each test file includes this module (`mod harness;`) and uses a part of it.

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use vswitch_api::{AttachRequest, Backend, Client, ClientError, PortInfo, Stats};
use vswitch_testbed::{Netns, Process, unique_prefix, wait_until};

pub use vswitch_testbed as testbed;
pub use vswitch_testbed::Scratch;

/// The daemon, as cargo built it for these tests.
pub fn vswitchd() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vswitchd"))
}

/// The CLI, as cargo built it for these tests.
pub fn vswitchctl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_vswitchctl"))
}

/// The CNI plugin (`$VSWITCH_CNI_BIN` if set): built with cargo, in this test's profile
/// and target directory, the first time a test of this binary asks (a no-op when it is
/// current, as after `scripts/test.sh`'s build).
pub fn vswitch_cni() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("VSWITCH_CNI_BIN") {
                return PathBuf::from(p);
            }
            let exe = std::env::current_exe().expect("test executable path");
            let profile_dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
            let target_dir = profile_dir.parent().expect("target/<profile>");
            let profile = profile_dir.file_name().and_then(|n| n.to_str()).expect("profile directory name");
            let profile = if profile == "debug" { "dev" } else { profile };
            let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace");
            let status = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "--quiet",
                    "--package",
                    "vswitch-cni",
                    "--bin",
                    "vswitch-cni",
                    "--profile",
                    profile,
                ])
                .arg("--target-dir")
                .arg(target_dir)
                .current_dir(workspace)
                .status()
                .expect("cargo runs");
            assert!(status.success(), "building vswitch-cni failed");
            profile_dir.join("vswitch-cni")
        })
        .clone()
}

/// A node: its namespace and the `vswitchd` serving it.
pub struct Node {
    pub prefix: String,
    pub ns: Netns,
    pub dir: Scratch,
    pub socket: PathBuf,
    config: PathBuf,
    /// Extra command-line arguments of vswitchd.
    args: Vec<String>,
    daemon: Option<Process>,
    runtime: tokio::runtime::Runtime,
}

impl Node {
    /// Starts `vswitchd` in a fresh node namespace with the embedded defaults plus
    /// `extra` TOML (API socket and state file go to the node's scratch directory).
    pub fn start(tag: &str, extra: &str) -> Node {
        Node::start_prepared(tag, extra, |_, _| {})
    }

    /// Like [`Node::start`], with `prepare(namespace, prefix)` run in the fresh node
    /// namespace before the daemon starts (e.g. to give it an uplink interface).
    pub fn start_prepared(tag: &str, extra: &str, prepare: impl FnOnce(&Netns, &str)) -> Node {
        Node::start_with_args(tag, extra, &[], prepare)
    }

    /// Like [`Node::start_prepared`], with extra vswitchd arguments.
    pub fn start_with_args(
        tag: &str,
        extra: &str,
        args: &[String],
        prepare: impl FnOnce(&Netns, &str),
    ) -> Node {
        let prefix = unique_prefix(tag);
        let ns = Netns::new(&format!("{prefix}n"));
        prepare(&ns, &prefix);
        let dir = Scratch::new(&prefix);
        let socket = dir.0.join("api.sock");
        let config = dir.0.join("vswitchd.toml");
        let text = format!(
            "api_socket = {:?}\nstate_file = {:?}\nworkers = 2\n{extra}\n",
            socket.display().to_string(),
            dir.0.join("state.json").display().to_string()
        );
        std::fs::write(&config, text).expect("config file");
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let mut node = Node { prefix, ns, dir, socket, config, args: args.to_vec(), daemon: None, runtime };
        node.launch();
        node
    }

    fn log_path(&self) -> PathBuf {
        self.dir.0.join("vswitchd.log")
    }

    /// A vswitchd on this node's configuration and namespace, logging to its log.
    fn spawn_daemon(&self, extra: &[&str]) -> Process {
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.log_path()).expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.ns.name()])
            .arg(vswitchd())
            .arg("--config")
            .arg(&self.config)
            .args(&self.args)
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log);
        Process::spawn(&mut cmd).expect("vswitchd starts")
    }

    fn launch(&mut self) {
        self.daemon = Some(self.spawn_daemon(&[]));
        self.wait_for_api();
    }

    fn wait_for_api(&self) {
        let client = self.client();
        let up = wait_until(Duration::from_secs(20), || self.runtime.block_on(client.status()).is_ok());
        assert!(up, "vswitchd did not answer on {}:\n{}", self.socket.display(), self.log());
    }

    /// Starts a new vswitchd with `--takeover` beside the running one, not waiting.
    pub fn spawn_takeover(&self) -> Process {
        self.spawn_daemon(&["--takeover"])
    }

    /// Hands the node over to a new vswitchd told to leave the old one waiting for its
    /// SIGTERM (`--takeover=wait`, as the DaemonSet does); returns the old one, once it
    /// waits (handed over, or stopped because it could not hand over).
    pub fn take_over_leaving_old(&mut self) -> Process {
        let new = self.spawn_daemon(&["--takeover=wait"]);
        let old = self.daemon.replace(new).expect("a daemon to take over from");
        let waiting = wait_until(Duration::from_secs(30), || self.log().contains("waiting for SIGTERM"));
        assert!(waiting, "the old vswitchd did not hand over:\n{}", self.log());
        self.wait_for_api();
        old
    }

    /// Hands the node over to a new vswitchd (`vswitchd --takeover`, as an upgrade
    /// does): the old one must exit successfully and the new one answer.
    pub fn take_over(&mut self) {
        let new = self.spawn_takeover();
        let mut old = self.daemon.take().expect("a daemon to take over from");
        let out =
            old.wait_output(Duration::from_secs(30)).expect("the old vswitchd exits after the takeover");
        assert!(out.status.success(), "old vswitchd exit status {}:\n{}", out.status, self.log());
        self.daemon = Some(new);
        self.wait_for_api();
    }

    /// Rewrites the node's config file (the next daemon started reads it).
    pub fn rewrite_config(&self, change: impl FnOnce(String) -> String) {
        let text = std::fs::read_to_string(&self.config).expect("config file");
        std::fs::write(&self.config, change(text)).expect("config file");
    }

    pub fn client(&self) -> Client {
        Client::new(&self.socket)
    }

    /// Runs an API call to completion.
    pub fn api<T, F: Future<Output = Result<T, ClientError>>>(
        &self,
        f: impl FnOnce(Client) -> F,
    ) -> Result<T, ClientError> {
        self.runtime.block_on(f(self.client()))
    }

    pub fn stats(&self) -> Stats {
        self.api(|c| async move { c.stats().await }).expect("stats")
    }

    /// Drops of frames that entered on `port`, for `reason`.
    pub fn drops(&self, port: u16, reason: &str) -> u64 {
        self.stats()
            .ports
            .iter()
            .find(|p| p.id == port)
            .and_then(|p| p.drops.get(reason).copied())
            .unwrap_or(0)
    }

    /// The daemon's process id.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon.as_ref().expect("daemon running").pid()
    }

    /// The daemon's resident memory in KiB (VmRSS).
    pub fn daemon_rss_kib(&self) -> u64 {
        let pid = self.daemon.as_ref().expect("daemon running").pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("daemon status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Kills the daemon with SIGKILL (a crash) and waits for it to be gone.
    pub fn crash(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.kill();
        }
    }

    /// Stops the daemon with SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.signal(vswitch_testbed::Signal::SIGTERM);
            let out = d.wait_output(Duration::from_secs(10)).expect("vswitchd exits on SIGTERM");
            assert!(out.status.success(), "vswitchd exit status {}:\n{}", out.status, self.log());
        }
    }

    /// Starts the daemon again on the same configuration and state.
    pub fn restart(&mut self) {
        assert!(self.daemon.is_none(), "stop or crash the daemon first");
        self.launch();
    }

    /// Runs `vswitchctl` against this node; returns stdout, panics on failure.
    pub fn ctl(&self, args: &[&str]) -> String {
        let out = Command::new(vswitchctl())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("vswitchctl runs");
        assert!(out.status.success(), "vswitchctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `vswitchctl` against this node; returns its whole output, failing or not.
    pub fn ctl_output(&self, args: &[&str]) -> std::process::Output {
        Command::new(vswitchctl())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("vswitchctl runs")
    }

    /// Starts `vswitchctl capture` with `args` writing to `file`; waits until the
    /// capture is open (the file has its section header).
    pub fn start_capture(&self, args: &[&str], file: &std::path::Path) -> Process {
        let mut cmd = Command::new(vswitchctl());
        cmd.arg("--socket").arg(&self.socket).arg("capture").args(args).arg("-w").arg(file);
        let p = Process::spawn(cmd.stdout(Stdio::piped()).stderr(Stdio::piped())).expect("vswitchctl starts");
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::metadata(file).is_ok_and(|m| m.len() > 0)),
            "the capture opens"
        );
        p
    }

    /// Creates a pod namespace, attaches it (`eth0`, `ip`/24) and configures it the way
    /// the CNI plugin does: address and default route via the gateway (`.1` of the /24).
    pub fn pod(&self, name: &str, ip: Ipv4Addr, backend: Backend) -> Pod {
        self.pod_with_mtu(name, ip, backend, None)
    }

    /// [`Node::pod`] with an MTU other than the daemon's default.
    pub fn pod_with_mtu(&self, name: &str, ip: Ipv4Addr, backend: Backend, mtu: Option<u16>) -> Pod {
        let ns = Netns::new(&format!("{}{name}", self.prefix));
        let req = AttachRequest {
            container_id: format!("{}-{name}", self.prefix),
            netns: ns.path(),
            ifname: "eth0".into(),
            mac: None,
            ips: vec![format!("{ip}/24").parse().expect("CIDR")],
            mtu,
            backend: Some(backend),
            pod: None,
            network: None,
        };
        let port = self
            .api(|c| async move { c.attach(&req).await })
            .unwrap_or_else(|e| panic!("attach {name}: {e}\n{}", self.log()));
        ns.ok(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        let [a, b, c, _] = ip.octets();
        ns.ok(&["ip", "route", "add", "default", "via", &Ipv4Addr::new(a, b, c, 1).to_string()]);
        Pod { ns, ip, port }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- vswitchd log ({}) ----\n{}", self.prefix, self.log());
        }
        if let Some(d) = self.daemon.take() {
            d.kill();
        }
    }
}

/// A pod: its namespace, address and switch port.
pub struct Pod {
    pub ns: Netns,
    pub ip: Ipv4Addr,
    pub port: PortInfo,
}

impl Pod {
    /// `ping -c count` to `dst`; true if every echo was answered.
    pub fn ping(&self, dst: Ipv4Addr, count: u32) -> bool {
        self.ns
            .run(&["ping", "-c", &count.to_string(), "-i", "0.2", "-W", "2", &dst.to_string()])
            .status
            .success()
    }
}

/// Sends `bytes` of random data from `from` to `to` over TCP with ncat; asserts the
/// receiver got exactly the same bytes (sha256). Files go to `dir`.
pub fn tcp_transfer_is_exact(dir: &Scratch, from: &Pod, to: &Pod, bytes: usize) {
    tcp_bytes_arrive(dir, &from.ns, &to.ns, to.ip, bytes);
}

/// [`tcp_transfer_is_exact`] between any two namespaces (a node's too): `bytes` from
/// `from` to `to`, listening on `to_ip`.
pub fn tcp_bytes_arrive(dir: &Scratch, from: &Netns, to: &Netns, to_ip: Ipv4Addr, bytes: usize) {
    let src = dir.0.join(format!("tcp-src-{}", from.name()));
    let dst = dir.0.join(format!("tcp-dst-{}", to.name()));
    testbed::ok("sh", &["-c", &format!("head -c {bytes} /dev/urandom > {}", src.display())]);
    let mut server = to.spawn(&["sh", "-c", &format!("ncat -l 5001 --recv-only > {}", dst.display())]);
    assert!(wait_until(Duration::from_secs(5), || to.ok(&["ss", "-ltn"]).contains(":5001")), "ncat listens");
    from.ok(&["sh", "-c", &format!("ncat --send-only {to_ip} 5001 < {}", src.display())]);
    let done = server.wait_output(Duration::from_secs(60)).expect("the receiver finishes");
    assert!(done.status.success(), "{}", String::from_utf8_lossy(&done.stderr));
    let sum = |p: &Path| testbed::ok("sha256sum", &[p]).split_whitespace().next().unwrap().to_string();
    assert_eq!(std::fs::metadata(&dst).unwrap().len() as usize, bytes, "every byte arrived");
    assert_eq!(sum(&src), sum(&dst), "byte-exact");
}

/// The monitoring files in deploy/: the Grafana dashboard and the alerting rules.
pub fn monitoring_files() -> (PathBuf, PathBuf) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    (dir.join("vswitch-dashboard.json"), dir.join("vswitch-rules.yaml"))
}

/// Every PromQL expression of the dashboard's panels and of the rules, parsed as
/// Grafana and the Prometheus Operator would read the files (JSON, YAML).
pub fn monitoring_expressions() -> Vec<String> {
    let (dashboard, rules) = monitoring_files();
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dashboard).expect("dashboard"))
            .expect("dashboard is JSON");
    let rules: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(rules).expect("rules")).expect("rules are YAML");
    let mut exprs: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect();
    for group in rules["spec"]["groups"].as_sequence().expect("rule groups") {
        for rule in group["rules"].as_sequence().expect("rules") {
            exprs.push(rule["expr"].as_str().expect("every rule has an expr").to_string());
        }
    }
    exprs
}

/// The `vswitch_*` metric names `exprs` use.
pub fn metric_names(exprs: &[String]) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for e in exprs {
        let mut rest = e.as_str();
        while let Some(at) = rest.find("vswitch_") {
            let name: String = rest[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            rest = &rest[at + name.len()..];
            names.insert(name);
        }
    }
    names
}
