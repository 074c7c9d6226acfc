//! Network namespaces: open one by path and run code inside it.

#![allow(unsafe_code)]
#![deny(unsafe_op_in_unsafe_fn)]

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::sched::{CloneFlags, setns};
use nix::sys::statfs::{NSFS_MAGIC, fstatfs};

use super::{Context, SysError};

// <linux/nsfs.h>: NS_GET_NSTYPE = _IO(0xb7, 0x3), answering the CLONE_NEW* type.
nix::ioctl_none!(ns_get_nstype, 0xb7, 0x3);

/// An open network namespace (the file keeps it alive while we hold it).
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

/// Why a path could not be opened as a network namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {} does not exist", .0.display())]
    NotFound(PathBuf),
    #[error("{} is not a network namespace (expected a bind mount of /proc/<pid>/ns/net)", .0.display())]
    NotANamespace(PathBuf),
    /// The daemon may not open it (permissions, a security module).
    #[error("network namespace {} refused: {source}", path.display())]
    Denied {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("opening network namespace {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Netns {
    /// Opens the namespace at `path` (e.g. `/var/run/netns/x` or `/proc/<pid>/ns/net`).
    pub fn open(path: &Path) -> Result<Netns, NetnsError> {
        // Non-blocking: a FIFO at that path must not hang the caller.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => NetnsError::NotFound(path.to_path_buf()),
                std::io::ErrorKind::PermissionDenied => {
                    NetnsError::Denied { path: path.to_path_buf(), source: e }
                }
                _ => NetnsError::Io { path: path.to_path_buf(), source: e },
            })?;
        let fs = fstatfs(&file).map_err(|e| NetnsError::Io { path: path.to_path_buf(), source: e.into() })?;
        if fs.filesystem_type() != NSFS_MAGIC {
            return Err(NetnsError::NotANamespace(path.to_path_buf()));
        }
        // A namespace, but which kind (a mount namespace is no place for an interface)?
        // SAFETY: NS_GET_NSTYPE takes no argument and only reads the fd, which is open.
        let kind = unsafe { ns_get_nstype(file.as_raw_fd()) };
        if kind != Ok(libc::CLONE_NEWNET) {
            return Err(NetnsError::NotANamespace(path.to_path_buf()));
        }
        Ok(Netns { file, path: path.to_path_buf() })
    }

    /// The namespace the calling thread is in.
    pub fn current() -> Result<Netns, NetnsError> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `self` and `other` are the same namespace (however each was reached:
    /// a bind mount, `/proc/<pid>/ns/net`), by the nsfs inode.
    pub fn same_as(&self, other: &Netns) -> Result<bool, NetnsError> {
        let id = |n: &Netns| {
            n.file
                .metadata()
                .map(|m| (std::os::unix::fs::MetadataExt::dev(&m), std::os::unix::fs::MetadataExt::ino(&m)))
                .map_err(|source| NetnsError::Io { path: n.path.clone(), source })
        };
        Ok(id(self)? == id(other)?)
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` on a fresh thread that has entered this namespace, and returns its
    /// result. Sockets and devices `f` opens belong to the namespace; the caller's
    /// threads stay where they are.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R, SysError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
                    .context(|| format!("entering network namespace {}", self.path.display()))?;
                Ok(f())
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }
}

impl AsFd for Netns {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_paths_that_are_not_namespaces() {
        assert!(matches!(Netns::open(Path::new("/nonexistent/netns")), Err(NetnsError::NotFound(_))));
        assert!(matches!(Netns::open(Path::new("/proc/self/status")), Err(NetnsError::NotANamespace(_))));
        assert!(
            matches!(Netns::open(Path::new("/proc/self/ns/mnt")), Err(NetnsError::NotANamespace(_))),
            "a namespace of another kind"
        );
        assert!(Netns::current().is_ok(), "our own is one");
    }

    #[test]
    fn a_namespace_is_itself_by_any_path() {
        let here = Netns::current().unwrap();
        assert!(Netns::open(Path::new("/proc/self/ns/net")).unwrap().same_as(&here).unwrap());
    }

    #[test]
    #[ignore = "needs root: scripts/test.sh runs it"]
    fn runs_a_closure_inside_a_namespace() {
        // Entering a namespace, even our own, needs CAP_SYS_ADMIN.
        let ns = Netns::current().unwrap();
        assert_eq!(ns.run(|| 7).unwrap(), 7);
    }
}
