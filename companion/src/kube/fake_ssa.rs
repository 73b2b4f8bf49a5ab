//! Field ownership for the fake API server, as the real one keeps it
//! (structured-merge-diff): every field an apply sets is owned by its field
//! manager, recorded in `metadata.managedFields` as `fieldsV1` sets; an
//! apply merges into what others own, conflicts only where another manager
//! owns a field with a different value, and drops the fields its manager
//! stopped applying; an update (PUT, merge or strategic patch) takes the
//! fields it changes from whoever owned them.
//!
//! How lists merge comes from the schema: the CRDs' `openAPIV3Schema`
//! (`x-kubernetes-list-type` / `x-kubernetes-list-map-keys`; a CRD list
//! without them is atomic), and for core kinds the merge keys the built-in
//! types declare.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};

#[derive(Clone, Debug, PartialEq)]
pub enum ListKind {
    /// Replaced whole, owned as one field.
    Atomic,
    /// Items are their own values (`v:` in `fieldsV1`).
    Set,
    /// Items are told apart by these fields (`k:` in `fieldsV1`).
    Map(Vec<String>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Schema {
    /// Known fields, and the schema of any other key (a map's values);
    /// `atomic` for `x-kubernetes-map-type: atomic`.
    Object {
        fields: BTreeMap<String, Schema>,
        other: Option<Box<Schema>>,
        atomic: bool,
    },
    List {
        kind: ListKind,
        item: Box<Schema>,
    },
    Scalar,
    /// No schema (`x-kubernetes-preserve-unknown-fields`, or a kind the fake
    /// knows nothing of): objects are maps of fields, lists atomic, as the
    /// API server deduces them.
    Deduced,
}

impl Schema {
    fn field(&self, name: &str) -> Schema {
        match self {
            Schema::Object { fields, other, .. } => {
                fields.get(name).cloned().or_else(|| other.as_deref().cloned()).unwrap_or(Schema::Deduced)
            }
            _ => Schema::Deduced,
        }
    }

    fn is_granular_object(&self) -> bool {
        matches!(self, Schema::Object { atomic: false, .. } | Schema::Deduced)
    }

    /// From an OpenAPI v3 schema as a CRD carries it.
    pub fn from_openapi(s: &Value) -> Schema {
        let list_kind = || match s["x-kubernetes-list-type"].as_str() {
            Some("map") => ListKind::Map(
                s["x-kubernetes-list-map-keys"]
                    .as_array()
                    .map(|k| k.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default(),
            ),
            Some("set") => ListKind::Set,
            _ => ListKind::Atomic,
        };
        match s["type"].as_str() {
            Some("array") => Schema::List { kind: list_kind(), item: Box::new(Schema::from_openapi(&s["items"])) },
            Some("object") => {
                let fields: BTreeMap<String, Schema> = s["properties"]
                    .as_object()
                    .map(|p| p.iter().map(|(k, v)| (k.clone(), Schema::from_openapi(v))).collect())
                    .unwrap_or_default();
                let other = match &s["additionalProperties"] {
                    Value::Object(a) if !a.is_empty() => {
                        Some(Box::new(Schema::from_openapi(&s["additionalProperties"])))
                    }
                    _ => None,
                };
                if fields.is_empty() && other.is_none() {
                    return Schema::Deduced;
                }
                Schema::Object { fields, other, atomic: s["x-kubernetes-map-type"] == "atomic" }
            }
            None if s["x-kubernetes-preserve-unknown-fields"] == true => Schema::Deduced,
            _ => Schema::Scalar,
        }
    }
}

fn object(fields: &[(&str, Schema)]) -> Schema {
    Schema::Object {
        fields: fields.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect(),
        other: Some(Box::new(Schema::Deduced)),
        atomic: false,
    }
}

fn map_list(keys: &[&str], item: Schema) -> Schema {
    Schema::List { kind: ListKind::Map(keys.iter().map(|k| (*k).to_owned()).collect()), item: Box::new(item) }
}

fn atomic_list() -> Schema {
    Schema::List { kind: ListKind::Atomic, item: Box::new(Schema::Deduced) }
}

/// `metadata` as every kind has it (a CRD's schema leaves it out).
fn object_meta() -> Schema {
    object(&[
        ("finalizers", Schema::List { kind: ListKind::Set, item: Box::new(Schema::Scalar) }),
        ("ownerReferences", map_list(&["uid"], Schema::Deduced)),
    ])
}

/// The associative lists of the core kinds the fake serves, with the merge
/// keys their Go types declare (`+listType=map`, `patchMergeKey`).
pub fn core_schema(plural: &str) -> Schema {
    let container = object(&[
        ("ports", map_list(&["containerPort", "protocol"], Schema::Deduced)),
        ("env", map_list(&["name"], Schema::Deduced)),
        ("volumeMounts", map_list(&["mountPath"], Schema::Deduced)),
        ("args", atomic_list()),
        ("command", atomic_list()),
    ]);
    match plural {
        "pods" => object(&[
            (
                "spec",
                object(&[
                    ("containers", map_list(&["name"], container.clone())),
                    ("initContainers", map_list(&["name"], container)),
                    ("volumes", map_list(&["name"], Schema::Deduced)),
                    ("tolerations", atomic_list()),
                ]),
            ),
            ("status", object(&[("conditions", map_list(&["type"], Schema::Deduced))])),
        ]),
        "services" => object(&[("spec", object(&[("ports", map_list(&["port", "protocol"], Schema::Deduced))]))]),
        // EndpointSlice `endpoints` and `ports` are atomic lists in the Go types.
        _ => Schema::Deduced,
    }
}

/// One step of a field path, as `fieldsV1` spells it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    /// `f:<name>`
    Field(String),
    /// `k:<the key fields as JSON>`
    Key(String),
    /// `v:<the value as JSON>`
    Value(String),
}

pub type Path = Vec<Step>;
pub type FieldSet = BTreeSet<Path>;

/// Fields no manager owns: identity and bookkeeping the server sets.
const UNOWNED_META: &[&str] = &[
    "name",
    "namespace",
    "uid",
    "resourceVersion",
    "generation",
    "creationTimestamp",
    "managedFields",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
    "generateName",
];

fn key_of_item(item: &Value, keys: &[String]) -> String {
    let mut k = Map::new();
    for key in keys {
        if let Some(v) = item.get(key) {
            k.insert(key.clone(), v.clone());
        }
    }
    Value::Object(k).to_string()
}

/// The fields `obj` sets, for a write to the main resource (`status`
/// false: everything but `status`) or to `/status` (only `status`).
pub fn fields_of(obj: &Value, schema: &Schema, status: bool) -> FieldSet {
    let mut out = FieldSet::new();
    let Some(top) = obj.as_object() else { return out };
    for (k, v) in top {
        if k == "apiVersion" || k == "kind" || (k == "status") != status {
            continue;
        }
        let path = vec![Step::Field(k.clone())];
        if k == "metadata" {
            let meta = object_meta();
            for (mk, mv) in v.as_object().into_iter().flatten() {
                if UNOWNED_META.contains(&mk.as_str()) || mv.is_null() {
                    continue;
                }
                walk(mv, &meta.field(mk), vec![Step::Field(k.clone()), Step::Field(mk.clone())], &mut out);
            }
        } else {
            walk(v, &schema.field(k), path, &mut out);
        }
    }
    out
}

fn walk(v: &Value, schema: &Schema, path: Path, out: &mut FieldSet) {
    match (v, schema) {
        (Value::Null, _) => {}
        (Value::Object(m), s) if s.is_granular_object() && !m.is_empty() => {
            for (k, child) in m {
                let mut p = path.clone();
                p.push(Step::Field(k.clone()));
                walk(child, &s.field(k), p, out);
            }
        }
        (Value::Array(items), Schema::List { kind: ListKind::Map(keys), item }) => {
            for i in items {
                let mut p = path.clone();
                p.push(Step::Key(key_of_item(i, keys)));
                out.insert(p.clone());
                if let Value::Object(m) = i {
                    for (k, child) in m {
                        let mut q = p.clone();
                        q.push(Step::Field(k.clone()));
                        walk(child, &item.field(k), q, out);
                    }
                }
            }
        }
        (Value::Array(items), Schema::List { kind: ListKind::Set, .. }) => {
            for i in items {
                let mut p = path.clone();
                p.push(Step::Value(i.to_string()));
                out.insert(p);
            }
        }
        _ => {
            out.insert(path);
        }
    }
}

/// The value at `path` in `obj`, if set.
pub fn value_at<'a>(obj: &'a Value, path: &[Step]) -> Option<&'a Value> {
    let mut cur = obj;
    for step in path {
        cur = match step {
            Step::Field(f) => cur.get(f)?,
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).ok()?;
                cur.as_array()?.iter().find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)))?
            }
            Step::Value(v) => {
                let want: Value = serde_json::from_str(v).ok()?;
                cur.as_array()?.iter().find(|i| **i == want)?
            }
        };
    }
    (!cur.is_null()).then_some(cur)
}

