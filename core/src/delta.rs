//! Table deltas (SPEC "Delivery to many proxies"): what changed between two
//! tables a companion published, `{"base": {"version", "epoch"}, "version",
//! "epoch", "set", "remove", "replace"}`.
//!
//! A delta applies only onto exactly its base, and its result is validated
//! as a whole table is (`apply`). Its top level and `base` are strict (an
//! unknown key refuses it: the client then fetches the whole table); inside
//! `set` values and `replace` a newer companion's fields are skipped, as in
//! a whole table from a companion. `catch_up` brings a table on through
//! deltas in order (the wasm build shares the last whole table and the
//! deltas after it, not a table spliced for each one).

#[allow(unused_imports)]
use crate::prelude::*;

use crate::epoch::{same, Held, Stamp};
use crate::error::TableError;
use crate::json::{document, Reader, Res};
use crate::read::{self, TABLE_FIELDS};
use crate::table::{Limits, NameMap, RawTable, ReadNames, Table};

/// The `Content-Type` of a delta answer.
pub const DELTA_CONTENT_TYPE: &str = "application/vnd.isogroup.delta.v1+json";

/// A delta's members, at the indexes of the table fields the table reader
/// reads them as (`version`, `epoch`, and `set` as `services`), its own
/// after those (`read::table_into` hands them to `member`). The table's
/// other places repeat `version`, which is found at its own index first:
/// no key reaches them.
const DELTA_FIELDS: &[&str] =
    &["version", "epoch", "version", "version", "set", "version", "version", "base", "remove", "replace"];

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawDelta {
    /// The new table's `version`, `epoch` and `set` (as `services`).
    pub changes: RawTable,
    /// `base`, `remove` and `replace`.
    pub own: Members,
}

/// A delta's own members, beside the table of its changes (`read::table_into`
/// hands them to `member`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Members {
    /// `base`'s `version` and `epoch`, and the fields `replace` gives (the
    /// others left at their defaults).
    pub base: RawTable,
    /// In name order, each once (else the patch is refused).
    pub remove: Vec<String>,
    /// The fields `replace` gives, one bit per `TABLE_FIELDS` index.
    replaced: u32,
}

/// A parsed delta, and the names of the fields skipped inside `set` values
/// and `replace` (for the caller to log).
#[derive(Debug, Clone)]
pub struct Parsed {
    pub delta: RawDelta,
    pub unknown: Vec<String>,
}

/// One body for every refusal that is not the reader's.
#[inline(never)]
fn refused((path, message): (&str, &str)) -> TableError {
    TableError::Json { path: path.to_owned(), message: message.to_owned() }
}

const NOT_HELD: (&str, &str) = ("base", "not the table held");

impl RawDelta {
    /// Parses (not yet applies) a delta, refusing one over `max_table_bytes`.
    /// One pass of the table reader: `base` is read as a table's `version`
    /// and `epoch`, `set` as a table's `services`, `replace` as a table (so
    /// a problem inside is named as in a table).
    pub fn from_json(bytes: &[u8], limits: &Limits) -> Result<Parsed, TableError> {
        if bytes.len() > limits.max_table_bytes {
            return Err(TableError::TooManyBytes { field: "delta", size: bytes.len(), limit: limits.max_table_bytes });
        }
        let mut delta = RawDelta::default();
        let ((), unknown) = document(bytes, true, &mut |r| read_delta(r, limits, &mut delta))?;
        Ok(Parsed { delta, unknown })
    }

    /// Whether this delta applies onto a table stamped (`epoch`, `version`).
    pub fn has_base(&self, version: u64, epoch: Option<&str>) -> bool {
        self.own.base.version == version && self.own.base.epoch.as_deref() == epoch
    }
}

/// A delta object: strict at the top level and in `base`, lenient inside
/// `set` values and `replace`. One pass of the table reader: the top level
/// as the table of the delta's `version`, `epoch` and `set`, its other
/// members through `member`.
fn read_delta(r: &mut Reader<'_>, limits: &Limits, d: &mut RawDelta) -> Res<()> {
    let seen = read::table_into(r, limits, &mut d.changes, DELTA_FIELDS, Some(&mut d.own))?;
    if seen & 0b1000_0001 != 0b1000_0001 {
        return Err(r.missing(if seen & 0b1000_0000 == 0 { "base" } else { "version" }));
    }
    Ok(())
}

/// One of a delta's own members (`DELTA_FIELDS` from 7; `None`: a key not
/// known), for `read::table_into`.
pub(crate) fn member(r: &mut Reader<'_>, limits: &Limits, d: &mut Members, member: Option<usize>) -> Res<()> {
    match member {
        Some(7) => {
            // Strict inside the lenient read: a key `base` does not know
            // refuses the delta.
            let lenient = r.unknown.take();
            let read = read::table_into(r, limits, &mut d.base, TABLE_FIELDS.get(..2).unwrap_or_default(), None);
            r.unknown = lenient;
            read?;
        }
        // In name order, each once: else `patch` refuses it.
        Some(8) => d.remove = r.strings()?,
        Some(_) => {
            d.replaced = read::table_into(r, limits, &mut d.base, TABLE_FIELDS, None)?;
            // version, epoch, services: the delta's own members.
            if d.replaced & 0b1_0011 != 0 {
                return Err(r.err("version, epoch and services are not replaced whole"));
            }
        }
        None => return Err(r.err_key("unknown field", true)),
    }
    Ok(())
}

