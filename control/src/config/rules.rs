//! `[[listeners.rules]]` and `[[listeners.routes.rules]]`: L7 rules
//! (WAF-lite) of a listener, evaluated in order before routing, and of a
//! route, evaluated once it is chosen; in each list the first whose
//! conditions all hold applies. One parser for both.

use ferrogate_proxy::rules::{
    Cidr, PathTest, Rewrite, Rule, RuleAction, RuleMatch, Rules, Template, ValueTest, normalized,
};

use super::*;

/// A name that goes into counter names: 1..=48 of `[A-Za-z0-9_-]`.
pub(super) fn counter_name(name: &str) -> bool {
    (1..=48).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Compiles one list of rules: `[[listeners.rules]]` of listener `l`
/// (`at` = `listeners[i]`) or `[[listeners.routes.rules]]` of one of its
/// routes (`at` = `listeners[i].routes[j]`); `names` keeps rule names
/// unique across the file, listeners and routes (counters are kept by
/// name).
pub(super) fn check_rules(
    at: &str,
    list: &[RuleSection],
    l: &ListenerSection,
    pools: &[(String, Arc<Upstream>)],
    names: &mut HashSet<String>,
    rep: &mut Reporter<'_>,
) -> Rules {
    let mut rules = Vec::new();
    for (j, r) in list.iter().enumerate() {
        let field = format!("{at}.rules[{j}]");
        if r.client_cert_cn.is_some()
            && l.tls
                .as_ref()
                .is_none_or(|t| t.get_ref().client_ca.is_none())
        {
            rep.at(
                r.name.span(),
                format!("{field}.client_cert_cn"),
                "needs a TLS listener with client certificates ([listeners.tls] client_ca)",
            );
        }
        if let Some(rule) = check_rule(&field, r, pools, names, rep) {
            rules.push(rule);
        }
    }
    // Each path regex compiled alone above; together they may still
    // exceed the set's size limit.
    Rules::new(rules).unwrap_or_else(|e| {
        let span = list
            .iter()
            .find_map(|r| r.path_regex.as_ref().map(|p| p.span()))
            .unwrap_or(0..0);
        rep.at(
            span,
            format!("{at}.rules"),
            format!(
                "the path regexes together: {}",
                e.to_string().replace('\n', " ")
            ),
        );
        Rules::default()
    })
}

/// Whether a rule of the list changes what it lets through (headers, the
/// path or the pool).
pub(super) fn rewrites(r: &RuleSection) -> bool {
    changes_span(r).is_some()
}

/// Where the first of a rule's changes (`request_headers`,
/// `response_headers`, `rewrite_prefix`, `pool`) is written, if any.
pub(super) fn changes_span(r: &RuleSection) -> Option<Range<usize>> {
    [
        r.request_headers.as_ref().map(|h| h.span()),
        r.response_headers.as_ref().map(|h| h.span()),
        r.rewrite_prefix.as_ref().map(|p| p.span()),
        r.pool.as_ref().map(|p| p.span()),
    ]
    .into_iter()
    .flatten()
    .min_by_key(|s| s.start)
}

/// Where a rule's `jwt_claims` are written (its first claim), if it has
/// any.
pub(super) fn claims_span(r: &RuleSection) -> Option<Range<usize>> {
    r.jwt_claims
        .values()
        .map(|v| v.span())
        .min_by_key(|s| s.start)
}

/// A listener's rules on `jwt_claims` see the claims of the token the
/// request was checked with: the listener's provider's, unless its route
/// names another. Such a rule would then accept any provider's tokens for
/// claims meant for the listener's (`scope = "admin"` of another issuer),
/// so it needs the listener's provider and no route naming another; claims
/// of a route's own provider are tested in that route's rules.
pub(super) fn check_listener_claims(i: usize, l: &ListenerSection, rep: &mut Reporter<'_>) {
    let listener = l.jwt.as_ref().map(|n| n.get_ref().as_str());
    let other = l.routes.iter().find_map(|r| {
        let name = r.jwt.as_ref()?.get_ref().as_str();
        (name != super::jwt::NO_JWT && Some(name) != listener).then_some(name)
    });
    for (k, r) in l.rules.iter().enumerate() {
        let Some(at) = claims_span(r) else {
            continue;
        };
        let field = format!("listeners[{i}].rules[{k}].jwt_claims");
        if listener.is_none() {
            rep.at(
                at,
                field,
                "a listener rule on jwt_claims needs the listener's `jwt` provider (claims of a route's own provider are tested in that route's rules)",
            );
        } else if let Some(other) = other {
            rep.at(
                at,
                field,
                format!(
                    "a route of this listener needs provider {other:?}'s tokens: a listener rule on jwt_claims would accept that provider's claims too; test them in the routes' rules"
                ),
            );
        }
    }
}

fn check_rule(
    field: &str,
    r: &RuleSection,
    pools: &[(String, Arc<Upstream>)],
    names: &mut HashSet<String>,
    rep: &mut Reporter<'_>,
) -> Option<Rule> {
    let before = rep.errors.len();
    let name = r.name.get_ref();
    if !counter_name(name) {
        rep.at(
            r.name.span(),
            format!("{field}.name"),
            "must be 1..=48 letters, digits, `_` or `-` (it names the rule's counter)",
        );
    } else if !names.insert(name.clone()) {
        rep.at(
            r.name.span(),
            format!("{field}.name"),
            format!("duplicate rule name {name:?} (counters are kept by name)"),
        );
    }
    let mut m = RuleMatch::default();
    for (k, s) in r.source.iter().enumerate() {
        let text = s.get_ref();
        let parsed = match text.parse::<IpAddr>() {
            Ok(ip) => Some((ip, if ip.is_ipv4() { 32 } else { 128 })),
            Err(_) => parse_cidr(text),
        };
        match parsed.and_then(|(ip, len)| Cidr::new(ip, len)) {
            Some(c) => m.sources.push(c),
            None => rep.at(
                s.span(),
                format!("{field}.source[{k}]"),
                format!("{text:?} is not an address or prefix (10.0.0.0/8, 2001:db8::/32)"),
            ),
        }
    }
    m.host = r.host.as_ref().map(|h| h.get_ref().to_ascii_lowercase());
    for (k, x) in r.methods.iter().enumerate() {
        let v = x.get_ref();
        if v.is_empty()
            || !v
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
        {
            rep.at(
                x.span(),
                format!("{field}.methods[{k}]"),
                format!("{v:?} is not an upper-case method like GET"),
            );
        }
        m.methods.push(v.clone());
    }
    m.path = check_rule_path(field, r, rep);
    m.headers = value_tests(field, "headers", &r.headers, true, rep);
    m.query = value_tests(field, "query", &r.query, false, rep);
    m.cookies = value_tests(field, "cookies", &r.cookies, false, rep);
    m.client_cert_cn = r.client_cert_cn.clone();
    for (name, v) in &r.jwt_claims {
        let text = match v.get_ref() {
            toml::Value::String(s) => Some(s.clone()),
            toml::Value::Integer(n) => Some(n.to_string()),
            toml::Value::Boolean(b) => Some(b.to_string()),
            _ => None,
        };
        match text {
            Some(t) => m.claims.push((name.clone(), t)),
            None => rep.at(
                v.span(),
                format!("{field}.jwt_claims.{name}"),
                "a claim is compared as text: a string, an integer or a boolean",
            ),
        }
    }
    if r.tag
        .as_ref()
        .is_some_and(|t| t.len() > 48 || t.chars().any(char::is_control))
    {
        rep.at(
            r.name.span(),
            format!("{field}.tag"),
            "at most 48 bytes, no control characters (it goes to the access log)",
        );
    }
    let action = check_action(field, r, rep);
    let rewrite = check_rewrite(field, r, pools, rep);
    if rep.errors.len() > before {
        return None;
    }
    let mut rule = Rule::new(name.clone(), m, action?);
    rule.tag = r.tag.clone();
    if let Some(rw) = rewrite {
        rule = rule.with_rewrite(rw);
    }
    Some(rule)
}

/// Fields the proxy writes itself (a rule cannot remove or replace what
/// it adds after the rule's removals ran).
const PROXY_OWNED: [&str; 4] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "via",
    "x-request-id",
];

