//! Kubernetes mode: the cluster (pods, EndpointSlices, Services,
//! DestinationRules, IsolationGroups, the runtime ConfigMap) watched into a
//! table, one replica elected on a Lease to serve it, and the Istio objects
//! that route each lane reconciled by server-side apply.

pub mod changes;
pub mod degrade;
pub mod drift;
pub mod events;
pub mod groups;
pub mod index;
pub mod istio;
pub mod leader;
pub mod names;
pub mod plan;
pub mod reconcile;
pub mod snapshot;
pub mod source;
pub mod state;
pub mod status;
pub mod store;
pub mod watch;

#[cfg(test)]
mod bench;
#[cfg(test)]
pub mod fake;
#[cfg(test)]
mod fake_tests;
#[cfg(test)]
pub(crate) mod tests;
