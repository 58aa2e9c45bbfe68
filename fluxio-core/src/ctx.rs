//! The immutable, typed pipeline context.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use rpds::HashTrieMapSync;
use rustc_hash::FxBuildHasher;

use crate::error::{Error, Result};
use crate::key::{AsKey, Key};

/// A value stored in a [`Ctx`], shared between every context that holds it.
pub(crate) type Slot = Arc<dyn Any + Send + Sync>;

type Map = HashTrieMapSync<&'static str, Slot, FxBuildHasher>;

/// The immutable context a pipeline run carries from stage to stage.
///
/// A `Ctx` maps typed keys (declared with `keys!`) to values. It never changes in place:
/// [`set`](Ctx::set) returns a new context and leaves the old one as it was. It is a
/// persistent hash array mapped trie, so cloning (forking) is O(1) and `set` is O(log n);
/// forks share everything they did not change.
///
/// # Examples
///
/// ```
/// # use fluxio_core::{Ctx, Key};
/// # #[allow(non_camel_case_types)] #[derive(Clone, Copy)] struct user_id {}
/// # impl Key for user_id { type Value = u64; const NAME: &'static str = "user_id"; }
/// # fn user_id() -> user_id { user_id {} }
/// let a = Ctx::new().with(user_id, 42);
/// let b = a.set(user_id, 7);
/// assert_eq!(a[user_id], 42); // unchanged
/// assert_eq!(b[user_id], 7);
/// assert_eq!(b.get(user_id), Some(&7));
/// ```
#[derive(Clone)]
pub struct Ctx {
    map: Map,
}

impl Default for Ctx {
    fn default() -> Self {
        Self::new()
    }
}

impl Ctx {
    /// An empty context.
    pub fn new() -> Self {
        Ctx {
            map: Map::new_with_hasher_and_ptr_kind(FxBuildHasher),
        }
    }

    /// The value under `key`, or `None` when the context does not hold it.
    pub fn get<K: AsKey>(&self, key: K) -> Option<&<K::Key as Key>::Value> {
        let _ = key;
        self.get_typed::<K::Key>()
    }

    /// The value under the key type `K` (the form generated code uses).
    pub fn get_typed<K: Key>(&self) -> Option<&K::Value> {
        self.map
            .get(K::NAME)
            .and_then(|slot| slot.downcast_ref::<K::Value>())
    }

    /// Whether the context holds `key` (a value of the key's type under its name; see
    /// [`contains_name`](Self::contains_name) for the name alone).
    pub fn contains<K: AsKey>(&self, key: K) -> bool {
        self.get(key).is_some()
    }

    /// Whether the context holds a key with this name.
    pub fn contains_name(&self, name: &str) -> bool {
        self.map.contains_key(name)
    }

    /// A new context with `key` set to `value`; `self` is unchanged.
    #[must_use = "Ctx is immutable: `set` returns the new context"]
    pub fn set<K: AsKey>(&self, key: K, value: <K::Key as Key>::Value) -> Ctx {
        self.clone().with(key, value)
    }

    /// By-value form of [`set`](Ctx::set), for building a context.
    #[must_use = "Ctx is immutable: `with` returns the new context"]
    pub fn with<K: AsKey>(self, key: K, value: <K::Key as Key>::Value) -> Ctx {
        let _ = key;
        self.with_typed::<K::Key>(value)
    }

    /// By-value `set` under the key type `K` (the form `input!` and generated code use).
    #[must_use = "Ctx is immutable: `with_typed` returns the new context"]
    pub fn with_typed<K: Key>(mut self, value: K::Value) -> Ctx {
        self.map.insert_mut(K::NAME, Arc::new(value));
        self
    }

    pub(crate) fn slot(&self, name: &str) -> Option<&Slot> {
        self.map.get(name)
    }

    #[inline]
    pub(crate) fn insert_slot(&mut self, name: &'static str, slot: Slot) {
        self.map.insert_mut(name, slot);
    }

    /// Inserts `slot` as key `name`'s value — added to the value held, when `merge` (the
    /// key's `#[merge]`) is given and there is one.
    pub(crate) fn insert_merged(
        &mut self,
        name: &'static str,
        slot: Slot,
        merge: Option<crate::key::MergeFn>,
    ) {
        let merged = merge.and_then(|merge| merge(&**self.slot(name)?, &*slot));
        self.insert_slot(name, merged.unwrap_or(slot));
    }

