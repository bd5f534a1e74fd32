//! `drops`: flows the kernel dropped or that went unanswered, grouped by workload, each with
//! the kernel's reason, the policies selecting each end, and the missing allow rule when a
//! NetworkPolicy explains it; other reasons said plainly.
use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::engine::{Engine, PeerRef, Settings, Side};
use crate::explain::suggest_rule;
use crate::flow::{FlowRecord, Protocol, Verdict};
use crate::model::Cluster;
use crate::observe::{Peer, Resolver};
use crate::policy::Direction;
use crate::recommend::peer_refs;

#[derive(Debug, Clone, Serialize)]
pub struct DropGroup {
    pub source: String,
    pub destination: String,
    pub protocol: Protocol,
    pub port: u16,
    pub verdict: Verdict,
    /// The kernel's reason (`NETFILTER_DROP`), none for unanswered flows.
    pub reason: Option<String>,
    pub flows: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Policies isolating the source for egress / the destination for ingress.
    pub source_policies: Vec<String>,
    pub destination_policies: Vec<String>,
    /// In words: which policy side denies it, or what the kernel's reason means.
    pub explanation: String,
    /// When a NetworkPolicy explains it: the missing rule (and the direction it goes in).
    pub missing_rule: Option<(Direction, Value)>,
    /// Whether the drop is a NetworkPolicy denial under the given policies.
    pub policy_denied: bool,
}

/// The kernel's reason in plain words.
pub fn plain_reason(
    verdict: Verdict,
    reason: Option<&str>,
    protocol: Protocol,
    port: u16,
) -> String {
    match (verdict, reason) {
        (Verdict::Unanswered, _) => format!(
            "the SYN to {port}/{protocol} got no answer: the destination is down, something on the path drops it silently, or a policy not in the given state does"
        ),
        (_, Some("NO_SOCKET")) => {
            format!("nothing was listening on {port}/{protocol} at the destination")
        }
        (_, Some("NETFILTER_DROP")) => "a netfilter (iptables/nftables) rule dropped it, and no NetworkPolicy in the given state denies it: another firewall rule, or policies not given".into(),
        (_, Some(r @ ("IP_NOROUTE" | "IP_OUTNOROUTES" | "IP_INADDRERRORS"))) => {
            format!("no route to the destination ({r})")
        }
        (_, Some(r @ ("TC_INGRESS" | "TC_EGRESS"))) => {
            format!("a tc program dropped it ({r}): an eBPF CNI's policy or filter")
        }
        (_, Some(r))
            if r.starts_with("TCP_")
                || matches!(r, "QUEUE_PURGE" | "SOCKET_CLOSE" | "SOCKET_FILTER" | "SOCKET_RCVBUFF") =>
        {
            format!("kernel housekeeping ({r}): a packet freed after the connection moved on, not a policy drop")
        }
        (_, Some(r)) => format!("the kernel dropped it ({r})"),
        (_, None) => "dropped, with no reason recorded".into(),
    }
}

/// Groups dropped and unanswered flows; `cluster` (with its policies) explains them when given.
pub fn drops(flows: &[FlowRecord], cluster: &Cluster) -> Vec<DropGroup> {
    drops_counted(flows.iter().map(|f| (f, 1)), cluster)
}

/// [`drops`] over records that each stand for `count` flows (see
/// [`crate::observe::observe_counted`]).
pub fn drops_counted<'f>(
    flows: impl IntoIterator<Item = (&'f FlowRecord, u64)>,
    cluster: &Cluster,
) -> Vec<DropGroup> {
    let resolver = Resolver::new(cluster);
    type Key = (Peer, Peer, Protocol, u16, Verdict, Option<String>);
    let mut groups: BTreeMap<Key, (u64, DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
    for (f, count) in flows {
        if f.verdict == Verdict::Forwarded {
            continue;
        }
        let src = resolver.peer(&f.src);
        for (dst, port) in resolver.destinations(f) {
            let g = groups
                .entry((
                    src.clone(),
                    dst,
                    f.protocol,
                    port,
                    f.verdict,
                    f.drop_reason.clone(),
                ))
                .or_insert((0, f.first_seen, f.last_seen));
            g.0 += count;
            g.1 = g.1.min(f.first_seen);
            g.2 = g.2.max(f.last_seen);
        }
    }
    let engine = Engine::new(cluster, Settings::default());
    let names = |ids: &[u32]| -> Vec<String> {
        ids.iter()
            .map(|&i| cluster.policies[i as usize].full_name())
            .collect()
    };
    let mut out = Vec::new();
    for ((src, dst, protocol, port, verdict, reason), (flows, first, last)) in groups {
        let srcs = peer_refs(cluster, &src);
        let dsts = peer_refs(cluster, &dst);
        let mut source_policies = Vec::new();
        let mut destination_policies = Vec::new();
        for s in &srcs {
            if let PeerRef::Endpoint(e) = s {
                source_policies.extend(names(engine.isolating(*e, Direction::Egress)));
            }
        }
        for d in &dsts {
            if let PeerRef::Endpoint(e) = d {
                destination_policies.extend(names(engine.isolating(*e, Direction::Ingress)));
            }
        }
        source_policies.sort();
        source_policies.dedup();
        destination_policies.sort();
        destination_policies.dedup();
        let mut explanation = None;
        let mut missing_rule = None;
        if protocol.has_ports() {
            'pairs: for &s in &srcs {
                for &d in &dsts {
                    let v = engine.verdict(s, d, protocol, port);
                    for (side, direction, subject, other) in [
                        (v.egress, Direction::Egress, s, d),
                        (v.ingress, Direction::Ingress, d, s),
                    ] {
                        if let (Side::Denied { isolated_by }, PeerRef::Endpoint(e)) =
                            (side, subject)
                        {
                            explanation = Some(format!(
                                "NetworkPolicy: {direction} of {} is isolated by {} and no rule of theirs allows {port}/{protocol} {} {}",
                                match direction {
                                    Direction::Egress => &src,
                                    Direction::Ingress => &dst,
                                },
                                names(isolated_by).join(", "),
                                match direction {
                                    Direction::Egress => "to",
                                    Direction::Ingress => "from",
                                },
                                match direction {
                                    Direction::Egress => &dst,
                                    Direction::Ingress => &src,
                                },
                            ));
                            missing_rule = Some((
                                direction,
                                suggest_rule(cluster, direction, e, other, protocol, port),
                            ));
                            break 'pairs;
                        }
                    }
                }
            }
        }
        let policy_denied = explanation.is_some();
        out.push(DropGroup {
            source: src.to_string(),
            destination: dst.to_string(),
            protocol,
            port,
            verdict,
            explanation: explanation
                .unwrap_or_else(|| plain_reason(verdict, reason.as_deref(), protocol, port)),
            reason,
            flows,
            first_seen: first,
            last_seen: last,
            source_policies,
            destination_policies,
            missing_rule,
            policy_denied,
        });
    }
    out
}
