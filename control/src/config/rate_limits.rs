//! `[[rate_limits]]`: token buckets defined once, enforced at L7 (the
//! proxy's shared quota table, 429 + `Retry-After`, escalation to the XDP
//! deny set) or in XDP (compiled into a filter rate rule).

use ferrogate_proxy::limits::{Limit, LimitKey};
use ferrogate_proxy::quota::{EscalateSpec, LimitSpec};
use ferrogate_proxy::rules::Cidr;

use super::*;

/// The file's rate limits, compiled.
#[derive(Default)]
pub(super) struct RateLimits {
    /// L7 limits, `l7[i].id == i` (the snapshot's `limits`).
    pub l7: Vec<Arc<Limit>>,
    /// XDP limits as filter rate rules (added to `[filter]`'s).
    pub xdp: Vec<RateRule>,
    /// Every name and what it compiled to.
    by_name: BTreeMap<String, Compiled>,
}

enum Compiled {
    L7(Arc<Limit>),
    Xdp,
    /// Its errors are reported; a listener naming it adds none.
    Invalid,
}

pub(super) fn check_rate_limits(cfg: &FileConfig, rep: &mut Reporter<'_>) -> RateLimits {
    let mut out = RateLimits::default();
    for (i, r) in cfg.rate_limits.iter().enumerate() {
        let field = format!("rate_limits[{i}]");
        let name = r.name.get_ref();
        if !counter_name(name) {
            rep.at(
                r.name.span(),
                format!("{field}.name"),
                "must be 1..=48 letters, digits, `_` or `-` (it names the limit's counters)",
            );
            continue;
        }
        if out.by_name.contains_key(name) {
            rep.at(
                r.name.span(),
                format!("{field}.name"),
                format!("duplicate rate limit {name:?}"),
            );
            continue;
        }
        let xdp = match r.enforce.as_ref().map(|e| e.get_ref().as_str()) {
            None | Some("l7") => false,
            Some("xdp") => true,
            Some(other) => {
                let span = r.enforce.as_ref().map_or(0..0, |e| e.span());
                rep.at(
                    span,
                    format!("{field}.enforce"),
                    format!("{other:?}: must be \"l7\" or \"xdp\""),
                );
                out.by_name.insert(name.clone(), Compiled::Invalid);
                continue;
            }
        };
        if r.prefix4 > 32 || r.prefix6 > 128 {
            let which = if r.prefix4 > 32 { "prefix4" } else { "prefix6" };
            rep.at(
                r.name.span(),
                format!("{field}.{which}"),
                "prefix4 <= 32, prefix6 <= 128",
            );
            out.by_name.insert(name.clone(), Compiled::Invalid);
            continue;
        }
        let limit = if xdp {
            check_xdp(&field, r, rep).map(|rule| {
                out.xdp.push(rule);
                Compiled::Xdp
            })
        } else {
            check_l7(&field, r, out.l7.len(), rep).map(|l| {
                let l = Arc::new(l);
                out.l7.push(l.clone());
                Compiled::L7(l)
            })
        };
        out.by_name
            .insert(name.clone(), limit.unwrap_or(Compiled::Invalid));
    }
    out
}

