//! flowpol's kernel programs.
//!
//! * `flow_egress` / `flow_ingress` (cgroup_skb, attached at the cgroup v2 root):
//!   one per-CPU hash entry per socket flow, counters in each direction.
//! * `flow_tc` (tc/tcx ingress on matching interfaces, optional): forwarded traffic.
//! * `drop_kfree_skb` (raw tracepoint `kfree_skb`): dropped packets with the reason.
//!
//! A TCP client socket's flow is keyed without its ephemeral port (0) once the
//! server's (address, port) has been seen accepting connections (a SYN to it):
//! one entry per client → server:port and interval, however many connections,
//! each counted in `FlowStats::connections`. Per-connection keys cost a map
//! insert and cold lookups per connection (see BENCHMARKS.md).
//!
//! All flow/drop maps come in two copies; `CONTROL[0]` says which one is written.
//! The agent flips it and drains the idle copy, so no update is lost between a
//! read and a delete.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{BPF_NOEXIST, TC_ACT_UNSPEC},
    helpers::{
        bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_skb_cgroup_id,
    },
    macros::{cgroup_skb, classifier, map, raw_tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{RawTracePointContext, SkBuffContext, TcContext, sk_buff::SkBuff},
};
use flowpol_common::*;

const FLOW_ENTRIES: u32 = 65536;
const DROP_ENTRIES: u32 = 16384;
const SERVER_PORT_ENTRIES: u32 = 16384;

#[map]
static CONTROL: Array<u32> = Array::with_max_entries(1, 0);
#[map]
static FLOWS_0: PerCpuHashMap<FlowKey, FlowStats> =
    PerCpuHashMap::with_max_entries(FLOW_ENTRIES, 0);
#[map]
static FLOWS_1: PerCpuHashMap<FlowKey, FlowStats> =
    PerCpuHashMap::with_max_entries(FLOW_ENTRIES, 0);
#[map]
static TC_FLOWS_0: PerCpuHashMap<FlowKey, FlowStats> =
    PerCpuHashMap::with_max_entries(FLOW_ENTRIES, 0);
#[map]
static TC_FLOWS_1: PerCpuHashMap<FlowKey, FlowStats> =
    PerCpuHashMap::with_max_entries(FLOW_ENTRIES, 0);
#[map]
static DROPS_0: PerCpuHashMap<DropKey, DropStats> =
    PerCpuHashMap::with_max_entries(DROP_ENTRIES, 0);
#[map]
static DROPS_1: PerCpuHashMap<DropKey, DropStats> =
    PerCpuHashMap::with_max_entries(DROP_ENTRIES, 0);
#[map]
static OVERFLOW: RingBuf = RingBuf::with_byte_size(1 << 20, 0);
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTER_COUNT, 0);
/// Servers learned from SYNs: LRU, so a full map forgets the least used
/// (their clients fall back to per-connection keys) rather than refusing new ones.
#[map]
static SERVER_PORTS: LruHashMap<EndpointKey, u8> =
    LruHashMap::with_max_entries(SERVER_PORT_ENTRIES, 0);
/// One bit per port number: set when some server was learned on that port. It
/// tells which end of a packet may serve without a `SERVER_PORTS` lookup (a
/// clear bit: no server on that port anywhere). Bits are set without atomics: a
/// bit lost to a concurrent write is set again by the next SYN to that port.
#[map]
static SERVER_PORT_BITS: Array<u64> = Array::with_max_entries(1024, 0);
/// The addresses of the agent's node (its own interfaces, and with identity
/// every Node's), set by the agent: hostNetwork pods and node processes share
/// them, told apart only by their sockets' cgroups, so their client ports are
/// never aggregated (one entry would mix their cgroups).
#[map]
static HOST_ADDRS: HashMap<EndpointKey, u8> = HashMap::with_max_entries(HOST_ADDR_ENTRIES, 0);
/// Network namespaces (their nsfs inode numbers) whose drops are recorded when
/// `DROP_NETNS_FILTER` is 1 (`flowpol agent --drop-netns`): on a shared host,
/// two labs number their pods alike, and the `kfree_skb` tracepoint is global.
#[map]
static DROP_NETNS: HashMap<u32, u8> = HashMap::with_max_entries(DROP_NETNS_ENTRIES, 0);
/// Per CPU: `[jiffies, bpf_ktime_get_coarse_ns()]` read at that jiffy (see
/// `coarse_now`). Kernel-internal: user space never reads it.
#[map]
static CLOCK_CACHE: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);

