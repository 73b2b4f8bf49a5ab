//! A gateway fails closed (SECURITY.md, "A gateway fails closed"): the three
//! ways the filter can fail, each against real Envoy, and the shipped
//! gateway configurations that must say so.
//! - A bad plugin configuration fails `envoy --mode validate`, naming the field.
//! - A bad configuration pushed over LDS is rejected; the old listener serves.
//! - A VM that fails at run time (the test-only `test-trap` build, which traps
//!   on a marker header) answers 503, and no client routing header reaches
//!   an upstream.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{envoy_bin, http_fresh_connections, root, wait_for, Build, Envoy, Mesh, Rendered, TempDir};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every wasm plugin config (`config` of an `envoy.filters.http.wasm`) in a YAML tree.
fn plugin_configs<'a>(node: &'a serde_yaml::Value, out: &mut Vec<&'a serde_yaml::Value>) {
    match node {
        serde_yaml::Value::Mapping(m) => {
            if m.get("vm_config").is_some() {
                out.push(node);
            }
            m.values().for_each(|v| plugin_configs(v, out));
        }
        serde_yaml::Value::Sequence(s) => s.iter().for_each(|v| plugin_configs(v, out)),
        _ => {}
    }
}

#[test]
fn every_shipped_gateway_fails_closed() {
    // The gateway's WasmPlugin as `kubectl apply -k` sends it.
    let package = "deploy/kubernetes/wasmplugin/gateway";
    let rendered = Command::new("kubectl")
        .arg("kustomize")
        .arg(root().join(package))
        .output()
        .unwrap_or_else(|e| panic!("kubectl kustomize {package}: {e} (needs kubectl >= 1.27)"));
    assert!(
        rendered.status.success(),
        "kubectl kustomize {package} (needs kubectl >= 1.27): {}",
        String::from_utf8_lossy(&rendered.stderr)
    );
    let istio: serde_yaml::Value = serde_yaml::from_slice(&rendered.stdout).unwrap();
    assert_eq!(istio["kind"].as_str(), Some("WasmPlugin"), "{package}");
    assert_eq!(istio["spec"]["failStrategy"].as_str(), Some("FAIL_CLOSE"), "{package}");
    let mut edge_filters = 0;
    for entry in std::fs::read_dir(root().join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "yaml") {
            continue;
        }
        let yaml: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut configs = Vec::new();
        plugin_configs(&yaml, &mut configs);
        for config in configs {
            let plugin = config["configuration"]["value"].as_str().unwrap_or("{}");
            let plugin: Value = serde_json::from_str(plugin).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if plugin.get("edge").is_some() {
                edge_filters += 1;
                assert_eq!(
                    config["failure_policy"].as_str(),
                    Some("FAIL_CLOSED"),
                    "{}: an edge-mode filter ({}) must fail closed",
                    path.display(),
                    config["name"].as_str().unwrap_or("?")
                );
            }
        }
    }
    assert!(edge_filters >= 3, "edge.yaml and lanes.yaml hold edge filters: {edge_filters}");
}

#[test]
fn a_bad_plugin_config_fails_validation_naming_the_field() {
    bad_plugin_config_fails_validation_naming_the_field(Build::Wasm);
}

#[test]
fn a_bad_plugin_config_fails_validation_naming_the_field_native() {
    bad_plugin_config_fails_validation_naming_the_field(Build::Native);
}

