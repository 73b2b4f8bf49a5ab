//! One request, sans I/O: read the few headers that matter from the header
//! list (`scan`), then turn a decision into header edits or a local reply.
//! The filter only executes what this returns, so everything here is tested
//! natively (and as wasm).

#[allow(unused_imports)]
use crate::prelude::*;

use alloc::borrow::Cow;
use core::net::IpAddr;

use crate::cat;
use crate::config::Settings;
use crate::decide::{decide, Decision, FailFast, RequestView};
use crate::edge::{self, Edge, EdgeRequest, LANE_COOKIE};
use crate::group::{self, GroupName, Lookup};
use crate::join;
use crate::regex::Scratch;
use crate::table::{GroupId, Limits, ServiceId, Table};

/// Where the request's group came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupSource {
    None,
    Header,
    Baggage,
    Cookie,
    /// The `isogroup-lane` cookie a join set (edge `join_path`).
    LaneCookie,
    /// The table's source binding (its index in `sources`).
    Binding(usize),
    /// Edge rule (its index).
    Rule(usize),
    /// The table's runtime rule (its index in `rules`).
    TableRule(usize),
    /// Edge `default_group`.
    Default,
    Workload,
    /// Restored by the propagation assist from the trace id.
    Assist,
}

impl GroupSource {
    pub fn describe(self) -> String {
        match self {
            GroupSource::None => "none".into(),
            GroupSource::Header => "header".into(),
            GroupSource::Baggage => "baggage".into(),
            GroupSource::Cookie => "cookie".into(),
            GroupSource::LaneCookie => "lane cookie".into(),
            GroupSource::Binding(i) => cat!("source binding ", i),
            GroupSource::Rule(i) => cat!("edge rule ", i),
            GroupSource::TableRule(i) => cat!("table rule ", i),
            GroupSource::Default => "edge default".into(),
            GroupSource::Workload => "workload".into(),
            GroupSource::Assist => "propagation assist".into(),
        }
    }

    /// Sources the request did not carry itself: the filter stamps them on.
    fn injected(self) -> bool {
        matches!(
            self,
            GroupSource::Cookie
                | GroupSource::LaneCookie
                | GroupSource::Binding(_)
                | GroupSource::Rule(_)
                | GroupSource::TableRule(_)
                | GroupSource::Default
                | GroupSource::Workload
                | GroupSource::Assist
        )
    }
}

/// Facts the filter reads from the host, not headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Peer {
    /// `source.address` without the port (read only when edge mode needs it).
    pub ip: Option<IpAddr>,
    /// The filter's own clock, unix seconds: source bindings expire by it.
    pub now_s: u64,
}

/// What the request headers say, borrowed from them.
#[derive(Debug, Clone)]
pub struct Incoming<'h> {
    pub authority: &'h [u8],
    /// The plugin's `namespace` (or the node's): short hosts are tried in it.
    pub namespace: Option<&'h str>,
    pub path: &'h [u8],
    pub method: &'h [u8],
    pub group: Option<GroupName>,
    pub source: GroupSource,
    pub strict: Option<&'h [u8]>,
    pub grpc: bool,
    pub debug: bool,
    /// Not in edge mode, or from a trusted peer: the request's own group
    /// headers count and isogroup response headers go back to it.
    pub trusted: bool,
    /// Invalid group values seen (each is counted and stripped).
    pub invalid: u32,
    /// The first trace id found in the configured trace headers.
    pub trace_id: Option<&'h [u8]>,
    /// It came from `traceparent` or `x-b3-traceid`: a trace the
    /// propagation reports follow (an `x-request-id` is not one).
    pub traced: bool,
    group_headers: u32,
    strip_group_header: bool,
    strip_strict: bool,
    baggage: Vec<&'h [u8]>,
    /// Remove our member from every baggage value (untrusted peer) or from
    /// the values where it was invalid.
    baggage_strip: BaggageStrip,
    cookies: Vec<&'h [u8]>,
    strip_cookie: bool,
    /// The lane cookie was invalid or named a group the table does not know.
    strip_lane_cookie: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BaggageStrip {
    None,
    Invalid,
    All,
}

/// A change to the request headers, in order. Names and the routing values
/// are borrowed (from the settings and the table): the common route case
/// allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit<'a> {
    Set(&'a str, Cow<'a, [u8]>),
    Add(&'a str, Cow<'a, [u8]>),
    Remove(&'a str),
}

