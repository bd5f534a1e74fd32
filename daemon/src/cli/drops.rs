//! `flowpol drops`: dropped and unanswered flows by workload, with the kernel's reason, the
//! policies selecting each end, and the missing allow rule when a NetworkPolicy explains it.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use flowpol_recommender::drops::drops_counted;
use flowpol_recommender::manifest::Object;
use serde_json::json;

use super::audit::yaml_lines;
use super::recommend::{FlowSourceArgs, ObservedError, StateArgs, policy_view};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DropsFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct DropsArgs {
    #[command(flatten)]
    pub source: FlowSourceArgs,
    /// Cluster state (with its NetworkPolicies) to explain drops by.
    #[command(flatten)]
    pub state: StateArgs,
    /// More NetworkPolicies to explain drops by (files or folders).
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub policies: Vec<PathBuf>,
    /// Only flows seen in this recent period (`5m`, `2h`, `1d`) or since this RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t = DropsFormat::Table)]
    pub output: DropsFormat,
}

pub fn run(args: DropsArgs) -> anyhow::Result<ExitCode> {
    let view = policy_view(
        &args.policies,
        &args.state,
        &args.source,
        args.since.as_deref(),
    )?;
    let has_policies = view
        .objects
        .iter()
        .any(|o| matches!(o.object, Object::NetworkPolicy(_)));
    let cluster = &view.cluster;
    let groups = drops_counted(view.edges.iter().map(|e| (&e.record, e.flows)), cluster);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.output {
        DropsFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&groups)?)
            .map_err(ObservedError::Output)?,
        DropsFormat::Table => {
            if groups.is_empty() {
                writeln!(out, "no dropped or unanswered flows in the window")
                    .map_err(ObservedError::Output)?;
            }
            for g in &groups {
                writeln!(
                    out,
                    "{} {} → {} {}/{}{}: {} flows, first seen {}, last seen {}",
                    g.verdict.as_str().to_uppercase(),
                    g.source,
                    g.destination,
                    g.port,
                    g.protocol,
                    g.reason
                        .as_deref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default(),
                    g.flows,
                    g.first_seen
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    g.last_seen
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                )
                .map_err(ObservedError::Output)?;
                let list = |v: &[String]| {
                    if v.is_empty() {
                        "none".to_string()
                    } else {
                        v.join(", ")
                    }
                };
                writeln!(
                    out,
                    "  policies selecting the source (egress): {}; the destination (ingress): {}",
                    list(&g.source_policies),
                    list(&g.destination_policies)
                )
                .map_err(ObservedError::Output)?;
                writeln!(out, "  why: {}", g.explanation).map_err(ObservedError::Output)?;
                if let Some((direction, rule)) = &g.missing_rule {
                    writeln!(out, "  missing allow rule:").map_err(ObservedError::Output)?;
                    yaml_lines(&json!({ direction.to_string(): [rule] }), "    ", &mut out)?;
                }
            }
            if !has_policies && !groups.is_empty() {
                writeln!(
                    out,
                    "note: no NetworkPolicies given (--manifests, --kube or --policies): drops are explained by the kernel's reason only"
                )
                .map_err(ObservedError::Output)?;
            }
        }
    }
    out.flush().map_err(ObservedError::Output)?;
    Ok(ExitCode::SUCCESS)
}
