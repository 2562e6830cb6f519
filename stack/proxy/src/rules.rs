//! L7 rules (WAF-lite): ordered lists, first match wins — a listener's,
//! evaluated in the request phase before routing, and a route's, evaluated
//! once routing chose it (see `proxy::choose_route`). A rule matches on the client's
//! address, the host, method, path, header, query-argument and cookie
//! values and the verified client certificate's CN (all given conditions
//! must hold); it allows (routing goes on, later rules are skipped),
//! denies with a configured answer, or redirects to a templated location,
//! and may tag the request (access log `tag`, counters per rule).
//!
//! Compiled once per snapshot: the path regexes of a listener's rules form
//! one `RegexSet`, run once per request into a per-thread scratch of
//! flags. An evaluation allocates nothing (a redirect builds its answer).

use std::cell::RefCell;
use std::net::IpAddr;
use std::sync::Arc;

use regex::bytes::{Regex, RegexSet};

use crate::http::{Headers, RequestView};
use crate::jwt::Claims;
use crate::route::{DirectResponse, host_matches};
use crate::rule_index::{self, RuleIndex};

/// An address prefix (`10.0.0.0/8`, `2001:db8::/32`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    len: u8,
}

impl Cidr {
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u8 {
        self.len
    }

    /// None when `len` is longer than the address.
    pub fn new(addr: IpAddr, len: u8) -> Option<Self> {
        let max = if addr.is_ipv4() { 32 } else { 128 };
        (len <= max).then_some(Self { addr, len })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// What a header, query argument or cookie must be.
#[derive(Debug, Clone)]
pub enum ValueTest {
    Present,
    Absent,
    /// Exactly this value (headers: trimmed; query: raw, not decoded).
    Equals(String),
    /// The regex finds a match in the value (unanchored, as a WAF pattern;
    /// on the bytes, so a value that is not UTF-8 is searched too).
    Regex(Regex),
}

impl ValueTest {
    fn value(&self, v: Option<&[u8]>) -> bool {
        match self {
            ValueTest::Present => v.is_some(),
            ValueTest::Absent => v.is_none(),
            ValueTest::Equals(want) => v == Some(want.as_bytes()),
            ValueTest::Regex(r) => v.is_some_and(|b| r.is_match(b)),
        }
    }

    /// Over repeated values (a back end may read any of them): for a
    /// deny or redirect any one may match; for an allow (`strict`) every
    /// one must, and one must be there. `Absent`: none is there.
    fn over<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>, strict: bool) -> bool {
        match self {
            ValueTest::Absent => values.next().is_none(),
            _ if strict => {
                let mut seen = false;
                values.all(|v| {
                    seen = true;
                    self.value(Some(v))
                }) && seen
            }
            _ => values.any(|v| self.value(Some(v))),
        }
    }

    fn headers(&self, name: &str, headers: Headers<'_>, strict: bool) -> bool {
        self.over(
            headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value.trim_ascii()),
            strict,
        )
    }
}

/// How a rule matches the path (the target without `?query`).
#[derive(Debug, Clone)]
pub enum PathTest {
    Exact(String),
    Prefix(String),
    /// Must match the whole path; compiled into the listener's `RegexSet`.
    Regex(String),
}

/// The conditions of a rule; every one given must hold (an empty list or
/// `None` holds for every request).
#[derive(Debug, Clone, Default)]
pub struct RuleMatch {
    /// The client's address is in one of these.
    pub sources: Vec<Cidr>,
    /// Exact host (case-insensitive) or `*.suffix`.
    pub host: Option<String>,
    /// One of these methods.
    pub methods: Vec<String>,
    pub path: Option<PathTest>,
    pub headers: Vec<(String, ValueTest)>,
    pub query: Vec<(String, ValueTest)>,
    pub cookies: Vec<(String, ValueTest)>,
    /// The verified client certificate's subject CN (mTLS listeners).
    pub client_cert_cn: Option<String>,
    /// Claims of the verified bearer token (a listener's or route's
    /// `jwt`), each equal to this text (numbers and booleans as printed);
    /// without a verified token (none needed) a claim test fails.
    pub claims: Vec<(String, String)>,
}

/// What a matching rule does.
#[derive(Debug, Clone)]
pub enum RuleAction {
    /// Route as usual; later rules are not evaluated.
    Allow,
    /// Answer with this (not routed).
    Deny(Arc<DirectResponse>),
    /// Answer `status` (301, 302, 307 or 308) with `Location` made from
    /// the template.
    Redirect { status: u16, location: Template },
}

/// What an allow rule changes in the request it lets through and in its
/// response: header fields removed, then added (a "set" is both), the
/// path's prefix replaced, the pool. Shared by the requests it applies to
/// (an `Arc` clone, no allocation).
#[derive(Debug, Clone, Default)]
pub struct Rewrite {
    /// Client fields left out of the upstream request (lower case).
    pub request_remove: Vec<String>,
    pub request_add: Vec<(String, String)>,
    /// Upstream fields left out of the client's response (lower case).
    pub response_remove: Vec<String>,
    pub response_add: Vec<(String, String)>,
    /// A target starting with `.0` goes upstream starting with `.1`.
    pub path_prefix: Option<(String, String)>,
    /// Proxy to this pool instead of the route's (routes that proxy).
    pub pool: Option<Arc<crate::lb::Upstream>>,
}

