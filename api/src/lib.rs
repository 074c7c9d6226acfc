//! The vswitchd control API, shared by the daemon, `vswitchctl` and the CNI plugin.
//!
//! JSON over HTTP/1.1 on the daemon's Unix socket (mode 0600, in the node's network
//! namespace), so `curl --unix-socket /run/vswitch/vswitchd.sock http://x/v1/ports`
//! works too. Every route is under `/v1`:
//!
//! | method and path | body | answer |
//! |---|---|---|
//! | `GET /v1/status` | | [`Status`] |
//! | `POST /v1/ports` | [`AttachRequest`] | [`PortInfo`] (201 new, 200 already attached the same way) |
//! | `GET /v1/ports` | | `[`[`PortInfo`]`]` |
//! | `GET /v1/ports/{container_id}/{ifname}` | | [`PortInfo`], or 404 |
//! | `DELETE /v1/ports/{container_id}/{ifname}` | | [`DetachOutcome`] (200 whether or not it existed) |
//! | `GET /v1/fdb` | | `[`[`FdbEntry`]`]` |
//! | `GET /v1/stats` | | [`Stats`] |
//! | `GET /v1/services` | | [`ServicesView`] |
//! | `POST /v1/services/reload` | | [`ServicesView`] after reading the services file now, or 400 `invalid_services` naming the line and field |
//! | `GET /v1/conntrack?limit=N` | | [`ConntrackView`] (at most N flows, default 1000) |
//! | `POST /v1/trace` | [`TraceRequest`] | [`TraceView`]: the frame's path through the stages, nothing sent; 404 for an unknown port, 400 `invalid_request` for a frame that cannot be built |
//!
//! A failure answers with a 4xx/5xx status and an [`ErrorBody`].

#![forbid(unsafe_code)]

mod client;
mod observe;
mod services;
mod types;

pub use client::{Client, ClientError};
pub use observe::*;
pub use services::*;
pub use types::*;

/// Where the daemon listens unless configured otherwise.
pub const DEFAULT_SOCKET: &str = "/run/vswitch/vswitchd.sock";
