use std::process::ExitCode;

fn main() -> ExitCode {
    // --config: its values become the flags' environment variables before parsing.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if let Err(err) = flowpol::serve::config::apply(
        &args,
        &<flowpol::cli::Cli as clap::CommandFactory>::command(),
    ) {
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    let cli = flowpol::cli::plugin::parse_from(args);
    flowpol::cli::init_tracing(&cli.global);
    match flowpol::cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}
