//! What std's prelude gives, for builds without std: the wasm filter is
//! `no_std` (alloc only), which drops std's panic, I/O and WASI runtime from
//! the module. Every module imports it (`use crate::prelude::*`); with std
//! it only names the same items.

pub use alloc::borrow::ToOwned;
pub use alloc::boxed::Box;
pub use alloc::string::{String, ToString};
pub use alloc::vec::Vec;
pub use alloc::{format, vec};

/// Fx-hashed maps: hashbrown's (std's `HashMap` needs std), rustc-hash's
/// hash without its panics (`fx`).
pub type FxHashMap<K, V> = hashbrown::HashMap<K, V, crate::fx::FxBuildHasher>;
pub type FxHashSet<K> = hashbrown::HashSet<K, crate::fx::FxBuildHasher>;
