//! A lab scenario from arbitrary text: the input is split into a manifest file
//! and a `traffic.yaml` at the first line `%%` (a `lab.yaml` after a second).
//! Bad input must be an error naming the file, never a panic.
#![no_main]

use std::path::{Path, PathBuf};

use flowpol::lab::scenario;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, "\n%%\n");
    let manifests = parts.next().unwrap_or("");
    let traffic = parts.next();
    let lab = parts.next();
    let dir = Path::new("/fuzz/scenario");
    let files = vec![(
        manifests.to_string(),
        PathBuf::from("/fuzz/scenario/app.yaml"),
    )];
    if let Err(err) = scenario::from_texts(dir, &files, lab, traffic) {
        // Every error names what it is about.
        let message = err.to_string();
        assert!(!message.is_empty());
    }
});
