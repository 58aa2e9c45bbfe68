//! The macros' generated code keeps its own names to itself: stages and pipelines written
//! inside a user's `macro_rules!`, with stage paths and parameter types from its arguments,
//! and user items that share a name with something the expansion binds.

#![allow(non_upper_case_globals)]

use fluxio::prelude::*;

fluxio::keys! {
    pub n: u64;
    pub out: u64;
    pub doubled: u64;
}

/// A stage whose read parameter's type comes in as the macro's loose tokens.
macro_rules! reader_of_tokens {
    ($name:ident, $($ty:tt)*) => {
        #[stage(reads = [n], writes = [out])]
        fn $name(n: $($ty)*) -> u64 {
            *n + 1
        }
    };
}

reader_of_tokens!(plus_one, &u64);

#[stage(reads = [out], writes = [doubled])]
async fn double(out: &u64) -> u64 {
    out * 2
}

/// A pipeline of the stages given as the macro's arguments.
macro_rules! pipeline_of {
    ($($stage:path),*) => {
        pipeline! { $($stage),* }
    };
}

/// A user item named like a binding in the expansion of a stage with a resource.
const r: u8 = 0;

/// What the resource stage adds.
struct Step(u64);

#[stage(reads = [n], writes = [out])]
async fn add_step(n: &u64, step: Res<Step>) -> u64 {
    n + step.0 + u64::from(r)
}

#[tokio::test]
async fn stages_and_pipelines_from_a_users_macros_compile_and_run() {
    let ctx = pipeline_of!(plus_one, double)
        .invoke(input! { n: 4 })
        .await
        .unwrap();
    assert_eq!((ctx[out], ctx[doubled]), (5, 10));
}

#[tokio::test]
async fn a_user_item_named_like_a_generated_binding_changes_nothing() {
    let ctx = pipeline! { add_step }
        .with_resource(Step(10))
        .invoke(input! { n: 1 })
        .await
        .unwrap();
    assert_eq!(ctx[out], 11);
}

/// `#[cfg]` and `#[deprecated]` on keys and stages: a key or stage configured out is gone
/// whole, and a deprecated one warns only where the user names it — not in the code the
/// macros generate for it (this module denies `deprecated`, so any such warning fails the
/// build).
#[deny(deprecated)]
mod attributes {
    use fluxio::prelude::*;

    fluxio::keys! {
        pub kept: u64;
        pub twice: u64;
        #[deprecated(note = "use `kept`")]
        pub old: u64;
        #[cfg(any())]
        pub gone: NotEvenAType;
    }

    #[stage(reads = [kept], writes = [twice])]
    #[deprecated(note = "use `double_kept`")]
    pub async fn old_double(kept: &u64) -> u64 {
        kept * 2
    }

    #[stage(reads = [kept], writes = [twice])]
    #[cfg(any())]
    pub async fn never(kept: &NotEvenAType) -> u64 {
        0
    }

    #[stage(reads = [kept], writes = [twice])]
    pub async fn double_kept(kept: &u64) -> u64 {
        kept * 2
    }

    pub fn pipe() -> Pipeline {
        pipeline! { double_kept }
    }
}

#[tokio::test]
async fn keys_and_stages_take_cfg_and_deprecated() {
    let out = attributes::pipe()
        .invoke(input! { attributes::kept: 4 })
        .await
        .unwrap();
    assert_eq!(out[attributes::twice], 8);
}

mod raw {
    use fluxio::prelude::*;

    fluxio::keys! {
        pub r#type: String;
        pub r#loop: u64;
    }

    #[stage(reads = [r#type], writes = [r#loop])]
    pub async fn r#match(r#type: &str) -> u64 {
        r#type.len() as u64
    }

    /// A read whose value goes unused, by its plain name.
    #[stage(reads = [r#type], writes = [r#loop])]
    pub async fn ignores_type(_type: &str) -> u64 {
        0
    }
}

/// Raw identifiers name keys and stages without their `r#`.
#[tokio::test]
async fn raw_identifiers_name_keys_and_stages_plainly() {
    use raw::*;
    let pipe = pipeline! { r#match };
    assert!(pipe.to_mermaid().contains("match"), "{}", pipe.to_mermaid());
    assert!(!pipe.to_mermaid().contains("r#"), "{}", pipe.to_mermaid());
    assert_eq!(pipe.inputs(), ["type"]);
    let out = pipe.invoke(input! { r#type: "abc".into() }).await.unwrap();
    assert_eq!(out[r#loop], 3);
    assert_eq!(out.keys(), ["loop", "type"]);
}
