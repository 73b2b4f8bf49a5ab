//! Degrade, never freeze (SPEC "Third round"): when the table the cluster
//! gives is over a limit or invalid, the lanes that make it so are left
//! out, newest first by the time their conditions began to hold (what
//! `isogroup-state` records; ties by name, so every leader leaves out the
//! same ones), and the rest of the table (every other lane, and base) is
//! served. Pure: the watch loop reports what it returns.

use std::collections::{BTreeMap, BTreeSet};

use isogroup_core::{Limits, RawTable, Table};

use crate::kube::snapshot::Since;

/// Lanes left out (`<service>/<group>`) and why; a group with no lane
/// whose IsolationGroup is left out is keyed by its name alone.
pub type LeftOut = BTreeMap<String, String>;

/// A lane of the table: when its conditions began to hold, its key.
struct Lane {
    since: u64,
    service: String,
    group: String,
}

impl Lane {
    fn key(&self) -> String {
        format!("{}/{}", self.service, self.group)
    }
}

/// The number of distinct groups `raw` names (what `max_groups` bounds):
/// base, its `groups`, and every lane's group.
pub fn group_count(raw: &RawTable, base: &str) -> usize {
    let mut names: BTreeSet<&str> = raw.groups.keys().map(String::as_str).collect();
    names.insert(base);
    names.extend(raw.services.values().flat_map(|s| s.clusters.keys().map(String::as_str)));
    names.len()
}

fn remove(raw: &mut RawTable, lanes: &[Lane]) {
    for l in lanes {
        if let Some(s) = raw.services.get_mut(&l.service) {
            s.clusters.remove(&l.group);
        }
    }
}

