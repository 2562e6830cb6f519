//! `ferrogate lab demo`: the whole path end to end, on the lab, in one command.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::lab::{EDGE_HOST_IP, Lab, VIP};

pub struct DemoArgs {
    pub prefix: String,
    pub queues: u32,
    pub config: PathBuf,
    pub backend: Option<String>,
    pub seconds: u64,
}

/// Removes the lab when the demo ends, however it ends.
struct LabGuard(Lab);

impl Drop for LabGuard {
    fn drop(&mut self) {
        if let Err(e) = self.0.down() {
            eprintln!("lab down: {e:#}");
        }
    }
}

/// Stops the engine (SIGTERM, then SIGKILL) if the demo bails out early.
struct EngineProc(Option<Child>);

impl EngineProc {
    fn stop(&mut self) -> Option<std::process::ExitStatus> {
        let mut child = self.0.take()?;
        // SAFETY: kill(2) on the pid of the child we spawned.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for EngineProc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts `ferrogate run` for the lab in the edge namespace.
pub fn spawn_engine(
    lab: &Lab,
    config: &std::path::Path,
    queues: u32,
    backend: Option<&str>,
    stats_file: &std::path::Path,
    log_file: &std::path::Path,
) -> Result<Child> {
    let exe = std::env::current_exe().context("locating the ferrogate binary")?;
    let log = std::fs::File::create(log_file)?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .arg("--netns")
        .arg(lab.edge())
        .arg("--queues")
        .arg(queues.to_string())
        .arg("--stats-file")
        .arg(stats_file);
    if let Some(b) = backend {
        cmd.arg("--backend").arg(b);
    }
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("spawning ferrogate run")
}

/// Waits until the VIP answers HTTP from the client namespace.
pub fn wait_for_vip(lab: &Lab, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let url = format!("http://{VIP}/");
        if lab
            .in_client(&["curl", "-sf", "-m", "1", "-o", "/dev/null", &url])
            .is_ok()
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

/// Requests/s and p99 latency from a wrk run in the client namespace.
pub fn wrk(lab: &Lab, url: &str, seconds: u64, conns: u32) -> Result<(f64, String)> {
    let out = lab.in_client(&[
        "wrk",
        "-t1",
        &format!("-c{conns}"),
        &format!("-d{seconds}s"),
        "--latency",
        url,
    ])?;
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .with_context(|| format!("no Requests/sec in wrk output:\n{out}"))?;
    let errors = out
        .lines()
        .filter(|l| l.contains("Socket errors") || l.contains("Non-2xx"))
        .collect::<Vec<_>>()
        .join("; ");
    let p99 = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| v.trim().to_string())
        .unwrap_or_default();
    Ok((rps, format!("p99 {p99} {errors}")))
}

pub fn demo(a: DemoArgs) -> Result<()> {
    let lab = Lab::new(&a.prefix);
    if lab.exists() {
        println!("removing a leftover lab {:?}", a.prefix);
        lab.down()?;
    }
    println!("== lab up (prefix {:?}, {} queues)", a.prefix, a.queues);
    lab.up(a.queues)?;
    let _guard = LabGuard(lab.clone());
    let stats_file = lab.state_dir().join("engine.stats");
    let log_file = lab.state_dir().join("engine.log");
    let child = spawn_engine(
        &lab,
        &a.config,
        a.queues,
        a.backend.as_deref(),
        &stats_file,
        &log_file,
    )?;
    let mut engine = EngineProc(Some(child));
    if !wait_for_vip(&lab, Duration::from_secs(20)) {
        engine.stop();
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        bail!("the VIP {VIP} did not answer within 20 s; engine log:\n{log}");
    }
    let log = std::fs::read_to_string(&log_file).unwrap_or_default();
    if let Some(line) = log.lines().find(|l| l.contains("packet backend selected")) {
        println!("== engine: {}", line.trim());
    }

    println!("== curl from {} to http://{VIP}/", lab.client());
    for path in ["/", "/demo?n=1", "/demo?n=2", "/ferrogate/health"] {
        let url = format!("http://{VIP}{path}");
        let out = lab.in_client(&["curl", "-s", "-m", "3", "-w", "\n%{http_code}", &url])?;
        let (body, code) = out.rsplit_once('\n').unwrap_or((&out, "?"));
        println!("GET {path} -> {code} {}", body.trim());
    }

    println!(
        "== wrk -t1 -c50 -d{}s, alternating ferrogate and nginx (kernel proxy on {EDGE_HOST_IP})",
        a.seconds
    );
    let mut fg = Vec::new();
    let mut ngx = Vec::new();
    for round in 0..2 {
        let (r, d) = wrk(&lab, &format!("http://{VIP}/"), a.seconds, 50)?;
        println!("round {round}: ferrogate {r:>10.0} req/s  {d}");
        fg.push(r);
        let (r, d) = wrk(&lab, &format!("http://{EDGE_HOST_IP}/"), a.seconds, 50)?;
        println!("round {round}: nginx     {r:>10.0} req/s  {d}");
        ngx.push(r);
    }
    let (f, n) = (median(&mut fg), median(&mut ngx));
    println!(
        "median: ferrogate {f:.0} req/s, nginx {n:.0} req/s, ratio {:.2}",
        f / n.max(1.0)
    );

    std::thread::sleep(Duration::from_millis(400));
    let st = engine.stop();
    println!(
        "== engine exited: {}",
        st.map(|s| s.to_string())
            .unwrap_or_else(|| "unknown".into())
    );
    let stats = std::fs::read_to_string(&stats_file).unwrap_or_default();
    println!("== counters");
    for line in stats.lines() {
        let interesting = line.starts_with("backend")
            || line.starts_with("worker")
            || line.starts_with("handoff")
            || line.starts_with("xdp_redirect_vip")
            || line.starts_with("xdp_pass")
            || line.starts_with("xdp_malformed")
            || line.starts_with("stack_requests")
            || line.starts_with("stack_responses_")
            || line.starts_with("stack_upstream")
            || line.starts_with("stack_accepted");
        if interesting {
            println!("  {line}");
        }
    }
    println!("== lab down");
    Ok(())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}
