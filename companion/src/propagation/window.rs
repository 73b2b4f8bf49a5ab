//! What one replica holds of the reports it accepted: per (workload,
//! namespace) and destination, per-minute buckets of the last 15 minutes.
//!
//! Bounded as SPEC says: at most `MAX_WORKLOADS` workloads, each with at
//! most `MAX_DESTINATIONS` destinations; past either, the least recently
//! reported one is evicted and its edges counted as overflow (per minute,
//! so the answer's `overflow` covers the same window as its counts). Each
//! report touches its workload and destinations in O(1) each (insertion
//! ordered maps), and what has left the window is dropped from their fronts.
//! Worst case, all caps full: 400,000 edges of at most 15 buckets of 28
//! bytes, about 200 MB.

use std::collections::VecDeque;

use hashlink::LinkedHashMap;
use serde::{Deserialize, Serialize};

use super::report::Report;

/// The window, in minutes: a bucket of minute `m` counts at minute `now`
/// while `m + WINDOW_MINUTES > now`.
pub const WINDOW_MINUTES: u32 = 15;
pub const MAX_WORKLOADS: usize = 2_000;
pub const MAX_DESTINATIONS: usize = 200;

/// One minute of one edge: `counts` in the report's class order, saturating
/// (4 billion sampled requests a minute on one edge is beyond any mesh).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(u32, u32, [u32; 5])", into = "(u32, u32, [u32; 5])")]
pub struct Bucket {
    /// Unix minute.
    pub minute: u32,
    /// The last `sample` reported in it.
    pub sample: u32,
    pub counts: [u32; 5],
}

impl From<(u32, u32, [u32; 5])> for Bucket {
    fn from((minute, sample, counts): (u32, u32, [u32; 5])) -> Bucket {
        Bucket { minute, sample, counts }
    }
}

impl From<Bucket> for (u32, u32, [u32; 5]) {
    fn from(b: Bucket) -> Self {
        (b.minute, b.sample, b.counts)
    }
}

/// One edge's buckets, as held and as replicas share them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    pub workload: String,
    pub namespace: String,
    pub destination: String,
    pub buckets: Vec<Bucket>,
}

/// Everything in the window at one minute: what `GET /v1/propagation`
/// ranks, and what an etcd replica writes under its key.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub edges: Vec<Edge>,
    /// Edges evicted or left out, per minute: `(minute, n)`.
    #[serde(default)]
    pub overflow: Vec<(u32, u64)>,
    /// Edges left out of this replica's shared copy (etcd: its key is
    /// bounded in bytes), at its last write.
    #[serde(default)]
    pub truncated: u64,
}

pub fn in_window(minute: u32, now: u32) -> bool {
    minute.saturating_add(WINDOW_MINUTES) > now
}

struct Workload {
    last_minute: u32,
    /// Least recently reported first.
    destinations: LinkedHashMap<Box<str>, VecDeque<Bucket>>,
}

/// `(namespace, workload)`.
type WorkloadKey = (Box<str>, Box<str>);

#[derive(Default)]
pub struct Window {
    /// Least recently reported first.
    workloads: LinkedHashMap<WorkloadKey, Workload>,
    overflow: VecDeque<(u32, u64)>,
}

