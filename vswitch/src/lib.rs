//! vswitch: a userspace packet-forwarding virtual switch for Kubernetes nodes.
//!
//! Data plane: [`wire`] (frame views), [`frame`] (pooled buffers), [`port`] (I/O
//! backends), [`tables`] and [`fdb`] (what workers look up), the pipeline stages
//! ([`port_security`], [`mac_learning`], [`arp_proxy`], [`l2`]) run by [`pipeline`],
//! and [`worker`]/[`datapath`] (threads and queues). None of these import the control
//! plane; it builds [`tables::Tables`] snapshots and hands them to [`datapath::Datapath`].

#![deny(unsafe_code)]

pub mod arp_proxy;
pub mod clock;
pub mod conntrack;
pub mod control;
pub mod datapath;
pub mod drop_reason;
pub mod fdb;
pub mod frame;
pub mod fuzzing;
pub mod l2;
pub mod mac_cache;
pub mod mac_learning;
pub mod maglev;
pub mod overlay;
pub mod pipeline;
pub mod port;
pub mod port_security;
pub mod service_nat;
pub mod services;
pub mod stats;
pub mod sys;
pub mod tables;
pub mod testbed;
pub mod testing;
pub mod wire;
pub mod worker;
