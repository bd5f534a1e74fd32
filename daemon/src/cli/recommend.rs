//! `flowpol recommend`: least-privilege NetworkPolicies from the flows in a database (or of
//! every node's agent, `--cluster`), checked by the engine before they are printed. Also the
//! pieces `audit`, `drops` and `diff` share: the flow source, `--since`, and cluster state from
//! manifests or the Kubernetes API.
use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use clap::{Args, ValueEnum};
use flowpol_recommender::manifest::{self, LoadedObject};
use flowpol_recommender::model::Cluster;
use flowpol_recommender::observe::{Observation, observe_counted};
use flowpol_recommender::recommend::{
    Aggregate, Options, SYSTEM_NAMESPACES, cluster_with, recommend, verify,
};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde_json::{Value, json};

use crate::store::{Edge, EdgeQuery, Store, StoreError};

#[derive(Debug, thiserror::Error)]
pub enum ObservedError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("starting the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error(
        "database {} holds no flows; record some first (`flowpol agent --db {}`) or pass the right --db",
        path.display(), path.display()
    )]
    Empty { path: PathBuf },
    #[error(
        "database {} holds no flows seen since {since} (--since); widen --since (it holds {rows} rows in all)",
        path.display()
    )]
    EmptyWindow {
        path: PathBuf,
        since: DateTime<Utc>,
        rows: u64,
    },
    #[error("--since `{0}`: neither a duration (5m, 2h, 1d) nor an RFC 3339 time")]
    Since(String),
    #[error("--kube: {0}")]
    Kube(String),
    #[error("--policies {}: holds no NetworkPolicy (networking.k8s.io/v1)", .0.display())]
    NoPolicies(PathBuf),
    #[error("writing the output: {0}")]
    Output(#[source] std::io::Error),
    #[error("--cluster: {0:#}")]
    Cluster(anyhow::Error),
    #[error(
        "--cluster: the agents returned no flows{} ({failed} of {asked} nodes failed); check --agent-namespace / --agent-selector or widen --since",
        since.map(|s| format!(" seen since {s}")).unwrap_or_default()
    )]
    ClusterEmpty {
        since: Option<DateTime<Utc>>,
        failed: usize,
        asked: usize,
    },
}

/// Where the observed flows come from: one database, or every node's agent
/// through the Kubernetes API server (`--cluster`).
#[derive(Debug, Args, Clone)]
pub struct FlowSourceArgs {
    /// The flowpol database to read (opened read-only).
    #[arg(
        long,
        value_name = "PATH",
        env = "FLOWPOL_DB",
        required_unless_present = "cluster"
    )]
    pub db: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: crate::cli::flows_cluster::ClusterArgs,
}

/// The flows of the window, folded per edge: from the database, or from every
/// agent (`--cluster`; each node's merged flows count one each, per-node
/// failures are warnings).
pub async fn observed_edges(
    source: &FlowSourceArgs,
    since: Option<DateTime<Utc>>,
    cluster: &Cluster,
) -> Result<Vec<Edge>, ObservedError> {
    match &source.db {
        Some(db) if !source.cluster.cluster => observed_flows(db, since, cluster).await,
        _ => cluster_edges(&source.cluster, since).await,
    }
}

async fn cluster_edges(
    args: &crate::cli::flows_cluster::ClusterArgs,
    since: Option<DateTime<Utc>>,
) -> Result<Vec<Edge>, ObservedError> {
    use crate::cli::flows::Since;
    use crate::serve::cluster::{find_agents, gather_flows};
    use crate::serve::filter::FlowFilter;
    let target = args.target().map_err(ObservedError::Cluster)?;
    let client = args.client().await.map_err(ObservedError::Cluster)?;
    let asked = find_agents(&client, &target)
        .await
        .map_err(|e| ObservedError::Cluster(e.into()))?
        .len();
    let filter = FlowFilter {
        since: since.map(Since::At),
        ..Default::default()
    };
    let (flows, failures) = gather_flows(&client, &target, &filter, None)
        .await
        .map_err(|e| ObservedError::Cluster(e.into()))?;
    for f in &failures {
        eprintln!("warning: {f}");
    }
    if flows.is_empty() {
        return Err(ObservedError::ClusterEmpty {
            since,
            failed: failures.len(),
            asked,
        });
    }
    Ok(flows
        .into_iter()
        .map(|record| Edge {
            flows: record.flows(),
            record,
        })
        .collect())
}

