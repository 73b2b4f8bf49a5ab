//! The two schemas read with `json::Reader`: the plugin configuration
//! (`RawConfig`) and the route table (`RawTable`). Field lists are in schema
//! order: an unknown field's error lists them.
//!
//! Tables are strict (an unknown field is an error naming it) everywhere but
//! in one place: the filter reading a table a companion served, which may be
//! newer and send fields this version does not know (SPEC "Second round":
//! ignored and logged once); the reader's lenient mode skips them.
//!
//! A table's size limits are counted as it is read (`table`): the member
//! one past a limit ends the read with an error at its key, so a hostile
//! body costs no more than the limit (`Table::check` counts again, for
//! tables built in memory). Maps are collected and sorted once
//! (`ReadNames`): names in any order cost n log n.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::assist::{RawAssist, Side};
use crate::config::{CompanionSource, RawConfig, TableSource};
use crate::edge::{RawEdge, RawRule};
use crate::json::{Reader, Res};
use crate::propagation::RawPropagation;
use crate::table::{Limits, Mode, NameMap, RawGroup, RawService, RawSource, RawTable, ReadNames};

const U16: u64 = u16::MAX as u64;
const U32: u64 = u32::MAX as u64;
const USIZE: u64 = usize::MAX as u64;

const CONFIG_FIELDS: &[&str] = &[
    "group_header",
    "baggage_key",
    "cookie",
    "strict_header",
    "cluster_header",
    "target_header",
    "base_group",
    "workload_group",
    "namespace",
    "inject_baggage",
    "annotate_response",
    "failfast_status",
    "limits",
    "edge",
    "propagation_assist",
    "workload",
    "propagation",
    "table",
];

pub(crate) fn config(r: &mut Reader<'_>) -> Res<RawConfig> {
    let mut c = RawConfig::default();
    let mut seen = 0;
    r.object("struct RawConfig", &mut |r, key| {
        match r.field(key, CONFIG_FIELDS, &mut seen)? {
            Some(0) => c.group_header = r.string()?,
            Some(1) => c.baggage_key = r.opt_string()?,
            Some(2) => c.cookie = r.string()?,
            Some(3) => c.strict_header = r.string()?,
            Some(4) => c.cluster_header = r.opt_string()?,
            Some(5) => c.target_header = r.opt_string()?,
            Some(6) => c.base_group = r.string()?,
            Some(7) => c.workload_group = r.opt_string()?,
            Some(8) => c.namespace = r.opt_string()?,
            Some(9) => c.inject_baggage = r.boolean()?,
            Some(10) => c.annotate_response = r.boolean()?,
            Some(11) => c.failfast_status = r.uint(U16, "u16")? as u16,
            Some(12) => c.limits = limits(r)?,
            Some(13) => c.edge = if r.null_or()? { None } else { Some(edge(r)?) },
            Some(14) => c.propagation_assist = if r.null_or()? { None } else { Some(assist(r)?) },
            Some(15) => c.workload = r.opt_string()?,
            Some(16) => c.propagation = if r.null_or()? { None } else { Some(propagation(r)?) },
            Some(17) => c.table = if r.null_or()? { None } else { Some(table_source(r)?) },
            _ => {}
        }
        Ok(())
    })?;
    Ok(c)
}

const LIMIT_FIELDS: &[&str] = &[
    "max_services",
    "max_groups",
    "max_cluster_entries",
    "max_table_bytes",
    "max_fallback_depth",
    "max_baggage_bytes",
    "max_baggage_members",
];

fn limits(r: &mut Reader<'_>) -> Res<Limits> {
    let mut l = Limits::default();
    let mut seen = 0;
    r.object("struct Limits", &mut |r, key| {
        let Some(i) = r.field(key, LIMIT_FIELDS, &mut seen)? else { return Ok(()) };
        let value = r.uint(USIZE, "usize")? as usize;
        let slot = match i {
            0 => &mut l.max_services,
            1 => &mut l.max_groups,
            2 => &mut l.max_cluster_entries,
            3 => &mut l.max_table_bytes,
            4 => &mut l.max_fallback_depth,
            5 => &mut l.max_baggage_bytes,
            _ => &mut l.max_baggage_members,
        };
        *slot = value;
        Ok(())
    })?;
    Ok(l)
}

const EDGE_FIELDS: &[&str] = &["trusted_cidrs", "default_group", "rules", "runtime", "join_path"];

