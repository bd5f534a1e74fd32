//! Cost per packet of the socket programs, and of each stage of their path.
//! Needs root. `cargo run --release -p flowpol --example capture_prog_cost [-- SECONDS [ROUNDS]]`
//!
//! Programs measured (all from the agent's object; the `bench_*` ones exist
//! only for this benchmark, the agent never loads them):
//! * `bench_floor`: returns at once: the hook and the measurement themselves;
//! * `bench_parse`: the socket path up to a parsed key;
//! * `bench_map`: + the active-copy lookup and the flow-map update;
//! * `bench_clock`: + the coarse clock for `last_ns`;
//! * `flow_egress` / `flow_ingress`: the production programs (+ the packet
//!   counter, `len` and `gso_segs`).
//!
//! Two measurements of each:
//! 1. BPF_PROG_TEST_RUN, 1 M repeats on a 1 460-byte TCP segment of an existing
//!    flow, best of 5 (the kernel's mean per run; the packet and the map entry
//!    stay hot in the cache);
//! 2. `bpf_stats` (`kernel.bpf_stats_enabled=1`, run_time_ns / run_cnt) with
//!    real traffic: the program attached alone to a child cgroup created for
//!    this run, while this process (moved into it) sends 200-byte UDP datagrams
//!    to itself over loopback for SECONDS (default 1), in ROUNDS (default 5)
//!    rounds that take the programs in turn, so that load changes on the
//!    machine hit all of them alike; the figure is total run time / total runs.
//!    Every datagram is one egress and one ingress run of one flow; the kernel
//!    times each run with two `sched_clock` reads, which `bench_floor` shows.
use std::fs;
use std::io::Write;
use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use aya::Ebpf;
use aya::programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, TestRun, TestRunOptions};

#[path = "support/bpf_object.rs"]
mod bpf_object;

/// (program, attach type, what it adds)
const MEASURED: [(&str, CgroupSkbAttachType, &str); 6] = [
    ("bench_floor", CgroupSkbAttachType::Egress, "return 1"),
    ("bench_parse", CgroupSkbAttachType::Egress, "parse to a key"),
    ("bench_map", CgroupSkbAttachType::Egress, "+ map update"),
    ("bench_clock", CgroupSkbAttachType::Egress, "+ coarse clock"),
    ("flow_egress", CgroupSkbAttachType::Egress, "production"),
    ("flow_ingress", CgroupSkbAttachType::Ingress, "production"),
];

fn frame() -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let payload = 1400usize;
    let total = (20 + 20 + payload) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 6, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2]);
    f.extend_from_slice(&[
        0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0,
    ]);
    f.extend(std::iter::repeat_n(0u8, payload));
    f
}

/// A child cgroup this process lives in while it exists; moves the process
/// back and removes the cgroup on drop.
struct ChildCgroup {
    path: PathBuf,
    parent: PathBuf,
}

impl ChildCgroup {
    fn enter(parent: &Path) -> anyhow::Result<Self> {
        let path = parent.join(format!("flowpol-progcost-{}", std::process::id()));
        fs::create_dir(&path).with_context(|| format!("mkdir {}", path.display()))?;
        let me = Self {
            path,
            parent: parent.to_path_buf(),
        };
        // The whole process (every thread) moves; sockets created from now on
        // belong to this cgroup.
        fs::write(me.path.join("cgroup.procs"), std::process::id().to_string())
            .context("move into the child cgroup")?;
        Ok(me)
    }
}

impl Drop for ChildCgroup {
    fn drop(&mut self) {
        let _ = fs::write(
            self.parent.join("cgroup.procs"),
            std::process::id().to_string(),
        );
        let _ = fs::remove_dir(&self.path);
    }
}

/// Sets `kernel.bpf_stats_enabled`; restores it on drop.
struct BpfStats(String);

impl BpfStats {
    const PATH: &str = "/proc/sys/kernel/bpf_stats_enabled";
    fn set(on: bool) -> anyhow::Result<Self> {
        let before = fs::read_to_string(Self::PATH)?.trim().to_string();
        fs::write(Self::PATH, if on { "1" } else { "0" })?;
        Ok(Self(before))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = fs::write(Self::PATH, &self.0);
    }
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> anyhow::Result<&'a mut CgroupSkb> {
    let p = ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} missing from the object"))?;
    Ok(p.try_into()?)
}

