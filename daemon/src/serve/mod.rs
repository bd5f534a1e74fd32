//! The agent's HTTP API (axum on hyper): health, readiness, Prometheus metrics
//! and the recorded flows (queries with paging, and a live follow stream), all
//! read-only; and the client side of it that gathers flows from every agent of
//! a cluster through the Kubernetes API server (`cluster`).
//!
//! Everything but `/healthz` and `/readyz` needs the bearer token of
//! `--token-file`, in `Authorization: Bearer T` or, through the API server's
//! proxy (which consumes `Authorization` itself), in `X-Flowpol-Token: T`.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use clap::Args;
use flowpol_recommender::flow::FlowRecord;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinHandle;

use crate::enrich::Identity;
use crate::store::Store;

pub mod cluster;
pub mod config;
pub mod filter;
pub mod flows_api;
pub mod metrics;

pub use metrics::Metrics;

/// The header that carries the token through the API server's proxy.
pub const TOKEN_HEADER: &str = "x-flowpol-token";
/// The agent API's default port (the one deploy/'s DaemonSet uses).
pub const DEFAULT_PORT: u16 = 9090;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("--token-file {path}: {source}")]
    TokenRead {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "--token-file {path}: the file is empty (write a random token into it, e.g. `head -c32 /dev/urandom | base64 > {path}`)"
    )]
    TokenEmpty { path: PathBuf },
    #[error("--listen {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// `flowpol agent` flags of the HTTP API.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Serve the HTTP API (health, readiness, metrics, flows) on this address,
    /// e.g. `0.0.0.0:9464`.
    #[arg(
        long,
        value_name = "ADDR",
        env = "FLOWPOL_LISTEN",
        requires = "token_file"
    )]
    pub listen: Option<SocketAddr>,
    /// File holding the bearer token every endpoint but /healthz and /readyz
    /// requires (e.g. a mounted Secret).
    #[arg(long, value_name = "PATH", env = "FLOWPOL_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
}

/// Reads a token file: surrounding whitespace (a trailing newline) is not part
/// of the token; an empty file is refused.
pub fn read_token(path: &Path) -> Result<String, ServeError> {
    let text = std::fs::read_to_string(path).map_err(|source| ServeError::TokenRead {
        path: path.to_path_buf(),
        source,
    })?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(ServeError::TokenEmpty {
            path: path.to_path_buf(),
        });
    }
    Ok(token)
}

/// Compares without an early exit, so the time taken does not tell how much
/// of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0xff);
        diff |= u64::from(x ^ y);
    }
    diff == 0
}

/// What `/readyz` checks: capture attached, and the first full list of
/// cluster state (when the agent has a source of it).
#[derive(Default)]
pub struct Readiness {
    attached: AtomicBool,
    identity: OnceLock<Option<Arc<Identity>>>,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("attached", &self.attached)
            .field("ready", &self.check().is_ok())
            .finish()
    }
}

impl Readiness {
    pub fn set_attached(&self) {
        self.attached.store(true, Ordering::Release);
    }

    /// The identity layer (or `None`: the agent records addresses only).
    pub fn set_identity(&self, identity: Option<Arc<Identity>>) {
        let _ = self.identity.set(identity);
    }

    /// The identity layer, once started (for the identity-cache metrics).
    pub fn identity(&self) -> Option<&Arc<Identity>> {
        self.identity.get().and_then(Option::as_ref)
    }

