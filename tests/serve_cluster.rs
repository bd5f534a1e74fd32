//! `--cluster`: two agents (and one that is down) behind a Kubernetes-API peer
//! that proxies to them as kube-apiserver's pod proxy does.
#[path = "serve_support/mod.rs"]
mod support;

use std::time::Duration;

use flowpol::serve::cluster::{AgentTarget, FollowEvent, follow_flows, gather_flows};
use flowpol::serve::filter::FlowFilter;
use flowpol_recommender::flow::{FlowRecord, Verdict};
use support::kube_proxy::{KubeProxy, agent_pod};
use support::{TOKEN, TestAgent, at, pod_flow};

fn target() -> AgentTarget {
    AgentTarget {
        token: Some(TOKEN.into()),
        ..AgentTarget::default()
    }
}

/// A port nothing listens on (an agent that is down).
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

struct Cluster {
    a: TestAgent,
    b: TestAgent,
    peer: KubeProxy,
    cross: FlowRecord,
}

async fn cluster() -> Cluster {
    // web on node-a calls api on node-b: both agents record the connection.
    let cross = pod_flow(
        ("10.244.1.10", "shop", "web"),
        ("10.244.2.20", "shop", "api"),
        8080,
        at("2026-11-21T10:00:00Z"),
        Verdict::Forwarded,
    );
    let mut later = cross.clone();
    later.first_seen = at("2026-11-21T10:00:05Z");
    later.last_seen = later.first_seen;
    let only_a = pod_flow(
        ("10.244.1.11", "tools", "debug"),
        ("10.244.1.10", "shop", "web"),
        9000,
        at("2026-11-21T10:00:01Z"),
        Verdict::Dropped,
    );
    let only_b = pod_flow(
        ("10.244.2.20", "shop", "api"),
        ("10.244.2.30", "shop", "db"),
        5432,
        at("2026-11-21T10:00:02Z"),
        Verdict::Forwarded,
    );
    let a = TestAgent::start(&[cross.clone(), later.clone(), only_a]).await;
    let b = TestAgent::start(&[cross.clone(), only_b]).await;
    let peer = KubeProxy::start(vec![
        agent_pod("flowpol-aaaaa", "node-a", a.addr.port(), "api"),
        agent_pod("flowpol-bbbbb", "node-b", b.addr.port(), "http"),
        agent_pod("flowpol-ccccc", "node-c", closed_port(), "api"),
    ])
    .await;
    Cluster { a, b, peer, cross }
}

#[tokio::test]
async fn gathers_and_merges_every_node_and_reports_the_one_down() {
    let c = cluster().await;
    let client = c.peer.kube_client();
    let (flows, failures) = gather_flows(&client, &target(), &FlowFilter::default(), None)
        .await
        .unwrap();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].node, "node-c");
    assert_eq!(failures[0].pod, "flowpol-ccccc");
    assert!(failures[0].error.contains("503"), "{}", failures[0].error);
    // The cross-node connection once: node-a's two intervals summed (8
    // packets), node-b's one (4) seen as the same packets.
    assert_eq!(flows.len(), 3, "{flows:#?}");
    let cross = flows.iter().find(|f| f.dst.port == 8080).unwrap();
    assert_eq!(cross.packets, 8);
    assert_eq!(cross.first_seen, c.cross.first_seen);
    assert_eq!(cross.last_seen, at("2026-11-21T10:00:05Z"));
    let nodes: Vec<_> = flows.iter().map(|f| f.node.clone().unwrap()).collect();
    assert!(nodes.contains(&"node-a".to_string()) && nodes.contains(&"node-b".to_string()));
    // The agents got the token through the proxy, which kept Authorization.
    assert!(c.peer.proxied.lock().unwrap().len() >= 2);

    // Filters travel to every node.
    let dropped = FlowFilter {
        verdict: Some(Verdict::Dropped),
        ..Default::default()
    };
    let (flows, _) = gather_flows(&client, &target(), &dropped, Some(10))
        .await
        .unwrap();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].dst.port, 9000);

    // Without the token, every agent refuses: reported per node, not fatal.
    let anonymous = AgentTarget::default();
    let (flows, failures) = gather_flows(&client, &anonymous, &FlowFilter::default(), None)
        .await
        .unwrap();
    assert!(flows.is_empty());
    assert_eq!(failures.len(), 3);
    assert!(
        failures.iter().any(|f| f.error.contains("401")),
        "{failures:?}"
    );
    drop(c.a);
    drop(c.b);
}

