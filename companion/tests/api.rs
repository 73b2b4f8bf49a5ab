//! The companion as a real process: every endpoint over HTTP, auth,
//! long-poll, file reload, durable writes across a kill, version order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{free_port, test_dir, wait_until, Companion};
use serde_json::{json, Value};

const TOKEN: &str = "test-token-0123456789";

const TABLE: &str = r#"{
  "version": 5,
  "groups": { "feature-1": { "fallback": ["team-a"] }, "team-a": {}, "team-s": { "mode": "strict" } },
  "services": {
    "reviews": { "hosts": ["reviews"], "clusters": { "base": "reviews-base", "team-a": "reviews-a" } },
    "ratings": { "hosts": ["ratings"], "clusters": { "base": "ratings-base" } }
  }
}"#;

/// The file store: a table file in a fresh directory.
impl Companion {
    fn table_path(&self) -> PathBuf {
        self.dir.join("table.json")
    }

    /// Starts on a fresh directory holding `table`.
    async fn start(table: &str, token: Option<&'static str>) -> Companion {
        let dir = test_dir("companion");
        std::fs::write(dir.join("table.json"), table).unwrap();
        Companion::start_in(dir, token).await
    }

    async fn start_in(dir: PathBuf, token: Option<&'static str>) -> Companion {
        Companion::start_args(dir, token, &[]).await
    }

    async fn start_args(dir: PathBuf, token: Option<&'static str>, args: &[&str]) -> Companion {
        let mut all = vec!["--table".to_owned(), dir.join("table.json").display().to_string()];
        all.extend(args.iter().map(|a| a.to_string()));
        Companion::spawn(dir, token, &all, None).await
    }
}

#[tokio::test]
async fn serves_the_table_with_etag() {
    let c = Companion::start(TABLE, None).await;
    let resp = c.get("/v1/table").await;
    assert_eq!(resp.status(), 200);
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    let version = body["version"].as_u64().unwrap();
    assert!(version > 5, "the companion stamps a version above the file's: {version}");
    assert_eq!(etag, format!("\"{version}\""));
    assert_eq!(body["services"]["reviews"]["clusters"]["team-a"], "reviews-a");
    let health: Value = c.get("/healthz").await.json().await.unwrap();
    assert_eq!(health, json!({ "status": "ok", "version": version }));
}

#[tokio::test]
async fn long_poll_answers_at_once_holds_and_wakes() {
    let c = Companion::start(TABLE, Some(TOKEN)).await;
    let v = c.version().await;
    // a different version (lower or higher) is answered at once
    for after in [v - 1, v + 1000] {
        let started = Instant::now();
        let resp = c.get(&format!("/v1/table?after={after}&wait=20")).await;
        assert_eq!(resp.status(), 200);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
    // the current version is held, then 304
    let started = Instant::now();
    let resp = c.get(&format!("/v1/table?after={v}&wait=1")).await;
    assert_eq!(resp.status(), 304);
    assert!(started.elapsed() >= Duration::from_millis(900), "held {:?}", started.elapsed());
    // a change wakes a held poll early with the new table
    let url = c.url(&format!("/v1/table?after={v}&wait=20"));
    let poll = tokio::spawn(async move {
        let started = Instant::now();
        let resp = reqwest::get(url).await.unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap(), started.elapsed())
    });
    wait_until("the poll to be held", Duration::from_secs(5), async || {
        c.metric("isogroup_companion_held_polls").await >= 1.0
    })
    .await;
    let (status, body) = c.register("ratings", "feature-1", "ratings-f1").await;
    assert_eq!(status, 200, "{body}");
    let (status, table, waited) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert!(waited < Duration::from_secs(5), "woke early: {waited:?}");
    assert_eq!(table["version"], body["version"]);
    assert_eq!(table["services"]["ratings"]["clusters"]["feature-1"], "ratings-f1");
    // If-None-Match works like after=
    let resp = reqwest::Client::new()
        .get(c.url("/v1/table"))
        .header("if-none-match", format!("\"{}\"", body["version"]))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 304);
}

#[tokio::test]
async fn admin_auth() {
    let c = Companion::start(TABLE, Some(TOKEN)).await;
    let path = "/v1/services/ratings/groups/feature-1";
    let body = Some(json!({ "cluster": "x" }));
    let (status, err) = c.admin(reqwest::Method::PUT, path, body.clone(), None).await;
    assert_eq!((status, err["error"].as_str()), (401, Some("unauthorized")));
    let (status, _) = c.admin(reqwest::Method::PUT, path, body.clone(), Some("wrong")).await;
    assert_eq!(status, 401);
    let (status, _) = c.admin(reqwest::Method::PUT, path, body.clone(), Some(&TOKEN[..TOKEN.len() - 1])).await;
    assert_eq!(status, 401);
    let (status, _) = c.admin(reqwest::Method::DELETE, path, None, None).await;
    assert_eq!(status, 401);
    let (status, _) = c.admin(reqwest::Method::PUT, path, body, Some(TOKEN)).await;
    assert_eq!(status, 200);
    // no token configured: the admin API is off
    let off = Companion::start(TABLE, None).await;
    let (status, err) = off.admin(reqwest::Method::PUT, path, Some(json!({ "cluster": "x" })), Some(TOKEN)).await;
    assert_eq!((status, err["error"].as_str()), (403, Some("admin_disabled")));
}