fn test_run(prog: &mut CgroupSkb, frame: &[u8]) -> anyhow::Result<Duration> {
    const REPEAT: u32 = 1_000_000;
    let run = |repeat| {
        prog.test_run(TestRunOptions {
            data_in: Some(frame),
            repeat,
            ..TestRunOptions::default()
        })
    };
    // Warm up: the first run inserts the flow; later runs update it.
    run(1000)?;
    let mut best = Duration::MAX;
    for _ in 0..5 {
        best = best.min(run(REPEAT)?.duration);
    }
    Ok(best)
}

/// Sends 200-byte UDP datagrams to a socket of this process for `secs`.
fn udp_traffic(secs: f64) -> anyhow::Result<u64> {
    let rx = UdpSocket::bind("127.0.0.1:0")?;
    rx.set_read_timeout(Some(Duration::from_millis(100)))?;
    let to = rx.local_addr()?;
    let tx = UdpSocket::bind("127.0.0.1:0")?;
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                let _ = rx.recv(&mut buf);
            }
        })
    };
    let payload = [0x5au8; 200];
    let end = Instant::now() + Duration::from_secs_f64(secs);
    let mut sent = 0u64;
    while Instant::now() < end {
        for _ in 0..64 {
            if tx.send_to(&payload, to).is_ok() {
                sent += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().ok();
    Ok(sent)
}

fn main() -> anyhow::Result<()> {
    let secs: f64 = match std::env::args().nth(1) {
        Some(s) => s.parse().with_context(|| format!("SECONDS: {s:?}"))?,
        None => 1.0,
    };
    let rounds: u32 = match std::env::args().nth(2) {
        Some(s) => s.parse().with_context(|| format!("ROUNDS: {s:?}"))?,
        None => 5,
    };
    if unsafe { libc::geteuid() } != 0 {
        bail!("capture_prog_cost needs root (BPF_PROG_TEST_RUN, cgroup attach, bpf_stats)");
    }
    let mut ebpf = bpf_object::load()?;
    for (name, _, _) in MEASURED {
        program(&mut ebpf, name)?
            .load()
            .with_context(|| format!("load {name}"))?;
    }
    let f = frame();
    // Off while test-running: with bpf_stats on, every run of the repeat loop
    // also pays the two sched_clock reads (the test-run floor doubles).
    let stats_off = BpfStats::set(false)?;
    println!("BPF_PROG_TEST_RUN, 1 460-byte TCP segment of an existing flow, best of 5 x 1M runs:");
    for (name, _, what) in MEASURED {
        let prog = program(&mut ebpf, name)?;
        let d = test_run(prog, &f)?;
        // The JIT's machine code: what a run may pull into the instruction cache.
        let jited = prog.info()?.size_jitted();
        println!(
            "  {name:<13} {:>5} ns/run  {jited:>6} bytes of machine code  ({what})",
            d.as_nanos()
        );
    }
    std::io::stdout().flush()?;

    let root = flowpol::capture::preflight::find_cgroup2_root()?;
    let cgroup = ChildCgroup::enter(&root)?;
    let cgroup_dir = fs::File::open(&cgroup.path)?;
    drop(stats_off);
    let _stats = BpfStats::set(true)?;
    println!(
        "bpf_stats, 200-byte UDP over loopback, {rounds} rounds of {secs}s per program, attached alone to {}:",
        cgroup.path.display()
    );
    // (runs, run time ns, datagrams sent) per program over all rounds.
    let mut totals = [(0u64, 0u128, 0u64); MEASURED.len()];
    for _ in 0..rounds {
        for (i, (name, attach, _)) in MEASURED.iter().enumerate() {
            let prog = program(&mut ebpf, name)?;
            let before = prog.info()?;
            let link = prog.attach(&cgroup_dir, *attach, CgroupAttachMode::Single)?;
            let sent = udp_traffic(secs)?;
            prog.detach(link)?;
            let after = prog.info()?;
            totals[i].0 += after.run_count() - before.run_count();
            totals[i].1 += (after.run_time() - before.run_time()).as_nanos();
            totals[i].2 += sent;
        }
    }
    for ((name, _, what), (runs, ns, sent)) in MEASURED.iter().zip(totals) {
        if runs == 0 {
            bail!("{name}: no runs recorded (is bpf_stats on?)");
        }
        println!(
            "  {name:<13} {:>7.1} ns/run  {runs:>9} runs ({sent} sent)  ({what})",
            ns as f64 / runs as f64
        );
    }
    Ok(())
}
