//! The real agent (eBPF capture, identity from manifests) serving its HTTP API
//! while traffic flows between network namespaces: every endpoint over real
//! HTTP with and without the token, metrics that move with traffic, follow
//! mode, a 400 for a bad label selector, and a clean SIGTERM shutdown; a full flow map and
//! ring buffer counted in the log, the metrics and `flowpol flows`.
#[path = "support/netns.rs"]
mod netns;
#[path = "serve_support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use flowpol::serve::flows_api::FlowsPage;
use flowpol_recommender::flow::FlowRecord;
use netns::{Agent, Lab, require_root};
use serde_json::json;
use support::{TOKEN, get, stream};

fn manifests(dir: &std::path::Path, client_ip: &str, web_ip: &str) -> std::path::PathBuf {
    let pod = |name: &str, app: &str, ip: &str| {
        json!({"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": name, "namespace": "shop", "uid": format!("uid-{name}"),
                            "labels": {"app": app}},
               "spec": {"nodeName": "node-a", "containers": [{"name": "c"}]},
               "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
    };
    let list = json!({"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
        pod("client", "client", client_ip),
        pod("web", "web", web_ip),
    ]});
    let path = dir.join("cluster.json");
    std::fs::write(&path, list.to_string()).unwrap();
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<f64>().unwrap())
        })
        .unwrap_or(0.0)
}

