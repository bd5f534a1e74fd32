//! `explain`: whether one connection is allowed, and why: the policies that isolate each end,
//! the rule that allows each side, or that none does (with the smallest rule that would).
use std::fmt::Write as _;
use std::net::IpAddr;

use serde::Serialize;
use serde_json::{Value, json};
use thiserror::Error;

use crate::engine::{Engine, PeerRef, RuleRef, Side};
use crate::flow::Protocol;
use crate::model::{Cluster, NAMESPACE_NAME_LABEL};
use crate::policy::Direction;
use crate::selector::Labels;

#[derive(Debug, Error)]
pub enum ExplainError {
    #[error("--{flag} `{value}`: {message}")]
    Peer {
        flag: &'static str,
        value: String,
        message: String,
    },
    #[error(
        "--port `{0}`: expected PORT or PORT/PROTOCOL with PORT in 1-65535 and PROTOCOL one of TCP, UDP, SCTP (e.g. 53/UDP)"
    )]
    Port(String),
}

/// Parses `N` or `N/PROTO` (protocol case-insensitive, default TCP).
pub fn parse_port(text: &str) -> Result<(Protocol, u16), ExplainError> {
    let bad = || ExplainError::Port(text.to_string());
    let (port, protocol) = match text.split_once('/') {
        Some((p, proto)) => (
            p,
            match proto.to_ascii_uppercase().as_str() {
                "TCP" => Protocol::Tcp,
                "UDP" => Protocol::Udp,
                "SCTP" => Protocol::Sctp,
                _ => return Err(bad()),
            },
        ),
        None => (text, Protocol::Tcp),
    };
    let port: u16 = port.trim().parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((protocol, port))
}

/// A peer named on the command line: the endpoints of a workload, or one address.
fn resolve(
    engine: &Engine<'_>,
    flag: &'static str,
    text: &str,
) -> Result<Vec<PeerRef>, ExplainError> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(vec![engine.peer_for_ip(ip)]);
    }
    let cluster = engine.cluster();
    let w = cluster
        .find_workload(text)
        .map_err(|message| ExplainError::Peer {
            flag,
            value: text.to_string(),
            message,
        })?;
    Ok(cluster.workloads[w]
        .endpoints
        .iter()
        .map(|&e| PeerRef::Endpoint(e))
        .collect())
}

/// Human name of a peer: `ns/name[Kind]`, with the pod names when the workload's pods differ.
pub fn peer_name(cluster: &Cluster, peer: PeerRef) -> String {
    match peer {
        PeerRef::Endpoint(e) => {
            let ep = &cluster.endpoints[e];
            let w = &cluster.workloads[ep.workload];
            if w.endpoints.len() > 1 {
                format!("{} (pods {})", w.peer_name(), ep.pods.join(", "))
            } else {
                w.peer_name()
            }
        }
        PeerRef::Ip(ip) => format!("{ip}[External]"),
    }
}

/// Where a rule is, e.g. `default/api spec.ingress[0] (from[1], ports[0]: TCP 8080)`.
pub fn describe_rule(cluster: &Cluster, r: &RuleRef) -> String {
    let policy = &cluster.policies[r.policy];
    let (field, peers) = match r.direction {
        Direction::Ingress => ("spec.ingress", "from"),
        Direction::Egress => ("spec.egress", "to"),
    };
    let rule = &policy.rules(r.direction).unwrap_or_default()[r.rule];
    let peer = match r.peer {
        Some(i) => format!("{peers}[{i}]"),
        None => format!("no `{peers}`: every peer"),
    };
    let port = match r.port {
        Some(i) => format!("ports[{i}]: {}", rule.ports[i]),
        None => "no `ports`: every port".to_string(),
    };
    format!(
        "{} {field}[{}] ({peer}; {port})",
        policy.full_name(),
        r.rule
    )
}

