//! One measurement: wrk (closed loop), the own open-loop client, or the
//! packet generator, run pinned in the client namespace, with CPU snapshots
//! of the edge around it.

use std::collections::BTreeMap;
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::contenders::{Contender, Running};
use crate::env::{self, LOAD_CPU, Lab, PROXY_CPU};

pub type Metrics = BTreeMap<String, f64>;

const WRK_LUA: &str = r#"
done = function(summary, latency, requests)
  io.write(string.format("FB requests %d\n", summary.requests))
  io.write(string.format("FB duration_us %d\n", summary.duration))
  io.write(string.format("FB err_connect %d\n", summary.errors.connect))
  io.write(string.format("FB err_read %d\n", summary.errors.read))
  io.write(string.format("FB err_write %d\n", summary.errors.write))
  io.write(string.format("FB err_timeout %d\n", summary.errors.timeout))
  io.write(string.format("FB non2xx %d\n", summary.errors.status))
  for _, p in pairs({50, 90, 99, 99.9}) do
    io.write(string.format("FB p%s_us %d\n", tostring(p):gsub("%.", ""), latency:percentile(p)))
  end
end
"#;

pub fn cmdline(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|s| s.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// wrk -t1 -cN -dS pinned to LOAD_CPU in the client namespace.
pub fn wrk(
    lab: &Lab,
    url: &str,
    seconds: u64,
    conns: u32,
    header: Option<&str>,
) -> Result<(Metrics, String)> {
    wrk_with(lab, url, seconds, conns, header, None)
}

/// `wrk` with each connection waiting `delay_ms` before each request
/// (wrk's Lua `delay()`): about conns x 1000 / delay_ms requests/s at most,
/// a moderate, bounded load. `tag` names the Lua file, so that paced runs
/// may go on side by side.
pub fn wrk_paced(
    lab: &Lab,
    url: &str,
    seconds: u64,
    conns: u32,
    header: Option<&str>,
    delay_ms: u64,
    tag: &str,
) -> Result<(Metrics, String)> {
    wrk_with(lab, url, seconds, conns, header, Some((delay_ms, tag)))
}

/// `wrk` with `script` (Lua: e.g. `init` / `request` choosing the paths)
/// added to the reporting hook, written to the bench dir as
/// `report-<tag>.lua`.
pub fn wrk_script(
    lab: &Lab,
    url: &str,
    seconds: u64,
    conns: u32,
    script: &str,
    tag: &str,
) -> Result<(Metrics, String)> {
    let p = lab.bench_dir().join(format!("report-{tag}.lua"));
    std::fs::write(&p, format!("{WRK_LUA}\n{script}\n"))?;
    wrk_lua(lab, url, seconds, conns, None, &p)
}

fn wrk_with(
    lab: &Lab,
    url: &str,
    seconds: u64,
    conns: u32,
    header: Option<&str>,
    paced: Option<(u64, &str)>,
) -> Result<(Metrics, String)> {
    let lua = match paced {
        None => {
            let p = lab.bench_dir().join("report.lua");
            std::fs::write(&p, WRK_LUA)?;
            p
        }
        Some((ms, tag)) => {
            let p = lab.bench_dir().join(format!("report-{tag}.lua"));
            std::fs::write(
                &p,
                format!("{WRK_LUA}\ndelay = function()\n  return {ms}\nend\n"),
            )?;
            p
        }
    };
    wrk_lua(lab, url, seconds, conns, header, &lua)
}

fn wrk_lua(
    lab: &Lab,
    url: &str,
    seconds: u64,
    conns: u32,
    header: Option<&str>,
    lua: &std::path::Path,
) -> Result<(Metrics, String)> {
    let mut argv: Vec<String> = vec![
        "wrk".into(),
        "-t1".into(),
        format!("-c{conns}"),
        format!("-d{seconds}s"),
        "--timeout".into(),
        "5s".into(),
        "-s".into(),
        lua.display().to_string(),
    ];
    if let Some(h) = header {
        argv.push("-H".into());
        argv.push(h.into());
    }
    argv.push(url.into());
    let refs: Vec<&str> = argv.iter().map(|s| s.as_str()).collect();
    let mut c = lab.pinned("client", LOAD_CPU, &refs);
    let cmd = cmdline(&c);
    let out = env::run(&mut c)?;
    let mut m = Metrics::new();
    for l in out.lines() {
        if let Some(rest) = l.strip_prefix("FB ") {
            let mut it = rest.split_whitespace();
            if let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse::<f64>().ok())) {
                m.insert(k.to_string(), v);
            }
        }
    }
    let req = *m
        .get("requests")
        .with_context(|| format!("no summary in wrk output:\n{out}"))?;
    let dur = m.get("duration_us").copied().unwrap_or(1.0) / 1e6;
    m.insert("rps".into(), req / dur.max(1e-9));
    let errs: f64 = ["err_connect", "err_read", "err_write", "err_timeout"]
        .iter()
        .map(|k| m.get(*k).copied().unwrap_or(0.0))
        .sum();
    m.insert("socket_errors".into(), errs);
    Ok((m, cmd))
}

