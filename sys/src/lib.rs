//! The kernel, beyond frame I/O: network namespaces, netlink, ethtool.
//!
//! The control plane and the CNI plugin call these to create, move, configure and
//! remove the devices behind ports; the data plane's port backends use the namespace
//! and error types. `netlink` (rtnetlink, on tokio) is behind the `netlink` feature, so
//! the data plane links no async runtime. Blocking calls that must run inside a pod's
//! namespace go through [`netns::Netns::run`], which uses a short-lived thread so the
//! caller's own namespace never changes.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod ethtool;
pub mod fd_passing;
#[cfg(feature = "netlink")]
pub mod netlink;
pub mod netns;

/// An OS error with the operation and object it concerned.
#[derive(Debug, thiserror::Error)]
#[error("{op}: {source}")]
pub struct SysError {
    pub op: String,
    #[source]
    pub source: std::io::Error,
}

impl SysError {
    pub fn new(op: impl Into<String>, source: std::io::Error) -> SysError {
        SysError { op: op.into(), source }
    }

    /// The errno, when the kernel gave one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }
}

/// Attaches context to an `io::Result`.
pub trait Context<T> {
    fn context(self, op: impl FnOnce() -> String) -> Result<T, SysError>;
}

impl<T> Context<T> for std::io::Result<T> {
    fn context(self, op: impl FnOnce() -> String) -> Result<T, SysError> {
        self.map_err(|e| SysError::new(op(), e))
    }
}
