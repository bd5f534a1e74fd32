use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = flowpol::cli::Cli::parse();
    flowpol::cli::init_tracing(&cli.global);
    match flowpol::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
