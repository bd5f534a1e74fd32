//! API benchmark: flows/s served and latency of `/api/v1/flows` while a
//! synthetic recorder writes ~10 000 flows/s into the store (the agent's write
//! path: one transaction per drain, metrics, follow broadcast; no eBPF), plus
//! a follow client; then the process's RSS with 100 000 flows in one drain
//! (records in memory, written, published). See BENCHMARKS.md.
//!
//! cargo run --release -p flowpol --no-default-features --example bench_api -- [--seconds N] [--clients N]
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use flowpol::serve::{ApiState, Metrics, Readiness, Server};
use flowpol::store::Store;
use flowpol_recommender::flow::{Endpoint, EndpointKind, FlowRecord, Protocol, TcpFlags, Verdict};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const TOKEN: &str = "bench-token";

fn flow(i: u64) -> FlowRecord {
    let ns = ["shop", "tools", "billing", "web"][(i % 4) as usize];
    let app = format!("app{}", i % 50);
    let mut src = Endpoint::new(
        std::net::Ipv4Addr::from(0x0af4_0000u32 + (i % 5000) as u32).into(),
        (30000 + i % 30000) as u16,
    );
    src.kind = Some(EndpointKind::Pod);
    src.namespace = Some(ns.into());
    src.workload = Some(format!("Deployment/{app}").parse().unwrap());
    src.pod = Some(format!("{app}-5d8f9c7b6-x{}", i % 7));
    src.labels.insert("app".into(), app.clone());
    let mut dst = Endpoint::new(
        std::net::Ipv4Addr::from(0x0af5_0000u32 + (i % 300) as u32).into(),
        8080,
    );
    dst.kind = Some(EndpointKind::Pod);
    dst.namespace = Some("shop".into());
    dst.workload = Some("Deployment/api".parse().unwrap());
    dst.labels.insert("app".into(), "api".into());
    let now = Utc::now();
    FlowRecord {
        src,
        dst,
        protocol: Protocol::Tcp,
        packets: 10,
        bytes: 1500,
        reply_packets: 8,
        reply_bytes: 9000,
        first_seen: now,
        last_seen: now,
        verdict: if i.is_multiple_of(97) {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        },
        drop_reason: i.is_multiple_of(97).then(|| "NETFILTER_DROP".to_string()),
        tcp_flags: TcpFlags(0x13),
        connections: 0,
        cgroup_id: Some(1000 + i % 100),
        node: None,
    }
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .map(|v| v.trim().trim_end_matches(" kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

async fn get(addr: SocketAddr, path: &str) -> (u16, Bytes) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", "bench")
        .header("authorization", format!("Bearer {TOKEN}"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    (status, res.into_body().collect().await.unwrap().to_bytes())
}

fn main() {
    let mut seconds = 20u64;
    let mut clients = 2usize;
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--seconds" => seconds = w[1].parse().unwrap(),
            "--clients" => clients = w[1].parse().unwrap(),
            _ => {}
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        let writer = Store::open(&path).await.unwrap();
        // Some history to query: 200 000 rows.
        for b in 0..20u64 {
            let batch: Vec<FlowRecord> = (0..10_000).map(|i| flow(b * 10_000 + i)).collect();
            writer.write_flows(&batch).await.unwrap();
        }
        let (live, _) = tokio::sync::broadcast::channel(flowpol::serve::LIVE_BATCHES);
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let metrics = Arc::new(Metrics::new());
        let state = ApiState {
            store: Some(Store::open_read_only(&path).await.unwrap()),
            token: TOKEN.into(),
            readiness: Arc::new(Readiness::default()),
            metrics: metrics.clone(),
            live: live.clone(),
            shutdown,
        };
        let server = Server::start("127.0.0.1:0".parse().unwrap(), state, stop).await.unwrap();
        let addr = server.addr;
        let running = Arc::new(AtomicBool::new(true));

        // Recorder: 1 000 flows every 100 ms (10 000/s), as the drain loop writes.
        let recorded = Arc::new(AtomicU64::new(0));
        let rec = {
            let (running, recorded, metrics, live) =
                (running.clone(), recorded.clone(), metrics.clone(), live.clone());
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                let mut i = 1_000_000u64;
                let mut late = 0u32;
                while running.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let batch: Vec<FlowRecord> = (0..1_000).map(|k| flow(i + k)).collect();
                    i += 1_000;
                    let t = Instant::now();
                    writer.write_drain(&batch, &[], Utc::now(), None).await.unwrap();
                    if t.elapsed() > Duration::from_millis(100) {
                        late += 1;
                    }
                    metrics.record_batch(&batch, &[]);
                    let _ = live.send(Arc::new(batch));
                    recorded.fetch_add(1_000, Ordering::Relaxed);
                }
                late
            })
        };

        // Follow client: counts streamed flows.
        let followed = Arc::new(AtomicU64::new(0));
        {
            let followed = followed.clone();
            tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
                tokio::spawn(conn);
                let req = hyper::Request::get("/api/v1/flows?follow=true")
                    .header("host", "bench")
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let mut body = sender.send_request(req).await.unwrap().into_body();
                while let Some(Ok(frame)) = body.frame().await {
                    if let Ok(d) = frame.into_data() {
                        followed.fetch_add(d.iter().filter(|b| **b == b'\n').count() as u64, Ordering::Relaxed);
                    }
                }
            });
        }

        // Query clients: pages of 1 000 rows over the last minute, and merged
        // views of one namespace, alternately.
        let started = Instant::now();
        let mut tasks = Vec::new();
        for c in 0..clients {
            let running = running.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut served = 0u64;
                let mut n = 0u64;
                while running.load(Ordering::Relaxed) {
                    let path = if (n + c as u64).is_multiple_of(2) {
                        "/api/v1/flows?since=1m&limit=1000".to_string()
                    } else {
                        "/api/v1/flows?namespace=tools&selector=app%3Dapp1&merged=true&limit=1000".to_string()
                    };
                    let t = Instant::now();
                    let (status, body) = get(addr, &path).await;
                    lat.push(t.elapsed());
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
                    let page: serde_json::Value = serde_json::from_slice(&body).unwrap();
                    served += page["flows"].as_array().unwrap().len() as u64;
                    n += 1;
                }
                (lat, served)
            }));
        }
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        running.store(false, Ordering::Relaxed);
        let mut lat = Vec::new();
        let mut served = 0;
        for t in tasks {
            let (l, s) = t.await.unwrap();
            lat.extend(l);
            served += s;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let late = rec.await.unwrap();
        lat.sort();
        let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
        println!("recorded {:.0} flows/s ({} drain writes over 100 ms)", recorded.load(Ordering::Relaxed) as f64 / elapsed, late);
        println!(
            "served {:.0} flows/s in {} requests ({:.0} req/s, {clients} clients): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            served as f64 / elapsed,
            lat.len(),
            lat.len() as f64 / elapsed,
            pct(0.5).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            lat.last().unwrap().as_secs_f64() * 1e3
        );
        println!("follow client received {:.0} flows/s", followed.load(Ordering::Relaxed) as f64 / elapsed);

        // Memory with 100 000 flows in one drain going through the pipeline.
        let batch: Vec<FlowRecord> = (0..100_000).map(|i| flow(5_000_000 + i)).collect();
        let writer2 = Store::open(&path).await.unwrap();
        writer2.write_drain(&batch, &[], Utc::now(), None).await.unwrap();
        metrics.record_batch(&batch, &[]);
        let _ = live.send(Arc::new(batch));
        println!(
            "RSS with 100 000 flows in one drain: {} KiB now, {} KiB peak (VmHWM)",
            rss_kib("VmRSS:"),
            rss_kib("VmHWM:")
        );
        server.shutdown().await;
    });
}
