//! `isogroup-companion explain`: for every service and group, where the
//! decision goes and why, from the same `decide` the filter runs.

use std::fmt::Write;

use isogroup_core::{decide_service, Decision, Table};

pub fn explain(table: &Table) -> String {
    let base = table.group_name(table.base());
    let mut out = format!("table version {}, base group {base:?}\n", table.version());
    let width = table.services().map(|(_, s)| s.len()).chain(table.groups().map(|(_, g)| g.len())).max().unwrap_or(0);
    for (_, service) in table.services() {
        for (_, group) in table.groups() {
            let why = match decide_service(table, service, Some(group), None, None) {
                Decision::Route(r) if !r.fallback => format!("{} (own instance)", r.cluster),
                Decision::Route(r) => format!("{} (fallback to {})", r.cluster, r.serving),
                Decision::FailFast(f) => format!("fail-fast ({})", f.reason.as_str()),
                Decision::PassThrough => "pass-through".to_owned(),
            };
            let _ = writeln!(out, "{service:<width$}  {group:<width$}  {why}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use isogroup_core::{Limits, Table};

    #[test]
    fn explains_every_pair() {
        let json = r#"{"version":7,"groups":{"f1":{"fallback":["ta"]},"ta":{},"ts":{"mode":"strict"}},
            "services":{"r":{"hosts":["r"],"clusters":{"base":"r0","f1":"r1","ta":"ra"}},"s":{"hosts":["s"],"clusters":{"base":"s0","ta":"sa"}}}}"#;
        let table = Table::from_json(json.as_bytes(), "base", &Limits::default()).unwrap();
        assert_eq!(
            super::explain(&table),
            "table version 7, base group \"base\"\n\
             r     base  r0 (own instance)\n\
             r     f1    r1 (own instance)\n\
             r     ta    ra (own instance)\n\
             r     ts    fail-fast (strict_group)\n\
             s     base  s0 (own instance)\n\
             s     f1    sa (fallback to ta)\n\
             s     ta    sa (own instance)\n\
             s     ts    fail-fast (strict_group)\n"
        );
    }
}
