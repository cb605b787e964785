//! What every property test of untrusted input shares: the "clear error"
//! check and byte-level damage. Included by path from each crate's
//! property tests (`#[path = ".../protocol/tests/kit/prop_kit.rs"]`), so it
//! is written once.
#![allow(dead_code)]

use proptest::prelude::*;
use std::fmt::Display;

/// A refusal is clear: it says something, and what it says is at most
/// `max` bytes (error texts end up in logs, reason phrases and JSON bodies;
/// an attacker must not be able to make them as large as the input).
pub fn assert_clear_within(e: &impl Display, max: usize) {
    let s = e.to_string();
    assert!(!s.trim().is_empty(), "empty error message");
    assert!(
        s.len() <= max,
        "error message of {} bytes (cap {max}): {}…",
        s.len(),
        s.chars().take(300).collect::<String>()
    );
}

/// Applies byte-level mutations to `input` (flip, delete, insert,
/// truncate), the way a broken or hostile party would damage a document.
pub fn mutate(input: &[u8], edits: &[(usize, u8, u8)]) -> Vec<u8> {
    let mut out = input.to_vec();
    for &(at, op, byte) in edits {
        if out.is_empty() {
            out.push(byte);
            continue;
        }
        let i = at % out.len();
        match op % 4 {
            0 => out[i] ^= byte | 1,
            1 => {
                out.remove(i);
            }
            2 => out.insert(i, byte),
            _ => out.truncate(i),
        }
    }
    out
}

/// One to five edits for [`mutate`].
pub fn edits() -> impl Strategy<Value = Vec<(usize, u8, u8)>> {
    proptest::collection::vec((any::<usize>(), any::<u8>(), any::<u8>()), 1..6)
}
