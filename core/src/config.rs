//! The plugin configuration (Envoy `configuration`, Istio `pluginConfig`):
//! JSON schema, defaults, and validation into `Settings`.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::assist::{Assist, RawAssist};
use crate::edge::{Edge, RawEdge};
use crate::error::ConfigError;
use crate::group::is_valid_group;
use crate::propagation::RawPropagation;
use crate::table::{is_valid_service, Limits, RawTable, Table};
use crate::text::text_of;

fn default_group_header() -> String {
    "x-isogroup".into()
}
fn default_baggage_key() -> Option<String> {
    Some("isogroup".into())
}
fn default_cookie() -> String {
    "isogroup".into()
}
fn default_strict_header() -> String {
    "x-isogroup-strict".into()
}
pub const DEFAULT_CLUSTER_HEADER: &str = "x-isogroup-cluster";
pub const DEFAULT_TARGET_HEADER: &str = "x-isogroup-target";

fn default_cluster_header() -> Option<String> {
    Some(DEFAULT_CLUSTER_HEADER.into())
}
fn default_target_header() -> Option<String> {
    Some(DEFAULT_TARGET_HEADER.into())
}
fn default_base_group() -> String {
    "base".into()
}
fn default_true() -> bool {
    true
}
fn default_failfast_status() -> u16 {
    503
}
fn default_table_path() -> String {
    "/v1/table".into()
}
fn default_wait_s() -> u32 {
    25
}

/// The JSON document as written by the user. Every field is optional.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct RawConfig {
    #[cfg_attr(feature = "serde", serde(default = "default_group_header"))]
    pub group_header: String,
    /// `null` disables reading and writing the baggage member.
    #[cfg_attr(feature = "serde", serde(default = "default_baggage_key"))]
    pub baggage_key: Option<String>,
    #[cfg_attr(feature = "serde", serde(default = "default_cookie"))]
    pub cookie: String,
    #[cfg_attr(feature = "serde", serde(default = "default_strict_header"))]
    pub strict_header: String,
    /// `null`: do not write it (each header write makes Envoy re-match the
    /// route: write only the one your routes use). Still stripped from
    /// requests under its default name.
    #[cfg_attr(feature = "serde", serde(default = "default_cluster_header"))]
    pub cluster_header: Option<String>,
    #[cfg_attr(feature = "serde", serde(default = "default_target_header"))]
    pub target_header: Option<String>,
    #[cfg_attr(feature = "serde", serde(default = "default_base_group"))]
    pub base_group: String,
    #[cfg_attr(feature = "serde", serde(default))]
    pub workload_group: Option<String>,
    /// This proxy's namespace: a host without a dot is tried as
    /// `<host>.<namespace>` first. Default: the node metadata `NAMESPACE`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub namespace: Option<String>,
    #[cfg_attr(feature = "serde", serde(default = "default_true"))]
    pub inject_baggage: bool,
    #[cfg_attr(feature = "serde", serde(default = "default_true"))]
    pub annotate_response: bool,
    #[cfg_attr(feature = "serde", serde(default = "default_failfast_status"))]
    pub failfast_status: u16,
    #[cfg_attr(feature = "serde", serde(default))]
    pub limits: Limits,
    /// Edge mode (ingress gateways): on when present.
    #[cfg_attr(feature = "serde", serde(default))]
    pub edge: Option<RawEdge>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub propagation_assist: Option<RawAssist>,
    /// This workload's name, for propagation reports. Default: the node
    /// metadata `WORKLOAD_NAME`.
    #[cfg_attr(feature = "serde", serde(default))]
    pub workload: Option<String>,
    /// Propagation reports: on when present.
    #[cfg_attr(feature = "serde", serde(default))]
    pub propagation: Option<RawPropagation>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub table: Option<TableSource>,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            group_header: default_group_header(),
            baggage_key: default_baggage_key(),
            cookie: default_cookie(),
            strict_header: default_strict_header(),
            cluster_header: default_cluster_header(),
            target_header: default_target_header(),
            base_group: default_base_group(),
            workload_group: None,
            namespace: None,
            inject_baggage: default_true(),
            annotate_response: default_true(),
            failfast_status: default_failfast_status(),
            limits: Limits::default(),
            edge: None,
            propagation_assist: None,
            workload: None,
            propagation: None,
            table: None,
        }
    }
}

impl RawConfig {
    /// Parses (not yet validates) a plugin configuration; empty input is
    /// not a document here (`Settings::from_json` takes it as `{}`).
    pub fn from_json(bytes: &[u8]) -> Result<RawConfig, ConfigError> {
        let (raw, _) = crate::json::document(bytes, false, &mut crate::read::config)?;
        Ok(raw)
    }
}

impl CompanionSource {
    /// A companion source with the default path and hold time.
    pub fn with_defaults(cluster: String, authority: String) -> Self {
        CompanionSource { cluster, authority, path: default_table_path(), wait_s: default_wait_s() }
    }
}

