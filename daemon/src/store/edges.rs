//! Workload-level edges of a time window, aggregated while the flows rows stream past.
//!
//! `recommend`, `audit`, `drops` and `diff` need who talked to whom on which port, not every
//! connection. Grouping every row by its full flow key in SQL sorts all of them (40 s for
//! 10 M rows) and hands back one record per connection; here the rows of the window are
//! stepped once through SQLite's C API and folded into a hash map keyed by integers: both
//! ends' peers (an identity naming a pod counts as the first identity naming the same
//! workload, as the recommender's `Resolver::peer` reads it), destination port, protocol,
//! verdict and drop reason, plus the address of an end only where the recommender looks at
//! it (an end whose identity names no pod, or an address the caller asks to keep: node
//! addresses, which make a hostNetwork pod a node peer), and the ICMP type. Memory follows
//! edges, plus a 64-bit fingerprint per distinct flow to count them. The identity fields
//! of a pod end are those of one of the workload's pods: what differs between its pods
//! (pod name, rollout labels) is one pod's.
//!
//! The fold runs on up to [`MAX_WORKERS`] threads when the table is large (at least
//! [`PARALLEL_MIN_ROWS`] ids): each opens its own read-only connection, steps every row of
//! the window that belong to its flows (a function of the flow key's ports and identities,
//! which SQLite evaluates), so each flow's rows meet in one worker and flow counts add up when
//! the workers' edges are merged. Each worker reads its own snapshot: while an agent is
//! writing, a flow's newest rows may be seen by one worker's snapshot and not by another,
//! as they would be by a later single read. When such a connection cannot be opened (an
//! immutable read of a WAL file without its -shm), the rows are folded on one thread on
//! the store's own connection.
use std::collections::{HashMap, HashSet};
use std::ffi::c_int;
use std::hash::{BuildHasher, Hash};
use std::net::IpAddr;
use std::ptr::NonNull;

use chrono::{DateTime, Utc};
use flowpol_recommender::flow::{
    Endpoint, EndpointKind, FlowRecord, Protocol, TcpFlags, Verdict, WorkloadRef,
    aggregates_connections,
};
use libsqlite3_sys as ffi;
use sqlx::Row;

use super::raw::{RawError, Stmt, last_error};
use super::{Store, StoreError, codec, raw_error, write_error};

/// One edge: a record standing for `flows` merged flows (a row of a client's aggregated
/// TCP connections counts each connection as a flow). Counters are summed over them,
/// `first_seen` is the earliest, `last_seen` the latest, TCP flags OR-ed. An end's address
/// is one of the edge's (the first row's) when the address was not part of the key; the
/// source port is 0 except for ICMP (the type); `node` and `cgroup_id` are set only when
/// every row agreed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edge {
    pub record: FlowRecord,
    pub flows: u64,
}

/// Which rows, and which addresses to keep apart even at named ends.
#[derive(Debug, Clone, Default)]
pub struct EdgeQuery {
    /// Rows active at or after this instant (`last_seen >= since`), as in `FlowQuery`.
    pub since: Option<DateTime<Utc>>,
    /// Addresses kept in the key even when the end's identity names a pod (node addresses:
    /// a pod seen at one is hostNetwork, and policies select it by that address).
    pub keep_addresses: HashSet<IpAddr>,
}

/// Maps and sets touched once per row: foldhash, seeded per process (SipHash was half the
/// time of a 10 M-row query).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;
type FastSet<K> = HashSet<K, foldhash::fast::RandomState>;

/// At most this many fold threads (more cores than that gain little: every thread steps
/// every row).
pub const MAX_WORKERS: usize = 4;

/// Below this many flow ids (`max(id) - min(id)`) one thread folds on the store's own
/// connection: opening more connections costs more than it saves.
pub const PARALLEL_MIN_ROWS: i64 = 200_000;

/// Columns read per row, in this order.
const EDGE_ROW_SQL: &str = "SELECT f.id, f.src_identity, f.dst_identity, f.protocol, f.src_ip, \
    f.src_port, f.dst_ip, f.dst_port, f.verdict, f.drop_reason, f.packets, f.bytes, \
    f.reply_packets, f.reply_bytes, f.first_seen_ns, f.last_seen_ns, f.tcp_flags, f.cgroup_id, \
    f.node, f.connections FROM flows f";

