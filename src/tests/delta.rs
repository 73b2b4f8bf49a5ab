//! Table deltas through the filter's own path (SPEC "Delivery to many
//! proxies"), over the fake host: the poller applies a delta onto the table
//! it holds and shares it after the last whole table, every VM on the
//! delta's base applies it, any other compiles the whole and the deltas
//! after it; whatever is wrong with a delta discards it, counted, and the
//! whole table is fetched at once.

use isogroup_test_support::table_changes::{diff, first_table, mutate, Rng};
use serde_json::{json, Map, Value};

use super::sync::{answer, installed, last_path, table_in};
use super::{companion_config, configured, poller_and_worker};
use crate::fake_host::{FakeHost, Process};
use crate::host::Host;
use crate::proxy::RootContext;
use crate::root::Root;
use crate::sync::{Keys, BACKOFF_MAX_MS, MAX_SHARED_DELTAS};
use isogroup_core::{CompanionSource, Limits, RawTable, Table};

const DELTA: (&str, &str) = ("content-type", "application/vnd.isogroup.delta.v1+json");

fn source() -> CompanionSource {
    let mut source = CompanionSource::with_defaults("companion".into(), "companion".into());
    source.path = "/v1/table".into();
    source.wait_s = 25;
    source
}

fn shared(host: &FakeHost, key: &str) -> Vec<u8> {
    host.shared_get(key).unwrap().0.unwrap_or_default()
}

fn raw(bytes: &[u8]) -> RawTable {
    RawTable::from_companion_json(bytes, &Limits::default()).unwrap().0
}

/// The VM's compiled table as text: equal for equal raw tables.
fn compiled(root: &Root<FakeHost>) -> String {
    root.vm().and_then(|vm| vm.table()).map(|t| format!("{t:?}")).unwrap_or_default()
}

fn compiled_whole(table: &Value) -> String {
    let bytes = serde_json::to_vec(table).unwrap();
    format!("{:?}", Table::from_companion_json(&bytes, "base", &Limits::default(), false).unwrap().0)
}

fn routes(root: &Root<FakeHost>, service: &str) -> bool {
    root.vm().and_then(|vm| vm.table()).is_some_and(|t| t.service_by_name(service).is_some())
}

fn v100() -> Value {
    serde_json::from_str(&table_in("1000-aa", 100)).unwrap()
}

#[test]
fn a_delta_is_applied_by_the_poller_shared_after_the_whole_and_applied_by_every_vm_on_its_base() {
    let (process, mut poller, host, mut worker) = poller_and_worker();
    poller.on_tick();
    assert_eq!(last_path(&host), "/v1/table", "nothing held: no delta asked");
    let old = v100();
    answer(&mut poller, &host, &[(":status", "200")], &old.to_string());
    worker.on_tick();
    assert_eq!(installed(&worker), Some(100));
    poller.on_tick();
    assert_eq!(last_path(&host), "/v1/table?after=100&epoch=1000-aa&wait=25&delta=1");
    let mut new = old.clone();
    new["version"] = json!(101);
    new["services"]["c"] = json!({"hosts": ["c"], "clusters": {"base": "c-base", "feature-1": "c-f1"}});
    new["services"].as_object_mut().unwrap().remove("b");
    answer(&mut poller, &host, &[(":status", "200"), DELTA], &diff(&old, &new).to_string());
    assert_eq!(installed(&poller), Some(101));
    assert!(routes(&poller, "c") && !routes(&poller, "b"));
    // The shared whole stays the last whole table; the delta is shared after it.
    let keys = Keys::for_source(&source());
    let whole = shared(&host, &keys.table);
    assert_eq!(raw(&whole), raw(old.to_string().as_bytes()));
    let deltas = shared(&host, &keys.deltas);
    assert!(deltas.starts_with(b"100 1000-aa\n") && deltas.ends_with(diff(&old, &new).to_string().as_bytes()));
    // The worker on the delta's base applies it: it does not even read the
    // whole (spoilt here to show it).
    host.shared_set(&keys.table, b"not json", None).unwrap();
    worker.on_tick();
    assert_eq!(installed(&worker), Some(101));
    assert_eq!(compiled(&worker), compiled_whole(&new));
    // A VM not on the base (new here, nothing installed) compiles the whole
    // brought on by the delta.
    host.shared_set(&keys.table, &whole, None).unwrap();
    let (mut late, _) = configured(&process, &companion_config("companion"));
    late.on_tick();
    assert_eq!(compiled(&late), compiled_whole(&new));
    poller.on_tick(); // flushes its counters
    assert_eq!(process.metric("isogroup_table_delta_fallbacks_total"), 0);
    assert_eq!(process.metric("isogroup_table_updates_total"), 2);
}