// sk_buff layout of the running kernel, from /sys/kernel/btf/vmlinux (set by the loader).
#[unsafe(no_mangle)]
static SKB_OFF_HEAD: u32 = 0;
#[unsafe(no_mangle)]
static SKB_OFF_NETWORK_HEADER: u32 = 0;
#[unsafe(no_mangle)]
static SKB_OFF_TRANSPORT_HEADER: u32 = 0;
// Where a packet's network namespace is (set by the loader with DROP_NETNS_FILTER):
// sk_buff.dev / sk_buff.sk, net_device.nd_net, sock.__sk_common.skc_net, net.ns.inum.
#[unsafe(no_mangle)]
static SKB_OFF_DEV: u32 = 0;
#[unsafe(no_mangle)]
static SKB_OFF_SK: u32 = 0;
#[unsafe(no_mangle)]
static DEV_OFF_NET: u32 = 0;
#[unsafe(no_mangle)]
static SK_OFF_NET: u32 = 0;
#[unsafe(no_mangle)]
static NET_OFF_INUM: u32 = 0;
/// 1: only drops in a `DROP_NETNS` namespace are recorded.
#[unsafe(no_mangle)]
static DROP_NETNS_FILTER: u32 = 0;
/// `SKB_DROP_REASON_NOT_SPECIFIED` of the running kernel; only larger reasons are kept.
#[unsafe(no_mangle)]
static DROP_REASON_NOT_SPECIFIED: u32 = 2;
/// Bitmap of routine reasons (bit `r` set: reason `r` is only counted), set by
/// the loader from the reason names of the running kernel.
#[unsafe(no_mangle)]
static ROUTINE_DROP_REASONS: [u32; ROUTINE_REASON_WORDS] = [0; ROUTINE_REASON_WORDS];
/// 1: key client sockets of learned servers without their ephemeral port;
/// 0 (`flowpol agent --per-connection`): one entry per connection.
#[unsafe(no_mangle)]
static AGGREGATE_CLIENT_PORTS: u32 = 1;

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ICMP: u8 = 1;
const IPPROTO_ICMPV6: u8 = 58;
const IPPROTO_SCTP: u8 = 132;
const IPPROTO_UDPLITE: u8 = 136;
const MAX_IPV6_EXT: usize = 6;

#[inline(always)]
fn global(v: &'static u32) -> u32 {
    // Globals are patched at load time: read them through a volatile load so the
    // compiler does not fold the placeholder values.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        unsafe { *p += 1 };
    }
}