impl Rewrite {
    pub fn strips_request(&self, name: &str) -> bool {
        self.request_remove
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    pub fn strips_response(&self, name: &str) -> bool {
        self.response_remove
            .iter()
            .any(|n| n.eq_ignore_ascii_case(name))
    }

    pub fn add_request(&self, lines: &mut crate::http::HeaderLines<'_>) {
        for (n, v) in &self.request_add {
            lines.add(n, v.as_bytes());
        }
    }

    pub fn add_response(&self, lines: &mut crate::http::HeaderLines<'_>) {
        for (n, v) in &self.response_add {
            lines.add(n, v.as_bytes());
        }
    }

    /// The upstream target: `target` with its prefix replaced (built in
    /// `buf`), or `target` as it is. Slashes where `to` meets the rest are
    /// one (`/v1//evil.example/x` with `/v1/` → `/` is `/evil.example/x`,
    /// never the authority-like `//evil.example/x`).
    pub fn target<'t>(&self, target: &'t str, buf: &'t mut String) -> &'t str {
        match &self.path_prefix {
            Some((from, to)) if starts_with_prefix(target, from) => {
                let rest = &target[from.len()..];
                buf.clear();
                buf.push_str(to);
                if buf.ends_with('/') {
                    // `\` too: some origins read `/\host` as `//host`.
                    buf.push_str(rest.trim_start_matches(['/', '\\']));
                } else {
                    buf.push_str(rest);
                }
                if !buf.starts_with('/') {
                    buf.insert(0, '/');
                }
                buf
            }
            _ => target,
        }
    }
}

/// Whether `target` begins with `from`. A `from` without a trailing slash
/// ends at a segment boundary: `/api` rewrites `/api/x` and `/api?q`, not
/// `/apix`.
fn starts_with_prefix(target: &str, from: &str) -> bool {
    target.starts_with(from)
        && (from.ends_with('/')
            || matches!(target.as_bytes().get(from.len()), None | Some(b'/' | b'?')))
}

/// What the allow rules that matched a request change: the listener's
/// rule's, then the route's. Both apply (a route rule's changes never undo
/// the listener's header hygiene): the fields either removes are left
/// out, the listener's additions come first unless the route's rule
/// removes that name, then the route's; for `rewrite_prefix` and `pool`
/// the route's rule wins when it sets one. Two `Arc` clones per request,
/// no allocation.
#[derive(Debug, Default)]
pub struct Rewrites {
    pub listener: Option<Arc<Rewrite>>,
    pub route: Option<Arc<Rewrite>>,
    /// What the listener's plugins changed (and their open contexts).
    pub plugin: crate::plugin_phase::PluginEdits,
    /// The listener's `Alt-Svc` (HTTP/3 on), for a response that did not
    /// come over HTTP/3.
    pub alt_svc: Option<Arc<str>>,
}

impl Rewrites {
    /// Forgets the changes (a plugin's open contexts stay until
    /// `plugin_phase::finish`).
    pub fn clear(&mut self) {
        self.listener = None;
        self.route = None;
        self.alt_svc = None;
        self.plugin.clear_edits();
    }

    /// Advertises HTTP/3 (RFC 7838), unless a rule strips `alt-svc`.
    pub fn add_alt_svc(&self, lines: &mut crate::http::HeaderLines<'_>) {
        if let Some(v) = &self.alt_svc
            && !self.strips_response("alt-svc")
        {
            lines.add("alt-svc", v.as_bytes());
        }
    }

    fn both(&self) -> impl Iterator<Item = &Rewrite> {
        self.listener.iter().chain(self.route.iter()).map(|r| &**r)
    }

    /// The pool a rule chose (the route's rule's first).
    pub fn pool(&self) -> Option<&Arc<crate::lb::Upstream>> {
        let route = self.route.as_ref().and_then(|r| r.pool.as_ref());
        route.or_else(|| self.listener.as_ref().and_then(|r| r.pool.as_ref()))
    }

    /// The upstream target: the route's rule's `rewrite_prefix` if it has
    /// one, else the listener's (see [`Rewrite::target`]).
    pub fn target<'t>(&self, target: &'t str, buf: &'t mut String) -> &'t str {
        let with_prefix = |r: &&Arc<Rewrite>| r.path_prefix.is_some();
        match self.route.as_ref().filter(with_prefix) {
            Some(r) => r.target(target, buf),
            None => match &self.listener {
                Some(l) => l.target(target, buf),
                None => target,
            },
        }
    }

    pub fn strips_request(&self, name: &str) -> bool {
        self.both().any(|r| r.strips_request(name)) || self.plugin.strips_request(name)
    }

    /// Whether a rule changes what goes upstream (pool, target, fields):
    /// such a request's response is not the route's plain one.
    pub fn changes_request(&self) -> bool {
        self.both().any(|r| {
            r.pool.is_some()
                || r.path_prefix.is_some()
                || !r.request_add.is_empty()
                || !r.request_remove.is_empty()
        }) || self.plugin.changes_request()
    }

    pub fn strips_response(&self, name: &str) -> bool {
        self.both().any(|r| r.strips_response(name)) || self.plugin.strips_response(name)
    }

    pub fn add_request(&self, lines: &mut crate::http::HeaderLines<'_>) {
        let route = self.route.as_deref();
        if let Some(l) = &self.listener {
            for (n, v) in &l.request_add {
                if !route.is_some_and(|r| r.strips_request(n)) {
                    lines.add(n, v.as_bytes());
                }
            }
        }
        if let Some(r) = route {
            r.add_request(lines);
        }
        self.plugin.add_request(lines);
    }

