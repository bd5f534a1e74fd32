//! The ownership time line: for each address (pod IP, node IP, Service IP, NodePort, pod UID)
//! the intervals `[from, to)` in which it belonged to what. A flow seen at time t resolves to
//! the owner at t, after the pod is gone and after its IP went to another pod.
//!
//! In memory: per key a list of intervals sorted by start; SQLite (migration 0002) keeps the
//! same rows for restarts (see [`super::persist`]).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::Arc;

use flowpol_recommender::flow::{Protocol, WorkloadRef};
use serde::{Deserialize, Serialize};

/// Milliseconds since the Unix epoch.
pub type Millis = i64;

/// End of an interval that is still open.
pub const OPEN: Millis = i64::MAX;

/// What an address can be looked up by.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Key {
    /// A pod IP (not hostNetwork), node address or Service ClusterIP/external/LB IP.
    Ip(IpAddr),
    /// A pod by UID: the local end of socket flows (from the cgroup path).
    PodUid(String),
    /// A NodePort, valid on every node address.
    NodePort(Protocol, u16),
    /// An API server endpoint address (from the `default/kubernetes` Service's endpoints).
    ApiServer(IpAddr),
    /// A pod IP that backs a headless Service.
    Headless(IpAddr),
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Ip(ip) => write!(f, "ip:{ip}"),
            Key::PodUid(uid) => write!(f, "uid:{uid}"),
            Key::NodePort(p, port) => write!(f, "nodeport:{p}/{port}"),
            Key::ApiServer(ip) => write!(f, "apiserver:{ip}"),
            Key::Headless(ip) => write!(f, "headless:{ip}"),
        }
    }
}

impl FromStr for Key {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("identity key {s:?} is not kind:value");
        let (kind, value) = s.split_once(':').ok_or_else(bad)?;
        let ip = || value.parse::<IpAddr>().map_err(|_| bad());
        Ok(match kind {
            "ip" => Key::Ip(ip()?),
            "uid" => Key::PodUid(value.to_string()),
            "apiserver" => Key::ApiServer(ip()?),
            "headless" => Key::Headless(ip()?),
            "nodeport" => {
                let (p, port) = value.split_once('/').ok_or_else(bad)?;
                Key::NodePort(
                    p.parse().map_err(|_| bad())?,
                    port.parse().map_err(|_| bad())?,
                )
            }
            _ => return Err(bad()),
        })
    }
}

