//! What an API server would hold for the lab, written as a `kubectl get -o yaml` List, so
//! `flowpol agent --manifests cluster.yaml` resolves the lab exactly as it resolves a cluster.
use std::net::IpAddr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::plan::{OwnerPlan, Plan};
use super::scenario::Scenario;

fn owner_ref(o: &OwnerPlan) -> Value {
    let api = if o.kind == "Job" {
        "batch/v1"
    } else {
        "apps/v1"
    };
    json!({"apiVersion": api, "kind": o.kind, "name": o.name, "uid": o.uid,
           "controller": true, "blockOwnerDeletion": true})
}

fn family(ip: &IpAddr) -> &'static str {
    if ip.is_ipv4() { "IPv4" } else { "IPv6" }
}

fn containers_json(pod: &super::plan::PodPlan) -> Vec<Value> {
    pod.containers
        .iter()
        .map(|c| {
            let ports: Vec<Value> = c
                .ports
                .iter()
                .map(|p| {
                    let mut v = json!({"containerPort": p.port, "protocol": p.protocol.as_str()});
                    if let Some(n) = &p.name {
                        v["name"] = json!(n);
                    }
                    v
                })
                .collect();
            json!({"name": c.name, "image": c.image, "ports": ports})
        })
        .collect()
}

/// Builds the List of every object the lab runs.
pub fn cluster_list(plan: &Plan, scenario: &Scenario, created: DateTime<Utc>) -> Value {
    let ts = created.to_rfc3339_opts(SecondsFormat::Secs, true);
    let mut items = Vec::new();
    let node_ips: Vec<String> = plan.node_addresses.iter().map(|a| a.to_string()).collect();
    items.push(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": plan.node_name, "uid": format!("node-{}", plan.lab_id), "creationTimestamp": ts,
                     "labels": {"kubernetes.io/hostname": plan.node_name, "kubernetes.io/os": "linux",
                                "flowpol.dev/lab": plan.lab_id}},
        "spec": {"podCIDR": plan.pod_cidrs[0].to_string(),
                 "podCIDRs": plan.pod_cidrs.iter().map(|c| c.to_string()).collect::<Vec<_>>()},
        "status": {"addresses": node_ips.iter().map(|a| json!({"type": "InternalIP", "address": a}))
                     .chain(std::iter::once(json!({"type": "Hostname", "address": plan.node_name})))
                     .collect::<Vec<_>>()},
    }));
    for ns in &plan.namespaces {
        items.push(json!({
            "apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns.name, "uid": ns.uid, "labels": ns.labels, "creationTimestamp": ts},
            "status": {"phase": "Active"},
        }));
    }
    // Controllers: each distinct owner chain once.
    let mut seen = std::collections::BTreeSet::new();
    for pod in &plan.pods {
        let chain = [pod.owner_of_owner.as_ref(), pod.owner.as_ref()];
        for (i, o) in chain.into_iter().enumerate() {
            let Some(o) = o else { continue };
            if !seen.insert((pod.namespace.clone(), o.kind.clone(), o.name.clone())) {
                continue;
            }
            let api = if o.kind == "Job" {
                "batch/v1"
            } else {
                "apps/v1"
            };
            let mut template_labels = pod.labels.clone();
            template_labels.remove("statefulset.kubernetes.io/pod-name");
            template_labels.remove("apps.kubernetes.io/pod-index");
            let mut meta = json!({"name": o.name, "namespace": pod.namespace, "uid": o.uid,
                                  "labels": template_labels, "creationTimestamp": ts});
            // The ReplicaSet of a Deployment is owned by it.
            if i == 1
                && let Some(parent) = &pod.owner_of_owner
            {
                meta["ownerReferences"] = json!([owner_ref(parent)]);
            }
            let mut selector_labels = template_labels.clone();
            if o.kind == "Deployment" {
                selector_labels.remove("pod-template-hash");
            }
            let replicas = plan
                .pods_of(&format!("{}/{}", pod.namespace, pod.workload))
                .len();
            items.push(json!({
                "apiVersion": api, "kind": o.kind, "metadata": meta,
                "spec": {"replicas": replicas, "selector": {"matchLabels": selector_labels},
                         "template": {"metadata": {"labels": selector_labels},
                                      "spec": {"containers": containers_json(pod)}}},
            }));
        }
    }
    let host_ip = plan.node_addresses[0].to_string();
    for pod in &plan.pods {
        let mut meta = json!({"name": pod.name, "namespace": pod.namespace, "uid": pod.uid,
                              "labels": pod.labels, "creationTimestamp": ts});
        if let Some(o) = &pod.owner {
            meta["ownerReferences"] = json!([owner_ref(o)]);
        }
        let containers = containers_json(pod);
        let statuses: Vec<Value> = pod
            .containers
            .iter()
            .map(|c| {
                json!({"name": c.name, "image": c.image, "imageID": "", "ready": true, "started": true,
                       "restartCount": 0, "containerID": format!("containerd://{}", c.id),
                       "state": {"running": {"startedAt": ts}}})
            })
            .collect();
        let mut spec = json!({"nodeName": plan.node_name, "hostname": pod.hostname,
                              "containers": containers, "hostNetwork": false});
        if let Some(sub) = &pod.subdomain {
            spec["subdomain"] = json!(sub);
        }
        items.push(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec,
            "status": {"phase": "Running", "qosClass": "BestEffort", "startTime": ts,
                       "hostIP": host_ip, "hostIPs": plan.node_addresses.iter().map(|a| json!({"ip": a.to_string()})).collect::<Vec<_>>(),
                       "podIP": pod.ips[0].to_string(),
                       "podIPs": pod.ips.iter().map(|a| json!({"ip": a.to_string()})).collect::<Vec<_>>(),
                       "conditions": [{"type": "Ready", "status": "True"}],
                       "containerStatuses": statuses},
        }));
    }
    for svc in &plan.services {
        let ports: Vec<Value> = svc
            .ports
            .iter()
            .map(|p| {
                let target = p
                    .target
                    .parse::<u16>()
                    .map(|n| json!(n))
                    .unwrap_or_else(|_| json!(p.target));
                let mut v =
                    json!({"port": p.port, "targetPort": target, "protocol": p.protocol.as_str()});
                if let Some(n) = &p.name {
                    v["name"] = json!(n);
                }
                v
            })
            .collect();
        let (cluster_ip, cluster_ips): (Value, Vec<String>) = if svc.headless {
            (json!("None"), vec!["None".into()])
        } else {
            (
                json!(svc.cluster_ips[0].to_string()),
                svc.cluster_ips.iter().map(|a| a.to_string()).collect(),
            )
        };
        let families: Vec<&str> = plan.pod_cidrs.iter().map(|c| family(&c.addr())).collect();
        let mut labels = serde_json::Map::new();
        if svc.key() == "kube-system/kube-dns" {
            labels.insert("k8s-app".into(), json!("kube-dns"));
        }
        items.push(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": svc.name, "namespace": svc.namespace, "uid": svc.uid, "labels": labels, "creationTimestamp": ts},
            "spec": {"type": "ClusterIP", "selector": svc.selector, "clusterIP": cluster_ip,
                     "clusterIPs": cluster_ips, "ipFamilies": families, "ports": ports},
        }));
        for fam in &families {
            let endpoints: Vec<Value> = svc
                .ports
                .iter()
                .flat_map(|p| p.endpoints.iter())
                .filter(|e| family(&e.ip) == *fam)
                .map(|e| (e.pod, e.ip))
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .map(|(i, ip)| {
                    let pod = &plan.pods[i];
                    json!({"addresses": [ip.to_string()],
                           "conditions": {"ready": true, "serving": true, "terminating": false},
                           "nodeName": plan.node_name,
                           "targetRef": {"kind": "Pod", "name": pod.name, "namespace": pod.namespace, "uid": pod.uid}})
                })
                .collect();
            // One slice port per Service port; the port number is the (first) resolved target.
            let slice_ports: Vec<Value> = svc
                .ports
                .iter()
                .filter_map(|p| {
                    let ep = p.endpoints.iter().find(|e| family(&e.ip) == *fam)?;
                    let mut v = json!({"port": ep.port, "protocol": p.protocol.as_str()});
                    v["name"] = json!(p.name.clone().unwrap_or_default());
                    Some(v)
                })
                .collect();
            let suffix = if *fam == "IPv4" { "v4" } else { "v6" };
            items.push(json!({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": format!("{}-{suffix}", svc.name), "namespace": svc.namespace,
                             "labels": {"kubernetes.io/service-name": svc.name,
                                        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
                             "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": svc.name, "uid": svc.uid, "controller": true}]},
                "addressType": fam, "endpoints": endpoints, "ports": slice_ports,
            }));
        }
    }
    for p in &scenario.policies {
        if let Ok(mut v) = serde_json::to_value(p) {
            v["apiVersion"] = json!("networking.k8s.io/v1");
            v["kind"] = json!("NetworkPolicy");
            items.push(v);
        }
    }
    json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": ""}, "items": items})
}

