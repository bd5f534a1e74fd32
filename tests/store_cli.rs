//! `flowpol flows` end to end: the real binary on a database filled through
//! the Store API.
#[path = "store_support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use chrono::{Duration, Utc};
use flowpol::store::{CaptureLoss, Store};
use flowpol_recommender::flow::{FlowRecord, Verdict};
use support::{bare, full_record, pod};

fn flowpol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowpol"))
        .args(args)
        .env_remove("FLOWPOL_DB")
        .output()
        .expect("run flowpol")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).unwrap()
}

fn json_lines(o: &Output) -> Vec<serde_json::Value> {
    assert!(o.status.success(), "flowpol failed: {}", stderr(o));
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .collect()
}

/// Three intervals of one TCP flow web/frontend -> shop/api (forwarded), a
/// dropped UDP flow without identity, and an old unanswered SYN.
async fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("flows.db");
    let store = Store::open(&path).await.unwrap();
    let now = Utc::now();
    for i in 0..3 {
        let mut f = full_record();
        f.verdict = Verdict::Forwarded;
        f.drop_reason = None;
        f.packets = 10;
        f.bytes = 1_000;
        f.reply_packets = 5;
        f.reply_bytes = 50_000;
        f.first_seen = now - Duration::minutes(10) + Duration::seconds(5 * i);
        f.last_seen = f.first_seen + Duration::seconds(4);
        store
            .write_drain(
                &[f],
                &[CaptureLoss {
                    counter: "flow_map_full".into(),
                    delta: 2,
                }],
                f_time(now, i),
                Some("node-a"),
            )
            .await
            .unwrap();
    }
    let mut dropped = bare(
        "10.0.0.9",
        5353,
        "192.168.7.1",
        53,
        now - Duration::minutes(5),
    );
    dropped.verdict = Verdict::Dropped;
    dropped.drop_reason = Some("NETFILTER_DROP".into());
    let mut syn = bare(
        "10.0.0.9",
        40000,
        "10.0.0.77",
        443,
        now - Duration::hours(3),
    );
    syn.protocol = flowpol_recommender::flow::Protocol::Tcp;
    syn.verdict = Verdict::Unanswered;
    syn.src = pod("10.0.0.9", 40000, "web", "frontend");
    store.write_flows(&[dropped, syn]).await.unwrap();
    store.close().await;
    path
}

fn f_time(now: chrono::DateTime<Utc>, i: i64) -> chrono::DateTime<Utc> {
    now - Duration::minutes(10) + Duration::seconds(5 * i + 5)
}

#[tokio::test]
async fn json_lines_carry_the_flow_model_with_counters_summed_per_flow() {
    let dir = tempfile::tempdir().unwrap();
    let db = fill(dir.path()).await;
    let out = flowpol(&["flows", "--db", db.to_str().unwrap(), "-o", "json"]);
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 3, "{}", stdout(&out));
    // Oldest first: the unanswered SYN, then the TCP flow, then the drop.
    assert_eq!(lines[0]["verdict"], "unanswered");
    let tcp = &lines[1];
    assert_eq!(tcp["src"]["ip"], "10.244.1.7");
    assert_eq!(tcp["src"]["port"], 43122);
    assert_eq!(tcp["dst"]["ip"], "fd00:10::22");
    assert_eq!(tcp["dst"]["port"], 8080);
    assert_eq!(tcp["protocol"], "TCP");
    assert_eq!(tcp["packets"], 30);
    assert_eq!(tcp["bytes"], 3_000);
    assert_eq!(tcp["reply_packets"], 15);
    assert_eq!(tcp["reply_bytes"], 150_000);
    assert_eq!(tcp["verdict"], "forwarded");
    assert!(tcp["drop_reason"].is_null());
    assert_eq!(tcp["src"]["namespace"], "web");
    assert_eq!(tcp["src"]["workload"], "Deployment/frontend");
    assert_eq!(tcp["dst"]["service"], "shop/api");
    assert_eq!(tcp["dst"]["service_port"], 80);
    assert_eq!(tcp["dst"]["labels"]["app"], "api");
    let first = chrono::DateTime::parse_from_rfc3339(tcp["first_seen"].as_str().unwrap()).unwrap();
    let last = chrono::DateTime::parse_from_rfc3339(tcp["last_seen"].as_str().unwrap()).unwrap();
    assert_eq!(last - first, Duration::seconds(14));
    // Each line parses back into the model unchanged.
    let back: FlowRecord = serde_json::from_value(tcp.clone()).unwrap();
    assert_eq!(back.packets, 30);
    let drop = &lines[2];
    assert_eq!(drop["protocol"], "UDP");
    assert_eq!(drop["verdict"], "dropped");
    assert_eq!(drop["drop_reason"], "NETFILTER_DROP");
    // Capture losses in the period are reported on stderr.
    assert!(stderr(&out).contains("flow_map_full=6"), "{}", stderr(&out));
}

