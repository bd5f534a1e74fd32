//! Cluster state from manifests on disk (offline use, the lab, tests): YAML (multi-document) or
//! JSON files, folders read recursively, `List`s and `kubectl get -o yaml` dumps included.
//! Parsed with serde-saphyr (the engine's YAML crate) into k8s-openapi objects.
//!
//! The files are re-read when they change; a bad file is reported by name and the last good
//! state stays.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use super::source::{SourceError, StateSource};
use super::state::{Object, ObjectKind, Stamped, StateUpdate};

/// Kinds flowpol reads from manifests; everything else (Deployments, ConfigMaps, ...) is skipped.
fn kind_of(kind: &str, api_version: &str) -> Option<ObjectKind> {
    let k = ObjectKind::from_kind(kind)?;
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let ok = match k {
        ObjectKind::Namespace | ObjectKind::Node | ObjectKind::Pod | ObjectKind::Service => {
            group.is_empty()
        }
        ObjectKind::EndpointSlice => group == "discovery.k8s.io",
        ObjectKind::NetworkPolicy => group == "networking.k8s.io",
        ObjectKind::ReplicaSet => group == "apps",
        ObjectKind::Job => group == "batch",
    };
    ok.then_some(k)
}

/// Reads every manifest under `paths`. The error names the file (and the object and field).
pub fn load(paths: &[PathBuf]) -> Result<Vec<Object>, String> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, true, &mut files)?;
    }
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)
            .map_err(|e| format!("{}: cannot read: {e}", f.display()))?;
        parse_file(&f, &text, &mut out)?;
    }
    Ok(out)
}

fn collect(path: &Path, explicit: bool, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            collect(&e, false, out)?;
        }
    } else if explicit
        || matches!(
            path.extension().and_then(|e| e.to_str()),
            Some("yaml" | "yml" | "json")
        )
    {
        out.push(path.to_path_buf());
    }
    Ok(())
}

/// Parses one file's text into objects.
pub fn parse_file(path: &Path, text: &str, out: &mut Vec<Object>) -> Result<(), String> {
    let p = path.display();
    let ext = path.extension().and_then(|e| e.to_str());
    // YAML is a superset of JSON: `.yaml` files are YAML even when a document is JSON.
    let is_json = ext == Some("json")
        || (!matches!(ext, Some("yaml" | "yml")) && text.trim_start().starts_with(['{', '[']));
    let docs: Vec<Value> = if is_json {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|e| format!("{p}: not valid JSON: {e}"))?
    } else {
        serde_saphyr::from_multiple::<Value>(text)
            .map_err(|e| format!("{p}: not valid YAML: {e}"))?
    };
    for (i, doc) in docs.into_iter().enumerate() {
        visit(path, i + 1, doc, None, out)?;
    }
    Ok(())
}

fn visit(
    path: &Path,
    doc: usize,
    mut value: Value,
    default_kind: Option<&str>,
    out: &mut Vec<Object>,
) -> Result<(), String> {
    let p = path.display();
    match value {
        Value::Null => return Ok(()),
        Value::Array(items) => {
            for item in items {
                visit(path, doc, item, default_kind, out)?;
            }
            return Ok(());
        }
        Value::Object(_) => {}
        _ => {
            return Err(format!(
                "{p}: document {doc}: is not a Kubernetes object (expected a mapping with `kind`)"
            ));
        }
    }
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .or(default_kind)
        .ok_or_else(|| format!("{p}: document {doc}: object has no `kind`"))?
        .to_string();
    if kind.ends_with("List")
        && let Some(items) = value.get_mut("items")
    {
        let items = items.take();
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        return visit(path, doc, items, item_kind, out);
    }
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let Some(k) = kind_of(&kind, &api_version) else {
        return Ok(());
    };
    if let Value::Object(m) = &mut value {
        // Items of a typed List may omit these; k8s-openapi accepts them absent or exact.
        m.remove("apiVersion");
        m.remove("kind");
        // Manifests often leave a Pod's namespace implicit.
        if k != ObjectKind::Node
            && k != ObjectKind::Namespace
            && let Some(Value::Object(meta)) = m.get_mut("metadata")
        {
            meta.entry("namespace")
                .or_insert_with(|| Value::String("default".into()));
        }
    }
    let name = {
        let m = value.get("metadata");
        let n = m.and_then(|m| m.get("name")).and_then(Value::as_str);
        let ns = m.and_then(|m| m.get("namespace")).and_then(Value::as_str);
        match (ns, n) {
            (Some(ns), Some(n)) => format!("{ns}/{n}"),
            (None, Some(n)) => n.to_string(),
            _ => return Err(format!("{p}: document {doc}: {kind} has no metadata.name")),
        }
    };
    let obj = typed(k, value).map_err(|e| format!("{p}: {kind} {name}: {e}"))?;
    out.push(obj);
    Ok(())
}

/// Like [`Object::from_json`] but the error names the field (`spec.ports[0].port`).
fn typed(kind: ObjectKind, value: Value) -> Result<Object, String> {
    fn de<T: serde::de::DeserializeOwned>(v: Value) -> Result<Box<T>, String> {
        serde_path_to_error::deserialize(v)
            .map(Box::new)
            .map_err(|e| format!("field `{}`: {}", e.path(), e.inner()))
    }
    use k8s_openapi::api::apps::v1::ReplicaSet;
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    Ok(match kind {
        ObjectKind::Namespace => Object::Namespace(de::<Namespace>(value)?),
        ObjectKind::Node => Object::Node(de::<Node>(value)?),
        ObjectKind::Pod => Object::Pod(de::<Pod>(value)?),
        ObjectKind::Service => Object::Service(de::<Service>(value)?),
        ObjectKind::EndpointSlice => Object::EndpointSlice(de::<EndpointSlice>(value)?),
        ObjectKind::NetworkPolicy => Object::NetworkPolicy(de::<NetworkPolicy>(value)?),
        ObjectKind::ReplicaSet => Object::ReplicaSet(de::<ReplicaSet>(value)?),
        ObjectKind::Job => Object::Job(de::<Job>(value)?),
    })
}

