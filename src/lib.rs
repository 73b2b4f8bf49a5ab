//! isogroup-filter: the proxy-wasm host adapter around `isogroup-core`.
//! Parse and compile in `on_configure`, decide per request, sync tables on
//! ticks. Every host call goes through the `Host` trait: the wasm build uses
//! `WasmHost`, native unit tests a fake.

// Natively only the unit tests use the filter; the wasm32 clippy run checks dead code.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]

mod assist;
mod header_map;
pub mod host;
mod http;
mod metrics;
mod root;
mod sync;
mod vm;
#[cfg(target_arch = "wasm32")]
mod wasm_host;

#[cfg(test)]
mod fake_host;
#[cfg(all(test, not(target_arch = "wasm32")))]
mod native_stubs;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "wasm32")]
proxy_wasm::main! {{
    proxy_wasm::set_log_level(proxy_wasm::types::LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn proxy_wasm::traits::RootContext> {
        Box::new(root::Root::new(wasm_host::WasmHost))
    });
}}
