//! The ownership time line in SQLite (`identity_intervals`, migration 0002), so flows resolve
//! after a restart and deleted objects stay resolvable for the retention period.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use sqlx::{Row, SqlitePool};

use super::timeline::{Change, Interval, Key, Millis, OPEN, Owner, Timeline};

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("identity database {path}: {source}")]
    Open { path: PathBuf, source: sqlx::Error },
    #[error("identity database {path}: schema migration failed: {source}")]
    Migrate {
        path: PathBuf,
        source: sqlx::migrate::MigrateError,
    },
    #[error("identity database: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("identity database row {key:?} from {from}: {error}")]
    BadRow {
        key: String,
        from: Millis,
        error: String,
    },
}

#[derive(Clone)]
pub struct IdentityDb {
    pool: SqlitePool,
}

impl IdentityDb {
    /// Opens (creating if missing) the database at `path` and applies the migrations.
    pub async fn open(path: &Path) -> Result<Self, PersistError> {
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .map_err(|source| PersistError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        sqlx::migrate!("../migrations")
            .run(&pool)
            .await
            .map_err(|source| PersistError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Self { pool })
    }

    /// Uses a pool whose database already has the migrations applied (the store's).
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self { pool }
    }

    /// Writes time line changes in one transaction.
    pub async fn write(&self, changes: &[Change]) -> Result<(), PersistError> {
        let mut tx = self.pool.begin().await?;
        for c in changes {
            match c {
                Change::Open {
                    key,
                    from,
                    holder,
                    owner,
                } => {
                    let json = serde_json::to_string(owner.as_ref()).map_err(|e| {
                        PersistError::BadRow {
                            key: key.to_string(),
                            from: *from,
                            error: e.to_string(),
                        }
                    })?;
                    sqlx::query(
                        "INSERT OR REPLACE INTO identity_intervals \
                         (key, valid_from, valid_to, holder, owner) VALUES (?, ?, NULL, ?, ?)",
                    )
                    .bind(key.to_string())
                    .bind(from)
                    .bind(holder)
                    .bind(json)
                    .execute(&mut *tx)
                    .await?;
                }
                Change::Close { key, from, to } => {
                    sqlx::query(
                        "UPDATE identity_intervals SET valid_to = ? WHERE key = ? AND valid_from = ?",
                    )
                    .bind(to)
                    .bind(key.to_string())
                    .bind(from)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Reads back every interval still open or ended at or after `since`.
    pub async fn load(&self, since: Millis) -> Result<Timeline, PersistError> {
        let rows = sqlx::query(
            "SELECT key, valid_from, valid_to, holder, owner FROM identity_intervals \
             WHERE valid_to IS NULL OR valid_to >= ? ORDER BY key, valid_from",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        let mut tl = Timeline::new();
        // Owners are shared between keys of one object; share them in memory too.
        let mut last: Option<(String, Arc<Owner>)> = None;
        for row in rows {
            let key_text: String = row.try_get("key")?;
            let from: i64 = row.try_get("valid_from")?;
            let to: Option<i64> = row.try_get("valid_to")?;
            let holder: String = row.try_get("holder")?;
            let json: String = row.try_get("owner")?;
            let bad = |error: String| PersistError::BadRow {
                key: key_text.clone(),
                from,
                error,
            };
            let key = Key::from_str(&key_text).map_err(bad)?;
            let owner = match &last {
                Some((j, o)) if *j == json => o.clone(),
                _ => {
                    let o: Arc<Owner> =
                        Arc::new(serde_json::from_str(&json).map_err(|e| bad(e.to_string()))?);
                    last = Some((json, o.clone()));
                    o
                }
            };
            tl.insert_row(
                key,
                Interval {
                    from,
                    to: to.unwrap_or(OPEN),
                    holder,
                    owner,
                },
            );
        }
        Ok(tl)
    }

    /// Deletes intervals that ended before `before`.
    pub async fn prune(&self, before: Millis) -> Result<u64, PersistError> {
        let r = sqlx::query(
            "DELETE FROM identity_intervals WHERE valid_to IS NOT NULL AND valid_to < ?",
        )
        .bind(before)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}
