//! `idle`: memory per idle keep-alive connection and keep-alive req/s with
//! many idle connections held, ferrogate vs nginx (issue #15).
//!
//! Per contender turn: wrk with no idle connections; memory snapshot; the
//! holder (`ferrogate-bench idle-client`, in the client namespace) opens N
//! connections from several extra client addresses, sends one keep-alive GET
//! on each and reads the answer, then holds them; memory snapshot; wrk again
//! with the N held; the holder checks that all N are still open and resets
//! them. Bytes per connection = ΔRSS of the proxy's process tree / N, plus,
//! for nginx, the kernel's socket memory on the edge side.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::contenders::{self, Contender, NginxTuning, Running};
use crate::env::{LOAD_CPU, Lab, PROXY_CPU, Proc};
use crate::measure::{self, Metrics};
use crate::report::{Report, col};
use crate::scenarios::{self, Ctx};

/// Extra client addresses the held connections come from: one source
/// address has ~64k ports towards one destination (the lab's
/// ip_local_port_range is 1024–65000), so 100k need several. 10.77.0.2
/// stays for wrk. Not used elsewhere in the lab's /24.
const SOURCES: [&str; 5] = [
    "10.77.0.201",
    "10.77.0.202",
    "10.77.0.203",
    "10.77.0.204",
    "10.77.0.205",
];

/// Caches a TCP socket's kernel objects live in (sock, inode, file,
/// dentry, epoll item, port buckets); request/timewait socks for
/// completeness.
const SOCK_CACHES: [&str; 10] = [
    "TCP",
    "request_sock_TCP",
    "tw_sock_TCP",
    "sock_inode_cache",
    "filp",
    "dentry",
    "eppoll_epi",
    "tcp_bind_bucket",
    "tcp_bind2_bucket",
    "inet_peer_cache",
];

// ---------------------------------------------------------------- holder

#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// Destination (the proxy).
    #[arg(long)]
    pub addr: SocketAddrV4,
    #[arg(long, default_value = "/")]
    pub path: String,
    /// Connections to open and hold.
    #[arg(long)]
    pub conns: usize,
    /// Source addresses (comma-separated), used in turn; each must be on
    /// an interface of this namespace.
    #[arg(long, value_delimiter = ',', required = true)]
    pub sources: Vec<Ipv4Addr>,
    /// Connections being opened or awaiting their response at once. Kept
    /// below the proxies' idle upstream pools (64) so that opening does not
    /// burst extra upstream connections (ferrogate keeps a socket slot, with
    /// its buffers, for each one it ever opened).
    #[arg(long, default_value_t = 32)]
    pub window: usize,
    /// Bound of the opening phase; what is open then is held.
    #[arg(long, default_value_t = 120)]
    pub open_secs: u64,
    /// One connection's bound from connect to its whole response.
    #[arg(long, default_value_t = 15)]
    pub conn_timeout_secs: u64,
    /// Longest hold without a command on stdin; then it resets all and exits.
    #[arg(long, default_value_t = 900)]
    pub hold_secs: u64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct OpenReport {
    pub requested: u64,
    /// Connected, answered 2xx, response read whole: held idle.
    pub established: u64,
    pub non2xx: u64,
    /// Closed by the peer (or reset) before the response was whole.
    pub closed_early: u64,
    pub timeouts: u64,
    /// Never attempted: the opening phase's bound came first.
    pub not_started: u64,
    /// errno text -> count, from socket/bind/connect.
    pub connect_errors: BTreeMap<String, u64>,
    pub open_secs: f64,
}

#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    pub still_open: u64,
    /// Readable or hung up while idle: the peer closed (or sent something).
    pub closed_by_peer: u64,
}

#[derive(Clone, Copy, PartialEq)]
enum St {
    Connecting,
    Awaiting,
    Idle,
    Dead,
}

struct Held {
    fd: i32,
    st: St,
    buf: Vec<u8>,
    started: Instant,
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

fn errtext(e: i32) -> String {
    std::io::Error::from_raw_os_error(e).to_string()
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain data; all-zero is valid.
    let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
    s
}

/// A nonblocking connect from `src` (port chosen at connect time, so the
/// port space is per destination) to `dst`. Err(errno).
fn start_connect(src: Ipv4Addr, dst: SocketAddrV4) -> Result<i32, i32> {
    // SAFETY: plain socket syscalls on a descriptor we own; the sockaddr
    // structs live across the calls.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        );
        if fd < 0 {
            return Err(errno());
        }
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let s = sockaddr(SocketAddrV4::new(src, 0));
        if libc::bind(
            fd,
            &s as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            let e = errno();
            libc::close(fd);
            return Err(e);
        }
        let d = sockaddr(dst);
        if libc::connect(
            fd,
            &d as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ) != 0
        {
            let e = errno();
            if e != libc::EINPROGRESS {
                libc::close(fd);
                return Err(e);
            }
        }
        Ok(fd)
    }
}

