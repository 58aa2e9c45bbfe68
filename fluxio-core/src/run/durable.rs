//! Durable runs: the lock, the start record, resume from a checkpoint, replay and diff.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::Pipeline;
use super::exec::{Durability, Observers, Restored, RunOptions, Scheduler};
use crate::ctx::{Ctx, Slot};
use crate::error::{Error, Result};
use crate::key::KeyDesc;
use crate::plan::{NodeSpec, Plan};
use crate::stage::StageEnv;
use crate::store::{CheckpointStore, RunStatus, Save, StoredRun, format};

/// How long a run's lock lives without renewal, unless `with_lease` says otherwise; it is
/// renewed every third of that.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Node index of the entry that records keys added by a resume's input.
const INPUT_ENTRY: u32 = u32::MAX;
/// The stage name of the input entry a resume with input adds (other input entries are the
/// writes kept of stages a version change left behind, under those stages' names).
const INPUT_STAGE: &str = "<input>";

/// A token naming this lock holder, unique across processes and time.
fn fresh_owner() -> Arc<str> {
    super::exec::unique_token().into()
}

/// Releases the run's lock when the run ends or is dropped.
struct LockGuard {
    store: Arc<dyn CheckpointStore>,
    run_id: Arc<str>,
    owner: Arc<str>,
    released: bool,
}

impl LockGuard {
    async fn release(mut self) {
        self.released = true;
        // A failed release only delays the next owner until the lease runs out.
        let _ = self.store.release(&self.run_id, &self.owner).await;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if !self.released {
            // Dropped mid-run (cancelled): give the lock back if we can; otherwise the
            // lease runs out on its own. Polled once here, so that a store that releases
            // at once (in memory) or queues the request (SQLite's single writer) does so
            // before the drop returns — a call made right after finds the run free — and
            // whatever is left goes on in the background.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let mut release = self.store.release(&self.run_id, &self.owner);
                let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
                if release.as_mut().poll(&mut cx).is_pending() {
                    handle.spawn(release);
                }
            }
        }
    }
}

fn store_err<'a>(
    run_id: &'a str,
    operation: &'static str,
) -> impl FnOnce(crate::store::StoreError) -> Error + 'a {
    move |e| Error::from_store(run_id, operation, e)
}

/// The stored entries of run `run_id`, decoded, in the order the run applied them (their
/// `seq`; the store's order for entries of format 1, which come first). Stores keep the
/// order saves reached them in, which for stages finishing at the same time may differ.
fn entries_in_order(run_id: &str, stored: &StoredRun) -> Result<Vec<format::Entry>> {
    let mut entries = stored
        .entries
        .iter()
        .enumerate()
        .map(|(n, bytes)| decode_entry(run_id, n, bytes))
        .collect::<Result<Vec<_>>>()?;
    // Stable: equal `seq`s (format 1's `None`) keep the store's order.
    entries.sort_by_key(|e| e.seq);
    Ok(entries)
}

/// The `seq` after every entry of `entries`.
fn seq_after(entries: &[format::Entry]) -> u64 {
    entries
        .iter()
        .filter_map(|e| e.seq)
        .max()
        .map_or(0, |s| s.saturating_add(1))
}

/// Stored entry `n` of run `run_id`, decoded.
fn decode_entry(run_id: &str, n: usize, bytes: &[u8]) -> Result<format::Entry> {
    format::decode_entry(bytes).map_err(|e| {
        corrupt(
            run_id,
            format!(
                "entry #{n} ({} byte{}) does not decode: {e}",
                bytes.len(),
                if bytes.len() == 1 { "" } else { "s" }
            ),
        )
    })
}

fn corrupt(run_id: &str, reason: impl Into<String>) -> Error {
    Error::CorruptCheckpoint {
        run_id: run_id.to_string(),
        reason: reason.into(),
    }
}

fn find_key(plan: &Plan, name: &str) -> Option<KeyDesc> {
    plan.key_descs.iter().find(|k| k.name == name).copied()
}

/// Encodes one context value for a checkpoint: `(key name, bytes)`. `stage` wrote it
/// (`None`: the input).
pub(crate) fn encode_slot(
    desc: &KeyDesc,
    value: &Slot,
    run_id: &str,
    stage: Option<&'static str>,
) -> Result<(String, Vec<u8>)> {
    let encode_error = |reason| Error::Encode {
        run_id: run_id.to_string(),
        stage,
        key: desc.name,
        reason,
    };
    let mut bytes = Vec::new();
    (desc.encode)(&**value, &mut bytes).map_err(encode_error)?;
    reads_back(desc, &bytes).map_err(encode_error)?;
    Ok((desc.name.to_string(), bytes))
}

/// Whether a checkpoint can read back what `desc` encoded (`bytes`), checked on the first
/// value of each key type on this thread: a type bincode cannot decode — one that needs
/// `deserialize_any`, such as `serde_json::Value` — fails the run at its first write, not
/// every resume of its checkpoint later. Per thread, so that no lock is shared on the path
/// of every write.
fn reads_back(desc: &KeyDesc, bytes: &[u8]) -> std::result::Result<(), String> {
    thread_local! {
        static CHECKED: std::cell::RefCell<rustc_hash::FxHashSet<std::any::TypeId>> =
            std::cell::RefCell::default();
    }
    let id = (desc.type_id)();
    if CHECKED.with_borrow(|checked| checked.contains(&id)) {
        return Ok(());
    }
    (desc.decode)(bytes)?;
    CHECKED.with_borrow_mut(|checked| checked.insert(id));
    Ok(())
}

/// Maps the failure of encoding a whole record (`what`: `<entry>`, `<input>`), of
/// `stage` when it is one stage's.
pub(crate) fn encoded(
    record: std::result::Result<Vec<u8>, String>,
    run_id: &str,
    stage: Option<&'static str>,
    what: &'static str,
) -> Result<Vec<u8>> {
    record.map_err(|reason| Error::Encode {
        run_id: run_id.to_string(),
        stage,
        key: what,
        reason,
    })
}

