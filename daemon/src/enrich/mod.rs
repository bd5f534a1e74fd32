//! Identity: every flow endpoint resolved to the pod, workload and labels that owned it at the
//! moment the flow was seen.
//!
//! - [`source`]: one source of cluster state ([`source::StateSource`]) with two
//!   implementations, the Kubernetes API ([`kube_source`]) and manifests on disk
//!   ([`manifest_source`]);
//! - [`state`]: turns objects into claims on addresses;
//! - [`timeline`]: per address the intervals in which it belonged to what (in memory);
//! - [`persist`]: the same time line in SQLite (migration 0002), for restarts;
//! - [`cgroup`]: cgroup id → pod UID, the identity of the local end of socket flows;
//! - [`Enricher`]: what the agent calls per drain to fill `FlowRecord.src/dst`.

pub mod agent;
pub mod cgroup;
pub mod kube_source;
pub mod manifest_source;
pub mod persist;
pub mod source;
pub mod state;
pub mod timeline;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowpol_recommender::flow::{Endpoint, EndpointKind, FlowRecord, Protocol};
use tokio::sync::{mpsc, watch};

use cgroup::CgroupResolver;
use persist::IdentityDb;
use source::StateSource;
use state::{ClusterState, Stamped, StateUpdate};
use timeline::{Change, Key, Millis, Owner, PodOwner, ServiceOwner, TargetPort, Timeline};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Source(#[from] source::SourceError),
    #[error(transparent)]
    Persist(#[from] persist::PersistError),
    #[error(transparent)]
    Cgroup(#[from] cgroup::CgroupError),
}

/// The shared identity index: cluster state plus the ownership time line.
pub struct Identity {
    inner: RwLock<Inner>,
    ready: watch::Sender<bool>,
    /// Most recent problems with inputs (bad objects, files), newest last.
    problems: Mutex<Vec<String>>,
}

struct Inner {
    state: ClusterState,
    timeline: Timeline,
}

const MAX_PROBLEMS: usize = 100;

impl Default for Identity {
    fn default() -> Self {
        Self::with_timeline(Timeline::new())
    }
}

impl Identity {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Starts from a time line read back from SQLite.
    pub fn with_timeline(timeline: Timeline) -> Self {
        Self {
            inner: RwLock::new(Inner {
                state: ClusterState::new(),
                timeline,
            }),
            ready: watch::channel(false).0,
            problems: Mutex::new(Vec::new()),
        }
    }

    /// Applies one update from a source; returns the time line changes to persist.
    pub fn apply(&self, stamped: Stamped) -> Vec<Change> {
        if let StateUpdate::Invalid { input, error } = &stamped.update {
            tracing::warn!(%input, %error, "identity: input ignored, keeping the last good state");
            let mut p = self.problems.lock().unwrap_or_else(|e| e.into_inner());
            p.push(format!("{input}: {error}"));
            let excess = p.len().saturating_sub(MAX_PROBLEMS);
            p.drain(..excess);
        }
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        let Inner { state, timeline } = &mut *inner;
        let changes = state.apply(stamped, timeline);
        if state.ready() && !*self.ready.borrow() {
            tracing::info!(pods = state.pod_count(), "identity: cluster state ready");
            self.ready.send_replace(true);
        }
        changes
    }

    /// True after the first full list of every kind.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Resolves when the state is ready.
    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }

    /// Problems seen with inputs (bad objects or manifests), newest last.
    pub fn problems(&self) -> Vec<String> {
        self.problems
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops intervals that ended before `before`.
    pub fn prune(&self, before: DateTime<Utc>) -> usize {
        let mut inner = self.inner.write().unwrap_or_else(|e| e.into_inner());
        inner.timeline.prune(before.timestamp_millis())
    }

    /// (intervals, keys) held in memory.
    pub fn size(&self) -> (usize, usize) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        (inner.timeline.len(), inner.timeline.keys())
    }

    pub fn pod_count(&self) -> usize {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.state.pod_count()
    }

    /// NetworkPolicies currently known.
    pub fn network_policies(&self) -> Vec<k8s_openapi::api::networking::v1::NetworkPolicy> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner.state.network_policies()
    }

    /// The owner of `key` at `t`.
    pub fn owner_at(&self, key: &Key, t: DateTime<Utc>) -> Option<Arc<Owner>> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .timeline
            .at(key, t.timestamp_millis())
            .map(|i| i.owner.clone())
    }

    /// The addresses Nodes hold now.
    pub fn node_addresses(&self) -> Vec<std::net::IpAddr> {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        inner
            .timeline
            .open_holders()
            .into_iter()
            .filter_map(|(key, holder)| match key {
                Key::Ip(ip) if holder.starts_with("Node/") => Some(ip),
                _ => None,
            })
            .collect()
    }

    /// The pod with this UID at `t` (also after it was deleted, within retention).
    pub fn pod_by_uid(&self, uid: &str, t: DateTime<Utc>) -> Option<PodOwner> {
        match self.owner_at(&Key::PodUid(uid.to_string()), t)?.as_ref() {
            Owner::Pod(p) => Some(p.clone()),
            _ => None,
        }
    }

    /// Fills the identity fields of an endpoint from its address as of `t`. `is_dst` enables
    /// Service resolution (the dialed address and port).
    pub fn resolve_endpoint(
        &self,
        ep: &mut Endpoint,
        protocol: Protocol,
        t: DateTime<Utc>,
        is_dst: bool,
    ) {
        let inner = self.inner.read().unwrap_or_else(|e| e.into_inner());
        resolve_with(&inner.timeline, ep, protocol, t.timestamp_millis(), is_dst);
    }
}