impl Window {
    /// Adds `report` at `minute`; answers how many edges overflowed (left
    /// out of it, or evicted to make room for it).
    pub fn add(&mut self, report: &Report, minute: u32) -> u64 {
        self.expire(minute);
        let mut overflowed = report.left_out as u64;
        let key: WorkloadKey = (report.namespace.as_str().into(), report.workload.as_str().into());
        if !self.workloads.contains_key(&key) && self.workloads.len() >= MAX_WORKLOADS {
            if let Some((_, evicted)) = self.workloads.pop_front() {
                overflowed += evicted.destinations.len() as u64;
            }
        }
        let workload = self
            .workloads
            .entry(key)
            .or_insert_with(|| Workload { last_minute: minute, destinations: LinkedHashMap::new() });
        workload.last_minute = minute;
        let destinations = &mut workload.destinations;
        // Destinations whose newest minute left the window are at the front.
        while destinations.front().is_some_and(|(_, b)| b.back().is_none_or(|b| !in_window(b.minute, minute))) {
            destinations.pop_front();
        }
        for (destination, counts) in &report.outbound {
            let buckets = match destinations.to_back(destination.as_str()) {
                Some(buckets) => buckets,
                None => {
                    if destinations.len() >= MAX_DESTINATIONS {
                        destinations.pop_front();
                        overflowed += 1;
                    }
                    destinations.entry(destination.as_str().into()).or_insert_with(VecDeque::new)
                }
            };
            while buckets.front().is_some_and(|b| !in_window(b.minute, minute)) {
                buckets.pop_front();
            }
            let bucket = match buckets.back_mut() {
                Some(b) if b.minute == minute => b,
                _ => {
                    buckets.push_back(Bucket { minute, sample: report.sample, counts: [0; 5] });
                    // One bucket per minute and old ones popped: at most
                    // WINDOW_MINUTES, whatever the clock does.
                    if buckets.len() > WINDOW_MINUTES as usize {
                        buckets.pop_front();
                    }
                    let Some(b) = buckets.back_mut() else { continue };
                    b
                }
            };
            bucket.sample = report.sample;
            for (held, n) in bucket.counts.iter_mut().zip(counts) {
                *held = held.saturating_add(u32::try_from(*n).unwrap_or(u32::MAX));
            }
        }
        if overflowed > 0 {
            match self.overflow.back_mut() {
                Some((m, n)) if *m == minute => *n += overflowed,
                _ => self.overflow.push_back((minute, overflowed)),
            }
        }
        overflowed
    }

    /// Drops workloads not reported within the window (they are at the
    /// front) and old overflow minutes.
    fn expire(&mut self, now: u32) {
        while self.workloads.front().is_some_and(|(_, w)| !in_window(w.last_minute, now)) {
            self.workloads.pop_front();
        }
        while self.overflow.front().is_some_and(|(m, _)| !in_window(*m, now)) || self.overflow.len() > 64 {
            self.overflow.pop_front();
        }
    }

    /// Every edge with a bucket in the window at `now`.
    pub fn snapshot(&self, now: u32) -> Snapshot {
        let mut edges = Vec::new();
        for ((namespace, workload), w) in &self.workloads {
            if !in_window(w.last_minute, now) {
                continue;
            }
            for (destination, buckets) in &w.destinations {
                let buckets: Vec<Bucket> = buckets.iter().filter(|b| in_window(b.minute, now)).copied().collect();
                if !buckets.is_empty() {
                    edges.push(Edge {
                        workload: workload.to_string(),
                        namespace: namespace.to_string(),
                        destination: destination.to_string(),
                        buckets,
                    });
                }
            }
        }
        let overflow = self.overflow.iter().filter(|(m, _)| in_window(*m, now)).copied().collect();
        Snapshot { edges, overflow, truncated: 0 }
    }

    #[cfg(test)]
    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn report(workload: &str, destinations: &[(&str, [u64; 5])]) -> Report {
        Report {
            workload: workload.into(),
            namespace: "demo".into(),
            sample: 8,
            window_s: 10,
            outbound: destinations.iter().map(|(d, c)| ((*d).to_owned(), *c)).collect(),
            left_out: 0,
        }
    }

    fn counts_of(s: &Snapshot, workload: &str, destination: &str) -> Option<[u32; 5]> {
        let e = s.edges.iter().find(|e| e.workload == workload && e.destination == destination)?;
        let mut sum = [0; 5];
        for b in &e.buckets {
            for (s, n) in sum.iter_mut().zip(b.counts) {
                *s += n;
            }
        }
        Some(sum)
    }

