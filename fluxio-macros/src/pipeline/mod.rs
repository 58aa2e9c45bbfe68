//! `pipeline! { ... }`: sequences, `parallel` blocks, routes and nested pipelines.

mod analyze;
mod expand;
mod model;
mod parse;

use proc_macro2::TokenStream;

use crate::diag::Ctxt;

/// Expands `pipeline!`.
pub(crate) fn expand(input: TokenStream) -> TokenStream {
    let input: parse::PipelineInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => return e.to_compile_error(),
    };
    let krate = input.krate.clone();
    let mut cx = Ctxt::default();
    let analysis = analyze::analyze(&mut cx, input);
    match cx.check() {
        Ok(()) => {
            let out = expand::expand(&analysis, krate.as_ref());
            crate::paths::debug_print("pipeline!", &out);
            out
        }
        Err(e) => {
            // Still produce a pipeline value, so calls chained on the macro do not add errors.
            let errors = e.to_compile_error();
            let private = crate::paths::private(krate.as_ref());
            quote::quote!({ #errors #private::Pipeline::from_nodes(::std::vec::Vec::new()) })
        }
    }
}
