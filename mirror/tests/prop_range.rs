//! Property tests for the mirror's parsers of client input: the `Range`
//! header (`customs_mirror::range::parse`) and the `/v2/...` request path
//! (`customs_mirror::http::parse_target`).
//!
//! Whatever a client sends: no panic, a served range always lies inside the
//! blob, a refusal carries a clear bounded error, and valid requests round
//! trip.
#![allow(clippy::unwrap_used)]

use customs_mirror::http::{Target, parse_target};
use customs_mirror::range::{ByteRange, parse};
use customs_protocol::{Digest, Reference, Repository};
use proptest::prelude::*;
use std::fmt::Display;

#[path = "../../protocol/tests/kit/prop_kit.rs"]
mod prop_kit;

/// A refusal is clear and bounded (see [`prop_kit::assert_clear_within`]).
fn assert_clear(e: &impl Display) {
    prop_kit::assert_clear_within(e, MAX_ERROR_LEN);
}

/// Cases per property (the CI budget is seconds for the whole file).
const CASES: u32 = 256;

/// Longest error text a parser may return, whatever the input: it goes into
/// the OCI error body and the log line of the refusal.
const MAX_ERROR_LEN: usize = 1024;

/// Bigger than any header or path a server would accept.
const HUGE: usize = 10 * 1024 * 1024;

/// Blob sizes: empty, tiny, typical and the extremes of `u64`.
fn size() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        1u64..64,
        any::<u64>(),
        Just(u64::MAX),
        Just(u64::MAX - 1),
    ]
}

/// Range headers: noise, near-grammar strings and hostile numbers.
fn header() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,40}",
        "bytes=[0-9 ,+-]{0,30}",
        "(bytes|BYTES|items)? ?=? ?[0-9]{0,25}-[0-9]{0,25}",
        "bytes=-?[0-9]{0,25}",
        (any::<u64>(), any::<u64>()).prop_map(|(a, b)| format!("bytes={a}-{b}")),
        any::<u64>().prop_map(|a| format!("bytes={a}-")),
        any::<u64>().prop_map(|n| format!("bytes=-{n}")),
        Just(format!("bytes={}0-", u64::MAX)),
        Just(format!("bytes=0-{}0", u64::MAX)),
        Just(format!("bytes=-{}0", u64::MAX)),
    ]
}

fn inside(r: ByteRange, size: u64) -> bool {
    r.start < r.end && r.end <= size
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Any header against any blob: no panic, a range inside the blob or a
    /// clear refusal.
    #[test]
    fn any_header_gives_a_range_inside_the_blob_or_a_clear_error(
        h in header(),
        size in size(),
    ) {
        match parse(Some(&h), size) {
            Ok(Some(r)) => prop_assert!(inside(r, size), "{:?} for {:?} of {}", r, h, size),
            Ok(None) => {}
            Err(e) => assert_clear(&e),
        }
    }

    /// `bytes=A-B` with A inside the blob is served from A to B (clamped).
    #[test]
    fn closed_ranges_round_trip(size in 1u64..=u64::MAX, a in any::<u64>(), len in any::<u64>()) {
        let start = a % size;
        let last = start.saturating_add(len % (size - start).max(1) );
        let r = parse(Some(&format!("bytes={start}-{last}")), size).unwrap().unwrap();
        prop_assert_eq!(r, ByteRange { start, end: last.saturating_add(1).min(size) });
        // The Content-Range the mirror answers with names the same range.
        let again = parse(Some(&format!("bytes={}-{}", r.start, r.end - 1)), size).unwrap();
        prop_assert_eq!(again, Some(r));
        // A last byte past the end is clamped, never served past the blob.
        let over = parse(Some(&format!("bytes={start}-{}", u64::MAX)), size).unwrap().unwrap();
        prop_assert_eq!(over, ByteRange { start, end: size });
    }

    /// `bytes=A-` is served from A to the end; containerd resumes this way.
    #[test]
    fn open_ranges_round_trip(size in 1u64..=u64::MAX, a in any::<u64>()) {
        let start = a % size;
        let r = parse(Some(&format!("bytes={start}-")), size).unwrap().unwrap();
        prop_assert_eq!(r, ByteRange { start, end: size });
    }

    /// `bytes=-N` is the last N bytes (the whole blob when N is larger).
    #[test]
    fn suffix_ranges_round_trip(size in 1u64..=u64::MAX, n in 1u64..=u64::MAX) {
        let r = parse(Some(&format!("bytes=-{n}")), size).unwrap().unwrap();
        prop_assert_eq!(r, ByteRange { start: size - n.min(size), end: size });
    }

    /// A range starting at or past the end is a 416, never an empty or
    /// out-of-bounds read.
    #[test]
    fn ranges_past_the_end_are_refused(size in size(), past in any::<u64>(), last in proptest::option::of(any::<u64>())) {
        let start = size.saturating_add(past % 1024);
        prop_assume!(start >= size);
        let h = match last {
            Some(l) => format!("bytes={start}-{}", start.saturating_add(l)),
            None => format!("bytes={start}-"),
        };
        let e = parse(Some(&h), size).unwrap_err();
        assert_clear(&e);
    }

    /// A last byte before the first is refused.
    #[test]
    fn inverted_ranges_are_refused(size in size(), a in 1u64..=u64::MAX, back in 1u64..=u64::MAX) {
        let last = a.saturating_sub(back % a.max(1)).min(a - 1);
        let e = parse(Some(&format!("bytes={a}-{last}")), size).unwrap_err();
        assert_clear(&e);
    }

    /// Several ranges or another unit: served whole (RFC 9110 allows it),
    /// never partially parsed.
    #[test]
    fn multi_ranges_and_other_units_are_served_whole(
        size in size(),
        ranges in proptest::collection::vec((any::<u32>(), any::<u32>()), 2..5),
        unit in "[a-z]{1,6}",
    ) {
        let list: Vec<String> = ranges.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        prop_assert_eq!(parse(Some(&format!("bytes={}", list.join(","))), size), Ok(None));
        prop_assume!(unit != "bytes");
        prop_assert_eq!(parse(Some(&format!("{unit}={}", list[0])), size), Ok(None));
    }
}

