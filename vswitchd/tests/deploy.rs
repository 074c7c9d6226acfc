//! The deploy manifests, read as the API server and the tools on a node would: every
//! document parses, kinds and API versions are right, RBAC grants exactly what the
//! watchers need, the DaemonSet mounts what the daemon uses, its config is a valid
//! vswitchd config, its conflist one vswitch-cni accepts, and the install step
//! installs both atomically.

mod harness;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use harness::{Scratch, testbed, vswitch_cni};
use serde_json::Value;

fn deploy(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(file)
}

/// Every document of `deploy/vswitch.yaml`, as JSON values.
fn documents() -> Vec<Value> {
    let text = std::fs::read_to_string(deploy("vswitch.yaml")).expect("deploy/vswitch.yaml");
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| {
            let v: serde_yaml_ng::Value = serde::Deserialize::deserialize(d).expect("a YAML document");
            serde_json::to_value(v).expect("JSON-compatible")
        })
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind}"))
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

#[test]
fn kinds_and_api_versions() {
    let docs = documents();
    let kinds: Vec<(String, String)> = docs
        .iter()
        .map(|d| (d["apiVersion"].as_str().unwrap_or("").into(), d["kind"].as_str().unwrap_or("").into()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("v1", "ServiceAccount"),
            ("rbac.authorization.k8s.io/v1", "ClusterRole"),
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"),
            ("v1", "ConfigMap"),
            ("apps/v1", "DaemonSet"),
        ]
        .map(|(a, k)| (a.to_string(), k.to_string()))
    );
    for d in &docs {
        assert!(d["metadata"]["name"].is_string(), "named: {d}");
    }
}

#[test]
fn rbac_grants_exactly_what_the_watchers_need() {
    let docs = documents();
    let mut granted = BTreeSet::new();
    for rule in find(&docs, "ClusterRole")["rules"].as_array().expect("rules") {
        for g in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                for v in strings(&rule["verbs"]) {
                    granted.insert((g.clone(), r.clone(), v));
                }
            }
        }
    }
    let mut wanted = BTreeSet::new();
    for (g, r) in [("", "nodes"), ("", "services"), ("discovery.k8s.io", "endpointslices")] {
        for v in ["get", "list", "watch"] {
            wanted.insert((g.to_string(), r.to_string(), v.to_string()));
        }
    }
    assert_eq!(granted, wanted);
    let binding = find(&docs, "ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(binding["roleRef"]["name"], find(&docs, "ClusterRole")["metadata"]["name"]);
    let sa = find(&docs, "ServiceAccount");
    assert_eq!(binding["subjects"][0]["kind"], "ServiceAccount");
    assert_eq!(binding["subjects"][0]["name"], sa["metadata"]["name"]);
    assert_eq!(binding["subjects"][0]["namespace"], sa["metadata"]["namespace"]);
}

#[test]
fn the_daemonset_runs_vswitchd_in_cluster_mode_with_what_it_uses() {
    let docs = documents();
    let ds = find(&docs, "DaemonSet");
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(ds["spec"]["selector"]["matchLabels"], ds["spec"]["template"]["metadata"]["labels"]);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["serviceAccountName"], find(&docs, "ServiceAccount")["metadata"]["name"]);
    let c = &spec["containers"][0];
    let command = strings(&c["command"]);
    assert!(command.contains(&"--in-cluster".to_string()) && command[0].ends_with("vswitchd"), "{command:?}");
    // Upgrades are takeovers: the new pod beside the old one, the old one waiting for
    // its SIGTERM. A surge needs pods that declare no hostPort.
    assert!(command.contains(&"--takeover=wait".to_string()), "{command:?}");
    let rolling = &ds["spec"]["updateStrategy"]["rollingUpdate"];
    assert_eq!((rolling["maxSurge"].as_u64(), rolling["maxUnavailable"].as_u64()), (Some(1), Some(0)));
    assert!(!serde_json::to_string(spec).unwrap().contains("hostPort"));
    // The arguments as this vswitchd takes them (the config file is the image's).
    let mut args = command[1..].to_vec();
    if let Some(i) = args.iter().position(|a| a == "--config") {
        args.drain(i..i + 2);
    }
    let parsed = std::process::Command::new(harness::vswitchd())
        .args(&args)
        .arg("--print-default-config")
        .output()
        .expect("vswitchd runs");
    assert!(
        parsed.status.success(),
        "vswitchd takes the DaemonSet's arguments: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let node_name =
        c["env"].as_array().expect("env").iter().find(|e| e["name"] == "NODE_NAME").expect("NODE_NAME");
    assert_eq!(node_name["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"]);
    let caps: BTreeSet<String> = strings(&sc["capabilities"]["add"]).into_iter().collect();
    for needed in ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "BPF", "IPC_LOCK"] {
        assert!(caps.contains(needed), "{needed} in {caps:?}");
    }
    let mounts: BTreeSet<String> = c["volumeMounts"]
        .as_array()
        .expect("mounts")
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap().to_string())
        .collect();
    for path in
        ["/run", "/var/run/netns", "/opt/cni/bin", "/etc/cni/net.d", "/sys/fs/bpf", "/var/lib/vswitch"]
    {
        assert!(mounts.contains(path), "{path} mounted: {mounts:?}");
    }
    // Every mount names a volume, every volume is mounted.
    let volumes: BTreeSet<String> = spec["volumes"]
        .as_array()
        .expect("volumes")
        .iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect();
    let mut used = BTreeSet::new();
    for ctr in spec["containers"].as_array().unwrap().iter().chain(spec["initContainers"].as_array().unwrap())
    {
        for m in ctr["volumeMounts"].as_array().unwrap() {
            let name = m["name"].as_str().unwrap().to_string();
            assert!(volumes.contains(&name), "volume {name} exists");
            used.insert(name);
        }
    }
    assert_eq!(used, volumes);
    let init = &spec["initContainers"][0];
    assert_eq!(strings(&init["command"]), ["/opt/vswitch/install-cni.sh"]);
    // The image the Dockerfile builds has what the manifest runs.
    let dockerfile = std::fs::read_to_string(deploy("Dockerfile")).expect("Dockerfile");
    for path in ["/usr/local/bin/", "/opt/vswitch/bin/vswitch-cni", "/opt/vswitch/install-cni.sh"] {
        assert!(dockerfile.contains(path), "the image has {path}");
    }
}

