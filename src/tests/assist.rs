//! Propagation assist over the fake host: the store is bounded by its slot
//! count whatever the number of traces, and a newer trace evicts an older
//! one in the same slot.

use super::{configured, send, TABLE};
use crate::fake_host::Process;

fn config(side: &str) -> String {
    format!(
        r#"{{"propagation_assist": {{"slots": 16, "ttl_s": 3600, "side": "{side}"}}, "table": {{"inline": {TABLE}}}}}"#
    )
}

fn traceparent(n: u64) -> String {
    format!("00-{n:032x}-00f067aa0ba902b7-01")
}

#[test]
fn the_store_never_holds_more_entries_than_slots() {
    let process = Process::new();
    let (mut inbound, host) = configured(&process, &config("inbound"));
    for n in 0..1_000 {
        send(
            &mut inbound,
            &host,
            &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &traceparent(n))],
        );
    }
    let slots = process.shared_keys().into_iter().filter(|k| k.starts_with("isogroup/assist/")).count();
    assert!((1..=16).contains(&slots), "{slots} assist keys for 16 slots");
}

#[test]
fn a_newer_trace_evicts_the_older_one_in_its_slot() {
    let process = Process::new();
    let (mut inbound, in_host) = configured(&process, &config("inbound"));
    let (mut outbound, out_host) = configured(&process, &config("outbound"));
    let mut remember = |n: u64| {
        send(
            &mut inbound,
            &in_host,
            &[(":authority", "a"), ("x-isogroup", "feature-1"), ("traceparent", &traceparent(n))],
        );
    };
    let mut restored = |n: u64| {
        send(&mut outbound, &out_host, &[(":authority", "a"), ("traceparent", &traceparent(n))]);
        out_host.request_header("x-isogroup-cluster") == vec![b"a-feature-1".to_vec()]
    };
    remember(1);
    assert!(restored(1), "a remembered trace is restored");
    assert!(!restored(2), "an unknown trace is not guessed");
    // Remember more traces until trace 1's slot is taken by a later one.
    let mut n = 2;
    while restored(1) {
        n += 1;
        remember(n);
        assert!(n < 10_000, "trace 1 never evicted");
    }
    assert!(restored(n), "the newer trace holds the slot");
}
