//! The kernel programs' packet parsing, through BPF_PROG_TEST_RUN on hand-built
//! packets (programs loaded, not attached: only these packets reach the maps).
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use flowpol::capture::{Capture, CaptureOptions};
use flowpol_recommender::flow::{FlowRecord, Protocol};

use support::netns::require_root;

const ETH_IPV4: u16 = 0x0800;
const ETH_IPV6: u16 = 0x86dd;

fn eth(ethertype: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    f.extend_from_slice(&ethertype.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], l4: &[u8]) -> Vec<u8> {
    let total = (20 + l4.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    h
}

fn ipv6(next: u8, src: [u8; 16], dst: [u8; 16], l4: &[u8]) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&dst);
    h.extend_from_slice(l4);
    h
}

fn tcp(sport: u16, dport: u16, flags: u8, payload: usize) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    h.extend(std::iter::repeat_n(0xab, payload));
    h
}

fn udp(sport: u16, dport: u16, payload: usize) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&((8 + payload) as u16).to_be_bytes());
    h.extend_from_slice(&[0, 0]);
    h.extend(std::iter::repeat_n(0xcd, payload));
    h
}

fn icmp(ty: u8, code: u8) -> Vec<u8> {
    vec![ty, code, 0, 0, 0, 7, 0, 1]
}

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0x20;
    a[1] = 0x01;
    a[2] = 0x0d;
    a[3] = 0xb8;
    a[15] = last;
    a
}

/// Programs keying every connection on its own (`--per-connection`): the
/// parsing tests check each packet's own 5-tuple.
fn loaded() -> Capture {
    loaded_with(true)
}

fn loaded_with(per_connection: bool) -> Capture {
    require_root();
    Capture::load(CaptureOptions {
        syn_timeout: Duration::from_secs(3600),
        per_connection,
        ..CaptureOptions::default()
    })
    .expect("loading the eBPF programs")
}

fn send(cap: &mut Capture, egress: bool, frame: &[u8]) {
    let (ret, _) = cap
        .test_run_socket(egress, frame, 1)
        .unwrap_or_else(|e| panic!("test run of a {}-byte frame: {e}", frame.len()));
    assert_eq!(ret, 1, "cgroup_skb programs must always allow the packet");
}

/// A client's socket at `client:cport` opening a TCP connection to
/// `server:sport` and sending `payload` bytes: SYN out, SYN-ACK in, data out.
fn client_connection(
    cap: &mut Capture,
    client: [u8; 4],
    server: [u8; 4],
    cport: u16,
    sport: u16,
    payload: usize,
) {
    send(
        cap,
        true,
        &eth(
            ETH_IPV4,
            &ipv4(6, client, server, &tcp(cport, sport, 0x02, 0)),
        ),
    );
    send(
        cap,
        false,
        &eth(
            ETH_IPV4,
            &ipv4(6, server, client, &tcp(sport, cport, 0x12, 0)),
        ),
    );
    send(
        cap,
        true,
        &eth(
            ETH_IPV4,
            &ipv4(6, client, server, &tcp(cport, sport, 0x18, payload)),
        ),
    );
}

fn counters(cap: &Capture) -> BTreeMap<&'static str, u64> {
    cap.counters().unwrap().into_iter().collect()
}

fn find<'a>(records: &'a [FlowRecord], proto: Protocol, src: &str, dst: &str) -> &'a FlowRecord {
    records
        .iter()
        .find(|r| {
            r.protocol == proto
                && format!("{}:{}", r.src.ip, r.src.port) == src
                && format!("{}:{}", r.dst.ip, r.dst.port) == dst
        })
        .unwrap_or_else(|| panic!("no {proto} flow {src} -> {dst} in {records:#?}"))
}

