//! The error types a stage (its fallback, its rollback, a stream's items) may fail with:
//! any `std::error::Error + Send + Sync + 'static`, `StageError`, and what boxes into
//! `Box<dyn Error + Send + Sync>` — the box itself, `String`, `&str`, `anyhow::Error`.

use std::error::Error as StdError;
use std::sync::{Arc, Mutex};

use fluxio::Error;
use fluxio::prelude::*;
use futures::{Stream, StreamExt};

fluxio::keys! {
    pub n: u64;
    pub out: u64;
    pub done: bool;
}

type BoxError = Box<dyn StdError + Send + Sync>;

#[derive(Debug, PartialEq)]
struct Declined(u64);

impl std::fmt::Display for Declined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "declined {}", self.0)
    }
}

impl StdError for Declined {}

/// A helper of the kind services already have: any error, boxed.
fn check(n: u64) -> Result<u64, BoxError> {
    if n > 100 {
        return Err(Box::new(Declined(n)));
    }
    let parsed: u64 = format!("{n}").parse()?;
    Ok(parsed * 2)
}

#[stage(reads = [n], writes = [out])]
async fn boxed(n: &u64) -> Result<u64, BoxError> {
    check(*n)
}

#[stage(reads = [n], writes = [out])]
fn boxed_sync(n: &u64) -> Result<u64, BoxError> {
    check(*n)
}

#[stage(reads = [n], writes = [out])]
async fn stringly(n: &u64) -> Result<u64, String> {
    Err(format!("no {n}"))
}

#[stage(reads = [n], writes = [out])]
async fn static_text(n: &u64) -> Result<u64, &'static str> {
    if *n == 0 { Err("zero") } else { Ok(*n) }
}

#[stage(reads = [n], writes = [out])]
async fn with_anyhow(n: &u64) -> anyhow::Result<u64> {
    let v: u64 = "x"
        .parse()
        .map_err(|e| anyhow::anyhow!("parsing {n}: {e}"))?;
    Ok(v)
}

async fn run(pipe: fluxio::Pipeline, n_value: u64) -> Result<u64, Error> {
    Ok(pipe.invoke(input! { n: n_value }).await?[out])
}

fn stage_source(err: &Error) -> &(dyn StdError + Send + Sync + 'static) {
    match err {
        Error::Stage { source, .. } => &**source,
        other => panic!("expected Error::Stage, got {other:?}"),
    }
}

#[tokio::test]
async fn a_boxed_error_fails_the_stage_and_keeps_its_type() {
    assert_eq!(run(pipeline! { boxed }, 4).await.unwrap(), 8);
    for pipe in [pipeline! { boxed }, pipeline! { boxed_sync }] {
        let err = run(pipe, 101).await.unwrap_err();
        assert!(err.to_string().ends_with("failed: declined 101"), "{err}");
        assert_eq!(
            stage_source(&err).downcast_ref::<Declined>(),
            Some(&Declined(101))
        );
    }
}

#[tokio::test]
async fn text_errors_fail_the_stage_with_their_text() {
    let err = run(pipeline! { stringly }, 3).await.unwrap_err();
    assert_eq!(err.to_string(), "stage `stringly` failed: no 3");
    let err = run(pipeline! { static_text }, 0).await.unwrap_err();
    assert_eq!(err.to_string(), "stage `static_text` failed: zero");
    assert_eq!(run(pipeline! { static_text }, 5).await.unwrap(), 5);
}

#[tokio::test]
async fn an_anyhow_error_fails_the_stage_with_its_message() {
    let err = run(pipeline! { with_anyhow }, 7).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.starts_with("stage `with_anyhow` failed: parsing 7: invalid digit"),
        "{text}"
    );
}

#[stage(reads = [n])]
fn numbers(n: &u64) -> impl Stream<Item = Result<u64, String>> {
    let n = *n;
    futures::stream::iter((0..3).map(move |i| {
        if i < 2 {
            Ok(n + i)
        } else {
            Err(format!("stopped at {i}"))
        }
    }))
}

