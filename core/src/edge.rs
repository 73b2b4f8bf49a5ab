//! Edge mode (ingress gateways): ordered rules that map a request to a group,
//! and which peers may bring their own group.

#[allow(unused_imports)]
use crate::prelude::*;

use core::net::IpAddr;

use crate::cat;
use crate::cidr::Cidr;
use crate::error::ConfigError;
use crate::group::{self, GroupName};
use crate::json::Quoted;
use crate::regex::{Regex, Scratch};
use crate::table::Table;

#[derive(Debug, Clone, Default)]
#[cfg_attr(feature = "serde", derive(serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(deny_unknown_fields))]
pub struct RawEdge {
    /// Peers whose own group, baggage member, cookie and strict header count.
    #[cfg_attr(feature = "serde", serde(default))]
    pub trusted_cidrs: Vec<String>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub default_group: Option<String>,
    #[cfg_attr(feature = "serde", serde(default))]
    pub rules: Vec<RawRule>,
    /// Take the table's source bindings and `rules` (default false: a
    /// gateway fed by a shared companion stays pinned to its own config).
    #[cfg_attr(feature = "serde", serde(default))]
    pub runtime: bool,
    /// The path this filter answers joins on (`/.isogroup/join`); also turns
    /// on the `isogroup-lane` cookie. Default off.
    #[cfg_attr(feature = "serde", serde(default))]
    pub join_path: Option<String>,
}

/// The cookie a join sets: any peer may pick a lane with it.
pub const LANE_COOKIE: &str = "isogroup-lane";

/// One rule: exactly one matcher (`header`/`cookie`/`query` with `values`,
/// `prefix` or `regex`; `source_cidrs`; or `percent` with `hash_header`), and
/// `group` or (header, cookie and query rules only) `group_from_value`.
/// The same schema serves the plugin's `edge.rules` and a table's `rules`;
/// read by hand (`read.rs`), strict unless a companion's table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct RawRule {
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub header: Option<String>,
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub cookie: Option<String>,
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub query: Option<String>,
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub values: Option<Vec<String>>,
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub prefix: Option<String>,
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub regex: Option<String>,
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub source_cidrs: Option<Vec<String>>,
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub percent: Option<u32>,
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub hash_header: Option<String>,
    /// Required unless `group_from_value`.
    #[cfg_attr(feature = "serde", serde(skip_serializing_if = "Option::is_none"))]
    pub group: Option<String>,
    /// The matched value is the group, when the table knows it.
    #[cfg_attr(feature = "serde", serde(default, skip_serializing_if = "is_false"))]
    pub group_from_value: bool,
}

#[cfg(feature = "serde")]
fn is_false(b: &bool) -> bool {
    !*b
}

#[derive(Debug)]
pub struct Edge {
    trusted: Vec<Cidr>,
    pub default_group: Option<GroupName>,
    rules: Rules,
    pub runtime: bool,
    pub join_path: Option<Box<str>>,
}

/// A compiled rule list (the plugin's `edge.rules` or a table's `rules`).
#[derive(Debug, Default)]
pub struct Rules(Vec<Rule>);

#[derive(Debug)]
struct Rule {
    input: Input,
    test: Test,
    group: RuleGroup,
}

#[derive(Debug, Clone, Copy)]
enum RuleGroup {
    Fixed(GroupName),
    /// `group_from_value`: the matched value, if the table knows it.
    FromValue,
}

#[derive(Debug)]
enum Input {
    Header(String),
    Cookie(String),
    Query(String),
    Source(Vec<Cidr>),
    /// Sticky bucket of the named header's hash: owns `[from, to)` of 100.
    Percent {
        header: String,
        from: u64,
        to: u64,
    },
}

#[derive(Debug)]
enum Test {
    Always,
    Values(Vec<String>),
    Prefix(String),
    Regex(Regex),
}

/// What the rules look at, already read from the request.
pub trait EdgeRequest {
    fn header(&self, name: &str) -> Option<&[u8]>;
    fn cookie(&self, name: &str) -> Option<&[u8]>;
    /// The percent-decoded value of query parameter `name`.
    fn query(&self, name: &str) -> Option<Vec<u8>>;
    fn peer(&self) -> Option<IpAddr>;
}