    /// `Ok` when ready, else what is still missing.
    pub fn check(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        if !self.attached.load(Ordering::Acquire) {
            missing.push("eBPF programs not attached yet");
        }
        match self.identity.get() {
            None => missing.push("identity source not started yet"),
            Some(Some(id)) if !id.is_ready() => {
                missing.push("waiting for the first full list of cluster state")
            }
            Some(_) => {}
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }
}

/// Live flows, one message per written drain batch (after the store accepted
/// it). Per batch, not per record: a burst of a whole drain is one slot, and
/// the channel holds at most [`LIVE_BATCHES`] batches however many clients follow.
pub type LiveFlows = broadcast::Sender<Arc<Vec<FlowRecord>>>;

/// Batches a follow client may fall behind before it skips some.
pub const LIVE_BATCHES: usize = 16;

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    /// Read-only handle on the agent's database (None without `--db`).
    pub store: Option<Store>,
    pub token: Arc<str>,
    pub readiness: Arc<Readiness>,
    pub metrics: Arc<Metrics>,
    pub live: LiveFlows,
    /// Flips to true on shutdown: follow streams end.
    pub shutdown: watch::Receiver<bool>,
}

/// Largest request accepted (headers and query string).
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a query (not a follow stream) may take.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Most rows one page returns.
pub const MAX_PAGE: u32 = 10_000;
/// Rows per page when the client gives no limit.
pub const DEFAULT_PAGE: u32 = 1_000;

pub fn router(state: ApiState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics::handler))
        .route("/api/v1/flows", get(flows_api::handler))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_token,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_REQUEST_BYTES))
        .with_state(state)
}

async fn readyz(State(state): State<ApiState>) -> Response {
    match state.readiness.check() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        )
            .into_response(),
    }
}

fn presented_token(headers: &HeaderMap) -> Option<&[u8]> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.as_bytes();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case(b"bearer ") {
            return Some(v[7..].trim_ascii());
        }
    }
    headers.get(TOKEN_HEADER).map(|v| v.as_bytes().trim_ascii())
}

async fn require_token(State(state): State<ApiState>, req: Request, next: Next) -> Response {
    match presented_token(req.headers()) {
        Some(t) if constant_time_eq(t, state.token.as_bytes()) => next.run(req).await,
        presented => {
            let why = if presented.is_some() {
                "the bearer token is not the agent's token"
            } else {
                "missing bearer token (Authorization: Bearer <token> or X-Flowpol-Token)"
            };
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                format!("{why}\n"),
            )
                .into_response()
        }
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` and serves `state` until [`Server::shutdown`]. `stop` is the
    /// sender of `state.shutdown`.
    pub async fn start(
        addr: SocketAddr,
        state: ApiState,
        stop: watch::Sender<bool>,
    ) -> Result<Server, ServeError> {
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| ServeError::Bind { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let app = router(state.clone());
        let shutdown = state.shutdown.clone();
        let task = tokio::spawn(accept_loop(listener, app, shutdown));
        tracing::info!(%addr, "HTTP API listening");
        Ok(Server { addr, stop, task })
    }

    /// Stops accepting, ends follow streams, lets requests in flight finish
    /// (up to a few seconds) and returns.
    pub async fn shutdown(self) {
        self.stop.send_replace(true);
        if tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .is_err()
        {
            tracing::warn!("HTTP API: connections still open after 5 s; closing them");
        }
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn accept_loop(listener: TcpListener, app: Router, mut shutdown: watch::Receiver<bool>) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // EMFILE and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP API: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = stopped(&mut shutdown) => break,
        };
        let service = TowerToHyperService::new(app.clone());
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_TIMEOUT)
            .max_buf_size(MAX_REQUEST_BYTES.max(8192))
            .serve_connection(TokioIo::new(stream), service);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP API connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_whole() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"x"));
    }

    #[test]
    fn token_comes_from_either_header() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer abc".parse().unwrap());
        assert_eq!(presented_token(&h), Some(&b"abc"[..]));
        let mut h = HeaderMap::new();
        h.insert(TOKEN_HEADER, "abc".parse().unwrap());
        assert_eq!(presented_token(&h), Some(&b"abc"[..]));
        assert_eq!(presented_token(&HeaderMap::new()), None);
    }

    #[test]
    fn readiness_needs_attach_and_identity() {
        let r = Readiness::default();
        assert!(r.check().is_err());
        r.set_attached();
        assert!(r.check().unwrap_err().contains("identity"));
        r.set_identity(None);
        assert!(r.check().is_ok());
    }
}