fn epoll_set(ep: i32, op: i32, fd: i32, events: u32, idx: usize) {
    let mut ev = libc::epoll_event {
        events,
        u64: idx as u64,
    };
    // SAFETY: ev is valid for the call; fd is ours.
    unsafe { libc::epoll_ctl(ep, op, fd, &mut ev) };
}

/// The hard RLIMIT_NOFILE after trying to raise it to `want` (root
/// without CAP_SYS_RESOURCE, as in some sandboxes, cannot), with the soft
/// limit raised to it. Children inherit both.
pub fn raise_nofile(want: u64) -> u64 {
    let mut cur = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with valid structs.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut cur);
        if cur.rlim_max < want {
            let up = libc::rlimit {
                rlim_cur: want,
                rlim_max: want,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &up) == 0 {
                return want;
            }
        }
        let soft = libc::rlimit {
            rlim_cur: cur.rlim_max,
            rlim_max: cur.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &soft);
    }
    cur.rlim_max
}

/// Opens `conns` connections, one GET each, bounded in time.
fn open_all(a: &ClientArgs, held: &mut Vec<Held>) -> Result<OpenReport> {
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: ferrogate-bench-idle\r\n\r\n",
        a.path,
        a.addr.ip()
    );
    let mut r = OpenReport {
        requested: a.conns as u64,
        ..Default::default()
    };
    // SAFETY: epoll_create1 has no preconditions.
    let ep = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if ep < 0 {
        bail!("epoll_create1: {}", std::io::Error::last_os_error());
    }
    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(a.open_secs);
    let conn_timeout = Duration::from_secs(a.conn_timeout_secs);
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 1024];
    let mut rbuf = vec![0u8; 16 * 1024];
    // In-flight connections in start order: the oldest times out first.
    let mut inflight: std::collections::VecDeque<usize> = Default::default();
    let mut attempted = 0usize;
    let mut last_progress = Instant::now();
    let finish = |h: &mut Held, ep: i32| {
        epoll_set(ep, libc::EPOLL_CTL_DEL, h.fd, 0, 0);
        // SAFETY: our descriptor, closed once (state Dead after).
        unsafe { libc::close(h.fd) };
        h.st = St::Dead;
        h.buf = Vec::new();
    };
    loop {
        let now = Instant::now();
        while attempted < a.conns && inflight.len() < a.window && now < deadline {
            let src = a.sources[attempted % a.sources.len()];
            attempted += 1;
            match start_connect(src, a.addr) {
                Ok(fd) => {
                    let idx = held.len();
                    held.push(Held {
                        fd,
                        st: St::Connecting,
                        buf: Vec::new(),
                        started: now,
                    });
                    epoll_set(ep, libc::EPOLL_CTL_ADD, fd, libc::EPOLLOUT as u32, idx);
                    inflight.push_back(idx);
                }
                Err(e) => *r.connect_errors.entry(errtext(e)).or_default() += 1,
            }
        }
        // Drop finished entries at the front, time out stale ones.
        while let Some(&i) = inflight.front() {
            let h = &mut held[i];
            if matches!(h.st, St::Idle | St::Dead) {
                inflight.pop_front();
            } else if now.duration_since(h.started) > conn_timeout || now >= deadline {
                r.timeouts += 1;
                finish(h, ep);
                inflight.pop_front();
            } else {
                break;
            }
        }
        if inflight.is_empty() && (attempted >= a.conns || now >= deadline) {
            break;
        }
        if last_progress.elapsed() > Duration::from_secs(5) {
            eprintln!(
                "idle-client: {} attempted, {} established, {} in flight",
                attempted,
                r.established,
                inflight.len()
            );
            last_progress = Instant::now();
        }
        // SAFETY: events is a valid buffer of its length.
        let n = unsafe { libc::epoll_wait(ep, events.as_mut_ptr(), events.len() as i32, 50) };
        for ev in events.iter().take(n.max(0) as usize) {
            let idx = ev.u64 as usize;
            let flags = ev.events;
            let h = &mut held[idx];
            match h.st {
                St::Connecting => {
                    let mut err: libc::c_int = 0;
                    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
                    // SAFETY: err/len are valid for the call.
                    unsafe {
                        libc::getsockopt(
                            h.fd,
                            libc::SOL_SOCKET,
                            libc::SO_ERROR,
                            &mut err as *mut _ as *mut libc::c_void,
                            &mut len,
                        )
                    };
                    if err != 0 || flags & (libc::EPOLLERR as u32) != 0 {
                        let e = if err != 0 { err } else { libc::ECONNREFUSED };
                        *r.connect_errors.entry(errtext(e)).or_default() += 1;
                        finish(h, ep);
                        continue;
                    }
                    // SAFETY: req outlives the call; fd is ours.
                    let w = unsafe {
                        libc::send(
                            h.fd,
                            req.as_ptr() as *const libc::c_void,
                            req.len(),
                            libc::MSG_NOSIGNAL,
                        )
                    };
                    if w != req.len() as isize {
                        r.closed_early += 1;
                        finish(h, ep);
                        continue;
                    }
                    h.st = St::Awaiting;
                    epoll_set(ep, libc::EPOLL_CTL_MOD, h.fd, libc::EPOLLIN as u32, idx);
                }
                St::Awaiting => {
                    let mut closed = false;
                    loop {
                        // SAFETY: rbuf is valid for its length.
                        let k = unsafe {
                            libc::recv(h.fd, rbuf.as_mut_ptr() as *mut libc::c_void, rbuf.len(), 0)
                        };
                        if k > 0 {
                            h.buf.extend_from_slice(&rbuf[..k as usize]);
                        } else if k == 0 || errno() != libc::EAGAIN {
                            closed = true;
                            break;
                        } else {
                            break;
                        }
                    }
                    match crate::loadgen::complete(&h.buf) {
                        Some((status, used)) if used == h.buf.len() => {
                            if (200..300).contains(&status) && !closed {
                                // Held: no more events wanted until the check.
                                epoll_set(ep, libc::EPOLL_CTL_DEL, h.fd, 0, 0);
                                h.st = St::Idle;
                                h.buf = Vec::new();
                                r.established += 1;
                            } else {
                                if closed {
                                    r.closed_early += 1;
                                } else {
                                    r.non2xx += 1;
                                }
                                finish(h, ep);
                            }
                        }
                        Some(_) => {
                            // More than one response: not a plain keep-alive answer.
                            r.non2xx += 1;
                            finish(h, ep);
                        }
                        None if closed => {
                            r.closed_early += 1;
                            finish(h, ep);
                        }
                        None => {}
                    }
                }
                St::Idle | St::Dead => {}
            }
        }
    }
    r.not_started = (a.conns - attempted) as u64;
    r.open_secs = t0.elapsed().as_secs_f64();
    // SAFETY: our epoll descriptor.
    unsafe { libc::close(ep) };
    Ok(r)
}

