//! Harness for ferrogate's end-to-end tests: a lab of its own per test
//! (unique prefix), the `ferrogate` binary running in the edge namespace,
//! clients in the client namespace, and teardown that runs even on panic.

pub mod etcd;
pub mod filter_cases;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub const VIP: &str = "10.77.0.10";
pub const EDGE_HOST_IP: &str = "10.77.0.1";

/// Lab tests share two cores: run them one at a time.
static SERIAL: Mutex<()> = Mutex::new(());
static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `f` with the lab lock held, or reports a skip when not root.
pub fn lab_test(name: &str, f: impl FnOnce()) {
    if !is_root() {
        eprintln!("{name}: skipped: needs root (network namespaces, XDP)");
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    f();
}

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The ferrogate binary: $FERROGATE_BIN, or the one built beside this test.
pub fn ferrogate_bin() -> PathBuf {
    if let Ok(p) = std::env::var("FERROGATE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|d| d.parent()).unwrap();
    let bin = profile_dir.join("ferrogate");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build --bins`) or set FERROGATE_BIN",
        bin.display()
    );
    bin
}

fn run(cmd: &mut Command) -> Result<String> {
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{cmd:?}"))?;
    if !o.status.success() {
        bail!(
            "{cmd:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

pub use ferrogate_testkit::{children_of, netns_list};

/// A lab with a unique prefix; removed on drop.
pub struct Lab {
    pub prefix: String,
}

impl Lab {
    pub fn up(queues: u32) -> Lab {
        Lab::up_impaired(queues, &[])
    }

    /// A lab whose links are impaired from the start: each of `impair` is
    /// an `--impair` spec of `ferrogate lab up` (`client:loss=2%,delay=5ms`,
    /// `origin.rx:corrupt=1%`, `both:dup=1%`, …).
    pub fn up_impaired(queues: u32, impair: &[&str]) -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        // `x` separates the two numbers: pid 1234 lab 56 and pid 12345
        // lab 6 must not share a prefix.
        let prefix = format!("ft{}x{}-", std::process::id() % 100_000, n);
        let lab = Lab { prefix };
        let mut cmd = Command::new(ferrogate_bin());
        cmd.args([
            "lab",
            "up",
            "--prefix",
            &lab.prefix,
            "--queues",
            &queues.to_string(),
        ]);
        for spec in impair {
            cmd.args(["--impair", spec]);
        }
        run(&mut cmd).expect("lab up");
        lab
    }

    /// Changes a side's impairment at run time (`ferrogate lab impair`):
    /// `side` is `client`, `origin` or `both` (optionally `.tx`/`.rx`),
    /// `set` the keys to change; `clear` starts from no impairment.
    /// Returns once the relay applies it.
    pub fn impair(&self, side: &str, set: &str, clear: bool) {
        let mut cmd = Command::new(ferrogate_bin());
        cmd.args([
            "lab",
            "impair",
            "--prefix",
            &self.prefix,
            "--side",
            side,
            "--set",
            set,
        ]);
        if clear {
            cmd.arg("--clear");
        }
        run(&mut cmd).expect("lab impair");
    }

    /// The counters of a side's relay (`tx_lost`, `rx_corrupted`, …; `tx`
    /// is what the side sends), as of its latest publication (every
    /// 250 ms: wait for one with [`Lab::impair_stats_fresh`]).
    pub fn impair_stats(&self, side: &str) -> HashMap<String, u64> {
        let f = self.state_dir().join(format!("impair-{side}.stats"));
        parse_stats(&std::fs::read_to_string(f).unwrap_or_default())
    }

    /// [`Lab::impair_stats`] published after this call (at most 5 s).
    pub fn impair_stats_fresh(&self, side: &str) -> HashMap<String, u64> {
        let f = self.state_dir().join(format!("impair-{side}.stats"));
        let stamp = || std::fs::metadata(&f).and_then(|m| m.modified()).ok();
        let (first, deadline) = (stamp(), Instant::now() + Duration::from_secs(5));
        let mut seen = 0;
        let mut last = first;
        while seen < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            if stamp() != last {
                seen += 1;
                last = stamp();
            }
        }
        self.impair_stats(side)
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

    /// Runs a command inside one of the lab's namespaces.
    pub fn exec(&self, role: &str, argv: &[&str]) -> Result<String> {
        run(Command::new("ip")
            .args(["netns", "exec", &self.ns(role)])
            .args(argv))
    }

    /// curl from the client namespace with `args` (URLs included): the
    /// first response's status (0: none) and every response head.
    pub fn status_head(&self, args: &[&str]) -> (u16, String) {
        let mut argv = vec!["curl", "-sS", "-m", "5", "-D", "-", "-o", "/dev/null"];
        argv.extend_from_slice(args);
        let head = self.exec("client", &argv).unwrap_or_default();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, head)
    }

    pub fn curl(&self, url: &str) -> Result<String> {
        self.exec(
            "client",
            &["curl", "-sS", "-m", "3", "--fail-with-body", url],
        )
    }

    pub fn edge_mac(&self) -> String {
        let out = self
            .exec("edge", &["ip", "-o", "link", "show", "dev", "eth0"])
            .unwrap();
        let i = out.find("link/ether ").expect("ether address");
        out[i + 11..i + 28].to_string()
    }

    /// Whether an XDP program is attached to the edge NIC.
    pub fn edge_has_xdp(&self) -> bool {
        self.exec("edge", &["ip", "-d", "link", "show", "dev", "eth0"])
            .map(|o| o.contains("prog/xdp"))
            .unwrap_or(false)
    }

    /// No XDP program on the edge's eth0, waiting up to 5 s for the kernel
    /// to release a killed process's link (its teardown is deferred).
    pub fn edge_xdp_gone(&self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.edge_has_xdp() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        true
    }

    pub fn start_engine(&self, backend: &str, queues: u32) -> Engine {
        self.start_engine_with(&workspace().join("configs/lab.toml"), backend, queues)
    }

    /// The MAC address of `eth0` in one of the lab's namespaces.
    pub fn mac(&self, role: &str) -> [u8; 6] {
        let out = self
            .exec(role, &["ip", "-o", "link", "show", "dev", "eth0"])
            .unwrap();
        let i = out.find("link/ether ").expect("ether address");
        let mut mac = [0u8; 6];
        for (m, part) in mac.iter_mut().zip(out[i + 11..i + 28].split(':')) {
            *m = u8::from_str_radix(part, 16).unwrap();
        }
        mac
    }

    /// Writes `configs/lab.toml` plus `extra` to the lab's state dir.
    pub fn config_with(&self, name: &str, extra: &str) -> PathBuf {
        let base = std::fs::read_to_string(workspace().join("configs/lab.toml")).unwrap();
        let path = self.state_dir().join(name);
        std::fs::write(&path, format!("{base}\n{extra}\n")).unwrap();
        path
    }

    pub fn start_engine_with(&self, config: &Path, backend: &str, queues: u32) -> Engine {
        self.start_engine_probe(config, backend, queues, true)
    }

    /// Starts the engine; with `probe`, waits until the VIP answers the
    /// client (a config that filters the client must not probe).
    pub fn start_engine_probe(
        &self,
        config: &Path,
        backend: &str,
        queues: u32,
        probe: bool,
    ) -> Engine {
        self.start_engine_args(Some(config), backend, queues, probe, &[])
    }

    /// The lab's admin socket (every engine the harness starts serves one).
    pub fn admin_socket(&self) -> PathBuf {
        self.state_dir().join("admin.sock")
    }

    /// The lab's engine state directory (last-known-good snapshot).
    pub fn engine_state_dir(&self) -> PathBuf {
        self.state_dir().join("engine-state")
    }

    /// `ferrogate ctl <args> --socket <lab socket>`: (exit code, stdout, stderr).
    pub fn ctl(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(ferrogate_bin())
            .arg("ctl")
            .args(args)
            .arg("--socket")
            .arg(self.admin_socket())
            .output()
            .expect("spawn ferrogate ctl");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Starts the engine with an optional config (none: the persisted
    /// last-known-good snapshot) and extra `ferrogate run` arguments.
    pub fn start_engine_args(
        &self,
        config: Option<&Path>,
        backend: &str,
        queues: u32,
        probe: bool,
        extra: &[&str],
    ) -> Engine {
        let stats = self.state_dir().join("engine.stats");
        let log = self.state_dir().join("engine.log");
        let logf = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(ferrogate_bin());
        cmd.arg("run");
        if let Some(config) = config {
            cmd.arg("--config").arg(config);
        }
        let child = cmd
            .args([
                "--netns",
                &self.ns("edge"),
                "--queues",
                &queues.to_string(),
                "--backend",
                backend,
            ])
            .arg("--stats-file")
            .arg(&stats)
            .arg("--admin-socket")
            .arg(self.admin_socket())
            .arg("--state-dir")
            .arg(self.engine_state_dir())
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn ferrogate run");
        let mut e = Engine {
            child: Some(child),
            stats,
            log,
        };
        // Generous: a debug build loading a million prefixes on a loaded
        // 2-core machine; a healthy start returns as soon as it serves.
        const START_WITHIN: Duration = Duration::from_secs(60);
        let deadline = Instant::now() + START_WITHIN;
        while Instant::now() < deadline && !e.log().contains("ferrogate engine serving") {
            // A supervisor that gave up (the engine failed to start) ends
            // the wait at once.
            if let Some(Ok(Some(status))) = e.child.as_mut().map(|c| c.try_wait()) {
                panic!(
                    "ferrogate run exited ({status}) before serving; log:\n{}",
                    e.log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(
            e.log().contains("ferrogate engine serving"),
            "engine did not start within {START_WITHIN:?}; log:\n{}",
            e.log()
        );
        // With a config file, `run` also starts the control daemon: wait
        // until it talks to the engine, so tests see one settled system.
        if config.is_some() && !extra.contains(&"--no-control") {
            let deadline = Instant::now() + START_WITHIN;
            while Instant::now() < deadline && !e.log().contains("connected to the engine") {
                std::thread::sleep(Duration::from_millis(50));
            }
            assert!(
                e.log().contains("connected to the engine"),
                "control daemon did not connect within {START_WITHIN:?}; log:\n{}",
                e.log()
            );
        }
        if !probe {
            return e;
        }
        while Instant::now() < deadline {
            if self.curl(&format!("http://{VIP}/ferrogate/health")).is_ok() {
                return e;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "engine did not answer on the VIP within {START_WITHIN:?}; log:\n{}",
            e.log()
        );
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = run(Command::new(ferrogate_bin()).args(["lab", "down", "--prefix", &self.prefix]));
        let left: Vec<_> = netns_list()
            .into_iter()
            .filter(|n| n.starts_with(&self.prefix))
            .collect();
        if !left.is_empty() && !std::thread::panicking() {
            panic!("lab down left namespaces behind: {left:?}");
        }
    }
}

/// A test origin process in the lab's origin namespace; killed on drop.
pub struct Origin {
    child: Option<Child>,
    pub addr: String,
}

impl Origin {
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Lab {
    /// Starts `fg-test-origin` on `addr` (inside the origin namespace) and
    /// waits until it accepts connections.
    pub fn start_origin(&self, name: &str, addr: &str) -> Origin {
        let bin = ferrogate_bin().with_file_name("fg-test-origin");
        assert!(
            bin.exists(),
            "{} missing: `cargo build --bins`",
            bin.display()
        );
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("origin")])
            .arg(&bin)
            .args(["--listen", addr, "--name", name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn fg-test-origin");
        let o = Origin {
            child: Some(child),
            addr: addr.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let url = format!("http://{addr}/ready");
            if self
                .exec(
                    "origin",
                    &["curl", "-sf", "-m", "1", "-o", "/dev/null", &url],
                )
                .is_ok()
            {
                return o;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("test origin {name} on {addr} did not come up");
    }

    /// Runs a shell command in the client namespace: (success, stdout
    /// followed by stderr).
    pub fn client_sh(&self, cmd: &str) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns("client"), "sh", "-c", cmd])
            .stdin(Stdio::null())
            .output()
            .expect("ip netns exec");
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    }

    /// Runs `f` on a thread inside the client namespace.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let ns = self.ns("client");
        std::thread::scope(|s| {
            s.spawn(move || {
                enter_netns(&ns).expect("enter client namespace");
                f()
            })
            .join()
            .expect("client thread")
        })
    }

    /// Resident memory of the engine process, in KiB.
    pub fn rss_kib(pid: i32) -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next()?.parse().ok())
            })
            .unwrap_or(0)
    }
}

/// Sends raw bytes on a fresh connection and reads until the peer closes
/// or `timeout` passes. Returns (response bytes, closed by peer).
pub fn raw_exchange(addr: &str, request: &[u8], timeout: Duration) -> Result<(Vec<u8>, bool)> {
    let mut s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))?;
    s.write_all(request)?;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return Ok((out, true)),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok((out, true)),
            Err(e) => return Err(e.into()),
        }
    }
    Ok((out, false))
}

/// A running `ferrogate run`; stopped (SIGTERM) on drop.
pub struct Engine {
    child: Option<Child>,
    stats: PathBuf,
    log: PathBuf,
}

impl Engine {
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The engine process (`ferrogate engine`, the supervisor's child):
    /// its threads, memory and CPU are the data plane's.
    pub fn pid(&self) -> i32 {
        let sup = self.supervisor_pid();
        children_of(sup)
            .into_iter()
            .find(|&c| {
                std::fs::read(format!("/proc/{c}/cmdline"))
                    .map(|cmd| cmd.split(|&b| b == 0).nth(1) == Some(b"engine".as_slice()))
                    .unwrap_or(false)
            })
            .unwrap_or_else(|| panic!("no engine process under supervisor {sup}"))
    }

    /// The `ferrogate run` process.
    pub fn supervisor_pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Counters the engine published (every 250 ms) after this call: the
    /// third publication from now, so everything counted before the call
    /// is in (workers hand over L7 counters every 250 ms too), however
    /// loaded the machine (bounded: 10 s, then the latest).
    pub fn stats(&self) -> HashMap<String, u64> {
        self.wait_publications(3);
        self.read_stats()
    }

    /// Counters once `done` holds of them, re-read at each publication for
    /// up to 10 s; the last read otherwise, for the caller's assert to show.
    /// For exact counts that a worker may still be catching up on.
    /// Waits until the engine's disk cache tier is attached: it is scanned
    /// on a thread of its own while the workers already serve, and until
    /// then misses are stored in memory only.
    pub fn wait_disk_tier(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !self
            .log()
            .contains("the response cache's disk tier is attached")
        {
            assert!(
                Instant::now() < deadline,
                "the disk tier did not attach; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stats_until(
        &self,
        done: impl Fn(&HashMap<String, u64>) -> bool,
    ) -> HashMap<String, u64> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = self.stats();
        while !done(&s) && Instant::now() < deadline {
            self.wait_publications(1);
            s = self.read_stats();
        }
        s
    }

    fn read_stats(&self) -> HashMap<String, u64> {
        parse_stats(&std::fs::read_to_string(&self.stats).unwrap_or_default())
    }

    /// Waits until the stats file was replaced `n` times (at most 10 s).
    fn wait_publications(&self, n: usize) {
        let stamp = || {
            std::fs::metadata(&self.stats)
                .and_then(|m| m.modified())
                .ok()
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = stamp();
        let mut seen = 0;
        while seen < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            let now = stamp();
            if now != last {
                seen += 1;
                last = now;
            }
        }
    }

    /// The supervisor runs and never had to restart a dead engine.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
            && !self.log().contains("engine died")
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// SIGTERM without waiting (a graceful stop runs on while the caller
    /// watches it).
    pub fn sigterm(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.supervisor_pid(), libc::SIGTERM) };
    }

    /// Waits up to `within` for `ferrogate run` to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Asks the engine to re-read its configuration file.
    pub fn sighup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.supervisor_pid(), libc::SIGHUP) };
    }

    /// A crash: SIGKILL to the engine and control processes, then to the
    /// supervisor (which would otherwise restart them).
    pub fn kill9(&mut self) -> Option<std::process::ExitStatus> {
        let children = self
            .child
            .as_ref()
            .map(|c| children_of(c.id() as i32))
            .unwrap_or_default();
        for &pid in &children {
            // SAFETY: kill(2) on a child of our own child (the supervisor is
            // alive, so these are not yet reaped and the PIDs are theirs).
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let st = self.signal_and_wait(libc::SIGKILL);
        wait_gone(&children);
        st
    }

    /// PIDs of the supervisor's children (engine, control daemon).
    pub fn children(&self) -> Vec<i32> {
        self.child
            .as_ref()
            .map(|c| children_of(c.id() as i32))
            .unwrap_or_default()
    }

    fn signal_and_wait(&mut self, sig: i32) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        let children = children_of(c.id() as i32);
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, sig) };
        // A loaded machine can take a while to detach XDP and flush logs.
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // Hung: nothing of ours may outlive the test.
        for &pid in &children {
            // SAFETY: kill(2) on the supervisor's children, which cannot
            // have been reaped (and their PIDs reused) while it runs.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        let _ = c.kill();
        let st = c.wait().ok();
        wait_gone(&children);
        st
    }
}

/// Waits (up to 10 s) until none of `pids` exists any more.
pub fn wait_gone(pids: &[i32]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}/stat")).exists())
    {
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
        // A failing test shows what the supervisor, engine and control
        // daemon logged (after the stop, so the log is complete).
        if std::thread::panicking() {
            let log = self.log();
            // Without the engine's stats dump at exit (hundreds of
            // `name value` lines that would push the log lines out).
            let lines: Vec<&str> = log.lines().filter(|l| !is_stats_line(l)).collect();
            let tail = &lines[lines.len().saturating_sub(200)..];
            eprintln!(
                "--- last {} lines of {} ---\n{}\n--- end of log ---",
                tail.len(),
                self.log.display(),
                tail.join("\n")
            );
        }
    }
}

/// A `name value` line of a stats dump.
fn is_stats_line(line: &str) -> bool {
    line.split_once(' ').is_some_and(|(k, v)| {
        // Keys name pools, endpoints and routes too (`pool_t_endpoint_
        // 10.77.0.3:9001_attempts`, `route_80:1_requests`): any key without
        // a space; a log line's second word is never a bare number.
        !k.is_empty() && v.trim().parse::<f64>().is_ok()
    })
}

