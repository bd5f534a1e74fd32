//! What a lab run saw: the clients' own account of each connection, and the agent's recorded
//! flows as `ns/workload → ns/workload:port/proto` with counts (drops with their reason).
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::IpAddr;

use flowpol_recommender::flow::{Endpoint, FlowRecord, Verdict};

use super::plan::Plan;
use super::scenario::Scenario;
use super::workers::Attempt;

/// Names an address the lab knows: a pod's `ns/workload`, the node, or an external.
pub fn lab_name(plan: &Plan, ip: IpAddr) -> Option<String> {
    if let Some(p) = plan.pod_by_ip(ip) {
        return Some(format!("{}/{}", p.namespace, p.workload));
    }
    if plan.node_addresses.contains(&ip) {
        return Some(format!("node/{}", plan.node_name));
    }
    if let Some(svc) = plan.services.iter().find(|s| s.cluster_ips.contains(&ip)) {
        return Some(format!("service/{}", svc.key()));
    }
    plan.externals
        .iter()
        .find(|e| e.address == ip)
        .map(|e| format!("external/{}", e.name))
}

fn endpoint_name(plan: &Plan, e: &Endpoint) -> String {
    if e.namespace.is_some() {
        return e.display_name();
    }
    lab_name(plan, e.ip).unwrap_or_else(|| e.ip.to_string())
}

/// One line per traffic.yaml connection and client workload: answered/attempted.
pub fn clients(plan: &Plan, scenario: &Scenario, attempts: &[Attempt]) -> String {
    let mut groups: BTreeMap<(usize, String), (u32, u32, Vec<String>)> = BTreeMap::new();
    for a in attempts {
        let from = scenario.traffic.connections[a.connection].from.clone();
        let g = groups.entry((a.connection, from)).or_default();
        g.1 += 1;
        if a.ok {
            g.0 += 1;
        } else if let Some(e) = &a.error {
            g.2.push(format!("{} → {}: {e}", a.client, a.target));
        }
    }
    let mut out = String::new();
    for ((i, from), (ok, total, errors)) in &groups {
        let c = &scenario.traffic.connections[*i];
        let to = if let Some(s) = &c.to.service {
            format!("service {s}")
        } else if let Some(w) = &c.to.workload {
            format!("workload {w}")
        } else {
            format!("external {}", c.to.external.as_deref().unwrap_or(""))
        };
        let proto = c.protocol.as_deref().unwrap_or("TCP");
        let _ = writeln!(
            out,
            "  [{i}] {from} → {to}:{}/{proto}: {ok}/{total} answered",
            c.port
        );
        for e in errors.iter().take(5) {
            let _ = writeln!(out, "        unanswered: {e}");
        }
    }
    let _ = plan;
    out
}

/// Flow lines grouped by names, port and verdict, with flow and packet counts.
pub fn flows(plan: &Plan, flows: &[FlowRecord]) -> String {
    #[derive(Default)]
    struct Agg {
        flows: u64,
        packets: u64,
        reply_packets: u64,
    }
    let mut groups: BTreeMap<(String, String, u16, String, String, String), Agg> = BTreeMap::new();
    for f in flows {
        let reason = f.drop_reason.clone().unwrap_or_default();
        let key = (
            endpoint_name(plan, &f.src),
            endpoint_name(plan, &f.dst),
            f.dst.port,
            f.protocol.to_string(),
            f.verdict.as_str().to_string(),
            reason,
        );
        let g = groups.entry(key).or_default();
        g.flows += 1;
        g.packets += f.packets;
        g.reply_packets += f.reply_packets;
    }
    let mut out = String::new();
    for ((src, dst, port, proto, verdict, reason), g) in &groups {
        let _ = write!(
            out,
            "  {src} → {dst}:{port}/{proto}  {} flow(s), {} packet(s), {} reply packet(s)",
            g.flows, g.packets, g.reply_packets
        );
        if verdict != Verdict::Forwarded.as_str() {
            let _ = write!(out, "  {}", verdict.to_uppercase());
            if !reason.is_empty() {
                let _ = write!(out, " ({reason})");
            }
        }
        out.push('\n');
    }
    out
}

/// Parses `flowpol flows -o json` output: a JSON array or one record per line.
pub fn parse_flows(text: &str) -> Result<Vec<FlowRecord>, serde_json::Error> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed);
    }
    trimmed
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::{plan, scenario};
    use super::*;
    use std::path::Path;

    #[test]
    fn flows_are_named_from_the_plan_when_identity_is_missing() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/port-mismatch");
        let s = scenario::load(&dir).unwrap();
        let p = plan::build("r1", &s).unwrap();
        let client = p.pods_of("web/client")[0].ips[0];
        let web = p.pods_of("web/webapp")[0].ips[0];
        let line = format!(
            r#"{{"src":{{"ip":"{client}","port":40000}},"dst":{{"ip":"{web}","port":8080}},"protocol":"TCP","packets":5,"bytes":300,"reply_packets":4,"reply_bytes":200,"first_seen":"2026-01-01T00:00:00Z","last_seen":"2026-01-01T00:00:01Z","verdict":"dropped","drop_reason":"NETFILTER_DROP"}}"#
        );
        let recs = parse_flows(&format!("{line}\n{line}\n")).unwrap();
        let out = flows(&p, &recs);
        assert!(
            out.contains("web/client → web/webapp:8080/TCP  2 flow(s), 10 packet(s)"),
            "{out}"
        );
        assert!(out.contains("DROPPED (NETFILTER_DROP)"), "{out}");
        assert_eq!(parse_flows(&format!("[{line}]")).unwrap().len(), 1);
    }
}
