//! Every case of the external oracle (np-guard/netpol-analyzer's test data, read in place from
//! `../shared/conformance/netpol-analyzer/cases/` relative to the repository root) must give
//! exactly its `expected.txt`: lines compared as sets, connection sets compared as port sets.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use flowpol_recommender::connectivity::{Connectivity, OutputFormat};
use flowpol_recommender::connset::ConnSet;
use flowpol_recommender::engine::{Engine, Settings};
use flowpol_recommender::model::Cluster;

fn cases_dir() -> PathBuf {
    match std::env::var_os("FLOWPOL_CONFORMANCE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/conformance/netpol-analyzer/cases"),
    }
}

type Lines = BTreeMap<(String, String), String>;

/// Parses `src => dst : conns` lines; the connection set is normalised through [`ConnSet`].
fn parse_lines(text: &str, what: &str) -> Result<Lines, String> {
    let mut out = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let (pair, conns) = line
            .split_once(" : ")
            .ok_or_else(|| format!("{what} line {}: no ` : ` in `{line}`", i + 1))?;
        let (src, dst) = pair
            .split_once(" => ")
            .ok_or_else(|| format!("{what} line {}: no ` => ` in `{line}`", i + 1))?;
        let conns = ConnSet::parse(conns).map_err(|e| format!("{what} line {}: {e}", i + 1))?;
        if out
            .insert(
                (src.trim().to_string(), dst.trim().to_string()),
                conns.to_string(),
            )
            .is_some()
        {
            return Err(format!(
                "{what} line {}: pair listed twice: `{line}`",
                i + 1
            ));
        }
    }
    Ok(out)
}

fn run_case(dir: &Path) -> Result<usize, String> {
    let expected_text = std::fs::read_to_string(dir.join("expected.txt"))
        .map_err(|e| format!("cannot read expected.txt: {e}"))?;
    let expected = parse_lines(&expected_text, "expected.txt")?;
    let cluster = Cluster::load(&[dir.join("manifests")]).map_err(|e| format!("load: {e}"))?;
    let engine = Engine::new(
        &cluster,
        Settings {
            ipblock_matches_pods: false,
        },
    );
    let actual_text = Connectivity::analyze(&engine).render(OutputFormat::Txt);
    let actual = parse_lines(&actual_text, "our output")?;
    if actual == expected {
        return Ok(expected.len());
    }
    let keys: BTreeSet<&(String, String)> = expected.keys().chain(actual.keys()).collect();
    let mut diff = String::new();
    let mut shown = 0;
    let mut total = 0;
    for key in keys {
        let (e, a) = (expected.get(key), actual.get(key));
        if e == a {
            continue;
        }
        total += 1;
        if shown >= 25 {
            continue;
        }
        shown += 1;
        let (src, dst) = key;
        match (e, a) {
            (Some(e), None) => diff.push_str(&format!("  - {src} => {dst} : {e}   (missing)\n")),
            (None, Some(a)) => diff.push_str(&format!("  + {src} => {dst} : {a}   (extra)\n")),
            (Some(e), Some(a)) => {
                diff.push_str(&format!("  ~ {src} => {dst} : expected `{e}`, got `{a}`\n"))
            }
            (None, None) => unreachable!("key comes from one of the maps"),
        }
    }
    Err(format!(
        "{total} differing lines (expected {}, got {}):\n{diff}",
        expected.len(),
        actual.len()
    ))
}

#[test]
fn every_oracle_case_gives_its_expected_connectivity() {
    let root = cases_dir();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| {
            panic!(
                "conformance corpus not found at {} ({e}); set FLOWPOL_CONFORMANCE_DIR",
                root.display()
            )
        })
        .map(|e| e.expect("readable corpus entry").path())
        .filter(|p| p.is_dir())
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no cases under {}", root.display());
    let mut failures = Vec::new();
    let mut lines = 0;
    for case in &cases {
        let name = case.file_name().unwrap().to_string_lossy().to_string();
        match run_case(case) {
            Ok(n) => lines += n,
            Err(why) => failures.push(format!("case {name}: {why}")),
        }
    }
    eprintln!(
        "conformance: {} of {} cases pass ({lines} expected lines matched)",
        cases.len() - failures.len(),
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{} of {} cases fail:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
