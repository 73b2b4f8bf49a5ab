//! The route table: its JSON schema (`RawTable`) and the immutable compiled
//! form (`Table`) that `decide` reads. Compiling validates everything once, so
//! the per-request path only does lookups.

#[allow(unused_imports)]
use crate::prelude::*;

/// The raw table's maps from names (groups, services, a service's
/// clusters): a sorted `Vec` (`VecMap`: a fraction of `BTreeMap`'s code in
/// the wasm), the map the filter ships with, in every build but one that
/// asks for `BTreeMap` (feature `btree-names`: the companion, which edits
/// tables in place). So core's tests and the fuzz targets read into the
/// shipped map whether or not `serde` is on. Both iterate in name order.
#[cfg(not(feature = "btree-names"))]
pub type NameMap<V> = crate::vec_map::VecMap<V>;
#[cfg(feature = "btree-names")]
pub type NameMap<V> = alloc::collections::BTreeMap<String, V>;

/// How the reader (`read.rs`) fills a `NameMap`: members added as they come
/// (`push_read`), then sorted once (`sort_read`), so names in any order cost
/// n log n; a name given twice is the `Err` of `sort_read`.
pub(crate) trait ReadNames<V> {
    /// What is noted between members: nothing for `VecMap` (its sort finds
    /// a name given twice), the first one given twice for `BTreeMap`.
    type Twice: Default;
    fn push_read(&mut self, name: String, value: V, twice: &mut Self::Twice);
    fn sort_read(&mut self, twice: Self::Twice) -> Result<(), String>;
}

impl<V> ReadNames<V> for crate::vec_map::VecMap<V> {
    type Twice = ();

    #[inline(always)]
    fn push_read(&mut self, name: String, value: V, _: &mut ()) {
        self.push(name, value);
    }

    fn sort_read(&mut self, _: ()) -> Result<(), String> {
        self.sort()
    }
}

#[cfg(feature = "btree-names")]
impl<V> ReadNames<V> for alloc::collections::BTreeMap<String, V> {
    type Twice = Option<String>;

    fn push_read(&mut self, name: String, value: V, twice: &mut Option<String>) {
        use alloc::collections::btree_map::Entry;
        match self.entry(name) {
            Entry::Vacant(e) => drop(e.insert(value)),
            Entry::Occupied(e) => drop(twice.get_or_insert_with(|| e.key().clone())),
        }
    }

    fn sort_read(&mut self, twice: Option<String>) -> Result<(), String> {
        twice.map_or(Ok(()), Err)
    }
}

/// Gives back a map's spare capacity (a `VecMap`'s; `BTreeMap` keeps none).
pub(crate) fn shrink_names<V>(_map: &mut NameMap<V>) {
    #[cfg(not(feature = "btree-names"))]
    _map.shrink_to_fit();
}

use crate::authority;
use crate::cidr::Cidr;
use crate::edge::{RawRule, Rules};
use crate::error::TableError;
use crate::group::{is_valid_group, GroupName};
use crate::json::Key;
use crate::sources::{Binding, Sources};
use crate::{cat, cat_to};

/// Longest group `description` and `owner`, in bytes.
pub const MAX_GROUP_TEXT: usize = 256;

/// Read by hand (`read.rs`): strict, or lenient for a companion's table
/// (`RawTable::from_companion_json`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RawTable {
    #[cfg_attr(feature = "serde", serde(default))]
    pub version: u64,
    /// `"<unix-ms>-<random>"`, owned by the store like the version (see
    /// `epoch`); tables are ordered by (epoch, version).
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub epoch: Option<String>,
    /// Defaults to the plugin's `base_group` (itself `base` by default).
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub base_group: Option<String>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub groups: NameMap<RawGroup>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub services: NameMap<RawService>,
    /// Source bindings: a client address range to a group (edge mode with
    /// `edge.runtime` only).
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Vec::is_empty"))]
    pub sources: Vec<RawSource>,
    /// Runtime rules, the `edge.rules` schema (edge mode with `edge.runtime`).
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Vec::is_empty"))]
    pub rules: Vec<RawRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RawGroup {
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Vec::is_empty"))]
    pub fallback: Vec<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Mode::is_permissive"))]
    pub mode: Mode,
    /// Free text for people, at most `MAX_GROUP_TEXT` bytes.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub description: Option<String>,
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub owner: Option<String>,
}

/// One source binding as written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RawSource {
    /// `192.0.2.7/32`, `2001:db8::/64` or a bare address; host bits zero.
    pub cidr: String,
    /// A group name; one the table does not know routes like any unknown lane.
    pub group: String,
    /// Unix seconds; absent: no expiry.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Option::is_none"))]
    pub expires_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "lowercase"))]
pub enum Mode {
    #[default]
    Permissive,
    Strict,
}

impl RawTable {
    /// Parses (not yet validates) a table, refusing one over `max_table_bytes`.
    pub fn from_json(bytes: &[u8], limits: &Limits) -> Result<RawTable, TableError> {
        if bytes.len() > limits.max_table_bytes {
            return Err(TableError::TooManyBytes { field: "table", size: bytes.len(), limit: limits.max_table_bytes });
        }
        let (raw, _) = crate::read::table_document(bytes, false, limits)?;
        Ok(raw)
    }

    /// Parses a table a companion served: fields this version does not know
    /// are skipped, and their names returned for the caller to log (SPEC:
    /// filters are upgraded before companions).
    pub fn from_companion_json(bytes: &[u8], limits: &Limits) -> Result<(RawTable, Vec<String>), TableError> {
        if bytes.len() > limits.max_table_bytes {
            return Err(TableError::TooManyBytes { field: "table", size: bytes.len(), limit: limits.max_table_bytes });
        }
        Ok(crate::read::table_document(bytes, true, limits)?)
    }
}

