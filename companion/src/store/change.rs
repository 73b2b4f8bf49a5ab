//! Admin writes as values, and what each does to a table. Pure: stores call
//! `Change::apply_to` on the state they hold, then validate and persist.

use isogroup_core::edge::RawRule;
use isogroup_core::{RawSource, RawTable, TableError};

use super::VersionTooLarge;

/// One admin write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `PUT /v1/services/<service>/groups/<group>`.
    Register { service: String, group: String, cluster: String },
    /// `DELETE /v1/services/<service>/groups/<group>`.
    Unregister { service: String, group: String },
    /// `PUT /v1/table`: services, groups and the base group from `table`,
    /// and its sources and rules where the body had them (`with_sources`,
    /// `with_rules`); its `version` and `epoch` are ignored.
    ReplaceTable { table: Box<RawTable>, with_sources: bool, with_rules: bool },
    /// `PUT /v1/sources/<ip>[/<len>]`: binds `cidr` (canonical
    /// `address/len`) to `group`, replacing a binding of the same range.
    BindSource { cidr: String, group: String, expires_at: Option<u64> },
    /// `DELETE /v1/sources/<ip>[/<len>]`.
    UnbindSource { cidr: String },
    /// `PUT /v1/rules`: the whole list.
    SetRules(Vec<RawRule>),
    /// The companion's expiry timer: removes every binding expired at `now`
    /// (unix seconds). Guarded: a binding already gone, or bound again with
    /// a later expiry, is left alone, and nothing expired changes nothing.
    ExpireSources { now: u64 },
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
    #[error("{field}: the table knows no group {group:?} (add an instance of it first)")]
    UnknownGroup { field: &'static str, group: String },
    #[error("no binding for {cidr}")]
    NotBound { cidr: String },
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
    /// A value over what the store takes in one request (etcd: 1.5 MiB);
    /// the text starts with the field (`services.<name>`, `sources`,
    /// `rules`, `groups.<name>`).
    #[error("{0}")]
    TooLarge(String),
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
            Change::ReplaceTable { table, with_sources, with_rules } => {
                let next = RawTable {
                    version: raw.version,
                    epoch: raw.epoch.clone(),
                    base_group: table.base_group.clone(),
                    groups: table.groups.clone(),
                    services: table.services.clone(),
                    sources: if *with_sources { table.sources.clone() } else { raw.sources.clone() },
                    rules: if *with_rules { table.rules.clone() } else { raw.rules.clone() },
                };
                Ok((next != *raw).then_some(next))
            }
            Change::BindSource { cidr, group, expires_at } => {
                if !knows_group(raw, base, group) {
                    return Err(ChangeError::UnknownGroup { field: "group", group: group.clone() });
                }
                let binding = RawSource { cidr: cidr.clone(), group: group.clone(), expires_at: *expires_at };
                let mut next = raw.clone();
                match next.sources.iter_mut().find(|s| same_range(&s.cidr, cidr)) {
                    Some(existing) if *existing == binding => return Ok(None),
                    Some(existing) => *existing = binding,
                    None => next.sources.push(binding),
                }
                Ok(Some(next))
            }
            Change::UnbindSource { cidr } => {
                let mut next = raw.clone();
                next.sources.retain(|s| !same_range(&s.cidr, cidr));
                if next.sources.len() == raw.sources.len() {
                    return Err(ChangeError::NotBound { cidr: cidr.clone() });
                }
                Ok(Some(next))
            }
            Change::SetRules(rules) => {
                if *rules == raw.rules {
                    return Ok(None);
                }
                Ok(Some(RawTable { rules: rules.clone(), ..raw.clone() }))
            }
            Change::ExpireSources { now } => {
                let mut next = raw.clone();
                next.sources.retain(|s| s.expires_at.is_none_or(|t| *now < t));
                Ok((next.sources.len() != raw.sources.len()).then_some(next))
            }
        }
    }
}

/// A group the table knows: in `groups`, a key of a service's `clusters`,
/// or the base group (`Table::knows_group` on the raw form).
pub fn knows_group(raw: &RawTable, base: &str, group: &str) -> bool {
    group == base || raw.groups.contains_key(group) || raw.services.values().any(|s| s.clusters.contains_key(group))
}

