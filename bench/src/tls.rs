//! The HTTPS scenarios: `https` (keep-alive requests over TLS 1.3,
//! terminated at the proxy, plain HTTP to the origin) and `tls-handshake`
//! (new TLS 1.3 handshakes, full and resumed, and the crypto floor). Every
//! proxy serves the same ECDSA P-256 certificate, made at run time, with
//! TLS 1.3 only.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};
use ferrogate_testkit::{Ca, rcgen};

use crate::contenders::{self, Contender, Extra, Running};
use crate::env::{self, EDGE_HOST_IP, LOAD_CPU, Lab, ORIGIN_IP, PROXY_CPU, VIP};
use crate::handshake::{ClientReport, FloorReport};
use crate::measure::{self, Metrics};
use crate::report::{Report, col};
use crate::scenarios::{CPU_NOTE, Ctx, failed_sample, ratio, sample, settings, wrk_turn_url};

/// SNI name of the bench certificate.
pub const TLS_NAME: &str = "bench.ferrogate.test";
/// Answered by the proxy itself (no origin): the handshake's one request.
const HS_PATH: &str = "/tls-hs";
pub const FLOOR: &str = "crypto floor";
const CONTENDERS: [Contender; 3] = [Contender::Ferrogate, Contender::Nginx, Contender::Haproxy];

/// The run's PKI: a CA and an ECDSA P-256 server certificate (rcgen's
/// default key type) for TLS_NAME, in the lab's bench dir.
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Certificate and key in one file (HAProxy's `crt`).
    pub pem: PathBuf,
}

pub fn make_certs(lab: &Lab) -> Result<TlsFiles> {
    let dir = lab.bench_dir().join("tls");
    std::fs::create_dir_all(&dir)?;
    let ca = Ca::new("ferrogate-bench CA");
    let leaf = ca.leaf(Some(TLS_NAME), &[TLS_NAME]);
    // The comparison is for ECDSA P-256: fail loudly if rcgen's default changes.
    let alg = rcgen::KeyPair::from_pem(&leaf.key)
        .context("the generated key")?
        .algorithm();
    if alg != &rcgen::PKCS_ECDSA_P256_SHA256 {
        bail!("the generated server key is {alg:?}, not ECDSA P-256");
    }
    let (cert, key) = leaf.write(&dir, "server");
    let pem = dir.join("server.pem");
    std::fs::write(&pem, format!("{}{}", leaf.cert, leaf.key))?;
    let ca_path = dir.join("ca.pem");
    std::fs::write(&ca_path, ca.pem())?;
    Ok(TlsFiles {
        ca: ca_path,
        cert,
        key,
        pem,
    })
}

fn tls_ip(who: Contender) -> &'static str {
    match who {
        Contender::Ferrogate => VIP,
        _ => EDGE_HOST_IP,
    }
}

fn tls_addr(who: Contender) -> String {
    format!("{}:443", tls_ip(who))
}

/// An HTTPS listener on 443 for each proxy: TLS 1.3 only, tickets on,
/// HS_PATH answered locally, everything else to the origin.
fn extra(f: &TlsFiles) -> Extra {
    let (cert, key, pem) = (f.cert.display(), f.key.display(), f.pem.display());
    Extra {
        nginx: format!(
            "  server {{\n    listen {EDGE_HOST_IP}:443 ssl reuseport backlog=4096;\n    \
             ssl_certificate {cert};\n    ssl_certificate_key {key};\n    ssl_protocols TLSv1.3;\n    \
             ssl_session_cache shared:fbtls:10m;\n    ssl_session_timeout 1h;\n    ssl_session_tickets on;\n    \
             location = {HS_PATH} {{ return 200 \"ok\\n\"; }}\n    \
             location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering on; }}\n  }}\n"
        ),
        haproxy: format!(
            "\nfrontend fe_tls\n  bind {EDGE_HOST_IP}:443 ssl crt {pem} ssl-min-ver TLSv1.3 alpn http/1.1 backlog 4096\n  \
             http-request return status 200 content-type text/plain string ok if {{ path {HS_PATH} }}\n  \
             default_backend be\n"
        ),
        ..Extra::default()
    }
}

