//! The companion deletes expired source bindings itself (SPEC: expiry is a
//! store write, so a new version): a timer, not per request. The write is
//! `Change::ExpireSources`, guarded by what the store holds, so replicas
//! racing to delete the same binding change nothing twice.

use std::sync::Arc;
use std::time::Duration;

use super::{now_ms, Change, Readiness, Store};

/// How often the served table is looked at (in memory; no store read).
const TICK: Duration = Duration::from_secs(1);

pub async fn expire_sources(store: Arc<dyn Store>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let now = now_ms() / 1000;
        let served = store.served();
        // Only a replica that takes writes deletes (Kubernetes: the leader).
        // Warnings (degraded) do not stop expiry: the store can be written.
        if !matches!(served.readiness(), Readiness::Ready | Readiness::Degraded(_)) || store.not_serving().is_some() {
            continue;
        }
        let snap = served.current();
        if !snap.raw.sources.iter().any(|s| s.expires_at.is_some_and(|t| now >= t)) {
            continue;
        }
        match store.apply(Change::ExpireSources { now }).await {
            Ok(snap) => tracing::info!(version = snap.version, "expired source bindings deleted"),
            Err(e) => tracing::warn!(error = %e, "expired source bindings not deleted yet; retrying"),
        }
    }
}
