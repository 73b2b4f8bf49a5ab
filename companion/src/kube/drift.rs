//! Who changed an owned object, from its `metadata.managedFields` (SPEC
//! "Reconcile is level-triggered"): an edit of a field the leader sets is
//! put back and reported as an Event naming the field manager that made it;
//! a field set only by another manager is left alone and reported once.
//! Pure: `kube::reconcile` writes the Events (fenced, create only).
//!
//! Paths are object keys from the root, ending at the first list: Istio's
//! lists are atomic (one manager owns a list whole, `f:<list>` in
//! `fieldsV1`), and so is what a forced apply puts back.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::kube::events::{clip, fnv1a, NOTE_MAX, REPORTER};

/// Object keys from the root (`["spec", "subsets"]`).
pub type Path = Vec<String>;

/// The field paths `wanted` sets (its labels and spec) that `observed`
/// lacks or holds with another value: what a forced apply puts back.
pub fn drifted(wanted: &Value, observed: &Value) -> Vec<Path> {
    fn go(w: &Value, o: Option<&Value>, path: &mut Path, out: &mut Vec<Path>) {
        match (w, o) {
            (Value::Object(wm), Some(Value::Object(om))) => {
                for (k, v) in wm {
                    path.push(k.clone());
                    go(v, om.get(k), path, out);
                    path.pop();
                }
            }
            (_, Some(o)) if crate::kube::plan::sets(w, o) => {}
            _ => out.push(path.clone()),
        }
    }
    let mut out = vec![];
    for top in [&["metadata", "labels"][..], &["spec"][..]] {
        let (mut w, mut o) = (wanted, Some(observed));
        for k in top {
            w = &w[*k];
            o = o.and_then(|o| o.get(*k));
        }
        if !w.is_null() {
            let mut path: Path = top.iter().map(|s| (*s).to_owned()).collect();
            go(w, o, &mut path, &mut out);
        }
    }
    out
}

/// Whether a `fieldsV1` tree owns `path` (the field, a field under it, or
/// a field above it owned whole).
fn owns(fields: &Value, path: &[String]) -> bool {
    let Some((first, rest)) = path.split_first() else { return true };
    match fields.get(format!("f:{first}")) {
        // `{}`: the field itself, whole (an atomic list, a scalar).
        Some(Value::Object(m)) if m.is_empty() => true,
        Some(sub) => owns(sub, rest),
        None => false,
    }
}

/// The field managers other than `ours` whose `managedFields` entry owns
/// `path`, in their order there.
pub fn owners(managed_fields: &Value, path: &[String], ours: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for e in managed_fields.as_array().into_iter().flatten() {
        let manager = e["manager"].as_str().unwrap_or_default();
        if manager != ours && owns(&e["fieldsV1"], path) && !out.iter().any(|m| m == manager) {
            out.push(manager.to_owned());
        }
    }
    out
}

/// The fields (as leaf paths) each manager other than `ours` owns under the
/// object's spec, labels or annotations that `wanted` does not set: left
/// alone, reported once.
pub fn kept(wanted: &Value, managed_fields: &Value, ours: &str) -> BTreeMap<String, Vec<Path>> {
    fn leaves(fields: &Value, path: &mut Path, out: &mut Vec<Path>) {
        let Some(m) = fields.as_object() else { return };
        let subfields: Vec<(&String, &Value)> = m.iter().filter(|(k, _)| k.starts_with("f:")).collect();
        // `{}`, or list items (`k:`, `v:`, `i:`) under a list: the field whole.
        if subfields.is_empty() {
            out.push(path.clone());
            return;
        }
        for (k, v) in subfields {
            path.push(k[2..].to_owned());
            leaves(v, path, out);
            path.pop();
        }
    }
    let wanted_has = |path: &Path| {
        let mut at = wanted;
        for k in path {
            match at.get(k) {
                // A field the leader sets whole (a list, a scalar) covers
                // everything under it.
                Some(v) if !v.is_object() => return true,
                Some(v) => at = v,
                None => return false,
            }
        }
        true
    };
    let mut out: BTreeMap<String, Vec<Path>> = BTreeMap::new();
    for e in managed_fields.as_array().into_iter().flatten() {
        let manager = e["manager"].as_str().unwrap_or_default();
        if manager == ours {
            continue;
        }
        let mut all = vec![];
        leaves(&e["fieldsV1"], &mut vec![], &mut all);
        let mine: Vec<Path> = all
            .into_iter()
            .filter(|p| {
                let p: Vec<&str> = p.iter().map(String::as_str).collect();
                matches!(p.as_slice(), ["spec", _, ..] | ["metadata", "labels" | "annotations", _, ..])
            })
            .filter(|p| !wanted_has(p))
            .collect();
        if !mine.is_empty() {
            out.entry(manager.to_owned()).or_default().extend(mine);
        }
    }
    out
}

