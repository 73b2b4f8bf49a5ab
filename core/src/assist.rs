//! Propagation assist: many apps forward tracing headers but drop custom
//! ones. The filter on a workload's inbound side remembers trace id → group;
//! on the same Envoy's outbound side it restores the group on a request that
//! carries a known trace id but no group.
//!
//! The store is shared data, which has no delete and no TTL: a fixed set of
//! slot keys (`isogroup/assist/<n>`, n from the trace id's hash: `slot_of`),
//! each holding one entry with its expiry. Memory stays bounded whatever the load;
//! a newer trace overwrites an older one in the same slot.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::cat;
use crate::edge::fnv1a;
use crate::error::ConfigError;
use crate::group::GroupName;
use crate::json::Quoted;

fn default_slots() -> u32 {
    4096
}
fn default_ttl_s() -> u32 {
    30
}
fn default_trace_headers() -> Vec<String> {
    vec!["traceparent".into(), "x-b3-traceid".into(), "x-request-id".into()]
}

#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct RawAssist {
    #[cfg_attr(feature = "serde", serde(default = "default_slots"))]
    pub slots: u32,
    #[cfg_attr(feature = "serde", serde(default = "default_ttl_s"))]
    pub ttl_s: u32,
    /// `auto` reads the listener's direction (Envoy `traffic_direction`,
    /// which Istio sets) per request.
    #[cfg_attr(feature = "serde", serde(default))]
    pub side: Side,
    #[cfg_attr(feature = "serde", serde(default = "default_trace_headers"))]
    pub trace_headers: Vec<String>,
    /// `false`: record (and report) without restoring.
    #[cfg_attr(feature = "serde", serde(default = "default_heal"))]
    pub heal: bool,
}

fn default_heal() -> bool {
    true
}