fn edge(r: &mut Reader<'_>) -> Res<RawEdge> {
    let mut e = RawEdge::default();
    let mut seen = 0;
    r.object("struct RawEdge", &mut |r, key| {
        match r.field(key, EDGE_FIELDS, &mut seen)? {
            Some(0) => e.trusted_cidrs = r.strings()?,
            Some(1) => e.default_group = r.opt_string()?,
            Some(2) => e.rules = rules(r)?,
            Some(3) => e.runtime = r.boolean()?,
            Some(4) => e.join_path = r.opt_string()?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(e)
}

const ASSIST_FIELDS: &[&str] = &["slots", "ttl_s", "side", "trace_headers", "heal"];
const SIDES: &[&str] = &["auto", "inbound", "outbound"];

fn assist(r: &mut Reader<'_>) -> Res<RawAssist> {
    let mut a = RawAssist::default();
    let mut seen = 0;
    r.object("struct RawAssist", &mut |r, key| {
        match r.field(key, ASSIST_FIELDS, &mut seen)? {
            Some(0) => a.slots = r.uint(U32, "u32")? as u32,
            Some(1) => a.ttl_s = r.uint(U32, "u32")? as u32,
            Some(2) => a.side = [Side::Auto, Side::Inbound, Side::Outbound][r.variant(SIDES)?.min(2)],
            Some(3) => a.trace_headers = r.strings()?,
            Some(4) => a.heal = r.boolean()?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(a)
}

const PROPAGATION_FIELDS: &[&str] = &["sample"];

fn propagation(r: &mut Reader<'_>) -> Res<RawPropagation> {
    let mut p = RawPropagation::default();
    let mut seen = 0;
    r.object("struct RawPropagation", &mut |r, key| {
        if r.field(key, PROPAGATION_FIELDS, &mut seen)?.is_some() {
            p.sample = r.uint(U32, "u32")? as u32;
        }
        Ok(())
    })?;
    Ok(p)
}

const SOURCE_VARIANTS: &[&str] = &["inline", "companion"];

/// `{"inline": {…}}` or `{"companion": {…}}`: exactly one.
fn table_source(r: &mut Reader<'_>) -> Res<TableSource> {
    let mut source = None;
    r.object("enum TableSource", &mut |r, key| {
        if source.is_some() {
            return Err(r.err("expected exactly one of `inline` or `companion`"));
        }
        // Strict even in a lenient parse: not a table field.
        source = Some(match SOURCE_VARIANTS.iter().position(|v| *v == key) {
            // Not counted while read: the configuration's own `limits` may
            // come after it; `Settings` checks the compiled table against them.
            Some(0) => TableSource::Inline(table(r, &UNCOUNTED)?),
            Some(_) => TableSource::Companion(companion(r)?),
            None => return Err(r.err_key(&crate::json::unknown_variant(&key, SOURCE_VARIANTS), false)),
        });
        Ok(())
    })?;
    source.ok_or_else(|| r.err("expected exactly one of `inline` or `companion`"))
}

const COMPANION_FIELDS: &[&str] = &["cluster", "authority", "path", "wait_s"];

fn companion(r: &mut Reader<'_>) -> Res<CompanionSource> {
    let (mut cluster, mut authority) = (None, None);
    let mut c = CompanionSource::with_defaults(String::new(), String::new());
    let mut seen = 0;
    r.object("struct CompanionSource", &mut |r, key| {
        match r.field(key, COMPANION_FIELDS, &mut seen)? {
            Some(0) => cluster = Some(r.string()?),
            Some(1) => authority = Some(r.string()?),
            Some(2) => c.path = r.string()?,
            Some(3) => c.wait_s = r.uint(U32, "u32")? as u32,
            _ => {}
        }
        Ok(())
    })?;
    c.cluster = cluster.ok_or_else(|| r.missing("cluster"))?;
    c.authority = authority.ok_or_else(|| r.missing("authority"))?;
    Ok(c)
}

#[cfg(feature = "deltas")]
use crate::delta::Members;
/// Built without deltas: none to read.
#[cfg(not(feature = "deltas"))]
pub(crate) enum Members {}

pub(crate) const TABLE_FIELDS: &[&str] = &["version", "epoch", "base_group", "groups", "services", "sources", "rules"];

/// A whole document that is a table (one copy of the reader's set-up for
/// every caller: tables, and deltas' parts), stopping at the first member
/// past one of `limits`' counts (see `table`).
#[inline(never)]
pub(crate) fn table_document(bytes: &[u8], lenient: bool, limits: &Limits) -> Res<(RawTable, Vec<String>)> {
    crate::json::document(bytes, lenient, &mut |r| table(r, limits))
}

/// Limits that never stop a read (only its counts are read).
const UNCOUNTED: Limits = Limits {
    max_services: usize::MAX,
    max_groups: usize::MAX,
    max_cluster_entries: usize::MAX,
    max_table_bytes: usize::MAX,
    max_fallback_depth: usize::MAX,
    max_baggage_bytes: usize::MAX,
    max_baggage_members: usize::MAX,
};

/// A table, stopping at the first member past one of `limits`' counts:
/// `max_services`, `max_groups` (the `groups` map; `Table::check` also
/// counts the names that only serve), `max_cluster_entries` (every
/// service's `clusters`; `Table::check` also counts a `{port}` cluster once
/// per port).
pub(crate) fn table(r: &mut Reader<'_>, limits: &Limits) -> Res<RawTable> {
    let mut t = RawTable::default();
    table_into(r, limits, &mut t, TABLE_FIELDS, None)?;
    Ok(t)
}

/// `table` into `t`, knowing `fields` (`TABLE_FIELDS`, the first of them:
/// a delta's `base` has only `version` and `epoch`, or a delta's own: its
/// top level is read as the table of its `version`, `epoch` and `set`):
/// the fields given are set; a delta's own members (an index in `fields`
/// from 7, or `None`: a key not known, skipped) go to `delta::member`;
/// returns the fields read, one bit per index in `fields`.
pub(crate) fn table_into(
    r: &mut Reader<'_>,
    limits: &Limits,
    t: &mut RawTable,
    fields: &[&str],
    mut delta: Option<&mut Members>,
) -> Res<u32> {
    let mut seen = 0;
    let mut cluster_entries = 0;
    r.object("a route table object", &mut |r, key| {
        match r.field(key, fields, &mut seen)? {
            Some(0) => t.version = r.uint(u64::MAX, "u64")?,
            Some(1) => t.epoch = r.opt_string()?,
            Some(2) => t.base_group = r.opt_string()?,
            Some(3) => {
                let (mut count, mut twice) = (0, Default::default());
                r.object("a map", &mut |r, name| {
                    r.count(&mut count, limits.max_groups, "groups")?;
                    let group = group(r)?;
                    t.groups.push_read(name, group, &mut twice);
                    Ok(())
                })?;
                sorted(r, t.groups.sort_read(twice))?;
            }
            Some(4) => t.services = services(r, limits, &mut cluster_entries)?,
            Some(5) => {
                r.array(&mut |r| {
                    t.sources.push(source(r)?);
                    Ok(())
                })?;
            }
            Some(6) => t.rules = rules(r)?,
            other => {
                if let Some(d) = delta.as_deref_mut() {
                    #[cfg(feature = "deltas")]
                    crate::delta::member(r, limits, d, other)?;
                    #[cfg(not(feature = "deltas"))]
                    {
                        let _ = other;
                        match *d {}
                    }
                }
            }
        }
        Ok(())
    })?;
    Ok(seen)
}

/// A table's `services` (or a delta's `set`); `cluster_entries` as in `service`.
pub(crate) fn services(r: &mut Reader<'_>, limits: &Limits, cluster_entries: &mut usize) -> Res<NameMap<RawService>> {
    let mut services = NameMap::new();
    let (mut count, mut twice) = (0, Default::default());
    r.object("a map", &mut |r, name| {
        r.count(&mut count, limits.max_services, "services")?;
        let service = service(r, cluster_entries, limits.max_cluster_entries)?;
        services.push_read(name, service, &mut twice);
        Ok(())
    })?;
    sorted(r, services.sort_read(twice))?;
    crate::table::shrink_names(&mut services);
    Ok(services)
}

/// A map read whole and sorted (`ReadNames`): a name given twice is
/// refused at the map's end.
fn sorted(r: &Reader<'_>, sort: Result<(), String>) -> Res<()> {
    sort.map_err(|name| r.duplicate_key(&name))
}

pub(crate) const GROUP_FIELDS: &[&str] = &["fallback", "mode", "description", "owner"];
const MODES: &[&str] = &["permissive", "strict"];

fn group(r: &mut Reader<'_>) -> Res<RawGroup> {
    let mut g = RawGroup::default();
    let mut seen = 0;
    r.object("a group object", &mut |r, key| {
        match r.field(key, GROUP_FIELDS, &mut seen)? {
            Some(0) => g.fallback = r.strings()?,
            Some(1) => g.mode = if r.variant(MODES)? == 0 { Mode::Permissive } else { Mode::Strict },
            Some(2) => g.description = r.opt_string()?,
            Some(3) => g.owner = r.opt_string()?,
            _ => {}
        }
        Ok(())
    })?;
    Ok(g)
}

pub(crate) const SERVICE_FIELDS: &[&str] = &["hosts", "clusters", "ports"];

/// A service; `cluster_entries` counts every service's clusters so far,
/// up to `max_cluster_entries`.
fn service(r: &mut Reader<'_>, cluster_entries: &mut usize, max_cluster_entries: usize) -> Res<RawService> {
    let (mut hosts, mut clusters) = (None, None);
    let mut ports = Vec::new();
    let mut seen = 0;
    r.object("a service object", &mut |r, key| {
        match r.field(key, SERVICE_FIELDS, &mut seen)? {
            Some(0) => hosts = Some(r.strings()?),
            Some(1) => {
                let (mut map, mut twice) = (NameMap::new(), Default::default());
                r.object("a map", &mut |r, group| {
                    r.count(cluster_entries, max_cluster_entries, "services.*.clusters")?;
                    let cluster = r.string()?;
                    map.push_read(group, cluster, &mut twice);
                    Ok(())
                })?;
                sorted(r, map.sort_read(twice))?;
                // Spare room in one map per service adds up in a large table.
                crate::table::shrink_names(&mut map);
                clusters = Some(map);
            }
            Some(2) => {
                r.array(&mut |r| {
                    ports.push(r.uint(U16, "u16")? as u16);
                    Ok(())
                })?;
            }
            _ => {}
        }
        Ok(())
    })?;
    Ok(RawService {
        hosts: hosts.ok_or_else(|| r.missing("hosts"))?,
        clusters: clusters.ok_or_else(|| r.missing("clusters"))?,
        ports,
    })
}

pub(crate) const SOURCE_FIELDS: &[&str] = &["cidr", "group", "expires_at"];

fn source(r: &mut Reader<'_>) -> Res<RawSource> {
    let (mut cidr, mut group, mut expires_at) = (None, None, None);
    let mut seen = 0;
    r.object("a source binding object", &mut |r, key| {
        match r.field(key, SOURCE_FIELDS, &mut seen)? {
            Some(0) => cidr = Some(r.string()?),
            Some(1) => group = Some(r.string()?),
            Some(2) => expires_at = if r.null_or()? { None } else { Some(r.uint(u64::MAX, "u64")?) },
            _ => {}
        }
        Ok(())
    })?;
    Ok(RawSource {
        cidr: cidr.ok_or_else(|| r.missing("cidr"))?,
        group: group.ok_or_else(|| r.missing("group"))?,
        expires_at,
    })
}

pub(crate) const RULE_FIELDS: &[&str] = &[
    "header",
    "cookie",
    "query",
    "values",
    "prefix",
    "regex",
    "source_cidrs",
    "percent",
    "hash_header",
    "group",
    "group_from_value",
];

fn rules(r: &mut Reader<'_>) -> Res<Vec<RawRule>> {
    let mut out = Vec::new();
    r.array(&mut |r| {
        out.push(rule(r)?);
        Ok(())
    })?;
    Ok(out)
}

fn rule(r: &mut Reader<'_>) -> Res<RawRule> {
    let mut rule = RawRule::default();
    let mut seen = 0;
    r.object("a rule object", &mut |r, key| {
        let Some(i) = r.field(key, RULE_FIELDS, &mut seen)? else { return Ok(()) };
        let text = match i {
            0 => &mut rule.header,
            1 => &mut rule.cookie,
            2 => &mut rule.query,
            4 => &mut rule.prefix,
            5 => &mut rule.regex,
            8 => &mut rule.hash_header,
            9 => &mut rule.group,
            3 | 6 => {
                let list = if r.null_or()? { None } else { Some(r.strings()?) };
                *(if i == 3 { &mut rule.values } else { &mut rule.source_cidrs }) = list;
                return Ok(());
            }
            7 => {
                rule.percent = if r.null_or()? { None } else { Some(r.uint(U32, "u32")? as u32) };
                return Ok(());
            }
            _ => {
                rule.group_from_value = r.boolean()?;
                return Ok(());
            }
        };
        *text = r.opt_string()?;
        Ok(())
    })?;
    Ok(rule)
}

/// Every object of the two schemas with the field names its reader accepts:
/// the very lists the functions above match keys against. Named as the
/// headings of `docs/configuration.md` name them (`config.` the plugin
/// configuration, `table.` the route table); `core/tests/docs_fields.rs`
/// checks every name is documented there and every list here is in this one.
pub const SCHEMA_OBJECTS: &[(&str, &[&str])] = &[
    ("config", CONFIG_FIELDS),
    ("config.limits", LIMIT_FIELDS),
    ("config.edge", EDGE_FIELDS),
    ("config.edge.rules[]", RULE_FIELDS),
    ("config.propagation_assist", ASSIST_FIELDS),
    ("config.propagation", PROPAGATION_FIELDS),
    ("config.table", SOURCE_VARIANTS),
    ("config.table.companion", COMPANION_FIELDS),
    ("table", TABLE_FIELDS),
    ("table.groups.<group>", GROUP_FIELDS),
    ("table.services.<service>", SERVICE_FIELDS),
    ("table.sources[]", SOURCE_FIELDS),
    ("table.rules[]", RULE_FIELDS),
];

/// The fields that take one of a fixed set of strings: (object, field, values).
pub const SCHEMA_VALUES: &[(&str, &str, &[&str])] =
    &[("config.propagation_assist", "side", SIDES), ("table.groups.<group>", "mode", MODES)];