fn check_all(held: &[Held]) -> CheckReport {
    let idle: Vec<&Held> = held.iter().filter(|h| h.st == St::Idle).collect();
    let mut pfds: Vec<libc::pollfd> = idle
        .iter()
        .map(|h| libc::pollfd {
            fd: h.fd,
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        })
        .collect();
    // SAFETY: pfds is a valid array for the call.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, 0) };
    let closed = pfds.iter().filter(|p| p.revents != 0).count() as u64;
    CheckReport {
        still_open: idle.len() as u64 - closed,
        closed_by_peer: closed,
    }
}

/// Closes every connection with a reset (SO_LINGER 0): no TIME_WAIT left
/// on the client, the proxy frees its side at once.
fn reset_all(held: &mut [Held]) {
    let lin = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    for h in held.iter_mut().filter(|h| h.st != St::Dead) {
        // SAFETY: our descriptor; lin is valid for the call.
        unsafe {
            libc::setsockopt(
                h.fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &lin as *const _ as *const libc::c_void,
                std::mem::size_of::<libc::linger>() as libc::socklen_t,
            );
            libc::close(h.fd);
        }
        h.st = St::Dead;
    }
}

/// Waits for a command line on stdin for at most `limit`.
fn read_command(limit: Duration) -> Option<String> {
    let mut p = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, limit.as_millis().min(i32::MAX as u128) as i32) };
    if n <= 0 {
        return None;
    }
    let mut line = String::new();
    match std::io::stdin().lock().read_line(&mut line) {
        Ok(0) | Err(_) => None,
        Ok(_) => Some(line.trim().to_string()),
    }
}

/// `ferrogate-bench idle-client`: prints one JSON line after opening
/// (OpenReport), then holds; `check` on stdin prints a CheckReport,
/// `close` (or EOF, or `hold_secs` without a command) resets everything and
/// exits.
pub fn run_client(a: &ClientArgs) -> Result<()> {
    if a.sources.is_empty() || a.conns == 0 {
        bail!("--sources and --conns > 0 are needed");
    }
    let want = a.conns as u64 + 64;
    let got = raise_nofile(want);
    if got < want {
        bail!(
            "RLIMIT_NOFILE is {got} and cannot be raised to {want}: run several holders with fewer --conns each"
        );
    }
    let mut held = Vec::with_capacity(a.conns);
    let r = open_all(a, &mut held)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&r)?)?;
    out.flush()?;
    let hold_until = Instant::now() + Duration::from_secs(a.hold_secs);
    loop {
        let left = hold_until.saturating_duration_since(Instant::now());
        match read_command(left).as_deref() {
            Some("check") => {
                writeln!(out, "{}", serde_json::to_string(&check_all(&held))?)?;
                out.flush()?;
            }
            Some("") => {}
            _ => break,
        }
    }
    reset_all(&mut held);
    writeln!(out, "{{\"closed\":true}}")?;
    Ok(())
}

// ------------------------------------------------------------ bench side

/// The extra client addresses, removed on drop.
struct ClientAddrs<'a> {
    lab: &'a Lab,
    added: Vec<String>,
}

