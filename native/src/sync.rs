//! Companion sync for the native build: filter configurations long-poll
//! the companion with config-level HTTP callouts on Envoy's main thread
//! (the same requests as the wasm build's poller: `?after=<version>
//! [&epoch=<e>]&wait=<s>[&delta=1]`, `x-isogroup-poller`), take each newer
//! table or delta there (`holding.rs`), and publish the table; workers
//! pick it up by its generation.
//!
//! One poller and one table per source per process: configurations with
//! the same source (two listeners, or the old and new config of an LDS
//! update) join one registry entry; the first live member polls, the
//! others wait, and when it goes the next one takes over from the version
//! held. A new configuration has the process's table from its first
//! stream.
//!
//! A source is polled by one of two owners (`Owner`): a filter
//! configuration, or the module's bootstrap extension (`bootstrap.rs`, one
//! per process, made before any listener, so it is the source's first member
//! and polls it). Envoy 1.40 gives a filter configuration no timer: its
//! backoff is a module thread that sleeps, then commits an event to the
//! configuration's main-thread scheduler (the scheduler sits behind a lock
//! that the configuration's destruction takes, so no commit outlives it); a
//! bootstrap extension has real main-thread timers and uses them. The
//! deciding cluster specifier reads a source a bootstrap extension polls
//! (`bootstrap_source`).
//!
//! Workers never lock per request: each keeps, per configuration, the
//! table of the generation it last saw (`Rc`, worker-local) and looks at
//! the shared generation (one atomic load) before each stream.

use core::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isogroup_core::delta::DELTA_CONTENT_TYPE;
use isogroup_core::{CompanionSource, Limits, Table, TableError};

use crate::abi::{log, BootstrapHandle, Level, MainThreadConfig, Scheduler, Timer};
use crate::holding::{Held, Holding, Taken};

/// Backoff bounds after a failed poll, as the wasm build's.
const BACKOFF_MIN_MS: u64 = 250;
const BACKOFF_MAX_MS: u64 = 10_000;
/// Scheduled events: poll now; refresh the table-age gauges.
pub const EVENT_POLL: u64 = 1;
pub const EVENT_AGE: u64 = 2;
/// How often the table-age gauges are refreshed.
pub const AGE_PERIOD: Duration = Duration::from_secs(1);

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
        let mut slot = lock(&self.table);
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
        let table = lock(&published.table).clone().map(Rc::new);
        cache.push(Cached { source: Arc::downgrade(published), generation, table: table.clone() });
        table
    })
}

/// One source's poller state and table, shared by every configuration of
/// the process that names the source. Main thread only, but for
/// `published` (a `Mutex` keeps the configurations `Sync`).
struct SourceState {
    /// The table held (its stamp, and the table as read for deltas).
    holding: Holding,
    /// Every live configuration of this source, oldest first: the first polls.
    members: Vec<Member>,
    failures: u32,
    /// The unknown-fields warning is given once per source.
    told_unknown: bool,
    /// When the companion last answered (ms), else when the source started.
    ok_at_ms: u64,
}

struct Member {
    id: u64,
    wake: Wake,
    /// Where this member shows the table's age.
    age_gauge: Option<(Owner, usize)>,
}

/// How a member is woken for its next poll.
enum Wake {
    /// A filter configuration: its scheduler, committed from any thread.
    Filter(Weak<Mutex<Option<Scheduler>>>),
    /// A bootstrap extension: its poll timer, armed on the main thread only.
    Bootstrap(Weak<Timer>),
}

/// The Envoy object a poller calls through (main thread only).
#[derive(Clone, Copy)]
pub enum Owner {
    Filter(MainThreadConfig),
    Bootstrap(BootstrapHandle),
}

impl Owner {
    fn set_gauge(&self, id: usize, value: u64) {
        match self {
            Owner::Filter(e) => e.set_gauge(id, value),
            Owner::Bootstrap(e) => e.set_gauge(id, value),
        }
    }

    fn increment_counter(&self, id: usize, by: u64) {
        match self {
            Owner::Filter(e) => e.increment_counter(id, by),
            Owner::Bootstrap(e) => e.increment_counter(id, by),
        }
    }

