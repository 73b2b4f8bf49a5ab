//! A small pull reader for JSON that keeps the path of what it reads
//! (`services.a.hosts[2]`), for the two schemas the filter parses (plugin
//! configuration, route table; `read.rs`). It replaces serde, serde_json and
//! serde_path_to_error in the wasm (about 100 KB there): callbacks are `dyn`,
//! so nothing is monomorphised per type, and numbers are integers only, so
//! no float code is linked.
//!
//! Errors read as serde_json's did (`invalid type: string "x", expected u16
//! at line 1 column 9`), prefixed by the path. Strings are checked UTF-8 with
//! every escape (`\uXXXX` surrogate pairs joined, lone ones refused), nesting
//! is limited, and bytes after the document are refused.

#[allow(unused_imports)]
use crate::prelude::*;

/// Most unknown field names a lenient read keeps, for its one log line.
const MAX_UNKNOWN_KEPT: usize = 16;

/// Deepest nesting of arrays and objects, serde_json's: its recursion
/// limit of 128 refuses the 128th level. The schemas need 6; a value skipped
/// (a newer companion's field) may nest as deep as the companion's serde_json
/// reads; core's tests read the deepest on the wasm target too.
pub(crate) const MAX_DEPTH: usize = 127;

/// A failure: the dotted path of the value (`(document)` for the root) and
/// what was wrong with it, with its line and column.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JsonError {
    pub path: String,
    pub message: String,
}

pub(crate) type Res<T> = Result<T, JsonError>;

/// A callback for each member of an object: the reader (positioned at the
/// value, its path including the key) and the key.
pub(crate) type OnMember<'f, 'a> = &'f mut dyn FnMut(&mut Reader<'a>, String) -> Res<()>;

pub(crate) struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
    path: String,
    depth: usize,
    /// Path length and end offset of the key being read, for errors about
    /// the key itself (unknown or duplicate field).
    key_mark: usize,
    key_end: usize,
    /// `Some` in a lenient parse: the unknown field names skipped, as
    /// `push_key` shows them, at most `MAX_UNKNOWN_KEPT`. (A delta takes
    /// it out to read its `base` strictly.)
    pub(crate) unknown: Option<Vec<String>>,
}

/// Parses one whole document with `read`; bytes after it are an error, so a
/// doubled or padded body is refused rather than half-read. In a lenient
/// parse, unknown fields are skipped and the first `MAX_UNKNOWN_KEPT`
/// names returned, shown as in a path (`push_key`).
pub(crate) fn document<T>(
    bytes: &[u8],
    lenient: bool,
    read: &mut dyn FnMut(&mut Reader<'_>) -> Res<T>,
) -> Res<(T, Vec<String>)> {
    let mut r = Reader::new(bytes, lenient);
    let value = read(&mut r)?;
    Ok((value, r.finish()?))
}

/// Appends `n` in decimal (no `core::fmt` in the wasm).
pub(crate) fn push_u64(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut used = 0;
    for (i, digit) in digits.iter_mut().rev().enumerate() {
        *digit = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            used = i + 1;
            break;
        }
    }
    for &d in digits.get(digits.len() - used..).unwrap_or_default() {
        out.push(char::from(d));
    }
}

/// Most bytes of a key or value a message shows: every valid name (a
/// service's, 253) whole; a longer one is cut, so one member of a table
/// cannot flood a log line.
pub(crate) const MAX_SHOWN: usize = 256;