#[test]
fn a_bad_delta_is_discarded_counted_and_the_whole_table_fetched_at_once() {
    let process = Process::new();
    let (mut root, host) = configured(&process, &companion_config("companion"));
    root.on_tick();
    let mut held = v100();
    answer(&mut root, &host, &[(":status", "200")], &held.to_string());
    type Spoil = fn(&mut Value);
    let cases: [(&str, Spoil); 8] = [
        ("an unknown key", |d| d["rename"] = json!({})),
        ("an unknown base key", |d| d["base"]["revision"] = json!(1)),
        ("a wrong base version", |d| d["base"]["version"] = json!(99)),
        ("a wrong base epoch", |d| d["base"]["epoch"] = json!("999-zz")),
        ("an invalid result", |d| d["set"]["c"]["clusters"] = json!({"feature-1": "x"})),
        ("a removal of a service not held", |d| d["remove"] = json!(["zz"])),
        ("a removal out of order", |d| d["remove"] = json!(["b", "a"])),
        ("garbage", |d| *d = json!("{")),
    ];
    for (i, (what, spoil)) in cases.into_iter().enumerate() {
        let mut new = held.clone();
        new["version"] = json!(101 + i);
        new["services"]["c"] = json!({"hosts": ["c"], "clusters": {"base": "c-base"}});
        let mut delta = diff(&held, &new);
        spoil(&mut delta);
        root.on_tick();
        assert!(last_path(&host).ends_with("&delta=1"), "{what}");
        answer(&mut root, &host, &[(":status", "200"), DELTA], &delta.to_string());
        assert_eq!(installed(&root), held["version"].as_u64(), "{what}: the table in force stays");
        // The next poll, at once, asks for the whole table.
        root.on_tick();
        assert_eq!(process.metric("isogroup_table_delta_fallbacks_total"), i as i64 + 1, "{what}");
        let want = format!("/v1/table?after={}&epoch=1000-aa&wait=25", held["version"]);
        assert_eq!(last_path(&host), want, "{what}");
        answer(&mut root, &host, &[(":status", "200")], &new.to_string());
        assert_eq!(compiled(&root), compiled_whole(&new), "{what}");
        new["services"].as_object_mut().unwrap().remove("c");
        held = new;
    }
    assert_eq!(process.metric("isogroup_table_rejects_total"), 0, "a discarded delta is no rejected table");
    assert!(process.logged("table delta discarded"));
}

