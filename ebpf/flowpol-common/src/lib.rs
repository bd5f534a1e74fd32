//! Types shared by the kernel programs and the agent. `#[repr(C)]`, no pointers,
//! explicit padding: the byte layout is the contract between both sides.
#![no_std]

/// Address family stored in [`FlowKey::family`].
pub const FAMILY_IPV4: u8 = 4;
pub const FAMILY_IPV6: u8 = 6;

/// A flow as seen by one observation point.
///
/// * Socket flows (cgroup_skb): `local_*` is the socket's own address/port,
///   `remote_*` the peer's, whatever the packet direction.
/// * Drops (kfree_skb): `local_*` is the packet's source, `remote_*` its destination.
///
/// IPv4 addresses occupy the first 4 bytes of the 16-byte arrays, the rest is zero.
/// ICMP/ICMPv6 put the type in `local_port` and the code in `remote_port`
/// (not swapped by direction: an echo request and its reply are two flows).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct FlowKey {
    pub local_addr: [u8; 16],
    pub remote_addr: [u8; 16],
    pub local_port: u16,
    pub remote_port: u16,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, 132 SCTP, ...).
    pub protocol: u8,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    pub _pad: [u8; 2],
}

/// TCP flag bits kept per direction in [`FlowStats`]: same bit values as
/// `flowpol_recommender::flow::TcpFlags`.
pub const TCP_SYN: u8 = 1 << 0;
pub const TCP_SYN_ACK: u8 = 1 << 1;
pub const TCP_FIN: u8 = 1 << 2;
pub const TCP_RST: u8 = 1 << 3;

/// Which way the first packet of a per-CPU slot went.
pub const DIR_EGRESS: u8 = 1;
pub const DIR_INGRESS: u8 = 2;

/// Per-CPU counters of one socket flow. A slot with `first_ns == 0` was never
/// written on that CPU (the kernel zeroes the other CPUs' slots on insert).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct FlowStats {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) of the first and last packet.
    pub first_ns: u64,
    pub last_ns: u64,
    /// Packets/bytes the local socket sent (egress).
    pub tx_packets: u64,
    pub tx_bytes: u64,
    /// Packets/bytes the local socket received (ingress).
    pub rx_packets: u64,
    pub rx_bytes: u64,
    /// cgroup v2 id of the socket (`bpf_skb_cgroup_id`).
    pub cgroup_id: u64,
    /// TCP_* bits seen on packets the socket sent / received.
    pub tx_flags: u8,
    pub rx_flags: u8,
    /// DIR_* of this slot's first packet.
    pub first_dir: u8,
    pub _pad: u8,
    /// TCP connections opened: SYN packets (without ACK) the socket sent or
    /// received, retransmissions included.
    pub connections: u32,
}

/// Key of the drop map: the dropped packet's tuple (source in `local_*`) and reason.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct DropKey {
    pub flow: FlowKey,
    /// `enum skb_drop_reason` value of the running kernel.
    pub reason: u32,
    pub _pad: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct DropStats {
    pub first_ns: u64,
    pub last_ns: u64,
    pub packets: u64,
    /// IP-level bytes (`skb->len` from the network header on).
    pub bytes: u64,
    /// TCP_* bits of the dropped packets.
    pub tcp_flags: u8,
    pub _pad: [u8; 7],
}

/// One packet that could not be aggregated because the flow map was full:
/// sent through the ring buffer so the agent can still count it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct OverflowEvent {
    pub key: FlowKey,
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub bytes: u32,
    pub packets: u16,
    /// DIR_EGRESS or DIR_INGRESS.
    pub dir: u8,
    pub tcp_flags: u8,
    /// The flow map copy (`CONTROL[0]`) the packet was meant for: the event
    /// belongs to that copy's drain. The ring buffer is not double-buffered,
    /// so a drain also reads events written after its flip; those wait for
    /// the next drain, with the map entries written beside them.
    pub copy: u8,
    pub _pad: [u8; 7],
}

