//! Builds the synthetic input of the recommend/audit benchmark: a flowpol database written
//! through the store API and the matching cluster state (manifests), then exits. The
//! commands themselves are timed by `scripts/bench-recommend.sh` (wall time and peak RSS of
//! the release `flowpol recommend` / `flowpol audit`).
//!
//!     cargo run --release -p flowpol --no-default-features --example bench_recommend -- \
//!         --dir /tmp/fp-bench [--rows 10000000] [--distinct 200000] [--workloads 1000]
//!
//! Cluster: 10 namespaces, `--workloads` (default 1 000) Deployments of 10 pods each (10 000 pods with IPs, owned
//! through ReplicaSets), kube-dns in kube-system, one Node. Traffic: each workload calls 5
//! others on 8080/TCP and resolves names through kube-dns (1 in 10 flows); `--distinct`
//! connections (5-tuples), each recorded in `rows / distinct` drain intervals (one stored
//! row per flow per interval, as the agent writes long-lived connections).
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Instant;

use chrono::{Duration, Utc};
use clap::Parser;
use flowpol::store::Store;
use flowpol_recommender::flow::{
    Endpoint, EndpointKind, FlowRecord, Protocol, TcpFlags, Verdict, WorkloadRef,
};

#[derive(Parser)]
struct Args {
    /// Folder for flows.db and cluster.yaml (created).
    #[arg(long)]
    dir: PathBuf,
    /// Stored rows in all.
    #[arg(long, default_value_t = 10_000_000)]
    rows: usize,
    /// Distinct connections (5-tuples) among them.
    #[arg(long, default_value_t = 200_000)]
    distinct: usize,
    /// Deployments (10 pods each): 100 for a 1 000-pod cluster, 1 000 for 10 000 pods.
    #[arg(long, default_value_t = 1_000)]
    workloads: usize,
    /// Rows per write transaction.
    #[arg(long, default_value_t = 100_000)]
    batch: usize,
}

/// Deployments in the cluster (`--workloads`), set once before anything is generated.
static WORKLOADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();

fn workloads() -> usize {
    *WORKLOADS.get().expect("set from --workloads in main")
}

const PODS_PER_WORKLOAD: usize = 10;
const NAMESPACES: usize = 10;

fn pod_ip(w: usize, p: usize) -> Ipv4Addr {
    let n = w * PODS_PER_WORKLOAD + p + 100;
    Ipv4Addr::new(10, 244, (n >> 8) as u8, (n & 255) as u8)
}

fn ns(w: usize) -> String {
    format!("team-{}", w % NAMESPACES)
}

fn cluster_yaml() -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Node\nmetadata: {{name: node-1}}\nstatus:\n  addresses: [{{type: InternalIP, address: 172.18.0.2}}]\n"
    );
    for n in 0..NAMESPACES {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: team-{n}}}\n"
        );
    }
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: kube-system}}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: coredns, namespace: kube-system}}\nspec:\n  selector: {{matchLabels: {{k8s-app: kube-dns}}}}\n  template:\n    metadata: {{labels: {{k8s-app: kube-dns}}}}\n    spec: {{containers: [{{name: dns, ports: [{{containerPort: 53, protocol: UDP}}, {{containerPort: 53, protocol: TCP}}]}}]}}\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: coredns-5d8f9c7b6-aaaaa\n  namespace: kube-system\n  labels: {{k8s-app: kube-dns, pod-template-hash: 5d8f9c7b6}}\n  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: coredns-5d8f9c7b6, uid: rs-dns, controller: true}}]\nspec: {{containers: [{{name: dns}}]}}\nstatus: {{podIP: 10.244.0.10}}\n"
    );
    for w in 0..workloads() {
        let ns = ns(w);
        let _ = write!(
            out,
            "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: app-{w}, namespace: {ns}}}\nspec:\n  selector: {{matchLabels: {{app: app-{w}}}}}\n  template:\n    metadata: {{labels: {{app: app-{w}, tier: t{}}}}}\n    spec: {{containers: [{{name: main, ports: [{{name: http, containerPort: 8080}}]}}]}}\n",
            w % 3
        );
        for p in 0..PODS_PER_WORKLOAD {
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app-{w}-5d8f9c7b6-{p:05}\n  namespace: {ns}\n  labels: {{app: app-{w}, tier: t{}, pod-template-hash: 5d8f9c7b6}}\n  ownerReferences: [{{apiVersion: apps/v1, kind: ReplicaSet, name: app-{w}-5d8f9c7b6, uid: rs-{w}, controller: true}}]\nspec: {{containers: [{{name: main, ports: [{{name: http, containerPort: 8080}}]}}]}}\nstatus: {{podIP: {}}}\n",
                w % 3,
                pod_ip(w, p)
            );
        }
    }
    out
}

