//! The flow store: SQLite through sqlx, schema only from `migrations/`.
//!
//! - [`Store::open`] creates or opens a database for writing (the agent);
//!   [`Store::open_read_only`] opens one for queries (CLI, API).
//! - Before anything is written, [`guard::inspect`] checks that the file is
//!   a flowpol database whose schema this binary knows; anything else is
//!   refused and left byte-for-byte untouched.
//! - [`Store::write_flows`] / [`Store::write_drain`] write one drain interval
//!   in one transaction. Rows are per interval: counters are that interval's
//!   deltas; [`Store::query_flows_merged`] sums them per flow.
//! - [`Store::prune`] applies retention by age and by size in small batches.
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use flowpol_recommender::flow::FlowRecord;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

pub mod codec;
pub mod edges;
pub mod guard;
pub mod query;
mod raw;
pub mod retention;
pub mod selector;

pub use edges::{Edge, EdgeQuery};
pub use guard::FileState;
pub use query::{FlowCursor, FlowOrder, FlowPage, FlowQuery, StoredFlow};
pub use retention::{PruneReport, Retention, RetentionArgs};
pub use selector::LabelSelector;

/// Every migration in `migrations/`, embedded at build time.
pub static MIGRATOR: Migrator = sqlx::migrate!("../migrations");

/// `PRAGMA application_id` of every flowpol database ("FPOL"), set first at
/// creation: it tells our files from other applications' SQLite files.
pub const APPLICATION_ID: i32 = 0x4650_4F4C;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database {}: the folder {} does not exist; create it or pass another --db path",
        path.display(), dir.display()
    )]
    MissingFolder { path: PathBuf, dir: PathBuf },
    #[error(
        "database {} does not exist; record flows into it first (`flowpol agent --db {}`) or pass the right --db path",
        path.display(), path.display()
    )]
    Missing { path: PathBuf },
    #[error("database {} is a directory, not a file; pass the path of a database file", path.display())]
    IsDirectory { path: PathBuf },
    #[error(
        "{} is not a flowpol database: {detail}; it was left untouched. Pass --db a flowpol database or a path that does not exist yet",
        path.display()
    )]
    NotSqlite { path: PathBuf, detail: String },
    #[error(
        "{} is a SQLite database of another application ({detail}), not a flowpol database; it was left untouched. Pass --db a flowpol database or a path that does not exist yet",
        path.display()
    )]
    Foreign { path: PathBuf, detail: String },
    #[error(
        "database {} is corrupt ({detail}); it was left untouched. Restore it from a backup, or move it away so flowpol starts a new one",
        path.display()
    )]
    Corrupt { path: PathBuf, detail: String },
    #[error(
        "database {} has schema version {found}, newer than this flowpol knows (up to {known}); it was left untouched. Use a newer flowpol, or pass another --db path",
        path.display()
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error(
        "database {}: migration {version} ({description}) was applied from different SQL than this flowpol's; it was left untouched. Use the flowpol build that created it, or pass another --db path",
        path.display()
    )]
    SchemaMismatch {
        path: PathBuf,
        version: i64,
        description: String,
    },
    #[error(
        "database {}: migration {version} ({description}) did not complete; it was left untouched. Restore it from a backup, or move it away so flowpol starts a new one",
        path.display()
    )]
    IncompleteMigration {
        path: PathBuf,
        version: i64,
        description: String,
    },
    #[error(
        "database {} is read-only: {detail}. Make it writable (chmod u+w, a writable mount) or pass another --db path",
        path.display()
    )]
    ReadOnly { path: PathBuf, detail: String },
    #[error(
        "database {}: the disk is full ({op}); nothing of this write was stored. Free space or lower --retention-size",
        path.display()
    )]
    DiskFull { path: PathBuf, op: &'static str },
    #[error("database {}: {what}: {source}", path.display())]
    Io {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("database {}: {op}: {source}", path.display())]
    Sqlite {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("database {}: {op}: {source}", path.display())]
    Engine {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: raw::RawError,
    },
    #[error("database {}: applying schema migrations: {source}", path.display())]
    Migrate {
        path: PathBuf,
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    #[error("database {}: flows row {id}: {detail}", path.display())]
    BadRow {
        path: PathBuf,
        id: i64,
        detail: String,
    },
}

/// How the store opens its database; the defaults suit the agent.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Run `PRAGMA quick_check` (reads every page) before writing to an
    /// existing database, so a corrupt file is refused rather than written.
    pub integrity_check: bool,
    /// Pooled connections (one writer at a time; the rest read).
    pub max_connections: u32,
    /// How long a statement waits for another connection's write lock.
    pub busy_timeout: Duration,
    /// SQLite page cache per connection, in KiB.
    pub cache_kib: u32,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            integrity_check: true,
            max_connections: 4,
            busy_timeout: Duration::from_secs(10),
            cache_kib: 8 * 1024,
        }
    }
}

