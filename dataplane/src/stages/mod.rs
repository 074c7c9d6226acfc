//! The pipeline stages, each one decision about a frame (the order is `pipeline`'s):
//!
//! - [`port_security`]: what a port may send.
//! - [`overlay`]: VXLAN from other nodes decapsulated; frames to other nodes' pod CIDRs
//!   routed toward them.
//! - [`mac_learning`]: source MACs of uplinks learned.
//! - [`arp_proxy`]: ARP answered by the switch.
//! - [`service_nat`]: Service VIPs and NodePorts translated, with conntrack.
//! - [`l2`]: destination MAC → port.
//! - [`l3`]: not a stage: the routed hop the overlay and Service NAT share.
//!
//! Each stage has the one signature of the `stage` contract and imports only it, the
//! layers below, and `l3`. A new stage goes in a file here, into the order in
//! `pipeline::stages`, and into the list beside it that checks every stage against the
//! signature.

pub(crate) mod arp_proxy;
pub(crate) mod l2;
pub(crate) mod l3;
pub(crate) mod mac_learning;
pub(crate) mod overlay;
pub(crate) mod port_security;
pub(crate) mod service_nat;
