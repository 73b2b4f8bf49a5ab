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

use crate::epoch::Stamp;
use crate::error::TableError;
use crate::json::{document, Reader, Res};
use crate::read::{self, TABLE_FIELDS};
use crate::table::{Limits, NameMap, RawTable, ReadNames, Table};

/// The `Content-Type` of a delta answer.
pub const DELTA_CONTENT_TYPE: &str = "application/vnd.isogroup.delta.v1+json";

const DELTA_FIELDS: &[&str] = &["base", "version", "epoch", "set", "remove", "replace"];

/// Bytes of the delta's JSON: (start, end).
type Span = (usize, usize);

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawDelta {
    pub base_version: u64,
    pub base_epoch: Option<String>,
    /// The new table's `version`, `epoch`, `set` (as `services`) and the
    /// fields `replace` gives (the others left at their defaults).
    pub changes: RawTable,
    /// In name order, each once.
    pub remove: Vec<String>,
    /// The fields `replace` gives, one bit per `TABLE_FIELDS` index.
    replaced: u32,
    /// What `splice` copies as written: the `version` and `epoch` members,
    /// and the members inside `set` and inside `replace`.
    version_at: Span,
    epoch_at: Option<Span>,
    set_at: Span,
    replace_at: Span,
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
    /// One pass of the table reader: `set` is read as a table's `services`,
    /// `replace` as a table (so a problem inside is named as in a table).
    pub fn from_json(bytes: &[u8], limits: &Limits) -> Result<Parsed, TableError> {
        if bytes.len() > limits.max_table_bytes {
            return Err(TableError::TooManyBytes { field: "delta", size: bytes.len(), limit: limits.max_table_bytes });
        }
        let mut delta = RawDelta::default();
        // Read into `delta`: the reader's set-up is the one `splice` uses.
        let ((), unknown) = document(bytes, true, &mut |r| read_delta(r, limits, &mut delta))?;
        Ok(Parsed { delta, unknown })
    }

    /// Whether this delta applies onto a table stamped (`epoch`, `version`).
    pub fn has_base(&self, version: u64, epoch: Option<&str>) -> bool {
        self.base_version == version && self.base_epoch.as_deref() == epoch
    }
}

/// A key a strict object does not know (the delta's top level, `base`):
/// lenient reading skipped it, this refuses it.
fn unknown(r: &Reader<'_>) -> crate::json::JsonError {
    r.err_key("unknown field", true)
}

/// A delta object: strict at the top level and in `base`, lenient inside
/// `set` values and `replace`.
fn read_delta(r: &mut Reader<'_>, limits: &Limits, d: &mut RawDelta) -> Res<()> {
    let (mut seen, mut cluster_entries) = (0, 0);
    r.object("a delta object", &mut |r, key| {
        let at = r.key_span().0;
        match r.field(key, DELTA_FIELDS, &mut seen)? {
            Some(0) => {
                let mut seen = 0;
                r.object("a delta base", &mut |r, key| {
                    match r.field(key, TABLE_FIELDS.get(..2).unwrap_or_default(), &mut seen)? {
                        Some(0) => d.base_version = r.uint(u64::MAX, "u64")?,
                        Some(_) => d.base_epoch = r.opt_string()?,
                        None => return Err(unknown(r)),
                    }
                    Ok(())
                })?;
            }
            Some(1) => {
                d.changes.version = r.uint(u64::MAX, "u64")?;
                d.version_at = (at, r.end());
            }
            Some(2) => {
                d.changes.epoch = r.opt_string()?;
                d.epoch_at = Some((at, r.end()));
            }
            Some(3) => {
                let inside = r.at() + 1;
                d.changes.services = read::services(r, limits, &mut cluster_entries)?;
                d.set_at = (inside, r.end() - 1);
            }
            Some(4) => {
                d.remove = r.strings()?;
                // `patch` and `splice` binary search it.
                if d.remove.windows(2).any(|pair| pair[0] >= pair[1]) {
                    return Err(r.err("expected service names in order, each once"));
                }
            }
            Some(_) => {
                let inside = r.at() + 1;
                d.replaced = read::table_into(r, limits, &mut d.changes)?;
                // version, epoch, services: the delta's own members.
                if d.replaced & 0b1_0011 != 0 {
                    return Err(r.err("version, epoch and services are not replaced whole"));
                }
                d.replace_at = (inside, r.end() - 1);
            }
            None => return Err(unknown(r)),
        }
        Ok(())
    })?;
    if seen & 0b11 != 0b11 {
        return Err(r.missing(if seen & 1 == 0 { "base" } else { "version" }));
    }
    Ok(())
}

/// What a delta answer makes of the table its poller holds as read
/// (`onto`; `None`, nothing held as read, is refused as not its base):
/// parsed, spliced into `whole` (the base's JSON) when given, and patched,
/// not yet compiled; with the names of the fields skipped inside it (for
/// the caller to log). Both builds' pollers take a delta with this.
pub fn read_onto(
    onto: Option<RawTable>,
    delta_json: &[u8],
    limits: &Limits,
    whole: Option<&mut Vec<u8>>,
) -> Result<(RawTable, Vec<String>), TableError> {
    let raw = onto.ok_or_else(|| refused("base", "not the table held"))?;
    let parsed = RawDelta::from_json(delta_json, limits)?;
    if let Some(whole) = whole {
        *whole = splice(whole, delta_json, &parsed, limits)?;
    }
    Ok((patch(raw, parsed.delta)?, parsed.unknown))
}

