//! Bad environments give clear errors, never panics.

mod common;

use std::future::Future;
use std::path::Path;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use common::{TempDb, shape};
use fluxio_core::store::{CheckpointStore, Save, StoreError};
use fluxio_store_sqlite::{Error, SqliteOptions, SqliteStore};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};

const LONG: Duration = Duration::from_secs(30);

async fn raw(path: &Path) -> SqliteConnection {
    SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true),
    )
    .await
    .unwrap()
}

fn assert_open_error(result: Result<SqliteStore, Error>, path: &Path) {
    match result {
        Err(e @ Error::Open { .. }) => {
            let Error::Open { path: p, .. } = &e else {
                unreachable!()
            };
            assert_eq!(p, path);
            let msg = e.to_string();
            eprintln!("{msg}");
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.starts_with("cannot open sqlite database"), "{msg}");
        }
        other => panic!("expected Error::Open, got {other:?}"),
    }
}

#[tokio::test]
async fn a_path_in_a_missing_directory_is_an_open_error_naming_it() {
    let dir = TempDb::new("missing-dir");
    let path = dir.path().join("sub").join("store.db");
    assert_open_error(SqliteStore::open(&path).await, &path);
}

#[tokio::test]
async fn a_directory_is_an_open_error_naming_it() {
    let dir = TempDb::new("dir");
    std::fs::create_dir(dir.path()).unwrap();
    let result = SqliteStore::open(dir.path()).await;
    std::fs::remove_dir(dir.path()).unwrap();
    assert_open_error(result, dir.path());
}

#[tokio::test]
async fn a_file_that_is_not_a_database_is_an_open_error() {
    let db = TempDb::new("not-a-db");
    std::fs::write(db.path(), vec![b'x'; 4096]).unwrap();
    assert_open_error(SqliteStore::open(db.path()).await, db.path());
}

#[tokio::test]
async fn read_only_mode_reads_and_refuses_writes_naming_the_operation() {
    // SQLite's read-only open mode (`SqliteOptions::read_only`, i.e. `?mode=ro`): it
    // refuses writes whoever runs the test, unlike file permissions, which root bypasses.
    let db = TempDb::new("read-only");
    {
        let store = SqliteStore::open(db.path()).await.unwrap();
        assert!(store.acquire("r", "a", LONG).await.unwrap());
        store
            .save(
                "r",
                "a",
                Save::Start {
                    version: "v".into(),
                    header: vec![1],
                },
            )
            .await
            .unwrap();
    }
    let store = SqliteStore::open_with(db.path(), SqliteOptions::new().read_only(true))
        .await
        .unwrap();
    assert!(store.exists("r").await.unwrap());
    assert_eq!(store.load("r").await.unwrap().unwrap().header, vec![1]);

    let r = store.save("r", "a", Save::Entry(vec![2])).await;
    assert_eq!(shape(&r), "backend(save)");
    let msg = r.unwrap_err().to_string();
    assert!(msg.starts_with("save failed: "), "{msg}");
    assert!(msg.contains("readonly"), "{msg}");
    let r = store.acquire("other", "a", LONG).await;
    assert_eq!(shape(&r), "backend(acquire)");
    let r = store.release("r", "a").await;
    assert_eq!(shape(&r), "backend(release)");
    assert!(matches!(
        store.purge_finished(Duration::ZERO).await,
        Err(Error::Sqlx(_))
    ));
    // A listing works (it waits for the writer's queue first), also asked beside a write
    // the store refuses, in one batch of the writer.
    let (refused, listed) = tokio::join!(
        store.save("r", "a", Save::Entry(vec![3])),
        store.list_runs(&[])
    );
    assert_eq!(shape(&refused), "backend(save)");
    assert_eq!(listed.unwrap().len(), 1);
    // Nothing changed.
    assert_eq!(store.load("r").await.unwrap().unwrap().entries.len(), 0);
}

#[tokio::test]
async fn read_only_mode_on_a_missing_file_is_an_open_error() {
    let db = TempDb::new("read-only-missing");
    let result = SqliteStore::open_with(db.path(), SqliteOptions::new().read_only(true)).await;
    assert_open_error(result, db.path());
}

