//! `recommend`: least-privilege NetworkPolicies from observed edges, checked by the engine.
//!
//! Per namespace a default-deny (Ingress and Egress) and DNS egress to kube-dns; per
//! workload one policy with the peers and pod ports it was seen using. Peers in the same
//! namespace by podSelector, in other namespaces by namespaceSelector
//! (`kubernetes.io/metadata.name`) AND podSelector in one peer; nodes (kubelet, hostNetwork
//! pods) and outside addresses by ipBlock. Every policy carries its evidence.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::Serialize;
use serde_json::{Value, json};
use thiserror::Error;

use crate::connset::PortSet;
use crate::engine::{Engine, PeerRef, Settings};
use crate::explain::stable_labels;
use crate::flow::Protocol;
use crate::manifest::{LoadedObject, Object};
use crate::model::{Cluster, ModelError, NAMESPACE_NAME_LABEL};
use crate::observe::{EdgeKey, Evidence, Observation, Peer, WorkloadKey};
use crate::selector::Labels;

pub const DNS_NAMESPACE: &str = "kube-system";
pub const MANAGED_BY: &str = "flowpol";

#[derive(Debug, Error)]
pub enum RecommendError {
    #[error(
        "--aggregate-external `{0}`: expected a prefix length, IPv4 or IPv4,IPv6 (e.g. 24 or 24,64), at most 32 for IPv4 and 128 for IPv6"
    )]
    Aggregate(String),
    #[error("a recommended NetworkPolicy {namespace}/{name} is not a valid object: {message}")]
    Invalid {
        namespace: String,
        name: String,
        message: String,
    },
    #[error("checking the recommendation with the engine: {0}")]
    Model(#[from] ModelError),
}

/// Prefix lengths outside addresses are widened to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Aggregate {
    pub v4: u8,
    pub v6: u8,
}

impl Aggregate {
    /// `24` (IPv6 stays /128 → /64 unless given) or `24,64`.
    pub fn parse(text: &str) -> Result<Aggregate, RecommendError> {
        let bad = || RecommendError::Aggregate(text.to_string());
        let (v4, v6) = match text.split_once(',') {
            Some((a, b)) => (a.trim(), Some(b.trim())),
            None => (text.trim(), None),
        };
        let v4: u8 = v4
            .trim_start_matches('/')
            .parse()
            .ok()
            .filter(|n| *n <= 32)
            .ok_or_else(bad)?;
        let v6: u8 = match v6 {
            Some(b) => b
                .trim_start_matches('/')
                .parse()
                .ok()
                .filter(|n| *n <= 128)
                .ok_or_else(bad)?,
            None => 128,
        };
        Ok(Aggregate { v4, v6 })
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Namespaces to write policies for; `None`: every namespace with observed workloads.
    pub namespaces: Option<BTreeSet<String>>,
    pub aggregate_external: Option<Aggregate>,
    /// Workloads observed for less than this get a warning.
    pub min_observed: chrono::Duration,
    /// Namespaces left out when `namespaces` is `None` (e.g. the cluster's own).
    pub skip_namespaces: BTreeSet<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            namespaces: None,
            aggregate_external: None,
            min_observed: chrono::Duration::hours(1),
            skip_namespaces: BTreeSet::new(),
        }
    }
}

/// The cluster's own namespaces: `recommend` leaves them out unless asked (`-A`, `-n`).
pub const SYSTEM_NAMESPACES: [&str; 3] = ["kube-system", "kube-public", "kube-node-lease"];

