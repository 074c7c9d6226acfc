//! vswitchctl: look at and drive a running vswitchd through its API socket.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ipnet::IpNet;
use vswitch_api::{AttachRequest, Backend, Client, ClientError};

/// Inspect and control vswitchd.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// The daemon's API socket.
    #[arg(long, env = "VSWITCH_SOCKET", default_value = vswitch_api::DEFAULT_SOCKET)]
    socket: PathBuf,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// The daemon's node, pod CIDR, gateway and worker count.
    Status,
    /// Every port: the host port and the attached pods.
    Ports,
    /// Learned MAC addresses.
    Fdb,
    /// Counters per port, drops by reason, events, worker load.
    Stats,
    /// Attach a pod's network namespace (what the CNI plugin does).
    Attach {
        #[arg(long)]
        container_id: String,
        /// Path of the pod's network namespace.
        #[arg(long)]
        netns: PathBuf,
        #[arg(long, default_value = "eth0")]
        ifname: String,
        /// An address with its prefix length; repeat for several.
        #[arg(long = "ip", required = true)]
        ips: Vec<IpNet>,
        #[arg(long)]
        mac: Option<String>,
        #[arg(long)]
        mtu: Option<u16>,
        #[arg(long)]
        backend: Option<String>,
    },
    /// Detach a pod's interface (nothing happens if it is not attached).
    Detach { container_id: String, ifname: String },
    /// The Services served, with their endpoints; `services reload` reads the
    /// services file now.
    Services {
        #[command(subcommand)]
        action: Option<ServicesCmd>,
    },
    /// The other nodes the overlay routes to; `nodes reload` reads the nodes file now.
    Nodes {
        #[command(subcommand)]
        action: Option<NodesCmd>,
    },
    /// Flows translated to Services (connection tracking).
    Conntrack {
        /// List at most this many flows.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// What the switch would do with a packet, stage by stage — nothing is sent and no
    /// table or counter changes. Describe the packet by its fields (left-out fields as
    /// the port's pod would send it) or give the whole frame with --hex. With --live N:
    /// the path each of the next N real frames matching --filter takes, as they come.
    Trace {
        /// The ingress port: number, namespace/pod, container id[/ifname] or interface
        /// (with --live it may be left out: every port).
        #[arg(required_unless_present = "live")]
        port: Option<String>,
        /// Trace the next N real frames received (on the port, if given) that match
        /// --filter, as the switch handles them.
        #[arg(
            long,
            value_name = "N",
            value_parser = clap::value_parser!(u64).range(1..=1000),
            conflicts_with_all = ["hex", "dst", "src", "sport", "dport", "flags", "src_mac", "dst_mac", "ttl"]
        )]
        live: Option<u64>,
        /// With --live: tcpdump-like terms joined by `and` (tcp, udp, icmp, arp, ip,
        /// host A, src A, dst A, port N).
        #[arg(long)]
        filter: Option<String>,
        /// With --live: give up after this many seconds.
        #[arg(long)]
        seconds: Option<u64>,
        /// The whole frame in hex, Ethernet header first.
        #[arg(long, conflicts_with_all = ["dst", "protocol"])]
        hex: Option<String>,
        /// icmp is an echo request, arp a request for --dst.
        #[arg(long, value_enum, default_value_t = Protocol::Tcp)]
        protocol: Protocol,
        #[arg(long, required_unless_present_any = ["hex", "live"])]
        dst: Option<std::net::Ipv4Addr>,
        #[arg(long)]
        src: Option<std::net::Ipv4Addr>,
        #[arg(long)]
        sport: Option<u16>,
        #[arg(long)]
        dport: Option<u16>,
        /// TCP flags, tcpdump style: S, S., ., P., F., R.
        #[arg(long)]
        flags: Option<String>,
        #[arg(long)]
        src_mac: Option<String>,
        #[arg(long)]
        dst_mac: Option<String>,
        #[arg(long)]
        ttl: Option<u8>,
        #[arg(long, default_value_t = 0)]
        payload_len: u16,
    },
    /// Copies of the frames a port receives, sends or drops, written as pcapng
    /// (tshark and Wireshark read it): one interface per port, each frame with its
    /// direction, a dropped frame with its drop reason as the packet comment. Runs
    /// until --count or --seconds, or Ctrl-C.
    Capture {
        /// The port (as for trace); leave out for every port.
        port: Option<String>,
        #[arg(long, value_enum, default_value_t = Way::Both)]
        direction: Way,
        /// Dropped frames instead, every reason or the one named.
        #[arg(long, num_args = 0..=1, default_missing_value = "", value_name = "REASON")]
        drops: Option<String>,
        /// tcpdump-like terms joined by `and`: tcp, udp, icmp, arp, ip, host A, src A,
        /// dst A, port N.
        #[arg(long, default_value = "")]
        filter: String,
        #[arg(long)]
        count: Option<u64>,
        #[arg(long)]
        seconds: Option<u64>,
        /// Bytes kept of each frame (64..=65535, default 9216).
        #[arg(long)]
        snaplen: Option<usize>,
        /// The pcapng file; `-` for standard output.
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        file: PathBuf,
    },
    /// Flows as they start and end (as `hubble observe`): 5-tuple, the client's port,
    /// Service and endpoint, verdict, packets and bytes each way. Observes only while
    /// it runs.
    Flows {
        /// Until Ctrl-C; without it, for --seconds.
        #[arg(long)]
        follow: bool,
        /// How long without --follow.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// A flow without packets for this long ends.
        #[arg(long)]
        idle: Option<u64>,
        /// tcpdump-like terms joined by `and` (as for capture), e.g. `tcp and port 80`.
        filter: Vec<String>,
    },
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Way {
    Rx,
    Tx,
    Both,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Arp,
}

