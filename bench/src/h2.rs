//! The `h2` scenario (issue #16): HTTP/2 from the client, h2c with prior
//! knowledge on a plain port, HTTP/1.1 keep-alive to the origin, through
//! ferrogate (`http2 = true`), nginx (`listen … http2`) and HAProxy (`bind
//! … proto h2`). The load is h2load (`-c 50 -m 10`): many streams in
//! flight per connection, which is what HTTP/2 changes for a proxy.

use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::contenders::{self, Contender, Extra, Running};
use crate::env::{self, EDGE_HOST_IP, LOAD_CPU, ORIGIN_IP, PROXY_CPU, VIP};
use crate::measure::{self, Metrics};
use crate::report::{Report, col};
use crate::scenarios::{CPU_NOTE, Ctx, failed_sample, ratio, sample, settings};

/// Every contender's h2c listener (beside its plain :80, which `start`
/// checks first).
const PORT: u16 = 8082;
/// Concurrent streams per connection (issue #16's `-m 10`).
const STREAMS: u32 = 10;
const CONTENDERS: [Contender; 3] = [Contender::Ferrogate, Contender::Nginx, Contender::Haproxy];
/// The origin's bodies, as in `http`.
const BODIES: [(&str, &str); 2] = [("tiny", "/"), ("16k", "/16k")];

fn h2_addr(who: Contender) -> String {
    match who {
        Contender::Ferrogate => format!("{VIP}:{PORT}"),
        _ => format!("{EDGE_HOST_IP}:{PORT}"),
    }
}

/// Idle upstream connections each proxy keeps for the h2c listener: one
/// per stream in flight (`conns` x STREAMS). With the bench's usual 64
/// (nginx `keepalive 64`, ferrogate's default) nginx and ferrogate close
/// and reopen an upstream connection for about half of the 500 requests
/// in flight, and nginx collapses to ~1k req/s with its core busy (the
/// edge fills with ~14–19k TIME_WAIT sockets towards the one origin and
/// connect(), likely, hunts for free ports; results/h2-20261129T155106Z.md): a
/// test of upstream churn, not of HTTP/2. HAProxy keeps every idle server connection (`http-reuse
/// always`, no pool limit) either way.
fn pool(ctx: &Ctx) -> u32 {
    ctx.opts.conns * STREAMS
}

/// nginx 1.22 has no `http2 on;` (1.25.1+): `listen … http2` without `ssl`
/// is h2c with prior knowledge. `keepalive_requests 1000000` in the http
/// block also bounds HTTP/2 streams per connection (since 1.19.7).
fn extra(pool: u32) -> Extra {
    Extra {
        nginx: format!(
            "  upstream origin_h2 {{ server {ORIGIN_IP}:8080; keepalive {pool}; keepalive_requests 1000000; }}\n  \
             server {{\n    listen {EDGE_HOST_IP}:{PORT} http2 reuseport backlog=4096;\n    \
             location / {{ proxy_pass http://origin_h2; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering on; }}\n  }}\n"
        ),
        haproxy: format!(
            "\nfrontend fe_h2\n  bind {EDGE_HOST_IP}:{PORT} proto h2 backlog 4096\n  default_backend be\n"
        ),
        ..Extra::default()
    }
}

/// The same origin as a pool of `pool` idle connections, none retired by
/// request count (as nginx's `keepalive_requests 1000000`).
fn ferrogate_listener(pool: u32) -> String {
    format!(
        "\n[[upstreams]]\nname = \"origin-h2\"\nendpoints = [\"{ORIGIN_IP}:8080\"]\n\
         keepalive = {pool}\nmax_requests = 0\n\n\
         [[listeners]]\nport = {PORT}\nhttp2 = true\n\n\
         [[listeners.routes]]\nname = \"h2-origin\"\npath_prefix = \"/\"\nupstream = \"origin-h2\"\n"
    )
}

