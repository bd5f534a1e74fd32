//! The lab plan: every name, address, cgroup and NAT rule the lab will create, computed from a
//! validated scenario without touching the system (so it is unit-tested without root).
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::scenario::{
    ContainerPort, IpFamily, PortRef, ProbeAction, Proto, Scenario, ServicePortSpec, ServiceSpec,
    Workload, WorkloadKind,
};

/// Cluster DNS domain, as kubelet's `--cluster-domain` default.
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// Offset of kube-dns in the Service CIDR (10.96.0.10 in the default plan).
const DNS_SERVICE_OFFSET: u128 = 10;
/// Offset of the first allocated ClusterIP.
const FIRST_SERVICE_OFFSET: u128 = 100;
/// Offset of the first pod address in the pod CIDR.
const FIRST_POD_OFFSET: u128 = 10;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("lab id {0:?}: use 1-20 characters of a-z, 0-9 and '-'")]
    LabId(String),
    #[error("the pod CIDR {0} has room for {1} pods, the scenario needs {2}")]
    PodCidrFull(IpNet, u128, usize),
    #[error("the Service CIDR {0} is full")]
    ServiceCidrFull(IpNet),
    #[error("Service {0}: spec.clusterIP {1} is already taken by Service {2}")]
    ClusterIpTaken(String, IpAddr, String),
}

