//! Table epochs and the order of tables.
//!
//! A store stamps its tables with an epoch, `"<unix-ms>-<random>"`, made once
//! when the store gets its first write (or, for a read-only file, once per
//! start). Versions count within one epoch; a store that was wiped and
//! re-seeded gets a new, later epoch, so its tables win over the old ones even
//! though its versions start again from low numbers.
//!
//! Tables are ordered by (epoch, version): the epoch's number, then its random
//! part bytewise, then the version. A missing or malformed epoch is lowest, so
//! two epochless tables compare by version (the first-round rule).
//!
//! Core stays pure: the clock and the random bytes come from the caller.

#[allow(unused_imports)]
use crate::prelude::*;

use core::cmp::Ordering;

/// The longest random part accepted (a generated one has 16 hex digits).
pub const MAX_RANDOM_LEN: usize = 64;
/// How many random bytes `generate` takes.
pub const RANDOM_BYTES: usize = 8;

/// A parsed epoch; borrows the random part from the string it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Epoch<'a> {
    /// Unix milliseconds when the epoch was made (or a number above an
    /// earlier epoch's, when the clock was behind).
    pub number: u64,
    /// ASCII letters and digits, compared bytewise.
    pub random: &'a [u8],
}

impl<'a> Epoch<'a> {
    /// `None` for anything but `<digits>-<letters or digits>`: the number in
    /// canonical decimal (no sign, no leading zero) that fits a u64, the
    /// random part 1 to 64 ASCII letters or digits. Canonical forms only, so
    /// two strings are equal exactly when their epochs are.
    pub fn parse(text: &'a str) -> Option<Epoch<'a>> {
        let (number, random) = crate::text::split_once_ascii(text, b'-')?;
        let digits = number.as_bytes();
        let canonical = match digits {
            [] => false,
            [b'0'] => true,
            [first, ..] => *first != b'0' && digits.iter().all(u8::is_ascii_digit),
        };
        if !canonical {
            return None;
        }
        let number = crate::text::parse_u64(number.as_bytes())?;
        let random = random.as_bytes();
        if random.is_empty() || random.len() > MAX_RANDOM_LEN || !random.iter().all(u8::is_ascii_alphanumeric) {
            return None;
        }
        Some(Epoch { number, random })
    }
}

impl Ord for Epoch<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        self.number.cmp(&other.number).then_with(|| self.random.cmp(other.random))
    }
}

impl PartialOrd for Epoch<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Where a table stands in the order: (epoch, version). A missing or
/// malformed epoch is `None`, which is below every epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp<'a> {
    // Field order is the comparison order (derived `Ord`).
    pub epoch: Option<Epoch<'a>>,
    pub version: u64,
}

impl<'a> Stamp<'a> {
    pub fn new(epoch: Option<&'a str>, version: u64) -> Stamp<'a> {
        Stamp { epoch: epoch.and_then(Epoch::parse), version }
    }

    /// True when `self` should replace a table stamped `other`.
    pub fn is_newer_than(&self, other: &Stamp<'_>) -> bool {
        self > other
    }
}

/// A table's place in the order, owned: (epoch, version). What a poller
/// holds, in the wasm build and the native one alike.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub version: u64,
    pub epoch: Option<String>,
}

impl Held {
    pub fn of(table: &crate::Table) -> Held {
        Held { version: table.version(), epoch: table.epoch().map(str::to_owned) }
    }

    pub fn stamp(&self) -> Stamp<'_> {
        Stamp::new(self.epoch.as_deref(), self.version)
    }

    /// The shared-data form: `"<version>[ <epoch>]"`.
    pub fn encode(&self) -> String {
        match &self.epoch {
            Some(e) => crate::cat!(self.version, " ", e),
            None => crate::text::text_of(&self.version),
        }
    }

    pub fn decode(bytes: &[u8]) -> Option<Held> {
        let text = core::str::from_utf8(bytes).ok()?;
        let (version, epoch) = match crate::text::split_once_ascii(text, b' ') {
            Some((v, e)) => (v, Some(e.to_owned())),
            None => (text, None),
        };
        Some(Held { version: crate::text::parse_u64(version.as_bytes())?, epoch })
    }

    /// True when `self` should replace `other` (anything replaces nothing).
    pub fn is_newer_than(&self, other: Option<&Held>) -> bool {
        other.is_none_or(|o| self.stamp().is_newer_than(&o.stamp()))
    }
}

/// Whether two stamps, (version, epoch) as held or as a table read has
/// them, are the same: one body for every such check of the delta path.
#[inline(never)]
pub fn same(a: (u64, &Option<String>), b: (u64, &Option<String>)) -> bool {
    a == b
}

/// Compares two tables by (epoch, version), as the SPEC orders them.
pub fn compare(a_epoch: Option<&str>, a_version: u64, b_epoch: Option<&str>, b_version: u64) -> Ordering {
    Stamp::new(a_epoch, a_version).cmp(&Stamp::new(b_epoch, b_version))
}

