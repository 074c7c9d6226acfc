//! The Service table workers read — part of the tables snapshot, built by the control
//! plane from Service specs — and the session-affinity table they write.
//!
//! A Service port (VIP, port, protocol; optionally a NodePort) has the endpoints a new
//! flow may go to and a [`Maglev`] table over them. New flows go to ready endpoints; when
//! none is ready, to serving ones that are terminating (as kube-proxy does); established
//! flows are conntrack's business and never look here.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use papaya::Guard;

use crate::tables::conntrack::Tuple;
use crate::tables::maglev::Maglev;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// An endpoint as the data path needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub ip: Ipv4Addr,
    pub port: u16,
    /// On this node (in its pod CIDR): eligible for `externalTrafficPolicy: Local`.
    pub local: bool,
}

impl Backend {
    /// Identity for Maglev and affinity.
    pub fn key(&self) -> u64 {
        (u64::from(u32::from(self.ip)) << 16) | u64::from(self.port)
    }
}

/// An endpoint with its EndpointSlice conditions, as the control plane gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndpointSpec {
    pub ip: Ipv4Addr,
    pub port: u16,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    pub local: bool,
}

/// One Service port, as the control plane describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePortSpec {
    /// `namespace/name:port-name`: identifies the port across rebuilds of the table.
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    pub node_port: Option<u16>,
    pub endpoints: Vec<EndpointSpec>,
    /// `sessionAffinity: ClientIP` with this timeout (seconds).
    pub affinity_timeout: Option<u32>,
    /// `externalTrafficPolicy: Local`: NodePort traffic to local endpoints only, not
    /// source-NATed.
    pub external_local: bool,
    /// `internalTrafficPolicy: Local`: cluster-IP traffic to local endpoints only.
    pub internal_local: bool,
}

/// A Service port as workers use it.
#[derive(Clone, Debug)]
pub struct ServicePort {
    /// Stable across rebuilds while the port exists (affinity and conntrack use it).
    pub id: u32,
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub protocol: u8,
    pub node_port: Option<u16>,
    /// Where new flows may go.
    pub backends: Vec<Backend>,
    pub maglev: Option<Maglev>,
    /// The local ones among them, for the `Local` traffic policies.
    pub local_backends: Vec<Backend>,
    pub local_maglev: Option<Maglev>,
    /// Every endpoint in any condition: their flows are not cut when one stops
    /// taking new ones.
    pub endpoints: Vec<EndpointSpec>,
    pub affinity_timeout: Option<u32>,
    pub external_local: bool,
    pub internal_local: bool,
}

impl ServicePort {
    /// Picks a backend for a new flow with hash `h`: `None` when there is none.
    #[inline]
    pub fn pick(&self, h: u64, local_only: bool) -> Option<Backend> {
        let (list, table) = if local_only {
            (&self.local_backends, &self.local_maglev)
        } else {
            (&self.backends, &self.maglev)
        };
        table.as_ref().map(|t| list[t.pick(h)])
    }

    pub fn has_backend(&self, key: u64, local_only: bool) -> bool {
        let list = if local_only { &self.local_backends } else { &self.backends };
        list.iter().any(|b| b.key() == key)
    }

    /// Whether `ip:port` is an endpoint that can still answer (ready, or serving while
    /// terminating).
    pub fn serves(&self, ip: Ipv4Addr, port: u16) -> bool {
        self.endpoints.iter().any(|e| e.ip == ip && e.port == port && (e.ready || e.serving))
    }
}

#[inline]
fn vip_key(ip: Ipv4Addr, port: u16, proto: u8) -> u64 {
    (u64::from(u32::from(ip)) << 24) | (u64::from(port) << 8) | u64::from(proto)
}

/// What the control plane keeps from one build of the table to the next so that a
/// rebuild disturbs no flow: each Service port's id, and its Maglev table sizes (which
/// only grow, see [`crate::tables::maglev::table_size`]).
#[derive(Debug, Default)]
pub struct BuildMemory {
    ports: FastMap<String, Remembered>,
    next_id: u32,
    /// What a previous run remembered ([`BuildMemory::carried_over`]), taken by a port
    /// of the same name when it first comes: the Services reach a restarted daemon
    /// later than its flows, and a build before they do must not forget these.
    carried: FastMap<String, Remembered>,
}