    pub fn add_response(&self, lines: &mut crate::http::HeaderLines<'_>) {
        let route = self.route.as_deref();
        if let Some(l) = &self.listener {
            for (n, v) in &l.response_add {
                if !route.is_some_and(|r| r.strips_response(n)) {
                    lines.add(n, v.as_bytes());
                }
            }
        }
        if let Some(r) = route {
            r.add_response(lines);
        }
        self.plugin.add_response(lines);
        self.add_alt_svc(lines);
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// Position in the whole table (all listeners, in order), set by
    /// `RouteTable::new`: the slot of its per-worker counter.
    pub id: usize,
    pub matches: RuleMatch,
    pub action: RuleAction,
    /// Written to the access record of a request the rule matched.
    pub tag: Option<String>,
    /// Allow rules: what changes in the request and its response.
    pub rewrite: Option<Arc<Rewrite>>,
    /// Index of its path regex in its list's set.
    path_slot: Option<usize>,
}

impl Rule {
    pub fn new(name: impl Into<String>, matches: RuleMatch, action: RuleAction) -> Self {
        Self {
            name: name.into(),
            id: 0,
            matches,
            action,
            tag: None,
            rewrite: None,
            path_slot: None,
        }
    }

    pub fn with_tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    pub fn with_rewrite(mut self, rewrite: Rewrite) -> Self {
        self.rewrite = Some(Arc::new(rewrite));
        self
    }

    pub(crate) fn path_slot(&self) -> Option<usize> {
        self.path_slot
    }

    /// Whether the rule applies. A request whose path normalizes to
    /// another (`%XX`, `//`, dot segments) is tested on both forms, as the
    /// router sees the raw one and the origin may resolve it: a deny or
    /// redirect applies when either form matches, an allow only when both
    /// do (and repeated values all match), so neither form slips past.
    fn applies(
        &self,
        req: &RequestView<'_>,
        client: IpAddr,
        claims: Option<&Claims>,
        forms: &[PathForm<'_>],
    ) -> bool {
        // Claims hold or not whatever the path's form.
        let claims_hold = self.matches.claims.iter().all(|(name, want)| {
            claims
                .and_then(|c| c.text(name))
                .is_some_and(|v| v == want.as_str())
        });
        if !claims_hold {
            return false;
        }
        let strict = matches!(self.action, RuleAction::Allow);
        let mut results = forms.iter().map(|f| self.holds(req, f, client, strict));
        if strict {
            results.all(|ok| ok)
        } else {
            results.any(|ok| ok)
        }
    }

    fn holds(
        &self,
        req: &RequestView<'_>,
        form: &PathForm<'_>,
        client: IpAddr,
        strict: bool,
    ) -> bool {
        let m = &self.matches;
        let path = form.path;
        (m.sources.is_empty() || m.sources.iter().any(|c| c.contains(client)))
            && m.host
                .as_deref()
                .is_none_or(|p| req.host.is_some_and(|h| host_matches(p, h)))
            && (m.methods.is_empty() || m.methods.iter().any(|x| x == req.method))
            && match (&m.path, self.path_slot) {
                (None, _) => true,
                (Some(PathTest::Exact(p)), _) => path == p.as_bytes(),
                (Some(PathTest::Prefix(p)), _) => path.starts_with(p.as_bytes()),
                (Some(PathTest::Regex(_)), Some(slot)) => form.hits[slot],
                (Some(PathTest::Regex(_)), None) => false,
            }
            && m.headers
                .iter()
                .all(|(n, t)| t.headers(n, req.headers, strict))
            && m.query
                .iter()
                .all(|(n, t)| t.over(query_values(req.query, n), strict))
            && m.cookies
                .iter()
                .all(|(n, t)| t.over(cookie_values(&req.headers, n), strict))
            && m.client_cert_cn
                .as_deref()
                .is_none_or(|cn| req.client_cn == Some(cn))
    }
}

/// A form of the request path and which of the set's regexes match it.
#[derive(Clone, Copy)]
struct PathForm<'a> {
    path: &'a [u8],
    hits: &'a [bool],
}

/// The raw values of every `name` argument (`name` alone: empty).
fn query_values<'a>(query: Option<&'a str>, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
    query.unwrap_or("").split('&').filter_map(move |pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then_some(v.as_bytes())
    })
}

/// The values of every cookie `name` in every `Cookie` field.
pub(crate) fn cookie_values<'a>(
    headers: &'a Headers<'a>,
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
        .flat_map(|h| h.value.split(|&b| b == b';'))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == name.as_bytes()).then(|| pair[eq + 1..].trim_ascii())
        })
}

