//! `audit`: observed flows that given policies would deny, with the smallest rule that admits
//! each; `diff`: rules no observed traffic used, and traffic no rule covers.
use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Value, json};

use crate::engine::{Engine, PeerRef, Settings, Side};
use crate::explain::{describe_rule, endpoint_selector, peer_name, suggest_rule};
use crate::flow::Protocol;
use crate::model::Cluster;
use crate::observe::{EdgeKey, Observation};
use crate::policy::Direction;
use crate::recommend::peer_refs;

/// One denied side of a group, and the fix.
#[derive(Debug, Clone, Serialize)]
pub struct Fix {
    pub direction: Direction,
    /// The end whose policies deny it (`ns/name[Kind]`).
    pub subject: String,
    /// Policies that isolate that end for this direction.
    pub isolated_by: Vec<String>,
    /// The smallest rule that admits the group (add it to one of `isolated_by`).
    pub rule: Value,
    /// The same rule in a NetworkPolicy of its own, ready to apply.
    pub policy: Value,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditGroup {
    pub source: String,
    pub destination: String,
    pub protocol: Protocol,
    pub port: u16,
    pub flows: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub fixes: Vec<Fix>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Audit {
    /// Observed (forwarded) flows checked.
    pub flows_checked: u64,
    pub denied_flows: u64,
    pub groups: Vec<AuditGroup>,
    /// Edges the engine cannot place (no namespace, ICMP).
    pub unverifiable: Vec<String>,
}

fn fix_policy(
    cluster: &Cluster,
    subject: usize,
    direction: Direction,
    rule: &Value,
    n: usize,
) -> Value {
    let w = &cluster.workloads[cluster.endpoints[subject].workload];
    let selector = endpoint_selector(cluster, subject);
    let (field, ty) = match direction {
        Direction::Ingress => ("ingress", "Ingress"),
        Direction::Egress => ("egress", "Egress"),
    };
    json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {
            "name": format!("fix-{}-{field}-{n}", w.name),
            "namespace": w.namespace,
            "labels": {"app.kubernetes.io/managed-by": crate::recommend::MANAGED_BY},
        },
        "spec": {
            "podSelector": {"matchLabels": selector},
            "policyTypes": [ty],
            field: [rule],
        },
    })
}

/// Audits the observed edges against the policies of `cluster`.
pub fn audit(obs: &Observation, cluster: &Cluster) -> Audit {
    let engine = Engine::new(cluster, Settings::default());
    let mut out = Audit::default();
    let mut fixes_written = 0usize;
    for (edge, evidence) in &obs.edges {
        out.flows_checked += evidence.flows;
        if !edge.protocol.has_ports() {
            out.unverifiable
                .push(format!("{} → {} {}", edge.src, edge.dst, edge.protocol));
            continue;
        }
        let srcs = peer_refs(cluster, &edge.src);
        let dsts = peer_refs(cluster, &edge.dst);
        if srcs.is_empty() || dsts.is_empty() {
            out.unverifiable.push(format!(
                "{} → {} {}/{}",
                edge.src, edge.dst, edge.port, edge.protocol
            ));
            continue;
        }
        let mut fixes: Vec<Fix> = Vec::new();
        let mut seen: BTreeSet<(Direction, usize)> = BTreeSet::new();
        for &s in &srcs {
            for &d in &dsts {
                let v = engine.verdict(s, d, edge.protocol, edge.port);
                for (side, direction, subject, other) in [
                    (v.egress, Direction::Egress, s, d),
                    (v.ingress, Direction::Ingress, d, s),
                ] {
                    let (Side::Denied { isolated_by }, PeerRef::Endpoint(e)) = (side, subject)
                    else {
                        continue;
                    };
                    if !seen.insert((direction, e)) {
                        continue;
                    }
                    let rule = suggest_rule(cluster, direction, e, other, edge.protocol, edge.port);
                    fixes_written += 1;
                    fixes.push(Fix {
                        direction,
                        subject: peer_name(cluster, subject),
                        isolated_by: isolated_by
                            .iter()
                            .map(|&i| cluster.policies[i as usize].full_name())
                            .collect(),
                        policy: fix_policy(cluster, e, direction, &rule, fixes_written),
                        rule,
                    });
                }
            }
        }
        if !fixes.is_empty() {
            out.denied_flows += evidence.flows;
            out.groups.push(AuditGroup {
                source: edge.src.to_string(),
                destination: edge.dst.to_string(),
                protocol: edge.protocol,
                port: edge.port,
                flows: evidence.flows,
                first_seen: evidence.first_seen,
                last_seen: evidence.last_seen,
                fixes,
            });
        }
    }
    out
}

