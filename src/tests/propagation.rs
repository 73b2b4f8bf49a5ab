//! Propagation reports over the fake host: which traces are sampled (exact
//! counts: SPEC's FNV-1a rule), each class counted once per sampled trace
//! and destination, per-workload slots, and the report the poller VM sends
//! (its exact request, its rate, and a failed POST dropping its window).

use crate::proxy::RootContext;

use super::{configured, send, TABLE};
use crate::fake_host::{Call, FakeHost, Process};
use crate::root::Root;
use isogroup_core::edge::fnv1a;

const KINDS: [&str; 5] = ["kept", "changed", "healed", "dropped", "untraced"];

fn config(workload: &str, side: &str, extra: &str) -> String {
    format!(
        r#"{{"workload": "{workload}", "namespace": "ns", "propagation": {{"sample": 8}}, {extra}
            "propagation_assist": {{"side": "{side}", "ttl_s": 3600}}, "table": {{"inline": {TABLE}}}}}"#
    )
}

/// `n` from 1: an all-zero trace id is not one.
fn trace_id(n: u64) -> String {
    format!("{n:032x}")
}

fn traceparent(n: u64) -> String {
    format!("00-{}-00f067aa0ba902b7-01", trace_id(n))
}

fn is_sampled(n: u64) -> bool {
    fnv1a(trace_id(n).as_bytes()).is_multiple_of(8)
}

/// Every class's metric, in `KINDS` order.
fn counted(process: &Process) -> [i64; 5] {
    KINDS.map(|k| process.metric(&format!("isogroup_propagation_{k}_total")))
}

struct Pair {
    process: std::rc::Rc<Process>,
    inbound: (Root<FakeHost>, FakeHost),
    outbound: (Root<FakeHost>, FakeHost),
}

/// An inbound and an outbound VM of one workload (or two: `other`).
fn pair(inbound: &str, outbound: &str) -> Pair {
    let process = Process::new();
    Pair { inbound: configured(&process, inbound), outbound: configured(&process, outbound), process }
}

impl Pair {
    fn inbound(&mut self, headers: &[(&str, &str)]) {
        let (root, host) = &mut self.inbound;
        send(root, host, headers);
    }