/// `path` as rules see it after normalizing (for configured paths, which
/// must already be in that form to match what origins resolve).
pub fn normalized(path: &str) -> String {
    let (mut tmp, mut out) = (Vec::new(), Vec::new());
    normalize_path(path.as_bytes(), &mut tmp, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the path needs `normalize_path` (a fast test: most do not).
pub(crate) fn needs_normalizing(path: &[u8]) -> bool {
    path.iter().any(|&b| matches!(b, b'%' | b'\\' | b';'))
        || path.windows(2).any(|w| w == b"//" || w == b"/.")
}

/// The path as an origin resolves it before matching its locations (as
/// nginx does): `%XX` decoded, `//` merged, `.` and `..` segments resolved
/// (RFC 3986 5.2.4); and as the most lenient ones do: `\` (sent or
/// `%5C`) is a separator (IIS), a segment's `;parameters` are dropped
/// (Tomcat, Jetty, Spring: `/public/..;/partner/x` is `/partner/x`). Rules
/// match this, so `/%61dmin/`, `//admin/`, `/x/../admin/`, `/x\..\admin/`
/// or `/admin;x/` cannot pass a rule on `/admin/`. `tmp` and `out` are
/// scratch (cleared here).
fn normalize_path(raw: &[u8], tmp: &mut Vec<u8>, out: &mut Vec<u8>) {
    let hex = |b: u8| (b as char).to_digit(16);
    tmp.clear();
    let mut i = 0;
    while i < raw.len() {
        match (
            raw[i],
            raw.get(i + 1).and_then(|&b| hex(b)),
            raw.get(i + 2).and_then(|&b| hex(b)),
        ) {
            (b'%', Some(h), Some(l)) => {
                tmp.push(separator((h * 16 + l) as u8));
                i += 3;
            }
            (b, _, _) => {
                tmp.push(separator(b));
                i += 1;
            }
        }
    }
    out.clear();
    let mut ends_in_dir = false;
    for seg in tmp.split(|&b| b == b'/') {
        let seg = seg.split(|&b| b == b';').next().unwrap_or_default();
        match seg {
            b"" | b"." => ends_in_dir = true,
            b".." => {
                let parent = out.iter().rposition(|&b| b == b'/').unwrap_or(0);
                out.truncate(parent);
                ends_in_dir = true;
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(seg);
                ends_in_dir = false;
            }
        }
    }
    if ends_in_dir || out.is_empty() {
        out.push(b'/');
    }
}

/// `\\` is a separator to some origins (IIS).
fn separator(b: u8) -> u8 {
    if b == b'\\' { b'/' } else { b }
}

/// A redirect location: literal text and `{scheme}`, `{host}`, `{path}`,
/// `{query}` (with its `?`, or nothing) and `{request_uri}` (path and
/// query as sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Scheme,
    Host,
    Path,
    Query,
    RequestUri,
}

impl Template {
    /// Errors name the unknown or unclosed placeholder.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut rest = s;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` at {:?}", &rest[open..]))?;
            pieces.push(match &rest[open + 1..open + close] {
                "scheme" => Piece::Scheme,
                "host" => Piece::Host,
                "path" => Piece::Path,
                "query" => Piece::Query,
                "request_uri" => Piece::RequestUri,
                other => {
                    return Err(format!(
                        "unknown placeholder {{{other}}} (scheme, host, path, query, request_uri)"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Self(pieces))
    }

    pub fn render(&self, req: &RequestView<'_>, https: bool, out: &mut String) {
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Scheme => out.push_str(if https { "https" } else { "http" }),
                Piece::Host => out.push_str(req.host.unwrap_or("")),
                Piece::Path => out.push_str(req.path),
                Piece::Query => {
                    if let Some(q) = req.query {
                        out.push('?');
                        out.push_str(q);
                    }
                }
                Piece::RequestUri => {
                    out.push_str(req.path);
                    if let Some(q) = req.query {
                        out.push('?');
                        out.push_str(q);
                    }
                }
            }
        }
    }
}

/// A listener's or a route's rules, compiled.
#[derive(Debug, Clone, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    path_set: Option<RegexSet>,
    index: RuleIndex,
    /// Some rule tests the token's claims (`Rules::uses_claims`).
    uses_claims: bool,
    /// The `rewrite_prefix` `from` of every allow rule that has one.
    rewrite_froms: Vec<String>,
}

/// Per-thread scratch of an evaluation, grown to the largest set and
/// path this thread evaluated (no allocation after).
#[derive(Default)]
struct Scratch {
    /// Which path regexes of the set match the raw and the normalized
    /// path: one flag per pattern each.
    raw_hits: Vec<bool>,
    hits: Vec<bool>,
    decoded: Vec<u8>,
    path: Vec<u8>,
    /// One bit per rule: the candidates of the index.
    cand: Vec<u64>,
}

/// Which of the set's regexes match `path`, into `hits`.
fn set_hits<'h>(set: Option<&RegexSet>, path: &[u8], hits: &'h mut Vec<bool>) -> &'h [bool] {
    let Some(set) = set else {
        return &[];
    };
    if hits.len() < set.len() {
        hits.resize(set.len(), false);
    }
    let hits = &mut hits[..set.len()];
    hits.fill(false);
    set.matches_read_at(hits, path, 0);
    hits
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Calls `f` with `path` as origins resolve it (see `normalize_path`),
/// built in this thread's scratch (no allocation once grown). Bytes that
/// are not UTF-8 once decoded stay `%XX` (routes match text).
/// The scratch stays borrowed while `f` runs (the path lives in it): `f`
/// must not evaluate rules or call this again (the `RefCell` would panic);
/// a route lookup does neither.
pub(crate) fn with_normalized<R>(path: &str, f: impl FnOnce(&str) -> R) -> R {
    SCRATCH.with(|scratch| {
        let mut guard = scratch.borrow_mut();
        let Scratch {
            decoded, path: out, ..
        } = &mut *guard;
        normalize_path(path.as_bytes(), decoded, out);
        if let Ok(text) = std::str::from_utf8(out) {
            return f(text);
        }
        decoded.clear();
        for chunk in out.utf8_chunks() {
            decoded.extend_from_slice(chunk.valid().as_bytes());
            for &b in chunk.invalid() {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                decoded.extend_from_slice(&[
                    b'%',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 15)],
                ]);
            }
        }
        // Valid by construction; an empty path routes nowhere (fails closed).
        f(std::str::from_utf8(decoded).unwrap_or(""))
    })
}

