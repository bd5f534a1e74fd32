//! `--config PATH` (or `FLOWPOL_CONFIG`): a YAML file of flag values, e.g.
//!
//! ```yaml
//! db: /var/lib/flowpol/flows.db
//! interval: 5s
//! listen: 0.0.0.0:9464
//! token-file: /etc/flowpol/token
//! log-format: json
//! ```
//!
//! Keys are the long flag names of the command being run (and the global
//! ones). Precedence: flags, then environment, then the file. Each key is
//! handed to clap as the flag's environment variable when that variable is
//! unset, so clap parses and validates it exactly like the flag.
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("--config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("--config {path}: not a YAML mapping of flag names to values: {detail}")]
    Parse { path: PathBuf, detail: String },
    #[error("--config {path}: unknown key `{key}` for `flowpol {command}` (known: {known})")]
    UnknownKey {
        path: PathBuf,
        key: String,
        command: String,
        known: String,
    },
    #[error("--config {path}: key `{key}`: {detail}")]
    BadValue {
        path: PathBuf,
        key: String,
        detail: String,
    },
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(untagged)]
enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    List(Vec<String>),
}

/// The `--config` path from the arguments (`--config P` or `--config=P`) or
/// the environment.
fn config_path(args: &[OsString]) -> Option<PathBuf> {
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let s = a.to_string_lossy();
        if s == "--" {
            break;
        }
        if s == "--config" {
            return it.next().map(PathBuf::from);
        }
        if let Some(p) = s.strip_prefix("--config=") {
            return Some(PathBuf::from(p));
        }
    }
    std::env::var_os("FLOWPOL_CONFIG").map(PathBuf::from)
}

/// The subcommand named in `args` (the first argument clap knows as one).
fn subcommand<'a>(args: &[OsString], command: &'a clap::Command) -> Option<&'a clap::Command> {
    args.iter()
        .skip(1)
        .find_map(|a| command.find_subcommand(a.to_string_lossy().as_ref()))
}

/// Flag name → environment variable, for the flags of `cmd` that have one.
fn env_flags(cmd: &clap::Command, into: &mut BTreeMap<String, (String, bool)>) {
    for arg in cmd.get_arguments() {
        if let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) {
            let list = arg.get_value_delimiter().is_some();
            into.insert(long.to_string(), (env.to_string_lossy().into_owned(), list));
        }
    }
}

/// The environment variables the file asks for (name, value), leaving out
/// those already set (the environment wins).
pub fn resolve(
    path: &Path,
    text: &str,
    args: &[OsString],
    command: &clap::Command,
) -> Result<Vec<(String, String)>, ConfigError> {
    let map: BTreeMap<String, Value> =
        serde_saphyr::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            detail: e.to_string(),
        })?;
    let mut known = BTreeMap::new();
    env_flags(command, &mut known);
    let sub = subcommand(args, command);
    if let Some(sub) = sub {
        env_flags(sub, &mut known);
    }
    known.remove("config");
    let mut out = Vec::new();
    for (key, value) in map {
        let Some((env, list)) = known.get(&key) else {
            return Err(ConfigError::UnknownKey {
                path: path.to_path_buf(),
                key,
                command: sub.map_or("", |s| s.get_name()).to_string(),
                known: known.keys().cloned().collect::<Vec<_>>().join(", "),
            });
        };
        let text = match value {
            Value::Bool(b) => b.to_string(),
            Value::Int(n) => n.to_string(),
            Value::Float(x) => x.to_string(),
            Value::Text(s) => s,
            Value::List(items) if *list => items.join(","),
            Value::List(_) => {
                return Err(ConfigError::BadValue {
                    path: path.to_path_buf(),
                    key,
                    detail: "takes one value, not a list".into(),
                });
            }
        };
        if std::env::var_os(env).is_none() {
            out.push((env.clone(), text));
        }
    }
    Ok(out)
}

/// Reads the config file named in `args` (if any) and exports its values as
/// the flags' environment variables. Call before parsing the arguments and
/// before any thread is started.
pub fn apply(args: &[OsString], command: &clap::Command) -> Result<(), ConfigError> {
    let Some(path) = config_path(args) else {
        return Ok(());
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    for (name, value) in resolve(&path, &text, args, command)? {
        // SAFETY: called from main before the runtime or any other thread
        // exists, so nothing reads the environment concurrently.
        unsafe { std::env::set_var(name, value) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn maps_keys_to_the_flags_environment() {
        let cmd = crate::cli::Cli::command();
        let a = args(&["flowpol", "agent", "--config", "c.yaml"]);
        assert_eq!(config_path(&a), Some(PathBuf::from("c.yaml")));
        let env = resolve(
            Path::new("c.yaml"),
            "listen: 127.0.0.1:9464\ntoken-file: /t\nflow-map-entries: 4096\n",
            &a,
            &cmd,
        )
        .unwrap();
        assert!(env.contains(&("FLOWPOL_LISTEN".into(), "127.0.0.1:9464".into())));
        assert!(env.contains(&("FLOWPOL_FLOW_MAP_ENTRIES".into(), "4096".into())));
    }

    #[test]
    fn every_agent_flag_reads_the_environment_and_the_file() {
        let cmd = crate::cli::Cli::command();
        let agent = cmd.find_subcommand("agent").expect("agent subcommand");
        let without: Vec<&str> = agent
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| l != "help") && a.get_env().is_none())
            .filter_map(|a| a.get_long())
            .collect();
        assert!(without.is_empty(), "agent flags without env: {without:?}");
        let a = args(&["flowpol", "agent", "--config", "c.yaml"]);
        let env = resolve(
            Path::new("c.yaml"),
            "routine-drop-reasons: [NOT_SPECIFIED, TCP_CLOSE]\n",
            &a,
            &cmd,
        )
        .unwrap();
        assert_eq!(
            env,
            [(
                "FLOWPOL_ROUTINE_DROP_REASONS".to_string(),
                "NOT_SPECIFIED,TCP_CLOSE".to_string()
            )]
        );
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let cmd = crate::cli::Cli::command();
        let a = args(&["flowpol", "agent"]);
        let err = resolve(Path::new("c.yaml"), "lisen: x\n", &a, &cmd).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("c.yaml") && msg.contains("`lisen`"), "{msg}");
        let err = resolve(Path::new("c.yaml"), "- a\n", &a, &cmd).unwrap_err();
        assert!(matches!(err, ConfigError::Parse { .. }), "{err}");
    }
}
