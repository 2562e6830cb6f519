//! The `cache` scenario (issue #21): ferrogate's response cache against
//! nginx `proxy_cache` (and HAProxy's small `cache`), each on its own
//! listener (port 8083) in front of the lab origin, in the same run,
//! alternating. Every key is fetched once before measuring (the fill), then
//! wrk draws URLs from a Zipf distribution over the keys, so the measured
//! window is (nearly) all hits for every contender: CPU per hit is what is
//! compared, and the hit ratio each proxy saw is checked and reported.
//!
//! The **offload** rows start each contender again with a cold cache whose
//! budget holds only a fraction of the keys (`--offload-budget-pct`), run
//! the same Zipf workload for a fixed time and count the requests that
//! reached the origin at the origin (its nginx `stub_status`): offload =
//! 1 − origin requests / client requests.

use anyhow::{Context, Result, bail};

use crate::contenders::{self, Contender, Extra, Running};
use crate::env::{EDGE_HOST_IP, LOAD_CPU, ORIGIN_IP, PROXY_CPU, VIP};
use crate::measure::{self, Metrics};
use crate::report::{Report, col};
use crate::scenarios::{CPU_NOTE, Ctx, failed_sample, ratio, sample, settings};

/// Every contender's caching listener (beside its plain :80).
const PORT: u16 = 8083;
/// HAProxy's stats page (its cache counters), beside the caching listener.
const HAPROXY_STATS_PORT: u16 = 8084;
const CONTENDERS: [Contender; 3] = [Contender::Ferrogate, Contender::Nginx, Contender::Haproxy];
/// (variant, path pattern with `{}` for the key number). The origin's `/`
/// answers a small body naming the path; `/16k` is an exact-match static
/// file, so the query only makes the key distinct.
const BODIES: [(&str, &str); 2] = [("tiny", "/c/{}"), ("16k", "/16k?k={}")];
/// Zipf exponent of the key popularity.
const ZIPF_S: f64 = 1.0;
/// Below this hit ratio in the measured window a turn fails: the fill did
/// not take, and CPU per hit would compare different work.
const MIN_HIT_RATIO: f64 = 0.95;
/// ferrogate's store: the working set (10,000 x ~16.5 KiB + 10,000 small
/// objects ~ 170 MiB) fits with room to spare, so nothing is evicted.
const FG_MAX_BYTES: u64 = 1 << 30;
/// nginx's key zone and file store; HAProxy's cache (MB).
const NGINX_KEYS_ZONE: &str = "64m";
const HAPROXY_CACHE_MB: u64 = 1024;
/// Nominal body bytes per variant (the origin's tiny answer names the path:
/// ~60 bytes) and what an object costs beyond its body (stored response
/// head, key, index entry): the offload budget is sized in objects.
const BODY_BYTES: [u64; 2] = [64, 16 * 1024];
const HEAD_BYTES: u64 = 512;
/// The lab origin's nginx `stub_status` (control/src/lab.rs).
const ORIGIN_STATUS: &str = "/_origin_status";

fn addr(who: Contender) -> String {
    match who {
        Contender::Ferrogate => format!("{VIP}:{PORT}"),
        _ => format!("{EDGE_HOST_IP}:{PORT}"),
    }
}

fn path(pattern: &str, k: usize) -> String {
    pattern.replace("{}", &k.to_string())
}

/// Where nginx keeps its cache files: tmpfs, so a hit reads memory as
/// ferrogate's does, not a disk. Emptied before each nginx turn.
fn nginx_cache_dir(ctx: &Ctx) -> String {
    format!("/dev/shm/ferrogate-bench-{}cache", ctx.lab.prefix)
}

fn nginx_miss_log(ctx: &Ctx) -> std::path::PathBuf {
    ctx.lab.bench_dir().join("nginx").join("cache-miss.log")
}

/// nginx: `proxy_cache` as issue #21 asks, upstream keepalive as in `http`.
/// Only non-HITs are logged (`if=`), so a hit costs the map lookup and no
/// write; the log gives the hit count and the keys fetched by the fill.
/// `X-Cache` as ferrogate's default `status_header` adds one.
fn extra(ctx: &Ctx, nginx_max_size: &str, haproxy_mb: u64) -> Extra {
    let dir = nginx_cache_dir(ctx);
    let log = nginx_miss_log(ctx);
    // HAProxy refuses an object limit above half its cache.
    let haproxy_max_obj = (haproxy_mb << 20).div_ceil(2).min(1 << 20);
    let log = log.display();
    Extra {
        nginx: format!(
            "  proxy_cache_path {dir} levels=1:2 keys_zone=fc:{NGINX_KEYS_ZONE} max_size={nginx_max_size} inactive=2h use_temp_path=off;\n  \
             map $upstream_cache_status $fc_log {{ HIT 0; default 1; }}\n  \
             log_format fc '$upstream_cache_status $request_uri';\n  \
             upstream origin_cache {{ server {ORIGIN_IP}:8080; keepalive 64; keepalive_requests 1000000; }}\n  \
             server {{\n    listen {EDGE_HOST_IP}:{PORT} reuseport backlog=4096;\n    \
             access_log {log} fc if=$fc_log;\n    sendfile on;\n    \
             location / {{ proxy_pass http://origin_cache; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering on;\n      \
             proxy_cache fc; proxy_cache_valid 200 1h; proxy_cache_lock on; proxy_cache_key $scheme$host$request_uri;\n      \
             add_header X-Cache $upstream_cache_status; }}\n  }}\n"
        ),
        haproxy: format!(
            "\ncache fc\n  total-max-size {haproxy_mb}\n  max-object-size {haproxy_max_obj}\n  max-age 3600\n\n\
             frontend fe_cache\n  bind {EDGE_HOST_IP}:{PORT} backlog 4096\n  default_backend be_cache\n\n\
             backend be_cache\n  http-request cache-use fc\n  http-response set-header Cache-Control max-age=3600\n  http-response cache-store fc\n  server origin {ORIGIN_IP}:8080\n\n\
             listen fc_stats\n  bind {EDGE_HOST_IP}:{HAPROXY_STATS_PORT}\n  stats enable\n  stats uri /stats\n"
        ),
        ..Extra::default()
    }
}

