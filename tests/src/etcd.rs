//! Real etcd for the fleet tests: members on free loopback ports, each in
//! its own data directory, killed by PID on drop (even when a test fails).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

static N: AtomicUsize = AtomicUsize::new(0);

/// A loopback port nothing listens on now (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A fresh directory under /tmp, named for this process and `what`.
pub fn temp_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!(
        "fg-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub struct Member {
    pub name: String,
    pub client_port: u16,
    peer_port: u16,
    data: PathBuf,
    log: PathBuf,
    initial_cluster: String,
    token: String,
    child: Option<Child>,
}

impl Member {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let mut cmd = Command::new("etcd");
        // SAFETY: prctl is async-signal-safe and touches no memory of the
        // parent; a test binary killed outright (a CI timeout) takes its
        // etcd members with it instead of leaving them on their ports.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .args(["--name", &self.name])
            .arg("--data-dir")
            .arg(&self.data)
            .args(["--listen-client-urls", &self.url()])
            .args(["--advertise-client-urls", &self.url()])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-token", &self.token])
            // No metrics/pprof listeners of its own beyond the client URL.
            .args(["--log-level", "warn", "--logger", "zap"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("etcd (etcd-server) must be installed: run vendor-setup.sh");
        self.child = Some(child);
    }

    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `GET /health` answers `"health":"true"` (the member has a leader).
    pub fn healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.client_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /health HTTP/1.0\r\nHost: etcd\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.contains("\"health\":\"true\"")
    }
}

/// One etcd cluster of `n` members on loopback.
pub struct Etcd {
    pub members: Vec<Member>,
    dir: PathBuf,
}

impl Etcd {
    pub fn start(n: usize) -> Etcd {
        let dir = temp_dir("etcd");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial_cluster = ports
            .iter()
            .enumerate()
            .map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = dir.file_name().unwrap().to_string_lossy().into_owned();
        let mut e = Etcd {
            members: ports
                .iter()
                .enumerate()
                .map(|(i, &(c, p))| Member {
                    name: format!("m{i}"),
                    client_port: c,
                    peer_port: p,
                    data: dir.join(format!("m{i}.data")),
                    log: dir.join(format!("m{i}.log")),
                    initial_cluster: initial_cluster.clone(),
                    token: token.clone(),
                    child: None,
                })
                .collect(),
            dir,
        };
        for m in &mut e.members {
            m.spawn();
        }
        e.wait_healthy();
        e
    }

    /// Every member's URL, comma-separated.
    pub fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(Member::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The running members' URLs, comma-separated.
    pub fn running_endpoints(&self) -> String {
        self.members
            .iter()
            .filter(|m| m.is_running())
            .map(Member::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits (20 s at most) until every running member is healthy.
    pub fn wait_healthy(&self) {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if self
                .members
                .iter()
                .filter(|m| m.is_running())
                .all(Member::healthy)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("etcd did not become healthy:\n{}", self.logs());
    }

    /// Starts a killed member again on its data directory.
    pub fn restart(&mut self, i: usize) {
        assert!(!self.members[i].is_running());
        self.members[i].spawn();
        self.wait_healthy();
    }

    /// `etcdctl` (v3 API) against the running members.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.running_endpoints()))
            .args(args)
            .output()
            .expect("etcdctl (etcd-client) must be installed: run vendor-setup.sh")
    }

    /// `etcdctl` that must succeed; its stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let o = self.ctl(args);
        assert!(o.status.success(), "etcdctl {args:?}: {o:?}");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The store's current revision.
    pub fn revision(&self) -> i64 {
        let out = self.ctl_ok(&["get", "/", "-w", "json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        v["header"]["revision"].as_i64().expect("a revision")
    }

    pub fn put(&self, key: &str, value: &[u8]) {
        // etcdctl reads the value from stdin when it is not an argument.
        let mut c = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg(format!("--endpoints={}", self.running_endpoints()))
            .args(["put", key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        c.stdin.take().unwrap().write_all(value).unwrap();
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "etcdctl put {key}: {o:?}");
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        self.ctl(&["get", key, "--print-value-only"]).stdout
    }

    pub fn logs(&self) -> String {
        let mut out = String::new();
        for m in &self.members {
            let log = std::fs::read_to_string(&m.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!(
                "--- {} ({}) ---\n{}\n",
                m.name,
                m.url(),
                lines[lines.len().saturating_sub(30)..].join("\n")
            ));
        }
        out
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        for m in &mut self.members {
            m.kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
