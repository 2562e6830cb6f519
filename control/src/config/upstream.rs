//! `[[upstreams]]`: endpoints, balancer, health checks, passive ejection,
//! breaker, retries, timeouts, keep-alive pool and TLS to the origins.

use super::*;

/// A number within `range`, or `default` when absent.
pub(super) fn bounded<T>(
    v: &Option<Spanned<T>>,
    default: T,
    range: std::ops::RangeInclusive<T>,
    field: String,
    rep: &mut Reporter<'_>,
) -> T
where
    T: Copy + PartialOrd + std::fmt::Display,
{
    match v {
        None => default,
        Some(x) => {
            if !range.contains(x.get_ref()) {
                rep.at(
                    x.span(),
                    field,
                    format!("must be {}..={}", range.start(), range.end()),
                );
            }
            *x.get_ref()
        }
    }
}

pub(super) fn ms_of(
    v: &Option<Spanned<u64>>,
    default: Duration,
    field: String,
    rep: &mut Reporter<'_>,
) -> Duration {
    let d = default.as_millis() as u64;
    Duration::from_millis(bounded(v, d, 1..=86_400_000, field, rep))
}

pub(super) fn parse_status_range(s: &str) -> Option<(u16, u16)> {
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
        None => {
            let v = s.trim().parse().ok()?;
            (v, v)
        }
    };
    ((100..=599).contains(&lo) && (100..=599).contains(&hi) && lo <= hi).then_some((lo, hi))
}

/// TLS to the endpoints of `[[upstreams]]` number `i` (`tls = true`).
pub(super) fn check_upstream_tls(
    i: usize,
    u: &UpstreamSection,
    rep: &mut Reporter<'_>,
) -> Option<ferrogate_proxy::tls::UpstreamTls> {
    use ferrogate_proxy::tls::{CertError, TlsConfigError, UpstreamTls, UpstreamTlsConfig};
    let f = format!("upstreams[{i}]");
    let on = u.tls.as_ref().is_some_and(|t| *t.get_ref());
    let insecure = u
        .insecure_skip_verify
        .as_ref()
        .is_some_and(|t| *t.get_ref());
    if !on {
        for (span, key) in [
            (u.ca.as_ref().map(|c| c.span()), "ca"),
            (u.sni.as_ref().map(|c| c.span()), "sni"),
            (
                u.insecure_skip_verify.as_ref().map(|c| c.span()),
                "insecure_skip_verify",
            ),
        ] {
            if let Some(sp) = span {
                rep.at(sp, format!("{f}.{key}"), "only used with tls = true");
            }
        }
        return None;
    }
    let tls_span = u.tls.as_ref().map(|t| t.span()).unwrap_or(u.name.span());
    if let Some(h) = &u.health
        && h.get_ref().kind.as_ref().map(|k| k.get_ref().as_str()) != Some("tcp")
    {
        // Active checks speak plain HTTP; against a TLS port they would fail.
        rep.at(
            h.span(),
            format!("{f}.health.type"),
            "TLS pools support only type = \"tcp\" health checks",
        );
    }
    if u.ca.is_none() && !insecure {
        rep.at(
            tls_span,
            format!("{f}.ca"),
            "tls = true needs ca = \"trust-anchors.pem\" to verify the upstream \
             (or insecure_skip_verify = true)",
        );
        return None;
    }
    let base = rep.file.parent().map(Path::to_path_buf).unwrap_or_default();
    if let Some(c) = &u.ca {
        rep.uses(&base.join(c.get_ref()));
    }
    let cfg = UpstreamTlsConfig {
        ca: u.ca.as_ref().map(|c| base.join(c.get_ref())),
        insecure_skip_verify: insecure && u.ca.is_none(),
        sni: u.sni.as_ref().map(|s| s.get_ref().clone()),
    };
    match UpstreamTls::build(&cfg) {
        Ok(t) => {
            if cfg.insecure_skip_verify {
                tracing::warn!(
                    upstream = %u.name.get_ref(),
                    "insecure_skip_verify: upstream certificates are not verified"
                );
            }
            Some(t)
        }
        Err(e) => {
            let (sp, key) = match &e {
                TlsConfigError::Cert(CertError::Ca { .. }) => {
                    (u.ca.as_ref().map(|c| c.span()), "ca")
                }
                _ => (u.sni.as_ref().map(|c| c.span()), "sni"),
            };
            rep.at(sp.unwrap_or(tls_span), format!("{f}.{key}"), e.to_string());
            None
        }
    }
}