/// A Service port's identity in one run, as carried over a restart so that its flows,
/// pinned clients and Maglev table stay the same across it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RememberedPort {
    /// `namespace/name:port-name`.
    pub name: String,
    pub id: u32,
    pub maglev_size: usize,
    pub local_maglev_size: usize,
}

impl BuildMemory {
    /// What this memory holds, to carry over a restart, with the last id given out.
    pub fn records(&self) -> (Vec<RememberedPort>, u32) {
        let mut ports: Vec<RememberedPort> = self
            .ports
            .iter()
            .chain(self.carried.iter().filter(|(name, _)| !self.ports.contains_key(*name)))
            .map(|(name, r)| RememberedPort {
                name: name.clone(),
                id: r.id,
                maglev_size: r.size,
                local_maglev_size: r.local_size,
            })
            .collect();
        ports.sort_by_key(|p| p.id);
        (ports, self.next_id)
    }

    /// A memory that gives each port named in `ports` its id and Maglev sizes of the
    /// previous run when it comes, and new ports ids after `last_id`.
    pub fn carried_over(ports: &[RememberedPort], last_id: u32) -> BuildMemory {
        let next_id = ports.iter().map(|p| p.id).fold(last_id, u32::max);
        let carried = ports
            .iter()
            .map(|p| {
                (
                    p.name.clone(),
                    Remembered { id: p.id, size: p.maglev_size, local_size: p.local_maglev_size },
                )
            })
            .collect();
        BuildMemory { ports: FastMap::default(), next_id, carried }
    }
}

#[derive(Debug, Clone, Copy)]
struct Remembered {
    id: u32,
    size: usize,
    local_size: usize,
}

/// Every Service port, indexed for the data path.
///
/// Built once and then changed port by port ([`ServiceTable::update`]): a change costs
/// the ports it touches plus one copy of the indexes (reference counts, not ports), so
/// an EndpointSlice update reaches the workers as fast with 100 000 Services as with 10.
#[derive(Clone, Debug)]
pub struct ServiceTable {
    by_id: FastMap<u32, Arc<ServicePort>>,
    by_vip: FastMap<u64, Arc<ServicePort>>,
    by_node_port: FastMap<u32, Arc<ServicePort>>,
    /// How many Service ports have each VIP (0: no Service has it any more, see
    /// [`ServiceTable::keep_for_flows`]).
    vips: FastMap<u32, u32>,
    /// (ip, port, proto) of every endpoint in any condition, with how many Service ports
    /// list it: a packet from one may be a reply of a translated flow.
    endpoints: FastMap<u64, u32>,
    /// VIPs and endpoints no Service has any more that established flows still use
    /// (see [`ServiceTable::keep_for_flows`]).
    retired: usize,
    /// The node's own address: NodePort traffic is addressed to it, and it is the source
    /// address of NodePort flows with `externalTrafficPolicy: Cluster`.
    pub node_ip: Option<Ipv4Addr>,
    /// The source address given to a pod's flow to its own Service when it is picked as
    /// the endpoint (hairpin), so its reply comes back through the switch.
    pub hairpin_ip: Ipv4Addr,
}

/// The default hairpin source address: link-local, so it can clash with no pod, node
/// or Service address, and pods reach it through their default route (the gateway).
pub const DEFAULT_HAIRPIN_IP: Ipv4Addr = Ipv4Addr::new(169, 254, 42, 1);

impl Default for ServiceTable {
    fn default() -> Self {
        ServiceTable {
            by_id: FastMap::default(),
            by_vip: FastMap::default(),
            by_node_port: FastMap::default(),
            vips: FastMap::default(),
            endpoints: FastMap::default(),
            retired: 0,
            node_ip: None,
            hairpin_ip: DEFAULT_HAIRPIN_IP,
        }
    }
}

#[inline]
fn node_port_key(port: u16, proto: u8) -> u32 {
    (u32::from(port) << 8) | u32::from(proto)
}

/// Counts one more user of `key`.
fn hold<K: std::hash::Hash + Eq>(map: &mut FastMap<K, u32>, key: K) {
    *map.entry(key).or_default() += 1;
}

