//! Verdicts per second after indexing, for a synthetic cluster of 10 000 pods (each its own
//! endpoint) and 1 000 NetworkPolicies. Run:
//!   cargo run --release -p flowpol-recommender --example bench_verdicts [PODS] [POLICIES]
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use flowpol_recommender::engine::{Engine, PeerRef, Settings};
use flowpol_recommender::flow::Protocol;
use flowpol_recommender::manifest::parse_str;
use flowpol_recommender::model::Cluster;
use flowpol_recommender::synth::{SynthSpec, generate_yaml};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let pods = args.first().copied().unwrap_or(10_000);
    let policies = args.get(1).copied().unwrap_or(1_000);
    let spec = SynthSpec {
        namespaces: 50,
        workloads: pods / 10,
        pods_per_workload: 10,
        policies,
    };
    let t = Instant::now();
    let yaml = generate_yaml(spec);
    let objects = parse_str(Path::new("synthetic.yaml"), &yaml).expect("synthetic manifests parse");
    let cluster = Cluster::from_objects(objects).expect("synthetic manifests are valid");
    let load = t.elapsed();
    let t = Instant::now();
    let engine = Engine::new(&cluster, Settings::default());
    let index = t.elapsed();
    println!(
        "cluster: {} endpoints, {} policies; load {:.2?}, index {:.2?}",
        cluster.endpoints.len(),
        cluster.policies.len(),
        load,
        index
    );

    // Queries drawn up front so the timed loop measures verdicts only.
    let n = cluster.endpoints.len();
    let mut state = 7u64;
    let mut next = |bound: usize| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((state >> 33) as usize) % bound
    };
    let ports = [8080u16, 9050, 5432, 53, 443, 22];
    let queries: Vec<(PeerRef, PeerRef, Protocol, u16)> = (0..2_000_000)
        .map(|i| {
            let src = PeerRef::Endpoint(next(n));
            let dst = if i % 10 == 0 {
                PeerRef::Ip(
                    format!("192.168.{}.{}", next(256), next(256))
                        .parse()
                        .unwrap(),
                )
            } else {
                PeerRef::Endpoint(next(n))
            };
            let protocol = if i % 7 == 0 {
                Protocol::Udp
            } else {
                Protocol::Tcp
            };
            (src, dst, protocol, ports[next(ports.len())])
        })
        .collect();
    let t = Instant::now();
    let cpu = thread_cpu_time();
    let mut allowed = 0usize;
    for &(src, dst, protocol, port) in &queries {
        if black_box(engine.verdict(src, dst, protocol, port)).allowed {
            allowed += 1;
        }
    }
    let cpu = thread_cpu_time() - cpu;
    let elapsed = t.elapsed();
    println!(
        "{} verdicts ({} allowed): {:.3?} CPU time on one thread = {:.0} verdicts/s per core (wall {:.3?} = {:.0}/s on this shared machine)",
        queries.len(),
        allowed,
        cpu,
        queries.len() as f64 / cpu.as_secs_f64(),
        elapsed,
        queries.len() as f64 / elapsed.as_secs_f64(),
    );
}

/// CPU time of the calling thread: other builds share this machine's cores.
fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the valid, exclusively borrowed `ts`.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}
