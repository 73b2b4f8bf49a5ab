//! isogroup-filter: the proxy-wasm host adapter around `isogroup-core`.
//! Parse and compile in `on_configure`, decide per request, sync tables on
//! ticks. Every host call goes through `host`.

mod assist;
mod host;
mod http;
mod metrics;
mod root;
mod sync;
mod vm;

use proxy_wasm::traits::RootContext;
use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(root::Root::default()) });
}}
