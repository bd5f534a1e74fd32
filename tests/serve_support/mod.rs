//! Shared by the serve tests: a tiny HTTP/1.1 client (hyper), flow records,
//! and agents serving stores filled through the Store API.
#![allow(dead_code)]

pub mod kube_proxy;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use flowpol::serve::{ApiState, Metrics, Readiness, Server};
use flowpol::store::Store;
use flowpol_recommender::flow::{Endpoint, EndpointKind, FlowRecord, Protocol, TcpFlags, Verdict};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

pub const TOKEN: &str = "s3cret-token-for-tests";

pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

async fn send(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> hyper::Response<Incoming> {
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the agent API");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP handshake");
    tokio::spawn(conn);
    let mut req = hyper::Request::get(path).header("host", addr.to_string());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    sender
        .send_request(req.body(Empty::<Bytes>::new()).unwrap())
        .await
        .expect("HTTP request")
}

/// GET `path`; `token` as a bearer token when given.
pub async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Answer {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("authorization", a)])
        .unwrap_or_default();
    get_with(addr, path, &headers).await
}

pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    let res = send(addr, path, headers).await;
    let status = res.status().as_u16();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

/// A follow stream: yields complete lines.
pub struct Lines {
    body: Incoming,
    buf: Vec<u8>,
}

impl Lines {
    pub async fn next(&mut self) -> Option<String> {
        loop {
            if let Some(i) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=i).collect();
                return Some(String::from_utf8(line).unwrap().trim_end().to_string());
            }
            let frame = self.body.frame().await?.ok()?;
            if let Ok(data) = frame.into_data() {
                self.buf.extend_from_slice(&data);
            }
        }
    }
}

/// GET a streaming `path`; returns the status and the line reader.
pub async fn stream(addr: SocketAddr, path: &str, token: &str) -> (u16, Lines) {
    let auth = format!("Bearer {token}");
    let res = send(addr, path, &[("authorization", &auth)]).await;
    let status = res.status().as_u16();
    (
        status,
        Lines {
            body: res.into_body(),
            buf: Vec::new(),
        },
    )
}

pub fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A TCP flow between two pods (`ns/app` each, labels `app=<app>`).
pub fn pod_flow(
    src: (&str, &str, &str),
    dst: (&str, &str, &str),
    port: u16,
    seen: DateTime<Utc>,
    verdict: Verdict,
) -> FlowRecord {
    let end = |(ip, ns, app): (&str, &str, &str), p: u16| {
        let mut e = Endpoint::new(ip.parse().unwrap(), p);
        e.kind = Some(EndpointKind::Pod);
        e.namespace = Some(ns.into());
        e.pod = Some(format!("{app}-5d8f9c7b6-abcde"));
        e.workload = Some(format!("Deployment/{app}").parse().unwrap());
        e.labels.insert("app".into(), app.into());
        e
    };
    FlowRecord {
        src: end(src, 40000),
        dst: end(dst, port),
        protocol: Protocol::Tcp,
        packets: 4,
        bytes: 400,
        reply_packets: 3,
        reply_bytes: 300,
        first_seen: seen,
        last_seen: seen,
        verdict,
        drop_reason: (verdict == Verdict::Dropped).then(|| "NETFILTER_DROP".to_string()),
        tcp_flags: TcpFlags(1),
        connections: 0,
        cgroup_id: None,
        node: None,
    }
}

/// An agent's API over a store on disk (no capture): what `flowpol agent
/// --listen` serves, with the drain loop replaced by direct writes.
pub struct TestAgent {
    pub server: Option<Server>,
    pub addr: SocketAddr,
    pub writer: Store,
    pub state: ApiState,
    pub dir: tempfile::TempDir,
}

impl TestAgent {
    pub async fn start(flows: &[FlowRecord]) -> TestAgent {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        let writer = Store::open(&path).await.unwrap();
        if !flows.is_empty() {
            writer.write_flows(flows).await.unwrap();
        }
        let readonly = Store::open_read_only(&path).await.unwrap();
        let (live, _) = tokio::sync::broadcast::channel(flowpol::serve::LIVE_BATCHES);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let state = ApiState {
            store: Some(readonly),
            token: TOKEN.into(),
            readiness: Arc::new(Readiness::default()),
            metrics: Arc::new(Metrics::new()),
            live,
            shutdown,
        };
        let server = Server::start("127.0.0.1:0".parse().unwrap(), state.clone(), stop)
            .await
            .unwrap();
        TestAgent {
            addr: server.addr,
            server: Some(server),
            writer,
            state,
            dir,
        }
    }

    /// What the agent's sinks do with a drained batch: store, count, publish.
    pub async fn record(&self, flows: &[FlowRecord]) {
        self.writer.write_flows(flows).await.unwrap();
        self.state.metrics.record_batch(flows, &[]);
        let _ = self.state.live.send(Arc::new(flows.to_vec()));
    }

    pub async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// An agent restart: the server stops (open follow streams end) and serves
    /// again on the same address.
    #[allow(dead_code)] // not every test binary that shares this module restarts
    pub async fn restart(&mut self) {
        self.stop().await;
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        self.state.shutdown = shutdown;
        let server = Server::start(self.addr, self.state.clone(), stop)
            .await
            .unwrap();
        self.server = Some(server);
    }
}
