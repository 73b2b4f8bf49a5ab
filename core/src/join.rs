//! Joining a lane from a browser (edge mode with `edge.join_path`): the
//! filter answers `GET <join_path>?lane=<g>[&return=/path]` itself with a
//! redirect that sets (or, for an empty `lane`, clears) the lane cookie.
//! Sans I/O: this returns the reply, the filter sends it.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::cat;
use crate::edge::{query_param, LANE_COOKIE};
use crate::group::GroupName;
use crate::request::LocalReply;
use crate::table::Table;

/// Whether `path` (query and fragment aside) is exactly `join_path`.
pub fn is_join(path: &[u8], join_path: &str) -> bool {
    let end = path.iter().position(|&b| b == b'?' || b == b'#').unwrap_or(path.len());
    &path[..end] == join_path.as_bytes()
}

/// The answer to a join request (`path` is the whole `:path`).
pub fn reply(method: &[u8], path: &[u8], table: Option<&Table>) -> LocalReply {
    if method != b"GET" && method != b"HEAD" {
        let mut r = error(405, "method_not_allowed", "the join path answers GET");
        r.headers.push(("allow", "GET, HEAD".into()));
        return r;
    }
    let Some(lane) = query_param(path, "lane") else {
        return error(400, "missing_lane", "lane: missing (an empty lane leaves the lane)");
    };
    let target = match query_param(path, "return") {
        None => "/".to_owned(),
        Some(r) => match local_path(&r) {
            Some(p) => p.to_owned(),
            None => {
                let detail = "return: not a path on this host (one leading '/', printable ASCII, no backslash)";
                return error(400, "invalid_return", detail);
            }
        },
    };
    let cookie = if lane.is_empty() {
        cat!(LANE_COOKIE, "=; Path=/; SameSite=Lax; Max-Age=0")
    } else {
        let Some(group) = GroupName::new(&lane) else {
            return error(400, "unknown_lane", "lane: not a valid group name (DNS-1123 label)");
        };
        if !table.is_some_and(|t| t.knows_group(group.as_str())) {
            // A valid group name needs no JSON escaping.
            let detail = cat!(r#"lane: \""#, group, r#"\" is not a group this gateway's table knows"#);
            return error(400, "unknown_lane", &detail);
        }
        cat!(LANE_COOKIE, "=", group, "; Path=/; SameSite=Lax")
    };
    LocalReply {
        status: 302,
        grpc: false,
        service: String::new(),
        headers: vec![("location", target), ("set-cookie", cookie), ("cache-control", "no-store".into())],
        body: String::new(),
    }
}

/// `value` if it is a path on this host: one leading `/` (not `//` or `/\`,
/// which browsers read as another host), printable ASCII only (no CR/LF, no
/// spaces), no backslash anywhere.
fn local_path(value: &[u8]) -> Option<&str> {
    let ok = value.first() == Some(&b'/')
        && !matches!(value.get(1), Some(b'/' | b'\\'))
        && value.iter().all(|&b| b.is_ascii_graphic() && b != b'\\');
    ok.then(|| core::str::from_utf8(value).ok()).flatten()
}

fn error(status: u16, code: &str, detail: &str) -> LocalReply {
    LocalReply {
        status,
        grpc: false,
        service: String::new(),
        headers: vec![("content-type", "application/json".into()), ("cache-control", "no-store".into())],
        // `code` and `detail` are ours, already JSON-safe.
        body: cat!(r#"{"error":""#, code, r#"","detail":""#, detail, r#""}"#),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    fn table() -> Table {
        let json =
            r#"{"groups":{"team-a":{}},"services":{"r":{"hosts":["r"],"clusters":{"base":"c","feature-1":"f"}}}}"#;
        Table::from_json(json.as_bytes(), "base", &Limits::default()).unwrap()
    }

    /// status, then every header as `name: value`, then the body.
    fn show(r: &LocalReply) -> Vec<String> {
        let mut out = vec![r.status.to_string()];
        out.extend(r.headers.iter().map(|(k, v)| format!("{k}: {v}")));
        if !r.body.is_empty() {
            out.push(r.body.clone());
        }
        out
    }

    #[test]
    fn joins_leaves_and_refusals() {
        let t = table();
        let redirect = |to: &str, cookie: &str| {
            vec![
                "302".to_owned(),
                format!("location: {to}"),
                format!("set-cookie: {cookie}"),
                "cache-control: no-store".into(),
            ]
        };
        let refused = |status: &str, body: &str| {
            vec![
                status.to_owned(),
                "content-type: application/json".into(),
                "cache-control: no-store".into(),
                body.to_owned(),
            ]
        };
        let joined = "isogroup-lane=feature-1; Path=/; SameSite=Lax";
        let left = "isogroup-lane=; Path=/; SameSite=Lax; Max-Age=0";
        // the refused value is not echoed: it may hold anything
        let bad_return = || {
            refused(
                "400",
                r#"{"error":"invalid_return","detail":"return: not a path on this host (one leading '/', printable ASCII, no backslash)"}"#,
            )
        };
        let cases: Vec<(&str, &str, Vec<String>)> = vec![
            ("GET", "/j?lane=feature-1", redirect("/", joined)),
            ("HEAD", "/j?lane=feature-1", redirect("/", joined)),
            // a key of a service's clusters, a group of `groups`, the base group
            (
                "GET",
                "/j?lane=team-a&return=/shop?x=1",
                redirect("/shop?x=1", "isogroup-lane=team-a; Path=/; SameSite=Lax"),
            ),
            ("GET", "/j?lane=base", redirect("/", "isogroup-lane=base; Path=/; SameSite=Lax")),
            ("GET", "/j?return=%2Fcart&lane=feature-1", redirect("/cart", joined)),
            ("GET", "/j?lane=&return=/after", redirect("/after", left)),
            ("GET", "/j?lane", redirect("/", left)),
            (
                "GET",
                "/j?lane=gone",
                refused(
                    "400",
                    r#"{"error":"unknown_lane","detail":"lane: \"gone\" is not a group this gateway's table knows"}"#,
                ),
            ),
            (
                "GET",
                "/j?lane=Bad%22%0a",
                refused("400", r#"{"error":"unknown_lane","detail":"lane: not a valid group name (DNS-1123 label)"}"#),
            ),
            ("GET", "/j?lane=feature-1&return=//evil.example/", bad_return()),
            ("GET", "/j?lane=feature-1&return=/%5Cevil.example", bad_return()),
            ("GET", "/j?lane=feature-1&return=https://evil.example/", bad_return()),
            ("GET", "/j?lane=feature-1&return=/a%0d%0aSet-Cookie:x=1", bad_return()),
            ("GET", "/j?lane=feature-1&return=shop", bad_return()),
            ("GET", "/j?lane=feature-1&return=", bad_return()),
            ("GET", "/j?lane=feature-1&return=/a%20b", bad_return()),
            (
                "GET",
                "/j",
                refused("400", r#"{"error":"missing_lane","detail":"lane: missing (an empty lane leaves the lane)"}"#),
            ),
        ];
        for (method, path, want) in cases {
            assert_eq!(show(&reply(method.as_bytes(), path.as_bytes(), Some(&t))), want, "{method} {path}");
        }
        let post = reply(b"POST", b"/j?lane=feature-1", Some(&t));
        assert_eq!(
            (post.status, post.headers.last().map(|(k, v)| (*k, v.as_str()))),
            (405, Some(("allow", "GET, HEAD")))
        );
        // before any table every lane is unknown; leaving still works
        assert_eq!(reply(b"GET", b"/j?lane=feature-1", None).status, 400);
        assert_eq!(reply(b"GET", b"/j?lane=", None).status, 302);
    }

    #[test]
    fn the_join_path_is_matched_exactly() {
        let cases: &[(&str, bool)] = &[
            ("/.isogroup/join", true),
            ("/.isogroup/join?lane=a", true),
            ("/.isogroup/join#x", true),
            ("/.isogroup/join/", false),
            ("/.isogroup/joinx", false),
            ("/.isogroup", false),
            ("/x/.isogroup/join", false),
        ];
        for (path, want) in cases {
            assert_eq!(is_join(path.as_bytes(), "/.isogroup/join"), *want, "{path}");
        }
    }
}