/// Indexes of the per-CPU `COUNTERS` array: everything lost or skipped.
pub const CNT_PACKETS: u32 = 0;
/// Packet neither IPv4 nor IPv6, or IP header unreadable.
pub const CNT_UNPARSABLE: u32 = 1;
/// IP header fine, transport header truncated: counted with ports 0.
pub const CNT_TRUNCATED_L4: u32 = 2;
/// Flow map full: the packet went to the ring buffer instead.
pub const CNT_FLOW_MAP_FULL: u32 = 3;
/// Ring buffer full too: the packet is lost.
pub const CNT_RINGBUF_FULL: u32 = 4;
pub const CNT_DROP_MAP_FULL: u32 = 5;
/// kfree_skb with a readable reason but no readable IP header.
pub const CNT_DROP_UNPARSABLE: u32 = 6;
pub const CNT_DROPS_SEEN: u32 = 7;
/// IPv6 packet whose extension-header chain was too long to follow.
pub const CNT_IPV6_EXT_LIMIT: u32 = 8;
/// kfree_skb with a routine reason (retransmitted data, a closing socket's
/// queue, a frame for another host): counted, not recorded as a drop.
pub const CNT_DROPS_ROUTINE: u32 = 9;
/// Entries inserted into a flow map (socket or tc): the agent compares it with
/// the count at the last flip to drain early when the active copy fills.
pub const CNT_FLOW_INSERTS: u32 = 10;
/// kfree_skb of a packet outside the network namespaces the agent was told to
/// keep drops of (`flowpol agent --drop-netns`), or whose namespace could not
/// be read: counted, not recorded.
pub const CNT_DROPS_OTHER_NETNS: u32 = 11;
pub const COUNTER_COUNT: u32 = 12;

/// Reasons the kernel frees packets for in normal operation: a duplicate of
/// data already received (retransmission), the queue of a closing socket, a
/// frame meant for another host on a shared segment.
pub const DEFAULT_ROUTINE_DROP_REASONS: &[&str] = &[
    "TCP_OLD_DATA",
    "TCP_OLD_SEQUENCE",
    "TCP_OLD_ACK",
    "QUEUE_PURGE",
    "SOCKET_CLOSE",
    "TCP_CLOSE",
    "OTHERHOST",
    "UNICAST_IN_L2_MULTICAST",
    "IPV6_NDISC_NS_OTHERHOST",
    "DUP_FRAG",
];

/// Words of the routine drop-reason bitmap: one bit per reason below 256.
pub const ROUTINE_REASON_WORDS: usize = 8;

/// Names of the counters, in index order, as exported to user space.
pub const COUNTER_NAMES: [&str; COUNTER_COUNT as usize] = [
    "packets",
    "unparsable",
    "truncated_l4",
    "flow_map_full",
    "ringbuf_full",
    "drop_map_full",
    "drop_unparsable",
    "drops_seen",
    "ipv6_ext_limit",
    "drops_routine",
    "flow_inserts",
    "drops_other_netns",
];

/// An address and port: the key of `SERVER_PORTS` (TCP servers learned from
/// SYNs) and, with port 0, of `HOST_ADDRS`. IPv4 in the first 4 bytes of `addr`.
#[repr(C, align(4))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct EndpointKey {
    pub addr: [u8; 16],
    pub port: u16,
    /// [`FAMILY_IPV4`] or [`FAMILY_IPV6`].
    pub family: u8,
    pub _pad: u8,
}

/// Entries of the `DROP_NETNS` map: network namespaces whose drops are kept.
pub const DROP_NETNS_ENTRIES: u32 = 4096;

/// Entries of the `HOST_ADDRS` map (the node's addresses; more are not kept).
pub const HOST_ADDR_ENTRIES: u32 = 1024;

/// Index of the single `u32` in the `CONTROL` array map: which of the two flow
/// maps (0 or 1) the programs write to. The agent flips it, then drains the other.
pub const CONTROL_ACTIVE: u32 = 0;

#[cfg(feature = "user")]
mod user {
    use super::*;
    // SAFETY: all are repr(C), Copy, with explicit padding and no pointers.
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for FlowStats {}
    unsafe impl aya::Pod for DropKey {}
    unsafe impl aya::Pod for DropStats {}
    unsafe impl aya::Pod for OverflowEvent {}
    unsafe impl aya::Pod for EndpointKey {}
}
