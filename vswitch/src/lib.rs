//! vswitch: a userspace packet-forwarding virtual switch for Kubernetes nodes.
//!
//! Data plane modules ([`wire`], [`frame`], [`port`], [`tables`], [`fdb`], the pipeline
//! stages, [`worker`], [`datapath`]) never import the control plane; the control plane
//! builds [`tables::Tables`] snapshots and hands them over through [`datapath::Datapath`].

#![deny(unsafe_code)]

pub mod drop_reason;
pub mod testing;
pub mod wire;