    fn callout(&self, cluster: &str, headers: &[(&str, &[u8])], timeout_ms: u64) -> Option<u64> {
        match self {
            Owner::Filter(e) => e.callout(cluster, headers, timeout_ms),
            Owner::Bootstrap(e) => e.callout(cluster, headers, timeout_ms),
        }
    }
}

/// What one source's table is compiled with: the source, the base group,
/// the limits. Two configurations share a source when these are equal.
pub type SourceKey = (CompanionSource, String, Limits);

struct SharedSource {
    /// What a table is compiled with: the source, the base group, the limits.
    key: SourceKey,
    published: Arc<Published>,
    state: Mutex<SourceState>,
}

static SOURCES: Mutex<Vec<Weak<SharedSource>>> = Mutex::new(Vec::new());
static NEXT_MEMBER: AtomicU64 = AtomicU64::new(1);

/// The process's entry for `key`, made on first use (`true`: made now);
/// gone with its last configuration.
fn join(key: SourceKey) -> (Arc<SharedSource>, bool) {
    let mut sources = lock(&SOURCES);
    sources.retain(|w| w.strong_count() > 0);
    if let Some(found) = sources.iter().filter_map(Weak::upgrade).find(|s| s.key == key) {
        return (found, false);
    }
    let shared = Arc::new(SharedSource {
        key,
        published: Published::new(),
        state: Mutex::new(SourceState {
            holding: Holding::default(),
            members: Vec::new(),
            failures: 0,
            told_unknown: false,
            ok_at_ms: now_ms(),
        }),
    });
    sources.push(Arc::downgrade(&shared));
    (shared, true)
}

/// A source a bootstrap extension of this process polls, as the deciding
/// cluster specifier reads it: its table per worker (`current`).
pub struct SourceReader {
    shared: Arc<SharedSource>,
}

impl SourceReader {
    /// The table a request on this worker is decided against; `None`
    /// before the first one.
    pub fn current(&self) -> Option<WorkerTable> {
        current(&self.shared.published)
    }
}

/// The source `key` if a bootstrap extension of this process polls it; else
/// the companion clusters of the sources bootstrap extensions do poll (for
/// the configuration's error).
pub fn bootstrap_source(key: &SourceKey) -> Result<SourceReader, Vec<String>> {
    let sources: Vec<Arc<SharedSource>> = lock(&SOURCES).iter().filter_map(Weak::upgrade).collect();
    let polled = |s: &SharedSource| lock(&s.state).members.iter().any(|m| matches!(m.wake, Wake::Bootstrap(_)));
    if let Some(shared) = sources.iter().find(|s| s.key == *key && polled(s)) {
        return Ok(SourceReader { shared: shared.clone() });
    }
    Err(sources
        .iter()
        .filter(|s| polled(s))
        .map(|s| format!("{:?} {:?} (wait_s {})", s.key.0.cluster, s.key.0.path, s.key.0.wait_s))
        .collect())
}

/// A filter config has no timer: a module thread wakes the polling
/// configuration every second to refresh the table-age gauges; it ends
/// with the source.
fn start_age_ticks(source: Weak<SharedSource>) {
    let spawned = std::thread::Builder::new().name("isogroup-age".into()).spawn(move || loop {
        std::thread::sleep(AGE_PERIOD);
        let Some(source) = source.upgrade() else { return };
        // A bootstrap extension refreshes the gauges with its own timer.
        let first = lock(&source.state).members.first().and_then(|m| match &m.wake {
            Wake::Filter(scheduler) => scheduler.upgrade(),
            Wake::Bootstrap(_) => None,
        });
        if let Some(scheduler) = first {
            commit(&scheduler, EVENT_AGE);
        }
    });
    if let Err(e) = spawned {
        log(Level::Error, &format!("isogroup: no table-age thread ({e}): isogroup_table_age_seconds stays 0"));
    }
}

/// The process's poller id: the companion counts pollers by it.
fn poller_id() -> &'static str {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(|| format!("envoy-native-{:x}-{}", now_ms(), std::process::id()))
}

/// One configuration's part in its source's polling.
pub struct Poller {
    id: u64,
    shared: Arc<SharedSource>,
    envoy: Owner,
    next: NextPoll,
    /// This configuration's callout in flight (main thread only).
    in_flight: Mutex<Option<u64>>,
    pub published: Arc<Published>,
    metrics: SyncMetrics,
}