#[tokio::test]
async fn admin_errors() {
    let c = Companion::start(TABLE, Some(TOKEN)).await;
    let put = |path: &'static str, body: Value| {
        let c = &c;
        async move { c.admin(reqwest::Method::PUT, path, Some(body), Some(TOKEN)).await }
    };
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        ("/v1/services/ratings/groups/Feature", json!({"cluster": "x"}), 400, "invalid_group"),
        ("/v1/services/Ratings/groups/f", json!({"cluster": "x"}), 400, "invalid_service"),
        ("/v1/services/ratings/groups/f", json!({"clusterz": "x"}), 400, "invalid_body"),
        ("/v1/services/ratings/groups/f", json!({"cluster": "has space"}), 400, "invalid_table"),
        ("/v1/services/nope/groups/f", json!({"cluster": "x"}), 404, "unknown_service"),
    ];
    for (path, body, want_status, want_error) in cases {
        let (status, err) = put(path, body).await;
        assert_eq!((status, err["error"].as_str().unwrap_or_default()), (want_status, want_error), "{path}: {err}");
        assert!(!err["detail"].as_str().unwrap_or_default().is_empty(), "{err}");
    }
    let (status, err) = c.admin(reqwest::Method::DELETE, "/v1/services/ratings/groups/base", None, Some(TOKEN)).await;
    assert_eq!((status, err["error"].as_str()), (409, Some("base_cluster")));
    let (status, _) = c.admin(reqwest::Method::DELETE, "/v1/services/ratings/groups/team-x", None, Some(TOKEN)).await;
    assert_eq!(status, 404);
    let (status, _) = c.admin(reqwest::Method::DELETE, "/v1/services/nope/groups/team-a", None, Some(TOKEN)).await;
    assert_eq!(status, 404);
    // a big body is refused before it is read whole
    let big = json!({ "cluster": "x".repeat(100_000) });
    let (status, _) = put("/v1/services/ratings/groups/f", big).await;
    assert_eq!(status, 413);
    // nothing above changed the table
    assert_eq!(c.table().await["services"]["ratings"]["clusters"], json!({ "base": "ratings-base" }));
    // delete works and bumps the version
    let v = c.version().await;
    let (status, _) = c.admin(reqwest::Method::DELETE, "/v1/services/reviews/groups/team-a", None, Some(TOKEN)).await;
    assert_eq!(status, 200);
    assert!(c.version().await > v);
    assert!(c.table().await["services"]["reviews"]["clusters"].get("team-a").is_none());
    assert!(c
        .get("/metrics")
        .await
        .text()
        .await
        .unwrap()
        .contains(r#"isogroup_companion_admin_requests_total{op="put",status="400"} 4"#));
}

#[tokio::test]
async fn resolve_uses_the_filter_decision() {
    let c = Companion::start(TABLE, None).await;
    let v = c.version().await;
    let cases: &[(&str, Value)] = &[
        (
            "service=reviews&group=feature-1",
            json!({"version": v, "decision": "route", "service": "reviews", "group": "feature-1", "serving_group": "team-a", "cluster": "reviews-a", "fallback": true}),
        ),
        (
            "service=reviews",
            json!({"version": v, "decision": "route", "service": "reviews", "group": "base", "serving_group": "base", "cluster": "reviews-base", "fallback": false}),
        ),
        (
            "service=ratings&group=team-s",
            json!({"version": v, "decision": "failfast", "service": "ratings", "group": "team-s", "reason": "strict_group"}),
        ),
        (
            "service=ratings&group=feature-1&strict=ratings",
            json!({"version": v, "decision": "failfast", "service": "ratings", "group": "feature-1", "reason": "strict_request"}),
        ),
    ];
    for (query, want) in cases {
        let got: Value = c.get(&format!("/v1/resolve?{query}")).await.json().await.unwrap();
        assert_eq!(&got, want, "{query}");
    }
    assert_eq!(c.get("/v1/resolve?service=nope").await.status(), 404);
    assert_eq!(c.get("/v1/resolve?service=reviews&group=BAD").await.status(), 400);
}

#[tokio::test]
async fn file_edits_reload_and_bad_edits_are_refused() {
    let c = Companion::start(TABLE, None).await;
    let v1 = c.version().await;
    // a valid hand edit (version not bumped by hand) is published higher
    let edited = TABLE.replace(r#""ratings-base" }"#, r#""ratings-base", "team-a": "ratings-a" }"#);
    std::fs::write(c.table_path(), &edited).unwrap();
    wait_until("the edit to be served", Duration::from_secs(5), async || {
        c.table().await["services"]["ratings"]["clusters"]["team-a"] == "ratings-a"
    })
    .await;
    let v2 = c.version().await;
    assert!(v2 > v1, "{v2} > {v1}");
    // invalid edits: refused, counted, the table in force stays
    let bad = [TABLE.replace(r#""base": "ratings-base""#, r#""team-a": "x""#), "{ not json".to_owned()];
    for (i, text) in bad.iter().enumerate() {
        std::fs::write(c.table_path(), text).unwrap();
        let want = (i + 1) as f64;
        wait_until("the reject to be counted", Duration::from_secs(5), async || {
            c.metric("isogroup_companion_file_rejects_total").await >= want
        })
        .await;
        assert_eq!(c.version().await, v2);
        assert_eq!(c.table().await["services"]["ratings"]["clusters"]["team-a"], "ratings-a");
    }
}

#[tokio::test]
async fn writes_are_durable_and_versions_monotonic_across_restart() {
    let mut c = Companion::start(TABLE, Some(TOKEN)).await;
    let (status, body) = c.register("ratings", "feature-1", "ratings-f1").await;
    assert_eq!(status, 200);
    let written = body["version"].as_u64().unwrap();
    // what is on disk is complete JSON with the registration (atomic rename)
    let on_disk: Value = serde_json::from_slice(&std::fs::read(c.table_path()).unwrap()).unwrap();
    assert_eq!(on_disk["services"]["ratings"]["clusters"]["feature-1"], "ratings-f1");
    assert_eq!(on_disk["version"].as_u64(), Some(written));
    let leftovers: Vec<_> = std::fs::read_dir(&c.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "no temp files left");
    // kill -9 and restart on the same file
    c.kill();
    let dir = c.dir.clone();
    std::mem::forget(c); // keep the directory; the new process owns it
    let c = Companion::start_in(dir, Some(TOKEN)).await;
    assert_eq!(c.table().await["services"]["ratings"]["clusters"]["feature-1"], "ratings-f1");
    assert_eq!(c.version().await, written, "the unchanged table keeps its version after a restart");
}

/// SIGTERM, then a new process on the same directory.
async fn restart_on_sigterm(c: Companion) -> Companion {
    restart_on_sigterm_after(c, || ()).await
}

/// SIGTERM, `while_stopped`, then a new process on the same directory.
async fn restart_on_sigterm_after(mut c: Companion, while_stopped: impl FnOnce()) -> Companion {
    assert_eq!(c.terminate().await, Some(0), "clean exit on SIGTERM");
    while_stopped();
    let dir = c.dir.clone();
    std::mem::forget(c); // keep the directory; the new process owns it
    Companion::start_in(dir, Some(TOKEN)).await
}

/// 5,000 pollers hold `after=V&epoch=E`: a restart on the table it last
/// served must keep (E, V), or every one of them fetches the whole table.
#[tokio::test]
async fn a_restart_on_an_unchanged_table_keeps_its_epoch_and_version() {
    let mut c = Companion::start(TABLE, Some(TOKEN)).await;
    let (status, _) = c.register("ratings", "feature-1", "ratings-f1").await;
    assert_eq!(status, 200);
    let (epoch, version, _) = c.served().await;
    let epoch = epoch.unwrap();
    let poll = format!("/v1/table?after={version}&epoch={epoch}&wait=0");
    // twice: a restart that reused (E, V) must leave them reusable
    for _ in 0..2 {
        c = restart_on_sigterm(c).await;
        let resp = c.get(&poll).await;
        assert_eq!(resp.status(), 304, "a held poll is still current after a restart");
        assert_eq!(resp.headers()["etag"].to_str().unwrap(), format!("\"{version}\""));
        assert_eq!(resp.headers()["x-isogroup-epoch"].to_str().unwrap(), epoch);
    }
    // An edit while stopped (only the file changes): a newer version, same epoch.
    let path = c.table_path();
    let edited = std::fs::read_to_string(&path).unwrap().replace("ratings-f1", "ratings-f2");
    let c = restart_on_sigterm_after(c, || std::fs::write(&path, edited).unwrap()).await;
    let (now_epoch, now_version, table) = c.served().await;
    assert_eq!(now_epoch.as_deref(), Some(&*epoch));
    assert!(now_version > version, "{now_version} > {version}");
    assert_eq!(table["services"]["ratings"]["clusters"]["feature-1"], "ratings-f2");
    let resp = c.get(&poll).await;
    assert_eq!(resp.status(), 200, "the held poll gets the edit");
}

#[tokio::test]
async fn pollers_are_counted_and_sigterm_releases_held_polls() {
    let mut c = Companion::start(TABLE, None).await;
    let v = c.version().await;
    for id in ["envoy-1", "envoy-2", "envoy-1"] {
        let resp = reqwest::Client::new().get(c.url("/v1/table")).header("x-isogroup-poller", id).send().await.unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(c.metric("isogroup_companion_pollers").await, 2.0);
    let url = c.url(&format!("/v1/table?after={v}&wait=60"));
    let poll = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status().as_u16()) });
    wait_until("the poll to be held", Duration::from_secs(5), async || {
        c.metric("isogroup_companion_held_polls").await >= 1.0
    })
    .await;
    let started = Instant::now();
    assert_eq!(c.terminate().await, Some(0), "clean exit on SIGTERM");
    assert!(started.elapsed() < Duration::from_secs(5), "did not wait for the 60 s poll");
    assert_eq!(poll.await.unwrap().ok(), Some(304));
}

#[test]
fn check_and_explain() {
    let dir = std::env::temp_dir().join(format!("isogroup-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str], file: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_isogroup-companion")).args(args).arg(file).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let good = dir.join("good.json");
    std::fs::write(&good, TABLE).unwrap();
    let (ok, out) = run(&["check"], &good);
    assert!(ok);
    assert_eq!(out, format!("{}: valid (2 services, 4 groups)\n", good.display()));
    let bad = dir.join("bad.json");
    std::fs::write(
        &bad,
        r#"{"groups":{"x":{"fallback":["nope"]}},"services":{"a":{"hosts":["a"],"clusters":{"x":"c"}},"b":{"hosts":[],"clusters":{"base":"c"}}}}"#,
    )
    .unwrap();
    let (ok, out) = run(&["check"], &bad);
    assert!(!ok);
    let p = bad.display();
    assert_eq!(
        out,
        format!(
            "{p}: groups.x.fallback: unknown group \"nope\" (not in groups, not the base group, not serving any service)\n\
             {p}: services.a.clusters: no cluster for base group \"base\"\n\
             {p}: services.b.hosts: the list is empty; a service needs at least one host\n"
        )
    );
    let (ok, out) = run(&["explain"], &good);
    assert!(ok);
    assert!(out.contains("ratings    feature-1  ratings-base (fallback to base)\n"), "{out}");
    assert!(out.contains("reviews    feature-1  reviews-a (fallback to team-a)\n"), "{out}");
    assert!(out.contains("reviews    team-s     fail-fast (strict_group)\n"), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn thousands_of_held_polls_cost_little_and_all_wake() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let c = Companion::start(TABLE, Some(TOKEN)).await;
    let v = c.version().await;
    let before = common::rss_kb(c.child.id());
    let polls = 3000;
    let mut tasks = Vec::new();
    for i in 0..polls {
        let port = c.port;
        tasks.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            let req = format!("GET /v1/table?after={v}&wait=60 HTTP/1.1\r\nhost: c\r\nx-isogroup-poller: p{i}\r\nconnection: close\r\n\r\n");
            s.write_all(req.as_bytes()).await.unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).await.unwrap();
            String::from_utf8_lossy(&out).lines().next().unwrap_or_default().to_owned()
        }));
    }
    wait_until("every poll held", Duration::from_secs(20), async || {
        c.metric("isogroup_companion_held_polls").await >= polls as f64
    })
    .await;
    let held_rss = common::rss_kb(c.child.id());
    let started = Instant::now();
    assert_eq!(c.get("/healthz").await.status(), 200);
    let health_latency = started.elapsed();
    println!("{polls} held polls: companion RSS {before} kB -> {held_rss} kB; /healthz in {health_latency:?}");
    // One connection each (hyper's 8 KiB read and write buffers, a task, a
    // watch receiver): ~22 kB per held poll measured. The bound catches a
    // per-poll copy of the table or a leak, not a few kB of drift; the
    // health latency is reported, not asserted (a loaded machine varies).
    let per_poll = (held_rss.saturating_sub(before)) / polls;
    assert!(per_poll < 64, "{polls} held polls cost {per_poll} kB each");
    assert_eq!(c.metric("isogroup_companion_pollers").await, polls as f64);
    // one change answers every one of them at once
    let started = Instant::now();
    let (status, _) = c.register("ratings", "feature-1", "ratings-f1").await;
    assert_eq!(status, 200);
    for t in tasks {
        assert_eq!(t.await.unwrap(), "HTTP/1.1 200 OK");
    }
    println!("all {polls} woke in {:?}", started.elapsed());
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn concurrent_admin_writes_are_not_lost() {
    // Finding: admin writes are read-modify-write of one table; unserialised,
    // two at once would lose one. The writer lock makes each one land.
    let c = Companion::start(TABLE, Some(TOKEN)).await;
    let mut writes = Vec::new();
    for i in 0..20 {
        let url = c.url(&format!("/v1/services/ratings/groups/g-{i}"));
        writes.push(tokio::spawn(async move {
            let resp = reqwest::Client::new()
                .put(url)
                .bearer_auth(TOKEN)
                .json(&json!({ "cluster": format!("c{i}") }))
                .send()
                .await
                .unwrap();
            resp.json::<Value>().await.unwrap()["version"].as_u64().unwrap()
        }));
    }
    let mut versions = Vec::new();
    for w in writes {
        versions.push(w.await.unwrap());
    }
    versions.sort();
    versions.dedup();
    assert_eq!(versions.len(), 20, "every write got its own version");
    let clusters = c.table().await["services"]["ratings"]["clusters"].clone();
    for i in 0..20 {
        assert_eq!(clusters[format!("g-{i}")], format!("c{i}"), "write {i} is in the table");
    }
    let on_disk: Value = serde_json::from_slice(&std::fs::read(c.table_path()).unwrap()).unwrap();
    assert_eq!(on_disk["services"]["ratings"]["clusters"], clusters, "and on disk");
}