/// Labels that identify a controller's pods rather than one rollout or replica.
pub fn stable_labels(labels: &Labels) -> Labels {
    const VOLATILE: [&str; 7] = [
        "pod-template-hash",
        "controller-revision-hash",
        "pod-template-generation",
        "statefulset.kubernetes.io/pod-name",
        "controller-uid",
        "job-name",
        "apps.kubernetes.io/pod-index",
    ];
    labels
        .iter()
        .filter(|(k, _)| !VOLATILE.contains(&k.as_str()) && !k.starts_with("batch.kubernetes.io/"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The labels a policy selects an endpoint's pods by, as `recommend` writes them: its
/// workload's controller selector without rollout labels, else the pod's stable labels.
pub fn endpoint_selector(cluster: &Cluster, endpoint: usize) -> Labels {
    let ep = &cluster.endpoints[endpoint];
    cluster.workloads[ep.workload]
        .selector
        .as_ref()
        .map(stable_labels)
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| stable_labels(&ep.labels))
}

/// The smallest rule that allows `other` on `protocol`/`port` for one side, as a
/// NetworkPolicy ingress/egress rule (JSON; print it as YAML).
pub fn suggest_rule(
    cluster: &Cluster,
    direction: Direction,
    subject: usize,
    other: PeerRef,
    protocol: Protocol,
    port: u16,
) -> Value {
    let subject_ns = &cluster.workloads[cluster.endpoints[subject].workload].namespace;
    let peer = match other {
        PeerRef::Ip(ip) => {
            let prefix = if ip.is_ipv4() { 32 } else { 128 };
            json!({"ipBlock": {"cidr": format!("{ip}/{prefix}")}})
        }
        PeerRef::Endpoint(e) => {
            let ep = &cluster.endpoints[e];
            let ns = &cluster.workloads[ep.workload].namespace;
            let pod_selector = json!({"matchLabels": endpoint_selector(cluster, e)});
            if ns == subject_ns {
                json!({"podSelector": pod_selector})
            } else {
                // One peer with both selectors: pods with these labels in that namespace (AND).
                json!({
                    "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: ns}},
                    "podSelector": pod_selector,
                })
            }
        }
    };
    let peers_key = match direction {
        Direction::Ingress => "from",
        Direction::Egress => "to",
    };
    let mut rule = json!({ peers_key: [peer] });
    if protocol.has_ports() {
        rule["ports"] = json!([{"protocol": protocol.to_string(), "port": port}]);
    }
    rule
}

#[derive(Debug, Clone, Serialize)]
pub struct SideExplanation {
    pub direction: Direction,
    /// `external`, `not-isolated`, `allowed` or `denied`.
    pub status: &'static str,
    /// Policies that isolate the end for this direction (`ns/name`).
    pub isolated_by: Vec<String>,
    /// Rules that allow it.
    pub allowed_by: Vec<String>,
    /// When denied: the smallest rule that would allow it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suggested_rule: Option<Value>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PairExplanation {
    pub from: String,
    pub to: String,
    pub protocol: String,
    pub port: u16,
    pub allowed: bool,
    pub egress: SideExplanation,
    pub ingress: SideExplanation,
}

#[derive(Debug, Clone, Serialize)]
pub struct Explanation {
    /// True when every pod pair of the two peers is allowed.
    pub allowed: bool,
    pub pairs: Vec<PairExplanation>,
}

fn side_explanation(
    engine: &Engine<'_>,
    side: Side<'_>,
    direction: Direction,
    subject: PeerRef,
    other: PeerRef,
    dst: PeerRef,
    (protocol, port): (Protocol, u16),
) -> SideExplanation {
    let cluster = engine.cluster();
    let names = |ids: &[u32]| -> Vec<String> {
        ids.iter()
            .map(|&i| cluster.policies[i as usize].full_name())
            .collect()
    };
    let (status, isolated_by) = match side {
        Side::External => ("external", Vec::new()),
        Side::NotIsolated => ("not-isolated", Vec::new()),
        Side::Allowed { isolated_by, .. } => ("allowed", names(isolated_by)),
        Side::Denied { isolated_by } => ("denied", names(isolated_by)),
    };
    let (allowed_by, suggested_rule) = match (subject, side) {
        (PeerRef::Endpoint(e), Side::Allowed { .. }) => (
            engine
                .allowing_rules(direction, e, other, dst, protocol, port)
                .iter()
                .map(|r| describe_rule(cluster, r))
                .collect(),
            None,
        ),
        (PeerRef::Endpoint(e), Side::Denied { .. }) => (
            Vec::new(),
            Some(suggest_rule(cluster, direction, e, other, protocol, port)),
        ),
        _ => (Vec::new(), None),
    };
    SideExplanation {
        direction,
        status,
        isolated_by,
        allowed_by,
        suggested_rule,
    }
}

/// Explains the connection from `from` to `to` (`NS/WORKLOAD`, `NS/WORKLOAD[Kind]` or an IP).
pub fn explain(
    engine: &Engine<'_>,
    from: &str,
    to: &str,
    protocol: Protocol,
    port: u16,
) -> Result<Explanation, ExplainError> {
    let sources = resolve(engine, "from", from)?;
    let destinations = resolve(engine, "to", to)?;
    let cluster = engine.cluster();
    let mut pairs = Vec::new();
    for &src in &sources {
        for &dst in &destinations {
            let verdict = engine.verdict(src, dst, protocol, port);
            pairs.push(PairExplanation {
                from: peer_name(cluster, src),
                to: peer_name(cluster, dst),
                protocol: protocol.to_string(),
                port,
                allowed: verdict.allowed,
                egress: side_explanation(
                    engine,
                    verdict.egress,
                    Direction::Egress,
                    src,
                    dst,
                    dst,
                    (protocol, port),
                ),
                ingress: side_explanation(
                    engine,
                    verdict.ingress,
                    Direction::Ingress,
                    dst,
                    src,
                    dst,
                    (protocol, port),
                ),
            });
        }
    }
    Ok(Explanation {
        allowed: pairs.iter().all(|p| p.allowed),
        pairs,
    })
}

impl Explanation {
    /// The human form printed by `flowpol explain`.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        for pair in &self.pairs {
            let verdict = if pair.allowed { "ALLOWED" } else { "DENIED" };
            let _ = writeln!(
                out,
                "{verdict}: {} -> {} {} {}",
                pair.from, pair.to, pair.protocol, pair.port
            );
            for (side, end) in [(&pair.egress, &pair.from), (&pair.ingress, &pair.to)] {
                let what = match side.direction {
                    Direction::Egress => format!("egress from {end}"),
                    Direction::Ingress => format!("ingress to {end}"),
                };
                match side.status {
                    "external" => {
                        let _ = writeln!(
                            out,
                            "  {what}: an external address; NetworkPolicies do not apply"
                        );
                    }
                    "not-isolated" => {
                        let _ = writeln!(
                            out,
                            "  {what}: allowed; no NetworkPolicy selects it for {} (not isolated)",
                            side.direction
                        );
                    }
                    "allowed" => {
                        let _ = writeln!(
                            out,
                            "  {what}: allowed; isolated by {}",
                            side.isolated_by.join(", ")
                        );
                        for rule in &side.allowed_by {
                            let _ = writeln!(out, "    allowed by {rule}");
                        }
                    }
                    _ => {
                        let _ = writeln!(
                            out,
                            "  {what}: DENIED; isolated by {}, and no rule of theirs allows {} {} here",
                            side.isolated_by.join(", "),
                            pair.protocol,
                            pair.port
                        );
                        if let Some(rule) = &side.suggested_rule {
                            let yaml = serde_saphyr::to_string(
                                &json!({ side.direction.to_string(): [rule] }),
                            )
                            .unwrap_or_else(|_| rule.to_string());
                            let _ = writeln!(
                                out,
                                "    to allow it, add this rule to one of those policies (or a new policy selecting {end}):"
                            );
                            for line in yaml.lines() {
                                let _ = writeln!(out, "      {line}");
                            }
                        }
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_with_and_without_protocol() {
        assert_eq!(parse_port("8080").unwrap(), (Protocol::Tcp, 8080));
        assert_eq!(parse_port("53/udp").unwrap(), (Protocol::Udp, 53));
        assert_eq!(parse_port("9/SCTP").unwrap(), (Protocol::Sctp, 9));
        for bad in ["0", "65536", "http", "53/icmp", "", "/TCP"] {
            assert!(parse_port(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn stable_labels_drop_rollout_labels() {
        let labels: Labels = [
            ("app", "web"),
            ("pod-template-hash", "5d4f"),
            ("controller-revision-hash", "x"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(stable_labels(&labels).keys().collect::<Vec<_>>(), ["app"]);
    }
}
