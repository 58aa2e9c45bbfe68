//! `Cache`: reuse a stage's result for the same inputs.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::{Middleware, Next, StageCall};
use crate::stage::{StageError, StageKind, StageOutput};
use crate::store::BoxFuture;

type CacheKey = (&'static str, Vec<u8>);

/// Results by key, and keys in insertion order: with one TTL for every entry, insertion
/// order is expiry order, so the front of `order` is always what to evict first.
#[derive(Default)]
struct Entries {
    map: HashMap<CacheKey, (Instant, StageOutput)>,
    order: VecDeque<(CacheKey, Instant)>,
}

/// Caches stage results: the key is the stage and the encoded values of the keys it reads,
/// so a stage called again with the same inputs within the TTL is not called — its cached
/// writes are used. Errors are not cached. At most `max_entries` results are kept (10,000
/// by default; expired ones go first, then the oldest). Stream stages are never cached.
///
/// Cache only stages whose result depends on their reads alone.
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
    entries: Arc<Mutex<Entries>>,
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
    /// Results live for `ttl`.
    pub fn ttl(ttl: Duration) -> Self {
        Cache {
            ttl,
            max_entries: 10_000,
            entries: Default::default(),
        }
    }

    /// Keeps at most `n` results.
    #[must_use]
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n.max(1);
        self
    }

    /// How many results are cached (expired ones included until they are evicted).
    pub fn len(&self) -> usize {
        self.entries.lock().map(|e| e.map.len()).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stage's read values, encoded; `None` if one is missing or does not encode.
    fn key(call: &StageCall<'_>) -> Option<Vec<u8>> {
        let mut key = Vec::new();
        for desc in call.meta.access.reads {
            let value = call.ctx.slot(desc.name)?;
            let bytes = (desc.encode)(&**value).ok()?;
            key.extend((desc.name.len() as u64).to_le_bytes());
            key.extend(desc.name.as_bytes());
            key.extend((bytes.len() as u64).to_le_bytes());
            key.extend(bytes);
        }
        Some(key)
    }

    fn lookup(&self, key: &CacheKey) -> Option<StageOutput> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (expires, out) = entries.map.get(key)?;
        (Instant::now() < *expires).then(|| out.clone())
    }

    fn insert(&self, key: CacheKey, out: StageOutput) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        // Drop what expired, then the oldest while full. A key re-inserted later has a newer
        // expiry in the map than its old place in `order`: that place is stale and skipped.
        while let Some((front, expires)) = entries.order.front() {
            let full = entries.map.len() >= self.max_entries;
            if *expires > now && !full {
                break;
            }
            let (front, expires) = (front.clone(), *expires);
            entries.order.pop_front();
            if entries.map.get(&front).is_some_and(|(e, _)| *e == expires) {
                entries.map.remove(&front);
            }
        }
        let expires = now + self.ttl;
        entries.order.push_back((key.clone(), expires));
        entries.map.insert(key, (expires, out));
    }
}

impl Middleware for Cache {
    fn handle<'a>(
        &'a self,
        call: StageCall<'a>,
        next: Next<'a>,
    ) -> BoxFuture<'a, Result<StageOutput, StageError>> {
        if call.meta.kind == StageKind::Stream {
            return next.run(call);
        }
        let Some(bytes) = Self::key(&call) else {
            return next.run(call);
        };
        let key = (call.meta.name, bytes);
        if let Some(hit) = self.lookup(&key) {
            return Box::pin(std::future::ready(Ok(hit)));
        }
        Box::pin(async move {
            let out = next.run(call).await?;
            self.insert(key, out.clone());
            Ok(out)
        })
    }
}
