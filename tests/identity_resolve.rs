//! Identity resolution as of the time a flow was seen: IP reuse, Services (numeric and named
//! targetPort, NodePort, LoadBalancer, headless, without selector), the API server, nodes,
//! hostNetwork pods through the cgroup id, deleted pods, restarts from SQLite, manifests.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::sync::Arc;
use std::time::Duration;

use apiserver::objects;
use chrono::{DateTime, Utc};
use flowpol::enrich::cgroup::{CgroupError, CgroupResolver, CgroupTree};
use flowpol::enrich::manifest_source::ManifestSource;
use flowpol::enrich::persist::IdentityDb;
use flowpol::enrich::state::{Object, ObjectKind, Stamped, StateUpdate};
use flowpol::enrich::{Enricher, Identity, run_source};
use flowpol_recommender::flow::{Endpoint, EndpointKind, FlowRecord, Protocol, TcpFlags, Verdict};
use serde_json::{Value, json};
use tokio::sync::watch;

const NODE_IP: &str = "172.18.0.2";

fn t(s: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_760_000_000 + s, 0).unwrap()
}

fn obj(v: Value) -> Object {
    let kind = ObjectKind::from_kind(v["kind"].as_str().unwrap()).unwrap();
    Object::from_json(kind, v).unwrap()
}

fn apply(id: &Identity, at: i64, v: Value) -> Vec<flowpol::enrich::timeline::Change> {
    id.apply(Stamped {
        at: t(at),
        update: StateUpdate::Apply(obj(v)),
    })
}

fn delete(id: &Identity, at: i64, v: Value) -> Vec<flowpol::enrich::timeline::Change> {
    id.apply(Stamped {
        at: t(at),
        update: StateUpdate::Delete(obj(v)),
    })
}

/// A full list of every kind at `at` (what a source sends first).
fn sync(id: &Identity, at: i64, all: Vec<Value>) -> Vec<flowpol::enrich::timeline::Change> {
    let objs: Vec<Object> = all.into_iter().map(obj).collect();
    let mut changes = Vec::new();
    for kind in ObjectKind::ALL {
        changes.extend(id.apply(Stamped {
            at: t(at),
            update: StateUpdate::Resync {
                kind,
                objects: objs.iter().filter(|o| o.kind() == kind).cloned().collect(),
                invalid: vec![],
            },
        }));
    }
    changes
}

fn flow(src: &str, sport: u16, dst: &str, dport: u16, at: i64, cgroup: Option<u64>) -> FlowRecord {
    FlowRecord {
        src: Endpoint::new(src.parse().unwrap(), sport),
        dst: Endpoint::new(dst.parse().unwrap(), dport),
        protocol: Protocol::Tcp,
        packets: 1,
        bytes: 60,
        reply_packets: 0,
        reply_bytes: 0,
        first_seen: t(at),
        last_seen: t(at),
        verdict: Verdict::Forwarded,
        drop_reason: None,
        tcp_flags: TcpFlags(TcpFlags::SYN),
        connections: 0,
        cgroup_id: cgroup,
        node: Some("node-a".into()),
    }
}

fn base() -> Vec<Value> {
    vec![
        objects::namespace("default"),
        objects::namespace("shop"),
        objects::node("node-a", NODE_IP),
        objects::replicaset("shop", "web"),
        objects::replicaset("shop", "client"),
        objects::deployment_pod(
            "shop",
            "client-5d8f9c7b6-c1",
            "c1c1c1c1-0000-4000-8000-000000000001",
            "10.244.0.2",
            "client",
        ),
    ]
}

fn enricher(id: &Arc<Identity>) -> Enricher {
    Enricher::new(id.clone(), None)
}

fn enriched(e: &Enricher, mut f: FlowRecord) -> FlowRecord {
    e.enrich(std::slice::from_mut(&mut f));
    f
}

