//! Small text helpers that keep generic std code out of the wasm: one
//! integer parser instead of `str::parse` per integer type, one byte join
//! instead of `[T]::join` per element type, a lossy UTF-8 conversion
//! without `Utf8Chunks`, and messages built by `cat!` from `Piece`s instead
//! of `format!`: `core::fmt` (its writer, padding, integer and `Debug` code,
//! an argument table per call site) costs the wasm kilobytes.

#[allow(unused_imports)]
use crate::prelude::*;

/// One part of a message: appends itself to `out` as `Display` would.
pub trait Piece {
    fn push_to(&self, out: &mut String);
}

impl Piece for str {
    fn push_to(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl Piece for String {
    fn push_to(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl Piece for char {
    fn push_to(&self, out: &mut String) {
        out.push(*self);
    }
}

impl Piece for u64 {
    fn push_to(&self, out: &mut String) {
        crate::json::push_u64(out, *self);
    }
}

/// Every integer through the one `u64` writer.
macro_rules! integer_pieces {
    ($($t:ty),*) => {$(
        impl Piece for $t {
            fn push_to(&self, out: &mut String) {
                crate::json::push_u64(out, *self as u64);
            }
        }
    )*};
}
integer_pieces!(usize, u32, u16, u8);

impl<T: Piece + ?Sized> Piece for &T {
    fn push_to(&self, out: &mut String) {
        (**self).push_to(out);
    }
}

impl Piece for crate::json::Quoted<'_> {
    fn push_to(&self, out: &mut String) {
        crate::json::push_quoted(out, self.0);
    }
}

impl Piece for crate::json::Key<'_> {
    fn push_to(&self, out: &mut String) {
        crate::json::push_key(out, self.0);
    }
}

/// A number in lower-case hexadecimal, zero-padded to at least `width`
/// digits (`{:x}` is width 1, `{:016x}` width 16).
#[derive(Debug, Clone, Copy)]
pub struct Hex {
    pub value: u64,
    pub width: usize,
}

impl Piece for Hex {
    fn push_to(&self, out: &mut String) {
        let mut digits = [b'0'; 16];
        let mut n = self.value;
        let mut used = 0;
        for (i, digit) in digits.iter_mut().rev().enumerate() {
            *digit = b"0123456789abcdef"[(n & 0xf) as usize];
            n >>= 4;
            if n == 0 {
                used = i + 1;
                break;
            }
        }
        for _ in used..self.width {
            out.push('0');
        }
        for &d in digits.get(16 - used..).unwrap_or_default() {
            out.push(char::from(d));
        }
    }
}

/// `template` with each NUL byte replaced by the next piece, as `cat!`
/// builds it: the literal text stays one static string, as in `format!`.
pub fn fill(template: &str, pieces: &[&dyn Piece]) -> String {
    // At least the literal text: one allocation for most messages.
    let mut out = String::with_capacity(template.len() + 8 * pieces.len());
    fill_to(&mut out, template, pieces);
    out
}

/// Appends `template` with each NUL byte replaced by the next piece.
pub fn fill_to(out: &mut String, template: &str, pieces: &[&dyn Piece]) {
    let mut pieces = pieces.iter();
    let mut rest = template;
    while let Some((part, after)) = split_once_ascii(rest, 0) {
        out.push_str(part);
        if let Some(piece) = pieces.next() {
            piece.push_to(out);
        }
        rest = after;
    }
    out.push_str(rest);
}

/// Whether `bytes` holds `b`: `<[u8]>::contains` calls memchr, a few
/// hundred bytes of wasm for the short names searched here.
#[allow(clippy::manual_contains)]
pub fn has_byte(bytes: &[u8], b: u8) -> bool {
    bytes.iter().any(|&c| c == b)
}

/// `bytes` split at the first `sep`, which neither side keeps. Through
/// `get`: no index panic (its message and location) in the wasm.
pub fn split_byte(bytes: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().position(|&b| b == sep)?;
    Some((bytes.get(..i)?, bytes.get(i + 1..)?))
}

/// `bytes` split at the last `sep` (see `split_byte`).
pub fn rsplit_byte(bytes: &[u8], sep: u8) -> Option<(&[u8], &[u8])> {
    let i = bytes.iter().rposition(|&b| b == sep)?;
    Some((bytes.get(..i)?, bytes.get(i + 1..)?))
}

/// `text.split_once(sep)` for an ASCII `sep`, without std's char searcher
/// (its memchr costs the wasm a few hundred bytes; these texts are short).
/// A non-ASCII `sep` (a byte inside some character) gives `None` rather
/// than a split inside that character.
pub fn split_once_ascii(text: &str, sep: u8) -> Option<(&str, &str)> {
    let (head, _) = split_byte(text.as_bytes(), sep)?;
    Some((text.get(..head.len())?, text.get(head.len() + 1..)?))
}

/// `text.rsplit_once(sep)` for an ASCII `sep` (see `split_once_ascii`).
pub fn rsplit_once_ascii(text: &str, sep: u8) -> Option<(&str, &str)> {
    let (head, _) = rsplit_byte(text.as_bytes(), sep)?;
    Some((text.get(..head.len())?, text.get(head.len() + 1..)?))
}

/// A piece's text (`to_string` without `core::fmt`).
pub fn text_of(piece: &dyn Piece) -> String {
    fill("\0", &[piece])
}

/// `format!` without `core::fmt`: `cat!("groups.", name, ": ", Quoted(v))`
/// is `format!("groups.{name}: {}", Quoted(v))`. String literals join into
/// one template (so they must not hold a NUL, the template's mark for a
/// piece); every other argument is a `Piece`.
#[macro_export]
macro_rules! cat {
    ($($arg:tt)*) => { $crate::cat_parts!(@fill [] [] $($arg)*) };
}

/// `write!` into a `String` without `core::fmt`: `cat_to!(out; "a", n)`.
#[macro_export]
macro_rules! cat_to {
    ($out:expr; $($arg:tt)*) => { $crate::cat_parts!(@fill_to($out) [] [] $($arg)*) };
}

/// `cat!`'s parser: string literals go to the template, anything else
/// becomes a NUL in the template and a piece.
#[doc(hidden)]
#[macro_export]
macro_rules! cat_parts {
    // At compile time: one mark per piece, so a literal holding a NUL (which
    // would shift every later piece) does not build.
    (@check $template:ident [$($p:expr),*]) => {
        const _: () = ::core::assert!(
            $crate::text::nul_count($template) == <[()]>::len(&[$($crate::cat_parts!(@unit $p)),*]),
            "a cat! literal holds a NUL byte"
        );
    };
    (@unit $p:expr) => {
        ()
    };
    (@$how:tt$(($out:expr))? [$($t:tt)*] [$($p:expr),*] $lit:literal $(, $($rest:tt)*)?) => {
        $crate::cat_parts!(@$how$(($out))? [$($t)* $lit,] [$($p),*] $($($rest)*)?)
    };
    (@$how:tt$(($out:expr))? [$($t:tt)*] [$($p:expr),*] $piece:expr $(, $($rest:tt)*)?) => {
        $crate::cat_parts!(@$how$(($out))? [$($t)* "\0",] [$($p,)* $piece] $($($rest)*)?)
    };
    (@fill [$($t:tt)*] [$($p:expr),*]) => {{
        const TEMPLATE: &str = ::core::concat!($($t)*);
        $crate::cat_parts!(@check TEMPLATE [$($p),*]);
        $crate::text::fill(TEMPLATE, &[$(&$p as &dyn $crate::text::Piece),*])
    }};
    (@fill_to($out:expr) [$($t:tt)*] [$($p:expr),*]) => {{
        const TEMPLATE: &str = ::core::concat!($($t)*);
        $crate::cat_parts!(@check TEMPLATE [$($p),*]);
        $crate::text::fill_to($out, TEMPLATE, &[$(&$p as &dyn $crate::text::Piece),*])
    }};
}

/// NUL bytes in `text`: `cat!`'s check of its template, at compile time.
#[doc(hidden)]
pub const fn nul_count(text: &str) -> usize {
    let bytes = text.as_bytes();
    let (mut i, mut n) = (0, 0);
    while i < bytes.len() {
        if bytes[i] == 0 {
            n += 1;
        }
        i += 1;
    }
    n
}

/// A decimal `u64` as `str::parse::<u64>` reads it: an optional `+`, then
/// at least one ASCII digit, nothing else; `None` on overflow.
pub fn parse_u64(text: &[u8]) -> Option<u64> {
    let digits = match text {
        [b'+', digits @ ..] => digits,
        _ => text,
    };
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

/// `str::trim` (Unicode White_Space off both ends) without std's generic
/// char searcher and its Unicode table: the property's 25 code points.
pub fn trim(text: &str) -> &str {
    fn white(c: char) -> bool {
        matches!(c, '\t'..='\r' | ' ' | '\u{85}' | '\u{a0}' | '\u{1680}' | '\u{2000}'..='\u{200a}')
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}')
    }
    let mut s = text;
    while let Some(c) = s.chars().next().filter(|&c| white(c)) {
        s = s.get(c.len_utf8()..).unwrap_or_default();
    }
    // The last char starts at the last byte that is not a continuation byte.
    while let Some(i) = s.as_bytes().iter().rposition(|&b| b & 0xc0 != 0x80) {
        if !s.get(i..).and_then(|last| last.chars().next()).is_some_and(white) {
            break;
        }
        s = s.get(..i).unwrap_or_default();
    }
    s
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
    fn cat_fills_its_marks_in_order_and_counts_them() {
        // The compile-time check: one NUL per piece (a NUL in a literal fails to build).
        for (text, nuls) in [("", 0), ("a", 0), ("\0", 1), ("a\0b\0", 2), ("\0\0\0", 3)] {
            assert_eq!(nul_count(text), nuls, "{text:?}");
        }
        let (n, name) = (7u32, "x");
        assert_eq!(crate::cat!(n, " of ", name, "", n, "."), "7 of x7.");
        assert_eq!(crate::cat!("only text"), "only text");
    }

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
    fn pieces_read_as_display_does() {
        let quoted = crate::json::Quoted("a\"b");
        let cases: &[(String, String)] = &[
            (cat!(), String::new()),
            (cat!("groups.", "team-a", ": x"), "groups.team-a: x".to_owned()),
            (cat!(String::from("s"), 'c', 0u8), "sc0".to_owned()),
            (
                cat!(u64::MAX, " ", usize::MAX, " ", u32::MAX, " ", u16::MAX),
                format!("{} {} {} {}", u64::MAX, usize::MAX, u32::MAX, u16::MAX),
            ),
            (cat!(quoted), format!("{quoted}")),
            (cat!(&&"ref"), "ref".to_owned()),
        ];
        for (got, want) in cases {
            assert_eq!(got, want);
        }
        // A piece's own NUL stays: only the template (the literals) is split.
        let nul = "a\0b";
        assert_eq!(cat!("[", nul, "]", String::from("\0"), 1u8), "[a\0b]\x001");
        let mut out = String::from("a");
        cat_to!(&mut out; "b", 7u32);
        assert_eq!(out, "ab7");
        assert_eq!(text_of(&42u64), "42");
    }

    #[test]
    fn hex_reads_as_lower_hex() {
        for value in [0, 1, 0xf, 0x10, 0xdead_beef, u64::MAX] {
            for width in [0, 1, 4, 16, 20] {
                let want = format!("{value:0width$x}");
                assert_eq!(cat!(Hex { value, width }), want, "{value} width {width}");
            }
        }
    }

    #[test]
    fn trim_agrees_with_std_for_every_char() {
        for c in (0..=0x10ffff).filter_map(char::from_u32) {
            for text in [format!("{c}"), format!("{c}a{c}"), format!("{c}{c}a b{c}{c}"), format!("a{c}")] {
                assert_eq!(trim(&text), text.trim(), "U+{:04X}", u32::from(c));
            }
        }
        for text in ["", " ", "\u{a0}\u{3000}", " \t10.0.0.0/8\n", "\u{2029}x\u{85}"] {
            assert_eq!(trim(text), text.trim(), "{text:?}");
        }
    }

    #[test]
    fn ascii_splits_agree_with_std() {
        for text in ["", "-", "a-b", "-a-b-", "ü-ü", "1.2.3.4:80", "[::1]:8080", "no sep", "a\0b\0"] {
            for sep in [b'-', b':', b']', b' ', 0] {
                let c = char::from(sep);
                assert_eq!(split_once_ascii(text, sep), text.split_once(c), "{text:?} {c:?}");
                assert_eq!(rsplit_once_ascii(text, sep), text.rsplit_once(c), "{text:?} {c:?}");
                let (bytes, at) =
                    (text.as_bytes(), |(l, r): (&'static str, &'static str)| (l.as_bytes(), r.as_bytes()));
                assert_eq!(split_byte(bytes, sep), text.split_once(c).map(at), "{text:?} {c:?}");
                assert_eq!(rsplit_byte(bytes, sep), text.rsplit_once(c).map(at), "{text:?} {c:?}");
            }
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