impl Edge {
    pub fn compile(raw: &RawEdge) -> Result<Edge, ConfigError> {
        let trusted = cidrs("edge.trusted_cidrs", &raw.trusted_cidrs)?;
        let default_group = match &raw.default_group {
            None => None,
            Some(g) => Some(GroupName::new(g.as_bytes()).ok_or_else(|| {
                invalid("edge.default_group", cat!(Quoted(g), " is not a valid group name (DNS-1123 label)"))
            })?),
        };
        let rules = Rules::compile("edge.rules", &raw.rules, true)
            .map_err(|(field, why)| ConfigError::Invalid { field, why })?;
        let join_path = match &raw.join_path {
            None => None,
            Some(p) if is_join_path(p) => Some(p.as_str().into()),
            Some(p) => {
                return Err(invalid(
                    "edge.join_path",
                    cat!(Quoted(p), " is not an absolute path (starts with one '/', printable ASCII, no '?' or '#')"),
                ))
            }
        };
        Ok(Edge { trusted, default_group, rules, runtime: raw.runtime, join_path })
    }

    /// Whether the rules, the trust check or (with `runtime`) `table`'s
    /// bindings and rules need the peer address: one host call per request,
    /// so only when they do.
    pub fn needs_peer(&self, table: Option<&Table>) -> bool {
        let runtime = self.runtime && table.is_some_and(|t| !t.sources().is_empty() || t.rules().need_peer());
        !self.trusted.is_empty() || self.rules.need_peer() || runtime
    }

    pub fn trusts(&self, peer: Option<IpAddr>) -> bool {
        peer.is_some_and(|ip| self.trusted.iter().any(|c| c.contains(ip)))
    }

    /// The first matching rule: (its index, its group). `known` says whether
    /// a value names a group the table knows (for `group_from_value`).
    pub fn choose(
        &self,
        req: &impl EdgeRequest,
        known: impl Fn(&str) -> bool,
        scratch: &mut Scratch,
    ) -> Option<(usize, GroupName)> {
        self.rules.choose(req, known, scratch)
    }
}

/// Most rules in one list (the plugin's or a table's): each request may
/// try them all.
pub const MAX_RULES: usize = 256;

impl Rules {
    /// Compiles a rule list; an error is (the field, e.g. `rules[2].percent`,
    /// and why). Percent rules of one list share one 0–100 range. Without
    /// `keep` every rule is checked the same but none is kept.
    pub fn compile(field: &str, raw: &[RawRule], keep: bool) -> Result<Rules, (String, String)> {
        let mut rules = Vec::new();
        let mut percent_used = 0u64;
        for (i, r) in raw.iter().enumerate() {
            if i == MAX_RULES {
                return Err(rule_error(field.into(), "more than 256 rules"));
            }
            let rule = compile_rule(&cat!(field, "[", i, "]"), r, &mut percent_used)?;
            if keep {
                rules.push(rule);
            }
        }
        Ok(Rules(rules))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a rule matches on the peer address.
    pub fn need_peer(&self) -> bool {
        self.0.iter().any(|r| matches!(r.input, Input::Source(_)))
    }

    /// The first matching rule: (its index, its group); a regex runs in
    /// `scratch`.
    pub fn choose(
        &self,
        req: &impl EdgeRequest,
        known: impl Fn(&str) -> bool,
        scratch: &mut Scratch,
    ) -> Option<(usize, GroupName)> {
        self.0.iter().enumerate().find_map(|(i, r)| Some((i, r.matches(req, &known, scratch)?)))
    }

    /// The first rule that needs nothing but the address (`source_cidrs`)
    /// matching `ip`: (its index, its group). Value rules never match here.
    pub fn choose_by_address(&self, ip: IpAddr) -> Option<(usize, GroupName)> {
        self.0.iter().enumerate().find_map(|(i, r)| match (&r.input, r.group) {
            (Input::Source(ranges), RuleGroup::Fixed(g)) if ranges.iter().any(|c| c.contains(ip)) => Some((i, g)),
            _ => None,
        })
    }
}

impl Rule {
    fn matches(
        &self,
        req: &impl EdgeRequest,
        known: &impl Fn(&str) -> bool,
        scratch: &mut Scratch,
    ) -> Option<GroupName> {
        let mut hit = |v: &[u8]| self.test.accepts(v, scratch).then(|| self.group_of(v, known)).flatten();
        match &self.input {
            Input::Header(name) => hit(req.header(name)?),
            Input::Cookie(name) => hit(req.cookie(name)?),
            Input::Query(name) => hit(&req.query(name)?),
            Input::Source(ranges) => {
                let ip = req.peer()?;
                ranges.iter().any(|c| c.contains(ip)).then(|| self.group_of(b"", known)).flatten()
            }
            Input::Percent { header, from, to } => {
                let v = req.header(header)?;
                (*from..*to).contains(&bucket(v)).then(|| self.group_of(v, known)).flatten()
            }
        }
    }

