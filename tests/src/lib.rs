//! Harness for ferrogate's end-to-end tests: a lab of its own per test
//! (unique prefix), the `ferrogate` binary running in the edge namespace,
//! clients in the client namespace, and teardown that runs even on panic.

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

pub fn netns_list() -> Vec<String> {
    run(Command::new("ip").args(["netns", "list"]))
        .map(|o| {
            o.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// A lab with a unique prefix; removed on drop.
pub struct Lab {
    pub prefix: String,
}

impl Lab {
    pub fn up(queues: u32) -> Lab {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("ft{}{}-", std::process::id() % 100_000, n);
        let lab = Lab { prefix };
        run(Command::new(ferrogate_bin()).args([
            "lab",
            "up",
            "--prefix",
            &lab.prefix,
            "--queues",
            &queues.to_string(),
        ]))
        .expect("lab up");
        lab
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

    pub fn start_engine(&self, backend: &str, queues: u32) -> Engine {
        let stats = self.state_dir().join("engine.stats");
        let log = self.state_dir().join("engine.log");
        let logf = std::fs::File::create(&log).unwrap();
        let child = Command::new(ferrogate_bin())
            .arg("run")
            .arg("--config")
            .arg(workspace().join("configs/lab.toml"))
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
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .expect("spawn ferrogate run");
        let e = Engine {
            child: Some(child),
            stats,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.curl(&format!("http://{VIP}/ferrogate/health")).is_ok() {
                return e;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "engine did not answer on the VIP within 20 s; log:\n{}",
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

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    /// Latest counters the engine published (every 250 ms).
    pub fn stats(&self) -> HashMap<String, u64> {
        std::thread::sleep(Duration::from_millis(600));
        parse_stats(&std::fs::read_to_string(&self.stats).unwrap_or_default())
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// SIGTERM and wait; returns the exit status.
    pub fn stop(&mut self) -> Option<std::process::ExitStatus> {
        self.signal_and_wait(libc::SIGTERM)
    }

    pub fn kill9(&mut self) -> Option<std::process::ExitStatus> {
        self.signal_and_wait(libc::SIGKILL)
    }

    fn signal_and_wait(&mut self, sig: i32) -> Option<std::process::ExitStatus> {
        let mut c = self.child.take()?;
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(c.id() as i32, sig) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        c.wait().ok()
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop();
    }
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
