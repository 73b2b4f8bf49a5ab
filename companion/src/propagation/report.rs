//! One `POST /v1/reports` body, checked: every field the filter sends, each
//! bad one named (`outbound.<service>.kept`); unknown fields are ignored.
//! The body is at most 16 KiB (the handler refuses more before reading it)
//! and serde_json stops nesting at 128 levels, so parsing is bounded.

use isogroup_core::config::is_namespace;
use isogroup_core::propagation::CLASS_NAMES;
use isogroup_core::table::is_valid_service;
use serde_json::{Map, Value};

/// A report body's limit, as the filter keeps to it.
pub const MAX_BODY: usize = isogroup_core::propagation::MAX_REPORT_BYTES;
/// Destinations taken from one report (the filter sends at most as many);
/// more are counted as overflow.
pub const MAX_DESTINATIONS: usize = isogroup_core::propagation::MAX_DESTINATIONS;
/// `propagation.sample`'s range in the filter.
const MAX_SAMPLE: u64 = 1_000_000;
/// Longest name quoted back in an error.
const QUOTE: usize = 64;

/// Counts in `CLASS_NAMES` order: kept, changed, healed, dropped, untraced.
pub type Counts = [u64; 5];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub workload: String,
    pub namespace: String,
    pub sample: u32,
    pub window_s: u64,
    /// Per destination service, at most `MAX_DESTINATIONS`.
    pub outbound: Vec<(String, Counts)>,
    /// Destinations past `MAX_DESTINATIONS`, left out.
    pub left_out: usize,
}

/// Why a body is refused: the field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadReport {
    pub field: String,
    pub why: String,
}

impl std::fmt::Display for BadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.why)
    }
}

fn bad(field: impl Into<String>, why: impl Into<String>) -> BadReport {
    BadReport { field: field.into(), why: why.into() }
}

/// A name as it appears in a field path: cut to `QUOTE` characters.
fn shown(name: &str) -> String {
    match name.char_indices().nth(QUOTE) {
        Some((at, _)) => format!("{}…", &name[..at]),
        None => name.to_owned(),
    }
}

pub fn parse(body: &[u8]) -> Result<Report, BadReport> {
    let value: Value = serde_json::from_slice(body).map_err(|e| bad("body", format!("not JSON: {e}")))?;
    let Value::Object(top) = value else {
        return Err(bad("body", "must be a JSON object"));
    };
    let workload = text(&top, "workload")?;
    if !is_valid_service(workload) {
        return Err(bad("workload", "a service name (lowercase letters, digits, '-', '.'; at most 253)"));
    }
    let namespace = text(&top, "namespace")?;
    if !is_namespace(namespace) {
        return Err(bad("namespace", "a Kubernetes namespace name (DNS-1123 label)"));
    }
    let sample = count(&top, "sample", "sample")?;
    if !(1..=MAX_SAMPLE).contains(&sample) {
        return Err(bad("sample", format!("1 to {MAX_SAMPLE}")));
    }
    let window_s = count(&top, "window_s", "window_s")?;
    let Some(outbound) = top.get("outbound") else {
        return Err(bad("outbound", "missing"));
    };
    let Value::Object(outbound) = outbound else {
        return Err(bad("outbound", "must be an object of destination services"));
    };
    let mut destinations = Vec::with_capacity(outbound.len().min(MAX_DESTINATIONS));
    for (service, classes) in outbound {
        let at = format!("outbound.{}", shown(service));
        if !is_valid_service(service) {
            return Err(bad(at, "not a service name (lowercase letters, digits, '-', '.'; at most 253)"));
        }
        let Value::Object(classes) = classes else {
            return Err(bad(at, "must be an object of counts"));
        };
        let mut counts = [0; 5];
        for (n, class) in counts.iter_mut().zip(CLASS_NAMES) {
            *n = count(classes, class, &format!("{at}.{class}"))?;
        }
        destinations.push((service.clone(), counts));
    }
    let left_out = destinations.len().saturating_sub(MAX_DESTINATIONS);
    destinations.truncate(MAX_DESTINATIONS);
    Ok(Report {
        workload: workload.to_owned(),
        namespace: namespace.to_owned(),
        sample: sample as u32,
        window_s,
        outbound: destinations,
        left_out,
    })
}

fn text<'a>(object: &'a Map<String, Value>, key: &str) -> Result<&'a str, BadReport> {
    match object.get(key) {
        None => Err(bad(key, "missing")),
        Some(Value::String(s)) => Ok(s),
        Some(_) => Err(bad(key, "must be a string")),
    }
}

