//! Cluster state as seen through a [`super::source::StateSource`], and what each object owns.
//!
//! Objects arrive as [`StateUpdate`]s; each one is turned into claims on time line keys
//! (pod IPs, pod UIDs, node addresses, Service IPs, NodePorts, API server endpoints).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use flowpol_recommender::flow::{Protocol, WorkloadRef};
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::timeline::{
    ApiServerOwner, Backend, Change, Key, Millis, NodeOwner, Owner, PodOwner, ServiceOwner,
    ServicePortSpec, TargetPort, Timeline,
};

/// The kinds a source delivers. ReplicaSets and Jobs are read only to name a pod's top owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ObjectKind {
    Namespace,
    Node,
    Pod,
    Service,
    EndpointSlice,
    NetworkPolicy,
    ReplicaSet,
    Job,
}

impl ObjectKind {
    pub const ALL: [ObjectKind; 8] = [
        ObjectKind::Namespace,
        ObjectKind::Node,
        ObjectKind::ReplicaSet,
        ObjectKind::Job,
        ObjectKind::Pod,
        ObjectKind::Service,
        ObjectKind::EndpointSlice,
        ObjectKind::NetworkPolicy,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ObjectKind::Namespace => "Namespace",
            ObjectKind::Node => "Node",
            ObjectKind::Pod => "Pod",
            ObjectKind::Service => "Service",
            ObjectKind::EndpointSlice => "EndpointSlice",
            ObjectKind::NetworkPolicy => "NetworkPolicy",
            ObjectKind::ReplicaSet => "ReplicaSet",
            ObjectKind::Job => "Job",
        }
    }

    /// The kind of a manifest's `kind:` field, if flowpol reads it.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == kind)
    }
}

/// One Kubernetes object flowpol reads.
#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Box<Namespace>),
    Node(Box<Node>),
    Pod(Box<Pod>),
    Service(Box<Service>),
    EndpointSlice(Box<EndpointSlice>),
    NetworkPolicy(Box<NetworkPolicy>),
    ReplicaSet(Box<ReplicaSet>),
    Job(Box<Job>),
}

impl Object {
    pub fn kind(&self) -> ObjectKind {
        match self {
            Object::Namespace(_) => ObjectKind::Namespace,
            Object::Node(_) => ObjectKind::Node,
            Object::Pod(_) => ObjectKind::Pod,
            Object::Service(_) => ObjectKind::Service,
            Object::EndpointSlice(_) => ObjectKind::EndpointSlice,
            Object::NetworkPolicy(_) => ObjectKind::NetworkPolicy,
            Object::ReplicaSet(_) => ObjectKind::ReplicaSet,
            Object::Job(_) => ObjectKind::Job,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Namespace(o) => &o.metadata,
            Object::Node(o) => &o.metadata,
            Object::Pod(o) => &o.metadata,
            Object::Service(o) => &o.metadata,
            Object::EndpointSlice(o) => &o.metadata,
            Object::NetworkPolicy(o) => &o.metadata,
            Object::ReplicaSet(o) => &o.metadata,
            Object::Job(o) => &o.metadata,
        }
    }

    /// `namespace/name` (or `name` for cluster-scoped kinds).
    pub fn name(&self) -> String {
        object_name(self.meta())
    }

    /// What tells two objects apart: the UID for pods, `namespace/name` otherwise.
    pub fn identity(&self) -> String {
        match self {
            Object::Pod(p) => pod_key(p),
            _ => self.name(),
        }
    }

    /// `Kind namespace/name`, for messages.
    pub fn describe(&self) -> String {
        format!("{} {}", self.kind().name(), self.name())
    }

