//! `Cache`: reuse a stage's result for the same inputs.

use std::any::TypeId;
use std::cell::RefCell;
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

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
    stage: TypeId,
    reads: Reads,
    expires: Instant,
    out: StageOutput,
}

/// How many results share a [`Set`]: their tags fill one cache line.
const WAYS: usize = 8;

/// A group of up to [`WAYS`] results, found by their key's hash. A result is stored in
/// one of the two sets its hash picks ([`Sets::for_store`]), evicting that set's oldest
/// result when it is full (with one TTL for every entry, the oldest is the first to
/// expire): the cache is bounded without a global eviction queue, and a set's lock is
/// held by the calls of its keys only. A set's results are a ring in insertion order: the
/// oldest is at `Ways::hand`.
#[repr(align(64))]
struct Set {
    /// The hash of each result in `ways` (`0`: none), written under its lock and read
    /// without it: a lookup that finds no tag equal to its key's hash (the usual miss) is
    /// answered without the lock. A result stored meanwhile, or moved to another way by
    /// [`drop_expired`], may be missed: a miss, never a wrong result (the way is checked
    /// under the lock).
    tags: [AtomicU64; WAYS],
    ways: Mutex<Ways>,
    /// How many results this set holds at most (the sets' capacities add up to
    /// `max_entries`).
    cap: usize,
}

#[derive(Default)]
struct Ways {
    /// `items[i]` is tagged `tags[i]`. Filled in insertion order; once full, the next
    /// result replaces the one at `hand`, which moves on.
    items: Vec<Cached>,
    /// The oldest result (`0` until the set is full).
    hand: usize,
    /// Counted under the lock the call takes anyway (an atomic add per call cost more).
    hits: u64,
    misses: u64,
}

impl Set {
    fn ways(&self) -> MutexGuard<'_, Ways> {
        self.ways.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the set has room, by its tags (read without the lock: a hint). Its results
    /// fill its ways from the first, so the last way's tag tells.
    #[inline]
    fn has_room(&self) -> bool {
        self.tags[self.cap - 1].load(Ordering::Relaxed) == 0
    }

    /// Where in the set a result for `hash` may be (by its tags, read without the lock).
    #[inline]
    fn tagged(&self, hash: u64) -> Option<usize> {
        self.tags
            .iter()
            .position(|tag| tag.load(Ordering::Relaxed) == hash)
    }
}

/// A fair coin, per thread (xorshift): cheap, and no state shared between threads.
fn coin() -> bool {
    thread_local! {
        static STATE: std::cell::Cell<u32> = const { std::cell::Cell::new(0x9e37_79b9) };
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        state.set(x);
        x & 1 == 1
    })
}

struct Shared {
    /// Randomly seeded per cache (foldhash): read values may come from users, who must not
    /// be able to aim at collisions.
    hasher: foldhash::fast::RandomState,
    max_entries: usize,
    /// Made when the cache first stores a result, so that an unused cache costs nothing.
    sets: OnceLock<Sets>,
    /// Misses of calls that stored nothing (those that stored count in their set).
    unstored_misses: AtomicU64,
}

/// How many sets are allocated at a time (64 KiB), when a key first reaches one of them:
/// a large `max_entries` is a bound, not an allocation.
const PAGE: usize = 512;

/// The most results a cache keeps: a larger `max_entries` counts as this. (Its groups, 16
/// bytes per result, come to 64 MiB at most.)
const MAX_ENTRIES: usize = 1 << 22;

/// How many sets a sweep looks at, at most (from where the last one stopped): a sweep runs
/// on a stage call, so its time is bounded (2,048 locks and scans, and what expired freed).
const SWEEP_BUDGET: usize = 2_048;

/// The shortest time between two sweeps, whatever the TTL.
const SWEEP_EVERY_AT_LEAST: Duration = Duration::from_millis(1);

struct Sets {
    /// How many sets there are (`max_entries / WAYS`, rounded up).
    count: usize,
    max_entries: usize,
    /// The sets, [`PAGE`] at a time; a page is allocated when a result is first stored in
    /// it (or a miss counted there).
    pages: Box<[OnceLock<Box<[Set]>>]>,
    /// The next sweep (see [`Cache::sweep`]); locked by the store that sweeps only, the
    /// others go on.
    sweep: Mutex<Sweep>,
}

