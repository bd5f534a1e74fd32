//! The engine's commands end to end: `flowpol connectivity`, `explain` and `lint`, their output
//! and exit codes (0 ok/allowed/clean, 1 denied/findings, 2 bad input).
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn flowpol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowpol"))
        .args(args)
        .env("FLOWPOL_LOG", "error")
        .output()
        .expect("run flowpol")
}

fn case(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/conformance/netpol-analyzer/cases")
        .join(name)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn connectivity_txt_matches_the_oracle_case() {
    let dir = case("onlineboutique");
    let manifests = dir.join("manifests");
    let out = flowpol(&[
        "connectivity",
        "--manifests",
        manifests.to_str().unwrap(),
        "--ipblock-matches-pods=false",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let expected = std::fs::read_to_string(dir.join("expected.txt")).expect("oracle case present");
    let lines = |s: &str| -> BTreeSet<String> {
        s.lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()
    };
    assert_eq!(lines(&stdout(&out)), lines(&expected));
}

#[test]
fn connectivity_other_formats_and_a_bad_one() {
    let manifests = case("onlineboutique").join("manifests");
    let m = manifests.to_str().unwrap();
    let out = flowpol(&["connectivity", "--manifests", m, "-o", "json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).expect("json output");
    assert!(json.as_array().is_some_and(|a| !a.is_empty()));
    for format in ["md", "csv", "dot"] {
        let out = flowpol(&["connectivity", "--manifests", m, "-o", format]);
        assert_eq!(out.status.code(), Some(0), "{format}: {}", stderr(&out));
        assert!(
            stdout(&out).contains("default/frontend-99684f7f8[ReplicaSet]"),
            "{format}"
        );
    }
    let out = flowpol(&["connectivity", "--manifests", m, "-o", "yaml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("unknown output format `yaml`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn explain_exit_codes_and_reasons() {
    let manifests = case("onlineboutique").join("manifests");
    let m = manifests.to_str().unwrap();
    let out = flowpol(&[
        "explain",
        "--manifests",
        m,
        "--from",
        "default/frontend",
        "--to",
        "default/cartservice",
        "--port",
        "7070",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("ALLOWED: default/frontend-99684f7f8[ReplicaSet] -> default/cartservice-74f56fd4b[ReplicaSet] TCP 7070"), "{text}");
    assert!(
        text.contains("allowed by default/cartservice-netpol spec.ingress[1]"),
        "{text}"
    );

    let out = flowpol(&[
        "explain",
        "--manifests",
        m,
        "--from",
        "default/cartservice",
        "--to",
        "default/frontend",
        "--port",
        "8080/tcp",
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.starts_with("DENIED"), "{text}");
    assert!(
        text.contains("isolated by default/frontend-netpol"),
        "{text}"
    );
    assert!(text.contains("to allow it, add this rule"), "{text}");

    let out = flowpol(&[
        "explain",
        "--manifests",
        m,
        "--from",
        "default/nope",
        "--to",
        "default/frontend",
        "--port",
        "80",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--from `default/nope`: no workload or pod `nope`"),
        "{}",
        stderr(&out)
    );

    let out = flowpol(&[
        "explain",
        "--manifests",
        m,
        "--from",
        "default/frontend",
        "--to",
        "default/frontend",
        "--port",
        "80/icmp",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("--port `80/icmp`"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn lint_exit_codes() {
    let manifests = case("onlineboutique").join("manifests");
    let out = flowpol(&["lint", "--manifests", manifests.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("[egress-without-dns] NetworkPolicy default/adservice-netpol"),
        "{}",
        stdout(&out)
    );

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("clean.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a, labels: {app: p}}\nspec: {containers: [{name: c}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: a}\nspec: {podSelector: {}, policyTypes: [Ingress, Egress], egress: [{ports: [{port: 53, protocol: UDP}]}]}\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress, namespace: a}\nspec: {podSelector: {}, policyTypes: [Egress]}\n",
    )
    .unwrap();
    let out = flowpol(&["lint", "--manifests", dir.path().to_str().unwrap()]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    assert!(stdout(&out).contains("0 finding(s)"));
}

#[test]
fn bad_manifests_fail_with_file_object_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bad.yaml");
    std::fs::write(
        &file,
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: a}\nspec:\n  podSelector: {}\n  ingress: [{from: [{ipBlock: {cidr: 300.0.0.0/8}}]}]\n",
    )
    .unwrap();
    for command in ["connectivity", "lint"] {
        let out = flowpol(&[command, "--manifests", file.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{command}");
        let err = stderr(&out);
        assert!(err.contains(&format!("error: {}: NetworkPolicy a/np: field `spec.ingress[0].from[0].ipBlock.cidr`: invalid CIDR `300.0.0.0/8`", file.display())), "{command}: {err}");
        assert!(
            stdout(&out).is_empty(),
            "{command}: nothing printed on error"
        );
    }
}
