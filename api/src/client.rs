//! A client of the daemon's Unix-socket API: one HTTP/1.1 connection per request, so
//! a restarted daemon is picked up without reconnect logic.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;

use crate::observe::{CaptureRequest, FlowsRequest, LiveTraceRequest, TraceRequest, TraceView};
use crate::services::{ConntrackView, NodesView, ServicesView};
use crate::types::{AttachRequest, DetachOutcome, ErrorBody, FdbEntry, PortInfo, Stats, Status};

/// Why a request did not get a successful answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing listens on the socket (daemon not running) or it cannot be opened.
    #[error("cannot reach vswitchd at {}: {source}", socket.display())]
    Unreachable {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The daemon took longer than the client's timeout.
    #[error("vswitchd at {} did not answer within {timeout:?}", socket.display())]
    Timeout { socket: PathBuf, timeout: Duration },
    /// The connection broke mid-request.
    #[error("talking to vswitchd: {0}")]
    Protocol(String),
    /// The daemon answered with an error.
    #[error("vswitchd refused ({status}, {code}): {message}")]
    Api { status: u16, code: String, message: String },
    /// Something on the client's own side failed: a file it could not write.
    #[error("{0}")]
    Local(String),
    /// The answer was not what this client understands (version skew?).
    #[error("unexpected answer from vswitchd: {0}")]
    Decode(String),
}

impl ClientError {
    /// True when the daemon could not be reached at all (as opposed to refusing).
    pub fn is_unreachable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. } | ClientError::Timeout { .. })
    }
}

/// A handle on the daemon's API socket. Cheap to clone; connects per request.
#[derive(Clone, Debug)]
pub struct Client {
    socket: PathBuf,
    timeout: Duration,
}

impl Client {
    /// A client of the daemon listening on `socket`, with a 30 s timeout per request
    /// (attaching a port creates kernel devices; it normally takes milliseconds).
    pub fn new(socket: impl Into<PathBuf>) -> Client {
        Client { socket: socket.into(), timeout: Duration::from_secs(30) }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn status(&self) -> Result<Status, ClientError> {
        self.call(Method::GET, "/v1/status", None::<&()>).await
    }

    pub async fn attach(&self, req: &AttachRequest) -> Result<PortInfo, ClientError> {
        self.call(Method::POST, "/v1/ports", Some(req)).await
    }

    pub async fn detach(&self, container_id: &str, ifname: &str) -> Result<DetachOutcome, ClientError> {
        self.call(Method::DELETE, &port_path(container_id, ifname), None::<&()>).await
    }

    pub async fn ports(&self) -> Result<Vec<PortInfo>, ClientError> {
        self.call(Method::GET, "/v1/ports", None::<&()>).await
    }

    /// The port of one attachment; `None` when the daemon has no such port.
    pub async fn port(&self, container_id: &str, ifname: &str) -> Result<Option<PortInfo>, ClientError> {
        match self.call(Method::GET, &port_path(container_id, ifname), None::<&()>).await {
            Ok(p) => Ok(Some(p)),
            Err(ClientError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    pub async fn fdb(&self) -> Result<Vec<FdbEntry>, ClientError> {
        self.call(Method::GET, "/v1/fdb", None::<&()>).await
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        self.call(Method::GET, "/v1/stats", None::<&()>).await
    }

    pub async fn services(&self) -> Result<ServicesView, ClientError> {
        self.call(Method::GET, "/v1/services", None::<&()>).await
    }

    /// Reads the services file now instead of at the next poll.
    pub async fn reload_services(&self) -> Result<ServicesView, ClientError> {
        self.call(Method::POST, "/v1/services/reload", None::<&()>).await
    }

    /// The overlay and the nodes it routes to.
    pub async fn nodes(&self) -> Result<NodesView, ClientError> {
        self.call(Method::GET, "/v1/nodes", None::<&()>).await
    }

    /// Reads the nodes file now instead of at the next poll.
    pub async fn reload_nodes(&self) -> Result<NodesView, ClientError> {
        self.call(Method::POST, "/v1/nodes/reload", None::<&()>).await
    }

    /// The tracked flows, at most `limit` of them.
    pub async fn conntrack(&self, limit: usize) -> Result<ConntrackView, ClientError> {
        self.call(Method::GET, &format!("/v1/conntrack?limit={limit}"), None::<&()>).await
    }

    /// What the switch would do with a frame (nothing is sent).
    pub async fn trace(&self, req: &TraceRequest) -> Result<TraceView, ClientError> {
        self.call(Method::POST, "/v1/trace", Some(req)).await
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| ClientError::Decode(e.to_string()))?,
            None => Vec::new(),
        };
        let exchange = self.exchange(method, path, body);
        let (status, bytes) = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| ClientError::Timeout { socket: self.socket.clone(), timeout: self.timeout })??;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode(format!("{path}: {e}")))
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let (response, driver) = self.send(method, path, body).await?;
        let status = response.status();
        let bytes = whole_body(response).await?;
        driver.abort();
        Ok((status, bytes))
    }