    /// An object with only its metadata (enough to delete it).
    pub fn with_meta(kind: ObjectKind, metadata: ObjectMeta) -> Self {
        match kind {
            ObjectKind::Namespace => Object::Namespace(Box::new(Namespace {
                metadata,
                ..Default::default()
            })),
            ObjectKind::Node => Object::Node(Box::new(Node {
                metadata,
                ..Default::default()
            })),
            ObjectKind::Pod => Object::Pod(Box::new(Pod {
                metadata,
                ..Default::default()
            })),
            ObjectKind::Service => Object::Service(Box::new(Service {
                metadata,
                ..Default::default()
            })),
            ObjectKind::EndpointSlice => Object::EndpointSlice(Box::new(EndpointSlice {
                metadata,
                ..Default::default()
            })),
            ObjectKind::NetworkPolicy => Object::NetworkPolicy(Box::new(NetworkPolicy {
                metadata,
                ..Default::default()
            })),
            ObjectKind::ReplicaSet => Object::ReplicaSet(Box::new(ReplicaSet {
                metadata,
                ..Default::default()
            })),
            ObjectKind::Job => Object::Job(Box::new(Job {
                metadata,
                ..Default::default()
            })),
        }
    }

    /// Parses a JSON object of a known kind; the error names the object.
    pub fn from_json(kind: ObjectKind, value: serde_json::Value) -> Result<Self, String> {
        fn de<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<Box<T>, String> {
            serde_json::from_value(v)
                .map(Box::new)
                .map_err(|e| e.to_string())
        }
        Ok(match kind {
            ObjectKind::Namespace => Object::Namespace(de(value)?),
            ObjectKind::Node => Object::Node(de(value)?),
            ObjectKind::Pod => Object::Pod(de(value)?),
            ObjectKind::Service => Object::Service(de(value)?),
            ObjectKind::EndpointSlice => Object::EndpointSlice(de(value)?),
            ObjectKind::NetworkPolicy => Object::NetworkPolicy(de(value)?),
            ObjectKind::ReplicaSet => Object::ReplicaSet(de(value)?),
            ObjectKind::Job => Object::Job(de(value)?),
        })
    }
}

