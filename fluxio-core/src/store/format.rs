//! The checkpoint format: how values, the input context and stage entries become bytes.
//!
//! Every record starts with a format version byte, so the encoding can change without
//! misreading old checkpoints. Values are encoded with bincode 2 (serde), with a size limit
//! so that corrupt length prefixes cannot make a decoder allocate without bound. Decoding
//! never panics: any byte string gives a value or an error.

use std::any::Any;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::key::AnyValue;

/// The format version this build writes. It also reads records of the versions before it
/// (see [`Entry`] for what format 1 did not record).
pub const FORMAT_VERSION: u8 = 2;

/// The oldest format version this build reads.
const OLDEST_READ: u8 = 1;

/// The encoding of every value and record: bincode's standard (varint integers). Encoding
/// takes no limit (bincode's limit is a decoder's: see [`decode_limited`]).
fn config() -> impl bincode::config::Config {
    bincode::config::standard()
}

/// Decodes a `T` from the front of `bytes`, with a limit fitted to their length: bincode
/// allocates a string or byte buffer as long as its length prefix claims before reading it,
/// so a 7-byte record claiming a gigabyte would allocate one. Decoding claims at most 16
/// bytes per byte read (an integer claims its full width however short its varint; a
/// string's content claims what it reads), so a claim past 16 times the input is a lie,
/// refused before anything is allocated — and a value that encoded to `n` bytes always
/// decodes within that limit, however large. Nesting and element counts are bounded too
/// ([`Bounded`](super::depth::Bounded)), and deep values get the stack they need.
fn decode_limited<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<(T, usize), bincode::error::DecodeError> {
    use bincode::config::standard;
    use bincode::serde::seed_decode_from_slice as decode;
    let seed = super::depth::Bounded::<T>::new(bytes.len());
    macro_rules! tiers {
        ($($bits:literal)*) => {
            match limit_bits(bytes.len()) {
                $($bits => decode(seed, bytes, standard().with_limit::<{ limit_of($bits) }>()),)*
                _ => decode(seed, bytes, standard().with_limit::<{ usize::MAX }>()),
            }
        };
    }
    // The arms of `LIMIT_BITS` (const generics need them written out).
    tiers!(12 16 20 24 28 30 32 36 40 44 48)
}

/// The bincode limits a decoder may be given, as powers of two (the arms of
/// [`decode_limited`]).
const LIMIT_BITS: &[u32] = &[12, 16, 20, 24, 28, 30, 32, 36, 40, 44, 48];

/// `2^bits` bytes, or the whole address space where that is more.
const fn limit_of(bits: u32) -> usize {
    let limit = 1u64 << bits;
    if limit > usize::MAX as u64 {
        usize::MAX
    } else {
        limit as usize
    }
}

/// The limit for decoding `len` bytes, as a power of two: the least of [`LIMIT_BITS`] that
/// allows 16 bytes claimed per byte read; `u32::MAX` when none does — no limit.
fn limit_bits(len: usize) -> u32 {
    let most = (len as u64).saturating_mul(16);
    LIMIT_BITS
        .iter()
        .copied()
        .find(|&bits| most <= 1u64 << bits)
        .unwrap_or(u32::MAX)
}

/// Encodes a context value at the end of `out` (the `encode` of a
/// [`KeyDesc`](crate::KeyDesc)). The encoding of a value is self-delimiting: values encoded
/// one after the other can be told apart again.
///
/// # Errors
///
/// When the value is not a `V`, or serialization fails (`out` may then hold a part of it).
pub fn encode_value<V: Serialize + 'static>(
    value: &AnyValue,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    bincode::serde::encode_into_writer(typed::<V>(value)?, VecWriter(out), config())
        .map_err(|e| e.to_string())
}

