//! `Cache`: reuse a stage's result for the same inputs.

use std::any::TypeId;
use std::cell::RefCell;
use std::collections::VecDeque;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hashbrown::HashTable;
use smallvec::SmallVec;
use tokio::time::Instant;

use super::{Clock, Middleware, Next, StageCall};
use crate::ctx::{Ctx, Slot};
use crate::key::KeyDesc;
use crate::stage::{DynStage, StageError, StageKind, StageMeta, StageOutput};
use crate::store::BoxFuture;

/// The values of a call's reads, in the stage's order.
type Reads = SmallVec<[Slot; 1]>;

/// The keys of the caches a call entered, with the depth of their cache, outermost first.
pub(crate) type Keys = SmallVec<[(usize, CacheKey); 1]>;

/// What a cached result is found by: the stage and the values of the keys it reads, with
/// their hash computed once per call. The values are kept as they are in the context
/// (shared, not copied); two are the same read when they are the same value in memory, or
/// when their encodings (the checkpoint encoding) are equal.
pub(crate) struct CacheKey {
    hash: u64,
    /// The stage's type: stages of different modules may share a name.
    stage: TypeId,
    /// How to encode each of `reads`, in the same order.
    descs: &'static [KeyDesc],
    reads: Reads,
}

impl CacheKey {
    /// Whether `c` may hold this key (same stage, as many reads): the check under the lock.
    fn may_be(&self, c: &Cached) -> bool {
        // hashbrown compares a 7-bit tag only: check the whole hash first.
        c.hash == self.hash && c.stage == self.stage && c.reads.len() == self.reads.len()
    }

    /// Whether `reads` (of an entry that [`may_be`](Self::may_be) this key) are this
    /// key's values: the same in memory, or equal encodings. Not under the lock.
    fn same_reads(&self, reads: &[Slot]) -> bool {
        self.reads.len() == reads.len()
            && self
                .reads
                .iter()
                .zip(reads)
                .zip(self.descs)
                .all(|((a, b), desc)| Arc::ptr_eq(a, b) || same_encoding(desc, a, b))
    }
}

thread_local! {
    /// Where two values are encoded to be compared.
    static SCRATCH: RefCell<(Vec<u8>, Vec<u8>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Whether `a` and `b` encode to the same bytes (values of another type than the key's,
/// and values that fail to encode, are never the same).
fn same_encoding(desc: &KeyDesc, a: &Slot, b: &Slot) -> bool {
    let compare = |x: &mut Vec<u8>, y: &mut Vec<u8>| {
        x.clear();
        y.clear();
        (desc.encode)(&**a, x).is_ok() && (desc.encode)(&**b, y).is_ok() && x == y
    };
    SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
        Ok(mut pair) => {
            let (x, y) = &mut *pair;
            let same = compare(x, y);
            if x.capacity().max(y.capacity()) > 1 << 16 {
                // Do not keep a huge value's buffers for the thread's lifetime.
                *pair = Default::default();
            }
            same
        }
        Err(_) => compare(&mut Vec::new(), &mut Vec::new()),
    })
}

struct Cached {
    hash: u64,
    /// Which insertion this is: `order` refers to entries by it.
    seq: u64,
    stage: TypeId,
    reads: Reads,
    expires: Instant,
    out: StageOutput,
}

/// Results, and their insertions in order: with one TTL for every entry, insertion order is
/// expiry order, so the front of `order` is always what to evict first. Entries are found
/// for eviction by their `seq`.
#[derive(Default)]
struct Entries {
    table: HashTable<Cached>,
    order: VecDeque<(u64, u64, Instant)>,
    seq: u64,
    /// Counted under the lock the lookup takes anyway (an atomic add per call cost more).
    hits: u64,
    misses: u64,
}

#[derive(Default)]
struct Shared {
    /// Randomly seeded per cache (foldhash, hashbrown's default): read values may come
    /// from users, who must not be able to aim at collisions.
    hasher: foldhash::fast::RandomState,
    entries: Mutex<Entries>,
}

/// What a [`Cache`] has done so far: for a hit-rate metric, say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Calls answered from the cache (the stage was not called).
    pub hits: u64,
    /// Calls the cache could have answered but had no result for (the stage was called).
    /// Each attempt of a `Retry` outside the cache is a call of its own. Calls it never
    /// answers — stream stages, stages with a rollback, reads that do not encode — are
    /// neither.
    pub misses: u64,
    /// Results held now (expired ones included until they are evicted).
    pub len: usize,
}

