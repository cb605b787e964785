//! See the crate docs in `main.rs`.
