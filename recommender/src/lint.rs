//! `lint`: the NetworkPolicy mistakes the field keeps making. Each finding names the policy
//! (or namespace) and the fix.
use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::engine::{Engine, PeerRef};
use crate::flow::Protocol;
use crate::model::TargetPort;
use crate::policy::{Direction, NamespaceMatch, Peer, Policy, PortMatch, Rule};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable identifier of the check, e.g. `egress-without-dns`.
    pub check: &'static str,
    pub namespace: String,
    /// `ns/name` of the policy at fault, when one is.
    pub policy: Option<String>,
    pub message: String,
    pub fix: String,
}

const DNS_PORT: u16 = 53;

/// Runs every check.
pub fn lint(engine: &Engine<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    no_default_deny(engine, &mut out);
    for (pi, policy) in engine.cluster().policies.iter().enumerate() {
        selects_no_pods(engine, pi, policy, &mut out);
        empty_selector_with_allow_rules(policy, &mut out);
        split_namespace_and_pod_selector(policy, &mut out);
        dns_peer_without_namespace_selector(policy, &mut out);
        service_port_not_container_port(engine, pi, policy, &mut out);
    }
    egress_without_dns(engine, &mut out);
    out
}

/// Whether the policy isolates every pod of its namespace in `direction`: what a default-deny
/// is for. Allow rules it may carry as well are `empty-selector-with-allow-rules`' business.
fn is_default_deny(policy: &Policy, direction: Direction) -> bool {
    policy.pod_selector.is_empty() && policy.rules(direction).is_some()
}

fn no_default_deny(engine: &Engine<'_>, out: &mut Vec<Finding>) {
    let cluster = engine.cluster();
    for ns in &cluster.namespaces {
        if !cluster.workloads.iter().any(|w| w.namespace == ns.name) {
            continue;
        }
        let policies: Vec<&Policy> = cluster
            .policies
            .iter()
            .filter(|p| p.namespace == ns.name)
            .collect();
        let missing: Vec<&str> = [
            (Direction::Ingress, "Ingress"),
            (Direction::Egress, "Egress"),
        ]
        .into_iter()
        .filter(|(d, _)| !policies.iter().any(|p| is_default_deny(p, *d)))
        .map(|(_, name)| name)
        .collect();
        if missing.is_empty() {
            continue;
        }
        out.push(Finding {
            check: "no-default-deny",
            namespace: ns.name.clone(),
            policy: None,
            message: format!(
                "namespace {} has no default-deny for {}: pods that no policy selects accept/open every connection",
                ns.name,
                missing.join(" and ")
            ),
            fix: format!(
                "apply: {{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {{name: default-deny, namespace: {}}}, spec: {{podSelector: {{}}, policyTypes: [{}]}}}}",
                ns.name,
                missing.join(", ")
            ),
        });
    }
}

fn selects_no_pods(engine: &Engine<'_>, pi: usize, policy: &Policy, out: &mut Vec<Finding>) {
    if !engine.selected_by(pi).is_empty() {
        return;
    }
    let cluster = engine.cluster();
    let in_ns: Vec<String> = cluster
        .workloads
        .iter()
        .filter(|w| w.namespace == policy.namespace)
        .map(|w| w.peer_name())
        .collect();
    out.push(Finding {
        check: "selects-no-pods",
        namespace: policy.namespace.clone(),
        policy: Some(policy.full_name()),
        message: format!(
            "spec.podSelector `{}` selects no pod in namespace {} ({})",
            policy.pod_selector,
            policy.namespace,
            if in_ns.is_empty() {
                "the namespace has no workloads in the manifests".to_string()
            } else {
                format!("its workloads: {}", in_ns.join(", "))
            }
        ),
        fix: "make spec.podSelector match the labels of the pod template it is meant for, or move the policy to that pod's namespace".into(),
    });
}

fn rule_is_dns_only(rule: &Rule) -> bool {
    !rule.ports.is_empty()
        && rule
            .ports
            .iter()
            .all(|p| matches!(p.port, PortMatch::Range(DNS_PORT, DNS_PORT)))
}