/// Whether `to` is a path a rewrite may produce: RFC 3986 path characters,
/// no query or fragment, no `.` or `..` segment.
fn plain_path(to: &str) -> bool {
    to.starts_with('/')
        && to
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/%".contains(&b))
        && !to.split('/').any(|seg| seg == "." || seg == "..")
        && !to.contains("//")
}

/// An allow rule's changes (None when it has none).
fn check_rewrite(
    field: &str,
    r: &RuleSection,
    pools: &[(String, Arc<Upstream>)],
    rep: &mut Reporter<'_>,
) -> Option<Rewrite> {
    if !rewrites(r) {
        return None;
    }
    if r.action.get_ref() != "allow" {
        rep.at(
            r.action.span(),
            format!("{field}.action"),
            "only an allow rule changes headers, the path or the pool",
        );
        return None;
    }
    let mut rw = Rewrite::default();
    for (key, ops, remove, add) in [
        (
            "request_headers",
            &r.request_headers,
            &mut rw.request_remove,
            &mut rw.request_add,
        ),
        (
            "response_headers",
            &r.response_headers,
            &mut rw.response_remove,
            &mut rw.response_add,
        ),
    ] {
        let Some(ops) = ops else { continue };
        let span = ops.span();
        let ops = ops.get_ref();
        let names = ops
            .set
            .keys()
            .chain(ops.add.keys())
            .chain(ops.remove.iter());
        for n in names {
            let lower = n.to_ascii_lowercase();
            if PROXY_OWNED.contains(&lower.as_str()) {
                rep.at(
                    span.clone(),
                    format!("{field}.{key}"),
                    format!("{n:?}: ferrogate writes this field itself; a rule cannot change it"),
                );
            }
            if !is_token(n) || ferrogate_proxy::http::CODEC_OWNED.contains(&lower.as_str()) {
                rep.at(
                    span.clone(),
                    format!("{field}.{key}"),
                    format!(
                        "{n:?}: not a field name a rule may change (a token, not one that frames the message: content-length, transfer-encoding, connection, host, …)"
                    ),
                );
            }
        }
        for (n, v) in ops.set.iter().chain(ops.add.iter()) {
            if v.bytes().any(|b| b.is_ascii_control() && b != b'\t') {
                rep.at(
                    span.clone(),
                    format!("{field}.{key}.{n}"),
                    "control characters cannot go in a field value",
                );
            }
        }
        remove.extend(
            ops.set
                .keys()
                .chain(ops.remove.iter())
                .map(|n| n.to_ascii_lowercase()),
        );
        add.extend(
            ops.set
                .iter()
                .chain(ops.add.iter())
                .map(|(n, v)| (n.clone(), v.clone())),
        );
    }
    if let Some(p) = &r.rewrite_prefix {
        let (from, to) = (&p.get_ref().from, &p.get_ref().to);
        if !plain_path(from) || !plain_path(to) || from.ends_with('/') != to.ends_with('/') {
            rep.at(
                p.span(),
                format!("{field}.rewrite_prefix"),
                "from and to are paths starting with `/` (path characters only: no `?`, `#`, spaces, `//`, `.` or `..` segments), both ending in `/` or neither",
            );
        }
        // Every request the rule lets through starts with `from`: the
        // rewrite never silently skips one (e.g. an encoded variant).
        let covered = r
            .path_prefix
            .as_ref()
            .is_some_and(|pp| pp.get_ref().starts_with(from.as_str()));
        if !covered {
            rep.at(
                p.span(),
                format!("{field}.rewrite_prefix"),
                "needs the rule's path_prefix to start with `from`",
            );
        }
        rw.path_prefix = Some((from.clone(), to.clone()));
    }
    if let Some(name) = &r.pool {
        match pools.iter().find(|(n, _)| n == name.get_ref()) {
            Some((_, p)) if p.proxy_protocol.is_some() => rep.at(
                name.span(),
                format!("{field}.pool"),
                format!(
                    "pool {:?} sends a PROXY protocol header: only TCP listeners may use it",
                    name.get_ref()
                ),
            ),
            Some((_, p)) => rw.pool = Some(p.clone()),
            None => rep.at(
                name.span(),
                format!("{field}.pool"),
                format!("no upstream named {:?}", name.get_ref()),
            ),
        }
    }
    Some(rw)
}