#[derive(Subcommand)]
enum ServicesCmd {
    /// Read the services file now and report whether it was taken.
    Reload,
}

#[derive(Subcommand)]
enum NodesCmd {
    /// Read the nodes file now and report whether it was taken.
    Reload,
}

fn print_nodes(view: &vswitch_api::NodesView) {
    let rows = view
        .nodes
        .iter()
        .map(|n| {
            let cidrs = n.pod_cidrs.iter().map(ToString::to_string).collect::<Vec<_>>().join(",");
            vec![
                n.name.clone(),
                n.ip.to_string(),
                cidrs,
                n.vtep_mac.clone(),
                match &n.fast_path_next_hop {
                    Some(m) => format!("af_xdp via {m}"),
                    None if view.tunnel => "tunnel".into(),
                    None => "socket".into(),
                },
                format!("{:?}", n.source).to_lowercase(),
            ]
        })
        .collect();
    table(&["NODE", "UNDERLAY-IP", "POD-CIDRS", "VTEP-MAC", "PATH", "FROM"], rows);
    println!(
        "\nVXLAN VNI {} on UDP {}; underlay MTU {}, pod MTU {}; underlay port: {}",
        view.vni,
        view.port,
        view.underlay_mtu,
        view.pod_mtu,
        view.underlay.as_deref().unwrap_or("NOT UP (nothing is sent to other nodes)")
    );
    if let Some(file) = &view.nodes_file {
        println!("nodes file {} (generation {})", file.display(), view.generation);
    }
    if let Some(e) = &view.file_error {
        println!("NOT APPLIED: {e}");
    }
    let from_node: Vec<String> = view.nodes.iter().flat_map(|n| n.from_node.iter().cloned()).collect();
    if !from_node.is_empty() {
        println!("from the node itself: {}", from_node.join("; "));
    }
}

