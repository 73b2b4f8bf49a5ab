//! Per request, as the wasm filter does it (src/http.rs): sanitise →
//! extract → decide → rewrite headers or answer locally; on the response,
//! annotate. The decisions, edits and replies all come from core; this file
//! executes them over the module's ABI handles.
//!
//! Two ways to hand the cluster to Envoy, chosen by the filter's name:
//! - `isogroup` (default): the routing headers, as the wasm build writes
//!   them, then a route-cache clear so Envoy matches the route again;
//! - `isogroup-lean`: the cluster goes into the stream's dynamic metadata
//!   and only the route's cluster is refreshed, which runs the route's
//!   cluster specifier (`specifier.rs`) again: no header write, no route
//!   match again.

use core::cell::Cell;

use isogroup_core::cidr;
use isogroup_core::request::{self, Edit, LocalReply, Peer, Served};
use isogroup_core::{regex, Decision, Settings, Source, Table};

use crate::abi::{log, log_enabled, validation_mode, ConfigHandle, Level, StreamHandle};
use crate::sync::{self, Answer, Poller, SyncMetrics, WorkerTable};

thread_local! {
    /// One per worker thread: a stream's hooks run on its worker alone.
    static REGEX_SCRATCH: Cell<regex::Scratch> = Cell::new(regex::Scratch::default());
}

/// Where the lean arm puts the cluster for the cluster specifier.
pub const METADATA_NAMESPACE: &str = "isogroup";
pub const METADATA_CLUSTER: &str = "cluster";

/// The wasm build's metric names (Envoy prefixes them with the module's
/// `metrics_namespace`).
const COUNTERS: [&str; 6] = [
    "isogroup_requests_routed_total",
    "isogroup_requests_fallback_total",
    "isogroup_requests_failfast_total",
    "isogroup_requests_passthrough_total",
    "isogroup_invalid_group_total",
    "isogroup_native_panics_total",
];

#[derive(Debug, Clone, Copy)]
enum Counter {
    Routed,
    Fallback,
    Failfast,
    Passthrough,
    InvalidGroup,
    Panics,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handoff {
    /// Routing headers + route-cache clear (the wasm build's way).
    Headers,
    /// Dynamic metadata + cluster refresh, read by the cluster specifier.
    ClusterSpecifier,
}

/// Where a configuration's table comes from.
enum Tables {
    /// No table (or Envoy's `--mode validate`): every request passes through.
    None,
    /// Compiled once per configuration, for good.
    Inline(Table),
    /// Long-polled from the companion on the main thread.
    Companion(Poller),
}

/// The table one stream was decided against, held until its response.
enum Decided {
    Inline(&'static Table),
    Companion(WorkerTable),
}

impl Decided {
    fn table(&self) -> &Table {
        match self {
            Decided::Inline(t) => t,
            Decided::Companion(t) => t,
        }
    }
}

/// One filter configuration (one per listener filter; an LDS update builds
/// the new one before the old one goes). Shared by every worker: read-only
/// for them.
pub struct Config {
    settings: Settings,
    tables: Tables,
    handoff: Handoff,
    counters: [Option<usize>; COUNTERS.len()],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Continue,
    Stop,
}

impl Config {
    pub fn new(envoy: &ConfigHandle, name: &[u8], json: &[u8]) -> Result<Config, String> {
        #[cfg(feature = "test-panic")]
        #[allow(clippy::panic)] // the point of the feature
        if name == b"isogroup-test-panic" {
            panic!("filter_name isogroup-test-panic");
        }
        let handoff = match name {
            b"" | b"isogroup" => Handoff::Headers,
            b"isogroup-lean" => Handoff::ClusterSpecifier,
            other => {
                return Err(format!(
                    "filter_name {:?}: expected \"isogroup\" or \"isogroup-lean\"",
                    String::from_utf8_lossy(other)
                ))
            }
        };
        let mut settings = Settings::from_json(json).map_err(|e| e.to_string())?;
        // Propagation reports are the wasm build's only (docs/native.md): a
        // configuration asking for them is refused rather than silently
        // sending nothing.
        if settings.propagation.is_some() {
            return Err("propagation: reports are not supported by the native build (use the wasm filter)".into());
        }
        let gauge_version = envoy.define_gauge("isogroup_table_version");
        let main_thread = envoy.keep();
        let tables = match core::mem::replace(&mut settings.source, Source::None) {
            Source::None => Tables::None,
            Source::Inline(table) => {
                if let Some(id) = gauge_version {
                    main_thread.set_gauge(id, table.version());
                }
                Tables::Inline(table)
            }
            // `--mode validate` checks the configuration only: no poller.
            Source::Companion(_) if validation_mode() => Tables::None,
            Source::Companion(source) => {
                let metrics = SyncMetrics {
                    version: gauge_version,
                    age: envoy.define_gauge("isogroup_table_age_seconds"),
                    updates: envoy.define_counter("isogroup_table_updates_total"),
                    rejects: envoy.define_counter("isogroup_table_rejects_total"),
                    fetches: envoy.define_counter("isogroup_table_fetches_total"),
                    delta_fallbacks: envoy.define_counter("isogroup_table_delta_fallbacks_total"),
                };
                let (base_group, limits) = (settings.base_group.clone(), settings.limits);
                Tables::Companion(Poller::start(source, base_group, limits, main_thread, metrics))
            }
        };
        let counters = COUNTERS.map(|name| envoy.define_counter(name));
        Ok(Config { settings, tables, handoff, counters })
    }

