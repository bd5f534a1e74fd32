//! Decides, before anything is written, whether a path may be opened as a
//! flowpol database. Only reads: the header bytes with std::fs, then a
//! read-only SQLite connection. A file that is not ours is never modified.
use std::io::Read;
use std::path::Path;

use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection, Row, SqliteConnection};

use super::{APPLICATION_ID, StoreError};

const SQLITE_MAGIC: &[u8; 16] = b"SQLite format 3\0";

/// What was found at the database path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    /// Nothing there yet.
    Missing,
    /// An empty file or an empty SQLite database: safe to initialise.
    Fresh,
    /// A flowpol database whose applied migrations this binary knows.
    Flowpol { schema_version: i64 },
}

/// SQLite's primary result code of an sqlx error, when it has one.
pub fn sqlite_code(err: &sqlx::Error) -> Option<i32> {
    err.as_database_error()
        .and_then(|e| e.code())
        .and_then(|c| c.parse::<i32>().ok())
        .map(|c| c & 0xff)
}

const SQLITE_CORRUPT: i32 = 11;
const SQLITE_NOTADB: i32 = 26;

/// Maps an error met while reading a file we were asked to open.
fn read_error(path: &Path, op: &'static str, err: sqlx::Error) -> StoreError {
    match sqlite_code(&err) {
        Some(SQLITE_CORRUPT) | Some(SQLITE_NOTADB) => StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: err.to_string(),
        },
        _ => StoreError::Sqlite {
            path: path.to_path_buf(),
            op,
            source: err,
        },
    }
}

/// Inspects `path` without writing to it. `integrity_check` also runs
/// `PRAGMA quick_check` on an existing flowpol database (reads every page).
pub async fn inspect(
    path: &Path,
    migrator: &Migrator,
    integrity_check: bool,
) -> Result<FileState, StoreError> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileState::Missing),
        Err(e) => {
            return Err(StoreError::Io {
                path: path.to_path_buf(),
                what: "reading the file's metadata",
                source: e,
            });
        }
    };
    if meta.is_dir() {
        return Err(StoreError::IsDirectory {
            path: path.to_path_buf(),
        });
    }
    if !meta.is_file() {
        return Err(StoreError::NotSqlite {
            path: path.to_path_buf(),
            detail: "it is not a regular file".into(),
        });
    }
    let mut header = Vec::with_capacity(100);
    std::fs::File::open(path)
        .and_then(|f| f.take(100).read_to_end(&mut header))
        .map_err(|e| StoreError::Io {
            path: path.to_path_buf(),
            what: "reading the file header",
            source: e,
        })?;
    if header.is_empty() {
        return Ok(FileState::Fresh);
    }
    if header.len() < 100 || &header[..16] != SQLITE_MAGIC {
        return Err(StoreError::NotSqlite {
            path: path.to_path_buf(),
            detail: "it does not start with the SQLite file header".into(),
        });
    }

    // Without a WAL file nobody is writing (a flowpol writer keeps its WAL
    // while open): read as immutable, which creates no -wal/-shm files next
    // to a file that may not be ours. With a WAL, read through it.
    let writer_active = super::wal_path(path).exists();
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .read_only(true)
        .immutable(!writer_active)
        .create_if_missing(false)
        .connect()
        .await
        .map_err(|e| read_error(path, "opening read-only to inspect it", e))?;
    let result = inspect_open(path, &mut conn, migrator, integrity_check).await;
    // Closing a read-only connection writes nothing; its error cannot matter.
    let _ = conn.close().await;
    result
}

async fn inspect_open(
    path: &Path,
    conn: &mut SqliteConnection,
    migrator: &Migrator,
    integrity_check: bool,
) -> Result<FileState, StoreError> {
    let app_id: i32 = sqlx::query_scalar("PRAGMA application_id")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| read_error(path, "reading the application id", e))?;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| read_error(path, "listing tables", e))?;
    let objects: i64 = sqlx::query_scalar("SELECT count(*) FROM sqlite_schema")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| read_error(path, "listing schema objects", e))?;

    if app_id != APPLICATION_ID {
        if app_id == 0 && objects == 0 {
            return Ok(FileState::Fresh);
        }
        let mut names: Vec<&str> = tables.iter().map(String::as_str).take(5).collect();
        if tables.len() > 5 {
            names.push("...");
        }
        return Err(StoreError::Foreign {
            path: path.to_path_buf(),
            detail: format!(
                "application_id {app_id:#x}, tables: {}",
                if names.is_empty() {
                    "none".to_string()
                } else {
                    names.join(", ")
                }
            ),
        });
    }

    if !tables.iter().any(|t| t == "_sqlx_migrations") {
        // Our id is set first at creation; a crash before the first migration
        // leaves no tables at all. Anything else is not a state we produce.
        if objects == 0 {
            return Ok(FileState::Fresh);
        }
        return Err(StoreError::Corrupt {
            path: path.to_path_buf(),
            detail: "it carries flowpol's application id but has no migration table".into(),
        });
    }

    let applied = sqlx::query(
        "SELECT version, description, success, checksum FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(&mut *conn)
    .await
    .map_err(|e| read_error(path, "reading applied migrations", e))?;
    let known = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    let mut schema_version = 0;
    for row in &applied {
        let version: i64 = row
            .try_get(0)
            .map_err(|e| read_error(path, "reading applied migrations", e))?;
        let description: String = row
            .try_get(1)
            .map_err(|e| read_error(path, "reading applied migrations", e))?;
        let success: bool = row
            .try_get(2)
            .map_err(|e| read_error(path, "reading applied migrations", e))?;
        let checksum: Vec<u8> = row
            .try_get(3)
            .map_err(|e| read_error(path, "reading applied migrations", e))?;
        let Some(ours) = migrator.iter().find(|m| m.version == version) else {
            let found = applied
                .iter()
                .filter_map(|r| r.try_get::<i64, _>(0).ok())
                .max()
                .unwrap_or(version);
            return Err(StoreError::NewerSchema {
                path: path.to_path_buf(),
                found,
                known,
            });
        };
        if !success {
            return Err(StoreError::IncompleteMigration {
                path: path.to_path_buf(),
                version,
                description,
            });
        }
        if *ours.checksum != *checksum {
            return Err(StoreError::SchemaMismatch {
                path: path.to_path_buf(),
                version,
                description,
            });
        }
        schema_version = schema_version.max(version);
    }

    if integrity_check {
        let problems: Vec<String> = sqlx::query_scalar("PRAGMA quick_check(5)")
            .fetch_all(&mut *conn)
            .await
            .map_err(|e| read_error(path, "checking integrity", e))?;
        if problems.len() != 1 || problems[0] != "ok" {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                detail: format!("integrity check: {}", problems.join("; ")),
            });
        }
    }
    Ok(FileState::Flowpol { schema_version })
}
