//! The ingest fast path: prepared statements stepped once per flow through
//! SQLite's C API, on the connection sqlx lends us (`lock_handle`). Binding
//! through sqlx allocates per value and crosses a thread per statement; this
//! path does neither. Endpoint identities are stored once in `identities`
//! and found through an in-memory cache, so the common row costs no string
//! building at all.
//!
//! Safety rests on two facts: sqlx's `LockedSqliteHandle` guarantees no other
//! thread uses the connection while we hold it, and every value bound with
//! `SQLITE_STATIC` outlives the `sqlite3_step` that reads it (bindings are
//! cleared right after each step).
use std::collections::{BTreeMap, HashMap};
use std::ffi::{CStr, c_int};
use std::hash::{BuildHasher, Hash, Hasher};
use std::ptr::NonNull;

use flowpol_recommender::flow::{Endpoint, EndpointKind, FlowRecord, WorkloadRef};
use libsqlite3_sys as ffi;

use super::codec;
use super::query::INSERT_COLUMNS;

/// An error from the C API: SQLite's extended result code and message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (SQLite code {code})")]
pub struct RawError {
    pub code: c_int,
    pub message: String,
}

impl RawError {
    /// The primary result code (SQLITE_FULL, SQLITE_CORRUPT, ...).
    pub fn primary(&self) -> c_int {
        self.code & 0xff
    }
}

pub(super) fn last_error(db: NonNull<ffi::sqlite3>) -> RawError {
    // SAFETY: db is a live connection handle; errmsg returns a NUL-terminated
    // string owned by SQLite, copied before any further call.
    unsafe {
        let code = ffi::sqlite3_extended_errcode(db.as_ptr());
        let msg = ffi::sqlite3_errmsg(db.as_ptr());
        let message = if msg.is_null() {
            "unknown error".to_string()
        } else {
            CStr::from_ptr(msg).to_string_lossy().into_owned()
        };
        RawError { code, message }
    }
}

/// One prepared statement, finalized on drop.
pub(super) struct Stmt {
    pub(super) db: NonNull<ffi::sqlite3>,
    pub(super) stmt: NonNull<ffi::sqlite3_stmt>,
}

impl Stmt {
    /// # Safety
    /// `db` must be a live connection that no other thread uses until this
    /// value is dropped.
    pub(super) unsafe fn prepare(db: NonNull<ffi::sqlite3>, sql: &str) -> Result<Self, RawError> {
        let mut stmt = std::ptr::null_mut();
        // SAFETY: db is live (caller); sql is valid for the given length; the
        // out-pointer is a valid local.
        let rc = unsafe {
            ffi::sqlite3_prepare_v2(
                db.as_ptr(),
                sql.as_ptr().cast(),
                sql.len() as c_int,
                &mut stmt,
                std::ptr::null_mut(),
            )
        };
        match NonNull::new(stmt) {
            Some(stmt) if rc == ffi::SQLITE_OK => Ok(Self { db, stmt }),
            _ => Err(last_error(db)),
        }
    }

    fn check(&self, rc: c_int) -> Result<(), RawError> {
        if rc == ffi::SQLITE_OK {
            Ok(())
        } else {
            Err(last_error(self.db))
        }
    }

    pub(super) fn int(&mut self, i: c_int, v: i64) -> Result<(), RawError> {
        // SAFETY: stmt is live and owned by self.
        self.check(unsafe { ffi::sqlite3_bind_int64(self.stmt.as_ptr(), i, v) })
    }

    fn opt_int(&mut self, i: c_int, v: Option<i64>) -> Result<(), RawError> {
        match v {
            Some(v) => self.int(i, v),
            // SAFETY: stmt is live and owned by self.
            None => self.check(unsafe { ffi::sqlite3_bind_null(self.stmt.as_ptr(), i) }),
        }
    }

    /// Binds `v` without copying.
    ///
    /// # Safety
    /// `v` must stay alive until the next [`Stmt::finish`], which steps the
    /// statement and clears the bindings: a temporary dropped at the end of
    /// the binding statement would be read after it is freed.
    unsafe fn text(&mut self, i: c_int, v: Option<&str>) -> Result<(), RawError> {
        match v {
            // SAFETY: stmt is live; v outlives the step (caller);
            // SQLITE_STATIC: SQLite neither copies nor frees it.
            Some(v) => self.check(unsafe {
                ffi::sqlite3_bind_text(
                    self.stmt.as_ptr(),
                    i,
                    v.as_ptr().cast(),
                    v.len() as c_int,
                    ffi::SQLITE_STATIC(),
                )
            }),
            // SAFETY: stmt is live and owned by self.
            None => self.check(unsafe { ffi::sqlite3_bind_null(self.stmt.as_ptr(), i) }),
        }
    }

