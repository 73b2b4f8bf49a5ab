//! The decision path allocates nothing: proven with a counting allocator,
//! not by eye. (Table compilation allocates, once per table.)

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use isogroup_core::decide::{decide, decide_service, RequestView};
use isogroup_core::group::{from_baggage, from_header, strict_lists};
use isogroup_core::{synth, Decision, Limits, Table};

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.load(Ordering::SeqCst);
    f();
    ALLOCATIONS.load(Ordering::SeqCst) - before
}

#[test]
fn decisions_and_extraction_allocate_nothing() {
    let table = Table::compile(&synth::table(10_000, 100), "base", &Limits::default()).unwrap();
    let hosts: Vec<String> = (0..10_000).step_by(97).map(synth::service).collect();
    let groups: Vec<String> = (0..100).map(synth::group).collect();
    let ports = Table::from_json(
        br#"{"services": {"web.prod": {"hosts": ["web.prod"], "clusters": {"base": "web-{port}"}, "ports": [9080, 9443]}},
            "sources": [{"cidr": "10.0.0.0/8", "group": "a"}, {"cidr": "10.1.0.0/16", "group": "b", "expires_at": 9}]}"#,
        "base",
        &Limits::default(),
    )
    .unwrap();
    let mut kinds = [0usize; 3];
    let n = allocations_in(|| {
        for host in &hosts {
            for g in &groups {
                for strict in [None, Some(&b"*"[..])] {
                    let view = RequestView { authority: host.as_bytes(), group: Some(g), strict, namespace: None };
                    match decide(&table, &view) {
                        Decision::Route(r) => kinds[usize::from(r.fallback)] += 1,
                        Decision::FailFast(_) => kinds[2] += 1,
                        Decision::PassThrough => {}
                    }
                }
            }
        }
        let _ = decide(
            &table,
            &RequestView {
                authority: b"SVC-1.default.svc.cluster.local.:8080",
                group: None,
                strict: None,
                namespace: None,
            },
        );
        let _ = decide_service(&table, "svc-3", Some("g-1"), None, None);
        // a short host tried in the namespace first, and a `{port}` cluster
        let d =
            decide(&ports, &RequestView { authority: b"web:9443", group: None, strict: None, namespace: Some("prod") });
        assert!(matches!(d, Decision::Route(r) if r.cluster == "web-9443"));
        let _ = decide_service(&ports, "web.prod", None, None, Some(9080));
        // a source binding's longest-prefix lookup
        assert!(ports.sources().lookup(std::net::Ipv4Addr::new(10, 1, 2, 3).into(), 5).is_some());
        let _ = from_header(b"feature-1");
        let _ = from_baggage(b"a=1, isogroup=team%2Da;p=1, b=2", "isogroup");
        let _ = strict_lists(b"svc-1, svc-2", "svc-2");
    });
    assert_eq!(n, 0, "allocations on the decision path");
    // the counter itself works
    assert!(allocations_in(|| drop(std::hint::black_box(vec![1u8]))) >= 1);
    assert!(kinds.iter().all(|&k| k > 0), "hit, fallback and fail-fast all exercised: {kinds:?}");
}
