//! The compiled pipeline: a flat list of nodes, the dependency rule over them, the
//! inspectable graph, its Mermaid rendering and its version hash.
//!
//! `pipeline!` flattens its input (sequences, `parallel` blocks, route branches) into a list
//! of nodes in source order and, when every node is a stage, evaluates [`dep_matrix`] in a
//! `const` item: the dependency graph exists before the program runs. Graphs holding a nested
//! pipeline value are computed with the same [`depends`] rule when the pipeline is built.

use std::fmt::Write as _;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::access::first_conflict_in;
use crate::key::KeyDesc;
use crate::stage::{DynStage, StageKind, StageMeta};

/// What the dependency rule knows about one node of a flattened pipeline.
#[derive(Debug, Clone, Copy)]
pub struct NodeDesc<'a> {
    /// Keys the node reads.
    pub reads: &'a [KeyDesc],
    /// Keys the node writes.
    pub writes: &'a [KeyDesc],
    /// The `parallel` block the node belongs to (0: none).
    pub group: u32,
    /// The innermost route branch holding the node: (index of the route node, label index).
    pub branch: Option<(u32, u32)>,
}

const fn inside_route(nodes: &[NodeDesc<'_>], j: usize, route: usize) -> bool {
    let mut cur = nodes[j].branch;
    while let Some((r, _)) = cur {
        if r as usize == route {
            return true;
        }
        cur = nodes[r as usize].branch;
    }
    false
}

/// Whether nodes `i` and `j` sit in different branches of one route (only one of them can
/// run in a run).
pub(crate) const fn mutually_exclusive(nodes: &[NodeDesc<'_>], i: usize, j: usize) -> bool {
    let mut a = nodes[i].branch;
    while let Some((ri, li)) = a {
        let mut b = nodes[j].branch;
        while let Some((rj, lj)) = b {
            if ri == rj {
                return li != lj;
            }
            b = nodes[rj as usize].branch;
        }
        a = nodes[ri as usize].branch;
    }
    false
}

/// Whether node `j` must wait for node `i` (`i < j` in source order).
///
/// A node waits for an earlier one when it sits inside that node's route branches, or when
/// their accesses conflict: read-after-write, write-after-write or write-after-read. Nodes
/// of one `parallel` block never wait for each other (their conflicts are compile errors),
/// and nodes of different branches of one route never both run.
pub const fn depends(nodes: &[NodeDesc<'_>], i: usize, j: usize) -> bool {
    if i >= j {
        return false;
    }
    if inside_route(nodes, j, i) {
        return true;
    }
    if mutually_exclusive(nodes, i, j) {
        return false;
    }
    if nodes[i].group != 0 && nodes[i].group == nodes[j].group {
        return false;
    }
    first_conflict_in(
        nodes[i].reads,
        nodes[i].writes,
        nodes[j].reads,
        nodes[j].writes,
    )
    .is_some()
}

/// The full dependency matrix: `m[j][i]` is true when node `j` waits for node `i`.
pub const fn dep_matrix<const N: usize>(nodes: &[NodeDesc<'static>; N]) -> [[bool; N]; N] {
    let mut m = [[false; N]; N];
    let mut j = 0;
    while j < N {
        let mut i = 0;
        while i < j {
            m[j][i] = depends(nodes, i, j);
            i += 1;
        }
        j += 1;
    }
    m
}

/// How a node executes.
#[derive(Clone)]
pub(crate) enum Exec {
    Stage(Arc<dyn DynStage>),
    Pipeline(crate::run::Pipeline),
}

/// One node of a pipeline under construction (built by `pipeline!`'s output).
#[derive(Clone)]
pub struct NodeSpec {
    pub(crate) meta: StageMeta,
    pub(crate) reads: Vec<KeyDesc>,
    pub(crate) writes: Vec<KeyDesc>,
    pub(crate) exec: Exec,
    pub(crate) group: u32,
    pub(crate) branch: Option<(u32, u32)>,
    pub(crate) labels: Vec<&'static str>,
    /// The stage has a fallback.
    pub(crate) has_fallback: bool,
    /// The stage has a rollback.
    pub(crate) has_rollback: bool,
}

impl std::fmt::Debug for NodeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeSpec")
            .field("name", &self.meta.name)
            .finish_non_exhaustive()
    }
}

impl NodeSpec {
    /// A stage node.
    pub fn stage<S: crate::Stage>(stage: S, group: u32, branch: Option<(u32, u32)>) -> Self {
        let meta = S::META;
        NodeSpec {
            meta,
            reads: meta.access.reads.to_vec(),
            writes: meta.access.writes.to_vec(),
            exec: Exec::Stage(Arc::new(crate::stage::StageBox::new(stage))),
            group,
            branch,
            labels: Vec::new(),
            has_fallback: S::HAS_FALLBACK,
            has_rollback: S::HAS_ROLLBACK,
        }
    }

    /// A route stage node followed by branches with these labels.
    pub fn route<S: crate::Stage>(
        stage: S,
        labels: &[&'static str],
        branch: Option<(u32, u32)>,
    ) -> Self {
        let mut node = Self::stage(stage, 0, branch);
        node.labels = labels.to_vec();
        node
    }

    /// A nested pipeline, run as one node (named by `Pipeline::named`).
    pub fn pipeline(pipe: crate::run::Pipeline, branch: Option<(u32, u32)>) -> Self {
        let plan = pipe.plan();
        let mut writes: Vec<KeyDesc> = Vec::new();
        for n in &plan.nodes {
            for w in &n.writes {
                if !writes.iter().any(|k| k.name == w.name) {
                    // What it writes is the key's value after its stages' writes, merged
                    // or not: it replaces the value (and orders against other writers).
                    writes.push(KeyDesc { merge: None, ..*w });
                }
            }
        }
        NodeSpec {
            meta: StageMeta {
                name: pipe.name().unwrap_or(UNNAMED_PIPELINE),
                id: std::any::TypeId::of::<crate::run::Pipeline>,
                kind: StageKind::Pipeline,
                // It writes what its stages wrote, which need not be all it may write.
                access: crate::access::Access::ctx_style(&[], &[]),
                timeout: None,
                resources: &[],
            },
            reads: plan.input_descs.clone(),
            writes,
            exec: Exec::Pipeline(pipe),
            group: 0,
            branch,
            labels: Vec::new(),
            has_fallback: false,
            has_rollback: false,
        }
    }

    fn desc(&self) -> NodeDesc<'_> {
        NodeDesc {
            reads: &self.reads,
            writes: &self.writes,
            group: self.group,
            branch: self.branch,
        }
    }
}

/// The node name of a nested pipeline that was not given one.
pub(crate) const UNNAMED_PIPELINE: &str = "pipeline";

/// The executable plan behind a [`Pipeline`](crate::Pipeline).
pub(crate) struct Plan {
    pub(crate) nodes: Vec<NodeSpec>,
    /// For each node `i`, the nodes that wait for it:
    /// `dependents[dep_offsets[i]..dep_offsets[i + 1]]`.
    pub(crate) dependents: Vec<u32>,
    pub(crate) dep_offsets: Vec<u32>,
    /// For each node, how many nodes it waits for.
    pub(crate) dep_counts: Vec<u32>,
    /// Nodes that wait for nothing.
    pub(crate) roots: Vec<u32>,
    /// For each route node, for each label, every node inside that branch (nested too).
    pub(crate) branch_members: Vec<Vec<Vec<u32>>>,
    /// For each route node, for each label and then for no branch taken: the nodes reported
    /// skipped ([`reported_not_chosen`](Self::reported_not_chosen)).
    pub(crate) reported_skips: Vec<Vec<Vec<u32>>>,
    pub(crate) input_descs: Vec<KeyDesc>,
    /// For each input, the first stage that reads it.
    pub(crate) input_readers: Vec<&'static str>,
    /// For each input: `(first reader, writer)` when a stage after its first reader writes
    /// it.
    pub(crate) inputs_written_later: Vec<Option<(&'static str, &'static str)>>,
    /// Per node: whether its stage has a rollback, kept apart from the nodes so the hot path
    /// reads one byte instead of touching a whole node.
    pub(crate) has_rollback: Vec<bool>,
    /// Per node: whether its stage has a timeout of its own (kept apart for the same reason).
    pub(crate) has_timeout: Vec<bool>,
    /// Per node: whether its stage writes a `#[merge]` key it does not read, whose writes
    /// are merged into the value (kept apart for the same reason).
    pub(crate) merges: Vec<bool>,
    /// Every key any node reads or writes, as declared (how checkpoints decode values, and
    /// merge the additions they record).
    pub(crate) key_descs: Vec<KeyDesc>,
    /// Two different keys with one name (and their value types): the plan cannot run.
    pub(crate) key_clash: Option<(&'static str, [&'static str; 2])>,
    /// A name two nodes share, one of them a nested pipeline, when both can run in one run,
    /// and the path of the nested pipeline holding them (`None`: this plan's own nodes):
    /// the plan cannot run.
    pub(crate) name_clash: Option<(&'static str, Option<String>)>,
    /// Nodes that need resources (checked before a run starts): stages that take a `Res`,
    /// and nested pipelines with such stages.
    pub(crate) needs_resources: Vec<u32>,
    pub(crate) graph: Graph,
    pub(crate) version: String,
}

impl Plan {
    /// The nodes of route `route`'s branches other than `chosen` (nested ones too): what
    /// its choice skips. A skipped route's `NO_BRANCH` skips every branch.
    pub(crate) fn not_chosen(&self, route: usize, chosen: u32) -> impl Iterator<Item = u32> + '_ {
        self.branch_members[route]
            .iter()
            .enumerate()
            .filter(move |&(label, _)| label as u32 != chosen)
            .flat_map(|(_, members)| members.iter().copied())
    }

    /// [`not_chosen`](Self::not_chosen), less the stages that also sit in the chosen branch
    /// (a stage may appear in several branches of one route), each name once: what is
    /// reported skipped — a stage that runs is not also reported skipped under its own name,
    /// and one in several branches not taken is reported skipped once. (Listed when the plan
    /// is built, per route and choice.)
    pub(crate) fn reported_not_chosen(
        &self,
        route: usize,
        chosen: u32,
    ) -> impl Iterator<Item = u32> + '_ {
        let choices = &self.reported_skips[route];
        // The last list is for a route that took no branch (`NO_BRANCH`).
        let at = (chosen as usize).min(choices.len().saturating_sub(1));
        choices.get(at).into_iter().flatten().copied()
    }

    #[allow(
        clippy::needless_range_loop,
        reason = "the loops walk index pairs (i, j) of the matrix"
    )]
    pub(crate) fn build(nodes: Vec<NodeSpec>, deps: &dyn Fn(usize, usize) -> bool) -> Plan {
        let n = nodes.len();
        let mut dependents = vec![Vec::new(); n];
        let mut dep_counts = vec![0u32; n];
        let mut edges_full = Vec::new();
        for j in 0..n {
            for i in 0..j {
                if deps(i, j) {
                    dependents[i].push(j as u32);
                    dep_counts[j] += 1;
                    edges_full.push((i, j));
                }
            }
        }
        let roots = (0..n as u32)
            .filter(|&j| dep_counts[j as usize] == 0)
            .collect();

        let mut branch_members = vec![Vec::new(); n];
        for (r, node) in nodes.iter().enumerate() {
            if !node.labels.is_empty() {
                branch_members[r] = vec![Vec::new(); node.labels.len()];
            }
        }
        for j in 0..n {
            let mut cur = nodes[j].branch;
            while let Some((r, l)) = cur {
                branch_members[r as usize][l as usize].push(j as u32);
                cur = nodes[r as usize].branch;
            }
        }

        // A key is an input when a stage reads it and no stage declared before it writes it
        // — a writer in another branch of a route than the reader does not count: the two
        // never both run.
        let mut input_descs: Vec<KeyDesc> = Vec::new();
        let mut input_readers: Vec<usize> = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            for r in &node.reads {
                let written_before = nodes[..i].iter().enumerate().any(|(w, writer)| {
                    writer.writes.iter().any(|d| d.name == r.name) && !exclusive(&nodes, i, w)
                });
                if !written_before && !input_descs.iter().any(|k| k.name == r.name) {
                    input_descs.push(*r);
                    input_readers.push(i);
                }
            }
        }
        // An input that a stage after its first reader writes is most likely a stage
        // declared too late: the error for it, when it is missing, says so.
        // Not a writer that reads the key itself (it needs it as an input anyway), nor one
        // in another branch of a route than the reader (they never both run).
        let inputs_written_later = input_descs
            .iter()
            .zip(&input_readers)
            .map(|(k, &reader)| {
                (reader + 1..n)
                    .find(|&w| {
                        let node = &nodes[w];
                        node.writes.iter().any(|d| d.name == k.name)
                            && !node.reads.iter().any(|d| d.name == k.name)
                            && !exclusive(&nodes, reader, w)
                    })
                    .map(|w| (nodes[reader].meta.name, nodes[w].meta.name))
            })
            .collect();

        let mut dep_offsets = Vec::with_capacity(n + 1);
        dep_offsets.push(0u32);
        for d in &dependents {
            dep_offsets.push(dep_offsets.last().copied().unwrap_or(0) + d.len() as u32);
        }
        let dependents: Vec<u32> = dependents.into_iter().flatten().collect();
        let needs_resources = (0..n as u32)
            .filter(|&i| match &nodes[i as usize].exec {
                Exec::Pipeline(sub) => !sub.plan().needs_resources.is_empty(),
                Exec::Stage(_) => !nodes[i as usize].meta.resources.is_empty(),
            })
            .collect();
        let graph = Graph::new(&nodes, &edges_full);
        let version = version_of(&nodes, &edges_full);
        let mut key_descs: Vec<KeyDesc> = Vec::new();
        let mut key_clash = None;
        for node in &nodes {
            for k in node.reads.iter().chain(&node.writes) {
                match key_descs.iter_mut().find(|d| d.name == k.name) {
                    None => key_descs.push(*k),
                    Some(d) if key_clash.is_none() && (d.type_id)() != (k.type_id)() => {
                        key_clash = Some((k.name, [(d.type_name)(), (k.type_name)()]));
                    }
                    // The key as declared: a nested pipeline's write of a `#[merge]` key
                    // carries no merge (it replaces the value), the key still merges.
                    Some(d) => d.merge = d.merge.or(k.merge),
                }
            }
        }
        let name_clash = name_clash(&nodes);
        let reported_skips = reported_skips(&nodes, &branch_members);
        let has_rollback = nodes.iter().map(|n| n.has_rollback).collect();
        let has_timeout = nodes.iter().map(|n| n.meta.timeout.is_some()).collect();
        let merges = (0..n)
            .map(|i| merge_keys(&nodes[i]).next().is_some())
            .collect();
        let input_readers = input_readers.iter().map(|&i| nodes[i].meta.name).collect();
        Plan {
            has_rollback,
            has_timeout,
            merges,
            key_descs,
            key_clash,
            name_clash,
            dep_offsets,
            needs_resources,
            nodes,
            dependents,
            dep_counts,
            roots,
            reported_skips,
            branch_members,
            input_descs,
            input_readers,
            inputs_written_later,
            graph,
            version,
        }
    }

    /// How key `name` merges, as this pipeline declares it (`None`: it is not `#[merge]`,
    /// or not a key of this pipeline): for an addition whose stage this version no longer
    /// has, or one stored with its list of added keys.
    pub(crate) fn merge_of_key(&self, name: &str) -> Option<crate::key::MergeFn> {
        self.key_descs
            .iter()
            .find(|k| k.name == name)
            .and_then(|k| k.merge)
    }

    /// How node `i` merges a write of key `name` into the value, when it does.
    pub(crate) fn merge_of(&self, i: usize, name: &str) -> Option<crate::key::MergeFn> {
        if !self.merges[i] {
            return None;
        }
        let node = &self.nodes[i];
        crate::key::merge_in(&node.reads, &node.writes, name)
    }

    pub(crate) fn build_dynamic(nodes: Vec<NodeSpec>) -> Plan {
        let matrix: Vec<Vec<bool>> = {
            let d: Vec<NodeDesc<'_>> = nodes.iter().map(NodeSpec::desc).collect();
            (0..nodes.len())
                .map(|j| (0..nodes.len()).map(|i| depends(&d, i, j)).collect())
                .collect()
        };
        Plan::build(nodes, &|i, j| matrix[j][i])
    }
}

