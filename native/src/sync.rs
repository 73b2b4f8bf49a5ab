//! Companion sync for the native build: the configuration long-polls the
//! companion with config-level HTTP callouts on Envoy's main thread (the
//! same requests as the wasm build's poller: `?after=<version>[&epoch=<e>]
//! &wait=<s>`, `x-isogroup-poller`), compiles each newer table there, and
//! publishes it; workers pick it up by its generation.
//!
//! Envoy 1.40 gives a filter configuration no timer: a backoff is a module
//! thread that sleeps, then commits an event to the configuration's
//! main-thread scheduler (the scheduler sits behind a lock that the
//! configuration's destruction takes, so no commit outlives it).
//!
//! Workers never lock per request: each keeps, per configuration, the
//! table of the generation it last saw (`Rc`, worker-local) and looks at
//! the shared generation (one atomic load) before each stream.

use core::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isogroup_core::epoch::Stamp;
use isogroup_core::{CompanionSource, Limits, Table};

use crate::abi::{log, Level, MainThreadConfig, Scheduler};

/// Backoff bounds after a failed poll, as the wasm build's.
const BACKOFF_MIN_MS: u64 = 250;
const BACKOFF_MAX_MS: u64 = 10_000;
/// Scheduled events: poll now.
const EVENT_POLL: u64 = 1;

/// A worker's reference to a published table: a worker-local count over
/// the shared one, so streams copy it without touching a shared cache line.
#[allow(clippy::redundant_allocation)] // the point: `Rc` per worker over the one `Arc`
pub type WorkerTable = Rc<Arc<Table>>;

/// The companion's answer to a callout: headers and body (`None`: reset or timed out).
pub type Answer = Option<(Vec<(Vec<u8>, Vec<u8>)>, Vec<u8>)>;

/// The table of one configuration as workers read it.
pub struct Published {
    /// 0 until the first table; bumped with every table published.
    generation: AtomicU64,
    table: Mutex<Option<Arc<Table>>>,
}

impl Published {
    fn new() -> Arc<Published> {
        Arc::new(Published { generation: AtomicU64::new(0), table: Mutex::new(None) })
    }

    fn publish(&self, table: Table) {
        let mut slot = self.table.lock().unwrap_or_else(|e| e.into_inner());
        *slot = Some(Arc::new(table));
        self.generation.fetch_add(1, Ordering::Release);
    }
}

/// A worker's copy of the reference: refreshed when the generation moved.
struct Cached {
    source: Weak<Published>,
    generation: u64,
    table: Option<WorkerTable>,
}

thread_local! {
    static CACHE: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

/// The table a stream on this worker decides against (and keeps until its
/// response): no lock and no shared reference count unless it changed.
pub fn current(published: &Arc<Published>) -> Option<WorkerTable> {
    let generation = published.generation.load(Ordering::Acquire);
    CACHE.with(|cache| {
        let mut cache = cache.borrow_mut();
        if let Some(c) = cache.iter().find(|c| c.source.as_ptr() == Arc::as_ptr(published)) {
            if c.generation == generation {
                return c.table.clone();
            }
        }
        // A miss (rare): drop the entries of configurations that are gone.
        cache.retain(|c| c.source.strong_count() > 0 && c.source.as_ptr() != Arc::as_ptr(published));
        let table = published.table.lock().unwrap_or_else(|e| e.into_inner()).clone().map(Rc::new);
        cache.push(Cached { source: Arc::downgrade(published), generation, table: table.clone() });
        table
    })
}

/// The version (and epoch) of the table the poller holds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Held {
    version: u64,
    epoch: Option<String>,
}

impl Held {
    fn stamp(&self) -> Stamp<'_> {
        Stamp::new(self.epoch.as_deref(), self.version)
    }
}

/// Main-thread state of the poller (a `Mutex` only so the configuration is
/// `Sync`: workers never touch it).
struct State {
    held: Option<Held>,
    in_flight: Option<u64>,
    failures: u32,
}

pub struct Poller {
    source: CompanionSource,
    base_group: String,
    limits: Limits,
    envoy: MainThreadConfig,
    /// `None` once the configuration is being destroyed.
    scheduler: Arc<Mutex<Option<Scheduler>>>,
    state: Mutex<State>,
    pub published: Arc<Published>,
    poller_id: String,
    gauge_version: Option<usize>,
    counter_updates: Option<usize>,
    counter_rejects: Option<usize>,
}