/// A rule peer.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum PeerPlan {
    /// Pods with these labels, in the policy's namespace (`None`) or another one.
    Pods {
        namespace: Option<String>,
        labels: Labels,
    },
    /// Every pod of every namespace (`namespaceSelector: {}`): kube-dns serves them all.
    AnyPod,
    /// An address block; `node` when it stands for node addresses.
    Cidr {
        cidr: IpNet,
        except: Vec<IpNet>,
        node: bool,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct RulePlan {
    pub peer: PeerPlan,
    pub ports: BTreeSet<(Protocol, u16)>,
    pub evidence: Option<Evidence>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyPlan {
    pub namespace: String,
    pub name: String,
    /// Empty: every pod of the namespace.
    pub selector: Labels,
    pub ingress: Option<Vec<RulePlan>>,
    pub egress: Option<Vec<RulePlan>>,
    pub annotations: BTreeMap<String, String>,
    /// The workload it is for (none for the per-namespace policies).
    pub workload: Option<WorkloadKey>,
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkloadSummary {
    pub workload: WorkloadKey,
    pub policy: Option<String>,
    pub flows: u64,
    pub first_seen: Option<DateTime<Utc>>,
    pub last_seen: Option<DateTime<Utc>>,
    /// Seconds between first and last flow.
    pub observed_seconds: i64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Recommendation {
    pub policies: Vec<PolicyPlan>,
    pub workloads: Vec<WorkloadSummary>,
    pub warnings: Vec<String>,
}

/// The labels kube-dns pods carry: the `kube-system/kube-dns` Service's selector, else the
/// usual `k8s-app: kube-dns`.
pub fn dns_labels(cluster: &Cluster) -> Labels {
    cluster
        .services
        .iter()
        .find(|s| s.namespace == DNS_NAMESPACE && s.name == "kube-dns")
        .and_then(|s| s.selector.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| [("k8s-app".to_string(), "kube-dns".to_string())].into())
}

fn model_workload<'c>(
    cluster: &'c Cluster,
    key: &WorkloadKey,
) -> Option<&'c crate::model::Workload> {
    cluster
        .workloads
        .iter()
        .find(|w| w.namespace == key.namespace && w.kind == key.kind && w.name == key.name)
}

/// All labels a workload's pods carry (model first, then what the flows said).
fn workload_labels(cluster: &Cluster, obs: &Observation, key: &WorkloadKey) -> Labels {
    if let Some(w) = model_workload(cluster, key)
        && let Some(&e) = w.endpoints.first()
    {
        return stable_labels(&cluster.endpoints[e].labels);
    }
    obs.workloads
        .get(key)
        .map(|s| s.labels.clone())
        .unwrap_or_default()
}

/// The labels that select a workload's pods: its controller's selector (from the cluster
/// state, else as the flows recorded it, for a workload gone since), else its pods' stable
/// labels.
pub fn selector_labels(cluster: &Cluster, obs: &Observation, key: &WorkloadKey) -> Labels {
    if let Some(w) = model_workload(cluster, key)
        && let Some(sel) = &w.selector
    {
        // A ReplicaSet's selector carries its pod-template-hash: not stable across rollouts.
        let stable = stable_labels(sel);
        if !stable.is_empty() {
            return stable;
        }
    }
    if model_workload(cluster, key).is_none()
        && let Some(seen) = obs.workloads.get(key)
        && !seen.selector.is_empty()
    {
        return seen.selector.clone();
    }
    workload_labels(cluster, obs, key)
}

const PRIVATE_V4: [&str; 3] = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"];
const PRIVATE_V6: [&str; 1] = ["fc00::/7"];

/// The ipBlock for an outside address: a host prefix, or the aggregate asked for, minus the
/// private ranges it would span.
pub fn external_block(ip: IpAddr, aggregate: Option<Aggregate>) -> (IpNet, Vec<IpNet>) {
    let host = IpNet::from(ip);
    let Some(agg) = aggregate else {
        return (host, Vec::new());
    };
    let len = match ip {
        IpAddr::V4(_) => agg.v4,
        IpAddr::V6(_) => agg.v6,
    };
    let cidr = IpNet::new(ip, len).map(|n| n.trunc()).unwrap_or(host);
    let private: &[&str] = if ip.is_ipv4() {
        &PRIVATE_V4
    } else {
        &PRIVATE_V6
    };
    let except = private
        .iter()
        .filter_map(|p| p.parse::<IpNet>().ok())
        .filter(|p| cidr.contains(p) && *p != cidr && !p.contains(&ip))
        .collect();
    (cidr, except)
}

fn host_block(ip: IpAddr) -> PeerPlan {
    PeerPlan::Cidr {
        cidr: IpNet::from(ip),
        except: Vec::new(),
        node: true,
    }
}

/// Whether an edge goes to kube-dns on port 53 (the namespace's DNS policy covers it).
fn is_dns(edge: &EdgeKey, cluster: &Cluster, obs: &Observation, dns: &Labels) -> bool {
    if edge.port != 53 || !matches!(edge.protocol, Protocol::Udp | Protocol::Tcp) {
        return false;
    }
    match &edge.dst {
        Peer::Workload(k) if k.namespace == DNS_NAMESPACE => {
            let labels = workload_labels(cluster, obs, k);
            dns.iter().all(|(key, v)| labels.get(key) == Some(v))
        }
        _ => false,
    }
}

fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn evidence_text(e: &Evidence) -> String {
    format!(
        "{} flows, first seen {}, last seen {}",
        e.flows,
        e.first_seen
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        e.last_seen
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// One direction's rules being built: per peer, its ports and evidence.
type RulesByPeer = BTreeMap<PeerPlan, (BTreeSet<(Protocol, u16)>, Option<Evidence>)>;

/// Recommends policies for the observed workloads of the namespaces in scope.
pub fn recommend(obs: &Observation, cluster: &Cluster, opts: &Options) -> Recommendation {
    let dns = dns_labels(cluster);
    let mut warnings = Vec::new();
    let in_scope = |ns: &str| {
        !ns.is_empty()
            && match &opts.namespaces {
                Some(set) => set.contains(ns),
                None => !opts.skip_namespaces.contains(ns),
            }
    };

    // Subjects: observed workloads in scope that policies can select.
    let mut subjects: Vec<&WorkloadKey> = Vec::new();
    for (key, seen) in &obs.workloads {
        if !in_scope(&key.namespace) {
            continue;
        }
        let host =
            seen.host_network || model_workload(cluster, key).is_some_and(|w| w.host_network);
        if host {
            warnings.push(format!(
                "{key} uses the node's network (hostNetwork): NetworkPolicies do not apply to it; no policy written, peers reach it by node address"
            ));
            continue;
        }
        subjects.push(key);
    }
    let mut namespaces: BTreeSet<String> = subjects.iter().map(|k| k.namespace.clone()).collect();
    if let Some(set) = &opts.namespaces {
        namespaces.extend(set.iter().cloned());
    }

    let mut policies = Vec::new();
    for ns in &namespaces {
        policies.push(PolicyPlan {
            namespace: ns.clone(),
            name: "default-deny".into(),
            selector: Labels::new(),
            ingress: Some(Vec::new()),
            egress: Some(Vec::new()),
            annotations: [(
                "flowpol.io/reason".to_string(),
                "deny all traffic the other policies of this namespace do not allow".to_string(),
            )]
            .into(),
            workload: None,
        });
        policies.push(PolicyPlan {
            namespace: ns.clone(),
            name: "allow-dns".into(),
            selector: Labels::new(),
            ingress: None,
            egress: Some(vec![RulePlan {
                peer: PeerPlan::Pods {
                    namespace: Some(DNS_NAMESPACE.into()),
                    labels: dns.clone(),
                },
                ports: [(Protocol::Udp, 53), (Protocol::Tcp, 53)].into(),
                evidence: None,
            }]),
            annotations: [(
                "flowpol.io/reason".to_string(),
                "every pod may resolve names through kube-dns".to_string(),
            )]
            .into(),
            workload: None,
        });
        // Workloads the cluster state has here but no flow showed.
        for w in cluster.workloads.iter().filter(|w| &w.namespace == ns) {
            let key = WorkloadKey {
                namespace: w.namespace.clone(),
                kind: w.kind.clone(),
                name: w.name.clone(),
            };
            if !obs.workloads.contains_key(&key) && !w.host_network {
                warnings.push(format!(
                    "{key} was never observed in the window: only default-deny and DNS apply to it, so it will be cut off; observe it longer or leave {ns} out"
                ));
            }
        }
    }

    let mut summaries = Vec::new();
    let mut used_names: BTreeSet<(String, String)> = BTreeSet::new();
    for key in &subjects {
        let seen = &obs.workloads[*key];
        let selector = selector_labels(cluster, obs, key);
        let observed_seconds = (seen.last_seen - seen.first_seen).num_seconds();
        if chrono::Duration::seconds(observed_seconds) < opts.min_observed {
            warnings.push(format!(
                "{key} was observed for only {} (first {}, last {}): traffic it makes less often may be missing",
                human_duration(observed_seconds),
                seen.first_seen.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                seen.last_seen.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ));
        }
        let mut summary = WorkloadSummary {
            workload: (*key).clone(),
            policy: None,
            flows: 0,
            first_seen: Some(seen.first_seen),
            last_seen: Some(seen.last_seen),
            observed_seconds,
        };
        if selector.is_empty() {
            warnings.push(format!(
                "{key} has no labels to select its pods by: no policy written for it (default-deny cuts it off); label its pods"
            ));
            summaries.push(summary);
            continue;
        }
        let mut rules: [RulesByPeer; 2] = [BTreeMap::new(), BTreeMap::new()];
        let mut total: Option<Evidence> = None;
        // kube-dns answers every pod (each namespace's allow-dns lets them ask): its ingress
        // on 53 is one rule for every pod, not the list of clients seen so far.
        let serves_dns = key.namespace == DNS_NAMESPACE && {
            let labels = workload_labels(cluster, obs, key);
            dns.iter().all(|(k, v)| labels.get(k) == Some(v))
        };
        if serves_dns {
            rules[0].insert(
                PeerPlan::AnyPod,
                ([(Protocol::Udp, 53), (Protocol::Tcp, 53)].into(), None),
            );
        }
        for (edge, evidence) in &obs.edges {
            let (dir, other) = if edge.dst.workload() == Some(*key) {
                (0, &edge.src)
            } else if edge.src.workload() == Some(*key) {
                if is_dns(edge, cluster, obs, &dns) {
                    continue;
                }
                (1, &edge.dst)
            } else {
                continue;
            };
            // A workload talking to itself needs both its egress and its ingress.
            let directions: &[(usize, &Peer)] = if edge.src == edge.dst {
                &[(0, &edge.src), (1, &edge.dst)]
            } else {
                &[(dir, other)]
            };
            for &(dir, other) in directions {
                if serves_dns
                    && dir == 0
                    && edge.port == 53
                    && matches!(edge.protocol, Protocol::Udp | Protocol::Tcp)
                    && matches!(other, Peer::Workload(_))
                {
                    if let Some((_, e)) = rules[0].get_mut(&PeerPlan::AnyPod) {
                        match e {
                            Some(e) => e.absorb(evidence),
                            None => *e = Some(*evidence),
                        }
                    }
                    match &mut total {
                        Some(t) => t.absorb(evidence),
                        None => total = Some(*evidence),
                    }
                    continue;
                }
                if !edge.protocol.has_ports() {
                    warnings.push(format!(
                        "{} → {} {}: NetworkPolicy cannot allow {} alone (only TCP, UDP and SCTP ports); not included",
                        edge.src, edge.dst, edge.protocol, edge.protocol
                    ));
                    continue;
                }
                let peer = match other {
                    Peer::Workload(k) if k.namespace.is_empty() => {
                        warnings.push(format!(
                            "{key}: peer pod {} has no namespace in the flows; not included",
                            k.name
                        ));
                        continue;
                    }
                    Peer::Workload(k) => {
                        let labels = selector_labels(cluster, obs, k);
                        if labels.is_empty() {
                            warnings.push(format!(
                                "{key}: peer {k} has no labels to select it by; not included"
                            ));
                            continue;
                        }
                        PeerPlan::Pods {
                            namespace: (k.namespace != key.namespace).then(|| k.namespace.clone()),
                            labels,
                        }
                    }
                    Peer::Node { ip } | Peer::ApiServer { ip } => host_block(*ip),
                    Peer::External { ip } => {
                        let (cidr, except) = external_block(*ip, opts.aggregate_external);
                        PeerPlan::Cidr {
                            cidr,
                            except,
                            node: false,
                        }
                    }
                };
                let entry = rules[dir].entry(peer).or_default();
                entry.0.insert((edge.protocol, edge.port));
                match &mut entry.1 {
                    Some(e) => e.absorb(evidence),
                    None => entry.1 = Some(*evidence),
                }
                if dir == 0 || edge.src != edge.dst {
                    match &mut total {
                        Some(t) => t.absorb(evidence),
                        None => total = Some(*evidence),
                    }
                }
            }
        }
        let [ingress, egress] = rules.map(|r| {
            r.into_iter()
                .map(|(peer, (ports, evidence))| RulePlan {
                    peer,
                    ports,
                    evidence,
                })
                .collect::<Vec<_>>()
        });
        let Some(total) = total else {
            warnings.push(format!(
                "{key} was seen only in dropped or unanswered flows (or DNS): no policy beyond default-deny and DNS written for it"
            ));
            summaries.push(summary);
            continue;
        };
        let mut name = format!("allow-{}", key.name);
        if !used_names.insert((key.namespace.clone(), name.clone())) {
            name = format!("allow-{}-{}", key.name, key.kind.to_ascii_lowercase());
            used_names.insert((key.namespace.clone(), name.clone()));
        }
        let mut annotations = BTreeMap::new();
        annotations.insert("flowpol.io/workload".to_string(), key.to_string());
        annotations.insert("flowpol.io/evidence".to_string(), evidence_text(&total));
        annotations.insert(
            "flowpol.io/observed-for".to_string(),
            human_duration(observed_seconds),
        );
        let mut per_rule = Vec::new();
        for (field, list) in [("ingress", &ingress), ("egress", &egress)] {
            for (i, r) in list.iter().enumerate() {
                if let Some(e) = &r.evidence {
                    per_rule.push(format!("{field}[{i}]: {}", evidence_text(e)));
                }
            }
        }
        annotations.insert("flowpol.io/rule-evidence".to_string(), per_rule.join("\n"));
        summary.policy = Some(format!("{}/{name}", key.namespace));
        summary.flows = total.flows;
        policies.push(PolicyPlan {
            namespace: key.namespace.clone(),
            name,
            selector,
            ingress: (!ingress.is_empty()).then_some(ingress),
            egress: (!egress.is_empty()).then_some(egress),
            annotations,
            workload: Some((*key).clone()),
        });
        summaries.push(summary);
    }
    warnings.dedup();
    Recommendation {
        policies,
        workloads: summaries,
        warnings,
    }
}

fn ports_json(ports: &BTreeSet<(Protocol, u16)>) -> Value {
    Value::Array(
        ports
            .iter()
            .map(|(p, n)| json!({"protocol": p.to_string(), "port": n}))
            .collect(),
    )
}

fn peer_json(peer: &PeerPlan) -> Value {
    match peer {
        PeerPlan::Pods { namespace, labels } => {
            let pods = json!({"matchLabels": labels});
            match namespace {
                None => json!({ "podSelector": pods }),
                Some(ns) => json!({
                    "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: ns}},
                    "podSelector": pods,
                }),
            }
        }
        PeerPlan::AnyPod => json!({ "namespaceSelector": {} }),
        PeerPlan::Cidr { cidr, except, .. } => {
            let mut block = json!({"cidr": cidr.to_string()});
            if !except.is_empty() {
                block["except"] = except.iter().map(|e| e.to_string()).collect();
            }
            json!({ "ipBlock": block })
        }
    }
}

fn metadata(plan: &PolicyPlan) -> Value {
    json!({
        "name": plan.name,
        "namespace": plan.namespace,
        "labels": {"app.kubernetes.io/managed-by": MANAGED_BY},
        "annotations": plan.annotations,
    })
}

impl PolicyPlan {
    /// The NetworkPolicy (networking.k8s.io/v1) as JSON.
    pub fn to_json(&self) -> Value {
        let selector = if self.selector.is_empty() {
            json!({})
        } else {
            json!({"matchLabels": self.selector})
        };
        let mut types = Vec::new();
        let mut spec = json!({ "podSelector": selector });
        for (field, peers_key, rules, ty) in [
            ("ingress", "from", &self.ingress, "Ingress"),
            ("egress", "to", &self.egress, "Egress"),
        ] {
            if let Some(rules) = rules {
                types.push(ty);
                if !rules.is_empty() {
                    spec[field] = rules
                        .iter()
                        .map(|r| json!({ peers_key: [peer_json(&r.peer)], "ports": ports_json(&r.ports) }))
                        .collect();
                }
            }
        }
        spec["policyTypes"] = json!(types);
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata(self),
            "spec": spec,
        })
    }

    /// The typed object (checked by k8s-openapi's deserializer).
    pub fn to_network_policy(&self) -> Result<NetworkPolicy, RecommendError> {
        serde_json::from_value(self.to_json()).map_err(|e| RecommendError::Invalid {
            namespace: self.namespace.clone(),
            name: self.name.clone(),
            message: e.to_string(),
        })
    }

    /// The same rules as a CiliumNetworkPolicy (cilium.io/v2).
    pub fn to_cilium_json(&self) -> Value {
        let selector = if self.selector.is_empty() {
            json!({})
        } else {
            json!({"matchLabels": self.selector})
        };
        let mut spec = json!({ "endpointSelector": selector });
        for (field, prefix, rules) in [
            ("ingress", "from", &self.ingress),
            ("egress", "to", &self.egress),
        ] {
            let Some(rules) = rules else { continue };
            if rules.is_empty() {
                // An empty rule selects nothing but puts the endpoints in default deny.
                spec[field] = json!([{}]);
                continue;
            }
            spec[field] = rules
                .iter()
                .map(|r| {
                    let mut rule = match &r.peer {
                        PeerPlan::Pods { namespace, labels } => {
                            let mut m: BTreeMap<String, String> = labels.clone();
                            if let Some(ns) = namespace {
                                m.insert("k8s:io.kubernetes.pod.namespace".into(), ns.clone());
                            }
                            json!({ format!("{prefix}Endpoints"): [{"matchLabels": m}] })
                        }
                        PeerPlan::AnyPod => {
                            json!({ format!("{prefix}Entities"): ["cluster"] })
                        }
                        PeerPlan::Cidr { node: true, .. } => {
                            json!({ format!("{prefix}Entities"): ["host", "remote-node"] })
                        }
                        PeerPlan::Cidr { cidr, except, .. } => {
                            let mut set = json!({"cidr": cidr.to_string()});
                            if !except.is_empty() {
                                set["except"] = except.iter().map(|e| e.to_string()).collect();
                            }
                            json!({ format!("{prefix}CIDRSet"): [set] })
                        }
                    };
                    rule["toPorts"] = json!([{
                        "ports": r.ports.iter().map(|(p, n)| json!({"port": n.to_string(), "protocol": p.to_string()})).collect::<Vec<_>>()
                    }]);
                    rule
                })
                .collect();
        }
        json!({
            "apiVersion": "cilium.io/v2",
            "kind": "CiliumNetworkPolicy",
            "metadata": metadata(self),
            "spec": spec,
        })
    }
}

/// An edge the recommended policies would deny (a bug if ever non-empty).
#[derive(Debug, Clone, Serialize)]
pub struct Denied {
    pub edge: EdgeKey,
    pub reason: String,
}

/// A pair the policies allow more than was observed.
#[derive(Debug, Clone, Serialize)]
pub struct ExtraAllowed {
    pub from: String,
    pub to: String,
    /// Allowed connections, e.g. `TCP 8080,UDP 53`.
    pub allowed: String,
    /// Ports allowed and never observed between the two.
    pub unobserved_ports: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    /// Edges checked (each pod-pair combination of their workloads).
    pub edges_checked: u64,
    pub denied: Vec<Denied>,
    /// Edges whose ends the engine cannot place (a pod without namespace, ICMP).
    pub unverifiable: Vec<String>,
    /// Pairs of workloads allowed to talk that never did, or on ports they never used.
    pub extra: Vec<ExtraAllowed>,
    pub extra_pairs: u64,
    pub extra_ports: u64,
}

/// A pod standing for an observed workload the cluster state lacks (labels from the flows).
pub fn synthetic_pod(key: &WorkloadKey, labels: &Labels) -> Value {
    let mut meta = json!({
        "name": format!("{}-observed", key.name),
        "namespace": key.namespace,
        "labels": labels,
    });
    if key.kind != "Pod" {
        meta["ownerReferences"] = json!([{
            "apiVersion": "apps/v1", "kind": key.kind, "name": key.name,
            "uid": "observed", "controller": true,
        }]);
    } else {
        meta["name"] = json!(key.name);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"containers": [{"name": "observed"}]},
    })
}