fn ferrogate_listener(f: &TlsFiles) -> String {
    format!(
        "\n[[listeners]]\nport = 443\n\n[listeners.tls]\n\
         certificates = [{{ cert = \"{}\", key = \"{}\", default = true }}]\n\
         min_version = \"1.3\"\nsession_tickets = true\n\n\
         [[listeners.routes]]\nname = \"tls-hs\"\npath_exact = \"{HS_PATH}\"\n\
         respond = {{ status = 200, body = \"ok\\n\" }}\n\n\
         [[listeners.routes]]\nname = \"tls-origin\"\npath_prefix = \"/\"\nupstream = \"origin\"\n",
        f.cert.display(),
        f.key.display()
    )
}

/// What `openssl s_client` (verifying against the run's CA) negotiated,
/// e.g. "TLSv1.3 TLS_AES_256_GCM_SHA384 ECDSA X25519"; Err unless it is
/// TLS 1.3 with an ECDSA signature and a verified certificate.
fn negotiated(lab: &Lab, who: Contender, f: &TlsFiles) -> Result<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &lab.ns("client"), "openssl", "s_client"])
        .args([
            "-brief",
            "-connect",
            &tls_addr(who),
            "-servername",
            TLS_NAME,
        ])
        .arg("-CAfile")
        .arg(&f.ca)
        .stdin(Stdio::null())
        .output()
        .context("openssl s_client")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim_start_matches(':').trim().to_string())
            .unwrap_or_default()
    };
    let (proto, suite, sig, kx, verify) = (
        field("Protocol version"),
        field("Ciphersuite"),
        field("Signature type"),
        field("Server Temp Key"),
        field("Verification"),
    );
    if proto != "TLSv1.3" || sig != "ECDSA" || verify != "OK" {
        bail!(
            "{}: expected TLSv1.3, an ECDSA signature and a verified certificate; openssl s_client said:\n{text}",
            who.name()
        );
    }
    Ok(format!("{proto} {suite}, {sig} P-256 certificate, {kx}"))
}

/// Starts `who` with its HTTPS listener and checks, through TLS with the
/// certificate verified, that `/` comes from the origin and HS_PATH from
/// the proxy. Returns what openssl negotiated with it.
fn start_tls(ctx: &Ctx, who: Contender, f: &TlsFiles) -> Result<(Running, String)> {
    let lab = &ctx.lab;
    let cpu = PROXY_CPU.to_string();
    let run = match who {
        Contender::Ferrogate => {
            let cfg = contenders::ferrogate_config_tuned(
                lab,
                1,
                &cpu,
                &ferrogate_listener(f),
                "ferrogate-tls.toml",
            )?;
            contenders::start_with(lab, who, Some(&cfg), 1, &cpu)?
        }
        _ => contenders::start_extra(lab, who, None, 1, &cpu, &extra(f))?,
    };
    let resolve = format!("{TLS_NAME}:443:{}", tls_ip(who));
    let ca = f.ca.display().to_string();
    for (path, want) in [
        ("/", format!("origin {ORIGIN_IP}:8080")),
        (HS_PATH, "ok".into()),
    ] {
        let url = format!("https://{TLS_NAME}{path}");
        let body = lab.exec(
            "client",
            &[
                "curl",
                "-sS",
                "-m",
                "3",
                "--cacert",
                &ca,
                "--resolve",
                &resolve,
                &url,
            ],
        )?;
        if !body.contains(&want) {
            bail!("{} answered {url} with {body:?}, not {want:?}", who.name());
        }
    }
    let n = negotiated(lab, who, f)?;
    Ok((run, n))
}

pub fn https(ctx: &Ctx) -> Result<Report> {
    let files = make_certs(&ctx.lab)?;
    let mut r = Report::new("https", ctx.meta.clone());
    settings(ctx, &mut r);
    tls_settings(&mut r);
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
            "https: requests/s (TLS 1.3 keep-alive)".into(),
        ),
        (
            "proxy_us_per_op".into(),
            "https: proxy CPU µs per request".into(),
        ),
    ];
    r.notes.push("wrk over https with keep-alive (`wrk -t1 -c<conns>`, OpenSSL client): TLS 1.3 is terminated at the proxy, plain HTTP/1.1 keep-alive to the origin; the handshakes (one per connection, at the start) are a negligible share. Tiny body (the origin's `/`).".into());
    r.notes.push(CPU_NOTE.into());
    r.notes.push(BOTTLENECK_NOTE.into());
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..ctx.opts.rounds {
        for who in CONTENDERS {
            eprintln!("https round {round}: {}", who.name());
            let s = start_tls(ctx, who, &files).and_then(|(mut run, neg)| {
                if seen.insert(who) {
                    r.notes.push(format!(
                        "negotiated with {} (openssl s_client): {neg}",
                        who.name()
                    ));
                }
                let url = format!("https://{}/", tls_addr(who));
                let x = wrk_turn_url(ctx, &run, &url, None);
                run.stop();
                x
            });
            r.samples.push(match s {
                Ok((m, c)) => sample("tiny", who.name(), round, m, c, None),
                Err(e) => sample(
                    "tiny",
                    who.name(),
                    round,
                    Metrics::new(),
                    vec![],
                    Some(format!("{e:#}")),
                ),
            });
        }
    }
    Ok(r)
}

