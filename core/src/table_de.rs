//! Deserialising the table schema, strict or lenient.
//!
//! Tables are strict (an unknown field is an error naming it) everywhere but
//! in one place: the filter reading a table served by a companion, which may
//! be newer and send fields this version does not know (SPEC "Second round":
//! ignored and logged once). One hand-written visitor serves both modes, so
//! the wasm carries one deserialiser per type, not two; the mode is a
//! per-thread switch set around a lenient parse (`collect_unknown`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::table::{Mode, RawGroup, RawService, RawTable};

thread_local! {
    /// `Some` while a lenient parse runs: the unknown field names seen.
    static UNKNOWN: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Runs `parse` with unknown table fields skipped; returns what it returned
/// and the names of the fields skipped, in order.
pub fn collect_unknown<R>(parse: impl FnOnce() -> R) -> (R, Vec<String>) {
    let previous = UNKNOWN.with(|u| u.replace(Some(Vec::new())));
    let result = parse();
    let unknown = UNKNOWN.with(|u| u.replace(previous)).unwrap_or_default();
    (result, unknown)
}

/// A field name of a schema whose names are `expected`: `Some(name)` for a
/// known one; for an unknown one, `None` in a lenient parse (noted) and an
/// error otherwise. Decided while the key is read, so the error's path names
/// the field.
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
        if let Some(known) = self.0.iter().find(|f| **f == key) {
            return Ok(Some(known));
        }
        let lenient = UNKNOWN.with(|u| match u.borrow_mut().as_mut() {
            Some(list) => {
                list.push(key.to_owned());
                true
            }
            None => false,
        });
        if lenient {
            Ok(None)
        } else {
            Err(E::unknown_field(key, self.0))
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

const TABLE_FIELDS: &[&str] = &["version", "epoch", "base_group", "groups", "services"];
const GROUP_FIELDS: &[&str] = &["fallback", "mode"];
const SERVICE_FIELDS: &[&str] = &["hosts", "clusters"];

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
                while let Some(key) = map.next_key_seed(Field(TABLE_FIELDS))? {
                    match key {
                        Some("version") => once(&mut version, map.next_value::<u64>()?, "version")?,
                        Some("epoch") => once(&mut epoch, map.next_value::<Option<String>>()?, "epoch")?,
                        Some("base_group") => once(&mut base_group, map.next_value::<Option<String>>()?, "base_group")?,
                        Some("groups") => once(&mut groups, map.next_value::<BTreeMap<String, RawGroup>>()?, "groups")?,
                        Some("services") => {
                            once(&mut services, map.next_value::<BTreeMap<String, RawService>>()?, "services")?
                        }
                        _ => map.next_value::<IgnoredAny>().map(drop)?,
                    }
                }
                Ok(RawTable {
                    version: version.unwrap_or_default(),
                    epoch: epoch.flatten(),
                    base_group: base_group.flatten(),
                    groups: groups.unwrap_or_default(),
                    services: services.unwrap_or_default(),
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
                let (mut fallback, mut mode) = (None, None);
                while let Some(key) = map.next_key_seed(Field(GROUP_FIELDS))? {
                    match key {
                        Some("fallback") => once(&mut fallback, map.next_value::<Vec<String>>()?, "fallback")?,
                        Some("mode") => once(&mut mode, map.next_value::<Mode>()?, "mode")?,
                        _ => map.next_value::<IgnoredAny>().map(drop)?,
                    }
                }
                Ok(RawGroup { fallback: fallback.unwrap_or_default(), mode: mode.unwrap_or_default() })
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
                let (mut hosts, mut clusters) = (None, None);
                while let Some(key) = map.next_key_seed(Field(SERVICE_FIELDS))? {
                    match key {
                        Some("hosts") => once(&mut hosts, map.next_value::<Vec<String>>()?, "hosts")?,
                        Some("clusters") => {
                            once(&mut clusters, map.next_value::<BTreeMap<String, String>>()?, "clusters")?
                        }
                        _ => map.next_value::<IgnoredAny>().map(drop)?,
                    }
                }
                Ok(RawService {
                    hosts: hosts.ok_or_else(|| de::Error::missing_field("hosts"))?,
                    clusters: clusters.ok_or_else(|| de::Error::missing_field("clusters"))?,
                })
            }
        }
        d.deserialize_map(V)
    }
}