/// A decoding error, explained when it is bincode's refusal of a type that needs
/// `deserialize_any` (its encoding is not self-describing).
fn decode_error<V>(e: bincode::error::DecodeError) -> String {
    use bincode::serde::DecodeError::{AnyNotSupported, IgnoredAnyNotSupported};
    match e {
        bincode::error::DecodeError::Serde(AnyNotSupported | IgnoredAnyNotSupported) => format!(
            "values of `{}` cannot be read back from a checkpoint: the checkpoint encoding \
             (bincode) cannot decode a type that needs `deserialize_any` — `serde_json::Value`, \
             `#[serde(untagged)]`, `#[serde(flatten)]`, internally tagged enums; give the key a \
             concrete type, or keep such a value as a `String` ({e})",
            std::any::type_name::<V>()
        ),
        bincode::error::DecodeError::LimitExceeded => format!(
            "a length in the bytes of a `{}` claims more than the bytes hold: they are damaged",
            std::any::type_name::<V>()
        ),
        // bincode's own text for these is its `Debug` form; say it in words.
        bincode::error::DecodeError::UnexpectedEnd { additional } => format!(
            "the bytes end {additional} byte(s) short of a `{}`",
            std::any::type_name::<V>()
        ),
        bincode::error::DecodeError::UnexpectedVariant {
            found, type_name, ..
        } => {
            format!("no variant {found} in enum `{type_name}`")
        }
        bincode::error::DecodeError::Utf8 { inner } => {
            format!("a string that is not UTF-8: {inner}")
        }
        bincode::error::DecodeError::InvalidBooleanValue(b) => {
            format!("byte {b} where a `bool` (0 or 1) was expected")
        }
        bincode::error::DecodeError::InvalidCharEncoding(bytes) => {
            format!("bytes {bytes:?} where a `char` was expected")
        }
        e => e.to_string(),
    }
}

/// Feeds a value to `state` (the `hash` of a [`KeyDesc`](crate::KeyDesc)): integers, `bool`,
/// `char` and `String` as themselves, anything else as the encoding [`encode_value`] would
/// append, write by write, without buffering it. Values whose encodings are equal make the
/// same writes, so they hash alike.
///
/// # Errors
///
/// When the value is not a `V`, or serialization fails.
pub fn hash_value<V: Serialize + 'static>(
    value: &AnyValue,
    state: &mut dyn core::hash::Hasher,
) -> Result<(), String> {
    let value = typed::<V>(value)?;
    if hash_plain(value, state) {
        return Ok(());
    }
    bincode::serde::encode_into_writer(value, HashWriter(state), config())
        .map_err(|e| e.to_string())
}

/// Feeds `value` to `state` directly when `V` is a plain type (an integer, `bool`, `char`,
/// `String`), where the encoding's serde machinery would cost several times the hash.
/// `false` for any other type. (`V` is known here, so all but one branch compile away.)
#[inline]
fn hash_plain<V: 'static>(value: &V, state: &mut dyn core::hash::Hasher) -> bool {
    let any = value as &dyn Any;
    macro_rules! plain {
        ($($t:ty => $write:ident),* $(,)?) => {$(
            if let Some(v) = any.downcast_ref::<$t>() {
                state.$write((*v).into());
                return true;
            }
        )*};
    }
    plain! {
        u8 => write_u8, u16 => write_u16, u32 => write_u32, u64 => write_u64,
        u128 => write_u128, usize => write_usize,
        i8 => write_i8, i16 => write_i16, i32 => write_i32, i64 => write_i64,
        i128 => write_i128, isize => write_isize,
        bool => write_u8, char => write_u32,
    }
    if let Some(s) = any.downcast_ref::<String>() {
        state.write_usize(s.len());
        state.write(s.as_bytes());
        return true;
    }
    false
}

/// `value` as the `V` a key holds, or why not.
fn typed<V: 'static>(value: &AnyValue) -> Result<&V, String> {
    (value as &dyn Any)
        .downcast_ref::<V>()
        .ok_or_else(|| format!("the value is not a `{}`", core::any::type_name::<V>()))
}

/// Hands each write of an encoder to a hasher.
struct HashWriter<'a>(&'a mut dyn core::hash::Hasher);

impl bincode::enc::write::Writer for HashWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.write(bytes);
        Ok(())
    }
}

/// Appends to a vector: bincode's own `std::io::Write` adapter costs a call per field.
struct VecWriter<'a>(&'a mut Vec<u8>);

