//! The lane console in a real browser: headless chromium driven through
//! chromedriver (WebDriver), against the real companion and a real Envoy
//! (envoy/lanes.yaml: a runtime gateway with the join path, and the mesh).
//! One browser, one companion and one Envoy for the whole file (CI time):
//! the steps run in order in one test, each named in its failure.
//! Screenshots land in `.run/console/`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

mod common;
#[path = "common/webdriver.rs"]
mod webdriver;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use common::{chain, http, root, wait_for, Companion, Mesh, Rendered, ADMIN_TOKEN};
use serde_json::{json, Value};
use webdriver::Browser;

/// The demo's lanes (clusters as envoy/lanes.yaml names them), one with a
/// description full of markup.
const TABLE: &str = r#"{
  "version": 1,
  "groups": {
    "feature-1": { "description": "<img src=x onerror=alert(1)><b>bold</b> & co", "owner": "<i>alice</i>" },
    "feature-2": { "fallback": ["feature-1"] },
    "team-s": { "mode": "strict" }
  },
  "services": {
    "a": { "hosts": ["a"], "clusters": { "base": "a-base", "feature-1": "a-feature-1", "feature-2": "a-feature-2", "team-s": "a-team-s" } },
    "b": { "hosts": ["b"], "clusters": { "base": "b-base" } },
    "c": { "hosts": ["c"], "clusters": { "base": "c-base" } }
  }
}"#;

/// Everything one run needs: the companion, Envoy with the demo services,
/// the browser, and where the gateway listens.
struct World {
    c: Companion,
    mesh: Mesh,
    b: Browser,
    gateway: u16,
}

impl World {
    /// The gateway's join URL as the browser reaches it (host `a`).
    fn join_url(&self) -> String {
        format!("http://a:{}/.isogroup/join", self.gateway)
    }

    /// The chain a client from `local` gets through the gateway, no header.
    async fn through_gateway(&self, local: &str, headers: &[(&str, &str)]) -> String {
        let client = reqwest::Client::builder()
            .local_address(local.parse::<IpAddr>().ok())
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap();
        let mut req = client.get(format!("http://127.0.0.1:{}/", self.gateway)).header("host", "a");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        match req.send().await {
            Ok(r) => chain(&r.json::<Value>().await.unwrap_or_default()),
            Err(e) => format!("error: {e}"),
        }
    }

    /// Waits until every request (new connections, so both workers) from
    /// `local` with `headers` gets `want`.
    async fn gateway_routes(&self, what: &str, local: &str, headers: &[(&str, &str)], want: &str) {
        wait_for(what, Duration::from_secs(15), || async {
            for _ in 0..4 {
                if self.through_gateway(local, headers).await != want {
                    return None;
                }
            }
            Some(())
        })
        .await;
    }
}

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
            "return [...document.querySelectorAll('#matrix-grid td[data-service]')]\
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
    let rendered = Rendered::from_file("envoy/lanes.yaml");
    let gateway = rendered.port(10080);
    let join = format!("http://a:{gateway}/.isogroup/join");
    let c = Companion::start_with(rendered.port(18080), TABLE, &["--gateway-url", &join]).await;
    let mesh = Mesh::start_with(rendered).await;
    mesh.envoy.wait_stat("wasmcustom.isogroup_table_version", 1).await;
    // The demo's service names resolve to loopback, as DNS would at a gateway.
    let b = Browser::start_with(&["--host-resolver-rules=MAP a 127.0.0.1, MAP b 127.0.0.1, MAP c 127.0.0.1"]).await;
    let w = World { c, mesh, b, gateway };
    headers_and_assets(&w.c).await;
    loads_and_matrix_equals_resolve(&w).await;
    markup_renders_as_text(&w).await;
    read_only_without_the_token(&w.c, &w.b).await;
    keyboard_and_phone_width(&w.c, &w.b).await;
    registration_in_the_page_goes_live(&w).await;
    join_and_leave_through_the_gateway(&w).await;
    a_binding_made_in_the_page_routes_until_it_expires(&w).await;
    a_rule_made_in_the_page_routes_and_a_bad_one_changes_nothing(&w).await;
    the_propagation_view_shows_a_broken_edge(&w).await;
    no_console_errors(&w.b, "the whole run").await;
    without_a_gateway_url_or_an_admin_api(&w.b).await;
}

