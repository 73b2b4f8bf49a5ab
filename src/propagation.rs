//! Propagation reports, host side: count each outbound request of a sampled
//! trace (the classes and the counts are core's, `isogroup_core::propagation`),
//! hand the counts to shared data on a tick at most once a second, and,
//! from the poller VM,
//! send them to the companion every 10 s (`POST /v1/reports`).
//!
//! Host calls on the request path: none for a request that carries a group;
//! for one without, the assist's one shared-data read. A request of a
//! sampled trace that carries a group waits in a buffer and is classified
//! two ticks later against the workload's recent records: each VM adds the
//! sampled inbound records it wrote to one shared key on its tick
//! (`isogroup/prop/<workload>/recent`, the newest `RECENT_BYTES`), so a
//! tick makes one read for all of its carried requests, whichever worker's
//! VM recorded their traces (that VM has ticked since, even a tick late).
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
use isogroup_core::assist::Assist;
use isogroup_core::propagation::{carried_entry, Class, Counts, LANE_WINDOW_MS, MAX_REPORT_BYTES, REPORT_EVERY_MS};
use isogroup_core::text::{split_byte, text_of};
use isogroup_core::{cat, CompanionSource, GroupName};

use crate::host::Host;
use crate::metrics::{Counter, Metrics};
use crate::vm::Vm;

/// Per-VM count keys per workload (VMs past it share keys, merged).
const VM_KEYS: u64 = 16;
/// Sampled group-carrying requests kept for a tick's classification, in
/// bytes (~78 requests of a 32-digit trace id to a short service and
/// group); more are not counted.
pub(crate) const MAX_CARRIED: usize = 4 * 1024;
/// The workload's recent sampled records kept in shared data for the ticks
/// (`recent`: the newest this many bytes, ~250 records).
const RECENT_BYTES: usize = MAX_REPORT_BYTES;
/// Carried requests a tick looks up in their assist slot (a read each) when
/// the recent records do not hold their trace; more are not counted.
const SLOT_READS: u32 = 16;
/// A VM hands its counts to shared data at most this often (a read and a
/// write of its key: per time, not per request; the poller takes the keys
/// every `REPORT_EVERY_MS`).
const FLUSH_EVERY_MS: u64 = 1_000;

/// What the assist saw of a request, for the reports.
pub enum Seen {
    Nothing,
    Class(Class),
    /// An outbound request of a sampled trace (its FNV-1a, and when it was
    /// made) carrying a group: classified on a tick.
    Carried(u64, u64),
}