impl<'a> ClientAddrs<'a> {
    fn add(lab: &'a Lab) -> Result<ClientAddrs<'a>> {
        let mut g = ClientAddrs {
            lab,
            added: Vec::new(),
        };
        for a in SOURCES {
            let cidr = format!("{a}/32");
            lab.exec("client", &["ip", "addr", "add", &cidr, "dev", "eth0"])
                .with_context(|| format!("adding {cidr} to the client's eth0"))?;
            g.added.push(cidr);
        }
        Ok(g)
    }
}

impl Drop for ClientAddrs<'_> {
    fn drop(&mut self) {
        for c in &self.added {
            let _ = self
                .lab
                .exec("client", &["ip", "addr", "del", c, "dev", "eth0"]);
        }
    }
}

/// The holder process, talked to over its stdin/stdout.
struct Holder {
    proc: Proc,
    stdin: std::process::ChildStdin,
    lines: mpsc::Receiver<String>,
    command: String,
    log: PathBuf,
}

impl Holder {
    fn start(lab: &Lab, addr: &str, n: usize, smoke: bool, index: usize) -> Result<Holder> {
        let exe = std::env::current_exe()?.display().to_string();
        let conns = n.to_string();
        let sources = SOURCES.join(",");
        let open_secs = if smoke { "30" } else { "180" };
        let argv = [
            exe.as_str(),
            "idle-client",
            "--addr",
            addr,
            "--conns",
            &conns,
            "--sources",
            &sources,
            "--open-secs",
            open_secs,
            "--window",
            "32",
            "--hold-secs",
            "900",
        ];
        let mut c = lab.pinned("client", LOAD_CPU, &argv);
        let command = measure::cmdline(&c);
        let log = lab.bench_dir().join(format!("idle-client-{index}.log"));
        let (proc, stdin, stdout) = Proc::spawn_piped("idle-client", &mut c, &log)?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Ok(Holder {
            proc,
            stdin,
            lines,
            command,
            log,
        })
    }

    fn next_line(&mut self, limit: Duration) -> Result<String> {
        self.lines.recv_timeout(limit).map_err(|e| {
            let mut log = String::new();
            let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut log));
            let why = match e {
                mpsc::RecvTimeoutError::Timeout => format!("said nothing within {limit:?}"),
                mpsc::RecvTimeoutError::Disconnected => "closed its output".to_string(),
            };
            anyhow::anyhow!(
                "idle-client {why} (exited: {:?}); log:\n{}",
                self.proc.exited(),
                log.trim()
            )
        })
    }

    fn opened(&mut self, smoke: bool) -> Result<OpenReport> {
        let limit = Duration::from_secs(if smoke { 60 } else { 240 });
        let l = self.next_line(limit)?;
        serde_json::from_str(&l).with_context(|| format!("idle-client: {l}"))
    }

    fn check(&mut self) -> Result<CheckReport> {
        writeln!(self.stdin, "check")?;
        let l = self.next_line(Duration::from_secs(30))?;
        serde_json::from_str(&l).with_context(|| format!("idle-client: {l}"))
    }

    /// Resets every connection and waits for the holder to exit.
    fn close(mut self) -> Result<()> {
        writeln!(self.stdin, "close")?;
        let l = self.next_line(Duration::from_secs(60))?;
        if !l.contains("closed") {
            bail!("idle-client: unexpected {l:?}");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.proc.exited().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc.stop();
        Ok(())
    }
}

/// The holders of one turn: one process holds at most `per_proc`
/// connections (RLIMIT_NOFILE); they open one after the other, so the
/// opening concurrency stays one holder's window.
struct Holders {
    list: Vec<Holder>,
}

impl Holders {
    fn open(
        lab: &Lab,
        addr: &str,
        n: usize,
        per_proc: usize,
        smoke: bool,
    ) -> Result<(Holders, OpenReport, Vec<String>)> {
        let mut hs = Holders { list: Vec::new() };
        let mut total = OpenReport::default();
        let mut cmds = Vec::new();
        let mut left = n;
        while left > 0 {
            let k = left.min(per_proc);
            let mut h = Holder::start(lab, addr, k, smoke, hs.list.len())?;
            cmds.push(h.command.clone());
            let r = h.opened(smoke);
            hs.list.push(h);
            let r = r?;
            total.requested += r.requested;
            total.established += r.established;
            total.non2xx += r.non2xx;
            total.closed_early += r.closed_early;
            total.timeouts += r.timeouts;
            total.not_started += r.not_started;
            total.open_secs += r.open_secs;
            for (e, c) in r.connect_errors {
                *total.connect_errors.entry(e).or_default() += c;
            }
            left -= k;
        }
        Ok((hs, total, cmds))
    }

    fn check(&mut self) -> Result<CheckReport> {
        let mut t = CheckReport::default();
        for h in &mut self.list {
            let c = h.check()?;
            t.still_open += c.still_open;
            t.closed_by_peer += c.closed_by_peer;
        }
        Ok(t)
    }

    fn close(self) -> Result<()> {
        for h in self.list {
            h.close()?;
        }
        Ok(())
    }
}