#[test]
fn privileged_parse_ipv4_tcp_udp_icmp_sctp() {
    let mut cap = loaded();
    let a = [192, 0, 2, 1];
    let b = [192, 0, 2, 2];
    client_connection(&mut cap, a, b, 40000, 80, 100);
    // A datagram received from a remote DNS server.
    send(
        &mut cap,
        false,
        &eth(
            ETH_IPV4,
            &ipv4(17, [198, 51, 100, 7], a, &udp(53, 5353, 30)),
        ),
    );
    send(&mut cap, true, &eth(ETH_IPV4, &ipv4(1, a, b, &icmp(8, 0))));
    send(
        &mut cap,
        true,
        &eth(ETH_IPV4, &ipv4(132, a, b, &udp(3868, 3868, 12))),
    );

    let records = cap.drain(true).unwrap();
    assert_eq!(records.len(), 4, "{records:#?}");
    let t = find(&records, Protocol::Tcp, "192.0.2.1:40000", "192.0.2.2:80");
    assert_eq!((t.packets, t.bytes), (2, 40 + 140));
    assert_eq!((t.reply_packets, t.reply_bytes), (1, 40));
    assert_eq!(t.tcp_flags.names(), vec!["SYN", "SYN-ACK"]);
    assert!(t.cgroup_id.is_some());
    let u = find(&records, Protocol::Udp, "198.51.100.7:53", "192.0.2.1:5353");
    assert_eq!((u.packets, u.bytes, u.reply_packets), (1, 20 + 8 + 30, 0));
    let i = find(&records, Protocol::Icmp, "192.0.2.1:8", "192.0.2.2:0");
    assert_eq!((i.packets, i.bytes), (1, 28));
    let s = find(&records, Protocol::Sctp, "192.0.2.1:3868", "192.0.2.2:3868");
    assert_eq!(s.packets, 1);
    let c = counters(&cap);
    assert_eq!(c["packets"], 6);
    assert_eq!(c["unparsable"] + c["truncated_l4"] + c["flow_map_full"], 0);
    // A second drain finds the maps empty.
    assert!(cap.drain(true).unwrap().is_empty());
}

#[test]
fn privileged_parse_client_ports_are_left_out_once_the_server_is_known() {
    let mut cap = loaded_with(false);
    let (a, b, c) = ([192, 0, 2, 1], [192, 0, 2, 2], [192, 0, 2, 3]);
    // A connection whose SYN came before the programs: nothing says which end
    // serves, so it keeps its 5-tuple.
    send(
        &mut cap,
        true,
        &eth(ETH_IPV4, &ipv4(6, a, b, &tcp(41000, 8443, 0x18, 10))),
    );
    // Two connections from a to b:80 (SYN out, SYN-ACK in, data out): the
    // first SYN teaches b:80, both are one flow without a's ports.
    for port in [40000, 40001] {
        client_connection(&mut cap, a, b, port, 80, 100);
    }
    // A server socket on a: a SYN in from c, the SYN-ACK out.
    send(
        &mut cap,
        false,
        &eth(ETH_IPV4, &ipv4(6, c, a, &tcp(50000, 8080, 0x02, 0))),
    );
    send(
        &mut cap,
        true,
        &eth(ETH_IPV4, &ipv4(6, a, c, &tcp(8080, 50000, 0x12, 0))),
    );
    // IPv6, taught by its SYN alike.
    send(
        &mut cap,
        true,
        &eth(ETH_IPV6, &ipv6(6, v6(1), v6(2), &tcp(45000, 443, 0x02, 0))),
    );
    // UDP has no SYN to learn from: per socket.
    send(
        &mut cap,
        true,
        &eth(ETH_IPV4, &ipv4(17, a, b, &udp(35000, 53, 30))),
    );

    let records = cap.drain(true).unwrap();
    assert_eq!(records.len(), 5, "{records:#?}");
    let old = find(&records, Protocol::Tcp, "192.0.2.1:41000", "192.0.2.2:8443");
    assert_eq!((old.packets, old.connections), (1, 0));
    let client = find(&records, Protocol::Tcp, "192.0.2.1:0", "192.0.2.2:80");
    assert_eq!(client.connections, 2);
    assert_eq!((client.packets, client.bytes), (4, 2 * 40 + 2 * 140));
    assert_eq!((client.reply_packets, client.reply_bytes), (2, 2 * 40));
    assert_eq!(client.tcp_flags.names(), vec!["SYN", "SYN-ACK"]);
    let served = find(&records, Protocol::Tcp, "192.0.2.3:0", "192.0.2.1:8080");
    assert_eq!(served.connections, 1);
    assert_eq!((served.packets, served.reply_packets), (1, 1));
    let v6_client = find(&records, Protocol::Tcp, "2001:db8::1:0", "2001:db8::2:443");
    assert_eq!(v6_client.connections, 1);
    let dns = find(&records, Protocol::Udp, "192.0.2.1:35000", "192.0.2.2:53");
    assert_eq!((dns.packets, dns.connections), (1, 0));

    // What was learned outlives the drain: the next interval's connection
    // to b:80 joins the same key at once.
    send(
        &mut cap,
        true,
        &eth(ETH_IPV4, &ipv4(6, a, b, &tcp(40002, 80, 0x18, 10))),
    );
    let records = cap.drain(true).unwrap();
    let later = find(&records, Protocol::Tcp, "192.0.2.1:0", "192.0.2.2:80");
    assert_eq!((later.packets, later.connections), (1, 0));
}

