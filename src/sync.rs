//! The table source seam: where a VM's table comes from after configure.
//!
//! Companion source: one VM per Envoy process and table source (elected with
//! a lease in shared data) long-polls the companion and writes table + stamp
//! to shared data. Every VM checks the small stamp key on its tick and
//! recompiles once per newer table; requests only ever read the VM-local
//! compiled table. Tables are ordered by (epoch, version) (SPEC "Epoch and
//! order"): a wiped and re-seeded store, with a newer epoch, wins its Envoys
//! back; a lagging replica never makes one go back.
//!
//! Deltas (SPEC "Delivery to many proxies"): the poller asks `delta=1`
//! while it holds its table as read (`raw`); a delta is applied onto that
//! table only and, once valid, appended to the deltas shared after the
//! last whole table: a VM brings its own raw table on through those based
//! on it (usually just the last), and a VM that cannot (new, or too far
//! behind) reads the whole and brings it on through them all. A delta that
//! fails is discarded and counted; the poller then fetches the whole table
//! at once. After `MAX_SHARED_DELTAS`, or as many bytes of deltas as the
//! whole, the poller asks for the whole again: a VM that starts never
//! applies more than that, nor holds more than twice the whole's bytes.
//!
//! Keys are scoped by the source (`isogroup/src2-<hash>/…`, the hash of the
//! companion's cluster, authority and path; `src-` in the whole-only build,
//! whose `table` is always the stamp's, as before the deltas, so that the two
//! layouts never read each other's keys): two plugin configs in one
//! vm_id (Istio sets none) with different sources never see each other's
//! table, and configs that share a source share one poller and one table.

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use alloc::rc::Rc;
use core::time::Duration;

use crate::proxy::{LogLevel, Status};
use isogroup_core::cat;
#[cfg(feature = "table-deltas")]
use isogroup_core::delta::{self, DELTA_CONTENT_TYPE};
use isogroup_core::edge::fnv1a;
use isogroup_core::epoch::same;
pub use isogroup_core::epoch::Held;
use isogroup_core::text::{text_of, Hex};
use isogroup_core::{CompanionSource, RawTable, Source, Table, TableError};

use crate::host::{shared_value, Host, HostError};
use crate::metrics::{Counter, Gauge};
use crate::vm::Vm;

/// Stable per Envoy process, whatever the source: the companion counts pollers by it.
const POLLER_ID_KEY: &str = "isogroup/poller-id";

/// A lapsed lease is taken over after this long (the holder renews each tick).
pub const LEASE_TTL_MS: u64 = 2_000;
pub const BACKOFF_MIN_MS: u64 = 250;
pub const BACKOFF_MAX_MS: u64 = 10_000;
/// Deltas shared after a whole table before the poller asks for the whole
/// again: what a VM that starts then applies at most.
pub const MAX_SHARED_DELTAS: usize = 16;

/// Whether this build asks for deltas (SPEC "Delivery to many proxies").
const DELTAS: bool = cfg!(feature = "table-deltas");

/// The shared-data keys of one table source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    pub lease: String,
    /// The last whole table.
    pub table: String,
    /// The shared table's stamp, `"<version>[ <epoch>]"`: small, read each tick.
    pub stamp: String,
    /// The deltas after that table, in order (`delta::push_delta`).
    pub deltas: String,
    pub ok_at: String,
}

impl Keys {
    pub fn for_source(source: &CompanionSource) -> Keys {
        let mut id = Vec::with_capacity(source.cluster.len() + source.authority.len() + source.path.len() + 2);
        for part in [&source.cluster, &source.authority, &source.path] {
            id.extend_from_slice(part.as_bytes());
            id.push(0);
        }
        // The layout is in the prefix: this build's `table` is the last
        // whole, not the stamp's table as the whole-only layout's (and every
        // build's before the deltas) is, so during a rollout each layout
        // elects its own poller and no VM reads the other's keys.
        let layout = if DELTAS { "isogroup/src2-" } else { "isogroup/src-" };
        let prefix = cat!(layout, Hex { value: fnv1a(&id), width: 16 });
        Keys {
            lease: cat!(prefix, "/poller-lease"),
            table: cat!(prefix, "/table"),
            stamp: cat!(prefix, "/table-stamp"),
            deltas: cat!(prefix, "/table-deltas"),
            ok_at: cat!(prefix, "/table-ok-at"),
        }
    }
}

