//! The lane console in a real browser: headless chromium driven through
//! chromedriver (WebDriver), against the real companion. One browser and one
//! companion for the whole file (CI time): the steps run in order in one
//! test, each named in its failure. Screenshots land in `.run/console/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::path::PathBuf;

use common::{free_port, http, root, Companion, ADMIN_TOKEN};
use serde_json::{json, Value};
use webdriver::Browser;

const GATEWAY: &str = "http://127.0.0.1:9/.isogroup/join";

const TABLE: &str = r#"{
  "version": 1,
  "groups": {
    "feature-1": { "fallback": ["team-a"] },
    "team-a": {},
    "team-s": { "mode": "strict" }
  },
  "services": {
    "a": { "hosts": ["a"], "clusters": { "base": "a-base", "feature-1": "a-f1", "team-s": "a-ts" } },
    "b": { "hosts": ["b"], "clusters": { "base": "b-base", "team-a": "b-ta" } }
  }
}"#;

fn shots() -> PathBuf {
    root().join(".run/console")
}

/// The text the page shows for a decision (`cellText` in app.js).
fn cell_text(d: &Value) -> String {
    match d["decision"].as_str() {
        Some("failfast") => format!("fail-fast: {}", d["reason"].as_str().unwrap()),
        _ if d["fallback"] == true => {
            format!("{} via {}", d["cluster"].as_str().unwrap(), d["serving_group"].as_str().unwrap())
        }
        _ => d["cluster"].as_str().unwrap().to_owned(),
    }
}

/// Every matrix cell as the page shows it: (service, group, text).
async fn page_cells(b: &Browser) -> Vec<(String, String, String)> {
    let cells = b
        .run(
            "return [...document.querySelectorAll('#matrix td[data-service]')]\
               .map(td => [td.dataset.service, td.dataset.group, td.textContent]);",
            json!([]),
        )
        .await;
    cells
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c[0].as_str().unwrap().into(), c[1].as_str().unwrap().into(), c[2].as_str().unwrap().into()))
        .collect()
}

async fn version(c: &Companion) -> u64 {
    let t: Value = http().get(c.url("/v1/table")).send().await.unwrap().json().await.unwrap();
    t["version"].as_u64().unwrap()
}

/// A message line that holds an answer (not empty, not "Sending…").
fn answered(text: &str) -> bool {
    !text.is_empty() && text != "Sending…"
}

/// No console entry at level SEVERE (errors, CSP violations, failed loads).
async fn no_console_errors(b: &Browser, step: &str) {
    let errors: Vec<_> = b.console_log().await.into_iter().filter(|(level, _)| level == "SEVERE").collect();
    assert!(errors.is_empty(), "{step}: browser console errors: {errors:?}");
}

#[tokio::test]
async fn console_in_a_browser() {
    let c = Companion::start_with(free_port(), TABLE, &["--gateway-url", GATEWAY]).await;
    let b = Browser::start().await;
    headers_and_assets(&c).await;
    loads_and_matrix_equals_resolve(&c, &b).await;
    read_only_without_the_token(&c, &b).await;
    keyboard_and_phone_width(&c, &b).await;
    registration_in_the_page_goes_live(&c, &b).await;
}