/// Starts `who` with its h2c listener and checks, with curl's HTTP/2 prior
/// knowledge, that both bodies come from the origin over HTTP/2: a
/// contender that answered HTTP/1.1 (or nothing) would make h2load's
/// figures meaningless.
fn start_h2(ctx: &Ctx, who: Contender) -> Result<Running> {
    let lab = &ctx.lab;
    let cpu = PROXY_CPU.to_string();
    let run = match who {
        Contender::Ferrogate => {
            let cfg = contenders::ferrogate_config_tuned(
                lab,
                1,
                &cpu,
                &ferrogate_listener(pool(ctx)),
                "ferrogate-h2.toml",
            )?;
            contenders::start_with(lab, who, Some(&cfg), 1, &cpu)?
        }
        _ => contenders::start_extra(lab, who, None, 1, &cpu, &extra(pool(ctx)))?,
    };
    let body = lab.bench_dir().join("h2-body");
    let body_s = body.display().to_string();
    for (_, path) in BODIES {
        let url = format!("http://{}{path}", h2_addr(who));
        let _ = std::fs::remove_file(&body);
        let out = lab.exec(
            "client",
            &[
                "curl",
                "-sS",
                "-m",
                "3",
                "--http2-prior-knowledge",
                "-o",
                &body_s,
                "-w",
                "%{http_version} %{http_code}",
                &url,
            ],
        )?;
        let got = std::fs::read(&body).unwrap_or_default();
        let from_origin = if path == "/" {
            String::from_utf8_lossy(&got).contains(&format!("origin {ORIGIN_IP}:8080"))
        } else {
            got.len() == 16 * 1024
        };
        if out.trim() != "2 200" || !from_origin {
            bail!(
                "{}: curl --http2-prior-knowledge {url} gave `{}` (want `2 200`: HTTP/2, status 200) and {} body bytes not the origin's: {:?}",
                who.name(),
                out.trim(),
                got.len(),
                String::from_utf8_lossy(&got[..got.len().min(200)])
            );
        }
    }
    Ok(run)
}

/// `N word, N word, …` after `prefix` (h2load's `requests:` and `status
/// codes:` lines) as word -> N.
pub(crate) fn counts(out: &str, prefix: &str) -> Vec<(String, f64)> {
    let Some(line) = out.lines().find_map(|l| l.strip_prefix(prefix)) else {
        return vec![];
    };
    line.split(',')
        .filter_map(|p| {
            let mut it = p.split_whitespace();
            let n = it.next()?.parse().ok()?;
            Some((it.next()?.to_string(), n))
        })
        .collect()
}

/// p50 / p99 / p99.9 (µs) of the 2xx responses in h2load's `--log-file`
/// (tab-separated: start µs since the epoch, status, µs to the end of the
/// response); h2load's own summary has mean and sd, no percentiles.
pub(crate) fn percentiles(log: &Path, m: &mut Metrics) -> Result<()> {
    let text = std::fs::read_to_string(log).with_context(|| format!("{}", log.display()))?;
    let mut us: Vec<f64> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let status: i32 = f.nth(1)?.trim().parse().ok()?;
            let d = f.next()?.trim().parse().ok()?;
            (200..300).contains(&status).then_some(d)
        })
        .collect();
    if us.is_empty() {
        bail!("no 2xx response in h2load's log {}", log.display());
    }
    us.sort_by(|a, b| a.total_cmp(b));
    for (k, q) in [("p50_us", 0.50), ("p99_us", 0.99), ("p999_us", 0.999)] {
        let i = ((us.len() as f64 * q).ceil() as usize).clamp(1, us.len()) - 1;
        m.insert(k.into(), us[i]);
    }
    m.insert("logged_2xx".into(), us.len() as f64);
    Ok(())
}

/// `h2load -c<conns> -m10 -t1 -D<seconds>` pinned to LOAD_CPU in the client
/// namespace; with `log`, per-request latencies go there.
fn h2load(ctx: &Ctx, url: &str, seconds: u64, log: Option<&Path>) -> Result<(Metrics, String)> {
    let mut argv = vec![
        "h2load".to_string(),
        format!("-c{}", ctx.opts.conns),
        format!("-m{STREAMS}"),
        "-t1".into(),
        format!("-D{seconds}"),
    ];
    if let Some(l) = log {
        argv.push(format!("--log-file={}", l.display()));
    }
    argv.push(url.into());
    run_h2load(ctx, &argv)
}

