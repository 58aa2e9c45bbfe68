//! Runnable examples of fluxio live beside this file: `cargo run --example quickstart`.
