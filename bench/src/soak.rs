//! The soak scenario (issue #18): ferrogate alone for N minutes under a
//! mixed, moderate load — HTTP/1.1 keep-alive and new connections, HTTPS
//! and h2c — while a generator floods from a denied CIDR, a config is
//! applied every 10 s (two files that differ, alternately) and one of the
//! pool's two origins goes down and comes back every ~20 s. The point is
//! stability, not throughput: every failed request is counted per client
//! kind, and the engine's RSS, open sockets and pool sizes are sampled
//! over time; after the warm-up they should stay flat.
//!
//! Load tools run in chunks of one sample interval each (a fresh wrk or
//! h2load per chunk), so their failures land in the interval they happened
//! in; the engine's gauges are read every 500 ms and averaged per interval.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::contenders::{self, Contender};
use crate::env::{self, LOAD_CPU, Lab, ORIGIN_IP, PROXY_CPU, Proc, VIP};
use crate::measure::{self, Metrics};
use crate::pktgen::{GenArgs, Template};
use crate::report::{Panel, Report, col};
use crate::scenarios::{Ctx, settings};
use crate::tls::{self, TlsFiles};
use ferrogate_testkit::children_of;

/// The soak's own options (`ferrogate-bench soak --help`).
#[derive(Debug, Clone)]
pub struct Opts {
    /// Total run time.
    pub duration: Duration,
    /// One row of the report (and one load-tool chunk) per interval.
    pub sample: Duration,
    /// A config apply this often.
    pub apply_every: Duration,
    /// The flapping origin goes down this often and comes back half-way.
    pub flap_every: Duration,
    /// Denied-source flood rate, packets/s.
    pub flood_pps: u64,
    /// No health checks, passive ejection or retries on the pool: every
    /// request the down origin gets fails. For showing that the soak sees
    /// failures, not for measuring.
    pub unprotected: bool,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            duration: Duration::from_secs(30 * 60),
            sample: Duration::from_secs(5),
            apply_every: Duration::from_secs(10),
            flap_every: Duration::from_secs(20),
            flood_pps: 5_000,
            unprotected: false,
        }
    }
}

/// The second origin's port (the lab's origin is 8080).
const FLAP_PORT: u16 = 8081;
/// Soak traffic goes to the two-origin pool under this prefix; `/` stays
/// on the lab's one origin (what `contenders::start` checks).
const SOAK_PATH: &str = "/soak/";
const VERSION_PATH: &str = "/soak/version";

/// The gauges sampled from the engine, as (stats-file key, row key).
const GAUGES: [(&str, &str); 5] = [
    ("stack_sockets_open", "sockets_open"),
    ("stack_active_connections", "active_connections"),
    ("stack_upstream_idle", "pool_idle"),
    ("stack_upstream_ports_in_use", "upstream_open"),
    ("stack_sockets_parked", "sockets_parked"),
];

/// Counters of the engine copied into each row as they are.
const COUNTERS: [&str; 6] = [
    "stack_requests",
    "stack_retries",
    "stack_upstream_errors",
    "stack_upstream_connects",
    "stack_upstream_pool_evicted",
    "xdp_drop_deny_packets",
];

/// The series whose flatness after the warm-up is the soak's goal.
pub const FLAT: [&str; 5] = [
    "rss_kib",
    "sockets_open",
    "active_connections",
    "pool_idle",
    "upstream_open",
];

/// Goal: max deviation from the post-warm-up mean.
pub const FLAT_GOAL_PCT: f64 = 5.0;

/// For the gauges that count connections or sockets, a deviation of one
/// (a single connection) also meets the goal: 5 % of a dozen pooled
/// connections is less than one, which no integer gauge can resolve.
pub const FLAT_FLOOR_COUNT: f64 = 1.0;

/// Whether a series' judged deviation meets the goal: within
/// [`FLAT_GOAL_PCT`] of its mean, or (counts only) within one unit.
pub fn flat_goal_met(key: &str, max_dev_pct: f64, mean: f64) -> bool {
    let floor_pct = if key == "rss_kib" || mean <= 0.0 {
        0.0
    } else {
        FLAT_FLOOR_COUNT / mean * 100.0
    };
    max_dev_pct <= FLAT_GOAL_PCT.max(floor_pct)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// wrk, 8 keep-alive connections, each waiting 20 ms between requests.
    H1KeepAlive,
    /// wrk with `Connection: close`: one connection per request.
    H1Close,
    /// wrk over TLS 1.3, keep-alive.
    Https,
    /// h2load, h2c with prior knowledge, a fixed rate per client.
    H2,
}

const KINDS: [Kind; 4] = [Kind::H1KeepAlive, Kind::H1Close, Kind::Https, Kind::H2];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::H1KeepAlive => "h1_keepalive",
            Kind::H1Close => "h1_close",
            Kind::Https => "https",
            Kind::H2 => "h2",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Kind::H1KeepAlive => {
                "wrk -t1 -c8, 20 ms between requests per connection (≤ 400 req/s), keep-alive"
            }
            Kind::H1Close => {
                "wrk -t1 -c4 -H 'Connection: close', 40 ms between requests (≤ 100 conn/s)"
            }
            Kind::Https => "wrk -t1 -c4 https://, TLS 1.3, 20 ms between requests (≤ 200 req/s)",
            Kind::H2 => "h2load -c2 -m2 --rps=100 (200 req/s), h2c prior knowledge",
        }
    }

    /// One chunk of `secs` seconds: (counts, the command).
    fn run(self, lab: &Lab, secs: u64) -> Result<(Counts, String)> {
        let url = format!("http://{VIP}{SOAK_PATH}{}", self.name());
        let (m, cmd) = match self {
            Kind::H1KeepAlive => measure::wrk_paced(lab, &url, secs, 8, None, 20, "soak-ka")?,
            Kind::H1Close => measure::wrk_paced(
                lab,
                &url,
                secs,
                4,
                Some("Connection: close"),
                40,
                "soak-close",
            )?,
            Kind::Https => {
                let url = format!("https://{VIP}{SOAK_PATH}https");
                measure::wrk_paced(lab, &url, secs, 4, None, 20, "soak-tls")?
            }
            Kind::H2 => return h2load(lab, &url, secs),
        };
        let g = |k: &str| m.get(k).copied().unwrap_or(0.0) as u64;
        let non2xx = g("non2xx");
        Ok((
            Counts {
                ok: g("requests").saturating_sub(non2xx),
                non2xx,
                conn_errors: g("err_connect") + g("err_read") + g("err_write"),
                timeouts: g("err_timeout"),
                tool_failures: 0,
            },
            cmd,
        ))
    }
}