fn end(w: usize, p: usize, port: u16) -> Endpoint {
    let mut e = Endpoint::new(IpAddr::V4(pod_ip(w, p)), port);
    e.kind = Some(EndpointKind::Pod);
    e.namespace = Some(ns(w));
    e.pod = Some(format!("app-{w}-5d8f9c7b6-{p:05}"));
    e.workload = Some(WorkloadRef {
        kind: "Deployment".into(),
        name: format!("app-{w}"),
    });
    e.labels = BTreeMap::from([
        ("app".to_string(), format!("app-{w}")),
        ("tier".to_string(), format!("t{}", w % 3)),
    ]);
    e
}

fn dns_end() -> Endpoint {
    let mut e = Endpoint::new("10.244.0.10".parse().unwrap(), 53);
    e.kind = Some(EndpointKind::Pod);
    e.namespace = Some("kube-system".into());
    e.pod = Some("coredns-5d8f9c7b6-aaaaa".into());
    e.workload = Some(WorkloadRef {
        kind: "Deployment".into(),
        name: "coredns".into(),
    });
    e.labels = BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]);
    e
}

/// The k-th distinct connection.
fn connection(k: usize) -> FlowRecord {
    let a = k % workloads();
    let round = k / workloads();
    let src_pod = round % PODS_PER_WORKLOAD;
    let src_port = 10_000 + (round % 50_000) as u16;
    let (dst, protocol) = if k % 10 == 9 {
        (dns_end(), Protocol::Udp)
    } else {
        let b = (a * 7 + round % 5 + 1) % workloads();
        (end(b, (round / 3) % PODS_PER_WORKLOAD, 8080), Protocol::Tcp)
    };
    FlowRecord {
        src: end(a, src_pod, src_port),
        dst,
        protocol,
        packets: 6,
        bytes: 900,
        reply_packets: 4,
        reply_bytes: 2_000,
        first_seen: Utc::now(),
        last_seen: Utc::now(),
        verdict: Verdict::Forwarded,
        drop_reason: None,
        tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::SYN_ACK),
        connections: 0,
        cgroup_id: None,
        node: Some("node-1".into()),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.workloads == 0 || args.workloads * PODS_PER_WORKLOAD > 60_000 {
        anyhow::bail!(
            "--workloads {}: want 1 to 6 000 (10 pods each, pod IPs in 10.244.0.0/16)",
            args.workloads
        );
    }
    WORKLOADS.set(args.workloads).expect("set once");
    std::fs::create_dir_all(&args.dir)?;
    std::fs::write(args.dir.join("cluster.yaml"), cluster_yaml())?;
    let db = args.dir.join("flows.db");
    if db.exists() {
        eprintln!("{} exists; remove it to regenerate", db.display());
        return Ok(());
    }
    let store = Store::open(&db).await?;
    let intervals = args.rows.div_ceil(args.distinct);
    let base = Utc::now() - Duration::seconds(5 * intervals as i64 + 60);
    let started = Instant::now();
    let connections: Vec<FlowRecord> = (0..args.distinct).map(connection).collect();
    let mut written = 0usize;
    let mut batch = Vec::with_capacity(args.batch);
    'outer: for i in 0..intervals {
        let at = base + Duration::seconds(5 * i as i64);
        for c in &connections {
            if written == args.rows {
                break 'outer;
            }
            let mut f = c.clone();
            f.first_seen = at;
            f.last_seen = at + Duration::seconds(4);
            batch.push(f);
            written += 1;
            if batch.len() == args.batch {
                store.write_flows(&batch).await?;
                batch.clear();
            }
        }
    }
    if !batch.is_empty() {
        store.write_flows(&batch).await?;
    }
    store.close().await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "wrote {written} rows ({} distinct connections x {intervals} intervals) in {secs:.1} s ({:.0} rows/s); cluster: {} pods, {} workloads",
        args.distinct,
        written as f64 / secs,
        workloads() * PODS_PER_WORKLOAD + 1,
        workloads() + 1
    );
    Ok(())
}