/// `name value` lines; worker lines are skipped.
pub fn parse_stats(text: &str) -> HashMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Moves the calling thread into a lab namespace (setns is per thread).
pub fn enter_netns(ns: &str) -> Result<()> {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(format!("/var/run/netns/{ns}"))?;
    // SAFETY: setns(2) on a valid namespace fd; affects only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!("setns {ns}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// One keep-alive HTTP/1.1 client connection (Content-Length responses).
pub struct HttpConn {
    reader: BufReader<TcpStream>,
}

impl HttpConn {
    pub fn connect(addr: &str) -> Result<Self> {
        let s = TcpStream::connect_timeout(&addr.parse()?, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(s),
        })
    }

    /// Sends a GET and returns (status, body).
    pub fn get(&mut self, host: &str, path: &str) -> Result<(u16, String)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n");
        self.reader.get_mut().write_all(req.as_bytes())?;
        let mut line = String::new();
        self.reader.read_line(&mut line)?;
        let status: u16 = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut len = None;
        loop {
            let mut h = String::new();
            if self.reader.read_line(&mut h)? == 0 {
                bail!("connection closed inside the head");
            }
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':')
                && k.eq_ignore_ascii_case("content-length")
            {
                len = Some(v.trim().parse::<usize>()?);
            }
        }
        let len = len.context("response without Content-Length")?;
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

