//! `IsolationGroup` objects (`isogroup.io/v1alpha1`, cluster-scoped, the
//! object's name is the group) → the table's `groups`, and the status each
//! object should carry. Pure; the watch loop writes the statuses.
//!
//! An invalid object is left out (its lanes still route, as a permissive
//! group without fallback) and its status says why. Whole-table rules
//! (fallback cycles, depth) are judged by the core's own table check, so the
//! Kubernetes source and every other store agree on what is valid: an object
//! named by such an error is left out and the check runs again.
//! A fallback may name a group that has no object and no lane right now
//! (lanes come and go): it enters `groups` as a plain permissive group.

use std::collections::BTreeMap;

use isogroup_core::group::is_valid_group;
use isogroup_core::table::Mode;
use isogroup_core::{Limits, RawGroup, RawService, RawTable, Table, TableError};
use serde_json::{json, Value};

pub const API_GROUP: &str = "isogroup.io";
pub const VERSION: &str = "v1alpha1";
pub const KIND: &str = "IsolationGroup";
/// Free-text fields (`description`, `owner`) stay this short (SPEC).
const MAX_TEXT: usize = isogroup_core::table::MAX_GROUP_TEXT;
/// The status condition this companion owns.
pub const CONDITION: &str = "Accepted";

/// One object as watched.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupObject {
    pub name: String,
    pub generation: i64,
    pub spec: Value,
    pub status: Value,
}

/// A valid object's settings.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Settings {
    pub fallback: Vec<String>,
    pub mode: Mode,
    pub description: Option<String>,
    pub owner: Option<String>,
}

impl Settings {
    fn raw(&self) -> RawGroup {
        RawGroup {
            fallback: self.fallback.clone(),
            mode: self.mode,
            description: self.description.clone(),
            owner: self.owner.clone(),
        }
    }
}

/// What the companion thinks of one object: `Ok` or why it is left out.
pub type Verdict = Result<(), String>;

/// The table's `groups`, and a verdict for every object.
pub fn to_groups(
    objects: &[GroupObject],
    base: &str,
    limits: &Limits,
) -> (BTreeMap<String, RawGroup>, BTreeMap<String, Verdict>) {
    let mut verdicts = BTreeMap::new();
    let mut settings = BTreeMap::new();
    for o in objects {
        match parse(o, base) {
            Ok(s) => {
                settings.insert(o.name.clone(), s);
                verdicts.insert(o.name.clone(), Ok(()));
            }
            Err(e) => {
                verdicts.insert(o.name.clone(), Err(e));
            }
        }
    }
    // Whole-table rules: leave out each object an error names, until none.
    loop {
        let groups = groups_of(&settings);
        let probe = RawTable {
            base_group: Some(base.to_owned()),
            groups: groups.clone(),
            services: BTreeMap::from([(
                "probe".to_owned(),
                RawService {
                    hosts: vec!["probe".into()],
                    clusters: [(base.to_owned(), "probe".to_owned())].into(),
                    ports: vec![],
                },
            )]),
            ..RawTable::default()
        };
        let Err(errors) = Table::check(&probe, base, limits) else { return (groups, verdicts) };
        let named: Vec<(String, String)> =
            errors.iter().filter_map(|e| group_of(e).map(|g| (g, e.to_string()))).collect();
        let mut removed = false;
        for (group, message) in named {
            if settings.remove(&group).is_some() {
                verdicts.insert(group, Err(message));
                removed = true;
            }
        }
        if !removed {
            // An error no object owns (e.g. too many groups): leave every
            // object out rather than publish nothing.
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            for name in std::mem::take(&mut settings).into_keys() {
                verdicts.insert(name, Err(message.clone()));
            }
            return (BTreeMap::new(), verdicts);
        }
    }
}

/// Valid settings plus a plain entry for every group a fallback names.
fn groups_of(settings: &BTreeMap<String, Settings>) -> BTreeMap<String, RawGroup> {
    let mut groups: BTreeMap<String, RawGroup> = settings.iter().map(|(n, s)| (n.clone(), s.raw())).collect();
    for s in settings.values() {
        for f in &s.fallback {
            groups.entry(f.clone()).or_default();
        }
    }
    groups
}

/// The group a table error is about, when it is about one.
fn group_of(e: &TableError) -> Option<String> {
    match e {
        TableError::StrictWithFallback { group }
        | TableError::BaseHasFallback { group }
        | TableError::UnknownFallback { group, .. }
        | TableError::FallbackCycle { group, .. }
        | TableError::FallbackTooDeep { group, .. } => Some(group.clone()),
        _ => None,
    }
}

