//! Reads Kubernetes manifests: files or folders (recursive) of YAML (multi-document) and JSON,
//! including `List`, `PodList`, `NamespaceList` and `kubectl get -o yaml|json` dumps.
//!
//! Each object is typed with k8s-openapi. Kinds that play no part in pod-to-pod connectivity
//! are skipped with a warning; unknown fields are tolerated (k8s-openapi ignores them).
use std::path::{Path, PathBuf};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ReplicationController, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde_json::Value;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid YAML: {message}")]
    Yaml { path: PathBuf, message: String },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {object}: field `{field}`: {message}")]
    Object {
        path: PathBuf,
        object: String,
        field: String,
        message: String,
    },
    #[error("{path}: document {document}: {message}")]
    Document {
        path: PathBuf,
        document: usize,
        message: String,
    },
}

/// One typed object and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedObject {
    pub source: PathBuf,
    pub object: Object,
}

#[derive(Debug, Clone)]
pub enum Object {
    Namespace(Box<Namespace>),
    Pod(Box<Pod>),
    Deployment(Box<Deployment>),
    StatefulSet(Box<StatefulSet>),
    DaemonSet(Box<DaemonSet>),
    ReplicaSet(Box<ReplicaSet>),
    ReplicationController(Box<ReplicationController>),
    Job(Box<Job>),
    CronJob(Box<CronJob>),
    Service(Box<Service>),
    NetworkPolicy(Box<NetworkPolicy>),
    /// Nodes: their addresses name node (kubelet, hostNetwork) traffic.
    Node(Box<Node>),
    /// A Service's backends (the node agent resolves Service traffic with
    /// them; the engine selects by labels and ignores them).
    EndpointSlice(Box<EndpointSlice>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Namespace(_) => "Namespace",
            Object::Pod(_) => "Pod",
            Object::Deployment(_) => "Deployment",
            Object::StatefulSet(_) => "StatefulSet",
            Object::DaemonSet(_) => "DaemonSet",
            Object::ReplicaSet(_) => "ReplicaSet",
            Object::ReplicationController(_) => "ReplicationController",
            Object::Job(_) => "Job",
            Object::CronJob(_) => "CronJob",
            Object::Service(_) => "Service",
            Object::NetworkPolicy(_) => "NetworkPolicy",
            Object::Node(_) => "Node",
            Object::EndpointSlice(_) => "EndpointSlice",
        }
    }
}

/// The API groups each supported kind may come from (old dumps use `extensions/v1beta1`).
/// A kind from another group (e.g. Calico's `crd.projectcalico.org/v1` NetworkPolicy) is a
/// different resource and is skipped.
fn accepted_api_version(kind: &str, api_version: &str) -> Option<&'static str> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    let (canonical, groups): (&'static str, &[&str]) = match kind {
        "Namespace" | "Pod" | "Service" | "ReplicationController" | "Node" => ("v1", &[""]),
        "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet" => {
            ("apps/v1", &["apps", "extensions"])
        }
        "Job" | "CronJob" => ("batch/v1", &["batch"]),
        "NetworkPolicy" => ("networking.k8s.io/v1", &["networking.k8s.io", "extensions"]),
        "EndpointSlice" => ("discovery.k8s.io/v1", &["discovery.k8s.io"]),
        _ => return None,
    };
    (api_version.is_empty() || groups.contains(&group)).then_some(canonical)
}

/// Loads every manifest under the given files and folders (folders recursively, files ending
/// in `.yaml`, `.yml` or `.json`; a file named explicitly is read whatever its name).
pub fn load_paths<P: AsRef<Path>>(paths: &[P]) -> Result<Vec<LoadedObject>, ManifestError> {
    let mut files = Vec::new();
    for path in paths {
        files.extend(manifest_files(path.as_ref())?);
    }
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Read {
            path: file.clone(),
            source,
        })?;
        out.extend(parse_str(&file, &text)?);
    }
    Ok(out)
}

/// The files [`load_paths`] reads for one path: the file itself, or the manifest files
/// (`.yaml`, `.yml`, `.json`) under a folder, recursively, in name order.
pub fn manifest_files(path: &Path) -> Result<Vec<PathBuf>, ManifestError> {
    let mut files = Vec::new();
    collect_files(path, true, &mut files)?;
    Ok(files)
}

