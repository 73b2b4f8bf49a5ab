//! Envoy 1.40's dynamic-module ABI, by hand: the types, the event hooks this
//! module exports and the `envoy_dynamic_module_callback_*` functions it
//! calls, declared as `source/extensions/dynamic_modules/abi/abi.h`
//! declares them at envoyproxy/envoy 0199da4 and (ABI v0.2.0, the closest
//! stored version to 1.40.0's, which is not stored) at agrawroh/envoy
//! 05f72c01; docs/native.md says how they were compared. Only the
//! callbacks the module uses are declared; a test checks that the wheel's
//! Envoy exports every one the built library imports (tests/native.rs),
//! since 1.40 loads modules with `RTLD_NOW` and a wrong signature would be
//! silent memory corruption.
//!
//! This is the crate's only `unsafe` code: every hook turns Envoy's raw
//! pointers into safe handles and runs the module's code behind a panic
//! barrier (`barrier`), which fails the request closed and counts it.

#![allow(unsafe_code)]

use core::ffi::c_void;
use core::panic::AssertUnwindSafe;
use core::ptr;
use std::panic::catch_unwind;

use crate::bootstrap::BootstrapConfig;
use crate::filter::{self, Config, Stream};
use crate::specifier::{self, SpecifierConfig};

// ---------------------------------------------------------------- types

/// `envoy_dynamic_module_type_envoy_buffer` and `..._module_buffer`: same layout.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Buffer {
    ptr: *const u8,
    length: usize,
}

impl Buffer {
    const NULL: Buffer = Buffer { ptr: ptr::null(), length: 0 };

    fn of(bytes: &[u8]) -> Buffer {
        Buffer { ptr: bytes.as_ptr(), length: bytes.len() }
    }

    /// Envoy's bytes, valid until the hook returns (the callers copy them).
    fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            return &[];
        }
        // SAFETY: Envoy hands a pointer to `length` readable bytes, valid for
        // the duration of the hook or callback that produced it.
        unsafe { core::slice::from_raw_parts(self.ptr, self.length) }
    }
}

/// `envoy_dynamic_module_type_{module,envoy}_http_header`: same layout.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Header {
    key_ptr: *const u8,
    key_length: usize,
    value_ptr: *const u8,
    value_length: usize,
}

impl Header {
    const EMPTY: Header = Header { key_ptr: ptr::null(), key_length: 0, value_ptr: ptr::null(), value_length: 0 };

    fn of(name: &[u8], value: &[u8]) -> Header {
        Header { key_ptr: name.as_ptr(), key_length: name.len(), value_ptr: value.as_ptr(), value_length: value.len() }
    }
}

type EnvoyPtr = *mut c_void;
type ModulePtr = *const c_void;

/// `envoy_dynamic_module_type_http_header_type`.
const REQUEST_HEADER: u32 = 0;
const RESPONSE_HEADER: u32 = 2;
/// `envoy_dynamic_module_type_attribute_id_SourceAddress`.
const ATTRIBUTE_SOURCE_ADDRESS: u32 = 24;
/// `envoy_dynamic_module_type_attribute_id_XdsListenerDirection`
/// (`xds.listener_direction`, the listener's `traffic_direction`).
const ATTRIBUTE_LISTENER_DIRECTION: u32 = 59;
/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
const CALLOUT_STARTED: u32 = 0;

/// A configuration's or a bootstrap extension's HTTP callout (the two
/// callbacks share one signature). `None` when Envoy cannot start it.
///
/// # Safety
/// `owner` is the live Envoy object `start` takes, on the main thread.
unsafe fn start_callout(
    start: unsafe extern "C" fn(EnvoyPtr, *mut u64, Buffer, *mut Header, usize, Buffer, u64) -> u32,
    owner: EnvoyPtr,
    cluster: &str,
    headers: &[(&str, &[u8])],
    timeout_ms: u64,
) -> Option<u64> {
    let mut raw: Vec<Header> = headers.iter().map(|(k, v)| Header::of(k.as_bytes(), v)).collect();
    let mut id = 0u64;
    // SAFETY: the caller's; `raw` and what it points into outlive the call
    // (Envoy copies them).
    let result = unsafe {
        start(owner, &mut id, Buffer::of(cluster.as_bytes()), raw.as_mut_ptr(), raw.len(), Buffer::NULL, timeout_ms)
    };
    (result == CALLOUT_STARTED).then_some(id)
}
/// `envoy_dynamic_module_type_http_callout_result_Success`.
const CALLOUT_SUCCESS: u32 = 0;
/// `envoy_dynamic_module_type_metrics_result_Success`.
const METRICS_SUCCESS: u32 = 0;
/// `..._request_headers_status_Continue` / `_StopIteration`.
const HEADERS_CONTINUE: u32 = 0;
const HEADERS_STOP_ITERATION: u32 = 1;
/// The `Continue` of every other status enum.
const CONTINUE: u32 = 0;
/// `envoy_dynamic_module_type_http_filter_stream_reset_reason_LocalReset`.
const RESET_LOCAL: u32 = 0;

/// Envoy logs a warning when this differs from its own ABI version string.
static ABI_VERSION: &[u8] = b"v0.2.0\0";