impl Default for RawAssist {
    fn default() -> Self {
        RawAssist {
            slots: default_slots(),
            ttl_s: default_ttl_s(),
            side: Side::Auto,
            trace_headers: default_trace_headers(),
            heal: default_heal(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Side {
    #[default]
    Auto,
    Inbound,
    Outbound,
}

#[derive(Debug, Clone)]
pub struct Assist {
    pub slots: u32,
    pub ttl_ms: u64,
    pub side: Side,
    pub trace_headers: Vec<String>,
    pub heal: bool,
    /// `isogroup/assist/[<workload>/]`: one workload's records never heal
    /// another's requests (set once the workload is known).
    pub prefix: String,
}

/// Longest trace id kept (W3C ids are 32 hex digits; request ids are UUIDs).
const MAX_TRACE_ID: usize = 128;

impl Assist {
    pub fn compile(raw: &RawAssist) -> Result<Assist, ConfigError> {
        let bad = |field: &str, why: String| ConfigError::Invalid { field: cat!("propagation_assist.", field), why };
        if !(1..=65_536).contains(&raw.slots) {
            return Err(bad("slots", cat!(raw.slots, " is not in 1..=65536")));
        }
        if !(1..=3_600).contains(&raw.ttl_s) {
            return Err(bad("ttl_s", cat!(raw.ttl_s, " is not in 1..=3600 seconds")));
        }
        if raw.trace_headers.is_empty() {
            return Err(bad("trace_headers", "the list is empty".into()));
        }
        for h in &raw.trace_headers {
            if h.is_empty() || !h.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return Err(bad("trace_headers", cat!(Quoted(h), " is not a lower-case header name")));
            }
        }
        Ok(Assist {
            slots: raw.slots,
            ttl_ms: u64::from(raw.ttl_s) * 1000,
            side: raw.side,
            trace_headers: raw.trace_headers.clone(),
            heal: raw.heal,
            prefix: "isogroup/assist/".into(),
        })
    }

    /// The shared-data key of the slot for `trace_id`.
    pub fn slot_key(&self, trace_id: &[u8]) -> String {
        let mut key = String::new();
        self.slot_key_to(fnv1a(trace_id), &mut key);
        key
    }

    /// `slot_key` of a trace whose FNV-1a hash is `hash`, into `key` (its
    /// old text cleared): a caller that hashed the id already, or keeps a
    /// key buffer, neither hashes nor allocates again.
    pub fn slot_key_to(&self, hash: u64, key: &mut String) {
        key.clear();
        crate::cat_to!(key; self.prefix.as_str(), slot_of(hash, self.slots));
    }
}

/// The slot of a trace whose FNV-1a hash is `hash`, of `slots`. Not the
/// hash mod `slots`: propagation samples on the hash's low bits (hash mod
/// `propagation.sample`), so every sampled trace would share one slot in
/// `sample` and evict the others' records; nor its high bits alone, which
/// FNV-1a mixes little from the id's last bytes. The high 32 bits of the
/// hash times an odd constant (Fibonacci hashing) depend on all its bits.
pub fn slot_of(hash: u64, slots: u32) -> u64 {
    (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % u64::from(slots.max(1))
}

/// The trace id in a trace header value: the trace-id field of a W3C
/// `traceparent` (the span id changes every hop), else the whole value.
pub fn trace_id<'v>(header: &str, value: &'v [u8]) -> Option<&'v [u8]> {
    let value = value.trim_ascii();
    let id = if header == "traceparent" {
        let mut parts = value.split(|&b| b == b'-');
        let (_version, id) = (parts.next()?, parts.next()?);
        if id.len() != 32 || !id.iter().all(u8::is_ascii_hexdigit) || id.iter().all(|&b| b == b'0') {
            return None;
        }
        id
    } else {
        value
    };
    (!id.is_empty() && id.len() <= MAX_TRACE_ID && id.iter().all(u8::is_ascii_graphic)).then_some(id)
}

/// A slot's value: `<expiry ms> <group> <trace id>`, the group `-` for a
/// request that had none (a sampled base request, recorded for reports).
pub fn encode_entry(trace_id: &[u8], group: Option<&GroupName>, expires_ms: u64) -> Vec<u8> {
    let mut v = cat!(expires_ms, " ", group.map_or("-", GroupName::as_str), " ").into_bytes();
    v.extend_from_slice(trace_id);
    v
}

/// What a slot holds for `trace_id`, if it is that trace's and fresh: the
/// inbound request's group, or `Some(None)` for one that had none.
pub fn decode_entry(entry: &[u8], trace_id: &[u8], now_ms: u64) -> Option<Option<GroupName>> {
    match entry_group(entry, trace_id, now_ms)? {
        b"-" => Some(None),
        g => GroupName::new(g).map(Some),
    }
}

/// `decode_entry` in place: the group's bytes as written (`-` for none),
/// not yet checked to be a group name, if the entry is `trace_id`'s and fresh.
pub fn entry_group<'e>(entry: &'e [u8], trace_id: &[u8], now_ms: u64) -> Option<&'e [u8]> {
    // Neither the expiry nor the group has a space: the first one ends the
    // expiry, the one before the trace id ends the group.
    let head = entry.strip_suffix(trace_id)?.strip_suffix(b" ")?;
    let space = head.iter().position(|&b| b == b' ')?;
    if now_ms >= crate::text::parse_u64(head.get(..space)?)? {
        return None;
    }
    head.get(space + 1..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("traceparent", tp, Some("4bf92f3577b34da6a3ce929d0e0e4736")),
            ("traceparent", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", None),
            ("traceparent", "00-xyz-00f067aa0ba902b7-01", None),
            ("traceparent", "garbage", None),
            ("x-request-id", " 5f1c-aa ", Some("5f1c-aa")),
            ("x-b3-traceid", "", None),
            ("x-request-id", "has space", None),
        ];
        for (h, v, want) in cases {
            assert_eq!(trace_id(h, v.as_bytes()), want.map(str::as_bytes), "{h}: {v}");
        }
        assert_eq!(trace_id("x-request-id", &[b'a'; 129]), None);
    }