/// Runs the h2load command line `argv` pinned to LOAD_CPU in the client
/// namespace and reads its summary: `duration_s`, `rps` (succeeded /
/// duration), `requests` (succeeded), `non2xx`, `errors` (h2load's
/// `failed` = errored + timed out; streams the run's end cut are
/// neither) and every `requests:` count as `h2load_<kind>`; with the
/// command as run.
pub(crate) fn run_h2load(ctx: &Ctx, argv: &[String]) -> Result<(Metrics, String)> {
    let refs: Vec<&str> = argv.iter().map(|s| s.as_str()).collect();
    let mut c = ctx.lab.pinned("client", LOAD_CPU, &refs);
    let cmd = measure::cmdline(&c);
    let out = env::run(&mut c)?;
    let mut m = Metrics::new();
    // "finished in 5.00s, 12345.67 req/s, 1.23MB/s"
    let fin = out
        .lines()
        .find_map(|l| l.strip_prefix("finished in "))
        .with_context(|| format!("no summary in h2load's output:\n{out}"))?;
    let secs = fin
        .split(',')
        .next()
        .and_then(|s| s.trim().strip_suffix('s')?.parse::<f64>().ok())
        .with_context(|| format!("cannot read h2load's `finished in {fin}`"))?;
    for (k, v) in counts(&out, "requests:") {
        m.insert(format!("h2load_{k}"), v);
    }
    let non2xx: f64 = counts(&out, "status codes:")
        .iter()
        .filter(|(k, _)| k != "2xx")
        .map(|(_, v)| v)
        .sum();
    let ok = m.get("h2load_succeeded").copied().unwrap_or(0.0);
    let failed = m.get("h2load_failed").copied().unwrap_or(0.0);
    m.insert("duration_s".into(), secs);
    m.insert("rps".into(), ok / secs.max(1e-9));
    m.insert("requests".into(), ok);
    m.insert("non2xx".into(), non2xx);
    m.insert("errors".into(), failed);
    Ok((m, cmd))
}

/// Warm-up, then one measured h2load run with the proxy's CPU around it
/// (the same window as `wrk_turn`, so proxy µs/req compares with `http`).
fn h2_turn(ctx: &Ctx, run: &Running, path: &str) -> Result<(Metrics, Vec<String>)> {
    let o = &ctx.opts;
    let url = format!("http://{}{path}", h2_addr(run.who));
    if o.warmup > 0 {
        h2load(ctx, &url, o.warmup, None)?;
    }
    let log = ctx.lab.bench_dir().join("h2load.log");
    let _ = std::fs::remove_file(&log);
    let fg0 = run.stats();
    let w = measure::window_start(&ctx.lab, run);
    let (mut m, cmd) = h2load(ctx, &url, o.seconds, Some(&log))?;
    let n = m["requests"];
    measure::window_end(w, run, n, &mut m);
    let fg1 = run.stats();
    percentiles(&log, &mut m)?;
    let _ = std::fs::remove_file(&log);
    if run.who == Contender::Ferrogate {
        let d = |k: &str| {
            fg1.get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(fg0.get(k).copied().unwrap_or(0)) as f64
        };
        for k in [
            "h2_connections",
            "h2_requests",
            "h2_client_resets",
            "h2_stalled_resets",
            "h2_stream_errors",
            "h2_connection_errors",
            "h2_flood_goaways",
        ] {
            m.insert(format!("fg_{k}"), d(&format!("stack_{k}")));
        }
        // The stats file lags by up to 250 ms, so only "none at all" is
        // a sure sign the requests did not go through the HTTP/2 path.
        if m["fg_h2_requests"] <= 0.0 && n > 0.0 {
            bail!(
                "ferrogate counted no HTTP/2 request (stack_h2_requests) for {n} h2load successes"
            );
        }
    }
    measure::check_http(run.who.name(), &m, "requests")?;
    Ok((m, vec![run.command.clone(), cmd]))
}

