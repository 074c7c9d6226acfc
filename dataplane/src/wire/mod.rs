//! The wire layer: bytes only.
//!
//! [`parse()`] slices a frame once into [`FrameMeta`]; each header the switch reads or
//! writes has a typed view with named field offsets (`ethernet`, `arp`, `ipv4`, `icmp`
//! with its quoted packet, `udp`, `tcp`, `vxlan`, the virtio-net header in `offload`);
//! rewrites happen in place with checksums updated incrementally (`checksum`). Errors are
//! this layer's own [`Error`]. Nothing here knows about frames in buffers, ports,
//! tables or counters: everything takes `&[u8]` / `&mut [u8]`.

pub mod arp;
mod bytes;
pub mod checksum;
pub mod coalesce;
mod error;
pub mod ethernet;
pub mod icmp;
pub mod ip;
pub mod ipv4;
pub mod ipv6;
mod mac;
mod meta;
pub mod offload;
pub mod parse;
pub mod tcp;
pub mod udp;
pub mod vxlan;

pub use error::Error;
pub use mac::{MacAddr, ParseMacError};
pub use meta::{ArpMeta, Fragment, FrameMeta, Ipv4Meta, Ipv6Meta, L4, Net};
pub use parse::{MAX_FRAME_LEN, parse};
