//! Sets of allowed connections: per port protocol (TCP, UDP, SCTP) a set of port ranges.
//!
//! The text form is the one of the conformance corpus: `All Connections`, or protocol
//! groups in alphabetical order, e.g. `SCTP 7070,TCP 8080-8081,UDP 9090`.
use std::fmt;

use serde::Serialize;
use thiserror::Error;

use crate::flow::Protocol;

/// The protocols a NetworkPolicy port can name, in the order the text form lists them.
pub const PORT_PROTOCOLS: [Protocol; 3] = [Protocol::Sctp, Protocol::Tcp, Protocol::Udp];

pub const MIN_PORT: u16 = 1;
pub const MAX_PORT: u16 = 65535;

/// A normalised set of ports: sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PortSet {
    ranges: Vec<(u16, u16)>,
}

impl PortSet {
    pub fn empty() -> Self {
        Self { ranges: Vec::new() }
    }

    pub fn all() -> Self {
        Self {
            ranges: vec![(MIN_PORT, MAX_PORT)],
        }
    }

    pub fn range(lo: u16, hi: u16) -> Self {
        let mut set = Self::empty();
        set.add_range(lo, hi);
        set
    }

    pub fn ranges(&self) -> &[(u16, u16)] {
        &self.ranges
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    pub fn is_all(&self) -> bool {
        self.ranges == [(MIN_PORT, MAX_PORT)]
    }

    pub fn contains(&self, port: u16) -> bool {
        // Few ranges in practice: a linear scan beats a binary search.
        self.ranges.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }

    pub fn add_range(&mut self, lo: u16, hi: u16) {
        let lo = lo.max(MIN_PORT);
        if lo > hi {
            return;
        }
        self.ranges.push((lo, hi));
        self.normalise();
    }

    pub fn union_with(&mut self, other: &PortSet) {
        if other.ranges.is_empty() || self.is_all() {
            return;
        }
        self.ranges.extend_from_slice(&other.ranges);
        self.normalise();
    }

    pub fn intersection(&self, other: &PortSet) -> PortSet {
        let mut out = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() && j < other.ranges.len() {
            let (a_lo, a_hi) = self.ranges[i];
            let (b_lo, b_hi) = other.ranges[j];
            let lo = a_lo.max(b_lo);
            let hi = a_hi.min(b_hi);
            if lo <= hi {
                out.push((lo, hi));
            }
            if a_hi < b_hi {
                i += 1;
            } else {
                j += 1;
            }
        }
        PortSet { ranges: out }
    }

    fn normalise(&mut self) {
        self.ranges.sort_unstable();
        let mut merged: Vec<(u16, u16)> = Vec::with_capacity(self.ranges.len());
        for &(lo, hi) in &self.ranges {
            match merged.last_mut() {
                Some(last) if u32::from(lo) <= u32::from(last.1) + 1 => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        self.ranges = merged;
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, &(lo, hi)) in self.ranges.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            if lo == hi {
                write!(f, "{lo}")?;
            } else {
                write!(f, "{lo}-{hi}")?;
            }
        }
        Ok(())
    }
}

/// Allowed connections between two peers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct ConnSet {
    pub tcp: PortSet,
    pub udp: PortSet,
    pub sctp: PortSet,
}

impl ConnSet {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn all() -> Self {
        Self {
            tcp: PortSet::all(),
            udp: PortSet::all(),
            sctp: PortSet::all(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.tcp.is_empty() && self.udp.is_empty() && self.sctp.is_empty()
    }

    pub fn is_all(&self) -> bool {
        self.tcp.is_all() && self.udp.is_all() && self.sctp.is_all()
    }

    /// The port set of a port protocol; `None` for protocols without ports.
    pub fn ports(&self, protocol: Protocol) -> Option<&PortSet> {
        match protocol {
            Protocol::Tcp => Some(&self.tcp),
            Protocol::Udp => Some(&self.udp),
            Protocol::Sctp => Some(&self.sctp),
            _ => None,
        }
    }

    pub fn ports_mut(&mut self, protocol: Protocol) -> Option<&mut PortSet> {
        match protocol {
            Protocol::Tcp => Some(&mut self.tcp),
            Protocol::Udp => Some(&mut self.udp),
            Protocol::Sctp => Some(&mut self.sctp),
            _ => None,
        }
    }

    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.ports(protocol).is_some_and(|set| set.contains(port))
    }