    fn group_of(&self, value: &[u8], known: &impl Fn(&str) -> bool) -> Option<GroupName> {
        match self.group {
            RuleGroup::Fixed(g) => Some(g),
            RuleGroup::FromValue => GroupName::new(value.trim_ascii()).filter(|g| known(g.as_str())),
        }
    }
}

impl Test {
    fn accepts(&self, value: &[u8], scratch: &mut Scratch) -> bool {
        match self {
            Test::Always => true,
            Test::Values(vs) => vs.iter().any(|v| v.as_bytes() == value),
            Test::Prefix(p) => value.starts_with(p.as_bytes()),
            Test::Regex(re) => core::str::from_utf8(value).is_ok_and(|v| re.is_match_with(v, scratch)),
        }
    }
}

fn is_join_path(p: &str) -> bool {
    let b = p.as_bytes();
    b.first() == Some(&b'/')
        && b.get(1) != Some(&b'/')
        && b.iter().all(|c| c.is_ascii_graphic() && !matches!(c, b'?' | b'#' | b'\\'))
}

/// FNV-1a 64-bit, as the SPEC fixes it, so `explain` and `/v1/resolve` agree.
/// Eight bytes a round from one load (a trace id's 32 digits in four): the
/// filter samples every traced request by it.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let (words, rest) = bytes.as_chunks::<8>();
    let mut h = 0xcbf2_9ce4_8422_2325;
    for word in words {
        let w = u64::from_le_bytes(*word);
        h = (h ^ (w & 0xff)).wrapping_mul(PRIME);
        h = (h ^ ((w >> 8) & 0xff)).wrapping_mul(PRIME);
        h = (h ^ ((w >> 16) & 0xff)).wrapping_mul(PRIME);
        h = (h ^ ((w >> 24) & 0xff)).wrapping_mul(PRIME);
        h = (h ^ ((w >> 32) & 0xff)).wrapping_mul(PRIME);
        h = (h ^ ((w >> 40) & 0xff)).wrapping_mul(PRIME);
        h = (h ^ ((w >> 48) & 0xff)).wrapping_mul(PRIME);
        h = (h ^ (w >> 56)).wrapping_mul(PRIME);
    }
    rest.iter().fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// A sticky bucket in `0..100`.
pub fn bucket(value: &[u8]) -> u64 {
    fnv1a(value) % 100
}

fn invalid(field: impl Into<String>, why: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field: field.into(), why: why.into() }
}

fn cidrs(field: &str, list: &[String]) -> Result<Vec<Cidr>, ConfigError> {
    cidr_list(field, list).map_err(|(field, why)| invalid(field, why))
}

fn cidr_list(field: &str, list: &[String]) -> Result<Vec<Cidr>, RuleError> {
    // A loop, not `collect::<Result<Vec<_>, _>>()`: its adapters cost the wasm ~1 KB.
    let mut out = Vec::with_capacity(list.len());
    for (i, c) in list.iter().enumerate() {
        out.push(Cidr::parse(c).map_err(|why| rule_error(cat!(field, "[", i, "]"), cat!(Quoted(c), ": ", why)))?);
    }
    Ok(out)
}

fn header_name(field: String, name: &str) -> Result<String, RuleError> {
    let ok = !name.is_empty()
        && name
            .as_bytes()
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(rule_error(field, cat!(Quoted(name), " is not a lower-case header name")))
    }
}

/// (field, why): a rule error before it is wrapped for the config or a table.
type RuleError = (String, String);

fn rule_error(field: String, why: impl Into<String>) -> RuleError {
    (field, why.into())
}

