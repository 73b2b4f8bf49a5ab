//! Propagation reports, host side: count each outbound request of a sampled
//! trace (the classes and the counts are core's, `isogroup_core::propagation`),
//! hand the counts to shared data on each tick, and, from the poller VM,
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
//! n = VM number mod `VM_KEYS`, merged with CAS, so two VMs on one key lose
//! nothing); the poller takes each key with CAS (a VM that wrote in between
//! keeps its counts for the next window) and posts their sum. Taken counts
//! are gone whatever the POST's fate: a failed one drops its window, never
//! counts it twice (its answer is not even read).

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use core::cell::Cell;
use core::time::Duration;

use crate::proxy::LogLevel;
use isogroup_core::assist::{decode_entry, Assist};
use isogroup_core::edge::fnv1a;
use isogroup_core::propagation::{carried, Class, Counts, LANE_WINDOW_MS, MAX_REPORT_BYTES, REPORT_EVERY_MS};
use isogroup_core::text::text_of;
use isogroup_core::{cat, CompanionSource, GroupName};

use crate::host::Host;
use crate::metrics::{Counter, Metrics};
use crate::vm::Vm;

/// Per-VM count keys per workload (VMs past it share keys, merged).
const VM_KEYS: u64 = 16;
/// Sampled group-carrying requests kept for the tick's classification;
/// more are not counted.
const MAX_CARRIED: usize = 64;
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

/// A sampled request that carried a group: destination, trace id, group.
type Carried = (String, Vec<u8>, GroupName);

/// Reports on: the settings have `propagation`, the assist, a workload and
/// a namespace (checked by the root before it makes one).
pub struct Reports {
    pub sample: u32,
    counts: Cell<Counts>,
    carried: Cell<Vec<Carried>>,
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
            carried: Cell::default(),
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
    pub fn remember(&self, trace: &[u8], entry: Vec<u8>) {
        if let Some(slot) = self.recorded.get(local_slot(trace)) {
            slot.set(entry);
        }
    }

    /// What this VM recorded for `trace`, if it still holds it and it is
    /// fresh (as `decode_entry`): the inbound request's group or none.
    pub fn recorded(&self, trace: &[u8], now: u64) -> Option<Option<GroupName>> {
        let slot = self.recorded.get(local_slot(trace))?;
        let entry = slot.take();
        let found = decode_entry(&entry, trace, now);
        slot.set(entry);
        found
    }

    /// Counts what the assist saw of a request to `destination` (a table
    /// service; others are not counted).
    pub fn observe(
        &self,
        metrics: &Metrics,
        seen: Seen,
        destination: Option<&str>,
        trace: &[u8],
        group: Option<GroupName>,
    ) {
        let Some(destination) = destination else { return };
        match (seen, group) {
            (Seen::Class(class), _) => self.count(metrics, destination, class),
            (Seen::Carried, Some(group)) => {
                let mut carried = self.carried.take();
                if carried.len() < MAX_CARRIED {
                    carried.push((destination.into(), trace.to_vec(), group));
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

    /// Every VM, each tick: classify the carried requests, share the lane
    /// time, hand the counts to this VM's key.
    pub fn on_tick<H: Host>(&self, vm: &Vm<H>, assist: &Assist) {
        let (host, now) = (&vm.host, vm.clock_ms.get());
        for (destination, trace, group) in self.carried.take() {
            if let Some(recorded) = crate::assist::read_record(host, assist, &trace, now) {
                self.count(&vm.metrics, &destination, carried(recorded, group));
            }
        }
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
        if ours.is_empty() {
            return;
        }
        let key = key(vm, &text_of(&(isogroup_core::text::parse_u64(vm.id.as_bytes()).unwrap_or(0) % VM_KEYS)));
        // Appended, with CAS (the poller sums repeated lines); a key near the
        // report's size waits for the poller. A missing key takes the write
        // without CAS: VMs share a key only past `VM_KEYS`, so two first
        // writes racing is rare (one is lost).
        let written = match host.shared_get(&key) {
            Ok((value, cas)) => {
                let mut value = value.filter(|v| v != b"-").unwrap_or_default();
                value.extend_from_slice(ours.encode().as_bytes());
                value.len() <= MAX_REPORT_BYTES && host.shared_set(&key, &value, cas).is_ok()
            }
            Err(_) => false,
        };
        if !written {
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

/// A trace's place in `Reports::recorded`: the top bits of its hash times
/// 2^64 / φ (a sampled trace's low bits are the sampling's zeros, and ids
/// that differ in their last digit differ little in FNV's high bits).
pub(crate) fn local_slot(trace: &[u8]) -> usize {
    (fnv1a(trace).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (64 - LOCAL_BITS)) as usize
}

/// `isogroup/prop/<workload>/<name>`: one workload's counts and lane time.
fn key<H: Host>(vm: &Vm<H>, name: &str) -> String {
    cat!("isogroup/prop/", vm.settings.workload.as_deref().unwrap_or_default(), "/", name)
}
