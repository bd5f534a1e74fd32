//! Cluster state from the Kubernetes API: one kube-runtime watcher per kind (list, then watch;
//! re-list after `410 Gone`; exponential backoff on errors through `default_backoff()`).
//!
//! Objects are read as `DynamicObject` and converted one by one, so a single object the typed
//! model cannot read is reported by name and skipped (its last good version stays) instead of
//! failing the whole list.

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{Api, ApiResource, DynamicObject};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event, watcher};
use kube::{Client, Config};
use tokio::sync::{mpsc, watch};

use super::source::{SourceError, StateSource};
use super::state::{Object, ObjectKind, Stamped, StateUpdate};

pub struct KubeSource {
    client: Client,
}

impl KubeSource {
    /// In-cluster service account, else `KUBECONFIG` / `~/.kube/config`.
    pub async fn infer() -> Result<Self, SourceError> {
        let config = Config::infer()
            .await
            .map_err(|e| SourceError::KubeConfig(e.to_string()))?;
        Self::from_config(config)
    }

    /// A kubeconfig file (its current context).
    pub async fn from_kubeconfig(path: &std::path::Path) -> Result<Self, SourceError> {
        let bad = |e: String| SourceError::KubeConfig(format!("{}: {e}", path.display()));
        let kc = kube::config::Kubeconfig::read_from(path).map_err(|e| bad(e.to_string()))?;
        let config =
            Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| bad(e.to_string()))?;
        Self::from_config(config)
    }

    pub fn from_config(config: Config) -> Result<Self, SourceError> {
        let client =
            Client::try_from(config).map_err(|e| SourceError::KubeConfig(e.to_string()))?;
        Ok(Self { client })
    }

    pub fn from_client(client: Client) -> Self {
        Self { client }
    }
}

fn api_resource(kind: ObjectKind) -> ApiResource {
    match kind {
        ObjectKind::Namespace => ApiResource::erase::<Namespace>(&()),
        ObjectKind::Node => ApiResource::erase::<Node>(&()),
        ObjectKind::Pod => ApiResource::erase::<Pod>(&()),
        ObjectKind::Service => ApiResource::erase::<Service>(&()),
        ObjectKind::EndpointSlice => ApiResource::erase::<EndpointSlice>(&()),
        ObjectKind::NetworkPolicy => ApiResource::erase::<NetworkPolicy>(&()),
        ObjectKind::ReplicaSet => ApiResource::erase::<ReplicaSet>(&()),
        ObjectKind::Job => ApiResource::erase::<Job>(&()),
    }
}

fn describe(kind: ObjectKind, d: &DynamicObject) -> String {
    let name = d.metadata.name.as_deref().unwrap_or("<unnamed>");
    match d.metadata.namespace.as_deref() {
        Some(ns) => format!("{} {ns}/{name}", kind.name()),
        None => format!("{} {name}", kind.name()),
    }
}

fn ns_name(d: &DynamicObject) -> String {
    let name = d.metadata.name.as_deref().unwrap_or("<unnamed>");
    match d.metadata.namespace.as_deref() {
        Some(ns) if !ns.is_empty() => format!("{ns}/{name}"),
        _ => name.to_string(),
    }
}

/// The typed object, or an `Invalid` update naming it.
fn convert(kind: ObjectKind, d: DynamicObject) -> Result<Object, StateUpdate> {
    let input = format!("Kubernetes API object {}", describe(kind, &d));
    let value = serde_json::to_value(&d).map_err(|e| StateUpdate::Invalid {
        input: input.clone(),
        error: e.to_string(),
    })?;
    Object::from_json(kind, value).map_err(|error| StateUpdate::Invalid { input, error })
}

/// A deleted object only needs its identity; fall back to its metadata when the rest is bad.
fn convert_deleted(kind: ObjectKind, d: DynamicObject) -> Object {
    let meta = d.metadata.clone();
    convert(kind, d).unwrap_or_else(|_| Object::with_meta(kind, meta))
}

async fn watch_kind(
    client: Client,
    kind: ObjectKind,
    sink: mpsc::Sender<Stamped>,
    mut shutdown: watch::Receiver<bool>,
) {
    let api: Api<DynamicObject> = Api::all_with(client, &api_resource(kind));
    let stream = watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut listed: Vec<Object> = Vec::new();
    let mut invalid: Vec<String> = Vec::new();
    loop {
        let ev = tokio::select! {
            ev = stream.next() => ev,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Some(ev) = ev else { return };
        let update = match ev {
            Ok(Event::Init) => {
                listed.clear();
                invalid.clear();
                None
            }
            Ok(Event::InitApply(d)) => {
                let name = ns_name(&d);
                match convert(kind, d) {
                    Ok(o) => {
                        listed.push(o);
                        None
                    }
                    Err(bad) => {
                        invalid.push(name);
                        Some(bad)
                    }
                }
            }
            Ok(Event::InitDone) => Some(StateUpdate::Resync {
                kind,
                objects: std::mem::take(&mut listed),
                invalid: std::mem::take(&mut invalid),
            }),
            Ok(Event::Apply(d)) => Some(match convert(kind, d) {
                Ok(o) => StateUpdate::Apply(o),
                Err(bad) => bad,
            }),
            Ok(Event::Delete(d)) => Some(StateUpdate::Delete(convert_deleted(kind, d))),
            Err(e) => {
                // The watcher re-lists or re-watches by itself; the backoff spaces retries.
                tracing::warn!(kind = kind.name(), error = %e, "identity: Kubernetes watch error, retrying");
                None
            }
        };
        if let Some(update) = update {
            let stamped = Stamped {
                at: chrono::Utc::now(),
                update,
            };
            if sink.send(stamped).await.is_err() {
                return;
            }
        }
    }
}

impl StateSource for KubeSource {
    fn name(&self) -> &'static str {
        "kube"
    }

    fn run(
        self: Box<Self>,
        sink: mpsc::Sender<Stamped>,
        shutdown: watch::Receiver<bool>,
    ) -> BoxFuture<'static, Result<(), SourceError>> {
        Box::pin(async move {
            let tasks: Vec<_> = ObjectKind::ALL
                .into_iter()
                .map(|kind| {
                    tokio::spawn(watch_kind(
                        self.client.clone(),
                        kind,
                        sink.clone(),
                        shutdown.clone(),
                    ))
                })
                .collect();
            for t in tasks {
                let _ = t.await;
            }
            Ok(())
        })
    }
}