    /// An outbound request; the group it left with (`x-isogroup`).
    fn outbound(&mut self, headers: &[(&str, &str)]) -> Option<String> {
        let (root, host) = &mut self.outbound;
        send(root, host, headers);
        host.request_header("x-isogroup").first().map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// A tick of both VMs, a second after the last one (a VM hands its
    /// counts to shared data at most once a second).
    fn tick(&mut self) {
        self.inbound.1.advance(1_000);
        self.outbound.1.advance(1_000);
        self.inbound.0.on_tick();
        self.outbound.0.on_tick();
    }
}

#[test]
fn sampling_is_deterministic_and_each_class_is_counted_once_per_trace_and_destination() {
    let mut p = pair(&config("a-v1", "inbound", ""), &config("a-v1", "outbound", ""));
    let traces: Vec<u64> = (1..=400).collect();
    let sampled = traces.iter().filter(|&&n| is_sampled(n)).count() as i64;
    assert!((30..70).contains(&sampled), "{sampled} of 400 sampled");
    for &n in &traces {
        let tp = traceparent(n);
        p.inbound(&[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
        // To service a: kept; to b: changed; to a again without a group: healed.
        p.outbound(&[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
        p.outbound(&[(":authority", "b"), ("x-isogroup", "feature-2"), ("traceparent", &tp)]);
        assert_eq!(p.outbound(&[(":authority", "a"), ("traceparent", &tp)]).as_deref(), Some("feature-1"));
        // Not a table service: never counted.
        p.outbound(&[(":authority", "elsewhere"), ("traceparent", &tp)]);
        p.tick();
    }
    // Kept and changed are classified two ticks after the one that follows
    // them (the recording VM has shared its records since); healed on the
    // request.
    p.tick();
    p.tick();
    assert_eq!(counted(&p.process), [sampled, sampled, sampled, 0, 0]);
    // A base trace whose outbound request carries no group either: kept.
    let base = (1_000..).find(|&n| is_sampled(n)).unwrap();
    p.inbound(&[(":authority", "a"), ("traceparent", &traceparent(base))]);
    assert_eq!(p.outbound(&[(":authority", "a"), ("traceparent", &traceparent(base))]), None);
    p.tick();
    assert_eq!(counted(&p.process), [sampled + 1, sampled, sampled, 0, 0]);
    // Carried requests wait for the tick in a bounded buffer: past it, not
    // counted. Each takes its hash, `a feature-1 <trace id>` and a length
    // byte; one more is taken while the buffer is under its bound.
    let lane = traces.iter().copied().find(|&n| is_sampled(n)).unwrap();
    for _ in 0..200 {
        p.outbound(&[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &traceparent(lane))]);
    }
    p.tick();
    p.tick();
    p.tick();
    // A frame: hash, time, `a feature-1 <trace id>`, length.
    let held = crate::propagation::MAX_CARRIED.div_ceil(8 + 8 + "a feature-1 ".len() + 32 + 2) as i64;
    assert!((64..200).contains(&held));
    assert_eq!(counted(&p.process), [sampled + 1 + held, sampled, sampled, 0, 0]);
    // The per-VM counts went to shared data for the poller.
    let key =
        p.process.shared_keys().into_iter().find(|k| k.starts_with("isogroup/prop/a-v1/") && !k.ends_with("/recent"));
    let text = String::from_utf8(p.process.shared(&key.unwrap()).unwrap()).unwrap();
    let mut sum = isogroup_core::propagation::Counts::default();
    sum.merge(text.as_bytes());
    assert_eq!(sum.encode(), format!("a {} 0 {sampled} 0 0\nb 0 {sampled} 0 0 0\n", sampled + 1 + held));
}

#[test]
fn an_unsampled_trace_is_not_counted_and_a_request_id_is_not_a_trace() {
    let mut p = pair(&config("a-v1", "inbound", ""), &config("a-v1", "outbound", ""));
    let n = (1..).find(|&n| !is_sampled(n)).unwrap();
    p.inbound(&[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &traceparent(n))]);
    assert_eq!(p.outbound(&[(":authority", "a"), ("traceparent", &traceparent(n))]).as_deref(), Some("feature-1"));
    p.tick();
    assert_eq!(counted(&p.process), [0; 5], "healed, but not sampled");
    // Healed through x-request-id while the workload serves lanes: untraced.
    p.inbound(&[(":authority", "a"), ("x-isogroup", "feature-1"), ("x-request-id", "req-1")]);
    assert_eq!(p.outbound(&[(":authority", "a"), ("x-request-id", "req-1")]).as_deref(), Some("feature-1"));
    // No trace id at all: untraced too.
    p.outbound(&[(":authority", "b")]);
    p.tick();
    assert_eq!(counted(&p.process), [0, 0, 0, 0, 2]);
}

#[test]
fn untraced_counts_only_while_the_workload_served_lanes() {
    let mut p = pair(&config("a-v1", "inbound", ""), &config("a-v1", "outbound", ""));
    p.outbound(&[(":authority", "b")]);
    p.tick();
    assert_eq!(counted(&p.process), [0; 5], "no lane traffic seen");
    // A lane request on the inbound VM reaches the outbound VM on a tick.
    p.inbound(&[(":authority", "a"), ("x-isogroup", "feature-1")]);
    p.tick();
    p.outbound(&[(":authority", "b")]);
    p.outbound(&[(":authority", "b"), ("x-isogroup", "feature-1")]);
    p.tick();
    assert_eq!(counted(&p.process), [0, 0, 0, 0, 1], "one without a group or trace");
    p.outbound.1.advance(61_000);
    p.tick();
    p.outbound(&[(":authority", "b")]);
    p.tick();
    assert_eq!(counted(&p.process), [0, 0, 0, 0, 1], "60 s later it no longer counts");
}

#[test]
fn heal_false_records_and_reports_dropped_without_restoring() {
    let outbound = config("a-v1", "outbound", "").replace(r#""ttl_s": 3600"#, r#""ttl_s": 3600, "heal": false"#);
    let mut p = pair(&config("a-v1", "inbound", ""), &outbound);
    let n = (1..).find(|&n| is_sampled(n)).unwrap();
    p.inbound(&[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &traceparent(n))]);
    assert_eq!(p.outbound(&[(":authority", "a"), ("traceparent", &traceparent(n))]), None, "not restored");
    assert_eq!(p.outbound.1.request_header("x-isogroup-cluster"), vec![b"a-base".to_vec()]);
    p.tick();
    assert_eq!(counted(&p.process), [0, 0, 0, 1, 0]);
}

#[test]
fn a_stamped_workload_group_is_changed() {
    let stamped = config("a-v1", "outbound", r#""workload_group": "feature-2","#);
    let mut p = pair(&config("a-v1", "inbound", ""), &stamped);
    let n = (1..).find(|&n| is_sampled(n)).unwrap();
    p.inbound(&[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &traceparent(n))]);
    assert_eq!(p.outbound(&[(":authority", "a"), ("traceparent", &traceparent(n))]).as_deref(), Some("feature-2"));
    p.tick();
    p.tick();
    p.tick();
    assert_eq!(counted(&p.process), [0, 1, 0, 0, 0]);
}

#[test]
fn one_workloads_record_never_heals_anothers_request() {
    let mut p = pair(&config("a-v1", "inbound", ""), &config("b-v1", "outbound", ""));
    let n = (1..).find(|&n| is_sampled(n)).unwrap();
    p.inbound(&[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &traceparent(n))]);
    assert_eq!(p.outbound(&[(":authority", "a"), ("traceparent", &traceparent(n))]), None, "B is not healed by A");
    p.tick();
    assert_eq!(counted(&p.process), [0; 5], "and B has no record of the trace");
    assert!(p.process.shared_keys().iter().any(|k| k.starts_with("isogroup/assist/a-v1/")));
}

/// A poller VM (companion source) of workload `a-v1`, with its host.
fn poller(process: &std::rc::Rc<Process>) -> (Root<FakeHost>, FakeHost) {
    let config = r#"{"workload": "a-v1", "namespace": "ns", "propagation": {}, "propagation_assist": {},
        "table": {"companion": {"cluster": "companion", "authority": "companion.svc"}}}"#;
    configured(process, config)
}

fn reports(host: &FakeHost) -> Vec<(Vec<(String, String)>, String)> {
    host.dispatches()
        .into_iter()
        .filter_map(|c| match c {
            Call::Dispatch { cluster, headers, body, .. } => {
                assert_eq!(cluster, "companion");
                headers
                    .iter()
                    .any(|(k, v)| k == ":path" && v == "/v1/reports")
                    .then(|| (headers, String::from_utf8(body).unwrap()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn the_poller_sends_one_bounded_report_per_10_s_and_a_failed_post_drops_its_window() {
    let mut p = pair(&config("a-v1", "inbound", ""), &config("a-v1", "outbound", ""));
    let (mut root, host) = poller(&p.process);
    let n = (1..).find(|&n| is_sampled(n)).unwrap();
    let heal_one = |p: &mut Pair| {
        p.inbound(&[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &traceparent(n))]);
        p.outbound(&[(":authority", "a"), ("traceparent", &traceparent(n))]);
        p.tick();
    };
    heal_one(&mut p);
    root.on_tick();
    assert!(reports(&host).is_empty(), "not before 10 s");
    host.advance(10_000);
    root.on_tick();
    let sent = reports(&host);
    assert_eq!(sent.len(), 1);
    let (headers, body) = &sent[0];
    let poller_id = headers.iter().find(|(k, _)| k == "x-isogroup-poller").map(|(_, v)| v.clone()).unwrap();
    assert!(!poller_id.is_empty() && poller_id.len() <= 128);
    assert_eq!(
        headers.iter().filter(|(k, _)| k != "x-isogroup-poller").cloned().collect::<Vec<_>>(),
        [
            (":method", "POST"),
            (":path", "/v1/reports"),
            (":authority", "companion.svc"),
            ("content-type", "application/json")
        ]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
    );
    assert_eq!(
        body,
        r#"{"workload":"a-v1","namespace":"ns","sample":8,"window_s":10,"outbound":{"a":{"kept":0,"changed":0,"healed":1,"dropped":0,"untraced":0}}}"#
    );
    // The counts were taken: another tick within 10 s sends nothing.
    heal_one(&mut p);
    host.advance(9_000);
    root.on_tick();
    assert_eq!(reports(&host).len(), 1, "one report per 10 s");
    // A failed POST drops its window: the next report has only what came after.
    host.fail("dispatch_http_call");
    host.advance(1_000);
    root.on_tick();
    host.heal("dispatch_http_call");
    assert!(p.process.logged("propagation report not sent"));
    heal_one(&mut p);
    heal_one(&mut p);
    host.advance(10_000);
    root.on_tick();
    let sent = reports(&host);
    assert_eq!(sent.len(), 2);
    assert!(sent[1].1.contains(r#""a":{"kept":0,"changed":0,"healed":2,"dropped":0,"untraced":0}"#), "{}", sent[1].1);
    // Nothing counted since: no report.
    host.advance(10_000);
    root.on_tick();
    assert_eq!(reports(&host).len(), 2);
}

#[test]
fn a_report_stays_within_16_kib_whatever_the_shared_counts() {
    let process = Process::new();
    let (mut root, host) = poller(&process);
    // Every per-VM key full of long destination names.
    let (mut vm, vm_host) = configured(&process, &config("a-v1", "outbound", ""));
    let _ = (&mut vm, &vm_host);
    for k in 0..16 {
        let lines: String = (0..300).map(|i| format!("{k:02}{i:03}{} 1 2 3 4 5\n", "s".repeat(200))).collect();
        crate::host::Host::shared_set(&host, &format!("isogroup/prop/a-v1/{k}"), lines.as_bytes(), None).unwrap();
    }
    host.advance(10_000);
    root.on_tick();
    let sent = reports(&host);
    assert_eq!(sent.len(), 1);
    assert!(sent[0].1.len() <= 16 * 1024, "{} bytes", sent[0].1.len());
    let v: serde_json::Value = serde_json::from_str(&sent[0].1).unwrap();
    assert!(v["outbound"].as_object().unwrap().len() > 10);
    assert_eq!(process.shared("isogroup/prop/a-v1/3").as_deref(), Some(&b"-"[..]), "taken");
}

/// Host calls per request, side `auto` (as in a sidecar): (property reads,
/// shared-data reads, shared-data writes) for one request.
fn calls_of(root: &mut Root<FakeHost>, host: &FakeHost, direction: i64, headers: &[(&str, &str)]) -> (u32, u32, u32) {
    host.vm.properties.borrow_mut().insert("xds.listener_direction".into(), direction.to_le_bytes().to_vec());
    let vm = &host.vm;
    let before = (vm.property_reads.get(), vm.shared_gets.get(), vm.shared_sets.get());
    send(root, host, headers);
    (vm.property_reads.get() - before.0, vm.shared_gets.get() - before.1, vm.shared_sets.get() - before.2)
}

#[test]
fn host_calls_per_request_with_and_without_reports() {
    let with = config("a-v1", "auto", "");
    let without = with.replace(r#""propagation": {"sample": 8},"#, "");
    let sampled = traceparent((1..).find(|&n| is_sampled(n)).unwrap());
    let unsampled = traceparent((1..).find(|&n| !is_sampled(n)).unwrap());
    let (inbound, outbound) = (1, 2);
    // (direction, headers, calls without reports, calls with reports)
    type Calls = (u32, u32, u32);
    type Case<'a> = (i64, Vec<(&'a str, &'a str)>, Calls, Calls);
    let cases: &[Case] = &[
        // Inbound: a traced request with a group is remembered either way.
        (
            inbound,
            vec![(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &unsampled)],
            (1, 0, 1),
            (1, 0, 1),
        ),
        // A base request: written only when sampled, and only with reports.
        (inbound, vec![(":authority", "a"), ("traceparent", &unsampled)], (1, 0, 0), (1, 0, 0)),
        (inbound, vec![(":authority", "a"), ("traceparent", &sampled)], (1, 0, 0), (1, 0, 1)),
        // No trace id: no host call.
        (inbound, vec![(":authority", "a"), ("x-isogroup", "feature-1")], (0, 0, 0), (0, 0, 0)),
        // Outbound with a group: nothing beyond the direction, sampled or not.
        (
            outbound,
            vec![(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &sampled)],
            (1, 0, 0),
            (1, 0, 0),
        ),
        // Outbound without: the assist's one read, shared with the reports.
        (outbound, vec![(":authority", "a"), ("traceparent", &sampled)], (1, 1, 0), (1, 1, 0)),
    ];
    // Lane traffic seen: a request without trace or group may be untraced.
    let lanes = |root: &mut Root<FakeHost>, host: &FakeHost| {
        calls_of(root, host, inbound, &[(":authority", "a"), ("x-isogroup", "feature-1")]);
    };
    for (direction, headers, want_without, want_with) in cases {
        let process = Process::new();
        let (mut root, host) = configured(&process, &without);
        assert_eq!(calls_of(&mut root, &host, *direction, headers), *want_without, "without reports: {headers:?}");
        let process = Process::new();
        let (mut root, host) = configured(&process, &with);
        assert_eq!(calls_of(&mut root, &host, *direction, headers), *want_with, "with reports: {headers:?}");
        lanes(&mut root, &host);
        assert_eq!(calls_of(&mut root, &host, *direction, headers), *want_with, "with lanes seen: {headers:?}");
    }
    // Neither trace nor group: nothing, until the workload serves lanes;
    // then the direction is read (one property read), on either side.
    for direction in [inbound, outbound] {
        let process = Process::new();
        let (mut root, host) = configured(&process, &with);
        assert_eq!(calls_of(&mut root, &host, direction, &[(":authority", "a")]), (0, 0, 0));
        lanes(&mut root, &host);
        assert_eq!(calls_of(&mut root, &host, direction, &[(":authority", "a")]), (1, 0, 0));
    }
}

/// One VM on both sides (side `auto`, as a sidecar's one VM per worker):
/// sampled traces through its inbound side, then their outbound requests
/// carrying a group. Returns the shared-data reads those outbound requests
/// and the next three ticks (a second apart) made: they are classified on
/// the third.
fn carried_through_one_vm(root: &mut Root<FakeHost>, host: &FakeHost, traces: &[u64]) -> u32 {
    let (inbound, outbound) = (1, 2);
    for &n in traces {
        calls_of(
            root,
            host,
            inbound,
            &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &traceparent(n))],
        );
    }
    let before = host.vm.shared_gets.get();
    for &n in traces {
        let tp = traceparent(n);
        calls_of(root, host, outbound, &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
        calls_of(root, host, outbound, &[(":authority", "b"), ("x-isogroup", "feature-2"), ("traceparent", &tp)]);
    }
    for _ in 0..3 {
        host.advance(1_000);
        root.on_tick();
    }
    host.vm.shared_gets.get() - before
}

/// The first `n` trace numbers SPEC's rule samples at 1 in 8.
fn sampled_traces(n: usize) -> Vec<u64> {
    (1..).filter(|&n| is_sampled(n)).take(n).collect()
}

/// A VM of workload `a-v1` on both sides, having seen lane traffic and
/// told the other VMs (its ticks then make the same reads of their own).
fn one_vm(process: &std::rc::Rc<Process>) -> (Root<FakeHost>, FakeHost) {
    let (mut root, host) = configured(process, &config("a-v1", "auto", ""));
    calls_of(&mut root, &host, 1, &[(":authority", "a"), ("x-isogroup", "feature-1")]);
    root.on_tick();
    (root, host)
}

#[test]
fn carried_requests_of_traces_the_vm_recorded_take_no_read_per_request() {
    let traces: Vec<u64> = (1..).filter(|&n| is_sampled(n)).take(20).collect();
    let process = Process::new();
    let (mut root, host) = one_vm(&process);
    reads_stay_as_requests_grow(&process, &traces, |t| carried_through_one_vm(&mut root, &host, t));
}

/// The ticks' own reads (the lane time or the count key, and the
/// workload's recent records, to add a VM's and classify), whatever the
/// number of requests `carried` makes and ticks through (returning its
/// reads): one trace, then twenty (after a first round: the lane time is
/// then told, not read, alike); each counted once.
fn reads_stay_as_requests_grow(process: &Process, traces: &[u64], mut carried: impl FnMut(&[u64]) -> u32) {
    carried(&traces[..1]);
    let one = carried(&traces[..1]);
    assert_eq!(counted(process), [2, 2, 0, 0, 0]);
    let twenty = carried(&traces[..20]);
    assert_eq!(counted(process), [22, 22, 0, 0, 0], "each counted once");
    assert_eq!(twenty, one, "no read per carried request (40 of them)");
    assert!(one <= 5, "{one} reads on three ticks");
}

/// Sampled inbound requests of `traces` (lane `feature-1`) through VM `a`,
/// then its tick (it adds them to the workload's recent records).
fn recorded_then_tick(a: &mut Root<FakeHost>, a_host: &FakeHost, traces: &[u64]) {
    for &n in traces {
        let tp = traceparent(n);
        calls_of(a, a_host, 1, &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
    }
    a_host.advance(1_000);
    a.on_tick();
}

/// Outbound requests of `traces` through VM `b` (to `a` keeping the lane,
/// to `b` changing it), then its three ticks (they are classified on the
/// third): the shared-data reads of all of it.
fn carried_then_tick(b: &mut Root<FakeHost>, b_host: &FakeHost, traces: &[u64]) -> u32 {
    let before = b_host.vm.shared_gets.get();
    for &n in traces {
        let tp = traceparent(n);
        calls_of(b, b_host, 2, &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
        calls_of(b, b_host, 2, &[(":authority", "b"), ("x-isogroup", "feature-2"), ("traceparent", &tp)]);
    }
    for _ in 0..3 {
        b_host.advance(1_000);
        b.on_tick();
    }
    b_host.vm.shared_gets.get() - before
}

#[test]
fn carried_requests_recorded_on_another_vm_take_one_read_per_tick_not_one_each() {
    // Two VMs of one workload, as two workers: each trace's inbound request
    // on one, its outbound requests on the other.
    let (traces, process) = (sampled_traces(20), Process::new());
    let ((mut a, a_host), (mut b, b_host)) = (one_vm(&process), one_vm(&process));
    recorded_then_tick(&mut a, &a_host, &traces);
    reads_stay_as_requests_grow(&process, &traces, |t| carried_then_tick(&mut b, &b_host, t));
}

#[test]
fn a_carried_request_is_classified_two_ticks_later_against_the_records_shared_by_then() {
    let (traces, process) = (sampled_traces(2), Process::new());
    let ((mut a, a_host), (mut b, b_host)) = (one_vm(&process), one_vm(&process));
    let tick = |root: &mut Root<FakeHost>, host: &FakeHost| {
        host.advance(1_000);
        root.on_tick();
    };
    // Recorded by `a`, whose tick comes late: after two of `b`'s since
    // `b`'s request of the trace; still before `b`'s third: counted.
    let tp = traceparent(traces[0]);
    calls_of(&mut a, &a_host, 1, &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
    calls_of(&mut b, &b_host, 2, &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
    tick(&mut b, &b_host);
    tick(&mut b, &b_host);
    assert_eq!(counted(&process), [0, 0, 0, 0, 0]);
    tick(&mut a, &a_host);
    tick(&mut b, &b_host);
    assert_eq!(counted(&process), [1, 0, 0, 0, 0], "classified on the third tick");
    // A record not shared by then: found in the trace's assist slot (one
    // read, written with the inbound request), counted once, not kept.
    let tp = traceparent(traces[1]);
    calls_of(&mut a, &a_host, 1, &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
    calls_of(&mut b, &b_host, 2, &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
    for _ in 0..3 {
        tick(&mut b, &b_host);
    }
    assert_eq!(counted(&process), [2, 0, 0, 0, 0]);
    tick(&mut a, &a_host);
    tick(&mut b, &b_host);
    assert_eq!(counted(&process), [2, 0, 0, 0, 0]);
    // Expired records count for no one.
    carried_then_tick(&mut b, &b_host, &traces[..1]);
    assert_eq!(counted(&process), [3, 1, 0, 0, 0]);
    // (The VM's clock is its last tick's.)
    b_host.advance(3_700_000);
    b.on_tick();
    carried_then_tick(&mut b, &b_host, &traces[..1]);
    assert_eq!(counted(&process), [3, 1, 0, 0, 0]);
}

#[test]
fn the_workloads_recent_records_keep_the_newest_within_their_bound() {
    // Far more sampled records than the bound holds (~250).
    let (traces, process) = (sampled_traces(600), Process::new());
    let ((mut a, a_host), (mut b, b_host)) = (one_vm(&process), one_vm(&process));
    for chunk in traces.chunks(100) {
        recorded_then_tick(&mut a, &a_host, chunk);
    }
    // The records' frames within the bound, the lane time's 8 bytes after.
    let bound = isogroup_core::propagation::MAX_REPORT_BYTES + 8;
    let recent = process.shared("isogroup/prop/a-v1/recent").unwrap();
    assert!(recent.len() <= bound, "{} bytes", recent.len());
    assert!(recent.len() > bound - 300, "{} bytes", recent.len());
    // The newest are found among them; the oldest are not, and are read
    // from their assist slots instead, at most 16 a tick (of 20 requests:
    // the newest 8 traces' two each), found where no later trace took the
    // slot (of the assist's 4 096).
    let slot_holds = |i: usize| {
        let slot = |n: u64| isogroup_core::assist::slot_of(fnv1a(trace_id(n).as_bytes()), 4096);
        !traces[i + 1..].iter().any(|&m| slot(m) == slot(traces[i]))
    };
    let held = |range: core::ops::Range<usize>| range.filter(|&i| slot_holds(i)).count() as i64;
    carried_then_tick(&mut b, &b_host, &traces[590..]);
    assert_eq!(counted(&process), [10, 10, 0, 0, 0]);
    let reads = b_host.vm.shared_gets.get();
    carried_then_tick(&mut b, &b_host, &traces[..10]);
    let old = 10 + held(2..10);
    assert!(old > 10, "some of the oldest still hold their slot");
    assert_eq!(counted(&process), [old, old, 0, 0, 0]);
    assert!(b_host.vm.shared_gets.get() - reads <= 16 + 5, "the slot reads are bounded");
    // Frames no filter writes (empty entries, ~1 600 of them): each tick
    // walks at most the bound's bytes and goes on (the slots again, 16);
    // newer records are found at once (read newest first), and push them out.
    let hostile: Vec<u8> = (0..16 * 1024 / 10).flat_map(|_| [0u8; 10]).collect();
    crate::host::Host::shared_set(&a_host, "isogroup/prop/a-v1/recent", &hostile, None).unwrap();
    carried_then_tick(&mut b, &b_host, &traces[590..]);
    let slots = old + held(592..600);
    assert_eq!(counted(&process), [slots, slots, 0, 0, 0], "none among them, the newest 8 from their slots");
    for chunk in traces[300..].chunks(100) {
        recorded_then_tick(&mut a, &a_host, chunk);
    }
    let recent = process.shared("isogroup/prop/a-v1/recent").unwrap();
    assert!(recent.len() <= bound, "{} bytes", recent.len());
    carried_then_tick(&mut b, &b_host, &traces[590..]);
    assert_eq!(counted(&process), [slots + 10, slots + 10, 0, 0, 0], "the newest records found again");
}

#[test]
fn a_failed_read_or_a_lost_write_of_the_recent_records_keeps_them_for_the_next_tick() {
    use crate::proxy::Status;
    let (traces, process) = (sampled_traces(10), Process::new());
    let ((mut a, a_host), (mut b, b_host)) = (one_vm(&process), one_vm(&process));
    let (mut c, c_host) = one_vm(&process);
    // `c`'s records are shared first; `a`'s read then fails: nothing is
    // written over `c`'s, and `a` keeps its own.
    recorded_then_tick(&mut c, &c_host, &traces[5..]);
    let shared = process.shared("isogroup/prop/a-v1/recent").unwrap();
    a_host.fail("shared_get");
    recorded_then_tick(&mut a, &a_host, &traces[..3]);
    a_host.heal("shared_get");
    assert_eq!(process.shared("isogroup/prop/a-v1/recent").unwrap(), shared, "not written over");
    // Its write lost to another VM's (CAS): kept again.
    for &n in &traces[3..5] {
        let tp = traceparent(n);
        calls_of(&mut a, &a_host, 1, &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
    }
    a_host.fail_with("shared_set", Status::CasMismatch);
    recorded_then_tick(&mut a, &a_host, &[]);
    a_host.heal("shared_set");
    assert_eq!(process.shared("isogroup/prop/a-v1/recent").unwrap(), shared, "not written");
    // The next tick adds all five; `b` finds all ten there (slot reads aside).
    recorded_then_tick(&mut a, &a_host, &[]);
    let before = b_host.vm.shared_gets.get();
    carried_then_tick(&mut b, &b_host, &traces);
    assert_eq!(counted(&process), [10, 10, 0, 0, 0]);
    assert!(b_host.vm.shared_gets.get() - before <= 5, "found among the recent records, no slot read");
}

#[test]
fn counts_reach_shared_data_at_most_once_a_second_one_line_per_destination() {
    let traces: Vec<u64> = (1..).filter(|&n| is_sampled(n)).take(5).collect();
    let process = Process::new();
    let (mut root, host) = one_vm(&process);
    let key =
        || process.shared_keys().into_iter().find(|k| k.starts_with("isogroup/prop/a-v1/") && !k.ends_with("/recent"));
    // Five ticks a second apart: each hands its counts over, added to the
    // key's one line per destination (not appended: the key stays as large
    // as its destinations, however long the poller takes).
    for _ in 0..5 {
        carried_through_one_vm(&mut root, &host, &traces);
    }
    assert_eq!(counted(&process), [25, 25, 0, 0, 0]);
    // One line per destination, in name order here (the key's order is the
    // order the tick counted them in).
    let text = |k: &str| {
        let text = String::from_utf8(process.shared(k).unwrap()).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort();
        lines.iter().map(|l| format!("{l}\n")).collect::<String>()
    };
    let key = key().unwrap();
    assert_eq!(text(&key), "a 25 0 0 0 0\nb 0 25 0 0 0\n");
    // Within the second: counted on the third tick after each, handed
    // over on the first tick past the second, nothing lost.
    for &n in &traces {
        let tp = traceparent(n);
        calls_of(&mut root, &host, 2, &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
        root.on_tick();
        host.advance(100);
    }
    root.on_tick();
    root.on_tick();
    assert_eq!(counted(&process), [30, 25, 0, 0, 0]);
    assert_eq!(text(&key), "a 25 0 0 0 0\nb 0 25 0 0 0\n", "no write within the second");
    host.advance(1_000);
    root.on_tick();
    assert_eq!(text(&key), "a 30 0 0 0 0\nb 0 25 0 0 0\n");
    // The poller's `-` (taken) is no line: the next counts start over.
    crate::host::Host::shared_set(&host, &key, b"-", None).unwrap();
    carried_through_one_vm(&mut root, &host, &traces[..1]);
    assert_eq!(text(&key), "a 1 0 0 0 0\nb 0 1 0 0 0\n");
}

/// What the reports cost per request on one VM, both sides (as a sidecar's
/// worker): sampled traces recorded, then group-carrying outbound requests
/// of them with a tick every 60. A measurement: run under callgrind and read
/// `callgrind_annotate --inclusive=yes` for the request path and the tick.
#[test]
#[ignore = "a measurement: run under callgrind"]
fn carried_request_cost() {
    let traces: Vec<u64> = (1..).filter(|&n| is_sampled(n)).take(8).collect();
    let process = Process::new();
    let (mut root, host) = one_vm(&process);
    for _ in 0..50 {
        for &n in &traces {
            let tp = traceparent(n);
            calls_of(&mut root, &host, 1, &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
        }
        for i in 0..60 {
            let tp = traceparent(traces[i % traces.len()]);
            calls_of(&mut root, &host, 2, &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &tp)]);
        }
        host.advance(200);
        root.on_tick();
    }
    for _ in 0..3 {
        host.advance(200);
        root.on_tick();
    }
    assert_eq!(counted(&process)[0], 50 * 60);
}
