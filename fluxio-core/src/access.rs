//! The read/write conflict rule, written once and used both by code that `pipeline!`
//! generates (in const evaluation) and by the runtime plan.
//!
//! The rule is the one bevy's ECS uses for system access: two stages conflict when one
//! writes a key the other reads or writes. Reads alone never conflict.

use crate::key::KeyDesc;

/// The keys a stage reads and writes.
#[derive(Debug, Clone, Copy)]
pub struct Access {
    /// Keys the stage reads.
    pub reads: &'static [KeyDesc],
    /// Keys the stage writes.
    pub writes: &'static [KeyDesc],
    /// Whether a success writes every key of `writes` (true for a stage returning its
    /// values); a ctx-style stage writes only the keys it changes.
    pub writes_all: bool,
}

/// How two accesses conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// Both write the key.
    WriteWrite,
    /// The first reads what the second writes.
    ReadWrite,
    /// The first writes what the second reads.
    WriteRead,
}

impl Access {
    /// An access that touches nothing.
    pub const NONE: Access = Access {
        reads: &[],
        writes: &[],
        writes_all: true,
    };

    /// Builds an access from its reads and writes, for a stage whose success writes every
    /// key of `writes`.
    pub const fn new(reads: &'static [KeyDesc], writes: &'static [KeyDesc]) -> Self {
        Access {
            reads,
            writes,
            writes_all: true,
        }
    }

    /// Builds the access of a ctx-style stage, which writes only the keys of `writes` it
    /// changes.
    pub const fn ctx_style(reads: &'static [KeyDesc], writes: &'static [KeyDesc]) -> Self {
        Access {
            reads,
            writes,
            writes_all: false,
        }
    }
}

/// Whether two strings are equal, usable in const evaluation.
pub const fn str_eq(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The first key named in both `xs` and `ys` — leaving out, when `skip_merged`, a
/// `#[merge]` key on both sides (two writes of one each add to the value).
const fn find_common(xs: &[KeyDesc], ys: &[KeyDesc], skip_merged: bool) -> Option<&'static str> {
    let mut i = 0;
    while i < xs.len() {
        let mut j = 0;
        while j < ys.len() {
            if str_eq(xs[i].name, ys[j].name)
                && !(skip_merged && xs[i].is_merged() && ys[j].is_merged())
            {
                return Some(xs[i].name);
            }
            j += 1;
        }
        i += 1;
    }
    None
}

/// The first conflict between `a` and `b`, as the kind and the key's name.
///
/// Write/write is reported before read/write, so a message names the strongest overlap.
pub const fn first_conflict(a: &Access, b: &Access) -> Option<(ConflictKind, &'static str)> {
    first_conflict_in(a.reads, a.writes, b.reads, b.writes)
}

/// [`first_conflict`] over borrowed key lists (for accesses computed at run time).
///
/// Two writes of a `#[merge]` key do not conflict: each adds to the value.
pub const fn first_conflict_in(
    a_reads: &[KeyDesc],
    a_writes: &[KeyDesc],
    b_reads: &[KeyDesc],
    b_writes: &[KeyDesc],
) -> Option<(ConflictKind, &'static str)> {
    // Two writes of a `#[merge]` key are no conflict; a stage that also reads it makes a
    // read/write one below.
    if let Some(k) = find_common(a_writes, b_writes, true) {
        return Some((ConflictKind::WriteWrite, k));
    }
    if let Some(k) = find_common(a_reads, b_writes, false) {
        return Some((ConflictKind::ReadWrite, k));
    }
    if let Some(k) = find_common(a_writes, b_reads, false) {
        return Some((ConflictKind::WriteRead, k));
    }
    None
}

/// Whether `a` and `b` must not run at the same time.
pub const fn conflicts(a: &Access, b: &Access) -> bool {
    first_conflict(a, b).is_some()
}

/// A fixed-capacity string built in const evaluation, for compile-time error messages.
#[derive(Debug)]
pub struct ConstMsg {
    buf: [u8; ConstMsg::CAP],
    len: usize,
}

impl ConstMsg {
    const CAP: usize = 512;

    /// An empty message.
    pub const fn new() -> Self {
        ConstMsg {
            buf: [0; Self::CAP],
            len: 0,
        }
    }

    /// Appends `s`, truncating (on a char boundary) at the capacity.
    pub const fn push(mut self, s: &str) -> Self {
        let bytes = s.as_bytes();
        let mut i = 0;
        while i < bytes.len() && self.len < Self::CAP {
            // Never split a UTF-8 sequence: stop before a lead byte that would not fit.
            let b = bytes[i];
            let width = if b < 0x80 {
                1
            } else if b >= 0xF0 {
                4
            } else if b >= 0xE0 {
                3
            } else if b >= 0xC0 {
                2
            } else {
                1
            };
            if b >= 0xC0 && self.len + width > Self::CAP {
                break;
            }
            self.buf[self.len] = b;
            self.len += 1;
            i += 1;
        }
        self
    }