    /// Sends a request; the answer's body is read by the caller while `driver` runs
    /// the connection.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
    ) -> Result<
        (hyper::Response<hyper::body::Incoming>, tokio::task::JoinHandle<hyper::Result<()>>),
        ClientError,
    > {
        let stream = UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Unreachable { socket: self.socket.clone(), source })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let driver = tokio::spawn(connection);
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "vswitchd")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let response =
            sender.send_request(request).await.map_err(|e| ClientError::Protocol(e.to_string()))?;
        Ok((response, driver))
    }

    /// Follows the flow log: each piece of the JSON-lines stream goes to `sink` as it
    /// arrives, until the request's seconds are over or `sink` fails.
    pub async fn flows(
        &self,
        req: &FlowsRequest,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.stream(Method::POST, "/v1/flows", body, sink).await
    }

    /// Runs a live trace: each piece of its JSON lines (one `TraceView` per frame) to
    /// `sink` as it arrives.
    pub async fn trace_live(
        &self,
        req: &LiveTraceRequest,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.stream(Method::POST, "/v1/trace/live", body, sink).await
    }

    /// Runs a capture: each piece of the pcapng stream goes to `sink` as it arrives,
    /// until the capture ends (its count or seconds) or `sink` fails. The client's
    /// timeout bounds the wait for the answer to start, not the capture.
    pub async fn capture(
        &self,
        req: &CaptureRequest,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let body = serde_json::to_vec(req).map_err(|e| ClientError::Decode(e.to_string()))?;
        self.stream(Method::POST, "/v1/capture", body, sink).await
    }

    /// A request whose answer streams: its pieces to `sink` as they come.
    async fn stream(
        &self,
        method: Method,
        path: &str,
        body: Vec<u8>,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<(), ClientError> {
        let started = tokio::time::timeout(self.timeout, self.send(method, path, body))
            .await
            .map_err(|_| ClientError::Timeout { socket: self.socket.clone(), timeout: self.timeout })??;
        let (response, driver) = started;
        let status = response.status();
        if !status.is_success() {
            let bytes = whole_body(response).await?;
            driver.abort();
            return Err(api_error(status, &bytes));
        }
        let mut body = response.into_body();
        let outcome = loop {
            match body.frame().await {
                None => break Ok(()),
                Some(Err(e)) => break Err(ClientError::Protocol(e.to_string())),
                Some(Ok(frame)) => {
                    if let Some(data) = frame.data_ref()
                        && let Err(e) = sink(data)
                    {
                        break Err(ClientError::Local(format!("writing what {path} sent: {e}")));
                    }
                }
            }
        };
        driver.abort();
        outcome
    }
}

async fn whole_body(response: hyper::Response<hyper::body::Incoming>) -> Result<Bytes, ClientError> {
    let collected = response.into_body().collect().await.map_err(|e| ClientError::Protocol(e.to_string()))?;
    Ok(collected.to_bytes())
}

fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(e) => ClientError::Api { status: status.as_u16(), code: e.error.code, message: e.error.message },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "http".into(),
            message: String::from_utf8_lossy(bytes).into_owned(),
        },
    }
}

/// `/v1/ports/{container_id}/{ifname}`, percent-encoding anything outside the URL's
/// unreserved characters (interface names may hold almost any byte).
fn port_path(container_id: &str, ifname: &str) -> String {
    format!("/v1/ports/{}/{}", encode_segment(container_id), encode_segment(ifname))
}

fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::UnixListener;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(port_path("abc-1.2_3", "eth0"), "/v1/ports/abc-1.2_3/eth0");
        assert_eq!(port_path("a", "e%th 0?"), "/v1/ports/a/e%25th%200%3F");
    }

    /// Serves one canned HTTP answer on a fresh socket; returns what the client sent.
    async fn one_shot(answer: &'static str) -> (Client, tokio::task::JoinHandle<String>, tempdir::Dir) {
        let dir = tempdir::Dir::new();
        let path = dir.0.join("api.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = vec![0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            s.write_all(answer.as_bytes()).await.unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        });
        (Client::new(&path), server, dir)
    }

    #[tokio::test(flavor = "current_thread")]
    async fn decodes_success_and_error_answers() {
        let (client, server, _dir) =
            one_shot("HTTP/1.1 200 OK\r\ncontent-length: 16\r\n\r\n{\"existed\":true}").await;
        let outcome = client.detach("c1", "eth0").await.unwrap();
        let sent = server.await.unwrap();
        assert!(sent.starts_with("DELETE /v1/ports/c1/eth0 HTTP/1.1"), "{sent}");
        assert!(outcome.existed);

        // A body cut short by the server is not accepted as an answer.
        let (client, server, _dir) =
            one_shot("HTTP/1.1 200 OK\r\ncontent-length: 15\r\n\r\n{\"existed\":true}").await;
        let outcome = client.detach("c1", "eth0").await;
        server.await.unwrap();
        assert!(matches!(outcome, Err(ClientError::Decode(_))), "{outcome:?}");

        let body = r#"{"error":{"code":"conflict","message":"10.244.1.5 is in use by port 3"}}"#;
        let answer: &'static str = Box::leak(
            format!("HTTP/1.1 409 Conflict\r\ncontent-length: {}\r\n\r\n{body}", body.len()).into_boxed_str(),
        );
        let (client, server, _dir) = one_shot(answer).await;
        let err = client.ports().await.unwrap_err();
        server.await.unwrap();
        match err {
            ClientError::Api { status, code, message } => {
                assert_eq!((status, code.as_str()), (409, "conflict"));
                assert!(message.contains("10.244.1.5"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn unreachable_daemon_is_told_apart() {
        let dir = tempdir::Dir::new();
        let err = Client::new(dir.0.join("nobody.sock")).status().await.unwrap_err();
        assert!(err.is_unreachable(), "{err}");
        assert!(err.to_string().contains("nobody.sock"), "{err}");
    }

    /// A scratch directory removed on drop (tests only; no extra dependency).
    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Dir {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "vswitch-api-test-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}
