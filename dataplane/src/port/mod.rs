//! Port backends: TAP devices, AF_XDP sockets (pods' veths and the uplink, with the
//! uplink's XDP steering program), the underlay through a tunnel TAP (with its tc
//! programs) or through kernel sockets, and an in-memory port for tests and benches. Each implements the [`PortQueue`] contract of `queue`.

pub mod afxdp;
pub mod memory;
pub mod steer;
pub mod tap;
pub mod tunnel;
pub mod underlay;
pub mod xsk;

pub use crate::queue::{PortError, PortQueue, TxOutcome};
