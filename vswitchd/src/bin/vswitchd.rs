//! vswitchd: the switch daemon. Reads its configuration (the embedded default, or
//! `--config FILE`), then runs `vswitchd::daemon` — in cluster mode
//! (`--kubeconfig FILE` or `--in-cluster`) with Services and nodes from Kubernetes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use vswitchd::takeover::Retire;
use vswitchd::{cluster, config, daemon};

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Userspace virtual switch for Kubernetes nodes.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Configuration file (TOML); keys it omits keep the embedded default's value.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Validate the configuration and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the embedded default configuration and exit.
    #[arg(long)]
    print_default_config: bool,
    /// Log format on stderr. Verbosity comes from RUST_LOG (default: info).
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Cluster mode, with this kubeconfig: Services, EndpointSlices and other nodes come
    /// from the Kubernetes API (the services and nodes files are not read).
    #[arg(long, conflicts_with = "in_cluster")]
    kubeconfig: Option<PathBuf>,
    /// Cluster mode, with the pod's service account (as the DaemonSet runs it).
    #[arg(long)]
    in_cluster: bool,
    /// Take the place of the vswitchd running on the same sockets and state, if one
    /// is: its ports' queues, tables and sockets are handed over and the pods' traffic
    /// pauses for milliseconds. Without a running one, start as usual; where it cannot
    /// hand over (AF_XDP pod ports, another worker count), it stops cleanly and this one
    /// starts as after a restart. The old one then exits, or with `wait` waits for its
    /// SIGTERM (a DaemonSet's old pod, whose container would otherwise be restarted).
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "exit", value_name = "OLD")]
    takeover: Option<Retire>,
    /// This node's name (its Node object's), overriding the config's `node_name`.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
}

/// The configuration `validated` (parsed from `text`, with a stand-in pod CIDR if `text`
/// leaves it to the cluster), completed in cluster mode: the pod CIDR from this node's
/// Node object when the config leaves it empty (waiting for it to be allocated), the
/// node's address from its InternalIP.
async fn configure(
    text: &str,
    file: &Path,
    mut validated: config::Config,
    node_name: Option<String>,
    source: Option<cluster::Source>,
) -> Result<(config::Config, Option<daemon::ClusterMode>), String> {
    if let Some(n) = node_name {
        validated.node_name = n;
    }
    let Some(source) = source else { return Ok((validated, None)) };
    let client = cluster::client(&source).await.map_err(|e| e.to_string())?;
    let name = validated.node_name.clone();
    let needs_cidr = config::pod_cidr_from_cluster(text);
    let mut this = None;
    loop {
        match cluster::this_node(&client, &name).await {
            Ok(Some(n)) if n.pod_cidr.is_some() || !needs_cidr => {
                this = Some(n);
                break;
            }
            Ok(_) if !needs_cidr => break,
            Ok(_) => tracing::warn!(node = %name, "the Node has no IPv4 pod CIDR yet; waiting"),
            // Without the need, an unreachable API server does not hold the start up.
            Err(e) if !needs_cidr => {
                tracing::warn!(error = %e, "reading this node's Node; going on without it");
                break;
            }
            Err(e) => tracing::warn!(error = %e, "reading this node's Node; retrying"),
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let cidr = if needs_cidr { this.as_ref().and_then(|n| n.pod_cidr) } else { None };
    if let Some(c) = cidr {
        tracing::info!(node = %name, pod_cidr = %c, "pod CIDR from the Node object");
    }
    // Only a pod CIDR from the cluster changes what the parse derives (the gateway).
    let mut c = match cidr {
        Some(_) => config::parse_with_pod_cidr(text, file, cidr).map_err(|e| e.to_string())?,
        None => validated,
    };
    c.node_name = name;
    // The node's address (NodePorts, VXLAN's source) from its InternalIP, unless set.
    if c.node_ip.is_none() {
        c.node_ip = this.and_then(|n| n.internal_ip);
    }
    // The cluster is the source of Services and nodes; the files would compete with it.
    c.services_file = None;
    c.overlay.nodes_file = None;
    Ok((c, Some(daemon::ClusterMode { client })))
}

fn main() -> ExitCode {
    vswitch_dataplane::port::afxdp::prepare_process();
    let args = Args::parse();
    if args.print_default_config {
        print!("{}", config::DEFAULT_CONFIG);
        return ExitCode::SUCCESS;
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let (text, file) = match &args.config {
        Some(path) => match std::fs::read_to_string(path) {
            Ok(t) => (t, path.clone()),
            Err(e) => {
                eprintln!("vswitchd: {}:0: (file): cannot read: {e}", path.display());
                return ExitCode::from(2);
            }
        },
        None => (config::DEFAULT_CONFIG.to_string(), PathBuf::from("(embedded default)")),
    };
    let source = match (&args.kubeconfig, args.in_cluster) {
        (Some(path), _) => Some(cluster::Source::Kubeconfig(path.clone())),
        (None, true) => Some(cluster::Source::InCluster),
        (None, false) => None,
    };
    // Validate now (a pod CIDR left to the cluster checked with a stand-in), so a bad
    // file fails before anything starts.
    let stand_in = (source.is_some() && config::pod_cidr_from_cluster(&text))
        .then(|| "10.0.0.0/24".parse().expect("a CIDR"));
    let validated = match config::parse_with_pod_cidr(&text, &file, stand_in) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("vswitchd: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check_config {
        println!("configuration ok");
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vswitch-control")
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vswitchd: starting the control runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        let (config, cluster) = configure(&text, &file, validated, args.node_name.clone(), source).await?;
        daemon::run(config, env!("CARGO_PKG_VERSION"), cluster, args.takeover)
            .await
            .map_err(|e| e.to_string())
    };
    match runtime.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "vswitchd failed");
            eprintln!("vswitchd: {e}");
            ExitCode::FAILURE
        }
    }
}