#[derive(Default)]
struct Sweep {
    /// Not before then.
    next: Option<Instant>,
    /// The set it starts from.
    cursor: usize,
}

impl Sets {
    fn new(max_entries: usize) -> Sets {
        let count = max_entries.div_ceil(WAYS);
        Sets {
            count,
            max_entries,
            pages: (0..count.div_ceil(PAGE)).map(|_| OnceLock::new()).collect(),
            sweep: Mutex::default(),
        }
    }

    /// The indexes of the two sets a key's `hash` may be stored in (the same one, in a
    /// cache of one set). Two choices spread the keys: with one, the sets that draw more
    /// than their share evict results while others have room.
    #[inline]
    fn indexes(&self, hash: u64) -> (usize, usize) {
        // Bits of the hash scaled to the number of sets (no division, any count): the high
        // half for the first, the low half for the second.
        let scaled = |bits: u64| ((u128::from(bits) * self.count as u128) >> 64) as usize;
        (scaled(hash), scaled(hash.rotate_left(32)))
    }

    /// Set `index`, if its page is allocated.
    #[inline]
    fn get(&self, index: usize) -> Option<&Set> {
        Some(&self.pages[index / PAGE].get()?[index % PAGE])
    }

    /// Set `index`, its page allocated if need be.
    #[inline]
    fn at(&self, index: usize) -> &Set {
        &self.page(index / PAGE)[index % PAGE]
    }

    /// The set a result for `hash` goes in: the first choice unless it is full and the
    /// second is not; both full, either (a coin toss: which holds the older results is not
    /// known without both locks, and tossing keeps nearly all the hits the older would).
    #[inline]
    fn for_store(&self, hash: u64) -> &Set {
        let (a, b) = self.indexes(hash);
        let first = self.at(a);
        if a == b || first.has_room() {
            return first;
        }
        let second = self.at(b);
        if second.has_room() || coin() {
            second
        } else {
            first
        }
    }

    /// Page `page`, allocated if need be.
    fn page(&self, page: usize) -> &[Set] {
        self.pages[page].get_or_init(|| {
            let first = page * PAGE;
            (first..self.count.min(first + PAGE))
                .map(|i| Set {
                    tags: Default::default(),
                    ways: Default::default(),
                    // The sets' capacities add up to `max_entries`.
                    cap: self.max_entries / self.count
                        + usize::from(i < self.max_entries % self.count),
                })
                .collect()
        })
    }

    /// The sets allocated so far.
    fn allocated(&self) -> impl Iterator<Item = &Set> {
        self.pages.iter().filter_map(OnceLock::get).flatten()
    }
}

impl Default for Shared {
    fn default() -> Self {
        Shared::new(10_000)
    }
}

impl Shared {
    fn new(max_entries: usize) -> Shared {
        Shared {
            hasher: Default::default(),
            max_entries,
            sets: OnceLock::new(),
            unstored_misses: AtomicU64::new(0),
        }
    }
}

/// What a [`Cache`] has done so far: for a hit-rate metric, say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Calls answered from the cache (the stage was not called).
    pub hits: u64,
    /// Calls the cache could have answered but had no result for (the stage was called),
    /// counted when the call ends, however it ends: its result stored, failed, skipped,
    /// timed out, or its run cancelled (only a call unwound by a panic in a middleware
    /// inside the cache, before its stage waited, goes uncounted). Each attempt of a
    /// `Retry` outside the cache is a call of its own. Calls it never answers — stream
    /// stages, stages with a rollback, reads that do not encode — are neither.
    pub misses: u64,
    /// Results held now (expired ones included until they are evicted).
    pub len: usize,
}

