//! NetworkPolicies (networking.k8s.io/v1) compiled into the form the engine evaluates, and
//! validated as the API server would: bad CIDRs, ports, protocols and selectors are errors
//! that name the file, the policy and the field.
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use thiserror::Error;

use crate::flow::Protocol;
use crate::selector::{Selector, SelectorError};

#[derive(Debug, Error)]
#[error("{path}: NetworkPolicy {namespace}/{name}: {problem}")]
pub struct PolicyError {
    pub path: PathBuf,
    pub namespace: String,
    pub name: String,
    pub problem: Box<PolicyProblem>,
}

#[derive(Debug, Error)]
pub enum PolicyProblem {
    #[error(transparent)]
    Selector(#[from] SelectorError),
    #[error("field `{field}`: invalid CIDR `{value}` (expected e.g. 10.0.0.0/8 or fd00::/64)")]
    BadCidr { field: String, value: String },
    #[error("field `{field}`: except `{except}` is not inside cidr `{cidr}`")]
    ExceptOutsideCidr {
        field: String,
        except: String,
        cidr: String,
    },
    #[error("field `{field}`: port {value} is out of range (1-65535)")]
    PortOutOfRange { field: String, value: i64 },
    #[error("field `{field}`: endPort {end} is below port {start}")]
    EndPortBelowPort { field: String, start: i64, end: i64 },
    #[error("field `{field}`: endPort needs `port` to be set")]
    EndPortWithoutPort { field: String },
    #[error("field `{field}`: endPort needs a numeric port (got `{port}`)")]
    EndPortWithoutNumber { field: String, port: String },
    #[error(
        "field `{field}`: `{value}` is not a valid named port (1-15 lowercase letters, digits, '-', with a letter)"
    )]
    BadPortName { field: String, value: String },
    #[error("field `{field}`: unknown protocol `{value}` (expected TCP, UDP or SCTP)")]
    BadProtocol { field: String, value: String },
    #[error("field `{field}`: unknown policy type `{value}` (expected Ingress or Egress)")]
    BadPolicyType { field: String, value: String },
    #[error("field `{field}`: a peer must set podSelector, namespaceSelector or ipBlock")]
    EmptyPeer { field: String },
    #[error("field `{field}`: ipBlock cannot be combined with podSelector or namespaceSelector")]
    IpBlockWithSelector { field: String },
    #[error("field `metadata.name`: a NetworkPolicy needs a name")]
    NoName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

/// An ipBlock: `cidr` minus every `except`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpBlock {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl IpBlock {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.cidr.contains(&ip) && !self.except.iter().any(|e| e.contains(&ip))
    }
}

impl fmt::Display for IpBlock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr)?;
        if !self.except.is_empty() {
            let except: Vec<String> = self.except.iter().map(ToString::to_string).collect();
            write!(f, " except {}", except.join(","))?;
        }
        Ok(())
    }
}

/// Which namespaces a pod peer looks in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamespaceMatch {
    /// No namespaceSelector: the policy's own namespace.
    Own,
    /// A namespaceSelector (the empty one matches every namespace).
    Selector(Selector),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// podSelector and/or namespaceSelector (both in one peer: AND).
    Pods {
        namespaces: NamespaceMatch,
        /// `None` when podSelector is absent: every pod of the matched namespaces.
        pods: Option<Selector>,
    },
    IpBlock(IpBlock),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortMatch {
    /// No port given: every port of the protocol.
    All,
    /// `port` (and `endPort`), inclusive.
    Range(u16, u16),
    /// A named port, resolved on the destination pod by name and protocol.
    Named(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PortRule {
    pub protocol: Protocol,
    pub port: PortMatch,
}

impl fmt::Display for PortRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.port {
            PortMatch::All => write!(f, "{} (all ports)", self.protocol),
            PortMatch::Range(lo, hi) if lo == hi => write!(f, "{} {lo}", self.protocol),
            PortMatch::Range(lo, hi) => write!(f, "{} {lo}-{hi}", self.protocol),
            PortMatch::Named(name) => write!(f, "{} {name} (named)", self.protocol),
        }
    }
}

/// One ingress or egress rule. Empty `peers` = every peer; empty `ports` = every port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Rule {
    pub peers: Vec<Peer>,
    pub ports: Vec<PortRule>,
}