#[tokio::test]
async fn follow_streams_from_every_node() {
    let c = cluster().await;
    let client = c.peer.kube_client();
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let filter = FlowFilter::default();
    let task = tokio::spawn(async move { follow_flows(&client, &target(), &filter, tx).await });
    // node-c is down: reported first; then both streams are open.
    let mut failed = Vec::new();
    for _ in 0..200 {
        if c.a.state.live.receiver_count() > 0 && c.b.state.live.receiver_count() > 0 {
            break;
        }
        while let Ok(e) = rx.try_recv() {
            if let FollowEvent::Failed(f) = e {
                failed.push(f.node);
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let mut fa = c.cross.clone();
    fa.dst.port = 1111;
    let mut fb = c.cross.clone();
    fb.dst.port = 2222;
    c.a.record(&[fa]).await;
    c.b.record(&[fb]).await;
    let mut ports = Vec::new();
    while ports.len() < 2 {
        let e = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("followed flows from both nodes within 10 s")
            .expect("the follow keeps running");
        match e {
            FollowEvent::Flow { node, flow } => ports.push((node, flow.dst.port)),
            FollowEvent::Failed(f) => failed.push(f.node),
        }
    }
    ports.sort();
    assert_eq!(
        ports,
        vec![("node-a".to_string(), 1111), ("node-b".to_string(), 2222)]
    );
    while failed.is_empty() {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(FollowEvent::Failed(f))) => failed.push(f.node),
            Ok(Some(FollowEvent::Flow { .. })) => {}
            other => panic!("node-c's failure was not reported: {other:?}"),
        }
    }
    // node-c stays down: reported at each retry, always node-c.
    failed.dedup();
    assert_eq!(failed, vec!["node-c".to_string()]);
    task.abort();
}

#[tokio::test]
async fn follow_reopens_the_stream_of_an_agent_that_restarted() {
    let mut c = cluster().await;
    let client = c.peer.kube_client();
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let filter = FlowFilter::default();
    let task = tokio::spawn(async move { follow_flows(&client, &target(), &filter, tx).await });
    for _ in 0..400 {
        if c.a.state.live.receiver_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(
        c.a.state.live.receiver_count() > 0,
        "node-a's stream never opened"
    );
    c.a.restart().await;

    // The end of node-a's stream is reported with the retry...
    let report = loop {
        match tokio::time::timeout(Duration::from_secs(10), rx.recv()).await {
            Ok(Some(FollowEvent::Failed(f))) if f.node == "node-a" => break f.error,
            Ok(Some(_)) => {}
            other => panic!("node-a's stream end was not reported: {other:?}"),
        }
    };
    assert!(
        report.contains("ended the stream") && report.contains("reconnecting in"),
        "{report}"
    );
    // ...and the stream reopened: a flow recorded after the restart arrives.
    let mut after = c.cross.clone();
    after.dst.port = 3333;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut delivered = false;
    while !delivered && tokio::time::Instant::now() < deadline {
        c.a.record(std::slice::from_ref(&after)).await;
        let wait = tokio::time::sleep(Duration::from_millis(300));
        tokio::pin!(wait);
        loop {
            tokio::select! {
                e = rx.recv() => match e {
                    Some(FollowEvent::Flow { node, flow }) if node == "node-a" && flow.dst.port == 3333 => {
                        delivered = true;
                        break;
                    }
                    Some(_) => {}
                    None => panic!("the follow ended"),
                },
                _ = &mut wait => break,
            }
        }
    }
    assert!(delivered, "no flow from node-a after its restart");
    task.abort();
}

#[tokio::test]
async fn the_cli_prints_the_cluster_view_and_node_failures() {
    let c = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = c.peer.kubeconfig(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let args = [
        "flows".to_string(),
        "--cluster".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--agent-token-file".into(),
        token.display().to_string(),
        "-o".into(),
        "json".into(),
    ];
    let out = flowpol(args.to_vec()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let flows: Vec<FlowRecord> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(flows.len(), 3);
    let failure: serde_json::Value = serde_json::from_str(
        stderr
            .lines()
            .find(|l| l.contains("node_failure"))
            .unwrap_or_else(|| panic!("no node failure on stderr:\n{stderr}")),
    )
    .unwrap();
    assert_eq!(failure["node_failure"]["node"], "node-c");

    // The table form warns in words; a label selector narrows on every node.
    let args = [
        "flows".to_string(),
        "--cluster".into(),
        "--kubeconfig".into(),
        kubeconfig.display().to_string(),
        "--agent-token-file".into(),
        token.display().to_string(),
        "-l".into(),
        "app=db".into(),
    ];
    let out = flowpol(args.to_vec()).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        stdout.lines().count(),
        2,
        "header and the db flow:\n{stdout}"
    );
    assert!(stdout.contains("shop/db:5432"), "{stdout}");
    assert!(
        stderr.contains("warning: node node-c (agent pod flowpol-ccccc)"),
        "{stderr}"
    );
}

/// Runs the flowpol CLI off the async runtime.
async fn flowpol(args: Vec<String>) -> std::process::Output {
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_flowpol"))
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn recommend_and_drops_read_every_node_with_cluster() {
    let c = cluster().await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = c.peer.kubeconfig(dir.path());
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let manifests = dir.path().join("namespaces.yaml");
    std::fs::write(
        &manifests,
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: tools}\n",
    )
    .unwrap();
    let common = |cmd: &str| -> Vec<String> {
        vec![
            cmd.to_string(),
            "--cluster".into(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--agent-token-file".into(),
            token.display().to_string(),
            "--manifests".into(),
            manifests.display().to_string(),
        ]
    };

    // Policies from both nodes' flows: web → api (node-a and node-b saw it)
    // and api → db (only node-b did).
    let mut args = common("recommend");
    args.extend(["-o".into(), "json".into()]);
    let out = flowpol(args).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(
        stderr.contains("warning: node node-c (agent pod flowpol-ccccc)"),
        "{stderr}"
    );
    let list: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let policies = list["items"].as_array().unwrap();
    let named = |name: &str| {
        policies
            .iter()
            .find(|p| p["metadata"]["name"] == name && p["metadata"]["namespace"] == "shop")
            .unwrap_or_else(|| panic!("no shop/{name} in {stdout}"))
    };
    let db = named("allow-db").to_string();
    assert!(db.contains("5432") && db.contains("\"api\""), "{db}");
    let api = named("allow-api").to_string();
    assert!(api.contains("8080") && api.contains("\"web\""), "{api}");

    // The dropped debug → web flow, recorded on node-a only.
    let out = flowpol(common("drops")).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("tools/debug") && stdout.contains("9000"),
        "{stdout}"
    );

    // Every agent refusing (no token) is an error, not an empty recommendation.
    let mut args = common("recommend");
    args.drain(4..6);
    let out = flowpol(args).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the agents returned no flows (3 of 3 nodes failed)"),
        "{stderr}"
    );
}
