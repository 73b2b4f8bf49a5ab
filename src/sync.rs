//! The table source seam: where a VM's table comes from after configure.
//!
//! Companion source: one VM per Envoy process (elected with a lease in shared
//! data) long-polls the companion and writes table + version to shared data.
//! Every VM checks the small version key on its tick and recompiles once per
//! new version; requests only ever read the VM-local compiled table.

use std::rc::Rc;
use std::time::Duration;

use isogroup_core::{CompanionSource, Source, Table};
use proxy_wasm::types::{LogLevel, Status};

use crate::host::{self, HostError};
use crate::metrics::{Counter, Gauge};
use crate::root::now_ms;
use crate::vm::Vm;

// Shared data is one namespace per vm_id, and Istio sets none: prefix keys.
const LEASE_KEY: &str = "isogroup/poller-lease";
const POLLER_ID_KEY: &str = "isogroup/poller-id";
const TABLE_KEY: &str = "isogroup/table";
const VERSION_KEY: &str = "isogroup/table-version";
const OK_AT_KEY: &str = "isogroup/table-ok-at";

/// A lapsed lease is taken over after this long (the holder renews each tick).
const LEASE_TTL_MS: u64 = 2_000;
const BACKOFF_MIN_MS: u64 = 250;
const BACKOFF_MAX_MS: u64 = 10_000;

pub enum TableSync {
    /// Inline table (or none): installed once at configure, never changes.
    Static,
    Companion(Follower),
}

impl TableSync {
    /// Installs what the source has at configure time. Nothing that leases
    /// or polls starts here: configure also runs in a throw-away canary VM.
    pub fn start(source: Source, vm: &Vm) -> TableSync {
        match source {
            Source::None => TableSync::Static,
            Source::Inline(table) => {
                vm.metrics.set(Gauge::TableVersion, table.version());
                vm.install(table);
                TableSync::Static
            }
            Source::Companion(source) => TableSync::Companion(Follower::new(source)),
        }
    }

    pub fn on_tick(&mut self, vm: &Rc<Vm>) {
        if let TableSync::Companion(f) = self {
            f.on_tick(vm);
        }
    }

    pub fn on_http_call_response(&mut self, vm: &Rc<Vm>, token: u32, body_size: usize) {
        if let TableSync::Companion(f) = self {
            f.on_response(vm, token, body_size);
        }
    }
}

pub struct Follower {
    source: CompanionSource,
    /// Version installed in this VM.
    local_version: Option<u64>,
    /// The outstanding poll, while this VM is the poller.
    in_flight: Option<u32>,
    holding: bool,
    failures: u32,
    next_poll_ms: u64,
}

impl Follower {
    fn new(source: CompanionSource) -> Follower {
        Follower { source, local_version: None, in_flight: None, holding: false, failures: 0, next_poll_ms: 0 }
    }

    fn on_tick(&mut self, vm: &Rc<Vm>) {
        let Some(now) = now_ms() else { return };
        self.follow(vm);
        self.holding = match take_lease(&vm.id, now) {
            Ok(held) => held,
            Err(e) => {
                log(LogLevel::Warn, &format!("poller lease: {e}"));
                false
            }
        };
        if !self.holding {
            return;
        }
        if let Ok((Some(ok_at), _)) = host::shared_get(OK_AT_KEY) {
            let age = now.saturating_sub(parse_u64(&ok_at).unwrap_or(now)) / 1000;
            vm.metrics.set(Gauge::TableAgeSeconds, age);
        }
        if self.in_flight.is_none() && now >= self.next_poll_ms {
            self.poll(vm, now);
        }
    }

    /// Installs a newer process-wide table in this VM, compiled once.
    fn follow(&mut self, vm: &Vm) {
        let Ok((Some(v), _)) = host::shared_get(VERSION_KEY) else { return };
        let Some(version) = parse_u64(&v) else { return };
        if self.local_version.is_some_and(|l| l >= version) {
            return;
        }
        let Ok((Some(bytes), _)) = host::shared_get(TABLE_KEY) else { return };
        match Table::from_json(&bytes, &vm.settings.base_group, &vm.settings.limits) {
            Ok(table) => {
                self.local_version = Some(table.version());
                vm.metrics.set(Gauge::TableVersion, table.version());
                vm.install(table);
            }
            Err(e) => {
                // The poller validated it with the same settings; seeing this means a bug.
                log(LogLevel::Error, &format!("shared table {version} does not compile here: {e}"));
                self.local_version = Some(version);
            }
        }
    }

