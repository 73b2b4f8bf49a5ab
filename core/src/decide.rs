//! The one decision: where a request goes. Pure and allocation-free; the
//! filter, the companion's `/v1/resolve` and `explain`, and the tests call it.

#[allow(unused_imports)]
use crate::prelude::*;

use crate::authority::{self, MAX_HOST_LEN};
use crate::group::strict_lists;
use crate::table::{GroupId, PortOf, ServiceId, Table};

/// The plain request values the decision needs, already read from headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestView<'a> {
    /// The `:authority` (or `host`) as sent.
    pub authority: &'a [u8],
    /// A valid group name, or `None` for the base group.
    pub group: Option<&'a str>,
    /// The strict-list header value (`svc,svc` or `*`), if any.
    pub strict: Option<&'a [u8]>,
    /// The caller's namespace: a host without a dot is tried as
    /// `<host>.<namespace>` first.
    pub namespace: Option<&'a str>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision<'a> {
    /// The service is not in the table: Envoy's route stays as it is.
    PassThrough,
    Route(Route<'a>),
    FailFast(FailFast<'a>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route<'a> {
    pub service: &'a str,
    /// The group the request asked for (the base group when none).
    pub group: &'a str,
    /// The group whose instance serves it.
    pub serving: &'a str,
    pub cluster: &'a str,
    /// `serving != group`.
    pub fallback: bool,
    /// `service` and `serving` as ids in the table: a request can keep them
    /// (with its `Rc<Table>`) past the decision without copying the names.
    pub service_id: ServiceId,
    pub serving_id: GroupId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailFast<'a> {
    pub service: &'a str,
    pub group: &'a str,
    pub reason: FailReason,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailReason {
    /// The request's group is in strict mode.
    StrictGroup,
    /// The request's strict header lists the service (or `*`).
    StrictRequest,
}

impl FailReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FailReason::StrictGroup => "strict_group",
            FailReason::StrictRequest => "strict_request",
        }
    }
}

/// Decides for a request addressed by `:authority` (its port picks a
/// `{port}` cluster).
pub fn decide<'a>(table: &'a Table, req: &RequestView<'a>) -> Decision<'a> {
    // One closure that matches: two calls would build `with_host` twice
    // (316 bytes of wasm), for 28 instructions saved per decision
    // (callgrind, core/examples/decide_loop.rs: 837 -> 865; a few ns).
    let found = authority::with_host(req.authority, |h| match req.namespace {
        None => table.service_by_host(h),
        Some(ns) => service_in_namespace(table, h, ns),
    });
    let Some(service) = found else {
        return Decision::PassThrough;
    };
    resolve(table, service, req.group, req.strict, PortOf::Authority(req.authority))
}

/// The service of a normalised host: a host without a dot (`reviews`) is
/// first tried as `reviews.<namespace>`, in a stack buffer.
fn service_in_namespace(table: &Table, host: &[u8], ns: &str) -> Option<ServiceId> {
    if !host.iter().any(|&b| b == b'.' || b == b':') {
        let mut buf = [0u8; MAX_HOST_LEN];
        // No room (a longer name than any host): not tried.
        if let Some(name) = buf.get_mut(..host.len() + 1 + ns.len()) {
            for (o, &b) in name.iter_mut().zip(host.iter().chain(b".").chain(ns.as_bytes())) {
                *o = b;
            }
            if let Some(id) = table.service_by_host(name) {
                return Some(id);
            }
        }
    }
    table.service_by_host(host)
}

/// Decides for a service named directly (companion `/v1/resolve`, `explain`);
/// `port` picks a `{port}` cluster (the service's default when `None` or
/// not listed).
pub fn decide_service<'a>(
    table: &'a Table,
    service: &str,
    group: Option<&'a str>,
    strict: Option<&'a [u8]>,
    port: Option<u16>,
) -> Decision<'a> {
    match table.service_by_name(service) {
        Some(id) => resolve(table, id, group, strict, PortOf::Given(port)),
        None => Decision::PassThrough,
    }
}

fn resolve<'a>(
    table: &'a Table,
    service: ServiceId,
    group: Option<&'a str>,
    strict: Option<&'a [u8]>,
    port: PortOf<'_>,
) -> Decision<'a> {
    let service_name = table.service_name(service);
    let base = table.base();
    let requested = group.and_then(|g| table.group_id(g));
    let group_name = group.unwrap_or_else(|| table.group_name(base));
    // The group, its fallbacks depth first, then base (compiled once per
    // table); a group the table does not know has nothing but base.
    let base_only = [base];
    let order = requested.map_or(&base_only[..], |g| table.order(g));
    for &g in order {
        let Some(cluster) = table.cluster(service, g, port) else { continue };
        // No group means base: serving base is then no fallback.
        let fallback = requested.map_or(group.is_some(), |r| r != g);
        if fallback {
            let strict_group = requested.is_some_and(|r| table.is_strict(r));
            if strict_group || strict.is_some_and(|s| strict_lists(s, service_name)) {
                let reason = if strict_group { FailReason::StrictGroup } else { FailReason::StrictRequest };
                return Decision::FailFast(FailFast { service: service_name, group: group_name, reason });
            }
        }
        return Decision::Route(Route {
            service: service_name,
            group: group_name,
            serving: table.group_name(g),
            cluster,
            fallback,
            service_id: service,
            serving_id: g,
        });
    }
    // Unreachable for a validated table: every service has a base cluster.
    Decision::PassThrough
}