const BOTTLENECK_NOTE: &str = "Bottleneck: CPU0 runs the client and the origin (and the receive softirq of everything sent to the proxy). When `CPU0 busy` is ~1.0 and `CPU1 busy` is below 1.0, the client side is the limit and the rate (req/s, handshakes/s) understates the proxy; the proxy's CPU per operation (and `handshakes/s per core` = 10⁶ / proxy µs per handshake) is the comparable figure.";

fn tls_settings(r: &mut Report) {
    for (k, v) in [
        (
            "TLS",
            "1.3 only at every proxy (nginx ssl_protocols TLSv1.3, HAProxy ssl-min-ver TLSv1.3, ferrogate min_version = \"1.3\")",
        ),
        (
            "certificate",
            "ECDSA P-256 leaf signed by a CA made at run time (rcgen), the same files for every proxy",
        ),
        ("ferrogate TLS", "rustls 0.23 with the aws-lc-rs provider"),
        ("kernel proxies' TLS", "OpenSSL (the openssl version below)"),
    ] {
        r.settings.insert(k.into(), v.into());
    }
}

/// Runs this binary's `tls-client` in the client namespace on LOAD_CPU.
fn client(
    lab: &Lab,
    who: Contender,
    f: &TlsFiles,
    resume: bool,
    seconds: f64,
    conns: u32,
) -> Result<(ClientReport, String)> {
    let exe = std::env::current_exe()?.display().to_string();
    let (addr, secs, conns) = (tls_addr(who), seconds.to_string(), conns.to_string());
    let cert = f.cert.display().to_string();
    let mut args = vec![
        exe.as_str(),
        "tls-client",
        "--addr",
        &addr,
        "--name",
        TLS_NAME,
        "--cert",
        &cert,
        "--conns",
        &conns,
        "--seconds",
        &secs,
        "--path",
        HS_PATH,
    ];
    if resume {
        args.push("--resume");
    }
    let mut c = lab.pinned("client", LOAD_CPU, &args);
    let cmd = measure::cmdline(&c);
    let out = env::run(&mut c)?;
    let r = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("tls-client output: {out}"))?;
    Ok((r, cmd))
}

/// Full handshakes a resumed run may have: each loop's first (a new client
/// process has no tickets) plus 5 % for tickets a server declined.
fn max_full(conns: u32, handshakes: f64) -> f64 {
    conns as f64 + 0.05 * handshakes
}

