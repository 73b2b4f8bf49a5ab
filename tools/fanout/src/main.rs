//! The companion fan-out benchmark's load client (`./build.sh bench fanout`,
//! results in BENCHMARKS.md).
//!
//! Starts a companion on a synthetic table, holds N long polls on it (each
//! its own `x-isogroup-poller`), makes one-service changes through the admin
//! API, restarts the companion on the same file, and measures per change the
//! time until every poller holds the new version, the bytes sent, the
//! companion's CPU, and its RSS. Each mode is a fresh companion: `delta`
//! (polls send `delta=1` and apply deltas with `isogroup_core::delta`) and
//! `whole` (the same polls without `delta=1`: whole tables, as before
//! deltas), side by side in one invocation. Beside them: real Envoys among
//! the pollers in the `delta` mode (`envoy.rs`), a flood of unauthenticated
//! requests after its changes (`flood.rs`), and the `kube` mode, two
//! Kubernetes-mode replicas over the fake API server whose leader is
//! SIGKILLed (`kube.rs`).
//!
//! A poller counts a version as held only when the hash of its table (a
//! canonical, name-ordered serialisation) equals that of the whole table
//! the driver fetched for that version. Pollers answered with the same
//! bytes onto the same table share one parse or apply (deterministic on its
//! inputs; 5,000 private copies of the table would not fit the machine).

mod envoy;
mod flood;
mod kube;

// The companion's fake Kubernetes API server (test code, as in
// tools/fake-kube), for the Kubernetes arm.
#[allow(dead_code)] // the file allows its own unwraps (test code)
#[path = "../../../companion/src/kube/fake.rs"]
mod fake;

use std::collections::{BTreeMap, HashMap};
use std::hash::Hasher;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use isogroup_core::delta::{self, RawDelta, DELTA_CONTENT_TYPE};
use isogroup_core::{Limits, RawTable, Table};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// The base group the companion serves by default.
const BASE: &str = "base";

#[derive(Parser, Clone)]
#[command(about = "Fan-out benchmark: N long polls on one companion, one-service changes, a restart")]
struct Args {
    /// The companion binary (built in the server profile).
    #[arg(long)]
    companion: PathBuf,
    /// A directory for the tables and the companions' logs.
    #[arg(long)]
    work_dir: PathBuf,
    #[arg(long, default_value_t = 5000)]
    pollers: usize,
    #[arg(long, default_value_t = 500)]
    services: usize,
    /// Lanes (groups) of the synthetic table.
    #[arg(long, default_value_t = 50)]
    groups: usize,
    /// One-service changes before the restart (one more follows it).
    #[arg(long, default_value_t = 20)]
    changes: usize,
    /// Each poll's `wait`, seconds.
    #[arg(long, default_value_t = 60)]
    wait_s: u64,
    /// The companion's `--min-publish-ms`.
    #[arg(long, default_value_t = 1000)]
    min_publish_ms: u64,
    /// The pause after every poller holds a change, before the next write
    /// (default: `--min-publish-ms`, so a write's latency is its fan-out,
    /// not the pacing of the one before).
    #[arg(long)]
    gap_ms: Option<u64>,
    /// How long to wait for every poller to hold a change.
    #[arg(long, default_value_t = 30)]
    timeout_s: u64,
    /// Modes, in order: `delta` (polls send delta=1), `whole` (they do
    /// not), `kube` (two Kubernetes-mode replicas over the fake API server,
    /// delta polls, the leader SIGKILLed).
    #[arg(long, default_value = "delta,whole,kube", value_delimiter = ',')]
    modes: Vec<String>,
    /// The Envoy binary: with it, each `--envoy-arm` is a real Envoy (two
    /// workers) polling the companion in the `delta` mode.
    #[arg(long)]
    envoy: Option<PathBuf>,
    /// An Envoy arm, `name=path.wasm` (repeatable): e.g. the shipped wasm
    /// (deltas) and the whole-only build.
    #[arg(long = "envoy-arm", value_parser = envoy::parse_arm)]
    envoy_arms: Vec<envoy::ArmSpec>,
    /// After every load poller holds a change, this long more (three filter
    /// ticks) before an Envoy's CPU window closes.
    #[arg(long, default_value_t = 600)]
    envoy_settle_ms: u64,
    /// Seconds of unauthenticated flood load (unique and over-long poller
    /// ids, unique report instances, big token-less table PUTs) after the
    /// changes, in the `delta` mode; 0: none.
    #[arg(long, default_value_t = 20)]
    flood_s: u64,
    /// One-service changes written during the flood.
    #[arg(long, default_value_t = 3)]
    flood_changes: usize,
    /// The `kube` mode's Lease (`serve --lease-ms`).
    #[arg(long, default_value_t = 5000)]
    lease_ms: u64,
}

/// A table a poller holds.
struct Held {
    version: u64,
    epoch: Option<String>,
    raw: RawTable,
    hash: u64,
}

impl Held {
    fn new(raw: RawTable) -> Result<Held, String> {
        // The name-ordered maps (`btree-names`) make serde's output canonical.
        let json = serde_json::to_vec(&raw).map_err(|e| format!("serialise: {e}"))?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        hasher.write(&json);
        Ok(Held { version: raw.version, epoch: raw.epoch.clone(), hash: hasher.finish(), raw })
    }

    fn from_whole(body: &[u8], limits: &Limits) -> Result<Held, String> {
        let (raw, _) = RawTable::from_companion_json(body, limits).map_err(|e| format!("whole table: {e:?}"))?;
        Table::compile(&raw, BASE, limits).map_err(|e| format!("whole table: {e:?}"))?;
        Held::new(raw)
    }

    fn with_delta(&self, body: &[u8], limits: &Limits) -> Result<Held, String> {
        let parsed = RawDelta::from_json(body, limits).map_err(|e| format!("delta: {e:?}"))?;
        let (raw, _) =
            delta::apply(self.raw.clone(), parsed.delta, BASE, limits).map_err(|e| format!("delta: {e:?}"))?;
        Held::new(raw)
    }
}