/// Encodes the keys of `input` the pipeline knows (keys no stage reads or writes cannot be
/// decoded later, so they are not stored).
fn encode_input(plan: &Plan, input: &Ctx, run_id: &str) -> Result<Vec<u8>> {
    let mut values = Vec::new();
    let mut unknown = Vec::new();
    for (name, value) in input.iter_slots() {
        match find_key(plan, name) {
            Some(desc) => values.push(encode_slot(&desc, value, run_id, None)?),
            None => unknown.push(name),
        }
    }
    if !unknown.is_empty() {
        unknown.sort_unstable();
        tracing::warn!(
            run_id,
            keys = ?unknown,
            "input keys no stage reads or writes are not stored in the checkpoint: the run's \
             result has them, a resume of the run does not"
        );
    }
    values.sort();
    encoded(
        format::encode_header(&format::Header { values }),
        run_id,
        None,
        "<input>",
    )
}

/// How a stored checkpoint is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// Written by this pipeline's version: anything that does not fit is corruption.
    Strict,
    /// Written by another version (`allow_version_change`, or a replay): keys this pipeline
    /// does not know are left out, entries find their stage by its name (unique in this
    /// graph), an entry whose stage is gone keeps its values, and whatever would run a
    /// finished stage again or mark the wrong one done is refused (`IncompatibleCheckpoint`).
    OtherVersion,
}

impl Reading {
    fn of(plan: &Plan, stored: &StoredRun) -> Self {
        if stored.version == plan.version {
            Reading::Strict
        } else {
            Reading::OtherVersion
        }
    }
}

/// Encoded values by key name, as checkpoint records hold them.
type Values = Vec<(String, Vec<u8>)>;

/// The values a stored header holds that this pipeline reads (all of them, or corruption,
/// when `Strict`), decoded into a context.
fn header_values(
    plan: &Plan,
    run_id: &str,
    header: &[u8],
    reading: Reading,
) -> Result<(Ctx, Values)> {
    let header = format::decode_header(header).map_err(|e| corrupt(run_id, e))?;
    let mut ctx = Ctx::new();
    let values = known_values(
        plan,
        run_id,
        &mut ctx,
        header.values,
        reading,
        "<input>",
        &|_| None,
    )?;
    Ok((ctx, values))
}

/// The node of this pipeline that wrote `entry`, when there is one (how its writes of
/// `#[merge]` keys are found: they are merged into the value, as when the stage ran).
fn writer_of(plan: &Plan, entry: &format::Entry, reading: Reading) -> Option<usize> {
    match reading {
        Reading::Strict => Some(entry.node as usize)
            .filter(|&i| i < plan.nodes.len() && plan.nodes[i].meta.name == entry.stage),
        Reading::OtherVersion => plan.nodes.iter().position(|n| n.meta.name == entry.stage),
    }
}

/// How `entry`'s stored write of key `name` is added to the value the key holds, when it
/// is an addition (`None`: it replaces the value). The entry records which writes were
/// additions; they merge as this pipeline merges the key (a key no longer `#[merge]` here
/// is replaced). An entry of format 1 does not record it: its writes merge as the stage of
/// `writer` (this pipeline's node, when it still has it) merges them; for a stage of
/// another version that this one no longer has (removed or renamed), as this version's
/// stages merge the key — a key that is `#[merge]` here most likely was when the stage
/// ran. (Input entries replace.)
fn merge_for(
    plan: &Plan,
    writer: Option<usize>,
    entry: &format::Entry,
    name: &str,
) -> Option<crate::key::MergeFn> {
    if let Some(added) = &entry.added {
        return if added.iter().any(|k| k == name) {
            plan.merge_of_key(name)
        } else {
            None
        };
    }
    match writer {
        Some(i) => plan.merge_of(i, name),
        None if entry.node != INPUT_ENTRY => plan.merge_of_key(name),
        None => None,
    }
}

/// Decodes an entry's `values` into `ctx` (merging those of `#[merge]` keys its stage
/// merges) and returns them, leaving out (when reading another version's checkpoint)
/// keys this pipeline does not know.
fn entry_values(
    plan: &Plan,
    run_id: &str,
    ctx: &mut Ctx,
    entry: &mut format::Entry,
    reading: Reading,
) -> Result<Values> {
    let writer = writer_of(plan, entry, reading);
    let values = std::mem::take(&mut entry.writes);
    let merge_of = |name: &str| merge_for(plan, writer, entry, name);
    known_values(plan, run_id, ctx, values, reading, &entry.stage, &merge_of)
}

/// Decodes `values` into `ctx` and returns them, leaving out (when reading another
/// version's checkpoint) keys this pipeline does not know. `whose` names the record;
/// `merge_of` says how a value of a `#[merge]` key is added to the one `ctx` holds.
fn known_values(
    plan: &Plan,
    run_id: &str,
    ctx: &mut Ctx,
    values: Values,
    reading: Reading,
    whose: &str,
    merge_of: &dyn Fn(&str) -> Option<crate::key::MergeFn>,
) -> Result<Values> {
    let mut kept = Vec::with_capacity(values.len());
    for (name, bytes) in values {
        let Some(desc) = find_key(plan, &name) else {
            if reading == Reading::Strict {
                return Err(corrupt(
                    run_id,
                    format!("key `{name}` is not read or written by any stage of this pipeline"),
                ));
            }
            tracing::warn!(run_id, key = %name, record = whose, "the checkpoint holds a key this pipeline version does not use; left out");
            continue;
        };
        let value = (desc.decode)(&bytes).map_err(|e| {
            let also = match reading {
                Reading::Strict => "",
                Reading::OtherVersion => {
                    " (written by another pipeline version: did its type change?)"
                }
            };
            corrupt(run_id, format!("value of `{name}`: {e}{also}"))
        })?;
        ctx.insert_merged(desc.name, value, merge_of(desc.name));
        kept.push((name, bytes));
    }
    Ok(kept)
}

/// A stored run rebuilt for this pipeline.
struct Restoration {
    ctx: Ctx,
    restored: Restored,
    /// For a checkpoint of another version: the stages it records as run (not skipped)
    /// that this version does not have.
    gone: Vec<String>,
    /// For a checkpoint of another version: the header and entries rewritten for this one
    /// (node indexes of this graph, only keys it knows).
    rewritten: Option<(Vec<u8>, Vec<Vec<u8>>)>,
}

