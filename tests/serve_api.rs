//! The agent's HTTP API over real HTTP, serving a store filled through the
//! Store API (no eBPF, no root): authentication, health, readiness, metrics,
//! filters, paging, follow mode, malformed queries, and oversized or non-HTTP requests.
#[path = "serve_support/mod.rs"]
mod support;

use std::time::Duration;

use flowpol::serve::flows_api::FlowsPage;
use flowpol_recommender::flow::{FlowRecord, Verdict};
use support::{TOKEN, TestAgent, at, get, get_with, pod_flow, stream};

fn sample() -> Vec<FlowRecord> {
    let mut v = Vec::new();
    for i in 0..25 {
        let t = at("2026-11-21T10:00:00Z") + chrono::Duration::seconds(i);
        v.push(pod_flow(
            ("10.244.0.10", "shop", "web"),
            ("10.244.0.20", "shop", "api"),
            8080,
            t,
            Verdict::Forwarded,
        ));
    }
    v.push(pod_flow(
        ("10.244.0.30", "tools", "debug"),
        ("10.244.0.20", "shop", "api"),
        9000,
        at("2026-11-21T10:01:00Z"),
        Verdict::Dropped,
    ));
    v
}

fn page(body: &str) -> FlowsPage {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not a flows page ({e}): {body}"))
}

#[tokio::test]
async fn health_is_open_everything_else_needs_the_token() {
    let mut agent = TestAgent::start(&sample()).await;
    let a = agent.addr;
    let h = get(a, "/healthz", None).await;
    assert_eq!((h.status, h.body.as_str()), (200, "ok\n"));
    let r = get(a, "/readyz", None).await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert!(r.body.contains("not attached"), "{}", r.body);
    agent.state.readiness.set_attached();
    agent.state.readiness.set_identity(None);
    assert_eq!(get(a, "/readyz", None).await.status, 200);

    for path in ["/metrics", "/api/v1/flows"] {
        let none = get(a, path, None).await;
        assert_eq!(none.status, 401, "{path} without a token: {}", none.body);
        assert!(none.body.contains("missing bearer token"), "{}", none.body);
        let wrong = get(a, path, Some("s3cret-token-for-testz")).await;
        assert_eq!(wrong.status, 401, "{path} with a wrong token");
        let short = get(a, path, Some("s3cret")).await;
        assert_eq!(short.status, 401, "{path} with a prefix of the token");
        assert_eq!(get(a, path, Some(TOKEN)).await.status, 200, "{path}");
        // Through the API server's proxy the token travels in its own header.
        let proxied = get_with(a, path, &[("x-flowpol-token", TOKEN)]).await;
        assert_eq!(proxied.status, 200, "{path} with X-Flowpol-Token");
    }
    let unknown = get(a, "/api/v1/nothing", Some(TOKEN)).await;
    assert_eq!(unknown.status, 404);
    agent.stop().await;
}

#[tokio::test]
async fn flows_filter_and_page_with_a_cursor() {
    let mut agent = TestAgent::start(&sample()).await;
    let a = agent.addr;
    let all = page(&get(a, "/api/v1/flows", Some(TOKEN)).await.body);
    assert_eq!(all.flows.len(), 26);
    assert_eq!(all.next_cursor, None);
    assert_eq!(
        all.flows,
        sample(),
        "rows come back as written, oldest first"
    );

    // Pages of 10 cover every row once, in order.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let path = match &cursor {
            Some(c) => format!("/api/v1/flows?limit=10&cursor={c}"),
            None => "/api/v1/flows?limit=10".to_string(),
        };
        let p = page(&get(a, &path, Some(TOKEN)).await.body);
        pages += 1;
        seen.extend(p.flows);
        match p.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    assert_eq!(pages, 3);
    assert_eq!(seen, sample());

    let q = |query: &'static str| async move {
        let ans = get(a, &format!("/api/v1/flows?{query}"), Some(TOKEN)).await;
        assert_eq!(ans.status, 200, "{query}: {}", ans.body);
        assert_eq!(ans.content_type, "application/json");
        page(&ans.body).flows
    };
    assert_eq!(q("verdict=dropped").await.len(), 1);
    assert_eq!(q("namespace=tools").await.len(), 1);
    assert_eq!(q("namespace=shop").await.len(), 26);
    assert_eq!(q("selector=app%3Dweb").await.len(), 25);
    assert_eq!(q("selector=app%20in%20(debug,web)").await.len(), 26);
    assert_eq!(q("selector=app%3Dapi,!missing").await.len(), 26);
    assert_eq!(
        q("selector=app%21%3Dapi").await.len(),
        26,
        "either end may match"
    );
    assert_eq!(
        q("namespace=tools&selector=app%3Dapi").await.len(),
        0,
        "same end"
    );
    assert_eq!(q("workload=Deployment/debug&protocol=TCP").await.len(), 1);
    assert_eq!(q("protocol=UDP").await.len(), 0);
    assert_eq!(q("since=2026-11-21T10:00:20Z").await.len(), 6);
    let merged = q("merged=true").await;
    assert_eq!(merged.len(), 2, "one merged flow per 5-tuple and verdict");
    let web = merged
        .iter()
        .find(|f| f.verdict == Verdict::Forwarded)
        .unwrap();
    assert_eq!(web.packets, 25 * 4);
    assert_eq!(q("merged=true&limit=1").await.len(), 1);
    agent.stop().await;
}