fn print_services(view: &vswitch_api::ServicesView) {
    let rows = view
        .services
        .iter()
        .map(|s| {
            let ports = s
                .ports
                .iter()
                .map(|p| {
                    let np = p.node_port.map(|n| format!(":{n}")).unwrap_or_default();
                    format!("{}{np}->{}/{}", p.port, p.target_port, p.protocol)
                })
                .collect::<Vec<_>>()
                .join(",");
            let ready = s.endpoints.iter().filter(|e| e.ready).count();
            vec![
                format!("{}/{}", s.namespace, s.name),
                format!("{:?}", s.service_type),
                s.cluster_ip.to_string(),
                ports,
                format!("{ready}/{}", s.endpoints.len()),
                match s.session_affinity {
                    vswitch_api::SessionAffinity::ClientIP => {
                        format!("ClientIP {}s", s.session_affinity_timeout)
                    }
                    vswitch_api::SessionAffinity::None => "-".into(),
                },
            ]
        })
        .collect();
    table(&["SERVICE", "TYPE", "CLUSTER-IP", "PORTS", "READY", "AFFINITY"], rows);
    if let Some(file) = &view.file {
        println!("\nfrom {} (generation {})", file.display(), view.generation);
    }
    if let Some(e) = &view.file_error {
        println!("NOT APPLIED: {e}");
    }
}

/// Writes the capture to `file` as it comes; the file is opened first, so a path that
/// cannot be written fails before the capture starts.
async fn capture(
    client: &Client,
    req: &vswitch_api::CaptureRequest,
    file: &std::path::Path,
) -> Result<(), ClientError> {
    use std::io::Write;
    let to_stdout = file.as_os_str() == "-";
    let mut out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        let f = std::fs::File::create(file)
            .map_err(|e| ClientError::Local(format!("cannot write {}: {e}", file.display())))?;
        Box::new(f)
    };
    let mut wrote = false;
    let outcome = client
        .capture(req, |piece| {
            wrote = true;
            out.write_all(piece)?;
            out.flush()
        })
        .await;
    drop(out);
    if outcome.is_err() && !wrote && !to_stdout {
        // Refused before anything was captured: no empty file left behind.
        let _ = std::fs::remove_file(file);
    }
    outcome?;
    if !to_stdout {
        let written = std::fs::read(file).unwrap_or_default();
        let (frames, lost) = vswitch_api::capture_summary(&written);
        eprintln!("{frames} frames written to {} ({lost} copies lost to a slow reader)", file.display());
    }
    Ok(())
}

/// The time of day (UTC) of a Unix time in milliseconds, as tcpdump prints it.
fn unix_ms_text(ms: u64) -> String {
    let secs = ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}.{:03} UTC", secs / 3600, secs / 60 % 60, secs % 60, ms % 1000)
}

/// A flow event in one line.
fn flow_line(e: &vswitch_api::FlowEvent) -> String {
    let via = match (&e.service, &e.endpoint) {
        (Some(s), Some(ep)) => format!(" => {ep} (Service {s})"),
        _ => String::new(),
    };
    let end = e.end_reason.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
    let pod = |p: &Option<String>| p.as_deref().map(|p| format!(" [{p}]")).unwrap_or_default();
    format!(
        "{:<5} {} {}{} -> {}{via}{} from {}: {}, out {} pkts {} B, back {} pkts {} B{end}",
        e.event,
        e.protocol,
        e.client,
        pod(&e.client_pod),
        e.server,
        pod(&e.server_pod),
        e.client_port,
        e.verdict,
        e.packets_out,
        e.bytes_out,
        e.packets_back,
        e.bytes_back
    )
}

/// A sink for a stream of JSON lines: each whole line printed as it came (`--json`) or
/// shown by `show`.
fn json_lines<T: serde::de::DeserializeOwned>(
    json: bool,
    mut show: impl FnMut(&mut dyn std::io::Write, T) -> std::io::Result<()>,
) -> impl FnMut(&[u8]) -> std::io::Result<()> {
    let mut pending = Vec::new();
    move |piece| {
        use std::io::Write;
        pending.extend_from_slice(piece);
        let mut out = std::io::stdout().lock();
        while let Some(end) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if json {
                out.write_all(&line)?;
            } else if let Ok(v) = serde_json::from_slice::<T>(&line) {
                show(&mut out, v)?;
            }
        }
        out.flush()
    }
}