    /// Binds `v` without copying.
    ///
    /// # Safety
    /// As for [`Stmt::text`]: `v` must stay alive until the next `finish`.
    unsafe fn blob(&mut self, i: c_int, v: &[u8]) -> Result<(), RawError> {
        // SAFETY: as for `text`.
        self.check(unsafe {
            ffi::sqlite3_bind_blob(
                self.stmt.as_ptr(),
                i,
                v.as_ptr().cast(),
                v.len() as c_int,
                ffi::SQLITE_STATIC(),
            )
        })
    }

    /// Steps once; returns the first column of a result row, if any. Then
    /// resets the statement and clears its bindings (SQLite stops reading
    /// the bound buffers).
    fn finish(&mut self) -> Result<Option<i64>, RawError> {
        // SAFETY: stmt and db are live and owned by self; bound buffers are
        // alive (see `text`) until clear_bindings below.
        let (rc, value) = unsafe {
            let rc = ffi::sqlite3_step(self.stmt.as_ptr());
            let value =
                (rc == ffi::SQLITE_ROW).then(|| ffi::sqlite3_column_int64(self.stmt.as_ptr(), 0));
            (rc, value)
        };
        let result = match rc {
            ffi::SQLITE_ROW | ffi::SQLITE_DONE => Ok(value),
            _ => Err(last_error(self.db)),
        };
        // SAFETY: as above.
        unsafe {
            ffi::sqlite3_reset(self.stmt.as_ptr());
            ffi::sqlite3_clear_bindings(self.stmt.as_ptr());
        }
        result
    }

    fn last_insert_rowid(&self) -> i64 {
        // SAFETY: db is live.
        unsafe { ffi::sqlite3_last_insert_rowid(self.db.as_ptr()) }
    }
}

impl Drop for Stmt {
    fn drop(&mut self) {
        // SAFETY: stmt was prepared by us and is finalized exactly once.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

/// The identity columns of an endpoint, owned (a cache entry).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Identity {
    kind: Option<EndpointKind>,
    namespace: Option<String>,
    pod: Option<String>,
    workload: Option<WorkloadRef>,
    labels: BTreeMap<String, String>,
    selector: BTreeMap<String, String>,
    service: Option<String>,
    service_port: Option<u16>,
}

impl Identity {
    fn of(e: &Endpoint) -> Self {
        Self {
            kind: e.kind,
            namespace: e.namespace.clone(),
            pod: e.pod.clone(),
            workload: e.workload.clone(),
            labels: e.labels.clone(),
            selector: e.selector.clone(),
            service: e.service.clone(),
            service_port: e.service_port,
        }
    }

    fn matches(&self, e: &Endpoint) -> bool {
        self.kind == e.kind
            && self.namespace == e.namespace
            && self.pod == e.pod
            && self.workload == e.workload
            && self.labels == e.labels
            && self.selector == e.selector
            && self.service == e.service
            && self.service_port == e.service_port
    }
}

/// True when any identity field of `e` is set.
pub fn has_identity(e: &Endpoint) -> bool {
    e.kind.is_some()
        || e.namespace.is_some()
        || e.pod.is_some()
        || e.workload.is_some()
        || !e.labels.is_empty()
        || !e.selector.is_empty()
        || e.service.is_some()
        || e.service_port.is_some()
}

/// Hash of the identity fields of `e`, computed without allocating.
/// foldhash (fixed seed): the cache is keyed by our own identities, not by
/// untrusted input crafted to collide, and it reads 16 bytes a step where
/// the FNV used before read one (a tenth of the ingest cost went to hashing).
fn identity_hash(e: &Endpoint) -> u64 {
    let mut h = foldhash::fast::FixedState::default().build_hasher();
    e.kind.hash(&mut h);
    e.namespace.hash(&mut h);
    e.pod.hash(&mut h);
    e.workload.hash(&mut h);
    e.labels.hash(&mut h);
    e.selector.hash(&mut h);
    e.service.hash(&mut h);
    e.service_port.hash(&mut h);
    h.finish()
}

/// The canonical text of an identity: the `identities.key` column. The selector joins it
/// only when set, so identities without one keep the key they had before it existed.
fn identity_key(e: &Endpoint) -> String {
    let mut key = serde_json::json!([
        e.kind.map(codec::kind_to_db),
        e.namespace,
        e.pod,
        e.workload.as_ref().map(|w| &w.kind),
        e.workload.as_ref().map(|w| &w.name),
        e.labels,
        e.service,
        e.service_port,
    ]);
    if !e.selector.is_empty()
        && let Some(parts) = key.as_array_mut()
    {
        parts.push(serde_json::json!(e.selector));
    }
    key.to_string()
}

/// Identity ids by identity, so that most rows need no lookup in SQLite.
#[derive(Debug, Default)]
pub struct IdentityCache {
    /// Keyed by `identity_hash`, already a hash: hashed again by foldhash
    /// rather than the default SipHash.
    by_hash: HashMap<u64, Vec<(Identity, i64)>, foldhash::fast::FixedState>,
    len: usize,
}

/// Bounds the cache's memory (an entry is a few hundred bytes).
const IDENTITY_CACHE_MAX: usize = 50_000;

impl IdentityCache {
    fn get(&self, hash: u64, e: &Endpoint) -> Option<i64> {
        self.by_hash
            .get(&hash)?
            .iter()
            .find(|(identity, _)| identity.matches(e))
            .map(|(_, id)| *id)
    }

