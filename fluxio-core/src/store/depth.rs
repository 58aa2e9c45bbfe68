//! Bounds on what decoding a value may do: how deeply it nests (with room on the stack for
//! it) and how many elements it takes.
//!
//! bincode decodes a nested value by recursion, one set of stack frames per level, with no
//! limit of its own: a recursive type (a tree) decoded from a few kilobytes of damaged
//! bytes — or a legitimately deep value — would overflow the thread's stack, which aborts
//! the whole process. [`Depth`] wraps a deserializer: before each nested value it makes
//! sure the stack has room (moving to a fresh segment on the heap when it has not, with
//! `stacker`: how much a level needs depends on the type, a level count alone cannot tell),
//! and it counts the levels entered (a struct, a sequence, a map, an enum's variant, an
//! `Option`'s content, a newtype: one level each), refusing to go past [`MAX_DEPTH`] with an
//! error — which bounds what damaged bytes can make it allocate. It also counts the
//! elements taken (of sequences and maps) against the bytes: see [`FREE_ELEMENTS`].
//!
//! Every type is wrapped on the way down: the deserializer a nested value is decoded with,
//! the visitor that receives its parts, and the accessors handing those parts out.

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess, Visitor,
};

/// How many levels a decoded value may nest (a struct holding a `Vec` of itself uses two
/// per level of the tree). Above what encoding can produce on a default 2 MiB thread:
/// serializing (and dropping) a value recurses too, and a tree of 5,000 levels already
/// overflows such a thread in a debug build — so whatever was written reads back.
pub(crate) const MAX_DEPTH: usize = 32_768;

/// Room the stack must have before a nested value is decoded (a level of a large type,
/// in a debug build, takes tens of kilobytes)...
const RED_ZONE: usize = 256 * 1024;
/// ...or decoding goes on in a fresh segment this large.
const SEGMENT: usize = 4 * 1024 * 1024;

/// The error of a value nested too deeply.
fn too_deep<E: de::Error>() -> E {
    E::custom(format_args!(
        "the value nests deeper than {MAX_DEPTH} levels (a struct, sequence, map, enum \
         variant or option each being one), more than a checkpoint reads back"
    ))
}

/// How many elements (of sequences, and entries of maps) a decode may take beyond one per
/// byte: an element of a zero-sized type (`()`) takes no byte, so a damaged length prefix
/// of a `Vec<()>` claiming 2^60 of them would keep the decoder busy for ever.
const FREE_ELEMENTS: usize = 1 << 20;

thread_local! {
    /// The elements the decode running on this thread may still take.
    static ELEMENTS_LEFT: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

/// Takes one element from the running decode's budget, or says it is spent.
fn take_element<E: de::Error>() -> Result<(), E> {
    ELEMENTS_LEFT.with(|left| match left.get().checked_sub(1) {
        Some(n) => {
            left.set(n);
            Ok(())
        }
        None => Err(E::custom(format_args!(
            "the value holds more elements than its bytes can (a length is damaged)"
        ))),
    })
}

/// Decodes a `T` of `len` bytes within the bounds above (`MAX_DEPTH` levels, `len` plus
/// `FREE_ELEMENTS` elements), for `seed_decode_from_slice`.
pub(crate) struct Bounded<T> {
    len: usize,
    value: std::marker::PhantomData<T>,
}

impl<T> Bounded<T> {
    pub(crate) fn new(len: usize) -> Self {
        Bounded {
            len,
            value: std::marker::PhantomData,
        }
    }
}

impl<'de, T: de::Deserialize<'de>> DeserializeSeed<'de> for Bounded<T> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<T, D::Error> {
        let budget = self.len.saturating_add(FREE_ELEMENTS);
        let outer = ELEMENTS_LEFT.with(|left| left.replace(budget));
        let decoded = T::deserialize(Depth {
            de,
            left: MAX_DEPTH,
        });
        ELEMENTS_LEFT.with(|left| left.set(outer));
        decoded
    }
}

/// A deserializer whose values may nest `left` more levels.
struct Depth<D> {
    de: D,
    left: usize,
}

/// A visitor of a value whose parts may nest `left` more levels.
struct Visit<V> {
    visitor: V,
    left: usize,
}

/// A seed whose value may nest `left` more levels.
struct Seed<S> {
    seed: S,
    left: usize,
}

/// The parts of a sequence, map or enum, each of which may nest `left` more levels.
struct Parts<A> {
    access: A,
    left: usize,
}