/// How a poller gets its next poll on the main thread.
enum NextPoll {
    /// A filter configuration's scheduler (`None` once the configuration
    /// is being destroyed); a delay is a module thread's sleep.
    Filter(Arc<Mutex<Option<Scheduler>>>),
    /// A bootstrap extension's poll timer.
    Bootstrap(Arc<Timer>),
}

/// The sync's metrics, defined by each configuration (ids are per configuration).
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncMetrics {
    pub version: Option<usize>,
    pub age: Option<usize>,
    pub updates: Option<usize>,
    pub rejects: Option<usize>,
    pub fetches: Option<usize>,
    pub delta_fallbacks: Option<usize>,
}

impl Poller {
    /// A filter configuration's part: it polls if it is the source's first member.
    pub fn start(
        source: CompanionSource,
        base_group: String,
        limits: Limits,
        envoy: MainThreadConfig,
        metrics: SyncMetrics,
    ) -> Poller {
        let scheduler = Arc::new(Mutex::new(Some(envoy.scheduler())));
        let wake = Wake::Filter(Arc::downgrade(&scheduler));
        let (poller, first, made) = Poller::join(
            (source, base_group, limits),
            Owner::Filter(envoy),
            NextPoll::Filter(scheduler.clone()),
            wake,
            metrics,
        );
        if made {
            start_age_ticks(Arc::downgrade(&poller.shared));
        }
        if first {
            // The first poll once the configuration is in place (config_new has returned).
            commit(&scheduler, EVENT_POLL);
        }
        poller
    }

    /// A bootstrap extension's part. Its first poll waits for `poll_soon`
    /// (callouts need the server initialized); it fires `timer` for each
    /// next poll.
    pub fn start_bootstrap(key: SourceKey, envoy: BootstrapHandle, timer: Arc<Timer>, metrics: SyncMetrics) -> Poller {
        let wake = Wake::Bootstrap(Arc::downgrade(&timer));
        Poller::join(key, Owner::Bootstrap(envoy), NextPoll::Bootstrap(timer), wake, metrics).0
    }

    /// Joins the source as its last member: (the part, whether it is the
    /// first member, whether the source was made now).
    fn join(key: SourceKey, envoy: Owner, next: NextPoll, wake: Wake, metrics: SyncMetrics) -> (Poller, bool, bool) {
        let (shared, made) = join(key);
        let id = NEXT_MEMBER.fetch_add(1, Ordering::Relaxed);
        let (first, held) = {
            let mut state = lock(&shared.state);
            let age_gauge = metrics.age.map(|g| (envoy, g));
            state.members.push(Member { id, wake, age_gauge });
            (state.members.len() == 1, state.holding.held().cloned())
        };
        // A configuration joining a source that has a table shows its version.
        if let (Some(gauge), Some(held)) = (metrics.version, held) {
            envoy.set_gauge(gauge, held.version);
        }
        let published = shared.published.clone();
        let poller = Poller { id, shared, envoy, next, in_flight: Mutex::new(None), published, metrics };
        (poller, first, made)
    }

    /// Main thread: the first poll of a bootstrap extension's part, when it
    /// polls the source (the server is initialized).
    pub fn poll_soon(&self) {
        if let (NextPoll::Bootstrap(timer), true) = (&self.next, self.is_polling_member()) {
            timer.enable(0);
        }
    }

    fn is_polling_member(&self) -> bool {
        lock(&self.shared.state).members.first().is_some_and(|m| m.id == self.id)
    }

    /// Main thread: a scheduled event.
    pub fn on_scheduled(&self, event: u64) {
        if !self.is_polling_member() {
            return;
        }
        match event {
            EVENT_POLL => self.poll(),
            EVENT_AGE => {
                let state = lock(&self.shared.state);
                let age_s = now_ms().saturating_sub(state.ok_at_ms) / 1000;
                for (envoy, gauge) in state.members.iter().filter_map(|m| m.age_gauge) {
                    envoy.set_gauge(gauge, age_s);
                }
            }
            _ => {}
        }
    }

