//! The snippets of docs/durability.md, verbatim between their markers
//! (tests/tests/doc_snippets.rs checks it), with what makes them compile and run.

use fluxio::prelude::*;

// The pipeline of getting started, as the guide says.
use crate::common::*;

/// Compiled, not run: it would leave `fluxio.db` in the working directory.
#[allow(dead_code, unused_variables)]
async fn a_durable_pipeline() -> fluxio::Result<()> {
    // snippet: durability.md 1
    use fluxio::prelude::*;
    use fluxio::store::SqliteStore;           // features = ["sqlite"]

    let pipe = pipeline! {
        fetch_user,
        route => {
            "premium"  => [enrich_profile],
            "standard" => [fetch_orders],
        },
        stream_response,
    }
    .with_store(SqliteStore::open("fluxio.db").await?);

    // A fresh run (an earlier checkpoint with this id is replaced):
    let out = pipe
        .invoke(input! { user_id: 42, prompt: "hi".into() })
        .run_id("req-abc-123")
        .await?;

    // After a crash, in any process with the same pipeline:
    let out = pipe.resume("req-abc-123").await?;
    // the same as: pipe.invoke(Ctx::new()).run_id("req-abc-123").resume().await?
    // end snippet
    Ok(())
}

/// The idempotent charge: an order, its receipt, and a payments client that takes an
/// idempotency key.
mod idempotency {
    use super::*;

    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Order {
        pub id: u64,
        pub cents: u64,
    }

    #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    pub struct Receipt {
        pub order: u64,
        pub idempotency_key: String,
    }

    fluxio::keys! {
        pub order: Order;
        pub receipt: Receipt;
    }

    #[derive(Debug)]
    pub struct PaymentError;

    impl std::fmt::Display for PaymentError {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("payment declined")
        }
    }

    impl std::error::Error for PaymentError {}

    /// Charges each idempotency key once.
    #[derive(Default)]
    pub struct Payments {
        charged: std::sync::Mutex<std::collections::HashMap<String, Receipt>>,
    }

    impl Payments {
        pub async fn charge(&self, order: &Order, key: &str) -> Result<Receipt, PaymentError> {
            let mut charged = self.charged.lock().unwrap();
            let receipt = charged.entry(key.to_string()).or_insert_with(|| Receipt {
                order: order.id,
                idempotency_key: key.to_string(),
            });
            Ok(receipt.clone())
        }
    }

    // snippet: durability.md 2
    #[stage(reads = [order], writes = [receipt])]
    async fn charge(order: &Order, payments: Res<Payments>, info: RunInfo) -> Result<Receipt, StageError> {
        Ok(payments.charge(order, &info.idempotency_key()).await?)
    }
    // end snippet

    #[tokio::test]
    async fn the_idempotency_key_is_the_run_id_and_the_stage() {
        let pipe = pipeline! { charge }
            .with_store(InMemoryStore::new())
            .with_resource(Payments::default());
        let out = pipe
            .invoke(input! { order: Order { id: 42, cents: 1999 } })
            .run_id("order-42")
            .await
            .unwrap();
        assert_eq!(out[receipt].order, 42);
        assert_eq!(out[receipt].idempotency_key, "order-42:charge");
    }
}

/// Compiled, not run: it would leave `fluxio.db` in the working directory.
#[allow(dead_code)]
async fn sqlite_in_production() -> fluxio::Result<()> {
    // snippet: durability.md 3
    use fluxio::store::{SqliteOptions, SqliteStore, Synchronous};

    let store = SqliteStore::open_with(
        "fluxio.db",
        SqliteOptions::new().synchronous(Synchronous::Full),
    )
    .await?;
    // end snippet
    drop(store);
    Ok(())
}

/// A store of your own: `MyStore`, a client of some backend, here an `InMemoryStore`.
mod store_of_your_own {
    use fluxio::store::{ForwardStore, InMemoryStore};

    #[derive(Clone, Default)]
    pub struct MyStore(InMemoryStore);

    impl MyStore {
        pub async fn connect(_url: &str) -> Result<MyStore, std::io::Error> {
            Ok(MyStore::default())
        }
    }

    impl ForwardStore for MyStore {
        fn target(&self) -> &dyn fluxio::store::CheckpointStore {
            &self.0
        }
    }

    // snippet: durability.md 4
    use std::sync::Arc;
    use fluxio::store::{CheckpointStore, contract};

    #[tokio::test]
    async fn my_store_keeps_the_contract() {
        let store = MyStore::connect("...").await.unwrap();
        contract::check_store(|_check| {
            let store = store.clone();
            async move { Arc::new(store) as Arc<dyn CheckpointStore> }
        })
        .await; // panics listing every check the store fails
    }
    // end snippet
}

/// A store wrapped rather than written.
mod wrapped_store {
    use super::*;

    // snippet: durability.md 5
    use fluxio::store::{BoxFuture, CheckpointStore, ForwardStore, InMemoryStore, StoreResult};

    /// Releases locks slowly, as over a bad network.
    struct SlowRelease(InMemoryStore);

    impl ForwardStore for SlowRelease {
        fn target(&self) -> &dyn CheckpointStore {
            &self.0
        }
        fn release(&self, run_id: &str, owner: &str) -> BoxFuture<'static, StoreResult<()>> {
            // A store may do its work when called: call it only after the delay.
            let (store, run_id, owner) = (self.0.clone(), run_id.to_string(), owner.to_string());
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                store.release(&run_id, &owner).await
            })
        }
    }
    // end snippet

    #[tokio::test]
    async fn a_durable_run_on_the_wrapper() {
        let store = InMemoryStore::new();
        let pipe = pipeline! { fetch_user, enrich_profile }.with_store(SlowRelease(store.clone()));
        let out = pipe
            .invoke(input! { user_id: 7 })
            .run_id("slow-1")
            .await
            .unwrap();
        assert_eq!(out[profile], "Alice (pro)");
        // The run gave its lock back, through the wrapper: another owner can take it.
        let lease = Duration::from_secs(30);
        assert!(
            CheckpointStore::acquire(&store, "slow-1", "another", lease)
                .await
                .unwrap()
        );
    }
}
