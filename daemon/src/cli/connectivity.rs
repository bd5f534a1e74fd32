//! `flowpol connectivity`: who may talk to whom under the manifests' NetworkPolicies.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use flowpol_recommender::connectivity::{Connectivity, OutputFormat};
use flowpol_recommender::engine::{Engine, Settings};
use flowpol_recommender::model::Cluster;

#[derive(Debug, Args)]
pub struct ConnectivityArgs {
    /// Manifest files or folders (read recursively): YAML (multi-document) or JSON, lists and
    /// `kubectl get -o yaml|json` dumps included.
    #[arg(long = "manifests", value_name = "PATH", required = true, num_args = 1..)]
    pub manifests: Vec<PathBuf>,
    /// Output format: txt (np-guard netpol-analyzer's format), json, md, csv or dot.
    #[arg(short = 'o', long = "output", default_value = "txt", value_parser = parse_format)]
    pub output: OutputFormat,
    /// Whether an ipBlock also matches pod IPs (upstream e2e semantics). `false` treats
    /// ipBlocks as cluster-external only, as netpol-analyzer and some CNIs do.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub ipblock_matches_pods: bool,
}

fn parse_format(text: &str) -> Result<OutputFormat, String> {
    text.parse()
        .map_err(|e: flowpol_recommender::connectivity::UnknownFormat| e.to_string())
}

pub fn run(args: ConnectivityArgs) -> anyhow::Result<ExitCode> {
    let cluster = Cluster::load(&args.manifests)?;
    let engine = Engine::new(
        &cluster,
        Settings {
            ipblock_matches_pods: args.ipblock_matches_pods,
        },
    );
    let report = Connectivity::analyze(&engine);
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(report.render(args.output).as_bytes())
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}
