//! recommend in the lab (root): for every shipped scenario, record its traffic with the agent,
//! recommend policies from the database, enforce them (`lab up --enforce --policies`) and play
//! the traffic again: every planned connection is answered (and those the scenario's own
//! policies block stay blocked). An unlabelled attacker pod in each namespace then tries every
//! workload port and every outside stand-in: all of it must be dropped (the blast radius).
#![cfg(target_os = "linux")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use flowpol_recommender::flow::Protocol;
use flowpol_recommender::model::Cluster;
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_flowpol");
static COUNTER: AtomicU32 = AtomicU32::new(0);

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples")
}

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this privileged test needs root (network namespaces, nftables, eBPF): run `sudo make test`"
    );
}

/// A lab id and state folder of its own; the lab is torn down on drop, even on failure.
struct RecLab {
    id: String,
    state: tempfile::TempDir,
}

impl RecLab {
    fn new() -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        RecLab {
            id: format!("rc{}-{n}", std::process::id() % 100_000),
            state: tempfile::tempdir().unwrap(),
        }
    }
    fn lab(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("lab")
            .args(args)
            .args(["--lab", &self.id])
            .env("FLOWPOL_LAB_DIR", self.state.path())
            .env("FLOWPOL_LOG", "warn")
            .output()
            .unwrap()
    }
}

impl Drop for RecLab {
    fn drop(&mut self) {
        let _ = self.lab(&["down"]);
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The scenario's manifest files (not traffic.yaml, lab.yaml or sub-folders).
fn manifest_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            p.is_file()
                && (name.ends_with(".yaml") || name.ends_with(".yml"))
                && name != "traffic.yaml"
                && name != "lab.yaml"
        })
        .collect();
    files.sort();
    files
}

/// A copy of the scenario with an unlabelled attacker pod per namespace whose connections to
/// every workload port and outside stand-in are all `expect: blocked`. Returns the folder and
/// the number of attacker connections.
fn with_attackers(dir: &Path, into: &Path) -> usize {
    let files = manifest_files(dir);
    for f in &files {
        std::fs::copy(f, into.join(f.file_name().unwrap())).unwrap();
    }
    if dir.join("lab.yaml").exists() {
        std::fs::copy(dir.join("lab.yaml"), into.join("lab.yaml")).unwrap();
    }
    let cluster = Cluster::load(&files).unwrap();
    let namespaces: std::collections::BTreeSet<String> = cluster
        .workloads
        .iter()
        .map(|w| w.namespace.clone())
        .collect();
    let mut pods = String::new();
    for ns in &namespaces {
        pods.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: attacker, namespace: {ns}}}\nspec:\n  containers: [{{name: sh, image: busybox}}]\n"
        ));
    }
    std::fs::write(into.join("zz-attackers.yaml"), pods).unwrap();
    let traffic_text = std::fs::read_to_string(dir.join("traffic.yaml")).unwrap();
    let mut traffic: Value = serde_saphyr::from_str(&traffic_text).unwrap();
    let mut added = 0;
    let mut extra = Vec::new();
    for ns in &namespaces {
        for w in &cluster.workloads {
            let mut ports: Vec<u16> = w
                .endpoints
                .iter()
                .flat_map(|&e| cluster.endpoints[e].ports.iter())
                .filter(|p| p.protocol == Protocol::Tcp)
                .map(|p| p.port)
                .collect();
            ports.sort();
            ports.dedup();
            for port in ports {
                extra.push(json!({
                    "from": format!("{ns}/attacker"),
                    "to": {"workload": format!("{}/{}", w.namespace, w.name)},
                    "port": port,
                    "expect": "blocked",
                }));
                added += 1;
            }
        }
        for ext in traffic["externals"].as_array().cloned().unwrap_or_default() {
            extra.push(json!({
                "from": format!("{ns}/attacker"),
                "to": {"external": ext["name"]},
                "port": ext["ports"][0],
                "expect": "blocked",
            }));
            added += 1;
        }
    }
    traffic["connections"].as_array_mut().unwrap().extend(extra);
    std::fs::write(
        into.join("traffic.yaml"),
        serde_json::to_string_pretty(&traffic).unwrap(),
    )
    .unwrap();
    added
}