#[tokio::test]
async fn a_version_too_large_to_bump_is_refused_naming_version() {
    // At start: the process refuses the file, naming the field, and exits.
    let dir = std::env::temp_dir().join(format!("isogroup-maxver-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    let huge = TABLE.replace(r#""version": 5"#, &format!(r#""version": {}"#, u64::MAX));
    std::fs::write(dir.join("table.json"), &huge).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_isogroup-companion"))
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--table"])
        .arg(dir.join("table.json"))
        .env_remove("ISOGROUP_TOKEN")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("version: {} is too large", u64::MAX)), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
    // While running: the edit is refused and counted; the table in force stays.
    let c = Companion::start(TABLE, Some(TOKEN)).await;
    let v = c.version().await;
    std::fs::write(c.table_path(), &huge).unwrap();
    wait_until("the reject to be counted", Duration::from_secs(10), async || {
        c.metric("isogroup_companion_file_rejects_total").await >= 1.0
    })
    .await;
    assert_eq!(c.version().await, v);
    // and the companion still takes writes
    let (status, body) = c.register("ratings", "feature-1", "ratings-f1").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["version"].as_u64().unwrap() > v);
}

#[tokio::test]
async fn not_modified_carries_the_etag() {
    let c = Companion::start(TABLE, None).await;
    let v = c.version().await;
    let etag = format!("\"{v}\"");
    // at once (no wait), after a hold, and through If-None-Match
    for path in [format!("/v1/table?after={v}"), format!("/v1/table?after={v}&wait=1")] {
        let resp = c.get(&path).await;
        assert_eq!(resp.status(), 304, "{path}");
        assert_eq!(resp.headers().get("etag").map(|e| e.to_str().unwrap()), Some(&*etag), "{path}");
    }
    let resp = reqwest::Client::new().get(c.url("/v1/table")).header("if-none-match", &etag).send().await.unwrap();
    assert_eq!(resp.status(), 304);
    assert_eq!(resp.headers().get("etag").map(|e| e.to_str().unwrap()), Some(&*etag));
}

