//! recommend / audit / diff / drops on the task-api scenario's manifests with flows as the
//! agent records them (identity resolved, Service traffic at the pod port).
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use flowpol_recommender::audit::{audit, diff};
use flowpol_recommender::drops::drops;
use flowpol_recommender::flow::{
    Endpoint, EndpointKind, FlowRecord, Protocol, TcpFlags, Verdict, WorkloadRef,
};
use flowpol_recommender::manifest::{self, LoadedObject, Object};
use flowpol_recommender::model::Cluster;
use flowpol_recommender::observe::{Observation, observe};
use flowpol_recommender::recommend::{
    Aggregate, Options, PolicyPlan, Recommendation, cluster_with, external_block, recommend, verify,
};
use serde_json::Value;

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

fn t(s: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
        + Duration::seconds(s)
}

fn pod(ip: &str, ns: &str, kind: &str, name: &str, labels: &[(&str, &str)]) -> Endpoint {
    let mut e = Endpoint::new(ip.parse().unwrap(), 0);
    e.kind = Some(EndpointKind::Pod);
    e.namespace = Some(ns.into());
    e.pod = Some(format!("{name}-0"));
    e.workload = Some(WorkloadRef {
        kind: kind.into(),
        name: name.into(),
    });
    e.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    e.labels.insert("pod-template-hash".into(), "abc".into());
    e
}

fn node(ip: &str) -> Endpoint {
    let mut e = Endpoint::new(ip.parse().unwrap(), 0);
    e.kind = Some(EndpointKind::Node);
    e
}

fn flow(
    src: &Endpoint,
    dst: &Endpoint,
    port: u16,
    protocol: Protocol,
    at: i64,
    verdict: Verdict,
) -> FlowRecord {
    let mut src = src.clone();
    src.port = 40000 + at as u16;
    let mut dst = dst.clone();
    dst.port = port;
    FlowRecord {
        src,
        dst,
        protocol,
        packets: 3,
        bytes: 200,
        reply_packets: if verdict == Verdict::Forwarded { 2 } else { 0 },
        reply_bytes: 100,
        first_seen: t(at),
        last_seen: t(at + 1),
        drop_reason: (verdict == Verdict::Dropped).then(|| "NETFILTER_DROP".to_string()),
        verdict,
        tcp_flags: TcpFlags(TcpFlags::SYN),
        connections: 0,
        cgroup_id: None,
        node: Some("node-1".into()),
    }
}

struct Ends {
    gateway: Endpoint,
    api: Endpoint,
    postgres: Endpoint,
    redis: Endpoint,
    dns: Endpoint,
    node: Endpoint,
}

fn ends() -> Ends {
    Ends {
        gateway: pod(
            "10.244.0.5",
            "gateway",
            "Deployment",
            "gateway",
            &[("app", "gateway"), ("tier", "edge")],
        ),
        api: pod(
            "10.244.0.6",
            "taskapi",
            "Deployment",
            "task-api",
            &[("app", "task-api"), ("tier", "backend")],
        ),
        postgres: pod(
            "10.244.0.7",
            "postgres",
            "StatefulSet",
            "postgres",
            &[("app", "postgres")],
        ),
        redis: pod(
            "10.244.0.8",
            "redis",
            "Deployment",
            "redis",
            &[("app", "redis")],
        ),
        dns: pod(
            "10.244.0.2",
            "kube-system",
            "Deployment",
            "coredns",
            &[("k8s-app", "kube-dns")],
        ),
        node: node("172.18.0.2"),
    }
}

/// The traffic of the task-api scenario, two hours of it.
fn task_api_flows() -> Vec<FlowRecord> {
    let e = ends();
    let mut flows = Vec::new();
    for i in 0..4 {
        let mut to_api = flow(
            &e.gateway,
            &e.api,
            8080,
            Protocol::Tcp,
            i * 1800,
            Verdict::Forwarded,
        );
        to_api.dst.service = Some("taskapi/task-api".into());
        to_api.dst.service_port = Some(80);
        flows.push(to_api);
        flows.push(flow(
            &e.gateway,
            &e.dns,
            53,
            Protocol::Udp,
            i * 1800,
            Verdict::Forwarded,
        ));
        flows.push(flow(
            &e.api,
            &e.dns,
            53,
            Protocol::Udp,
            i * 1800 + 1,
            Verdict::Forwarded,
        ));
        flows.push(flow(
            &e.api,
            &e.postgres,
            5432,
            Protocol::Tcp,
            i * 1800 + 2,
            Verdict::Forwarded,
        ));
        flows.push(flow(
            &e.api,
            &e.redis,
            6379,
            Protocol::Tcp,
            i * 1800 + 3,
            Verdict::Forwarded,
        ));
        flows.push(flow(
            &e.node,
            &e.api,
            8080,
            Protocol::Tcp,
            i * 1800 + 4,
            Verdict::Forwarded,
        ));
        flows.push(flow(
            &e.node,
            &e.postgres,
            5432,
            Protocol::Tcp,
            i * 1800 + 5,
            Verdict::Forwarded,
        ));
    }
    flows
}