fn clear_identity(ep: &mut Endpoint) {
    let (ip, port) = (ep.ip, ep.port);
    *ep = Endpoint::new(ip, port);
}

fn fill_pod(ep: &mut Endpoint, p: &PodOwner) {
    ep.kind = Some(EndpointKind::Pod);
    ep.namespace = Some(p.namespace.clone());
    ep.pod = Some(p.name.clone());
    ep.workload = p.workload.clone();
    ep.labels = p.labels.as_ref().clone();
    ep.selector = p.selector.as_ref().clone();
}

fn resolve_with(tl: &Timeline, ep: &mut Endpoint, protocol: Protocol, t: Millis, is_dst: bool) {
    clear_identity(ep);
    let owner_of = |key: Key| tl.at(&key, t).map(|i| i.owner.clone());
    if is_dst
        && let Some(api) = owner_of(Key::ApiServer(ep.ip))
        && let Owner::APIServer(a) = api.as_ref()
        && a.ports.contains(&ep.port)
    {
        ep.kind = Some(EndpointKind::APIServer);
        return;
    }
    match owner_of(Key::Ip(ep.ip)).as_deref() {
        Some(Owner::Pod(p)) => {
            fill_pod(ep, p);
            if is_dst && let Some(Owner::Service(s)) = owner_of(Key::Headless(ep.ip)).as_deref() {
                let serves = s.backends.iter().any(|b| {
                    b.ip == ep.ip && (b.ports.is_empty() || b.ports.values().any(|p| *p == ep.port))
                });
                if serves {
                    ep.service = Some(format!("{}/{}", s.namespace, s.name));
                }
            }
        }
        Some(Owner::Node(_)) => {
            if is_dst
                && let Some(Owner::Service(s)) =
                    owner_of(Key::NodePort(protocol, ep.port)).as_deref()
            {
                resolve_service(tl, ep, s, protocol, t, true);
                return;
            }
            ep.kind = Some(EndpointKind::Node);
        }
        Some(Owner::Service(s)) if is_dst => resolve_service(tl, ep, s, protocol, t, false),
        Some(Owner::Service(s)) => {
            ep.namespace = Some(s.namespace.clone());
        }
        Some(Owner::APIServer(_)) => ep.kind = Some(EndpointKind::APIServer),
        None => ep.kind = Some(EndpointKind::External),
    }
}

