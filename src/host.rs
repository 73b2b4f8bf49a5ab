//! Every proxy-wasm host call the filter makes, in one place, each returning
//! `Result` with a typed error. Headers are read as bytes only: the SDK's
//! string getters unwrap UTF-8 and would trap the VM on a hostile value.
//!
//! The SDK's `hostcalls` still panic on a status the host is not documented
//! to return; Envoy 1.40 returns only the documented ones for these calls.

use std::fmt;
use std::time::{Duration, SystemTime};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, Bytes, GrpcStatusCode, LogLevel, MapType, MetricType, Status};

/// A host call that did not succeed: which call, and the status it returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError {
    pub call: &'static str,
    pub status: Status,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed: {:?}", self.call, self.status)
    }
}

pub type HostResult<T> = Result<T, HostError>;

fn check<T>(call: &'static str, r: Result<T, Status>) -> HostResult<T> {
    r.map_err(|status| HostError { call, status })
}

pub fn log(level: LogLevel, message: &str) {
    // Nowhere to report a failed log line; dropping it is the only option.
    let _ = hostcalls::log(level, message);
}

pub fn plugin_configuration() -> HostResult<Option<Bytes>> {
    check("get_buffer(plugin_configuration)", hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX))
}

pub fn now() -> HostResult<SystemTime> {
    check("get_current_time", hostcalls::get_current_time())
}

pub fn set_tick_period(period: Duration) -> HostResult<()> {
    check("set_tick_period", hostcalls::set_tick_period(period))
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(
        map_type: MapType,
        return_map_data: *mut *mut u8,
        return_map_size: *mut usize,
    ) -> Status;
}

/// A header map as the host serialised it: one buffer, read in place. The
/// SDK's `get_map_bytes` would allocate a `String` and a `Vec` per header on
/// every request; this allocates the buffer and one list of slices.
pub struct HeaderMap {
    buf: Vec<u8>,
}

impl HeaderMap {
    /// `(name, value)` pairs borrowed from the buffer. Layout: count (u32 LE),
    /// then (name length, value length) per pair, then each name and value
    /// NUL-terminated. A malformed buffer or a non-UTF-8 name ends the list.
    pub fn pairs(&self) -> Vec<(&str, &[u8])> {
        let b = &self.buf;
        let u32_at =
            |i: usize| b.get(i..i + 4).and_then(|s| s.try_into().ok()).map(u32::from_le_bytes).map(|n| n as usize);
        let Some(count) = u32_at(0) else { return Vec::new() };
        let mut pairs = Vec::with_capacity(count.min(256));
        let mut data = 4 + count.saturating_mul(8);
        for n in 0..count {
            let (Some(klen), Some(vlen)) = (u32_at(4 + n * 8), u32_at(8 + n * 8)) else { break };
            let Some(key) = b.get(data..data + klen).and_then(|k| std::str::from_utf8(k).ok()) else { break };
            data += klen + 1;
            let Some(value) = b.get(data..data + vlen) else { break };
            data += vlen + 1;
            pairs.push((key, value));
        }
        pairs
    }
}

/// All request headers in one host call, values as bytes.
pub fn request_headers() -> HostResult<HeaderMap> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through the SDK's
    // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes), so
    // this VM owns it and `Vec::from_raw_parts(data, size, size)` frees it the
    // same way the SDK does.
    let status = unsafe { proxy_get_header_map_pairs(MapType::HttpRequestHeaders, &mut data, &mut size) };
    match status {
        Status::Ok if !data.is_null() => Ok(HeaderMap { buf: unsafe { Vec::from_raw_parts(data, size, size) } }),
        Status::Ok => Ok(HeaderMap { buf: Vec::new() }),
        status => Err(HostError { call: "get_header_map_pairs(request_headers)", status }),
    }
}

/// Replaces (or adds) a request header. Envoy re-picks the route after it.
pub fn set_request_header(name: &str, value: &[u8]) -> HostResult<()> {
    check(
        "set_map_value(request_headers)",
        hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value)),
    )
}

pub fn add_request_header(name: &str, value: &[u8]) -> HostResult<()> {
    check("add_map_value(request_headers)", hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value))
}

pub fn remove_request_header(name: &str) -> HostResult<()> {
    check("remove_map_value(request_headers)", hostcalls::remove_map_value(MapType::HttpRequestHeaders, name))
}

/// Appends a response header value (never replaces what upstream hops set).
pub fn add_response_header(name: &str, value: &str) -> HostResult<()> {
    check("add_map_value(response_headers)", hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value))
}

pub fn remove_response_header(name: &str) -> HostResult<()> {
    check("remove_map_value(response_headers)", hostcalls::remove_map_value(MapType::HttpResponseHeaders, name))
}

/// A local HTTP answer; the caller then returns `Action::Pause`.
pub fn send_local_reply(status: u32, headers: Vec<(&str, &str)>, body: &[u8]) -> HostResult<()> {
    check("send_http_response", hostcalls::send_http_response(status, headers, Some(body)))
}

/// A trailers-only gRPC answer with `grpc-status` and `grpc-message`.
pub fn send_grpc_reply(code: GrpcStatusCode, message: &str, metadata: Vec<(&str, &[u8])>) -> HostResult<()> {
    check("send_grpc_response", hostcalls::send_grpc_response(code, Some(message), metadata))
}

pub fn define_metric(kind: MetricType, name: &str) -> HostResult<u32> {
    check("define_metric", hostcalls::define_metric(kind, name))
}

pub fn increment_metric(id: u32, by: i64) -> HostResult<()> {
    check("increment_metric", hostcalls::increment_metric(id, by))
}

pub fn record_metric(id: u32, value: u64) -> HostResult<()> {
    check("record_metric", hostcalls::record_metric(id, value))
}

/// (value, cas); `(None, None)` for a missing key.
pub fn shared_get(key: &str) -> HostResult<(Option<Bytes>, Option<u32>)> {
    check("get_shared_data", hostcalls::get_shared_data(key))
}

/// Writes a shared-data value; with `cas`, fails with `CasMismatch` when
/// someone wrote in between (a missing key ignores the CAS: seed it first).
pub fn shared_set(key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
    check("set_shared_data", hostcalls::set_shared_data(key, Some(value), cas))
}

/// An Envoy attribute (`["source", "address"]`), as the raw bytes Envoy
/// serialises it to.
pub fn property(path: &[&str]) -> HostResult<Option<Bytes>> {
    check("get_property", hostcalls::get_property(path.to_vec()))
}

pub fn dispatch_http_call(cluster: &str, headers: Vec<(&str, &str)>, timeout: Duration) -> HostResult<u32> {
    check("dispatch_http_call", hostcalls::dispatch_http_call(cluster, headers, None, vec![], timeout))
}

pub fn http_call_response_headers() -> HostResult<Vec<(String, Bytes)>> {
    check("get_map(http_call_response_headers)", hostcalls::get_map_bytes(MapType::HttpCallResponseHeaders))
}

pub fn http_call_response_body(size: usize) -> HostResult<Option<Bytes>> {
    check("get_buffer(http_call_response_body)", hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size))
}
