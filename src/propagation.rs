//! Propagation reports, host side: count each outbound request of a sampled
//! trace (the classes and the counts are core's, `isogroup_core::propagation`),
//! hand the counts to shared data on a tick at most once a second, and,
//! from the poller VM,
//! send them to the companion every 10 s (`POST /v1/reports`).
//!
//! Host calls on the request path: none for a request that carries a group;
//! for one without, the assist's one shared-data read. A request of a
//! sampled trace that carries a group waits in a buffer and is classified a
//! tick later against the workload's recent records: each VM adds the
//! sampled inbound records it wrote to one shared key on its tick
//! (`isogroup/prop/<workload>/recent`, the newest `RECENT_BYTES`), so a
//! tick makes one read for all of its carried requests, whichever worker's
//! VM recorded their traces (a tick later: that VM has ticked since).
//!
//! Worker VMs add their counts to a per-VM key (`isogroup/prop/<workload>/<n>`,
//! n = VM number mod `VM_KEYS`, one line per destination, merged with CAS,
//! so two VMs on one key lose nothing); the poller takes each key with CAS (a VM that wrote in between
//! keeps its counts for the next window) and posts their sum. Taken counts
//! are gone whatever the POST's fate: a failed one drops its window, never
//! counts it twice (its answer is not even read).

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use core::cell::Cell;
use core::time::Duration;

use crate::proxy::LogLevel;
use isogroup_core::propagation::{carried_entry, Class, Counts, LANE_WINDOW_MS, MAX_REPORT_BYTES, REPORT_EVERY_MS};
use isogroup_core::text::{split_byte, text_of};
use isogroup_core::{cat, CompanionSource, GroupName};

use crate::host::Host;
use crate::metrics::{Counter, Metrics};
use crate::vm::Vm;

/// Per-VM count keys per workload (VMs past it share keys, merged).
const VM_KEYS: u64 = 16;
/// Sampled group-carrying requests kept for the tick's classification;
/// more are not counted.
const MAX_CARRIED: u32 = 64;
/// The workload's recent sampled records kept in shared data for the ticks
/// (`recent`: the newest this many bytes, ~250 records).
const RECENT_BYTES: usize = MAX_REPORT_BYTES;
/// A VM hands its counts to shared data at most this often (a read and a
/// write of its key: per time, not per request; the poller takes the keys
/// every `REPORT_EVERY_MS`).
const FLUSH_EVERY_MS: u64 = 1_000;
/// A tick's index of the recent records: 1 << this many places, more than
/// twice what 16 KiB holds of the smallest record a filter writes (~26 bytes).
const INDEX_BITS: u32 = 11;
const INDEX_PLACES: usize = 1 << INDEX_BITS;

/// What the assist saw of a request, for the reports.
pub enum Seen {
    Nothing,
    Class(Class),
    /// An outbound request of a sampled trace (its FNV-1a) carrying a
    /// group: classified on a tick.
    Carried(u64),
}

/// Reports on: the settings have `propagation`, the assist, a workload and
/// a namespace (checked by the root before it makes one).
pub struct Reports {
    pub sample: u32,
    counts: Cell<Counts>,
    /// When the counts last went to shared data.
    flushed_ms: Cell<u64>,
    /// The sampled requests that carried a group, for the tick after the
    /// next, one after another in one buffer kept from tick to tick (no
    /// allocation per request): frames (`push_frame`) of the trace id's
    /// FNV-1a and `<destination> <group> <trace id>`.
    carried: Cell<Vec<u8>>,
    /// Those of the tick before, classified on the next.
    pending: Cell<Vec<u8>>,
    /// How many requests `carried` holds (at most `MAX_CARRIED`).
    carried_n: Cell<u32>,
    /// The sampled records this VM wrote since it last added them to the
    /// workload's recent records (`recent`'s frames, at most `RECENT_BYTES`).
    fresh: Cell<Vec<u8>>,
    /// When this VM last saw a lane request, and last told the others.
    lane_seen_ms: Cell<u64>,
    lane_told_ms: Cell<u64>,
    /// When any VM of this workload last saw one, as of the last tick.
    lane_shared_ms: Cell<u64>,
    next_report_ms: Cell<u64>,
    last_report_ms: Cell<u64>,
}

