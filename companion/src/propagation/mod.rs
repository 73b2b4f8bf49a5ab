//! Propagation reports (SPEC "Third round: Propagation reports"): what the
//! filters' pollers post (`report`), who may post when (`instances`), the
//! last 15 minutes of it (`window`), the ranked answer (`view`), and, with
//! the etcd store, every replica's window shared through etcd (`shared`)
//! so every replica answers the same. Advisory only: nothing here touches
//! the table or the store.

pub mod instances;
pub mod report;
pub mod shared;
pub mod view;
pub mod window;

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::Value;

use crate::http::auth::Token;
use crate::metrics::Metrics;
use instances::Instances;
use report::Report;
use shared::Shared;
use window::{Snapshot, Window};

/// Why a report was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    /// Another report from this instance within `instances::EVERY`; retry
    /// after this many seconds.
    TooFrequent(u64),
}

pub struct Propagation {
    intake: Mutex<Intake>,
    /// `serve --report-token-file`: a bearer token every report must carry.
    pub token: Option<Token>,
    metrics: Arc<Metrics>,
    /// The etcd store: every replica's window, shared.
    shared: Option<Arc<Shared>>,
}

#[derive(Default)]
struct Intake {
    instances: Instances,
    window: Window,
    /// Bumped by every accepted report (the shared copy is written only
    /// when it moved).
    changes: u64,
}

/// The unix minute now.
pub fn now_minute() -> u32 {
    u32::try_from(crate::store::now_s() / 60).unwrap_or(u32::MAX)
}

impl Propagation {
    pub fn new(metrics: Arc<Metrics>, token: Option<Token>, shared: Option<Arc<Shared>>) -> Propagation {
        Propagation { intake: Mutex::new(Intake::default()), token, metrics, shared }
    }

    /// Takes `instance`'s turn (one report per 5 s), before its body is read.
    pub fn admit(&self, instance: &str, now: Instant) -> Result<(), Refused> {
        let Ok(mut intake) = self.intake.lock() else { return Ok(()) };
        let admitted = intake.instances.admit(instance, now);
        self.metrics.report_instances.set(intake.instances.len() as i64);
        admitted.map_err(|wait| Refused::TooFrequent(wait.as_secs_f64().ceil().max(1.0) as u64))
    }

    /// Adds a checked report at `minute`.
    pub fn accept(&self, report: &Report, minute: u32) {
        let Ok(mut intake) = self.intake.lock() else { return };
        let overflowed = intake.window.add(report, minute);
        intake.changes += 1;
        self.metrics.reports_accepted.inc();
        if overflowed > 0 {
            self.metrics.reports_overflow.inc_by(overflowed);
        }
    }

    /// This replica's window at `minute`, and how many reports it took so far.
    pub fn local(&self, minute: u32) -> (Snapshot, u64) {
        match self.intake.lock() {
            Ok(intake) => (intake.window.snapshot(minute), intake.changes),
            Err(_) => (Snapshot::default(), 0),
        }
    }

    /// `GET /v1/propagation`'s body: this replica's window, or with etcd
    /// every replica's as shared there (so every replica answers the same).
    /// `limit`: at most so many edges, the worst.
    pub async fn answer(&self, limit: Option<usize>) -> Result<Value, String> {
        let minute = now_minute();
        let snapshots = match &self.shared {
            Some(shared) => shared.read_all().await?,
            None => Arc::new(vec![self.local(minute).0]),
        };
        let mut answer = view::answer(&snapshots, minute);
        if let (Some(limit), Some(edges)) = (limit, answer.get_mut("edges").and_then(Value::as_array_mut)) {
            edges.truncate(limit);
        }
        Ok(answer)
    }
}
