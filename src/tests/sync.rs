//! The table sync over the fake host: lease election and takeover, the
//! source-scoped keys, versions and ETags, rejects, backoff, table age.

use crate::proxy::{Context, RootContext};

use super::{companion_config, configured, poller_and_worker, TABLE};
use crate::fake_host::{Call, FakeHost, Process};
use crate::root::Root;
use crate::sync::{backoff_ms, BACKOFF_MAX_MS, BACKOFF_MIN_MS, LEASE_TTL_MS};

pub(super) fn table(version: u64) -> String {
    TABLE.replacen("\"version\": 7", &format!("\"version\": {version}"), 1)
}

pub(super) fn tokens(host: &FakeHost) -> Vec<u32> {
    host.dispatches()
        .into_iter()
        .filter_map(|c| match c {
            Call::Dispatch { token, .. } => Some(token),
            _ => None,
        })
        .collect()
}

pub(super) fn last_path(host: &FakeHost) -> String {
    match host.dispatches().last() {
        Some(Call::Dispatch { headers, .. }) => {
            headers.iter().find(|(k, _)| k == ":path").map(|(_, v)| v.clone()).unwrap_or_default()
        }
        _ => panic!("no poll sent"),
    }
}

/// Answers the VM's outstanding poll.
pub(super) fn answer(root: &mut Root<FakeHost>, host: &FakeHost, headers: &[(&str, &str)], body: &str) {
    let token = *tokens(host).last().expect("a poll in flight");
    host.answer(headers, body.as_bytes());
    root.on_http_call_response(token, headers.len(), body.len(), 0);
}

pub(super) fn installed(root: &Root<FakeHost>) -> Option<u64> {
    root.vm().and_then(|vm| vm.table()).map(|t| t.version())
}

#[test]
fn one_vm_per_source_polls_and_a_lapsed_lease_is_taken_over() {
    let process = Process::new();
    let config = companion_config("companion");
    let (mut first, host1) = configured(&process, &config);
    let (mut second, host2) = configured(&process, &config);
    first.on_tick();
    second.on_tick();
    assert_eq!(tokens(&host1).len(), 1, "the first VM polls");
    assert!(tokens(&host2).is_empty(), "the second VM waits");
    // The holder stops renewing (its worker is gone): after the TTL the other polls.
    host2.advance(LEASE_TTL_MS / 2);
    second.on_tick();
    assert!(tokens(&host2).is_empty(), "a live lease is respected");
    host2.advance(LEASE_TTL_MS);
    second.on_tick();
    assert_eq!(tokens(&host2).len(), 1, "a lapsed lease is taken over");
}

#[test]
fn the_table_reaches_every_vm_of_its_source_and_no_other() {
    let process = Process::new();
    let (mut a1, host_a1) = configured(&process, &companion_config("companion-a"));
    let (mut a2, _) = configured(&process, &companion_config("companion-a"));
    let (mut b, host_b) = configured(&process, &companion_config("companion-b"));
    for root in [&mut a1, &mut a2, &mut b] {
        root.on_tick();
    }
    assert_eq!(tokens(&host_a1).len(), 1);
    assert_eq!(tokens(&host_b).len(), 1, "another source has its own poller");
    answer(&mut a1, &host_a1, &[(":status", "200")], &table(11));
    answer(&mut b, &host_b, &[(":status", "200")], &table(22));
    a2.on_tick();
    assert_eq!(installed(&a1), Some(11));
    assert_eq!(installed(&a2), Some(11), "a VM of the same source follows through shared data");
    assert_eq!(installed(&b), Some(22), "the other source keeps its own table");
    b.on_tick();
    assert_eq!(installed(&b), Some(22));
    let keys = process.shared_keys();
    assert_eq!(keys.iter().filter(|k| k.ends_with("/table")).count(), 2, "{keys:?}");
}