/// A local answer instead of forwarding: a fail-fast or a join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalReply {
    pub status: u16,
    pub grpc: bool,
    /// The service a fail-fast is for; empty for a join.
    pub service: String,
    /// Response headers (for gRPC, the fail-fast header goes as metadata).
    pub headers: Vec<(&'static str, String)>,
    /// The SPEC's JSON body (also the `grpc-message` for gRPC).
    pub body: String,
}

/// The header lookups the edge rules need, over the raw header list.
struct Lookups<'a, N, H> {
    headers: &'a [(N, H)],
    cookies: &'a [&'a [u8]],
    path: &'a [u8],
    peer: Option<IpAddr>,
}

impl<N: AsRef<str>, H: AsRef<[u8]>> EdgeRequest for Lookups<'_, N, H> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k.as_ref() == name).map(|(_, v)| v.as_ref())
    }
    fn cookie(&self, name: &str) -> Option<&[u8]> {
        self.cookies.iter().find_map(|c| group::cookie_value(c, name))
    }
    fn query(&self, name: &str) -> Option<Vec<u8>> {
        edge::query_param(self.path, name)
    }
    fn peer(&self) -> Option<IpAddr> {
        self.peer
    }
}

/// Reads the request's routing facts from its headers (names lower-case, as
/// Envoy hands them over) and finds its group (SPEC step 1).
/// In edge mode the order is SPEC's "Edge order": a trusted peer's own group
/// (header, baggage, cookie), the lane cookie (with `join_path`), `table`'s
/// source bindings (with `runtime`), the plugin's rules, `table`'s rules (with
/// `runtime`), `default_group`; the first hit wins.
pub fn scan<'h, N: AsRef<str>, H: AsRef<[u8]>>(
    headers: &'h [(N, H)],
    s: &'h Settings,
    peer: Peer,
    table: Option<&Table>,
) -> Incoming<'h> {
    scan_with(headers, s, peer, table, &mut Scratch::default())
}

/// `scan`, with the VM's regex `scratch` (a request then allocates no
/// regex thread sets).
pub fn scan_with<'h, N: AsRef<str>, H: AsRef<[u8]>>(
    headers: &'h [(N, H)],
    s: &'h Settings,
    peer: Peer,
    table: Option<&Table>,
    scratch: &mut Scratch,
) -> Incoming<'h> {
    let trusted = s.edge.as_ref().is_none_or(|e| e.trusts(peer.ip));
    let mut inc = Incoming {
        authority: b"",
        namespace: s.namespace.as_deref(),
        path: b"",
        method: b"",
        group: None,
        source: GroupSource::None,
        strict: None,
        grpc: false,
        debug: false,
        trusted,
        invalid: 0,
        trace_id: None,
        traced: false,
        group_headers: 0,
        strip_group_header: false,
        strip_strict: false,
        baggage: Vec::new(),
        baggage_strip: BaggageStrip::None,
        cookies: Vec::new(),
        strip_cookie: false,
        strip_lane_cookie: false,
    };
    let mut trace: Option<(usize, &[u8], bool)> = None;
    for (name, value) in headers {
        let value = value.as_ref();
        match name.as_ref() {
            ":authority" => inc.authority = value,
            ":path" => inc.path = value,
            ":method" => inc.method = value,
            "content-type" => inc.grpc = value.starts_with(b"application/grpc"),
            "x-isogroup-debug" => inc.debug = value.trim_ascii() == b"1",
            "baggage" => inc.baggage.push(value),
            "cookie" => inc.cookies.push(value),
            n if n == s.group_header => {
                inc.group_headers += 1;
                if !trusted {
                    inc.strip_group_header = true;
                    continue;
                }
                match group::from_header(value) {
                    Lookup::Found(g) if inc.group.is_none() => {
                        inc.group = Some(g);
                        inc.source = GroupSource::Header;
                    }
                    Lookup::Found(_) | Lookup::Absent => {}
                    Lookup::Invalid => {
                        inc.invalid += 1;
                        inc.strip_group_header = true;
                    }
                }
            }
            n if n == s.strict_header => {
                if trusted {
                    inc.strict.get_or_insert(value);
                } else {
                    inc.strip_strict = true;
                }
            }
            // Routing headers are removed or set whatever the scan sees.
            n if n == s.cluster_header || n == s.target_header => {}
            n => {
                if let Some(assist) = &s.assist {
                    if let Some(rank) = assist.trace_headers.iter().position(|t| t == n) {
                        if trace.is_none_or(|(r, _, _)| rank < r) {
                            if let Some(id) = crate::assist::trace_id(n, value) {
                                trace = Some((rank, id, matches!(n, "traceparent" | "x-b3-traceid")));
                            }
                        }
                    }
                }
            }
        }
    }
    if let Some((_, id, traced)) = trace {
        inc.trace_id = Some(id);
        inc.traced = traced;
    }
    if let Some(key) = &s.baggage_key {
        inc.scan_baggage(key, &s.limits);
    }
    if let Some(edge) = &s.edge {
        inc.scan_cookie(&s.cookie);
        if edge.join_path.is_some() {
            inc.scan_lane_cookie(table);
        }
        if inc.group.is_none() {
            inc.edge_choice(edge, headers, peer, table, scratch);
        }
    }
    if let Some(g) = s.workload_group.as_deref().and_then(|g| GroupName::new(g.as_bytes())) {
        inc.adopt(g, GroupSource::Workload);
    }
    inc
}

