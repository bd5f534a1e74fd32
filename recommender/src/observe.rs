//! `observe`: flows folded into workload-level edges, the input of recommend, audit and diff.
//!
//! Each flow end becomes a [`Peer`]: a workload (namespace, kind, name), a node address, the
//! API server, or an outside address. A destination still named by a Service's cluster IP is
//! resolved here to the Service's backend workloads at the pod port (targetPort, named ports
//! resolved on the backend), so no edge ever carries a Service port. Edges count flows,
//! packets and bytes with first and last seen.
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::explain::stable_labels;
use crate::flow::{Endpoint, EndpointKind, FlowRecord, Protocol, Verdict};
use crate::model::{Cluster, TargetPort};
use crate::selector::Labels;

/// A workload by name: `namespace/name[Kind]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct WorkloadKey {
    pub namespace: String,
    pub kind: String,
    pub name: String,
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}[{}]", self.namespace, self.name, self.kind)
    }
}

/// One end of an observed edge.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Peer {
    Workload(WorkloadKey),
    /// A node address: kubelet probes, node processes, hostNetwork pods.
    Node {
        ip: IpAddr,
    },
    /// The Kubernetes API server (the `default/kubernetes` Service's endpoints).
    ApiServer {
        ip: IpAddr,
    },
    External {
        ip: IpAddr,
    },
}

impl Peer {
    pub fn workload(&self) -> Option<&WorkloadKey> {
        match self {
            Peer::Workload(w) => Some(w),
            _ => None,
        }
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Workload(_) => None,
            Peer::Node { ip } | Peer::ApiServer { ip } | Peer::External { ip } => Some(*ip),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Workload(w) => w.fmt(f),
            Peer::Node { ip } => write!(f, "node:{ip}"),
            Peer::ApiServer { ip } => write!(f, "apiserver:{ip}"),
            Peer::External { ip } => write!(f, "external:{ip}"),
        }
    }
}

/// Source, destination, protocol and destination pod port (0 for ICMP).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct EdgeKey {
    pub src: Peer,
    pub dst: Peer,
    pub protocol: Protocol,
    pub port: u16,
}

/// How much traffic backs an edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub flows: u64,
    pub packets: u64,
    pub bytes: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
}

impl Evidence {
    pub fn of(f: &FlowRecord) -> Self {
        Evidence {
            flows: f.flows(),
            packets: f.packets + f.reply_packets,
            bytes: f.bytes + f.reply_bytes,
            first_seen: f.first_seen,
            last_seen: f.last_seen,
        }
    }

    pub fn absorb(&mut self, other: &Evidence) {
        self.flows += other.flows;
        self.packets += other.packets;
        self.bytes += other.bytes;
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
    }
}

/// What was seen of one workload.
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadSeen {
    /// Its pods' labels as the flows carried them, rollout labels left out.
    pub labels: Labels,
    /// Its controller's selector as the flows carried it (empty when they did not).
    pub selector: Labels,
    pub ips: BTreeSet<IpAddr>,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    /// Seen at a node address (hostNetwork).
    pub host_network: bool,
}

/// Flows left out of the edges, and why.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Skipped {
    /// Dropped by the kernel: not evidence of a wanted connection.
    pub dropped: u64,
    /// TCP SYN never answered.
    pub unanswered: u64,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Observation {
    pub edges: BTreeMap<EdgeKey, Evidence>,
    pub workloads: BTreeMap<WorkloadKey, WorkloadSeen>,
    pub skipped: Skipped,
    /// Earliest first_seen and latest last_seen over the forwarded flows.
    pub window: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// Looks addresses and Service cluster IPs up in the cluster model.
pub struct Resolver<'c> {
    cluster: &'c Cluster,
    node_ips: HashMap<IpAddr, usize>,
    services: HashMap<IpAddr, usize>,
    pod_ips: HashMap<IpAddr, usize>,
}

impl<'c> Resolver<'c> {
    pub fn new(cluster: &'c Cluster) -> Self {
        let mut node_ips = HashMap::new();
        for (i, n) in cluster.nodes.iter().enumerate() {
            for ip in &n.addresses {
                node_ips.insert(*ip, i);
            }
        }
        let mut services = HashMap::new();
        for (i, s) in cluster.services.iter().enumerate() {
            for ip in &s.cluster_ips {
                services.insert(*ip, i);
            }
        }
        let mut pod_ips = HashMap::new();
        for (e, ep) in cluster.endpoints.iter().enumerate() {
            for ip in &ep.ips {
                pod_ips.insert(*ip, e);
            }
        }
        Resolver {
            cluster,
            node_ips,
            services,
            pod_ips,
        }
    }