#[test]
fn no_header_is_the_whole_blob() {
    assert_eq!(parse(None, 0), Ok(None));
    assert_eq!(parse(None, u64::MAX), Ok(None));
}

#[test]
fn huge_headers_give_bounded_errors() {
    // hyper caps header sizes, but the parser must not rely on it: a
    // hostile header is never echoed back in full.
    for h in [
        format!("bytes={}-", "9".repeat(HUGE)),
        format!("bytes=x{}-", "y".repeat(HUGE)),
        format!("bytes=-{}", "1".repeat(HUGE)),
        format!("bytes=5-{}", "z".repeat(HUGE)),
        format!("bytes={}", "1".repeat(HUGE)),
    ] {
        assert_clear(&parse(Some(&h), 10).unwrap_err());
    }
}

// ---------------------------------------------------------- request paths

fn repository() -> impl Strategy<Value = Repository> {
    proptest::collection::vec(
        "[a-z0-9]{1,6}((\\.|_|__|-{1,2})[a-z0-9]{1,6}){0,2}|manifests|blobs",
        1..4,
    )
    .prop_map(|parts| parts.join("/"))
    .prop_filter_map("repository", |s| s.parse().ok())
}

fn reference() -> impl Strategy<Value = Reference> {
    prop_oneof![
        "[A-Za-z0-9_][A-Za-z0-9._-]{0,20}".prop_map(|t| Reference::Tag(t.parse().unwrap())),
        "[0-9a-f]{64}".prop_map(|h| Reference::Digest(format!("sha256:{h}").parse().unwrap())),
    ]
}

fn path_like() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,80}",
        "[a-zA-Z0-9._/:%-]{0,80}",
        "[a-z0-9./]{0,30}/(manifests|blobs|tags)/[a-zA-Z0-9._:-]{0,70}",
        "([a-z.]{0,3}/){0,6}(manifests|blobs)/(sha256:[0-9a-f]{64}|latest|\\.\\.)",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(CASES))]

    /// Any path: no panic; what parses names exactly the path it came from
    /// (so nothing outside the name grammar reaches the store or upstream).
    #[test]
    fn any_path_parses_to_itself_or_a_clear_error(p in path_like()) {
        match parse_target(&p) {
            Ok(Target::Manifest(repo, reference)) => {
                prop_assert_eq!(format!("{repo}/manifests/{reference}"), p);
            }
            Ok(Target::Blob(repo, digest)) => {
                prop_assert_eq!(format!("{repo}/blobs/{digest}"), p);
            }
            Err(e) => assert_clear(&e),
        }
    }

    #[test]
    fn valid_paths_round_trip(repo in repository(), reference in reference(), h in "[0-9a-f]{64}") {
        let p = format!("{repo}/manifests/{reference}");
        prop_assert_eq!(parse_target(&p).unwrap(), Target::Manifest(repo.clone(), reference));
        let d: Digest = format!("sha256:{h}").parse().unwrap();
        let p = format!("{repo}/blobs/{d}");
        prop_assert_eq!(parse_target(&p).unwrap(), Target::Blob(repo, d));
    }

    /// A blob path never takes a tag, and `..`, empty or upper-case
    /// segments are refused wherever they are.
    #[test]
    fn hostile_paths_are_refused(
        repo in repository(),
        reference in reference(),
        trick in prop_oneof![Just(".."), Just("."), Just(""), Just("UP"), Just("a%2f..")],
        at in any::<usize>(),
    ) {
        let mut parts: Vec<String> = repo.as_str().split('/').map(str::to_owned).collect();
        let at = at % (parts.len() + 1);
        parts.insert(at, trick.to_owned());
        let p = format!("{}/manifests/{reference}", parts.join("/"));
        assert_clear(&parse_target(&p).unwrap_err());
        if let Reference::Tag(t) = reference {
            assert_clear(&parse_target(&format!("{repo}/blobs/{t}")).unwrap_err());
        }
    }
}

#[test]
fn huge_paths_give_bounded_errors() {
    for p in [
        "a".repeat(HUGE),
        format!("{}/manifests/latest", "a".repeat(HUGE)),
        format!("app/manifests/{}", "t".repeat(HUGE)),
        format!("app/blobs/sha256:{}", "f".repeat(HUGE)),
        format!("app/{}/x", "k".repeat(HUGE)),
    ] {
        assert_clear(&parse_target(&p).unwrap_err());
    }
}