#[cfg(unix)]
#[tokio::test]
async fn a_read_only_file_refuses_writes_with_an_error() {
    use std::os::unix::fs::PermissionsExt;

    let db = TempDb::new("chmod");
    drop(SqliteStore::open(db.path()).await.unwrap());
    // Give the writer task a moment to close its connection (SQLite then folds the log
    // into the file and removes it).
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::set_permissions(db.path(), std::fs::Permissions::from_mode(0o444)).unwrap();
    let writable = std::fs::OpenOptions::new()
        .append(true)
        .open(db.path())
        .is_ok();
    if writable {
        // Running as root: permissions do not stop writes. The read-only open mode test
        // above covers refused writes in that case.
        eprintln!("file permissions are not enforced for this user; skipping");
        return;
    }
    // Either the open fails (SQLite cannot set up the log of a read-only file), or the
    // first write does: both say so.
    match SqliteStore::open(db.path()).await {
        Err(e) => {
            eprintln!("{e}");
            assert!(
                e.to_string().contains(&db.path().display().to_string()),
                "{e}"
            );
        }
        Ok(store) => {
            let r = store.acquire("r", "a", LONG).await;
            eprintln!("{r:?}");
            assert_eq!(shape(&r), "backend(acquire)", "{r:?}");
        }
    }
}

#[test]
fn opening_outside_a_tokio_runtime_is_an_error() {
    let db = TempDb::new("no-runtime");
    let mut open = pin!(SqliteStore::open(db.path()));
    let mut cx = Context::from_waker(Waker::noop());
    match open.as_mut().poll(&mut cx) {
        Poll::Ready(Err(Error::NoRuntime)) => {}
        other => panic!("expected NoRuntime, got {other:?}"),
    }
}

#[test]
fn a_store_whose_runtime_shut_down_reports_its_writer_stopped() {
    let db = TempDb::new("runtime-gone");
    let first = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = first.block_on(SqliteStore::open(db.path())).expect("open");
    drop(first);
    let second = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let r = second.block_on(store.acquire("r", "a", LONG));
    assert_eq!(shape(&r), "backend(acquire)");
    let msg = r.unwrap_err().to_string();
    assert!(msg.contains("writer task has stopped"), "{msg}");
}