/// Caches stage results: the key is the stage and the values of the keys it reads, so a
/// stage called again with the same inputs within the TTL is not called — its cached writes
/// are used. Two reads are the same when they are the same value in memory or when their
/// encodings (the checkpoint encoding, bincode) are equal. Errors and skips (a middleware
/// inside the cache answering `StageOutput::Skip`) are not cached. Stream stages are never
/// cached.
///
/// At most `max_entries` results are kept (10,000 by default). They are spread over groups
/// of up to eight: the hash of a result's key picks two, and it goes in the first unless
/// that one is full and the other is not; when both are full, one of them (a coin toss)
/// evicts its oldest result. So a result may be evicted while other groups have room, but
/// rarely: with as many distinct inputs as `max_entries`, called at random, about 98% of
/// repeated calls are hits (one queue for the whole cache would answer all; one group per
/// key, 86%). Each group has its own lock, and a call whose key is in neither of its
/// groups takes none before its stage runs: calls of other keys do not wait for each
/// other.
///
/// A store that finds its group's oldest result expired drops the group's expired results,
/// and then sweeps other groups: up to 2,048 from where the last sweep stopped, at most
/// once per eighth of the TTL. Expired results in groups nobody stores into are so freed
/// as long as results are stored, a full pass taking about `max_entries / 16,384` sweeps
/// (one for the default 10,000; about 32 TTLs' worth at the largest `max_entries`). A zero
/// TTL stores nothing.
///
/// An entry keeps the values the call read (shared with the run's context, not copied)
/// and the values it wrote, until it is dropped. The cache's own memory: 16 bytes per
/// result of `max_entries` for the groups, allocated 64 KiB at a time as keys reach them
/// (keys land at random, so most of it is taken after the first few thousand results),
/// and about 830 bytes per group that has stored a result.
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
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.shared.max_entries)
            .field("len", &self.len())
            .finish()
    }
}

impl Cache {
    /// Results live for `ttl` (at most 30 years: a longer one, `Duration::MAX` say, is cut
    /// to that). A zero TTL stores nothing: every call is a miss.
    pub fn ttl(ttl: Duration) -> Self {
        Cache {
            ttl: ttl.min(super::FOREVER),
            shared: Default::default(),
        }
    }

    /// Keeps at most `n` results (at least one: `0` counts as `1`; at most 2^22, about 4.2
    /// million: a larger `n` counts as that). Memory is taken as results are stored, 64 KiB
    /// of groups at a time, not for `n` up front. Call it when building the cache: it
    /// starts an empty one (its clones made before keep the old).
    #[must_use]
    pub fn max_entries(mut self, n: usize) -> Self {
        self.shared = Arc::new(Shared::new(n.clamp(1, MAX_ENTRIES)));
        self
    }

