//! The cluster model built from manifests: namespaces, workloads (pods folded into their top
//! owner), services and compiled NetworkPolicies.
//!
//! A workload is one connectivity peer (`ns/name[Kind]`). Its pods are grouped into
//! *endpoints*: sets of pods with the same labels and container ports, which the engine
//! evaluates once. A controller's endpoint takes its pod template's labels and ports.
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Serialize;
use thiserror::Error;

use crate::flow::Protocol;
use crate::manifest::{self, LoadedObject, ManifestError, Object};
use crate::policy::{Policy, PolicyError, parse_protocol};
use crate::selector::Labels;

pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";
pub const DEFAULT_NAMESPACE: &str = "default";

#[derive(Debug, Error)]
pub enum ModelError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("{path}: {object}: field `{field}`: {message}")]
    Field {
        path: PathBuf,
        /// `Kind namespace/name`.
        object: String,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, Serialize)]
pub struct NamespaceInfo {
    pub name: String,
    pub labels: Labels,
    /// False when no Namespace object defines it (it exists because something lives in it).
    pub defined: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
}

/// Pods of one workload that share labels and ports.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub workload: usize,
    pub labels: Labels,
    pub ports: Vec<ContainerPort>,
    /// Pod IPs (status.podIPs), when the manifests carry them.
    pub ips: Vec<IpAddr>,
    /// Pod names (empty for a controller with no pods in the manifests).
    pub pods: Vec<String>,
}

impl Endpoint {
    /// Resolves a named port on this pod by name and protocol.
    pub fn named_port(&self, name: &str, protocol: Protocol) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.protocol == protocol && p.name.as_deref() == Some(name))
            .map(|p| p.port)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Workload {
    pub namespace: String,
    pub name: String,
    /// `Deployment`, `StatefulSet`, ..., or `Pod` for a pod with no owner.
    pub kind: String,
    /// Indices into [`Cluster::endpoints`].
    pub endpoints: Vec<usize>,
    #[serde(skip)]
    pub source: PathBuf,
    /// The controller's `spec.selector.matchLabels`: the labels that stay on its pods across
    /// rollouts (`None` for bare pods and selectors with expressions only).
    pub selector: Option<Labels>,
    /// Its pods use the node's network namespace (`spec.hostNetwork`): policies do not apply
    /// to them and peers see them at the node's address.
    pub host_network: bool,
}

impl Workload {
    /// `namespace/name[Kind]`, the corpus's peer name.
    pub fn peer_name(&self) -> String {
        format!("{}/{}[{}]", self.namespace, self.name, self.kind)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}[{}]", self.namespace, self.name, self.kind)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ServicePort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Protocol,
    /// targetPort: a number, a container port name, or (absent) the same as `port`.
    pub target: Option<TargetPort>,
}

#[derive(Debug, Clone, Serialize)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceInfo {
    pub namespace: String,
    pub name: String,
    /// `None`: a Service without selector (endpoints managed elsewhere).
    pub selector: Option<Labels>,
    pub ports: Vec<ServicePort>,
    /// `spec.clusterIPs` (and `clusterIP`), when set and not `None`.
    pub cluster_ips: Vec<IpAddr>,
}

/// A node and its addresses (`status.addresses`: InternalIP, ExternalIP).
#[derive(Debug, Clone, Serialize)]
pub struct NodeInfo {
    pub name: String,
    pub addresses: Vec<IpAddr>,
}

#[derive(Debug, Clone, Default)]
pub struct Cluster {
    pub namespaces: Vec<NamespaceInfo>,
    pub workloads: Vec<Workload>,
    pub endpoints: Vec<Endpoint>,
    pub services: Vec<ServiceInfo>,
    pub policies: Vec<Policy>,
    pub nodes: Vec<NodeInfo>,
}

/// A controller read from the manifests, before pods are folded into it.
struct Controller {
    kind: &'static str,
    namespace: String,
    name: String,
    owner: Option<(String, String)>,
    template: Option<PodTemplateSpec>,
    selector: Option<Labels>,
    source: PathBuf,
}