#[test]
fn privileged_parse_ipv6_with_extension_headers_and_fragments() {
    let mut cap = loaded();
    let (a, b) = (v6(1), v6(2));
    send(
        &mut cap,
        true,
        &eth(ETH_IPV6, &ipv6(6, a, b, &tcp(41000, 443, 0x02, 0))),
    );
    // UDP behind a hop-by-hop options header (8 bytes).
    let mut hbh = vec![17, 0, 1, 4, 0, 0, 0, 0];
    hbh.extend_from_slice(&udp(5000, 5001, 10));
    send(&mut cap, true, &eth(ETH_IPV6, &ipv6(0, a, b, &hbh)));
    send(
        &mut cap,
        false,
        &eth(ETH_IPV6, &ipv6(58, b, a, &icmp(128, 0))),
    );
    // A non-first fragment: no transport header, ports 0.
    let mut frag = vec![17, 0, 0x00, 0x08, 0, 0, 0, 9];
    frag.extend_from_slice(&[0xee; 16]);
    send(&mut cap, true, &eth(ETH_IPV6, &ipv6(44, a, b, &frag)));

    let records = cap.drain(true).unwrap();
    assert_eq!(records.len(), 4, "{records:#?}");
    let t = find(
        &records,
        Protocol::Tcp,
        "2001:db8::1:41000",
        "2001:db8::2:443",
    );
    assert_eq!((t.packets, t.bytes), (1, 60));
    let u = find(
        &records,
        Protocol::Udp,
        "2001:db8::1:5000",
        "2001:db8::2:5001",
    );
    assert_eq!(u.bytes, 40 + 8 + 8 + 10);
    let i = find(
        &records,
        Protocol::Icmpv6,
        "2001:db8::2:128",
        "2001:db8::1:0",
    );
    assert_eq!(i.packets, 1);
    let f = find(&records, Protocol::Udp, "2001:db8::1:0", "2001:db8::2:0");
    assert_eq!(f.bytes, 40 + 8 + 16);
    assert_eq!(counters(&cap)["unparsable"], 0);
}