/// `bpf_ktime_get_coarse_ns()` (CLOCK_MONOTONIC at the last tick), read once
/// per jiffy and CPU. The coarse clock helper cost 16 ns per packet in
/// BPF_PROG_TEST_RUN and ~35 ns under `bpf_stats` (it reads the timekeeper
/// under its seqcount); `bpf_jiffies64` is one load. The coarse clock only moves
/// at a tick, so within one jiffy the cached value is what the helper would
/// return (up to the instant of the tick itself: at most one tick off).
#[inline(always)]
fn coarse_now() -> u64 {
    let j = unsafe { bpf_jiffies64() };
    let Some(c) = CLOCK_CACHE.get_ptr_mut(0) else {
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: a per-CPU slot. A program that interrupts this one on the same
    // CPU (ingress softirq over egress) sees either the old pair or the new
    // one: the time is stored before the jiffy that validates it, and jiffies
    // never go back, so a half-written pair is never taken as current.
    unsafe {
        if (*c)[0] == j && (*c)[1] != 0 {
            return (*c)[1];
        }
        let now = bpf_ktime_get_coarse_ns();
        core::ptr::write_volatile(&mut (*c)[1], now);
        core::ptr::write_volatile(&mut (*c)[0], j);
        now
    }
}

#[inline(always)]
fn active_copy() -> u32 {
    match CONTROL.get(CONTROL_ACTIVE) {
        Some(v) => *v & 1,
        None => 0,
    }
}

/// Reads `N` bytes at `off`: straight from the linear packet data when it is
/// there (no helper call), else through bpf_skb_load_bytes (paged data).
#[inline(always)]
fn read<const N: usize>(skb: &SkBuff, off: usize) -> Option<[u8; N]> {
    let data = unsafe { (*skb.skb).data } as usize;
    let end = unsafe { (*skb.skb).data_end } as usize;
    if off < 4096 && data + off + N <= end {
        // SAFETY: bounds checked against data_end just above.
        return Some(unsafe { core::ptr::read_unaligned((data + off) as *const [u8; N]) });
    }
    skb.load::<[u8; N]>(off).ok()
}

/// A parsed packet: tuple in packet order (source in `local_*`).
struct Parsed {
    key: FlowKey,
    flags: u8,
}

#[inline(always)]
fn tcp_flag_bits(raw: u8) -> u8 {
    const FIN: u8 = 0x01;
    const SYN: u8 = 0x02;
    const RST: u8 = 0x04;
    const ACK: u8 = 0x10;
    let mut out = 0;
    if raw & SYN != 0 {
        out |= if raw & ACK != 0 { TCP_SYN_ACK } else { TCP_SYN };
    }
    if raw & FIN != 0 {
        out |= TCP_FIN;
    }
    if raw & RST != 0 {
        out |= TCP_RST;
    }
    out
}

/// Fills ports (or ICMP type/code) and TCP flags from the transport header at `l4`.
/// Returns false when the header is truncated.
#[inline(always)]
fn parse_l4(skb: &SkBuff, l4: usize, key: &mut FlowKey, flags: &mut u8) -> bool {
    match key.protocol {
        IPPROTO_TCP => match read::<14>(skb, l4) {
            Some(h) => {
                key.local_port = u16::from_be_bytes([h[0], h[1]]);
                key.remote_port = u16::from_be_bytes([h[2], h[3]]);
                *flags = tcp_flag_bits(h[13]);
                true
            }
            None => false,
        },
        IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE => match read::<4>(skb, l4) {
            Some(h) => {
                key.local_port = u16::from_be_bytes([h[0], h[1]]);
                key.remote_port = u16::from_be_bytes([h[2], h[3]]);
                true
            }
            None => false,
        },
        IPPROTO_ICMP | IPPROTO_ICMPV6 => match read::<2>(skb, l4) {
            Some(h) => {
                key.local_port = h[0] as u16;
                key.remote_port = h[1] as u16;
                true
            }
            None => false,
        },
        _ => true,
    }
}

/// Parses the IP packet starting at `l3` (0 for cgroup_skb, after L2 for tc).
/// `None` when the IP header itself is unusable.
#[inline(always)]
fn parse_ip(skb: &SkBuff, l3: usize, ethertype: u16) -> Option<Parsed> {
    let mut key = FlowKey::default();
    let mut flags = 0u8;
    let l4;
    let mut has_l4 = true;
    if ethertype == ETH_P_IP {
        let h = read::<20>(skb, l3)?;
        if h[0] >> 4 != 4 {
            return None;
        }
        let ihl = ((h[0] & 0x0f) as usize) * 4;
        if ihl < 20 {
            return None;
        }
        key.family = FAMILY_IPV4;
        key.protocol = h[9];
        key.local_addr[..4].copy_from_slice(&h[12..16]);
        key.remote_addr[..4].copy_from_slice(&h[16..20]);
        // Non-first fragments carry no transport header.
        let frag_off = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
        has_l4 = frag_off == 0;
        l4 = l3 + ihl;
    } else if ethertype == ETH_P_IPV6 {
        let h = read::<40>(skb, l3)?;
        if h[0] >> 4 != 6 {
            return None;
        }
        key.family = FAMILY_IPV6;
        key.local_addr.copy_from_slice(&h[8..24]);
        key.remote_addr.copy_from_slice(&h[24..40]);
        let mut next = h[6];
        let mut off = l3 + 40;
        let mut done = false;
        for _ in 0..MAX_IPV6_EXT {
            match next {
                // hop-by-hop, routing, destination options
                0 | 43 | 60 => {
                    let e = read::<2>(skb, off)?;
                    next = e[0];
                    off += (e[1] as usize + 1) * 8;
                }
                // fragment
                44 => {
                    let e = read::<4>(skb, off)?;
                    next = e[0];
                    if u16::from_be_bytes([e[2], e[3]]) & 0xfff8 != 0 {
                        has_l4 = false;
                    }
                    off += 8;
                }
                // authentication header
                51 => {
                    let e = read::<2>(skb, off)?;
                    next = e[0];
                    off += (e[1] as usize + 2) * 4;
                }
                _ => {
                    done = true;
                    break;
                }
            }
        }
        if !done {
            count(CNT_IPV6_EXT_LIMIT);
            has_l4 = false;
        }
        key.protocol = next;
        l4 = off;
    } else {
        return None;
    }
    if has_l4 && !parse_l4(skb, l4, &mut key, &mut flags) {
        count(CNT_TRUNCATED_L4);
    }
    Some(Parsed { key, flags })
}

/// One packet (or GSO aggregate) to count.
#[derive(Clone, Copy)]
struct Packet {
    dir: u8,
    flags: u8,
    packets: u64,
    bytes: u64,
}

/// Coarse clock (tick resolution, 4 ms at HZ=250), cached per jiffy: a load
/// instead of a clock read per packet, good enough for `last_ns`. `first_ns`
/// decides which end opened a flow (the request and its reply often fall in
/// the same tick, on different CPUs' slots), so it is read from the precise
/// clock, once per flow and CPU. `clock` false: benchmark stage without it
/// (constant-folded away).
#[inline(always)]
fn packet_time(clock: bool) -> u64 {
    if clock { coarse_now() } else { 0 }
}

/// Adds `pkt` to this CPU's slot of an existing entry.
#[inline(always)]
fn update_slot<C: Fn() -> u64>(v: &mut FlowStats, pkt: &Packet, now: u64, cgroup_id: &C) {
    if v.first_ns == 0 {
        // Slot of another CPU than the one that inserted the key: start it.
        v.first_ns = unsafe { bpf_ktime_get_ns() };
        v.first_dir = pkt.dir;
        v.cgroup_id = cgroup_id();
    }
    v.last_ns = now;
    v.connections += (pkt.flags & TCP_SYN != 0) as u32;
    if pkt.dir == DIR_EGRESS {
        v.tx_packets += pkt.packets;
        v.tx_bytes += pkt.bytes;
        v.tx_flags |= pkt.flags;
    } else {
        v.rx_packets += pkt.packets;
        v.rx_bytes += pkt.bytes;
        v.rx_flags |= pkt.flags;
    }
}

/// One packet's update of the active flow map copy.
struct FlowUpdate<'a, C: Fn() -> u64> {
    map: &'a PerCpuHashMap<FlowKey, FlowStats>,
    /// Which copy `map` is (`CONTROL[0]`), for ring-buffer events.
    copy: u8,
    pkt: Packet,
    now: u64,
    /// `bpf_skb_cgroup_id`, called once per entry and CPU only.
    cgroup_id: C,
}