impl Reports {
    #[inline(always)]
    pub fn new(sample: u32, now: u64) -> Reports {
        Reports {
            sample,
            counts: Cell::default(),
            flushed_ms: Cell::default(),
            carried: Cell::default(),
            carried_n: Cell::default(),
            pending: Cell::default(),
            fresh: Cell::default(),
            lane_seen_ms: Cell::default(),
            lane_told_ms: Cell::default(),
            lane_shared_ms: Cell::default(),
            next_report_ms: Cell::new(now.saturating_add(REPORT_EVERY_MS)),
            last_report_ms: Cell::new(now),
        }
    }

    /// A request of a lane (its own group, not the base one) on either side.
    pub fn saw_lane(&self, now: u64) {
        self.lane_seen_ms.set(now);
    }

    /// The workload served lane traffic in the last 60 s.
    pub fn lanes_recent(&self, now: u64) -> bool {
        now < self.lane_seen_ms.get().max(self.lane_shared_ms.get()).saturating_add(LANE_WINDOW_MS)
    }

    /// A sampled inbound record (`encode_entry`'s form) this VM wrote to
    /// the assist's slot, added to the workload's recent records on the
    /// tick. `hash`: the trace id's FNV-1a.
    pub fn remember(&self, hash: u64, entry: &[u8]) {
        let mut fresh = self.fresh.take();
        // Past the bound, not shared.
        if fresh.len() + entry.len() < RECENT_BYTES {
            push_frame(&mut fresh, hash, &[entry]);
        }
        self.fresh.set(fresh);
    }

    /// Counts what the assist saw of a request to `destination` (a table
    /// service; others are not counted).
    pub fn observe(
        &self,
        metrics: &Metrics,
        seen: Seen,
        destination: Option<&str>,
        trace: &[u8],
        group: Option<&GroupName>,
    ) {
        let Some(destination) = destination else { return };
        match (seen, group) {
            (Seen::Class(class), _) => self.count(metrics, destination, class),
            (Seen::Carried(hash), Some(group)) => {
                let n = self.carried_n.get();
                if n >= MAX_CARRIED {
                    return;
                }
                let mut carried = self.carried.take();
                // None of the three has a space.
                let body = [destination.as_bytes(), b" ", group.as_str().as_bytes(), b" ", trace];
                if push_frame(&mut carried, hash, &body) {
                    self.carried_n.set(n + 1);
                }
                self.carried.set(carried);
            }
            _ => {}
        }
    }

    fn count(&self, metrics: &Metrics, destination: &str, class: Class) {
        let mut counts = self.counts.take();
        counts.add(destination, class as usize, 1);
        self.counts.set(counts);
        metrics.count(Counter::PROPAGATION[class as usize]);
    }

