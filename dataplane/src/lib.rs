//! The data plane of vswitch: frames in, frames out, on per-core pipelines.
//!
//! Layers, lowest first; a module imports only layers below it (tests/layers.rs checks):
//!
//! - [`wire`]: bytes only — frame parsing, typed header views, checksums.
//! - [`ids`], [`drop_reason`], [`clock`]: identities, why a frame is dropped, time.
//! - [`frame`], [`stats`]: pooled frame buffers; per-worker counters.
//! - [`queue`]: the port contract a worker drives; [`capture`]: copies of frames for
//!   `vswitchctl capture`.
//! - [`tables`]: what the control plane publishes (ports, Services, nodes) and what the
//!   data path learns (FDB, conntrack).
//! - [`stage`]: the stage contract — verdict, context, one signature.
//! - [`stages`]: port security, MAC learning, ARP proxy, Service NAT, overlay, L2, and
//!   the shared routed hop (L3). A stage never imports another stage except `l3`.
//! - [`pipeline`]: the stage order on one page, and dispatch of verdicts.
//! - [`worker`], [`datapath`]: threads, their queues, hand-off between them.
//! - [`port`]: the backends (TAP, AF_XDP, underlay sockets, memory).
//! - [`testing`], [`fuzzing`]: frame builders and switch rigs for tests, benches and
//!   fuzz targets.
//!
//! The control plane (the `vswitchd` crate) builds [`tables::Tables`] snapshots and
//! hands them to [`datapath::Datapath`]; nothing here imports it.

#![deny(unsafe_code)]
#![warn(unreachable_pub)]

pub mod wire;

pub mod clock;
pub mod drop_reason;
pub mod ids;

pub mod frame;
pub mod stats;

pub mod capture;
pub mod queue;

pub mod tables;

mod stage;

mod stages;

mod pipeline;

pub mod datapath;
mod worker;

pub mod port;

pub mod fuzzing;
pub mod testing;