/// Frames built by hand for the filter tests (full IPv4 checksums).
pub mod frames {
    pub fn ipv4_checksum(h: &[u8]) -> u16 {
        let mut sum = 0u32;
        for c in h.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    fn eth(dst: [u8; 6], src: [u8; 6], ethertype: u16) -> Vec<u8> {
        let mut f = Vec::with_capacity(128);
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ethertype.to_be_bytes());
        f
    }

    fn ipv4(f: &mut Vec<u8>, src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) {
        let total = 20 + l4.len();
        let mut h = vec![
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            1,
            0x40,
            0,
            64,
            proto,
            0,
            0,
        ];
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        let c = ipv4_checksum(&h);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        f.extend_from_slice(&h);
        f.extend_from_slice(l4);
    }

    /// A UDP datagram with `payload` zero bytes.
    pub fn udp4(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: [u8; 4],
        dst: [u8; 4],
        dport: u16,
        payload: usize,
    ) -> Vec<u8> {
        let mut f = eth(dst_mac, src_mac, 0x0800);
        let len = 8 + payload;
        let mut u = vec![
            0x9c,
            0x40,
            (dport >> 8) as u8,
            dport as u8,
            (len >> 8) as u8,
            len as u8,
            0,
            0,
        ];
        u.resize(len, 0);
        ipv4(&mut f, src, dst, 17, &u);
        f
    }