pub fn cluster_yaml(plan: &Plan, scenario: &Scenario, created: DateTime<Utc>) -> String {
    serde_saphyr::to_string(&cluster_list(plan, scenario, created))
        .expect("a JSON value always serializes to YAML")
}

#[cfg(test)]
mod tests {
    use super::super::{plan, scenario};
    use super::*;
    use k8s_openapi::api::core::v1::{Node, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use std::path::Path;

    #[test]
    fn the_cluster_list_parses_as_kubernetes_objects_with_owners_and_ips() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/task-api");
        let s = scenario::load(&dir).unwrap();
        let p = plan::build("c1", &s).unwrap();
        let yaml = cluster_yaml(&p, &s, Utc::now());
        let list: Value = serde_saphyr::from_str(&yaml).unwrap();
        let items = list["items"].as_array().unwrap();
        let mut pods = 0;
        let mut slices = 0;
        for item in items {
            match item["kind"].as_str().unwrap() {
                "Pod" => {
                    let pod: Pod = serde_json::from_value(item.clone()).unwrap();
                    let planned = p
                        .pods
                        .iter()
                        .find(|x| Some(&x.name) == pod.metadata.name.as_ref())
                        .unwrap();
                    let status = pod.status.unwrap();
                    assert_eq!(status.pod_ip.unwrap(), planned.ips[0].to_string());
                    assert_eq!(status.host_ip.unwrap(), "172.18.0.2");
                    assert_eq!(pod.metadata.uid.as_ref(), Some(&planned.uid));
                    let cid = &status.container_statuses.unwrap()[0].container_id;
                    assert_eq!(
                        cid.as_deref(),
                        Some(format!("containerd://{}", planned.containers[0].id).as_str())
                    );
                    pods += 1;
                }
                "Service" => {
                    let _: Service = serde_json::from_value(item.clone()).unwrap();
                }
                "EndpointSlice" => {
                    let es: EndpointSlice = serde_json::from_value(item.clone()).unwrap();
                    assert!(!es.endpoints.is_empty());
                    slices += 1;
                }
                "Node" => {
                    let _: Node = serde_json::from_value(item.clone()).unwrap();
                }
                _ => {}
            }
        }
        assert_eq!(pods, p.pods.len());
        assert_eq!(slices, p.services.len());
        let rs = items
            .iter()
            .find(|i| i["kind"] == "ReplicaSet" && i["metadata"]["namespace"] == "taskapi")
            .unwrap();
        assert_eq!(rs["metadata"]["ownerReferences"][0]["kind"], "Deployment");
        assert_eq!(rs["metadata"]["ownerReferences"][0]["name"], "task-api");
    }
}
