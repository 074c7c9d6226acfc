//! vswitchd: the daemon and its control plane.
//!
//! It reads the configuration ([`config`]), serves the Unix-socket API ([`api`]) and the
//! metrics ([`metrics`]). [`switch::Switch`] holds the switch: the data plane and its
//! tables ([`plane`]), the ports ([`ports`]: pods attached, the host port, the uplink,
//! the underlay; what survives a restart in [`state`], and what the tables learned in
//! [`snapshot`]), the Services ([`services`], built by the [`catalog`] from the
//! [`services_file`] or the cluster) and the other nodes ([`nodes`], from the config,
//! the [`nodes_file`] or the cluster); [`cluster`] watches the Kubernetes API; [`trace`]
//! answers packet traces, [`capture`] streams captures and [`flows`] the flow log. All of
//! it builds `vswitch_dataplane::tables::Tables` snapshots and drives the
//! `vswitch_dataplane::datapath::Datapath`; nothing in the data plane imports from
//! here. [`daemon`] wires it together.

#![forbid(unsafe_code)]
#![warn(unreachable_pub)]

mod api;
mod api_connections;
mod capture;
mod catalog;
pub mod cluster;
pub mod config;
pub mod daemon;
mod flows;
mod metrics;
mod nodes;
mod nodes_file;
mod plane;
mod ports;
mod services;
mod services_file;
mod snapshot;
mod state;
mod switch;
pub mod takeover;
mod trace;
