//! Bad scenarios are refused with an error naming the input, before anything is created.
//! (No root needed: validation runs before the lab touches the system.)
#![cfg(target_os = "linux")]

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_flowpol");

fn copy_example(name: &str, to: &Path) {
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples")
        .join(name);
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no {from:?}", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// Runs `lab up` on a broken scenario and checks the error and that nothing exists.
fn refused(dir: &Path, lab: &str, expect: &[&str]) {
    let state = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["lab", "up", "--scenario"])
        .arg(dir)
        .args(["--lab", lab])
        .env("FLOWPOL_LAB_DIR", state.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
    assert!(!state.path().join(lab).exists(), "state folder created");
    let prefix = format!("fpl-{lab}-");
    let netns: Vec<_> = std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .collect();
    assert!(netns.is_empty(), "netns created: {netns:?}");
}

fn lab_id(tag: &str) -> String {
    format!("bad{}-{tag}", std::process::id() % 100_000)
}

#[test]
fn missing_service_target_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("task-api", dir.path());
    edit(
        &dir.path().join("redis.yaml"),
        "selector: {app: redis}",
        "selector: {app: rediss}",
    );
    refused(
        dir.path(),
        &lab_id("svc"),
        &["Service redis/redis", "redis.yaml", "has no target"],
    );
}

#[test]
fn unknown_workload_in_traffic_is_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("three-tier", dir.path());
    edit(
        &dir.path().join("traffic.yaml"),
        "from: shop/backend",
        "from: shop/backnd",
    );
    refused(
        dir.path(),
        &lab_id("wl"),
        &[
            "traffic.yaml: connections[2]",
            "unknown workload \"shop/backnd\"",
        ],
    );
}

#[test]
fn overlapping_cidrs_are_refused_before_anything_is_created() {
    let dir = tempfile::tempdir().unwrap();
    copy_example("port-mismatch", dir.path());
    std::fs::write(
        dir.path().join("lab.yaml"),
        "podCIDR: 10.96.0.0/12\nserviceCIDR: 10.96.0.0/16\n",
    )
    .unwrap();
    refused(
        dir.path(),
        &lab_id("cidr"),
        &[
            "lab.yaml",
            "podCIDR 10.96.0.0/12 overlaps serviceCIDR 10.96.0.0/16",
        ],
    );
}

#[test]
fn bad_lab_id_is_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/port-mismatch");
    let o = Command::new(BIN)
        .args(["lab", "up", "--scenario"])
        .arg(dir)
        .args(["--lab", "Bad_ID"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("lab id \"Bad_ID\""));
}
