//! serde `Deserialize` for the table schema (feature `serde`, for the
//! companion's own stores, e.g. one etcd key per service): strict, an unknown
//! field is an error naming it. The filter and `RawTable::from_json` use the
//! hand-written reader (`read.rs`) instead.

#[allow(unused_imports)]
use crate::prelude::*;

use alloc::collections::BTreeMap;
use core::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::edge::RawRule;
use crate::table::{Mode, RawGroup, RawService, RawSource, RawTable};

/// A field name of a schema whose names are `expected`: `Some(name)` for a
/// known one, an error naming an unknown one (decided while the key is read,
/// so the error's path names the field).
struct Field(&'static [&'static str]);

impl<'de> DeserializeSeed<'de> for Field {
    type Value = Option<&'static str>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Field {
    type Value = Option<&'static str>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }
    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        match self.0.iter().find(|f| **f == key) {
            Some(known) => Ok(Some(known)),
            None => Err(E::unknown_field(key, self.0)),
        }
    }
}

/// Stores `value` in `slot`, refusing a field given twice.
fn once<T, E: de::Error>(slot: &mut Option<T>, value: T, name: &'static str) -> Result<(), E> {
    if slot.is_some() {
        return Err(E::duplicate_field(name));
    }
    *slot = Some(value);
    Ok(())
}

// The schema's field names, one list per type, shared with the JSON reader.
use crate::read::{GROUP_FIELDS, RULE_FIELDS, SERVICE_FIELDS, SOURCE_FIELDS, TABLE_FIELDS};

impl<'de> Deserialize<'de> for RawTable {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawTable;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a route table object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawTable, A::Error> {
                let (mut version, mut epoch, mut base_group, mut groups, mut services) = (None, None, None, None, None);
                let (mut sources, mut rules) = (None, None);
                while let Some(key) = map.next_key_seed(Field(TABLE_FIELDS))? {
                    match key {
                        Some("version") => once(&mut version, map.next_value::<u64>()?, "version")?,
                        Some("epoch") => once(&mut epoch, map.next_value::<Option<String>>()?, "epoch")?,
                        Some("base_group") => once(&mut base_group, map.next_value::<Option<String>>()?, "base_group")?,
                        Some("groups") => once(&mut groups, map.next_value::<BTreeMap<String, RawGroup>>()?, "groups")?,
                        Some("services") => {
                            once(&mut services, map.next_value::<BTreeMap<String, RawService>>()?, "services")?
                        }
                        Some("sources") => once(&mut sources, map.next_value::<Vec<RawSource>>()?, "sources")?,
                        Some("rules") => once(&mut rules, map.next_value::<Vec<RawRule>>()?, "rules")?,
                        _ => map.next_value::<IgnoredAny>().map(drop)?,
                    }
                }
                Ok(RawTable {
                    version: version.unwrap_or_default(),
                    epoch: epoch.flatten(),
                    base_group: base_group.flatten(),
                    // serde's map (the last of a repeated key wins) into `NameMap`.
                    groups: groups.unwrap_or_default().into_iter().collect(),
                    services: services.unwrap_or_default().into_iter().collect(),
                    sources: sources.unwrap_or_default(),
                    rules: rules.unwrap_or_default(),
                })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for RawGroup {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawGroup;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a group object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawGroup, A::Error> {
                let (mut fallback, mut mode, mut description, mut owner) = (None, None, None, None);
                while let Some(key) = map.next_key_seed(Field(GROUP_FIELDS))? {
                    match key {
                        Some("fallback") => once(&mut fallback, map.next_value::<Vec<String>>()?, "fallback")?,
                        Some("mode") => once(&mut mode, map.next_value::<Mode>()?, "mode")?,
                        Some("description") => {
                            once(&mut description, map.next_value::<Option<String>>()?, "description")?
                        }
                        Some("owner") => once(&mut owner, map.next_value::<Option<String>>()?, "owner")?,
                        _ => map.next_value::<IgnoredAny>().map(drop)?,
                    }
                }
                Ok(RawGroup {
                    fallback: fallback.unwrap_or_default(),
                    mode: mode.unwrap_or_default(),
                    description: description.flatten(),
                    owner: owner.flatten(),
                })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for RawService {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawService;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a service object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawService, A::Error> {
                let (mut hosts, mut clusters, mut ports) = (None, None, None);
                while let Some(key) = map.next_key_seed(Field(SERVICE_FIELDS))? {
                    match key {
                        Some("hosts") => once(&mut hosts, map.next_value::<Vec<String>>()?, "hosts")?,
                        Some("clusters") => {
                            once(&mut clusters, map.next_value::<BTreeMap<String, String>>()?, "clusters")?
                        }
                        Some("ports") => once(&mut ports, map.next_value::<Vec<u16>>()?, "ports")?,
                        _ => map.next_value::<IgnoredAny>().map(drop)?,
                    }
                }
                Ok(RawService {
                    hosts: hosts.ok_or_else(|| de::Error::missing_field("hosts"))?,
                    clusters: clusters.ok_or_else(|| de::Error::missing_field("clusters"))?.into_iter().collect(),
                    ports: ports.unwrap_or_default(),
                })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for RawSource {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawSource;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a source binding object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawSource, A::Error> {
                let (mut cidr, mut group, mut expires_at) = (None, None, None);
                while let Some(key) = map.next_key_seed(Field(SOURCE_FIELDS))? {
                    match key {
                        Some("cidr") => once(&mut cidr, map.next_value::<String>()?, "cidr")?,
                        Some("group") => once(&mut group, map.next_value::<String>()?, "group")?,
                        Some("expires_at") => once(&mut expires_at, map.next_value::<Option<u64>>()?, "expires_at")?,
                        _ => map.next_value::<IgnoredAny>().map(drop)?,
                    }
                }
                Ok(RawSource {
                    cidr: cidr.ok_or_else(|| de::Error::missing_field("cidr"))?,
                    group: group.ok_or_else(|| de::Error::missing_field("group"))?,
                    expires_at: expires_at.flatten(),
                })
            }
        }
        d.deserialize_map(V)
    }
}

impl<'de> Deserialize<'de> for RawRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rule object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawRule, A::Error> {
                let mut r = RawRule::default();
                let mut seen = [false; RULE_FIELDS.len()];
                while let Some(key) = map.next_key_seed(Field(RULE_FIELDS))? {
                    let Some(key) = key else {
                        map.next_value::<IgnoredAny>()?;
                        continue;
                    };
                    if let Some(i) = RULE_FIELDS.iter().position(|f| *f == key) {
                        if core::mem::replace(&mut seen[i], true) {
                            return Err(de::Error::duplicate_field(key));
                        }
                    }
                    match key {
                        "header" => r.header = map.next_value()?,
                        "cookie" => r.cookie = map.next_value()?,
                        "query" => r.query = map.next_value()?,
                        "values" => r.values = map.next_value()?,
                        "prefix" => r.prefix = map.next_value()?,
                        "regex" => r.regex = map.next_value()?,
                        "source_cidrs" => r.source_cidrs = map.next_value()?,
                        "percent" => r.percent = map.next_value()?,
                        "hash_header" => r.hash_header = map.next_value()?,
                        "group" => r.group = map.next_value()?,
                        "group_from_value" => r.group_from_value = map.next_value()?,
                        _ => map.next_value::<IgnoredAny>().map(drop)?,
                    }
                }
                Ok(r)
            }
        }
        d.deserialize_map(V)
    }
}