/// Memory of the proxy and of the kernel at one moment.
#[derive(Debug, Default)]
struct MemSnap {
    /// VmRSS of the proxy's process tree (nginx master + worker;
    /// ferrogate supervisor + engine + control daemon), KiB.
    tree_rss_kb: u64,
    /// ferrogate's engine process alone, KiB.
    engine_rss_kb: u64,
    /// Bytes in SOCK_CACHES slabs (pages held).
    sock_slab_b: u64,
    /// /proc/meminfo Slab, KiB.
    slab_kb: u64,
    /// TCP buffer memory (sockstat `mem`, pages, machine-wide).
    tcp_mem_pages: u64,
}

pub(crate) fn proc_status_kb(pid: i32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix(':')?;
            v.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

/// `root` and all its descendants.
fn process_tree(root: i32) -> Vec<i32> {
    let mut parent: Vec<(i32, i32)> = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // Field 4 (ppid) is the second after the ")" that ends comm.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1)?.parse().ok())
            .unwrap_or(0);
        parent.push((pid, ppid));
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent.iter().filter(|x| x.1 == p).map(|x| x.0));
        i += 1;
    }
    tree
}

fn is_engine(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| c.split(|&b| b == 0).nth(1) == Some(b"engine"))
        .unwrap_or(false)
}

fn sock_slab_bytes() -> u64 {
    let page = 4096u64;
    std::fs::read_to_string("/proc/slabinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 16 || !SOCK_CACHES.contains(&f[0]) {
                return None;
            }
            // name active num objsize perslab pagesperslab : tunables l b s
            // : slabdata active_slabs num_slabs shared
            let pages_per_slab: u64 = f[5].parse().ok()?;
            let num_slabs: u64 = f[14].parse().ok()?;
            Some(num_slabs * pages_per_slab * page)
        })
        .sum()
}

fn meminfo_kb(key: &str) -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let v = l.strip_prefix(key)?.strip_prefix(':')?;
            v.split_whitespace().next()?.parse().ok()
        })
        .unwrap_or(0)
}

fn tcp_mem_pages() -> u64 {
    std::fs::read_to_string("/proc/net/sockstat")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let r = l.strip_prefix("TCP:")?;
            let f: Vec<&str> = r.split_whitespace().collect();
            let i = f.iter().position(|x| *x == "mem")?;
            f.get(i + 1)?.parse().ok()
        })
        .unwrap_or(0)
}

impl MemSnap {
    fn take(root: i32) -> MemSnap {
        let tree = process_tree(root);
        MemSnap {
            tree_rss_kb: tree.iter().map(|&p| proc_status_kb(p, "VmRSS")).sum(),
            engine_rss_kb: tree
                .iter()
                .filter(|&&p| is_engine(p))
                .map(|&p| proc_status_kb(p, "VmRSS"))
                .sum(),
            sock_slab_b: sock_slab_bytes(),
            slab_kb: meminfo_kb("Slab"),
            tcp_mem_pages: tcp_mem_pages(),
        }
    }
}

fn delta(a: u64, b: u64) -> f64 {
    b as f64 - a as f64
}

/// ferrogate's config for the turn: room for N client connections, the
/// given socket buffers, and idle timeouts longer than the turn.
fn ferrogate_config(ctx: &Ctx, n: usize) -> Result<PathBuf> {
    let p = contenders::ferrogate_config_tuned(
        &ctx.lab,
        1,
        &PROXY_CPU.to_string(),
        "\n[timeouts]\nclient_idle_ms = 900000\n",
        "ferrogate-idle.toml",
    )?;
    let text = std::fs::read_to_string(&p)?;
    let engine = format!(
        "[engine]\nmax_connections = {}\ntcp_buffer = {}\n",
        n + 4096,
        ctx.opts.tcp_buffer
    );
    if !text.contains("[engine]\n") {
        bail!("no [engine] section in {}", p.display());
    }
    std::fs::write(&p, text.replacen("[engine]\n", &engine, 1))?;
    Ok(p)
}

fn fg_delta(
    a: &std::collections::HashMap<String, u64>,
    b: &std::collections::HashMap<String, u64>,
    k: &str,
) -> f64 {
    delta(
        a.get(k).copied().unwrap_or(0),
        b.get(k).copied().unwrap_or(0),
    )
}

/// One contender's turn. Metrics even when the holder fell short; the
/// error says by how much.
/// Descriptors per process, and what follows from it for N connections.
struct Limits {
    nofile: u64,
    /// Connections one holder process takes.
    per_proc: usize,
    nginx_workers: u32,
    nginx_worker_connections: u32,
}

impl Limits {
    fn for_conns(n: usize) -> Limits {
        let nofile = raise_nofile(n as u64 + 8192);
        let per_proc = (nofile.saturating_sub(100) as usize).max(1000);
        // Room for wrk's 50, the upstream pool and reuseport's uneven spread.
        let per_worker = (nofile.saturating_sub(3000) as usize).max(1000);
        let workers = (n + 4096).div_ceil(per_worker).max(1);
        Limits {
            nofile,
            per_proc,
            nginx_workers: workers as u32,
            nginx_worker_connections: (nofile.saturating_sub(1000) as usize)
                .min((n + 4096).div_ceil(workers) + 2048)
                as u32,
        }
    }
}

