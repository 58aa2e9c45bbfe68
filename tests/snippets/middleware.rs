//! The snippets of docs/middleware.md, verbatim between their markers
//! (tests/tests/doc_snippets.rs checks it), with what makes them compile and run.

use std::sync::Arc;

use fluxio::prelude::*;

// The stages of getting started.
use crate::common::*;

fn every_middleware() -> Pipeline {
    // snippet: middleware.md 1
    let pipe = pipeline! { fetch_user, parallel { enrich_profile, fetch_orders } }
        .with_middleware(CircuitBreaker::new(5))            // outermost
        .with_middleware(Retry::exponential(3))
        .with_middleware(Cache::ttl(Duration::from_secs(60)))
        .with_middleware(RateLimit::per_second(50.0))
        .with_middleware(Timeout::new(Duration::from_secs(10)));  // innermost
    // end snippet
    pipe
}

fn scoped_middleware() -> Pipeline {
    // snippet: middleware.md 2
    let pipe = pipeline! { fetch_user, parallel { enrich_profile, fetch_orders } }
        .with_middleware(Retry::exponential(3).except(fetch_orders))    // not idempotent
        .with_middleware(Cache::ttl(Duration::from_secs(60)).only(enrich_profile));
    // end snippet
    pipe
}

#[tokio::test]
async fn scoped_middleware_runs() {
    let out = scoped_middleware().invoke(input! { user_id: 7 }).await.unwrap();
    assert_eq!(&out[profile][..], "Alice (pro)");
}

#[tokio::test]
async fn every_middleware_runs() {
    let pipe = every_middleware();
    let out = pipe.invoke(input! { user_id: 7 }).await.unwrap();
    assert_eq!(
        (&out[profile][..], &out[orders][..]),
        ("Alice (pro)", &[70][..])
    );
}

mod maintenance {
    // snippet: middleware.md 3
    use fluxio::middleware::{Middleware, Next, StageCall};
    use fluxio::store::BoxFuture;
    use fluxio::{StageError, StageOutput};

    /// Stageflow-style interceptor: skip stages during maintenance, log the others.
    struct Maintenance { on: std::sync::atomic::AtomicBool }

    impl Middleware for Maintenance {
        fn handle<'a>(&'a self, call: StageCall<'a>, next: Next<'a>)
            -> BoxFuture<'a, Result<StageOutput, StageError>>
        {
            if self.on.load(std::sync::atomic::Ordering::Relaxed) && call.meta.name == "send_email" {
                // Short-circuit with an explicit outcome: never a silent success.
                return Box::pin(std::future::ready(Ok(StageOutput::Skip("maintenance".into()))));
            }
            Box::pin(async move {
                tracing::info!(stage = call.meta.name, attempt = call.attempt, "before");
                let out = next.run(call).await;   // call it once, several times, or not at all
                tracing::info!(stage = call.meta.name, ok = out.is_ok(), "after");
                out
            })
        }
    }
    // end snippet

    use fluxio::prelude::*;

    fluxio::keys! {
        pub address: String;
        pub sent: bool;
        pub greeting: String;
    }

    #[stage(reads = [address], writes = [sent])]
    async fn send_email(address: &String) -> bool {
        !address.is_empty()
    }

    #[stage(reads = [address], writes = [greeting])]
    async fn greet(address: &String) -> String {
        format!("hello, {address}")
    }

    async fn run(on: bool) -> Ctx {
        let pipe = pipeline! { send_email, greet }.with_middleware(Maintenance { on: on.into() });
        pipe.invoke(input! { address: "a@example.com".into() })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn maintenance_skips_send_email() {
        let out = run(true).await;
        assert!(!out.contains(sent));
        assert_eq!(out[greeting], "hello, a@example.com");
        assert!(run(false).await[sent]);
    }
}

mod recovery {
    use super::*;

    fluxio::keys! {
        pub order_id: u64;
        pub price: u64;
        pub charged: bool;
        pub shipped: bool;
    }

    #[derive(Debug)]
    pub struct Unavailable(&'static str);

    impl std::fmt::Display for Unavailable {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{} is unavailable", self.0)
        }
    }

    impl std::error::Error for Unavailable {}

    /// A pricing service that is down; the last quotes it gave are kept.
    pub struct Pricing {
        last: std::collections::HashMap<u64, u64>,
    }

    impl Pricing {
        pub async fn quote(&self, _order_id: u64) -> Result<u64, Unavailable> {
            Err(Unavailable("pricing"))
        }

        pub fn last_quote(&self, order_id: u64) -> Option<u64> {
            self.last.get(&order_id).copied()
        }
    }

    /// A payments client that records charges and refunds.
    #[derive(Default)]
    pub struct Payments {
        log: std::sync::Mutex<Vec<String>>,
    }

    impl Payments {
        pub async fn charge(&self, order_id: u64) -> Result<(), Unavailable> {
            self.log.lock().unwrap().push(format!("charge {order_id}"));
            Ok(())
        }

        pub async fn refund(&self, order_id: u64) -> Result<(), Unavailable> {
            self.log.lock().unwrap().push(format!("refund {order_id}"));
            Ok(())
        }
    }

    // snippet: middleware.md 4
    // `Pricing` and `Payments` are your clients, registered with `.with_resource(..)`; their
    // methods here are examples.
    #[stage(reads = [order_id], writes = [price], fallback = cached_price)]
    async fn fetch_price(order_id: &u64, pricing: Res<Pricing>) -> Result<u64, StageError> {
        Ok(pricing.quote(*order_id).await?)
    }

    // Same parameters and return type as the stage.
    async fn cached_price(order_id: &u64, pricing: Res<Pricing>) -> Result<u64, StageError> {
        pricing.last_quote(*order_id).ok_or_else(|| StageError::msg("no cached price"))
    }

    #[stage(reads = [order_id], writes = [charged], rollback = refund)]
    async fn charge(order_id: &u64, payments: Res<Payments>) -> Result<bool, StageError> {
        payments.charge(*order_id).await?;
        Ok(true)
    }

    // Same parameters as the stage; returns () or Result<(), E>.
    async fn refund(order_id: &u64, payments: Res<Payments>) -> Result<(), StageError> {
        Ok(payments.refund(*order_id).await?)
    }
    // end snippet

    /// Fails: the warehouse is down.
    #[stage(reads = [price, charged], writes = [shipped])]
    async fn ship(_price: &u64, _charged: &bool) -> Result<bool, StageError> {
        Err(StageError::msg("the warehouse is down"))
    }

    #[tokio::test]
    async fn the_fallback_prices_and_the_rollback_refunds() {
        let pricing = Pricing {
            last: [(42, 1999)].into(),
        };
        let payments = Arc::new(Payments::default());
        let pipe = pipeline! { fetch_price, charge }
            .with_resource(pricing)
            .with_shared_resource(payments.clone());
        let out = pipe.invoke(input! { order_id: 42 }).await.unwrap();
        assert_eq!((out[price], out[charged]), (1999, true));
        assert_eq!(*payments.log.lock().unwrap(), ["charge 42"]);

        let pipe = pipeline! { fetch_price, charge, ship }
            .with_resource(Pricing {
                last: [(42, 1999)].into(),
            })
            .with_shared_resource(payments.clone());
        let err = pipe.invoke(input! { order_id: 42 }).await.unwrap_err();
        assert!(err.to_string().contains("the warehouse is down"), "{err}");
        assert_eq!(
            *payments.log.lock().unwrap(),
            ["charge 42", "charge 42", "refund 42"]
        );
    }
}
