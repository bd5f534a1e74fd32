//! Turns what one drain read from the kernel maps into `FlowRecord`s. Pure: no
//! syscalls, so every rule here is unit-tested.
//!
//! Rules:
//! * per-CPU slots of one key are summed; a slot with `first_ns == 0` was never written;
//! * a flow whose two ends are both local sockets appears under two mirrored keys:
//!   only the opener's socket entry is kept (it counted every packet of the flow,
//!   once, on egress or ingress) and the choice is remembered across drains;
//! * a TCP flow whose opener sent a SYN and received neither SYN-ACK nor RST is held
//!   back until `syn_timeout` passes; then it is `unanswered`;
//! * drops are their own records (`dropped`, the reason, the dropped packets only);
//! * tc flows are only kept when no socket saw the same tuple.
use std::collections::{HashMap, HashSet};
use std::hash::BuildHasher;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use flowpol_common::{
    DIR_EGRESS, DIR_INGRESS, DropKey, DropStats, FAMILY_IPV4, FlowKey, FlowStats, OverflowEvent,
    TCP_FIN, TCP_RST, TCP_SYN, TCP_SYN_ACK,
};
use flowpol_recommender::flow::{Endpoint, FlowRecord, Protocol, TcpFlags, Verdict};

use super::btf::DropReasons;

/// Maps and sets touched once per map entry, thousands of times per drain: foldhash,
/// seeded per process (SipHash and B-tree searches were a third of the agent's time in
/// a connection storm).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// Everything one drain read from the kernel, before assembly.
#[derive(Debug, Default, Clone)]
pub struct RawDrain {
    pub sockets: Vec<(FlowKey, Vec<FlowStats>)>,
    pub tc: Vec<(FlowKey, Vec<FlowStats>)>,
    pub drops: Vec<(DropKey, Vec<DropStats>)>,
    pub overflow: Vec<OverflowEvent>,
}

/// An address and port (ICMP: type or code).
pub type Addr = (IpAddr, u16);

/// One assembled flow record without identity: about 130 bytes and no heap
/// (drop reasons are shared), so a drain of 100 000 flows can be kept whole
/// for its one transaction and its retries while full [`FlowRecord`]s are made
/// a chunk at a time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactFlow {
    pub src: Addr,
    pub dst: Addr,
    pub protocol: Protocol,
    pub packets: u64,
    pub bytes: u64,
    pub reply_packets: u64,
    pub reply_bytes: u64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub verdict: Verdict,
    pub drop_reason: Option<Arc<str>>,
    pub tcp_flags: u8,
    pub connections: u64,
    pub cgroup_id: Option<u64>,
}

impl CompactFlow {
    /// The full record (no identity yet: enrichment adds it).
    pub fn to_record(&self) -> FlowRecord {
        FlowRecord {
            src: Endpoint::new(self.src.0, self.src.1),
            dst: Endpoint::new(self.dst.0, self.dst.1),
            protocol: self.protocol,
            packets: self.packets,
            bytes: self.bytes,
            reply_packets: self.reply_packets,
            reply_bytes: self.reply_bytes,
            first_seen: self.first_seen,
            last_seen: self.last_seen,
            verdict: self.verdict,
            drop_reason: self.drop_reason.as_deref().map(str::to_string),
            tcp_flags: TcpFlags(self.tcp_flags),
            connections: self.connections,
            cgroup_id: self.cgroup_id,
            node: None,
        }
    }

    /// The capture fields of `r` (its identity fields are not kept).
    pub fn from_record(r: &FlowRecord) -> Self {
        Self {
            src: (r.src.ip, r.src.port),
            dst: (r.dst.ip, r.dst.port),
            protocol: r.protocol,
            packets: r.packets,
            bytes: r.bytes,
            reply_packets: r.reply_packets,
            reply_bytes: r.reply_bytes,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
            verdict: r.verdict,
            drop_reason: r.drop_reason.as_deref().map(Arc::from),
            tcp_flags: r.tcp_flags.0,
            connections: r.connections,
            cgroup_id: r.cgroup_id,
        }
    }
}

/// Monotonic "now" of the drain and the offset turning `bpf_ktime_get_ns()`
/// (CLOCK_MONOTONIC) into wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    pub mono_now_ns: u64,
    /// wall time ns since the epoch = monotonic ns + this.
    pub wall_offset_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let wall = clock_ns(libc::CLOCK_REALTIME);
        Self {
            mono_now_ns: mono,
            wall_offset_ns: wall as i128 - mono as i128,
        }
    }

    fn wall(&self, mono_ns: u64) -> DateTime<Utc> {
        let ns = mono_ns as i128 + self.wall_offset_ns;
        DateTime::from_timestamp_nanos(ns.clamp(0, i64::MAX as i128) as i64)
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; both clocks always exist on Linux.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Counters of one socket (or tc) flow, summed over CPUs and drains.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Agg {
    pub first_ns: u64,
    pub last_ns: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub tx_flags: u8,
    pub rx_flags: u8,
    pub first_dir: u8,
    pub cgroup_id: u64,
    /// TCP connections opened (SYNs) the entry covers.
    pub connections: u64,
}

impl Agg {
    fn from_slot(s: &FlowStats) -> Self {
        Self {
            first_ns: s.first_ns,
            // last_ns comes from the coarse clock, which lags the precise one.
            last_ns: s.last_ns.max(s.first_ns),
            tx_packets: s.tx_packets,
            tx_bytes: s.tx_bytes,
            rx_packets: s.rx_packets,
            rx_bytes: s.rx_bytes,
            tx_flags: s.tx_flags,
            rx_flags: s.rx_flags,
            first_dir: s.first_dir,
            cgroup_id: s.cgroup_id,
            connections: s.connections as u64,
        }
    }

    fn from_event(e: &OverflowEvent) -> Self {
        let mut a = Self {
            first_ns: e.ts_ns,
            last_ns: e.ts_ns,
            first_dir: e.dir,
            cgroup_id: e.cgroup_id,
            connections: u64::from(e.tcp_flags & TCP_SYN != 0),
            ..Self::default()
        };
        if e.dir == DIR_EGRESS {
            a.tx_packets = e.packets as u64;
            a.tx_bytes = e.bytes as u64;
            a.tx_flags = e.tcp_flags;
        } else {
            a.rx_packets = e.packets as u64;
            a.rx_bytes = e.bytes as u64;
            a.rx_flags = e.tcp_flags;
        }
        a
    }

    /// Sums the per-CPU slots; `None` when no slot was ever written.
    pub fn merge_slots(slots: &[FlowStats]) -> Option<Self> {
        slots
            .iter()
            .filter(|s| s.first_ns != 0)
            .map(Self::from_slot)
            .reduce(|mut a, b| {
                a.add(&b);
                a
            })
    }

    fn add(&mut self, o: &Self) {
        if o.first_ns < self.first_ns {
            self.first_ns = o.first_ns;
            self.first_dir = o.first_dir;
            if o.cgroup_id != 0 {
                self.cgroup_id = o.cgroup_id;
            }
        }
        if self.cgroup_id == 0 {
            self.cgroup_id = o.cgroup_id;
        }
        self.last_ns = self.last_ns.max(o.last_ns);
        self.tx_packets += o.tx_packets;
        self.tx_bytes += o.tx_bytes;
        self.rx_packets += o.rx_packets;
        self.rx_bytes += o.rx_bytes;
        self.tx_flags |= o.tx_flags;
        self.rx_flags |= o.rx_flags;
        self.connections += o.connections;
    }

    /// What this interval's handshake says about the opener, if it saw one:
    /// `true` when the local socket opened (it sent the SYN or received the
    /// SYN-ACK), `false` when the remote end did.
    fn syn_orientation(&self, protocol: u8) -> Option<bool> {
        if protocol != 6 {
            return None;
        }
        let local = self.tx_flags & TCP_SYN != 0 || self.rx_flags & TCP_SYN_ACK != 0;
        let remote = self.rx_flags & TCP_SYN != 0 || self.tx_flags & TCP_SYN_ACK != 0;
        match (local, remote) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            // Nothing, or a simultaneous open: no evidence either way.
            _ => None,
        }
    }

    /// The local socket sent a SYN and got neither SYN-ACK nor RST back (yet).
    fn syn_unanswered(&self, protocol: u8) -> bool {
        protocol == 6
            && self.tx_flags & TCP_SYN != 0
            && self.rx_flags & (TCP_SYN_ACK | TCP_RST) == 0
    }
}

fn is_icmp(protocol: u8) -> bool {
    protocol == 1 || protocol == 58
}

/// The same flow as the socket at the other end keys it.
pub fn mirror(k: &FlowKey) -> FlowKey {
    let mut m = *k;
    m.local_addr = k.remote_addr;
    m.remote_addr = k.local_addr;
    if !is_icmp(k.protocol) {
        m.local_port = k.remote_port;
        m.remote_port = k.local_port;
    }
    m
}

