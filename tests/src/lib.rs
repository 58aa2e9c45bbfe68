//! Integration tests of fluxio live in `tests/`; this crate has no code of its own.
