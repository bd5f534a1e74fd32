//! Who may talk to whom, at workload level, and the output formats of `flowpol connectivity`.
//!
//! External peers are the disjoint address ranges that the policies' ipBlocks (cidr and
//! except) cut out of the address space: the IPv4 space always, the IPv6 space when some
//! ipBlock is IPv6. A range is one peer because every rule treats all of its addresses alike.
//! Sources are cut by the ingress rules' ipBlocks, destinations by the egress rules' ones
//! (only those can tell addresses apart in that role), as the conformance corpus does.
use std::collections::{BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::Serialize;
use thiserror::Error;

use crate::connset::ConnSet;
use crate::engine::{Engine, PeerRef};
use crate::policy::{Direction, IpBlock, Peer, Policy};

/// An inclusive address range of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IpRange {
    pub start: IpAddr,
    pub end: IpAddr,
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn from_u128(v: u128, v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(v))
    } else {
        IpAddr::V4(Ipv4Addr::from(v as u32))
    }
}

/// Every distinct ipBlock of the policies' rules of one direction.
fn policy_ip_blocks(policies: &[Policy], direction: Direction) -> Vec<&IpBlock> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for policy in policies {
        for rule in policy.rules(direction).unwrap_or_default() {
            for peer in &rule.peers {
                if let Peer::IpBlock(block) = peer
                    && seen.insert(block.to_string())
                {
                    out.push(block);
                }
            }
        }
    }
    out
}

/// The disjoint external ranges: maximal intervals of points that every ipBlock of the
/// `direction` rules treats alike.
pub fn external_ranges(policies: &[Policy], direction: Direction) -> Vec<IpRange> {
    let blocks = policy_ip_blocks(policies, direction);
    let mut out = Vec::new();
    let any_v6 = blocks.iter().any(|b| b.cidr.addr().is_ipv6());
    for v6 in [false, true] {
        if v6 && !any_v6 {
            continue;
        }
        let max: u128 = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        let family: Vec<&IpBlock> = blocks
            .iter()
            .copied()
            .filter(|b| b.cidr.addr().is_ipv6() == v6)
            .collect();
        let mut starts = BTreeSet::from([0u128]);
        for block in &family {
            for net in std::iter::once(&block.cidr).chain(&block.except) {
                starts.insert(to_u128(net.network()));
                let end = to_u128(net.broadcast());
                if end < max {
                    starts.insert(end + 1);
                }
            }
        }
        let starts: Vec<u128> = starts.into_iter().collect();
        let mut previous: Option<(u128, u128, Vec<bool>)> = None;
        for (i, &start) in starts.iter().enumerate() {
            let end = starts.get(i + 1).map_or(max, |next| next - 1);
            let probe = from_u128(start, v6);
            let signature: Vec<bool> = family.iter().map(|b| b.contains(probe)).collect();
            previous = match previous {
                Some((s, _, sig)) if sig == signature => Some((s, end, sig)),
                Some((s, e, _)) => {
                    out.push(IpRange {
                        start: from_u128(s, v6),
                        end: from_u128(e, v6),
                    });
                    Some((start, end, signature))
                }
                None => Some((start, end, signature)),
            };
        }
        if let Some((s, e, _)) = previous {
            out.push(IpRange {
                start: from_u128(s, v6),
                end: from_u128(e, v6),
            });
        }
    }
    out
}

/// One end of a connectivity line.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerName {
    /// Index into [`crate::model::Cluster::workloads`].
    Workload(usize),
    External(IpRange),
}

/// One allowed ordered pair. Indices point into [`Connectivity::peers`] and
/// [`Connectivity::conns`] (connection sets are shared: most lines say the same thing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line {
    pub src: u32,
    pub dst: u32,
    pub conn: u32,
}