/// The first table reaches the poller's VM at once and every other VM of the
/// process on its tick; a stream that starts on another VM in between must
/// not find no table (a join of a known lane answered `400`, a lane cookie
/// skipped): a VM with no table takes the process's before the stream.
#[test]
fn a_vm_without_a_table_takes_the_processs_before_a_stream() {
    let process = Process::new();
    let config = r#"{"edge": {"join_path": "/.isogroup/join"},
        "table": {"companion": {"cluster": "companion", "authority": "companion", "path": "/v1/table", "wait_s": 25}}}"#;
    let (mut poller, poller_host) = configured(&process, config);
    let (mut worker, worker_host) = configured(&process, config);
    poller.on_tick();
    worker.on_tick();
    answer(&mut poller, &poller_host, &[(":status", "200")], &table(11));
    assert_eq!((installed(&poller), installed(&worker)), (Some(11), None), "the worker has not ticked yet");
    let join = [(":authority", "a"), (":path", "/.isogroup/join?lane=feature-1"), (":method", "GET")];
    worker_host.vm.calls.borrow_mut().clear();
    super::send(&mut worker, &worker_host, &join);
    let calls = worker_host.calls();
    let [Call::LocalReply { status, .. }] = calls.as_slice() else { panic!("{calls:?}") };
    assert_eq!(*status, 302, "a join of a lane the process's table knows: {calls:?}");
    assert_eq!(installed(&worker), Some(11));
    super::send(&mut worker, &worker_host, &[(":authority", "a"), ("cookie", "isogroup-lane=feature-1")]);
    assert_eq!(worker_host.request_header("x-isogroup-cluster"), vec![b"a-feature-1".to_vec()]);
}

/// A root configured when the process already has a table (a listener
/// replaced over LDS, a WasmPlugin edit) routes by it from its first stream,
/// not only after its first tick.
#[test]
fn a_new_root_routes_by_the_processs_table_from_its_first_stream() {
    let process = Process::new();
    let config = companion_config("companion");
    let (mut poller, poller_host) = configured(&process, &config);
    poller.on_tick();
    answer(&mut poller, &poller_host, &[(":status", "200")], &table(12));
    let (mut replaced, host) = configured(&process, &config);
    super::send(&mut replaced, &host, &[(":authority", "a"), ("x-isogroup", "feature-1")]);
    assert_eq!(host.request_header("x-isogroup-cluster"), vec![b"a-feature-1".to_vec()]);
    assert_eq!(installed(&replaced), Some(12));
}

#[test]
fn only_newer_tables_are_installed_and_an_old_etag_is_not_even_read() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &companion_config("companion"));
    root.on_tick();
    assert_eq!(last_path(&host), "/v1/table");
    answer(&mut root, &host, &[(":status", "200"), ("etag", "\"9\"")], &table(9));
    assert_eq!(installed(&root), Some(9));
    root.on_tick();
    assert_eq!(last_path(&host), "/v1/table?after=9&wait=25");
    // A lower version (a reset companion) is ignored.
    answer(&mut root, &host, &[(":status", "200")], &table(5));
    assert_eq!(installed(&root), Some(9));
    // An ETag not newer than what is in force: a 304 to us, body never read.
    root.on_tick();
    let reads = host.vm.body_reads.get();
    answer(&mut root, &host, &[(":status", "200"), ("etag", "\"9\"")], &table(9));
    assert_eq!(host.vm.body_reads.get(), reads);
    root.on_tick();
    answer(&mut root, &host, &[(":status", "304"), ("etag", "\"9\"")], "");
    root.on_tick();
    answer(&mut root, &host, &[(":status", "200"), ("etag", "\"10\"")], &table(10));
    assert_eq!(installed(&root), Some(10));
    root.on_tick();
    assert_eq!(process.metric("isogroup_table_fetches_total"), 3, "bodies received: 9, 5 and 10, not the skipped one");
}

