//! The registry of sources and a worker's view of a published table (no
//! Envoy: members are registered as the bootstrap extension registers
//! itself, without its timer).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::sync::{Arc, Weak};

use isogroup_core::{CompanionSource, Limits, RawTable, Table};

use super::tests_support::polled_by_a_bootstrap;
use super::{bootstrap_source, join, lock, Member, SourceKey, Wake, NEXT_MEMBER};

fn key(cluster: &str, wait_s: u32) -> SourceKey {
    let mut source = CompanionSource::with_defaults(cluster.into(), cluster.into());
    source.wait_s = wait_s;
    (source, "base".into(), Limits::default())
}

fn table(version: u64) -> Table {
    let json = format!(
        r#"{{"version": {version}, "groups": {{"f1": {{}}}}, "services": {{"svc": {{"hosts": ["svc"], "clusters": {{"base": "svc-base", "f1": "svc-f1"}}}}}}}}"#
    );
    let (raw, _) = RawTable::from_companion_json(json.as_bytes(), &Limits::default()).unwrap();
    Table::compile_for(&raw, "base", &Limits::default(), true).unwrap()
}

#[test]
fn only_a_source_a_bootstrap_extension_polls_is_found_by_its_whole_key() {
    let polled = polled_by_a_bootstrap(key("sync-test-polled", 25));
    assert!(bootstrap_source(&key("sync-test-polled", 25)).is_ok());
    // Another hold time, base group or cluster is another source.
    let other = bootstrap_source(&key("sync-test-polled", 30)).err().unwrap();
    assert!(other.iter().any(|s| s.contains("\"sync-test-polled\"") && s.contains("wait_s 25")), "{other:?}");
    let mut based = key("sync-test-polled", 25);
    based.1 = "main".into();
    assert!(bootstrap_source(&based).is_err());
    // A source only filter configurations poll is not one (they come and go with listeners).
    let (filter_only, _) = join(key("sync-test-filter-only", 25));
    lock(&filter_only.state).members.push(Member {
        id: NEXT_MEMBER.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        wake: Wake::Filter(Weak::new()),
        age_gauge: None,
    });
    assert!(bootstrap_source(&key("sync-test-filter-only", 25)).is_err());
    drop(polled);
    // Gone with its last holder.
    assert!(bootstrap_source(&key("sync-test-polled", 25)).is_err());
}

#[test]
fn a_worker_follows_each_published_table_and_a_stream_keeps_its_own() {
    let reader = polled_by_a_bootstrap(key("sync-test-published", 25));
    assert!(reader.current().is_none(), "no table before the first");
    reader.shared.published.publish(table(1));
    let first = reader.current().unwrap();
    assert_eq!(first.version(), 1);
    // The same generation: the worker's cached reference, no new one.
    assert!(Arc::ptr_eq(&reader.current().unwrap(), &first));
    reader.shared.published.publish(table(2));
    assert_eq!(reader.current().unwrap().version(), 2);
    assert_eq!(first.version(), 1, "a stream keeps the table it was decided against");
    // Another worker sees the latest on its first look.
    let shared = Arc::clone(&reader.shared.published);
    let seen = std::thread::spawn(move || super::current(&shared).map(|t| t.version())).join().unwrap();
    assert_eq!(seen, Some(2));
}