/// The allowed connections between every ordered pair of distinct peers (absent = denied),
/// sorted by source name, then destination name.
pub struct Connectivity {
    pub peers: Vec<PeerName>,
    pub names: Vec<String>,
    pub conns: Vec<ConnSet>,
    conn_text: Vec<String>,
    pub lines: Vec<Line>,
}

impl Connectivity {
    pub fn analyze(engine: &Engine<'_>) -> Self {
        let cluster = engine.cluster();
        let workloads = &cluster.workloads;
        // Peers: workloads, and the external ranges of each role, sorted by name once so the
        // lines come out sorted without sorting them.
        let mut peers: Vec<PeerName> = (0..workloads.len()).map(PeerName::Workload).collect();
        let ingress_ranges = external_ranges(&cluster.policies, Direction::Ingress);
        let egress_ranges = external_ranges(&cluster.policies, Direction::Egress);
        let mut all_ranges: Vec<IpRange> = ingress_ranges
            .iter()
            .chain(&egress_ranges)
            .copied()
            .collect();
        all_ranges.sort();
        all_ranges.dedup();
        peers.extend(all_ranges.iter().copied().map(PeerName::External));
        let names: Vec<String> = peers
            .iter()
            .map(|p| match p {
                PeerName::Workload(w) => workloads[*w].peer_name(),
                PeerName::External(range) => format!("{range}[External]"),
            })
            .collect();
        let mut order: Vec<usize> = (0..peers.len()).collect();
        order.sort_by(|&a, &b| names[a].cmp(&names[b]));
        let sources: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| match &peers[i] {
                PeerName::Workload(_) => true,
                PeerName::External(r) => ingress_ranges.binary_search(r).is_ok(),
            })
            .collect();
        let destinations: Vec<usize> = order
            .iter()
            .copied()
            .filter(|&i| match &peers[i] {
                PeerName::Workload(_) => true,
                PeerName::External(r) => egress_ranges.binary_search(r).is_ok(),
            })
            .collect();
        // Workloads that no policy isolates in a direction: every pair through them is open.
        let open = |w: usize, direction: Direction| {
            workloads[w]
                .endpoints
                .iter()
                .all(|&e| engine.isolating(e, direction).is_empty())
        };
        let egress_open: Vec<bool> = (0..workloads.len())
            .map(|w| open(w, Direction::Egress))
            .collect();
        let ingress_open: Vec<bool> = (0..workloads.len())
            .map(|w| open(w, Direction::Ingress))
            .collect();

