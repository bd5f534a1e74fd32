//! `flowpol recommend`, `audit`, `drops` and `diff` end to end on databases written through the
//! store API (no root): output, exit codes (audit: 1 denied; 2 bad input) and error messages.
#[path = "support/apiserver.rs"]
mod apiserver;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{DateTime, Duration, Utc};
use flowpol::store::Store;
use flowpol_recommender::flow::{
    Endpoint, EndpointKind, FlowRecord, Protocol, TcpFlags, Verdict, WorkloadRef,
};

fn flowpol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowpol"))
        .args(args)
        .env("FLOWPOL_LOG", "error")
        .env_remove("FLOWPOL_DB")
        .output()
        .expect("run flowpol")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

/// The task-api scenario's manifests (its folder also holds traffic.yaml and broken policies).
fn task_api_manifests() -> Vec<String> {
    [
        "namespaces.yaml",
        "gateway.yaml",
        "task-api.yaml",
        "postgres.yaml",
        "redis.yaml",
    ]
    .iter()
    .map(|f| {
        examples()
            .join("task-api")
            .join(f)
            .to_str()
            .unwrap()
            .to_string()
    })
    .collect()
}

fn with_manifests<'a>(args: &[&'a str], manifests: &'a [String]) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.push("--manifests");
    v.extend(manifests.iter().map(String::as_str));
    v
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn t(secs: i64) -> DateTime<Utc> {
    Utc::now() - Duration::hours(3) + Duration::seconds(secs)
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
    e
}

fn flow(src: &Endpoint, dst: &Endpoint, port: u16, protocol: Protocol, at: i64) -> FlowRecord {
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
        reply_packets: 2,
        reply_bytes: 100,
        first_seen: t(at),
        last_seen: t(at + 1),
        verdict: Verdict::Forwarded,
        drop_reason: None,
        tcp_flags: TcpFlags(TcpFlags::SYN | TcpFlags::SYN_ACK),
        connections: 0,
        cgroup_id: None,
        node: Some("node-1".into()),
    }
}

/// The task-api scenario's traffic over two hours, as the agent records it.
fn task_api_flows() -> Vec<FlowRecord> {
    let gateway = pod(
        "10.244.0.5",
        "gateway",
        "Deployment",
        "gateway",
        &[("app", "gateway"), ("tier", "edge")],
    );
    let api = pod(
        "10.244.0.6",
        "taskapi",
        "Deployment",
        "task-api",
        &[("app", "task-api"), ("tier", "backend")],
    );
    let postgres = pod(
        "10.244.0.7",
        "postgres",
        "StatefulSet",
        "postgres",
        &[("app", "postgres")],
    );
    let redis = pod(
        "10.244.0.8",
        "redis",
        "Deployment",
        "redis",
        &[("app", "redis")],
    );
    let dns = pod(
        "10.244.0.2",
        "kube-system",
        "Deployment",
        "coredns",
        &[("k8s-app", "kube-dns")],
    );
    let mut node = Endpoint::new("172.18.0.2".parse().unwrap(), 0);
    node.kind = Some(EndpointKind::Node);
    let mut flows = Vec::new();
    for i in 0..4 {
        let at = i * 1800;
        let mut to_api = flow(&gateway, &api, 8080, Protocol::Tcp, at);
        to_api.dst.service = Some("taskapi/task-api".into());
        to_api.dst.service_port = Some(80);
        flows.push(to_api);
        flows.push(flow(&gateway, &dns, 53, Protocol::Udp, at));
        flows.push(flow(&api, &dns, 53, Protocol::Udp, at + 1));
        flows.push(flow(&api, &postgres, 5432, Protocol::Tcp, at + 2));
        flows.push(flow(&api, &redis, 6379, Protocol::Tcp, at + 3));
        flows.push(flow(&node, &api, 8080, Protocol::Tcp, at + 4));
        flows.push(flow(&node, &postgres, 5432, Protocol::Tcp, at + 5));
    }
    flows
}

fn write_db(path: &Path, flows: &[FlowRecord]) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open(path).await.unwrap();
        if !flows.is_empty() {
            store.write_flows(flows).await.unwrap();
        }
        store.close().await;
    });
}

fn task_api_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flows.db");
    write_db(&db, &task_api_flows());
    (dir, db)
}