#[test]
fn pod_ip_reuse_resolves_each_flow_to_the_pod_of_its_time() {
    let id = Identity::new();
    let mut all = base();
    all.push(objects::deployment_pod(
        "shop",
        "web-5d8f9c7b6-old",
        "aaaaaaaa-0000-4000-8000-000000000001",
        "10.244.0.5",
        "web",
    ));
    sync(&id, 0, all);
    delete(
        &id,
        100,
        objects::deployment_pod(
            "shop",
            "web-5d8f9c7b6-old",
            "aaaaaaaa-0000-4000-8000-000000000001",
            "10.244.0.5",
            "web",
        ),
    );
    apply(&id, 200, objects::replicaset("shop", "api"));
    apply(
        &id,
        200,
        objects::deployment_pod(
            "shop",
            "api-5d8f9c7b6-new",
            "bbbbbbbb-0000-4000-8000-000000000002",
            "10.244.0.5",
            "api",
        ),
    );
    let e = enricher(&id);
    let before = enriched(&e, flow("10.244.0.2", 40000, "10.244.0.5", 8080, 50, None));
    assert_eq!(before.dst.pod.as_deref(), Some("web-5d8f9c7b6-old"));
    assert_eq!(before.dst.workload.unwrap().to_string(), "Deployment/web");
    assert_eq!(before.src.pod.as_deref(), Some("client-5d8f9c7b6-c1"));
    let after = enriched(&e, flow("10.244.0.2", 40000, "10.244.0.5", 8080, 300, None));
    assert_eq!(after.dst.pod.as_deref(), Some("api-5d8f9c7b6-new"));
    assert_eq!(after.dst.workload.unwrap().to_string(), "Deployment/api");
    assert_eq!(after.dst.kind, Some(EndpointKind::Pod));
    // Between the old pod's deletion and the new pod's start nobody owned it.
    let gap = enriched(&e, flow("10.244.0.2", 40000, "10.244.0.5", 8080, 150, None));
    assert_eq!(gap.dst.kind, Some(EndpointKind::External));
    assert_eq!(gap.dst.pod, None);
}

fn web_backends() -> Vec<Value> {
    let mut all = base();
    all.push(objects::deployment_pod(
        "shop",
        "web-5d8f9c7b6-w1",
        "aaaaaaaa-0000-4000-8000-0000000000a1",
        "10.244.0.5",
        "web",
    ));
    all.push(objects::deployment_pod(
        "shop",
        "web-5d8f9c7b6-w2",
        "aaaaaaaa-0000-4000-8000-0000000000a2",
        "10.244.0.6",
        "web",
    ));
    all
}

/// The web pods behind Service `shop/web` (10.96.0.20:80 → targetPort 8080), with its slice.
fn web_behind_service() -> Vec<Value> {
    let mut all = web_backends();
    all.push(objects::service(
        "shop",
        "web",
        "10.96.0.20",
        80,
        json!(8080),
    ));
    all.push(objects::endpoint_slice(
        "shop",
        "web",
        &["10.244.0.5", "10.244.0.6"],
        8080,
    ));
    all
}

#[test]
fn service_port_80_resolves_to_the_backend_and_target_port_8080_numeric_or_named() {
    let id = Identity::new();
    // Numeric targetPort.
    let mut all = web_behind_service();
    // Named targetPort: the EndpointSlice port named `http` says 8080.
    let mut named = objects::service("shop", "web-named", "10.96.0.21", 80, json!("http"));
    named["spec"]["selector"] = json!({"app": "web"});
    all.push(named);
    all.push(objects::endpoint_slice(
        "shop",
        "web-named",
        &["10.244.0.5", "10.244.0.6"],
        8080,
    ));
    sync(&id, 0, all);
    let e = enricher(&id);
    for (vip, svc) in [("10.96.0.20", "shop/web"), ("10.96.0.21", "shop/web-named")] {
        let f = enriched(&e, flow("10.244.0.2", 40000, vip, 80, 10, None));
        assert_eq!(f.dst.service.as_deref(), Some(svc), "{vip}");
        assert_eq!(f.dst.service_port, Some(80), "{vip}");
        assert_eq!(
            f.dst.port, 8080,
            "{vip}: the pod's port after Service resolution"
        );
        assert_eq!(f.dst.kind, Some(EndpointKind::Pod), "{vip}");
        assert_eq!(f.dst.namespace.as_deref(), Some("shop"), "{vip}");
        assert_eq!(
            f.dst.workload.as_ref().map(|w| w.to_string()).as_deref(),
            Some("Deployment/web"),
            "{vip}"
        );
        assert_eq!(f.dst.labels.get("app").map(String::as_str), Some("web"));
        assert!(!f.dst.labels.contains_key("pod-template-hash"));
        assert_eq!(f.dst.ip.to_string(), vip, "the dialed address is kept");
        // JSON contract.
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["dst"]["service"], svc);
        assert_eq!(v["dst"]["workload"], "Deployment/web");
        assert_eq!(v["dst"]["port"], 8080);
        assert_eq!(v["dst"]["service_port"], 80);
        assert_eq!(v["src"]["workload"], "Deployment/client");
    }
    // A port the Service does not have: the Service is named, the port stays as dialed.
    let f = enriched(&e, flow("10.244.0.2", 40000, "10.96.0.20", 81, 10, None));
    assert_eq!(f.dst.service.as_deref(), Some("shop/web"));
    assert_eq!(f.dst.port, 81);
}

