//! `flowpol diff`: rules of the given policies that no flow in the window used, and observed
//! traffic that no rule covers.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use flowpol_recommender::audit::diff;

use super::recommend::{FlowSourceArgs, ObservedError, StateArgs, policy_view};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiffFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct DiffArgs {
    #[command(flatten)]
    pub source: FlowSourceArgs,
    /// The NetworkPolicies to compare with the traffic (files or folders).
    #[arg(long, value_name = "PATH", num_args = 1.., required = true)]
    pub policies: Vec<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
    /// Only flows seen in this recent period (`5m`, `2h`, `1d`) or since this RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t = DiffFormat::Table)]
    pub output: DiffFormat,
}

pub fn run(args: DiffArgs) -> anyhow::Result<ExitCode> {
    let view = policy_view(
        &args.policies,
        &args.state,
        &args.source,
        args.since.as_deref(),
    )?;
    let (obs, cluster) = (&view.observation, &view.cluster);
    let d = diff(obs, cluster);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.output {
        DiffFormat::Json => {
            writeln!(out, "{}", serde_json::to_string_pretty(&d)?).map_err(ObservedError::Output)?
        }
        DiffFormat::Table => {
            writeln!(
                out,
                "rules with no traffic in the window ({}):",
                d.unused.len()
            )
            .map_err(ObservedError::Output)?;
            for u in &d.unused {
                writeln!(out, "  - {} {}: {}", u.policy, u.field, u.detail)
                    .map_err(ObservedError::Output)?;
            }
            writeln!(out, "traffic no rule covers ({}):", d.uncovered.len())
                .map_err(ObservedError::Output)?;
            for u in &d.uncovered {
                writeln!(
                    out,
                    "  + {} → {} {}/{}: {} flows; {}",
                    u.source, u.destination, u.port, u.protocol, u.flows, u.why
                )
                .map_err(ObservedError::Output)?;
            }
        }
    }
    out.flush().map_err(ObservedError::Output)?;
    Ok(ExitCode::SUCCESS)
}