/// One handshake measurement (full or resumed) against a running proxy;
/// also what the client negotiated ("suite group").
fn hs_turn(
    ctx: &Ctx,
    run: &Running,
    f: &TlsFiles,
    resume: bool,
) -> Result<(Metrics, Vec<String>, String)> {
    let o = &ctx.opts;
    let who = run.who;
    if o.warmup > 0 {
        client(&ctx.lab, who, f, resume, o.warmup as f64, o.conns)?;
    }
    // ferrogate's stats file lags its counters by up to 250 ms: read it only
    // after a quiet half second on both sides, so the Δ covers exactly this
    // run (not the previous turn's tail; smoke runs have no warm-up).
    let settle = || {
        if run.stats_file.is_some() {
            std::thread::sleep(std::time::Duration::from_millis(500));
        }
    };
    settle();
    let fg0 = run.stats();
    let w = measure::window_start(&ctx.lab, run);
    let (c, cmd) = client(&ctx.lab, who, f, resume, o.seconds as f64, o.conns)?;
    let mut m = Metrics::new();
    measure::window_end(w, run, c.handshakes as f64, &mut m);
    settle();
    let fg1 = run.stats();
    let hs = c.handshakes as f64;
    for (k, v) in [
        ("handshakes", hs),
        ("hs_per_s", c.hs_per_s),
        ("client_full", c.full as f64),
        ("client_resumed", c.resumed as f64),
        ("resumed_frac", c.resumed as f64 / hs.max(1.0)),
        ("errors", c.errors as f64),
        ("bad_responses", c.bad_responses as f64),
        ("p50_us", c.p50_us),
        ("p99_us", c.p99_us),
    ] {
        m.insert(k.into(), v);
    }
    if who == Contender::Ferrogate {
        let d = |k: &str| {
            fg1.get(k)
                .copied()
                .unwrap_or(0)
                .saturating_sub(fg0.get(k).copied().unwrap_or(0)) as f64
        };
        let (full, resumed) = (
            d("stack_tls_handshakes_full"),
            d("stack_tls_handshakes_resumed"),
        );
        m.insert("fg_tls_full".into(), full);
        m.insert("fg_tls_resumed".into(), resumed);
        m.insert("fg_tls_failures".into(), d("stack_tls_handshake_failures"));
        // Per handshake counted in the same stats snapshots as the busy
        // time (the file lags the client's own count by up to 250 ms).
        if full + resumed > 0.0 {
            m.insert(
                "proxy_us_per_op".into(),
                d("workers_busy_ns") / (full + resumed) / 1e3,
            );
        }
        if resume && full > max_full(o.conns, full + resumed) {
            bail!(
                "ferrogate counted {full} full and {resumed} resumed handshakes in the resumed run"
            );
        }
    }
    if let Some(&us) = m.get("proxy_us_per_op") {
        m.insert("hs_per_core_s".into(), 1e6 / us.max(1e-9));
    }
    if c.handshakes == 0 {
        bail!("{}: no handshake completed ({})", who.name(), c.first_error);
    }
    if c.errors as f64 > hs * 0.01 || c.bad_responses > 0 {
        bail!(
            "{}: {} errors, {} bad responses for {} handshakes; first error: {}",
            who.name(),
            c.errors,
            c.bad_responses,
            c.handshakes,
            c.first_error
        );
    }
    if resume && c.full as f64 > max_full(o.conns, hs) {
        bail!(
            "{}: only {} of {} handshakes resumed",
            who.name(),
            c.resumed,
            c.handshakes
        );
    }
    if !resume && c.resumed > 0 {
        bail!(
            "{}: {} handshakes resumed in the full run",
            who.name(),
            c.resumed
        );
    }
    let neg = format!("{} {}", c.suite, c.group);
    Ok((m, vec![run.command.clone(), cmd], neg))
}

/// The crypto floor (this binary's `tls-floor`, pinned to PROXY_CPU while
/// no proxy runs): samples for `full` and `resumed`.
fn floor(ctx: &Ctx, f: &TlsFiles) -> Result<[(Metrics, String); 2]> {
    let exe = std::env::current_exe()?.display().to_string();
    let secs = (ctx.opts.seconds as f64).min(3.0).to_string();
    let mut c = Command::new("taskset");
    c.args([
        "-c",
        &PROXY_CPU.to_string(),
        &exe,
        "tls-floor",
        "--seconds",
        &secs,
    ])
    .arg("--cert")
    .arg(&f.cert)
    .arg("--key")
    .arg(&f.key);
    let cmd = measure::cmdline(&c);
    let out = env::run(&mut c)?;
    let r: FloorReport = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("tls-floor output: {out}"))?;
    let m = |us: f64, p50: f64, n: u64| {
        Metrics::from([
            ("proxy_us_per_op".to_string(), us),
            ("floor_p50_us".to_string(), p50),
            ("floor_handshakes".to_string(), n as f64),
            ("hs_per_core_s".to_string(), 1e6 / us.max(1e-9)),
        ])
    };
    Ok([
        (m(r.full_us, r.full_p50_us, r.full_n), cmd.clone()),
        (m(r.resumed_us, r.resumed_p50_us, r.resumed_n), cmd),
    ])
}

