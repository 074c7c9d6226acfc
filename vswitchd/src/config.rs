//! The daemon's configuration: a TOML file, or the embedded default.
//!
//! Every error names the file, the line and the field, whether TOML syntax, a wrong
//! type, an unknown key or a value that makes no sense (a gateway outside the pod
//! CIDR): an operator should never have to guess which line to fix.

use std::net::{Ipv4Addr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::Deserialize;
use toml::Spanned;

use vswitch_dataplane::wire::MacAddr;

/// The configuration `vswitchd` runs with when given no `--config`.
pub const DEFAULT_CONFIG: &str = include_str!("default-config.toml");

/// How a worker waits when its queues are empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum IdleMode {
    /// Keep polling for a while after the last frame (a window that grows, up to
    /// `idle_poll_us`, while frames keep ending its sleeps early), then sleep in epoll.
    Adaptive,
    /// Sleep in epoll as soon as a round finds nothing: the least CPU, the most wake-ups.
    Epoll,
    /// Spin: lowest latency, each worker's core at 100%.
    BusyPoll,
}

pub use vswitch_api::Backend;

/// How AF_XDP ports attach their XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AfxdpMode {
    /// Native (driver) mode where the driver has it, else generic.
    Auto,
    Native,
    Generic,
}

/// How VXLAN to and from other nodes meets the kernel (`overlay.underlay_io`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnderlayIo {
    /// The tunnel TAP where the node allows it, else sockets.
    Auto,
    /// The tunnel TAP, or no underlay: a super-frame crosses to another node whole.
    Tunnel,
    /// Kernel sockets (and the uplink's AF_XDP where one is set): every packet cut to
    /// the underlay MTU by the switch.
    Sockets,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownArpPolicy {
    Drop,
    Flood,
}

/// What the pods' segment does with unicast to a MAC nobody registered (`fdb.unknown_unicast`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownUnicastPolicy {
    Drop,
    Flood,
}

/// The configuration, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub node_name: String,
    pub pod_cidr: Ipv4Net,
    pub gateway_ip: Ipv4Addr,
    pub gateway_mac: MacAddr,
    /// Worker threads; resolved from "0 = one per core".
    pub workers: usize,
    pub pin_cpus: Vec<usize>,
    pub batch_size: usize,
    pub idle: IdleMode,
    /// How long an adaptive worker keeps polling after its last frame.
    pub idle_poll_us: u32,
    pub port_backend: Backend,
    /// TAP ports carry TSO/GSO super-frames and partial checksums.
    pub offloads: bool,
    pub afxdp_mode: AfxdpMode,
    /// Default pod MTU.
    pub mtu: u16,
    pub api_socket: PathBuf,
    pub metrics_address: Option<SocketAddr>,
    pub state_file: PathBuf,
    /// How old the tables snapshot written at a clean stop may be to be taken at the
    /// next start; zero: no snapshot is written or taken.
    pub snapshot_max_age_secs: u32,
    /// Name of the host port (the TAP in the node's namespace carrying the gateway IP);
    /// `None` disables it.
    pub host_port: Option<String>,
    pub max_ports: usize,
    pub fdb_aging_secs: u32,
    pub fdb_max_entries: u32,
    pub unknown_arp: UnknownArpPolicy,
    pub unknown_unicast: UnknownUnicastPolicy,
    /// Frames a port may have flooded per second (0: no limit), and at once.
    pub storm_control_pps: u32,
    pub storm_control_burst: u32,
    pub conntrack: vswitch_dataplane::tables::conntrack::ConntrackConfig,
    /// The node's underlay interface, where NodePort traffic is taken from.
    pub uplink: Option<String>,
    /// A TOML file of Services, watched for changes; `None`: no file source.
    pub services_file: Option<PathBuf>,
    /// The node's address, for NodePorts; `None`: NodePorts are not served.
    pub node_ip: Option<Ipv4Addr>,
    /// Source address of a pod's flow to its own Service when it is the endpoint.
    pub hairpin_ip: Ipv4Addr,
    pub overlay: OverlayConfig,
}