fn object_name(m: &ObjectMeta) -> String {
    let name = m.name.as_deref().unwrap_or("<unnamed>");
    match m.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// What a source reports.
#[derive(Debug, Clone)]
pub enum StateUpdate {
    /// An object was added or changed.
    Apply(Object),
    /// An object was deleted.
    Delete(Object),
    /// The complete list of one kind (first list, or a re-list after `410 Gone`): objects of
    /// that kind not in it are gone, except the `invalid` ones (named `ns/name`), which keep
    /// their last good version.
    Resync {
        kind: ObjectKind,
        objects: Vec<Object>,
        invalid: Vec<String>,
    },
    /// An object or input the source could not read; the last good state stays.
    Invalid { input: String, error: String },
}

/// An update and when it was observed.
#[derive(Debug, Clone)]
pub struct Stamped {
    pub at: DateTime<Utc>,
    pub update: StateUpdate,
}

/// Labels that change per revision or per instance: never what a policy should select on.
pub const PER_REVISION_LABELS: [&str; 10] = [
    "pod-template-hash",
    "controller-revision-hash",
    "pod-template-generation",
    "statefulset.kubernetes.io/pod-name",
    "apps.kubernetes.io/pod-index",
    "batch.kubernetes.io/job-completion-index",
    "batch.kubernetes.io/controller-uid",
    "controller-uid",
    "batch.kubernetes.io/job-name",
    "job-name",
];

pub fn stable_labels(labels: Option<&BTreeMap<String, String>>) -> BTreeMap<String, String> {
    labels
        .map(|l| {
            l.iter()
                .filter(|(k, _)| !PER_REVISION_LABELS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

type NsName = (String, String);

fn ns_name(m: &ObjectMeta) -> NsName {
    (
        m.namespace.clone().unwrap_or_default(),
        m.name.clone().unwrap_or_default(),
    )
}

fn millis(t: DateTime<Utc>) -> Millis {
    t.timestamp_millis()
}

/// The current objects and which time line keys each holds.
#[derive(Debug, Default)]
pub struct ClusterState {
    namespaces: HashMap<String, Namespace>,
    nodes: HashMap<String, Node>,
    /// By UID.
    pods: HashMap<String, Pod>,
    services: HashMap<NsName, Service>,
    slices: HashMap<NsName, EndpointSlice>,
    policies: HashMap<NsName, NetworkPolicy>,
    replicasets: HashMap<NsName, ReplicaSet>,
    jobs: HashMap<NsName, Job>,
    /// holder (`Pod/<uid>`, ...) → keys it holds now.
    claims: HashMap<String, BTreeSet<Key>>,
    synced: HashSet<ObjectKind>,
    /// Label sets shared between pod owners (pods of one workload have the same labels).
    label_sets: HashMap<BTreeMap<String, String>, Arc<BTreeMap<String, String>>>,
}

impl ClusterState {
    pub fn new() -> Self {
        Self::default()
    }

    /// True once every kind had its first full list.
    pub fn ready(&self) -> bool {
        ObjectKind::ALL.iter().all(|k| self.synced.contains(k))
    }

    pub fn synced(&self, kind: ObjectKind) -> bool {
        self.synced.contains(&kind)
    }

    pub fn pod_count(&self) -> usize {
        self.pods.len()
    }

    pub fn network_policies(&self) -> Vec<NetworkPolicy> {
        self.policies.values().cloned().collect()
    }

    pub fn namespace_labels(&self, ns: &str) -> BTreeMap<String, String> {
        self.namespaces
            .get(ns)
            .and_then(|n| n.metadata.labels.clone())
            .unwrap_or_default()
    }

    /// Applies one update; the time line gets the resulting claims, and the returned changes
    /// are what to persist.
    pub fn apply(&mut self, stamped: Stamped, tl: &mut Timeline) -> Vec<Change> {
        let at = millis(stamped.at);
        let mut changes = Vec::new();
        match stamped.update {
            StateUpdate::Apply(obj) => self.upsert(obj, at, tl, &mut changes),
            StateUpdate::Delete(obj) => self.remove(&obj, at, tl, &mut changes),
            StateUpdate::Resync {
                kind,
                objects,
                invalid,
            } => {
                // Pods by UID: a pod re-created under the same name is a different pod.
                let keep: HashSet<String> = objects.iter().map(Object::identity).collect();
                let invalid: HashSet<String> = invalid.into_iter().collect();
                for gone in self.objects_of(kind) {
                    if !keep.contains(&gone.identity()) && !invalid.contains(&gone.name()) {
                        self.remove(&gone, at, tl, &mut changes);
                    }
                }
                for obj in objects {
                    self.upsert(obj, at, tl, &mut changes);
                }
                self.synced.insert(kind);
                if self.ready() {
                    // Open intervals left from before a restart that nobody holds now.
                    for (key, holder) in tl.open_holders() {
                        let held = self.claims.get(&holder).is_some_and(|k| k.contains(&key));
                        if !held {
                            changes.extend(tl.release(&key, at, &holder));
                        }
                    }
                }
            }
            StateUpdate::Invalid { .. } => {}
        }
        changes
    }

    fn objects_of(&self, kind: ObjectKind) -> Vec<Object> {
        match kind {
            ObjectKind::Namespace => self
                .namespaces
                .values()
                .map(|o| Object::Namespace(Box::new(o.clone())))
                .collect(),
            ObjectKind::Node => self
                .nodes
                .values()
                .map(|o| Object::Node(Box::new(o.clone())))
                .collect(),
            ObjectKind::Pod => self
                .pods
                .values()
                .map(|o| Object::Pod(Box::new(o.clone())))
                .collect(),
            ObjectKind::Service => self
                .services
                .values()
                .map(|o| Object::Service(Box::new(o.clone())))
                .collect(),
            ObjectKind::EndpointSlice => self
                .slices
                .values()
                .map(|o| Object::EndpointSlice(Box::new(o.clone())))
                .collect(),
            ObjectKind::NetworkPolicy => self
                .policies
                .values()
                .map(|o| Object::NetworkPolicy(Box::new(o.clone())))
                .collect(),
            ObjectKind::ReplicaSet => self
                .replicasets
                .values()
                .map(|o| Object::ReplicaSet(Box::new(o.clone())))
                .collect(),
            ObjectKind::Job => self
                .jobs
                .values()
                .map(|o| Object::Job(Box::new(o.clone())))
                .collect(),
        }
    }

    fn upsert(&mut self, obj: Object, at: Millis, tl: &mut Timeline, ch: &mut Vec<Change>) {
        match obj {
            Object::Namespace(o) => {
                self.namespaces
                    .insert(o.metadata.name.clone().unwrap_or_default(), *o);
            }
            Object::NetworkPolicy(o) => {
                self.policies.insert(ns_name(&o.metadata), *o);
            }
            Object::Node(o) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                let since = o
                    .metadata
                    .creation_timestamp
                    .as_ref()
                    .map(|t| t.0.as_millisecond());
                let owner = Arc::new(Owner::Node(NodeOwner { name: name.clone() }));
                let keys = node_ips(&o)
                    .into_iter()
                    .map(Key::Ip)
                    .map(|k| (k, owner.clone()));
                self.set_claims(&format!("Node/{name}"), keys.collect(), at, since, tl, ch);
                self.nodes.insert(name, *o);
            }
            Object::Pod(o) => {
                let uid = pod_key(&o);
                self.pods.insert(uid.clone(), *o);
                self.claim_pod(&uid, at, tl, ch);
            }
            Object::ReplicaSet(o) => {
                let key = ns_name(&o.metadata);
                self.replicasets.insert(key.clone(), *o);
                self.reclaim_pods_owned_by("ReplicaSet", &key, at, tl, ch);
            }
            Object::Job(o) => {
                let key = ns_name(&o.metadata);
                self.jobs.insert(key.clone(), *o);
                self.reclaim_pods_owned_by("Job", &key, at, tl, ch);
            }
            Object::Service(o) => {
                let key = ns_name(&o.metadata);
                self.services.insert(key.clone(), *o);
                self.claim_service(&key, at, tl, ch);
            }
            Object::EndpointSlice(o) => {
                let svc = slice_service(&o);
                self.slices.insert(ns_name(&o.metadata), *o);
                if let Some(svc) = svc {
                    self.claim_service(&svc, at, tl, ch);
                }
            }
        }
    }

    fn remove(&mut self, obj: &Object, at: Millis, tl: &mut Timeline, ch: &mut Vec<Change>) {
        match obj {
            Object::Namespace(o) => {
                self.namespaces
                    .remove(o.metadata.name.as_deref().unwrap_or_default());
            }
            Object::NetworkPolicy(o) => {
                self.policies.remove(&ns_name(&o.metadata));
            }
            Object::Node(o) => {
                let name = o.metadata.name.clone().unwrap_or_default();
                self.nodes.remove(&name);
                self.set_claims(&format!("Node/{name}"), vec![], at, None, tl, ch);
            }
            Object::Pod(o) => {
                let uid = pod_key(o);
                self.pods.remove(&uid);
                self.set_claims(&format!("Pod/{uid}"), vec![], at, None, tl, ch);
            }
            Object::ReplicaSet(o) => {
                let key = ns_name(&o.metadata);
                self.replicasets.remove(&key);
            }
            Object::Job(o) => {
                let key = ns_name(&o.metadata);
                self.jobs.remove(&key);
            }
            Object::Service(o) => {
                let key = ns_name(&o.metadata);
                self.services.remove(&key);
                self.claim_service(&key, at, tl, ch);
            }
            Object::EndpointSlice(o) => {
                self.slices.remove(&ns_name(&o.metadata));
                if let Some(svc) = slice_service(o) {
                    self.claim_service(&svc, at, tl, ch);
                }
            }
        }
    }

    /// Replaces what `holder` holds with `wanted`.
    fn set_claims(
        &mut self,
        holder: &str,
        wanted: Vec<(Key, Arc<Owner>)>,
        at: Millis,
        since: Option<Millis>,
        tl: &mut Timeline,
        ch: &mut Vec<Change>,
    ) {
        let old = self.claims.remove(holder).unwrap_or_default();
        let new: BTreeSet<Key> = wanted.iter().map(|(k, _)| k.clone()).collect();
        for k in old.difference(&new) {
            ch.extend(tl.release(k, at, holder));
        }
        for (k, owner) in wanted {
            ch.extend(tl.claim(&k, at, since, holder, owner));
        }
        if !new.is_empty() {
            self.claims.insert(holder.to_string(), new);
        }
    }

    fn reclaim_pods_owned_by(
        &mut self,
        kind: &str,
        key: &NsName,
        at: Millis,
        tl: &mut Timeline,
        ch: &mut Vec<Change>,
    ) {
        let uids: Vec<String> = self
            .pods
            .iter()
            .filter(|(_, p)| {
                p.metadata.namespace.as_deref() == Some(key.0.as_str())
                    && controller_of(&p.metadata).is_some_and(|r| r.kind == kind && r.name == key.1)
            })
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in uids {
            self.claim_pod(&uid, at, tl, ch);
        }
    }

    fn claim_pod(&mut self, uid: &str, at: Millis, tl: &mut Timeline, ch: &mut Vec<Change>) {
        let Some(pod) = self.pods.get(uid) else {
            return;
        };
        let mut owner = self.pod_owner(uid, pod);
        let since = pod
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond());
        let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
        owner.labels = self.intern(owner.labels);
        owner.selector = self.intern(owner.selector);
        // Finished pods give their IP back; hostNetwork pods never own the node's address.
        let ips =
            if !owner.host_network && !matches!(phase.as_deref(), Some("Succeeded" | "Failed")) {
                owner.ips.clone()
            } else {
                vec![]
            };
        let owner = Arc::new(Owner::Pod(owner));
        let mut wanted = vec![(Key::PodUid(uid.to_string()), owner.clone())];
        wanted.extend(ips.into_iter().map(|ip| (Key::Ip(ip), owner.clone())));
        self.set_claims(&format!("Pod/{uid}"), wanted, at, since, tl, ch);
    }

    fn intern(&mut self, labels: Arc<BTreeMap<String, String>>) -> Arc<BTreeMap<String, String>> {
        if let Some(shared) = self.label_sets.get(labels.as_ref()) {
            return shared.clone();
        }
        // Bounded by the number of distinct label sets; drop the cache when it grows past
        // what a cluster plausibly has (entries still in use stay shared through their Arcs).
        if self.label_sets.len() > 100_000 {
            self.label_sets.clear();
        }
        self.label_sets
            .insert(labels.as_ref().clone(), labels.clone());
        labels
    }

    fn pod_owner(&self, uid: &str, pod: &Pod) -> PodOwner {
        let m = &pod.metadata;
        let ns = m.namespace.clone().unwrap_or_default();
        let spec = pod.spec.as_ref();
        let status = pod.status.as_ref();
        let mut ips: Vec<IpAddr> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| v.iter().filter_map(|p| p.ip.parse().ok()).collect())
            .unwrap_or_default();
        if ips.is_empty() {
            ips.extend(
                status
                    .and_then(|s| s.pod_ip.as_deref())
                    .and_then(|ip| ip.parse::<IpAddr>().ok()),
            );
        }
        let (workload, selector) = self.top_owner(pod);
        let labels = Arc::new(stable_labels(m.labels.as_ref()));
        let selector = Arc::new(selector);
        PodOwner {
            namespace: ns,
            name: m.name.clone().unwrap_or_default(),
            uid: uid.to_string(),
            workload,
            labels,
            selector,
            host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
            node: spec.and_then(|s| s.node_name.clone()),
            ips,
        }
    }

    /// The top controller of a pod and its selector (without per-revision labels).
    fn top_owner(&self, pod: &Pod) -> (Option<WorkloadRef>, BTreeMap<String, String>) {
        let m = &pod.metadata;
        let ns = m.namespace.clone().unwrap_or_default();
        let pod_labels = stable_labels(m.labels.as_ref());
        let Some(ctrl) = controller_of(m) else {
            return (None, BTreeMap::new());
        };
        let wl = |kind: &str, name: &str| {
            Some(WorkloadRef {
                kind: kind.to_string(),
                name: name.to_string(),
            })
        };
        match ctrl.kind.as_str() {
            "ReplicaSet" => {
                if let Some(rs) = self.replicasets.get(&(ns.clone(), ctrl.name.clone())) {
                    let selector = stable_labels(
                        rs.spec
                            .as_ref()
                            .and_then(|s| s.selector.match_labels.as_ref()),
                    );
                    return match controller_of(&rs.metadata) {
                        Some(top) => (wl(&top.kind, &top.name), selector),
                        None => (wl("ReplicaSet", &ctrl.name), selector),
                    };
                }
                // ReplicaSet not known (manifests without it): Deployments name theirs
                // `<deployment>-<pod-template-hash>`.
                let hash = m.labels.as_ref().and_then(|l| l.get("pod-template-hash"));
                match hash.and_then(|h| ctrl.name.strip_suffix(&format!("-{h}"))) {
                    Some(deploy) => (wl("Deployment", deploy), pod_labels),
                    None => (wl("ReplicaSet", &ctrl.name), pod_labels),
                }
            }
            "Job" => match self.jobs.get(&(ns, ctrl.name.clone())) {
                Some(job) => match controller_of(&job.metadata) {
                    Some(top) => (wl(&top.kind, &top.name), pod_labels),
                    None => (wl("Job", &ctrl.name), pod_labels),
                },
                None => (wl("Job", &ctrl.name), pod_labels),
            },
            kind => (wl(kind, &ctrl.name), pod_labels),
        }
    }

    fn claim_service(&mut self, key: &NsName, at: Millis, tl: &mut Timeline, ch: &mut Vec<Change>) {
        let holder = format!("Service/{}/{}", key.0, key.1);
        let Some(svc) = self.services.get(key) else {
            self.set_claims(&holder, vec![], at, None, tl, ch);
            return;
        };
        let spec = svc.spec.clone().unwrap_or_default();
        let apiserver = key.0 == "default" && key.1 == "kubernetes";
        let ports: Vec<ServicePortSpec> = spec
            .ports
            .iter()
            .flatten()
            .map(|p| ServicePortSpec {
                name: p.name.clone().unwrap_or_default(),
                protocol: protocol_of(p.protocol.as_deref()),
                port: p.port as u16,
                target_port: match &p.target_port {
                    Some(IntOrString::Int(n)) => TargetPort::Number(*n as u16),
                    Some(IntOrString::String(s)) => match s.parse::<u16>() {
                        Ok(n) => TargetPort::Number(n),
                        Err(_) => TargetPort::Name(s.clone()),
                    },
                    None => TargetPort::Number(p.port as u16),
                },
                node_port: p.node_port.map(|n| n as u16),
            })
            .collect();
        let mut backends: Vec<Backend> = Vec::new();
        for slice in self.slices.values() {
            if slice.metadata.namespace.as_deref() != Some(key.0.as_str())
                || slice_service(slice).as_ref().map(|s| &s.1) != Some(&key.1)
            {
                continue;
            }
            let ports: BTreeMap<String, u16> = slice
                .ports
                .iter()
                .flatten()
                .filter_map(|p| Some((p.name.clone().unwrap_or_default(), p.port? as u16)))
                .collect();
            for ep in &slice.endpoints {
                let c = ep.conditions.as_ref();
                let usable = c.and_then(|c| c.ready).unwrap_or(true)
                    || c.and_then(|c| c.serving).unwrap_or(false);
                if !usable {
                    continue;
                }
                for a in &ep.addresses {
                    if let Ok(ip) = a.parse() {
                        backends.push(Backend {
                            ip,
                            ports: ports.clone(),
                        });
                    }
                }
            }
        }
        backends.sort_by(|a, b| a.ip.cmp(&b.ip).then(a.ports.cmp(&b.ports)));
        backends.dedup();
        let headless = spec.cluster_ip.as_deref() == Some("None");
        let owner = Arc::new(Owner::Service(ServiceOwner {
            namespace: key.0.clone(),
            name: key.1.clone(),
            ports: ports.clone(),
            backends: backends.clone(),
            apiserver,
        }));
        let mut ips: Vec<IpAddr> = Vec::new();
        ips.extend(
            spec.cluster_ips
                .iter()
                .flatten()
                .filter_map(|s| s.parse::<IpAddr>().ok()),
        );
        ips.extend(
            spec.cluster_ip
                .iter()
                .filter_map(|s| s.parse::<IpAddr>().ok()),
        );
        ips.extend(
            spec.external_ips
                .iter()
                .flatten()
                .filter_map(|s| s.parse::<IpAddr>().ok()),
        );
        ips.extend(
            svc.status
                .as_ref()
                .and_then(|s| s.load_balancer.as_ref())
                .and_then(|lb| lb.ingress.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|i| i.ip.as_deref().and_then(|s| s.parse::<IpAddr>().ok())),
        );
        ips.sort();
        ips.dedup();
        let mut wanted: Vec<(Key, Arc<Owner>)> = ips
            .into_iter()
            .map(|ip| (Key::Ip(ip), owner.clone()))
            .collect();
        for p in &ports {
            if let Some(np) = p.node_port {
                wanted.push((Key::NodePort(p.protocol, np), owner.clone()));
            }
        }
        if headless {
            for b in &backends {
                wanted.push((Key::Headless(b.ip), owner.clone()));
            }
        }
        if apiserver {
            let api = Arc::new(Owner::APIServer(ApiServerOwner {
                ports: backends
                    .iter()
                    .flat_map(|b| b.ports.values().copied())
                    .collect::<BTreeSet<u16>>()
                    .into_iter()
                    .collect(),
            }));
            for b in &backends {
                wanted.push((Key::ApiServer(b.ip), api.clone()));
            }
        }
        wanted.sort_by(|a, b| a.0.cmp(&b.0));
        wanted.dedup_by(|a, b| a.0 == b.0);
        let since = svc
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.as_millisecond());
        self.set_claims(&holder, wanted, at, since, tl, ch);
    }
}

/// Pods are keyed by UID; manifests without one fall back to `namespace/name`.
fn pod_key(p: &Pod) -> String {
    p.metadata
        .uid
        .clone()
        .unwrap_or_else(|| object_name(&p.metadata))
}

fn controller_of(m: &ObjectMeta) -> Option<&OwnerReference> {
    let refs = m.owner_references.as_ref()?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or_else(|| refs.first())
}

/// The Service (`ns`, `name`) an EndpointSlice belongs to.
fn slice_service(s: &EndpointSlice) -> Option<NsName> {
    let name = s
        .metadata
        .labels
        .as_ref()?
        .get("kubernetes.io/service-name")?
        .clone();
    Some((s.metadata.namespace.clone().unwrap_or_default(), name))
}

fn protocol_of(p: Option<&str>) -> Protocol {
    p.and_then(|p| p.parse().ok()).unwrap_or(Protocol::Tcp)
}

fn node_ips(n: &Node) -> Vec<IpAddr> {
    flowpol_recommender::model::node_addresses(n)
}
