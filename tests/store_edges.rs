//! `Store::query_edges` against `query_flows_merged` on real SQLite files: the per-edge
//! aggregate must hold exactly what the merged flows, summed by hand per edge, hold, and the
//! recommender must observe the same edges from either.
#[path = "store_support/mod.rs"]
mod support;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;

use chrono::Duration;
use flowpol::store::{EdgeQuery, FlowQuery, Store};
use flowpol_recommender::flow::{Endpoint, EndpointKind, FlowRecord, Protocol, TcpFlags, Verdict};
use flowpol_recommender::model::{Cluster, NodeInfo};
use flowpol_recommender::observe::{observe, observe_counted};
use support::{bare, t};

/// A pod of `workload` whose name follows its address, so every pod is its own identity.
fn pod(ip: &str, port: u16, ns: &str, workload: &str) -> Endpoint {
    let mut e = support::pod(ip, port, ns, workload);
    e.pod = Some(format!("{workload}-7d4b9c-{}", ip.replace(['.', ':'], "-")));
    e
}

const NODE_IP: &str = "192.168.1.10";

/// A mix the recommender sees: several pods per workload on ephemeral ports over several
/// intervals, DNS, an outside address, a node (kubelet), a hostNetwork pod at the node
/// address, ICMP echo and unreachable, drops with two reasons, unanswered SYNs, a flow
/// without identity at all.
fn history() -> Vec<Vec<FlowRecord>> {
    let base = t("2026-11-21T10:00:00Z");
    let mut connections = Vec::new();
    for p in 0..4u16 {
        for c in 0..3u16 {
            let mut f = bare("0.0.0.0", 0, "0.0.0.0", 0, base);
            f.protocol = Protocol::Tcp;
            f.src = pod(
                &format!("10.244.1.{}", 10 + p),
                40000 + c,
                "web",
                "frontend",
            );
            f.dst = pod(&format!("10.244.2.{}", 20 + c), 8080, "shop", "api");
            f.connections = u64::from(1 + c);
            connections.push(f);
        }
        let mut dns = bare("0.0.0.0", 0, "10.96.0.10", 53, base);
        dns.src = pod(
            &format!("10.244.1.{}", 10 + p),
            50000 + p,
            "web",
            "frontend",
        );
        dns.dst = pod("10.244.0.5", 53, "kube-system", "coredns");
        connections.push(dns);
    }
    let mut out = bare("0.0.0.0", 0, "93.184.216.34", 443, base);
    out.protocol = Protocol::Tcp;
    out.src = pod("10.244.2.20", 41000, "shop", "api");
    out.dst.kind = Some(EndpointKind::External);
    connections.push(out.clone());
    out.dst.ip = "93.184.216.35".parse().unwrap();
    connections.push(out);
    let mut probe = bare(NODE_IP, 33000, "0.0.0.0", 8080, base);
    probe.protocol = Protocol::Tcp;
    probe.src.kind = Some(EndpointKind::Node);
    probe.dst = pod("10.244.2.21", 8080, "shop", "api");
    connections.push(probe);
    let mut host = bare("0.0.0.0", 34000, "0.0.0.0", 9100, base);
    host.protocol = Protocol::Tcp;
    host.src = pod("10.244.1.10", 34000, "web", "frontend");
    host.dst = pod(NODE_IP, 9100, "monitoring", "node-exporter");
    connections.push(host);
    for (ty, code) in [(8u16, 0u16), (3, 1)] {
        let mut icmp = bare("0.0.0.0", ty, "0.0.0.0", code, base);
        icmp.protocol = Protocol::Icmp;
        icmp.src = pod("10.244.1.11", ty, "web", "frontend");
        icmp.dst = pod("10.244.2.22", code, "shop", "api");
        connections.push(icmp);
    }
    for (i, reason) in ["NETFILTER_DROP", "NETFILTER_DROP", "TCP_RESET"]
        .iter()
        .enumerate()
    {
        let mut d = bare("0.0.0.0", 0, "0.0.0.0", 5432, base);
        d.protocol = Protocol::Tcp;
        d.src = pod(
            &format!("10.244.1.{}", 12 + i),
            45000 + i as u16,
            "web",
            "frontend",
        );
        d.dst = pod("10.244.3.5", 5432, "db", "postgres");
        d.verdict = Verdict::Dropped;
        d.drop_reason = Some(reason.to_string());
        connections.push(d);
    }
    let mut syn = bare("0.0.0.0", 0, "0.0.0.0", 6379, base);
    syn.protocol = Protocol::Tcp;
    syn.src = pod("10.244.2.20", 46000, "shop", "api");
    syn.dst = pod("10.244.3.9", 6379, "db", "redis");
    syn.verdict = Verdict::Unanswered;
    connections.push(syn.clone());
    syn.src = pod("10.244.2.21", 46001, "shop", "api");
    connections.push(syn);
    connections.push(bare("10.0.0.1", 5000, "10.0.0.2", 6000, base));
    // A client's connections to one port, aggregated by the kernel: 7 per interval.
    let mut aggregated = bare("0.0.0.0", 0, "0.0.0.0", 9090, base);
    aggregated.protocol = Protocol::Tcp;
    aggregated.src = pod("10.244.1.10", 0, "web", "frontend");
    aggregated.dst = pod("10.244.2.20", 9090, "shop", "api");
    aggregated.connections = 7;
    connections.push(aggregated);

    // Three drain intervals; each flow in the intervals it lived through.
    (0..3i64)
        .map(|interval| {
            connections
                .iter()
                .enumerate()
                .filter(|(i, _)| (*i as i64 + interval) % 4 != 0)
                .map(|(i, f)| {
                    let mut f = f.clone();
                    f.first_seen = base + Duration::seconds(10 * interval + (i % 3) as i64);
                    f.last_seen = f.first_seen + Duration::seconds(4);
                    f.packets = 1 + i as u64 + interval as u64;
                    f.bytes = 100 * f.packets;
                    f.reply_packets = i as u64 % 3;
                    f.reply_bytes = 60 * f.reply_packets;
                    f.tcp_flags = TcpFlags(
                        [TcpFlags::SYN, TcpFlags::SYN_ACK, TcpFlags::FIN][interval as usize],
                    );
                    f.cgroup_id = Some(1000 + i as u64);
                    f.node = Some("node-a".into());
                    f
                })
                .collect()
        })
        .collect()
}

