//! Files that are not flowpol databases we may write are refused with an
//! error naming the path, and left byte-for-byte untouched (no side files).
#[path = "store_support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use flowpol::store::{FlowQuery, Store, StoreError};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{ConnectOptions, Connection};
use support::full_record;

/// Every file in `dir` with its bytes: equal snapshots mean nothing was
/// written, created or removed.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, (usize, u64)> {
    use std::hash::{Hash, Hasher};
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let bytes = std::fs::read(&p).unwrap();
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            (p, (bytes.len(), h.finish()))
        })
        .collect()
}

/// Tries both kinds of open and checks the refusal and the untouched folder.
async fn assert_refused(path: &Path, expect: fn(&StoreError) -> bool) {
    let dir = path.parent().unwrap();
    let before = snapshot(dir);
    let err = Store::open(path)
        .await
        .expect_err("open for writing must refuse");
    assert!(expect(&err), "unexpected error: {err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains(&path.display().to_string()),
        "no path in: {msg}"
    );
    assert_eq!(
        snapshot(dir),
        before,
        "open for writing changed the folder ({msg})"
    );
    let err = Store::open_read_only(path)
        .await
        .expect_err("read-only open must refuse");
    assert!(expect(&err), "unexpected read-only error: {err:?}");
    assert_eq!(snapshot(dir), before, "read-only open changed the folder");
}

/// A flowpol database with one flow, closed (WAL folded into the file).
async fn flowpol_db(dir: &Path) -> PathBuf {
    let path = dir.join("flows.db");
    let store = Store::open(&path).await.unwrap();
    store.write_flows(&[full_record()]).await.unwrap();
    store.close().await;
    wait_for_no_wal(&path).await;
    path
}

/// The last connection removes the (checkpointed, empty) WAL as it closes;
/// folder snapshots are only comparable once it has.
async fn wait_for_no_wal(path: &Path) {
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    for _ in 0..500 {
        if !wal.exists() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("{} still exists 5 s after close", wal.display());
}

/// Runs `sql` on `path` with a plain connection (as another program would).
async fn tamper(path: &Path, sql: &str) {
    let mut conn = SqliteConnectOptions::new()
        .filename(path)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(sql).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_text_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "shopping list: eggs, milk, and a lot more than 100 bytes of text so the header is long enough to be read in full by anyone\n").unwrap();
    assert_refused(&path, |e| matches!(e, StoreError::NotSqlite { .. })).await;
}

#[tokio::test]
async fn a_short_file_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tiny");
    std::fs::write(&path, b"SQLite format 3\0").unwrap();
    assert_refused(&path, |e| matches!(e, StoreError::NotSqlite { .. })).await;
}

#[tokio::test]
async fn another_applications_sqlite_database_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("app.db");
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);
         INSERT INTO users (name) VALUES ('ada'), ('grace');",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    assert_refused(
        &path,
        |e| matches!(e, StoreError::Foreign { detail, .. } if detail.contains("users")),
    )
    .await;
}

#[tokio::test]
async fn another_sqlx_application_with_its_own_id_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    let mut conn = SqliteConnectOptions::new()
        .filename(&path)
        .create_if_missing(true)
        .connect()
        .await
        .unwrap();
    sqlx::raw_sql(
        "PRAGMA application_id = 1234;
         CREATE TABLE _sqlx_migrations (version BIGINT PRIMARY KEY, description TEXT NOT NULL,
           installed_on TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP, success BOOLEAN NOT NULL,
           checksum BLOB NOT NULL, execution_time BIGINT NOT NULL);
         CREATE TABLE flows (x);",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
    assert_refused(
        &path,
        |e| matches!(e, StoreError::Foreign { detail, .. } if detail.contains("0x4d2")),
    )
    .await;
}

#[tokio::test]
async fn garbage_after_a_sqlite_header_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.db");
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend((0..8192u32).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
    std::fs::write(&path, bytes).unwrap();
    assert_refused(&path, |e| {
        matches!(e, StoreError::Corrupt { .. } | StoreError::NotSqlite { .. })
    })
    .await;
}

#[tokio::test]
async fn a_flowpol_database_with_a_damaged_page_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    let store = Store::open(&path).await.unwrap();
    let rows: Vec<_> = (0..3000)
        .map(|i| {
            let mut f = full_record();
            f.src.port = i as u16;
            f
        })
        .collect();
    store.write_flows(&rows).await.unwrap();
    store.close().await;
    wait_for_no_wal(&path).await;
    // Overwrite the middle of the file (table and index pages), keep page 1.
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    assert!(len > 64 * 1024, "database too small to damage: {len}");
    for b in &mut bytes[len / 2..len / 2 + 8192] {
        *b = 0x5a;
    }
    std::fs::write(&path, &bytes).unwrap();
    let before = snapshot(dir.path());
    let err = Store::open(&path)
        .await
        .expect_err("corrupt database must be refused");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains("flows.db"), "{err}");
    assert_eq!(snapshot(dir.path()), before);
}

