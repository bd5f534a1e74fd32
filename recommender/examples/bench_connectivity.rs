//! `connectivity` wall time for a synthetic cluster of 1 000 workloads (Deployments) and
//! 1 000 NetworkPolicies, from YAML files on disk to the printed txt report. Run:
//!   cargo run --release -p flowpol-recommender --example bench_connectivity [WORKLOADS] [POLICIES]
//! It leaves the manifests in a temporary folder and prints the equivalent CLI command.
use std::time::Instant;

use flowpol_recommender::connectivity::{Connectivity, OutputFormat};
use flowpol_recommender::engine::{Engine, Settings};
use flowpol_recommender::model::Cluster;
use flowpol_recommender::synth::{SynthSpec, generate_yaml};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let workloads = args.first().copied().unwrap_or(1_000);
    let policies = args.get(1).copied().unwrap_or(1_000);
    let dir =
        std::env::temp_dir().join(format!("flowpol-bench-connectivity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("cluster.yaml");
    std::fs::write(
        &file,
        generate_yaml(SynthSpec {
            namespaces: 20,
            workloads,
            pods_per_workload: 0,
            policies,
        }),
    )
    .expect("write manifests");

    let t = Instant::now();
    let cluster = Cluster::load(&[&dir]).expect("synthetic manifests load");
    let load = t.elapsed();
    let engine = Engine::new(&cluster, Settings::default());
    let index = t.elapsed() - load;
    let report = Connectivity::analyze(&engine);
    let analyze = t.elapsed() - load - index;
    let text = report.render(OutputFormat::Txt);
    let total = t.elapsed();
    println!(
        "{} workloads, {} policies: {} lines ({} bytes); load {:.2?}, index {:.2?}, analyze {:.2?}, total {:.2?}",
        cluster.workloads.len(),
        cluster.policies.len(),
        report.lines.len(),
        text.len(),
        load,
        index,
        analyze,
        total
    );
    println!(
        "same through the CLI: time flowpol connectivity --manifests {} > /dev/null",
        dir.display()
    );
}