/// The `#[merge]` keys `node` adds to (see [`crate::key::added_to`]).
fn merge_keys(node: &NodeSpec) -> impl Iterator<Item = &KeyDesc> {
    crate::key::added_to(&node.reads, &node.writes)
}

/// For each route of `nodes`, for each of its labels and then for no branch taken, the nodes
/// its choice skips that are reported skipped: those of the branches not taken, less any of
/// a name that runs in the chosen branch, each name once.
fn reported_skips(nodes: &[NodeSpec], branch_members: &[Vec<Vec<u32>>]) -> Vec<Vec<Vec<u32>>> {
    let name = |k: u32| nodes[k as usize].meta.name;
    branch_members
        .iter()
        .map(|branches| {
            if branches.is_empty() {
                return Vec::new();
            }
            (0..=branches.len())
                .map(|chosen| {
                    let taken = branches.get(chosen);
                    let mut reported: Vec<u32> = Vec::new();
                    for (_, members) in branches.iter().enumerate().filter(|&(l, _)| l != chosen) {
                        for &k in members {
                            let runs = taken.is_some_and(|t| t.iter().any(|&m| name(m) == name(k)));
                            if !runs && !reported.iter().any(|&r| name(r) == name(k)) {
                                reported.push(k);
                            }
                        }
                    }
                    reported
                })
                .collect()
        })
        .collect()
}