/// The same window as `FlowQuery::since`: the drains' id range, then the row's own time.
const EDGE_SINCE_SQL: &str = " WHERE f.id >= (SELECT COALESCE(MIN(first_flow_id), \
    9223372036854775807) FROM drains WHERE max_last_seen_ns >= ?1) AND f.last_seen_ns >= ?1";

/// A function of part of a row's flow key (ports, identities), never negative: the rows
/// whose value modulo the number of fold threads is `w` are thread `w`'s. Evaluated by
/// SQLite, so a thread pays for decoding only the columns of its own rows.
const EDGE_SHARE_SQL: &str = "(f.src_port * 31 + f.dst_port * 7 + \
    IFNULL(f.src_identity, 0) * 13 + IFNULL(f.dst_identity, 0) * 3)";

/// An address as stored (4 or 16 bytes); empty when left out of a key.
type Addr = codec::IpBytes;

/// The address of an edge end; 0.0.0.0 when its key left the address out.
fn addr_ip(addr: &Addr) -> IpAddr {
    codec::ip_from_db(addr).unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct EdgeKey {
    /// Identity ids, -1 when unresolved (NULL).
    src_identity: i64,
    dst_identity: i64,
    protocol: u8,
    dst_port: u16,
    /// ICMP type (the stored source port of ICMP rows), else 0.
    icmp_type: u16,
    verdict: u32,
    reason: u32,
    src_addr: Addr,
    dst_addr: Addr,
}

struct Acc {
    min_id: i64,
    first_seen: i64,
    last_seen: i64,
    packets: u64,
    bytes: u64,
    reply_packets: u64,
    reply_bytes: u64,
    tcp_flags: u8,
    flows: u64,
    connections: u64,
    src_addr: Addr,
    dst_addr: Addr,
    /// The first row's, until a row disagrees (then None).
    cgroup_id: Option<Option<i64>>,
    node: Option<u32>,
}

/// Small text values (verdicts, drop reasons, node names) as integers; 0 is NULL.
#[derive(Default)]
struct Interner {
    ids: FastMap<Box<[u8]>, u32>,
    texts: Vec<String>,
}

impl Interner {
    fn id(&mut self, text: Option<&[u8]>) -> u32 {
        let Some(text) = text else { return 0 };
        if let Some(&id) = self.ids.get(text) {
            return id;
        }
        self.texts.push(String::from_utf8_lossy(text).into_owned());
        let id = self.texts.len() as u32;
        self.ids.insert(text.into(), id);
        id
    }

    fn text(&self, id: u32) -> Option<&str> {
        (id > 0).then(|| self.texts[id as usize - 1].as_str())
    }
}

/// An identity row, decoded as `query_flows_merged` decodes it.
struct Identity {
    kind: Option<EndpointKind>,
    namespace: Option<String>,
    pod: Option<String>,
    workload: Option<WorkloadRef>,
    labels: std::collections::BTreeMap<String, String>,
    selector: std::collections::BTreeMap<String, String>,
    service: Option<String>,
    service_port: Option<u16>,
}

impl Identity {
    /// The peer it names, when it names a pod: (namespace, workload kind, workload name),
    /// or (namespace, "Pod", pod) without a workload, as `observe::Resolver::peer` reads it.
    /// The recommender then never looks at the address, except to tell a node address (see
    /// `EdgeQuery::keep_addresses`).
    fn peer(&self) -> Option<(&str, &str, &str)> {
        let ns = self.namespace.as_deref()?;
        match (&self.workload, &self.pod) {
            (Some(w), _) => Some((ns, w.kind.as_str(), w.name.as_str())),
            (None, Some(pod)) => Some((ns, "Pod", pod.as_str())),
            (None, None) => None,
        }
    }

    fn endpoint(&self, ip: IpAddr, port: u16) -> Endpoint {
        let mut e = Endpoint::new(ip, port);
        e.kind = self.kind;
        e.namespace = self.namespace.clone();
        e.pod = self.pod.clone();
        e.workload = self.workload.clone();
        e.labels = self.labels.clone();
        e.selector = self.selector.clone();
        e.service = self.service.clone();
        e.service_port = self.service_port;
        e
    }
}

/// A row read through the C API; borrowed column values live until the next step.
struct StepRow<'s> {
    stmt: &'s Stmt,
}