#[test]
fn garbage_is_rejected_whole_and_counted_and_backs_off() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &companion_config("companion"));
    root.on_tick();
    answer(&mut root, &host, &[(":status", "200")], &table(3));
    root.on_tick();
    answer(
        &mut root,
        &host,
        &[(":status", "200")],
        r#"{"version": 4, "services": {"x": {"hosts": ["x"], "clusters": {}}}}"#,
    );
    assert_eq!(installed(&root), Some(3), "the last good table keeps serving");
    root.on_tick();
    assert_eq!(process.metric("isogroup_table_rejects_total"), 1);
    assert!(process.logged("services.x.clusters"), "the error names the field: {:?}", process.log.borrow());
    assert_eq!(tokens(&host).len(), 2, "no immediate re-poll after garbage");
}

#[test]
fn backoff_grows_to_its_cap_with_jitter_in_bounds() {
    let mut previous_base = 0;
    for failures in 1..16 {
        let base = (BACKOFF_MIN_MS << failures.min(10)).min(BACKOFF_MAX_MS);
        assert!(base >= previous_base);
        previous_base = base;
        let spread: Vec<u64> = (0..50).map(|i| backoff_ms(failures, &format!("vm{i}"), 1_000 + i)).collect();
        for d in &spread {
            assert!((base * 3 / 4..=base * 5 / 4).contains(d), "failures {failures}: {d} outside {base}±25%");
        }
        let distinct = spread.iter().collect::<std::collections::HashSet<_>>().len();
        assert!(distinct > 10, "failures {failures}: only {distinct} distinct delays");
    }
}

#[test]
fn a_failing_companion_is_retried_after_the_backoff_and_not_before() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &companion_config("companion"));
    root.on_tick();
    answer(&mut root, &host, &[(":status", "503")], "");
    assert!(process.logged("companion answered 503"));
    // The first backoff is BACKOFF_MIN_MS * 2 ± 25%.
    host.advance(BACKOFF_MIN_MS * 2 * 3 / 4 - 1);
    root.on_tick();
    assert_eq!(tokens(&host).len(), 1, "retried too early");
    host.advance(BACKOFF_MIN_MS * 2 / 2 + 2);
    root.on_tick();
    assert_eq!(tokens(&host).len(), 2, "not retried after the backoff");
}

#[test]
fn response_headers_with_non_utf8_names_do_not_panic() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &companion_config("companion"));
    root.on_tick();
    let token = tokens(&host)[0];
    let headers: Vec<(&[u8], &[u8])> = vec![(b":status", b"200"), (b"x-\xff\xfe", b"\xff")];
    host.answer(&headers, table(4).as_bytes());
    root.on_http_call_response(token, 2, table(4).len(), 0);
    assert_eq!(installed(&root), Some(4));
}

#[test]
fn table_age_counts_from_configure_until_the_companion_answers() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &companion_config("companion"));
    host.fail("dispatch_http_call");
    host.advance(30_000);
    root.on_tick();
    assert_eq!(process.metric("isogroup_table_age_seconds"), 30, "never answered: as old as the VM");
    host.heal("dispatch_http_call");
    host.advance(BACKOFF_MAX_MS);
    root.on_tick();
    answer(&mut root, &host, &[(":status", "200")], &table(2));
    host.advance(5_000);
    root.on_tick();
    assert_eq!(process.metric("isogroup_table_age_seconds"), 5);
}

pub(super) fn table_in(epoch: &str, version: u64) -> String {
    table(version).replacen("\"version\"", &format!("\"epoch\": \"{epoch}\", \"version\""), 1)
}

