//! Typed context keys.
//!
//! A key is declared once with `fluxio::keys!` and then used everywhere by name: in
//! `#[stage(reads = [...], writes = [...])]`, as `ctx[user]`, `ctx.get(user)` and
//! `ctx.set(user, value)`.
//!
//! `keys!` generates two items with the key's name: a zero-sized braced struct in the type
//! namespace (it implements [`Key`]) and a function in the value namespace (it is what
//! `ctx[user]` receives, see [`AsKey`]). Using a function for the value means a stage
//! parameter called `user` simply shadows it, exactly like any local variable would; a unit
//! struct or a constant would turn the parameter into a pattern and fail to compile.

use std::any::Any;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

/// A typed context key, implemented by the types `keys!` declares.
///
/// `NAME` identifies the key inside a [`Ctx`](crate::Ctx), in checkpoints, in the
/// pipeline's version hash and in every error message, so it must be unique among the keys
/// one pipeline uses.
pub trait Key: Copy + Send + Sync + 'static {
    /// The type of the value stored under this key.
    type Value: Clone + Send + Sync + Serialize + DeserializeOwned + 'static;
    /// The key's name as written in `keys!`.
    const NAME: &'static str;
    /// The key's constant description, used in stage metadata.
    const DESC: KeyDesc = KeyDesc::new::<Self::Value>(Self::NAME);
}

/// A value as stored in a context.
pub(crate) type AnyValue = dyn Any + Send + Sync;

/// Constant description of a key: what the compile-time graph and the runtime know about it,
/// including how to encode its value into a checkpoint and back.
#[derive(Clone, Copy)]
pub struct KeyDesc {
    /// The key's name.
    pub name: &'static str,
    /// The name of the value type (for messages).
    pub type_name: fn() -> &'static str,
    /// The value type (two keys sharing a name must hold the same type).
    pub type_id: fn() -> core::any::TypeId,
    /// Encodes a value of this key (which must be of the key's type), appending the bytes
    /// to the buffer.
    pub encode: fn(&AnyValue, &mut Vec<u8>) -> Result<(), String>,
    /// Feeds the bytes `encode` would append to a hasher, without a buffer (how
    /// [`Cache`](crate::middleware::Cache) finds a call's earlier result).
    pub hash: fn(&AnyValue, &mut dyn core::hash::Hasher) -> Result<(), String>,
    /// Decodes bytes made by `encode`.
    pub decode: fn(&[u8]) -> Result<Arc<AnyValue>, String>,
    /// For a key declared `#[merge]` in `keys!`: adds a written value to the value the
    /// context holds ([`Merge::merge`]); `None` for a value of another type. Stages of one
    /// `parallel` block may then all write the key.
    pub merge: Option<MergeFn>,
}

/// How a `#[merge]` key's written value is added to the held one (see [`KeyDesc::merge`]).
pub(crate) type MergeFn = fn(&AnyValue, &AnyValue) -> Option<Arc<AnyValue>>;

impl KeyDesc {
    /// The description of a key named `name` holding `V`s.
    pub const fn new<V>(name: &'static str) -> Self
    where
        V: Send + Sync + Serialize + DeserializeOwned + 'static,
    {
        KeyDesc {
            name,
            type_name: core::any::type_name::<V>,
            type_id: core::any::TypeId::of::<V>,
            encode: crate::store::format::encode_value::<V>,
            hash: crate::store::format::hash_value::<V>,
            decode: crate::store::format::decode_value::<V>,
            merge: None,
        }
    }

    /// The description of a key named `name` holding `V`s whose writes are merged into
    /// the value (`#[merge]` in `keys!`).
    pub const fn merged<V>(name: &'static str) -> Self
    where
        V: Merge + Clone + Send + Sync + Serialize + DeserializeOwned + 'static,
    {
        KeyDesc {
            merge: Some(merge_values::<V>),
            ..Self::new::<V>(name)
        }
    }

    /// Whether writes of this key are merged into its value (`#[merge]`).
    pub const fn is_merged(&self) -> bool {
        self.merge.is_some()
    }
}

/// The `#[merge]` keys among `writes` that are not among `reads`: a stage adds to those
/// (one that also reads the key sees it whole and writes it whole).
pub(crate) fn added_to<'a>(
    reads: &'a [KeyDesc],
    writes: &'a [KeyDesc],
) -> impl Iterator<Item = &'a KeyDesc> {
    writes
        .iter()
        .filter(|w| w.is_merged() && !reads.iter().any(|r| r.name == w.name))
}

