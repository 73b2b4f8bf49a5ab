//! The request path: the edits for every decision, the local replies, the
//! annotations, and every failure path of the host.

use crate::proxy::Action;

use super::{configured, inline_config, send};
use crate::fake_host::{Call, Process};

fn one(values: Vec<Vec<u8>>) -> Option<String> {
    assert!(values.len() <= 1, "several values: {values:?}");
    values.into_iter().next().map(|v| String::from_utf8(v).unwrap())
}

#[test]
fn every_decision_edits_the_request_as_the_spec_says() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &inline_config(""));
    // (headers sent, action, cluster header, target header, served annotation)
    type Case<'a> = (&'a [(&'a str, &'a str)], Action, Option<&'a str>, Option<&'a str>, Option<&'a str>);
    let cases: &[Case] = &[
        (
            &[(":authority", "a"), ("x-isogroup", "feature-1")],
            Action::Continue,
            Some("a-feature-1"),
            Some("feature-1"),
            Some("a=feature-1"),
        ),
        (
            &[(":authority", "a"), ("x-isogroup", "feature-2")],
            Action::Continue,
            Some("a-feature-1"),
            Some("feature-1"),
            Some("a=feature-1;fallback"),
        ),
        (
            &[(":authority", "b:8080"), ("x-isogroup", "feature-1")],
            Action::Continue,
            Some("b-base"),
            Some("base"),
            Some("b=base;fallback"),
        ),
        (&[(":authority", "a")], Action::Continue, Some("a-base"), Some("base"), Some("a=base")),
        // Not in the table: pass-through, but a client's routing headers never survive.
        (
            &[(":authority", "elsewhere"), ("x-isogroup-cluster", "a-team-s"), ("x-isogroup-target", "team-s")],
            Action::Continue,
            None,
            None,
            None,
        ),
        // A client-sent cluster is replaced by the decision's.
        (
            &[(":authority", "a"), ("x-isogroup-cluster", "a-team-s")],
            Action::Continue,
            Some("a-base"),
            Some("base"),
            Some("a=base"),
        ),
    ];
    for (headers, action, cluster, target, served) in cases {
        let (got, mut ctx) = send(&mut root, &host, headers);
        assert_eq!(got, *action, "{headers:?}");
        assert_eq!(one(host.request_header("x-isogroup-cluster")).as_deref(), *cluster, "{headers:?}");
        assert_eq!(one(host.request_header("x-isogroup-target")).as_deref(), *target, "{headers:?}");
        assert_eq!(ctx.on_http_response_headers(0, true), Action::Continue);
        assert_eq!(one(host.response_header("x-isogroup-served")).as_deref(), *served, "{headers:?}");
        assert!(host.calls().is_empty(), "{headers:?}: {:?}", host.calls());
    }
}

