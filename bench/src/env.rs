//! The bench's environment: the lab (via `ferrogate lab`), every process the
//! bench starts (registered by PID), firewall rules, and a cleanup that runs
//! on normal exit, error, panic (the release profile aborts, so from the
//! panic hook) and SIGINT/SIGTERM/SIGHUP.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const VIP: &str = "10.77.0.10";
pub const EDGE_HOST_IP: &str = "10.77.0.1";
pub const ORIGIN_IP: &str = "10.77.0.3";
/// The client, origin and generator run here; the proxy on PROXY_CPU.
pub const LOAD_CPU: usize = 0;
pub const PROXY_CPU: usize = 1;

struct Registry {
    pids: Vec<i32>,
    lab: Option<(PathBuf, String)>,
}

static REG: Mutex<Registry> = Mutex::new(Registry {
    pids: Vec::new(),
    lab: None,
});

fn reg() -> std::sync::MutexGuard<'static, Registry> {
    REG.lock().unwrap_or_else(|e| e.into_inner())
}

/// Stops every registered process (SIGTERM, then SIGKILL) and removes the
/// lab. Idempotent; safe from a signal-handling thread or the panic hook.
pub fn cleanup_all() {
    let (pids, lab) = {
        let mut r = reg();
        (std::mem::take(&mut r.pids), r.lab.take())
    };
    for &p in &pids {
        // SAFETY: kill(2) on a pid we spawned.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    for &p in &pids {
        while Instant::now() < deadline && alive(p) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if alive(p) {
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
    if let Some((bin, prefix)) = lab {
        let _ = Command::new(bin)
            .args(["lab", "down", "--prefix", &prefix])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status();
    }
}

fn alive(pid: i32) -> bool {
    // Reap if it is our child, then probe.
    let mut st = 0;
    // SAFETY: waitpid/kill with WNOHANG / signal 0 have no side effects on others.
    unsafe {
        libc::waitpid(pid, &mut st, libc::WNOHANG);
        libc::kill(pid, 0) == 0
    }
}

/// Installs the panic hook and the signal thread that call `cleanup_all`.
pub fn install_cleanup_handlers() -> Result<()> {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        prev(info);
        cleanup_all();
    }));
    let mut sigs = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])?;
    std::thread::spawn(move || {
        if let Some(s) = sigs.forever().next() {
            eprintln!("ferrogate-bench: signal {s}: cleaning up");
            cleanup_all();
            std::process::exit(128 + s);
        }
    });
    Ok(())
}

/// A child process registered for cleanup; stopped on drop.
pub struct Proc {
    pub child: Option<Child>,
    pub name: String,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: &Path) -> Result<Proc> {
        let f = std::fs::File::create(log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone()?)
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        reg().pids.push(child.id() as i32);
        Ok(Proc {
            child: Some(child),
            name: name.into(),
        })
    }

    /// Like `spawn`, with stdin and stdout as pipes (a process the bench
    /// talks to); stderr goes to `log`.
    pub fn spawn_piped(
        name: &str,
        cmd: &mut Command,
        log: &Path,
    ) -> Result<(Proc, std::process::ChildStdin, std::process::ChildStdout)> {
        let f = std::fs::File::create(log)?;
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(f)
            .spawn()
            .with_context(|| format!("spawning {name}: {cmd:?}"))?;
        reg().pids.push(child.id() as i32);
        let stdin = child.stdin.take().context("child stdin")?;
        let stdout = child.stdout.take().context("child stdout")?;
        Ok((
            Proc {
                child: Some(child),
                name: name.into(),
            },
            stdin,
            stdout,
        ))
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let pid = c.id() as i32;
        // SAFETY: kill(2) on our child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Ok(None) = c.try_wait() {
            let _ = c.kill();
            let _ = c.wait();
        }
        reg().pids.retain(|&p| p != pid);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn run(cmd: &mut Command) -> Result<String> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&o.stdout).trim(),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// stdout + stderr, whatever the exit status (for `-v` style probes).