/// The table `delta` makes of `raw`, compiled: refused when `raw` is not
/// exactly the delta's base (or the delta's version is not newer than its
/// base, or it removes a service `raw` does not have, or one it also sets),
/// or when the result is not a valid table (the first problem, as
/// `Table::compile` names it). Consumes `raw`: on a refusal the caller falls
/// back to the whole table anyway.
pub fn apply(
    raw: RawTable,
    delta: RawDelta,
    default_base: &str,
    limits: &Limits,
) -> Result<(RawTable, Table), TableError> {
    let raw = patch(raw, delta)?;
    let table = Table::compile(&raw, default_base, limits)?;
    Ok((raw, table))
}

/// `apply` without the compile: the raw table `delta` makes of `raw`, for a
/// caller that compiles it its own way (the filter, with or without rules).
pub fn patch(mut raw: RawTable, delta: RawDelta) -> Result<RawTable, TableError> {
    if !delta.has_base(raw.version, raw.epoch.as_deref()) {
        return Err(refused("base", "not the table held"));
    }
    let new = delta.changes;
    let base = Stamp::new(delta.base_epoch.as_deref(), delta.base_version);
    if !Stamp::new(new.epoch.as_deref(), new.version).is_newer_than(&base) {
        return Err(refused("version", "not newer than the delta's base"));
    }
    // The base's services but those set or removed, then those set: sorted
    // once (a name given twice cannot come of it).
    let (mut services, mut twice) = (NameMap::new(), Default::default());
    let mut removed = 0;
    for (name, service) in core::mem::take(&mut raw.services) {
        let set = new.services.contains_key(name.as_str());
        if delta.remove.binary_search(&name).is_ok() {
            removed += if set { delta.remove.len() + 1 } else { 1 };
        } else if !set {
            services.push_read(name, service, &mut twice);
        }
    }
    if removed != delta.remove.len() {
        return Err(refused("remove", "names a service the base does not have, or one also in `set`"));
    }
    for (name, service) in new.services {
        services.push_read(name, service, &mut twice);
    }
    services.sort_read(twice).map_err(|name| refused(&name, "set twice"))?;
    raw.services = services;
    let replaced = |field: usize| delta.replaced & (1 << field) != 0;
    if replaced(2) {
        raw.base_group = new.base_group;
    }
    if replaced(3) {
        raw.groups = new.groups;
    }
    if replaced(5) {
        raw.sources = new.sources;
    }
    if replaced(6) {
        raw.rules = new.rules;
    }
    raw.version = new.version;
    raw.epoch = new.epoch;
    Ok(raw)
}

/// The whole table's JSON that `delta` (parsed from `delta_json`) makes of
/// `whole` (its base's JSON): the base's members and services as written,
/// but for the stamp, the services set or removed and the fields replaced,
/// which come from the delta as written. Refused over `max_table_bytes`.
pub fn splice(whole: &[u8], delta_json: &[u8], parsed: &Parsed, limits: &Limits) -> Result<Vec<u8>, TableError> {
    let d = &parsed.delta;
    let mut out = Vec::with_capacity(whole.len() + delta_json.len());
    let mut services = Vec::new();
    out.push(b'{');
    out.extend_from_slice(part(delta_json, d.version_at));
    for at in d.epoch_at.into_iter().chain([d.replace_at]) {
        push_members(&mut out, part(delta_json, at));
    }
    document(whole, true, &mut |r| {
        r.object("a route table object", &mut |r, name| {
            let start = r.key_span().0;
            let field = TABLE_FIELDS.iter().position(|f| *f == name);
            if field == Some(4) {
                return r.object("a map", &mut |r, name| {
                    let start = r.key_span().0;
                    r.skip()?;
                    if !d.changes.services.contains_key(name.as_str()) && d.remove.binary_search(&name).is_err() {
                        push_members(&mut services, part(whole, (start, r.end())));
                    }
                    Ok(())
                });
            }
            r.skip()?;
            if !field.is_some_and(|i| i < 2 || d.replaced & (1 << i) != 0) {
                push_members(&mut out, part(whole, (start, r.end())));
            }
            Ok(())
        })
    })?;
    push_members(&mut services, part(delta_json, d.set_at));
    out.extend_from_slice(b",\"services\":{");
    // Each member came after a `,`: not the first.
    out.extend_from_slice(services.get(1..).unwrap_or_default());
    out.extend_from_slice(b"}}");
    if out.len() > limits.max_table_bytes {
        return Err(TableError::TooManyBytes { field: "table", size: out.len(), limit: limits.max_table_bytes });
    }
    Ok(out)
}

fn part(doc: &[u8], (start, end): Span) -> &[u8] {
    doc.get(start..end).unwrap_or_default()
}

/// `,` and `json` (members as written), unless there are none.
fn push_members(out: &mut Vec<u8>, json: &[u8]) {
    if !json.trim_ascii().is_empty() {
        out.push(b',');
        out.extend_from_slice(json);
    }
}

#[cfg(test)]
mod tests;
