//! What one attempt got from its receiver, and how text taken from the network is made safe to store.

use std::borrow::Cow;
use std::time::Duration;

use crate::retry_policy::AttemptResult;

/// What an attempt got: the classification the retry policy decides on, and what the log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptReport {
    /// The classification the retry policy and the health counter decide on.
    pub result: AttemptResult,
    /// The response status.
    pub http_status: Option<u16>,
    /// What went wrong: a status line or a transport error (timeout, connection refused, DNS, TLS …).
    /// Always storable text (see [`storable`]).
    pub error: Option<String>,
    /// The start of the response body, as storable text.
    pub excerpt: Option<String>,
    /// Wall time of the attempt.
    pub duration: Duration,
}

impl AttemptReport {
    /// An attempt that could not be sent (invalid URL, refused address, bad static header): final.
    pub fn unsendable(error: impl Into<String>, duration: Duration) -> Self {
        Self {
            result: AttemptResult::Unsendable,
            http_status: None,
            error: Some(storable_str(&error.into()).into_owned()),
            excerpt: None,
            duration,
        }
    }

    /// An inline attempt that had no answer at the slow lane's `threshold` and was handed over.
    pub fn handed_over(threshold: Duration) -> Self {
        Self {
            result: AttemptResult::HandedOver,
            http_status: None,
            error: Some(format!(
                "no answer within {} ms; handed over to the slow lane",
                threshold.as_millis()
            )),
            excerpt: None,
            duration: threshold,
        }
    }

    /// The duration in whole milliseconds, as the log stores it.
    pub fn duration_ms(&self) -> i32 {
        self.duration.as_millis().min(i32::MAX as u128) as i32
    }
}

/// Bytes from the network as text PostgreSQL stores and a person can read: invalid UTF-8 becomes U+FFFD,
/// a multi-byte character cut at the end of the excerpt is dropped, and NUL (which PostgreSQL's `text`
/// refuses) becomes U+FFFD too.
pub fn storable(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    let mut chunks = bytes.utf8_chunks().peekable();
    while let Some(chunk) = chunks.next() {
        push_without_nul(&mut out, chunk.valid());
        let invalid = chunk.invalid();
        // An incomplete sequence at the very end is a character the excerpt's limit cut in two.
        let cut_at_end = chunks.peek().is_none() && is_incomplete_prefix(invalid);
        if !invalid.is_empty() && !cut_at_end {
            out.push(char::REPLACEMENT_CHARACTER);
        }
    }
    out
}

/// `text` with every NUL replaced by U+FFFD; borrowed when it has none.
pub fn storable_str(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(text)
    }
}

fn push_without_nul(out: &mut String, valid: &str) {
    match storable_str(valid) {
        Cow::Borrowed(s) => out.push_str(s),
        Cow::Owned(s) => out.push_str(&s),
    }
}

/// Whether `bytes` is the start of a UTF-8 sequence that more bytes would complete.
fn is_incomplete_prefix(bytes: &[u8]) -> bool {
    let Some(&lead) = bytes.first() else {
        return false;
    };
    let needed = match lead {
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => return false,
    };
    bytes.len() < needed && bytes[1..].iter().all(|b| b & 0xC0 == 0x80)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_bytes_and_invalid_utf8_become_replacement_characters() {
        assert_eq!(storable(b"ok"), "ok");
        assert_eq!(storable(b"a\0b"), "a\u{FFFD}b");
        assert_eq!(storable(b"\xff\xfeabc"), "\u{FFFD}\u{FFFD}abc");
        assert_eq!(storable("é".as_bytes()), "é");
        assert!(!storable(b"\0\0\0").contains('\0'));
        assert_eq!(storable_str("x\0y"), "x\u{FFFD}y");
        assert!(matches!(storable_str("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_character_cut_by_the_excerpt_limit_is_dropped_not_replaced() {
        let euro = "€".as_bytes();
        assert_eq!(
            storable(&[b"price: ".as_slice(), &euro[..2]].concat()),
            "price: "
        );
        // The same bytes in the middle are invalid, and shown as such.
        assert_eq!(
            storable(&[&euro[..2], b" then".as_slice()].concat()),
            "\u{FFFD} then"
        );
    }

    #[test]
    fn reports_of_unsent_attempts_are_final_and_storable() {
        let r = AttemptReport::unsendable("bad\0header", Duration::from_millis(3));
        assert_eq!(r.result, AttemptResult::Unsendable);
        assert_eq!(r.error.as_deref(), Some("bad\u{FFFD}header"));
        assert_eq!(r.duration_ms(), 3);
        let h = AttemptReport::handed_over(Duration::from_millis(500));
        assert_eq!(h.result, AttemptResult::HandedOver);
        assert_eq!(h.duration_ms(), 500);
    }
}