    /// A TCP SYN (checksum left zero: the filter drops it before any stack).
    pub fn syn4(
        dst_mac: [u8; 6],
        src_mac: [u8; 6],
        src: [u8; 4],
        dst: [u8; 4],
        sport: u16,
        dport: u16,
    ) -> Vec<u8> {
        let mut f = eth(dst_mac, src_mac, 0x0800);
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&sport.to_be_bytes());
        t[2..4].copy_from_slice(&dport.to_be_bytes());
        t[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        t[12] = 5 << 4;
        t[13] = 0x02;
        t[14..16].copy_from_slice(&64240u16.to_be_bytes());
        ipv4(&mut f, src, dst, 6, &t);
        f
    }
}

/// What [`send_frames_timed`] did: frames the kernel took, seconds from
/// the first send to the last, and each pause between two sends longer
/// than 1 ms (the sender was descheduled: a rate limiter refills then).
#[derive(Debug, Clone, Default)]
pub struct Sent {
    pub sent: usize,
    pub secs: f64,
    pub gaps: Vec<f64>,
}

impl Sent {
    /// The range a token bucket of `rate`/s and `burst` lets through of
    /// this send: at most `rate × secs + burst`; at least that less what
    /// the bucket could not hold while the sender was paused (a pause of g
    /// seconds refills at most `burst`, so `rate × g − burst` is lost).
    pub fn token_bucket_range(&self, rate: u64, burst: u64) -> (f64, f64) {
        let (rate, burst) = (rate as f64, burst as f64);
        let hi = rate * self.secs + burst;
        let lost: f64 = self.gaps.iter().map(|g| (rate * g - burst).max(0.0)).sum();
        ((hi - lost).max(0.0), hi)
    }
}

