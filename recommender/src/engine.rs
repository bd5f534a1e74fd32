//! The NetworkPolicy engine: exact networking.k8s.io/v1 verdicts with their reasons.
//!
//! A connection from `src` to `dst` is allowed when the source's egress allows it (or no
//! policy isolates the source for egress) AND the destination's ingress allows it (or no
//! policy isolates the destination for ingress). Policies are additive: one allowing rule
//! among the isolating policies suffices.
//!
//! Indexing does the expensive work once: which policies isolate each endpoint, and for every
//! rule peer the set of endpoints it selects (a bitset). A verdict is then a few bit tests.
use std::collections::HashMap;
use std::net::IpAddr;

use serde::Serialize;

use crate::connset::{ConnSet, PortSet};
use crate::flow::Protocol;
use crate::model::Cluster;
use crate::policy::{Direction, Peer, PortMatch, Rule};

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Whether an ipBlock also selects pods whose IP falls inside it. Upstream's e2e tests
    /// (and CNIs such as Cilium in some modes) expect it does; np-guard's analyzer and other
    /// CNIs treat ipBlocks as cluster-external only.
    pub ipblock_matches_pods: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            ipblock_matches_pods: true,
        }
    }
}

/// One end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerRef {
    /// An endpoint of the cluster model (index into [`Cluster::endpoints`]).
    Endpoint(usize),
    /// An address that is no pod of the model.
    Ip(IpAddr),
}

/// The rule that allowed one side of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RuleRef {
    /// Index into [`Cluster::policies`].
    pub policy: usize,
    pub direction: Direction,
    /// Index of the rule in `spec.ingress` / `spec.egress`.
    pub rule: usize,
    /// Index of the peer in `from` / `to`; `None` when the rule has no peers (all peers).
    pub peer: Option<usize>,
    /// Index in `ports`; `None` when the rule has no ports (all ports).
    pub port: Option<usize>,
}

/// One side (egress of the source, ingress of the destination) of a verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side<'e> {
    /// The end is an external address: NetworkPolicies do not govern it.
    External,
    /// No policy selects the endpoint for this direction: everything is allowed.
    NotIsolated,
    /// Isolated by `isolated_by` (policy indices), and `rule` allows the connection.
    Allowed {
        isolated_by: &'e [u32],
        rule: RuleRef,
    },
    /// Isolated by `isolated_by`, and no rule of theirs allows the connection.
    Denied { isolated_by: &'e [u32] },
}

impl Side<'_> {
    pub fn allows(&self) -> bool {
        !matches!(self, Side::Denied { .. })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict<'e> {
    pub allowed: bool,
    /// The source's egress.
    pub egress: Side<'e>,
    /// The destination's ingress.
    pub ingress: Side<'e>,
}

/// A fixed-size set of endpoint indices.
#[derive(Debug, Clone)]
struct BitSet(Vec<u64>);

impl BitSet {
    fn new(len: usize) -> Self {
        BitSet(vec![0; len.div_ceil(64)])
    }
    fn insert(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    #[inline]
    fn contains(&self, i: usize) -> bool {
        self.0.get(i / 64).is_some_and(|w| w & (1 << (i % 64)) != 0)
    }
}

/// Endpoints selected by each peer of each rule of one direction of one policy.
type RulePeerSets = Vec<Vec<BitSet>>;

pub struct Engine<'c> {
    cluster: &'c Cluster,
    settings: Settings,
    /// Per endpoint, the policies that isolate it for ingress / egress.
    ingress_of: Vec<Vec<u32>>,
    egress_of: Vec<Vec<u32>>,
    /// Per policy, per direction: [rule][peer] → selected endpoints.
    peer_sets: Vec<[RulePeerSets; 2]>,
    /// Per policy, the endpoints its podSelector selects.
    selected: Vec<Vec<usize>>,
}

