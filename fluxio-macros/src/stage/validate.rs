//! Turns the parsed options and function into a `StageDef`, one `check_*` per rule.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, GenericArgument, ItemFn, LitStr, Pat, PathArguments, ReturnType, Type};

use super::model::{Exec, Output, Param, ParamRole, StageDef};
use super::parse::{KeyRef, StageArgs, StageOption, parse_duration};
use crate::diag::Ctxt;

/// The last path segment of a type, with its generic arguments.
fn last_segment(ty: &Type) -> Option<&syn::PathSegment> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last(),
        Type::Group(g) => last_segment(&g.elem),
        Type::Paren(p) => last_segment(&p.elem),
        _ => None,
    }
}

fn is_named(ty: &Type, name: &str) -> bool {
    last_segment(ty).is_some_and(|s| s.ident == name)
}

fn first_type_arg(ty: &Type) -> Option<&Type> {
    match &last_segment(ty)?.arguments {
        PathArguments::AngleBracketed(args) => args.args.iter().find_map(|a| match a {
            GenericArgument::Type(t) => Some(t),
            _ => None,
        }),
        _ => None,
    }
}

fn is_unit(ty: &Type) -> bool {
    matches!(ty, Type::Tuple(t) if t.elems.is_empty())
}

/// Collects the options, reporting duplicates at their second occurrence.
///
/// Rule: each option at most once, and each key at most once per list, so the metadata
/// says exactly what the user meant.
fn check_options(cx: &mut Ctxt, args: StageArgs) -> Options {
    let mut o = Options::default();
    for option in args.options {
        let (ident, dup) = match &option {
            StageOption::Reads(i, _) => (i.clone(), o.reads.is_some()),
            StageOption::Writes(i, _) => (i.clone(), o.writes.is_some()),
            StageOption::Timeout(i, _) => (i.clone(), o.timeout.is_some()),
            StageOption::Name(i, _) => (i.clone(), o.name.is_some()),
            StageOption::Crate(i, _) => (i.clone(), o.krate.is_some()),
            StageOption::Fallback(i, _) => (i.clone(), o.fallback.is_some()),
            StageOption::Rollback(i, _) => (i.clone(), o.rollback.is_some()),
        };
        if dup {
            cx.error_spanned_by(&ident, format!("duplicate `{ident}` in #[stage]"));
            continue;
        }
        match option {
            StageOption::Reads(i, keys) => o.reads = Some(check_key_list(cx, &i.to_string(), keys)),
            StageOption::Writes(i, keys) => {
                o.writes = Some(check_key_list(cx, &i.to_string(), keys))
            }
            StageOption::Timeout(_, lit) => match parse_duration(&lit.value(), lit.span()) {
                Ok(nanos) => o.timeout = Some(nanos),
                Err(e) => cx.syn_error(e),
            },
            StageOption::Name(_, lit) => {
                if lit.value().trim().is_empty() {
                    cx.error_spanned_by(&lit, "`name` must not be empty");
                } else if lit.value().contains('/') {
                    cx.error_spanned_by(
                        &lit,
                        "`name` must not hold `/`: it separates nested pipelines in idempotency \
                         keys (`<run id>:<nested pipeline>/<stage>`)",
                    );
                }
                o.name = Some(lit)
            }
            StageOption::Crate(_, path) => o.krate = Some(path),
            StageOption::Fallback(_, path) => o.fallback = Some(path),
            StageOption::Rollback(_, path) => o.rollback = Some(path),
        }
    }
    o
}

#[derive(Default)]
struct Options {
    reads: Option<Vec<KeyRef>>,
    writes: Option<Vec<KeyRef>>,
    timeout: Option<u128>,
    name: Option<LitStr>,
    krate: Option<syn::Path>,
    fallback: Option<syn::Path>,
    rollback: Option<syn::Path>,
}

fn check_key_list(cx: &mut Ctxt, option: &str, keys: Vec<KeyRef>) -> Vec<KeyRef> {
    let mut out: Vec<KeyRef> = Vec::new();
    for key in keys {
        if out.iter().any(|k| k.ident() == key.ident()) {
            cx.error_spanned_by(
                &key.0,
                format!("`{}` appears twice in `{option}`", key.ident()),
            );
        } else {
            out.push(key);
        }
    }
    out
}