/// The differential test: random change sequences through a poller and
/// several VMs (some lagging a version or more, some started late), with
/// deltas that would make an invalid table and deltas spoilt (an unknown
/// key, an unknown base key, a wrong base). After every change each VM
/// holds exactly the table a whole fetch gives (the last valid one), and
/// a VM started then gets it from the shared whole and the deltas after
/// it; a delta that cannot apply is discarded and counted, and nothing
/// else is.
#[test]
fn random_changes_end_in_every_vm_with_the_table_a_whole_fetch_gives_or_fall_back() {
    let (mut deltas_applied, mut discarded_total) = (0, 0);
    for seed in 1..=40u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let process = Process::new();
        let config = companion_config("companion");
        let (mut poller, host) = configured(&process, &config);
        let mut workers: Vec<Root<FakeHost>> = (0..3).map(|_| configured(&process, &config).0).collect();
        let mut published = first_table();
        poller.on_tick();
        answer(&mut poller, &host, &[(":status", "200")], &published.to_string());
        // What a whole fetch gives: the last valid table published.
        let mut held = published.clone();
        let mut discarded = 0;
        for step in 0..40u64 {
            let what = format!("seed {seed} step {step}");
            let mut new = published.clone();
            mutate(&mut rng, &mut new);
            new["version"] = json!(step + 2);
            let reseeded = rng.below(25) == 0;
            if reseeded {
                new["epoch"] = json!(format!("{}-bb", 2000 + step));
            }
            let valid =
                Table::from_companion_json(new.to_string().as_bytes(), "base", &Limits::default(), false).is_ok();
            // Polls come at once after an answer, or after the backoff of a reject.
            host.advance(BACKOFF_MAX_MS * 2);
            poller.on_tick();
            let mut path = last_path(&host);
            // The companion holds every version it published: a delta from
            // the poll's base, unless the epoch changed (history lost).
            if path.ends_with("&delta=1") && !reseeded {
                let mut delta = diff(&published, &new);
                assert!(path.contains(&format!("after={}&", published["version"])), "{what}: {path}");
                let spoil: Option<fn(&mut Value, u64)> = match rng.below(10) {
                    0 => Some(|d, _| d["extra"] = json!(1)),
                    1 => Some(|d, _| d["base"]["rev"] = json!(1)),
                    2 => Some(|d, step| d["base"]["version"] = json!(step + 500)),
                    3 => Some(|d, _| d["base"]["epoch"] = json!("999-zz")),
                    _ => None,
                };
                let spoilt = spoil.map(|spoil| spoil(&mut delta, step)).is_some();
                let before = process.metric("isogroup_table_delta_fallbacks_total");
                answer(&mut poller, &host, &[(":status", "200"), DELTA], &delta.to_string());
                // Flushes the counters; polls again at once.
                poller.on_tick();
                let fell_back = process.metric("isogroup_table_delta_fallbacks_total") - before;
                if !spoilt && valid {
                    assert_eq!(fell_back, 0, "{what}: a good delta discarded");
                    deltas_applied += 1;
                } else {
                    assert_eq!(fell_back, 1, "{what}: a bad delta not discarded (spoilt {spoilt}, valid {valid})");
                    discarded += 1;
                    path = last_path(&host);
                    assert!(!path.contains("delta=1"), "{what}: the whole table is fetched at once: {path}");
                    answer(&mut poller, &host, &[(":status", "200")], &new.to_string());
                }
            } else {
                assert!(!path.contains("delta=1") || reseeded, "{what}");
                answer(&mut poller, &host, &[(":status", "200")], &new.to_string());
            }
            published = new;
            if valid {
                held = published.clone();
            }
            let want = compiled_whole(&held);
            assert_eq!(compiled(&poller), want, "{what}: poller");
            let mut fresh = configured(&process, &config).0;
            fresh.on_tick();
            assert_eq!(compiled(&fresh), want, "{what}: a VM started now");
            // Now and then a VM starts (nothing held: the whole), and each
            // VM lags a tick now and then (not on the next delta's base).
            if rng.below(15) == 0 {
                workers.push(configured(&process, &config).0);
            }
            for worker in &mut workers {
                if rng.below(4) == 0 {
                    continue;
                }
                worker.on_tick();
                assert_eq!(compiled(worker), want, "{what}: worker");
            }
        }
        assert_eq!(process.metric("isogroup_table_delta_fallbacks_total"), discarded, "seed {seed}");
        discarded_total += discarded;
    }
    assert!(deltas_applied > 200 && discarded_total > 150, "{deltas_applied} applied, {discarded_total} discarded");
}

/// Deltas through one poller onto `table` until its next poll asks for the
/// whole table: how many it applied.
fn deltas_until_a_whole_poll(poller: &mut Root<FakeHost>, host: &FakeHost, table: &mut Value, size: usize) -> usize {
    for i in 0..100 {
        poller.on_tick();
        if !last_path(host).ends_with("&delta=1") {
            return i;
        }
        let mut new = table.clone();
        new["version"] = json!(table["version"].as_u64().unwrap() + 1);
        new["services"][format!("s{i}")] = json!({"hosts": [format!("s{i}")], "clusters": {"base": "x".repeat(size)}});
        answer(poller, host, &[(":status", "200"), DELTA], &diff(table, &new).to_string());
        assert_eq!(installed(poller), new["version"].as_u64());
        *table = new;
    }
    panic!("the poller never asked for the whole table");
}