impl<'h> Incoming<'h> {
    /// The edge order after the request's own group and the lane cookie.
    fn edge_choice<N: AsRef<str>, H: AsRef<[u8]>>(
        &mut self,
        edge: &Edge,
        headers: &[(N, H)],
        peer: Peer,
        table: Option<&Table>,
        scratch: &mut Scratch,
    ) {
        let runtime = table.filter(|_| edge.runtime);
        if let (Some(t), Some(ip)) = (runtime, peer.ip) {
            if let Some(b) = t.sources().lookup(ip, peer.now_s) {
                return self.adopt(b.group, GroupSource::Binding(b.index));
            }
        }
        let known = |g: &str| table.is_some_and(|t| t.knows_group(g));
        let lookups = Lookups { headers, cookies: &self.cookies, path: self.path, peer: peer.ip };
        if let Some((i, g)) = edge.choose(&lookups, known, scratch) {
            return self.adopt(g, GroupSource::Rule(i));
        }
        if let Some((i, g)) = runtime.and_then(|t| t.rules().choose(&lookups, known, scratch)) {
            return self.adopt(g, GroupSource::TableRule(i));
        }
        if let Some(g) = edge.default_group {
            self.adopt(g, GroupSource::Default);
        }
    }

    /// The lane cookie: from any peer, a group the table knows (the first
    /// such value). Any value that is not one (in any `cookie` header, even
    /// beside a good one) is skipped and removes the lane cookie from what is
    /// forwarded; an invalid name is counted too. Before any table no group
    /// is known: a valid name is skipped but kept.
    fn scan_lane_cookie(&mut self, table: Option<&Table>) {
        let mut found = None;
        for c in &self.cookies {
            for pair in c.split(|&b| b == b';') {
                let Some(value) = group::cookie_value(pair, LANE_COOKIE) else { continue };
                match (GroupName::new(value), table) {
                    (None, _) => {
                        self.invalid += 1;
                        self.strip_lane_cookie = true;
                    }
                    (Some(g), Some(t)) if t.knows_group(g.as_str()) => {
                        found.get_or_insert(g);
                    }
                    (Some(_), Some(_)) => self.strip_lane_cookie = true,
                    (Some(_), None) => {}
                }
            }
        }
        if let Some(g) = found {
            self.adopt(g, GroupSource::LaneCookie);
        }
    }

    /// The reply to a join request (edge mode with `join_path`, the path
    /// being it), whoever the peer.
    pub fn join(&self, s: &Settings, table: Option<&Table>) -> Option<LocalReply> {
        let join_path = s.edge.as_ref()?.join_path.as_deref()?;
        join::is_join(self.path, join_path).then(|| join::reply(self.method, self.path, table))
    }

    /// Takes `group` from `source` unless the request already has one.
    pub fn adopt(&mut self, group: GroupName, source: GroupSource) {
        if self.group.is_none() {
            self.group = Some(group);
            self.source = source;
        }
    }