/// Removes the field or item at `path` from `obj`; a map it leaves empty
/// goes too (the Go types drop empty maps).
fn remove_at(obj: &mut Value, path: &[Step]) {
    let Some((last, parent_path)) = path.split_last() else { return };
    let mut cur = &mut *obj;
    for step in parent_path {
        let next = match step {
            Step::Field(f) => cur.get_mut(f),
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                cur.as_array_mut().and_then(|a| a.iter_mut().find(|i| key.iter().all(|(kk, kv)| i.get(kk) == Some(kv))))
            }
            Step::Value(_) => None,
        };
        let Some(next) = next else { return };
        cur = next;
    }
    match last {
        Step::Field(f) => {
            cur.as_object_mut().map(|m| m.remove(f));
        }
        Step::Key(k) => {
            let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| !key.iter().all(|(kk, kv)| i.get(kk) == Some(kv)));
            }
        }
        Step::Value(v) => {
            let want: Value = serde_json::from_str(v).unwrap_or(Value::Null);
            if let Some(a) = cur.as_array_mut() {
                a.retain(|i| *i != want);
            }
        }
    }
    if cur.as_object().is_some_and(|m| m.is_empty()) && !parent_path.is_empty() {
        remove_at(obj, parent_path);
    }
}

/// Merges an applied configuration into `target`, the lists as the schema says.
fn merge_applied(target: &mut Value, applied: &Value, schema: &Schema) {
    match (target, applied, schema) {
        (Value::Object(t), Value::Object(a), s) if s.is_granular_object() => {
            for (k, v) in a {
                if v.is_null() {
                    continue;
                }
                let child = s.field(k);
                match t.get_mut(k) {
                    Some(existing) => merge_applied(existing, v, &child),
                    None => {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(a), Schema::List { kind: ListKind::Map(keys), item }) => {
            for i in a {
                let k = key_of_item(i, keys);
                match t.iter_mut().find(|x| key_of_item(x, keys) == k) {
                    Some(existing) => merge_applied(existing, i, item),
                    None => t.push(i.clone()),
                }
            }
        }
        (Value::Array(t), Value::Array(a), Schema::List { kind: ListKind::Set, .. }) => {
            for i in a {
                if !t.contains(i) {
                    t.push(i.clone());
                }
            }
        }
        (t, a, _) => *t = a.clone(),
    }
}

fn is_leaf(set: &FieldSet, p: &Path) -> bool {
    set.range(p.clone()..).nth(1).is_none_or(|next| !next.starts_with(p))
}

/// Whether `set` holds `p` or a field below it.
fn owns_within(set: &FieldSet, p: &Path) -> bool {
    set.range(p.clone()..).next().is_some_and(|q| q.starts_with(p))
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub subresource: Option<String>,
    pub api_version: String,
    pub time: String,
    pub fields: FieldSet,
}

pub fn read_managed(obj: &Value) -> Vec<Entry> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| Entry {
            manager: e["manager"].as_str().unwrap_or_default().to_owned(),
            operation: e["operation"].as_str().unwrap_or("Update").to_owned(),
            subresource: e["subresource"].as_str().map(str::to_owned),
            api_version: e["apiVersion"].as_str().unwrap_or_default().to_owned(),
            time: e["time"].as_str().unwrap_or_default().to_owned(),
            fields: from_fields_v1(&e["fieldsV1"]),
        })
        .collect()
}

pub fn write_managed(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({ "manager": e.manager, "operation": e.operation, "apiVersion": e.api_version,
                                "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields) });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if list.is_empty() {
        obj["metadata"].as_object_mut().map(|m| m.remove("managedFields"));
    } else {
        obj["metadata"]["managedFields"] = Value::Array(list);
    }
}

fn step_name(s: &Step) -> String {
    match s {
        Step::Field(f) => format!("f:{f}"),
        Step::Key(k) => format!("k:{k}"),
        Step::Value(v) => format!("v:{v}"),
    }
}

pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = json!({});
    for path in set {
        let mut cur = &mut root;
        for step in path {
            cur = cur.as_object_mut().unwrap().entry(step_name(step)).or_insert_with(|| json!({}));
        }
        if !is_leaf(set, path) {
            cur.as_object_mut().unwrap().insert(".".into(), json!({}));
        }
    }
    root
}

pub fn from_fields_v1(v: &Value) -> FieldSet {
    fn go(v: &Value, path: &mut Path, out: &mut FieldSet) {
        let Some(m) = v.as_object() else { return };
        if (m.is_empty() || m.contains_key(".")) && !path.is_empty() {
            out.insert(path.clone());
        }
        for (k, child) in m {
            let step = match k.split_at(k.find(':').map_or(0, |i| i + 1)) {
                ("f:", f) => Step::Field(f.to_owned()),
                ("k:", f) => Step::Key(f.to_owned()),
                ("v:", f) => Step::Value(f.to_owned()),
                _ => continue,
            };
            path.push(step);
            go(child, path, out);
            path.pop();
        }
    }
    let mut out = FieldSet::new();
    go(v, &mut vec![], &mut out);
    out
}

/// An apply refused: the fields another manager owns with another value,
/// as (manager, that manager's apiVersion, field path).
#[derive(Debug)]
pub struct Conflicts(pub Vec<(String, String, String)>);

impl Conflicts {
    /// The API server's message for it (structured-merge-diff's wording).
    pub fn message(&self) -> String {
        let n = self.0.len();
        if let [(manager, api_version, path)] = self.0.as_slice() {
            return format!("Apply failed with 1 conflict: conflict with \"{manager}\" using {api_version}: {path}");
        }
        let mut groups: Vec<((&str, &str), Vec<&str>)> = vec![];
        for (m, v, p) in &self.0 {
            match groups.iter_mut().find(|(k, _)| *k == (m.as_str(), v.as_str())) {
                Some((_, paths)) => paths.push(p),
                None => groups.push(((m, v), vec![p])),
            }
        }
        let parts: Vec<String> = groups
            .iter()
            .map(|((m, v), paths)| {
                let lines: Vec<String> = paths.iter().map(|p| format!("- {p}")).collect();
                format!("conflicts with \"{m}\" using {v}:\n{}", lines.join("\n"))
            })
            .collect();
        format!("Apply failed with {n} conflicts: {}", parts.join("\n"))
    }

    /// `details.causes`, one per field, as the API server lists them.
    pub fn causes(&self) -> Value {
        Value::Array(
            self.0
                .iter()
                .map(|(m, v, p)| {
                    json!({ "reason": "FieldManagerConflict", "message": format!("conflict with \"{m}\" using {v}"), "field": p })
                })
                .collect(),
        )
    }
}

/// `.spec.host`, `.spec.subsets[name="a"]`: a path as the API server names it.
pub fn path_text(p: &[Step]) -> String {
    let mut s = String::new();
    for step in p {
        match step {
            Step::Field(f) => {
                s.push('.');
                s.push_str(f);
            }
            Step::Key(k) => {
                let key: Map<String, Value> = serde_json::from_str(k).unwrap_or_default();
                let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                s.push_str(&format!("[{}]", parts.join(",")));
            }
            Step::Value(v) => s.push_str(&format!("[={v}]")),
        }
    }
    s
}

/// What a write does to an object: who it is and where it writes.
pub struct Writer<'a> {
    pub manager: &'a str,
    pub subresource: Option<&'a str>,
    pub api_version: &'a str,
    pub time: &'a str,
}