/// Caches stage results: the key is the stage and the values of the keys it reads, so a
/// stage called again with the same inputs within the TTL is not called — its cached writes
/// are used. Two reads are the same when they are the same value in memory or when their
/// encodings (the checkpoint encoding, bincode) are equal. Errors and skips (a middleware
/// inside the cache answering `StageOutput::Skip`) are not cached. At most
/// `max_entries` results are kept (10,000 by default; expired ones go first, then the
/// oldest). Stream stages are never cached.
///
/// An entry keeps the values the call read (shared with the run's context, not copied)
/// and the values it wrote, until it is evicted.
///
/// Cache only stages whose result depends on their reads alone: scope the cache to them
/// with [`only`](super::MiddlewareExt::only). Stages with a `rollback`
/// are never cached: a rollback says the stage acts outside its writes (a payment, an
/// email), which a cached result would skip.
///
/// ```
/// # use fluxio_core::middleware::Cache;
/// # use std::time::Duration;
/// let cache = Cache::ttl(Duration::from_secs(60)).max_entries(1_000);
/// # let _ = cache;
/// ```
#[derive(Clone)]
pub struct Cache {
    ttl: Duration,
    max_entries: usize,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("len", &self.len())
            .finish()
    }
}

impl Cache {
    /// Results live for `ttl` (at most 30 years: a longer one, `Duration::MAX` say, is cut
    /// to that).
    pub fn ttl(ttl: Duration) -> Self {
        Cache {
            ttl: ttl.min(super::FOREVER),
            max_entries: 10_000,
            shared: Default::default(),
        }
    }