/// A listener whose one route caches everything for an hour (`ttl`
/// replaces the origin's lifetime: the lab origin sends none).
fn ferrogate_listener(cache: &str) -> String {
    format!(
        "\n[cache]\n{cache}\n\n\
         [[upstreams]]\nname = \"origin-cache\"\nendpoints = [\"{ORIGIN_IP}:8080\"]\nmax_requests = 0\n\n\
         [[listeners]]\nport = {PORT}\n\n\
         [[listeners.routes]]\nname = \"cached\"\npath_prefix = \"/\"\nupstream = \"origin-cache\"\ncache = {{ ttl = 3600 }}\n"
    )
}

/// One curl through `who`'s caching port: (x-cache header, body length,
/// body head).
fn fetch(ctx: &Ctx, who: Contender, p: &str) -> Result<(String, usize, String)> {
    let url = format!("http://{}{p}", addr(who));
    let out = ctx
        .lab
        .exec("client", &["curl", "-sS", "-m", "3", "-D", "-", &url])?;
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    if !head.starts_with("HTTP/1.1 200") {
        bail!("{}: {url} answered {:?}", who.name(), head.lines().next());
    }
    let xc = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case("x-cache")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Ok((xc, body.len(), body.chars().take(120).collect()))
}

/// The cache budgets of one start: ferrogate's `[cache]` lines, nginx's
/// `max_size`, HAProxy's `total-max-size` (MB).
struct Budget {
    fg_cache: String,
    nginx_max_size: String,
    haproxy_mb: u64,
}

/// Starts `who` with its caching listener and an empty cache (nginx's
/// directory and miss log removed first; the others keep it in memory).
fn launch(ctx: &Ctx, who: Contender, b: &Budget, fg_name: &str) -> Result<Running> {
    let lab = &ctx.lab;
    let cpu = PROXY_CPU.to_string();
    Ok(match who {
        Contender::Ferrogate => {
            let cfg = contenders::ferrogate_config_tuned(
                lab,
                1,
                &cpu,
                &ferrogate_listener(&b.fg_cache),
                fg_name,
            )?;
            contenders::start_with(lab, who, Some(&cfg), 1, &cpu)?
        }
        _ => {
            if who == Contender::Nginx {
                let _ = std::fs::remove_dir_all(nginx_cache_dir(ctx));
                std::fs::create_dir_all(nginx_cache_dir(ctx))?;
                let _ = std::fs::remove_file(nginx_miss_log(ctx));
            }
            let x = extra(ctx, &b.nginx_max_size, b.haproxy_mb);
            contenders::start_extra(lab, who, None, 1, &cpu, &x)?
        }
    })
}

/// Starts `who` with its caching listener and checks that both bodies come
/// from the origin and that a second request is a hit (ferrogate and nginx
/// say so in `X-Cache`; HAProxy has no such header, its hit counter must move).
fn start_cache(ctx: &Ctx, who: Contender) -> Result<Running> {
    let b = Budget {
        fg_cache: format!("max_bytes = {FG_MAX_BYTES}\nmax_object_bytes = 1048576"),
        nginx_max_size: "2g".into(),
        haproxy_mb: HAPROXY_CACHE_MB,
    };
    let run = launch(ctx, who, &b, "ferrogate-cache.toml")?;
    for (_, pat) in BODIES {
        let p = path(pat, 1);
        let (_, len, head) = fetch(ctx, who, &p)?;
        let from_origin = if p.starts_with("/16k") {
            len == 16 * 1024
        } else {
            head.contains(&format!("origin {ORIGIN_IP}:8080")) && head.contains("path=/c/1")
        };
        if !from_origin {
            bail!(
                "{}: {p} gave {len} body bytes, not the origin's: {head:?}",
                who.name()
            );
        }
        let h0 = hits(ctx, &run)?;
        let (xc, len2, _) = fetch(ctx, who, &p)?;
        if len2 != len {
            bail!("{}: {p} again gave {len2} bytes, first {len}", who.name());
        }
        match who {
            Contender::Haproxy if hits(ctx, &run)?.0 <= h0.0 => {
                bail!("haproxy: a second GET {p} was not a cache hit (cache_hits)");
            }
            Contender::Haproxy => {}
            _ if !xc.eq_ignore_ascii_case("HIT") => {
                bail!(
                    "{}: a second GET {p} said X-Cache {xc:?}, not HIT",
                    who.name()
                )
            }
            _ => {}
        }
    }
    Ok(run)
}

/// (hits, lookups) so far as the proxy counts them. ferrogate: its stats
/// file (lags up to 250 ms); nginx: `lookups` is not known (None: the
/// caller uses wrk's count) and `hits` is minus the non-HIT log lines;
/// HAProxy: `cache_hits` / `cache_lookups` of its stats page.
fn hits(ctx: &Ctx, run: &Running) -> Result<(f64, f64)> {
    match run.who {
        Contender::Ferrogate => {
            let s = run.stats();
            let g = |k: &str| s.get(k).copied().unwrap_or(0) as f64;
            let h = g("stack_cache_hits");
            let other: f64 = [
                "stack_cache_misses",
                "stack_cache_stale",
                "stack_cache_revalidated",
                "stack_cache_expired",
                "stack_cache_bypass",
            ]
            .iter()
            .map(|k| g(k))
            .sum();
            Ok((h, h + other))
        }
        Contender::Nginx => {
            let n = std::fs::read_to_string(nginx_miss_log(ctx))
                .unwrap_or_default()
                .lines()
                .count() as f64;
            Ok((-n, 0.0))
        }
        Contender::Haproxy => haproxy_cache_counters(ctx),
        Contender::Direct => Ok((0.0, 0.0)),
    }
}