#[test]
fn the_configmap_holds_a_valid_config_and_conflist() {
    let docs = documents();
    let data = &find(&docs, "ConfigMap")["data"];
    let toml = data["vswitchd.toml"].as_str().expect("vswitchd.toml");
    assert!(vswitchd::config::pod_cidr_from_cluster(toml), "each node's CIDR from its Node");
    let config = vswitchd::config::parse_with_pod_cidr(
        toml,
        Path::new("ConfigMap vswitch-config"),
        Some("10.244.7.0/24".parse().unwrap()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.services_file, None);
    assert_eq!(config.overlay.nodes_file, None);
    assert_eq!(config.api_socket, Path::new("/run/vswitch/vswitchd.sock"));

    let in_map: Value =
        serde_json::from_str(data["10-vswitch.conflist"].as_str().expect("conflist")).expect("JSON");
    let file: Value =
        serde_json::from_str(&std::fs::read_to_string(deploy("10-vswitch.conflist")).unwrap()).expect("JSON");
    assert_eq!(in_map, file, "the ConfigMap carries deploy/10-vswitch.conflist");
    // Each plugin entry as a runtime hands it over: accepted by vswitch-cni.
    for plugin in in_map["plugins"].as_array().expect("plugins") {
        let mut conf = plugin.clone();
        conf["name"] = in_map["name"].clone();
        conf["cniVersion"] = in_map["cniVersion"].clone();
        let (net, _) = vswitch_cni::config::NetConf::parse(conf.to_string().as_bytes())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(net.socket(), Path::new("/run/vswitch/vswitchd.sock"));
        assert_eq!(conf["ipam"]["ranges"][0][0]["subnet"], "usePodCidr");
    }
}

#[test]
fn the_install_step_installs_atomically() {
    let dir = Scratch::new(&testbed::unique_prefix("inst"));
    let (bin, conf) = (dir.0.join("opt/cni/bin"), dir.0.join("etc/cni/net.d"));
    let plugin = vswitch_cni();
    let out = std::process::Command::new(deploy("install-cni.sh"))
        .env("CNI_BIN_DIR", &bin)
        .env("CNI_CONF_DIR", &conf)
        .env("CNI_PLUGIN", &plugin)
        .env("CNI_CONFLIST", deploy("10-vswitch.conflist"))
        .output()
        .expect("install-cni.sh runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let installed = bin.join("vswitch-cni");
    assert_eq!(std::fs::read(&installed).unwrap(), std::fs::read(&plugin).unwrap());
    assert_eq!(std::fs::metadata(&installed).unwrap().permissions().mode() & 0o777, 0o755);
    assert_eq!(
        std::fs::read(conf.join("10-vswitch.conflist")).unwrap(),
        std::fs::read(deploy("10-vswitch.conflist")).unwrap()
    );
    // Nothing half-written left beside them; and again over the installed files.
    let leftovers = |d: &Path| {
        std::fs::read_dir(d)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains(".tmp"))
            .count()
    };
    assert_eq!(leftovers(&bin) + leftovers(&conf), 0);
    let again = std::process::Command::new(deploy("install-cni.sh"))
        .env("CNI_BIN_DIR", &bin)
        .env("CNI_CONF_DIR", &conf)
        .env("CNI_PLUGIN", &plugin)
        .env("CNI_CONFLIST", deploy("10-vswitch.conflist"))
        .output()
        .unwrap();
    assert!(again.status.success());
}

/// The dashboard and the alerting rules parse as Grafana and the Prometheus Operator
/// read them, and every expression names a metric of ours (which
/// `cluster.rs` finds in a running daemon's /metrics).
#[test]
fn the_monitoring_files_parse_and_query_our_metrics() {
    let exprs = harness::monitoring_expressions();
    assert!(exprs.len() >= 10, "panels and rules: {exprs:?}");
    let names = harness::metric_names(&exprs);
    for wanted in [
        "vswitch_drops_total",
        "vswitch_conntrack_entries",
        "vswitch_worker_busy_ratio",
        "vswitch_cluster_watch_errors_total",
    ] {
        assert!(names.contains(wanted), "{wanted} used: {names:?}");
    }
    assert!(exprs.iter().all(|e| e.contains("vswitch_")), "every expression queries vswitchd");
}