#[test]
fn fail_fast_answers_locally_and_never_forwards() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &inline_config(r#""failfast_status": 507,"#));
    let (action, _) = send(&mut root, &host, &[(":authority", "b"), ("x-isogroup", "team-s")]);
    assert_eq!(action, Action::Pause);
    let calls = host.calls();
    let [Call::LocalReply { status, headers, body }] = calls.as_slice() else { panic!("{calls:?}") };
    assert_eq!(*status, 507);
    assert!(headers.contains(&("x-isogroup-failfast".to_owned(), b"b".to_vec())));
    assert_eq!(
        String::from_utf8_lossy(body),
        r#"{"error":"isogroup_unavailable","service":"b","group":"team-s","reason":"strict_group"}"#
    );
    assert!(host.request_header("x-isogroup-cluster").is_empty());

    let (action, _) = send(
        &mut root,
        &host,
        &[
            (":authority", "b"),
            ("x-isogroup", "feature-1"),
            ("x-isogroup-strict", "b"),
            ("content-type", "application/grpc"),
        ],
    );
    assert_eq!(action, Action::Pause);
    let calls = host.calls();
    let [Call::GrpcReply { code, message, metadata }] = calls.as_slice() else { panic!("{calls:?}") };
    assert_eq!(*code, 14);
    assert!(message.contains(r#""reason":"strict_request""#), "{message}");
    assert_eq!(metadata, &[("x-isogroup-failfast".to_owned(), b"b".to_vec())]);
}

#[test]
fn annotate_response_false_adds_nothing() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &inline_config(r#""annotate_response": false,"#));
    let (_, mut ctx) = send(&mut root, &host, &[(":authority", "a"), ("x-isogroup", "feature-1")]);
    ctx.on_http_response_headers(0, true);
    assert_eq!(one(host.request_header("x-isogroup-cluster")).as_deref(), Some("a-feature-1"));
    assert!(host.response_header("x-isogroup-served").is_empty());
}

#[test]
fn the_served_annotation_names_the_table_the_request_was_decided_against() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &inline_config(""));
    let (_, mut ctx) = send(&mut root, &host, &[(":authority", "a"), ("x-isogroup", "feature-2")]);
    // A new table before the response, in which every service and group id
    // names something else (ids follow name order).
    let newer = r#"{"version": 8, "groups": {"0": {}, "00": {}},
        "services": {"0": {"hosts": ["0"], "clusters": {"base": "0-base"}}, "00": {"hosts": ["00"], "clusters": {"base": "00-base"}}}}"#;
    let vm = root.vm().unwrap();
    vm.install(isogroup_core::Table::from_json(newer.as_bytes(), "base", &vm.settings.limits).unwrap());
    ctx.on_http_response_headers(0, true);
    assert_eq!(one(host.response_header("x-isogroup-served")).as_deref(), Some("a=feature-1;fallback"));
}

#[test]
fn a_stream_holds_its_table_only_until_its_response_headers() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &inline_config(""));
    let vm = root.vm().unwrap().clone();
    let newer =
        || isogroup_core::Table::from_json(crate::tests::TABLE.as_bytes(), "base", &vm.settings.limits).unwrap();
    // Routed (annotated): held from the request to the response headers.
    let decided_against = std::rc::Rc::downgrade(&vm.table().unwrap());
    let (_, mut routed) = send(&mut root, &host, &[(":authority", "a")]);
    // Passed through (nothing to annotate): not held past the request headers.
    let (_, passed) = send(&mut root, &host, &[(":authority", "elsewhere")]);
    vm.install(newer());
    assert!(decided_against.upgrade().is_some(), "the routed stream still needs it for x-isogroup-served");
    routed.on_http_response_headers(0, false);
    assert_eq!(one(host.response_header("x-isogroup-served")).as_deref(), Some("a=base"));
    // The streams go on (a long download, a gRPC stream): the superseded table does not.
    assert!(decided_against.upgrade().is_none(), "a superseded table outlives its streams' response headers");
    // A stream whose request never reached its headers callback holds nothing either.
    let idle = crate::proxy::RootContext::create_http_context(&mut root, 2).unwrap();
    let current = std::rc::Rc::downgrade(&vm.table().unwrap());
    vm.install(newer());
    assert!(current.upgrade().is_none(), "a stream not yet started holds no table");
    drop((routed, passed, idle));
}

#[test]
fn unreadable_headers_still_strip_the_routing_headers() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &inline_config(""));
    host.fail("request_headers");
    let (action, _) = send(
        &mut root,
        &host,
        &[(":authority", "a"), ("x-isogroup-cluster", "a-team-s"), ("x-isogroup-target", "team-s")],
    );
    assert_eq!(action, Action::Continue);
    assert!(host.request_header("x-isogroup-cluster").is_empty());
    assert!(host.request_header("x-isogroup-target").is_empty());
    assert!(host.calls().is_empty());
}