fn parse(o: &GroupObject, base: &str) -> Result<Settings, String> {
    if !is_valid_group(o.name.as_bytes()) {
        return Err(format!("metadata.name: {:?} is not a valid group name (DNS-1123 label, at most 63)", o.name));
    }
    let spec = match &o.spec {
        Value::Null => return Ok(Settings::default()),
        Value::Object(m) => m,
        _ => return Err("spec: not an object".into()),
    };
    let mut s = Settings::default();
    for (key, value) in spec {
        match key.as_str() {
            "fallback" => {
                let list = value.as_array().ok_or("spec.fallback: not a list of group names")?;
                for (i, g) in list.iter().enumerate() {
                    let g = g
                        .as_str()
                        .filter(|g| is_valid_group(g.as_bytes()))
                        .ok_or_else(|| format!("spec.fallback[{i}]: {g} is not a valid group name (DNS-1123 label)"))?;
                    if g == o.name {
                        return Err(format!("spec.fallback[{i}]: a group cannot fall back to itself"));
                    }
                    s.fallback.push(g.to_owned());
                }
            }
            "mode" => {
                s.mode = match value.as_str() {
                    Some("permissive") => Mode::Permissive,
                    Some("strict") => Mode::Strict,
                    _ => return Err(format!("spec.mode: {value} is not \"permissive\" or \"strict\"")),
                }
            }
            "description" | "owner" => {
                let text = value.as_str().ok_or_else(|| format!("spec.{key}: not a string"))?;
                if text.len() > MAX_TEXT {
                    return Err(format!("spec.{key}: {} bytes, at most {MAX_TEXT}", text.len()));
                }
                let slot = if key == "owner" { &mut s.owner } else { &mut s.description };
                *slot = Some(text.to_owned());
            }
            other => return Err(format!("spec.{other}: unknown field")),
        }
    }
    if s.mode == Mode::Strict && !s.fallback.is_empty() {
        return Err("spec.fallback: a strict group cannot have a fallback".into());
    }
    if o.name == base && !s.fallback.is_empty() {
        return Err("spec.fallback: the base group cannot have a fallback".into());
    }
    Ok(s)
}

/// The `Accepted` condition for `verdict`, as (status, reason, message).
fn condition(verdict: &Verdict) -> (&'static str, &'static str, String) {
    match verdict {
        Ok(()) => ("True", "Valid", "in the table".to_owned()),
        Err(why) => (
            "False",
            "Invalid",
            format!("{why}; left out of the table: its lanes route as a permissive group without fallback"),
        ),
    }
}

/// Installation `id`'s entry of an `IsolationGroup`'s status
/// (`status.installations.<id>`; `null` when it has none).
pub fn own_status(data: &Value, id: &str) -> Value {
    data.get("status").and_then(|s| s.get("installations")).and_then(|i| i.get(id)).cloned().unwrap_or_default()
}

/// Most `lanesLeftOut` entries written per installation (the CRD allows 1,000).
pub const MAX_SHOWN_LEFT_OUT: usize = 100;