/// Makes a new epoch: its number is `now_ms`, or one above `previous` (the
/// number of the epoch it replaces, if known) when the clock is not ahead of
/// it; the random part is `random` in lower-case hex.
pub fn generate(now_ms: u64, previous: Option<u64>, random: [u8; RANDOM_BYTES]) -> String {
    let number = match previous {
        Some(p) => now_ms.max(p.saturating_add(1)),
        None => now_ms,
    };
    let mut out = String::with_capacity(21 + 1 + 2 * RANDOM_BYTES);
    crate::json::push_u64(&mut out, number);
    out.push('-');
    for b in random {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use core::cmp::Ordering::{self, Equal, Greater, Less};

    use super::{compare, generate, Epoch, Stamp};
    use crate::{Limits, RawTable, Table};

    #[test]
    fn parse() {
        let cases: &[(&str, Option<(u64, &str)>)] = &[
            ("1764190000000-a1b2", Some((1_764_190_000_000, "a1b2"))),
            ("0-x", Some((0, "x"))),
            ("18446744073709551615-Z9", Some((u64::MAX, "Z9"))),
            (&format!("5-{}", "a".repeat(64)), Some((5, &*"a".repeat(64)))),
            ("", None),
            ("-", None),
            ("123", None),                    // no random part
            ("123-", None),                   // empty random part
            ("-abc", None),                   // no number
            ("0123-abc", None),               // leading zero: not canonical
            ("+12-abc", None),                // sign
            ("12a-abc", None),                // not digits
            ("18446744073709551616-a", None), // over u64
            ("12-ab-c", None),                // '-' in the random part
            ("12-ab c", None),                // space
            ("12-é", None),                   // not ASCII
            (&format!("5-{}", "a".repeat(65)), None),
        ];
        for &(text, want) in cases {
            let got = Epoch::parse(text).map(|e| (e.number, core::str::from_utf8(e.random).unwrap()));
            assert_eq!(got, want, "{text:?}");
        }
    }

    /// (a epoch, a version, b epoch, b version, a compared with b)
    type OrderCase = (Option<&'static str>, u64, Option<&'static str>, u64, Ordering);

    #[test]
    fn order() {
        let cases: &[OrderCase] = &[
            // same epoch: the version decides
            (Some("100-aa"), 5, Some("100-aa"), 4, Greater),
            (Some("100-aa"), 5, Some("100-aa"), 5, Equal),
            // a later epoch wins whatever the versions (a re-seeded store)
            (Some("200-aa"), 1, Some("100-aa"), 9_999, Greater),
            // the number is compared as a number, not as text
            (Some("99-zz"), 9, Some("100-aa"), 1, Less),
            // same number: the random part bytewise (digits < upper < lower)
            (Some("100-ab"), 1, Some("100-aa"), 9, Greater),
            (Some("100-a"), 9, Some("100-aa"), 1, Less),
            (Some("100-Z"), 9, Some("100-a"), 1, Less),
            (Some("100-9"), 9, Some("100-A"), 1, Less),
            // missing or malformed is lowest
            (None, u64::MAX, Some("0-a"), 0, Less),
            (Some("garbage"), u64::MAX, Some("0-a"), 0, Less),
            (Some(""), 7, Some("1-a"), 0, Less),
            // two without a (valid) epoch: the version decides
            (None, 3, None, 2, Greater),
            (Some("bad"), 3, None, 3, Equal),
            (None, 0, Some("bad"), 1, Less),
        ];
        for &(ae, av, be, bv, want) in cases {
            assert_eq!(compare(ae, av, be, bv), want, "{ae:?}/{av} vs {be:?}/{bv}");
            assert_eq!(compare(be, bv, ae, av), want.reverse(), "{be:?}/{bv} vs {ae:?}/{av}");
            let (a, b) = (Stamp::new(ae, av), Stamp::new(be, bv));
            assert_eq!(a.is_newer_than(&b), want == Greater);
        }
    }

    #[test]
    fn generated_epochs_parse_and_go_up() {
        // (now ms, previous number, random, want)
        let cases: &[(u64, Option<u64>, [u8; 8], &str)] = &[
            (1_000, None, [0; 8], "1000-0000000000000000"),
            (1_000, Some(500), [0xff, 0, 1, 0x10, 0xab, 0xcd, 0xef, 9], "1000-ff000110abcdef09"),
            // clock behind the previous epoch: one above it
            (1_000, Some(5_000), [1; 8], "5001-0101010101010101"),
            (5_000, Some(5_000), [1; 8], "5001-0101010101010101"),
            // saturates rather than wrapping
            (0, Some(u64::MAX), [2; 8], "18446744073709551615-0202020202020202"),
        ];
        for &(now, previous, random, want) in cases {
            let epoch = generate(now, previous, random);
            assert_eq!(epoch, want);
            let parsed = Epoch::parse(&epoch).unwrap();
            if let Some(p) = previous.filter(|p| *p < u64::MAX) {
                assert!(parsed.number > p, "{epoch} is above {p}");
            }
        }
    }

    #[test]
    fn tables_carry_their_epoch() {
        let limits = Limits::default();
        let body = |epoch: &str| {
            format!(r#"{{"version": 3, {epoch} "services": {{"a": {{"hosts": ["a"], "clusters": {{"base": "c"}}}}}}}}"#)
        };
        // (epoch member, what the compiled table keeps)
        let cases: &[(&str, Option<&str>)] = &[
            (r#""epoch": "1764190000000-a1b2","#, Some("1764190000000-a1b2")),
            // kept as written; the order treats it as lowest
            (r#""epoch": "not-an-epoch!","#, Some("not-an-epoch!")),
            ("", None),
        ];
        for &(member, want) in cases {
            let json = body(member);
            let table = Table::from_json(json.as_bytes(), "base", &limits).unwrap();
            assert_eq!(table.epoch(), want, "{json}");
            let raw = RawTable::from_json(json.as_bytes(), &limits).unwrap();
            let out = serde_json::to_value(&raw).unwrap();
            // left out when empty, round-tripped when present
            assert_eq!(out.get("epoch").and_then(|e| e.as_str()), want, "{out}");
        }
        // a non-string epoch names the field
        let err = Table::from_json(body(r#""epoch": 5,"#).as_bytes(), "base", &limits).unwrap_err();
        assert!(err.to_string().starts_with("epoch: "), "{err}");
    }
}
