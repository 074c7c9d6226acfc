//! The CNI plugin under a real container runtime: Debian's containerd (with runc), started
//! by this test with its own root, state and socket, its CNI directories pointing at
//! vswitch-cni plus Debian's `host-local` and `loopback`, driven through the CRI API as
//! kubelet drives it. Two pod sandboxes, a busybox container in each, a ping between them
//! through vswitchd, then stop and remove: no port, address, namespace, mount or cached
//! result may be left.
//!
//! No registry is reachable: the image (busybox-static's `sleep`, `ping`, `sh`) is built
//! here as a docker-archive tarball and imported with `ctr`. Known traps on this kind of
//! host, handled in the configuration: runc with cgroupfs, `restrict_oom_score_adj`
//! (no CAP_SYS_RESOURCE), `loopback` in the CNI bin dir, a conflist at cniVersion 1.0.0
//! (containerd 1.6's libcni knows no newer results).

mod harness;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harness::testbed::{Process, ok, wait_until};
use harness::{Node, Scratch, vswitch_cni};
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

const IMAGE: &str = "localhost/vswitch-cni-test/busybox:1";

/// A containerd of our own; everything it made goes on drop.
struct Containerd {
    dir: Scratch,
    socket: PathBuf,
    network: String,
    process: Option<Process>,
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

impl Containerd {
    fn start(node: &Node) -> Containerd {
        let dir = Scratch::new(&format!("{}-ctd", node.prefix));
        let t = dir.0.clone();
        let network = format!("vswitch-{}", node.prefix);
        for d in ["cni-bin", "cni-conf", "img/rootfs/bin", "img/out"] {
            std::fs::create_dir_all(t.join(d)).unwrap();
        }
        // One bin dir: our plugin and the reference plugins it and containerd need.
        std::os::unix::fs::symlink(vswitch_cni(), t.join("cni-bin/vswitch-cni")).unwrap();
        for p in ["host-local", "loopback"] {
            std::os::unix::fs::symlink(Path::new("/usr/lib/cni").join(p), t.join("cni-bin").join(p)).unwrap();
        }
        write(
            &t.join("cni-conf/10-vswitch.conflist"),
            &serde_json::json!({
                "cniVersion": "1.0.0",
                "name": network,
                "plugins": [{
                    "type": "vswitch-cni",
                    "socket": node.socket,
                    "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.244.1.0/24"}]], "dataDir": t.join("ipam")},
                }],
            })
            .to_string(),
        );
        let socket = t.join("containerd.sock");
        let config = format!(
            r#"version = 2
root = "{t}/root"
state = "{t}/state"
oom_score = 0
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.internal.v1.tracing", "io.containerd.tracing.processor.v1.otlp"]
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{t}/opt"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{IMAGE}"
    restrict_oom_score_adj = true
    enable_selinux = false
    disable_apparmor = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{t}/cni-bin"
      conf_dir = "{t}/cni-conf"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          BinaryName = "/usr/sbin/runc"
          SystemdCgroup = false
          Root = "{t}/runc"
"#,
            t = t.display(),
            sock = socket.display()
        );
        write(&t.join("config.toml"), &config);
        let log = std::fs::File::create(t.join("containerd.log")).unwrap();
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(t.join("config.toml"))
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let process = Some(Process::spawn(&mut cmd).expect("containerd starts"));
        let mut ctd = Containerd { dir, socket, network, process };
        assert!(
            wait_until(Duration::from_secs(20), || ctd.socket.exists()),
            "containerd socket:\n{}",
            ctd.log()
        );
        ctd.import_image();
        ctd
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.0.join("containerd.log")).unwrap_or_default()
    }

    /// busybox-static as a one-layer docker-archive image, imported into CRI's namespace.
    fn import_image(&mut self) {
        let w = self.dir.0.join("img");
        let root = w.join("rootfs");
        std::fs::copy("/bin/busybox", root.join("bin/busybox")).expect("busybox-static is installed");
        for applet in ["sh", "sleep", "ping", "ip", "cat"] {
            std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
        }
        for d in ["dev", "proc", "sys", "etc", "tmp"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        let out = w.join("out");
        ok(
            "tar",
            &[
                "--numeric-owner",
                "--owner=0",
                "--group=0",
                "--sort=name",
                "--mtime=@0",
                "-C",
                &root.display().to_string(),
                "-cf",
                &out.join("layer.tar").display().to_string(),
                ".",
            ],
        );
        let digest = ok("sha256sum", &[out.join("layer.tar")]).split_whitespace().next().unwrap().to_string();
        write(
            &out.join("config.json"),
            &serde_json::json!({
                "architecture": "amd64", "os": "linux",
                "config": {"Env": ["PATH=/bin"], "Entrypoint": ["/bin/sleep"], "Cmd": ["inf"], "WorkingDir": "/"},
                "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{digest}")]},
            })
            .to_string(),
        );
        write(
            &out.join("manifest.json"),
            &serde_json::json!([{"Config": "config.json", "RepoTags": [IMAGE], "Layers": ["layer.tar"]}])
                .to_string(),
        );
        let tarball = w.join("image.tar");
        ok(
            "tar",
            &[
                "-C",
                &out.display().to_string(),
                "-cf",
                &tarball.display().to_string(),
                "manifest.json",
                "config.json",
                "layer.tar",
            ],
        );
        let import = Command::new("ctr")
            .args(["-a", &self.socket.display().to_string(), "-n", "k8s.io", "images", "import"])
            .arg(&tarball)
            .output()
            .unwrap();
        assert!(
            import.status.success(),
            "ctr import: {}\n{}",
            String::from_utf8_lossy(&import.stderr),
            self.log()
        );
    }

    /// Mounts containerd made under its directory (sandbox shm, overlay rootfs, ...).
    fn our_mounts(&self) -> Vec<String> {
        let prefix = self.dir.0.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| m.starts_with(&prefix))
            .collect()
    }

    /// Shims serving our containerd (they outlive it).
    fn our_shims(&self) -> Vec<i32> {
        let needle = self.socket.display().to_string();
        std::fs::read_dir("/proc")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()))
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .map(|c| String::from_utf8_lossy(&c).contains(&needle))
                    .unwrap_or(false)
            })
            .collect()
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- containerd log ----\n{}", self.log());
        }
        if let Some(p) = &self.process {
            p.signal(harness::testbed::Signal::SIGTERM);
        }
        if let Some(mut p) = self.process.take()
            && p.wait_output(Duration::from_secs(10)).is_none()
        {
            p.kill();
        }
        for pid in self.our_shims() {
            let _ = nix_kill(pid);
        }
        let mut mounts = self.our_mounts();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount").args(["-l", &m]).status();
        }
        // libcni's result cache is global; ours are named after our network.
        if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with(&self.network) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let _ =
            Command::new("sh").args(["-c", "rmdir /sys/fs/cgroup/*/vswitch-cni-test 2>/dev/null"]).status();
    }
}

