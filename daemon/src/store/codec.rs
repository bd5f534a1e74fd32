//! FlowRecord fields <-> SQLite column values (the encodings documented in
//! `migrations/0001_flows.sql`).
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use chrono::{DateTime, Utc};
use flowpol_recommender::flow::{EndpointKind, Verdict};

/// Unix nanoseconds; instants outside 1677..2262 saturate (never seen in practice).
pub fn time_to_ns(t: &DateTime<Utc>) -> i64 {
    t.timestamp_nanos_opt().unwrap_or(if t.timestamp() < 0 {
        i64::MIN
    } else {
        i64::MAX
    })
}

pub fn ns_to_time(ns: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(ns)
}

/// Counters are summed by SQL, which works on signed 64-bit integers: a delta
/// above i64::MAX (never reached by a real interval) is stored as i64::MAX.
pub fn counter_to_db(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn counter_from_db(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

/// Identifiers keep all 64 bits.
pub fn id_to_db(v: u64) -> i64 {
    v as i64
}

pub fn id_from_db(v: i64) -> u64 {
    v as u64
}

/// An address in its column encoding: 4 bytes (IPv4) or 16 (IPv6), kept inline so that
/// encoding one allocates nothing (the ingest path encodes two per row). The default is
/// empty (length 0): no address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct IpBytes {
    len: u8,
    bytes: [u8; 16],
}

impl IpBytes {
    /// A stored address as read back: `None` unless 4 or 16 bytes.
    pub fn from_db(stored: &[u8]) -> Option<Self> {
        if stored.len() != 4 && stored.len() != 16 {
            return None;
        }
        let mut bytes = [0u8; 16];
        bytes[..stored.len()].copy_from_slice(stored);
        Some(Self {
            len: stored.len() as u8,
            bytes,
        })
    }
}

impl std::ops::Deref for IpBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

pub fn ip_to_db(ip: &IpAddr) -> IpBytes {
    match ip {
        IpAddr::V4(v4) => {
            let mut bytes = [0u8; 16];
            bytes[..4].copy_from_slice(&v4.octets());
            IpBytes { len: 4, bytes }
        }
        IpAddr::V6(v6) => IpBytes {
            len: 16,
            bytes: v6.octets(),
        },
    }
}

pub fn ip_from_db(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => {
            let b: [u8; 4] = bytes.try_into().ok()?;
            Some(IpAddr::V4(Ipv4Addr::from(b)))
        }
        16 => {
            let b: [u8; 16] = bytes.try_into().ok()?;
            Some(IpAddr::V6(Ipv6Addr::from(b)))
        }
        _ => None,
    }
}

pub fn verdict_to_db(v: Verdict) -> &'static str {
    v.as_str()
}

pub fn kind_to_db(k: EndpointKind) -> &'static str {
    match k {
        EndpointKind::Pod => "Pod",
        EndpointKind::Node => "Node",
        EndpointKind::APIServer => "APIServer",
        EndpointKind::External => "External",
    }
}

pub fn kind_from_db(s: &str) -> Option<EndpointKind> {
    match s {
        "Pod" => Some(EndpointKind::Pod),
        "Node" => Some(EndpointKind::Node),
        "APIServer" => Some(EndpointKind::APIServer),
        "External" => Some(EndpointKind::External),
        _ => None,
    }
}

/// Labels as JSON object text; NULL for none (most flows to external ends).
pub fn labels_to_db(labels: &BTreeMap<String, String>) -> Option<String> {
    if labels.is_empty() {
        None
    } else {
        // A map of strings always serializes.
        serde_json::to_string(labels).ok()
    }
}

pub fn labels_from_db(text: Option<&str>) -> Result<BTreeMap<String, String>, serde_json::Error> {
    match text {
        None => Ok(BTreeMap::new()),
        Some(t) => serde_json::from_str(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_to_the_nanosecond() {
        let t = DateTime::parse_from_rfc3339("2026-11-21T14:30:00.123456789Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(ns_to_time(time_to_ns(&t)), t);
    }

    #[test]
    fn ips_round_trip_and_keep_their_family() {
        for ip in ["10.1.2.3", "fd00::1", "::ffff:10.1.2.3"] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_from_db(&ip_to_db(&ip)), Some(ip));
        }
        assert_eq!(ip_from_db(&[1, 2, 3]), None);
    }

    #[test]
    fn ids_keep_all_bits_and_counters_saturate() {
        assert_eq!(id_from_db(id_to_db(u64::MAX)), u64::MAX);
        assert_eq!(counter_to_db(u64::MAX), i64::MAX);
        assert_eq!(counter_from_db(counter_to_db(42)), 42);
    }

    #[test]
    fn kinds_round_trip() {
        for k in [
            EndpointKind::Pod,
            EndpointKind::Node,
            EndpointKind::APIServer,
            EndpointKind::External,
        ] {
            assert_eq!(kind_from_db(kind_to_db(k)), Some(k));
        }
        assert_eq!(kind_from_db("Cow"), None);
    }
}
