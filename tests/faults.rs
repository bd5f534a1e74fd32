//! Faults while the agent records (root: eBPF, network namespaces, a tmpfs):
//! SIGKILL mid-recording, and a disk that fills up and frees again.
mod support;

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::netns::{Agent, Lab, flow_sum, require_root, run, stored_flows};

/// A small tmpfs mounted on a temporary folder, unmounted on drop (also when
/// the test fails).
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "flowpol-fault",
                dir.path().to_str().unwrap(),
            ],
        );
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the file system has no room left.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0xffu8; 4096];
        loop {
            match f.write(&block) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => panic!("filling {}: {e}", filler.display()),
            }
        }
        let _ = f.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A UDP socket in `ns` that reads (and throws away) everything sent to it,
/// so no datagram is dropped for a full receive buffer.
fn udp_sink(
    ns: &support::netns::Netns,
    ip: IpAddr,
    stop: Arc<AtomicBool>,
) -> (u16, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = ns.spawn(move || {
        let s = UdpSocket::bind(SocketAddr::new(ip, 0)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        tx.send(s.local_addr().unwrap().port()).unwrap();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::SeqCst) {
            let _ = s.recv_from(&mut buf);
        }
    });
    (rx.recv().unwrap(), handle)
}

/// A short account of stored records for failure messages.
fn describe(records: &[serde_json::Value]) -> String {
    let mut by_proto = std::collections::BTreeMap::<String, usize>::new();
    for r in records {
        *by_proto
            .entry(format!("{} {}", r["protocol"], r["verdict"]))
            .or_default() += 1;
    }
    format!("{by_proto:?}")
}