/// The (pod address, pod port) of each backend of Service `s` for `dialed` on `protocol`, as
/// its EndpointSlices give them (a numeric targetPort when they name no port).
#[cfg(feature = "agent")]
fn service_backends(
    s: &ServiceOwner,
    protocol: Protocol,
    dialed: u16,
) -> Vec<(std::net::IpAddr, u16)> {
    let Some(spec) = s
        .ports
        .iter()
        .find(|p| p.protocol == protocol && p.port == dialed)
    else {
        return Vec::new();
    };
    s.backends
        .iter()
        .filter_map(|b| match (b.ports.get(&spec.name), &spec.target_port) {
            (Some(port), _) => Some((b.ip, *port)),
            (None, TargetPort::Number(n)) if b.ports.is_empty() => Some((b.ip, *n)),
            _ => None,
        })
        .collect()
}

/// A flow sent to a Service address: name the Service, the backend workload and the pod port.
fn resolve_service(
    tl: &Timeline,
    ep: &mut Endpoint,
    s: &ServiceOwner,
    protocol: Protocol,
    t: Millis,
    by_node_port: bool,
) {
    let dialed = ep.port;
    ep.service = Some(format!("{}/{}", s.namespace, s.name));
    ep.service_port = Some(dialed);
    ep.namespace = Some(s.namespace.clone());
    let spec = s.ports.iter().find(|p| {
        p.protocol == protocol
            && if by_node_port {
                p.node_port == Some(dialed)
            } else {
                p.port == dialed
            }
    });
    if s.apiserver {
        ep.kind = Some(EndpointKind::APIServer);
        ep.namespace = None;
    }
    let Some(spec) = spec else { return };
    // The pod port: what the EndpointSlices say for this port name, else a numeric targetPort.
    let backends: Vec<_> = s
        .backends
        .iter()
        .filter(|b| b.ports.is_empty() || b.ports.contains_key(&spec.name))
        .collect();
    let from_slices = backends
        .iter()
        .filter_map(|b| b.ports.get(&spec.name))
        .min();
    ep.port = match (from_slices, &spec.target_port) {
        (Some(p), _) => *p,
        (None, TargetPort::Number(n)) => *n,
        (None, TargetPort::Name(_)) => dialed,
    };
    if s.apiserver {
        return;
    }
    let mut pods: Vec<PodOwner> = Vec::new();
    let mut others: Vec<EndpointKind> = Vec::new();
    for b in &backends {
        match tl.at(&Key::Ip(b.ip), t).map(|i| i.owner.as_ref()) {
            Some(Owner::Pod(p)) => pods.push(p.clone()),
            Some(Owner::Node(_)) => others.push(EndpointKind::Node),
            _ => others.push(EndpointKind::External),
        }
    }
    if pods.is_empty() {
        // A Service without a selector pointing outside the cluster (or to nodes).
        if let Some(k) = others.first() {
            ep.kind = Some(*k);
        }
        return;
    }
    if pods.len() == 1 && others.is_empty() {
        fill_pod(ep, &pods[0]);
        return;
    }
    let first = &pods[0];
    let same_workload = others.is_empty()
        && first.workload.is_some()
        && pods
            .iter()
            .all(|p| p.namespace == first.namespace && p.workload == first.workload);
    ep.kind = Some(EndpointKind::Pod);
    if same_workload {
        ep.namespace = Some(first.namespace.clone());
        ep.workload = first.workload.clone();
        // Labels every backend shares.
        let mut labels: BTreeMap<String, String> = first.labels.as_ref().clone();
        for p in &pods[1..] {
            labels.retain(|k, v| p.labels.get(k) == Some(v));
        }
        ep.labels = labels;
        ep.selector = first.selector.as_ref().clone();
    }
}

/// What the agent calls per drain: fills the identity fields of each record.
pub struct Enricher {
    identity: Arc<Identity>,
    cgroups: Option<CgroupResolver>,
    /// Recent connections whose local end a cgroup named: records of the same connection
    /// without a socket (kernel drops) get the same local pod.
    recent: Mutex<HashMap<ConnKey, (String, LocalEnd)>>,
}

