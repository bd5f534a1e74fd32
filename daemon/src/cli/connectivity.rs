use std::process::ExitCode;

use clap::Args;

#[derive(Debug, Args)]
pub struct ConnectivityArgs {}

pub fn run(_args: ConnectivityArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`flowpol connectivity` is being built in this session")
}