impl<V> Visit<V> {
    /// The levels left inside a compound value just entered, or the error when none is.
    fn enter<E: de::Error>(&self) -> Result<usize, E> {
        self.left.checked_sub(1).ok_or_else(too_deep)
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, D::Error> {
            let left = self.left;
            stacker::maybe_grow(RED_ZONE, SEGMENT, move || {
                self.de.$method($($arg,)* Visit { visitor, left })
            })
        }
    )*};
}

impl<'de, D: Deserializer<'de>> Deserializer<'de> for Depth<D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any();
        deserialize_bool();
        deserialize_i8();
        deserialize_i16();
        deserialize_i32();
        deserialize_i64();
        deserialize_i128();
        deserialize_u8();
        deserialize_u16();
        deserialize_u32();
        deserialize_u64();
        deserialize_u128();
        deserialize_f32();
        deserialize_f64();
        deserialize_char();
        deserialize_str();
        deserialize_string();
        deserialize_bytes();
        deserialize_byte_buf();
        deserialize_option();
        deserialize_unit();
        deserialize_unit_struct(name: &'static str);
        deserialize_newtype_struct(name: &'static str);
        deserialize_seq();
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_map();
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
        deserialize_identifier();
        deserialize_ignored_any();
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty);)*) => {$(
        fn $method<E: de::Error>(self, v: $ty) -> Result<Self::Value, E> {
            self.visitor.$method(v)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Visit<V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.visitor.expecting(f)
    }

    forward_visit! {
        visit_bool(bool);
        visit_i8(i8);
        visit_i16(i16);
        visit_i32(i32);
        visit_i64(i64);
        visit_i128(i128);
        visit_u8(u8);
        visit_u16(u16);
        visit_u32(u32);
        visit_u64(u64);
        visit_u128(u128);
        visit_f32(f32);
        visit_f64(f64);
        visit_char(char);
        visit_str(&str);
        visit_borrowed_str(&'de str);
        visit_string(String);
        visit_bytes(&[u8]);
        visit_borrowed_bytes(&'de [u8]);
        visit_byte_buf(Vec<u8>);
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        self.visitor.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let left = self.enter()?;
        self.visitor.visit_some(Depth { de, left })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<Self::Value, D::Error> {
        let left = self.enter()?;
        self.visitor.visit_newtype_struct(Depth { de, left })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, access: A) -> Result<Self::Value, A::Error> {
        let left = self.enter()?;
        self.visitor.visit_seq(Parts { access, left })
    }

    fn visit_map<A: MapAccess<'de>>(self, access: A) -> Result<Self::Value, A::Error> {
        let left = self.enter()?;
        self.visitor.visit_map(Parts { access, left })
    }

    fn visit_enum<A: EnumAccess<'de>>(self, access: A) -> Result<Self::Value, A::Error> {
        let left = self.enter()?;
        self.visitor.visit_enum(Parts { access, left })
    }
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for Seed<S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        self.seed.deserialize(Depth {
            de,
            left: self.left,
        })
    }
}

impl<A> Parts<A> {
    fn seed<S>(&self, seed: S) -> Seed<S> {
        Seed {
            seed,
            left: self.left,
        }
    }
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for Parts<A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, A::Error> {
        take_element()?;
        let seed = self.seed(seed);
        self.access.next_element_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.access.size_hint()
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for Parts<A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        take_element()?;
        let seed = self.seed(seed);
        self.access.next_key_seed(seed)
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.access.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.access.size_hint()
    }
}

impl<'de, A: EnumAccess<'de>> EnumAccess<'de> for Parts<A> {
    type Error = A::Error;
    type Variant = Parts<A::Variant>;

    fn variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<(T::Value, Self::Variant), A::Error> {
        let left = self.left;
        let (tag, access) = self.access.variant_seed(Seed { seed, left })?;
        Ok((tag, Parts { access, left }))
    }
}

