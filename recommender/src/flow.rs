//! The flow model: one typed record shared by every stage, from the kernel
//! drain (capture) through identity (enrich), SQLite (store) and the HTTP API
//! (serve) to recommend / audit / explain.
//!
//! Its JSON form is the contract of `flowpol flows -o json` and `/api/v1/flows`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// IP protocol of a flow. ICMP flows carry type/code in place of ports
/// (`src.port` = type, `dst.port` = code).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Icmpv6,
    Sctp,
    /// Any other IP protocol number.
    Other(u8),
}

impl Protocol {
    pub fn from_number(n: u8) -> Self {
        match n {
            6 => Self::Tcp,
            17 => Self::Udp,
            1 => Self::Icmp,
            58 => Self::Icmpv6,
            132 => Self::Sctp,
            other => Self::Other(other),
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Icmp => 1,
            Self::Icmpv6 => 58,
            Self::Sctp => 132,
            Self::Other(n) => n,
        }
    }

    /// True for the protocols NetworkPolicy ports can name.
    pub fn has_ports(self) -> bool {
        matches!(self, Self::Tcp | Self::Udp | Self::Sctp)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("TCP"),
            Self::Udp => f.write_str("UDP"),
            Self::Icmp => f.write_str("ICMP"),
            Self::Icmpv6 => f.write_str("ICMPv6"),
            Self::Sctp => f.write_str("SCTP"),
            Self::Other(n) => write!(f, "IP-{n}"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown protocol {0:?}: expected TCP, UDP, SCTP, ICMP, ICMPv6 or IP-<number>")]
pub struct UnknownProtocol(pub String);

impl FromStr for Protocol {
    type Err = UnknownProtocol;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Ok(Self::Tcp),
            "UDP" => Ok(Self::Udp),
            "ICMP" => Ok(Self::Icmp),
            "ICMPV6" => Ok(Self::Icmpv6),
            "SCTP" => Ok(Self::Sctp),
            other => other
                .strip_prefix("IP-")
                .and_then(|n| n.parse().ok())
                .map(Self::Other)
                .ok_or_else(|| UnknownProtocol(s.to_string())),
        }
    }
}

impl Serialize for Protocol {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Protocol {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What happened to a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Packets were delivered (seen at a socket or forwarded).
    Forwarded,
    /// The kernel freed packets of this flow with a drop reason.
    Dropped,
    /// A TCP SYN that never saw a SYN-ACK within the timeout.
    Unanswered,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Forwarded => "forwarded",
            Self::Dropped => "dropped",
            Self::Unanswered => "unanswered",
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Verdict {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "forwarded" => Ok(Self::Forwarded),
            "dropped" => Ok(Self::Dropped),
            "unanswered" => Ok(Self::Unanswered),
            other => Err(format!(
                "unknown verdict {other:?}: expected forwarded, dropped or unanswered"
            )),
        }
    }
}

/// What kind of thing owns an endpoint address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EndpointKind {
    Pod,
    Node,
    APIServer,
    External,
}

/// A workload reference, `Kind/name` in text form (`Deployment/api`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadRef {
    pub kind: String,
    pub name: String,
}

impl fmt::Display for WorkloadRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

impl FromStr for WorkloadRef {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once('/') {
            Some((kind, name)) if !kind.is_empty() && !name.is_empty() => Ok(Self {
                kind: kind.to_string(),
                name: name.to_string(),
            }),
            _ => Err(format!("workload {s:?} is not of the form Kind/name")),
        }
    }
}

impl Serialize for WorkloadRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for WorkloadRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// One end of a flow: its address and, once enriched, who owned it at that moment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub ip: IpAddr,
    /// Port (TCP/UDP/SCTP); ICMP type for the source, code for the destination.
    pub port: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<EndpointKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<WorkloadRef>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// The labels a NetworkPolicy should select this end's workload by: its controller's
    /// selector without per-revision labels (`pod-template-hash`...) when the agent knows the
    /// controller object (ReplicaSet, hence Deployment), else the pod's stable labels; empty
    /// for a pod without a controller.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub selector: BTreeMap<String, String>,
    /// `ns/name` of the Service the flow was sent to (destination only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The port that was dialed, when a Service translated it (destination only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_port: Option<u16>,
}

impl Endpoint {
    pub fn new(ip: IpAddr, port: u16) -> Self {
        Self {
            ip,
            port,
            kind: None,
            namespace: None,
            pod: None,
            workload: None,
            labels: BTreeMap::new(),
            selector: BTreeMap::new(),
            service: None,
            service_port: None,
        }
    }

    /// `ns/workload` when known, else the pod, else the address.
    pub fn display_name(&self) -> String {
        match (&self.namespace, &self.workload, &self.pod) {
            (Some(ns), Some(w), _) => format!("{ns}/{}", w.name),
            (Some(ns), None, Some(pod)) => format!("{ns}/{pod}"),
            _ => match self.kind {
                Some(EndpointKind::Node) => format!("node:{}", self.ip),
                Some(EndpointKind::APIServer) => format!("apiserver:{}", self.ip),
                _ => self.ip.to_string(),
            },
        }
    }
}

