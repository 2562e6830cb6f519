//! The `loss` scenario (issue #19): downloads of 64 KiB, 1 MiB and 10 MiB
//! (and one row of 1 MiB uploads) through ferrogate and through nginx over
//! an impaired client link — the lab's own netem (`ferrogate lab impair`):
//! random loss and a delay line on the client's side, changed per cell at
//! run time. ferrogate's userspace TCP (patched smoltcp: no SACK recovery)
//! against the kernel's (CUBIC, SACK, RACK-TLP) on the same link, in the
//! same run, one download at a time, alternating.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::contenders::{self, Contender, NginxTuning};
use crate::env::{LOAD_CPU, PROXY_CPU};
use crate::measure::{self, Metrics};
use crate::report::{Report, col};
use crate::scenarios::{Ctx, ratio, sample, settings};

/// Both run side by side on the edge, pinned to PROXY_CPU: ferrogate polls
/// adaptively (configs/lab.toml: it sleeps when idle) and only one
/// download is in flight at a time, so each has the core to itself.
const CONTENDERS: [Contender; 2] = [Contender::Ferrogate, Contender::Nginx];
/// The relay's queue per direction (frames). The default 4096 would drop
/// frames of a fast sender at 150 ms (a kernel sender's window holds more
/// than 4096 frames in flight on this link): drops that are not the
/// impairment asked for.
const RELAY_LIMIT: usize = 16384;

/// One transfer size of the matrix.
#[derive(Debug, Clone)]
pub struct Size {
    /// As given on the command line (`64k`, `1m`, `10m`).
    pub name: String,
    pub bytes: u64,
    /// Transfers per contender in a cell (fewer when the cell's budget
    /// runs out; at least one).
    pub reps: usize,
    /// curl `--max-time`: a transfer not done by then is a failure.
    pub max_time: Duration,
}

/// The upload row: one cell, one size.
#[derive(Debug, Clone)]
pub struct Upload {
    pub loss_pct: f64,
    pub rtt_ms: u64,
    pub size: Size,
}

#[derive(Debug, Clone)]
pub struct Opts {
    /// Loss in % on each direction of the client link.
    pub loss_pct: Vec<f64>,
    /// Round-trip time added on the client link (delay = RTT/2 each way).
    pub rtt_ms: Vec<u64>,
    pub sizes: Vec<Size>,
    /// Wall time for all sizes of one cell, both contenders.
    pub cell_budget: Duration,
    pub upload: Option<Upload>,
    /// ferrogate's `engine.tcp_buffer` (None: the lab config's default).
    pub fg_tcp_buffer: Option<usize>,
    /// ferrogate's `engine.tcp_timestamps = false`.
    pub fg_no_timestamps: bool,
    /// The congestion control of the edge (nginx) and client (curl: the
    /// upload's sender) namespaces (`keep`: the namespaces' default).
    pub kernel_cc: String,
}

impl Default for Opts {
    fn default() -> Self {
        let sizes = ["64k", "1m", "10m"]
            .iter()
            .map(|s| size(s, None, None).expect("built-in sizes parse"))
            .collect();
        Opts {
            loss_pct: vec![0.0, 0.5, 1.0, 3.0],
            rtt_ms: vec![10, 50, 150],
            sizes,
            cell_budget: Duration::from_secs(200),
            upload: Some(Upload {
                loss_pct: 1.0,
                rtt_ms: 50,
                size: size("1m", None, None).expect("1m parses"),
            }),
            fg_tcp_buffer: None,
            fg_no_timestamps: false,
            kernel_cc: "cubic".into(),
        }
    }
}

/// `64k`, `1m`, `10m`, `512` (bytes; k and m are binary).
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim().to_ascii_lowercase();
    let (num, mult) = match t.strip_suffix('k') {
        Some(n) => (n, 1u64 << 10),
        None => match t.strip_suffix('m') {
            Some(n) => (n, 1 << 20),
            None => (t.as_str(), 1),
        },
    };
    let n: u64 = num
        .parse()
        .ok()
        .filter(|&n| n > 0)
        .with_context(|| format!("size {s:?}: expected e.g. 64k, 1m, 10m"))?;
    Ok(n * mult)
}

/// A size with its repetitions and time limit: given, or by size
/// (≤ 64 KiB: 30 and 15 s, ≤ 1 MiB: 8 and 30 s, larger: 3 and 60 s).
pub fn size(name: &str, reps: Option<usize>, max_time_s: Option<f64>) -> Result<Size> {
    let bytes = parse_size(name)?;
    let (r, t) = if bytes <= 64 << 10 {
        (30, 15.0)
    } else if bytes <= 1 << 20 {
        (8, 30.0)
    } else {
        (3, 60.0)
    };
    Ok(Size {
        name: name.trim().to_ascii_lowercase(),
        bytes,
        reps: reps.unwrap_or(r).max(1),
        max_time: Duration::from_secs_f64(max_time_s.unwrap_or(t).max(0.5)),
    })
}

/// `SIZE=VALUE,…` (e.g. `64k=30,1m=8`) as (bytes, value).
pub fn per_size(spec: &str) -> Result<Vec<(u64, f64)>> {
    spec.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p
                .split_once('=')
                .with_context(|| format!("{p:?}: expected SIZE=VALUE, e.g. 64k=30"))?;
            let v: f64 = v
                .trim()
                .parse()
                .with_context(|| format!("{p:?}: {v:?} is not a number"))?;
            Ok((parse_size(k)?, v))
        })
        .collect()
}

/// The value `spec` gives for `bytes`, if any.
pub fn lookup(spec: &[(u64, f64)], bytes: u64) -> Option<f64> {
    spec.iter().find(|(b, _)| *b == bytes).map(|(_, v)| *v)
}

fn pct(p: f64) -> String {
    format!("{p}%")
}

fn cell_name(loss: f64, rtt: u64) -> String {
    format!("loss {} rtt {rtt}ms", pct(loss))
}

/// Sets the client link: `loss` on each direction, RTT/2 delay each way
/// (`lab impair` answers once the relay applies it).
fn impair(ctx: &Ctx, loss: f64, rtt_ms: u64) -> Result<String> {
    let bin = contenders::ferrogate_bin()?;
    // Microseconds: an odd RTT in ms halves exactly.
    let set = format!(
        "loss={},delay={}us,limit={RELAY_LIMIT}",
        pct(loss),
        rtt_ms * 500
    );
    let mut c = Command::new(bin);
    c.args([
        "lab",
        "impair",
        "--prefix",
        &ctx.lab.prefix,
        "--side",
        "client",
        "--clear",
        "--set",
        &set,
    ]);
    let cmd = measure::cmdline(&c);
    crate::env::run(&mut c).with_context(|| format!("setting the impairment: {cmd}"))?;
    // Frames of the previous cell still in the delay line drain first.
    std::thread::sleep(Duration::from_millis(300));
    Ok(cmd)
}