/// Where the route table comes from.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "snake_case", deny_unknown_fields))]
pub enum TableSource {
    Inline(RawTable),
    Companion(CompanionSource),
}

#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct CompanionSource {
    /// The Envoy cluster that reaches the companion.
    pub cluster: String,
    /// `:authority` sent to it.
    pub authority: String,
    #[cfg_attr(feature = "serde", serde(default = "default_table_path"))]
    pub path: String,
    /// Long-poll hold time asked of the companion.
    #[cfg_attr(feature = "serde", serde(default = "default_wait_s"))]
    pub wait_s: u32,
}

/// The validated configuration the filter runs with.
#[derive(Debug)]
pub struct Settings {
    pub group_header: String,
    pub baggage_key: Option<String>,
    pub cookie: String,
    pub strict_header: String,
    /// Routing header names: written when `write_*`, always stripped from
    /// what clients send.
    pub cluster_header: String,
    pub target_header: String,
    pub write_cluster_header: bool,
    pub write_target_header: bool,
    pub base_group: String,
    pub workload_group: Option<String>,
    pub namespace: Option<String>,
    pub inject_baggage: bool,
    pub annotate_response: bool,
    pub failfast_status: u16,
    pub limits: Limits,
    pub edge: Option<Edge>,
    pub assist: Option<Assist>,
    pub workload: Option<String>,
    /// Propagation reports' `sample` (reports on when set).
    pub propagation: Option<u32>,
    pub source: Source,
}

/// The table source after validation; the inline table is already compiled.
#[derive(Debug)]
pub enum Source {
    None,
    Inline(Table),
    Companion(CompanionSource),
}

impl Settings {
    /// Parses and validates a plugin configuration. Empty input means all
    /// defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Settings, ConfigError> {
        let bytes = if bytes.trim_ascii().is_empty() { b"{}" } else { bytes };
        Settings::validate(RawConfig::from_json(bytes)?)
    }

    /// `from_json`, freeing the JSON before the inline table is compiled: a
    /// wasm VM's linear memory keeps its peak, which then holds the parsed
    /// and the compiled table but not the text.
    pub fn from_json_vec(bytes: Vec<u8>) -> Result<Settings, ConfigError> {
        let raw =
            if bytes.trim_ascii().is_empty() { RawConfig::from_json(b"{}") } else { RawConfig::from_json(&bytes) };
        drop(bytes);
        Settings::validate(raw?)
    }

    /// Whether tables' `rules` run here (edge mode with `edge.runtime`):
    /// elsewhere they are checked but not kept (`Table::compile_for`).
    pub fn runtime_rules(&self) -> bool {
        self.edge.as_ref().is_some_and(|e| e.runtime)
    }

    pub fn validate(raw: RawConfig) -> Result<Settings, ConfigError> {
        // The checks borrow: one path drops `raw` on error, not one per check.
        check_fields(&raw)?;
        let edge = raw.edge.as_ref().map(Edge::compile).transpose()?;
        let assist = raw.propagation_assist.as_ref().map(Assist::compile).transpose()?;
        let propagation = raw.propagation.as_ref().map(RawPropagation::check).transpose()?;
        let source = match raw.table {
            None => Source::None,
            Some(TableSource::Inline(t)) => {
                let runtime_rules = edge.as_ref().is_some_and(|e| e.runtime);
                let table = Table::compile_for(&t, &raw.base_group, &raw.limits, runtime_rules);
                Source::Inline(table.map_err(ConfigError::InlineTable)?)
            }
            Some(TableSource::Companion(c)) => {
                validate_companion(&c)?;
                Source::Companion(c)
            }
        };
        Ok(Settings {
            group_header: raw.group_header,
            baggage_key: raw.baggage_key,
            cookie: raw.cookie,
            strict_header: raw.strict_header,
            write_cluster_header: raw.cluster_header.is_some(),
            write_target_header: raw.target_header.is_some(),
            cluster_header: raw.cluster_header.unwrap_or_else(|| DEFAULT_CLUSTER_HEADER.into()),
            target_header: raw.target_header.unwrap_or_else(|| DEFAULT_TARGET_HEADER.into()),
            base_group: raw.base_group,
            workload_group: raw.workload_group,
            namespace: raw.namespace,
            inject_baggage: raw.inject_baggage,
            annotate_response: raw.annotate_response,
            failfast_status: raw.failfast_status,
            limits: raw.limits,
            edge,
            assist,
            workload: raw.workload,
            propagation,
            source,
        })
    }
}