/// `cache_hits`, `cache_lookups` of HAProxy's caching frontend/backend
/// (the larger of the two rows: which one counts depends on where the
/// `cache-use` rule sits).
fn haproxy_cache_counters(ctx: &Ctx) -> Result<(f64, f64)> {
    let url = format!("http://{EDGE_HOST_IP}:{HAPROXY_STATS_PORT}/stats;csv");
    let csv = ctx.lab.exec("client", &["curl", "-sS", "-m", "3", &url])?;
    parse_haproxy_csv(&csv).with_context(|| format!("HAProxy stats {url}: {csv:.300}"))
}

fn parse_haproxy_csv(csv: &str) -> Option<(f64, f64)> {
    let mut lines = csv.lines();
    let head: Vec<&str> = lines
        .next()?
        .trim_start_matches('#')
        .trim()
        .split(',')
        .collect();
    let ix = |n: &str| head.iter().position(|h| *h == n);
    let (ih, il) = (ix("cache_hits")?, ix("cache_lookups")?);
    let mut best = None::<(f64, f64)>;
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if !matches!(f.first(), Some(&"fe_cache") | Some(&"be_cache")) {
            continue;
        }
        let num = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        let v = (num(ih), num(il));
        if best.is_none_or(|b| v.1 > b.1) {
            best = Some(v);
        }
    }
    best
}

/// Lua for wrk: the requests for keys 1..=n built once in `init` (so the
/// client's per-request work is a lookup), then either round-robin (the
/// fill: every key once per cycle) or Zipf(s) drawn with a fixed seed, the
/// same sequence for every contender.
fn lua(pattern: &str, n: usize, zipf: bool) -> String {
    let (pre, post) = pattern.split_once("{}").unwrap_or((pattern, ""));
    let pick = if zipf {
        "local u = math.random()\n  local lo, hi = 1, N\n  \
         while lo < hi do\n    local mid = math.floor((lo + hi) / 2)\n    \
         if cdf[mid] < u then lo = mid + 1 else hi = mid end\n  end\n  return reqs[lo]"
    } else {
        "i = i % N + 1\n  return reqs[i]"
    };
    format!(
        "local N = {n}\nlocal S = {ZIPF_S}\nlocal reqs = {{}}\nlocal cdf = {{}}\nlocal i = 0\n\
         init = function(args)\n  local sum = 0\n  for k = 1, N do sum = sum + 1 / k ^ S end\n  \
         local acc = 0\n  for k = 1, N do\n    acc = acc + 1 / k ^ S / sum\n    cdf[k] = acc\n    \
         reqs[k] = wrk.format(\"GET\", \"{pre}\" .. k .. \"{post}\")\n  end\n  cdf[N] = 1.0\n  \
         math.randomseed(20261130)\nend\n\
         request = function()\n  {pick}\nend\n"
    )
}

/// Zipf(s) share of the top `k` of `n` keys (for the report's notes).
fn zipf_top_share(n: usize, k: usize) -> f64 {
    let w = |i: usize| 1.0 / (i as f64).powf(ZIPF_S);
    (1..=k).map(w).sum::<f64>() / (1..=n).map(w).sum::<f64>()
}

fn keys(ctx: &Ctx) -> usize {
    ctx.opts.cache_keys.max(1)
}

/// Fetches every key once (round-robin wrk; a run counts when it completed
/// at least n + conns requests, so the first n issued were answered), up
/// to 4 runs of doubling length. ferrogate: then its store must hold the
/// keys (`cache_store_objects`, nothing evicted); nginx: its log must show
/// each key fetched (distinct MISS URIs).
fn fill(
    ctx: &Ctx,
    run: &Running,
    variant: usize,
    m: &mut Metrics,
    cmds: &mut Vec<String>,
) -> Result<()> {
    let (name, pat) = BODIES[variant];
    let n = keys(ctx);
    let url = format!("http://{}", addr(run.who));
    let script = lua(pat, n, false);
    let want = (n + ctx.opts.conns as usize) as f64;
    let mut secs = if ctx.opts.smoke { 1 } else { 3 };
    let mut done = 0.0;
    for _ in 0..4 {
        let (f, cmd) = measure::wrk_script(
            &ctx.lab,
            &url,
            secs,
            ctx.opts.conns,
            &script,
            &format!("fill-{name}"),
        )?;
        measure::check_http(&format!("{} fill", run.who.name()), &f, "requests")?;
        done = f["requests"];
        m.insert("fill_requests".into(), done);
        m.insert("fill_rps".into(), f["rps"]);
        m.insert("fill_seconds".into(), secs as f64);
        cmds.push(cmd);
        if done >= want {
            break;
        }
        secs *= 2;
    }
    if done < want {
        bail!(
            "{}: the fill of {n} {name} keys completed only {done} requests",
            run.who.name()
        );
    }
    std::thread::sleep(std::time::Duration::from_millis(400));
    match run.who {
        Contender::Ferrogate => {
            let s = run.stats();
            let objects = s.get("cache_store_objects").copied().unwrap_or(0) as f64;
            let evicted = s.get("cache_store_evicted").copied().unwrap_or(0) as f64;
            m.insert("fg_store_objects".into(), objects);
            m.insert(
                "fg_store_bytes".into(),
                s.get("cache_store_bytes").copied().unwrap_or(0) as f64,
            );
            m.insert("fg_store_evicted".into(), evicted);
            // Variants fill one after the other into the same store.
            let expect = (n * (variant + 1)) as f64;
            if objects < expect || evicted > 0.0 {
                bail!(
                    "ferrogate: after the {name} fill the store holds {objects} objects (want ≥ {expect}), {evicted} evicted"
                );
            }
        }
        Contender::Nginx => {
            let log = std::fs::read_to_string(nginx_miss_log(ctx)).unwrap_or_default();
            let prefix = pat.split_once("{}").map(|x| x.0).unwrap_or(pat);
            let distinct: std::collections::HashSet<&str> = log
                .lines()
                .filter_map(|l| l.strip_prefix("MISS "))
                .filter(|u| u.starts_with(prefix))
                .collect();
            m.insert("nginx_fill_distinct_misses".into(), distinct.len() as f64);
            if distinct.len() < n {
                bail!(
                    "nginx: the {name} fill fetched {} distinct keys from the origin, want {n}",
                    distinct.len()
                );
            }
        }
        _ => {}
    }
    Ok(())
}

