//! `GET /v1/propagation`: the window's counts per edge (workload,
//! namespace, destination) and per workload, summed over every replica's
//! snapshot, ranked worst first, each edge with what to do about it.
//!
//! `drop_share = (dropped + healed) / (kept + changed + healed + dropped)`
//! (0 when that sum is 0): the share of requests whose group the app did
//! not forward, whether or not the assist healed them. Counts are the
//! sampled counts as reported (`sample` says 1 in how many traces).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::window::{in_window, Snapshot, WINDOW_MINUTES};

/// Counts in class order: kept, changed, healed, dropped, untraced.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sums([u64; 5]);

impl Sums {
    fn add(&mut self, counts: &[u32; 5]) {
        for (s, n) in self.0.iter_mut().zip(counts) {
            *s = s.saturating_add(u64::from(*n));
        }
    }

    fn add_sums(&mut self, other: &Sums) {
        for (s, n) in self.0.iter_mut().zip(other.0) {
            *s = s.saturating_add(n);
        }
    }

    pub fn kept(&self) -> u64 {
        self.0[0]
    }
    pub fn changed(&self) -> u64 {
        self.0[1]
    }
    pub fn healed(&self) -> u64 {
        self.0[2]
    }
    pub fn dropped(&self) -> u64 {
        self.0[3]
    }
    pub fn untraced(&self) -> u64 {
        self.0[4]
    }

    pub fn drop_share(&self) -> f64 {
        let traced =
            self.kept().saturating_add(self.changed()).saturating_add(self.healed()).saturating_add(self.dropped());
        if traced == 0 {
            return 0.0;
        }
        self.dropped().saturating_add(self.healed()) as f64 / traced as f64
    }
}

/// Worst first: drop share, then dropped, descending; then the names.
fn worst_first(a: (&Sums, [&str; 3]), b: (&Sums, [&str; 3])) -> Ordering {
    b.0.drop_share()
        .partial_cmp(&a.0.drop_share())
        .unwrap_or(Ordering::Equal)
        .then(b.0.dropped().cmp(&a.0.dropped()))
        .then(a.1.cmp(&b.1))
}

/// What to do about one edge, in words.
pub fn advice(workload: &str, destination: &str, s: &Sums) -> String {
    let mut out = Vec::new();
    if s.dropped() > 0 {
        out.push(format!(
            "{workload} drops the group on calls to {destination} but keeps the trace: forward x-isogroup / baggage \
             from its inbound request; meanwhile turn on the assist's heal (propagation_assist.heal: true), which \
             restores the group from the trace"
        ));
    }
    if s.healed() > 0 {
        out.push(format!(
            "the assist healed {} of {workload}'s calls to {destination} (the app forwards only the trace): forward \
             x-isogroup / baggage so the lane does not depend on the assist",
            s.healed()
        ));
    }
    if s.changed() > 0 {
        out.push(format!(
            "{} calls to {destination} changed lane (the app sent, or the workload stamped, another group): check \
             {workload}'s workload_group and the group it sends",
            s.changed()
        ));
    }
    if s.untraced() > 0 {
        out.push(format!(
            "{} calls to {destination} carried no trace while {workload} served lane traffic (an upper bound): if \
             they belong to lane requests, forward x-isogroup / baggage, or traceparent so the assist can heal them",
            s.untraced()
        ));
    }
    if out.is_empty() {
        return "none: the group is forwarded".into();
    }
    out.join("; ")
}

struct EdgeSum {
    sums: Sums,
    /// The sample of the newest bucket (its minute first).
    sample: (u32, u32),
}

/// The answer for `snapshots` (one per replica) at unix minute `now`.
pub fn answer(snapshots: &[Snapshot], now: u32) -> Value {
    let mut edges: BTreeMap<(&str, &str, &str), EdgeSum> = BTreeMap::new();
    let mut overflow = 0u64;
    for snapshot in snapshots {
        for edge in &snapshot.edges {
            for bucket in edge.buckets.iter().filter(|b| in_window(b.minute, now)) {
                let e = edges
                    .entry((&edge.workload, &edge.namespace, &edge.destination))
                    .or_insert(EdgeSum { sums: Sums::default(), sample: (0, 0) });
                e.sums.add(&bucket.counts);
                e.sample = e.sample.max((bucket.minute, bucket.sample));
            }
        }
        overflow = overflow.saturating_add(snapshot.truncated);
        for (minute, n) in &snapshot.overflow {
            if in_window(*minute, now) {
                overflow = overflow.saturating_add(*n);
            }
        }
    }
    let mut workloads: BTreeMap<(&str, &str), Sums> = BTreeMap::new();
    for ((workload, namespace, _), e) in &edges {
        workloads.entry((workload, namespace)).or_default().add_sums(&e.sums);
    }
    let mut edges: Vec<_> = edges.into_iter().collect();
    edges.sort_by(|(a, ea), (b, eb)| worst_first((&ea.sums, [a.0, a.1, a.2]), (&eb.sums, [b.0, b.1, b.2])));
    let mut workloads: Vec<_> = workloads.into_iter().collect();
    workloads.sort_by(|(a, sa), (b, sb)| worst_first((sa, [a.0, a.1, ""]), (sb, [b.0, b.1, ""])));
    let edges: Vec<Value> = edges
        .iter()
        .map(|((workload, namespace, destination), e)| {
            let s = &e.sums;
            json!({
                "workload": workload, "namespace": namespace, "destination": destination,
                "kept": s.kept(), "changed": s.changed(), "healed": s.healed(), "dropped": s.dropped(),
                "untraced": s.untraced(), "sample": e.sample.1, "drop_share": s.drop_share(),
                "advice": advice(workload, destination, s),
            })
        })
        .collect();
    let workloads: Vec<Value> = workloads
        .iter()
        .map(|((workload, namespace), s)| {
            json!({
                "workload": workload, "namespace": namespace,
                "kept": s.kept(), "changed": s.changed(), "healed": s.healed(), "dropped": s.dropped(),
                "untraced": s.untraced(), "drop_share": s.drop_share(),
            })
        })
        .collect();
    json!({
        "advisory": true,
        "window_s": u64::from(WINDOW_MINUTES) * 60,
        "edges": edges,
        "workloads": workloads,
        "overflow": overflow,
    })
}