/// Counts one user of `key` fewer, forgetting it after the last.
fn release<K: std::hash::Hash + Eq>(map: &mut FastMap<K, u32>, key: K) {
    if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(key) {
        *e.get_mut() = e.get().saturating_sub(1);
        if *e.get() == 0 {
            e.remove();
        }
    }
}

impl ServiceTable {
    /// Builds the table. `memory` carries ids and Maglev sizes from the previous build
    /// and is updated for the next (ports gone are forgotten; their ids are not reused).
    pub fn build(
        specs: &[ServicePortSpec],
        node_ip: Option<Ipv4Addr>,
        hairpin_ip: Ipv4Addr,
        memory: &mut BuildMemory,
    ) -> ServiceTable {
        let names: HashSet<&str> = specs.iter().map(|s| s.name.as_str()).collect();
        memory.ports.retain(|name, _| names.contains(name.as_str()));
        let mut t = ServiceTable { node_ip, hairpin_ip, ..Default::default() };
        t.update(std::iter::empty(), specs, memory);
        t
    }

    /// Changes the table in place: the ports named in `removed` go (and are forgotten
    /// by `memory`), each of `added` is inserted or replaces the port of its name (which
    /// keeps its id and Maglev size). A name in both lists is a replacement only if it
    /// is left out of `removed`.
    pub fn update<'a>(
        &mut self,
        removed: impl IntoIterator<Item = &'a str>,
        added: &[ServicePortSpec],
        memory: &mut BuildMemory,
    ) {
        for name in removed {
            if let Some(r) = memory.ports.remove(name) {
                self.remove_port(r.id);
            }
        }
        for spec in added {
            self.insert_port(spec, memory);
        }
    }

    fn insert_port(&mut self, spec: &ServicePortSpec, memory: &mut BuildMemory) {
        let known = memory.ports.get(&spec.name).copied();
        if let Some(r) = known {
            self.remove_port(r.id);
        }
        let before = known.or_else(|| memory.carried.remove(&spec.name));
        let id = before.map_or_else(
            || {
                memory.next_id = memory.next_id.wrapping_add(1);
                memory.next_id
            },
            |r| r.id,
        );
        let ready: Vec<&EndpointSpec> = spec.endpoints.iter().filter(|e| e.ready).collect();
        // No ready endpoint: serving ones that are terminating still take new flows.
        let eligible: Vec<&EndpointSpec> =
            if ready.is_empty() { spec.endpoints.iter().filter(|e| e.serving).collect() } else { ready };
        let backends: Vec<Backend> =
            eligible.iter().map(|e| Backend { ip: e.ip, port: e.port, local: e.local }).collect();
        let local_backends: Vec<Backend> = backends.iter().copied().filter(|b| b.local).collect();
        let keys = |list: &[Backend]| list.iter().map(Backend::key).collect::<Vec<_>>();
        let maglev = Maglev::build(&keys(&backends), before.map_or(0, |r| r.size));
        let local_maglev = Maglev::build(&keys(&local_backends), before.map_or(0, |r| r.local_size));
        memory.ports.insert(
            spec.name.clone(),
            Remembered {
                id,
                size: maglev.as_ref().map_or(before.map_or(0, |r| r.size), Maglev::len),
                local_size: local_maglev.as_ref().map_or(before.map_or(0, |r| r.local_size), Maglev::len),
            },
        );
        for e in &spec.endpoints {
            hold(&mut self.endpoints, vip_key(e.ip, e.port, spec.protocol));
        }
        hold(&mut self.vips, u32::from(spec.vip));
        let port = Arc::new(ServicePort {
            id,
            name: spec.name.clone(),
            vip: spec.vip,
            port: spec.port,
            protocol: spec.protocol,
            node_port: spec.node_port,
            backends,
            maglev,
            local_backends,
            local_maglev,
            endpoints: spec.endpoints.clone(),
            affinity_timeout: spec.affinity_timeout,
            external_local: spec.external_local,
            internal_local: spec.internal_local,
        });
        self.by_vip.insert(vip_key(spec.vip, spec.port, spec.protocol), port.clone());
        if let Some(np) = spec.node_port {
            self.by_node_port.insert(node_port_key(np, spec.protocol), port.clone());
        }
        self.by_id.insert(id, port);
    }

    fn remove_port(&mut self, id: u32) {
        let Some(port) = self.by_id.remove(&id) else { return };
        for e in &port.endpoints {
            release(&mut self.endpoints, vip_key(e.ip, e.port, port.protocol));
        }
        release(&mut self.vips, u32::from(port.vip));
        // Two Services claiming one VIP and port (or NodePort): the later one holds it.
        let vip = vip_key(port.vip, port.port, port.protocol);
        if self.by_vip.get(&vip).is_some_and(|p| p.id == id) {
            self.by_vip.remove(&vip);
        }
        if let Some(np) = port.node_port {
            let key = node_port_key(np, port.protocol);
            if self.by_node_port.get(&key).is_some_and(|p| p.id == id) {
                self.by_node_port.remove(&key);
            }
        }
    }

    /// A copy that still recognises the VIPs and endpoints `flows` use, though no
    /// Service has them any more: their established flows keep being translated until
    /// they end (as the kernel's conntrack keeps NATing after kube-proxy removed a rule).
    pub fn keep_for_flows<'a>(
        &self,
        flows: impl IntoIterator<Item = &'a crate::tables::conntrack::Conn>,
    ) -> ServiceTable {
        self.keep_for_tuples(flows.into_iter().map(|c| (c.orig, c.reply)))
    }

    /// As [`ServiceTable::keep_for_flows`], from flows' (original, reply) tuples.
    pub fn keep_for_tuples(&self, flows: impl IntoIterator<Item = (Tuple, Tuple)>) -> ServiceTable {
        let mut t = self.clone();
        for (orig, reply) in flows {
            let r = reply.src;
            if let Entry::Vacant(v) = t.endpoints.entry(vip_key(r, reply.src_port, reply.proto)) {
                v.insert(0);
                t.retired += 1;
            }
            let d = orig.dst;
            if Some(d) == t.node_ip {
                continue;
            }
            if let Entry::Vacant(v) = t.vips.entry(u32::from(d)) {
                v.insert(0);
                t.retired += 1;
            }
        }
        t
    }

    /// How many VIPs and endpoints are kept only for established flows.
    pub fn retired(&self) -> usize {
        self.retired
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty() && self.retired == 0
    }

    /// Every Service port, in no particular order.
    pub fn ports(&self) -> impl Iterator<Item = &ServicePort> {
        self.by_id.values().map(|p| &**p)
    }

    /// The port with stable id `id`.
    pub fn by_id(&self, id: u32) -> Option<&ServicePort> {
        self.by_id.get(&id).map(|p| &**p)
    }

    #[inline]
    pub fn by_vip(&self, ip: Ipv4Addr, port: u16, proto: u8) -> Option<&ServicePort> {
        self.by_vip.get(&vip_key(ip, port, proto)).map(|p| &**p)
    }

    #[inline]
    pub fn by_node_port(&self, port: u16, proto: u8) -> Option<&ServicePort> {
        self.by_node_port.get(&node_port_key(port, proto)).map(|p| &**p)
    }

    /// Every NodePort served, with its protocol.
    pub fn node_ports(&self) -> impl Iterator<Item = (u16, u8)> + '_ {
        self.by_node_port.keys().map(|k| ((k >> 8) as u16, *k as u8))
    }

    #[inline]
    pub fn is_vip(&self, ip: Ipv4Addr) -> bool {
        self.vips.contains_key(&u32::from(ip))
    }

    #[inline]
    pub fn is_endpoint(&self, ip: Ipv4Addr, port: u16, proto: u8) -> bool {
        self.endpoints.contains_key(&vip_key(ip, port, proto))
    }

    /// An address this switch source-NATs to: replies to it may belong to a flow.
    #[inline]
    pub fn is_snat_address(&self, ip: Ipv4Addr) -> bool {
        ip == self.hairpin_ip || Some(ip) == self.node_ip
    }
}