#[tokio::test]
async fn malformed_queries_get_400_naming_the_problem() {
    let mut agent = TestAgent::start(&sample()).await;
    for (query, says) in [
        ("selector=app%3D%3D%3Dx", "selector"),
        ("selector=app%20in%20web", "selector"),
        ("since=yesterday", "since"),
        ("verdict=maybe", "unknown verdict"),
        ("protocol=XTP", "protocol"),
        ("limit=0", "limit"),
        ("limit=abc", "limit"),
        ("cursor=-4", "cursor"),
        ("namspace=shop", "namspace"),
        ("follow=true&limit=5", "follow"),
        ("merged=perhaps", "merged"),
    ] {
        let ans = get(agent.addr, &format!("/api/v1/flows?{query}"), Some(TOKEN)).await;
        assert_eq!(ans.status, 400, "{query}: {}", ans.body);
        assert!(ans.body.contains(says), "{query}: {}", ans.body);
    }
    agent.stop().await;
}

/// Prometheus text: `name{labels} value` lines, `#` comments, `# EOF` last.
fn parse_metrics(text: &str) -> Vec<(String, f64)> {
    assert!(
        text.ends_with("# EOF\n"),
        "OpenMetrics text ends with # EOF"
    );
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (series, value) = l.rsplit_once(' ').unwrap_or_else(|| panic!("bad line {l}"));
            let value: f64 = value.parse().unwrap_or_else(|_| panic!("bad value in {l}"));
            let name_end = series.find('{').unwrap_or(series.len());
            assert!(
                series[..name_end]
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad metric name in {l}"
            );
            (series.to_string(), value)
        })
        .collect()
}

fn value(m: &[(String, f64)], series: &str) -> f64 {
    m.iter().find(|(s, _)| s == series).map_or(0.0, |(_, v)| *v)
}

#[tokio::test]
async fn metrics_parse_and_move_with_recorded_flows() {
    let mut agent = TestAgent::start(&[]).await;
    let a = agent.addr;
    let before = parse_metrics(&get(a, "/metrics", Some(TOKEN)).await.body);
    let series = r#"flowpol_flows_total{namespace="shop",verdict="forwarded",direction="egress"}"#;
    assert_eq!(value(&before, series), 0.0);
    agent.record(&sample()).await;
    let ans = get(a, "/metrics", Some(TOKEN)).await;
    assert!(
        ans.content_type.starts_with("application/openmetrics-text"),
        "{}",
        ans.content_type
    );
    let after = parse_metrics(&ans.body);
    assert_eq!(value(&after, series), 25.0);
    assert_eq!(
        value(
            &after,
            r#"flowpol_dropped_packets_total{reason="NETFILTER_DROP"}"#
        ),
        4.0
    );
    assert_eq!(
        value(
            &after,
            r#"flowpol_bytes_total{namespace="shop",verdict="forwarded",direction="ingress"}"#
        ),
        25.0 * 700.0
    );
    // A query moves the API's own latency histogram.
    get(a, "/api/v1/flows?limit=1", Some(TOKEN)).await;
    let m = parse_metrics(&get(a, "/metrics", Some(TOKEN)).await.body);
    assert!(value(&m, "flowpol_api_query_duration_seconds_count") >= 1.0);
    agent.stop().await;
}

#[tokio::test]
async fn follow_delivers_flows_recorded_after_it_started() {
    let mut agent = TestAgent::start(&sample()).await;
    let (status, mut lines) = stream(
        agent.addr,
        "/api/v1/flows?follow=true&namespace=tools",
        TOKEN,
    )
    .await;
    assert_eq!(status, 200);
    // Wait until the stream's subscription is in place.
    for _ in 0..100 {
        if agent.state.live.receiver_count() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let other = pod_flow(
        ("10.244.0.10", "shop", "web"),
        ("10.244.0.20", "shop", "api"),
        8080,
        chrono::Utc::now(),
        Verdict::Forwarded,
    );
    let wanted = pod_flow(
        ("10.244.0.30", "tools", "debug"),
        ("10.244.0.20", "shop", "api"),
        8443,
        chrono::Utc::now(),
        Verdict::Forwarded,
    );
    agent.record(&[other, wanted.clone()]).await;
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next())
        .await
        .expect("a followed flow within 10 s")
        .expect("the stream stays open");
    let got: FlowRecord = serde_json::from_str(&line).unwrap();
    assert_eq!(
        got, wanted,
        "only the flow the filter selects, none stored before"
    );
    // Shutdown ends the stream.
    agent.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(10), lines.next()).await;
    assert_eq!(end.expect("the stream ends at shutdown"), None);
}

