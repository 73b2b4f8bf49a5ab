//! The seam between the filter and its host: every host call the filter
//! makes, as one trait whose calls return `Result` with a typed error. The
//! wasm build implements it over proxy-wasm (`wasm_host`); native unit tests
//! use a fake that records calls and serves shared data, headers and HTTP-call
//! answers (`fake_host`). Headers are bytes only: a hostile value must never
//! become a panic.

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use core::fmt;
use core::time::Duration;
use isogroup_core::text::{text_of, Piece};

use crate::proxy::{GrpcStatusCode, LogLevel, MetricType, Status};

pub use crate::header_map::HeaderMap;

/// A host call that did not succeed: which call, and the status it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError {
    pub call: &'static str,
    pub status: Status,
}

impl Piece for HostError {
    fn push_to(&self, out: &mut String) {
        isogroup_core::cat_to!(out; self.call, " failed: ", self.status);
    }
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&text_of(self))
    }
}

pub type HostResult<T> = Result<T, HostError>;

/// A shared-data value and its CAS token; `(None, None)` for a missing key.
pub type Shared = (Option<Vec<u8>>, Option<u32>);

pub trait Host: 'static {
    /// Nowhere to report a failed log line: dropped.
    fn log(&self, level: LogLevel, message: &str);
    fn plugin_configuration(&self) -> HostResult<Option<Vec<u8>>>;
    /// Wall clock, ms since the Unix epoch.
    fn now_ms(&self) -> HostResult<u64>;
    fn set_tick_period(&self, period: Duration) -> HostResult<()>;

    /// All request headers in one call, values as bytes.
    fn request_headers(&self) -> HostResult<HeaderMap>;
    /// Replaces (or adds) a request header. Envoy re-picks the route after it.
    fn set_request_header(&self, name: &str, value: &[u8]) -> HostResult<()>;
    fn add_request_header(&self, name: &str, value: &[u8]) -> HostResult<()>;
    fn remove_request_header(&self, name: &str) -> HostResult<()>;
    /// Appends a response header value (never replaces what upstream hops set).
    fn add_response_header(&self, name: &str, value: &[u8]) -> HostResult<()>;
    fn remove_response_header(&self, name: &str) -> HostResult<()>;
    /// A local HTTP answer; the caller then returns `Action::Pause`.
    fn send_local_reply(&self, status: u32, headers: &[(&str, &[u8])], body: &[u8]) -> HostResult<()>;
    /// A trailers-only gRPC answer with `grpc-status` and `grpc-message`.
    fn send_grpc_reply(&self, code: GrpcStatusCode, message: &str, metadata: &[(&str, &[u8])]) -> HostResult<()>;
    /// Resets the request's stream: nothing reaches the upstream.
    fn reset_request(&self) -> HostResult<()>;

    fn define_metric(&self, kind: MetricType, name: &str) -> HostResult<u32>;
    fn increment_metric(&self, id: u32, by: i64) -> HostResult<()>;
    fn record_metric(&self, id: u32, value: u64) -> HostResult<()>;

    fn shared_get(&self, key: &str) -> HostResult<Shared>;
    /// With `cas`, fails with `CasMismatch` when someone wrote in between (a
    /// missing key ignores the CAS: seed it first).
    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()>;

    /// An Envoy attribute (`["source", "address"]`), as the raw bytes Envoy
    /// serialises it to.
    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>>;

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout: Duration,
    ) -> HostResult<u32>;
    fn http_call_response_headers(&self) -> HostResult<HeaderMap>;
    fn http_call_response_body(&self, size: usize) -> HostResult<Option<Vec<u8>>>;
}

/// A shared-data value; none, or a failed read: empty (one body for every
/// read that needs no CAS and takes an empty value as none).
pub fn shared_value(host: &impl Host, key: &str) -> Vec<u8> {
    match host.shared_get(key) {
        Ok((Some(value), _)) => value,
        _ => Vec::new(),
    }
}