    /// How many results are cached (expired ones included until they are evicted). It
    /// takes each group's lock in turn: for metrics, not for every call.
    pub fn len(&self) -> usize {
        self.stats().len
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hits, misses and size so far (shared by the cache's clones).
    pub fn stats(&self) -> CacheStats {
        let mut stats = CacheStats {
            hits: 0,
            misses: self.shared.unstored_misses.load(Ordering::Relaxed),
            len: 0,
        };
        for set in self.shared.sets.get().into_iter().flat_map(Sets::allocated) {
            let ways = set.ways();
            stats.hits += ways.hits;
            stats.misses += ways.misses;
            stats.len += ways.items.len();
        }
        stats
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
                // `0` tags an empty way.
                hash: h.finish() | 1,
                stage,
                descs: meta.access.reads,
                reads,
            },
        ));
        true
    }

    /// The cached result for `key`, if there is one that has not expired. A hit is counted
    /// here; a miss when the call ends ([`insert`](Self::insert) or
    /// [`missed`](Self::missed)), so that the usual miss takes no lock.
    #[inline]
    pub(crate) fn lookup(&self, key: &CacheKey, clock: Clock<'_>) -> Option<StageOutput> {
        let sets = self.shared.sets.get()?;
        let (a, b) = sets.indexes(key.hash);
        if let Some(set) = sets.get(a) {
            if let Some(at) = set.tagged(key.hash) {
                if let Some(hit) = self.lookup_tagged(key, set, at, clock.now()) {
                    return Some(hit);
                }
            }
        }
        let set = sets.get(b).filter(|_| b != a)?;
        let at = set.tagged(key.hash)?;
        self.lookup_tagged(key, set, at, clock.now())
    }

    /// [`lookup`](Self::lookup) of a key whose hash tags way `at` of `set` (or did a moment
    /// ago). Under the lock, only cheap checks: the same values in memory is a hit at once.
    /// An entry whose values are other copies is taken out (shared, not copied) and its
    /// encodings compared after the lock is released: encoding a large value must not hold
    /// up the set's other calls.
    #[inline(never)]
    fn lookup_tagged(
        &self,
        key: &CacheKey,
        set: &Set,
        at: usize,
        now: Instant,
    ) -> Option<StageOutput> {
        let (reads, out) = {
            let mut ways = set.ways();
            match ways.items.get(at) {
                Some(c) if now < c.expires && key.may_be(c) => {
                    if c.reads
                        .iter()
                        .zip(&key.reads)
                        .all(|(a, b)| Arc::ptr_eq(a, b))
                    {
                        let out = c.out.clone();
                        ways.hits += 1;
                        return Some(out);
                    }
                    (c.reads.clone(), c.out.clone())
                }
                _ => {
                    drop(ways);
                    return self.lookup_among_others(key, set, now);
                }
            }
        };
        if key.same_reads(&reads) {
            set.ways().hits += 1;
            return Some(out);
        }
        self.lookup_among_others(key, set, now)
    }

    /// The rare case: the way the key's hash tagged held another key (or changed since):
    /// look at every live entry of the set with that hash.
    #[cold]
    fn lookup_among_others(&self, key: &CacheKey, set: &Set, now: Instant) -> Option<StageOutput> {
        let candidates: SmallVec<[(Reads, StageOutput); 2]> = set
            .ways()
            .items
            .iter()
            .filter(|c| now < c.expires && key.may_be(c))
            .map(|c| (c.reads.clone(), c.out.clone()))
            .collect();
        let (_, out) = candidates
            .into_iter()
            .find(|(reads, _)| key.same_reads(reads))?;
        set.ways().hits += 1;
        Some(out)
    }

    /// Counts a miss whose call stored nothing: it failed, was skipped, timed out or was
    /// dropped. (Apart from the sets' own counts, so that it allocates no group.)
    #[cold]
    pub(crate) fn missed(&self, key: &CacheKey) {
        let _ = key;
        self.shared.unstored_misses.fetch_add(1, Ordering::Relaxed);
    }

    /// The sets, made at the first use.
    #[inline]
    fn sets(&self) -> &Sets {
        self.shared
            .sets
            .get_or_init(|| Sets::new(self.shared.max_entries))
    }

    /// Keeps `out` as the result for `key` — unless the stage was skipped: a skip is a
    /// middleware's decision for that call (maintenance, say), not the stage's result.
    /// When the key's set is full, its oldest result goes (the first to expire).
    pub(crate) fn insert(&self, key: CacheKey, out: StageOutput, clock: Clock<'_>) {
        if matches!(out, StageOutput::Skip(_)) || self.ttl.is_zero() {
            // (A result that expires at once would never be a hit.)
            self.missed(&key);
            return;
        }
        let now = clock.now();
        let sets = self.sets();
        let set = sets.for_store(key.hash);
        let entry = Cached {
            hash: key.hash,
            stage: key.stage,
            reads: key.reads,
            expires: now + self.ttl,
            out,
        };
        // The same inputs may be stored already (expired, or two calls at once): the older
        // entry is not looked for — that would compare encodings under the lock — but left
        // to be evicted in its turn; lookups skip expired entries, and two live equal
        // entries hold equally valid results.
        let (evicted, expired) = {
            let mut guard = set.ways();
            let ways = &mut *guard;
            ways.misses += 1;
            // The set's oldest expired: so have those stored soon after it, here and likely
            // in other sets.
            let expired = ways
                .items
                .get(ways.hand)
                .is_some_and(|c| c.expires <= now)
                .then(|| drop_expired(set, ways, now));
            let hand = ways.hand;
            let (at, evicted) = if ways.items.len() < set.cap {
                if ways.items.capacity() == 0 {
                    ways.items.reserve_exact(set.cap);
                }
                ways.items.push(entry);
                (ways.items.len() - 1, None)
            } else {
                ways.hand = if hand + 1 == ways.items.len() {
                    0
                } else {
                    hand + 1
                };
                (hand, Some(std::mem::replace(&mut ways.items[hand], entry)))
            };
            set.tags[at].store(key.hash, Ordering::Relaxed);
            (evicted, expired)
        };
        // Freed after the lock is released.
        drop(evicted);
        if let Some(expired) = expired {
            drop(expired);
            self.sweep(sets, now);
        }
    }

    /// Drops expired results in other sets than the ones stored into, which nobody may
    /// write to for a long time: up to [`SWEEP_BUDGET`] sets, from where the last sweep
    /// stopped, at most once per eighth of the TTL (a steady flow of results expiring one
    /// by one must not sweep at every store). A store that finds another sweeping goes on.
    #[cold]
    #[inline(never)]
    fn sweep(&self, sets: &Sets, now: Instant) {
        let mut sweep = match sets.sweep.try_lock() {
            Ok(sweep) => sweep,
            // A value's `drop` panicked in an earlier sweep: its state is still right.
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return,
        };
        if sweep.next.is_some_and(|at| now < at) {
            return;
        }
        sweep.next = Some(now + (self.ttl / 8).max(SWEEP_EVERY_AT_LEAST));
        let mut at = sweep.cursor;
        for _ in 0..SWEEP_BUDGET.min(sets.count) {
            if at >= sets.count {
                at = 0;
            }
            if let Some(page) = sets.pages[at / PAGE].get() {
                let set = &page[at % PAGE];
                let mut guard = set.ways();
                let expired = drop_expired(set, &mut guard, now);
                drop(guard);
                // Freed set by set, outside the set's lock.
                drop(expired);
            }
            at += 1;
        }
        sweep.cursor = at;
    }
}