#[test]
fn recommend_prints_verified_policies_that_audit_clean() {
    let (dir, db) = task_api_db();
    let m = task_api_manifests();
    let out = flowpol(&with_manifests(&["recommend", "--db", s(&db)], &m));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let yaml = stdout(&out);
    assert!(yaml.contains("kind: NetworkPolicy"), "{yaml}");
    assert!(yaml.contains("name: allow-task-api"), "{yaml}");
    assert!(yaml.contains("port: 8080"), "{yaml}");
    assert!(
        !yaml.contains("port: 80\n"),
        "a Service port leaked: {yaml}"
    );
    let err = stderr(&out);
    assert!(
        err.contains("verified by the engine: 7 of 7 observed connections allowed"),
        "{err}"
    );
    assert!(err.contains("allow 0 workload pairs"), "{err}");
    // kube-system is left out unless asked for (-A).
    assert!(!yaml.contains("namespace: kube-system"), "{yaml}");
    let all = flowpol(&with_manifests(&["recommend", "--db", s(&db), "-A"], &m));
    assert_eq!(all.status.code(), Some(0), "{}", stderr(&all));
    assert!(
        stdout(&all).contains("name: allow-coredns"),
        "{}",
        stdout(&all)
    );
    // The recommendation, audited against the same flows: nothing denied (exit 0).
    let recommended = dir.path().join("recommended.yaml");
    std::fs::write(&recommended, &yaml).unwrap();
    let audit = flowpol(&["audit", "--db", s(&db), "--policies", s(&recommended)]);
    assert_eq!(
        audit.status.code(),
        Some(0),
        "{}{}",
        stdout(&audit),
        stderr(&audit)
    );
    assert!(
        stdout(&audit).contains("0 of 28 observed flows would be denied"),
        "{}",
        stdout(&audit)
    );

    // One namespace, JSON, Cilium.
    let out = flowpol(&with_manifests(
        &[
            "recommend",
            "--db",
            s(&db),
            "-n",
            "taskapi",
            "-o",
            "json",
            "--format",
            "cilium",
        ],
        &m,
    ));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let list: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    let items = list["items"].as_array().unwrap();
    assert!(
        items
            .iter()
            .all(|p| p["kind"] == "CiliumNetworkPolicy" && p["metadata"]["namespace"] == "taskapi")
    );
    assert_eq!(items.len(), 3);
}