#[tokio::test]
async fn a_stream_may_yield_text_errors() {
    let pipe = pipeline! { numbers };
    let mut handle = pipe.stream::<u64>(input! { n: 10 });
    let mut got = Vec::new();
    let mut failed = None;
    while let Some(item) = handle.next().await {
        match item {
            Ok(chunk) => got.push(chunk.data),
            Err(e) => failed = Some(e.to_string()),
        }
    }
    assert_eq!(got, [10, 11]);
    assert_eq!(
        failed.as_deref(),
        Some("stage `numbers` failed: stopped at 2")
    );
}

/// Undo log of the rollback below.
static UNDONE: Mutex<Vec<u64>> = Mutex::new(Vec::new());

async fn undo_reserve(n: &u64) -> Result<(), String> {
    UNDONE.lock().unwrap().push(*n);
    Err("undo failed too".to_string())
}

#[stage(reads = [n], writes = [done], rollback = undo_reserve)]
async fn reserve(n: &u64) -> bool {
    let _ = n;
    true
}

#[stage(reads = [done], writes = [out])]
async fn then_fail(done: &bool) -> Result<u64, BoxError> {
    let _ = done;
    Err("later failure".into())
}

async fn half(n: &u64) -> Result<u64, BoxError> {
    Ok(n / 2)
}

#[stage(reads = [n], writes = [out], fallback = half)]
async fn primary(n: &u64) -> Result<u64, BoxError> {
    Err(format!("primary down for {n}").into())
}

#[tokio::test]
async fn fallbacks_and_rollbacks_may_fail_with_boxed_and_text_errors() {
    assert_eq!(run(pipeline! { primary }, 10).await.unwrap(), 5);

    let errors = Arc::new(Mutex::new(Vec::new()));
    struct Rollbacks(Arc<Mutex<Vec<String>>>);
    impl fluxio::Callback for Rollbacks {
        fn on_rollback(&self, e: &fluxio::StageEvent<'_>, error: Option<&Error>) {
            self.0.lock().unwrap().push(format!(
                "{}: {}",
                e.stage,
                error.map(ToString::to_string).unwrap_or_default()
            ));
        }
    }
    let err = pipeline! { reserve, then_fail }
        .with_callback(Rollbacks(errors.clone()))
        .invoke(input! { n: 3 })
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "stage `then_fail` failed: later failure");
    assert_eq!(*UNDONE.lock().unwrap(), [3]);
    let errors = errors.lock().unwrap().clone();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("undo failed too"), "{errors:?}");
}

static DECLINED: Declined = Declined(9);

#[stage(reads = [n], writes = [out])]
async fn by_reference(n: &u64) -> Result<u64, &'static Declined> {
    if *n == 9 { Err(&DECLINED) } else { Ok(*n) }
}

#[stage(reads = [n], writes = [out])]
fn opaque_error(n: &u64) -> Result<u64, impl StdError + Send + Sync + 'static> {
    if *n == 0 { Err(Declined(0)) } else { Ok(*n) }
}

/// A stage whose return type comes from a `macro_rules!` argument (other hygiene).
macro_rules! stage_returning {
    ($name:ident, $($ret:tt)*) => {
        #[stage(reads = [n], writes = [out])]
        fn $name(n: &u64) -> $($ret)* {
            if *n == 0 { Err(std::io::Error::other("zero")) } else { Ok(*n) }
        }
    };
}

stage_returning!(from_macro, Result<u64, std::io::Error>);

#[tokio::test]
async fn references_opaque_types_and_macro_written_stages_convert_too() {
    let err = run(pipeline! { by_reference }, 9).await.unwrap_err();
    assert_eq!(err.to_string(), "stage `by_reference` failed: declined 9");
    let err = run(pipeline! { opaque_error }, 0).await.unwrap_err();
    assert_eq!(
        stage_source(&err).downcast_ref::<Declined>(),
        Some(&Declined(0))
    );
    let err = run(pipeline! { from_macro }, 0).await.unwrap_err();
    assert_eq!(err.to_string(), "stage `from_macro` failed: zero");
    assert_eq!(run(pipeline! { from_macro }, 2).await.unwrap(), 2);
}
