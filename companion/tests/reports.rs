//! Propagation reports against the companion as a real process (file
//! store): `POST /v1/reports` bounded as SPEC says (413, 400 naming the
//! field, 429 with Retry-After, the optional token), hostile senders
//! bounded, `GET /v1/propagation` ranked, and no report ever changes the
//! table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;

use std::time::Duration;

use common::{test_dir, wait_until, Companion};
use serde_json::{json, Value};

const TABLE: &str = r#"{
  "groups": { "feature-1": {} },
  "services": {
    "b": { "hosts": ["b"], "clusters": { "base": "b-base", "feature-1": "b-f1" } },
    "c": { "hosts": ["c"], "clusters": { "base": "c-base" } }
  }
}"#;

async fn start(args: &[&str]) -> Companion {
    let dir = test_dir("reports");
    std::fs::write(dir.join("table.json"), TABLE).unwrap();
    let mut all = vec!["--table".to_owned(), dir.join("table.json").display().to_string()];
    all.extend(args.iter().map(|a| a.to_string()));
    Companion::spawn(dir, None, &all, None).await
}

fn report(workload: &str, outbound: Value) -> Value {
    json!({"workload": workload, "namespace": "demo", "sample": 8, "window_s": 10, "outbound": outbound})
}

fn counts(kept: u64, changed: u64, healed: u64, dropped: u64, untraced: u64) -> Value {
    json!({"kept": kept, "changed": changed, "healed": healed, "dropped": dropped, "untraced": untraced})
}

