//! The Kubernetes-API state source against a peer that speaks the real list/watch protocol
//! over HTTP (tests/support/apiserver.rs); kube-rs talks to it unchanged.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::sync::Arc;
use std::time::Duration;

use apiserver::{ApiServer, objects};
use chrono::{DateTime, Utc};
use flowpol::enrich::kube_source::KubeSource;
use flowpol::enrich::timeline::{Key, Owner};
use flowpol::enrich::{Identity, run_source};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(20);

struct Running {
    identity: Arc<Identity>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), flowpol::enrich::IdentityError>>,
}

impl Running {
    async fn stop(self) {
        self.stop.send_replace(true);
        let res = tokio::time::timeout(WAIT, self.task)
            .await
            .expect("the kube source stops within the timeout after shutdown")
            .expect("the source task does not panic");
        res.expect("the kube source stops cleanly");
    }
}

fn start(peer: &ApiServer) -> Running {
    let source = KubeSource::from_config(peer.kube_config()).expect("kube client for the peer");
    let identity = Identity::new();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run_source(
        identity.clone(),
        Box::new(source),
        None,
        Duration::from_secs(3600),
        rx,
    ));
    Running {
        identity,
        stop,
        task,
    }
}

fn seed(peer: &ApiServer) {
    peer.apply(objects::namespace("default"));
    peer.apply(objects::namespace("shop"));
    peer.apply(objects::node("node-a", "172.18.0.2"));
    peer.apply(objects::replicaset("shop", "web"));
    peer.apply(objects::deployment_pod(
        "shop",
        "web-5d8f9c7b6-aaaaa",
        "11111111-1111-4111-8111-111111111111",
        "10.244.0.10",
        "web",
    ));
    peer.apply(objects::service(
        "shop",
        "web",
        "10.96.0.20",
        80,
        json!(8080),
    ));
    peer.apply(objects::endpoint_slice(
        "shop",
        "web",
        &["10.244.0.10"],
        8080,
    ));
}

fn pod_name_at(identity: &Identity, ip: &str, t: DateTime<Utc>) -> Option<String> {
    match identity
        .owner_at(&Key::Ip(ip.parse().unwrap()), t)?
        .as_ref()
    {
        Owner::Pod(p) => Some(p.name.clone()),
        _ => None,
    }
}

/// Polls until `f` holds (watch events arrive asynchronously).
async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn initial_list_makes_ready_then_watch_events_update_the_time_line() {
    let peer = ApiServer::start().await;
    seed(&peer);
    let run = start(&peer);
    tokio::time::timeout(WAIT, run.identity.wait_ready())
        .await
        .expect("ready after the first list of every kind");
    for kind in [
        "Pod",
        "Node",
        "Service",
        "EndpointSlice",
        "NetworkPolicy",
        "Namespace",
    ] {
        assert!(peer.lists(kind) >= 1, "{kind} was listed");
    }
    let now = Utc::now();
    assert_eq!(
        pod_name_at(&run.identity, "10.244.0.10", now).as_deref(),
        Some("web-5d8f9c7b6-aaaaa")
    );
    match run
        .identity
        .owner_at(&Key::Ip("10.244.0.10".parse().unwrap()), now)
        .as_deref()
    {
        Some(Owner::Pod(p)) => {
            assert_eq!(p.workload.as_ref().unwrap().to_string(), "Deployment/web");
            assert_eq!(p.selector.get("app").map(String::as_str), Some("web"));
            assert!(!p.labels.contains_key("pod-template-hash"));
        }
        other => panic!("expected the web pod, got {other:?}"),
    }

    // ADDED over the watch.
    peer.apply(objects::deployment_pod(
        "shop",
        "web-5d8f9c7b6-bbbbb",
        "22222222-2222-4222-8222-222222222222",
        "10.244.0.11",
        "web",
    ));
    eventually("the new pod arrives over the watch", || {
        pod_name_at(&run.identity, "10.244.0.11", Utc::now()).is_some()
    })
    .await;

    // DELETED over the watch: the IP is free afterwards, the pod stays resolvable before.
    let before_delete = Utc::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    peer.delete("Pod", "shop", "web-5d8f9c7b6-aaaaa");
    eventually("the deletion arrives over the watch", || {
        pod_name_at(
            &run.identity,
            "10.244.0.10",
            Utc::now() + chrono::Duration::seconds(60),
        )
        .is_none()
    })
    .await;
    assert_eq!(
        pod_name_at(&run.identity, "10.244.0.10", before_delete).as_deref(),
        Some("web-5d8f9c7b6-aaaaa"),
        "a flow seen before the deletion still resolves to the deleted pod"
    );
    // A BOOKMARK changes nothing and breaks nothing.
    peer.bookmark();
    assert!(run.identity.is_ready());
    run.stop().await;
}

