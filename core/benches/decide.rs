//! decide() and group extraction over tables of 10 to 100k services, and
//! what compiling a table costs. `./build.sh bench` runs these.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: a bad fixture should stop it

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use isogroup_core::decide::{decide, RequestView};
use isogroup_core::group::{from_baggage, from_header};
use isogroup_core::synth;
use isogroup_core::{Decision, Limits, Table};

/// Counts live heap bytes, to report what a compiled table holds.
struct LiveBytes;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for LiveBytes {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: LiveBytes = LiveBytes;

/// (authority, group) for a hit, a fallback and a fail-fast in `t`.
fn requests(t: &Table, services: usize, groups: usize) -> [(String, String); 3] {
    let mut hit = None;
    let mut fallback = None;
    let mut failfast = None;
    for i in (0..services).rev() {
        for j in 0..groups {
            let host = synth::service(i);
            let g = synth::group(j);
            let view = RequestView { authority: host.as_bytes(), group: Some(&g), strict: None, namespace: None };
            match decide(t, &view) {
                Decision::Route(r) if !r.fallback && hit.is_none() && r.serving != "base" => {
                    hit = Some((host.clone(), g.clone()))
                }
                Decision::Route(r) if r.fallback && fallback.is_none() => fallback = Some((host.clone(), g.clone())),
                Decision::FailFast(_) if failfast.is_none() => failfast = Some((host.clone(), g.clone())),
                _ => {}
            }
        }
        if hit.is_some() && fallback.is_some() && failfast.is_some() {
            break;
        }
    }
    let none = || ("svc-0".to_owned(), "g-0".to_owned());
    [hit.unwrap_or_else(none), fallback.unwrap_or_else(none), failfast.unwrap_or_else(none)]
}

fn bench_decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("decide");
    for &(services, groups) in &[(10, 10), (1_000, 100), (10_000, 10), (10_000, 100), (100_000, 100)] {
        let t = Table::compile(&synth::table(services, groups), "base", &Limits::default())
            .unwrap_or_else(|e| panic!("{e}"));
        for (path, (host, g)) in ["hit", "fallback", "failfast"].iter().zip(requests(&t, services, groups)) {
            let id = BenchmarkId::new(*path, format!("{services}svc_{groups}grp"));
            group.bench_with_input(id, &(host, g), |b, (host, g)| {
                b.iter(|| {
                    let view = RequestView {
                        authority: black_box(host.as_bytes()),
                        group: Some(black_box(g)),
                        strict: None,
                        namespace: None,
                    };
                    black_box(decide(&t, &view));
                })
            });
        }
    }
    group.finish();
}

/// The yardstick in the same run: one lookup in a std `HashMap<String, String>`
/// (SipHash) of 10k entries, what a naive implementation does at least once.
fn bench_baseline(c: &mut Criterion) {
    let map: std::collections::HashMap<String, String> =
        (0..10_000).map(|i| (synth::service(i), synth::group(i % 100))).collect();
    let key = synth::service(5);
    c.bench_function("baseline/std_hashmap_lookup_10k", |b| b.iter(|| black_box(map.get(black_box(key.as_str())))));
}

fn bench_extract(c: &mut Criterion) {
    let mut group = c.benchmark_group("extract");
    group.bench_function("header", |b| b.iter(|| black_box(from_header(black_box(b"feature-1")))));
    let baggage = b"userId=alice, serverNode=DF%2028, isogroup=feature-1;ttl=30, other=x";
    group.bench_function("baggage", |b| b.iter(|| black_box(from_baggage(black_box(baggage), "isogroup"))));
    group.finish();
}

/// Second-round lookups on the request path: a source binding among 10k
/// (longest prefix: /32s over /24s over one /8), and a short host tried in
/// the namespace first. Baseline for both: `decide/hit/10000svc_10grp`.
fn bench_edge(c: &mut Criterion) {
    let mut group = c.benchmark_group("edge");
    let mut raw = synth::table(1_000, 10);
    raw.sources.push(isogroup_core::RawSource { cidr: "10.0.0.0/8".into(), group: "g-0".into(), expires_at: None });
    for i in 0..10_000u32 {
        let (a, b) = (i / 250, i % 250);
        let cidr = if i % 2 == 0 { format!("10.{a}.{b}.7/32") } else { format!("10.{a}.{b}.0/24") };
        raw.sources.push(isogroup_core::RawSource {
            cidr,
            group: synth::group((i % 10) as usize),
            expires_at: Some(u64::MAX),
        });
    }
    let t = Table::compile(&raw, "base", &Limits::default()).unwrap();
    for (name, ip) in [
        ("binding_32", "10.3.4.7"),
        ("binding_24", "10.3.5.9"),
        ("binding_8", "10.200.0.1"),
        ("binding_none", "192.0.2.1"),
    ] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        group.bench_function(name, |b| b.iter(|| black_box(t.sources().lookup(black_box(ip), 1_000))));
    }
    // The worst case: `svc-5.default` is no host (one probe missed), `svc-5` is.
    let short = synth::service(5);
    group.bench_function("decide_short_host_namespace_miss", |b| {
        b.iter(|| {
            let view = RequestView {
                authority: black_box(short.as_bytes()),
                group: None,
                strict: None,
                namespace: Some("default"),
            };
            black_box(decide(&t, &view))
        })
    });
    group.finish();
}

fn bench_compile(c: &mut Criterion) {
    let mut group = c.benchmark_group("compile");
    group.sample_size(10);
    for services in [10_000, 100_000] {
        let json = serde_json::to_vec(&synth::table(services, 100)).unwrap_or_default();
        let before = LIVE.load(Ordering::Relaxed);
        let table = Table::from_json(&json, "base", &Limits::default()).unwrap();
        let held = LIVE.load(Ordering::Relaxed) - before;
        println!(
            "compile/memory/{services}: compiled table holds {:.1} MiB (its JSON: {:.1} MiB)",
            held as f64 / 1048576.0,
            json.len() as f64 / 1048576.0
        );
        drop(table);
        group.bench_with_input(BenchmarkId::new("from_json", services), &json, |b, json| {
            b.iter(|| black_box(Table::from_json(json, "base", &Limits::default()).map(|t| t.version())))
        });
    }
    group.finish();
}

criterion_group!(benches, bench_baseline, bench_decide, bench_extract, bench_edge, bench_compile);
criterion_main!(benches);
