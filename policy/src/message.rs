//! Bounds on messages that quote untrusted input.
//!
//! Evidence problems and verification errors end up in decision reasons,
//! audit events, logs and OCI error bodies. They often quote what a registry
//! or signer sent (a serde error names the offending string, a DSSE payload
//! type is echoed back), so a hostile artifact could otherwise make every
//! one of those megabytes long. Every such message leaves this crate through
//! [`bounded`].

/// The longest message kept, in bytes: room for a location, a digest and a
/// clear reason, never a quoted body.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `msg` cut to at most [`MAX_MESSAGE_BYTES`] bytes (on a character
/// boundary), ending in `…` when something was cut.
pub fn bounded(mut msg: String) -> String {
    if msg.len() <= MAX_MESSAGE_BYTES {
        return msg;
    }
    let ellipsis = '…';
    let mut end = MAX_MESSAGE_BYTES - ellipsis.len_utf8();
    while !msg.is_char_boundary(end) {
        end -= 1;
    }
    msg.truncate(end);
    msg.push(ellipsis);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        assert_eq!(bounded("short".into()), "short");
        let long = "é".repeat(MAX_MESSAGE_BYTES);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_MESSAGE_BYTES, "{}", cut.len());
        assert!(cut.ends_with('…'));
    }
}