#[cfg(feature = "serde")]
impl Mode {
    fn is_permissive(&self) -> bool {
        *self == Mode::Permissive
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RawService {
    pub hosts: Vec<String>,
    pub clusters: NameMap<String>,
    /// The service's ports, the first its default; a cluster name with
    /// `{port}` takes the `:authority`'s port if listed, else the default.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "Vec::is_empty"))]
    pub ports: Vec<u16>,
}

/// Where a cluster name holds the port.
pub const PORT_PLACEHOLDER: &str = "{port}";

/// Where `{port}` starts in a cluster name (a byte search: smaller in the
/// wasm than `str::find`, and quick over names without a `{`).
fn port_placeholder(cluster: &str) -> Option<usize> {
    let b = cluster.as_bytes();
    let mut from = 0;
    while let Some(i) = b.get(from..)?.iter().position(|&c| c == b'{') {
        let at = from + i;
        if b.get(at..)?.starts_with(PORT_PLACEHOLDER.as_bytes()) {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// The port a `{port}` cluster is for: given, or read from the
/// `:authority` only when such a cluster is met (most never are).
#[derive(Debug, Clone, Copy)]
pub(crate) enum PortOf<'a> {
    Given(Option<u16>),
    Authority(&'a [u8]),
}

impl PortOf<'_> {
    fn get(self) -> Option<u16> {
        match self {
            PortOf::Given(p) => p,
            PortOf::Authority(a) => authority::port(a),
        }
    }
}

/// Size limits; a table over any of them is rejected whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields, default))]
pub struct Limits {
    pub max_services: usize,
    pub max_groups: usize,
    pub max_cluster_entries: usize,
    pub max_table_bytes: usize,
    pub max_fallback_depth: usize,
    /// A `baggage` value longer than this, or with more members, is not
    /// searched for the group (W3C baggage limits: 8192 bytes, 180 members).
    pub max_baggage_bytes: usize,
    pub max_baggage_members: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_services: 100_000,
            max_groups: 1_000,
            max_cluster_entries: 1_000_000,
            max_table_bytes: 64 << 20,
            max_fallback_depth: 8,
            max_baggage_bytes: 8192,
            max_baggage_members: 180,
        }
    }
}

/// One body for every empty table made (the reader's, a delta's two).
impl Default for RawTable {
    #[inline(never)]
    fn default() -> Self {
        RawTable {
            version: 0,
            epoch: None,
            base_group: None,
            groups: NameMap::new(),
            services: NameMap::new(),
            sources: Vec::new(),
            rules: Vec::new(),
        }
    }
}

pub type GroupId = u32;
pub type ServiceId = u32;

/// The compiled table. Immutable: a new version is compiled beside it and
/// swapped in whole.
#[derive(Debug)]
pub struct Table {
    version: u64,
    epoch: Option<Box<str>>,
    base: GroupId,
    group_names: Vec<Box<str>>,
    /// Keyed by bytes like `host_index`: one hash map type in the wasm.
    group_index: FxHashMap<Box<[u8]>, GroupId>,
    groups: Vec<CompiledGroup>,
    /// Every service name, host and cluster name, one after another: one
    /// allocation where a string each cost tens of thousands (and dlmalloc's
    /// overhead on each) in a large table.
    text: String,
    /// In name order (ids are given in name order): `service_by_name`
    /// binary searches, no name index.
    services: Vec<CompiledService>,
    /// Every service's clusters, service after service (`CompiledService::clusters`).
    clusters: Vec<(GroupId, Span)>,
    ported: Vec<Ported>,
    /// Keyed by bytes: the request path looks up without a UTF-8 check.
    host_index: HostIndex,
    /// Boxed: most tables have none, and `Table` sits in a config enum.
    sources: Box<Sources>,
    rules: Rules,
}

#[derive(Debug)]
struct CompiledGroup {
    strict: bool,
    /// The group itself, its fallbacks depth first (each once), then base.
    order: Box<[GroupId]>,
}

/// A string in `Table::text`: where it starts, how long it is.
#[derive(Debug, Clone, Copy, Default)]
struct Span {
    at: u32,
    len: u32,
}

#[derive(Debug)]
struct CompiledService {
    name: Span,
    /// Its range of `Table::clusters`, sorted by group id: a handful of
    /// entries, binary searched. A `{port}` cluster is there for the default
    /// port.
    clusters: (u32, u32),
    /// Its entry in `Table::ported`, or `NOT_PORTED` (most services): 4
    /// bytes here instead of two empty boxes.
    ported: u32,
}

const NOT_PORTED: u32 = u32::MAX;

/// What a service that lists ports has besides.
#[derive(Debug)]
struct Ported {
    /// As listed; the first is the default.
    ports: Box<[u16]>,
    /// The `{port}` clusters (a few; searched in order), each filled in for
    /// every port in `ports` order. Empty for most services: then one
    /// emptiness check is all the request path pays for ports.
    by_port: Box<[(GroupId, PortNames)]>,
}

/// One cluster name per port of a service.
type PortNames = Box<[Box<str>]>;

impl Table {
    /// Parses JSON bytes and compiles them; `default_base` is used when the
    /// table names no `base_group`.
    pub fn from_json(bytes: &[u8], default_base: &str, limits: &Limits) -> Result<Table, TableError> {
        Table::compile(&RawTable::from_json(bytes, limits)?, default_base, limits)
    }

    /// A companion's table: unknown fields skipped, their names returned;
    /// its rules kept only with `runtime_rules` (see `compile_for`).
    pub fn from_companion_json(
        bytes: &[u8],
        default_base: &str,
        limits: &Limits,
        runtime_rules: bool,
    ) -> Result<(Table, Vec<String>), TableError> {
        let (raw, unknown) = RawTable::from_companion_json(bytes, limits)?;
        Ok((Table::compile_for(&raw, default_base, limits, runtime_rules)?, unknown))
    }

    /// `from_companion_json`, freeing the JSON before compiling (a wasm VM's
    /// linear memory keeps its peak).
    pub fn from_companion_vec(
        bytes: Vec<u8>,
        default_base: &str,
        limits: &Limits,
        runtime_rules: bool,
    ) -> Result<(Table, Vec<String>), TableError> {
        let (raw, unknown) = RawTable::from_companion_json(&bytes, limits)?;
        drop(bytes);
        Ok((Table::compile_for(&raw, default_base, limits, runtime_rules)?, unknown))
    }

    /// Compiles a table; the first problem found rejects it.
    pub fn compile(raw: &RawTable, default_base: &str, limits: &Limits) -> Result<Table, TableError> {
        Table::compile_for(raw, default_base, limits, true)
    }

    /// `compile`, keeping the compiled `rules` only with `runtime_rules`
    /// (edge mode with `edge.runtime`, the one filter that runs them; SPEC
    /// "Runtime rules in sidecars"). Without, they are checked all the same
    /// (fields, limits, each regex within its compile budget) and an error
    /// rejects the table, but none is kept.
    pub fn compile_for(
        raw: &RawTable,
        default_base: &str,
        limits: &Limits,
        runtime_rules: bool,
    ) -> Result<Table, TableError> {
        let mut c = Compiler::new(raw, default_base, limits);
        c.runtime_rules = runtime_rules;
        // Later checks only append: a limit or name problem found here is
        // already the first, and an over-limit table costs no more work.
        if !c.errors.is_empty() {
            return Err(c.errors.swap_remove(0));
        }
        c.finish().map_err(|mut errors| errors.swap_remove(0))
    }

    /// Compiles a table, or lists every problem found (never an empty list):
    /// every limit exceeded, every bad name, every fallback rule broken,
    /// every cycle once, every over-deep chain, every service problem.
    pub fn check(raw: &RawTable, default_base: &str, limits: &Limits) -> Result<Table, Vec<TableError>> {
        Compiler::new(raw, default_base, limits).finish()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// The epoch as written in the table (not checked: a malformed one
    /// orders lowest, see `epoch::Stamp`).
    pub fn epoch(&self) -> Option<&str> {
        self.epoch.as_deref()
    }

    pub fn base(&self) -> GroupId {
        self.base
    }

    pub fn group_name(&self, id: GroupId) -> &str {
        self.group_names.get(id as usize).map_or("", |n| n)
    }

    pub fn group_id(&self, name: &str) -> Option<GroupId> {
        self.group_index.get(name.as_bytes()).copied()
    }

    /// `host` as `authority::with_host` hands it over (normalised).
    pub fn service_by_host(&self, host: &[u8]) -> Option<ServiceId> {
        self.host_index.find(&self.text, host)
    }

    pub fn service_by_name(&self, name: &str) -> Option<ServiceId> {
        let i = self.services.binary_search_by(|s| text_of(&self.text, s.name).cmp(name)).ok()?;
        Some(i as ServiceId)
    }

    pub fn service_name(&self, id: ServiceId) -> &str {
        self.services.get(id as usize).map_or("", |s| text_of(&self.text, s.name))
    }

    pub fn service_count(&self) -> usize {
        self.services.len()
    }

    pub fn group_count(&self) -> usize {
        self.group_names.len()
    }

    /// Every service name with its id, in id order.
    pub fn services(&self) -> impl Iterator<Item = (ServiceId, &str)> {
        self.services.iter().enumerate().map(|(i, s)| (i as ServiceId, text_of(&self.text, s.name)))
    }

    /// Every group name with its id, in id order.
    pub fn groups(&self) -> impl Iterator<Item = (GroupId, &str)> {
        self.group_names.iter().enumerate().map(|(i, g)| (i as GroupId, &**g))
    }

    pub(crate) fn is_strict(&self, group: GroupId) -> bool {
        self.groups.get(group as usize).is_some_and(|g| g.strict)
    }

    pub(crate) fn order(&self, group: GroupId) -> &[GroupId] {
        self.groups.get(group as usize).map_or(&[], |g| &g.order)
    }

    /// The cluster of `service` for `group` on `port` (a port the service
    /// does not list, or none, is its default port).
    pub(crate) fn cluster(&self, service: ServiceId, group: GroupId, port: PortOf<'_>) -> Option<&str> {
        let s = self.services.get(service as usize)?;
        let clusters = self.clusters.get(s.clusters.0 as usize..s.clusters.1 as usize)?;
        let i = clusters.binary_search_by_key(&group, |(g, _)| *g).ok()?;
        let name = text_of(&self.text, clusters.get(i)?.1);
        let Some(p) = self.ported.get(s.ported as usize).filter(|p| !p.by_port.is_empty()) else {
            return Some(name);
        };
        match p.by_port.iter().find(|(g, _)| *g == group) {
            Some((_, names)) => {
                let at = port.get().and_then(|port| p.ports.iter().position(|&q| q == port)).unwrap_or(0);
                names.get(at).map(|n| &**n)
            }
            None => Some(name),
        }
    }

    /// A service's ports as listed (the first is its default).
    pub fn ports(&self, service: ServiceId) -> &[u16] {
        let s = self.services.get(service as usize);
        s.and_then(|s| self.ported.get(s.ported as usize)).map_or(&[], |p| &p.ports)
    }

    /// Whether `name` is a group this table knows: in `groups`, a key of
    /// some service's `clusters`, or the base group.
    pub fn knows_group(&self, name: &str) -> bool {
        self.group_index.contains_key(name.as_bytes())
    }

    /// The source bindings, compiled for longest-prefix lookup.
    pub fn sources(&self) -> &Sources {
        &self.sources
    }

    /// The table's runtime rules, compiled.
    pub fn rules(&self) -> &Rules {
        &self.rules
    }
}

/// Validates and compiles one raw table. Every problem is collected (none
/// stops the others), so `check` can list them all; the compiled table is
/// only built when there are none.
struct Compiler<'r> {
    raw: &'r RawTable,
    limits: &'r Limits,
    base_name: &'r str,
    group_names: Vec<Box<str>>,
    group_index: FxHashMap<Box<[u8]>, GroupId>,
    errors: Vec<TableError>,
    /// Keep the compiled rules (`Table::compile_for`).
    runtime_rules: bool,
}

impl<'r> Compiler<'r> {
    fn new(raw: &'r RawTable, default_base: &'r str, limits: &'r Limits) -> Self {
        let base_name = raw.base_group.as_deref().unwrap_or(default_base);
        let mut c = Compiler {
            raw,
            limits,
            base_name,
            group_names: Vec::new(),
            group_index: FxHashMap::default(),
            errors: Vec::new(),
            runtime_rules: true,
        };
        if !is_valid_group(base_name.as_bytes()) {
            c.errors.push(TableError::InvalidGroupName { field: "base_group".into(), name: base_name.into() });
        }
        if raw.services.len() > limits.max_services {
            c.errors.push(TableError::TooMany {
                field: "services",
                count: raw.services.len(),
                limit: limits.max_services,
            });
        }
        // A `{port}` cluster is one name per port.
        let mut entries = 0usize;
        for s in raw.services.values() {
            entries += match s.ports.len() {
                // Without ports a `{port}` cluster is one name (and an error).
                0 | 1 => s.clusters.len(),
                n => s.clusters.values().map(|c| if port_placeholder(c).is_some() { n } else { 1 }).sum(),
            };
        }
        if entries > limits.max_cluster_entries {
            c.errors.push(TableError::TooMany {
                field: "services.*.clusters",
                count: entries,
                limit: limits.max_cluster_entries,
            });
        }
        // The base group is always id 0, even when its name is invalid (the
        // table is rejected then, but the other checks still run).
        c.intern(base_name);
        let mut name_errors = Vec::new();
        for name in raw.groups.keys() {
            if is_valid_group(name.as_bytes()) {
                c.intern(name);
            } else {
                name_errors
                    .push(TableError::InvalidGroupName { field: cat!("groups.", Key(name)), name: name.clone() });
            }
        }
        for (svc, s) in &raw.services {
            for group in s.clusters.keys() {
                if is_valid_group(group.as_bytes()) {
                    c.intern(group);
                } else {
                    name_errors.push(TableError::InvalidGroupName {
                        field: cat!("services.", Key(svc), ".clusters.", Key(group)),
                        name: group.clone(),
                    });
                }
            }
        }
        if c.group_names.len() > limits.max_groups {
            c.errors.push(TableError::TooMany {
                field: "groups",
                count: c.group_names.len(),
                limit: limits.max_groups,
            });
        }
        // `append`, not `extend`: a move of the elements, no IntoIter in the wasm.
        c.errors.append(&mut name_errors);
        c
    }

    fn intern(&mut self, name: &str) -> GroupId {
        if let Some(&id) = self.group_index.get(name.as_bytes()) {
            return id;
        }
        let id = self.group_names.len() as GroupId;
        self.group_names.push(name.into());
        self.group_index.insert(name.as_bytes().into(), id);
        id
    }

    fn finish(mut self) -> Result<Table, Vec<TableError>> {
        self.check_groups();
        let CompiledServices { text, services, clusters, ported, host_index } = self.compile_services();
        let sources = self.compile_sources();
        let rules = match Rules::compile("rules", &self.raw.rules, self.runtime_rules) {
            Ok(rules) => rules,
            Err((field, why)) => {
                self.errors.push(TableError::Invalid { field, why });
                Rules::default()
            }
        };
        if !self.errors.is_empty() {
            return Err(self.errors);
        }
        let groups = self.compile_groups();
        Ok(Table {
            version: self.raw.version,
            epoch: self.raw.epoch.as_deref().map(Into::into),
            base: 0,
            group_names: self.group_names,
            group_index: self.group_index,
            groups,
            text,
            services,
            clusters,
            ported,
            host_index,
            sources: Box::new(sources),
            rules,
        })
    }

    /// Source bindings: each range a network (host bits zero), each group a
    /// valid name (known or not: lanes come and go), no range twice.
    fn compile_sources(&mut self) -> Sources {
        let mut bindings = Vec::with_capacity(self.raw.sources.len());
        for (index, s) in self.raw.sources.iter().enumerate() {
            let cidr = Cidr::parse_network(&s.cidr).map_err(|why| TableError::Invalid {
                field: cat!("sources[", index, "].cidr"),
                why: cat!(crate::json::Quoted(&s.cidr), ": ", why),
            });
            let group = GroupName::new(s.group.as_bytes()).ok_or_else(|| TableError::InvalidGroupName {
                field: cat!("sources[", index, "].group"),
                name: s.group.clone(),
            });
            match (cidr, group) {
                (Ok(cidr), Ok(group)) => bindings.push(Binding { index, cidr, group, expires_at: s.expires_at }),
                (cidr, group) => {
                    if let Err(e) = cidr {
                        self.errors.push(e);
                    }
                    if let Err(e) = group {
                        self.errors.push(e);
                    }
                }
            }
        }
        match Sources::build(bindings) {
            Ok(sources) => sources,
            Err((first, again)) => {
                self.errors.push(TableError::Invalid {
                    field: cat!("sources[", again, "].cidr"),
                    why: cat!("the same range as sources[", first, "]"),
                });
                Sources::default()
            }
        }
    }

    /// The fallback rules: per group, then every cycle, then every chain
    /// over the depth limit.
    fn check_groups(&mut self) {
        let raw = self.raw;
        for (name, g) in &raw.groups {
            if name == self.base_name && !g.fallback.is_empty() {
                self.errors.push(TableError::BaseHasFallback { group: name.clone() });
            }
            if g.mode == Mode::Strict && !g.fallback.is_empty() {
                self.errors.push(TableError::StrictWithFallback { group: name.clone() });
            }
            for (field, text) in [("description", &g.description), ("owner", &g.owner)] {
                if let Some(text) = text.as_ref().filter(|t| t.len() > MAX_GROUP_TEXT) {
                    self.errors.push(TableError::Invalid {
                        field: cat!("groups.", Key(name), ".", field),
                        why: cat!(text.len(), " bytes, at most ", MAX_GROUP_TEXT),
                    });
                }
            }
            for f in &g.fallback {
                if !self.group_index.contains_key(f.as_bytes()) {
                    self.errors.push(TableError::UnknownFallback { group: name.clone(), fallback: f.clone() });
                }
            }
        }
        let (depths, mut cycles) = fallback_walk(raw);
        self.errors.append(&mut cycles);
        let limit = self.limits.max_fallback_depth;
        for name in raw.groups.keys() {
            match depths.get(name.as_str()) {
                Some(depth) if depth > limit => {
                    self.errors.push(TableError::FallbackTooDeep { group: name.clone(), depth, limit });
                }
                _ => {}
            }
        }
    }

    /// Each group's resolution order; only for a table without errors (no
    /// cycles, chains within the depth limit, so `visit` recurses little).
    fn compile_groups(&self) -> Vec<CompiledGroup> {
        // A loop, not `map(..).collect()`: one generic fold less in the wasm.
        let mut groups = Vec::with_capacity(self.group_names.len());
        for name in self.group_names.iter() {
            let strict = self.raw.groups.get(&**name).is_some_and(|g| g.mode == Mode::Strict);
            let mut order = Vec::new();
            self.visit(name, &mut order);
            let base = 0;
            if !order.contains(&base) {
                order.push(base);
            }
            groups.push(CompiledGroup { strict, order: order.into() });
        }
        groups
    }

    /// Depth-first resolution order, each group once.
    fn visit(&self, name: &str, order: &mut Vec<GroupId>) {
        let Some(&id) = self.group_index.get(name.as_bytes()) else {
            return;
        };
        if order.contains(&id) {
            return;
        }
        order.push(id);
        for f in self.raw.groups.get(name).map_or(&[][..], |g| &g.fallback) {
            self.visit(f, order);
        }
    }

    fn compile_services(&mut self) -> CompiledServices {
        let raw = self.raw;
        // Sized once, so building the table reallocates nothing (a wasm VM
        // keeps its peak). An upper bound: a normalised host is never
        // longer, a host equal to its service's name is stored once, and a
        // port is at most 5 digits where `{port}` is 6.
        let mut text_len = 0usize;
        let mut cluster_count = 0usize;
        let mut host_count = 0usize;
        for (name, s) in raw.services.iter() {
            text_len += name.len() + s.hosts.iter().map(String::len).sum::<usize>();
            text_len += s.clusters.values().map(String::len).sum::<usize>();
            cluster_count += s.clusters.len();
            host_count += s.hosts.len();
        }
        if u32::try_from(text_len).is_err() {
            self.errors.push(TableError::TooManyBytes { field: "services", size: text_len, limit: u32::MAX as usize });
            return CompiledServices::default();
        }
        let mut text = String::with_capacity(text_len);
        let mut all_clusters: Vec<(GroupId, Span)> = Vec::with_capacity(cluster_count);
        let mut services: Vec<CompiledService> = Vec::with_capacity(raw.services.len());
        let mut host_index = HostIndex::with_capacity(host_count);
        let mut ported = Vec::new();
        // A service's plain (not `{port}`) cluster names, in `clusters` order.
        let mut plain: Vec<Span> = Vec::new();
        for (id, (name, s)) in raw.services.iter().enumerate() {
            let id = id as ServiceId;
            if !is_valid_service(name) {
                self.errors.push(TableError::InvalidServiceName { service: name.clone() });
            }
            if s.hosts.is_empty() {
                self.errors.push(TableError::NoHosts { service: name.clone() });
            }
            let name_span = push_text(&mut text, name);
            // Cluster names before hosts: a host is often the tail of one
            // (Istio's `outbound|80|v2|reviews.default.svc.cluster.local`),
            // and then shares its bytes.
            plain.clear();
            for cluster in s.clusters.values() {
                let templated = port_placeholder(cluster).is_some();
                plain.push(if templated { Span::default() } else { push_text(&mut text, cluster) });
            }
            for host in &s.hosts {
                let norm = if host.as_bytes().iter().any(|&b| b == b'/' || b == b'*') {
                    Err("a host has no '/' and no wildcard")
                } else {
                    authority::normalize_owned(host).ok_or("empty, too long, or not printable ASCII")
                };
                let norm = match norm {
                    Ok(n) => n,
                    Err(why) => {
                        self.errors.push(TableError::InvalidHost { service: name.clone(), host: host.clone(), why });
                        continue;
                    }
                };
                match host_index.find(&text, norm.as_bytes()) {
                    Some(other) if other != id => {
                        let other = services.get(other as usize).map_or("", |s| text_of(&text, s.name)).to_owned();
                        self.errors.push(TableError::DuplicateHost {
                            service: name.clone(),
                            host: host.clone(),
                            other,
                        });
                    }
                    Some(_) => {}
                    None => {
                        // The short name of a service is usually its first host.
                        let tail = |&c: &Span| {
                            let at = (c.at + c.len).checked_sub(norm.len() as u32)?;
                            let span = Span { at, len: norm.len() as u32 };
                            (c.len as usize >= norm.len() && text_of(&text, span) == norm).then_some(span)
                        };
                        let span = if norm == *name {
                            name_span
                        } else {
                            plain.iter().find_map(tail).unwrap_or_else(|| push_text(&mut text, &norm))
                        };
                        host_index.insert(&text, span, id);
                    }
                }
            }
            if !s.clusters.contains_key(self.base_name) {
                self.errors.push(TableError::NoBaseCluster { service: name.clone(), base: self.base_name.to_owned() });
            }
            self.check_ports(name, &s.ports);
            let first = all_clusters.len();
            let mut by_port = Vec::new();
            for (k, (group, cluster)) in s.clusters.iter().enumerate() {
                let templated = port_placeholder(cluster);
                let checked = if templated.is_some() && s.ports.is_empty() {
                    Err("has {port} but the service lists no ports")
                } else {
                    check_cluster(cluster)
                };
                if let Err(why) = checked {
                    self.errors.push(TableError::InvalidCluster {
                        service: name.clone(),
                        group: group.clone(),
                        cluster: cluster.clone(),
                        why,
                    });
                }
                let Some(&g) = self.group_index.get(group.as_bytes()) else { continue };
                match templated {
                    // Formatted once here, so the request path only indexes.
                    Some(at) => {
                        // `get`, not `[..]`: str slicing links its panic message's
                        // char and range Debug (Unicode tables) into the wasm.
                        let (head, tail) = cluster.split_at_checked(at).unwrap_or((cluster, ""));
                        let tail = tail.get(PORT_PLACEHOLDER.len()..).unwrap_or("");
                        let mut names = Vec::with_capacity(s.ports.len());
                        for p in &s.ports {
                            let mut name = String::with_capacity(cluster.len());
                            name.push_str(head);
                            crate::json::push_u64(&mut name, u64::from(*p));
                            name.push_str(tail);
                            names.push(name.into_boxed_str());
                        }
                        let names: PortNames = names.into();
                        let default = names.first().map_or(cluster.as_str(), |n| n);
                        all_clusters.push((g, push_text(&mut text, default)));
                        by_port.push((g, names));
                    }
                    None => all_clusters.push((g, plain.get(k).copied().unwrap_or_default())),
                }
            }
            sort_by_group(all_clusters.get_mut(first..).unwrap_or_default());
            let ported = if s.ports.is_empty() && by_port.is_empty() {
                NOT_PORTED
            } else {
                ported.push(Ported { ports: s.ports.as_slice().into(), by_port: by_port.into() });
                ported.len() as u32 - 1
            };
            services.push(CompiledService {
                name: name_span,
                clusters: (first as u32, all_clusters.len() as u32),
                ported,
            });
        }
        // Shrinks in place: the bound counted hosts stored once or shared.
        text.shrink_to_fit();
        CompiledServices { text, services, clusters: all_clusters, ported, host_index }
    }
}

/// What `compile_services` builds, for `Table`.
#[derive(Default)]
struct CompiledServices {
    text: String,
    services: Vec<CompiledService>,
    clusters: Vec<(GroupId, Span)>,
    ported: Vec<Ported>,
    host_index: HostIndex,
}

/// Appends `s` to the table's text, returning where it is. The text is
/// sized within `u32` before anything is pushed.
fn push_text(text: &mut String, s: &str) -> Span {
    let at = text.len() as u32;
    text.push_str(s);
    Span { at, len: s.len() as u32 }
}

/// The string at `span` ("" for a span outside the text, which the
/// compiler never makes).
fn text_of(text: &str, span: Span) -> &str {
    let at = span.at as usize;
    text.get(at..at + span.len as usize).unwrap_or("")
}

/// `text_of` as bytes: no char boundary checks on the request path.
fn bytes_of(text: &str, span: Span) -> &[u8] {
    let at = span.at as usize;
    text.as_bytes().get(at..at + span.len as usize).unwrap_or_default()
}

/// Hosts to services: open addressing over spans of the table's text, so a
/// host costs 12 bytes and a slot, not an allocation and a hash map entry.
#[derive(Debug, Default)]
struct HostIndex {
    /// A power of two (or none), at most two thirds full: each 0 (empty)
    /// or 1 + an index into `hosts`. Linear probing.
    slots: Box<[u32]>,
    hosts: Vec<(Span, ServiceId)>,
}

impl HostIndex {
    fn with_capacity(hosts: usize) -> HostIndex {
        let slots = if hosts == 0 { 0 } else { (hosts + hosts / 2 + 1).next_power_of_two() };
        HostIndex { slots: vec![0; slots].into(), hosts: Vec::with_capacity(hosts) }
    }

    /// The first slot to look at for `host`.
    fn start(&self, host: &[u8]) -> usize {
        use core::hash::BuildHasher;
        crate::fx::FxBuildHasher.hash_one(host) as usize & (self.slots.len().wrapping_sub(1))
    }

    fn find(&self, text: &str, host: &[u8]) -> Option<ServiceId> {
        let mask = self.slots.len().checked_sub(1)?;
        let mut i = self.start(host);
        // Never full: an empty slot ends every probe.
        loop {
            let slot = *self.slots.get(i)?;
            let &(span, id) = self.hosts.get(slot.checked_sub(1)? as usize)?;
            if span.len as usize == host.len() && bytes_of(text, span) == host {
                return Some(id);
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds a host `find` did not find; `with_capacity` counted it.
    fn insert(&mut self, text: &str, span: Span, id: ServiceId) {
        let Some(mask) = self.slots.len().checked_sub(1) else { return };
        let mut i = self.start(text_of(text, span).as_bytes());
        while let Some(slot) = self.slots.get_mut(i) {
            if *slot == 0 {
                self.hosts.push((span, id));
                *slot = self.hosts.len() as u32;
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

impl Compiler<'_> {
    /// Ports: 1 to 65535, each once.
    fn check_ports(&mut self, service: &str, ports: &[u16]) {
        for (i, &p) in ports.iter().enumerate() {
            let why = if p == 0 {
                "0 is not a port"
            } else if ports.iter().take(i).any(|&q| q == p) {
                "listed twice"
            } else {
                continue;
            };
            self.errors.push(TableError::Invalid {
                field: cat!("services.", Key(service), ".ports[", i, "]"),
                why: why.into(),
            });
        }
    }
}

/// Longest cycle text written out in full; longer ones are shortened.
const CYCLE_SHOWN: usize = 8;

/// One depth-first walk over the fallback graph (groups in name order,
/// fallbacks in list order), with an explicit stack: a hostile table may
/// chain many groups. Returns each group's longest chain in edges, counted
/// without the walk's back edges (so it is a real chain even in a table with
/// cycles), and one error per back edge, each the cycle it closes, named
/// from the group where that cycle starts. Linear in the fallback entries.
fn fallback_walk(raw: &RawTable) -> (FallbackDepths<'_>, Vec<TableError>) {
    use WalkState as State;
    let fallbacks = |name: &str| -> &[String] { raw.groups.get(name).map_or(&[][..], |g| &g.fallback[..]) };
    // Every name the walk meets gets an id; the maps are keyed by bytes like
    // the table's indexes (one hash map type in the wasm).
    let mut ids = FallbackDepths { ids: FxHashMap::default(), names: Vec::new(), state: Vec::new() };
    ids.ids.reserve(raw.groups.len());
    // Back edges already reported, as (from id, to id) in 8 bytes.
    let mut back_edges: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
    let mut cycles = Vec::new();
    // (group id, next fallback to look at, longest chain below it so far)
    let mut stack: Vec<(usize, usize, usize)> = Vec::new();
    for root in raw.groups.keys() {
        let root = id_of(&mut ids, root.as_str());
        if !matches!(ids.state.get(root), Some(State::New)) {
            continue;
        }
        set(&mut ids.state, root, State::OnPath(0));
        stack.push((root, 0, 0));
        while let Some(&(id, next, deepest)) = stack.last() {
            let name = ids.names.get(id).copied().unwrap_or_default();
            let Some(f) = fallbacks(name).get(next).map(String::as_str) else {
                stack.pop();
                set(&mut ids.state, id, State::Done(deepest));
                if let Some(parent) = stack.last_mut() {
                    parent.2 = parent.2.max(deepest + 1);
                }
                continue;
            };
            if let Some(top) = stack.last_mut() {
                top.1 += 1;
            }
            let f_id = id_of(&mut ids, f);
            match ids.state.get(f_id).copied().unwrap_or(State::New) {
                State::New => {
                    set(&mut ids.state, f_id, State::OnPath(stack.len()));
                    stack.push((f_id, 0, 0));
                }
                State::Done(d) => {
                    if let Some(top) = stack.last_mut() {
                        top.2 = top.2.max(d + 1);
                    }
                }
                State::OnPath(start) => {
                    // The same edge listed twice closes the same cycle.
                    let edge = ((id as u64) << 32 | f_id as u64).to_le_bytes();
                    if back_edges.insert(Box::from(&edge[..]), 0).is_none() {
                        let path = stack.get(start..).unwrap_or_default();
                        let text = cycle_text(
                            path.iter().map(|(i, _, _)| ids.names.get(*i).copied().unwrap_or_default()),
                            path.len(),
                            f,
                        );
                        cycles.push(TableError::FallbackCycle { group: f.to_owned(), cycle: text });
                    }
                }
            }
        }
    }
    (ids, cycles)
}

/// `name`'s id in the walk, given on first sight.
fn id_of<'r>(ids: &mut FallbackDepths<'r>, name: &'r str) -> usize {
    let next = ids.names.len();
    let id = *ids.ids.entry(name.as_bytes().into()).or_insert(next as u32) as usize;
    if id == next {
        ids.names.push(name);
        ids.state.push(WalkState::New);
    }
    id
}

fn set<T>(v: &mut [T], i: usize, value: T) {
    if let Some(slot) = v.get_mut(i) {
        *slot = value;
    }
}

#[derive(Clone, Copy)]
enum WalkState {
    New,
    /// On the current path, at this stack index.
    OnPath(usize),
    Done(usize),
}

/// Each group's longest fallback chain, from `fallback_walk`.
struct FallbackDepths<'r> {
    ids: FxHashMap<Box<[u8]>, u32>,
    names: Vec<&'r str>,
    state: Vec<WalkState>,
}

impl FallbackDepths<'_> {
    /// In edges, without the walk's back edges; `None` for a group on a cycle.
    fn get(&self, name: &str) -> Option<usize> {
        let id = *self.ids.get(name.as_bytes())?;
        match self.state.get(id as usize)? {
            WalkState::Done(d) => Some(*d),
            _ => None,
        }
    }
}

/// Sorts by group id (ids are unique: no order to keep) with the raw
/// maps' heapsort (`vec_map::heap_sort`): O(k log k), in place, no second
/// copy of a sort in the wasm.
fn sort_by_group<T>(v: &mut [(GroupId, T)]) {
    crate::vec_map::heap_sort(&mut ByGroup(v));
}

struct ByGroup<'v, T>(&'v mut [(GroupId, T)]);

impl<T> crate::vec_map::Sortable for ByGroup<'_, T> {
    fn count(&self) -> usize {
        self.0.len()
    }

    fn less(&self, i: usize, j: usize) -> bool {
        let id = |k: usize| self.0.get(k).map_or(0, |e| e.0);
        id(i) < id(j)
    }

    fn swap_up(&mut self, i: usize, j: usize) {
        crate::vec_map::swap_up(self.0, i, j);
    }
}

/// `a -> b -> a`; a long cycle shows its first groups and how many more.
fn cycle_text<'a>(path: impl Iterator<Item = &'a str>, len: usize, start: &str) -> String {
    let mut text = String::new();
    for name in path.take(CYCLE_SHOWN) {
        text.push_str(name);
        text.push_str(" -> ");
    }
    if len > CYCLE_SHOWN {
        cat_to!(&mut text; "… (", len - CYCLE_SHOWN, " more) -> ");
    }
    text.push_str(start);
    text
}

/// Service names: lower-case DNS-ish (`reviews`, `reviews.default`).
pub fn is_valid_service(name: &str) -> bool {
    let b = name.as_bytes();
    let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    !b.is_empty()
        && b.len() <= 253
        && b.first().is_some_and(alnum)
        && b.last().is_some_and(alnum)
        && b.iter().all(|c| alnum(c) || *c == b'-' || *c == b'.')
}

/// A cluster name travels as a header value: printable ASCII, no spaces.
fn check_cluster(cluster: &str) -> Result<(), &'static str> {
    if cluster.is_empty() {
        return Err("empty");
    }
    if cluster.len() > 1024 {
        return Err("longer than 1024 bytes");
    }
    if !cluster.as_bytes().iter().all(|&b| b.is_ascii_graphic()) {
        return Err("only printable ASCII without spaces");
    }
    Ok(())
}

#[cfg(test)]
mod sort_tests {
    use super::{sort_by_group, GroupId};