/// Rebuilds a stored run: its context and the nodes it finished.
fn restore(plan: &Plan, run_id: &str, stored: &StoredRun) -> Result<Restoration> {
    let reading = Reading::of(plan, stored);
    let (mut ctx, header) = header_values(plan, run_id, &stored.header, reading)?;
    let mut restored = Restored::default();
    let mut rewritten = Vec::new();
    let mut seen = vec![false; plan.nodes.len()];
    let mut gone = Vec::new();
    // Per key this version knows, the stage of `gone` whose write it holds (`None`: the
    // last write was a stage this version has, or an input).
    let mut last_writers: Vec<(String, Option<String>)> = Vec::new();
    let entries = entries_in_order(run_id, stored)?;
    restored.next_seq = seq_after(&entries);
    for mut entry in entries {
        entry.writes = entry_values(plan, run_id, &mut ctx, &mut entry, reading)?;
        if entry.node != INPUT_ENTRY {
            let placed = match reading {
                Reading::Strict => Some(place_strict(plan, run_id, &entry, &mut seen)?),
                Reading::OtherVersion => place_by_name(plan, run_id, &entry, &mut seen)?,
            };
            match placed {
                Some((i, route)) => {
                    restored.done.push((i, route, entry.skipped));
                    entry.node = i;
                }
                None => {
                    if !entry.skipped {
                        gone.push(entry.stage.clone());
                    }
                    tracing::warn!(run_id, stage = %entry.stage, "a stage that finished under another pipeline version is not in this one; the values it wrote are kept");
                    // Kept as values given at this point (an input entry replaces), an
                    // addition to a `#[merge]` key is kept as the value it made.
                    let writer = writer_of(plan, &entry, reading);
                    let mut writes = std::mem::take(&mut entry.writes);
                    for (name, bytes) in &mut writes {
                        if merge_for(plan, writer, &entry, name).is_some()
                            && let (Some(desc), Some(value)) =
                                (find_key(plan, name), ctx.slot(name))
                        {
                            *bytes = encode_slot(&desc, value, run_id, None)?.1;
                        }
                    }
                    entry.writes = writes;
                    entry.node = INPUT_ENTRY;
                    entry.route = None;
                    entry.added = Some(Vec::new());
                }
            }
        }
        if reading == Reading::OtherVersion {
            // An input entry of another name holds the writes of a stage this version lacks
            // (made so just above, or by an earlier version change).
            let writer = (entry.node == INPUT_ENTRY && entry.stage != INPUT_STAGE)
                .then(|| entry.stage.clone());
            for (name, _) in &entry.writes {
                match last_writers.iter_mut().find(|(k, _)| k == name) {
                    Some((_, last)) => last.clone_from(&writer),
                    None => last_writers.push((name.clone(), writer.clone())),
                }
            }
            rewritten.push(encoded(
                format::encode_entry(&entry),
                run_id,
                None,
                "<entry>",
            )?);
        }
    }
    check_fit(
        plan,
        run_id,
        &restored,
        reading,
        stored.status,
        &last_writers,
    )?;
    let rewritten = match reading {
        Reading::Strict => None,
        Reading::OtherVersion => {
            let header = format::encode_header(&format::Header { values: header });
            Some((encoded(header, run_id, None, "<input>")?, rewritten))
        }
    };
    Ok(Restoration {
        ctx,
        restored,
        gone,
        rewritten,
    })
}

/// The final context of a completed run of another version: its values this pipeline
/// knows, nothing placed or checked (nothing will run).
fn final_context(plan: &Plan, run_id: &str, stored: &StoredRun) -> Result<Restoration> {
    let mut ctx = Ctx::new();
    let values = final_values(plan, run_id, stored)?.into_iter().collect();
    known_values(
        plan,
        run_id,
        &mut ctx,
        values,
        Reading::OtherVersion,
        "<final>",
        &|_| None,
    )?;
    Ok(Restoration {
        ctx,
        restored: Restored::default(),
        gone: Vec::new(),
        rewritten: None,
    })
}

/// The node an entry of this version's checkpoint marks done, and its route's branch; an
/// entry that does not fit is corruption.
fn place_strict(
    plan: &Plan,
    run_id: &str,
    entry: &format::Entry,
    seen: &mut [bool],
) -> Result<(u32, Option<u32>)> {
    let i = entry.node as usize;
    let node = plan.nodes.get(i).ok_or_else(|| {
        corrupt(
            run_id,
            format!(
                "an entry for node #{i} (`{}`), but the pipeline's nodes are #0 to #{}",
                entry.stage,
                plan.nodes.len().saturating_sub(1)
            ),
        )
    })?;
    if node.meta.name != entry.stage {
        return Err(corrupt(
            run_id,
            format!(
                "node #{i} is `{}`, the entry is for `{}`",
                node.meta.name, entry.stage
            ),
        ));
    }
    if std::mem::replace(&mut seen[i], true) {
        return Err(corrupt(
            run_id,
            format!("stage `{}` (node #{i}) finished twice", entry.stage),
        ));
    }
    let route = route_choice(node, entry).map_err(|misfit| {
        corrupt(
            run_id,
            match misfit {
                RouteMisfit::NoChoice => format!("route `{}` chose no branch", entry.stage),
                RouteMisfit::UnknownLabel(label) => {
                    format!("route `{}` has no branch `{label}`", entry.stage)
                }
            },
        )
    })?;
    Ok((i as u32, route))
}

/// Why a stage entry's route choice does not fit its node.
enum RouteMisfit<'a> {
    /// The node is a route, and the entry chose no branch (nor was skipped).
    NoChoice,
    /// The entry chose a label the node has no branch for.
    UnknownLabel(&'a str),
}