fn h2load(lab: &Lab, url: &str, secs: u64) -> Result<(Counts, String)> {
    let d = format!("-D{secs}");
    let mut c = lab.pinned(
        "client",
        LOAD_CPU,
        &["h2load", "-c2", "-m2", "-t1", "--rps=100", &d, url],
    );
    let cmd = measure::cmdline(&c);
    let out = env::run(&mut c)?;
    let req: BTreeMap<String, f64> = crate::h2::counts(&out, "requests:").into_iter().collect();
    if !req.contains_key("succeeded") {
        bail!("no `requests:` line in h2load's output:\n{out}");
    }
    let status: BTreeMap<String, f64> = crate::h2::counts(&out, "status codes:")
        .into_iter()
        .collect();
    let non2xx: f64 = status
        .iter()
        .filter(|(k, _)| k.as_str() != "2xx")
        .map(|(_, v)| v)
        .sum();
    let g = |k: &str| req.get(k).copied().unwrap_or(0.0) as u64;
    Ok((
        Counts {
            // h2load's `succeeded` counts any status; non-2xx apart.
            ok: g("succeeded").saturating_sub(non2xx as u64),
            non2xx: non2xx as u64,
            conn_errors: g("errored"),
            timeouts: g("timeout"),
            tool_failures: 0,
        },
        cmd,
    ))
}

/// What one client kind saw (cumulative).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Counts {
    pub ok: u64,
    pub non2xx: u64,
    pub conn_errors: u64,
    pub timeouts: u64,
    /// Chunks whose tool could not run or whose output was unreadable.
    pub tool_failures: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.ok += o.ok;
        self.non2xx += o.non2xx;
        self.conn_errors += o.conn_errors;
        self.timeouts += o.timeouts;
        self.tool_failures += o.tool_failures;
    }
    pub fn failed(&self) -> u64 {
        self.non2xx + self.conn_errors + self.timeouts + self.tool_failures
    }
}

/// State the load, apply and flap threads share with the sampler.
#[derive(Default)]
struct Shared {
    counts: BTreeMap<&'static str, Counts>,
    /// Each kind's command, first seen.
    commands: BTreeMap<&'static str, String>,
    errors: Vec<String>,
    applies_ok: u64,
    applies_failed: u64,
    apply_max_ms: f64,
    flaps: u64,
    flap_down: bool,
}

impl Shared {
    fn error(&mut self, e: String) {
        // The first few explain; the counts say how many.
        if self.errors.len() < 20 {
            self.errors.push(e);
        }
    }
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sleeps until `t` or until `stop` is set (checked every 100 ms).
fn sleep_until(t: Instant, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        if now >= t {
            return;
        }
        std::thread::sleep((t - now).min(Duration::from_millis(100)));
    }
}

fn pool_policy(unprotected: bool) -> &'static str {
    if unprotected {
        "retry = { attempts = 1 }\n"
    } else {
        // Probes every 500 ms, down after one miss, back after two; a
        // connect refused is retried on the other endpoint.
        "health = { type = \"http\", path = \"/\", interval_ms = 500, timeout_ms = 400, rise = 2, fall = 1 }\n\
         passive = { consecutive_failures = 2, eject_ms = 2000 }\n\
         retry = { attempts = 3, budget_percent = 50 }\n"
    }
}

/// The soak's config; `version` ("A" or "B") is the body of VERSION_PATH,
/// the only difference between the two files applied in turn.
pub fn config(lab: &Lab, f: &TlsFiles, version: &str, unprotected: bool) -> String {
    let policy = pool_policy(unprotected);
    format!(
        "vips = [\"{VIP}/24\"]\n\n[engine]\ninterface = \"eth0\"\nnetns = \"{edge}\"\nqueues = 1\ncpus = [{PROXY_CPU}]\n\
         backend = \"af_xdp\"\nxdp_mode = \"auto\"\nbatch_size = 64\npolling = \"adaptive\"\n\n\
         [[upstreams]]\nname = \"origin\"\nendpoints = [\"{ORIGIN_IP}:8080\"]\n\n\
         [[upstreams]]\nname = \"soak\"\nendpoints = [\"{ORIGIN_IP}:8080\", \"{ORIGIN_IP}:{FLAP_PORT}\"]\n{policy}\n\
         [[listeners]]\nport = 80\nhttp2 = true\n\n\
         [[listeners.routes]]\nname = \"version\"\npath_exact = \"{VERSION_PATH}\"\n\
         respond = {{ status = 200, body = \"{version}\" }}\n\n\
         [[listeners.routes]]\nname = \"soak\"\npath_prefix = \"{SOAK_PATH}\"\nupstream = \"soak\"\n\n\
         [[listeners.routes]]\nname = \"origin\"\npath_prefix = \"/\"\nupstream = \"origin\"\n\n\
         [[listeners]]\nport = 443\n\n[listeners.tls]\n\
         certificates = [{{ cert = \"{cert}\", key = \"{key}\", default = true }}]\nmin_version = \"1.3\"\n\n\
         [[listeners.routes]]\nname = \"tls-soak\"\npath_prefix = \"/\"\nupstream = \"soak\"\n\
         {filter}",
        edge = lab.ns("edge"),
        cert = f.cert.display(),
        key = f.key.display(),
        filter = contenders::FLOOD_FILTER,
    )
}

/// The flapping origin: an nginx of its own on FLAP_PORT in the origin
/// namespace, pinned with the load; stopped (SIGTERM: nginx's fast
/// shutdown, connections closed) and started again by PID.
struct FlapOrigin {
    conf: PathBuf,
    log: PathBuf,
    proc: Option<Proc>,
}

