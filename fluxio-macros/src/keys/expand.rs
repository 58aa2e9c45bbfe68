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
            // `#[cfg]` applies to every item of the key (a key configured out is gone whole);
            // `#[deprecated]` to the type and the function users name, whose own uses of the
            // type are allowed. Everything else (docs, ...) goes on the type.
            let named = |name: &str| -> Vec<_> {
                attrs.iter().filter(|a| a.path().is_ident(name)).collect()
            };
            let (cfgs, deprecated) = (named("cfg"), named("deprecated"));
            // Only a deprecated key's own items may use it without a warning (an allow on
            // any other would hide a deprecated value type).
            let allow_deprecated = (!deprecated.is_empty()).then(|| quote!(#[allow(deprecated)]));
            // `r#type` is the key `type`.
            let name = syn::ext::IdentExt::unraw(ident).to_string();
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

                #(#cfgs)*
                #[automatically_derived]
                #allow_deprecated
                impl #private::Key for #ident {
                    #value
                    const NAME: &'static str = #name;
                    #desc
                }

                #(#cfgs)*
                #(#deprecated)*
                #[doc(hidden)]
                #[inline(always)]
                #[allow(dead_code)]
                #allow_deprecated
                #vis const fn #ident() -> #ident {
                    #ident {}
                }
            }
        })
        .collect()
}