/// (protocol, src ip, src port, dst ip, dst port).
type ConnKey = (Protocol, std::net::IpAddr, u16, std::net::IpAddr, u16);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocalEnd {
    Src,
    Dst,
}

const MAX_RECENT: usize = 65_536;

fn conn_key(f: &FlowRecord) -> ConnKey {
    (f.protocol, f.src.ip, f.src.port, f.dst.ip, f.dst.port)
}

impl Enricher {
    pub fn new(identity: Arc<Identity>, cgroups: Option<CgroupResolver>) -> Self {
        Self {
            identity,
            cgroups,
            recent: Mutex::new(HashMap::new()),
        }
    }

    pub fn identity(&self) -> &Arc<Identity> {
        &self.identity
    }

    /// The flows of an interval that are the server's view of a connection another flow of
    /// the same interval records as sent to a Service address: when client and backend pod
    /// share the node, the client's socket sees the Service address (it is translated on the
    /// way) and the backend's socket the pod address, so capture keeps two flows for one
    /// connection. Returns the flows without those server views (the client's view, which
    /// names the Service, the backend and its pod port once enriched, stays), or `None` when
    /// there are none.
    #[cfg(feature = "agent")]
    pub fn fold_service_views(
        &self,
        flows: &[crate::capture::assemble::CompactFlow],
    ) -> Option<Vec<crate::capture::assemble::CompactFlow>> {
        use flowpol_recommender::flow::Verdict;
        type Opener = (Protocol, crate::capture::assemble::Addr);
        // Flows by their opener: only an opener with two or more flows can have both views.
        let mut by_opener: HashMap<Opener, Vec<usize>> = HashMap::new();
        for (i, f) in flows
            .iter()
            .enumerate()
            .filter(|(_, f)| f.verdict == Verdict::Forwarded)
        {
            by_opener.entry((f.protocol, f.src)).or_default().push(i);
        }
        by_opener.retain(|_, v| v.len() > 1);
        if by_opener.is_empty() {
            return None;
        }
        let inner = self
            .identity
            .inner
            .read()
            .unwrap_or_else(|e| e.into_inner());
        let tl = &inner.timeline;
        let mut server_view = vec![false; flows.len()];
        for same_opener in by_opener.values() {
            for &i in same_opener {
                let client = &flows[i];
                let t = client.first_seen.timestamp_millis();
                let Some(Owner::Service(svc)) =
                    tl.at(&Key::Ip(client.dst.0), t).map(|iv| iv.owner.as_ref())
                else {
                    continue;
                };
                let backends = service_backends(svc, client.protocol, client.dst.1);
                for &j in same_opener {
                    let server = &flows[j];
                    if j != i
                        && !server_view[j]
                        && backends.contains(&server.dst)
                        && server.first_seen <= client.last_seen
                        && client.first_seen <= server.last_seen
                    {
                        server_view[j] = true;
                    }
                }
            }
        }
        if !server_view.contains(&true) {
            return None;
        }
        Some(
            flows
                .iter()
                .zip(server_view)
                .filter(|(_, dup)| !dup)
                .map(|(f, _)| f.clone())
                .collect(),
        )
    }

    /// Resolves both ends of every record as of its `first_seen`. Socket records go first so
    /// drop records of the same connection in the batch can borrow their local pod.
    pub fn enrich(&self, flows: &mut [FlowRecord]) {
        for f in flows.iter_mut().filter(|f| f.cgroup_id.is_some()) {
            self.enrich_one(f);
        }
        for f in flows.iter_mut().filter(|f| f.cgroup_id.is_none()) {
            self.enrich_one(f);
        }
    }