    fn insert(&mut self, hash: u64, e: &Endpoint, id: i64) {
        self.by_hash
            .entry(hash)
            .or_default()
            .push((Identity::of(e), id));
        self.len += 1;
    }

    /// Takes in what a committed write learned.
    pub fn absorb(&mut self, other: IdentityCache) {
        if self.len + other.len > IDENTITY_CACHE_MAX {
            // Simplest bound: start over; the hot identities return quickly.
            self.by_hash.clear();
            self.len = 0;
        }
        for (hash, entries) in other.by_hash {
            self.len += entries.len();
            self.by_hash.entry(hash).or_default().extend(entries);
        }
    }
}

/// The flow id that follows `id`; an error once every id has been handed out.
fn id_after(id: i64) -> Result<i64, RawError> {
    id.checked_add(1).ok_or_else(|| RawError {
        code: ffi::SQLITE_FULL,
        message: "every flow id up to 2^63-1 has been used".into(),
    })
}

/// Writes flows (and the identities they name) on one locked connection.
pub struct FlowWriter<'c> {
    insert_flow: Stmt,
    /// The id the next flow gets: one above the highest ever handed out
    /// (`flow_id_high_water`, migration 0004), so ids are never reused.
    next_flow_id: i64,
    /// Set when this write handed out ids: `finish` records the new high water.
    high_water_moved: bool,
    find_identity: Stmt,
    insert_identity: Stmt,
    /// Identities known committed before this write.
    known: &'c IdentityCache,
    /// Identities this write found or added: kept only if it commits.
    pub learned: IdentityCache,
}