/// The branch an entry of `node` chose: `None` for a plain stage, `NO_BRANCH` for a skipped
/// route.
fn route_choice<'a>(
    node: &NodeSpec,
    entry: &'a format::Entry,
) -> std::result::Result<Option<u32>, RouteMisfit<'a>> {
    match (&entry.route, node.labels.is_empty()) {
        (None, true) => Ok(None),
        (None, false) if entry.skipped => Ok(Some(super::exec::NO_BRANCH)),
        (None, false) => Err(RouteMisfit::NoChoice),
        (Some(label), _) => match node.labels.iter().position(|l| l == label) {
            Some(branch) => Ok(Some(branch as u32)),
            None => Err(RouteMisfit::UnknownLabel(label)),
        },
    }
}

/// The node an entry of another version's checkpoint marks done, found by its stage's name:
/// `None` when this version has no stage of that name (its values are kept). Whatever would
/// make a finished stage run again, or mark the wrong one done, refuses the resume.
fn place_by_name(
    plan: &Plan,
    run_id: &str,
    entry: &format::Entry,
    seen: &mut [bool],
) -> Result<Option<(u32, Option<u32>)>> {
    let misfit = |reason: String| Err(incompatible(run_id, reason));
    let stage = &entry.stage;
    let mut named = (0..plan.nodes.len()).filter(|&i| plan.nodes[i].meta.name == *stage);
    let i = match (named.next(), named.next()) {
        (None, _) => return Ok(None),
        (Some(i), None) => i,
        (Some(_), Some(_)) => {
            return misfit(format!(
                "stage `{stage}` finished, and this version has several nodes of that name: \
                 which one ran cannot be told"
            ));
        }
    };
    let node = &plan.nodes[i];
    if node.meta.kind == crate::stage::StageKind::Pipeline
        && node.meta.name == crate::plan::UNNAMED_PIPELINE
    {
        return misfit(
            "a nested pipeline finished, and it has no name to find it by in another version \
             (name nested pipelines with `Pipeline::named`)"
                .into(),
        );
    }
    if std::mem::replace(&mut seen[i], true) {
        return misfit(format!("stage `{stage}` finished twice"));
    }
    // Its dependents will read what it writes in this version: it must have written it
    // (a ctx-style stage writes only what it changed, so only its own entry can tell).
    if node.meta.access.writes_all && !entry.skipped {
        if let Some(key) = node
            .writes
            .iter()
            .find(|k| !entry.writes.iter().any(|(name, _)| name == k.name))
        {
            return misfit(format!(
                "stage `{stage}` finished without writing `{}`, which it writes in this version",
                key.name
            ));
        }
    }
    // A nested pipeline writes what its stages wrote, so a key it may write in this version
    // and did not write may be a stage added to it, which would never run: refused (also
    // when its run just took another route branch — the entry cannot tell the two apart).
    if node.meta.kind == crate::stage::StageKind::Pipeline && !entry.skipped {
        if let Some(key) = node
            .writes
            .iter()
            .find(|k| !entry.writes.iter().any(|(name, _)| name == k.name))
        {
            return misfit(format!(
                "nested pipeline `{stage}` finished without writing `{}`, which it may write \
                 in this version: a stage added to it would never run",
                key.name
            ));
        }
    }
    match route_choice(node, entry) {
        Ok(route) => Ok(Some((i as u32, route))),
        Err(RouteMisfit::NoChoice) => misfit(format!(
            "`{stage}` finished as a plain stage and is a route in this version"
        )),
        Err(RouteMisfit::UnknownLabel(label)) => misfit(format!(
            "route `{stage}` chose `{label}`, a branch this version does not have"
        )),
    }
}

/// The nodes of `plan` a checkpoint holds as finished: `Some(branch)` per finished node
/// (`branch`: a route's choice).
struct Finished<'a> {
    plan: &'a Plan,
    by_node: Vec<Option<Option<u32>>>,
}

impl<'a> Finished<'a> {
    fn of(plan: &'a Plan, restored: &Restored) -> Self {
        let mut by_node = vec![None; plan.nodes.len()];
        for &(i, branch, _) in &restored.done {
            by_node[i as usize] = Some(branch);
        }
        Finished { plan, by_node }
    }

    fn has(&self, i: usize) -> bool {
        self.by_node[i].is_some()
    }

    /// Whether node `i` sits in a branch a finished route did not take (its own route's, or
    /// one outside it): it never runs.
    fn not_taken(&self, mut i: usize) -> bool {
        while let Some((route, label)) = self.plan.nodes[i].branch {
            if matches!(self.by_node[route as usize], Some(Some(b)) if b != label) {
                return true;
            }
            i = route as usize;
        }
        false
    }
}

/// Checks that this version's checkpoint lacks no entry: a stage starts only once the
/// entries of the stages it waits for are stored, so a finished stage whose dependency has
/// no entry — nor sits in a branch its route did not take — means an entry was lost (a
/// resume would run that dependency again, after what used its output). A completed run
/// must have an entry for every stage its routes took.
fn check_complete(run_id: &str, finished: &Finished<'_>, status: RunStatus) -> Result<()> {
    let plan = finished.plan;
    let unsettled: Vec<usize> = (0..plan.nodes.len())
        .filter(|&u| !finished.has(u) && !finished.not_taken(u))
        .collect();
    let lost = |reason: String| Err(corrupt(run_id, format!("{reason}: an entry was lost")));
    for &u in &unsettled {
        let (from, to) = (
            plan.dep_offsets[u] as usize,
            plan.dep_offsets[u + 1] as usize,
        );
        if let Some(&f) = plan.dependents[from..to]
            .iter()
            .find(|&&f| finished.has(f as usize))
        {
            return lost(format!(
                "stage `{}` finished, but stage `{}`, which it waits for, has no entry",
                plan.nodes[f as usize].meta.name, plan.nodes[u].meta.name
            ));
        }
    }
    match unsettled.first() {
        Some(&u) if status == RunStatus::Completed => lost(format!(
            "the run is marked completed, but stage `{}` has no entry",
            plan.nodes[u].meta.name
        )),
        _ => Ok(()),
    }
}

