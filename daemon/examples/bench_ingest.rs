//! SQLite ingest benchmark: how many flow rows per second `Store::write_drain`
//! stores, one transaction per drain interval, on a fresh database file.
//!
//!     cargo run --release -p flowpol --no-default-features --example bench_ingest -- \
//!         [--rows 1000000] [--batch 10000] [--dir /tmp]
//!
//! Records are generated before the clock starts: ~70 % pod-to-pod flows with
//! full identity (namespace, pod, workload, 2 labels, a Service on the
//! destination) among 600 pods (200 workloads x 3 replicas), ~30 % to
//! external addresses without identity; 1 in 8 IPv6.
//! Then times a merged query over everything and retention down to half size.
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Instant;

use chrono::{Duration, Utc};
use clap::Parser;
use flowpol::store::{FlowQuery, Retention, Store};
use flowpol_recommender::flow::{
    Endpoint, EndpointKind, FlowRecord, Protocol, TcpFlags, Verdict, WorkloadRef,
};

#[derive(Parser)]
struct Args {
    /// Rows to write in total.
    #[arg(long, default_value_t = 1_000_000)]
    rows: usize,
    /// Rows per drain interval (one transaction each).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Folder for the temporary database.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Measure ingest only (skip the query and retention timings).
    #[arg(long)]
    ingest_only: bool,
}

/// User + system CPU time of this process so far.
fn cpu_time() -> std::time::Duration {
    // SAFETY: getrusage fills the struct we pass; RUSAGE_SELF is always valid.
    let usage = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut u);
        u
    };
    let tv = |t: libc::timeval| {
        std::time::Duration::from_secs(t.tv_sec as u64)
            + std::time::Duration::from_micros(t.tv_usec as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn pod_end(rng: &mut Rng, v6: bool, port: u16) -> Endpoint {
    let w = rng.below(200);
    let ns = format!("team-{}", w % 20);
    let ip = if v6 {
        IpAddr::V6(Ipv6Addr::new(
            0xfd00,
            0x10,
            0,
            0,
            0,
            0,
            (w >> 8) as u16,
            w as u16,
        ))
    } else {
        IpAddr::V4(Ipv4Addr::new(10, 244, (w / 250) as u8, (w % 250) as u8 + 2))
    };
    let mut e = Endpoint::new(ip, port);
    e.kind = Some(EndpointKind::Pod);
    e.namespace = Some(ns);
    e.workload = Some(WorkloadRef {
        kind: "Deployment".into(),
        name: format!("svc-{w}"),
    });
    // Three replicas per workload: 200 workloads are 600 pods on the node.
    e.pod = Some(format!("svc-{w}-6d8f9c7b5-{:05x}", rng.below(3)));
    e.labels = BTreeMap::from([
        ("app".to_string(), format!("svc-{w}")),
        (
            "tier".to_string(),
            ["web", "api", "db"][(w % 3) as usize].to_string(),
        ),
    ]);
    e
}

fn record(rng: &mut Rng, i: usize) -> FlowRecord {
    let now = Utc::now();
    let v6 = rng.below(8) == 0;
    let sport = 32768 + rng.below(28000) as u16;
    let src = pod_end(rng, v6, sport);
    let external = rng.below(10) < 3;
    let dst = if external {
        let (c, d) = (rng.below(256) as u8, rng.below(256) as u8);
        Endpoint::new(IpAddr::V4(Ipv4Addr::new(93, 184, c, d)), 443)
    } else {
        let mut d = pod_end(rng, v6, 8080);
        d.service = d.workload.as_ref().map(|w| format!("team-x/{}", w.name));
        d.service_port = Some(80);
        d
    };
    let dropped = rng.below(50) == 0;
    let first = now - Duration::milliseconds((i % 5000) as i64);
    FlowRecord {
        src,
        dst,
        protocol: if rng.below(5) == 0 {
            Protocol::Udp
        } else {
            Protocol::Tcp
        },
        packets: 1 + rng.below(100),
        bytes: 60 + rng.below(100_000),
        reply_packets: rng.below(100),
        reply_bytes: rng.below(1_000_000),
        first_seen: first,
        last_seen: first + Duration::milliseconds(rng.below(5000) as i64),
        verdict: if dropped {
            Verdict::Dropped
        } else {
            Verdict::Forwarded
        },
        drop_reason: dropped.then(|| "NETFILTER_DROP".to_string()),
        tcp_flags: TcpFlags(rng.below(16) as u8),
        connections: 0,
        cgroup_id: Some(4000 + rng.below(300)),
        node: Some("node-a".into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let dir = tempfile::Builder::new()
        .prefix("flowpol-bench-ingest-")
        .tempdir_in(args.dir.clone().unwrap_or_else(std::env::temp_dir))?;
    let path = dir.path().join("flows.db");
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let records: Vec<FlowRecord> = (0..args.rows).map(|i| record(&mut rng, i)).collect();

    let store = Store::open(&path).await?;
    let start = Instant::now();
    let cpu_start = cpu_time();
    let mut slowest = std::time::Duration::ZERO;
    for batch in records.chunks(args.batch.max(1)) {
        let t = Instant::now();
        store
            .write_drain(batch, &[], Utc::now(), Some("node-a"))
            .await?;
        slowest = slowest.max(t.elapsed());
    }
    let elapsed = start.elapsed();
    let cpu = cpu_time() - cpu_start;
    let rows_per_s = args.rows as f64 / elapsed.as_secs_f64();
    let used = store.used_bytes().await?;
    println!(
        "ingest: {} rows in {:.2} s = {:.0} rows/s ({} rows per transaction, slowest transaction {:.1} ms)",
        args.rows,
        elapsed.as_secs_f64(),
        rows_per_s,
        args.batch,
        slowest.as_secs_f64() * 1e3
    );
    println!(
        "ingest CPU: {:.2} s (user+sys, all threads) = {:.0} rows per CPU-second",
        cpu.as_secs_f64(),
        args.rows as f64 / cpu.as_secs_f64()
    );
    println!(
        "size: {:.1} MiB used, {:.0} bytes per row",
        used as f64 / 1048576.0,
        used as f64 / args.rows.max(1) as f64
    );

    if args.ingest_only {
        store.close().await;
        return Ok(());
    }
    // Queries as `flowpol flows` makes them: through a read-only store.
    let reader = Store::open_read_only(&path).await?;
    let t = Instant::now();
    let merged = reader.query_flows_merged(&FlowQuery::default()).await?;
    println!(
        "merged query: {} flows from {} rows in {:.2} s",
        merged.len(),
        args.rows,
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let page = reader
        .query_flow_page(&FlowQuery {
            namespace: Some("team-3".into()),
            since: Some(Utc::now() - Duration::minutes(30)),
            limit: Some(1000),
            ..Default::default()
        })
        .await?;
    println!(
        "filtered page (namespace + since, limit 1000): {} rows in {:.1} ms",
        page.flows.len(),
        t.elapsed().as_secs_f64() * 1e3
    );
    reader.close().await;
    let t = Instant::now();
    let report = store
        .prune(
            &Retention {
                max_age: None,
                max_size_bytes: Some(used / 2),
            },
            Utc::now(),
        )
        .await?;
    println!(
        "retention to half size: {} rows deleted in {:.2} s ({:.0} rows/s), {:.1} MiB used after",
        report.rows_deleted_by_size,
        t.elapsed().as_secs_f64(),
        report.rows_deleted_by_size as f64 / t.elapsed().as_secs_f64(),
        report.used_bytes as f64 / 1048576.0
    );
    store.close().await;
    Ok(())
}
