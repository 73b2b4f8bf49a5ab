//! Typed errors. Every variant names the field that failed, as a dotted path
//! into the JSON document (`services.reviews.clusters`), so a user can find it.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::cat_to;
use crate::json::{Key, Quoted};
use crate::text::Piece;

/// Why a route table was rejected. The whole table is rejected; the table in
/// force keeps serving.
///
/// Messages are built piece by piece (`text::Piece`), not by `thiserror`'s
/// format strings: `core::fmt` costs the wasm kilobytes. `tests` below
/// holds the format strings they replace and checks every variant against
/// them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableError {
    Json {
        path: String,
        message: String,
    },
    TooManyBytes {
        field: &'static str,
        size: usize,
        limit: usize,
    },
    TooMany {
        field: &'static str,
        count: usize,
        limit: usize,
    },
    InvalidGroupName {
        field: String,
        name: String,
    },
    InvalidServiceName {
        service: String,
    },
    NoHosts {
        service: String,
    },
    InvalidHost {
        service: String,
        host: String,
        why: &'static str,
    },
    DuplicateHost {
        service: String,
        host: String,
        other: String,
    },
    NoBaseCluster {
        service: String,
        base: String,
    },
    InvalidCluster {
        service: String,
        group: String,
        cluster: String,
        why: &'static str,
    },
    StrictWithFallback {
        group: String,
    },
    BaseHasFallback {
        group: String,
    },
    UnknownFallback {
        group: String,
        fallback: String,
    },
    FallbackCycle {
        group: String,
        cycle: String,
    },
    FallbackTooDeep {
        group: String,
        depth: usize,
        limit: usize,
    },
    /// Any other field (`sources[3].cidr`, `rules[2].percent`, …).
    Invalid {
        field: String,
        why: String,
    },
}

impl Piece for TableError {
    fn push_to(&self, out: &mut String) {
        use TableError::*;
        match self {
            Json { path, message } => cat_to!(out; path, ": ", message),
            TooManyBytes { field, size, limit } => {
                cat_to!(out; field, ": ", size, " bytes exceeds the limit of ", limit)
            }
            TooMany { field, count, limit } => cat_to!(out; field, ": ", count, " exceeds the limit of ", limit),
            InvalidGroupName { field, name } => cat_to!(out; field, ": ", Quoted(name),
                " is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)"),
            InvalidServiceName { service } => cat_to!(out; "services.", Key(service), ": ", Quoted(service),
                " is not a valid service name (lower-case letters, digits, '-' and '.', at most 253)"),
            NoHosts { service } => {
                cat_to!(out; "services.", Key(service), ".hosts: the list is empty; a service needs at least one host")
            }
            InvalidHost { service, host, why } => {
                cat_to!(out; "services.", Key(service), ".hosts: ", Quoted(host), " is not a valid host (", why, ")")
            }
            DuplicateHost { service, host, other } => {
                cat_to!(out; "services.", Key(service), ".hosts: host ", Quoted(host),
                " already belongs to service ", Quoted(other))
            }
            NoBaseCluster { service, base } => {
                cat_to!(out; "services.", Key(service), ".clusters: no cluster for base group ", Quoted(base))
            }
            InvalidCluster { service, group, cluster, why } => {
                cat_to!(out; "services.", Key(service), ".clusters.", Key(group), ": ",
                Quoted(cluster), " is not a valid cluster name (", why, ")")
            }
            StrictWithFallback { group } => {
                cat_to!(out; "groups.", Key(group), ": a strict group cannot have a fallback")
            }
            BaseHasFallback { group } => cat_to!(out; "groups.", Key(group), ": the base group cannot have a fallback"),
            UnknownFallback { group, fallback } => cat_to!(out; "groups.", Key(group), ".fallback: unknown group ",
                Quoted(fallback), " (not in groups, not the base group, not serving any service)"),
            FallbackCycle { group, cycle } => cat_to!(out; "groups.", Key(group), ".fallback: cycle ", cycle),
            FallbackTooDeep { group, depth, limit } => {
                cat_to!(out; "groups.", Key(group), ".fallback: chain depth ", depth, " exceeds the limit of ", limit)
            }
            Invalid { field, why } => cat_to!(out; field, ": ", why),
        }
    }
}

/// Why a plugin configuration was refused. The plugin does not start.
/// Messages as `TableError`'s: built piece by piece, checked in `tests`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    Json { path: String, message: String },
    InvalidHeaderName { field: &'static str, value: String },
    InvalidGroupName { field: &'static str, value: String },
    InvalidValue { field: &'static str, value: String, why: &'static str },
    Invalid { field: String, why: String },
    InlineTable(TableError),
}

impl Piece for ConfigError {
    fn push_to(&self, out: &mut String) {
        use ConfigError::*;
        match self {
            Json { path, message } => cat_to!(out; path, ": ", message),
            InvalidHeaderName { field, value } => {
                cat_to!(out; field, ": ", Quoted(value), " is not a valid header name (lower-case token characters)")
            }
            InvalidGroupName { field, value } => {
                cat_to!(out; field, ": ", Quoted(value), " is not a valid group name (DNS-1123 label)")
            }
            InvalidValue { field, value, why } => cat_to!(out; field, ": ", Quoted(value), " is not valid (", why, ")"),
            Invalid { field, why } => cat_to!(out; field, ": ", why),
            InlineTable(e) => cat_to!(out; "table.inline.", e),
        }
    }
}

/// `Display` and `Error` for a `Piece` error (the companion and the tests
/// print them; the wasm builds messages with `cat!`).
macro_rules! piece_error {
    ($($t:ty),*) => {$(
        impl core::fmt::Display for $t {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(&crate::text::text_of(self))
            }
        }
        impl core::error::Error for $t {}
    )*};
}
piece_error!(TableError, ConfigError);

