//! One function per CNI verb, each reading top to bottom as the spec's steps, with the
//! undo of every step taken when a later one fails.

use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde_json::{Value, json};
use vswitch_api::{AttachRequest, Client, PortKind};

use crate::config::{CniEnv, NetConf};
use crate::error::{CniError, code, from_client};
use crate::ipam::Ipam;
use crate::pod::{self, RouteSpec};
use crate::result::{CniResult, Dns, Interface, IpConfig, Route};
use crate::version;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a single-threaded runtime starts")
}

/// The subnet placeholder of an `ipam.ranges` entry that stands for this node's pod
/// CIDR (the convention Calico's host-local use established): one conflist serves every
/// node of a DaemonSet.
pub const USE_POD_CIDR: &str = "usePodCidr";

/// `raw` with every `ipam.ranges` subnet `usePodCidr` replaced by vswitchd's pod CIDR.
/// When the daemon cannot be asked, by a stand-in the IPAM plugin accepts: DEL must
/// still release by container id, and the other verbs fail on the daemon anyway.
pub fn with_pod_cidr(conf: &NetConf, raw: &Value) -> Value {
    let uses = |raw: &Value| {
        raw.pointer("/ipam/ranges").and_then(Value::as_array).is_some_and(|rs| {
            rs.iter().flat_map(|r| r.as_array().into_iter().flatten()).any(|r| r["subnet"] == USE_POD_CIDR)
        })
    };
    if !uses(raw) {
        return raw.clone();
    }
    let cidr = runtime()
        .block_on(Client::new(conf.socket()).with_timeout(std::time::Duration::from_secs(5)).status())
        .map(|s| s.pod_cidr.to_string())
        .unwrap_or_else(|_| "192.0.2.0/24".to_string());
    let mut out = raw.clone();
    if let Some(ranges) = out.pointer_mut("/ipam/ranges").and_then(Value::as_array_mut) {
        for range in ranges.iter_mut().filter_map(Value::as_array_mut) {
            for r in range.iter_mut().filter(|r| r["subnet"] == USE_POD_CIDR) {
                r["subnet"] = Value::String(cidr.clone());
            }
        }
    }
    out
}

fn client(conf: &NetConf) -> Client {
    // Attaching creates kernel devices: milliseconds normally, bounded here so a wedged
    // daemon turns into "try again later" rather than a stuck pod.
    Client::new(conf.socket()).with_timeout(std::time::Duration::from_secs(20))
}

/// ADD: allocate addresses (IPAM), have vswitchd create the pod's interface and port,
/// configure addresses and routes in the pod, print the result.
pub fn add(conf: &NetConf, raw: &Value, env: &mut CniEnv) -> Result<Value, CniError> {
    conf.validate_for_attachment()?;
    env.validate(true)?;
    let prev = conf.prev_result.as_ref().map(|v| CniResult::parse(v, "prevResult")).transpose()?;
    let rt = runtime();
    let api = client(conf);
    // Fail before allocating anything if the switch is not there.
    let status = rt.block_on(api.status()).map_err(|e| from_client("ADD", e))?;
    // The spec forbids a second ADD of one attachment without a DEL between; say so,
    // rather than let the IPAM plugin refuse a duplicate allocation in its own words.
    if rt.block_on(api.port(&env.container_id, &env.ifname)).map_err(|e| from_client("ADD", e))?.is_some() {
        return Err(CniError::new(
            code::CONFLICT,
            format!("ADD: container {} already has {} attached", env.container_id, env.ifname),
        )
        .with_details(
            "a repeated ADD needs a DEL first (CNI spec: ADD is not called twice for one attachment)",
        ));
    }
    let ipam = Ipam::new(conf.ipam_type(), env, raw)?;
    let mut allocated = ipam.add()?;
    // The gateway is the switch's, whatever the IPAM section says.
    for ip in &mut allocated.ips {
        if ip.address.addr().is_ipv4() {
            ip.gateway = Some(IpAddr::V4(status.gateway_ip));
        }
    }
    let req = AttachRequest {
        container_id: env.container_id.clone(),
        netns: env.netns.clone().into(),
        ifname: env.ifname.clone(),
        mac: None,
        ips: allocated.ips.iter().map(|ip| ip.address).collect(),
        mtu: conf.mtu,
        backend: conf.backend()?,
        pod: env.pod(),
        network: Some(conf.name.clone()),
    };
    let port = match rt.block_on(api.attach(&req)) {
        Ok(p) => p,
        Err(e) => {
            let _ = ipam.del(None);
            return Err(from_client("ADD", e));
        }
    };
    // Without routes from IPAM, pods get a default route via the gateway: the cluster,
    // Services and the outside are all behind it.
    let mut routes = allocated.routes.clone();
    if routes.is_empty() {
        for ip in &allocated.ips {
            let default: IpNet =
                if ip.address.addr().is_ipv4() { "0.0.0.0/0" } else { "::/0" }.parse().expect("literal");
            if ip.gateway.is_some() && !routes.iter().any(|r| r.dst == default) {
                routes.push(Route { dst: default, gw: ip.gateway, extra: Default::default() });
            }
        }
    }
    let mine = CniResult { ips: allocated.ips.clone(), routes: routes.clone(), ..Default::default() };
    if let Err(e) = pod::configure(Path::new(&env.netns), &env.ifname, &req.ips, &pod::routes_of(&mine)) {
        let _ = rt.block_on(api.detach(&env.container_id, &env.ifname));
        let _ = ipam.del(None);
        return Err(e);
    }
    let mut result = prev.unwrap_or_default();
    let index = result.interfaces.len();
    result.interfaces.push(Interface {
        name: env.ifname.clone(),
        mac: port.mac.clone(),
        mtu: Some(u32::from(port.mtu)),
        sandbox: env.netns.clone(),
        extra: Default::default(),
    });
    result.ips.extend(allocated.ips.into_iter().map(|ip| IpConfig { interface: Some(index), ..ip }));
    result.routes.extend(routes);
    if result.dns.is_empty() {
        result.dns = if allocated.dns.is_empty() {
            conf.dns.as_ref().and_then(|d| serde_json::from_value::<Dns>(d.clone()).ok()).unwrap_or_default()
        } else {
            allocated.dns
        };
    }
    Ok(result.to_json(conf.version()))
}

