//! `flowpol agent` refuses bad setups with a message that says what is wrong and
//! how to fix it, and a non-zero exit, before touching the kernel or the database.
mod support;

use std::process::{Command, Output};

use support::netns::require_root;

fn flowpol(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flowpol"))
        .args(args)
        .env("FLOWPOL_LOG", "error")
        .output()
        .expect("running flowpol")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn agent_refuses_a_file_that_is_not_a_flowpol_database_and_leaves_it_alone() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("notes.db");
    std::fs::write(&db, b"these are my notes, not a database\n").unwrap();
    let out = flowpol(&["agent", "--db", db.to_str().unwrap(), "--interval", "1s"]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains("notes.db"), "error must name the file: {err}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        b"these are my notes, not a database\n"
    );
}

#[test]
fn agent_rejects_a_zero_interval_and_needs_an_output() {
    let out = flowpol(&["agent", "--json-out", "-", "--interval", "0s"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--interval"), "{}", stderr(&out));
    let out = flowpol(&["agent"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--db"), "{}", stderr(&out));
}

#[test]
fn privileged_agent_without_capabilities_says_which_are_missing() {
    require_root();
    // Drop to `nobody` with no capabilities at all.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
            "--",
            env!("CARGO_BIN_EXE_flowpol"),
            "agent",
            "--json-out",
            "-",
        ])
        .env("FLOWPOL_LOG", "error")
        .output()
        .expect("running setpriv");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("not enough privilege"), "{err}");
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_NET_ADMIN"),
        "{err}"
    );
    assert!(
        err.contains("root"),
        "the message should say how to fix it: {err}"
    );
}

#[test]
fn privileged_agent_names_a_cgroup_directory_it_cannot_use() {
    require_root();
    let missing = format!("/sys/fs/cgroup/fpc-missing-{}", std::process::id());
    let out = flowpol(&["agent", "--json-out", "-", "--cgroup", &missing]);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(err.contains(&missing) && err.contains("cgroup"), "{err}");
}
