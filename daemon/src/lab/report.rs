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

/// One line per traffic.yaml connection: answered/attempted and whether that is what the
/// scenario expects (every connection answered, none for `expect: blocked` under enforcement).
/// Returns the text and the connections whose outcome was not the expected one.
pub fn clients(plan: &Plan, scenario: &Scenario, attempts: &[Attempt]) -> (String, Vec<String>) {
    let mut groups: BTreeMap<usize, (u32, u32, Vec<String>)> = BTreeMap::new();
    for a in attempts {
        let g = groups.entry(a.connection).or_default();
        g.1 += 1;
        if a.ok {
            g.0 += 1;
        } else if let Some(e) = &a.error {
            g.2.push(format!("{} → {}: {e}", a.client, a.target));
        }
    }
    let mut out = String::new();
    let mut unmet = Vec::new();
    for (i, (ok, total, errors)) in &groups {
        let c = &scenario.traffic.connections[*i];
        let to = if let Some(s) = &c.to.service {
            format!("service {s}")
        } else if let Some(w) = &c.to.workload {
            format!("workload {w}")
        } else {
            format!("external {}", c.to.external.as_deref().unwrap_or(""))
        };
        let proto = c.protocol.as_deref().unwrap_or("TCP");
        let family = match c.ip_family {
            Some(super::scenario::IpFamily::IPv6) => " (IPv6)",
            _ => "",
        };
        let blocked = c.expect == Some(super::scenario::Expect::Blocked);
        let (met, note) = match (blocked, plan.enforced) {
            (true, true) if *ok == 0 => (true, " (blocked by policy, as expected)"),
            (true, true) => (false, " UNEXPECTED: the policies should block it"),
            (true, false) if ok == total => (true, " (policies would block it under --enforce)"),
            _ if ok == total => (true, ""),
            _ => (false, " UNEXPECTED: not every connection was answered"),
        };
        let line = format!(
            "[{i}] {} → {to}:{}/{proto}{family}: {ok}/{total} answered{note}",
            c.from, c.port
        );
        let _ = writeln!(out, "  {line}");
        if !met {
            unmet.push(line);
        }
        if !blocked || !plan.enforced {
            for e in errors.iter().take(5) {
                let _ = writeln!(out, "        unanswered: {e}");
            }
        }
    }
    (out, unmet)
}

/// Flow lines grouped by names, port and verdict, with flow and packet counts
/// (a record of aggregated connections counts each).
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
        g.flows += f.aggregated_connections().unwrap_or(1);
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

fn same_workload(e: &Endpoint, key: &str) -> bool {
    let Some((ns, name)) = key.split_once('/') else {
        return false;
    };
    // A bare Pod is its own workload.
    e.namespace.as_deref() == Some(ns)
        && match &e.workload {
            Some(w) => w.name == name,
            None => e.pod.as_deref() == Some(name),
        }
}