// ------------------------------------------------------------ callbacks

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: Buffer);
    fn envoy_dynamic_module_callback_log_enabled(level: u32) -> bool;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config_envoy_ptr: EnvoyPtr,
        name: Buffer,
        label_names: *mut Buffer,
        label_names_length: usize,
        counter_id_ptr: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_increment_counter(
        filter_envoy_ptr: EnvoyPtr,
        id: usize,
        label_values: *mut Buffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;

    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config_envoy_ptr: EnvoyPtr,
        name: Buffer,
        label_names: *mut Buffer,
        label_names_length: usize,
        gauge_id_ptr: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_set_gauge(
        config_envoy_ptr: EnvoyPtr,
        id: usize,
        label_values: *mut Buffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_increment_counter(
        config_envoy_ptr: EnvoyPtr,
        id: usize,
        label_values: *mut Buffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config_envoy_ptr: EnvoyPtr) -> *mut c_void;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: *mut c_void);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: *mut c_void, event_id: u64);
    fn envoy_dynamic_module_callback_http_filter_config_http_callout(
        config_envoy_ptr: EnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: Buffer,
        headers: *mut Header,
        headers_size: usize,
        body: Buffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_is_validation_mode() -> bool;

    fn envoy_dynamic_module_callback_http_get_headers_size(filter_envoy_ptr: EnvoyPtr, header_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(
        filter_envoy_ptr: EnvoyPtr,
        header_type: u32,
        result_headers: *mut Header,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter_envoy_ptr: EnvoyPtr,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter_envoy_ptr: EnvoyPtr,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_send_response(
        filter_envoy_ptr: EnvoyPtr,
        status_code: u32,
        headers_vector: *mut Header,
        headers_vector_size: usize,
        body: Buffer,
        details: Buffer,
    );
    fn envoy_dynamic_module_callback_http_send_response_headers(
        filter_envoy_ptr: EnvoyPtr,
        headers_vector: *mut Header,
        headers_vector_size: usize,
        end_stream: bool,
    );
    fn envoy_dynamic_module_callback_http_filter_reset_stream(filter_envoy_ptr: EnvoyPtr, reason: u32, details: Buffer);
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter_envoy_ptr: EnvoyPtr);
    fn envoy_dynamic_module_callback_http_filter_get_worker_index(filter_envoy_ptr: EnvoyPtr) -> u32;
    fn envoy_dynamic_module_callback_http_clear_route_cluster_cache(filter_envoy_ptr: EnvoyPtr);
    fn envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
        filter_envoy_ptr: EnvoyPtr,
        ns: Buffer,
        key: Buffer,
        value: Buffer,
    );
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter_envoy_ptr: EnvoyPtr,
        attribute_id: u32,
        result: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
        filter_envoy_ptr: EnvoyPtr,
        attribute_id: u32,
        result: *mut u64,
    ) -> bool;

    fn envoy_dynamic_module_callback_cluster_specifier_get_dynamic_metadata(
        context_envoy_ptr: EnvoyPtr,
        filter_name: Buffer,
        path: Buffer,
        result: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_cluster_specifier_set_cluster_name(
        context_envoy_ptr: EnvoyPtr,
        cluster_name: Buffer,
    );
    fn envoy_dynamic_module_callback_cluster_specifier_get_request_headers_size(context_envoy_ptr: EnvoyPtr) -> usize;
    fn envoy_dynamic_module_callback_cluster_specifier_get_request_headers(
        context_envoy_ptr: EnvoyPtr,
        result_headers: *mut Header,
    ) -> bool;
    fn envoy_dynamic_module_callback_cluster_specifier_get_attribute_string(
        context_envoy_ptr: EnvoyPtr,
        attribute_id: u32,
        result: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_cluster_specifier_set_cluster_not_found_response_code(
        context_envoy_ptr: EnvoyPtr,
        status_code: u32,
    ) -> bool;

    fn envoy_dynamic_module_callback_bootstrap_extension_config_signal_init_complete(
        extension_config_envoy_ptr: EnvoyPtr,
    );
    fn envoy_dynamic_module_callback_bootstrap_extension_http_callout(
        extension_config_envoy_ptr: EnvoyPtr,
        callout_id_out: *mut u64,
        cluster_name: Buffer,
        headers: *mut Header,
        headers_size: usize,
        body: Buffer,
        timeout_milliseconds: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_bootstrap_extension_timer_new(extension_config_envoy_ptr: EnvoyPtr)
        -> *mut c_void;
    fn envoy_dynamic_module_callback_bootstrap_extension_timer_enable(timer_ptr: *mut c_void, delay_milliseconds: u64);
    fn envoy_dynamic_module_callback_bootstrap_extension_timer_delete(timer_ptr: *mut c_void);
    fn envoy_dynamic_module_callback_bootstrap_extension_config_define_counter(
        config_envoy_ptr: EnvoyPtr,
        name: Buffer,
        label_names: *mut Buffer,
        label_names_length: usize,
        counter_id_ptr: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_bootstrap_extension_config_increment_counter(
        config_envoy_ptr: EnvoyPtr,
        id: usize,
        label_values: *mut Buffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
    fn envoy_dynamic_module_callback_bootstrap_extension_config_define_gauge(
        config_envoy_ptr: EnvoyPtr,
        name: Buffer,
        label_names: *mut Buffer,
        label_names_length: usize,
        gauge_id_ptr: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_bootstrap_extension_config_set_gauge(
        config_envoy_ptr: EnvoyPtr,
        id: usize,
        label_values: *mut Buffer,
        label_values_length: usize,
        value: u64,
    ) -> u32;
}

// -------------------------------------------------------- safe handles

/// Envoy's log levels (`envoy_dynamic_module_type_log_level`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

/// Whether Envoy's `dynamic_modules` logger shows `level` (cheap: check
/// before building a message).
pub fn log_enabled(level: Level) -> bool {
    // SAFETY: a plain value in, a bool out.
    unsafe { envoy_dynamic_module_callback_log_enabled(level as u32) }
}

/// Logs under Envoy's `dynamic_modules` logger (any thread).
pub fn log(level: Level, message: &str) {
    // SAFETY: plain values; Envoy copies the message before returning.
    unsafe {
        if envoy_dynamic_module_callback_log_enabled(level as u32) {
            envoy_dynamic_module_callback_log(level as u32, Buffer::of(message.as_bytes()));
        }
    }
}

/// Envoy's filter configuration, usable on the main thread while the
/// module's configuration is being created.
pub struct ConfigHandle(EnvoyPtr);

impl ConfigHandle {
    /// A counter without labels; `None` when Envoy refuses it.
    pub fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: the config pointer is the one Envoy passed to config_new,
        // which is still running; `id` outlives the call.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_counter(
                self.0,
                Buffer::of(name.as_bytes()),
                ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }
}

impl ConfigHandle {
    /// A gauge without labels; `None` when Envoy refuses it.
    pub fn define_gauge(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: as define_counter.
        let result = unsafe {
            envoy_dynamic_module_callback_http_filter_config_define_gauge(
                self.0,
                Buffer::of(name.as_bytes()),
                ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// A handle kept past config_new, for the main-thread hooks of this
    /// configuration (scheduled events, callout answers).
    pub fn keep(&self) -> MainThreadConfig {
        MainThreadConfig(self.0)
    }
}

/// Whether Envoy runs `--mode validate` (no poller then). Main thread only.
pub fn validation_mode() -> bool {
    // SAFETY: no arguments; called from config_new, on the main thread.
    unsafe { envoy_dynamic_module_callback_is_validation_mode() }
}

/// Envoy's filter configuration, for calls made on the main thread while
/// the configuration lives: Envoy calls its scheduled and callout hooks
/// there, with the same pointer. `Send + Sync` only so the configuration
/// that holds it can be shared; it is used on the main thread alone.
#[derive(Clone, Copy)]
pub struct MainThreadConfig(EnvoyPtr);

// SAFETY: the pointer is only dereferenced by Envoy, in calls this module
// makes on the main thread (config_new, config_scheduled, callout_done).
unsafe impl Send for MainThreadConfig {}
// SAFETY: as above; workers never call through it.
unsafe impl Sync for MainThreadConfig {}

impl MainThreadConfig {
    pub fn set_gauge(&self, id: usize, value: u64) {
        // SAFETY: main thread, the configuration alive (see the type).
        unsafe { envoy_dynamic_module_callback_http_filter_config_set_gauge(self.0, id, ptr::null_mut(), 0, value) };
    }

    pub fn increment_counter(&self, id: usize, by: u64) {
        // SAFETY: as above.
        unsafe {
            envoy_dynamic_module_callback_http_filter_config_increment_counter(self.0, id, ptr::null_mut(), 0, by)
        };
    }

    /// An HTTP request to `cluster` from the configuration; the answer comes
    /// to its `on_callout_done`. `None` when Envoy cannot start it.
    pub fn callout(&self, cluster: &str, headers: &[(&str, &[u8])], timeout_ms: u64) -> Option<u64> {
        // SAFETY: main thread, the configuration alive.
        unsafe {
            start_callout(
                envoy_dynamic_module_callback_http_filter_config_http_callout,
                self.0,
                cluster,
                headers,
                timeout_ms,
            )
        }
    }

    /// A scheduler that runs `on_scheduled` of this configuration on the
    /// main thread, committed from any thread.
    pub fn scheduler(&self) -> Scheduler {
        // SAFETY: main thread, the configuration alive.
        Scheduler(unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(self.0) })
    }
}

/// Envoy's main-thread scheduler of one configuration. Deleted on drop;
/// whoever commits must hold it (the owner keeps it behind a lock that its
/// destruction takes).
pub struct Scheduler(*mut c_void);

// SAFETY: Envoy's scheduler commit "is safe to call from any thread"; the
// owner serialises commit and delete with a lock.
unsafe impl Send for Scheduler {}

impl Scheduler {
    pub fn commit(&self, event: u64) {
        if !self.0.is_null() {
            // SAFETY: a live scheduler (deleted only on drop).
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(self.0, event) }
        }
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: made by scheduler_new, deleted once.
            unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(self.0) }
        }
    }
}

/// One HTTP stream's filter, valid for the duration of one hook (Envoy
/// calls every hook of a stream on the stream's worker thread).
pub struct StreamHandle(EnvoyPtr);

impl StreamHandle {
    fn headers(&self, header_type: u32) -> Vec<(Vec<u8>, Vec<u8>)> {
        // SAFETY: the filter pointer is valid during the hook; the vector has
        // room for as many headers as Envoy said it has.
        unsafe {
            let count = envoy_dynamic_module_callback_http_get_headers_size(self.0, header_type);
            let mut raw = vec![Header::EMPTY; count];
            if count == 0 || !envoy_dynamic_module_callback_http_get_headers(self.0, header_type, raw.as_mut_ptr()) {
                return Vec::new();
            }
            raw.iter()
                .map(|h| {
                    let name = Buffer { ptr: h.key_ptr, length: h.key_length }.bytes().to_vec();
                    let value = Buffer { ptr: h.value_ptr, length: h.value_length }.bytes().to_vec();
                    (name, value)
                })
                .collect()
        }
    }

    /// Every request header, names and values as bytes (copied).
    pub fn request_headers(&self) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.headers(REQUEST_HEADER)
    }

    /// Replaces every value of a request header (`None` removes it).
    pub fn set_request_header(&self, name: &str, value: Option<&[u8]>) -> bool {
        let value = value.map_or(Buffer::NULL, Buffer::of);
        // SAFETY: the filter pointer is valid during the hook; Envoy copies.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(self.0, REQUEST_HEADER, Buffer::of(name.as_bytes()), value)
        }
    }

    /// Adds one more value of a request header.
    pub fn add_request_header(&self, name: &str, value: &[u8]) -> bool {
        // SAFETY: as above.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                REQUEST_HEADER,
                Buffer::of(name.as_bytes()),
                Buffer::of(value),
            )
        }
    }

    /// Adds one more value of a response header (upstream hops' values stay).
    pub fn add_response_header(&self, name: &str, value: &[u8]) -> bool {
        // SAFETY: as above.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                self.0,
                RESPONSE_HEADER,
                Buffer::of(name.as_bytes()),
                Buffer::of(value),
            )
        }
    }

    pub fn remove_response_header(&self, name: &str) -> bool {
        // SAFETY: as above; a null value removes the header.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(
                self.0,
                RESPONSE_HEADER,
                Buffer::of(name.as_bytes()),
                Buffer::NULL,
            )
        }
    }

    /// A local reply. Envoy runs this stream's response hooks before it returns.
    pub fn send_response(&self, status: u32, headers: &[(&str, &[u8])], body: &[u8], details: &str) {
        let mut raw: Vec<Header> = headers.iter().map(|(k, v)| Header::of(k.as_bytes(), v)).collect();
        // SAFETY: the filter pointer is valid during the hook; `raw` and the
        // buffers it points into outlive the call, and Envoy copies them.
        unsafe {
            envoy_dynamic_module_callback_http_send_response(
                self.0,
                status,
                raw.as_mut_ptr(),
                raw.len(),
                Buffer::of(body),
                Buffer::of(details.as_bytes()),
            )
        }
    }

    /// A whole response of headers only (`:status` included), ending the
    /// stream: a gRPC trailers-only answer.
    pub fn send_headers_only(&self, headers: &[(&str, &[u8])]) {
        let mut raw: Vec<Header> = headers.iter().map(|(k, v)| Header::of(k.as_bytes(), v)).collect();
        // SAFETY: as send_response.
        unsafe { envoy_dynamic_module_callback_http_send_response_headers(self.0, raw.as_mut_ptr(), raw.len(), true) }
    }

    /// Resets the stream: nothing is forwarded.
    pub fn reset(&self, details: &str) {
        // SAFETY: as above.
        unsafe {
            envoy_dynamic_module_callback_http_filter_reset_stream(self.0, RESET_LOCAL, Buffer::of(details.as_bytes()))
        }
    }

    /// The index of the worker thread the stream runs on.
    pub fn worker_index(&self) -> u32 {
        // SAFETY: the filter pointer is valid during the hook.
        unsafe { envoy_dynamic_module_callback_http_filter_get_worker_index(self.0) }
    }

    /// The route is picked again (whole route match) when the router asks.
    pub fn clear_route_cache(&self) {
        // SAFETY: as above.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cache(self.0) }
    }

    /// The cluster is picked again (the cluster specifier runs again), not the route.
    pub fn refresh_route_cluster(&self) {
        // SAFETY: as above.
        unsafe { envoy_dynamic_module_callback_http_clear_route_cluster_cache(self.0) }
    }

    pub fn set_metadata(&self, namespace: &str, key: &str, value: &[u8]) {
        // SAFETY: as above.
        unsafe {
            envoy_dynamic_module_callback_http_set_dynamic_metadata_string(
                self.0,
                Buffer::of(namespace.as_bytes()),
                Buffer::of(key.as_bytes()),
                Buffer::of(value),
            )
        }
    }

    /// The downstream peer's address (`source.address`, "ip:port").
    pub fn source_address(&self) -> Option<Vec<u8>> {
        let mut out = Buffer::NULL;
        // SAFETY: as above; the result is copied before the hook returns.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_string(self.0, ATTRIBUTE_SOURCE_ADDRESS, &mut out)
        };
        found.then(|| out.bytes().to_vec())
    }

    /// The listener's `traffic_direction` (Envoy's enum: 1 inbound, 2
    /// outbound; 0 or `None` when the listener does not say).
    pub fn listener_direction(&self) -> Option<u64> {
        let mut out = 0u64;
        // SAFETY: as above; `out` outlives the call.
        let found = unsafe {
            envoy_dynamic_module_callback_http_filter_get_attribute_int(self.0, ATTRIBUTE_LISTENER_DIRECTION, &mut out)
        };
        found.then_some(out)
    }

    pub fn increment_counter(&self, id: usize, by: u64) -> bool {
        // SAFETY: as above; `id` came from this filter's configuration.
        unsafe {
            envoy_dynamic_module_callback_http_filter_increment_counter(self.0, id, ptr::null_mut(), 0, by)
                == METRICS_SUCCESS
        }
    }
}