#[derive(Debug, Clone)]
pub struct Policy {
    pub namespace: String,
    pub name: String,
    pub source: PathBuf,
    pub pod_selector: Selector,
    /// `Some` when the policy isolates its pods for ingress (policyTypes, or the default).
    pub ingress: Option<Vec<Rule>>,
    /// `Some` when the policy isolates its pods for egress.
    pub egress: Option<Vec<Rule>>,
    /// The object as read, for printing and suggestions.
    pub object: NetworkPolicy,
}

impl Policy {
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    pub fn rules(&self, direction: Direction) -> Option<&[Rule]> {
        match direction {
            Direction::Ingress => self.ingress.as_deref(),
            Direction::Egress => self.egress.as_deref(),
        }
    }

    /// Compiles and validates one NetworkPolicy read from `source`.
    pub fn compile(object: &NetworkPolicy, source: &Path) -> Result<Policy, PolicyError> {
        let namespace = object
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_string());
        let name = object.metadata.name.clone().unwrap_or_default();
        let err = |problem: PolicyProblem| PolicyError {
            path: source.to_path_buf(),
            namespace: namespace.clone(),
            name: name.clone(),
            problem: Box::new(problem),
        };
        if name.is_empty() {
            return Err(err(PolicyProblem::NoName));
        }
        let spec = object.spec.clone().unwrap_or_default();
        let pod_selector = match &spec.pod_selector {
            Some(sel) => Selector::compile(sel, "spec.podSelector").map_err(|e| err(e.into()))?,
            None => Selector::everything(),
        };
        let ingress_rules = spec.ingress.as_deref().unwrap_or_default();
        let egress_rules = spec.egress.as_deref().unwrap_or_default();
        // Default policyTypes: Ingress always; Egress iff the policy has egress rules.
        // An empty policyTypes list is unset (the API server defaults it like an absent one).
        let (isolates_ingress, isolates_egress) =
            match spec.policy_types.as_ref().filter(|t| !t.is_empty()) {
                Some(types) => {
                    let mut seen = (false, false);
                    for (i, t) in types.iter().enumerate() {
                        match t.as_str() {
                            "Ingress" => seen.0 = true,
                            "Egress" => seen.1 = true,
                            other => {
                                return Err(err(PolicyProblem::BadPolicyType {
                                    field: format!("spec.policyTypes[{i}]"),
                                    value: other.to_string(),
                                }));
                            }
                        }
                    }
                    seen
                }
                None => (true, !egress_rules.is_empty()),
            };
        let mut ingress = Vec::new();
        for (i, rule) in ingress_rules.iter().enumerate() {
            let field = format!("spec.ingress[{i}]");
            ingress.push(
                compile_rule(
                    rule.from.as_deref().unwrap_or_default(),
                    rule.ports.as_deref().unwrap_or_default(),
                    &field,
                    "from",
                )
                .map_err(err)?,
            );
        }
        let mut egress = Vec::new();
        for (i, rule) in egress_rules.iter().enumerate() {
            let field = format!("spec.egress[{i}]");
            egress.push(
                compile_rule(
                    rule.to.as_deref().unwrap_or_default(),
                    rule.ports.as_deref().unwrap_or_default(),
                    &field,
                    "to",
                )
                .map_err(err)?,
            );
        }
        Ok(Policy {
            namespace: namespace.clone(),
            name: name.clone(),
            source: source.to_path_buf(),
            pod_selector,
            ingress: isolates_ingress.then_some(ingress),
            egress: isolates_egress.then_some(egress),
            object: object.clone(),
        })
    }
}

fn compile_rule(
    peers: &[NetworkPolicyPeer],
    ports: &[NetworkPolicyPort],
    field: &str,
    peers_name: &str,
) -> Result<Rule, PolicyProblem> {
    let mut out = Rule {
        peers: Vec::with_capacity(peers.len()),
        ports: Vec::with_capacity(ports.len()),
    };
    for (i, peer) in peers.iter().enumerate() {
        let field = format!("{field}.{peers_name}[{i}]");
        out.peers.push(compile_peer(peer, &field)?);
    }
    for (i, port) in ports.iter().enumerate() {
        let field = format!("{field}.ports[{i}]");
        out.ports.push(compile_port(port, &field)?);
    }
    Ok(out)
}