/// The peer an end names: its workload (any of its pods) when it names one, else every
/// identity field.
fn identity(e: &Endpoint) -> String {
    if let (Some(ns), Some(w)) = (&e.namespace, &e.workload) {
        return format!("{ns}/{w:?}");
    }
    format!(
        "{:?}",
        (
            &e.kind,
            &e.namespace,
            &e.pod,
            &e.workload,
            &e.labels,
            &e.service,
            &e.service_port
        )
    )
}

fn names_pod(e: &Endpoint) -> bool {
    e.namespace.is_some() && (e.workload.is_some() || e.pod.is_some())
}

type HandKey = (
    String,
    String,
    u8,
    u16,
    u16,
    Verdict,
    Option<String>,
    Option<IpAddr>,
    Option<IpAddr>,
);

/// The edge a flow falls in, computed from the record alone.
fn hand_key(f: &FlowRecord, keep: &HashSet<IpAddr>) -> HandKey {
    let icmp = matches!(f.protocol, Protocol::Icmp | Protocol::Icmpv6);
    let addr = |e: &Endpoint| (!names_pod(e) || keep.contains(&e.ip)).then_some(e.ip);
    (
        identity(&f.src),
        identity(&f.dst),
        f.protocol.number(),
        f.dst.port,
        if icmp { f.src.port } else { 0 },
        f.verdict,
        f.drop_reason.clone(),
        addr(&f.src),
        addr(&f.dst),
    )
}

#[derive(Debug, PartialEq, Eq)]
struct Sums {
    flows: u64,
    packets: u64,
    bytes: u64,
    reply_packets: u64,
    reply_bytes: u64,
    first_seen: i64,
    last_seen: i64,
    tcp_flags: u8,
    connections: u64,
}

async fn written_store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    let store = Store::open(&path).await.unwrap();
    for interval in history() {
        store.write_flows(&interval).await.unwrap();
    }
    store.close().await;
    let store = Store::open_read_only(&path).await.unwrap();
    (dir, store)
}

#[tokio::test]
async fn edges_hold_what_the_merged_flows_sum_to() {
    let (_dir, store) = written_store().await;
    let keep: HashSet<IpAddr> = [NODE_IP.parse().unwrap()].into();
    let merged = store
        .query_flows_merged(&FlowQuery::default())
        .await
        .unwrap();
    let edges = store
        .query_edges(&EdgeQuery {
            since: None,
            keep_addresses: keep.clone(),
        })
        .await
        .unwrap();

    let mut expected: BTreeMap<HandKey, Sums> = BTreeMap::new();
    for f in &merged {
        let s = expected.entry(hand_key(f, &keep)).or_insert(Sums {
            flows: 0,
            packets: 0,
            bytes: 0,
            reply_packets: 0,
            reply_bytes: 0,
            first_seen: i64::MAX,
            last_seen: i64::MIN,
            tcp_flags: 0,
            connections: 0,
        });
        s.flows += f.flows();
        s.packets += f.packets;
        s.bytes += f.bytes;
        s.reply_packets += f.reply_packets;
        s.reply_bytes += f.reply_bytes;
        s.first_seen = s
            .first_seen
            .min(f.first_seen.timestamp_nanos_opt().unwrap());
        s.last_seen = s.last_seen.max(f.last_seen.timestamp_nanos_opt().unwrap());
        s.tcp_flags |= f.tcp_flags.0;
        s.connections += f.connections;
    }
    let mut got: BTreeMap<HandKey, Sums> = BTreeMap::new();
    for e in &edges {
        let f = &e.record;
        if !matches!(f.protocol, Protocol::Icmp | Protocol::Icmpv6) {
            assert_eq!(f.src.port, 0, "source port of a non-ICMP edge: {f:?}");
        }
        let previous = got.insert(
            hand_key(f, &keep),
            Sums {
                flows: e.flows,
                packets: f.packets,
                bytes: f.bytes,
                reply_packets: f.reply_packets,
                reply_bytes: f.reply_bytes,
                first_seen: f.first_seen.timestamp_nanos_opt().unwrap(),
                last_seen: f.last_seen.timestamp_nanos_opt().unwrap(),
                tcp_flags: f.tcp_flags.0,
                connections: f.connections,
            },
        );
        assert!(previous.is_none(), "two edges with one key: {f:?}");
        // Every row came from one node, each edge from several cgroups but one here only
        // when all its rows agreed.
        assert_eq!(f.node.as_deref(), Some("node-a"));
    }
    assert!(
        edges.len() < merged.len(),
        "{} edges, {} flows",
        edges.len(),
        merged.len()
    );
    assert_eq!(got, expected);
    // Oldest first, like the merged listing.
    assert!(
        edges
            .windows(2)
            .all(|w| w[0].record.first_seen <= w[1].record.first_seen)
    );
}

