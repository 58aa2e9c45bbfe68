//! `inputs()`, `graph()`, `to_mermaid()` and `version()`.

use fluxio::prelude::*;
use fluxio::{GraphNode, StageKind};

fluxio::keys! {
    pub user_id: u64;
    pub user: String;
    pub profile: String;
    pub orders: Vec<u64>;
    pub tier: String;
}

#[stage(reads = [user_id], writes = [user])]
async fn fetch_user(user_id: &u64) -> String {
    format!("u{user_id}")
}

#[stage(reads = [user], writes = [profile])]
async fn enrich(user: &String) -> String {
    user.to_uppercase()
}

#[stage(reads = [user_id], writes = [orders])]
async fn fetch_orders(user_id: &u64) -> Vec<u64> {
    vec![*user_id]
}

/// `enrich` again, for a route branch (a pipeline's stage names are distinct).
#[stage(reads = [user], writes = [profile])]
async fn enrich_again(user: &String) -> String {
    user.to_lowercase()
}

#[stage(reads = [user_id], writes = [orders])]
async fn fetch_orders_again(user_id: &u64) -> Vec<u64> {
    vec![*user_id, *user_id]
}

#[stage(reads = [tier])]
async fn pick(tier: &String) -> Route {
    Route::to(tier.clone())
}

#[stage(reads = [user], writes = [orders])]
async fn fetch_orders_by_user(user: &String) -> Vec<u64> {
    vec![user.len() as u64]
}

#[stage(name = "renamed", reads = [user_id], writes = [user])]
async fn fetch_user_renamed(user_id: &u64) -> String {
    format!("u{user_id}")
}

#[test]
fn inputs_are_reads_no_earlier_stage_writes() {
    let pipe = pipeline! { fetch_user, enrich, fetch_orders, pick => { "a" => [enrich_again], "b" => [fetch_orders_again] } };
    assert_eq!(pipe.inputs(), vec!["user_id", "tier"]);
}

#[tokio::test]
async fn a_key_only_another_branch_writes_is_an_input() {
    // `enrich` (branch "b") reads `user`, which only `fetch_user` (branch "a") writes: the
    // two never both run, so `user` must come from the input.
    let pipe = pipeline! { pick => { "a" => [fetch_user], "b" => [enrich] } };
    assert_eq!(pipe.inputs(), vec!["tier", "user_id", "user"]);
    // Checked before any stage runs, whichever branch would be taken.
    let err = pipe
        .invoke(input! { tier: "b".into(), user_id: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(err, fluxio::Error::MissingInput { key: "user", .. }),
        "{err:?}"
    );
    let out = pipe
        .invoke(input! { tier: "b".into(), user_id: 1, user: "ann".into() })
        .await
        .unwrap();
    assert_eq!(out[profile], "ANN");
}

#[test]
fn graph_holds_stages_edges_groups_and_branches() {
    let pipe = pipeline! {
        fetch_user,
        parallel { enrich, fetch_orders },
        pick => { "gold" => [enrich_again], "basic" => [fetch_orders_again] },
    };
    let g = pipe.graph();
    let names: Vec<&str> = g.nodes.iter().map(|n| n.name).collect();
    assert_eq!(
        names,
        [
            "fetch_user",
            "enrich",
            "fetch_orders",
            "pick",
            "enrich_again",
            "fetch_orders_again"
        ]
    );
    assert_eq!(
        g.nodes[1],
        GraphNode {
            name: "enrich",
            kind: StageKind::Async,
            reads: vec!["user"],
            writes: vec!["profile"],
            parallel_group: Some(1),
            branch: None,
            labels: vec![],
        }
    );
    assert_eq!(g.nodes[3].kind, StageKind::Route);
    assert_eq!(g.nodes[3].labels, ["gold", "basic"]);
    assert_eq!(g.nodes[4].branch, Some((3, "gold")));
    // fetch_orders (2) depends on nothing; enrich (1) on fetch_user (0); the branch stages
    // on the route (3), and on the earlier writers of their keys (WAW).
    assert_eq!(g.edges, vec![(0, 1), (1, 4), (3, 4), (2, 5), (3, 5)]);
}

#[test]
fn mermaid_shows_forks_and_route_labels() {
    let pipe = pipeline! {
        fetch_user,
        parallel { enrich, fetch_orders },
        pick => { "gold" => [enrich_again], "basic" => [fetch_orders_again] },
    };
    let m = pipe.to_mermaid();
    assert!(m.starts_with("flowchart TD\n"), "{m}");
    assert!(m.contains("subgraph parallel1 [parallel]"), "{m}");
    assert!(m.contains("n3{\"pick<br/>reads: tier\"}"), "{m}");
    assert!(m.contains("n3 -->|gold| n4"), "{m}");
    assert!(m.contains("n3 -->|basic| n5"), "{m}");
    assert!(m.contains("n0 --> n1"), "{m}");
}

#[test]
fn version_is_stable_across_builds_and_processes() {
    // A fixed flow has a fixed version: nothing random (hasher seeds, map order) enters it.
    let pipe = pipeline! { fetch_user, enrich };
    assert_eq!(pipe.version(), "a455ec86b76b5499");
    assert_eq!(pipe.version().len(), 16);
    assert_eq!(pipeline! { fetch_user, enrich }.version(), pipe.version());
}

/// The same flow with `user_id` of another type.
mod retyped {
    use fluxio::prelude::*;

    fluxio::keys! {
        pub user_id: i64;
        pub user: String;
    }

    #[stage(reads = [user_id], writes = [user])]
    pub async fn fetch_user(user_id: &i64) -> String {
        format!("u{user_id}")
    }
}

#[test]
fn version_changes_with_a_keys_type() {
    // A checkpoint written with a `u64` would decode into a wrong `i64` (bincode is not
    // self-describing): a resume must see another version, not the same one.
    assert_ne!(
        pipeline! { fetch_user }.version(),
        pipeline! { retyped::fetch_user }.version()
    );
}

#[test]
fn version_changes_with_any_stage_key_edge_or_label() {
    let base = pipeline! { fetch_user, enrich, fetch_orders }
        .version()
        .to_string();
    // A different stage name.
    assert_ne!(
        pipeline! { fetch_user_renamed, enrich, fetch_orders }.version(),
        base
    );
    // Different keys (and so a different edge).
    assert_ne!(
        pipeline! { fetch_user, enrich, fetch_orders_by_user }.version(),
        base
    );
    // Different order: different edges.
    assert_ne!(
        pipeline! { enrich, fetch_user, fetch_orders }.version(),
        base
    );
    // Different grouping.
    assert_ne!(
        pipeline! { fetch_user, parallel { enrich, fetch_orders } }.version(),
        base
    );
    // Labels.
    let a = pipeline! { pick => { "x" => [enrich], "y" => [fetch_orders] } };
    let b = pipeline! { pick => { "x" => [enrich], "z" => [fetch_orders] } };
    assert_ne!(a.version(), b.version());
}

#[test]
fn version_ignores_resources_and_callbacks() {
    #[derive(Clone)]
    struct Nothing;
    impl fluxio::Callback for Nothing {}
    let a = pipeline! { fetch_user, enrich };
    let b = pipeline! { fetch_user, enrich }
        .with_resource(5u32)
        .with_callback(Nothing);
    assert_eq!(a.version(), b.version());
}