impl StepRow<'_> {
    fn is_null(&self, i: c_int) -> bool {
        // SAFETY: the statement is live and positioned on a row (SQLITE_ROW).
        unsafe { ffi::sqlite3_column_type(self.stmt.stmt.as_ptr(), i) == ffi::SQLITE_NULL }
    }

    fn int(&self, i: c_int) -> i64 {
        // SAFETY: as in `is_null`.
        unsafe { ffi::sqlite3_column_int64(self.stmt.stmt.as_ptr(), i) }
    }

    fn opt_int(&self, i: c_int) -> Option<i64> {
        (!self.is_null(i)).then(|| self.int(i))
    }

    /// Blob or text bytes, None when NULL.
    fn bytes(&self, i: c_int, text: bool) -> Option<&[u8]> {
        if self.is_null(i) {
            return None;
        }
        // SAFETY: as in `is_null`; the pointer is valid for `column_bytes` bytes until the
        // next step, reset or finalize, all of which need `&mut Stmt` or the statement's
        // drop, which this borrow of the statement excludes. The pointer is fetched before
        // the length, as SQLite's documentation requires.
        unsafe {
            let s = self.stmt.stmt.as_ptr();
            let ptr: *const u8 = if text {
                ffi::sqlite3_column_text(s, i).cast()
            } else {
                ffi::sqlite3_column_blob(s, i).cast()
            };
            let len = ffi::sqlite3_column_bytes(s, i);
            if ptr.is_null() || len <= 0 {
                Some(&[])
            } else {
                Some(std::slice::from_raw_parts(ptr, len as usize))
            }
        }
    }
}

/// What every fold thread reads and none changes.
struct FoldContext {
    /// Identity ids that name a pod, to the first id naming the same workload (or bare pod):
    /// the recommender's peer, so an edge is per workload pair, not per pod pair.
    peers: FastMap<i64, i64>,
    keep_addresses: FastSet<Addr>,
    /// Fingerprints flow keys: one seed for all workers (not needed for correctness, since
    /// a flow's rows meet in one worker, but it keeps the collision odds those of one set).
    fingerprint: foldhash::quality::RandomState,
}

/// The edges one fold produced; verdict, reason and node ids are `strings`' own.
struct Folded {
    strings: Interner,
    edges: FastMap<EdgeKey, Acc>,
}

/// Folds the rows of `stmt` (ready to step) into edges.
struct Folder<'c> {
    context: &'c FoldContext,
    strings: Interner,
    edges: FastMap<EdgeKey, Acc>,
    /// 64-bit fingerprints of the distinct flow keys seen (to count flows per edge): with
    /// 10 M distinct flows the chance that two collide (one flow short) is about 3 in 10^6.
    flows_seen: FastSet<u64>,
}

impl<'c> Folder<'c> {
    fn new(context: &'c FoldContext) -> Self {
        Folder {
            context,
            strings: Interner::default(),
            edges: FastMap::default(),
            flows_seen: FastSet::default(),
        }
    }

    fn into_folded(self) -> Folded {
        Folded {
            strings: self.strings,
            edges: self.edges,
        }
    }

    /// An end as the edge key holds it: its peer's identity, and its address unless the
    /// identity names a pod (kept at node addresses).
    fn end(&self, identity: i64, addr: Addr) -> (i64, Addr) {
        match self.context.peers.get(&identity) {
            Some(&peer) if !self.context.keep_addresses.contains(&addr) => (peer, Addr::default()),
            Some(&peer) => (peer, addr),
            None => (identity, addr),
        }
    }