fn bad_plugin_config_fails_validation_naming_the_field(build: Build) {
    let dir = TempDir::new("validate");
    let config = dir.0.join("edge.yaml");
    let bad = build
        .config("envoy/edge.yaml")
        .with_plugin_config(r#"{"edge": {"trusted_cidrs": ["10.0.0.0/8", "not-a-range"]}}"#);
    std::fs::write(&config, &bad.yaml).unwrap();
    let out = Command::new(envoy_bin())
        .current_dir(root())
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "validation passed a bad plugin config:\n{text}");
    assert!(
        text.contains(r#"edge.trusted_cidrs[1]: "not-a-range": not an IP address"#),
        "the error names the field:\n{text}"
    );
    // The shipped config itself validates (the failure above is the plugin's).
    let good = build.config("envoy/edge.yaml");
    std::fs::write(&config, &good.yaml).unwrap();
    let out = Command::new(envoy_bin())
        .current_dir(root())
        .args(["--mode", "validate", "-l", "error", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_over_lds_is_rejected_and_the_old_listener_serves() {
    bad_config_over_lds_is_rejected_and_the_old_listener_serves(Build::Wasm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_over_lds_is_rejected_and_the_old_listener_serves_native() {
    bad_config_over_lds_is_rejected_and_the_old_listener_serves(Build::Native).await;
}

async fn bad_config_over_lds_is_rejected_and_the_old_listener_serves(build: Build) {
    let listeners = build.config("envoy/reload/listeners.yaml");
    let bootstrap = listeners.companion_file("envoy/reload/bootstrap.yaml");
    let mesh = Mesh::start_full(bootstrap, &[], &[("listeners.yaml", &listeners.yaml)]).await;
    let group = || async {
        let resp = mesh.request(&http_fresh_connections(), "b").header("x-isogroup", "feature-1").send().await.ok()?;
        let body: Value = resp.json().await.ok()?;
        body["group"].as_str().map(str::to_owned)
    };
    wait_for("the listener from LDS", Duration::from_secs(10), group).await;
    assert_eq!(group().await.as_deref(), Some("feature-1"));
    let rejected = mesh.envoy.stat("listener_manager.lds.update_rejected").await;

    // The same listener with a plugin config that does not configure.
    let bad = listeners.with_plugin_config(r#"{"edge": {"trusted_cidrs": ["nope"]}}"#);
    let tmp = mesh.dir().join("listeners.yaml.tmp");
    std::fs::write(&tmp, &bad.yaml).unwrap();
    std::fs::rename(&tmp, mesh.dir().join("listeners.yaml")).unwrap();
    wait_for("the bad listener rejected", Duration::from_secs(15), || async {
        (mesh.envoy.stat("listener_manager.lds.update_rejected").await > rejected).then_some(())
    })
    .await;
    // Envoy's log file is flushed on its own schedule: the line may follow the stat.
    let field = r#"edge.trusted_cidrs[0]: "nope": not an IP address"#;
    wait_for("the rejection naming the field in Envoy's log", Duration::from_secs(10), || async {
        mesh.envoy.log_text().contains(field).then_some(())
    })
    .await;
    // The old listener keeps serving, by the old table, on every worker.
    for _ in 0..8 {
        assert_eq!(group().await.as_deref(), Some("feature-1"));
    }
}

/// The `test-trap` wasm: built here (its own profile, so the release
/// build's output is untouched), as the shipped wasm never has the feature.
fn trap_wasm() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let status = Command::new(cargo)
        .current_dir(root())
        .args(["build", "--quiet", "--profile", "test-trap", "--target", "wasm32-wasip1"])
        .args(["-p", "isogroup-filter", "--features", "test-trap"])
        .status()
        .unwrap();
    assert!(status.success(), "building the test-trap wasm");
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root().join("target"), PathBuf::from);
    let wasm = target.join("wasm32-wasip1/test-trap/isogroup_filter.wasm");
    assert!(wasm.exists(), "{}", wasm.display());
    wasm
}

/// A stand-in upstream on `port`: answers 200 and keeps each request's head.
async fn recording_upstream(port: u16, seen: Arc<Mutex<Vec<String>>>) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                let _ = sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vm_that_traps_answers_503_and_forwards_no_client_routing_header() {
    let wasm = trap_wasm();
    let mut rendered = Rendered::from_file("envoy/edge.yaml");
    rendered.yaml = rendered.yaml.replace("filename: target/isogroup.wasm", &format!("filename: {}", wasm.display()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut upstreams = Vec::new();
    for (default, _, _, _) in common::DEMO_INSTANCES {
        upstreams.push(recording_upstream(rendered.port(*default), seen.clone()).await);
    }
    let envoy = Envoy::start(&rendered, 9901, 10080).await.unwrap_or_else(|log| panic!("{log}"));
    let client = http_fresh_connections();
    // What a client sends to pick its own lane and cluster (127.0.0.1 is not trusted).
    let routing: &[(&str, &str)] = &[
        ("x-isogroup-cluster", "a-team-s"),
        ("x-isogroup-target", "team-s"),
        ("x-isogroup", "team-s"),
        ("baggage", "isogroup=team-s"),
        ("cookie", "isogroup=team-s"),
        ("x-isogroup-strict", "team-s"),
    ];
    let send = |trap: bool| {
        let mut req = client.get(envoy.url()).header("host", "a");
        for (k, v) in routing {
            req = req.header(*k, *v);
        }
        if trap {
            req = req.header("x-isogroup-test-trap", "1");
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    // Before any trap: sanitised and routed to base, on every worker.
    for _ in 0..4 {
        assert_eq!(send(false).await, 200);
    }
    assert_eq!(seen.lock().unwrap().len(), 4);
    // Each worker's VM traps (connections alternate between workers); from
    // then on that worker answers 503 without running the filter.
    for _ in 0..4 {
        assert_eq!(send(true).await, 503, "a trapped VM fails the request closed");
    }
    for _ in 0..8 {
        assert_eq!(send(false).await, 503, "a failed VM fails every request closed");
    }
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "nothing reached an upstream once the VMs failed: {seen:#?}");
    for head in &seen {
        assert!(!head.contains("team-s"), "a client routing header reached an upstream:\n{head}");
        assert!(head.contains("x-isogroup-cluster: a-base"), "routed by the filter:\n{head}");
    }
    // Envoy writes its log file out on an interval: wait for the trap's
    // line ("wasm" alone is in every start-up log).
    wait_for("the trap in Envoy's log", Duration::from_secs(10), || async {
        envoy.log_text().contains("proxy_on_request_headers failed: Uncaught RuntimeError: unreachable").then_some(())
    })
    .await;
    for u in upstreams {
        u.abort();
    }
}
