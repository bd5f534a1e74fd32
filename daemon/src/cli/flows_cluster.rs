//! `flowpol flows --cluster [--follow]`: the flows of every node's agent,
//! through the Kubernetes API server's pod proxy (see `serve::cluster`).
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;

use super::flows::{FlowsArgs, OutputFormat, Printer};
use crate::serve::cluster::{AgentTarget, FollowEvent, NodeFailure, follow_flows, gather_flows};
use crate::serve::filter::FlowFilter;

/// Flags shared by the commands that read from every agent (`--cluster`).
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Read from every node's agent through the Kubernetes API server
    /// (kubeconfig or in-cluster), not from a local database (--db is ignored).
    #[arg(long)]
    pub cluster: bool,
    /// Namespace of the agent pods.
    #[arg(
        long,
        value_name = "NAMESPACE",
        default_value = "flowpol",
        env = "FLOWPOL_AGENT_NAMESPACE"
    )]
    pub agent_namespace: String,
    /// Label selector of the agent pods.
    #[arg(
        long,
        value_name = "SELECTOR",
        default_value = "app.kubernetes.io/name=flowpol",
        env = "FLOWPOL_AGENT_SELECTOR"
    )]
    pub agent_selector: String,
    /// The agents' API port, when a pod declares no container port named `api` or `http`.
    #[arg(long, value_name = "PORT", default_value_t = crate::serve::DEFAULT_PORT, env = "FLOWPOL_AGENT_PORT")]
    pub agent_port: u16,
    /// File with the agents' bearer token.
    #[arg(
        long = "agent-token-file",
        value_name = "PATH",
        env = "FLOWPOL_AGENT_TOKEN_FILE"
    )]
    pub token_file: Option<PathBuf>,
    /// kubeconfig to use (default: in-cluster, else KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "PATH", env = "FLOWPOL_KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
}

impl ClusterArgs {
    /// The agents to ask, with the token read.
    pub fn target(&self) -> anyhow::Result<AgentTarget> {
        let token = match &self.token_file {
            Some(p) => Some(crate::serve::read_token(p)?),
            None => None,
        };
        Ok(AgentTarget {
            namespace: self.agent_namespace.clone(),
            selector: self.agent_selector.clone(),
            port: self.agent_port,
            token,
        })
    }

    /// A kube client from --kubeconfig, else the usual inference.
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let config = match &self.kubeconfig {
            Some(path) => {
                let kc = kube::config::Kubeconfig::read_from(path)
                    .with_context(|| format!("--kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .with_context(|| format!("--kubeconfig {}", path.display()))?
            }
            None => kube::Config::infer()
                .await
                .context("finding a Kubernetes API server (in-cluster or kubeconfig)")?,
        };
        crate::serve::cluster::agent_client(config).context("building the Kubernetes client")
    }
}

/// Prints per-node failures: JSON objects on stderr with `-o json`, else
/// warnings.
pub fn report_failures(failures: &[NodeFailure], format: OutputFormat) {
    for f in failures {
        match format {
            OutputFormat::Json => eprintln!("{}", serde_json::json!({ "node_failure": f })),
            OutputFormat::Table => eprintln!("warning: {f}"),
        }
    }
}

pub fn run(args: &FlowsArgs) -> anyhow::Result<ExitCode> {
    if args.per_interval {
        anyhow::bail!("--per-interval reads one database; it cannot be combined with --cluster");
    }
    let filter = FlowFilter {
        since: args.since,
        verdict: args.verdict,
        namespace: args.namespace.clone(),
        workload: args.workload.clone(),
        selector: args.selector.clone(),
        protocol: args.protocol,
    };
    let target = args.cluster.target()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let client = args.cluster.client().await?;
        if args.follow {
            return follow(&client, &target, &filter, args.output).await;
        }
        let (flows, failures) = gather_flows(&client, &target, &filter, args.limit).await?;
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        let mut printer = Printer::new(args.output);
        printer.print_all(&flows, &mut out)?;
        printer.finish(&mut out)?;
        out.flush().ok();
        report_failures(&failures, args.output);
        let agents = flows_node_count(&flows, &failures);
        Ok(
            if failures.len() >= agents && !failures.is_empty() && flows.is_empty() {
                // Not one agent answered: nothing here is a cluster view.
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            },
        )
    })
}

/// Nodes that answered or failed (for the "no agent answered" check).
fn flows_node_count(
    flows: &[flowpol_recommender::flow::FlowRecord],
    failures: &[NodeFailure],
) -> usize {
    let mut nodes: Vec<&str> = flows.iter().filter_map(|f| f.node.as_deref()).collect();
    nodes.extend(failures.iter().map(|f| f.node.as_str()));
    nodes.sort_unstable();
    nodes.dedup();
    nodes.len()
}

async fn follow(
    client: &kube::Client,
    target: &AgentTarget,
    filter: &FlowFilter,
    format: OutputFormat,
) -> anyhow::Result<ExitCode> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(1024);
    let client = client.clone();
    let target = target.clone();
    let filter = filter.clone();
    let task = tokio::spawn(async move { follow_flows(&client, &target, &filter, tx).await });
    let mut printer = Printer::new(OutputFormat::Json);
    loop {
        let event = tokio::select! {
            e = rx.recv() => e,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(event) = event else { break };
        match event {
            FollowEvent::Flow { flow, .. } => {
                let stdout = std::io::stdout();
                let mut out = stdout.lock();
                match format {
                    OutputFormat::Json => {
                        printer.print_all(std::slice::from_ref(&flow), &mut out)?
                    }
                    OutputFormat::Table => {
                        // One row at a time: no column alignment while streaming.
                        writeln!(out, "{}", super::flows::table_line(&flow))?;
                    }
                }
                out.flush().ok();
            }
            FollowEvent::Failed(f) => report_failures(&[f], format),
        }
    }
    task.abort();
    if let Ok(Ok(Err(e))) = tokio::time::timeout(std::time::Duration::from_millis(100), task).await
    {
        return Err(e.into());
    }
    Ok(ExitCode::SUCCESS)
}
