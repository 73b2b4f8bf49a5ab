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
use crate::edge::RawRule;
use crate::epoch::Stamp;
use crate::error::TableError;
use crate::json::{document, Reader, Res};
use crate::read;
use crate::table::{Limits, NameMap, RawGroup, RawService, RawSource, RawTable, Table};

/// The `Content-Type` of a delta answer.
pub const DELTA_CONTENT_TYPE: &str = "application/vnd.isogroup.delta.v1+json";

const DELTA_FIELDS: &[&str] = &["base", "version", "epoch", "set", "remove", "replace"];
const BASE_FIELDS: &[&str] = &["version", "epoch"];
const REPLACE_FIELDS: &[&str] = &["base_group", "groups", "sources", "rules"];

/// The top-level fields other than `services`, each whole; `None`: unchanged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replace {
    /// `Some(None)`: the new table names no base group.
    pub base_group: Option<Option<String>>,
    pub groups: Option<NameMap<RawGroup>>,
    pub sources: Option<Vec<RawSource>>,
    pub rules: Option<Vec<RawRule>>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawDelta {
    pub base_version: u64,
    pub base_epoch: Option<String>,
    pub version: u64,
    pub epoch: Option<String>,
    /// Services added or changed, each whole.
    pub set: NameMap<RawService>,
    pub remove: Vec<String>,
    pub replace: Replace,
}

/// A value's bytes in its document: (start, end).
type Span = (usize, usize);

/// Where a delta's parts are in its JSON (`splice` copies them).
#[derive(Debug, Clone, Default)]
pub struct Spans {
    version: Span,
    epoch: Option<Span>,
    /// (key as written, value) of each `set` member.
    set: Vec<(Span, Span)>,
    /// (name, key as written, value) of each `replace` member.
    replace: Vec<(String, Span, Span)>,
}

/// A parsed delta: the delta, where its parts are, and the names of the
/// fields skipped inside `set` values and `replace` (for the caller to log).
#[derive(Debug, Clone)]
pub struct Parsed {
    pub delta: RawDelta,
    pub spans: Spans,
    pub unknown: Vec<String>,
}

fn refused(path: &str, message: String) -> TableError {
    TableError::Json { path: path.to_owned(), message }
}

impl RawDelta {
    /// Parses (not yet applies) a delta, refusing one over `max_table_bytes`.
    pub fn from_json(bytes: &[u8], limits: &Limits) -> Result<Parsed, TableError> {
        if bytes.len() > limits.max_table_bytes {
            return Err(TableError::TooManyBytes { field: "delta", size: bytes.len(), limit: limits.max_table_bytes });
        }
        let ((delta, spans), unknown) = document(bytes, true, &mut delta)?;
        Ok(Parsed { delta, spans, unknown })
    }

    /// Whether this delta applies onto a table stamped (`epoch`, `version`).
    pub fn has_base(&self, version: u64, epoch: Option<&str>) -> bool {
        self.base_version == version && self.base_epoch.as_deref() == epoch
    }

    /// Refuses a delta that does not apply onto `raw`: another base, a
    /// version not newer than its base, a service both set and removed, or
    /// the removal of a service `raw` does not have.
    fn check_onto(&self, raw: &RawTable) -> Result<(), TableError> {
        if !self.has_base(raw.version, raw.epoch.as_deref()) {
            return Err(refused("base", "not the table held".into()));
        }
        let base = Stamp::new(self.base_epoch.as_deref(), self.base_version);
        if !Stamp::new(self.epoch.as_deref(), self.version).is_newer_than(&base) {
            return Err(refused("version", "not newer than the delta's base".into()));
        }
        for name in &self.remove {
            if !raw.services.contains_key(name.as_str()) || self.set.contains_key(name.as_str()) {
                let message = cat!(crate::Quoted(name), " is not a service of the base, or is also in `set`");
                return Err(refused("remove", message));
            }
        }
        Ok(())
    }
}

/// The table `delta` makes of `raw`, compiled: refused when `raw` is not
/// exactly the delta's base, or when the result is not a valid table (the
/// first problem, as `Table::compile` names it). Consumes `raw`: on a
/// refusal the caller falls back to the whole table anyway.
pub fn apply(
    mut raw: RawTable,
    delta: RawDelta,
    default_base: &str,
    limits: &Limits,
) -> Result<(RawTable, Table), TableError> {
    delta.check_onto(&raw)?;
    for name in &delta.remove {
        raw.services.remove(name.as_str());
    }
    for (name, service) in delta.set {
        raw.services.insert(name, service);
    }
    let Replace { base_group, groups, sources, rules } = delta.replace;
    if let Some(base_group) = base_group {
        raw.base_group = base_group;
    }
    if let Some(groups) = groups {
        raw.groups = groups;
    }
    if let Some(sources) = sources {
        raw.sources = sources;
    }
    if let Some(rules) = rules {
        raw.rules = rules;
    }
    raw.version = delta.version;
    raw.epoch = delta.epoch;
    let table = Table::compile(&raw, default_base, limits)?;
    Ok((raw, table))
}