/// `sessionAffinity: ClientIP`: which backend a client was last sent to, per Service
/// port, written by workers and expired by housekeeping.
pub struct Affinity {
    map: papaya::HashMap<u64, AffinityEntry, foldhash::fast::RandomState>,
    /// Clients remembered at most; past it a new client is served without being pinned
    /// (spoofed sources cannot grow the table without bound).
    max_entries: usize,
}

struct AffinityEntry {
    backend: u64,
    last_used: AtomicU32,
    timeout: u32,
}

impl Default for Affinity {
    fn default() -> Self {
        Affinity::new(1 << 18)
    }
}

#[inline]
fn affinity_key(service: u32, client: Ipv4Addr) -> u64 {
    (u64::from(service) << 32) | u64::from(u32::from(client))
}

impl Affinity {
    pub fn new(max_entries: usize) -> Affinity {
        Affinity {
            map: papaya::HashMap::builder().hasher(foldhash::fast::RandomState::default()).build(),
            max_entries,
        }
    }

    /// The backend `client` was last given for `service`, if still within `timeout`.
    pub fn get(&self, service: u32, client: Ipv4Addr, now: u32) -> Option<u64> {
        let guard = self.map.guard();
        let e = self.map.get(&affinity_key(service, client), &guard)?;
        (now.saturating_sub(e.last_used.load(Ordering::Relaxed)) <= e.timeout).then_some(e.backend)
    }