    #[test]
    fn reports_add_up_per_minute_and_leave_after_fifteen_minutes() {
        let mut w = Window::default();
        w.add(&report("b", &[("c", [1, 0, 0, 2, 0])]), 100);
        w.add(&report("b", &[("c", [1, 1, 0, 0, 3])]), 100);
        w.add(&report("b", &[("c", [0, 0, 5, 0, 0])]), 105);
        let s = w.snapshot(105);
        assert_eq!(counts_of(&s, "b", "c"), Some([2, 1, 5, 2, 3]));
        assert_eq!(s.edges[0].buckets.len(), 2, "one bucket per minute");
        // minute 100 counts through 114, minute 105 through 119
        assert_eq!(counts_of(&w.snapshot(114), "b", "c"), Some([2, 1, 5, 2, 3]));
        assert_eq!(counts_of(&w.snapshot(115), "b", "c"), Some([0, 0, 5, 0, 0]));
        assert_eq!(counts_of(&w.snapshot(120), "b", "c"), None);
        // a later report expires the workload that no longer reports
        w.add(&report("x", &[("c", [1, 0, 0, 0, 0])]), 200);
        assert_eq!(w.workload_count(), 1);
    }

    #[test]
    fn counts_saturate_instead_of_wrapping() {
        let mut w = Window::default();
        w.add(&report("b", &[("c", [u64::MAX, 0, 0, 0, 0])]), 1);
        w.add(&report("b", &[("c", [7, 0, 0, 0, 0])]), 1);
        assert_eq!(counts_of(&w.snapshot(1), "b", "c"), Some([u32::MAX, 0, 0, 0, 0]));
    }

    #[test]
    fn workloads_past_the_cap_evict_the_least_recently_reported_and_count_it() {
        let mut w = Window::default();
        let two = [("c", [1, 0, 0, 0, 0]), ("d", [1, 0, 0, 0, 0])];
        for i in 0..MAX_WORKLOADS {
            assert_eq!(w.add(&report(&format!("w{i}"), &two), 10), 0);
        }
        // w0 reports again: w1 is now the oldest
        w.add(&report("w0", &two), 10);
        assert_eq!(w.add(&report("new", &two), 11), 2, "w1's two edges are evicted");
        assert_eq!(w.workload_count(), MAX_WORKLOADS);
        let s = w.snapshot(11);
        assert!(counts_of(&s, "w0", "c").is_some());
        assert!(counts_of(&s, "w1", "c").is_none());
        assert!(counts_of(&s, "new", "d").is_some());
        assert_eq!(s.overflow, vec![(11, 2)]);
        assert_eq!(w.snapshot(11 + WINDOW_MINUTES).overflow, vec![], "overflow leaves with its window");
    }

    #[test]
    fn destinations_past_the_cap_evict_the_oldest_and_count_it() {
        let mut w = Window::default();
        let names: Vec<String> = (0..MAX_DESTINATIONS + 3).map(|i| format!("s{i}")).collect();
        for (i, name) in names.iter().enumerate() {
            w.add(&report("b", &[(name.as_str(), [1, 0, 0, 0, 0])]), 10 + (i / 100) as u32);
        }
        let s = w.snapshot(12);
        assert_eq!(s.edges.len(), MAX_DESTINATIONS);
        assert!(counts_of(&s, "b", "s0").is_none() && counts_of(&s, "b", "s2").is_none());
        assert!(counts_of(&s, "b", "s3").is_some());
        assert_eq!(s.overflow.iter().map(|(_, n)| n).sum::<u64>(), 3);
    }

    #[test]
    fn a_report_left_out_destinations_counts_them() {
        let mut w = Window::default();
        let mut r = report("b", &[("c", [1, 0, 0, 0, 0])]);
        r.left_out = 4;
        assert_eq!(w.add(&r, 3), 4);
        assert_eq!(w.snapshot(3).overflow, vec![(3, 4)]);
    }

    #[test]
    fn a_snapshot_round_trips_as_json() {
        let mut w = Window::default();
        w.add(&report("b", &[("c", [1, 2, 3, 4, 5])]), 7);
        let s = w.snapshot(7);
        let text = serde_json::to_string(&s).unwrap();
        assert!(text.contains("[7,8,[1,2,3,4,5]]"), "buckets are compact: {text}");
        assert_eq!(serde_json::from_str::<Snapshot>(&text).unwrap(), s);
    }
}
