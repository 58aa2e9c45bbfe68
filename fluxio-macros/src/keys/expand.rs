//! Generates, per key, a zero-sized type implementing `Key` and a same-named function that
//! is the key's value (see `fluxio_core::key` for why a function).

use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;

use super::parse::KeysInput;

pub(crate) fn expand(input: &KeysInput) -> TokenStream {
    let private = crate::paths::private(input.krate.as_ref());
    input
        .keys
        .iter()
        .map(|key| {
            let (attrs, vis, ident, ty) = (&key.attrs, &key.vis, &key.ident, &key.ty);
            let name = ident.to_string();
            let value = quote_spanned!(ty.span()=> type Value = #ty;);
            // A merged key's description carries its merge; the bound on `Merge` is
            // checked at the type, so the error points at it.
            let desc = key.merge.then(|| {
                quote_spanned! {ty.span()=>
                    const DESC: #private::KeyDesc = #private::KeyDesc::merged::<#ty>(#name);
                }
            });
            quote! {
                #(#attrs)*
                #[allow(non_camel_case_types)]
                #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
                #vis struct #ident {}

                #[automatically_derived]
                impl #private::Key for #ident {
                    #value
                    const NAME: &'static str = #name;
                    #desc
                }

                #[doc(hidden)]
                #[inline(always)]
                #[allow(dead_code)]
                #vis const fn #ident() -> #ident {
                    #ident {}
                }
            }
        })
        .collect()
}
