//! The route's cluster specifier (`envoy.router.cluster_specifier_plugin.dynamic_modules`):
//! the lean arms' way to hand Envoy the cluster without a header write.
//!
//! Two configurations (its `specifier_config`):
//! - a plain string, the route's default cluster: the HTTP filter
//!   (`isogroup-lean`) decides, puts its cluster in the stream's dynamic
//!   metadata and refreshes the route's cluster, which runs `select` again
//!   (`select` first runs while Envoy resolves the route, before the filters'
//!   request-headers hooks; docs/native.md has the measured order). Until the
//!   filter has decided, or for a pass-through, the default cluster serves;
//! - a JSON object `{"decide": true, "default_cluster": ..., "plugin": {...}}`:
//!   `select` decides on its own, once, from the request headers (and the
//!   peer's address in edge mode) with core's scan and decide over the
//!   plugin configuration's table (inline, or a companion source the
//!   module's bootstrap extension polls: `bootstrap.rs`); no HTTP filter, no
//!   metadata, no refresh.
//!   What it cannot do from `select` (local replies, header writes, response
//!   annotations) is refused at configuration or listed in docs/native.md;
//!   a fail-fast is Envoy's cluster-not-found answer with the plugin's status.

use std::cell::Cell;
use std::sync::{Arc, Mutex, Weak};

use isogroup_core::request::{self, Peer};
use isogroup_core::{cidr, regex, Decision, Settings, Source, Table};

use crate::abi::{log, log_enabled, Level, SelectHandle};
use crate::filter::{METADATA_CLUSTER, METADATA_NAMESPACE};
use crate::sync::{self, SourceReader};

thread_local! {
    /// One per worker: `select` runs on the request's worker alone.
    static REGEX_SCRATCH: Cell<regex::Scratch> = Cell::new(regex::Scratch::default());
}

/// The cluster specifier's configuration.
pub struct SpecifierConfig {
    /// The cluster that serves a request nobody routed.
    default_cluster: Vec<u8>,
    /// Set: `select` decides itself (the deciding arm).
    decider: Option<Arc<Decider>>,
}

/// A plugin configuration and its table, shared by every specifier of the
/// process given the same plugin JSON (one per route otherwise): compiled
/// once, dropped with its last specifier.
struct Decider {
    /// The plugin configuration as given (re-serialised): the registry's key.
    key: Vec<u8>,
    settings: Settings,
    table: Tables,
}

/// Where a decider's table comes from.
#[allow(clippy::large_enum_variant)] // one per plugin configuration; the inline table read in place, no box to follow
enum Tables {
    /// No table: every request goes to the default cluster.
    None,
    Inline(Table),
    /// The table the module's bootstrap extension polls from the companion,
    /// per worker (`sync::current`: one atomic load, no lock); none before
    /// its first table.
    Companion(SourceReader),
}

static DECIDERS: Mutex<Vec<Weak<Decider>>> = Mutex::new(Vec::new());

/// The specifier JSON's own keys; anything else is refused by name.
const KEYS: [&str; 3] = ["decide", "default_cluster", "plugin"];