pub enum TableSync {
    /// Inline table (or none): installed once at configure, never changes.
    Static,
    Companion(Box<Follower>),
}

impl TableSync {
    /// Installs what the source has at configure time. Nothing that leases
    /// or polls starts here: configure also runs in a throw-away canary VM.
    pub fn start<H: Host>(source: Source, vm: &Vm<H>) -> TableSync {
        match source {
            Source::None => TableSync::Static,
            Source::Inline(table) => {
                vm.metrics.set(&vm.host, Gauge::TableVersion, table.version());
                vm.install(table);
                TableSync::Static
            }
            Source::Companion(source) => TableSync::Companion(Box::new(Follower::new(source))),
        }
    }

    pub fn on_tick<H: Host>(&mut self, vm: &Rc<Vm<H>>) {
        if let TableSync::Companion(f) = self {
            f.on_tick(vm);
        }
    }

    pub fn on_http_call_response<H: Host>(&mut self, vm: &Rc<Vm<H>>, token: u32, body_size: usize) {
        if let TableSync::Companion(f) = self {
            f.on_response(vm, token, body_size);
        }
    }
}

pub struct Follower {
    source: CompanionSource,
    keys: Keys,
    /// The table installed in this VM.
    local: Option<Held>,
    /// That table as read: what a delta applies onto. `None` when there is
    /// none to apply onto (then the poller asks for the whole table).
    /// Beside the compiled table at no cost in peak memory: compiling holds
    /// the raw table and the table in force at once anyway.
    raw: Option<RawTable>,
    /// The bytes of the last whole table this VM shared as the poller (0:
    /// none yet): the deltas shared after it are kept below that.
    whole_len: usize,
    /// The deltas shared after it are enough: the next poll asks for the
    /// whole.
    deltas_full: bool,
    /// Unknown table fields were logged (once per VM and source).
    told_unknown: bool,
    /// The outstanding poll, while this VM is the poller.
    in_flight: Option<u32>,
    failures: u32,
    next_poll_ms: u64,
}

impl Follower {
    fn new(source: CompanionSource) -> Follower {
        let keys = Keys::for_source(&source);
        Follower {
            source,
            keys,
            local: None,
            raw: None,
            whole_len: 0,
            deltas_full: false,
            told_unknown: false,
            in_flight: None,
            failures: 0,
            next_poll_ms: 0,
        }
    }

    fn on_tick<H: Host>(&mut self, vm: &Rc<Vm<H>>) {
        let now = vm.clock_ms.get();
        self.follow(vm);
        let holding = match take_lease(&vm.host, &self.keys.lease, &vm.id, now) {
            Ok(held) => held,
            Err(e) => {
                vm.log(LogLevel::Warn, &cat!("poller lease: ", e));
                false
            }
        };
        if !holding {
            return;
        }
        // Until the companion first answers, the age counts from configure:
        // an Envoy that never reached it must not look fresh.
        let ok_at = parse_u64(&shared_value(&vm.host, &self.keys.ok_at)).unwrap_or(vm.configured_ms);
        vm.metrics.set(&vm.host, Gauge::TableAgeSeconds, now.saturating_sub(ok_at) / 1000);
        if self.in_flight.is_none() && now >= self.next_poll_ms {
            self.poll(vm, now);
        }
        if let Some(r) = &vm.reports {
            r.send(vm, &self.source, now, || poller_id(&vm.host, &vm.id, now));
        }
    }

    /// The process-wide stamp for this source, if any.
    fn shared<H: Host>(&self, vm: &Vm<H>) -> Option<Held> {
        Held::decode(&shared_value(&vm.host, &self.keys.stamp))
    }

    /// The deltas shared after the last whole table (none: empty).
    #[cfg(feature = "table-deltas")]
    fn shared_deltas<H: Host>(&self, vm: &Vm<H>) -> Vec<u8> {
        shared_value(&vm.host, &self.keys.deltas)
    }