    pub fn add(&mut self, protocol: Protocol, ports: &PortSet) {
        if let Some(set) = self.ports_mut(protocol) {
            set.union_with(ports);
        }
    }

    pub fn union_with(&mut self, other: &ConnSet) {
        self.tcp.union_with(&other.tcp);
        self.udp.union_with(&other.udp);
        self.sctp.union_with(&other.sctp);
    }

    pub fn intersection(&self, other: &ConnSet) -> ConnSet {
        ConnSet {
            tcp: self.tcp.intersection(&other.tcp),
            udp: self.udp.intersection(&other.udp),
            sctp: self.sctp.intersection(&other.sctp),
        }
    }

    /// Parses the corpus text form (`All Connections`, `TCP 80,UDP 53-54`).
    pub fn parse(text: &str) -> Result<ConnSet, ConnSetParseError> {
        let text = text.trim();
        if text == "All Connections" {
            return Ok(ConnSet::all());
        }
        if text == "No Connections" || text.is_empty() {
            return Ok(ConnSet::none());
        }
        let mut out = ConnSet::none();
        let mut current: Option<Protocol> = None;
        for token in text.split(',') {
            let token = token.trim();
            let port_text = match token.split_once(' ') {
                Some((proto, rest)) => {
                    current = Some(match proto {
                        "TCP" => Protocol::Tcp,
                        "UDP" => Protocol::Udp,
                        "SCTP" => Protocol::Sctp,
                        _ => return Err(ConnSetParseError(text.to_string())),
                    });
                    rest.trim()
                }
                None => token,
            };
            let protocol = current.ok_or_else(|| ConnSetParseError(text.to_string()))?;
            let parse = |s: &str| {
                s.parse::<u16>()
                    .map_err(|_| ConnSetParseError(text.to_string()))
            };
            let (lo, hi) = match port_text.split_once('-') {
                Some((a, b)) => (parse(a)?, parse(b)?),
                None => {
                    let p = parse(port_text)?;
                    (p, p)
                }
            };
            out.add(protocol, &PortSet::range(lo, hi));
        }
        Ok(out)
    }
}

#[derive(Debug, Error)]
#[error(
    "not a connection set: `{0}` (expected `All Connections` or e.g. `TCP 80,8080-8090,UDP 53`)"
)]
pub struct ConnSetParseError(String);

impl fmt::Display for ConnSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_all() {
            return f.write_str("All Connections");
        }
        if self.is_empty() {
            return f.write_str("No Connections");
        }
        let mut first = true;
        for protocol in PORT_PROTOCOLS {
            let Some(set) = self.ports(protocol) else {
                continue;
            };
            if set.is_empty() {
                continue;
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            write!(f, "{protocol} {set}")?;
        }
        Ok(())
    }
}

impl Serialize for ConnSet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_the_corpus() {
        let mut set = ConnSet::none();
        set.add(Protocol::Udp, &PortSet::range(9090, 9090));
        set.add(Protocol::Tcp, &PortSet::range(8080, 8081));
        set.add(Protocol::Sctp, &PortSet::range(7070, 7070));
        assert_eq!(set.to_string(), "SCTP 7070,TCP 8080-8081,UDP 9090");
        assert_eq!(ConnSet::all().to_string(), "All Connections");
    }

    #[test]
    fn parse_round_trips_and_merges_adjacent_ranges() {
        let set = ConnSet::parse("TCP 10053,10054,UDP 10053").unwrap();
        assert_eq!(set.to_string(), "TCP 10053-10054,UDP 10053");
        let all = ConnSet::parse("SCTP 1-65535,TCP 1-65535,UDP 1-65535").unwrap();
        assert!(all.is_all());
        assert!(ConnSet::parse("ICMP 1").is_err());
    }

    #[test]
    fn intersection_of_ranges() {
        let a = PortSet::range(10, 20);
        let mut b = PortSet::range(15, 30);
        b.add_range(1, 11);
        assert_eq!(a.intersection(&b).ranges(), &[(10, 11), (15, 20)]);
    }
}
