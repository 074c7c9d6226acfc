//! What the namespace harnesses (`packet-rate`, `service-scale`) share: a scratch
//! directory and a `vswitchd` started in a node namespace, driven with `vswitchctl`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use vswitch::testbed::{Netns, Process, ok, wait_until};

/// A directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vswitch-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A binary of this workspace, next to the running harness.
pub fn sibling_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    exe.parent().expect("target dir").join(name)
}

/// `vswitchd` running in a node namespace; killed (by PID) on drop.
pub struct Vswitchd {
    process: Process,
    socket: String,
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
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node.name()])
            .arg(sibling_binary("vswitchd"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn");
        let process = Process::spawn(&mut cmd).expect("vswitchd starts");
        let d = Vswitchd { process, socket };
        let ctl = sibling_binary("vswitchctl");
        assert!(
            wait_until(Duration::from_secs(20), || Command::new(&ctl)
                .args(["--socket", &d.socket, "status"])
                .output()
                .is_ok_and(|o| o.status.success())),
            "vswitchd answers"
        );
        d
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
        let pid = self.process.pid();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
        let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some(ticks / 100.0)
    }
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}