    /// Main thread: a scheduled event of this configuration.
    pub fn on_scheduled(&self, event: u64) {
        if let Tables::Companion(p) = &self.tables {
            p.on_scheduled(event);
        }
    }

    /// Main thread: the answer to one of this configuration's callouts.
    pub fn on_callout_done(&self, id: u64, answer: Answer) {
        if let Tables::Companion(p) = &self.tables {
            p.on_callout_done(id, answer);
        }
    }

    /// Main thread: a main-thread hook of this configuration panicked; polling goes on.
    pub fn recover_after_panic(&self) {
        if let Tables::Companion(p) = &self.tables {
            p.recover_after_panic();
        }
    }

    /// The table in force for a stream starting now on this worker.
    fn table_now(&'static self) -> Option<Decided> {
        match &self.tables {
            Tables::None => None,
            Tables::Inline(t) => Some(Decided::Inline(t)),
            Tables::Companion(p) => sync::current(&p.published).map(Decided::Companion),
        }
    }

    /// A panic in one of this configuration's streams (the stream is reset):
    /// counted once more.
    pub fn count_panic(&self, stream: &StreamHandle) {
        self.count(stream, Counter::Panics);
    }

    fn count(&self, stream: &StreamHandle, counter: Counter) {
        if let Some(id) = self.counters[counter as usize] {
            stream.increment_counter(id, 1);
        }
    }
}

/// One HTTP stream's state: only its own worker touches it, so no lock.
/// Hooks take it shared, its fields are `Cell`s: Envoy re-enters the
/// stream synchronously (a local reply sent from the request-headers hook
/// runs the response-headers hook before it returns), so two hooks of one
/// stream can be live at once and neither may hold it exclusively.
pub struct Stream {
    config: &'static Config,
    /// `x-isogroup-served`, written at response time from the table the
    /// request was decided against.
    served: Cell<Option<(Served, Decided)>>,
    explanation: Cell<Option<String>>,
    /// Untrusted edge peer: isogroup response headers do not go back to it.
    strip_annotations: Cell<bool>,
    #[cfg(feature = "test-panic")]
    panic_on_response: Cell<bool>,
}

impl Stream {
    pub fn new(config: &'static Config) -> Stream {
        Stream {
            config,
            served: Cell::new(None),
            explanation: Cell::new(None),
            strip_annotations: Cell::new(false),
            #[cfg(feature = "test-panic")]
            panic_on_response: Cell::new(false),
        }
    }