#[tokio::test]
async fn a_database_from_a_newer_flowpol_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = flowpol_db(dir.path()).await;
    tamper(
        &path,
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990101000000, 'from the future', 1, x'00', 0);",
    )
    .await;
    assert_refused(&path, |e| {
        matches!(
            e,
            StoreError::NewerSchema {
                found: 99990101000000,
                ..
            }
        )
    })
    .await;
    let msg = Store::open(&path).await.unwrap_err().to_string();
    assert!(msg.contains("newer"), "{msg}");
}

#[tokio::test]
async fn a_migration_applied_from_different_sql_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = flowpol_db(dir.path()).await;
    tamper(
        &path,
        "UPDATE _sqlx_migrations SET checksum = x'0badc0de' WHERE version = 1;",
    )
    .await;
    assert_refused(&path, |e| {
        matches!(e, StoreError::SchemaMismatch { version: 1, .. })
    })
    .await;
}

#[tokio::test]
async fn a_half_applied_migration_is_refused_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let path = flowpol_db(dir.path()).await;
    tamper(
        &path,
        "UPDATE _sqlx_migrations SET success = 0 WHERE version = 1;",
    )
    .await;
    assert_refused(&path, |e| {
        matches!(e, StoreError::IncompleteMigration { version: 1, .. })
    })
    .await;
}

#[tokio::test]
async fn a_read_only_file_is_refused_for_writing_but_can_be_queried() {
    let dir = tempfile::tempdir().unwrap();
    let path = flowpol_db(dir.path()).await;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = Store::open(&path)
        .await
        .expect_err("read-only file must be refused");
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("flows.db") && msg.contains("0444"), "{msg}");
    assert_eq!(std::fs::read(&path).unwrap(), before);

    let store = Store::open_read_only(&path).await.unwrap();
    assert_eq!(
        store.query_flows(&FlowQuery::default()).await.unwrap(),
        vec![full_record()]
    );
    store.close().await;
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[tokio::test]
async fn a_read_only_folder_is_refused_before_creating_anything() {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let path = ro.join("flows.db");
    let err = Store::open(&path)
        .await
        .expect_err("read-only folder must be refused");
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(matches!(err, StoreError::ReadOnly { .. }), "{err:?}");
    assert!(err.to_string().contains("ro"), "{err}");
    assert!(snapshot(&ro).is_empty());
}

#[tokio::test]
async fn a_missing_folder_or_file_or_a_directory_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no/such/folder/flows.db");
    let err = Store::open(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::MissingFolder { .. }), "{err:?}");
    assert!(err.to_string().contains("no/such/folder"), "{err}");

    let path = dir.path().join("absent.db");
    let err = Store::open_read_only(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::Missing { .. }), "{err:?}");
    assert!(!path.exists(), "a read-only open created the file");

    let err = Store::open(dir.path()).await.unwrap_err();
    assert!(matches!(err, StoreError::IsDirectory { .. }), "{err:?}");
}

#[tokio::test]
async fn an_empty_file_becomes_a_flowpol_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    std::fs::write(&path, b"").unwrap();
    let err = Store::open_read_only(&path).await.unwrap_err();
    assert!(matches!(err, StoreError::NotSqlite { .. }), "{err:?}");
    let store = Store::open(&path).await.unwrap();
    store.write_flows(&[full_record()]).await.unwrap();
    store.close().await;
    let store = Store::open_read_only(&path).await.unwrap();
    assert_eq!(store.count_rows().await.unwrap(), 1);
}

#[tokio::test]
async fn a_database_left_by_a_killed_writer_opens_with_its_committed_rows() {
    // Copy the database and its WAL while a writer still holds them open:
    // what a SIGKILL leaves on disk.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("flows.db");
    let store = Store::open(&path).await.unwrap();
    store
        .write_flows(&[full_record(), full_record()])
        .await
        .unwrap();
    let copy = tempfile::tempdir().unwrap();
    for suffix in ["", "-wal"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            std::fs::copy(&from, copy.path().join(format!("flows.db{suffix}"))).unwrap();
        }
    }
    store.close().await;
    let copied = copy.path().join("flows.db");
    let reader = Store::open_read_only(&copied).await.unwrap();
    assert_eq!(reader.count_rows().await.unwrap(), 2);
    reader.close().await;
    let writer = Store::open(&copied).await.unwrap();
    assert_eq!(writer.count_rows().await.unwrap(), 2);
}

#[tokio::test]
async fn a_copy_in_a_read_only_folder_can_be_queried() {
    let dir = tempfile::tempdir().unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    let path = flowpol_db(&ro).await;
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o555)).unwrap();
    let result = async {
        let store = Store::open_read_only(&path).await?;
        let rows = store.query_flows(&FlowQuery::default()).await?;
        store.close().await;
        Ok::<_, StoreError>(rows)
    }
    .await;
    let after = snapshot(&ro);
    std::fs::set_permissions(&ro, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(result.unwrap(), vec![full_record()]);
    assert_eq!(after.len(), 1, "side files appeared: {after:?}");
}
