//! Flattens the input and checks the rules that the macro's own tokens can decide.

use super::model::{Analysis, FlatKind, FlatNode, ParallelBlock};
use super::parse::{Node, PipelineInput};
use crate::diag::Ctxt;

pub(crate) fn analyze(cx: &mut Ctxt, input: PipelineInput) -> Analysis {
    let mut a = Analysis {
        nodes: Vec::new(),
        parallel_blocks: Vec::new(),
        has_sub: false,
    };
    // Rule: a pipeline runs something; an empty one is a mistake, not a no-op.
    if input.nodes.is_empty() {
        cx.syn_error(syn::Error::new(
            proc_macro2::Span::call_site(),
            "`pipeline!` needs at least one stage, e.g. `pipeline! { fetch_user, greet }`",
        ));
    }
    flatten(cx, &mut a, input.nodes, None);
    a
}

fn flatten(cx: &mut Ctxt, a: &mut Analysis, nodes: Vec<Node>, branch: Option<(u32, u32)>) {
    for node in nodes {
        match node {
            Node::Stage(path) => a.nodes.push(FlatNode {
                kind: FlatKind::Stage(path),
                group: 0,
                branch,
            }),
            Node::Sub(expr) => {
                a.has_sub = true;
                a.nodes.push(FlatNode {
                    kind: FlatKind::Sub(expr),
                    group: 0,
                    branch,
                });
            }
            Node::Parallel {
                keyword,
                brace,
                members,
            } => {
                // Rule: a `parallel` block forks at least two stages; fewer is almost
                // certainly an editing mistake.
                if members.len() < 2 {
                    cx.syn_error(syn::Error::new(
                        brace,
                        format!(
                            "`{keyword} {{ ... }}` needs at least two stages to run side by side"
                        ),
                    ));
                }
                let group = a.parallel_blocks.len() as u32 + 1;
                let first = a.nodes.len();
                for path in &members {
                    a.nodes.push(FlatNode {
                        kind: FlatKind::Stage(path.clone()),
                        group,
                        branch,
                    });
                }
                a.parallel_blocks.push(ParallelBlock {
                    keyword: keyword.span(),
                    brace,
                    first,
                    members,
                });
            }
            Node::Route {
                stage,
                brace,
                branches,
            } => {
                check_branches(cx, brace, &branches);
                let route = a.nodes.len() as u32;
                let labels = branches.iter().map(|b| b.label.value()).collect();
                a.nodes.push(FlatNode {
                    kind: FlatKind::Route { stage, labels },
                    group: 0,
                    branch,
                });
                for (l, b) in branches.into_iter().enumerate() {
                    flatten(cx, a, b.nodes, Some((route, l as u32)));
                }
            }
        }
    }
}

/// Rule: a route has branches, each label once, each branch non-empty, so every label a
/// route stage can return leads somewhere definite.
fn check_branches(cx: &mut Ctxt, brace: proc_macro2::Span, branches: &[super::parse::Branch]) {
    if branches.is_empty() {
        cx.syn_error(syn::Error::new(
            brace,
            "a route needs at least one branch: `{ \"label\" => [stages] }`",
        ));
    }
    for (i, b) in branches.iter().enumerate() {
        if branches[..i]
            .iter()
            .any(|o| o.label.value() == b.label.value())
        {
            cx.error_spanned_by(
                &b.label,
                format!("duplicate route label `{}`", b.label.value()),
            );
        }
        if b.nodes.is_empty() {
            cx.syn_error(syn::Error::new(
                b.bracket,
                format!(
                    "route branch `{}` is empty; give it at least one stage",
                    b.label.value()
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(tokens: proc_macro2::TokenStream) -> (Analysis, syn::Result<()>) {
        let input: PipelineInput = syn::parse2(tokens).unwrap();
        let mut cx = Ctxt::default();
        let a = analyze(&mut cx, input);
        (a, cx.check())
    }

    #[test]
    fn flattens_blocks_and_branches() {
        let (a, ok) =
            run(quote::quote!(a, parallel { b, c }, r => { "x" => [d], "y" => [e, f] }, g));
        assert!(ok.is_ok());
        assert_eq!(a.nodes.len(), 8);
        assert_eq!((a.nodes[1].group, a.nodes[2].group), (1, 1));
        assert_eq!(a.nodes[4].branch, Some((3, 0)));
        assert_eq!(a.nodes[6].branch, Some((3, 1)));
        assert_eq!(a.nodes[7].branch, None);
        assert!(!a.has_sub);
    }

    #[test]
    fn reports_every_problem() {
        let (_, err) = run(quote::quote!(r => { "x" => [], "x" => [a] }));
        let msgs: Vec<String> = err
            .unwrap_err()
            .into_iter()
            .map(|e| e.to_string())
            .collect();
        assert_eq!(msgs.len(), 2, "{msgs:?}");
        assert!(msgs.iter().any(|m| m.contains("duplicate route label `x`")));
        assert!(msgs.iter().any(|m| m.contains("route branch `x` is empty")));
    }

    #[test]
    fn expressions_are_nested_pipelines() {
        let (a, _) = run(quote::quote!(a, sub.clone(), &other));
        assert!(a.has_sub);
        assert!(matches!(a.nodes[1].kind, FlatKind::Sub(_)));
    }
}
