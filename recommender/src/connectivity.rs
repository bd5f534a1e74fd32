//! Who may talk to whom, at workload level, and the output formats of `flowpol connectivity`.
//!
//! External peers are the disjoint address ranges that the policies' ipBlocks (cidr and
//! except) cut out of the address space: the IPv4 space always, the IPv6 space when some
//! ipBlock is IPv6. A range is one peer because every rule treats all of its addresses alike.
//! Sources are cut by the ingress rules' ipBlocks, destinations by the egress rules' ones
//! (only those can tell addresses apart in that role), as the conformance corpus does.
use std::collections::BTreeSet;
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

#[derive(Debug, Clone)]
pub struct Line {
    pub src: PeerName,
    pub dst: PeerName,
    pub conns: ConnSet,
}

/// The allowed connections between every ordered pair of distinct peers (absent = denied).
pub struct Connectivity<'e> {
    engine: &'e Engine<'e>,
    pub lines: Vec<Line>,
}

impl<'e> Connectivity<'e> {
    pub fn analyze(engine: &'e Engine<'e>) -> Self {
        let cluster = engine.cluster();
        let mut lines = Vec::new();
        let workloads = &cluster.workloads;
        for (a, wa) in workloads.iter().enumerate() {
            for (b, wb) in workloads.iter().enumerate() {
                if a == b {
                    continue;
                }
                let mut conns = ConnSet::none();
                for &ea in &wa.endpoints {
                    for &eb in &wb.endpoints {
                        conns.union_with(
                            &engine.allowed_conns(PeerRef::Endpoint(ea), PeerRef::Endpoint(eb)),
                        );
                    }
                }
                if !conns.is_empty() {
                    lines.push(Line {
                        src: PeerName::Workload(a),
                        dst: PeerName::Workload(b),
                        conns,
                    });
                }
            }
        }
        for range in external_ranges(&cluster.policies, Direction::Ingress) {
            let ip = PeerRef::Ip(range.start);
            for (w, workload) in workloads.iter().enumerate() {
                let mut conns = ConnSet::none();
                for &e in &workload.endpoints {
                    conns.union_with(&engine.allowed_conns(ip, PeerRef::Endpoint(e)));
                }
                if !conns.is_empty() {
                    lines.push(Line {
                        src: PeerName::External(range),
                        dst: PeerName::Workload(w),
                        conns,
                    });
                }
            }
        }
        for range in external_ranges(&cluster.policies, Direction::Egress) {
            let ip = PeerRef::Ip(range.start);
            for (w, workload) in workloads.iter().enumerate() {
                let mut conns = ConnSet::none();
                for &e in &workload.endpoints {
                    conns.union_with(&engine.allowed_conns(PeerRef::Endpoint(e), ip));
                }
                if !conns.is_empty() {
                    lines.push(Line {
                        src: PeerName::Workload(w),
                        dst: PeerName::External(range),
                        conns,
                    });
                }
            }
        }
        let mut this = Connectivity { engine, lines };
        this.sort();
        this
    }

    fn sort(&mut self) {
        let mut keyed: Vec<(String, String, Line)> = std::mem::take(&mut self.lines)
            .into_iter()
            .map(|l| (self.name(&l.src), self.name(&l.dst), l))
            .collect();
        keyed.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        self.lines = keyed.into_iter().map(|(_, _, l)| l).collect();
    }

    /// `ns/name[Kind]` or `a.b.c.d-e.f.g.h[External]`.
    pub fn name(&self, peer: &PeerName) -> String {
        match peer {
            PeerName::Workload(w) => self.engine.cluster().workloads[*w].peer_name(),
            PeerName::External(range) => format!("{range}[External]"),
        }
    }

    pub fn render(&self, format: OutputFormat) -> String {
        let mut out = String::new();
        match format {
            OutputFormat::Txt => {
                for l in &self.lines {
                    let _ = writeln!(out, "{} => {} : {}", self.name(&l.src), self.name(&l.dst), l.conns);
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
                        src: self.name(&l.src),
                        dst: self.name(&l.dst),
                        conn: l.conns.to_string(),
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
                        self.name(&l.src),
                        self.name(&l.dst),
                        l.conns
                    );
                }
            }
            OutputFormat::Csv => {
                out.push_str("src,dst,conn\n");
                for l in &self.lines {
                    let _ = writeln!(
                        out,
                        "{},{},{}",
                        csv_field(&self.name(&l.src)),
                        csv_field(&self.name(&l.dst)),
                        csv_field(&l.conns.to_string())
                    );
                }
            }
            OutputFormat::Dot => {
                out.push_str("digraph connectivity {\n");
                let mut nodes = BTreeSet::new();
                for l in &self.lines {
                    nodes.insert(self.name(&l.src));
                    nodes.insert(self.name(&l.dst));
                }
                for n in &nodes {
                    let shape = if n.ends_with("[External]") { "box" } else { "ellipse" };
                    let _ = writeln!(out, "  {} [shape={shape}];", dot_quote(n));
                }
                for l in &self.lines {
                    let _ = writeln!(
                        out,
                        "  {} -> {} [label={}];",
                        dot_quote(&self.name(&l.src)),
                        dot_quote(&self.name(&l.dst)),
                        dot_quote(&l.conns.to_string())
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
