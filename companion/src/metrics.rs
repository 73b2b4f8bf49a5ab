//! The companion's Prometheus metrics, and the distinct pollers seen lately.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::pollers::Pollers;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EtcdLabels {
    pub op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminLabels {
    pub op: String,
    pub status: u16,
}

pub struct Metrics {
    registry: Registry,
    pub table_version: Gauge,
    pub table_updates: Counter,
    pub file_rejects: Counter,
    pub polls: Counter,
    pub held_polls: Gauge,
    pub delta_answers: Counter,
    pub pollers: Gauge,
    pub admin: Family<AdminLabels, Counter>,
    pub watch_errors: Counter,
    pub ready: Gauge,
    pub store_rejects: Counter,
    pub etcd_requests: Family<EtcdLabels, Counter>,
    pub etcd_conflicts: Counter,
    pub etcd_errors: Counter,
    pub rollback_polls: Counter,
    pub kube_watch_errors: Family<KindLabels, Counter>,
    pub kube_leader: Gauge,
    pub kube_leader_changes: Counter,
    pub kube_invalid_groups: Gauge,
    pub kube_istio_writes: Counter,
    pub kube_istio_conflicts: Gauge,
    pub handler_panics: Counter,
    pub kube_istio_resyncs: Counter,
    pub lanes_left_out: Gauge,
    pub reports_accepted: Counter,
    pub reports_refused: Family<ReasonLabels, Counter>,
    pub reports_overflow: Counter,
    pub reports_shared_truncated: Counter,
    pub report_instances: Gauge,
    seen: Pollers,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("isogroup_companion");
        let m = Metrics {
            table_version: Gauge::default(),
            table_updates: Counter::default(),
            file_rejects: Counter::default(),
            polls: Counter::default(),
            held_polls: Gauge::default(),
            delta_answers: Counter::default(),
            pollers: Gauge::default(),
            admin: Family::default(),
            watch_errors: Counter::default(),
            ready: Gauge::default(),
            store_rejects: Counter::default(),
            etcd_requests: Family::default(),
            etcd_conflicts: Counter::default(),
            etcd_errors: Counter::default(),
            rollback_polls: Counter::default(),
            kube_watch_errors: Family::default(),
            kube_leader: Gauge::default(),
            kube_leader_changes: Counter::default(),
            kube_invalid_groups: Gauge::default(),
            kube_istio_writes: Counter::default(),
            kube_istio_conflicts: Gauge::default(),
            handler_panics: Counter::default(),
            kube_istio_resyncs: Counter::default(),
            lanes_left_out: Gauge::default(),
            reports_accepted: Counter::default(),
            reports_refused: Family::default(),
            reports_overflow: Counter::default(),
            reports_shared_truncated: Counter::default(),
            report_instances: Gauge::default(),
            seen: Pollers::default(),
            registry: Registry::default(),
        };
        registry.register("table_version", "Version of the table in force", m.table_version.clone());
        registry.register("table_updates", "Tables accepted (admin writes and file edits)", m.table_updates.clone());
        registry.register("file_rejects", "Table file edits refused by validation", m.file_rejects.clone());
        registry.register("polls", "Table requests answered", m.polls.clone());
        registry.register("held_polls", "Long-polls waiting right now", m.held_polls.clone());
        registry.register(
            "delta_answers",
            "Polls answered with a delta instead of the whole table",
            m.delta_answers.clone(),
        );
        registry.register("pollers", "Distinct x-isogroup-poller ids seen in the last 120 s", m.pollers.clone());
        registry.register("admin_requests", "Admin API requests by operation and status", m.admin.clone());
        registry.register("watch_errors", "Kubernetes watch errors (retried)", m.watch_errors.clone());
        registry.register("ready", "1 once this replica has loaded the whole state (see /readyz)", m.ready.clone());
        registry.register(
            "store_rejects",
            "Stored states refused (malformed keys or values, invalid table); the table in force stays",
            m.store_rejects.clone(),
        );
        registry.register("etcd_requests", "etcd requests by operation", m.etcd_requests.clone());
        registry.register(
            "etcd_conflicts",
            "etcd writes retried after another replica wrote first",
            m.etcd_conflicts.clone(),
        );
        registry.register("etcd_errors", "etcd requests or watches that failed (retried)", m.etcd_errors.clone());
        registry.register(
            "rollback_polls",
            "Polls holding the current epoch with a version above the one served: the store went back (a restore), or a forged poll",
            m.rollback_polls.clone(),
        );
        registry.register(
            "kube_watch_errors",
            "Kubernetes list/watch errors by kind (each retried after a jittered backoff)",
            m.kube_watch_errors.clone(),
        );
        registry.register("kube_leader", "1 while this replica holds the Lease and serves", m.kube_leader.clone());
        registry.register(
            "kube_leader_changes",
            "Times this replica took or lost the Lease",
            m.kube_leader_changes.clone(),
        );
        registry.register(
            "kube_invalid_groups",
            "IsolationGroup objects left out of the table (their status says why)",
            m.kube_invalid_groups.clone(),
        );
        registry.register(
            "kube_istio_writes",
            "Istio objects applied or deleted by the leader (--istio)",
            m.kube_istio_writes.clone(),
        );
        registry.register(
            "kube_istio_conflicts",
            "Services whose Istio objects are left alone: another DestinationRule or VirtualService owns the host or name",
            m.kube_istio_conflicts.clone(),
        );
        registry.register(
            "handler_panics",
            "HTTP requests whose handler panicked (answered 500; the process keeps serving)",
            m.handler_panics.clone(),
        );
        registry.register(
            "kube_istio_resyncs",
            "Periodic passes of the Istio reconciler over the watched objects (--resync-s)",
            m.kube_istio_resyncs.clone(),
        );
        registry.register(
            "lanes_left_out",
            "Lanes left out of the table because with them it would be over a limit or invalid (newest first)",
            m.lanes_left_out.clone(),
        );
        registry.register(
            "reports_accepted",
            "Propagation reports (POST /v1/reports) taken into the window",
            m.reports_accepted.clone(),
        );
        registry.register(
            "reports_refused",
            "Propagation reports refused, by reason (not_leader, unauthorized, instance, too_large, too_frequent, invalid)",
            m.reports_refused.clone(),
        );
        registry.register(
            "reports_overflow",
            "Propagation edges (workload, destination) evicted or left out past the caps (2,000 workloads x 200 destinations)",
            m.reports_overflow.clone(),
        );
        registry.register(
            "reports_shared_truncated",
            "Propagation edges left out of this replica's etcd copy (bounded in bytes), summed over its writes",
            m.reports_shared_truncated.clone(),
        );
        registry.register(
            "report_instances",
            "Reporting instances (x-isogroup-poller) remembered for the rate limit (at most 10,000)",
            m.report_instances.clone(),
        );
        Metrics { registry, ..m }
    }

    pub fn table_updated(&self, version: u64) {
        self.table_updates.inc();
        self.table_version.set(version as i64);
    }

    /// Records a poll from `id`, refreshing the live-poller gauge.
    pub fn saw_poller(&self, id: &str) {
        self.pollers.set(self.seen.saw(id, Instant::now()) as i64);
    }

    pub fn encode(&self) -> String {
        self.pollers.set(self.seen.live(Instant::now()) as i64);
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
