//! A small W3C WebDriver client over reqwest: Debian's chromedriver on a
//! free loopback port driving headless chromium. Only what the console tests
//! use: navigate, find, click, type, read text, run a script, read the
//! browser's console log, screenshots. Killed (session and driver) on drop.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::{free_port, wait_for, Proc};

/// The key WebDriver's "element reference" object is keyed by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Proc,
    base: String,
    session: String,
    http: reqwest::Client,
}

/// Where Debian installs them (build.sh: apt-get install chromium chromium-driver).
fn chromedriver() -> PathBuf {
    std::env::var_os("ISOGROUP_CHROMEDRIVER").map_or_else(|| PathBuf::from("/usr/bin/chromedriver"), PathBuf::from)
}

fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("ISOGROUP_CHROMIUM") {
        return PathBuf::from(p);
    }
    // The real binary, not Debian's wrapper script.
    ["/usr/lib/chromium/chromium", "/usr/bin/chromium"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_default()
}

impl Browser {
    /// Starts chromedriver and one headless chromium session.
    pub async fn start() -> Browser {
        Browser::start_with(&[]).await
    }

    /// Like `start`, with more chromium arguments (e.g. `--host-resolver-rules`).
    pub async fn start_with(extra: &[&str]) -> Browser {
        let port = free_port();
        assert!(
            chromedriver().exists(),
            "{} missing: run ./build.sh test (it installs chromium-driver)",
            chromedriver().display()
        );
        let driver = Proc::spawn(
            "chromedriver",
            Command::new(chromedriver()).arg(format!("--port={port}")).stdout(Stdio::null()).stderr(Stdio::null()),
        );
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap_or_default();
        wait_for("chromedriver ready", Duration::from_secs(20), || {
            let http = http.clone();
            let url = format!("{base}/status");
            async move {
                let body: Value = http.get(url).send().await.ok()?.json().await.ok()?;
                body["value"]["ready"].as_bool().filter(|r| *r)
            }
        })
        .await;
        let mut args = vec![
            "--headless=new",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-proxy-server",
            "--window-size=1280,900",
        ];
        // As root, chromium refuses to start without this.
        if is_root() {
            args.push("--no-sandbox");
        }
        args.extend_from_slice(extra);
        let caps = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": chromium(), "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let resp: Value = http
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap_or_else(|e| panic!("new session: {e}"))
            .json()
            .await
            .unwrap_or_else(|e| panic!("new session: {e}"));
        let session = resp["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session from chromedriver: {resp}"))
            .to_owned();
        Browser { driver, base, session, http }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Result<Value, String> {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut req = self.http.request(method, url);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.map_err(|e| format!("{path}: {e}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.map_err(|e| format!("{path}: {e}"))?;
        if status.is_success() {
            Ok(body["value"].clone())
        } else {
            Err(format!("{path}: {status} {}", body["value"]))
        }
    }

    async fn post(&self, path: &str, body: Value) -> Value {
        self.call(reqwest::Method::POST, path, Some(body)).await.unwrap_or_else(|e| panic!("webdriver {e}"))
    }

    async fn get(&self, path: &str) -> Value {
        self.call(reqwest::Method::GET, path, None).await.unwrap_or_else(|e| panic!("webdriver {e}"))
    }

    pub async fn goto(&self, url: &str) {
        self.post("/url", json!({ "url": url })).await;
    }

    pub async fn current_url(&self) -> String {
        self.get("/url").await.as_str().unwrap_or_default().to_owned()
    }

    pub async fn set_size(&self, width: u32, height: u32) {
        self.post("/window/rect", json!({ "width": width, "height": height })).await;
    }

    /// The element `css` selects, once it exists (waits up to 10 s).
    pub async fn find(&self, css: &str) -> String {
        wait_for(&format!("element {css}"), Duration::from_secs(10), || async {
            let v = self
                .call(reqwest::Method::POST, "/element", Some(json!({ "using": "css selector", "value": css })))
                .await;
            v.ok().and_then(|v| v[ELEMENT].as_str().map(str::to_owned))
        })
        .await
    }

    /// Runs `act` on the element `css` selects. The console redraws a view
    /// on every new table it polls: an element found just before a redraw
    /// is stale when `act` reaches it (nothing was done to it), so it is
    /// found again and `act` retried; any other error fails the test.
    async fn on_element<T>(&self, css: &str, act: impl AsyncFn(&str) -> Result<T, String>) -> T {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let id = self.find(css).await;
            match act(&id).await {
                Ok(v) => return v,
                Err(e) if e.contains("stale element reference") && Instant::now() < deadline => {}
                Err(e) => panic!("webdriver {e}"),
            }
        }
    }

    pub async fn click(&self, css: &str) {
        self.on_element(css, async |id| {
            self.call(reqwest::Method::POST, &format!("/element/{id}/click"), Some(json!({}))).await.map(drop)
        })
        .await;
    }

    /// Clears the field, then types `text` into it.
    pub async fn fill(&self, css: &str, text: &str) {
        self.on_element(css, async |id| {
            self.call(reqwest::Method::POST, &format!("/element/{id}/clear"), Some(json!({}))).await?;
            if !text.is_empty() {
                let value = Some(json!({ "text": text }));
                self.call(reqwest::Method::POST, &format!("/element/{id}/value"), value).await?;
            }
            Ok(())
        })
        .await;
    }

    /// Types keys into the focused element (e.g. "\u{E004}" is Tab, "\u{E007}" Enter).
    pub async fn keys(&self, text: &str) {
        let actions: Vec<Value> = text
            .chars()
            .flat_map(|c| {
                [json!({"type": "keyDown", "value": c.to_string()}), json!({"type": "keyUp", "value": c.to_string()})]
            })
            .collect();
        self.post("/actions", json!({ "actions": [{ "type": "key", "id": "keyboard", "actions": actions }] })).await;
    }

    pub async fn text(&self, css: &str) -> String {
        let text = self
            .on_element(css, async |id| self.call(reqwest::Method::GET, &format!("/element/{id}/text"), None).await)
            .await;
        text.as_str().unwrap_or_default().to_owned()
    }

    /// Runs `script` (a function body; `arguments` holds `args`) in the page.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.post("/execute/sync", json!({ "script": script, "args": args })).await
    }