/// Server-side apply of `applied` onto `live` (None: a create). Returns the
/// new object with its `managedFields`.
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    schema: &Schema,
    w: &Writer,
    force: bool,
) -> Result<Value, Conflicts> {
    let status = w.subresource == Some("status");
    let mut entries = live.map(read_managed).unwrap_or_default();
    let mine =
        |e: &Entry| e.manager == w.manager && e.operation == "Apply" && e.subresource.as_deref() == w.subresource;
    let new_set = fields_of(applied, schema, status);
    let empty = json!({});
    let live_obj = live.unwrap_or(&empty);
    // Conflicts: a field applied with a value other than the live one, owned by another manager.
    let mut conflicts = vec![];
    let mut forced: BTreeSet<Path> = BTreeSet::new();
    for p in new_set.iter().filter(|p| is_leaf(&new_set, p) && !matches!(p.last(), Some(Step::Key(_)))) {
        let (Some(was), Some(now)) = (value_at(live_obj, p), value_at(applied, p)) else { continue };
        if was == now {
            continue;
        }
        for e in entries.iter().filter(|e| !mine(e) && e.fields.contains(p)) {
            conflicts.push((e.manager.clone(), e.api_version.clone(), path_text(p)));
            forced.insert(p.clone());
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(Conflicts(conflicts));
    }
    for e in entries.iter_mut().filter(|e| !mine(e)) {
        e.fields.retain(|p| !forced.contains(p));
    }
    let old_set = entries.iter().find(|e| mine(e)).map(|e| e.fields.clone()).unwrap_or_default();
    let mut obj = live.cloned().unwrap_or_else(|| json!({}));
    // Fields this manager applied before and no longer does, unless someone else owns them.
    let others: Vec<&FieldSet> = entries.iter().filter(|e| !mine(e)).map(|e| &e.fields).collect();
    let dropped: Vec<&Path> = old_set.difference(&new_set).collect();
    for p in dropped.into_iter().rev() {
        if !others.iter().any(|o| owns_within(o, p)) && !owns_within(&new_set, p) {
            remove_at(&mut obj, p);
        }
    }
    let mut body = applied.clone();
    if let Some(m) = body.as_object_mut() {
        if status {
            // Through `/status` only `status` changes.
            m.retain(|k, _| k == "status");
        } else {
            m.remove("status");
        }
    }
    if let Some(meta) = body["metadata"].as_object_mut() {
        for k in UNOWNED_META {
            meta.remove(*k);
        }
    }
    let mut merged_schema = schema.clone();
    if let Schema::Object { fields, .. } = &mut merged_schema {
        fields.insert("metadata".into(), object_meta());
    }
    merge_applied(&mut obj, &body, &merged_schema);
    match entries.iter_mut().find(|e| mine(e)) {
        Some(e) => {
            e.fields = new_set;
            e.time = w.time.to_owned();
            e.api_version = w.api_version.to_owned();
        }
        None => entries.push(Entry {
            manager: w.manager.to_owned(),
            operation: "Apply".into(),
            subresource: w.subresource.map(str::to_owned),
            api_version: w.api_version.to_owned(),
            time: w.time.to_owned(),
            fields: new_set,
        }),
    }
    write_managed(&mut obj, &entries);
    Ok(obj)
}

/// Ownership after an update (create, PUT or a non-apply patch) from `old`
/// to `new`: the writer takes every field it changed or added; removed
/// fields leave every set. Writes `new`'s `managedFields`.
pub fn record_update(old: Option<&Value>, new: &mut Value, schema: &Schema, w: &Writer) {
    let status = w.subresource == Some("status");
    let mut entries = old.map(read_managed).unwrap_or_default();
    let empty = json!({});
    let old_obj = old.unwrap_or(&empty);
    let old_set = fields_of(old_obj, schema, status);
    let new_set = fields_of(new, schema, status);
    let changed: FieldSet = new_set
        .iter()
        .filter(|p| !old_set.contains(*p) || (is_leaf(&new_set, p) && value_at(old_obj, p) != value_at(new, p)))
        .cloned()
        .collect();
    let removed: FieldSet = old_set.difference(&new_set).cloned().collect();
    for e in entries.iter_mut() {
        e.fields.retain(|p| !changed.contains(p) && !removed.contains(p));
    }
    if !changed.is_empty() {
        let mine =
            |e: &Entry| e.manager == w.manager && e.operation == "Update" && e.subresource.as_deref() == w.subresource;
        match entries.iter_mut().find(|e| mine(e)) {
            Some(e) => {
                e.fields.extend(changed);
                e.time = w.time.to_owned();
            }
            None => entries.push(Entry {
                manager: w.manager.to_owned(),
                operation: "Update".into(),
                subresource: w.subresource.map(str::to_owned),
                api_version: w.api_version.to_owned(),
                time: w.time.to_owned(),
                fields: changed,
            }),
        }
    }
    write_managed(new, &entries);
}

/// Fields a CRD's structural schema does not declare, as `spec.foo`
/// (identity, `apiVersion`, `kind` and `metadata` aside); with `prune`,
/// removed from `obj`, as the API server prunes them.
pub fn unknown_fields(obj: &mut Value, schema: &Schema, prune: bool) -> Vec<String> {
    fn go(v: &mut Value, schema: &Schema, path: &str, prune: bool, out: &mut Vec<String>) {
        match (v, schema) {
            (Value::Object(m), Schema::Object { fields, other, .. }) => {
                let mut gone = vec![];
                for (k, child) in m.iter_mut() {
                    let here = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                    if path.is_empty() && matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                        continue;
                    }
                    match fields.get(k).or(other.as_deref()) {
                        Some(s) => go(child, s, &here, prune, out),
                        None => {
                            out.push(here);
                            gone.push(k.clone());
                        }
                    }
                }
                if prune {
                    for k in gone {
                        m.remove(&k);
                    }
                }
            }
            (Value::Array(items), Schema::List { item, .. }) => {
                for (i, child) in items.iter_mut().enumerate() {
                    go(child, item, &format!("{path}[{i}]"), prune, out);
                }
            }
            _ => {}
        }
    }
    let mut out = vec![];
    go(obj, schema, "", prune, &mut out);
    out
}

