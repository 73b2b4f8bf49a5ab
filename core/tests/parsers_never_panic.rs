//! Property tests for every parser that sees outside input: whatever the
//! bytes, no panic, and what comes out obeys the SPEC (a group is a DNS-1123
//! label and round-trips through the place it came from; an error names the
//! field). (`./build.sh fuzz` runs the same targets coverage-guided, longer.)

#![cfg(not(target_arch = "wasm32"))] // proptest runs natively; the fuzz targets cover wasm-free code alike
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::net::IpAddr;

use isogroup_core::assist::trace_id;
use isogroup_core::authority::{normalize, MAX_HOST_LEN};
use isogroup_core::cidr::{peer_ip, Cidr};
use isogroup_core::decide::{decide_service, Decision};
use isogroup_core::edge::{cookie_without, query_param};
use isogroup_core::group::{
    baggage_with, baggage_without, cookie_value, from_baggage, from_header, is_valid_group, strict_lists, Lookup,
};
use isogroup_core::{synth, Limits, RawTable, Settings, Table};
use proptest::prelude::*;
use regex_lite::Regex;

/// The SPEC's group name, as the SPEC writes it.
fn spec_group(name: &[u8]) -> bool {
    let re = Regex::new("^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$").unwrap();
    std::str::from_utf8(name).is_ok_and(|s| re.is_match(s))
}

/// Bytes biased towards the characters the parsers split on.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            4 => prop::sample::select(b"abz09-_=;, %+\t\"[]:.*?&#".to_vec()),
            1 => any::<u8>(),
        ],
        0..300,
    )
}

/// Short strings near the group-name grammar (dashes, capitals, length 63/64).
fn group_like() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9-]{0,70}", "[a-zA-Z0-9_.-]{0,10}", "[a-z0-9]{1}[a-z0-9-]{61}[a-z0-9]{1,2}"]
}

/// The members of a baggage value, trimmed, empty ones dropped.
fn members(v: &[u8]) -> Vec<&[u8]> {
    v.split(|&b| b == b',').map(<[u8]>::trim_ascii).filter(|m| !m.is_empty()).collect()
}

fn member_key(m: &[u8]) -> Option<&[u8]> {
    let kv = m.split(|&b| b == b';').next()?;
    Some(kv[..kv.iter().position(|&b| b == b'=')?].trim_ascii())
}

fn is_mapped(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.to_ipv4_mapped().is_some())
}

fn percent_encode(v: &[u8]) -> String {
    v.iter().map(|b| format!("%{b:02X}")).collect()
}

/// The top-level fields an error may name.
const CONFIG_FIELDS: &[&str] = &[
    "(document)",
    "group_header",
    "baggage_key",
    "cookie",
    "strict_header",
    "cluster_header",
    "target_header",
    "base_group",
    "workload_group",
    "inject_baggage",
    "annotate_response",
    "failfast_status",
    "limits",
    "edge",
    "propagation_assist",
    "table",
];
const TABLE_FIELDS: &[&str] = &["(document)", "table", "version", "base_group", "groups", "services"];

/// Whether an error starts with where it is: a known field (or the unknown
/// one it complains about), an array index, or the whole document. (A
/// mutated field name may hold `.`, `: ` or a backtick: every split is tried.
/// One that is not plain printable ASCII is quoted and escaped.)
fn names_a_field(error: &str, fields: &[&str]) -> bool {
    let at = |path: &str, message: &str| {
        let first = path.split(['.', '[']).next().unwrap_or(path);
        let unknown = (0..path.len()).filter(|&i| i == 0 || path.as_bytes()[i - 1] == b'.').any(|i| {
            path.get(i..).is_some_and(|field| {
                // a plain name in backticks, any other quoted as in the path
                message.starts_with(&format!("unknown field `{field}`"))
                    || field.starts_with('"') && message.starts_with(&format!("unknown field {field}"))
            })
        });
        path == "(document)" || path.starts_with('[') || fields.contains(&first) || unknown
    };
    error.match_indices(": ").any(|(k, _)| at(&error[..k], &error[k + 2..]))
}