/// Who owned a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind")]
pub enum Owner {
    Pod(PodOwner),
    Node(NodeOwner),
    Service(ServiceOwner),
    APIServer(ApiServerOwner),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PodOwner {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// Top controller (`Deployment/api`); `None` for a bare pod.
    pub workload: Option<WorkloadRef>,
    /// Pod labels without per-revision/per-instance ones (`pod-template-hash`, ...);
    /// shared between pods with the same labels.
    pub labels: Arc<BTreeMap<String, String>>,
    /// The controller's selector without per-revision labels, when the controller is known.
    pub selector: Arc<BTreeMap<String, String>>,
    pub host_network: bool,
    pub node: Option<String>,
    /// `status.podIPs` (node addresses for hostNetwork pods).
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeOwner {
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceOwner {
    pub namespace: String,
    pub name: String,
    pub ports: Vec<ServicePortSpec>,
    /// Endpoints from the Service's EndpointSlices at this moment.
    pub backends: Vec<Backend>,
    /// `default/kubernetes`: its backends are the API server.
    pub apiserver: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePortSpec {
    /// `""` for an unnamed port.
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
    pub target_port: TargetPort,
    pub node_port: Option<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backend {
    pub ip: IpAddr,
    /// EndpointSlice port name (`""` unnamed) → the endpoint's port number.
    pub ports: BTreeMap<String, u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiServerOwner {
    pub ports: Vec<u16>,
}

/// One row of the time line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interval {
    pub from: Millis,
    /// Exclusive; [`OPEN`] while the owner still holds the key.
    pub to: Millis,
    /// The object holding the key (`Pod/<uid>`, `Node/<name>`, `Service/<ns>/<name>`).
    pub holder: String,
    pub owner: Arc<Owner>,
}

/// A change to persist, in the order it happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Insert (or replace, same key and start) an interval.
    Open {
        key: Key,
        from: Millis,
        holder: String,
        owner: Arc<Owner>,
    },
    /// Set the end of the interval of `key` that started at `from`.
    Close { key: Key, from: Millis, to: Millis },
}

/// How far before an interval's start a flow may be and still resolve to it, when the time
/// before it is unowned: watch events lag the kernel by a little.
pub const START_GRACE_MS: Millis = 5_000;

#[derive(Debug, Default)]
pub struct Timeline {
    by_key: HashMap<Key, Vec<Interval>>,
    rows: usize,
}

impl Timeline {
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of intervals held.
    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Number of distinct keys.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }

    /// The open interval of `key`, if any.
    pub fn current(&self, key: &Key) -> Option<&Interval> {
        self.by_key
            .get(key)
            .and_then(|v| v.last())
            .filter(|i| i.to == OPEN)
    }

    /// `holder` takes `key` from `at` (or from `since`, the object's creation, when the key was
    /// unowned then). A still-open interval of someone else ends at that moment.
    pub fn claim(
        &mut self,
        key: &Key,
        at: Millis,
        since: Option<Millis>,
        holder: &str,
        owner: Arc<Owner>,
    ) -> Vec<Change> {
        let list = self.by_key.entry(key.clone()).or_default();
        let mut changes = Vec::new();
        if let Some(last) = list.last_mut()
            && last.to == OPEN
            && last.holder == holder
            && *last.owner == *owner
        {
            return changes;
        }
        // Never start before the previous interval (or inside it, once it is closed).
        let floor = list
            .last()
            .map(|l| if l.to == OPEN { l.from } else { l.to })
            .unwrap_or(Millis::MIN);
        let mut from = at;
        if let Some(last) = list.last_mut() {
            if last.to == OPEN {
                from = from.max(last.from);
                last.to = from;
                changes.push(Change::Close {
                    key: key.clone(),
                    from: last.from,
                    to: from,
                });
            } else if let Some(since) = since {
                // Unowned since last.to: start at the object's creation if later.
                from = from.min(since.max(last.to));
            }
        } else if let Some(since) = since {
            from = from.min(since);
        }
        from = from.max(floor);
        // A zero-length interval is replaced, not kept.
        if let Some(last) = list.last()
            && last.from == from
            && last.to == from
        {
            list.pop();
            self.rows -= 1;
            changes.retain(|c| !matches!(c, Change::Close { .. }));
        }
        list.push(Interval {
            from,
            to: OPEN,
            holder: holder.to_string(),
            owner: owner.clone(),
        });
        self.rows += 1;
        changes.push(Change::Open {
            key: key.clone(),
            from,
            holder: holder.to_string(),
            owner,
        });
        changes
    }

    /// `holder` lets go of `key` at `at`; nothing happens if someone else holds it now.
    pub fn release(&mut self, key: &Key, at: Millis, holder: &str) -> Option<Change> {
        let last = self.by_key.get_mut(key)?.last_mut()?;
        if last.to != OPEN || last.holder != holder {
            return None;
        }
        last.to = at.max(last.from);
        Some(Change::Close {
            key: key.clone(),
            from: last.from,
            to: last.to,
        })
    }

    /// Holders of open intervals (to find the ones nobody claims after a restart).
    pub fn open_holders(&self) -> Vec<(Key, String)> {
        self.by_key
            .iter()
            .filter_map(|(k, v)| {
                v.last()
                    .filter(|i| i.to == OPEN)
                    .map(|i| (k.clone(), i.holder.clone()))
            })
            .collect()
    }

    /// Loads a row as stored (used when reading SQLite back).
    pub fn insert_row(&mut self, key: Key, interval: Interval) {
        let list = self.by_key.entry(key).or_default();
        let pos = list.partition_point(|i| i.from <= interval.from);
        if pos > 0 && list[pos - 1].from == interval.from {
            list[pos - 1] = interval;
            return;
        }
        list.insert(pos, interval);
        self.rows += 1;
    }

    /// The owner of `key` at `t`.
    pub fn at(&self, key: &Key, t: Millis) -> Option<&Interval> {
        let list = self.by_key.get(key)?;
        // First interval starting after t.
        let pos = list.partition_point(|i| i.from <= t);
        if pos > 0 && t < list[pos - 1].to {
            return Some(&list[pos - 1]);
        }
        // In a gap (or before the first): the next owner if it started just after t.
        list.get(pos).filter(|next| next.from - t <= START_GRACE_MS)
    }

    /// Drops intervals that ended before `before`; returns how many.
    pub fn prune(&mut self, before: Millis) -> usize {
        let mut dropped = 0;
        self.by_key.retain(|_, list| {
            let n = list.len();
            list.retain(|i| i.to >= before);
            dropped += n - list.len();
            !list.is_empty()
        });
        self.rows -= dropped;
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str) -> Arc<Owner> {
        Arc::new(Owner::Pod(PodOwner {
            namespace: "ns".into(),
            name: name.into(),
            uid: format!("uid-{name}"),
            workload: None,
            labels: Arc::default(),
            selector: Arc::default(),
            host_network: false,
            node: None,
            ips: vec![],
        }))
    }

    fn name_at(tl: &Timeline, key: &Key, t: Millis) -> Option<String> {
        tl.at(key, t).map(|i| match &*i.owner {
            Owner::Pod(p) => p.name.clone(),
            other => format!("{other:?}"),
        })
    }

    #[test]
    fn keys_round_trip_through_text() {
        for k in [
            Key::Ip("10.0.0.1".parse().unwrap()),
            Key::Ip("fd00::1".parse().unwrap()),
            Key::PodUid("abc".into()),
            Key::NodePort(Protocol::Udp, 30053),
            Key::ApiServer("172.18.0.2".parse().unwrap()),
            Key::Headless("10.0.0.9".parse().unwrap()),
        ] {
            assert_eq!(k.to_string().parse::<Key>().unwrap(), k);
        }
        assert!("ip:nope".parse::<Key>().is_err());
        assert!("what".parse::<Key>().is_err());
    }

    #[test]
    fn ip_reuse_resolves_by_time() {
        let ip = Key::Ip("10.244.0.5".parse().unwrap());
        let mut tl = Timeline::new();
        tl.claim(&ip, 1_000, None, "Pod/a", pod("a"));
        tl.release(&ip, 50_000, "Pod/a");
        tl.claim(&ip, 60_000, None, "Pod/b", pod("b"));
        assert_eq!(name_at(&tl, &ip, 1_000).as_deref(), Some("a"));
        assert_eq!(name_at(&tl, &ip, 49_999).as_deref(), Some("a"));
        // In the gap, far from b's start: nobody.
        assert_eq!(name_at(&tl, &ip, 52_000), None);
        // Just before b's start (watch lag): b.
        assert_eq!(name_at(&tl, &ip, 58_000).as_deref(), Some("b"));
        assert_eq!(name_at(&tl, &ip, 99_000_000).as_deref(), Some("b"));
        assert_eq!(tl.len(), 2);
    }

    #[test]
    fn a_new_claim_ends_the_old_one_and_late_release_is_ignored() {
        let ip = Key::Ip("10.244.0.5".parse().unwrap());
        let mut tl = Timeline::new();
        tl.claim(&ip, 1_000, None, "Pod/a", pod("a"));
        let ch = tl.claim(&ip, 2_000, None, "Pod/b", pod("b"));
        assert_eq!(ch.len(), 2, "{ch:?}");
        // a's deletion arrives after b took the IP: b keeps it.
        assert_eq!(tl.release(&ip, 3_000, "Pod/a"), None);
        assert_eq!(name_at(&tl, &ip, 1_500).as_deref(), Some("a"));
        assert_eq!(name_at(&tl, &ip, 2_500).as_deref(), Some("b"));
        assert_eq!(tl.current(&ip).unwrap().holder, "Pod/b");
    }

    #[test]
    fn same_owner_again_is_a_no_op_and_changes_split_intervals() {
        let ip = Key::Ip("10.244.0.5".parse().unwrap());
        let mut tl = Timeline::new();
        assert_eq!(tl.claim(&ip, 1_000, None, "Pod/a", pod("a")).len(), 1);
        assert!(tl.claim(&ip, 2_000, None, "Pod/a", pod("a")).is_empty());
        // Labels changed: same holder, new owner record.
        let mut relabeled = (*pod("a")).clone();
        if let Owner::Pod(p) = &mut relabeled {
            Arc::make_mut(&mut p.labels).insert("tier".into(), "web".into());
        }
        assert_eq!(
            tl.claim(&ip, 3_000, None, "Pod/a", Arc::new(relabeled))
                .len(),
            2
        );
        assert_eq!(tl.len(), 2);
    }

    #[test]
    fn creation_time_backdates_an_unowned_key_but_not_over_a_previous_owner() {
        let ip = Key::Ip("10.244.0.5".parse().unwrap());
        let mut tl = Timeline::new();
        tl.claim(&ip, 10_000, Some(1_000), "Pod/a", pod("a"));
        assert_eq!(tl.current(&ip).unwrap().from, 1_000);
        tl.release(&ip, 20_000, "Pod/a");
        tl.claim(&ip, 30_000, Some(5_000), "Pod/b", pod("b"));
        assert_eq!(tl.current(&ip).unwrap().from, 20_000);
        assert_eq!(name_at(&tl, &ip, 19_999).as_deref(), Some("a"));
        assert_eq!(name_at(&tl, &ip, 20_000).as_deref(), Some("b"));
    }

    #[test]
    fn prune_drops_only_intervals_that_ended_before() {
        let ip = Key::Ip("10.244.0.5".parse().unwrap());
        let mut tl = Timeline::new();
        tl.claim(&ip, 1_000, None, "Pod/a", pod("a"));
        tl.release(&ip, 2_000, "Pod/a");
        tl.claim(&ip, 3_000, None, "Pod/b", pod("b"));
        assert_eq!(tl.prune(2_500), 1);
        assert_eq!(tl.len(), 1);
        assert_eq!(name_at(&tl, &ip, 3_000).as_deref(), Some("b"));
    }
}