impl<C: Fn() -> u64> FlowUpdate<'_, C> {
    /// Adds the packet to `key`'s entry, inserting it when new; the ring
    /// buffer takes it when the map is full.
    #[inline(always)]
    fn add(&self, key: &FlowKey) {
        let (map, pkt, now) = (self.map, &self.pkt, self.now);
        if let Some(v) = map.get_ptr_mut(key) {
            update_slot(unsafe { &mut *v }, pkt, now, &self.cgroup_id);
            return;
        }
        let cgroup = (self.cgroup_id)();
        let first = unsafe { bpf_ktime_get_ns() };
        let mut v = FlowStats {
            first_ns: first,
            last_ns: now,
            cgroup_id: cgroup,
            first_dir: pkt.dir,
            ..FlowStats::default()
        };
        update_slot(&mut v, pkt, now, &self.cgroup_id);
        match map.insert(key, v, BPF_NOEXIST as u64) {
            Ok(()) => count(CNT_FLOW_INSERTS),
            Err(_) => {
                // Lost a race with another CPU inserting the same key: update that entry.
                if let Some(p) = map.get_ptr_mut(key) {
                    update_slot(unsafe { &mut *p }, pkt, now, &|| cgroup);
                    return;
                }
                count(CNT_FLOW_MAP_FULL);
                let ev = OverflowEvent {
                    key: *key,
                    ts_ns: first,
                    cgroup_id: cgroup,
                    bytes: pkt.bytes as u32,
                    packets: pkt.packets as u16,
                    dir: pkt.dir,
                    tcp_flags: pkt.flags,
                    copy: self.copy,
                    _pad: [0; 7],
                };
                if OVERFLOW.output::<OverflowEvent>(&ev, 0).is_err() {
                    count(CNT_RINGBUF_FULL);
                }
            }
        }
    }

    /// Adds the packet to `key`'s entry if the map copy has it; false when not.
    #[inline(always)]
    fn update_existing(&self, key: &FlowKey) -> bool {
        match self.map.get_ptr_mut(key) {
            Some(v) => {
                update_slot(unsafe { &mut *v }, &self.pkt, self.now, &self.cgroup_id);
                true
            }
            None => false,
        }
    }
}

/// The aggregated key a TCP packet of a socket may be counted under: its
/// other end is a server, so the client's socket leaves out its own
/// (ephemeral) port and the server's socket its peer's.
struct Candidate {
    key: AlignedKey,
    /// The server end is the remote one (this socket is the client).
    remote_serves: bool,
    /// Both ports were marked and `SERVER_PORTS` said which end serves; else
    /// only one port was marked and the entry decides (see `aggregation`).
    confirmed: bool,
}

/// Which aggregated key, if any, a TCP packet of a socket may take: `None`
/// keeps its 5-tuple (neither end is a known server, or both are: an address
/// that served on a port and now is a client on it; never wrong, only
/// larger). Independent of the map copy, so this part of the path is built
/// once, not once per copy (a fifth less machine code, BENCHMARKS.md).
///
/// The port bitmap says which end may serve. When exactly one port is marked
/// the caller looks the aggregated key up first: it is in the map copy only if
/// that end was confirmed a server in `SERVER_PORTS` this interval, so the
/// common packet costs one map lookup, of an entry every connection shares.
#[inline(always)]
fn aggregation(key: &FlowKey, pkt: &Packet) -> Option<Candidate> {
    if pkt.flags & TCP_SYN != 0 {
        // A SYN without ACK goes to the server: the remote end on egress,
        // this socket (a listener) on ingress.
        if pkt.dir == DIR_EGRESS {
            learn_server(&key.remote_addr, key.remote_port, key.family);
        } else {
            learn_server(&key.local_addr, key.local_port, key.family);
        }
    }
    let remote_marked = port_marked(key.remote_port);
    let local_marked = port_marked(key.local_port);
    let confirmed = remote_marked == local_marked;
    let remote_serves = if confirmed {
        if !remote_marked {
            return None;
        }
        let remote = is_server(&key.remote_addr, key.remote_port, key.family);
        if remote == is_server(&key.local_addr, key.local_port, key.family) {
            return None;
        }
        remote
    } else {
        remote_marked
    };
    let mut agg = AlignedKey(*key);
    if remote_serves {
        agg.0.local_port = 0;
    } else {
        agg.0.remote_port = 0;
    }
    Some(Candidate {
        key: agg,
        remote_serves,
        confirmed,
    })
}

