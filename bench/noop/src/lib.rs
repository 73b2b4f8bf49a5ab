//! Floor arms of the load benchmark, one crate, two builds:
//! - default: a no-op filter, an HTTP context per request and nothing else
//!   (the fixed cost of entering a wasm VM);
//! - `--features probe`: the minimal probe, the least any routing filter does
//!   (one header-map read, one header write: x-isogroup-cluster set from
//!   x-isogroup), so isogroup's cost above it is its own.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

struct Root;
struct Filter;

impl Context for Root {}
impl RootContext for Root {
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
    fn create_http_context(&self, _id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter))
    }
}

impl Context for Filter {}
impl HttpContext for Filter {
    #[cfg(not(feature = "probe"))]
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        Action::Continue
    }

    #[cfg(feature = "probe")]
    fn on_http_request_headers(&mut self, _headers: usize, _end_of_stream: bool) -> Action {
        let headers = self.get_http_request_headers_bytes();
        if let Some((_, group)) = headers.iter().find(|(name, _)| name == "x-isogroup") {
            let mut cluster = Vec::with_capacity(4 + group.len());
            cluster.extend_from_slice(b"svc-");
            cluster.extend_from_slice(group);
            self.set_http_request_header_bytes("x-isogroup-cluster", Some(&cluster));
        }
        Action::Continue
    }
}

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}
