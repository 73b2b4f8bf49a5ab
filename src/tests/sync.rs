//! The table sync over the fake host: lease election and takeover, the
//! source-scoped keys, versions and ETags, rejects, backoff, table age.

use crate::proxy::{Context, RootContext};

use super::{companion_config, configured, TABLE};
use crate::fake_host::{Call, FakeHost, Process};
use crate::root::Root;
use crate::sync::{backoff_ms, BACKOFF_MAX_MS, BACKOFF_MIN_MS, LEASE_TTL_MS};

fn table(version: u64) -> String {
    TABLE.replacen("\"version\": 7", &format!("\"version\": {version}"), 1)
}

fn tokens(host: &FakeHost) -> Vec<u32> {
    host.dispatches()
        .into_iter()
        .filter_map(|c| match c {
            Call::Dispatch { token, .. } => Some(token),
            _ => None,
        })
        .collect()
}

fn last_path(host: &FakeHost) -> String {
    match host.dispatches().last() {
        Some(Call::Dispatch { headers, .. }) => {
            headers.iter().find(|(k, _)| k == ":path").map(|(_, v)| v.clone()).unwrap_or_default()
        }
        _ => panic!("no poll sent"),
    }
}

/// Answers the VM's outstanding poll.
fn answer(root: &mut Root<FakeHost>, host: &FakeHost, headers: &[(&str, &str)], body: &str) {
    let token = *tokens(host).last().expect("a poll in flight");
    host.answer(headers, body.as_bytes());
    root.on_http_call_response(token, headers.len(), body.len(), 0);
}

