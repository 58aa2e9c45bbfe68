//! The flattened pipeline: nodes in source order with their block and branch.

/// How a flattened node runs.
pub(crate) enum FlatKind {
    Stage(syn::Path),
    Route {
        stage: syn::Path,
        labels: Vec<String>,
    },
    Sub(Box<syn::Expr>),
}

/// One node of the flattened pipeline.
pub(crate) struct FlatNode {
    pub(crate) kind: FlatKind,
    /// The `parallel` block holding the node (0: none).
    pub(crate) group: u32,
    /// The innermost route branch holding the node: (route node index, label index).
    pub(crate) branch: Option<(u32, u32)>,
}

/// A `parallel { ... }` block as written.
pub(crate) struct ParallelBlock {
    /// Where it starts (the `parallel` keyword) and ends (its braces): a conflict inside
    /// is reported on the whole block.
    pub(crate) keyword: proc_macro2::Span,
    pub(crate) brace: proc_macro2::Span,
    /// The index of its first member among the flattened nodes (the others follow it).
    pub(crate) first: usize,
    /// Its members in order.
    pub(crate) members: Vec<syn::Path>,
}

/// What analysis derived from the input.
pub(crate) struct Analysis {
    /// Every node in source order.
    pub(crate) nodes: Vec<FlatNode>,
    /// Every `parallel` block (to check each pair of its members for conflicts).
    pub(crate) parallel_blocks: Vec<ParallelBlock>,
    /// Whether a nested pipeline value is present (its access is known only at run time).
    pub(crate) has_sub: bool,
}