fn task_api_objects() -> Vec<LoadedObject> {
    manifest::load_paths(&[
        examples().join("task-api").join("namespaces.yaml"),
        examples().join("task-api").join("gateway.yaml"),
        examples().join("task-api").join("task-api.yaml"),
        examples().join("task-api").join("postgres.yaml"),
        examples().join("task-api").join("redis.yaml"),
    ])
    .unwrap()
}

fn recommend_task_api(opts: &Options) -> (Vec<LoadedObject>, Observation, Recommendation) {
    let objects = task_api_objects();
    let cluster = Cluster::from_objects(objects.clone()).unwrap();
    let obs = observe(&task_api_flows(), &cluster);
    let rec = recommend(&obs, &cluster, opts);
    (objects, obs, rec)
}

fn policy<'r>(rec: &'r Recommendation, ns: &str, name: &str) -> Value {
    let p: &'r PolicyPlan = rec
        .policies
        .iter()
        .find(|p| p.namespace == ns && p.name == name)
        .unwrap_or_else(|| {
            panic!(
                "no policy {ns}/{name} in {:?}",
                rec.policies
                    .iter()
                    .map(|p| format!("{}/{}", p.namespace, p.name))
                    .collect::<Vec<_>>()
            )
        });
    p.to_json()
}

#[test]
fn every_namespace_gets_default_deny_first_and_dns_as_one_and_peer() {
    let (_, _, rec) = recommend_task_api(&Options::default());
    let namespaces: BTreeSet<&str> = rec.policies.iter().map(|p| p.namespace.as_str()).collect();
    assert_eq!(
        namespaces,
        ["gateway", "kube-system", "postgres", "redis", "taskapi"].into()
    );
    for ns in namespaces {
        let first = rec.policies.iter().find(|p| p.namespace == ns).unwrap();
        assert_eq!(first.name, "default-deny", "{ns}");
        let deny = policy(&rec, ns, "default-deny");
        assert_eq!(deny["spec"]["podSelector"], serde_json::json!({}));
        assert_eq!(
            deny["spec"]["policyTypes"],
            serde_json::json!(["Ingress", "Egress"])
        );
        assert!(deny["spec"].get("ingress").is_none());
        let dns = policy(&rec, ns, "allow-dns");
        let peer = &dns["spec"]["egress"][0]["to"];
        assert_eq!(peer.as_array().unwrap().len(), 1, "one AND peer: {peer}");
        assert_eq!(
            peer[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "kube-system"
        );
        assert_eq!(peer[0]["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
        assert_eq!(
            dns["spec"]["egress"][0]["ports"],
            serde_json::json!([{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}])
        );
    }
}

#[test]
fn kube_dns_answers_every_pod_not_only_the_clients_seen() {
    let (_, _, rec) = recommend_task_api(&Options::default());
    let dns = policy(&rec, "kube-system", "allow-coredns");
    assert_eq!(
        dns["spec"]["ingress"],
        serde_json::json!([{"from": [{"namespaceSelector": {}}],
            "ports": [{"protocol": "TCP", "port": 53}, {"protocol": "UDP", "port": 53}]}])
    );
}

#[test]
fn workload_policy_uses_pod_ports_selector_labels_and_and_peers() {
    let (_, _, rec) = recommend_task_api(&Options::default());
    let api = policy(&rec, "taskapi", "allow-task-api");
    // The Deployment's spec.selector, not every template label.
    assert_eq!(
        api["spec"]["podSelector"],
        serde_json::json!({"matchLabels": {"app": "task-api"}})
    );
    let ingress = api["spec"]["ingress"].as_array().unwrap();
    assert_eq!(ingress.len(), 2, "{ingress:?}");
    let from_gateway = ingress
        .iter()
        .find(|r| r["from"][0].get("namespaceSelector").is_some())
        .unwrap();
    assert_eq!(from_gateway["from"].as_array().unwrap().len(), 1);
    assert_eq!(
        from_gateway["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "gateway"
    );
    assert_eq!(
        from_gateway["from"][0]["podSelector"]["matchLabels"],
        serde_json::json!({"app": "gateway"})
    );
    // Pod port 8080 (the Service's port 80 never appears), protocol stated.
    assert_eq!(
        from_gateway["ports"],
        serde_json::json!([{"protocol": "TCP", "port": 8080}])
    );
    let from_node = ingress
        .iter()
        .find(|r| r["from"][0].get("ipBlock").is_some())
        .unwrap();
    assert_eq!(from_node["from"][0]["ipBlock"]["cidr"], "172.18.0.2/32");
    let egress = api["spec"]["egress"].as_array().unwrap();
    let ports: BTreeSet<u64> = egress
        .iter()
        .map(|r| r["ports"][0]["port"].as_u64().unwrap())
        .collect();
    // DNS is the namespace's allow-dns policy's job.
    assert_eq!(ports, [5432, 6379].into());
    let annotations = &api["metadata"]["annotations"];
    assert!(
        annotations["flowpol.io/evidence"]
            .as_str()
            .unwrap()
            .contains("first seen 2026-11-21T10:00:00Z"),
        "{annotations}"
    );
    assert_eq!(annotations["flowpol.io/observed-for"], "1h30m");
    let text = serde_json::to_string(&rec.policies.iter().map(|p| p.to_json()).collect::<Vec<_>>())
        .unwrap();
    assert!(
        !text.contains("\"port\":80}"),
        "a Service port leaked: {text}"
    );
}

#[test]
fn the_engine_allows_every_observed_flow_and_nothing_else() {
    let (objects, obs, rec) = recommend_task_api(&Options::default());
    let v = verify(&objects, &obs, &rec).unwrap();
    assert!(v.denied.is_empty(), "{:?}", v.denied);
    assert!(v.unverifiable.is_empty(), "{:?}", v.unverifiable);
    assert!(v.edges_checked >= 6);
    assert_eq!(v.extra_pairs, 0, "{:?}", v.extra);
}

#[test]
fn brief_observation_and_unobserved_workloads_are_warned_about() {
    let objects = task_api_objects();
    let cluster = Cluster::from_objects(objects).unwrap();
    let flows: Vec<FlowRecord> = task_api_flows()
        .into_iter()
        .filter(|f| f.dst.namespace.as_deref() != Some("redis"))
        .filter(|f| f.first_seen < t(60))
        .collect();
    let obs = observe(&flows, &cluster);
    let rec = recommend(
        &obs,
        &cluster,
        &Options {
            namespaces: Some(["taskapi".to_string(), "redis".to_string()].into()),
            ..Options::default()
        },
    );
    let all = rec.warnings.join("\n");
    assert!(
        all.contains("taskapi/task-api[Deployment] was observed for only"),
        "{all}"
    );
    assert!(
        all.contains("redis/redis[Deployment] was never observed"),
        "{all}"
    );
    // Only the namespaces asked for.
    assert!(
        rec.policies
            .iter()
            .all(|p| p.namespace == "taskapi" || p.namespace == "redis")
    );
}

#[test]
fn external_addresses_are_hosts_unless_aggregated_with_private_ranges_excepted() {
    let ip: IpAddr = "198.51.100.10".parse().unwrap();
    assert_eq!(external_block(ip, None).0.to_string(), "198.51.100.10/32");
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    assert_eq!(external_block(v6, None).0.to_string(), "2001:db8::1/128");
    let agg = Aggregate::parse("24").unwrap();
    let (cidr, except) = external_block(ip, Some(agg));
    assert_eq!(cidr.to_string(), "198.51.100.0/24");
    assert!(except.is_empty());
    let (cidr, except) = external_block(ip, Some(Aggregate::parse("0").unwrap()));
    assert_eq!(cidr.to_string(), "0.0.0.0/0");
    let except: Vec<String> = except.iter().map(ToString::to_string).collect();
    assert_eq!(except, ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]);
    assert!(Aggregate::parse("33").is_err());
    assert!(Aggregate::parse("24,129").is_err());
    assert_eq!(Aggregate::parse("16,48").unwrap().v6, 48);

    // In a policy: egress to the outside address, verified.
    let objects = task_api_objects();
    let cluster = Cluster::from_objects(objects.clone()).unwrap();
    let e = ends();
    let mut outside = Endpoint::new(ip, 0);
    outside.kind = Some(EndpointKind::External);
    let mut flows = task_api_flows();
    flows.push(flow(
        &e.api,
        &outside,
        443,
        Protocol::Tcp,
        10,
        Verdict::Forwarded,
    ));
    let obs = observe(&flows, &cluster);
    let rec = recommend(
        &obs,
        &cluster,
        &Options {
            aggregate_external: Some(agg),
            ..Options::default()
        },
    );
    let api = policy(&rec, "taskapi", "allow-task-api");
    let cidrs: Vec<&str> = api["spec"]["egress"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["to"][0]["ipBlock"]["cidr"].as_str())
        .collect();
    assert_eq!(cidrs, ["198.51.100.0/24"]);
    let v = verify(&objects, &obs, &rec).unwrap();
    assert!(v.denied.is_empty(), "{:?}", v.denied);
}

#[test]
fn statefulset_peers_and_host_network_peers() {
    let text = r#"
apiVersion: v1
kind: Node
metadata: {name: node-1}
status:
  addresses: [{type: InternalIP, address: 172.18.0.2}, {type: Hostname, address: node-1}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: etcd, namespace: kv}
spec:
  selector: {matchLabels: {app: etcd}}
  template:
    metadata: {labels: {app: etcd, release: r1}}
    spec: {containers: [{name: etcd, ports: [{containerPort: 2380}]}]}
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: node-agent, namespace: kv}
spec:
  selector: {matchLabels: {app: node-agent}}
  template:
    metadata: {labels: {app: node-agent}}
    spec: {hostNetwork: true, containers: [{name: a}]}
"#;
    let objects = manifest::parse_str(Path::new("kv.yaml"), text).unwrap();
    let cluster = Cluster::from_objects(objects.clone()).unwrap();
    assert_eq!(
        cluster.nodes[0].addresses,
        ["172.18.0.2".parse::<IpAddr>().unwrap()]
    );
    let etcd0 = pod(
        "10.244.1.1",
        "kv",
        "StatefulSet",
        "etcd",
        &[("app", "etcd"), ("release", "r1")],
    );
    let etcd1 = pod(
        "10.244.1.2",
        "kv",
        "StatefulSet",
        "etcd",
        &[("app", "etcd"), ("release", "r1")],
    );
    let agent = pod(
        "172.18.0.2",
        "kv",
        "DaemonSet",
        "node-agent",
        &[("app", "node-agent")],
    );
    let flows = vec![
        flow(&etcd0, &etcd1, 2380, Protocol::Tcp, 0, Verdict::Forwarded),
        flow(&agent, &etcd0, 2380, Protocol::Tcp, 5, Verdict::Forwarded),
    ];
    let obs = observe(&flows, &cluster);
    let rec = recommend(&obs, &cluster, &Options::default());
    let etcd = policy(&rec, "kv", "allow-etcd");
    let peer = serde_json::json!([{"podSelector": {"matchLabels": {"app": "etcd"}}}]);
    assert!(
        etcd["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["from"] == peer),
        "{etcd}"
    );
    assert_eq!(etcd["spec"]["egress"][0]["to"], peer);
    assert!(
        etcd["spec"]["ingress"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["from"][0]["ipBlock"]["cidr"] == "172.18.0.2/32"),
        "hostNetwork peer by node address: {etcd}"
    );
    assert!(
        rec.warnings
            .iter()
            .any(|w| w.contains("node-agent") && w.contains("hostNetwork"))
    );
    assert!(!rec.policies.iter().any(|p| p.name == "allow-node-agent"));
    let v = verify(&objects, &obs, &rec).unwrap();
    assert!(v.denied.is_empty(), "{:?}", v.denied);
}

#[test]
fn cilium_format_has_the_same_rules() {
    let (_, _, rec) = recommend_task_api(&Options::default());
    let p = rec
        .policies
        .iter()
        .find(|p| p.name == "allow-task-api")
        .unwrap()
        .to_cilium_json();
    assert_eq!(p["apiVersion"], "cilium.io/v2");
    assert_eq!(p["kind"], "CiliumNetworkPolicy");
    assert_eq!(
        p["spec"]["endpointSelector"]["matchLabels"]["app"],
        "task-api"
    );
    let ingress = p["spec"]["ingress"].as_array().unwrap();
    assert!(ingress.iter().any(|r| {
        r["fromEndpoints"][0]["matchLabels"]["k8s:io.kubernetes.pod.namespace"] == "gateway"
            && r["toPorts"][0]["ports"][0] == serde_json::json!({"port": "8080", "protocol": "TCP"})
    }));
    let deny = rec
        .policies
        .iter()
        .find(|p| p.name == "default-deny")
        .unwrap()
        .to_cilium_json();
    assert_eq!(deny["spec"]["ingress"], serde_json::json!([{}]));
}

fn broken_cluster(extra: &[LoadedObject], obs: &Observation) -> Cluster {
    let mut base = task_api_objects();
    base.extend(manifest::load_paths(&[examples().join("../broken-policies/task-api")]).unwrap());
    base.extend(extra.iter().cloned());
    cluster_with(&base, obs, Vec::new(), false).unwrap()
}

#[test]
fn audit_flags_exactly_the_flows_each_mistake_breaks_and_its_fixes_clear_them() {
    let objects = task_api_objects();
    let cluster = Cluster::from_objects(objects).unwrap();
    let obs = observe(&task_api_flows(), &cluster);
    let result = audit(&obs, &broken_cluster(&[], &obs));
    let groups: BTreeSet<(String, String, u16)> = result
        .groups
        .iter()
        .map(|g| (g.source.clone(), g.destination.clone(), g.port))
        .collect();
    assert_eq!(
        groups,
        [
            // Service port 80 written in place of the pod port 8080.
            (
                "gateway/gateway[Deployment]".to_string(),
                "taskapi/task-api[Deployment]".to_string(),
                8080
            ),
            // DNS forgotten.
            (
                "taskapi/task-api[Deployment]".to_string(),
                "kube-system/coredns[Deployment]".to_string(),
                53
            ),
            // Namespace and pod selectors as two OR peers.
            (
                "taskapi/task-api[Deployment]".to_string(),
                "postgres/postgres[StatefulSet]".to_string(),
                5432
            ),
        ]
        .into()
    );
    assert_eq!(result.denied_flows, 12);
    let to_postgres = result.groups.iter().find(|g| g.port == 5432).unwrap();
    let fix = &to_postgres.fixes[0];
    assert_eq!(
        fix.isolated_by,
        ["postgres/default-deny", "postgres/allow-task-api"]
    );
    let peer = &fix.rule["from"];
    assert_eq!(peer.as_array().unwrap().len(), 1);
    assert_eq!(
        peer[0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "taskapi"
    );
    // The peer is selected as recommend selects it: by the Deployment's selector, not by
    // every label its pods carry (they also have tier: backend).
    assert_eq!(
        peer[0]["podSelector"]["matchLabels"],
        serde_json::json!({"app": "task-api"})
    );
    // Apply every suggested policy: nothing is denied any more.
    let fixes: Vec<LoadedObject> = result
        .groups
        .iter()
        .flat_map(|g| &g.fixes)
        .map(|f| LoadedObject {
            source: PathBuf::from("fix.yaml"),
            object: Object::NetworkPolicy(Box::new(
                serde_json::from_value(f.policy.clone()).unwrap(),
            )),
        })
        .collect();
    let after = audit(&obs, &broken_cluster(&fixes, &obs));
    assert!(after.groups.is_empty(), "{:?}", after.groups);
    assert_eq!(after.flows_checked, result.flows_checked);
}

#[test]
fn diff_names_unused_rules_and_uncovered_traffic() {
    let objects = task_api_objects();
    let cluster = Cluster::from_objects(objects).unwrap();
    let obs = observe(&task_api_flows(), &cluster);
    let d = diff(&obs, &broken_cluster(&[], &obs));
    let unused: Vec<(String, String)> = d
        .unused
        .iter()
        .map(|u| (u.policy.clone(), u.field.clone()))
        .collect();
    // The Service-port rule and the broken postgres rule saw no traffic.
    assert!(
        unused.contains(&("taskapi/allow-gateway".into(), "spec.ingress[0]".into())),
        "{unused:?}"
    );
    assert!(
        unused.contains(&("postgres/allow-task-api".into(), "spec.ingress[0]".into())),
        "{unused:?}"
    );
    assert!(
        !unused
            .iter()
            .any(|(p, f)| p == "taskapi/egress" && f == "spec.egress[0]"),
        "{unused:?}"
    );
    // Gateway → task-api: gateway is not isolated for egress; ingress denied.
    assert!(
        d.uncovered.iter().any(
            |u| u.source.starts_with("gateway/gateway") && u.why.contains("denied for ingress")
        ),
        "{:?}",
        d.uncovered
    );
    assert!(
        d.uncovered
            .iter()
            .any(|u| u.destination.starts_with("redis/redis")
                && u.why.contains("no policy selects redis/redis")),
        "{:?}",
        d.uncovered
    );
}

#[test]
fn drops_name_the_missing_rule_or_the_plain_reason() {
    let e = ends();
    let mut flows = vec![
        flow(
            &e.api,
            &e.postgres,
            5432,
            Protocol::Tcp,
            0,
            Verdict::Dropped,
        ),
        flow(
            &e.gateway,
            &e.redis,
            6380,
            Protocol::Tcp,
            1,
            Verdict::Unanswered,
        ),
    ];
    let mut no_socket = flow(
        &e.gateway,
        &e.redis,
        6379,
        Protocol::Tcp,
        2,
        Verdict::Dropped,
    );
    no_socket.drop_reason = Some("NO_SOCKET".into());
    flows.push(no_socket);
    let cluster0 = Cluster::from_objects(task_api_objects()).unwrap();
    let obs = observe(&flows, &cluster0);
    let groups = drops(&flows, &broken_cluster(&[], &obs));
    assert_eq!(groups.len(), 3);
    let pg = groups.iter().find(|g| g.port == 5432).unwrap();
    assert!(pg.policy_denied);
    assert_eq!(pg.reason.as_deref(), Some("NETFILTER_DROP"));
    assert!(
        pg.destination_policies
            .contains(&"postgres/default-deny".to_string())
    );
    let (dir, rule) = pg.missing_rule.as_ref().unwrap();
    assert_eq!(dir.to_string(), "ingress");
    assert_eq!(rule["ports"][0]["port"], 5432);
    let unanswered = groups.iter().find(|g| g.port == 6380).unwrap();
    assert!(!unanswered.policy_denied);
    assert!(
        unanswered.explanation.contains("got no answer"),
        "{}",
        unanswered.explanation
    );
    let ns = groups.iter().find(|g| g.port == 6379).unwrap();
    assert!(
        ns.explanation.contains("nothing was listening on 6379/TCP"),
        "{}",
        ns.explanation
    );
}

#[test]
fn a_service_cluster_ip_is_resolved_to_the_backend_pod_port() {
    let mut objects = task_api_objects();
    objects.extend(
        manifest::parse_str(
            Path::new("svc.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: api2, namespace: taskapi}\nspec:\n  clusterIP: 10.96.0.50\n  selector: {app: task-api}\n  ports: [{port: 80, targetPort: http}]\n",
        )
        .unwrap(),
    );
    let cluster = Cluster::from_objects(objects).unwrap();
    let e = ends();
    let svc = Endpoint::new("10.96.0.50".parse().unwrap(), 0);
    let f = flow(&e.gateway, &svc, 80, Protocol::Tcp, 0, Verdict::Forwarded);
    let obs = observe(&[f], &cluster);
    let edge = obs.edges.keys().next().unwrap();
    assert_eq!(edge.dst.to_string(), "taskapi/task-api[Deployment]");
    assert_eq!(edge.port, 8080);
}

#[test]
fn a_workload_gone_from_the_cluster_is_selected_by_the_selector_its_flows_recorded() {
    // Only the namespaces are left: every workload was deleted after its flows were recorded.
    let objects =
        manifest::load_paths(&[examples().join("task-api").join("namespaces.yaml")]).unwrap();
    let cluster = Cluster::from_objects(objects).unwrap();
    let with_selector = |mut e: Endpoint| {
        if e.workload.as_ref().is_some_and(|w| w.name == "task-api") {
            e.selector = [("app".to_string(), "task-api".to_string())].into();
        }
        e
    };
    let flows: Vec<FlowRecord> = task_api_flows()
        .into_iter()
        .map(|mut f| {
            f.src = with_selector(f.src);
            f.dst = with_selector(f.dst);
            f
        })
        .collect();
    let obs = observe(&flows, &cluster);
    let rec = recommend(&obs, &cluster, &Options::default());
    let api = policy(&rec, "taskapi", "allow-task-api");
    assert_eq!(
        api["spec"]["podSelector"],
        serde_json::json!({"matchLabels": {"app": "task-api"}})
    );
    // Without a recorded selector, the pods' stable labels are all there is.
    let obs = observe(&task_api_flows(), &cluster);
    let rec = recommend(&obs, &cluster, &Options::default());
    let api = policy(&rec, "taskapi", "allow-task-api");
    assert_eq!(
        api["spec"]["podSelector"],
        serde_json::json!({"matchLabels": {"app": "task-api", "tier": "backend"}})
    );
}