    pub(crate) fn iter_slots(&self) -> impl Iterator<Item = (&'static str, &Slot)> + '_ {
        self.map.iter().map(|(k, v)| (*k, v))
    }

    /// The number of keys the context holds.
    pub fn len(&self) -> usize {
        self.map.size()
    }

    /// Whether the context holds no key.
    pub fn is_empty(&self) -> bool {
        self.map.size() == 0
    }

    /// The names of the keys the context holds, sorted.
    pub fn keys(&self) -> Vec<&'static str> {
        let mut names: Vec<&'static str> = self.map.keys().copied().collect();
        names.sort_unstable();
        names
    }

    /// The keys whose value in `self` is not the very value `base` holds (added or replaced).
    ///
    /// Values are compared by identity, not by equality: a key set again to an equal value
    /// counts as written, which is what conflict detection needs.
    pub(crate) fn written_since(&self, base: &Ctx) -> Vec<&'static str> {
        let mut written: Vec<&'static str> = self
            .map
            .iter()
            .filter(|(name, slot)| match base.map.get(**name) {
                Some(old) => !Arc::ptr_eq(old, slot),
                None => true,
            })
            .map(|(name, _)| *name)
            .collect();
        written.sort_unstable();
        written
    }

    /// Merges the writes of several branches forked from `self`.
    ///
    /// Each branch is a context derived from `self` (by `set`/`with`) and the name of whoever
    /// produced it. The result holds every key any branch wrote. A key written by two
    /// branches is [`Error::MergeConflict`] naming both, even when the values are equal: a
    /// fork's branches must not overlap. That holds for a key declared `#[merge]` too: a
    /// context holds values, not their keys' declarations — the merging of such keys is the
    /// pipeline's, when a stage's write is applied.
    ///
    /// # Errors
    ///
    /// [`Error::MergeConflict`] when two branches wrote the same key.
    ///
    /// # Examples
    ///
    /// ```
    /// # use fluxio_core::{Ctx, Key, Error};
    /// # #[allow(non_camel_case_types)] #[derive(Clone, Copy)] struct a {}
    /// # impl Key for a { type Value = u8; const NAME: &'static str = "a"; }
    /// # fn a() -> a { a {} }
    /// # #[allow(non_camel_case_types)] #[derive(Clone, Copy)] struct b {}
    /// # impl Key for b { type Value = u8; const NAME: &'static str = "b"; }
    /// # fn b() -> b { b {} }
    /// let base = Ctx::new();
    /// let merged = base.merge([("left", base.set(a, 1)), ("right", base.set(b, 2))]).unwrap();
    /// assert_eq!((merged[a], merged[b]), (1, 2));
    ///
    /// let err = base.merge([("left", base.set(a, 1)), ("right", base.set(a, 1))]).unwrap_err();
    /// assert!(matches!(err, Error::MergeConflict { key: "a", .. }));
    /// ```
    pub fn merge<S, I>(&self, branches: I) -> Result<Ctx>
    where
        S: Into<String>,
        I: IntoIterator<Item = (S, Ctx)>,
    {
        let mut merged = self.clone();
        let mut writers: Vec<(&'static str, String)> = Vec::new();
        for (who, branch) in branches {
            let who = who.into();
            for name in branch.written_since(self) {
                if let Some((_, first)) = writers.iter().find(|(k, _)| *k == name) {
                    return Err(Error::MergeConflict {
                        key: name,
                        stages: [first.clone(), who],
                        run_id: None,
                    });
                }
                let slot = branch
                    .map
                    .get(name)
                    .cloned()
                    .expect("written key is present");
                merged.map.insert_mut(name, slot);
                writers.push((name, who.clone()));
            }
        }
        Ok(merged)
    }
}

impl<K: AsKey> std::ops::Index<K> for Ctx {
    type Output = <K::Key as Key>::Value;

    /// The value under `key`.
    ///
    /// # Panics
    ///
    /// When the context does not hold `key`; the message names the key.
    #[track_caller]
    fn index(&self, key: K) -> &Self::Output {
        match self.get(key) {
            Some(value) => value,
            None => index_failed(
                self,
                <K::Key as Key>::NAME,
                std::any::type_name::<<K::Key as Key>::Value>(),
            ),
        }
    }
}

#[cold]
#[track_caller]
fn index_failed(ctx: &Ctx, name: &str, type_name: &str) -> ! {
    if ctx.contains_name(name) {
        panic!(
            "the context holds a value of another type than `{}` under `{name}`: are two keys \
             named `{name}`?",
            crate::error::short_type(type_name)
        )
    }
    panic!("the context holds no value for key `{name}`")
}

impl fmt::Debug for Ctx {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctx").field("keys", &self.keys()).finish()
    }
}