impl bincode::enc::write::Writer for VecWriter<'_> {
    #[inline]
    fn write(&mut self, bytes: &[u8]) -> Result<(), bincode::error::EncodeError> {
        self.0.extend_from_slice(bytes);
        Ok(())
    }
}

/// Decodes a context value (the `decode` of a [`KeyDesc`](crate::KeyDesc)).
///
/// # Errors
///
/// When the bytes are not a `V` or have bytes left over.
pub fn decode_value<V: DeserializeOwned + Send + Sync + 'static>(
    bytes: &[u8],
) -> Result<Arc<AnyValue>, String> {
    let (value, read): (V, usize) = decode_limited(bytes).map_err(decode_error::<V>)?;
    if read != bytes.len() {
        return Err(format!(
            "{} trailing bytes after a `{}`",
            bytes.len() - read,
            core::any::type_name::<V>()
        ));
    }
    Ok(Arc::new(value))
}

/// The input context of a run: key names and encoded values, sorted by name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// `(key, encoded value)`, sorted by key.
    pub values: Vec<(String, Vec<u8>)>,
}

/// One finished stage: which node, what it wrote, which branch it chose, and when it
/// finished relative to the run's other stages.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// The node's index in the pipeline's graph.
    pub node: u32,
    /// The stage's name (checked on resume, for a clear error if the graph moved).
    pub stage: String,
    /// For a route stage, the label it chose.
    pub route: Option<String>,
    /// The stage was skipped — by a middleware, or a route stage's skip (which takes no
    /// branch) — so it has nothing to roll back.
    pub skipped: bool,
    /// `(key, encoded value)` for every key the stage wrote.
    pub writes: Vec<(String, Vec<u8>)>,
    /// The entry's place in the order the run applied its stages' writes (counted across
    /// resumes). A store may list entries saved at the same time in another order; this
    /// is the order a resume applies them in, so additions to a `#[merge]` key are merged
    /// as the live run merged them. `None` in an entry of format 1, which did not record
    /// it: such entries come first, in the store's order.
    pub seq: Option<u64>,
    /// The keys of `writes` that were additions to a `#[merge]` key (merged into the value
    /// the key held, not replacing it). `None` in an entry of format 1, which did not
    /// record it: a reader then infers it from the pipeline.
    pub added: Option<Vec<String>>,
}

/// An entry as format 1 wrote it.
#[derive(Deserialize)]
struct EntryV1 {
    node: u32,
    stage: String,
    route: Option<String>,
    skipped: bool,
    writes: Vec<(String, Vec<u8>)>,
}

impl From<EntryV1> for Entry {
    fn from(e: EntryV1) -> Self {
        Entry {
            node: e.node,
            stage: e.stage,
            route: e.route,
            skipped: e.skipped,
            writes: e.writes,
            seq: None,
            added: None,
        }
    }
}