pub fn handshake(ctx: &Ctx) -> Result<Report> {
    let files = make_certs(&ctx.lab)?;
    let mut r = Report::new("tls-handshake", ctx.meta.clone());
    settings(ctx, &mut r);
    tls_settings(&mut r);
    r.settings.insert(
        "request per connection".into(),
        format!("GET {HS_PATH} (answered by the proxy), Connection: close"),
    );
    r.columns = vec![
        col("hs_per_s", "handshakes/s", 1.0),
        col("proxy_us_per_op", "proxy µs/handshake", 1.0),
        col("hs_per_core_s", "handshakes/s per proxy core", 1.0),
        col("cpu1_us_per_op", "CPU1 µs/handshake", 1.0),
        col("cpu1_busy_frac", "CPU1 busy", 1.0),
        col("cpu0_busy_frac", "CPU0 busy", 1.0),
        col("resumed_frac", "resumed (client view)", 1.0),
        col("p99_us", "p99 connect+handshake ms", 1e-3),
    ];
    r.ratios = vec![
        ratio("hs_per_core_s", "handshakes/core vs nginx", "nginx"),
        ratio("proxy_us_per_op", "CPU vs nginx", "nginx"),
        ratio("proxy_us_per_op", "CPU vs crypto floor", FLOOR),
    ];
    r.plots = vec![
        (
            "proxy_us_per_op".into(),
            "tls-handshake: proxy CPU µs per new TLS 1.3 connection".into(),
        ),
        (
            "hs_per_s".into(),
            "tls-handshake: handshakes/s (client-bound, see notes)".into(),
        ),
    ];
    r.notes.push(format!("Client: `ferrogate-bench tls-client` on CPU0, {} concurrent loops (one thread each) of connect, TLS 1.3 handshake (rustls, X25519 only, ALPN http/1.1), `GET {HS_PATH}` answered by the proxy itself with `Connection: close`, read to the end. It accepts exactly the bench's certificate and skips signature checks (the server's work is the same; each proxy's chain is verified once with curl and openssl before measuring). `full`: no resumption offered. `resumed`: each loop keeps its own ticket cache, so all but each loop's first handshake resume (PSK with (EC)DHE, as every TLS 1.3 resumption here); the run fails if more than one full handshake per loop plus 5 % are seen, in the client's view (`handshake_kind()`) and for ferrogate also in its own counters (`fg_tls_full` / `fg_tls_resumed` in the JSON).", ctx.opts.conns));
    r.notes.push("proxy µs/handshake covers the whole connection: TCP accept and close, the handshake, tickets (every proxy sends them in both runs), the one request. ferrogate: Δworkers_busy_ns / Δ(stack_tls_handshakes_full + _resumed); nginx/HAProxy: utime+stime / handshakes. `handshakes/s per proxy core` = 10⁶ / proxy µs per handshake: what one core would do if the client kept up.".into());
    r.notes.push(format!("`{FLOOR}`: the server side of one handshake in memory (`ferrogate-bench tls-floor`, pinned to CPU1 while no proxy runs): rustls with ferrogate's own listener config (`TlsServer::build`, TLS 1.3, the same certificate, tickets on) and a rustls client, no sockets; only the server's calls are timed (ServerConnection::new, read_tls + process_new_packets, write_tls, tickets included). Mean µs per handshake. `CPU vs crypto floor` = a proxy's CPU per connection over it: what the proxy adds around the cryptography."));
    r.notes.push(BOTTLENECK_NOTE.into());
    let mut seen = std::collections::BTreeSet::new();
    let variants = [("full", false), ("resumed", true)];
    for round in 0..ctx.opts.rounds {
        for who in CONTENDERS {
            eprintln!("tls-handshake round {round}: {}", who.name());
            match start_tls(ctx, who, &files) {
                Err(e) => {
                    for (v, _) in variants {
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
                Ok((mut run, neg)) => {
                    if seen.insert(who) {
                        r.notes.push(format!(
                            "negotiated with {} (openssl s_client): {neg}",
                            who.name()
                        ));
                    }
                    for (v, resume) in variants {
                        r.samples.push(match hs_turn(ctx, &run, &files, resume) {
                            Ok((m, c, neg)) => {
                                if round == 0 && !resume {
                                    r.notes.push(format!(
                                        "negotiated with {} (tls-client, rustls): {neg}",
                                        who.name()
                                    ));
                                }
                                sample(v, who.name(), round, m, c, None)
                            }
                            Err(e) => failed_sample(v, who.name(), round, &run.command, &e),
                        });
                    }
                    run.stop();
                }
            }
        }
        eprintln!("tls-handshake round {round}: {FLOOR}");
        match floor(ctx, &files) {
            Ok(ms) => {
                for ((v, _), (m, c)) in variants.into_iter().zip(ms) {
                    r.samples.push(sample(v, FLOOR, round, m, vec![c], None));
                }
            }
            Err(e) => {
                for (v, _) in variants {
                    r.samples.push(sample(
                        v,
                        FLOOR,
                        round,
                        Metrics::new(),
                        vec![],
                        Some(format!("{e:#}")),
                    ));
                }
            }
        }
    }
    Ok(r)
}
