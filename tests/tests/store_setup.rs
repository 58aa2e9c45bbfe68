//! Opening or connecting a store inside a function that returns `fluxio::Result`: `?`
//! turns the store's error into `Error::StoreSetup`, which keeps the store's message.

use fluxio::Error;
use fluxio::prelude::*;
use fluxio::store::{RedisStore, SqliteStore};

fluxio::keys! {
    pub n: u64;
    pub doubled: u64;
}

#[stage(reads = [n], writes = [doubled])]
fn double(n: &u64) -> u64 {
    n * 2
}

async fn on_sqlite(path: &std::path::Path) -> fluxio::Result<u64> {
    let pipe = pipeline! { double }.with_store(SqliteStore::open(path).await?);
    Ok(pipe.invoke(input! { n: 21 }).run_id("setup").await?[doubled])
}

#[tokio::test]
async fn a_sqlite_store_opens_with_question_mark() {
    let dir = std::env::temp_dir().join(format!("fluxio-store-setup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    assert_eq!(on_sqlite(&dir.join("runs.db")).await.unwrap(), 42);

    // A directory that does not exist: the store's own message, through `fluxio::Error`.
    let err = on_sqlite(&dir.join("missing").join("runs.db"))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("cannot open sqlite database") && text.contains("missing"),
        "{text}"
    );
    let Error::StoreSetup { source } = &err else {
        panic!("expected StoreSetup, got {err:?}");
    };
    assert!(
        matches!(
            source.downcast_ref::<fluxio::store::SqliteError>(),
            Some(fluxio::store::SqliteError::Open { .. })
        ),
        "the store's own error, for a program to match on: {source:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

async fn on_redis(url: &str) -> fluxio::Result<()> {
    let _pipe = pipeline! { double }.with_store(RedisStore::connect(url).await?);
    Ok(())
}

#[tokio::test]
async fn a_redis_store_connects_with_question_mark() {
    // Nothing listens on port 1; the URL's password must not show in the message.
    let err = on_redis("redis://:hunter2@127.0.0.1:1").await.unwrap_err();
    assert!(matches!(err, Error::StoreSetup { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("127.0.0.1:1") && !text.contains("hunter2"),
        "{text}"
    );
}

/// What the Redis store's API takes and gives can be named through the facade alone.
#[tokio::test]
async fn the_redis_stores_types_are_named_through_the_facade() {
    use fluxio::store::{REDIS_DEFAULT_KEY_PREFIX, RedisConnectionConfig, RedisRunKeys};
    let config: RedisConnectionConfig = RedisStore::default_config();
    let err = RedisStore::connect_with_config("redis://127.0.0.1:1", config)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    fn keys_of(store: &RedisStore, run: &str) -> RedisRunKeys {
        store.run_keys(run)
    }
    let _ = keys_of;
    assert_eq!(REDIS_DEFAULT_KEY_PREFIX, "fluxio:checkpoint");
}