    /// Reads one row; `Err(detail)` names what is wrong with it.
    fn row(&mut self, r: &StepRow<'_>) -> Result<(), String> {
        let id = r.int(0);
        let src_identity = r.opt_int(1).unwrap_or(-1);
        let dst_identity = r.opt_int(2).unwrap_or(-1);
        let protocol = r.int(3);
        let protocol =
            u8::try_from(protocol).map_err(|_| format!("protocol {protocol} is out of range"))?;
        let port = |i: c_int| {
            let p = r.int(i);
            u16::try_from(p).map_err(|_| format!("port {p} is out of range"))
        };
        let addr = |i: c_int| {
            let b = r.bytes(i, false).unwrap_or(&[]);
            Addr::from_db(b)
                .ok_or_else(|| format!("address of {} bytes is neither IPv4 nor IPv6", b.len()))
        };
        let src_addr = addr(4)?;
        let src_port = port(5)?;
        let dst_addr = addr(6)?;
        let dst_port = port(7)?;
        let verdict = self.strings.id(r.bytes(8, true));
        let reason = self.strings.id(r.bytes(9, true));
        let flags = r.int(16);
        let flags =
            u8::try_from(flags).map_err(|_| format!("tcp_flags {flags} is out of range"))?;
        let cgroup_id = r.opt_int(17);
        let node = self.strings.id(r.bytes(18, true));

        // The flow this row is an interval of: query_flows_merged's key.
        let new_flow = self.flows_seen.insert(self.context.fingerprint.hash_one((
            (
                protocol, src_addr, src_port, dst_addr, dst_port, verdict, reason,
            ),
            (cgroup_id, node, src_identity, dst_identity),
        )));

        let icmp = matches!(
            Protocol::from_number(protocol),
            Protocol::Icmp | Protocol::Icmpv6
        );
        let (src_peer, src_key_addr) = self.end(src_identity, src_addr);
        let (dst_peer, dst_key_addr) = self.end(dst_identity, dst_addr);
        let key = EdgeKey {
            src_identity: src_peer,
            dst_identity: dst_peer,
            protocol,
            dst_port,
            icmp_type: if icmp { src_port } else { 0 },
            verdict,
            reason,
            src_addr: src_key_addr,
            dst_addr: dst_key_addr,
        };
        let first_seen = r.int(14);
        let last_seen = r.int(15);
        let counter = |i: c_int| codec::counter_from_db(r.int(i));
        let acc = self.edges.entry(key).or_insert_with(|| Acc {
            min_id: id,
            first_seen,
            last_seen,
            packets: 0,
            bytes: 0,
            reply_packets: 0,
            reply_bytes: 0,
            tcp_flags: 0,
            flows: 0,
            connections: 0,
            src_addr,
            dst_addr,
            cgroup_id: Some(cgroup_id),
            node: Some(node),
        });
        acc.min_id = acc.min_id.min(id);
        acc.first_seen = acc.first_seen.min(first_seen);
        acc.last_seen = acc.last_seen.max(last_seen);
        acc.packets = acc.packets.saturating_add(counter(10));
        acc.bytes = acc.bytes.saturating_add(counter(11));
        acc.reply_packets = acc.reply_packets.saturating_add(counter(12));
        acc.reply_bytes = acc.reply_bytes.saturating_add(counter(13));
        acc.tcp_flags |= flags;
        let connections = counter(19);
        // A row of a client's aggregated connections stands for as many flows
        // as connections it counts (`FlowRecord::flows`).
        acc.flows += if aggregates_connections(Protocol::from_number(protocol), src_port) {
            connections.max(u64::from(new_flow))
        } else {
            u64::from(new_flow)
        };
        acc.connections = acc.connections.saturating_add(connections);
        if acc.cgroup_id.is_some_and(|c| c != cgroup_id) {
            acc.cgroup_id = None;
        }
        if acc.node.is_some_and(|n| n != node) {
            acc.node = None;
        }
        Ok(())
    }
}