#[tokio::test]
async fn gone_410_makes_the_watcher_relist_and_the_state_catches_up() {
    let peer = ApiServer::start().await;
    seed(&peer);
    let run = start(&peer);
    tokio::time::timeout(WAIT, run.identity.wait_ready())
        .await
        .expect("ready");
    let lists_before = peer.lists("Pod");
    let before = Utc::now();
    tokio::time::sleep(Duration::from_millis(10)).await;
    // While nobody watches: the web pod goes, its IP goes to a new pod; history is compacted.
    peer.change_unseen_and_compact(|p| {
        p.delete("Pod", "shop", "web-5d8f9c7b6-aaaaa");
        p.apply(objects::deployment_pod(
            "shop",
            "api-5d8f9c7b6-ccccc",
            "33333333-3333-4333-8333-333333333333",
            "10.244.0.10",
            "api",
        ));
    });
    eventually("the re-list brings the new owner of 10.244.0.10", || {
        pod_name_at(&run.identity, "10.244.0.10", Utc::now()).as_deref()
            == Some("api-5d8f9c7b6-ccccc")
    })
    .await;
    assert!(
        peer.lists("Pod") > lists_before,
        "the watcher re-listed Pods after 410 Gone"
    );
    assert_eq!(
        pod_name_at(&run.identity, "10.244.0.10", before).as_deref(),
        Some("web-5d8f9c7b6-aaaaa"),
        "before the reuse the IP still resolves to the old pod"
    );
    run.stop().await;
}

#[tokio::test]
async fn a_dropped_connection_resumes_the_watch_without_losing_events() {
    let peer = ApiServer::start().await;
    seed(&peer);
    let run = start(&peer);
    tokio::time::timeout(WAIT, run.identity.wait_ready())
        .await
        .expect("ready");
    let watches_before = peer.watches("Pod");
    peer.drop_connections();
    // Changed right after the cut: the re-opened watch replays it from the last resourceVersion.
    peer.apply(objects::deployment_pod(
        "shop",
        "web-5d8f9c7b6-ddddd",
        "44444444-4444-4444-8444-444444444444",
        "10.244.0.12",
        "web",
    ));
    eventually("the event made while disconnected arrives", || {
        pod_name_at(&run.identity, "10.244.0.12", Utc::now()).is_some()
    })
    .await;
    assert!(
        peer.watches("Pod") > watches_before,
        "the watch was re-opened"
    );
    run.stop().await;
}

#[tokio::test]
async fn a_bad_object_is_named_and_the_last_good_state_stays() {
    let peer = ApiServer::start().await;
    seed(&peer);
    let run = start(&peer);
    tokio::time::timeout(WAIT, run.identity.wait_ready())
        .await
        .expect("ready");
    // The web pod turns into something the Pod schema cannot read.
    let mut bad = objects::deployment_pod(
        "shop",
        "web-5d8f9c7b6-aaaaa",
        "11111111-1111-4111-8111-111111111111",
        "10.244.0.10",
        "web",
    );
    bad["spec"]["containers"] = json!("not a list");
    peer.apply(bad);
    eventually("the bad object is reported", || {
        run.identity
            .problems()
            .iter()
            .any(|p| p.contains("Pod shop/web-5d8f9c7b6-aaaaa"))
    })
    .await;
    // Still resolvable from its last good version, and the source keeps going.
    assert_eq!(
        pod_name_at(&run.identity, "10.244.0.10", Utc::now()).as_deref(),
        Some("web-5d8f9c7b6-aaaaa")
    );
    peer.apply(objects::node("node-b", "172.18.0.3"));
    eventually("later events still arrive", || {
        matches!(
            run.identity
                .owner_at(&Key::Ip("172.18.0.3".parse().unwrap()), Utc::now())
                .as_deref(),
            Some(Owner::Node(n)) if n.name == "node-b"
        )
    })
    .await;
    run.stop().await;
}

#[tokio::test]
async fn not_ready_until_every_kind_is_listed() {
    // No server at all: never ready, and shutdown still ends the source.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    let source = KubeSource::from_config(kube::Config::new(url.parse().unwrap())).unwrap();
    let identity = Identity::new();
    let (stop, rx) = watch::channel(false);
    let task = tokio::spawn(run_source(
        identity.clone(),
        Box::new(source),
        None,
        Duration::from_secs(3600),
        rx,
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!identity.is_ready(), "not ready without a first list");
    stop.send_replace(true);
    tokio::time::timeout(WAIT, task)
        .await
        .expect("stops after shutdown")
        .unwrap()
        .unwrap();
}
