//! An Envoy configuration reload under load (envoy/reload/): the listener,
//! and with it the plugin configuration and its inline table, is replaced
//! through file-based LDS while requests flow. No request fails, and routing
//! follows the new table once the new filter chain serves.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{http_fresh_connections, wait_for, Mesh, Rendered};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_reload_under_load_loses_nothing() {
    // The listener file first: the bootstrap then shares its port map.
    let listeners = Rendered::from_file("envoy/reload/listeners.yaml");
    let bootstrap = listeners.companion_file("envoy/reload/bootstrap.yaml");
    let mesh = Arc::new(Mesh::start_full(bootstrap, &[], &[("listeners.yaml", &listeners.yaml)]).await);
    let b_group = |mesh: Arc<Mesh>| async move {
        let body: Value = mesh
            .request(&http_fresh_connections(), "b")
            .header("x-isogroup", "feature-1")
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        body["group"].as_str().map(str::to_owned)
    };
    wait_for("the listener from LDS", Duration::from_secs(10), || b_group(mesh.clone())).await;
    assert_eq!(b_group(mesh.clone()).await.as_deref(), Some("feature-1"));

    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for _ in 0..4 {
        let (mesh, stop, answered) = (mesh.clone(), stop.clone(), answered.clone());
        load.push(tokio::spawn(async move {
            let client = http_fresh_connections();
            let (mut ok, mut bad) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                match mesh.request(&client, "b").header("x-isogroup", "feature-1").send().await {
                    Ok(r) if r.status() == 200 => {
                        ok += 1;
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => bad.push(r.status().to_string()),
                    Err(e) => bad.push(e.to_string()),
                }
            }
            (ok, bad)
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
    // Load running before the reload.
    load_running(200).await;
    // The new listener: b loses its feature-1 instance in the inline table.
    let new = listeners.yaml.replace(r#", "feature-1": "b-feature-1""#, "");
    assert_ne!(new, listeners.yaml, "the table edit applies");
    let tmp = mesh.dir().join("listeners.yaml.tmp");
    std::fs::write(&tmp, new).unwrap();
    std::fs::rename(&tmp, mesh.dir().join("listeners.yaml")).unwrap();
    wait_for("routing by the reloaded table", Duration::from_secs(15), || {
        let mesh = mesh.clone();
        async move { (b_group(mesh).await.as_deref() == Some("base")).then_some(()) }
    })
    .await;
    // And load keeps running after it.
    load_running(200).await;
    stop.store(true, Ordering::Relaxed);
    let (mut ok, mut bad) = (0, Vec::new());
    for t in load {
        let (o, b) = t.await.unwrap();
        ok += o;
        bad.extend(b);
    }
    println!("reload under load: {ok} requests answered 200, {} failed", bad.len());
    assert!(ok > 50, "load ran: {ok}");
    assert!(bad.is_empty(), "failures during the reload: {bad:?}");
    assert!(mesh.envoy.stat("listener_manager.lds.update_success").await >= 2, "LDS loaded twice");
}