/// The overlay between nodes (`[overlay]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OverlayConfig {
    pub vni: u32,
    pub port: u16,
    pub underlay_mtu: u16,
    /// The node's interface toward the other nodes (where VXLAN arrives); `None`: the
    /// uplink's.
    pub interface: Option<String>,
    pub underlay_io: UnderlayIo,
    pub nodes_file: Option<PathBuf>,
    /// Nodes fixed in the config.
    pub nodes: Vec<vswitch_dataplane::tables::overlay::NodeSpec>,
}

impl OverlayConfig {
    /// The overlay table's settings on a node with this pod network.
    pub fn settings_for(
        &self,
        pod_cidr: Ipv4Net,
        gateway_ip: Ipv4Addr,
        gateway_mac: MacAddr,
        node_ip: Option<Ipv4Addr>,
    ) -> vswitch_dataplane::tables::overlay::OverlaySettings {
        vswitch_dataplane::tables::overlay::OverlaySettings {
            vni: self.vni,
            udp_port: self.port,
            underlay_mtu: self.underlay_mtu,
            local_ip: node_ip.unwrap_or(Ipv4Addr::UNSPECIFIED),
            segment: vswitch_dataplane::ids::SegmentId(0),
            gateway_ip,
            gateway_mac,
            local_cidr: pod_cidr,
        }
    }
}

impl Config {
    /// Whether pods' default MTU is more than VXLAN carries whole between nodes.
    pub fn mtu_exceeds_overlay(&self) -> bool {
        self.mtu > self.overlay.underlay_mtu - vswitch_dataplane::wire::vxlan::OUTER_LEN as u16
    }

    /// The overlay table's settings for this node.
    pub fn overlay_settings(&self) -> vswitch_dataplane::tables::overlay::OverlaySettings {
        self.overlay.settings_for(self.pod_cidr, self.gateway_ip, self.gateway_mac, self.node_ip)
    }
}

/// Declares a section of the file twice: as written by the user (every key optional,
/// missing ones from the embedded default) and as the embedded default must be
/// (complete). The user's form keeps serde's spans pointing into the user's own text.
macro_rules! section {
    ($raw:ident, $complete:ident, { $($field:ident : $ty:ty => $cty:ty),* $(,)? }, $default:expr) => {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields, default)]
        struct $raw {
            $($field: $ty,)*
        }

        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct $complete {
            $($field: $cty,)*
        }

        impl From<$complete> for $raw {
            fn from(c: $complete) -> Self {
                $raw { $($field: c.$field.into(),)* }
            }
        }

        impl Default for $raw {
            fn default() -> Self {
                let all = embedded();
                #[allow(clippy::redundant_closure_call)]
                ($default)(all)
            }
        }
    };
}

/// The embedded default, parsed strictly: it must name every key.
fn embedded() -> CompleteRawConfig {
    toml::from_str(DEFAULT_CONFIG).expect("the embedded default config is complete")
}

section!(RawConfig, CompleteRawConfig, {
    node_name: Spanned<String> => Spanned<String>,
    pod_cidr: Spanned<String> => Spanned<String>,
    gateway_ip: Spanned<String> => Spanned<String>,
    gateway_mac: Spanned<String> => Spanned<String>,
    workers: Spanned<usize> => Spanned<usize>,
    pin_cpus: Spanned<Vec<usize>> => Spanned<Vec<usize>>,
    batch_size: Spanned<usize> => Spanned<usize>,
    idle: IdleMode => IdleMode,
    idle_poll_us: Spanned<u32> => Spanned<u32>,
    port_backend: Backend => Backend,
    offloads: bool => bool,
    afxdp_mode: AfxdpMode => AfxdpMode,
    mtu: Spanned<u16> => Spanned<u16>,
    api_socket: PathBuf => PathBuf,
    metrics_address: Spanned<String> => Spanned<String>,
    state_file: PathBuf => PathBuf,
    snapshot_max_age_seconds: Spanned<u32> => Spanned<u32>,
    host_port: Spanned<String> => Spanned<String>,
    max_ports: Spanned<usize> => Spanned<usize>,
    fdb: RawFdb => CompleteRawFdb,
    arp: RawArp => CompleteRawArp,
    conntrack: RawConntrack => CompleteRawConntrack,
    uplink: RawUplink => CompleteRawUplink,
    services: RawServices => CompleteRawServices,
    overlay: RawOverlay => CompleteRawOverlay,
}, |c: CompleteRawConfig| c.into());

