//! Group names and the request values they are read from: the group header,
//! the W3C `baggage` member, the cookie, and the strict list. Everything here
//! works on bytes (headers may hold anything) and allocates nothing.

#[allow(unused_imports)]
use crate::prelude::*;

use core::fmt;

/// Longest DNS-1123 label.
pub const MAX_GROUP_LEN: usize = 63;

/// `^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`, taken as-is (no case folding).
pub fn is_valid_group(name: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (name.first(), name.last()) else {
        return false;
    };
    name.len() <= MAX_GROUP_LEN && is_alnum(first) && is_alnum(last) && name.iter().all(|&b| is_alnum(b) || b == b'-')
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A validated group name held inline (no heap), so extraction from a
/// percent-encoded baggage value needs no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct GroupName {
    len: u8,
    bytes: [u8; MAX_GROUP_LEN],
}

impl GroupName {
    /// `None` unless `name` is a valid group name.
    pub fn new(name: &[u8]) -> Option<Self> {
        if !is_valid_group(name) {
            return None;
        }
        let mut bytes = [0u8; MAX_GROUP_LEN];
        bytes.get_mut(..name.len())?.copy_from_slice(name);
        Some(Self { len: name.len() as u8, bytes })
    }

    /// The name's bytes, without `as_str`'s UTF-8 check (the request
    /// path compares bytes).
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.get(..self.len as usize).unwrap_or_default()
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII ever gets in (checked by `new`); the fallback is unreachable.
        core::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }
}

impl fmt::Debug for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::text::text_of(&crate::json::Quoted(self.as_str())))
    }
}

impl crate::text::Piece for GroupName {
    fn push_to(&self, out: &mut String) {
        out.push_str(self.as_str());
    }
}

impl fmt::Display for GroupName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one source said about the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The source does not carry a group.
    Absent,
    /// The source carries a value that is not a valid group name: skip it,
    /// count it, and strip it from what is forwarded.
    Invalid,
    Found(GroupName),
}

/// A group header value (`x-isogroup: feature-1`). Surrounding whitespace is
/// trimmed as HTTP allows; anything else invalid is `Invalid`.
pub fn from_header(value: &[u8]) -> Lookup {
    match GroupName::new(value.trim_ascii()) {
        Some(g) => Lookup::Found(g),
        None => Lookup::Invalid,
    }
}

/// The member `key` of a W3C `baggage` header value: members split on `,`,
/// whitespace trimmed, properties after `;` ignored, value percent-decoded.
/// The first member with that key decides.
pub fn from_baggage(value: &[u8], key: &str) -> Lookup {
    for member in value.split(|&b| b == b',') {
        let Some((k, v)) = baggage_key_value(member) else {
            continue;
        };
        if k != key.as_bytes() {
            continue;
        }
        return match percent_decode_group(v) {
            Some(g) => Lookup::Found(g),
            None => Lookup::Invalid,
        };
    }
    Lookup::Absent
}

/// `key=value;props` → (key, value), trimmed.
fn baggage_key_value(member: &[u8]) -> Option<(&[u8], &[u8])> {
    let kv = member.split(|&b| b == b';').next()?;
    let (k, v) = crate::text::split_byte(kv, b'=')?;
    Some((k.trim_ascii(), v.trim_ascii()))
}

fn percent_decode_group(v: &[u8]) -> Option<GroupName> {
    let mut out = [0u8; MAX_GROUP_LEN];
    let mut n = 0;
    let mut i = 0;
    while i < v.len() {
        let b = if v[i] == b'%' {
            let hi = hex(*v.get(i + 1)?)?;
            let lo = hex(*v.get(i + 2)?)?;
            i += 3;
            hi << 4 | lo
        } else {
            i += 1;
            v[i - 1]
        };
        *out.get_mut(n)? = b;
        n += 1;
    }
    GroupName::new(out.get(..n)?)
}

pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `baggage` with every member named `key` removed, other members kept as
/// they were. `None` when nothing is left (drop the header).
pub fn baggage_without(value: &[u8], key: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(value.len());
    for member in value.split(|&b| b == b',') {
        if matches!(baggage_key_value(member), Some((k, _)) if k == key.as_bytes()) {
            continue;
        }
        if member.trim_ascii().is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(b',');
        }
        out.extend_from_slice(member.trim_ascii());
    }
    (!out.is_empty()).then_some(out)
}

/// `baggage` with the member `key` set to `group`: replaces an existing member
/// with that key, keeps every other member and their order.
pub fn baggage_with(value: Option<&[u8]>, key: &str, group: &str) -> Vec<u8> {
    let mut out = value.and_then(|v| baggage_without(v, key)).unwrap_or_default();
    if !out.is_empty() {
        out.push(b',');
    }
    out.extend_from_slice(key.as_bytes());
    out.push(b'=');
    out.extend_from_slice(group.as_bytes());
    out
}

/// The value of cookie `name` in a `cookie` header (`a=1; isogroup=blue`).
pub fn cookie_value<'a>(header: &'a [u8], name: &str) -> Option<&'a [u8]> {
    header.split(|&b| b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let (k, v) = crate::text::split_byte(pair, b'=')?;
        (k == name.as_bytes()).then(|| trim_quotes(v))
    })
}