    /// The message as text.
    pub const fn as_str(&self) -> &str {
        let (head, _) = self.buf.split_at(self.len);
        match core::str::from_utf8(head) {
            Ok(s) => s,
            Err(_) => "<invalid message>",
        }
    }
}

impl Default for ConstMsg {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds the message for two stages of one `parallel` block that conflict.
pub const fn parallel_conflict_message(
    first: &str,
    second: &str,
    kind: ConflictKind,
    key: &str,
) -> ConstMsg {
    let m = ConstMsg::new()
        .push("stages `")
        .push(first)
        .push("` and `")
        .push(second);
    let m = match kind {
        ConflictKind::WriteWrite => {
            return m
                .push("` run in parallel but both write `")
                .push(key)
                .push("`; move one of them out of the `parallel` block, or, if each adds to `")
                .push(key)
                .push("`, declare it `#[merge]` in `keys!`");
        }
        ConflictKind::ReadWrite => m
            .push("` run in parallel but `")
            .push(first)
            .push("` reads `")
            .push(key)
            .push("` while `")
            .push(second)
            .push("` writes it"),
        ConflictKind::WriteRead => m
            .push("` run in parallel but `")
            .push(second)
            .push("` reads `")
            .push(key)
            .push("` while `")
            .push(first)
            .push("` writes it"),
    };
    m.push("; move one of them out of the `parallel` block")
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn k(name: &'static str) -> KeyDesc {
        KeyDesc::new::<u8>(name)
    }
    const A: KeyDesc = k("a");
    const B: KeyDesc = k("b");
    const C: KeyDesc = k("c");

    #[test]
    fn reads_alone_never_conflict() {
        let x = Access::new(&[A, B], &[]);
        let y = Access::new(&[A, B], &[C]);
        assert!(!conflicts(&x, &y) || first_conflict(&x, &y).is_none());
        assert_eq!(first_conflict(&x, &x), None);
    }

    #[test]
    fn each_kind_is_found() {
        let w_a = Access::new(&[], &[A]);
        let r_a = Access::new(&[A], &[B]);
        assert_eq!(
            first_conflict(&w_a, &w_a),
            Some((ConflictKind::WriteWrite, "a"))
        );
        assert_eq!(
            first_conflict(&r_a, &w_a),
            Some((ConflictKind::ReadWrite, "a"))
        );
        assert_eq!(
            first_conflict(&w_a, &r_a),
            Some((ConflictKind::WriteRead, "a"))
        );
        assert!(!conflicts(
            &Access::new(&[C], &[B]),
            &Access::new(&[C], &[A])
        ));
    }

    #[test]
    fn writes_of_a_merged_key_do_not_conflict_but_a_read_of_it_does() {
        const M: KeyDesc = KeyDesc::merged::<Vec<u8>>("m");
        let w_m = Access::new(&[A], &[M]);
        assert_eq!(first_conflict(&w_m, &w_m), None);
        let r_m = Access::new(&[M], &[B]);
        assert_eq!(
            first_conflict(&r_m, &w_m),
            Some((ConflictKind::ReadWrite, "m"))
        );
        // Declared plain by one of them (two keys of one name): a conflict as before.
        const P: KeyDesc = KeyDesc::new::<Vec<u8>>("m");
        assert_eq!(
            first_conflict(&w_m, &Access::new(&[], &[P])),
            Some((ConflictKind::WriteWrite, "m"))
        );
    }

    #[test]
    fn messages_name_both_stages_and_the_key() {
        let m = parallel_conflict_message("load", "enrich", ConflictKind::WriteWrite, "k");
        assert_eq!(
            m.as_str(),
            "stages `load` and `enrich` run in parallel but both write `k`; move one of them out of the `parallel` block, or, if each adds to `k`, declare it `#[merge]` in `keys!`"
        );
        let m = parallel_conflict_message("a", "b", ConflictKind::ReadWrite, "k");
        assert!(m.as_str().contains("`a` reads `k` while `b` writes it"));
    }

    #[test]
    fn long_messages_truncate_on_char_boundaries() {
        let mut m = ConstMsg::new();
        for _ in 0..200 {
            m = m.push("é");
        }
        assert!(m.as_str().len() <= 512);
        assert!(m.as_str().chars().all(|c| c == 'é'));
    }
}
