//! Propagation reports, host side: count each outbound request of a sampled
//! trace (the classes and the counts are core's, `isogroup_core::propagation`),
//! hand the counts to shared data on a tick at most once a second, and,
//! from the poller VM,
//! send them to the companion every 10 s (`POST /v1/reports`).
//!
//! Host calls on the request path: none for a request that carries a group;
//! for one without, the assist's one shared-data read. A request of a
//! sampled trace that carries a group is classified at once when this VM
//! recorded the trace's inbound request itself (`remember`: the sampled
//! records it wrote, kept in the VM), else on the tick, which reads the
//! record from shared data (the inbound request ran on another worker's VM,
//! or a newer trace took its place here).
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
use isogroup_core::text::text_of;
use isogroup_core::{cat, CompanionSource, GroupName};

use crate::host::Host;
use crate::metrics::{Counter, Metrics};
use crate::vm::Vm;

/// Per-VM count keys per workload (VMs past it share keys, merged).
const VM_KEYS: u64 = 16;
/// Sampled group-carrying requests kept for the tick's classification;
/// more are not counted.
const MAX_CARRIED: u32 = 64;
/// A VM hands its counts to shared data at most this often (a read and a
/// write of its key: per time, not per request; the poller takes the keys
/// every `REPORT_EVERY_MS`).
const FLUSH_EVERY_MS: u64 = 1_000;
/// Sampled inbound records kept in the VM (`remember`): 1 << this many,
/// each in its place by trace; a newer trace in the same place replaces it.
const LOCAL_BITS: u32 = 7;
const LOCAL_RECORDS: usize = 1 << LOCAL_BITS;

/// What the assist saw of a request, for the reports.
pub enum Seen {
    Nothing,
    Class(Class),
    /// An outbound request of a sampled trace carrying a group that this VM
    /// did not record: classified on the tick.
    Carried,
}

/// Reports on: the settings have `propagation`, the assist, a workload and
/// a namespace (checked by the root before it makes one).
pub struct Reports {
    pub sample: u32,
    counts: Cell<Counts>,
    /// When the counts last went to shared data.
    flushed_ms: Cell<u64>,
    /// The sampled requests that carried a group, for the tick, one after
    /// another in one buffer kept from tick to tick (no allocation per
    /// request): the lengths of the destination, the trace id and the group
    /// (a byte each: at most 253, 128 and 63), then those three.
    carried: Cell<Vec<u8>>,
    /// How many requests `carried` holds (at most `MAX_CARRIED`).
    carried_n: Cell<u32>,
    /// The sampled inbound records this VM wrote (`encode_entry`'s form),
    /// each at `local_slot` of its trace.
    recorded: [Cell<Vec<u8>>; LOCAL_RECORDS],
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
            recorded: [const { Cell::new(Vec::new()) }; LOCAL_RECORDS],
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

    /// A sampled inbound record this VM wrote to shared data, kept here too:
    /// a carried request of its trace is then classified without a host call.
    /// `hash`: the trace id's FNV-1a.
    pub fn remember(&self, hash: u64, entry: Vec<u8>) {
        if let Some(slot) = self.recorded.get(local_slot(hash)) {
            slot.set(entry);
        }
    }

    /// An outbound request of a sampled trace (`hash`: its FNV-1a) that
    /// carries `group`: classified now when this VM holds the trace's fresh
    /// record, else `Carried`, for the tick.
    pub fn classify_carried(&self, trace: &[u8], hash: u64, group: &GroupName, now: u64) -> Seen {
        let Some(slot) = self.recorded.get(local_slot(hash)) else { return Seen::Carried };
        let entry = slot.take();
        let class = carried_entry(&entry, trace, group.as_str().as_bytes(), now);
        slot.set(entry);
        class.map_or(Seen::Carried, Seen::Class)
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
            (Seen::Carried, Some(group)) => {
                let n = self.carried_n.get();
                let lengths = [destination.len(), trace.len(), group.as_str().len()];
                // Past the bound, or a length that does not fit its byte
                // (never for a service name, a trace id or a group).
                if n >= MAX_CARRIED || lengths.iter().any(|&l| l > 255) {
                    return;
                }
                let mut carried = self.carried.take();
                for l in lengths {
                    carried.push(l as u8);
                }
                for part in [destination.as_bytes(), trace, group.as_str().as_bytes()] {
                    carried.extend_from_slice(part);
                }
                self.carried.set(carried);
                self.carried_n.set(n + 1);
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

    /// Every VM, each tick: classify the carried requests, share the lane
    /// time, hand the counts to this VM's key (at most once a second).
    pub fn on_tick<H: Host>(&self, vm: &Vm<H>, assist: &Assist) {
        let (host, now) = (&vm.host, vm.clock_ms.get());
        let mut carried = self.carried.take();
        let mut rest = carried.as_slice();
        let mut slot_key = String::new();
        while let Some((destination, trace, group, next)) = next_carried(rest) {
            rest = next;
            assist.slot_key_to(isogroup_core::edge::fnv1a(trace), &mut slot_key);
            if let Ok((Some(entry), _)) = host.shared_get(&slot_key) {
                let class = carried_entry(&entry, trace, group, now);
                if let (Some(class), Ok(destination)) = (class, core::str::from_utf8(destination)) {
                    self.count(&vm.metrics, destination, class);
                }
            }
        }
        carried.clear();
        self.carried.set(carried);
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

/// A trace's place in `Reports::recorded`, by its FNV-1a `hash`: the top
/// bits of the hash times 2^64 / φ (a sampled trace's low bits are the
/// sampling's zeros, and ids that differ in their last digit differ little
/// in FNV's high bits).
pub(crate) fn local_slot(hash: u64) -> usize {
    (hash.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - LOCAL_BITS)) as usize
}

/// The first request in `Reports::carried`'s buffer: (destination, trace
/// id, group, the rest); `None` at its end.
#[allow(clippy::type_complexity)]
fn next_carried(buf: &[u8]) -> Option<(&[u8], &[u8], &[u8], &[u8])> {
    let ([d, t, g], rest) = buf.split_first_chunk::<3>()?;
    let (destination, rest) = rest.split_at_checked(usize::from(*d))?;
    let (trace, rest) = rest.split_at_checked(usize::from(*t))?;
    let (group, rest) = rest.split_at_checked(usize::from(*g))?;
    Some((destination, trace, group, rest))
}

/// `isogroup/prop/<workload>/<name>`: one workload's counts and lane time.
fn key<H: Host>(vm: &Vm<H>, name: &str) -> String {
    cat!("isogroup/prop/", vm.settings.workload.as_deref().unwrap_or_default(), "/", name)
}