/// The merge key a strategic merge patch uses for a list field of a core kind.
fn strategic_key(field: &str, items: &[Value]) -> Option<&'static str> {
    match field {
        "containers" | "initContainers" | "ephemeralContainers" | "volumes" | "env" | "imagePullSecrets" => {
            Some("name")
        }
        "volumeMounts" => Some("mountPath"),
        "conditions" => Some("type"),
        "ownerReferences" => Some("uid"),
        // Container ports merge on containerPort, a Service's on port.
        "ports" if items.iter().any(|i| i.get("containerPort").is_some()) => Some("containerPort"),
        "ports" => Some("port"),
        _ => None,
    }
}

/// A strategic merge patch (the subset kubectl sends for core kinds: merge
/// keys, `$patch: delete|replace`, `$setElementOrder`, `$retainKeys`,
/// `$deleteFromPrimitiveList`); lists without a merge key are replaced,
/// `finalizers` merged as a set.
pub fn strategic_merge(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if p.get("$patch").and_then(Value::as_str) == Some("replace") {
        let mut p = p.clone();
        p.remove("$patch");
        *target = Value::Object(p);
        return;
    }
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(t) = target else { return };
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        t.retain(|k, _| keep.iter().any(|x| x == k));
    }
    for (k, v) in p {
        if k.starts_with("$setElementOrder/") || k == "$retainKeys" || k == "$patch" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(list), Some(gone)) = (t.get_mut(field).and_then(Value::as_array_mut), v.as_array()) {
                list.retain(|i| !gone.contains(i));
            }
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        match (t.get_mut(k), v) {
            (Some(Value::Array(existing)), Value::Array(items)) => {
                if let Some(key) = strategic_key(k, items) {
                    for item in items {
                        let id = item.get(key).cloned();
                        let pos = existing.iter().position(|e| e.get(key) == id.as_ref());
                        let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                        match (pos, delete) {
                            (Some(i), true) => {
                                existing.remove(i);
                            }
                            (Some(i), false) => strategic_merge(&mut existing[i], item),
                            (None, true) => {}
                            (None, false) => existing.push(item.clone()),
                        }
                    }
                } else if k == "finalizers" {
                    for item in items {
                        if !existing.contains(item) {
                            existing.push(item.clone());
                        }
                    }
                } else {
                    *existing = items.clone();
                }
            }
            (Some(existing @ Value::Object(_)), Value::Object(_)) => strategic_merge(existing, v),
            (_, v) => {
                let mut v = v.clone();
                strip_directives(&mut v);
                t.insert(k.clone(), v);
            }
        }
    }
}

fn strip_directives(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|k, _| !k.starts_with('$'));
            m.values_mut().for_each(strip_directives);
        }
        Value::Array(a) => a.iter_mut().for_each(strip_directives),
        _ => {}
    }
}

/// RFC 7386 JSON merge patch (what kubectl sends for custom resources).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        _ => *target = patch.clone(),
    }
}
