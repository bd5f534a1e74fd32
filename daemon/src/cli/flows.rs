use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct FlowsArgs {}

pub fn run(_args: FlowsArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`flowpol flows` is being built in this session")
}
