//! The JSON of decisions and of the service × group matrix, shared by
//! `/v1/resolve` and the console's `/v1/matrix`.

use std::sync::Mutex;

use axum::body::Bytes;
use isogroup_core::{decide_service, Decision, RawTable, Table};
use serde_json::{json, Value};

/// What a rendering is of: the served (epoch, version).
pub type Key = (Option<String>, u64);

/// The last rendering and what it is of. Concurrent misses may each build
/// (the same bytes); the cache never holds more than one.
#[derive(Default)]
pub struct Cached {
    last: Mutex<Option<(Key, Bytes)>>,
}

impl Cached {
    pub fn get_or_build(&self, key: Key, build: impl FnOnce() -> Bytes) -> Bytes {
        if let Ok(last) = self.last.lock() {
            if let Some((_, body)) = last.as_ref().filter(|(k, _)| *k == key) {
                return body.clone();
            }
        }
        let body = build();
        if let Ok(mut last) = self.last.lock() {
            *last = Some((key, body.clone()));
        }
        body
    }
}

/// The JSON of one decision, as `/v1/resolve` answers it (without version).
pub fn decision_json(decision: &Decision<'_>) -> Option<Value> {
    Some(match decision {
        Decision::PassThrough => return None,
        Decision::Route(r) => json!({
            "decision": "route", "service": r.service, "group": r.group,
            "serving_group": r.serving, "cluster": r.cluster, "fallback": r.fallback,
        }),
        Decision::FailFast(f) => json!({
            "decision": "failfast", "service": f.service, "group": f.group, "reason": f.reason.as_str(),
        }),
    })
}

pub fn matrix_json(raw: &RawTable, table: &Table) -> Value {
    let base = table.group_name(table.base()).to_owned();
    let services: Vec<&str> = table.services().map(|(_, s)| s).collect();
    // One row per service, or per port where a service lists several (a
    // `{port}` cluster differs by port).
    let rows: Vec<(&str, Option<u16>)> = table
        .services()
        .flat_map(|(id, s)| match table.ports(id) {
            ports if ports.len() > 1 => ports.iter().map(|p| (s, Some(*p))).collect::<Vec<_>>(),
            _ => vec![(s, None)],
        })
        .collect();
    let mut names: Vec<&str> = table.groups().map(|(_, g)| g).collect();
    // The base group first, then the lanes by name.
    names.sort_by_key(|g| (*g != base, *g));
    let lanes: Vec<Value> = names.iter().map(|g| lane(raw, &base, g)).collect();
    let cells: Vec<Value> = rows
        .iter()
        .flat_map(|row| names.iter().map(move |g| (*row, *g)))
        .filter_map(|((s, port), g)| {
            let mut cell = decision_json(&decide_service(table, s, Some(g), None, port))?;
            cell["port"] = json!(port);
            Some(cell)
        })
        .collect();
    let rows: Vec<Value> = rows.iter().map(|(s, p)| json!({ "service": s, "port": p })).collect();
    json!({ "base_group": base, "services": services, "rows": rows, "groups": lanes, "cells": cells })
}

/// One group: its settings, its own instances and the order it falls back in.
fn lane(raw: &RawTable, base: &str, name: &str) -> Value {
    let group = raw.groups.get(name);
    let instances: serde_json::Map<String, Value> =
        raw.services.iter().filter_map(|(s, entry)| Some((s.clone(), json!(entry.clusters.get(name)?)))).collect();
    json!({
        "name": name,
        "mode": if group.is_some_and(|g| g.mode == isogroup_core::Mode::Strict) { "strict" } else { "permissive" },
        "fallback": group.map(|g| g.fallback.clone()).unwrap_or_default(),
        "chain": chain(raw, base, name),
        "description": group.and_then(|g| g.description.clone()),
        "owner": group.and_then(|g| g.owner.clone()),
        "instances": instances,
    })
}