/// Warm-up and one measured Zipf run; CPU and hits over the same window.
fn turn(ctx: &Ctx, run: &Running, variant: usize) -> Result<(Metrics, Vec<String>)> {
    let o = &ctx.opts;
    let (name, pat) = BODIES[variant];
    let mut m = Metrics::new();
    let mut cmds = vec![run.command.clone()];
    fill(ctx, run, variant, &mut m, &mut cmds)?;
    let url = format!("http://{}", addr(run.who));
    let script = lua(pat, keys(ctx), true);
    let tag = format!("zipf-{name}");
    if o.warmup > 0 {
        measure::wrk_script(&ctx.lab, &url, o.warmup, o.conns, &script, &tag)?;
    }
    let h0 = hits(ctx, run)?;
    let l0 = ctx.lab.link_stats("edge", "eth0");
    let w = measure::window_start(&ctx.lab, run);
    let (wm, cmd) = measure::wrk_script(&ctx.lab, &url, o.seconds, o.conns, &script, &tag)?;
    let prefixes = [
        "stack_cache_",
        "cache_store_",
        "stack_requests",
        "stack_upstream_",
        "stack_tx_frames",
        "stack_rx_frames",
        "stack_socket_polls",
        "stack_conn_drives",
        "io_kicks",
        "io_tx_ring_full",
    ];
    measure::window_totals(w, run, &prefixes, &mut m);
    let l1 = ctx.lab.link_stats("edge", "eth0");
    let h1 = hits(ctx, run)?;
    cmds.push(cmd);
    m.extend(wm);
    let reqs = m["requests"];
    // Requests and hits from the same source as the CPU figure: ferrogate's
    // stats snapshots (both lag alike), the client's count for the others.
    let (n, hit, lookups) = match run.who {
        Contender::Ferrogate => (
            m.get("fg_stack_requests").copied().unwrap_or(0.0),
            h1.0 - h0.0,
            h1.1 - h0.1,
        ),
        // Non-HIT log lines during the window: hits = requests - those.
        Contender::Nginx => (reqs, reqs - (h0.0 - h1.0), reqs),
        _ => (reqs, h1.0 - h0.0, h1.1 - h0.1),
    };
    let cpu = m.get("proxy_cpu_s").copied().unwrap_or(0.0);
    // Frames per request, where a 16 KiB answer's cost goes: ferrogate
    // sends MSS-sized frames (its stack counters; each veth transmit runs
    // the receiver's side on its core), the kernel proxies' edge eth0
    // counts skbs (a GSO skb of up to 64 KiB once).
    let (pkts_out, pkts_in) = match run.who {
        Contender::Ferrogate => {
            let g = |k: &str| m.get(k).copied().unwrap_or(0.0);
            let tx = g("fg_stack_tx_frames");
            let (kicks, polls, rx) = (
                g("fg_io_kicks"),
                g("fg_stack_socket_polls"),
                g("fg_stack_rx_frames"),
            );
            m.insert("fg_ns_per_tx_frame".into(), cpu * 1e9 / tx.max(1.0));
            m.insert("fg_kicks_per_req".into(), kicks / n.max(1.0));
            m.insert("fg_socket_polls_per_req".into(), polls / n.max(1.0));
            (tx, rx)
        }
        _ => (
            l1.2.saturating_sub(l0.2) as f64,
            l1.0.saturating_sub(l0.0) as f64,
        ),
    };
    m.insert("pkts_out_per_req".into(), pkts_out / n.max(1.0));
    m.insert("pkts_in_per_req".into(), pkts_in / n.max(1.0));
    m.insert("hits".into(), hit);
    m.insert("lookups".into(), lookups);
    m.insert("hit_ratio".into(), hit / lookups.max(1.0));
    m.insert("proxy_us_per_op".into(), cpu / n.max(1.0) * 1e6);
    m.insert("proxy_us_per_hit".into(), cpu / hit.max(1.0) * 1e6);
    m.insert(
        "cpu1_us_per_op".into(),
        m["cpu1_busy_s"] / reqs.max(1.0) * 1e6,
    );
    measure::check_http(run.who.name(), &m, "requests")?;
    if m["hit_ratio"] < MIN_HIT_RATIO {
        bail!(
            "{}: hit ratio {:.4} ({hit} hits of {lookups} lookups) below {MIN_HIT_RATIO}: CPU per hit would compare different work",
            run.who.name(),
            m["hit_ratio"]
        );
    }
    Ok((m, cmds))
}

/// Objects the offload budget holds: `pct` % of the keys (at least 1).
fn budget_objects(n: usize, pct: f64) -> u64 {
    ((n as f64 * pct / 100.0).ceil() as u64).max(1)
}

/// What one object of `variant` costs in `who`'s own accounting: body and
/// head for ferrogate (its store charges those plus a small index entry);
/// nginx counts cache files in whole filesystem blocks (4 KiB on tmpfs);
/// HAProxy's shared cache in 1 KiB blocks.
fn object_charge(who: Contender, variant: usize) -> u64 {
    let obj = BODY_BYTES[variant] + HEAD_BYTES;
    match who {
        Contender::Nginx => obj.div_ceil(4096) * 4096,
        Contender::Haproxy => obj.div_ceil(1024) * 1024,
        _ => obj,
    }
}

