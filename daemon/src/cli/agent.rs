use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct AgentArgs {}

pub fn run(_args: AgentArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`flowpol agent` is being built in this session")
}