    /// Installs a newer process-wide table in this VM: the shared delta
    /// applied onto its own when that is the delta's base, else the whole
    /// table compiled.
    pub fn follow<H: Host>(&mut self, vm: &Vm<H>) {
        let Some(shared) = self.shared(vm) else { return };
        if !shared.is_newer_than(self.local.as_ref()) {
            return;
        }
        // Its own table brought on by the shared deltas when they reach
        // the shared stamp from it, else the whole and every delta after.
        // The poller validated them: one that does not apply here is no
        // fault of theirs (a config sharing the source may differ).
        let limits = &vm.settings.limits;
        #[cfg(feature = "table-deltas")]
        let deltas = self.shared_deltas(vm);
        #[cfg(feature = "table-deltas")]
        let own = self.raw.take().and_then(|raw| delta::catch_up(raw, &deltas, limits).ok());
        #[cfg(not(feature = "table-deltas"))]
        let own: Option<(RawTable, Vec<String>)> = None;
        let read = match own.filter(|(raw, _)| same((raw.version, &raw.epoch), (shared.version, &shared.epoch))) {
            Some(own) => Ok(own),
            None => {
                let bytes = shared_value(&vm.host, &self.keys.table);
                if bytes.is_empty() {
                    return;
                }
                let read = RawTable::from_companion_json(&bytes, limits);
                // Freed before compiling: a wasm VM's linear memory keeps its peak.
                drop(bytes);
                #[cfg(feature = "table-deltas")]
                let read = read.and_then(|(raw, _)| delta::catch_up(raw, &deltas, limits));
                read
            }
        };
        let taken = read.and_then(|(raw, _)| compile(vm, raw));
        match taken {
            Ok((raw, table)) => self.install(vm, raw, table),
            Err(e) => {
                // The poller validated it, but with its own config's base
                // group and limits: a config sharing the source may differ.
                vm.log(LogLevel::Error, &cat!("shared table ", shared.encode(), " does not compile here: ", e));
                self.local = Some(shared);
            }
        }
    }

    fn install<H: Host>(&mut self, vm: &Vm<H>, raw: RawTable, table: Table) {
        let held = Held::of(&table);
        // The gauge is the process's: a table another VM replaced while this
        // one compiled it (it read the stamp before the poller wrote a newer
        // one) does not set it back. This VM installs the newer one next tick.
        if !self.shared(vm).is_some_and(|s| s.is_newer_than(Some(&held))) {
            vm.metrics.set(&vm.host, Gauge::TableVersion, table.version());
        }
        self.local = Some(held);
        // Kept only where deltas are built in: else the memory is wasted.
        self.raw = DELTAS.then_some(raw);
        vm.install(table);
    }

    /// A delta that does not apply: counted, and said.
    fn discard<H: Host>(&mut self, vm: &Vm<H>, e: TableError) {
        vm.metrics.count(Counter::TableDeltaFallbacks);
        vm.log(LogLevel::Warn, &cat!("table delta discarded, the whole table is taken instead: ", e));
    }

    fn poll<H: Host>(&mut self, vm: &Vm<H>, now: u64) {
        // `follow` ran first this tick: this VM holds the process's table.
        let sep = if isogroup_core::text::has_byte(self.source.path.as_bytes(), b'?') { '&' } else { '?' };
        let (base, wait) = (&self.source.path, self.source.wait_s);
        // A delta only onto a table held as read, with an epoch.
        let delta = if DELTAS && self.raw.is_some() && !self.deltas_full { "&delta=1" } else { "" };
        let path = match &self.local {
            None => base.clone(),
            // Only a valid epoch is sent, and a valid one is URL-safe.
            Some(held) => match (&held.epoch, held.stamp().epoch) {
                (Some(e), Some(_)) => cat!(base, sep, "after=", held.version, "&epoch=", e, "&wait=", wait, delta),
                _ => cat!(base, sep, "after=", held.version, "&wait=", wait),
            },
        };
        let poller = poller_id(&vm.host, &vm.id, now);
        let headers: [(&str, &[u8]); 5] = [
            (":method", b"GET"),
            (":path", path.as_bytes()),
            (":authority", self.source.authority.as_bytes()),
            ("accept", b"application/json"),
            ("x-isogroup-poller", poller.as_bytes()),
        ];
        let timeout = Duration::from_secs(u64::from(self.source.wait_s) + 5);
        match vm.host.dispatch_http_call(&self.source.cluster, &headers, &[], timeout) {
            Ok(token) => self.in_flight = Some(token),
            Err(e) => self.failed(
                vm,
                now,
                &cat!("cannot call cluster ", isogroup_core::Quoted(&self.source.cluster), ": ", e),
            ),
        }
    }