/// Whether a candidate's aggregated entry may be made: its server is
/// confirmed (by `SERVER_PORTS` when only its port was marked), and its client
/// address is not shared (a shared address never gets an aggregated entry, so
/// the first lookup never finds one for it).
#[inline(always)]
fn may_aggregate(key: &FlowKey, c: &Candidate) -> bool {
    let (server, server_port, client) = if c.remote_serves {
        (&key.remote_addr, key.remote_port, &key.local_addr)
    } else {
        (&key.local_addr, key.local_port, &key.remote_addr)
    };
    (c.confirmed || is_server(server, server_port, key.family))
        && !shared_address(client, key.family)
}

/// The key built on the stack 8-byte aligned, so that addresses are stored
/// as whole words (a plain `FlowKey` is 2-byte aligned: byte stores).
#[repr(C, align(8))]
#[derive(Default)]
struct AlignedKey(FlowKey);

/// The common socket packet: IPv4 without options or fragmentation, TCP or
/// UDP, its IP header and the first 14 transport bytes in the linear data.
/// Reads whole words straight from the packet and writes the key in its
/// socket-centric order (no swap); the general parser reads byte by byte and
/// costs several times the instructions. `None`: anything else, which takes
/// the general path (same key, same flags).
#[inline(always)]
fn parse_ipv4_fast(skb: &SkBuff, dir: u8) -> Option<(AlignedKey, u8)> {
    let data = unsafe { (*skb.skb).data } as usize;
    let end = unsafe { (*skb.skb).data_end } as usize;
    if data + 34 > end {
        return None;
    }
    let p = data as *const u8;
    // SAFETY: the 34 bytes at `data` are inside the packet (checked above).
    // Packet data need not be 4-byte aligned: the word loads below are plain
    // BPF loads (what C programs do through `struct iphdr *`), which the
    // kernel allows unaligned where the CPU handles them (x86, arm64); with
    // strict alignment the verifier refuses the program at load time.
    let (vihl, frag, proto, saddr, daddr, ports, tcp_flags) = unsafe {
        (
            *p,
            core::ptr::read_volatile(p.add(6) as *const u16),
            *p.add(9),
            core::ptr::read_volatile(p.add(12) as *const u32),
            core::ptr::read_volatile(p.add(16) as *const u32),
            core::ptr::read_volatile(p.add(20) as *const u32),
            *p.add(33),
        )
    };
    // Version 4 without options, not a fragment (neither MF nor an offset):
    // everything else goes the general way.
    if vihl != 0x45 || u16::from_be(frag) & 0x3fff != 0 {
        return None;
    }
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return None;
    }
    let sport = u16::from_be(ports as u16);
    let dport = u16::from_be((ports >> 16) as u16);
    let mut k = AlignedKey::default();
    k.0.family = FAMILY_IPV4;
    k.0.protocol = proto;
    let (local, remote, lport, rport) = if dir == DIR_INGRESS {
        (daddr, saddr, dport, sport)
    } else {
        (saddr, daddr, sport, dport)
    };
    // SAFETY: AlignedKey is 8-byte aligned; both arrays start at offsets 0
    // and 16 of it, so these are aligned 4-byte stores inside the key.
    unsafe {
        *(k.0.local_addr.as_mut_ptr() as *mut u32) = local;
        *(k.0.remote_addr.as_mut_ptr() as *mut u32) = remote;
    }
    k.0.local_port = lport;
    k.0.remote_port = rport;
    let flags = if proto == IPPROTO_TCP {
        tcp_flag_bits(tcp_flags)
    } else {
        0
    };
    Some((k, flags))
}

#[inline(always)]
fn endpoint_key(addr: &[u8; 16], port: u16, family: u8) -> EndpointKey {
    EndpointKey {
        addr: *addr,
        port,
        family,
        _pad: 0,
    }
}

#[inline(always)]
fn port_word(port: u16) -> u32 {
    (port >> 6) as u32
}

#[inline(always)]
fn port_bit(port: u16) -> u64 {
    1u64 << (port & 63)
}

#[inline(always)]
fn port_marked(port: u16) -> bool {
    match SERVER_PORT_BITS.get(port_word(port)) {
        Some(w) => *w & port_bit(port) != 0,
        None => false,
    }
}

/// `addr:port` has accepted TCP connections (a SYN to it was seen).
#[inline(always)]
fn is_server(addr: &[u8; 16], port: u16, family: u8) -> bool {
    unsafe { SERVER_PORTS.get(&endpoint_key(addr, port, family)) }.is_some()
}

