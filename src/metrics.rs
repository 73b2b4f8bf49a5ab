//! The SPEC's metrics. Request counters are kept in the VM and flushed to
//! Envoy on each tick: the request path then costs no host call for them.

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use core::cell::Cell;

use crate::proxy::{LogLevel, MetricType};
use isogroup_core::cat;

use crate::host::{Host, HostError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Routed,
    Fallback,
    Failfast,
    Passthrough,
    InvalidGroup,
    TableUpdates,
    TableRejects,
    TableFetches,
    TableDeltaFallbacks,
    PropagationKept,
    PropagationChanged,
    PropagationHealed,
    PropagationDropped,
    PropagationUntraced,
}

impl Counter {
    pub const ALL: [Counter; 14] = [
        Counter::Routed,
        Counter::Fallback,
        Counter::Failfast,
        Counter::Passthrough,
        Counter::InvalidGroup,
        Counter::TableUpdates,
        Counter::TableRejects,
        Counter::TableFetches,
        Counter::TableDeltaFallbacks,
        Counter::PropagationKept,
        Counter::PropagationChanged,
        Counter::PropagationHealed,
        Counter::PropagationDropped,
        Counter::PropagationUntraced,
    ];

    /// By `propagation::Class`, in its order.
    pub const PROPAGATION: [Counter; 5] = [
        Counter::PropagationKept,
        Counter::PropagationChanged,
        Counter::PropagationHealed,
        Counter::PropagationDropped,
        Counter::PropagationUntraced,
    ];

    /// By the variant's index (the test below checks the order).
    pub fn name(self) -> &'static str {
        const NAMES: [&str; Counter::ALL.len()] = [
            "isogroup_requests_routed_total",
            "isogroup_requests_fallback_total",
            "isogroup_requests_failfast_total",
            "isogroup_requests_passthrough_total",
            "isogroup_invalid_group_total",
            "isogroup_table_updates_total",
            "isogroup_table_rejects_total",
            "isogroup_table_fetches_total",
            "isogroup_table_delta_fallbacks_total",
            "isogroup_propagation_kept_total",
            "isogroup_propagation_changed_total",
            "isogroup_propagation_healed_total",
            "isogroup_propagation_dropped_total",
            "isogroup_propagation_untraced_total",
        ];
        NAMES[self as usize]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gauge {
    TableVersion,
    TableAgeSeconds,
}

impl Gauge {
    pub const ALL: [Gauge; 2] = [Gauge::TableVersion, Gauge::TableAgeSeconds];

    pub fn name(self) -> &'static str {
        match self {
            Gauge::TableVersion => "isogroup_table_version",
            Gauge::TableAgeSeconds => "isogroup_table_age_seconds",
        }
    }
}

/// Metric ids from Envoy plus the counts not yet flushed, both indexed by
/// the variant's position in `ALL`.
#[derive(Debug, Default)]
pub struct Metrics {
    counter_ids: [Option<u32>; Counter::ALL.len()],
    gauge_ids: [Option<u32>; Gauge::ALL.len()],
    pending: [Cell<u64>; Counter::ALL.len()],
}

impl Metrics {
    /// Defines every metric. Envoy merges same-named metrics across VMs.
    pub fn define(host: &impl Host) -> Metrics {
        let mut m = Metrics::default();
        for (id, counter) in m.counter_ids.iter_mut().zip(Counter::ALL) {
            *id = defined(host, MetricType::Counter, counter.name());
        }
        for (id, gauge) in m.gauge_ids.iter_mut().zip(Gauge::ALL) {
            *id = defined(host, MetricType::Gauge, gauge.name());
        }
        m
    }

    /// Counts one event; it reaches Envoy at the next `flush`.
    pub fn count(&self, counter: Counter) {
        let cell = &self.pending[counter as usize];
        cell.set(cell.get().saturating_add(1));
    }

    pub fn flush(&self, host: &impl Host) {
        for ((cell, id), counter) in self.pending.iter().zip(self.counter_ids).zip(Counter::ALL) {
            let n = cell.take();
            let Some(id) = id.filter(|_| n > 0) else { continue };
            if let Err(e) = host.increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX)) {
                warn(host, counter.name(), e);
            }
        }
    }

    pub fn set(&self, host: &impl Host, gauge: Gauge, value: u64) {
        if let Some(id) = self.gauge_ids[gauge as usize] {
            if let Err(e) = host.record_metric(id, value) {
                warn(host, gauge.name(), e);
            }
        }
    }
}

fn defined(host: &impl Host, kind: MetricType, name: &str) -> Option<u32> {
    match host.define_metric(kind, name) {
        Ok(id) => Some(id),
        Err(e) => {
            warn(host, name, e);
            None
        }
    }
}

fn warn(host: &impl Host, name: &str, e: HostError) {
    host.log(LogLevel::Warn, &cat!("isogroup: metric ", name, ": ", e));
}

#[cfg(test)]
mod tests {
    use super::{Counter, Gauge};

    #[test]
    fn every_variant_sits_at_its_own_index_with_a_distinct_name() {
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?}");
        }
        for (i, g) in Gauge::ALL.iter().enumerate() {
            assert_eq!(*g as usize, i, "{g:?}");
        }
        let mut names: Vec<&str> =
            Counter::ALL.iter().map(|c| c.name()).chain(Gauge::ALL.iter().map(|g| g.name())).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Counter::ALL.len() + Gauge::ALL.len());
        // Names by index: each variant keeps the name the SPEC gives it.
        let pinned = [
            (Counter::Routed, "isogroup_requests_routed_total"),
            (Counter::Fallback, "isogroup_requests_fallback_total"),
            (Counter::Failfast, "isogroup_requests_failfast_total"),
            (Counter::Passthrough, "isogroup_requests_passthrough_total"),
            (Counter::InvalidGroup, "isogroup_invalid_group_total"),
            (Counter::TableUpdates, "isogroup_table_updates_total"),
            (Counter::TableRejects, "isogroup_table_rejects_total"),
            (Counter::TableFetches, "isogroup_table_fetches_total"),
            (Counter::TableDeltaFallbacks, "isogroup_table_delta_fallbacks_total"),
            (Counter::PropagationKept, "isogroup_propagation_kept_total"),
            (Counter::PropagationChanged, "isogroup_propagation_changed_total"),
            (Counter::PropagationHealed, "isogroup_propagation_healed_total"),
            (Counter::PropagationDropped, "isogroup_propagation_dropped_total"),
            (Counter::PropagationUntraced, "isogroup_propagation_untraced_total"),
        ];
        for (class, counter) in Counter::PROPAGATION.iter().enumerate() {
            assert_eq!(
                counter.name(),
                format!("isogroup_propagation_{}_total", isogroup_core::propagation::CLASS_NAMES[class])
            );
        }
        for (counter, name) in pinned {
            assert_eq!(counter.name(), name, "{counter:?}");
        }
    }
}