/// `--since DURATION|TIME` → the instant it names.
pub fn since_instant(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, ObservedError> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Ok(t.with_timezone(&Utc));
    }
    let d = humantime::parse_duration(text).map_err(|_| ObservedError::Since(text.into()))?;
    Ok(chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| now.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC))
}

pub fn runtime() -> Result<tokio::runtime::Runtime, ObservedError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ObservedError::Runtime)
}

/// The flow source of recommend, audit, drops and diff: the edges of the window, each a record
/// standing for the flows it merged (see `store::edges`), so time and memory follow edges, not
/// stored rows. `cluster` names the node addresses, which stay apart even at pod ends
/// (hostNetwork pods). One place, so other sources can plug in here.
pub async fn observed_flows(
    db: &Path,
    since: Option<DateTime<Utc>>,
    cluster: &Cluster,
) -> Result<Vec<Edge>, ObservedError> {
    let store = Store::open_read_only(db).await?;
    let flows = store
        .query_edges(&EdgeQuery {
            since,
            keep_addresses: cluster
                .nodes
                .iter()
                .flat_map(|n| n.addresses.iter().copied())
                .collect(),
        })
        .await?;
    if flows.is_empty() {
        let rows = store.count_rows().await?;
        store.close().await;
        return Err(match since {
            Some(since) if rows > 0 => ObservedError::EmptyWindow {
                path: db.to_path_buf(),
                since,
                rows,
            },
            _ => ObservedError::Empty {
                path: db.to_path_buf(),
            },
        });
    }
    store.close().await;
    Ok(flows)
}

/// Cluster state options shared by the commands.
#[derive(Debug, Args, Clone)]
pub struct StateArgs {
    /// Cluster state from manifests (files or folders; `kubectl get -o yaml` dumps, the lab's
    /// cluster.yaml).
    #[arg(long = "manifests", value_name = "PATH", num_args = 1..)]
    pub manifests: Vec<PathBuf>,
    /// Cluster state from the Kubernetes API (in-cluster config or KUBECONFIG).
    #[arg(long)]
    pub kube: bool,
}

impl StateArgs {
    /// The objects of the cluster state (empty when neither flag is given);
    /// `--kube` reads through `kubeconfig` (the `--kubeconfig` flag shared with
    /// `--cluster`).
    pub fn load(
        &self,
        rt: &tokio::runtime::Runtime,
        kubeconfig: Option<&Path>,
    ) -> anyhow::Result<Vec<LoadedObject>> {
        let mut objects = manifest::load_paths(&self.manifests)?;
        if self.kube {
            objects.extend(rt.block_on(kube_objects(kubeconfig))?);
        }
        Ok(objects)
    }
}

/// Reads the kinds the model uses from the Kubernetes API, once (no watch).
pub async fn kube_objects(kubeconfig: Option<&Path>) -> Result<Vec<LoadedObject>, ObservedError> {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
    use k8s_openapi::api::batch::v1::{CronJob, Job};
    use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
    use k8s_openapi::api::networking::v1::NetworkPolicy;
    let bad = |e: String| ObservedError::Kube(e);
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .map_err(|e| bad(format!("{}: {e}", path.display())))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|e| bad(format!("{}: {e}", path.display())))?
        }
        None => kube::Config::infer()
            .await
            .map_err(|e| bad(format!("no cluster configuration: {e}")))?,
    };
    let client = kube::Client::try_from(config).map_err(|e| bad(e.to_string()))?;
    let resources = [
        ApiResource::erase::<Namespace>(&()),
        ApiResource::erase::<Node>(&()),
        ApiResource::erase::<Pod>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<DaemonSet>(&()),
        ApiResource::erase::<ReplicaSet>(&()),
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<CronJob>(&()),
    ];
    let mut items = Vec::new();
    for ar in &resources {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), ar);
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for obj in list.items {
                    let mut v = serde_json::to_value(&obj).map_err(|e| bad(e.to_string()))?;
                    v["kind"] = json!(ar.kind);
                    v["apiVersion"] = json!(ar.api_version);
                    items.push(v);
                }
            }
            // A cluster (or API peer) that does not serve a kind has none of it.
            Err(kube::Error::Api(e)) if e.code == 404 => {
                tracing::warn!(kind = %ar.kind, "the Kubernetes API does not serve this kind; skipped");
            }
            Err(e) => return Err(bad(format!("listing {}: {e}", ar.plural))),
        }
    }
    let text = serde_json::to_string(&json!({"apiVersion": "v1", "kind": "List", "items": items}))
        .map_err(|e| bad(e.to_string()))?;
    manifest::parse_str(Path::new("kubernetes-api"), &text).map_err(|e| bad(e.to_string()))
}