/// Characters a message shows escaped (`\u{1b}`): control characters, and
/// Unicode's line separators and bidirectional controls, which could forge
/// a log line or hide text.
fn shown_escaped(c: char) -> bool {
    matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Appends `s` in double quotes, `"`, `\` and `shown_escaped` characters
/// escaped, cut after `MAX_SHOWN` bytes (`"abc"...`).
pub(crate) fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    let mut shown = 0;
    for c in s.chars() {
        shown += c.len_utf8();
        if shown > MAX_SHOWN {
            out.push_str("\"...");
            return;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if shown_escaped(c) => {
                out.push_str("\\u{");
                crate::text::Piece::push_to(&crate::text::Hex { value: c as u64, width: 2 }, out);
                out.push('}');
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A key as written when it is plain: printable ASCII but `"` and `\`, at
/// most `MAX_SHOWN` bytes (every valid name); any other is shown quoted.
fn is_plain(key: &str) -> bool {
    if key.is_empty() || key.len() > MAX_SHOWN {
        return false;
    }
    for &b in key.as_bytes() {
        if !b.is_ascii_graphic() || b == b'"' || b == b'\\' {
            return false;
        }
    }
    true
}

/// Appends a key as a path segment (`services.reviews`): as written when it
/// is plain, else quoted (`services."a\nb"`), so no key read from a table
/// can break a log line, forge one or flood it.
pub(crate) fn push_key(out: &mut String, key: &str) {
    push_shown(out, key, "");
}

/// A plain `name` between two `mark`s (none for a key, `` ` `` in a message
/// as serde words it); any other quoted. One body for both: the wasm pays
/// for it once.
#[inline(never)]
fn push_shown(out: &mut String, name: &str, mark: &str) {
    if is_plain(name) {
        out.push_str(mark);
        out.push_str(name);
        out.push_str(mark);
    } else {
        push_quoted(out, name);
    }
}

/// A key shown as `push_key` shows it, for messages built with `cat!`.
pub struct Key<'a>(pub &'a str);

impl core::fmt::Display for Key<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut s = String::new();
        push_key(&mut s, self.0);
        f.write_str(&s)
    }
}

/// A string shown in double quotes, escaped as `push_quoted` does: for
/// messages, instead of `{:?}` (whose Unicode tables cost the wasm kilobytes).
pub struct Quoted<'a>(pub &'a str);

impl core::fmt::Display for Quoted<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let mut s = String::with_capacity(self.0.len() + 2);
        push_quoted(&mut s, self.0);
        f.write_str(&s)
    }
}

/// "unknown variant `x`, expected `a` or `b`" (`x` as `push_shown`
/// shows it).
pub(crate) fn unknown_variant(name: &str, variants: &[&str]) -> String {
    let mut m = String::from("unknown variant ");
    push_shown(&mut m, name, "`");
    m.push_str(", expected ");
    push_one_of(&mut m, variants);
    m
}

/// `` `a` ``, `` `a` or `b` ``, `` one of `a`, `b`, `c` `` (serde's wording).
/// The names are the schema's own, plain, so `push_shown` writes them as
/// they are.
pub(crate) fn push_one_of(out: &mut String, names: &[&str]) {
    if names.len() > 2 {
        out.push_str("one of ");
    }
    for (i, name) in names.iter().enumerate() {
        if i > 0 {
            out.push_str(if names.len() == 2 { " or " } else { ", " });
        }
        push_shown(out, name, "`");
    }
}