/// After `MAX_SHARED_DELTAS` deltas, or as many bytes of them as the whole
/// table, the poller asks for the whole, which replaces the shared whole
/// and clears the deltas: a VM that starts never applies more than that
/// many, nor holds more than twice the whole.
#[test]
fn after_enough_deltas_the_whole_table_is_fetched_and_the_deltas_cleared() {
    let process = Process::new();
    let config = companion_config("companion");
    let (mut poller, host) = configured(&process, &config);
    let keys = Keys::for_source(&source());
    poller.on_tick();
    // Large enough for `MAX_SHARED_DELTAS` small deltas.
    let mut table = v100();
    for i in 0..60 {
        table["services"][format!("pad-{i}")] = json!({"hosts": [format!("pad-{i}")], "clusters": {"base": "pad"}});
    }
    answer(&mut poller, &host, &[(":status", "200")], &table.to_string());
    assert_eq!(deltas_until_a_whole_poll(&mut poller, &host, &mut table, 1), MAX_SHARED_DELTAS);
    let shared_deltas = shared(&host, &keys.deltas);
    assert_eq!(shared_deltas.iter().filter(|&&b| b == 0).count(), MAX_SHARED_DELTAS - 1);
    // A VM that starts now applies them all onto the whole.
    let (mut late, _) = configured(&process, &config);
    late.on_tick();
    assert_eq!(compiled(&late), compiled_whole(&table));
    let path = last_path(&host);
    assert!(path.ends_with(&format!("after={}&epoch=1000-aa&wait=25", table["version"])), "{path}");
    table["version"] = json!(200);
    let whole = table.to_string();
    answer(&mut poller, &host, &[(":status", "200")], &whole);
    assert_eq!(raw(&shared(&host, &keys.table)), raw(whole.as_bytes()));
    assert!(shared(&host, &keys.deltas).is_empty());
    // Deltas of about a tenth of the whole: the whole again once they are
    // as large as it, before `MAX_SHARED_DELTAS`.
    let n = deltas_until_a_whole_poll(&mut poller, &host, &mut table, whole.len() / 10);
    assert!((5..MAX_SHARED_DELTAS).contains(&n), "{n}");
    let shared_deltas = shared(&host, &keys.deltas);
    assert!(shared_deltas.len() >= whole.len(), "{} bytes", shared_deltas.len());
    let all_but_last = shared_deltas.iter().rposition(|&b| b == 0).unwrap();
    assert!(all_but_last < whole.len(), "not before");
    assert_eq!(process.metric("isogroup_table_delta_fallbacks_total"), 0);
}

/// A VM that becomes the poller after another (the lease lapsed) does not
/// know the size of the whole the deltas follow: it asks for the whole
/// table after its first delta.
#[test]
fn a_new_poller_asks_for_the_whole_after_its_first_delta() {
    let process = Process::new();
    let config = companion_config("companion");
    let (mut first, host1) = configured(&process, &config);
    let (mut second, host2) = configured(&process, &config);
    first.on_tick();
    let mut table = v100();
    answer(&mut first, &host1, &[(":status", "200")], &table.to_string());
    second.on_tick();
    assert_eq!(installed(&second), Some(100));
    // The first poller stops ticking; its lease lapses and the second polls.
    host2.advance(crate::sync::LEASE_TTL_MS * 2);
    assert_eq!(deltas_until_a_whole_poll(&mut second, &host2, &mut table, 1), 1);
    // The first answered delta was taken and shared.
    assert_eq!(installed(&second), Some(101));
}

// The VM CPU to install a one-service change (BENCHMARKS.md, "Table deltas
// in the filter"): each step below in its own function, for callgrind's
// inclusive instruction counts (`valgrind --tool=callgrind` on this test,
// release build; `callgrind_annotate --inclusive=yes`).

#[inline(never)]
fn poller_takes_a_whole_table(poller: &mut Root<FakeHost>, host: &FakeHost, body: &str) {
    std::hint::black_box(0); // not merged with its twin
    answer(poller, host, &[(":status", "200")], body);
}

#[inline(never)]
fn poller_takes_a_delta(poller: &mut Root<FakeHost>, host: &FakeHost, body: &str) {
    std::hint::black_box(1); // not merged with its twin
    answer(poller, host, &[(":status", "200"), DELTA], body);
}

#[inline(never)]
fn workers_follow_a_whole_table(workers: &mut [Root<FakeHost>]) {
    std::hint::black_box(2); // not merged with its twin
    workers.iter_mut().for_each(|w| w.on_tick());
}

#[inline(never)]
fn workers_follow_a_delta(workers: &mut [Root<FakeHost>]) {
    std::hint::black_box(3); // not merged with its twin
    workers.iter_mut().for_each(|w| w.on_tick());
}