fn empty_selector_with_allow_rules(policy: &Policy, out: &mut Vec<Finding>) {
    if !policy.pod_selector.is_empty() {
        return;
    }
    for direction in [Direction::Ingress, Direction::Egress] {
        let rules = policy.rules(direction).unwrap_or_default();
        // DNS egress for the whole namespace is the recommended pattern, not a mistake.
        let opening: Vec<usize> = rules
            .iter()
            .enumerate()
            .filter(|(_, r)| !(direction == Direction::Egress && rule_is_dns_only(r)))
            .map(|(i, _)| i)
            .collect();
        if opening.is_empty() {
            continue;
        }
        out.push(Finding {
            check: "empty-selector-with-allow-rules",
            namespace: policy.namespace.clone(),
            policy: Some(policy.full_name()),
            message: format!(
                "spec.podSelector is empty, so spec.{direction} rule(s) {} open every pod of namespace {}",
                opening.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
                policy.namespace
            ),
            fix: "set spec.podSelector to the labels of the workload the rules are meant for (keep `podSelector: {}` for default-deny policies without rules)".into(),
        });
    }
}

fn split_namespace_and_pod_selector(policy: &Policy, out: &mut Vec<Finding>) {
    for direction in [Direction::Ingress, Direction::Egress] {
        for (ri, rule) in policy
            .rules(direction)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let ns_only = rule.peers.iter().position(|p| {
                matches!(p, Peer::Pods { namespaces: NamespaceMatch::Selector(s), pods: None } if !s.is_empty())
            });
            let pods_only = rule.peers.iter().position(|p| {
                matches!(p, Peer::Pods { namespaces: NamespaceMatch::Own, pods: Some(s) } if !s.is_empty())
            });
            let (Some(n), Some(p)) = (ns_only, pods_only) else {
                continue;
            };
            let peers = match direction {
                Direction::Ingress => "from",
                Direction::Egress => "to",
            };
            out.push(Finding {
                check: "split-namespace-and-pod-selector",
                namespace: policy.namespace.clone(),
                policy: Some(policy.full_name()),
                message: format!(
                    "spec.{direction}[{ri}].{peers}[{n}] (namespaceSelector) and .{peers}[{p}] (podSelector) are two peers, OR-ed: every pod of the selected namespaces, plus the selected pods of {} only",
                    policy.namespace
                ),
                fix: format!(
                    "if you meant those pods in those namespaces, put both selectors in one peer (one `-` item): `- namespaceSelector: ...` followed by `  podSelector: ...` in spec.{direction}[{ri}].{peers}"
                ),
            });
        }
    }
}

/// Whether a rule admits DNS (UDP 53).
fn rule_allows_dns(rule: &Rule) -> bool {
    rule.ports.is_empty()
        || rule.ports.iter().any(|p| {
            p.protocol == Protocol::Udp
                && match p.port {
                    PortMatch::All => true,
                    PortMatch::Range(lo, hi) => lo <= DNS_PORT && DNS_PORT <= hi,
                    PortMatch::Named(_) => false,
                }
        })
}

fn egress_without_dns(engine: &Engine<'_>, out: &mut Vec<Finding>) {
    let cluster = engine.cluster();
    // Grouped by the set of isolating policies, so one mistake is one finding.
    let mut groups: BTreeMap<Vec<u32>, Vec<String>> = BTreeMap::new();
    for (e, ep) in cluster.endpoints.iter().enumerate() {
        let isolating = engine.isolating(e, Direction::Egress);
        if isolating.is_empty() {
            continue;
        }
        let has_dns = isolating.iter().any(|&pi| {
            cluster.policies[pi as usize]
                .egress
                .iter()
                .flatten()
                .any(rule_allows_dns)
        });
        if !has_dns {
            let name = cluster.workloads[ep.workload].peer_name();
            let list = groups.entry(isolating.to_vec()).or_default();
            if !list.contains(&name) {
                list.push(name);
            }
        }
    }
    for (policies, workloads) in groups {
        let first = &cluster.policies[policies[0] as usize];
        let names: Vec<String> = policies
            .iter()
            .map(|&p| cluster.policies[p as usize].full_name())
            .collect();
        out.push(Finding {
            check: "egress-without-dns",
            namespace: first.namespace.clone(),
            policy: Some(first.full_name()),
            message: format!(
                "{} isolate(s) {} for egress and no rule allows DNS (UDP 53): name lookups will fail",
                names.join(", "),
                workloads.join(", ")
            ),
            fix: "add an egress rule: `- to: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}, podSelector: {matchLabels: {k8s-app: kube-dns}}}]` with `ports: [{protocol: UDP, port: 53}, {protocol: TCP, port: 53}]`".into(),
        });
    }
}