fn turn(
    ctx: &Ctx,
    who: Contender,
    fg_cfg: &std::path::Path,
    limits: &Limits,
) -> (Metrics, Vec<String>, Option<String>) {
    let n = ctx.opts.idle_conns;
    let mut cmds = Vec::new();
    let mut m = Metrics::new();
    let started = match who {
        Contender::Ferrogate => contenders::start(&ctx.lab, who, Some(fg_cfg)),
        _ => contenders::start_tuned(
            &ctx.lab,
            who,
            None,
            1,
            &PROXY_CPU.to_string(),
            &NginxTuning {
                worker_processes: limits.nginx_workers,
                worker_connections: limits.nginx_worker_connections,
                rlimit_nofile: Some(limits.nofile),
                http_extra: "  keepalive_timeout 900s;\n".into(),
            },
        ),
    };
    let mut run = match started {
        Ok(r) => r,
        Err(e) => return (m, cmds, Some(format!("{e:#}"))),
    };
    cmds.push(run.command.clone());
    let res = measure_turn(ctx, &run, n, limits, &mut m, &mut cmds);
    run.stop();
    if let Err(e) = res {
        return (m, cmds, Some(format!("{e:#}")));
    }
    let established = m.get("idle_conns").copied().unwrap_or(0.0);
    let still = m.get("still_open").copied().unwrap_or(0.0);
    let err = if established < n as f64 {
        Some(format!(
            "{} of {n} idle connections established (see idle_* in the JSON)",
            established
        ))
    } else if still < established {
        Some(format!(
            "{} of {established} idle connections were closed by the proxy while held",
            established - still
        ))
    } else {
        None
    };
    (m, cmds, err)
}

fn measure_turn(
    ctx: &Ctx,
    run: &Running,
    n: usize,
    limits: &Limits,
    m: &mut Metrics,
    cmds: &mut Vec<String>,
) -> Result<()> {
    let smoke = ctx.opts.smoke;
    let root = run
        .proc
        .as_ref()
        .and_then(|p| p.pid())
        .context("the proxy has no process")?;
    // Keep-alive req/s with no idle connections (also warms the proxy: its
    // UMEM frames, pools and buffers are touched before the first snapshot).
    let (m0, c0) = scenarios::wrk_turn(ctx, run, "/", None)?;
    cmds.extend(c0.into_iter().skip(1));
    std::thread::sleep(Duration::from_secs(1));
    let fg0 = run.stats();
    let mem0 = MemSnap::take(root);
    let (mut holder, open, hcmds) =
        Holders::open(&ctx.lab, &run.who.addr(), n, limits.per_proc, smoke)?;
    cmds.extend(hcmds);
    // Let the proxy settle (timers, stats file, lazily freed memory).
    std::thread::sleep(Duration::from_secs(if smoke { 1 } else { 3 }));
    let fg1 = run.stats();
    let mem1 = MemSnap::take(root);
    let conntrack = ctx
        .lab
        .exec(
            "client",
            &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
        )
        .ok()
        .and_then(|s| s.trim().parse::<f64>().ok());
    let (m1, c1) = scenarios::wrk_turn(ctx, run, "/", None)?;
    cmds.extend(c1.into_iter().skip(1));
    let check = holder.check()?;
    holder.close()?;

    let k = (open.established as f64).max(1.0);
    m.insert("idle_requested".into(), n as f64);
    m.insert("idle_conns".into(), open.established as f64);
    m.insert("idle_open_secs".into(), open.open_secs);
    m.insert("idle_non2xx".into(), open.non2xx as f64);
    m.insert("idle_closed_early".into(), open.closed_early as f64);
    m.insert("idle_timeouts".into(), open.timeouts as f64);
    m.insert("idle_not_started".into(), open.not_started as f64);
    m.insert(
        "idle_connect_errors".into(),
        open.connect_errors.values().sum::<u64>() as f64,
    );
    m.insert("still_open".into(), check.still_open as f64);
    m.insert("closed_by_peer".into(), check.closed_by_peer as f64);
    if let Some(c) = conntrack {
        m.insert("client_conntrack_entries".into(), c);
    }
    let rss_d = delta(mem0.tree_rss_kb, mem1.tree_rss_kb) * 1024.0;
    m.insert("rss_start_mib".into(), mem0.tree_rss_kb as f64 / 1024.0);
    m.insert("rss_idle_mib".into(), mem1.tree_rss_kb as f64 / 1024.0);
    m.insert("rss_delta_mib".into(), rss_d / 1048576.0);
    m.insert("rss_b_per_conn".into(), rss_d / k);
    let kern = delta(mem0.sock_slab_b, mem1.sock_slab_b)
        + delta(mem0.tcp_mem_pages, mem1.tcp_mem_pages) * 4096.0;
    m.insert("kernel_sock_b_per_conn".into(), kern / k);
    m.insert(
        "kernel_slab_total_b_per_conn".into(),
        delta(mem0.slab_kb, mem1.slab_kb) * 1024.0 / k,
    );
    m.insert(
        "tcp_mem_pages_delta".into(),
        delta(mem0.tcp_mem_pages, mem1.tcp_mem_pages),
    );
    m.insert("rps_none".into(), m0["rps"]);
    m.insert("rps_idle".into(), m1["rps"]);
    m.insert("rps_ratio".into(), m1["rps"] / m0["rps"].max(1.0));
    m.insert("p99_us_none".into(), m0["p99_us"]);
    m.insert("p99_us_idle".into(), m1["p99_us"]);
    for (key, src) in [("proxy_us_none", &m0), ("proxy_us_idle", &m1)] {
        if let Some(v) = src.get("proxy_us_per_op") {
            m.insert(key.into(), *v);
        }
    }
    if run.who == Contender::Ferrogate {
        // The engine has no kernel socket per connection (AF_XDP; its UMEM
        // is fixed and in its RSS).
        m.insert("edge_kernel_b_per_conn".into(), 0.0);
        m.insert("edge_total_b_per_conn".into(), rss_d / k);
        m.insert(
            "engine_rss_b_per_conn".into(),
            delta(mem0.engine_rss_kb, mem1.engine_rss_kb) * 1024.0 / k,
        );
        for key in [
            "stack_active_connections",
            "stack_upstream_idle",
            "stack_overload_rejected",
            "stack_sockets_parked",
        ] {
            m.insert(
                format!("fg_{key}"),
                fg1.get(key).copied().unwrap_or(0) as f64,
            );
        }
        for key in [
            "stack_sockets_created",
            "stack_accepted",
            "stack_upstream_connects",
            "stack_rx_rst_no_socket",
            "stack_socket_buffers_allocated",
            "stack_conn_buffers_allocated",
        ] {
            m.insert(format!("fg_{key}_delta"), fg_delta(&fg0, &fg1, key));
        }
    }
    Ok(())
}