fn dir_index(direction: Direction) -> usize {
    match direction {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

impl<'c> Engine<'c> {
    /// Indexes the cluster's policies.
    pub fn new(cluster: &'c Cluster, settings: Settings) -> Self {
        let n = cluster.endpoints.len();
        let ns_index: HashMap<&str, usize> = cluster
            .namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| (ns.name.as_str(), i))
            .collect();
        let mut ns_endpoints: Vec<Vec<usize>> = vec![Vec::new(); cluster.namespaces.len()];
        for (e, ep) in cluster.endpoints.iter().enumerate() {
            let ns = &cluster.workloads[ep.workload].namespace;
            if let Some(&i) = ns_index.get(ns.as_str()) {
                ns_endpoints[i].push(e);
            }
        }
        let mut ingress_of = vec![Vec::new(); n];
        let mut egress_of = vec![Vec::new(); n];
        let mut peer_sets = Vec::with_capacity(cluster.policies.len());
        let mut selected_all = Vec::with_capacity(cluster.policies.len());
        // Identical peers (same selectors, same namespace) share one computation.
        let mut cache: HashMap<(&Peer, &str), BitSet> = HashMap::new();
        for (pi, policy) in cluster.policies.iter().enumerate() {
            let own_ns = ns_index.get(policy.namespace.as_str()).copied();
            let selected: Vec<usize> = own_ns
                .map(|ns| {
                    ns_endpoints[ns]
                        .iter()
                        .copied()
                        .filter(|&e| policy.pod_selector.matches(&cluster.endpoints[e].labels))
                        .collect()
                })
                .unwrap_or_default();
            for &e in &selected {
                if policy.ingress.is_some() {
                    ingress_of[e].push(pi as u32);
                }
                if policy.egress.is_some() {
                    egress_of[e].push(pi as u32);
                }
            }
            selected_all.push(selected);
            let mut sets: [RulePeerSets; 2] = [Vec::new(), Vec::new()];
            for direction in [Direction::Ingress, Direction::Egress] {
                for rule in policy.rules(direction).unwrap_or_default() {
                    let mut rule_sets = Vec::with_capacity(rule.peers.len());
                    for peer in &rule.peers {
                        let key = (peer, policy.namespace.as_str());
                        let set = cache
                            .entry(key)
                            .or_insert_with(|| {
                                peer_endpoints(cluster, settings, peer, own_ns, &ns_endpoints)
                            })
                            .clone();
                        rule_sets.push(set);
                    }
                    sets[dir_index(direction)].push(rule_sets);
                }
            }
            peer_sets.push(sets);
        }
        Engine {
            cluster,
            settings,
            ingress_of,
            egress_of,
            peer_sets,
            selected: selected_all,
        }
    }

    pub fn cluster(&self) -> &'c Cluster {
        self.cluster
    }

    pub fn settings(&self) -> Settings {
        self.settings
    }

    /// Policies isolating `endpoint` in `direction`.
    pub fn isolating(&self, endpoint: usize, direction: Direction) -> &[u32] {
        match direction {
            Direction::Ingress => &self.ingress_of[endpoint],
            Direction::Egress => &self.egress_of[endpoint],
        }
    }

    /// Endpoints a policy's podSelector selects.
    pub fn selected_by(&self, policy: usize) -> &[usize] {
        &self.selected[policy]
    }

    /// The endpoint a pod IP belongs to, else the address as an external peer.
    pub fn peer_for_ip(&self, ip: IpAddr) -> PeerRef {
        match self.cluster.endpoint_by_ip(ip) {
            Some(e) => PeerRef::Endpoint(e),
            None => PeerRef::Ip(ip),
        }
    }

    /// Whether peer `peer_index` of rule `rule` selects `other`.
    #[inline]
    fn peer_matches(
        &self,
        policy: usize,
        direction: Direction,
        rule: usize,
        peer_index: usize,
        peer: &Peer,
        other: PeerRef,
    ) -> bool {
        match (peer, other) {
            (Peer::Pods { .. }, PeerRef::Ip(_)) => false,
            (Peer::IpBlock(block), PeerRef::Ip(ip)) => block.contains(ip),
            (_, PeerRef::Endpoint(e)) => {
                self.peer_sets[policy][dir_index(direction)][rule][peer_index].contains(e)
            }
        }
    }

    /// The first peer of `rule` that selects `other`: `Some(None)` when the rule has no peers.
    #[inline]
    fn rule_peer(
        &self,
        policy: usize,
        direction: Direction,
        rule_index: usize,
        rule: &Rule,
        other: PeerRef,
    ) -> Option<Option<usize>> {
        if rule.peers.is_empty() {
            return Some(None);
        }
        rule.peers
            .iter()
            .enumerate()
            .find(|(i, p)| self.peer_matches(policy, direction, rule_index, *i, p, other))
            .map(|(i, _)| Some(i))
    }

    /// The first port of `rule` that admits `protocol`/`port` on `dst`: `Some(None)` when the
    /// rule has no ports. Named ports resolve on the destination pod by name and protocol; a
    /// named port that resolves nowhere admits nothing.
    #[inline]
    fn rule_port(rule: &Rule, protocol: Protocol, port: u16, dst: Option<&crate::model::Endpoint>) -> Option<Option<usize>> {
        if rule.ports.is_empty() {
            return Some(None);
        }
        rule.ports
            .iter()
            .position(|p| {
                p.protocol == protocol
                    && match &p.port {
                        PortMatch::All => true,
                        PortMatch::Range(lo, hi) => *lo <= port && port <= *hi,
                        PortMatch::Named(name) => {
                            dst.and_then(|d| d.named_port(name, protocol)) == Some(port)
                        }
                    }
            })
            .map(Some)
    }

    fn side(
        &self,
        direction: Direction,
        subject: usize,
        other: PeerRef,
        dst: PeerRef,
        protocol: Protocol,
        port: u16,
    ) -> Side<'_> {
        let isolated_by = self.isolating(subject, direction);
        if isolated_by.is_empty() {
            return Side::NotIsolated;
        }
        let dst_endpoint = match dst {
            PeerRef::Endpoint(e) => Some(&self.cluster.endpoints[e]),
            PeerRef::Ip(_) => None,
        };
        for &pi in isolated_by {
            let policy = &self.cluster.policies[pi as usize];
            for (ri, rule) in policy.rules(direction).unwrap_or_default().iter().enumerate() {
                let Some(port_index) = Self::rule_port(rule, protocol, port, dst_endpoint) else {
                    continue;
                };
                if let Some(peer) = self.rule_peer(pi as usize, direction, ri, rule, other) {
                    return Side::Allowed {
                        isolated_by,
                        rule: RuleRef {
                            policy: pi as usize,
                            direction,
                            rule: ri,
                            peer,
                            port: port_index,
                        },
                    };
                }
            }
        }
        Side::Denied { isolated_by }
    }

    /// The verdict for one connection, with its reasons. For protocols without ports (ICMP)
    /// `port` is ignored and only rules without `ports` can allow it.
    pub fn verdict(&self, src: PeerRef, dst: PeerRef, protocol: Protocol, port: u16) -> Verdict<'_> {
        let egress = match src {
            PeerRef::Endpoint(e) => self.side(Direction::Egress, e, dst, dst, protocol, port),
            PeerRef::Ip(_) => Side::External,
        };
        let ingress = match dst {
            PeerRef::Endpoint(e) => self.side(Direction::Ingress, e, src, dst, protocol, port),
            PeerRef::Ip(_) => Side::External,
        };
        Verdict {
            allowed: egress.allows() && ingress.allows(),
            egress,
            ingress,
        }
    }

    /// Every rule that allows one side of a connection (for explanations).
    pub fn allowing_rules(
        &self,
        direction: Direction,
        subject: usize,
        other: PeerRef,
        dst: PeerRef,
        protocol: Protocol,
        port: u16,
    ) -> Vec<RuleRef> {
        let dst_endpoint = match dst {
            PeerRef::Endpoint(e) => Some(&self.cluster.endpoints[e]),
            PeerRef::Ip(_) => None,
        };
        let mut out = Vec::new();
        for &pi in self.isolating(subject, direction) {
            let policy = &self.cluster.policies[pi as usize];
            for (ri, rule) in policy.rules(direction).unwrap_or_default().iter().enumerate() {
                let Some(port_index) = Self::rule_port(rule, protocol, port, dst_endpoint) else {
                    continue;
                };
                if let Some(peer) = self.rule_peer(pi as usize, direction, ri, rule, other) {
                    out.push(RuleRef {
                        policy: pi as usize,
                        direction,
                        rule: ri,
                        peer,
                        port: port_index,
                    });
                }
            }
        }
        out
    }

    /// Connections one side allows: all when not isolated, else the union of the ports of the
    /// rules whose peers select `other`.
    fn side_conns(&self, direction: Direction, subject: usize, other: PeerRef, dst: PeerRef) -> ConnSet {
        let isolated_by = self.isolating(subject, direction);
        if isolated_by.is_empty() {
            return ConnSet::all();
        }
        let dst_endpoint = match dst {
            PeerRef::Endpoint(e) => Some(&self.cluster.endpoints[e]),
            PeerRef::Ip(_) => None,
        };
        let mut out = ConnSet::none();
        for &pi in isolated_by {
            let policy = &self.cluster.policies[pi as usize];
            for (ri, rule) in policy.rules(direction).unwrap_or_default().iter().enumerate() {
                if self.rule_peer(pi as usize, direction, ri, rule, other).is_none() {
                    continue;
                }
                if rule.ports.is_empty() {
                    return ConnSet::all();
                }
                for p in &rule.ports {
                    let ports = match &p.port {
                        PortMatch::All => PortSet::all(),
                        PortMatch::Range(lo, hi) => PortSet::range(*lo, *hi),
                        PortMatch::Named(name) => {
                            match dst_endpoint.and_then(|d| d.named_port(name, p.protocol)) {
                                Some(n) => PortSet::range(n, n),
                                None => continue,
                            }
                        }
                    };
                    out.add(p.protocol, &ports);
                }
            }
        }
        out
    }

    /// Every TCP/UDP/SCTP port `src` may open on `dst`.
    pub fn allowed_conns(&self, src: PeerRef, dst: PeerRef) -> ConnSet {
        let egress = match src {
            PeerRef::Endpoint(e) => self.side_conns(Direction::Egress, e, dst, dst),
            PeerRef::Ip(_) => ConnSet::all(),
        };
        if egress.is_empty() {
            return egress;
        }
        let ingress = match dst {
            PeerRef::Endpoint(e) => self.side_conns(Direction::Ingress, e, src, dst),
            PeerRef::Ip(_) => ConnSet::all(),
        };
        egress.intersection(&ingress)
    }
}

