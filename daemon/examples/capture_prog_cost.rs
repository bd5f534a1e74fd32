//! Intrinsic cost of the socket programs per packet: BPF_PROG_TEST_RUN with a
//! large repeat on one TCP segment (the kernel reports the mean time per run).
//! Needs root. `cargo run --release -p flowpol --example capture_prog_cost`
use std::time::Duration;

use flowpol::capture::{Capture, CaptureOptions};

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

fn main() -> anyhow::Result<()> {
    let mut cap = Capture::load(CaptureOptions::default())?;
    let f = frame();
    const REPEAT: u32 = 1_000_000;
    for (egress, name) in [(true, "flow_egress"), (false, "flow_ingress")] {
        // Warm up: the first run inserts the flow; later runs update it.
        cap.test_run_socket(egress, &f, 1000)?;
        let mut best = Duration::MAX;
        for _ in 0..5 {
            let (_, per_run) = cap.test_run_socket(egress, &f, REPEAT)?;
            best = best.min(per_run);
        }
        println!(
            "{name}: {} ns/packet (BPF_PROG_TEST_RUN, best of 5 x {REPEAT} runs, existing flow)",
            best.as_nanos()
        );
    }
    // Floor: a non-IP frame leaves right after the EtherType check.
    let mut arp = f[..14].to_vec();
    arp[12..14].copy_from_slice(&[0x08, 0x06]);
    arp.extend_from_slice(&[0u8; 28]);
    let mut best = Duration::MAX;
    for _ in 0..5 {
        best = best.min(cap.test_run_socket(true, &arp, REPEAT)?.1);
    }
    println!(
        "floor (non-IP frame, parse skipped): {} ns/packet",
        best.as_nanos()
    );
    let records = cap.drain(true)?;
    println!(
        "flows recorded: {} (packets {})",
        records.len(),
        records
            .iter()
            .map(|r| r.packets + r.reply_packets)
            .sum::<u64>()
    );
    Ok(())
}
