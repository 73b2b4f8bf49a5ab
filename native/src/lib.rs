//! isogroup-native: the isogroup filter as an Envoy 1.40 dynamic module
//! (`libisogroup_native.so`), over the same core as the wasm build. The
//! ABI (`abi`) is the only `unsafe` code; `filter` is the request path and
//! `specifier` the route's cluster specifier, `bootstrap` the bootstrap
//! extension that polls a companion for it. docs/native.md says what is
//! the same as the wasm build and what differs.

#![deny(unsafe_code)]

use std::sync::atomic::AtomicU64;

pub mod abi;
mod assist;
mod bootstrap;
mod filter;
mod holding;
mod specifier;
mod sync;

/// Panics caught by the hooks' barrier in this process (every configuration).
pub static PANICS: AtomicU64 = AtomicU64::new(0);
