//! A lab scenario: a folder of Kubernetes manifests plus `traffic.yaml` (what the clients do)
//! and an optional `lab.yaml` (address families and CIDRs). Loading validates everything that
//! can be known before a single namespace is created.
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Pod, PodTemplateSpec, Probe as K8sProbe, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::Deserialize;

/// File names in a scenario folder that are not Kubernetes manifests.
pub const TRAFFIC_FILE: &str = "traffic.yaml";
pub const LAB_FILE: &str = "lab.yaml";

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("scenario folder {0}: {1}")]
    Folder(PathBuf, std::io::Error),
    #[error("scenario folder {0} has no Kubernetes manifests (*.yaml, *.yml)")]
    NoManifests(PathBuf),
    #[error("{file}: document {doc}: {msg}")]
    Manifest {
        file: PathBuf,
        doc: usize,
        msg: String,
    },
    #[error("{file}: {msg}")]
    File { file: PathBuf, msg: String },
    #[error("{object}: {msg}")]
    Object { object: String, msg: String },
    #[error("{file}: connections[{index}]: {msg}")]
    Connection {
        file: PathBuf,
        index: usize,
        msg: String,
    },
}

type Result<T> = std::result::Result<T, ScenarioError>;

/// Network protocol of a port or connection (the lab speaks TCP and UDP).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, Deserialize,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    fn parse(s: Option<&str>, what: &str) -> std::result::Result<Self, String> {
        match s.unwrap_or("TCP") {
            "TCP" => Ok(Proto::Tcp),
            "UDP" => Ok(Proto::Udp),
            other => Err(format!(
                "{what}: protocol {other:?} is not supported by the lab (TCP or UDP)"
            )),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
    pub fn nft(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, Deserialize,
)]
pub enum WorkloadKind {
    Deployment,
    StatefulSet,
    DaemonSet,
    ReplicaSet,
    Job,
    Pod,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Deployment => "Deployment",
            WorkloadKind::StatefulSet => "StatefulSet",
            WorkloadKind::DaemonSet => "DaemonSet",
            WorkloadKind::ReplicaSet => "ReplicaSet",
            WorkloadKind::Job => "Job",
            WorkloadKind::Pod => "Pod",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPort {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Proto,
}

/// A port named in a probe or a Service targetPort: a number or a containerPort name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

impl PortRef {
    fn from_int_or_string(v: &IntOrString, what: &str) -> std::result::Result<Self, String> {
        match v {
            IntOrString::Int(n) => u16::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .map(PortRef::Number)
                .ok_or_else(|| format!("{what}: port {n} is not in 1..=65535")),
            IntOrString::String(s) => match s.parse::<u16>() {
                Ok(n) if n > 0 => Ok(PortRef::Number(n)),
                _ => Ok(PortRef::Name(s.clone())),
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeAction {
    HttpGet { path: String },
    TcpSocket,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeSpec {
    /// `readinessProbe`, `livenessProbe` or `startupProbe`.
    pub kind: &'static str,
    pub action: ProbeAction,
    pub port: PortRef,
}

#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub ports: Vec<ContainerPort>,
    pub probes: Vec<ProbeSpec>,
}

/// Anything that makes pods: a controller with a pod template, or a bare Pod.
#[derive(Debug, Clone)]
pub struct Workload {
    pub kind: WorkloadKind,
    pub namespace: String,
    pub name: String,
    pub replicas: u32,
    pub labels: BTreeMap<String, String>,
    pub containers: Vec<ContainerSpec>,
    /// StatefulSet `serviceName` (pods get `<pod>.<serviceName>` DNS names).
    pub service_name: Option<String>,
    pub file: PathBuf,
}

impl Workload {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    pub fn ports(&self) -> impl Iterator<Item = &ContainerPort> {
        self.containers.iter().flat_map(|c| c.ports.iter())
    }
    /// Resolves a numeric or named port against this workload's containerPorts.
    pub fn resolve_port(&self, port: &PortRef, proto: Proto) -> Option<u16> {
        match port {
            PortRef::Number(n) => Some(*n),
            PortRef::Name(name) => self
                .ports()
                .find(|p| p.name.as_deref() == Some(name) && p.protocol == proto)
                .map(|p| p.port),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ServicePortSpec {
    pub name: Option<String>,
    pub port: u16,
    pub target: PortRef,
    pub protocol: Proto,
}

#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    /// `clusterIP: None`.
    pub headless: bool,
    pub cluster_ip: Option<IpAddr>,
    pub ports: Vec<ServicePortSpec>,
    pub file: PathBuf,
}

impl ServiceSpec {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    pub service: Option<String>,
    pub workload: Option<String>,
    pub external: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
pub enum IpFamily {
    IPv4,
    IPv6,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Connection {
    pub from: String,
    pub replica: Option<u32>,
    pub to: Target,
    pub port: u16,
    pub protocol: Option<String>,
    pub count: Option<u32>,
    /// Address family the client dials (default IPv4); IPv6 needs a dual-stack lab.
    pub ip_family: Option<IpFamily>,
    /// What the scenario's NetworkPolicies do to this connection under `--enforce`.
    pub expect: Option<Expect>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Expect {
    Allowed,
    Blocked,
}

#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct External {
    pub name: String,
    pub address: IpAddr,
    #[serde(default)]
    pub ports: Vec<u16>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Traffic {
    #[serde(default)]
    pub connections: Vec<Connection>,
    #[serde(default)]
    pub externals: Vec<External>,
}

/// `lab.yaml`: the cluster's address plan. Every field is optional.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabConfig {
    #[serde(default = "default_families")]
    pub ip_families: Vec<IpFamily>,
    #[serde(default = "default_pod_cidr", rename = "podCIDR")]
    pub pod_cidr: IpNet,
    #[serde(default = "default_pod_cidr_v6", rename = "podCIDRv6")]
    pub pod_cidr_v6: IpNet,
    #[serde(default = "default_service_cidr", rename = "serviceCIDR")]
    pub service_cidr: IpNet,
    #[serde(default = "default_service_cidr_v6", rename = "serviceCIDRv6")]
    pub service_cidr_v6: IpNet,
    #[serde(default = "default_node_address")]
    pub node_address: IpAddr,
    #[serde(default = "default_node_address_v6", rename = "nodeAddressV6")]
    pub node_address_v6: IpAddr,
}

fn default_families() -> Vec<IpFamily> {
    vec![IpFamily::IPv4]
}
fn default_pod_cidr() -> IpNet {
    "10.244.0.0/16".parse().expect("constant")
}
fn default_pod_cidr_v6() -> IpNet {
    "fd00:10:244::/64".parse().expect("constant")
}
fn default_service_cidr() -> IpNet {
    "10.96.0.0/16".parse().expect("constant")
}
fn default_service_cidr_v6() -> IpNet {
    "fd00:10:96::/112".parse().expect("constant")
}
fn default_node_address() -> IpAddr {
    "172.18.0.2".parse().expect("constant")
}
fn default_node_address_v6() -> IpAddr {
    "fc00:f853:ccd:e793::2".parse().expect("constant")
}

impl Default for LabConfig {
    fn default() -> Self {
        LabConfig {
            ip_families: default_families(),
            pod_cidr: default_pod_cidr(),
            pod_cidr_v6: default_pod_cidr_v6(),
            service_cidr: default_service_cidr(),
            service_cidr_v6: default_service_cidr_v6(),
            node_address: default_node_address(),
            node_address_v6: default_node_address_v6(),
        }
    }
}

impl LabConfig {
    pub fn dual_stack(&self) -> bool {
        self.ip_families.contains(&IpFamily::IPv6)
    }
}

/// The link-local gateway every pod routes through (the node side answers by proxy ARP).
pub const POD_GATEWAY_V4: &str = "169.254.1.1";

#[derive(Debug, Clone)]
pub struct Scenario {
    pub dir: PathBuf,
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    pub workloads: Vec<Workload>,
    pub services: Vec<ServiceSpec>,
    pub policies: Vec<NetworkPolicy>,
    /// Manifest files, in load order (the engine reads policies from them).
    pub manifest_files: Vec<PathBuf>,
    pub traffic: Traffic,
    pub traffic_file: PathBuf,
    pub config: LabConfig,
}

impl Scenario {
    pub fn workload(&self, key: &str) -> Option<&Workload> {
        self.workloads.iter().find(|w| w.key() == key)
    }
    pub fn service(&self, key: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.key() == key)
    }
    pub fn external(&self, name: &str) -> Option<&External> {
        self.traffic.externals.iter().find(|e| e.name == name)
    }
    /// Workloads whose pod labels a Service selects.
    pub fn selected(&self, svc: &ServiceSpec) -> Vec<&Workload> {
        self.workloads
            .iter()
            .filter(|w| {
                w.namespace == svc.namespace
                    && !svc.selector.is_empty()
                    && svc.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
            })
            .collect()
    }
}

/// Loads and validates a scenario folder.
pub fn load(dir: &Path) -> Result<Scenario> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ScenarioError::Folder(dir.to_path_buf(), e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            (name.ends_with(".yaml") || name.ends_with(".yml"))
                && name != TRAFFIC_FILE
                && name != LAB_FILE
        })
        .collect();
    files.sort();
    let manifests = files
        .into_iter()
        .map(|file| Ok((read(&file)?, file)))
        .collect::<Result<Vec<_>>>()?;
    let optional = |name: &str| -> Result<Option<String>> {
        let file = dir.join(name);
        file.exists().then(|| read(&file)).transpose()
    };
    let lab = optional(LAB_FILE)?;
    let traffic = optional(TRAFFIC_FILE)?;
    from_texts(dir, &manifests, lab.as_deref(), traffic.as_deref())
}

/// A scenario from the texts of its files: `manifests` as (text, file) in
/// order, `lab.yaml` and `traffic.yaml` when present. The file names only
/// label errors; nothing is read from disk.
pub fn from_texts(
    dir: &Path,
    manifests: &[(String, PathBuf)],
    lab: Option<&str>,
    traffic: Option<&str>,
) -> Result<Scenario> {
    if manifests.is_empty() {
        return Err(ScenarioError::NoManifests(dir.to_path_buf()));
    }
    let mut scenario = Scenario {
        dir: dir.to_path_buf(),
        namespaces: BTreeMap::new(),
        workloads: Vec::new(),
        services: Vec::new(),
        policies: Vec::new(),
        manifest_files: manifests.iter().map(|(_, f)| f.clone()).collect(),
        traffic: Traffic::default(),
        traffic_file: dir.join(TRAFFIC_FILE),
        config: LabConfig::default(),
    };
    for (text, file) in manifests {
        load_manifests(&mut scenario, file, text)?;
    }
    if let Some(text) = lab {
        scenario.config = parse_yaml(&dir.join(LAB_FILE), text)?;
    }
    if let Some(text) = traffic {
        let file = scenario.traffic_file.clone();
        scenario.traffic = parse_yaml(&file, text)?;
    }
    validate(&scenario)?;
    Ok(scenario)
}

fn read(file: &Path) -> Result<String> {
    std::fs::read_to_string(file).map_err(|e| ScenarioError::File {
        file: file.to_path_buf(),
        msg: e.to_string(),
    })
}

fn parse_yaml<T: serde::de::DeserializeOwned>(file: &Path, text: &str) -> Result<T> {
    serde_saphyr::from_str(text).map_err(|e| ScenarioError::File {
        file: file.to_path_buf(),
        msg: e.to_string(),
    })
}

/// Parses every YAML document of one manifest file into the scenario.
pub fn load_manifests(scenario: &mut Scenario, file: &Path, text: &str) -> Result<()> {
    let docs: Vec<serde_json::Value> =
        serde_saphyr::from_multiple(text).map_err(|e| ScenarioError::Manifest {
            file: file.to_path_buf(),
            doc: 1,
            msg: e.to_string(),
        })?;
    for (index, value) in docs.into_iter().enumerate() {
        let doc_no = index + 1;
        let err = |msg: String| ScenarioError::Manifest {
            file: file.to_path_buf(),
            doc: doc_no,
            msg,
        };
        if value.is_null() {
            continue;
        }
        let kind = value
            .get("kind")
            .and_then(|k| k.as_str())
            .ok_or_else(|| err("has no `kind`".into()))?
            .to_string();
        if kind == "List" {
            return Err(err(
                "a `List` is not supported in a scenario: write one object per YAML document"
                    .into(),
            ));
        }
        macro_rules! typed {
            ($t:ty) => {
                serde_path_to_error::deserialize::<_, $t>(value.clone())
                    .map_err(|e| err(format!("{kind}: field {}: {}", e.path(), e.inner())))?
            };
        }
        match kind.as_str() {
            "Namespace" => {
                let ns: Namespace = typed!(Namespace);
                let name = ns
                    .metadata
                    .name
                    .ok_or_else(|| err("Namespace has no metadata.name".into()))?;
                scenario.namespaces.insert(
                    name,
                    ns.metadata.labels.unwrap_or_default().into_iter().collect(),
                );
            }
            "Deployment" => {
                let d: Deployment = typed!(Deployment);
                let spec = d.spec.ok_or_else(|| err("Deployment has no spec".into()))?;
                let w = workload(
                    WorkloadKind::Deployment,
                    &d.metadata,
                    spec.replicas.unwrap_or(1),
                    &spec.template,
                    None,
                    file,
                )
                .map_err(err)?;
                scenario.workloads.push(w);
            }
            "StatefulSet" => {
                let s: StatefulSet = typed!(StatefulSet);
                let spec = s
                    .spec
                    .ok_or_else(|| err("StatefulSet has no spec".into()))?;
                let w = workload(
                    WorkloadKind::StatefulSet,
                    &s.metadata,
                    spec.replicas.unwrap_or(1),
                    &spec.template,
                    spec.service_name.clone(),
                    file,
                )
                .map_err(err)?;
                scenario.workloads.push(w);
            }
            "DaemonSet" => {
                let d: DaemonSet = typed!(DaemonSet);
                let spec = d.spec.ok_or_else(|| err("DaemonSet has no spec".into()))?;
                // One node: one pod.
                let w = workload(
                    WorkloadKind::DaemonSet,
                    &d.metadata,
                    1,
                    &spec.template,
                    None,
                    file,
                )
                .map_err(err)?;
                scenario.workloads.push(w);
            }
            "ReplicaSet" => {
                let r: ReplicaSet = typed!(ReplicaSet);
                let spec = r.spec.ok_or_else(|| err("ReplicaSet has no spec".into()))?;
                let template = spec
                    .template
                    .ok_or_else(|| err("ReplicaSet has no spec.template".into()))?;
                let w = workload(
                    WorkloadKind::ReplicaSet,
                    &r.metadata,
                    spec.replicas.unwrap_or(1),
                    &template,
                    None,
                    file,
                )
                .map_err(err)?;
                scenario.workloads.push(w);
            }
            "Job" => {
                let j: Job = typed!(Job);
                let spec = j.spec.ok_or_else(|| err("Job has no spec".into()))?;
                let w = workload(
                    WorkloadKind::Job,
                    &j.metadata,
                    spec.parallelism.unwrap_or(1),
                    &spec.template,
                    None,
                    file,
                )
                .map_err(err)?;
                scenario.workloads.push(w);
            }
            "Pod" => {
                let p: Pod = typed!(Pod);
                let template = PodTemplateSpec {
                    metadata: Some(p.metadata.clone()),
                    spec: p.spec,
                };
                let w = workload(WorkloadKind::Pod, &p.metadata, 1, &template, None, file)
                    .map_err(err)?;
                scenario.workloads.push(w);
            }
            "Service" => {
                let s: Service = typed!(Service);
                scenario.services.push(service(&s, file).map_err(err)?);
            }
            "NetworkPolicy" => {
                let mut p: NetworkPolicy = typed!(NetworkPolicy);
                if p.metadata.namespace.is_none() {
                    p.metadata.namespace = Some("default".into());
                }
                scenario.policies.push(p);
            }
            other => {
                return Err(err(format!(
                    "kind {other} is not supported by the lab (Namespace, Deployment, \
                     StatefulSet, DaemonSet, ReplicaSet, Job, Pod, Service, NetworkPolicy)"
                )));
            }
        }
    }
    Ok(())
}

fn meta_names(
    kind: WorkloadKind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> std::result::Result<(String, String), String> {
    let name = meta
        .name
        .clone()
        .ok_or_else(|| format!("{} has no metadata.name", kind.as_str()))?;
    check_dns_label(&name).map_err(|m| format!("{} {name}: {m}", kind.as_str()))?;
    Ok((
        meta.namespace.clone().unwrap_or_else(|| "default".into()),
        name,
    ))
}

fn check_dns_label(name: &str) -> std::result::Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("name must be a DNS label (lower case letters, digits, '-', at most 63)".into())
    }
}

fn workload(
    kind: WorkloadKind,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    replicas: i32,
    template: &PodTemplateSpec,
    service_name: Option<String>,
    file: &Path,
) -> std::result::Result<Workload, String> {
    let (namespace, name) = meta_names(kind, meta)?;
    let what = format!("{} {namespace}/{name}", kind.as_str());
    let replicas = u32::try_from(replicas).map_err(|_| format!("{what}: negative replicas"))?;
    let labels: BTreeMap<String, String> = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default()
        .into_iter()
        .collect();
    let spec = template
        .spec
        .as_ref()
        .ok_or_else(|| format!("{what}: pod template has no spec"))?;
    if spec.host_network == Some(true) {
        return Err(format!(
            "{what}: hostNetwork pods are not supported by the lab (they would share the node netns)"
        ));
    }
    let mut containers = Vec::new();
    for c in &spec.containers {
        let cwhat = format!("{what}: container {}", c.name);
        let mut ports = Vec::new();
        for p in c.ports.iter().flatten() {
            let port = u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| {
                    format!("{cwhat}: containerPort {} out of range", p.container_port)
                })?;
            ports.push(ContainerPort {
                name: p.name.clone(),
                port,
                protocol: Proto::parse(p.protocol.as_deref(), &cwhat)?,
            });
        }
        let mut probes = Vec::new();
        for (pkind, probe) in [
            ("readinessProbe", &c.readiness_probe),
            ("livenessProbe", &c.liveness_probe),
            ("startupProbe", &c.startup_probe),
        ] {
            if let Some(p) = probe
                && let Some(spec) = probe_spec(pkind, p, &cwhat)?
            {
                probes.push(spec);
            }
        }
        containers.push(ContainerSpec {
            name: c.name.clone(),
            image: c.image.clone().unwrap_or_default(),
            ports,
            probes,
        });
    }
    if containers.is_empty() {
        return Err(format!("{what}: pod template has no containers"));
    }
    let w = Workload {
        kind,
        namespace,
        name,
        replicas,
        labels,
        containers,
        service_name,
        file: file.to_path_buf(),
    };
    // Named probe ports must resolve within the pod, as the kubelet requires.
    for c in &w.containers {
        for p in &c.probes {
            if w.resolve_port(&p.port, Proto::Tcp).is_none() {
                return Err(format!(
                    "{what}: container {}: {} names port {:?}, which no TCP containerPort declares",
                    c.name, p.kind, p.port
                ));
            }
        }
    }
    Ok(w)
}

fn probe_spec(
    kind: &'static str,
    p: &K8sProbe,
    what: &str,
) -> std::result::Result<Option<ProbeSpec>, String> {
    let what = format!("{what}: {kind}");
    if let Some(h) = &p.http_get {
        return Ok(Some(ProbeSpec {
            kind,
            action: ProbeAction::HttpGet {
                path: h.path.clone().unwrap_or_else(|| "/".into()),
            },
            port: PortRef::from_int_or_string(&h.port, &what)?,
        }));
    }
    if let Some(t) = &p.tcp_socket {
        return Ok(Some(ProbeSpec {
            kind,
            action: ProbeAction::TcpSocket,
            port: PortRef::from_int_or_string(&t.port, &what)?,
        }));
    }
    // exec and grpc probes open no connection the lab needs to reproduce.
    Ok(None)
}

fn service(s: &Service, file: &Path) -> std::result::Result<ServiceSpec, String> {
    let name = s
        .metadata
        .name
        .clone()
        .ok_or("Service has no metadata.name")?;
    check_dns_label(&name).map_err(|m| format!("Service {name}: {m}"))?;
    let namespace = s
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let what = format!("Service {namespace}/{name}");
    let spec = s.spec.as_ref().ok_or_else(|| format!("{what}: no spec"))?;
    if let Some(t) = &spec.type_
        && t == "ExternalName"
    {
        return Err(format!(
            "{what}: type ExternalName is not supported by the lab"
        ));
    }
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("None") | Some("") => None,
        Some(ip) => Some(
            ip.parse::<IpAddr>()
                .map_err(|_| format!("{what}: spec.clusterIP {ip:?} is not an IP address"))?,
        ),
    };
    let mut ports = Vec::new();
    for p in spec.ports.iter().flatten() {
        let port = u16::try_from(p.port)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("{what}: port {} out of range", p.port))?;
        let target = match &p.target_port {
            None => PortRef::Number(port),
            Some(t) => PortRef::from_int_or_string(t, &format!("{what}: port {port} targetPort"))?,
        };
        ports.push(ServicePortSpec {
            name: p.name.clone(),
            port,
            target,
            protocol: Proto::parse(p.protocol.as_deref(), &what)?,
        });
    }
    if ports.is_empty() {
        return Err(format!("{what}: spec.ports is empty"));
    }
    Ok(ServiceSpec {
        namespace,
        name,
        selector: spec
            .selector
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect(),
        headless,
        cluster_ip,
        ports,
        file: file.to_path_buf(),
    })
}

/// Reads NetworkPolicies from files or folders (`--policies`); any other kind is an error.
pub fn load_policies(paths: &[PathBuf]) -> Result<Vec<NetworkPolicy>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            let mut inner: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(|e| ScenarioError::Folder(path.clone(), e))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.extension()
                        .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
                })
                .collect();
            inner.sort();
            files.extend(inner);
        } else {
            files.push(path.clone());
        }
    }
    let mut scratch = Scenario {
        dir: PathBuf::new(),
        namespaces: BTreeMap::new(),
        workloads: Vec::new(),
        services: Vec::new(),
        policies: Vec::new(),
        manifest_files: Vec::new(),
        traffic: Traffic::default(),
        traffic_file: PathBuf::new(),
        config: LabConfig::default(),
    };
    for file in &files {
        let before = (
            scratch.workloads.len(),
            scratch.services.len(),
            scratch.namespaces.len(),
        );
        load_manifests(&mut scratch, file, &read(file)?)?;
        if (
            scratch.workloads.len(),
            scratch.services.len(),
            scratch.namespaces.len(),
        ) != before
        {
            return Err(ScenarioError::File {
                file: file.clone(),
                msg: "--policies files may hold NetworkPolicies only".into(),
            });
        }
    }
    Ok(scratch.policies)
}

