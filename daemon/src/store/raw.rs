//! The ingest fast path: one prepared single-row INSERT stepped once per
//! flow, through SQLite's C API on the connection sqlx lends us
//! (`lock_handle`). Binding through sqlx allocates per value and crosses a
//! thread per statement; this path does neither, which is what lets one
//! drain interval of 10 000 flows commit in a few milliseconds.
//!
//! Safety rests on two facts: sqlx's `LockedSqliteHandle` guarantees no other
//! thread uses the connection while we hold it, and every value bound with
//! `SQLITE_STATIC` outlives the `sqlite3_step` that reads it (each row's
//! owned temporaries live in [`RowValues`] until the step returns).
use std::ffi::{CStr, c_int};
use std::ptr::NonNull;

use flowpol_recommender::flow::{Endpoint, FlowRecord};
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

/// A prepared INSERT of one flow row, finalized on drop.
pub struct FlowInsert {
    db: NonNull<ffi::sqlite3>,
    stmt: NonNull<ffi::sqlite3_stmt>,
}

fn last_error(db: NonNull<ffi::sqlite3>) -> RawError {
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

/// The owned values of one row, alive until its step is done.
struct RowValues {
    src_ip: Vec<u8>,
    dst_ip: Vec<u8>,
    src_labels: Option<String>,
    dst_labels: Option<String>,
}

impl FlowInsert {
    /// Prepares the INSERT on `db`.
    ///
    /// # Safety
    /// `db` must be a live connection that no other thread uses until this
    /// value is dropped.
    pub unsafe fn prepare(db: NonNull<ffi::sqlite3>) -> Result<Self, RawError> {
        let sql = format!(
            "INSERT INTO flows ({}) VALUES ({})",
            INSERT_COLUMNS.join(", "),
            vec!["?"; INSERT_COLUMNS.len()].join(", ")
        );
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

    fn int(&mut self, i: c_int, v: i64) -> Result<(), RawError> {
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

    /// Binds `v` without copying: it must stay alive until the next step.
    fn text(&mut self, i: c_int, v: Option<&str>) -> Result<(), RawError> {
        match v {
            // SAFETY: stmt is live; v outlives the step (see module docs);
            // SQLITE_STATIC tells SQLite not to free or copy it.
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

    /// Binds `v` without copying: it must stay alive until the next step.
    fn blob(&mut self, i: c_int, v: &[u8]) -> Result<(), RawError> {
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

    fn endpoint<'a>(
        &mut self,
        first: c_int,
        e: &'a Endpoint,
        labels: Option<&'a str>,
    ) -> Result<(), RawError> {
        self.text(first, e.kind.map(codec::kind_to_db))?;
        self.text(first + 1, e.namespace.as_deref())?;
        self.text(first + 2, e.pod.as_deref())?;
        self.text(first + 3, e.workload.as_ref().map(|w| w.kind.as_str()))?;
        self.text(first + 4, e.workload.as_ref().map(|w| w.name.as_str()))?;
        self.text(first + 5, labels)?;
        self.text(first + 6, e.service.as_deref())?;
        self.opt_int(first + 7, e.service_port.map(i64::from))
    }

    /// Inserts one flow; returns its id.
    pub fn insert(&mut self, f: &FlowRecord) -> Result<i64, RawError> {
        let owned = RowValues {
            src_ip: codec::ip_to_db(&f.src.ip),
            dst_ip: codec::ip_to_db(&f.dst.ip),
            src_labels: codec::labels_to_db(&f.src.labels),
            dst_labels: codec::labels_to_db(&f.dst.labels),
        };
        // Parameter numbers follow INSERT_COLUMNS (1-based).
        self.int(1, codec::time_to_ns(&f.first_seen))?;
        self.int(2, codec::time_to_ns(&f.last_seen))?;
        self.int(3, i64::from(f.protocol.number()))?;
        self.blob(4, &owned.src_ip)?;
        self.int(5, i64::from(f.src.port))?;
        self.blob(6, &owned.dst_ip)?;
        self.int(7, i64::from(f.dst.port))?;
        self.int(8, codec::counter_to_db(f.packets))?;
        self.int(9, codec::counter_to_db(f.bytes))?;
        self.int(10, codec::counter_to_db(f.reply_packets))?;
        self.int(11, codec::counter_to_db(f.reply_bytes))?;
        self.text(12, Some(codec::verdict_to_db(f.verdict)))?;
        self.text(13, f.drop_reason.as_deref())?;
        self.int(14, i64::from(f.tcp_flags.0))?;
        self.opt_int(15, f.cgroup_id.map(codec::id_to_db))?;
        self.text(16, f.node.as_deref())?;
        self.endpoint(17, &f.src, owned.src_labels.as_deref())?;
        self.endpoint(25, &f.dst, owned.dst_labels.as_deref())?;
        // SAFETY: stmt and db are live; every bound pointer is in `f` or
        // `owned`, both alive until after reset (which drops no bindings but
        // makes SQLite stop reading them until rebound).
        let (rc, id) = unsafe {
            let rc = ffi::sqlite3_step(self.stmt.as_ptr());
            let id = ffi::sqlite3_last_insert_rowid(self.db.as_ptr());
            ffi::sqlite3_reset(self.stmt.as_ptr());
            ffi::sqlite3_clear_bindings(self.stmt.as_ptr());
            (rc, id)
        };
        drop(owned);
        if rc == ffi::SQLITE_DONE {
            Ok(id)
        } else {
            Err(last_error(self.db))
        }
    }
}

impl Drop for FlowInsert {
    fn drop(&mut self) {
        // SAFETY: stmt was prepared by us and is finalized exactly once.
        unsafe {
            ffi::sqlite3_finalize(self.stmt.as_ptr());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_numbers_match_the_column_list() {
        // `insert` binds endpoint identity at 17 and 25, 8 columns each.
        assert_eq!(INSERT_COLUMNS[16], "src_kind");
        assert_eq!(INSERT_COLUMNS[24], "dst_kind");
        assert_eq!(INSERT_COLUMNS.len(), 32);
        assert_eq!(INSERT_COLUMNS[11], "verdict");
    }
}