/// Checks that the finished stages fit this pipeline: each inside a route branch sits in
/// the branch its route (finished too) chose — else it would be skipped after it ran. In
/// this version's own checkpoint a misfit is corruption, and so is a lost entry
/// ([`check_complete`]); in another version's, a stage that would replace a value a
/// finished stage left ([`check_gone_writes`] for those the version no longer has,
/// `last_writers`).
fn check_fit(
    plan: &Plan,
    run_id: &str,
    restored: &Restored,
    reading: Reading,
    status: RunStatus,
    last_writers: &[(String, Option<String>)],
) -> Result<()> {
    let misfit = |reason: String| match reading {
        Reading::Strict => corrupt(run_id, reason),
        Reading::OtherVersion => incompatible(run_id, reason),
    };
    let finished = Finished::of(plan, restored);
    // Its innermost route suffices: that route, finished too, is checked in its own turn.
    for &(i, _, _) in &restored.done {
        let node = &plan.nodes[i as usize];
        let Some((route, label)) = node.branch else {
            continue;
        };
        let route_node = &plan.nodes[route as usize];
        let chose = match finished.by_node[route as usize] {
            Some(Some(branch)) if branch == label => continue,
            Some(Some(branch)) => match route_node.labels.get(branch as usize) {
                Some(other) => format!("chose `{other}`"),
                None => "was skipped".to_string(),
            },
            Some(None) | None => "has not run".to_string(),
        };
        let wanted = route_node
            .labels
            .get(label as usize)
            .copied()
            .unwrap_or("?");
        return Err(misfit(format!(
            "stage `{}` finished, but it sits in branch `{wanted}` of route `{}`, which {chose}",
            node.meta.name, route_node.meta.name
        )));
    }
    if reading == Reading::OtherVersion {
        // A stage of the new version declared before a finished one, writing a key that
        // one wrote, would run after it and replace its value (in a fresh run, the later
        // stage's write is the one that stays) — unless a finished route keeps it from
        // running.
        for &(f, _, skipped) in &restored.done {
            let done = &plan.nodes[f as usize];
            if skipped {
                continue;
            }
            for (u, before) in plan.nodes[..f as usize].iter().enumerate() {
                if finished.has(u) || finished.not_taken(u) {
                    continue;
                }
                // (A stage that adds to a `#[merge]` key replaces nothing.)
                if let Some(key) = before.writes.iter().find(|k| {
                    done.writes.iter().any(|w| w.name == k.name)
                        && plan.merge_of(u, k.name).is_none()
                }) {
                    return Err(misfit(format!(
                        "stage `{}` has not run and writes `{}` before `{}`, which finished: \
                         it would replace the value `{}` wrote",
                        before.meta.name, key.name, done.meta.name, done.meta.name
                    )));
                }
            }
        }
    }
    // (A run stopped while rolling back is refused for its vanished stages anyway, with the
    // reason that applies: their rollbacks cannot run.)
    if reading == Reading::OtherVersion && status != RunStatus::RollingBack {
        check_gone_writes(plan, run_id, &finished, last_writers)?;
    }
    if reading == Reading::Strict {
        check_complete(run_id, &finished, status)?;
    }
    Ok(())
}