/// Reports on: the settings have `propagation`, the assist, a workload and
/// a namespace (checked by the root before it makes one).
pub struct Reports {
    pub sample: u32,
    counts: Cell<Counts>,
    /// When the counts last went to shared data.
    flushed_ms: Cell<u64>,
    /// The sampled requests that carried a group, for the second tick after
    /// the next, one after another in one buffer kept from tick to tick (no
    /// allocation per request): frames (`push_frame`) of the trace id's
    /// FNV-1a and `<destination> <group> <trace id>`.
    carried: Cell<Vec<u8>>,
    /// Those of the tick before, and of the one before it (classified on
    /// the next tick).
    pending: Cell<Vec<u8>>,
    older: Cell<Vec<u8>>,
    /// The sampled records this VM wrote since it last added them to the
    /// workload's recent records (`recent`'s frames, at most `RECENT_BYTES`).
    fresh: Cell<Vec<u8>>,
    /// When this VM last saw a lane request.
    lane_seen_ms: Cell<u64>,
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
            pending: Cell::default(),
            older: Cell::default(),
            fresh: Cell::default(),
            lane_seen_ms: Cell::default(),
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
        // Past twice the bound, not shared (the tick keeps the newest
        // within it).
        if fresh.len() + entry.len() < 2 * RECENT_BYTES {
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
            (Seen::Carried(hash, at), Some(group)) => {
                let mut carried = self.carried.take();
                if carried.len() < MAX_CARRIED {
                    // None of the three has a space.
                    push_frame(
                        &mut carried,
                        hash,
                        &[&at.to_le_bytes(), destination.as_bytes(), b" ", group.as_bytes(), b" ", trace],
                    );
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
    /// ones, classify the requests carried two ticks before against them,
    /// share the lane time, hand the counts to this VM's key (at most once a
    /// second).
    pub fn on_tick<H: Host>(&self, vm: &Vm<H>, assist: &Assist) {
        let (host, now) = (&vm.host, vm.clock_ms.get());
        // Those two ticks old; the others a tick older.
        let mut classify = self.older.replace(self.pending.replace(self.carried.take()));
        let fresh = self.fresh.take();
        // The workload's key: its recent records, then (8 bytes) when any
        // of its VMs last told of lane traffic. Read each tick: the lane
        // time is wanted by `lanes_recent`.
        let recent_key = key(vm, "recent");
        // A failed read is not an empty key: nothing is written over it.
        let (read, (value, cas)) = match host.shared_get(&recent_key) {
            Ok(got) => (true, got),
            Err(_) => (false, (None, None)),
        };
        let mut value = value.unwrap_or_default();
        let (frames, told) = value.split_last_chunk::<8>().map_or((0, 0), |(f, t)| (f.len(), u64::from_le_bytes(*t)));
        self.lane_shared_ms.set(told);
        let seen = self.lane_seen_ms.get();
        // Told at most once a second.
        let tell = seen > told.saturating_add(1_000);
        value.truncate(frames);
        value.extend_from_slice(&fresh);
        // The newest frames within the bound.
        let mut start = value.as_slice();
        while let Some((_, _, before)) = last_frame(start) {
            if value.len() - before.len() > RECENT_BYTES {
                break;
            }
            start = before;
        }
        let start = start.len();
        let frames = value.len();
        value.extend_from_slice(&told.max(seen).to_le_bytes());
        if !read
            || ((tell || !fresh.is_empty())
                && host.shared_set(&recent_key, value.get(start..).unwrap_or_default(), cas).is_err())
        {
            // Not read, or lost to another VM's write: added on the next tick.
            self.fresh.set(fresh);
        }
        let recent = value.get(start..frames).unwrap_or_default();
        let mut rest = classify.as_slice();
        let (mut slot_reads, mut slot_key) = (0, String::new());
        while let Some((hash, body, before)) = last_frame(rest) {
            rest = before;
            // When the request was made: its record is checked fresh as of then.
            let Some((at, body)) = body.split_first_chunk::<8>() else { continue };
            let at = u64::from_le_bytes(*at);
            let Some((destination, body)) = split_byte(body, b' ') else { continue };
            let Some((group, trace)) = split_byte(body, b' ') else { continue };
            let mut class = recent_class(recent, hash, trace, group, at);
            if class.is_none() && slot_reads < SLOT_READS {
                // Not among the recent records (its handler called out
                // later than they reach back, or a write of them failed):
                // the trace's assist slot, which lives for the assist's ttl.
                slot_reads += 1;
                assist.slot_key_to(hash, &mut slot_key);
                class = carried_entry(&crate::host::shared_value(host, &slot_key), trace, group, at);
            }
            if let (Some(class), Ok(destination)) = (class, core::str::from_utf8(destination)) {
                self.count(&vm.metrics, destination, class);
            }
        }
        // Its buffer kept for the requests of the next tick.
        classify.clear();
        self.carried.set(classify);
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

/// Appends a frame to `buf`: the trace id's FNV-1a, the parts, the length
/// of the parts together (two bytes, last, so frames are read newest first;
/// at most 213 for a record, 454 for a carried request of a 253-byte
/// service, a 63-byte group and a 128-byte trace id).
fn push_frame(buf: &mut Vec<u8>, hash: u64, parts: &[&[u8]]) {
    let Ok(len) = u16::try_from(parts.iter().map(|p| p.len()).sum::<usize>()) else { return };
    buf.extend_from_slice(&hash.to_le_bytes());
    for part in parts {
        buf.extend_from_slice(part);
    }
    buf.extend_from_slice(&len.to_le_bytes());
}

/// The last frame (`push_frame`'s) in `buf`: (the trace id's FNV-1a, the
/// parts together, what is before it); `None` when there is none.
fn last_frame(buf: &[u8]) -> Option<(u64, &[u8], &[u8])> {
    let (rest, len) = buf.split_last_chunk::<2>()?;
    let (rest, body) = rest.split_at_checked(rest.len().checked_sub(usize::from(u16::from_le_bytes(*len)))?)?;
    let (rest, hash) = rest.split_last_chunk::<8>()?;
    Some((u64::from_le_bytes(*hash), body, rest))
}

/// A carried request of `trace` (`hash`: its FNV-1a) that sent `group`,
/// against the workload's recent records: the newest fresh record of the
/// trace decides. Read newest first, so a request's record, written just
/// before it, is near the end.
fn recent_class(recent: &[u8], hash: u64, trace: &[u8], group: &[u8], now: u64) -> Option<Class> {
    let mut rest = recent;
    while let Some((h, entry, before)) = last_frame(rest) {
        if h == hash {
            if let Some(class) = carried_entry(entry, trace, group, now) {
                return Some(class);
            }
        }
        rest = before;
    }
    None
}

/// `isogroup/prop/<workload>/<name>`: one workload's counts, recent records
/// and lane time.
fn key<H: Host>(vm: &Vm<H>, name: &str) -> String {
    cat!("isogroup/prop/", vm.settings.workload.as_deref().unwrap_or_default(), "/", name)
}