#[test]
fn routing_headers_are_removed_on_every_path_that_does_not_set_them_whatever_the_scan_saw() {
    use crate::header_map::encode;
    let process = Process::new();
    // (config, authority, routing header the decision writes, its value)
    let cases = [
        (inline_config(""), "elsewhere", None),
        (inline_config(r#""cluster_header": null,"#), "a", Some(("x-isogroup-target", "base"))),
        (inline_config(r#""target_header": null,"#), "a", Some(("x-isogroup-cluster", "a-base"))),
        (r#"{"table": null}"#.to_owned(), "a", None),
    ];
    for (config, authority, written) in cases {
        let (mut root, host) = configured(&process, &config);
        let sent = [(":authority", authority), ("x-isogroup-cluster", "a-team-s"), ("x-isogroup-target", "team-s")];
        // A malformed entry (a name that is not UTF-8) ends the scan before
        // the client's routing headers.
        *host.vm.raw_request.borrow_mut() = Some(encode(&[
            (&b":authority"[..], authority.as_bytes()),
            (b"\xff", b"x"),
            (b"x-isogroup-cluster", b"a-team-s"),
            (b"x-isogroup-target", b"team-s"),
        ]));
        let (action, _) = send(&mut root, &host, &sent);
        assert_eq!(action, Action::Continue, "{config}");
        for name in ["x-isogroup-cluster", "x-isogroup-target"] {
            let want = written.filter(|(n, _)| *n == name).map(|(_, v)| v.to_owned());
            assert_eq!(one(host.request_header(name)), want, "{config}: {name}");
        }
    }
}

#[test]
fn routing_headers_that_cannot_be_removed_reset_the_stream() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &inline_config(""));
    host.fail("request_headers");
    host.fail("remove_request_header");
    let (action, _) = send(&mut root, &host, &[(":authority", "a"), ("x-isogroup-cluster", "a-team-s")]);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.calls(), vec![Call::Reset]);

    // Headers readable, but the pass-through's sanitising remove fails.
    host.heal("request_headers");
    let (action, _) = send(&mut root, &host, &[(":authority", "elsewhere"), ("x-isogroup-target", "team-s")]);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.calls(), vec![Call::Reset]);
}

#[test]
fn a_routing_header_that_cannot_be_written_resets_the_stream() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &inline_config(""));
    host.fail("set_request_header");
    let (action, _) = send(&mut root, &host, &[(":authority", "a"), ("x-isogroup-cluster", "a-team-s")]);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.calls(), vec![Call::Reset]);
}

#[test]
fn an_unanswerable_fail_fast_resets_instead_of_forwarding() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &inline_config(""));
    host.fail("send_local_reply");
    let (action, _) = send(&mut root, &host, &[(":authority", "b"), ("x-isogroup", "team-s")]);
    assert_eq!(action, Action::Pause);
    assert_eq!(host.calls(), vec![Call::Reset]);
    // Even when the reset fails the request stays paused: never forwarded.
    host.fail("reset_request");
    let (action, _) = send(&mut root, &host, &[(":authority", "b"), ("x-isogroup", "team-s")]);
    assert_eq!(action, Action::Pause);
    assert!(process.logged("the request stays paused"));
}

#[test]
fn counters_reach_the_metric_of_their_own_name() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &inline_config(""));
    send(&mut root, &host, &[(":authority", "a"), ("x-isogroup", "feature-2")]);
    send(&mut root, &host, &[(":authority", "a"), ("x-isogroup", "feature-1")]);
    send(&mut root, &host, &[(":authority", "b"), ("x-isogroup", "team-s")]);
    send(&mut root, &host, &[(":authority", "nowhere")]);
    send(&mut root, &host, &[(":authority", "a"), ("x-isogroup", "Not_A_Group")]);
    // Counted in the VM, flushed on the tick: no host call per request.
    assert_eq!(process.metric("isogroup_requests_routed_total"), 0);
    crate::proxy::RootContext::on_tick(&mut root);
    let want = [
        ("isogroup_requests_routed_total", 3),
        ("isogroup_requests_fallback_total", 1),
        ("isogroup_requests_failfast_total", 1),
        ("isogroup_requests_passthrough_total", 1),
        ("isogroup_invalid_group_total", 1),
        ("isogroup_table_version", 7),
    ];
    for (name, value) in want {
        assert_eq!(process.metric(name), value, "{name}");
    }
}