#[tokio::test]
async fn held_polls_gauge_drops_when_the_client_goes_away() {
    use tokio::io::AsyncWriteExt;
    let c = Companion::start(TABLE, None).await;
    let v = c.version().await;
    let mut streams = Vec::new();
    for _ in 0..3 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", c.port)).await.unwrap();
        let req = format!("GET /v1/table?after={v}&wait=120 HTTP/1.1\r\nhost: c\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        streams.push(s);
    }
    wait_until("three held polls", Duration::from_secs(10), async || {
        c.metric("isogroup_companion_held_polls").await == 3.0
    })
    .await;
    drop(streams.pop());
    wait_until("the gauge to drop to 2", Duration::from_secs(20), async || {
        c.metric("isogroup_companion_held_polls").await == 2.0
    })
    .await;
    drop(streams);
    wait_until("the gauge to drop to 0", Duration::from_secs(20), async || {
        c.metric("isogroup_companion_held_polls").await == 0.0
    })
    .await;
}

#[tokio::test]
async fn epoch_header_and_polls_in_epoch_order() {
    let c = Companion::start(TABLE, Some(TOKEN)).await;
    let resp = c.get("/v1/table").await;
    let epoch = resp.headers()["x-isogroup-epoch"].to_str().unwrap().to_owned();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["epoch"], epoch.as_str(), "the body carries the epoch it is served under");
    let v = body["version"].as_u64().unwrap();
    // the epoch is written into the file
    let on_disk: Value = serde_json::from_slice(&std::fs::read(c.table_path()).unwrap()).unwrap();
    assert_eq!(on_disk["epoch"], epoch.as_str());
    let number: u64 = epoch.split_once('-').unwrap().0.parse().unwrap();
    // (after, epoch, answered at once with the table?)
    let newer_epoch = format!("{}-0", number + 1);
    let older_epoch = format!("{}-0", number - 1);
    let cases: Vec<(u64, &str, bool)> = vec![
        (v, &epoch, false),        // what it has: held
        (v + 1000, &epoch, false), // ahead of us (we lag): held, never sent back
        (0, &newer_epoch, false),  // a newer epoch: held whatever the version
        (v - 1, &epoch, true),     // behind: at once
        (v + 1000, &older_epoch, true),
        (v, "garbage", true), // a malformed epoch is lowest
    ];
    for (after, e, at_once) in cases {
        let resp = c.get(&format!("/v1/table?after={after}&epoch={e}&wait=1")).await;
        let what = format!("after={after} epoch={e}");
        assert_eq!(resp.status(), if at_once { 200 } else { 304 }, "{what}");
        assert_eq!(resp.headers()["etag"].to_str().unwrap(), format!("\"{v}\""), "{what}");
        assert_eq!(resp.headers()["x-isogroup-epoch"].to_str().unwrap(), epoch, "{what}");
    }
    // a held poll with the current (epoch, version) wakes with the next write
    let url = c.url(&format!("/v1/table?after={v}&epoch={epoch}&wait=30"));
    let poll = tokio::spawn(async move {
        let resp = reqwest::get(url).await.unwrap();
        (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
    });
    wait_until("the poll to be held", Duration::from_secs(10), async || {
        c.metric("isogroup_companion_held_polls").await >= 1.0
    })
    .await;
    let (status, body) = c.register("ratings", "feature-1", "ratings-f1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["epoch"], epoch.as_str());
    let (status, table) = poll.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(table["version"], body["version"]);
}

#[tokio::test]
async fn readyz_and_the_ready_gauge() {
    let c = Companion::start(TABLE, None).await;
    let resp = c.get("/readyz").await;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["version"].as_u64(), Some(c.version().await));
    assert_eq!(c.metric("isogroup_companion_ready").await, 1.0);
}