/// The plugin configuration's own fields (the edge, assist and table
/// sections compile after).
fn check_fields(raw: &RawConfig) -> Result<(), ConfigError> {
    check_header_names(raw)?;
    if let Some(key) = &raw.baggage_key {
        if !is_token(key) {
            return Err(ConfigError::InvalidValue {
                field: "baggage_key",
                value: key.clone(),
                why: "a baggage key is a non-empty token",
            });
        }
    }
    if !is_token(&raw.cookie) {
        return Err(ConfigError::InvalidValue {
            field: "cookie",
            value: raw.cookie.clone(),
            why: "a cookie name is a non-empty token",
        });
    }
    if !is_valid_group(raw.base_group.as_bytes()) {
        return Err(ConfigError::InvalidGroupName { field: "base_group", value: raw.base_group.clone() });
    }
    if let Some(g) = &raw.workload_group {
        if !is_valid_group(g.as_bytes()) {
            return Err(ConfigError::InvalidGroupName { field: "workload_group", value: g.clone() });
        }
    }
    if let Some(w) = raw.workload.as_ref().filter(|w| !is_valid_service(w)) {
        return Err(ConfigError::InvalidValue {
            field: "workload",
            value: w.clone(),
            why: "a Kubernetes name, DNS-1123 subdomain",
        });
    }
    if let Some(ns) = &raw.namespace {
        if !is_namespace(ns) {
            return Err(ConfigError::InvalidValue {
                field: "namespace",
                value: ns.clone(),
                why: "a Kubernetes namespace name (DNS-1123 label)",
            });
        }
    }
    if raw.cluster_header.is_none() && raw.target_header.is_none() {
        return Err(ConfigError::InvalidValue {
            field: "cluster_header",
            value: "null".into(),
            why: "cluster_header and target_header cannot both be null: the filter must write one routing header",
        });
    }
    if !(400..=599).contains(&raw.failfast_status) {
        return Err(ConfigError::InvalidValue {
            field: "failfast_status",
            value: text_of(&raw.failfast_status),
            why: "an HTTP error status, 400 to 599",
        });
    }
    Ok(())
}

/// The header names: each valid, and each with one role. The scan reads a
/// header as the first role its name matches, so a collision would let a
/// client's routing header pass as a group (and survive a pass-through). A
/// null routing header is still stripped under its default name, which
/// counts; so do the headers the scan reads by their fixed names.
fn check_header_names(raw: &RawConfig) -> Result<(), ConfigError> {
    const OWN: &str = "a header the filter reads itself";
    let names = [
        ("group_header", raw.group_header.as_str()),
        ("strict_header", raw.strict_header.as_str()),
        ("cluster_header", raw.cluster_header.as_deref().unwrap_or(DEFAULT_CLUSTER_HEADER)),
        ("target_header", raw.target_header.as_deref().unwrap_or(DEFAULT_TARGET_HEADER)),
        (OWN, "baggage"),
        (OWN, "cookie"),
        (OWN, "content-type"),
        (OWN, "x-isogroup-debug"),
    ];
    for (i, &(field, name)) in names.iter().enumerate().take(4) {
        if !is_header_name(name) {
            return Err(ConfigError::InvalidHeaderName { field, value: name.into() });
        }
        if let Some((other, _)) = names.iter().skip(i + 1).find(|(_, n)| *n == name) {
            return Err(ConfigError::Invalid {
                field: field.into(),
                why: crate::cat!(
                    crate::Quoted(name),
                    " is also the name of ",
                    other,
                    " (each header name has one role)"
                ),
            });
        }
    }
    Ok(())
}

fn validate_companion(c: &CompanionSource) -> Result<(), ConfigError> {
    if c.cluster.is_empty() {
        return Err(ConfigError::InvalidValue {
            field: "table.companion.cluster",
            value: c.cluster.clone(),
            why: "the Envoy cluster of the companion, not empty",
        });
    }
    if c.authority.is_empty() || !c.authority.as_bytes().iter().all(|&b| b.is_ascii_graphic()) {
        return Err(ConfigError::InvalidValue {
            field: "table.companion.authority",
            value: c.authority.clone(),
            why: "a host[:port]",
        });
    }
    if !c.path.starts_with('/') {
        return Err(ConfigError::InvalidValue {
            field: "table.companion.path",
            value: c.path.clone(),
            why: "an absolute path starting with '/'",
        });
    }
    if !(1..=300).contains(&c.wait_s) {
        return Err(ConfigError::InvalidValue {
            field: "table.companion.wait_s",
            value: text_of(&c.wait_s),
            why: "seconds, 1 to 300",
        });
    }
    Ok(())
}

/// A Kubernetes namespace: a DNS-1123 label, as group names are.
pub fn is_namespace(name: &str) -> bool {
    is_valid_group(name.as_bytes())
}

/// Envoy lower-cases header names; a configured name must already be lower-case.
fn is_header_name(name: &str) -> bool {
    is_token(name) && !name.as_bytes().iter().any(|&b| b.is_ascii_uppercase())
}

/// RFC 9110 token.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.as_bytes().iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(b, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'^' | b'_' | b'`' | b'|' | b'~')
        })
}
