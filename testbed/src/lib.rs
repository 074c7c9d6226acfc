//! Real network namespaces for tests and benchmarks, cleaned up by guards.
//!
//! Everything a test creates is named with a test-unique prefix ([`unique_prefix`]) and
//! removed when its guard drops, on failure too: [`Netns`] deletes its namespace (and
//! with it every interface inside), [`Process`] kills the process it started, by PID,
//! together with anything it forked (each started process leads its own process group).
//! Nothing here touches the root namespace's interfaces or addresses.
//!
//! Needs root (CI runs as root) and iproute2.

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use nix::sys::signal::Signal;

/// A short prefix unique to this process and call, for namespace and interface names
/// (interface names are at most 15 bytes: keep what follows the prefix short).
pub fn unique_prefix(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{tag}{:x}{n:x}", std::process::id() % 0x1000)
}

/// Runs a command and returns its output; panics if it cannot be started.
pub fn run<S: AsRef<OsStr>>(program: &str, args: &[S]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a command and panics with its stderr unless it succeeds.
pub fn ok<S: AsRef<OsStr>>(program: &str, args: &[S]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {:?} failed ({}): {}{}",
        args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace named `name`, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace, with its loopback up.
    pub fn new(name: &str) -> Netns {
        // A leftover of a crashed earlier run with the same name would make the test
        // use stale state; the prefix makes that unlikely, and we start clean anyway.
        let _ = run("ip", &["netns", "del", name]);
        ok("ip", &["netns", "add", name]);
        let ns = Netns { name: name.to_string() };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that names the namespace (what a CNI runtime passes as netns).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/var/run/netns").join(&self.name)
    }

    fn command<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).args(args).stdin(Stdio::null());
        c
    }

    /// Runs `args` inside the namespace.
    pub fn run<S: AsRef<OsStr>>(&self, args: &[S]) -> Output {
        self.command(args).output().expect("ip netns exec starts")
    }

    /// Runs `args` inside the namespace; panics with its output unless it succeeds.
    pub fn ok<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "in {}: {:?} failed ({}): {}{}",
            self.name,
            args.iter().map(|a| a.as_ref().to_string_lossy().into_owned()).collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell command line inside the namespace.
    pub fn sh(&self, script: &str) -> Output {
        self.run(&["sh", "-c", script])
    }

    /// Starts `args` inside the namespace; the process is killed when the guard drops.
    pub fn spawn<S: AsRef<OsStr>>(&self, args: &[S]) -> Process {
        Process::spawn(self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()))
            .expect("ip netns exec starts")
    }

    /// An interface counter (`rx_packets`, `tx_bytes`, ...) read inside the namespace.
    pub fn counter(&self, ifname: &str, counter: &str) -> u64 {
        let out = self.ok(&["cat", &format!("/sys/class/net/{ifname}/statistics/{counter}")]);
        out.trim().parse().unwrap_or_else(|_| panic!("counter {counter} of {ifname}: {out:?}"))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A process this test started; killed (by its PID) and reaped on drop.
#[derive(Debug)]
pub struct Process {
    child: Option<Child>,
}

impl Process {
    /// Starts `cmd` as the leader of a new process group, so that signals reach the
    /// children it forks too.
    pub fn spawn(cmd: &mut Command) -> std::io::Result<Process> {
        Ok(Process { child: Some(cmd.process_group(0).spawn()?) })
    }

    fn group(&self) -> Option<nix::unistd::Pid> {
        self.child.as_ref().map(|c| nix::unistd::Pid::from_raw(c.id() as i32))
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` to the process and everything it forked.
    pub fn signal(&self, signal: Signal) {
        if let Some(group) = self.group() {
            let _ = nix::sys::signal::killpg(group, signal);
        }
    }

    /// Waits up to `timeout` for the process to exit; returns its output if it did.
    pub fn wait_output(&mut self, timeout: Duration) -> Option<Output> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut()?;
            match child.try_wait() {
                Ok(Some(_)) => return self.child.take().and_then(|c| c.wait_with_output().ok()),
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                _ => return None,
            }
        }
    }

    /// Kills the process (and its group) and returns what it wrote.
    pub fn kill(mut self) -> Output {
        self.signal(Signal::SIGKILL);
        let child = self.child.take().expect("not yet killed");
        child.wait_with_output().expect("reaping a killed child")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.signal(Signal::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

/// A scratch directory under the system's temporary directory (`vswitch-<prefix>`),
/// emptied when made and removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(prefix: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("vswitch-{prefix}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch directory");
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, cond: impl FnMut() -> bool) -> bool {
    wait_until_every(Duration::from_millis(20), timeout, cond)
}

/// [`wait_until`], polling every `interval` (a measurement that times the wait wants
/// a finer one).
pub fn wait_until_every(interval: Duration, timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(interval);
    }
}