/// Modification times and sizes of the files under `paths`: re-read when it changes.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut files = Vec::new();
    for p in paths {
        // A path that vanished shows up as a change; load() then reports it.
        if collect(p, true, &mut files).is_err() {
            files.push(p.clone());
        }
    }
    files
        .into_iter()
        .map(|f| {
            let m = std::fs::metadata(&f).ok();
            let mtime = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map(|m| m.len()).unwrap_or(0);
            (f, mtime, len)
        })
        .collect()
}

pub struct ManifestSource {
    paths: Vec<PathBuf>,
    first: Vec<Object>,
    poll: Option<Duration>,
}

impl ManifestSource {
    /// Reads the manifests now, so a bad file fails the start with its name.
    pub fn new(paths: Vec<PathBuf>) -> Result<Self, SourceError> {
        let first = load(&paths).map_err(SourceError::Manifests)?;
        Ok(Self {
            paths,
            first,
            poll: Some(Duration::from_secs(2)),
        })
    }

    /// How often to look for changed files (`None`: read once).
    pub fn with_poll(mut self, poll: Option<Duration>) -> Self {
        self.poll = poll;
        self
    }

    fn resync(objects: Vec<Object>) -> Vec<StateUpdate> {
        ObjectKind::ALL
            .into_iter()
            .map(|kind| StateUpdate::Resync {
                kind,
                objects: objects
                    .iter()
                    .filter(|o| o.kind() == kind)
                    .cloned()
                    .collect(),
                invalid: vec![],
            })
            .collect()
    }
}

impl StateSource for ManifestSource {
    fn name(&self) -> &'static str {
        "manifests"
    }

    fn run(
        self: Box<Self>,
        sink: mpsc::Sender<Stamped>,
        mut shutdown: watch::Receiver<bool>,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move {
            let send_all = |updates: Vec<StateUpdate>| {
                let sink = sink.clone();
                async move {
                    let at = chrono::Utc::now();
                    for update in updates {
                        if sink.send(Stamped { at, update }).await.is_err() {
                            return false;
                        }
                    }
                    true
                }
            };
            let mut seen = fingerprint(&self.paths);
            if !send_all(Self::resync(self.first)).await {
                return Ok(());
            }
            let Some(poll) = self.poll else {
                return Ok(());
            };
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.wait_for(|s| *s) => return Ok(()),
                }
                let now = fingerprint(&self.paths);
                if now == seen {
                    continue;
                }
                seen = now;
                let updates = match load(&self.paths) {
                    Ok(objects) => Self::resync(objects),
                    Err(error) => vec![StateUpdate::Invalid {
                        input: format!("manifests {}", display_paths(&self.paths)),
                        error,
                    }],
                };
                if !send_all(updates).await {
                    return Ok(());
                }
            }
        })
    }
}

fn display_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_lists_multi_documents_and_skips_other_kinds() {
        let text = r#"
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: shop, uid: u-a}
status: {podIP: 10.0.0.1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: d}
---
apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: Node
  metadata: {name: n1}
  status: {addresses: [{type: InternalIP, address: 172.18.0.2}]}
- apiVersion: discovery.k8s.io/v1
  kind: EndpointSlice
  metadata: {name: s-1, labels: {kubernetes.io/service-name: s}}
  addressType: IPv4
  endpoints: [{addresses: [10.0.0.1]}]
"#;
        let mut out = Vec::new();
        parse_file(Path::new("lab.yaml"), text, &mut out).unwrap();
        let names: Vec<String> = out.iter().map(|o| o.describe()).collect();
        assert_eq!(
            names,
            ["Pod shop/a", "Node n1", "EndpointSlice default/s-1"]
        );
    }

    #[test]
    fn a_bad_object_names_the_file_the_object_and_the_field() {
        let text = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  ports:\n  - port: eighty\n";
        let mut out = Vec::new();
        let err = parse_file(Path::new("/m/svc.yaml"), text, &mut out).unwrap_err();
        assert!(err.contains("/m/svc.yaml"), "{err}");
        assert!(err.contains("Service shop/web"), "{err}");
        assert!(err.contains("spec.ports[0].port"), "{err}");
    }

    #[test]
    fn bad_yaml_and_missing_kind_name_the_file() {
        let mut out = Vec::new();
        let err = parse_file(Path::new("x.yaml"), "a: [1, 2\n", &mut out).unwrap_err();
        assert!(err.starts_with("x.yaml: not valid YAML"), "{err}");
        let err = parse_file(Path::new("y.yaml"), "metadata: {name: a}\n", &mut out).unwrap_err();
        assert!(
            err.contains("y.yaml: document 1: object has no `kind`"),
            "{err}"
        );
    }

    #[test]
    fn missing_path_is_named() {
        let err = load(&[PathBuf::from("/nonexistent/flowpol-identity.yaml")]).unwrap_err();
        assert!(err.contains("/nonexistent/flowpol-identity.yaml"), "{err}");
    }
}