/// The first name two nodes share when one of them is a nested pipeline and both can run in
/// one run (not in different branches of one route), or a nested pipeline's own such clash.
/// Two stages of one name are refused at compile time; a nested pipeline's name is given
/// at run time (`Pipeline::named`), so it is checked here.
fn name_clash(nodes: &[NodeSpec]) -> Option<(&'static str, Option<String>)> {
    for (j, node) in nodes.iter().enumerate() {
        if let Exec::Pipeline(sub) = &node.exec {
            if let Some((name, within)) = &sub.plan().name_clash {
                let path = match within {
                    Some(inner) => format!("{}/{inner}", node.meta.name),
                    None => node.meta.name.to_string(),
                };
                return Some((name, Some(path)));
            }
        }
        let clash = nodes[..j].iter().enumerate().any(|(i, earlier)| {
            earlier.meta.name == node.meta.name
                && (earlier.meta.kind == StageKind::Pipeline
                    || node.meta.kind == StageKind::Pipeline)
                && !exclusive(nodes, i, j)
        });
        if clash {
            return Some((node.meta.name, None));
        }
    }
    None
}

/// Whether nodes `a` and `b` sit in different branches of one route (only one runs).
fn exclusive(nodes: &[NodeSpec], a: usize, b: usize) -> bool {
    let branches = |mut i: usize| {
        let mut out = Vec::new();
        while let Some((r, l)) = nodes[i].branch {
            out.push((r, l));
            i = r as usize;
        }
        out
    };
    let (of_a, of_b) = (branches(a), branches(b));
    of_a.iter()
        .any(|&(r, l)| of_b.iter().any(|&(r2, l2)| r == r2 && l != l2))
}