#[test]
fn a_bad_config_stops_plugin_start_naming_the_field() {
    let process = Process::new();
    let host = crate::fake_host::FakeHost::new(&process, r#"{"failfast_status": "soon"}"#);
    let mut root = crate::root::Root::new(host);
    assert!(!crate::proxy::RootContext::on_configure(&mut root, 0));
    assert!(process.logged("failfast_status"), "{:?}", process.log.borrow());
    assert!(root.vm().is_none());
}

#[test]
fn untrusted_edge_peers_get_no_annotations_and_lose_their_own_group() {
    let process = Process::new();
    let config = inline_config(
        r#""edge": {"trusted_cidrs": ["10.0.0.0/8"], "rules": [{"header": "x-user", "values": ["alice"], "group": "feature-1"}]},"#,
    );
    let (mut root, host) = configured(&process, &config);
    host.vm.properties.borrow_mut().insert("source.address".into(), b"192.0.2.1:5000".to_vec());
    let (_, mut ctx) = send(&mut root, &host, &[(":authority", "a"), ("x-isogroup", "team-s"), ("x-user", "alice")]);
    assert_eq!(one(host.request_header("x-isogroup")).as_deref(), Some("feature-1"));
    assert_eq!(one(host.request_header("x-isogroup-cluster")).as_deref(), Some("a-feature-1"));
    host.vm.response.borrow_mut().push(("x-isogroup-served".into(), b"inner=hop".to_vec()));
    ctx.on_http_response_headers(0, true);
    assert!(host.response_header("x-isogroup-served").is_empty());

    host.vm.properties.borrow_mut().insert("source.address".into(), b"10.1.2.3:5000".to_vec());
    let (_, _) = send(&mut root, &host, &[(":authority", "a"), ("x-isogroup", "team-s"), ("x-user", "alice")]);
    assert_eq!(one(host.request_header("x-isogroup-cluster")).as_deref(), Some("a-team-s"));
}

#[test]
fn short_hosts_resolve_in_the_nodes_namespace_unless_configured() {
    use crate::fake_host::FakeHost;
    use crate::proxy::RootContext;
    use crate::root::Root;
    let table = r#"{"services": {
        "web.prod": {"hosts": ["web.prod"], "clusters": {"base": "web-prod-{port}"}, "ports": [80, 443]},
        "web.dev": {"hosts": ["web.dev"], "clusters": {"base": "web-dev"}}}}"#;
    // (plugin namespace, node metadata NAMESPACE, authority, cluster)
    type Case<'a> = (Option<&'a str>, Option<&'a str>, &'a str, Option<&'a str>);
    let cases: &[Case] = &[
        (None, Some("prod"), "web:443", Some("web-prod-443")),
        (None, Some("prod"), "web", Some("web-prod-80")),
        (None, Some("dev"), "web:443", Some("web-dev")),
        (Some("dev"), Some("prod"), "web", Some("web-dev")),
        (None, None, "web", None),
        (None, Some("Not A Namespace"), "web", None),
    ];
    for (configured_ns, node_ns, authority, want) in cases {
        let process = Process::new();
        let ns = configured_ns.map_or(String::new(), |n| format!(r#""namespace": "{n}","#));
        let config = format!(r#"{{ {ns} "table": {{"inline": {table}}} }}"#);
        let host = FakeHost::new(&process, &config);
        if let Some(n) = node_ns {
            host.vm.properties.borrow_mut().insert("xds.node.metadata.NAMESPACE".into(), n.as_bytes().to_vec());
        }
        let mut root = Root::new(host.clone());
        assert!(root.on_configure(config.len()));
        send(&mut root, &host, &[(":authority", authority)]);
        assert_eq!(
            one(host.request_header("x-isogroup-cluster")).as_deref(),
            *want,
            "{configured_ns:?} {node_ns:?} {authority}"
        );
    }
}