impl<'de, A: VariantAccess<'de>> VariantAccess<'de> for Parts<A> {
    type Error = A::Error;

    fn unit_variant(self) -> Result<(), A::Error> {
        self.access.unit_variant()
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value, A::Error> {
        let seed = self.seed(seed);
        self.access.newtype_variant_seed(seed)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value, A::Error> {
        let left = self.left;
        self.access.tuple_variant(len, Visit { visitor, left })
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, A::Error> {
        let left = self.left;
        self.access.struct_variant(fields, Visit { visitor, left })
    }
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::MAX_DEPTH;
    use crate::store::format::{decode_value, encode_value};

    /// A recursive type: one level of the tree is two of nesting (the struct, its `Vec`).
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Node {
        children: Vec<Node>,
    }

    /// `levels` nodes, each the only child of the one before, encoded by hand (a `Vec`'s
    /// length, 1, then the child; the innermost has none).
    fn chain_bytes(levels: usize) -> Vec<u8> {
        let mut bytes = vec![1u8; levels - 1];
        bytes.push(0);
        bytes
    }

    /// Decodes on a thread with a 2 MiB stack (tokio's workers, Rust's spawned threads).
    fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(f)
            .unwrap()
            .join()
            .unwrap()
    }

    #[test]
    fn values_round_trip() {
        let value = Node {
            children: vec![Node { children: vec![] }],
        };
        let mut bytes = Vec::new();
        encode_value::<Node>(&value, &mut bytes).unwrap();
        assert_eq!(bytes, chain_bytes(2));
        let back = decode_value::<Node>(&bytes).unwrap();
        assert_eq!(back.downcast_ref::<Node>(), Some(&value));
    }

    #[test]
    fn values_nested_up_to_the_bound_decode_on_a_small_stack() {
        // Without room made on the stack, a few thousand levels overflowed a 2 MiB thread
        // (and the process aborted).
        let ok = on_small_stack(|| {
            let decoded = decode_value::<Node>(&chain_bytes(MAX_DEPTH / 2));
            let ok = decoded.is_ok();
            // Dropping so deep a tree recurses too, past this thread's stack: leak it.
            std::mem::forget(decoded);
            ok
        });
        assert!(ok);
        // A type whose levels are large on the stack: room is per level, not a count.
        #[derive(Debug, Serialize, Deserialize)]
        #[allow(dead_code)]
        struct Big {
            a: [u64; 32],
            b: [u64; 32],
            c: [u64; 32],
            d: [u64; 32],
            kids: Vec<Big>,
        }
        let levels = 2_000;
        let mut bytes = Vec::new();
        for i in 0..levels {
            bytes.extend([0u8; 128]);
            bytes.push(u8::from(i + 1 < levels));
        }
        let ok = on_small_stack(move || {
            let decoded = decode_value::<Big>(&bytes);
            let ok = decoded.is_ok();
            std::mem::forget(decoded);
            ok
        });
        assert!(ok);
    }

    #[test]
    fn a_length_claiming_endless_zero_sized_elements_is_an_error() {
        // A `Vec<()>` claiming 2^60 elements: each takes no byte, so nothing ran out.
        let mut bytes = vec![253u8];
        bytes.extend((1u64 << 60).to_le_bytes());
        let err = decode_value::<Vec<()>>(&bytes).unwrap_err();
        assert!(err.contains("more elements than its bytes can"), "{err}");
        // A real one of many is read back.
        let mut bytes = Vec::new();
        encode_value::<Vec<()>>(&vec![(); 100_000], &mut bytes).unwrap();
        let back = decode_value::<Vec<()>>(&bytes).unwrap();
        assert_eq!(back.downcast_ref::<Vec<()>>().map(Vec::len), Some(100_000));
    }

    #[test]
    fn deeper_values_are_an_error_not_a_stack_overflow() {
        for levels in [MAX_DEPTH / 2 + 1, 1_000_000] {
            let err =
                on_small_stack(move || decode_value::<Node>(&chain_bytes(levels))).unwrap_err();
            assert!(
                err.contains(&format!("nests deeper than {MAX_DEPTH} levels")),
                "{err}"
            );
        }
        // The same through the other nestings: options, enums, newtypes, maps.
        #[derive(Debug, Serialize, Deserialize)]
        #[allow(dead_code)]
        enum Expr {
            Leaf,
            Not(Box<Expr>),
            Maybe(Option<Box<Expr>>),
            Pair { left: Box<Expr>, right: Box<Expr> },
        }
        #[derive(Debug, Serialize, Deserialize)]
        #[allow(dead_code)]
        struct Nest(std::collections::BTreeMap<u8, Nest>);
        let errors = on_small_stack(|| {
            [
                // Not(Not(…)): variant 1, repeated.
                decode_value::<Expr>(&vec![1u8; 1_000_000]).map(drop),
                // Maybe(Some(Maybe(Some(…)))): variant 2, then `Some`.
                decode_value::<Expr>(&[2u8, 1].repeat(500_000)).map(drop),
                // A map of one entry (length 1, key 0) holding the next.
                decode_value::<Nest>(&[1u8, 0].repeat(500_000)).map(drop),
            ]
        });
        for err in errors {
            let err = err.unwrap_err();
            assert!(err.contains("nests deeper"), "{err}");
        }
    }
}