/// Cluster state for the engine: the given objects (their NetworkPolicies replaced by
/// `policies` when `replace_policies`), plus a pod for each observed workload they lack.
pub fn cluster_with(
    base: &[LoadedObject],
    obs: &Observation,
    policies: Vec<NetworkPolicy>,
    replace_policies: bool,
) -> Result<Cluster, ModelError> {
    let mut objects: Vec<LoadedObject> = base
        .iter()
        .filter(|o| !replace_policies || !matches!(o.object, Object::NetworkPolicy(_)))
        .cloned()
        .collect();
    let known = Cluster::from_objects(
        objects
            .iter()
            .filter(|o| !matches!(o.object, Object::NetworkPolicy(_)))
            .cloned()
            .collect(),
    )?;
    let source = PathBuf::from("<observed flows>");
    for (key, seen) in &obs.workloads {
        if key.namespace.is_empty() || model_workload(&known, key).is_some() {
            continue;
        }
        let pod = synthetic_pod(key, &seen.labels);
        if let Ok(pod) = serde_json::from_value(pod) {
            objects.push(LoadedObject {
                source: source.clone(),
                object: Object::Pod(Box::new(pod)),
            });
        }
    }
    let recommended = PathBuf::from("<recommended>");
    for p in policies {
        objects.push(LoadedObject {
            source: recommended.clone(),
            object: Object::NetworkPolicy(Box::new(p)),
        });
    }
    Cluster::from_objects(objects)
}

