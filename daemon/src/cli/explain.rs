use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct ExplainArgs {}

pub fn run(_args: ExplainArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`flowpol explain` is being built in this session")
}