#[test]
fn privileged_parse_truncated_and_malformed_packets_are_counted_not_recorded() {
    let mut cap = loaded();
    let (a, b) = ([192, 0, 2, 1], [192, 0, 2, 2]);
    // ARP: not IP.
    send(&mut cap, true, &eth(0x0806, &[0u8; 28]));
    // The kernel refuses to run skb programs on a frame whose IP header is cut
    // short (it needs the full header), so such packets never reach the program.
    assert!(
        cap.test_run_socket(true, &eth(ETH_IPV4, &ipv4(6, a, b, &[])[..19]), 1)
            .is_err()
    );
    // EtherType says IPv4, version nibble says 6.
    let mut wrong_version = ipv4(17, a, b, &udp(1, 2, 0));
    wrong_version[0] = 0x65;
    send(&mut cap, true, &eth(ETH_IPV4, &wrong_version));
    // Header length below the minimum.
    let mut short_ihl = ipv4(17, a, b, &udp(1, 2, 0));
    short_ihl[0] = 0x43;
    send(&mut cap, true, &eth(ETH_IPV4, &short_ihl));
    // IPv6 announcing a hop-by-hop header that is not there.
    send(&mut cap, true, &eth(ETH_IPV6, &ipv6(0, v6(1), v6(2), &[])));
    // IPv4 header claiming 60 bytes of options that are missing: no transport header.
    let mut long_ihl = ipv4(17, [192, 0, 2, 9], b, &[]);
    long_ihl[0] = 0x4f;
    send(&mut cap, true, &eth(ETH_IPV4, &long_ihl));
    // Valid IPv4, TCP header cut after the ports: flow kept with ports 0.
    send(
        &mut cap,
        true,
        &eth(ETH_IPV4, &ipv4(6, a, b, &tcp(1234, 80, 0x02, 0)[..4])),
    );
    // IPv6 with more extension headers than the program follows.
    let mut chain = Vec::new();
    for _ in 0..7 {
        chain.extend_from_slice(&[60, 0, 1, 4, 0, 0, 0, 0]);
    }
    chain.extend_from_slice(&udp(7, 7, 0));
    send(
        &mut cap,
        true,
        &eth(ETH_IPV6, &ipv6(60, v6(1), v6(3), &chain)),
    );

    let c = counters(&cap);
    assert_eq!(c["packets"], 7);
    assert_eq!(c["unparsable"], 4);
    assert_eq!(c["truncated_l4"], 2);
    assert_eq!(c["ipv6_ext_limit"], 1);
    let records = cap.drain(true).unwrap();
    assert_eq!(records.len(), 3, "{records:#?}");
    let cut = find(&records, Protocol::Tcp, "192.0.2.1:0", "192.0.2.2:0");
    assert_eq!(cut.bytes, 24);
    let opts = find(&records, Protocol::Udp, "192.0.2.9:0", "192.0.2.2:0");
    assert_eq!(opts.bytes, 20);
    // Past the extension-header limit the protocol is unknown: ports stay 0.
    assert!(
        records
            .iter()
            .any(|r| r.dst.ip.to_string() == "2001:db8::3" && r.dst.port == 0)
    );
}

#[test]
fn privileged_parse_drop_program_filters_reasons_and_counts_unreadable_skbs() {
    let mut cap = loaded();
    let not_specified = cap.drop_reasons().not_specified as u64;
    assert_eq!(cap.test_run_drop(0, not_specified).unwrap(), 0);
    assert_eq!(
        counters(&cap)["drops_seen"],
        0,
        "NOT_SPECIFIED must be ignored"
    );
    // A real reason with an skb pointer that cannot be read.
    assert_eq!(cap.test_run_drop(0, not_specified + 1).unwrap(), 0);
    let c = counters(&cap);
    assert_eq!((c["drops_seen"], c["drop_unparsable"]), (1, 1));
    // A routine reason (retransmitted data) is counted apart and never parsed.
    let old_data = cap
        .drop_reasons()
        .value("TCP_OLD_DATA")
        .expect("TCP_OLD_DATA in this kernel's enum skb_drop_reason") as u64;
    assert_eq!(cap.test_run_drop(0, old_data).unwrap(), 0);
    let c = counters(&cap);
    assert_eq!(
        (c["drops_routine"], c["drops_seen"], c["drop_unparsable"]),
        (1, 1, 1)
    );
    assert!(cap.drain(true).unwrap().is_empty());
    assert_eq!(
        cap.drop_reasons().name(not_specified as u32),
        "NOT_SPECIFIED"
    );
}