/// Rule: a stage is a free function with plain, named parameters and no generics, so
/// the runtime can call it from the context alone.
fn check_signature(cx: &mut Ctxt, item: &ItemFn) {
    let sig = &item.sig;
    let only_lifetimes = sig
        .generics
        .params
        .iter()
        .all(|p| matches!(p, syn::GenericParam::Lifetime(_)));
    if !sig.generics.params.is_empty() && only_lifetimes {
        cx.error_spanned_by(
            &sig.generics,
            "a stage function cannot be generic, not even over a lifetime: drop it — a \
             parameter `&V` borrows from the context already",
        );
    } else if !sig.generics.params.is_empty() {
        cx.error_spanned_by(&sig.generics, "a stage function cannot be generic");
    }
    for arg in &sig.inputs {
        if let syn::FnArg::Typed(arg) = arg {
            if let Some(imp) = impl_trait_in(&arg.ty) {
                cx.error_spanned_by(
                    imp,
                    "a stage function cannot be generic: `impl Trait` in a parameter makes \
                     it so; take the key's value type (`&V`, or `V` for a clone)",
                );
            }
        }
    }
    if let Some(c) = &sig.constness {
        cx.error_spanned_by(c, "a stage function cannot be `const`");
    }
    if let Some(u) = &sig.unsafety {
        cx.error_spanned_by(u, "a stage function cannot be `unsafe`");
    }
    if let Some(v) = &sig.variadic {
        cx.error_spanned_by(v, "a stage function cannot be variadic");
    }
}

/// The first `impl Trait` in `ty`, at its top or inside a reference, a slice, a tuple or
/// a type's arguments (`&impl AsRef<str>`, `Vec<impl Display>`).
fn impl_trait_in(ty: &Type) -> Option<&Type> {
    match ty {
        Type::ImplTrait(_) => Some(ty),
        Type::Reference(r) => impl_trait_in(&r.elem),
        Type::Slice(s) => impl_trait_in(&s.elem),
        Type::Array(a) => impl_trait_in(&a.elem),
        Type::Paren(p) => impl_trait_in(&p.elem),
        Type::Group(g) => impl_trait_in(&g.elem),
        Type::Tuple(t) => t.elems.iter().find_map(impl_trait_in),
        Type::Path(p) => p.path.segments.iter().find_map(|seg| match &seg.arguments {
            syn::PathArguments::AngleBracketed(args) => args.args.iter().find_map(|a| match a {
                syn::GenericArgument::Type(t) => impl_trait_in(t),
                _ => None,
            }),
            _ => None,
        }),
        _ => None,
    }
}

/// The return type split into (is `Result`, the success type).
fn split_result(ret: &ReturnType) -> (bool, Option<Type>) {
    match ret {
        ReturnType::Default => (false, None),
        ReturnType::Type(_, ty) => {
            if is_named(ty, "Result") {
                (true, first_type_arg(ty).cloned())
            } else {
                (false, Some((**ty).clone()))
            }
        }
    }
}

/// Whether the return type is a stream: `impl Stream<...>`, a boxed one (`BoxStream<..>`,
/// `Pin<Box<dyn Stream<..> + ..>>`). Known by how it is written, as other roles are.
fn returns_stream(ret: &ReturnType) -> bool {
    let ReturnType::Type(_, ty) = ret else {
        return false;
    };
    is_stream(ty)
}

fn is_stream(ty: &Type) -> bool {
    let names_stream = |bounds: &syn::punctuated::Punctuated<syn::TypeParamBound, _>| {
        bounds.iter().any(|b| match b {
            syn::TypeParamBound::Trait(t) => {
                t.path.segments.last().is_some_and(|s| s.ident == "Stream")
            }
            _ => false,
        })
    };
    match ty {
        Type::ImplTrait(imp) => names_stream(&imp.bounds),
        Type::TraitObject(obj) => names_stream(&obj.bounds),
        Type::Path(p) => {
            let Some(last) = p.path.segments.last() else {
                return false;
            };
            if last.ident == "BoxStream" || last.ident == "LocalBoxStream" {
                return true;
            }
            // `Pin<Box<dyn Stream<..>>>`
            let inner = |seg: &syn::PathSegment| match &seg.arguments {
                syn::PathArguments::AngleBracketed(args) => {
                    args.args.iter().find_map(|a| match a {
                        syn::GenericArgument::Type(t) => Some(t.clone()),
                        _ => None,
                    })
                }
                _ => None,
            };
            let boxed_dyn_stream = |t: &Type| match t {
                Type::Path(b) => b.path.segments.last().is_some_and(|seg| {
                    seg.ident == "Box"
                        && inner(seg)
                            .is_some_and(|t| matches!(t, Type::TraitObject(_)) && is_stream(&t))
                }),
                _ => false,
            };
            last.ident == "Pin" && inner(last).is_some_and(|t| boxed_dyn_stream(&t))
        }
        _ => false,
    }
}