/// Polls `flowpol flows` until `done` holds for the stored records; on timeout
/// the failure shows `missing` (what is still absent) and the agent's log.
fn wait_for_records(
    db: &Path,
    agent: &mut Agent,
    timeout: Duration,
    what: &str,
    missing: impl Fn(&[serde_json::Value]) -> Option<String>,
) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let records = stored_flows(db);
        let Some(absent) = missing(&records) else {
            return records;
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not stored within {timeout:?}: {absent} ({} records: {}); agent log:\n{}",
            records.len(),
            describe(&records),
            agent.log_so_far()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn privileged_fault_sigkill_while_recording_loses_at_most_one_interval_and_the_database_opens_clean()
 {
    require_root();
    let lab = Lab::new(2);
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let interval = Duration::from_secs(1);
    let mut agent = Agent::start(&["--interval", "1s"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (port, sink) = udp_sink(&b.ns, b.v4, stop.clone());

    // One datagram every 5 ms; each send time is kept.
    let bv4 = b.v4;
    let stop2 = stop.clone();
    let sender = a.ns.spawn(move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.connect(SocketAddr::new(bv4, port)).unwrap();
        let mut sent = Vec::new();
        while !stop2.load(Ordering::SeqCst) {
            if u.send(&[3u8; 100]).is_ok() {
                sent.push(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (u.local_addr().unwrap().port(), sent)
    });
    std::thread::sleep(Duration::from_millis(3600));
    let killed_at = Instant::now();
    agent.kill();
    std::thread::sleep(Duration::from_millis(200));
    stop.store(true, Ordering::SeqCst);
    let (cport, sent) = sender.join().unwrap();
    sink.join().unwrap();

    // The file opens for writing: schema, migrations and quick_check pass, the
    // WAL the killed agent left is replayed.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = flowpol::store::Store::open(&agent.db)
            .await
            .unwrap_or_else(|e| panic!("database after SIGKILL does not open: {e}"));
        store.close().await;
    });

    let records = stored_flows(&agent.db);
    let f = flow_sum(&records, "UDP", (a.v4, Some(cport)), (b.v4, Some(port)));
    // Every datagram sent before the last complete interval (plus time for its
    // write) is stored; nothing is invented.
    let margin = interval + Duration::from_millis(500);
    let must_have = sent
        .iter()
        .filter(|t| killed_at.saturating_duration_since(**t) > margin)
        .count() as u64;
    let before_kill = sent.iter().filter(|t| **t < killed_at).count() as u64;
    assert!(must_have > 200, "sender too slow: {must_have}");
    assert!(
        f.packets >= must_have && f.packets <= sent.len() as u64,
        "stored {} datagrams; {must_have} were sent more than {margin:?} before SIGKILL, \
         {before_kill} before it, {} in all",
        f.packets,
        sent.len()
    );
    assert_eq!(f.bytes, f.packets * (20 + 8 + 100));
}

#[test]
fn privileged_fault_a_full_disk_is_reported_counting_goes_on_and_everything_is_written_when_space_returns()
 {
    require_root();
    let lab = Lab::new(2);
    let (a, b) = (&lab.hosts[0], &lab.hosts[1]);
    let disk = SmallDisk::mount("3m");
    let db = disk.path().join("flows.db");
    let mut agent = Agent::start_with_db(
        None,
        db.clone(),
        tempfile::tempdir().unwrap(),
        &["--interval", "500ms"],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let (port, sink) = udp_sink(&b.ns, b.v4, stop.clone());
    let bv4 = b.v4;
    let target = SocketAddr::new(bv4, port);

    // Phase 1: a steady flow, stored normally.
    let steady = a.ns.within(move || {
        let u = UdpSocket::bind("0.0.0.0:0").unwrap();
        u.connect(target).unwrap();
        for _ in 0..50 {
            u.send(&[1u8; 64]).unwrap();
        }
        u.local_addr().unwrap().port()
    });
    let (av4, steady_dst) = (a.v4, (b.v4, Some(port)));
    let steady_packets =
        |r: &[serde_json::Value]| flow_sum(r, "UDP", (av4, Some(steady)), steady_dst).packets;
    wait_for_records(&db, &mut agent, Duration::from_secs(10), "phase 1", |r| {
        let n = steady_packets(r);
        (n != 50).then(|| format!("the steady flow has {n} of 50 packets"))
    });

    // Phase 2: the disk fills, then 1 500 new flows need new pages.
    let filler = disk.fill();
    const NEW_FLOWS: usize = 1500;
    let new_ports = a.ns.within(move || {
        // Fixed source ports: an ephemeral port reused by a later socket
        // would merge two flows into one. The steady flow's own (ephemeral)
        // port may fall in the range: skipped, or its flow gets a packet more.
        (41000u16..)
            .filter(|p| *p != steady)
            .take(NEW_FLOWS)
            .inspect(|&port| {
                let u = UdpSocket::bind(SocketAddr::new([0, 0, 0, 0].into(), port)).unwrap();
                u.send_to(&[2u8; 64], target).unwrap();
            })
            .collect::<Vec<u16>>()
    });
    agent.wait_for_log("the disk is full", Duration::from_secs(15));
    // Counting goes on while writes fail: more of the steady flow.
    a.ns.within(move || {
        let u = UdpSocket::bind(SocketAddr::new([0, 0, 0, 0].into(), steady)).unwrap();
        u.connect(target).unwrap();
        for _ in 0..25 {
            u.send(&[1u8; 64]).unwrap();
        }
    });
    std::thread::sleep(Duration::from_millis(1200));

    // Space returns: the kept batches are written, in order, nothing lost.
    std::fs::remove_file(&filler).unwrap();
    let absent_new = |r: &[serde_json::Value]| {
        new_ports
            .iter()
            .copied()
            .filter(|p| flow_sum(r, "UDP", (av4, Some(*p)), steady_dst).packets == 0)
            .collect::<Vec<u16>>()
    };
    let records = wait_for_records(
        &db,
        &mut agent,
        Duration::from_secs(20),
        "after space returned",
        |r| {
            let (absent, steady) = (absent_new(r), steady_packets(r));
            (!absent.is_empty() || steady != 75).then(|| {
                format!(
                    "the steady flow has {steady} of 75 packets; {} of {NEW_FLOWS} new flows \
                     absent (first: {:?})",
                    absent.len(),
                    &absent[..absent.len().min(8)]
                )
            })
        },
    );
    assert_eq!(
        steady_packets(&records),
        75,
        "the steady flow: 50 before the disk filled, 25 while it was full"
    );
    for p in &new_ports {
        let f = flow_sum(&records, "UDP", (a.v4, Some(*p)), steady_dst);
        assert_eq!((f.packets, f.bytes), (1, 20 + 8 + 64), "flow from port {p}");
    }
    let stored = agent.stop();
    assert!(stored.len() > NEW_FLOWS);
    stop.store(true, Ordering::SeqCst);
    sink.join().unwrap();
}
