//! The route's cluster specifier (`envoy.router.cluster_specifier_plugin.dynamic_modules`):
//! the lean arm's way to hand Envoy the cluster without a header write.
//!
//! Envoy runs `select` while it resolves the route, which happens before the
//! HTTP filters' request-headers hooks; the filter (`isogroup-lean`) then puts
//! its cluster in the stream's dynamic metadata and refreshes the route's
//! cluster, which runs `select` again (docs/native.md has the measured order).
//! Until the filter has decided (or when it passes the request through),
//! the route's configured default cluster serves.

use crate::abi::{log, log_enabled, Level, SelectHandle};
use crate::filter::{METADATA_CLUSTER, METADATA_NAMESPACE};

/// The cluster specifier's configuration: the cluster that serves a request
/// the filter did not route (its `specifier_config`, a plain string).
pub struct SpecifierConfig {
    default_cluster: Vec<u8>,
}

impl SpecifierConfig {
    pub fn new(_name: &[u8], config: &[u8]) -> Result<SpecifierConfig, String> {
        let default_cluster = config.trim_ascii();
        if default_cluster.is_empty() {
            return Err("specifier_config: the default cluster's name is required".into());
        }
        Ok(SpecifierConfig { default_cluster: default_cluster.to_vec() })
    }
}

pub fn select(config: &SpecifierConfig, request: &SelectHandle) -> bool {
    #[cfg(feature = "test-panic")]
    #[allow(clippy::panic)] // the point of the feature
    if config.default_cluster == b"test-panic" {
        panic!("specifier_config test-panic");
    }
    let picked = request.metadata(METADATA_NAMESPACE, METADATA_CLUSTER);
    if log_enabled(Level::Debug) {
        let seen = match picked.as_deref() {
            Some(c) => format!("filter picked {}", String::from_utf8_lossy(c)),
            None => "no filter decision yet".to_owned(),
        };
        log(Level::Debug, &format!("isogroup: cluster specifier select ({seen})"));
    }
    request.set_cluster(picked.as_deref().unwrap_or(&config.default_cluster));
    true
}