/// A counter of what capture lost or skipped in one drain interval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaptureLoss {
    /// Counter name, e.g. `flow_map_full`.
    pub counter: String,
    /// How many were lost in this interval.
    pub delta: u64,
}

/// Capture losses summed over a period, per counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LossTotal {
    pub counter: String,
    pub total: u64,
}

/// An open flowpol database.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
    /// Identity ids already in the database (shared by clones).
    identities: std::sync::Arc<std::sync::Mutex<raw::IdentityCache>>,
    path: PathBuf,
    read_only: bool,
    schema_version: i64,
}

/// Creates the database file readable and writable by its owner only (0600)
/// before SQLite opens it: flows name every workload and peer of the node.
/// SQLite gives the `-wal` and `-shm` files the mode of the database file.
fn create_private_file(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        // Created meanwhile by someone else: the checks SQLite runs next decide.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(StoreError::Io {
            path: path.to_path_buf(),
            what: "creating the database file",
            source,
        }),
    }
}

/// SQLite's primary result codes that get their own error.
const SQLITE_READONLY: i32 = 8;
const SQLITE_FULL: i32 = 13;

impl Store {
    /// Opens `path` for writing, creating it (and its schema) when absent.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        Self::open_with(path, &StoreOptions::default()).await
    }

    pub async fn open_with(path: &Path, options: &StoreOptions) -> Result<Store, StoreError> {
        let state = guard::inspect(path, &MIGRATOR, options.integrity_check).await?;
        check_writable(path, &state, &RealFs)?;
        let fresh = matches!(state, FileState::Missing | FileState::Fresh);
        if matches!(state, FileState::Missing) {
            create_private_file(path)?;
        }
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(fresh)
            // Only takes effect on an empty database: lets retention give
            // pages back to the file system.
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .journal_mode(SqliteJournalMode::Wal)
            // In WAL mode NORMAL is durable across process crashes; a power
            // loss may lose the last committed intervals, never corrupt.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(options.busy_timeout)
            .pragma("cache_size", format!("-{}", options.cache_kib))
            // Truncate the WAL file back to this size after checkpoints.
            .pragma("journal_size_limit", (64 * 1024 * 1024).to_string())
            .pragma("temp_store", "FILE");
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .connect_with(connect)
            .await
            .map_err(|e| write_error(path, "opening for writing", e))?;
        if fresh {
            // First, so that a crash between here and the first migration
            // still leaves a file we recognise as ours (and as empty).
            sqlx::query(&format!("PRAGMA application_id = {APPLICATION_ID}"))
                .execute(&pool)
                .await
                .map_err(|e| write_error(path, "setting the application id", e))?;
        }
        MIGRATOR.run(&pool).await.map_err(|e| StoreError::Migrate {
            path: path.to_path_buf(),
            source: e,
        })?;
        Ok(Store {
            pool,
            identities: Default::default(),
            path: path.to_path_buf(),
            read_only: false,
            schema_version: latest_schema_version(),
        })
    }

    /// Opens an existing flowpol database for queries only; never writes.
    pub async fn open_read_only(path: &Path) -> Result<Store, StoreError> {
        let state = guard::inspect(path, &MIGRATOR, false).await?;
        let schema_version = match state {
            FileState::Missing => {
                return Err(StoreError::Missing {
                    path: path.to_path_buf(),
                });
            }
            FileState::Fresh => {
                return Err(StoreError::NotSqlite {
                    path: path.to_path_buf(),
                    detail: "it is empty (no flowpol schema)".into(),
                });
            }
            FileState::Flowpol { schema_version } => schema_version,
        };
        // A reader of a WAL database needs the -shm file; in a folder where
        // it cannot be created (a copy on a read-only mount) and with no
        // writer (no -wal file), read the file as immutable instead.
        let immutable = !wal_path(path).exists() && RealFs.writable(&parent_dir(path)).is_err();
        let connect = SqliteConnectOptions::new()
            .filename(path)
            .read_only(true)
            .immutable(immutable)
            .create_if_missing(false)
            // Merged listings sort every matching row: a larger cache keeps
            // more of that sort in memory (this is the CLI, not the agent).
            .pragma("cache_size", "-65536")
            .busy_timeout(StoreOptions::default().busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(connect)
            .await
            .map_err(|e| write_error(path, "opening read-only", e))?;
        Ok(Store {
            pool,
            identities: Default::default(),
            path: path.to_path_buf(),
            read_only: true,
            schema_version,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Highest migration applied to this database.
    pub fn schema_version(&self) -> i64 {
        self.schema_version
    }

    /// The connection pool, for other modules' tables (identity timelines).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Closes every connection; the last one checkpoints and removes the WAL.
    pub async fn close(self) {
        if !self.read_only {
            // Fold the WAL into the database file now, so the file is complete
            // when this returns whatever order the connections close in.
            // Failure only means the next open replays the WAL.
            let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.pool)
                .await;
        }
        self.pool.close().await;
        // sqlx closes connections that were on their way back to the pool on
        // a background task: wait for them, so that when this returns SQLite
        // has checkpointed and removed the WAL (bounded, never hangs).
        for _ in 0..1000 {
            if self.pool.size() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // SQLite removes the WAL only when the closing connection is the
        // last one; the pool closes its connections concurrently, so each
        // can see another still open and leave the WAL behind. One more
        // connection, alone now, closes last.
        if !self.read_only && wal_path(&self.path).exists() {
            let last = SqliteConnectOptions::new()
                .filename(&self.path)
                .journal_mode(SqliteJournalMode::Wal)
                .connect()
                .await;
            if let Ok(conn) = last {
                let _ = conn.close().await;
            }
        }
    }

    /// Writes one drain interval's flows in one transaction.
    pub async fn write_flows(&self, flows: &[FlowRecord]) -> Result<(), StoreError> {
        self.write_drain(flows, &[], Utc::now(), None).await
    }

    /// Writes one drain interval (its flows and its capture-loss counters) in
    /// one transaction. On error nothing of it was stored and the caller may
    /// retry the same batch.
    pub async fn write_drain(
        &self,
        flows: &[FlowRecord],
        losses: &[CaptureLoss],
        recorded_at: DateTime<Utc>,
        node: Option<&str>,
    ) -> Result<(), StoreError> {
        self.write_drain_chunks(std::iter::once(flows), losses, recorded_at, node)
            .await
    }

    /// [`Store::write_drain`] for flows made a chunk at a time (the agent turns
    /// its compact records into full ones chunk by chunk): still one drain
    /// interval in one transaction, one `drains` row; each chunk is inserted and
    /// dropped before the next is made.
    pub async fn write_drain_chunks<I, C>(
        &self,
        chunks: I,
        losses: &[CaptureLoss],
        recorded_at: DateTime<Utc>,
        node: Option<&str>,
    ) -> Result<(), StoreError>
    where
        I: Iterator<Item = C> + Send,
        C: AsRef<[FlowRecord]>,
    {
        let path = &self.path;
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| write_error(path, "starting a transaction", e))?;
        let written = self
            .write_drain_on(&mut conn, chunks, losses, recorded_at, node)
            .await;
        if written.is_err() {
            // sqlx only queues the rollback of a failed transaction (a COMMIT
            // that failed on a full disk leaves it open, holding the write
            // lock). Run it now, on this connection, before the connection
            // goes back to the pool: the next write, on another connection,
            // would otherwise find the database locked. The error, if any, is
            // "no transaction is active".
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        }
        written
    }

    async fn write_drain_on<I, C>(
        &self,
        conn: &mut sqlx::SqliteConnection,
        chunks: I,
        losses: &[CaptureLoss],
        recorded_at: DateTime<Utc>,
        node: Option<&str>,
    ) -> Result<(), StoreError>
    where
        I: Iterator<Item = C> + Send,
        C: AsRef<[FlowRecord]>,
    {
        let path = &self.path;
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| write_error(path, "starting a transaction", e))?;
        let mut count: i64 = 0;
        let mut min_last_seen: Option<i64> = None;
        let mut max_last_seen: Option<i64> = None;
        let (first_id, last_id, learned) = {
            let mut handle = tx
                .lock_handle()
                .await
                .map_err(|e| write_error(path, "locking the connection", e))?;
            let db = handle.as_raw_handle().cast();
            let known = self
                .identities
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            // SAFETY: the locked handle keeps sqlx's worker thread off this
            // connection until it is dropped, after `writer` is.
            let mut writer = unsafe { raw::FlowWriter::new(db, &known) }
                .map_err(|e| raw_error(path, "preparing the flow insert", e))?;
            let mut first = None;
            let mut last = None;
            for chunk in chunks {
                for f in chunk.as_ref() {
                    let id = writer
                        .insert(f)
                        .map_err(|e| raw_error(path, "inserting flows", e))?;
                    first.get_or_insert(id);
                    last = Some(id);
                    count += 1;
                    let seen = codec::time_to_ns(&f.last_seen);
                    min_last_seen = Some(min_last_seen.map_or(seen, |m: i64| m.min(seen)));
                    max_last_seen = Some(max_last_seen.map_or(seen, |m: i64| m.max(seen)));
                }
            }
            writer
                .finish()
                .map_err(|e| raw_error(path, "recording the highest flow id", e))?;
            (first, last, std::mem::take(&mut writer.learned))
        };
        let recorded_ns = codec::time_to_ns(&recorded_at);
        if count > 0 || !losses.is_empty() {
            sqlx::query(
                "INSERT INTO drains (recorded_ns, node, first_flow_id, last_flow_id, flow_count, \
                 min_last_seen_ns, max_last_seen_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(recorded_ns)
            .bind(node)
            .bind(first_id)
            .bind(last_id)
            .bind(count)
            .bind(min_last_seen)
            .bind(max_last_seen)
            .execute(&mut *tx)
            .await
            .map_err(|e| write_error(path, "recording the drain", e))?;
        }
        for loss in losses.iter().filter(|l| l.delta > 0) {
            sqlx::query(
                "INSERT INTO capture_losses (recorded_ns, node, counter, delta) VALUES (?, ?, ?, ?)",
            )
            .bind(recorded_ns)
            .bind(node)
            .bind(loss.counter.as_str())
            .bind(codec::counter_to_db(loss.delta))
            .execute(&mut *tx)
            .await
            .map_err(|e| write_error(path, "inserting capture losses", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| write_error(path, "committing", e))?;
        // Only now are the identities this write added sure to exist.
        self.identities
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .absorb(learned);
        Ok(())
    }

    /// Capture losses recorded at or after `since`, summed per counter.
    pub async fn capture_losses(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<LossTotal>, StoreError> {
        let since_ns = since.as_ref().map(codec::time_to_ns).unwrap_or(i64::MIN);
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT counter, SUM(delta) FROM capture_losses WHERE recorded_ns >= ? \
             GROUP BY counter ORDER BY counter",
        )
        .bind(since_ns)
        .fetch_all(&self.pool)
        .await
        .map_err(|e| write_error(&self.path, "reading capture losses", e))?;
        Ok(rows
            .into_iter()
            .map(|(counter, total)| LossTotal {
                counter,
                total: codec::counter_from_db(total),
            })
            .collect())
    }
}

fn latest_schema_version() -> i64 {
    MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0)
}

/// Maps an error of the C-API fast path like [`write_error`].
fn raw_error(path: &Path, op: &'static str, err: raw::RawError) -> StoreError {
    match err.primary() {
        SQLITE_FULL => StoreError::DiskFull {
            path: path.to_path_buf(),
            op,
        },
        SQLITE_READONLY => StoreError::ReadOnly {
            path: path.to_path_buf(),
            detail: format!("{op}: {err}"),
        },
        11 | 26 => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("{op}: {err}"),
        },
        _ => StoreError::Engine {
            path: path.to_path_buf(),
            op,
            source: err,
        },
    }
}

/// Maps an sqlx error met while using a database we own.
pub(crate) fn write_error(path: &Path, op: &'static str, err: sqlx::Error) -> StoreError {
    match guard::sqlite_code(&err) {
        Some(SQLITE_FULL) => StoreError::DiskFull {
            path: path.to_path_buf(),
            op,
        },
        Some(SQLITE_READONLY) => StoreError::ReadOnly {
            path: path.to_path_buf(),
            detail: format!("{op}: {err}"),
        },
        Some(11) | Some(26) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("{op}: {err}"),
        },
        _ => StoreError::Sqlite {
            path: path.to_path_buf(),
            op,
            source: err,
        },
    }
}

/// File-system questions behind a seam, so tests can fake a read-only disk.
pub trait FsProbe {
    /// `Err(detail)` when `path` (a file or a folder) cannot be written.
    fn writable(&self, path: &Path) -> Result<(), String>;
}

/// The real file system: permission bits (which root ignores, but an
/// operator's `chmod a-w` still means "do not write") and `access(W_OK)`
/// (read-only mounts, ownership).
pub struct RealFs;

impl FsProbe for RealFs {
    fn writable(&self, path: &Path) -> Result<(), String> {
        let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode();
            if mode & 0o222 == 0 {
                return Err(format!(
                    "its mode is {:04o}, with no write bit",
                    mode & 0o7777
                ));
            }
            let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
                .map_err(|_| "the path contains a NUL byte".to_string())?;
            // SAFETY: c_path is a valid NUL-terminated string for the call's duration.
            let rc = unsafe { libc::access(c_path.as_ptr(), libc::W_OK) };
            if rc != 0 {
                return Err(std::io::Error::last_os_error().to_string());
            }
        }
        #[cfg(not(unix))]
        if meta.permissions().readonly() {
            return Err("it is marked read-only".to_string());
        }
        Ok(())
    }
}