pub fn probe(argv: &[&str]) -> String {
    Command::new(argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .output()
        .map(|o| {
            let mut s = String::from_utf8_lossy(&o.stdout).into_owned();
            s.push_str(&String::from_utf8_lossy(&o.stderr));
            s.trim().to_string()
        })
        .unwrap_or_else(|e| format!("unavailable ({e})"))
}

pub use ferrogate_testkit::netns_list;

/// The lab, up for the bench's lifetime; `lab down` on drop.
pub struct Lab {
    pub prefix: String,
}

impl Lab {
    pub fn up(bin: &Path, prefix: &str, queues: u32) -> Result<Lab> {
        Lab::up_impaired(bin, prefix, queues, &[])
    }

    /// [`Lab::up`] with impaired links: each of `impair` is an `--impair`
    /// spec of `ferrogate lab up` (`client:loss=1%,delay=20ms`, README
    /// "Impaired links"); change them later with `ferrogate lab impair`.
    pub fn up_impaired(bin: &Path, prefix: &str, queues: u32, impair: &[String]) -> Result<Lab> {
        let edge = format!("{prefix}edge");
        if netns_list().contains(&edge) {
            eprintln!("removing a leftover lab {prefix:?}");
            run(Command::new(bin).args(["lab", "down", "--prefix", prefix]))?;
        }
        reg().lab = Some((bin.to_path_buf(), prefix.to_string()));
        let lab = Lab {
            prefix: prefix.into(),
        };
        let q = queues.to_string();
        let mut up = Command::new(bin);
        up.args(["lab", "up", "--prefix", prefix, "--queues", &q]);
        for spec in impair {
            up.args(["--impair", spec]);
        }
        run(&mut up).context("ferrogate lab up")?;
        // The lab's own edge nginx would share the edge with our contenders:
        // stop it; every contender is started (pinned) by the bench.
        let pidf = lab.state_dir().join("edge-nginx/nginx.pid");
        if let Ok(p) = std::fs::read_to_string(&pidf)
            && let Ok(pid) = p.trim().parse::<i32>()
        {
            // SAFETY: the lab's edge nginx master, in our own lab.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !lab.pids("edge").is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if !lab.pids("edge").is_empty() {
            bail!("the lab's edge nginx did not stop");
        }
        // Origin (and every load tool) on LOAD_CPU.
        for pid in lab.pids("origin") {
            let _ = run(Command::new("taskset").args([
                "-a",
                "-p",
                "-c",
                &LOAD_CPU.to_string(),
                &pid.to_string(),
            ]));
        }
        // Connection-heavy scenarios: the client may open many sockets.
        for kv in [
            "net.ipv4.ip_local_port_range=1024 65000",
            "net.ipv4.tcp_tw_reuse=1",
        ] {
            let _ = lab.exec("client", &["sysctl", "-qw", kv]);
        }
        Ok(lab)
    }

    pub fn ns(&self, role: &str) -> String {
        format!("{}{role}", self.prefix)
    }

    pub fn state_dir(&self) -> PathBuf {
        PathBuf::from(format!(
            "/run/ferrogate-lab/{}",
            self.prefix.trim_end_matches('-')
        ))
    }

    pub fn bench_dir(&self) -> PathBuf {
        let d = self.state_dir().join("bench");
        let _ = std::fs::create_dir_all(&d);
        d
    }

    pub fn exec(&self, role: &str, argv: &[&str]) -> Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(argv))
    }

    /// A command in a namespace, pinned to one CPU.
    pub fn pinned(&self, role: &str, cpu: usize, argv: &[&str]) -> Command {
        let mut c = Command::new("taskset");
        c.args([
            "-c",
            &cpu.to_string(),
            "ip",
            "netns",
            "exec",
            &self.ns(role),
        ])
        .args(argv);
        c
    }

    pub fn pids(&self, role: &str) -> Vec<i32> {
        run(Command::new("ip").args(["netns", "pids", &self.ns(role)]))
            .map(|o| {
                o.split_whitespace()
                    .filter_map(|p| p.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn mac(&self, role: &str) -> Result<String> {
        let out = self.exec(role, &["cat", "/sys/class/net/eth0/address"])?;
        Ok(out.trim().to_string())
    }

    /// Interface counters (`ip -s -j link`): (rx_packets, rx_dropped, tx_packets).
    pub fn link_stats(&self, role: &str, dev: &str) -> (u64, u64, u64) {
        let out = run(Command::new("ip").args([
            "-n",
            &self.ns(role),
            "-s",
            "-j",
            "link",
            "show",
            "dev",
            dev,
        ]))
        .unwrap_or_default();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        let s = &v[0]["stats64"];
        let g = |a: &str, b: &str| s[a][b].as_u64().unwrap_or(0);
        (g("rx", "packets"), g("rx", "dropped"), g("tx", "packets"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        cleanup_all();
    }
}

/// CPU time snapshot: per-CPU /proc/stat rows and the processes in the edge.
#[derive(Clone)]
pub struct CpuSnap {
    pub at: Instant,
    /// cpuN -> [user nice system idle iowait irq softirq steal] in ticks.
    pub cpus: HashMap<usize, [u64; 8]>,
    /// utime + stime (ticks) of every process in the edge namespace.
    pub edge_proc_ticks: u64,
}

pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) as f64 }
}

pub fn cpu_snap(edge_pids: &[i32]) -> CpuSnap {
    let mut cpus = HashMap::new();
    for l in std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
    {
        let mut it = l.split_whitespace();
        let Some(name) = it.next() else { continue };
        let Some(n) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        let mut v = [0u64; 8];
        for (i, x) in it.take(8).enumerate() {
            v[i] = x.parse().unwrap_or(0);
        }
        cpus.insert(n, v);
    }
    let mut ticks = 0;
    for p in edge_pids {
        if let Ok(s) = std::fs::read_to_string(format!("/proc/{p}/stat")) {
            // Fields after the ")" of comm: state is field 3; utime 14, stime 15.
            if let Some(rest) = s.rsplit_once(')').map(|x| x.1) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                let u: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0);
                let st: u64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
                ticks += u + st;
            }
        }
    }
    CpuSnap {
        at: Instant::now(),
        cpus,
        edge_proc_ticks: ticks,
    }
}

impl CpuSnap {
    /// Seconds CPU `cpu` was not idle between `self` and `later`, and of
    /// that the softirq part.
    pub fn busy_softirq(&self, later: &CpuSnap, cpu: usize) -> (f64, f64) {
        let (Some(a), Some(b)) = (self.cpus.get(&cpu), later.cpus.get(&cpu)) else {
            return (0.0, 0.0);
        };
        let d = |i: usize| b[i].saturating_sub(a[i]) as f64 / clk_tck();
        let busy = d(0) + d(1) + d(2) + d(5) + d(6) + d(7);
        (busy, d(6))
    }

    pub fn proc_secs(&self, later: &CpuSnap) -> f64 {
        later.edge_proc_ticks.saturating_sub(self.edge_proc_ticks) as f64 / clk_tck()
    }
}

/// `name value` lines of ferrogate's stats file.
pub fn read_stats(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let k = it.next()?;
            let v = it.next()?.parse().ok()?;
            it.next().is_none().then(|| (k.to_string(), v))
        })
        .collect()
}
