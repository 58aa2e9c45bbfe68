//! The context: immutability, typed access, and conflict-aware merge (property tests).

use fluxio::{Ctx, Error};
use proptest::prelude::*;

fluxio::keys! {
    pub k0: u32; pub k1: u32; pub k2: u32; pub k3: u32;
    pub k4: u32; pub k5: u32; pub k6: u32; pub k7: u32;
    pub name: String;
}

/// Sets key number `i` (0..8) to `v`.
fn set_nth(ctx: Ctx, i: usize, v: u32) -> Ctx {
    match i {
        0 => ctx.with(k0, v),
        1 => ctx.with(k1, v),
        2 => ctx.with(k2, v),
        3 => ctx.with(k3, v),
        4 => ctx.with(k4, v),
        5 => ctx.with(k5, v),
        6 => ctx.with(k6, v),
        _ => ctx.with(k7, v),
    }
}

fn get_nth(ctx: &Ctx, i: usize) -> Option<u32> {
    match i {
        0 => ctx.get(k0),
        1 => ctx.get(k1),
        2 => ctx.get(k2),
        3 => ctx.get(k3),
        4 => ctx.get(k4),
        5 => ctx.get(k5),
        6 => ctx.get(k6),
        _ => ctx.get(k7),
    }
    .copied()
}

#[test]
fn set_leaves_the_original_unchanged() {
    let a = Ctx::new().with(name, "a".to_string());
    let b = a.set(name, "b".to_string()).set(k0, 1);
    assert_eq!(a[name], "a");
    assert_eq!(b[name], "b");
    assert_eq!((a.len(), b.len()), (1, 2));
    assert!(!a.contains(k0) && b.contains(k0));
    assert_eq!(b.keys(), vec!["k0", "name"]);
}

#[test]
#[should_panic(expected = "the context holds no value for key `k3`")]
fn indexing_a_missing_key_names_it() {
    let _ = Ctx::new()[k3];
}

#[test]
fn merge_conflict_names_key_and_both_branches() {
    let base = Ctx::new().with(k0, 0);
    let err = base
        .merge([("load", base.set(k1, 1)), ("enrich", base.set(k1, 1))])
        .unwrap_err();
    match &err {
        Error::MergeConflict {
            key,
            stages,
            run_id: None,
        } => {
            assert_eq!(*key, "k1");
            assert_eq!(stages, &["load".to_string(), "enrich".to_string()]);
        }
        other => panic!("expected MergeConflict, got {other:?}"),
    }
    assert_eq!(err.to_string(), "`load` and `enrich` both wrote `k1`");
}

proptest! {
    /// Branches writing disjoint keys merge to the same context as applying their writes
    /// one after another.
    #[test]
    fn disjoint_merge_equals_sequential(
        base_writes in proptest::collection::vec((0usize..8, any::<u32>()), 0..8),
        branch_writes in proptest::collection::vec(proptest::collection::vec((0usize..8, any::<u32>()), 0..4), 1..4),
    ) {
        let base = base_writes.iter().fold(Ctx::new(), |c, &(i, v)| set_nth(c, i, v));
        // Give each key to at most one branch.
        let mut owner = [None; 8];
        let mut branches = Vec::new();
        for (b, writes) in branch_writes.iter().enumerate() {
            let mut ctx = base.clone();
            for &(i, v) in writes {
                if owner[i].is_none() || owner[i] == Some(b) {
                    owner[i] = Some(b);
                    ctx = set_nth(ctx, i, v);
                }
            }
            branches.push((format!("b{b}"), ctx));
        }
        let mut sequential = base.clone();
        for (b, writes) in branch_writes.iter().enumerate() {
            for &(i, v) in writes {
                if owner[i] == Some(b) {
                    sequential = set_nth(sequential, i, v);
                }
            }
        }
        let merged = base.merge(branches).unwrap();
        for i in 0..8 {
            prop_assert_eq!(get_nth(&merged, i), get_nth(&sequential, i));
        }
        prop_assert_eq!(merged.keys(), sequential.keys());
    }

    /// Any key written by two branches is reported, whatever the values.
    #[test]
    fn overlapping_writes_are_reported(
        shared in 0usize..8,
        a in any::<u32>(),
        b in any::<u32>(),
        extra in proptest::collection::vec((0usize..8, any::<u32>()), 0..4),
    ) {
        let base = Ctx::new();
        let mut left = set_nth(base.clone(), shared, a);
        for &(i, v) in &extra {
            left = set_nth(left, i, v);
        }
        let right = set_nth(base.clone(), shared, b);
        let err = base.merge([("left", left), ("right", right)]).unwrap_err();
        let is_conflict = matches!(err, Error::MergeConflict { .. });
        prop_assert!(is_conflict);
    }
}

mod other {
    fluxio::keys! {
        /// Named like the outer `name`, holding another type.
        pub name: u64;
    }
}

#[test]
fn a_same_named_key_of_another_type_is_not_held() {
    let ctx = Ctx::new().with(name, "ada".to_string());
    assert!(ctx.contains(name));
    assert!(!ctx.contains(other::name), "another type under the name");
    assert!(ctx.contains_name("name"));
    assert_eq!(ctx.get(other::name), None);

    let panic =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx[other::name])).unwrap_err();
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert_eq!(
        text,
        "the context holds a value of another type than `u64` under `name`: are two keys \
         named `name`?"
    );
    let panic = std::panic::catch_unwind(|| Ctx::new()[name].clone()).unwrap_err();
    let text = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert_eq!(text, "the context holds no value for key `name`");
}