/// Whether two bindings name the same range (a stored `192.0.2.7` is
/// `192.0.2.7/32`).
fn same_range(a: &str, b: &str) -> bool {
    let canonical = |c: &str| match isogroup_core::cidr::Cidr::parse_network(c) {
        Ok(cidr) => format!("{}/{}", cidr.network(), cidr.prefix()),
        Err(_) => c.to_owned(),
    };
    a == b || canonical(a) == canonical(b)
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

    fn replace(t: RawTable) -> Change {
        Change::ReplaceTable { table: Box::new(t), with_sources: false, with_rules: false }
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
            (replace(replaced), "replaced"),
            (replace(table(T)), "unchanged"),
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

    fn bind(cidr: &str, group: &str, expires_at: Option<u64>) -> Change {
        Change::BindSource { cidr: cidr.into(), group: group.into(), expires_at }
    }

    #[test]
    fn sources_and_rules() {
        let raw = table(
            r#"{"groups": {"g": {}}, "services": {"r": {"hosts": ["r"], "clusters": {"base": "r0", "x": "rx"}}},
                "sources": [{"cidr": "10.0.0.7", "group": "g", "expires_at": 100},
                            {"cidr": "10.1.0.0/16", "group": "x"}]}"#,
        );
        // (change, the sources after it as JSON, or the error, or "unchanged")
        let cases: Vec<(Change, &str)> = vec![
            (
                bind("10.0.0.8/32", "base", None),
                r#"[{"cidr":"10.0.0.7","group":"g","expires_at":100},{"cidr":"10.1.0.0/16","group":"x"},{"cidr":"10.0.0.8/32","group":"base"}]"#,
            ),
            // the same range in another spelling replaces it, in place
            (
                bind("10.0.0.7/32", "x", Some(200)),
                r#"[{"cidr":"10.0.0.7/32","group":"x","expires_at":200},{"cidr":"10.1.0.0/16","group":"x"}]"#,
            ),
            (bind("10.1.0.0/16", "x", None), "unchanged"),
            (
                bind("10.0.0.9/32", "nope", None),
                "error: group: the table knows no group \"nope\" (add an instance of it first)",
            ),
            (Change::UnbindSource { cidr: "10.0.0.7/32".into() }, r#"[{"cidr":"10.1.0.0/16","group":"x"}]"#),
            (Change::UnbindSource { cidr: "10.9.0.0/16".into() }, "error: no binding for 10.9.0.0/16"),
            (Change::ExpireSources { now: 99 }, "unchanged"),
            (Change::ExpireSources { now: 100 }, r#"[{"cidr":"10.1.0.0/16","group":"x"}]"#),
        ];
        for (change, want) in cases {
            let got = match change.apply_to(&raw, "base") {
                Ok(None) => "unchanged".to_owned(),
                Ok(Some(next)) => serde_json::to_string(&next.sources).unwrap(),
                Err(e) => format!("error: {e}"),
            };
            assert_eq!(got, want, "{change:?}");
        }
        let rules: RawTable = table(r#"{"rules": [{"header": "x-user", "values": ["a"], "group": "g"}]}"#);
        let set = Change::SetRules(rules.rules.clone());
        assert_eq!(set.apply_to(&raw, "base").unwrap().unwrap().rules, rules.rules);
        assert!(Change::SetRules(vec![]).apply_to(&raw, "base").unwrap().is_none(), "no rules to none: unchanged");
        // a whole-table write keeps sources and rules unless the body had them
        let body = table(r#"{"services": {"r": {"hosts": ["r"], "clusters": {"base": "r1"}}}}"#);
        let keep = Change::ReplaceTable { table: Box::new(body.clone()), with_sources: false, with_rules: false };
        assert_eq!(keep.apply_to(&raw, "base").unwrap().unwrap().sources, raw.sources);
        let drop = Change::ReplaceTable { table: Box::new(body), with_sources: true, with_rules: true };
        assert!(drop.apply_to(&raw, "base").unwrap().unwrap().sources.is_empty());
    }
}
