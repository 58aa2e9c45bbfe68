//! Several stores on one file (as several processes would open it), and what survives
//! closing and reopening the file.

mod common;

use std::time::Duration;

use common::{TempDb, shape};
use fluxio_core::store::{CheckpointStore, RunStatus, Save, StoredRun};
use fluxio_store_sqlite::{SqliteOptions, SqliteStore, Synchronous};

const LONG: Duration = Duration::from_secs(30);

fn start(version: &str) -> Save {
    Save::Start {
        version: version.into(),
        header: b"header".to_vec(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_on_one_file_see_each_others_runs_and_locks() {
    let db = TempDb::new("two-handles");
    let a = SqliteStore::open(db.path()).await.unwrap();
    let b = SqliteStore::open(db.path()).await.unwrap();

    assert!(a.acquire("r", "owner-a", LONG).await.unwrap());
    assert!(!b.acquire("r", "owner-b", LONG).await.unwrap());
    a.save("r", "owner-a", start("v1")).await.unwrap();
    a.save("r", "owner-a", Save::Entry(vec![1])).await.unwrap();

    assert!(b.exists("r").await.unwrap());
    let run = b.load("r").await.unwrap().expect("a's run");
    assert_eq!(run.entries, vec![vec![1]]);
    // b cannot write a's run, whichever owner name it uses for itself.
    let r = b.save("r", "owner-b", Save::Entry(vec![2])).await;
    assert_eq!(shape(&r), "lock-lost");
    // The lock is per owner, not per handle: a token held through a is valid through b.
    b.save("r", "owner-a", Save::Entry(vec![3])).await.unwrap();

    a.release("r", "owner-a").await.unwrap();
    assert!(b.acquire("r", "owner-b", LONG).await.unwrap());
    let r = a.save("r", "owner-a", Save::Entry(vec![4])).await;
    assert_eq!(shape(&r), "lock-lost");
    b.save(
        "r",
        "owner-b",
        Save::Finish {
            status: RunStatus::Completed,
            error: None,
        },
    )
    .await
    .unwrap();

    let run = a.load("r").await.unwrap().expect("the run");
    assert_eq!(run.status, RunStatus::Completed);
    assert_eq!(run.entries, vec![vec![1], vec![3]]);
    // Locked through b, the run is not deleted through a (nor through b).
    assert_eq!(shape(&a.delete("r").await), "run-locked(r)");
    assert_eq!(shape(&b.delete("r").await), "run-locked(r)");
    assert!(a.exists("r").await.unwrap());
    b.release("r", "owner-b").await.unwrap();
    a.delete("r").await.unwrap();
    assert!(!b.exists("r").await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_stores_writing_one_file_concurrently_lose_nothing() {
    let db = TempDb::new("two-writers");
    let a = SqliteStore::open(db.path()).await.unwrap();
    let b = SqliteStore::open(db.path()).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for (i, store) in [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
    {
        tasks.spawn(async move {
            let run = format!("run-{i}");
            assert!(store.acquire(&run, &run, LONG).await.unwrap());
            store.save(&run, &run, start("v")).await.unwrap();
            for n in 0u8..50 {
                store.save(&run, &run, Save::Entry(vec![n])).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    for i in 0..4 {
        let run = a.load(&format!("run-{i}")).await.unwrap().expect("a run");
        let expected: Vec<Vec<u8>> = (0u8..50).map(|n| vec![n]).collect();
        assert_eq!(run.entries, expected);
    }
}

async fn write_a_run(store: &SqliteStore) -> StoredRun {
    assert!(store.acquire("r", "a", LONG).await.unwrap());
    store.save("r", "a", start("v7")).await.unwrap();
    for n in 0u8..10 {
        store
            .save("r", "a", Save::Entry(vec![n; 100]))
            .await
            .unwrap();
    }
    store
        .save(
            "r",
            "a",
            Save::Finish {
                status: RunStatus::Failed,
                error: Some("stage `x` failed".into()),
            },
        )
        .await
        .unwrap();
    store.load("r").await.unwrap().expect("the run")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_and_locks_survive_closing_and_reopening_the_file() {
    let db = TempDb::new("reopen");
    let store = SqliteStore::open(db.path()).await.unwrap();
    let before = write_a_run(&store).await;
    drop(store);

    let store = SqliteStore::open(db.path()).await.unwrap();
    assert_eq!(store.load("r").await.unwrap(), Some(before));
    // The lock is in the file too.
    assert!(!store.acquire("r", "b", LONG).await.unwrap());
    store.save("r", "a", Save::Entry(vec![42])).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_synchronous_mode_round_trips_too() {
    let db = TempDb::new("full");
    let options = SqliteOptions::new()
        .synchronous(Synchronous::Full)
        .busy_timeout(Duration::from_secs(2))
        .read_connections(1)
        .max_batch(8);
    let store = SqliteStore::open_with(db.path(), options.clone())
        .await
        .unwrap();
    let before = write_a_run(&store).await;
    drop(store);
    let store = SqliteStore::open_with(db.path(), options).await.unwrap();
    assert_eq!(store.load("r").await.unwrap(), Some(before));
}

#[test]
fn a_store_reopened_in_a_new_runtime_reads_what_the_old_runtime_wrote() {
    // As a new process would: the first runtime (and its writer task) is gone entirely.
    let db = TempDb::new("new-runtime");
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let before = rt().block_on(async {
        let store = SqliteStore::open(db.path()).await.unwrap();
        write_a_run(&store).await
    });
    let after = rt().block_on(async {
        let store = SqliteStore::open(db.path()).await.unwrap();
        store.load("r").await.unwrap()
    });
    assert_eq!(after, Some(before));
}

#[test]
fn dropping_the_last_handle_stops_the_writer_and_closes_the_file() {
    let db = TempDb::new("last-handle");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(db.path()).await.unwrap();
        let clone = store.clone();
        write_a_run(&store).await;
        assert!(clone.exists("r").await.unwrap());
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert!(alive >= 1, "the writer task runs");
        drop(store);
        // A clone keeps the writer.
        clone.save("r", "a", Save::Entry(vec![9])).await.unwrap();
        drop(clone);
        for _ in 0..100 {
            if tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks()
                == 0
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            tokio::runtime::Handle::current()
                .metrics()
                .num_alive_tasks(),
            0
        );
    });
    // Every connection closed: no descriptor of this process is left on the database, its
    // log or its shared memory (connections close on their own threads, so allow a moment
    // — up to 10 s on a loaded machine). Whether the log file itself is gone is not
    // checked: when the last two connections close at the same time, neither may get the
    // lock to fold it in (SQLite recovers it at the next open), so that does not tell.
    #[cfg(not(target_os = "linux"))]
    eprintln!("not checked here: which files the process holds open (Linux's /proc only)");
    #[cfg(target_os = "linux")]
    let mut open = Vec::new();
    #[cfg(target_os = "linux")]
    for _ in 0..1_000 {
        open = open_files_under(db.path());
        if open.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    #[cfg(target_os = "linux")]
    assert!(
        open.is_empty(),
        "still open after the store was dropped: {open:?}"
    );
}

/// The files this process has open whose path starts with `db`'s (the database, `-wal`,
/// `-shm`), from `/proc/self/fd`.
#[cfg(target_os = "linux")]
fn open_files_under(db: &std::path::Path) -> Vec<std::path::PathBuf> {
    let fds = std::fs::read_dir("/proc/self/fd").expect("Linux has /proc/self/fd");
    let db = std::fs::canonicalize(db).unwrap_or_else(|_| db.to_path_buf());
    fds.filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(&*db.to_string_lossy()))
        .collect()
}