impl FlapOrigin {
    fn new(lab: &Lab) -> Result<FlapOrigin> {
        let d = lab.bench_dir().join("origin-flap");
        std::fs::create_dir_all(&d)?;
        let dd = d.display();
        let conf = format!(
            "worker_processes 1;\nuser root;\ndaemon off;\npid {dd}/nginx.pid;\nerror_log {dd}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dd}/body;\n  proxy_temp_path {dd}/proxy;\n\
             fastcgi_temp_path {dd}/fastcgi;\n  uwsgi_temp_path {dd}/uwsgi;\n  scgi_temp_path {dd}/scgi;\n\
             server {{\n    listen {ORIGIN_IP}:{FLAP_PORT} reuseport;\n    \
             location / {{ default_type text/plain; return 200 \"origin {ORIGIN_IP}:{FLAP_PORT} path=$request_uri\\n\"; }}\n  }}\n}}\n"
        );
        let p = d.join("nginx.conf");
        std::fs::write(&p, conf)?;
        Ok(FlapOrigin {
            conf: p,
            log: d.join("nginx.log"),
            proc: None,
        })
    }

    fn command(&self, lab: &Lab) -> Command {
        lab.pinned(
            "origin",
            LOAD_CPU,
            &["nginx", "-c", &self.conf.display().to_string()],
        )
    }

    fn up(&mut self, lab: &Lab) -> Result<()> {
        if self.proc.is_none() {
            self.proc = Some(Proc::spawn(
                "origin-flap",
                &mut self.command(lab),
                &self.log,
            )?);
        }
        Ok(())
    }

