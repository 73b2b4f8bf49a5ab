//! Source bindings (`"sources"` in a table): a client address range bound to
//! a group, optionally until a moment. Compiled once per table into one hash
//! map per prefix length, so a lookup is a few masked hash probes, longest
//! prefix first, with no allocation.

#[allow(unused_imports)]
use crate::prelude::*;

use core::net::IpAddr;

use crate::cidr::Cidr;
use crate::group::GroupName;

/// One binding as compiled: its place in the table's `sources` list, group
/// and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    /// Index in the table's `sources`.
    pub index: usize,
    pub cidr: Cidr,
    pub group: GroupName,
    /// Unix seconds; `None`: no expiry.
    pub expires_at: Option<u64>,
}

impl Binding {
    /// Expired at `now` (unix seconds): the expiry moment itself is past.
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|t| now >= t)
    }
}

/// Key: IPv6 or not and the prefix length in one byte, then the address
/// masked to it. Bytes, so the index is the same map type as the table's
/// host index (one copy of the hash map code in the wasm).
type Key = [u8; 17];

fn key(v6: bool, prefix: u8, masked: u128) -> Key {
    let mut k = [0u8; 17];
    k[0] = prefix | if v6 { 0x80 } else { 0 };
    k[1..].copy_from_slice(&masked.to_be_bytes());
    k
}

#[derive(Debug, Default)]
pub struct Sources {
    bindings: Vec<Binding>,
    /// Distinct prefix lengths per family, longest first.
    v4_lengths: Box<[u8]>,
    v6_lengths: Box<[u8]>,
    index: FxHashMap<Box<[u8]>, u32>,
}

/// The address as a 128-bit number (IPv4 in the top 32 bits, as `Cidr` compares
/// them; IPv4-mapped IPv6 counts as IPv4) and whether it is IPv6.
fn bits(ip: IpAddr) -> (bool, u128) {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match ip {
        IpAddr::V4(a) => (false, u128::from(u32::from(a)) << 96),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn mask(value: u128, prefix: u8) -> u128 {
    if prefix == 0 {
        0
    } else {
        value & (u128::MAX << (128 - u32::from(prefix)))
    }
}

impl Sources {
    /// Builds the index. `bindings` are already validated; a second binding
    /// for the same range is the caller's error (it returns that index).
    pub fn build(bindings: Vec<Binding>) -> Result<Sources, (usize, usize)> {
        let mut index = FxHashMap::with_capacity_and_hasher(bindings.len(), Default::default());
        let (mut v4, mut v6) = (Vec::new(), Vec::new());
        for (i, b) in bindings.iter().enumerate() {
            let (v6_range, net) = bits(b.cidr.network());
            let prefix = b.cidr.prefix();
            // IPv4 sits in the top 32 bits, so its prefix masks from the top too.
            let net = mask(net, prefix);
            let k = key(v6_range, prefix, net);
            if let Some(&first) = index.get(&k[..]) {
                return Err((first as usize, i));
            }
            index.insert(Box::from(&k[..]), i as u32);
            // Kept longest first by inserting in place (a few lengths at most).
            let lengths: &mut Vec<u8> = if v6_range { &mut v6 } else { &mut v4 };
            let at = lengths.iter().position(|&l| l <= prefix).unwrap_or(lengths.len());
            if lengths.get(at) != Some(&prefix) {
                lengths.insert(at, prefix);
            }
        }
        Ok(Sources { bindings, v4_lengths: v4.into(), v6_lengths: v6.into(), index })
    }

    pub fn is_empty(&self) -> bool {
        self.bindings.is_empty()
    }

    pub fn len(&self) -> usize {
        self.bindings.len()
    }

    /// The unexpired binding with the longest prefix holding `ip` at `now`
    /// (unix seconds); an expired one is as if absent, so a shorter one may
    /// answer.
    pub fn lookup(&self, ip: IpAddr, now: u64) -> Option<&Binding> {
        let (v6, value) = bits(ip);
        let lengths = if v6 { &self.v6_lengths } else { &self.v4_lengths };
        lengths.iter().find_map(|&prefix| {
            let i = *self.index.get(&key(v6, prefix, mask(value, prefix))[..])?;
            self.bindings.get(i as usize).filter(|b| !b.expired(now))
        })
    }

    /// Every binding, in table order.
    pub fn iter(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(list: &[(&str, &str, Option<u64>)]) -> Sources {
        let bindings = list
            .iter()
            .enumerate()
            .map(|(index, (cidr, group, expires_at))| Binding {
                index,
                cidr: Cidr::parse_network(cidr).unwrap(),
                group: GroupName::new(group.as_bytes()).unwrap(),
                expires_at: *expires_at,
            })
            .collect();
        Sources::build(bindings).unwrap()
    }

    #[test]
    fn longest_unexpired_prefix_wins() {
        let s = sources(&[
            ("10.0.0.0/8", "wide", None),
            ("10.1.0.0/16", "team", Some(100)),
            ("10.1.2.3/32", "alice", Some(50)),
            ("10.1.2.0/24", "floor", None),
            ("0.0.0.0/0", "everyone", Some(10)),
            ("2001:db8::/32", "six", None),
            ("2001:db8:1::7", "six-host", None),
        ]);
        // (address, now, the group chosen)
        let cases: &[(&str, u64, Option<&str>)] = &[
            ("10.1.2.3", 0, Some("alice")),
            ("10.1.2.3", 49, Some("alice")),
            // expiry is the first second it no longer holds
            ("10.1.2.3", 50, Some("floor")),
            ("10.1.2.4", 0, Some("floor")),
            ("10.1.3.1", 99, Some("team")),
            ("10.1.3.1", 100, Some("wide")),
            ("10.200.0.1", 1_000_000, Some("wide")),
            ("192.0.2.1", 9, Some("everyone")),
            ("192.0.2.1", 10, None),
            // an IPv4-mapped peer is its IPv4 address
            ("::ffff:10.1.2.3", 0, Some("alice")),
            ("2001:db8:1::7", 0, Some("six-host")),
            ("2001:db8:1::8", 0, Some("six")),
            ("2001:db9::1", 0, None),
            // an IPv6 address whose top bits equal an IPv4 range is not in it
            ("a01:203::", 0, None),
        ];
        for (ip, now, want) in cases {
            let got = s.lookup(ip.parse().unwrap(), *now).map(|b| b.group.to_string());
            assert_eq!(got.as_deref(), *want, "{ip} at {now}");
        }
        assert_eq!(s.lookup("10.1.2.3".parse().unwrap(), 0).map(|b| b.index), Some(2));
        assert_eq!(Sources::default().lookup("10.0.0.1".parse().unwrap(), 0), None);
    }

    #[test]
    fn one_binding_per_range() {
        let b = |index, cidr: &str| Binding {
            index,
            cidr: Cidr::parse_network(cidr).unwrap(),
            group: GroupName::new(b"g").unwrap(),
            expires_at: None,
        };
        assert_eq!(
            Sources::build(vec![b(0, "10.0.0.0/8"), b(1, "10.0.0.0/16"), b(2, "10.0.0.0/8")]).err(),
            Some((0, 2))
        );
        assert_eq!(Sources::build(vec![b(0, "192.0.2.7"), b(1, "::ffff:192.0.2.7")]).err(), Some((0, 1)));
        assert!(Sources::build(vec![b(0, "10.0.0.0/8"), b(1, "10.0.0.0/9")]).is_ok());
    }
}
