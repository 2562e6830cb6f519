//! `[cache]` (the engine's store) and a route's `cache` (its policy and
//! key), compiled into the proxy's `CacheSettings` and `RouteCache`.

use ferrogate_proxy::cache::core::{CachePolicyConfig, DiskConfig, KeyConfig, StoreConfig};
use ferrogate_proxy::cache::{CacheSettings, RouteCache};

use super::*;

/// Largest `max_bytes` accepted (1 TiB): a guard against a typo'd unit.
const MAX_STORE_BYTES: i64 = 1 << 40;
const MAX_SHARDS: i64 = 1024;
/// Longest TTL accepted (one year, seconds).
const MAX_TTL: i64 = 365 * 24 * 3600;

/// The engine's cache settings and the configured key seed (None: the
/// engine picks a random one at start).
pub(super) fn check_cache(
    c: &CacheSection,
    rep: &mut Reporter<'_>,
) -> (CacheSettings, Option<u128>) {
    let mut s = CacheSettings::default();
    let d = StoreConfig::default();
    let int = |v: &Option<Spanned<i64>>,
               key: &str,
               lo: i64,
               hi: i64,
               unit: &str,
               rep: &mut Reporter<'_>|
     -> Option<i64> {
        let v = v.as_ref()?;
        if (lo..=hi).contains(v.get_ref()) {
            Some(*v.get_ref())
        } else {
            rep.at(
                v.span(),
                format!("cache.{key}"),
                format!("must be {lo}..={hi}{unit}"),
            );
            None
        }
    };
    let max_bytes = int(&c.max_bytes, "max_bytes", 1, MAX_STORE_BYTES, " bytes", rep)
        .map_or(d.max_bytes, |v| v as usize);
    let shards = int(&c.shards, "shards", 1, MAX_SHARDS, "", rep).map_or(d.shards, |v| v as usize);
    s.store.max_bytes = max_bytes;
    s.store.shards = shards;
    // Each shard keeps its share of the budget; the store clamps a bigger
    // object limit to it silently, so say it here.
    let share = (max_bytes / shards.next_power_of_two()).max(1);
    s.store.max_object_bytes = match &c.max_object_bytes {
        None => d.max_object_bytes.min(share),
        Some(v) => {
            let n = *v.get_ref();
            let field = "cache.max_object_bytes";
            if n < 1 {
                rep.at(v.span(), field, "must be at least 1 byte");
            } else if n as u64 > max_bytes as u64 {
                rep.at(
                    v.span(),
                    field,
                    format!("larger than cache.max_bytes ({max_bytes})"),
                );
            } else if n as u64 > share as u64 {
                rep.at(
                    v.span(),
                    field,
                    format!(
                        "larger than one shard's share of cache.max_bytes ({share} = max_bytes / {} shards): lower it, or use fewer shards",
                        shards.next_power_of_two()
                    ),
                );
            }
            (n.max(1) as usize).min(share)
        }
    };
    s.store.tag_header = header_setting(&c.tag_header, "tag_header", d.tag_header, rep);
    s.status_header = header_setting(&c.status_header, "status_header", s.status_header, rep);
    if let Some(ms) = int(
        &c.lock_timeout_ms,
        "lock_timeout_ms",
        1,
        600_000,
        " milliseconds",
        rep,
    ) {
        s.lock_timeout = Duration::from_millis(ms as u64);
    }
    let seed = c.key_seed.as_ref().and_then(|v| {
        let parsed = match v.get_ref() {
            toml::Value::Integer(i) if *i >= 0 => Some(*i as u128),
            toml::Value::String(h) if !h.is_empty() && h.len() <= 32 => {
                u128::from_str_radix(h, 16).ok()
            }
            _ => None,
        };
        if parsed.is_none() {
            rep.at(
                v.span(),
                "cache.key_seed",
                "must be a non-negative integer or a string of 1..=32 hex digits",
            );
        }
        parsed
    });
    s.disk = c.disk.as_ref().and_then(|d| check_disk(d, rep));
    (s, seed)
}

/// Largest disk budget accepted (64 TiB).
const MAX_DISK_BYTES: i64 = 1 << 46;

/// `[cache.disk]`; None when it has errors (reported).
fn check_disk(d: &Spanned<CacheDiskSection>, rep: &mut Reporter<'_>) -> Option<DiskConfig> {
    let before = rep.errors.len();
    let t = d.get_ref();
    let raw = t.dir.get_ref();
    let base = rep.file.parent().map(Path::to_path_buf).unwrap_or_default();
    // Absolute from here on: the engine compares it across reloads, and a
    // start from the last-known-good copy must open the same directory
    // whatever its working directory (a relative config path, or an
    // admin-API body without one, resolves against this process's).
    let dir = base.join(raw);
    let dir = std::path::absolute(&dir).unwrap_or(dir);
    if raw.trim().is_empty() {
        rep.at(t.dir.span(), "cache.disk.dir", "must name a directory");
    } else if dir.exists() && !dir.is_dir() {
        rep.at(
            t.dir.span(),
            "cache.disk.dir",
            format!("{} exists and is not a directory", dir.display()),
        );
    }
    let max = *t.max_bytes.get_ref();
    if !(1..=MAX_DISK_BYTES).contains(&max) {
        rep.at(
            t.max_bytes.span(),
            "cache.disk.max_bytes",
            format!("must be 1..={MAX_DISK_BYTES} bytes"),
        );
    }
    let mut cfg = DiskConfig::new(dir, max.max(1) as u64);
    cfg.fsync = t.fsync;
    if let Some(m) = &t.max_object_bytes {
        let n = *m.get_ref();
        if n < 1 || n > max {
            rep.at(
                m.span(),
                "cache.disk.max_object_bytes",
                format!("must be 1..=cache.disk.max_bytes ({max})"),
            );
        }
        cfg.max_object_bytes = n.max(1) as u64;
    }
    (rep.errors.len() == before).then_some(cfg)
}

