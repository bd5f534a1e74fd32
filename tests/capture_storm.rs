//! A connection storm, with a long interval.
//!
//! * At the defaults the client's connections to the server port are one
//!   kernel entry and one row, counting every connection.
//! * With `--per-connection` (an entry per connection) into a small flow map:
//!   the agent drains early each time the active map copy is half full, so
//!   every connection is stored and the map never overflows.
#[path = "support/netns.rs"]
mod netns;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use netns::{Agent, Lab, require_root, stored_flows_and_losses};

/// Connections the test opens (each its own source port).
const CONNECTIONS: usize = 6000;
/// Entries of each flow map copy: 6000 connections make 12 000 inserts (both
/// sockets are local), about six copies' worth.
const MAP_ENTRIES: &str = "4096";

/// The value of `name=N` in the agent's exit line.
fn exit_field(log: &[String], name: &str) -> u64 {
    let line = log
        .iter()
        .find(|l| l.contains("capture detached"))
        .unwrap_or_else(|| panic!("no exit line in the agent log:\n{}", log.join("\n")));
    // Field values may be wrapped in colour codes.
    let plain: String = {
        let mut out = String::new();
        let mut chars = line.chars();
        while let Some(c) = chars.next() {
            if c == '\x1b' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let needle = format!("{name}=");
    let at = plain
        .find(&needle)
        .unwrap_or_else(|| panic!("no {name} in {plain:?}"));
    plain[at + needle.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap()
}

/// What one storm did: the source ports its connections used, and how long it took.
struct Storm {
    server_port: u16,
    ports: BTreeSet<u16>,
    took: Duration,
}

/// Opens [`CONNECTIONS`] connections from host 0 to a server on host 1 at
/// about 2 000 connections/s: a copy's half (2 048 inserts) fills in about
/// half a second, several times over, well inside a 60 s interval.
fn storm(lab: &Lab) -> Storm {
    let server_ip = lab.hosts[1].v4;
    let listener = lab.hosts[1]
        .ns
        .within(move || TcpListener::bind(SocketAddr::new(server_ip, 0)).unwrap());
    let server_port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            // Close after the client: its end keeps the port (TIME_WAIT), so
            // every connection has its own source port.
            let (mut s, _) = listener.accept().unwrap();
            let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
            drop(s);
        }
    });
    let started = Instant::now();
    let ports: BTreeSet<u16> = lab.hosts[0].ns.within(move || {
        let dst = SocketAddr::new(server_ip, server_port);
        let mut ports = BTreeSet::new();
        for i in 0..CONNECTIONS {
            let s = TcpStream::connect_timeout(&dst, Duration::from_secs(5)).unwrap();
            ports.insert(s.local_addr().unwrap().port());
            drop(s);
            if i % 100 == 99 {
                let due = Duration::from_micros((i as u64 + 1) * 500);
                if let Some(wait) = due.checked_sub(started.elapsed()) {
                    std::thread::sleep(wait);
                }
            }
        }
        ports
    });
    server.join().unwrap();
    let took = started.elapsed();
    // The kernel may hand a port out again once its earlier connection is
    // fully closed: two connections with one 5-tuple are one flow. Nearly
    // all have their own.
    assert!(
        ports.len() >= CONNECTIONS * 9 / 10,
        "{} distinct source ports for {CONNECTIONS} connections",
        ports.len()
    );
    Storm {
        server_port,
        ports,
        took,
    }
}

/// The source ports of the storm's connections the database holds, and the
/// capture losses it counted (one read of the database for both).
fn stored_ports(
    lab: &Lab,
    db: &std::path::Path,
    server_port: u16,
) -> (BTreeSet<u16>, BTreeMap<String, u64>) {
    let (server_ip, client_ip) = (lab.hosts[1].v4.to_string(), lab.hosts[0].v4.to_string());
    let (records, losses) = stored_flows_and_losses(db);
    let mut stored = BTreeSet::new();
    for r in &records {
        let (src, dst) = (&r["src"], &r["dst"]);
        // Dropped packets are records of their own (e.g. a late segment to a
        // port in TIME_WAIT, dropped as TCP_RFC7323_TW_PAWS): not connections.
        if r["protocol"] != "TCP" || r["verdict"] == "dropped" {
            continue;
        }
        if src["ip"] == client_ip && dst["ip"] == server_ip && dst["port"] == server_port {
            stored.insert(src["port"].as_u64().unwrap() as u16);
        }
        assert!(
            !(src["ip"] == server_ip && src["port"] == server_port),
            "a connection stored the wrong way round (or twice): {r}"
        );
    }
    (stored, losses)
}

/// The agent's flags for a storm of per-connection entries into small map copies.
const PER_CONNECTION_SMALL_MAP: [&str; 5] = [
    "--per-connection",
    "--flow-map-entries",
    MAP_ENTRIES,
    "--interval",
    "60s",
];

/// SYNs the calling thread's network namespace has sent again so far (TcpExt
/// TCPSynRetrans): a retransmitted SYN counts in a row's `connections` too.
fn syn_retransmissions() -> u64 {
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat").unwrap();
    let mut tcp_ext = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next().unwrap(), tcp_ext.next().unwrap());
    let at = names
        .split_whitespace()
        .position(|n| n == "TCPSynRetrans")
        .expect("TCPSynRetrans in /proc/net/netstat");
    values.split_whitespace().nth(at).unwrap().parse().unwrap()
}