    fn on_response<H: Host>(&mut self, vm: &Rc<Vm<H>>, token: u32, body_size: usize) {
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        let now = vm.host.now_ms().unwrap_or_else(|_| vm.clock_ms.get());
        let headers = match vm.host.http_call_response_headers() {
            Ok(h) => h,
            Err(e) => return self.failed(vm, now, &cat!("cannot read the companion's answer: ", e)),
        };
        let status = headers.get(":status").and_then(parse_u64);
        match status {
            Some(200) => {
                // ETag and epoch say what the body holds: one not newer than
                // the table in force is a 304 to us, never parsed.
                if let Some(version) = headers.get("etag").and_then(parse_etag) {
                    let epoch = headers.get("x-isogroup-epoch").and_then(|e| core::str::from_utf8(e).ok());
                    let announced = Held { version, epoch: epoch.map(str::to_owned) };
                    if !announced.is_newer_than(self.shared(vm).as_ref()) {
                        return self.answered(vm, now);
                    }
                }
                vm.metrics.count(Counter::TableFetches);
                // Refused before the body is copied: a VM's linear memory
                // keeps its peak for good.
                let limit = vm.settings.limits.max_table_bytes;
                if body_size > limit {
                    return self.reject(vm, TableError::TooManyBytes { field: "table", size: body_size, limit }, now);
                }
                let body = vm.host.http_call_response_body(body_size).ok().flatten().unwrap_or_default();
                #[cfg(feature = "table-deltas")]
                let delta = headers.get("content-type").is_some_and(|t| t == DELTA_CONTENT_TYPE.as_bytes());
                #[cfg(not(feature = "table-deltas"))]
                let delta = false;
                self.accept(vm, &body, delta, now);
            }
            Some(304) => self.answered(vm, now),
            Some(s) => self.failed(vm, now, &cat!("companion answered ", s)),
            None => self.failed(vm, now, "companion unreachable or timed out"),
        }
    }

