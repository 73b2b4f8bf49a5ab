//! Table deltas (SPEC "Delivery to many proxies"): what changed between two
//! tables a companion published, `{"base": {"version", "epoch"}, "version",
//! "epoch", "set", "remove", "replace"}`.
//!
//! A delta applies only onto exactly its base, and its result is validated
//! as a whole table is (`apply`). Its top level and `base` are strict (an
//! unknown key refuses it: the client then fetches the whole table); inside
//! `set` values and `replace` a newer companion's fields are skipped, as in
//! a whole table from a companion. `splice` makes the whole table's JSON
//! from the base's and the delta's, copying members as written, so a reader
//! of the spliced JSON gets exactly the table `apply` makes.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::cat;
use crate::epoch::Stamp;
use crate::error::TableError;
use crate::json::document;
use crate::read;
use crate::table::{Limits, RawTable, Table};

/// The `Content-Type` of a delta answer.
pub const DELTA_CONTENT_TYPE: &str = "application/vnd.isogroup.delta.v1+json";

const DELTA_FIELDS: &[&str] = &["base", "version", "epoch", "set", "remove", "replace"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawDelta {
    pub base_version: u64,
    pub base_epoch: Option<String>,
    /// The new table's `version`, `epoch`, `set` (as `services`) and the
    /// fields `replace` names (the others left at their defaults).
    pub changes: RawTable,
    /// In name order, each once.
    pub remove: Vec<String>,
    /// The members of `replace` (`base_group`, `groups`, `sources`,
    /// `rules`, or a newer companion's), by name.
    replaced: Vec<Member>,
}

/// A parsed delta, and the names of the fields skipped inside `set` values
/// and `replace` (for the caller to log).
#[derive(Debug, Clone)]
pub struct Parsed {
    pub delta: RawDelta,
    pub unknown: Vec<String>,
}

fn refused(path: &str, message: &str) -> TableError {
    TableError::Json { path: path.to_owned(), message: message.to_owned() }
}

impl RawDelta {
    /// Parses (not yet applies) a delta, refusing one over `max_table_bytes`.
    /// The members are read as written (`members`), then the changes as one
    /// table: `{"version", "epoch", "services": <set>, <replace members>}`,
    /// with the table reader (so a problem inside is named as in a table).
    pub fn from_json(bytes: &[u8], limits: &Limits) -> Result<Parsed, TableError> {
        if bytes.len() > limits.max_table_bytes {
            return Err(TableError::TooManyBytes { field: "delta", size: bytes.len(), limit: limits.max_table_bytes });
        }
        let top = members(bytes)?;
        for (i, (name, _, _)) in top.iter().enumerate() {
            if !DELTA_FIELDS.contains(&name.as_str()) || top.iter().take(i).any(|m| m.0 == *name) {
                return Err(refused(name, "unknown field or given twice"));
            }
        }
        let field = |name: &str| find(&top, bytes, name);
        let (Some(base_json), Some(version)) = (field("base"), field("version")) else {
            return Err(refused("(document)", "missing field `base` or `version`"));
        };
        // Strict: a base with another member is not a base this filter knows.
        let base_members = members(base_json)?;
        if base_members.iter().any(|m| m.0 != "version" && m.0 != "epoch") {
            return Err(refused("base", "unknown field"));
        }
        let (base, _) = read::table_document(base_json, false, limits)?;
        let replace_json = value(&top, bytes, "replace");
        let replaced = members(replace_json)?;
        let mut doc = Vec::with_capacity(bytes.len() + 32);
        doc.extend_from_slice(b"{\"version\":");
        doc.extend_from_slice(version);
        if let Some(epoch) = field("epoch") {
            doc.extend_from_slice(b",\"epoch\":");
            doc.extend_from_slice(epoch);
        }
        doc.extend_from_slice(b",\"services\":");
        doc.extend_from_slice(value(&top, bytes, "set"));
        for m in &replaced {
            if matches!(m.0.as_str(), "version" | "epoch" | "services") {
                return Err(refused(&cat!("replace.", m.0), "not replaced whole (see the delta's top level)"));
            }
            push_member(&mut doc, replace_json, m);
        }
        doc.push(b'}');
        let (changes, unknown) = read::table_document(&doc, true, limits)?;
        let remove = match field("remove") {
            Some(json) => document(json, false, &mut |r| r.strings())?.0,
            None => Vec::new(),
        };
        // `splice` binary searches it.
        if remove.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err(refused("remove", "expected service names in order, each once"));
        }
        let delta = RawDelta { base_version: base.version, base_epoch: base.epoch, changes, remove, replaced };
        Ok(Parsed { delta, unknown })
    }

    /// Whether this delta applies onto a table stamped (`epoch`, `version`).
    pub fn has_base(&self, version: u64, epoch: Option<&str>) -> bool {
        self.base_version == version && self.base_epoch.as_deref() == epoch
    }

    fn replaces(&self, field: &str) -> bool {
        self.replaced.iter().any(|m| m.0 == field)
    }
}