/// What a delta answer makes of the table its poller holds as read
/// (`onto`; `None`, nothing held as read, is refused as not its base):
/// parsed and patched, not yet compiled; with the names of the fields
/// skipped inside it (for the caller to log). Both builds' pollers take a
/// delta with this.
pub fn read_onto(
    onto: Option<RawTable>,
    delta_json: &[u8],
    limits: &Limits,
) -> Result<(RawTable, Vec<String>), TableError> {
    let mut raw = onto.ok_or_else(not_held)?;
    let unknown = read_into(&mut raw, delta_json, limits)?;
    Ok((raw, unknown))
}

/// The refusal of a delta whose base is not the table held.
pub fn not_held() -> TableError {
    refused(NOT_HELD)
}

/// `read_onto` in place (`raw` left half made on a refusal): one body for
/// the poller's delta and each one a VM catches up with.
#[inline(never)]
pub fn read_into(raw: &mut RawTable, delta_json: &[u8], limits: &Limits) -> Result<Vec<String>, TableError> {
    if delta_json.len() > limits.max_table_bytes {
        return Err(TableError::TooManyBytes { field: "delta", size: delta_json.len(), limit: limits.max_table_bytes });
    }
    // A document as `json::document` reads one, without its generic shell.
    let (mut delta, mut r) = (RawDelta::default(), Reader::new(delta_json, true));
    let unknown = read_delta(&mut r, limits, &mut delta).and_then(|()| r.finish())?;
    patch_in(raw, &mut delta).map_err(refused)?;
    Ok(unknown)
}

/// Appends a delta's JSON (valid, so it holds no NUL), based on the table
/// `base`, to `deltas` as `catch_up` reads them: a NUL between two, each
/// after its base's stamp (`Held::encode`) and a newline (what a reader
/// skips by).
pub fn push_delta(deltas: &mut Vec<u8>, base: &Held, json: &[u8]) {
    if !deltas.is_empty() {
        deltas.push(0);
    }
    deltas.extend_from_slice(base.encode().as_bytes());
    deltas.push(b'\n');
    deltas.extend_from_slice(json);
}

/// `raw` brought on by `deltas` (`push_delta`'s, in the order published):
/// each one based on the table's version as it then stands is applied
/// (refused unless exactly onto its base, as `read_onto` refuses a delta),
/// any other skipped unread; a table that is the base of none comes out as
/// it went in. With the names of the fields skipped inside the last one
/// applied: the poller takes its delta through here too (one delta after
/// its base's stamp), and logs them.
pub fn catch_up(mut raw: RawTable, deltas: &[u8], limits: &Limits) -> Result<(RawTable, Vec<String>), TableError> {
    let (mut rest, mut unknown) = (deltas, Vec::new());
    while let Some((base, after)) = crate::text::split_byte(rest, b'\n') {
        let (json, after) = crate::text::split_byte(after, 0).unwrap_or((after, &[]));
        rest = after;
        // Its base's stamp, epoch and all: one based on this version of
        // another epoch (deltas read before a whole of a new epoch replaced
        // them) is not this table's.
        if Held::decode(base).is_some_and(|b| same((b.version, &b.epoch), (raw.version, &raw.epoch))) {
            unknown = read_into(&mut raw, json, limits)?;
        }
    }
    Ok((raw, unknown))
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
/// caller that compiles it its own way.
pub fn patch(mut raw: RawTable, mut delta: RawDelta) -> Result<RawTable, TableError> {
    patch_in(&mut raw, &mut delta).map_err(refused)?;
    Ok(raw)
}

/// `patch` in place, the parts of `d` it takes moved out of it; on a
/// refusal `raw` is left half made (the caller drops it).
fn patch_in(raw: &mut RawTable, d: &mut RawDelta) -> Result<(), (&'static str, &'static str)> {
    let (base, new) = (&d.own.base, &mut d.changes);
    if !same((base.version, &base.epoch), (raw.version, &raw.epoch)) {
        return Err(NOT_HELD);
    }
    if !Stamp::new(new.epoch.as_deref(), new.version).is_newer_than(&Stamp::new(base.epoch.as_deref(), base.version)) {
        return Err(("version", "not newer than the delta's base"));
    }
    // The base's services but those set or removed, then those set: sorted
    // once (a name given twice cannot come of it).
    let (mut services, mut twice) = (NameMap::new(), Default::default());
    const BAD_REMOVE: (&str, &str) =
        ("remove", "names a service the base does not have, or one in `set`, or out of order");
    let mut base = core::mem::take(&mut raw.services);
    // The base's names from the last: both in name order, the last name
    // left to remove is this one or an earlier one (one the base lacks, or
    // out of order or given twice, is never reached).
    while let Some((name, service)) = base.pop_last() {
        let set = new.services.contains_key(name.as_str());
        if d.own.remove.last().is_some_and(|last| *last == name) {
            if set {
                return Err(BAD_REMOVE);
            }
            d.own.remove.pop();
        } else if !set {
            services.push_read(name, service, &mut twice);
        }
    }
    services.append(&mut new.services);
    if !d.own.remove.is_empty() || services.sort_read(twice).is_err() {
        return Err(BAD_REMOVE);
    }
    raw.services = services;
    // Swapped, not assigned: the base's go with the delta (`replace`'s
    // fields are read into its `base`).
    let replaced = |field: usize| d.own.replaced & (1 << field) != 0;
    if replaced(2) {
        core::mem::swap(&mut raw.base_group, &mut d.own.base.base_group);
    }
    if replaced(3) {
        core::mem::swap(&mut raw.groups, &mut d.own.base.groups);
    }
    if replaced(5) {
        core::mem::swap(&mut raw.sources, &mut d.own.base.sources);
    }
    if replaced(6) {
        core::mem::swap(&mut raw.rules, &mut d.own.base.rules);
    }
    raw.version = new.version;
    core::mem::swap(&mut raw.epoch, &mut new.epoch);
    Ok(())
}

#[cfg(test)]
mod tests;