impl From<crate::json::JsonError> for TableError {
    fn from(e: crate::json::JsonError) -> Self {
        TableError::Json { path: e.path, message: e.message }
    }
}

impl From<crate::json::JsonError> for ConfigError {
    fn from(e: crate::json::JsonError) -> Self {
        ConfigError::Json { path: e.path, message: e.message }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant against the `thiserror` format string it had (kept
    /// here, word for word): the messages must not change, but for names
    /// from the table that are not plain, now shown quoted (`Key`).
    #[test]
    fn messages_read_as_the_format_strings_did() {
        let (s, h, o, g, w) =
            ("reviews".to_owned(), "a\"b".to_owned(), "ratings".to_owned(), "team-a".to_owned(), "why");
        let table: Vec<(TableError, String)> = vec![
            (TableError::Json { path: "p.q".into(), message: "m".into() }, format!("{}: {}", "p.q", "m")),
            (
                TableError::TooManyBytes { field: "f", size: 10, limit: 5 },
                format!("{}: {} bytes exceeds the limit of {}", "f", 10, 5),
            ),
            (TableError::TooMany { field: "f", count: 7, limit: 3 }, format!("{}: {} exceeds the limit of {}", "f", 7, 3)),
            (
                TableError::InvalidGroupName { field: "groups.X".into(), name: "X".into() },
                format!(
                    "{}: {} is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)",
                    "groups.X",
                    Quoted("X")
                ),
            ),
            (
                TableError::InvalidServiceName { service: h.clone() },
                format!(
                    "services.{}: {} is not a valid service name (lower-case letters, digits, '-' and '.', at most 253)",
                    Key(&h),
                    Quoted(&h)
                ),
            ),
            (
                TableError::NoHosts { service: s.clone() },
                format!("services.{s}.hosts: the list is empty; a service needs at least one host"),
            ),
            (
                TableError::InvalidHost { service: s.clone(), host: h.clone(), why: w },
                format!("services.{s}.hosts: {} is not a valid host ({w})", Quoted(&h)),
            ),
            (
                TableError::DuplicateHost { service: s.clone(), host: h.clone(), other: o.clone() },
                format!("services.{s}.hosts: host {} already belongs to service {}", Quoted(&h), Quoted(&o)),
            ),
            (
                TableError::NoBaseCluster { service: s.clone(), base: "base".into() },
                format!("services.{s}.clusters: no cluster for base group {}", Quoted("base")),
            ),
            (
                TableError::InvalidCluster { service: s.clone(), group: g.clone(), cluster: h.clone(), why: w },
                format!("services.{s}.clusters.{g}: {} is not a valid cluster name ({w})", Quoted(&h)),
            ),
            (
                TableError::StrictWithFallback { group: g.clone() },
                format!("groups.{g}: a strict group cannot have a fallback"),
            ),
            (TableError::BaseHasFallback { group: g.clone() }, format!("groups.{g}: the base group cannot have a fallback")),
            (
                TableError::UnknownFallback { group: g.clone(), fallback: o.clone() },
                format!(
                    "groups.{g}.fallback: unknown group {} (not in groups, not the base group, not serving any service)",
                    Quoted(&o)
                ),
            ),
            (
                TableError::FallbackCycle { group: g.clone(), cycle: "a -> b -> a".into() },
                format!("groups.{g}.fallback: cycle {}", "a -> b -> a"),
            ),
            (
                TableError::FallbackTooDeep { group: g.clone(), depth: 9, limit: 8 },
                format!("groups.{g}.fallback: chain depth {} exceeds the limit of {}", 9, 8),
            ),
            (TableError::Invalid { field: "rules[2].percent".into(), why: w.into() }, format!("{}: {w}", "rules[2].percent")),
        ];
        for (e, want) in &table {
            assert_eq!(e.to_string(), *want, "{e:?}");
        }
        let inner = TableError::NoHosts { service: s.clone() };
        let config: Vec<(ConfigError, String)> = vec![
            (ConfigError::Json { path: "p".into(), message: "m".into() }, format!("{}: {}", "p", "m")),
            (
                ConfigError::InvalidHeaderName { field: "f", value: h.clone() },
                format!("{}: {} is not a valid header name (lower-case token characters)", "f", Quoted(&h)),
            ),
            (
                ConfigError::InvalidGroupName { field: "f", value: h.clone() },
                format!("{}: {} is not a valid group name (DNS-1123 label)", "f", Quoted(&h)),
            ),
            (
                ConfigError::InvalidValue { field: "f", value: h.clone(), why: w },
                format!("{}: {} is not valid ({w})", "f", Quoted(&h)),
            ),
            (ConfigError::Invalid { field: "f".into(), why: w.into() }, format!("{}: {w}", "f")),
            (ConfigError::InlineTable(inner.clone()), format!("table.inline.{inner}")),
        ];
        for (e, want) in &config {
            assert_eq!(e.to_string(), *want, "{e:?}");
        }
    }
}