/// What a container's process does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Role {
    /// Listens on the declared containerPorts and answers.
    Server,
    /// The cluster DNS server (kube-dns).
    Dns,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PortPlan {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Proto,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerPlan {
    pub name: String,
    pub image: String,
    /// 64 hex digits, as containerd gives.
    pub id: String,
    /// Path relative to the cgroup2 mount.
    pub cgroup: String,
    pub role: Role,
    pub ports: Vec<PortPlan>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProbePlan {
    pub kind: String,
    pub container: String,
    /// Absent for tcpSocket probes.
    pub http_path: Option<String>,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OwnerPlan {
    pub kind: String,
    pub name: String,
    pub uid: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodPlan {
    pub index: usize,
    pub netns: String,
    /// The node-side veth (in the node netns); the pod side is always `eth0`.
    pub host_veth: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// The top-level workload (`Deployment`, `StatefulSet`, ..., or `Pod` for a bare pod).
    pub workload_kind: WorkloadKind,
    pub workload: String,
    /// The direct controller (a ReplicaSet for a Deployment), absent for bare pods.
    pub owner: Option<OwnerPlan>,
    /// For a Deployment: the ReplicaSet's own owner (the Deployment).
    pub owner_of_owner: Option<OwnerPlan>,
    pub replica: u32,
    pub hostname: String,
    pub subdomain: Option<String>,
    pub ips: Vec<IpAddr>,
    /// cgroup relative path of the pod slice.
    pub cgroup: String,
    pub containers: Vec<ContainerPlan>,
    pub probes: Vec<ProbePlan>,
}

impl PodPlan {
    pub fn ipv4(&self) -> Ipv4Addr {
        match self.ips[0] {
            IpAddr::V4(v4) => v4,
            IpAddr::V6(_) => unreachable!("the first pod address is IPv4 by construction"),
        }
    }
    pub fn ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| match family {
            IpFamily::IPv4 => ip.is_ipv4(),
            IpFamily::IPv6 => ip.is_ipv6(),
        })
    }
    pub fn search_list(&self) -> Vec<String> {
        vec![
            format!("{}.svc.{CLUSTER_DOMAIN}", self.namespace),
            format!("svc.{CLUSTER_DOMAIN}"),
            CLUSTER_DOMAIN.to_string(),
        ]
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EndpointPlan {
    pub pod: usize,
    pub ip: IpAddr,
    pub port: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicePortPlan {
    pub name: Option<String>,
    pub port: u16,
    pub protocol: Proto,
    /// targetPort as written (number or name).
    pub target: String,
    pub endpoints: Vec<EndpointPlan>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServicePlan {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub selector: BTreeMap<String, String>,
    pub headless: bool,
    /// Empty for headless Services.
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePortPlan>,
}

impl ServicePlan {
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
    pub fn fqdn(&self) -> String {
        format!("{}.{}.svc.{CLUSTER_DOMAIN}", self.name, self.namespace)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExternalPlan {
    pub name: String,
    pub netns: String,
    pub host_veth: String,
    pub address: IpAddr,
    pub ports: Vec<u16>,
    pub cgroup: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NamespacePlan {
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub lab_id: String,
    pub node_name: String,
    pub node_netns: String,
    pub node_addresses: Vec<IpAddr>,
    pub pod_cidrs: Vec<IpNet>,
    pub service_cidrs: Vec<IpNet>,
    /// cgroup relative path of the lab's top slice; everything the lab runs lives below it.
    pub cgroup_root: String,
    pub kubelet_cgroup: String,
    pub dns_ips: Vec<IpAddr>,
    pub namespaces: Vec<NamespacePlan>,
    pub pods: Vec<PodPlan>,
    pub services: Vec<ServicePlan>,
    pub externals: Vec<ExternalPlan>,
    /// Workload (`ns/name`) → pod indexes.
    pub workload_pods: BTreeMap<String, Vec<usize>>,
    /// Whether NetworkPolicies are enforced (`lab up --enforce`).
    #[serde(default)]
    pub enforced: bool,
}

impl Plan {
    /// Names (under /run/netns) of every network namespace the lab makes: its
    /// node's, its pods', its externals'.
    pub fn netns_names(&self) -> Vec<&str> {
        std::iter::once(self.node_netns.as_str())
            .chain(self.pods.iter().map(|p| p.netns.as_str()))
            .chain(self.externals.iter().map(|e| e.netns.as_str()))
            .collect()
    }

    pub fn netns_prefix(lab_id: &str) -> String {
        format!("fpl-{lab_id}-")
    }
    pub fn cgroup_root_of(lab_id: &str) -> String {
        format!("flowpol-lab-{lab_id}.slice")
    }
    pub fn service(&self, key: &str) -> Option<&ServicePlan> {
        self.services.iter().find(|s| s.key() == key)
    }
    pub fn external(&self, name: &str) -> Option<&ExternalPlan> {
        self.externals.iter().find(|e| e.name == name)
    }
    pub fn pods_of(&self, workload: &str) -> Vec<&PodPlan> {
        self.workload_pods
            .get(workload)
            .map(|v| v.iter().map(|i| &self.pods[*i]).collect())
            .unwrap_or_default()
    }
    pub fn pod_by_ip(&self, ip: IpAddr) -> Option<&PodPlan> {
        self.pods.iter().find(|p| p.ips.contains(&ip))
    }
    /// DNS names the lab's kube-dns answers: Services (ClusterIPs, or pod IPs when headless)
    /// and StatefulSet pods under their governing headless Service.
    pub fn dns_records(&self) -> BTreeMap<String, Vec<IpAddr>> {
        let mut records: BTreeMap<String, Vec<IpAddr>> = BTreeMap::new();
        for svc in &self.services {
            let ips: Vec<IpAddr> = if svc.headless {
                let mut ips: Vec<IpAddr> = svc
                    .ports
                    .iter()
                    .flat_map(|p| p.endpoints.iter().map(|e| e.pod))
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .flat_map(|i| self.pods[i].ips.clone())
                    .collect();
                ips.dedup();
                ips
            } else {
                svc.cluster_ips.clone()
            };
            records.insert(svc.fqdn(), ips);
            if svc.headless {
                for pod in &self.pods {
                    if pod.namespace == svc.namespace
                        && pod.subdomain.as_deref() == Some(svc.name.as_str())
                    {
                        records.insert(format!("{}.{}", pod.hostname, svc.fqdn()), pod.ips.clone());
                    }
                }
            }
        }
        records
    }
}

/// FNV-1a: a stable hash so the same lab id yields the same names (reproducible runs).
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The alphabet Kubernetes uses for generated name suffixes (no vowels, no look-alikes).
const K8S_ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn k8s_suffix(len: usize, parts: &[&str]) -> String {
    let mut h = fnv(parts);
    let mut s = String::with_capacity(len);
    for i in 0..len {
        if i % 12 == 11 {
            h = fnv(&[&h.to_string()]);
        }
        s.push(K8S_ALPHANUMS[(h % K8S_ALPHANUMS.len() as u64) as usize] as char);
        h /= K8S_ALPHANUMS.len() as u64;
    }
    s
}

fn hex(len: usize, parts: &[&str]) -> String {
    let mut s = String::with_capacity(len + 16);
    let mut i = 0u32;
    while s.len() < len {
        let mut p: Vec<&str> = parts.to_vec();
        let salt = i.to_string();
        p.push(&salt);
        s.push_str(&format!("{:016x}", fnv(&p)));
        i += 1;
    }
    s.truncate(len);
    s
}

fn uid(parts: &[&str]) -> String {
    let h = hex(32, parts);
    format!(
        "{}-{}-4{}-a{}-{}",
        &h[0..8],
        &h[8..12],
        &h[13..16],
        &h[17..20],
        &h[20..32]
    )
}

pub fn check_lab_id(id: &str) -> Result<(), PlanError> {
    let ok = !id.is_empty()
        && id.len() <= 20
        && id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(PlanError::LabId(id.to_string()))
    }
}

fn nth(net: &IpNet, offset: u128) -> Option<IpAddr> {
    match net {
        IpNet::V4(n) => {
            let base = u32::from(n.network()) as u128;
            let host_bits = 32 - u32::from(n.prefix_len());
            if offset >= (1u128 << host_bits) - 1 {
                return None;
            }
            Some(IpAddr::V4(Ipv4Addr::from((base + offset) as u32)))
        }
        IpNet::V6(n) => {
            let base = u128::from(n.network());
            let host_bits = 128 - u32::from(n.prefix_len());
            if host_bits < 128 && offset >= (1u128 << host_bits) - 1 {
                return None;
            }
            Some(IpAddr::V6(Ipv6Addr::from(base + offset)))
        }
    }
}

/// The kube-dns workload every lab runs (as kubeadm deploys CoreDNS).
fn kube_dns_workload() -> Workload {
    use super::scenario::ContainerSpec;
    Workload {
        kind: WorkloadKind::Deployment,
        namespace: "kube-system".into(),
        name: "coredns".into(),
        replicas: 1,
        labels: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
        containers: vec![ContainerSpec {
            name: "coredns".into(),
            image: "registry.k8s.io/coredns/coredns:v1.12.0".into(),
            ports: vec![
                ContainerPort {
                    name: Some("dns".into()),
                    port: 53,
                    protocol: Proto::Udp,
                },
                ContainerPort {
                    name: Some("dns-tcp".into()),
                    port: 53,
                    protocol: Proto::Tcp,
                },
            ],
            probes: vec![],
        }],
        service_name: None,
        file: "<built in>".into(),
    }
}

fn kube_dns_service() -> ServiceSpec {
    ServiceSpec {
        namespace: "kube-system".into(),
        name: "kube-dns".into(),
        selector: [("k8s-app".to_string(), "kube-dns".to_string())].into(),
        headless: false,
        cluster_ip: None,
        ports: vec![
            ServicePortSpec {
                name: Some("dns".into()),
                port: 53,
                target: PortRef::Name("dns".into()),
                protocol: Proto::Udp,
            },
            ServicePortSpec {
                name: Some("dns-tcp".into()),
                port: 53,
                target: PortRef::Name("dns-tcp".into()),
                protocol: Proto::Tcp,
            },
        ],
        file: "<built in>".into(),
    }
}

/// Builds the plan for a validated scenario.
pub fn build(lab_id: &str, scenario: &Scenario) -> Result<Plan, PlanError> {
    check_lab_id(lab_id)?;
    let cfg = &scenario.config;
    let dual = cfg.dual_stack();
    let cgroup_root = Plan::cgroup_root_of(lab_id);
    let prefix = Plan::netns_prefix(lab_id);

    // kube-dns comes first unless the scenario brings its own kube-system/kube-dns.
    let own_dns = scenario.service("kube-system/kube-dns").is_some();
    let mut workloads: Vec<Workload> = Vec::new();
    let mut services: Vec<ServiceSpec> = Vec::new();
    if !own_dns {
        workloads.push(kube_dns_workload());
        services.push(kube_dns_service());
    }
    workloads.extend(scenario.workloads.iter().cloned());
    services.extend(scenario.services.iter().cloned());

    let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = scenario.namespaces.clone();
    for ns in super::scenario::BUILTIN_NAMESPACES {
        namespaces.entry(ns.to_string()).or_default();
    }
    let namespaces: Vec<NamespacePlan> = namespaces
        .into_iter()
        .map(|(name, mut labels)| {
            labels
                .entry("kubernetes.io/metadata.name".into())
                .or_insert_with(|| name.clone());
            NamespacePlan {
                uid: uid(&[lab_id, "ns", &name]),
                name,
                labels,
            }
        })
        .collect();

    let total: usize = workloads.iter().map(|w| w.replicas as usize).sum();
    let room = match cfg.pod_cidr {
        IpNet::V4(n) => (1u128 << (32 - u32::from(n.prefix_len()))) - FIRST_POD_OFFSET - 1,
        IpNet::V6(_) => u128::MAX,
    };
    if total as u128 > room {
        return Err(PlanError::PodCidrFull(cfg.pod_cidr, room, total));
    }

    let mut pods = Vec::new();
    let mut workload_pods: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for w in &workloads {
        let wuid = uid(&[lab_id, w.kind.as_str(), &w.namespace, &w.name]);
        let template_hash = k8s_suffix(10, &[lab_id, &w.namespace, &w.name, "template"]);
        for replica in 0..w.replicas {
            let index = pods.len();
            let salt = replica.to_string();
            let rand5 = k8s_suffix(5, &[lab_id, &w.namespace, &w.name, &salt]);
            let (name, owner, owner_of_owner) = match w.kind {
                WorkloadKind::Deployment => {
                    let rs = format!("{}-{template_hash}", w.name);
                    let rs_uid = uid(&[lab_id, "ReplicaSet", &w.namespace, &rs]);
                    (
                        format!("{rs}-{rand5}"),
                        Some(OwnerPlan {
                            kind: "ReplicaSet".into(),
                            name: rs,
                            uid: rs_uid,
                        }),
                        Some(OwnerPlan {
                            kind: "Deployment".into(),
                            name: w.name.clone(),
                            uid: wuid.clone(),
                        }),
                    )
                }
                WorkloadKind::StatefulSet => (
                    format!("{}-{replica}", w.name),
                    Some(OwnerPlan {
                        kind: "StatefulSet".into(),
                        name: w.name.clone(),
                        uid: wuid.clone(),
                    }),
                    None,
                ),
                WorkloadKind::DaemonSet | WorkloadKind::ReplicaSet | WorkloadKind::Job => (
                    format!("{}-{rand5}", w.name),
                    Some(OwnerPlan {
                        kind: w.kind.as_str().into(),
                        name: w.name.clone(),
                        uid: wuid.clone(),
                    }),
                    None,
                ),
                WorkloadKind::Pod => (w.name.clone(), None, None),
            };
            let pod_uid = uid(&[lab_id, "Pod", &w.namespace, &name]);
            let pod_cgroup = format!(
                "{cgroup_root}/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice",
                pod_uid.replace('-', "_")
            );
            let mut labels = w.labels.clone();
            match w.kind {
                WorkloadKind::Deployment => {
                    labels.insert("pod-template-hash".into(), template_hash.clone());
                }
                WorkloadKind::StatefulSet => {
                    labels.insert("statefulset.kubernetes.io/pod-name".into(), name.clone());
                    labels.insert("apps.kubernetes.io/pod-index".into(), replica.to_string());
                }
                _ => {}
            }
            let mut ips = vec![
                nth(&cfg.pod_cidr, FIRST_POD_OFFSET + index as u128)
                    .ok_or(PlanError::PodCidrFull(cfg.pod_cidr, room, total))?,
            ];
            if dual {
                ips.push(
                    nth(&cfg.pod_cidr_v6, FIRST_POD_OFFSET + index as u128)
                        .ok_or(PlanError::PodCidrFull(cfg.pod_cidr_v6, room, total))?,
                );
            }
            let is_dns = w.namespace == "kube-system"
                && w.labels.get("k8s-app").map(String::as_str) == Some("kube-dns");
            let containers: Vec<ContainerPlan> = w
                .containers
                .iter()
                .map(|c| {
                    let id = hex(64, &[lab_id, &pod_uid, &c.name]);
                    ContainerPlan {
                        name: c.name.clone(),
                        image: c.image.clone(),
                        cgroup: format!("{pod_cgroup}/cri-containerd-{id}.scope"),
                        id,
                        role: if is_dns && c.ports.iter().any(|p| p.port == 53) {
                            Role::Dns
                        } else {
                            Role::Server
                        },
                        ports: c
                            .ports
                            .iter()
                            .map(|p| PortPlan {
                                name: p.name.clone(),
                                port: p.port,
                                protocol: p.protocol,
                            })
                            .collect(),
                    }
                })
                .collect();
            let probes = w
                .containers
                .iter()
                .flat_map(|c| {
                    c.probes.iter().map(move |p| ProbePlan {
                        kind: p.kind.to_string(),
                        container: c.name.clone(),
                        http_path: match &p.action {
                            ProbeAction::HttpGet { path } => Some(path.clone()),
                            ProbeAction::TcpSocket => None,
                        },
                        port: w
                            .resolve_port(&p.port, Proto::Tcp)
                            .expect("validated when the scenario loaded"),
                    })
                })
                .collect();
            pods.push(PodPlan {
                index,
                netns: format!("{prefix}{index}"),
                host_veth: format!("p{index}"),
                namespace: w.namespace.clone(),
                hostname: name.clone(),
                subdomain: w.service_name.clone(),
                name,
                uid: pod_uid,
                labels,
                workload_kind: w.kind,
                workload: w.name.clone(),
                owner,
                owner_of_owner,
                replica,
                ips,
                cgroup: pod_cgroup,
                containers,
                probes,
            });
            workload_pods.entry(w.key()).or_default().push(index);
        }
    }

    // ClusterIPs: explicit ones first, then allocate.
    let mut taken: BTreeMap<IpAddr, String> = BTreeMap::new();
    for s in &services {
        if let Some(ip) = s.cluster_ip
            && let Some(other) = taken.insert(ip, s.key())
        {
            return Err(PlanError::ClusterIpTaken(s.key(), ip, other));
        }
    }
    let mut next_offset = FIRST_SERVICE_OFFSET;
    let mut alloc = |net: &IpNet,
                     key: &str,
                     taken: &mut BTreeMap<IpAddr, String>,
                     wanted: Option<u128>|
     -> Result<IpAddr, PlanError> {
        if let Some(off) = wanted {
            let ip = nth(net, off).ok_or(PlanError::ServiceCidrFull(*net))?;
            if let std::collections::btree_map::Entry::Vacant(e) = taken.entry(ip) {
                e.insert(key.to_string());
                return Ok(ip);
            }
        }
        loop {
            let ip = nth(net, next_offset).ok_or(PlanError::ServiceCidrFull(*net))?;
            next_offset += 1;
            if let std::collections::btree_map::Entry::Vacant(e) = taken.entry(ip) {
                e.insert(key.to_string());
                return Ok(ip);
            }
        }
    };
    let mut service_plans = Vec::new();
    for s in &services {
        let key = s.key();
        let mut cluster_ips = Vec::new();
        if !s.headless {
            let wanted = (key == "kube-system/kube-dns").then_some(DNS_SERVICE_OFFSET);
            let v4 = match s.cluster_ip {
                Some(ip @ IpAddr::V4(_)) => ip,
                _ => alloc(&cfg.service_cidr, &key, &mut taken, wanted)?,
            };
            cluster_ips.push(v4);
            if dual {
                // Same offset in both families, so 10.96.0.10 pairs with fd00:10:96::a.
                let wanted6 = match (v4, cfg.service_cidr) {
                    (IpAddr::V4(a), IpNet::V4(n)) => Some(u128::from(
                        u32::from(a).wrapping_sub(u32::from(n.network())),
                    )),
                    _ => None,
                };
                cluster_ips.push(alloc(&cfg.service_cidr_v6, &key, &mut taken, wanted6)?);
            }
        }
        let selected: Vec<&Workload> = workloads
            .iter()
            .filter(|w| {
                w.namespace == s.namespace
                    && s.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v))
            })
            .collect();
        let ports = s
            .ports
            .iter()
            .map(|p| {
                let mut endpoints = Vec::new();
                for w in &selected {
                    let Some(target) = w.resolve_port(&p.target, p.protocol) else {
                        continue;
                    };
                    for &i in workload_pods.get(&w.key()).into_iter().flatten() {
                        for ip in &pods[i].ips {
                            endpoints.push(EndpointPlan {
                                pod: i,
                                ip: *ip,
                                port: target,
                            });
                        }
                    }
                }
                ServicePortPlan {
                    name: p.name.clone(),
                    port: p.port,
                    protocol: p.protocol,
                    target: match &p.target {
                        PortRef::Number(n) => n.to_string(),
                        PortRef::Name(n) => n.clone(),
                    },
                    endpoints,
                }
            })
            .collect();
        service_plans.push(ServicePlan {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
            uid: uid(&[lab_id, "Service", &s.namespace, &s.name]),
            selector: s.selector.clone(),
            headless: s.headless,
            cluster_ips,
            ports,
        });
    }
    let dns_ips = service_plans
        .iter()
        .find(|s| s.key() == "kube-system/kube-dns")
        .map(|s| s.cluster_ips.clone())
        .unwrap_or_default();

    let externals = scenario
        .traffic
        .externals
        .iter()
        .enumerate()
        .map(|(i, e)| ExternalPlan {
            name: e.name.clone(),
            netns: format!("{prefix}x{i}"),
            host_veth: format!("x{i}"),
            address: e.address,
            ports: e.ports.clone(),
            cgroup: format!("{cgroup_root}/external-{i}.scope"),
        })
        .collect();

    let mut node_addresses = vec![cfg.node_address];
    let mut pod_cidrs = vec![cfg.pod_cidr];
    let mut service_cidrs = vec![cfg.service_cidr];
    if dual {
        node_addresses.push(cfg.node_address_v6);
        pod_cidrs.push(cfg.pod_cidr_v6);
        service_cidrs.push(cfg.service_cidr_v6);
    }
    Ok(Plan {
        lab_id: lab_id.to_string(),
        node_name: format!("flowpol-lab-{lab_id}"),
        node_netns: format!("{prefix}node"),
        node_addresses,
        pod_cidrs,
        service_cidrs,
        kubelet_cgroup: format!("{cgroup_root}/kubelet.service"),
        cgroup_root,
        dns_ips,
        namespaces,
        pods,
        services: service_plans,
        externals,
        workload_pods,
        enforced: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn example(name: &str) -> Scenario {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/examples")
            .join(name);
        super::super::scenario::load(&dir).unwrap()
    }

    #[test]
    fn deployment_pods_are_named_like_kubernetes_names_them() {
        let plan = build("t1", &example("task-api")).unwrap();
        let pods = plan.pods_of("taskapi/task-api");
        assert_eq!(pods.len(), 2);
        let rs = pods[0].owner.as_ref().unwrap();
        assert_eq!(rs.kind, "ReplicaSet");
        assert!(rs.name.starts_with("task-api-") && rs.name.len() == "task-api-".len() + 10);
        assert!(pods[0].name.starts_with(&format!("{}-", rs.name)));
        assert_eq!(pods[0].name.len(), rs.name.len() + 6);
        assert_ne!(pods[0].name, pods[1].name);
        assert_eq!(pods[0].owner_of_owner.as_ref().unwrap().name, "task-api");
        let sts = plan.pods_of("postgres/postgres");
        assert_eq!(sts[0].name, "postgres-0");
        assert_eq!(sts[0].owner.as_ref().unwrap().kind, "StatefulSet");
    }

    #[test]
    fn cgroups_are_laid_out_like_kubelet_systemd_with_containerd() {
        let plan = build("t1", &example("task-api")).unwrap();
        let pod = &plan.pods_of("redis/redis")[0];
        let c = &pod.containers[0];
        let want = format!(
            "flowpol-lab-t1.slice/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{}.scope",
            pod.uid.replace('-', "_"),
            c.id
        );
        assert_eq!(c.cgroup, want);
        assert_eq!(c.id.len(), 64);
        assert!(c.id.chars().all(|ch| ch.is_ascii_hexdigit()));
        assert_eq!(pod.uid.len(), 36);
    }

    #[test]
    fn kube_dns_gets_the_conventional_cluster_ip_and_pod() {
        let plan = build("t1", &example("task-api")).unwrap();
        assert_eq!(plan.dns_ips, vec!["10.96.0.10".parse::<IpAddr>().unwrap()]);
        let dns = &plan.pods_of("kube-system/coredns")[0];
        assert_eq!(dns.labels["k8s-app"], "kube-dns");
        assert_eq!(dns.containers[0].role, Role::Dns);
        let svc = plan.service("kube-system/kube-dns").unwrap();
        assert_eq!(svc.ports.len(), 2);
        assert_eq!(svc.ports[0].endpoints[0].port, 53);
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_addresses_are_unique() {
        let plan = build("t2", &example("port-mismatch")).unwrap();
        let svc = plan.service("web/webapp").unwrap();
        assert_eq!(svc.ports[0].port, 80);
        assert_eq!(svc.ports[0].endpoints.len(), 2);
        assert!(svc.ports[0].endpoints.iter().all(|e| e.port == 8080));
        let mut ips: Vec<_> = plan.pods.iter().map(|p| p.ips[0]).collect();
        ips.sort();
        ips.dedup();
        assert_eq!(ips.len(), plan.pods.len());
        assert!(
            plan.pods
                .iter()
                .all(|p| plan.pod_cidrs[0].contains(&p.ips[0]))
        );
    }

    #[test]
    fn probes_resolve_named_ports() {
        let plan = build("t1", &example("task-api")).unwrap();
        let api = &plan.pods_of("taskapi/task-api")[0];
        assert_eq!(api.probes[0].port, 8080);
        assert_eq!(api.probes[0].http_path.as_deref(), Some("/healthz"));
    }

    #[test]
    fn headless_services_resolve_to_pods_and_statefulset_pods_get_names() {
        let plan = build("t3", &example("statefulset-peers")).unwrap();
        let recs = plan.dns_records();
        assert_eq!(recs["etcd.kv.svc.cluster.local"].len(), 3);
        let etcd1 = &plan.pods_of("kv/etcd")[1];
        assert_eq!(recs["etcd-1.etcd.kv.svc.cluster.local"], etcd1.ips);
        assert_eq!(recs["etcd-client.kv.svc.cluster.local"].len(), 1);
    }

    #[test]
    fn names_are_stable_for_a_lab_id_and_differ_between_labs() {
        let s = example("three-tier");
        let a = build("a", &s).unwrap();
        let a2 = build("a", &s).unwrap();
        let b = build("b", &s).unwrap();
        assert_eq!(a.pods[3].name, a2.pods[3].name);
        assert_ne!(a.pods[3].uid, b.pods[3].uid);
        assert_eq!(a.node_netns, "fpl-a-node");
    }

    #[test]
    fn bad_lab_ids_are_refused() {
        assert!(check_lab_id("Bad_Id").is_err());
        assert!(check_lab_id("").is_err());
        assert!(check_lab_id("ok-1").is_ok());
    }
}