section!(RawOverlay, CompleteRawOverlay, {
    vni: Spanned<u32> => Spanned<u32>,
    port: Spanned<u16> => Spanned<u16>,
    underlay_mtu: Spanned<u16> => Spanned<u16>,
    interface: Spanned<String> => Spanned<String>,
    underlay_io: UnderlayIo => UnderlayIo,
    nodes_file: PathBuf => PathBuf,
    node: Vec<super::nodes_file::RawNode> => Vec<super::nodes_file::RawNode>,
}, |c: CompleteRawConfig| c.overlay.into());

section!(RawUplink, CompleteRawUplink, {
    interface: Spanned<String> => Spanned<String>,
}, |c: CompleteRawConfig| c.uplink.into());

section!(RawFdb, CompleteRawFdb, {
    aging_seconds: Spanned<u32> => Spanned<u32>,
    max_entries: Spanned<u32> => Spanned<u32>,
    unknown_unicast: UnknownUnicastPolicy => UnknownUnicastPolicy,
    storm_control_pps: Spanned<u32> => Spanned<u32>,
    storm_control_burst: Spanned<u32> => Spanned<u32>,
}, |c: CompleteRawConfig| c.fdb.into());

section!(RawArp, CompleteRawArp, {
    unknown_target: UnknownArpPolicy => UnknownArpPolicy,
}, |c: CompleteRawConfig| c.arp.into());

section!(RawConntrack, CompleteRawConntrack, {
    max_entries: Spanned<u32> => Spanned<u32>,
    tcp_syn_timeout: Spanned<u32> => Spanned<u32>,
    tcp_established_timeout: Spanned<u32> => Spanned<u32>,
    tcp_closing_timeout: Spanned<u32> => Spanned<u32>,
    tcp_reset_timeout: Spanned<u32> => Spanned<u32>,
    udp_timeout: Spanned<u32> => Spanned<u32>,
    udp_replied_timeout: Spanned<u32> => Spanned<u32>,
}, |c: CompleteRawConfig| c.conntrack.into());

section!(RawServices, CompleteRawServices, {
    file: PathBuf => PathBuf,
    node_ip: Spanned<String> => Spanned<String>,
    hairpin_ip: Spanned<String> => Spanned<String>,
}, |c: CompleteRawConfig| c.services.into());

/// A configuration problem, located.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {field}: {message}", file.display())]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// The key, dotted for tables (`fdb.aging_seconds`), or `(syntax)`.
    pub field: String,
    pub message: String,
}

/// Parses and validates `text`, read from `file` (used in messages only). Keys missing
/// from `text` take their value from [`DEFAULT_CONFIG`].
pub fn parse(text: &str, file: &Path) -> Result<Config, ConfigError> {
    parse_with_pod_cidr(text, file, None)
}

/// Whether `text` leaves the pod CIDR to the cluster (`pod_cidr = ""`): in cluster mode
/// it then comes from this node's Node object.
pub fn pod_cidr_from_cluster(text: &str) -> bool {
    toml::from_str::<RawConfig>(text).is_ok_and(|raw| raw.pod_cidr.get_ref().is_empty())
}