fn dns_peer_without_namespace_selector(policy: &Policy, out: &mut Vec<Finding>) {
    if policy.namespace == "kube-system" {
        return;
    }
    for (ri, rule) in policy.egress.iter().flatten().enumerate() {
        let targets_dns = rule.ports.iter().any(
            |p| matches!(p.port, PortMatch::Range(lo, hi) if lo <= DNS_PORT && DNS_PORT <= hi),
        );
        if !targets_dns {
            continue;
        }
        for (pi, peer) in rule.peers.iter().enumerate() {
            if let Peer::Pods {
                namespaces: NamespaceMatch::Own,
                pods: Some(_),
            } = peer
            {
                out.push(Finding {
                    check: "dns-peer-without-namespace-selector",
                    namespace: policy.namespace.clone(),
                    policy: Some(policy.full_name()),
                    message: format!(
                        "spec.egress[{ri}].to[{pi}] allows port 53 to pods selected by podSelector alone, i.e. only in namespace {}, where the cluster DNS does not run",
                        policy.namespace
                    ),
                    fix: format!(
                        "add `namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: kube-system}}}}` to the same peer spec.egress[{ri}].to[{pi}]"
                    ),
                });
            }
        }
    }
}

fn service_port_not_container_port(
    engine: &Engine<'_>,
    pi: usize,
    policy: &Policy,
    out: &mut Vec<Finding>,
) {
    let cluster = engine.cluster();
    for direction in [Direction::Ingress, Direction::Egress] {
        for (ri, rule) in policy
            .rules(direction)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            // The pods the port refers to: the policy's own pods (ingress) or the peers (egress).
            let targets: Vec<usize> = match direction {
                Direction::Ingress => engine.selected_by(pi).to_vec(),
                Direction::Egress => (0..cluster.endpoints.len())
                    .filter(|&e| engine.rule_selects(pi, direction, ri, PeerRef::Endpoint(e)))
                    .collect(),
            };
            if targets.is_empty() {
                continue;
            }
            for (port_index, port_rule) in rule.ports.iter().enumerate() {
                let PortMatch::Range(lo, hi) = port_rule.port else {
                    continue;
                };
                if lo != hi {
                    continue;
                }
                let listens = targets.iter().any(|&e| {
                    cluster.endpoints[e]
                        .ports
                        .iter()
                        .any(|p| p.port == lo && p.protocol == port_rule.protocol)
                });
                if listens {
                    continue;
                }
                for svc in &cluster.services {
                    let Some(selector) = &svc.selector else {
                        continue;
                    };
                    if selector.is_empty() {
                        continue;
                    }
                    let backends: Vec<usize> = targets
                        .iter()
                        .copied()
                        .filter(|&e| {
                            let ep = &cluster.endpoints[e];
                            cluster.workloads[ep.workload].namespace == svc.namespace
                                && selector.iter().all(|(k, v)| ep.labels.get(k) == Some(v))
                        })
                        .collect();
                    if backends.is_empty() {
                        continue;
                    }
                    for sp in svc
                        .ports
                        .iter()
                        .filter(|sp| sp.port == lo && sp.protocol == port_rule.protocol)
                    {
                        let target = match &sp.target {
                            Some(TargetPort::Number(n)) if *n != lo => n.to_string(),
                            Some(TargetPort::Name(name)) => {
                                match backends.iter().find_map(|&e| {
                                    cluster.endpoints[e].named_port(name, sp.protocol)
                                }) {
                                    Some(n) if n != lo => n.to_string(),
                                    Some(_) => continue,
                                    None => name.clone(),
                                }
                            }
                            _ => continue,
                        };
                        out.push(Finding {
                            check: "service-port-not-container-port",
                            namespace: policy.namespace.clone(),
                            policy: Some(policy.full_name()),
                            message: format!(
                                "spec.{direction}[{ri}].ports[{port_index}] is {} {lo}, the port of Service {}/{}; no selected pod listens on it (the Service forwards to {target}); NetworkPolicies see the pod's port, after Service translation",
                                port_rule.protocol, svc.namespace, svc.name
                            ),
                            fix: format!(
                                "use the container port: `port: {target}` (protocol {}) in spec.{direction}[{ri}].ports[{port_index}]",
                                port_rule.protocol
                            ),
                        });
                    }
                }
            }
        }
    }
}

/// The text printed by `flowpol lint`.
pub fn render_text(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        let subject = match &f.policy {
            Some(p) => format!("NetworkPolicy {p}"),
            None => format!("namespace {}", f.namespace),
        };
        let _ = writeln!(out, "[{}] {subject}: {}", f.check, f.message);
        let _ = writeln!(out, "  fix: {}", f.fix);
    }
    let _ = writeln!(out, "{} finding(s)", findings.len());
    out
}