/// Builds the model, recording every problem in `cx`.
pub(crate) fn stage_from_ast(cx: &mut Ctxt, args: StageArgs, item: ItemFn) -> Option<StageDef> {
    let o = check_options(cx, args);
    check_signature(cx, &item);
    let sig = &item.sig;
    let ret_span = match &sig.output {
        ReturnType::Default => sig.ident.span(),
        ReturnType::Type(_, ty) => ty.span(),
    };
    let reads = o.reads.unwrap_or_default();
    let writes = o.writes.unwrap_or_default();

    // Rule: a stream stage is a plain `fn` returning the stream (its async work lives in
    // the stream); `async fn` would make the stream the value of a future.
    if let Some(token) = sig.asyncness.filter(|_| returns_stream(&sig.output)) {
        cx.error_spanned_by(
            token,
            "a stream stage is a plain `fn` returning `impl Stream<Item = Result<C, E>>`: \
             remove `async` (the stream does the async work, e.g. with `async_stream` or \
             `futures::stream::unfold`)",
        );
    }
    // (An `async fn` returning a stream, refused above, is taken as a stream stage, so
    // that no other error adds to that one.)
    let exec = if returns_stream(&sig.output) {
        Exec::Stream
    } else if sig.asyncness.is_some() {
        Exec::Async
    } else {
        Exec::Blocking
    };
    let (fallible, ok) = if exec == Exec::Stream {
        (false, None)
    } else {
        split_result(&sig.output)
    };
    let output = match (&ok, exec) {
        (_, Exec::Stream) => Output::Stream,
        (None, _) => Output::Unit,
        (Some(t), _) if is_unit(t) => Output::Unit,
        (Some(t), _) if is_named(t, "Route") => Output::Route,
        (Some(t), _) if is_named(t, "Ctx") => Output::Ctx,
        (Some(_), _) => Output::Values,
    };

    let params = check_params(cx, &item, &reads);
    // Rule: a stream stage's chunks are already delivered when it fails, so there is
    // nothing a fallback could replace, and nothing to roll back that the stage owns.
    if exec == Exec::Stream {
        for path in o.fallback.iter().chain(&o.rollback) {
            cx.error_spanned_by(
                path,
                "stream stages cannot have a `fallback` or a `rollback`",
            );
        }
    }
    let ctx_style = params.iter().any(|p| matches!(p.role, ParamRole::Ctx));
    check_output(cx, &output, ok.as_ref(), &writes, ctx_style, ret_span);

    let name = o.name.unwrap_or_else(|| {
        // `fn r#match` is the stage `match`.
        let name = syn::ext::IdentExt::unraw(&sig.ident).to_string();
        LitStr::new(&name, sig.ident.span())
    });
    Some(StageDef {
        item,
        name,
        reads,
        writes,
        timeout_nanos: o.timeout,
        krate: o.krate,
        fallback: o.fallback,
        rollback: o.rollback,
        exec,
        output,
        fallible,
        params,
        ret_span,
    })
}