fn ip(family: u8, addr: &[u8; 16]) -> IpAddr {
    if family == FAMILY_IPV4 {
        IpAddr::V4(Ipv4Addr::new(addr[0], addr[1], addr[2], addr[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*addr))
    }
}

/// Which end opened a flow, remembered across drains.
#[derive(Debug, Clone, Copy)]
struct Opener {
    /// The opener is the local side of the canonical key (else of its mirror).
    /// A flag rather than the key: this is kept per flow for minutes.
    canonical_opens: bool,
    /// Earliest observation of the flow so far (either direction, either hook).
    first_ns: u64,
    /// Decided by the TCP handshake rather than by the first packet.
    by_handshake: bool,
    /// Both ends are local sockets (both were seen, in one drain or in
    /// different ones).
    local_pair: bool,
    /// Which ends were seen as local sockets so far: 1 the canonical key's,
    /// 2 its mirror's. Frequent (early) drains often split a local pair, the
    /// sender's socket in one drain and the receiver's, lagging behind, in
    /// the next: the second must not be stored again.
    ends_seen: u8,
    /// How far a TCP flow has closed, over every drain so far: [`FIN_CANONICAL`],
    /// [`FIN_MIRROR`] (a FIN sent by the canonical key's local end, by the other
    /// end), [`RST_SEEN`].
    closing: u8,
    last_seen_mono: u64,
}

const FIN_CANONICAL: u8 = 1;
const FIN_MIRROR: u8 = 2;
const RST_SEEN: u8 = 4;

impl Opener {
    /// Both ends sent a FIN, or one a RST: only stragglers can follow.
    fn closed(&self) -> bool {
        self.closing & (FIN_CANONICAL | FIN_MIRROR) == FIN_CANONICAL | FIN_MIRROR
            || self.closing & RST_SEEN != 0
    }
}

/// What one socket entry shows of a TCP flow closing, as [`Opener::closing`] bits.
fn closing_bits(canonical: &FlowKey, key: &FlowKey, a: &Agg) -> u8 {
    if key.protocol != 6 {
        return 0;
    }
    let (mine, theirs) = if key == canonical {
        (FIN_CANONICAL, FIN_MIRROR)
    } else {
        (FIN_MIRROR, FIN_CANONICAL)
    };
    let mut bits = 0;
    if a.tx_flags & TCP_FIN != 0 {
        bits |= mine;
    }
    if a.rx_flags & TCP_FIN != 0 {
        bits |= theirs;
    }
    if (a.tx_flags | a.rx_flags) & TCP_RST != 0 {
        bits |= RST_SEEN;
    }
    bits
}

/// How long a closed TCP flow's opener is remembered: the stragglers of a close
/// (the last ACK in the next interval, a FIN retransmitted to a socket in
/// TIME_WAIT, 60 s on Linux) must not count as a new flow; remembering it the
/// full [`Assembler`] TTL held every short connection of the last five minutes.
const CLOSED_TTL_NS: u64 = 60 * 1_000_000_000;

/// Shrinks `map` to twice its length when under a quarter of its capacity is used (and it is
/// big enough for that to matter).
fn shrink_if_sparse<K: Eq + std::hash::Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > 4096 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// Upper bound on flows held back waiting for a SYN-ACK (SYN floods).
const MAX_PENDING: usize = 100_000;

/// Flows whose orientation is remembered; past this, only recently seen ones are kept.
const MAX_REMEMBERED: usize = 1_000_000;

/// The idle sweep visits every remembered flow: under a storm drains come every 100 ms
/// and a sweep of a million entries each time cost more than the drain itself. Flows
/// idle for minutes can wait up to this long more to be forgotten.
const SWEEP_EVERY_NS: u64 = 1_000_000_000;

/// Keeps what must survive between drains: which end opened each socket flow
/// (a later interval may hold no SYN and start with a reply), which flows have a
/// local socket at both ends, and TCP flows still waiting for an answer.
#[derive(Debug)]
pub struct Assembler {
    syn_timeout_ns: u64,
    pair_ttl_ns: u64,
    pending: FastMap<FlowKey, Agg>,
    /// Socket flow, canonical key → its opener, and whether both ends are local
    /// (one compact entry per live flow: 64 bytes with its key).
    openers: FastMap<FlowKey, Opener>,
    /// tc flow, canonical key → (key in the opener's direction, last seen).
    tc_forward: FastMap<FlowKey, (FlowKey, u64)>,
    /// Drop reason names, one shared copy each.
    reason_names: HashMap<u32, Arc<str>>,
    /// When the idle sweep last ran (monotonic ns); `None` before the first.
    last_sweep_ns: Option<u64>,
}

impl Assembler {
    pub fn new(syn_timeout: std::time::Duration) -> Self {
        Self {
            syn_timeout_ns: syn_timeout.as_nanos() as u64,
            pair_ttl_ns: 300 * 1_000_000_000,
            pending: FastMap::default(),
            openers: FastMap::default(),
            tc_forward: FastMap::default(),
            reason_names: HashMap::new(),
            last_sweep_ns: None,
        }
    }

    /// Which end opened a socket flow, from this drain's entries of it (one, or
    /// two when both ends are local sockets), returned as the opener's key.
    ///
    /// 1. the TCP handshake (SYN / SYN-ACK) when an entry saw it;
    /// 2. else the earliest observation of the flow, over both ends and every
    ///    drain so far: an egress means the entry's local socket sent first, an
    ///    ingress that the remote end did. What earlier drains established stands
    ///    unless an entry now shows an even earlier packet (written to the map
    ///    copy just drained after an earlier drain read it, so a later drain may
    ///    see the reply before the request).
    ///
    /// Also returns whether both ends are local sockets: both entries are
    /// here (`entries.len() == 2`), or were in an earlier drain.
    fn orient_socket(
        &mut self,
        canonical: FlowKey,
        entries: &[(FlowKey, Agg)],
        now: u64,
    ) -> (FlowKey, bool) {
        let mut handshake = entries.iter().filter_map(|(k, a)| {
            a.syn_orientation(k.protocol)
                .map(|local| if local { *k } else { mirror(k) })
        });
        let by_handshake = match (handshake.next(), handshake.next()) {
            (Some(a), None) => Some(a),
            (Some(a), Some(b)) if a == b => Some(a),
            _ => None,
        };
        // At equal times a send comes before what it causes: egress first.
        let (first_ns, _, by_first) = entries
            .iter()
            .map(|(k, a)| {
                let ingress = a.first_dir == DIR_INGRESS;
                (a.first_ns, ingress, if ingress { mirror(k) } else { *k })
            })
            .min()
            .expect("at least one entry");
        let prev = self.openers.get(&canonical).copied();
        let earliest = prev.map_or(first_ns, |p| p.first_ns.min(first_ns));
        let ends_seen = entries
            .iter()
            .fold(prev.map_or(0, |p| p.ends_seen), |seen, (k, _)| {
                seen | if *k == canonical { 1 } else { 2 } | if mirror(k) == *k { 3 } else { 0 }
            });
        let local_pair = entries.len() == 2 || ends_seen == 3 || prev.is_some_and(|p| p.local_pair);
        // A handshake after a close is a new connection on the same 5-tuple: it
        // starts open.
        let closed_before = prev.filter(|p| by_handshake.is_none() || !p.closed());
        let closing = entries
            .iter()
            .fold(closed_before.map_or(0, |p| p.closing), |bits, (k, a)| {
                bits | closing_bits(&canonical, k, a)
            });
        let opener = match (by_handshake, prev) {
            (Some(key), _) => Opener {
                canonical_opens: key == canonical,
                first_ns: earliest,
                by_handshake: true,
                local_pair,
                ends_seen,
                closing,
                last_seen_mono: now,
            },
            (None, Some(p)) if p.by_handshake || p.first_ns <= first_ns => Opener {
                local_pair,
                ends_seen,
                closing,
                last_seen_mono: now,
                ..p
            },
            _ => Opener {
                canonical_opens: by_first == canonical,
                first_ns: earliest,
                by_handshake: false,
                local_pair,
                ends_seen,
                closing,
                last_seen_mono: now,
            },
        };
        self.openers.insert(canonical, opener);
        let key = if opener.canonical_opens {
            canonical
        } else {
            mirror(&canonical)
        };
        (key, local_pair)
    }

    /// The opener's direction of a tc flow seen as `key` and maybe its mirror.
    fn orient_tc(&mut self, key: &FlowKey, a: &Agg, reply: Option<&Agg>, now: u64) -> FlowKey {
        let back = mirror(key);
        let canonical = (*key).min(back);
        let syn_here = a.tx_flags & TCP_SYN != 0;
        let syn_there = reply.is_some_and(|r| r.tx_flags & TCP_SYN != 0);
        let forward = if key.protocol == 6 && syn_here != syn_there {
            if syn_here { *key } else { back }
        } else if let Some((f, _)) = self.tc_forward.get(&canonical) {
            *f
        } else if reply.is_some_and(|r| (r.first_ns, back) < (a.first_ns, *key)) {
            // The earlier packet's direction; at equal times the smaller key, whichever
            // of the two this loop meets first.
            back
        } else {
            *key
        };
        self.tc_forward.insert(canonical, (forward, now));
        forward
    }

    fn forget_idle(&mut self, now: u64) {
        if self
            .last_sweep_ns
            .is_some_and(|last| now.saturating_sub(last) < SWEEP_EVERY_NS)
        {
            return;
        }
        self.last_sweep_ns = Some(now);
        let ttl = self.pair_ttl_ns;
        let keep = if self.openers.len() + self.tc_forward.len() > MAX_REMEMBERED {
            60 * 1_000_000_000
        } else {
            ttl
        };
        // A local pair is remembered for the full TTL even when memory is
        // short: forgetting it would count its non-opener side as a new flow.
        self.openers.retain(|_, o| {
            let idle = now.saturating_sub(o.last_seen_mono);
            if o.closed() {
                return idle < CLOSED_TTL_NS.min(ttl);
            }
            idle < keep || (o.local_pair && idle < ttl)
        });
        self.tc_forward
            .retain(|_, (_, seen)| now.saturating_sub(*seen) < keep);
        // A hash table never gives back what a burst made it grow to: shrink once it is
        // mostly empty, so memory follows the flows still remembered.
        shrink_if_sparse(&mut self.openers);
        shrink_if_sparse(&mut self.tc_forward);
        shrink_if_sparse(&mut self.pending);
    }

    /// Number of TCP flows held back waiting for a SYN-ACK.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Assembles one drain read from in-memory copies of the maps. With
    /// `final_drain` nothing is held back.
    pub fn assemble(
        &mut self,
        raw: RawDrain,
        clock: Clock,
        reasons: &DropReasons,
        final_drain: bool,
    ) -> Vec<FlowRecord> {
        self.assemble_chunked(raw, clock, reasons, final_drain, usize::MAX)
            .iter()
            .map(CompactFlow::to_record)
            .collect()
    }

    /// [`Assembler::assemble`] reading at most `chunk` map entries per step, as
    /// the agent reads the kernel maps.
    pub fn assemble_chunked(
        &mut self,
        raw: RawDrain,
        clock: Clock,
        reasons: &DropReasons,
        final_drain: bool,
        chunk: usize,
    ) -> Vec<CompactFlow> {
        let mut sockets = MemorySource::from(raw.sockets);
        let mut tc = MemorySource::from(raw.tc);
        let mut drops = MemorySource::from(raw.drops);
        let sources = Sources {
            sockets: &mut sockets,
            tc: &mut tc,
            drops: &mut drops,
        };
        match self.drain(sources, &raw.overflow, clock, reasons, final_drain, chunk) {
            Ok(out) => out.flows,
            Err(never) => match never {},
        }
    }

    /// Empties the three maps of one drain, `chunk` entries at a time (each
    /// entry with its mirror, so both sockets of a local flow meet), and
    /// assembles them. Besides the compact output, a drain holds at most about
    /// `4 * chunk` entries (a chunk with its mirrors, and up to two chunks'
    /// worth waiting for their mirror). With `final_drain` nothing is held back.
    pub fn drain<E, S, T, D>(
        &mut self,
        sources: Sources<'_, S, T, D>,
        overflow: &[OverflowEvent],
        clock: Clock,
        reasons: &DropReasons,
        final_drain: bool,
        chunk: usize,
    ) -> Result<DrainOutput, E>
    where
        S: DrainSource<FlowKey, FlowStats, Error = E>,
        T: DrainSource<FlowKey, FlowStats, Error = E>,
        D: DrainSource<DropKey, DropStats, Error = E>,
    {
        let Sources { sockets, tc, drops } = sources;
        let chunk = chunk.max(1);
        // Ring-buffer overflow and flows held back at the last drain: they join
        // their map entries (if any) in whichever chunk those land.
        let mut extra: FastMap<FlowKey, Agg> = FastMap::default();
        for ev in overflow {
            merge_into(&mut extra, ev.key, Agg::from_event(ev));
        }
        for (key, a) in std::mem::take(&mut self.pending) {
            merge_into(&mut extra, key, a);
        }

        // tc first, while the socket map still holds everything a socket saw.
        let mut tc_out = Vec::new();
        let mut tc_entries = 0;
        loop {
            let (current, took) = take_chunk(tc, chunk, None, &mut FastMap::default(), 0)?;
            if took == 0 {
                break;
            }
            tc_entries += took;
            let mut tc_done: FastSet<FlowKey> = FastSet::default();
            for (key, agg) in &current {
                if seen_by_socket(key, &*sockets, &extra)?
                    || !tc_done.insert((*key).min(mirror(key)))
                {
                    continue;
                }
                let reply_key = mirror(key);
                let reply = current.get(&reply_key).filter(|_| reply_key != *key);
                let forward = self.orient_tc(key, agg, reply, clock.mono_now_ns);
                let (fwd, back) = if forward == *key {
                    (Some(agg), reply)
                } else {
                    (reply, Some(agg))
                };
                tc_out.push(tc_record(&forward, fwd, back, &clock, self.syn_timeout_ns));
            }
        }

        // Socket flows: per-CPU merge, overflow and held-back flows, orientation.
        let mut out = Vec::new();
        let mut socket_entries = 0;
        // Two chunks' worth wait for their mirror at most (~120 bytes each: 1 MiB
        // at the agent's 4 096).
        let mut waiting = FastMap::default();
        let max_waiting = chunk.saturating_mul(2);
        loop {
            let (current, took) =
                take_chunk(sockets, chunk, Some(&mut extra), &mut waiting, max_waiting)?;
            socket_entries += took;
            self.orient_chunk(&current, &clock, final_drain, &mut out);
            if took == 0 {
                break;
            }
        }
        // Entries whose mirror never came (the map is empty now) join the overflow
        // and held-back flows whose map entries were not in this drain: each goes
        // with what those hold for its mirror (the other socket's overflow).
        for (key, a) in waiting {
            merge_into(&mut extra, key, a);
        }
        while !extra.is_empty() {
            let keys: Vec<FlowKey> = extra.keys().take(chunk).copied().collect();
            let mut current = FastMap::default();
            for k in keys {
                for key in with_mirror(k) {
                    if let Some(a) = extra.remove(&key) {
                        merge_into(&mut current, key, a);
                    }
                }
            }
            self.orient_chunk(&current, &clock, final_drain, &mut out);
        }

        // Drops.
        loop {
            let batch = drops.take_many(chunk)?;
            let took = batch.len();
            for (dk, slots) in batch.iter() {
                if let Some(d) = merge_drop_slots(slots) {
                    let reason = self.reason_name(reasons, dk.reason);
                    out.push(drop_record(&dk, &d, reason, &clock));
                }
            }
            if took == 0 {
                break;
            }
        }
        out.append(&mut tc_out);
        self.forget_idle(clock.mono_now_ns);
        Ok(DrainOutput {
            flows: out,
            socket_entries,
            tc_entries,
        })
    }

    /// Orientation of one chunk's socket flows (both sockets of a local pair are
    /// in the same chunk); local-local pairs keep the opener's socket entry only
    /// (it counted every packet of the flow, once, on egress or ingress);
    /// unanswered SYNs are held back until the timeout.
    fn orient_chunk(
        &mut self,
        current: &FastMap<FlowKey, Agg>,
        clock: &Clock,
        final_drain: bool,
        out: &mut Vec<CompactFlow>,
    ) {
        let now = clock.mono_now_ns;
        let mut kept: Vec<(FlowKey, Agg, bool)> = Vec::new();
        let mut done = FastSet::with_capacity_and_hasher(current.len(), Default::default());
        for (key, agg) in current {
            let other = mirror(key);
            let canonical = (*key).min(other);
            if !done.insert(canonical) {
                continue;
            }
            let mut entries = vec![(*key, *agg)];
            if let Some(o) = current.get(&other).filter(|_| other != *key) {
                entries.push((other, *o));
            }
            let (opener, local_pair) = self.orient_socket(canonical, &entries, now);
            if let Some((k, a)) = entries.iter().find(|(k, _)| *k == opener) {
                kept.push((*k, *a, true));
            } else if !local_pair {
                // The remote end opened; only this end is a local socket.
                kept.push((*key, *agg, false));
            }
            // Else both ends are local and the opener's socket saw nothing this
            // interval: what the other socket saw was counted by the opener's.
        }
        for (key, agg, local_is_src) in kept {
            let mut verdict = Verdict::Forwarded;
            if local_is_src && agg.syn_unanswered(key.protocol) {
                let age = now.saturating_sub(agg.first_ns);
                if age >= self.syn_timeout_ns {
                    verdict = Verdict::Unanswered;
                } else if !final_drain && self.pending.len() < MAX_PENDING {
                    self.pending.insert(key, agg);
                    continue;
                }
            }
            out.push(socket_record(&key, &agg, local_is_src, verdict, clock));
        }
    }

    /// The kernel's name of a drop reason, shared by every record of that reason.
    fn reason_name(&mut self, reasons: &DropReasons, reason: u32) -> Arc<str> {
        self.reason_names
            .entry(reason)
            .or_insert_with(|| reasons.name(reason).into())
            .clone()
    }
}

/// The three maps one drain empties.
pub struct Sources<'a, S, T, D> {
    pub sockets: &'a mut S,
    pub tc: &'a mut T,
    pub drops: &'a mut D,
}