/// The console's answers carry the security headers; no CORS anywhere.
async fn headers_and_assets(c: &Companion) {
    for path in ["/ui/", "/ui/app.js", "/ui/app.css", "/v1/table", "/v1/matrix"] {
        let r = http().get(c.url(path)).header("origin", "https://evil.example").send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert!(!h.keys().any(|k| k.as_str().starts_with("access-control-")), "{path}: CORS header in {h:?}");
    }
    // a cross-site preflight gets no permission either
    let r = http()
        .request(reqwest::Method::OPTIONS, c.url("/v1/sources/10.0.0.1"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "PUT")
        .send()
        .await
        .unwrap();
    assert!(!r.headers().keys().any(|k| k.as_str().starts_with("access-control-")), "preflight: {:?}", r.headers());
    // nothing is fetched from anywhere else
    let page = http().get(c.url("/ui/")).send().await.unwrap().text().await.unwrap();
    assert!(!page.contains("http://") && !page.contains("https://") && !page.contains("<script>"), "{page}");
}

async fn loads_and_matrix_equals_resolve(c: &Companion, b: &Browser) {
    b.goto(&c.url("/ui/#matrix")).await;
    b.wait_text("#live", "the live poll to start", |t| t.starts_with("live")).await;
    let cells = page_cells(b).await;
    // 2 services × 4 groups (base, feature-1, team-a, team-s)
    assert_eq!(cells.len(), 8, "{cells:?}");
    for (service, group, text) in &cells {
        let d: Value = http()
            .get(c.url(&format!("/v1/resolve?service={service}&group={group}")))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(text, &cell_text(&d), "matrix cell {service} × {group} vs /v1/resolve {d}");
    }
    let find = |s: &str, g: &str| cells.iter().find(|c| c.0 == s && c.1 == g).unwrap().2.clone();
    assert_eq!(find("b", "feature-1"), "b-ta via team-a");
    assert_eq!(find("b", "team-s"), "fail-fast: strict_group");
    b.screenshot(&shots().join("matrix.png")).await;
    b.goto(&c.url("/ui/#lanes")).await;
    let lane = b.text("article[data-lane=feature-1]").await;
    assert!(lane.contains("feature-1 → team-a → base"), "{lane}");
    let join = b.run("return document.querySelector('article[data-lane=feature-1] a.join').href;", json!([])).await;
    assert_eq!(join, json!(format!("{GATEWAY}?lane=feature-1")));
    b.screenshot(&shots().join("lanes.png")).await;
    no_console_errors(b, "page load").await;
}

/// Without a token every admin control refuses, says why, and sends nothing.
async fn read_only_without_the_token(c: &Companion, b: &Browser) {
    let before = version(c).await;
    b.goto(&c.url("/ui/#register")).await;
    let access = b.wait_text("#access", "the access line", answered).await;
    assert!(access.starts_with("Read-only"), "{access}");
    b.fill("#reg-group", "team-a").await;
    b.fill("#reg-cluster", "a-ta").await;
    b.click("#reg-submit").await;
    let msg = b.wait_text("#register-msg", "a refusal", answered).await;
    assert!(msg.contains("read-only") && msg.contains("admin token"), "{msg}");
    b.click("#reg-delete").await;
    b.goto(&c.url("/ui/#bind")).await;
    b.fill("#bind-group", "team-a").await;
    b.click("#bind-submit").await;
    let msg = b.wait_text("#bind-msg", "a refusal", answered).await;
    assert!(msg.starts_with("Refused") && msg.contains("admin token"), "{msg}");
    b.goto(&c.url("/ui/#rules")).await;
    b.click("#rules-save").await;
    let msg = b.wait_text("#rules-msg", "a refusal", answered).await;
    assert!(msg.starts_with("Refused") && msg.contains("admin token"), "{msg}");
    assert_eq!(version(c).await, before, "nothing changed");
    // a wrong token: the companion's own refusal is shown
    b.fill("#token", "not-the-token").await;
    b.click("#token-use").await;
    b.goto(&c.url("/ui/#register")).await;
    b.fill("#reg-group", "team-a").await;
    b.fill("#reg-cluster", "a-ta").await;
    b.click("#reg-submit").await;
    let msg = b.wait_text("#register-msg", "the companion's refusal", |t| t.contains("401")).await;
    assert!(msg.contains("unauthorized"), "{msg}");
    assert_eq!(version(c).await, before, "nothing changed");
    // the token is in sessionStorage only: no cookie, nothing in the URL
    let cookies = b.run("return document.cookie;", json!([])).await;
    assert_eq!(cookies, json!(""));
    assert!(!b.current_url().await.contains("token"));
    b.click("#token-forget").await;
    // the browser logs the refused requests; nothing else may be there
    let logged: Vec<_> = b.console_log().await.into_iter().filter(|(level, _)| level == "SEVERE").collect();
    assert!(
        !logged.is_empty() && logged.iter().all(|(_, m)| m.contains("status of 401")),
        "only the refused write: {logged:?}"
    );
}

/// Every view is reachable by keyboard; the lanes fit a phone's width.
async fn keyboard_and_phone_width(c: &Companion, b: &Browser) {
    b.goto(&c.url("/ui/#lanes")).await;
    b.run("document.getElementById('tab-lanes').focus();", json!([])).await;
    b.keys("\u{E004}\u{E007}").await; // Tab to "Matrix", Enter
    b.wait_script(
        "the matrix view after Tab, Enter",
        "return !document.getElementById('view-matrix').hidden && location.hash === '#matrix';",
        json!([]),
    )
    .await;
    b.set_size(390, 844).await;
    b.goto(&c.url("/ui/#lanes")).await;
    b.find("article[data-lane=team-s]").await;
    let overflow =
        b.run("return document.documentElement.scrollWidth - document.documentElement.clientWidth;", json!([])).await;
    assert!(overflow.as_i64().unwrap() <= 0, "the lanes view scrolls sideways at phone width by {overflow}");
    b.screenshot(&shots().join("phone.png")).await;
    b.set_size(1280, 900).await;
}

/// A registration made in the page reaches the table and shows in the
/// matrix without a reload.
async fn registration_in_the_page_goes_live(c: &Companion, b: &Browser) {
    b.goto(&c.url("/ui/#register")).await;
    b.fill("#token", ADMIN_TOKEN).await;
    b.click("#token-use").await;
    b.wait_text("#access", "admin mode", |t| t.starts_with("Admin token set")).await;
    let current = b.text("#register-msg").await;
    assert!(current.contains("401"), "still the wrong token's answer: {current}");
    b.run("document.getElementById('reg-service').value = 'b';", json!([])).await;
    b.fill("#reg-group", "feature-1").await;
    b.fill("#reg-cluster", "b-f1").await;
    b.click("#reg-submit").await;
    let msg = b.wait_text("#register-msg", "the registration", answered).await;
    assert!(msg.starts_with("Registered feature-1 of b"), "{msg}");
    let t: Value = http().get(c.url("/v1/table")).send().await.unwrap().json().await.unwrap();
    assert_eq!(t["services"]["b"]["clusters"]["feature-1"], "b-f1");
    // the matrix follows (long-poll), no reload
    b.run("location.hash = '#matrix';", json!([])).await;
    b.wait_text("#matrix td[data-service=b][data-group=feature-1]", "the new cell", |t| t == "b-f1").await;
    // and an admin change made elsewhere shows too
    c.set_instance("b", "feature-1", None).await;
    b.wait_text("#matrix td[data-service=b][data-group=feature-1]", "the cell after unregister", |t| {
        t == "b-ta via team-a"
    })
    .await;
    no_console_errors(b, "registration").await;
}