#[test]
fn privileged_parse_full_flow_map_spills_to_the_ring_buffer_and_is_counted() {
    require_root();
    let mut cap = Capture::load(CaptureOptions {
        flow_map_entries: 64,
        ..CaptureOptions::default()
    })
    .expect("loading the eBPF programs");
    let (a, b) = ([192, 0, 2, 1], [192, 0, 2, 2]);
    for port in 0..100u16 {
        let f = eth(ETH_IPV4, &ipv4(17, a, b, &udp(20000 + port, 53, 10)));
        send(&mut cap, true, &f);
    }
    let c = counters(&cap);
    assert_eq!(c["flow_map_full"], 36, "64 flows fit, 36 do not");
    assert_eq!(c["ringbuf_full"], 0);
    // Nothing is lost: the 36 spilled packets come back through the ring buffer.
    let records = cap.drain(true).unwrap();
    assert_eq!(records.len(), 100);
    assert!(
        records
            .iter()
            .all(|r| r.packets == 1 && r.bytes == 20 + 8 + 10)
    );
}

#[test]
fn privileged_parse_last_seen_follows_the_clock_on_both_paths() {
    // `last_ns` comes from the coarse clock cached per jiffy and CPU: a later
    // packet must still move it forward, on the IPv4 fast path and on the
    // general parser (IPv6) alike.
    let mut cap = loaded();
    let (a, b) = ([192, 0, 2, 31], [192, 0, 2, 32]);
    let v4 = eth(ETH_IPV4, &ipv4(6, a, b, &tcp(41000, 443, 0x10, 10)));
    let v6 = eth(ETH_IPV6, &ipv6(17, v6(31), v6(32), &udp(41001, 53, 10)));
    let start = chrono::Utc::now();
    send(&mut cap, true, &v4);
    send(&mut cap, true, &v6);
    std::thread::sleep(Duration::from_millis(120));
    let second = chrono::Utc::now();
    send(&mut cap, true, &v4);
    send(&mut cap, true, &v6);
    let end = chrono::Utc::now();
    let records = cap.drain(true).unwrap();
    // One tick (10 ms at HZ=100) of coarse resolution plus the drain's
    // monotonic-to-wall conversion.
    let slack = chrono::Duration::milliseconds(30);
    for r in [
        find(
            &records,
            Protocol::Tcp,
            "192.0.2.31:41000",
            "192.0.2.32:443",
        ),
        find(
            &records,
            Protocol::Udp,
            "2001:db8::1f:41001",
            "2001:db8::20:53",
        ),
    ] {
        assert_eq!(r.packets, 2, "{r:#?}");
        assert!(
            r.first_seen >= start - slack && r.first_seen <= second,
            "{r:#?}"
        );
        assert!(
            r.last_seen >= second - slack && r.last_seen <= end + slack,
            "last_seen {} not between {second} and {end}: {r:#?}",
            r.last_seen
        );
    }
}

#[test]
fn privileged_parse_tc_flow_maps_take_kernel_memory_only_when_tc_is_asked_for() {
    // Preallocated per-CPU maps cost entries × value × CPUs of kernel memory
    // whether used or not: without --tc-interfaces the tc copies get one entry.
    require_root();
    let entries = 8192u32;
    let load = |tc: Option<&str>| {
        Capture::load(CaptureOptions {
            flow_map_entries: entries,
            tc_interfaces: tc.map(str::to_string),
            ..CaptureOptions::default()
        })
        .expect("loading the eBPF programs")
        .kernel_map_bytes()
        .expect("the kernel's memlock accounting of each map")
    };
    let without_tc = load(None);
    let with_tc = load(Some("flowpol-none*"));
    // Each socket copy holds at least a 64-byte value per entry and CPU.
    let one_copy_values =
        u64::from(entries) * std::mem::size_of::<flowpol_common::FlowStats>() as u64;
    assert!(
        without_tc >= 2 * one_copy_values,
        "two socket flow map copies of {entries} entries take at least {} bytes, the kernel says {without_tc}",
        2 * one_copy_values
    );
    assert!(
        with_tc >= without_tc + 2 * one_copy_values,
        "with tc the two tc copies add their {entries} entries: {with_tc} vs {without_tc} bytes"
    );
}