/// Each identity that names a pod, to the smallest id naming the same peer: namespace and
/// workload, or namespace and pod when there is no workload (as `observe::Resolver::peer`).
fn peer_identities(identities: &HashMap<i64, Identity>) -> FastMap<i64, i64> {
    let mut first: HashMap<(&str, &str, &str), i64> = HashMap::new();
    for (&id, i) in identities {
        if let Some(peer) = i.peer() {
            let e = first.entry(peer).or_insert(id);
            *e = (*e).min(id);
        }
    }
    identities
        .iter()
        .filter_map(|(&id, i)| Some((id, first[&i.peer()?])))
        .collect()
}

/// Why a fold stopped.
enum FoldError {
    /// A row that does not decode: its id and what is wrong.
    BadRow { id: i64, detail: String },
    /// SQLite failed; `op` says at what.
    Sqlite { op: &'static str, err: RawError },
}

/// Steps every row of `stmt` and folds it.
fn fold_rows(stmt: &Stmt, folder: &mut Folder<'_>) -> Result<(), FoldError> {
    loop {
        // SAFETY: the statement is live and borrowed for the whole loop; its connection is
        // used by this thread only (the caller's contract of `Stmt::prepare`).
        let rc = unsafe { ffi::sqlite3_step(stmt.stmt.as_ptr()) };
        match rc {
            ffi::SQLITE_ROW => {
                let row = StepRow { stmt };
                folder.row(&row).map_err(|detail| FoldError::BadRow {
                    id: row.int(0),
                    detail,
                })?;
            }
            ffi::SQLITE_DONE => return Ok(()),
            _ => {
                return Err(FoldError::Sqlite {
                    op: "reading edges",
                    err: last_error(stmt.db),
                });
            }
        }
    }
}

/// Prepares the edge query on `db`, `since` bound; with `share = (worker, workers)`, only
/// the rows of the flows that fall to `worker` (see `EDGE_SHARE_SQL`).
///
/// # Safety
/// As `Stmt::prepare`: `db` is live and used by this thread only until the statement drops.
unsafe fn prepare_edge_query(
    db: NonNull<ffi::sqlite3>,
    since: Option<i64>,
    share: Option<(usize, usize)>,
) -> Result<Stmt, RawError> {
    let mut sql = match since {
        Some(_) => format!("{EDGE_ROW_SQL}{EDGE_SINCE_SQL}"),
        None => EDGE_ROW_SQL.to_string(),
    };
    if let Some((worker, workers)) = share {
        let join = if since.is_some() { " AND " } else { " WHERE " };
        sql.push_str(join);
        sql.push_str(&format!("{EDGE_SHARE_SQL} % {workers} = {worker}"));
    }
    // SAFETY: the caller's contract.
    let mut stmt = unsafe { Stmt::prepare(db, &sql) }?;
    if let Some(since) = since {
        stmt.int(1, since)?;
    }
    Ok(stmt)
}

/// A read-only connection of one fold thread, closed on drop (after the statements on it,
/// which are declared after it and so dropped first).
struct ReadConnection {
    db: NonNull<ffi::sqlite3>,
}

impl ReadConnection {
    fn open(path: &std::path::Path) -> Result<Self, RawError> {
        // The path's own bytes on Unix; UTF-8 (what SQLite expects) on Windows.
        let c_path =
            std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| RawError {
                code: ffi::SQLITE_CANTOPEN,
                message: "the path holds a NUL byte".to_string(),
            })?;
        let mut db = std::ptr::null_mut();
        // SAFETY: c_path is NUL-terminated and outlives the call; the out-pointer is a
        // valid local; a null VFS name picks the default VFS.
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                c_path.as_ptr(),
                &mut db,
                ffi::SQLITE_OPEN_READONLY | ffi::SQLITE_OPEN_NOMUTEX,
                std::ptr::null(),
            )
        };
        let Some(db) = NonNull::new(db) else {
            return Err(RawError {
                code: ffi::SQLITE_NOMEM,
                message: "SQLite could not allocate a connection".to_string(),
            });
        };
        // Owned from here on: closed on every path below by the drop.
        let conn = ReadConnection { db };
        if rc != ffi::SQLITE_OK {
            return Err(last_error(conn.db));
        }
        // SAFETY: db is live and used by this thread only. A read waits for a writer's
        // WAL recovery or checkpoint rather than failing at once.
        unsafe { ffi::sqlite3_busy_timeout(conn.db.as_ptr(), 5_000) };
        Ok(conn)
    }
}

