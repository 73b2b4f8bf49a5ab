//! The real host: proxy-wasm 0.2 host calls. Where the SDK would panic (its
//! string getters unwrap UTF-8; `reset_http_request` and `get_shared_data`
//! panic on an unexpected status) the import is called directly and the
//! status returned as an error.

use std::time::{Duration, UNIX_EPOCH};

use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, GrpcStatusCode, LogLevel, MapType, MetricType, Status, StreamType};

use crate::host::{HeaderMap, Host, HostError, HostResult, Shared};

/// Zero-sized: every call goes straight to the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct WasmHost;

fn check<T>(call: &'static str, r: Result<T, Status>) -> HostResult<T> {
    r.map_err(|status| HostError { call, status })
}

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_get_header_map_pairs(map_type: MapType, data: *mut *mut u8, size: *mut usize) -> Status;
    fn proxy_close_stream(stream_type: StreamType) -> Status;
}

fn header_map(map_type: MapType, call: &'static str) -> HostResult<HeaderMap> {
    let mut data: *mut u8 = std::ptr::null_mut();
    let mut size: usize = 0;
    // SAFETY: the host writes a buffer it allocated through the SDK's
    // `proxy_on_memory_allocate` (a boxed slice of exactly `size` bytes), so
    // this VM owns it and `Vec::from_raw_parts(data, size, size)` frees it the
    // same way the SDK does.
    let status = unsafe { proxy_get_header_map_pairs(map_type, &mut data, &mut size) };
    match status {
        Status::Ok if !data.is_null() => Ok(HeaderMap::from_bytes(unsafe { Vec::from_raw_parts(data, size, size) })),
        Status::Ok => Ok(HeaderMap::from_bytes(Vec::new())),
        status => Err(HostError { call, status }),
    }
}

impl Host for WasmHost {
    fn log(&self, level: LogLevel, message: &str) {
        let _ = hostcalls::log(level, message);
    }

    fn plugin_configuration(&self) -> HostResult<Option<Vec<u8>>> {
        check("get_buffer(plugin_configuration)", hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX))
    }

    fn now_ms(&self) -> HostResult<u64> {
        let now = check("get_current_time", hostcalls::get_current_time())?;
        let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
        Ok(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
    }

    fn set_tick_period(&self, period: Duration) -> HostResult<()> {
        check("set_tick_period", hostcalls::set_tick_period(period))
    }

    fn request_headers(&self) -> HostResult<HeaderMap> {
        header_map(MapType::HttpRequestHeaders, "get_header_map_pairs(request_headers)")
    }

    fn set_request_header(&self, name: &str, value: &[u8]) -> HostResult<()> {
        check(
            "set_map_value(request_headers)",
            hostcalls::set_map_value_bytes(MapType::HttpRequestHeaders, name, Some(value)),
        )
    }

    fn add_request_header(&self, name: &str, value: &[u8]) -> HostResult<()> {
        check(
            "add_map_value(request_headers)",
            hostcalls::add_map_value_bytes(MapType::HttpRequestHeaders, name, value),
        )
    }

    fn remove_request_header(&self, name: &str) -> HostResult<()> {
        check("remove_map_value(request_headers)", hostcalls::remove_map_value(MapType::HttpRequestHeaders, name))
    }

    fn add_response_header(&self, name: &str, value: &[u8]) -> HostResult<()> {
        check(
            "add_map_value(response_headers)",
            hostcalls::add_map_value_bytes(MapType::HttpResponseHeaders, name, value),
        )
    }

    fn remove_response_header(&self, name: &str) -> HostResult<()> {
        check("remove_map_value(response_headers)", hostcalls::remove_map_value(MapType::HttpResponseHeaders, name))
    }

    fn send_local_reply(&self, status: u32, headers: &[(&str, &str)], body: &[u8]) -> HostResult<()> {
        check("send_http_response", hostcalls::send_http_response(status, headers.to_vec(), Some(body)))
    }

    fn send_grpc_reply(&self, code: GrpcStatusCode, message: &str, metadata: &[(&str, &[u8])]) -> HostResult<()> {
        check("send_grpc_response", hostcalls::send_grpc_response(code, Some(message), metadata.to_vec()))
    }

    fn reset_request(&self) -> HostResult<()> {
        // SAFETY: a plain host import taking an enum passed as an integer.
        match unsafe { proxy_close_stream(StreamType::HttpRequest) } {
            Status::Ok => Ok(()),
            status => Err(HostError { call: "close_stream(http_request)", status }),
        }
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> HostResult<u32> {
        check("define_metric", hostcalls::define_metric(kind, name))
    }

    fn increment_metric(&self, id: u32, by: i64) -> HostResult<()> {
        check("increment_metric", hostcalls::increment_metric(id, by))
    }

    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        check("record_metric", hostcalls::record_metric(id, value))
    }

    fn shared_get(&self, key: &str) -> HostResult<Shared> {
        check("get_shared_data", hostcalls::get_shared_data(key))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        check("set_shared_data", hostcalls::set_shared_data(key, Some(value), cas))
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        check("get_property", hostcalls::get_property(path.to_vec()))
    }

    fn dispatch_http_call(&self, cluster: &str, headers: &[(&str, &str)], timeout: Duration) -> HostResult<u32> {
        check("dispatch_http_call", hostcalls::dispatch_http_call(cluster, headers.to_vec(), None, vec![], timeout))
    }

    fn http_call_response_headers(&self) -> HostResult<HeaderMap> {
        header_map(MapType::HttpCallResponseHeaders, "get_header_map_pairs(http_call_response_headers)")
    }

    fn http_call_response_body(&self, size: usize) -> HostResult<Option<Vec<u8>>> {
        check("get_buffer(http_call_response_body)", hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size))
    }
}