    /// Polls `script` until it returns something other than null/false.
    pub async fn wait_script(&self, what: &str, script: &str, args: Value) -> Value {
        wait_for(what, Duration::from_secs(15), || async {
            let v = self.run(script, args.clone()).await;
            (!v.is_null() && v != Value::Bool(false)).then_some(v)
        })
        .await
    }

    /// Waits until the element's text satisfies `pred`, and returns it.
    pub async fn wait_text(&self, css: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        wait_for(what, Duration::from_secs(15), || async {
            let t = self
                .run("const e = document.querySelector(arguments[0]); return e ? e.textContent : null;", json!([css]))
                .await;
            t.as_str().filter(|t| pred(t)).map(str::to_owned)
        })
        .await
    }

    /// The browser's console entries since the last call (level, message).
    pub async fn console_log(&self) -> Vec<(String, String)> {
        let entries = self.post("/se/log", json!({ "type": "browser" })).await;
        entries
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| {
                        (e["level"].as_str().unwrap_or("").to_owned(), e["message"].as_str().unwrap_or("").to_owned())
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Saves a PNG of the viewport.
    pub async fn screenshot(&self, path: &Path) {
        let data = self.get("/screenshot").await;
        let png = base64_decode(data.as_str().unwrap_or_default());
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends chromium too; chromedriver itself is killed by Proc's drop.
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
            if let Ok(rt) = rt {
                rt.block_on(async {
                    let _ = reqwest::Client::new().delete(url).timeout(Duration::from_secs(10)).send().await;
                });
            }
        })
        .join();
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Uid:")).map(|u| u.split_whitespace().next() == Some("0")))
        .unwrap_or(false)
}

/// Standard base64 (WebDriver screenshots), padding and line breaks allowed.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for v in text.bytes().filter_map(value) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
