//! Soak: steady load through Envoy (concurrency 2) while the companion
//! changes the table every 100 ms. Every response must be a 200 routed by a
//! recent table (reported against 1 s, failed past 5 s), and Envoy's RSS
//! must stay flat.
//! `./build.sh test` runs it for 15 s; `./build.sh soak` for 5 minutes
//! (SOAK_SECONDS).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{header_values, http, rss_kb, Companion, Mesh, Rendered};

const TABLE: &str = include_str!("../demo/table.json");

/// The table version in b's `x-isogroup-decision` (the outermost hop).
fn routed_version(decisions: &[String]) -> Option<u64> {
    let d = decisions.last()?;
    d.split("; ").find_map(|p| p.strip_prefix("table="))?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_load_under_table_churn() {
    let seconds: u64 = std::env::var("SOAK_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(15);
    let rendered = Rendered::from_file("envoy/companion.yaml");
    let companion = Arc::new(Companion::start(rendered.port(18080), TABLE).await);
    let mesh = Arc::new(Mesh::start_with(rendered).await);
    mesh.envoy.wait_stat("wasmcustom.isogroup_table_version", 1).await;
    let pid = mesh.envoy.proc.pid();
    // warm up, then take the starting RSS
    let warm = http();
    for _ in 0..300 {
        mesh.request(&warm, "b").send().await.unwrap();
    }
    let rss_start = rss_kb(pid);
    let deadline = Instant::now() + Duration::from_secs(seconds);

    // (time the companion accepted it, version)
    let published: Arc<Mutex<Vec<(Instant, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    let churn = {
        let (companion, published) = (companion.clone(), published.clone());
        tokio::spawn(async move {
            let mut on = false;
            while Instant::now() < deadline {
                on = !on;
                let v = companion.set_instance("b", "feature-1", on.then_some("b-feature-1")).await;
                published.lock().unwrap().push((Instant::now(), v));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut load = Vec::new();
    for _ in 0..8 {
        let mesh = mesh.clone();
        load.push(tokio::spawn(async move {
            let client = http();
            let mut seen = Vec::new(); // (received, version or None for an unexpected answer)
            while Instant::now() < deadline {
                let resp = mesh
                    .request(&client, "b")
                    .header("x-isogroup", "feature-1")
                    .header("x-isogroup-debug", "1")
                    .send()
                    .await;
                let now = Instant::now();
                match resp {
                    Ok(r) if r.status() == 200 => {
                        let v = routed_version(&header_values(&r, "x-isogroup-decision"));
                        let _ = r.bytes().await;
                        seen.push((now, v));
                    }
                    _ => seen.push((now, None)),
                }
            }
            seen
        }));
    }
    churn.await.unwrap();
    let mut responses = Vec::new();
    for t in load {
        responses.extend(t.await.unwrap());
    }
    let rss_end = rss_kb(pid);
    let published = published.lock().unwrap().clone();
    let unexpected = responses.iter().filter(|(_, v)| v.is_none()).count();
    // Responses routed by a table older than the newest one accepted `lag`
    // before them. One second is SPEC's figure and is reported; the test
    // fails only past a margin a loaded 2-core machine meets.
    let stale_after = |lag: Duration| {
        responses
            .iter()
            .filter(|(at, v)| {
                let floor = published.iter().filter(|(p, _)| *p + lag <= *at).map(|(_, v)| *v).max();
                matches!((floor, v), (Some(f), Some(v)) if *v < f)
            })
            .count()
    };
    let stale = stale_after(Duration::from_secs(1));
    let very_stale = stale_after(Duration::from_secs(5));
    println!(
        "soak {seconds} s: {} responses, {} table versions published, {unexpected} unexpected, {stale} routed by a table older than 1 s; envoy RSS {rss_start} kB -> {rss_end} kB",
        responses.len(),
        published.len()
    );
    // Paced at one change per 100 ms; each is an fsynced write, so a slow
    // disk may manage fewer: one per second still makes this a churn test.
    assert!(published.len() as u64 >= seconds, "the table kept changing: {}", published.len());
    assert!(responses.len() > 100);
    assert_eq!(unexpected, 0);
    assert_eq!(very_stale, 0, "responses routed by a table older than 5 s");
    assert!(rss_end < rss_start + rss_start / 5 + 4096, "RSS flat: {rss_start} kB -> {rss_end} kB");
}
