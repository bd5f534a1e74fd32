//! Cluster state from manifests on disk (offline use, the lab, tests): YAML (multi-document) or
//! JSON files, folders read recursively, `List`s and `kubectl get -o yaml` dumps included.
//! Parsed by the engine's loader (`flowpol_recommender::manifest`) into k8s-openapi objects.
//!
//! The files are re-read when they change; a bad file is reported by name and the last good
//! state stays.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use flowpol_recommender::manifest::{self, LoadedObject};
use futures::future::BoxFuture;
use k8s_openapi::Metadata;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use tokio::sync::{mpsc, watch};

use super::source::{SourceError, StateSource};
use super::state::{Object, ObjectKind, Stamped, StateUpdate};

/// Reads every manifest under `paths` with the engine's loader (the same
/// files, kinds, API groups and errors as `connectivity --manifests`). The
/// error names the file (and the object and field).
pub fn load(paths: &[PathBuf]) -> Result<Vec<Object>, String> {
    let loaded = manifest::load_paths(paths).map_err(|e| e.to_string())?;
    identity_objects(loaded)
}

/// Parses one file's text into objects.
pub fn parse_file(path: &Path, text: &str, out: &mut Vec<Object>) -> Result<(), String> {
    let loaded = manifest::parse_str(path, text).map_err(|e| e.to_string())?;
    out.extend(identity_objects(loaded)?);
    Ok(())
}

/// The kinds identity needs; controllers other than ReplicaSet and Job name
/// workloads through owner references and are not needed here.
fn identity_objects(loaded: Vec<LoadedObject>) -> Result<Vec<Object>, String> {
    let mut out = Vec::with_capacity(loaded.len());
    for LoadedObject { source, object } in loaded {
        let kind = object.kind();
        let object = match object {
            manifest::Object::Namespace(o) => Object::Namespace(o),
            manifest::Object::Node(o) => Object::Node(o),
            manifest::Object::Pod(o) => Object::Pod(namespaced(o)),
            manifest::Object::Service(o) => Object::Service(namespaced(o)),
            manifest::Object::EndpointSlice(o) => Object::EndpointSlice(namespaced(o)),
            manifest::Object::NetworkPolicy(o) => Object::NetworkPolicy(namespaced(o)),
            manifest::Object::ReplicaSet(o) => Object::ReplicaSet(namespaced(o)),
            manifest::Object::Job(o) => Object::Job(namespaced(o)),
            manifest::Object::Deployment(_)
            | manifest::Object::StatefulSet(_)
            | manifest::Object::DaemonSet(_)
            | manifest::Object::ReplicationController(_)
            | manifest::Object::CronJob(_) => continue,
        };
        if object.meta().name.as_deref().is_none_or(str::is_empty) {
            return Err(format!("{}: {kind} has no metadata.name", source.display()));
        }
        out.push(object);
    }
    Ok(out)
}

/// Manifests often leave a namespaced object's namespace implicit: `default`.
fn namespaced<T: Metadata<Ty = ObjectMeta>>(mut object: Box<T>) -> Box<T> {
    let meta = object.metadata_mut();
    if meta.namespace.is_none() {
        meta.namespace = Some("default".into());
    }
    object
}

/// Modification times and sizes of the files under `paths`: re-read when it changes.
fn fingerprint(paths: &[PathBuf]) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    let mut files = Vec::new();
    for p in paths {
        // A path that vanished shows up as a change; load() then reports it.
        match manifest::manifest_files(p) {
            Ok(found) => files.extend(found),
            Err(_) => files.push(p.clone()),
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