/// Checks recorded flows against `traffic.yaml`: each connection recorded once per attempt,
/// both ends named, the destination at the pod port (the backend's view after Service DNAT,
/// or the client's view of the cluster IP resolved to the pod port); and no other flow
/// between pods except DNS lookups to kube-dns. Returns the problems found.
pub fn check(plan: &Plan, scenario: &Scenario, flows: &[FlowRecord]) -> Vec<String> {
    use std::collections::BTreeSet;
    // One connection, one 5-tuple: a drop and the sender's unanswered wait are the same flow.
    let merged = merge_flows(flows.to_vec());
    let flows = merged.as_slice();
    let mut problems = Vec::new();
    let mut used = vec![false; flows.len()];
    // Connections of aggregated records not yet attributed: one record may hold
    // those of several `traffic.yaml` entries (the same client and pod port).
    let mut aggregated_left: Vec<Option<u64>> = flows
        .iter()
        .map(FlowRecord::aggregated_connections)
        .collect();
    for (i, c) in scenario.traffic.connections.iter().enumerate() {
        let proto = c.protocol.as_deref().unwrap_or("TCP");
        let clients: Vec<_> = plan
            .pods_of(&c.from)
            .into_iter()
            .filter(|p| c.replica.is_none_or(|r| r == p.replica))
            .collect();
        let v6 = c.ip_family == Some(super::scenario::IpFamily::IPv6);
        let client_ips: BTreeSet<IpAddr> = clients
            .iter()
            .flat_map(|p| p.ips.clone())
            .filter(|ip| ip.is_ipv6() == v6)
            .collect();
        let count = u64::from(c.count.unwrap_or(1));
        // Allowed destinations (ip, port) and the workload that must be named there.
        let mut dsts: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
        let mut dst_workload: Option<String> = None;
        let expected: u64;
        let to_text: String;
        if let Some(key) = &c.to.service {
            to_text = format!("service {key}:{}", c.port);
            if let Some(svc) = plan.service(key) {
                for p in svc
                    .ports
                    .iter()
                    .filter(|p| p.port == c.port && p.protocol.as_str() == proto)
                {
                    for e in &p.endpoints {
                        dsts.insert((e.ip, e.port));
                        // The client's view (to the cluster IP, the pod port once resolved):
                        // what the agent keeps when client and backend share the node.
                        for cip in &svc.cluster_ips {
                            dsts.insert((*cip, e.port));
                        }
                    }
                }
            }
            expected = clients.len() as u64 * count;
        } else if let Some(key) = &c.to.workload {
            to_text = format!("workload {key}:{}", c.port);
            dst_workload = Some(key.clone());
            let targets = plan.pods_of(key);
            for t in &targets {
                for ip in &t.ips {
                    dsts.insert((*ip, c.port));
                }
            }
            expected = clients
                .iter()
                .map(|cl| targets.iter().filter(|t| t.index != cl.index).count() as u64 * count)
                .sum();
        } else {
            let name = c.to.external.clone().unwrap_or_default();
            to_text = format!("external {name}:{}", c.port);
            if let Some(e) = plan.external(&name) {
                dsts.insert((e.address, c.port));
            }
            expected = clients.len() as u64 * count;
        }
        dsts.retain(|(ip, _)| ip.is_ipv6() == v6);
        let mut recorded = 0u64;
        // A connection is its client socket: a SYN retransmitted after a drop may be DNATed to
        // another endpoint (the unconfirmed conntrack entry is gone), but it is one connection.
        let mut sockets: BTreeSet<(IpAddr, u16)> = BTreeSet::new();
        for (fi, f) in flows.iter().enumerate() {
            if (used[fi] && aggregated_left[fi].is_none_or(|n| n == 0))
                || f.protocol.to_string() != proto
                || !client_ips.contains(&f.src.ip)
                || !dsts.contains(&(f.dst.ip, f.dst.port))
            {
                continue;
            }
            let socket = (f.src.ip, f.src.port);
            if f.verdict == Verdict::Dropped {
                // Packets the kernel dropped (full 5-tuple): of a connection its
                // socket's record counts, here or aggregated.
            } else if let Some(left) = &mut aggregated_left[fi] {
                // A client's connections to one port, aggregated (a retransmitted
                // SYN counts again: never more than were made).
                let take = (*left).min(expected.saturating_sub(recorded));
                *left -= take;
                recorded += take;
            } else if !sockets.contains(&socket) {
                // Connections with the same ends share flows: each takes as many as it made.
                if recorded == expected {
                    continue;
                }
                sockets.insert(socket);
                recorded += 1;
            }
            used[fi] = true;
            let blocked = plan.enforced && c.expect == Some(super::scenario::Expect::Blocked);
            if blocked && f.verdict == Verdict::Forwarded {
                problems.push(format!(
                    "connections[{i}]: policies should block it, but a flow was forwarded ({} → {}:{})",
                    f.src.ip, f.dst.ip, f.dst.port
                ));
            }
            if !blocked && f.verdict != Verdict::Forwarded {
                problems.push(format!(
                    "connections[{i}]: a flow was {} ({} → {}:{})",
                    f.verdict.as_str(),
                    f.src.ip,
                    f.dst.ip,
                    f.dst.port
                ));
            }
            if !same_workload(&f.src, &c.from) {
                problems.push(format!(
                    "connections[{i}]: source {} is not named {} (got {})",
                    f.src.ip,
                    c.from,
                    f.src.display_name()
                ));
            }
            let dst_named = match (&dst_workload, &c.to.service) {
                (Some(key), _) => same_workload(&f.dst, key),
                (None, Some(_)) => f.dst.namespace.is_some() && f.dst.workload.is_some(),
                _ => true,
            };
            if !dst_named {
                problems.push(format!(
                    "connections[{i}]: destination {}:{} is not named (got {})",
                    f.dst.ip,
                    f.dst.port,
                    f.dst.display_name()
                ));
            }
        }
        if recorded != expected {
            problems.push(format!(
                "connections[{i}] {} → {to_text}/{proto}: {expected} connection(s) made, {recorded} recorded at the pod port",
                c.from
            ));
        }
    }
    let dns: BTreeSet<IpAddr> = plan
        .dns_ips
        .iter()
        .copied()
        .chain(
            plan.pods_of("kube-system/coredns")
                .iter()
                .flat_map(|p| p.ips.clone()),
        )
        .collect();
    let in_lab = |ip: IpAddr| {
        plan.pod_by_ip(ip).is_some() || plan.services.iter().any(|s| s.cluster_ips.contains(&ip))
    };
    // The client's own view of a Service connection (before the node's DNAT) is the same
    // connection, not an extra one.
    let mut service_views: BTreeSet<(IpAddr, IpAddr, u16, String)> = BTreeSet::new();
    for c in &scenario.traffic.connections {
        let Some(svc) = c.to.service.as_deref().and_then(|k| plan.service(k)) else {
            continue;
        };
        let proto = c.protocol.clone().unwrap_or_else(|| "TCP".into());
        // Dialed at the Service port; identity may already show the resolved targetPort.
        let mut ports: BTreeSet<u16> = BTreeSet::from([c.port]);
        for p in svc.ports.iter().filter(|p| p.port == c.port) {
            ports.extend(p.endpoints.iter().map(|e| e.port));
        }
        for client in plan.pods_of(&c.from) {
            for src in &client.ips {
                for cip in &svc.cluster_ips {
                    for port in &ports {
                        service_views.insert((*src, *cip, *port, proto.clone()));
                    }
                }
            }
        }
    }
    for (fi, f) in flows.iter().enumerate() {
        if used[fi] || plan.pod_by_ip(f.src.ip).is_none() || !in_lab(f.dst.ip) {
            continue;
        }
        if dns.contains(&f.dst.ip) && f.dst.port == 53 {
            continue;
        }
        if service_views.contains(&(f.src.ip, f.dst.ip, f.dst.port, f.protocol.to_string())) {
            continue;
        }
        // The reply direction of a recorded connection, with src and dst swapped.
        let reversed = flows.iter().enumerate().any(|(gi, g)| {
            gi != fi && g.src.ip == f.dst.ip && g.src.port == f.dst.port && g.protocol == f.protocol
        });
        if reversed {
            problems.push(format!(
                "flow recorded reversed (the reply side of another recorded flow): {} ({}:{}) → {} ({}):{}/{}",
                endpoint_name(plan, &f.src),
                f.src.ip,
                f.src.port,
                endpoint_name(plan, &f.dst),
                f.dst.ip,
                f.dst.port,
                f.protocol
            ));
            continue;
        }
        problems.push(format!(
            "unexpected flow between pods: {} ({}) → {} ({}):{}/{}",
            endpoint_name(plan, &f.src),
            f.src.ip,
            endpoint_name(plan, &f.dst),
            f.dst.ip,
            f.dst.port,
            f.protocol
        ));
    }
    problems
}