/// The status entry `o` should carry (this installation's, see
/// `own_status`), or `None` when it carries it already
/// (ignoring the transition time, so an unchanged verdict writes nothing).
///
/// `left_out`: this group's lanes left out of the table (degraded, newest
/// first), as `<service>: why`; shown as `lanesLeftOut`.
pub fn status_update(o: &GroupObject, verdict: &Verdict, left_out: &[String], now_rfc3339: &str) -> Option<Value> {
    let (status, reason, message) = condition(verdict);
    let lanes_left_out = match left_out.len() {
        0 => Value::Null,
        n if n <= MAX_SHOWN_LEFT_OUT => json!(left_out),
        // The CRD bounds the list (maxItems), as an object must stay small.
        n => {
            let mut shown: Vec<String> = left_out[..MAX_SHOWN_LEFT_OUT - 1].to_vec();
            shown.push(format!("… and {} more (see /readyz)", n - (MAX_SHOWN_LEFT_OUT - 1)));
            json!(shown)
        }
    };
    let current = o.status["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == CONDITION))
        .cloned()
        .unwrap_or(Value::Null);
    let same = current["status"] == status
        && current["reason"] == reason
        && current["message"] == message.as_str()
        && o.status["observedGeneration"] == o.generation
        && o.status["lanesLeftOut"] == lanes_left_out;
    if same {
        return None;
    }
    let since = if current["status"] == status { current["lastTransitionTime"].clone() } else { json!(now_rfc3339) };
    let since = if since.is_null() { json!(now_rfc3339) } else { since };
    // Null: a merge patch removes the field.
    Some(json!({
        "lanesLeftOut": lanes_left_out,
        "observedGeneration": o.generation,
        "conditions": [{
            "type": CONDITION, "status": status, "reason": reason, "message": message,
            "observedGeneration": o.generation, "lastTransitionTime": since,
        }],
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn obj(name: &str, spec: Value) -> GroupObject {
        GroupObject { name: name.into(), generation: 1, spec, status: Value::Null }
    }

    #[test]
    fn lanes_left_out_are_capped_within_the_crds_bound() {
        let o = obj("g", json!({}));
        let many: Vec<String> = (0..250).map(|i| format!("s{i}.ns: groups: 4 exceeds the limit of 3")).collect();
        let status = status_update(&o, &Ok(()), &many, "2026-01-01T00:00:00Z").unwrap();
        let shown = status["lanesLeftOut"].as_array().unwrap();
        assert_eq!(shown.len(), MAX_SHOWN_LEFT_OUT);
        assert_eq!(shown[0], many[0].as_str(), "newest first, as given");
        assert_eq!(shown[MAX_SHOWN_LEFT_OUT - 1], "… and 151 more (see /readyz)");
        let few = status_update(&o, &Ok(()), &many[..2], "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(few["lanesLeftOut"], json!(many[..2]));
    }

    #[test]
    fn objects_to_groups() {
        // (objects, groups in the table as JSON, verdicts: name → "ok" or a part of the error)
        type Case = (Vec<GroupObject>, Value, Vec<(&'static str, &'static str)>);
        let cases: Vec<Case> = vec![
            (
                vec![
                    obj("feature-1", json!({"fallback": ["team-a"], "description": "checkout", "owner": "ana"})),
                    obj("team-s", json!({"mode": "strict"})),
                ],
                // team-a has no object: a plain group so the fallback is valid
                json!({
                    "feature-1": {"fallback": ["team-a"], "description": "checkout", "owner": "ana"},
                    "team-a": {},
                    "team-s": {"mode": "strict"}
                }),
                vec![("feature-1", "ok"), ("team-s", "ok")],
            ),
            (vec![obj("x", Value::Null)], json!({"x": {}}), vec![("x", "ok")]),
            (
                vec![obj("a", json!({"mode": "strict", "fallback": ["b"]})), obj("c", json!({"mode": "loose"}))],
                json!({}),
                vec![("a", "spec.fallback: a strict group"), ("c", "spec.mode: \"loose\"")],
            ),
            (
                vec![obj("a", json!({"fallback": ["Bad"]})), obj("b", json!({"fallbak": []}))],
                json!({}),
                vec![("a", "spec.fallback[0]: \"Bad\""), ("b", "spec.fallbak: unknown field")],
            ),
            (
                vec![obj("a", json!({"owner": "x".repeat(257)})), obj("b", json!({"fallback": ["b"]}))],
                json!({}),
                vec![("a", "spec.owner: 257 bytes"), ("b", "itself")],
            ),
            (
                vec![obj("base", json!({"fallback": ["a"]}))],
                json!({}),
                vec![("base", "the base group cannot have a fallback")],
            ),
            // a cycle: the object the core names is left out, the rest stays
            (
                vec![obj("a", json!({"fallback": ["b"]})), obj("b", json!({"fallback": ["a"]}))],
                json!({"a": {}, "b": {"fallback": ["a"]}}),
                vec![("a", "cycle"), ("b", "ok")],
            ),
        ];
        for (objects, want_groups, want_verdicts) in cases {
            let (groups, verdicts) = to_groups(&objects, "base", &Limits::default());
            assert_eq!(serde_json::to_value(&groups).unwrap(), want_groups, "{objects:?}");
            for (name, want) in want_verdicts {
                match (&verdicts[name], want) {
                    (Ok(()), "ok") => {}
                    (Err(e), want) if want != "ok" && e.contains(want) => {}
                    (got, want) => panic!("{name}: {got:?}, want {want}"),
                }
            }
        }
    }

    #[test]
    fn status_written_only_when_it_changes() {
        let mut o = obj("a", json!({}));
        let bad: Verdict = Err("spec.mode: nope".into());
        let first = status_update(&o, &bad, &[], "2026-01-01T00:00:00Z").unwrap();
        assert_eq!(first["conditions"][0]["status"], "False");
        assert!(first["conditions"][0]["message"].as_str().unwrap().contains("permissive group without fallback"));
        o.status = first.clone();
        assert_eq!(status_update(&o, &bad, &[], "2026-01-02T00:00:00Z"), None, "unchanged: no write");
        // a new generation is observed even with the same verdict; the transition time stays
        o.generation = 2;
        let second = status_update(&o, &bad, &[], "2026-01-02T00:00:00Z").unwrap();
        assert_eq!(second["observedGeneration"], 2);
        assert_eq!(second["conditions"][0]["lastTransitionTime"], "2026-01-01T00:00:00Z");
        o.status = second;
        let fixed = status_update(&o, &Ok(()), &[], "2026-01-03T00:00:00Z").unwrap();
        assert_eq!(fixed["conditions"][0]["status"], "True");
        assert_eq!(fixed["conditions"][0]["lastTransitionTime"], "2026-01-03T00:00:00Z");
    }
}