    fn poll(&self) {
        if lock(&self.in_flight).is_some() {
            return;
        }
        let source = &self.shared.key.0;
        let path = lock(&self.shared.state).holding.poll_path(source);
        let headers: [(&str, &[u8]); 5] = [
            (":method", b"GET"),
            (":path", path.as_bytes()),
            (":authority", source.authority.as_bytes()),
            ("accept", b"application/json"),
            ("x-isogroup-poller", poller_id().as_bytes()),
        ];
        let timeout_ms = (u64::from(source.wait_s) + 5) * 1000;
        match self.envoy.callout(&source.cluster, &headers, timeout_ms) {
            Some(id) => *lock(&self.in_flight) = Some(id),
            None => self.failed(&format!("cannot call cluster {:?}", source.cluster)),
        }
    }

    /// Main thread: the companion's answer (`None`: reset or timed out).
    pub fn on_callout_done(&self, id: u64, answer: Answer) {
        {
            let mut in_flight = lock(&self.in_flight);
            if *in_flight != Some(id) {
                return;
            }
            *in_flight = None;
        }
        let Some((headers, body)) = answer else {
            return self.failed("companion unreachable or timed out");
        };
        let header = |name: &str| headers.iter().find(|(k, _)| k == name.as_bytes()).map(|(_, v)| v.as_slice());
        match header(":status").and_then(|s| isogroup_core::text::parse_u64(s.trim_ascii())) {
            Some(200) => {
                // The companion's ETag names the version: a table that is not
                // newer than the one held is not parsed again.
                if let Some(version) = header("etag").and_then(parse_etag) {
                    let epoch = header("x-isogroup-epoch").and_then(|e| core::str::from_utf8(e).ok());
                    let announced = Held { version, epoch: epoch.map(str::to_owned) };
                    if !self.is_newer(&announced) {
                        return self.answered();
                    }
                }
                if let Some(id) = self.metrics.fetches {
                    self.envoy.increment_counter(id, 1);
                }
                let delta = header("content-type").is_some_and(|t| t.trim_ascii() == DELTA_CONTENT_TYPE.as_bytes());
                self.accept(&body, delta)
            }
            Some(304) => self.answered(),
            Some(status) => self.failed(&format!("companion answered {status}")),
            None => self.failed("companion answered without a status"),
        }
    }

    /// Main thread: a hook of this part panicked (the barrier caught it),
    /// maybe between a callout's answer and the next poll: the source
    /// would stop being polled, so the next poll is scheduled as after a
    /// failure.
    pub fn recover_after_panic(&self) {
        lock(&self.in_flight).take();
        if self.is_polling_member() {
            self.back_off();
        }
    }

    /// A `200` answer: a whole table or a delta, taken onto the table held
    /// (main thread; one table per process).
    fn accept(&self, body: &[u8], delta: bool) {
        #[cfg(feature = "test-panic")]
        #[allow(clippy::panic)] // the point of the feature
        if body.windows(19).any(|w| w == b"isogroup-test-panic") {
            panic!("isogroup-test-panic: a companion answer");
        }
        let (_, base_group, limits) = &self.shared.key;
        let taken = lock(&self.shared.state).holding.take(body, delta, base_group, limits);
        let table = match taken {
            Taken::Newer { table, unknown } => {
                if !unknown.is_empty() && !core::mem::replace(&mut lock(&self.shared.state).told_unknown, true) {
                    log(
                        Level::Warn,
                        &format!("isogroup: table fields this filter does not know, ignored: {}", unknown.join(", ")),
                    );
                }
                table
            }
            Taken::NotNewer => return self.answered(),
            Taken::Rejected(e) => {
                if let Some(id) = self.metrics.rejects {
                    self.envoy.increment_counter(id, 1);
                }
                log(Level::Error, &format!("isogroup: table rejected, the last good one keeps serving: {e}"));
                return self.back_off();
            }
            // The next poll, at once, asks for the whole table.
            Taken::Discarded(e) => {
                self.discard(&e);
                return self.answered();
            }
        };
        let version = table.version();
        log(Level::Info, &format!("isogroup: table {version} accepted ({} services)", table.service_count()));
        if let Some(id) = self.metrics.updates {
            self.envoy.increment_counter(id, 1);
        }
        if let Some(id) = self.metrics.version {
            self.envoy.set_gauge(id, version);
        }
        self.published.publish(table);
        self.answered();
    }

