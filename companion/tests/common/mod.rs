//! Shared test harness: the companion as a process, free ports, waiting for
//! a condition with a deadline, and (in `etcd`) a real etcd cluster.
//! `kube.rs` (the companion over the fake API server) is not a module
//! here: the tests that include the fake as `kube_fake` include it by path.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)] // each test binary uses part

pub mod etcd;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub struct Companion {
    pub child: Child,
    pub port: u16,
    /// Removed on drop (unless forgotten).
    pub dir: PathBuf,
    pub token: Option<&'static str>,
}

#[allow(unused_imports)] // each test binary uses part
pub use isogroup_test_support::{free_port, rss_kb};

/// A fresh directory for one test's files.
pub fn test_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("isogroup-{name}-{}-{}", std::process::id(), free_port()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl Companion {
    /// `serve --listen <free port> <args…>` with the token (if any) in a file
    /// under `dir`; returns once `/healthz` answers (live, maybe not ready).
    pub async fn spawn(dir: PathBuf, token: Option<&'static str>, args: &[String], port: Option<u16>) -> Companion {
        let port = port.unwrap_or_else(free_port);
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_isogroup-companion"));
        cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")]).args(args);
        // Held polls see each write at once unless a test is about the
        // publish interval.
        if !args.iter().any(|a| a == "--min-publish-ms") {
            cmd.args(["--min-publish-ms", "0"]);
        }
        cmd.env_remove("ISOGROUP_TOKEN")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if std::env::var_os("ISOGROUP_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() });
        if let Some(t) = token {
            std::fs::write(dir.join("token"), format!("{t}\n")).unwrap();
            cmd.arg("--token-file").arg(dir.join("token"));
        }
        let child = cmd.spawn().unwrap();
        let c = Companion { child, port, dir, token };
        c.wait_healthy().await;
        c
    }

    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while reqwest::get(self.url("/healthz")).await.is_err() {
            assert!(Instant::now() < deadline, "companion did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        reqwest::get(self.url(path)).await.unwrap()
    }

    pub async fn table(&self) -> Value {
        self.get("/v1/table").await.json().await.unwrap()
    }

    pub async fn version(&self) -> u64 {
        self.table().await["version"].as_u64().unwrap()
    }

    pub async fn admin(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new().request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub async fn register(&self, service: &str, group: &str, cluster: &str) -> (u16, Value) {
        let path = format!("/v1/services/{service}/groups/{group}");
        self.admin(reqwest::Method::PUT, &path, Some(json!({ "cluster": cluster })), self.token).await
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0.0, |v| v.trim().parse().unwrap())
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit code (`None` if still running after 10 s).
    pub async fn terminate(&mut self) -> Option<i32> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }
}

impl Drop for Companion {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub async fn wait_until(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !probe().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Companion {
    pub async fn put_table(&self, table: &Value) -> (u16, Value) {
        self.admin(reqwest::Method::PUT, "/v1/table", Some(table.clone()), self.token).await
    }

    pub async fn unregister(&self, service: &str, group: &str) -> (u16, Value) {
        let path = format!("/v1/services/{service}/groups/{group}");
        self.admin(reqwest::Method::DELETE, &path, None, self.token).await
    }

    /// (epoch header, version, body) of `GET /v1/table`.
    pub async fn served(&self) -> (Option<String>, u64, Value) {
        let resp = self.get("/v1/table").await;
        assert_eq!(resp.status(), 200, "{}", self.port);
        let epoch = resp.headers().get("x-isogroup-epoch").map(|e| e.to_str().unwrap().to_owned());
        let body: Value = resp.json().await.unwrap();
        (epoch, body["version"].as_u64().unwrap(), body)
    }

    pub async fn ready(&self) -> bool {
        reqwest::get(self.url("/readyz")).await.is_ok_and(|r| r.status() == 200)
    }

    /// The sum of every sample of a metric family whose line starts with `name`.
    pub async fn metric_sum(&self, name: &str) -> f64 {
        let text = self.get("/metrics").await.text().await.unwrap();
        text.lines()
            .filter(|l| l.starts_with(name))
            .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
            .sum()
    }
}

pub fn table_json(services: usize) -> Value {
    let mut map = serde_json::Map::new();
    for i in 0..services {
        map.insert(format!("svc-{i}"), json!({"hosts": [format!("svc-{i}")], "clusters": {"base": format!("c-{i}")}}));
    }
    json!({"groups": {"team-a": {}}, "services": map})
}