/// Namespaces every cluster has.
pub const BUILTIN_NAMESPACES: [&str; 2] = ["default", "kube-system"];

fn validate(s: &Scenario) -> Result<()> {
    validate_config(s)?;
    // Namespaces exist; names are unique.
    let mut seen = BTreeSet::new();
    for w in &s.workloads {
        let object = format!("{} {} ({})", w.kind.as_str(), w.key(), w.file.display());
        if !s.namespaces.contains_key(&w.namespace)
            && !BUILTIN_NAMESPACES.contains(&w.namespace.as_str())
        {
            return Err(ScenarioError::Object {
                object,
                msg: format!(
                    "namespace {:?} is not declared in the scenario (add a Namespace manifest)",
                    w.namespace
                ),
            });
        }
        if !seen.insert(w.key()) {
            return Err(ScenarioError::Object {
                object,
                msg: "another workload in the scenario has the same namespace/name".into(),
            });
        }
    }
    let mut seen = BTreeSet::new();
    for svc in &s.services {
        let object = format!("Service {} ({})", svc.key(), svc.file.display());
        let fail = |msg: String| ScenarioError::Object {
            object: object.clone(),
            msg,
        };
        if !seen.insert(svc.key()) {
            return Err(fail("defined twice".into()));
        }
        if !s.namespaces.contains_key(&svc.namespace)
            && !BUILTIN_NAMESPACES.contains(&svc.namespace.as_str())
        {
            return Err(fail(format!(
                "namespace {:?} is not declared in the scenario",
                svc.namespace
            )));
        }
        if svc.selector.is_empty() {
            return Err(fail(
                "has no spec.selector: the lab builds endpoints from selected pods only".into(),
            ));
        }
        let selected = s.selected(svc);
        if selected.is_empty() {
            return Err(fail(format!(
                "spec.selector {:?} matches no pod template in namespace {:?}: the Service has no target",
                svc.selector, svc.namespace
            )));
        }
        for p in &svc.ports {
            if let PortRef::Name(name) = &p.target
                && !selected
                    .iter()
                    .any(|w| w.resolve_port(&p.target, p.protocol).is_some())
            {
                return Err(fail(format!(
                    "port {}: targetPort {name:?} is not a {} containerPort name of any selected pod",
                    p.port,
                    p.protocol.as_str()
                )));
            }
        }
        if let Some(ip) = svc.cluster_ip {
            let cidr = match ip {
                IpAddr::V4(_) => s.config.service_cidr,
                IpAddr::V6(_) => s.config.service_cidr_v6,
            };
            if !cidr.contains(&ip) {
                return Err(fail(format!(
                    "spec.clusterIP {ip} is outside the lab's Service CIDR {cidr}"
                )));
            }
        }
    }
    // Externals.
    let mut names = BTreeSet::new();
    for e in &s.traffic.externals {
        let fail = |msg: String| ScenarioError::File {
            file: s.traffic_file.clone(),
            msg: format!("externals {:?}: {msg}", e.name),
        };
        if !names.insert(e.name.as_str()) {
            return Err(fail("declared twice".into()));
        }
        for (what, net) in cidrs(&s.config) {
            if net.contains(&e.address) {
                return Err(fail(format!(
                    "address {} overlaps the {what} {net}",
                    e.address
                )));
            }
        }
        if e.address.is_loopback() || e.address.is_unspecified() || e.address.is_multicast() {
            return Err(fail(format!("address {} cannot be a lab host", e.address)));
        }
        if e.address.is_ipv6() && !s.config.dual_stack() {
            return Err(fail(format!(
                "address {} is IPv6 but lab.yaml does not ask for ipFamilies [IPv4, IPv6]",
                e.address
            )));
        }
    }
    for (index, c) in s.traffic.connections.iter().enumerate() {
        validate_connection(s, c).map_err(|msg| ScenarioError::Connection {
            file: s.traffic_file.clone(),
            index,
            msg,
        })?;
    }
    Ok(())
}

