//! The eBPF object the program benchmarks load (`capture_prog_cost`,
//! `hook_hold`): the one built into them, or the file `FLOWPOL_BPF_OBJECT`
//! names (another build's object, to compare variants of the programs without
//! rebuilding the example; `scripts/bench-objects.sh`).
use anyhow::Context;
use aya::{Ebpf, EbpfLoader};

static BUILT_IN: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/flowpol"));

/// Loads the object (maps created, programs not yet loaded into the kernel).
pub fn load() -> anyhow::Result<Ebpf> {
    let file = match std::env::var_os("FLOWPOL_BPF_OBJECT") {
        Some(path) => {
            Some(std::fs::read(&path).with_context(|| format!("FLOWPOL_BPF_OBJECT {path:?}"))?)
        }
        None => None,
    };
    let what = if file.is_some() {
        "FLOWPOL_BPF_OBJECT"
    } else {
        "the built-in eBPF object"
    };
    EbpfLoader::new()
        .load(file.as_deref().unwrap_or(BUILT_IN))
        .with_context(|| format!("loading {what}"))
}