/// Leaves lanes out of `raw` until it checks; what it left out. `Err`
/// (with `raw` as given) when even without every lane it does not check:
/// then no lane is to blame.
pub fn degrade(raw: &mut RawTable, since: &Since, base: &str, limits: &Limits) -> Result<LeftOut, String> {
    let mut lanes: Vec<Lane> = raw
        .services
        .iter()
        .flat_map(|(service, s)| {
            s.clusters.keys().filter(|g| g.as_str() != base).map(move |g| Lane {
                // Not on record (should not happen): the newest.
                since: since.get(&format!("{service}/{g}")).copied().unwrap_or(u64::MAX),
                service: service.clone(),
                group: g.clone(),
            })
        })
        .collect();
    // Newest first; ties by name, the later name first.
    lanes.sort_by(|a, b| (b.since, &b.service, &b.group).cmp(&(a.since, &a.service, &a.group)));
    let mut left = LeftOut::new();
    let original = raw.clone();

    // Over max_groups: whole groups go (their lanes, and their
    // IsolationGroup's entry), newest by their first lane first; a group
    // with no lane routes nothing and goes before any; a group another
    // names as its fallback stays.
    let count = group_count(raw, base);
    if count > limits.max_groups {
        let named: BTreeSet<&str> =
            raw.groups.values().flat_map(|g| g.fallback.iter().map(String::as_str)).chain([base]).collect();
        let mut first: BTreeMap<&str, u64> =
            raw.groups.keys().map(|g| (g.as_str(), u64::MAX)).filter(|(g, _)| !named.contains(g)).collect();
        for l in lanes.iter().filter(|l| !named.contains(l.group.as_str())) {
            let at = first.entry(l.group.as_str()).or_insert(l.since);
            *at = (*at).min(l.since);
        }
        let mut groups: Vec<(u64, &str)> = first.into_iter().map(|(g, at)| (at, g)).collect();
        groups.sort_by(|a, b| b.cmp(a));
        let over: BTreeSet<String> =
            groups.iter().take(count - limits.max_groups).map(|(_, g)| (*g).to_owned()).collect();
        let why = format!("groups: {count} exceeds the limit of {}", limits.max_groups);
        let (out, kept): (Vec<Lane>, Vec<Lane>) = lanes.into_iter().partition(|l| over.contains(&l.group));
        remove(raw, &out);
        left.extend(out.iter().map(|l| (l.key(), why.clone())));
        for g in &over {
            if raw.groups.remove(g).is_some() && !out.iter().any(|l| &l.group == g) {
                left.insert(g.clone(), why.clone());
            }
        }
        lanes = kept;
    }
    let errors = match Table::check(raw, base, limits) {
        Ok(_) => return Ok(left),
        Err(errors) => errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
    };
    // Anything else: the fewest newest lanes without which it checks
    // (doubling, then halving: O(log n) checks of the table).
    let checks = |k: usize| {
        let mut t = raw.clone();
        remove(&mut t, &lanes[..k]);
        Table::check(&t, base, limits).is_ok()
    };
    let mut high = 1;
    while high < lanes.len() && !checks(high) {
        high *= 2;
    }
    let high = high.min(lanes.len());
    if !checks(high) {
        *raw = original;
        return Err(errors);
    }
    let mut low = high / 2; // does not check (or 0)
    let mut high = high;
    while high - low > 1 {
        let mid = (low + high) / 2;
        if checks(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    remove(raw, &lanes[..high]);
    left.extend(lanes[..high].iter().map(|l| (l.key(), errors.clone())));
    Ok(left)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use isogroup_core::RawService;

    use super::*;

    fn table(lanes: &[(&str, &[&str])]) -> RawTable {
        let mut raw = RawTable { base_group: Some("base".into()), ..RawTable::default() };
        for (service, groups) in lanes {
            let clusters = std::iter::once("base")
                .chain(groups.iter().copied())
                .map(|g| (g.to_owned(), format!("outbound|{{port}}|{g}|{service}")))
                .collect();
            raw.services.insert(
                (*service).to_owned(),
                RawService { hosts: vec![(*service).to_owned()], clusters, ports: vec![80] },
            );
        }
        raw
    }

    fn since(pairs: &[(&str, u64)]) -> Since {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn the_newest_lanes_over_max_groups_are_left_out() {
        let limits = Limits { max_groups: 3, ..Limits::default() };
        // base + f1, f2, f3: one group too many; f3's lane is the newest
        let mut raw = table(&[("a", &["f1", "f2"]), ("b", &["f3"])]);
        let s = since(&[("a/f1", 10), ("a/f2", 20), ("b/f3", 30)]);
        let left = degrade(&mut raw, &s, "base", &limits).unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["b/f3"]);
        assert!(left["b/f3"].contains("groups: 4 exceeds the limit of 3"), "{left:?}");
        assert_eq!(raw.services["b"].clusters.keys().collect::<Vec<_>>(), ["base"], "base keeps routing");
        assert_eq!(raw.services["a"].clusters.len(), 3);
        Table::check(&raw, "base", &limits).unwrap();
        // a group is as old as its first lane: f3 also in a (older) stays
        let mut raw = table(&[("a", &["f1", "f2"]), ("b", &["f3"]), ("c", &["f3"])]);
        let s = since(&[("a/f1", 10), ("a/f2", 20), ("b/f3", 5), ("c/f3", 40)]);
        let left = degrade(&mut raw, &s, "base", &limits).unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["a/f2"]);
        // ties by name: the later name goes
        let mut raw = table(&[("a", &["f1", "f2", "f3"])]);
        let s = since(&[("a/f1", 10), ("a/f2", 10), ("a/f3", 10)]);
        assert_eq!(degrade(&mut raw, &s, "base", &limits).unwrap().keys().collect::<Vec<_>>(), ["a/f3"]);
        // a declared group with no lane goes first; one named as a fallback stays
        let mut raw = table(&[("a", &["f1", "f2"])]);
        raw.groups.insert("idle".into(), Default::default());
        raw.groups.insert("spare".into(), Default::default());
        raw.groups.insert(
            "f1".into(),
            isogroup_core::table::RawGroup { fallback: vec!["spare".into()], ..Default::default() },
        );
        let s = since(&[("a/f1", 10), ("a/f2", 20)]);
        let left = degrade(&mut raw, &s, "base", &Limits { max_groups: 4, ..Limits::default() }).unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["idle"]);
        assert!(!raw.groups.contains_key("idle") && raw.groups.contains_key("spare"));
        let mut raw2 = raw.clone();
        raw2.groups.insert("idle".into(), Default::default());
        let left = degrade(&mut raw2, &s, "base", &Limits { max_groups: 3, ..Limits::default() }).unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["a/f2", "idle"]);
        // within the limit: nothing left out, nothing changed
        let mut raw = table(&[("a", &["f1", "f2"])]);
        let before = raw.clone();
        assert!(degrade(&mut raw, &Since::new(), "base", &limits).unwrap().is_empty());
        assert_eq!(raw, before);
    }

    #[test]
    fn any_other_limit_leaves_out_the_fewest_newest_lanes() {
        // 10 lanes; at most 8 cluster entries (4 services' base + 4 lanes)
        let limits = Limits { max_cluster_entries: 8, ..Limits::default() };
        let services: Vec<(String, Vec<String>)> =
            (0..4).map(|i| (format!("s{i}"), vec![format!("f{i}"), format!("g{i}")])).collect();
        let refs: Vec<(&str, Vec<&str>)> =
            services.iter().map(|(s, g)| (s.as_str(), g.iter().map(String::as_str).collect())).collect();
        let lanes: Vec<(&str, &[&str])> = refs.iter().map(|(s, g)| (*s, g.as_slice())).collect();
        let mut raw = table(&lanes);
        let s: Since =
            (0..4).flat_map(|i| [(format!("s{i}/f{i}"), 100 + i), (format!("s{i}/g{i}"), 200 + i)]).collect();
        let left = degrade(&mut raw, &s, "base", &limits).unwrap();
        // the four g lanes are the newest
        assert_eq!(left.keys().cloned().collect::<Vec<_>>(), ["s0/g0", "s1/g1", "s2/g2", "s3/g3"]);
        Table::check(&raw, "base", &limits).unwrap();
        // no lane to blame: refused as given
        let limits = Limits { max_services: 2, ..Limits::default() };
        let mut raw = table(&lanes);
        let before = raw.clone();
        assert!(degrade(&mut raw, &s, "base", &limits).unwrap_err().contains("services"));
        assert_eq!(raw, before);
    }
}