/// The cluster specifier's view of one request, valid during `select`.
pub struct SelectHandle(EnvoyPtr);

impl SelectHandle {
    /// A string the HTTP filter put in the stream's dynamic metadata.
    pub fn metadata(&self, namespace: &str, key: &str) -> Option<Vec<u8>> {
        let mut out = Buffer::NULL;
        // SAFETY: as above.
        let found = unsafe {
            envoy_dynamic_module_callback_cluster_specifier_get_dynamic_metadata(
                self.0,
                Buffer::of(namespace.as_bytes()),
                Buffer::of(key.as_bytes()),
                &mut out,
            )
        };
        found.then(|| out.bytes().to_vec())
    }

    pub fn set_cluster(&self, name: &[u8]) {
        // SAFETY: as above; Envoy copies the name.
        unsafe { envoy_dynamic_module_callback_cluster_specifier_set_cluster_name(self.0, Buffer::of(name)) }
    }

    /// Every request header, borrowed from Envoy's header map: valid while
    /// `select` runs, which the handle does not outlive.
    pub fn request_headers(&self) -> Vec<(&[u8], &[u8])> {
        // SAFETY: the context pointer is valid during `select`; the vector
        // has room for as many headers as Envoy said it has; the buffers
        // point into the request's header map, which Envoy does not change
        // while `select` runs.
        unsafe {
            let count = envoy_dynamic_module_callback_cluster_specifier_get_request_headers_size(self.0);
            let mut raw = vec![Header::EMPTY; count];
            if count == 0
                || !envoy_dynamic_module_callback_cluster_specifier_get_request_headers(self.0, raw.as_mut_ptr())
            {
                return Vec::new();
            }
            raw.iter()
                .map(|h| {
                    (
                        Buffer { ptr: h.key_ptr, length: h.key_length }.bytes(),
                        Buffer { ptr: h.value_ptr, length: h.value_length }.bytes(),
                    )
                })
                .collect()
        }
    }

