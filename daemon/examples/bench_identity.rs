//! Identity lookup benchmark: 10 000 live pods on 10 000 IPs, each IP reused 10 times over
//! its history (100 000 IP intervals, plus one pod-UID interval per pod generation), then
//! flows at random past times resolved through the `Enricher` (both ends).
//!
//! `cargo run --release -p flowpol --no-default-features --example bench_identity`
//! Options: `--pods N` (default 10000), `--generations G` (default 10), `--flows F` (default
//! 1000000), `--db PATH` (also write the time line to SQLite and read it back, timed).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use flowpol::enrich::persist::IdentityDb;
use flowpol::enrich::state::{Object, ObjectKind, Stamped, StateUpdate};
use flowpol::enrich::timeline::Key;
use flowpol::enrich::{Enricher, Identity};
use flowpol_recommender::flow::{Endpoint, FlowRecord, Protocol, TcpFlags, Verdict};
use serde_json::json;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn ip_of(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 2) as u8))
}

fn t(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(1_760_000_000_000 + ms).unwrap()
}

struct XorShift(u64);
impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn pod(i: usize, generation: usize) -> Object {
    let app = format!("app-{}", i % 100);
    let v = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("{app}-5d8f9c7b6-{i}-{generation}"), "namespace": format!("ns-{}", i % 20),
                     "uid": format!("{:08x}-0000-4000-8000-{:012x}", generation, i),
                     "labels": {"app": app, "tier": "backend", "pod-template-hash": "5d8f9c7b6"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": format!("{app}-5d8f9c7b6"), "uid": "rs", "controller": true}]},
        "spec": {"nodeName": format!("node-{}", i % 50), "containers": [{"name": "c", "image": "img"}]},
        "status": {"phase": "Running", "podIP": ip_of(i).to_string(), "podIPs": [{"ip": ip_of(i).to_string()}]}});
    Object::from_json(ObjectKind::Pod, v).expect("benchmark pod")
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("a number"))
        .unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let pods = arg("--pods", 10_000);
    let generations = arg("--generations", 10);
    let flows = arg("--flows", 1_000_000);
    let db_path = std::env::args()
        .collect::<Vec<_>>()
        .windows(2)
        .find(|w| w[0] == "--db")
        .map(|w| std::path::PathBuf::from(&w[1]));

    let rss0 = rss_kib();
    let id = Identity::new();
    let build = Instant::now();
    let mut changes = Vec::new();
    // Each generation lives 10 s; the next takes the IP 1 s after the previous one is deleted.
    for g in 0..generations {
        let born = (g as i64) * 11_000;
        if g == 0 {
            for kind in ObjectKind::ALL {
                let objects = if kind == ObjectKind::Pod {
                    (0..pods).map(|i| pod(i, 0)).collect()
                } else {
                    vec![]
                };
                changes.extend(id.apply(Stamped {
                    at: t(born),
                    update: StateUpdate::Resync {
                        kind,
                        objects,
                        invalid: vec![],
                    },
                }));
            }
        } else {
            for i in 0..pods {
                changes.extend(id.apply(Stamped {
                    at: t(born - 1_000),
                    update: StateUpdate::Delete(pod(i, g - 1)),
                }));
                changes.extend(id.apply(Stamped {
                    at: t(born),
                    update: StateUpdate::Apply(pod(i, g)),
                }));
            }
        }
    }
    let build_s = build.elapsed().as_secs_f64();
    let (rows, keys) = id.size();
    if let Some(path) = &db_path {
        let _ = std::fs::remove_file(path);
        let db = IdentityDb::open(path).await.expect("open the benchmark db");
        let w = Instant::now();
        db.write(&changes).await.expect("write the time line");
        let write_s = w.elapsed().as_secs_f64();
        let r = Instant::now();
        let tl = db.load(0).await.expect("load the time line");
        println!(
            "sqlite: wrote {} changes in one transaction in {write_s:.2} s; loaded {} intervals in {:.2} s",
            changes.len(),
            tl.len(),
            r.elapsed().as_secs_f64()
        );
    }
    drop(changes);
    // Give freed parse buffers back to the OS so RSS shows what the index keeps.
    // SAFETY: malloc_trim only releases free heap memory; no pointers are invalidated.
    unsafe {
        libc::malloc_trim(0);
    }
    let rss1 = rss_kib();
    println!(
        "built: {} live pods, {} pod generations, {rows} intervals ({} IP intervals) on {keys} keys in {build_s:.2} s",
        id.pod_count(),
        pods * generations,
        pods * generations,
    );
    println!(
        "memory: RSS {} MiB -> {} MiB (+{} MiB for the identity index and live objects)",
        rss0 / 1024,
        rss1 / 1024,
        rss1.saturating_sub(rss0) / 1024
    );

    // Flows between two random pod IPs at random times within the history, enriched in
    // drain-sized batches of 10 000 (re-enriching a batch clears its identity fields first).
    let span = (generations as i64) * 11_000;
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let batch_len = flows.min(10_000);
    let mut batch: Vec<FlowRecord> = (0..batch_len)
        .map(|_| {
            let a = ip_of(rng.next() as usize % pods);
            let b = ip_of(rng.next() as usize % pods);
            let at = t((rng.next() % span as u64) as i64);
            FlowRecord {
                src: Endpoint::new(a, 40000),
                dst: Endpoint::new(b, 8080),
                protocol: Protocol::Tcp,
                packets: 1,
                bytes: 60,
                reply_packets: 1,
                reply_bytes: 60,
                first_seen: at,
                last_seen: at,
                verdict: Verdict::Forwarded,
                drop_reason: None,
                tcp_flags: TcpFlags(TcpFlags::SYN),
                connections: 0,
                cgroup_id: None,
                node: None,
            }
        })
        .collect();
    let enricher = Enricher::new(Arc::clone(&id), None);
    let rounds = flows.div_ceil(batch_len);
    let start = Instant::now();
    for _ in 0..rounds {
        enricher.enrich(&mut batch);
    }
    let secs = start.elapsed().as_secs_f64();
    let total = rounds * batch_len;
    let resolved = batch
        .iter()
        .filter(|f| f.src.pod.is_some() && f.dst.pod.is_some())
        .count();
    println!(
        "enrich: {total} flows ({} endpoint lookups) in {secs:.3} s = {:.0} flows/s, {:.0} endpoint lookups/s; {resolved}/{batch_len} flows of the batch with both ends resolved to a pod",
        total * 2,
        total as f64 / secs,
        (total * 2) as f64 / secs
    );
    // The bare time line lookup (no copying into the record).
    let keys: Vec<(Key, DateTime<Utc>)> = batch
        .iter()
        .map(|f| (Key::Ip(f.dst.ip), f.first_seen))
        .collect();
    let start = Instant::now();
    let mut found = 0usize;
    for _ in 0..rounds {
        for (k, at) in &keys {
            found += usize::from(id.owner_at(k, *at).is_some());
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "owner_at: {total} time line lookups in {secs:.3} s = {:.0} lookups/s ({found} found)",
        total as f64 / secs
    );
    println!("memory after enrich: RSS {} MiB", rss_kib() / 1024);
}