    /// Records (or refreshes) `client`'s backend for `service`.
    pub fn set(&self, service: u32, client: Ipv4Addr, backend: u64, timeout: u32, now: u32) {
        let guard = self.map.guard();
        let key = affinity_key(service, client);
        match self.map.get(&key, &guard) {
            Some(e) if e.backend == backend => e.last_used.store(now, Ordering::Relaxed),
            None if self.map.len() >= self.max_entries => {}
            _ => {
                self.map.insert(
                    key,
                    AffinityEntry { backend, last_used: AtomicU32::new(now), timeout },
                    &guard,
                );
            }
        }
    }

    /// Forgets clients idle past their Service's timeout.
    pub fn expire(&self, now: u32) -> usize {
        let guard = self.map.guard();
        let before = self.map.len();
        self.map.retain(|_, e| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) <= e.timeout, &guard);
        guard.flush();
        before.saturating_sub(self.map.len())
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Every pinned client, as carried over a restart.
    pub fn records(&self, now: u32) -> Vec<AffinityRecord> {
        let guard = self.map.guard();
        self.map
            .iter(&guard)
            .map(|(k, e)| AffinityRecord {
                service: (k >> 32) as u32,
                client: Ipv4Addr::from(*k as u32),
                backend: e.backend,
                timeout: e.timeout,
                idle_secs: now.saturating_sub(e.last_used.load(Ordering::Relaxed)),
            })
            .collect()
    }

    /// Puts back a pinned client carried over a restart, as idle as it was plus
    /// `away_secs`; false if its timeout passed meanwhile (or the table is full).
    pub fn restore(&self, r: &AffinityRecord, away_secs: u32, now: u32) -> bool {
        let idle = r.idle_secs.saturating_add(away_secs);
        if idle > r.timeout || self.map.len() >= self.max_entries {
            return false;
        }
        let guard = self.map.guard();
        let entry = AffinityEntry {
            backend: r.backend,
            last_used: AtomicU32::new(now.saturating_sub(idle)),
            timeout: r.timeout,
        };
        self.map.insert(affinity_key(r.service, r.client), entry, &guard);
        true
    }
}