/// `spec.subsets, metadata.labels.x`
pub fn shown(paths: &[Path]) -> String {
    paths.iter().map(|p| p.join(".")).collect::<Vec<_>>().join(", ")
}

/// What an Event is about: an owned Istio object as observed.
pub struct Regarding<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub observed: &'a Value,
}

/// An `events.k8s.io/v1` Event in the object's namespace; its name is a
/// hash of `occurrence`, so one occurrence is one Event (`409
/// AlreadyExists` for a repeat, from any leader).
pub fn event(
    about: &Regarding<'_>,
    occurrence: &[&str],
    warning: bool,
    reason: &str,
    note: &str,
    instance: &str,
    now: &str,
) -> Value {
    let meta = &about.observed["metadata"];
    let (namespace, name) = (meta["namespace"].as_str().unwrap_or_default(), meta["name"].as_str().unwrap_or_default());
    let hash = fnv1a(occurrence);
    let prefix = clip(name, 200).trim_end_matches(['-', '.']);
    json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {
            "name": format!("{prefix}.{hash:016x}"),
            "namespace": namespace,
            "labels": { (crate::kube::istio::MANAGED_BY.0): crate::kube::istio::MANAGED_BY.1 },
        },
        "eventTime": now,
        "type": if warning { "Warning" } else { "Normal" },
        "reportingController": REPORTER,
        "reportingInstance": clip(instance, 128),
        "action": "Reconcile",
        "reason": reason,
        "regarding": {
            "apiVersion": about.api_version, "kind": about.kind,
            "namespace": namespace, "name": name, "uid": meta["uid"],
        },
        "note": clip(note, NOTE_MAX),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn path(p: &str) -> Path {
        p.split('.').map(str::to_owned).collect()
    }

    #[test]
    fn drift_names_the_fields_an_apply_puts_back() {
        let wanted =
            json!({ "metadata": { "labels": { "a": "1" } }, "spec": { "host": "h", "subsets": [{ "name": "x" }] } });
        let same = json!({ "metadata": { "labels": { "a": "1", "b": "2" } }, "spec": { "host": "h", "subsets": [{ "name": "x" }], "exportTo": ["."] } });
        assert!(drifted(&wanted, &same).is_empty(), "fields others add are no drift");
        let edited = json!({ "metadata": { "labels": {} }, "spec": { "host": "h", "subsets": [{ "name": "y" }] } });
        assert_eq!(drifted(&wanted, &edited), [path("metadata.labels.a"), path("spec.subsets")]);
    }

    #[test]
    fn owners_and_kept_fields_come_from_managed_fields() {
        let managed = json!([
            { "manager": "isogroup/a", "operation": "Apply",
              "fieldsV1": { "f:metadata": { "f:labels": { "f:a": {} } }, "f:spec": { "f:host": {} } } },
            { "manager": "kubectl-edit", "operation": "Update",
              "fieldsV1": { "f:metadata": { "f:labels": { "f:team": {} } },
                            "f:spec": { "f:subsets": {}, "f:exportTo": {}, "f:trafficPolicy": { "f:tls": { "f:mode": {} } } } } },
        ]);
        assert_eq!(owners(&managed, &path("spec.subsets"), "isogroup/a"), ["kubectl-edit"]);
        assert_eq!(owners(&managed, &path("spec.host"), "isogroup/a"), Vec::<String>::new());
        let wanted = json!({ "metadata": { "labels": { "a": "1" } }, "spec": { "host": "h", "subsets": [] } });
        let kept = kept(&wanted, &managed, "isogroup/a");
        assert_eq!(
            kept["kubectl-edit"],
            [path("metadata.labels.team"), path("spec.exportTo"), path("spec.trafficPolicy.tls.mode")],
            "subsets is the leader's field: not reported as kept"
        );
        assert_eq!(kept.len(), 1);
    }
}