/// Endpoints selected by one rule peer of a policy in namespace `own_ns`.
fn peer_endpoints(
    cluster: &Cluster,
    settings: Settings,
    peer: &Peer,
    own_ns: Option<usize>,
    ns_endpoints: &[Vec<usize>],
) -> BitSet {
    let mut set = BitSet::new(cluster.endpoints.len());
    match peer {
        Peer::IpBlock(block) => {
            if settings.ipblock_matches_pods {
                for (e, ep) in cluster.endpoints.iter().enumerate() {
                    if ep.ips.iter().any(|ip| block.contains(*ip)) {
                        set.insert(e);
                    }
                }
            }
        }
        Peer::Pods { namespaces, pods } => {
            let namespace_indices: Vec<usize> = match namespaces {
                crate::policy::NamespaceMatch::Own => own_ns.into_iter().collect(),
                crate::policy::NamespaceMatch::Selector(sel) => cluster
                    .namespaces
                    .iter()
                    .enumerate()
                    .filter(|(_, ns)| sel.matches(&ns.labels))
                    .map(|(i, _)| i)
                    .collect(),
            };
            for ns in namespace_indices {
                for &e in &ns_endpoints[ns] {
                    if pods
                        .as_ref()
                        .is_none_or(|sel| sel.matches(&cluster.endpoints[e].labels))
                    {
                        set.insert(e);
                    }
                }
            }
        }
    }
    set
}
