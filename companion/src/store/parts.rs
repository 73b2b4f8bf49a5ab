//! A served table kept in parts, so that an update that changes a few
//! services is checked and serialised in proportion to them (the Kubernetes
//! source at 10k services: `Table::check` and the JSON of the whole table
//! took most of an update).
//!
//! `Parts` describes one accepted table: each service's hosts (normalised,
//! as the compiled table indexes them), cluster entries and groups, each
//! service's JSON, and the counts the table's limits bound. `check` accepts
//! a table that differs only in the services named: each changed service
//! passes `Table::check` on its own, and every check that spans services
//! holds (no host of two services, the service, cluster entry and group
//! limits, every fallback a known group). It only ever accepts: anything it
//! does not model (groups, sources or rules changed) or any problem makes
//! the caller check the table whole, which gives the exact errors and
//! rejects it whole. Tests hold its verdict equal to the whole check's.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use isogroup_core::table::{RawGroup, PORT_PLACEHOLDER};
use isogroup_core::{Limits, RawService, RawTable, Table};

/// What one service contributes to the cross-service checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    hosts: Vec<String>,
    entries: usize,
    groups: Vec<String>,
    /// `"<key>":{…}`, as serde_json writes it.
    json: Vec<u8>,
}

#[derive(Debug)]
pub struct Parts {
    base: String,
    groups: BTreeMap<String, RawGroup>,
    sources_rules: (Vec<isogroup_core::RawSource>, Vec<isogroup_core::edge::RawRule>),
    services: BTreeMap<String, Part>,
    /// Normalised host → its service.
    hosts: HashMap<String, String>,
    entries: usize,
    /// Group → how many services have a cluster for it.
    group_refs: HashMap<String, usize>,
}

/// Cluster entries as the limit counts them: a `{port}` cluster is one name
/// per port.
fn entries(s: &RawService) -> usize {
    match s.ports.len() {
        0 | 1 => s.clusters.len(),
        n => s.clusters.values().map(|c| if c.contains(PORT_PLACEHOLDER) { n } else { 1 }).sum(),
    }
}

/// One service's part (hosts that do not normalise are left out: only a
/// checked service is given).
fn part(key: &str, s: &RawService) -> Part {
    let hosts = s.hosts.iter().filter_map(|h| isogroup_core::authority::normalize_owned(h)).collect();
    let mut json = serde_json::to_vec(key).unwrap_or_default();
    json.push(b':');
    let _ = serde_json::to_writer(&mut json, s);
    Part { hosts, entries: entries(s), groups: s.clusters.keys().cloned().collect(), json }
}

/// One service's part, if it passes the table's checks on its own.
fn checked_part(key: &str, s: &RawService, base_group: &Option<String>, base: &str, limits: &Limits) -> Option<Part> {
    let one = RawTable {
        base_group: base_group.clone(),
        services: [(key.to_owned(), s.clone())].into(),
        ..RawTable::default()
    };
    Table::check(&one, base, limits).ok()?;
    Some(part(key, s))
}

impl Parts {
    /// The parts of `raw`, a table the whole check accepted.
    pub fn of(raw: &RawTable, base: &str) -> Parts {
        let mut parts = Parts {
            base: raw.base_group.clone().unwrap_or_else(|| base.to_owned()),
            groups: raw.groups.clone(),
            sources_rules: (raw.sources.clone(), raw.rules.clone()),
            services: BTreeMap::new(),
            hosts: HashMap::new(),
            entries: 0,
            group_refs: HashMap::new(),
        };
        for (key, s) in &raw.services {
            parts.add(key, part(key, s));
        }
        parts
    }

    fn add(&mut self, key: &str, p: Part) {
        for h in &p.hosts {
            self.hosts.insert(h.clone(), key.to_owned());
        }
        self.entries += p.entries;
        for g in &p.groups {
            *self.group_refs.entry(g.clone()).or_default() += 1;
        }
        self.services.insert(key.to_owned(), p);
    }