    /// The downstream peer's address (`source.address`, "ip:port").
    pub fn source_address(&self) -> Option<Vec<u8>> {
        let mut out = Buffer::NULL;
        // SAFETY: as above; the result is copied before `select` returns.
        let found = unsafe {
            envoy_dynamic_module_callback_cluster_specifier_get_attribute_string(
                self.0,
                ATTRIBUTE_SOURCE_ADDRESS,
                &mut out,
            )
        };
        found.then(|| out.bytes().to_vec())
    }

    /// The status Envoy answers with when this request gets no cluster
    /// (Envoy refuses codes outside 200..600: `false`).
    pub fn set_cluster_not_found_status(&self, status: u16) -> bool {
        // SAFETY: as above.
        unsafe {
            envoy_dynamic_module_callback_cluster_specifier_set_cluster_not_found_response_code(
                self.0,
                u32::from(status),
            )
        }
    }
}

/// Envoy's bootstrap extension configuration (one per `bootstrap_extensions`
/// entry, for the life of the process): every use is on the main thread, in
/// its hooks (config_new, server_initialized, timer_fired, callout_done,
/// config_destroy), with the pointer Envoy passed them. `Send + Sync` only so
/// the module's registry of sources can hold it; workers never call through it.
#[derive(Clone, Copy)]
pub struct BootstrapHandle(EnvoyPtr);