/// The edges of `snapshot`, worst first (for a bounded copy: the worst are
/// kept when not all fit).
pub fn rank_edges(snapshot: &mut Snapshot) {
    let mut ranked: Vec<(Sums, super::window::Edge)> = snapshot
        .edges
        .drain(..)
        .map(|e| {
            let mut s = Sums::default();
            for b in &e.buckets {
                s.add(&b.counts);
            }
            (s, e)
        })
        .collect();
    ranked.sort_by(|(sa, a), (sb, b)| {
        worst_first(
            (sa, [&a.workload, &a.namespace, &a.destination]),
            (sb, [&b.workload, &b.namespace, &b.destination]),
        )
    });
    snapshot.edges = ranked.into_iter().map(|(_, e)| e).collect();
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::window::{Bucket, Edge};
    use super::*;

    fn edge(workload: &str, destination: &str, minute: u32, counts: [u32; 5]) -> Edge {
        Edge {
            workload: workload.into(),
            namespace: "demo".into(),
            destination: destination.into(),
            buckets: vec![Bucket { minute, sample: 8, counts }],
        }
    }

    /// The answer's edges as `workload->destination`, in its order.
    fn edge_names(got: &serde_json::Value) -> Vec<String> {
        got["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| format!("{}->{}", e["workload"].as_str().unwrap(), e["destination"].as_str().unwrap()))
            .collect()
    }

    #[test]
    fn the_answer_sums_ranks_and_advises() {
        let a = Snapshot {
            edges: vec![
                edge("a", "b", 100, [10, 0, 0, 0, 0]),
                edge("b", "c", 100, [1, 0, 0, 3, 0]),
                edge("x", "c", 100, [0, 0, 4, 0, 2]),
            ],
            overflow: vec![(100, 2), (50, 9)],
            truncated: 1,
        };
        // another replica's copy of the same edges adds up
        let b = Snapshot { edges: vec![edge("b", "c", 101, [1, 1, 0, 1, 0])], overflow: vec![], truncated: 0 };
        let got = answer(&[a, b], 101);
        assert_eq!(got["advisory"], true);
        assert_eq!(got["window_s"], 900);
        assert_eq!(got["overflow"], 3, "minute 50 is out of the window");
        let edges = got["edges"].as_array().unwrap();
        let names = edge_names(&got);
        // x->c: 4/4 healed = 1.0; b->c: 4 dropped of 7 traced; a->b: 0
        assert_eq!(names, ["x->c", "b->c", "a->b"]);
        let bc = &edges[1];
        assert_eq!((bc["kept"].as_u64(), bc["changed"].as_u64(), bc["dropped"].as_u64()), (Some(2), Some(1), Some(4)));
        assert_eq!(bc["namespace"], "demo");
        assert_eq!(bc["sample"], 8);
        assert!((bc["drop_share"].as_f64().unwrap() - 4.0 / 7.0).abs() < 1e-9);
        let bc_advice = bc["advice"].as_str().unwrap();
        assert!(bc_advice.contains("forward x-isogroup / baggage") && bc_advice.contains("heal"), "{bc_advice}");
        let xc_advice = edges[0]["advice"].as_str().unwrap();
        assert!(xc_advice.contains("the assist healed 4"), "{xc_advice}");
        assert!(xc_advice.contains("carried no trace"), "{xc_advice}");
        assert_eq!(edges[2]["advice"], "none: the group is forwarded");
        assert_eq!(edges[2]["drop_share"], 0.0);
        let workloads: Vec<&str> =
            got["workloads"].as_array().unwrap().iter().map(|w| w["workload"].as_str().unwrap()).collect();
        assert_eq!(workloads, ["x", "b", "a"]);
        assert!(got["workloads"][0].get("advice").is_none());
    }

    #[test]
    fn ties_go_by_dropped_then_names_and_nothing_traced_is_zero() {
        let s = Snapshot {
            edges: vec![
                edge("b", "c", 1, [0, 0, 0, 1, 0]),
                edge("a", "c", 1, [0, 0, 0, 5, 0]),
                edge("a", "b", 1, [0, 0, 0, 5, 0]),
                edge("z", "c", 1, [0, 0, 0, 0, 9]),
            ],
            ..Snapshot::default()
        };
        let got = answer(&[s], 1);
        assert_eq!(edge_names(&got), ["a->b", "a->c", "b->c", "z->c"]);
        assert_eq!(got["edges"][3]["drop_share"], 0.0, "only untraced: nothing to share");
    }

    #[test]
    fn an_empty_window_is_an_empty_answer() {
        let got = answer(&[], 5);
        assert_eq!(got, json!({"advisory": true, "window_s": 900, "edges": [], "workloads": [], "overflow": 0}));
    }
}
