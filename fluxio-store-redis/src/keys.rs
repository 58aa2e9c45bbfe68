//! The Redis keys of a run.
//!
//! All keys of one run share the hash tag `{<run id>}`, so a Lua script or a `MULTI`/`EXEC`
//! touching several of them stays within one slot on a Redis Cluster:
//!
//! ```text
//! <prefix>:{<run id>}:meta     hash: version, status, error, header, updated_at_ms
//! <prefix>:{<run id>}:entries  list: entry blobs, in save order
//! <prefix>:{<run id>}:tokens   set: the tokens of the entry saves appended (resends skip)
//! <prefix>:{<run id>}:lock     string: the lock owner, with a PX expiry (the lease)
//! ```
//!
//! The run id (and the prefix) are written with `%`, `{` and `}` percent-escaped (`%25`,
//! `%7B`, `%7D`), and an empty run id as a lone `%`. A brace inside the run id would otherwise
//! end the hash tag early (or an empty id would make an empty tag, which Redis ignores), and
//! the keys of one run could land in different slots. Escaping `%` as well keeps the mapping
//! one-to-one: two different run ids never share keys.

use std::borrow::Cow;

/// The key prefix used unless [`RedisStore::key_prefix`](crate::RedisStore::key_prefix)
/// sets another.
pub const DEFAULT_KEY_PREFIX: &str = "fluxio:checkpoint";

/// The Redis keys holding one run, as [`RedisStore::run_keys`](crate::RedisStore::run_keys)
/// returns them.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct RunKeys {
    /// `<prefix>:{<run id>}:meta`: a hash with the fields `version`, `status`, `error`
    /// (only for a run that failed), `header` and `updated_at_ms` (when the start or finish
    /// record was written: the server's clock, in milliseconds since the UNIX epoch).
    pub meta: String,
    /// `<prefix>:{<run id>}:entries`: a list of the encoded stage entries.
    pub entries: String,
    /// `<prefix>:{<run id>}:tokens`: a set of the tokens of the entry saves appended, so
    /// that a save resent after a lost reply does not append its entry twice.
    pub tokens: String,
    /// `<prefix>:{<run id>}:lock`: the lock owner, expiring when the lease runs out.
    pub lock: String,
}

impl RunKeys {
    /// The keys of `run_id` under `escaped_prefix` (a prefix already [`escape`]d).
    pub(crate) fn new(escaped_prefix: &str, run_id: &str) -> Self {
        let tag = escape_run_id(run_id);
        let base = format!("{escaped_prefix}:{{{tag}}}:");
        RunKeys {
            meta: format!("{base}meta"),
            entries: format!("{base}entries"),
            tokens: format!("{base}tokens"),
            lock: format!("{base}lock"),
        }
    }
}

/// `s` with `%`, `{` and `}` percent-escaped; borrowed when there is nothing to escape.
pub(crate) fn escape(s: &str) -> Cow<'_, str> {
    if !s.contains(['%', '{', '}']) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// The hash-tag text for `run_id`: [`escape`]d, and `%` for the empty id (which no escaped
/// non-empty id can be, since every escaped `%` is followed by two hex digits).
fn escape_run_id(run_id: &str) -> Cow<'_, str> {
    if run_id.is_empty() {
        Cow::Borrowed("%")
    } else {
        escape(run_id)
    }
}

/// The run id of the meta key `key` (`<escaped prefix>:{<tag>}:meta`), or `None` when it
/// is not one: [`escape_run_id`] undone.
pub(crate) fn run_id_of_meta(escaped_prefix: &str, key: &str) -> Option<String> {
    let tag = key
        .strip_prefix(escaped_prefix)?
        .strip_prefix(":{")?
        .strip_suffix("}:meta")?;
    if tag == "%" {
        return Some(String::new());
    }
    let mut out = String::with_capacity(tag.len());
    let mut rest = tag;
    while let Some(at) = rest.find(['%', '{', '}']) {
        out.push_str(&rest[..at]);
        let c = match rest.get(at..at + 3)? {
            "%25" => '%',
            "%7B" => '{',
            "%7D" => '}',
            _ => return None,
        };
        out.push(c);
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The `SCAN MATCH` pattern of every meta key under `escaped_prefix`: the prefix with the
/// glob's special characters backslash-escaped.
pub(crate) fn meta_pattern(escaped_prefix: &str) -> String {
    let mut out = String::with_capacity(escaped_prefix.len() + 12);
    for c in escaped_prefix.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push_str(":{*}:meta");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_shares_the_hash_tag() {
        let k = RunKeys::new("p", "run-1");
        assert_eq!(k.meta, "p:{run-1}:meta");
        assert_eq!(k.entries, "p:{run-1}:entries");
        assert_eq!(k.lock, "p:{run-1}:lock");
    }

    #[test]
    fn braces_and_percent_are_escaped() {
        let k = RunKeys::new(&escape("a{b}"), "x{y}%z");
        assert_eq!(k.meta, "a%7Bb%7D:{x%7By%7D%25z}:meta");
    }

    #[test]
    fn escaping_is_one_to_one() {
        let ids = ["", "%", "{", "%7B", "%257B", "a}b", "a%7Db", "plain"];
        let mut seen = std::collections::HashSet::new();
        for id in ids {
            assert!(
                seen.insert(RunKeys::new("p", id).meta),
                "collision for {id:?}"
            );
        }
    }

    #[test]
    fn empty_run_id_has_a_non_empty_tag() {
        assert_eq!(RunKeys::new("p", "").meta, "p:{%}:meta");
    }

    #[test]
    fn meta_keys_give_back_their_run_ids() {
        for id in ["", "a", "%", "{x}", "a%7Bb", "}{%", "pay:42", "é{ü}"] {
            let prefix = escape("p{r}e*");
            let keys = RunKeys::new(&prefix, id);
            assert_eq!(
                run_id_of_meta(&prefix, &keys.meta).as_deref(),
                Some(id),
                "{id:?}"
            );
            assert_eq!(run_id_of_meta(&prefix, &keys.lock), None);
        }
        assert_eq!(run_id_of_meta("p", "p:{a%7}:meta"), None);
        assert_eq!(run_id_of_meta("p", "q:{a}:meta"), None);
        assert_eq!(meta_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\:{*}:meta");
    }
}
