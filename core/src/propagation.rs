//! Propagation reports, sans I/O (SPEC "Third round: Propagation reports"):
//! which traces are sampled, how an outbound request of a recorded trace is
//! classified, and the per-destination counts: their shared-data text (how
//! a worker VM hands them to the poller VM) and the report's JSON.
//!
//! Every bound is here: at most `MAX_DESTINATIONS` destinations per count
//! set (more are dropped, whatever the input), a report body of at most
//! `MAX_REPORT_BYTES`.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::cat_to;
use crate::edge::fnv1a;
use crate::error::ConfigError;
use crate::group::GroupName;
use crate::table::is_valid_service;
use crate::text::parse_u64;

/// Destinations kept per count set (the companion keeps as many per workload).
pub const MAX_DESTINATIONS: usize = 200;
/// A report body's limit (the companion answers `413` past it).
pub const MAX_REPORT_BYTES: usize = 16 * 1024;
/// How long lane traffic seen on the workload makes untraced requests count.
pub const LANE_WINDOW_MS: u64 = 60_000;
/// One report per this long, per workload and Envoy process.
pub const REPORT_EVERY_MS: u64 = 10_000;

fn default_sample() -> u32 {
    8
}

/// `propagation`: present means reports on (with `propagation_assist`, whose
/// inbound side records the traces, and a `workload`).
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct RawPropagation {
    #[cfg_attr(feature = "serde", serde(default = "default_sample"))]
    pub sample: u32,
}

impl Default for RawPropagation {
    fn default() -> Self {
        RawPropagation { sample: default_sample() }
    }
}

impl RawPropagation {
    pub fn check(&self) -> Result<u32, ConfigError> {
        if (1..=1_000_000).contains(&self.sample) {
            return Ok(self.sample);
        }
        Err(ConfigError::InvalidValue {
            field: "propagation.sample",
            value: crate::text::text_of(&self.sample),
            why: "1 to 1000000",
        })
    }
}

/// Whether the trace is sampled: FNV-1a 64 of its id modulo `sample` is 0,
/// so every hop samples the same traces.
pub fn sampled(trace_id: &[u8], sample: u32) -> bool {
    sampled_hash(fnv1a(trace_id), sample)
}

/// `sampled` of a trace whose FNV-1a hash is `hash`.
pub fn sampled_hash(hash: u64, sample: u32) -> bool {
    hash.is_multiple_of(u64::from(sample.max(1)))
}

/// The classes, in the report's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The outbound request carries the inbound request's group (or both none).
    Kept,
    /// The app sent, or the workload stamped, another group.
    Changed,
    /// The app sent none; the assist restored it.
    Healed,
    /// The inbound request had a group, the app sent none, not healed.
    Dropped,
    /// No trace id from `traceparent` or `x-b3-traceid`.
    Untraced,
}

pub const CLASS_NAMES: [&str; 5] = ["kept", "changed", "healed", "dropped", "untraced"];

/// An outbound request that carries a group (`sent`), against what the
/// inbound side recorded for its trace.
pub fn carried(recorded: Option<GroupName>, sent: GroupName) -> Class {
    if recorded.is_some_and(|r| r == sent) {
        Class::Kept
    } else {
        Class::Changed
    }
}

/// `carried` against a slot's entry (`assist::encode_entry`'s form), read
/// in place, for the group bytes `sent`: `None` unless the entry is the
/// trace's fresh record with a group name or `-` (none). The common case,
/// the group kept, is one compare.
pub fn carried_entry(entry: &[u8], trace_id: &[u8], sent: &[u8], now_ms: u64) -> Option<Class> {
    let recorded = crate::assist::entry_group(entry, trace_id, now_ms)?;
    if recorded == sent {
        Some(Class::Kept)
    } else {
        (recorded == b"-" || crate::group::is_valid_group(recorded)).then_some(Class::Changed)
    }
}