    /// Every VM, each tick: add its fresh records to the workload's recent
    /// ones, classify the requests carried the tick before against them,
    /// share the lane time, hand the counts to this VM's key (at most once a
    /// second).
    pub fn on_tick<H: Host>(&self, vm: &Vm<H>) {
        let (host, now) = (&vm.host, vm.clock_ms.get());
        // The tick before's, then this one's for the next tick.
        let mut classify = self.pending.replace(self.carried.take());
        let fresh = self.fresh.take();
        if !classify.is_empty() || !fresh.is_empty() {
            let recent_key = key(vm, "recent");
            let (recent, cas) = host.shared_get(&recent_key).unwrap_or_default();
            let mut recent = recent.unwrap_or_default();
            recent.extend_from_slice(&fresh);
            // The oldest frames out past the bound.
            let mut rest = recent.as_slice();
            while rest.len() > RECENT_BYTES {
                rest = next_record(rest).map_or(&[], |(_, _, next)| next);
            }
            let recent = rest;
            if !fresh.is_empty() && host.shared_set(&recent_key, recent, cas).is_err() {
                // Lost to another VM's write: added on the next tick.
                self.fresh.set(fresh);
            }
            let index = Index::of(recent);
            let mut rest = classify.as_slice();
            while let Some((hash, body, next)) = next_record(rest) {
                rest = next;
                let Some((destination, body)) = split_byte(body, b' ') else { continue };
                let Some((group, trace)) = split_byte(body, b' ') else { continue };
                if let (Some(class), Ok(destination)) =
                    (index.class(recent, hash, trace, group, now), core::str::from_utf8(destination))
                {
                    self.count(&vm.metrics, destination, class);
                }
            }
        }
        // Its buffer kept for the requests of the next tick.
        classify.clear();
        self.carried.set(classify);
        self.carried_n.set(0);
        let lanes_key = key(vm, "lanes");
        let seen = self.lane_seen_ms.get();
        if seen > self.lane_told_ms.get().saturating_add(1_000) {
            // At most once a second per VM: other VMs read it each tick.
            self.lane_told_ms.set(seen);
            let _ = host.shared_set(&lanes_key, text_of(&seen).as_bytes(), None);
        } else if let Ok((Some(at), _)) = host.shared_get(&lanes_key) {
            self.lane_shared_ms.set(isogroup_core::text::parse_u64(&at).unwrap_or(0));
        }
        let ours = self.counts.take();
        if ours.is_empty() || now < self.flushed_ms.get().saturating_add(FLUSH_EVERY_MS) {
            self.counts.set(ours);
            return;
        }
        let key = key(vm, &text_of(&(isogroup_core::text::parse_u64(vm.id.as_bytes()).unwrap_or(0) % VM_KEYS)));
        // Added to what the key holds, with CAS: one line per destination,
        // so the key stays as small as its destinations, however long the
        // poller takes; one past the report's size waits for the poller. A
        // missing key takes the write without CAS: VMs share a key only past
        // `VM_KEYS`, so two first writes racing is rare (one is lost).
        let written = match host.shared_get(&key) {
            Ok((value, cas)) => {
                // The poller's `-` (taken) is no line: skipped.
                let mut sum = Counts::default();
                sum.merge(&value.unwrap_or_default());
                sum.merge(ours.encode().as_bytes());
                let text = sum.encode();
                text.len() <= MAX_REPORT_BYTES && host.shared_set(&key, text.as_bytes(), cas).is_ok()
            }
            Err(_) => false,
        };
        if written {
            self.flushed_ms.set(now);
        } else {
            // Kept for the next tick (a CAS lost to the poller or another VM).
            self.counts.set(ours);
        }
    }

    /// The poller VM, each tick: every 10 s, takes every VM's counts and
    /// posts their sum (nothing when there is none).
    pub fn send<H: Host>(&self, vm: &Vm<H>, source: &CompanionSource, now: u64, poller: impl FnOnce() -> String) {
        if now < self.next_report_ms.get() {
            return;
        }
        self.next_report_ms.set(now.saturating_add(REPORT_EVERY_MS));
        let mut sum = Counts::default();
        for n in 0..VM_KEYS {
            let key = key(vm, &text_of(&n));
            if let Ok((Some(value), cas)) = vm.host.shared_get(&key) {
                if value != b"-" && vm.host.shared_set(&key, b"-", cas).is_ok() {
                    sum.merge(&value);
                }
            }
        }
        let window_s = now.saturating_sub(self.last_report_ms.replace(now)) / 1000;
        if sum.is_empty() {
            return;
        }
        let poller = poller();
        let s = &vm.settings;
        let body = sum.report(
            s.workload.as_deref().unwrap_or_default(),
            s.namespace.as_deref().unwrap_or_default(),
            self.sample,
            window_s,
        );
        let headers: [(&str, &[u8]); 5] = [
            (":method", b"POST"),
            (":path", b"/v1/reports"),
            (":authority", source.authority.as_bytes()),
            ("content-type", b"application/json"),
            ("x-isogroup-poller", poller.as_bytes()),
        ];
        // Its answer is not read (the table poll ignores a token not its
        // own): whatever it is, the window was taken; the companion counts
        // what it refuses.
        if let Err(e) = vm.host.dispatch_http_call(&source.cluster, &headers, body.as_bytes(), Duration::from_secs(5)) {
            vm.log(LogLevel::Warn, &cat!("propagation report not sent: ", e));
        }
    }
}