#[test]
fn privileged_a_storm_at_the_defaults_is_one_row_counting_every_connection() {
    require_root();
    let lab = Lab::new(2);
    let mut agent = Agent::start(&["--interval", "60s"]);
    let retransmitted_before = lab.hosts[0].ns.within(syn_retransmissions);
    let storm = storm(&lab);
    let retransmitted = lab.hosts[0].ns.within(syn_retransmissions) - retransmitted_before;
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();

    let (server_ip, client_ip) = (lab.hosts[1].v4.to_string(), lab.hosts[0].v4.to_string());
    let (records, losses) = stored_flows_and_losses(&agent.db);
    let rows: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| {
            r["protocol"] == "TCP"
                && r["verdict"] != "dropped"
                && r["src"]["ip"] == client_ip
                && r["dst"]["ip"] == server_ip
                && r["dst"]["port"] == storm.server_port
        })
        .collect();
    // The server learned from the first SYN, every connection after it is
    // keyed without the client's port: one flow (the merged intervals).
    assert_eq!(rows.len(), 1, "{rows:#?}");
    assert_eq!(rows[0]["src"]["port"], 0, "{}", rows[0]);
    assert_eq!(rows[0]["verdict"], "forwarded", "{}", rows[0]);
    assert_eq!(
        rows[0]["connections"].as_u64(),
        Some(CONNECTIONS as u64 + retransmitted),
        "{CONNECTIONS} connections, {retransmitted} SYNs sent again: {}",
        rows[0]
    );
    assert!(
        !records
            .iter()
            .any(|r| r["src"]["ip"] == server_ip && r["src"]["port"] == storm.server_port),
        "a connection stored the wrong way round: {records:#?}"
    );
    assert!(losses.is_empty(), "{losses:?}");
    // Two sockets per connection, yet a handful of kernel entries.
    let inserts = exit_field(&agent.log, "flow_inserts");
    assert!(
        inserts < 100,
        "{inserts} flow map inserts for {CONNECTIONS} connections"
    );
}

/// Every connection of `storm` stored, no loss counted, several early drains.
fn assert_stored_whole(lab: &Lab, agent: &Agent, storm: &Storm) {
    let (stored, losses) = stored_ports(lab, &agent.db, storm.server_port);
    let missing: Vec<&u16> = storm.ports.difference(&stored).take(10).collect();
    assert!(
        stored == storm.ports,
        "{} of {} 5-tuples stored after {:?}; first missing source ports {missing:?}; losses {losses:?}",
        stored.intersection(&storm.ports).count(),
        storm.ports.len(),
        storm.took
    );
    assert_eq!(
        losses.get("flow_map_full").copied().unwrap_or(0),
        0,
        "{losses:?}"
    );
    assert_eq!(exit_field(&agent.log, "flow_map_full"), 0);
    assert_eq!(exit_field(&agent.log, "ringbuf_full"), 0);
    let early = exit_field(&agent.log, "early_drains");
    assert!(
        early >= 3,
        "12 000 inserts into 4 096-entry copies within a 60 s interval need several early drains, got {early}"
    );
}

#[test]
fn privileged_a_per_connection_storm_into_a_small_map_is_stored_whole_by_early_drains() {
    require_root();
    let lab = Lab::new(2);
    let mut agent = Agent::start(&PER_CONNECTION_SMALL_MAP);
    let storm = storm(&lab);
    // Let the last FINs pass before the final drain.
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    assert_stored_whole(&lab, &agent, &storm);
}

/// Holds the write lock of the SQLite database at `db` (`BEGIN IMMEDIATE`, as
/// a backup or an operator's `sqlite3` session would) until `release` sends.
fn hold_write_lock(db: &std::path::Path) -> (mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let (locked_tx, locked_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let db = db.to_path_buf();
    let holder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::SqliteConnection::connect_with(
                &sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&db)
                    .busy_timeout(Duration::from_secs(10)),
            )
            .await
            .expect("opening the agent's database");
            sqlx::query("BEGIN IMMEDIATE")
                .execute(&mut conn)
                .await
                .expect("taking the write lock");
            locked_tx.send(()).unwrap();
            let _ = release_rx.recv();
            sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
        });
    });
    locked_rx
        .recv_timeout(Duration::from_secs(15))
        .expect("the write lock within 15 s");
    (release_tx, holder)
}

#[test]
fn privileged_a_per_connection_storm_while_another_writer_locks_the_database_is_drained_on_time_and_stored_whole()
 {
    // The agent's writer waits for the lock (busy timeout 10 s) with its
    // batches queued; the drain thread must go on emptying the kernel maps
    // meanwhile, or the storm overflows them. (On one thread, drains waited
    // for the writer: see BENCHMARKS.md, the storm with the agent as deployed.)
    require_root();
    let lab = Lab::new(2);
    let mut agent = Agent::start(&PER_CONNECTION_SMALL_MAP);
    let (release, holder) = hold_write_lock(&agent.db);
    let storm = storm(&lab);
    // Nothing of the storm could be written while the lock was held...
    let (during, _) = stored_ports(&lab, &agent.db, storm.server_port);
    assert!(
        during.is_empty(),
        "{} connections written while another writer held the lock",
        during.len()
    );
    release.send(()).unwrap();
    holder.join().unwrap();
    // ...and all of it is, once the lock is released.
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();
    assert_stored_whole(&lab, &agent, &storm);
}