/// The broken task-api policy set against the flows the agent recorded: exactly the three
/// mistakes' flows are flagged, and with the suggested fixes applied nothing is.
fn audit_broken_set_on_real_flows(db: &Path, work: &Path) {
    let broken = examples().join("../broken-policies/task-api");
    let o = Command::new(BIN)
        .args([
            "audit",
            "--db",
            db.to_str().unwrap(),
            "--policies",
            broken.to_str().unwrap(),
            "-o",
            "json",
        ])
        .env("FLOWPOL_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "audit: {}", text(&o));
    let result: Value = serde_json::from_slice(&o.stdout).unwrap();
    let mut groups: Vec<String> = result["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            format!(
                "{} → {} {}/{}",
                g["source"].as_str().unwrap(),
                g["destination"].as_str().unwrap(),
                g["port"],
                g["protocol"].as_str().unwrap()
            )
        })
        .collect();
    groups.sort();
    assert_eq!(
        groups,
        [
            "gateway/gateway[Deployment] → taskapi/task-api[Deployment] 8080/TCP",
            "taskapi/task-api[Deployment] → kube-system/coredns[Deployment] 53/UDP",
            "taskapi/task-api[Deployment] → postgres/postgres[StatefulSet] 5432/TCP",
        ],
        "{result}"
    );
    let fixes: Vec<Value> = result["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["fixes"].as_array().unwrap().iter())
        .map(|f| f["policy"].clone())
        .collect();
    assert!(!fixes.is_empty());
    let fixed = work.join("fixes.json");
    let list = json!({"apiVersion": "v1", "kind": "List", "items": fixes});
    std::fs::write(&fixed, serde_json::to_string(&list).unwrap()).unwrap();
    let o = Command::new(BIN)
        .args([
            "audit",
            "--db",
            db.to_str().unwrap(),
            "--policies",
            broken.to_str().unwrap(),
            fixed.to_str().unwrap(),
        ])
        .env("FLOWPOL_LOG", "error")
        .output()
        .unwrap();
    assert_eq!(
        o.status.code(),
        Some(0),
        "audit with the fixes: {}",
        text(&o)
    );
}

#[test]
fn recommended_policies_keep_the_plan_and_block_attackers_privileged() {
    require_root();
    let mut scenarios: Vec<PathBuf> = std::fs::read_dir(examples())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("traffic.yaml").exists())
        .collect();
    scenarios.sort();
    assert!(scenarios.len() >= 5, "{scenarios:?}");
    for dir in scenarios {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let has_policies = manifest_files(&dir).iter().any(|f| {
            std::fs::read_to_string(f)
                .unwrap_or_default()
                .contains("kind: NetworkPolicy")
        });
        // 1. Record the scenario's traffic (its own policies enforced, so what they block is
        // not evidence).
        let work = tempfile::tempdir().unwrap();
        let db = work.path().join("flows.db");
        let record = RecLab::new();
        let mut args = vec![
            "run",
            "--scenario",
            dir.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ];
        if has_policies {
            args.push("--enforce");
        }
        let o = record.lab(&args);
        assert!(o.status.success(), "{name}: recording: {}", text(&o));
        drop(record);

        // 2. Recommend from the database, with the scenario's manifests as cluster state.
        let files = manifest_files(&dir);
        let mut rec_args: Vec<String> = vec![
            "recommend".into(),
            "--db".into(),
            db.to_str().unwrap().into(),
            "--manifests".into(),
        ];
        rec_args.extend(files.iter().map(|f| f.to_str().unwrap().to_string()));
        let o = Command::new(BIN)
            .args(&rec_args)
            .env("FLOWPOL_LOG", "error")
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: recommend: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("verified by the engine"), "{name}: {err}");
        let recommended = work.path().join("recommended.yaml");
        std::fs::write(&recommended, &o.stdout).unwrap();
        if name == "task-api" {
            audit_broken_set_on_real_flows(&db, work.path());
        }

        // 3. Enforce the recommendation on the scenario plus attackers, play the traffic.
        let derived = tempfile::tempdir().unwrap();
        let attacks = with_attackers(&dir, derived.path());
        let lab = RecLab::new();
        let up = lab.lab(&[
            "up",
            "--scenario",
            derived.path().to_str().unwrap(),
            "--enforce",
            "--policies",
            recommended.to_str().unwrap(),
        ]);
        assert!(up.status.success(), "{name}: up: {}", text(&up));
        let traffic = lab.lab(&["traffic", "--scenario", derived.path().to_str().unwrap()]);
        let out = String::from_utf8_lossy(&traffic.stdout).into_owned();
        assert!(
            traffic.status.success(),
            "{name}: a planned connection was dropped or an attack got through:\n{}\nrecommended:\n{}",
            text(&traffic),
            String::from_utf8_lossy(&o.stdout)
        );
        let blocked = out
            .lines()
            .filter(|l| l.contains("blocked by policy"))
            .count();
        assert!(
            blocked >= attacks,
            "{name}: {blocked} blocked of {attacks} attacks:\n{out}"
        );
        for l in out
            .lines()
            .filter(|l| l.contains(" answered") && !l.contains("attacker"))
        {
            if !l.contains("blocked by policy") {
                let counts = l
                    .split(" answered")
                    .next()
                    .and_then(|h| h.rsplit(' ').next())
                    .and_then(|n| n.split_once('/'))
                    .unwrap();
                assert_eq!(
                    counts.0, counts.1,
                    "{name}: planned connection dropped: {l}"
                );
            }
        }
        let down = lab.lab(&["down"]);
        assert!(down.status.success(), "{name}: {}", text(&down));
        eprintln!(
            "{name}: plan kept under the recommendation; {attacks} attacker connections dropped"
        );
    }
}