    pub fn enrich_one(&self, f: &mut FlowRecord) {
        let t = f.first_seen;
        self.identity
            .resolve_endpoint(&mut f.src, f.protocol, t, false);
        self.identity
            .resolve_endpoint(&mut f.dst, f.protocol, t, true);
        // The local end: the cgroup of the socket names the pod, hostNetwork pods included.
        if let Some(pod) = self.local_pod(f) {
            let is_local = |ep: &Endpoint| {
                pod.ips.contains(&ep.ip)
                    || ep.ip.is_loopback()
                    || (pod.host_network && ep.kind == Some(EndpointKind::Node))
            };
            let end = if is_local(&f.src) {
                LocalEnd::Src
            } else if is_local(&f.dst) {
                LocalEnd::Dst
            } else {
                return;
            };
            set_local(f, end, &pod);
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            if recent.len() >= MAX_RECENT {
                recent.clear();
            }
            recent.insert(conn_key(f), (pod.uid.clone(), end));
            return;
        }
        if f.cgroup_id.is_some() {
            return;
        }
        // No socket: the same connection seen earlier with one.
        let known = {
            let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            recent.get(&conn_key(f)).cloned()
        };
        if let Some((uid, end)) = known
            && let Some(pod) = self.identity.pod_by_uid(&uid, t)
        {
            set_local(f, end, &pod);
        }
    }

    fn local_pod(&self, f: &FlowRecord) -> Option<PodOwner> {
        let id = f.cgroup_id?;
        let resolver = self.cgroups.as_ref()?;
        let owner = match resolver.resolve(id) {
            Ok(o) => o?,
            Err(e) => {
                tracing::warn!(error = %e, "identity: cgroup lookup failed");
                return None;
            }
        };
        self.identity.pod_by_uid(&owner.pod_uid, f.first_seen)
    }
}

fn set_local(f: &mut FlowRecord, end: LocalEnd, pod: &PodOwner) {
    match end {
        LocalEnd::Src => fill_pod(&mut f.src, pod),
        LocalEnd::Dst => {
            let (service, service_port) = (f.dst.service.take(), f.dst.service_port.take());
            fill_pod(&mut f.dst, pod);
            // Sent to a headless Service's pod: keep that name.
            if service_port.is_none() {
                f.dst.service = service;
            }
        }
    }
}

/// A failed write costs only resolution after a restart: the in-memory time line is whole,
/// so the agent keeps going.
fn persist_or_warn(res: Result<(), persist::PersistError>) {
    if let Err(e) = res {
        tracing::warn!(error = %e, "identity: time line not saved to SQLite");
    }
}

/// Runs a state source into `identity` (and SQLite when `db` is given) until `shutdown`.
/// Intervals that ended more than `retention` ago are pruned every 5 minutes.
pub async fn run_source(
    identity: Arc<Identity>,
    source: Box<dyn StateSource>,
    db: Option<IdentityDb>,
    retention: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), IdentityError> {
    let (tx, mut rx) = mpsc::channel::<Stamped>(1024);
    let mut source_task = tokio::spawn(source.run(tx, shutdown.clone()));
    let mut prune = tokio::time::interval(Duration::from_secs(300));
    loop {
        tokio::select! {
            msg = rx.recv() => {
                let Some(stamped) = msg else { break };
                let changes = identity.apply(stamped);
                if let Some(db) = &db
                    && !changes.is_empty() {
                        persist_or_warn(db.write(&changes).await);
                    }
            }
            _ = prune.tick() => {
                let before = Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::days(7));
                identity.prune(before);
                if let Some(db) = &db {
                    persist_or_warn(db.prune(before.timestamp_millis()).await.map(|_| ()));
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    // Drain what the source already sent, then wait for it to stop.
    while let Ok(stamped) = rx.try_recv() {
        let changes = identity.apply(stamped);
        if let Some(db) = &db {
            persist_or_warn(db.write(&changes).await);
        }
    }
    match tokio::time::timeout(Duration::from_secs(5), &mut source_task).await {
        Ok(Ok(res)) => res?,
        Ok(Err(join)) => tracing::warn!(error = %join, "identity: source task failed"),
        Err(_) => {
            source_task.abort();
            tracing::warn!("identity: source did not stop within 5s; aborted");
        }
    }
    Ok(())
}