fn installed(root: &Root<FakeHost>) -> Option<u64> {
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

fn table_in(epoch: &str, version: u64) -> String {
    table(version).replacen("\"version\"", &format!("\"epoch\": \"{epoch}\", \"version\""), 1)
}

#[test]
fn a_reseeded_store_wins_back_and_a_lagging_replica_never_takes_back() {
    let process = Process::new();
    let config = companion_config("companion");
    let (mut poller, host) = configured(&process, &config);
    let (mut worker, _) = configured(&process, &config);
    poller.on_tick();
    answer(&mut poller, &host, &[(":status", "200")], &table_in("1000-aa", 100));
    worker.on_tick();
    assert_eq!(installed(&worker), Some(100));
    poller.on_tick();
    assert_eq!(last_path(&host), "/v1/table?after=100&epoch=1000-aa&wait=25&delta=1");
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

const DELTA: (&str, &str) = ("content-type", "application/vnd.isogroup.delta.v1+json");

/// A delta from (1000-aa, `base`) to `version` that sets `set` and removes `remove`.
fn delta_json(base: u64, version: u64, set: &str, remove: &str) -> String {
    format!(
        r#"{{"base": {{"version": {base}, "epoch": "1000-aa"}}, "version": {version}, "epoch": "1000-aa", "set": {{{set}}}, "remove": [{remove}], "replace": {{}}}}"#
    )
}

const SERVICE_C: &str = r#""c": {"hosts": ["c"], "clusters": {"base": "c-base", "feature-1": "c-f1"}}"#;

/// What a whole fetch of the table after `delta_json(100, 101, SERVICE_C, "\"b\"")` gives.
fn whole_after_delta() -> isogroup_core::RawTable {
    let mut table: serde_json::Value = serde_json::from_str(&table_in("1000-aa", 101)).unwrap();
    table["services"].as_object_mut().unwrap().remove("b");
    table["services"]["c"] = serde_json::json!({"hosts": ["c"], "clusters": {"base": "c-base", "feature-1": "c-f1"}});
    shared_raw(table.to_string().as_bytes())
}

fn shared_raw(bytes: &[u8]) -> isogroup_core::RawTable {
    isogroup_core::RawTable::from_companion_json(bytes, &isogroup_core::Limits::default()).unwrap().0
}

fn shared_table(host: &FakeHost) -> Vec<u8> {
    use crate::host::Host;
    let key = crate::sync::Keys::for_source(&companion_source()).table;
    host.shared_get(&key).unwrap().0.unwrap()
}

fn companion_source() -> isogroup_core::CompanionSource {
    let mut source = isogroup_core::CompanionSource::with_defaults("companion".into(), "companion".into());
    source.path = "/v1/table".into();
    source.wait_s = 25;
    source
}

fn routes_c(root: &Root<FakeHost>) -> bool {
    root.vm().and_then(|vm| vm.table()).is_some_and(|t| t.service_by_name("c").is_some())
}

#[test]
fn a_delta_is_applied_by_the_poller_spliced_into_the_shared_whole_and_applied_by_every_vm_on_its_base() {
    use crate::host::Host;
    let process = Process::new();
    let config = companion_config("companion");
    let (mut poller, host) = configured(&process, &config);
    let (mut worker, _) = configured(&process, &config);
    poller.on_tick();
    assert_eq!(last_path(&host), "/v1/table", "nothing held: no delta asked");
    answer(&mut poller, &host, &[(":status", "200")], &table_in("1000-aa", 100));
    worker.on_tick();
    assert_eq!(installed(&worker), Some(100));
    poller.on_tick();
    assert_eq!(last_path(&host), "/v1/table?after=100&epoch=1000-aa&wait=25&delta=1");
    answer(&mut poller, &host, &[(":status", "200"), DELTA], &delta_json(100, 101, SERVICE_C, r#""b""#));
    assert_eq!(installed(&poller), Some(101));
    assert!(routes_c(&poller));
    // The shared whole is exactly what a whole fetch gives.
    assert_eq!(shared_raw(&shared_table(&host)), whole_after_delta());
    // The worker on the delta's base applies the delta: it does not even
    // read the whole (spoilt here to show it).
    let key = crate::sync::Keys::for_source(&companion_source()).table;
    let whole = shared_table(&host);
    host.shared_set(&key, b"not json", None).unwrap();
    worker.on_tick();
    assert_eq!(installed(&worker), Some(101));
    assert!(routes_c(&worker));
    let vm = worker.vm().unwrap();
    assert!(vm.table().unwrap().service_by_name("b").is_none(), "removed");
    // A VM not on the base (new here, nothing installed) compiles the whole.
    host.shared_set(&key, &whole, None).unwrap();
    let (mut late, _) = configured(&process, &config);
    late.on_tick();
    assert_eq!(installed(&late), Some(101));
    assert!(routes_c(&late));
    poller.on_tick();
    assert_eq!(process.metric("isogroup_table_delta_fallbacks_total"), 0);
}

#[test]
fn a_bad_delta_is_discarded_counted_and_the_whole_table_fetched_at_once() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &companion_config("companion"));
    let unknown_key = delta_json(100, 101, SERVICE_C, "").replacen("\"replace\"", "\"rename\": {}, \"replace\"", 1);
    let unknown_base_key =
        delta_json(100, 101, SERVICE_C, "").replacen("\"version\": 100", "\"version\": 100, \"rev\": 1", 1);
    let cases = [
        ("an unknown key", unknown_key),
        ("an unknown base key", unknown_base_key),
        ("a wrong base", delta_json(99, 101, SERVICE_C, "")),
        ("an invalid result", delta_json(100, 101, r#""c": {"hosts": ["c"], "clusters": {"feature-1": "x"}}"#, "")),
        ("a removal of a service not held", delta_json(100, 101, "", r#""zz""#)),
        ("garbage", "{".into()),
    ];
    let mut fallbacks = 0;
    let mut version = 100;
    root.on_tick();
    answer(&mut root, &host, &[(":status", "200")], &table_in("1000-aa", version));
    for (what, delta) in cases {
        // Onto the version held (the top-level version first: the base's
        // new number may be the old top-level one).
        let delta = delta
            .replace("\"version\": 101", &format!("\"version\": {}", version + 1))
            .replace("\"version\": 100,", &format!("\"version\": {version},"));
        root.on_tick();
        assert!(last_path(&host).ends_with("&delta=1"), "{what}");
        answer(&mut root, &host, &[(":status", "200"), DELTA], &delta);
        assert_eq!(installed(&root), Some(version), "{what}: the table in force stays");
        assert!(!routes_c(&root), "{what}");
        // The next poll, at once, asks for the whole table.
        root.on_tick();
        fallbacks += 1;
        assert_eq!(process.metric("isogroup_table_delta_fallbacks_total"), fallbacks, "{what}");
        assert_eq!(last_path(&host), format!("/v1/table?after={version}&epoch=1000-aa&wait=25"), "{what}");
        version += 1;
        answer(&mut root, &host, &[(":status", "200")], &table_in("1000-aa", version));
        assert_eq!(installed(&root), Some(version), "{what}");
    }
    assert_eq!(process.metric("isogroup_table_rejects_total"), 0, "a discarded delta is no rejected table");
}