/// Posts `body` as instance `instance` (no header when `None`).
async fn post_raw(c: &Companion, instance: Option<&str>, body: Vec<u8>, token: Option<&str>) -> reqwest::Response {
    let mut req = reqwest::Client::new().post(c.url("/v1/reports")).header("content-type", "application/json");
    if let Some(i) = instance {
        req = req.header("x-isogroup-poller", i);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    req.body(body).send().await.unwrap()
}

async fn post(c: &Companion, instance: &str, body: &Value) -> (u16, Value) {
    let r = post_raw(c, Some(instance), body.to_string().into_bytes(), None).await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Posts `chunks` chunks of `size` spaces with `Transfer-Encoding: chunked`
/// (no length declared) over a raw connection; answers the status.
async fn chunked_post(c: &Companion, instance: &str, chunks: usize, size: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", c.port)).await.unwrap();
    let head = format!(
        "POST /v1/reports HTTP/1.1\r\nhost: x\r\nx-isogroup-poller: {instance}\r\ntransfer-encoding: chunked\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let chunk = format!("{size:x}\r\n{}\r\n", " ".repeat(size));
    for _ in 0..chunks {
        // The companion may answer and close before all of it is sent.
        if conn.write_all(chunk.as_bytes()).await.is_err() {
            break;
        }
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer);
    text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("no status in {text:?}"))
}

async fn propagation(c: &Companion) -> Value {
    let r = c.get("/v1/propagation").await;
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// What routing depends on: the table's version, etag and body.
async fn routing(c: &Companion) -> (String, Value) {
    let r = c.get("/v1/table").await;
    (r.headers()["etag"].to_str().unwrap().to_owned(), r.json().await.unwrap())
}

#[tokio::test]
async fn reports_are_ranked_and_never_change_routing() {
    let c = start(&[]).await;
    let before = routing(&c).await;
    assert_eq!(
        propagation(&c).await,
        json!({"advisory": true, "window_s": 900, "edges": [], "workloads": [], "overflow": 0})
    );
    // b forwards nothing to c; a forwards everything; x's calls are healed.
    let (status, _) = post(&c, "envoy-1", &report("b", json!({"c": counts(1, 0, 0, 3, 0)}))).await;
    assert_eq!(status, 204);
    assert_eq!(post(&c, "envoy-2", &report("a", json!({"b": counts(10, 0, 0, 0, 0)}))).await.0, 204);
    assert_eq!(
        post(&c, "envoy-3", &report("x", json!({"c": counts(0, 0, 2, 0, 1), "b": counts(2, 0, 0, 0, 0)}))).await.0,
        204
    );
    // a second instance of b adds to the same edge
    assert_eq!(post(&c, "envoy-4", &report("b", json!({"c": counts(1, 1, 0, 1, 0)}))).await.0, 204);
    let got = propagation(&c).await;
    assert_eq!(got["advisory"], true);
    assert_eq!(got["window_s"], 900);
    let edges: Vec<String> = got["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{}->{}", e["workload"].as_str().unwrap(), e["destination"].as_str().unwrap()))
        .collect();
    assert_eq!(edges, ["x->c", "b->c", "a->b", "x->b"]);
    let bc = &got["edges"][1];
    assert_eq!(
        [&bc["kept"], &bc["changed"], &bc["healed"], &bc["dropped"], &bc["untraced"], &bc["sample"]],
        [&json!(2), &json!(1), &json!(0), &json!(4), &json!(0), &json!(8)]
    );
    assert_eq!(bc["namespace"], "demo");
    assert!((bc["drop_share"].as_f64().unwrap() - 4.0 / 7.0).abs() < 1e-9);
    assert!(bc["advice"].as_str().unwrap().contains("x-isogroup / baggage"), "{bc}");
    let workloads: Vec<(&str, f64)> = got["workloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| (w["workload"].as_str().unwrap(), w["drop_share"].as_f64().unwrap()))
        .collect();
    assert_eq!(workloads.iter().map(|w| w.0).collect::<Vec<_>>(), ["b", "x", "a"], "{got}");
    assert_eq!(got["workloads"][1]["healed"], 2);
    assert_eq!(c.metric("isogroup_companion_reports_accepted_total").await, 4.0);
    // ?limit= keeps the worst edges
    let limited: Value = c.get("/v1/propagation?limit=1").await.json().await.unwrap();
    assert_eq!(limited["edges"].as_array().unwrap().len(), 1);
    assert_eq!(limited["edges"][0]["workload"], "x");
    assert_eq!(c.get("/v1/propagation?limit=x").await.status(), 400);
    assert_eq!(routing(&c).await, before, "reports changed the table");
}

/// (what, instance header, body, status, a word the detail names).
type BadCase = (&'static str, Option<String>, Vec<u8>, u16, &'static str);

#[tokio::test]
async fn bad_reports_are_refused_naming_what_and_change_nothing() {
    let c = start(&[]).await;
    let before = routing(&c).await;
    let good = report("b", json!({"c": counts(1, 0, 0, 1, 0)}));
    let cases: Vec<BadCase> = vec![
        ("no instance", None, good.to_string().into_bytes(), 400, "x-isogroup-poller"),
        ("blank instance", Some(" ".into()), good.to_string().into_bytes(), 400, "x-isogroup-poller"),
        ("long instance", Some("i".repeat(129)), good.to_string().into_bytes(), 400, "x-isogroup-poller"),
        ("not json", Some("i-1".into()), b"{\"workload\": ".to_vec(), 400, "body"),
        (
            "bad count",
            Some("i-2".into()),
            report("b", json!({"c": {"kept": -1}})).to_string().into_bytes(),
            400,
            "outbound.c.kept",
        ),
        (
            "missing count",
            Some("i-3".into()),
            report("b", json!({"c": {"kept": 1, "changed": 0, "healed": 0, "dropped": 0}})).to_string().into_bytes(),
            400,
            "outbound.c.untraced",
        ),
        ("bad workload", Some("i-4".into()), report("B!", json!({})).to_string().into_bytes(), 400, "workload"),
        ("oversize", Some("i-5".into()), vec![b' '; 16 * 1024 + 1], 413, "16384"),
        (
            "deep",
            Some("i-6".into()),
            format!("{}{}", "[".repeat(8_000), "]".repeat(8_000)).into_bytes(),
            400,
            "recursion limit",
        ),
    ];
    for (what, instance, body, want, names) in cases {
        let r = post_raw(&c, instance.as_deref(), body, None).await;
        assert_eq!(r.status().as_u16(), want, "{what}");
        let body: Value = r.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains(names), "{what}: {body}");
    }
    // Exactly 16 KiB is taken (padded with spaces after the object).
    let mut exact = good.to_string().into_bytes();
    exact.resize(16 * 1024, b' ');
    assert_eq!(post_raw(&c, Some("i-exact"), exact, None).await.status(), 204);
    // A body larger than the limit without a Content-Length (chunked) is
    // cut off at the limit, not read whole.
    assert_eq!(chunked_post(&c, "i-chunked", 1024, 1024).await, 413);
    let got = propagation(&c).await;
    assert_eq!(got["edges"].as_array().unwrap().len(), 1, "only the exact-size report counts: {got}");
    assert_eq!(got["edges"][0]["dropped"], 1);
    assert_eq!(routing(&c).await, before, "refused reports changed the table");
    assert!(c.metric_sum("isogroup_companion_reports_refused_total").await >= 10.0);
    assert_eq!(c.metric("isogroup_companion_reports_refused_total{reason=\"too_large\"}").await, 2.0);
}

#[tokio::test]
async fn one_report_per_instance_per_five_seconds() {
    let c = start(&[]).await;
    let body = report("b", json!({"c": counts(1, 0, 0, 0, 0)}));
    assert_eq!(post(&c, "envoy-a", &body).await.0, 204);
    let r = post_raw(&c, Some("envoy-a"), body.to_string().into_bytes(), None).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "Retry-After {retry}");
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "too_frequent");
    assert_eq!(post(&c, "envoy-b", &body).await.0, 204, "another instance is not limited");
    assert_eq!(propagation(&c).await["edges"][0]["kept"], 2, "the refused report is not counted");
    // Within Retry-After (and a margin), the instance reports again.
    wait_until("envoy-a's next turn", Duration::from_secs(retry + 5), async || {
        post(&c, "envoy-a", &body).await.0 == 204
    })
    .await;
    assert_eq!(propagation(&c).await["edges"][0]["kept"], 3);
}

