//! `kubectl flowpol ...`: the same binary installed (or linked) as `kubectl-flowpol` on the
//! PATH is a kubectl plugin. kubectl runs it with the plugin's path as argv[0]; help,
//! usage and errors then say `kubectl flowpol`.
use std::ffi::OsStr;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches};

use super::Cli;

/// The file name kubectl looks for on the PATH for `kubectl flowpol`.
pub const PLUGIN_FILE_NAME: &str = "kubectl-flowpol";

/// Whether argv[0] names the kubectl plugin (`kubectl-flowpol`, any folder, `.exe` too).
pub fn invoked_as_plugin(argv0: &OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .and_then(OsStr::to_str)
        .is_some_and(|name| name == PLUGIN_FILE_NAME || name == "kubectl-flowpol.exe")
}

/// Parses the process arguments, naming the program `kubectl flowpol` when it runs as
/// the kubectl plugin. Exits with clap's message and status on bad arguments.
pub fn parse_args() -> Cli {
    parse_from(std::env::args_os())
}

pub fn parse_from<I, T>(args: I) -> Cli
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    let mut command = Cli::command();
    if args.first().is_some_and(|a| invoked_as_plugin(a)) {
        command = command
            .name(PLUGIN_FILE_NAME)
            .bin_name("kubectl flowpol")
            .display_name("kubectl-flowpol");
    }
    let matches = command.get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plugin_name_is_recognised_in_any_folder() {
        assert!(invoked_as_plugin(OsStr::new("kubectl-flowpol")));
        assert!(invoked_as_plugin(OsStr::new(
            "/usr/local/bin/kubectl-flowpol"
        )));
        assert!(invoked_as_plugin(OsStr::new("kubectl-flowpol.exe")));
        assert!(!invoked_as_plugin(OsStr::new("/usr/bin/flowpol")));
        assert!(!invoked_as_plugin(OsStr::new("kubectl-flowpol-old")));
    }

    #[test]
    fn arguments_parse_the_same_under_both_names() {
        for argv0 in ["flowpol", "/usr/local/bin/kubectl-flowpol"] {
            let cli = parse_from([argv0, "flows", "--db", "x.db"]);
            assert!(
                matches!(cli.command, super::super::Command::Flows(_)),
                "{argv0}"
            );
        }
    }
}