/// Fails when the contender returned errors or nothing.
pub fn check_http(who: &str, m: &Metrics, count_key: &str) -> Result<()> {
    let n = m.get(count_key).copied().unwrap_or(0.0);
    if n <= 0.0 {
        bail!("{who}: no successful requests");
    }
    let non2xx = m.get("non2xx").copied().unwrap_or(0.0);
    if non2xx > 0.0 {
        bail!("{who}: {non2xx} responses were not 2xx");
    }
    let errs =
        m.get("socket_errors").copied().unwrap_or(0.0) + m.get("errors").copied().unwrap_or(0.0);
    if errs > n * 0.01 {
        bail!("{who}: {errs} socket errors for {n} requests");
    }
    Ok(())
}

/// Around a load run: per-request CPU of the proxy.
pub struct Window {
    before: env::CpuSnap,
    fg_before: std::collections::HashMap<String, u64>,
    pids: Vec<i32>,
}

pub fn window_start(lab: &Lab, run: &Running) -> Window {
    let pids = lab.pids("edge");
    Window {
        before: env::cpu_snap(&pids),
        fg_before: run.stats(),
        pids,
    }
}

/// Adds CPU metrics for `n` requests (or connections, or packets) to `m`.
pub fn window_end(w: Window, run: &Running, n: f64, m: &mut Metrics) {
    let after = env::cpu_snap(&w.pids);
    let fg = run.stats();
    let n = n.max(1.0);
    let (b1, s1) = w.before.busy_softirq(&after, PROXY_CPU);
    let (b0, s0) = w.before.busy_softirq(&after, LOAD_CPU);
    let wall = (after.at - w.before.at).as_secs_f64();
    m.insert("cpu1_busy_frac".into(), b1 / wall);
    m.insert("cpu0_busy_frac".into(), b0 / wall);
    m.insert("cpu1_us_per_op".into(), b1 / n * 1e6);
    m.insert("cpu1_softirq_us_per_op".into(), s1 / n * 1e6);
    m.insert("cpu0_softirq_us_per_op".into(), s0 / n * 1e6);
    if run.who != Contender::Direct {
        m.insert(
            "proc_us_per_op".into(),
            w.before.proc_secs(&after) / n * 1e6,
        );
    }
    let d = |k: &str| {
        fg.get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(w.fg_before.get(k).copied().unwrap_or(0)) as f64
    };
    match run.who {
        Contender::Ferrogate => {
            // ferrogate's proxy CPU: the workers' busy time (it includes
            // the kernel work done synchronously in its own syscalls, e.g.
            // the veth transmit of the frames it sends). Divided by the
            // requests counted in the same stats snapshots (the file lags
            // up to 250 ms behind wrk's own count).
            let reqs = d("stack_requests");
            m.insert("fg_stack_requests".into(), reqs);
            // What explains a tail or an error: kept in the JSON report.
            for k in [
                "stack_upstream_connects",
                "stack_upstream_reused",
                "stack_retries",
                "stack_upstream_errors",
                "stack_overload_rejected",
                "stack_rx_rst_no_socket",
                "stack_rx_drop_no_socket",
                "stack_rx_queue_full",
                "stack_tx_queue_full",
                "handoff_dropped",
            ] {
                m.insert(format!("fg_{k}"), d(k));
            }
            if fg.contains_key("workers_busy_ns") && reqs > 0.0 {
                m.insert(
                    "proxy_us_per_op".into(),
                    d("workers_busy_ns") / reqs.max(1.0) / 1e3,
                );
            }
        }
        Contender::Nginx | Contender::Haproxy => {
            let v = m["proc_us_per_op"];
            m.insert("proxy_us_per_op".into(), v);
        }
        Contender::Direct => {}
    }
}