/// [`parse`], with the pod CIDR given (from the cluster) when `text` leaves it empty.
pub fn parse_with_pod_cidr(
    text: &str,
    file: &Path,
    from_cluster: Option<Ipv4Net>,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let at = e.span().map_or(0, |s| s.start);
        ConfigError {
            file: file.to_path_buf(),
            line: line_at(text, at),
            field: field_at(text, at, e.message()),
            message: e.message().trim().to_string(),
        }
    })?;
    // Semantic errors: the key's own line (the value may have come from the default,
    // but then it was valid on its own and the user's line is the one to look at).
    let at = |_span: Range<usize>, field: &str, message: String| ConfigError {
        file: file.to_path_buf(),
        line: line_of_key(text, field).unwrap_or(0),
        field: field.to_string(),
        message,
    };

    let pod_cidr: Ipv4Net = match (raw.pod_cidr.get_ref().as_str(), from_cluster) {
        ("", Some(cidr)) => cidr,
        ("", None) => {
            return Err(at(
                raw.pod_cidr.span(),
                "pod_cidr",
                "empty: only a daemon in cluster mode (--kubeconfig, --in-cluster) can take it from its Node"
                    .into(),
            ));
        }
        (text, _) => text.parse().map_err(|e| {
            at(raw.pod_cidr.span(), "pod_cidr", format!("{e}: expected an IPv4 CIDR like 10.244.1.0/24"))
        })?,
    };
    if pod_cidr.prefix_len() > 30 {
        return Err(at(
            raw.pod_cidr.span(),
            "pod_cidr",
            "prefix longer than /30 leaves no pod addresses".into(),
        ));
    }
    let pod_cidr = pod_cidr.trunc();
    let gateway_ip = if raw.gateway_ip.get_ref().is_empty() {
        pod_cidr.hosts().next().expect("a /30 or shorter has hosts")
    } else {
        let ip: Ipv4Addr =
            raw.gateway_ip.get_ref().parse().map_err(|e| {
                at(raw.gateway_ip.span(), "gateway_ip", format!("{e}: expected an IPv4 address"))
            })?;
        if !pod_cidr.contains(&ip) || ip == pod_cidr.network() || ip == pod_cidr.broadcast() {
            return Err(at(
                raw.gateway_ip.span(),
                "gateway_ip",
                format!("{ip} is not a host address of pod_cidr {pod_cidr}"),
            ));
        }
        ip
    };
    let gateway_mac: MacAddr = raw
        .gateway_mac
        .get_ref()
        .parse()
        .map_err(|e| at(raw.gateway_mac.span(), "gateway_mac", format!("{e}")))?;
    if gateway_mac.is_multicast() || gateway_mac.is_zero() {
        return Err(at(raw.gateway_mac.span(), "gateway_mac", "must be a unicast, non-zero MAC".into()));
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = match *raw.workers.get_ref() {
        0 => cores.min(vswitch_dataplane::ids::MAX_WORKERS),
        n if n > vswitch_dataplane::ids::MAX_WORKERS => {
            return Err(at(
                raw.workers.span(),
                "workers",
                format!("at most {} workers", vswitch_dataplane::ids::MAX_WORKERS),
            ));
        }
        n => n,
    };
    let pin_cpus = raw.pin_cpus.get_ref().clone();
    // The CPUs this process may run on (its affinity mask), not merely a count: under a
    // cpuset of 8-11 the valid pins are 8 to 11.
    let allowed: Vec<usize> = core_affinity::get_core_ids()
        .map_or_else(|| (0..cores).collect(), |ids| ids.iter().map(|c| c.id).collect());
    if let Some(cpu) = pin_cpus.iter().find(|c| !allowed.contains(c)) {
        return Err(at(
            raw.pin_cpus.span(),
            "pin_cpus",
            format!("CPU {cpu} is not one this process may run on ({allowed:?})"),
        ));
    }
    if !pin_cpus.is_empty() && pin_cpus.len() < workers {
        return Err(at(
            raw.pin_cpus.span(),
            "pin_cpus",
            format!("{} CPUs listed for {workers} workers: list one per worker, or none", pin_cpus.len()),
        ));
    }
    let idle_poll_us = *raw.idle_poll_us.get_ref();
    if idle_poll_us > 100_000 {
        return Err(at(
            raw.idle_poll_us.span(),
            "idle_poll_us",
            format!("{idle_poll_us} is outside 0..=100000"),
        ));
    }
    let batch_size = *raw.batch_size.get_ref();
    if !(1..=1024).contains(&batch_size) {
        return Err(at(raw.batch_size.span(), "batch_size", format!("{batch_size} is outside 1..=1024")));
    }
    let ov = &raw.overlay;
    let vni = *ov.vni.get_ref();
    if vni == 0 || vni >= 1 << 24 {
        return Err(at(ov.vni.span(), "overlay.vni", format!("{vni} is outside 1..=16777215 (24 bits)")));
    }
    let overlay_port = *ov.port.get_ref();
    if overlay_port == 0 {
        return Err(at(ov.port.span(), "overlay.port", "must be a UDP port, 1..=65535".into()));
    }
    let underlay_mtu = *ov.underlay_mtu.get_ref();
    if !(626..=9050).contains(&underlay_mtu) {
        return Err(at(
            ov.underlay_mtu.span(),
            "overlay.underlay_mtu",
            format!("{underlay_mtu} is outside 626..=9050"),
        ));
    }
    let overlay_mtu = underlay_mtu - vswitch_dataplane::wire::vxlan::OUTER_LEN as u16;
    let mtu = match *raw.mtu.get_ref() {
        0 => overlay_mtu,
        m if !(576..=9000).contains(&m) => {
            return Err(at(
                raw.mtu.span(),
                "mtu",
                format!("{m} is outside 576..=9000 (or 0: from the overlay)"),
            ));
        }
        // Larger than the overlay carries whole: allowed (a single node has no overlay,
        // and across nodes path-MTU discovery copes); the daemon warns at start.
        m => m,
    };
    let metrics_address = match raw.metrics_address.get_ref().as_str() {
        "" => None,
        s => Some(s.parse().map_err(|e| {
            at(
                raw.metrics_address.span(),
                "metrics_address",
                format!("{e}: expected host:port like 127.0.0.1:9479"),
            )
        })?),
    };
    let interface = |value: &Spanned<String>, field: &str| match value.get_ref().as_str() {
        "" => Ok(None),
        name if name.len() > 15 || name.contains('/') || name.contains(char::is_whitespace) => {
            Err(at(value.span(), field, format!("{name:?} is not a valid interface name")))
        }
        name => Ok(Some(name.to_string())),
    };
    let host_port = interface(&raw.host_port, "host_port")?;
    let uplink = interface(&raw.uplink.interface, "uplink.interface")?;
    if uplink.is_some() && uplink == host_port {
        return Err(at(
            raw.uplink.interface.span(),
            "uplink.interface",
            "the uplink cannot be the host port".into(),
        ));
    }
    let max_ports = *raw.max_ports.get_ref();
    if !(2..=65536).contains(&max_ports) {
        return Err(at(raw.max_ports.span(), "max_ports", format!("{max_ports} is outside 2..=65536")));
    }
    let fdb_max_entries = *raw.fdb.max_entries.get_ref();
    if fdb_max_entries == 0 {
        return Err(at(raw.fdb.max_entries.span(), "fdb.max_entries", "must be at least 1".into()));
    }
    let storm_control_pps = *raw.fdb.storm_control_pps.get_ref();
    let storm_control_burst = *raw.fdb.storm_control_burst.get_ref();
    if storm_control_pps > 0 && storm_control_burst == 0 {
        return Err(at(
            raw.fdb.storm_control_burst.span(),
            "fdb.storm_control_burst",
            "must be at least 1 when fdb.storm_control_pps is set".into(),
        ));
    }
    let fdb_aging_secs = *raw.fdb.aging_seconds.get_ref();
    if fdb_aging_secs == 0 {
        return Err(at(raw.fdb.aging_seconds.span(), "fdb.aging_seconds", "must be at least 1".into()));
    }
    let node_name = match raw.node_name.get_ref().as_str() {
        "" => hostname(),
        n => n.to_string(),
    };
    let ct = &raw.conntrack;
    for (value, field) in [
        (&ct.max_entries, "conntrack.max_entries"),
        (&ct.tcp_syn_timeout, "conntrack.tcp_syn_timeout"),
        (&ct.tcp_established_timeout, "conntrack.tcp_established_timeout"),
        (&ct.tcp_closing_timeout, "conntrack.tcp_closing_timeout"),
        (&ct.tcp_reset_timeout, "conntrack.tcp_reset_timeout"),
        (&ct.udp_timeout, "conntrack.udp_timeout"),
        (&ct.udp_replied_timeout, "conntrack.udp_replied_timeout"),
    ] {
        if *value.get_ref() == 0 {
            return Err(at(value.span(), field, "must be at least 1".into()));
        }
    }
    let conntrack = vswitch_dataplane::tables::conntrack::ConntrackConfig {
        max_entries: *ct.max_entries.get_ref(),
        timeouts: vswitch_dataplane::tables::conntrack::Timeouts {
            tcp_syn: *ct.tcp_syn_timeout.get_ref(),
            tcp_established: *ct.tcp_established_timeout.get_ref(),
            tcp_closing: *ct.tcp_closing_timeout.get_ref(),
            tcp_reset: *ct.tcp_reset_timeout.get_ref(),
            udp: *ct.udp_timeout.get_ref(),
            udp_replied: *ct.udp_replied_timeout.get_ref(),
        },
    };
    let sv = &raw.services;
    let services_file = (!sv.file.as_os_str().is_empty()).then(|| sv.file.clone());
    let node_ip = match sv.node_ip.get_ref().as_str() {
        "" => None,
        text => Some(text.parse::<Ipv4Addr>().map_err(|e| {
            at(sv.node_ip.span(), "services.node_ip", format!("{e}: expected an IPv4 address"))
        })?),
    };
    let hairpin_ip: Ipv4Addr = sv.hairpin_ip.get_ref().parse().map_err(|e| {
        at(sv.hairpin_ip.span(), "services.hairpin_ip", format!("{e}: expected an IPv4 address"))
    })?;
    if pod_cidr.contains(&hairpin_ip) {
        return Err(at(
            sv.hairpin_ip.span(),
            "services.hairpin_ip",
            format!("{hairpin_ip} is inside pod_cidr {pod_cidr}; it must belong to no pod"),
        ));
    }
    let mut nodes = Vec::with_capacity(ov.node.len());
    for (i, rn) in ov.node.iter().enumerate() {
        let node = rn.convert(&format!("overlay.node[{i}]")).map_err(|(offset, field, message)| {
            ConfigError { file: file.to_path_buf(), line: line_at(text, offset), field, message }
        })?;
        nodes.push(node);
    }
    let overlay_interface = interface(&ov.interface, "overlay.interface")?;
    if overlay_interface.is_some()
        && (overlay_interface == host_port || overlay_interface.as_deref() == Some(crate::ports::TUNNEL_TAP))
    {
        return Err(at(
            ov.interface.span(),
            "overlay.interface",
            "the underlay interface cannot be the host port or the tunnel TAP".into(),
        ));
    }
    let overlay = OverlayConfig {
        vni,
        port: overlay_port,
        underlay_mtu,
        interface: overlay_interface,
        underlay_io: ov.underlay_io,
        nodes_file: (!ov.nodes_file.as_os_str().is_empty()).then(|| ov.nodes_file.clone()),
        nodes,
    };
    if let Err(e) = vswitch_dataplane::tables::overlay::OverlayTable::build(
        overlay.settings_for(pod_cidr, gateway_ip, gateway_mac, node_ip),
        None,
        &overlay.nodes,
    ) {
        let i = overlay.nodes.iter().rposition(|n| e.involves(&n.name)).unwrap_or(0);
        return Err(ConfigError {
            file: file.to_path_buf(),
            line: ov.node.get(i).map_or(0, |n| line_at(text, n.offset())),
            field: format!("overlay.node[{i}]"),
            message: e.to_string(),
        });
    }
    Ok(Config {
        node_name,
        pod_cidr,
        gateway_ip,
        gateway_mac,
        workers,
        pin_cpus,
        batch_size,
        idle: raw.idle,
        idle_poll_us,
        port_backend: raw.port_backend,
        offloads: raw.offloads,
        afxdp_mode: raw.afxdp_mode,
        mtu,
        api_socket: raw.api_socket,
        metrics_address,
        state_file: raw.state_file,
        snapshot_max_age_secs: *raw.snapshot_max_age_seconds.get_ref(),
        host_port,
        max_ports,
        fdb_aging_secs,
        fdb_max_entries,
        unknown_arp: raw.arp.unknown_target,
        unknown_unicast: raw.fdb.unknown_unicast,
        storm_control_pps,
        storm_control_burst,
        conntrack,
        uplink,
        services_file,
        node_ip,
        hairpin_ip,
        overlay,
    })
}