/// DEL: have vswitchd remove the port and interface, release the addresses. Succeeds
/// when everything is already gone (and with an empty or vanished `CNI_NETNS`), and when
/// vswitchd cannot be reached: the pod's interface is then deleted here, and the daemon
/// drops the port when it sees the pod gone (or at its next start), as a runtime whose
/// DEL keeps failing would leave the pod stuck terminating.
pub fn del(conf: &NetConf, raw: &Value, env: &mut CniEnv) -> Result<(), CniError> {
    conf.validate_for_attachment()?;
    env.validate(false)?;
    let rt = runtime();
    // Detach first: releasing the address while the port still holds it would let
    // another pod get it and be refused.
    match rt.block_on(client(conf).detach(&env.container_id, &env.ifname)) {
        Ok(_) => {}
        Err(
            e @ (vswitch_api::ClientError::Unreachable { .. } | vswitch_api::ClientError::Timeout { .. }),
        ) => {
            let deleted = !env.netns.is_empty() && pod::delete_interface(Path::new(&env.netns), &env.ifname);
            eprintln!(
                "vswitch-cni: DEL: vswitchd is not reachable ({e}); {} and releasing the addresses",
                if deleted { "deleted the pod's interface" } else { "no pod interface left" }
            );
        }
        Err(e) => return Err(from_client("DEL", e)),
    }
    Ipam::new(conf.ipam_type(), env, raw)?.del(None)
}

/// CHECK: the interface, its addresses and routes in the pod, and vswitchd's port, are
/// as `prevResult` says; then the IPAM plugin's own CHECK.
pub fn check(conf: &NetConf, raw: &Value, env: &mut CniEnv) -> Result<(), CniError> {
    if !version::at_least(conf.version(), "0.4.0") {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!("CHECK does not exist in cniVersion {}", conf.version()),
        ));
    }
    conf.validate_for_attachment()?;
    env.validate(true)?;
    let prev = conf
        .prev_result
        .as_ref()
        .ok_or_else(|| CniError::new(code::INVALID_CONFIG, "CHECK needs prevResult"))
        .and_then(|v| CniResult::parse(v, "prevResult"))?;
    let Some(index) = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname && (i.sandbox.is_empty() || i.sandbox == env.netns))
    else {
        return Err(CniError::new(
            code::CHECK_FAILED,
            format!("prevResult has no interface {} in {}", env.ifname, env.netns),
        ));
    };
    let mac = prev.interfaces[index].mac.clone();
    let addresses: Vec<IpNet> =
        prev.ips.iter().filter(|ip| ip.interface == Some(index)).map(|ip| ip.address).collect();
    let port = runtime()
        .block_on(client(conf).port(&env.container_id, &env.ifname))
        .map_err(|e| from_client("CHECK", e))?
        .ok_or_else(|| {
            CniError::new(
                code::CHECK_FAILED,
                format!("vswitchd has no port for {}/{}", env.container_id, env.ifname),
            )
        })?;
    if !port.mac.eq_ignore_ascii_case(&mac) {
        return Err(CniError::new(
            code::CHECK_FAILED,
            format!("vswitchd's port has MAC {}, prevResult {mac}", port.mac),
        ));
    }
    if let Some(a) = addresses.iter().find(|a| !port.ips.contains(a)) {
        return Err(CniError::new(code::CHECK_FAILED, format!("vswitchd's port does not hold {a}")));
    }
    let routes: Vec<RouteSpec> = pod::routes_of(&CniResult {
        ips: prev.ips.clone(),
        routes: prev.routes.clone(),
        ..Default::default()
    });
    pod::check(Path::new(&env.netns), &env.ifname, &mac, &addresses, &routes)?;
    Ipam::new(conf.ipam_type(), env, raw)?.check()
}