/// Rule: parameters are the reads. Each named parameter is a key of `reads` (by the key's
/// name), a `Res<T>` resource, or, alone, the whole `ctx: Ctx`; each read has its parameter.
fn check_params(cx: &mut Ctxt, item: &ItemFn, reads: &[KeyRef]) -> Vec<Param> {
    let mut params = Vec::new();
    for input in &item.sig.inputs {
        let arg = match input {
            // Refused before validation (a method is left as it is).
            FnArg::Receiver(_) => continue,
            FnArg::Typed(arg) => arg,
        };
        let ident = match &*arg.pat {
            Pat::Ident(p) if p.by_ref.is_none() && p.subpat.is_none() => p.ident.clone(),
            other => {
                cx.error_spanned_by(
                    other,
                    "stage parameters must be plain names: the name says which key they read",
                );
                continue;
            }
        };
        let role = if is_named(&arg.ty, "Res") {
            match first_type_arg(&arg.ty) {
                Some(inner) => ParamRole::Resource(Box::new(inner.clone())),
                None => {
                    cx.error_spanned_by(&arg.ty, "`Res` needs the resource type: `Res<MyClient>`");
                    continue;
                }
            }
        } else if is_named(&arg.ty, "Ctx") {
            ParamRole::Ctx
        } else if is_named(&arg.ty, "RunInfo") {
            ParamRole::RunInfo
        } else if let Some(key) = reads.iter().find(|k| *k.ident() == ident).or_else(|| {
            // (`_type` for the key `r#type`.)
            reads
                .iter()
                .find(|k| ident == format!("_{}", syn::ext::IdentExt::unraw(k.ident())))
        }) {
            // `_total` reads `total` without using it: a dependency on the key only.
            ParamRole::Read(key.clone())
        } else {
            // `_total` names the key `total` (a read whose value goes unused).
            let name = ident.to_string();
            let key = name
                .strip_prefix('_')
                .filter(|k| !k.is_empty())
                .unwrap_or(&name);
            cx.error_spanned_by(
                &arg.pat,
                format!("parameter `{ident}` is not in `reads`; add it (`reads = [{key}]`), or take a shared value as `Res<T>` or the run's identity as `RunInfo`"),
            );
            continue;
        };
        params.push(Param {
            ident,
            ty: arg.ty.clone(),
            role,
        });
    }
    let ctx_params: Vec<&Param> = params
        .iter()
        .filter(|p| matches!(p.role, ParamRole::Ctx))
        .collect();
    let n_reads = params
        .iter()
        .filter(|p| matches!(p.role, ParamRole::Read(_)))
        .count();
    if !ctx_params.is_empty() && (ctx_params.len() > 1 || n_reads > 0) {
        cx.error_spanned_by(
            &item.sig.inputs,
            "a ctx-style stage takes one `ctx: Ctx` parameter (besides `Res<T>` and `RunInfo`); read keys from it",
        );
    }
    if ctx_params.is_empty() {
        for key in reads {
            let has_param = params
                .iter()
                .any(|p| matches!(&p.role, ParamRole::Read(k) if k.ident() == key.ident()));
            if !has_param {
                cx.error_spanned_by(
                    &key.0,
                    format!(
                        "`reads` names `{}` but the function has no parameter `{}`",
                        key.ident(),
                        key.ident()
                    ),
                );
            }
        }
    }
    params
}

/// Rule: the return value is the writes. No writes: `()`; one: its value; several: a
/// tuple in `writes` order. Route and stream stages write nothing; ctx-style stages return
/// the new `Ctx` and are checked at run time against `writes`.
fn check_output(
    cx: &mut Ctxt,
    output: &Output,
    ok: Option<&Type>,
    writes: &[KeyRef],
    ctx_style: bool,
    ret_span: Span,
) {
    let err = |cx: &mut Ctxt, msg: String| cx.syn_error(syn::Error::new(ret_span, msg));
    match output {
        Output::Route | Output::Stream if !writes.is_empty() => {
            let what = if matches!(output, Output::Route) { "a route stage" } else { "a stream stage" };
            cx.error_spanned_by(&writes[0].0, format!("{what} cannot declare `writes`: it produces a {} instead", if matches!(output, Output::Route) { "`Route`" } else { "stream of chunks" }));
        }
        Output::Ctx if !ctx_style => err(cx, "a stage returning `Ctx` must take `ctx: Ctx` as its only parameter".into()),
        _ if ctx_style && !matches!(output, Output::Ctx) => {
            err(cx, "a ctx-style stage (`ctx: Ctx`) must return the new context: `Result<Ctx, StageError>`".into())
        }
        Output::Unit if !writes.is_empty() => err(
            cx,
            format!("the stage declares `writes = [{}]` but returns nothing; return the value(s) to write", names(writes)),
        ),
        Output::Values if writes.is_empty() => err(
            cx,
            "the stage returns a value but declares no `writes`; add the key it writes, e.g. `writes = [user]`".into(),
        ),
        Output::Values if writes.len() > 1 => {
            if let Some(Type::Tuple(t)) = ok {
                if t.elems.len() != writes.len() {
                    err(cx, format!(
                        "the stage writes {} keys ({}) but returns a tuple of {}; return one value per key, in `writes` order",
                        writes.len(), names(writes), t.elems.len()
                    ));
                }
            }
        }
        _ => {}
    }
}

fn names(keys: &[KeyRef]) -> String {
    keys.iter()
        .map(|k| k.ident().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}