/// Checks, for a checkpoint of another version, that no stage of this version that has not
/// run writes a key whose value a finished stage this version no longer has left
/// (`last_writers`: per key, that stage): resumed, it would replace that value — most
/// likely that stage renamed, whose side effects (under another idempotency key) would
/// happen again. Not refused: a stage that reads the key too (it transforms the value, as
/// it would have after the vanished stage), one adding to a `#[merge]` key (it replaces
/// nothing), one in a branch a finished route did not take (it never runs). A renamed stage
/// that writes nothing, or only those, is not seen.
fn check_gone_writes(
    plan: &Plan,
    run_id: &str,
    finished: &Finished<'_>,
    last_writers: &[(String, Option<String>)],
) -> Result<()> {
    if last_writers.iter().all(|(_, gone)| gone.is_none()) {
        return Ok(());
    }
    for (u, node) in plan.nodes.iter().enumerate() {
        if finished.has(u) || finished.not_taken(u) {
            continue;
        }
        for key in &node.writes {
            if plan.merge_of(u, key.name).is_some() || node.reads.iter().any(|r| r.name == key.name)
            {
                continue;
            }
            if let Some((_, Some(gone))) = last_writers.iter().find(|(k, _)| k == key.name) {
                return Err(incompatible(
                    run_id,
                    format!(
                        "stage `{}` has not run and writes `{}`, whose value `{gone}` wrote — a \
                         finished stage this version does not have (renamed?): it would \
                         replace that value, and if it is `{gone}` renamed, repeat what it did \
                         under another idempotency key; resume with the version that wrote \
                         the run, or start it fresh",
                        node.meta.name, key.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn incompatible(run_id: &str, reason: String) -> Error {
    Error::IncompatibleCheckpoint {
        run_id: run_id.to_string(),
        reason,
    }
}

/// Runs `pipe` durably in `store`. `begin` tells the callbacks the run starts (or fails):
/// not for a call that is no run — the id held by a live run, nothing stored to resume, a
/// resume of a completed run.
#[allow(
    clippy::too_many_arguments,
    reason = "the parts of one run call, handed on from `Pipeline::start`"
)]
pub(crate) async fn run(
    pipe: &Pipeline,
    store: Arc<dyn CheckpointStore>,
    run_id: Arc<str>,
    input: Ctx,
    opts: &RunOptions,
    env: StageEnv,
    obs: Option<Observers>,
    begin: &(dyn Fn() + Sync),
) -> Result<Ctx> {
    if let Some(e) = Error::without_runtime(|| {
        "a durable run (its checkpoint store and its lease's timer)".to_string()
    }) {
        begin();
        return Err(e.in_run(Some(&run_id)));
    }
    let plan = pipe.plan.clone();
    let owner = fresh_owner();
    // The guard exists before the lock is asked for: a call dropped while it waits for the
    // acquire (a caller's timeout, a `select!`) may still get the lock — the store finishes
    // what it was sent — and its drop then asks for the release after the acquire (SQLite's
    // writer and a Redis connection take requests in order), instead of leaving the lock
    // held, unseen by `list_runs`, until its lease runs out.
    let mut guard = LockGuard {
        store: store.clone(),
        run_id: run_id.clone(),
        owner: owner.clone(),
        released: false,
    };
    let call = Call {
        plan: &plan,
        store: &*store,
        run_id: &run_id,
        owner: &owner,
        opts,
        env: &env,
    };
    let acquired = store.acquire(&run_id, &owner, pipe.lease).await;
    if acquired.is_err() {
        begin();
    }
    if !acquired.map_err(store_err(&run_id, "acquire"))? {
        // Another owner holds it: nothing of ours to give back.
        guard.released = true;
        // A resume of a completed run only reads it: it is answered though another call
        // holds the lock a moment (another resume of it, say — two retries of one request).
        if opts.resume {
            if let Some(answer) = completed_result(call, input).await {
                return answer;
            }
        }
        return Err(Error::RunIdInUse {
            run_id: run_id.to_string(),
        });
    }

    // Every way out before the run starts gives the lock back at once: a caller that
    // corrects its call (say, with `allow_version_change`) must not find it still held.
    let (ctx, restored, kept_error) = match prepare(call, input, None).await {
        Ok(Prepared::Run(ctx, restored, kept)) => (ctx, restored, kept),
        Ok(Prepared::Completed(ctx)) => {
            guard.release().await;
            return Ok(ctx);
        }
        Err(e) => {
            if !matches!(e, Error::NoCheckpoint { .. }) {
                begin();
            }
            guard.release().await;
            return Err(e);
        }
    };

    begin();
    if let (Some(obs), Some(restored)) = (&obs, &restored) {
        let finished: Vec<&'static str> = restored
            .done
            .iter()
            .map(|&(i, ..)| plan.nodes[i as usize].meta.name)
            .collect();
        obs.each(|c| c.on_run_resumed(&run_id, &finished));
    }
    let mut durability = Durability::new(store.clone(), run_id.clone(), owner.clone(), pipe.lease);
    durability.next_seq = restored.as_ref().map_or(0, |r| r.next_seq);
    let rolled_back = durability.rolled_back.clone();
    let rolling_back = durability.rolling_back.clone();
    let failed_rollbacks = durability.failed_rollbacks.clone();
    let result = match Scheduler::with_state(plan, ctx, env, obs, Some(durability), restored) {
        Ok(sched) => pipe.start(sched).await,
        Err(e) => Err(e),
    };
    let finish = match &result {
        Ok(_) => Save::finish(RunStatus::Completed, None),
        Err(e) => {
            if rolled_back.load(std::sync::atomic::Ordering::SeqCst) {
                let mut error = kept_error.unwrap_or_else(|| e.to_string());
                // The rollbacks that failed, after the failure that started them.
                for failed in failed_rollbacks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                {
                    error.push_str("; ");
                    error.push_str(failed);
                }
                Save::finish(RunStatus::RolledBack, Some(&error))
            } else {
                Save::finish(RunStatus::Failed, Some(&e.to_string()))
            }
        }
    };
    let interrupted = rolling_back.load(std::sync::atomic::Ordering::SeqCst)
        && !rolled_back.load(std::sync::atomic::Ordering::SeqCst);
    let finished = match &result {
        // A run whose lock was taken over must not write its end over the new owner's run.
        Err(Error::LockLost { .. }) => Ok(()),
        // Its rollbacks did not all run: it stays `rolling_back`, for a resume to finish.
        Err(_) if interrupted => Ok(()),
        _ => store.save(&run_id, &owner, finish).await,
    };
    guard.release().await;
    match (result, finished) {
        (Ok(ctx), Ok(())) => Ok(ctx),
        (Ok(_), Err(e)) => Err(Error::from_store(&run_id, "save", e)),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(save)) => {
            // The run's own error is the answer; its stored status stays what it was
            // (`running`: resumable; `rolling_back`: a resume runs the rollbacks again).
            tracing::warn!(run_id = %run_id, error = %e, store_error = %save, "could not record how the run ended");
            Err(e)
        }
    }
}

/// Where a durable run stands once its lock is taken and its checkpoint prepared.
enum Prepared {
    /// Run from this context (restored from the checkpoint on a resume), and the error text
    /// its end keeps if it ends rolled back: a resumed run that was rolling back keeps the
    /// failure that started its rollbacks, not "rolled back".
    Run(Ctx, Option<Restored>, Option<String>),
    /// A resume of a run that had completed: its final context.
    Completed(Ctx),
}

/// One durable call of a pipeline, as `run` makes it: what `prepare` and
/// `completed_result` work on.
#[derive(Clone, Copy)]
struct Call<'a> {
    plan: &'a Plan,
    store: &'a dyn CheckpointStore,
    run_id: &'a Arc<str>,
    /// The owner the call takes (or took) the run's lock as.
    owner: &'a str,
    opts: &'a RunOptions,
    env: &'a StageEnv,
}

/// The answer a resume gets from run `run_id` if it has completed, read without its lock
/// (nothing is written for a completed run): its final context, or why the resume is
/// refused (another version, a clashing input). `None` for any other run, or one that
/// cannot be read: the lock's holder is then the answer.
async fn completed_result(call: Call<'_>, input: Ctx) -> Option<Result<Ctx>> {
    let stored = call.store.load(call.run_id).await.ok()??;
    if stored.status != RunStatus::Completed {
        return None;
    }
    // From this one read: `prepare` of a completed run returns before any write.
    Some(match prepare(call, input, Some(stored)).await {
        Ok(Prepared::Completed(ctx)) => Ok(ctx),
        Ok(Prepared::Run(..)) => Err(Error::RunIdInUse {
            run_id: call.run_id.to_string(),
        }),
        Err(e) => Err(e),
    })
}

/// Writes the start record of a fresh run, or loads (unless `loaded` holds it), checks and
/// revives the checkpoint of a resumed one. Everything that refuses a run (missing inputs
/// or resources, a key clash) is checked before the first write, so a refused call leaves
/// the store as it was.
async fn prepare(call: Call<'_>, input: Ctx, loaded: Option<StoredRun>) -> Result<Prepared> {
    let Call {
        plan,
        store,
        run_id,
        owner,
        opts,
        env,
    } = call;
    if opts.resume {
        let stored = match loaded {
            Some(stored) => stored,
            None => load(store, run_id).await?,
        };
        if stored.version != plan.version {
            if !opts.allow_version_change {
                return Err(Error::CheckpointVersion {
                    run_id: run_id.to_string(),
                    stored: stored.version,
                    current: plan.version.clone(),
                });
            }
            tracing::warn!(
                run_id = %run_id,
                stored = %stored.version,
                current = %plan.version,
                "resuming a checkpoint written by another pipeline version (allow_version_change)"
            );
        }
        if stored.status == RunStatus::RolledBack {
            return Err(Error::RolledBack {
                run_id: run_id.to_string(),
            });
        }
        let Restoration {
            mut ctx,
            mut restored,
            gone,
            rewritten,
        } = if stored.status == RunStatus::Completed && stored.version != plan.version {
            // Nothing will run: only the values matter, not where its stages would sit.
            final_context(plan, run_id, &stored)?
        } else {
            restore(plan, run_id, &stored)?
        };
        // The resume's input adds keys; it never overrides what the run already holds.
        let mut added = Vec::new();
        for (name, value) in input.iter_slots() {
            if ctx.contains_name(name) {
                // The finished stage that wrote it, else the run's input (or a stage of
                // another version).
                let holder = restored
                    .done
                    .iter()
                    .filter(|&&(.., skipped)| !skipped)
                    .map(|&(i, ..)| &plan.nodes[i as usize])
                    .find(|node| node.writes.iter().any(|d| d.name == name))
                    .map_or_else(
                        || Error::CHECKPOINT.to_string(),
                        |node| node.meta.name.to_string(),
                    );
                return Err(Error::MergeConflict {
                    key: name,
                    stages: [holder, Error::RESUME_INPUT.to_string()],
                    run_id: Some(run_id.to_string()),
                });
            }
            ctx.insert_slot(name, value.clone());
            if let Some(desc) = find_key(plan, name) {
                added.push(encode_slot(&desc, value, run_id, None)?);
            }
        }
        if stored.status == RunStatus::Completed {
            return Ok(Prepared::Completed(ctx));
        }
        // What would refuse the run is checked before anything is written.
        super::exec::preflight(plan, &ctx, env)?;
        if stored.status == RunStatus::RollingBack {
            // Its rollbacks were interrupted: they run again, and nothing else does — all
            // of them, so every stage it ran must still be there to undo its work.
            if let Some(stage) = gone.first() {
                return Err(incompatible(
                    run_id,
                    format!(
                        "it stopped while rolling back, and stage `{stage}` it ran is not in this \
                         version: a rollback it had could not run; resume it with the version \
                         that wrote it"
                    ),
                ));
            }
            restored.rolling_back = Some(Error::RolledBack {
                run_id: run_id.to_string(),
            });
        }
        // A run rolling back is not rewritten for this version: only its rollbacks run, and
        // nothing is stored but its end.
        if let Some((header, entries)) =
            rewritten.filter(|_| stored.status != RunStatus::RollingBack)
        {
            // From now on the checkpoint is this version's, in one atomic write: a crash
            // leaves either the old one or the new one, and an instance still on the old
            // version is told the version changed (not that the checkpoint is corrupt).
            let rewrite = Save::Rewrite {
                version: plan.version.clone(),
                header,
                entries,
            };
            store
                .save(run_id, owner, rewrite)
                .await
                .map_err(store_err(run_id, "save"))?;
        } else if !matches!(stored.status, RunStatus::Running | RunStatus::RollingBack) {
            // The run is live again: a failed or interrupted checkpoint says so until it
            // ends.
            let running = Save::finish(RunStatus::Running, None);
            store
                .save(run_id, owner, running)
                .await
                .map_err(store_err(run_id, "save"))?;
        }
        if !added.is_empty() {
            let entry = format::Entry {
                node: INPUT_ENTRY,
                stage: INPUT_STAGE.into(),
                route: None,
                skipped: false,
                writes: added,
                seq: Some(restored.next_seq),
                added: Some(Vec::new()),
            };
            restored.next_seq += 1;
            let bytes = encoded(format::encode_entry(&entry), run_id, None, "<input>")?;
            store
                .save(run_id, owner, Save::Entry(bytes))
                .await
                .map_err(store_err(run_id, "save"))?;
        }
        let kept = stored.error.filter(|_| restored.rolling_back.is_some());
        Ok(Prepared::Run(ctx, Some(restored), kept))
    } else {
        super::exec::preflight(plan, &input, env)?;
        let header = encode_input(plan, &input, run_id)?;
        let start = Save::start(plan.version.clone(), header);
        store
            .save(run_id, owner, start)
            .await
            .map_err(store_err(run_id, "save"))?;
        Ok(Prepared::Run(input, None, None))
    }
}

async fn load(store: &dyn CheckpointStore, run_id: &str) -> Result<StoredRun> {
    store
        .load(run_id)
        .await
        .map_err(store_err(run_id, "load"))?
        .ok_or_else(|| Error::NoCheckpoint {
            run_id: run_id.to_string(),
        })
}

/// The input a stored run started with.
pub(crate) async fn stored_input(
    plan: &Plan,
    store: &dyn CheckpointStore,
    run_id: &str,
) -> Result<Ctx> {
    // (A run rolling back is refused when the replay starts: its store keeps it.)
    let stored = load(store, run_id).await?;
    let (ctx, _) = header_values(plan, run_id, &stored.header, Reading::of(plan, &stored))?;
    Ok(ctx)
}

/// A stored run's final keys and their encoded values (a `#[merge]` key's writes merged,
/// for the stages of `plan` that merge them).
fn final_values(
    plan: &Plan,
    run_id: &str,
    stored: &StoredRun,
) -> Result<BTreeMap<String, Vec<u8>>> {
    check_own(plan, run_id, stored)?;
    let header = format::decode_header(&stored.header).map_err(|e| corrupt(run_id, e))?;
    let mut values: BTreeMap<String, Vec<u8>> = header.values.into_iter().collect();
    for entry in entries_in_order(run_id, stored)? {
        let writer = writer_of(plan, &entry, Reading::OtherVersion);
        for (name, bytes) in &entry.writes {
            let merge = merge_for(plan, writer, &entry, name);
            let merged = match (merge, values.get(name)) {
                (Some(merge), Some(held)) => merged_bytes(plan, run_id, name, held, bytes, merge)?,
                _ => bytes.clone(),
            };
            values.insert(name.clone(), merged);
        }
    }
    Ok(values)
}

/// For a checkpoint of this version, the checks a resume makes (entries that fit the graph,
/// none lost): `diff` must not compare as sound a run `resume` refuses. (Another version's
/// checkpoint is read for its values only.)
fn check_own(plan: &Plan, run_id: &str, stored: &StoredRun) -> Result<()> {
    if Reading::of(plan, stored) == Reading::Strict {
        restore(plan, run_id, stored)?;
    }
    Ok(())
}

/// The encoding of `more` merged into `held` (both encodings of key `name`).
fn merged_bytes(
    plan: &Plan,
    run_id: &str,
    name: &str,
    held: &[u8],
    more: &[u8],
    merge: crate::key::MergeFn,
) -> Result<Vec<u8>> {
    let desc = find_key(plan, name).expect("a key a stage merges is one of the plan's");
    let decode = |bytes: &[u8]| {
        (desc.decode)(bytes).map_err(|e| corrupt(run_id, format!("value of `{name}`: {e}")))
    };
    let value = merge(&*decode(held)?, &*decode(more)?)
        .ok_or_else(|| corrupt(run_id, format!("value of `{name}` does not merge")))?;
    let mut out = Vec::new();
    (desc.encode)(&*value, &mut out)
        .map_err(|e| corrupt(run_id, format!("value of `{name}`: {e}")))?;
    Ok(out)
}

/// A stored run, read without running anything: what [`Pipeline::inspect`](super::Pipeline::inspect)
/// returns.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RunRecord {
    /// The run's id.
    pub run_id: String,
    /// The pipeline version that wrote the checkpoint (compare [`Pipeline::version`](super::Pipeline::version)).
    pub version: String,
    /// Where the run stands.
    pub status: RunStatus,
    /// The error text of a run that failed.
    pub error: Option<String>,
    /// The run's context as stored: its input and what its finished stages wrote — the keys
    /// this pipeline knows (a checkpoint of another version may hold others: left out).
    pub ctx: Ctx,
    /// The stages the checkpoint records as finished, in the order they finished — for a
    /// run rolled back (or rolling back), also those whose rollbacks ran since. After a
    /// route, the stages of the branches it did not take, as skipped (as the run reported
    /// them). For a checkpoint of another pipeline version, only the stages it recorded.
    pub finished: Vec<FinishedStage>,
}

/// One finished stage of a [`RunRecord`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FinishedStage {
    /// The stage's name.
    pub stage: String,
    /// Whether it was skipped (by a route not taken, or a middleware) rather than run.
    pub skipped: bool,
}

/// Run `run_id` as `store` holds it, decoded for `plan` (nothing runs, nothing is written).
pub(crate) async fn inspect(
    plan: &Plan,
    store: &dyn CheckpointStore,
    run_id: &str,
) -> Result<RunRecord> {
    let stored = load(store, run_id).await?;
    let reading = Reading::of(plan, &stored);
    let (ctx, finished) = match reading {
        // Read as a resume reads it, with its checks: `inspect` must not show as sound a
        // run `resume` refuses.
        Reading::Strict => {
            let Restoration { ctx, restored, .. } = restore(plan, run_id, &stored)?;
            let mut finished = Vec::new();
            for &(i, branch, skipped) in &restored.done {
                finished.push(FinishedStage {
                    stage: plan.nodes[i as usize].meta.name.to_string(),
                    skipped,
                });
                // A route's branches not taken have no entries (its own entry holds its
                // choice); the run reported their stages skipped when the route finished,
                // and so does the record, right after the route.
                let Some(chosen) = branch else { continue };
                finished.extend(plan.reported_not_chosen(i as usize, chosen).map(|k| {
                    FinishedStage {
                        stage: plan.nodes[k as usize].meta.name.to_string(),
                        skipped: true,
                    }
                }));
            }
            (ctx, finished)
        }
        // Another version's checkpoint is read for what it holds, nothing placed.
        Reading::OtherVersion => {
            let (mut ctx, _) = header_values(plan, run_id, &stored.header, reading)?;
            let mut finished = Vec::new();
            for mut entry in entries_in_order(run_id, &stored)? {
                entry_values(plan, run_id, &mut ctx, &mut entry, reading)?;
                if entry.node != INPUT_ENTRY {
                    finished.push(FinishedStage {
                        stage: entry.stage,
                        skipped: entry.skipped,
                    });
                }
            }
            (ctx, finished)
        }
    };
    Ok(RunRecord {
        run_id: run_id.to_string(),
        version: stored.version,
        status: stored.status,
        error: stored.error,
        ctx,
        finished,
    })
}

/// How two runs' contexts differ, key by key.
///
/// ```
/// # use fluxio_core::CtxDiff;
/// let d = CtxDiff::default();
/// assert!(d.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CtxDiff {
    /// Keys only the second run holds, sorted.
    pub added: Vec<String>,
    /// Keys only the first run holds, sorted.
    pub removed: Vec<String>,
    /// Keys both hold with different values, sorted.
    pub changed: Vec<String>,
}

impl CtxDiff {
    /// Whether the two contexts hold the same keys and values.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

pub(crate) async fn diff(
    plan: &Plan,
    store: &dyn CheckpointStore,
    a: &str,
    b: &str,
) -> Result<CtxDiff> {
    let va = final_values(plan, a, &load(store, a).await?)?;
    let vb = final_values(plan, b, &load(store, b).await?)?;
    let mut d = CtxDiff::default();
    for (k, v) in &vb {
        match va.get(k) {
            None => d.added.push(k.clone()),
            Some(old) if old != v => d.changed.push(k.clone()),
            Some(_) => {}
        }
    }
    d.removed = va
        .keys()
        .filter(|k| !vb.contains_key(*k))
        .cloned()
        .collect();
    Ok(d)
}
