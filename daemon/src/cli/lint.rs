use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct LintArgs {}

pub fn run(_args: LintArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`flowpol lint` is being built in this session")
}