/// A client pinned to a backend, as carried over a restart (see [`Affinity::restore`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AffinityRecord {
    pub service: u32,
    pub client: Ipv4Addr,
    /// [`Backend::key`] of the endpoint.
    pub backend: u64,
    pub timeout: u32,
    pub idle_secs: u32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse::{IPPROTO_TCP, IPPROTO_UDP};

    fn ep(last: u8, ready: bool, serving: bool, terminating: bool) -> EndpointSpec {
        EndpointSpec {
            ip: Ipv4Addr::new(10, 244, 1, last),
            port: 8080,
            ready,
            serving,
            terminating,
            local: last < 100,
        }
    }

    fn spec(endpoints: Vec<EndpointSpec>) -> ServicePortSpec {
        ServicePortSpec {
            name: "default/web:http".into(),
            vip: Ipv4Addr::new(10, 96, 0, 10),
            port: 80,
            protocol: IPPROTO_TCP,
            node_port: Some(30080),
            endpoints,
            affinity_timeout: None,
            external_local: false,
            internal_local: false,
        }
    }

    #[test]
    fn lookups_and_eligibility() {
        let specs =
            vec![spec(vec![ep(2, true, true, false), ep(3, false, true, true), ep(150, true, true, false)])];
        let mut memory = BuildMemory::default();
        let t = ServiceTable::build(
            &specs,
            Some(Ipv4Addr::new(192, 168, 0, 1)),
            Ipv4Addr::new(169, 254, 1, 1),
            &mut memory,
        );
        let sp = t.by_vip(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_TCP).unwrap();
        assert!(
            t.by_vip(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_UDP).is_none(),
            "protocol is part of the key"
        );
        assert_eq!(sp.backends.len(), 2, "only ready endpoints take new flows");
        assert_eq!(sp.local_backends.len(), 1);
        assert!(t.by_node_port(30080, IPPROTO_TCP).is_some());
        assert!(
            t.is_endpoint(Ipv4Addr::new(10, 244, 1, 3), 8080, IPPROTO_TCP),
            "terminating ones still answer"
        );
        assert!(t.is_vip(Ipv4Addr::new(10, 96, 0, 10)) && !t.is_vip(Ipv4Addr::new(10, 96, 0, 11)));
        assert!(
            t.is_snat_address(Ipv4Addr::new(169, 254, 1, 1))
                && t.is_snat_address(Ipv4Addr::new(192, 168, 0, 1))
        );
        assert_eq!(sp.maglev.as_ref().unwrap().len(), 251);
        // Every pick is one of the eligible backends.
        for h in 0..1000u64 {
            let b = sp.pick(crate::tables::maglev::mix64(h), false).unwrap();
            assert!(b.ip.octets()[3] == 2 || b.ip.octets()[3] == 150);
            assert_eq!(sp.pick(h, true).unwrap().ip.octets()[3], 2);
        }
    }

    #[test]
    fn terminating_serving_endpoints_are_the_fallback() {
        let specs = vec![spec(vec![ep(3, false, true, true), ep(4, false, false, true)])];
        let t = ServiceTable::build(&specs, None, Ipv4Addr::new(169, 254, 1, 1), &mut BuildMemory::default());
        let sp = t.by_vip(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_TCP).unwrap();
        assert_eq!(sp.backends.iter().map(|b| b.ip.octets()[3]).collect::<Vec<_>>(), vec![3]);
        let none = vec![spec(vec![ep(4, false, false, true)])];
        let t = ServiceTable::build(&none, None, Ipv4Addr::new(169, 254, 1, 1), &mut BuildMemory::default());
        assert!(t.by_vip(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_TCP).unwrap().pick(7, false).is_none());
    }

    #[test]
    fn rebuilds_keep_ids_and_table_sizes() {
        let mut memory = BuildMemory::default();
        let hairpin = Ipv4Addr::new(169, 254, 1, 1);
        let many: Vec<EndpointSpec> = (2..6).map(|i| ep(i, true, true, false)).collect();
        let mut other = spec(vec![ep(9, true, true, false)]);
        other.name = "default/other:http".into();
        other.vip = Ipv4Addr::new(10, 96, 0, 11);
        let t1 = ServiceTable::build(&[other.clone(), spec(many)], None, hairpin, &mut memory);
        let web = t1.by_vip(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_TCP).unwrap();
        let (web_id, web_size) = (web.id, web.maglev.as_ref().unwrap().len());
        assert_eq!(web_size, 1021, "4 endpoints need at least 400 slots");
        // Reordered, one Service gone, endpoints down to one: same id, same size.
        let t2 = ServiceTable::build(&[spec(vec![ep(2, true, true, false)])], None, hairpin, &mut memory);
        let web2 = t2.by_vip(Ipv4Addr::new(10, 96, 0, 10), 80, IPPROTO_TCP).unwrap();
        assert_eq!((web2.id, web2.maglev.as_ref().unwrap().len()), (web_id, web_size));
        assert!(t2.by_id(web_id).is_some());
        // A port that went away and came back is a new port.
        let t3 = ServiceTable::build(&[other], None, hairpin, &mut memory);
        let other_id = t1.by_vip(Ipv4Addr::new(10, 96, 0, 11), 80, IPPROTO_TCP).unwrap().id;
        let other3 = t3.ports().next().unwrap().id;
        assert_ne!(other3, other_id);
        assert_ne!(other3, web_id);
    }

    /// A restarted daemon gives each Service port the id and Maglev size it had, though
    /// the Services come in another order and after builds without them; a new port
    /// takes an id no carried one has.
    #[test]
    fn ids_and_table_sizes_carry_over_a_restart() {
        let hairpin = Ipv4Addr::new(169, 254, 1, 1);
        let mut memory = BuildMemory::default();
        let mut other = named("default/other:http", 11, 80, vec![ep(9, true, true, false)]);
        let many: Vec<EndpointSpec> = (2..6).map(|i| ep(i, true, true, false)).collect();
        let before = ServiceTable::build(&[other.clone(), spec(many)], None, hairpin, &mut memory);
        let (ports, last_id) = memory.records();
        assert_eq!(ports.len(), 2);

        let mut carried = BuildMemory::carried_over(&ports, last_id);
        ServiceTable::build(&[], None, hairpin, &mut carried);
        other.endpoints.push(ep(10, true, true, false));
        let fresh = named("default/fresh:http", 12, 80, vec![ep(7, true, true, false)]);
        let after = ServiceTable::build(
            &[fresh, spec(vec![ep(2, true, true, false)]), other],
            None,
            hairpin,
            &mut carried,
        );
        for p in before.ports() {
            let q = after.by_id(p.id).unwrap_or_else(|| panic!("{} lost its id", p.name));
            assert_eq!(q.name, p.name);
            assert_eq!(q.maglev.as_ref().unwrap().len(), p.maglev.as_ref().unwrap().len(), "{}", p.name);
        }
        let fresh_id = after.by_vip(Ipv4Addr::new(10, 96, 0, 12), 80, IPPROTO_TCP).unwrap().id;
        assert!(ports.iter().all(|p| p.id < fresh_id));
        assert_eq!(carried.records().0.len(), 3);
    }

    #[test]
    fn pinned_clients_carry_over_a_restart() {
        let a = Affinity::default();
        let client = Ipv4Addr::new(10, 244, 1, 9);
        a.set(1, client, 42, 100, 1000);
        a.set(2, client, 43, 100, 1050);
        let records = a.records(1060);
        let b = Affinity::default();
        let back: Vec<bool> = records.iter().map(|r| b.restore(r, 50, 5000)).collect();
        // Service 1: idle 60 + 50 s away > 100 s: gone. Service 2: 10 + 50 s.
        assert_eq!(back.iter().filter(|x| **x).count(), 1);
        assert_eq!((b.get(1, client, 5000), b.get(2, client, 5000)), (None, Some(43)));
        assert_eq!(b.get(2, client, 5040), Some(43));
        assert_eq!(b.get(2, client, 5041), None, "the timeout counts from before the restart");
    }

    fn named(name: &str, vip_last: u8, port: u16, endpoints: Vec<EndpointSpec>) -> ServicePortSpec {
        ServicePortSpec {
            name: name.into(),
            vip: Ipv4Addr::new(10, 96, 0, vip_last),
            port,
            node_port: None,
            ..spec(endpoints)
        }
    }

    #[test]
    fn an_update_leaves_the_table_a_full_build_would_make() {
        let hairpin = DEFAULT_HAIRPIN_IP;
        let a = named("ns/a:http", 10, 80, vec![ep(2, true, true, false), ep(3, true, true, false)]);
        let a_dns = named("ns/a:dns", 10, 53, vec![ep(2, true, true, false)]);
        let b = named("ns/b:http", 11, 80, vec![ep(2, true, true, false)]);
        let c = named("ns/c:http", 12, 80, vec![ep(4, true, true, false)]);
        let c2 = named("ns/c:http", 12, 80, vec![ep(4, true, true, false), ep(5, false, true, true)]);
        let mut memory = BuildMemory::default();
        let mut t = ServiceTable::build(&[a.clone(), a_dns.clone(), b, c], None, hairpin, &mut memory);
        let c_id = t.by_vip(c2.vip, 80, IPPROTO_TCP).unwrap().id;
        t.update(["ns/b:http"], std::slice::from_ref(&c2), &mut memory);
        let full = ServiceTable::build(&[a, a_dns, c2.clone()], None, hairpin, &mut BuildMemory::default());

        assert_eq!(t.by_vip(c2.vip, 80, IPPROTO_TCP).unwrap().id, c_id, "a replaced port keeps its id");
        assert_eq!(t.ports().count(), full.ports().count());
        for vip in [10, 11, 12, 13] {
            let vip = Ipv4Addr::new(10, 96, 0, vip);
            assert_eq!(t.is_vip(vip), full.is_vip(vip), "{vip}");
            for port in [53, 80] {
                let (got, want) = (t.by_vip(vip, port, IPPROTO_TCP), full.by_vip(vip, port, IPPROTO_TCP));
                assert_eq!(got.map(|p| (&p.backends, &p.maglev)), want.map(|p| (&p.backends, &p.maglev)));
            }
        }
        for last in 1..7 {
            let ip = Ipv4Addr::new(10, 244, 1, last);
            assert_eq!(t.is_endpoint(ip, 8080, IPPROTO_TCP), full.is_endpoint(ip, 8080, IPPROTO_TCP), "{ip}");
        }
        assert!(t.is_endpoint(Ipv4Addr::new(10, 244, 1, 2), 8080, IPPROTO_TCP), "still listed by ns/a");
    }

    #[test]
    fn an_address_shared_by_ports_stays_until_the_last_one_goes() {
        let mut memory = BuildMemory::default();
        let http = named("ns/a:http", 10, 80, vec![ep(2, true, true, false)]);
        let alt = named("ns/a:alt", 10, 8080, vec![ep(2, true, true, false)]);
        let mut t = ServiceTable::build(&[http, alt], None, DEFAULT_HAIRPIN_IP, &mut memory);
        let (vip, endpoint) = (Ipv4Addr::new(10, 96, 0, 10), Ipv4Addr::new(10, 244, 1, 2));
        t.update(["ns/a:http"], &[], &mut memory);
        assert!(t.is_vip(vip) && t.is_endpoint(endpoint, 8080, IPPROTO_TCP));
        assert!(t.by_vip(vip, 80, IPPROTO_TCP).is_none() && t.by_vip(vip, 8080, IPPROTO_TCP).is_some());
        t.update(["ns/a:alt"], &[], &mut memory);
        assert!(!t.is_vip(vip) && !t.is_endpoint(endpoint, 8080, IPPROTO_TCP) && t.is_empty());
    }

    #[test]
    fn retired_vips_and_endpoints_stay_recognised_for_their_flows() {
        use crate::tables::conntrack::{Conntrack, ConntrackConfig, Tuple};
        let ct = Conntrack::new(ConntrackConfig::default());
        let client = Tuple {
            proto: IPPROTO_TCP,
            src: Ipv4Addr::new(10, 244, 1, 50),
            src_port: 40000,
            dst: Ipv4Addr::new(10, 96, 0, 10),
            dst_port: 80,
        };
        let reply = Tuple {
            proto: IPPROTO_TCP,
            src: Ipv4Addr::new(10, 244, 1, 2),
            src_port: 8080,
            dst: client.src,
            dst_port: 40000,
        };
        ct.batch().insert(client, reply, 1, None, 0).unwrap();
        let empty = ServiceTable::build(&[], None, DEFAULT_HAIRPIN_IP, &mut BuildMemory::default());
        assert!(empty.is_empty());
        let kept = empty.keep_for_flows(ct.snapshot().iter().map(|c| &**c));
        assert_eq!(kept.retired(), 2);
        assert!(!kept.is_empty(), "the NAT stage must still look at packets");
        assert!(kept.is_vip(client.dst) && kept.is_endpoint(reply.src, 8080, IPPROTO_TCP));
        assert!(kept.by_vip(client.dst, 80, IPPROTO_TCP).is_none(), "but no new flows");
    }

    #[test]
    fn affinity_remembers_within_its_timeout() {
        let a = Affinity::default();
        let client = Ipv4Addr::new(10, 244, 1, 9);
        a.set(1, client, 42, 100, 0);
        assert_eq!(a.get(1, client, 100), Some(42));
        assert_eq!(a.get(1, client, 101), None);
        assert_eq!(a.get(2, client, 0), None, "per Service");
        a.set(1, client, 42, 100, 50);
        assert_eq!(a.expire(150), 0);
        assert_eq!(a.expire(151), 1);
        assert!(a.is_empty());
        // Bounded: past the cap a new client is not pinned; known ones still are.
        let small = Affinity::new(1);
        small.set(1, client, 42, 100, 0);
        small.set(1, Ipv4Addr::new(10, 244, 1, 10), 43, 100, 0);
        assert_eq!((small.len(), small.get(1, client, 1)), (1, Some(42)));
    }
}
