//! `fluxio::testing::StepHarness`: one stage by its contract.

use fluxio::Error;
use fluxio::prelude::*;
use fluxio::testing::StepHarness;

fluxio::keys! {
    pub user_id: u64;
    pub user: String;
    pub tier: String;
}

#[stage(reads = [user_id], writes = [user])]
async fn fetch_user(user_id: &u64) -> Result<String, StageError> {
    Ok(format!("user-{user_id}"))
}

#[stage(reads = [tier])]
fn route_by_tier(tier: &String) -> Route {
    Route::to(if tier == "pro" { "premium" } else { "standard" })
}

/// A client the stage needs.
struct Greeter(&'static str);

#[stage(reads = [user_id], writes = [user])]
async fn greet(user_id: u64, greeter: Res<Greeter>) -> String {
    format!("{} {user_id}", greeter.0)
}

#[tokio::test]
async fn runs_one_stage_and_returns_its_writes() {
    let out = StepHarness::new(fetch_user)
        .run(input! { user_id: 1 })
        .await
        .unwrap();
    assert_eq!(out[user], "user-1");
    assert_eq!(out[user_id], 1);
}

#[tokio::test]
async fn checks_reads_before_calling() {
    let err = StepHarness::new(fetch_user)
        .run(Ctx::new())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::MissingKey {
                stage: "fetch_user",
                key: "user_id",
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn route_stages_report_their_choice() {
    let r = StepHarness::new(route_by_tier)
        .route(input! { tier: "pro".into() })
        .await
        .unwrap();
    assert_eq!(r, Route::to("premium"));
}

#[tokio::test]
async fn resources_are_given_or_reported_missing() {
    let err = StepHarness::new(greet)
        .run(input! { user_id: 2 })
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::MissingResource { stage: "greet", .. }),
        "{err:?}"
    );
    let out = StepHarness::new(greet)
        .with_resource(Greeter("hi"))
        .run(input! { user_id: 2 })
        .await
        .unwrap();
    assert_eq!(out[user], "hi 2");
}

#[stage(reads = [user_id], writes = [user])]
async fn explodes(user_id: &u64) -> String {
    panic!("no user {user_id}")
}

#[stage(reads = [user_id], writes = [user], timeout = "50ms")]
async fn hangs(user_id: &u64) -> String {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    user_id.to_string()
}

#[tokio::test(start_paused = true)]
async fn a_panic_is_the_stage_error_and_the_stage_timeout_applies() {
    let err = StepHarness::new(explodes)
        .run(input! { user_id: 7 })
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Stage {
                stage: "explodes",
                ..
            }
        ) && err.to_string().contains("no user 7"),
        "{err:?}"
    );
    let err = StepHarness::new(hangs)
        .run(input! { user_id: 7 })
        .await
        .unwrap_err();
    match err {
        Error::Timeout { stage, after, .. } => {
            assert_eq!((stage, after), ("hangs", Duration::from_millis(50)))
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
}