/// Policies from `--policies` paths; each path must hold at least one.
/// What `audit`, `drops` and `diff` start from.
pub struct PolicyView {
    /// The given policies and the cluster state, as loaded.
    pub objects: Vec<LoadedObject>,
    /// The observed edges of the window.
    pub edges: Vec<Edge>,
    /// The edges as the recommender observes them.
    pub observation: Observation,
    /// The cluster state with the policies, and the workloads only the flows name.
    pub cluster: Cluster,
}

/// Loads `--policies` and the cluster state, reads the window's edges from the flow
/// source and observes them; workloads the flows name but the state lacks are modelled
/// from the flows.
pub fn policy_view(
    policies: &[PathBuf],
    state: &StateArgs,
    source: &FlowSourceArgs,
    since: Option<&str>,
) -> anyhow::Result<PolicyView> {
    let since = since.map(|s| since_instant(s, Utc::now())).transpose()?;
    let rt = runtime()?;
    let mut objects = load_policies(policies)?;
    objects.extend(state.load(&rt, source.cluster.kubeconfig.as_deref())?);
    let named = Cluster::from_objects(
        objects
            .iter()
            .filter(|o| !matches!(o.object, manifest::Object::NetworkPolicy(_)))
            .cloned()
            .collect(),
    )?;
    let edges = rt.block_on(observed_edges(source, since, &named))?;
    let observation = observe_counted(edges.iter().map(|e| (&e.record, e.flows)), &named);
    let cluster = cluster_with(&objects, &observation, Vec::new(), false)?;
    Ok(PolicyView {
        objects,
        edges,
        observation,
        cluster,
    })
}

