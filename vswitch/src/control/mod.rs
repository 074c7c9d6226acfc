//! The control plane: configuration, the Unix-socket API, port management, metrics.
//!
//! It builds [`crate::tables::Tables`] snapshots and drives [`crate::datapath::Datapath`];
//! nothing in the data plane imports from here.

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
