//! One request, sans I/O: read the few headers that matter from the header
//! list (`scan`), then turn a decision into header edits or a local reply
//! (`plan`). The filter only executes what this returns, so everything here
//! is tested natively.

use crate::config::Settings;
use crate::decide::{decide, Decision, FailFast, RequestView};
use crate::group::{self, GroupName, Lookup};
use crate::table::Table;

/// Where the request's group came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSource {
    None,
    Header,
    Baggage,
    Workload,
}

impl GroupSource {
    pub fn as_str(self) -> &'static str {
        match self {
            GroupSource::None => "none",
            GroupSource::Header => "header",
            GroupSource::Baggage => "baggage",
            GroupSource::Workload => "workload",
        }
    }
}

/// What the request headers say, borrowed from them.
#[derive(Debug, Clone)]
pub struct Incoming<'h> {
    pub authority: &'h [u8],
    pub group: Option<GroupName>,
    pub source: GroupSource,
    pub strict: Option<&'h [u8]>,
    pub grpc: bool,
    pub debug: bool,
    /// Invalid group values seen (each is counted and stripped).
    pub invalid: u32,
    has_cluster_header: bool,
    has_target_header: bool,
    group_header_invalid: bool,
    /// `baggage` values with an invalid group member removed, when any was.
    baggage_rewrite: Option<Vec<Vec<u8>>>,
    baggage: Option<&'h [u8]>,
}

/// A change to the request headers, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    Set(String, Vec<u8>),
    Add(String, Vec<u8>),
    Remove(String),
}

/// A local answer instead of forwarding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub grpc: bool,
    pub service: String,
    /// The SPEC's JSON body (also the `grpc-message` for gRPC).
    pub body: String,
}

/// Reads the request's routing facts from its headers (names lower-case,
/// as Envoy hands them over). Allocates only to rewrite a bad baggage member.
pub fn scan<'h, H: AsRef<[u8]>>(headers: &'h [(String, H)], s: &Settings) -> Incoming<'h> {
    let mut inc = Incoming {
        authority: b"",
        group: None,
        source: GroupSource::None,
        strict: None,
        grpc: false,
        debug: false,
        invalid: 0,
        has_cluster_header: false,
        has_target_header: false,
        group_header_invalid: false,
        baggage_rewrite: None,
        baggage: None,
    };
    let mut baggage_count = 0;
    for (name, value) in headers {
        let value = value.as_ref();
        match name.as_str() {
            ":authority" => inc.authority = value,
            "content-type" => inc.grpc = value.starts_with(b"application/grpc"),
            "x-isogroup-debug" => inc.debug = value.trim_ascii() == b"1",
            "baggage" => {
                baggage_count += 1;
                inc.baggage.get_or_insert(value);
            }
            n if n == s.group_header => match group::from_header(value) {
                Lookup::Found(g) if inc.group.is_none() => {
                    inc.group = Some(g);
                    inc.source = GroupSource::Header;
                }
                Lookup::Found(_) | Lookup::Absent => {}
                Lookup::Invalid => {
                    inc.invalid += 1;
                    inc.group_header_invalid = true;
                }
            },
            n if n == s.strict_header => {
                inc.strict.get_or_insert(value);
            }
            n if n == s.cluster_header => inc.has_cluster_header = true,
            n if n == s.target_header => inc.has_target_header = true,
            _ => {}
        }
    }
    if inc.group.is_none() && baggage_count > 0 {
        if let Some(key) = &s.baggage_key {
            scan_baggage(&mut inc, headers, key);
        }
    }
    if inc.group.is_none() {
        if let Some(g) = s.workload_group.as_deref().and_then(|g| GroupName::new(g.as_bytes())) {
            inc.group = Some(g);
            inc.source = GroupSource::Workload;
        }
    }
    inc
}

/// Finds the group in the `baggage` headers; an invalid member is counted
/// and every baggage value is rewritten without it.
fn scan_baggage<H: AsRef<[u8]>>(inc: &mut Incoming<'_>, headers: &[(String, H)], key: &str) {
    let values = headers.iter().filter(|(n, _)| n == "baggage").map(|(_, v)| v.as_ref());
    let mut any_invalid = false;
    for v in values.clone() {
        match group::from_baggage(v, key) {
            Lookup::Found(g) => {
                inc.group = Some(g);
                inc.source = GroupSource::Baggage;
                break;
            }
            Lookup::Invalid => {
                inc.invalid += 1;
                any_invalid = true;
            }
            Lookup::Absent => {}
        }
    }
    if any_invalid {
        let kept = values.filter_map(|v| match group::from_baggage(v, key) {
            Lookup::Invalid => group::baggage_without(v, key),
            _ => Some(v.to_vec()),
        });
        inc.baggage_rewrite = Some(kept.collect());
    }
}