proptest! {
    // Header parsers: cheap to run, costly to generate in a debug build;
    // `./build.sh fuzz` goes deeper.
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn group_names_are_the_specs(name in group_like()) {
        prop_assert_eq!(is_valid_group(name.as_bytes()), spec_group(name.as_bytes()), "{:?}", name);
    }

    #[test]
    fn group_header(v in prop_oneof![header_bytes(), group_like().prop_map(|g| format!(" {g}\t").into_bytes())]) {
        match from_header(&v) {
            Lookup::Found(g) => {
                prop_assert!(spec_group(g.as_str().as_bytes()));
                prop_assert_eq!(g.as_str().as_bytes(), v.trim_ascii(), "the value as sent, trimmed");
            }
            Lookup::Invalid => prop_assert!(!spec_group(v.trim_ascii())),
            Lookup::Absent => prop_assert!(false, "a header value is never absent"),
        }
    }

    #[test]
    fn baggage_member(v in header_bytes(), g in group_like()) {
        let found = from_baggage(&v, "isogroup");
        let has_key = members(&v).iter().any(|m| member_key(m) == Some(b"isogroup"));
        prop_assert_eq!(found != Lookup::Absent, has_key, "absent exactly when no member has the key");
        if let Lookup::Found(group) = found {
            prop_assert!(spec_group(group.as_str().as_bytes()));
            let again = baggage_with(Some(&v), "isogroup", group.as_str());
            prop_assert_eq!(from_baggage(&again, "isogroup"), found, "round-trips through baggage_with");
        }
        // Stripping removes our member and keeps every other one, in order.
        let rest = baggage_without(&v, "isogroup").unwrap_or_default();
        prop_assert_eq!(from_baggage(&rest, "isogroup"), Lookup::Absent);
        let others: Vec<&[u8]> = members(&v).into_iter().filter(|m| member_key(m) != Some(b"isogroup")).collect();
        prop_assert_eq!(members(&rest), others);
        // A valid group written in, even percent-encoded, is read back.
        if spec_group(g.as_bytes()) {
            let stamped = baggage_with(Some(&v), "isogroup", &g);
            prop_assert_eq!(from_baggage(&stamped, "isogroup").found(), Some(g.clone()));
            let encoded = format!("isogroup={};p=1", percent_encode(g.as_bytes()));
            prop_assert_eq!(from_baggage(encoded.as_bytes(), "isogroup").found(), Some(g));
        }
    }

    #[test]
    fn cookies(v in header_bytes(), lane in "[a-z0-9-]{1,20}") {
        if let Some(value) = cookie_value(&v, "isogroup") {
            prop_assert!(!value.contains(&b';'), "one cookie's value");
        }
        let rest = cookie_without(&v, "isogroup").unwrap_or_default();
        prop_assert_eq!(cookie_value(&rest, "isogroup"), None, "stripped");
        let with = [&rest[..], format!("; isogroup={lane}").as_bytes()].concat();
        prop_assert_eq!(cookie_value(&with, "isogroup"), Some(lane.as_bytes()), "found among the others");
    }

    #[test]
    fn strict_list(v in header_bytes()) {
        if strict_lists(&v, "svc") {
            let items: Vec<&[u8]> = v.split(|&b| b == b',').map(<[u8]>::trim_ascii).collect();
            prop_assert!(items.contains(&&b"svc"[..]) || items.contains(&&b"*"[..]));
        }
        let listed = [&v[..], b", svc "].concat();
        prop_assert!(strict_lists(&listed, "svc"));
        prop_assert!(!strict_lists(&[&v[..], b",svcx, sv"].concat(), "svc") || strict_lists(&v, "svc"), "no partial names");
    }

    #[test]
    fn query_params(v in header_bytes(), value in prop::collection::vec(any::<u8>(), 0..40)) {
        if query_param(&v, "lane").is_some() {
            prop_assert!(v.contains(&b'?'));
        }
        // Any bytes, percent-encoded, come back as they were.
        let path = format!("/p?a=1&lane={}&lane=second#frag", percent_encode(&value));
        prop_assert_eq!(query_param(path.as_bytes(), "lane"), Some(value));
    }

    #[test]
    fn trace_ids(v in header_bytes(), id in "[0-9a-f]{32}") {
        if let Some(t) = trace_id("traceparent", &v) {
            prop_assert!(t.len() == 32 && t.iter().all(u8::is_ascii_hexdigit) && t.iter().any(|&b| b != b'0'));
        }
        match trace_id("x-request-id", &v) {
            Some(t) => prop_assert!(t == v.trim_ascii() && t.len() <= 128 && t.iter().all(u8::is_ascii_graphic)),
            None => prop_assert!(
                v.trim_ascii().is_empty() || v.trim_ascii().len() > 128 || !v.trim_ascii().iter().all(u8::is_ascii_graphic)
            ),
        }
        let tp = format!("00-{id}-00f067aa0ba902b7-01");
        let want = id.bytes().any(|b| b != b'0').then_some(id.as_bytes());
        prop_assert_eq!(trace_id("traceparent", tp.as_bytes()), want);
    }

    #[test]
    fn peer_addresses(v in header_bytes(), ip in any::<IpAddr>(), port in any::<u16>()) {
        prop_assert!(peer_ip(&v).is_none() || std::str::from_utf8(&v).is_ok(), "only text holds an address");
        let with_port = match ip {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        prop_assert_eq!(peer_ip(with_port.as_bytes()), Some(ip));
        prop_assert_eq!(peer_ip(ip.to_string().as_bytes()), Some(ip));
    }

    #[test]
    fn authorities(v in header_bytes()) {
        let mut buf = [0u8; MAX_HOST_LEN + 1];
        if let Some(host) = normalize(&v, &mut buf).map(str::to_owned) {
            prop_assert!(!host.is_empty() && host.len() <= MAX_HOST_LEN);
            prop_assert!(host.bytes().all(|b| b.is_ascii_graphic() && !b.is_ascii_uppercase()));
            // One trailing dot is removed per normalisation (SPEC), so a
            // host that still ends in one ("a.." gives "a.") is not a fixed point.
            if !host.contains(':') && !host.ends_with('.') {
                let mut again = [0u8; MAX_HOST_LEN + 1];
                let with_port = format!("{}:8080", host.to_ascii_uppercase());
                prop_assert_eq!(normalize(with_port.as_bytes(), &mut again), Some(host.as_str()), "port and case");
            }
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn cidrs(s in "[0-9a-f:./]{0,50}", ip in any::<IpAddr>(), len in 0u8..=128) {
        match Cidr::parse(&s) {
            Ok(c) => {
                // The address it was written with is inside it.
                let addr: IpAddr = s.split('/').next().unwrap().trim().parse().unwrap();
                prop_assert!(c.contains(addr), "{} does not contain its own address", s);
            }
            Err(why) => prop_assert!([
                "not an IP address",
                "prefix length is not a number",
                "prefix length too long for the address family",
            ].contains(&why)),
        }
        let max = if ip.is_ipv4() { 32 } else { 128 };
        let text = format!("{ip}/{len}");
        match Cidr::parse(&text) {
            // A peer in IPv4-mapped form is its IPv4 address: only a range
            // inside ::ffff:0:0/96 holds it.
            Ok(c) => prop_assert!(
                len <= max && (c.contains(ip) || is_mapped(ip) && len < 96),
                "{} does not contain {}", text, ip
            ),
            Err(why) => prop_assert!(len > max && why == "prefix length too long for the address family"),
        }
    }

    #[test]
    fn plugin_configs(v in prop::collection::vec(any::<u8>(), 0..400)) {
        // Arbitrary bytes: almost always a JSON error, which names where.
        if let Err(e) = Settings::from_json(&v) {
            prop_assert!(names_a_field(&e.to_string(), CONFIG_FIELDS), "{}", e);
        }
    }

    #[test]
    fn plugin_config_values(field in prop::sample::select(vec![
        "group_header", "baggage_key", "cookie", "base_group", "workload_group", "failfast_status", "inject_baggage",
    ]), value in prop_oneof![
        "[ -~]{0,20}".prop_map(|s| serde_json::to_string(&s).unwrap()),
        group_like().prop_map(|s| serde_json::to_string(&s).unwrap()),
        any::<i64>().prop_map(|n| n.to_string()),
        (300i64..700).prop_map(|n| n.to_string()),
        Just("null".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
    ]) {
        let json = format!("{{\"{field}\": {value}}}");
        match Settings::from_json(json.as_bytes()) {
            Err(e) => prop_assert!(e.to_string().starts_with(&format!("{field}:")), "{} does not name {}", e, field),
            Ok(s) => {
                // Accepted: the setting holds exactly what was written.
                let v: serde_json::Value = serde_json::from_str(&value).unwrap();
                let got = match field {
                    "group_header" => serde_json::json!(s.group_header),
                    "baggage_key" => serde_json::json!(s.baggage_key),
                    "cookie" => serde_json::json!(s.cookie),
                    "base_group" => serde_json::json!(s.base_group),
                    "workload_group" => serde_json::json!(s.workload_group),
                    "failfast_status" => serde_json::json!(s.failfast_status),
                    _ => serde_json::json!(s.inject_baggage),
                };
                prop_assert_eq!(got, v);
                if field.ends_with("group") {
                    prop_assert!(s.workload_group.as_deref().is_none_or(|g| spec_group(g.as_bytes())));
                    prop_assert!(spec_group(s.base_group.as_bytes()));
                }
            }
        }
    }

    #[test]
    fn route_tables(v in prop::collection::vec(any::<u8>(), 0..400)) {
        if let Err(e) = Table::from_json(&v, "base", &Limits::default()) {
            prop_assert!(names_a_field(&e.to_string(), TABLE_FIELDS), "{}", e);
        }
    }

    #[test]
    fn mutated_tables(seed in 0usize..40, at in any::<prop::sample::Index>(), byte in any::<u8>()) {
        // A valid table with one byte changed: compiles and routes only to
        // clusters it lists, or is refused with an error naming the field.
        let mut json = serde_json::to_vec(&synth::table(seed % 7 + 1, seed % 5 + 1)).unwrap();
        let i = at.index(json.len());
        json[i] = byte;
        match Table::from_json(&json, "base", &Limits::default()) {
            Err(e) => prop_assert!(names_a_field(&e.to_string(), TABLE_FIELDS), "{}", e),
            Ok(t) => {
                let raw: RawTable = serde_json::from_slice(&json).unwrap();
                for (_, service) in t.services() {
                    for (_, group) in t.groups() {
                        let listed = match decide_service(&t, service, Some(group), None, None) {
                            Decision::Route(r) => raw.services.get(r.service).unwrap().clusters.get(r.serving) == Some(&r.cluster.to_owned()),
                            Decision::FailFast(f) => raw.groups.get(f.group).is_some_and(|g| g.mode == isogroup_core::Mode::Strict),
                            Decision::PassThrough => false,
                        };
                        prop_assert!(listed, "{} for {}", service, group);
                    }
                }
            }
        }
    }
}

/// `Lookup::Found`'s name, for comparisons.
trait Found {
    fn found(&self) -> Option<String>;
}

impl Found for Lookup {
    fn found(&self) -> Option<String> {
        match self {
            Lookup::Found(g) => Some(g.to_string()),
            _ => None,
        }
    }
}
