//! Small text helpers that keep generic std code out of the wasm: one
//! integer parser instead of `str::parse` per integer type, one byte join
//! instead of `[T]::join` per element type, a lossy UTF-8 conversion
//! without `Utf8Chunks`.

#[allow(unused_imports)]
use crate::prelude::*;

/// A decimal `u64` as `str::parse::<u64>` reads it: an optional `+`, then
/// at least one ASCII digit, nothing else; `None` on overflow.
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    let digits = text.strip_prefix(b"+").unwrap_or(text);
    if digits.is_empty() {
        return None;
    }
    let mut n: u64 = 0;
    for &b in digits {
        if !b.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(n)
}

/// `parts` with `sep` between them.
pub fn join_bytes<T: AsRef<[u8]>>(parts: &[T], sep: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(parts.iter().map(|p| p.as_ref().len() + sep.len()).sum());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(sep);
        }
        out.extend_from_slice(part.as_ref());
    }
    out
}

/// `parts` with `sep` between them.
pub fn join_str(parts: &[&str], sep: &str) -> String {
    let mut out = String::new();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push_str(sep);
        }
        out.push_str(part);
    }
    out
}

/// The bytes as text; if they are not UTF-8, every byte that is not ASCII
/// becomes U+FFFD (for log lines and ids; `String::from_utf8_lossy` would
/// keep the valid multi-byte sequences).
pub fn lossy(bytes: &[u8]) -> String {
    match core::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => {
            bytes.iter().map(|&b| if b.is_ascii() { char::from(b) } else { char::REPLACEMENT_CHARACTER }).collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_u64_agrees_with_std() {
        let cases = [
            "",
            "+",
            "-1",
            "0",
            "+0",
            "007",
            "42",
            "+42",
            " 1",
            "1 ",
            "1a",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999",
            "++1",
            "٣",
        ];
        for text in cases {
            assert_eq!(parse_u64(text.as_bytes()), text.parse::<u64>().ok(), "{text:?}");
        }
    }

    #[test]
    fn joins() {
        let cases: &[(&[&str], &str, &str)] =
            &[(&[], ", ", ""), (&["a"], ", ", "a"), (&["a", "b", "c"], ", ", "a, b, c"), (&["", ""], ";", ";")];
        for (parts, sep, want) in cases {
            assert_eq!(join_str(parts, sep), *want);
            assert_eq!(join_str(parts, sep), parts.join(sep));
            let bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
            assert_eq!(join_bytes(&bytes, sep.as_bytes()), want.as_bytes());
        }
    }

    #[test]
    fn lossy_keeps_utf8_and_replaces_the_rest() {
        assert_eq!(lossy(b"team-a"), "team-a");
        assert_eq!(lossy("grüße".as_bytes()), "grüße");
        assert_eq!(lossy(b"a\xffb"), "a\u{fffd}b");
        assert_eq!(lossy(b"\xc3\xbc\xff"), "\u{fffd}\u{fffd}\u{fffd}");
    }
}