    /// Against std's sort: empty, one, sorted, reversed, the base first or
    /// last, and every permutation of five ids.
    #[test]
    fn sorts_by_group_id() {
        let mut cases: Vec<Vec<GroupId>> =
            vec![vec![], vec![7], vec![0, 1, 2, 3], vec![9, 5, 3, 1, 0], vec![0, 4, 2, 9], vec![3, 1, 2, 0]];
        let mut perm = vec![0, 1, 2, 3, 4];
        // Heap's algorithm: all 120 orders.
        fn heap(k: usize, a: &mut Vec<GroupId>, out: &mut Vec<Vec<GroupId>>) {
            if k <= 1 {
                out.push(a.clone());
                return;
            }
            for i in 0..k {
                heap(k - 1, a, out);
                if k.is_multiple_of(2) {
                    a.swap(i, k - 1)
                } else {
                    a.swap(0, k - 1)
                }
            }
        }
        heap(5, &mut perm, &mut cases);
        assert_eq!(cases.len(), 6 + 120);
        for ids in cases {
            let mut v: Vec<(GroupId, Box<str>)> = ids.iter().map(|g| (*g, g.to_string().into())).collect();
            sort_by_group(&mut v);
            let mut want = ids.clone();
            want.sort_unstable();
            assert_eq!(v.iter().map(|e| e.0).collect::<Vec<_>>(), want, "{ids:?}");
            assert!(v.iter().all(|(g, name)| g.to_string() == **name), "{ids:?}: names travel with their ids");
        }
    }
}

#[cfg(test)]
mod text_tests {
    use super::*;