/// TCP flags seen on a flow, as a bit set (`TcpFlags::SYN | TcpFlags::FIN`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const SYN: u8 = 1 << 0;
    pub const SYN_ACK: u8 = 1 << 1;
    pub const FIN: u8 = 1 << 2;
    pub const RST: u8 = 1 << 3;

    pub fn contains(self, bit: u8) -> bool {
        self.0 & bit != 0
    }

    pub fn names(self) -> Vec<&'static str> {
        [
            (Self::SYN, "SYN"),
            (Self::SYN_ACK, "SYN-ACK"),
            (Self::FIN, "FIN"),
            (Self::RST, "RST"),
        ]
        .into_iter()
        .filter(|(bit, _)| self.contains(*bit))
        .map(|(_, name)| name)
        .collect()
    }
}

impl Serialize for TcpFlags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl<'de> Deserialize<'de> for TcpFlags {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        let mut bits = 0;
        for n in names {
            bits |= match n.as_str() {
                "SYN" => Self::SYN,
                "SYN-ACK" => Self::SYN_ACK,
                "FIN" => Self::FIN,
                "RST" => Self::RST,
                other => {
                    return Err(serde::de::Error::custom(format!(
                        "unknown TCP flag {other:?}"
                    )));
                }
            };
        }
        Ok(Self(bits))
    }
}

/// A flow as recorded: `src` is the side that opened it when that is known
/// (the SYN sender, the first packet's sender otherwise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowRecord {
    pub src: Endpoint,
    pub dst: Endpoint,
    pub protocol: Protocol,
    /// Packets and bytes from src to dst.
    pub packets: u64,
    pub bytes: u64,
    /// Packets and bytes from dst back to src.
    #[serde(default)]
    pub reply_packets: u64,
    #[serde(default)]
    pub reply_bytes: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub verdict: Verdict,
    /// The kernel's drop reason name (`NETFILTER_DROP`), `None` unless dropped.
    pub drop_reason: Option<String>,
    #[serde(default)]
    pub tcp_flags: TcpFlags,
    /// TCP connections opened in this record's span: the SYNs `src` sent,
    /// retransmissions included. A client's connections to one server port
    /// are one record, its ephemeral port 0. 0 for other protocols, drops, and
    /// records of a connection opened earlier.
    #[serde(default)]
    pub connections: u64,
    /// cgroup id of the local socket that saw the flow, when one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
    /// Node that recorded the flow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A record (or stored row) of `protocol` from source port `src_port` holds a
/// client's TCP connections to one server port, aggregated by the agent: TCP
/// never uses port 0, the kernel writes it in place of the client's ports.
pub fn aggregates_connections(protocol: Protocol, src_port: u16) -> bool {
    protocol == Protocol::Tcp && src_port == 0
}

impl FlowRecord {
    /// The connections of a record of a client's aggregated TCP connections
    /// (see [`aggregates_connections`]); `None` for a record of one flow.
    pub fn aggregated_connections(&self) -> Option<u64> {
        aggregates_connections(self.protocol, self.src.port).then_some(self.connections)
    }

    /// How many flows this record stands for: each connection of an aggregated
    /// record (at least one), any other record one.
    pub fn flows(&self) -> u64 {
        self.aggregated_connections().map_or(1, |n| n.max(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_round_trips_through_text() {
        for p in [
            Protocol::Tcp,
            Protocol::Udp,
            Protocol::Icmp,
            Protocol::Icmpv6,
            Protocol::Sctp,
            Protocol::Other(47),
        ] {
            assert_eq!(p.to_string().parse::<Protocol>().unwrap(), p);
            assert_eq!(Protocol::from_number(p.number()), p);
        }
        assert!("QUIC".parse::<Protocol>().is_err());
    }

    #[test]
    fn flow_json_has_the_documented_fields() {
        let t = DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
            .unwrap()
            .with_timezone(&Utc);
        let rec = FlowRecord {
            src: Endpoint::new("10.0.0.1".parse().unwrap(), 40000),
            dst: Endpoint::new("fd00::2".parse().unwrap(), 443),
            protocol: Protocol::Tcp,
            packets: 3,
            bytes: 180,
            reply_packets: 2,
            reply_bytes: 120,
            first_seen: t,
            last_seen: t,
            verdict: Verdict::Dropped,
            drop_reason: Some("NETFILTER_DROP".into()),
            tcp_flags: TcpFlags(TcpFlags::SYN),
            connections: 4,
            cgroup_id: None,
            node: None,
        };
        let v = serde_json::to_value(&rec).unwrap();
        assert_eq!(v["src"]["ip"], "10.0.0.1");
        assert_eq!(v["dst"]["port"], 443);
        assert_eq!(v["protocol"], "TCP");
        assert_eq!(v["verdict"], "dropped");
        assert_eq!(v["drop_reason"], "NETFILTER_DROP");
        assert_eq!(v["first_seen"], "2026-01-02T03:04:05Z");
        assert_eq!(v["tcp_flags"], serde_json::json!(["SYN"]));
        assert_eq!(v["connections"], 4);
        assert_eq!(rec.flows(), 1, "a client port of its own: one flow");
        let back: FlowRecord = serde_json::from_value(v).unwrap();
        assert_eq!(back, rec);
    }
}
