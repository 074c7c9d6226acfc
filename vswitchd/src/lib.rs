//! vswitchd: the daemon and its control plane.
//!
//! It reads the configuration ([`config`]), serves the Unix-socket API ([`api`]) and the
//! metrics ([`metrics`]). [`switch::Switch`] holds the switch: the data plane and its
//! tables ([`plane`]), the ports ([`ports`]: pods attached, the host port, the uplink,
//! the underlay; what survives a restart in [`state`]), the Services ([`services`],
//! built by the [`catalog`] from the [`services_file`] or the cluster) and the other
//! nodes ([`nodes`], from the config, the [`nodes_file`] or the cluster); [`cluster`]
//! watches the Kubernetes API. All of it builds `vswitch_dataplane::tables::Tables`
//! snapshots and drives the `vswitch_dataplane::datapath::Datapath`; nothing in the
//! data plane imports from here. [`daemon`] wires it together.

#![forbid(unsafe_code)]

pub mod api;
pub mod catalog;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod metrics;
pub mod nodes;
pub mod nodes_file;
pub mod plane;
pub mod ports;
pub mod services;
pub mod services_file;
pub mod state;
pub mod switch;