#[tokio::test]
async fn the_recommender_observes_the_same_edges_from_either_source() {
    let (_dir, store) = written_store().await;
    let mut cluster = Cluster::default();
    cluster.nodes.push(NodeInfo {
        name: "node-a".into(),
        addresses: vec![NODE_IP.parse().unwrap()],
    });
    let keep = cluster.nodes[0].addresses.iter().copied().collect();
    let merged = store
        .query_flows_merged(&FlowQuery::default())
        .await
        .unwrap();
    let edges = store
        .query_edges(&EdgeQuery {
            since: None,
            keep_addresses: keep,
        })
        .await
        .unwrap();
    let from_flows = observe(&merged, &cluster);
    let from_edges = observe_counted(edges.iter().map(|e| (&e.record, e.flows)), &cluster);
    assert_eq!(from_edges.edges, from_flows.edges);
    assert_eq!(from_edges.skipped.dropped, from_flows.skipped.dropped);
    assert_eq!(from_edges.skipped.unanswered, from_flows.skipped.unanswered);
    assert_eq!(from_edges.window, from_flows.window);
    let summary = |o: &flowpol_recommender::observe::Observation| {
        o.workloads
            .iter()
            .map(|(k, s)| {
                (
                    k.clone(),
                    s.labels.clone(),
                    s.first_seen,
                    s.last_seen,
                    s.host_network,
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&from_edges), summary(&from_flows));
    // The hostNetwork pod at the node address is a node peer from either source.
    assert!(
        from_edges
            .edges
            .keys()
            .any(|k| k.dst.to_string() == format!("node:{NODE_IP}"))
    );
}

#[tokio::test]
async fn a_window_keeps_only_the_rows_it_covers() {
    let (_dir, store) = written_store().await;
    let since = t("2026-11-21T10:00:20Z");
    let q = FlowQuery {
        since: Some(since),
        ..Default::default()
    };
    let merged = store.query_flows_merged(&q).await.unwrap();
    let edges = store
        .query_edges(&EdgeQuery {
            since: Some(since),
            keep_addresses: HashSet::new(),
        })
        .await
        .unwrap();
    assert!(!edges.is_empty());
    let flows: u64 = edges.iter().map(|e| e.flows).sum();
    assert_eq!(flows, merged.iter().map(|f| f.flows()).sum::<u64>());
    let packets: u64 = edges.iter().map(|e| e.record.packets).sum();
    assert_eq!(packets, merged.iter().map(|f| f.packets).sum::<u64>());
    assert!(edges.iter().all(|e| e.record.last_seen >= since));
    let none = store
        .query_edges(&EdgeQuery {
            since: Some(t("2030-01-01T00:00:00Z")),
            keep_addresses: HashSet::new(),
        })
        .await
        .unwrap();
    assert!(none.is_empty());
}

#[tokio::test]
async fn folds_on_several_threads_equal_the_fold_on_one() {
    let (_dir, store) = written_store().await;
    let keep: HashSet<IpAddr> = [NODE_IP.parse().unwrap()].into();
    for since in [None, Some(t("2026-11-21T10:00:20Z"))] {
        let q = EdgeQuery {
            since,
            keep_addresses: keep.clone(),
        };
        let (one, threads) = store.query_edges_on(&q, 1).await.unwrap();
        assert_eq!(threads, 1);
        assert!(!one.is_empty());
        for workers in [2, 3, 4] {
            let (several, threads) = store.query_edges_on(&q, workers).await.unwrap();
            assert_eq!(threads, workers, "the fold fell back to one thread");
            assert_eq!(several, one, "{workers} threads, since {since:?}");
        }
    }
}
