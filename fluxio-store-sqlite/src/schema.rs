//! The database schema, its embedded migrations, and the journal mode.
//!
//! Tables (version 2):
//!
//! - `runs(run_id TEXT PRIMARY KEY, version TEXT, status TEXT, error TEXT, updated_at_ms
//!   INTEGER)`: one row per run; `status` is `running`, `failed`, `completed`, `rolled_back`
//!   or `rolling_back`; `updated_at_ms` is set by the start and finish records (wall-clock
//!   milliseconds since the UNIX epoch).
//! - `run_headers(run_id TEXT PRIMARY KEY, header BLOB)`: the run's input, written by its
//!   start record (and a rewrite) only. It is kept out of `runs` because SQLite writes a
//!   whole row again when any of its columns changes: in `runs`, every status change wrote
//!   the whole input again.
//! - `entries(run_id TEXT, seq INTEGER, bytes BLOB, PRIMARY KEY (run_id, seq))`: one row per
//!   finished stage, `seq` counting from 0 in the order they were saved.
//! - `locks(run_id TEXT PRIMARY KEY, owner TEXT, expires_at_ms INTEGER)`: who holds a run's
//!   lock, and until when (wall-clock milliseconds since the UNIX epoch, so processes sharing
//!   the file agree).
//! - `fluxio_schema_version(id INTEGER PRIMARY KEY CHECK (id = 0), version INTEGER)`: the
//!   schema version, one row.
//!
//! Version 1 kept the input in a `header` column of `runs`; migration 2 moves it to
//! `run_headers`.

use std::path::Path;
use std::time::{Duration, Instant};

use sqlx::{Connection, SqliteConnection};

use crate::Error;

/// The schema version this crate writes.
pub(crate) const SCHEMA_VERSION: i64 = 2;

/// The statements that bring the schema from version `i` to `i + 1`, at index `i`.
const MIGRATIONS: &[&[&str]] = &[
    &[
        "CREATE TABLE IF NOT EXISTS runs (
            run_id TEXT PRIMARY KEY NOT NULL,
            version TEXT NOT NULL,
            status TEXT NOT NULL,
            error TEXT,
            header BLOB NOT NULL,
            updated_at_ms INTEGER NOT NULL
        )",
        "CREATE INDEX IF NOT EXISTS runs_by_status ON runs (status, updated_at_ms)",
        "CREATE TABLE IF NOT EXISTS entries (
            run_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            bytes BLOB NOT NULL,
            PRIMARY KEY (run_id, seq)
        )",
        "CREATE TABLE IF NOT EXISTS locks (
            run_id TEXT PRIMARY KEY NOT NULL,
            owner TEXT NOT NULL,
            expires_at_ms INTEGER NOT NULL
        )",
    ],
    &[
        "CREATE TABLE run_headers (
            run_id TEXT PRIMARY KEY NOT NULL,
            header BLOB NOT NULL
        )",
        "INSERT INTO run_headers (run_id, header) SELECT run_id, header FROM runs",
        // SQLite 3.35 and later (the bundled one is newer); `header` is in no index.
        "ALTER TABLE runs DROP COLUMN header",
    ],
];

const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS fluxio_schema_version (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    version INTEGER NOT NULL
)";

/// Whether `e` is SQLite's "database is busy / locked" (primary codes 5 and 6).
pub(crate) fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .and_then(|c| c.parse::<i32>().ok())
        .is_some_and(|c| matches!(c & 0xff, 5 | 6))
}