#[test]
fn nodeport_loadbalancer_headless_and_selectorless_services() {
    let id = Identity::new();
    let mut all = web_backends();
    let mut np = objects::service("shop", "web", "10.96.0.20", 80, json!(8080));
    np["spec"]["type"] = json!("LoadBalancer");
    np["spec"]["ports"][0]["nodePort"] = json!(30080);
    np["status"] = json!({"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}});
    all.push(np);
    all.push(objects::endpoint_slice(
        "shop",
        "web",
        &["10.244.0.5"],
        8080,
    ));
    // Headless.
    let mut db = objects::service("shop", "db", "None", 5432, json!(5432));
    db["spec"]["clusterIPs"] = json!(["None"]);
    all.push(db);
    all.push(objects::endpoint_slice("shop", "db", &["10.244.0.6"], 5432));
    // No selector; EndpointSlice written by hand pointing outside the cluster.
    let mut ext = objects::service("shop", "legacy-db", "10.96.0.40", 5432, json!(5432));
    ext["spec"].as_object_mut().unwrap().remove("selector");
    all.push(ext);
    let mut slice = objects::endpoint_slice("shop", "legacy-db", &["192.0.2.50"], 15432);
    slice["metadata"]["name"] = json!("legacy-db-manual");
    all.push(slice);
    sync(&id, 0, all);
    let e = enricher(&id);

    let f = enriched(&e, flow("10.244.0.2", 40000, NODE_IP, 30080, 10, None));
    assert_eq!(f.dst.service.as_deref(), Some("shop/web"), "NodePort");
    assert_eq!((f.dst.port, f.dst.service_port), (8080, Some(30080)));
    assert_eq!(f.dst.pod.as_deref(), Some("web-5d8f9c7b6-w1"));

    let f = enriched(&e, flow("10.244.0.2", 40000, "203.0.113.10", 80, 10, None));
    assert_eq!(
        f.dst.service.as_deref(),
        Some("shop/web"),
        "LoadBalancer IP"
    );
    assert_eq!(f.dst.port, 8080);

    let f = enriched(&e, flow("10.244.0.2", 40000, "10.244.0.6", 5432, 10, None));
    assert_eq!(f.dst.service.as_deref(), Some("shop/db"), "headless");
    assert_eq!(f.dst.pod.as_deref(), Some("web-5d8f9c7b6-w2"));
    assert_eq!(f.dst.service_port, None);

    let f = enriched(&e, flow("10.244.0.2", 40000, "10.96.0.40", 5432, 10, None));
    assert_eq!(
        f.dst.service.as_deref(),
        Some("shop/legacy-db"),
        "no selector"
    );
    assert_eq!(f.dst.kind, Some(EndpointKind::External));
    assert_eq!((f.dst.port, f.dst.service_port), (15432, Some(5432)));

    let f = enriched(&e, flow("10.244.0.2", 40000, "8.8.8.8", 53, 10, None));
    assert_eq!(f.dst.kind, Some(EndpointKind::External));
    assert_eq!(f.dst.service, None);

    // A node port nobody uses is the node.
    let f = enriched(&e, flow("10.244.0.2", 40000, NODE_IP, 10250, 10, None));
    assert_eq!(f.dst.kind, Some(EndpointKind::Node));
}

#[test]
fn the_api_server_by_service_and_by_endpoint() {
    let id = Identity::new();
    let mut all = base();
    let mut k = objects::service("default", "kubernetes", "10.96.0.1", 443, json!(6443));
    k["spec"]["ports"][0]["name"] = json!("https");
    k["spec"].as_object_mut().unwrap().remove("selector");
    all.push(k);
    let mut s = objects::endpoint_slice("default", "kubernetes", &[NODE_IP], 6443);
    s["ports"][0]["name"] = json!("https");
    all.push(s);
    sync(&id, 0, all);
    let e = enricher(&id);
    let f = enriched(&e, flow("10.244.0.2", 40000, "10.96.0.1", 443, 10, None));
    assert_eq!(f.dst.kind, Some(EndpointKind::APIServer));
    assert_eq!(f.dst.service.as_deref(), Some("default/kubernetes"));
    assert_eq!((f.dst.port, f.dst.service_port), (6443, Some(443)));
    let f = enriched(&e, flow("10.244.0.2", 40000, NODE_IP, 6443, 10, None));
    assert_eq!(f.dst.kind, Some(EndpointKind::APIServer));
    assert_eq!(f.dst.display_name(), format!("apiserver:{NODE_IP}"));
    let f = enriched(&e, flow("10.244.0.2", 40000, NODE_IP, 10250, 10, None));
    assert_eq!(f.dst.kind, Some(EndpointKind::Node));
}

struct FakeTree(Vec<(u64, String)>);

impl CgroupTree for FakeTree {
    fn walk(&self) -> Result<Vec<(u64, String)>, CgroupError> {
        Ok(self.0.clone())
    }
}

const EXPORTER_UID: &str = "eeeeeeee-0000-4000-8000-00000000000e";
const CLIENT_UID: &str = "c1c1c1c1-0000-4000-8000-000000000001";
const CID: &str = "4f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0";

fn host_network_setup() -> (Arc<Identity>, Enricher) {
    let id = Identity::new();
    let mut all = base();
    all.push(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "node-exporter-x1", "namespace": "shop", "uid": EXPORTER_UID,
                     "labels": {"app": "node-exporter", "controller-revision-hash": "7c9f",
                                "pod-template-generation": "1"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                          "name": "node-exporter", "uid": "ds-1", "controller": true}]},
        "spec": {"hostNetwork": true, "nodeName": "node-a", "containers": [{"name": "c"}]},
        "status": {"phase": "Running", "podIP": NODE_IP, "podIPs": [{"ip": NODE_IP}]}}));
    sync(&id, 0, all);
    let u = EXPORTER_UID.replace('-', "_");
    let c = CLIENT_UID.replace('-', "_");
    let tree = FakeTree(vec![
        (1, "/".into()),
        (5, "/system.slice/kubelet.service".into()),
        (
            777,
            format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{u}.slice/cri-containerd-{CID}.scope"
            ),
        ),
        (
            888,
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{c}.slice/crio-{CID}.scope"
            ),
        ),
    ]);
    let e = Enricher::new(id.clone(), Some(CgroupResolver::new(Box::new(tree))));
    (id, e)
}