/// Endpoints and policy of `[[upstreams]]` number `i`.
pub(super) fn check_upstream(
    i: usize,
    u: &UpstreamSection,
    rep: &mut Reporter<'_>,
) -> (Vec<Endpoint>, PoolPolicy) {
    let f = format!("upstreams[{i}]");
    let mut eps: Vec<Endpoint> = Vec::new();
    if u.endpoints.is_empty() {
        rep.at(
            u.name.span(),
            format!("{f}.endpoints"),
            "needs at least one endpoint",
        );
    }
    if u.endpoints.len() > MAX_ENDPOINTS {
        rep.at(
            u.name.span(),
            format!("{f}.endpoints"),
            format!("at most {MAX_ENDPOINTS} endpoints"),
        );
    }
    for (j, ep) in u.endpoints.iter().enumerate() {
        let (addr, weight) = match ep.get_ref() {
            EndpointSetting::Address(a) => (a, 1),
            EndpointSetting::Table(t) => (&t.address, t.weight),
        };
        if !(1..=10_000).contains(&weight) {
            rep.at(
                ep.span(),
                format!("{f}.endpoints[{j}].weight"),
                "must be 1..=10000",
            );
        }
        match addr.parse::<SocketAddr>() {
            Ok(a) if eps.iter().any(|e| e.addr == a) => rep.at(
                ep.span(),
                format!("{f}.endpoints[{j}]"),
                format!("duplicate endpoint {a}"),
            ),
            Ok(a) => eps.push(Endpoint::weighted(a, weight.max(1))),
            Err(_) => rep.at(
                ep.span(),
                format!("{f}.endpoints[{j}]"),
                format!("{addr:?} is not ip:port"),
            ),
        }
    }
    let hash_on = u
        .hash_on
        .as_ref()
        .and_then(|h| match HashOn::parse(h.get_ref()) {
            Ok(x) => Some(x),
            Err(e) => {
                rep.at(h.span(), format!("{f}.hash_on"), e);
                None
            }
        });
    let balancer = match u.balancer.as_ref().map(|b| (b, b.get_ref().as_str())) {
        None | Some((_, "round_robin")) => Balancer::RoundRobin,
        Some((_, "weighted")) => Balancer::Weighted,
        Some((_, "least_conn")) => Balancer::LeastConn,
        Some((_, "hash")) => Balancer::Hash(hash_on.clone().unwrap_or(HashOn::Source)),
        Some((b, other)) => {
            rep.at(
                b.span(),
                format!("{f}.balancer"),
                format!("unknown balancer {other:?}: round_robin, weighted, least_conn or hash"),
            );
            Balancer::Hash(HashOn::Source)
        }
    };
    if let Some(h) = &u.hash_on
        && hash_on.is_some()
        && !balancer.is_hash()
    {
        rep.at(
            h.span(),
            format!("{f}.hash_on"),
            "only used with balancer = \"hash\"",
        );
    }
    let health = u.health.as_ref().map(|h| {
        let hf = format!("{f}.health");
        let s = h.get_ref();
        let d = HealthCheck::default();
        let kind = match s.kind.as_ref().map(|k| (k, k.get_ref().as_str())) {
            Some((_, "tcp")) => {
                if let Some(p) = &s.path {
                    rep.at(p.span(), format!("{hf}.path"), "tcp checks send no request");
                }
                CheckKind::Tcp
            }
            None | Some((_, "http")) => {
                let path = s.path.as_ref().map(|p| p.get_ref().as_str()).unwrap_or("/");
                if !path.starts_with('/') || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    rep.at(
                        s.path.as_ref().map(|p| p.span()).unwrap_or(h.span()),
                        format!("{hf}.path"),
                        "must start with '/' and contain no spaces or control characters",
                    );
                }
                if s.kind.is_none() && s.path.is_none() {
                    CheckKind::Tcp
                } else {
                    CheckKind::Http {
                        path: path.to_string(),
                        host: s.host.clone().unwrap_or_default(),
                    }
                }
            }
            Some((k, other)) => {
                rep.at(
                    k.span(),
                    format!("{hf}.type"),
                    format!("unknown check type {other:?}: http or tcp"),
                );
                CheckKind::Tcp
            }
        };
        let interval = ms_of(&s.interval_ms, d.interval, format!("{hf}.interval_ms"), rep);
        let timeout = ms_of(&s.timeout_ms, d.timeout, format!("{hf}.timeout_ms"), rep);
        if timeout >= interval && !interval.is_zero() {
            rep.at(
                s.timeout_ms.as_ref().map(|t| t.span()).unwrap_or(h.span()),
                format!("{hf}.timeout_ms"),
                "must be shorter than interval_ms",
            );
        }
        let expect_status = match &s.expect_status {
            None => d.expect_status,
            Some(e) => parse_status_range(e.get_ref()).unwrap_or_else(|| {
                rep.at(
                    e.span(),
                    format!("{hf}.expect_status"),
                    format!(
                        "{:?} is not a status or range like \"200-399\"",
                        e.get_ref()
                    ),
                );
                d.expect_status
            }),
        };
        HealthCheck {
            kind,
            interval,
            timeout,
            rise: bounded(&s.rise, d.rise, 1..=100, format!("{hf}.rise"), rep),
            fall: bounded(&s.fall, d.fall, 1..=100, format!("{hf}.fall"), rep),
            expect_status,
        }
    });
    let passive = u.passive.as_ref().map(|p| {
        let pf = format!("{f}.passive");
        let s = p.get_ref();
        let d = PassivePolicy::default();
        PassivePolicy {
            consecutive_failures: bounded(
                &s.consecutive_failures,
                d.consecutive_failures,
                1..=1000,
                format!("{pf}.consecutive_failures"),
                rep,
            ),
            eject: ms_of(&s.eject_ms, d.eject, format!("{pf}.eject_ms"), rep),
        }
    });
    let breaker = u.breaker.as_ref().map(|b| {
        let bf = format!("{f}.breaker");
        let s = b.get_ref();
        let d = BreakerPolicy::default();
        BreakerPolicy {
            failure_percent: bounded(
                &s.failure_percent,
                d.failure_percent,
                1..=100,
                format!("{bf}.failure_percent"),
                rep,
            ),
            min_requests: bounded(
                &s.min_requests,
                d.min_requests,
                1..=1_000_000,
                format!("{bf}.min_requests"),
                rep,
            ),
            consecutive_failures: s.consecutive_failures.unwrap_or(d.consecutive_failures),
            window: ms_of(&s.window_ms, d.window, format!("{bf}.window_ms"), rep),
            cooldown: ms_of(&s.cooldown_ms, d.cooldown, format!("{bf}.cooldown_ms"), rep),
            half_open_probes: bounded(
                &s.half_open_probes,
                d.half_open_probes,
                1..=1000,
                format!("{bf}.half_open_probes"),
                rep,
            ),
        }
    });
    let retry = match &u.retry {
        None => RetryPolicy::default(),
        Some(r) => {
            let rf = format!("{f}.retry");
            let s = r.get_ref();
            let d = RetryPolicy::default();
            RetryPolicy {
                attempts: bounded(
                    &s.attempts,
                    d.attempts,
                    1..=10,
                    format!("{rf}.attempts"),
                    rep,
                ),
                budget_percent: bounded(
                    &s.budget_percent,
                    d.budget_percent,
                    0..=100,
                    format!("{rf}.budget_percent"),
                    rep,
                ),
                min_per_sec: s.min_per_sec.unwrap_or(d.min_per_sec),
                window: ms_of(&s.window_ms, d.window, format!("{rf}.window_ms"), rep),
            }
        }
    };
    let opt_ms = |v: &Option<Spanned<u64>>, key: &str, rep: &mut Reporter<'_>| {
        v.as_ref()
            .map(|_| ms_of(v, Duration::ZERO, format!("{f}.{key}"), rep))
    };
    let timeouts = UpstreamTimeouts {
        connect: opt_ms(&u.connect_ms, "connect_ms", rep),
        response: opt_ms(&u.response_ms, "response_ms", rep),
        read: opt_ms(&u.read_ms, "read_ms", rep),
        idle: opt_ms(&u.idle_ms, "idle_ms", rep),
    };
    let policy = PoolPolicy {
        balancer,
        health,
        passive,
        breaker,
        retry,
        timeouts,
        fail_open: u.fail_open.unwrap_or(true),
        keepalive: match &u.keepalive {
            Some(k) if *k.get_ref() > 10_000 => {
                rep.at(
                    k.span(),
                    format!("{f}.keepalive"),
                    "at most 10000 idle connections per endpoint",
                );
                0
            }
            Some(k) => *k.get_ref() as usize,
            None => PoolPolicy::default().keepalive,
        },
        max_requests: u
            .max_requests
            .as_ref()
            .map_or(PoolPolicy::default().max_requests, |m| *m.get_ref()),
    };
    (eps, policy)
}