/// The engine's peers for an observed peer.
pub fn peer_refs(cluster: &Cluster, peer: &Peer) -> Vec<PeerRef> {
    match peer {
        Peer::Workload(k) => model_workload(cluster, k)
            .map(|w| w.endpoints.iter().map(|&e| PeerRef::Endpoint(e)).collect())
            .unwrap_or_default(),
        other => other.ip().map(PeerRef::Ip).into_iter().collect(),
    }
}

fn port_count(set: &PortSet) -> u64 {
    set.ranges()
        .iter()
        .map(|(lo, hi)| u64::from(*hi) - u64::from(*lo) + 1)
        .sum()
}

/// Checks a recommendation: every observed edge allowed; what else is allowed between the
/// workloads of the namespaces it covers.
pub fn verify(
    base: &[LoadedObject],
    obs: &Observation,
    rec: &Recommendation,
) -> Result<Verification, RecommendError> {
    let policies = rec
        .policies
        .iter()
        .map(PolicyPlan::to_network_policy)
        .collect::<Result<Vec<_>, _>>()?;
    let cluster = cluster_with(base, obs, policies, true)?;
    let engine = Engine::new(&cluster, Settings::default());
    let mut out = Verification::default();
    let mut observed: BTreeMap<(usize, usize), BTreeSet<(Protocol, u16)>> = BTreeMap::new();
    for edge in obs.edges.keys() {
        if !edge.protocol.has_ports() {
            out.unverifiable
                .push(format!("{} → {} {}", edge.src, edge.dst, edge.protocol));
            continue;
        }
        let srcs = peer_refs(&cluster, &edge.src);
        let dsts = peer_refs(&cluster, &edge.dst);
        if srcs.is_empty() || dsts.is_empty() {
            out.unverifiable.push(format!(
                "{} → {} {}/{}",
                edge.src, edge.dst, edge.port, edge.protocol
            ));
            continue;
        }
        for &s in &srcs {
            for &d in &dsts {
                out.edges_checked += 1;
                let v = engine.verdict(s, d, edge.protocol, edge.port);
                if !v.allowed {
                    let side = if v.egress.allows() {
                        "ingress"
                    } else {
                        "egress"
                    };
                    out.denied.push(Denied {
                        edge: edge.clone(),
                        reason: format!("denied on the {side} side"),
                    });
                }
                if let (PeerRef::Endpoint(a), PeerRef::Endpoint(b)) = (s, d) {
                    observed
                        .entry((a, b))
                        .or_default()
                        .insert((edge.protocol, edge.port));
                }
            }
        }
    }
    // What else is allowed: every endpoint pair with an end in a covered namespace.
    let covered: BTreeSet<&str> = rec.policies.iter().map(|p| p.namespace.as_str()).collect();
    let ns_of = |e: usize| {
        cluster.workloads[cluster.endpoints[e].workload]
            .namespace
            .as_str()
    };
    let n = cluster.endpoints.len();
    for a in 0..n {
        for b in 0..n {
            if !covered.contains(ns_of(a)) && !covered.contains(ns_of(b)) {
                continue;
            }
            let conns = engine.allowed_conns(PeerRef::Endpoint(a), PeerRef::Endpoint(b));
            if conns.is_empty() {
                continue;
            }
            let seen = observed.get(&(a, b));
            let mut extra = 0u64;
            for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
                let set = conns.ports(proto).expect("port protocol");
                let used = seen.map_or(0, |s| {
                    s.iter()
                        .filter(|(p, port)| *p == proto && set.contains(*port))
                        .count() as u64
                });
                extra += port_count(set) - used;
            }
            if extra == 0 {
                continue;
            }
            // DNS to kube-dns is allowed to every pod on purpose.
            let dns_only = ns_of(b) == DNS_NAMESPACE
                && conns.tcp.ranges() == [(53, 53)]
                && conns.udp.ranges() == [(53, 53)]
                && conns.sctp.is_empty();
            if dns_only {
                continue;
            }
            out.extra_pairs += 1;
            out.extra_ports += extra;
            if out.extra.len() < 50 {
                out.extra.push(ExtraAllowed {
                    from: crate::explain::peer_name(&cluster, PeerRef::Endpoint(a)),
                    to: crate::explain::peer_name(&cluster, PeerRef::Endpoint(b)),
                    allowed: conns.to_string(),
                    unobserved_ports: extra,
                });
            }
        }
    }
    Ok(out)
}
