//! What a client address alone selects in a table (`/v1/resolve?client=`,
//! the console): its source binding (longest unexpired prefix), else the
//! first of the table's rules that needs only the address (`source_cidrs`).
//! The same lookups the edge filter makes, without a request.

#[allow(unused_imports)]
use crate::prelude::*;

use core::net::IpAddr;

use crate::group::GroupName;
use crate::table::Table;

/// The group a client address selects, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientPick {
    pub group: GroupName,
    pub by: PickedBy,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PickedBy {
    /// `sources[index]`; `expires_at` as in the table.
    Binding { index: usize, expires_at: Option<u64> },
    /// `rules[index]`, a `source_cidrs` rule.
    Rule { index: usize },
}

impl PickedBy {
    /// `sources[0]` or `rules[2]`: the field that decided, as errors name it.
    pub fn field(&self) -> String {
        match self {
            PickedBy::Binding { index, .. } => format!("sources[{index}]"),
            PickedBy::Rule { index } => format!("rules[{index}]"),
        }
    }
}

/// The group `table`'s source bindings, then its address-only rules, pick
/// for `client` at `now_s` (unix seconds); `None` when neither does. A group
/// the table does not know is still returned (it routes like any unknown
/// lane); `Table::knows_group` tells.
pub fn resolve_client(table: &Table, client: IpAddr, now_s: u64) -> Option<ClientPick> {
    if let Some(b) = table.sources().lookup(client, now_s) {
        return Some(ClientPick { group: b.group, by: PickedBy::Binding { index: b.index, expires_at: b.expires_at } });
    }
    let (index, group) = table.rules().choose_by_address(client)?;
    Some(ClientPick { group, by: PickedBy::Rule { index } })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;

    #[test]
    fn bindings_then_address_rules() {
        let json = r#"{"groups":{"a":{}},"services":{},
          "sources":[{"cidr":"10.0.0.0/8","group":"a","expires_at":100},{"cidr":"10.1.0.0/16","group":"gone"}],
          "rules":[{"header":"x-user","values":["u"],"group":"a"},{"source_cidrs":["10.0.0.0/8","192.0.2.0/24"],"group":"r"}]}"#;
        let t = Table::from_json(json.as_bytes(), "base", &Limits::default()).unwrap();
        // (client, now, group, field)
        type Case<'a> = (&'a str, u64, Option<(&'a str, &'a str)>);
        let cases: &[Case] = &[
            ("10.1.0.9", 0, Some(("gone", "sources[1]"))),
            ("10.2.0.9", 99, Some(("a", "sources[0]"))),
            // expired: the address rule answers
            ("10.2.0.9", 100, Some(("r", "rules[1]"))),
            ("192.0.2.1", 0, Some(("r", "rules[1]"))),
            ("198.51.100.1", 0, None),
        ];
        for (ip, now, want) in cases {
            let got = resolve_client(&t, ip.parse().unwrap(), *now);
            let got = got.map(|p| (p.group.to_string(), p.by.field()));
            assert_eq!(got, want.map(|(g, f)| (g.to_owned(), f.to_owned())), "{ip} at {now}");
        }
        let pick = resolve_client(&t, "10.2.0.9".parse().unwrap(), 0).unwrap();
        assert_eq!(pick.by, PickedBy::Binding { index: 0, expires_at: Some(100) });
        assert!(!t.knows_group("gone"));
    }
}
