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