impl SpecifierConfig {
    pub fn new(_name: &[u8], config: &[u8]) -> Result<SpecifierConfig, String> {
        let config = config.trim_ascii();
        if config.first() != Some(&b'{') {
            if config.is_empty() {
                return Err("specifier_config: the default cluster's name is required".into());
            }
            return Ok(SpecifierConfig { default_cluster: config.to_vec(), decider: None });
        }
        let value: serde_json::Value =
            serde_json::from_slice(config).map_err(|e| format!("specifier_config: not valid JSON: {e}"))?;
        // Starts with `{`: an object or not JSON at all.
        let Some(object) = value.as_object() else {
            return Err("specifier_config: expected a JSON object".into());
        };
        if let Some(unknown) = object.keys().find(|k| !KEYS.contains(&k.as_str())) {
            return Err(format!("specifier_config: unknown field {unknown:?} (expected one of {KEYS:?})"));
        }
        let default_cluster = match object.get("default_cluster").and_then(serde_json::Value::as_str) {
            Some(c) if !c.trim().is_empty() => c.trim().as_bytes().to_vec(),
            _ => return Err("specifier_config.default_cluster: a cluster name (a non-empty string) is required".into()),
        };
        let decide = match object.get("decide") {
            None => false,
            Some(serde_json::Value::Bool(b)) => *b,
            Some(_) => return Err("specifier_config.decide: expected true or false".into()),
        };
        let plugin = object.get("plugin");
        if !decide {
            if plugin.is_some() {
                return Err("specifier_config.plugin: only read with \"decide\": true".into());
            }
            return Ok(SpecifierConfig { default_cluster, decider: None });
        }
        let Some(plugin) = plugin.filter(|p| p.is_object()) else {
            return Err(
                "specifier_config.plugin: the plugin configuration (a JSON object) is required with \"decide\": true"
                    .into(),
            );
        };
        let key = serde_json::to_vec(plugin).map_err(|e| format!("specifier_config.plugin: {e}"))?;
        Ok(SpecifierConfig { default_cluster, decider: Some(Decider::shared(key)?) })
    }
}

impl Decider {
    /// The process's decider for this plugin configuration, made on first use.
    fn shared(key: Vec<u8>) -> Result<Arc<Decider>, String> {
        let mut deciders = DECIDERS.lock().unwrap_or_else(|e| e.into_inner());
        deciders.retain(|d| d.strong_count() > 0);
        if let Some(found) = deciders.iter().filter_map(Weak::upgrade).find(|d| d.key == key) {
            return Ok(found);
        }
        let decider = Arc::new(Decider::new(key)?);
        deciders.push(Arc::downgrade(&decider));
        Ok(decider)
    }

    fn new(key: Vec<u8>) -> Result<Decider, String> {
        let mut settings = Settings::from_json(&key).map_err(|e| format!("specifier_config.plugin: {e}"))?;
        // What needs an HTTP filter is refused, not silently dropped.
        let refuse = |field: &str, why: &str| {
            Err(format!("specifier_config.plugin.{field}: {why}; the deciding cluster specifier cannot (use the isogroup filter)"))
        };
        if settings.propagation.is_some() {
            return refuse("propagation", "reports need the filter");
        }
        if settings.assist.is_some() {
            return refuse("propagation_assist", "the assist writes request headers");
        }
        if settings.edge.as_ref().is_some_and(|e| e.join_path.is_some()) {
            return refuse("edge.join_path", "a join is answered with a local reply");
        }
        let table = match core::mem::replace(&mut settings.source, Source::None) {
            Source::None => Tables::None,
            Source::Inline(table) => Tables::Inline(table),
            Source::Companion(source) => {
                let key = (source, settings.base_group.clone(), settings.limits);
                match sync::bootstrap_source(&key) {
                    Ok(reader) => Tables::Companion(reader),
                    Err(polled) => return Err(not_polled(&key, &polled)),
                }
            }
        };
        Ok(Decider { key, settings, table })
    }

