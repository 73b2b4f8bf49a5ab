//! The JSON reader on its own: strings and escapes, numbers, structure,
//! nesting, trailing bytes, duplicate keys, and where errors point.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::json::{document, push_u64, Reader, Res, MAX_DEPTH};

/// `{"s": <value>}` read as one string; the error as `path: message`.
fn string_at(value: &[u8]) -> Result<String, String> {
    let mut doc = b"{\"s\":".to_vec();
    doc.extend_from_slice(value);
    doc.push(b'}');
    let mut out = String::new();
    document(&doc, false, &mut |r: &mut Reader<'_>| {
        r.object("a map", &mut |r, _| {
            out = r.string()?;
            Ok(())
        })
    })
    .map_err(|e| format!("{}: {}", e.path, e.message))?;
    Ok(out)
}

#[test]
fn strings_and_escapes() {
    let cases: &[(&[u8], Result<&str, &str>)] = &[
        (br#""plain""#, Ok("plain")),
        (br#""""#, Ok("")),
        (br#""a\"b\\c\/d""#, Ok("a\"b\\c/d")),
        (br#""\b\f\n\r\t""#, Ok("\u{8}\u{c}\n\r\t")),
        (br#""\u0041\u00e9\u20AC""#, Ok("Aé€")),
        (br#""\ud83d\ude00""#, Ok("😀")),
        ("\"é😀 raw UTF-8\"".as_bytes(), Ok("é😀 raw UTF-8")),
        (br#""\u0000""#, Ok("\u{0}")),
        (br#""\ud83d""#, Err("s: lone leading surrogate in hex escape at line 1 column 12")),
        (br#""\ud83d\u0041""#, Err("s: lone leading surrogate in hex escape at line 1 column 18")),
        (br#""\ude00""#, Err("s: lone leading surrogate in hex escape at line 1 column 12")),
        (br#""\u12G4""#, Err("s: invalid escape at line 1 column 11")),
        (br#""\x""#, Err("s: invalid escape at line 1 column 8")),
        (b"\"a\nb\"", Err("s: control character (\\u0000-\\u001F) found while parsing a string at line 2 column 0")),
        (b"\"\xff\"", Err("s: invalid unicode code point at line 1 column 7")),
        (b"\"ok\xc3\"", Err("s: invalid unicode code point at line 1 column 9")),
        (b"\"open", Err("s: EOF while parsing a string at line 1 column 11")),
        (b"5", Err("s: invalid type: integer `5`, expected a string at line 1 column 6")),
        (b"null", Err("s: invalid type: null, expected a string at line 1 column 9")),
    ];
    for (input, want) in cases {
        let got = string_at(input);
        assert_eq!(got.as_deref(), want.map_err(str::to_owned).as_deref(), "{}", String::from_utf8_lossy(input));
    }
}

/// `{"n": <value>}` read as an integer up to `max`.
fn uint_at(value: &str, max: u64) -> Result<u64, String> {
    let doc = format!(r#"{{"n":{value}}}"#);
    let mut out = 0;
    document(doc.as_bytes(), false, &mut |r: &mut Reader<'_>| {
        r.object("a map", &mut |r, _| {
            out = r.uint(max, "u16")?;
            Ok(())
        })
    })
    .map_err(|e| format!("{}: {}", e.path, e.message))?;
    Ok(out)
}

#[test]
fn integers_only() {
    let cases: &[(&str, Result<u64, &str>)] = &[
        ("0", Ok(0)),
        ("65535", Ok(65535)),
        (" 7 ", Ok(7)),
        ("65536", Err("n: invalid value: integer `65536`, expected u16 at line 1 column 10")),
        ("-1", Err("n: invalid value: integer `-1`, expected u16 at line 1 column 7")),
        (
            "99999999999999999999999",
            Err("n: invalid value: integer `99999999999999999999999`, expected u16 at line 1 column 28"),
        ),
        ("1.5", Err("n: invalid type: floating point `1.5`, expected u16 at line 1 column 8")),
        ("1e3", Err("n: invalid type: floating point `1e3`, expected u16 at line 1 column 8")),
        ("01", Err("n: invalid number at line 1 column 7")),
        ("1.", Err("n: invalid number at line 1 column 8")),
        ("-", Err("n: invalid number at line 1 column 7")),
        ("\"7\"", Err("n: invalid type: string \"7\", expected u16 at line 1 column 8")),
        ("true", Err("n: invalid type: boolean `true`, expected u16 at line 1 column 9")),
        ("[7]", Err("n: invalid type: sequence, expected u16 at line 1 column 6")),
    ];
    for (input, want) in cases {
        assert_eq!(uint_at(input, u64::from(u16::MAX)), want.map_err(str::to_owned), "{input}");
    }
}

/// Skips any document; the error as `path: message`.
fn skip(doc: &[u8]) -> Result<(), String> {
    document(doc, false, &mut |r: &mut Reader<'_>| r.skip()).map(drop).map_err(|e| format!("{}: {}", e.path, e.message))
}

#[test]
fn structure() {
    let deep_ok = format!("{}{}", "[".repeat(MAX_DEPTH), "]".repeat(MAX_DEPTH));
    let too_deep = format!("{}{}", "[".repeat(MAX_DEPTH + 1), "]".repeat(MAX_DEPTH + 1));
    let too_deep_error =
        format!("{}: recursion limit exceeded at line 1 column {}", "[0]".repeat(MAX_DEPTH), MAX_DEPTH + 1);
    let cases: &[(&[u8], Result<(), &str>)] = &[
        (b" {\"a\": [1, -2, 3.5e-1, true, false, null, \"x\", {}, []]}\n", Ok(())),
        (deep_ok.as_bytes(), Ok(())),
        (too_deep.as_bytes(), Err(&too_deep_error)),
        (b"", Err("(document): EOF while parsing a value at line 1 column 0")),
        (b"{} {}", Err("(document): trailing characters at line 1 column 4")),
        (b"1 2", Err("(document): trailing characters at line 1 column 3")),
        (b"{\"a\":1,}", Err("(document): trailing comma at line 1 column 8")),
        (b"[1,]", Err("(document): trailing comma at line 1 column 4")),
        (b"{\"a\" 1}", Err("(document): expected `:` at line 1 column 6")),
        (b"{\"a\":1 \"b\":2}", Err("(document): expected `,` or `}` at line 1 column 8")),
        (b"[1 2]", Err("(document): expected `,` or `]` at line 1 column 4")),
        (b"{\"a\":[", Err("a: EOF while parsing a list at line 1 column 6")),
        (b"{\"a\":{", Err("a: EOF while parsing an object at line 1 column 6")),
        (b"{1:2}", Err("(document): key must be a string at line 1 column 2")),
        (b"nul", Err("(document): EOF while parsing a value at line 1 column 3")),
        (b"nulx", Err("(document): expected ident at line 1 column 4")),
        (b"{\n  \"a\": @}", Err("a: expected value at line 2 column 8")),
    ];
    for (input, want) in cases {
        assert_eq!(skip(input), want.map_err(str::to_owned), "{}", String::from_utf8_lossy(input));
    }
}

/// Struct fields: known ones once each, unknown ones refused (or skipped and
/// listed when lenient), required ones present.
fn fields(doc: &str, lenient: bool) -> Result<(Vec<usize>, Vec<String>), String> {
    let mut seen_fields = Vec::new();
    let read = &mut |r: &mut Reader<'_>| -> Res<()> {
        let mut seen = 0;
        r.object("a thing", &mut |r, key| {
            if let Some(i) = r.field(key, &["a", "b"], &mut seen)? {
                r.skip()?;
                seen_fields.push(i);
            }
            Ok(())
        })?;
        if seen & 1 == 0 {
            return Err(r.missing("a"));
        }
        Ok(())
    };
    let ((), unknown) = document(doc.as_bytes(), lenient, read).map_err(|e| format!("{}: {}", e.path, e.message))?;
    Ok((seen_fields, unknown))
}

#[test]
fn struct_fields() {
    type Want<'a> = Result<(Vec<usize>, Vec<&'a str>), &'a str>;
    let cases: &[(&str, bool, Want)] = &[
        (r#"{"b":1,"a":{"x":[]}}"#, false, Ok((vec![1, 0], vec![]))),
        (r#"{"a":1,"a":2}"#, false, Err("(document): duplicate field `a` at line 1 column 10")),
        (r#"{"a":1,"c":2}"#, false, Err("c: unknown field `c`, expected `a` or `b` at line 1 column 10")),
        (r#"{"a":1,"c":{"d":[1]},"e":null}"#, true, Ok((vec![0], vec!["c", "e"]))),
        (r#"{"a":1,"a":2}"#, true, Err("(document): duplicate field `a` at line 1 column 10")),
        (r#"{"b":1}"#, false, Err("(document): missing field `a` at line 1 column 7")),
        (r#"[]"#, false, Err("(document): invalid type: sequence, expected a thing at line 1 column 1")),
    ];
    for (input, lenient, want) in cases {
        let want = want.clone().map(|(f, u)| (f, u.into_iter().map(str::to_owned).collect())).map_err(str::to_owned);
        assert_eq!(fields(input, *lenient), want, "{input}");
    }
}

#[test]
fn decimal() {
    for n in [0, 7, 10, 65535, u64::MAX] {
        let mut s = String::new();
        push_u64(&mut s, n);
        assert_eq!(s, n.to_string());
    }
}

/// Duplicate map keys and the table's wording, through the schema: found
/// once the map is sorted, so wherever they are, reported at the map's end.
#[test]
fn duplicate_map_keys_are_refused() {
    let cases = [
        (r#"{"groups":{"a":{},"a":{}}}"#, "groups: duplicate key \"a\" at line 1 column 25"),
        (r#"{"groups":{"b":{},"a":{},"c":{},"b":{}}}"#, "groups: duplicate key \"b\" at line 1 column 39"),
        (
            r#"{"services":{"r":{"hosts":["r"],"clusters":{"base":"c","g":"e","base":"d"}}}}"#,
            "services.r.clusters: duplicate key \"base\" at line 1 column 74",
        ),
    ];
    for (input, want) in cases {
        let err = crate::RawTable::from_json(input.as_bytes(), &crate::Limits::default()).unwrap_err();
        assert_eq!(err.to_string(), want, "{input}");
    }
}

/// `{"services":{…}}` with services `s<i>` for each `i` of `order`, names
/// zero-padded so that name order is number order.
fn services_doc(order: impl Iterator<Item = usize>) -> String {
    let mut doc = String::from(r#"{"services":{"#);
    for (k, i) in order.enumerate() {
        if k > 0 {
            doc.push(',');
        }
        doc.push_str(&format!(r#""s{i:06}":{{"hosts":["h{i}"],"clusters":{{"base":"c"}}}}"#));
    }
    doc.push_str("}}");
    doc
}

/// The default limit's 100 000 services, in reverse name order: read in
/// O(n log n) steps (names compared, entries moved), not one shift of the
/// whole map per name (n²/2 = 5·10⁹ steps: seconds per worker in a VM).
#[test]
fn names_in_reverse_order_read_in_n_log_n() {
    let n = crate::Limits::default().max_services;
    let doc = services_doc((0..n).rev());
    let before = crate::vec_map::steps();
    let raw = crate::RawTable::from_json(doc.as_bytes(), &crate::Limits::default()).unwrap();
    let steps = crate::vec_map::steps() - before;
    assert_eq!(raw.services.len(), n);
    assert!(raw.services.keys().zip(raw.services.keys().skip(1)).all(|(a, b)| a < b), "in name order");
    assert_eq!(raw.services.get("s000007").map(|s| s.hosts.clone()), Some(vec!["h7".to_owned()]));
    let log2 = (usize::BITS - n.leading_zeros()) as u64; // 17
    assert!(steps <= 4 * n as u64 * log2, "{steps} steps for {n} names");
}

/// Limits are counted while the table is read: the member one past a limit
/// ends the read at its key, whatever follows. Each body here is cut short,
/// which a read to the end would report instead.
#[test]
fn a_limit_stops_the_read_at_the_member_past_it() {
    let limits = crate::Limits { max_services: 3, max_groups: 2, max_cluster_entries: 4, ..crate::Limits::default() };
    let cut = |doc: &str| doc.trim_end_matches('}').to_owned();
    // The column of `key`'s closing quote.
    let at = |doc: &str, key: &str| doc.find(key).unwrap() + key.len();
    let services = cut(&services_doc(0..6));
    let groups = r#"{"groups":{"a":{},"b":{},"c":{},"d":"#.to_owned();
    let clusters = r#"{"services":{"a":{"hosts":["a"],"clusters":{"base":"x","g":"y"}},"b":{"hosts":["b"],"clusters":{"base":"x","g":"y","h":"z","i":"#.to_owned();
    let cases = [
        (&services, format!("services: 4 exceeds the limit of 3 at line 1 column {}", at(&services, r#""s000003""#))),
        (&groups, format!("groups: 3 exceeds the limit of 2 at line 1 column {}", at(&groups, r#""c""#))),
        (
            &clusters,
            format!("services.*.clusters: 5 exceeds the limit of 4 at line 1 column {}", at(&clusters, r#""h""#)),
        ),
    ];
    for (doc, want) in &cases {
        let err = crate::RawTable::from_json(doc.as_bytes(), &limits).unwrap_err().to_string();
        assert_eq!(&err, want, "{doc}");
        let lenient = crate::RawTable::from_companion_json(doc.as_bytes(), &limits).unwrap_err().to_string();
        assert_eq!(&lenient, want, "{doc}");
    }
    // At the limits a whole table reads.
    let whole = services_doc(0..3);
    assert_eq!(crate::RawTable::from_json(whole.as_bytes(), &limits).map(|t| t.services.len()), Ok(3));
}

/// Keys from a table are shown quoted and escaped in every message unless
/// plain, and cut when long: a key cannot end a log line, forge the next
/// one, hide text (bidirectional controls) or flood the log.
#[test]
fn keys_in_messages_are_escaped_and_cut() {
    let long = "k".repeat(100_000);
    let cases: Vec<(String, String)> = vec![
        // the reader's path and its own messages
        (r#"{"services":{"a\nb":{"hosts":5}}}"#.into(), r#"services."a\nb".hosts: invalid type: integer `5`, expected a sequence at line 1 column 30"#.into()),
        (
            r#"{"groups":{"g":{"a\r\u001b[2Jb":1}}}"#.into(),
            r#"groups.g."a\u{0d}\u{1b}[2Jb": unknown field "a\u{0d}\u{1b}[2Jb", expected one of `fallback`, `mode`, `description`, `owner` at line 1 column 31"#.into(),
        ),
        (
            r#"{"groups":{"g":{"mode":"strict\u2028x"}}}"#.into(),
            r#"groups.g.mode: unknown variant "strict\u{2028}x", expected `permissive` or `strict` at line 1 column 38"#.into(),
        ),
        (
            format!(r#"{{"groups":{{"{long}":{{"mode":1}}}}}}"#),
            format!(r#"groups."{}"....mode: invalid type: integer `1`, expected a string at line 1 column 100023"#, "k".repeat(256)),
        ),
        (
            r#"{"groups":{"\u202egnp.exe":{},"\u202egnp.exe":{}}}"#.into(),
            r#"groups: duplicate key "\u{202e}gnp.exe" at line 1 column 49"#.into(),
        ),
        // the compiled table's checks
        (
            r#"{"groups":{"a\nb":{}}}"#.into(),
            r#"groups."a\nb": "a\nb" is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)"#.into(),
        ),
        (
            r#"{"services":{"a\u0085b":{"hosts":[],"clusters":{"base":"c"}}}}"#.into(),
            r#"services."a\u{85}b": "a\u{85}b" is not a valid service name (lower-case letters, digits, '-' and '.', at most 253)"#.into(),
        ),
        (
            r#"{"services":{"r":{"hosts":["r"],"clusters":{"base":"c","x\ty":"d"}}}}"#.into(),
            r#"services.r.clusters."x\u{09}y": "x\u{09}y" is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)"#.into(),
        ),
    ];
    for (doc, want) in &cases {
        let got = match crate::Table::from_json(doc.as_bytes(), "base", &crate::Limits::default()) {
            Ok(_) => "accepted".to_owned(),
            Err(e) => e.to_string(),
        };
        assert_eq!(&got, want, "{}", &doc[..doc.len().min(80)]);
        assert!(!got.chars().any(|c| c.is_control()), "{got}");
    }
    // A newer companion's fields, listed for the log: shown as in a path,
    // at most 16 of them.
    let mut doc = String::from(r#"{"x\ny":1,"plain":2"#);
    for i in 0..30 {
        doc.push_str(&format!(r#","f{i}":0"#));
    }
    doc.push('}');
    let (_, unknown) = crate::RawTable::from_companion_json(doc.as_bytes(), &crate::Limits::default()).unwrap();
    assert_eq!(unknown.len(), 16);
    assert_eq!(unknown[..3], [r#""x\ny""#, "plain", "f0"]);
}
