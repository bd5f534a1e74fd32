//! Bad manifests give a clear error that names the file, the object and the field.
use std::path::PathBuf;

use flowpol_recommender::model::Cluster;

/// Writes `text` to a fresh file and loads it; returns the error message.
fn load_error(file_name: &str, text: &str) -> (PathBuf, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join(file_name);
    std::fs::write(&path, text).expect("write manifest");
    let err = Cluster::load(&[dir.path()]).expect_err("bad manifest must not load");
    (path, err.to_string())
}

fn policy_with(spec: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web, namespace: shop}}\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n{spec}\n"
    )
}

#[test]
fn each_bad_policy_field_is_named() {
    let cases = [
        (
            "  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/40}}]}]",
            "field `spec.ingress[0].from[0].ipBlock.cidr`: invalid CIDR `10.0.0.0/40`",
        ),
        (
            "  egress: [{to: [{ipBlock: {cidr: 'fd00::/16', except: ['zz::/32']}}]}]",
            "field `spec.egress[0].to[0].ipBlock.except[0]`: invalid CIDR `zz::/32`",
        ),
        (
            "  ingress: [{ports: [{port: 0}]}]",
            "field `spec.ingress[0].ports[0].port`: port 0 is out of range (1-65535)",
        ),
        (
            "  ingress: [{ports: [{port: 80}, {port: 70000}]}]",
            "field `spec.ingress[0].ports[1].port`: port 70000 is out of range (1-65535)",
        ),
        (
            "  ingress: [{ports: [{port: 8080, endPort: 8000}]}]",
            "field `spec.ingress[0].ports[0].endPort`: endPort 8000 is below port 8080",
        ),
        (
            "  ingress: [{ports: [{port: 53, protocol: ICMP}]}]",
            "field `spec.ingress[0].ports[0].protocol`: unknown protocol `ICMP` (expected TCP, UDP or SCTP)",
        ),
        (
            "  ingress: [{from: [{namespaceSelector: {matchExpressions: [{key: team, operator: Equals, values: [a]}]}}]}]",
            "field `spec.ingress[0].from[0].namespaceSelector.matchExpressions[0].operator`: unknown operator `Equals`",
        ),
    ];
    for (spec, expected) in cases {
        let (path, err) = load_error("policy.yaml", &policy_with(spec));
        assert!(
            err.starts_with(&format!("{}: NetworkPolicy shop/web: ", path.display())),
            "{spec}: {err}"
        );
        assert!(
            err.contains(expected),
            "{spec}:\n  got:      {err}\n  expected: {expected}"
        );
    }
}

#[test]
fn a_bad_pod_selector_operator_in_the_policy_selector() {
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np, namespace: a}\nspec:\n  podSelector: {matchExpressions: [{key: app, operator: in, values: [x]}]}\n";
    let (_, err) = load_error("np.yaml", text);
    assert!(err.contains("NetworkPolicy a/np"), "{err}");
    assert!(
        err.contains("spec.podSelector.matchExpressions[0].operator"),
        "{err}"
    );
}

#[test]
fn wrong_types_and_bad_syntax_are_located() {
    let (path, err) = load_error(
        "deploy.yaml",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: api, namespace: shop}\nspec:\n  replicas: many\n  template: {}\n",
    );
    assert!(err.starts_with(&path.display().to_string()), "{err}");
    assert!(err.contains("Deployment shop/api"), "{err}");
    assert!(err.contains("field `spec.replicas`"), "{err}");

    let (path, err) = load_error("broken.yaml", "kind: Pod\nmetadata: {name: [unclosed\n");
    assert!(
        err.starts_with(&format!("{}: not valid YAML", path.display())),
        "{err}"
    );

    let (path, err) = load_error("broken.json", "{\"kind\": \"Pod\", ");
    assert!(
        err.starts_with(&format!("{}: not valid JSON", path.display())),
        "{err}"
    );

    let (_, err) = load_error("nokind.yaml", "apiVersion: v1\nmetadata: {name: x}\n");
    assert!(err.contains("document 1: object has no `kind`"), "{err}");
}

#[test]
fn bad_container_and_service_ports() {
    let (_, err) = load_error(
        "pod.yaml",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: a}\nspec: {containers: [{name: c, ports: [{containerPort: 80, protocol: HTTP}]}]}\n",
    );
    assert!(
        err.contains(
            "Pod a/p: field `spec.containers[0].ports[0].protocol`: unknown protocol `HTTP`"
        ),
        "{err}"
    );
    let (_, err) = load_error(
        "svc.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: s, namespace: a}\nspec: {ports: [{port: 99999}]}\n",
    );
    assert!(
        err.contains("Service a/s: field `spec.ports[0].port`: port 99999 is out of range"),
        "{err}"
    );
}

#[test]
fn a_missing_path_is_named() {
    let err = Cluster::load(&["/nonexistent/flowpol/manifests"]).expect_err("missing path");
    assert!(
        err.to_string()
            .starts_with("/nonexistent/flowpol/manifests: cannot read"),
        "{err}"
    );
}

#[test]
fn folders_are_read_recursively_and_other_files_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("sub/deeper")).unwrap();
    std::fs::write(
        dir.path().join("sub/deeper/pod.yml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {containers: [{name: c}]}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("ns.json"),
        r#"{"kind":"NamespaceList","apiVersion":"v1","items":[{"metadata":{"name":"team"}}]}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("README.md"), "not a manifest: [").unwrap();
    let cluster = Cluster::load(&[dir.path()]).unwrap();
    assert_eq!(cluster.workloads.len(), 1);
    assert_eq!(cluster.workloads[0].peer_name(), "default/p[Pod]");
    assert!(cluster.namespace("team").is_some_and(|n| n.defined));
}