/// An address several cgroups' sockets share (loopback, a node address): its
/// client ports stay in the key so that each socket keeps its own cgroup.
#[inline(always)]
fn shared_address(addr: &[u8; 16], family: u8) -> bool {
    let loopback = if family == FAMILY_IPV4 {
        addr[0] == 127
    } else {
        addr[..15] == [0u8; 15] && addr[15] == 1
    };
    loopback || unsafe { HOST_ADDRS.get(&endpoint_key(addr, 0, family)) }.is_some()
}

#[inline(always)]
fn learn_server(addr: &[u8; 16], port: u16, family: u8) {
    let key = endpoint_key(addr, port, family);
    if unsafe { SERVER_PORTS.get(&key) }.is_none() {
        // Full: the LRU map evicts; a failed insert only costs aggregation.
        let _ = SERVER_PORTS.insert(&key, &1, 0);
    }
    if let Some(w) = SERVER_PORT_BITS.get_ptr_mut(port_word(port)) {
        // SAFETY: an element of an array map; see SERVER_PORT_BITS on races.
        unsafe {
            if *w & port_bit(port) == 0 {
                *w |= port_bit(port);
            }
        }
    }
}

/// How much of the socket path a program runs. Production programs run
/// `STAGE_FULL`; the others exist only for `examples/capture_prog_cost.rs`,
/// which measures each stage's cost (the agent never loads them).
const STAGE_PARSE: u8 = 1;
const STAGE_MAP: u8 = 2;
const STAGE_CLOCK: u8 = 3;
const STAGE_FULL: u8 = 4;

#[inline(always)]
fn socket_packet<const STAGE: u8>(ctx: &SkBuffContext, dir: u8) {
    if STAGE >= STAGE_FULL {
        count(CNT_PACKETS);
    }
    let skb = &ctx.skb;
    let proto = u16::from_be(unsafe { (*skb.skb).protocol } as u16);
    let fast = if proto == ETH_P_IP {
        parse_ipv4_fast(skb, dir)
    } else {
        None
    };
    let (key, flags) = match fast {
        Some((k, flags)) => (k, flags),
        None => {
            let Some(p) = parse_ip(skb, 0, proto) else {
                count(CNT_UNPARSABLE);
                return;
            };
            let mut key = AlignedKey(p.key);
            if dir == DIR_INGRESS {
                // Socket-centric key: local = this socket's side.
                let key = &mut key.0;
                core::mem::swap(&mut key.local_addr, &mut key.remote_addr);
                if key.protocol != IPPROTO_ICMP && key.protocol != IPPROTO_ICMPV6 {
                    core::mem::swap(&mut key.local_port, &mut key.remote_port);
                }
            }
            (key, p.flags)
        }
    };
    let key = &key.0;
    if STAGE == STAGE_PARSE {
        core::hint::black_box((key, flags));
        return;
    }
    // A GSO super-packet stands for gso_segs wire packets.
    let (packets, bytes) = if STAGE >= STAGE_FULL {
        let segs = unsafe { (*skb.skb).gso_segs };
        let packets = if segs > 1 { segs as u64 } else { 1 };
        (packets, skb.len() as u64)
    } else {
        (1, 0)
    };
    let pkt = Packet {
        dir,
        flags,
        packets,
        bytes,
    };
    let cgroup_id = || unsafe { bpf_skb_cgroup_id(skb.skb) };
    let now = packet_time(STAGE >= STAGE_CLOCK);
    let aggregate =
        STAGE >= STAGE_FULL && key.protocol == IPPROTO_TCP && global(&AGGREGATE_CLIENT_PORTS) != 0;
    // One call per map: a call site that sees two maps loses the verifier's
    // inlined lookup. Only the map operations are built per copy.
    let update = |copy: u32| FlowUpdate {
        map: if copy == 0 { &FLOWS_0 } else { &FLOWS_1 },
        copy: copy as u8,
        pkt,
        now,
        cgroup_id,
    };
    let copy = active_copy();
    let candidate = if aggregate {
        aggregation(key, &pkt)
    } else {
        None
    };
    if let Some(c) = &candidate
        && !c.confirmed
    {
        let hit = if copy == 0 {
            update(0).update_existing(&c.key.0)
        } else {
            update(1).update_existing(&c.key.0)
        };
        if hit {
            return;
        }
    }
    let chosen = match &candidate {
        Some(c) if may_aggregate(key, c) => &c.key.0,
        _ => key,
    };
    if copy == 0 {
        update(0).add(chosen);
    } else {
        update(1).add(chosen);
    }
}

#[cgroup_skb(egress)]
pub fn flow_egress(ctx: SkBuffContext) -> i32 {
    socket_packet::<STAGE_FULL>(&ctx, DIR_EGRESS);
    1
}

#[cgroup_skb(ingress)]
pub fn flow_ingress(ctx: SkBuffContext) -> i32 {
    socket_packet::<STAGE_FULL>(&ctx, DIR_INGRESS);
    1
}