fn nix_kill(pid: i32) -> std::io::Result<()> {
    let st = Command::new("kill").args(["-9", &pid.to_string()]).status()?;
    if st.success() { Ok(()) } else { Err(std::io::Error::other("kill failed")) }
}

async fn connect(socket: PathBuf) -> Channel {
    Endpoint::try_from("http://[::]:50051")
        .expect("a static URI")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connects to containerd's CRI socket")
}

fn sandbox_config(name: &str) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.into(),
            uid: format!("uid-{name}"),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: "/vswitch-cni-test".into(),
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption {
                    network: NamespaceMode::Pod as i32,
                    pid: NamespaceMode::Container as i32,
                    ipc: NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The `cni-*` namespaces containerd makes, by name.
fn cni_netns() -> std::collections::BTreeSet<String> {
    std::fs::read_dir("/var/run/netns")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("cni-"))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
#[ignore = "needs root: scripts/test.sh runs it"]
fn pods_under_containerd_talk_through_vswitchd_and_leave_nothing() {
    let node = Node::start("e2d", "");
    let netns_before = cni_netns();
    let ctd = Containerd::start(&node);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let channel = connect(ctd.socket.clone()).await;
        let mut cri = RuntimeServiceClient::new(channel.clone());
        let mut images = ImageServiceClient::new(channel);
        // Runtime and network ready (our conflist loaded).
        let ready = async {
            for _ in 0..100 {
                let st = cri.status(StatusRequest { verbose: false }).await.unwrap().into_inner();
                let conds = st.status.map(|s| s.conditions).unwrap_or_default();
                if conds.iter().all(|c| c.status) && conds.len() >= 2 {
                    return true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            false
        };
        assert!(ready.await, "CRI runtime and network ready");
        let image = images
            .image_status(ImageStatusRequest {
                image: Some(ImageSpec { image: IMAGE.into(), ..Default::default() }),
                verbose: false,
            })
            .await
            .unwrap()
            .into_inner();
        assert!(image.image.is_some(), "CRI sees the imported image");

        let mut pods = Vec::new();
        for name in ["web", "client"] {
            let config = sandbox_config(name);
            let id = cri
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config.clone()),
                    runtime_handler: String::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("RunPodSandbox {name}: {e}"))
                .into_inner()
                .pod_sandbox_id;
            let container = cri
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: id.clone(),
                    config: Some(ContainerConfig {
                        metadata: Some(ContainerMetadata { name: format!("{name}-c"), attempt: 0 }),
                        image: Some(ImageSpec { image: IMAGE.into(), ..Default::default() }),
                        linux: Some(LinuxContainerConfig::default()),
                        ..Default::default()
                    }),
                    sandbox_config: Some(config),
                })
                .await
                .unwrap_or_else(|e| panic!("CreateContainer {name}: {e}"))
                .into_inner()
                .container_id;
            cri.start_container(StartContainerRequest { container_id: container.clone() }).await.unwrap();
            let status = cri
                .pod_sandbox_status(PodSandboxStatusRequest { pod_sandbox_id: id.clone(), verbose: false })
                .await
                .unwrap()
                .into_inner();
            let ip = status.status.and_then(|s| s.network).map(|n| n.ip).unwrap_or_default();
            assert!(ip.starts_with("10.244.1."), "pod {name} got an address from the switch's CIDR: {ip:?}");
            pods.push((id, container, ip));
        }

        // kubelet's view and vswitchd's agree.
        let ports = node.client().ports().await.unwrap();
        let names: Vec<String> =
            ports.iter().filter_map(|p| p.pod.as_ref().map(|r| r.name.clone())).collect();
        assert_eq!(names, vec!["web".to_string(), "client".to_string()], "CNI_ARGS reached the daemon");

        // From inside the client container, ping the web pod (and the gateway).
        for target in [pods[0].2.as_str(), "10.244.1.1"] {
            let out = cri
                .exec_sync(ExecSyncRequest {
                    container_id: pods[1].1.clone(),
                    cmd: vec![
                        "/bin/ping".into(),
                        "-c".into(),
                        "3".into(),
                        "-W".into(),
                        "2".into(),
                        target.into(),
                    ],
                    timeout: 20,
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(
                out.exit_code,
                0,
                "ping {target}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }

        // Stop then remove: containerd runs DEL on each (the second with no netns).
        for (id, _, _) in &pods {
            cri.stop_pod_sandbox(StopPodSandboxRequest { pod_sandbox_id: id.clone() }).await.unwrap();
            cri.remove_pod_sandbox(RemovePodSandboxRequest { pod_sandbox_id: id.clone() }).await.unwrap();
        }
        let left =
            cri.list_pod_sandbox(ListPodSandboxRequest { filter: None }).await.unwrap().into_inner().items;
        assert!(left.is_empty(), "{left:?}");
        let ports = node.client().ports().await.unwrap();
        assert_eq!(ports.len(), 1, "only the host port is left: {ports:?}");
        assert_eq!(cni_netns(), netns_before, "the pods' network namespaces are gone");
        for (id, _, _) in &pods {
            let cached = std::fs::read_dir("/var/lib/cni/results")
                .map(|d| {
                    d.flatten().filter(|e| e.file_name().to_string_lossy().contains(id.as_str())).count()
                })
                .unwrap_or(0);
            assert_eq!(cached, 0, "libcni's cached result for {id} removed");
        }
    });
    let ipam = ctd.dir.0.join("ipam").join(&ctd.network);
    let held: Vec<String> = std::fs::read_dir(&ipam)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("10."))
                .collect()
        })
        .unwrap_or_default();
    assert!(held.is_empty(), "addresses still allocated: {held:?}");
    assert!(
        ctd.our_mounts().iter().all(|m| !m.contains("/shm") && !m.contains("rootfs")),
        "{:?}",
        ctd.our_mounts()
    );
}
