//! Generates the pipeline value: compile-time checks as const items spanned at the user's
//! tokens, the const dependency matrix, and the node list.

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::model::{Analysis, FlatKind};
use crate::paths::respan;

pub(crate) fn expand(a: &Analysis, krate: Option<&syn::Path>) -> TokenStream {
    let private = crate::paths::private(krate);
    let mut checks = Vec::new();

    // Each stage's metadata, read once from the stage as a value (a plain function named
    // here is then reported once as "not a fluxio stage", not by every check that reads it).
    for (i, node) in a.nodes.iter().enumerate() {
        if let Some(path) = stage_path(&node.kind) {
            let name = meta_name(i);
            let read = call_at(path, quote!(#private::meta_of), quote!(&#path));
            checks.push(quote!(const #name: #private::StageMeta = #read;));
        }
    }

    // Each pair of one `parallel` block must not conflict; reported on the block (SPEC
    // §1.3), the message naming both stages and the key: the call starts at the `parallel`
    // keyword and its arguments' parentheses carry the braces' span, so the compiler
    // underlines `parallel { ... }` whole.
    for block in &a.parallel_blocks {
        for j in 1..block.members.len() {
            for i in 0..j {
                let (first, second) = (meta_name(block.first + i), meta_name(block.first + j));
                let call = call_spanning(
                    block.keyword,
                    block.brace,
                    quote!(#private::check_parallel),
                    quote!(&#first, &#second),
                );
                checks.push(quote!(const _: () = #call;));
            }
        }
    }

    let branch_tokens = |branch: Option<(u32, u32)>| match branch {
        Some((r, l)) => quote!(::core::option::Option::Some((#r, #l))),
        None => quote!(::core::option::Option::None),
    };

    // Stage names are distinct — except between branches of one route, of which only one
    // runs (the plan's own exclusivity rule decides) — reported at the later of two
    // stages with one name. Nested pipelines (no name known here) are "".
    if a.nodes
        .iter()
        .filter(|node| stage_path(&node.kind).is_some())
        .count()
        > 1
    {
        let n = a.nodes.len();
        let names = a
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| match stage_path(&node.kind) {
                Some(_) => {
                    let meta = meta_name(i);
                    quote!(#meta.name)
                }
                None => quote!(""),
            });
        let branches = a.nodes.iter().map(|node| {
            let branch = branch_tokens(node.branch);
            quote!(#private::NodeDesc { reads: &[], writes: &[], group: 0, branch: #branch })
        });
        checks.push(quote! {
            const __FLUXIO_NAMES: [&str; #n] = [#(#names),*];
            const __FLUXIO_BRANCHES: [#private::NodeDesc<'static>; #n] = [#(#branches),*];
        });
        for (i, node) in a.nodes.iter().enumerate().skip(1) {
            if let Some(path) = stage_path(&node.kind) {
                checks.push(check_at(
                    path,
                    quote!(#private::check_distinct_name),
                    quote!(&__FLUXIO_BRANCHES, &__FLUXIO_NAMES, #i),
                ));
            }
        }
    }

    let mut specs = Vec::new();
    let mut descs = Vec::new();
    let mut slots = Vec::new();
    let mut arms = Vec::new();
    let mut layered_arms = Vec::new();
    for (i, node) in a.nodes.iter().enumerate() {
        let slot = quote::format_ident!("__fluxio_slot{}", i);
        slots.push(quote!(let mut #slot = ::core::pin::pin!(::core::option::Option::None);));
        match &node.kind {
            FlatKind::Stage(path) | FlatKind::Route { stage: path, .. } => {
                // At the path, where "not a fluxio stage" is reported; the closure's
                // parameters keep the macro's hygiene (the path may come from another
                // macro's arguments, with its own).
                let at = path.span();
                let head = respan(quote!(#private::Stage::call), at);
                let amp = respan(quote!(&), at);
                let mut args = proc_macro2::Group::new(
                    proc_macro2::Delimiter::Parenthesis,
                    quote!(#amp #path, __fluxio_c, __fluxio_e),
                );
                args.set_span(at);
                let call = quote!(#head #args);
                arms.push(quote! {
                    #i => __fluxio_op.run(#slot.as_mut(), __fluxio_cx, |__fluxio_c, __fluxio_e| #call),
                });
                layered_arms.push(quote! {
                    #i => __fluxio_op.run_layered(#slot.as_mut(), &mut __fluxio_engines[#i], __fluxio_cx, |__fluxio_c, __fluxio_e| #call),
                });
            }
            FlatKind::Sub(_) => {
                let arm = quote! {
                    #i => __fluxio_op.run_dyn(#slot.as_mut(), __fluxio_cx),
                };
                arms.push(arm.clone());
                layered_arms.push(arm);
            }
        }
        let branch = branch_tokens(node.branch);
        let group = node.group;
        let in_parallel = group != 0;
        match &node.kind {
            FlatKind::Stage(path) => {
                let meta = meta_name(i);
                checks.push(check_at(
                    path,
                    quote!(#private::check_route_use),
                    quote!(&#meta, false, #in_parallel),
                ));
                checks.push(check_at(
                    path,
                    quote!(#private::check_stage_name),
                    quote!(&#meta),
                ));
                specs.push(
                    quote_spanned!(path.span()=> #private::NodeSpec::stage(#path, #group, #branch)),
                );
                descs.push(desc(&private, i, path, group, &branch));
            }
            FlatKind::Route { stage, labels } => {
                let meta = meta_name(i);
                checks.push(check_at(
                    stage,
                    quote!(#private::check_route_use),
                    quote!(&#meta, true, false),
                ));
                checks.push(check_at(
                    stage,
                    quote!(#private::check_stage_name),
                    quote!(&#meta),
                ));
                specs.push(quote_spanned!(stage.span()=> #private::NodeSpec::route(#stage, &[#(#labels),*], #branch)));
                descs.push(desc(&private, i, stage, 0, &branch));
            }
            FlatKind::Sub(expr) => {
                specs.push(quote_spanned!(expr.span()=>
                    #private::NodeSpec::pipeline(#private::IntoPipeline::into_pipeline(#expr), #branch)));
            }
        }
    }

    let build = if a.has_sub {
        quote!(#private::Pipeline::from_nodes(::std::vec![#(#specs),*]))
    } else {
        let n = a.nodes.len();
        quote! {
            const __FLUXIO_NODES: [#private::NodeDesc<'static>; #n] = [#(#descs),*];
            const __FLUXIO_DEPS: [[bool; #n]; #n] = #private::dep_matrix(&__FLUXIO_NODES);
            #private::Pipeline::from_const(::std::vec![#(#specs),*], &__FLUXIO_DEPS)
        }
    };
    // The driver keeps each stage's future in its own pinned slot inside the run's future:
    // no allocation per stage call. Runs through middleware use a second driver that keeps
    // the middleware engine of each stage beside its slot.
    let n_nodes = a.nodes.len();
    quote! {
        {
            #(#checks)*
            #build.with_driver(|__fluxio_sched: #private::Scheduler| -> #private::RunFuture {
                ::std::boxed::Box::pin(async move {
                    #(#slots)*
                    #private::drive(__fluxio_sched, |__fluxio_op, __fluxio_cx| match __fluxio_op.node() {
                        #(#arms)*
                        _ => ::core::task::Poll::Pending,
                    })
                    .await
                })
            })
            .with_layered_driver(|__fluxio_sched: #private::Scheduler| -> #private::RunFuture {
                ::std::boxed::Box::pin(async move {
                    #(#slots)*
                    // One array, so that the driver's closure holds one reference to it.
                    let mut __fluxio_engines = [const { #private::Engine::new() }; #n_nodes];
                    #private::drive(__fluxio_sched, |__fluxio_op, __fluxio_cx| match __fluxio_op.node() {
                        #(#layered_arms)*
                        _ => ::core::task::Poll::Pending,
                    })
                    .await
                })
            })
        }
    }
}

/// `const _: () = check(args);`, a compile-time check about the stage at `path`, spanned
/// so that the compiler underlines the whole path (`billing::charge`, not only `billing`):
/// the call starts at the path's first token and its parentheses end at its last.
fn check_at(path: &syn::Path, check: TokenStream, args: TokenStream) -> TokenStream {
    let call = call_at(path, check, args);
    quote!(const _: () = #call;)
}

/// `callee(args)`, spanned over the whole of `path` (see [`check_at`]).
fn call_at(path: &syn::Path, callee: TokenStream, args: TokenStream) -> TokenStream {
    let first = path.span();
    let last = path.segments.last().map_or(first, |s| s.ident.span());
    call_spanning(first, last, callee, args)
}

/// `callee(args)`, spanned from `first` to `last`: the compiler underlines a call from the
/// start of its callee to the end of its parentheses (on stable, a span cannot be joined).
fn call_spanning(
    first: proc_macro2::Span,
    last: proc_macro2::Span,
    callee: TokenStream,
    args: TokenStream,
) -> TokenStream {
    let callee = respan(callee, first);
    let mut args =
        proc_macro2::Group::new(proc_macro2::Delimiter::Parenthesis, respan(args, first));
    args.set_span(last);
    quote!(#callee #args)
}

/// The const holding node `i`'s stage metadata.
fn meta_name(i: usize) -> proc_macro2::Ident {
    quote::format_ident!("__FLUXIO_META{}", i)
}

/// The stage of a node (none for a nested pipeline).
fn stage_path(kind: &FlatKind) -> Option<&syn::Path> {
    match kind {
        FlatKind::Stage(path) | FlatKind::Route { stage: path, .. } => Some(path),
        FlatKind::Sub(_) => None,
    }
}

fn desc(
    private: &TokenStream,
    i: usize,
    path: &syn::Path,
    group: u32,
    branch: &TokenStream,
) -> TokenStream {
    let meta = meta_name(i);
    quote_spanned! {path.span()=>
        #private::NodeDesc {
            reads: #meta.access.reads,
            writes: #meta.access.writes,
            group: #group,
            branch: #branch,
        }
    }
}