fn compile_rule(rule: &str, r: &RawRule, percent_used: &mut u64) -> Result<Rule, RuleError> {
    let at = |f: &str| cat!(rule, ".", f);
    let keyed = r.header.is_some() || r.cookie.is_some() || r.query.is_some();
    let group =
        match (&r.group, r.group_from_value) {
            (Some(_), true) => return Err(rule_error(at("group"), "group and group_from_value exclude each other")),
            (None, true) if !keyed => {
                return Err(rule_error(at("group_from_value"), "goes with a header, cookie or query rule"));
            }
            (None, true) => RuleGroup::FromValue,
            (None, false) => return Err(rule_error(at("group"), "missing (or set group_from_value)")),
            (Some(g), false) => RuleGroup::Fixed(GroupName::new(g.as_bytes()).ok_or_else(|| {
                rule_error(at("group"), cat!(Quoted(g), " is not a valid group name (DNS-1123 label)"))
            })?),
        };
    let inputs =
        [r.header.is_some(), r.cookie.is_some(), r.query.is_some(), r.source_cidrs.is_some(), r.percent.is_some()];
    if inputs.iter().filter(|&&x| x).count() != 1 {
        return Err(rule_error(rule.into(), "needs exactly one of header, cookie, query, source_cidrs, percent"));
    }
    let tests = [r.values.is_some(), r.prefix.is_some(), r.regex.is_some()].iter().filter(|&&x| x).count();
    if keyed && (tests > 1 || (tests == 0 && !r.group_from_value)) {
        return Err(rule_error(
            rule.into(),
            "a header, cookie or query rule needs exactly one of values, prefix, regex (at most one with group_from_value)",
        ));
    }
    if !keyed && tests != 0 {
        return Err(rule_error(rule.into(), "values, prefix and regex go with header, cookie or query"));
    }
    if r.hash_header.is_some() && r.percent.is_none() {
        return Err(rule_error(at("hash_header"), "goes with percent"));
    }
    let test = match (&r.values, &r.prefix, &r.regex) {
        (Some(v), _, _) if v.is_empty() => return Err(rule_error(at("values"), "the list is empty")),
        (Some(v), _, _) => Test::Values(v.clone()),
        (_, Some(p), _) => Test::Prefix(p.clone()),
        (_, _, Some(re)) => {
            Test::Regex(Regex::new(re).map_err(|e| rule_error(at("regex"), cat!(Quoted(re), ": ", e)))?)
        }
        _ => Test::Always,
    };
    let input = if let Some(h) = &r.header {
        Input::Header(header_name(at("header"), h)?)
    } else if let Some(c) = &r.cookie {
        Input::Cookie(c.clone())
    } else if let Some(q) = &r.query {
        Input::Query(q.clone())
    } else if let Some(list) = &r.source_cidrs {
        if list.is_empty() {
            return Err(rule_error(at("source_cidrs"), "the list is empty"));
        }
        Input::Source(cidr_list(&at("source_cidrs"), list)?)
    } else {
        let p = u64::from(r.percent.unwrap_or(0));
        let header = r
            .hash_header
            .as_deref()
            .ok_or_else(|| rule_error(at("hash_header"), "a percent rule needs hash_header"))?;
        let from = *percent_used;
        *percent_used += p;
        if *percent_used > 100 {
            return Err(rule_error(at("percent"), cat!("percent rules add up to ", *percent_used, " (at most 100)")));
        }
        Input::Percent { header: header_name(at("hash_header"), header)?, from, to: *percent_used }
    };
    Ok(Rule { input, test, group })
}