// SAFETY: the pointer is only dereferenced by Envoy, in calls this module
// makes on the main thread while the configuration lives (see the type).
unsafe impl Send for BootstrapHandle {}
// SAFETY: as above.
unsafe impl Sync for BootstrapHandle {}

impl BootstrapHandle {
    /// Envoy registers an init target for every bootstrap extension and
    /// starts no listener until it is signalled (once, main thread).
    pub fn signal_init_complete(&self) {
        // SAFETY: main thread, the configuration alive.
        unsafe { envoy_dynamic_module_callback_bootstrap_extension_config_signal_init_complete(self.0) }
    }

    /// A counter without labels; `None` when Envoy refuses it (only during config_new).
    pub fn define_counter(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: main thread, in config_new; `id` outlives the call.
        let result = unsafe {
            envoy_dynamic_module_callback_bootstrap_extension_config_define_counter(
                self.0,
                Buffer::of(name.as_bytes()),
                ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }

    /// A gauge without labels; `None` when Envoy refuses it (only during config_new).
    pub fn define_gauge(&self, name: &str) -> Option<usize> {
        let mut id = 0usize;
        // SAFETY: as define_counter.
        let result = unsafe {
            envoy_dynamic_module_callback_bootstrap_extension_config_define_gauge(
                self.0,
                Buffer::of(name.as_bytes()),
                ptr::null_mut(),
                0,
                &mut id,
            )
        };
        (result == METRICS_SUCCESS).then_some(id)
    }

    pub fn set_gauge(&self, id: usize, value: u64) {
        // SAFETY: main thread, the configuration alive (see the type).
        unsafe {
            envoy_dynamic_module_callback_bootstrap_extension_config_set_gauge(self.0, id, ptr::null_mut(), 0, value)
        };
    }

    pub fn increment_counter(&self, id: usize, by: u64) {
        // SAFETY: as above.
        unsafe {
            envoy_dynamic_module_callback_bootstrap_extension_config_increment_counter(
                self.0,
                id,
                ptr::null_mut(),
                0,
                by,
            )
        };
    }

    /// An HTTP request to `cluster`; the answer comes to the configuration's
    /// callout_done hook. `None` when Envoy cannot start it (before the
    /// server is initialized Envoy answers "cluster not found").
    pub fn callout(&self, cluster: &str, headers: &[(&str, &[u8])], timeout_ms: u64) -> Option<u64> {
        // SAFETY: main thread, the configuration alive.
        unsafe {
            start_callout(
                envoy_dynamic_module_callback_bootstrap_extension_http_callout,
                self.0,
                cluster,
                headers,
                timeout_ms,
            )
        }
    }

    /// A main-thread timer of this configuration: when armed, it fires the
    /// configuration's timer_fired hook once.
    pub fn timer(&self) -> Timer {
        // SAFETY: main thread, the configuration alive.
        Timer(unsafe { envoy_dynamic_module_callback_bootstrap_extension_timer_new(self.0) })
    }
}

/// One of a bootstrap extension configuration's timers, deleted on drop.
/// Main thread only: Envoy's timer is its dispatcher's (the owner arms and
/// drops it in the configuration's main-thread hooks).
pub struct Timer(*mut c_void);

// SAFETY: armed and deleted on the main thread only (see the type); the
// registry of sources holds a `Weak` to it across threads but upgrades and
// arms it only in main-thread code (a configuration's destruction).
unsafe impl Send for Timer {}
// SAFETY: as above.
unsafe impl Sync for Timer {}

impl Timer {
    /// Fires once after `delay_ms` (0: on the next loop of the main thread);
    /// arming an armed timer moves it.
    pub fn enable(&self, delay_ms: u64) {
        if !self.0.is_null() {
            // SAFETY: a live timer (deleted only on drop), main thread.
            unsafe { envoy_dynamic_module_callback_bootstrap_extension_timer_enable(self.0, delay_ms) }
        }
    }

    /// Whether the timer_fired hook's timer is this one.
    pub fn is(&self, fired: TimerId) -> bool {
        !self.0.is_null() && self.0 as usize == fired.0
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if !self.0.is_null() {
            // SAFETY: made by timer_new, deleted once, on the main thread.
            unsafe { envoy_dynamic_module_callback_bootstrap_extension_timer_delete(self.0) }
        }
    }
}

/// The timer a timer_fired hook names (compared, never dereferenced).
#[derive(Debug, Clone, Copy)]
pub struct TimerId(usize);

// ---------------------------------------------------------- the barrier

/// Runs one hook's code; a panic is logged, counted, and answered with
/// `failed` (each hook's fail-closed value).
fn barrier<T>(hook: &str, failed: T, body: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(v) => v,
        Err(_) => {
            crate::PANICS.fetch_add(1, core::sync::atomic::Ordering::Relaxed);
            log(Level::Error, &format!("isogroup: panic in {hook}; failed closed"));
            failed
        }
    }
}

/// The module's stream state behind Envoy's `filter_module_ptr`, shared:
/// hooks of one stream nest (a local reply runs the response hooks inside
/// the request hook), so none may take it exclusively.
fn stream<'a>(module_ptr: ModulePtr) -> Option<&'a Stream> {
    // SAFETY: a non-null pointer here is the `Box<Stream>` made by
    // on_http_filter_new, owned by Envoy's filter until on_http_filter_destroy
    // (which no hook of the stream outlives), and used only on the stream's
    // worker thread; it is only ever borrowed shared (its state is in `Cell`s).
    unsafe { (module_ptr as *const Stream).as_ref() }
}

fn config(module_ptr: ModulePtr) -> Option<&'static Config> {
    // SAFETY: a non-null pointer here is the `Box<Config>` made by
    // on_http_filter_config_new, alive until on_http_filter_config_destroy,
    // which Envoy calls only after every filter (stream) made from it is
    // destroyed; `Config` is `Sync` (read-only, counters atomic).
    unsafe { (module_ptr as *const Config).as_ref() }
}

