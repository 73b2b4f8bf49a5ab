//! IP address text to `IpAddr`, accepting exactly what std's `FromStr`
//! accepts (dotted quads without leading zeros; IPv6 with one `::` that
//! stands for at least one group, and an IPv4 tail), in a few hundred bytes
//! of wasm instead of std's generic parser (~3 KB). Property-tested against
//! std (`tests/ip_vs_std.rs`).

#[allow(unused_imports)]
use crate::prelude::*;

use core::net::{IpAddr, Ipv4Addr, Ipv6Addr};

struct Cursor<'a> {
    s: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn eat(&mut self, c: u8) -> Option<()> {
        (self.s.get(self.at) == Some(&c)).then(|| self.at += 1)
    }

    /// Runs `read`; on `None`, puts the cursor back (std's `read_atomically`).
    fn atomic<T>(&mut self, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        let start = self.at;
        let out = read(self);
        if out.is_none() {
            self.at = start;
        }
        out
    }

    /// Up to `max_digits` digits of `radix`, at least one; `zero_prefix`:
    /// whether `0` may lead more digits; `None` past `limit`.
    fn number(&mut self, radix: u32, max_digits: usize, zero_prefix: bool, limit: u32) -> Option<u32> {
        self.atomic(|c| {
            let mut value = 0u32;
            let mut digits = 0;
            while let Some(d) = c.s.get(c.at).and_then(|&b| digit(b, radix)) {
                if digits == max_digits {
                    break;
                }
                if digits == 1 && value == 0 && !zero_prefix {
                    return None;
                }
                value = value * radix + d;
                if value > limit {
                    return None;
                }
                digits += 1;
                c.at += 1;
            }
            (digits > 0).then_some(value)
        })
    }

    /// `sep` first unless `index` is 0, then `read`, all or nothing.
    fn separated<T>(&mut self, sep: u8, index: usize, read: impl FnOnce(&mut Self) -> Option<T>) -> Option<T> {
        self.atomic(|c| {
            if index > 0 {
                c.eat(sep)?;
            }
            read(c)
        })
    }

    fn v4(&mut self) -> Option<[u8; 4]> {
        self.atomic(|c| {
            let mut octets = [0u8; 4];
            for (i, o) in octets.iter_mut().enumerate() {
                *o = c.separated(b'.', i, |c| c.number(10, 3, false, 255))? as u8;
            }
            Some(octets)
        })
    }

    /// Groups into `groups` (an IPv4 tail takes two); how many, and whether
    /// the last were an IPv4 address.
    fn groups(&mut self, groups: &mut [u16]) -> (usize, bool) {
        let limit = groups.len();
        for i in 0..limit {
            if i + 1 < limit {
                if let Some([a, b, c, d]) = self.separated(b':', i, Self::v4) {
                    groups[i] = u16::from_be_bytes([a, b]);
                    groups[i + 1] = u16::from_be_bytes([c, d]);
                    return (i + 2, true);
                }
            }
            match self.separated(b':', i, |c| c.number(16, 4, true, 0xffff)) {
                Some(g) => groups[i] = g as u16,
                None => return (i, false),
            }
        }
        (limit, false)
    }

    fn v6(&mut self) -> Option<[u16; 8]> {
        self.atomic(|c| {
            let mut head = [0u16; 8];
            let (head_size, head_v4) = c.groups(&mut head);
            if head_size == 8 {
                return Some(head);
            }
            if head_v4 {
                return None;
            }
            c.eat(b':')?;
            c.eat(b':')?;
            // `::` stands for at least one group.
            let mut tail = [0u16; 7];
            let (tail_size, _) = c.groups(tail.get_mut(..7 - head_size)?);
            // The tail's groups end the address.
            for (h, &t) in head.iter_mut().rev().zip(tail.get(..tail_size)?.iter().rev()) {
                *h = t;
            }
            Some(head)
        })
    }
}

/// The address `text` spells, all of it.
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    let mut c = Cursor { s: text.as_bytes(), at: 0 };
    let ip = match c.v4() {
        Some(o) => IpAddr::V4(Ipv4Addr::from(o)),
        None => IpAddr::V6(Ipv6Addr::from(c.v6()?)),
    };
    (c.at == text.len()).then_some(ip)
}

/// `char::to_digit` for radix 10 or 16, without its panic for a radix
/// over 36 (a check whose message the wasm would carry).
fn digit(b: u8, radix: u32) -> Option<u32> {
    let d = match b {
        b'0'..=b'9' => b - b'0',
        b'a'..=b'f' => b - b'a' + 10,
        b'A'..=b'F' => b - b'A' + 10,
        _ => return None,
    };
    (u32::from(d) < radix).then_some(u32::from(d))
}
