//! Edge mode's second round on the fake host: the join path answered
//! locally, source bindings by the peer address and the filter's clock,
//! table rules, `runtime: false`, and the peer read only when needed.

use crate::proxy::{Action, RootContext};

use super::{configured, send};
use crate::fake_host::{Call, FakeHost, Process};
use crate::root::Root;

const TABLE: &str = r#"{"version": 3,
  "services": {"a": {"hosts": ["a"], "clusters": {"base": "a-base", "lane-1": "a-lane-1"}}},
  "sources": [{"cidr": "127.0.0.2", "group": "lane-1", "expires_at": 2000000000}],
  "rules": [{"header": "x-rt", "values": ["yes"], "group": "lane-1"}]}"#;

/// An edge filter with `edge` as its config and the table inline.
fn edge(edge: &str) -> (std::rc::Rc<Process>, Root<FakeHost>, FakeHost) {
    let process = Process::new();
    let config = format!(r#"{{"edge": {edge}, "table": {{"inline": {TABLE}}}}}"#);
    let (root, host) = configured(&process, &config);
    // Configuring read the node labels; count the request path's reads only.
    host.vm.property_reads.set(0);
    (process, root, host)
}

fn from(host: &FakeHost, peer: &str) {
    host.vm.properties.borrow_mut().insert("source.address".into(), format!("{peer}:40000").into_bytes());
}

/// The cluster a request to `a` was routed to.
fn cluster(root: &mut Root<FakeHost>, host: &FakeHost, extra: &[(&str, &str)]) -> String {
    let mut headers = vec![(":authority", "a"), (":path", "/"), (":method", "GET")];
    headers.extend_from_slice(extra);
    let (action, _) = send(root, host, &headers);
    assert_eq!(action, Action::Continue);
    let values = host.request_header("x-isogroup-cluster");
    values.first().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
}

/// Sets the host's wall clock and lets a tick carry it to the filter.
fn clock(root: &mut Root<FakeHost>, host: &FakeHost, unix_s: u64) {
    host.vm.now_ms.set(unix_s * 1000);
    root.on_tick();
}

#[test]
fn a_join_is_answered_locally_with_the_cookie() {
    let (_, mut root, host) = edge(r#"{"join_path": "/.isogroup/join"}"#);
    type Case<'a> = (&'a str, u32, &'a [(&'a str, &'a str)]);
    let cases: &[Case] = &[
        (
            "/.isogroup/join?lane=lane-1&return=/shop",
            302,
            &[("location", "/shop"), ("set-cookie", "isogroup-lane=lane-1; Path=/; SameSite=Lax")],
        ),
        (
            "/.isogroup/join?lane=",
            302,
            &[("location", "/"), ("set-cookie", "isogroup-lane=; Path=/; SameSite=Lax; Max-Age=0")],
        ),
        ("/.isogroup/join?lane=nope", 400, &[("content-type", "application/json")]),
        ("/.isogroup/join?lane=lane-1&return=//evil", 400, &[("content-type", "application/json")]),
    ];
    for (path, want_status, want_headers) in cases {
        host.vm.calls.borrow_mut().clear();
        let (action, _) = send(&mut root, &host, &[(":authority", "gw"), (":path", path), (":method", "GET")]);
        assert_eq!(action, Action::Pause, "{path}");
        let calls = host.calls();
        let [Call::LocalReply { status, headers, body }] = calls.as_slice() else { panic!("{path}: {calls:?}") };
        assert_eq!(status, want_status, "{path}");
        for (k, v) in *want_headers {
            assert!(headers.contains(&((*k).to_owned(), v.as_bytes().to_vec())), "{path}: {headers:?}");
        }
        if *status == 400 {
            assert!(String::from_utf8_lossy(body).starts_with(r#"{"error":""#), "{path}");
        }
        assert!(host.request_header("x-isogroup-cluster").is_empty(), "{path}: a join is never forwarded");
    }
    // the cookie a join set routes the next request, from any peer
    assert_eq!(cluster(&mut root, &host, &[("cookie", "isogroup-lane=lane-1")]), "a-lane-1");
    assert_eq!(cluster(&mut root, &host, &[("cookie", "isogroup-lane=gone")]), "a-base");
    // no peer needed for any of it
    assert_eq!(host.vm.property_reads.get(), 0);
}

#[test]
fn source_bindings_route_by_peer_until_they_expire() {
    let (_, mut root, host) = edge(r#"{"runtime": true}"#);
    clock(&mut root, &host, 1_999_999_998);
    from(&host, "127.0.0.2");
    assert_eq!(cluster(&mut root, &host, &[]), "a-lane-1");
    assert_eq!(host.request_header("x-isogroup"), [b"lane-1".to_vec()], "the group is stamped on");
    from(&host, "127.0.0.3");
    assert_eq!(cluster(&mut root, &host, &[]), "a-base");
    // the runtime table rule
    assert_eq!(cluster(&mut root, &host, &[("x-rt", "yes")]), "a-lane-1");
    from(&host, "127.0.0.2");
    clock(&mut root, &host, 2_000_000_000);
    assert_eq!(cluster(&mut root, &host, &[]), "a-base", "expired by the filter's own clock");
    assert_eq!(host.vm.property_reads.get(), 4, "one peer read per request");
}

#[test]
fn without_runtime_bindings_and_table_rules_are_ignored_and_the_peer_unread() {
    let (_, mut root, host) = edge("{}");
    clock(&mut root, &host, 1_000);
    from(&host, "127.0.0.2");
    assert_eq!(cluster(&mut root, &host, &[]), "a-base");
    assert_eq!(cluster(&mut root, &host, &[("x-rt", "yes")]), "a-base");
    assert_eq!(
        cluster(&mut root, &host, &[("cookie", "isogroup-lane=lane-1")]),
        "a-base",
        "no join_path: no lane cookie"
    );
    assert_eq!(host.vm.property_reads.get(), 0);
}

/// Rule regexes run in the VM's scratch, and a table's rules are kept
/// compiled only where `runtime` runs them (checked everywhere: a rule over
/// the compile budget rejects the table either way).
#[test]
fn table_rules_are_kept_only_with_runtime_and_regexes_run_in_the_vm_scratch() {
    let regex_rules = r#"{"rules": [{"header": "x-user", "regex": "^dev-[a-z]+$", "group": "lane-1"}]"#;
    let (_, mut root, host) = edge(&format!(r#"{regex_rules}, "runtime": true}}"#));
    let vm = root.vm().unwrap().clone();
    assert!(!vm.table().unwrap().rules().is_empty());
    assert_eq!(cluster(&mut root, &host, &[("x-user", "dev-joe")]), "a-lane-1");
    assert_eq!(cluster(&mut root, &host, &[("x-user", "dev-Joe")]), "a-base");
    assert_eq!(cluster(&mut root, &host, &[("x-rt", "yes")]), "a-lane-1", "the table's rule");
    // the scratch is the VM's, put back after each request, grown once
    let scratch = vm.regex_scratch.take();
    assert_ne!(format!("{scratch:?}"), format!("{:?}", isogroup_core::regex::Scratch::default()));
    vm.regex_scratch.set(scratch);

    let (_, mut root, host) = edge(&format!(r#"{regex_rules}}}"#));
    assert!(root.vm().unwrap().table().unwrap().rules().is_empty(), "checked, not kept");
    assert_eq!(cluster(&mut root, &host, &[("x-user", "dev-joe")]), "a-lane-1", "the plugin's own rule");

    let hostile = TABLE.replace(r#""values": ["yes"]"#, r#""regex": "(?:(?:(?:x{0}){100}){100}){100}""#);
    for runtime in [false, true] {
        let config = format!(r#"{{"edge": {{"runtime": {runtime}}}, "table": {{"inline": {hostile}}}}}"#);
        let err = isogroup_core::Settings::from_json(config.as_bytes()).unwrap_err().to_string();
        assert!(err.contains("rules[0].regex: "), "{err}");
    }
}
