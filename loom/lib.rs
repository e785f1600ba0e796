//! Compiles jetring's wake-up protocol (`src/wake.rs`) on its own, with loom's atomics, so
//! that its model tests explore every interleaving without building the rest of jetring.
//!
//! ```text
//! cd loom && RUSTFLAGS="--cfg jetring_loom" cargo test --release
//! ```

// Only the model tests use the protocol here.
#![allow(dead_code)]

#[path = "../src/wake.rs"]
mod wake;
