//! `ferrogate ctl …`: the admin API's client. Prints the server's answer;
//! exits non-zero when the answer is an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::admin;

pub enum CtlCmd {
    Status,
    Stats,
    Metrics,
    Blocked,
    Unblock(std::net::IpAddr),
    /// `POST /purge`.
    Purge(ferrogate_proxy::cache::Purge),
    /// `POST /drain`: a graceful stop.
    Drain,
    Validate(PathBuf),
    Apply(PathBuf),
    Diff,
    Rollback,
    /// Live per-worker rates: refresh every `interval`, stop after `count`
    /// frames (0 = until interrupted).
    Top {
        interval: Duration,
        count: u64,
    },
}

/// Runs one command; returns the process exit code.
pub fn ctl(ep: &admin::Endpoint, cmd: CtlCmd) -> Result<i32> {
    let file_body = |p: &Path| -> Result<(String, PathBuf)> {
        let text =
            std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        Ok((text, abs))
    };
    let reply = match cmd {
        CtlCmd::Top { interval, count } => return top(ep, interval, count),
        CtlCmd::Status => admin::request(ep, "GET", "/status", None)?,
        CtlCmd::Stats => admin::request(ep, "GET", "/stats", None)?,
        CtlCmd::Metrics => admin::request(ep, "GET", "/metrics", None)?,
        CtlCmd::Blocked => admin::request(ep, "GET", "/blocked", None)?,
        CtlCmd::Unblock(a) => admin::request(ep, "POST", &format!("/unblock/{a}"), None)?,
        CtlCmd::Purge(p) => {
            let body = admin::purge_body(&p);
            admin::request(ep, "POST", "/purge", Some((&body, Path::new(""))))?
        }
        CtlCmd::Drain => admin::request(ep, "POST", "/drain", None)?,
        CtlCmd::Diff => admin::request(ep, "GET", "/diff", None)?,
        CtlCmd::Rollback => admin::request(ep, "POST", "/rollback", None)?,
        CtlCmd::Validate(p) => {
            let (text, abs) = file_body(&p)?;
            admin::request(ep, "POST", "/validate", Some((&text, &abs)))?
        }
        CtlCmd::Apply(p) => {
            let (text, abs) = file_body(&p)?;
            admin::request(ep, "POST", "/apply", Some((&text, &abs)))?
        }
    };
    if reply.status == 200 {
        print!("{}", reply.body);
        Ok(0)
    } else {
        eprint!("{}", reply.body);
        Ok(1)
    }
}

/// One sample of the counters `top` shows.
#[derive(Default)]
struct Sample {
    /// worker → (cpu, rx, tx, requests, handoff_out, busy_ns)
    workers: BTreeMap<usize, [u64; 6]>,
    totals: BTreeMap<String, u64>,
}

fn sample(text: &str) -> Sample {
    let mut s = Sample::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("worker ")
            && let Some((head, tail)) = rest.split_once(':')
        {
            let num = |k: &str, text: &str| -> u64 {
                let mut it = text.split_whitespace();
                while let Some(w) = it.next() {
                    if w == k {
                        return it.next().and_then(|v| v.parse().ok()).unwrap_or(0);
                    }
                }
                0
            };
            let id: usize = head
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            s.workers.insert(
                id,
                [
                    num("cpu", head),
                    num("rx", tail),
                    num("tx", tail),
                    num("requests", tail),
                    num("handoff_out", tail),
                    num("busy_ns", tail),
                ],
            );
        } else if let Some((k, v)) = line.split_once(' ')
            && let Ok(v) = v.trim().parse::<u64>()
        {
            s.totals.insert(k.to_string(), v);
        }
    }
    s
}

/// `ferrogate ctl top`: per-worker packet, request and busy rates.
fn top(ep: &admin::Endpoint, interval: Duration, count: u64) -> Result<i32> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let fetch = || -> Result<(Sample, Instant)> {
        let r = admin::request(ep, "GET", "/stats", None)?;
        if r.status != 200 {
            anyhow::bail!("{}", r.body.trim_end());
        }
        Ok((sample(&r.body), Instant::now()))
    };
    let (mut prev, mut t_prev) = fetch()?;
    let mut frames = 0;
    loop {
        std::thread::sleep(interval);
        let (cur, t) = fetch()?;
        let dt = (t - t_prev).as_secs_f64().max(1e-6);
        let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / dt;
        let mut out = String::new();
        if tty {
            out.push_str("\x1b[H\x1b[2J");
        }
        out.push_str(&format!(
            "ferrogate top: {} worker(s), every {:.1} s\n{:>6} {:>4} {:>12} {:>12} {:>10} {:>7} {:>12}\n",
            cur.workers.len(),
            dt,
            "worker",
            "cpu",
            "rx pkt/s",
            "tx pkt/s",
            "req/s",
            "busy%",
            "handoff/s"
        ));
        let mut sum = [0f64; 5];
        for (id, c) in &cur.workers {
            let p = prev.workers.get(id).copied().unwrap_or_default();
            let row = [
                rate(p[1], c[1]),
                rate(p[2], c[2]),
                rate(p[3], c[3]),
                rate(p[5], c[5]) / 1e7,
                rate(p[4], c[4]),
            ];
            for (s, r) in sum.iter_mut().zip(row) {
                *s += r;
            }
            out.push_str(&format!(
                "{id:>6} {:>4} {:>12.0} {:>12.0} {:>10.0} {:>7.1} {:>12.0}\n",
                c[0], row[0], row[1], row[2], row[3], row[4]
            ));
        }
        out.push_str(&format!(
            "{:>6} {:>4} {:>12.0} {:>12.0} {:>10.0} {:>7.1} {:>12.0}\n",
            "total", "", sum[0], sum[1], sum[2], sum[3], sum[4]
        ));
        let g = |k: &str| cur.totals.get(k).copied().unwrap_or(0);
        let d = |k: &str| rate(prev.totals.get(k).copied().unwrap_or(0), g(k));
        out.push_str(&format!(
            "connections {}  2xx/s {:.0}  4xx/s {:.0}  5xx/s {:.0}  xdp drops/s {:.0}  access_log_dropped {}\n",
            g("stack_active_connections"),
            d("stack_responses_2xx"),
            d("stack_responses_4xx"),
            d("stack_responses_5xx"),
            cur.totals
                .iter()
                .filter(|(k, _)| k.starts_with("xdp_drop_") && k.ends_with("_packets"))
                .map(|(k, v)| rate(prev.totals.get(k).copied().unwrap_or(0), *v))
                .sum::<f64>(),
            g("stack_access_log_dropped"),
        ));
        if !tty {
            out.push('\n');
        }
        print!("{out}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        frames += 1;
        if count > 0 && frames >= count {
            return Ok(0);
        }
        (prev, t_prev) = (cur, t);
    }
}
