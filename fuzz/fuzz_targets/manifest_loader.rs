//! Manifests and NetworkPolicies from arbitrary text: the loader, the model,
//! policy compilation, the engine, connectivity and lint must return errors,
//! never panic or hang.
#![no_main]

use std::path::Path;

use flowpol_recommender::connectivity::{Connectivity, OutputFormat};
use flowpol_recommender::engine::{Engine, Settings};
use flowpol_recommender::{lint, manifest, model::Cluster};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // The loader picks JSON or YAML by extension and by the first character.
    for name in ["cluster.yaml", "cluster.json"] {
        let Ok(objects) = manifest::parse_str(Path::new(name), text) else {
            continue;
        };
        let Ok(cluster) = Cluster::from_objects(objects) else {
            continue;
        };
        for ipblock_matches_pods in [false, true] {
            let engine = Engine::new(
                &cluster,
                Settings {
                    ipblock_matches_pods,
                },
            );
            let connectivity = Connectivity::analyze(&engine);
            let _ = connectivity.render(OutputFormat::Txt);
            let _ = connectivity.render(OutputFormat::Json);
            let _ = lint::lint(&engine);
        }
    }
});
