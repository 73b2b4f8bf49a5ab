//! End-to-end harness: the real Envoy binary with the built wasm, the demo
//! services as real processes on loopback, and helpers that poll (never sleep
//! blindly). Every process started here is killed on drop.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env).map(PathBuf::from).unwrap_or_else(|| root().join(default));
    assert!(path.exists(), "{} not found (set {env} or run ./build.sh test)", path.display());
    path
}

pub fn envoy_bin() -> PathBuf {
    bin("ISOGROUP_ENVOY", ".venv/bin/envoy")
}

pub fn demo_bin() -> PathBuf {
    bin("ISOGROUP_DEMO", "target/debug/isogroup-demo")
}

#[allow(unused_imports)] // each test binary uses part
pub use isogroup_test_support::{free_port, rss_kb};

/// Polls `probe` until it yields a value, or fails the test after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    isogroup_test_support::wait_for(what, timeout, probe).await.unwrap_or_else(|e| panic!("{e}"))
}

/// A child process killed (and reaped) on drop.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command) -> Proc {
        let child = cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Proc { name: name.to_owned(), child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(exit code)` once the process has exited.
    pub fn exited(&mut self) -> Option<i32> {
        self.child.try_wait().ok().flatten().map(|s| s.code().unwrap_or(-1))
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A shipped Envoy YAML with every `port_value` mapped to a free port (the
/// same default port always maps to the same new one).
pub struct Rendered {
    pub yaml: String,
    pub ports: BTreeMap<u16, u16>,
}

impl Rendered {
    pub fn from_file(relative: &str) -> Rendered {
        Rendered::from_file_with(relative, BTreeMap::new())
    }

    /// Another file rendered with this one's port map (same default port,
    /// same new port), as for an LDS file beside its bootstrap.
    pub fn companion_file(&self, relative: &str) -> Rendered {
        Rendered::from_file_with(relative, self.ports.clone())
    }

    fn from_file_with(relative: &str, mut ports: BTreeMap<u16, u16>) -> Rendered {
        let text = std::fs::read_to_string(root().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        const KEY: &str = "port_value: ";
        while let Some(i) = rest.find(KEY) {
            out.push_str(&rest[..i + KEY.len()]);
            rest = &rest[i + KEY.len()..];
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            let old: u16 = rest[..digits].parse().unwrap_or_else(|e| panic!("port in {relative}: {e}"));
            let new = *ports.entry(old).or_insert_with(free_port);
            out.push_str(&new.to_string());
            rest = &rest[digits..];
        }
        out.push_str(rest);
        Rendered { yaml: out, ports }
    }

    pub fn port(&self, default: u16) -> u16 {
        *self.ports.get(&default).unwrap_or_else(|| panic!("no port_value {default} in the config"))
    }

    /// Replaces the plugin configuration JSON (between the marker comments).
    pub fn with_plugin_config(mut self, json: &str) -> Rendered {
        let start_marker = "# isogroup configuration\n";
        let end_marker = "# end isogroup configuration";
        let start = self.yaml.find(start_marker).expect("start marker") + start_marker.len();
        let end = self.yaml.find(end_marker).expect("end marker");
        let value_line = &self.yaml[start..end];
        let indent: String = value_line.chars().take_while(|c| *c == ' ').collect();
        let body: String = json.lines().map(|l| format!("{indent}  {l}\n")).collect();
        self.yaml.replace_range(start..end, &format!("{indent}value: |\n{body}{indent}"));
        self
    }
}

/// The log lines worth showing when Envoy fails: warnings and worse.
fn log_problems(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .filter(|l| l.contains("][warning][") || l.contains("][error][") || l.contains("][critical]["))
        .collect::<Vec<_>>()
        .join("\n")
}

pub struct Envoy {
    pub proc: Proc,
    pub admin: u16,
    pub listener: u16,
    pub log: PathBuf,
    pub dir: TempDir,
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("isogroup-{tag}-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap_or_default()
}

/// A client that opens a new connection for every request.
pub fn http_fresh_connections() -> reqwest::Client {
    reqwest::Client::builder().pool_max_idle_per_host(0).timeout(Duration::from_secs(10)).build().unwrap_or_default()
}

impl Envoy {
    /// Starts Envoy (run from the repository root, as users do) and waits
    /// until its admin says LIVE. `Err(log)` if it exits instead.
    pub async fn start(rendered: &Rendered, admin_default: u16, listener_default: u16) -> Result<Envoy, String> {
        Envoy::start_with_files(rendered, &[], admin_default, listener_default).await
    }

    /// Like `start`, with extra files written to the run directory first;
    /// `{{dir}}` in the config (and the files) names that directory.
    pub async fn start_with_files(
        rendered: &Rendered,
        files: &[(&str, &str)],
        admin_default: u16,
        listener_default: u16,
    ) -> Result<Envoy, String> {
        let dir = TempDir::new("envoy");
        let config = dir.0.join("envoy.yaml");
        let log = dir.0.join("envoy.log");
        let dir_text = dir.0.display().to_string();
        for (name, text) in files {
            std::fs::write(dir.0.join(name), text.replace("{{dir}}", &dir_text)).map_err(|e| e.to_string())?;
        }
        std::fs::write(&config, rendered.yaml.replace("{{dir}}", &dir_text)).map_err(|e| e.to_string())?;
        let admin = rendered.port(admin_default);
        let listener = rendered.port(listener_default);
        let mut proc = Proc::spawn(
            "envoy",
            Command::new(envoy_bin())
                .current_dir(root())
                .arg("-c")
                .arg(&config)
                .args([
                    "--concurrency",
                    "2",
                    "--disable-hot-restart",
                    "-l",
                    "info",
                    "--file-flush-interval-msec",
                    "50",
                    "--base-id",
                ])
                .arg(admin.to_string())
                .arg("--log-path")
                .arg(&log)
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let client = http();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(code) = proc.exited() {
                return Err(format!("envoy exited with {code}:\n{}", log_problems(&log)));
            }
            let ready = client.get(format!("http://127.0.0.1:{admin}/ready")).send().await;
            if let Ok(r) = ready {
                if r.status().is_success() {
                    return Ok(Envoy { proc, admin, listener, log, dir });
                }
            }
            if Instant::now() > deadline {
                return Err(format!("envoy not ready in 30 s:\n{}", log_problems(&log)));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.listener)
    }

    /// Every stat whose name contains `filter`, as name → value.
    pub async fn stats(&self, filter: &str) -> BTreeMap<String, u64> {
        let url = format!("http://127.0.0.1:{}/stats?filter={filter}", self.admin);
        let text = match http().get(url).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        text.lines()
            .filter_map(|l| {
                let (k, v) = l.split_once(": ")?;
                Some((k.to_owned(), v.trim().parse().ok()?))
            })
            .collect()
    }

    pub async fn stat(&self, name: &str) -> u64 {
        self.stats(name).await.get(name).copied().unwrap_or(0)
    }

    /// Waits until stat `name` reaches at least `want` (metrics flush on ticks).
    pub async fn wait_stat(&self, name: &str, want: u64) -> u64 {
        wait_for(&format!("{name} >= {want}"), Duration::from_secs(5), || async move {
            let v = self.stat(name).await;
            (v >= want).then_some(v)
        })
        .await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// The demo topology of `envoy/demo.yaml`: (default port, service, group, next).
pub const DEMO_INSTANCES: &[(u16, &str, &str, Option<&str>)] = &[
    (18000, "a", "base", Some("b")),
    (18001, "a", "feature-1", Some("b")),
    (18002, "a", "feature-2", Some("b")),
    (18003, "a", "team-s", Some("b")),
    (18010, "b", "base", Some("c")),
    (18011, "b", "feature-1", Some("c")),
    (18020, "c", "base", None),
];

/// One demo instance (`service@group`, no next hop) listening on `port`.
pub async fn demo_instance(service: &str, group: &str, port: u16) -> Proc {
    let proc = Proc::spawn(
        &format!("{service}@{group}"),
        Command::new(demo_bin())
            .args(["serve", "--service", service, "--group", group, "--listen"])
            .arg(format!("127.0.0.1:{port}")),
    );
    wait_for(&format!("{service}@{group} listening"), Duration::from_secs(10), || async move {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
    })
    .await;
    proc
}

/// Envoy with `envoy/demo.yaml` plus every demo service, ready.
pub struct Mesh {
    pub envoy: Envoy,
    pub services: Vec<Proc>,
}

impl Mesh {
    pub async fn start() -> Mesh {
        Mesh::start_with(Rendered::from_file("envoy/demo.yaml")).await
    }

    pub async fn start_with(rendered: Rendered) -> Mesh {
        Mesh::start_custom(rendered, &[]).await
    }

    /// Like `start_with`; instances of `sloppy` services forward only the
    /// tracing headers.
    pub async fn start_custom(rendered: Rendered, sloppy: &[&str]) -> Mesh {
        Mesh::start_full(rendered, sloppy, &[]).await
    }

    pub async fn start_full(rendered: Rendered, sloppy: &[&str], extra_files: &[(&str, &str)]) -> Mesh {
        let listener = rendered.port(10000);
        let mut services = Vec::new();
        for &(default, service, group, next) in DEMO_INSTANCES {
            let port = rendered.port(default);
            let mut cmd = Command::new(demo_bin());
            cmd.args(["serve", "--service", service, "--group", group, "--listen"])
                .arg(format!("127.0.0.1:{port}"))
                .arg("--via")
                .arg(format!("127.0.0.1:{listener}"));
            if let Some(next) = next {
                cmd.args(["--next", next]);
            }
            if sloppy.contains(&service) {
                cmd.arg("--forward-only-trace-headers");
            }
            services.push(Proc::spawn(&format!("{service}@{group}"), &mut cmd));
            wait_for(&format!("{service}@{group} listening"), Duration::from_secs(10), || async move {
                std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
            })
            .await;
        }
        let envoy = match Envoy::start_with_files(&rendered, extra_files, 9901, 10000).await {
            Ok(e) => e,
            Err(log) => panic!("{log}"),
        };
        Mesh { envoy, services }
    }

    /// The run directory of this mesh's Envoy (where `{{dir}}` files live).
    pub fn dir(&self) -> &Path {
        &self.envoy.dir.0
    }

    pub fn request(&self, client: &reqwest::Client, host: &str) -> reqwest::RequestBuilder {
        client.get(self.envoy.url()).header("host", host)
    }
}

/// `a@feature-1 > b@feature-1 > c@base` from a demo answer; a fail-fast hop
/// shows as `c:503 <reason>`.
pub fn chain(body: &serde_json::Value) -> String {
    let mut hops = Vec::new();
    let mut node = body;
    loop {
        if node.get("error").is_some() {
            hops.push(format!(
                "{}:failfast {}",
                node["service"].as_str().unwrap_or("?"),
                node["reason"].as_str().unwrap_or("?")
            ));
            break;
        }
        hops.push(format!("{}@{}", node["service"].as_str().unwrap_or("?"), node["group"].as_str().unwrap_or("?")));
        match node.get("next") {
            Some(n) => node = n,
            None => break,
        }
    }
    hops.join(" > ")
}

pub fn header_values(resp: &reqwest::Response, name: &str) -> Vec<String> {
    resp.headers().get_all(name).iter().map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned()).collect()
}

pub fn companion_bin() -> PathBuf {
    bin("ISOGROUP_COMPANION", "target/debug/isogroup-companion")
}

pub const ADMIN_TOKEN: &str = "e2e-admin-token";

/// `isogroup-companion serve` on `port` with a table file in its own directory.
pub struct Companion {
    pub proc: Proc,
    pub port: u16,
    pub dir: PathBuf,
}

impl Companion {
    pub async fn start(port: u16, table_json: &str) -> Companion {
        let dir = std::env::temp_dir().join(format!("isogroup-e2e-companion-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::fs::write(dir.join("table.json"), table_json).unwrap_or_else(|e| panic!("{e}"));
        Companion::start_in(port, dir).await
    }

    /// (Re)starts on an existing directory, as after a crash.
    pub async fn start_in(port: u16, dir: PathBuf) -> Companion {
        Companion::start_in_with(port, dir, &[]).await
    }

    /// Like `start`, with more `serve` arguments.
    pub async fn start_with(port: u16, table_json: &str, args: &[&str]) -> Companion {
        let dir = std::env::temp_dir().join(format!("isogroup-e2e-companion-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        std::fs::write(dir.join("table.json"), table_json).unwrap_or_else(|e| panic!("{e}"));
        Companion::start_in_with(port, dir, args).await
    }

    pub async fn start_in_with(port: u16, dir: PathBuf, args: &[&str]) -> Companion {
        let proc = Proc::spawn(
            "companion",
            Command::new(companion_bin())
                .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--table"])
                .arg(dir.join("table.json"))
                // Each write reaches Envoy's poller at once: the tests here
                // change tables faster than the default 1 s publish interval
                // (companion/tests/api.rs tests the pacing itself).
                .args(["--min-publish-ms", "0"])
                .args(args)
                .env("ISOGROUP_TOKEN", ADMIN_TOKEN)
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        let c = Companion { proc, port, dir };
        wait_for("companion healthy", Duration::from_secs(30), || async {
            http().get(c.url("/healthz")).send().await.ok().filter(|r| r.status().is_success()).map(|_| ())
        })
        .await;
        c
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// PUT (Some(cluster)) or DELETE (None) a group's instance; the new version.
    pub async fn set_instance(&self, service: &str, group: &str, cluster: Option<&str>) -> u64 {
        let url = self.url(&format!("/v1/services/{service}/groups/{group}"));
        let req = match cluster {
            Some(c) => http().put(url).json(&serde_json::json!({ "cluster": c })),
            None => http().delete(url),
        };
        let resp = req.bearer_auth(ADMIN_TOKEN).send().await.unwrap_or_else(|e| panic!("admin call: {e}"));
        assert!(resp.status().is_success(), "admin call: {}", resp.status());
        let body: serde_json::Value = resp.json().await.unwrap_or_default();
        body["version"].as_u64().unwrap_or_else(|| panic!("no version in {body}"))
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let text = match http().get(self.url("/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => return -1.0,
        };
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
    }
}

impl Companion {
    /// Kills the process (SIGKILL) and keeps its directory for a restart.
    pub fn crash(mut self) -> PathBuf {
        self.proc.kill();
        std::mem::take(&mut self.dir)
    }
}

impl Drop for Companion {
    fn drop(&mut self) {
        self.proc.kill();
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A fake companion: serves `answers` in order, one per connection; `None`
/// (and every poll after the last answer) hangs the connection, `Some("")`
/// resets it.
pub async fn fake_companion(port: u16, answers: Vec<Option<String>>) -> tokio::task::JoinHandle<()> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("fake companion on {port}: {e}"));
    tokio::spawn(async move {
        let mut answers = answers.into_iter();
        let mut held = Vec::new();
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let mut buf = vec![0u8; 4096];
            let _ = tokio::io::AsyncReadExt::read(&mut sock, &mut buf).await;
            match answers.next() {
                Some(Some(body)) if body.is_empty() => drop(sock),
                Some(Some(body)) => {
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len());
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut sock, head.as_bytes()).await;
                    let _ = tokio::io::AsyncWriteExt::write_all(&mut sock, body.as_bytes()).await;
                }
                Some(None) | None => held.push(sock),
            }
        }
    })
}

/// The two builds of the filter an end-to-end suite runs against: the wasm
/// filter as the shipped configs load it, and the native module
/// (`target/libisogroup_native.so`) in its place with the same plugin JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Wasm,
    Native,
}

impl Build {
    pub const BOTH: [Build; 2] = [Build::Wasm, Build::Native];

    /// A shipped config for this build.
    pub fn config(self, relative: &str) -> Rendered {
        self.of(Rendered::from_file(relative))
    }

    /// `rendered` for this build: as it is, or with its wasm filters swapped.
    pub fn of(self, rendered: Rendered) -> Rendered {
        match self {
            Build::Wasm => rendered,
            Build::Native => native_of(rendered),
        }
    }

    /// A filter metric's stat name: Envoy prefixes wasm metrics with
    /// `wasmcustom.` and the module's with its `metrics_namespace`.
    pub fn stat(self, metric: &str) -> String {
        match self {
            Build::Wasm => format!("wasmcustom.{metric}"),
            Build::Native => format!("isogroup.{metric}"),
        }
    }
}

/// A shipped wasm config with each isogroup wasm filter replaced by the
/// native module, keeping the plugin configuration JSON as it is: the same
/// file runs on both builds.
pub fn native_of(mut rendered: Rendered) -> Rendered {
    let module = root().join("target/libisogroup_native.so");
    assert!(module.exists(), "{} not found (run ./build.sh build)", module.display());
    const WASM_TYPE: &str = "\"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm\n";
    const CONFIGURATION: &str = "configuration:\n";
    let mut out = String::with_capacity(rendered.yaml.len());
    let mut rest = rendered.yaml.as_str();
    while let Some(at) = rest.find(WASM_TYPE) {
        let line_start = rest[..at].rfind('\n').map_or(0, |i| i + 1);
        let indent = &rest[line_start..at];
        let config_at = at + rest[at..].find(CONFIGURATION).expect("a configuration under the wasm filter");
        out.push_str(&rest[..line_start]);
        for line in [
            "\"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter",
            "dynamic_module_config:",
            "  module: { local: { filename: target/libisogroup_native.so } }",
            "  do_not_close: true",
            "  metrics_namespace: isogroup",
            "filter_name: isogroup",
            // The JSON stays nested deeper than this key, as YAML allows.
            "filter_config:",
        ] {
            out.push_str(indent);
            out.push_str(line);
            out.push('\n');
        }
        rest = &rest[config_at + CONFIGURATION.len()..];
    }
    out.push_str(rest);
    assert!(out.contains("DynamicModuleFilter"), "no wasm filter to replace");
    rendered.yaml = out;
    rendered
}

/// One `#[tokio::test]` per build for each named `async fn(Build)`: the
/// tests `<name>::wasm` and `<name>::native`.
#[allow(unused_macros)]
macro_rules! on_both_builds {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn wasm() {
                super::$name(crate::common::Build::Wasm).await;
            }

            #[tokio::test]
            async fn native() {
                super::$name(crate::common::Build::Native).await;
            }
        }
    )*};
}