/// A rule (or a peer or port of it) no observed flow used.
#[derive(Debug, Clone, Serialize)]
pub struct UnusedRule {
    pub policy: String,
    /// `spec.ingress[0]`, `spec.egress[1].to[0]`, `spec.ingress[0].ports[1]`.
    pub field: String,
    pub detail: String,
}

/// Observed traffic that no rule allows.
#[derive(Debug, Clone, Serialize)]
pub struct Uncovered {
    pub source: String,
    pub destination: String,
    pub protocol: Protocol,
    pub port: u16,
    pub flows: u64,
    /// Why: an end no policy isolates, or denied.
    pub why: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Diff {
    pub unused: Vec<UnusedRule>,
    pub uncovered: Vec<Uncovered>,
}

/// Rules with no traffic in the window, and traffic no rule covers.
pub fn diff(obs: &Observation, cluster: &Cluster) -> Diff {
    let engine = Engine::new(cluster, Settings::default());
    // (policy, direction, rule) → peers used, ports used; `None` entries: all peers/ports.
    type Used =
        BTreeMap<(usize, Direction, usize), (BTreeSet<Option<usize>>, BTreeSet<Option<usize>>)>;
    let mut used: Used = BTreeMap::new();
    let mut out = Diff::default();
    let mut uncovered: BTreeMap<EdgeKey, BTreeSet<String>> = BTreeMap::new();
    for edge in obs.edges.keys() {
        if !edge.protocol.has_ports() {
            continue;
        }
        for s in peer_refs(cluster, &edge.src) {
            for d in peer_refs(cluster, &edge.dst) {
                let v = engine.verdict(s, d, edge.protocol, edge.port);
                for (side, direction, subject, other) in [
                    (v.egress, Direction::Egress, s, d),
                    (v.ingress, Direction::Ingress, d, s),
                ] {
                    match (side, subject) {
                        (Side::Allowed { .. }, PeerRef::Endpoint(e)) => {
                            for r in engine.allowing_rules(
                                direction,
                                e,
                                other,
                                d,
                                edge.protocol,
                                edge.port,
                            ) {
                                let entry =
                                    used.entry((r.policy, r.direction, r.rule)).or_default();
                                entry.0.insert(r.peer);
                                entry.1.insert(r.port);
                            }
                        }
                        (Side::NotIsolated, _) => {
                            uncovered.entry(edge.clone()).or_default().insert(format!(
                                "no policy selects {} for {direction}",
                                peer_name(cluster, subject)
                            ));
                        }
                        (Side::Denied { .. }, _) => {
                            uncovered.entry(edge.clone()).or_default().insert(format!(
                                "denied for {direction} of {}",
                                peer_name(cluster, subject)
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
    }
    for (edge, why) in uncovered {
        out.uncovered.push(Uncovered {
            source: edge.src.to_string(),
            destination: edge.dst.to_string(),
            protocol: edge.protocol,
            port: edge.port,
            flows: obs.edges[&edge].flows,
            why: why.into_iter().collect::<Vec<_>>().join("; "),
        });
    }
    for (pi, policy) in cluster.policies.iter().enumerate() {
        for direction in [Direction::Ingress, Direction::Egress] {
            let (field, peers_key) = match direction {
                Direction::Ingress => ("spec.ingress", "from"),
                Direction::Egress => ("spec.egress", "to"),
            };
            for (ri, rule) in policy
                .rules(direction)
                .unwrap_or_default()
                .iter()
                .enumerate()
            {
                let at = format!("{field}[{ri}]");
                let Some((peers, ports)) = used.get(&(pi, direction, ri)) else {
                    out.unused.push(UnusedRule {
                        policy: policy.full_name(),
                        detail: format!(
                            "no observed flow used this rule ({})",
                            describe_rule(
                                cluster,
                                &crate::engine::RuleRef {
                                    policy: pi,
                                    direction,
                                    rule: ri,
                                    peer: (!rule.peers.is_empty()).then_some(0),
                                    port: (!rule.ports.is_empty()).then_some(0),
                                }
                            )
                        ),
                        field: at,
                    });
                    continue;
                };
                for i in 0..rule.peers.len() {
                    if !peers.contains(&Some(i)) {
                        out.unused.push(UnusedRule {
                            policy: policy.full_name(),
                            field: format!("{at}.{peers_key}[{i}]"),
                            detail: "no observed flow came from/went to this peer".into(),
                        });
                    }
                }
                for (i, port) in rule.ports.iter().enumerate() {
                    if !ports.contains(&Some(i)) {
                        out.unused.push(UnusedRule {
                            policy: policy.full_name(),
                            field: format!("{at}.ports[{i}]"),
                            detail: format!("no observed flow used {port}"),
                        });
                    }
                }
            }
        }
    }
    out
}