impl<'c> FlowWriter<'c> {
    /// # Safety
    /// `db` must be a live connection that no other thread uses until this
    /// value is dropped.
    pub unsafe fn new(
        db: NonNull<ffi::sqlite3>,
        known: &'c IdentityCache,
    ) -> Result<Self, RawError> {
        // The id is the last parameter, after INSERT_COLUMNS.
        let insert_flow = format!(
            "INSERT INTO flows ({}, id) VALUES ({})",
            INSERT_COLUMNS.join(", "),
            vec!["?"; INSERT_COLUMNS.len() + 1].join(", ")
        );
        // SAFETY: forwarded from the caller.
        unsafe {
            // A write first, like the INSERT that used to come first: a
            // transaction that starts by reading gets SQLITE_BUSY at once,
            // without the busy timeout, when it then needs the write lock
            // another connection holds (SQLite never waits while it holds a
            // read snapshot). MAX(id) too: a row written some other way must
            // not be overwritten.
            let mut high_water = Stmt::prepare(
                db,
                "UPDATE flow_id_high_water \
                 SET last_id = MAX(last_id, COALESCE((SELECT MAX(id) FROM flows), 0)) \
                 WHERE only_row = 1 RETURNING last_id",
            )?;
            let next_flow_id = id_after(high_water.finish()?.unwrap_or(0))?;
            Ok(Self {
                insert_flow: Stmt::prepare(db, &insert_flow)?,
                next_flow_id,
                high_water_moved: false,
                find_identity: Stmt::prepare(db, "SELECT id FROM identities WHERE key = ?")?,
                insert_identity: Stmt::prepare(
                    db,
                    "INSERT INTO identities (key, kind, namespace, pod, workload_kind, \
                     workload_name, labels, service, service_port, selector) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                )?,
                known,
                learned: IdentityCache::default(),
            })
        }
    }

    /// The `identities` id of `e`'s identity, adding it when new.
    fn identity(&mut self, e: &Endpoint) -> Result<Option<i64>, RawError> {
        if !has_identity(e) {
            return Ok(None);
        }
        let hash = identity_hash(e);
        if let Some(id) = self
            .known
            .get(hash, e)
            .or_else(|| self.learned.get(hash, e))
        {
            return Ok(Some(id));
        }
        let key = identity_key(e);
        // SAFETY: `key` lives until the end of this function, past `finish`.
        unsafe { self.find_identity.text(1, Some(&key))? };
        let id = match self.find_identity.finish()? {
            Some(id) => id,
            None => {
                let labels = codec::labels_to_db(&e.labels);
                let selector = codec::labels_to_db(&e.selector);
                let s = &mut self.insert_identity;
                // SAFETY: every text is `key`, `labels`, `selector` (locals) or
                // borrowed from `e`: all alive until `finish` below.
                unsafe {
                    s.text(1, Some(&key))?;
                    s.text(2, e.kind.map(codec::kind_to_db))?;
                    s.text(3, e.namespace.as_deref())?;
                    s.text(4, e.pod.as_deref())?;
                    s.text(5, e.workload.as_ref().map(|w| w.kind.as_str()))?;
                    s.text(6, e.workload.as_ref().map(|w| w.name.as_str()))?;
                    s.text(7, labels.as_deref())?;
                    s.text(8, e.service.as_deref())?;
                    s.text(10, selector.as_deref())?;
                }
                s.opt_int(9, e.service_port.map(i64::from))?;
                s.finish()?;
                s.last_insert_rowid()
            }
        };
        self.learned.insert(hash, e, id);
        Ok(Some(id))
    }

    /// Inserts one flow; returns its id.
    pub fn insert(&mut self, f: &FlowRecord) -> Result<i64, RawError> {
        let id = self.next_flow_id;
        let after = id_after(id)?;
        let src_identity = self.identity(&f.src)?;
        let dst_identity = self.identity(&f.dst)?;
        let src_ip = codec::ip_to_db(&f.src.ip);
        let dst_ip = codec::ip_to_db(&f.dst.ip);
        let s = &mut self.insert_flow;
        // Parameter numbers follow INSERT_COLUMNS (1-based).
        s.int(1, codec::time_to_ns(&f.first_seen))?;
        s.int(2, codec::time_to_ns(&f.last_seen))?;
        s.int(3, i64::from(f.protocol.number()))?;
        // SAFETY: the addresses are locals and the texts static or borrowed
        // from `f`: all alive until `finish` below.
        unsafe {
            s.blob(4, &src_ip)?;
            s.blob(6, &dst_ip)?;
            s.text(12, Some(codec::verdict_to_db(f.verdict)))?;
            s.text(13, f.drop_reason.as_deref())?;
            s.text(16, f.node.as_deref())?;
        }
        s.int(5, i64::from(f.src.port))?;
        s.int(7, i64::from(f.dst.port))?;
        s.int(8, codec::counter_to_db(f.packets))?;
        s.int(9, codec::counter_to_db(f.bytes))?;
        s.int(10, codec::counter_to_db(f.reply_packets))?;
        s.int(11, codec::counter_to_db(f.reply_bytes))?;
        s.int(14, i64::from(f.tcp_flags.0))?;
        s.opt_int(15, f.cgroup_id.map(codec::id_to_db))?;
        s.opt_int(17, src_identity)?;
        s.opt_int(18, dst_identity)?;
        s.int(19, codec::counter_to_db(f.connections))?;
        s.int(20, id)?;
        s.finish()?;
        self.next_flow_id = after;
        self.high_water_moved = true;
        Ok(id)
    }

    /// Records the highest id this write handed out; call once, after the
    /// last `insert`, in the same transaction.
    pub fn finish(&mut self) -> Result<(), RawError> {
        if !self.high_water_moved {
            return Ok(());
        }
        // SAFETY: the connection is the one `new` was given (same contract).
        let mut update = unsafe {
            Stmt::prepare(
                self.insert_flow.db,
                "UPDATE flow_id_high_water SET last_id = ? WHERE only_row = 1",
            )?
        };
        update.int(1, self.next_flow_id - 1)?;
        update.finish()?;
        self.high_water_moved = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_numbers_match_the_column_list() {
        assert_eq!(INSERT_COLUMNS.len(), 19);
        assert_eq!(INSERT_COLUMNS[11], "verdict");
        assert_eq!(INSERT_COLUMNS[16], "src_identity");
        assert_eq!(INSERT_COLUMNS[17], "dst_identity");
        assert_eq!(INSERT_COLUMNS[18], "connections");
    }

    #[test]
    fn the_cache_tells_identities_apart() {
        let mut a = Endpoint::new("10.0.0.1".parse().unwrap(), 1);
        a.namespace = Some("ns".into());
        let mut b = a.clone();
        b.labels.insert("app".into(), "x".into());
        let mut cache = IdentityCache::default();
        cache.insert(identity_hash(&a), &a, 1);
        assert_eq!(cache.get(identity_hash(&a), &a), Some(1));
        assert_eq!(cache.get(identity_hash(&b), &b), None);
        // The address and port are not part of the identity.
        let mut a2 = a.clone();
        a2.ip = "10.0.0.2".parse().unwrap();
        assert_eq!(cache.get(identity_hash(&a2), &a2), Some(1));
        assert_ne!(identity_key(&a), identity_key(&b));
        assert!(!has_identity(&Endpoint::new(
            "10.0.0.1".parse().unwrap(),
            1
        )));
    }
}