/// Puts the database in WAL journal mode (a setting stored in the file).
///
/// Switching into WAL needs an exclusive lock that SQLite's busy timeout does not wait for,
/// so a busy database is retried here until `busy_timeout` has passed.
pub(crate) async fn ensure_wal(
    conn: &mut SqliteConnection,
    path: &Path,
    busy_timeout: Duration,
) -> Result<(), Error> {
    let open_err = |source| Error::Open {
        path: path.to_path_buf(),
        source,
    };
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await
        .map_err(open_err)?;
    if mode.eq_ignore_ascii_case("wal") {
        return Ok(());
    }
    let deadline = Instant::now() + busy_timeout;
    loop {
        match sqlx::query_scalar::<_, String>("PRAGMA journal_mode = WAL")
            .fetch_one(&mut *conn)
            .await
        {
            Ok(mode) if mode.eq_ignore_ascii_case("wal") => return Ok(()),
            Ok(mode) => {
                return Err(Error::JournalMode {
                    path: path.to_path_buf(),
                    mode,
                });
            }
            Err(e) if is_busy(&e) && Instant::now() < deadline => pause().await,
            Err(e) => return Err(open_err(e)),
        }
    }
}

/// Waits a little without needing tokio's time driver (the runtime may not have one).
async fn pause() {
    let _ = tokio::task::spawn_blocking(|| std::thread::sleep(Duration::from_millis(20))).await;
}

/// The schema version stored in the file; 0 for a file without fluxio's tables.
async fn stored_version(conn: &mut SqliteConnection) -> Result<i64, sqlx::Error> {
    let has_table: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'fluxio_schema_version'",
    )
    .fetch_one(&mut *conn)
    .await?;
    if has_table == 0 {
        return Ok(0);
    }
    let version: Option<i64> =
        sqlx::query_scalar("SELECT version FROM fluxio_schema_version WHERE id = 0")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(version.unwrap_or(0))
}

/// How long an opener waits for another process's schema upgrade of the same file.
const MIGRATION_WAIT: Duration = Duration::from_secs(120);

/// Creates or upgrades the schema. A file already at the current version is only read, so
/// this works on read-only files too. Concurrent openers (other processes) are serialized by
/// the write lock `BEGIN IMMEDIATE` takes, and the version is read again under it. An
/// upgrade copies every run's input, which on a large file outlasts the busy timeout: an
/// opener waiting for it keeps trying for [`MIGRATION_WAIT`].
pub(crate) async fn migrate(conn: &mut SqliteConnection, path: &Path) -> Result<(), Error> {
    let migrate_err = |source| Error::Migrate {
        path: path.to_path_buf(),
        source,
    };
    let too_new = |found| Error::SchemaTooNew {
        path: path.to_path_buf(),
        found,
        supported: SCHEMA_VERSION,
    };
    let current = stored_version(conn).await.map_err(migrate_err)?;
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    if current > SCHEMA_VERSION {
        return Err(too_new(current));
    }
    let deadline = Instant::now() + MIGRATION_WAIT;
    let mut tx = loop {
        match conn.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => break tx,
            Err(e) if is_busy(&e) && Instant::now() < deadline => pause().await,
            Err(e) => return Err(migrate_err(e)),
        }
    };
    sqlx::query(CREATE_VERSION_TABLE)
        .execute(&mut *tx)
        .await
        .map_err(migrate_err)?;
    let current = stored_version(&mut tx).await.map_err(migrate_err)?;
    if current > SCHEMA_VERSION {
        return Err(too_new(current));
    }
    let from = usize::try_from(current).unwrap_or(0);
    for steps in MIGRATIONS.iter().skip(from) {
        for sql in *steps {
            sqlx::query(*sql)
                .execute(&mut *tx)
                .await
                .map_err(migrate_err)?;
        }
    }
    sqlx::query(
        "INSERT INTO fluxio_schema_version (id, version) VALUES (0, ?1)
         ON CONFLICT (id) DO UPDATE SET version = excluded.version",
    )
    .bind(SCHEMA_VERSION)
    .execute(&mut *tx)
    .await
    .map_err(migrate_err)?;
    tx.commit().await.map_err(migrate_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn there_is_one_migration_per_version() {
        assert_eq!(MIGRATIONS.len() as i64, SCHEMA_VERSION);
    }
}