fn print_trace(out: &mut dyn std::io::Write, t: vswitch_api::TraceView) -> std::io::Result<()> {
    match t.received_unix_ms {
        Some(ms) => {
            writeln!(out, "received at {} on port {} ({})", unix_ms_text(ms), t.in_port, t.in_port_name)?
        }
        None => writeln!(out, "into port {} ({})", t.in_port, t.in_port_name)?,
    }
    if t.parsed.is_empty() {
        writeln!(out, "  frame does not parse: {}", t.frame_hex)?;
    } else {
        writeln!(out, "  {}", t.parsed)?;
    }
    for (i, step) in t.steps.iter().enumerate() {
        writeln!(out, "{:>2}. {:<20} {}", i + 1, step.stage, step.result)?;
        for note in &step.notes {
            writeln!(out, "      {note}")?;
        }
    }
    match t.drop_reason.as_deref() {
        Some(reason) => {
            writeln!(out, "DROPPED: {reason} ({})", t.drop_description.as_deref().unwrap_or(""))?;
        }
        None => {
            writeln!(out, "SENT:")?;
            for sent in &t.sent {
                writeln!(out, "  port {} ({}): {}", sent.port, sent.port_name, sent.summary)?;
            }
        }
    }
    if t.received_unix_ms.is_some() {
        writeln!(out)?;
    }
    Ok(())
}

/// Prints rows as left-aligned columns under a header.
fn table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), ClientError> {
    println!("{}", serde_json::to_string_pretty(v).expect("API types serialize"));
    Ok(())
}