    pub fn is_node_address(&self, ip: IpAddr) -> bool {
        self.node_ips.contains_key(&ip)
    }

    fn model_key(&self, workload: usize) -> WorkloadKey {
        let w = &self.cluster.workloads[workload];
        WorkloadKey {
            namespace: w.namespace.clone(),
            kind: w.kind.clone(),
            name: w.name.clone(),
        }
    }

    fn host_network(&self, key: &WorkloadKey) -> bool {
        self.cluster.workloads.iter().any(|w| {
            w.host_network
                && w.namespace == key.namespace
                && w.kind == key.kind
                && w.name == key.name
        })
    }

    /// The peer an endpoint names (its identity first, the model's addresses next).
    pub fn peer(&self, e: &Endpoint) -> Peer {
        if let Some(ns) = &e.namespace {
            let key = match (&e.workload, &e.pod) {
                (Some(w), _) => Some(WorkloadKey {
                    namespace: ns.clone(),
                    kind: w.kind.clone(),
                    name: w.name.clone(),
                }),
                (None, Some(pod)) => Some(WorkloadKey {
                    namespace: ns.clone(),
                    kind: "Pod".into(),
                    name: pod.clone(),
                }),
                _ => None,
            };
            if let Some(key) = key {
                return Peer::Workload(key);
            }
        }
        match e.kind {
            Some(EndpointKind::Node) => return Peer::Node { ip: e.ip },
            Some(EndpointKind::APIServer) => return Peer::ApiServer { ip: e.ip },
            _ => {}
        }
        if let Some(&ep) = self.pod_ips.get(&e.ip) {
            return Peer::Workload(self.model_key(self.cluster.endpoints[ep].workload));
        }
        if self.node_ips.contains_key(&e.ip) {
            return Peer::Node { ip: e.ip };
        }
        if e.kind == Some(EndpointKind::Pod) {
            // A pod the flow names without namespace: keep it apart from the outside world.
            return Peer::Workload(WorkloadKey {
                namespace: String::new(),
                kind: "Pod".into(),
                name: e.ip.to_string(),
            });
        }
        Peer::External { ip: e.ip }
    }

    /// Destinations of a flow: the named peer at its port, or a Service's backends at their
    /// pod ports when the flow still carries the Service's cluster IP.
    pub fn destinations(&self, f: &FlowRecord) -> Vec<(Peer, u16)> {
        let port = if f.protocol.has_ports() {
            f.dst.port
        } else {
            0
        };
        if f.dst.namespace.is_none()
            && let Some(&si) = self.services.get(&f.dst.ip)
        {
            let svc = &self.cluster.services[si];
            let Some(sp) = svc
                .ports
                .iter()
                .find(|p| p.port == f.dst.port && p.protocol == f.protocol)
            else {
                return vec![(Peer::External { ip: f.dst.ip }, port)];
            };
            let Some(selector) = &svc.selector else {
                return vec![(Peer::External { ip: f.dst.ip }, port)];
            };
            let mut out = Vec::new();
            for (wi, w) in self.cluster.workloads.iter().enumerate() {
                if w.namespace != svc.namespace {
                    continue;
                }
                for &e in &w.endpoints {
                    let ep = &self.cluster.endpoints[e];
                    if !selector.iter().all(|(k, v)| ep.labels.get(k) == Some(v)) {
                        continue;
                    }
                    let target = match &sp.target {
                        None => Some(sp.port),
                        Some(TargetPort::Number(n)) => Some(*n),
                        Some(TargetPort::Name(name)) => ep.named_port(name, sp.protocol),
                    };
                    if let Some(t) = target {
                        let item = (Peer::Workload(self.model_key(wi)), t);
                        if !out.contains(&item) {
                            out.push(item);
                        }
                    }
                }
            }
            if !out.is_empty() {
                return out;
            }
        }
        vec![(self.peer(&f.dst), port)]
    }