// Benchmark-only programs (`examples/capture_prog_cost.rs`; the agent never
// loads them): the hook's own cost (`bench_floor` does nothing) and the
// socket path cut after each stage.

#[cgroup_skb(egress)]
pub fn bench_floor(_ctx: SkBuffContext) -> i32 {
    1
}

#[cgroup_skb(ingress)]
pub fn bench_floor_ingress(_ctx: SkBuffContext) -> i32 {
    1
}

#[cgroup_skb(egress)]
pub fn bench_parse(ctx: SkBuffContext) -> i32 {
    socket_packet::<STAGE_PARSE>(&ctx, DIR_EGRESS);
    1
}

#[cgroup_skb(egress)]
pub fn bench_map(ctx: SkBuffContext) -> i32 {
    socket_packet::<STAGE_MAP>(&ctx, DIR_EGRESS);
    1
}

#[cgroup_skb(egress)]
pub fn bench_clock(ctx: SkBuffContext) -> i32 {
    socket_packet::<STAGE_CLOCK>(&ctx, DIR_EGRESS);
    1
}

/// tc ingress on an interface: the frame starts at the Ethernet header. Flows are
/// keyed in packet order and counted as `tx` (the interface's sender side).
#[classifier]
pub fn flow_tc(ctx: TcContext) -> i32 {
    count(CNT_PACKETS);
    let skb = &ctx.skb;
    let mut l3 = 14usize;
    let Some(mut ethertype) = read::<2>(skb, 12).map(u16::from_be_bytes) else {
        count(CNT_UNPARSABLE);
        return TC_ACT_UNSPEC;
    };
    if ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD {
        match read::<2>(skb, 16).map(u16::from_be_bytes) {
            Some(t) => {
                ethertype = t;
                l3 = 18;
            }
            None => {
                count(CNT_UNPARSABLE);
                return TC_ACT_UNSPEC;
            }
        }
    }
    let Some(p) = parse_ip(skb, l3, ethertype) else {
        count(CNT_UNPARSABLE);
        return TC_ACT_UNSPEC;
    };
    let segs = unsafe { (*skb.skb).gso_segs };
    let pkt = Packet {
        dir: DIR_EGRESS,
        flags: p.flags,
        packets: if segs > 1 { segs as u64 } else { 1 },
        bytes: (skb.len() as u64).saturating_sub(l3 as u64),
    };
    let now = packet_time(true);
    if active_copy() == 0 {
        FlowUpdate {
            map: &TC_FLOWS_0,
            copy: 0,
            pkt,
            now,
            cgroup_id: || 0,
        }
        .add(&p.key);
    } else {
        FlowUpdate {
            map: &TC_FLOWS_1,
            copy: 1,
            pkt,
            now,
            cgroup_id: || 0,
        }
        .add(&p.key);
    }
    // TCX_NEXT: let the other programs on this hook run.
    TC_ACT_UNSPEC
}

#[inline(always)]
fn read_kernel<T>(addr: u64) -> Option<T> {
    unsafe { bpf_probe_read_kernel(addr as *const T).ok() }
}

/// Reads the dropped packet's tuple from the skb's network and transport headers.
#[inline(always)]
fn drop_tuple(skb: u64) -> Option<(FlowKey, u8, u64)> {
    let head: u64 = read_kernel(skb + global(&SKB_OFF_HEAD) as u64)?;
    let nh: u16 = read_kernel(skb + global(&SKB_OFF_NETWORK_HEADER) as u64)?;
    let th: u16 = read_kernel(skb + global(&SKB_OFF_TRANSPORT_HEADER) as u64)?;
    if head == 0 || nh == 0xffff {
        return None;
    }
    let ip = head + nh as u64;
    let first: u8 = read_kernel(ip)?;
    let mut key = FlowKey::default();
    let hdr_len;
    let bytes;
    match first >> 4 {
        4 => {
            let h: [u8; 20] = read_kernel(ip)?;
            key.family = FAMILY_IPV4;
            key.protocol = h[9];
            key.local_addr[..4].copy_from_slice(&h[12..16]);
            key.remote_addr[..4].copy_from_slice(&h[16..20]);
            hdr_len = ((h[0] & 0x0f) as u64) * 4;
            bytes = u16::from_be_bytes([h[2], h[3]]) as u64;
            if u16::from_be_bytes([h[6], h[7]]) & 0x1fff != 0 {
                return Some((key, 0, bytes));
            }
        }
        6 => {
            let h: [u8; 40] = read_kernel(ip)?;
            key.family = FAMILY_IPV6;
            key.protocol = h[6];
            key.local_addr.copy_from_slice(&h[8..24]);
            key.remote_addr.copy_from_slice(&h[24..40]);
            hdr_len = 40;
            bytes = u16::from_be_bytes([h[4], h[5]]) as u64 + 40;
        }
        _ => return None,
    }
    // Before ip_rcv the transport header still equals the network header.
    let l4 = if th != 0xffff && th > nh {
        head + th as u64
    } else {
        ip + hdr_len
    };
    let mut flags = 0;
    match key.protocol {
        IPPROTO_TCP => {
            if let Some(h) = read_kernel::<[u8; 14]>(l4) {
                key.local_port = u16::from_be_bytes([h[0], h[1]]);
                key.remote_port = u16::from_be_bytes([h[2], h[3]]);
                flags = tcp_flag_bits(h[13]);
            }
        }
        IPPROTO_UDP | IPPROTO_SCTP | IPPROTO_UDPLITE => {
            if let Some(h) = read_kernel::<[u8; 4]>(l4) {
                key.local_port = u16::from_be_bytes([h[0], h[1]]);
                key.remote_port = u16::from_be_bytes([h[2], h[3]]);
            }
        }
        IPPROTO_ICMP | IPPROTO_ICMPV6 => {
            if let Some(h) = read_kernel::<[u8; 2]>(l4) {
                key.local_port = h[0] as u16;
                key.remote_port = h[1] as u16;
            }
        }
        _ => {}
    }
    Some((key, flags, bytes))
}