#[test]
fn a_reseeded_store_wins_back_and_a_lagging_replica_never_takes_back() {
    let (_process, mut poller, host, mut worker) = poller_and_worker();
    poller.on_tick();
    answer(&mut poller, &host, &[(":status", "200")], &table_in("1000-aa", 100));
    worker.on_tick();
    assert_eq!(installed(&worker), Some(100));
    poller.on_tick();
    // (`&delta=1` after it where deltas are built in.)
    assert!(last_path(&host).starts_with("/v1/table?after=100&epoch=1000-aa&wait=25"));
    // The store was wiped and re-seeded: a newer epoch, versions from low again.
    answer(&mut poller, &host, &[(":status", "200")], &table_in("2000-bb", 2));
    worker.on_tick();
    assert_eq!(installed(&poller), Some(2));
    assert_eq!(installed(&worker), Some(2), "every worker follows the newer epoch");
    // A replica still on the old epoch, however high its version: not newer.
    poller.on_tick();
    let reads = host.vm.body_reads.get();
    answer(&mut poller, &host, &[(":status", "200"), ("etag", "\"500\""), ("x-isogroup-epoch", "1000-aa")], "");
    assert_eq!(host.vm.body_reads.get(), reads, "announced as older: the body is not read");
    poller.on_tick();
    answer(&mut poller, &host, &[(":status", "200")], &table_in("1000-aa", 500));
    answer(&mut poller, &host, &[(":status", "200")], &table(900));
    worker.on_tick();
    assert_eq!(installed(&poller), Some(2));
    assert_eq!(installed(&worker), Some(2));
    // An empty store (version 0, no epoch) is never installed over a table.
    poller.on_tick();
    answer(&mut poller, &host, &[(":status", "200")], r#"{"version": 0}"#);
    assert_eq!(installed(&poller), Some(2));
    // The same epoch moves on by version.
    poller.on_tick();
    answer(
        &mut poller,
        &host,
        &[(":status", "200"), ("etag", "\"3\""), ("x-isogroup-epoch", "2000-bb")],
        &table_in("2000-bb", 3),
    );
    worker.on_tick();
    assert_eq!(installed(&worker), Some(3));
}

#[test]
fn the_shared_stamp_round_trips() {
    use crate::sync::Held;
    for held in [Held { version: 7, epoch: None }, Held { version: 0, epoch: Some("1700000000000-0a1b".into()) }] {
        assert_eq!(Held::decode(held.encode().as_bytes()), Some(held.clone()));
    }
    for bad in [&b""[..], b"x", b"-1 e", b"\xff"] {
        assert_eq!(Held::decode(bad), None, "{bad:?}");
    }
}

#[test]
fn a_newer_companions_fields_are_skipped_and_said_once() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &companion_config("companion"));
    root.on_tick();
    let with_extra = |v: u64| table(v).replacen("\"groups\"", "\"lane_notes\": [], \"groups\"", 1);
    answer(&mut root, &host, &[(":status", "200")], &with_extra(5));
    assert_eq!(installed(&root), Some(5));
    root.on_tick();
    answer(&mut root, &host, &[(":status", "200")], &with_extra(6));
    assert_eq!(installed(&root), Some(6));
    let told = process.log.borrow().iter().filter(|(_, m)| m.contains("does not know, ignored: lane_notes")).count();
    assert_eq!(told, 1, "{:?}", process.log.borrow());
}