fn collect_files(path: &Path, explicit: bool, out: &mut Vec<PathBuf>) -> Result<(), ManifestError> {
    let read_err = |source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read_err)?;
    if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(read_err)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(read_err)?;
        entries.sort();
        for entry in entries {
            collect_files(&entry, false, out)?;
        }
    } else if explicit || is_manifest_name(path) {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn is_manifest_name(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// Parses one file's text (YAML or JSON) into typed objects.
pub fn parse_str(path: &Path, text: &str) -> Result<Vec<LoadedObject>, ManifestError> {
    // YAML is a superset of JSON: a `.yaml` file is YAML even when its documents
    // are JSON objects (`---` between them); other names go by the first character.
    let ext = path.extension().and_then(|e| e.to_str());
    let is_json = ext == Some("json")
        || (!matches!(ext, Some("yaml" | "yml")) && text.trim_start().starts_with(['{', '[']));
    let documents: Vec<Value> = if is_json {
        serde_json::Deserializer::from_str(text)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .map_err(|source| ManifestError::Json {
                path: path.to_path_buf(),
                source,
            })?
    } else {
        // The default budget (1 024 documents, 250 000 nodes) is below a real cluster dump;
        // alias limits stay at their defaults, which are what guard against YAML bombs.
        let options = serde_saphyr::options! {
            budget: serde_saphyr::budget! {
                max_documents: 10_000_000,
                max_nodes: 1_000_000_000,
                max_events: 1_000_000_000,
                max_total_scalar_bytes: 4 << 30,
                max_reader_input_bytes: Some(4 << 30),
            },
        };
        serde_saphyr::from_multiple_with_options::<Value>(text, options).map_err(|err| {
            ManifestError::Yaml {
                path: path.to_path_buf(),
                message: err.to_string(),
            }
        })?
    };
    let mut out = Vec::new();
    for (index, document) in documents.into_iter().enumerate() {
        visit(path, index + 1, document, None, &mut out)?;
    }
    Ok(out)
}

fn visit(
    path: &Path,
    document: usize,
    mut value: Value,
    default_kind: Option<&str>,
    out: &mut Vec<LoadedObject>,
) -> Result<(), ManifestError> {
    match &value {
        Value::Null => return Ok(()),
        Value::Array(_) => {
            let Value::Array(items) = value else {
                unreachable!("matched an array")
            };
            for item in items {
                visit(path, document, item, default_kind, out)?;
            }
            return Ok(());
        }
        Value::Object(_) => {}
        _ => {
            return Err(ManifestError::Document {
                path: path.to_path_buf(),
                document,
                message: "is not a Kubernetes object (expected a mapping with `kind`)".into(),
            });
        }
    }
    let kind = match value.get("kind").and_then(Value::as_str) {
        Some(kind) => kind.to_string(),
        None => match default_kind {
            Some(kind) => kind.to_string(),
            None => {
                return Err(ManifestError::Document {
                    path: path.to_path_buf(),
                    document,
                    message: "object has no `kind`".into(),
                });
            }
        },
    };
    if let Some(items) = value.get_mut("items").filter(|_| kind.ends_with("List")) {
        let items = items.take();
        let item_kind = kind.strip_suffix("List").filter(|k| !k.is_empty());
        return match items {
            Value::Array(items) => {
                for item in items {
                    visit(path, document, item, item_kind, out)?;
                }
                Ok(())
            }
            Value::Null => Ok(()),
            _ => Err(ManifestError::Document {
                path: path.to_path_buf(),
                document,
                message: format!("{kind}: field `items` is not a list"),
            }),
        };
    }
    let api_version = value
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let Some(canonical) = accepted_api_version(&kind, &api_version) else {
        tracing::warn!(
            file = %path.display(),
            kind = %kind,
            api_version = %api_version,
            name = %object_name(&value),
            "skipping object: kind plays no part in pod connectivity"
        );
        return Ok(());
    };
    // Typed with the current API version: old groups (extensions/v1beta1) share the fields
    // that matter here, and list items often carry no kind or apiVersion at all.
    if let Value::Object(map) = &mut value {
        map.insert("apiVersion".into(), Value::String(canonical.into()));
        map.insert("kind".into(), Value::String(kind.clone()));
    }
    let object = match kind.as_str() {
        "Namespace" => Object::Namespace(typed(path, &kind, value)?),
        "Pod" => Object::Pod(typed(path, &kind, value)?),
        "Deployment" => Object::Deployment(typed(path, &kind, value)?),
        "StatefulSet" => Object::StatefulSet(typed(path, &kind, value)?),
        "DaemonSet" => Object::DaemonSet(typed(path, &kind, value)?),
        "ReplicaSet" => Object::ReplicaSet(typed(path, &kind, value)?),
        "ReplicationController" => Object::ReplicationController(typed(path, &kind, value)?),
        "Job" => Object::Job(typed(path, &kind, value)?),
        "CronJob" => Object::CronJob(typed(path, &kind, value)?),
        "Service" => Object::Service(typed(path, &kind, value)?),
        "NetworkPolicy" => Object::NetworkPolicy(typed(path, &kind, value)?),
        "Node" => Object::Node(typed(path, &kind, value)?),
        "EndpointSlice" => Object::EndpointSlice(typed(path, &kind, value)?),
        _ => unreachable!("accepted_api_version admits only the kinds above"),
    };
    out.push(LoadedObject {
        source: path.to_path_buf(),
        object,
    });
    Ok(())
}

fn object_name(value: &Value) -> String {
    let meta = value.get("metadata");
    let name = meta
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    match meta
        .and_then(|m| m.get("namespace"))
        .and_then(Value::as_str)
    {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

fn typed<T: DeserializeOwned>(
    path: &Path,
    kind: &str,
    value: Value,
) -> Result<Box<T>, ManifestError> {
    let object = format!("{kind} {}", object_name(&value));
    serde_path_to_error::deserialize(value)
        .map(Box::new)
        .map_err(|err| ManifestError::Object {
            path: path.to_path_buf(),
            object,
            field: err.path().to_string(),
            message: err.inner().to_string(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_yaml_with_lists_and_unknown_kinds() {
        let text = r#"
apiVersion: v1
kind: Namespace
metadata: {name: a, labels: {team: x}}
---
---
apiVersion: v1
kind: ConfigMap
metadata: {name: skipped}
---
kind: PodList
apiVersion: v1
items:
- metadata: {name: p1, namespace: a}
  spec: {containers: [{name: c}]}
  someUnknownField: 3
"#;
        let objects = parse_str(Path::new("x.yaml"), text).unwrap();
        let kinds: Vec<_> = objects.iter().map(|o| o.object.kind()).collect();
        assert_eq!(kinds, ["Namespace", "Pod"]);
    }

    #[test]
    fn json_list_with_mixed_kinds() {
        let text = r#"{"kind":"List","apiVersion":"v1","items":[
            {"kind":"Service","apiVersion":"v1","metadata":{"name":"s"}},
            {"kind":"Deployment","apiVersion":"extensions/v1beta1","metadata":{"name":"d"},
             "spec":{"template":{"metadata":{"labels":{"app":"d"}}}}}]}"#;
        let objects = parse_str(Path::new("x.json"), text).unwrap();
        let kinds: Vec<_> = objects.iter().map(|o| o.object.kind()).collect();
        assert_eq!(kinds, ["Service", "Deployment"]);
    }

    #[test]
    fn type_error_names_file_object_and_field() {
        let text = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: np, namespace: a}
spec:
  podSelector: {}
  ingress:
  - ports:
    - port: [1, 2]
"#;
        let err = parse_str(Path::new("bad.yaml"), text)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad.yaml"), "{err}");
        assert!(err.contains("NetworkPolicy a/np"), "{err}");
        assert!(err.contains("spec.ingress[0].ports[0].port"), "{err}");
    }

    #[test]
    fn calico_policy_is_skipped_not_misread() {
        let text =
            "apiVersion: crd.projectcalico.org/v1\nkind: NetworkPolicy\nmetadata: {name: c}\n";
        assert!(parse_str(Path::new("c.yaml"), text).unwrap().is_empty());
    }
}