/// STATUS and GC exist from spec 1.1.0 on: for an older configuration they are unknown
/// verbs, answered as CHECK is before 0.4.0.
fn new_in_1_1(verb: &str, conf: &NetConf) -> Result<(), CniError> {
    if version::at_least(conf.version(), "1.1.0") {
        return Ok(());
    }
    Err(CniError::new(
        code::INCOMPATIBLE_VERSION,
        format!("{verb} does not exist in cniVersion {}", conf.version()),
    )
    .with_details(format!("{verb} is new in CNI 1.1.0")))
}

/// STATUS: ready when vswitchd answers (and the IPAM plugin, if it has STATUS).
pub fn status(conf: &NetConf, raw: &Value, env: &CniEnv) -> Result<(), CniError> {
    new_in_1_1("STATUS", conf)?;
    if let Err(e) = runtime().block_on(client(conf).status()) {
        return Err(
            CniError::new(code::NOT_AVAILABLE, "vswitchd is not available").with_details(e.to_string())
        );
    }
    if conf.ipam.is_some() && !env.path.is_empty() {
        let ipam = Ipam::new(conf.ipam_type(), env, raw)?;
        if ipam.speaks_1_1()? {
            ipam.verb("STATUS")?;
        }
    }
    Ok(())
}

/// GC: detach every port of this network whose attachment is not in
/// `cni.dev/valid-attachments`, releasing its addresses; then the IPAM plugin's GC if it
/// has one. Carries on past errors and reports the first.
pub fn gc(conf: &NetConf, raw: &Value, env: &CniEnv) -> Result<(), CniError> {
    new_in_1_1("GC", conf)?;
    if env.path.is_empty() {
        return Err(CniError::new(code::INVALID_ENV, "CNI_PATH is required"));
    }
    if conf.name.is_empty() {
        return Err(CniError::new(code::INVALID_CONFIG, "the network configuration has no \"name\""));
    }
    let keep = conf.keep();
    let rt = runtime();
    let api = client(conf);
    let ports = rt.block_on(api.ports()).map_err(|e| from_client("GC", e))?;
    let ipam = conf.ipam.as_ref().map(|_| Ipam::new(conf.ipam_type(), env, raw)).transpose()?;
    let mut first_error = None;
    for p in
        ports.iter().filter(|p| p.kind == PortKind::Pod && p.network.as_deref() == Some(conf.name.as_str()))
    {
        let listed = keep.iter().any(|a| a.container_id == p.container_id && a.ifname == p.ifname);
        if listed {
            continue;
        }
        let mut step =
            rt.block_on(api.detach(&p.container_id, &p.ifname)).map(|_| ()).map_err(|e| from_client("GC", e));
        if step.is_ok()
            && let Some(ipam) = &ipam
        {
            step = ipam.del(Some((&p.container_id, &p.ifname)));
        }
        if let Err(e) = step {
            first_error.get_or_insert(e);
        }
    }
    if let Some(ipam) = &ipam
        && ipam.speaks_1_1()?
        && let Err(e) = ipam.verb("GC")
    {
        first_error.get_or_insert(e);
    }
    first_error.map_or(Ok(()), Err)
}

/// VERSION: the versions this plugin speaks, answered in the input's version if known.
pub fn version_info(stdin: &[u8]) -> Value {
    let asked = serde_json::from_slice::<Value>(stdin)
        .ok()
        .and_then(|v| v.get("cniVersion").and_then(Value::as_str).map(str::to_string))
        .filter(|v| version::SUPPORTED.contains(&v.as_str()));
    json!({
        "cniVersion": asked.as_deref().unwrap_or(version::LATEST),
        "supportedVersions": version::SUPPORTED,
    })
}