    fn remove(&mut self, key: &str) {
        let Some(p) = self.services.remove(key) else { return };
        for h in &p.hosts {
            if self.hosts.get(h).is_some_and(|k| k == key) {
                self.hosts.remove(h);
            }
        }
        self.entries = self.entries.saturating_sub(p.entries);
        for g in &p.groups {
            if let Some(n) = self.group_refs.get_mut(g) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.group_refs.remove(g);
                }
            }
        }
    }

    /// The parts of `raw`, which differs from the table of `self` in the
    /// services `changed` only, if it passes every check; `None`: check it
    /// whole. `self` is left as it was either way.
    pub fn check(&self, raw: &RawTable, changed: &BTreeSet<String>, base: &str, limits: &Limits) -> Option<Changes> {
        if raw.base_group.clone().unwrap_or_else(|| base.to_owned()) != self.base
            || raw.groups != self.groups
            || raw.sources != self.sources_rules.0
            || raw.rules != self.sources_rules.1
            || raw.services.len() > limits.max_services
        {
            return None;
        }
        let mut new: BTreeMap<&str, Option<Part>> = BTreeMap::new();
        for key in changed {
            let p = match raw.services.get(key) {
                Some(s) => Some(checked_part(key, s, &raw.base_group, base, limits)?),
                None => None,
            };
            new.insert(key, p);
        }
        // hosts: a changed service's host may belong to no other service
        let mut claimed: HashMap<&str, &str> = HashMap::new();
        for (key, p) in &new {
            for h in p.iter().flat_map(|p| &p.hosts) {
                if claimed.insert(h, key).is_some_and(|other| other != *key) {
                    return None;
                }
                let owner = self.hosts.get(h.as_str());
                if owner.is_some_and(|o| o != key && !new.contains_key(o.as_str())) {
                    return None;
                }
            }
        }
        // counts
        let old_entries: usize = new.keys().filter_map(|k| self.services.get(*k)).map(|p| p.entries).sum();
        let new_entries: usize = new.values().flatten().map(|p| p.entries).sum();
        if self.entries.saturating_sub(old_entries) + new_entries > limits.max_cluster_entries {
            return None;
        }
        let mut refs: HashMap<&str, isize> = HashMap::new();
        for p in new.keys().filter_map(|k| self.services.get(*k)) {
            for g in &p.groups {
                *refs.entry(g).or_default() -= 1;
            }
        }
        for p in new.values().flatten() {
            for g in &p.groups {
                *refs.entry(g).or_default() += 1;
            }
        }
        let count = |g: &str| self.group_refs.get(g).copied().unwrap_or(0) as isize + refs.get(g).copied().unwrap_or(0);
        let named = |g: &str| g == self.base || self.groups.contains_key(g);
        let mut known: BTreeSet<&str> = self.group_refs.keys().map(String::as_str).filter(|g| count(g) > 0).collect();
        known.extend(refs.keys().copied().filter(|g| count(g) > 0));
        let groups =
            1 + self.groups.keys().filter(|g| **g != self.base).count() + known.iter().filter(|g| !named(g)).count();
        if groups > limits.max_groups {
            return None;
        }
        for f in self.groups.values().flat_map(|g| &g.fallback) {
            if !named(f) && count(f) <= 0 {
                return None;
            }
        }
        Some(Changes(new.into_iter().map(|(k, p)| (k.to_owned(), p)).collect()))
    }

    /// Takes in what `check` accepted.
    pub fn apply(&mut self, changes: Changes) {
        for (key, p) in changes.0 {
            self.remove(&key);
            if let Some(p) = p {
                self.add(&key, p);
            }
        }
    }

    /// The table's JSON, as `serde_json::to_vec(raw)` writes it, from the
    /// services' parts; `raw` is the table these parts describe.
    pub fn json(&self, raw: &RawTable) -> Vec<u8> {
        let size: usize = self.services.values().map(|p| p.json.len() + 1).sum();
        let mut out = Vec::with_capacity(size + 256);
        out.extend_from_slice(format!("{{\"version\":{}", raw.version).as_bytes());
        let field = |out: &mut Vec<u8>, name: &str, value: &dyn erased::Json| {
            out.extend_from_slice(format!(",\"{name}\":").as_bytes());
            value.write(out);
        };
        if let Some(epoch) = &raw.epoch {
            field(&mut out, "epoch", epoch);
        }
        if let Some(base) = &raw.base_group {
            field(&mut out, "base_group", base);
        }
        field(&mut out, "groups", &raw.groups);
        out.extend_from_slice(b",\"services\":{");
        for (i, p) in self.services.values().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&p.json);
        }
        out.push(b'}');
        if !raw.sources.is_empty() {
            field(&mut out, "sources", &raw.sources);
        }
        if !raw.rules.is_empty() {
            field(&mut out, "rules", &raw.rules);
        }
        out.push(b'}');
        out
    }
}

/// What `check` accepted: each changed service's new part (`None`: gone).
#[derive(Debug)]
pub struct Changes(Vec<(String, Option<Part>)>);