#[test]
fn host_network_pod_is_named_by_its_cgroup_not_its_node_ip() {
    let (_id, e) = host_network_setup();
    let f = enriched(&e, flow(NODE_IP, 41000, "10.244.0.2", 8080, 10, Some(777)));
    assert_eq!(f.src.kind, Some(EndpointKind::Pod));
    assert_eq!(f.src.pod.as_deref(), Some("node-exporter-x1"));
    assert_eq!(
        f.src.workload.as_ref().map(|w| w.to_string()).as_deref(),
        Some("DaemonSet/node-exporter")
    );
    assert!(!f.src.labels.contains_key("controller-revision-hash"));
    assert!(!f.src.labels.contains_key("pod-template-generation"));
    assert_eq!(f.dst.pod.as_deref(), Some("client-5d8f9c7b6-c1"));
    // The same address from a non-pod cgroup (kubelet) is the node.
    let f = enriched(&e, flow(NODE_IP, 41000, "10.244.0.2", 8080, 10, Some(5)));
    assert_eq!(f.src.kind, Some(EndpointKind::Node));
    assert_eq!(f.src.pod, None);
}

#[test]
fn kubelet_probe_from_the_node_ip_to_a_pod() {
    let (_id, e) = host_network_setup();
    // Seen at the pod's socket (its cgroup), sent by kubelet from the node address.
    let f = enriched(&e, flow(NODE_IP, 52000, "10.244.0.2", 8080, 10, Some(888)));
    assert_eq!(f.src.kind, Some(EndpointKind::Node));
    assert_eq!(f.src.display_name(), format!("node:{NODE_IP}"));
    assert_eq!(f.dst.kind, Some(EndpointKind::Pod));
    assert_eq!(f.dst.pod.as_deref(), Some("client-5d8f9c7b6-c1"));
    assert_eq!(f.dst.display_name(), "shop/client");
}

