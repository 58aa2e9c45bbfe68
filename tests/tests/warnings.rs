//! The `tracing` warnings fluxio gives for a likely mistake that is not an error. A global
//! subscriber records every warning of this test binary (`tracing` caches per-callsite
//! interest across threads, so scoped subscribers in parallel tests would miss some); each
//! test looks for the warnings that name its own stages or keys.

use std::sync::{Arc, Mutex, OnceLock};

use fluxio::prelude::*;

fluxio::keys! {
    pub n: u64;
    pub doubled: u64;
    pub note_for_ops: String;
}

#[stage(reads = [n], writes = [doubled])]
async fn double(n: &u64) -> u64 {
    n * 2
}

#[stage(reads = [n], writes = [doubled])]
async fn elsewhere(n: &u64) -> u64 {
    *n
}

/// Records each warning as its message and fields.
#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                self.0.push_str(&format!(" {}={value:?}", field.name()));
            }
        }
        if *event.metadata().level() == tracing::Level::WARN {
            let mut text = Text(String::new());
            event.record(&mut text);
            self.0.lock().unwrap().push(text.0);
        }
    }
}

fn warnings_with(needle: &str) -> Vec<String> {
    static LOG: OnceLock<Warnings> = OnceLock::new();
    let log = LOG.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt;
        let log = Warnings::default();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(log.clone()))
            .expect("the only global subscriber of this test binary");
        log
    });
    log.0
        .lock()
        .unwrap()
        .iter()
        .filter(|w| w.contains(needle))
        .cloned()
        .collect()
}

#[test]
fn a_middleware_scoped_to_no_stage_of_the_pipeline_is_warned_about() {
    let _ = warnings_with("");
    let pipe = pipeline! { double };
    let _fine = pipe
        .clone()
        .with_middleware(Retry::exponential(3).only(double));
    assert!(
        warnings_with("double").is_empty(),
        "{:?}",
        warnings_with("")
    );
    // A typo'd scope compiles (the stage exists, elsewhere) and would apply to nothing.
    let _ = pipe.with_middleware(Retry::exponential(3).only(elsewhere));
    let seen = warnings_with("elsewhere");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(
        seen[0].contains("names no stage of this pipeline"),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_durable_run_warns_about_input_keys_it_will_not_store() {
    let _ = warnings_with("");
    let pipe = pipeline! { double }.with_store(InMemoryStore::new());
    pipe.invoke(input! { n: 2, note_for_ops: "hi".to_string() })
        .run_id("warned")
        .await
        .unwrap();
    let seen = warnings_with("note_for_ops");
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(seen[0].contains("not stored"), "{seen:?}");
}