impl Cluster {
    /// Loads manifests from files and folders and builds the model.
    pub fn load<P: AsRef<Path>>(paths: &[P]) -> Result<Cluster, ModelError> {
        let objects = manifest::load_paths(paths)?;
        Cluster::from_objects(objects)
    }

    pub fn from_objects(objects: Vec<LoadedObject>) -> Result<Cluster, ModelError> {
        let mut cluster = Cluster::default();
        let mut namespaces: BTreeMap<String, NamespaceInfo> = BTreeMap::new();
        let mut controllers: Vec<Controller> = Vec::new();
        let mut pods: Vec<(Box<Pod>, PathBuf)> = Vec::new();

        for LoadedObject { source, object } in objects {
            match object {
                Object::Namespace(ns) => {
                    let name = ns.metadata.name.clone().unwrap_or_default();
                    let mut labels = ns.metadata.labels.clone().unwrap_or_default();
                    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.clone());
                    namespaces.insert(
                        name.clone(),
                        NamespaceInfo {
                            name,
                            labels,
                            defined: true,
                        },
                    );
                }
                Object::Pod(pod) => pods.push((pod, source)),
                Object::Deployment(d) => controllers.push(controller(
                    "Deployment",
                    &d.metadata,
                    d.spec.as_ref().map(|s| s.template.clone()),
                    d.spec
                        .as_ref()
                        .and_then(|s| s.selector.match_labels.clone()),
                    source,
                )),
                Object::StatefulSet(s) => controllers.push(controller(
                    "StatefulSet",
                    &s.metadata,
                    s.spec.as_ref().map(|s| s.template.clone()),
                    s.spec
                        .as_ref()
                        .and_then(|s| s.selector.match_labels.clone()),
                    source,
                )),
                Object::DaemonSet(d) => controllers.push(controller(
                    "DaemonSet",
                    &d.metadata,
                    d.spec.as_ref().map(|s| s.template.clone()),
                    d.spec
                        .as_ref()
                        .and_then(|s| s.selector.match_labels.clone()),
                    source,
                )),
                Object::ReplicaSet(r) => controllers.push(controller(
                    "ReplicaSet",
                    &r.metadata,
                    r.spec.as_ref().and_then(|s| s.template.clone()),
                    r.spec
                        .as_ref()
                        .and_then(|s| s.selector.match_labels.clone()),
                    source,
                )),
                Object::ReplicationController(r) => controllers.push(controller(
                    "ReplicationController",
                    &r.metadata,
                    r.spec.as_ref().and_then(|s| s.template.clone()),
                    r.spec
                        .as_ref()
                        .and_then(|s| s.selector.clone())
                        .map(|s| s.into_iter().collect()),
                    source,
                )),
                Object::Job(j) => controllers.push(controller(
                    "Job",
                    &j.metadata,
                    j.spec.as_ref().map(|s| s.template.clone()),
                    None,
                    source,
                )),
                Object::CronJob(c) => controllers.push(controller(
                    "CronJob",
                    &c.metadata,
                    c.spec
                        .as_ref()
                        .and_then(|s| s.job_template.spec.as_ref())
                        .map(|s| s.template.clone()),
                    None,
                    source,
                )),
                Object::Node(node) => cluster.nodes.push(node_info(&node)),
                // Policies select pods by labels, never through a Service.
                Object::EndpointSlice(_) => {}
                Object::Service(svc) => cluster.services.push(service_info(&svc, &source)?),
                Object::NetworkPolicy(np) => cluster.policies.push(Policy::compile(&np, &source)?),
            }
        }