/// A non-negative integer field, named `field` in the error.
fn count(object: &Map<String, Value>, key: &str, field: &str) -> Result<u64, BadReport> {
    match object.get(key) {
        None => Err(bad(field, "missing")),
        Some(v) => v.as_u64().ok_or_else(|| bad(field, "must be a non-negative integer")),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn good() -> Value {
        json!({"workload": "b", "namespace": "demo", "sample": 8, "window_s": 10,
               "outbound": {"c": {"kept": 1, "changed": 2, "healed": 3, "dropped": 4, "untraced": 5}}})
    }

    fn field_of(body: &Value) -> String {
        parse(body.to_string().as_bytes()).unwrap_err().field
    }

    #[test]
    fn a_report_as_the_filter_sends_it() {
        // The filter's own encoder, so the two sides cannot drift apart.
        let mut counts = isogroup_core::propagation::Counts::default();
        counts.add("reviews", 0, 7);
        counts.add("ratings.bookinfo", 3, 2);
        let body = counts.report("productpage", "bookinfo", 8, 10);
        let report = parse(body.as_bytes()).unwrap();
        assert_eq!(report.workload, "productpage");
        assert_eq!(report.namespace, "bookinfo");
        assert_eq!((report.sample, report.window_s, report.left_out), (8, 10, 0));
        let mut outbound = report.outbound;
        outbound.sort();
        assert_eq!(outbound, vec![("ratings.bookinfo".into(), [0, 0, 0, 2, 0]), ("reviews".into(), [7, 0, 0, 0, 0])]);
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let mut body = good();
        body["future"] = json!({"x": [1, 2]});
        body["outbound"]["c"]["later"] = json!(1);
        let report = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!(report.outbound, vec![("c".into(), [1, 2, 3, 4, 5])]);
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(&str, Value, &str)> = vec![
            ("workload", json!(null), "workload"),
            ("workload", json!("Bad_Name"), "workload"),
            ("namespace", json!(7), "namespace"),
            ("namespace", json!("no.dots"), "namespace"),
            ("sample", json!(0), "sample"),
            ("sample", json!(1_000_001), "sample"),
            ("sample", json!("8"), "sample"),
            ("window_s", json!(-1), "window_s"),
            ("outbound", json!([]), "outbound"),
            ("outbound", json!({"c": {"kept": 1}}), "outbound.c.changed"),
            (
                "outbound",
                json!({"c": {"kept": -1, "changed": 0, "healed": 0, "dropped": 0, "untraced": 0}}),
                "outbound.c.kept",
            ),
            (
                "outbound",
                json!({"c": {"kept": 1.5, "changed": 0, "healed": 0, "dropped": 0, "untraced": 0}}),
                "outbound.c.kept",
            ),
            (
                "outbound",
                json!({"c": {"kept": 1, "changed": 0, "healed": 0, "dropped": 0, "untraced": "x"}}),
                "outbound.c.untraced",
            ),
            ("outbound", json!({"c": 3}), "outbound.c"),
            ("outbound", json!({"Not A Service": {}}), "outbound.Not A Service"),
        ];
        for (key, value, want) in cases {
            let mut body = good();
            body[key] = value;
            assert_eq!(field_of(&body), want, "{body}");
        }
        for key in ["workload", "namespace", "sample", "window_s", "outbound"] {
            let mut body = good();
            body.as_object_mut().unwrap().remove(key);
            assert_eq!(field_of(&body), key);
        }
        assert_eq!(field_of(&json!([1])), "body");
        assert_eq!(parse(b"{\"workload\":").unwrap_err().field, "body");
    }

    #[test]
    fn a_long_name_is_quoted_cut() {
        let long = "x".repeat(300);
        let mut body = good();
        body["outbound"] = json!({ long.clone(): 1 });
        let field = field_of(&body);
        assert!(field.len() < 100, "{field}");
        assert!(field.starts_with("outbound.xxxx"), "{field}");
    }

    #[test]
    fn deep_json_is_refused_not_recursed() {
        let depth = 100_000;
        let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let err = parse(body.as_bytes()).unwrap_err();
        assert_eq!(err.field, "body");
        assert!(err.why.contains("recursion limit"), "{err}");
        let inside = format!(r#"{{"workload":"b","extra":{}1{}}}"#, "[".repeat(5_000), "]".repeat(5_000));
        assert_eq!(parse(inside.as_bytes()).unwrap_err().field, "body");
    }

    #[test]
    fn destinations_past_the_cap_are_left_out_and_counted() {
        let mut outbound = Map::new();
        for i in 0..MAX_DESTINATIONS + 7 {
            outbound
                .insert(format!("s{i}"), json!({"kept": 1, "changed": 0, "healed": 0, "dropped": 0, "untraced": 0}));
        }
        let mut body = good();
        body["outbound"] = Value::Object(outbound);
        let report = parse(body.to_string().as_bytes()).unwrap();
        assert_eq!((report.outbound.len(), report.left_out), (MAX_DESTINATIONS, 7));
    }
}