/// The group, its fallbacks depth first (each once), then the base group:
/// the order `decide` tries (a validated table has no cycles).
fn chain(raw: &RawTable, base: &str, name: &str) -> Vec<String> {
    fn visit(raw: &RawTable, name: &str, out: &mut Vec<String>) {
        if out.iter().any(|g| g == name) {
            return;
        }
        out.push(name.to_owned());
        for next in raw.groups.get(name).map(|g| g.fallback.as_slice()).unwrap_or_default() {
            visit(raw, next, out);
        }
    }
    let mut out = Vec::new();
    visit(raw, name, &mut out);
    if !out.iter().any(|g| g == base) {
        out.push(base.to_owned());
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use isogroup_core::{decide_service, Limits, RawTable, Table};
    use serde_json::json;

    use super::{decision_json, matrix_json, Cached};

    const T: &str = r#"{"version": 7, "groups": {"f1": {"fallback": ["ta", "tb"]}, "ta": {"fallback": ["tb"]},
        "tb": {}, "ts": {"mode": "strict"}},
        "services": {"r": {"hosts": ["r"], "clusters": {"base": "r0", "tb": "rb", "ts": "rs"}},
                     "s": {"hosts": ["s"], "clusters": {"base": "s0", "lone": "sl"}},
                     "p": {"hosts": ["p"], "ports": [80, 443], "clusters": {"base": "p0-{port}", "tb": "pb-{port}"}}}}"#;

    #[test]
    fn every_cell_is_the_decision_and_every_lane_its_chain() {
        let raw: RawTable = serde_json::from_str(T).unwrap();
        let table = Table::compile(&raw, "base", &Limits::default()).unwrap();
        let m = matrix_json(&raw, &table);
        let groups: Vec<&str> = m["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
        // base first; a group only a cluster names ("lone") is a lane too
        assert_eq!(groups, ["base", "f1", "lone", "ta", "tb", "ts"]);
        assert_eq!(m["services"], json!(["p", "r", "s"]));
        // a service with several ports has a row per port
        assert_eq!(
            m["rows"],
            json!([{"service": "p", "port": 80}, {"service": "p", "port": 443},
                   {"service": "r", "port": null}, {"service": "s", "port": null}])
        );
        let cells = m["cells"].as_array().unwrap();
        assert_eq!(cells.len(), 24);
        for cell in cells.iter().filter(|c| c["port"].is_null()) {
            let (s, g) = (cell["service"].as_str().unwrap(), cell["group"].as_str().unwrap());
            let mut want = decision_json(&decide_service(&table, s, Some(g), None, None)).unwrap();
            want["port"] = json!(null);
            assert_eq!(cell, &want);
        }
        let by = |name: &str| m["groups"].as_array().unwrap().iter().find(|g| g["name"] == name).unwrap().clone();
        assert_eq!(by("f1")["chain"], json!(["f1", "ta", "tb", "base"]));
        assert_eq!(by("f1")["fallback"], json!(["ta", "tb"]));
        assert_eq!(by("ts")["mode"], "strict");
        assert_eq!(by("ts")["instances"], json!({"r": "rs"}));
        assert_eq!(by("base")["chain"], json!(["base"]));
        // the cells the chain predicts
        let cell = |s: &str, g: &str| cells.iter().find(|c| c["service"] == s && c["group"] == g).unwrap().clone();
        assert_eq!(cell("r", "f1")["serving_group"], "tb");
        assert_eq!(cell("r", "f1")["fallback"], true);
        assert_eq!(cell("s", "ts")["decision"], "failfast");
        assert_eq!(cell("s", "ts")["reason"], "strict_group");
        assert_eq!(cell("s", "lone")["cluster"], "sl");
        let port = |p: u16, g: &str| {
            cells.iter().find(|c| c["service"] == "p" && c["port"] == p && c["group"] == g).unwrap().clone()
        };
        assert_eq!(port(443, "ta")["cluster"], "pb-443");
        assert_eq!(port(80, "base")["cluster"], "p0-80");
    }

    #[test]
    fn a_rendering_is_built_once_per_epoch_and_version() {
        let cache = Cached::default();
        let mut builds = 0;
        let mut get = |key: (Option<String>, u64)| {
            cache.get_or_build(key.clone(), || {
                builds += 1;
                axum::body::Bytes::from(format!("{key:?}"))
            })
        };
        let a = get((Some("e1".into()), 7));
        assert_eq!(get((Some("e1".into()), 7)), a);
        assert_eq!(get((Some("e1".into()), 7)), a);
        // a new version, then a new epoch with the same version: rebuilt
        assert_ne!(get((Some("e1".into()), 8)), a);
        assert_ne!(get((Some("e2".into()), 8)), a);
        assert_eq!(builds, 3);
    }
}