/// The whole table's JSON that `delta` (parsed from `delta_json`) makes of
/// `whole` (its base's JSON): the base's members as written, but for the
/// stamp, the services set or removed and the fields replaced, which come
/// from the delta as written. Refused over `max_table_bytes`.
pub fn splice(whole: &[u8], delta_json: &[u8], parsed: &Parsed, limits: &Limits) -> Result<Vec<u8>, TableError> {
    let (delta, spans) = (&parsed.delta, &parsed.spans);
    let mut top: Vec<(String, Span, Span)> = Vec::new();
    let mut services: Vec<(String, Span, Span)> = Vec::new();
    document(whole, true, &mut |r| {
        r.object("a route table object", &mut |r, key| {
            let at = r.key_span();
            if key == "services" {
                return r.object("a map", &mut |r, name| {
                    let at = r.key_span();
                    let value = skip(r)?;
                    services.push((name, at, value));
                    Ok(())
                });
            }
            let value = skip(r)?;
            top.push((key, at, value));
            Ok(())
        })
    })?;
    let mut out = Vec::with_capacity(whole.len() + delta_json.len());
    out.extend_from_slice(b"{\"version\":");
    out.extend_from_slice(part(delta_json, spans.version));
    if let Some(epoch) = spans.epoch {
        out.extend_from_slice(b",\"epoch\":");
        out.extend_from_slice(part(delta_json, epoch));
    }
    let member = |out: &mut Vec<u8>, doc: &[u8], key: Span, value: Span| {
        out.push(b',');
        out.extend_from_slice(part(doc, key));
        out.push(b':');
        out.extend_from_slice(part(doc, value));
    };
    for (name, key, value) in &top {
        let replaced = spans.replace.iter().any(|(n, _, _)| n == name);
        if !replaced && name != "version" && name != "epoch" {
            member(&mut out, whole, *key, *value);
        }
    }
    for (_, key, value) in &spans.replace {
        member(&mut out, delta_json, *key, *value);
    }
    // Members are written each after a `,`: the first one's goes.
    out.extend_from_slice(b",\"services\":{");
    let open = out.len();
    for (name, key, value) in &services {
        if !delta.set.contains_key(name.as_str()) && delta.remove.binary_search(name).is_err() {
            member(&mut out, whole, *key, *value);
        }
    }
    for (key, value) in &spans.set {
        member(&mut out, delta_json, *key, *value);
    }
    if out.get(open) == Some(&b',') {
        out.remove(open);
    }
    out.extend_from_slice(b"}}");
    if out.len() > limits.max_table_bytes {
        return Err(TableError::TooManyBytes { field: "table", size: out.len(), limit: limits.max_table_bytes });
    }
    Ok(out)
}

fn part(doc: &[u8], (start, end): Span) -> &[u8] {
    doc.get(start..end).unwrap_or_default()
}

/// Skips a value, giving its bytes.
fn skip(r: &mut Reader<'_>) -> Res<Span> {
    let start = r.at();
    r.skip()?;
    Ok((start, r.at()))
}

fn delta(r: &mut Reader<'_>) -> Res<(RawDelta, Spans)> {
    let mut d = RawDelta::default();
    let mut spans = Spans::default();
    let (mut has_base, mut has_version) = (false, false);
    let mut seen = 0;
    r.object("a table delta object", &mut |r, key| {
        match r.strict_field(key, DELTA_FIELDS, &mut seen)? {
            Some(0) => {
                has_base = true;
                let (mut seen, mut has_version) = (0, false);
                r.object("a delta base object", &mut |r, key| {
                    match r.strict_field(key, BASE_FIELDS, &mut seen)? {
                        Some(0) => {
                            d.base_version = r.uint(u64::MAX, "u64")?;
                            has_version = true;
                        }
                        _ => d.base_epoch = r.opt_string()?,
                    }
                    Ok(())
                })?;
                if !has_version {
                    return Err(r.missing("version"));
                }
            }
            Some(1) => {
                let start = r.at();
                d.version = r.uint(u64::MAX, "u64")?;
                spans.version = (start, r.at());
                has_version = true;
            }
            Some(2) => {
                let start = r.at();
                d.epoch = r.opt_string()?;
                spans.epoch = Some((start, r.at()));
            }
            Some(3) => r.object("a map", &mut |r, name| {
                let key = r.key_span();
                let start = r.at();
                let service = read::service(r)?;
                spans.set.push((key, (start, r.at())));
                read::insert_new(r, &mut d.set, name, service)
            })?,
            Some(4) => {
                d.remove = r.strings()?;
                // In name order, each once: `splice` binary searches it.
                if d.remove.windows(2).any(|pair| pair[0] >= pair[1]) {
                    return Err(r.err("expected service names in order, each once"));
                }
            }
            _ => {
                let mut seen = 0;
                r.object("a delta replace object", &mut |r, key| {
                    if matches!(key.as_str(), "version" | "epoch" | "services") {
                        let message = cat!("`", key, "` is not replaced whole (see the delta's top level)");
                        return Err(r.err_key(&message, true));
                    }
                    let (at, start, name) = (r.key_span(), r.at(), key.clone());
                    match r.field(key, REPLACE_FIELDS, &mut seen)? {
                        Some(0) => d.replace.base_group = Some(r.opt_string()?),
                        Some(1) => d.replace.groups = Some(read::groups(r)?),
                        Some(2) => d.replace.sources = Some(read::sources(r)?),
                        Some(3) => d.replace.rules = Some(read::rules(r)?),
                        // A newer companion's top-level field: skipped here,
                        // kept in the spliced whole as a whole fetch has it.
                        _ => {}
                    }
                    spans.replace.push((name, at, (start, r.at())));
                    Ok(())
                })?;
            }
        }
        Ok(())
    })?;
    if !has_base {
        return Err(r.missing("base"));
    }
    if !has_version {
        return Err(r.missing("version"));
    }
    Ok((d, spans))
}

#[cfg(test)]
mod tests;
