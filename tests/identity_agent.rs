//! The agent with identity, end to end on a real kernel: eBPF capture in network namespaces,
//! cluster state from manifests, and the local end named by a real cgroup v2 directory laid
//! out like kubelet's systemd driver with containerd.

#[path = "support/netns.rs"]
mod netns;

#[path = "support/apiserver.rs"]
mod apiserver;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use netns::{Agent, Lab, require_root, unique};
use serde_json::{Value, json};

/// A pod's cgroup under the cgroup2 mount (with a unique prefix), removed on drop.
struct PodCgroup {
    top: PathBuf,
    leaf: PathBuf,
}

impl PodCgroup {
    fn new(prefix: &str, uid: &str, container: &str) -> Self {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
        let root = mounts
            .lines()
            .find_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
            })
            .expect("a cgroup2 mount in /proc/mounts");
        let top = root.join(format!("{prefix}.slice"));
        let leaf = top
            .join("kubepods-besteffort.slice")
            .join(format!(
                "kubepods-besteffort-pod{}.slice",
                uid.replace('-', "_")
            ))
            .join(format!("cri-containerd-{container}.scope"));
        std::fs::create_dir_all(&leaf).unwrap_or_else(|e| panic!("mkdir {}: {e}", leaf.display()));
        Self { top, leaf }
    }
}

impl Drop for PodCgroup {
    fn drop(&mut self) {
        // Leaf first; a cgroup directory goes away with rmdir once it has no processes.
        let mut dir: &Path = &self.leaf;
        loop {
            let _ = std::fs::remove_dir(dir);
            if dir == self.top {
                break;
            }
            match dir.parent() {
                Some(p) => dir = p,
                None => break,
            }
        }
    }
}

fn manifests(dir: &Path, node_ip: &str, client_uid: &str, web_ip: &str) -> PathBuf {
    let list = cluster(node_ip, client_uid, web_ip);
    let path = dir.join("cluster.json");
    std::fs::write(&path, serde_json::to_string_pretty(&list).unwrap()).unwrap();
    path
}

fn cluster(node_ip: &str, client_uid: &str, web_ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-a"},
         "status": {"addresses": [{"type": "InternalIP", "address": node_ip}]}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "client-agent-x1", "namespace": "shop", "uid": client_uid,
                      "labels": {"app": "client", "controller-revision-hash": "6f7d"},
                      "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet",
                                           "name": "client-agent", "uid": "ds-1", "controller": true}]},
         "spec": {"hostNetwork": true, "nodeName": "node-a", "containers": [{"name": "c"}]},
         "status": {"phase": "Running", "podIP": node_ip, "podIPs": [{"ip": node_ip}]}},
        {"apiVersion": "apps/v1", "kind": "ReplicaSet",
         "metadata": {"name": "web-5d8f9c7b6", "namespace": "shop", "uid": "rs-web",
                      "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
                                           "uid": "deploy-web", "controller": true}]},
         "spec": {"selector": {"matchLabels": {"app": "web", "pod-template-hash": "5d8f9c7b6"}}}},
        {"apiVersion": "v1", "kind": "Pod",
         "metadata": {"name": "web-5d8f9c7b6-abcde", "namespace": "shop",
                      "uid": "0b0b0b0b-0000-4000-8000-00000000000b",
                      "labels": {"app": "web", "pod-template-hash": "5d8f9c7b6"},
                      "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                           "name": "web-5d8f9c7b6", "uid": "rs-web", "controller": true}]},
         "spec": {"nodeName": "node-b", "containers": [{"name": "c"}]},
         "status": {"phase": "Running", "podIP": web_ip, "podIPs": [{"ip": web_ip}]}}
    ]})
}

fn find<'a>(records: &'a [Value], dst_ip: &str, dst_port: u16) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| {
            r["protocol"] == "TCP"
                && r["dst"]["ip"] == dst_ip
                && r["dst"]["port"].as_u64() == Some(u64::from(dst_port))
        })
        .collect()
}

