//! The real host: the proxy-wasm imports of `proxy_abi`, each failure
//! returned as a `HostError` naming the call.

#[allow(unused_imports)]
use isogroup_core::prelude::*;

use core::time::Duration;

use crate::host::{HeaderMap, Host, HostError, HostResult, Shared};
use crate::proxy::{GrpcStatusCode, LogLevel, MetricType, Status};
use crate::proxy_abi::{self as abi, BufferType, MapType};

/// Zero-sized: every call goes straight to the host.
#[derive(Debug, Default, Clone, Copy)]
pub struct WasmHost;

fn check<T>(call: &'static str, r: Result<T, Status>) -> HostResult<T> {
    r.map_err(|status| HostError { call, status })
}

impl Host for WasmHost {
    fn log(&self, level: LogLevel, message: &str) {
        abi::log(level, message);
    }

    fn plugin_configuration(&self) -> HostResult<Option<Vec<u8>>> {
        check("get_buffer(plugin_configuration)", abi::get_buffer(BufferType::PluginConfiguration, usize::MAX))
    }

    fn now_ms(&self) -> HostResult<u64> {
        Ok(check("get_current_time", abi::now_ns())? / 1_000_000)
    }

    fn set_tick_period(&self, period: Duration) -> HostResult<()> {
        let ms = u32::try_from(period.as_millis()).unwrap_or(u32::MAX);
        check("set_tick_period", abi::set_tick_period_ms(ms))
    }

    fn request_headers(&self) -> HostResult<HeaderMap> {
        let pairs = abi::header_map_pairs(MapType::HttpRequestHeaders);
        check("get_header_map_pairs(request_headers)", pairs).map(HeaderMap::from_bytes)
    }

    fn set_request_header(&self, name: &str, value: &[u8]) -> HostResult<()> {
        check("set_map_value(request_headers)", abi::replace_header(MapType::HttpRequestHeaders, name, value))
    }

    fn add_request_header(&self, name: &str, value: &[u8]) -> HostResult<()> {
        check("add_map_value(request_headers)", abi::add_header(MapType::HttpRequestHeaders, name, value))
    }

    fn remove_request_header(&self, name: &str) -> HostResult<()> {
        check("remove_map_value(request_headers)", abi::remove_header(MapType::HttpRequestHeaders, name))
    }

    fn add_response_header(&self, name: &str, value: &[u8]) -> HostResult<()> {
        check("add_map_value(response_headers)", abi::add_header(MapType::HttpResponseHeaders, name, value))
    }

    fn remove_response_header(&self, name: &str) -> HostResult<()> {
        check("remove_map_value(response_headers)", abi::remove_header(MapType::HttpResponseHeaders, name))
    }

    fn send_local_reply(&self, status: u32, headers: &[(&str, &[u8])], body: &[u8]) -> HostResult<()> {
        check("send_http_response", abi::send_local_response(status, headers, body))
    }

    fn send_grpc_reply(&self, code: GrpcStatusCode, message: &str, metadata: &[(&str, &[u8])]) -> HostResult<()> {
        check("send_grpc_response", abi::send_grpc_response(code, message, metadata))
    }

    fn reset_request(&self) -> HostResult<()> {
        check("close_stream(http_request)", abi::close_request_stream())
    }

    fn define_metric(&self, kind: MetricType, name: &str) -> HostResult<u32> {
        check("define_metric", abi::define_metric(kind, name))
    }

    fn increment_metric(&self, id: u32, by: i64) -> HostResult<()> {
        check("increment_metric", abi::increment_metric(id, by))
    }

    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        check("record_metric", abi::record_metric(id, value))
    }

    fn shared_get(&self, key: &str) -> HostResult<Shared> {
        check("get_shared_data", abi::get_shared_data(key))
    }

    fn shared_set(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        check("set_shared_data", abi::set_shared_data(key, value, cas))
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        check("get_property", abi::get_property(path))
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &[u8])],
        body: &[u8],
        timeout: Duration,
    ) -> HostResult<u32> {
        let ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        check("dispatch_http_call", abi::http_call(cluster, headers, body, ms))
    }

    fn http_call_response_headers(&self) -> HostResult<HeaderMap> {
        let pairs = abi::header_map_pairs(MapType::HttpCallResponseHeaders);
        check("get_header_map_pairs(http_call_response_headers)", pairs).map(HeaderMap::from_bytes)
    }

    fn http_call_response_body(&self, size: usize) -> HostResult<Option<Vec<u8>>> {
        check("get_buffer(http_call_response_body)", abi::get_buffer(BufferType::HttpCallResponseBody, size))
    }
}
