//! One source of cluster state behind one trait: the Kubernetes API
//! ([`super::kube_source::KubeSource`]) or manifests on disk
//! ([`super::manifest_source::ManifestSource`]).

use futures::future::BoxFuture;
use tokio::sync::{mpsc, watch};

use super::state::Stamped;

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "Kubernetes client configuration: {0} (set KUBECONFIG, or run in a pod with a service account)"
    )]
    KubeConfig(String),
    #[error("manifests: {0}")]
    Manifests(String),
}

/// A source of cluster state. It sends a `Resync` for every kind once its first full list is
/// in, then changes as they happen, and stops when `shutdown` turns true.
pub trait StateSource: Send {
    /// For logs: `kube` or `manifests`.
    fn name(&self) -> &'static str;

    fn run(
        self: Box<Self>,
        sink: mpsc::Sender<Stamped>,
        shutdown: watch::Receiver<bool>,
    ) -> BoxFuture<'static, Result<(), SourceError>>;
}