#[test]
fn privileged_identity_agent_names_a_host_network_pod_by_cgroup_and_the_peer_by_ip() {
    require_root();
    let lab = Lab::new(2);
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let (prefix, n) = unique("fpi");
    let client_uid = format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id());
    let container = format!("{:0>64}", format!("{:x}{n:x}", std::process::id()));
    let cgroup = PodCgroup::new(&prefix, &client_uid, &container);
    let dir = tempfile::tempdir().unwrap();
    let file = manifests(
        dir.path(),
        &a.v4.to_string(),
        &client_uid,
        &b.v4.to_string(),
    );
    let mut agent = Agent::start(&["--interval", "1s", "--manifests", file.to_str().unwrap()]);

    // A server in B answering one line per connection.
    let (tx, rx) = std::sync::mpsc::channel();
    let server_ip = b.v4;
    let server = b.ns.spawn(move || {
        let l = TcpListener::bind(SocketAddr::new(server_ip, 0)).unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        for _ in 0..2 {
            let (mut c, _) = l.accept().unwrap();
            c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut line = String::new();
            BufReader::new(c.try_clone().unwrap())
                .read_line(&mut line)
                .unwrap();
            c.write_all(b"pong\n").unwrap();
        }
    });
    let port = rx.recv().unwrap();

    // 1. From a process in the pod's cgroup (in A's namespace = the node's address). The
    //    namespace gets its own /sys, so the process is moved into the cgroup from here.
    let script = format!(
        "echo $$ && read go && exec 3<>/dev/tcp/{server_ip}/{port} && echo ping >&3 && head -n1 <&3"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &a.ns.name, "bash", "-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut pid = String::new();
    stdout.read_line(&mut pid).unwrap();
    std::fs::write(cgroup.leaf.join("cgroup.procs"), pid.trim())
        .unwrap_or_else(|e| panic!("moving {} into {}: {e}", pid.trim(), cgroup.leaf.display()));
    child.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let mut reply = String::new();
    stdout.read_line(&mut reply).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success() && reply.contains("pong"),
        "client in the pod cgroup failed ({status}): {reply:?}"
    );
    // 2. From the same address but outside any pod cgroup (this test process).
    let node_client_port = a.ns.within(move || {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::new(server_ip, port), Duration::from_secs(5))
                .unwrap();
        c.write_all(b"ping\n").unwrap();
        let mut line = String::new();
        BufReader::new(c.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        c.local_addr().unwrap().port()
    });
    server.join().unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let records = agent.stop();
    drop(cgroup);

    let flows = find(&records, &b.v4.to_string(), port);
    assert!(
        flows.len() >= 2,
        "both connections recorded: {}",
        serde_json::to_string_pretty(&flows).unwrap()
    );
    let from_pod: Vec<&&Value> = flows
        .iter()
        .filter(|r| r["src"]["port"].as_u64() != Some(u64::from(node_client_port)))
        .collect();
    let from_node: Vec<&&Value> = flows
        .iter()
        .filter(|r| r["src"]["port"].as_u64() == Some(u64::from(node_client_port)))
        .collect();
    assert!(!from_pod.is_empty() && !from_node.is_empty(), "{flows:#?}");
    // Socket records carry the cgroup id; kernel drop records of the same connection (e.g.
    // a FIN purged at close) have no socket and borrow the pod of their connection.
    assert!(
        from_pod.iter().any(|r| r.get("cgroup_id").is_some()),
        "{from_pod:#?}"
    );
    for r in &from_pod {
        assert_eq!(r["src"]["kind"], "Pod", "{r:#}");
        assert_eq!(r["src"]["namespace"], "shop", "{r:#}");
        assert_eq!(r["src"]["pod"], "client-agent-x1", "{r:#}");
        assert_eq!(r["src"]["workload"], "DaemonSet/client-agent", "{r:#}");
        assert!(
            r["src"]["labels"].get("controller-revision-hash").is_none(),
            "{r:#}"
        );
    }
    for r in &from_node {
        assert_eq!(r["src"]["kind"], "Node", "{r:#}");
        assert!(r["src"].get("pod").is_none(), "{r:#}");
    }
    for r in flows {
        assert_eq!(r["dst"]["kind"], "Pod", "{r:#}");
        assert_eq!(r["dst"]["pod"], "web-5d8f9c7b6-abcde", "{r:#}");
        assert_eq!(r["dst"]["workload"], "Deployment/web", "{r:#}");
        assert_eq!(r["dst"]["labels"], json!({"app": "web"}), "{r:#}");
    }
}

#[test]
fn agent_with_a_bad_manifest_exits_non_zero_naming_the_file() {
    // Needs no root: the manifests are read before any eBPF is loaded.
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec: {ports: [{port: eighty}]}\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_flowpol"))
        .args(["agent", "--json-out"])
        .arg(dir.path().join("flows.jsonl"))
        .arg("--manifests")
        .arg(&bad)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {stderr}");
    assert!(stderr.contains("bad.yaml"), "{stderr}");
    assert!(stderr.contains("Service shop/web"), "{stderr}");
    assert!(stderr.contains("spec.ports[0].port"), "{stderr}");
    assert!(
        !dir.path().join("flows.jsonl").exists()
            || std::fs::read_to_string(dir.path().join("flows.jsonl"))
                .unwrap()
                .is_empty(),
        "nothing captured"
    );
}

