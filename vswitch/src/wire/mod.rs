//! The frame layer: typed views over raw frame bytes.
//!
//! [`parse`] slices a frame once into [`FrameMeta`]; the rewrite helpers change headers
//! in place (checksums updated incrementally); the builders write new frames (ARP
//! replies, ICMP errors, VXLAN outer headers) into buffers the caller owns.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
mod mac;
pub mod offload;
pub mod parse;
pub mod vxlan;

pub use mac::{MacAddr, ParseMacError};
pub use parse::{ArpMeta, Fragment, FrameMeta, Ipv4Meta, Ipv6Meta, L4, Net, parse};
