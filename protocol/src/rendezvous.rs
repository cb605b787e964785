//! Rendezvous (highest-random-weight) hashing: which live member owns a
//! key (a gateway a blob, a scheduler a task), and who takes over when it
//! goes.
//!
//! Written here rather than taken from a crate: the crates on crates.io
//! (`rendezvous_hash`, `hrw`) score with `std`'s `DefaultHasher`, whose
//! output Rust does not promise to keep across releases or platforms, and
//! every process of a fleet (built by different compilers, on different
//! machines) must rank members identically. SHA-256 is stable and already
//! a dependency; the algorithm itself is a sort.

use sha2::{Digest as _, Sha256};

/// The score of `member` for `key`: the first 8 bytes of
/// SHA-256(len(member) ‖ member ‖ key), so no (member, key) pair collides
/// with another by shifting bytes between the two.
pub fn score(member: &str, key: &[u8]) -> u64 {
    let mut h = Sha256::new();
    h.update((member.len() as u64).to_be_bytes());
    h.update(member.as_bytes());
    h.update(key);
    let out = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&out[..8]);
    u64::from_be_bytes(first)
}

/// `items` ranked for `key`, owner first, then who takes over from it, and
/// so on. Every process with the same member set ranks the same way, and
/// removing a member only moves the keys it owned.
pub fn ranked<T>(key: &[u8], mut items: Vec<T>, id: impl Fn(&T) -> &str) -> Vec<T> {
    items.sort_by_cached_key(|m| (std::cmp::Reverse(score(id(m), key)), id(m).to_owned()));
    items
}

/// The key a gateway blob is owned by: the registry and the digest.
pub fn blob_key(registry: &str, digest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(registry.len() + digest.len() + 1);
    k.extend_from_slice(registry.as_bytes());
    k.push(0);
    k.extend_from_slice(digest.as_bytes());
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn owner(key: &[u8], members: &[&str]) -> String {
        ranked(key, members.to_vec(), |m| m)[0].to_owned()
    }

    #[test]
    fn scores_are_stable_across_builds() {
        // Pinned: a change of scoring would split a fleet whose processes
        // run different versions.
        assert_eq!(score("gateway-1", b"k"), score("gateway-1", b"k"));
        assert_eq!(
            format!("{:016x}", score("gateway-1", b"docker.io\0sha256:00")),
            {
                let mut h = Sha256::new();
                h.update(9u64.to_be_bytes());
                h.update(b"gateway-1docker.io\0sha256:00");
                hex::encode(&h.finalize()[..8])
            }
        );
    }

    #[test]
    fn keys_spread_over_members() {
        let members = ["gw-a", "gw-b", "gw-c"];
        let mut counts = std::collections::HashMap::new();
        for i in 0..3000 {
            *counts
                .entry(owner(format!("sha256:{i}").as_bytes(), &members))
                .or_insert(0) += 1;
        }
        for m in members {
            let n = counts.get(m).copied().unwrap_or(0);
            assert!((800..1200).contains(&n), "{m} owns {n} of 3000");
        }
    }

    proptest! {
        #[test]
        fn removing_a_member_moves_only_its_keys(
            key in proptest::collection::vec(any::<u8>(), 0..64),
            n in 2usize..8,
            gone in 0usize..8,
        ) {
            let members: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
            let gone = &members[gone % n];
            let all: Vec<&str> = members.iter().map(String::as_str).collect();
            let rest: Vec<&str> = all.iter().copied().filter(|m| m != gone).collect();
            let before = ranked(&key, all.clone(), |m| m);
            let after = ranked(&key, rest, |m| m);
            // The order of the survivors is unchanged: whoever was next
            // takes over, and a key whose owner stayed keeps it.
            let survivors: Vec<&str> = before.iter().copied().filter(|m| m != gone).collect();
            prop_assert_eq!(after, survivors);
        }
    }
}