#[tokio::test]
async fn the_file_is_in_wal_mode_with_a_schema_version() {
    let db = TempDb::new("wal");
    let _store = SqliteStore::open(db.path()).await.unwrap();
    let mut conn = raw(db.path()).await;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(mode.to_lowercase(), "wal");
    let version: i64 = sqlx::query_scalar("SELECT version FROM fluxio_schema_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(version, 2);
}

#[tokio::test]
async fn a_schema_from_a_newer_version_is_refused() {
    let db = TempDb::new("too-new");
    drop(SqliteStore::open(db.path()).await.unwrap());
    let mut conn = raw(db.path()).await;
    sqlx::query("UPDATE fluxio_schema_version SET version = 99")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    match SqliteStore::open(db.path()).await {
        Err(e @ Error::SchemaTooNew { found: 99, .. }) => {
            assert!(e.to_string().contains("schema version 99"), "{e}");
        }
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn reopening_an_existing_file_keeps_its_data_and_other_tables() {
    let db = TempDb::new("foreign-tables");
    let mut conn = raw(db.path()).await;
    sqlx::query("CREATE TABLE app_data (x INTEGER)")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("INSERT INTO app_data VALUES (7)")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    drop(SqliteStore::open(db.path()).await.unwrap());
    let _again = SqliteStore::open(db.path()).await.unwrap();
    let mut conn = raw(db.path()).await;
    let x: i64 = sqlx::query_scalar("SELECT x FROM app_data")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(x, 7);
}

#[tokio::test]
async fn a_run_with_an_unknown_status_is_a_corrupt_checkpoint() {
    let db = TempDb::new("bad-status");
    let store = SqliteStore::open(db.path()).await.unwrap();
    assert!(store.acquire("r", "a", LONG).await.unwrap());
    store
        .save(
            "r",
            "a",
            Save::Start {
                version: "v".into(),
                header: vec![],
            },
        )
        .await
        .unwrap();
    let mut conn = raw(db.path()).await;
    // Not a store failure to retry: a record the store did not write — an unknown status,
    // then a column of another type than the store writes.
    for (edit, expected) in [
        (
            &["UPDATE runs SET status = 'paused'"][..],
            "unknown status `paused`",
        ),
        (
            &[
                "UPDATE runs SET status = 'running'",
                "UPDATE run_headers SET header = 5",
            ],
            // The column is named.
            "\"header\"",
        ),
        (&["DELETE FROM run_headers"], "its input"),
    ] {
        for sql in edit {
            sqlx::query(*sql).execute(&mut conn).await.unwrap();
        }
        match store.load("r").await {
            Err(StoreError::Corrupt { run_id, reason }) => {
                assert_eq!(run_id, "r");
                assert!(reason.contains(expected), "{reason}");
            }
            other => panic!("expected a corrupt checkpoint after {edit:?}, got {other:?}"),
        }
    }
}

/// A listing reads every run, so a row it cannot read fails it; the error names that run (so
/// it can be looked at and deleted), as `load` does, and is not a backend failure to retry.
#[tokio::test]
async fn a_listed_run_whose_row_does_not_read_back_is_corrupt_and_named() {
    let db = TempDb::new("bad-listing");
    let store = SqliteStore::open(db.path()).await.unwrap();
    for run in ["good", "badver"] {
        assert!(store.acquire(run, "a", LONG).await.unwrap());
        store.save(run, "a", Save::start("v", b"h")).await.unwrap();
    }
    let mut conn = raw(db.path()).await;
    for (edit, expected_run, column) in [
        // A version that is not UTF-8 text.
        (
            "UPDATE runs SET version = CAST(X'FF' AS TEXT) WHERE run_id = 'badver'",
            "badver",
            "\"version\"",
        ),
        // A run id that is not UTF-8 text itself: named as best it can be.
        (
            "UPDATE runs SET version = 'v', run_id = CAST(X'62FF' AS TEXT) WHERE run_id = 'badver'",
            "b\u{FFFD}",
            "\"run_id\"",
        ),
    ] {
        sqlx::query(edit).execute(&mut conn).await.unwrap();
        match store.list_runs(&[]).await {
            Err(StoreError::Corrupt { run_id, reason }) => {
                assert_eq!(run_id, expected_run, "after `{edit}`");
                assert!(reason.contains("does not read back"), "{reason}");
                assert!(reason.contains(column), "the column is named: {reason}");
            }
            other => panic!("expected a corrupt run after `{edit}`, got {other:?}"),
        }
    }
}

/// Another connection holds the database locked (an exclusive transaction) for longer than
/// the store's busy timeout: the write fails with an error naming the operation and
/// SQLite's "locked" message, and succeeds once the lock is gone.
#[tokio::test]
async fn a_locked_database_is_a_clear_error_and_writes_resume_once_unlocked() {
    let db = TempDb::new("locked");
    let store = SqliteStore::open_with(
        db.path(),
        SqliteOptions::new().busy_timeout(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    assert!(store.acquire("run", "me", LONG).await.unwrap());

    let mut other = raw(db.path()).await;
    sqlx::query("BEGIN EXCLUSIVE")
        .execute(&mut other)
        .await
        .unwrap();
    let start = Save::Start {
        version: "v".into(),
        header: vec![1],
    };
    let err = store.save("run", "me", start.clone()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            StoreError::Backend {
                operation: "save",
                ..
            }
        ),
        "{msg}"
    );
    assert!(msg.contains("locked") || msg.contains("busy"), "{msg}");

    sqlx::query("COMMIT").execute(&mut other).await.unwrap();
    store.save("run", "me", start).await.unwrap();
    assert!(store.exists("run").await.unwrap());
}
