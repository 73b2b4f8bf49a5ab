//! The documentation against the code: every field core accepts (plugin
//! configuration and route table, every nested object) has its row in
//! `docs/configuration.md`, no row names a field core refuses, and every
//! relative link in README.md, BENCHMARKS.md and docs/ points at a file (and
//! heading) that exists. A field added to a schema without documentation
//! fails here.
//!
//! The field lists are core's own (`SCHEMA_OBJECTS`, the lists the reader
//! matches keys against); this test also checks that both parsers (the
//! hand-written reader and the serde one the companion uses) name exactly
//! those fields when they refuse an unknown one, and that read.rs has no
//! list `SCHEMA_OBJECTS` leaves out.

#![cfg(not(target_arch = "wasm32"))] // reads the docs from the checkout
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: a failure is the point

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use isogroup_core::{Limits, RawConfig, RawTable, SCHEMA_OBJECTS, SCHEMA_VALUES};

const UNKNOWN: &str = "zz_unknown";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Where in a document each schema object sits: the object `{"zz_unknown": 1}`
/// (or the value `"zz_unknown"`) put at `@`. `true`: a plugin configuration,
/// else a route table.
fn probe(object: &str) -> Option<(bool, &'static str)> {
    Some(match object {
        "config" => (true, "@"),
        "config.limits" => (true, r#"{"limits": @}"#),
        "config.edge" => (true, r#"{"edge": @}"#),
        "config.edge.rules[]" => (true, r#"{"edge": {"rules": [@]}}"#),
        "config.propagation_assist" => (true, r#"{"propagation_assist": @}"#),
        "config.propagation" => (true, r#"{"propagation": @}"#),
        "config.table" => (true, r#"{"table": @}"#),
        "config.table.companion" => (true, r#"{"table": {"companion": @}}"#),
        "table" => (false, "@"),
        "table.groups.<group>" => (false, r#"{"groups": {"g": @}}"#),
        "table.services.<service>" => (false, r#"{"services": {"s": @}}"#),
        "table.sources[]" => (false, r#"{"sources": [@]}"#),
        "table.rules[]" => (false, r#"{"rules": [@]}"#),
        _ => return None,
    })
}

/// The names an "unknown field/variant `x`, expected …" message lists.
fn expected_names(message: &str) -> BTreeSet<String> {
    let (_, tail) = message.split_once("expected").unwrap_or_else(|| panic!("no list in {message:?}"));
    tail.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

/// What both parsers say they accept at `template`'s `@`, given `fill`.
fn accepted(config: bool, template: &str, fill: &str) -> [BTreeSet<String>; 2] {
    let doc = template.replace('@', fill);
    let (reader, serde) = if config {
        (
            RawConfig::from_json(doc.as_bytes()).map(drop).map_err(|e| e.to_string()),
            serde_json::from_str::<RawConfig>(&doc).map(drop).map_err(|e| e.to_string()),
        )
    } else {
        (
            RawTable::from_json(doc.as_bytes(), &Limits::default()).map(drop).map_err(|e| e.to_string()),
            serde_json::from_str::<RawTable>(&doc).map(drop).map_err(|e| e.to_string()),
        )
    };
    let reader = reader.expect_err(&doc);
    let serde = serde.expect_err(&doc);
    for m in [&reader, &serde] {
        assert!(m.contains(UNKNOWN), "{doc}: the error does not name the unknown field: {m}");
    }
    [expected_names(&reader), expected_names(&serde)]
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn schema_lists_are_what_both_parsers_accept() {
    for (object, fields) in SCHEMA_OBJECTS {
        let (config, template) = probe(object).unwrap_or_else(|| panic!("{object}: add a probe for it here"));
        let [reader, serde] = accepted(config, template, &format!(r#"{{"{UNKNOWN}": 1}}"#));
        assert_eq!(reader, names(fields), "{object}: the reader's list");
        assert_eq!(serde, names(fields), "{object}: the serde parser's list");
    }
    for (object, field, values) in SCHEMA_VALUES {
        let (config, template) = probe(object).unwrap();
        let template = template.replace('@', &format!(r#"{{"{field}": @}}"#));
        let [reader, serde] = accepted(config, &template, &format!(r#""{UNKNOWN}""#));
        assert_eq!(reader, names(values), "{object}.{field}: the reader's values");
        assert_eq!(serde, names(values), "{object}.{field}: the serde parser's values");
    }
}

/// Every name list in read.rs (a `const X: &[&str]`) is in `SCHEMA_OBJECTS`
/// or `SCHEMA_VALUES`: a new nested object cannot be left out of the check.
#[test]
fn every_list_in_the_reader_is_checked() {
    let source = read(&repo().join("core/src/read.rs"));
    let start = source.find("pub const SCHEMA_OBJECTS").expect("SCHEMA_OBJECTS in read.rs");
    let values = source[start..].find("pub const SCHEMA_VALUES").expect("SCHEMA_VALUES in read.rs") + start;
    let end = source[values..].find("];").expect("the end of SCHEMA_VALUES") + values;
    let listed: BTreeSet<&str> = source[start..end].split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).collect();
    for line in source.lines() {
        let Some((head, _)) = line.split_once(": &[&str]") else { continue };
        let Some(name) = head.trim().strip_prefix("const ").or_else(|| head.trim().strip_prefix("pub(crate) const "))
        else {
            continue;
        };
        assert!(listed.contains(name), "read.rs: {name} is not in SCHEMA_OBJECTS or SCHEMA_VALUES");
    }
}

/// A heading and the lines under it, up to the next heading.
struct Section {
    heading: String,
    lines: Vec<String>,
}

/// The sections of a markdown text, fenced code skipped.
fn sections(text: &str) -> Vec<Section> {
    let mut out = vec![Section { heading: String::new(), lines: Vec::new() }];
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        if line.starts_with('#') {
            out.push(Section { heading: line.trim_start_matches('#').trim().to_owned(), lines: Vec::new() });
        } else if let Some(s) = out.last_mut() {
            s.lines.push(line.to_owned());
        }
    }
    out
}

/// A table row's cells (`| a | b |` -> ["a", "b"]), split as GitHub does:
/// at every pipe not escaped as `\|`, inside code spans too.
fn cells(line: &str) -> Option<Vec<String>> {
    let line = line.trim();
    let inner = line.strip_prefix('|')?.strip_suffix('|')?;
    let (mut out, mut cell, mut escaped) = (Vec::new(), String::new(), false);
    for c in inner.chars() {
        match c {
            '|' if !escaped => out.push(std::mem::take(&mut cell).trim().to_owned()),
            '|' => {
                cell.pop();
                cell.push(c);
            }
            _ => cell.push(c),
        }
        escaped = c == '\\';
    }
    out.push(cell.trim().to_owned());
    Some(out)
}

/// The documented fields of `object`: the rows whose first cell is one
/// backticked name, in the one section whose heading names `object`.
fn documented(doc: &[Section], object: &str) -> BTreeMap<String, Vec<String>> {
    let marker = format!("`{object}`");
    let found: Vec<&Section> = doc.iter().filter(|s| s.heading.contains(&marker)).collect();
    assert_eq!(found.len(), 1, "docs/configuration.md: want one heading naming {marker}, found {}", found.len());
    let mut rows = BTreeMap::new();
    for cells in found[0].lines.iter().filter_map(|l| cells(l)) {
        let Some(first) = cells.first() else { continue };
        let Some(name) = first.strip_prefix('`').and_then(|f| f.strip_suffix('`')) else { continue };
        if name.contains('`') {
            continue;
        }
        assert!(rows.insert(name.to_owned(), cells.clone()).is_none(), "{marker}: `{name}` has two rows");
    }
    rows
}

#[test]
fn every_accepted_field_is_documented_and_every_documented_field_is_accepted() {
    let doc = sections(&read(&repo().join("docs/configuration.md")));
    let mut missing = Vec::new();
    let mut stale = Vec::new();
    for (object, fields) in SCHEMA_OBJECTS {
        let rows = documented(&doc, object);
        for field in *fields {
            match rows.get(*field) {
                None => missing.push(format!("{object}: `{field}`")),
                // field | type | default | meaning and errors
                Some(cells) => assert!(
                    cells.len() == 4 && cells.iter().all(|c| !c.is_empty()),
                    "{object}: `{field}`'s row needs a type, a default and a meaning, 4 cells (a pipe in a cell is written `\\|`): {cells:?}"
                ),
            }
        }
        stale.extend(rows.keys().filter(|r| !fields.contains(&r.as_str())).map(|r| format!("{object}: `{r}`")));
    }
    assert!(missing.is_empty(), "accepted by core but not documented in docs/configuration.md: {missing:?}");
    assert!(stale.is_empty(), "documented in docs/configuration.md but refused by core: {stale:?}");
    for (object, field, values) in SCHEMA_VALUES {
        let row = documented(&doc, object).remove(*field).unwrap();
        for v in *values {
            assert!(row.iter().any(|c| c.contains(&format!("`{v}`"))), "{object}.{field}: value `{v}` not documented");
        }
    }
}

/// GitHub's heading anchors: lower case; letters, digits, `-` and `_`
/// kept, spaces to `-`, the rest dropped; a repeated one gets `-1`, `-2`….
fn anchors(text: &str) -> BTreeSet<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = BTreeSet::new();
    for s in sections(text).iter().skip(1) {
        let slug: String = s
            .heading
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 { slug.clone() } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

/// The link targets of a markdown text (`[text](target)`, `![alt](target)`),
/// fenced code and inline code skipped.
fn links(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let prose: String = line.split('`').step_by(2).collect::<Vec<_>>().join("");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let tail = &rest[at + 2..];
            let end = tail.find(')').unwrap_or(tail.len());
            out.push(tail[..end].trim().to_owned());
            rest = &tail[end..];
        }
    }
    out
}

fn markdown_files() -> Vec<PathBuf> {
    let root = repo();
    let mut files = vec![root.join("README.md")];
    for extra in ["SECURITY.md", "BENCHMARKS.md", "deploy/kubernetes/README.md"] {
        if root.join(extra).exists() {
            files.push(root.join(extra));
        }
    }
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    files
}

#[test]
fn relative_links_resolve() {
    let mut broken = Vec::new();
    let files = markdown_files();
    assert!(files.len() > 3, "README.md and the docs/ pages: {files:?}");
    for file in &files {
        let text = read(file);
        for target in links(&text) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, anchor) = match target.split_once('#') {
                Some((p, a)) => (p, Some(a)),
                None => (target.as_str(), None),
            };
            let resolved = if path.is_empty() { file.clone() } else { file.parent().unwrap().join(path) };
            if !resolved.exists() {
                broken.push(format!("{}: {target} (no such file)", file.display()));
                continue;
            }
            if let Some(anchor) = anchor.filter(|_| resolved.extension().is_some_and(|e| e == "md")) {
                if !anchors(&read(&resolved)).contains(anchor) {
                    broken.push(format!("{}: {target} (no such heading)", file.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links: {broken:#?}");
}

#[test]
fn the_link_checker_sees_links_and_anchors() {
    let text = "# The `config.edge`: edge mode\n[a](x.md#y) ![b](c.png) `[no](code)`\n```\n[no](fenced)\n```\n# A\n# A";
    assert_eq!(links(text), ["x.md#y", "c.png"]);
    let want: BTreeSet<String> = ["the-configedge-edge-mode", "a", "a-1"].iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(anchors(text), want);
    assert_eq!(cells(r"| `a` | `outbound\|80\|\|x` | c |").unwrap(), ["`a`", "`outbound|80||x`", "c"]);
    assert_eq!(cells("| `a|b` |").unwrap(), ["`a", "b`"]);
}
