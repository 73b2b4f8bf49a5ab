//! The module's bootstrap extension (`envoy.bootstrap.dynamic_modules`,
//! `extension_name: isogroup`): one per process, on Envoy's main thread, it
//! polls one companion source (the filter's `table.companion` shape, with
//! the table's `base_group` and `limits`) with its own callouts and timers,
//! and publishes each table into the module's registry of sources
//! (`sync.rs`). The deciding cluster specifier, which has no callouts or
//! timers of its own, reads the table there; a filter configuration naming
//! the same source joins it too, so the process keeps one poller per source.
//!
//! Envoy makes bootstrap extensions before any listener or route, so the
//! extension is its source's first member and polls it; its first poll
//! waits for the server to be initialized (Envoy's callouts need the
//! cluster manager). Envoy starts listeners once it is told the extension is
//! ready, which the hook does at once: before the first table, the deciding
//! specifier serves its default cluster, as the filter passes every request
//! through (SPEC "Per-request decision").

use std::sync::Arc;
use std::time::Duration;

use isogroup_core::{Settings, Source};

use crate::abi::{BootstrapHandle, Timer, TimerId};
use crate::sync::{Answer, Poller, SourceKey, SyncMetrics, AGE_PERIOD};

/// The bootstrap extension's JSON keys: a source's, out of the plugin
/// configuration's schema; anything else is refused by name.
const KEYS: [&str; 3] = ["table", "base_group", "limits"];

/// One bootstrap extension configuration (Envoy keeps it for the process's life).
pub struct BootstrapConfig {
    poller: Poller,
    poll_timer: Arc<Timer>,
    age_timer: Timer,
}

impl BootstrapConfig {
    /// Main thread, in config_new (the only time Envoy lets it define metrics).
    pub fn new(envoy: BootstrapHandle, name: &[u8], json: &[u8]) -> Result<BootstrapConfig, String> {
        let key = parse(name, json)?;
        let metrics = SyncMetrics {
            version: envoy.define_gauge("isogroup_table_version"),
            age: envoy.define_gauge("isogroup_table_age_seconds"),
            updates: envoy.define_counter("isogroup_table_updates_total"),
            rejects: envoy.define_counter("isogroup_table_rejects_total"),
            fetches: envoy.define_counter("isogroup_table_fetches_total"),
            delta_fallbacks: envoy.define_counter("isogroup_table_delta_fallbacks_total"),
        };
        let poll_timer = Arc::new(envoy.timer());
        let age_timer = envoy.timer();
        let poller = Poller::start_bootstrap(key, envoy, poll_timer.clone(), metrics);
        Ok(BootstrapConfig { poller, poll_timer, age_timer })
    }

    /// Main thread: callouts can reach clusters from now on.
    pub fn on_server_initialized(&self) {
        // Armed first: a panic in what follows must not stop the gauge.
        self.age_timer.enable(millis(AGE_PERIOD));
        self.poller.poll_soon();
    }

    /// Main thread: one of this configuration's timers fired.
    pub fn on_timer(&self, fired: TimerId) {
        if self.poll_timer.is(fired) {
            self.poller.on_scheduled(crate::sync::EVENT_POLL);
        } else if self.age_timer.is(fired) {
            // Re-armed first: a panic in the refresh must not stop it.
            self.age_timer.enable(millis(AGE_PERIOD));
            self.poller.on_scheduled(crate::sync::EVENT_AGE);
        }
    }

    /// Main thread: the answer to one of this configuration's callouts.
    pub fn on_callout_done(&self, id: u64, answer: Answer) {
        self.poller.on_callout_done(id, answer);
    }

    /// Main thread: one of this configuration's hooks panicked; polling goes on.
    pub fn recover_after_panic(&self) {
        self.poller.recover_after_panic();
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// The source a bootstrap extension configuration names: `extension_name`
/// `isogroup`, and a JSON object with `table.companion` (required),
/// `base_group` and `limits`, validated as the plugin configuration's.
pub fn parse(name: &[u8], json: &[u8]) -> Result<SourceKey, String> {
    if name != b"isogroup" {
        return Err(format!("extension_name {:?}: expected \"isogroup\"", String::from_utf8_lossy(name)));
    }
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|e| format!("extension_config: not valid JSON: {e}"))?;
    let Some(object) = value.as_object() else {
        return Err("extension_config: expected a JSON object with \"table\": {\"companion\": ...}".into());
    };
    if let Some(unknown) = object.keys().find(|k| !KEYS.contains(&k.as_str())) {
        return Err(format!(
            "extension_config: unknown field {unknown:?} (a bootstrap extension takes only {KEYS:?}: the source it polls)"
        ));
    }
    let settings = Settings::from_json(json).map_err(|e| format!("extension_config: {e}"))?;
    match settings.source {
        Source::Companion(source) => Ok((source, settings.base_group, settings.limits)),
        Source::Inline(_) | Source::None => Err(
            "extension_config.table.companion: required (the bootstrap extension polls a companion; an inline table goes in the specifier's plugin configuration)"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests;