/// Appends a frame to `buf`: the length of `parts` together (a byte: at
/// most 213 for a record, 446 for a carried request of a 253-byte service,
/// a 63-byte group and a 128-byte trace id, not taken), the trace id's
/// FNV-1a, the parts. Whether it fit.
fn push_frame(buf: &mut Vec<u8>, hash: u64, parts: &[&[u8]]) -> bool {
    let Ok(len) = u8::try_from(parts.iter().map(|p| p.len()).sum::<usize>()) else { return false };
    buf.push(len);
    buf.extend_from_slice(&hash.to_le_bytes());
    for part in parts {
        buf.extend_from_slice(part);
    }
    true
}

/// The first frame (`push_frame`'s) in `buf`: (the trace id's FNV-1a, the
/// parts together, the rest); `None` at its end.
fn next_record(buf: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let ([len], rest) = buf.split_first_chunk::<1>()?;
    let (hash, rest) = rest.split_first_chunk::<8>()?;
    let (entry, rest) = rest.split_at_checked(usize::from(*len))?;
    Some((u64::from_le_bytes(*hash), entry, rest))
}

/// The recent records' frames by their hash (open addressing, linear
/// probing): each carried request is then found without a scan.
struct Index([u16; INDEX_PLACES]);

const EMPTY: u16 = u16::MAX;

/// A hash's first place (its top bits times 2^64 / φ: a sampled trace's low
/// bits are the sampling's zeros).
fn place(hash: u64) -> usize {
    (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - INDEX_BITS)) as usize
}

impl Index {
    /// `recent` (at most `RECENT_BYTES`: its offsets fit a `u16`), oldest
    /// first, so a trace's newer record comes later along its probe; at most
    /// half its places (more frames than 16 KiB holds of a filter's), so
    /// every probe ends and the worst (every hash in one run) stays bounded.
    fn of(recent: &[u8]) -> Index {
        let mut index = Index([EMPTY; INDEX_PLACES]);
        let (mut rest, mut n) = (recent, 0);
        while let (Some((hash, _, next)), true) = (next_record(rest), n < INDEX_PLACES / 2) {
            let mut i = place(hash);
            while index.0.get(i).is_some_and(|&at| at != EMPTY) {
                i = (i + 1) % INDEX_PLACES;
            }
            if let Some(at) = index.0.get_mut(i) {
                *at = (recent.len() - rest.len()) as u16;
            }
            (rest, n) = (next, n + 1);
        }
        index
    }

    /// A carried request of `trace` (`hash`: its FNV-1a) that sent `group`:
    /// the newest fresh record of the trace decides.
    fn class(&self, recent: &[u8], hash: u64, trace: &[u8], group: &[u8], now: u64) -> Option<Class> {
        let (mut i, mut class) = (place(hash), None);
        while let Some(&at) = self.0.get(i).filter(|&&at| at != EMPTY) {
            if let Some((h, entry, _)) = recent.get(usize::from(at)..).and_then(next_record) {
                if h == hash {
                    class = carried_entry(entry, trace, group, now).or(class);
                }
            }
            i = (i + 1) % INDEX_PLACES;
        }
        class
    }
}

/// `isogroup/prop/<workload>/<name>`: one workload's counts and lane time.
fn key<H: Host>(vm: &Vm<H>, name: &str) -> String {
    cat!("isogroup/prop/", vm.settings.workload.as_deref().unwrap_or_default(), "/", name)
}