/// The value of query parameter `name` in a `:path`, percent-decoded
/// (`+` as space, as forms send it).
pub fn query_param(path: &[u8], name: &str) -> Option<Vec<u8>> {
    let (_, query) = crate::text::split_byte(path, b'?')?;
    let query = query.split(|&b| b == b'#').next().unwrap_or(query);
    query.split(|&b| b == b'&').find_map(|pair| {
        let (k, v) = crate::text::split_byte(pair, b'=').unwrap_or((pair, b""));
        (k == name.as_bytes()).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'%' if i + 2 < v.len() && hex_pair(v[i + 1], v[i + 2]).is_some() => {
                out.push(hex_pair(v[i + 1], v[i + 2]).unwrap_or(b'%'));
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

fn hex_pair(hi: u8, lo: u8) -> Option<u8> {
    Some(group::hex(hi)? << 4 | group::hex(lo)?)
}

/// A `cookie` header without cookie `name` (other cookies kept); `None` if
/// nothing is left.
pub fn cookie_without(header: &[u8], name: &str) -> Option<Vec<u8>> {
    let mut kept: Vec<&[u8]> = Vec::new();
    for c in header.split(|&b| b == b';').map(<[u8]>::trim_ascii) {
        if !c.is_empty() && group::cookie_value(c, name).is_none() {
            kept.push(c);
        }
    }
    (!kept.is_empty()).then(|| crate::text::join_bytes(&kept, b"; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Req {
        headers: Vec<(&'static str, &'static str)>,
        cookie: &'static str,
        path: &'static str,
        peer: Option<&'static str>,
    }

    impl EdgeRequest for Req {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.headers.iter().find(|(k, _)| *k == name).map(|(_, v)| v.as_bytes())
        }
        fn cookie(&self, name: &str) -> Option<&[u8]> {
            group::cookie_value(self.cookie.as_bytes(), name)
        }
        fn query(&self, name: &str) -> Option<Vec<u8>> {
            query_param(self.path.as_bytes(), name)
        }
        fn peer(&self) -> Option<IpAddr> {
            self.peer.map(|p| p.parse().unwrap())
        }
    }

    fn req(headers: Vec<(&'static str, &'static str)>) -> Req {
        Req { headers, cookie: "", path: "/", peer: None }
    }

    fn edge(json: &str) -> Result<Edge, String> {
        let raw: RawEdge = serde_json::from_str(json).map_err(|e| e.to_string())?;
        Edge::compile(&raw).map_err(|e| e.to_string())
    }

    const SPEC_EXAMPLE: &str = r#"{
      "trusted_cidrs": ["10.1.0.0/16"],
      "rules": [
        {"header": "x-user", "values": ["alice", "bob"], "group": "feature-1"},
        {"header": "x-user", "prefix": "qa-", "group": "qa"},
        {"header": "x-user", "regex": "^dev-[a-z]+$", "group": "dev"},
        {"cookie": "lane", "values": ["blue"], "group": "feature-1"},
        {"query": "lane", "values": ["green"], "group": "green"},
        {"source_cidrs": ["192.0.2.0/24"], "group": "team-a"},
        {"percent": 10, "hash_header": "x-id", "group": "canary"}
      ]
    }"#;

    #[test]
    fn every_rule_kind() {
        let e = edge(SPEC_EXAMPLE).unwrap();
        let chosen = |r: Req| e.choose(&r, |_| false, &mut Scratch::default()).map(|(i, g)| format!("{i}:{g}"));
        let cases: Vec<(Req, Option<&str>)> = vec![
            (req(vec![("x-user", "bob")]), Some("0:feature-1")),
            (req(vec![("x-user", "qa-7")]), Some("1:qa")),
            (req(vec![("x-user", "dev-joe")]), Some("2:dev")),
            (req(vec![("x-user", "dev-Joe")]), None),
            (req(vec![("x-user", "carol")]), None),
            (Req { cookie: "a=1; lane=blue", ..req(vec![]) }, Some("3:feature-1")),
            (Req { cookie: "lane=red", ..req(vec![]) }, None),
            (Req { path: "/p?x=1&lane=gr%65en", ..req(vec![]) }, Some("4:green")),
            (Req { path: "/p?lane=blue", ..req(vec![]) }, None),
            (Req { peer: Some("192.0.2.9"), ..req(vec![]) }, Some("5:team-a")),
            (Req { peer: Some("198.51.100.1"), ..req(vec![]) }, None),
            // first match wins
            (Req { cookie: "lane=blue", ..req(vec![("x-user", "qa-1")]) }, Some("1:qa")),
            // a missing hash header never matches
            (req(vec![]), None),
        ];
        for (r, want) in cases {
            let desc = format!("{:?} {:?} {:?} {:?}", r.headers, r.cookie, r.path, r.peer);
            assert_eq!(chosen(r).as_deref(), want, "{desc}");
        }
        assert!(e.needs_peer(None));
        assert!(e.trusts(Some("10.1.200.3".parse().unwrap())));
        assert!(!e.trusts(Some("10.2.0.1".parse().unwrap())));
        assert!(!e.trusts(None));
    }

    #[test]
    fn a_regex_finds_unless_anchored() {
        let e = edge(
            r#"{"rules":[{"header":"x-user","regex":"dev-[0-9]+","group":"dev"},
                {"header":"x-team","regex":"^qa$","group":"qa"},
                {"cookie":"lane","regex":"blue","group":"blue"}]}"#,
        )
        .unwrap();
        let cases: Vec<(Req, Option<&str>)> = vec![
            // unanchored: a match anywhere in the value
            (req(vec![("x-user", "dev-7")]), Some("dev")),
            (req(vec![("x-user", "alice-dev-42-box")]), Some("dev")),
            (req(vec![("x-user", "x dev-1")]), Some("dev")),
            (req(vec![("x-user", "dev-")]), None),
            (req(vec![("x-user", "DEV-1")]), None),
            (Req { cookie: "lane=light-blue-2", ..req(vec![]) }, Some("blue")),
            // anchored: the whole value only
            (req(vec![("x-team", "qa")]), Some("qa")),
            (req(vec![("x-team", "qa-1")]), None),
            (req(vec![("x-team", "the-qa")]), None),
        ];
        for (r, want) in cases {
            let desc = format!("{:?} {:?}", r.headers, r.cookie);
            assert_eq!(
                e.choose(&r, |_| false, &mut Scratch::default()).map(|(_, g)| g.to_string()).as_deref(),
                want,
                "{desc}"
            );
        }
        // a value that is not UTF-8 matches no regex
        struct Raw;
        impl EdgeRequest for Raw {
            fn header(&self, name: &str) -> Option<&[u8]> {
                (name == "x-user").then_some(&b"dev-1\xff"[..])
            }
            fn cookie(&self, _: &str) -> Option<&[u8]> {
                None
            }
            fn query(&self, _: &str) -> Option<Vec<u8>> {
                None
            }
            fn peer(&self) -> Option<IpAddr> {
                None
            }
        }
        assert_eq!(e.choose(&Raw, |_| true, &mut Scratch::default()), None);
    }

    #[test]
    fn percent_rules_are_sticky_cumulative_buckets() {
        let e = edge(r#"{"rules":[{"percent":10,"hash_header":"x-id","group":"a"},{"percent":30,"hash_header":"x-id","group":"b"}]}"#).unwrap();
        let mut counts = [0u32; 3];
        for n in 0..10_000 {
            let id = format!("user-{n}");
            let r = Req { headers: vec![], cookie: "", path: "/", peer: None };
            let want = match bucket(id.as_bytes()) {
                0..=9 => Some("a"),
                10..=39 => Some("b"),
                _ => None,
            };
            struct One<'a>(&'a [u8], Req);
            impl EdgeRequest for One<'_> {
                fn header(&self, name: &str) -> Option<&[u8]> {
                    (name == "x-id").then_some(self.0)
                }
                fn cookie(&self, n: &str) -> Option<&[u8]> {
                    self.1.cookie(n)
                }
                fn query(&self, n: &str) -> Option<Vec<u8>> {
                    self.1.query(n)
                }
                fn peer(&self) -> Option<IpAddr> {
                    None
                }
            }
            let got = e.choose(&One(id.as_bytes(), r), |_| false, &mut Scratch::default()).map(|(_, g)| g.to_string());
            assert_eq!(got.as_deref(), want, "{id}");
            counts[match got.as_deref() {
                Some("a") => 0,
                Some("b") => 1,
                _ => 2,
            }] += 1;
        }
        // close to the weights over many distinct ids
        assert!((900..1100).contains(&counts[0]), "{counts:?}");
        assert!((2800..3200).contains(&counts[1]), "{counts:?}");
        // FNV-1a 64 reference values
        assert_eq!(fnv1a(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a(b"foobar"), 0x85944171f73967e8);
        // Eight bytes a round against the byte-at-a-time definition, every
        // length around the rounds and random bytes.
        let bytewise = |b: &[u8]| {
            b.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3))
        };
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for len in 0..80 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            assert_eq!(fnv1a(&bytes), bytewise(&bytes), "{len} bytes");
        }
    }

    #[test]
    fn config_errors_name_the_rule_and_field() {
        let cases: &[(&str, &str)] = &[
            (
                r#"{"rules":[{"header":"x","cookie":"c","values":["v"],"group":"g"}]}"#,
                "edge.rules[0]: needs exactly one of header, cookie, query, source_cidrs, percent",
            ),
            (
                r#"{"rules":[{"group":"g"}]}"#,
                "edge.rules[0]: needs exactly one of header, cookie, query, source_cidrs, percent",
            ),
            (
                r#"{"rules":[{"header":"x","group":"g"}]}"#,
                "edge.rules[0]: a header, cookie or query rule needs exactly one of values, prefix, regex",
            ),
            (
                r#"{"rules":[{"header":"x","values":["a"],"prefix":"b","group_from_value":true}]}"#,
                "edge.rules[0]: a header, cookie or query rule needs exactly one of values, prefix, regex",
            ),
            (
                r#"{"rules":[{"source_cidrs":["10.0.0.0/8"],"prefix":"b","group":"g"}]}"#,
                "edge.rules[0]: values, prefix and regex go with header, cookie or query",
            ),
            (
                r#"{"rules":[{"header":"X-User","values":["a"],"group":"g"}]}"#,
                r#"edge.rules[0].header: "X-User" is not a lower-case header name"#,
            ),
            (r#"{"rules":[{"header":"x","values":[],"group":"g"}]}"#, "edge.rules[0].values: the list is empty"),
            (r#"{"rules":[{"header":"x","regex":"(","group":"g"}]}"#, "edge.rules[0].regex: \"(\": "),
            (
                r#"{"rules":[{"header":"x","values":["a"],"group":"G"}]}"#,
                r#"edge.rules[0].group: "G" is not a valid group name (DNS-1123 label)"#,
            ),
            (
                r#"{"rules":[{"source_cidrs":["10.0.0.0/40"],"group":"g"}]}"#,
                r#"edge.rules[0].source_cidrs[0]: "10.0.0.0/40": prefix length too long for the address family"#,
            ),
            (r#"{"rules":[{"source_cidrs":[],"group":"g"}]}"#, "edge.rules[0].source_cidrs: the list is empty"),
            (
                r#"{"rules":[{"percent":60,"hash_header":"x","group":"a"},{"percent":41,"hash_header":"x","group":"b"}]}"#,
                "edge.rules[1].percent: percent rules add up to 101 (at most 100)",
            ),
            (
                r#"{"rules":[{"percent":10,"group":"a"}]}"#,
                "edge.rules[0].hash_header: a percent rule needs hash_header",
            ),
            (
                r#"{"rules":[{"header":"x","values":["a"],"hash_header":"h","group":"a"}]}"#,
                "edge.rules[0].hash_header: goes with percent",
            ),
            (r#"{"trusted_cidrs":["nope"]}"#, r#"edge.trusted_cidrs[0]: "nope": not an IP address"#),
            (r#"{"default_group":"Nope"}"#, r#"edge.default_group: "Nope" is not a valid group name (DNS-1123 label)"#),
        ];
        for (json, want) in cases {
            let got = edge(json).err().unwrap_or_else(|| "accepted".into());
            assert!(got.starts_with(want), "{json}\n got: {got}\nwant: {want}");
        }
        assert!(edge(SPEC_EXAMPLE).is_ok());
    }

    #[test]
    fn a_rule_list_is_capped() {
        let rule = r#"{"header":"x","values":["a"],"group":"g"}"#;
        let list = |n: usize| format!(r#"{{"rules":[{}]}}"#, vec![rule; n].join(","));
        assert!(edge(&list(256)).is_ok());
        assert_eq!(edge(&list(257)).err().as_deref(), Some("edge.rules: more than 256 rules"));
    }

    #[test]
    fn query_and_cookie_helpers() {
        assert_eq!(query_param(b"/a?lane=blue", "lane").as_deref(), Some(&b"blue"[..]));
        assert_eq!(query_param(b"/a?x=1&lane=a%20b+c#frag", "lane").as_deref(), Some(&b"a b c"[..]));
        assert_eq!(query_param(b"/a?lane", "lane").as_deref(), Some(&b""[..]));
        assert_eq!(query_param(b"/a?lanes=x", "lane"), None);
        assert_eq!(query_param(b"/a", "lane"), None);
        assert_eq!(query_param(b"/a?lane=%zz", "lane").as_deref(), Some(&b"%zz"[..]));
        assert_eq!(cookie_without(b"a=1; isogroup=x; b=2", "isogroup").as_deref(), Some(&b"a=1; b=2"[..]));
        assert_eq!(cookie_without(b"isogroup=x", "isogroup"), None);
    }
}