    /// Validates a served table, or a delta applied onto the table held; a
    /// newer valid one goes to shared data for every VM. A table that is
    /// not valid is rejected and counted; a delta is discarded and counted,
    /// and the whole table fetched at once.
    fn accept<H: Host>(&mut self, vm: &Vm<H>, body: &[u8], delta: bool, now: u64) {
        let delta = DELTAS && delta;
        let limits = &vm.settings.limits;
        // A whole table, and no delta after it yet; or the delta after the
        // ones shared.
        #[cfg_attr(not(feature = "table-deltas"), allow(unused_mut))]
        let mut deltas = Vec::new();
        let read = match delta {
            // Onto the table held, which must be the process's: the delta
            // goes after the ones shared, which bring the whole to it. Read
            // as a VM catching up reads it.
            #[cfg(feature = "table-deltas")]
            true => match (self.raw.take(), &self.local) {
                (Some(raw), Some(base))
                    if self.shared(vm).is_some_and(|s| same((s.version, &s.epoch), (base.version, &base.epoch))) =>
                {
                    deltas = self.shared_deltas(vm);
                    delta::push_delta(&mut deltas, base, body);
                    // The table held is the last one shared: of them all, only
                    // this one is based on it.
                    delta::catch_up(raw, &deltas, limits)
                }
                _ => Err(delta::not_held()),
            },
            _ => {
                // A whole table is read without the raw one held beside it.
                self.raw = None;
                RawTable::from_companion_json(body, limits)
            }
        };
        let (raw, table, unknown) = match read.and_then(|(raw, unknown)| Ok((compile(vm, raw)?, unknown))) {
            Ok(((raw, table), unknown)) => (raw, table, unknown),
            Err(e) if delta => {
                self.answered(vm, now);
                return self.discard(vm, e);
            }
            Err(e) => return self.reject(vm, e, now),
        };
        // A newer companion's fields: skipped (SPEC), said once.
        if !unknown.is_empty() && !self.told_unknown {
            self.told_unknown = true;
            let mut fields = String::new();
            for (i, name) in unknown.iter().enumerate() {
                if i > 0 {
                    fields.push_str(", ");
                }
                fields.push_str(name);
            }
            vm.log(LogLevel::Warn, &cat!("table fields this filter does not know, ignored: ", fields));
        }
        self.answered(vm, now);
        let held = Held::of(&table);
        if !held.is_newer_than(self.shared(vm).as_ref()) {
            return;
        }
        // The whole (or deltas) first, stamp last: a VM that sees the stamp
        // finds them (or newer ones).
        let stamp = held.encode();
        let written = match delta {
            true => Ok(()),
            false => vm.host.shared_set(&self.keys.table, body, None),
        }
        .and_then(|()| match DELTAS {
            true => vm.host.shared_set(&self.keys.deltas, &deltas, None),
            false => Ok(()),
        })
        .and_then(|()| vm.host.shared_set(&self.keys.stamp, stamp.as_bytes(), None));
        if let Err(e) = written {
            vm.log(LogLevel::Error, &cat!("cannot share table ", stamp, ": ", e));
            return;
        }
        vm.metrics.count(Counter::TableUpdates);
        vm.log(
            LogLevel::Info,
            &cat!("vm ", vm.id, ": table ", stamp, " accepted (", table.service_count(), " services)"),
        );
        // Enough deltas shared (as many as `MAX_SHARED_DELTAS`, or as many
        // bytes as the whole, or a whole this VM did not share: a VM that
        // starts holds the whole and them at once): the next poll asks for
        // the whole.
        if !delta {
            self.whole_len = body.len();
        }
        if DELTAS {
            self.deltas_full =
                deltas.len() >= self.whole_len || deltas.iter().filter(|&&b| b == 0).count() + 1 >= MAX_SHARED_DELTAS;
        }
        self.install(vm, raw, table);
    }

    /// Every reject is logged (rare, and each one matters); the poll backs
    /// off so garbage is not fetched in a loop.
    fn reject<H: Host>(&mut self, vm: &Vm<H>, e: TableError, now: u64) {
        vm.metrics.count(Counter::TableRejects);
        vm.log(LogLevel::Error, &cat!("table rejected, the last good one keeps serving: ", e));
        self.back_off(vm, now);
    }

    fn answered<H: Host>(&mut self, vm: &Vm<H>, now: u64) {
        if self.failures > 0 {
            vm.log(LogLevel::Info, "companion reachable again");
        }
        self.failures = 0;
        self.next_poll_ms = now;
        let _ = vm.host.shared_set(&self.keys.ok_at, text_of(&now).as_bytes(), None);
    }

    /// A failed poll: logged when the companion first goes bad, then quiet.
    fn failed<H: Host>(&mut self, vm: &Vm<H>, now: u64, why: &str) {
        if self.failures == 0 {
            vm.log(LogLevel::Warn, why);
        }
        self.back_off(vm, now);
    }

    fn back_off<H: Host>(&mut self, vm: &Vm<H>, now: u64) {
        self.failures = self.failures.saturating_add(1);
        self.next_poll_ms = now.saturating_add(backoff_ms(self.failures, &vm.id, now));
    }
}

/// A raw table compiled as this VM's config says.
fn compile<H: Host>(vm: &Vm<H>, raw: RawTable) -> Result<(RawTable, Table), TableError> {
    let s = &vm.settings;
    let table = Table::compile_for(&raw, &s.base_group, &s.limits, s.runtime_rules())?;
    Ok((raw, table))
}

