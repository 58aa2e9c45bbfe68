//! Parses `pipeline! { ... }`.

use syn::parse::{Parse, ParseStream};
use syn::{Ident, LitStr, Token, braced, bracketed};

use crate::symbol::PARALLEL;

/// One branch of a route block: `"label" => [nodes]`.
pub(crate) struct Branch {
    pub(crate) label: LitStr,
    pub(crate) bracket: proc_macro2::Span,
    pub(crate) nodes: Vec<Node>,
}

/// One node as written.
pub(crate) enum Node {
    /// A stage, by path.
    Stage(syn::Path),
    /// `parallel { a, b, ... }`.
    Parallel {
        keyword: Ident,
        brace: proc_macro2::Span,
        members: Vec<syn::Path>,
    },
    /// `route => { "label" => [...], ... }`.
    Route {
        stage: syn::Path,
        brace: proc_macro2::Span,
        branches: Vec<Branch>,
    },
    /// Any other expression: a nested pipeline value.
    Sub(Box<syn::Expr>),
}

/// The whole input.
pub(crate) struct PipelineInput {
    pub(crate) krate: Option<syn::Path>,
    pub(crate) nodes: Vec<Node>,
}

fn node_list(input: ParseStream<'_>) -> syn::Result<Vec<Node>> {
    let mut nodes = Vec::new();
    while !input.is_empty() {
        nodes.push(input.parse()?);
        if input.is_empty() {
            break;
        }
        input.parse::<Token![,]>()?;
    }
    Ok(nodes)
}

impl Parse for PipelineInput {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut krate = None;
        if input.peek(Token![crate]) && input.peek2(Token![=]) {
            input.parse::<Token![crate]>()?;
            input.parse::<Token![=]>()?;
            krate = Some(input.call(syn::Path::parse_mod_style)?);
            input.parse::<Token![;]>()?;
        }
        Ok(PipelineInput {
            krate,
            nodes: node_list(input)?,
        })
    }
}

/// The error for a member of a `parallel` block, starting at `member`, that is not a
/// stage: a nested pipeline (a whole expression before the next comma) is named as one,
/// spanned whole; anything else (a missing comma, say) is told at `here`.
fn not_a_parallel_member(member: ParseStream<'_>, here: ParseStream<'_>) -> syn::Error {
    const HOLDS: &str = "`parallel { ... }` holds stages only, separated by commas";
    let fork = member.fork();
    match fork.parse::<syn::Expr>() {
        Ok(expr) if fork.is_empty() || fork.peek(Token![,]) => syn::Error::new_spanned(
            expr,
            format!(
                "{HOLDS}: a nested pipeline (an expression, like `sub.clone()`) cannot run in \
                 a parallel block; run it before or after the block"
            ),
        ),
        _ => here.error(HOLDS),
    }
}

impl Parse for Node {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        if input.peek(Ident) && input.peek2(syn::token::Brace) {
            let fork = input.fork();
            let keyword: Ident = fork.parse()?;
            if keyword == PARALLEL {
                input.parse::<Ident>()?;
                let content;
                let brace = braced!(content in input);
                let mut members = Vec::new();
                while !content.is_empty() {
                    if !(content.peek(Ident)
                        || content.peek(Token![::])
                        || content.peek(Token![crate])
                        || content.peek(Token![self])
                        || content.peek(Token![super]))
                    {
                        return Err(not_a_parallel_member(&content, &content));
                    }
                    let member = content.fork();
                    let path = content.call(syn::Path::parse_mod_style)?;
                    if content.peek(Token![=>]) {
                        return Err(syn::Error::new_spanned(
                            &path,
                            "a route cannot run in a `parallel { ... }` block: its branches \
                             follow it; move it and its branches out of the block",
                        ));
                    }
                    if !(content.is_empty() || content.peek(Token![,])) {
                        return Err(not_a_parallel_member(&member, &content));
                    }
                    members.push(path);
                    if content.is_empty() {
                        break;
                    }
                    content.parse::<Token![,]>()?;
                }
                return Ok(Node::Parallel {
                    keyword,
                    brace: brace.span.join(),
                    members,
                });
            }
        }
        // `parallel(a, b)` or `parallel [a, b]`: the block written with other brackets
        // (a function named `parallel` returning a pipeline would be a stretch).
        if input.peek(Ident) && (input.peek2(syn::token::Paren) || input.peek2(syn::token::Bracket))
        {
            let fork = input.fork();
            let keyword: Ident = fork.parse()?;
            if keyword == PARALLEL {
                return Err(syn::Error::new(
                    keyword.span(),
                    "a parallel block takes braces: `parallel { a, b }`",
                ));
            }
        }
        // A plain path is a stage (or a route stage when `=>` follows); anything else is an
        // expression producing a nested pipeline.
        let fork = input.fork();
        if let Ok(path) = fork.call(syn::Path::parse_mod_style) {
            if fork.is_empty() || fork.peek(Token![,]) {
                input.call(syn::Path::parse_mod_style)?;
                return Ok(Node::Stage(path));
            }
            if fork.peek(Token![=>]) {
                input.call(syn::Path::parse_mod_style)?;
                input.parse::<Token![=>]>()?;
                if !input.peek(syn::token::Brace) {
                    return Err(input.error(
                        "expected the route's branches: `=> { \"label\" => [stages], ... }`",
                    ));
                }
                let content;
                let brace = braced!(content in input);
                let mut branches = Vec::new();
                while !content.is_empty() {
                    let label: LitStr = content.parse().map_err(|e| {
                        syn::Error::new(e.span(), "a route branch starts with its label as a string: `\"premium\" => [stages]`")
                    })?;
                    content.parse::<Token![=>]>()?;
                    let inner;
                    let bracket = bracketed!(inner in content);
                    let nodes = node_list(&inner)?;
                    branches.push(Branch {
                        label,
                        bracket: bracket.span.join(),
                        nodes,
                    });
                    if content.is_empty() {
                        break;
                    }
                    content.parse::<Token![,]>()?;
                }
                return Ok(Node::Route {
                    stage: path,
                    brace: brace.span.join(),
                    branches,
                });
            }
        }
        Ok(Node::Sub(Box::new(input.parse()?)))
    }
}