/// Whether path `p` (starting with `/`) is in the form origins resolve
/// (`normalized`); reports it at `field` if not.
pub(super) fn resolved_form(p: &Spanned<String>, field: String, rep: &mut Reporter<'_>) -> bool {
    let v = p.get_ref();
    let want = normalized(v);
    let ok = want == *v;
    if !ok {
        rep.at(
            p.span(),
            field,
            format!("write it as origins resolve it: {want:?}"),
        );
    }
    ok
}

fn check_rule_path(field: &str, r: &RuleSection, rep: &mut Reporter<'_>) -> Option<PathTest> {
    let given = [&r.path_prefix, &r.path_exact, &r.path_regex]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if given > 1 {
        rep.at(
            r.name.span(),
            field.to_string(),
            "at most one of `path_prefix`, `path_exact`, `path_regex`",
        );
        return None;
    }
    let slash = |p: &Spanned<String>, key: &str, rep: &mut Reporter<'_>| {
        let v = p.get_ref();
        if !v.starts_with('/') {
            rep.at(p.span(), format!("{field}.{key}"), "must start with '/'");
        } else {
            // Requests are tested as the origin resolves their path too;
            // a configured path in another form would never match that.
            resolved_form(p, format!("{field}.{key}"), rep);
        }
        v.clone()
    };
    if let Some(p) = &r.path_prefix {
        return Some(PathTest::Prefix(slash(p, "path_prefix", rep)));
    }
    if let Some(p) = &r.path_exact {
        return Some(PathTest::Exact(slash(p, "path_exact", rep)));
    }
    let p = r.path_regex.as_ref()?;
    // Alone first: `a)|(b` would compile once wrapped, unanchored.
    if let Err(e) = regex::Regex::new(p.get_ref())
        .and_then(|_| regex::Regex::new(&format!("^(?:{})$", p.get_ref())))
    {
        rep.at(
            p.span(),
            format!("{field}.path_regex"),
            format!("invalid regex: {}", e.to_string().replace('\n', " ")),
        );
    }
    Some(PathTest::Regex(p.get_ref().clone()))
}