/// What one drain assembled, and how many map entries it read.
#[derive(Debug, Default)]
pub struct DrainOutput {
    pub flows: Vec<CompactFlow>,
    pub socket_entries: usize,
    pub tc_entries: usize,
}

/// Entries taken from a map, each key with its per-CPU slots, in three
/// allocations per batch rather than one per entry (freeing a slot vector per
/// entry was a tenth of the agent's time in a connection storm).
#[derive(Debug, Clone)]
pub struct Taken<K, V> {
    keys: Vec<K>,
    /// Where each entry's slots end in `slots`.
    ends: Vec<usize>,
    slots: Vec<V>,
}

impl<K, V> Default for Taken<K, V> {
    fn default() -> Self {
        Self {
            keys: Vec::new(),
            ends: Vec::new(),
            slots: Vec::new(),
        }
    }
}

impl<K: Copy, V> Taken<K, V> {
    pub fn with_capacity(entries: usize, slots_each: usize) -> Self {
        Self {
            keys: Vec::with_capacity(entries),
            ends: Vec::with_capacity(entries),
            slots: Vec::with_capacity(entries * slots_each),
        }
    }

    /// Adds an entry with its slots.
    pub fn push(&mut self, key: K, slots: impl IntoIterator<Item = V>) {
        self.slots.extend(slots);
        self.keys.push(key);
        self.ends.push(self.slots.len());
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Each key with its slots, in the order taken.
    pub fn iter(&self) -> impl Iterator<Item = (K, &[V])> + '_ {
        self.keys.iter().enumerate().map(|(i, k)| {
            let start = if i == 0 { 0 } else { self.ends[i - 1] };
            (*k, &self.slots[start..self.ends[i]])
        })
    }
}

