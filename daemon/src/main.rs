use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = flowpol::cli::plugin::parse_args();
    flowpol::cli::init_tracing(&cli.global);
    match flowpol::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