type Outcome = Result<Arc<Held>, String>;
/// The first answer's bytes for a key, and what they made.
type Cell = Arc<OnceLock<(Bytes, Outcome)>>;
type Cells<K> = Mutex<HashMap<K, Cell>>;

/// One parse or apply per distinct (held table, answer bytes).
#[derive(Default)]
struct Memo {
    whole: Cells<(u64, Option<String>)>,
    deltas: Cells<(u64, Option<String>, u64)>,
}

impl Memo {
    fn cell<K: std::hash::Hash + Eq>(map: &Cells<K>, key: K) -> Cell {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key).or_default().clone()
    }

    fn whole(&self, stamp: (u64, Option<String>), body: Bytes, limits: &Limits) -> Outcome {
        let cell = Memo::cell(&self.whole, stamp);
        let (first, outcome) = cell.get_or_init(|| (body.clone(), Held::from_whole(&body, limits).map(Arc::new)));
        if *first == body {
            return outcome.clone();
        }
        Held::from_whole(&body, limits).map(Arc::new)
    }

    fn delta(&self, base: &Held, version: u64, body: Bytes, limits: &Limits) -> Outcome {
        let cell = Memo::cell(&self.deltas, (base.version, base.epoch.clone(), version));
        let (first, outcome) = cell.get_or_init(|| (body.clone(), base.with_delta(&body, limits).map(Arc::new)));
        if *first == body {
            return outcome.clone();
        }
        base.with_delta(&body, limits).map(Arc::new)
    }
}

/// One install: poller, version, hash, when.
type Install = (u32, u64, u64, Instant);

/// What every poller shares.
struct Shared {
    client: reqwest::Client,
    /// The companion's addresses: one, or (Kubernetes) every replica, as the
    /// Service that selects the leader would give them: a poller whose
    /// replica refuses or is gone tries the next.
    urls: Vec<String>,
    wait_s: u64,
    delta: bool,
    limits: Limits,
    /// The table's size, for picking the service and lane each change touches.
    services: usize,
    groups: usize,
    memo: Memo,
    /// Response bytes received: status line, headers and body, as on the wire.
    bytes: AtomicU64,
    polls: AtomicU64,
    delta_answers: AtomicU64,
    whole_answers: AtomicU64,
    refused: AtomicU64,
    errors: AtomicU64,
    installs: Mutex<Vec<Install>>,
    /// Pollers holding each table, by its hash (a new epoch may reuse a version).
    per_hash: Mutex<HashMap<u64, usize>>,
    started: AtomicUsize,
    stop: AtomicBool,
}

impl Shared {
    /// How long after `t0` each install `keep` picks came, sorted.
    fn install_latencies(&self, t0: Instant, keep: impl Fn(&Install) -> bool) -> Vec<Duration> {
        let mut latencies: Vec<Duration> = self
            .installs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .filter(|i| keep(i))
            .map(|i| i.3.saturating_duration_since(t0))
            .collect();
        latencies.sort();
        latencies
    }

    fn new(args: &Args, client: reqwest::Client, urls: Vec<String>, delta: bool) -> Shared {
        Shared {
            client,
            urls,
            wait_s: args.wait_s,
            delta,
            limits: Limits::default(),
            services: args.services,
            groups: args.groups,
            memo: Memo::default(),
            bytes: AtomicU64::new(0),
            polls: AtomicU64::new(0),
            delta_answers: AtomicU64::new(0),
            whole_answers: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            installs: Mutex::new(Vec::new()),
            per_hash: Mutex::new(HashMap::new()),
            started: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        }
    }

    /// Pollers holding the table with `hash`.
    fn holding(&self, hash: u64) -> usize {
        self.per_hash.lock().unwrap_or_else(|e| e.into_inner()).get(&hash).copied().unwrap_or(0)
    }
}

fn wire_bytes(response: &reqwest::Response) -> u64 {
    // "HTTP/1.1 200 OK\r\n", each "name: value\r\n", the blank line.
    let status = 9 + 3 + 1 + response.status().canonical_reason().map_or(0, str::len) + 2;
    let headers: usize = response.headers().iter().map(|(n, v)| n.as_str().len() + 2 + v.len() + 2).sum();
    (status + headers + 2) as u64
}

fn etag_version(response: &reqwest::Response) -> Option<u64> {
    let etag = response.headers().get("etag")?.to_str().ok()?;
    etag.trim_matches('"').parse().ok()
}

async fn poller(id: u32, shared: Arc<Shared>, mut held: Arc<Held>) {
    let poller_id = format!("fanout-{id}");
    let mut failures: u64 = 0;
    let mut force_whole = false;
    let mut first = true;
    let mut at = 0;
    while !shared.stop.load(Ordering::Relaxed) {
        let base = &shared.urls[at % shared.urls.len()];
        if failures > 0 {
            // Spread 5,000 reconnects (the restart) over time.
            let ms = 100 * failures.min(10) + u64::from(id) * 37 % 200;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        let url = if force_whole {
            format!("{base}/v1/table")
        } else {
            let mut url = format!("{base}/v1/table?after={}&wait={}", held.version, shared.wait_s);
            if let Some(epoch) = &held.epoch {
                url.push_str("&epoch=");
                url.push_str(epoch);
            }
            if shared.delta {
                url.push_str("&delta=1");
            }
            url
        };
        let request = shared.client.get(&url).header("x-isogroup-poller", &poller_id).send();
        if first {
            first = false;
            shared.started.fetch_add(1, Ordering::Relaxed);
        }
        shared.polls.fetch_add(1, Ordering::Relaxed);
        let response = match request.await {
            Ok(response) => response,
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                at += 1;
                continue;
            }
        };
        let head = wire_bytes(&response);
        let status = response.status().as_u16();
        let version = etag_version(&response);
        let is_delta = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with(DELTA_CONTENT_TYPE));
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(_) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                failures += 1;
                continue;
            }
        };
        shared.bytes.fetch_add(head + body.len() as u64, Ordering::Relaxed);
        if status == 304 {
            failures = 0;
            continue;
        }
        if status != 200 {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            failures += 1;
            at += 1;
            continue;
        }
        failures = 0;
        force_whole = false;
        let outcome = if is_delta {
            shared.delta_answers.fetch_add(1, Ordering::Relaxed);
            shared.memo.delta(&held, version.unwrap_or(0), body, &shared.limits)
        } else {
            shared.whole_answers.fetch_add(1, Ordering::Relaxed);
            let epoch = held.epoch.clone();
            shared.memo.whole((version.unwrap_or(0), epoch), body, &shared.limits)
        };
        match outcome {
            Ok(next) => {
                let at = Instant::now();
                shared.installs.lock().unwrap_or_else(|e| e.into_inner()).push((id, next.version, next.hash, at));
                *shared.per_hash.lock().unwrap_or_else(|e| e.into_inner()).entry(next.hash).or_default() += 1;
                held = next;
            }
            Err(_) => {
                // As a filter does: a refused delta (or table) is followed by a whole fetch.
                shared.refused.fetch_add(1, Ordering::Relaxed);
                force_whole = true;
            }
        }
    }
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    // After the name: state is field 3, utime 14, stime 15.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    field(11) + field(12)
}