impl Rules {
    /// Compiles the path regexes (whole-path, `^(?:…)$`) into one set.
    pub fn new(mut rules: Vec<Rule>) -> Result<Self, regex::Error> {
        let mut patterns = Vec::new();
        for r in &mut rules {
            r.path_slot = None;
            if let Some(PathTest::Regex(p)) = &r.matches.path {
                r.path_slot = Some(patterns.len());
                patterns.push(format!("^(?:{p})$"));
            }
        }
        // Bytes, not characters: a decoded path may hold any byte (`%ff`,
        // `%0a`), and `.` must span it.
        let path_set = if patterns.is_empty() {
            None
        } else {
            Some(
                regex::bytes::RegexSetBuilder::new(&patterns)
                    .unicode(false)
                    .dot_matches_new_line(true)
                    .build()?,
            )
        };
        let index = RuleIndex::build(&rules);
        let uses_claims = rules.iter().any(|r| !r.matches.claims.is_empty());
        let rewrite_froms = rules
            .iter()
            .filter(|r| matches!(r.action, RuleAction::Allow))
            .filter_map(|r| r.rewrite.as_ref()?.path_prefix.as_ref())
            .map(|(from, _)| from.clone())
            .collect();
        Ok(Self {
            rules,
            path_set,
            index,
            uses_claims,
            rewrite_froms,
        })
    }