/// Like `window_end`, for work not counted in requests (bytes, L4
/// connections, datagrams): totals over the window, which the caller
/// divides. `proxy_cpu_s`: ferrogate Δ`workers_busy_ns`, nginx/HAProxy
/// utime+stime of the edge's processes (as `window_end`); `cpu1_busy_s`:
/// all non-idle time of the proxy core. ferrogate's counters whose name
/// starts with one of `fg_prefixes` go in as `fg_<name>` deltas, from the
/// same stats snapshots as its busy time (the file lags up to 250 ms, so
/// per-op figures divide by these, not by the client's counts).
pub fn window_totals(w: Window, run: &Running, fg_prefixes: &[&str], m: &mut Metrics) {
    let after = env::cpu_snap(&w.pids);
    let fg = run.stats();
    let (b1, s1) = w.before.busy_softirq(&after, PROXY_CPU);
    let (b0, _) = w.before.busy_softirq(&after, LOAD_CPU);
    let wall = (after.at - w.before.at).as_secs_f64();
    m.insert("window_s".into(), wall);
    m.insert("cpu1_busy_frac".into(), b1 / wall);
    m.insert("cpu0_busy_frac".into(), b0 / wall);
    m.insert("cpu1_busy_s".into(), b1);
    m.insert("cpu1_softirq_s".into(), s1);
    let d = |k: &str| {
        fg.get(k)
            .copied()
            .unwrap_or(0)
            .saturating_sub(w.fg_before.get(k).copied().unwrap_or(0)) as f64
    };
    match run.who {
        Contender::Ferrogate => {
            if fg.contains_key("workers_busy_ns") {
                m.insert("proxy_cpu_s".into(), d("workers_busy_ns") / 1e9);
            }
            m.insert("edge_proc_cpu_s".into(), w.before.proc_secs(&after));
            // `*_active` are gauges: a delta of them means nothing.
            for k in fg.keys().filter(|k| !k.ends_with("_active")) {
                if fg_prefixes.iter().any(|p| k.starts_with(p)) {
                    m.insert(format!("fg_{k}"), d(k));
                }
            }
        }
        Contender::Nginx | Contender::Haproxy => {
            m.insert("proxy_cpu_s".into(), w.before.proc_secs(&after));
        }
        Contender::Direct => {}
    }
}

/// Runs this binary's `loadgen` (open-loop client) in the client namespace.
pub fn loadgen(
    lab: &Lab,
    addr: &str,
    path: &str,
    rate: u64,
    seconds: f64,
    conns: usize,
) -> Result<(Metrics, String)> {
    let exe = std::env::current_exe()?.display().to_string();
    let args = [
        exe.as_str(),
        "loadgen",
        "--addr",
        addr,
        "--path",
        path,
        "--rate",
        &rate.to_string(),
        "--seconds",
        &seconds.to_string(),
        "--conns",
        &conns.to_string(),
    ];
    let mut c = lab.pinned("client", LOAD_CPU, &args);
    let cmd = cmdline(&c);
    let out = env::run(&mut c)?;
    let r: crate::loadgen::LoadReport =
        serde_json::from_str(out.trim().lines().last().unwrap_or(""))
            .with_context(|| format!("loadgen output: {out}"))?;
    let v = serde_json::to_value(&r)?;
    let mut m = Metrics::new();
    for (k, x) in v.as_object().unwrap() {
        m.insert(k.clone(), x.as_f64().unwrap_or(0.0));
    }
    Ok((m, cmd))
}

/// The generator command (this binary's `gen`), pinned to `cpu`.
pub fn gen_command(lab: &Lab, cpu: usize, a: &crate::pktgen::GenArgs) -> Result<Command> {
    let exe = std::env::current_exe()?.display().to_string();
    let t = match a.template {
        crate::pktgen::Template::Udp => "udp",
        crate::pktgen::Template::Syn => "syn",
        crate::pktgen::Template::Malformed => "malformed",
    };
    let args = vec![
        exe,
        "gen".into(),
        "--template".into(),
        t.into(),
        "--dst-mac".into(),
        a.dst_mac.clone(),
        "--dst-ip".into(),
        a.dst_ip.to_string(),
        "--dst-port".into(),
        a.dst_port.to_string(),
        "--src-cidr".into(),
        a.src_cidr.clone(),
        "--rate".into(),
        a.rate.to_string(),
        "--seconds".into(),
        a.seconds.to_string(),
        "--count".into(),
        a.count.to_string(),
        "--batch".into(),
        a.batch.to_string(),
    ];
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    Ok(lab.pinned("client", cpu, &refs))
}

pub fn parse_gen(out: &str) -> Result<crate::pktgen::GenReport> {
    serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("generator output: {out}"))
}