/// ferrogate's store shards: at most its default 16, and few enough that a
/// shard's share (each keeps its own part of the budget) holds ≥ 4 objects.
fn offload_shards(objects: u64) -> u64 {
    let mut s = 16;
    while s > 1 && objects / s < 4 {
        s /= 2;
    }
    s
}

/// The offload budget for `who` and `variant`: room for the same number of
/// objects in every proxy, each in its own accounting.
fn offload_budget(who: Contender, variant: usize, objects: u64) -> (Budget, u64) {
    let bytes = objects * object_charge(who, variant);
    let shards = offload_shards(objects);
    let share = (bytes / shards).max(1);
    let b = Budget {
        fg_cache: format!(
            "max_bytes = {bytes}\nshards = {shards}\nmax_object_bytes = {}",
            share.min(1 << 20)
        ),
        nginx_max_size: bytes.to_string(),
        haproxy_mb: bytes.div_ceil(1 << 20).max(1),
    };
    (b, bytes)
}

/// `requests` of the origin's `stub_status` (every request it has read,
/// this one included).
fn origin_requests(ctx: &Ctx) -> Result<f64> {
    let url = format!("http://{ORIGIN_IP}:8080{ORIGIN_STATUS}");
    let out = ctx.lab.exec("client", &["curl", "-sS", "-m", "3", &url])?;
    parse_stub_status(&out).with_context(|| {
        format!("origin stub_status {url} (a ferrogate binary whose `lab up` has it?): {out:.200}")
    })
}

/// nginx `stub_status`: the third number of the line after
/// `server accepts handled requests`.
fn parse_stub_status(s: &str) -> Option<f64> {
    let mut lines = s.lines();
    lines.find(|l| {
        l.trim_start()
            .starts_with("server accepts handled requests")
    })?;
    lines.next()?.split_whitespace().nth(2)?.parse().ok()
}

/// Cache files under nginx's cache directory: (count, bytes).
fn nginx_cache_files(dir: &std::path::Path) -> (u64, u64) {
    let mut acc = (0, 0);
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            match e.metadata() {
                Ok(md) if md.is_dir() => {
                    let (n, b) = nginx_cache_files(&e.path());
                    acc = (acc.0 + n, acc.1 + b);
                }
                Ok(md) => acc = (acc.0 + 1, acc.1 + md.len()),
                Err(_) => {}
            }
        }
    }
    acc
}

/// One offload measurement: `who` started with a cold cache that holds
/// `--offload-budget-pct` of the keys, one probe outside the key space
/// (k = 0: the listener answers through the origin), then the Zipf wrk run
/// for `--seconds` with no warm-up; origin requests counted at the origin.
fn offload_turn(ctx: &Ctx, who: Contender, variant: usize) -> Result<(Metrics, Vec<String>)> {
    let o = &ctx.opts;
    let (name, _) = BODIES[variant];
    let n = keys(ctx);
    let objects = budget_objects(n, o.offload_budget_pct);
    let (budget, bytes) = offload_budget(who, variant, objects);
    let mut run = launch(ctx, who, &budget, "ferrogate-offload.toml")?;
    let res = offload_window(ctx, &run, variant);
    run.stop();
    let (mut m, mut cmds) = res?;
    cmds.insert(0, run.command.clone());
    m.insert("budget_objects".into(), objects as f64);
    m.insert("budget_bytes".into(), bytes as f64);
    eprintln!(
        "cache offload {name} {}: client {} origin {} offload {:.3} hit ratio {:.3}",
        who.name(),
        m["client_requests"],
        m["origin_requests"],
        m["offload"],
        m["hit_ratio"]
    );
    Ok((m, cmds))
}

fn offload_window(ctx: &Ctx, run: &Running, variant: usize) -> Result<(Metrics, Vec<String>)> {
    let o = &ctx.opts;
    let (name, pat) = BODIES[variant];
    let who = run.who;
    let mut m = Metrics::new();
    fetch(ctx, who, &path(pat, 0))?;
    // ferrogate's stats file is rewritten every 250 ms.
    std::thread::sleep(std::time::Duration::from_millis(400));
    let o0 = origin_requests(ctx)?;
    let h0 = hits(ctx, run)?;
    let w = measure::window_start(&ctx.lab, run);
    let url = format!("http://{}", addr(who));
    let script = lua(pat, keys(ctx), true);
    let (wm, cmd) = measure::wrk_script(
        &ctx.lab,
        &url,
        o.offload_seconds,
        o.conns,
        &script,
        &format!("offload-{name}"),
    )?;
    measure::check_http(&format!("{} offload", who.name()), &wm, "requests")?;
    // Fetches still in flight when wrk stops land; the stats catch up.
    std::thread::sleep(std::time::Duration::from_millis(500));
    measure::window_totals(
        w,
        run,
        &["stack_cache_", "cache_store_", "stack_requests"],
        &mut m,
    );
    let o1 = origin_requests(ctx)?;
    let h1 = hits(ctx, run)?;
    let reqs = wm["requests"];
    // The second status request counts itself.
    let origin = (o1 - o0 - 1.0).max(0.0);
    if origin <= 0.0 {
        bail!(
            "{}: the origin counted no requests from a cold cache: the count does not work",
            who.name()
        );
    }
    let (hit, lookups) = match who {
        // Non-HIT log lines over the window; every request is a lookup.
        Contender::Nginx => (reqs - (h0.0 - h1.0), reqs),
        _ => (h1.0 - h0.0, h1.1 - h0.1),
    };
    for (k, v) in wm {
        // wrk's rate and latency under their own names: the report's
        // charts of `rps` / `p99_us` are the all-hit rows.
        let k = match k.as_str() {
            "rps" | "p50_us" | "p99_us" => format!("client_{k}"),
            _ => k,
        };
        m.insert(k, v);
    }
    let s = run.stats();
    let held = match who {
        Contender::Ferrogate => {
            let g = |k: &str| s.get(k).copied().unwrap_or(0) as f64;
            m.insert("fg_store_bytes_end".into(), g("cache_store_bytes"));
            m.insert("fg_store_evicted_end".into(), g("cache_store_evicted"));
            g("cache_store_objects")
        }
        Contender::Nginx => {
            let (files, b) = nginx_cache_files(std::path::Path::new(&nginx_cache_dir(ctx)));
            m.insert("nginx_cache_file_bytes_end".into(), b as f64);
            files as f64
        }
        _ => f64::NAN,
    };
    if held.is_finite() {
        m.insert("objects_held".into(), held);
        // What a cache holding the `held` most popular keys all along would
        // offload: the bar for each contender at the size it really kept
        // (nginx may hold more than its budget between its manager's
        // passes).
        let n = keys(ctx);
        let ideal = zipf_top_share(n, (held as usize).min(n));
        m.insert("ideal_offload_for_held".into(), ideal);
        m.insert(
            "offload_of_ideal".into(),
            (1.0 - origin / reqs.max(1.0)) / ideal.max(1e-9),
        );
    }
    let cpu = m.get("proxy_cpu_s").copied().unwrap_or(0.0);
    m.insert("client_requests".into(), reqs);
    m.insert("origin_requests".into(), origin);
    m.insert("offload".into(), 1.0 - origin / reqs.max(1.0));
    m.insert("hits".into(), hit);
    m.insert("lookups".into(), lookups);
    m.insert("hit_ratio".into(), hit / lookups.max(1.0));
    m.insert("proxy_us_per_op".into(), cpu / reqs.max(1.0) * 1e6);
    Ok((m, vec![cmd]))
}