mod erased {
    /// A serde value written as JSON (a trait object, for one helper).
    pub trait Json {
        fn write(&self, out: &mut Vec<u8>);
    }

    impl<T: serde::Serialize> Json for T {
        fn write(&self, out: &mut Vec<u8>) {
            // Writing to a Vec fails only for a map with non-string keys,
            // which no table field has.
            let _ = serde_json::to_writer(out, self);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn service(hosts: &[&str], clusters: &[(&str, &str)], ports: &[u16]) -> RawService {
        RawService {
            hosts: hosts.iter().map(|h| (*h).to_owned()).collect(),
            clusters: clusters.iter().map(|(g, c)| ((*g).to_owned(), (*c).to_owned())).collect(),
            ports: ports.to_vec(),
        }
    }

    fn table() -> RawTable {
        let mut raw = RawTable {
            version: 7,
            epoch: Some("1000-aa".into()),
            base_group: Some("base".into()),
            ..RawTable::default()
        };
        raw.groups.insert("f2".into(), RawGroup { fallback: vec!["f1".into()], ..RawGroup::default() });
        for i in 0..6 {
            let (h, short) = (format!("s{i}.ns.svc.cluster.local"), format!("s{i}.ns"));
            let lanes: &[(&str, &str)] = &[("base", "outbound|{port}|base|x"), ("f1", "c-f1")];
            // f1 (a fallback) has a lane behind s1 only
            raw.services.insert(short.clone(), service(&[&short, &h], &lanes[..1 + usize::from(i == 1)], &[80, 81]));
        }
        raw
    }

    #[test]
    fn json_is_serde_json_s() {
        let mut raw = table();
        let limits = Limits::default();
        assert_eq!(Parts::of(&raw, "base").json(&raw), serde_json::to_vec(&raw).unwrap());
        raw.epoch = None;
        raw.base_group = None;
        raw.groups.clear();
        raw.services.insert("we\"ird".into(), service(&["w"], &[("base", "c\u{e9}")], &[]));
        raw.sources =
            vec![isogroup_core::RawSource { cidr: "10.0.0.0/8".into(), group: "f1".into(), expires_at: None }];
        assert_eq!(Parts::of(&raw, "base").json(&raw), serde_json::to_vec(&raw).unwrap());
        assert!(Table::check(&table(), "base", &limits).is_ok());
    }

    /// Random updates of a few services, good and bad: whatever the parts
    /// accept, the whole check accepts, and they accept most good ones.
    #[test]
    fn parts_accept_only_what_the_whole_check_accepts() {
        let limits = Limits { max_groups: 5, max_cluster_entries: 24, ..Limits::default() };
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let (mut fast, mut good) = (0, 0);
        for _ in 0..3_000 {
            let mut served = table();
            if next(3) == 0 {
                served.groups.clear();
            }
            let parts = Parts::of(&served, "base");
            let mut raw = served.clone();
            let mut changed = BTreeSet::new();
            for _ in 0..=next(3) {
                let key = format!("s{}.ns", next(5));
                changed.insert(key.clone());
                let host = match next(10) {
                    0 => "s0.ns".to_owned(),               // another service's host (mostly)
                    1 => "S1.NS.svc.cluster.local".into(), // the same once normalised
                    2 => "bad host".into(),
                    _ => format!("{key}.svc"),
                };
                let group = ["base", "f1", "f3", "f4", "f5", "Bad"][next(6) as usize];
                let cluster = if next(12) == 0 { "bad cluster" } else { "c-{port}" };
                let s = match next(8) {
                    0 => None,
                    1 => Some(service(&[&host], &[(group, cluster)], &[80])),
                    _ => Some(service(
                        &[&host],
                        &[("base", "c"), (group, cluster)],
                        &[80, 81, 82][..1 + next(3) as usize],
                    )),
                };
                match s {
                    Some(s) => raw.services.insert(key, s),
                    None => raw.services.remove(&key),
                };
            }
            let whole = Table::check(&raw, "base", &limits).is_ok();
            let checked = parts.check(&raw, &changed, "base", &limits);
            good += usize::from(whole);
            if let Some(c) = checked {
                fast += 1;
                assert!(whole, "accepted in parts, rejected whole: {raw:?}");
                let mut updated = parts;
                updated.apply(c);
                assert_eq!(updated.json(&raw), serde_json::to_vec(&raw).unwrap(), "the parts follow the table");
                assert_eq!(updated.entries, Parts::of(&raw, "base").entries);
            }
        }
        assert!(good > 300 && fast * 10 > good * 8, "{fast} accepted in parts of {good} good tables");
    }
}