fn compile_peer(peer: &NetworkPolicyPeer, field: &str) -> Result<Peer, PolicyProblem> {
    match (&peer.ip_block, &peer.namespace_selector, &peer.pod_selector) {
        (None, None, None) => Err(PolicyProblem::EmptyPeer {
            field: field.to_string(),
        }),
        (Some(_), Some(_), _) | (Some(_), _, Some(_)) => Err(PolicyProblem::IpBlockWithSelector {
            field: field.to_string(),
        }),
        (Some(block), None, None) => {
            let cidr_field = format!("{field}.ipBlock.cidr");
            let cidr = parse_cidr(&block.cidr, &cidr_field)?;
            let mut except = Vec::new();
            for (i, e) in block.except.iter().flatten().enumerate() {
                let except_field = format!("{field}.ipBlock.except[{i}]");
                let net = parse_cidr(e, &except_field)?;
                if !cidr.contains(&net) {
                    return Err(PolicyProblem::ExceptOutsideCidr {
                        field: except_field,
                        except: e.clone(),
                        cidr: block.cidr.clone(),
                    });
                }
                except.push(net);
            }
            Ok(Peer::IpBlock(IpBlock { cidr, except }))
        }
        (None, ns, pods) => {
            let namespaces = match ns {
                Some(sel) => NamespaceMatch::Selector(Selector::compile(
                    sel,
                    &format!("{field}.namespaceSelector"),
                )?),
                None => NamespaceMatch::Own,
            };
            let pods = match pods {
                Some(sel) => Some(Selector::compile(sel, &format!("{field}.podSelector"))?),
                None => None,
            };
            Ok(Peer::Pods { namespaces, pods })
        }
    }
}

fn parse_cidr(text: &str, field: &str) -> Result<IpNet, PolicyProblem> {
    let bad = || PolicyProblem::BadCidr {
        field: field.to_string(),
        value: text.to_string(),
    };
    // Host bits are allowed (the API server accepts 10.0.0.1/8); the block is the network.
    text.trim()
        .parse::<IpNet>()
        .map(|net| net.trunc())
        .map_err(|_| bad())
}

pub fn parse_protocol(text: &str) -> Option<Protocol> {
    match text {
        "TCP" => Some(Protocol::Tcp),
        "UDP" => Some(Protocol::Udp),
        "SCTP" => Some(Protocol::Sctp),
        _ => None,
    }
}

fn compile_port(port: &NetworkPolicyPort, field: &str) -> Result<PortRule, PolicyProblem> {
    let protocol = match &port.protocol {
        None => Protocol::Tcp,
        Some(p) => parse_protocol(p).ok_or_else(|| PolicyProblem::BadProtocol {
            field: format!("{field}.protocol"),
            value: p.clone(),
        })?,
    };
    let check = |value: i64, field: String| {
        if (1..=65535).contains(&value) {
            Ok(value as u16)
        } else {
            Err(PolicyProblem::PortOutOfRange { field, value })
        }
    };
    let port_match = match &port.port {
        None if port.end_port.is_some() => {
            return Err(PolicyProblem::EndPortWithoutPort {
                field: format!("{field}.endPort"),
            });
        }
        None => PortMatch::All,
        Some(IntOrString::Int(n)) => {
            let start = check(i64::from(*n), format!("{field}.port"))?;
            let end = match port.end_port {
                None => start,
                Some(end) => {
                    let end_value = check(i64::from(end), format!("{field}.endPort"))?;
                    if end_value < start {
                        return Err(PolicyProblem::EndPortBelowPort {
                            field: format!("{field}.endPort"),
                            start: i64::from(start),
                            end: i64::from(end),
                        });
                    }
                    end_value
                }
            };
            PortMatch::Range(start, end)
        }
        Some(IntOrString::String(name)) => {
            if port.end_port.is_some() {
                return Err(PolicyProblem::EndPortWithoutNumber {
                    field: format!("{field}.endPort"),
                    port: name.clone(),
                });
            }
            if !is_valid_port_name(name) {
                return Err(PolicyProblem::BadPortName {
                    field: format!("{field}.port"),
                    value: name.clone(),
                });
            }
            PortMatch::Named(name.clone())
        }
    };
    Ok(PortRule {
        protocol,
        port: port_match,
    })
}