#[tokio::test]
async fn a_pod_deleted_before_the_query_resolves_also_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flowpol.db");
    let db = IdentityDb::open(&path).await.unwrap();
    let pod = objects::deployment_pod(
        "shop",
        "web-5d8f9c7b6-gone",
        "aaaaaaaa-0000-4000-8000-000000000009",
        "10.244.0.9",
        "web",
    );
    {
        let id = Identity::new();
        let mut all = base();
        all.push(pod.clone());
        db.write(&sync(&id, 0, all)).await.unwrap();
        db.write(&delete(&id, 100, pod.clone())).await.unwrap();
        // Queried after the deletion, about a flow from before it.
        let f = enriched(
            &enricher(&id),
            flow("10.244.0.2", 40000, "10.244.0.9", 8080, 50, None),
        );
        assert_eq!(f.dst.pod.as_deref(), Some("web-5d8f9c7b6-gone"));
    }
    // A new process: everything comes back from SQLite.
    let db = IdentityDb::open(&path).await.unwrap();
    let tl = db.load(0).await.unwrap();
    assert!(tl.len() >= 3, "intervals read back: {}", tl.len());
    let id = Arc::new(Identity::with_timeline(tl));
    let e = enricher(&id);
    let f = enriched(&e, flow("10.244.0.2", 40000, "10.244.0.9", 8080, 50, None));
    assert_eq!(f.dst.pod.as_deref(), Some("web-5d8f9c7b6-gone"));
    assert_eq!(f.dst.workload.unwrap().to_string(), "Deployment/web");
    assert_eq!(f.src.pod.as_deref(), Some("client-5d8f9c7b6-c1"));
    // The client pod vanished while flowpol was down: the first full list ends its interval.
    let mut without_client = base();
    without_client.pop();
    db.write(&sync(&id, 500, without_client)).await.unwrap();
    let f = enriched(&e, flow("10.244.0.2", 40000, "8.8.8.8", 53, 400, None));
    assert_eq!(f.src.pod.as_deref(), Some("client-5d8f9c7b6-c1"));
    let f = enriched(&e, flow("10.244.0.2", 40000, "8.8.8.8", 53, 600, None));
    assert_eq!(f.src.kind, Some(EndpointKind::External));
    // And that end was persisted.
    let again = Identity::with_timeline(db.load(0).await.unwrap());
    let mut f = flow("10.244.0.2", 40000, "8.8.8.8", 53, 600, None);
    again.resolve_endpoint(&mut f.src, Protocol::Tcp, t(600), false);
    assert_eq!(f.src.kind, Some(EndpointKind::External));
    // Retention: pruning drops the intervals that ended long ago.
    assert!(db.prune(t(10_000).timestamp_millis()).await.unwrap() >= 1);
    assert!(again.prune(t(10_000)) >= 1);
}

#[test]
fn workloads_and_the_labels_a_policy_selects_on() {
    let id = Identity::new();
    let mut all = base();
    // Job owned by a CronJob.
    all.push(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "backup-29000000", "namespace": "shop", "uid": "job-1",
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "CronJob", "name": "backup",
                                          "uid": "cj-1", "controller": true}]},
        "spec": {"template": {"spec": {"containers": []}}}}));
    all.push(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "backup-29000000-x", "namespace": "shop", "uid": "dddddddd-0000-4000-8000-000000000001",
                     "labels": {"app": "backup", "job-name": "backup-29000000",
                                "batch.kubernetes.io/controller-uid": "job-1", "controller-uid": "job-1"},
                     "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": "backup-29000000",
                                          "uid": "job-1", "controller": true}]},
        "status": {"phase": "Running", "podIP": "10.244.0.30"}}));
    // StatefulSet.
    all.push(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "db-0", "namespace": "shop", "uid": "dddddddd-0000-4000-8000-000000000002",
                     "labels": {"app": "db", "controller-revision-hash": "db-6b8f",
                                "statefulset.kubernetes.io/pod-name": "db-0", "apps.kubernetes.io/pod-index": "0"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                          "uid": "sts-1", "controller": true}]},
        "status": {"phase": "Running", "podIP": "10.244.0.31"}}));
    // ReplicaSet not known (e.g. manifests without it): named after the Deployment anyway.
    all.push(objects::deployment_pod(
        "shop",
        "cart-5d8f9c7b6-z",
        "dddddddd-0000-4000-8000-000000000003",
        "10.244.0.32",
        "cart",
    ));
    // A finished Job pod gives its IP back.
    all.push(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "done", "namespace": "shop", "uid": "dddddddd-0000-4000-8000-000000000004"},
        "status": {"phase": "Succeeded", "podIP": "10.244.0.33"}}));
    sync(&id, 0, all);
    let e = enricher(&id);
    let at = |ip: &str| enriched(&e, flow("10.244.0.2", 40000, ip, 80, 10, None)).dst;
    let job = at("10.244.0.30");
    assert_eq!(job.workload.unwrap().to_string(), "CronJob/backup");
    assert_eq!(
        job.labels.into_iter().collect::<Vec<_>>(),
        vec![("app".to_string(), "backup".to_string())]
    );
    let db = at("10.244.0.31");
    assert_eq!(db.workload.unwrap().to_string(), "StatefulSet/db");
    assert_eq!(db.labels.keys().collect::<Vec<_>>(), vec!["app"]);
    let cart = at("10.244.0.32");
    assert_eq!(cart.workload.unwrap().to_string(), "Deployment/cart");
    let bare = at("10.244.0.33");
    assert_eq!(bare.kind, Some(EndpointKind::External));
    // The Deployment's selector without pod-template-hash, from its ReplicaSet.
    let uid = "c1c1c1c1-0000-4000-8000-000000000001";
    let client = id.pod_by_uid(uid, t(10)).unwrap();
    assert_eq!(
        client.selector.iter().collect::<Vec<_>>(),
        vec![(&"app".to_string(), &"client".to_string())]
    );
    // Flow records carry that selector next to the labels: `src.selector` in JSON.
    let f = enriched(&e, flow("10.244.0.2", 40000, "10.244.0.31", 80, 10, None));
    assert_eq!(f.src.selector, client.selector.as_ref().clone());
    let v = serde_json::to_value(&f).unwrap();
    assert_eq!(v["src"]["selector"], json!({"app": "client"}), "{v:#}");
    // A controller whose object is not watched (StatefulSet): its pods' stable labels.
    assert_eq!(v["dst"]["selector"], json!({"app": "db"}), "{v:#}");
    // An address no pod holds (the finished Job pod gave it back) has none.
    let bare = enriched(&e, flow("10.244.0.2", 40000, "10.244.0.33", 80, 10, None));
    assert!(bare.dst.selector.is_empty(), "{:?}", bare.dst);
}