/// A companion started without `--gateway-url` and without a token: the
/// page says how to get join links, and that it is read-only, and why.
async fn without_a_gateway_url_or_an_admin_api(b: &Browser) {
    let dir = common::TempDir::new("console-plain");
    let empty = dir.0.join("empty-token");
    std::fs::write(&empty, "").unwrap();
    let c = Companion::start_with(common::free_port(), TABLE, &["--token-file", empty.to_str().unwrap()]).await;
    b.goto(&c.url("/ui/#lanes")).await;
    let help = b.wait_text("#join-help", "the join help", answered).await;
    assert!(help.contains("start the companion with --gateway-url"), "{help}");
    let links = b.run("return document.querySelectorAll('a.join, a.leave').length;", json!([])).await;
    assert_eq!(links, json!(0));
    let access = b.wait_text("#access", "the access line", |t| t.contains("admin API is off")).await;
    assert!(access.starts_with("Read-only"), "{access}");
    b.goto(&c.url("/ui/#register")).await;
    b.fill("#reg-group", "feature-1").await;
    b.fill("#reg-cluster", "x").await;
    b.click("#reg-submit").await;
    let msg = b.wait_text("#register-msg", "a refusal", answered).await;
    assert!(msg.starts_with("Refused") && msg.contains("admin API is off"), "{msg}");
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

async fn loads_and_matrix_equals_resolve(w: &World) {
    let (c, b) = (&w.c, &w.b);
    b.goto(&c.url("/ui/#matrix")).await;
    b.wait_text("#live", "the live poll to start", |t| t.starts_with("live")).await;
    let cells = page_cells(b).await;
    // 3 services × 4 groups (base, feature-1, feature-2, team-s)
    assert_eq!(cells.len(), 12, "{cells:?}");
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
    assert_eq!(find("a", "feature-2"), "a-feature-2");
    assert_eq!(find("b", "feature-2"), "b-base via base");
    assert_eq!(find("b", "team-s"), "fail-fast: strict_group");
    b.screenshot(&shots().join("matrix.png")).await;
    b.goto(&c.url("/ui/#lanes")).await;
    let lane = b.text("article[data-lane=feature-2]").await;
    assert!(lane.contains("feature-2 → feature-1 → base"), "{lane}");
    let join = b.run("return document.querySelector('article[data-lane=feature-2] a.join').href;", json!([])).await;
    assert_eq!(join, json!(format!("{}?lane=feature-2", w.join_url())));
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
        "return !document.getElementById('view-matrix').hidden && location.hash === '#matrix' \
           && document.activeElement.id === 'h-matrix';",
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

/// Free text from the table is text: no element made from it, no script run.
async fn markup_renders_as_text(w: &World) {
    let b = &w.b;
    b.goto(&w.c.url("/ui/#lanes")).await;
    let description = b.text("article[data-lane=feature-1] dd.description").await;
    assert_eq!(description, "<img src=x onerror=alert(1)><b>bold</b> & co");
    assert_eq!(b.text("article[data-lane=feature-1] dd.owner").await, "<i>alice</i>");
    let made = b
        .run("return document.querySelectorAll('#lane-list img, #lane-list b, #lane-list i').length;", json!([]))
        .await;
    assert_eq!(made, json!(0), "markup from the table became elements");
}

/// A registration made in the page reaches the table, shows in the matrix
/// without a reload, and routes in Envoy.
async fn registration_in_the_page_goes_live(w: &World) {
    let (c, b) = (&w.c, &w.b);
    b.goto(&c.url("/ui/#register")).await;
    b.fill("#token", ADMIN_TOKEN).await;
    b.click("#token-use").await;
    b.wait_text("#access", "admin mode", |t| t.starts_with("Admin token set")).await;
    let current = b.text("#register-msg").await;
    assert!(current.contains("401"), "still the wrong token's answer: {current}");
    b.run("document.getElementById('reg-service').value = 'b';", json!([])).await;
    b.fill("#reg-group", "feature-1").await;
    b.fill("#reg-cluster", "b-feature-1").await;
    b.click("#reg-submit").await;
    let msg = b.wait_text("#register-msg", "the registration", answered).await;
    assert!(msg.starts_with("Registered feature-1 of b"), "{msg}");
    let t: Value = http().get(c.url("/v1/table")).send().await.unwrap().json().await.unwrap();
    assert_eq!(t["services"]["b"]["clusters"]["feature-1"], "b-feature-1");
    // the matrix follows (long-poll), no reload
    b.run("location.hash = '#matrix';", json!([])).await;
    b.wait_text("#matrix-grid td[data-service=b][data-group=feature-1]", "the new cell", |t| t == "b-feature-1").await;
    b.wait_text("#matrix-grid td[data-service=b][data-group=feature-2]", "the fallback cell", |t| {
        t == "b-feature-1 via feature-1"
    })
    .await;
    // a change made elsewhere shows without a reload; how long it takes
    // is reported, not asserted (a loaded CI machine)
    let cell = "#matrix-grid td[data-service=b][data-group=feature-1]";
    let started = std::time::Instant::now();
    c.set_instance("b", "feature-1", None).await;
    b.wait_text(cell, "the cell after an unregister elsewhere", |t| t == "b-base via base").await;
    eprintln!("console: an admin change reached the page's matrix in {:?}", started.elapsed());
    c.set_instance("b", "feature-1", Some("b-feature-1")).await;
    b.wait_text(cell, "the cell registered again", |t| t == "b-feature-1").await;
    // and Envoy routes it (the mesh listener honours x-isogroup)
    let mesh = &w.mesh;
    wait_for("Envoy to route b@feature-1", Duration::from_secs(15), || async {
        let r = mesh.request(&http(), "a").header("x-isogroup", "feature-1").send().await.ok()?;
        let got = chain(&r.json::<Value>().await.ok()?);
        (got == "a@feature-1 > b@feature-1 > c@base").then_some(())
    })
    .await;
    b.screenshot(&shots().join("matrix-registered.png")).await;
    no_console_errors(b, "registration").await;
}

/// The page's join link, followed through the gateway: the browser's next
/// requests are on the lane; "Leave" undoes it; an unknown lane is refused.
async fn join_and_leave_through_the_gateway(w: &World) {
    let b = &w.b;
    let app = format!("http://a:{}/", w.gateway);
    let page_chain = || async {
        let text = b.run("return document.body ? document.body.innerText : '';", json!([])).await;
        chain(&serde_json::from_str::<Value>(text.as_str().unwrap_or_default()).unwrap_or_default())
    };
    b.goto(&app).await;
    assert_eq!(page_chain().await, "a@base > b@base > c@base", "before joining");
    b.goto(&w.c.url("/ui/#lanes")).await;
    b.click("article[data-lane=feature-2] a.join").await;
    // the join answers 302 to "/" with the cookie: the page is the app, on the lane
    b.wait_script(
        "the app after the join",
        "return location.pathname === '/' && location.host.startsWith('a:');",
        json!([]),
    )
    .await;
    assert_eq!(page_chain().await, "a@feature-2 > b@feature-1 > c@base", "the request after the join");
    b.goto(&app).await;
    assert_eq!(page_chain().await, "a@feature-2 > b@feature-1 > c@base", "the next request");
    b.goto(&w.c.url("/ui/#lanes")).await;
    b.click("article[data-lane=feature-2] a.leave").await;
    b.wait_script(
        "the app after leaving",
        "return location.pathname === '/' && location.host.startsWith('a:');",
        json!([]),
    )
    .await;
    assert_eq!(page_chain().await, "a@base > b@base > c@base", "after leaving");
    // an unknown lane: refused (400), no cookie set
    let refused = http()
        .get(format!("{}?lane=ghost", w.join_url().replace("http://a:", "http://127.0.0.1:")))
        .header("host", "a")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    b.goto(&format!("{}?lane=ghost", w.join_url())).await;
    let text = b.run("return document.body.innerText;", json!([])).await;
    assert!(!text.as_str().unwrap_or_default().contains("\"service\""), "the app answered a bad join: {text}");
    b.goto(&app).await;
    assert_eq!(page_chain().await, "a@base > b@base > c@base", "after the refused join");
    let cookies = b.run("return document.cookie;", json!([])).await;
    assert_eq!(cookies, json!(""), "no lane cookie left");
    // the browser logged the refused join (400) and nothing else
    let logged: Vec<_> = b.console_log().await.into_iter().filter(|(level, _)| level == "SEVERE").collect();
    assert!(logged.iter().all(|(_, m)| m.contains("status of 400")), "{logged:?}");
}

/// "Bind my machine": a binding typed in the page routes a client from that
/// address with no header; after its time to live it does not.
async fn a_binding_made_in_the_page_routes_until_it_expires(w: &World) {
    let b = &w.b;
    w.gateway_routes("127.0.0.2 on base before", "127.0.0.2", &[], "a@base > b@base > c@base").await;
    // from the lane's own card: the bind view, the lane filled in
    b.goto(&w.c.url("/ui/#lanes")).await;
    b.click("article[data-lane=feature-1] a.bind-here").await;
    b.wait_script("the bind view", "return !document.getElementById('view-bind').hidden;", json!([])).await;
    let lane = b.run("return document.getElementById('bind-group').value;", json!([])).await;
    assert_eq!(lane, json!("feature-1"));
    assert_eq!(b.text("#whoami").await, "127.0.0.1");
    let mine = b.run("return document.getElementById('bind-ip').value;", json!([])).await;
    assert_eq!(mine, json!("127.0.0.1"), "the caller's address, filled in");
    // a bad time to live: the server's error, naming the field
    b.fill("#bind-ip", "127.0.0.2").await;
    b.fill("#bind-ttl", "0").await;
    b.click("#bind-submit").await;
    let msg = b.wait_text("#bind-msg", "the refusal", answered).await;
    assert!(msg.contains("400") && msg.contains("ttl_s"), "{msg}");
    b.fill("#bind-ttl", "8").await;
    b.click("#bind-submit").await;
    let msg = b.wait_text("#bind-msg", "the binding", answered).await;
    assert!(msg.starts_with("Bound 127.0.0.2 to feature-1"), "{msg}");
    b.wait_text("#sources", "the binding listed", |t| t.contains("127.0.0.2/32")).await;
    b.screenshot(&shots().join("bind.png")).await;
    w.gateway_routes("127.0.0.2 on its lane", "127.0.0.2", &[], "a@feature-1 > b@feature-1 > c@base").await;
    assert_eq!(w.through_gateway("127.0.0.1", &[]).await, "a@base > b@base > c@base", "another machine");
    // the picture in docs/companion.md (docs/console.png): the lanes with the binding, small
    b.set_size(1040, 700).await;
    b.goto(&w.c.url("/ui/#lanes")).await;
    b.wait_text("article[data-lane=feature-1]", "the binding on its lane", |t| t.contains("127.0.0.2/32")).await;
    b.screenshot(&shots().join("readme.png")).await;
    b.set_size(1280, 900).await;
    // a range with no expiry, then unbound from its row
    b.run("location.hash = '#bind';", json!([])).await;
    b.fill("#bind-ip", "10.9.0.0").await;
    b.fill("#bind-len", "16").await;
    b.fill("#bind-ttl", "").await;
    b.click("#bind-submit").await;
    let msg = b.wait_text("#bind-msg", "the range bound", answered).await;
    assert!(msg.starts_with("Bound 10.9.0.0/16 to feature-1"), "{msg}");
    b.click("#sources tr[data-cidr='10.9.0.0/16'] button.unbind").await;
    let msg = b.wait_text("#bind-msg", "the range unbound", answered).await;
    assert!(msg.starts_with("Unbound 10.9.0.0/16"), "{msg}");
    let listed: Value = http().get(w.c.url("/v1/sources")).send().await.unwrap().json().await.unwrap();
    assert!(!listed["sources"].to_string().contains("10.9.0.0"), "{listed}");
    // expiry: the filter ignores it, the companion deletes it (the page follows)
    w.gateway_routes("127.0.0.2 back on base after expiry", "127.0.0.2", &[], "a@base > b@base > c@base").await;
    b.wait_text("#sources", "the binding gone from the page", |t| t.contains("No machine is bound")).await;
    // The page hides a binding once past its expiry, and re-renders on any
    // new table; the companion deletes it on its next check (each second):
    // wait for that write, not only for the page.
    wait_for("the companion to delete the expired binding", Duration::from_secs(15), || async {
        let t: Value = http().get(w.c.url("/v1/table")).send().await.ok()?.json().await.ok()?;
        t.get("sources").is_none().then_some(())
    })
    .await;
}

/// A runtime rule typed in the page routes; a bad one shows the server's
/// error and changes nothing.
async fn a_rule_made_in_the_page_routes_and_a_bad_one_changes_nothing(w: &World) {
    let b = &w.b;
    b.goto(&w.c.url("/ui/#rules")).await;
    let bad = r#"[{"header": "x-team", "values": ["blue"], "group": "feature-2"}, {"percent": 150, "hash_header": "x-user", "group": "feature-1"}]"#;
    let before = version(&w.c).await;
    b.fill("#rules-text", bad).await;
    b.click("#rules-save").await;
    let msg = b.wait_text("#rules-msg", "the refusal", answered).await;
    assert!(msg.contains("400") && msg.contains("rules[1].percent"), "{msg}");
    assert_eq!(version(&w.c).await, before, "a bad rule changed the table");
    b.fill("#rules-text", "[{\"header\": \"x-team\", \"values\": [\"blue\"], \"group\": \"feature-2\"}]").await;
    b.click("#rules-save").await;
    let msg = b.wait_text("#rules-msg", "the save", answered).await;
    assert!(msg.starts_with("Rules saved"), "{msg}");
    b.wait_text("#rules-list", "the rule listed", |t| t.contains("x-team")).await;
    b.screenshot(&shots().join("rules.png")).await;
    w.gateway_routes(
        "x-team: blue on feature-2",
        "127.0.0.1",
        &[("x-team", "blue")],
        "a@feature-2 > b@feature-1 > c@base",
    )
    .await;
    assert_eq!(w.through_gateway("127.0.0.1", &[("x-team", "red")]).await, "a@base > b@base > c@base");
    // the refused save and the bad ttl were logged as failed requests; nothing else
    let logged: Vec<_> = b.console_log().await.into_iter().filter(|(level, _)| level == "SEVERE").collect();
    assert!(logged.iter().all(|(_, m)| m.contains("status of 400")), "{logged:?}");
}

/// A report of b dropping the group on its calls to a: the Propagation view
/// shows the edge (counts, kept share, drop share, advice), marked
/// advisory; the lanes with an instance of a are marked as seen to break
/// (inferred), base is not.
async fn the_propagation_view_shows_a_broken_edge(w: &World) {
    let (c, b) = (&w.c, &w.b);
    let version_before = version(c).await;
    b.goto(&c.url("/ui/#lanes")).await;
    b.wait_text("#live", "the live poll", |t| t.starts_with("live")).await;
    let marked = "return [...document.querySelectorAll('article[data-broke=true]')].map(a => a.dataset.lane);";
    assert_eq!(b.run(marked, json!([])).await, json!([]), "no lane is marked before any report");
    let report = json!({"workload": "b", "namespace": "demo", "sample": 8, "window_s": 10,
        "outbound": {"a": {"kept": 1, "changed": 0, "healed": 0, "dropped": 3, "untraced": 0},
                     "c": {"kept": 5, "changed": 0, "healed": 0, "dropped": 0, "untraced": 0}}});
    let posted = http()
        .post(c.url("/v1/reports"))
        .header("x-isogroup-poller", "console-test")
        .json(&report)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 204);
    b.goto(&c.url("/ui/#propagation")).await;
    let row = "#propagation-edges tr[data-workload=b][data-destination=a]";
    b.wait_text(row, "the broken edge b → a", |t| t.contains("75.0 %")).await;
    let cells = b
        .run(&format!("return [...document.querySelectorAll('{row} td')].map(td => td.textContent);"), json!([]))
        .await;
    let cells: Vec<&str> = cells.as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(cells[..11], ["b", "demo", "a", "1", "0", "0", "3", "0", "1 in 8", "25.0 %", "75.0 %"], "{cells:?}");
    assert!(cells[11].contains("forward x-isogroup / baggage"), "{cells:?}");
    let first =
        b.run("return document.querySelector('#propagation-edges tbody tr').dataset.destination;", json!([])).await;
    assert_eq!(first, json!("a"), "worst first");
    let heading = b.text("#h-propagation").await;
    assert!(heading.contains("advisory"), "{heading}");
    b.screenshot(&shots().join("propagation.png")).await;
    b.goto(&c.url("/ui/#lanes")).await;
    let lane = b.wait_text("article[data-lane=feature-1]", "feature-1 marked", |t| t.contains("seen to break")).await;
    assert!(lane.contains("Inferred") && lane.contains("b → a"), "{lane}");
    let marked = b.run(marked, json!([])).await;
    assert_eq!(marked, json!(["feature-1", "feature-2", "team-s"]), "lanes with an instance of a; not base");
    b.screenshot(&shots().join("lanes-broken.png")).await;
    assert_eq!(version(c).await, version_before, "a report changed the table");
    no_console_errors(b, "the propagation view").await;
}
