//! `flowpol audit`: observed flows that given policies would deny, grouped, each with the
//! smallest allow rule that admits it. Exit status 1 when any would be denied, 0 when none,
//! 2 on bad input.
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use flowpol_recommender::audit::audit;
use serde_json::json;

use super::recommend::{FlowSourceArgs, ObservedError, StateArgs, policy_view};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuditFormat {
    Table,
    Json,
    Yaml,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("policy_source").required(true).args(["policies", "kube"])))]
pub struct AuditArgs {
    #[command(flatten)]
    pub source: FlowSourceArgs,
    /// The (existing or proposed) NetworkPolicies: files or folders.
    #[arg(long, value_name = "PATH", num_args = 1..)]
    pub policies: Vec<PathBuf>,
    #[command(flatten)]
    pub state: StateArgs,
    /// Only flows seen in this recent period (`5m`, `2h`, `1d`) or since this RFC 3339 time.
    #[arg(long, value_name = "DURATION|TIME")]
    pub since: Option<String>,
    #[arg(long, short = 'o', value_enum, default_value_t = AuditFormat::Table)]
    pub output: AuditFormat,
}

/// Prints a rule as indented YAML lines.
pub fn yaml_lines(
    value: &serde_json::Value,
    indent: &str,
    out: &mut dyn Write,
) -> anyhow::Result<()> {
    for line in serde_saphyr::to_string(value)?.lines() {
        writeln!(out, "{indent}{line}").map_err(ObservedError::Output)?;
    }
    Ok(())
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let view = policy_view(
        &args.policies,
        &args.state,
        &args.source,
        args.since.as_deref(),
    )?;
    let (obs, cluster) = (&view.observation, &view.cluster);
    let result = audit(obs, cluster);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match args.output {
        AuditFormat::Json => writeln!(out, "{}", serde_json::to_string_pretty(&result)?)
            .map_err(ObservedError::Output)?,
        AuditFormat::Yaml => {
            write!(out, "{}", serde_saphyr::to_string(&result)?).map_err(ObservedError::Output)?
        }
        AuditFormat::Table => {
            for g in &result.groups {
                writeln!(
                    out,
                    "DENIED {} → {} {}/{}: {} flows, first seen {}, last seen {}",
                    g.source,
                    g.destination,
                    g.port,
                    g.protocol,
                    g.flows,
                    g.first_seen
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    g.last_seen
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                )
                .map_err(ObservedError::Output)?;
                for fix in &g.fixes {
                    writeln!(
                        out,
                        "  {} of {} is isolated by {} and no rule allows it; add this rule to one of them:",
                        fix.direction,
                        fix.subject,
                        fix.isolated_by.join(", ")
                    )
                    .map_err(ObservedError::Output)?;
                    yaml_lines(
                        &json!({ fix.direction.to_string(): [fix.rule] }),
                        "    ",
                        &mut out,
                    )?;
                }
            }
            for u in &result.unverifiable {
                writeln!(out, "NOT CHECKED {u}: the engine cannot place it")
                    .map_err(ObservedError::Output)?;
            }
            writeln!(
                out,
                "{} of {} observed flows would be denied ({} groups)",
                result.denied_flows,
                result.flows_checked,
                result.groups.len()
            )
            .map_err(ObservedError::Output)?;
        }
    }
    out.flush().map_err(ObservedError::Output)?;
    Ok(if result.groups.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
