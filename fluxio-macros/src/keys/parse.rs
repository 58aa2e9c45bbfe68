//! Parses `keys!` input: `#[attrs] vis name: Type;`, repeated (`#[merge]` among the
//! attributes marks a key whose writes are merged).

use syn::parse::{Parse, ParseStream};
use syn::{Attribute, Ident, Token, Type, Visibility};

/// One declared key.
pub(crate) struct KeyDecl {
    pub(crate) attrs: Vec<Attribute>,
    /// Declared `#[merge]`: stages' writes are merged into the value.
    pub(crate) merge: bool,
    pub(crate) vis: Visibility,
    pub(crate) ident: Ident,
    pub(crate) ty: Type,
}

/// The whole `keys!` input.
pub(crate) struct KeysInput {
    pub(crate) krate: Option<syn::Path>,
    pub(crate) keys: Vec<KeyDecl>,
}

impl Parse for KeysInput {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut krate = None;
        if input.peek(Token![crate]) && input.peek2(Token![=]) {
            input.parse::<Token![crate]>()?;
            input.parse::<Token![=]>()?;
            krate = Some(input.parse()?);
            input.parse::<Token![;]>()?;
        }
        let mut keys: Vec<KeyDecl> = Vec::new();
        while !input.is_empty() {
            let mut attrs = input.call(Attribute::parse_outer)?;
            let mut merge = false;
            let mut kept = Vec::with_capacity(attrs.len());
            for attr in attrs.drain(..) {
                if attr.path().is_ident("merge") {
                    if !matches!(attr.meta, syn::Meta::Path(_)) {
                        return Err(syn::Error::new_spanned(
                            &attr,
                            "`#[merge]` takes no arguments: the key's type says how to merge (`fluxio::Merge`)",
                        ));
                    }
                    if merge {
                        return Err(syn::Error::new_spanned(&attr, "`#[merge]` is given twice"));
                    }
                    merge = true;
                } else {
                    kept.push(attr);
                }
            }
            let attrs = kept;
            let vis: Visibility = input.parse()?;
            let ident: Ident = input.parse()?;
            if let Some(first) = keys.iter().find(|k| k.ident == ident) {
                let mut e =
                    syn::Error::new(ident.span(), format!("key `{ident}` is declared twice"));
                e.combine(syn::Error::new(first.ident.span(), "first declared here"));
                return Err(e);
            }
            input.parse::<Token![:]>().map_err(|e| {
                syn::Error::new(e.span(), format!("expected `:` and the value type after key `{ident}`, e.g. `{ident}: String;`"))
            })?;
            let ty: Type = input.parse()?;
            keys.push(KeyDecl {
                attrs,
                merge,
                vis,
                ident,
                ty,
            });
            if input.is_empty() {
                break;
            }
            input.parse::<Token![;]>()?;
        }
        if keys.is_empty() {
            return Err(syn::Error::new(
                proc_macro2::Span::call_site(),
                "`keys!` declares no key; write e.g. `keys! { pub user_id: u64; }`",
            ));
        }
        Ok(KeysInput { krate, keys })
    }
}