#[tokio::test]
async fn put_table_replaces_the_table_within_its_own_body_limit() {
    let dir = std::env::temp_dir().join(format!("isogroup-put-table-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("table.json"), TABLE).unwrap();
    let c = Companion::start_args(dir, Some(TOKEN), &["--max-table-bytes", "200000"]).await;
    let v = c.version().await;
    let epoch = c.table().await["epoch"].clone();
    // a table bigger than the 16 KiB of other admin bodies, its version and epoch ignored
    let mut services = serde_json::Map::new();
    for i in 0..400 {
        services
            .insert(format!("svc-{i}"), json!({"hosts": [format!("svc-{i}")], "clusters": {"base": format!("c-{i}")}}));
    }
    let big = json!({"version": 1, "epoch": "1-a", "groups": {"team-a": {}}, "services": services});
    assert!(big.to_string().len() > 16 * 1024);
    let put = |body: Value, token: Option<&'static str>| {
        let c = &c;
        async move { c.admin(reqwest::Method::PUT, "/v1/table", Some(body), token).await }
    };
    let (status, _) = put(big.clone(), None).await;
    assert_eq!(status, 401);
    // invalid: 400 naming the field, nothing changed
    let mut bad = big.clone();
    bad["services"]["svc-3"]["clusters"] = json!({"team-a": "x"});
    let (status, err) = put(bad, Some(TOKEN)).await;
    assert_eq!((status, err["error"].as_str()), (400, Some("invalid_table")), "{err}");
    assert!(err["detail"].as_str().unwrap().contains("services.svc-3.clusters"), "{err}");
    let (status, err) = put(json!({"services": {}, "colour": []}), Some(TOKEN)).await;
    assert_eq!(status, 400, "an unknown field is refused: {err}");
    assert_eq!(c.version().await, v);
    // over --max-table-bytes: 413
    let mut huge = big.clone();
    huge["services"]["svc-0"]["hosts"] = json!(["h".repeat(250_000)]);
    let (status, _) = put(huge, Some(TOKEN)).await;
    assert_eq!(status, 413);
    assert_eq!(c.version().await, v);
    // valid: replaced, a higher version in the same epoch
    let (status, body) = put(big, Some(TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    let table = c.table().await;
    assert!(table["version"].as_u64().unwrap() > v);
    assert_eq!(table["version"], body["version"]);
    assert_eq!(table["epoch"], epoch);
    assert_eq!(table["services"].as_object().unwrap().len(), 400);
    assert!(table["services"].get("reviews").is_none());
}

/// Sends a write's head and the start of a body it says is `length` long,
/// then reads whatever answer comes within 10 s (the body never follows:
/// only a server that answers before reading it can answer at all).
async fn answer_before_body(port: u16, method: &str, path: &str, auth: Option<&str>, length: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let auth = auth.as_str();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: c\r\nContent-Type: application/json\r\n{auth}Content-Length: {length}\r\n\r\n{{"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut answer))
        .await
        .unwrap_or_else(|_| panic!("{method} {path} ({auth:?}): no answer before the body was sent"))
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn writes_without_the_token_are_refused_before_the_body_is_read() {
    let c = Companion::start(TABLE, Some(TOKEN)).await;
    // 60 MB announced (under the 64 MiB table limit): nothing is buffered
    // before the token is checked
    for (method, path, length) in [
        ("PUT", "/v1/table", 60_000_000),
        ("PUT", "/v1/services/ratings/groups/f", 10_000),
        ("PUT", "/v1/sources/10.0.0.1", 10_000),
        ("PUT", "/v1/rules", 10_000),
    ] {
        for auth in [None, Some("wrong-token")] {
            let answer = answer_before_body(c.port, method, path, auth, length).await;
            assert!(answer.starts_with("HTTP/1.1 401"), "{method} {path} {auth:?}: {answer}");
            assert!(answer.contains("\"unauthorized\""), "{answer}");
        }
    }
    // with the token the body is read as before: `{` is not a table
    let answer = answer_before_body(c.port, "PUT", "/v1/table", Some(TOKEN), 1).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    let unauthorized = c.metric_sum("isogroup_companion_admin_requests_total").await;
    assert!(unauthorized >= 9.0, "each refusal is counted: {unauthorized}");
}

/// (status, content type, body) of a GET.
async fn fetch(c: &Companion, path: &str) -> (u16, String, Vec<u8>) {
    let resp = c.get(path).await;
    let status = resp.status().as_u16();
    let content_type = resp.headers().get("content-type").map_or("", |v| v.to_str().unwrap()).to_owned();
    (status, content_type, resp.bytes().await.unwrap().to_vec())
}

const DELTA_TYPE: &str = "application/vnd.isogroup.delta.v1+json";

#[tokio::test]
async fn a_delta_poll_gets_a_delta_onto_what_it_holds_else_the_whole_table() {
    use isogroup_core::delta::{apply, RawDelta};
    use isogroup_core::{Limits, RawTable};
    let dir = test_dir("delta");
    std::fs::write(dir.join("table.json"), serde_json::to_vec(&common::table_json(40)).unwrap()).unwrap();
    let c = Companion::start_in(dir, Some(TOKEN)).await;
    let (epoch, v0, _) = c.served().await;
    let epoch = epoch.unwrap();
    let whole_v0 = fetch(&c, "/v1/table").await.2;
    let (status, body) = c.register("svc-3", "team-a", "c-3-a").await;
    assert_eq!(status, 200, "{body}");
    let v1 = body["version"].as_u64().unwrap();
    let (status, content_type, delta) = fetch(&c, &format!("/v1/table?after={v0}&epoch={epoch}&delta=1")).await;
    assert_eq!((status, content_type.as_str()), (200, DELTA_TYPE));
    let value: Value = serde_json::from_slice(&delta).unwrap();
    let keys: Vec<&String> = value.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["base", "epoch", "remove", "replace", "set", "version"], "exactly SPEC's keys");
    assert_eq!(value["base"], json!({"version": v0, "epoch": epoch}));
    assert_eq!(value["set"].as_object().unwrap().keys().collect::<Vec<_>>(), ["svc-3"]);
    assert_eq!((value["remove"].clone(), value["replace"].clone()), (json!([]), json!({})));
    // Applied with core's code onto what the poller held: the whole table.
    let limits = Limits::default();
    let held = RawTable::from_companion_json(&whole_v0, &limits).unwrap().0;
    let parsed = RawDelta::from_json(&delta, &limits).unwrap();
    let (applied, _) = apply(held, parsed.delta, "base", &limits).unwrap();
    let whole_v1 = fetch(&c, "/v1/table").await.2;
    assert_eq!(applied, RawTable::from_companion_json(&whole_v1, &limits).unwrap().0);
    assert_eq!(c.metric("isogroup_companion_delta_answers_total").await, 1.0);
    // Without delta=1, or from a version it never published: the whole table.
    for path in [
        format!("/v1/table?after={v0}&epoch={epoch}"),
        format!("/v1/table?after={}&epoch={epoch}&delta=1", v0 - 1),
        format!("/v1/table?after={v0}&epoch=1-0&delta=1"),
        format!("/v1/table?after={v0}&delta=1"),
    ] {
        let (status, content_type, body) = fetch(&c, &path).await;
        assert_eq!(
            (status, content_type.as_str(), body.as_slice()),
            (200, "application/json", whole_v1.as_slice()),
            "{path}"
        );
    }
    // Eight more versions: v1 is still one of the last eight, v0 no longer is.
    for i in 0..8 {
        assert_eq!(c.register(&format!("svc-{}", 10 + i), "team-a", "x").await.0, 200);
    }
    assert_eq!(fetch(&c, &format!("/v1/table?after={v1}&epoch={epoch}&delta=1")).await.1, DELTA_TYPE);
    assert_eq!(fetch(&c, &format!("/v1/table?after={v0}&epoch={epoch}&delta=1")).await.1, "application/json");
    // A change of most of the table: a delta would not be smaller than half.
    let (_, v_before, _) = c.served().await;
    let mut big = common::table_json(40);
    for (_, service) in big["services"].as_object_mut().unwrap() {
        service["clusters"]["team-a"] = json!("elsewhere");
    }
    assert_eq!(c.put_table(&big).await.0, 200);
    let (status, content_type, _) = fetch(&c, &format!("/v1/table?after={v_before}&epoch={epoch}&delta=1")).await;
    assert_eq!((status, content_type.as_str()), (200, "application/json"));
}

#[tokio::test]
async fn a_held_delta_poll_wakes_with_a_delta() {
    let c = Companion::start(TABLE, Some(TOKEN)).await;
    let (epoch, v, _) = c.served().await;
    let epoch = epoch.unwrap();
    // Big enough that a one-service change is under half the table.
    let mut table: Value = serde_json::from_str(TABLE).unwrap();
    for i in 0..20 {
        table["services"][format!("s{i}")] = json!({"hosts": [format!("s{i}")], "clusters": {"base": "b"}});
    }
    let (status, body) = c.put_table(&table).await;
    assert_eq!(status, 200, "{body}");
    let v = body["version"].as_u64().unwrap().max(v);
    let url = c.url(&format!("/v1/table?after={v}&epoch={epoch}&wait=30&delta=1"));
    let poll = tokio::spawn(async move {
        let resp = reqwest::get(url).await.unwrap();
        let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
        (resp.status().as_u16(), content_type, resp.json::<Value>().await.unwrap())
    });
    wait_until("the poll to be held", Duration::from_secs(10), async || {
        c.metric("isogroup_companion_held_polls").await >= 1.0
    })
    .await;
    let (status, body) = c.register("ratings", "feature-1", "ratings-f1").await;
    assert_eq!(status, 200, "{body}");
    let (status, content_type, delta) = poll.await.unwrap();
    assert_eq!((status, content_type.as_str()), (200, DELTA_TYPE));
    assert_eq!(delta["version"], body["version"]);
    assert_eq!(delta["set"]["ratings"]["clusters"]["feature-1"], "ratings-f1");
}

#[tokio::test]
async fn bad_poll_parameters_are_refused_naming_them_and_unknown_ones_ignored() {
    let c = Companion::start(TABLE, None).await;
    let long_epoch = "9".repeat(129);
    for (query, name) in [
        ("after=x", "after"),
        ("after=-1", "after"),
        ("after=1&after=2", "after"),
        ("wait=soon", "wait"),
        ("wait=99999999999999999999999", "wait"),
        ("delta=yes", "delta"),
        (&*format!("after=1&epoch={long_epoch}"), "epoch"),
    ] {
        let resp = c.get(&format!("/v1/table?{query}")).await;
        assert_eq!(resp.status(), 400, "{query}");
        assert_eq!(resp.headers()["content-type"], "application/json", "{query}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"], "invalid_parameter", "{query}");
        assert!(body["detail"].as_str().unwrap().starts_with(&format!("{name}: ")), "{query}: {body}");
    }
    for query in ["color=blue", "after=1&x=%ZZ&delta=0", "delta=1"] {
        assert_eq!(c.get(&format!("/v1/table?{query}")).await.status(), 200, "{query}");
    }
}

/// SPEC "Publish interval": a burst of writes reaches held proxy polls as its
/// last version; the writes themselves, a plain GET, /v1/resolve and the
/// console's long-poll see each at once.
#[tokio::test]
async fn held_polls_get_a_burst_coalesced_and_everything_else_sees_each_write() {
    let dir = test_dir("publish-interval");
    std::fs::write(dir.join("table.json"), TABLE).unwrap();
    let c = Companion::start_args(dir, Some(TOKEN), &["--min-publish-ms", "5000"]).await;
    let (epoch, v, _) = c.served().await;
    let epoch = epoch.unwrap();
    // The first write after a quiet spell reaches a held poll (now, or once
    // the interval since start-up has passed).
    // A proxy's poll (it names itself) is paced; the console's is not.
    let poll = |after: u64, poller: bool| {
        let url = c.url(&format!("/v1/table?after={after}&epoch={epoch}&wait=60"));
        let mut req = reqwest::Client::new().get(url);
        if poller {
            req = req.header("x-isogroup-poller", "envoy-1");
        }
        tokio::spawn(async move { req.send().await.unwrap().json::<Value>().await.unwrap() })
    };
    let hold = |after: u64| poll(after, true);
    let first = hold(v);
    wait_until("the poll to be held", Duration::from_secs(10), async || {
        c.metric("isogroup_companion_held_polls").await >= 1.0
    })
    .await;
    let (_, w1) = c.register("ratings", "team-a", "r1").await;
    assert_eq!(first.await.unwrap()["version"], w1["version"]);
    // Right after that release: a burst of two writes.
    let v1 = w1["version"].as_u64().unwrap();
    let second = hold(v1);
    let console = poll(v1, false);
    wait_until("the polls to be held", Duration::from_secs(10), async || {
        c.metric("isogroup_companion_held_polls").await >= 2.0
    })
    .await;
    let (_, w2) = c.register("ratings", "team-a", "r2").await;
    assert_eq!(console.await.unwrap()["version"], w2["version"], "the console's poll sees the write at once");
    // The write's own answer, a plain GET, a poll that is not held and
    // /v1/resolve see it at once.
    assert_eq!(c.served().await.1, w2["version"].as_u64().unwrap());
    let now: Value = c.get(&format!("/v1/table?after={v1}&epoch={epoch}")).await.json().await.unwrap();
    assert_eq!(now["version"], w2["version"]);
    let resolved: Value = c.get("/v1/resolve?service=ratings&group=team-a").await.json().await.unwrap();
    assert_eq!(resolved["cluster"], "r2");
    let (_, w3) = c.register("ratings", "team-a", "r3").await;
    // The held poll gets the burst's last version, never the one between.
    let got = second.await.unwrap();
    assert_eq!(got["version"], w3["version"], "w2 was {}", w2["version"]);
    assert_eq!(got["services"]["ratings"]["clusters"]["team-a"], "r3");
}

/// Non-filter clients may take the whole table gzipped (SPEC); the filter,
/// which does not ask, gets it as ever.
#[tokio::test]
async fn the_whole_table_is_gzipped_for_clients_that_ask() {
    use std::io::Read;
    let c = Companion::start(TABLE, None).await;
    let plain = fetch(&c, "/v1/table").await.2;
    for (accept, gzipped) in [
        ("gzip", true),
        ("br, gzip;q=0.5", true),
        ("*", true),
        ("gzip;q=0", false),
        ("gzip; q=0.000", false),
        ("identity", false),
        ("", false),
    ] {
        let mut req = reqwest::Client::new().get(c.url("/v1/table"));
        if !accept.is_empty() {
            req = req.header("accept-encoding", accept);
        }
        let resp = req.send().await.unwrap();
        let encoding = resp.headers().get("content-encoding").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(resp.headers()["vary"], "accept-encoding", "{accept}");
        let body = resp.bytes().await.unwrap().to_vec();
        if gzipped {
            assert_eq!(encoding.as_deref(), Some("gzip"), "{accept}");
            let mut unzipped = Vec::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut unzipped).unwrap();
            assert_eq!(unzipped, plain, "{accept}");
        } else {
            assert_eq!((encoding, body), (None, plain.clone()), "{accept}");
        }
    }
}

#[test]
fn a_bad_installation_or_resync_exits_2_naming_the_flag() {
    for (flag, value, names) in [
        ("--installation", "Not A Label", "--installation"),
        ("--installation", "-leading-dash", "--installation"),
        ("--installation", &"x".repeat(64), "--installation"),
        ("--resync-s", "0", "--resync-s"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_isogroup-companion"))
            .args(["serve", "--kubernetes", &format!("{flag}={value}")])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(names), "{flag} {value}: {stderr}");
    }
}
