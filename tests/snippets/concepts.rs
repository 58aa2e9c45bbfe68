//! The snippets of docs/concepts.md, verbatim between their markers
//! (tests/tests/doc_snippets.rs checks it), with what makes them compile and run.

use fluxio::prelude::*;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
}

// snippet: concepts.md 1
fluxio::keys! {
    /// The id the caller asks about.
    pub user_id: u64;
    pub user: User;
}
// end snippet

#[test]
fn a_key_is_used_by_its_name() {
    let alice = User {
        id: 42,
        name: "Alice".into(),
    };
    let ctx = input! { user_id: 42, user: alice.clone() };
    assert_eq!((ctx.get(user_id), &ctx[user]), (Some(&42), &alice));
    assert_eq!(ctx.keys(), ["user", "user_id"]);
}

#[test]
fn a_ctx_never_changes_in_place() {
    // snippet: concepts.md 2
    let a = Ctx::new().with(user_id, 42);   // by value, for building
    let b = a.set(user_id, 7);              // by reference: a new Ctx, `a` unchanged
    assert_eq!((a[user_id], b[user_id]), (42, 7));
    // end snippet
}

#[tokio::test]
async fn parallel_stages_add_to_a_merge_key() {
    // snippet: concepts.md 3
fluxio::keys! {
    pub order_id: u64;
    /// Every check adds what it found.
    #[merge]
    pub findings: Vec<String>;
}

#[stage(reads = [order_id], writes = [findings])]
async fn check_fraud(order_id: &u64) -> Vec<String> {
    vec![format!("order {order_id}: no fraud signal")]
}

#[stage(reads = [order_id], writes = [findings])]
async fn check_stock(order_id: &u64) -> Vec<String> {
    vec![format!("order {order_id}: in stock")]
}

#[stage(reads = [findings])]
async fn report(findings: &[String]) -> Result<(), StageError> {
    println!("{} finding(s)", findings.len());
    Ok(())
}

let pipe = pipeline! { parallel { check_fraud, check_stock }, report };
    // end snippet
    let out = pipe.invoke(input! { order_id: 7 }).await.unwrap();
    let mut all = out[findings].clone();
    all.sort();
    assert_eq!(all, ["order 7: in stock", "order 7: no fraud signal"]);
}