pub fn load_policies(paths: &[PathBuf]) -> anyhow::Result<Vec<LoadedObject>> {
    let mut out = Vec::new();
    for path in paths {
        let objects = manifest::load_paths(std::slice::from_ref(path))?;
        if !objects
            .iter()
            .any(|o| matches!(o.object, manifest::Object::NetworkPolicy(_)))
        {
            return Err(ObservedError::NoPolicies(path.clone()).into());
        }
        out.extend(objects);
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DocFormat {
    Yaml,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PolicyFormat {
    /// networking.k8s.io/v1 NetworkPolicy.
    Kubernetes,
    /// cilium.io/v2 CiliumNetworkPolicy.
    Cilium,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("state").required(true).args(["manifests", "kube"])))]
#[command(group(clap::ArgGroup::new("scope").args(["namespace", "all_namespaces"])))]
pub struct RecommendArgs {
    #[command(flatten)]
    pub source: FlowSourceArgs,
    #[command(flatten)]
    pub state: StateArgs,
    /// Only these namespaces (repeat the flag for more).
    #[arg(long, short = 'n', value_name = "NAMESPACE")]
    pub namespace: Vec<String>,
    /// Every namespace with observed workloads, kube-system, kube-public and kube-node-lease
    /// included (without -n or -A those three are left out).
    #[arg(long, short = 'A')]
    pub all_namespaces: bool,
    /// Only flows seen in this recent period (`5m`, `2h`, `1d`) or since this RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    /// Output: YAML documents or a JSON List.
    #[arg(long, short = 'o', value_enum, default_value_t = DocFormat::Yaml)]
    pub output: DocFormat,
    /// Policy flavour.
    #[arg(long, value_enum, default_value_t = PolicyFormat::Kubernetes)]
    pub format: PolicyFormat,
    /// Widen outside addresses to this prefix (`24`, or `24,64` for IPv4,IPv6), with `except`
    /// for the private ranges a wider block spans.
    #[arg(long, value_name = "PREFIX")]
    pub aggregate_external: Option<String>,
    /// Warn about workloads observed for less than this.
    #[arg(long, value_name = "DURATION", default_value = "1h")]
    pub min_observed: String,
}

/// Prints documents as YAML (`---` separated) or one JSON List.
pub fn print_documents(
    docs: &[Value],
    format: DocFormat,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    match format {
        DocFormat::Yaml => {
            for d in docs {
                writeln!(out, "---").map_err(ObservedError::Output)?;
                write!(out, "{}", serde_saphyr::to_string(d)?).map_err(ObservedError::Output)?;
            }
        }
        DocFormat::Json => {
            let list = json!({"apiVersion": "v1", "kind": "List", "items": docs});
            writeln!(out, "{}", serde_json::to_string_pretty(&list)?)
                .map_err(ObservedError::Output)?;
        }
    }
    Ok(())
}

pub fn run(args: RecommendArgs) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let since = args
        .since
        .as_deref()
        .map(|s| since_instant(s, now))
        .transpose()?;
    let aggregate = args
        .aggregate_external
        .as_deref()
        .map(Aggregate::parse)
        .transpose()?;
    let min_observed = humantime::parse_duration(&args.min_observed)
        .map_err(|e| anyhow::anyhow!("--min-observed `{}`: {e}", args.min_observed))?;
    let rt = runtime()?;
    let objects = args
        .state
        .load(&rt, args.source.cluster.kubeconfig.as_deref())?;
    let cluster = Cluster::from_objects(objects.clone())?;
    let flows = rt.block_on(observed_edges(&args.source, since, &cluster))?;
    let obs = observe_counted(flows.iter().map(|e| (&e.record, e.flows)), &cluster);
    let opts = Options {
        namespaces: (!args.namespace.is_empty() && !args.all_namespaces)
            .then(|| args.namespace.iter().cloned().collect::<BTreeSet<_>>()),
        aggregate_external: aggregate,
        min_observed: chrono::Duration::from_std(min_observed).unwrap_or(chrono::Duration::MAX),
        skip_namespaces: if args.all_namespaces || !args.namespace.is_empty() {
            BTreeSet::new()
        } else {
            SYSTEM_NAMESPACES.iter().map(|s| s.to_string()).collect()
        },
    };
    let rec = recommend(&obs, &cluster, &opts);
    let check = verify(&objects, &obs, &rec)?;

    let docs: Vec<Value> = rec
        .policies
        .iter()
        .map(|p| match args.format {
            PolicyFormat::Kubernetes => p.to_json(),
            PolicyFormat::Cilium => p.to_cilium_json(),
        })
        .collect();
    // The summary goes to stderr so stdout can be applied as it is.
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "# flowpol recommend: {} policies for {} workloads in {} namespaces from {} flows ({} edges{}{})",
        rec.policies.len(),
        rec.workloads.len(),
        rec.policies
            .iter()
            .map(|p| p.namespace.as_str())
            .collect::<BTreeSet<_>>()
            .len(),
        flows.iter().map(|e| e.flows).sum::<u64>(),
        obs.edges.len(),
        if obs.skipped.dropped + obs.skipped.unanswered > 0 {
            format!(
                "; {} dropped and {} unanswered flows not used as evidence",
                obs.skipped.dropped, obs.skipped.unanswered
            )
        } else {
            String::new()
        },
        match obs.window {
            Some((a, b)) => format!(
                "; window {} .. {}",
                a.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                b.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
            None => String::new(),
        },
    );
    for w in &rec.workloads {
        let _ = writeln!(
            err,
            "#   {}: {} flows over {}s → {}",
            w.workload,
            w.flows,
            w.observed_seconds,
            w.policy.as_deref().unwrap_or("(no policy of its own)")
        );
    }
    for w in &rec.warnings {
        let _ = writeln!(err, "# warning: {w}");
    }
    let _ = writeln!(
        err,
        "# verified by the engine: {} of {} observed connections allowed; beyond them the policies allow {} workload pairs never observed or on unobserved ports ({} ports){}",
        check.edges_checked - check.denied.len() as u64,
        check.edges_checked,
        check.extra_pairs,
        check.extra_ports,
        if check.extra_pairs == 0 {
            " (the goal: zero)"
        } else {
            ""
        },
    );
    for x in &check.extra {
        let _ = writeln!(
            err,
            "#   also allowed: {} → {}: {} ({} ports never observed)",
            x.from, x.to, x.allowed, x.unobserved_ports
        );
    }
    for u in &check.unverifiable {
        let _ = writeln!(err, "#   not checked (the engine cannot place it): {u}");
    }
    if args.format == PolicyFormat::Cilium {
        let _ = writeln!(
            err,
            "# note: the engine checked the equivalent NetworkPolicies; the CiliumNetworkPolicies carry the same rules (node peers as the host/remote-node entities)"
        );
    }
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    print_documents(&docs, args.output, &mut out)?;
    out.flush().map_err(ObservedError::Output)?;
    if !check.denied.is_empty() {
        for d in &check.denied {
            let _ = writeln!(
                err,
                "error: the recommendation denies an observed connection: {} → {} {}/{}: {}",
                d.edge.src, d.edge.dst, d.edge.port, d.edge.protocol, d.reason
            );
        }
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