fn cidrs(c: &LabConfig) -> Vec<(&'static str, IpNet)> {
    let mut v = vec![
        ("podCIDR", c.pod_cidr),
        ("serviceCIDR", c.service_cidr),
        ("pod gateway", "169.254.1.1/32".parse().expect("constant")),
        ("nodeAddress", IpNet::from(c.node_address)),
    ];
    if c.dual_stack() {
        v.push(("podCIDRv6", c.pod_cidr_v6));
        v.push(("serviceCIDRv6", c.service_cidr_v6));
        v.push(("nodeAddressV6", IpNet::from(c.node_address_v6)));
    }
    v
}

fn validate_config(s: &Scenario) -> Result<()> {
    let c = &s.config;
    let file = s.dir.join(LAB_FILE);
    let fail = |msg: String| ScenarioError::File {
        file: file.clone(),
        msg,
    };
    if c.ip_families.is_empty() || c.ip_families[0] != IpFamily::IPv4 {
        return Err(fail(
            "ipFamilies must be [IPv4] or [IPv4, IPv6] (the lab is IPv4-first)".into(),
        ));
    }
    let families = [
        ("podCIDR", c.pod_cidr, true),
        ("serviceCIDR", c.service_cidr, true),
        ("nodeAddress", IpNet::from(c.node_address), true),
        ("podCIDRv6", c.pod_cidr_v6, false),
        ("serviceCIDRv6", c.service_cidr_v6, false),
        ("nodeAddressV6", IpNet::from(c.node_address_v6), false),
    ];
    for (what, net, v4) in families {
        if matches!(net, IpNet::V4(_)) != v4 {
            return Err(fail(format!(
                "{what} {net} must be an {} network",
                if v4 { "IPv4" } else { "IPv6" }
            )));
        }
    }
    if c.pod_cidr.prefix_len() > 24 || (c.dual_stack() && c.pod_cidr_v6.prefix_len() > 120) {
        return Err(fail(
            "podCIDR is too small for a lab (at most /24, /120)".into(),
        ));
    }
    let all = cidrs(c);
    for (i, (a, na)) in all.iter().enumerate() {
        for (b, nb) in &all[i + 1..] {
            if na.contains(&nb.network()) || nb.contains(&na.network()) {
                return Err(fail(format!("{a} {na} overlaps {b} {nb}")));
            }
        }
    }
    Ok(())
}