        // Controllers by (namespace, kind, name), to follow owner chains to the top owner.
        let by_key: HashMap<(String, String, String), usize> = controllers
            .iter()
            .enumerate()
            .map(|(i, c)| ((c.namespace.clone(), c.kind.to_string(), c.name.clone()), i))
            .collect();
        // Walks owner references up to the top owner; also returns the highest controller
        // of the chain that the manifests define, whose template the workload takes.
        let top_owner =
            |ns: &str, mut kind: String, mut name: String| -> (String, String, Option<usize>) {
                let mut defined = None;
                // Bounded walk: owner cycles in hand-written manifests must not hang us.
                for _ in 0..8 {
                    let Some(&i) = by_key.get(&(ns.to_string(), kind.clone(), name.clone())) else {
                        // `kubectl get deploy,pods` dumps hold the Deployment (CronJob) but not
                        // the ReplicaSet (Job) between it and its pods; the names tell the link.
                        match implied_owner(&kind, &name) {
                            Some((k, n))
                                if by_key.contains_key(&(
                                    ns.to_string(),
                                    k.to_string(),
                                    n.to_string(),
                                )) =>
                            {
                                (kind, name) = (k.to_string(), n.to_string());
                                continue;
                            }
                            _ => break,
                        }
                    };
                    defined = Some(i);
                    match &controllers[i].owner {
                        Some((k, n)) => (kind, name) = (k.clone(), n.clone()),
                        None => break,
                    }
                }
                (kind, name, defined)
            };

        // Workloads: every controller's top owner, then pods folded into their top owner.
        let mut workload_index: HashMap<(String, String, String), usize> = HashMap::new();
        let mut template_of: HashMap<usize, PodTemplateSpec> = HashMap::new();
        for c in &controllers {
            let (kind, name, defined) = top_owner(&c.namespace, c.kind.to_string(), c.name.clone());
            let key = (c.namespace.clone(), kind.clone(), name.clone());
            if workload_index.contains_key(&key) {
                continue;
            }
            let top_controller = &controllers[defined.expect("c itself is defined")];
            let index = cluster.workloads.len();
            cluster.workloads.push(Workload {
                namespace: c.namespace.clone(),
                name,
                kind,
                endpoints: Vec::new(),
                source: top_controller.source.clone(),
                selector: top_controller.selector.clone(),
                host_network: top_controller
                    .template
                    .as_ref()
                    .and_then(|t| t.spec.as_ref())
                    .and_then(|s| s.host_network)
                    == Some(true),
            });
            if let Some(t) = &top_controller.template {
                template_of.insert(index, t.clone());
            }
            workload_index.insert(key, index);
        }

