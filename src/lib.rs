//! isogroup-filter: the proxy-wasm host adapter around `isogroup-core`.
//! Parse and compile in `on_configure`, decide per request, sync tables on
//! ticks. Every host call goes through the `Host` trait: the wasm build uses
//! `WasmHost`, native unit tests a fake.

// Natively only the unit tests use the filter; the wasm32 clippy run checks dead code.
#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
// The wasm links no std: no std panic, I/O or WASI runtime in the module
// (`proxy_abi` has the panic handler and the allocator).
#![cfg_attr(target_arch = "wasm32", no_std)]

extern crate alloc;

mod assist;
mod header_map;
pub mod host;
mod http;
mod metrics;
mod propagation;
pub mod proxy;
#[cfg(any(target_arch = "wasm32", test))]
mod proxy_abi;
mod root;
mod sync;
mod vm;
#[cfg(any(target_arch = "wasm32", test))]
mod wasm_host;

#[cfg(test)]
mod fake_host;
#[cfg(test)]
mod tests;