/// Merges records of the same flow (5-tuple) written in several drain intervals.
pub fn merge_flows(records: Vec<FlowRecord>) -> Vec<FlowRecord> {
    let mut out: Vec<FlowRecord> = Vec::new();
    let mut index: BTreeMap<(IpAddr, u16, IpAddr, u16, String), usize> = BTreeMap::new();
    for r in records {
        let key = (
            r.src.ip,
            r.src.port,
            r.dst.ip,
            r.dst.port,
            r.protocol.to_string(),
        );
        match index.get(&key) {
            Some(&i) => {
                let m = &mut out[i];
                m.packets += r.packets;
                m.bytes += r.bytes;
                m.reply_packets += r.reply_packets;
                m.reply_bytes += r.reply_bytes;
                m.first_seen = m.first_seen.min(r.first_seen);
                m.last_seen = m.last_seen.max(r.last_seen);
                // A drop says most, then an unanswered wait, then forwarded.
                let rank = |v: Verdict| match v {
                    Verdict::Dropped => 2,
                    Verdict::Unanswered => 1,
                    Verdict::Forwarded => 0,
                };
                if rank(r.verdict) > rank(m.verdict) {
                    m.verdict = r.verdict;
                    m.drop_reason = r.drop_reason.clone();
                }
                if m.dst.namespace.is_none() {
                    m.dst = r.dst;
                }
                if m.src.namespace.is_none() {
                    m.src = r.src;
                }
            }
            None => {
                index.insert(key, out.len());
                out.push(r);
            }
        }
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
        // The same 5-tuple from two drain intervals is one flow.
        let merged = merge_flows(recs);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].packets, 10);
        assert!(out.contains("DROPPED (NETFILTER_DROP)"), "{out}");
        assert_eq!(parse_flows(&format!("[{line}]")).unwrap().len(), 1);
    }

    fn flow(src: IpAddr, dst: IpAddr, port: u16, named: bool, plan: &Plan) -> FlowRecord {
        static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(40000);
        let sport = NEXT_PORT.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let mut f: FlowRecord = serde_json::from_str(&format!(
            r#"{{"src":{{"ip":"{src}","port":{sport}}},"dst":{{"ip":"{dst}","port":{port}}},"protocol":"TCP","packets":3,"bytes":180,"first_seen":"2026-01-01T00:00:00Z","last_seen":"2026-01-01T00:00:01Z","verdict":"forwarded","drop_reason":null}}"#
        ))
        .unwrap();
        if named {
            for e in [&mut f.src, &mut f.dst] {
                if let Some(p) = plan.pod_by_ip(e.ip) {
                    e.namespace = Some(p.namespace.clone());
                    e.workload = Some(flowpol_recommender::flow::WorkloadRef {
                        kind: p.workload_kind.as_str().into(),
                        name: p.workload.clone(),
                    });
                }
            }
        }
        f
    }

    #[test]
    fn check_wants_each_connection_at_the_pod_port_and_nothing_else() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/port-mismatch");
        let s = scenario::load(&dir).unwrap();
        let p = plan::build("r2", &s).unwrap();
        let client = p.pods_of("web/client")[0].ips[0];
        let web: Vec<IpAddr> = p.pods_of("web/webapp").iter().map(|x| x.ips[0]).collect();
        let dns = p.pods_of("kube-system/coredns")[0].ips[0];
        let mut flows: Vec<FlowRecord> = (0..4)
            .map(|i| flow(client, web[i % 2], 8080, true, &p))
            .collect();
        flows.push(flow(client, dns, 53, true, &p));
        assert_eq!(check(&p, &s, &flows), Vec::<String>::new());
        // Recorded at the Service port instead: missing, and unexpected.
        let svc_ip = p.service("web/webapp").unwrap().cluster_ips[0];
        flows[0] = flow(client, svc_ip, 80, true, &p);
        let problems = check(&p, &s, &flows);
        assert!(
            problems
                .iter()
                .any(|x| x.contains("4 connection(s) made, 3 recorded")),
            "{problems:?}"
        );
        assert!(
            !problems.iter().any(|x| x.contains("unexpected flow")),
            "{problems:?}"
        );
        // A Service port nobody dialed is unexpected.
        flows[0] = flow(client, svc_ip, 81, true, &p);
        assert!(
            check(&p, &s, &flows)
                .iter()
                .any(|x| x.contains("unexpected flow"))
        );
        // Unnamed ends.
        flows[0] = flow(client, web[0], 8080, false, &p);
        let problems = check(&p, &s, &flows);
        assert!(
            problems.iter().any(|x| x.contains("is not named")),
            "{problems:?}"
        );
        // Pod to pod traffic nobody asked for.
        flows[0] = flow(web[0], web[1], 8080, true, &p);
        assert!(
            check(&p, &s, &flows)
                .iter()
                .any(|x| x.contains("unexpected flow"))
        );
    }
}