    /// Whether `path` (as sent) resolves, as origins resolve it, under the
    /// `from` of an allow rule's `rewrite_prefix` while it does not begin
    /// with it as sent: an allow matches both forms, so the rule does not
    /// apply, and the origin would serve the path the rewrite exists to
    /// hide (`/x/../api/internal` beside a rule rewriting `/api/` to
    /// `/public-api/`). No allocation (the per-thread scratch); only paths
    /// that need normalizing, and only lists with such a rule, look.
    pub fn dodges_rewrite(&self, path: &str) -> bool {
        if self.rewrite_froms.is_empty() || !needs_normalizing(path.as_bytes()) {
            return false;
        }
        with_normalized(path, |resolved| {
            self.rewrite_froms
                .iter()
                .any(|from| starts_with_prefix(resolved, from) && !starts_with_prefix(path, from))
        })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Some rule tests the token's claims: the verdict may change with
    /// other claims (else it is the same with any token).
    pub fn uses_claims(&self) -> bool {
        self.uses_claims
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub(crate) fn rules_mut(&mut self) -> &mut [Rule] {
        &mut self.rules
    }

    /// The first rule whose conditions all hold, if any.
    pub fn evaluate(&self, req: &RequestView<'_>, client: IpAddr) -> Option<&Rule> {
        self.evaluate_with(req, client, None, true)
    }

    /// [`Rules::evaluate`] for a request whose bearer token was verified.
    pub fn evaluate_with_claims(
        &self,
        req: &RequestView<'_>,
        client: IpAddr,
        claims: Option<&Claims>,
    ) -> Option<&Rule> {
        self.evaluate_with(req, client, claims, true)
    }

    /// `indexed`: only the index's candidates; else every rule (the
    /// reference the index is tested against).
    fn evaluate_with(
        &self,
        req: &RequestView<'_>,
        client: IpAddr,
        claims: Option<&Claims>,
        indexed: bool,
    ) -> Option<&Rule> {
        if self.rules.is_empty() {
            return None;
        }
        SCRATCH.with(|scratch| {
            let mut guard = scratch.borrow_mut();
            let Scratch {
                raw_hits,
                hits,
                decoded,
                path,
                cand,
            } = &mut *guard;
            let set = self.path_set.as_ref();
            let raw = req.path.as_bytes();
            let raw_form = PathForm {
                path: raw,
                hits: set_hits(set, raw, raw_hits),
            };
            if !needs_normalizing(raw) {
                if !indexed {
                    return self
                        .rules
                        .iter()
                        .find(|r| r.applies(req, client, claims, &[raw_form]));
                }
                return self.first(req, client, claims, &[raw_form], cand);
            }
            normalize_path(raw, decoded, path);
            let normal = PathForm {
                path: &path[..],
                hits: set_hits(set, path, hits),
            };
            if !indexed {
                let forms = [raw_form, normal];
                return self
                    .rules
                    .iter()
                    .find(|r| r.applies(req, client, claims, &forms));
            }
            self.first(req, client, claims, &[raw_form, normal], cand)
        })
    }

    /// The first of the index's candidates that applies, in rule order.
    fn first(
        &self,
        req: &RequestView<'_>,
        client: IpAddr,
        claims: Option<&Claims>,
        forms: &[PathForm<'_>],
        cand: &mut Vec<u64>,
    ) -> Option<&Rule> {
        let index_forms = [forms.first(), forms.get(1)].map(|f| {
            f.map(|f| rule_index::Form {
                path: f.path,
                hits: f.hits,
            })
        });
        let index_forms: &[rule_index::Form<'_>] = match index_forms {
            [Some(a), Some(b)] => &[a, b],
            [Some(a), None] => &[a],
            _ => &[],
        };
        self.index.candidates(req, client, index_forms, cand);
        for (w, &word) in cand.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let i = w * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let r = &self.rules[i];
                if r.applies(req, client, claims, forms) {
                    return Some(r);
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::Header;

    fn deny() -> RuleAction {
        RuleAction::Deny(Arc::new(DirectResponse {
            status: 403,
            content_type: "text/plain".into(),
            body: b"no\n".to_vec(),
            location: None,
            retry_after: None,
            www_authenticate: None,
        }))
    }

    /// The name of the rule a request matches first.
    fn first<'r>(
        rules: &'r Rules,
        method: &str,
        target: &str,
        fields: &[(&str, &str)],
        client: &str,
    ) -> Option<&'r str> {
        let list: Vec<Header<'_>> = fields
            .iter()
            .map(|&(n, v)| Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect();
        let view = RequestView::new(method, Some("a.example"), target, Headers::from_list(&list));
        rules
            .evaluate(&view, client.parse().unwrap())
            .map(|r| r.name.as_str())
    }

    #[test]
    fn the_first_rule_whose_conditions_all_hold_wins() {
        let rules = Rules::new(vec![
            Rule::new(
                "office",
                RuleMatch {
                    sources: vec![Cidr::new("10.1.0.0".parse().unwrap(), 16).unwrap()],
                    ..Default::default()
                },
                RuleAction::Allow,
            ),
            Rule::new(
                "wp",
                RuleMatch {
                    path: Some(PathTest::Regex("/wp-(admin|login)[^/]*".into())),
                    ..Default::default()
                },
                deny(),
            ),
            Rule::new(
                "sqlmap",
                RuleMatch {
                    headers: vec![(
                        "user-agent".into(),
                        ValueTest::Regex(Regex::new("(?i)sqlmap").unwrap()),
                    )],
                    methods: vec!["GET".into()],
                    ..Default::default()
                },
                deny(),
            ),
            Rule::new(
                "debug-cookie",
                RuleMatch {
                    host: Some("*.example".into()),
                    cookies: vec![("debug".into(), ValueTest::Equals("1".into()))],
                    query: vec![("id".into(), ValueTest::Present)],
                    ..Default::default()
                },
                deny(),
            ),
        ])
        .unwrap();
        let other = "10.2.0.1";
        assert_eq!(
            first(&rules, "GET", "/wp-login.php", &[], other),
            Some("wp")
        );
        // The allow rule comes first for the office.
        assert_eq!(
            first(&rules, "GET", "/wp-login.php", &[], "10.1.2.3"),
            Some("office")
        );
        // Whole-path regex: a longer path is not matched.
        assert_eq!(first(&rules, "GET", "/x/wp-login.php", &[], other), None);
        let ua = [("User-Agent", "curl/8"), ("user-agent", "SQLMap/1.5")];
        assert_eq!(first(&rules, "GET", "/", &ua, other), Some("sqlmap"));
        assert_eq!(first(&rules, "POST", "/", &ua, other), None);
        let cookie = [("Cookie", "a=b; debug=1")];
        assert_eq!(
            first(&rules, "GET", "/p?id=7", &cookie, other),
            Some("debug-cookie")
        );
        assert_eq!(first(&rules, "GET", "/p?idx=7", &cookie, other), None);
        assert_eq!(
            first(&rules, "GET", "/p?id", &[("Cookie", "debug=2")], other),
            None
        );
    }

    #[test]
    fn absent_headers_and_ipv6_prefixes() {
        let rules = Rules::new(vec![Rule::new(
            "no-ua-v6",
            RuleMatch {
                sources: vec![Cidr::new("2001:db8::".parse().unwrap(), 32).unwrap()],
                headers: vec![("user-agent".into(), ValueTest::Absent)],
                ..Default::default()
            },
            deny(),
        )])
        .unwrap();
        assert_eq!(
            first(&rules, "GET", "/", &[], "2001:db8::7"),
            Some("no-ua-v6")
        );
        assert_eq!(first(&rules, "GET", "/", &[], "2001:db9::7"), None);
        assert_eq!(first(&rules, "GET", "/", &[], "10.0.0.1"), None);
        let ua = [("User-Agent", "x")];
        assert_eq!(first(&rules, "GET", "/", &ua, "2001:db8::7"), None);
        assert!(Cidr::new("10.0.0.0".parse().unwrap(), 33).is_none());
        let any = Cidr::new("0.0.0.0".parse().unwrap(), 0).unwrap();
        assert!(any.contains("1.2.3.4".parse().unwrap()));
    }

    #[test]
    fn encoded_and_dotted_paths_repeated_arguments_and_binary_values_do_not_slip_past() {
        let rules = Rules::new(vec![
            Rule::new(
                "admin",
                RuleMatch {
                    path: Some(PathTest::Prefix("/admin/".into())),
                    ..Default::default()
                },
                deny(),
            ),
            Rule::new(
                "php",
                RuleMatch {
                    path: Some(PathTest::Regex(".*\\.php".into())),
                    ..Default::default()
                },
                deny(),
            ),
            Rule::new(
                "union",
                RuleMatch {
                    query: vec![(
                        "id".into(),
                        ValueTest::Regex(Regex::new("(?i)union").unwrap()),
                    )],
                    ..Default::default()
                },
                deny(),
            ),
            Rule::new(
                "session",
                RuleMatch {
                    cookies: vec![("s".into(), ValueTest::Equals("evil".into()))],
                    ..Default::default()
                },
                deny(),
            ),
            Rule::new(
                "ua",
                RuleMatch {
                    headers: vec![(
                        "user-agent".into(),
                        ValueTest::Regex(Regex::new("sqlmap").unwrap()),
                    )],
                    ..Default::default()
                },
                deny(),
            ),
        ])
        .unwrap();
        let c = "10.0.0.1";
        for path in [
            "/admin/",
            "/%61dmin/x",
            "//admin/",
            "/x/../admin/",
            "/./admin/",
            "/admin",
        ] {
            let want = (path != "/admin").then_some("admin");
            assert_eq!(first(&rules, "GET", path, &[], c), want, "{path}");
        }
        assert_eq!(first(&rules, "GET", "/a/b.%70hp", &[], c), Some("php"));
        assert_eq!(
            first(&rules, "GET", "/p?id=1&id=1%20UNION", &[], c),
            Some("union")
        );
        assert_eq!(
            first(&rules, "GET", "/p", &[("Cookie", "s=ok; s=evil")], c),
            Some("session")
        );
        assert_eq!(
            first(
                &rules,
                "GET",
                "/p",
                &[("Cookie", "s=ok"), ("Cookie", "s=evil")],
                c
            ),
            Some("session")
        );
        let list = [Header {
            name: "User-Agent",
            value: b"sqlmap\xff",
        }];
        let view = RequestView::new("GET", None, "/", Headers::from_list(&list));
        let hit = rules
            .evaluate(&view, c.parse().unwrap())
            .map(|r| r.name.as_str());
        assert_eq!(hit, Some("ua"));
    }

    #[test]
    fn an_allow_needs_every_value_and_both_path_forms_a_deny_either() {
        let rules = Rules::new(vec![
            Rule::new(
                "numeric-id",
                RuleMatch {
                    query: vec![(
                        "id".into(),
                        ValueTest::Regex(Regex::new("^[0-9]+$").unwrap()),
                    )],
                    ..Default::default()
                },
                RuleAction::Allow,
            ),
            Rule::new(
                "public",
                RuleMatch {
                    path: Some(PathTest::Prefix("/public/".into())),
                    ..Default::default()
                },
                RuleAction::Allow,
            ),
            Rule::new(
                "union",
                RuleMatch {
                    query: vec![(
                        "id".into(),
                        ValueTest::Regex(Regex::new("(?i)union").unwrap()),
                    )],
                    ..Default::default()
                },
                deny(),
            ),
            Rule::new(
                "admin",
                RuleMatch {
                    path: Some(PathTest::Prefix("/admin/".into())),
                    ..Default::default()
                },
                deny(),
            ),
            Rule::new(
                "private",
                RuleMatch {
                    path: Some(PathTest::Regex("/api/private/.*".into())),
                    ..Default::default()
                },
                deny(),
            ),
        ])
        .unwrap();
        let c = "10.0.0.1";
        assert_eq!(
            first(&rules, "GET", "/x?id=7&id=8", &[], c),
            Some("numeric-id")
        );
        // One value is not numeric: the allow does not apply, the deny does.
        assert_eq!(
            first(&rules, "GET", "/x?id=7&id=7union", &[], c),
            Some("union")
        );
        // The router sees `/admin/…`, the origin may resolve `/metrics`:
        // denied on the raw form.
        assert_eq!(
            first(&rules, "GET", "/admin/../metrics", &[], c),
            Some("admin")
        );
        // Allowed only when both forms are public.
        assert_eq!(first(&rules, "GET", "/public/a", &[], c), Some("public"));
        assert_eq!(
            first(&rules, "GET", "/public/../admin/x", &[], c),
            Some("admin")
        );
        // Decoded bytes that are not text, or a newline, stay inside `.*`.
        assert_eq!(
            first(&rules, "GET", "/api/private/%ff", &[], c),
            Some("private")
        );
        assert_eq!(
            first(&rules, "GET", "/api/private/x%0a", &[], c),
            Some("private")
        );
    }

    #[test]
    fn normalized_paths() {
        let (mut tmp, mut out) = (Vec::new(), Vec::new());
        for (raw, want) in [
            ("/a//b/./c/../d", "/a/b/d"),
            ("/../../x", "/x"),
            ("/a/", "/a/"),
            ("/a/.", "/a/"),
            ("/%2e%2e/%41", "/A"),
            ("/%zz/%4", "/%zz/%4"),
            ("/", "/"),
            // IIS: `\` (sent or `%5C`) separates.
            ("/public\\..\\partner/x", "/partner/x"),
            ("/public%5c..%5Cpartner/x", "/partner/x"),
            // Tomcat, Jetty, Spring: `;parameters` end a segment.
            ("/public/..;/partner/x", "/partner/x"),
            ("/partner;x/y", "/partner/y"),
            ("/a;b=c/d;e", "/a/d"),
            ("/a/%3b/b", "/a/b"),
        ] {
            normalize_path(raw.as_bytes(), &mut tmp, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), want, "{raw}");
        }
    }

    #[test]
    fn with_normalized_keeps_bytes_that_are_not_utf8_encoded() {
        for (raw, want) in [
            ("/public/../partner/x", "/partner/x"),
            ("/%70artner/x", "/partner/x"),
            ("//partner/x", "/partner/x"),
            ("/p/%ff/../%c3%a9/%ff", "/p/é/%FF"),
        ] {
            assert_eq!(with_normalized(raw, str::to_string), want, "{raw}");
        }
        assert!(!needs_normalizing(b"/partner/x") && needs_normalizing(b"//partner/x"));
        assert!(needs_normalizing(b"/public\\..\\partner/x"));
        assert!(needs_normalizing(b"/public/..;/partner/x"));
    }

    #[test]
    fn redirect_templates_fill_in_the_request() {
        let view = RequestView::new("GET", Some("h.example"), "/a/b?c=d", Headers::EMPTY);
        let t = Template::parse("https://{host}{request_uri}").unwrap();
        let mut out = String::new();
        t.render(&view, false, &mut out);
        assert_eq!(out, "https://h.example/a/b?c=d");
        let t = Template::parse("{scheme}://new.example{path}{query}").unwrap();
        out.clear();
        t.render(&view, true, &mut out);
        assert_eq!(out, "https://new.example/a/b?c=d");
        assert!(
            Template::parse("/{nope}")
                .unwrap_err()
                .contains("unknown placeholder")
        );
        assert!(Template::parse("/{path").unwrap_err().contains("unclosed"));
    }

    /// The index only narrows: over many rules of every kind and requests
    /// that hit, miss and straddle them, the indexed evaluation picks the
    /// same rule as the full scan.
    #[test]
    fn the_index_picks_the_same_rule_as_a_full_scan() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let paths = [
            "/a",
            "/a/b",
            "/admin",
            "/admin/x",
            "/b%61d",
            "/x//y",
            "/wp-login.php",
            "/",
        ];
        let names = ["x-a", "X-B", "cookie", "user-agent"];
        let sources = ["10.0.0.0/8", "10.1.2.3/32", "192.0.2.0/24", "2001:db8::/32"];
        let regexes = [
            "/a.*",
            "/ad[a-z]+",
            "/x/.*",
            "/wp-[a-z]+\\.php",
            "/b.d",
            "/a/b",
        ];
        let cidr = |i: u64| {
            let (a, l) = sources[i as usize].split_once('/').unwrap();
            Cidr::new(a.parse().unwrap(), l.parse().unwrap()).unwrap()
        };
        // Each rule has one gate of each kind in turn (and some none), and
        // often a second condition, so that first matches spread over
        // more than one 64-rule word of the candidate set.
        let mut rules = Vec::new();
        for i in 0..200u64 {
            let mut m = RuleMatch::default();
            match i % 7 {
                0 => m.path = Some(PathTest::Exact(paths[next(7) as usize].into())),
                1 => m.path = Some(PathTest::Prefix(paths[next(7) as usize].into())),
                2 => m.path = Some(PathTest::Regex(regexes[next(6) as usize].into())),
                3 => m.sources.push(cidr(next(4))),
                4 => {
                    let t = if next(2) == 0 {
                        ValueTest::Present
                    } else {
                        ValueTest::Equals("v".into())
                    };
                    m.headers.push((names[next(4) as usize].into(), t));
                }
                5 => m.cookies.push(("s".into(), ValueTest::Present)),
                _ => m.host = Some("b.example".into()),
            }
            match next(6) {
                0 => m.methods.push("POST".into()),
                1 => m.headers.push(("x-b".into(), ValueTest::Absent)),
                2 => m.sources.push(cidr(next(4))),
                3 => m.cookies.push(("s".into(), ValueTest::Absent)),
                4 => m
                    .headers
                    .push(("X-A".into(), ValueTest::Equals("v".into()))),
                _ => {}
            }
            let action = if next(3) == 0 {
                RuleAction::Allow
            } else {
                deny()
            };
            rules.push(Rule::new(format!("r{i}"), m, action));
        }
        let rules = Rules::new(rules).unwrap();
        let clients = [
            "10.1.2.3",
            "10.9.9.9",
            "192.0.2.200",
            "203.0.113.1",
            "2001:db8::5",
            "fd00::1",
        ];
        let fields: [&[(&str, &str)]; 5] = [
            &[],
            &[("X-A", "v")],
            &[("x-b", "w"), ("Cookie", "s=1")],
            &[("User-Agent", "v"), ("x-a", "v"), ("x-a", "u")],
            &[("cookie", "t=2")],
        ];
        let (mut missed, mut distinct) = (0, std::collections::HashSet::new());
        for _ in 0..4000 {
            let method = if next(2) == 0 { "GET" } else { "POST" };
            let target = format!(
                "{}{}",
                paths[next(8) as usize],
                ["", "/", "x", "?q=1"][next(4) as usize]
            );
            let list: Vec<Header<'_>> = fields[next(5) as usize]
                .iter()
                .map(|&(n, v)| Header {
                    name: n,
                    value: v.as_bytes(),
                })
                .collect();
            let view = RequestView::new(
                method,
                Some(["a.example", "b.example"][next(2) as usize]),
                &target,
                Headers::from_list(&list),
            );
            let client: IpAddr = clients[next(6) as usize].parse().unwrap();
            let indexed = rules
                .evaluate_with(&view, client, None, true)
                .map(|r| &r.name);
            let scanned = rules
                .evaluate_with(&view, client, None, false)
                .map(|r| &r.name);
            assert_eq!(indexed, scanned, "{method} {target} {client} {list:?}");
            match scanned {
                Some(name) => {
                    distinct.insert(name.clone());
                }
                None => missed += 1,
            }
        }
        let last = distinct
            .iter()
            .filter_map(|n| n[1..].parse::<usize>().ok())
            .max()
            .unwrap_or(0);
        assert!(
            missed > 5 && distinct.len() > 10 && last >= 64,
            "the corpus hits many rules and misses: {missed} misses, {} rules, the last r{last}",
            distinct.len()
        );
    }

    #[test]
    fn a_rewritten_target_never_starts_with_two_slashes_and_keeps_segments() {
        let rw = |from: &str, to: &str| Rewrite {
            path_prefix: Some((from.into(), to.into())),
            ..Rewrite::default()
        };
        let mut buf = String::new();
        let r = rw("/v1/", "/");
        assert_eq!(r.target("/v1/users?a=1", &mut buf), "/users?a=1");
        assert_eq!(r.target("/v1//evil.example/x", &mut buf), "/evil.example/x");
        assert_eq!(
            r.target("/v1/\\evil.example/x", &mut buf),
            "/evil.example/x"
        );
        assert_eq!(r.target("/v2/x", &mut buf), "/v2/x");
        let r = rw("/api", "/v2");
        assert_eq!(r.target("/api/x", &mut buf), "/v2/x");
        assert_eq!(r.target("/api?q=1", &mut buf), "/v2?q=1");
        assert_eq!(
            r.target("/apix", &mut buf),
            "/apix",
            "not at a segment boundary"
        );
    }
}
