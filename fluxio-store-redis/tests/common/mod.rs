//! Shared helpers of the integration tests: a store on the Redis server under test with its
//! own key prefix (cleaned up on drop). The rest (the server's URL, skipping or failing
//! when it is down, private `redis-server` processes) is `fluxio-testkit`.
//!
//! The server is `FLUXIO_REDIS_URL` (default `redis://127.0.0.1:6379`). When it cannot be
//! reached, tests fail if `CI=true` and are skipped (with a loud message) otherwise.

// Each test binary uses a part of these helpers.
#![allow(dead_code, unused_macros, unused_imports)]

use std::time::Duration;

use fluxio_store_redis::RedisStore;
pub(crate) use fluxio_testkit::{
    RedisServer, delete_keys, free_port, redis_url as url, skip_or_fail, unique_prefix,
};

/// A store on the server under test with its own key prefix; its keys are deleted on drop.
pub(crate) struct TestRedis {
    pub(crate) store: RedisStore,
    pub(crate) prefix: String,
    pub(crate) url: String,
    /// Extra keys to delete on drop (keys outside the prefix).
    pub(crate) extra_keys: Vec<String>,
}

impl TestRedis {
    /// Connects, or returns `None` after [`skip_or_fail`] when the server is unreachable.
    pub(crate) async fn connect(test: &str) -> Option<TestRedis> {
        let url = url();
        let connected = tokio::time::timeout(Duration::from_secs(10), RedisStore::connect(&url));
        match connected.await {
            Ok(Ok(store)) => {
                let prefix = unique_prefix(test);
                Some(TestRedis {
                    store: store.key_prefix(prefix.clone()),
                    prefix,
                    url,
                    extra_keys: Vec::new(),
                })
            }
            Ok(Err(e)) => {
                skip_or_fail(&format!("redis unreachable at {url}: {e}"));
                None
            }
            Err(_) => {
                skip_or_fail(&format!("redis unreachable at {url}: connect timed out"));
                None
            }
        }
    }

    /// Another store, on its own connection (as another process would have), with the same
    /// prefix.
    pub(crate) async fn second_store(&self) -> RedisStore {
        RedisStore::connect(&self.url)
            .await
            .expect("second connection")
            .key_prefix(self.prefix.clone())
    }

    /// A plain connection for looking at the keys.
    pub(crate) async fn raw(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("raw connection")
    }
}

impl Drop for TestRedis {
    fn drop(&mut self) {
        if let Err(e) = delete_keys(&self.url, &format!("{}*", self.prefix), &self.extra_keys) {
            eprintln!("warning: could not delete the keys of {}: {e}", self.prefix);
        }
    }
}

/// Connects a test or returns from it (skipping, or failing in CI, when Redis is down).
macro_rules! redis_or_skip {
    ($test:expr) => {
        match $crate::common::TestRedis::connect($test).await {
            Some(redis) => redis,
            None => return,
        }
    };
}

/// The hash tag of `key` as Redis Cluster computes it: the text between the first `{` and
/// the first `}` after it, if not empty; else the whole key.
pub(crate) fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(len) = key[open + 1..].find('}')
        && len > 0
    {
        return &key[open + 1..open + 1 + len];
    }
    key
}
