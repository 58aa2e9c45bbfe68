//! How generated code names the runtime: always through the facade's hidden `__private`
//! module, so users never need to depend on fluxio's internal crates.

use proc_macro2::TokenStream;
use quote::quote;

/// The path to `__private`: `::fluxio::__private`, or `<crate>::__private` when the user
/// re-exports fluxio and says so with `crate = path`.
pub(crate) fn private(krate: Option<&syn::Path>) -> TokenStream {
    match krate {
        Some(path) => quote!(#path::__private),
        None => quote!(::fluxio::__private),
    }
}

/// Prints the expansion to stderr when `FLUXIO_MACROS_DEBUG=1`.
pub(crate) fn debug_print(what: &str, tokens: &TokenStream) {
    if std::env::var_os("FLUXIO_MACROS_DEBUG").is_some_and(|v| v == "1") {
        eprintln!("--- fluxio {what} expansion ---\n{tokens}\n---");
    }
}

/// Gives every token of `tokens` the span `span`.
///
/// `quote_spanned!` only re-spans the tokens written inside it; interpolated tokens (the
/// `__private` path, helper idents) keep theirs. rustc reports an error on an expression
/// whose tokens come from different places at the macro call as a whole, so generated
/// checks are re-spanned entirely onto the user's token they are about.
/// `tokens` reported at `at`, keeping the macro's own name resolution (hygiene): for
/// generated code whose locals other generated code refers to.
pub(crate) fn relocate(tokens: TokenStream, at: proc_macro2::Span) -> TokenStream {
    respan(tokens, proc_macro2::Span::call_site().located_at(at))
}

pub(crate) fn respan(tokens: TokenStream, span: proc_macro2::Span) -> TokenStream {
    use proc_macro2::{Group, TokenTree};
    tokens
        .into_iter()
        .map(|tt| match tt {
            TokenTree::Group(g) => {
                let mut ng = Group::new(g.delimiter(), respan(g.stream(), span));
                ng.set_span(span);
                TokenTree::Group(ng)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}