/// The nsfs inode number of the namespace a dropped packet was in: its
/// device's, else (a packet dropped before it had one) its socket's.
#[inline(always)]
fn drop_netns(skb: u64) -> Option<u32> {
    let dev: u64 = read_kernel(skb + global(&SKB_OFF_DEV) as u64)?;
    let net: u64 = if dev != 0 {
        read_kernel(dev + global(&DEV_OFF_NET) as u64)?
    } else {
        let sk: u64 = read_kernel(skb + global(&SKB_OFF_SK) as u64)?;
        if sk == 0 {
            return None;
        }
        read_kernel(sk + global(&SK_OFF_NET) as u64)?
    };
    if net == 0 {
        return None;
    }
    read_kernel(net + global(&NET_OFF_INUM) as u64)
}

#[inline(always)]
fn add_drop(map: &PerCpuHashMap<DropKey, DropStats>, key: &DropKey, flags: u8, bytes: u64) {
    // Tracing programs may not use the coarse clock (seqlock); this one is rare.
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(v) = map.get_ptr_mut(key) {
        let v = unsafe { &mut *v };
        if v.first_ns == 0 {
            v.first_ns = now;
        }
        v.last_ns = now;
        v.packets += 1;
        v.bytes += bytes;
        v.tcp_flags |= flags;
        return;
    }
    let v = DropStats {
        first_ns: now,
        last_ns: now,
        packets: 1,
        bytes,
        tcp_flags: flags,
        _pad: [0; 7],
    };
    if map.insert(key, v, BPF_NOEXIST as u64).is_err() {
        match map.get_ptr_mut(key) {
            Some(p) => {
                let p = unsafe { &mut *p };
                if p.first_ns == 0 {
                    p.first_ns = now;
                }
                p.last_ns = now;
                p.packets += 1;
                p.bytes += bytes;
                p.tcp_flags |= flags;
            }
            None => count(CNT_DROP_MAP_FULL),
        }
    }
}

#[inline(always)]
fn routine_reason(reason: u32) -> bool {
    if reason >= (ROUTINE_REASON_WORDS * 32) as u32 {
        return false;
    }
    let word = (reason >> 5) as usize & (ROUTINE_REASON_WORDS - 1);
    // Volatile for the same reason as `global`: the loader patches the array.
    let bits = unsafe { core::ptr::read_volatile(&ROUTINE_DROP_REASONS[word]) };
    bits & (1 << (reason & 31)) != 0
}

/// `kfree_skb(skb, location, reason, rx_sk)`: arguments by position.
#[raw_tracepoint(tracepoint = "kfree_skb")]
pub fn drop_kfree_skb(ctx: RawTracePointContext) -> i32 {
    let reason: u64 = ctx.arg(2);
    let reason = reason as u32;
    if reason <= global(&DROP_REASON_NOT_SPECIFIED) {
        return 0;
    }
    if routine_reason(reason) {
        count(CNT_DROPS_ROUTINE);
        return 0;
    }
    let skb: u64 = ctx.arg(0);
    if global(&DROP_NETNS_FILTER) != 0 {
        let kept = drop_netns(skb).is_some_and(|ns| unsafe { DROP_NETNS.get(&ns) }.is_some());
        if !kept {
            count(CNT_DROPS_OTHER_NETNS);
            return 0;
        }
    }
    count(CNT_DROPS_SEEN);
    let Some((flow, flags, bytes)) = drop_tuple(skb) else {
        count(CNT_DROP_UNPARSABLE);
        return 0;
    };
    let key = DropKey {
        flow,
        reason,
        _pad: 0,
    };
    if active_copy() == 0 {
        add_drop(&DROPS_0, &key, flags, bytes);
    } else {
        add_drop(&DROPS_1, &key, flags, bytes);
    }
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