/// A `/proc/<pid>/status` size line (`VmRSS`, `VmHWM`), in KiB.
fn status_kib(pid: &str, key: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn clock_ticks_per_s() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100)
}

fn free_port() -> Result<u16, Error> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn start_companion(args: &Args, dir: &Path, port: u16, token: &str, run: usize) -> Result<Child, Error> {
    let log = std::fs::File::create(dir.join(format!("companion-{run}.log")))?;
    Ok(Command::new(&args.companion)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--table"])
        .arg(dir.join("table.json"))
        .args(["--min-publish-ms", &args.min_publish_ms.to_string()])
        .env("ISOGROUP_TOKEN", token)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()?)
}

async fn wait_ready(client: &reqwest::Client, url: &str, child: &mut Child) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait()? {
            return Err(format!("the companion exited: {status}").into());
        }
        if let Ok(r) = client.get(format!("{url}/v1/table")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err("the companion was not ready within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The whole table as served now, parsed and hashed.
async fn fetch_whole(client: &reqwest::Client, url: &str, limits: &Limits) -> Result<Held, Error> {
    let body = client.get(format!("{url}/v1/table")).send().await?.error_for_status()?.bytes().await?;
    Ok(Held::from_whole(&body, limits)?)
}

async fn metric(client: &reqwest::Client, url: &str, name: &str) -> Option<f64> {
    let text = client.get(format!("{url}/metrics")).send().await.ok()?.text().await.ok()?;
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn stop_companion(child: &mut Child) -> Result<(), Error> {
    Command::new("kill").args(["-TERM", &child.id().to_string()]).status()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            return Err("the companion did not stop within 30 s of SIGTERM".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

struct Change {
    version: u64,
    /// Per poller holding it with the right hash: from the write (after a
    /// restart: from the SIGTERM).
    latencies: Vec<Duration>,
    missing: usize,
    bytes: u64,
    cpu_ms: u64,
}

/// The Envoy arms' figures in one mode.
struct EnvoyResult {
    names: Vec<String>,
    idle_ns_per_s: Vec<f64>,
    /// Per change, per arm.
    changes: Vec<Vec<envoy::ArmCost>>,
    /// From the SIGTERM to the restart's change held, per arm.
    restart: Vec<envoy::ArmCost>,
    stats: Vec<BTreeMap<String, u64>>,
}

/// Poll latency and RSS before and during the flood.
struct FloodResult {
    probes_before: Vec<Duration>,
    probes_during: Vec<Duration>,
    rss_before_max_kib: u64,
    rss_during_max_kib: u64,
    rss_after_kib: u64,
    changes: Vec<Change>,
    counts: flood::Counts,
    ran: Duration,
    /// The companion's own view afterwards (pollers, reports refused).
    metrics: Vec<String>,
}

struct ModeResult {
    name: String,
    flood: Option<FloodResult>,
    envoy: Option<EnvoyResult>,
    table_bytes: usize,
    changes: Vec<Change>,
    restart: Change,
    /// SIGTERM to the new companion ready.
    restart_down: Duration,
    rss_max_kib: u64,
    hwm_kib: [u64; 2],
    mismatches: usize,
    polls: u64,
    delta_answers: u64,
    whole_answers: u64,
    refused: u64,
    errors: u64,
    client_cpu_ms: u64,
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// `p50 A / p99 B / max C ms` of sorted latencies, whole milliseconds.
fn spread(sorted: &[Duration]) -> String {
    format!(
        "p50 {:.0} / p99 {:.0} / max {:.0} ms",
        ms(quantile(sorted, 0.5)),
        ms(quantile(sorted, 0.99)),
        ms(quantile(sorted, 1.0))
    )
}

#[allow(clippy::too_many_arguments)]
async fn one_change(
    shared: &Shared,
    url: &str,
    token: &str,
    k: usize,
    pid: &str,
    ticks: u64,
    n: usize,
    timeout: Duration,
    expected: &mut HashMap<u64, u64>,
    since: Option<(Instant, u64, u64)>,
) -> Result<Change, Error> {
    let (t0, cpu0, bytes0) =
        since.unwrap_or_else(|| (Instant::now(), cpu_ticks(pid), shared.bytes.load(Ordering::Relaxed)));
    let cpu0 = if since.is_some() { 0 } else { cpu0 };
    // One service gains a lane instance: a real change every time.
    let service = isogroup_core::synth::service(k * 37 % shared.services.max(1));
    let group = isogroup_core::synth::group(k % shared.groups.max(1));
    let body = format!(r#"{{"cluster": "outbound|80|{group}|{service}.change-{k}.svc.cluster.local"}}"#);
    shared
        .client
        .put(format!("{url}/v1/services/{service}/groups/{group}"))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await?
        .error_for_status()?;
    let now = fetch_whole(&shared.client, url, &shared.limits).await?;
    expected.insert(now.version, now.hash);
    let deadline = Instant::now() + timeout;
    loop {
        let held = shared.per_hash.lock().unwrap_or_else(|e| e.into_inner()).get(&now.hash).copied();
        if held.unwrap_or(0) >= n || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let cpu_ms = cpu_ticks(pid).saturating_sub(cpu0) * 1000 / ticks;
    let bytes = shared.bytes.load(Ordering::Relaxed) - bytes0;
    let latencies = shared.install_latencies(t0, |i| i.1 == now.version && i.2 == now.hash);
    Ok(Change { version: now.version, missing: n.saturating_sub(latencies.len()), latencies, bytes, cpu_ms })
}

async fn run_mode(args: &Args, name: &str) -> Result<ModeResult, Error> {
    let delta = match name {
        "delta" => true,
        "whole" => false,
        other => return Err(format!("modes: unknown mode `{other}` (delta, whole)").into()),
    };
    let dir = args.work_dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let _ = std::fs::remove_file(dir.join("table.json.state"));
    let table_json = serde_json::to_vec(&isogroup_core::synth::table(args.services, args.groups))?;
    std::fs::write(dir.join("table.json"), &table_json)?;
    let token = format!("fanout-{}", std::process::id());
    let port = free_port()?;
    let url = format!("http://127.0.0.1:{port}");
    let ticks = clock_ticks_per_s();
    let limits = Limits::default();
    let client = reqwest::Client::builder().pool_idle_timeout(None).build()?;
    let mut child = start_companion(args, &dir, port, &token, 1)?;
    wait_ready(&client, &url, &mut child).await?;
    let initial = Arc::new(fetch_whole(&client, &url, &limits).await?);
    let mut expected = HashMap::from([(initial.version, initial.hash)]);
    let shared = Arc::new(Shared::new(args, client, vec![url.clone()], delta));
    let pid = Arc::new(AtomicU32::new(child.id()));
    let rss_max = Arc::new(AtomicU64::new(0));
    // The max since the driver last reset it (a phase's max).
    let rss_phase = Arc::new(AtomicU64::new(0));
    let sampler = {
        let (pid, rss_max, rss_phase) = (pid.clone(), rss_max.clone(), rss_phase.clone());
        tokio::spawn(async move {
            loop {
                let rss = status_kib(&pid.load(Ordering::Relaxed).to_string(), "VmRSS");
                rss_max.fetch_max(rss, Ordering::Relaxed);
                rss_phase.fetch_max(rss, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let client_cpu0 = cpu_ticks("self");
    let n = args.pollers;
    let pollers: Vec<_> = (0..n).map(|i| tokio::spawn(poller(i as u32, shared.clone(), initial.clone()))).collect();
    // Every poll held before the first change.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = metric(&shared.client, &url, "isogroup_companion_pollers").await.unwrap_or(0.0);
        if seen as usize >= n && shared.started.load(Ordering::Relaxed) >= n {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {seen} of {n} pollers reached the companion within 120 s").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut arms = match (&args.envoy, delta && !args.envoy_arms.is_empty()) {
        (Some(bin), true) => {
            let mut arms = envoy::Arms::start(bin, &args.envoy_arms, port, &dir, initial.version).await?;
            arms.measure_idle(Duration::from_secs(3)).await;
            Some(arms)
        }
        _ => None,
    };
    let settle = Duration::from_millis(args.envoy_settle_ms);
    let mut envoy_changes = Vec::new();
    let timeout = Duration::from_secs(args.timeout_s);
    let mut changes = Vec::new();
    let gap = Duration::from_millis(args.gap_ms.unwrap_or(args.min_publish_ms));
    for k in 1..=args.changes {
        if k > 1 {
            tokio::time::sleep(gap).await;
        }
        let pid_text = pid.load(Ordering::Relaxed).to_string();
        let envoy_before = arms.as_ref().map(envoy::Arms::snapshot);
        let change = one_change(&shared, &url, &token, k, &pid_text, ticks, n, timeout, &mut expected, None).await?;
        if let (Some(arms), Some(before)) = (&mut arms, &envoy_before) {
            tokio::time::sleep(settle).await;
            let costs = arms.cost_since(before, change.version, false).await;
            for (arm, cost) in arms.envoys.iter().zip(&costs) {
                eprintln!(
                    "  envoy {}: {:.1} ms CPU (net {:.1}; main {:.1}, workers {:.1}) over {:.0} ms, workers hold it: {}",
                    arm.name,
                    cost.split.total_ns() as f64 / 1e6,
                    cost.net_ns as f64 / 1e6,
                    cost.split.main_ns as f64 / 1e6,
                    cost.split.workers_ns as f64 / 1e6,
                    ms(cost.window),
                    cost.held
                );
            }
            envoy_changes.push(costs);
        }
        let l = &change.latencies;
        eprintln!(
            "{name} change {k:>2} v{}: {}, missing {}, {} bytes, CPU {} ms",
            change.version,
            spread(l),
            change.missing,
            change.bytes,
            change.cpu_ms
        );
        changes.push(change);
    }
    tokio::time::sleep(gap).await;
    let flood = if delta && args.flood_s > 0 {
        let pid_text = pid.load(Ordering::Relaxed).to_string();
        let last = changes.last().map_or(initial.version, |c| c.version);
        let current =
            Arc::new(flood::Current { version: AtomicU64::new(last), epoch: Mutex::new(initial.epoch.clone()) });
        let phase = Phase { url: &url, token: &token, pid: &pid_text, ticks, n, timeout, gap };
        Some(run_flood(args, &shared, &phase, &current, &rss_phase, &mut expected).await?)
    } else {
        None
    };
    // Restart on the same file: same epoch, the version goes on.
    let hwm_before = status_kib(&pid.load(Ordering::Relaxed).to_string(), "VmHWM");
    let envoy_before = arms.as_ref().map(envoy::Arms::snapshot);
    let t0 = Instant::now();
    let bytes0 = shared.bytes.load(Ordering::Relaxed);
    stop_companion(&mut child).await?;
    let mut child = start_companion(args, &dir, port, &token, 2)?;
    pid.store(child.id(), Ordering::Relaxed);
    wait_ready(&shared.client, &url, &mut child).await?;
    let restart_down = t0.elapsed();
    let pid_text = child.id().to_string();
    let k = args.changes + 1;
    let mut restart =
        one_change(&shared, &url, &token, k, &pid_text, ticks, n, timeout, &mut expected, Some((t0, 0, bytes0)))
            .await?;
    // The new process's CPU from its start (it did not exist before).
    restart.cpu_ms = cpu_ticks(&pid_text) * 1000 / ticks;
    let envoy = match (&mut arms, &envoy_before) {
        (Some(arms), Some(before)) => {
            tokio::time::sleep(settle).await;
            let restart = arms.cost_since(before, restart.version, true).await;
            let mut stats = Vec::new();
            for e in &arms.envoys {
                stats.push(e.stats().await);
            }
            Some(EnvoyResult {
                names: arms.envoys.iter().map(|e| e.name.clone()).collect(),
                idle_ns_per_s: arms.idle_ns_per_s().to_vec(),
                changes: envoy_changes,
                restart,
                stats,
            })
        }
        _ => None,
    };
    drop(arms);
    let hwm_after = status_kib(&pid_text, "VmHWM");
    shared.stop.store(true, Ordering::Relaxed);
    for p in &pollers {
        p.abort();
    }
    sampler.abort();
    let client_cpu_ms = cpu_ticks("self").saturating_sub(client_cpu0) * 1000 / ticks;
    stop_companion(&mut child).await?;
    let mismatches = shared
        .installs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|i| expected.get(&i.1).is_some_and(|hash| *hash != i.2))
        .count();
    Ok(ModeResult {
        name: name.to_owned(),
        flood,
        envoy,
        table_bytes: table_json.len(),
        changes,
        restart,
        restart_down,
        rss_max_kib: rss_max.load(Ordering::Relaxed),
        hwm_kib: [hwm_before, hwm_after],
        mismatches,
        polls: shared.polls.load(Ordering::Relaxed),
        delta_answers: shared.delta_answers.load(Ordering::Relaxed),
        whole_answers: shared.whole_answers.load(Ordering::Relaxed),
        refused: shared.refused.load(Ordering::Relaxed),
        errors: shared.errors.load(Ordering::Relaxed),
        client_cpu_ms,
    })
}

/// What a phase of the run needs to write and time changes.
struct Phase<'a> {
    url: &'a str,
    token: &'a str,
    pid: &'a str,
    ticks: u64,
    n: usize,
    timeout: Duration,
    gap: Duration,
}

/// Poll latency and RSS for `--flood-s / 4` before the flood, then during
/// it (with `--flood-changes` changes written, their fan-out timed).
async fn run_flood(
    args: &Args,
    shared: &Shared,
    phase: &Phase<'_>,
    current: &Arc<flood::Current>,
    rss_phase: &AtomicU64,
    expected: &mut HashMap<u64, u64>,
) -> Result<FloodResult, Error> {
    let span = Duration::from_secs(args.flood_s);
    rss_phase.store(0, Ordering::Relaxed);
    let probes_before = flood::probe_polls(phase.url, current, span / 4).await;
    let rss_before_max_kib = rss_phase.swap(0, Ordering::Relaxed);
    let started = flood::Flood::start(phase.url, current.clone())?;
    eprintln!("flood: started for {} s", args.flood_s);
    let t0 = Instant::now();
    let probes = {
        let (url, current) = (phase.url.to_owned(), current.clone());
        tokio::spawn(async move { flood::probe_polls(&url, &current, span).await })
    };
    let mut changes = Vec::new();
    for j in 0..args.flood_changes {
        tokio::time::sleep(phase.gap).await;
        let k = args.changes + 2 + j;
        let (url, token, pid) = (phase.url, phase.token, phase.pid);
        let change =
            one_change(shared, url, token, k, pid, phase.ticks, phase.n, phase.timeout, expected, None).await?;
        current.version.store(change.version, Ordering::Relaxed);
        let l = &change.latencies;
        eprintln!("flood change {j} v{}: {}, missing {}", change.version, spread(l), change.missing);
        changes.push(change);
    }
    if let Some(rest) = span.checked_sub(t0.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    let probes_during = probes.await.unwrap_or_default();
    let rss_during_max_kib = rss_phase.swap(0, Ordering::Relaxed);
    let (counts, ran) = started.stop().await;
    let rss_after_kib = status_kib(phase.pid, "VmRSS");
    let text = shared.client.get(format!("{}/metrics", phase.url)).send().await?.text().await?;
    let metrics = text
        .lines()
        .filter(|l| !l.starts_with('#') && (l.contains("pollers") || l.contains("report")))
        .map(str::to_owned)
        .collect();
    Ok(FloodResult {
        probes_before,
        probes_during,
        rss_before_max_kib,
        rss_during_max_kib,
        rss_after_kib,
        changes,
        counts,
        ran,
        metrics,
    })
}

fn report_flood(r: &ModeResult, f: &FloodResult) {
    let q = |l: &[Duration]| {
        format!(
            "p50 {:.1} / p99 {:.1} / max {:.1} ms",
            ms(quantile(l, 0.5)),
            ms(quantile(l, 0.99)),
            ms(quantile(l, 1.0))
        )
    };
    println!("\n[flood, {} mode] {:.1} s of unauthenticated load beside the held polls", r.name, f.ran.as_secs_f64());
    for (kind, sent) in &f.counts.sent {
        let statuses: Vec<String> = f
            .counts
            .statuses
            .iter()
            .filter(|((k, _), _)| k == kind)
            .map(|((_, status), n)| format!("{status}: {n}"))
            .collect();
        println!(
            "  {kind}: {sent} sent ({:.0}/s); answers {}",
            *sent as f64 / f.ran.as_secs_f64().max(1e-3),
            statuses.join(", ")
        );
    }
    println!(
        "  poll latency (an at-once 304, one client): before {} ({} probes); during {} ({} probes)",
        q(&f.probes_before),
        f.probes_before.len(),
        q(&f.probes_during),
        f.probes_during.len()
    );
    let mut before: Vec<Duration> = r.changes.iter().flat_map(|c| c.latencies.iter().copied()).collect();
    before.sort();
    let mut during: Vec<Duration> = f.changes.iter().flat_map(|c| c.latencies.iter().copied()).collect();
    during.sort();
    let missing: usize = f.changes.iter().map(|c| c.missing).sum();
    println!(
        "  change -> every poller holds it: before the flood {}; during it {} ({} changes, missing {missing})",
        q(&before),
        q(&during),
        f.changes.len()
    );
    println!(
        "  companion RSS: max {:.1} MiB before (the probes' span), max {:.1} MiB during, {:.1} MiB after",
        f.rss_before_max_kib as f64 / 1024.0,
        f.rss_during_max_kib as f64 / 1024.0,
        f.rss_after_kib as f64 / 1024.0
    );
    for line in &f.metrics {
        println!("  companion: {line}");
    }
}

/// The Kubernetes arm's figures.
struct KubeResult {
    table_bytes: usize,
    /// Kill → each poller holding the new leader's table.
    latencies: Vec<Duration>,
    missing: usize,
    /// Kill → the standby serving.
    takeover: Duration,
    bytes: u64,
    /// The new leader's CPU from the kill until every poller held its table.
    cpu_ms: u64,
    /// Max sampled VmRSS per replica, and VmHWM of the survivor.
    rss_max_kib: [u64; 2],
    hwm_kib: u64,
    epochs: [Option<String>; 2],
    /// The new leader's first table has the old one's services and lanes.
    same_lanes: bool,
    errors: u64,
    refused: u64,
    mismatches: usize,
}

/// `delta` pollers on two Kubernetes-mode replicas; SIGKILL the leader.
async fn run_kube(args: &Args) -> Result<KubeResult, Error> {
    let dir = args.work_dir.join("kube");
    std::fs::create_dir_all(&dir)?;
    let pods = ["companion-a", "companion-b"];
    eprintln!("kube: seeding the fake API server ({} services)", args.services);
    let fake = kube::cluster(args.services, args.groups, &pods).await;
    let client = reqwest::Client::builder().pool_idle_timeout(None).build()?;
    let (lease, publish) = (args.lease_ms, args.min_publish_ms);
    let mut leader = kube::Replica::start(&args.companion, &fake, pods[0], &dir, lease, publish)?;
    kube::wait_for("companion-a leading", Duration::from_secs(120), async || leader.serving(&client).await).await?;
    let mut standby = kube::Replica::start(&args.companion, &fake, pods[1], &dir, lease, publish)?;
    kube::wait_for("companion-b listed", Duration::from_secs(120), async || Ok(standby.listed(&client).await)).await?;
    let limits = Limits::default();
    // Every service in, every lane settled (`--settle-ms`, 5 s by default).
    let want = (0..args.services).map(|i| kube::pod_groups(i, args.groups).len()).sum::<usize>();
    let leader_url = leader.url.clone();
    kube::wait_for("the leader's table complete", Duration::from_secs(120), async || {
        let held = fetch_whole(&client, &leader_url, &limits).await?;
        Ok(held.raw.services.len() == args.services && lanes(&held) == want)
    })
    .await?;
    let initial = Arc::new(fetch_whole(&client, &leader.url, &limits).await?);
    let table_bytes = client.get(format!("{}/v1/table", leader.url)).send().await?.bytes().await?.len();
    let mut expected = HashMap::from([(initial.version, initial.hash)]);
    let shared = Arc::new(Shared::new(args, client, vec![leader.url.clone(), standby.url.clone()], true));
    let pids = Arc::new([AtomicU32::new(leader.pid()), AtomicU32::new(standby.pid())]);
    let rss_max = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
    let sampler = {
        let (pids, rss_max) = (pids.clone(), rss_max.clone());
        tokio::spawn(async move {
            loop {
                for (pid, max) in pids.iter().zip(rss_max.iter()) {
                    max.fetch_max(status_kib(&pid.load(Ordering::Relaxed).to_string(), "VmRSS"), Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let n = args.pollers;
    let pollers: Vec<_> = (0..n).map(|i| tokio::spawn(poller(i as u32, shared.clone(), initial.clone()))).collect();
    kube::wait_for("every poller held on the leader", Duration::from_secs(120), async || {
        let seen = metric(&shared.client, &leader_url, "isogroup_companion_pollers").await.unwrap_or(0.0);
        Ok(seen as usize >= n && shared.started.load(Ordering::Relaxed) >= n)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let bytes0 = shared.bytes.load(Ordering::Relaxed);
    let cpu0 = cpu_ticks(&standby.pid().to_string());
    eprintln!("kube: {n} pollers on {}; SIGKILL", leader.pod);
    let t0 = Instant::now();
    leader.kill()?;
    kube::wait_for("companion-b leading", Duration::from_secs(60), async || standby.serving(&shared.client).await)
        .await?;
    let takeover = t0.elapsed();
    let now = fetch_whole(&shared.client, &standby.url, &limits).await?;
    let same_lanes = now.raw.services.len() == initial.raw.services.len() && lanes(&now) == lanes(&initial);
    expected.insert(now.version, now.hash);
    let deadline = t0 + Duration::from_secs(args.timeout_s.max(30));
    while shared.holding(now.hash) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ticks = clock_ticks_per_s();
    let cpu_ms = cpu_ticks(&standby.pid().to_string()).saturating_sub(cpu0) * 1000 / ticks;
    let bytes = shared.bytes.load(Ordering::Relaxed) - bytes0;
    let latencies = shared.install_latencies(t0, |i| i.2 == now.hash);
    let hwm_kib = status_kib(&standby.pid().to_string(), "VmHWM");
    shared.stop.store(true, Ordering::Relaxed);
    for p in &pollers {
        p.abort();
    }
    sampler.abort();
    drop(standby);
    let mismatches = shared
        .installs
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|i| i.2 != initial.hash && i.2 != now.hash)
        .count();
    Ok(KubeResult {
        table_bytes,
        missing: n.saturating_sub(latencies.len()),
        latencies,
        takeover,
        bytes,
        cpu_ms,
        rss_max_kib: [rss_max[0].load(Ordering::Relaxed), rss_max[1].load(Ordering::Relaxed)],
        hwm_kib,
        epochs: [initial.epoch.clone(), now.epoch.clone()],
        same_lanes,
        errors: shared.errors.load(Ordering::Relaxed),
        refused: shared.refused.load(Ordering::Relaxed),
        mismatches,
    })
}

/// Clusters (service lanes, base included) in a table.
fn lanes(held: &Held) -> usize {
    held.raw.services.values().map(|s| s.clusters.len()).sum()
}

fn report_kube(args: &Args, k: &KubeResult) {
    let l = &k.latencies;
    println!(
        "\n[kube] two replicas over the fake API server, --lease-ms {}, {} pollers (delta=1), table {} bytes; epoch {:?} -> {:?}",
        args.lease_ms, args.pollers, k.table_bytes, k.epochs[0], k.epochs[1]
    );
    println!(
        "  SIGKILL of the leader -> every poller holds the new leader's table: {}, missing {}; the standby served after {:.0} ms",
        spread(l),
        k.missing,
        ms(k.takeover)
    );
    println!(
        "  the new leader's first table has the old one's services and lanes: {}; bytes after the kill {}; new leader CPU {} ms",
        k.same_lanes, k.bytes, k.cpu_ms
    );
    println!(
        "  RSS: max sampled {:.1} MiB (the killed leader), {:.1} MiB (the new leader; VmHWM {:.1} MiB)",
        k.rss_max_kib[0] as f64 / 1024.0,
        k.rss_max_kib[1] as f64 / 1024.0,
        k.hwm_kib as f64 / 1024.0
    );
    println!(
        "  errors {} (refused polls while no replica led count here), refused tables {}, other tables installed {}",
        k.errors, k.refused, k.mismatches
    );
}

fn median(mut values: Vec<u64>) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn report(args: &Args, results: &[ModeResult]) {
    println!(
        "\nfan-out: {} pollers, {} services x {} lanes, {} changes + 1 after a restart, --min-publish-ms {}, {} ms between changes",
        args.pollers,
        args.services,
        args.groups,
        args.changes,
        args.min_publish_ms,
        args.gap_ms.unwrap_or(args.min_publish_ms)
    );
    for r in results {
        let mut all: Vec<Duration> = r.changes.iter().flat_map(|c| c.latencies.iter().copied()).collect();
        all.sort();
        let worst_p99 = r.changes.iter().map(|c| quantile(&c.latencies, 0.99)).max().unwrap_or_default();
        let missing: usize = r.changes.iter().map(|c| c.missing).sum();
        let bytes: Vec<u64> = r.changes.iter().map(|c| c.bytes).collect();
        let cpu: Vec<u64> = r.changes.iter().map(|c| c.cpu_ms).collect();
        let rl = &r.restart.latencies;
        println!("\n[{}] table {} bytes", r.name, r.table_bytes);
        println!(
            "  change -> every poller holds it: {} over all {} samples; worst change's p99 {:.0} ms; missing {}",
            spread(&all),
            all.len(),
            ms(worst_p99),
            missing
        );
        println!(
            "  restart (SIGTERM -> every poller holds the next change): {}, missing {}; down {:.0} ms; new process CPU {} ms, bytes {}",
            spread(rl),
            r.restart.missing,
            ms(r.restart_down),
            r.restart.cpu_ms,
            r.restart.bytes
        );
        println!(
            "  bytes per change: median {} (min {}, max {}); total over the {} changes {} (+{} restart)",
            median(bytes.clone()),
            bytes.iter().min().unwrap_or(&0),
            bytes.iter().max().unwrap_or(&0),
            bytes.len(),
            bytes.iter().sum::<u64>(),
            r.restart.bytes
        );
        println!(
            "  companion CPU per change: median {} ms (max {}); total {} ms",
            median(cpu.clone()),
            cpu.iter().max().unwrap_or(&0),
            cpu.iter().sum::<u64>()
        );
        println!(
            "  companion RSS: max sampled {:.1} MiB; VmHWM {:.1} MiB before the restart, {:.1} MiB after",
            r.rss_max_kib as f64 / 1024.0,
            r.hwm_kib[0] as f64 / 1024.0,
            r.hwm_kib[1] as f64 / 1024.0
        );
        println!(
            "  answers: {} polls, {} deltas, {} whole, {} refused, {} errors; hash mismatches {}; client CPU {} ms",
            r.polls, r.delta_answers, r.whole_answers, r.refused, r.errors, r.mismatches, r.client_cpu_ms
        );
    }
    for r in results {
        if let Some(e) = &r.envoy {
            report_envoy(&r.name, e);
        }
        if let Some(f) = &r.flood {
            report_flood(r, f);
        }
    }
    if let [a, b] = results {
        let total = |r: &ModeResult| r.changes.iter().map(|c| c.bytes).sum::<u64>().max(1) as f64;
        let cpu = |r: &ModeResult| r.changes.iter().map(|c| c.cpu_ms).sum::<u64>().max(1) as f64;
        println!(
            "\n{} / {}: bytes {:.1}x, companion CPU {:.1}x (same run)",
            b.name,
            a.name,
            total(b) / total(a),
            cpu(b) / cpu(a)
        );
    }
}

fn median_f(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn report_envoy(mode: &str, e: &EnvoyResult) {
    println!(
        "\n[envoy arms, {mode} mode] CPU of the whole Envoy process (every thread: the workers' VMs, the main thread's VM and poller), from the write until every load poller holds it + settle, no request traffic; net = less the idle rate over the window"
    );
    let mut medians = Vec::new();
    for (i, name) in e.names.iter().enumerate() {
        let costs: Vec<&envoy::ArmCost> = e.changes.iter().filter_map(|c| c.get(i)).collect();
        let net: Vec<f64> = costs.iter().map(|c| c.net_ns as f64 / 1e6).collect();
        let total: Vec<f64> = costs.iter().map(|c| c.split.total_ns() as f64 / 1e6).collect();
        let main: Vec<f64> = costs.iter().map(|c| c.split.main_ns as f64 / 1e6).collect();
        let workers: Vec<f64> = costs.iter().map(|c| c.split.workers_ns as f64 / 1e6).collect();
        let held = costs.iter().filter(|c| c.held).count();
        let idle = e.idle_ns_per_s.get(i).copied().unwrap_or(0.0) / 1e6;
        let m = median_f(net.clone());
        medians.push(m);
        println!(
            "  {name}: per change median net {m:.2} ms (mean {:.2}, max {:.2}); gross median {:.2} ms = main {:.2} + workers {:.2}; idle {idle:.2} ms/s; workers served the version after {held} of {} changes",
            net.iter().sum::<f64>() / net.len().max(1) as f64,
            net.iter().copied().fold(0.0, f64::max),
            median_f(total),
            median_f(main),
            median_f(workers),
            costs.len()
        );
        if let Some(r) = e.restart.get(i) {
            println!(
                "  {name}: restart (SIGTERM -> both workers serve its change, debug requests included, {:.0} ms): net {:.2} ms (main {:.2}, workers {:.2}); workers hold it: {}",
                ms(r.window),
                r.net_ns as f64 / 1e6,
                r.split.main_ns as f64 / 1e6,
                r.split.workers_ns as f64 / 1e6,
                r.held
            );
        }
        if let Some(stats) = e.stats.get(i) {
            let shown: Vec<String> = stats.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!("  {name}: filter stats {}", shown.join(" "));
        }
    }
    if let Some(first) = medians.first().copied() {
        for (name, m) in e.names.iter().zip(&medians).skip(1) {
            println!("  {} / {name}: median net CPU per change {:.1}x (same run)", e.names[0], first / m.max(1e-3));
        }
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let mut results = Vec::new();
    let mut kube_result = None;
    for mode in &args.modes {
        if mode == "kube" {
            eprintln!("mode kube: {} pollers, two replicas", args.pollers);
            match run_kube(&args).await {
                Ok(k) => kube_result = Some(k),
                Err(e) => {
                    eprintln!("fanout: kube: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
            continue;
        }
        eprintln!("mode {mode}: {} pollers", args.pollers);
        match run_mode(&args, mode).await {
            Ok(result) => results.push(result),
            Err(e) => {
                eprintln!("fanout: {mode}: {e}");
                return std::process::ExitCode::FAILURE;
            }
        }
    }
    report(&args, &results);
    if let Some(k) = &kube_result {
        report_kube(&args, k);
    }
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn whole(version: u64, cluster: &str) -> Vec<u8> {
        let mut raw = isogroup_core::synth::table(5, 3);
        raw.version = version;
        raw.services.get_mut("svc-1").unwrap().clusters.insert("g-2".to_owned(), cluster.to_owned());
        serde_json::to_vec(&raw).unwrap()
    }

    #[test]
    fn a_delta_applied_holds_the_hash_of_the_whole_table_it_makes() {
        let limits = Limits::default();
        let base = Held::from_whole(&whole(1, "old"), &limits).unwrap();
        let target = Held::from_whole(&whole(2, "new"), &limits).unwrap();
        let mut service = serde_json::to_value(&isogroup_core::synth::table(5, 3).services["svc-1"]).unwrap();
        service["clusters"]["g-2"] = "new".into();
        let delta = serde_json::json!({"base": {"version": 1}, "version": 2, "set": {"svc-1": service}});
        let applied = base.with_delta(&serde_json::to_vec(&delta).unwrap(), &limits).unwrap();
        assert_eq!((applied.version, applied.hash), (2, target.hash));
        let other = Held::from_whole(&whole(2, "other"), &limits).unwrap();
        assert_ne!(applied.hash, other.hash, "a different table must not pass the hash check");
    }

    #[test]
    fn a_delta_onto_another_base_is_refused() {
        let limits = Limits::default();
        let base = Held::from_whole(&whole(1, "old"), &limits).unwrap();
        let delta = br#"{"base": {"version": 7}, "version": 8, "set": {}}"#;
        assert!(base.with_delta(delta, &limits).is_err());
    }

    #[test]
    fn the_same_answer_bytes_are_applied_once_and_other_bytes_apart() {
        let limits = Limits::default();
        let memo = Memo::default();
        let first = memo.whole((1, None), Bytes::from(whole(1, "a")), &limits).unwrap();
        let again = memo.whole((1, None), Bytes::from(whole(1, "a")), &limits).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let different = memo.whole((1, None), Bytes::from(whole(1, "b")), &limits).unwrap();
        assert_ne!(different.hash, first.hash);
    }

    #[test]
    fn quantiles_are_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&samples, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&samples, 0.99), Duration::from_millis(99));
        assert_eq!(quantile(&samples, 1.0), Duration::from_millis(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn cpu_ticks_read_this_process() {
        // utime + stime of a live process: never decreasing; its RSS is above zero.
        let before = cpu_ticks("self");
        assert!(cpu_ticks("self") >= before);
        assert!(status_kib("self", "VmRSS") > 0);
    }
}
