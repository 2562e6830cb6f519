//! Route matches: paths, header and query values, header names.

use super::*;

/// An HTTP token (header names, methods).
pub(super) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header/query match value: a string (exact) or `true` (presence).
pub(super) fn match_value(
    v: &Spanned<toml::Value>,
    field: String,
    rep: &mut Reporter<'_>,
) -> Option<Option<String>> {
    match v.get_ref() {
        toml::Value::String(s) => Some(Some(s.clone())),
        toml::Value::Boolean(true) => Some(None),
        _ => {
            rep.at(
                v.span(),
                field,
                "must be a string (exact value) or true (present)",
            );
            None
        }
    }
}

/// The route's path match. `policy`: the route decides more than the
/// pool (its own `jwt`, rules, rate limits or `respond`, or its listener
/// has a limit keyed by route): a prefix or exact path must be in the
/// form origins resolve, else every request to it would be refused as
/// routing elsewhere once normalized (`/files%20a/`).
pub(super) fn check_path(
    r: &RouteSection,
    field: &str,
    anchor: Range<usize>,
    policy: bool,
    rep: &mut Reporter<'_>,
) -> Option<PathMatch> {
    let set = [&r.path_prefix, &r.path_exact, &r.path_regex]
        .iter()
        .filter(|p| p.is_some())
        .count();
    if set > 1 {
        rep.at(
            anchor,
            field.to_string(),
            "at most one of `path_prefix`, `path_exact`, `path_regex`",
        );
        return None;
    }
    let slash = |p: &Spanned<String>, key: &str, rep: &mut Reporter<'_>| {
        let ok = p.get_ref().starts_with('/');
        if !ok {
            rep.at(p.span(), format!("{field}.{key}"), "must start with '/'");
        }
        ok && (!policy || super::rules::resolved_form(p, format!("{field}.{key}"), rep))
    };
    if let Some(p) = &r.path_exact {
        return slash(p, "path_exact", rep).then(|| PathMatch::Exact(p.get_ref().clone()));
    }
    if let Some(p) = &r.path_regex {
        return match PathMatch::regex(p.get_ref()) {
            Ok(m) => Some(m),
            Err(e) => {
                let msg = e.to_string().replace('\n', " ");
                rep.at(
                    p.span(),
                    format!("{field}.path_regex"),
                    format!("invalid regex: {msg}"),
                );
                None
            }
        };
    }
    match &r.path_prefix {
        Some(p) => slash(p, "path_prefix", rep).then(|| PathMatch::Prefix(p.get_ref().clone())),
        None => Some(PathMatch::Prefix("/".into())),
    }
}

pub(super) fn is_header_name(s: &str) -> bool {
    !s.is_empty() && is_token(s)
}