/// `name = "exact"`, `name = true` (present), `name = false` (absent) or
/// `name = { regex = "…" }` (a match anywhere in the value).
fn value_tests(
    field: &str,
    what: &str,
    tests: &BTreeMap<String, Spanned<toml::Value>>,
    header_names: bool,
    rep: &mut Reporter<'_>,
) -> Vec<(String, ValueTest)> {
    let mut out = Vec::new();
    for (k, v) in tests {
        let at = format!("{field}.{what}.{k}");
        if k.is_empty() || (header_names && !is_header_name(k)) {
            rep.at(v.span(), at.clone(), format!("{k:?} is not a valid name"));
            continue;
        }
        let test = match v.get_ref() {
            toml::Value::String(s) => Some(ValueTest::Equals(s.clone())),
            toml::Value::Boolean(true) => Some(ValueTest::Present),
            toml::Value::Boolean(false) => Some(ValueTest::Absent),
            toml::Value::Table(t) if t.len() == 1 => match t.get("regex") {
                Some(toml::Value::String(p)) => match regex::bytes::Regex::new(p) {
                    Ok(r) => Some(ValueTest::Regex(r)),
                    Err(e) => {
                        rep.at(
                            v.span(),
                            format!("{at}.regex"),
                            format!("invalid regex: {}", e.to_string().replace('\n', " ")),
                        );
                        continue;
                    }
                },
                _ => None,
            },
            _ => None,
        };
        match test {
            Some(t) => out.push((k.clone(), t)),
            None => rep.at(
                v.span(),
                at,
                "must be a string (exact value), true (present), false (absent) or { regex = \"…\" }",
            ),
        }
    }
    out
}

fn check_action(field: &str, r: &RuleSection, rep: &mut Reporter<'_>) -> Option<RuleAction> {
    let status = r.status.as_ref().map(|s| (*s.get_ref(), s.span()));
    match r.action.get_ref().as_str() {
        "allow" => {
            if r.status.is_some() || r.body.is_some() || r.location.is_some() {
                rep.at(
                    r.action.span(),
                    format!("{field}.action"),
                    "`allow` takes no status, body or location",
                );
            }
            Some(RuleAction::Allow)
        }
        "deny" => {
            let code = status.as_ref().map_or(403, |(c, _)| *c);
            if !(400..=599).contains(&code) {
                let span = status.map(|(_, s)| s).unwrap_or(r.action.span());
                rep.at(span, format!("{field}.status"), "a deny answers 400..=599");
            }
            let body = r.body.clone().unwrap_or_else(|| "forbidden\n".into());
            if body.len() > MAX_DIRECT_BODY {
                rep.at(
                    r.action.span(),
                    format!("{field}.body"),
                    format!("longer than {MAX_DIRECT_BODY} bytes"),
                );
            }
            if r.location.is_some() {
                rep.at(
                    r.action.span(),
                    format!("{field}.location"),
                    "only a redirect has a location",
                );
            }
            Some(RuleAction::Deny(Arc::new(DirectResponse {
                status: code,
                content_type: "text/plain".into(),
                body: body.into_bytes(),
                location: None,
                retry_after: None,
                www_authenticate: None,
            })))
        }
        "redirect" => {
            let code = status.as_ref().map_or(302, |(c, _)| *c);
            if ![301, 302, 303, 307, 308].contains(&code) {
                let span = status.map(|(_, s)| s).unwrap_or(r.action.span());
                rep.at(
                    span,
                    format!("{field}.status"),
                    "a redirect answers 301, 302, 303, 307 or 308",
                );
            }
            let Some(location) = &r.location else {
                rep.at(
                    r.action.span(),
                    format!("{field}.location"),
                    "a redirect needs a location (e.g. \"https://{host}{request_uri}\")",
                );
                return None;
            };
            if location.get_ref().chars().any(char::is_control) {
                rep.at(
                    location.span(),
                    format!("{field}.location"),
                    "control characters cannot go in a Location field",
                );
                return None;
            }
            match Template::parse(location.get_ref()) {
                Ok(t) => Some(RuleAction::Redirect {
                    status: code,
                    location: t,
                }),
                Err(e) => {
                    rep.at(location.span(), format!("{field}.location"), e);
                    None
                }
            }
        }
        other => {
            rep.at(
                r.action.span(),
                format!("{field}.action"),
                format!("{other:?}: must be \"allow\", \"deny\" or \"redirect\""),
            );
            None
        }
    }
}
