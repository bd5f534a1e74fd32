//! `flowpol lint`: common NetworkPolicy mistakes. Exit status: 0 clean, 1 findings, 2 bad input.
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, ValueEnum};
use flowpol_recommender::engine::{Engine, Settings};
use flowpol_recommender::lint::{lint, render_text};
use flowpol_recommender::model::Cluster;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LintFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct LintArgs {
    /// Manifest files or folders (read recursively).
    #[arg(long = "manifests", value_name = "PATH", required = true, num_args = 1..)]
    pub manifests: Vec<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: LintFormat,
}

pub fn run(args: LintArgs) -> anyhow::Result<ExitCode> {
    let cluster = Cluster::load(&args.manifests)?;
    let engine = Engine::new(&cluster, Settings::default());
    let findings = lint(&engine);
    match args.output {
        LintFormat::Text => print!("{}", render_text(&findings)),
        LintFormat::Json => println!("{}", serde_json::to_string_pretty(&findings)?),
    }
    Ok(if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