const MEM_NOTE: &str = "proxy RSS Δ B/conn = (VmRSS of the proxy's process tree with N idle connections held − just before opening them, after a wrk run) ÷ N. nginx: master + workers; ferrogate: supervisor + engine + control daemon (`engine_rss_b_per_conn` in the JSON is the engine alone). What a proxy preallocates at start for its connection limit is outside the Δ: each nginx worker allocates worker_connections connection and event structs at start; ferrogate sizes its socket table's index for max_connections (N + 4096) — the `RSS MiB at start` column shows both.";

const KERNEL_NOTE: &str = "Kernel memory is not in any RSS. `kernel Δ B/conn` = Δ of the slab pages of the socket caches (TCP, sock_inode_cache, filp, dentry, eppoll_epi, bind buckets, request/timewait socks; /proc/slabinfo) + Δ TCP buffer pages (/proc/net/sockstat `mem`), machine-wide, ÷ N: it holds the N client sockets of the holder in both turns, and nginx's N accepted sockets in its turn. `edge kernel B/conn` (nginx) = nginx's kernel Δ − ferrogate's in the same round (the client side is the same); ferrogate's is 0: the engine holds no kernel socket per connection. `edge total` = RSS Δ + edge kernel: the fair per-connection comparison. `kernel_slab_total_b_per_conn` in the JSON is the coarser /proc/meminfo Slab Δ.";