fn version_of(nodes: &[NodeSpec], edges: &[(usize, usize)]) -> String {
    let mut h = Sha256::new();
    let mut field = |s: &str| {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    for node in nodes {
        field("node");
        field(node.meta.name);
        field(node.meta.kind.as_str());
        // With their types: a checkpoint written with a key of another type would decode
        // into a wrong value (bincode is not self-describing), not fail.
        let typed = |k: &KeyDesc| (k.name, (k.type_name)());
        let mut reads: Vec<(&str, &str)> = node.reads.iter().map(typed).collect();
        reads.sort_unstable();
        let mut writes: Vec<(&str, &str)> = node.writes.iter().map(typed).collect();
        writes.sort_unstable();
        field("reads");
        reads.iter().for_each(|(k, t)| {
            field(k);
            field(t);
        });
        field("writes");
        writes.iter().for_each(|(k, t)| {
            field(k);
            field(t);
        });
        // A stored write of a key the stage merges is an addition, not the value: a
        // checkpoint of one must not be resumed as the other. (Only when there is one, so
        // the versions of pipelines without `#[merge]` keys stay as they were.)
        let mut merged: Vec<&str> = merge_keys(node).map(|k| k.name).collect();
        if !merged.is_empty() {
            merged.sort_unstable();
            field("merges");
            merged.iter().for_each(|k| field(k));
        }
        field(&node.group.to_string());
        match node.branch {
            Some((r, l)) => field(&format!("branch {r} {l}")),
            None => field("top"),
        }
        field("labels");
        node.labels.iter().for_each(|l| field(l));
        if let Exec::Pipeline(p) = &node.exec {
            field(p.version());
        }
    }
    field("edges");
    for (i, j) in edges {
        field(&format!("{i}->{j}"));
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(16);
    for b in &digest[..8] {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// One node of a pipeline's dependency graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphNode {
    /// The stage's name (`pipeline` for a nested pipeline).
    pub name: &'static str,
    /// How it runs.
    pub kind: StageKind,
    /// Keys it reads.
    pub reads: Vec<&'static str>,
    /// Keys it writes.
    pub writes: Vec<&'static str>,
    /// The `parallel` block it belongs to, numbered from 1.
    pub parallel_group: Option<u32>,
    /// The route branch holding it: (index of the route node, label).
    pub branch: Option<(usize, &'static str)>,
    /// For a route stage, the labels of its branches.
    pub labels: Vec<&'static str>,
}

/// A pipeline's dependency graph, as the scheduler runs it.
///
/// Nodes are in source order; `edges` are `(from, to)` index pairs meaning `to` waits for
/// `from`, with edges implied by others left out (a transitive reduction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// The nodes, in source order.
    pub nodes: Vec<GraphNode>,
    /// Direct dependencies `(from, to)`.
    pub edges: Vec<(usize, usize)>,
}

impl Graph {
    #[allow(
        clippy::needless_range_loop,
        reason = "the loops walk index pairs of the reachability matrix"
    )]
    fn new(nodes: &[NodeSpec], edges_full: &[(usize, usize)]) -> Graph {
        let n = nodes.len();
        let mut reach = vec![vec![false; n]; n];
        for &(i, j) in edges_full {
            reach[i][j] = true;
        }
        // Edges are forward only (i < j), so one pass in reverse order closes reachability.
        for i in (0..n).rev() {
            for k in i + 1..n {
                if reach[i][k] {
                    for j in k + 1..n {
                        if reach[k][j] {
                            reach[i][j] = true;
                        }
                    }
                }
            }
        }
        let edges = edges_full
            .iter()
            .copied()
            .filter(|&(i, j)| !(i + 1..j).any(|k| reach[i][k] && reach[k][j]))
            .collect();
        let nodes = nodes
            .iter()
            .map(|s| GraphNode {
                name: s.meta.name,
                kind: s.meta.kind,
                reads: s.reads.iter().map(|k| k.name).collect(),
                writes: s.writes.iter().map(|k| k.name).collect(),
                parallel_group: (s.group != 0).then_some(s.group),
                branch: s
                    .branch
                    .map(|(r, l)| (r as usize, nodes[r as usize].labels[l as usize])),
                labels: s.labels.clone(),
            })
            .collect();
        Graph { nodes, edges }
    }

    /// Renders the graph as a Mermaid flowchart: one box per stage, parallel blocks as
    /// subgraphs, route branches as labelled edges.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart TD\n");
        let shape = |i: usize, node: &GraphNode| {
            let mut label = node.name.to_string();
            if !node.reads.is_empty() {
                let _ = write!(label, "<br/>reads: {}", node.reads.join(", "));
            }
            if !node.writes.is_empty() {
                let _ = write!(label, "<br/>writes: {}", node.writes.join(", "));
            }
            match node.kind {
                StageKind::Route => format!("n{i}{{\"{label}\"}}"),
                StageKind::Stream => format!("n{i}[/\"{label}\"/]"),
                StageKind::Pipeline => format!("n{i}[[\"{label}\"]]"),
                _ => format!("n{i}[\"{label}\"]"),
            }
        };
        let mut groups: Vec<u32> = self.nodes.iter().filter_map(|n| n.parallel_group).collect();
        groups.dedup();
        for (i, node) in self.nodes.iter().enumerate() {
            if node.parallel_group.is_none() {
                let _ = writeln!(out, "    {}", shape(i, node));
            }
        }
        for g in groups {
            let _ = writeln!(out, "    subgraph parallel{g} [parallel]");
            for (i, node) in self.nodes.iter().enumerate() {
                if node.parallel_group == Some(g) {
                    let _ = writeln!(out, "        {}", shape(i, node));
                }
            }
            let _ = writeln!(out, "    end");
        }
        for &(i, j) in &self.edges {
            match self.nodes[j].branch {
                Some((r, label)) if r == i => {
                    let _ = writeln!(out, "    n{i} -->|{label}| n{j}");
                }
                _ => {
                    let _ = writeln!(out, "    n{i} --> n{j}");
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn k(name: &'static str) -> KeyDesc {
        KeyDesc::new::<u8>(name)
    }
    const A: KeyDesc = k("a");
    const B: KeyDesc = k("b");
    const C: KeyDesc = k("c");

    const fn node(
        reads: &'static [KeyDesc],
        writes: &'static [KeyDesc],
        group: u32,
        branch: Option<(u32, u32)>,
    ) -> NodeDesc<'static> {
        NodeDesc {
            reads,
            writes,
            group,
            branch,
        }
    }

    #[test]
    fn chain_and_independence() {
        // a: writes A; b: reads A writes B; c: writes C (independent of both).
        const NODES: [NodeDesc<'static>; 3] = [
            node(&[], &[A], 0, None),
            node(&[A], &[B], 0, None),
            node(&[], &[C], 0, None),
        ];
        const M: [[bool; 3]; 3] = dep_matrix(&NODES);
        assert!(M[1][0]);
        assert!(!M[2][0] && !M[2][1]);
    }

    #[test]
    fn write_after_read_and_write_after_write_order() {
        const NODES: [NodeDesc<'static>; 3] = [
            node(&[A], &[], 0, None),
            node(&[], &[A], 0, None),
            node(&[], &[A], 0, None),
        ];
        assert!(depends(&NODES, 0, 1)); // WAR
        assert!(depends(&NODES, 1, 2)); // WAW
        assert!(!depends(&NODES, 1, 0)); // never backwards
    }

    #[test]
    fn route_branches_wait_for_the_route_and_exclude_each_other() {
        // 0: route; 1: branch 0 writes A; 2: branch 1 writes A; 3: reads A.
        const NODES: [NodeDesc<'static>; 4] = [
            node(&[], &[], 0, None),
            node(&[], &[A], 0, Some((0, 0))),
            node(&[], &[A], 0, Some((0, 1))),
            node(&[A], &[], 0, None),
        ];
        assert!(depends(&NODES, 0, 1) && depends(&NODES, 0, 2));
        assert!(!depends(&NODES, 1, 2));
        assert!(depends(&NODES, 1, 3) && depends(&NODES, 2, 3));
    }

    #[test]
    fn parallel_members_never_wait_for_each_other() {
        const NODES: [NodeDesc<'static>; 2] = [node(&[], &[A], 1, None), node(&[], &[A], 1, None)];
        assert!(!depends(&NODES, 0, 1));
    }
}
