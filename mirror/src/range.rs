//! `Range: bytes=…` for blob requests (containerd resumes with `bytes=N-`).

/// A resolved byte range within a blob: `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte.
    pub start: u64,
    /// One past the last byte.
    pub end: u64,
}

/// How much of a hostile header a refusal quotes: enough to recognise it,
/// never the whole header (the error goes into the OCI body and the log).
const MAX_QUOTED: usize = 64;

/// The header as error messages quote it: clipped to [`MAX_QUOTED`] chars.
fn quoted(h: &str) -> String {
    let clipped: String = h.chars().take(MAX_QUOTED).collect();
    if clipped.len() < h.len() {
        format!("{clipped:?}…")
    } else {
        format!("{clipped:?}")
    }
}

/// Parses a single-range `Range` header against a blob of `size` bytes.
/// `Ok(None)` means "the whole blob" (no header, or a form we serve whole as
/// RFC 9110 allows, such as multiple ranges). `Err` means 416.
pub fn parse(header: Option<&str>, size: u64) -> Result<Option<ByteRange>, String> {
    let Some(h) = header else { return Ok(None) };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        return Ok(None);
    }
    let (a, b) = spec
        .split_once('-')
        .ok_or_else(|| format!("bad range {}", quoted(h)))?;
    let (a, b) = (a.trim(), b.trim());
    let range = if a.is_empty() {
        // Suffix range: the last N bytes.
        let n: u64 = b.parse().map_err(|_| format!("bad range {}", quoted(h)))?;
        if n == 0 {
            return Err(format!("empty suffix range {}", quoted(h)));
        }
        ByteRange {
            start: size.saturating_sub(n),
            end: size,
        }
    } else {
        let start: u64 = a.parse().map_err(|_| format!("bad range {}", quoted(h)))?;
        let end = if b.is_empty() {
            size
        } else {
            let last: u64 = b.parse().map_err(|_| format!("bad range {}", quoted(h)))?;
            if last < start {
                return Err(format!("bad range {}", quoted(h)));
            }
            last.saturating_add(1).min(size)
        };
        ByteRange { start, end }
    };
    if range.start >= size {
        return Err(format!(
            "range starts at {} but the blob has {size} bytes",
            range.start
        ));
    }
    Ok(Some(range))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse(None, 10).unwrap(), None);
        assert_eq!(
            parse(Some("bytes=3-"), 10).unwrap(),
            Some(ByteRange { start: 3, end: 10 })
        );
        assert_eq!(
            parse(Some("bytes=3-4"), 10).unwrap(),
            Some(ByteRange { start: 3, end: 5 })
        );
        assert_eq!(
            parse(Some("bytes=3-400"), 10).unwrap(),
            Some(ByteRange { start: 3, end: 10 })
        );
        assert_eq!(
            parse(Some("bytes=-4"), 10).unwrap(),
            Some(ByteRange { start: 6, end: 10 })
        );
        assert_eq!(parse(Some("bytes=0-1,4-5"), 10).unwrap(), None);
        assert!(parse(Some("bytes=10-"), 10).is_err());
        assert!(parse(Some("bytes=5-3"), 10).is_err());
        assert!(parse(Some("bytes=x-"), 10).is_err());
        assert!(parse(Some("bytes=-0"), 10).is_err());
    }

    #[test]
    fn refusals_quote_a_hostile_header_clipped() {
        let hostile = format!("bytes=x{}-", "y".repeat(100_000));
        let e = parse(Some(&hostile), 10).unwrap_err();
        assert!(e.len() < 2 * MAX_QUOTED, "{} bytes", e.len());
        assert!(
            e.starts_with("bad range \"bytes=xyy") && e.ends_with('…'),
            "{e}"
        );
        assert_eq!(
            parse(Some("bytes=x-"), 10).unwrap_err(),
            "bad range \"bytes=x-\""
        );
    }
}
