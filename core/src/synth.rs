//! Synthetic route tables of any size, for benchmarks and load tests (the
//! companion's `synth` command writes them as files).

#[allow(unused_imports)]
use crate::prelude::*;

use crate::table::{Mode, NameMap, RawGroup, RawService, RawTable};

/// `services` services (`svc-<i>`, each with base plus 0–3 group clusters)
/// over `groups` groups (`g-<j>`): short fallback chains, every tenth group
/// strict. Deterministic.
pub fn table(services: usize, groups: usize) -> RawTable {
    let groups = groups.max(1);
    let mut raw = RawTable { version: 1, ..RawTable::default() };
    // Maps collected, so built in one sort (`svc-10` sorts before `svc-2`).
    raw.groups = (0..groups)
        .map(|j| {
            let strict = j % 10 == 9;
            let fallback = if strict || j % 3 == 2 || j + 1 >= groups { vec![] } else { vec![group(j + 1)] };
            let mode = if strict { Mode::Strict } else { Mode::Permissive };
            (group(j), RawGroup { fallback, mode, ..RawGroup::default() })
        })
        .collect();
    raw.services = (0..services)
        .map(|i| {
            let name = service(i);
            let mut clusters = NameMap::new();
            clusters.insert("base".to_owned(), format!("outbound|80|base|{name}.default.svc.cluster.local"));
            for k in 0..(i % 4) {
                let g = group(instance_group(i, k, groups));
                clusters.insert(g.clone(), format!("outbound|80|{g}|{name}.default.svc.cluster.local"));
            }
            let hosts = vec![name.clone(), format!("{name}.default.svc.cluster.local")];
            (name, RawService { hosts, clusters, ports: Vec::new() })
        })
        .collect();
    raw
}

pub fn service(i: usize) -> String {
    format!("svc-{i}")
}

pub fn group(j: usize) -> String {
    format!("g-{j}")
}

/// The group index of service `i`'s `k`-th group instance.
pub fn instance_group(i: usize, k: usize, groups: usize) -> usize {
    (i * 7 + k * 13) % groups.max(1)
}