/// One request/answer over TCP from `client` (in A) to a server in B.
fn connect_once(lab: &Lab, port: u16) {
    let dst = SocketAddr::new(lab.hosts[1].v4, port);
    lab.hosts[0].ns.within(move || {
        let mut s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
        s.write_all(b"ping\n").unwrap();
        let mut buf = [0u8; 5];
        s.read_exact(&mut buf).unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_agent_serves_its_api_while_capturing() {
    require_root();
    let lab = Lab::new(2);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let file = manifests(
        dir.path(),
        &lab.hosts[0].v4.to_string(),
        &lab.hosts[1].v4.to_string(),
    );
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let addr: SocketAddr = listen.parse().unwrap();
    let mut agent = Agent::start(&[
        "--interval",
        "1s",
        "--manifests",
        file.to_str().unwrap(),
        "--listen",
        &listen,
        "--token-file",
        token.to_str().unwrap(),
    ]);

    // A server in B answering every connection.
    let server_ip = lab.hosts[1].v4;
    let (tx, rx) = std::sync::mpsc::channel();
    let _server = lab.hosts[1].ns.spawn(move || {
        let l = TcpListener::bind(SocketAddr::new(server_ip, 0)).unwrap();
        tx.send(l.local_addr().unwrap().port()).unwrap();
        for c in l.incoming().take(3) {
            let mut c = c.unwrap();
            let mut buf = [0u8; 5];
            if c.read_exact(&mut buf).is_ok() {
                let _ = c.write_all(b"pong\n");
            }
        }
    });
    let web_port = rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // Health needs no token; readiness comes once attached and the state is listed.
    assert_eq!(get(addr, "/healthz", None).await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(addr, "/readyz", None).await;
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {}", r.body);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for path in ["/metrics", "/api/v1/flows"] {
        assert_eq!(
            get(addr, path, None).await.status,
            401,
            "{path} without token"
        );
        assert_eq!(
            get(addr, path, Some("nope")).await.status,
            401,
            "{path} bad token"
        );
    }
    let bad = get(addr, "/api/v1/flows?selector=app%3D%3Dx%2C(", Some(TOKEN)).await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert!(bad.body.contains("label selector"), "{}", bad.body);

    let series = r#"flowpol_flows_total{namespace="shop",verdict="forwarded",direction="ingress"}"#;
    let before = get(addr, "/metrics", Some(TOKEN)).await;
    assert_eq!(before.status, 200);
    let before = metric(&before.body, series);

    // Follow first, then make the traffic.
    let (status, mut lines) =
        stream(addr, "/api/v1/flows?follow=true&selector=app%3Dweb", TOKEN).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lab_ref = &lab;
    tokio::task::block_in_place(|| connect_once(lab_ref, web_port));
    let followed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let line = lines.next().await.expect("the follow stream stays open");
            let f: FlowRecord = serde_json::from_str(&line).unwrap();
            if f.dst.ip == server_ip && f.dst.port == web_port {
                return f;
            }
        }
    })
    .await
    .expect("the flow made after follow started arrives within 20 s");
    assert_eq!(followed.dst.namespace.as_deref(), Some("shop"));
    assert_eq!(
        followed.dst.labels.get("app").map(String::as_str),
        Some("web")
    );

    // The same flow is queryable, and the metrics moved.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ans = get(
            addr,
            "/api/v1/flows?selector=app%3Dweb&protocol=TCP",
            Some(TOKEN),
        )
        .await;
        assert_eq!(ans.status, 200, "{}", ans.body);
        let page: FlowsPage = serde_json::from_str(&ans.body).unwrap();
        if page.flows.iter().any(|f| f.dst.port == web_port) {
            break;
        }
        assert!(Instant::now() < deadline, "flow not stored: {}", ans.body);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let after = get(addr, "/metrics", Some(TOKEN)).await.body;
    assert!(
        metric(&after, series) > before,
        "{series} did not move:\n{after}"
    );
    assert!(
        metric(&after, "flowpol_drain_duration_seconds_count") >= 1.0,
        "{after}"
    );
    assert!(
        after.contains("flowpol_map_fill_ratio{map=\"flows\"}"),
        "{after}"
    );
    // Two socket flow map copies of the default 65 536 entries, a 64-byte value per entry and CPU.
    assert!(
        metric(&after, "flowpol_kernel_map_bytes") >= (2 * 65536 * 64) as f64,
        "{after}"
    );
    assert!(
        metric(&after, "flowpol_identity_cache_keys") >= 2.0,
        "{after}"
    );

    // SIGTERM: the agent drains, flushes, closes the API and exits 0.
    let flows = tokio::task::block_in_place(|| agent.stop());
    assert!(
        flows
            .iter()
            .any(|f| f["dst"]["port"].as_u64() == Some(u64::from(web_port))),
        "the flow is in the database after shutdown"
    );
    // Follow streams get the final drain's flows, then end.
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next().await {
            serde_json::from_str::<FlowRecord>(&line).expect("only flow lines");
        }
    })
    .await
    .expect("follow streams end at shutdown");
    assert!(
        TcpStream::connect(addr).is_err(),
        "the API port is closed after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn privileged_fault_full_flow_map_and_ring_buffer_are_counted_in_metrics_and_flows_output() {
    require_root();
    let lab = Lab::new(2);
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let addr: SocketAddr = listen.parse().unwrap();
    // 64 map entries: most flows spill to the 1 MiB ring buffer, which is read once per
    // interval, so a burst of spilled packets fills it too.
    let mut agent = Agent::start(&[
        "--interval",
        "2s",
        "--flow-map-entries",
        "64",
        "--listen",
        &listen,
        "--token-file",
        token.to_str().unwrap(),
    ]);
    let sink_ip = lab.hosts[1].v4;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    let sink = lab.hosts[1].ns.spawn(move || {
        let s = std::net::UdpSocket::bind(SocketAddr::new(sink_ip, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tx.send(s.local_addr().unwrap().port()).unwrap();
        let mut buf = [0u8; 256];
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            let _ = s.recv_from(&mut buf);
        }
    });
    let sink_port = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    // 500 flows × 100 datagrams: far more spilled packets than the ring holds in an interval.
    let sent = lab.hosts[0].ns.within(move || {
        let mut sent = 0u64;
        for _ in 0..500 {
            let u = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            u.connect(SocketAddr::new(sink_ip, sink_port)).unwrap();
            for _ in 0..100 {
                if u.send(&[7u8; 16]).is_ok() {
                    sent += 1;
                }
            }
        }
        sent
    });
    assert!(sent > 40_000, "only {sent} datagrams sent");
    // The metrics show both losses once a drain has counted them.
    let series = |counter: &str| format!("flowpol_capture_losses_total{{counter=\"{counter}\"}}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let metrics = loop {
        let text = get(addr, "/metrics", Some(TOKEN)).await.body;
        if metric(&text, &series("flow_map_full")) > 0.0
            && metric(&text, &series("ringbuf_full")) > 0.0
        {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "losses not in /metrics within 20 s:\n{}",
            text.lines()
                .filter(|l| l.contains("losses"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    // SIGTERM drains once more; every loss is stored with its interval.
    agent.stop();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sink.join().unwrap();
    let (records, reported) = netns::stored_flows_and_losses(&agent.db);
    for counter in ["flow_map_full", "ringbuf_full"] {
        let in_metrics = metric(&metrics, &series(counter)) as u64;
        let in_flows = reported.get(counter).copied().unwrap_or(0);
        // Other tests' traffic may add losses after the scrape, never remove any.
        assert!(
            in_flows >= in_metrics && in_metrics > 0,
            "{counter}: {in_metrics} in /metrics, {in_flows} reported by flowpol flows ({reported:?})"
        );
        assert!(
            agent
                .log
                .iter()
                .any(|l| l.contains("capture loss") && l.contains(counter)),
            "the agent's log names {counter}:\n{}",
            agent.log.join("\n")
        );
    }
    // The flows of the burst that fit (map or ring) are stored, none with more datagrams
    // than were sent. Forwarded records only: datagrams the sink's full receive buffer
    // dropped are also in `dropped` records (the sender did send them).
    let stored: u64 = records
        .iter()
        .filter(|r| {
            r["protocol"] == "UDP" && r["dst"]["port"] == sink_port && r["verdict"] == "forwarded"
        })
        .map(|r| r["packets"].as_u64().unwrap())
        .sum();
    assert!(
        stored > 0 && stored <= sent,
        "stored {stored} datagrams of {sent}"
    );
}