pub fn scenario(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("h2", ctx.meta.clone());
    settings(ctx, &mut r);
    r.settings.insert(
        "streams per connection (h2load -m)".into(),
        STREAMS.to_string(),
    );
    r.settings.insert(
        "h2c listener".into(),
        format!(
            "port {PORT}: ferrogate `http2 = true`, nginx `listen {EDGE_HOST_IP}:{PORT} http2` (1.22: h2c prior knowledge), HAProxy `bind {EDGE_HOST_IP}:{PORT} proto h2`; HTTP/1.1 keep-alive to the origin"
        ),
    );
    r.settings.insert(
        "upstream pool behind the h2c listener".into(),
        format!(
            "{} idle connections to the origin (one per stream in flight): nginx `upstream origin_h2 {{ keepalive {0}; keepalive_requests 1000000; }}`, ferrogate `[[upstreams]] origin-h2 keepalive = {0}, max_requests = 0`, HAProxy `http-reuse always` (no limit)",
            pool(ctx)
        ),
    );
    r.columns = vec![
        col("rps", "req/s", 1.0),
        col("p50_us", "p50 ms", 1e-3),
        col("p99_us", "p99 ms", 1e-3),
        col("proxy_us_per_op", "proxy µs/req", 1.0),
        col("cpu1_us_per_op", "CPU1 µs/req", 1.0),
        col("cpu1_busy_frac", "CPU1 busy", 1.0),
        col("cpu0_busy_frac", "CPU0 busy", 1.0),
    ];
    r.ratios = vec![
        ratio("rps", "req/s vs nginx", "nginx"),
        ratio("proxy_us_per_op", "proxy CPU vs nginx", "nginx"),
    ];
    r.plots = vec![
        (
            "rps".into(),
            "h2: requests/s (h2c, 10 streams per connection)".into(),
        ),
        ("p99_us".into(), "h2: p99 latency µs (h2load log)".into()),
        (
            "proxy_us_per_op".into(),
            "h2: proxy CPU µs per request".into(),
        ),
    ];
    r.notes.push(format!(
        "Load: `taskset -c {LOAD_CPU} ip netns exec <prefix>client h2load -c{} -m{STREAMS} -t1 -D<seconds> --log-file=<bench dir>/h2load.log http://<proxy>:{PORT}<path>` (nghttp2's h2load, h2c with prior knowledge, closed loop: {} connections x {STREAMS} streams in flight), after an unlogged run of the warm-up's length. Paths as in `http`: tiny = `/`, 16k = `/16k` (16,384 bytes). The exact command of every sample is in the JSON. req/s = h2load's succeeded / duration; p50/p99 from its per-request log (2xx only; request start to end of response); `h2load_failed` / `_errored` / `_timeout` in the JSON.",
        ctx.opts.conns, ctx.opts.conns
    ));
    r.notes.push("Before measuring, `curl --http2-prior-knowledge` must get HTTP/2, status 200 and the origin's bodies (`/` names the origin, `/16k` is 16,384 bytes) from each contender's h2c port; for ferrogate the turn also fails when its `stack_h2_requests` did not move (`fg_h2_*` in the JSON).".into());
    r.notes.push(CPU_NOTE.into());
    r.notes.push("Bottleneck: CPU0 runs h2load and the origin (and the receive softirq of everything sent to the proxy). When `CPU0 busy` is ~1.0 and `CPU1 busy` is below 1.0, the client side is the limit and req/s understates the proxy; proxy µs/req is the comparable figure (goal of issue #16: ferrogate ≤ 0.5x nginx's).".into());
    for round in 0..ctx.opts.rounds {
        for who in CONTENDERS {
            eprintln!("h2 round {round}: {}", who.name());
            match start_h2(ctx, who) {
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
                    for (v, path) in BODIES {
                        r.samples.push(match h2_turn(ctx, &run, path) {
                            Ok((m, c)) => sample(v, who.name(), round, m, c, None),
                            Err(e) => failed_sample(v, who.name(), round, &run.command, &e),
                        });
                    }
                    run.stop();
                }
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUT: &str = "finished in 1.00s, 4000.00 req/s, 285.41KB/s\n\
        requests: 4008 total, 4012 started, 4008 done, 4000 succeeded, 8 failed, 8 errored, 0 timeout\n\
        status codes: 4000 2xx, 0 3xx, 2 4xx, 0 5xx\n";

    #[test]
    fn reads_h2load_counts() {
        let c: std::collections::BTreeMap<_, _> = counts(OUT, "requests:").into_iter().collect();
        assert_eq!(c["succeeded"], 4000.0);
        assert_eq!(c["failed"], 8.0);
        let s = counts(OUT, "status codes:");
        assert_eq!(s[2], ("4xx".to_string(), 2.0));
    }

    #[test]
    fn percentiles_of_the_log() {
        let p = std::env::temp_dir().join(format!("fb-h2-log-{}", std::process::id()));
        let mut t = String::new();
        for i in 1..=100 {
            t.push_str(&format!("1795966588235250\t200\t{i}\n"));
        }
        t.push_str("1795966588235250\t-1\t99999\n");
        std::fs::write(&p, t).unwrap();
        let mut m = Metrics::new();
        percentiles(&p, &mut m).unwrap();
        let _ = std::fs::remove_file(&p);
        assert_eq!(
            (m["p50_us"], m["p99_us"], m["logged_2xx"]),
            (50.0, 99.0, 100.0)
        );
    }
}