/// Sends frames from `eth0` of namespace `ns` over a raw AF_PACKET socket,
/// paced to `pps` (0 = as fast as possible). Returns (sent, seconds taken).
pub fn send_frames(ns: &str, frames: Vec<Vec<u8>>, pps: u64) -> Result<(usize, f64)> {
    send_frames_timed(ns, frames, pps).map(|s| (s.sent, s.secs))
}

/// [`send_frames`] with the pauses it suffered. Pacing never catches up
/// after a pause (a burst of back-to-back frames would be a different test):
/// the schedule restarts from the late frame.
pub fn send_frames_timed(ns: &str, frames: Vec<Vec<u8>>, pps: u64) -> Result<Sent> {
    let ns = ns.to_string();
    std::thread::spawn(move || -> Result<Sent> {
        enter_netns(&ns)?;
        // SAFETY: plain socket(2); the fd is closed at the end.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {}", std::io::Error::last_os_error());
        }
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        // SAFETY: sockaddr_ll is plain data; zeroed is valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = ifindex as i32;
        sll.sll_halen = 6;
        let interval = if pps > 0 {
            Duration::from_secs_f64(1.0 / pps as f64)
        } else {
            Duration::ZERO
        };
        let pause = Duration::from_millis(1);
        let start = Instant::now();
        let (mut base, mut since_base) = (start, 0u32);
        let mut last_send: Option<Instant> = None;
        let mut out = Sent::default();
        for f in &frames {
            if pps > 0 {
                let due = base + interval * since_base;
                while Instant::now() < due {
                    std::hint::spin_loop();
                }
                if Instant::now() > due + pause {
                    // Late (descheduled): restart the schedule here.
                    base = Instant::now();
                    since_base = 0;
                }
                since_base += 1;
            }
            let now = Instant::now();
            if let Some(prev) = last_send
                && now - prev > pause
            {
                out.gaps.push((now - prev).as_secs_f64());
            }
            last_send = Some(now);
            // SAFETY: `f` and `sll` are valid for the call's duration.
            let rc = unsafe {
                libc::sendto(
                    fd,
                    f.as_ptr().cast(),
                    f.len(),
                    0,
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            if rc >= 0 {
                out.sent += 1;
            }
        }
        out.secs = start.elapsed().as_secs_f64();
        // SAFETY: our fd.
        unsafe { libc::close(fd) };
        Ok(out)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("sender thread panicked"))?
}

/// Sets a flag when dropped: load threads in a `std::thread::scope` stop even
/// when the scope's body panics (otherwise the scope waits for them forever).
pub struct StopOnDrop<'a>(pub &'a std::sync::atomic::AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `conns` keep-alive connections from the client namespace, `per_conn`
/// requests each to `/load/<c>/<i>`, each answered 200 by the origin with its
/// path: (requests that succeeded, one error per failed connection).
pub fn keep_alive_load(lab: &Lab, conns: usize, per_conn: usize) -> (usize, Vec<String>) {
    let ns = lab.ns("client");
    let handles: Vec<_> = (0..conns)
        .map(|c| {
            let ns = ns.clone();
            std::thread::spawn(move || -> Result<usize, String> {
                enter_netns(&ns).map_err(|e| e.to_string())?;
                let mut conn = HttpConn::connect(&format!("{VIP}:80"))
                    .map_err(|e| format!("conn {c}: connect: {e}"))?;
                for i in 0..per_conn {
                    let path = format!("/load/{c}/{i}");
                    let (status, body) = conn
                        .get("lab", &path)
                        .map_err(|e| format!("conn {c} req {i}: {e}"))?;
                    if status != 200 || !body.contains(&format!("path={path}")) {
                        return Err(format!("conn {c} req {i}: {status} {body:?}"));
                    }
                }
                Ok(per_conn)
            })
        })
        .collect();
    let mut ok = 0;
    let mut errors = vec![];
    for h in handles {
        match h.join().expect("client thread") {
            Ok(n) => ok += n,
            Err(e) => errors.push(e),
        }
    }
    (ok, errors)
}

/// A lab config (1 queue) whose `/v` route answers `body` with no upstream,
/// plus `extra` TOML.
pub fn respond_config(body: &str, extra: &str) -> String {
    format!(
        r#"vips = ["10.77.0.10/24", "fd77::10/64"]

[engine]
interface = "eth0"
queues = 1
polling = "adaptive"

[[listeners]]
port = 80

[[listeners.routes]]
name = "v"
path_prefix = "/v"
respond = {{ status = 200, body = "{body}" }}

[[listeners.routes]]
name = "health"
path_prefix = "/ferrogate/health"
respond = {{ status = 200, body = "ferrogate ok\n" }}
{extra}
"#
    )
}

/// Runs `n` keep-alive clients (in namespace `ns`) on `/v` until `stop`;
/// every request must succeed with one of `bodies`. Join the handles for
/// the requests each served.
pub fn load_until_stopped<'s>(
    s: &'s std::thread::Scope<'s, '_>,
    ns: &'s str,
    n: usize,
    stop: &'s std::sync::atomic::AtomicBool,
    bodies: &'s [&'s str],
) -> Vec<std::thread::ScopedJoinHandle<'s, u64>> {
    (0..n)
        .map(|_| {
            s.spawn(move || {
                enter_netns(ns).unwrap();
                let mut c = HttpConn::connect(&format!("{VIP}:80")).unwrap();
                let mut served = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (status, body) = c.get("lab", "/v").expect("a request failed");
                    assert_eq!(status, 200);
                    assert!(bodies.contains(&body.as_str()), "{body}");
                    served += 1;
                }
                served
            })
        })
        .collect()
}