#[tokio::test]
async fn filters_by_verdict_since_namespace_and_per_interval() {
    let dir = tempfile::tempdir().unwrap();
    let db = fill(dir.path()).await;
    let db = db.to_str().unwrap();

    let dropped = json_lines(&flowpol(&[
        "flows",
        "--db",
        db,
        "--verdict",
        "dropped",
        "-o",
        "json",
    ]));
    assert_eq!(dropped.len(), 1);
    assert_eq!(dropped[0]["dst"]["ip"], "192.168.7.1");

    let recent = json_lines(&flowpol(&[
        "flows", "--db", db, "--since", "1h", "-o", "json",
    ]));
    assert_eq!(recent.len(), 2);
    assert!(recent.iter().all(|l| l["verdict"] != "unanswered"));

    let web = json_lines(&flowpol(&["flows", "--db", db, "-n", "web", "-o", "json"]));
    assert_eq!(web.len(), 2);

    let rows = json_lines(&flowpol(&[
        "flows",
        "--db",
        db,
        "--per-interval",
        "-o",
        "json",
    ]));
    assert_eq!(rows.len(), 5);
    assert!(
        rows.iter()
            .filter(|l| l["protocol"] == "TCP" && l["verdict"] == "forwarded")
            .all(|l| l["packets"] == 10)
    );

    let newest = json_lines(&flowpol(&[
        "flows", "--db", db, "--limit", "1", "-o", "json",
    ]));
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0]["verdict"], "dropped");
}

#[tokio::test]
async fn the_table_names_workloads_or_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let db = fill(dir.path()).await;
    let out = flowpol(&["flows", "--db", db.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(lines[0].starts_with("LAST SEEN"), "{text}");
    assert!(
        lines[2].contains("web/frontend") && lines[2].contains("shop/api:8080 via shop/api:80"),
        "{text}"
    );
    assert!(
        lines[2].contains("forwarded") && lines[2].contains(" 30 "),
        "{text}"
    );
    assert!(
        lines[3].contains("10.0.0.9:5353") && lines[3].contains("192.168.7.1:53"),
        "{text}"
    );
    assert!(lines[3].contains("NETFILTER_DROP"), "{text}");
}

#[tokio::test]
async fn bad_flags_and_paths_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let db = fill(dir.path()).await;
    let db = db.to_str().unwrap();

    let o = flowpol(&["flows", "--db", db, "--verdict", "maybe"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("maybe"), "{}", stderr(&o));

    let o = flowpol(&["flows", "--db", db, "--since", "yesterday"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("yesterday"), "{}", stderr(&o));

    let o = flowpol(&["flows", "--db", db, "-o", "yaml"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("yaml"), "{}", stderr(&o));

    let o = flowpol(&["flows"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("--db"), "{}", stderr(&o));

    let missing = dir.path().join("absent.db");
    let o = flowpol(&["flows", "--db", missing.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("absent.db") && stderr(&o).contains("does not exist"),
        "{}",
        stderr(&o)
    );
    assert!(!missing.exists());

    let text = dir.path().join("notes.txt");
    let content = "not a database, just a text file long enough to hold a full SQLite header of 100 bytes, really\n";
    std::fs::write(&text, content).unwrap();
    let o = flowpol(&["flows", "--db", text.to_str().unwrap()]);
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.starts_with("error: ")
            && err.contains("notes.txt")
            && err.contains("not a flowpol database"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&text).unwrap(), content);
}