    /// A delta that does not apply: counted, and said.
    fn discard(&self, e: &TableError) {
        if let Some(id) = self.metrics.delta_fallbacks {
            self.envoy.increment_counter(id, 1);
        }
        log(Level::Warn, &format!("isogroup: table delta discarded, the whole table is taken instead: {e}"));
    }

    fn is_newer(&self, held: &Held) -> bool {
        lock(&self.shared.state).holding.is_newer(held)
    }

    /// A good answer: the next long poll right away.
    fn answered(&self) {
        let failures = {
            let mut state = lock(&self.shared.state);
            state.ok_at_ms = now_ms();
            core::mem::take(&mut state.failures)
        };
        if failures > 0 {
            log(Level::Info, "isogroup: companion reachable again");
        }
        self.poll();
    }

    fn failed(&self, why: &str) {
        if lock(&self.shared.state).failures == 0 {
            log(Level::Warn, &format!("isogroup: {why}"));
        }
        self.back_off();
    }

    fn back_off(&self) {
        let failures = {
            let mut state = lock(&self.shared.state);
            state.failures = state.failures.saturating_add(1);
            state.failures
        };
        let base = BACKOFF_MIN_MS.saturating_mul(1 << failures.min(10)).min(BACKOFF_MAX_MS);
        // Jitter from the clock, so Envoys that lost the companion together do not retry together.
        let delay = base - base / 4 + now_ms() % (base / 2 + 1);
        let scheduler = match &self.next {
            NextPoll::Bootstrap(timer) => return timer.enable(delay),
            NextPoll::Filter(scheduler) => Arc::downgrade(scheduler),
        };
        let spawned = std::thread::Builder::new().name("isogroup-backoff".into()).spawn(move || {
            std::thread::sleep(Duration::from_millis(delay));
            if let Some(scheduler) = scheduler.upgrade() {
                commit(&scheduler, EVENT_POLL);
            }
        });
        if let Err(e) = spawned {
            log(Level::Error, &format!("isogroup: no backoff thread ({e}); polling stops"));
        }
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        // No commit to this configuration after this: a sleeping backoff
        // thread finds `None`. Its callout in flight goes with it.
        if let NextPoll::Filter(scheduler) = &self.next {
            lock(scheduler).take();
        }
        let successor = {
            let mut state = lock(&self.shared.state);
            let was_polling = state.members.first().is_some_and(|m| m.id == self.id);
            state.members.retain(|m| m.id != self.id);
            match state.members.first() {
                Some(Member { wake: Wake::Filter(s), .. }) if was_polling => s.upgrade().map(NextPoll::Filter),
                Some(Member { wake: Wake::Bootstrap(t), .. }) if was_polling => t.upgrade().map(NextPoll::Bootstrap),
                _ => None,
            }
        };
        // The next configuration of the source polls on, from the version
        // held (configurations are destroyed on the main thread, where a
        // bootstrap extension's timer is armed).
        match successor {
            Some(NextPoll::Filter(scheduler)) => commit(&scheduler, EVENT_POLL),
            Some(NextPoll::Bootstrap(timer)) => timer.enable(0),
            None => {}
        }
    }
}

/// `"42"` (or a weak `W/"42"`) → 42.
fn parse_etag(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    let value = value.strip_prefix(b"W/").unwrap_or(value);
    isogroup_core::text::parse_u64(value.strip_prefix(b"\"")?.strip_suffix(b"\"")?)
}

fn commit(scheduler: &Mutex<Option<Scheduler>>, event: u64) {
    if let Some(s) = lock(scheduler).as_ref() {
        s.commit(event);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// For the unit tests of the registry's readers (no Envoy).
#[cfg(test)]
pub mod tests_support {
    use super::{join, lock, Member, SourceKey, SourceReader, Wake, NEXT_MEMBER};

    /// Registers a source as a bootstrap extension polls it (without its timer).
    pub fn polled_by_a_bootstrap(key: SourceKey) -> SourceReader {
        let (shared, _) = join(key);
        let id = NEXT_MEMBER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        lock(&shared.state).members.push(Member { id, wake: Wake::Bootstrap(std::sync::Weak::new()), age_gauge: None });
        SourceReader { shared }
    }
}

#[cfg(test)]
mod tests;
