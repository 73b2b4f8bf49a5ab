//! Typed errors. Every variant names the field that failed, as a dotted path
//! into the JSON document (`services.reviews.clusters`), so a user can find it.

#[allow(unused_imports)]
use crate::prelude::*;

use thiserror::Error;

use crate::json::Quoted;

/// Why a route table was rejected. The whole table is rejected; the table in
/// force keeps serving.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TableError {
    #[error("{path}: {message}")]
    Json { path: String, message: String },
    #[error("{field}: {size} bytes exceeds the limit of {limit}")]
    TooManyBytes { field: &'static str, size: usize, limit: usize },
    #[error("{field}: {count} exceeds the limit of {limit}")]
    TooMany { field: &'static str, count: usize, limit: usize },
    #[error("{field}: {} is not a valid group name (DNS-1123 label: lower-case letters, digits and '-', at most 63)", Quoted(.name))]
    InvalidGroupName { field: String, name: String },
    #[error("services.{service}: {} is not a valid service name (lower-case letters, digits, '-' and '.', at most 253)", Quoted(.service))]
    InvalidServiceName { service: String },
    #[error("services.{service}.hosts: the list is empty; a service needs at least one host")]
    NoHosts { service: String },
    #[error("services.{service}.hosts: {} is not a valid host ({why})", Quoted(.host))]
    InvalidHost { service: String, host: String, why: &'static str },
    #[error("services.{service}.hosts: host {} already belongs to service {}", Quoted(.host), Quoted(.other))]
    DuplicateHost { service: String, host: String, other: String },
    #[error("services.{service}.clusters: no cluster for base group {}", Quoted(.base))]
    NoBaseCluster { service: String, base: String },
    #[error("services.{service}.clusters.{group}: {} is not a valid cluster name ({why})", Quoted(.cluster))]
    InvalidCluster { service: String, group: String, cluster: String, why: &'static str },
    #[error("groups.{group}: a strict group cannot have a fallback")]
    StrictWithFallback { group: String },
    #[error("groups.{group}: the base group cannot have a fallback")]
    BaseHasFallback { group: String },
    #[error("groups.{group}.fallback: unknown group {} (not in groups, not the base group, not serving any service)", Quoted(.fallback))]
    UnknownFallback { group: String, fallback: String },
    #[error("groups.{group}.fallback: cycle {cycle}")]
    FallbackCycle { group: String, cycle: String },
    #[error("groups.{group}.fallback: chain depth {depth} exceeds the limit of {limit}")]
    FallbackTooDeep { group: String, depth: usize, limit: usize },
    /// Any other field (`sources[3].cidr`, `rules[2].percent`, …).
    #[error("{field}: {why}")]
    Invalid { field: String, why: String },
}

/// Why a plugin configuration was refused. The plugin does not start.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    Json { path: String, message: String },
    #[error("{field}: {} is not a valid header name (lower-case token characters)", Quoted(.value))]
    InvalidHeaderName { field: &'static str, value: String },
    #[error("{field}: {} is not a valid group name (DNS-1123 label)", Quoted(.value))]
    InvalidGroupName { field: &'static str, value: String },
    #[error("{field}: {} is not valid ({why})", Quoted(.value))]
    InvalidValue { field: &'static str, value: String, why: &'static str },
    #[error("{field}: {why}")]
    Invalid { field: String, why: String },
    #[error("table.inline.{0}")]
    InlineTable(TableError),
}

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
