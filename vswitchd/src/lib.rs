//! vswitchd: the daemon and its control plane.
//!
//! It reads the configuration ([`config`]), serves the Unix-socket API ([`api`]) and the
//! metrics ([`metrics`]), attaches pods and keeps the switch's ports ([`ports`], with
//! what survives a restart in [`state`]), serves Services ([`catalog`], from the
//! [`services_file`] or the cluster) and knows the other nodes ([`nodes_file`] or the
//! cluster); [`cluster`] watches the Kubernetes API. All of it builds
//! `vswitch_dataplane::tables::Tables` snapshots and drives the
//! `vswitch_dataplane::datapath::Datapath`; nothing in the data plane imports from
//! here. [`daemon`] wires it together.

#![forbid(unsafe_code)]

pub mod api;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod nodes_file;
pub mod ports;
pub mod services_file;
pub mod state;