/// Takes the expired results out of `set` (whose `ways` the caller has locked), its others
/// kept in order, oldest first.
#[cold]
fn drop_expired(set: &Set, ways: &mut Ways, now: Instant) -> Vec<Cached> {
    if !ways.items.iter().any(|c| c.expires <= now) {
        return Vec::new();
    }
    // Oldest first: with one TTL, the expired ones are the oldest.
    let hand = std::mem::take(&mut ways.hand);
    ways.items.rotate_left(hand);
    let live = ways.items.iter().position(|c| now < c.expires);
    let expired = ways
        .items
        .drain(..live.unwrap_or(ways.items.len()))
        .collect();
    for (at, tag) in set.tags.iter().enumerate() {
        tag.store(ways.items.get(at).map_or(0, |c| c.hash), Ordering::Relaxed);
    }
    expired
}

/// A call's key until its result is stored: dropped otherwise (the call failed, was cut off
/// by a `Timeout` or cancelled), it counts the miss.
struct Pending<'a> {
    cache: &'a Cache,
    key: Option<CacheKey>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.cache.missed(&key);
        }
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
        let mut pending = Pending {
            cache: self,
            key: Some(key),
        };
        Box::pin(async move {
            let out = next.run(call).await?;
            if let Some(key) = pending.key.take() {
                self.insert(key, out.clone(), Clock::Direct);
            }
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
            hash: hash | 1,
            stage: TypeId::of::<A>(),
            descs: &DESCS,
            reads: smallvec::smallvec![Arc::new(value) as Slot],
        }
    }

    /// A key with the same hash and the very same read values as `k` (to look it up).
    fn probe(k: &CacheKey) -> CacheKey {
        CacheKey {
            reads: k.reads.clone(),
            ..key(k.hash, 0)
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

    /// A key whose hash picks set `set` of a cache of 10,000 results (1,250 sets).
    fn key_in(set: u64, value: u64) -> CacheKey {
        let hash = ((u128::from(set) << 64).div_ceil(1_250) + 2) as u64;
        let k = key(hash, value);
        assert_eq!(
            ((u128::from(k.hash) * 1_250) >> 64) as u64,
            set,
            "the test's key is in the set it names"
        );
        k
    }

    #[test]
    fn the_sets_hold_max_entries_in_all() {
        for n in [1, 2, 7, 8, 9, 15, 16, 17, 999, 1_000, 10_000, 12_345] {
            let sets = Sets::new(n);
            let caps: Vec<usize> = (0..sets.pages.len())
                .flat_map(|page| sets.page(page))
                .map(|s| s.cap)
                .collect();
            assert_eq!(caps.iter().sum::<usize>(), n, "{n}: {caps:?}");
            assert!(caps.iter().all(|c| (1..=WAYS).contains(c)), "{n}: {caps:?}");
        }
        // As the docs say: 128 bytes per group (with std's futex mutex).
        #[cfg(any(target_os = "linux", target_os = "windows"))]
        assert_eq!(std::mem::size_of::<Set>(), 128);
    }

    #[tokio::test]
    async fn a_full_set_evicts_its_oldest_result() {
        // Eight results: one set.
        let cache = Cache::ttl(Duration::from_secs(60)).max_entries(8);
        let keys: Vec<CacheKey> = (0..10).map(|i| key(i << 1, i)).collect();
        let reads: Vec<Slot> = keys.iter().map(|k| k.reads[0].clone()).collect();
        let probe = |i: usize| CacheKey {
            reads: smallvec::smallvec![reads[i].clone()],
            ..key((i as u64) << 1, 0)
        };
        for (i, k) in keys.into_iter().enumerate() {
            cache.insert(k, out(&i.to_string()), Clock::Direct);
            assert_eq!(cache.len(), (i + 1).min(8));
        }
        // 0 and 1 went, in that order; 2 to 9 are kept.
        assert_eq!(text(cache.lookup(&probe(0), Clock::Direct)), None);
        assert_eq!(text(cache.lookup(&probe(1), Clock::Direct)), None);
        for i in 2..10 {
            assert_eq!(
                text(cache.lookup(&probe(i), Clock::Direct)),
                Some(i.to_string())
            );
        }
        assert_eq!(
            Arc::strong_count(&reads[0]),
            1,
            "an evicted result is freed"
        );
        assert_eq!(Arc::strong_count(&reads[2]), 2);
    }

    #[tokio::test]
    async fn a_store_drops_its_sets_expired_results_and_sweeps_the_others_at_most_every_eighth_ttl()
    {
        let cache = Cache::ttl(Duration::from_secs(80));
        let start = Instant::now();
        let at = |secs| std::cell::Cell::new(Some(start + Duration::from_secs(secs)));
        let insert = |k, secs| cache.insert(k, out("x"), Clock::Run(&at(secs)));
        let held = |k: &CacheKey| k.reads[0].clone();
        let a = key_in(0, 1);
        let a_read = held(&a);
        insert(a, 0);
        let (b, c, f) = (key_in(7, 2), key_in(9, 3), key_in(11, 4));
        let (b_read, c_read, f_read) = (held(&b), held(&c), held(&f));
        insert(b, 5);
        insert(c, 5);
        insert(f, 5);
        assert_eq!(cache.len(), 4);
        // At 81 s, set 0's oldest (`a`) has expired: it goes, and the other sets are swept
        // (nothing else has expired yet).
        insert(key_in(0, 5), 81);
        assert_eq!(cache.len(), 4, "a went, the new one came");
        assert_eq!(Arc::strong_count(&a_read), 1, "a is freed");
        // At 86 s `b`, `c` and `f` have expired. A store into a set with nothing expired
        // drops nothing.
        insert(key_in(3, 6), 86);
        assert_eq!(
            cache.len(),
            5,
            "expired results wait for a store into their set"
        );
        // A store into `b`'s set drops `b`; the others wait: the last sweep was less than
        // 10 s ago.
        insert(key_in(7, 7), 87);
        assert_eq!(Arc::strong_count(&b_read), 1, "b is freed");
        assert_eq!(cache.len(), 5);
        assert_eq!(Arc::strong_count(&c_read), 2, "no sweep yet");
        // At 92 s a store into `f`'s set drops `f`, and sweeps: `c` goes too.
        insert(key_in(11, 8), 92);
        assert_eq!(Arc::strong_count(&f_read), 1);
        assert_eq!(Arc::strong_count(&c_read), 1, "c is freed by the sweep");
        assert_eq!(cache.len(), 4);
    }

    #[tokio::test]
    async fn a_sweep_keeps_a_wrapped_sets_live_results_findable() {
        // One set of eight, filled, then wrapped: its oldest is at the hand, not at 0.
        let cache = Cache::ttl(Duration::from_secs(60)).max_entries(8);
        let start = Instant::now();
        let at = |secs| std::cell::Cell::new(Some(start + Duration::from_secs(secs)));
        let keys: Vec<CacheKey> = (0..11).map(|i| key(i << 1, i)).collect();
        let probes: Vec<CacheKey> = keys.iter().map(probe).collect();
        for (i, k) in keys.into_iter().enumerate() {
            // 0 to 5 at 0 s, 6 to 10 at 30 s: 0 to 2 are evicted, 3 to 5 expire at 60 s.
            let secs = if i < 6 { 0 } else { 30 };
            cache.insert(k, out(&i.to_string()), Clock::Run(&at(secs)));
        }
        assert_eq!(cache.len(), 8);
        // At 61 s a store finds the set's oldest (3) expired: 3 to 5 go, 6 to 10 stay.
        let late = CacheKey {
            reads: smallvec::smallvec![Arc::new(99u64) as Slot],
            ..key(99 << 1, 99)
        };
        cache.insert(late, out("late"), Clock::Run(&at(61)));
        assert_eq!(cache.len(), 6);
        for (i, probe) in probes.iter().enumerate() {
            let found = text(cache.lookup(probe, Clock::Run(&at(62))));
            let expected = (6..11).contains(&i).then(|| i.to_string());
            assert_eq!(found, expected, "result {i}");
        }
    }

    #[tokio::test]
    async fn results_whose_first_group_is_full_go_to_their_second() {
        // Two groups; sixteen keys whose first choice is group 0 and second group 1.
        let cache = Cache::ttl(Duration::from_secs(60)).max_entries(16);
        let keys: Vec<CacheKey> = (0..16).map(|i| key((i << 40) | 0x8000_0000, i)).collect();
        let probes: Vec<CacheKey> = keys.iter().map(probe).collect();
        let sets = || cache.shared.sets.get().unwrap();
        for (i, k) in keys.into_iter().enumerate() {
            assert_eq!(sets_of(&cache, k.hash), (0, 1));
            cache.insert(k, out(&i.to_string()), Clock::Direct);
        }
        assert_eq!(cache.len(), 16, "none evicted");
        for (i, probe) in probes.iter().enumerate() {
            assert_eq!(
                text(cache.lookup(probe, Clock::Direct)),
                Some(i.to_string())
            );
        }
        let held: Vec<usize> = sets().allocated().map(|s| s.ways().items.len()).collect();
        assert_eq!(held, [8, 8]);
    }

    fn sets_of(cache: &Cache, hash: u64) -> (usize, usize) {
        cache.sets().indexes(hash)
    }

    #[tokio::test]
    async fn a_huge_max_entries_is_a_bound_not_an_allocation() {
        let cache = Cache::ttl(Duration::from_secs(60)).max_entries(usize::MAX);
        assert_eq!(cache.shared.max_entries, MAX_ENTRIES);
        let k = key(12_345, 1);
        let probe = CacheKey {
            reads: k.reads.clone(),
            ..key(12_345, 0)
        };
        cache.insert(k, out("one"), Clock::Direct);
        assert_eq!(
            text(cache.lookup(&probe, Clock::Direct)).as_deref(),
            Some("one")
        );
        let sets = cache.shared.sets.get().unwrap();
        assert_eq!(sets.allocated().count(), PAGE, "one page of sets");
    }

    #[tokio::test]
    async fn a_zero_ttl_stores_nothing_and_allocates_nothing() {
        let cache = Cache::ttl(Duration::ZERO).max_entries(usize::MAX);
        for i in 0..1_000u64 {
            cache.insert(
                key(i.wrapping_mul(0x9e37_79b9_7f4a_7c15), i),
                out("x"),
                Clock::Direct,
            );
            cache.missed(&key(i, i));
        }
        assert_eq!(text(cache.lookup(&key(3, 1), Clock::Direct)), None);
        let stats = cache.stats();
        assert_eq!((stats.hits, stats.misses, stats.len), (0, 2_000, 0));
        assert!(cache.shared.sets.get().is_none(), "no group was allocated");
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
