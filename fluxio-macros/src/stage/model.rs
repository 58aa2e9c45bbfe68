//! The typed model of one `#[stage]`: what `validate` derives and `expand` reads.

use proc_macro2::Span;
use syn::{Ident, ItemFn, LitStr, Type};

use super::parse::KeyRef;

/// How the function runs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exec {
    /// `async fn`.
    Async,
    /// Plain `fn`: runs on the blocking pool.
    Blocking,
    /// Plain `fn` returning `impl Stream<Item = Result<C, E>>`.
    Stream,
}

/// What the function returns, once a `Result` is unwrapped.
#[derive(Clone)]
pub(crate) enum Output {
    /// `()` (no writes).
    Unit,
    /// The value(s) of `writes`: one value, or a tuple in `writes` order.
    Values,
    /// A `Route`.
    Route,
    /// A whole `Ctx` (ctx-style stage).
    Ctx,
    /// The stream's chunks (stream stages write nothing).
    Stream,
}

/// What a parameter receives.
pub(crate) enum ParamRole {
    /// The value of a key in `reads`.
    Read(KeyRef),
    /// A `Res<T>` resource.
    Resource(Box<Type>),
    /// The whole context (ctx-style).
    Ctx,
    /// The run's id and the stage's name (`RunInfo`).
    RunInfo,
}

/// One parameter of the stage function.
pub(crate) struct Param {
    pub(crate) ident: Ident,
    pub(crate) ty: Box<Type>,
    pub(crate) role: ParamRole,
}

/// A validated `#[stage]`.
pub(crate) struct StageDef {
    /// The function as written (its body becomes `<stage>::run`).
    pub(crate) item: ItemFn,
    /// The stage's name.
    pub(crate) name: LitStr,
    pub(crate) reads: Vec<KeyRef>,
    pub(crate) writes: Vec<KeyRef>,
    pub(crate) timeout_nanos: Option<u128>,
    pub(crate) krate: Option<syn::Path>,
    /// `fallback = path`: produces the writes when the stage failed.
    pub(crate) fallback: Option<syn::Path>,
    /// `rollback = path`: undoes the stage when the run fails later.
    pub(crate) rollback: Option<syn::Path>,
    pub(crate) exec: Exec,
    pub(crate) output: Output,
    /// Whether the function returns a `Result`.
    pub(crate) fallible: bool,
    pub(crate) params: Vec<Param>,
    /// The span of the return type, where output mismatches are reported.
    pub(crate) ret_span: Span,
}
