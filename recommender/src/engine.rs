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
use crate::policy::{Direction, IpBlock, Peer, PortMatch, PortRule};

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

const NO_NAME: u32 = u32::MAX;

/// A rule port, with a named port interned to a number.
#[derive(Debug, Clone)]
struct CompiledPort {
    protocol: Protocol,
    lo: u16,
    hi: u16,
    /// Interned port name, or [`NO_NAME`] for a numeric (or absent) port.
    name: u32,
}

#[derive(Debug, Clone)]
enum CompiledPeer {
    /// Index into [`Engine::sets`].
    Pods(u32),
    /// Index into [`Engine::ip_blocks`], and the set of pods whose IP it holds.
    IpBlock { block: u32, pods: u32 },
}

/// A slice of an arena: `start..end`.
#[derive(Debug, Clone, Copy)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    fn is_empty(self) -> bool {
        self.start == self.end
    }
    fn range(self) -> std::ops::Range<usize> {
        self.start as usize..self.end as usize
    }
}

/// Per endpoint lists, flattened (one allocation, one indirection).
#[derive(Debug, Clone, Default)]
struct Csr {
    offsets: Vec<u32>,
    data: Vec<u32>,
}

impl Csr {
    fn from_lists(lists: Vec<Vec<u32>>) -> Self {
        let mut csr = Csr {
            offsets: Vec::with_capacity(lists.len() + 1),
            data: Vec::new(),
        };
        csr.offsets.push(0);
        for list in lists {
            csr.data.extend(list);
            csr.offsets.push(csr.data.len() as u32);
        }
        csr
    }
    #[inline]
    fn get(&self, i: usize) -> &[u32] {
        &self.data[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }
}

/// A rule in the form the verdict loop reads: no strings, no nested lookups.
#[derive(Debug, Clone)]
struct CompiledRule {
    policy: u32,
    direction: Direction,
    rule: u32,
    /// Into `peer_arena`; empty: every peer.
    peers: Span,
    /// Into `port_arena`; empty: every port.
    ports: Span,
    /// The rule's ports as written, for connection sets.
    port_rules: Vec<PortRule>,
}

pub struct Engine<'c> {
    cluster: &'c Cluster,
    settings: Settings,
    /// Per endpoint, the policies that isolate it for ingress / egress.
    ingress_of: Vec<Vec<u32>>,
    egress_of: Vec<Vec<u32>>,
    /// Per direction, per endpoint: the rules of its isolating policies, in policy order.
    endpoint_rules: [Csr; 2],
    rules: Vec<CompiledRule>,
    peer_arena: Vec<CompiledPeer>,
    port_arena: Vec<CompiledPort>,
    ip_blocks: Vec<IpBlock>,
    /// Per policy, per direction: its rules' indices into `rules`.
    policy_rules: Vec<[Vec<u32>; 2]>,
    /// Endpoint sets selected by rule peers (deduplicated).
    sets: Vec<BitSet>,
    /// Per endpoint, its named container ports: (interned name, protocol, number).
    named_ports: Vec<Vec<(u32, Protocol, u16)>>,
    /// Per policy, the endpoints its podSelector selects.
    selected: Vec<Vec<usize>>,
    /// Pod IP → endpoint, for flows that carry addresses.
    by_ip: HashMap<IpAddr, usize>,
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
        let mut names: HashMap<&str, u32> = HashMap::new();
        let mut intern = |name: &'c str| -> u32 {
            let next = names.len() as u32;
            *names.entry(name).or_insert(next)
        };
        let named_ports: Vec<Vec<(u32, Protocol, u16)>> = cluster
            .endpoints
            .iter()
            .map(|ep| {
                ep.ports
                    .iter()
                    .filter_map(|p| {
                        p.name
                            .as_deref()
                            .map(|name| (intern(name), p.protocol, p.port))
                    })
                    .collect()
            })
            .collect();

        let mut ingress_of = vec![Vec::new(); n];
        let mut egress_of = vec![Vec::new(); n];
        let mut endpoint_rules: [Vec<Vec<u32>>; 2] = [vec![Vec::new(); n], vec![Vec::new(); n]];
        let mut rules = Vec::new();
        let mut peer_arena = Vec::new();
        let mut port_arena: Vec<CompiledPort> = Vec::new();
        let mut ip_blocks = Vec::new();
        let mut policy_rules = Vec::with_capacity(cluster.policies.len());
        let mut sets: Vec<BitSet> = Vec::new();
        let mut selected_all = Vec::with_capacity(cluster.policies.len());
        // Identical peers (same selectors, same policy namespace) share one set.
        let mut set_index: HashMap<(&Peer, &str), u32> = HashMap::new();
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
            let mut own_rules: [Vec<u32>; 2] = [Vec::new(), Vec::new()];
            for direction in [Direction::Ingress, Direction::Egress] {
                for (ri, rule) in policy
                    .rules(direction)
                    .unwrap_or_default()
                    .iter()
                    .enumerate()
                {
                    let peers_start = peer_arena.len() as u32;
                    for peer in &rule.peers {
                        let set = *set_index
                            .entry((peer, policy.namespace.as_str()))
                            .or_insert_with(|| {
                                sets.push(peer_endpoints(
                                    cluster,
                                    settings,
                                    peer,
                                    own_ns,
                                    &ns_endpoints,
                                ));
                                (sets.len() - 1) as u32
                            });
                        peer_arena.push(match peer {
                            Peer::Pods { .. } => CompiledPeer::Pods(set),
                            Peer::IpBlock(block) => {
                                ip_blocks.push(block.clone());
                                CompiledPeer::IpBlock {
                                    block: (ip_blocks.len() - 1) as u32,
                                    pods: set,
                                }
                            }
                        });
                    }
                    let peers = Span {
                        start: peers_start,
                        end: peer_arena.len() as u32,
                    };
                    let ports_start = port_arena.len() as u32;
                    port_arena.extend(rule.ports.iter().map(|p| match &p.port {
                        PortMatch::All => CompiledPort {
                            protocol: p.protocol,
                            lo: 1,
                            hi: u16::MAX,
                            name: NO_NAME,
                        },
                        PortMatch::Range(lo, hi) => CompiledPort {
                            protocol: p.protocol,
                            lo: *lo,
                            hi: *hi,
                            name: NO_NAME,
                        },
                        PortMatch::Named(name) => CompiledPort {
                            protocol: p.protocol,
                            lo: 1,
                            hi: 0,
                            name: intern(name.as_str()),
                        },
                    }));
                    let ports = Span {
                        start: ports_start,
                        end: port_arena.len() as u32,
                    };
                    own_rules[dir_index(direction)].push(rules.len() as u32);
                    rules.push(CompiledRule {
                        policy: pi as u32,
                        direction,
                        rule: ri as u32,
                        peers,
                        ports,
                        port_rules: rule.ports.clone(),
                    });
                }
            }
            for &e in &selected {
                if policy.ingress.is_some() {
                    ingress_of[e].push(pi as u32);
                    endpoint_rules[0][e].extend_from_slice(&own_rules[0]);
                }
                if policy.egress.is_some() {
                    egress_of[e].push(pi as u32);
                    endpoint_rules[1][e].extend_from_slice(&own_rules[1]);
                }
            }
            policy_rules.push(own_rules);
            selected_all.push(selected);
        }
        Engine {
            cluster,
            settings,
            ingress_of,
            egress_of,
            endpoint_rules: endpoint_rules.map(Csr::from_lists),
            rules,
            peer_arena,
            port_arena,
            ip_blocks,
            policy_rules,
            sets,
            named_ports,
            selected: selected_all,
            by_ip: cluster
                .endpoints
                .iter()
                .enumerate()
                .flat_map(|(e, ep)| ep.ips.iter().map(move |ip| (*ip, e)))
                .collect(),
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
        match self.by_ip.get(&ip) {
            Some(&e) => PeerRef::Endpoint(e),
            None => PeerRef::Ip(ip),
        }
    }

    /// Whether rule `rule` of `direction` of policy `policy` selects `other` as its peer.
    pub fn rule_selects(
        &self,
        policy: usize,
        direction: Direction,
        rule: usize,
        other: PeerRef,
    ) -> bool {
        self.policy_rules[policy][dir_index(direction)]
            .get(rule)
            .is_some_and(|&ri| self.rule_peer(&self.rules[ri as usize], other).is_some())
    }

    /// The first peer of `rule` that selects `other`: `Some(None)` when the rule has no peers.
    #[inline]
    fn rule_peer(&self, rule: &CompiledRule, other: PeerRef) -> Option<Option<usize>> {
        if rule.peers.is_empty() {
            return Some(None);
        }
        self.peer_arena[rule.peers.range()]
            .iter()
            .position(|peer| match (peer, other) {
                (CompiledPeer::Pods(_), PeerRef::Ip(_)) => false,
                (CompiledPeer::IpBlock { block, .. }, PeerRef::Ip(ip)) => {
                    self.ip_blocks[*block as usize].contains(ip)
                }
                (
                    CompiledPeer::Pods(set) | CompiledPeer::IpBlock { pods: set, .. },
                    PeerRef::Endpoint(e),
                ) => self.sets[*set as usize].contains(e),
            })
            .map(Some)
    }

    /// The first port of `rule` that admits `protocol`/`port` on `dst`: `Some(None)` when the
    /// rule has no ports. Named ports resolve on the destination pod by name and protocol; a
    /// named port that resolves nowhere admits nothing.
    #[inline]
    fn rule_port(
        &self,
        rule: &CompiledRule,
        protocol: Protocol,
        port: u16,
        dst: PeerRef,
    ) -> Option<Option<usize>> {
        if rule.ports.is_empty() {
            return Some(None);
        }
        self.port_arena[rule.ports.range()]
            .iter()
            .position(|p| {
                p.protocol == protocol
                    && if p.name == NO_NAME {
                        p.lo <= port && port <= p.hi
                    } else {
                        self.resolve_named(p.name, protocol, dst) == Some(port)
                    }
            })
            .map(Some)
    }

    #[inline]
    fn resolve_named(&self, name: u32, protocol: Protocol, dst: PeerRef) -> Option<u16> {
        match dst {
            PeerRef::Endpoint(e) => self.named_ports[e]
                .iter()
                .find(|(n, p, _)| *n == name && *p == protocol)
                .map(|(_, _, port)| *port),
            PeerRef::Ip(_) => None,
        }
    }

    fn rule_ref(rule: &CompiledRule, peer: Option<usize>, port: Option<usize>) -> RuleRef {
        RuleRef {
            policy: rule.policy as usize,
            direction: rule.direction,
            rule: rule.rule as usize,
            peer,
            port,
        }
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
        for &ri in self.endpoint_rules[dir_index(direction)].get(subject) {
            let rule = &self.rules[ri as usize];
            let Some(port_index) = self.rule_port(rule, protocol, port, dst) else {
                continue;
            };
            if let Some(peer) = self.rule_peer(rule, other) {
                return Side::Allowed {
                    isolated_by,
                    rule: Self::rule_ref(rule, peer, port_index),
                };
            }
        }
        Side::Denied { isolated_by }
    }

    /// The verdict for one connection, with its reasons. For protocols without ports (ICMP)
    /// `port` is ignored and only rules without `ports` can allow it.
    pub fn verdict(
        &self,
        src: PeerRef,
        dst: PeerRef,
        protocol: Protocol,
        port: u16,
    ) -> Verdict<'_> {
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
        let mut out = Vec::new();
        for &ri in self.endpoint_rules[dir_index(direction)].get(subject) {
            let rule = &self.rules[ri as usize];
            let Some(port_index) = self.rule_port(rule, protocol, port, dst) else {
                continue;
            };
            if let Some(peer) = self.rule_peer(rule, other) {
                out.push(Self::rule_ref(rule, peer, port_index));
            }
        }
        out
    }

    /// Connections one side allows: all when not isolated, else the union of the ports of the
    /// rules whose peers select `other`.
    fn side_conns(
        &self,
        direction: Direction,
        subject: usize,
        other: PeerRef,
        dst: PeerRef,
    ) -> ConnSet {
        if self.isolating(subject, direction).is_empty() {
            return ConnSet::all();
        }
        let mut out = ConnSet::none();
        for &ri in self.endpoint_rules[dir_index(direction)].get(subject) {
            let rule = &self.rules[ri as usize];
            if self.rule_peer(rule, other).is_none() {
                continue;
            }
            if rule.ports.is_empty() {
                return ConnSet::all();
            }
            for (p, written) in self.port_arena[rule.ports.range()]
                .iter()
                .zip(&rule.port_rules)
            {
                let ports = match &written.port {
                    PortMatch::All => PortSet::all(),
                    PortMatch::Range(lo, hi) => PortSet::range(*lo, *hi),
                    PortMatch::Named(_) => match self.resolve_named(p.name, p.protocol, dst) {
                        Some(n) => PortSet::range(n, n),
                        None => continue,
                    },
                };
                out.add(p.protocol, &ports);
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