    pub fn config(&self) -> &'static Config {
        self.config
    }

    fn count_decision(&self, envoy: &StreamHandle, decision: Option<&Decision<'_>>) {
        let c = self.config;
        match decision {
            None | Some(Decision::PassThrough) => c.count(envoy, Counter::Passthrough),
            Some(Decision::Route(r)) => {
                c.count(envoy, Counter::Routed);
                if r.fallback {
                    c.count(envoy, Counter::Fallback);
                }
            }
            Some(Decision::FailFast(_)) => c.count(envoy, Counter::Failfast),
        }
    }

    fn send_reply(envoy: &StreamHandle, reply: &LocalReply) {
        if reply.grpc {
            // Envoy's module local reply always says grpc-status 0 to a gRPC
            // client: the trailers-only answer is written whole instead, as
            // the wasm build's send_grpc_response makes it (UNAVAILABLE).
            let message = grpc_percent_encode(reply.body.as_bytes());
            envoy.send_headers_only(&[
                (":status", b"200"),
                ("content-type", b"application/grpc"),
                ("grpc-status", b"14"),
                ("grpc-message", &message),
                ("x-isogroup-failfast", reply.service.as_bytes()),
            ]);
            return;
        }
        let headers: Vec<(&str, &[u8])> = reply.headers.iter().map(|(k, v)| (*k, v.as_bytes())).collect();
        envoy.send_response(u32::from(reply.status), &headers, reply.body.as_bytes(), "isogroup");
    }