#[tokio::test]
async fn manifests_source_keeps_the_last_good_state_when_a_file_goes_bad() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.yaml");
    let docs: Vec<String> = base()
        .into_iter()
        .map(|v| serde_json::to_string(&v).unwrap())
        .collect();
    std::fs::write(&file, docs.join("\n---\n")).unwrap();
    let source = ManifestSource::new(vec![dir.path().to_path_buf()])
        .unwrap()
        .with_poll(Some(Duration::from_millis(50)));
    let id = Identity::new();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run_source(
        id.clone(),
        Box::new(source),
        None,
        Duration::from_secs(3600),
        rx,
    ));
    tokio::time::timeout(Duration::from_secs(10), id.wait_ready())
        .await
        .expect("ready after reading the manifests");
    let e = enricher(&id);
    let now = Utc::now().timestamp() - 1_760_000_000;
    let f = enriched(&e, flow("10.244.0.2", 40000, NODE_IP, 22, now, None));
    assert_eq!(f.src.workload.unwrap().to_string(), "Deployment/client");
    assert_eq!(f.dst.kind, Some(EndpointKind::Node));
    // The file goes bad: named in the problems, and the state stays.
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec: {containers: 7}\n",
    )
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !id.problems().iter().any(|p| p.contains("cluster.yaml")) {
        assert!(
            std::time::Instant::now() < deadline,
            "bad file not reported: {:?}",
            id.problems()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        id.problems()
            .iter()
            .any(|p| p.contains("Pod x") && p.contains("spec.containers")),
        "{:?}",
        id.problems()
    );
    let f = enriched(&e, flow("10.244.0.2", 40000, NODE_IP, 22, now + 60, None));
    assert_eq!(f.src.pod.as_deref(), Some("client-5d8f9c7b6-c1"));
    stop.send_replace(true);
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[test]
fn a_bad_manifest_at_start_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(&file, "kind: Service\napiVersion: v1\nmetadata: {name: s\n").unwrap();
    let err = ManifestSource::new(vec![file.clone()])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("broken.yaml"), "{err}");
}