/// `--config`: file values apply, environment beats the file, flags beat both;
/// an unknown key is refused naming the file and the key.
#[tokio::test]
async fn config_file_env_and_flags_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let write_db = |name: &str, port: u16| {
        let path = dir.path().join(name);
        let flows = vec![pod_flow(
            ("10.244.0.10", "shop", "web"),
            ("10.244.0.20", "shop", "api"),
            port,
            at("2026-11-21T10:00:00Z"),
            Verdict::Forwarded,
        )];
        (path, flows)
    };
    let mut dbs = Vec::new();
    for (name, port) in [("file.db", 1), ("env.db", 2), ("flag.db", 3)] {
        let (path, flows) = write_db(name, port);
        let s = flowpol::store::Store::open(&path).await.unwrap();
        s.write_flows(&flows).await.unwrap();
        s.close().await;
        dbs.push(path);
    }
    let config = dir.path().join("flowpol.yaml");
    std::fs::write(
        &config,
        format!("db: {}\nlog-format: json\n", dbs[0].display()),
    )
    .unwrap();
    let run = |extra_env: Option<&std::path::Path>, flag: Option<&std::path::Path>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_flowpol"));
        cmd.env_remove("FLOWPOL_DB")
            .args(["flows", "-o", "json", "--config"])
            .arg(&config);
        if let Some(e) = extra_env {
            cmd.env("FLOWPOL_DB", e);
        }
        if let Some(f) = flag {
            cmd.arg("--db").arg(f);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let f: FlowRecord =
            serde_json::from_slice(out.stdout.split(|b| *b == b'\n').next().unwrap()).unwrap();
        f.dst.port
    };
    assert_eq!(run(None, None), 1, "the file's db");
    assert_eq!(run(Some(&dbs[1]), None), 2, "environment beats the file");
    assert_eq!(run(Some(&dbs[1]), Some(&dbs[2])), 3, "the flag beats both");

    std::fs::write(&config, "dbb: /nowhere\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flowpol"))
        .args(["flows", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("flowpol.yaml") && err.contains("unknown key `dbb`"),
        "{err}"
    );
}

/// Sends `request` as raw bytes and returns what the server answered before closing
/// (empty when it closed without an answer).
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    // The server may answer and close before reading all of an oversized request.
    let _ = s.write_all(request).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), s.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn oversized_and_malformed_requests_are_refused_and_the_server_stays_up() {
    let mut agent = TestAgent::start(&sample()).await;
    let a = agent.addr;
    let status_line = |answer: &str| answer.lines().next().unwrap_or("").to_string();
    // A 64 KiB query string: over the 16 KiB request limit.
    let long = format!(
        "GET /api/v1/flows?namespace={} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    let answer = raw_exchange(a, long.as_bytes()).await;
    assert!(
        answer.is_empty()
            || status_line(&answer).contains(" 431 ")
            || status_line(&answer).contains(" 414 "),
        "oversized request: {}",
        status_line(&answer)
    );
    // 64 KiB of headers.
    let headers = format!(
        "GET /healthz HTTP/1.1\r\nhost: x\r\nx-filler: {}\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    let answer = raw_exchange(a, headers.as_bytes()).await;
    assert!(
        status_line(&answer).contains(" 431 "),
        "oversized headers: {}",
        status_line(&answer)
    );
    // Not HTTP at all.
    let answer = raw_exchange(a, b"\x16\x03\x01 hello, this is not HTTP\r\n\r\n").await;
    assert!(
        status_line(&answer).contains(" 400 "),
        "garbage: {}",
        status_line(&answer)
    );
    // A header that cannot be a token, and a body on a query.
    let odd = get_with(
        a,
        "/api/v1/flows",
        &[("authorization", "Basic Zm9vOmJhcg==")],
    )
    .await;
    assert_eq!(odd.status, 401, "{}", odd.body);
    let with_body = raw_exchange(
        a,
        format!(
            "GET /api/v1/flows?limit=1 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
             content-length: 5\r\nconnection: close\r\n\r\nhello"
        )
        .as_bytes(),
    )
    .await;
    assert!(
        status_line(&with_body).contains(" 200 "),
        "{}",
        status_line(&with_body)
    );
    // Unknown methods on a read-only API.
    let post = raw_exchange(
        a,
        format!(
            "POST /api/v1/flows HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {TOKEN}\r\n\
             content-length: 0\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    assert!(
        status_line(&post).contains(" 405 "),
        "{}",
        status_line(&post)
    );
    // After all that, the server still answers.
    assert_eq!(get(a, "/healthz", None).await.status, 200);
    let ok = get(a, "/api/v1/flows?limit=1", Some(TOKEN)).await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    agent.stop().await;
}