    /// A workload peer that uses the node's network is seen, and selected, by node address.
    fn as_policy_peer(&self, peer: Peer, ip: IpAddr) -> Peer {
        match &peer {
            Peer::Workload(key) if self.host_network(key) || self.is_node_address(ip) => {
                Peer::Node { ip }
            }
            _ => peer,
        }
    }
}

/// Folds forwarded flows into edges; dropped and unanswered flows are counted apart.
pub fn observe(flows: &[FlowRecord], cluster: &Cluster) -> Observation {
    observe_counted(flows.iter().map(|f| (f, f.flows())), cluster)
}

/// [`observe`] over records that each stand for `count` flows (a store's per-edge aggregate:
/// counters summed, the flows it merged counted), so memory follows edges, not flows.
pub fn observe_counted<'f>(
    flows: impl IntoIterator<Item = (&'f FlowRecord, u64)>,
    cluster: &Cluster,
) -> Observation {
    let resolver = Resolver::new(cluster);
    let mut obs = Observation::default();
    let mut host_network_seen: BTreeSet<WorkloadKey> = BTreeSet::new();
    for (f, count) in flows {
        let mut evidence = Evidence::of(f);
        evidence.flows = count;
        if f.verdict != Verdict::Forwarded {
            // Not evidence of a wanted connection, but its ends exist (audit, drops).
            for (e, peer) in [
                (&f.src, resolver.peer(&f.src)),
                (&f.dst, resolver.peer(&f.dst)),
            ] {
                note_workload(&mut obs, &peer, e, &evidence);
            }
            match f.verdict {
                Verdict::Dropped => obs.skipped.dropped += count,
                _ => obs.skipped.unanswered += count,
            }
            continue;
        }
        obs.window = Some(match obs.window {
            None => (f.first_seen, f.last_seen),
            Some((a, b)) => (a.min(f.first_seen), b.max(f.last_seen)),
        });
        let src_named = resolver.peer(&f.src);
        note_workload(&mut obs, &src_named, &f.src, &evidence);
        let src = resolver.as_policy_peer(src_named.clone(), f.src.ip);
        if src != src_named
            && let Some(k) = src_named.workload()
        {
            host_network_seen.insert(k.clone());
        }
        for (dst_named, port) in resolver.destinations(f) {
            if dst_named.workload().is_some() && f.dst.namespace.is_some() {
                note_workload(&mut obs, &dst_named, &f.dst, &evidence);
            } else if let Some(k) = dst_named.workload() {
                // Resolved through a Service: the flow's labels are not the backend's.
                workload_seen(&mut obs, k, &evidence);
            }
            let dst = resolver.as_policy_peer(dst_named.clone(), f.dst.ip);
            if dst != dst_named
                && let Some(k) = dst_named.workload()
            {
                host_network_seen.insert(k.clone());
            }
            let key = EdgeKey {
                src: src.clone(),
                dst,
                protocol: f.protocol,
                port,
            };
            obs.edges
                .entry(key)
                .and_modify(|e| e.absorb(&evidence))
                .or_insert(evidence);
        }
    }
    for k in host_network_seen {
        if let Some(seen) = obs.workloads.get_mut(&k) {
            seen.host_network = true;
        }
    }
    obs
}

fn note_workload(obs: &mut Observation, peer: &Peer, e: &Endpoint, evidence: &Evidence) {
    let Peer::Workload(key) = peer else {
        return;
    };
    let seen = workload_seen(obs, key, evidence);
    if seen.labels.is_empty() && !e.labels.is_empty() {
        seen.labels = stable_labels(&e.labels);
    }
    if seen.selector.is_empty() && !e.selector.is_empty() {
        seen.selector = stable_labels(&e.selector);
    }
    seen.ips.insert(e.ip);
}

/// What was seen of workload `key`, widened to the time of `evidence`.
fn workload_seen<'o>(
    obs: &'o mut Observation,
    key: &WorkloadKey,
    evidence: &Evidence,
) -> &'o mut WorkloadSeen {
    let seen = obs
        .workloads
        .entry(key.clone())
        .or_insert_with(|| WorkloadSeen {
            labels: Labels::new(),
            selector: Labels::new(),
            ips: BTreeSet::new(),
            first_seen: evidence.first_seen,
            last_seen: evidence.last_seen,
            host_network: false,
        });
    seen.first_seen = seen.first_seen.min(evidence.first_seen);
    seen.last_seen = seen.last_seen.max(evidence.last_seen);
    seen
}