        // Endpoint grouping: (workload, labels, ports) → endpoint index.
        let mut endpoint_index: HashMap<(usize, Labels, Vec<ContainerPort>), usize> =
            HashMap::new();
        for (pod, source) in pods {
            let namespace = pod
                .metadata
                .namespace
                .clone()
                .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            let (kind, name) = match controller_ref(&pod.metadata) {
                Some((kind, name)) => {
                    let (kind, name, _) = top_owner(&namespace, kind, name);
                    (kind, name)
                }
                None => ("Pod".to_string(), pod_name.clone()),
            };
            let key = (namespace.clone(), kind.clone(), name.clone());
            let workload = *workload_index.entry(key).or_insert_with(|| {
                cluster.workloads.push(Workload {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    kind: kind.clone(),
                    endpoints: Vec::new(),
                    source: source.clone(),
                    selector: None,
                    host_network: false,
                });
                cluster.workloads.len() - 1
            });
            // A controller's pods take its template's labels and ports; pods of an owner that
            // the manifests do not define keep their own.
            let (labels, ports) = match template_of.get(&workload) {
                Some(t) => template_labels_ports(t, &source, &kind, &namespace, &name)?,
                None => {
                    let ports = pod_ports(
                        pod.spec.as_ref().map(|s| &s.containers[..]).unwrap_or(&[]),
                        &source,
                        "Pod",
                        &namespace,
                        &pod_name,
                        "spec",
                    )?;
                    (pod.metadata.labels.clone().unwrap_or_default(), ports)
                }
            };
            if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
                cluster.workloads[workload].host_network = true;
            }
            let ips = pod_ips(&pod);
            let ep = *endpoint_index
                .entry((workload, labels.clone(), ports.clone()))
                .or_insert_with(|| {
                    cluster.endpoints.push(Endpoint {
                        workload,
                        labels,
                        ports,
                        ips: Vec::new(),
                        pods: Vec::new(),
                    });
                    cluster.workloads[workload]
                        .endpoints
                        .push(cluster.endpoints.len() - 1);
                    cluster.endpoints.len() - 1
                });
            cluster.endpoints[ep].ips.extend(ips);
            cluster.endpoints[ep].pods.push(pod_name);
        }

        // Controllers with no pods in the manifests are peers through their template.
        for (index, template) in &template_of {
            if !cluster.workloads[*index].endpoints.is_empty() {
                continue;
            }
            let w = &cluster.workloads[*index];
            let (labels, ports) =
                template_labels_ports(template, &w.source, &w.kind, &w.namespace, &w.name)?;
            cluster.endpoints.push(Endpoint {
                workload: *index,
                labels,
                ports,
                ips: Vec::new(),
                pods: Vec::new(),
            });
            let ep = cluster.endpoints.len() - 1;
            cluster.workloads[*index].endpoints.push(ep);
        }
        // A controller without a template (malformed) has no pods to connect.
        let endpoints_of: Vec<bool> = cluster
            .workloads
            .iter()
            .map(|w| !w.endpoints.is_empty())
            .collect();
        if endpoints_of.iter().any(|has| !has) {
            let mut remap = Vec::with_capacity(cluster.workloads.len());
            let mut kept = Vec::new();
            for (i, w) in std::mem::take(&mut cluster.workloads)
                .into_iter()
                .enumerate()
            {
                if endpoints_of[i] {
                    remap.push(kept.len());
                    kept.push(w);
                } else {
                    tracing::warn!(workload = %w, "workload has no pod template and no pods; ignored");
                    remap.push(usize::MAX);
                }
            }
            for ep in &mut cluster.endpoints {
                ep.workload = remap[ep.workload];
            }
            cluster.workloads = kept;
        }

        // Every namespace something lives in exists, with its name label.
        let mut used: Vec<String> = cluster
            .workloads
            .iter()
            .map(|w| w.namespace.clone())
            .collect();
        used.extend(cluster.policies.iter().map(|p| p.namespace.clone()));
        used.extend(cluster.services.iter().map(|s| s.namespace.clone()));
        for ns in used {
            namespaces
                .entry(ns.clone())
                .or_insert_with(|| NamespaceInfo {
                    labels: [(NAMESPACE_NAME_LABEL.to_string(), ns.clone())].into(),
                    name: ns,
                    defined: false,
                });
        }
        cluster.namespaces = namespaces.into_values().collect();
        Ok(cluster)
    }

    pub fn namespace(&self, name: &str) -> Option<&NamespaceInfo> {
        self.namespaces.iter().find(|n| n.name == name)
    }

    /// Finds a workload by `ns/name` or `ns/name[Kind]` (a name alone means `default/name`).
    pub fn find_workload(&self, text: &str) -> Result<usize, String> {
        let (ns, rest) = text.split_once('/').unwrap_or((DEFAULT_NAMESPACE, text));
        let (name, kind) = match rest.strip_suffix(']').and_then(|r| r.split_once('[')) {
            Some((name, kind)) => (name, Some(kind)),
            None => (rest, None),
        };
        let found: Vec<usize> = self
            .workloads
            .iter()
            .enumerate()
            .filter(|(_, w)| {
                w.namespace == ns
                    && w.name == name
                    && kind.is_none_or(|k| w.kind.eq_ignore_ascii_case(k))
            })
            .map(|(i, _)| i)
            .collect();
        match found.as_slice() {
            [one] => Ok(*one),
            [] => {
                // A pod name that was folded into its owner still finds the owner.
                let by_pod: Vec<usize> = self
                    .endpoints
                    .iter()
                    .filter(|e| {
                        e.pods.iter().any(|p| p == name)
                            && self.workloads[e.workload].namespace == ns
                    })
                    .map(|e| e.workload)
                    .collect();
                if let Some(&w) = by_pod.first() {
                    return Ok(w);
                }
                // `frontend` finds `frontend-99684f7f8[ReplicaSet]`, the usual name of a
                // Deployment's pods' owner in `kubectl get pods` dumps.
                let prefix = format!("{name}-");
                let by_prefix: Vec<usize> = self
                    .workloads
                    .iter()
                    .enumerate()
                    .filter(|(_, w)| w.namespace == ns && w.name.starts_with(&prefix))
                    .map(|(i, _)| i)
                    .collect();
                match by_prefix.as_slice() {
                    [one] => Ok(*one),
                    [] => {
                        let known: Vec<String> = self
                            .workloads
                            .iter()
                            .filter(|w| w.namespace == ns)
                            .take(10)
                            .map(|w| w.peer_name())
                            .collect();
                        Err(format!(
                            "no workload or pod `{name}` in namespace `{ns}` in the manifests{}",
                            if known.is_empty() {
                                String::new()
                            } else {
                                format!(" (there: {})", known.join(", "))
                            }
                        ))
                    }
                    many => Err(format!(
                        "`{text}` is ambiguous: {}",
                        many.iter()
                            .map(|&i| self.workloads[i].peer_name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )),
                }
            }
            many => Err(format!(
                "`{text}` is ambiguous: {}; add the kind, e.g. `{ns}/{name}[{}]`",
                many.iter()
                    .map(|&i| self.workloads[i].peer_name())
                    .collect::<Vec<_>>()
                    .join(", "),
                self.workloads[many[0]].kind
            )),
        }
    }

    /// The endpoint that owns a pod IP, if any.
    pub fn endpoint_by_ip(&self, ip: IpAddr) -> Option<usize> {
        self.endpoints.iter().position(|e| e.ips.contains(&ip))
    }
}