impl Incoming<'_> {
    /// The decision for this request against `table`.
    pub fn decide<'a>(&'a self, table: &'a Table) -> Decision<'a> {
        let view = RequestView {
            authority: self.authority,
            group: self.group.as_ref().map(GroupName::as_str),
            strict: self.strict,
        };
        decide(table, &view)
    }

    /// The header edits for `decision` (or for no table: `None`), in order.
    pub fn edits(&self, decision: Option<&Decision<'_>>, s: &Settings) -> Vec<Edit> {
        let mut edits = Vec::new();
        if self.group_header_invalid {
            edits.push(Edit::Remove(s.group_header.clone()));
            if let (GroupSource::Header, Some(g)) = (self.source, self.group) {
                edits.push(Edit::Set(s.group_header.clone(), g.as_str().into()));
            }
        }
        if let Some(values) = &self.baggage_rewrite {
            edits.push(Edit::Remove("baggage".into()));
            edits.extend(values.iter().map(|v| Edit::Add("baggage".into(), v.clone())));
        }
        if let (GroupSource::Workload, Some(g)) = (self.source, self.group) {
            edits.push(Edit::Set(s.group_header.clone(), g.as_str().into()));
            if let (true, Some(key)) = (s.inject_baggage, &s.baggage_key) {
                let current = if self.baggage_rewrite.is_some() { None } else { self.baggage };
                edits.push(Edit::Set("baggage".into(), group::baggage_with(current, key, g.as_str())));
            }
        }
        match decision {
            Some(Decision::Route(r)) => {
                edits.push(Edit::Set(s.cluster_header.clone(), r.cluster.into()));
                edits.push(Edit::Set(s.target_header.clone(), r.serving.into()));
            }
            _ => {
                // Sanitise: a client never picks a cluster.
                if self.has_cluster_header {
                    edits.push(Edit::Remove(s.cluster_header.clone()));
                }
                if self.has_target_header {
                    edits.push(Edit::Remove(s.target_header.clone()));
                }
            }
        }
        edits
    }

    pub fn local_reply(&self, f: &FailFast<'_>, s: &Settings) -> LocalReply {
        LocalReply { status: s.failfast_status, grpc: self.grpc, service: f.service.to_owned(), body: failfast_body(f) }
    }
}

/// `{"error":"isogroup_unavailable","service":…,"group":…,"reason":…}`
pub fn failfast_body(f: &FailFast<'_>) -> String {
    // Service and group are validated names: no JSON escaping needed.
    format!(
        r#"{{"error":"isogroup_unavailable","service":"{}","group":"{}","reason":"{}"}}"#,
        f.service,
        f.group,
        f.reason.as_str()
    )
}

/// `x-isogroup-served` value: `<service>=<group>[;fallback]`.
pub fn served_value(service: &str, serving: &str, fallback: bool) -> String {
    let mut v = String::with_capacity(service.len() + serving.len() + 10);
    v.push_str(service);
    v.push('=');
    v.push_str(serving);
    if fallback {
        v.push_str(";fallback");
    }
    v
}

/// `x-isogroup-decision`: the steps in one line, for humans.
pub fn explain(inc: &Incoming<'_>, decision: Option<&Decision<'_>>, table_version: Option<u64>, vm: &str) -> String {
    let group = inc.group.as_ref().map_or("-", GroupName::as_str);
    let table = table_version.map_or("none".to_owned(), |v| v.to_string());
    let outcome = match decision {
        None => "passthrough (no table yet)".to_owned(),
        Some(Decision::PassThrough) => "passthrough (service not in table)".to_owned(),
        Some(Decision::Route(r)) => {
            format!(
                "service={} serving={} cluster={}{}",
                r.service,
                r.serving,
                r.cluster,
                if r.fallback { " fallback" } else { "" }
            )
        }
        Some(Decision::FailFast(f)) => format!("service={} failfast reason={}", f.service, f.reason.as_str()),
    };
    format!("vm={vm}; table={table}; group={group} ({}); invalid={}; {outcome}", inc.source.as_str(), inc.invalid)
}