/// A map one drain empties entry by entry: a kernel per-CPU hash map, or (tests)
/// one in memory.
pub trait DrainSource<K, V> {
    type Error;
    /// Reads and removes up to `n` entries (each with its per-CPU slots), in
    /// any order; none when the map is empty.
    fn take_many(&mut self, n: usize) -> Result<Taken<K, V>, Self::Error>;
    /// Reads and removes one entry (its per-CPU slots); `None` when absent.
    fn take(&mut self, key: &K) -> Result<Option<Vec<V>>, Self::Error>;
    /// Reads one entry without removing it.
    fn peek(&self, key: &K) -> Result<Option<Vec<V>>, Self::Error>;
}

/// A map in memory: keys come out in the order they were first inserted.
#[derive(Debug)]
pub struct MemorySource<K, V> {
    entries: HashMap<K, Vec<V>>,
    order: std::collections::VecDeque<K>,
}

impl<K: Copy + Eq + std::hash::Hash, V> From<Vec<(K, Vec<V>)>> for MemorySource<K, V> {
    fn from(items: Vec<(K, Vec<V>)>) -> Self {
        let mut entries: HashMap<K, Vec<V>> = HashMap::new();
        let mut order = std::collections::VecDeque::new();
        for (k, slots) in items {
            match entries.get_mut(&k) {
                Some(v) => v.extend(slots),
                None => {
                    order.push_back(k);
                    entries.insert(k, slots);
                }
            }
        }
        Self { entries, order }
    }
}

impl<K: Copy + Eq + std::hash::Hash, V: Clone> DrainSource<K, V> for MemorySource<K, V> {
    type Error = std::convert::Infallible;

    fn take_many(&mut self, n: usize) -> Result<Taken<K, V>, Self::Error> {
        let mut out = Taken::default();
        while out.len() < n
            && let Some(k) = self.order.pop_front()
        {
            if let Some(v) = self.entries.remove(&k) {
                out.push(k, v);
            }
        }
        Ok(out)
    }

    fn take(&mut self, key: &K) -> Result<Option<Vec<V>>, Self::Error> {
        Ok(self.entries.remove(key))
    }

    fn peek(&self, key: &K) -> Result<Option<Vec<V>>, Self::Error> {
        Ok(self.entries.get(key).cloned())
    }
}

/// `k` and, unless it is its own mirror, `mirror(k)`.
fn with_mirror(k: FlowKey) -> impl Iterator<Item = FlowKey> {
    let m = mirror(&k);
    std::iter::once(k).chain((m != k).then_some(m))
}

/// Takes up to `chunk` entries and their mirrors out of `source` (and out of
/// `extra`, when given), merged per key. The entries come in one batch; a
/// mirror that was not in it is looked for in `waiting` (entries of earlier
/// batches of this drain whose mirror had not come yet); failing that, the
/// entry itself waits there for a later batch while `waiting` has room, else
/// its mirror is taken from the map on its own. So both sockets of a local flow
/// meet in one chunk, mostly without a `bpf(2)` call per mirror: the kernel
/// returns entries in hash order, which puts a flow's two ends in different
/// batches. What is left waiting when the map is empty has no local mirror.
/// `max_waiting` 0: every mirror not in the batch is taken on its own. Returns
/// the chunk and how many map entries were taken: 0 when the map is empty.
fn take_chunk<S: DrainSource<FlowKey, FlowStats>>(
    source: &mut S,
    chunk: usize,
    mut extra: Option<&mut FastMap<FlowKey, Agg>>,
    waiting: &mut FastMap<FlowKey, Agg>,
    max_waiting: usize,
) -> Result<(FastMap<FlowKey, Agg>, usize), S::Error> {
    let batch = source.take_many(chunk)?;
    let mut took = batch.len();
    if took == 0 {
        return Ok((FastMap::default(), 0));
    }
    // Room for the batch and its mirrors: no rehash while the chunk fills.
    let mut current = FastMap::with_capacity_and_hasher(2 * took, Default::default());
    let in_batch: FastSet<FlowKey> = batch.iter().map(|(k, _)| k).collect();
    // Keys whose map entry, overflow and held-back flows join this chunk.
    let mut joined = Vec::with_capacity(2 * took);
    let mut mirrors = Vec::new();
    for (key, slots) in batch.iter() {
        let agg = Agg::merge_slots(slots);
        let m = mirror(&key);
        if m != key && !in_batch.contains(&m) {
            if let Some(a) = waiting.remove(&m) {
                merge_into(&mut current, m, a);
                joined.push(m);
            } else if waiting.len() < max_waiting {
                if let Some(a) = agg {
                    merge_into(waiting, key, a);
                }
                continue;
            } else {
                mirrors.push(m);
            }
        }
        if let Some(a) = agg {
            merge_into(&mut current, key, a);
        }
        joined.push(key);
    }
    for m in mirrors {
        if let Some(slots) = source.take(&m)? {
            took += 1;
            if let Some(a) = Agg::merge_slots(&slots) {
                merge_into(&mut current, m, a);
            }
        }
        joined.push(m);
    }
    for key in joined {
        // A key read twice in one drain (a late write to the drained copy) joins too.
        if let Some(a) = waiting.remove(&key) {
            merge_into(&mut current, key, a);
        }
        if let Some(a) = extra.as_deref_mut().and_then(|e| e.remove(&key)) {
            merge_into(&mut current, key, a);
        }
    }
    Ok((current, took))
}