fn encode_record<T: Serialize>(record: &T) -> Result<Vec<u8>, String> {
    let mut out = vec![FORMAT_VERSION];
    bincode::serde::encode_into_writer(record, VecWriter(&mut out), config())
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// The format version of a record (its first byte), checked to be one this build reads.
fn record_version(bytes: &[u8], what: &str) -> Result<u8, String> {
    let Some(&version) = bytes.first() else {
        return Err(format!("empty {what}"));
    };
    if !(OLDEST_READ..=FORMAT_VERSION).contains(&version) {
        // Garbage usually shows here first: say both readings.
        return Err(format!(
            "{what} starts with byte {version}, not a format version this build reads \
             ({OLDEST_READ} to {FORMAT_VERSION}): the bytes are damaged, or written by a \
             newer build"
        ));
    }
    Ok(version)
}

/// Decodes a record whose version [`record_version`] checked.
fn decode_record<T: DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T, String> {
    record_version(bytes, what)?;
    let body = &bytes[1..];
    let (record, read): (T, usize) = decode_limited(body).map_err(|e| match e {
        bincode::error::DecodeError::UnexpectedEnd { .. }
        | bincode::error::DecodeError::LimitExceeded => format!("{what} is cut short"),
        e => format!("{what}: {e}"),
    })?;
    if read != body.len() {
        return Err(format!("{what}: {} trailing bytes", body.len() - read));
    }
    Ok(record)
}

/// Encodes a run's input.
///
/// # Errors
///
/// When serialization fails.
pub fn encode_header(header: &Header) -> Result<Vec<u8>, String> {
    encode_record(header)
}

/// Decodes a run's input (a header has the same form in every format version).
///
/// # Errors
///
/// When the bytes are not a header of a format version this build reads.
pub fn decode_header(bytes: &[u8]) -> Result<Header, String> {
    decode_record(bytes, "checkpoint header")
}

/// Encodes a stage entry.
///
/// # Errors
///
/// When serialization fails.
pub fn encode_entry(entry: &Entry) -> Result<Vec<u8>, String> {
    encode_record(entry)
}

/// Decodes a stage entry, of this format version or an older one.
///
/// # Errors
///
/// When the bytes are not an entry of a format version this build reads.
pub fn decode_entry(bytes: &[u8]) -> Result<Entry, String> {
    const WHAT: &str = "checkpoint entry";
    match record_version(bytes, WHAT)? {
        1 => decode_record::<EntryV1>(bytes, WHAT).map(Entry::from),
        _ => decode_record(bytes, WHAT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let v: Arc<AnyValue> = Arc::new(vec!["a".to_string(), "b".to_string()]);
        let mut bytes = Vec::new();
        encode_value::<Vec<String>>(&*v, &mut bytes).unwrap();
        let back = decode_value::<Vec<String>>(&bytes).unwrap();
        assert_eq!(
            back.downcast_ref::<Vec<String>>().unwrap(),
            &vec!["a".to_string(), "b".to_string()]
        );
        assert!(
            encode_value::<u8>(&*v, &mut Vec::new()).is_err(),
            "wrong type is an error"
        );
        assert!(decode_value::<u64>(&[0xff, 0xff]).is_err());
    }

    /// Bytes that do not decode are described in words, not with bincode's `Debug` form.
    #[test]
    fn decode_errors_say_what_is_wrong() {
        let mut bytes = Vec::new();
        encode_value::<String>(&"hello".to_string(), &mut bytes).unwrap();
        let short = decode_value::<String>(&bytes[..3]).err().unwrap();
        assert!(
            short.contains("byte(s) short of a `alloc::string::String`"),
            "{short}"
        );
        let bad_bool = decode_value::<bool>(&[7]).err().unwrap();
        assert_eq!(bad_bool, "byte 7 where a `bool` (0 or 1) was expected");
        let not_utf8 = decode_value::<String>(&[2, 0xff, 0xfe]).err().unwrap();
        assert!(
            not_utf8.starts_with("a string that is not UTF-8"),
            "{not_utf8}"
        );
    }

    /// Collects what a hasher is fed.
    #[derive(Default)]
    struct Fed(Vec<u8>);

    impl core::hash::Hasher for Fed {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.extend_from_slice(bytes);
        }
    }

    #[test]
    fn hashing_feeds_exactly_the_encoding() {
        let v: Arc<AnyValue> = Arc::new(("key".to_string(), 300u64, vec![1u8, 2]));
        let mut bytes = Vec::new();
        encode_value::<(String, u64, Vec<u8>)>(&*v, &mut bytes).unwrap();
        let mut fed = Fed::default();
        hash_value::<(String, u64, Vec<u8>)>(&*v, &mut fed).unwrap();
        assert_eq!(fed.0, bytes);
        assert!(
            hash_value::<u64>(&*v, &mut Fed::default()).is_err(),
            "wrong type is an error"
        );
    }

    /// What a hasher was fed, as one number.
    fn fed_hash<V: Serialize + Send + Sync + 'static>(v: V) -> u64 {
        use core::hash::{BuildHasher, Hasher};
        let mut h =
            std::hash::BuildHasherDefault::<std::hash::DefaultHasher>::default().build_hasher();
        hash_value::<V>(&v, &mut h).unwrap();
        h.finish()
    }

    #[test]
    fn plain_values_hash_as_themselves() {
        assert_eq!(fed_hash(300u64), fed_hash(300u64));
        assert_ne!(fed_hash(300u64), fed_hash(301u64));
        assert_eq!(fed_hash(String::from("ab")), fed_hash(String::from("ab")));
        assert_ne!(fed_hash(String::from("ab")), fed_hash(String::from("ba")));
        assert_ne!(fed_hash(true), fed_hash(false));
        assert_ne!(fed_hash(-1i64), fed_hash(1i64));
        // Not fed the encoding: a plain value makes no serde writes.
        let mut fed = Fed::default();
        hash_value::<u64>(&7u64, &mut fed).unwrap();
        assert_eq!(fed.0, 7u64.to_ne_bytes());
        assert!(
            hash_value::<String>(&7u64, &mut Fed::default()).is_err(),
            "wrong type is an error"
        );
    }

    #[test]
    fn records_round_trip_and_check_their_version() {
        let e = Entry {
            node: 3,
            stage: "s".into(),
            route: Some("x".into()),
            skipped: false,
            writes: vec![("k".into(), vec![1, 2])],
            seq: Some(4),
            added: Some(vec!["k".into()]),
        };
        let bytes = encode_entry(&e).unwrap();
        assert_eq!(decode_entry(&bytes).unwrap(), e);
        let mut wrong = bytes.clone();
        wrong[0] = 9;
        let err = decode_entry(&wrong).unwrap_err();
        assert!(err.contains("starts with byte 9"), "{err}");
        assert!(decode_entry(&[]).is_err());
        let err = decode_entry(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(err.ends_with("is cut short"), "{err}");
    }

    /// An entry written by format 1 (before `seq` and `added`) still reads, with both
    /// unknown.
    #[test]
    fn format_1_entries_still_read() {
        #[derive(Serialize)]
        struct V1<'a> {
            node: u32,
            stage: &'a str,
            route: Option<&'a str>,
            skipped: bool,
            writes: Vec<(&'a str, Vec<u8>)>,
        }
        let mut bytes = vec![1];
        bincode::serde::encode_into_std_write(
            V1 {
                node: 2,
                stage: "s",
                route: None,
                skipped: true,
                writes: vec![("k", vec![7])],
            },
            &mut bytes,
            config(),
        )
        .unwrap();
        let e = decode_entry(&bytes).unwrap();
        assert_eq!((e.node, e.stage.as_str(), e.skipped), (2, "s", true));
        assert_eq!(e.writes, vec![("k".to_string(), vec![7])]);
        assert_eq!((e.seq, e.added), (None, None));
        // A format 1 header is a header of today.
        let mut header = vec![1];
        bincode::serde::encode_into_std_write(
            Header {
                values: vec![("k".into(), vec![7])],
            },
            &mut header,
            config(),
        )
        .unwrap();
        assert_eq!(decode_header(&header).unwrap().values.len(), 1);
    }

    #[test]
    fn every_length_decodes_within_its_limit() {
        // A value that encoded to `n` bytes claims at most 16 per byte when decoded (a
        // vector of `u128` of one-byte varints): its limit must allow that, however large —
        // past 1 GiB of claims too (a 64 MiB value was stored and could not be read back).
        for len in [
            0,
            1,
            255,
            256,
            257,
            1 << 20,
            (1 << 26) + 16,
            1 << 30,
            1 << 40,
        ] {
            let bits = limit_bits(len);
            assert!(
                bits == u32::MAX || (len * 16) <= 1 << bits,
                "{len} bytes, limit 2^{bits}"
            );
        }
        assert_eq!(limit_bits(256), 12);
        assert_eq!(limit_bits(257), 16);
        assert_eq!(limit_bits((1 << 26) + 16), 32);
    }

    #[test]
    fn huge_length_prefixes_do_not_allocate() {
        // A header claiming a vector of 2^62 elements.
        let mut bytes = vec![FORMAT_VERSION, 0xff];
        bytes.extend((1u64 << 62).to_le_bytes());
        assert!(decode_header(&bytes).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode_header(&bytes);
            let _ = decode_entry(&bytes);
            let _ = decode_value::<Vec<String>>(&bytes);
            let _ = decode_value::<(u64, Option<String>)>(&bytes);
        }
    }
}