fn contenders_of(ctx: &Ctx) -> Vec<Contender> {
    let mut c = CONTENDERS.to_vec();
    if !ctx.opts.cache_haproxy {
        c.retain(|c| *c != Contender::Haproxy);
    }
    c
}

/// The offload rows' own table, settings and notes.
fn offload_report(ctx: &Ctx, r: &mut Report, contenders: &[Contender]) {
    let o = &ctx.opts;
    let n = keys(ctx);
    let pct = o.offload_budget_pct;
    let objects = budget_objects(n, pct);
    let layout = crate::report::Layout {
        columns: vec![
            col("client_requests", "client requests", 1.0),
            col("origin_requests", "origin requests", 1.0),
            col("offload", "offload", 1.0),
            col("hit_ratio", "proxy hit ratio", 1.0),
            col("objects_held", "objects held at end", 1.0),
            col(
                "ideal_offload_for_held",
                "top-k offload for objects held",
                1.0,
            ),
            col("offload_of_ideal", "offload / top-k", 1.0),
            col("client_rps", "req/s", 1.0),
            col("client_p99_us", "p99 ms", 1e-3),
            col("proxy_us_per_op", "proxy µs/req", 1.0),
        ],
        ratios: vec![ratio(
            "origin_requests",
            "origin requests vs nginx",
            "nginx",
        )],
    };
    let mut budgets = Vec::new();
    for (i, (v, _)) in BODIES.iter().enumerate() {
        r.layouts.insert(format!("offload {v}"), layout.clone());
        for &who in contenders {
            let (b, bytes) = offload_budget(who, i, objects);
            let what = match who {
                Contender::Ferrogate => format!("`[cache] {}`", b.fg_cache.replace('\n', ", ")),
                Contender::Nginx => format!("`max_size={}`", b.nginx_max_size),
                _ => format!("`total-max-size {}` (MB)", b.haproxy_mb),
            };
            budgets.push(format!(
                "{v} {}: {bytes} bytes = {objects} × {} → {what}",
                who.name(),
                object_charge(who, i)
            ));
        }
    }
    r.settings.insert(
        "offload budget".into(),
        format!(
            "{pct} % of {n} keys = {objects} objects per body size; {}",
            budgets.join("; ")
        ),
    );
    r.notes.push(format!(
        "**Offload** rows (`offload tiny`, `offload 16k`): each contender is started again per body size with an **empty** cache whose budget holds {pct} % of the {n} keys ({objects} objects, `--offload-budget-pct`), sized by what one object costs in that proxy's own accounting (body + {HEAD_BYTES} bytes of head, key and index; nginx rounds each cache file up to a 4 KiB tmpfs block, HAProxy to 1 KiB blocks), so every proxy has room for the same number of objects (see the `offload budget` setting; ferrogate's store shards drop below 16 when a shard would hold < 4 objects). One probe request outside the key space (k = 0) checks the listener, then the same seeded Zipf(s = {ZIPF_S}) wrk run as the hit rows for {} s (`--offload-seconds`) with **no** fill and no warm-up. `client requests` = wrk's completed requests; `origin requests` = Δ`requests` of the lab origin's nginx `stub_status` (`http://{ORIGIN_IP}:8080{ORIGIN_STATUS}`, read from the client namespace before and 0.5 s after the run, minus the second read itself): counted **at the origin**, the same way for every contender; `offload` = 1 − origin requests / client requests (a cold start's compulsory misses included: with Zipf s = 1 the top {objects} of {n} keys get {:.0} % of the requests). `proxy hit ratio` as in the hit rows (ferrogate's counters, nginx's non-HIT log lines vs wrk's requests, HAProxy's stats page); `objects held at end` = ferrogate `cache_store_objects`, nginx's cache files on tmpfs. `top-k offload for objects held` = the Zipf share of the most popular k keys, k = objects held at end: what a cache that had held exactly those keys all along would offload, the bar for each contender at the size it really kept; `offload / top-k` = offload over that bar (the eviction policy's efficiency, cold-start misses included). nginx enforces `max_size` lazily: only its cache manager process removes files, and it sleeps up to 10 s between passes (`ngx_http_file_cache_expire` returns min(10 s, the oldest entry's inactive time), and the manager sleeps that long when the cache was under `max_size` at its last pass; `manager_sleep` 50 ms applies only while it is still over), so from a cold start it enforces nothing in the first ~10 s and later holds up to 10 s of inserts above its budget (its held objects at the end show by how much); hence the offload run is longer than the hit rows' measurement. ferrogate evicts as it inserts (S3-FIFO in each shard, down to the shard's share of `max_bytes`). Eviction policies differ (nginx: LRU by its manager; ferrogate: S3-FIFO, which keeps one-hit keys out of its main queue): that difference is part of what the offload compares. `proxy_cache_lock on` (nginx) and ferrogate's request coalescing both send one fetch per key at a time.",
        o.offload_seconds,
        zipf_top_share(n, objects as usize) * 100.0
    ));
}

