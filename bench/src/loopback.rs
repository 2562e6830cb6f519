//! The kernel reference of `ceiling`: nginx proxying on loopback (wrk →
//! nginx → origin nginx, 127.0.0.1), the proxy pinned to the proxy CPU with
//! one worker, wrk and the origin on the load CPU, and the proxy's CPU
//! (utime + stime of its processes) per request. On loopback the sender's
//! syscall also runs the receiving TCP stack, so the proxy's CPU includes
//! receive work for what it sends (to wrk and the origin) and not for what
//! it is sent: the same trade the engine makes on an in-memory port.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::env::{LOAD_CPU, PROXY_CPU};
use crate::measure::Metrics;

/// A port nothing listens on now (the kernel picks it), so a leftover
/// server from another run can never answer in our place.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// One nginx process group (master + its worker), stopped on drop.
struct Nginx {
    child: Child,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the master we spawned; it stops its worker.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn temp_paths(d: &Path) -> String {
    let d = d.display();
    format!(
        "client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;"
    )
}

fn start(dir: &Path, name: &str, cpu: usize, http: &str) -> Result<Nginx> {
    let d = dir.join(name);
    std::fs::create_dir_all(&d)?;
    let conf = format!(
        "worker_processes 1;\nuser root;\ndaemon off;\npid {pid};\nerror_log {log} warn;\nevents {{ worker_connections 8192; }}\nhttp {{\n  access_log off;\n  {temps}\n  keepalive_requests 1000000;\n{http}\n}}\n",
        pid = d.join("nginx.pid").display(),
        log = d.join("error.log").display(),
        temps = temp_paths(&d),
    );
    let p = d.join("nginx.conf");
    std::fs::write(&p, conf)?;
    let child = Command::new("taskset")
        .args(["-c", &cpu.to_string(), "nginx", "-c"])
        .arg(&p)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("nginx (is it installed? ./vendor-setup.sh)")?;
    Ok(Nginx { child })
}

/// Waits until `nginx` listens on `port`; fails if it exited (a port taken
/// meanwhile, a bad config: its error log says why).
fn wait_ready(nginx: &mut Nginx, port: u16, log: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Some(st) = nginx.child.try_wait()? {
            let why = std::fs::read_to_string(log).unwrap_or_default();
            bail!("nginx for 127.0.0.1:{port} exited ({st}): {why}");
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nginx on 127.0.0.1:{port} did not come up")
}

/// utime + stime of `pid` and its children, in ns.
fn cpu_ns(pid: u32) -> u64 {
    let tick_ns = {
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        1_000_000_000 / hz
    };
    let mut pids = vec![pid.to_string()];
    if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")) {
        pids.extend(c.split_whitespace().map(String::from));
    }
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .filter_map(|s| {
            // Fields after the `(comm)`: utime and stime are the 12th and 13th.
            let rest = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        })
        .sum::<u64>()
        * tick_ns
}

fn wrk_command(port: u16, path: &str, close: bool, seconds: u64, conns: u32) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", &LOAD_CPU.to_string(), "wrk", "-t1"])
        .arg(format!("-c{conns}"))
        .arg(format!("-d{seconds}s"));
    if close {
        c.args(["-H", "Connection: close"]);
    }
    c.arg(format!("http://127.0.0.1:{port}{path}"));
    c
}

fn wrk(port: u16, path: &str, close: bool, seconds: u64, conns: u32) -> Result<u64> {
    let out = wrk_command(port, path, close, seconds, conns)
        .output()
        .context("wrk (./vendor-setup.sh installs it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("wrk failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    if text.contains("Non-2xx") || text.contains("Socket errors") {
        bail!("wrk saw errors:\n{text}");
    }
    text.lines()
        .find_map(|l| {
            let l = l.trim();
            let (n, rest) = l.split_once(' ')?;
            rest.starts_with("requests in")
                .then(|| n.parse::<u64>().ok())?
        })
        .with_context(|| format!("no request count in wrk output:\n{text}"))
}

/// Runs the reference for a response body of `body_len` bytes; returns the
/// metrics and the measured wrk command.
pub fn measure(
    dir: &Path,
    body_len: usize,
    close: bool,
    warmup: u64,
    seconds: u64,
    conns: u32,
) -> Result<(Metrics, String)> {
    let (proxy_port, origin_port) = (free_port()?, free_port()?);
    let body = dir.join(format!("body-{body_len}"));
    std::fs::write(&body, vec![b'x'; body_len])?;
    let mut origin = start(
        dir,
        "origin",
        LOAD_CPU,
        &format!(
            "  server {{ listen 127.0.0.1:{origin_port} reuseport backlog=4096; location / {{ default_type application/octet-stream; root {}; }} }}",
            dir.display()
        ),
    )?;
    let mut proxy = start(
        dir,
        "proxy",
        PROXY_CPU,
        &format!(
            "  upstream origin {{ server 127.0.0.1:{origin_port}; keepalive 64; keepalive_requests 1000000; }}\n  server {{ listen 127.0.0.1:{proxy_port} reuseport backlog=4096; location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_buffering on; }} }}"
        ),
    )?;
    wait_ready(&mut origin, origin_port, &dir.join("origin/error.log"))?;
    wait_ready(&mut proxy, proxy_port, &dir.join("proxy/error.log"))?;
    let path = format!("/body-{body_len}");
    if warmup > 0 {
        wrk(proxy_port, &path, close, warmup, conns)?;
    }
    let c0 = cpu_ns(proxy.child.id());
    let t0 = Instant::now();
    let requests = wrk(proxy_port, &path, close, seconds, conns)?;
    let wall = t0.elapsed();
    let cpu = cpu_ns(proxy.child.id()) - c0;
    if requests == 0 {
        bail!("no response through nginx");
    }
    let mut m = Metrics::new();
    m.insert("rps".into(), requests as f64 / wall.as_secs_f64());
    m.insert("worker_ns_per_req".into(), cpu as f64 / requests as f64);
    m.insert(
        "req_per_core_s".into(),
        requests as f64 / (cpu as f64 / 1e9).max(1e-9),
    );
    m.insert("busy_ratio".into(), cpu as f64 / wall.as_nanos() as f64);
    m.insert("bad_responses".into(), 0.0);
    let cmd = crate::measure::cmdline(&wrk_command(proxy_port, &path, close, seconds, conns));
    Ok((
        m,
        format!("{cmd} ; nginx (1 worker) on CPU {PROXY_CPU}, origin nginx on CPU {LOAD_CPU}"),
    ))
}

/// A scratch dir for the nginx configs and bodies.
pub fn scratch() -> PathBuf {
    ferrogate_testkit::temp_dir("fg-ceiling-nginx")
}