    /// Names, hosts and clusters read back from the shared text: hosts equal
    /// to a service name or the tail of a cluster share its bytes, and every
    /// lookup still finds exactly its own service.
    #[test]
    fn strings_share_the_text_and_read_back() {
        let t = Table::from_json(
            br#"{"services": {
                "a": {"hosts": ["a", "a.ns.svc", "A.Other."], "clusters": {"base": "out|80|base|a.ns.svc", "v2": "out|80|v2|a.ns.svc"}},
                "ab": {"hosts": ["ns.svc", "b"], "clusters": {"base": "x-{port}"}, "ports": [8080, 9090]},
                "c": {"hosts": ["c.ns.svc"], "clusters": {"base": "c"}}}}"#,
            "base",
            &Limits::default(),
        )
        .unwrap();
        let v2 = t.group_id("v2").unwrap();
        let cases: &[(&str, Option<&str>)] = &[
            ("a", Some("a")),
            ("a.ns.svc", Some("a")),
            ("a.other", Some("a")),
            ("ns.svc", Some("ab")),
            ("b", Some("ab")),
            ("c.ns.svc", Some("c")),
            ("c", None),
            ("svc", None),
            ("a.ns.sv", None),
            ("", None),
        ];
        for (host, want) in cases {
            let got = t.service_by_host(host.as_bytes()).map(|id| t.service_name(id));
            assert_eq!(got, *want, "{host}");
        }
        for (name, want) in [("a", Some(0)), ("ab", Some(1)), ("c", Some(2)), ("b", None), ("", None), ("d", None)] {
            assert_eq!(t.service_by_name(name), want, "{name}");
        }
        let cluster = |svc, g, port| t.cluster(t.service_by_name(svc).unwrap(), g, PortOf::Given(port));
        assert_eq!(cluster("a", 0, None), Some("out|80|base|a.ns.svc"));
        assert_eq!(cluster("a", v2, None), Some("out|80|v2|a.ns.svc"));
        assert_eq!(cluster("ab", 0, None), Some("x-8080"));
        assert_eq!(cluster("ab", 0, Some(9090)), Some("x-9090"));
        assert_eq!(cluster("ab", v2, None), None);
        assert_eq!(cluster("c", 0, Some(1)), Some("c"));
        assert_eq!(t.ports(1), &[8080, 9090]);
        assert_eq!(t.ports(0), &[] as &[u16]);
        // "a" (a host) and "a.ns.svc" (the tail of a cluster) are not
        // stored again; the `{port}` cluster's default is.
        assert_eq!(t.text, "aout|80|base|a.ns.svcout|80|v2|a.ns.svca.otherabns.svcbx-8080ccc.ns.svc");
    }

    #[test]
    fn a_duplicate_host_names_both_services() {
        let err = Table::from_json(
            br#"{"services": {"a": {"hosts": ["x.y"], "clusters": {"base": "q|x.y"}},
                              "b": {"hosts": ["X.Y"], "clusters": {"base": "b"}}}}"#,
            "base",
            &Limits::default(),
        )
        .unwrap_err()
        .to_string();
        assert_eq!(err, "services.b.hosts: host \"X.Y\" already belongs to service \"a\"");
    }
}
