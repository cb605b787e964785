//! Quoting untrusted values in error messages.
//!
//! Names, manifests, webhook bodies and other input from clients, upstreams
//! and peers end up quoted in errors, which go into logs, audit events and
//! OCI error bodies. A hostile value must not come back whole, so every
//! error that quotes one clips it here.

/// How much of an untrusted value an error quotes: enough to recognise it.
pub const MAX_QUOTED: usize = 128;

/// `s` clipped to [`MAX_QUOTED`] characters, ending in `…` when cut.
pub fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(MAX_QUOTED).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_values_are_cut_and_marked() {
        assert_eq!(clip("abc"), "abc");
        let long = "x".repeat(MAX_QUOTED * 4);
        let c = clip(&long);
        assert_eq!(c.chars().count(), MAX_QUOTED + 1);
        assert!(c.ends_with('…'));
    }
}
