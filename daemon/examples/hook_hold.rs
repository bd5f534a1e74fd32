//! Holds programs of the agent's object attached at the cgroup v2 root, egress
//! and ingress, without an agent, until stdin closes: what the hooks themselves
//! cost the traffic of a node (`scripts/bench-pods.sh`, the "hook only" rounds).
//! Needs root. `hook_hold [EGRESS_PROGRAM INGRESS_PROGRAM]` (default
//! `bench_floor bench_floor_ingress`: programs that only return 1; the agent
//! never loads them); `-` for either leaves that hook empty (what one hook
//! costs against two). Prints `attached` once they are attached.
//! `FLOWPOL_BPF_OBJECT`: an object file to take the programs from instead of
//! the built-in one (to compare variants of the programs on real traffic).

use std::io::Read;

use anyhow::{Context, bail};
use aya::Ebpf;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType};

#[path = "support/bpf_object.rs"]
mod bpf_object;

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut CgroupSkb> {
    let p = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    Ok(p.try_into()?)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (egress, ingress) = match args.as_slice() {
        [] => ("bench_floor", "bench_floor_ingress"),
        [e, i] => (e.as_str(), i.as_str()),
        _ => bail!("usage: hook_hold [EGRESS_PROGRAM INGRESS_PROGRAM]"),
    };
    if unsafe { libc::geteuid() } != 0 {
        bail!("hook_hold needs root (cgroup attach)");
    }
    let root = flowpol::capture::preflight::find_cgroup2_root()?;
    let cgroup = std::fs::File::open(&root).with_context(|| format!("open {}", root.display()))?;
    let mut ebpf = bpf_object::load()?;
    let mut links = Vec::new();
    for (name, attach) in [
        (egress, CgroupSkbAttachType::Egress),
        (ingress, CgroupSkbAttachType::Ingress),
    ] {
        if name == "-" {
            continue;
        }
        let prog = program(&mut ebpf, name)?;
        prog.load()?;
        links.push(prog.attach(&cgroup, attach, CgroupAttachMode::Single)?);
    }
    println!(
        "attached {egress} (egress) and {ingress} (ingress) at {}",
        root.display()
    );
    // Held until stdin closes (the script's coprocess ends), then detached on drop.
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}
