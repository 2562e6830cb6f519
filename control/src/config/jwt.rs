//! `[[jwt]]`: bearer-token providers, each compiled with its JWKS file
//! (named for the daemon's file watch: a changed key set is applied as a
//! new snapshot).

use ferrogate_proxy::jwt::{ALGORITHMS, JwtAuth, JwtSettings};

use super::*;

pub(super) fn check_jwt(cfg: &FileConfig, rep: &mut Reporter<'_>) -> Vec<(String, Arc<JwtAuth>)> {
    let mut out: Vec<(String, Arc<JwtAuth>)> = Vec::new();
    let base = rep.file.parent().map(Path::to_path_buf).unwrap_or_default();
    for (i, j) in cfg.jwt.iter().enumerate() {
        let field = format!("jwt[{i}]");
        let name = j.name.get_ref();
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            rep.at(
                j.name.span(),
                format!("{field}.name"),
                "must be letters, digits, `-`, `_` or `.` (it is the realm of the 401's challenge)",
            );
            continue;
        }
        if name == NO_JWT {
            rep.at(
                j.name.span(),
                format!("{field}.name"),
                format!("{NO_JWT:?} is reserved: a route's `jwt = \"{NO_JWT}\"` exempts it from its listener's provider"),
            );
            continue;
        }
        if out.iter().any(|(n, _)| n == name) {
            rep.at(
                j.name.span(),
                format!("{field}.name"),
                format!("duplicate jwt provider {name:?}"),
            );
            continue;
        }
        let mut algorithms = Vec::new();
        let names = j.algorithms.as_ref().map_or_else(
            || vec!["RS256".to_string(), "ES256".to_string()],
            |a| a.get_ref().clone(),
        );
        for a in &names {
            match ALGORITHMS.iter().find(|(n, _)| n == a) {
                Some((_, alg)) => algorithms.push(*alg),
                None => {
                    let span = j.algorithms.as_ref().map_or(0..0, |a| a.span());
                    rep.at(
                        span,
                        format!("{field}.algorithms"),
                        format!("{a:?}: must be \"HS256\", \"RS256\" or \"ES256\""),
                    );
                }
            }
        }
        if names.is_empty() {
            let span = j.algorithms.as_ref().map_or(0..0, |a| a.span());
            rep.at(
                span,
                format!("{field}.algorithms"),
                "at least one algorithm",
            );
        }
        if *j.clock_skew_s.get_ref() > 3600 {
            rep.at(
                j.clock_skew_s.span(),
                format!("{field}.clock_skew_s"),
                "must be 0..=3600 seconds",
            );
        }
        let path = base.join(j.jwks.get_ref());
        rep.uses(&path);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) => {
                rep.at(
                    j.jwks.span(),
                    format!("{field}.jwks"),
                    format!("cannot read {}: {e}", path.display()),
                );
                continue;
            }
        };
        if algorithms.is_empty() {
            continue;
        }
        let settings = JwtSettings {
            name: name.clone(),
            algorithms,
            issuer: j.issuer.clone(),
            audience: j.audience.clone(),
            clock_skew_s: *j.clock_skew_s.get_ref(),
        };
        match JwtAuth::new(&settings, &text) {
            Ok((a, skipped)) => {
                for note in skipped {
                    tracing::warn!(provider = %name, jwks = %path.display(), "JWKS key skipped: {note}");
                }
                out.push((name.clone(), Arc::new(a)));
            }
            Err(e) => rep.at(
                j.jwks.span(),
                format!("{field}.jwks"),
                format!("{}: {e}", path.display()),
            ),
        }
    }
    out
}

/// A route's `jwt` that exempts it from its listener's provider.
pub(super) const NO_JWT: &str = "none";

/// The provider a listener or route (`field`) names.
fn named(
    field: &str,
    name: &Spanned<String>,
    providers: &[(String, Arc<JwtAuth>)],
    rep: &mut Reporter<'_>,
) -> Option<Arc<JwtAuth>> {
    match providers.iter().find(|(n, _)| n == name.get_ref()) {
        Some((_, p)) => Some(p.clone()),
        None => {
            rep.at(
                name.span(),
                format!("{field}.jwt"),
                format!("no [[jwt]] provider named {:?}", name.get_ref()),
            );
            None
        }
    }
}

/// The provider a listener names.
pub(super) fn listener_jwt(
    i: usize,
    l: &ListenerSection,
    providers: &[(String, Arc<JwtAuth>)],
    rep: &mut Reporter<'_>,
) -> Option<Arc<JwtAuth>> {
    named(&format!("listeners[{i}]"), l.jwt.as_ref()?, providers, rep)
}

/// A route's `jwt` (`field` = `listeners[i].routes[j]`): a provider, or
/// `"none"` on a listener that names one (`listener_named`: its `jwt` is
/// set, even to an unknown provider, reported there). The listener's own
/// provider is
/// taken as no `jwt` (no route lookup before the token for it). An
/// unknown name is reported and taken as `"none"` (the file is refused
/// anyway).
pub(super) fn route_jwt(
    field: &str,
    r: &RouteSection,
    listener_named: bool,
    listener: Option<&Arc<JwtAuth>>,
    providers: &[(String, Arc<JwtAuth>)],
    rep: &mut Reporter<'_>,
) -> RouteJwt {
    let Some(name) = &r.jwt else {
        return RouteJwt::Listener;
    };
    if name.get_ref() != NO_JWT {
        return match named(field, name, providers, rep) {
            Some(p) if listener.is_some_and(|l| Arc::ptr_eq(l, &p)) => RouteJwt::Listener,
            Some(p) => RouteJwt::Provider(p),
            None => RouteJwt::Exempt,
        };
    }
    if !listener_named {
        rep.at(
            name.span(),
            format!("{field}.jwt"),
            format!(
                "{NO_JWT:?} exempts a route from its listener's `jwt`, but the listener has none"
            ),
        );
    }
    RouteJwt::Exempt
}