pub fn scenario(ctx: &Ctx) -> Result<Report> {
    let o = &ctx.opts;
    let n = o.idle_conns;
    if n == 0 {
        bail!("--idle-conns must be > 0");
    }
    let mut r = Report::new("idle", ctx.meta.clone());
    scenarios::settings(ctx, &mut r);
    r.settings
        .insert("idle connections (N)".into(), n.to_string());
    r.settings.insert(
        "ferrogate engine.tcp_buffer".into(),
        o.tcp_buffer.to_string(),
    );
    let limits = Limits::for_conns(n);
    r.settings.insert(
        "ferrogate engine.max_connections".into(),
        (n + 4096).to_string(),
    );
    r.settings.insert(
        "nginx worker_processes x worker_connections".into(),
        format!(
            "{} x {} (all on CPU {PROXY_CPU})",
            limits.nginx_workers, limits.nginx_worker_connections
        ),
    );
    r.settings.insert(
        "RLIMIT_NOFILE (hard, after trying to raise it)".into(),
        limits.nofile.to_string(),
    );
    r.settings.insert(
        "connections per holder process".into(),
        limits.per_proc.min(n).to_string(),
    );
    if (limits.nofile as usize) < n + 8192 {
        r.notes.push(format!("RLIMIT_NOFILE could not be raised above {} here (root without CAP_SYS_RESOURCE): one process cannot hold N sockets, so the holder runs as {} processes (one after the other) and nginx as {} workers, all pinned to CPU {PROXY_CPU} (`listen … reuseport` spreads connections over them). nginx's RSS is that of the master and all workers; each worker's fixed memory is outside the Δ (started before), but nginx's req/s here comes from {} workers sharing one core, not the 1 worker of `http`.", limits.nofile, n.div_ceil(limits.per_proc), limits.nginx_workers, limits.nginx_workers));
    }
    r.settings.insert(
        "idle timeouts".into(),
        "ferrogate timeouts.client_idle_ms = 900000; nginx keepalive_timeout 900s".into(),
    );
    r.settings
        .insert("holder source addresses".into(), SOURCES.join(", "));
    for (k, path) in [
        ("client ip_local_port_range", "net/ipv4/ip_local_port_range"),
        ("client nf_conntrack_max", "net/netfilter/nf_conntrack_max"),
        ("edge somaxconn", "net/core/somaxconn"),
    ] {
        let role = if k.starts_with("edge") {
            "edge"
        } else {
            "client"
        };
        let v = ctx
            .lab
            .exec(role, &["cat", &format!("/proc/sys/{path}")])
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "absent".into());
        r.settings.insert(k.into(), v);
    }
    // Not per namespace: the machine's.
    r.settings.insert(
        "tcp_mem (pages, machine)".into(),
        std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem")
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_else(|_| "absent".into()),
    );
    r.columns = vec![
        col("idle_conns", "idle conns", 1.0),
        col("rss_b_per_conn", "proxy RSS Δ B/conn", 1.0),
        col("edge_kernel_b_per_conn", "edge kernel B/conn", 1.0),
        col("edge_total_b_per_conn", "edge total B/conn", 1.0),
        col(
            "kernel_sock_b_per_conn",
            "kernel Δ B/conn (client+edge)",
            1.0,
        ),
        col("rss_start_mib", "RSS MiB at start", 1.0),
        col("rss_idle_mib", "RSS MiB with N idle", 1.0),
        col("rps_none", "req/s 0 idle", 1.0),
        col("rps_idle", "req/s N idle", 1.0),
        col("rps_ratio", "req/s N idle / 0 idle", 1.0),
    ];
    r.ratios = vec![scenarios::ratio(
        "edge_total_b_per_conn",
        "edge B/conn vs nginx",
        "nginx",
    )];
    r.plots = vec![
        (
            "edge_total_b_per_conn".into(),
            format!("idle: bytes per idle keep-alive connection (N = {n}, RSS + edge kernel)"),
        ),
        (
            "rps_ratio".into(),
            format!("idle: keep-alive req/s with {n} idle / with none"),
        ),
    ];
    r.notes.push(format!("Each turn: start the proxy; wrk (tiny body, {} connections) with no idle connections; snapshot; `ferrogate-bench idle-client` in the client namespace opens N connections from {} extra client addresses (/32 on the client's eth0, removed after), sends one keep-alive GET on each and reads the whole 2xx response, then holds them; 1–3 s later snapshot; wrk again with the N held; the holder checks that every connection is still open (no FIN/RST/data pending) and resets them all (SO_LINGER 0). Goal (#15): ≤ 4096 B per idle connection, req/s ratio ≥ 0.9.", o.conns, SOURCES.len()));
    r.notes.push(MEM_NOTE.into());
    r.notes.push(KERNEL_NOTE.into());
    r.notes.push("An idle keep-alive client connection has no upstream socket in either proxy: upstream connections are pooled per worker (ferrogate: `fg_stack_upstream_idle` in the JSON; nginx: `keepalive 64`). ferrogate's own view, in the JSON: `fg_stack_active_connections`, `fg_stack_sockets_created_delta` (socket slots created for the N), `fg_stack_sockets_parked` (sockets holding no payload buffers: idle ones give theirs back to the worker's pool), `fg_stack_socket_buffers_allocated_delta` / `fg_stack_conn_buffers_allocated_delta` (buffer sets allocated while opening the N).".into());
    r.notes.push(scenarios::CPU_NOTE.into());
    let _addrs = ClientAddrs::add(&ctx.lab)?;
    let fg_cfg = ferrogate_config(ctx, n)?;
    for round in 0..o.rounds {
        let first = r.samples.len();
        for who in [Contender::Ferrogate, Contender::Nginx] {
            eprintln!("idle round {round}: {} ({n} idle)", who.name());
            let (m, cmds, err) = turn(ctx, who, &fg_cfg, &limits);
            r.samples
                .push(scenarios::sample("idle", who.name(), round, m, cmds, err));
        }
        // nginx's edge-side kernel memory: its turn minus ferrogate's (same
        // holder, same client sockets).
        let fg = r.samples[first..]
            .iter()
            .find(|s| s.contender == "ferrogate" && s.error.is_none())
            .and_then(|s| s.metrics.get("kernel_sock_b_per_conn").copied());
        if let Some(fgk) = fg {
            for s in &mut r.samples[first..] {
                if s.contender == "nginx" && s.error.is_none() {
                    let ek = s.metrics["kernel_sock_b_per_conn"] - fgk;
                    let rss = s.metrics["rss_b_per_conn"];
                    s.metrics.insert("edge_kernel_b_per_conn".into(), ek);
                    s.metrics.insert("edge_total_b_per_conn".into(), rss + ek);
                }
            }
        }
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_tree_and_rss() {
        let me = std::process::id() as i32;
        assert!(process_tree(me).contains(&me));
        assert!(proc_status_kb(me, "VmRSS") > 0);
        assert!(!is_engine(me));
    }
}
