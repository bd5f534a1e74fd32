//! `flowpol explain`: whether one connection is allowed, and why.
//!
//! Exit status: 0 allowed, 1 denied (for any pod pair of the two peers), 2 bad input.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use flowpol_recommender::engine::{Engine, Settings};
use flowpol_recommender::explain::{explain, parse_port};
use flowpol_recommender::model::Cluster;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ExplainFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Manifest files or folders (read recursively).
    #[arg(long = "manifests", value_name = "PATH", required = true, num_args = 1..)]
    pub manifests: Vec<PathBuf>,
    /// Source: NS/WORKLOAD, NS/WORKLOAD[Kind], NS/POD or an IP address.
    #[arg(long, value_name = "NS/WORKLOAD|IP")]
    pub from: String,
    /// Destination: NS/WORKLOAD, NS/WORKLOAD[Kind], NS/POD or an IP address.
    #[arg(long, value_name = "NS/WORKLOAD|IP")]
    pub to: String,
    /// Destination port and protocol, e.g. 8080 (TCP) or 53/UDP.
    #[arg(long, value_name = "N[/PROTO]")]
    pub port: String,
    /// Whether an ipBlock also matches pod IPs (upstream e2e semantics).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub ipblock_matches_pods: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: ExplainFormat,
}

pub fn run(args: ExplainArgs) -> anyhow::Result<ExitCode> {
    // Flags are checked before the manifests are read: a typo fails fast.
    let (protocol, port) = parse_port(&args.port)?;
    let cluster = Cluster::load(&args.manifests)?;
    let engine = Engine::new(
        &cluster,
        Settings {
            ipblock_matches_pods: args.ipblock_matches_pods,
        },
    );
    let explanation = explain(&engine, &args.from, &args.to, protocol, port)?;
    match args.output {
        ExplainFormat::Text => print!("{}", explanation.render_text()),
        ExplainFormat::Json => println!("{}", serde_json::to_string_pretty(&explanation)?),
    }
    Ok(if explanation.allowed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