    fn scan_baggage(&mut self, key: &str, limits: &Limits) {
        if !self.trusted {
            if self.baggage.iter().any(|v| group::from_baggage(v, key) != Lookup::Absent) {
                self.baggage_strip = BaggageStrip::All;
            }
            return;
        }
        if self.group.is_some() {
            return; // the header won: the search stops at the first valid hit
        }
        for v in &self.baggage {
            let members = v.iter().filter(|&&b| b == b',').count() + 1;
            if v.len() > limits.max_baggage_bytes || members > limits.max_baggage_members {
                // Over the limit: not searched, counted; forwarded as it is.
                self.invalid += 1;
                continue;
            }
            match group::from_baggage(v, key) {
                Lookup::Found(g) => {
                    self.adopt(g, GroupSource::Baggage);
                    return;
                }
                Lookup::Invalid => {
                    self.invalid += 1;
                    self.baggage_strip = BaggageStrip::Invalid;
                }
                Lookup::Absent => {}
            }
        }
    }

    fn scan_cookie(&mut self, name: &str) {
        let Some(value) = self.cookies.iter().find_map(|c| group::cookie_value(c, name)) else { return };
        if !self.trusted {
            self.strip_cookie = true;
            return;
        }
        match GroupName::new(value) {
            Some(g) => self.adopt(g, GroupSource::Cookie),
            None => {
                self.invalid += 1;
                self.strip_cookie = true;
            }
        }
    }

    /// The decision for this request against `table`.
    pub fn decide<'a>(&'a self, table: &'a Table) -> Decision<'a> {
        let view = RequestView {
            authority: self.authority,
            group: self.group.as_ref().map(GroupName::as_str),
            strict: self.strict,
            namespace: self.namespace,
        };
        decide(table, &view)
    }

    /// The header edits for `decision` (or for no table: `None`), in order.
    pub fn edits<'a>(&self, decision: Option<&Decision<'a>>, s: &'a Settings) -> Vec<Edit<'a>> {
        let mut edits = Vec::new();
        self.each_edit(decision, s, |e| edits.push(e));
        edits
    }

    /// `edits`, each handed to `apply` as it is made: the filter applies
    /// them without a list per request.
    pub fn each_edit<'a>(&self, decision: Option<&Decision<'a>>, s: &'a Settings, mut apply: impl FnMut(Edit<'a>)) {
        let inject = self.group.filter(|_| self.source.injected());
        // Setting replaces every value, so a strip followed by a set is one call.
        let set_group = match (self.source, self.group) {
            (GroupSource::Header, Some(g)) if self.strip_group_header => Some(g),
            (_, Some(g)) if inject.is_some() => Some(g),
            _ => None,
        };
        match set_group {
            Some(g) => apply(Edit::Set(&s.group_header, Cow::Owned(g.as_str().into()))),
            None if self.strip_group_header => apply(Edit::Remove(&s.group_header)),
            None => {}
        }
        self.baggage_edits(inject, s, &mut apply);
        if self.strip_cookie || self.strip_lane_cookie {
            apply(Edit::Remove("cookie"));
            for c in &self.cookies {
                let mut kept = Some(Cow::Borrowed(*c));
                for (strip, name) in [(self.strip_cookie, s.cookie.as_str()), (self.strip_lane_cookie, LANE_COOKIE)] {
                    if strip {
                        kept = kept.and_then(|k| edge::cookie_without(&k, name).map(Cow::Owned));
                    }
                }
                if let Some(k) = kept {
                    apply(Edit::Add("cookie", Cow::Owned(k.into_owned())));
                }
            }
        }
        if self.strip_strict {
            apply(Edit::Remove(&s.strict_header));
        }
        // Sanitise: a client never picks a cluster. A routing header not set
        // is removed whatever the scan saw (a malformed entry can end the
        // host's header list before it).
        let route = match decision {
            Some(Decision::Route(r)) => Some(r),
            _ => None,
        };
        match route.filter(|_| s.write_cluster_header) {
            Some(r) => apply(Edit::Set(&s.cluster_header, Cow::Borrowed(r.cluster.as_bytes()))),
            None => apply(Edit::Remove(&s.cluster_header)),
        }
        match route.filter(|_| s.write_target_header) {
            Some(r) => apply(Edit::Set(&s.target_header, Cow::Borrowed(r.serving.as_bytes()))),
            None => apply(Edit::Remove(&s.target_header)),
        }
    }

    fn baggage_edits<'a>(&self, inject: Option<GroupName>, s: &'a Settings, apply: &mut impl FnMut(Edit<'a>)) {
        let Some(key) = &s.baggage_key else { return };
        let stamp = inject.filter(|_| s.inject_baggage);
        if stamp.is_none() && self.baggage_strip == BaggageStrip::None {
            return;
        }
        // A loop, not `filter_map(..).collect()`: fewer generic adapters in the wasm.
        let mut kept: Vec<Vec<u8>> = Vec::with_capacity(self.baggage.len());
        for v in &self.baggage {
            let strip = stamp.is_some()
                || self.baggage_strip == BaggageStrip::All
                || (self.baggage_strip == BaggageStrip::Invalid && group::from_baggage(v, key) == Lookup::Invalid);
            let value = if strip { group::baggage_without(v, key) } else { Some(v.to_vec()) };
            kept.extend(value);
        }
        match stamp {
            Some(g) => {
                let joined = crate::text::join_bytes(&kept, b",");
                let current = (!joined.is_empty()).then_some(joined.as_slice());
                apply(Edit::Set("baggage", Cow::Owned(group::baggage_with(current, key, g.as_str()))));
            }
            None => {
                apply(Edit::Remove("baggage"));
                for v in kept {
                    apply(Edit::Add("baggage", Cow::Owned(v)));
                }
            }
        }
    }

    /// The `x-isogroup-served` annotation for the response (SPEC step 6):
    /// only for a routed request, with `annotate_response` on, to a peer
    /// that may see isogroup response headers.
    pub fn served(&self, decision: Option<&Decision<'_>>, s: &Settings) -> Option<Served> {
        match decision {
            Some(Decision::Route(r)) if s.annotate_response && self.trusted => {
                Some(Served { service: r.service_id, serving: r.serving_id, fallback: r.fallback })
            }
            _ => None,
        }
    }

    pub fn local_reply(&self, f: &FailFast<'_>, s: &Settings) -> LocalReply {
        LocalReply {
            status: s.failfast_status,
            grpc: self.grpc,
            service: f.service.to_owned(),
            headers: vec![("x-isogroup-failfast", f.service.to_owned()), ("content-type", "application/json".into())],
            body: failfast_body(f),
        }
    }

    /// Whether this request's group should be remembered for its trace (the
    /// inbound side of the propagation assist).
    pub fn remember(&self) -> Option<(&'h [u8], GroupName)> {
        Some((self.trace_id?, self.group?))
    }
}