        let mut conns = vec![ConnSet::all()];
        let mut conn_ids: HashMap<ConnSet, u32> = HashMap::from([(ConnSet::all(), 0)]);
        let mut lines = Vec::new();
        for &s in &sources {
            for &d in &destinations {
                let conn = match (&peers[s], &peers[d]) {
                    (PeerName::External(_), PeerName::External(_)) => continue,
                    (PeerName::Workload(a), PeerName::Workload(b)) if a == b => continue,
                    (PeerName::Workload(a), PeerName::Workload(b))
                        if egress_open[*a] && ingress_open[*b] =>
                    {
                        0
                    }
                    (PeerName::External(_), PeerName::Workload(b)) if ingress_open[*b] => 0,
                    (PeerName::Workload(a), PeerName::External(_)) if egress_open[*a] => 0,
                    (src, dst) => {
                        let ends = |p: &PeerName| -> Vec<PeerRef> {
                            match p {
                                PeerName::Workload(w) => workloads[*w]
                                    .endpoints
                                    .iter()
                                    .map(|&e| PeerRef::Endpoint(e))
                                    .collect(),
                                // Every address of a range is treated alike: its first stands for all.
                                PeerName::External(r) => vec![PeerRef::Ip(r.start)],
                            }
                        };
                        let mut set = ConnSet::none();
                        for a in ends(src) {
                            for b in ends(dst) {
                                set.union_with(&engine.allowed_conns(a, b));
                            }
                        }
                        if set.is_empty() {
                            continue;
                        }
                        let next = conns.len() as u32;
                        *conn_ids.entry(set).or_insert_with_key(|set| {
                            conns.push(set.clone());
                            next
                        })
                    }
                };
                lines.push(Line {
                    src: s as u32,
                    dst: d as u32,
                    conn,
                });
            }
        }
        let conn_text = conns.iter().map(ToString::to_string).collect();
        Connectivity {
            peers,
            names,
            conns,
            conn_text,
            lines,
        }
    }

    /// `ns/name[Kind]` or `a.b.c.d-e.f.g.h[External]`.
    pub fn name(&self, peer: u32) -> &str {
        &self.names[peer as usize]
    }

    /// The connection set of a line.
    pub fn conn(&self, line: &Line) -> &ConnSet {
        &self.conns[line.conn as usize]
    }

    pub fn render(&self, format: OutputFormat) -> String {
        let mut out = String::new();
        match format {
            OutputFormat::Txt => {
                for l in &self.lines {
                    let _ = writeln!(
                        out,
                        "{} => {} : {}",
                        self.name(l.src),
                        self.name(l.dst),
                        self.conn_text[l.conn as usize]
                    );
                }
            }
            OutputFormat::Json => {
                #[derive(Serialize)]
                struct JsonLine {
                    src: String,
                    dst: String,
                    conn: String,
                }
                let lines: Vec<JsonLine> = self
                    .lines
                    .iter()
                    .map(|l| JsonLine {
                        src: self.name(l.src).to_string(),
                        dst: self.name(l.dst).to_string(),
                        conn: self.conn_text[l.conn as usize].clone(),
                    })
                    .collect();
                out = serde_json::to_string_pretty(&lines).expect("plain strings serialize");
                out.push('\n');
            }
            OutputFormat::Md => {
                out.push_str("| src | dst | conn |\n|-----|-----|------|\n");
                for l in &self.lines {
                    let _ = writeln!(
                        out,
                        "| {} | {} | {} |",
                        self.name(l.src),
                        self.name(l.dst),
                        self.conn_text[l.conn as usize]
                    );
                }
            }
            OutputFormat::Csv => {
                out.push_str("src,dst,conn\n");
                for l in &self.lines {
                    let _ = writeln!(
                        out,
                        "{},{},{}",
                        csv_field(self.name(l.src)),
                        csv_field(self.name(l.dst)),
                        csv_field(&self.conn_text[l.conn as usize])
                    );
                }
            }
            OutputFormat::Dot => {
                out.push_str("digraph connectivity {\n");
                let mut nodes = BTreeSet::new();
                for l in &self.lines {
                    nodes.insert(self.name(l.src).to_string());
                    nodes.insert(self.name(l.dst).to_string());
                }
                for n in &nodes {
                    let shape = if n.ends_with("[External]") {
                        "box"
                    } else {
                        "ellipse"
                    };
                    let _ = writeln!(out, "  {} [shape={shape}];", dot_quote(n));
                }
                for l in &self.lines {
                    let _ = writeln!(
                        out,
                        "  {} -> {} [label={}];",
                        dot_quote(self.name(l.src)),
                        dot_quote(self.name(l.dst)),
                        dot_quote(&self.conn_text[l.conn as usize])
                    );
                }
                out.push_str("}\n");
            }
        }
        out
    }
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

fn dot_quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Txt,
    Json,
    Md,
    Csv,
    Dot,
}

#[derive(Debug, Error)]
#[error("unknown output format `{0}` (expected txt, json, md, csv or dot)")]
pub struct UnknownFormat(String);

impl FromStr for OutputFormat {
    type Err = UnknownFormat;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "txt" => Ok(Self::Txt),
            "json" => Ok(Self::Json),
            "md" => Ok(Self::Md),
            "csv" => Ok(Self::Csv),
            "dot" => Ok(Self::Dot),
            other => Err(UnknownFormat(other.to_string())),
        }
    }
}