    /// Decides this request and hands Envoy its cluster (`default_cluster`
    /// for a pass-through); a fail-fast is `Err(status)`, with no cluster.
    fn decide(&self, request: &SelectHandle, default_cluster: &[u8]) -> Result<(), u16> {
        let polled;
        let table = match &self.table {
            Tables::Inline(table) => table,
            Tables::Companion(reader) => match reader.current() {
                Some(t) => {
                    polled = t;
                    &**polled
                }
                None => {
                    request.set_cluster(default_cluster);
                    return Ok(());
                }
            },
            Tables::None => {
                request.set_cluster(default_cluster);
                return Ok(());
            }
        };
        let settings = &self.settings;
        let raw = request.request_headers();
        // Names Envoy hands over are lower-case ASCII; a non-UTF-8 name
        // cannot be a header the scan reads.
        let headers: Vec<(&str, &[u8])> =
            raw.iter().filter_map(|(k, v)| Some((core::str::from_utf8(k).ok()?, *v))).collect();
        #[cfg(feature = "test-panic")]
        #[allow(clippy::panic)] // the point of the feature
        if headers.iter().any(|(name, _)| *name == "x-isogroup-test-panic") {
            panic!("x-isogroup-test-panic: select");
        }
        let now_s = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let peer = match &settings.edge {
            Some(edge) if edge.needs_peer(Some(table)) => {
                Peer { ip: request.source_address().and_then(|a| cidr::peer_ip(&a)), now_s }
            }
            _ => Peer { ip: None, now_s },
        };
        let mut scratch = REGEX_SCRATCH.take();
        let incoming = request::scan_with(&headers, settings, peer, Some(table), &mut scratch);
        REGEX_SCRATCH.set(scratch);
        let cluster = match incoming.decide(table) {
            Decision::Route(r) => r.cluster.as_bytes(),
            Decision::PassThrough => default_cluster,
            Decision::FailFast(_) => return Err(settings.failfast_status),
        };
        if log_enabled(Level::Debug) {
            let c = String::from_utf8_lossy(cluster);
            log(Level::Debug, &format!("isogroup: cluster specifier decided (cluster {c})"));
        }
        request.set_cluster(cluster);
        Ok(())
    }
}

/// The error for a companion source no bootstrap extension polls.
fn not_polled(key: &sync::SourceKey, polled: &[String]) -> String {
    let (source, base_group, _) = key;
    let polled = if polled.is_empty() { "none".to_owned() } else { polled.join(", ") };
    format!(
        "specifier_config.plugin.table.companion: no isogroup bootstrap extension of this Envoy polls this source \
         (cluster {:?}, path {:?}, wait_s {}, base_group {base_group:?}, limits as given): the deciding cluster \
         specifier reads the table the module's bootstrap extension polls, which takes the same table.companion, \
         base_group and limits (sources polled: {polled})",
        source.cluster, source.path, source.wait_s
    )
}

pub fn select(config: &SpecifierConfig, request: &SelectHandle) -> bool {
    #[cfg(feature = "test-panic")]
    #[allow(clippy::panic)] // the point of the feature
    if config.default_cluster == b"test-panic" {
        panic!("specifier_config test-panic");
    }
    if let Some(decider) = &config.decider {
        return select_deciding(config, decider, request);
    }
    let picked = request.metadata(METADATA_NAMESPACE, METADATA_CLUSTER);
    if log_enabled(Level::Debug) {
        let seen = match picked.as_deref() {
            Some(c) => format!("filter picked {}", String::from_utf8_lossy(c)),
            None => "no filter decision yet".to_owned(),
        };
        log(Level::Debug, &format!("isogroup: cluster specifier select ({seen})"));
    }
    request.set_cluster(picked.as_deref().unwrap_or(&config.default_cluster));
    true
}

fn select_deciding(config: &SpecifierConfig, decider: &Decider, request: &SelectHandle) -> bool {
    match decider.decide(request, &config.default_cluster) {
        Ok(()) => true,
        Err(status) => {
            // No local reply from `select`: the empty cluster name, which
            // no cluster has (Envoy requires one), and Envoy answers with
            // this request's cluster-not-found status, the plugin's
            // fail-fast status (400..=599, which Envoy accepts). Returning
            // "no selection" instead would answer the route's own 503.
            if !request.set_cluster_not_found_status(status) {
                log(Level::Warn, &format!("isogroup: fail-fast status {status} refused by Envoy; its default serves"));
            }
            if log_enabled(Level::Debug) {
                log(Level::Debug, "isogroup: cluster specifier decided (fail-fast: the empty cluster)");
            }
            request.set_cluster(b"");
            true
        }
    }
}

#[cfg(test)]
mod tests;
