//! Generates the stage value, its `run` function and its `Stage` impl from a `StageDef`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use super::model::{Exec, Output, ParamRole, StageDef};

pub(crate) fn expand(def: &StageDef) -> TokenStream {
    let private = crate::paths::private(def.krate.as_ref());
    let item = &def.item;
    let vis = &item.vis;
    let ident = &item.sig.ident;
    let docs: Vec<&syn::Attribute> = item
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    // `#[cfg]` applies to every item of the stage; `#[deprecated]` to the stage value too
    // (and to `run`, which keeps all the function's attributes), while the stage's own
    // impls may use both.
    let named = |name: &str| -> Vec<&syn::Attribute> {
        item.attrs
            .iter()
            .filter(|a| a.path().is_ident(name))
            .collect()
    };
    let (cfgs, deprecated) = (named("cfg"), named("deprecated"));
    // Only a deprecated stage's own impls may use it without a warning: on any other, an
    // allow would hide the user's deprecated calls in the stage's body.
    let allow_deprecated = (!deprecated.is_empty()).then(|| quote!(#[allow(deprecated)]));
    let name = &def.name;

    let mut run_fn = item.clone();
    run_fn.sig.ident = format_ident!("run", span = ident.span());
    run_fn.vis = vis.clone();

    let reads = def.reads.iter().map(|k| {
        let p = &k.0;
        quote_spanned!(p.span()=> <#p as #private::Key>::DESC)
    });
    let writes = def.writes.iter().map(|k| {
        let p = &k.0;
        quote_spanned!(p.span()=> <#p as #private::Key>::DESC)
    });
    let kind = match (&def.output, def.exec) {
        (_, Exec::Stream) => quote!(Stream),
        (Output::Route, _) => quote!(Route),
        (_, Exec::Blocking) => quote!(Sync),
        _ => quote!(Async),
    };
    let access = match def.output {
        Output::Ctx => quote!(ctx_style),
        _ => quote!(new),
    };
    let timeout = match def.timeout_nanos {
        Some(n) => {
            let n = n as u64;
            quote!(::core::option::Option::Some(#private::Duration::from_nanos(#n)))
        }
        None => quote!(::core::option::Option::None),
    };
    let resource_descs = def.params.iter().filter_map(|p| match &p.role {
        ParamRole::Resource(ty) => {
            Some(quote_spanned!(ty.span()=> #private::ResourceDesc::of::<#ty>()))
        }
        _ => None,
    });

    // Resources are looked up before the future starts (the future must not borrow the
    // environment); a missing one is reported from inside the future.
    let take_resources: Vec<TokenStream> = def.params.iter().filter_map(|p| match &p.role {
        ParamRole::Resource(ty) => {
            let id = &p.ident;
            Some(quote! {
                let #id: ::core::option::Option<#private::Res<#ty>> = __fluxio_env.resources.get::<#ty>();
            })
        }
        ParamRole::RunInfo => {
            let id = &p.ident;
            Some(quote! {
                let #id: #private::RunInfo =
                    __fluxio_env.run_info(#name);
            })
        }
        _ => None,
    }).collect();
    let unwrap_resources: Vec<TokenStream> = def
        .params
        .iter()
        .filter_map(|p| match &p.role {
            ParamRole::Resource(ty) => {
                let id = &p.ident;
                Some(quote! {
                    let #id: #private::Res<#ty> = match #id {
                        ::core::option::Option::Some(__fluxio_r) => __fluxio_r,
                        ::core::option::Option::None => {
                            return ::core::result::Result::Err(
                                #private::missing_resource(#name, ::core::any::type_name::<#ty>()),
                            );
                        }
                    };
                })
            }
            _ => None,
        })
        .collect();
    let bind_reads: Vec<TokenStream> = def
        .params
        .iter()
        .filter_map(|p| {
            let (id, ty) = (&p.ident, &p.ty);
            match &p.role {
                ParamRole::Read(key) => {
                    let k = &key.0;
                    // The conversion at the parameter's type, where a wrong type is reported;
                    // `__fluxio_ctx` keeps the macro's hygiene (the type may come from another
                    // macro's arguments, with its own).
                    let from_read = quote_spanned! {ty.span()=>
                        <#ty as #private::FromRead<'_, <#k as #private::Key>::Value>>::from_read
                    };
                    Some(quote! {
                        let #id: #ty = #from_read(#private::read_key::<#k>(&__fluxio_ctx, #name)?);
                    })
                }
                ParamRole::Ctx => Some(
                    quote!(let #id: #private::Ctx = ::core::clone::Clone::clone(&__fluxio_ctx);),
                ),
                ParamRole::Resource(_) | ParamRole::RunInfo => None,
            }
        })
        .collect();
    let args: Vec<&syn::Ident> = def.params.iter().map(|p| &p.ident).collect();
    // The body of a call of `target` (the stage's own function, or its fallback). `own`:
    // the stage's function, whose declared return type is checked against the keys with a
    // clear message (a fallback's value or `Result` goes through `FallbackResult`).
    // A call of `target` with the stage's arguments (awaited for an async stage).
    let call_of = |target: TokenStream| -> TokenStream {
        let call = quote!(#target(#(#args),*));
        if def.exec == Exec::Async {
            quote!(#call.await)
        } else {
            call
        }
    };
    // A call of a fallback or rollback `path`, spanned at its name: for an async stage, one
    // that is not an `async fn` is reported there ("`u64` is not a future ... consider
    // making `fn path` asynchronous").
    let companion_call_of = |path: &syn::Path| -> TokenStream {
        let at = path.span();
        if def.exec == Exec::Async {
            quote_spanned!(at=> #path(#(#args),*).await)
        } else {
            quote_spanned!(at=> #path(#(#args),*))
        }
    };
    // `produce` (which uses the arguments) after binding them: on a blocking thread for a
    // blocking stage.
    let with_args = |produce: TokenStream| -> TokenStream {
        match def.exec {
            Exec::Blocking => quote! {
                #(#unwrap_resources)*
                #private::run_blocking(#name, move || {
                    #(#bind_reads)*
                    #produce
                }).await
            },
            _ => quote! {
                #(#unwrap_resources)*
                #(#bind_reads)*
                #produce
            },
        }
    };
    // `at`: where a value of the wrong type is reported (the stage's return type, or the
    // fallback's name in the attribute).
    // At the return type: a stream of something else than `Result`s is reported there.
    let drive_stream = crate::paths::respan(quote!(#private::drive_stream), def.ret_span);
    let convert_stream = {
        let convert = error_conversion(&private, def.ret_span);
        quote!(|__fluxio_e| #convert)
    };
    // What the stage's writes are as one value (a fallback returns it, or a `Result` of it).
    let written_type = match &def.output {
        Output::Unit | Output::Stream => quote!(()),
        Output::Values => {
            let values = def
                .writes
                .iter()
                .map(|k| {
                    let p = &k.0;
                    quote!(<#p as #private::Key>::Value)
                })
                .collect::<Vec<_>>();
            if values.len() == 1 {
                values[0].clone()
            } else {
                quote!((#(#values),*))
            }
        }
        Output::Route => quote!(#private::Route),
        Output::Ctx => quote!(#private::Ctx),
    };
    let body_for = |call: TokenStream, own: bool, at: proc_macro2::Span| -> TokenStream {
        let mut call = call;
        if !own {
            // A fallback may return the writes or a `Result` of them, whichever its stage
            // does; its error converts as a stage's, reported at its name.
            let into_result = crate::paths::respan(
                quote!(<_ as #private::FallbackResult<#written_type>>::into_result),
                at,
            );
            call = taken_at(&private, call, into_result, at);
        } else if def.fallible {
            // Spanned at the return type: an error type that converts neither way is
            // reported there.
            call = unwrap_or_return(&private, call, def.ret_span);
        }
        let produce = match &def.output {
            Output::Unit => quote! {
                let () = #call;
                ::core::result::Result::Ok(#private::StageOutput::Writes(#private::Writes::none()))
            },
            Output::Values => {
                let n = def.writes.len();
                // Bound and used with the span of the return type (or of the fallback's name),
                // where a value of the wrong type is reported.
                let temps: Vec<_> = (0..n)
                    .map(|i| format_ident!("__fluxio_w{}", i, span = at))
                    .collect();
                let bind = if n == 1 {
                    let t = &temps[0];
                    quote!(let #t = #call;)
                } else {
                    quote!(let (#(#temps),*) = #call;)
                };
                // The conversion is spanned at the return type too; `__fluxio_writes` keeps
                // the macro's span, as its binding does (a return type from a
                // `macro_rules!` argument has another hygiene).
                let pushes = def.writes.iter().zip(&temps).map(|(k, t)| {
                    let p = &k.0;
                    if own {
                        let written = crate::paths::respan(
                            quote!(#private::Written::<<#p as #private::Key>::Value>::written),
                            at,
                        );
                        quote!(__fluxio_writes.push::<#p>(#written(#t));)
                    } else {
                        let push = crate::paths::respan(quote!(push::<#p>), at);
                        quote!(__fluxio_writes.#push(#t);)
                    }
                });
                quote! {
                    #bind
                    let mut __fluxio_writes = #private::Writes::with_capacity(#n);
                    #(#pushes)*
                    ::core::result::Result::Ok(#private::StageOutput::Writes(__fluxio_writes))
                }
            }
            Output::Route => quote! {
                let __fluxio_route: #private::Route = #call;
                ::core::result::Result::Ok(#private::StageOutput::Route(__fluxio_route))
            },
            Output::Ctx => quote! {
                let __fluxio_out: #private::Ctx = #call;
                let __fluxio_writes = #private::Writes::from_ctx_diff(
                    &<Self as #private::Stage>::META, &__fluxio_ctx, &__fluxio_out,
                ).map_err(#private::StageError::new)?;
                ::core::result::Result::Ok(#private::StageOutput::Writes(__fluxio_writes))
            },
            Output::Stream => quote! {
                #drive_stream(#name, #call, __fluxio_chunks, #convert_stream).await?;
                ::core::result::Result::Ok(#private::StageOutput::Writes(#private::Writes::none()))
            },
        };
        with_args(produce)
    };
    let body = body_for(call_of(quote!(Self::run)), true, def.ret_span);

    let chunks = (def.exec == Exec::Stream)
        .then(|| quote!(let __fluxio_chunks = ::core::clone::Clone::clone(&__fluxio_env.chunks);));

    // A ctx-style stage is given its declared reads only (its rollback, its writes too):
    // what it could read past them the runtime would not see (checkpoints, caches and the
    // schedule follow the declared keys).
    let prologue_for = |rollback: bool| {
        let ctx = if matches!(def.output, Output::Ctx) {
            let writes = if rollback {
                quote!(<Self as #private::Stage>::META.access.writes)
            } else {
                quote!(&[])
            };
            quote!(#private::ctx_view(
                __fluxio_ctx,
                &[<Self as #private::Stage>::META.access.reads, #writes],
            ))
        } else {
            quote!(::core::clone::Clone::clone(__fluxio_ctx))
        };
        quote! {
            #(#take_resources)*
            let __fluxio_ctx = #ctx;
            #chunks
        }
    };
    let prologue = prologue_for(false);
    let fallback = def.fallback.as_ref().map(|path| {
        let body = body_for(companion_call_of(path), false, path.span());
        quote! {
            const HAS_FALLBACK: bool = true;
            fn fallback(&self, __fluxio_ctx: &#private::Ctx, __fluxio_env: &#private::StageEnv) -> #private::StageFuture {
                #prologue
                ::std::boxed::Box::pin(async move { #body })
            }
        }
    });
    let rollback_prologue = prologue_for(true);
    let rollback = def.rollback.as_ref().map(|path| {
        // Its error converts as the stage's does; both reported at the rollback's name.
        let call = taken_at(
            &private,
            companion_call_of(path),
            quote!(#private::RollbackResult::into_result),
            path.span(),
        );
        let body = with_args(quote! {
            let () = #call;
            ::core::result::Result::Ok(#private::StageOutput::Writes(#private::Writes::none()))
        });
        quote! {
            const HAS_ROLLBACK: bool = true;
            fn rollback(&self, __fluxio_ctx: &#private::Ctx, __fluxio_env: &#private::StageEnv) -> #private::StageFuture {
                #rollback_prologue
                ::std::boxed::Box::pin(async move { #body })
            }
        }
    });

    quote! {
        #(#docs)*
        #(#cfgs)*
        #(#deprecated)*
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #ident;

        #(#cfgs)*
        #allow_deprecated
        impl #ident {
            /// The stage's function as written, callable directly (for unit tests).
            #[allow(dead_code, clippy::ptr_arg)]
            #run_fn
        }

        #(#cfgs)*
        #[automatically_derived]
        #allow_deprecated
        impl #private::Stage for #ident {
            const META: #private::StageMeta = #private::StageMeta {
                name: #name,
                id: ::core::any::TypeId::of::<#ident>,
                kind: #private::StageKind::#kind,
                access: #private::Access::#access(&[#(#reads),*], &[#(#writes),*]),
                timeout: #timeout,
                resources: &[#(#resource_descs),*],
            };

            #[allow(clippy::manual_async_fn)]
            fn call(
                &self,
                __fluxio_ctx: &#private::Ctx,
                __fluxio_env: &#private::StageEnv,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<#private::StageOutput, #private::StageError>,
            > + ::core::marker::Send + 'static + use<> {
                #prologue
                async move { #body }
            }

            #fallback
            #rollback
        }
    }
}

/// `result` (a `Result`) unwrapped, or its error converted to a `StageError` and returned;
/// an error type that converts neither way is reported at `at`.
fn unwrap_or_return(
    private: &TokenStream,
    result: TokenStream,
    at: proc_macro2::Span,
) -> TokenStream {
    let convert = error_conversion(private, at);
    quote! {
        match #result {
            ::core::result::Result::Ok(__fluxio_v) => __fluxio_v,
            ::core::result::Result::Err(__fluxio_e) => {
                return ::core::result::Result::Err(#convert);
            }
        }
    }
}

/// What a fallback or a rollback `call` returned, turned into a `Result` by `into_result`
/// (a trait's function) and unwrapped as [`unwrap_or_return`] does. All of it is reported at
/// `at`, the function's name in the attribute — once: rustc reports a wrong return type once
/// per span. The call itself keeps its spans.
fn taken_at(
    private: &TokenStream,
    call: TokenStream,
    into_result: TokenStream,
    at: proc_macro2::Span,
) -> TokenStream {
    let take = crate::paths::relocate(
        unwrap_or_return(private, quote!(#into_result(__fluxio_r)), at),
        at,
    );
    quote! {{
        let __fluxio_r = #call;
        #take
    }}
}

/// `__fluxio_e` (a stage's error) as a `StageError`, the conversion picked by its type:
/// see `fluxio_core::support::ErrorTag`. Only the method's name carries `at` (the return
/// type), where an error type that converts neither way is reported; the variable keeps the
/// macro's own span, as its binding does (a return type from a `macro_rules!` argument has
/// another hygiene).
fn error_conversion(private: &TokenStream, at: proc_macro2::Span) -> TokenStream {
    let kind = proc_macro2::Ident::new("stage_error_kind", at);
    quote! {{
        #[allow(unused_imports)]
        use #private::{BoxedErrorKind as _, StageErrorKind as _};
        (&#private::ErrorTag::of(&__fluxio_e)).#kind().stage_error(__fluxio_e)
    }}
}

/// What is emitted when the input has errors: the errors, plus a stage value with no
/// behaviour so that uses of the stage elsewhere do not add a cascade of errors.
pub(crate) fn fallback(
    item: &syn::ItemFn,
    krate: Option<&syn::Path>,
    errors: syn::Error,
) -> TokenStream {
    let private = crate::paths::private(krate);
    let (vis, ident) = (&item.vis, &item.sig.ident);
    let name = syn::ext::IdentExt::unraw(ident).to_string();
    let errors = errors.to_compile_error();
    quote! {
        #errors
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, Default)]
        #vis struct #ident;

        impl #private::Stage for #ident {
            const META: #private::StageMeta = #private::StageMeta {
                name: #name,
                id: ::core::any::TypeId::of::<#ident>,
                kind: #private::StageKind::Async,
                access: #private::Access::NONE,
                timeout: ::core::option::Option::None,
                resources: &[],
            };
            fn call(
                &self,
                _: &#private::Ctx,
                _: &#private::StageEnv,
            ) -> impl ::core::future::Future<
                Output = ::core::result::Result<#private::StageOutput, #private::StageError>,
            > + ::core::marker::Send + 'static + use<> {
                ::core::future::ready(::core::result::Result::Err(
                    #private::StageError::msg(::core::concat!("stage `", #name, "` did not compile")),
                ))
            }
        }
    }
}
