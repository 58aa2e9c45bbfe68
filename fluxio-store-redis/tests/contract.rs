//! The `CheckpointStore` contract (`fluxio_core::store::contract`, which `InMemoryStore`
//! passes too) on `RedisStore` against a real Redis server.

#[macro_use]
mod common;

use std::sync::Arc;

use fluxio_core::store::{CheckpointStore, contract};

#[tokio::test]
async fn redis_keeps_the_store_contract() {
    let redis = redis_or_skip!("redis_keeps_the_store_contract");
    contract::check_store(|_check| {
        let store = redis.store.clone();
        async move { Arc::new(store) as Arc<dyn CheckpointStore> }
    })
    .await;
}