/// The table `delta` makes of `raw`, compiled: refused when `raw` is not
/// exactly the delta's base (or the delta's version is not newer than its
/// base, or it removes a service `raw` does not have, or one it also sets),
/// or when the result is not a valid table (the first problem, as
/// `Table::compile` names it). Consumes `raw`: on a refusal the caller falls
/// back to the whole table anyway.
pub fn apply(
    mut raw: RawTable,
    delta: RawDelta,
    default_base: &str,
    limits: &Limits,
) -> Result<(RawTable, Table), TableError> {
    if !delta.has_base(raw.version, raw.epoch.as_deref()) {
        return Err(refused("base", "not the table held"));
    }
    let replaces =
        [delta.replaces("base_group"), delta.replaces("groups"), delta.replaces("sources"), delta.replaces("rules")];
    let new = delta.changes;
    let base = Stamp::new(delta.base_epoch.as_deref(), delta.base_version);
    if !Stamp::new(new.epoch.as_deref(), new.version).is_newer_than(&base) {
        return Err(refused("version", "not newer than the delta's base"));
    }
    for name in &delta.remove {
        if new.services.contains_key(name.as_str()) || raw.services.remove(name.as_str()).is_none() {
            return Err(refused("remove", "names a service the base does not have, or one also in `set`"));
        }
    }
    for (name, service) in new.services {
        raw.services.insert(name, service);
    }
    let [base_group, groups, sources, rules] = replaces;
    if base_group {
        raw.base_group = new.base_group;
    }
    if groups {
        raw.groups = new.groups;
    }
    if sources {
        raw.sources = new.sources;
    }
    if rules {
        raw.rules = new.rules;
    }
    raw.version = new.version;
    raw.epoch = new.epoch;
    let table = Table::compile(&raw, default_base, limits)?;
    Ok((raw, table))
}

/// A member of an object as written: (name, key, value), the key and
/// value as byte ranges of the document.
type Member = (String, Span, Span);

/// The members of the object `doc` is.
fn members(doc: &[u8]) -> Result<Vec<Member>, TableError> {
    let mut out = Vec::new();
    document(doc, true, &mut |r| {
        r.object("an object", &mut |r, name| {
            let key = r.key_span();
            let start = r.at();
            r.skip()?;
            out.push((name, key, (start, r.at())));
            Ok(())
        })
    })?;
    Ok(out)
}

/// The value of member `name`, as written.
#[inline(never)]
fn find<'d>(members: &[Member], doc: &'d [u8], name: &str) -> Option<&'d [u8]> {
    members.iter().find(|m| m.0 == name).map(|m| part(doc, m.2))
}

/// The value of member `name`, as written; `{}` when absent.
fn value<'d>(members: &[Member], doc: &'d [u8], name: &str) -> &'d [u8] {
    find(members, doc, name).unwrap_or(b"{}")
}

/// The whole table's JSON that `delta` (parsed from `delta_json`) makes of
/// `whole` (its base's JSON): the base's members as written, but for the
/// stamp, the services set or removed and the fields replaced, which come
/// from the delta as written. Refused over `max_table_bytes`.
pub fn splice(whole: &[u8], delta_json: &[u8], parsed: &Parsed, limits: &Limits) -> Result<Vec<u8>, TableError> {
    let delta = &parsed.delta;
    let (top, changes) = (members(whole)?, members(delta_json)?);
    let services_json = value(&top, whole, "services");
    let (set_json, replace_json) = (value(&changes, delta_json, "set"), value(&changes, delta_json, "replace"));
    let (services, set, replace) = (members(services_json)?, members(set_json)?, members(replace_json)?);
    let mut out = Vec::with_capacity(whole.len() + delta_json.len());
    let member = push_member;
    // Members are written each after a `,`: the first one's is a `{`.
    for m in changes.iter().filter(|m| m.0 == "version" || m.0 == "epoch") {
        member(&mut out, delta_json, m);
    }
    for m in &top {
        if !matches!(m.0.as_str(), "version" | "epoch" | "services") && !replace.iter().any(|r| r.0 == m.0) {
            member(&mut out, whole, m);
        }
    }
    for m in &replace {
        member(&mut out, replace_json, m);
    }
    out.extend_from_slice(b",\"services\":");
    let open = out.len();
    for m in &services {
        if !delta.changes.services.contains_key(m.0.as_str()) && delta.remove.binary_search(&m.0).is_err() {
            member(&mut out, services_json, m);
        }
    }
    for m in &set {
        member(&mut out, set_json, m);
    }
    if out.len() == open {
        out.push(b'{');
    }
    out.extend_from_slice(b"}}");
    for at in [0, open] {
        if let Some(byte) = out.get_mut(at) {
            *byte = b'{';
        }
    }
    if out.len() > limits.max_table_bytes {
        return Err(TableError::TooManyBytes { field: "table", size: out.len(), limit: limits.max_table_bytes });
    }
    Ok(out)
}

/// `,"key":value` as written in `doc`.
fn push_member(out: &mut Vec<u8>, doc: &[u8], (_, key, value): &Member) {
    out.push(b',');
    out.extend_from_slice(part(doc, *key));
    out.push(b':');
    out.extend_from_slice(part(doc, *value));
}

/// A value's bytes in its document: (start, end).
type Span = (usize, usize);

fn part(doc: &[u8], (start, end): Span) -> &[u8] {
    doc.get(start..end).unwrap_or_default()
}

#[cfg(test)]
mod tests;