    #[test]
    fn entries_round_trip_and_expire() {
        let g = GroupName::new(b"feature-1").unwrap();
        let e = encode_entry(b"abc", Some(&g), 1_000);
        assert_eq!(e, b"1000 feature-1 abc");
        assert_eq!(decode_entry(&e, b"abc", 999), Some(Some(g)));
        let base = encode_entry(b"abc", None, 1_000);
        assert_eq!(base, b"1000 - abc");
        assert_eq!(decode_entry(&base, b"abc", 999), Some(None), "a base request's record");
        assert_eq!(decode_entry(b"1000 -x abc", b"abc", 999), None);
        assert_eq!(decode_entry(&e, b"abc", 1_000), None, "expired");
        assert_eq!(decode_entry(&e, b"abd", 0), None, "another trace in the slot");
        assert_eq!(decode_entry(b"junk", b"abc", 0), None);
        assert_eq!(decode_entry(b"1000 feature-1 xabc", b"abc", 0), None, "a longer trace ending in this one");
        assert_eq!(decode_entry(b"1000 a b abc", b"abc", 0), None, "a group with a space");
        assert_eq!(decode_entry(b"1000  abc", b"abc", 0), None, "an empty group");
        assert_eq!(decode_entry(b"x1000 - abc", b"abc", 0), None, "an expiry that is not a number");
        assert_eq!(decode_entry(b"abc", b"abc", 0), None);
    }

    #[test]
    fn slots_are_bounded() {
        let a = Assist::compile(&RawAssist {
            slots: 64,
            ttl_s: 30,
            side: Side::Auto,
            trace_headers: default_trace_headers(),
            heal: true,
        })
        .unwrap();
        let keys: alloc::collections::BTreeSet<String> =
            (0..10_000).map(|i| a.slot_key(format!("trace-{i}").as_bytes())).collect();
        assert_eq!(keys.len(), 64, "10 000 trace ids share 64 keys");
        // The key of a known hash, into a reused buffer: the same text.
        let mut key = String::from("left over");
        for id in ["trace-1", "trace-2"] {
            a.slot_key_to(fnv1a(id.as_bytes()), &mut key);
            assert_eq!(key, a.slot_key(id.as_bytes()));
        }
        assert!(keys.iter().all(|k| k.starts_with("isogroup/assist/")));
    }

    #[test]
    fn sampled_traces_spread_over_every_slot() {
        // Propagation samples the traces whose hash is 0 mod 8: their slots
        // must not be the multiples of 8 only (they would evict each other).
        let sampled: Vec<u64> = (0..20_000)
            .map(|i| fnv1a(format!("{i:032x}").as_bytes()))
            .filter(|h| crate::propagation::sampled_hash(*h, 8))
            .collect();
        assert!(sampled.len() > 2_000, "{}", sampled.len());
        let slots: alloc::collections::BTreeSet<u64> = sampled.iter().map(|h| slot_of(*h, 64)).collect();
        assert_eq!(slots.len(), 64, "sampled traces in every slot of 64");
        let odd = sampled.iter().filter(|h| slot_of(**h, 64) % 2 == 1).count();
        assert!(odd * 3 > sampled.len(), "{odd} of {} in odd slots", sampled.len());
        assert_eq!(slot_of(u64::MAX, 0), 0, "no division by zero");
    }

    #[test]
    fn config_errors() {
        let raw = |slots, ttl_s, headers: Vec<&str>| RawAssist {
            slots,
            ttl_s,
            side: Side::Auto,
            trace_headers: headers.into_iter().map(String::from).collect(),
            heal: true,
        };
        let err = |r: RawAssist| Assist::compile(&r).err().map(|e| e.to_string());
        assert_eq!(
            err(raw(0, 30, vec!["traceparent"])).as_deref(),
            Some("propagation_assist.slots: 0 is not in 1..=65536")
        );
        assert_eq!(
            err(raw(8, 0, vec!["traceparent"])).as_deref(),
            Some("propagation_assist.ttl_s: 0 is not in 1..=3600 seconds")
        );
        assert_eq!(err(raw(8, 5, vec![])).as_deref(), Some("propagation_assist.trace_headers: the list is empty"));
        assert_eq!(
            err(raw(8, 5, vec!["Trace"])).as_deref(),
            Some(r#"propagation_assist.trace_headers: "Trace" is not a lower-case header name"#)
        );
        assert_eq!(err(raw(8, 5, vec!["traceparent"])), None);
    }
}
