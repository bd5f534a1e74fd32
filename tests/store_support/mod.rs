//! Shared by the store_* test files: sample flow records.
#![allow(dead_code)]
use std::collections::BTreeMap;

use chrono::{DateTime, Duration, Utc};
use flowpol_recommender::flow::{
    Endpoint, EndpointKind, FlowRecord, Protocol, TcpFlags, Verdict, WorkloadRef,
};

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// A pod endpoint with every identity field set.
pub fn pod(ip: &str, port: u16, ns: &str, workload: &str) -> Endpoint {
    let mut e = Endpoint::new(ip.parse().unwrap(), port);
    e.kind = Some(EndpointKind::Pod);
    e.namespace = Some(ns.to_string());
    e.pod = Some(format!("{workload}-7d4b9c-x2k8p"));
    e.workload = Some(WorkloadRef {
        kind: "Deployment".into(),
        name: workload.into(),
    });
    e.labels = BTreeMap::from([
        ("app".to_string(), workload.to_string()),
        ("tier".to_string(), "backend".to_string()),
    ]);
    e.selector = BTreeMap::from([("app".to_string(), workload.to_string())]);
    e
}

/// A record with every field of the model set to a non-default value.
pub fn full_record() -> FlowRecord {
    let mut dst = pod("fd00:10::22", 8080, "shop", "api");
    dst.service = Some("shop/api".into());
    dst.service_port = Some(80);
    FlowRecord {
        src: pod("10.244.1.7", 43122, "web", "frontend"),
        dst,
        protocol: Protocol::Tcp,
        packets: 12,
        bytes: 3_400,
        reply_packets: 10,
        reply_bytes: 98_000,
        first_seen: t("2026-11-21T10:00:00.123456789Z"),
        last_seen: t("2026-11-21T10:00:04.987654321Z"),
        verdict: Verdict::Dropped,
        drop_reason: Some("NETFILTER_DROP".into()),
        tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::RST),
        connections: 7,
        cgroup_id: Some(u64::MAX - 5),
        node: Some("node-a".into()),
    }
}

/// A bare record (no identity) between two addresses.
pub fn bare(src: &str, sport: u16, dst: &str, dport: u16, at: DateTime<Utc>) -> FlowRecord {
    FlowRecord {
        src: Endpoint::new(src.parse().unwrap(), sport),
        dst: Endpoint::new(dst.parse().unwrap(), dport),
        protocol: Protocol::Udp,
        packets: 1,
        bytes: 100,
        reply_packets: 0,
        reply_bytes: 0,
        first_seen: at,
        last_seen: at + Duration::milliseconds(500),
        verdict: Verdict::Forwarded,
        drop_reason: None,
        tcp_flags: TcpFlags::default(),
        connections: 0,
        cgroup_id: None,
        node: None,
    }
}
