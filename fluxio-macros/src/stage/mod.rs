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