/// Runs `ferrogate ctl ARGS` in the lab; its output, or a panic naming
/// the failure.
pub fn ctl_ok(lab: &Lab, args: &[&str]) -> String {
    let (code, out, err) = lab.ctl(args);
    if code != 0 {
        // Where every thread of the lab's processes waits: a call that got
        // no answer (a rare CI flake: the engine's admin thread silent for
        // a minute under load) says which thread held it up.
        eprintln!("{}", thread_dump(&lab.state_dir()));
    }
    assert_eq!(code, 0, "ctl {args:?} failed: {out}{err}");
    out
}

/// Each thread of every process whose command line names `state_dir`:
/// name, state, kernel wait channel and current syscall (from /proc).
pub fn thread_dump(state_dir: &Path) -> String {
    let key = state_dir.to_string_lossy().into_owned();
    let mut out = format!("--- threads of the processes under {key} ---\n");
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let cmd = std::fs::read(p.path().join("cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if !cmd.contains(&key) {
            continue;
        }
        out.push_str(&format!("pid {pid}: {}\n", cmd.trim()));
        let Ok(tasks) = std::fs::read_dir(p.path().join("task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let read = |f: &str| {
                std::fs::read_to_string(t.path().join(f))
                    .unwrap_or_default()
                    .trim()
                    .replace('\n', " | ")
            };
            let state = read("stat")
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next().map(str::to_string))
                .unwrap_or_default();
            out.push_str(&format!(
                "  tid {} {:<16} {state} wchan {} syscall {} stack {}\n",
                t.file_name().to_string_lossy(),
                read("comm"),
                read("wchan"),
                read("syscall"),
                read("stack"),
            ));
        }
    }
    out
}

/// The value of a `key value` line of a status answer (panics without).
pub fn status_field(status: &str, key: &str) -> String {
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{key} ")))
        .unwrap_or_else(|| panic!("no {key} in {status}"))
        .to_string()
}