/// Exponential backoff from `BACKOFF_MIN_MS` to `BACKOFF_MAX_MS`, with ±25%
/// jitter so the Envoys of a fleet do not retry in step after an outage.
/// The jitter is a hash of the VM id and the time: no random source needed.
pub fn backoff_ms(failures: u32, vm_id: &str, now: u64) -> u64 {
    let base = BACKOFF_MIN_MS.saturating_mul(1 << failures.min(10)).min(BACKOFF_MAX_MS);
    let mut seed = Vec::with_capacity(vm_id.len() + 12);
    seed.extend_from_slice(vm_id.as_bytes());
    seed.extend_from_slice(&now.to_le_bytes());
    seed.extend_from_slice(&failures.to_le_bytes());
    let spread = base / 2;
    base - base / 4 + fnv1a(&seed) % (spread + 1)
}

/// Takes or renews the poller lease: `"<vm id> <expiry ms>"`. The key is
/// seeded first, because a CAS on a missing key always succeeds.
pub fn take_lease(host: &impl Host, key: &str, me: &str, now: u64) -> Result<bool, HostError> {
    let (value, cas) = match host.shared_get(key)? {
        (Some(v), cas) => (v, cas),
        (None, _) => {
            host.shared_set(key, b"- 0", None)?;
            match host.shared_get(key)? {
                (Some(v), cas) => (v, cas),
                (None, _) => return Ok(false),
            }
        }
    };
    // Read as bytes: a VM id has no space, and no text needs to be made.
    let (holder, expiry) = match value.iter().position(|&b| b == b' ').and_then(|i| value.split_at_checked(i)) {
        Some((holder, rest)) => (holder, rest.get(1..).unwrap_or_default()),
        None => (&b"-"[..], &b"0"[..]),
    };
    let expiry = isogroup_core::text::parse_u64(expiry).unwrap_or(0);
    if holder != me.as_bytes() && expiry > now {
        return Ok(false);
    }
    let lease = cat!(me, " ", now.saturating_add(LEASE_TTL_MS));
    match host.shared_set(key, lease.as_bytes(), cas) {
        Ok(()) => Ok(true),
        Err(HostError { status: Status::CasMismatch, .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A poller id stable for the Envoy process (shared by all its VMs). Seeded
/// with `-`, then claimed with CAS, so racing VMs agree on one id. (Not an
/// empty seed: the host reports an empty value as no value.)
fn poller_id(host: &impl Host, vm_id: &str, now: u64) -> String {
    let mine = cat!("envoy-", Hex { value: now, width: 1 }, "-", vm_id);
    for _ in 0..4 {
        match host.shared_get(POLLER_ID_KEY) {
            Ok((Some(id), _)) if id != b"-" => return isogroup_core::text::lossy(&id),
            Ok((Some(_), cas)) => {
                if host.shared_set(POLLER_ID_KEY, mine.as_bytes(), cas).is_ok() {
                    return mine;
                }
            }
            Ok((None, _)) => {
                let _ = host.shared_set(POLLER_ID_KEY, b"-", None);
            }
            Err(_) => break,
        }
    }
    mine
}

/// `"42"` (or a weak `W/"42"`) → 42.
fn parse_etag(value: &[u8]) -> Option<u64> {
    let value = match value {
        [b'W', b'/', value @ ..] => value,
        _ => value,
    };
    match value {
        [b'"', digits @ .., b'"'] => parse_u64(digits),
        _ => None,
    }
}

fn parse_u64(bytes: &[u8]) -> Option<u64> {
    // Digits only: no UTF-8 check needed, and HTTP's whitespace is ASCII.
    isogroup_core::text::parse_u64(bytes.trim_ascii())
}

#[cfg(test)]
mod etag_tests {
    #[test]
    fn etags_are_a_quoted_number_weak_or_not() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"\"42\"", Some(42)),
            (b"W/\"42\"", Some(42)),
            (b"\" 7 \"", Some(7)),
            (b"42", None),
            (b"W/42", None),
            (b"\"", None),
            (b"\"\"", None),
            (b"W/\"", None),
            (b"\"42", None),
            (b"42\"", None),
            (b"w/\"42\"", None),
            (b"\"4x\"", None),
        ];
        for (value, want) in cases {
            assert_eq!(super::parse_etag(value), *want, "{:?}", String::from_utf8_lossy(value));
        }
    }
}