fn validate_connection(s: &Scenario, c: &Connection) -> std::result::Result<(), String> {
    let from = s.workload(&c.from).ok_or_else(|| {
        format!(
            "from: unknown workload {:?} (write <namespace>/<workload>)",
            c.from
        )
    })?;
    if let Some(r) = c.replica
        && r >= from.replicas
    {
        return Err(format!(
            "replica: {r} but {} has {} replica(s) (0-based)",
            from.key(),
            from.replicas
        ));
    }
    if from.replicas == 0 {
        return Err(format!("from: {} has 0 replicas", from.key()));
    }
    let proto = Proto::parse(c.protocol.as_deref(), "protocol")?;
    if c.port == 0 {
        return Err("port: 0 is not a port".into());
    }
    if c.count == Some(0) {
        return Err("count: 0 connections".into());
    }
    if c.ip_family == Some(IpFamily::IPv6) && !s.config.dual_stack() {
        return Err("ipFamily: IPv6 but lab.yaml does not ask for ipFamilies [IPv4, IPv6]".into());
    }
    let targets = [&c.to.service, &c.to.workload, &c.to.external]
        .iter()
        .filter(|t| t.is_some())
        .count();
    if targets != 1 {
        return Err("to: needs exactly one of `service`, `workload`, `external`".into());
    }
    if let Some(key) = &c.to.service {
        let svc = s.service(key).ok_or_else(|| {
            format!("to.service: unknown Service {key:?} (write <namespace>/<name>)")
        })?;
        if !svc
            .ports
            .iter()
            .any(|p| p.port == c.port && p.protocol == proto)
        {
            return Err(format!(
                "port: Service {key} has no {} port {} (its ports: {})",
                proto.as_str(),
                c.port,
                svc.ports
                    .iter()
                    .map(|p| format!("{}/{}", p.port, p.protocol.as_str()))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    if let Some(key) = &c.to.workload {
        let w = s.workload(key).ok_or_else(|| {
            format!("to.workload: unknown workload {key:?} (write <namespace>/<workload>)")
        })?;
        if !w.ports().any(|p| p.port == c.port && p.protocol == proto) {
            return Err(format!(
                "port: workload {key} declares no {} containerPort {}",
                proto.as_str(),
                c.port
            ));
        }
        if w.replicas == 0 {
            return Err(format!("to.workload: {key} has 0 replicas"));
        }
    }
    if let Some(name) = &c.to.external {
        let e = s
            .external(name)
            .ok_or_else(|| format!("to.external: {name:?} is not declared under `externals`"))?;
        if !e.ports.contains(&c.port) {
            return Err(format!(
                "port: external {name} listens on {:?}, not {}",
                e.ports, c.port
            ));
        }
        if (c.ip_family == Some(IpFamily::IPv6)) != e.address.is_ipv6() {
            return Err(format!(
                "ipFamily does not match the address family of external {name} ({})",
                e.address
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario_dir(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    const APP: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: webapp, namespace: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: webapp}}
  template:
    metadata: {labels: {app: webapp}}
    spec:
      containers:
        - name: app
          ports: [{name: http, containerPort: 8080}]
          readinessProbe: {httpGet: {path: /healthz, port: http}}
---
apiVersion: v1
kind: Service
metadata: {name: webapp, namespace: web}
spec:
  selector: {app: webapp}
  ports: [{name: web, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: web, labels: {app: client}}
spec:
  containers: [{name: curl}]
"#;

    #[test]
    fn loads_a_scenario_with_named_ports_and_probes() {
        let dir = scenario_dir(&[
            ("app.yaml", APP),
            (
                "traffic.yaml",
                "connections:\n  - from: web/client\n    to: {service: web/webapp}\n    port: 80\n",
            ),
        ]);
        let s = load(dir.path()).unwrap();
        assert_eq!(s.workloads.len(), 2);
        let w = s.workload("web/webapp").unwrap();
        assert_eq!(w.replicas, 2);
        assert_eq!(
            w.resolve_port(&PortRef::Name("http".into()), Proto::Tcp),
            Some(8080)
        );
        assert_eq!(w.containers[0].probes[0].kind, "readinessProbe");
        let svc = s.service("web/webapp").unwrap();
        assert_eq!(svc.ports[0].target, PortRef::Name("http".into()));
        assert_eq!(s.selected(svc).len(), 1);
        assert_eq!(s.traffic.connections.len(), 1);
    }

    #[test]
    fn service_without_target_is_an_error_naming_it() {
        let app = APP.replace(
            "selector: {app: webapp}\n  ports",
            "selector: {app: nobody}\n  ports",
        );
        let dir = scenario_dir(&[("app.yaml", &app)]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("Service web/webapp"), "{err}");
        assert!(err.contains("has no target"), "{err}");
    }

    #[test]
    fn unknown_named_target_port_is_an_error() {
        let app = APP.replace("targetPort: http}", "targetPort: metrics}");
        let dir = scenario_dir(&[("app.yaml", &app)]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("targetPort \"metrics\""), "{err}");
    }

    #[test]
    fn unknown_workload_in_traffic_is_an_error_naming_the_connection() {
        let dir = scenario_dir(&[
            ("app.yaml", APP),
            (
                "traffic.yaml",
                "connections:\n  - from: web/client\n    to: {service: web/webapp}\n    port: 80\n  - from: web/ghost\n    to: {workload: web/webapp}\n    port: 8080\n",
            ),
        ]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("traffic.yaml: connections[1]"), "{err}");
        assert!(err.contains("unknown workload \"web/ghost\""), "{err}");
    }

    #[test]
    fn wrong_service_port_is_an_error_listing_the_ports() {
        let dir = scenario_dir(&[
            ("app.yaml", APP),
            (
                "traffic.yaml",
                "connections:\n  - from: web/client\n    to: {service: web/webapp}\n    port: 8080\n",
            ),
        ]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("has no TCP port 8080 (its ports: 80/TCP)"),
            "{err}"
        );
    }

    #[test]
    fn overlapping_cidrs_are_an_error() {
        let dir = scenario_dir(&[
            ("app.yaml", APP),
            (
                "lab.yaml",
                "podCIDR: 10.0.0.0/8\nserviceCIDR: 10.96.0.0/16\n",
            ),
        ]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("lab.yaml"), "{err}");
        assert!(
            err.contains("podCIDR 10.0.0.0/8 overlaps serviceCIDR 10.96.0.0/16"),
            "{err}"
        );
    }

    #[test]
    fn external_inside_the_pod_cidr_is_an_error() {
        let dir = scenario_dir(&[
            ("app.yaml", APP),
            (
                "traffic.yaml",
                "externals:\n  - {name: x, address: 10.244.9.9, ports: [443]}\n",
            ),
        ]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("overlaps the podCIDR"), "{err}");
    }

    #[test]
    fn undeclared_namespace_is_an_error() {
        let app = APP.replace(
            "kind: Namespace\nmetadata: {name: web}",
            "kind: Namespace\nmetadata: {name: other}",
        );
        let dir = scenario_dir(&[("app.yaml", &app)]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("namespace \"web\" is not declared"), "{err}");
    }

    #[test]
    fn a_wrongly_typed_field_is_named() {
        let app = APP.replace("replicas: 2", "replicas: two");
        let dir = scenario_dir(&[("app.yaml", &app)]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("app.yaml: document 2: Deployment: field spec.replicas"),
            "{err}"
        );
    }

    #[test]
    fn unsupported_kind_names_file_and_document() {
        let dir = scenario_dir(&[(
            "app.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
        )]);
        let err = load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("app.yaml: document 1: kind ConfigMap is not supported"),
            "{err}"
        );
    }

    #[test]
    fn every_shipped_scenario_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
        let mut n = 0;
        for entry in std::fs::read_dir(&root).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                let s = load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                assert!(!s.traffic.connections.is_empty(), "{}", path.display());
                n += 1;
            }
        }
        assert!(n >= 7, "expected at least 7 scenarios, found {n}");
    }
}