/// One TCP request/response from `client` (this test process) to `server_ip`; returns the
/// server port.
fn one_connection(
    client: &netns::Netns,
    server: &netns::Netns,
    server_ip: std::net::IpAddr,
) -> u16 {
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = server.spawn(move || {
        let l = TcpListener::bind(SocketAddr::new(server_ip, 0)).unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = String::new();
        BufReader::new(c.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        c.write_all(b"pong\n").unwrap();
    });
    let port = rx.recv().unwrap();
    client.within(move || {
        let mut c =
            TcpStream::connect_timeout(&SocketAddr::new(server_ip, port), Duration::from_secs(5))
                .unwrap();
        c.write_all(b"ping\n").unwrap();
        let mut line = String::new();
        BufReader::new(c.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
    });
    srv.join().unwrap();
    port
}

#[test]
fn privileged_identity_agent_with_kube_follows_ip_reuse_over_the_watch() {
    require_root();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let peer = rt.block_on(apiserver::ApiServer::start());
    let lab = Lab::new(2);
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let (_, n) = unique("fpi");
    let client_uid = format!("{:08x}-0000-4000-8000-{n:012x}", std::process::id());
    let state = cluster(&a.v4.to_string(), &client_uid, &b.v4.to_string());
    for item in state["items"].as_array().unwrap() {
        peer.apply(item.clone());
    }
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
    let mut agent = Agent::start(&[
        "--interval",
        "1s",
        "--kube",
        "--kubeconfig",
        kubeconfig.to_str().unwrap(),
    ]);
    assert!(
        agent.log.iter().any(|l| l.contains("cluster state ready")),
        "the agent waited for the first full list: {:#?}",
        agent.log
    );
    let web_port = one_connection(&a.ns, &b.ns, b.v4);
    // B's address goes to another pod, seen over the watch.
    peer.delete("Pod", "shop", "web-5d8f9c7b6-abcde");
    peer.apply(json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "api-7c6b5a4d3", "namespace": "shop", "uid": "rs-api",
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "api",
                                          "uid": "deploy-api", "controller": true}]},
        "spec": {"selector": {"matchLabels": {"app": "api", "pod-template-hash": "7c6b5a4d3"}}}}));
    peer.apply(json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "api-7c6b5a4d3-fghij", "namespace": "shop",
                     "uid": "0c0c0c0c-0000-4000-8000-00000000000c",
                     "labels": {"app": "api", "pod-template-hash": "7c6b5a4d3"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                          "name": "api-7c6b5a4d3", "uid": "rs-api", "controller": true}]},
        "status": {"phase": "Running", "podIP": b.v4.to_string(), "podIPs": [{"ip": b.v4.to_string()}]}}));
    std::thread::sleep(Duration::from_millis(1000));
    let api_port = one_connection(&a.ns, &b.ns, b.v4);
    std::thread::sleep(Duration::from_millis(1500));
    let records = agent.stop();
    let db = agent.db.clone();

    let before = find(&records, &b.v4.to_string(), web_port);
    let after = find(&records, &b.v4.to_string(), api_port);
    assert!(!before.is_empty() && !after.is_empty(), "{records:#?}");
    for r in before {
        assert_eq!(r["dst"]["workload"], "Deployment/web", "{r:#}");
        assert_eq!(r["src"]["kind"], "Node", "{r:#}");
    }
    for r in after {
        assert_eq!(r["dst"]["pod"], "api-7c6b5a4d3-fghij", "{r:#}");
        assert_eq!(r["dst"]["workload"], "Deployment/api", "{r:#}");
    }
    // The store has the enriched flows and the time line: web's interval on B's address is
    // closed, api's is open.
    rt.block_on(async {
        let store = flowpol::store::Store::open_read_only(&db).await.unwrap();
        let stored = store
            .query_flows(&flowpol::store::query::FlowQuery {
                workload: Some("Deployment/api".parse().unwrap()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(
            stored.iter().any(|f| f.dst.port == api_port),
            "stored flows name Deployment/api: {stored:#?}"
        );
        let rows: Vec<(Option<i64>, String)> = sqlx::query_as(
            "SELECT valid_to, holder FROM identity_intervals WHERE key = ? ORDER BY valid_from",
        )
        .bind(format!("ip:{}", b.v4))
        .fetch_all(store.pool())
        .await
        .unwrap();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert!(
            rows[0].0.is_some(),
            "the web pod's interval is closed: {rows:?}"
        );
        assert_eq!(
            rows[1],
            (None, "Pod/0c0c0c0c-0000-4000-8000-00000000000c".into())
        );
    });
    drop(rt);
}