impl Poller {
    pub fn start(
        source: CompanionSource,
        base_group: String,
        limits: Limits,
        envoy: MainThreadConfig,
        metrics: (Option<usize>, Option<usize>, Option<usize>),
    ) -> Poller {
        let scheduler = envoy.scheduler();
        // The first poll once the configuration is in place (config_new has returned).
        scheduler.commit(EVENT_POLL);
        let now = now_ms();
        Poller {
            source,
            base_group,
            limits,
            envoy,
            scheduler: Arc::new(Mutex::new(Some(scheduler))),
            state: Mutex::new(State { held: None, in_flight: None, failures: 0 }),
            published: Published::new(),
            poller_id: format!("envoy-native-{:x}-{}", now, std::process::id()),
            gauge_version: metrics.0,
            counter_updates: metrics.1,
            counter_rejects: metrics.2,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Main thread: a scheduled event.
    pub fn on_scheduled(&self, event: u64) {
        if event == EVENT_POLL {
            self.poll();
        }
    }

    fn poll(&self) {
        let path = {
            let state = self.state();
            if state.in_flight.is_some() {
                return;
            }
            let sep = if self.source.path.contains('?') { '&' } else { '?' };
            match &state.held {
                None => self.source.path.clone(),
                Some(Held { version, epoch: Some(e) }) => {
                    format!("{}{sep}after={version}&epoch={e}&wait={}", self.source.path, self.source.wait_s)
                }
                Some(Held { version, epoch: None }) => {
                    format!("{}{sep}after={version}&wait={}", self.source.path, self.source.wait_s)
                }
            }
        };
        let headers: [(&str, &[u8]); 5] = [
            (":method", b"GET"),
            (":path", path.as_bytes()),
            (":authority", self.source.authority.as_bytes()),
            ("accept", b"application/json"),
            ("x-isogroup-poller", self.poller_id.as_bytes()),
        ];
        let timeout_ms = (u64::from(self.source.wait_s) + 5) * 1000;
        match self.envoy.callout(&self.source.cluster, &headers, timeout_ms) {
            Some(id) => self.state().in_flight = Some(id),
            None => self.failed(&format!("cannot call cluster {:?}", self.source.cluster)),
        }
    }

    /// Main thread: the companion's answer (`None`: reset or timed out).
    pub fn on_callout_done(&self, id: u64, answer: Answer) {
        {
            let mut state = self.state();
            if state.in_flight != Some(id) {
                return;
            }
            state.in_flight = None;
        }
        let Some((headers, body)) = answer else {
            return self.failed("companion unreachable or timed out");
        };
        let header = |name: &str| headers.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice());
        match header(":status").and_then(|s| isogroup_core::text::parse_u64(s.trim_ascii())) {
            Some(200) => self.accept(&body),
            Some(304) => self.answered(),
            Some(status) => self.failed(&format!("companion answered {status}")),
            None => self.failed("companion answered without a status"),
        }
    }

    fn accept(&self, body: &[u8]) {
        let table = match Table::from_companion_json(body, &self.base_group, &self.limits) {
            Ok((table, _unknown)) => table,
            Err(e) => {
                if let Some(id) = self.counter_rejects {
                    self.envoy.increment_counter(id, 1);
                }
                log(Level::Error, &format!("isogroup: table rejected, the last good one keeps serving: {e}"));
                return self.back_off();
            }
        };
        let held = Held { version: table.version(), epoch: table.epoch().map(str::to_owned) };
        let newer = {
            let state = self.state();
            state.held.as_ref().is_none_or(|h| held.stamp().is_newer_than(&h.stamp()))
        };
        if newer {
            log(
                Level::Info,
                &format!("isogroup: table {} accepted ({} services)", held.version, table.service_count()),
            );
            if let Some(id) = self.gauge_version {
                self.envoy.set_gauge(id, held.version);
            }
            if let Some(id) = self.counter_updates {
                self.envoy.increment_counter(id, 1);
            }
            self.published.publish(table);
            self.state().held = Some(held);
        }
        self.answered();
    }

    /// A good answer: the next long poll right away.
    fn answered(&self) {
        let failures = core::mem::take(&mut self.state().failures);
        if failures > 0 {
            log(Level::Info, "isogroup: companion reachable again");
        }
        self.poll();
    }

    fn failed(&self, why: &str) {
        if self.state().failures == 0 {
            log(Level::Warn, &format!("isogroup: {why}"));
        }
        self.back_off();
    }

    fn back_off(&self) {
        let failures = {
            let mut state = self.state();
            state.failures = state.failures.saturating_add(1);
            state.failures
        };
        let base = BACKOFF_MIN_MS.saturating_mul(1 << failures.min(10)).min(BACKOFF_MAX_MS);
        // Jitter from the clock, so Envoys that lost the companion together do not retry together.
        let delay = base - base / 4 + now_ms() % (base / 2 + 1);
        let scheduler = Arc::downgrade(&self.scheduler);
        let spawned = std::thread::Builder::new().name("isogroup-backoff".into()).spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            if let Some(scheduler) = scheduler.upgrade() {
                if let Some(s) = scheduler.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    s.commit(EVENT_POLL);
                }
            }
        });
        if let Err(e) = spawned {
            log(Level::Error, &format!("isogroup: no backoff thread ({e}); polling stops"));
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // No commit after this: a sleeping backoff thread finds `None`.
        self.scheduler.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
