//! Floor arms of the load benchmark, one crate, two builds:
//! - default: a no-op filter, an HTTP context per request and nothing else
//!   (the fixed cost of entering a wasm VM);
//! - `--features probe`: the minimal probe, the least any routing filter does
//!   (one header-map read, one header write: x-isogroup-cluster set from
//!   x-isogroup), so isogroup's cost above it is its own.
//!
//! The probe's plugin configuration may ask for its writes to be repeated,
//! `{"request_writes": N, "response_writes": M, "request_reads": R,
//! "raw_reads": W, "lookups": L}`: N more replacements of a request header,
//! M replacements of a response header in a response callback, R more reads
//! of the whole request header map (decoded as the SDK does), W more reads of
//! it left undecoded, L lookups of one request header by name. One write costs Envoy well under a microsecond, below what its
//! CPU per request resolves on a noisy machine; N of them do not (the
//! difference over the probe, divided by N, is the cost of one).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

#[cfg(not(feature = "probe"))]
struct Root;
#[cfg(not(feature = "probe"))]
struct Filter;

#[cfg(not(feature = "probe"))]
impl Context for Root {}
#[cfg(not(feature = "probe"))]
impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter))
    }
}

#[cfg(not(feature = "probe"))]
impl Context for Filter {}
#[cfg(not(feature = "probe"))]
impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }
}

#[cfg(not(feature = "probe"))]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

#[cfg(feature = "probe")]
mod probe {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};

    // Set once by on_configure; globals, so the contexts stay zero-sized
    // (a boxed zero-sized context is not allocated, as in the no-op).
    static REQUEST_WRITES: AtomicU32 = AtomicU32::new(0);
    static RESPONSE_WRITES: AtomicU32 = AtomicU32::new(0);
    static REQUEST_READS: AtomicU32 = AtomicU32::new(0);
    static RAW_READS: AtomicU32 = AtomicU32::new(0);
    static LOOKUPS: AtomicU32 = AtomicU32::new(0);

    extern "C" {
        // The host call under the SDK's map read, without the SDK's decoding
        // into a String per name.
        fn proxy_get_header_map_pairs(map: u32, data: *mut *mut u8, size: *mut usize) -> u32;
    }

    /// The request header map as the host serialises it, freed undecoded.
    fn raw_read() {
        let (mut data, mut size) = (core::ptr::null_mut(), 0usize);
        // SAFETY: the host writes a buffer it allocated through
        // proxy_on_memory_allocate (the SDK's allocator, this module's) and its size.
        if unsafe { proxy_get_header_map_pairs(0, &mut data, &mut size) } == 0 && !data.is_null() {
            drop(unsafe { Vec::from_raw_parts(data, size, size) });
        }
    }

    pub struct Root;
    struct Filter;

    /// `"key": <integer>` in the configuration, 0 when absent (a bench tool's
    /// own configuration: no JSON library, no validation beyond the digits).
    fn config_number(config: &[u8], key: &str) -> u32 {
        let key = format!("\"{key}\"");
        let Some(at) = config.windows(key.len()).position(|w| w == key.as_bytes()) else { return 0 };
        let rest = &config[at + key.len()..];
        let digits = rest.iter().skip_while(|b| !b.is_ascii_digit()).take_while(|b| b.is_ascii_digit());
        digits.fold(0u32, |n, d| n.saturating_mul(10).saturating_add(u32::from(d - b'0')))
    }

    impl Context for Root {}
    impl RootContext for Root {
        fn on_configure(&mut self, _size: usize) -> bool {
            let config = self.get_plugin_configuration().unwrap_or_default();
            REQUEST_WRITES.store(config_number(&config, "request_writes"), Relaxed);
            RESPONSE_WRITES.store(config_number(&config, "response_writes"), Relaxed);
            REQUEST_READS.store(config_number(&config, "request_reads"), Relaxed);
            RAW_READS.store(config_number(&config, "raw_reads"), Relaxed);
            LOOKUPS.store(config_number(&config, "lookups"), Relaxed);
            true
        }
        fn get_type(&self) -> Option<ContextType> {
            Some(ContextType::HttpContext)
        }
        fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
            Some(Box::new(Filter))
        }
    }

    impl Context for Filter {}
    impl HttpContext for Filter {
        fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            let headers = self.get_http_request_headers_bytes();
            for _ in 0..REQUEST_READS.load(Relaxed) {
                core::hint::black_box(self.get_http_request_headers_bytes());
            }
            for _ in 0..RAW_READS.load(Relaxed) {
                raw_read();
            }
            for _ in 0..LOOKUPS.load(Relaxed) {
                core::hint::black_box(self.get_http_request_header_bytes("x-isogroup"));
            }
            if let Some((_, group)) = headers.iter().find(|(name, _)| name == "x-isogroup") {
                let mut cluster = Vec::with_capacity(4 + group.len());
                cluster.extend_from_slice(b"svc-");
                cluster.extend_from_slice(group);
                self.set_http_request_header_bytes("x-isogroup-cluster", Some(&cluster));
                for _ in 0..REQUEST_WRITES.load(Relaxed) {
                    self.set_http_request_header_bytes("x-isogroup-target", Some(group));
                }
            }
            Action::Continue
        }

        fn on_http_response_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
            for _ in 0..RESPONSE_WRITES.load(Relaxed) {
                self.set_http_response_header("x-isogroup-served", Some("svc=f1"));
            }
            Action::Continue
        }
    }
}

#[cfg(feature = "probe")]
proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(probe::Root) });
}}