/// `{"error":"isogroup_unavailable","service":…,"group":…,"reason":…}`
pub fn failfast_body(f: &FailFast<'_>) -> String {
    // Service and group are validated names: no JSON escaping needed.
    cat!(
        r#"{"error":"isogroup_unavailable","service":""#,
        f.service,
        r#"","group":""#,
        f.group,
        r#"","reason":""#,
        f.reason.as_str(),
        r#""}"#
    )
}

/// An `x-isogroup-served` annotation as ids in the table the request was
/// decided against: kept until the response without a `String` per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Served {
    service: ServiceId,
    serving: GroupId,
    fallback: bool,
}

impl Served {
    /// Appends the value, `<service>=<group>[;fallback]`, to `out`; `table`
    /// is the one the request was decided against.
    pub fn write(self, table: &Table, out: &mut Vec<u8>) {
        out.extend_from_slice(table.service_name(self.service).as_bytes());
        out.push(b'=');
        out.extend_from_slice(table.group_name(self.serving).as_bytes());
        if self.fallback {
            out.extend_from_slice(b";fallback");
        }
    }
}

/// `x-isogroup-decision`: the steps in one line, for humans.
pub fn explain(inc: &Incoming<'_>, decision: Option<&Decision<'_>>, table_version: Option<u64>, vm: &str) -> String {
    let group = inc.group.as_ref().map_or("-", GroupName::as_str);
    let table = table_version.map_or("none".to_owned(), |v| crate::text::text_of(&v));
    let outcome = match decision {
        None => "passthrough (no table yet)".to_owned(),
        Some(Decision::PassThrough) => "passthrough (service not in table)".to_owned(),
        Some(Decision::Route(r)) => {
            cat!(
                "service=",
                r.service,
                " serving=",
                r.serving,
                " cluster=",
                r.cluster,
                if r.fallback { " fallback" } else { "" }
            )
        }
        Some(Decision::FailFast(f)) => cat!("service=", f.service, " failfast reason=", f.reason.as_str()),
    };
    cat!(
        "vm=",
        vm,
        "; table=",
        table,
        "; group=",
        group,
        " (",
        inc.source.describe(),
        "); invalid=",
        inc.invalid,
        "; ",
        outcome
    )
}

#[cfg(test)]
mod edge_order_tests;
#[cfg(test)]
mod tests;