/// How a stage reading `reads` and writing `writes` adds a write of key `name` to the value,
/// when it does (see [`added_to`]).
pub(crate) fn merge_in(reads: &[KeyDesc], writes: &[KeyDesc], name: &str) -> Option<MergeFn> {
    added_to(reads, writes)
        .find(|k| k.name == name)
        .and_then(|k| k.merge)
}

/// `more` added to a copy of `held`, both `V`s.
fn merge_values<V: Merge + Clone + Send + Sync + 'static>(
    held: &AnyValue,
    more: &AnyValue,
) -> Option<Arc<AnyValue>> {
    let mut value = held.downcast_ref::<V>()?.clone();
    value.merge(more.downcast_ref::<V>()?.clone());
    Some(Arc::new(value))
}

/// How a `#[merge]` key's value takes a write: the stage's value is added to the one the
/// context holds, instead of replacing it.
///
/// Declare the key with `#[merge]` in `keys!` and several stages may write it, in the same
/// `parallel` block too: each writes what it adds (a stage that also reads the key sees it
/// whole and writes it whole, replacing it). Merges happen in the order the stages finish,
/// which is not fixed for stages that run at the same time: use a merge whose result does
/// not depend on that order (a set, a sum), or one whose order you do not mind (findings
/// appended to a list).
///
/// Implemented for `Vec`, `VecDeque` and `String` (appended), and `BTreeSet`, `HashSet`,
/// `BTreeMap` and `HashMap` (extended: for a map key both writes hold, the later wins).
/// Implement it for your own type (a counter, a summary) to merge it your way.
///
/// ```
/// use fluxio_core::Merge;
///
/// /// Counts that several stages add to (as a key's value it also derives `Clone`,
/// /// `Serialize` and `Deserialize`).
/// struct Tally { checked: u64, flagged: u64 }
///
/// impl Merge for Tally {
///     fn merge(&mut self, more: Self) {
///         self.checked += more.checked;
///         self.flagged += more.flagged;
///     }
/// }
/// let mut t = Tally { checked: 2, flagged: 1 };
/// t.merge(Tally { checked: 3, flagged: 0 });
/// assert_eq!((t.checked, t.flagged), (5, 1));
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be merged: the type of a `#[merge]` key must implement `fluxio::Merge`",
    note = "`Merge` is implemented for `Vec`, `VecDeque`, `String`, sets and maps; implement it for your own type, or drop `#[merge]`"
)]
pub trait Merge {
    /// Adds `more` (what a stage wrote) to `self` (what the context holds).
    fn merge(&mut self, more: Self);
}

impl<T> Merge for Vec<T> {
    fn merge(&mut self, mut more: Self) {
        self.append(&mut more);
    }
}

impl<T> Merge for std::collections::VecDeque<T> {
    fn merge(&mut self, mut more: Self) {
        self.append(&mut more);
    }
}

impl Merge for String {
    fn merge(&mut self, more: Self) {
        self.push_str(&more);
    }
}

impl<T: Ord> Merge for std::collections::BTreeSet<T> {
    fn merge(&mut self, more: Self) {
        self.extend(more);
    }
}

impl<T: Eq + std::hash::Hash, S: std::hash::BuildHasher> Merge for std::collections::HashSet<T, S> {
    fn merge(&mut self, more: Self) {
        self.extend(more);
    }
}

impl<K: Ord, V> Merge for std::collections::BTreeMap<K, V> {
    fn merge(&mut self, more: Self) {
        self.extend(more);
    }
}

impl<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher> Merge
    for std::collections::HashMap<K, V, S>
{
    fn merge(&mut self, more: Self) {
        self.extend(more);
    }
}

impl core::fmt::Debug for KeyDesc {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyDesc")
            .field("name", &self.name)
            .field("type", &(self.type_name)())
            .finish()
    }
}

/// Anything that names a key where a value is expected: `ctx[user]`, `ctx.get(user)`.
///
/// It is implemented for the key functions `keys!` generates (`fn user() -> user`), so the
/// key's plain name works as a value. You never implement it yourself.
pub trait AsKey: Copy {
    /// The key named.
    type Key: Key;
}

impl<F, K> AsKey for F
where
    F: Fn() -> K + Copy,
    K: Key,
{
    type Key = K;
}