#[test]
fn a_pod_recreated_under_the_same_name_in_a_relist_replaces_the_old_one() {
    let id = Identity::new();
    let mut all = base();
    let sts = |uid: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "db-0", "namespace": "shop", "uid": uid, "labels": {"app": "db"},
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "db",
                                              "uid": "sts-1", "controller": true}]},
            "status": {"phase": "Running", "podIP": ip}})
    };
    all.push(sts("dddddddd-0000-4000-8000-0000000000a1", "10.244.0.40"));
    sync(&id, 0, all.clone());
    // A re-list (after 410 Gone) shows db-0 with a new UID and a new IP.
    all.pop();
    all.push(sts("dddddddd-0000-4000-8000-0000000000a2", "10.244.0.41"));
    sync(&id, 100, all);
    let e = enricher(&id);
    let old_ip_later = enriched(&e, flow("10.244.0.2", 1, "10.244.0.40", 5432, 200, None));
    assert_eq!(old_ip_later.dst.kind, Some(EndpointKind::External));
    let old_ip_before = enriched(&e, flow("10.244.0.2", 1, "10.244.0.40", 5432, 50, None));
    assert_eq!(old_ip_before.dst.pod.as_deref(), Some("db-0"));
    let new_ip = enriched(&e, flow("10.244.0.2", 1, "10.244.0.41", 5432, 200, None));
    assert_eq!(new_ip.dst.pod.as_deref(), Some("db-0"));
    assert!(
        id.pod_by_uid("dddddddd-0000-4000-8000-0000000000a1", t(200))
            .is_none()
    );
    assert!(
        id.pod_by_uid("dddddddd-0000-4000-8000-0000000000a1", t(50))
            .is_some()
    );
    assert_eq!(id.pod_count(), 2, "client and the new db-0");
}

#[test]
fn a_drop_record_without_a_socket_borrows_the_local_pod_of_its_connection() {
    let (_id, e) = host_network_setup();
    let socket = flow(NODE_IP, 41000, "10.244.0.2", 8080, 10, Some(777));
    let mut drop = flow(NODE_IP, 41000, "10.244.0.2", 8080, 11, None);
    drop.verdict = Verdict::Dropped;
    drop.drop_reason = Some("QUEUE_PURGE".into());
    // Drop first in the batch: socket records are resolved first anyway.
    let mut batch = vec![drop, socket];
    e.enrich(&mut batch);
    assert_eq!(batch[1].src.pod.as_deref(), Some("node-exporter-x1"));
    assert_eq!(batch[0].src.pod.as_deref(), Some("node-exporter-x1"));
    // And in a later drain.
    let late = enriched(&e, flow(NODE_IP, 41000, "10.244.0.2", 8080, 12, None));
    assert_eq!(late.src.pod.as_deref(), Some("node-exporter-x1"));
    // Another connection from the node address without a socket record: the node.
    let other = enriched(&e, flow(NODE_IP, 41001, "10.244.0.2", 8080, 12, None));
    assert_eq!(other.src.kind, Some(EndpointKind::Node));
}

#[test]
fn dual_stack_pods_and_services_resolve_over_ipv6_as_over_ipv4() {
    let id = Identity::new();
    let mut all = base();
    // The client and two web backends each have an IPv4 and an IPv6 address.
    all.retain(|o| o["kind"] != "Pod");
    for (name, uid, v4, v6, app) in [
        (
            "client-5d8f9c7b6-c1",
            "c1c1c1c1-0000-4000-8000-000000000001",
            "10.244.0.2",
            "fd00:10:244::2",
            "client",
        ),
        (
            "web-5d8f9c7b6-w1",
            "aaaaaaaa-0000-4000-8000-0000000000a1",
            "10.244.0.5",
            "fd00:10:244::5",
            "web",
        ),
        (
            "web-5d8f9c7b6-w2",
            "aaaaaaaa-0000-4000-8000-0000000000a2",
            "10.244.0.6",
            "fd00:10:244::6",
            "web",
        ),
    ] {
        let mut pod = objects::deployment_pod("shop", name, uid, v4, app);
        pod["status"]["podIPs"] = json!([{"ip": v4}, {"ip": v6}]);
        all.push(pod);
    }
    let mut svc = objects::service("shop", "web", "10.96.0.20", 80, json!(8080));
    svc["spec"]["clusterIPs"] = json!(["10.96.0.20", "fd00:10:96::20"]);
    svc["spec"]["ipFamilies"] = json!(["IPv4", "IPv6"]);
    all.push(svc);
    all.push(objects::endpoint_slice(
        "shop",
        "web",
        &["10.244.0.5", "10.244.0.6"],
        8080,
    ));
    let mut slice6 =
        objects::endpoint_slice("shop", "web", &["fd00:10:244::5", "fd00:10:244::6"], 8080);
    slice6["metadata"]["name"] = json!("web-v6");
    slice6["addressType"] = json!("IPv6");
    all.push(slice6);
    sync(&id, 0, all);
    let e = enricher(&id);

    // Pod to pod over IPv6: both ends named, as over IPv4.
    for (src, dst) in [
        ("10.244.0.2", "10.244.0.5"),
        ("fd00:10:244::2", "fd00:10:244::5"),
    ] {
        let f = enriched(&e, flow(src, 40000, dst, 8080, 10, None));
        assert_eq!(f.src.pod.as_deref(), Some("client-5d8f9c7b6-c1"), "{src}");
        assert_eq!(f.dst.pod.as_deref(), Some("web-5d8f9c7b6-w1"), "{dst}");
        assert_eq!(
            f.dst.workload.map(|w| w.to_string()).as_deref(),
            Some("Deployment/web")
        );
        assert_eq!(f.dst.kind, Some(EndpointKind::Pod));
    }
    // Through the Service's IPv6 ClusterIP: the Service, then the pod port.
    let f = enriched(
        &e,
        flow("fd00:10:244::2", 40000, "fd00:10:96::20", 80, 10, None),
    );
    assert_eq!(f.dst.service.as_deref(), Some("shop/web"));
    assert_eq!((f.dst.port, f.dst.service_port), (8080, Some(80)));
    assert_eq!(f.dst.namespace.as_deref(), Some("shop"));
    assert_eq!(
        f.dst.workload.map(|w| w.to_string()).as_deref(),
        Some("Deployment/web")
    );
    assert_eq!(f.dst.ip.to_string(), "fd00:10:96::20");
    // An IPv6 address nobody owns stays external.
    let f = enriched(
        &e,
        flow("fd00:10:244::2", 40000, "2001:db8::7", 443, 10, None),
    );
    assert_eq!(f.dst.kind, Some(EndpointKind::External));
    assert_eq!(f.src.pod.as_deref(), Some("client-5d8f9c7b6-c1"));
}