    pub fn on_request_headers(&self, envoy: &StreamHandle) -> Next {
        let config = self.config;
        let settings = &config.settings;
        let raw = envoy.request_headers();
        // Names Envoy hands over are lower-case ASCII; a non-UTF-8 name
        // cannot be a header the filter reads, so it is left out.
        let headers: Vec<(&str, &[u8])> =
            raw.iter().filter_map(|(k, v)| Some((core::str::from_utf8(k).ok()?, v.as_slice()))).collect();
        #[cfg(feature = "test-panic")]
        #[allow(clippy::panic)] // the point of the feature
        match headers.iter().find(|(name, _)| *name == "x-isogroup-test-panic") {
            Some((_, b"response")) => self.panic_on_response.set(true),
            // Before anything is sanitised: the barrier must not forward this.
            Some(_) => panic!("x-isogroup-test-panic"),
            None => {}
        }
        let decided = config.table_now();
        let table = decided.as_ref().map(Decided::table);
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let now_s = now_ms / 1000;
        let peer = match &settings.edge {
            Some(edge) if edge.needs_peer(table) => {
                Peer { ip: envoy.source_address().and_then(|a| cidr::peer_ip(&a)), now_s }
            }
            _ => Peer { ip: None, now_s },
        };
        // The worker's regex scratch (the wasm build keeps one per VM): a
        // request with regex rules allocates nothing for them.
        let mut scratch = REGEX_SCRATCH.take();
        let mut incoming = request::scan_with(&headers, settings, peer, table, &mut scratch);
        REGEX_SCRATCH.set(scratch);
        if let Some(reply) = incoming.join(settings, table) {
            Self::send_reply(envoy, &reply);
            return Next::Stop;
        }
        if let Some(a) = &settings.assist {
            crate::assist::apply(&mut incoming, a, envoy, now_ms);
        }
        self.strip_annotations.set(!incoming.trusted);
        for _ in 0..incoming.invalid {
            config.count(envoy, Counter::InvalidGroup);
        }
        let decision = table.map(|t| incoming.decide(t));
        self.count_decision(envoy, decision.as_ref());
        if incoming.debug && incoming.trusted {
            // Names the worker, as the wasm build names its worker's VM.
            let worker = format!("native-{}", envoy.worker_index());
            self.explanation.set(Some(request::explain(
                &incoming,
                decision.as_ref(),
                table.map(|t| t.version()),
                &worker,
            )));
        }
        if let Some(Decision::FailFast(f)) = &decision {
            let reply = incoming.local_reply(f, settings);
            Self::send_reply(envoy, &reply);
            return Next::Stop;
        }
        let lean = config.handoff == Handoff::ClusterSpecifier;
        let mut unwritten = None;
        incoming.each_edit(decision.as_ref(), settings, |edit| {
            if unwritten.is_some() {
                return;
            }
            if lean && matches!(&edit, Edit::Set(n, _) | Edit::Add(n, _) if *n == settings.cluster_header) {
                // The cluster specifier reads the cluster from the metadata;
                // a client-sent cluster header is still removed.
                return;
            }
            let (name, written) = match &edit {
                Edit::Set(n, v) => (*n, envoy.set_request_header(n, Some(v))),
                Edit::Add(n, v) => (*n, envoy.add_request_header(n, v)),
                Edit::Remove(n) => (*n, envoy.set_request_header(n, None)),
            };
            if !written {
                if name == settings.cluster_header || name == settings.target_header {
                    // A routing header left as the client sent it could pick a cluster.
                    unwritten = Some(name);
                } else {
                    log(Level::Warn, &format!("isogroup: request header {name} not written"));
                }
            }
        });
        if let Some(name) = unwritten {
            log(Level::Warn, &format!("isogroup: routing header {name} not written: resetting the stream"));
            envoy.reset("isogroup_header_not_written");
            return Next::Stop;
        }
        if log_enabled(Level::Debug) {
            let cluster = match &decision {
                Some(Decision::Route(r)) => r.cluster,
                _ => "none: pass-through",
            };
            log(Level::Debug, &format!("isogroup: request headers decided (cluster {cluster})"));
        }
        match config.handoff {
            Handoff::Headers => envoy.clear_route_cache(),
            Handoff::ClusterSpecifier => {
                if let Some(Decision::Route(r)) = &decision {
                    envoy.set_metadata(METADATA_NAMESPACE, METADATA_CLUSTER, r.cluster.as_bytes());
                }
                envoy.refresh_route_cluster();
            }
        }
        let served = incoming.served(decision.as_ref(), settings);
        self.served.set(served.zip(decided));
        Next::Continue
    }

    pub fn on_response_headers(&self, envoy: &StreamHandle) {
        #[cfg(feature = "test-panic")]
        #[allow(clippy::panic)] // the point of the feature
        if self.panic_on_response.get() {
            // Before the annotations are stripped: the barrier must not pass the response on.
            panic!("x-isogroup-test-panic: response");
        }
        if self.strip_annotations.get() {
            // Inner hops annotated too: remove theirs, add none.
            for name in ["x-isogroup-served", "x-isogroup-decision"] {
                envoy.remove_response_header(name);
            }
            return;
        }
        if let Some((served, decided)) = self.served.take() {
            let mut value = Vec::with_capacity(64);
            served.write(decided.table(), &mut value);
            envoy.add_response_header("x-isogroup-served", &value);
        }
        if let Some(explanation) = self.explanation.take() {
            envoy.add_response_header("x-isogroup-decision", explanation.as_bytes());
        }
    }

    pub fn on_stream_complete(&self, _envoy: &StreamHandle) {}
}

/// gRPC's `grpc-message` encoding: printable ASCII but `%` as is, every
/// other byte as `%XX`.
fn grpc_percent_encode(message: &[u8]) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(message.len());
    for &b in message {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    out
}

/// Every worker reads one `Config` at once (Envoy shares the filter config
/// across workers): it must be `Sync`, and `Send` for Envoy to drop it on
/// the main thread.
const _: () = {
    const fn shared_across_threads<T: Send + Sync>() {}
    shared_across_threads::<Config>();
    shared_across_threads::<crate::specifier::SpecifierConfig>();
};
