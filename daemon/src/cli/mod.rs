//! The `flowpol` command line. One module per command; each owns its flags.
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "flowpol",
    version,
    about = "Observe pod traffic with eBPF; recommend, audit and explain Kubernetes NetworkPolicies"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Log filter (tracing EnvFilter syntax), e.g. `info`, `flowpol=debug`.
    #[arg(long, global = true, env = "FLOWPOL_LOG", default_value = "info")]
    pub log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true, env = "FLOWPOL_LOG_JSON")]
    pub log_json: bool,
    /// Log format: `text` or `json` (same as --log-json).
    #[arg(long, global = true, env = "FLOWPOL_LOG_FORMAT", value_parser = ["text", "json"])]
    pub log_format: Option<String>,
    /// YAML file of flag values (keys are long flag names); flags and
    /// environment variables win over it.
    #[arg(long, global = true, value_name = "PATH", env = "FLOWPOL_CONFIG")]
    pub config: Option<std::path::PathBuf>,
}

pub mod agent;
#[cfg(feature = "agent")]
pub(crate) use agent::agent_serve_impl as agent_serve;
pub mod connectivity;
pub mod explain;
pub mod flows;
pub mod flows_cluster;
pub mod lab;
pub mod lint;
// recommend / audit / drops / diff
pub mod audit;
pub mod diff;
pub mod drops;
pub mod recommend;
// deploy: `kubectl flowpol` (argv[0] = kubectl-flowpol).
pub mod plugin;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent: capture flows and drops with eBPF into SQLite.
    Agent(agent::AgentArgs),
    /// List stored flows.
    Flows(flows::FlowsArgs),
    /// Who may talk to whom under the given manifests' NetworkPolicies.
    Connectivity(connectivity::ConnectivityArgs),
    /// Whether one connection is allowed, and why.
    Explain(explain::ExplainArgs),
    /// Find common NetworkPolicy mistakes.
    Lint(lint::LintArgs),
    /// A mini-cluster of network namespaces built from a scenario folder (Linux, root).
    Lab(lab::LabArgs),
    /// Least-privilege NetworkPolicies from observed flows, checked by the engine.
    Recommend(recommend::RecommendArgs),
    /// Observed flows that given policies would deny, with the rule that admits each (exit 1).
    Audit(audit::AuditArgs),
    /// Dropped and unanswered flows, why, and the missing allow rule.
    Drops(drops::DropsArgs),
    /// Rules no observed flow used, and observed traffic no rule covers.
    Diff(diff::DiffArgs),
}

pub fn init_tracing(global: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_new(&global.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if global.log_json || global.log_format.as_deref() == Some("json") {
        builder.json().init();
    } else {
        builder.init();
    }
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Agent(args) => agent::run(args),
        Command::Flows(args) => flows::run(args),
        Command::Connectivity(args) => connectivity::run(args),
        Command::Explain(args) => explain::run(args),
        Command::Lint(args) => lint::run(args),
        Command::Lab(args) => lab::run(args),
        Command::Recommend(args) => recommend::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Drops(args) => drops::run(args),
        Command::Diff(args) => diff::run(args),
    }
}
