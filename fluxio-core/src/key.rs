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
}

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
        }
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