pub fn scenario(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("cache", ctx.meta.clone());
    settings(ctx, &mut r);
    let n = keys(ctx);
    r.settings
        .insert("distinct keys per body size".into(), n.to_string());
    r.settings
        .insert("key popularity".into(), format!("Zipf s = {ZIPF_S}"));
    r.settings.insert(
        "caching listener".into(),
        format!(
            "port {PORT}: ferrogate `[[listeners]] port = {PORT}` route `cache = {{ ttl = 3600 }}`, `[cache] max_bytes = {FG_MAX_BYTES}, max_object_bytes = 1048576` (16 shards, `x-cache` status header); nginx `proxy_cache_path {} levels=1:2 keys_zone=fc:{NGINX_KEYS_ZONE} max_size=2g inactive=2h use_temp_path=off` (tmpfs), `proxy_cache_valid 200 1h; proxy_cache_lock on; proxy_cache_key $scheme$host$request_uri; sendfile on`, `add_header X-Cache $upstream_cache_status`, non-HITs logged; HAProxy `cache fc {{ total-max-size {HAPROXY_CACHE_MB}; max-object-size 1048576; max-age 3600 }}`, `cache-use`/`cache-store` in the backend after `http-response set-header Cache-Control max-age=3600` (HAProxy stores nothing without a lifetime or a validator, and the origin's tiny answer has neither: the same role as nginx's `proxy_cache_valid` and ferrogate's `ttl`); each with upstream keepalive to the origin (nginx `keepalive 64`, ferrogate `max_requests = 0`, HAProxy `http-reuse always`)",
            nginx_cache_dir(ctx)
        ),
    );
    r.columns = vec![
        col("rps", "req/s", 1.0),
        col("p50_us", "p50 ms", 1e-3),
        col("p99_us", "p99 ms", 1e-3),
        col("hit_ratio", "hit ratio", 1.0),
        col("proxy_us_per_op", "proxy CPU ms/1k req", 1.0),
        col("proxy_us_per_hit", "proxy µs/hit", 1.0),
        col("cpu1_us_per_op", "CPU1 µs/req", 1.0),
        col("pkts_out_per_req", "frames out/req", 1.0),
        col("pkts_in_per_req", "frames in/req", 1.0),
        col("cpu1_busy_frac", "CPU1 busy", 1.0),
        col("cpu0_busy_frac", "CPU0 busy", 1.0),
    ];
    r.ratios = vec![
        ratio("rps", "req/s vs nginx", "nginx"),
        ratio("proxy_us_per_hit", "CPU per hit vs nginx", "nginx"),
    ];
    r.plots = vec![
        ("rps".into(), "cache: requests/s, all hits (Zipf)".into()),
        ("p99_us".into(), "cache: p99 latency µs (wrk)".into()),
        (
            "proxy_us_per_hit".into(),
            "cache: proxy CPU µs per cache hit".into(),
        ),
    ];
    r.notes.push(format!(
        "Per contender turn and body size: the **fill** (wrk, round-robin over the {n} keys until one run completed ≥ keys + connections requests; ferrogate's store must then hold the keys with nothing evicted, nginx's log must show every key fetched), an unlogged warm-up, then the **measurement**: `taskset -c {LOAD_CPU} ip netns exec <prefix>client wrk -t1 -c{} -d<seconds>s -s <bench dir>/report-zipf-<size>.lua http://<proxy>:{PORT}` whose Lua builds the {n} requests in `init` and draws each from Zipf(s = {ZIPF_S}) with a fixed seed (the same sequence for every contender; the top 1 % of keys get {:.0} % of the requests). Keys: tiny = `/c/<k>` (the origin's `location /` answers ~60 bytes naming the path), 16k = `/16k?k=<k>` (its 16,384-byte static file; the query only makes the key). The exact commands are in the JSON.",
        ctx.opts.conns,
        zipf_top_share(n, (n / 100).max(1)) * 100.0
    ));
    r.notes.push(format!("Hit ratio as each proxy saw it over the measured window: ferrogate Δ`stack_cache_hits` / Δ(hits + misses + stale + revalidated + expired + bypass) from its stats file; nginx (wrk's requests − non-HIT access log lines) / wrk's requests (only non-HITs are logged, `if=` on a map of `$upstream_cache_status`, so a hit writes nothing); HAProxy Δ`cache_hits` / Δ`cache_lookups` from its stats page. A turn below {MIN_HIT_RATIO} fails: the comparison only holds at comparable hit ratios."));
    r.notes.push("`proxy CPU ms/1k req` = the proxy's CPU per 1,000 requests in milliseconds (= µs per request; CPU-s per 1,000 requests is this ÷ 1,000): ferrogate Δ`workers_busy_ns` / Δ`stack_requests` (same stats snapshots), nginx/HAProxy utime+stime of every process in the edge namespace (nginx's cache manager and loader included) / wrk's requests. `proxy µs/hit` = the same CPU / hits. `CPU per hit vs nginx` is computed per round; issue #21's goal is ≤ 0.5.".into());
    r.notes.push("`frames out/req`, `frames in/req`: what the proxy's edge NIC sent and received per request over the window (client and origin sides together). ferrogate: Δ`stack_tx_frames` / Δ`stack_rx_frames` ÷ Δ`stack_requests` (MSS-sized frames: no segmentation offload on AF_XDP); nginx/HAProxy: Δ tx/rx packets of the edge namespace's eth0 ÷ wrk's requests, where a GSO/TSO skb (up to 64 KiB) counts once. Each veth transmit runs the receiver's stack on the sending core, so every frame ferrogate sends also costs its core the client's receive path (PLATFORM.md). The JSON also has `fg_ns_per_tx_frame`, `fg_kicks_per_req`, `fg_socket_polls_per_req`.".into());
    let pct = ctx.opts.offload_budget_pct;
    if pct > 0.0 {
        offload_report(ctx, &mut r, &contenders_of(ctx));
    }
    r.notes.push(CPU_NOTE.into());
    let contenders = contenders_of(ctx);
    for round in 0..ctx.opts.rounds {
        for &who in &contenders {
            eprintln!("cache round {round}: {}", who.name());
            match start_cache(ctx, who) {
                Err(e) => {
                    for (v, _) in BODIES {
                        r.samples.push(sample(
                            v,
                            who.name(),
                            round,
                            Metrics::new(),
                            vec![],
                            Some(format!("{e:#}")),
                        ));
                    }
                }
                Ok(mut run) => {
                    for (i, (v, _)) in BODIES.iter().enumerate() {
                        r.samples.push(match turn(ctx, &run, i) {
                            Ok((m, c)) => sample(v, who.name(), round, m, c, None),
                            Err(e) => failed_sample(v, who.name(), round, &run.command, &e),
                        });
                    }
                    run.stop();
                }
            }
            if pct <= 0.0 {
                continue;
            }
            for (i, (v, _)) in BODIES.iter().enumerate() {
                eprintln!("cache round {round}: {} offload {v}", who.name());
                let variant = format!("offload {v}");
                r.samples.push(match offload_turn(ctx, who, i) {
                    Ok((m, c)) => sample(&variant, who.name(), round, m, c, None),
                    Err(e) => sample(
                        &variant,
                        who.name(),
                        round,
                        Metrics::new(),
                        vec![],
                        Some(format!("{e:#}")),
                    ),
                });
            }
        }
    }
    let _ = std::fs::remove_dir_all(nginx_cache_dir(ctx));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_csv_counters() {
        let csv = "# pxname,svname,qcur,cache_lookups,cache_hits,x\n\
                   fe,FRONTEND,0,0,0,\n\
                   fe_cache,FRONTEND,0,10,7,\n\
                   be_cache,BACKEND,0,12,9,\n\
                   be_cache,origin,0,,,\n";
        assert_eq!(parse_haproxy_csv(csv), Some((9.0, 12.0)));
        assert_eq!(parse_haproxy_csv("# pxname,svname\n"), None);
    }

    #[test]
    fn zipf_share() {
        assert!((zipf_top_share(10, 10) - 1.0).abs() < 1e-12);
        // s = 1: the top key of 10,000 gets 1 / H(10000) ~ 10.2 %.
        let top = zipf_top_share(10_000, 1);
        assert!((top - 0.1021).abs() < 0.001, "{top}");
    }

    #[test]
    fn stub_status_requests() {
        let s = "Active connections: 2 \nserver accepts handled requests\n 16630948 16630948 31070465 \nReading: 0 Writing: 1 Waiting: 1 \n";
        assert_eq!(parse_stub_status(s), Some(31070465.0));
        assert_eq!(parse_stub_status("<html>404</html>"), None);
    }

    #[test]
    fn offload_budget_holds_the_same_objects_in_each_accounting() {
        assert_eq!(budget_objects(10_000, 10.0), 1000);
        assert_eq!(budget_objects(500, 0.1), 1);
        // nginx: a tiny object is one 4 KiB block, a 16 KiB one five.
        assert_eq!(object_charge(Contender::Nginx, 0), 4096);
        assert_eq!(object_charge(Contender::Nginx, 1), 5 * 4096);
        let (b, bytes) = offload_budget(Contender::Nginx, 1, 1000);
        assert_eq!(
            (b.nginx_max_size, bytes),
            ("20480000".to_string(), 20_480_000)
        );
        let (b, bytes) = offload_budget(Contender::Ferrogate, 1, 1000);
        assert_eq!(bytes, 1000 * (16 * 1024 + HEAD_BYTES));
        assert!(b.fg_cache.contains("shards = 16"), "{}", b.fg_cache);
    }

    #[test]
    fn offload_shards_keep_an_object_per_shard_share() {
        assert_eq!(offload_shards(1000), 16);
        assert_eq!(offload_shards(50), 8);
        assert_eq!(offload_shards(3), 1);
        // max_object_bytes never above one shard's share (config check).
        for objects in [1, 5, 50, 1000] {
            for (v, body) in BODY_BYTES.iter().enumerate() {
                let (b, bytes) = offload_budget(Contender::Ferrogate, v, objects);
                let share = bytes / offload_shards(objects);
                let max_obj: u64 = b
                    .fg_cache
                    .lines()
                    .find_map(|l| l.strip_prefix("max_object_bytes = "))
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(max_obj <= share && max_obj >= body + HEAD_BYTES);
            }
        }
    }

    #[test]
    fn lua_paths() {
        let l = lua("/16k?k={}", 5, true);
        assert!(l.contains("\"/16k?k=\" .. k .. \"\""), "{l}");
        assert!(l.contains("local N = 5"));
        assert!(lua("/c/{}", 5, false).contains("i = i % N + 1"));
    }
}