#[test]
fn an_answer_over_max_table_bytes_is_refused_before_its_body_is_copied() {
    let process = Process::new();
    let config = companion_config("companion").replacen('{', r#"{"limits": {"max_table_bytes": 4096}, "#, 1);
    let (mut root, host) = configured(&process, &config);
    root.on_tick();
    answer(&mut root, &host, &[(":status", "200")], &table(3));
    assert_eq!(installed(&root), Some(3));
    root.on_tick();
    let reads = host.vm.body_reads.get();
    // The host says how long the body is before anything is copied: 1 GiB
    // here (the fake holds a small one, so a read would not fail by itself).
    let token = *tokens(&host).last().expect("a poll in flight");
    host.answer(&[(":status", "200")], table(4).as_bytes());
    root.on_http_call_response(token, 1, 1 << 30, 0);
    assert_eq!(host.vm.body_reads.get(), reads, "the body is not copied into the VM");
    assert_eq!(installed(&root), Some(3), "the last good table keeps serving");
    assert!(process.logged("1073741824 bytes"), "the log says the size: {:?}", process.log.borrow());
    assert!(process.logged("4096"), "and the limit: {:?}", process.log.borrow());
    root.on_tick();
    assert_eq!(process.metric("isogroup_table_rejects_total"), 1, "counted as a reject (flushed on the tick)");
    assert_eq!(tokens(&host).len(), 2, "a refused answer backs off like garbage");
}

#[test]
fn a_lost_lease_race_is_quiet_and_any_other_lease_failure_is_said_by_its_status() {
    use crate::proxy::Status;
    for (status, said) in [(Status::CasMismatch, None), (Status::Unimplemented, Some("Unimplemented"))] {
        let process = Process::new();
        let (mut root, host) = configured(&process, &companion_config("companion"));
        root.on_tick();
        answer(&mut root, &host, &[(":status", "304")], "");
        host.fail_with("shared_set", status);
        root.on_tick();
        assert_eq!(tokens(&host).len(), 1, "the lease is not renewed: no poll");
        let warned = process.log.borrow().iter().find(|(_, m)| m.contains("poller lease")).map(|(_, m)| m.clone());
        match said {
            None => assert_eq!(warned, None, "another VM won the race: nothing to say"),
            Some(name) => assert!(warned.is_some_and(|m| m.contains(name)), "{:?}", process.log.borrow()),
        }
    }
}

/// The lease value is read as bytes: whatever another VM (or a stray
/// writer) left there, the outcome is clear and nothing panics.
#[test]
fn a_lease_value_of_any_bytes_has_a_clear_outcome() {
    use crate::host::Host;
    let process = Process::new();
    let (_root, host) = configured(&process, &companion_config("companion"));
    let key = "test/lease";
    let cases: &[(&[u8], bool)] = &[
        (b"\xff\xfe 99999999999999", false), // another holder (not UTF-8), live
        (b"\xff\xfe 5", true),               // another holder, lapsed
        (b"me 99999999999999", true),        // ours: renewed
        (b"other 99999999999999", false),    // another holder, live
        (b"no-space-at-all", true),          // unreadable: as if free
        (b"other ", true),                   // no expiry: lapsed
        (b"other 12x", true),                // bad expiry: lapsed
        (b" ", true),
    ];
    for (value, want) in cases {
        host.shared_set(key, value, None).unwrap();
        let got = crate::sync::take_lease(&host, key, "me", 1000).unwrap();
        assert_eq!(got, *want, "{:?}", String::from_utf8_lossy(value));
    }
}

/// The version gauge is the process's: a VM that compiled a table another
/// VM replaced meanwhile (it read the stamp before the poller wrote a newer
/// one) does not set the gauge back, and installs the newer table next tick.
#[test]
fn a_table_replaced_while_a_vm_compiles_it_does_not_set_the_version_gauge_back() {
    let (process, mut poller, host, mut worker) = poller_and_worker();
    poller.on_tick();
    worker.on_tick();
    answer(&mut poller, &host, &[(":status", "200")], &table(11));
    assert_eq!(process.metric("isogroup_table_version"), 11);
    let key = |suffix: &str| process.shared_keys().into_iter().find(|k| k.ends_with(suffix)).unwrap();
    let (table_key, stamp_key) = (key("/table"), key("/table-stamp"));
    let stamp = String::from_utf8(process.shared(&stamp_key).unwrap()).unwrap();
    // While the worker reads table 11, another VM publishes and installs 12.
    let read = table_key.clone();
    process.after_read(&read, move |p| {
        p.write_shared(&table_key, table(12).as_bytes());
        p.write_shared(&stamp_key, stamp.replacen("11", "12", 1).as_bytes());
        p.set_metric("isogroup_table_version", 12);
    });
    worker.on_tick();
    assert_eq!(installed(&worker), Some(11), "it installs what it read");
    assert_eq!(process.metric("isogroup_table_version"), 12, "the gauge not set back to 11");
    worker.on_tick();
    assert_eq!(installed(&worker), Some(12));
    assert_eq!(process.metric("isogroup_table_version"), 12);
}
