//! Identity in the node agent: `--kube` / `--manifests PATH...`, a state source running next to
//! the capture loop, and a sink wrapper that enriches every drained batch before it is written.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use sqlx::SqlitePool;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::cgroup::{CgroupResolver, FsCgroupTree};
use super::kube_source::KubeSource;
use super::manifest_source::ManifestSource;
use super::persist::IdentityDb;
use super::source::StateSource;
use super::{Enricher, Identity, IdentityError, run_source};

#[derive(Debug, Clone, Args)]
pub struct IdentityArgs {
    /// Resolve flow endpoints with the Kubernetes API (in-cluster service account or
    /// KUBECONFIG). The default when running in a pod (KUBERNETES_SERVICE_HOST is set).
    #[arg(long, conflicts_with = "manifests", env = "FLOWPOL_KUBE")]
    pub kube: bool,
    /// kubeconfig file for --kube (default: in-cluster service account, else KUBECONFIG or
    /// ~/.kube/config).
    #[arg(
        long,
        value_name = "PATH",
        requires = "kube",
        env = "FLOWPOL_KUBECONFIG"
    )]
    pub kubeconfig: Option<PathBuf>,
    /// Resolve flow endpoints from manifests on disk (YAML/JSON files or folders; re-read
    /// when they change).
    #[arg(long, value_name = "PATH", num_args = 1.., env = "FLOWPOL_MANIFESTS", value_delimiter = ',')]
    pub manifests: Vec<PathBuf>,
    /// How long ownership of deleted pods and reused IPs is kept for resolving old flows.
    #[arg(long, default_value = "7d", value_parser = humantime::parse_duration, env = "FLOWPOL_IDENTITY_RETENTION")]
    pub identity_retention: Duration,
    /// How long the agent waits at start for the first full list of cluster state.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration, env = "FLOWPOL_IDENTITY_WAIT")]
    pub identity_wait: Duration,
}

/// The running identity layer of the agent.
pub struct IdentityRuntime {
    pub enricher: Arc<Enricher>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), IdentityError>>,
}

impl IdentityRuntime {
    /// Starts the source the flags ask for; `None` when no source is asked for (and not in a
    /// cluster). `pool` is the flow store's database: the time line is kept there too.
    pub async fn start(
        args: &IdentityArgs,
        pool: Option<SqlitePool>,
    ) -> Result<Option<Self>, IdentityError> {
        let in_cluster = std::env::var_os("KUBERNETES_SERVICE_HOST").is_some();
        let source: Box<dyn StateSource> = if !args.manifests.is_empty() {
            Box::new(ManifestSource::new(args.manifests.clone())?)
        } else if let Some(path) = &args.kubeconfig {
            Box::new(KubeSource::from_kubeconfig(path).await?)
        } else if args.kube || in_cluster {
            Box::new(KubeSource::infer().await?)
        } else {
            tracing::info!(
                "identity: no --kube or --manifests: flows are recorded without pod identity"
            );
            return Ok(None);
        };
        let db = pool.map(IdentityDb::from_pool);
        let identity = match &db {
            Some(db) => {
                let since = chrono::Utc::now()
                    - chrono::Duration::from_std(args.identity_retention)
                        .unwrap_or(chrono::Duration::days(7));
                Arc::new(Identity::with_timeline(
                    db.load(since.timestamp_millis()).await?,
                ))
            }
            None => Identity::new(),
        };
        let cgroups = match FsCgroupTree::from_proc_mounts() {
            Ok(tree) => Some(CgroupResolver::new(Box::new(tree))),
            Err(e) => {
                tracing::warn!(error = %e, "identity: no cgroup v2: local ends are named by IP only");
                None
            }
        };
        tracing::info!(source = source.name(), "identity: starting");
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(run_source(
            identity.clone(),
            source,
            db,
            args.identity_retention,
            rx,
        ));
        if tokio::time::timeout(args.identity_wait, identity.wait_ready())
            .await
            .is_err()
        {
            tracing::warn!(
                wait = ?args.identity_wait,
                "identity: cluster state not complete yet; capturing anyway, endpoints resolve as state arrives"
            );
        }
        Ok(Some(Self {
            enricher: Arc::new(Enricher::new(identity, cgroups)),
            stop,
            task,
        }))
    }

    /// Stops the source and waits for it.
    pub async fn shutdown(self) -> Result<(), IdentityError> {
        self.stop.send_replace(true);
        match self.task.await {
            Ok(res) => res,
            Err(e) => {
                tracing::warn!(error = %e, "identity: source task ended abnormally");
                Ok(())
            }
        }
    }
}

/// Enriches each batch, then hands it to the inner sink.
#[cfg(feature = "agent")]
pub struct EnrichingSink<S> {
    pub enricher: Arc<Enricher>,
    pub inner: S,
}

#[cfg(feature = "agent")]
impl crate::agent::EnrichRecords for Enricher {
    fn enrich_records(&self, records: &mut [flowpol_recommender::flow::FlowRecord]) {
        self.enrich(records);
    }
}

#[cfg(feature = "agent")]
impl<S: crate::agent::FlowSink + Send> crate::agent::FlowSink for EnrichingSink<S> {
    fn write_teed<'a>(
        &'a mut self,
        batch: &'a crate::agent::DrainBatch,
        tee: crate::agent::Tee<'a>,
    ) -> crate::agent::SinkWrite<'a> {
        Box::pin(async move {
            // Enriching is idempotent, so a batch the store retries resolves the
            // same. The sinks enrich a chunk of records at a time as they write.
            let mut enriched = batch.clone();
            if let Some(folded) = self.enricher.fold_service_views(&batch.flows) {
                enriched.flows = Arc::new(folded);
            }
            enriched.enrich = Some(self.enricher.clone());
            self.inner.write_teed(&enriched, tee).await
        })
    }
}