/// The folder holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The write-ahead log SQLite keeps next to `path` while a writer has it open.
pub(crate) fn wal_path(path: &Path) -> PathBuf {
    let mut wal = path.as_os_str().to_owned();
    wal.push("-wal");
    PathBuf::from(wal)
}

/// SQLite writes the database, and its `-wal` and `-shm` files next to it.
pub fn check_writable(path: &Path, state: &FileState, fs: &dyn FsProbe) -> Result<(), StoreError> {
    let dir = parent_dir(path);
    if *state == FileState::Missing {
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(StoreError::MissingFolder {
                    path: path.to_path_buf(),
                    dir,
                });
            }
            Err(_) => {
                return Err(StoreError::MissingFolder {
                    path: path.to_path_buf(),
                    dir,
                });
            }
        }
    } else {
        fs.writable(path).map_err(|detail| StoreError::ReadOnly {
            path: path.to_path_buf(),
            detail: format!("the file cannot be written ({detail})"),
        })?;
    }
    fs.writable(&dir).map_err(|detail| StoreError::ReadOnly {
        path: path.to_path_buf(),
        detail: format!(
            "its folder {} cannot be written ({detail}); SQLite creates its -wal and -shm files there",
            dir.display()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct ReadOnlyFs;
    impl FsProbe for ReadOnlyFs {
        fn writable(&self, _path: &Path) -> Result<(), String> {
            Err("Read-only file system (os error 30)".into())
        }
    }

    #[test]
    fn a_read_only_disk_is_reported_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        let err = check_writable(&path, &FileState::Missing, &ReadOnlyFs).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, StoreError::ReadOnly { .. }), "{msg}");
        assert!(msg.contains(&path.display().to_string()), "{msg}");
        assert!(msg.contains("Read-only file system"), "{msg}");
    }

    #[test]
    fn a_missing_folder_is_named() {
        let path = Path::new("/nonexistent-flowpol-dir/sub/flows.db");
        let err = check_writable(path, &FileState::Missing, &RealFs).unwrap_err();
        assert!(matches!(err, StoreError::MissingFolder { .. }));
        assert!(err.to_string().contains("/nonexistent-flowpol-dir/sub"));
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_new_database_and_its_wal_are_private_to_the_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flows.db");
        let store = Store::open(&path).await.unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600, "{}", path.display());
        let wal = dir.path().join("flows.db-wal");
        assert!(wal.exists(), "WAL mode creates {}", wal.display());
        assert_eq!(mode(&wal), 0o600, "{}", wal.display());
        store.close().await;
    }

    #[test]
    fn every_migration_is_embedded() {
        assert!(MIGRATOR.iter().any(|m| m.version == 1));
    }
}