/// Reads and parses a config file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        line: 0,
        field: "(file)".into(),
        message: format!("cannot read: {e}"),
    })?;
    parse(&text, path)
}

/// The embedded default.
pub fn default_config() -> Config {
    parse(DEFAULT_CONFIG, Path::new("(embedded default)")).expect("the embedded default config is valid")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_default()
}

/// The key an error at byte `at` is about: the one named in the message (unknown
/// field), else the key assigned on that line, prefixed with its table.
pub(super) fn field_at(text: &str, at: usize, message: &str) -> String {
    let line_no = line_at(text, at);
    let mut table = String::new();
    let mut key = None;
    for (i, raw) in text.lines().enumerate().take(line_no) {
        let line = raw.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            // `[table]` or `[[array.of.tables]]`
            table = name.trim_matches(['[', ']']).trim().to_string();
        } else if i + 1 == line_no {
            key = line.split_once('=').map(|(k, _)| k.trim().trim_matches('"').to_string());
        }
    }
    if message.starts_with("unknown field") {
        key = message.split('`').nth(1).map(str::to_string);
    }
    match key.filter(|k| !k.is_empty()) {
        Some(k) if table.is_empty() => k,
        Some(k) => format!("{table}.{k}"),
        None => "(syntax)".to_string(),
    }
}