// ----------------------------------------------------------- the hooks

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const u8 {
    ABI_VERSION.as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    config_envoy_ptr: EnvoyPtr,
    name: Buffer,
    config: Buffer,
) -> ModulePtr {
    barrier("http_filter_config_new", ptr::null(), || {
        match Config::new(&ConfigHandle(config_envoy_ptr), name.bytes(), config.bytes()) {
            Ok(c) => Box::into_raw(Box::new(c)) as ModulePtr,
            Err(e) => {
                // Envoy rejects the filter; the reason is in its log.
                log(Level::Error, &format!("isogroup: invalid plugin configuration: {e}"));
                ptr::null()
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config_ptr: ModulePtr) {
    barrier("http_filter_config_destroy", (), || {
        if !config_ptr.is_null() {
            // SAFETY: made by Box::into_raw in config_new; Envoy destroys it once.
            drop(unsafe { Box::from_raw(config_ptr as *mut Config) });
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_ptr: ModulePtr,
    _filter_envoy_ptr: EnvoyPtr,
) -> ModulePtr {
    // The stream borrows its configuration for as long as it lives: Envoy's
    // filter holds its configuration until the filter is destroyed.
    barrier("http_filter_new", ptr::null(), || match config(config_ptr) {
        Some(c) => Box::into_raw(Box::new(Stream::new(c))) as ModulePtr,
        None => ptr::null(),
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(filter_module_ptr: ModulePtr) {
    barrier("http_filter_destroy", (), || {
        if !filter_module_ptr.is_null() {
            // SAFETY: made by Box::into_raw in http_filter_new; destroyed once.
            drop(unsafe { Box::from_raw(filter_module_ptr as *mut Stream) });
        }
    })
}

/// A stream hook's barrier: a panic (or a missing stream) is counted in
/// the stream's config and resets the stream: a request is never forwarded,
/// and a response never reaches the client unsanitised.
fn stream_hook(
    hook: &str,
    handle: &StreamHandle,
    filter_module_ptr: ModulePtr,
    body: impl FnOnce(&Stream) -> bool,
) -> bool {
    let done = barrier(hook, false, || stream(filter_module_ptr).is_some_and(body));
    if !done {
        if let Some(s) = stream(filter_module_ptr) {
            s.config().count_panic(handle);
        }
        handle.reset("isogroup_failed_closed");
    }
    done
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter_envoy_ptr: EnvoyPtr,
    filter_module_ptr: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    let handle = StreamHandle(filter_envoy_ptr);
    let mut next = filter::Next::Stop;
    let done = stream_hook("http_filter_request_headers", &handle, filter_module_ptr, |s| {
        next = s.on_request_headers(&handle);
        true
    });
    match next {
        filter::Next::Continue if done => HEADERS_CONTINUE,
        _ => HEADERS_STOP_ITERATION,
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter_envoy_ptr: EnvoyPtr,
    filter_module_ptr: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    let handle = StreamHandle(filter_envoy_ptr);
    let done = stream_hook("http_filter_response_headers", &handle, filter_module_ptr, |s| {
        s.on_response_headers(&handle);
        true
    });
    if done {
        CONTINUE
    } else {
        HEADERS_STOP_ITERATION
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter_envoy_ptr: EnvoyPtr,
    filter_module_ptr: ModulePtr,
) {
    let handle = StreamHandle(filter_envoy_ptr);
    barrier("http_filter_stream_complete", (), || {
        if let Some(s) = stream(filter_module_ptr) {
            s.on_stream_complete(&handle);
        }
    })
}

// The hooks below are looked up by Envoy when it loads the filter; the
// module needs none of them: they pass everything through.

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(_: EnvoyPtr, _: ModulePtr, _: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(_: EnvoyPtr, _: ModulePtr) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(_: EnvoyPtr, _: ModulePtr, _: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(_: EnvoyPtr, _: ModulePtr) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_local_reply(
    _: EnvoyPtr,
    _: ModulePtr,
    _: u32,
    _: Buffer,
    _: bool,
) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _: EnvoyPtr,
    _: ModulePtr,
    _: u64,
    _: u32,
    _: *mut Header,
    _: usize,
    _: *mut Buffer,
    _: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_: EnvoyPtr, _: ModulePtr, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(_: EnvoyPtr, config_ptr: ModulePtr, event: u64) {
    let done = barrier("http_filter_config_scheduled", false, || {
        if let Some(c) = config(config_ptr) {
            c.on_scheduled(event);
        }
        true
    });
    if !done {
        if let Some(c) = config(config_ptr) {
            barrier("http_filter_config_scheduled", (), || c.recover_after_panic());
        }
    }
}

// The arrays are Envoy's, valid during the call (see the SAFETY below).
#[allow(clippy::not_unsafe_ptr_arg_deref)]
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _: EnvoyPtr,
    config_ptr: ModulePtr,
    callout_id: u64,
    result: u32,
    headers: *mut Header,
    headers_size: usize,
    body_chunks: *mut Buffer,
    body_chunks_size: usize,
) {
    let done = barrier("http_filter_config_http_callout_done", false, || {
        let Some(c) = config(config_ptr) else { return true };
        // SAFETY: Envoy's arrays, valid during this hook (callout_answer's contract).
        let answer = unsafe { callout_answer(result, headers, headers_size, body_chunks, body_chunks_size) };
        c.on_callout_done(callout_id, answer);
        true
    });
    if !done {
        if let Some(c) = config(config_ptr) {
            barrier("http_filter_config_http_callout_done", (), || c.recover_after_panic());
        }
    }
}

/// A callout's answer, copied out of Envoy's arrays (`None`: reset, timed
/// out or over the buffer limit).
///
/// # Safety
/// `headers` and `body_chunks` are null or arrays of `headers_size` headers
/// and `body_chunks_size` buffers, valid during the call (a callout_done hook).
unsafe fn callout_answer(
    result: u32,
    headers: *const Header,
    headers_size: usize,
    body_chunks: *const Buffer,
    body_chunks_size: usize,
) -> crate::sync::Answer {
    (result == CALLOUT_SUCCESS).then(|| {
        // SAFETY: the caller's promise; everything is copied before returning.
        let headers = unsafe { raw_slice(headers, headers_size) };
        let chunks = unsafe { raw_slice(body_chunks, body_chunks_size) };
        let headers: Vec<(Vec<u8>, Vec<u8>)> = headers
            .iter()
            .map(|h| {
                let name = Buffer { ptr: h.key_ptr, length: h.key_length }.bytes().to_vec();
                (name, Buffer { ptr: h.value_ptr, length: h.value_length }.bytes().to_vec())
            })
            .collect();
        let body: Vec<u8> = chunks.iter().flat_map(|b| b.bytes().iter().copied()).collect();
        (headers, body)
    })
}

/// `len` items at `ptr`, none when it is null.
///
/// # Safety
/// `ptr` is null or points to `len` initialised items valid for `'a`.
unsafe fn raw_slice<'a, T>(ptr: *const T, len: usize) -> &'a [T] {
    if ptr.is_null() || len == 0 {
        &[]
    } else {
        // SAFETY: the caller's promise.
        unsafe { core::slice::from_raw_parts(ptr, len) }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _: EnvoyPtr,
    _: ModulePtr,
    _: u64,
    _: *mut Header,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _: EnvoyPtr,
    _: ModulePtr,
    _: u64,
    _: *const Buffer,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: EnvoyPtr,
    _: ModulePtr,
    _: u64,
    _: *mut Header,
    _: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(_: EnvoyPtr, _: ModulePtr, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(_: EnvoyPtr, _: ModulePtr, _: u64, _: u32) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _: EnvoyPtr,
    _: ModulePtr,
    _: u64,
    _: *mut Header,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _: EnvoyPtr,
    _: ModulePtr,
    _: u64,
    _: *const Buffer,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _: EnvoyPtr,
    _: ModulePtr,
    _: u64,
    _: *mut Header,
    _: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(_: EnvoyPtr, _: ModulePtr, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _: EnvoyPtr,
    _: ModulePtr,
    _: u64,
    _: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: EnvoyPtr,
    _: ModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: EnvoyPtr,
    _: ModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(_: Buffer, _: Buffer) -> ModulePtr {
    // No per-route configuration: a route that sets one is rejected.
    ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_: ModulePtr) {}

// ------------------------------------------------ the cluster specifier

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_new(
    _config_envoy_ptr: EnvoyPtr,
    name: Buffer,
    config: Buffer,
) -> ModulePtr {
    barrier("cluster_specifier_config_new", ptr::null(), || match SpecifierConfig::new(name.bytes(), config.bytes()) {
        Ok(c) => Box::into_raw(Box::new(c)) as ModulePtr,
        Err(e) => {
            log(Level::Error, &format!("isogroup: invalid cluster specifier config: {e}"));
            ptr::null()
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_destroy(config_ptr: ModulePtr) {
    barrier("cluster_specifier_config_destroy", (), || {
        if !config_ptr.is_null() {
            // SAFETY: made by Box::into_raw in cluster_specifier_config_new.
            drop(unsafe { Box::from_raw(config_ptr as *mut SpecifierConfig) });
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_specifier_select(
    config_ptr: ModulePtr,
    context_envoy_ptr: EnvoyPtr,
) -> bool {
    barrier("cluster_specifier_select", false, || {
        // SAFETY: the `Box<SpecifierConfig>` of config_new, alive until
        // config_destroy; `SpecifierConfig` is `Sync` (select runs on workers).
        let Some(config) = (unsafe { (config_ptr as *const SpecifierConfig).as_ref() }) else {
            return false;
        };
        specifier::select(config, &SelectHandle(context_envoy_ptr))
    })
}

// ------------------------------------------------ the bootstrap extension
//
// `envoy.bootstrap.dynamic_modules` with `extension_name: isogroup`: one per
// process, main thread, polling a companion source for the deciding cluster
// specifier (bootstrap.rs). Envoy 1.40 resolves every hook below when it
// loads the extension (the same set its built-in static module exports);
// the ones the module needs no part in are no-ops.

fn bootstrap<'a>(module_ptr: ModulePtr) -> Option<&'a BootstrapConfig> {
    // SAFETY: a non-null pointer here is the `Box<BootstrapConfig>` made by
    // bootstrap_extension_config_new, alive until its config_destroy, which
    // Envoy calls after the extension (and every hook of either) is done;
    // all of them run on the main thread.
    unsafe { (module_ptr as *const BootstrapConfig).as_ref() }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_config_new(
    extension_config_envoy_ptr: EnvoyPtr,
    name: Buffer,
    config: Buffer,
) -> ModulePtr {
    let envoy = BootstrapHandle(extension_config_envoy_ptr);
    barrier("bootstrap_extension_config_new", ptr::null(), || {
        match BootstrapConfig::new(envoy, name.bytes(), config.bytes()) {
            Ok(c) => {
                // Envoy starts no listener until every bootstrap extension
                // says so: at once (before the first table, the deciding
                // specifier serves its default cluster, as the filter passes
                // requests through).
                envoy.signal_init_complete();
                Box::into_raw(Box::new(c)) as ModulePtr
            }
            Err(e) => {
                // Envoy refuses the extension and does not start.
                log(Level::Error, &format!("isogroup: invalid bootstrap extension config: {e}"));
                ptr::null()
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_config_destroy(extension_config_ptr: ModulePtr) {
    barrier("bootstrap_extension_config_destroy", (), || {
        if !extension_config_ptr.is_null() {
            // SAFETY: made by Box::into_raw in config_new; Envoy destroys it once, on the main thread.
            drop(unsafe { Box::from_raw(extension_config_ptr as *mut BootstrapConfig) });
        }
    })
}

/// The extension is its configuration's: the pointer handed back is the
/// configuration's own (non-null), and destroying it frees nothing (Envoy
/// holds the configuration for as long as the extension).
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_new(
    extension_config_ptr: ModulePtr,
    _extension_envoy_ptr: EnvoyPtr,
) -> ModulePtr {
    extension_config_ptr
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_destroy(_extension_module_ptr: ModulePtr) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_server_initialized(
    _extension_envoy_ptr: EnvoyPtr,
    extension_module_ptr: ModulePtr,
) {
    let done = barrier("bootstrap_extension_server_initialized", false, || {
        if let Some(c) = bootstrap(extension_module_ptr) {
            c.on_server_initialized();
        }
        true
    });
    bootstrap_recover(done, extension_module_ptr);
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_worker_thread_initialized(_: EnvoyPtr, _: ModulePtr) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_drain_started(_: EnvoyPtr, _: ModulePtr) {}

/// `envoy_dynamic_module_type_event_cb`.
type EventCallback = Option<unsafe extern "C" fn(context: *mut c_void)>;

/// Envoy waits for the completion callback before it exits: called at once
/// (the module has nothing to flush), outside any barrier so no panic can
/// skip it.
// The context is Envoy's, handed back to Envoy's callback untouched.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_shutdown(
    _extension_envoy_ptr: EnvoyPtr,
    _extension_module_ptr: ModulePtr,
    completion_callback: EventCallback,
    completion_context: *mut c_void,
) {
    if let Some(done) = completion_callback {
        // SAFETY: Envoy's callback with Envoy's context, called exactly once.
        unsafe { done(completion_context) }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_config_scheduled(_: EnvoyPtr, _: ModulePtr, _: u64) {}

// The arrays are Envoy's, valid during the call (callout_answer's contract).
#[allow(clippy::not_unsafe_ptr_arg_deref)]
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_http_callout_done(
    _extension_config_envoy_ptr: EnvoyPtr,
    extension_config_module_ptr: ModulePtr,
    callout_id: u64,
    result: u32,
    headers: *mut Header,
    headers_size: usize,
    body_chunks: *mut Buffer,
    body_chunks_size: usize,
) {
    let done = barrier("bootstrap_extension_http_callout_done", false, || {
        let Some(c) = bootstrap(extension_config_module_ptr) else { return true };
        // SAFETY: Envoy's arrays, valid during this hook.
        let answer = unsafe { callout_answer(result, headers, headers_size, body_chunks, body_chunks_size) };
        c.on_callout_done(callout_id, answer);
        true
    });
    bootstrap_recover(done, extension_config_module_ptr);
}

/// After a bootstrap hook's panic (`done` false): polling goes on.
fn bootstrap_recover(done: bool, module_ptr: ModulePtr) {
    if !done {
        if let Some(c) = bootstrap(module_ptr) {
            barrier("bootstrap_extension_recover", (), || c.recover_after_panic());
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_timer_fired(
    _extension_config_envoy_ptr: EnvoyPtr,
    extension_config_module_ptr: ModulePtr,
    timer_ptr: *mut c_void,
) {
    let done = barrier("bootstrap_extension_timer_fired", false, || {
        if let Some(c) = bootstrap(extension_config_module_ptr) {
            c.on_timer(TimerId(timer_ptr as usize));
        }
        true
    });
    bootstrap_recover(done, extension_config_module_ptr);
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_file_changed(
    _: EnvoyPtr,
    _: ModulePtr,
    _: Buffer,
    _: u32,
) {
}

/// No admin handler is registered; Envoy would call this only for one.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_admin_request(
    _: EnvoyPtr,
    _: ModulePtr,
    _: Buffer,
    _: Buffer,
    _: Buffer,
) -> u32 {
    404
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_cluster_add_or_update(
    _: EnvoyPtr,
    _: ModulePtr,
    _: Buffer,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_cluster_removal(_: EnvoyPtr, _: ModulePtr, _: Buffer) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_listener_add_or_update(
    _: EnvoyPtr,
    _: ModulePtr,
    _: Buffer,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_bootstrap_extension_listener_removal(_: EnvoyPtr, _: ModulePtr, _: Buffer) {}