#[tokio::test]
async fn with_a_report_token_a_report_without_it_is_refused_before_its_body_is_read() {
    let dir = test_dir("reports-token");
    std::fs::write(dir.join("table.json"), TABLE).unwrap();
    std::fs::write(dir.join("report-token"), "r3port\n").unwrap();
    let args = [
        "--table".to_owned(),
        dir.join("table.json").display().to_string(),
        "--report-token-file".to_owned(),
        dir.join("report-token").display().to_string(),
    ];
    let c = Companion::spawn(dir, None, &args, None).await;
    let body = report("b", json!({"c": counts(1, 0, 0, 0, 0)}));
    let r = post_raw(&c, Some("e-1"), body.to_string().into_bytes(), None).await;
    assert_eq!(r.status(), 401);
    // Even an oversized body: the token is checked first.
    let r = post_raw(&c, Some("e-1"), vec![b' '; 64 * 1024], Some("wrong")).await;
    assert_eq!(r.status(), 401);
    let r = post_raw(&c, Some("e-1"), body.to_string().into_bytes(), Some("r3port")).await;
    assert_eq!(r.status(), 204);
    assert_eq!(propagation(&c).await["edges"][0]["kept"], 1);
}

#[tokio::test]
async fn hostile_senders_stay_bounded() {
    let c = start(&[]).await;
    let before = routing(&c).await;
    // 10,500 distinct instance ids: at most 10,000 remembered.
    let mut tasks = Vec::new();
    for t in 0..8 {
        let url = c.url("/v1/reports");
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut accepted = 0;
            for i in (t..10_500).step_by(8) {
                let body = report(&format!("w-{}", i % 50), json!({"c": counts(1, 0, 0, 0, 0)}));
                let r = client
                    .post(&url)
                    .header("x-isogroup-poller", format!("instance-{i}"))
                    .body(body.to_string())
                    .send()
                    .await
                    .unwrap();
                accepted += u64::from(r.status() == 204);
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    assert_eq!(accepted, 10_500);
    assert_eq!(c.metric("isogroup_companion_report_instances").await, 10_000.0);
    // The oldest id was forgotten: it has a turn again. The newest has not.
    let body = report("w-0", json!({"c": counts(1, 0, 0, 0, 0)}));
    assert_eq!(post(&c, "instance-0", &body).await.0, 204);
    assert_eq!(post(&c, "instance-10499", &body).await.0, 429);

    // 2,050 workloads: the 50 least recently reported are evicted, counted.
    for i in 0..2_050 {
        let body = report(&format!("many-{i}"), json!({"c": counts(0, 0, 0, 1, 0), "b": counts(1, 0, 0, 0, 0)}));
        assert_eq!(post(&c, &format!("many-{i}"), &body).await.0, 204);
    }
    // A report with more destinations than are kept (230 fit in 16 KiB with
    // short names): 200 kept, 30 counted.
    let outbound: serde_json::Map<String, Value> = (0..230).map(|i| (format!("d{i}"), counts(1, 0, 0, 0, 0))).collect();
    let wide = report("wide", Value::Object(outbound));
    assert!(wide.to_string().len() <= 16 * 1024);
    assert_eq!(post(&c, "wide", &wide).await.0, 204);
    let got = propagation(&c).await;
    let workloads = got["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 2_000);
    assert!(workloads.iter().all(|w| w["workload"] != "w-0" && w["workload"] != "many-0"), "the oldest were evicted");
    // 50 w-* workloads (1 edge each) and 51 many-* (2 edges each) evicted; 30 left out.
    assert_eq!(got["overflow"], 50 + 51 * 2 + 30);
    assert_eq!(c.metric("isogroup_companion_reports_overflow_total").await, (50 + 51 * 2 + 30) as f64);
    let wide_edges = got["edges"].as_array().unwrap().iter().filter(|e| e["workload"] == "wide").count();
    assert_eq!(wide_edges, 200);
    assert_eq!(routing(&c).await, before, "reports changed the table");
}

/// `isogroup-companion doctor <args…>`: (exit code, stdout, stderr).
fn doctor(args: &[&str]) -> (i32, String, String) {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_isogroup-companion")).arg("doctor").args(args).output().unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap(), text(&out.stdout), text(&out.stderr))
}

#[tokio::test]
async fn doctor_exits_0_1_or_2() {
    let c = start(&[]).await;
    let url = c.url("");
    // Nothing reported: nothing drops.
    let (code, out, _) = doctor(&["--url", &url]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no reports"), "{out}");
    assert_eq!(post(&c, "e-a", &report("a", json!({"b": counts(10, 0, 0, 0, 0)}))).await.0, 204);
    let (code, out, _) = doctor(&["--url", &url]);
    assert_eq!(code, 0, "{out}");
    // b drops a quarter of its calls to c.
    assert_eq!(post(&c, "e-b", &report("b", json!({"c": counts(3, 0, 0, 1, 0)}))).await.0, 204);
    let (code, out, err) = doctor(&["--url", &url]);
    assert_eq!(code, 1, "{out}{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("WORKLOAD") && lines[0].contains("DROP SHARE") && lines[0].contains("ADVICE"),
        "{out}"
    );
    let first: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(first[..9], ["b", "demo", "c", "3", "0", "0", "1", "0", "0.2500"], "worst first: {out}");
    assert!(lines[1].contains("forward x-isogroup / baggage"), "{out}");
    assert!(out.contains("workload b (namespace demo) drop share 0.2500 > 0"), "{out}");
    assert!(!out.contains("workload a "), "a drops nothing: {out}");
    // Allowed up to a quarter: ok; just below: not.
    assert_eq!(doctor(&["--url", &url, "--max-drop-share", "0.25"]).0, 0);
    assert_eq!(doctor(&["--url", &url, "--max-drop-share", "0.24"]).0, 1);
    // Bad flags, an unreachable companion, something else answering: 2.
    let (code, _, err) = doctor(&["--url", &url, "--max-drop-share", "1.5"]);
    assert_eq!(code, 2);
    assert!(err.contains("max-drop-share") && err.contains("share from 0 to 1"), "{err}");
    assert_eq!(doctor(&["--max-drop-share", "0.1"]).0, 2, "--url is required");
    let (code, _, err) = doctor(&["--url", "ftp://x"]);
    assert_eq!(code, 2);
    assert!(err.contains("--url"), "{err}");
    let dead = format!("http://127.0.0.1:{}", common::free_port());
    let (code, _, err) = doctor(&["--url", &dead]);
    assert_eq!(code, 2);
    assert!(err.contains("unreachable"), "{err}");
    // A server that answers 200, but not with a propagation answer.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let other = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut conn, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf).await;
            let body = r#"{"edges": 5}"#;
            let answer = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes()).await;
        }
    });
    let (code, _, err) = tokio::task::spawn_blocking(move || doctor(&["--url", &other])).await.unwrap();
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not a propagation answer: edges: missing or not a list"), "{err}");
}