    fn down(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.stop();
        }
    }

    fn wait_answers(&mut self, lab: &Lab) -> Result<()> {
        let url = format!("http://{ORIGIN_IP}:{FLAP_PORT}/");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if lab
                .exec(
                    "client",
                    &["curl", "-sf", "-m", "1", "-o", "/dev/null", &url],
                )
                .is_ok()
            {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "the flapping origin {url} did not answer; log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

/// The engine process (`ferrogate engine`, the supervisor's child): the
/// data plane's memory.
fn engine_pid(supervisor: i32) -> Option<i32> {
    children_of(supervisor).into_iter().find(|&c| {
        std::fs::read(format!("/proc/{c}/cmdline"))
            .map(|cmd| cmd.split(|&b| b == 0).nth(1) == Some(b"engine".as_slice()))
            .unwrap_or(false)
    })
}

fn rss_kib(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Gauge reads within one interval, averaged into its row.
#[derive(Default)]
struct Acc {
    n: f64,
    sums: BTreeMap<&'static str, f64>,
    max: BTreeMap<&'static str, f64>,
}

impl Acc {
    fn add(&mut self, k: &'static str, v: f64) {
        *self.sums.entry(k).or_default() += v;
        let m = self.max.entry(k).or_insert(v);
        *m = m.max(v);
    }
}

/// A series' behaviour after the warm-up.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Flatness {
    pub samples: usize,
    pub first: f64,
    pub last: f64,
    pub mean: f64,
    pub min: f64,
    pub max: f64,
    /// max |x − mean| / mean, in %.
    pub max_dev_pct: f64,
    /// (mean of the last quarter − mean of the first quarter) / the first
    /// quarter's mean, in %: what a leak shows as, unlike a spike.
    pub drift_pct: f64,
}

/// `v` after dropping the samples with t < `warmup_s`. None when empty.
pub fn flatness(rows: &[(f64, f64)], warmup_s: f64) -> Option<Flatness> {
    let v: Vec<f64> = rows
        .iter()
        .filter(|(t, _)| *t >= warmup_s)
        .map(|(_, x)| *x)
        .collect();
    if v.is_empty() {
        return None;
    }
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let (min, max) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
    let pct = |d: f64, base: f64| {
        if base.abs() < 1e-9 {
            if d.abs() < 1e-9 { 0.0 } else { f64::INFINITY }
        } else {
            d / base * 100.0
        }
    };
    let max_dev_pct = v
        .iter()
        .map(|x| pct((x - mean).abs(), mean))
        .fold(0.0, f64::max);
    let q = (n / 4).max(1);
    let avg = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
    let (head, tail) = (avg(&v[..q]), avg(&v[n - q..]));
    Some(Flatness {
        samples: n,
        first: v[0],
        last: v[n - 1],
        mean,
        min,
        max,
        max_dev_pct,
        drift_pct: pct(tail - head, head),
    })
}

/// Means of `rows` over consecutive windows of `w` seconds from `from`
/// to `to` (full windows only), each at its window's end. One window per
/// flap period averages the disturbances the soak makes on purpose (an
/// origin down for half of it, two applies, four load chunks) out of the
/// gauges, so that what remains is drift.
pub fn window_means(rows: &[(f64, f64)], from: f64, to: f64, w: f64) -> Vec<(f64, f64)> {
    let mut out = Vec::new();
    let mut start = from;
    while start + w <= to + 1e-9 {
        let v: Vec<f64> = rows
            .iter()
            .filter(|(t, _)| *t > start && *t <= start + w + 1e-9)
            .map(|(_, x)| *x)
            .collect();
        if !v.is_empty() {
            out.push((start + w, v.iter().sum::<f64>() / v.len() as f64));
        }
        start += w;
    }
    out
}

/// The window the flatness goal is judged on: a sixth of the judged span,
/// in whole flap periods (at least one). Small gauges (a dozen pooled
/// connections) swing by half with every load chunk; a leak grows over the
/// run and shows in six means where noise averages out — 1 socket a minute
/// on a mean of 30 is +80 % over a 30-minute run.
pub fn judge_window(from: f64, to: f64, flap_period: f64) -> f64 {
    let periods = ((to - from) / 6.0 / flap_period).floor().max(1.0);
    periods * flap_period
}

/// Warm-up: the first 20 % of the run, at most one minute.
pub fn warmup_secs(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 0.2).min(60.0)
}

fn gen_args(ctx: &Ctx, pps: u64, seconds: f64) -> Result<GenArgs> {
    Ok(GenArgs {
        iface: "eth0".into(),
        template: Template::Syn,
        dst_mac: ctx.lab.mac("edge")?,
        dst_ip: VIP.parse()?,
        dst_port: 80,
        src_cidr: ctx.opts.src_cidr.clone(),
        rate: pps,
        seconds,
        count: 0,
        batch: 64,
    })
}

/// `ferrogate ctl apply FILE`, then the new version's answer on
/// VERSION_PATH: Ok(ms until every worker switched), Err(why).
fn apply(lab: &Lab, bin: &Path, sock: &Path, file: &Path, want: &str) -> Result<f64> {
    let out = Command::new(bin)
        .arg("ctl")
        .arg("apply")
        .arg(file)
        .arg("--socket")
        .arg(sock)
        .output()
        .context("spawning ferrogate ctl apply")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !text.starts_with("applied version ") {
        bail!(
            "ctl apply {}: {}{}",
            file.display(),
            text.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let ms = text
        .split("workers switched within ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("not every worker switched: {}", text.trim()))?;
    let url = format!("http://{VIP}{VERSION_PATH}");
    let body = lab.exec("client", &["curl", "-sS", "-m", "2", &url])?;
    if body != want {
        bail!("after applying {want}, {url} answered {body:?}");
    }
    Ok(ms)
}

pub fn scenario(ctx: &Ctx) -> Result<Report> {
    let so = &ctx.opts.soak;
    let lab = &ctx.lab;
    let mut r = Report::new("soak", ctx.meta.clone());
    settings(ctx, &mut r);
    for k in [
        "rounds",
        "seconds per measurement",
        "warm-up seconds per contender turn",
        "client connections",
    ] {
        r.settings.remove(k);
    }
    let warm = warmup_secs(so.duration);
    for (k, v) in [
        ("duration s", so.duration.as_secs_f64().to_string()),
        ("sample interval s", so.sample.as_secs_f64().to_string()),
        ("warm-up s (20 %, ≤ 60)", format!("{warm:.0}")),
        ("config apply every s", so.apply_every.as_secs().to_string()),
        (
            "origin flap period s",
            format!("{} (down for half of it)", so.flap_every.as_secs_f64()),
        ),
        ("denied flood pps", so.flood_pps.to_string()),
        ("denied CIDR", ctx.opts.src_cidr.clone()),
        (
            "pool policy",
            pool_policy(so.unprotected).replace('\n', "; "),
        ),
    ] {
        r.settings.insert(k.into(), v);
    }
    for k in KINDS {
        r.settings
            .insert(format!("client {}", k.name()), k.describe().into());
    }
    if ctx.opts.src_cidr != "198.18.0.0/15" {
        bail!("soak: the deny rule is for 198.18.0.0/15; --src-cidr must stay that");
    }
    let certs = tls::make_certs(lab)?;
    let bin = contenders::ferrogate_bin()?;
    let cfg = |v: &str| -> Result<PathBuf> {
        let p = lab.bench_dir().join(format!("soak-{v}.toml"));
        std::fs::write(&p, config(lab, &certs, v, so.unprotected))?;
        let out = Command::new(&bin).arg("check").arg(&p).output()?;
        if !out.status.success() {
            bail!(
                "ferrogate check {}: {}{}",
                p.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(p)
    };
    let (cfg_a, cfg_b) = (cfg("A")?, cfg("B")?);
    let mut flap = FlapOrigin::new(lab)?;
    flap.up(lab)?;
    flap.wait_answers(lab)?;
    let cpu = PROXY_CPU.to_string();
    let run = contenders::start_with(lab, Contender::Ferrogate, Some(&cfg_a), 1, &cpu)?;
    let sock = lab.bench_dir().join("admin.sock");
    let supervisor = run
        .proc
        .as_ref()
        .and_then(|p| p.pid())
        .context("ferrogate's pid")?;
    let first_engine = engine_pid(supervisor).context("no engine process under the supervisor")?;
    // Every listener answers before the clock starts.
    for (url, extra) in [
        (format!("http://{VIP}{SOAK_PATH}x"), None),
        (format!("https://{VIP}{SOAK_PATH}x"), Some("-k")),
        (
            format!("http://{VIP}{SOAK_PATH}x"),
            Some("--http2-prior-knowledge"),
        ),
    ] {
        let mut argv = vec!["curl", "-sSf", "-m", "3", "-o", "/dev/null"];
        argv.extend(extra);
        argv.push(&url);
        lab.exec("client", &argv)
            .with_context(|| format!("soak pre-check {argv:?}"))?;
    }

    let secs = so.duration.as_secs_f64();
    let g = gen_args(ctx, so.flood_pps, secs + 5.0)?;
    let mut gc = measure::gen_command(lab, ctx.opts.gen_cpu, &g)?;
    let gen_cmd = measure::cmdline(&gc);
    let gen_log = lab.bench_dir().join("soak-gen.out");
    let mut gen_proc = Proc::spawn("generator", &mut gc, &gen_log)?;

    let shared = Mutex::new(Shared::default());
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let end = start + so.duration;
    let mut rows: Vec<Metrics> = Vec::new();
    let mut engine_restarts = 0u64;
    let stats_file = run.stats_file.clone().context("ferrogate's stats file")?;
    std::thread::scope(|s| {
        // Whatever happens in the sampler, the other threads stop.
        struct StopOnDrop<'a>(&'a AtomicBool);
        impl Drop for StopOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        let _guard = StopOnDrop(&stop);
        for kind in KINDS {
            let (shared, stop) = (&shared, &stop);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let left = end.saturating_duration_since(Instant::now()).as_secs();
                    if left < 1 {
                        break;
                    }
                    let chunk = so.sample.as_secs().clamp(1, left);
                    let res = kind.run(lab, chunk);
                    let mut sh = lock(shared);
                    match res {
                        Ok((c, cmd)) => {
                            sh.counts.entry(kind.name()).or_default().add(&c);
                            sh.commands.entry(kind.name()).or_insert(cmd);
                            if c.failed() > 0 {
                                let t = start.elapsed().as_secs_f64();
                                sh.error(format!("t={t:.0}s {}: {c:?}", kind.name()));
                            }
                        }
                        Err(e) => {
                            sh.counts.entry(kind.name()).or_default().tool_failures += 1;
                            sh.error(format!("{}: {e:#}", kind.name()));
                            drop(sh);
                            std::thread::sleep(Duration::from_secs(1));
                        }
                    }
                }
            });
        }
        {
            let (shared, stop, bin, sock) = (&shared, &stop, &bin, &sock);
            let (a, b) = (&cfg_a, &cfg_b);
            s.spawn(move || {
                let mut i = 0u64;
                loop {
                    i += 1;
                    sleep_until(start + so.apply_every * i as u32, stop);
                    if stop.load(Ordering::Relaxed) || Instant::now() >= end {
                        break;
                    }
                    let (f, v) = if i % 2 == 1 { (b, "B") } else { (a, "A") };
                    let res = apply(lab, bin, sock, f, v);
                    let mut sh = lock(shared);
                    match res {
                        Ok(ms) => {
                            sh.applies_ok += 1;
                            sh.apply_max_ms = sh.apply_max_ms.max(ms);
                        }
                        Err(e) => {
                            sh.applies_failed += 1;
                            sh.error(format!("apply {i}: {e:#}"));
                        }
                    }
                }
            });
        }
        {
            let (shared, stop, flap) = (&shared, &stop, &mut flap);
            s.spawn(move || {
                let half = so.flap_every / 2;
                let mut i = 0u32;
                loop {
                    i += 1;
                    sleep_until(start + half * i, stop);
                    if stop.load(Ordering::Relaxed) || Instant::now() >= end {
                        break;
                    }
                    let down = i % 2 == 1;
                    if down {
                        flap.down();
                    } else if let Err(e) = flap.up(lab) {
                        lock(shared).error(format!("flap up: {e:#}"));
                    }
                    let mut sh = lock(shared);
                    sh.flap_down = down;
                    if down {
                        sh.flaps += 1;
                    }
                }
                // Back up, so the next start is not a flap.
                let _ = flap.up(lab);
            });
        }
        // The sampler.
        let mut acc = Acc::default();
        let mut next_row = start + so.sample;
        let mut next_read = start;
        let mut engine = first_engine;
        loop {
            sleep_until(next_read, &AtomicBool::new(false));
            next_read += Duration::from_millis(500);
            let sup_alive = engine_pid(supervisor);
            if let Some(p) = sup_alive
                && p != engine
            {
                engine_restarts += 1;
                lock(&shared).error(format!("the engine restarted: pid {engine} → {p}"));
                engine = p;
            }
            let st = env::read_stats(&stats_file);
            acc.n += 1.0;
            if let Some(kib) = rss_kib(engine) {
                acc.add("rss_kib", kib as f64);
            }
            for (k, name) in GAUGES {
                if let Some(v) = st.get(k) {
                    acc.add(name, *v as f64);
                }
            }
            let now = Instant::now();
            if now < next_row {
                continue;
            }
            next_row += so.sample;
            let mut row = Metrics::new();
            row.insert("t_s".into(), (now - start).as_secs_f64());
            for (k, sum) in &acc.sums {
                row.insert((*k).into(), sum / acc.n.max(1.0));
            }
            if let Some(m) = acc.max.get("rss_kib") {
                row.insert("rss_kib_max".into(), *m);
            }
            acc = Acc::default();
            for k in COUNTERS {
                row.insert(k.into(), st.get(k).copied().unwrap_or(0) as f64);
            }
            {
                let sh = lock(&shared);
                let mut ok = 0;
                let mut failed = 0;
                for (kind, c) in &sh.counts {
                    row.insert(format!("{kind}_ok"), c.ok as f64);
                    row.insert(format!("{kind}_failed"), c.failed() as f64);
                    ok += c.ok;
                    failed += c.failed();
                }
                row.insert("requests_ok".into(), ok as f64);
                row.insert("requests_failed".into(), failed as f64);
                row.insert("applies_ok".into(), sh.applies_ok as f64);
                row.insert("applies_failed".into(), sh.applies_failed as f64);
                row.insert("flaps".into(), sh.flaps as f64);
                row.insert("flap_origin_down".into(), sh.flap_down as u8 as f64);
            }
            row.insert("engine_restarts".into(), engine_restarts as f64);
            eprintln!(
                "soak t={:>5.0}s rss {:>7.0} KiB sockets {:>5.0} conns {:>5.0} pool idle {:>4.0} upstream {:>4.0} ok {:>8.0} failed {:.0} applies {:.0}/{:.0} flaps {:.0}",
                row["t_s"],
                row.get("rss_kib").copied().unwrap_or(0.0),
                row.get("sockets_open").copied().unwrap_or(0.0),
                row.get("active_connections").copied().unwrap_or(0.0),
                row.get("pool_idle").copied().unwrap_or(0.0),
                row.get("upstream_open").copied().unwrap_or(0.0),
                row["requests_ok"],
                row["requests_failed"],
                row["applies_ok"],
                row["applies_ok"] + row["applies_failed"],
                row["flaps"],
            );
            rows.push(row);
            if now >= end {
                break;
            }
        }
        stop.store(true, Ordering::Relaxed);
    });
    // The load threads finished their last chunk inside the scope: the
    // counts are final.
    let (counts, commands, errors, applies_ok, applies_failed, apply_max_ms, flaps) = {
        let sh = lock(&shared);
        (
            sh.counts.clone(),
            sh.commands.clone(),
            sh.errors.clone(),
            sh.applies_ok,
            sh.applies_failed,
            sh.apply_max_ms,
            sh.flaps,
        )
    };
    // Generator: it stops by itself; give it its margin, then stop it.
    let gen_deadline = Instant::now() + Duration::from_secs(8);
    while gen_proc.exited().is_none() && Instant::now() < gen_deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    gen_proc.stop();
    let flood_report =
        measure::parse_gen(&std::fs::read_to_string(&gen_log).unwrap_or_default()).ok();
    let final_stats = run.stats();
    let fg_cmd = run.command.clone();
    drop(run);
    flap.down();

    // Summary.
    let mut m = Metrics::new();
    let mut total = Counts::default();
    for k in KINDS {
        let c = counts.get(k.name()).copied().unwrap_or_default();
        total.add(&c);
        m.insert(format!("{}_ok", k.name()), c.ok as f64);
        m.insert(format!("{}_non2xx", k.name()), c.non2xx as f64);
        m.insert(format!("{}_conn_errors", k.name()), c.conn_errors as f64);
        m.insert(format!("{}_timeouts", k.name()), c.timeouts as f64);
        m.insert(
            format!("{}_tool_failures", k.name()),
            c.tool_failures as f64,
        );
    }
    m.insert("requests_ok".into(), total.ok as f64);
    m.insert("requests_failed".into(), total.failed() as f64);
    m.insert("applies_ok".into(), applies_ok as f64);
    m.insert("applies_failed".into(), applies_failed as f64);
    m.insert("apply_max_switch_ms".into(), apply_max_ms);
    m.insert("flaps".into(), flaps as f64);
    m.insert("engine_restarts".into(), engine_restarts as f64);
    m.insert("samples".into(), rows.len() as f64);
    m.insert(
        "deny_dropped".into(),
        final_stats
            .get("xdp_drop_deny_packets")
            .copied()
            .unwrap_or(0) as f64,
    );
    if let Some(g) = &flood_report {
        m.insert("flood_sent".into(), g.sent as f64);
        m.insert("flood_pps".into(), g.pps);
    }
    for k in ["stack_retries", "stack_upstream_errors", "stack_requests"] {
        m.insert(
            format!("fg_{k}"),
            final_stats.get(k).copied().unwrap_or(0) as f64,
        );
    }
    let mut problems: Vec<String> = Vec::new();
    let mut verdicts = String::new();
    // Rows in [warm-up, end − one sample]: the last row is the load's
    // wind-down (the tools' last chunks end before the clock does).
    let to = so.duration.as_secs_f64() - so.sample.as_secs_f64();
    let flap_s = so.flap_every.as_secs_f64();
    let win = judge_window(warm, to, flap_s);
    let mut flat_table = format!(
        "Per sample (every {}s), per flap period ({flap_s:.0} s means, which average out the origin's down half, the applies and the load chunks) and per judged window ({win:.0} s means: a sixth of the run in whole flap periods, where a leak shows and the chunks' noise does not):\n\n\
         | series | samples | first | last | mean | min | max | max dev from mean | drift (last ¼ vs first ¼) | {flap_s:.0} s means: max dev | {win:.0} s means: max dev | {win:.0} s means: drift | goal ≤ 5 % ({win:.0} s means) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
        so.sample.as_secs()
    );
    let mut flat_ok: Vec<(&str, (f64, f64, bool))> = Vec::new();
    for key in FLAT {
        let series: Vec<(f64, f64)> = rows
            .iter()
            .filter_map(|r| Some((r["t_s"], *r.get(key)?)))
            .filter(|(t, _)| *t <= to + 1e-9)
            .collect();
        let Some(f) = flatness(&series, warm) else {
            problems.push(format!("the series {key} is empty after the warm-up"));
            continue;
        };
        let flap_dev = flatness(&window_means(&series, warm, to, flap_s), 0.0)
            .map_or(f64::NAN, |x| x.max_dev_pct);
        let wm = window_means(&series, warm, to, win);
        let fw = flatness(&wm, 0.0);
        m.insert(format!("{key}_first"), f.first);
        m.insert(format!("{key}_last"), f.last);
        m.insert(format!("{key}_mean"), f.mean);
        m.insert(format!("{key}_max"), f.max);
        m.insert(format!("{key}_max_dev_pct"), f.max_dev_pct);
        m.insert(format!("{key}_drift_pct"), f.drift_pct);
        let (wdev, wdrift) = fw
            .as_ref()
            .map_or((f64::NAN, f64::NAN), |x| (x.max_dev_pct, x.drift_pct));
        m.insert(format!("{key}_window_max_dev_pct"), wdev);
        m.insert(format!("{key}_window_drift_pct"), wdrift);
        m.insert(format!("{key}_windows"), wm.len() as f64);
        m.insert(format!("{key}_flap_window_max_dev_pct"), flap_dev);
        let met = flat_goal_met(key, wdev, f.mean);
        flat_ok.push((key, (wdev, wdrift, met)));
        flat_table.push_str(&format!(
            "| {key} | {} | {:.0} | {:.0} | {:.1} | {:.0} | {:.0} | {:.1} % | {:+.1} % | {:.1} % | {:.1} % | {:+.1} % | {} |\n",
            f.samples,
            f.first,
            f.last,
            f.mean,
            f.min,
            f.max,
            f.max_dev_pct,
            f.drift_pct,
            flap_dev,
            wdev,
            wdrift,
            if met { "met" } else { "**not met**" }
        ));
    }
    let verdict = |ok: bool| if ok { "PASS" } else { "FAIL" };
    verdicts.push_str(&format!(
        "- {}: failed requests {} of {} (goal 0)\n",
        verdict(total.failed() == 0),
        total.failed(),
        total.ok + total.failed()
    ));
    verdicts.push_str(&format!(
        "- {}: config applies {} ok, {} failed\n",
        verdict(applies_failed == 0 && applies_ok > 0),
        applies_ok,
        applies_failed
    ));
    verdicts.push_str(&format!(
        "- {}: engine restarts {engine_restarts}\n",
        verdict(engine_restarts == 0)
    ));
    for (key, (d, dr, met)) in &flat_ok {
        let floor = if *key == "rss_kib" {
            String::new()
        } else {
            format!(" (or ±{FLAT_FLOOR_COUNT})")
        };
        verdicts.push_str(&format!(
            "- {}: {key} within {FLAT_GOAL_PCT} %{floor} of its post-warm-up mean over {win:.0} s means (max deviation {d:.1} %, drift {dr:+.1} %)\n",
            verdict(*met)
        ));
    }
    if total.failed() > 0 {
        problems.push(format!("{} failed requests", total.failed()));
    }
    if applies_failed > 0 || applies_ok == 0 {
        problems.push(format!(
            "config applies: {applies_ok} ok, {applies_failed} failed"
        ));
    }
    if engine_restarts > 0 {
        problems.push(format!("the engine restarted {engine_restarts} times"));
    }
    if flaps == 0 {
        problems.push("the origin never flapped".into());
    }
    if m["deny_dropped"] <= 0.0 {
        problems.push("the deny rule dropped nothing of the flood".into());
    }
    let mut per_kind = String::from(
        "| client | ok | non-2xx | connection errors | timeouts | tool failures |\n|---|---|---|---|---|---|\n",
    );
    for k in KINDS {
        let c = counts.get(k.name()).copied().unwrap_or_default();
        per_kind.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} |\n",
            k.name(),
            c.ok,
            c.non2xx,
            c.conn_errors,
            c.timeouts,
            c.tool_failures
        ));
    }
    let mut over_time = String::from(
        "| t s | RSS KiB | sockets open | client conns | pool idle | upstream open | ok (cum.) | failed (cum.) | applies ok/failed | flaps | origin 2 | deny drops |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in &rows {
        let g = |k: &str| row.get(k).copied().unwrap_or(0.0);
        over_time.push_str(&format!(
            "| {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0}/{:.0} | {:.0} | {} | {:.0} |\n",
            g("t_s"),
            g("rss_kib"),
            g("sockets_open"),
            g("active_connections"),
            g("pool_idle"),
            g("upstream_open"),
            g("requests_ok"),
            g("requests_failed"),
            g("applies_ok"),
            g("applies_failed"),
            g("flaps"),
            if g("flap_origin_down") > 0.0 { "down" } else { "up" },
            g("xdp_drop_deny_packets"),
        ));
    }
    r.sections.push(("Verdict".into(), verdicts));
    r.sections
        .push(("Failed requests per client kind".into(), per_kind));
    r.sections
        .push((format!("After the warm-up ({warm:.0} s)"), flat_table));
    r.sections.push(("Over time".into(), over_time));
    if !errors.is_empty() {
        r.sections.push((
            "What failed (first 20)".into(),
            errors.iter().map(|e| format!("- {e}\n")).collect(),
        ));
    }
    let pts = |k: &str, scale: f64| -> Vec<(f64, f64)> {
        rows.iter()
            .filter_map(|r| Some((r["t_s"], r.get(k)? * scale)))
            .collect()
    };
    r.timeline = vec![
        Panel {
            title: "soak: engine RSS (MiB)".into(),
            y_desc: "MiB".into(),
            series: vec![("VmRSS".into(), pts("rss_kib", 1.0 / 1024.0))],
        },
        Panel {
            title: "soak: open sockets and client connections".into(),
            y_desc: "count".into(),
            series: vec![
                ("sockets open".into(), pts("sockets_open", 1.0)),
                ("client connections".into(), pts("active_connections", 1.0)),
            ],
        },
        Panel {
            title: "soak: upstream pool".into(),
            y_desc: "count".into(),
            series: vec![
                ("idle in pool".into(), pts("pool_idle", 1.0)),
                ("upstream sockets open".into(), pts("upstream_open", 1.0)),
            ],
        },
    ];
    r.columns = vec![
        col("requests_ok", "requests ok", 1.0),
        col("requests_failed", "failed", 1.0),
        col("applies_ok", "applies ok", 1.0),
        col("applies_failed", "applies failed", 1.0),
        col("flaps", "origin flaps", 1.0),
        col("rss_kib_mean", "RSS MiB (mean)", 1.0 / 1024.0),
        col("rss_kib_max_dev_pct", "RSS max dev %", 1.0),
        col("sockets_open_max_dev_pct", "sockets max dev %", 1.0),
        col("pool_idle_max_dev_pct", "pool idle max dev %", 1.0),
    ];
    r.notes.push("ferrogate alone (no contender comparison): the soak is about stability. `failed` = non-2xx + connection errors (wrk connect/read/write, h2load errored) + timeouts (wrk 5 s, h2load) + load-tool runs that could not run, over every client kind.".into());
    r.notes.push(format!("Each client kind runs its tool in chunks of one sample interval, back to back (a fresh process per chunk: keep-alive connections live for one chunk). The engine's gauges are read from its stats file every 500 ms and averaged per row; RSS is VmRSS of the `ferrogate engine` process (the supervisor's child). `sockets open` = TCP socket slots serving a connection (client and upstream, closing ones included; `stack_sockets_open`), `client conns` = `stack_active_connections`, `pool idle` = idle upstream connections in the worker's pool (`stack_upstream_idle`), `upstream open` = local ports held by upstream sockets (`stack_upstream_ports_in_use`). Flatness is judged after the warm-up ({warm:.0} s): max deviation from the mean (goal ≤ {FLAT_GOAL_PCT} %, or ±{FLAT_FLOOR_COUNT} for the gauges that count connections or sockets, which cannot resolve 5 % of a dozen), and drift = the last quarter's mean vs the first quarter's (a leak grows, a spike does not)."));
    r.notes.push(format!("Config applies: `ferrogate ctl apply` every {} s, alternating two files that differ in the body of `{VERSION_PATH}`; an apply counts as ok when ctl reports every worker switched and `{VERSION_PATH}` then answers the new body. Flapping origin: an nginx on {ORIGIN_IP}:{FLAP_PORT} (the pool's second endpoint beside the lab origin {ORIGIN_IP}:8080) stopped with SIGTERM (fast shutdown) and started again, by PID. Flood: SYNs from the denied {} at {} pps (`[filter]` deny rule, dropped by the XDP program).", so.apply_every.as_secs(), ctx.opts.src_cidr, so.flood_pps));
    let mut cmds = vec![format!(
        "{fg_cmd}\n# then every {} s: ferrogate ctl apply {} (and {} in turn) --socket {}",
        so.apply_every.as_secs(),
        cfg_b.display(),
        cfg_a.display(),
        sock.display()
    )];
    cmds.extend(commands.values().cloned());
    cmds.push(gen_cmd);
    cmds.push(
        flap.command(lab).get_args().fold(
            flap.command(lab)
                .get_program()
                .to_string_lossy()
                .into_owned(),
            |a, b| format!("{a} {}", b.to_string_lossy()),
        ),
    );
    r.timeseries = rows;
    let err = (!problems.is_empty()).then(|| problems.join("; "));
    r.samples.push(crate::scenarios::sample(
        "soak",
        "ferrogate",
        0,
        m,
        cmds,
        err,
    ));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(v: &[f64]) -> Vec<(f64, f64)> {
        v.iter()
            .enumerate()
            .map(|(i, x)| (i as f64 * 5.0, *x))
            .collect()
    }

    #[test]
    fn a_flat_series_meets_the_goal() {
        let f = flatness(&series(&[50.0, 100.0, 101.0, 99.0, 100.0, 100.0]), 5.0).unwrap();
        assert_eq!(f.samples, 5);
        assert!((f.mean - 100.0).abs() < 1e-9);
        assert!(f.max_dev_pct <= 1.0 + 1e-9, "{f:?}");
        assert!(f.drift_pct.abs() <= 1.0 + 1e-9, "{f:?}");
    }

    #[test]
    fn a_leak_shows_as_drift_and_deviation() {
        // +1 % per sample: the warm-up's 50 is dropped.
        let v: Vec<f64> = std::iter::once(50.0)
            .chain((0..40).map(|i| 100.0 * (1.0 + i as f64 * 0.01)))
            .collect();
        let f = flatness(&series(&v), 5.0).unwrap();
        assert!(f.max_dev_pct > FLAT_GOAL_PCT, "{f:?}");
        assert!(f.drift_pct > 25.0, "{f:?}");
    }

    #[test]
    fn a_spike_deviates_without_drift() {
        let mut v = vec![100.0; 20];
        v[10] = 130.0;
        let f = flatness(&series(&v), 0.0).unwrap();
        assert!(f.max_dev_pct > FLAT_GOAL_PCT, "{f:?}");
        assert!(f.drift_pct.abs() < 1e-9, "{f:?}");
    }

    #[test]
    fn zero_series_and_empty_series() {
        let f = flatness(&series(&[0.0, 0.0, 0.0]), 0.0).unwrap();
        assert_eq!((f.max_dev_pct, f.drift_pct), (0.0, 0.0));
        assert!(flatness(&series(&[1.0, 2.0]), 100.0).is_none());
    }

    #[test]
    fn window_means_average_a_periodic_disturbance_out() {
        // An origin down half of every 20 s: the per-sample series swings
        // ±20 %, its 20 s means do not.
        let v: Vec<(f64, f64)> = (1..=24)
            .map(|i| {
                let t = i as f64 * 5.0;
                (t, if (i - 1) % 4 < 2 { 120.0 } else { 80.0 })
            })
            .collect();
        assert!(flatness(&v, 0.0).unwrap().max_dev_pct > 15.0);
        let w = window_means(&v, 0.0, 120.0, 20.0);
        assert_eq!(w.len(), 6);
        assert_eq!(w[0], (20.0, 100.0));
        assert!(flatness(&w, 0.0).unwrap().max_dev_pct < 1e-9);
        // Only full windows.
        assert_eq!(window_means(&v, 10.0, 115.0, 20.0).len(), 5);
    }

    #[test]
    fn count_gauges_may_deviate_by_one_and_rss_by_five_percent() {
        // 0.74 of a mean of 11.7 pooled connections: 6.3 %, within one.
        assert!(flat_goal_met("pool_idle", 6.3, 11.7));
        assert!(!flat_goal_met("pool_idle", 10.0, 11.7));
        assert!(flat_goal_met("sockets_open", 4.9, 300.0));
        assert!(!flat_goal_met("sockets_open", 5.1, 300.0));
        assert!(!flat_goal_met("rss_kib", 6.3, 11.7));
    }

    #[test]
    fn the_judged_window_is_a_sixth_of_the_run_in_flap_periods() {
        assert_eq!(judge_window(60.0, 1795.0, 20.0), 280.0);
        assert_eq!(judge_window(24.0, 115.0, 20.0), 20.0);
        assert_eq!(judge_window(24.0, 30.0, 20.0), 20.0);
    }

    #[test]
    fn small_gauges_noise_passes_and_a_slow_leak_fails_on_judged_windows() {
        // A pool of 12 that swings by half with every 5 s load chunk, over
        // 30 minutes, with and without one connection leaked a minute.
        let (warm, to) = (60.0, 1795.0);
        let gauge = |leak_per_min: f64| -> Vec<(f64, f64)> {
            (1..=359)
                .map(|i| {
                    let t = i as f64 * 5.0;
                    let swing = [6.0, -6.0, 3.0, -3.0][i % 4];
                    (t, 12.0 + swing + leak_per_min * t / 60.0)
                })
                .collect()
        };
        let win = judge_window(warm, to, 20.0);
        let dev = |v: &[(f64, f64)]| {
            flatness(&window_means(v, warm, to, win), 0.0)
                .unwrap()
                .max_dev_pct
        };
        assert!(flatness(&gauge(0.0), warm).unwrap().max_dev_pct > 40.0);
        assert!(dev(&gauge(0.0)) <= FLAT_GOAL_PCT, "{}", dev(&gauge(0.0)));
        assert!(dev(&gauge(1.0)) > FLAT_GOAL_PCT, "{}", dev(&gauge(1.0)));
        // The one-connection floor does not hide a slow leak either.
        let mean = |v: &[(f64, f64)]| flatness(v, warm).unwrap().mean;
        let slow = gauge(0.1);
        assert!(!flat_goal_met("pool_idle", dev(&slow), mean(&slow)));
        assert!(flat_goal_met("pool_idle", dev(&gauge(0.0)), 12.0));
        // A tenth of that on a mean of ~12 + 1.5 still fails.
        assert!(dev(&gauge(0.1)) > FLAT_GOAL_PCT, "{}", dev(&gauge(0.1)));
    }

    #[test]
    fn warmup_is_a_fifth_at_most_a_minute() {
        assert_eq!(warmup_secs(Duration::from_secs(120)), 24.0);
        assert_eq!(warmup_secs(Duration::from_secs(1800)), 60.0);
    }

    #[test]
    fn counts_fail_on_any_kind_of_failure() {
        let mut c = Counts {
            ok: 10,
            ..Counts::default()
        };
        assert_eq!(c.failed(), 0);
        c.add(&Counts {
            timeouts: 1,
            tool_failures: 1,
            non2xx: 1,
            conn_errors: 1,
            ok: 0,
        });
        assert_eq!((c.ok, c.failed()), (10, 4));
    }
}