/// 1-based line of byte offset `at`.
pub(super) fn line_at(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].matches('\n').count() + 1
}

/// 1-based line where `key` (possibly dotted: `table.key`) is assigned in `text`.
fn line_of_key(text: &str, dotted: &str) -> Option<usize> {
    let (table, key) = dotted.rsplit_once('.').map_or(("", dotted), |(t, k)| (t, k));
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_string();
            continue;
        }
        let Some((k, _)) = line.split_once('=') else { continue };
        let k = k.trim().trim_matches('"');
        let (t, k) = match k.rsplit_once('.') {
            Some((inline_table, k)) => {
                (format!("{current}{}{inline_table}", if current.is_empty() { "" } else { "." }), k)
            }
            None => (current.clone(), k),
        };
        if t == table && k == key {
            return Some(i + 1);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse(text, Path::new("vswitchd.toml")).unwrap_err()
    }

    #[test]
    fn embedded_default_is_valid_and_sensible() {
        let c = default_config();
        assert_eq!(c.pod_cidr, "10.244.1.0/24".parse().unwrap());
        assert_eq!(c.gateway_ip, Ipv4Addr::new(10, 244, 1, 1));
        assert_eq!((c.idle, c.idle_poll_us), (IdleMode::Adaptive, 200));
        assert_eq!(c.port_backend, Backend::Tap);
        assert!(c.workers >= 1);
        assert_eq!(c.mtu, 1450, "room for VXLAN on a 1500-byte underlay");
        assert_eq!((c.overlay.vni, c.overlay.port, c.overlay.underlay_mtu), (1, 4789, 1500));
        assert!(c.overlay.nodes.is_empty());
    }

    #[test]
    fn the_pod_cidr_may_be_left_to_the_cluster() {
        let text = "pod_cidr = \"\"\n";
        assert!(pod_cidr_from_cluster(text) && !pod_cidr_from_cluster("workers = 1\n"));
        let e = err(text);
        assert_eq!((e.line, e.field.as_str()), (1, "pod_cidr"), "{e}");
        let c = parse_with_pod_cidr(text, Path::new("f"), Some("10.244.9.0/24".parse().unwrap())).unwrap();
        assert_eq!(
            (c.pod_cidr.to_string(), c.gateway_ip),
            ("10.244.9.0/24".into(), Ipv4Addr::new(10, 244, 9, 1))
        );
    }

    #[test]
    fn overlay_nodes_in_the_config() {
        let c = parse(
            "[overlay]\nunderlay_mtu = 9000\n[[overlay.node]]\nname = \"b\"\nip = \"192.168.50.2\"\npod_cidr = \"10.244.2.0/24\"\n",
            Path::new("f"),
        )
        .unwrap();
        assert_eq!(c.mtu, 8950);
        assert!(
            parse("mtu = 1500\n", Path::new("f")).unwrap().mtu_exceeds_overlay(),
            "allowed, warned about"
        );
        assert_eq!(c.overlay.nodes[0].name, "b");
        let e =
            err("[[overlay.node]]\nname = \"b\"\nip = \"192.168.50.2\"\npod_cidr = \"10.244.1.128/25\"\n");
        assert_eq!((e.line, e.field.as_str()), (2, "overlay.node[0]"), "{e}");
        let e = err("\n[[overlay.node]]\nname = \"b\"\nip = \"nope\"\npod_cidr = \"10.244.2.0/24\"\n");
        assert_eq!((e.line, e.field.as_str()), (4, "overlay.node[0].ip"), "{e}");
    }

    #[test]
    fn a_file_need_only_say_what_differs() {
        let c = parse("pod_cidr = \"10.244.7.0/24\"\n[fdb]\naging_seconds = 60\n", Path::new("f")).unwrap();
        assert_eq!(c.gateway_ip, Ipv4Addr::new(10, 244, 7, 1), "gateway derived from the CIDR");
        assert_eq!(c.fdb_aging_secs, 60);
        assert_eq!(c.fdb_max_entries, 65536, "the rest of [fdb] from the default");
        assert_eq!(c.mtu, 1450);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = err("mtu = 1400\nworkers = \"two\"\n");
        assert_eq!((e.line, e.field.as_str()), (2, "workers"), "{e}");
        assert!(e.to_string().starts_with("vswitchd.toml:2: workers: invalid type"), "{e}");

        let e = err("mtu = 1500\n\n[fdb]\nagign_seconds = 3\n");
        assert_eq!((e.line, e.field.as_str()), (4, "fdb.agign_seconds"), "{e}");
        assert!(e.message.contains("unknown field"), "{e}");

        let e = err("pod_cidr = \"10.244.1.0/24\"\ngateway_ip = \"10.9.9.9\"\n");
        assert_eq!((e.line, e.field.as_str()), (2, "gateway_ip"), "{e}");
        assert!(e.message.contains("not a host address"), "{e}");

        let e = err("# comment\nmtu = 12\n");
        assert_eq!((e.line, e.field.as_str()), (2, "mtu"), "{e}");

        let e = err("mtu = 1500\nworkers = [\n");
        assert_eq!((e.line, e.field.as_str()), (2, "workers"), "{e}");
        assert!(e.message.contains("unclosed array"), "{e}");

        let e = err("mtu = 1500\n= 3\n");
        assert_eq!((e.line, e.field.as_str()), (2, "(syntax)"), "{e}");

        let e = err("idle = \"sometimes\"\n");
        assert_eq!((e.line, e.field.as_str()), (1, "idle"), "{e}");

        let e = err("\n[fdb]\nmax_entries = -1\n");
        assert_eq!((e.line, e.field.as_str()), (3, "fdb.max_entries"), "{e}");
    }

    #[test]
    fn semantic_checks() {
        for (text, field) in [
            ("pod_cidr = \"10.244.1.0/31\"", "pod_cidr"),
            ("pod_cidr = \"banana\"", "pod_cidr"),
            ("gateway_ip = \"10.244.1.0\"", "gateway_ip"),
            ("gateway_mac = \"01:00:5e:00:00:01\"", "gateway_mac"),
            ("gateway_mac = \"nope\"", "gateway_mac"),
            ("workers = 1000", "workers"),
            ("pin_cpus = [9999]", "pin_cpus"),
            ("batch_size = 0", "batch_size"),
            ("idle_poll_us = 100001", "idle_poll_us"),
            ("metrics_address = \"localhost\"", "metrics_address"),
            ("host_port = \"a very long interface name\"", "host_port"),
            ("max_ports = 1", "max_ports"),
        ] {
            let e = err(text);
            assert_eq!((e.line, e.field.as_str()), (1, field), "{text}: {e}");
        }
        for (text, field) in [
            ("vni = 0", "overlay.vni"),
            ("vni = 16777216", "overlay.vni"),
            ("port = 0", "overlay.port"),
            ("underlay_mtu = 100", "overlay.underlay_mtu"),
            ("interface = \"vswitch0\"", "overlay.interface"),
            ("interface = \"vswitch-vx\"", "overlay.interface"),
            ("interface = \"bad/name\"", "overlay.interface"),
            ("underlay_io = \"kernel\"", "overlay.underlay_io"),
        ] {
            let text = format!("[overlay]\n{text}");
            let e = err(&text);
            assert_eq!((e.line, e.field.as_str()), (2, field), "{text}: {e}");
        }
    }

    #[test]
    fn unreadable_file_is_a_clear_error() {
        let e = load(Path::new("/nonexistent/vswitchd.toml")).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/vswitchd.toml"), "{e}");
        assert!(e.message.contains("cannot read"));
    }
}
