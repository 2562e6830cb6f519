//! The `h3` scenario (issue #26): the proxy's CPU per request over HTTP/3
//! against HTTP/2 and HTTP/1.1 through ferrogate (one TLS listener with
//! `http2 = true` and `http3 = true`, so the three share certificate, route
//! and upstream pool), and against Caddy's HTTP/3 (quic-go over kernel
//! UDP) as the reference, alternating in each round. HTTP/3 load is this
//! binary's `h3-load`; HTTP/2 and HTTP/1.1 load is h2load over TLS 1.3.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::contenders::{self, Contender, Running};
use crate::env::{self, EDGE_HOST_IP, LOAD_CPU, Lab, ORIGIN_IP, PROXY_CPU, Proc, VIP};
use crate::h3load::H3LoadReport;
use crate::measure::{self, Metrics};
use crate::report::{Layout, Report, col};
use crate::scenarios::{CPU_NOTE, Ctx, failed_sample, ratio, sample, settings};
use crate::tls::{self, TLS_NAME, TlsFiles};

const PORT: u16 = 443;
/// Requests in flight per connection (as the h2 scenario's `-m 10`).
const STREAMS: usize = 10;
const ONE_MIB: f64 = 1_048_576.0;

/// What a turn measures: a body, its path, and the load's shape.
#[derive(Clone, Copy)]
struct Body {
    name: &'static str,
    path: &'static str,
    /// Connections (None: `--conns`) and requests in flight on each.
    conns: Option<usize>,
    streams: usize,
}

const BODIES: [Body; 2] = [
    Body {
        name: "tiny",
        path: "/",
        conns: None,
        streams: STREAMS,
    },
    // 1 MiB of random bytes from the origin (the lab's `/files/1m`); few
    // transfers in flight so the client is not what runs out of memory.
    Body {
        name: "1m",
        path: "/files/1m",
        conns: Some(8),
        streams: 2,
    },
];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    FgH3,
    FgH2,
    FgH1,
    CaddyH3,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Who::FgH3 => "ferrogate-h3",
            Who::FgH2 => "ferrogate-h2",
            Who::FgH1 => "ferrogate-h1",
            Who::CaddyH3 => "caddy-h3",
        }
    }
}

fn conns(ctx: &Ctx, b: Body) -> usize {
    b.conns.unwrap_or(ctx.opts.conns as usize).max(1)
}

/// Idle upstream connections kept for the listener: one per request in
/// flight (see h2.rs's `pool`: fewer makes a test of upstream churn).
fn pool(ctx: &Ctx) -> usize {
    BODIES
        .iter()
        .map(|b| conns(ctx, *b) * b.streams)
        .max()
        .unwrap_or(1)
}

fn ferrogate_listener(f: &TlsFiles, pool: usize) -> String {
    format!(
        "\n[[upstreams]]\nname = \"origin-h3\"\nendpoints = [\"{ORIGIN_IP}:8080\"]\n\
         keepalive = {pool}\nmax_requests = 0\n\n\
         [[listeners]]\nport = {PORT}\nhttp2 = true\nhttp3 = true\n\n\
         [listeners.tls]\n\
         certificates = [{{ cert = \"{}\", key = \"{}\", default = true }}]\n\
         min_version = \"1.3\"\n\n\
         [[listeners.routes]]\nname = \"h3-origin\"\npath_prefix = \"/\"\nupstream = \"origin-h3\"\n\n\
         [http3]\nmax_concurrent_streams = 100\nalt_svc_max_age = 0\n",
        f.cert.display(),
        f.key.display()
    )
}

/// Caddy 2.6 serves h1, h2 and h3 on an HTTPS site by default; the
/// certificate is the run's, loaded from files (no ACME, no admin API, no
/// access log, as the other peers).
fn caddyfile(f: &TlsFiles, pool: usize) -> String {
    format!(
        "{{\n  admin off\n  auto_https off\n  \
         servers {{\n    protocols h1 h2 h3\n  }}\n}}\n\n\
         https://{TLS_NAME}:{PORT} {{\n  bind {EDGE_HOST_IP}\n  \
         tls {} {}\n  \
         reverse_proxy {ORIGIN_IP}:8080 {{\n    transport http {{\n      \
         keepalive_idle_conns {pool}\n      keepalive_idle_conns_per_host {pool}\n    }}\n  }}\n}}\n",
        f.cert.display(),
        f.key.display()
    )
}