/// The relay's counters (`impair-client.stats`, written every 250 ms).
fn relay_stats(ctx: &Ctx) -> std::collections::HashMap<String, u64> {
    crate::env::read_stats(&ctx.lab.state_dir().join("impair-client.stats"))
}

/// Kernel TCP counters of a process's network namespace (the edge: only
/// nginx uses kernel TCP there), from /proc/PID/net/{snmp,netstat}.
fn kernel_tcp(pid: Option<i32>) -> std::collections::HashMap<String, u64> {
    let mut out = std::collections::HashMap::new();
    let Some(pid) = pid else { return out };
    for f in ["snmp", "netstat"] {
        let text = std::fs::read_to_string(format!("/proc/{pid}/net/{f}")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        // Pairs of lines: `Tcp: names…` then `Tcp: values…`.
        for w in lines.chunks(2) {
            let [names, values] = w else { continue };
            let (Some((p, n)), Some((_, v))) = (names.split_once(':'), values.split_once(':'))
            else {
                continue;
            };
            if p != "Tcp" && p != "TcpExt" {
                continue;
            }
            for (k, v) in n.split_whitespace().zip(v.split_whitespace()) {
                if let Ok(v) = v.parse() {
                    out.insert(k.to_string(), v);
                }
            }
        }
    }
    out
}

/// What nginx's kernel did for loss recovery (names of /proc/net/netstat).
const KERNEL_KEYS: [&str; 7] = [
    "RetransSegs",
    "TCPTimeouts",
    "TCPLossProbes",
    "TCPSackRecovery",
    "TCPFastRetrans",
    "TCPSlowStartRetrans",
    "TCPSpuriousRTOs",
];

/// ferrogate's own TCP counters (its stats file, `stack_` + the names of
/// `NetStats::fields`): (key, label). Retransmissions are harvested when a
/// connection's socket is recycled, so they lag the transfer by its close
/// handshake (see `FG_SETTLE`).
const FG_COUNTERS: [(&str, &str); 5] = [
    ("stack_tcp_fast_retransmits", "fast retransmits"),
    ("stack_tcp_retransmit_timeouts", "RTOs"),
    ("stack_tcp_tx_buffers_grown", "tx buffers grown"),
    ("stack_tcp_rx_buffers_grown", "rx buffers grown"),
    ("stack_tcp_buffer_growth_refused", "growth refused"),
];
/// A gauge: bytes grown buffers hold now.
const FG_GROWN_BYTES: &str = "stack_tcp_buffer_grown_bytes";
/// Wait after a cell's last transfer before reading the counters: the
/// last connections' close handshakes (a lost FIN waits for an RTO) and
/// the stats files' 250 ms period. What still lags lands in the next
/// cell: each cell's baseline is the previous cell's reading.
const FG_SETTLE: Duration = Duration::from_millis(1500);

/// ferrogate's TCP counters over a cell: `before` and `after` are its
/// stats files; None for a key missing from either (not read).
fn fg_tcp(
    before: &std::collections::HashMap<String, u64>,
    after: &std::collections::HashMap<String, u64>,
) -> Vec<(&'static str, &'static str, Option<u64>)> {
    let mut out: Vec<_> = FG_COUNTERS
        .iter()
        .map(|&(k, label)| {
            let v = match (before.get(k), after.get(k)) {
                (Some(a), Some(b)) => Some(b.saturating_sub(*a)),
                _ => None,
            };
            (k, label, v)
        })
        .collect();
    out.push((
        FG_GROWN_BYTES,
        "grown bytes now",
        after.get(FG_GROWN_BYTES).copied(),
    ));
    out
}

/// The report's words for `fg_tcp`'s values; `transfers`: ferrogate's
/// transfers in the cell.
fn fg_tcp_line(v: &[(&str, &str, Option<u64>)], transfers: usize) -> String {
    let n = |x: Option<u64>| x.map_or("not read".to_string(), |x| x.to_string());
    v.iter()
        .map(|&(k, label, x)| match (k, x) {
            ("stack_tcp_fast_retransmits", Some(x)) => format!(
                "{label} {x} ({:.1} per transfer)",
                x as f64 / transfers.max(1) as f64
            ),
            _ => format!("{label} {}", n(x)),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// Not done within `--max-time` (curl exit 28).
    Timeout,
    /// Ended without error but with fewer bytes (or curl exit 18).
    Short,
    /// Refused, reset, empty reply: any other curl error.
    ConnError,
    /// A complete response that was not 200: a proxy error, not TCP.
    BadStatus,
}

/// One transfer.
#[derive(Debug, Clone)]
struct Xfer {
    outcome: Outcome,
    exit: i32,
    code: u32,
    /// Body bytes received (download) or sent (upload).
    bytes: u64,
    t_connect: f64,
    t_ttfb: f64,
    t_total: f64,
    /// Frames the relay got in the data's direction (from the proxy for a
    /// download, from the client for an upload) and passed on.
    frames_in: u64,
    frames_out: u64,
}

/// `time_connect time_starttransfer time_total size http_code`.
fn parse_w(out: &str) -> Option<(f64, f64, f64, u64, u32)> {
    let mut f = out.split_whitespace();
    Some((
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
        f.next()?.parse().ok()?,
    ))
}

fn classify(exit: i32, code: u32, bytes: u64, want: u64, body_ok: bool) -> Outcome {
    if code != 200 && code != 0 {
        Outcome::BadStatus
    } else if exit == 28 {
        Outcome::Timeout
    } else if exit == 0 && code == 200 && bytes == want && body_ok {
        Outcome::Ok
    } else if exit == 0 || exit == 18 {
        Outcome::Short
    } else {
        Outcome::ConnError
    }
}

/// Relay-side frame counters of the client link: (from the bridge towards
/// the client, to the client, from the client, towards the bridge).
fn link_frames(ctx: &Ctx) -> [u64; 4] {
    let (rly_rx, _, rly_tx) = ctx.lab.link_stats("wire", "c-rly");
    let (port_rx, _, port_tx) = ctx.lab.link_stats("wire", "c-port");
    [rly_rx, port_tx, port_rx, rly_tx]
}

/// One curl from the client namespace (pinned to LOAD_CPU): a download of
/// `/files/loss-<size>` or a POST of the upload file to `/upload`.
fn transfer(ctx: &Ctx, who: Contender, sz: &Size, upload: bool) -> Result<(Xfer, String)> {
    let dir = ctx.lab.bench_dir();
    let t = format!("{:.1}", sz.max_time.as_secs_f64());
    let w = if upload {
        "%{time_connect} %{time_starttransfer} %{time_total} %{size_upload} %{http_code}"
    } else {
        "%{time_connect} %{time_starttransfer} %{time_total} %{size_download} %{http_code}"
    };
    let resp = dir.join("loss-upload-response");
    let body = dir.join(format!("loss-upload-{}", sz.name));
    let (resp_s, body_s) = (resp.display().to_string(), format!("@{}", body.display()));
    let mut argv = vec!["curl", "-s", "-w", w, "--max-time", t.as_str()];
    let url;
    if upload {
        let _ = std::fs::remove_file(&resp);
        url = format!("http://{}/upload", who.addr());
        // `Expect:` off: no 100-continue round trip before the body.
        argv.extend([
            "-o",
            resp_s.as_str(),
            "-H",
            "Expect:",
            "--data-binary",
            body_s.as_str(),
        ]);
    } else {
        url = format!("http://{}/files/loss-{}", who.addr(), sz.name);
        argv.extend(["-o", "/dev/null"]);
    }
    argv.push(url.as_str());
    let mut c = ctx.lab.pinned("client", LOAD_CPU, &argv);
    let cmd = measure::cmdline(&c);
    let f0 = link_frames(ctx);
    let t0 = Instant::now();
    let o = c
        .stdin(std::process::Stdio::null())
        .output()
        .with_context(|| cmd.clone())?;
    let wall = t0.elapsed().as_secs_f64();
    let f1 = link_frames(ctx);
    let d = |i: usize| f1[i].saturating_sub(f0[i]);
    let (frames_in, frames_out) = if upload { (d(2), d(3)) } else { (d(0), d(1)) };
    let exit = o.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&o.stdout);
    // curl prints -w also after an error; without it, the wall time.
    let (t_connect, t_ttfb, t_total, bytes, code) =
        parse_w(&stdout).unwrap_or((f64::NAN, f64::NAN, wall, 0, 0));
    let body_ok = !upload
        || std::fs::read_to_string(&resp).unwrap_or_default() == format!("uploaded {}\n", sz.bytes);
    let outcome = classify(exit, code, bytes, sz.bytes, body_ok);
    Ok((
        Xfer {
            outcome,
            exit,
            code,
            bytes,
            t_connect,
            t_ttfb,
            t_total,
            frames_in,
            frames_out,
        },
        cmd,
    ))
}

/// Nearest-rank percentile of ascending `v`.
fn pctl(v: &[f64], q: f64) -> f64 {
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    v[i]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    crate::report::stat(v).map_or(f64::NAN, |s| s.median)
}

/// A contender's transfers of one size in one cell, as metrics.
fn summarize(x: &[Xfer], sz: &Size, cut: bool) -> Metrics {
    let mut m = Metrics::new();
    let n = x.len() as f64;
    let count = |o: Outcome| x.iter().filter(|t| t.outcome == o).count() as f64;
    m.insert("attempts".into(), n);
    m.insert("ok".into(), count(Outcome::Ok));
    m.insert("failures".into(), n - count(Outcome::Ok));
    m.insert("timeouts".into(), count(Outcome::Timeout));
    m.insert("short".into(), count(Outcome::Short));
    m.insert("conn_errors".into(), count(Outcome::ConnError));
    m.insert("bad_status".into(), count(Outcome::BadStatus));
    m.insert("budget_cut".into(), if cut { 1.0 } else { 0.0 });
    m.insert("max_time_s".into(), sz.max_time.as_secs_f64());
    // Goodput of every attempt: a failed one counts with the bytes it got
    // in the time it took (a timeout: partial bytes over --max-time).
    let mut gp: Vec<f64> = x
        .iter()
        .map(|t| t.bytes as f64 * 8.0 / t.t_total.max(1e-6) / 1e6)
        .collect();
    m.insert("goodput_mbps".into(), median(&mut gp));
    // Aggregate goodput: all bytes over all the time the transfers took.
    // Under loss the times are bimodal (a transfer whose first loss comes
    // early takes several times as long), and a median of 30-40 jumps
    // between the modes from run to run; the aggregate is the throughput
    // a user population sees and moves with both modes.
    let (bytes, secs) = x
        .iter()
        .fold((0.0, 0.0), |(b, s), t| (b + t.bytes as f64, s + t.t_total));
    if secs > 0.0 {
        m.insert("goodput_agg_mbps".into(), bytes * 8.0 / secs / 1e6);
    }
    // The spread: completion times at p10 and p90 of the successes.
    let mut ok_t: Vec<f64> = x
        .iter()
        .filter(|t| t.outcome == Outcome::Ok)
        .map(|t| t.t_total)
        .collect();
    if !ok_t.is_empty() {
        ok_t.sort_by(|a, b| a.total_cmp(b));
        m.insert("p10_ok_s".into(), pctl(&ok_t, 0.1));
        m.insert("p90_ok_s".into(), pctl(&ok_t, 0.9));
    }
    // Completion times: a failure never completed, so it sorts last; a
    // percentile that lands on one is reported as --max-time (a lower
    // bound) and flagged.
    let mut ct: Vec<f64> = x
        .iter()
        .map(|t| {
            if t.outcome == Outcome::Ok {
                t.t_total
            } else {
                f64::INFINITY
            }
        })
        .collect();
    ct.sort_by(|a, b| a.total_cmp(b));
    for (k, q) in [("p50_s", 0.5), ("p99_s", 0.99)] {
        let v = pctl(&ct, q);
        let censored = !v.is_finite();
        m.insert(
            k.into(),
            if censored {
                sz.max_time.as_secs_f64()
            } else {
                v
            },
        );
        m.insert(format!("{k}_is_failure"), if censored { 1.0 } else { 0.0 });
    }
    let ok: Vec<&Xfer> = x.iter().filter(|t| t.outcome == Outcome::Ok).collect();
    if !ok.is_empty() {
        let mut v: Vec<f64> = ok.iter().map(|t| t.t_ttfb).collect();
        m.insert("ttfb_p50_s".into(), median(&mut v));
        let mut v: Vec<f64> = ok.iter().map(|t| t.t_connect).collect();
        m.insert("connect_p50_s".into(), median(&mut v));
        let v: Vec<f64> = ok.iter().map(|t| t.t_total).collect();
        m.insert("max_ok_s".into(), v.iter().cloned().fold(0.0, f64::max));
        m.insert("mean_s".into(), v.iter().sum::<f64>() / v.len() as f64);
        let mut v: Vec<f64> = ok.iter().map(|t| t.frames_in as f64).collect();
        m.insert("frames_per_xfer".into(), median(&mut v));
        let mut v: Vec<f64> = ok
            .iter()
            .map(|t| t.frames_in.saturating_sub(t.frames_out) as f64)
            .collect();
        m.insert("lost_per_xfer".into(), median(&mut v));
    }
    m
}

/// A row of the compact table: cell, size, and both contenders' metrics.
struct Row {
    what: String,
    loss: f64,
    rtt: u64,
    size: String,
    m: [Metrics; 2],
}

/// Runs the transfers of one size in one cell: pairs of one transfer per
/// contender (ferrogate first on even repetitions, nginx on odd ones),
/// until `reps` pairs or until the next pair would likely end past
/// `budget` (one pair always runs). Every transfer is also a raw row.
fn run_size(
    ctx: &Ctx,
    (loss, rtt): (f64, u64),
    sz: &Size,
    upload: bool,
    budget: Duration,
    raw: &mut Vec<Metrics>,
) -> Result<([Vec<Xfer>; 2], bool, Vec<String>)> {
    let start = Instant::now();
    let mut last_pair = Duration::ZERO;
    let mut out: [Vec<Xfer>; 2] = [vec![], vec![]];
    let mut cmds = vec![String::new(), String::new()];
    let mut cut = false;
    for rep in 0..sz.reps {
        if rep > 0 && start.elapsed() + last_pair > budget {
            cut = true;
            break;
        }
        let t0 = Instant::now();
        let order = if rep % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let who = CONTENDERS[i];
            let (x, cmd) = transfer(ctx, who, sz, upload)?;
            cmds[i] = cmd;
            let mut r = Metrics::new();
            for (k, v) in [
                ("loss_pct", loss),
                ("rtt_ms", rtt as f64),
                ("bytes_expected", sz.bytes as f64),
                ("upload", if upload { 1.0 } else { 0.0 }),
                ("contender", i as f64),
                ("rep", rep as f64),
                ("ok", if x.outcome == Outcome::Ok { 1.0 } else { 0.0 }),
                ("curl_exit", x.exit as f64),
                ("http_code", x.code as f64),
                ("bytes", x.bytes as f64),
                ("time_connect_s", x.t_connect),
                ("time_starttransfer_s", x.t_ttfb),
                ("time_total_s", x.t_total),
                ("frames_in", x.frames_in as f64),
                ("frames_out", x.frames_out as f64),
            ] {
                // NaN (no curl output) has no JSON form: leave it out.
                if v.is_finite() {
                    r.insert(k.into(), v);
                }
            }
            raw.push(r);
            if x.outcome != Outcome::Ok {
                eprintln!(
                    "  {} {} {}: {:?} (curl exit {}, status {}, {} of {} bytes in {:.2} s)",
                    cell_name(loss, rtt),
                    sz.name,
                    who.name(),
                    x.outcome,
                    x.exit,
                    x.code,
                    x.bytes,
                    sz.bytes,
                    x.t_total
                );
            }
            out[i].push(x);
        }
        last_pair = t0.elapsed();
    }
    Ok((out, cut, cmds))
}

/// Random bytes (incompressible) of `n` bytes at `path`.
fn random_file(path: &std::path::Path, n: u64) -> Result<()> {
    use std::io::Read;
    let mut buf = vec![0u8; n as usize];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    std::fs::write(path, buf).with_context(|| format!("writing {}", path.display()))
}

/// ferrogate's config: configs/lab.toml (one queue, PROXY_CPU), with
/// `engine.tcp_buffer` when asked.
fn ferrogate_cfg(ctx: &Ctx) -> Result<std::path::PathBuf> {
    let p = contenders::ferrogate_config_tuned(
        &ctx.lab,
        1,
        &PROXY_CPU.to_string(),
        "",
        "ferrogate-loss.toml",
    )?;
    let mut engine_keys = String::new();
    if let Some(b) = ctx.opts.loss.fg_tcp_buffer {
        engine_keys += &format!("tcp_buffer = {b}\n");
    }
    if ctx.opts.loss.fg_no_timestamps {
        engine_keys += "tcp_timestamps = false\n";
    }
    if !engine_keys.is_empty() {
        let text = std::fs::read_to_string(&p)?;
        if !text.contains("[engine]\n") {
            bail!("{}: no [engine] table", p.display());
        }
        std::fs::write(
            &p,
            text.replacen("[engine]\n", &format!("[engine]\n{engine_keys}"), 1),
        )?;
    }
    Ok(p)
}

const ALLOWED_CC: &str = "/proc/sys/net/ipv4/tcp_allowed_congestion_control";

/// Puts back the host's list of congestion controls unprivileged sockets
/// and namespaces may pick.
struct AllowedCc(Option<String>);

impl Drop for AllowedCc {
    fn drop(&mut self) {
        if let Some(old) = self.0.take() {
            let _ = std::fs::write(ALLOWED_CC, old.trim());
        }
    }
}

/// Sets the congestion control of `role`'s namespace to `cc`. A namespace
/// other than the host's may only pick one of the host's "allowed" list
/// (EPERM otherwise, even as root), and this VM's list is `reno bbr`
/// (its default is bbr, which every new namespace inherits): `cc` joins
/// the list until the returned guard drops.
fn kernel_cc(ctx: &Ctx, role: &str, cc: &str) -> Result<AllowedCc> {
    let key = "net.ipv4.tcp_congestion_control";
    let now = ctx.lab.exec(role, &["sysctl", "-n", key])?;
    if now.trim() == cc {
        return Ok(AllowedCc(None));
    }
    let old = std::fs::read_to_string(ALLOWED_CC).context(ALLOWED_CC)?;
    let mut guard = AllowedCc(None);
    if !old.split_whitespace().any(|c| c == cc) {
        std::fs::write(ALLOWED_CC, format!("{} {cc}", old.trim()))
            .with_context(|| format!("adding {cc} to {ALLOWED_CC}"))?;
        guard = AllowedCc(Some(old));
    }
    ctx.lab
        .exec(role, &["sysctl", "-qw", &format!("{key}={cc}")])
        .with_context(|| format!("{key}={cc} in the {role} namespace (was {})", now.trim()))?;
    Ok(guard)
}

fn sysctls(ctx: &Ctx, role: &str) -> String {
    let keys = [
        "net.ipv4.tcp_congestion_control",
        "net.ipv4.tcp_sack",
        "net.ipv4.tcp_timestamps",
        "net.ipv4.tcp_recovery",
        "net.ipv4.tcp_early_retrans",
        "net.ipv4.tcp_rmem",
        "net.ipv4.tcp_wmem",
    ];
    keys.iter()
        .map(|k| {
            let v = ctx
                .lab
                .exec(role, &["sysctl", "-n", k])
                .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
                .unwrap_or_else(|e| format!("? ({e:#})"));
            format!("{}={v}", k.trim_start_matches("net.ipv4."))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn f2(x: Option<&f64>) -> String {
    match x {
        Some(v) if v.is_finite() => {
            if v.abs() >= 100.0 {
                format!("{v:.0}")
            } else if v.abs() >= 10.0 {
                format!("{v:.1}")
            } else {
                format!("{v:.2}")
            }
        }
        _ => "–".into(),
    }
}

/// A completion-time percentile; `>T` when it is a failure.
fn ptime(m: &Metrics, k: &str) -> String {
    if m.get(&format!("{k}_is_failure")).copied() == Some(1.0) {
        format!(">{} (fail)", f2(m.get("max_time_s")))
    } else {
        f2(m.get(k))
    }
}

fn ratio_of(a: Option<&f64>, b: Option<&f64>) -> Option<f64> {
    let (a, b) = (*a?, *b?);
    (b > 0.0 && a.is_finite() && b.is_finite()).then(|| a / b)
}

/// The table the issue asks for: every cell and size on one line, both
/// contenders, the ratios and whether the goals are met.
fn compact_table(rows: &[Row]) -> (String, Vec<String>) {
    let mut s = String::from(
        "| transfer | loss/dir | RTT ms | size | aggregate goodput Mbit/s ferrogate | nginx | **aggregate fg/nginx** | median goodput fg/nginx | p10–p90 s ferrogate | nginx | p50 s ferrogate | nginx | p99 s ferrogate | nginx | **p99 fg/nginx** | failed ferrogate | nginx | frames to receiver/xfer fg | nginx |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut misses = Vec::new();
    for r in rows {
        let [f, n] = &r.m;
        // The goal is judged on the aggregate (see `summarize`); the
        // median's ratio is shown beside it.
        let gr = ratio_of(f.get("goodput_agg_mbps"), n.get("goodput_agg_mbps"));
        let median_ratio = ratio_of(f.get("goodput_mbps"), n.get("goodput_mbps"));
        let spread = |m: &Metrics| format!("{}–{}", f2(m.get("p10_ok_s")), f2(m.get("p90_ok_s")));
        let censored = |m: &Metrics| m.get("p99_s_is_failure").copied() == Some(1.0);
        let pr = if censored(f) || censored(n) {
            None
        } else {
            ratio_of(f.get("p99_s"), n.get("p99_s"))
        };
        let name = format!("{} {} {}ms {}", r.what, pct(r.loss), r.rtt, r.size);
        match gr {
            Some(g) if g < 0.9 => {
                misses.push(format!("{name}: goodput {g:.2}x nginx (goal ≥ 0.9x)"))
            }
            None => misses.push(format!("{name}: no goodput ratio")),
            _ => {}
        }
        if r.what == "download" && r.loss == 1.0 && r.rtt == 50 && r.size == "64k" {
            match pr {
                Some(p) if p > 1.2 => {
                    misses.push(format!("{name}: p99 {p:.2}x nginx (goal ≤ 1.2x)"))
                }
                None => misses.push(format!(
                    "{name}: p99 not comparable (a failure at the p99 rank)"
                )),
                _ => {}
            }
        }
        let fail = |m: &Metrics| {
            format!(
                "{}/{}",
                m.get("failures").copied().unwrap_or(0.0),
                m.get("attempts").copied().unwrap_or(0.0)
            )
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} | {} | {} | {} | **{}** | {} | {} | {} | {} |\n",
            r.what,
            pct(r.loss),
            r.rtt,
            r.size,
            f2(f.get("goodput_agg_mbps")),
            f2(n.get("goodput_agg_mbps")),
            gr.map_or("–".into(), |g| format!("{g:.2}")),
            median_ratio.map_or("–".into(), |g| format!("{g:.2}")),
            spread(f),
            spread(n),
            ptime(f, "p50_s"),
            ptime(n, "p50_s"),
            ptime(f, "p99_s"),
            ptime(n, "p99_s"),
            pr.map_or("–".into(), |p| format!("{p:.2}")),
            fail(f),
            fail(n),
            f2(f.get("frames_per_xfer")),
            f2(n.get("frames_per_xfer")),
        ));
    }
    (s, misses)
}

pub fn scenario(ctx: &Ctx) -> Result<Report> {
    let o = &ctx.opts.loss;
    let lab = &ctx.lab;
    let mut r = Report::new("loss", ctx.meta.clone());
    settings(ctx, &mut r);
    r.settings.remove("seconds per measurement");
    r.settings.remove("warm-up seconds per contender turn");
    r.settings.remove("client connections");
    r.settings.remove("rounds");
    let sizes_desc: Vec<String> = o
        .sizes
        .iter()
        .map(|s| {
            format!(
                "{} ({} B, {} reps, --max-time {} s)",
                s.name,
                s.bytes,
                s.reps,
                s.max_time.as_secs_f64()
            )
        })
        .collect();
    for (k, v) in [
        (
            "loss per direction %",
            o.loss_pct
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        (
            "RTT ms (delay RTT/2 each way)",
            o.rtt_ms
                .iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("sizes", sizes_desc.join("; ")),
        ("cell budget s", o.cell_budget.as_secs_f64().to_string()),
        (
            "upload row",
            o.upload.as_ref().map_or("none".into(), |u| {
                format!(
                    "{} at loss {} rtt {} ms, {} reps, --max-time {} s",
                    u.size.name,
                    pct(u.loss_pct),
                    u.rtt_ms,
                    u.size.reps,
                    u.size.max_time.as_secs_f64()
                )
            }),
        ),
        (
            "relay queue limit (frames per direction)",
            RELAY_LIMIT.to_string(),
        ),
        (
            "ferrogate engine.tcp_buffer",
            o.fg_tcp_buffer
                .map_or("65536 (configs/lab.toml: the default)".into(), |b| {
                    b.to_string()
                }),
        ),
        (
            "ferrogate engine.tcp_timestamps",
            if o.fg_no_timestamps {
                "false"
            } else {
                "true (the default)"
            }
            .into(),
        ),
        (
            "curl",
            crate::env::probe(&["curl", "--version"])
                .lines()
                .next()
                .unwrap_or("")
                .to_string(),
        ),
    ] {
        r.settings.insert(k.into(), v);
    }
    r.columns = vec![
        col("goodput_agg_mbps", "aggregate goodput Mbit/s", 1.0),
        col("goodput_mbps", "median goodput Mbit/s", 1.0),
        col("p50_s", "p50 s", 1.0),
        col("p99_s", "p99 s", 1.0),
        col("ttfb_p50_s", "TTFB p50 s", 1.0),
        col("failures", "failed", 1.0),
        col("attempts", "transfers", 1.0),
        col("frames_per_xfer", "frames to receiver/xfer", 1.0),
        col("lost_per_xfer", "dropped by relay/xfer", 1.0),
    ];
    r.ratios = vec![
        ratio("goodput_agg_mbps", "aggregate goodput vs nginx", "nginx"),
        ratio("goodput_mbps", "median goodput vs nginx", "nginx"),
        ratio("p99_s", "p99 vs nginx", "nginx"),
    ];
    r.plots = vec![(
        "goodput_agg_mbps".into(),
        "loss: aggregate goodput Mbit/s per cell and size".into(),
    )];
    r.notes.push(format!(
        "Impairment: the lab's relay on the client link (`ferrogate lab impair --side client --clear --set loss=P%,delay=D,limit={RELAY_LIMIT}`, README \"Impaired links\"): independent random loss P on EACH direction (data frames and ACKs alike), delay D = RTT/2 on each direction, so RTT = 2·D on top of the lab's ~0.1 ms. \"loss P %\" therefore means P % of the data frames lost (and P % of the ACKs).",
    ));
    r.notes.push("Contenders: ferrogate (configs/lab.toml, VIP 10.77.0.10:80) and nginx 1 worker (kernel TCP of the edge namespace, 10.77.0.1:80), both up side by side on CPU 1 for the whole run (ferrogate polls adaptively: it sleeps when idle; nginx's frames pass ferrogate's XDP program); both proxy to the same origin over an unimpaired link. Transfers run one at a time, alternating ferrogate / nginx (ferrogate first on even repetitions, nginx first on odd ones), each a fresh `curl` (new TCP connection) from the client namespace on CPU 0.".into());
    r.notes.push("Per cell and size: up to N transfers per contender; a new pair starts only while the cell's remaining budget (split evenly over the sizes still to run; what a size leaves unused goes to the next) covers the last pair's duration, so slow cells run fewer (`transfers`). aggregate goodput = all bytes over all transfer time (the goal is judged on it: transfer times under loss are bimodal, and a median over a few dozen transfers jumps between the modes from run to run); median goodput = median over all transfers of bytes/time_total (a failed transfer counts with the bytes it got: a timeout's partial body over --max-time); p10–p90 = the successes' completion times. p50/p99 = nearest-rank completion times (curl time_total: connect + request + whole body) over all transfers, a failure sorting last: when the rank lands on a failure the table shows `>T (fail)` (T = --max-time, a lower bound) and the ratio is left out. With 30 transfers p99 is the slowest one. failed = timeouts (curl exit 28) + short bodies + connection errors; a non-200 status is an error of the run. frames to receiver/xfer = frames the relay got in the data's direction per successful transfer (retransmissions included; the relay's counters of `c-rly`/`c-port`); dropped by relay = those it did not pass on.".into());
    r.notes.push(format!("nginx's (and the client's, the sender of uploads) congestion control: `{}` (settings `kernel TCP` below). This VM's kernel defaults to bbr and every new namespace inherits it (so the other scenarios' nginx runs BBR); a namespace may only pick a congestion control of the host's `tcp_allowed_congestion_control` (`reno bbr` here), so the bench adds the one asked for to that list for the run and puts the list back after (`--kernel-cc keep`: no change).", o.kernel_cc));
    r.notes.push(format!("Kernel TCP (nginx's side) counters per cell come from the edge namespace's /proc/net/{{snmp,netstat}} (only nginx uses kernel TCP there). ferrogate's own per cell come from its stats file (`stack_tcp_fast_retransmits`: segments resent by loss recovery, fast retransmit and the SACK holes after it; `stack_tcp_retransmit_timeouts`: RTOs; `stack_tcp_tx_buffers_grown` / `stack_tcp_rx_buffers_grown` / `stack_tcp_buffer_growth_refused`: transmit and receive buffers grown to the path, and growths `tcp_buffer_budget` refused; deltas over the cell) and `stack_tcp_buffer_grown_bytes` (a gauge: bytes grown buffers hold at the cell's end). They cover both sides of the proxy (the upstream link is not impaired) and the retransmissions are counted when a connection's socket is recycled (after its close handshake): the counters are read {:.1} s after the cell's last transfer, and what still lags then counts in the next cell (each cell's baseline is the previous cell's reading). \"per transfer\" divides by ferrogate's transfers in the cell, all sizes together. Also in the JSON: a `timeseries` row per cell with `cell_counters` = 1.", FG_SETTLE.as_secs_f64()));

    // Bodies: random (incompressible) files in the origin's www dir.
    let www = lab.state_dir().join("www");
    for s in &o.sizes {
        random_file(&www.join(format!("loss-{}", s.name)), s.bytes)?;
    }
    if let Some(u) = &o.upload {
        random_file(
            &lab.bench_dir().join(format!("loss-upload-{}", u.size.name)),
            u.size.bytes,
        )?;
    }
    // The kernel baseline as the issue states it: CUBIC, SACK on.
    // The client too: it is the sender of the upload row.
    let _allowed = match o.kernel_cc.as_str() {
        "keep" => vec![],
        cc => vec![kernel_cc(ctx, "edge", cc)?, kernel_cc(ctx, "client", cc)?],
    };
    let sack = lab.exec("edge", &["sysctl", "-n", "net.ipv4.tcp_sack"])?;
    if sack.trim() != "1" {
        lab.exec("edge", &["sysctl", "-qw", "net.ipv4.tcp_sack=1"])?;
    }
    r.settings
        .insert("edge (nginx) kernel TCP".into(), sysctls(ctx, "edge"));
    r.settings
        .insert("client (curl) kernel TCP".into(), sysctls(ctx, "client"));

    // Both contenders up for the whole run (the check in `start` runs on
    // the unimpaired link the lab came up with).
    let cpu = PROXY_CPU.to_string();
    let fg_cfg = ferrogate_cfg(ctx)?;
    let mut fg = contenders::start(lab, Contender::Ferrogate, Some(&fg_cfg))?;
    let tuning = NginxTuning {
        // 1 MiB is nginx's default limit: room for other upload sizes.
        http_extra: "  client_max_body_size 1g;".into(),
        ..NginxTuning::default()
    };
    let mut ng = contenders::start_tuned(lab, Contender::Nginx, None, 1, &cpu, &tuning)?;
    let starts = [fg.command.clone(), ng.command.clone()];
    let nginx_pid = ng.proc.as_ref().and_then(|p| p.pid());

    let mut cells: Vec<(f64, u64, Vec<Size>, bool)> = vec![];
    for &rtt in &o.rtt_ms {
        for &loss in &o.loss_pct {
            cells.push((loss, rtt, o.sizes.clone(), false));
        }
    }
    if let Some(u) = &o.upload {
        cells.push((u.loss_pct, u.rtt_ms, vec![u.size.clone()], true));
    }
    let mut rows: Vec<Row> = vec![];
    let mut cell_lines = vec![];
    let t_run = Instant::now();
    // Each cell's baseline is the previous cell's reading (FG_SETTLE).
    let mut f0 = fg.stats();
    let result = (|| -> Result<()> {
        for (ci, (loss, rtt, sizes, upload)) in cells.iter().enumerate() {
            let (loss, rtt, upload) = (*loss, *rtt, *upload);
            let what = if upload { "upload" } else { "download" };
            eprintln!(
                "loss [{}/{}] {what} {} ({:.0} s so far)",
                ci + 1,
                cells.len(),
                cell_name(loss, rtt),
                t_run.elapsed().as_secs_f64()
            );
            let icmd = impair(ctx, loss, rtt)?;
            let k0 = kernel_tcp(nginx_pid);
            let s0 = relay_stats(ctx);
            let t_cell = Instant::now();
            let mut fg_transfers = 0;
            for (si, sz) in sizes.iter().enumerate() {
                let left = o.cell_budget.saturating_sub(t_cell.elapsed());
                let budget = left / (sizes.len() - si) as u32;
                let (x, cut, cmds) =
                    run_size(ctx, (loss, rtt), sz, upload, budget, &mut r.timeseries)?;
                let variant = format!("{what} {} {}", cell_name(loss, rtt), sz.name);
                let mut ms: [Metrics; 2] = [Metrics::new(), Metrics::new()];
                for (i, who) in CONTENDERS.iter().enumerate() {
                    let m = summarize(&x[i], sz, cut);
                    let bad: Vec<String> = x[i]
                        .iter()
                        .filter(|t| t.outcome == Outcome::BadStatus)
                        .map(|t| t.code.to_string())
                        .collect();
                    let failed: Vec<String> = x[i]
                        .iter()
                        .filter(|t| t.outcome != Outcome::Ok)
                        .map(|t| {
                            format!(
                                "{:?} (curl exit {}, status {}, {} bytes, {:.2} s)",
                                t.outcome, t.exit, t.code, t.bytes, t.t_total
                            )
                        })
                        .collect();
                    let err = if !bad.is_empty() {
                        Some(format!(
                            "{}: {} of {} responses were not 200: {}",
                            who.name(),
                            bad.len(),
                            x[i].len(),
                            bad.join(", ")
                        ))
                    } else if ctx.opts.smoke && !failed.is_empty() {
                        // The smoke's cell is mild (1 %, 10 ms): every
                        // transfer must complete.
                        Some(format!(
                            "{}: {} of {} transfers failed: {}",
                            who.name(),
                            failed.len(),
                            x[i].len(),
                            failed.join("; ")
                        ))
                    } else {
                        None
                    };
                    eprintln!(
                        "  {variant} {}: {}/{} ok, goodput {} Mbit/s, p50 {} s, p99 {} s",
                        who.name(),
                        m["ok"],
                        m["attempts"],
                        f2(m.get("goodput_mbps")),
                        ptime(&m, "p50_s"),
                        ptime(&m, "p99_s"),
                    );
                    ms[i] = m.clone();
                    let cmds = vec![starts[i].clone(), icmd.clone(), cmds[i].clone()];
                    r.samples
                        .push(sample(&variant, who.name(), 0, m, cmds, err));
                }
                fg_transfers += x[0].len();
                rows.push(Row {
                    what: what.into(),
                    loss,
                    rtt,
                    size: sz.name.clone(),
                    m: ms,
                });
            }
            let t_cell = t_cell.elapsed();
            // Also covers the relay's 250 ms period of writing counters.
            std::thread::sleep(FG_SETTLE);
            let s1 = relay_stats(ctx);
            let k1 = kernel_tcp(nginx_pid);
            let f1 = fg.stats();
            let fgv = fg_tcp(&f0, &f1);
            f0 = f1;
            let d = |a: &std::collections::HashMap<String, u64>,
                     b: &std::collections::HashMap<String, u64>,
                     k: &str| {
                b.get(k)
                    .copied()
                    .unwrap_or(0)
                    .saturating_sub(a.get(k).copied().unwrap_or(0))
            };
            let dir = |p: &str| {
                let (i, l) = (
                    d(&s0, &s1, format!("{p}_frames_in").as_str()),
                    d(&s0, &s1, format!("{p}_lost").as_str()),
                );
                format!(
                    "{l} of {i} lost ({:.2} %), {} queue drops, {} socket drops",
                    l as f64 * 100.0 / (i.max(1) as f64),
                    d(&s0, &s1, format!("{p}_queue_drops").as_str()),
                    d(&s0, &s1, format!("{p}_socket_drops").as_str())
                )
            };
            let kern: Vec<String> = KERNEL_KEYS
                .iter()
                .map(|k| format!("{k} {}", d(&k0, &k1, k)))
                .collect();
            cell_lines.push(format!(
                "- {what} {} ({:.0} s): relay to the client (rx): {}; from the client (tx): {}; nginx's kernel TCP: {}; ferrogate TCP ({fg_transfers} transfers): {}",
                cell_name(loss, rtt),
                t_cell.as_secs_f64(),
                dir("rx"),
                dir("tx"),
                kern.join(", "),
                fg_tcp_line(&fgv, fg_transfers)
            ));
            // The same per cell in the JSON: a `timeseries` row marked
            // `cell_counters` (the transfers' rows have no such key); a
            // ferrogate counter not read is left out.
            let mut row = Metrics::new();
            for (k, v) in [
                ("cell_counters", 1.0),
                ("loss_pct", loss),
                ("rtt_ms", rtt as f64),
                ("upload", if upload { 1.0 } else { 0.0 }),
                ("fg_transfers", fg_transfers as f64),
            ] {
                row.insert(k.into(), v);
            }
            for p in ["rx", "tx"] {
                for c in ["frames_in", "lost", "queue_drops", "socket_drops"] {
                    let k = format!("{p}_{c}");
                    row.insert(format!("relay_{k}"), d(&s0, &s1, &k) as f64);
                }
            }
            for k in KERNEL_KEYS {
                row.insert(format!("nginx_{k}"), d(&k0, &k1, k) as f64);
            }
            for (k, _, v) in &fgv {
                if let Some(v) = v {
                    row.insert(format!("fg_{}", k.trim_start_matches("stack_")), *v as f64);
                }
            }
            r.timeseries.push(row);
        }
        Ok(())
    })();
    let _ = impair(ctx, 0.0, 0);
    fg.stop();
    ng.stop();
    result?;
    r.settings.insert(
        "wall time of the transfers s".into(),
        format!("{:.0}", t_run.elapsed().as_secs_f64()),
    );
    let (table, misses) = compact_table(&rows);
    let mut goals = String::from(
        "Goals (issue #19): goodput ≥ 0.9x nginx in every cell; p99 of a 64 KiB download at 1 % / 50 ms ≤ 1.2x nginx.\n\n",
    );
    if misses.is_empty() {
        goals.push_str("Every goal measured here is met.\n");
    } else {
        goals.push_str("Missed:\n\n");
        for m in &misses {
            goals.push_str(&format!("- {m}\n"));
        }
    }
    r.sections.push(("All cells".into(), table));
    r.sections.push(("Goals".into(), goals));
    r.sections.push((
        "Per cell: relay and kernel counters".into(),
        cell_lines.join("\n") + "\n",
    ));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_overrides() {
        assert_eq!(parse_size("64k").unwrap(), 65536);
        assert_eq!(parse_size("10M").unwrap(), 10 << 20);
        assert_eq!(parse_size("512").unwrap(), 512);
        assert!(parse_size("0k").is_err() && parse_size("x").is_err());
        let s = size("1m", None, None).unwrap();
        assert_eq!((s.reps, s.max_time.as_secs()), (8, 30));
        let spec = per_size("64k=5, 10m=2").unwrap();
        assert_eq!(lookup(&spec, 65536), Some(5.0));
        assert_eq!(lookup(&spec, 1 << 20), None);
        assert!(per_size("64k").is_err());
    }

    #[test]
    fn outcomes() {
        assert_eq!(classify(0, 200, 10, 10, true), Outcome::Ok);
        assert_eq!(classify(0, 200, 9, 10, true), Outcome::Short);
        assert_eq!(classify(0, 200, 10, 10, false), Outcome::Short);
        assert_eq!(classify(28, 200, 5, 10, true), Outcome::Timeout);
        assert_eq!(classify(56, 200, 5, 10, true), Outcome::ConnError);
        assert_eq!(classify(7, 0, 0, 10, true), Outcome::ConnError);
        assert_eq!(classify(0, 502, 100, 10, true), Outcome::BadStatus);
        assert_eq!(
            parse_w("0.010 0.020 0.500 65536 200"),
            Some((0.01, 0.02, 0.5, 65536, 200))
        );
    }

    #[test]
    fn ferrogate_counters_per_cell() {
        let m = |v: &[(&str, u64)]| -> std::collections::HashMap<String, u64> {
            v.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let before = m(&[
            ("stack_tcp_fast_retransmits", 10),
            ("stack_tcp_retransmit_timeouts", 2),
            ("stack_tcp_tx_buffers_grown", 1),
            ("stack_tcp_rx_buffers_grown", 0),
            ("stack_tcp_buffer_grown_bytes", 4096),
        ]);
        let after = m(&[
            ("stack_tcp_fast_retransmits", 25),
            ("stack_tcp_retransmit_timeouts", 3),
            ("stack_tcp_tx_buffers_grown", 4),
            ("stack_tcp_rx_buffers_grown", 2),
            ("stack_tcp_buffer_growth_refused", 7),
            ("stack_tcp_buffer_grown_bytes", 0),
        ]);
        let v = fg_tcp(&before, &after);
        let got: Vec<Option<u64>> = v.iter().map(|t| t.2).collect();
        // growth_refused is missing before: not read, not guessed.
        assert_eq!(got, [Some(15), Some(1), Some(3), Some(2), None, Some(0)]);
        assert_eq!(
            fg_tcp_line(&v, 6),
            "fast retransmits 15 (2.5 per transfer), RTOs 1, tx buffers grown 3, rx buffers grown 2, growth refused not read, grown bytes now 0"
        );
        assert!(fg_tcp(&before, &m(&[])).iter().all(|t| t.2.is_none()));
    }

    fn x(outcome: Outcome, t: f64, bytes: u64) -> Xfer {
        Xfer {
            outcome,
            exit: 0,
            code: 200,
            bytes,
            t_connect: 0.001,
            t_ttfb: 0.002,
            t_total: t,
            frames_in: 50,
            frames_out: 49,
        }
    }

    #[test]
    fn a_failure_is_the_slowest() {
        let sz = size("1m", Some(3), Some(30.0)).unwrap();
        let v = [
            x(Outcome::Ok, 1.0, 1 << 20),
            x(Outcome::Ok, 2.0, 1 << 20),
            x(Outcome::Timeout, 30.0, 1000),
        ];
        let m = summarize(&v, &sz, false);
        assert_eq!((m["p50_s"], m["p50_s_is_failure"]), (2.0, 0.0));
        assert_eq!((m["p99_s"], m["p99_s_is_failure"]), (30.0, 1.0));
        assert_eq!((m["failures"], m["timeouts"], m["ok"]), (1.0, 1.0, 2.0));
        // Median goodput of 8.39, 4.19 and ~0 Mbit/s.
        assert!((m["goodput_mbps"] - 4.194304).abs() < 1e-6);
        // Aggregate: 2 MiB + 1000 bytes over 33 s.
        let agg = ((2 << 20) + 1000) as f64 * 8.0 / 33.0 / 1e6;
        assert!((m["goodput_agg_mbps"] - agg).abs() < 1e-9);
        assert_eq!((m["p10_ok_s"], m["p90_ok_s"]), (1.0, 2.0));
        assert_eq!(m["lost_per_xfer"], 1.0);
    }
}