/// `tag_header` / `status_header`: a header name, or none.
fn header_setting(
    v: &Option<Spanned<HeaderSetting>>,
    key: &str,
    default: Option<String>,
    rep: &mut Reporter<'_>,
) -> Option<String> {
    let Some(v) = v else {
        return default;
    };
    match v.get_ref() {
        HeaderSetting::Off => None,
        HeaderSetting::Name(n) if is_header_name(n) => Some(n.clone()),
        HeaderSetting::Name(n) => {
            rep.at(
                v.span(),
                format!("cache.{key}"),
                format!("{n:?} is not a header name"),
            );
            None
        }
        HeaderSetting::On => {
            rep.at(
                v.span(),
                format!("cache.{key}"),
                "a header name, or \"\" / false for none",
            );
            None
        }
    }
}

/// A route's `cache` (`field` is the route's). None: no caching, or an
/// error (reported). `respond`: the route answers itself.
pub(super) fn check_route_cache(
    field: &str,
    r: &RouteSection,
    rep: &mut Reporter<'_>,
) -> Option<Arc<RouteCache>> {
    let c = r.cache.as_ref()?;
    let field = format!("{field}.cache");
    let table = match c.get_ref() {
        RouteCacheSetting::Off => return None,
        RouteCacheSetting::Defaults => None,
        RouteCacheSetting::Table(t) => Some(t),
    };
    if r.respond.is_some() {
        rep.at(
            c.span(),
            field,
            "this route responds itself: only a route that proxies (`upstream`) caches responses",
        );
        return None;
    }
    let Some(t) = table else {
        return Some(Arc::new(RouteCache::default()));
    };
    let before = rep.errors.len();
    let secs = |v: &Option<Spanned<i64>>, key: &str, hi: i64, rep: &mut Reporter<'_>| {
        let v = v.as_ref()?;
        if (0..=hi).contains(v.get_ref()) {
            Some(*v.get_ref() as u32)
        } else {
            rep.at(
                v.span(),
                format!("{field}.{key}"),
                format!("must be 0..={hi}"),
            );
            None
        }
    };
    let d = CachePolicyConfig::default();
    let ttl = secs(&t.ttl, "ttl", MAX_TTL, rep);
    let min_ttl = secs(&t.min_ttl, "min_ttl", MAX_TTL, rep);
    let max_ttl = secs(&t.max_ttl, "max_ttl", MAX_TTL, rep);
    if let (Some(lo), Some(hi), Some(span)) = (min_ttl, max_ttl, t.max_ttl.as_ref())
        && lo > hi
    {
        rep.at(
            span.span(),
            format!("{field}.max_ttl"),
            format!("smaller than min_ttl ({lo})"),
        );
    }
    let heuristic_percent = secs(&t.heuristic_percent, "heuristic_percent", 100, rep);
    let heuristic_max = secs(&t.heuristic_max, "heuristic_max", MAX_TTL, rep);
    let policy = CachePolicyConfig {
        ttl_override: ttl,
        min_ttl: min_ttl.unwrap_or(d.min_ttl),
        max_ttl,
        heuristic_percent: heuristic_percent.map_or(d.heuristic_percent, |p| p as u8),
        heuristic_max: heuristic_max.unwrap_or(d.heuristic_max),
        ignore_response_no_cache: t.ignore_response_no_cache,
        ignore_request_no_cache: t.ignore_request_no_cache,
        store_set_cookie: t.store_set_cookie,
    };
    if t.ignore_query
        && let Some(p) = t.ignore_params.first()
    {
        rep.at(
            p.span(),
            format!("{field}.ignore_params"),
            "has no effect with ignore_query = true (the whole query is left out)",
        );
    }
    let mut key = KeyConfig {
        ignore_query: t.ignore_query,
        ..KeyConfig::default()
    };
    for (k, p) in t.ignore_params.iter().enumerate() {
        let name = p.get_ref();
        if name.is_empty() || name.contains(['&', '=']) {
            rep.at(
                p.span(),
                format!("{field}.ignore_params[{k}]"),
                format!("{name:?} is not a query parameter name"),
            );
        } else {
            key.ignore_params.push(name.clone().into_bytes().into());
        }
    }
    // Fields the proxy sets, replaces or strips on the way upstream.
    const PROXY_OWNED: [&str; 10] = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "via",
        "x-request-id",
        "host",
        "authorization",
        "x-client-cn",
        "x-client-san",
        "x-client-cert",
        "x-client-verify",
    ];
    for (k, h) in t.key_headers.iter().enumerate() {
        let name = h.get_ref();
        if !is_header_name(name) {
            rep.at(
                h.span(),
                format!("{field}.key_headers[{k}]"),
                format!("{name:?} is not a header name"),
            );
            continue;
        }
        let lower = name.to_ascii_lowercase();
        if PROXY_OWNED.contains(&lower.as_str()) {
            // The key would hold the client's value while the origin sees
            // the proxy's (or none): a client could pick another's entry.
            rep.at(
                h.span(),
                format!("{field}.key_headers[{k}]"),
                format!(
                    "{name:?} is set or removed by the proxy (the origin never sees the client's value): it cannot key the cache"
                ),
            );
            continue;
        }
        if key.headers.iter().any(|b| b[..] == *lower.as_bytes()) {
            rep.at(
                h.span(),
                format!("{field}.key_headers[{k}]"),
                format!("{name:?} is listed twice"),
            );
            continue;
        }
        key.headers.push(lower.into_bytes().into());
    }
    (rep.errors.len() == before).then(|| Arc::new(RouteCache::new(policy, key)))
}