#[test]
fn audit_flags_the_broken_policy_set_with_fixes_and_exits_1() {
    let (_dir, db) = task_api_db();
    let broken = examples().join("../broken-policies/task-api");
    let out = flowpol(&["audit", "--db", s(&db), "--policies", s(&broken)]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    for line in [
        "DENIED gateway/gateway[Deployment] → taskapi/task-api[Deployment] 8080/TCP: 4 flows",
        "DENIED taskapi/task-api[Deployment] → kube-system/coredns[Deployment] 53/UDP: 4 flows",
        "DENIED taskapi/task-api[Deployment] → postgres/postgres[StatefulSet] 5432/TCP: 4 flows",
        "12 of 28 observed flows would be denied (3 groups)",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    assert!(
        text.contains("kubernetes.io/metadata.name: taskapi"),
        "{text}"
    );
    let out = flowpol(&[
        "audit",
        "--db",
        s(&db),
        "--policies",
        s(&broken),
        "-o",
        "json",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["groups"].as_array().unwrap().len(), 3);
    let out = flowpol(&[
        "audit",
        "--db",
        s(&db),
        "--policies",
        s(&broken),
        "-o",
        "yaml",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains("denied_flows: 12"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn diff_and_drops_explain_in_words() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("flows.db");
    let mut flows = task_api_flows();
    let api = flows[2].src.clone();
    let postgres = flows[3].dst.clone();
    let mut dropped = flow(&api, &postgres, 5432, Protocol::Tcp, 9000);
    dropped.verdict = Verdict::Dropped;
    dropped.drop_reason = Some("NETFILTER_DROP".into());
    dropped.reply_packets = 0;
    flows.push(dropped);
    let gateway = flows[0].src.clone();
    let redis = flows[4].dst.clone();
    let mut refused = flow(&gateway, &redis, 6380, Protocol::Tcp, 9001);
    refused.verdict = Verdict::Dropped;
    refused.drop_reason = Some("NO_SOCKET".into());
    flows.push(refused);
    write_db(&db, &flows);
    let broken = examples().join("../broken-policies/task-api");

    let out = flowpol(&["drops", "--db", s(&db), "--policies", s(&broken)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("DROPPED taskapi/task-api[Deployment] → postgres/postgres[StatefulSet] 5432/TCP (NETFILTER_DROP)"), "{text}");
    assert!(
        text.contains("NetworkPolicy: ingress of postgres/postgres[StatefulSet] is isolated by"),
        "{text}"
    );
    assert!(text.contains("missing allow rule:"), "{text}");
    assert!(text.contains("nothing was listening on 6380/TCP"), "{text}");
    // Without policies: the kernel's reason, said plainly.
    let out = flowpol(&["drops", "--db", s(&db)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("no NetworkPolicy in the given state denies it"),
        "{}",
        stdout(&out)
    );

    let out = flowpol(&["diff", "--db", s(&db), "--policies", s(&broken)]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(
        text.contains("- taskapi/allow-gateway spec.ingress[0]: no observed flow used this rule"),
        "{text}"
    );
    assert!(
        text.contains("+ gateway/gateway[Deployment] → redis/redis[Deployment]")
            || text.contains("→ redis/redis[Deployment] 6379/TCP"),
        "{text}"
    );
}

#[test]
fn bad_input_is_named_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let m = task_api_manifests();
    let manifests = examples().join("../broken-policies/task-api");
    // An empty flowpol database.
    let empty = dir.path().join("empty.db");
    write_db(&empty, &[]);
    let out = flowpol(&with_manifests(&["recommend", "--db", s(&empty)], &m));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("empty.db holds no flows"),
        "{}",
        stderr(&out)
    );
    // A file that is not a flowpol database: refused and left untouched.
    let foreign = dir.path().join("notes.db");
    std::fs::write(&foreign, "just some text, not SQLite\n").unwrap();
    let out = flowpol(&["audit", "--db", s(&foreign), "--policies", s(&manifests)]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("notes.db is not a flowpol database"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(&foreign).unwrap(),
        "just some text, not SQLite\n"
    );
    // A window with no flows.
    let (_d, db) = task_api_db();
    let out = flowpol(&["drops", "--db", s(&db), "--since", "5m"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("holds no flows seen since"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("28 rows in all"), "{}", stderr(&out));
    // Policies that do not parse, and a folder without policies.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: x, namespace: a}\nspec:\n  podSelector: {}\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/40}}]\n",
    )
    .unwrap();
    let out = flowpol(&["audit", "--db", s(&db), "--policies", s(&bad)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("bad.yaml: NetworkPolicy a/x"),
        "{}",
        stderr(&out)
    );
    let unparsable = dir.path().join("broken.yaml");
    std::fs::write(&unparsable, "kind: NetworkPolicy\n  bad: [\n").unwrap();
    let out = flowpol(&["diff", "--db", s(&db), "--policies", s(&unparsable)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("broken.yaml"), "{}", stderr(&out));
    let out = flowpol(&[
        "audit",
        "--db",
        s(&db),
        "--policies",
        s(&examples().join("three-tier/app.yaml")),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("holds no NetworkPolicy"),
        "{}",
        stderr(&out)
    );
    let out = flowpol(&with_manifests(
        &["recommend", "--db", s(&db), "--aggregate-external", "40"],
        &m,
    ));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--aggregate-external `40`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn audit_and_recommend_read_the_cluster_from_the_kubernetes_api() {
    use apiserver::objects::*;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let peer = rt.block_on(apiserver::ApiServer::start());
    peer.apply(namespace("shop"));
    peer.apply(node("node-a", "172.18.0.2"));
    peer.apply(replicaset("shop", "web"));
    peer.apply(replicaset("shop", "api"));
    peer.apply(deployment_pod(
        "shop",
        "web-5d8f9c7b6-aaaaa",
        "u1",
        "10.244.0.10",
        "web",
    ));
    peer.apply(deployment_pod(
        "shop",
        "api-5d8f9c7b6-bbbbb",
        "u2",
        "10.244.0.11",
        "api",
    ));
    peer.apply(serde_json::json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "shop", "uid": "np1"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}
    }));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: t, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: t, user: {{}}}}]\ncontexts: [{{name: t, context: {{cluster: t, user: t}}}}]\n\
             current-context: t\n",
            peer.url()
        ),
    )
    .unwrap();
    let web = pod(
        "10.244.0.10",
        "shop",
        "Deployment",
        "web",
        &[("app", "web")],
    );
    let api = pod(
        "10.244.0.11",
        "shop",
        "Deployment",
        "api",
        &[("app", "api")],
    );
    let db = dir.path().join("flows.db");
    write_db(&db, &[flow(&web, &api, 8080, Protocol::Tcp, 0)]);
    let kc = s(&kubeconfig).to_string();
    let out = flowpol(&["audit", "--db", s(&db), "--kube", "--kubeconfig", &kc]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(
        stdout(&out).contains("DENIED shop/web[Deployment] → shop/api[Deployment] 8080/TCP"),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("isolated by shop/deny"),
        "{}",
        stdout(&out)
    );
    let out = flowpol(&["recommend", "--db", s(&db), "--kube", "--kubeconfig", &kc]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("name: allow-api"), "{}", stdout(&out));
    assert!(
        stderr(&out).contains("1 of 1 observed connections allowed"),
        "{}",
        stderr(&out)
    );
    drop(rt);
}