/// IANA_SVC_NAME as the API server checks it.
fn is_valid_port_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    (1..=15).contains(&bytes.len())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.iter().any(u8::is_ascii_lowercase)
        && !name.starts_with('-')
        && !name.ends_with('-')
        && !name.contains("--")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(yaml: &str) -> Result<Policy, PolicyError> {
        let object: NetworkPolicy = serde_saphyr::from_str(yaml).unwrap();
        Policy::compile(&object, Path::new("p.yaml"))
    }

    const HEAD: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: ns}\n";

    #[test]
    fn default_policy_types() {
        let p = compile(&format!("{HEAD}spec: {{podSelector: {{}}}}")).unwrap();
        assert!(p.ingress.is_some() && p.egress.is_none());
        let p = compile(&format!(
            "{HEAD}spec: {{podSelector: {{}}, egress: [{{}}]}}"
        ))
        .unwrap();
        assert!(p.ingress.is_some() && p.egress.is_some());
        // An empty egress list is "no egress rules": not egress-isolating by default.
        let p = compile(&format!("{HEAD}spec: {{podSelector: {{}}, egress: []}}")).unwrap();
        assert!(p.egress.is_none());
        // An empty policyTypes list is defaulted like an absent one.
        let p = compile(&format!(
            "{HEAD}spec: {{podSelector: {{}}, policyTypes: [], egress: [{{}}]}}"
        ))
        .unwrap();
        assert!(p.ingress.is_some() && p.egress.is_some());
        let p = compile(&format!(
            "{HEAD}spec: {{podSelector: {{}}, policyTypes: [Egress]}}"
        ))
        .unwrap();
        assert!(p.ingress.is_none() && p.egress.as_deref() == Some(&[][..]));
    }

    #[test]
    fn bad_inputs_name_the_field() {
        let cases = [
            (
                "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]",
                "spec.ingress[0].from[0].ipBlock.cidr",
            ),
            (
                "ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]",
                "invalid CIDR `nonsense`",
            ),
            (
                "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]",
                "except[0]",
            ),
            ("ingress: [{ports: [{port: 0}]}]", "port 0 is out of range"),
            (
                "ingress: [{ports: [{port: 70000}]}]",
                "port 70000 is out of range",
            ),
            (
                "ingress: [{ports: [{port: 80, endPort: 79}]}]",
                "endPort 79 is below port 80",
            ),
            (
                "ingress: [{ports: [{port: 80, protocol: ICMP}]}]",
                "unknown protocol `ICMP`",
            ),
            (
                "ingress: [{ports: [{port: 80, protocol: tcp}]}]",
                "spec.ingress[0].ports[0].protocol",
            ),
            (
                "egress: [{to: [{podSelector: {matchExpressions: [{key: a, operator: Equal, values: [b]}]}}]}]",
                "spec.egress[0].to[0].podSelector.matchExpressions[0].operator",
            ),
            ("ingress: [{from: [{}]}]", "must set podSelector"),
            (
                "ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]",
                "cannot be combined",
            ),
            ("policyTypes: [Ingres]", "spec.policyTypes[0]"),
            (
                "ingress: [{ports: [{endPort: 90}]}]",
                "endPort needs `port` to be set",
            ),
            (
                "ingress: [{ports: [{port: http, endPort: 90}]}]",
                "endPort needs a numeric port",
            ),
        ];
        for (spec, expected) in cases {
            let err = compile(&format!("{HEAD}spec:\n  podSelector: {{}}\n  {spec}\n"))
                .expect_err(spec)
                .to_string();
            assert!(err.starts_with("p.yaml: NetworkPolicy ns/np: "), "{err}");
            assert!(err.contains(expected), "{spec}: {err}");
        }
    }

    #[test]
    fn ipv6_block_with_except() {
        let p = compile(&format!(
            "{HEAD}spec:\n  podSelector: {{}}\n  ingress: [{{from: [{{ipBlock: {{cidr: 'fd00::/64', except: ['fd00::/120']}}}}]}}]\n"
        ))
        .unwrap();
        let Peer::IpBlock(block) = &p.ingress.unwrap()[0].peers[0] else {
            panic!("expected an ipBlock")
        };
        assert!(block.contains("fd00::1:1".parse().unwrap()));
        assert!(!block.contains("fd00::1".parse().unwrap()));
        assert!(!block.contains("fd01::1".parse().unwrap()));
    }
}