/// A connection from a client pod to a Service whose backend shares the node: the client's
/// socket records it to the Service address, the backend's socket to the pod address. The
/// agent keeps the client's view only (it names the Service, the backend and the pod port).
#[cfg(feature = "agent")]
#[test]
fn a_local_connection_through_a_service_is_kept_once() {
    use flowpol::capture::assemble::CompactFlow;
    let id = Identity::new();
    sync(&id, 0, web_behind_service());
    let e = enricher(&id);
    let view = |sport: u16, dst: &str, dport: u16, verdict: Verdict| CompactFlow {
        src: ("10.244.0.2".parse().unwrap(), sport),
        dst: (dst.parse().unwrap(), dport),
        protocol: Protocol::Tcp,
        packets: 6,
        bytes: 500,
        reply_packets: 5,
        reply_bytes: 900,
        first_seen: t(10),
        last_seen: t(11),
        verdict,
        drop_reason: None,
        tcp_flags: TcpFlags::SYN | TcpFlags::SYN_ACK,
        connections: 0,
        cgroup_id: Some(7),
    };
    let flows = vec![
        // Client's view and backend's view of one connection.
        view(40000, "10.96.0.20", 80, Verdict::Forwarded),
        view(40000, "10.244.0.6", 8080, Verdict::Forwarded),
        // The same client port to a pod the Service does not send to: another connection.
        view(40000, "10.244.0.7", 8080, Verdict::Forwarded),
        // Another client port straight to a backend: another connection.
        view(40001, "10.244.0.5", 8080, Verdict::Forwarded),
        // The backend's port but not the Service's target port.
        view(40000, "10.244.0.5", 9090, Verdict::Forwarded),
    ];
    let kept = e
        .fold_service_views(&flows)
        .expect("the backend's view is folded");
    let kept_dsts: Vec<String> = kept
        .iter()
        .map(|f| format!("{}:{}", f.dst.0, f.dst.1))
        .collect();
    assert_eq!(
        kept_dsts,
        [
            "10.96.0.20:80",
            "10.244.0.7:8080",
            "10.244.0.5:8080",
            "10.244.0.5:9090"
        ]
    );
    // The kept view names the Service, the backend workload and its pod port once enriched.
    let client = enriched(&e, kept[0].to_record());
    assert_eq!(client.dst.service.as_deref(), Some("shop/web"));
    assert_eq!(client.dst.port, 8080);
    assert_eq!(client.packets, 6, "counted once, from the client's socket");
    // Nothing to fold: no copy.
    assert!(e.fold_service_views(&flows[2..]).is_none());
    // A dropped view is evidence of its own, never folded.
    let dropped = vec![
        view(40000, "10.96.0.20", 80, Verdict::Forwarded),
        view(40000, "10.244.0.6", 8080, Verdict::Dropped),
    ];
    assert!(e.fold_service_views(&dropped).is_none());
}
