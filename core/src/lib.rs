//! isogroup-core: pure isolation-group routing. No I/O, no proxy-wasm: the
//! filter, the companion and the tests all call the same `decide`.
#![forbid(unsafe_code)]
// The wasm filter links no std (see `prelude`); tests keep it.
#![cfg_attr(all(target_arch = "wasm32", not(test)), no_std)]

extern crate alloc;

pub mod prelude;

pub mod assist;
pub mod authority;
pub mod cidr;
pub mod client;
pub mod config;
pub mod decide;
#[cfg(feature = "deltas")]
pub mod delta;
pub mod edge;
pub mod epoch;
pub mod error;
pub mod fx;
pub mod group;
pub mod ip;
pub mod join;
mod json;
pub use json::{Key, Quoted};
mod read;
pub use read::{SCHEMA_OBJECTS, SCHEMA_VALUES};
pub mod propagation;
pub mod regex;
pub mod request;
pub mod sources;
pub mod synth;
pub mod table;
#[cfg(feature = "serde")]
mod table_de;
pub mod text;
pub mod vec_map;

pub use config::{CompanionSource, RawConfig, Settings, Source, TableSource};
pub use decide::{decide, decide_service, Decision, FailFast, FailReason, RequestView, Route};
pub use error::{ConfigError, TableError};
pub use group::{GroupName, Lookup};
pub use table::{Limits, Mode, RawGroup, RawService, RawSource, RawTable, Table};

#[cfg(test)]
mod json_tests;
#[cfg(test)]
mod regex_tests;
#[cfg(test)]
mod schema_tests;
#[cfg(test)]
mod tests;