impl Drop for ReadConnection {
    fn drop(&mut self) {
        // SAFETY: db came from sqlite3_open_v2 and is closed once, here, after every
        // statement on it was finalized (declared after it, they drop first).
        unsafe { ffi::sqlite3_close(self.db.as_ptr()) };
    }
}

/// One fold thread: its own connection, every row, its share of the flows. `Ok(None)` when
/// the connection or the statement cannot be had (the caller then folds on one thread).
fn fold_worker(
    path: &std::path::Path,
    since: Option<i64>,
    context: &FoldContext,
    worker: usize,
    workers: usize,
) -> Result<Option<Folded>, FoldError> {
    let Ok(conn) = ReadConnection::open(path) else {
        return Ok(None);
    };
    // SAFETY: conn was opened by this thread, which alone uses it; it is declared before
    // stmt, so it outlives it.
    let Ok(stmt) = (unsafe { prepare_edge_query(conn.db, since, Some((worker, workers))) }) else {
        return Ok(None);
    };
    let mut folder = Folder::new(context);
    fold_rows(&stmt, &mut folder)?;
    Ok(Some(folder.into_folded()))
}

/// Adds `from`'s edges to `into`'s; their flows are disjoint (each flow's rows were folded
/// by one worker), so flow counts add up. Text ids are translated through the text.
fn merge_folded(into: &mut Folded, from: Folded) {
    let remap = |into: &mut Interner, id: u32| into.id(from.strings.text(id).map(str::as_bytes));
    for (mut key, mut acc) in from.edges {
        key.verdict = remap(&mut into.strings, key.verdict);
        key.reason = remap(&mut into.strings, key.reason);
        acc.node = acc.node.map(|n| remap(&mut into.strings, n));
        match into.edges.entry(key) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(acc);
            }
            std::collections::hash_map::Entry::Occupied(mut o) => o.get_mut().merge(acc),
        }
    }
}

impl Acc {
    /// Folds another worker's accumulator of the same edge into this one, as if its rows
    /// had been folded here: the end addresses are the earliest row's.
    fn merge(&mut self, other: Acc) {
        if other.min_id < self.min_id {
            self.src_addr = other.src_addr;
            self.dst_addr = other.dst_addr;
        }
        self.min_id = self.min_id.min(other.min_id);
        self.first_seen = self.first_seen.min(other.first_seen);
        self.last_seen = self.last_seen.max(other.last_seen);
        self.packets = self.packets.saturating_add(other.packets);
        self.bytes = self.bytes.saturating_add(other.bytes);
        self.reply_packets = self.reply_packets.saturating_add(other.reply_packets);
        self.reply_bytes = self.reply_bytes.saturating_add(other.reply_bytes);
        self.tcp_flags |= other.tcp_flags;
        self.flows += other.flows;
        self.connections = self.connections.saturating_add(other.connections);
        if self.cgroup_id != other.cgroup_id {
            self.cgroup_id = None;
        }
        if self.node != other.node {
            self.node = None;
        }
    }
}

impl Store {
    /// The edges of the window (see the module docs): one record per edge with the number
    /// of flows it merged, oldest first. Each fold thread scans the window and decodes its
    /// own flows' rows; nothing is sorted but the edges.
    pub async fn query_edges(&self, q: &EdgeQuery) -> Result<Vec<Edge>, StoreError> {
        let workers = self.edge_workers().await?;
        Ok(self.query_edges_on(q, workers).await?.0)
    }