/// An outbound request that carries no group, against the record.
pub fn carried_none(recorded: Option<GroupName>, healed: bool) -> Class {
    match recorded {
        None => Class::Kept,
        Some(_) if healed => Class::Healed,
        Some(_) => Class::Dropped,
    }
}

/// Per destination service, a count per class (index: `Class as usize`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts(pub Vec<(String, [u64; 5])>);

impl Counts {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Adds `n` of `class` for `destination`; a destination past
    /// `MAX_DESTINATIONS` is dropped.
    pub fn add(&mut self, destination: &str, class: usize, n: u64) {
        let i = match self.0.iter().position(|(d, _)| d == destination) {
            Some(i) => i,
            None if self.0.len() < MAX_DESTINATIONS => {
                self.0.push((destination.into(), [0; 5]));
                self.0.len() - 1
            }
            None => return,
        };
        if let Some(c) = self.0.get_mut(i).and_then(|(_, c)| c.get_mut(class)) {
            *c = c.saturating_add(n);
        }
    }

    /// The shared-data form: one `<service> <kept> <changed> <healed>
    /// <dropped> <untraced>` line per destination.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        for (d, c) in &self.0 {
            out.push_str(d);
            for n in c {
                cat_to!(&mut out; " ", *n);
            }
            out.push('\n');
        }
        out
    }

    /// Adds what `encode` wrote; a line that is not one (a bad service name,
    /// a count that is not a number) is skipped.
    pub fn merge(&mut self, text: &[u8]) {
        for line in text.split(|&b| b == b'\n') {
            let mut parts = line.split(|&b| b == b' ');
            let Some(d) = parts.next().and_then(|d| core::str::from_utf8(d).ok()).filter(|d| is_valid_service(d))
            else {
                continue;
            };
            let mut c = [0; 5];
            if c.iter_mut().all(|n| parts.next().and_then(parse_u64).map(|v| *n = v).is_some()) {
                for (class, n) in c.into_iter().enumerate() {
                    self.add(d, class, n);
                }
            }
        }
    }

    /// The body of `POST /v1/reports`: destinations in order until the next
    /// one would take the body past `MAX_REPORT_BYTES` (the rest are left
    /// out). Names are valid service and workload names: nothing to escape.
    pub fn report(&self, workload: &str, namespace: &str, sample: u32, window_s: u64) -> String {
        let mut out = String::new();
        cat_to!(&mut out; r#"{"workload":""#, workload, r#"","namespace":""#, namespace, r#"","sample":"#, sample,
            r#","window_s":"#, window_s, r#","outbound":{"#);
        for (d, c) in &self.0 {
            let mark = out.len();
            if !out.ends_with('{') {
                out.push(',');
            }
            cat_to!(&mut out; "\"", d.as_str(), r#"":{"kept":"#, c[0], r#","changed":"#, c[1], r#","healed":"#, c[2],
                r#","dropped":"#, c[3], r#","untraced":"#, c[4], "}");
            if out.len() + 2 > MAX_REPORT_BYTES {
                out.truncate(mark);
                break;
            }
        }
        out.push_str("}}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: &str) -> GroupName {
        GroupName::new(name.as_bytes()).unwrap()
    }

    #[test]
    fn sampling_is_fnv1a_modulo_sample() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c: even, not a multiple of 8.
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert!(sampled(b"a", 2));
        assert!(sampled(b"a", 4));
        assert!(!sampled(b"a", 8));
        assert!(sampled(b"anything", 1), "sample 1: every trace");
        // Exact counts over a fixed set of ids: the same on every hop and run.
        let ids: Vec<String> = (0..8_000).map(|i| format!("{i:032x}")).collect();
        let n = ids.iter().filter(|id| sampled(id.as_bytes(), 8)).count();
        let again = ids.iter().filter(|id| sampled(id.as_bytes(), 8)).count();
        assert_eq!(n, again);
        assert_eq!(n, ids.iter().filter(|id| fnv1a(id.as_bytes()).is_multiple_of(8)).count());
        assert!((900..1_100).contains(&n), "{n} of 8000 sampled at 1/8");
    }

    #[test]
    fn classes() {
        let cases: &[(Option<&str>, Option<&str>, bool, Class)] = &[
            // (recorded inbound group, outbound group, healed, class)
            (Some("feature-1"), Some("feature-1"), false, Class::Kept),
            (Some("feature-1"), Some("feature-2"), false, Class::Changed),
            (None, Some("feature-2"), false, Class::Changed),
            (None, None, false, Class::Kept),
            (Some("feature-1"), None, true, Class::Healed),
            (Some("feature-1"), None, false, Class::Dropped),
        ];
        for &(recorded, sent, healed, want) in cases {
            let got = match sent {
                Some(s) => carried(recorded.map(g), g(s)),
                None => carried_none(recorded.map(g), healed),
            };
            assert_eq!(got, want, "{recorded:?} -> {sent:?} healed={healed}");
        }
        assert_eq!(CLASS_NAMES[Class::Untraced as usize], "untraced");
        assert_eq!(CLASS_NAMES[Class::Kept as usize], "kept");
    }

    #[test]
    fn a_carried_request_against_an_entry_read_in_place() {
        use crate::assist::encode_entry;
        let lane = encode_entry(b"abc", Some(&g("feature-1")), 1_000);
        let base = encode_entry(b"abc", None, 1_000);
        type Case<'a> = (&'a [u8], &'a [u8], u64, Option<Class>);
        let cases: &[Case] = &[
            // (entry, group sent, now, class), as `carried` of `decode_entry`
            (&lane, b"feature-1", 999, Some(Class::Kept)),
            (&lane, b"feature-2", 999, Some(Class::Changed)),
            (&base, b"feature-2", 999, Some(Class::Changed)),
            (&lane, b"feature-1", 1_000, None),
            (b"1000 Not_A_Group abc", b"feature-1", 0, None),
            (b"1000 feature-1 xabc", b"feature-1", 0, None),
            (b"junk", b"feature-1", 0, None),
        ];
        for &(entry, sent, now, want) in cases {
            assert_eq!(carried_entry(entry, b"abc", sent, now), want, "{:?}", core::str::from_utf8(entry));
            let via_decode =
                crate::assist::decode_entry(entry, b"abc", now).map(|r| carried(r, GroupName::new(sent).unwrap()));
            assert_eq!(carried_entry(entry, b"abc", sent, now), via_decode, "the same as decode_entry and carried");
        }
        assert_eq!(carried_entry(&lane, b"abd", b"feature-1", 0), None, "another trace's entry");
    }

    #[test]
    fn sampled_hash_is_sampled_of_the_ids_hash() {
        for id in ["a", "4bf92f3577b34da6a3ce929d0e0e4736", ""] {
            for sample in [1, 2, 8, 1_000_000] {
                assert_eq!(sampled_hash(fnv1a(id.as_bytes()), sample), sampled(id.as_bytes(), sample));
            }
        }
    }

    #[test]
    fn counts_round_trip_through_shared_data_text() {
        let mut c = Counts::default();
        c.add("reviews", Class::Kept as usize, 2);
        c.add("ratings", Class::Dropped as usize, 1);
        c.add("reviews", Class::Untraced as usize, 3);
        assert_eq!(c.encode(), "reviews 2 0 0 0 3\nratings 0 0 0 1 0\n");
        let mut merged = Counts::default();
        merged.merge(c.encode().as_bytes());
        merged.merge(c.encode().as_bytes());
        assert_eq!(merged.encode(), "reviews 4 0 0 0 6\nratings 0 0 0 2 0\n");
    }

    #[test]
    fn merge_skips_what_is_not_a_line() {
        let mut c = Counts::default();
        c.merge(b"-\n\nBad_Name 1 1 1 1 1\nshort 1 2\nx 1 2 3 4 z\nok 1 2 3 4 5\n\"q\" 1 1 1 1 1");
        assert_eq!(c.encode(), "ok 1 2 3 4 5\n");
        c.add("ok", Class::Kept as usize, u64::MAX);
        assert_eq!(c.0[0].1[0], u64::MAX, "saturates");
    }

    #[test]
    fn destinations_are_capped() {
        let mut c = Counts::default();
        let text: String = (0..10_000).map(|i| format!("svc-{i} 1 0 0 0 0\n")).collect();
        c.merge(text.as_bytes());
        assert_eq!(c.0.len(), MAX_DESTINATIONS);
        c.add("another", 0, 1);
        assert_eq!(c.0.len(), MAX_DESTINATIONS, "a new destination past the cap is dropped");
        c.add("svc-0", 0, 1);
        assert_eq!(c.0[0].1[0], 2, "a known one still counts");
    }

    #[test]
    fn the_report_is_the_specs_json() {
        let mut c = Counts::default();
        c.add("reviews", Class::Healed as usize, 3);
        c.add("ratings", Class::Changed as usize, 1);
        assert_eq!(
            c.report("productpage-v1", "bookinfo", 8, 10),
            concat!(
                r#"{"workload":"productpage-v1","namespace":"bookinfo","sample":8,"window_s":10,"outbound":{"#,
                r#""reviews":{"kept":0,"changed":0,"healed":3,"dropped":0,"untraced":0},"#,
                r#""ratings":{"kept":0,"changed":1,"healed":0,"dropped":0,"untraced":0}}}"#
            )
        );
        assert_eq!(
            Counts::default().report("w", "n", 1, 0),
            r#"{"workload":"w","namespace":"n","sample":1,"window_s":0,"outbound":{}}"#
        );
    }

    #[test]
    fn the_report_fits_16_kib_whatever_the_names() {
        let mut c = Counts::default();
        for i in 0..MAX_DESTINATIONS {
            let name = format!("{i:03}{}", "s".repeat(240));
            c.add(&name, 0, u64::MAX);
        }
        let body = c.report(&"w".repeat(253), &"n".repeat(63), 1_000_000, u64::MAX);
        assert!(body.len() <= MAX_REPORT_BYTES, "{} bytes", body.len());
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let kept = v["outbound"].as_object().unwrap().len();
        assert!((40..MAX_DESTINATIONS).contains(&kept), "{kept} destinations fit");
    }

    #[test]
    fn sample_is_checked() {
        let err = |s| RawPropagation { sample: s }.check().err().map(|e| e.to_string());
        assert_eq!(err(0).as_deref(), Some("propagation.sample: \"0\" is not valid (1 to 1000000)"));
        assert_eq!(err(1_000_001).as_deref(), Some("propagation.sample: \"1000001\" is not valid (1 to 1000000)"));
        assert_eq!(err(8), None);
    }

    #[test]
    fn config_fields() {
        let err = |json: &str| crate::Settings::from_json(json.as_bytes()).err().map(|e| e.to_string());
        assert_eq!(
            err(r#"{"workload": "Bad Name"}"#).as_deref(),
            Some(r#"workload: "Bad Name" is not valid (a Kubernetes name, DNS-1123 subdomain)"#)
        );
        assert_eq!(
            err(r#"{"propagation": {"sample": 0}}"#).as_deref(),
            Some("propagation.sample: \"0\" is not valid (1 to 1000000)")
        );
        let s = crate::Settings::from_json(
            br#"{"workload": "reviews-v1", "propagation": {}, "propagation_assist": {"heal": false}}"#,
        )
        .unwrap();
        assert_eq!((s.workload.as_deref(), s.propagation), (Some("reviews-v1"), Some(8)));
        assert!(!s.assist.unwrap().heal);
        assert!(err(r#"{"propagation": {"rate": 1}}"#).unwrap().contains("unknown field `rate`, expected `sample`"));
    }
}