impl<'a> Reader<'a> {
    /// A reader at the start of `bytes` (`document`'s, one body for every
    /// type it reads).
    #[inline(never)]
    pub(crate) fn new(bytes: &'a [u8], lenient: bool) -> Reader<'a> {
        Reader {
            bytes,
            pos: 0,
            path: String::new(),
            depth: 0,
            key_mark: 0,
            key_end: 0,
            unknown: lenient.then(Vec::new),
        }
    }

    /// The end of a document: nothing but whitespace after it; the unknown
    /// field names skipped.
    #[inline(never)]
    pub(crate) fn finish(mut self) -> Res<Vec<String>> {
        if self.peek().is_some() {
            return Err(self.err_next("trailing characters"));
        }
        Ok(self.unknown.take().unwrap_or_default())
    }

    fn peek(&mut self) -> Option<u8> {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        self.bytes.get(self.pos).copied()
    }

    /// An error about `path`, at the character that ends at `end`
    /// (serde_json's line and column).
    fn error_at(&self, path: &str, end: usize, message: &str) -> JsonError {
        let path = if path.is_empty() { "(document)".to_owned() } else { path.to_owned() };
        let upto = self.bytes.get(..end.min(self.bytes.len())).unwrap_or_default();
        let line = 1 + upto.iter().filter(|&&b| b == b'\n').count();
        let column = upto.len() - upto.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        let mut text = String::with_capacity(message.len() + 32);
        text.push_str(message);
        text.push_str(" at line ");
        push_u64(&mut text, line as u64);
        text.push_str(" column ");
        push_u64(&mut text, column as u64);
        JsonError { path, message: text }
    }

    /// An error about what was just read.
    pub(crate) fn err(&self, message: &str) -> JsonError {
        self.error_at(&self.path, self.pos, message)
    }

    /// An error about the next character (or the end of input).
    fn err_next(&self, message: &str) -> JsonError {
        self.error_at(&self.path, self.pos + 1, message)
    }

    /// An error about the key just read (its path, at its closing quote).
    pub(crate) fn err_key(&self, message: &str, with_key: bool) -> JsonError {
        let path_len = if with_key { self.path.len() } else { self.key_mark };
        self.error_at(self.path.get(..path_len).unwrap_or_default(), self.key_end, message)
    }

    fn eof_or(&self, message: &str, eof: &str) -> JsonError {
        if self.pos >= self.bytes.len() {
            self.err_next(eof)
        } else {
            self.err_next(message)
        }
    }

    fn enter(&mut self) -> Res<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(self.err_next("recursion limit exceeded"));
        }
        Ok(())
    }

    /// "invalid type: <what is there>, expected <expected>"; reads a scalar
    /// to name it.
    pub(crate) fn invalid_type(&mut self, expected: &str) -> JsonError {
        let mut m = String::from("invalid type: ");
        match self.peek() {
            Some(b'"') => match self.string_raw() {
                Ok(s) => {
                    m.push_str("string ");
                    push_quoted(&mut m, &s);
                }
                Err(e) => return e,
            },
            Some(b'{' | b'[') => {
                m.push_str(if self.peek() == Some(b'{') { "map" } else { "sequence" });
                m.push_str(", expected ");
                m.push_str(expected);
                return self.err_next(&m);
            }
            Some(b't' | b'f') => match self.boolean_raw() {
                Ok(b) => m.push_str(if b { "boolean `true`" } else { "boolean `false`" }),
                Err(e) => return e,
            },
            Some(b'n') => match self.literal(b"null") {
                Ok(()) => m.push_str("null"),
                Err(e) => return e,
            },
            Some(b'-' | b'0'..=b'9') => match self.number_text() {
                Ok((text, integer)) => {
                    let head = if integer { "invalid type: integer `" } else { "invalid type: floating point `" };
                    return self.number_error(head, text, expected);
                }
                Err(e) => return e,
            },
            _ => return self.eof_or("expected value", "EOF while parsing a value"),
        }
        m.push_str(", expected ");
        m.push_str(expected);
        self.err(&m)
    }

    /// "<head><number>`, expected <expected>", about the number just read:
    /// one body for the three messages about a number.
    fn number_error(&self, head: &str, text: &str, expected: &str) -> JsonError {
        let mut m = String::from(head);
        m.push_str(text);
        m.push_str("`, expected ");
        m.push_str(expected);
        self.err(&m)
    }

    fn literal(&mut self, word: &[u8]) -> Res<()> {
        for &want in word {
            let got = self.bytes.get(self.pos).copied();
            if got != Some(want) {
                return Err(self.eof_or("expected ident", "EOF while parsing a value"));
            }
            self.pos += 1;
        }
        Ok(())
    }

    fn boolean_raw(&mut self) -> Res<bool> {
        if self.peek() == Some(b't') {
            self.literal(b"true").map(|()| true)
        } else {
            self.literal(b"false").map(|()| false)
        }
    }

    /// A JSON number's text and whether it is an integer (no fraction or
    /// exponent); the grammar checked, the value not computed.
    fn number_text(&mut self) -> Res<(&'a str, bool)> {
        let bytes = self.bytes;
        let start = self.pos;
        let digits = |r: &mut Self| {
            let from = r.pos;
            while bytes.get(r.pos).is_some_and(u8::is_ascii_digit) {
                r.pos += 1;
            }
            r.pos - from
        };
        if bytes.get(self.pos) == Some(&b'-') {
            self.pos += 1;
        }
        let int_start = self.pos;
        let n = digits(self);
        if n > 1 && bytes.get(int_start) == Some(&b'0') {
            self.pos = int_start + 1; // at the digit after a leading zero
            return Err(self.err_next("invalid number"));
        }
        if n == 0 {
            return Err(self.eof_or("invalid number", "EOF while parsing a value"));
        }
        let mut integer = true;
        if bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            integer = false;
            if digits(self) == 0 {
                return Err(self.eof_or("invalid number", "EOF while parsing a value"));
            }
        }
        if let Some(b'e' | b'E') = bytes.get(self.pos) {
            self.pos += 1;
            integer = false;
            if let Some(b'+' | b'-') = bytes.get(self.pos) {
                self.pos += 1;
            }
            if digits(self) == 0 {
                return Err(self.eof_or("invalid number", "EOF while parsing a value"));
            }
        }
        // Only ASCII was consumed.
        let text = core::str::from_utf8(bytes.get(start..self.pos).unwrap_or_default()).unwrap_or_default();
        Ok((text, integer))
    }

    /// An unsigned integer up to `max`; `expected` names the type (`u16`).
    pub(crate) fn uint(&mut self, max: u64, expected: &str) -> Res<u64> {
        if !matches!(self.peek(), Some(b'-' | b'0'..=b'9')) {
            return Err(self.invalid_type(expected));
        }
        let (text, integer) = self.number_text()?;
        if !integer {
            return Err(self.number_error("invalid type: floating point `", text, expected));
        }
        let mut value: Option<u64> = if text.starts_with('-') { None } else { Some(0) };
        for &d in text.as_bytes() {
            if d.is_ascii_digit() {
                value = value.and_then(|v| v.checked_mul(10)?.checked_add(u64::from(d - b'0')));
            }
        }
        match value {
            Some(v) if v <= max => Ok(v),
            _ => Err(self.number_error("invalid value: integer `", text, expected)),
        }
    }

    pub(crate) fn boolean(&mut self) -> Res<bool> {
        match self.peek() {
            Some(b't' | b'f') => self.boolean_raw(),
            _ => Err(self.invalid_type("a boolean")),
        }
    }

    pub(crate) fn string(&mut self) -> Res<String> {
        match self.peek() {
            Some(b'"') => self.string_raw(),
            _ => Err(self.invalid_type("a string")),
        }
    }

    /// `null` is `None`.
    pub(crate) fn null_or(&mut self) -> Res<bool> {
        if self.peek() == Some(b'n') {
            self.literal(b"null")?;
            return Ok(true);
        }
        Ok(false)
    }

    pub(crate) fn opt_string(&mut self) -> Res<Option<String>> {
        if self.null_or()? {
            return Ok(None);
        }
        self.string().map(Some)
    }

    pub(crate) fn strings(&mut self) -> Res<Vec<String>> {
        let mut out = Vec::new();
        self.array(&mut |r| {
            out.push(r.string()?);
            Ok(())
        })?;
        // A service's hosts, kept until the table is compiled.
        out.shrink_to_fit();
        Ok(out)
    }

    fn hex4(&mut self) -> Res<u32> {
        let mut v = 0;
        for _ in 0..4 {
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.err_next("EOF while parsing a string"));
            };
            self.pos += 1;
            let d = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                b'A'..=b'F' => b - b'A' + 10,
                _ => return Err(self.err("invalid escape")),
            };
            v = v * 16 + u32::from(d);
        }
        Ok(v)
    }

    /// A string at `"`: escapes decoded, UTF-8 checked.
    fn string_raw(&mut self) -> Res<String> {
        self.pos += 1;
        let mut out = String::new();
        loop {
            let start = self.pos;
            while let Some(&b) = self.bytes.get(self.pos) {
                if b == b'"' || b == b'\\' || b < 0x20 {
                    break;
                }
                self.pos += 1;
            }
            let run = self.bytes.get(start..self.pos).unwrap_or_default();
            match core::str::from_utf8(run) {
                Ok(text) => out.push_str(text),
                Err(e) => {
                    self.pos = start + e.valid_up_to() + 1;
                    return Err(self.err("invalid unicode code point"));
                }
            }
            let Some(&b) = self.bytes.get(self.pos) else {
                return Err(self.err_next("EOF while parsing a string"));
            };
            self.pos += 1;
            match b {
                b'"' => return Ok(out),
                b'\\' => {
                    let Some(&e) = self.bytes.get(self.pos) else {
                        return Err(self.err_next("EOF while parsing a string"));
                    };
                    self.pos += 1;
                    let c = match e {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => self.unicode_escape()?,
                        _ => return Err(self.err("invalid escape")),
                    };
                    out.push(c);
                }
                _ => return Err(self.err("control character (\\u0000-\\u001F) found while parsing a string")),
            }
        }
    }

    /// After `\u`: one code point, a surrogate pair joined.
    fn unicode_escape(&mut self) -> Res<char> {
        let first = self.hex4()?;
        let code = match first {
            0xDC00..=0xDFFF => return Err(self.err("lone leading surrogate in hex escape")),
            0xD800..=0xDBFF => {
                if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                    return Err(self.err("lone leading surrogate in hex escape"));
                }
                self.pos += 2;
                let second = self.hex4()?;
                if !(0xDC00..=0xDFFF).contains(&second) {
                    return Err(self.err("lone leading surrogate in hex escape"));
                }
                0x10000 + ((first - 0xD800) << 10) + (second - 0xDC00)
            }
            c => c,
        };
        char::from_u32(code).ok_or_else(|| self.err("invalid unicode code point"))
    }

    fn push_segment(&mut self, key: Option<&str>, index: usize) -> usize {
        let mark = self.path.len();
        match key {
            Some(key) => {
                if mark > 0 {
                    self.path.push('.');
                }
                push_key(&mut self.path, key);
            }
            None => {
                self.path.push('[');
                push_u64(&mut self.path, index as u64);
                self.path.push(']');
            }
        }
        mark
    }

    /// Reads an object, calling `member` for each member; `expected` names
    /// the object in a type error (`a map`, `struct RawConfig`).
    pub(crate) fn object(&mut self, expected: &str, member: OnMember<'_, 'a>) -> Res<()> {
        if self.peek() != Some(b'{') {
            return Err(self.invalid_type(expected));
        }
        self.enter()?;
        self.pos += 1;
        // The caller's key, restored on the way out: it may still report on
        // it (a duplicate map key is found after its value is read).
        let outer_key = (self.key_mark, self.key_end);
        if self.peek() == Some(b'}') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            match self.peek() {
                Some(b'"') => {}
                Some(b'}') => return Err(self.err_next("trailing comma")),
                None => return Err(self.err_next("EOF while parsing an object")),
                Some(_) => return Err(self.err_next("key must be a string")),
            }
            let key = self.string_raw()?;
            let key_end = self.pos;
            match self.peek() {
                Some(b':') => self.pos += 1,
                _ => return Err(self.eof_or("expected `:`", "EOF while parsing an object")),
            }
            let mark = self.push_segment(Some(&key), 0);
            (self.key_mark, self.key_end) = (mark, key_end);
            member(self, key)?;
            self.path.truncate(mark);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => break,
                _ => return Err(self.eof_or("expected `,` or `}`", "EOF while parsing an object")),
            }
        }
        self.pos += 1;
        self.depth -= 1;
        (self.key_mark, self.key_end) = outer_key;
        Ok(())
    }

    /// Reads an array, calling `element` for each element.
    pub(crate) fn array(&mut self, element: &mut dyn FnMut(&mut Reader<'a>) -> Res<()>) -> Res<()> {
        if self.peek() != Some(b'[') {
            return Err(self.invalid_type("a sequence"));
        }
        self.enter()?;
        self.pos += 1;
        if self.peek() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            match self.peek() {
                Some(b']') => return Err(self.err_next("trailing comma")),
                None => return Err(self.err_next("EOF while parsing a list")),
                Some(_) => {}
            }
            let mark = self.push_segment(None, index);
            element(self)?;
            self.path.truncate(mark);
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => break,
                _ => return Err(self.eof_or("expected `,` or `]`", "EOF while parsing a list")),
            }
            index += 1;
        }
        self.pos += 1;
        self.depth -= 1;
        Ok(())
    }

    /// Reads and drops any value.
    pub(crate) fn skip(&mut self) -> Res<()> {
        match self.peek() {
            Some(b'{') => self.object("a map", &mut |r, _| r.skip()),
            Some(b'[') => self.array(&mut |r| r.skip()),
            Some(b'"') => self.string_raw().map(drop),
            Some(b't' | b'f') => self.boolean_raw().map(drop),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number_text().map(drop),
            _ => Err(self.eof_or("expected value", "EOF while parsing a value")),
        }
    }

    /// For a struct member: the index of `key` in `fields`, refusing a field
    /// given twice (`seen` holds one bit per field). An unknown key is an
    /// error naming it, or in a lenient parse `None` with its value skipped.
    pub(crate) fn field(&mut self, key: String, fields: &[&str], seen: &mut u32) -> Res<Option<usize>> {
        if let Some(i) = fields.iter().position(|f| *f == key) {
            if *seen & (1 << i) != 0 {
                let mut m = String::from("duplicate field ");
                push_shown(&mut m, &key, "`");
                return Err(self.err_key(&m, false));
            }
            *seen |= 1 << i;
            return Ok(Some(i));
        }
        if let Some(list) = self.unknown.as_mut() {
            // Shown as in a path: the caller logs them.
            if list.len() < MAX_UNKNOWN_KEPT {
                let mut shown = String::new();
                push_key(&mut shown, &key);
                list.push(shown);
            }
            self.skip()?;
            return Ok(None);
        }
        let mut m = String::from("unknown field ");
        push_shown(&mut m, &key, "`");
        m.push_str(", expected ");
        push_one_of(&mut m, fields);
        Err(self.err_key(&m, true))
    }

    /// A name given twice in the map just read (found once it is sorted:
    /// the error is at the map's end).
    pub(crate) fn duplicate_key(&self, key: &str) -> JsonError {
        let mut m = String::from("duplicate key ");
        push_quoted(&mut m, key);
        self.err(&m)
    }

    /// Counts the member just keyed as one more of `field`: past `limit`,
    /// an error at its key with `field` as its path (`services.*.clusters`).
    pub(crate) fn count(&self, count: &mut usize, limit: usize, field: &str) -> Res<()> {
        *count += 1;
        if *count <= limit {
            return Ok(());
        }
        let mut m = String::new();
        push_u64(&mut m, *count as u64);
        m.push_str(" exceeds the limit of ");
        push_u64(&mut m, limit as u64);
        Err(self.error_at(field, self.key_end, &m))
    }

    /// A required struct field that was absent (after the object).
    pub(crate) fn missing(&self, field: &str) -> JsonError {
        let mut m = String::from("missing field ");
        push_shown(&mut m, field, "`");
        self.err(&m)
    }

    /// A string naming one of `variants`; its index.
    pub(crate) fn variant(&mut self, variants: &[&str]) -> Res<usize> {
        let s = self.string()?;
        match variants.iter().position(|v| *v == s) {
            Some(i) => Ok(i),
            None => Err(self.err(&unknown_variant(&s, variants))),
        }
    }
}