/// 500 services × 50 lanes, one service changed per version: the same
/// changes installed by whole tables (one Envoy) and by deltas (another),
/// each with a poller and two workers, as Envoy's main thread and two
/// workers. Checks both end with the same tables.
#[test]
#[ignore = "a measurement: run under callgrind (BENCHMARKS.md)"]
fn install_cost_of_a_one_service_change() {
    let raw = isogroup_core::synth::table(500, 50);
    let mut table = json!({"version": 1, "epoch": "1000-aa", "groups": {}, "services": {}});
    for (name, group) in &raw.groups {
        let mut g = json!({"fallback": group.fallback});
        if group.mode == isogroup_core::Mode::Strict {
            g["mode"] = json!("strict");
        }
        table["groups"][name] = g;
    }
    for (name, service) in &raw.services {
        let clusters: Map<String, Value> = service.clusters.iter().map(|(g, c)| (g.clone(), json!(c))).collect();
        table["services"][name] = json!({"hosts": service.hosts, "clusters": clusters});
    }
    let config = companion_config("companion");
    let envoys: Vec<_> = (0..2)
        .map(|_| {
            let process = Process::new();
            let (mut poller, host) = configured(&process, &config);
            let mut workers: Vec<Root<FakeHost>> = (0..2).map(|_| configured(&process, &config).0).collect();
            poller.on_tick();
            answer(&mut poller, &host, &[(":status", "200")], &table.to_string());
            workers.iter_mut().for_each(|w| w.on_tick());
            (process, poller, host, workers)
        })
        .collect();
    let [(_, mut poller_w, host_w, mut workers_w), (process_d, mut poller_d, host_d, mut workers_d)] =
        <[_; 2]>::try_from(envoys).unwrap_or_else(|_| unreachable!());
    for step in 0..10u64 {
        let mut new = table.clone();
        new["version"] = json!(step + 2);
        let name = isogroup_core::synth::service(usize::try_from(step * 37).unwrap());
        new["services"][&name]["clusters"][format!("g-{step}")] = json!(format!("{name}-g-{step}"));
        let (whole, delta) = (new.to_string(), diff(&table, &new).to_string());
        poller_w.on_tick();
        poller_d.on_tick();
        assert!(last_path(&host_d).ends_with("&delta=1"));
        poller_takes_a_whole_table(&mut poller_w, &host_w, &whole);
        poller_takes_a_delta(&mut poller_d, &host_d, &delta);
        workers_follow_a_whole_table(&mut workers_w);
        workers_follow_a_delta(&mut workers_d);
        let want = compiled_whole(&new);
        for root in [&poller_w, &poller_d].into_iter().chain(&workers_w).chain(&workers_d) {
            assert_eq!(compiled(root), want);
        }
        table = new;
    }
    poller_d.on_tick();
    assert_eq!(process_d.metric("isogroup_table_delta_fallbacks_total"), 0);
    println!("whole table: {} bytes", table.to_string().len());
}

/// The whole-only layout (the `--no-default-features` build, and every build
/// before the deltas) keeps the stamp's table under `table`; this build keeps
/// the last whole there. In one process during a rollout the two must not
/// read each other's keys: a whole-only VM would install this build's stale
/// whole for a newer stamp, and this build would take the other's table.
#[test]
fn the_delta_layout_and_the_whole_only_layout_never_share_keys() {
    let process = Process::new();
    let config = companion_config("companion");
    let (mut poller, host) = configured(&process, &config);
    poller.on_tick();
    let old = v100();
    answer(&mut poller, &host, &[(":status", "200")], &old.to_string());
    poller.on_tick();
    let mut new = old.clone();
    new["version"] = json!(101);
    new["services"]["c"] = json!({"hosts": ["c"], "clusters": {"base": "c-base"}});
    answer(&mut poller, &host, &[(":status", "200"), DELTA], &diff(&old, &new).to_string());
    assert_eq!(installed(&poller), Some(101));
    let keys = Keys::for_source(&source());
    let whole_only = |key: &str| key.replacen("isogroup/src2-", "isogroup/src-", 1);
    // (On a build with one layout for both, the checks below fail.)
    // Nothing of this build's under the keys a whole-only VM reads.
    for key in [&keys.lease, &keys.table, &keys.stamp, &keys.deltas] {
        assert!(shared(&host, &whole_only(key)).is_empty(), "{key}");
    }
    // A whole-only poller's newer table is not this build's to take.
    let other = table_in("1000-aa", 200);
    host.shared_set(&whole_only(&keys.table), other.as_bytes(), None).unwrap();
    host.shared_set(&whole_only(&keys.stamp), b"200 1000-aa", None).unwrap();
    let (mut late, _) = configured(&process, &config);
    late.on_tick();
    assert_eq!(installed(&late), Some(101));
    assert_eq!(compiled(&late), compiled_whole(&new));
}