/// Whether a local socket saw `key` (either way round) in this drain: its map
/// entry (not yet taken), or overflow / a held-back flow.
fn seen_by_socket<S: DrainSource<FlowKey, FlowStats>>(
    key: &FlowKey,
    sockets: &S,
    extra: &FastMap<FlowKey, Agg>,
) -> Result<bool, S::Error> {
    for k in with_mirror(*key) {
        if extra.contains_key(&k) {
            return Ok(true);
        }
        if let Some(slots) = sockets.peek(&k)?
            && Agg::merge_slots(&slots).is_some()
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Sums the per-CPU slots of one drop entry; `None` when none was written.
fn merge_drop_slots(slots: &[DropStats]) -> Option<DropStats> {
    let mut agg: Option<DropStats> = None;
    for s in slots.iter().filter(|s| s.first_ns != 0) {
        match &mut agg {
            None => agg = Some(*s),
            Some(a) => {
                a.first_ns = a.first_ns.min(s.first_ns);
                a.last_ns = a.last_ns.max(s.last_ns);
                a.packets += s.packets;
                a.bytes += s.bytes;
                a.tcp_flags |= s.tcp_flags;
            }
        }
    }
    agg
}

fn merge_into(map: &mut FastMap<FlowKey, Agg>, key: FlowKey, a: Agg) {
    map.entry(key).and_modify(|e| e.add(&a)).or_insert(a);
}

fn endpoints(key: &FlowKey, local_is_src: bool) -> (Addr, Addr) {
    let local = ip(key.family, &key.local_addr);
    let remote = ip(key.family, &key.remote_addr);
    if is_icmp(key.protocol) {
        // type in src.port, code in dst.port, whichever way the packet went.
        let (s, d) = if local_is_src {
            (local, remote)
        } else {
            (remote, local)
        };
        return ((s, key.local_port), (d, key.remote_port));
    }
    if local_is_src {
        ((local, key.local_port), (remote, key.remote_port))
    } else {
        ((remote, key.remote_port), (local, key.local_port))
    }
}

fn socket_record(
    key: &FlowKey,
    a: &Agg,
    local_is_src: bool,
    verdict: Verdict,
    clock: &Clock,
) -> CompactFlow {
    let (src, dst) = endpoints(key, local_is_src);
    let (packets, bytes, reply_packets, reply_bytes) = if local_is_src {
        (a.tx_packets, a.tx_bytes, a.rx_packets, a.rx_bytes)
    } else {
        (a.rx_packets, a.rx_bytes, a.tx_packets, a.tx_bytes)
    };
    CompactFlow {
        src,
        dst,
        protocol: Protocol::from_number(key.protocol),
        packets,
        bytes,
        reply_packets,
        reply_bytes,
        first_seen: clock.wall(a.first_ns),
        last_seen: clock.wall(a.last_ns),
        verdict,
        drop_reason: None,
        tcp_flags: a.tx_flags | a.rx_flags,
        connections: a.connections,
        cgroup_id: (a.cgroup_id != 0).then_some(a.cgroup_id),
    }
}

fn drop_record(k: &DropKey, d: &DropStats, reason: Arc<str>, clock: &Clock) -> CompactFlow {
    let (src, dst) = endpoints(&k.flow, true);
    CompactFlow {
        src,
        dst,
        protocol: Protocol::from_number(k.flow.protocol),
        packets: d.packets,
        bytes: d.bytes,
        reply_packets: 0,
        reply_bytes: 0,
        first_seen: clock.wall(d.first_ns),
        last_seen: clock.wall(d.last_ns),
        verdict: Verdict::Dropped,
        drop_reason: Some(reason),
        tcp_flags: d.tcp_flags,
        connections: 0,
        cgroup_id: None,
    }
}

fn tc_record(
    fwd_key: &FlowKey,
    fwd: Option<&Agg>,
    back: Option<&Agg>,
    clock: &Clock,
    syn_timeout_ns: u64,
) -> CompactFlow {
    let (src, dst) = endpoints(fwd_key, true);
    let fwd_flags = fwd.map_or(0, |f| f.tx_flags);
    let back_flags = back.map_or(0, |b| b.tx_flags);
    let both = [fwd, back];
    let first_ns = both.iter().flatten().map(|a| a.first_ns).min().unwrap_or(0);
    let last_ns = both.iter().flatten().map(|a| a.last_ns).max().unwrap_or(0);
    let mut verdict = Verdict::Forwarded;
    if fwd_key.protocol == 6
        && fwd_flags & TCP_SYN != 0
        && back_flags & (TCP_SYN_ACK | TCP_RST) == 0
        && clock.mono_now_ns.saturating_sub(first_ns) >= syn_timeout_ns
    {
        verdict = Verdict::Unanswered;
    }
    CompactFlow {
        src,
        dst,
        protocol: Protocol::from_number(fwd_key.protocol),
        packets: fwd.map_or(0, |f| f.tx_packets),
        bytes: fwd.map_or(0, |f| f.tx_bytes),
        reply_packets: back.map_or(0, |b| b.tx_packets),
        reply_bytes: back.map_or(0, |b| b.tx_bytes),
        first_seen: clock.wall(first_ns),
        last_seen: clock.wall(last_ns),
        verdict,
        drop_reason: None,
        tcp_flags: fwd_flags | back_flags,
        connections: fwd.map_or(0, |f| f.connections),
        cgroup_id: None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn remembered_flow_tables_give_memory_back_after_a_burst() {
        let mut map: HashMap<u64, u64> = (0..200_000).map(|i| (i, i)).collect();
        let grown = map.capacity();
        map.retain(|k, _| *k < 1_000);
        shrink_if_sparse(&mut map);
        assert!(map.capacity() < grown / 50, "{} of {grown}", map.capacity());
        assert_eq!(map.len(), 1_000);
        // A well-used table is left alone.
        let mut used: HashMap<u64, u64> = (0..10_000).map(|i| (i, i)).collect();
        let cap = used.capacity();
        shrink_if_sparse(&mut used);
        assert_eq!(used.capacity(), cap);
    }

    const SEC: u64 = 1_000_000_000;

    fn v4(a: [u8; 4]) -> [u8; 16] {
        let mut o = [0u8; 16];
        o[..4].copy_from_slice(&a);
        o
    }

    fn key(l: [u8; 4], lp: u16, r: [u8; 4], rp: u16, proto: u8) -> FlowKey {
        FlowKey {
            local_addr: v4(l),
            remote_addr: v4(r),
            local_port: lp,
            remote_port: rp,
            protocol: proto,
            family: FAMILY_IPV4,
            _pad: [0; 2],
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn slot(
        first: u64,
        tx: (u64, u64),
        rx: (u64, u64),
        txf: u8,
        rxf: u8,
        dir: u8,
        cg: u64,
    ) -> FlowStats {
        FlowStats {
            first_ns: first,
            last_ns: first + 10,
            tx_packets: tx.0,
            tx_bytes: tx.1,
            rx_packets: rx.0,
            rx_bytes: rx.1,
            cgroup_id: cg,
            tx_flags: txf,
            rx_flags: rxf,
            first_dir: dir,
            _pad: 0,
            connections: u32::from((txf | rxf) & TCP_SYN != 0),
        }
    }

    fn clock(now: u64) -> Clock {
        Clock {
            mono_now_ns: now,
            wall_offset_ns: 1_700_000_000 * SEC as i128,
        }
    }

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];

    #[test]
    fn idle_flows_are_forgotten_by_a_sweep_at_most_once_a_second() {
        let client = key(A, 40000, B, 80, 6);
        let raw = |first| RawDrain {
            sockets: vec![(
                client,
                vec![slot(
                    first,
                    (1, 60),
                    (1, 60),
                    TCP_SYN,
                    TCP_SYN_ACK,
                    DIR_EGRESS,
                    7,
                )],
            )],
            ..RawDrain::default()
        };
        let ttl = 300 * SEC;
        let mut asm = Assembler::new(Duration::from_secs(3));
        asm.assemble(raw(SEC), clock(SEC), &DropReasons::default(), false);
        assert_eq!(asm.openers.len(), 1);
        // A drain past the TTL sweeps: the flow is forgotten.
        asm.assemble(
            RawDrain::default(),
            clock(SEC + ttl),
            &DropReasons::default(),
            false,
        );
        assert_eq!(asm.openers.len(), 0);
        // A flow seen now; a sweep half a second before it is idle for the TTL keeps it;
        // the drain when it is idle for the TTL comes too soon after that sweep to run
        // another: kept; the drain a second after that sweep forgets it.
        let seen = SEC + ttl + 1;
        let empty = |asm: &mut Assembler, now| {
            asm.assemble(
                RawDrain::default(),
                clock(now),
                &DropReasons::default(),
                false,
            )
        };
        asm.assemble(raw(seen), clock(seen), &DropReasons::default(), false);
        empty(&mut asm, seen + ttl - SEC / 2);
        assert_eq!(asm.openers.len(), 1, "not idle for the TTL yet");
        empty(&mut asm, seen + ttl);
        assert_eq!(asm.openers.len(), 1, "swept again within a second");
        empty(&mut asm, seen + ttl + SEC / 2);
        assert_eq!(asm.openers.len(), 0);
    }

    #[test]
    fn a_closed_tcp_pair_is_forgotten_after_a_minute_an_open_one_kept() {
        const FIN: u8 = TCP_FIN;
        let closed = key(A, 41000, B, 80, 6);
        let open = key(A, 41001, B, 80, 6);
        let pair = |c: FlowKey, fin: u8| {
            vec![
                (
                    c,
                    vec![slot(
                        SEC,
                        (4, 240),
                        (3, 180),
                        TCP_SYN | fin,
                        TCP_SYN_ACK | fin,
                        DIR_EGRESS,
                        5,
                    )],
                ),
                (
                    mirror(&c),
                    vec![slot(
                        SEC + 5,
                        (3, 180),
                        (4, 240),
                        TCP_SYN_ACK | fin,
                        TCP_SYN | fin,
                        DIR_INGRESS,
                        6,
                    )],
                ),
            ]
        };
        let reasons = DropReasons::default();
        let mut asm = Assembler::new(Duration::from_secs(3));
        let mut sockets = pair(closed, FIN);
        sockets.extend(pair(open, 0));
        let out = asm.assemble(
            RawDrain {
                sockets,
                ..RawDrain::default()
            },
            clock(2 * SEC),
            &reasons,
            false,
        );
        assert_eq!(out.len(), 2);
        // A straggler of the close (the server's last ACK) in a later drain is no new flow.
        let straggler = RawDrain {
            sockets: vec![(
                mirror(&closed),
                vec![slot(30 * SEC, (1, 52), (0, 0), 0, 0, DIR_EGRESS, 6)],
            )],
            ..RawDrain::default()
        };
        assert!(
            asm.assemble(straggler, clock(31 * SEC), &reasons, false)
                .is_empty()
        );
        // A minute after it was last seen the closed pair is forgotten; the open one
        // is kept for the full TTL.
        asm.assemble(RawDrain::default(), clock(92 * SEC), &reasons, false);
        assert_eq!(asm.openers.len(), 1);
        assert!(asm.openers.contains_key(&open.min(mirror(&open))));
        // A new connection on a closed pair's 5-tuple (a handshake after the close)
        // starts open.
        let reused = key(A, 41002, B, 80, 6);
        let canonical = reused.min(mirror(&reused));
        asm.assemble(
            RawDrain {
                sockets: pair(reused, FIN),
                ..RawDrain::default()
            },
            clock(93 * SEC),
            &reasons,
            false,
        );
        assert!(asm.openers[&canonical].closed());
        asm.assemble(
            RawDrain {
                sockets: pair(reused, 0),
                ..RawDrain::default()
            },
            clock(94 * SEC),
            &reasons,
            false,
        );
        assert!(!asm.openers[&canonical].closed());
    }

    #[test]
    fn local_local_tcp_is_counted_once_from_the_opener() {
        let client = key(A, 40000, B, 80, 6);
        let server = mirror(&client);
        let raw = RawDrain {
            sockets: vec![
                (
                    client,
                    vec![
                        slot(100, (5, 500), (4, 400), TCP_SYN, TCP_SYN_ACK, DIR_EGRESS, 7),
                        FlowStats::default(),
                    ],
                ),
                (
                    server,
                    vec![slot(
                        110,
                        (4, 400),
                        (5, 500),
                        TCP_SYN_ACK,
                        TCP_SYN,
                        DIR_INGRESS,
                        9,
                    )],
                ),
            ],
            ..RawDrain::default()
        };
        let mut asm = Assembler::new(Duration::from_secs(3));
        let out = asm.assemble(raw, clock(SEC), &DropReasons::default(), false);
        assert_eq!(out.len(), 1);
        let r = &out[0];
        assert_eq!(r.src.ip.to_string(), "10.0.0.1");
        assert_eq!(r.src.port, 40000);
        assert_eq!(r.dst.port, 80);
        assert_eq!(
            (r.packets, r.bytes, r.reply_packets, r.reply_bytes),
            (5, 500, 4, 400)
        );
        assert_eq!(r.cgroup_id, Some(7));
        assert_eq!(r.verdict, Verdict::Forwarded);

        // Next drain: only the server side shows up: it was already counted.
        let raw = RawDrain {
            sockets: vec![(
                server,
                vec![slot(2 * SEC, (1, 52), (0, 0), 0, 0, DIR_EGRESS, 9)],
            )],
            ..RawDrain::default()
        };
        let out = asm.assemble(raw, clock(3 * SEC), &DropReasons::default(), false);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_later_interval_without_syn_keeps_the_opener_as_src() {
        let client = key(A, 46978, B, 5201, 6);
        let mut asm = Assembler::new(Duration::from_secs(3));
        let first = RawDrain {
            sockets: vec![(
                client,
                vec![slot(
                    100,
                    (3, 180),
                    (2, 120),
                    TCP_SYN,
                    TCP_SYN_ACK,
                    DIR_EGRESS,
                    1,
                )],
            )],
            ..RawDrain::default()
        };
        asm.assemble(first, clock(SEC), &DropReasons::default(), false);
        // Next interval begins with an ACK coming in: still the client's flow.
        let later = RawDrain {
            sockets: vec![(
                client,
                vec![slot(
                    2 * SEC,
                    (500, 700_000),
                    (90, 4680),
                    0,
                    0,
                    DIR_INGRESS,
                    1,
                )],
            )],
            ..RawDrain::default()
        };
        let out = asm.assemble(later, clock(3 * SEC), &DropReasons::default(), false);
        assert_eq!(out[0].src.port, 46978);
        assert_eq!((out[0].packets, out[0].reply_packets), (500, 90));

        // The same for tc: the reply direction alone in a later interval.
        let fwd = key(A, 40000, B, 80, 6);
        let tc1 = RawDrain {
            tc: vec![
                (
                    fwd,
                    vec![slot(100, (1, 60), (0, 0), TCP_SYN, 0, DIR_EGRESS, 0)],
                ),
                (
                    mirror(&fwd),
                    vec![slot(120, (1, 60), (0, 0), TCP_SYN_ACK, 0, DIR_EGRESS, 0)],
                ),
            ],
            ..RawDrain::default()
        };
        asm.assemble(tc1, clock(4 * SEC), &DropReasons::default(), false);
        let tc2 = RawDrain {
            tc: vec![(
                mirror(&fwd),
                vec![slot(5 * SEC, (7, 420), (0, 0), 0, 0, DIR_EGRESS, 0)],
            )],
            ..RawDrain::default()
        };
        let out = asm.assemble(tc2, clock(6 * SEC), &DropReasons::default(), false);
        assert_eq!((out[0].src.port, out[0].dst.port), (40000, 80));
        assert_eq!((out[0].packets, out[0].reply_packets), (0, 7));
    }

    #[test]
    fn per_cpu_slots_are_summed_and_empty_slots_ignored() {
        let k = key(A, 5000, B, 53, 17);
        let raw = RawDrain {
            sockets: vec![(
                k,
                vec![
                    slot(200, (1, 100), (0, 0), 0, 0, DIR_EGRESS, 3),
                    FlowStats::default(),
                    slot(150, (2, 200), (1, 50), 0, 0, DIR_EGRESS, 3),
                ],
            )],
            ..RawDrain::default()
        };
        let out = Assembler::new(Duration::from_secs(3)).assemble(
            raw,
            clock(SEC),
            &DropReasons::default(),
            false,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].packets, out[0].bytes, out[0].reply_packets),
            (3, 300, 1)
        );
        assert_eq!(out[0].protocol, Protocol::Udp);
        assert_eq!(
            out[0].first_seen,
            DateTime::from_timestamp_nanos(1_700_000_000 * SEC as i64 + 150)
        );
    }

    #[test]
    fn server_side_flow_is_oriented_from_the_remote_opener() {
        let k = key(B, 80, A, 40000, 6);
        let raw = RawDrain {
            sockets: vec![(
                k,
                vec![slot(
                    100,
                    (1, 60),
                    (2, 112),
                    TCP_SYN_ACK,
                    TCP_SYN,
                    DIR_INGRESS,
                    4,
                )],
            )],
            ..RawDrain::default()
        };
        let out = Assembler::new(Duration::from_secs(3)).assemble(
            raw,
            clock(SEC),
            &DropReasons::default(),
            false,
        );
        assert_eq!(out[0].src.ip.to_string(), "10.0.0.1");
        assert_eq!(out[0].dst.port, 80);
        assert_eq!((out[0].packets, out[0].reply_packets), (2, 1));
    }

    #[test]
    fn syn_without_answer_is_held_then_unanswered() {
        let k = key(A, 41000, B, 9, 6);
        let raw = RawDrain {
            sockets: vec![(
                k,
                vec![slot(SEC, (1, 60), (0, 0), TCP_SYN, 0, DIR_EGRESS, 1)],
            )],
            ..RawDrain::default()
        };
        let mut asm = Assembler::new(Duration::from_secs(3));
        assert!(
            asm.assemble(raw, clock(2 * SEC), &DropReasons::default(), false)
                .is_empty()
        );
        assert_eq!(asm.pending_len(), 1);
        // A retransmitted SYN arrives in the next drain; the timeout has passed.
        let raw = RawDrain {
            sockets: vec![(
                k,
                vec![slot(3 * SEC, (1, 60), (0, 0), TCP_SYN, 0, DIR_EGRESS, 1)],
            )],
            ..RawDrain::default()
        };
        let out = asm.assemble(raw, clock(5 * SEC), &DropReasons::default(), false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].verdict, Verdict::Unanswered);
        assert_eq!(out[0].packets, 2);
        assert_eq!(asm.pending_len(), 0);
    }

    #[test]
    fn final_drain_flushes_held_flows_and_rst_is_an_answer() {
        let k = key(A, 41000, B, 9, 6);
        let refused = key(A, 41001, B, 10, 6);
        let raw = RawDrain {
            sockets: vec![
                (
                    k,
                    vec![slot(SEC, (1, 60), (0, 0), TCP_SYN, 0, DIR_EGRESS, 1)],
                ),
                (
                    refused,
                    vec![slot(SEC, (1, 60), (1, 40), TCP_SYN, TCP_RST, DIR_EGRESS, 1)],
                ),
            ],
            ..RawDrain::default()
        };
        let out = Assembler::new(Duration::from_secs(3)).assemble(
            raw,
            clock(SEC + 1),
            &DropReasons::default(),
            true,
        );
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|r| r.verdict == Verdict::Forwarded));
    }

    #[test]
    fn icmp_echo_pairs_keep_type_and_code() {
        let req_a = key(A, 8, B, 0, 1);
        let req_b = mirror(&req_a);
        assert_eq!((req_b.local_port, req_b.remote_port), (8, 0));
        let raw = RawDrain {
            sockets: vec![
                (req_a, vec![slot(100, (1, 84), (0, 0), 0, 0, DIR_EGRESS, 1)]),
                (
                    req_b,
                    vec![slot(101, (0, 0), (1, 84), 0, 0, DIR_INGRESS, 2)],
                ),
            ],
            ..RawDrain::default()
        };
        let out = Assembler::new(Duration::from_secs(3)).assemble(
            raw,
            clock(SEC),
            &DropReasons::default(),
            false,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].protocol, Protocol::Icmp);
        assert_eq!((out[0].src.port, out[0].dst.port), (8, 0));
        assert_eq!(out[0].src.ip.to_string(), "10.0.0.1");
        assert_eq!((out[0].packets, out[0].bytes), (1, 84));
    }

    #[test]
    fn drops_are_named_and_summed() {
        let dk = DropKey {
            flow: key(A, 42000, B, 8080, 6),
            reason: 12,
            _pad: 0,
        };
        let d = DropStats {
            first_ns: 100,
            last_ns: 200,
            packets: 2,
            bytes: 120,
            tcp_flags: TCP_SYN,
            _pad: [0; 7],
        };
        let raw = RawDrain {
            drops: vec![(dk, vec![d, d, DropStats::default()])],
            ..RawDrain::default()
        };
        let reasons = DropReasons::from_pairs(&[(12, "NETFILTER_DROP")], 2);
        let out = Assembler::new(Duration::from_secs(3)).assemble(raw, clock(SEC), &reasons, false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].verdict, Verdict::Dropped);
        assert_eq!(out[0].drop_reason.as_deref(), Some("NETFILTER_DROP"));
        assert_eq!((out[0].packets, out[0].bytes), (4, 240));
        assert_eq!((out[0].src.port, out[0].dst.port), (42000, 8080));
    }

    #[test]
    fn overflow_events_are_counted_like_map_entries() {
        let k = key(A, 6000, B, 53, 17);
        let ev = |dir, bytes| OverflowEvent {
            key: k,
            ts_ns: 500,
            cgroup_id: 2,
            bytes,
            packets: 1,
            dir,
            tcp_flags: 0,
            ..OverflowEvent::default()
        };
        let raw = RawDrain {
            sockets: vec![(k, vec![slot(100, (1, 100), (0, 0), 0, 0, DIR_EGRESS, 2)])],
            overflow: vec![ev(DIR_EGRESS, 100), ev(DIR_INGRESS, 70)],
            ..RawDrain::default()
        };
        let out = Assembler::new(Duration::from_secs(3)).assemble(
            raw,
            clock(SEC),
            &DropReasons::default(),
            false,
        );
        assert_eq!(
            (
                out[0].packets,
                out[0].bytes,
                out[0].reply_packets,
                out[0].reply_bytes
            ),
            (2, 200, 1, 70)
        );
    }

    #[test]
    fn tc_flows_pair_replies_and_yield_to_sockets() {
        let fwd = key(A, 40000, B, 80, 6);
        let back = mirror(&fwd);
        let other = key(A, 40001, B, 81, 6);
        let raw = RawDrain {
            sockets: vec![(
                other,
                vec![slot(
                    100,
                    (1, 60),
                    (1, 60),
                    TCP_SYN,
                    TCP_SYN_ACK,
                    DIR_EGRESS,
                    1,
                )],
            )],
            tc: vec![
                (
                    back,
                    vec![slot(120, (2, 120), (0, 0), TCP_SYN_ACK, 0, DIR_EGRESS, 0)],
                ),
                (
                    fwd,
                    vec![slot(100, (3, 180), (0, 0), TCP_SYN, 0, DIR_EGRESS, 0)],
                ),
                (
                    other,
                    vec![slot(100, (1, 60), (0, 0), TCP_SYN, 0, DIR_EGRESS, 0)],
                ),
            ],
            ..RawDrain::default()
        };
        let out = Assembler::new(Duration::from_secs(3)).assemble(
            raw,
            clock(SEC),
            &DropReasons::default(),
            false,
        );
        assert_eq!(out.len(), 2, "{out:?}");
        let tc = out.iter().find(|r| r.dst.port == 80).unwrap();
        assert_eq!(tc.src.port, 40000);
        assert_eq!((tc.packets, tc.reply_packets), (3, 2));
        assert_eq!(tc.cgroup_id, None);
    }

    #[test]
    fn udp_both_local_is_oriented_by_the_earliest_packet_over_both_ends_and_cpus() {
        // The client's request left on CPU 1 and its reply came in on CPU 0; the
        // server's slots mirror that. The lower CPU's slot is not the earlier one.
        let client = key(A, 59327, B, 45309, 17);
        let server = mirror(&client);
        let raw = RawDrain {
            sockets: vec![
                (
                    client,
                    vec![
                        slot(1_050, (0, 0), (5, 290), 0, 0, DIR_INGRESS, 7),
                        slot(1_000, (5, 640), (0, 0), 0, 0, DIR_EGRESS, 7),
                    ],
                ),
                (
                    server,
                    vec![
                        slot(1_040, (5, 290), (0, 0), 0, 0, DIR_EGRESS, 9),
                        slot(1_010, (0, 0), (5, 640), 0, 0, DIR_INGRESS, 9),
                    ],
                ),
            ],
            ..RawDrain::default()
        };
        let mut asm = Assembler::new(Duration::from_secs(3));
        let out = asm.assemble(raw, clock(SEC), &DropReasons::default(), false);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].src.port, out[0].dst.port), (59327, 45309));
        assert_eq!(
            (
                out[0].packets,
                out[0].bytes,
                out[0].reply_packets,
                out[0].reply_bytes
            ),
            (5, 640, 5, 290)
        );
        assert_eq!(out[0].cgroup_id, Some(7));
    }

    #[test]
    fn reply_drained_before_its_request_is_reoriented_by_the_late_request() {
        // A DNS query's egress was written to the map copy just drained, after the
        // agent read it: the next drain has only the reply, the one after the query.
        let client = key(A, 51000, B, 53, 17);
        let mut asm = Assembler::new(Duration::from_secs(3));
        let reply_only = RawDrain {
            sockets: vec![(
                client,
                vec![slot(1_000_300, (0, 0), (1, 90), 0, 0, DIR_INGRESS, 1)],
            )],
            ..RawDrain::default()
        };
        asm.assemble(reply_only, clock(SEC), &DropReasons::default(), false);
        let late_query = RawDrain {
            sockets: vec![(
                client,
                vec![slot(1_000_000, (1, 60), (0, 0), 0, 0, DIR_EGRESS, 1)],
            )],
            ..RawDrain::default()
        };
        let out = asm.assemble(late_query, clock(2 * SEC), &DropReasons::default(), false);
        assert_eq!((out[0].src.port, out[0].dst.port), (51000, 53));
        assert_eq!((out[0].packets, out[0].reply_packets), (1, 0));
        // From now on the query's side stays the source, even for a reply-first interval.
        let later = RawDrain {
            sockets: vec![(
                client,
                vec![slot(3 * SEC, (0, 0), (1, 90), 0, 0, DIR_INGRESS, 1)],
            )],
            ..RawDrain::default()
        };
        let out = asm.assemble(later, clock(4 * SEC), &DropReasons::default(), false);
        assert_eq!((out[0].src.port, out[0].dst.port), (51000, 53));
        assert_eq!((out[0].packets, out[0].reply_packets), (0, 1));
    }

    #[test]
    fn both_local_ends_in_different_drains_keep_one_orientation() {
        // Drain 1 holds only the server's socket (the request's ingress); drain 2
        // both sockets. The client is the source both times, counted once.
        let client = key(A, 40500, B, 2380, 6);
        let server = mirror(&client);
        let mut asm = Assembler::new(Duration::from_secs(3));
        let first = RawDrain {
            sockets: vec![(
                server,
                vec![slot(1_000, (0, 0), (1, 52), 0, 0, DIR_INGRESS, 9)],
            )],
            ..RawDrain::default()
        };
        let out = asm.assemble(first, clock(SEC), &DropReasons::default(), false);
        assert_eq!((out[0].src.port, out[0].dst.port), (40500, 2380));
        let second = RawDrain {
            sockets: vec![
                (
                    server,
                    vec![slot(2 * SEC, (3, 156), (2, 104), 0, 0, DIR_EGRESS, 9)],
                ),
                (
                    client,
                    vec![slot(2 * SEC + 5, (2, 104), (3, 156), 0, 0, DIR_INGRESS, 7)],
                ),
            ],
            ..RawDrain::default()
        };
        let out = asm.assemble(second, clock(3 * SEC), &DropReasons::default(), false);
        assert_eq!(out.len(), 1, "{out:?}");
        assert_eq!((out[0].src.port, out[0].dst.port), (40500, 2380));
        assert_eq!((out[0].packets, out[0].reply_packets), (2, 3));
        assert_eq!(out[0].cgroup_id, Some(7));
    }

    #[test]
    fn a_local_pair_split_over_two_drains_is_stored_once() {
        // Early drains: the sender's socket (100 datagrams) lands in drain 1,
        // the receiver's, lagging behind, alone in drain 2. Its packets are
        // the sender's, already stored.
        let sender = key(A, 40000, B, 9000, 17);
        let receiver = mirror(&sender);
        let mut asm = Assembler::new(Duration::from_secs(3));
        let first = RawDrain {
            sockets: vec![(
                sender,
                vec![slot(1_000, (100, 4400), (0, 0), 0, 0, DIR_EGRESS, 7)],
            )],
            ..RawDrain::default()
        };
        let out = asm.assemble(first, clock(SEC), &DropReasons::default(), false);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].packets, 100);
        let second = RawDrain {
            sockets: vec![(
                receiver,
                vec![slot(2_000, (0, 0), (100, 4400), 0, 0, DIR_INGRESS, 9)],
            )],
            ..RawDrain::default()
        };
        let out = asm.assemble(second, clock(2 * SEC), &DropReasons::default(), false);
        assert!(out.is_empty(), "counted twice: {out:?}");
        // A remote peer's flow (only ever one end local) is still stored each drain.
        let remote = key(A, 40001, B, 9000, 17);
        for t in 3..5 {
            let drain = RawDrain {
                sockets: vec![(
                    remote,
                    vec![slot(t * SEC, (1, 44), (0, 0), 0, 0, DIR_EGRESS, 7)],
                )],
                ..RawDrain::default()
            };
            let out = asm.assemble(drain, clock(t * SEC), &DropReasons::default(), false);
            assert_eq!(out.len(), 1);
        }
    }

    #[test]
    fn syn_ack_without_the_syn_still_names_the_opener() {
        // The SYN landed in an earlier (already drained) interval unseen; the
        // SYN-ACK coming in says the local socket opened, whatever came first here.
        let k = key(A, 41234, B, 2379, 6);
        let raw = RawDrain {
            sockets: vec![(
                k,
                vec![slot(500, (2, 104), (1, 60), 0, TCP_SYN_ACK, DIR_INGRESS, 1)],
            )],
            ..RawDrain::default()
        };
        let out = Assembler::new(Duration::from_secs(3)).assemble(
            raw,
            clock(SEC),
            &DropReasons::default(),
            false,
        );
        assert_eq!((out[0].src.port, out[0].dst.port), (41234, 2379));
        assert_eq!((out[0].packets, out[0].reply_packets), (2, 1));
    }

    /// Two drains with every kind of entry: local-local pairs, one-ended flows,
    /// unanswered SYNs (held back into the second drain), overflow events, drops
    /// and tc flows with and without a socket entry.
    fn mixed_drains(n: u16) -> [RawDrain; 2] {
        let mut first = RawDrain::default();
        let mut second = RawDrain::default();
        let ip = |i: u16| [10, 1, (i >> 8) as u8, i as u8];
        for i in 0..n {
            let (a, b) = (ip(i), ip(i.wrapping_add(7000)));
            let port = 10_000 + i;
            match i % 6 {
                0 => {
                    // Both ends local: the opener's entry is kept.
                    let c = key(a, port, b, 80, 6);
                    first.sockets.push((
                        c,
                        vec![slot(
                            100 + u64::from(i),
                            (3, 180),
                            (2, 120),
                            TCP_SYN,
                            TCP_SYN_ACK,
                            DIR_EGRESS,
                            5,
                        )],
                    ));
                    first.sockets.push((
                        mirror(&c),
                        vec![slot(
                            110 + u64::from(i),
                            (2, 120),
                            (3, 180),
                            TCP_SYN_ACK,
                            TCP_SYN,
                            DIR_INGRESS,
                            6,
                        )],
                    ));
                    // Later only the server side: counted by the client's already.
                    second.sockets.push((
                        mirror(&c),
                        vec![slot(2 * SEC, (1, 52), (0, 0), 0, 0, DIR_EGRESS, 6)],
                    ));
                }
                1 => first.sockets.push((
                    key(a, port, b, 53, 17),
                    vec![
                        slot(200, (1, 60), (1, 90), 0, 0, DIR_EGRESS, 3),
                        slot(220, (2, 120), (0, 0), 0, 0, DIR_EGRESS, 3),
                    ],
                )),
                2 => {
                    // SYN without answer: held back, answered in the second drain.
                    let c = key(a, port, b, 443, 6);
                    first.sockets.push((
                        c,
                        vec![slot(SEC / 2, (1, 60), (0, 0), TCP_SYN, 0, DIR_EGRESS, 4)],
                    ));
                    if i % 4 == 0 {
                        second.sockets.push((
                            c,
                            vec![slot(
                                SEC + 1,
                                (1, 52),
                                (1, 60),
                                0,
                                TCP_SYN_ACK,
                                DIR_INGRESS,
                                4,
                            )],
                        ));
                    }
                }
                3 => first.drops.push((
                    DropKey {
                        flow: key(a, port, b, 8080, 6),
                        reason: u32::from(i % 3) + 2,
                        _pad: 0,
                    },
                    vec![DropStats {
                        first_ns: 300,
                        last_ns: 400,
                        packets: 2,
                        bytes: 120,
                        tcp_flags: TCP_SYN,
                        _pad: [0; 7],
                    }],
                )),
                4 => {
                    // tc: a forwarded pair, and one a socket also saw.
                    let f = key(a, port, b, 8443, 6);
                    first.tc.push((
                        f,
                        vec![slot(100, (1, 60), (0, 0), TCP_SYN, 0, DIR_EGRESS, 0)],
                    ));
                    first.tc.push((
                        mirror(&f),
                        vec![slot(120, (1, 60), (0, 0), TCP_SYN_ACK, 0, DIR_EGRESS, 0)],
                    ));
                    let seen = key(a, port, b, 9000, 17);
                    first
                        .tc
                        .push((seen, vec![slot(100, (1, 60), (0, 0), 0, 0, DIR_EGRESS, 0)]));
                    first.sockets.push((
                        mirror(&seen),
                        vec![slot(100, (0, 0), (1, 60), 0, 0, DIR_INGRESS, 8)],
                    ));
                }
                _ => {
                    // Ring-buffer overflow for a key also in the map, and one not.
                    let k = key(a, port, b, 5000, 17);
                    first
                        .sockets
                        .push((k, vec![slot(100, (1, 60), (0, 0), 0, 0, DIR_EGRESS, 2)]));
                    for (ek, ts) in [(k, 150), (key(a, port, b, 5001, 17), 160)] {
                        first.overflow.push(OverflowEvent {
                            key: ek,
                            ts_ns: ts,
                            cgroup_id: 2,
                            bytes: 70,
                            packets: 1,
                            dir: DIR_EGRESS,
                            tcp_flags: 0,
                            ..OverflowEvent::default()
                        });
                    }
                }
            }
        }
        [first, second]
    }

    fn sorted(mut flows: Vec<CompactFlow>) -> Vec<String> {
        let mut out: Vec<String> = flows.drain(..).map(|f| format!("{f:?}")).collect();
        out.sort();
        out
    }

    /// A map source that counts the entries taken one by one.
    struct CountingTakes {
        inner: MemorySource<FlowKey, FlowStats>,
        takes: usize,
    }

    impl DrainSource<FlowKey, FlowStats> for CountingTakes {
        type Error = std::convert::Infallible;
        fn take_many(&mut self, n: usize) -> Result<Taken<FlowKey, FlowStats>, Self::Error> {
            self.inner.take_many(n)
        }
        fn take(&mut self, key: &FlowKey) -> Result<Option<Vec<FlowStats>>, Self::Error> {
            self.takes += 1;
            self.inner.take(key)
        }
        fn peek(&self, key: &FlowKey) -> Result<Option<Vec<FlowStats>>, Self::Error> {
            self.inner.peek(key)
        }
    }

    #[test]
    fn mirrors_in_later_batches_meet_in_memory_not_by_a_take_each() {
        // 100 local TCP pairs, every client end before every server end: no pair
        // in one batch of 64 or 16.
        let ip = |i: u16| [10, 2, (i >> 8) as u8, i as u8];
        let clients: Vec<FlowKey> = (0..100)
            .map(|i| key(ip(i), 20_000 + i, ip(500 + i), 80, 6))
            .collect();
        let mut entries = Vec::new();
        for (i, c) in clients.iter().enumerate() {
            let t = 100 + i as u64;
            entries.push((
                *c,
                vec![slot(
                    t,
                    (3, 180),
                    (2, 120),
                    TCP_SYN,
                    TCP_SYN_ACK,
                    DIR_EGRESS,
                    5,
                )],
            ));
        }
        for (i, c) in clients.iter().enumerate() {
            let t = 110 + i as u64;
            entries.push((
                mirror(c),
                vec![slot(
                    t,
                    (2, 120),
                    (3, 180),
                    TCP_SYN_ACK,
                    TCP_SYN,
                    DIR_INGRESS,
                    6,
                )],
            ));
        }
        let reasons = DropReasons::default();
        let whole = Assembler::new(Duration::from_secs(3)).assemble_chunked(
            RawDrain {
                sockets: entries.clone(),
                ..RawDrain::default()
            },
            clock(SEC),
            &reasons,
            false,
            usize::MAX,
        );
        assert_eq!(whole.len(), 100);
        // Chunks of 64 (up to 128 waiting): every pair meets in memory. Chunks of
        // 16 (32 waiting): the rest are taken one by one, with the same result.
        for (chunk, takes) in [(64, 0..=0), (16, 1..=99)] {
            let mut sockets = CountingTakes {
                inner: MemorySource::from(entries.clone()),
                takes: 0,
            };
            let mut tc = MemorySource::from(Vec::new());
            let mut drops = MemorySource::from(Vec::new());
            let sources = Sources {
                sockets: &mut sockets,
                tc: &mut tc,
                drops: &mut drops,
            };
            let out = match Assembler::new(Duration::from_secs(3)).drain(
                sources,
                &[],
                clock(SEC),
                &reasons,
                false,
                chunk,
            ) {
                Ok(out) => out,
                Err(never) => match never {},
            };
            assert_eq!(out.socket_entries, 200, "chunk {chunk}");
            assert!(
                takes.contains(&sockets.takes),
                "chunk {chunk}: {} takes",
                sockets.takes
            );
            assert_eq!(sorted(out.flows), sorted(whole.clone()), "chunk {chunk}");
        }
    }

    #[test]
    fn draining_in_chunks_assembles_exactly_what_one_batch_does() {
        let mut reasons = DropReasons::default();
        reasons.not_specified = 2;
        for chunk in [1, 3, 64] {
            let mut whole = Assembler::new(Duration::from_secs(3));
            let mut chunked = Assembler::new(Duration::from_secs(3));
            let mut totals = [(0u64, 0u64); 2];
            for (i, raw) in mixed_drains(600).into_iter().enumerate() {
                let now = clock((i as u64 + 1) * 2 * SEC);
                let a = whole.assemble_chunked(raw.clone(), now, &reasons, false, usize::MAX);
                let b = chunked.assemble_chunked(raw, now, &reasons, false, chunk);
                assert!(!a.is_empty());
                for (t, flows) in totals.iter_mut().zip([&a, &b]) {
                    for f in flows {
                        t.0 += f.packets + f.reply_packets;
                        t.1 += f.bytes + f.reply_bytes;
                    }
                }
                assert_eq!(a.len(), b.len(), "chunk {chunk}, drain {i}");
                assert_eq!(sorted(a), sorted(b), "chunk {chunk}, drain {i}");
                assert_eq!(whole.pending_len(), chunked.pending_len());
            }
            assert_eq!(totals[0], totals[1]);
            // Nothing left behind: a final drain flushes the same held-back flows.
            let now = clock(10 * SEC);
            let a = whole.assemble_chunked(RawDrain::default(), now, &reasons, true, usize::MAX);
            let b = chunked.assemble_chunked(RawDrain::default(), now, &reasons, true, chunk);
            assert_eq!(sorted(a), sorted(b));
            assert_eq!(chunked.pending_len(), 0);
        }
    }
}