async fn run(args: Args) -> Result<(), ClientError> {
    let client = Client::new(&args.socket);
    match args.command {
        Cmd::Status => {
            let s = client.status().await?;
            if args.json {
                return print_json(&s);
            }
            println!("node:      {}", s.node_name);
            println!("version:   {}", s.version);
            println!("pod CIDR:  {}", s.pod_cidr);
            println!("gateway:   {} ({})", s.gateway_ip, s.gateway_mac);
            println!("pod MTU:   {}", s.mtu);
            println!("backend:   {} (default)", s.default_backend);
            println!("workers:   {}", s.workers);
            println!("pod ports: {}", s.ports);
            println!("node IP:   {}", s.node_ip.map_or_else(|| "-".into(), |ip| ip.to_string()));
            println!("uplink:    {}", s.uplink.as_deref().unwrap_or("-"));
            println!("underlay:  {}", s.underlay.as_deref().unwrap_or("-"));
            println!("started:   {}", s.started.as_deref().unwrap_or("-"));
            println!(
                "captures:  {} open, flow logs: {} followed, live traces: {} open",
                s.captures_open, s.flow_logs_open, s.live_traces_open
            );
            match &s.cluster {
                None => println!("source:    files (Services and nodes)"),
                Some(c) => {
                    println!(
                        "source:    Kubernetes, as Node {} ({} snapshots applied)",
                        c.node_name, c.applied
                    );
                    println!();
                    let rows = c
                        .watchers
                        .iter()
                        .map(|w| {
                            vec![
                                w.resource.clone(),
                                if w.synced { "yes".into() } else { "NO".into() },
                                w.objects.to_string(),
                                w.events.to_string(),
                                w.errors.to_string(),
                                w.last_error.clone().unwrap_or_else(|| "-".into()),
                            ]
                        })
                        .collect();
                    table(&["WATCHER", "SYNCED", "OBJECTS", "EVENTS", "ERRORS", "LAST ERROR"], rows);
                    if !c.skipped.is_empty() {
                        println!("\nnot served:");
                        for k in &c.skipped {
                            println!("  {k}");
                        }
                    }
                }
            }
        }
        Cmd::Ports => {
            let ports = client.ports().await?;
            if args.json {
                return print_json(&ports);
            }
            let rows = ports
                .iter()
                .map(|p| {
                    vec![
                        p.id.to_string(),
                        format!("{:?}", p.kind).to_lowercase(),
                        if p.container_id.is_empty() {
                            "-".into()
                        } else {
                            p.container_id.chars().take(12).collect()
                        },
                        p.ifname.clone(),
                        p.backend.to_string(),
                        p.mac.clone(),
                        p.ips.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                        p.mtu.to_string(),
                        p.workers.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                        if p.netns.as_os_str().is_empty() {
                            "-".into()
                        } else {
                            p.netns.display().to_string()
                        },
                    ]
                })
                .collect();
            table(
                &["ID", "KIND", "CONTAINER", "IFNAME", "BACKEND", "MAC", "IPS", "MTU", "WORKERS", "NETNS"],
                rows,
            );
        }
        Cmd::Fdb => {
            let fdb = client.fdb().await?;
            if args.json {
                return print_json(&fdb);
            }
            let rows = fdb
                .iter()
                .map(|e| {
                    vec![
                        e.segment.to_string(),
                        e.mac.clone(),
                        e.port.to_string(),
                        e.port_name.clone().unwrap_or_else(|| "-".into()),
                        format!("{}s", e.age_secs),
                    ]
                })
                .collect();
            table(&["SEGMENT", "MAC", "PORT", "NAME", "AGE"], rows);
        }
        Cmd::Stats => {
            let s = client.stats().await?;
            if args.json {
                return print_json(&s);
            }
            let rows = s
                .ports
                .iter()
                .map(|p| {
                    vec![
                        p.id.to_string(),
                        if p.name.is_empty() { "(gone)".into() } else { p.name.clone() },
                        p.rx_packets.to_string(),
                        p.rx_bytes.to_string(),
                        p.tx_packets.to_string(),
                        p.tx_bytes.to_string(),
                        p.drops.values().sum::<u64>().to_string(),
                    ]
                })
                .collect();
            table(&["PORT", "NAME", "RX_PACKETS", "RX_BYTES", "TX_PACKETS", "TX_BYTES", "DROPPED"], rows);
            println!();
            let drops: Vec<Vec<String>> = s
                .drops
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(r, n)| {
                    vec![r.clone(), n.to_string(), s.drop_descriptions.get(r).cloned().unwrap_or_default()]
                })
                .collect();
            if drops.is_empty() {
                println!("no drops ({} reasons counted)", s.drops.len());
            } else {
                table(&["DROP_REASON", "FRAMES", "MEANING"], drops);
            }
            println!();
            let events = s
                .events
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(e, n)| vec![e.clone(), n.to_string()])
                .collect();
            table(&["EVENT", "COUNT"], events);
            println!();
            println!("FDB entries: {}", s.fdb_entries);
            println!(
                "conntrack: {} of {} flows; affinity: {} clients",
                s.conntrack_entries, s.conntrack_max_entries, s.affinity_entries
            );
            let workers = s
                .workers
                .iter()
                .map(|w| {
                    vec![
                        w.id.to_string(),
                        w.polls.to_string(),
                        w.sleeps.to_string(),
                        format!("{:.1}%", w.busy_ratio * 100.0),
                    ]
                })
                .collect();
            table(&["WORKER", "POLLS", "SLEEPS", "BUSY"], workers);
        }
        Cmd::Attach { container_id, netns, ifname, ips, mac, mtu, backend } => {
            let backend = match backend.as_deref() {
                None => None,
                Some("tap") => Some(Backend::Tap),
                Some("afxdp") => Some(Backend::Afxdp),
                Some(other) => {
                    return Err(ClientError::Api {
                        status: 400,
                        code: "usage".into(),
                        message: format!("backend {other:?}: expected tap or afxdp"),
                    });
                }
            };
            let req = AttachRequest {
                container_id,
                netns,
                ifname,
                mac,
                ips,
                mtu,
                backend,
                pod: None,
                network: None,
            };
            let port = client.attach(&req).await?;
            if args.json {
                return print_json(&port);
            }
            println!(
                "attached port {} ({} {} in {}, mac {})",
                port.id,
                port.backend,
                port.ifname,
                port.netns.display(),
                port.mac
            );
        }
        Cmd::Detach { container_id, ifname } => {
            let out = client.detach(&container_id, &ifname).await?;
            if args.json {
                return print_json(&out);
            }
            println!("{}", if out.existed { "detached" } else { "was not attached" });
        }
        Cmd::Services { action } => {
            let view = match action {
                None => client.services().await?,
                Some(ServicesCmd::Reload) => client.reload_services().await?,
            };
            if args.json {
                return print_json(&view);
            }
            print_services(&view);
        }
        Cmd::Nodes { action } => {
            let view = match action {
                None => client.nodes().await?,
                Some(NodesCmd::Reload) => client.reload_nodes().await?,
            };
            if args.json {
                return print_json(&view);
            }
            print_nodes(&view);
        }
        Cmd::Trace { port, live: Some(count), filter, seconds, .. } => {
            let req =
                vswitch_api::LiveTraceRequest { port, filter: filter.unwrap_or_default(), count, seconds };
            client.trace_live(&req, json_lines(args.json, print_trace)).await?;
        }
        Cmd::Trace {
            port,
            hex,
            protocol,
            dst,
            src,
            sport,
            dport,
            flags,
            src_mac,
            dst_mac,
            ttl,
            payload_len,
            filter,
            seconds,
            live: None,
        } => {
            if filter.is_some() || seconds.is_some() {
                return Err(ClientError::Local("--filter and --seconds go with --live".into()));
            }
            let packet = match dst {
                Some(dst_ip) if hex.is_none() => Some(vswitch_api::TracePacket {
                    protocol: match protocol {
                        Protocol::Tcp => vswitch_api::TraceProtocol::Tcp,
                        Protocol::Udp => vswitch_api::TraceProtocol::Udp,
                        Protocol::Icmp => vswitch_api::TraceProtocol::Icmp,
                        Protocol::Arp => vswitch_api::TraceProtocol::Arp,
                    },
                    src_mac,
                    dst_mac,
                    src_ip: src,
                    dst_ip,
                    src_port: sport,
                    dst_port: dport,
                    tcp_flags: flags,
                    ttl,
                    payload_len,
                }),
                _ => None,
            };
            let port = port.unwrap_or_default();
            let t = client.trace(&vswitch_api::TraceRequest { port, hex, packet }).await?;
            if args.json {
                return print_json(&t);
            }
            print_trace(&mut std::io::stdout().lock(), t)
                .map_err(|e| ClientError::Local(format!("cannot write the trace: {e}")))?;
        }
        Cmd::Capture { port, direction, drops, filter, count, seconds, snaplen, file } => {
            let req = vswitch_api::CaptureRequest {
                port,
                direction: match direction {
                    Way::Rx => vswitch_api::CaptureWay::Rx,
                    Way::Tx => vswitch_api::CaptureWay::Tx,
                    Way::Both => vswitch_api::CaptureWay::Both,
                },
                drops: drops.is_some(),
                drop_reason: drops.filter(|r| !r.is_empty()),
                filter,
                count,
                seconds,
                snaplen,
            };
            return capture(&client, &req, &file).await;
        }
        Cmd::Flows { follow, seconds, idle, filter } => {
            let req = vswitch_api::FlowsRequest {
                filter: filter.join(" "),
                seconds: (!follow).then_some(seconds),
                idle_secs: idle,
            };
            let show =
                |out: &mut dyn std::io::Write, e: vswitch_api::FlowEvent| writeln!(out, "{}", flow_line(&e));
            client.flows(&req, json_lines(args.json, show)).await?;
        }
        Cmd::Conntrack { limit } => {
            let ct = client.conntrack(limit).await?;
            if args.json {
                return print_json(&ct);
            }
            let rows = ct
                .flows
                .iter()
                .map(|f| {
                    vec![
                        f.protocol.to_string(),
                        f.client.to_string(),
                        f.frontend.to_string(),
                        f.endpoint.to_string(),
                        f.source_nat.map_or_else(|| "-".into(), |a| a.to_string()),
                        f.state.clone(),
                        format!("{}s", f.idle_secs),
                        f.service.clone(),
                    ]
                })
                .collect();
            table(&["PROTO", "CLIENT", "FRONTEND", "ENDPOINT", "SNAT", "STATE", "IDLE", "SERVICE"], rows);
            println!(
                "\n{} of {} flows listed (table holds at most {})",
                ct.flows.len(),
                ct.entries,
                ct.max_entries
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vswitchctl: {e}");
            ExitCode::FAILURE
        }
    }
}