fn trim_quotes(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Whether a strict-list header value (`svc,svc` or `*`) names `service`.
pub fn strict_lists(value: &[u8], service: &str) -> bool {
    // A loop, not `map(..).any(..)`: one generic try_fold less in the wasm.
    for s in value.split(|&b| b == b',') {
        let s = s.trim_ascii();
        if s == b"*" || s == service.as_bytes() {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names() {
        let cases: &[(&[u8], bool)] = &[
            (b"base", true),
            (b"a", true),
            (b"0", true),
            (b"feature-1", true),
            (b"a-b-c9", true),
            (&[b'a'; 63], true),
            (&[b'a'; 64], false),
            (b"", false),
            (b"-a", false),
            (b"a-", false),
            (b"Feature", false),
            (b"a_b", false),
            (b"a.b", false),
            (b"a b", false),
            (b"\xffab", false),
        ];
        for (name, ok) in cases {
            assert_eq!(is_valid_group(name), *ok, "{:?}", String::from_utf8_lossy(name));
            assert_eq!(GroupName::new(name).is_some(), *ok);
        }
        assert_eq!(GroupName::new(b"team-a").map(|g| g.to_string()).as_deref(), Some("team-a"));
    }

    fn found(s: &str) -> Lookup {
        Lookup::Found(GroupName::new(s.as_bytes()).unwrap())
    }

    #[test]
    fn header_values() {
        assert_eq!(from_header(b"feature-1"), found("feature-1"));
        assert_eq!(from_header(b"  feature-1\t"), found("feature-1"));
        assert_eq!(from_header(b"Feature-1"), Lookup::Invalid);
        assert_eq!(from_header(b""), Lookup::Invalid);
        assert_eq!(from_header(b"\xc3\x28"), Lookup::Invalid);
        assert_eq!(from_header(&[b'a'; 5000]), Lookup::Invalid);
    }

    #[test]
    fn baggage_members() {
        let cases: &[(&str, Lookup)] = &[
            ("isogroup=feature-1", found("feature-1")),
            ("  isogroup = feature-1 ", found("feature-1")),
            ("userId=alice,isogroup=team-a", found("team-a")),
            ("userId=alice, isogroup=team-a;prop=1;flag , other=x", found("team-a")),
            ("isogroup=team%2Da", found("team-a")),
            ("isogroup=team%2da", found("team-a")),
            ("isogroup=Team-A", Lookup::Invalid),
            ("isogroup=team%zz", Lookup::Invalid),
            ("isogroup=team%2", Lookup::Invalid),
            ("isogroup=", Lookup::Invalid),
            ("isogroupx=team-a", Lookup::Absent),
            ("xisogroup=team-a,", Lookup::Absent),
            ("", Lookup::Absent),
            ("isogroup", Lookup::Absent),
            (",,,", Lookup::Absent),
            ("isogroup=bad_one,isogroup=team-a", Lookup::Invalid),
        ];
        for (value, want) in cases {
            assert_eq!(from_baggage(value.as_bytes(), "isogroup"), *want, "{value:?}");
        }
        let long = format!("isogroup={}", "a".repeat(64));
        assert_eq!(from_baggage(long.as_bytes(), "isogroup"), Lookup::Invalid);
        let encoded_long = format!("isogroup={}", "%61".repeat(64));
        assert_eq!(from_baggage(encoded_long.as_bytes(), "isogroup"), Lookup::Invalid);
    }

    #[test]
    fn baggage_rewrites() {
        assert_eq!(baggage_without(b"a=1, isogroup=BAD;p, b=2", "isogroup").as_deref(), Some(&b"a=1,b=2"[..]));
        assert_eq!(baggage_without(b"isogroup=x", "isogroup"), None);
        assert_eq!(baggage_with(Some(b"a=1,isogroup=old"), "isogroup", "new"), b"a=1,isogroup=new");
        assert_eq!(baggage_with(None, "isogroup", "new"), b"isogroup=new");
        assert_eq!(baggage_with(Some(b"a=1;p=2"), "isogroup", "g"), b"a=1;p=2,isogroup=g");
    }

    #[test]
    fn cookies() {
        let cases: &[(&str, Option<&str>)] = &[
            ("isogroup=blue", Some("blue")),
            ("a=1; isogroup=blue; b=2", Some("blue")),
            ("a=1;isogroup=\"blue\"", Some("blue")),
            ("xisogroup=blue", None),
            ("isogroupx=blue", None),
            ("", None),
            ("isogroup", None),
        ];
        for (header, want) in cases {
            assert_eq!(cookie_value(header.as_bytes(), "isogroup"), want.map(str::as_bytes), "{header:?}");
        }
    }

    #[test]
    fn strict_list() {
        let cases: &[(&str, &str, bool)] = &[
            ("reviews", "reviews", true),
            ("ratings, reviews", "reviews", true),
            (" ratings ,reviews ", "reviews", true),
            ("*", "anything", true),
            ("ratings, *", "reviews", true),
            ("ratings", "reviews", false),
            ("review", "reviews", false),
            ("reviews-x", "reviews", false),
            ("", "reviews", false),
        ];
        for (value, service, want) in cases {
            assert_eq!(strict_lists(value.as_bytes(), service), *want, "{value:?} {service:?}");
        }
    }
}