/// The owner a controller's name implies: ReplicaSet `web-5d4f8c` of Deployment `web`
/// (pod-template-hash suffix), Job `report-29001234` of CronJob `report` (schedule suffix).
fn implied_owner<'n>(kind: &str, name: &'n str) -> Option<(&'static str, &'n str)> {
    let (prefix, suffix) = name.rsplit_once('-')?;
    if prefix.is_empty() || suffix.is_empty() {
        return None;
    }
    match kind {
        "ReplicaSet"
            if suffix.len() <= 10
                && suffix
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) =>
        {
            Some(("Deployment", prefix))
        }
        "Job" if suffix.bytes().all(|b| b.is_ascii_digit()) => Some(("CronJob", prefix)),
        _ => None,
    }
}

fn controller(
    kind: &'static str,
    meta: &ObjectMeta,
    template: Option<PodTemplateSpec>,
    selector: Option<Labels>,
    source: PathBuf,
) -> Controller {
    Controller {
        selector: selector.filter(|s| !s.is_empty()),
        kind,
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.into()),
        name: meta.name.clone().unwrap_or_default(),
        owner: controller_ref(meta),
        template,
        source,
    }
}

/// The controlling owner (kind, name), if any. Node-owned (static) pods have none; an owner
/// reference without a kind is reported as `Pod`, as the corpus does.
fn controller_ref(meta: &ObjectMeta) -> Option<(String, String)> {
    let owner: &OwnerReference = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    if owner.kind == "Node" || owner.name.is_empty() {
        return None;
    }
    let kind = if owner.kind.is_empty() {
        "Pod".to_string()
    } else {
        owner.kind.clone()
    };
    Some((kind, owner.name.clone()))
}

fn template_labels_ports(
    t: &PodTemplateSpec,
    source: &Path,
    kind: &str,
    namespace: &str,
    name: &str,
) -> Result<(Labels, Vec<ContainerPort>), ModelError> {
    let labels = t
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    let containers = t.spec.as_ref().map(|s| &s.containers[..]).unwrap_or(&[]);
    let ports = pod_ports(
        containers,
        source,
        kind,
        namespace,
        name,
        "spec.template.spec",
    )?;
    Ok((labels, ports))
}