    /// `query_edges` with `workers` fold threads (at least 1), whatever the table's size,
    /// and how many threads folded (1 after a fall back to the store's connection). For
    /// tests, which compare folds on several threads with the fold on one.
    #[doc(hidden)]
    pub async fn query_edges_on(
        &self,
        q: &EdgeQuery,
        workers: usize,
    ) -> Result<(Vec<Edge>, usize), StoreError> {
        let identities = self.identity_rows().await?;
        let context = FoldContext {
            peers: peer_identities(&identities),
            keep_addresses: q.keep_addresses.iter().map(codec::ip_to_db).collect(),
            fingerprint: Default::default(),
        };
        let since = q.since.as_ref().map(codec::time_to_ns);
        let workers = workers.max(1);
        if workers > 1 {
            let path = self.path();
            let context = &context;
            // The threads block this task while they run, as the one-thread fold does.
            let results: Vec<Result<Option<Folded>, FoldError>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..workers)
                    .map(|w| s.spawn(move || fold_worker(path, since, context, w, workers)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join()
                            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                    })
                    .collect()
            });
            // The lowest bad row, as one thread would meet it first.
            let mut first_error: Option<FoldError> = None;
            let mut parts = Vec::with_capacity(workers);
            for r in results {
                match r {
                    Ok(part) => parts.push(part),
                    Err(e) => {
                        let earlier = match (&first_error, &e) {
                            (None, _) => true,
                            (
                                Some(FoldError::BadRow { id: a, .. }),
                                FoldError::BadRow { id: b, .. },
                            ) => b < a,
                            _ => false,
                        };
                        if earlier {
                            first_error = Some(e);
                        }
                    }
                }
            }
            if let Some(e) = first_error {
                return Err(self.fold_error(e));
            }
            if parts.iter().all(Option::is_some) {
                let mut parts = parts.into_iter().flatten();
                let mut folded = parts.next().expect("at least one worker");
                for part in parts {
                    merge_folded(&mut folded, part);
                }
                return Ok((self.build_edges(folded, &identities)?, workers));
            }
            // A worker could not open its own connection: fold on the store's.
        }
        let folded = self.fold_on_store_connection(&context, since).await?;
        Ok((self.build_edges(folded, &identities)?, 1))
    }

    /// How many fold threads: the cores (at most `MAX_WORKERS`), 1 for a small table.
    async fn edge_workers(&self) -> Result<usize, StoreError> {
        let span: Option<i64> = sqlx::query_scalar("SELECT MAX(id) - MIN(id) FROM flows")
            .fetch_one(self.pool())
            .await
            .map_err(|e| write_error(self.path(), "counting flows", e))?;
        if span.unwrap_or(0) < PARALLEL_MIN_ROWS {
            return Ok(1);
        }
        Ok(std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .clamp(1, MAX_WORKERS))
    }

    /// The one-thread fold, on a connection of the store's pool.
    async fn fold_on_store_connection(
        &self,
        context: &FoldContext,
        since: Option<i64>,
    ) -> Result<Folded, StoreError> {
        let mut conn = self
            .pool()
            .acquire()
            .await
            .map_err(|e| write_error(self.path(), "reading edges", e))?;
        let mut handle = conn
            .lock_handle()
            .await
            .map_err(|e| write_error(self.path(), "locking the connection", e))?;
        let db: NonNull<ffi::sqlite3> = handle.as_raw_handle().cast();
        // SAFETY: the locked handle keeps sqlx off this connection until it is dropped,
        // after `stmt` is.
        let stmt = unsafe { prepare_edge_query(db, since, None) }
            .map_err(|e| raw_error(self.path(), "preparing the edge query", e))?;
        let mut folder = Folder::new(context);
        let folded = fold_rows(&stmt, &mut folder);
        drop(stmt);
        drop(handle);
        drop(conn);
        folded.map_err(|e| self.fold_error(e))?;
        Ok(folder.into_folded())
    }

    fn fold_error(&self, e: FoldError) -> StoreError {
        match e {
            FoldError::BadRow { id, detail } => StoreError::BadRow {
                path: self.path().to_path_buf(),
                id,
                detail,
            },
            FoldError::Sqlite { op, err } => raw_error(self.path(), op, err),
        }
    }

    /// Every identity row, decoded.
    async fn identity_rows(&self) -> Result<HashMap<i64, Identity>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, kind, namespace, pod, workload_kind, workload_name, labels, service, \
             service_port, selector FROM identities",
        )
        .fetch_all(self.pool())
        .await
        .map_err(|e| write_error(self.path(), "reading identities", e))?;
        let mut out = HashMap::with_capacity(rows.len());
        for r in rows {
            let id: i64 = r.try_get(0).unwrap_or(-1);
            let bad = |detail: String| StoreError::BadRow {
                path: self.path().to_path_buf(),
                id,
                detail: format!("identity {id}: {detail}"),
            };
            let get = |e: sqlx::Error| bad(e.to_string());
            let kind: Option<String> = r.try_get(1).map_err(get)?;
            let kind = match kind {
                None => None,
                Some(k) => Some(
                    codec::kind_from_db(&k)
                        .ok_or_else(|| bad(format!("unknown endpoint kind {k:?}")))?,
                ),
            };
            let wk: Option<String> = r.try_get(4).map_err(get)?;
            let wn: Option<String> = r.try_get(5).map_err(get)?;
            let labels: Option<String> = r.try_get(6).map_err(get)?;
            let sp: Option<i64> = r.try_get(8).map_err(get)?;
            let selector: Option<String> = r.try_get(9).map_err(get)?;
            let identity = Identity {
                kind,
                namespace: r.try_get(2).map_err(get)?,
                pod: r.try_get(3).map_err(get)?,
                workload: match (wk, wn) {
                    (Some(kind), Some(name)) => Some(WorkloadRef { kind, name }),
                    _ => None,
                },
                labels: codec::labels_from_db(labels.as_deref())
                    .map_err(|e| bad(format!("labels are not a JSON object of strings: {e}")))?,
                selector: codec::labels_from_db(selector.as_deref())
                    .map_err(|e| bad(format!("selector is not a JSON object of strings: {e}")))?,
                service: r.try_get(7).map_err(get)?,
                service_port: match sp {
                    None => None,
                    Some(p) => Some(
                        u16::try_from(p)
                            .map_err(|_| bad(format!("service port {p} is out of range")))?,
                    ),
                },
            };
            out.insert(id, identity);
        }
        Ok(out)
    }

    fn build_edges(
        &self,
        folder: Folded,
        identities: &HashMap<i64, Identity>,
    ) -> Result<Vec<Edge>, StoreError> {
        let mut out = Vec::with_capacity(folder.edges.len());
        for (key, acc) in folder.edges {
            let bad = |detail: String| StoreError::BadRow {
                path: self.path().to_path_buf(),
                id: acc.min_id,
                detail,
            };
            let end = |identity: i64, addr: Addr, port: u16| -> Result<Endpoint, StoreError> {
                let ip = addr_ip(&addr);
                match identity {
                    -1 => Ok(Endpoint::new(ip, port)),
                    id => identities
                        .get(&id)
                        .map(|i| i.endpoint(ip, port))
                        .ok_or_else(|| bad(format!("identity {id} does not exist"))),
                }
            };
            let verdict_text = folder.strings.text(key.verdict).unwrap_or("");
            let verdict: Verdict = verdict_text.parse().map_err(bad)?;
            out.push((
                acc.min_id,
                Edge {
                    record: FlowRecord {
                        src: end(key.src_identity, acc.src_addr, key.icmp_type)?,
                        dst: end(key.dst_identity, acc.dst_addr, key.dst_port)?,
                        protocol: Protocol::from_number(key.protocol),
                        packets: acc.packets,
                        bytes: acc.bytes,
                        reply_packets: acc.reply_packets,
                        reply_bytes: acc.reply_bytes,
                        first_seen: codec::ns_to_time(acc.first_seen),
                        last_seen: codec::ns_to_time(acc.last_seen),
                        verdict,
                        drop_reason: folder.strings.text(key.reason).map(str::to_string),
                        tcp_flags: TcpFlags(acc.tcp_flags),
                        connections: acc.connections,
                        cgroup_id: acc.cgroup_id.flatten().map(codec::id_from_db),
                        node: acc
                            .node
                            .and_then(|n| folder.strings.text(n))
                            .map(str::to_string),
                    },
                    flows: acc.flows,
                },
            ));
        }
        // Oldest first, ties by first row id, as query_flows_merged orders.
        out.sort_by_key(|(min_id, e)| (e.record.first_seen, *min_id));
        Ok(out.into_iter().map(|(_, e)| e).collect())
    }
}
