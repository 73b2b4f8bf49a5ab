//! Admin writes as values, and what each does to a table. Pure: stores call
//! `Change::apply_to` on the state they hold, then validate and persist.

use isogroup_core::{RawTable, TableError};

use super::VersionTooLarge;

/// One admin write. (Source bindings and runtime rules join here, as
/// `BindSource`/`UnbindSource`/`SetRules`, when the table carries them.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `PUT /v1/services/<service>/groups/<group>`.
    Register { service: String, group: String, cluster: String },
    /// `DELETE /v1/services/<service>/groups/<group>`.
    Unregister { service: String, group: String },
    /// `PUT /v1/table`: services, groups and the base group from `table`;
    /// its `version` and `epoch` are ignored.
    ReplaceTable(Box<RawTable>),
}

/// Why a change was not applied. Nothing changed in any of these cases.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error("no service {service:?} in the table")]
    UnknownService { service: String },
    #[error("group {group:?} has no instance of {service:?}")]
    NotRegistered { service: String, group: String },
    #[error("the base group's cluster cannot be deleted ({group:?})")]
    BaseCluster { group: String },
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Invalid(Vec<TableError>),
    #[error(transparent)]
    Version(#[from] VersionTooLarge),
    /// Kubernetes mode: lanes are pod labels, group settings are
    /// `IsolationGroup` objects.
    #[error(
        "the Kubernetes source owns this: label pods (isogroup.io/group), edit IsolationGroup objects, or edit ConfigMap isogroup-runtime (sources, rules)"
    )]
    ManagedByKubernetes,
    /// Another replica leads and takes writes (Kubernetes mode).
    #[error("{0}")]
    NotLeader(String),
    /// The store cannot take the write now (unreachable, no quorum, holds
    /// data it cannot read).
    #[error("{0}")]
    Unavailable(String),
    /// The store holds data this replica cannot read (named): writes wait
    /// until someone removes or fixes it.
    #[error("{0}")]
    Unreadable(String),
    /// Writing the store failed (e.g. the table file).
    #[error("{0}")]
    WriteFailed(String),
}

impl Change {
    /// The table after this change, or `None` when it changes nothing.
    /// Validation of the whole table is the store's (`Snapshot::build`).
    pub fn apply_to(&self, raw: &RawTable, base: &str) -> Result<Option<RawTable>, ChangeError> {
        let base = raw.base_group.as_deref().unwrap_or(base);
        match self {
            Change::Register { service, group, cluster } => {
                let entry = raw.services.get(service).ok_or_else(|| unknown(service))?;
                if entry.clusters.get(group) == Some(cluster) {
                    return Ok(None);
                }
                let mut next = raw.clone();
                if let Some(entry) = next.services.get_mut(service) {
                    entry.clusters.insert(group.clone(), cluster.clone());
                }
                Ok(Some(next))
            }
            Change::Unregister { service, group } => {
                if group == base {
                    return Err(ChangeError::BaseCluster { group: group.clone() });
                }
                let entry = raw.services.get(service).ok_or_else(|| unknown(service))?;
                if !entry.clusters.contains_key(group) {
                    return Err(ChangeError::NotRegistered { service: service.clone(), group: group.clone() });
                }
                let mut next = raw.clone();
                if let Some(entry) = next.services.get_mut(service) {
                    entry.clusters.remove(group);
                }
                Ok(Some(next))
            }
            Change::ReplaceTable(table) => {
                let next = RawTable {
                    version: raw.version,
                    epoch: raw.epoch.clone(),
                    base_group: table.base_group.clone(),
                    groups: table.groups.clone(),
                    services: table.services.clone(),
                    // Kept as stored here; replacing them when a body has
                    // them belongs to the whole-table write.
                    sources: raw.sources.clone(),
                    rules: raw.rules.clone(),
                };
                Ok((next != *raw).then_some(next))
            }
        }
    }
}

fn unknown(service: &str) -> ChangeError {
    ChangeError::UnknownService { service: service.to_owned() }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use isogroup_core::RawTable;

    use super::{Change, ChangeError};

    fn table(json: &str) -> RawTable {
        serde_json::from_str(json).unwrap()
    }

    const T: &str = r#"{"version": 7, "epoch": "1-a", "services": {
        "r": {"hosts": ["r"], "clusters": {"base": "r0", "x": "rx"}}}}"#;

    fn reg(group: &str, cluster: &str) -> Change {
        Change::Register { service: "r".into(), group: group.into(), cluster: cluster.into() }
    }

    fn unreg(service: &str, group: &str) -> Change {
        Change::Unregister { service: service.into(), group: group.into() }
    }

    #[test]
    fn changes() {
        let replaced = table(
            r#"{"version": 99, "epoch": "9-z", "services": {"q": {"hosts": ["q"], "clusters": {"base": "q0"}}}}"#,
        );
        // (change, the clusters of "r" after it, or the error, or "unchanged")
        let cases: Vec<(Change, &str)> = vec![
            (reg("y", "ry"), r#"{"base":"r0","x":"rx","y":"ry"}"#),
            (reg("x", "rx2"), r#"{"base":"r0","x":"rx2"}"#),
            (reg("x", "rx"), "unchanged"),
            (
                Change::Register { service: "nope".into(), group: "x".into(), cluster: "c".into() },
                "error: no service \"nope\" in the table",
            ),
            (unreg("r", "x"), r#"{"base":"r0"}"#),
            (unreg("r", "y"), "error: group \"y\" has no instance of \"r\""),
            (unreg("r", "base"), "error: the base group's cluster cannot be deleted (\"base\")"),
            (unreg("nope", "x"), "error: no service \"nope\" in the table"),
            (Change::ReplaceTable(Box::new(replaced)), "replaced"),
            (Change::ReplaceTable(Box::new(table(T))), "unchanged"),
        ];
        let raw = table(T);
        for (change, want) in cases {
            let got = match change.apply_to(&raw, "base") {
                Ok(None) => "unchanged".to_owned(),
                Ok(Some(next)) if next.services.contains_key("q") => {
                    // the body's version and epoch are ignored
                    assert_eq!((next.version, next.epoch.as_deref()), (7, Some("1-a")));
                    "replaced".to_owned()
                }
                Ok(Some(next)) => serde_json::to_string(&next.services["r"].clusters).unwrap(),
                Err(e) => format!("error: {e}"),
            };
            assert_eq!(got, want, "{change:?}");
        }
        // a table naming its own base group protects that one
        let own = table(r#"{"base_group": "main", "services": {"r": {"hosts": ["r"], "clusters": {"main": "r0"}}}}"#);
        assert!(matches!(unreg("r", "main").apply_to(&own, "base"), Err(ChangeError::BaseCluster { .. })));
    }
}