/// `ferrogate-bench h3-load` in the client namespace, pinned to LOAD_CPU.
fn h3_load(
    lab: &Lab,
    target: &str,
    ca: &Path,
    conns: usize,
    streams: usize,
    seconds: f64,
    path: &str,
) -> Result<(H3LoadReport, String)> {
    let exe = std::env::current_exe()?.display().to_string();
    let (c_, s_, t_, ca_) = (
        conns.to_string(),
        streams.to_string(),
        seconds.to_string(),
        ca.display().to_string(),
    );
    let mut c = lab.pinned(
        "client",
        LOAD_CPU,
        &[
            &exe,
            "h3-load",
            "--target",
            target,
            "--sni",
            TLS_NAME,
            "--ca",
            &ca_,
            "--connections",
            &c_,
            "--streams",
            &s_,
            "--seconds",
            &t_,
            "--path",
            path,
        ],
    );
    let cmd = measure::cmdline(&c);
    let out = env::run(&mut c)?;
    let r = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("h3-load output: {out}"))?;
    Ok((r, cmd))
}

fn h3_target(who: Who) -> String {
    match who {
        Who::CaddyH3 => format!("{EDGE_HOST_IP}:{PORT}"),
        _ => format!("{VIP}:{PORT}"),
    }
}

/// One short HTTP/3 run that must get only 2xx answers: the listener
/// speaks HTTP/3 and reaches the origin.
fn h3_probe(ctx: &Ctx, who: Who, f: &TlsFiles) -> Result<()> {
    let mut last = String::new();
    // A QUIC listener may come up a moment after the TCP one.
    for _ in 0..5 {
        match h3_load(&ctx.lab, &h3_target(who), &f.ca, 1, 1, 0.3, "/") {
            Ok((r, _)) if r.requests > 0 && r.errors == 0 && r.non2xx == 0 => return Ok(()),
            Ok((r, _)) => last = format!("{r:?}"),
            Err(e) => last = format!("{e:#}"),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    bail!(
        "{}: no clean HTTP/3 answer from {}: {last}",
        who.name(),
        h3_target(who)
    )
}

/// Over TCP+TLS with the certificate verified: `/` must be the origin's.
fn tls_probe(lab: &Lab, ip: &str, f: &TlsFiles) -> Result<String> {
    let resolve = format!("{TLS_NAME}:{PORT}:{ip}");
    let ca = f.ca.display().to_string();
    let url = format!("https://{TLS_NAME}:{PORT}/");
    lab.exec(
        "client",
        &[
            "curl",
            "-sS",
            "-m",
            "2",
            "--cacert",
            &ca,
            "--resolve",
            &resolve,
            &url,
        ],
    )
}

fn start_ferrogate(ctx: &Ctx, f: &TlsFiles) -> Result<Running> {
    let lab = &ctx.lab;
    let cpu = PROXY_CPU.to_string();
    let cfg = contenders::ferrogate_config_tuned(
        lab,
        1,
        &cpu,
        &ferrogate_listener(f, pool(ctx)),
        "ferrogate-h3.toml",
    )?;
    let run = contenders::start_with(lab, Contender::Ferrogate, Some(&cfg), 1, &cpu)?;
    let body = tls_probe(lab, VIP, f)?;
    if !body.contains(&format!("origin {ORIGIN_IP}:8080")) {
        bail!("ferrogate answered https://{VIP}:{PORT}/ with {body:?}, not the origin's body");
    }
    Ok(run)
}

/// Caddy on the edge host address, as the kernel peers: pinned to
/// PROXY_CPU with GOMAXPROCS=1 (one core, as every contender).
fn start_caddy(ctx: &Ctx, f: &TlsFiles) -> Result<Running> {
    let lab = &ctx.lab;
    let d = lab.bench_dir().join("caddy");
    std::fs::create_dir_all(&d)?;
    let conf = d.join("Caddyfile");
    std::fs::write(&conf, caddyfile(f, pool(ctx)))?;
    let conf_s = conf.display().to_string();
    let mut c = lab.pinned(
        "edge",
        PROXY_CPU,
        &[
            "caddy",
            "run",
            "--adapter",
            "caddyfile",
            "--config",
            &conf_s,
        ],
    );
    c.env("GOMAXPROCS", "1")
        .env("HOME", &d)
        .env("XDG_DATA_HOME", d.join("data"))
        .env("XDG_CONFIG_HOME", d.join("config"));
    let command = format!("GOMAXPROCS=1 {}", measure::cmdline(&c));
    let log = lab.bench_dir().join("caddy.log");
    let mut p = Proc::spawn("caddy", &mut c, &log)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(body) = tls_probe(lab, EDGE_HOST_IP, f)
            && body.contains(&format!("origin {ORIGIN_IP}:8080"))
        {
            break;
        }
        if let Some(st) = p.exited() {
            bail!(
                "caddy exited ({st}) before answering; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() > deadline {
            bail!(
                "caddy did not answer https://{TLS_NAME}:{PORT}/ within 20 s; log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // Caddy's CPU is measured as the kernel peers' is: utime+stime of the
    // edge namespace's processes (`window_end`'s nginx/HAProxy branch).
    Ok(Running {
        who: Contender::Nginx,
        proc: Some(p),
        stats_file: None,
        command,
    })
}

/// `h2load` over TLS 1.3 (`--h1`: HTTP/1.1, one request in flight per
/// connection, `conns x streams` connections so as many requests are in
/// flight as over HTTP/2 and HTTP/3).
fn h2load(
    ctx: &Ctx,
    who: Who,
    b: Body,
    seconds: u64,
    log: Option<&Path>,
) -> Result<(Metrics, String)> {
    let (c, m) = match who {
        Who::FgH1 => (conns(ctx, b) * b.streams, 1),
        _ => (conns(ctx, b), b.streams),
    };
    let mut argv = vec!["h2load".to_string()];
    if who == Who::FgH1 {
        argv.push("--h1".into());
    }
    argv.extend([
        format!("-c{c}"),
        format!("-m{m}"),
        "-t1".into(),
        format!("-D{seconds}"),
    ]);
    if let Some(l) = log {
        argv.push(format!("--log-file={}", l.display()));
    }
    argv.push(format!("https://{VIP}:{PORT}{}", b.path));
    crate::h2::run_h2load(ctx, &argv)
}

/// The load run of `who` for `seconds`, with its metrics (requests,
/// rps, errors, percentiles when `measured`).
fn load(
    ctx: &Ctx,
    who: Who,
    f: &TlsFiles,
    b: Body,
    seconds: u64,
    measured: bool,
) -> Result<(Metrics, String)> {
    match who {
        Who::FgH3 | Who::CaddyH3 => {
            let (r, cmd) = h3_load(
                &ctx.lab,
                &h3_target(who),
                &f.ca,
                conns(ctx, b),
                b.streams,
                seconds as f64,
                b.path,
            )?;
            let mut m = Metrics::new();
            for (k, v) in [
                ("requests", r.requests as f64),
                ("rps", r.rps),
                ("errors", r.errors as f64),
                ("non2xx", r.non2xx as f64),
                ("duration_s", r.seconds),
                ("p50_us", r.p50_us),
                ("p99_us", r.p99_us),
                ("p999_us", r.p999_us),
                ("client_bytes", r.bytes as f64),
                ("client_connected", r.connected as f64),
                ("client_lost", r.lost as f64),
                ("client_datagrams_sent", r.datagrams_sent as f64),
                ("client_datagrams_received", r.datagrams_received as f64),
                ("client_send_drops", r.send_drops as f64),
                ("client_cpu_s", r.client_cpu_s),
                (
                    "client_us_per_req",
                    r.client_cpu_s / (r.requests.max(1) as f64) * 1e6,
                ),
            ] {
                m.insert(k.into(), v);
            }
            Ok((m, cmd))
        }
        Who::FgH2 | Who::FgH1 => {
            let log = ctx.lab.bench_dir().join("h3-h2load.log");
            let _ = std::fs::remove_file(&log);
            let (mut m, cmd) = h2load(ctx, who, b, seconds, measured.then_some(log.as_path()))?;
            if measured {
                crate::h2::percentiles(&log, &mut m)?;
                let _ = std::fs::remove_file(&log);
            }
            Ok((m, cmd))
        }
    }
}

fn turn(
    ctx: &Ctx,
    run: &Running,
    who: Who,
    f: &TlsFiles,
    b: Body,
) -> Result<(Metrics, Vec<String>)> {
    let o = &ctx.opts;
    if o.warmup > 0 {
        load(ctx, who, f, b, o.warmup, false)?;
    }
    // ferrogate's stats file lags up to 250 ms: let it catch up so the
    // window's first snapshot holds none of the previous run's requests
    // (a tiny body's thousands would dilute a 1 MiB body's CPU/request).
    std::thread::sleep(Duration::from_millis(600));
    let fg0 = run.stats();
    let w = measure::window_start(&ctx.lab, run);
    let (mut m, cmd) = load(ctx, who, f, b, o.seconds, true)?;
    let n = m["requests"];
    measure::window_end(w, run, n, &mut m);
    let fg1 = run.stats();
    if run.who == Contender::Ferrogate {
        let d = |k: &str| {
            fg1.get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(fg0.get(k).copied().unwrap_or(0)) as f64
        };
        for k in [
            "h3_requests",
            "h3_connections",
            "h3_datagrams_received",
            "h3_datagrams_sent",
            "h3_datagrams_dropped",
            "h3_client_resets",
            "h3_stalled_resets",
            "h2_requests",
        ] {
            m.insert(format!("fg_{k}"), d(&format!("stack_{k}")));
        }
        // The stats file lags up to 250 ms: only "none at all" is sure.
        let (key, proto) = match who {
            Who::FgH3 => ("fg_h3_requests", "HTTP/3"),
            Who::FgH2 => ("fg_h2_requests", "HTTP/2"),
            _ => ("", ""),
        };
        if !key.is_empty() && m[key] <= 0.0 && n > 0.0 {
            bail!("ferrogate counted no {proto} request ({key}) for {n} successes");
        }
    }
    if b.name == "1m" {
        let us = m.get("proxy_us_per_op").copied().unwrap_or(0.0);
        // CPU seconds per 10^9 body octets: µs/req x 10^-6 / (MiB / 10^9).
        m.insert("proxy_s_per_gb".into(), us * 1e-6 * 1e9 / ONE_MIB);
        m.insert("gbit_s".into(), m["rps"] * ONE_MIB * 8.0 / 1e9);
    }
    measure::check_http(who.name(), &m, "requests")?;
    Ok((m, vec![run.command.clone(), cmd]))
}

fn start(ctx: &Ctx, who: Who, f: &TlsFiles) -> Result<Running> {
    let run = match who {
        Who::CaddyH3 => start_caddy(ctx, f)?,
        _ => start_ferrogate(ctx, f)?,
    };
    if matches!(who, Who::FgH3 | Who::CaddyH3) {
        h3_probe(ctx, who, f)?;
    }
    Ok(run)
}

pub fn scenario(ctx: &Ctx) -> Result<Report> {
    let mut r = Report::new("h3", ctx.meta.clone());
    settings(ctx, &mut r);
    let f = tls::make_certs(&ctx.lab)?;
    let caddy_v = env::probe(&["caddy", "version"]);
    r.meta.insert(
        "caddy".into(),
        caddy_v.lines().next().unwrap_or("").to_string(),
    );
    r.settings.insert(
        "ferrogate listener".into(),
        format!(
            "port {PORT} (TCP and UDP), TLS 1.3 (ECDSA P-256, the run's CA), `http2 = true`, `http3 = true`, `[http3] max_concurrent_streams = 100`; upstream `origin-h3` keepalive = {}, max_requests = 0",
            pool(ctx)
        ),
    );
    r.settings.insert(
        "caddy".into(),
        format!(
            "`caddy run` (Caddyfile: `https://{TLS_NAME}:{PORT}`, `bind {EDGE_HOST_IP}`, the same certificate, `protocols h1 h2 h3`, `reverse_proxy {ORIGIN_IP}:8080` with keepalive_idle_conns {}), GOMAXPROCS=1, pinned to CPU{PROXY_CPU}",
            pool(ctx)
        ),
    );
    for b in BODIES {
        r.settings.insert(
            format!("load shape ({})", b.name),
            format!(
                "{} connections x {} requests in flight (HTTP/1.1: {} connections x 1)",
                conns(ctx, b),
                b.streams,
                conns(ctx, b) * b.streams
            ),
        );
    }
    let ratios = vec![
        ratio("proxy_us_per_op", "CPU/req vs caddy-h3", "caddy-h3"),
        ratio("proxy_us_per_op", "CPU/req vs fg-h2", "ferrogate-h2"),
        ratio("proxy_us_per_op", "CPU/req vs fg-h1", "ferrogate-h1"),
        ratio("rps", "req/s vs caddy-h3", "caddy-h3"),
    ];
    r.columns = vec![
        col("rps", "req/s", 1.0),
        col("p50_us", "p50 ms", 1e-3),
        col("p99_us", "p99 ms", 1e-3),
        col("proxy_us_per_op", "proxy µs/req", 1.0),
        col("cpu1_us_per_op", "CPU1 µs/req", 1.0),
        col("cpu1_busy_frac", "CPU1 busy", 1.0),
        col("cpu0_busy_frac", "CPU0 busy", 1.0),
        col("client_us_per_req", "h3-load µs/req", 1.0),
    ];
    r.ratios = ratios.clone();
    r.layouts.insert(
        "1m".into(),
        Layout {
            columns: vec![
                col("rps", "req/s", 1.0),
                col("gbit_s", "Gbit/s", 1.0),
                col("p50_us", "p50 ms", 1e-3),
                col("proxy_us_per_op", "proxy µs/req", 1.0),
                col("proxy_s_per_gb", "proxy CPU s/GB", 1.0),
                col("cpu1_busy_frac", "CPU1 busy", 1.0),
                col("cpu0_busy_frac", "CPU0 busy", 1.0),
                col("client_us_per_req", "h3-load µs/req", 1.0),
            ],
            ratios: vec![
                ratio("proxy_us_per_op", "CPU/GB vs caddy-h3", "caddy-h3"),
                ratio("proxy_us_per_op", "CPU/GB vs fg-h2", "ferrogate-h2"),
                ratio("proxy_us_per_op", "CPU/GB vs fg-h1", "ferrogate-h1"),
            ],
        },
    );
    r.plots = vec![
        ("rps".into(), "h3: requests/s".into()),
        (
            "proxy_us_per_op".into(),
            "h3: proxy CPU µs per request".into(),
        ),
    ];
    r.notes.push(format!(
        "Load: HTTP/3 = `taskset -c {LOAD_CPU} ip netns exec <prefix>client ferrogate-bench h3-load --target <proxy>:{PORT} --sni {TLS_NAME} --ca <run CA> --connections C --streams S --seconds <seconds> --path P` (this binary: ferrogate-quic's sans-IO client on quinn-proto + rustls/aws-lc-rs, one thread, one connected UDP socket per connection, poll(2); closed loop, S GETs in flight per connection; handshakes before the window; latency from the request's write to its FIN). HTTP/2 = `h2load -cC -mS -t1 -D<seconds> https://{VIP}:{PORT}P`, HTTP/1.1 = `h2load --h1 -c(C·S) -m1 …` (TLS 1.3 via ALPN, same in-flight count). Each measured run follows an unmeasured one of the warm-up's length. The exact command of every sample is in the JSON."
    ));
    r.notes.push(format!(
        "ferrogate serves all three protocols from one listener on {VIP}:{PORT} and one process per turn (restarted for each protocol's turn, so each gets a fresh process); Caddy listens on {EDGE_HOST_IP}:{PORT} in the edge namespace, as the kernel peers of the other scenarios. Before measuring, curl over TLS (certificate verified) must get the origin's body, and a short h3-load run must get only 2xx over HTTP/3; for ferrogate the turn fails when `stack_h3_requests` (or `stack_h2_requests`) did not move (`fg_*` in the JSON)."
    ));
    r.notes
        .push(CPU_NOTE.replace("nginx/HAProxy", "nginx/HAProxy/Caddy"));
    r.notes.push("`h3-load µs/req` is the load generator's own utime+stime per completed request: CPU0 also runs the origin, so when `CPU0 busy` is ~1.0 and `CPU1 busy` below 1.0 the client side limits req/s and proxy µs/req is the comparable figure. 1m: `proxy CPU s/GB` = proxy CPU seconds per 10^9 octets of response body (1 MiB bodies); its ratios are the same as per request. Goal of issue #26: ferrogate's CPU per HTTP/3 request ≤ 0.5x Caddy's.".into());
    let order = [Who::FgH3, Who::FgH2, Who::FgH1, Who::CaddyH3];
    for round in 0..ctx.opts.rounds {
        for who in order {
            eprintln!("h3 round {round}: {}", who.name());
            match start(ctx, who, &f) {
                Err(e) => {
                    for b in BODIES {
                        r.samples.push(sample(
                            b.name,
                            who.name(),
                            round,
                            Metrics::new(),
                            vec![],
                            Some(format!("{e:#}")),
                        ));
                    }
                }
                Ok(mut run) => {
                    for b in BODIES {
                        r.samples.push(match turn(ctx, &run, who, &f, b) {
                            Ok((m, c)) => sample(b.name, who.name(), round, m, c, None),
                            Err(e) => failed_sample(b.name, who.name(), round, &run.command, &e),
                        });
                    }
                    run.stop();
                }
            }
        }
    }
    Ok(r)
}
