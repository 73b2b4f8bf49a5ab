//! The SPEC's metrics. Request counters are kept in the VM and flushed to
//! Envoy on each tick: the request path then costs no host call for them.

use std::cell::Cell;

use proxy_wasm::types::{LogLevel, MetricType};

use crate::host;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Routed,
    Fallback,
    Failfast,
    Passthrough,
    InvalidGroup,
    TableUpdates,
    TableRejects,
}

const COUNTERS: [(Counter, &str); 7] = [
    (Counter::Routed, "isogroup_requests_routed_total"),
    (Counter::Fallback, "isogroup_requests_fallback_total"),
    (Counter::Failfast, "isogroup_requests_failfast_total"),
    (Counter::Passthrough, "isogroup_requests_passthrough_total"),
    (Counter::InvalidGroup, "isogroup_invalid_group_total"),
    (Counter::TableUpdates, "isogroup_table_updates_total"),
    (Counter::TableRejects, "isogroup_table_rejects_total"),
];

#[derive(Debug, Clone, Copy)]
pub enum Gauge {
    TableVersion,
    TableAgeSeconds,
}

const GAUGES: [(Gauge, &str); 2] =
    [(Gauge::TableVersion, "isogroup_table_version"), (Gauge::TableAgeSeconds, "isogroup_table_age_seconds")];

/// Metric ids from Envoy plus the counts not yet flushed.
#[derive(Debug, Default)]
pub struct Metrics {
    counter_ids: [Option<u32>; COUNTERS.len()],
    gauge_ids: [Option<u32>; GAUGES.len()],
    pending: [Cell<u64>; COUNTERS.len()],
}

impl Metrics {
    /// Defines every metric. Envoy merges same-named metrics across VMs.
    pub fn define() -> Metrics {
        let mut m = Metrics::default();
        for (i, (_, name)) in COUNTERS.iter().enumerate() {
            m.counter_ids[i] = defined(MetricType::Counter, name);
        }
        for (i, (_, name)) in GAUGES.iter().enumerate() {
            m.gauge_ids[i] = defined(MetricType::Gauge, name);
        }
        m
    }

    /// Counts one event; it reaches Envoy at the next `flush`.
    pub fn count(&self, counter: Counter) {
        let cell = &self.pending[counter as usize];
        cell.set(cell.get() + 1);
    }

    pub fn flush(&self) {
        for (i, cell) in self.pending.iter().enumerate() {
            let n = cell.take();
            if n == 0 {
                continue;
            }
            if let Some(id) = self.counter_ids[i] {
                if let Err(e) = host::increment_metric(id, n as i64) {
                    host::log(LogLevel::Warn, &format!("isogroup: {e}"));
                }
            }
        }
    }

    pub fn set(&self, gauge: Gauge, value: u64) {
        if let Some(id) = self.gauge_ids[gauge as usize] {
            if let Err(e) = host::record_metric(id, value) {
                host::log(LogLevel::Warn, &format!("isogroup: {e}"));
            }
        }
    }
}

fn defined(kind: MetricType, name: &str) -> Option<u32> {
    match host::define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(e) => {
            host::log(LogLevel::Warn, &format!("isogroup: metric {name}: {e}"));
            None
        }
    }
}
