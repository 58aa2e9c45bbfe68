//! `#[stage(reads = [...], writes = [...])]` on a function.

mod expand;
mod model;
mod parse;
mod validate;

use proc_macro2::TokenStream;

use crate::diag::Ctxt;

/// Expands `#[stage(args)] item`.
pub(crate) fn expand(args: TokenStream, item: TokenStream) -> TokenStream {
    let item: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(item) => item,
        Err(_) => {
            let e = syn::Error::new_spanned(
                &item,
                "`#[stage]` goes on a function: `async fn`, `fn`, or `fn` returning `impl Stream`",
            );
            let mut out = e.to_compile_error();
            out.extend(item);
            return out;
        }
    };
    if let Some(syn::FnArg::Receiver(receiver)) = item.sig.inputs.first() {
        // A method, most likely inside an `impl`: a stage value cannot be declared there,
        // so the method is left as it is, with this error alone.
        let e = syn::Error::new_spanned(
            receiver,
            "`#[stage]` goes on a free function, not a method: a stage cannot take `self`; \
             move it out of the `impl` and pass what it used from `self` as a resource \
             (a `Res<T>` parameter, registered with `.with_resource(..)`)",
        );
        let mut out = e.to_compile_error();
        out.extend(quote::ToTokens::into_token_stream(item));
        return out;
    }
    let args: parse::StageArgs = match syn::parse2(args) {
        Ok(args) => args,
        Err(e) => return expand::fallback(&item, None, e),
    };
    let krate = args.options.iter().find_map(|o| match o {
        parse::StageOption::Crate(_, p) => Some(p.clone()),
        _ => None,
    });
    let mut cx = Ctxt::default();
    let def = validate::stage_from_ast(&mut cx, args, item.clone());
    match (cx.check(), def) {
        (Ok(()), Some(def)) => {
            let out = expand::expand(&def);
            crate::paths::debug_print("#[stage]", &out);
            out
        }
        (Err(e), _) => expand::fallback(&item, krate.as_ref(), e),
        (Ok(()), None) => expand::fallback(
            &item,
            krate.as_ref(),
            syn::Error::new_spanned(&item.sig, "invalid stage"),
        ),
    }
}