    fn poll(&mut self, vm: &Vm, now: u64) {
        // `follow` ran first this tick: this VM holds the process's version.
        let after = self.local_version;
        let sep = if self.source.path.contains('?') { '&' } else { '?' };
        let path = match after {
            Some(v) => format!("{}{sep}after={v}&wait={}", self.source.path, self.source.wait_s),
            None => self.source.path.clone(),
        };
        let poller = poller_id(&vm.id, now);
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.source.authority.as_str()),
            ("accept", "application/json"),
            ("x-isogroup-poller", poller.as_str()),
        ];
        let timeout = Duration::from_secs(u64::from(self.source.wait_s) + 5);
        match host::dispatch_http_call(&self.source.cluster, headers, timeout) {
            Ok(token) => self.in_flight = Some(token),
            Err(e) => self.failed(now, &format!("cannot call cluster {:?}: {e}", self.source.cluster)),
        }
    }

    fn on_response(&mut self, vm: &Rc<Vm>, token: u32, body_size: usize) {
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        let now = now_ms().unwrap_or(0);
        let status = response_status();
        match status {
            Some(200) => {
                let body = host::http_call_response_body(body_size).ok().flatten().unwrap_or_default();
                self.accept(vm, &body, now);
            }
            Some(304) => self.answered(now),
            Some(s) => self.failed(now, &format!("companion answered {s}")),
            None => self.failed(now, "companion unreachable or timed out"),
        }
    }

    /// Validates a served table; a newer valid one goes to shared data for
    /// every VM, anything else is rejected whole and counted.
    fn accept(&mut self, vm: &Vm, body: &[u8], now: u64) {
        let table = match Table::from_json(body, &vm.settings.base_group, &vm.settings.limits) {
            Ok(t) => t,
            Err(e) => {
                // Every reject is logged (rare, and each one matters); the
                // poll backs off so garbage is not fetched in a loop.
                vm.metrics.count(Counter::TableRejects);
                log(LogLevel::Error, &format!("table rejected, the last good one keeps serving: {e}"));
                self.back_off(now);
                return;
            }
        };
        self.answered(now);
        let current = host::shared_get(VERSION_KEY).ok().and_then(|(v, _)| v).and_then(|v| parse_u64(&v));
        if current.is_some_and(|c| table.version() <= c) {
            return;
        }
        let version = table.version();
        // Table first, version second: a VM that sees the version finds the table.
        let written = host::shared_set(TABLE_KEY, body, None)
            .and_then(|()| host::shared_set(VERSION_KEY, version.to_string().as_bytes(), None));
        if let Err(e) = written {
            log(LogLevel::Error, &format!("cannot share table {version}: {e}"));
            return;
        }
        vm.metrics.count(Counter::TableUpdates);
        log(LogLevel::Info, &format!("vm {}: table {version} accepted ({} services)", vm.id, table.service_count()));
        self.local_version = Some(version);
        vm.metrics.set(Gauge::TableVersion, version);
        vm.install(table);
    }

    fn answered(&mut self, now: u64) {
        if self.failures > 0 {
            log(LogLevel::Info, "companion reachable again");
        }
        self.failures = 0;
        self.next_poll_ms = now;
        let _ = host::shared_set(OK_AT_KEY, now.to_string().as_bytes(), None);
    }

    /// A failed poll: logged when the companion first goes bad, then quiet.
    fn failed(&mut self, now: u64, why: &str) {
        if self.failures == 0 {
            log(LogLevel::Warn, why);
        }
        self.back_off(now);
    }

    fn back_off(&mut self, now: u64) {
        self.failures = self.failures.saturating_add(1);
        let backoff = BACKOFF_MIN_MS.saturating_mul(1 << self.failures.min(10)).min(BACKOFF_MAX_MS);
        self.next_poll_ms = now + backoff;
    }
}

/// Takes or renews the poller lease: `"<vm id> <expiry ms>"`. The key is
/// seeded first, because a CAS on a missing key always succeeds.
fn take_lease(me: &str, now: u64) -> Result<bool, HostError> {
    let (value, cas) = match host::shared_get(LEASE_KEY)? {
        (Some(v), cas) => (v, cas),
        (None, _) => {
            host::shared_set(LEASE_KEY, b"- 0", None)?;
            match host::shared_get(LEASE_KEY)? {
                (Some(v), cas) => (v, cas),
                (None, _) => return Ok(false),
            }
        }
    };
    let text = String::from_utf8_lossy(&value);
    let (holder, expiry) = text.split_once(' ').unwrap_or(("-", "0"));
    let expiry: u64 = expiry.parse().unwrap_or(0);
    if holder != me && expiry > now {
        return Ok(false);
    }
    let lease = format!("{me} {}", now + LEASE_TTL_MS);
    match host::shared_set(LEASE_KEY, lease.as_bytes(), cas) {
        Ok(()) => Ok(true),
        Err(HostError { status: Status::CasMismatch, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A poller id stable for the Envoy process (shared by all its VMs). Seeded
/// with `-`, then claimed with CAS, so racing VMs agree on one id. (Not an
/// empty seed: the host reports an empty value as no value.)
fn poller_id(vm_id: &str, now: u64) -> String {
    let mine = format!("envoy-{now:x}-{vm_id}");
    for _ in 0..4 {
        match host::shared_get(POLLER_ID_KEY) {
            Ok((Some(id), _)) if id != b"-" => return String::from_utf8_lossy(&id).into_owned(),
            Ok((Some(_), cas)) => {
                if host::shared_set(POLLER_ID_KEY, mine.as_bytes(), cas).is_ok() {
                    return mine;
                }
            }
            Ok((None, _)) => {
                let _ = host::shared_set(POLLER_ID_KEY, b"-", None);
            }
            Err(_) => break,
        }
    }
    mine
}

fn response_status() -> Option<u16> {
    let headers = host::http_call_response_headers().ok()?;
    let (_, v) = headers.iter().find(|(k, _)| k == ":status")?;
    std::str::from_utf8(v).ok()?.parse().ok()
}

fn parse_u64(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

fn log(level: LogLevel, message: &str) {
    host::log(level, &format!("isogroup: {message}"));
}
