//! The keywords the macros accept, named once.

pub(crate) const READS: &str = "reads";
pub(crate) const WRITES: &str = "writes";
pub(crate) const TIMEOUT: &str = "timeout";
pub(crate) const NAME: &str = "name";
pub(crate) const CRATE: &str = "crate";
pub(crate) const PARALLEL: &str = "parallel";
pub(crate) const FALLBACK: &str = "fallback";
pub(crate) const ROLLBACK: &str = "rollback";

/// The options `#[stage]` accepts, for "expected one of" messages.
pub(crate) const STAGE_OPTIONS: &[&str] =
    &[READS, WRITES, TIMEOUT, NAME, FALLBACK, ROLLBACK, CRATE];
