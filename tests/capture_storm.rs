//! A connection storm into a small flow map with a long interval: the agent
//! drains early each time the active map copy is half full, so every
//! connection is stored and the map never overflows.
#[path = "support/netns.rs"]
mod netns;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, TcpStream};
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

#[test]
fn privileged_a_storm_into_a_small_map_is_stored_whole_by_early_drains() {
    require_root();
    let lab = Lab::new(2);
    let server_ip = lab.hosts[1].v4;
    let client_ip = lab.hosts[0].v4;
    let listener = lab.hosts[1]
        .ns
        .within(move || TcpListener::bind(SocketAddr::new(server_ip, 0)).unwrap());
    let server_port = listener.local_addr().unwrap().port();
    let mut agent = Agent::start(&["--flow-map-entries", MAP_ENTRIES, "--interval", "60s"]);

    let server = std::thread::spawn(move || {
        for _ in 0..CONNECTIONS {
            // Close after the client: its end keeps the port (TIME_WAIT), so
            // every connection has its own source port.
            let (mut s, _) = listener.accept().unwrap();
            let _ = std::io::Read::read(&mut s, &mut [0u8; 1]);
            drop(s);
        }
    });
    // About 2 000 connections/s: a copy's half (2 048 inserts) fills in about
    // half a second, several times over, well inside the 60 s interval.
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
    // Let the last FINs pass before the final drain.
    std::thread::sleep(Duration::from_millis(500));
    agent.stop();

    let (records, losses) = stored_flows_and_losses(&agent.db);
    let mut stored = BTreeSet::new();
    for r in &records {
        let (src, dst) = (&r["src"], &r["dst"]);
        // Dropped packets are records of their own (e.g. a late segment to a
        // port in TIME_WAIT, dropped as TCP_RFC7323_TW_PAWS): not connections.
        if r["protocol"] != "TCP" || r["verdict"] == "dropped" {
            continue;
        }
        if src["ip"] == client_ip.to_string()
            && dst["ip"] == server_ip.to_string()
            && dst["port"] == server_port
        {
            stored.insert(src["port"].as_u64().unwrap() as u16);
        }
        assert!(
            !(src["ip"] == server_ip.to_string() && src["port"] == server_port),
            "a connection stored the wrong way round (or twice): {r}"
        );
    }
    let missing: Vec<&u16> = ports.difference(&stored).take(10).collect();
    assert!(
        stored == ports,
        "{} of {} 5-tuples stored after {took:?}; first missing source ports {missing:?}; losses {losses:?}",
        stored.intersection(&ports).count(),
        ports.len()
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
