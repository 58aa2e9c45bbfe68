//! `keys! { pub user_id: u64; ... }`: typed context keys.

mod expand;
mod parse;

use proc_macro2::TokenStream;

/// Expands `keys!`.
pub(crate) fn expand(input: TokenStream) -> TokenStream {
    match syn::parse2::<parse::KeysInput>(input) {
        Ok(keys) => {
            let out = expand::expand(&keys);
            crate::paths::debug_print("keys!", &out);
            out
        }
        Err(e) => e.to_compile_error(),
    }
}