impl RateLimits {
    /// The L7 limits `names` (a listener's or route's `rate_limits`);
    /// `listener`: those its listener applies already (a route listing
    /// one again would take two tokens a request).
    pub(super) fn resolve(
        &self,
        names: &[Spanned<String>],
        listener: &[Arc<Limit>],
        field: &str,
        rep: &mut Reporter<'_>,
    ) -> Vec<Arc<Limit>> {
        let mut out: Vec<Arc<Limit>> = Vec::new();
        for (j, n) in names.iter().enumerate() {
            let at = format!("{field}.rate_limits[{j}]");
            match self.by_name.get(n.get_ref()) {
                Some(Compiled::L7(l)) if listener.iter().any(|o| o.id == l.id) => rep.at(
                    n.span(),
                    at,
                    format!(
                        "{:?} is already applied by the listener (each request would take two tokens)",
                        n.get_ref()
                    ),
                ),
                Some(Compiled::L7(l)) if out.iter().any(|o| o.id == l.id) => {
                    rep.at(n.span(), at, format!("{:?} is listed twice", n.get_ref()))
                }
                Some(Compiled::L7(l)) => out.push(l.clone()),
                Some(Compiled::Invalid) => {}
                Some(Compiled::Xdp) => rep.at(
                    n.span(),
                    at,
                    format!(
                        "{:?} is enforced in XDP (it applies to every VIP); only L7 limits are listed here",
                        n.get_ref()
                    ),
                ),
                None => rep.at(
                    n.span(),
                    at,
                    format!("no [[rate_limits]] named {:?}", n.get_ref()),
                ),
            }
        }
        out
    }
}

/// Burst default: one second's worth, at least one.
fn burst_of(r: &RateLimitSection) -> u64 {
    r.burst
        .as_ref()
        .map_or((*r.rate.get_ref()).ceil().max(1.0) as u64, |b| *b.get_ref())
}

fn check_l7(field: &str, r: &RateLimitSection, id: usize, rep: &mut Reporter<'_>) -> Option<Limit> {
    let before = rep.errors.len();
    if r.unit.is_some() {
        let span = r.unit.as_ref().map_or(0..0, |u| u.span());
        rep.at(
            span,
            format!("{field}.unit"),
            "only XDP limits have a unit (L7 limits count requests)",
        );
    }
    let rate = *r.rate.get_ref();
    let burst = burst_of(r);
    if let Some(b) = &r.burst
        && !(1..=u64::from(ferrogate_proxy::quota::MAX_BURST)).contains(b.get_ref())
    {
        rep.at(b.span(), format!("{field}.burst"), "must be 1..=1000000");
    }
    let spec = u32::try_from(burst)
        .ok()
        .and_then(|b| LimitSpec::per_second(rate, b));
    if spec.is_none() && LimitSpec::per_second(rate, 1).is_none() {
        rep.at(
            r.rate.span(),
            format!("{field}.rate"),
            "must be 0.000278..=1000000 requests a second (one an hour at the least)",
        );
    }
    let key_text = r.key.as_ref().map_or("source", |k| k.get_ref().as_str());
    let key_span = r.key.as_ref().map_or(r.name.span(), |k| k.span());
    let key = match key_text {
        "source" => Some(LimitKey::Source {
            prefix4: r.prefix4,
            prefix6: r.prefix6,
        }),
        "global" => Some(LimitKey::Global),
        "route" => Some(LimitKey::Route),
        "jwt:sub" => Some(LimitKey::JwtSubject),
        other => match other.strip_prefix("header:") {
            Some(h) if is_token(h) => Some(LimitKey::Header(h.to_ascii_lowercase())),
            _ => {
                rep.at(
                    key_span.clone(),
                    format!("{field}.key"),
                    format!(
                        "{other:?}: must be \"source\", \"global\", \"route\", \"jwt:sub\" or \"header:NAME\""
                    ),
                );
                None
            }
        },
    };
    let mut exempt = Vec::new();
    for (j, c) in r.exempt.iter().enumerate() {
        match parse_cidr(c.get_ref()).and_then(|(ip, len)| Cidr::new(ip, len)) {
            Some(c) => exempt.push(c),
            None => rep.at(
                c.span(),
                format!("{field}.exempt[{j}]"),
                format!("{:?} is not an address or CIDR", c.get_ref()),
            ),
        }
    }
    let escalate = r.escalate.as_ref().and_then(|e| {
        let span = e.span();
        let e = e.get_ref();
        if !matches!(key, Some(LimitKey::Source { .. }) | None) {
            rep.at(
                key_span.clone(),
                format!("{field}.escalate"),
                "only a limit keyed by source can escalate (it denies a source address)",
            );
            return None;
        }
        // The deny set holds addresses: a bucket shared by a prefix would
        // deny whichever address of it tipped the count.
        if r.prefix4 != 32 || r.prefix6 != 128 {
            rep.at(
                span,
                format!("{field}.escalate"),
                "needs a bucket per address (prefix4 = 32, prefix6 = 128): the XDP deny set holds addresses",
            );
            return None;
        }
        if !(e.factor.is_finite() && e.factor >= 1.0 && e.factor <= 1000.0) {
            rep.at(span, format!("{field}.escalate.factor"), "must be 1..=1000");
            return None;
        }
        if !(1..=3600).contains(&e.after_s) {
            rep.at(
                span,
                format!("{field}.escalate.after_s"),
                "must be 1..=3600 seconds",
            );
            return None;
        }
        if !(1..=7 * 24 * 3600).contains(&e.ttl_s) {
            rep.at(
                span,
                format!("{field}.escalate.ttl_s"),
                "must be 1..=604800 seconds (a week)",
            );
            return None;
        }
        Some(EscalateSpec {
            over_per_second: (e.factor * rate).floor() as u64,
            windows: e.after_s as u32,
            ttl: Duration::from_secs(e.ttl_s),
        })
    });
    if rep.errors.len() != before {
        return None;
    }
    let mut limit = Limit::new(r.name.get_ref(), id, spec?, key?).with_exempt(exempt);
    if let Some(e) = escalate {
        limit = limit.with_escalation(e);
    }
    Some(limit)
}