    /// Keeps at most `n` results (at least one: `0` counts as `1`).
    #[must_use]
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// How many results are cached (expired ones included until they are evicted).
    pub fn len(&self) -> usize {
        self.entries().table.len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hits, misses and size so far (shared by the cache's clones).
    pub fn stats(&self) -> CacheStats {
        let entries = self.entries();
        CacheStats {
            hits: entries.hits,
            misses: entries.misses,
            len: entries.table.len(),
        }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.shared
            .entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// The key of a call of `stage` (`meta`) on `ctx`: `None` for the calls never cached —
    /// stream stages, stages with a rollback, and reads missing or that do not encode.
    pub(crate) fn key(
        &self,
        meta: &StageMeta,
        stage: &dyn DynStage,
        ctx: &Ctx,
    ) -> Option<CacheKey> {
        let mut keys = Keys::new();
        self.push_key(meta, stage, ctx, 0, &mut keys);
        keys.pop().map(|(_, key)| key)
    }

    /// [`key`](Self::key), built in place at the end of `keys` (with `depth`): whether there
    /// is one. (A key built apart and moved in costs the engine a copy of it on every call.)
    #[inline]
    pub(crate) fn push_key(
        &self,
        meta: &StageMeta,
        stage: &dyn DynStage,
        ctx: &Ctx,
        depth: usize,
        keys: &mut Keys,
    ) -> bool {
        if meta.kind == StageKind::Stream || stage.has_rollback() {
            return false;
        }
        let stage = (meta.id)();
        let mut h = self.shared.hasher.build_hasher();
        stage.hash(&mut h);
        let mut reads = SmallVec::with_capacity(meta.access.reads.len());
        for desc in meta.access.reads {
            let Some(value) = ctx.slot(desc.name) else {
                return false;
            };
            if (desc.hash)(&**value, &mut h).is_err() {
                return false;
            }
            reads.push(value.clone());
        }
        keys.push((
            depth,
            CacheKey {
                hash: h.finish(),
                stage,
                descs: meta.access.reads,
                reads,
            },
        ));
        true
    }

    /// The cached result for `key`, if there is one that has not expired; counted as a hit
    /// or a miss.
    pub(crate) fn lookup(&self, key: &CacheKey, clock: Clock<'_>) -> Option<StageOutput> {
        // Under the lock, only cheap checks: the same values in memory is a hit at once.
        // An entry whose values are other copies is taken out (shared, not copied) and its
        // encodings compared after the lock is released: encoding a large value must not
        // hold up every other run's cache calls.
        let now = clock.now();
        let (reads, out) = {
            let mut guard = self.entries();
            let entries = &mut *guard;
            let Some(c) = entries
                .table
                .find(key.hash, |c| now < c.expires && key.may_be(c))
            else {
                entries.misses += 1;
                return None;
            };
            if c.reads
                .iter()
                .zip(&key.reads)
                .all(|(a, b)| Arc::ptr_eq(a, b))
            {
                entries.hits += 1;
                return Some(c.out.clone());
            }
            (c.reads.clone(), c.out.clone())
        };
        let found = if key.same_reads(&reads) {
            Some(out)
        } else {
            self.lookup_among_others(key, now)
        };
        let mut entries = self.entries();
        match found {
            Some(_) => entries.hits += 1,
            None => entries.misses += 1,
        }
        found
    }

    /// The rare case: the first live entry with the key's hash was another key; look at
    /// all of them.
    #[cold]
    fn lookup_among_others(&self, key: &CacheKey, now: Instant) -> Option<StageOutput> {
        let candidates: SmallVec<[(Reads, StageOutput); 2]> = self
            .entries()
            .table
            .iter_hash(key.hash)
            .filter(|c| now < c.expires && key.may_be(c))
            .map(|c| (c.reads.clone(), c.out.clone()))
            .collect();
        let (_, out) = candidates
            .into_iter()
            .find(|(reads, _)| key.same_reads(reads))?;
        Some(out)
    }

    /// Keeps `out` as the result for `key` — unless the stage was skipped: a skip is a
    /// middleware's decision for that call (maintenance, say), not the stage's result.
    pub(crate) fn insert(&self, key: CacheKey, out: StageOutput, clock: Clock<'_>) {
        if matches!(out, StageOutput::Skip(_)) {
            return;
        }
        let now = clock.now();
        let expires = now + self.ttl;
        let mut guard = self.entries();
        let entries = &mut *guard;
        // Drop what expired, then the oldest while full. The dropped results are freed
        // after the lock is released. (The usual case evicts one: kept apart from the
        // rest, it costs no call to drop an empty collection.)
        let mut evicted: Option<Cached> = None;
        let mut more: Option<Vec<Cached>> = None;
        while let Some(&(hash, seq, at)) = entries.order.front() {
            if at > now && entries.table.len() < self.max_entries {
                break;
            }
            entries.order.pop_front();
            if let Ok(old) = entries.table.find_entry(hash, |c| c.seq == seq) {
                let old = old.remove().0;
                if let Some(earlier) = evicted.replace(old) {
                    more.get_or_insert_with(Vec::new).push(earlier);
                }
            }
        }
        entries.seq += 1;
        let seq = entries.seq;
        entries.order.push_back((key.hash, seq, expires));
        // The same inputs may be stored already (expired, or two calls at once): the older
        // entry is not looked for — that would compare encodings under the lock — but left
        // to its turn in `order`; lookups skip expired entries, and two live equal entries
        // hold equally valid results.
        entries.table.insert_unique(
            key.hash,
            Cached {
                hash: key.hash,
                seq,
                stage: key.stage,
                reads: key.reads,
                expires,
                out,
            },
            |c| c.hash,
        );
        drop(guard);
        drop(evicted);
        drop(more);
    }
}

impl Middleware for Cache {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        let Some(key) = self.key(call.meta, next.stage, call.ctx) else {
            return next.run(call);
        };
        if let Some(hit) = self.lookup(&key, Clock::Direct) {
            return Box::pin(std::future::ready(Ok(hit)));
        }
        Box::pin(async move {
            let out = next.run(call).await?;
            self.insert(key, out.clone(), Clock::Direct);
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static DESCS: [KeyDesc; 1] = [KeyDesc::new::<u64>("n")];

    struct A;

    fn key(hash: u64, value: u64) -> CacheKey {
        CacheKey {
            hash,
            stage: TypeId::of::<A>(),
            descs: &DESCS,
            reads: smallvec::smallvec![Arc::new(value) as Slot],
        }
    }

    /// A result that is easy to tell apart (a skip would not be cached).
    fn out(text: &str) -> StageOutput {
        StageOutput::Route(crate::Route::to(text.to_string()))
    }

    fn text(out: Option<StageOutput>) -> Option<String> {
        match out {
            Some(StageOutput::Route(r)) => Some(r.label().to_string()),
            _ => None,
        }
    }

    #[tokio::test]
    async fn every_expired_entry_goes_at_the_next_insert_and_is_freed() {
        let cache = Cache::ttl(Duration::from_secs(60));
        let keys: Vec<CacheKey> = (0..3).map(|i| key(i, i)).collect();
        let reads: Vec<Slot> = keys.iter().map(|k| k.reads[0].clone()).collect();
        let start = Instant::now();
        let at = |secs| std::cell::Cell::new(Some(start + Duration::from_secs(secs)));
        for (i, k) in keys.into_iter().enumerate() {
            cache.insert(k, out(&i.to_string()), Clock::Run(&at(0)));
        }
        assert_eq!(cache.len(), 3);
        assert!(reads.iter().all(|r| Arc::strong_count(r) == 2));
        cache.insert(key(9, 9), out("late"), Clock::Run(&at(61)));
        assert_eq!(
            cache.len(),
            1,
            "the three expired entries are evicted at once"
        );
        assert!(
            reads.iter().all(|r| Arc::strong_count(r) == 1),
            "and what they held is freed"
        );
    }

    #[tokio::test]
    async fn keys_with_one_hash_and_other_values_are_told_apart() {
        let cache = Cache::ttl(Duration::from_secs(60));
        // Forced collisions: three keys, one hash.
        cache.insert(key(7, 1), out("one"), Clock::Direct);
        cache.insert(key(7, 2), out("two"), Clock::Direct);
        assert_eq!(cache.len(), 2);
        // New copies of equal values (not the same allocation): found by encoding.
        assert_eq!(
            text(cache.lookup(&key(7, 1), Clock::Direct)).as_deref(),
            Some("one")
        );
        assert_eq!(
            text(cache.lookup(&key(7, 2), Clock::Direct)).as_deref(),
            Some("two")
        );
        assert_eq!(text(cache.lookup(&key(7, 3), Clock::Direct)), None);
        // The very same values in memory: found by identity.
        let k = key(9, 5);
        let same = CacheKey {
            reads: k.reads.clone(),
            ..key(9, 0)
        };
        cache.insert(k, out("five"), Clock::Direct);
        assert_eq!(
            text(cache.lookup(&same, Clock::Direct)).as_deref(),
            Some("five")
        );
    }
}
