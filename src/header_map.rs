//! A header map as the host serialises it, read in place: count (u32 LE),
//! then (name length, value length) per pair, then each name and value
//! NUL-terminated. One buffer, no `String` per header; every offset is
//! checked, so a malformed buffer ends the list instead of panicking.

#[allow(unused_imports)]
use isogroup_core::prelude::*;

pub struct HeaderMap {
    buf: Vec<u8>,
}

impl HeaderMap {
    pub fn from_bytes(buf: Vec<u8>) -> HeaderMap {
        HeaderMap { buf }
    }

    /// `(name, value)` pairs borrowed from the buffer. A truncated buffer or
    /// a non-UTF-8 name ends the list.
    pub fn pairs(&self) -> Vec<(&str, &[u8])> {
        let b = &self.buf;
        let u32_at = |i: usize| {
            let end = i.checked_add(4)?;
            let bytes: [u8; 4] = b.get(i..end)?.try_into().ok()?;
            usize::try_from(u32::from_le_bytes(bytes)).ok()
        };
        let Some(count) = u32_at(0) else { return Vec::new() };
        let mut pairs = Vec::with_capacity(count.min(256));
        let Some(mut data) = count.checked_mul(8).and_then(|n| n.checked_add(4)) else { return pairs };
        for n in 0..count {
            let Some(at) = n.checked_mul(8).and_then(|i| i.checked_add(4)) else { break };
            let (Some(klen), Some(vlen)) = (u32_at(at), at.checked_add(4).and_then(u32_at)) else { break };
            let Some(key_end) = data.checked_add(klen) else { break };
            let Some(key) = b.get(data..key_end).and_then(|k| core::str::from_utf8(k).ok()) else { break };
            let Some(value_at) = key_end.checked_add(1) else { break };
            let Some(value_end) = value_at.checked_add(vlen) else { break };
            let Some(value) = b.get(value_at..value_end) else { break };
            data = value_end.saturating_add(1);
            pairs.push((key, value));
        }
        pairs
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&[u8]> {
        // A loop, not `into_iter().find(..)`: one generic try_fold less in the wasm.
        for (k, v) in self.pairs() {
            if k == name {
                return Some(v);
            }
        }
        None
    }
}

/// Serialises pairs the way the host does (for the fake host and tests).
#[cfg(test)]
pub fn encode<N: AsRef<[u8]>, V: AsRef<[u8]>>(pairs: &[(N, V)]) -> Vec<u8> {
    let mut buf = Vec::new();
    buf.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (name, value) in pairs {
        buf.extend_from_slice(&(name.as_ref().len() as u32).to_le_bytes());
        buf.extend_from_slice(&(value.as_ref().len() as u32).to_le_bytes());
    }
    for (name, value) in pairs {
        buf.extend_from_slice(name.as_ref());
        buf.push(0);
        buf.extend_from_slice(value.as_ref());
        buf.push(0);
    }
    buf
}

#[cfg(test)]
mod tests {
    use super::{encode, HeaderMap};

    #[test]
    fn round_trips_pairs_with_hostile_values() {
        let pairs: Vec<(&str, &[u8])> = vec![(":authority", b"b"), ("x-isogroup", b"\xff\xfe"), ("empty", b"")];
        let map = HeaderMap::from_bytes(encode(&pairs));
        assert_eq!(map.pairs(), pairs);
        assert_eq!(map.get("x-isogroup"), Some(&b"\xff\xfe"[..]));
        assert_eq!(map.get("missing"), None);
    }

    #[test]
    fn malformed_buffers_end_the_list() {
        let good = encode(&[("a", "1"), ("b", "2")]);
        let cases: Vec<(&str, Vec<u8>, usize)> = vec![
            ("empty", vec![], 0),
            ("count only, huge", u32::MAX.to_le_bytes().to_vec(), 0),
            ("truncated after the first pair", good[..good.len() - 4].to_vec(), 1),
            (
                "lengths past the end",
                {
                    let mut b = good.clone();
                    b[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
                    b
                },
                0,
            ),
            ("non-UTF-8 name", encode(&[(&b"\xff"[..], &b"v"[..])]), 0),
        ];
        for (name, buf, want) in cases {
            assert_eq!(HeaderMap::from_bytes(buf).pairs().len(), want, "{name}");
        }
    }
}