fn pod_ports(
    containers: &[k8s_openapi::api::core::v1::Container],
    source: &Path,
    kind: &str,
    namespace: &str,
    name: &str,
    prefix: &str,
) -> Result<Vec<ContainerPort>, ModelError> {
    let mut out = Vec::new();
    for (ci, c) in containers.iter().enumerate() {
        for (pi, p) in c.ports.iter().flatten().enumerate() {
            let field = format!("{prefix}.containers[{ci}].ports[{pi}]");
            let err = |field: String, message: String| ModelError::Field {
                path: source.to_path_buf(),
                object: format!("{kind} {namespace}/{name}"),
                field,
                message,
            };
            // An absent containerPort reads as 0 (e.g. a misspelt `containerport`, which
            // unknown-field tolerance ignores): the port has no number and resolves nothing.
            if p.container_port == 0 {
                tracing::warn!(
                    file = %source.display(),
                    object = %format!("{kind} {namespace}/{name}"),
                    field = %format!("{field}.containerPort"),
                    "container port has no containerPort; ignored"
                );
                continue;
            }
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    err(
                        format!("{field}.containerPort"),
                        format!("port {} is out of range (1-65535)", p.container_port),
                    )
                })?;
            let protocol = match &p.protocol {
                None => Protocol::Tcp,
                Some(text) => parse_protocol(text).ok_or_else(|| {
                    err(
                        format!("{field}.protocol"),
                        format!("unknown protocol `{text}` (expected TCP, UDP or SCTP)"),
                    )
                })?,
            };
            out.push(ContainerPort {
                name: p.name.clone(),
                port,
                protocol,
            });
        }
    }
    Ok(out)
}

fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = status
        .pod_ips
        .iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if let Some(ip) = status.pod_ip.as_deref().and_then(|s| s.parse().ok())
        && !ips.contains(&ip)
    {
        ips.push(ip);
    }
    // hostNetwork pods share the node's address: it identifies no pod.
    if pod.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
        ips.clear();
    }
    ips
}

fn service_info(
    svc: &k8s_openapi::api::core::v1::Service,
    source: &Path,
) -> Result<ServiceInfo, ModelError> {
    let namespace = svc
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.into());
    let name = svc.metadata.name.clone().unwrap_or_default();
    let spec = svc.spec.clone().unwrap_or_default();
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let err = |field: String, message: String| ModelError::Field {
            path: source.to_path_buf(),
            object: format!("Service {namespace}/{name}"),
            field,
            message,
        };
        let port = u16::try_from(p.port)
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| {
                err(
                    format!("spec.ports[{i}].port"),
                    format!("port {} is out of range (1-65535)", p.port),
                )
            })?;
        let protocol = match &p.protocol {
            None => Protocol::Tcp,
            Some(text) => parse_protocol(text).ok_or_else(|| {
                err(
                    format!("spec.ports[{i}].protocol"),
                    format!("unknown protocol `{text}` (expected TCP, UDP or SCTP)"),
                )
            })?,
        };
        let target = match &p.target_port {
            None => None,
            Some(IntOrString::Int(n)) => Some(TargetPort::Number(
                u16::try_from(*n).ok().filter(|&n| n > 0).ok_or_else(|| {
                    err(
                        format!("spec.ports[{i}].targetPort"),
                        format!("port {n} is out of range (1-65535)"),
                    )
                })?,
            )),
            Some(IntOrString::String(s)) => Some(TargetPort::Name(s.clone())),
        };
        ports.push(ServicePort {
            name: p.name.clone(),
            port,
            protocol,
            target,
        });
    }
    let mut cluster_ips: Vec<IpAddr> = spec
        .cluster_ips
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect();
    if let Some(ip) = spec.cluster_ip.as_deref().and_then(|s| s.parse().ok())
        && !cluster_ips.contains(&ip)
    {
        cluster_ips.push(ip);
    }
    Ok(ServiceInfo {
        namespace,
        name,
        selector: spec.selector,
        ports,
        cluster_ips,
    })
}

fn node_info(node: &k8s_openapi::api::core::v1::Node) -> NodeInfo {
    NodeInfo {
        name: node.metadata.name.clone().unwrap_or_default(),
        addresses: node_addresses(node),
    }
}

/// A node's InternalIP and ExternalIP addresses, sorted, without repeats:
/// the sources of its kubelet's probes and of its host-network pods.
pub fn node_addresses(node: &k8s_openapi::api::core::v1::Node) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect();
    ips.sort();
    ips.dedup();
    ips
}