fn check_xdp(field: &str, r: &RateLimitSection, rep: &mut Reporter<'_>) -> Option<RateRule> {
    let before = rep.errors.len();
    let rate = *r.rate.get_ref();
    if !(rate >= 1.0 && rate.fract() == 0.0 && rate <= 1e9) {
        rep.at(
            r.rate.span(),
            format!("{field}.rate"),
            "an XDP limit counts whole packets or connections a second: 1..=1000000000",
        );
    }
    let key = match r.key.as_ref().map_or("source", |k| k.get_ref().as_str()) {
        "source" => RateKey::Source {
            prefix4: r.prefix4,
            prefix6: r.prefix6,
        },
        "global" => RateKey::Global,
        other => {
            let span = r.key.as_ref().map_or(0..0, |k| k.span());
            rep.at(
                span,
                format!("{field}.key"),
                format!("{other:?}: an XDP limit is keyed by \"source\" or \"global\""),
            );
            RateKey::Global
        }
    };
    let syn_only = match r.unit.as_ref().map(|u| u.get_ref().as_str()) {
        None | Some("packets") => false,
        Some("connections") => true,
        Some(other) => {
            let span = r.unit.as_ref().map_or(0..0, |u| u.span());
            rep.at(
                span,
                format!("{field}.unit"),
                format!("{other:?}: must be \"packets\" or \"connections\""),
            );
            false
        }
    };
    for (what, set) in [
        ("exempt", !r.exempt.is_empty()),
        ("escalate", r.escalate.is_some()),
    ] {
        if set {
            rep.at(
                r.name.span(),
                format!("{field}.{what}"),
                "only L7 limits have it (exempt sources with a [[filter.cidr]] allow)",
            );
        }
    }
    let burst = burst_of(r);
    if burst > ferrogate_ebpf::rules::MAX_BURST_PACKETS {
        let span = r.burst.as_ref().map_or(0..0, |b| b.span());
        rep.at(span, format!("{field}.burst"), "burst too large");
    }
    if rep.errors.len() != before {
        return None;
    }
    Some(RateRule {
        id: r.name.get_ref().clone(),
        key,
        pps: rate as u64,
        burst_packets: burst,
        bps: 0,
        burst_bytes: 0,
        syn_only,
        vip: None,
        port: None,
        protocol: syn_only.then_some(6),
    })
}
