//! The binary-upgrade handshake between two `ferrogate engine` processes
//! over `<state_dir>/upgrade.sock`:
//!
//! 1. the successor, with everything loaded and checked, connects and sends
//!    `{"queues":N,"pid":P,"version":V}` with the relay region's memfd
//!    (SCM_RIGHTS);
//! 2. the running engine lets go of its NIC queues
//!    ([`Engine::hand_over`](ferrogate_engine::Engine::hand_over)), frees its
//!    socket paths, and answers with the ports its workers hold and the XDP
//!    counters (or `{"ok":false,"error":…}`, keeping everything);
//! 3. the successor binds the queues and answers `serving`; the old engine
//!    drains through the relay and exits.

use std::io::Read;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use anyhow::{Context, Result};
use ferrogate_engine::relay::{RelayShm, recv_fd, send_fd};
use ferrogate_engine::{EngineError, HandedOver, Predecessor};
use serde::{Deserialize, Serialize};

/// How long either side waits for the other's next message.
const STEP_TIMEOUT: Duration = Duration::from_secs(20);

/// A successor's exit code when it failed before its predecessor let go of
/// anything: the running engine serves on untouched.
pub const UNTOUCHED_EXIT: i32 = 3;

/// An engine's exit code when it handed its NIC queues to a successor that
/// then failed: nothing reaches it any more, and the supervisor starts a
/// fresh engine (any other exit after a failed upgrade is judged as usual).
pub const ORPHANED_EXIT: i32 = 4;

/// Why an engine that handed its NIC queues over ended: its successor
/// failed (`main` exits with [`ORPHANED_EXIT`]).
#[derive(Debug, thiserror::Error)]
#[error("the successor failed after the NIC hand-over")]
pub struct Orphaned;

/// Set once a successor sent its hello: from then on the running engine may
/// have let go, and a failure is not "untouched" (unless it refused).
static HELLO_SENT: AtomicBool = AtomicBool::new(false);

/// Whether a failure of this (successor) process may have touched the
/// running engine.
pub fn may_have_touched() -> bool {
    HELLO_SENT.load(Ordering::SeqCst)
}

/// How long a predecessor waits for the successor to say it serves (its
/// bind wait and start-up after the hand-over are far shorter).
const SERVING_TIMEOUT: Duration = Duration::from_secs(120);

/// A request's fate, decided once by whichever side gets there first.
const PENDING: u8 = 0;
const TAKEN: u8 = 1;
const CANCELLED: u8 = 2;

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join("upgrade.sock")
}

#[derive(Serialize, Deserialize)]
struct Hello {
    queues: u32,
    pid: u32,
    version: String,
}

#[derive(Serialize, Deserialize, Default)]
struct Reply {
    ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    error: String,
    #[serde(default)]
    held_ports: Vec<Vec<u16>>,
    /// `[name, packets, bytes]`.
    #[serde(default)]
    xdp_program: Vec<(String, u64, u64)>,
    #[serde(default)]
    xdp_rules: Vec<(String, u64, u64)>,
    #[serde(default)]
    xdp_counters: bool,
    /// The predecessor's QUIC generation (an older binary: 0).
    #[serde(default)]
    quic_generation: u8,
}

impl Reply {
    fn of(h: &HandedOver) -> Self {
        let flat = |v: &[(String, ferrogate_ebpf::Verdict)]| {
            v.iter()
                .map(|(k, c)| (k.clone(), c.packets, c.bytes))
                .collect()
        };
        Reply {
            ok: true,
            held_ports: h.held_ports.clone(),
            xdp_program: h
                .xdp_counters
                .as_ref()
                .map(|t| flat(&t.program))
                .unwrap_or_default(),
            xdp_rules: h
                .xdp_counters
                .as_ref()
                .map(|t| flat(&t.rules))
                .unwrap_or_default(),
            xdp_counters: h.xdp_counters.is_some(),
            quic_generation: h.quic_generation,
            ..Default::default()
        }
    }

    fn handed_over(self) -> HandedOver {
        let unflat = |v: Vec<(String, u64, u64)>| {
            v.into_iter()
                .map(|(k, packets, bytes)| (k, ferrogate_ebpf::Verdict { packets, bytes }))
                .collect()
        };
        HandedOver {
            held_ports: self.held_ports,
            xdp_counters: self.xdp_counters.then(|| ferrogate_ebpf::CounterTotals {
                program: unflat(self.xdp_program),
                rules: unflat(self.xdp_rules),
            }),
            quic_generation: self.quic_generation,
        }
    }
}

/// A successor asking the running engine (the main loop owns it) to let go.
pub struct Request {
    pub relay: Arc<RelayShm>,
    pub successor_pid: u32,
    pub reply: mpsc::Sender<std::result::Result<HandedOver, String>>,
    /// Set when the successor failed or went away after the hand-over:
    /// nothing reaches this engine any more.
    pub successor_failed: Arc<AtomicBool>,
    state: Arc<AtomicU8>,
}

impl Request {
    /// Claims the request for the hand-over; false when the successor's
    /// session gave up on it meanwhile (then it must not be acted on).
    pub fn take(&self) -> bool {
        self.state
            .compare_exchange(PENDING, TAKEN, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    }
}

/// Serves `<state_dir>/upgrade.sock` on a thread; requests come out of the
/// returned channel, for the loop that owns the engine.
pub fn listen(state_dir: &Path) -> Result<mpsc::Receiver<Request>> {
    let path = socket_path(state_dir);
    let listener = crate::admin::bind(&path).context("the binary-upgrade socket")?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("fg-upgrade".into())
        .spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                // One upgrade at a time: a successor holds the loop.
                if let Err(e) = session(stream, &tx) {
                    tracing::error!(error = %format!("{e:#}"), "binary upgrade refused");
                }
            }
        })
        .context("spawning the upgrade listener")?;
    Ok(rx)
}

fn session(stream: UnixStream, tx: &mpsc::Sender<Request>) -> Result<()> {
    stream.set_read_timeout(Some(STEP_TIMEOUT))?;
    let mut buf = vec![0u8; 4096];
    let (n, fd) = recv_fd(stream.as_raw_fd(), &mut buf).context("reading the successor's hello")?;
    let mut w = stream.try_clone()?;
    let refuse = |w: &mut UnixStream, why: String| -> Result<()> {
        let r = Reply {
            error: why.clone(),
            ..Default::default()
        };
        let _ = writeln!(w, "{}", serde_json::to_string(&r)?);
        anyhow::bail!(why)
    };
    let hello: Hello = match serde_json::from_slice(&buf[..n]) {
        Ok(h) => h,
        Err(e) => return refuse(&mut w, format!("bad hello: {e}")),
    };
    let Some(fd) = fd else {
        return refuse(&mut w, "the hello carried no relay region".into());
    };
    let relay = match RelayShm::open(fd, hello.queues) {
        Ok(r) => r,
        Err(e) => return refuse(&mut w, format!("relay region: {e}")),
    };
    tracing::info!(successor_pid = hello.pid, successor_version = %hello.version, queues = hello.queues, "a successor asks for the NIC queues");
    let (rtx, rrx) = mpsc::channel();
    let failed = Arc::new(AtomicBool::new(false));
    let state = Arc::new(AtomicU8::new(PENDING));
    tx.send(Request {
        relay,
        successor_pid: hello.pid,
        reply: rtx,
        successor_failed: failed.clone(),
        state: state.clone(),
    })
    .context("the engine loop has ended")?;
    let answer = match rrx.recv_timeout(STEP_TIMEOUT) {
        Ok(a) => a,
        Err(_) => {
            if state
                .compare_exchange(PENDING, CANCELLED, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                return refuse(&mut w, "the engine loop did not answer".into());
            }
            // The loop took it just now: the hand-over is under way (and
            // bounded); its answer is the one that counts.
            rrx.recv()
                .unwrap_or_else(|_| Err("the engine loop has ended".into()))
        }
    };
    let handed = match answer {
        Ok(h) => h,
        Err(e) => return refuse(&mut w, e),
    };
    // The NIC is the successor's from here: any failure of its now leaves
    // this engine with nothing, so it must end (and a fresh one start).
    let fail = |why: &str| {
        tracing::error!(successor_pid = hello.pid, "{why} after the hand-over");
        failed.store(true, Ordering::Relaxed);
    };
    let sent = serde_json::to_string(&Reply::of(&handed))
        .map_err(std::io::Error::other)
        .and_then(|r| writeln!(w, "{r}"));
    if sent.is_err() {
        fail("the successor could not be answered");
        return Ok(());
    }
    let mut reader = BufReader::new(stream);
    let _ = reader.get_ref().set_read_timeout(Some(SERVING_TIMEOUT));
    let mut line = String::new();
    match reader.read_line(&mut line) {
        Ok(_) if line.trim() == "serving" => {
            tracing::info!(successor_pid = hello.pid, "the successor serves; draining")
        }
        _ => {
            fail("the successor did not confirm it serves");
            return Ok(());
        }
    }
    // It keeps the stream open while it lives: EOF is its end.
    let _ = reader.get_ref().set_read_timeout(None);
    let mut rest = [0u8; 64];
    while matches!(reader.read(&mut rest), Ok(n) if n > 0) {}
    fail("the successor went away");
    Ok(())
}

/// The successor's side: asks the engine serving `state_dir` to let go of
/// its `queues` NIC queues. The stream returned gets [`confirm`] once the
/// successor serves.
pub fn take_over(
    state_dir: &Path,
    queues: u32,
) -> std::result::Result<(Predecessor, UnixStream), EngineError> {
    let err = |what: String| EngineError::Upgrade(what);
    let path = socket_path(state_dir);
    let stream = UnixStream::connect(&path)
        .map_err(|e| err(format!("no running engine at {}: {e}", path.display())))?;
    stream
        .set_read_timeout(Some(STEP_TIMEOUT))
        .map_err(|e| err(e.to_string()))?;
    let relay = RelayShm::create(queues).map_err(|e| err(format!("relay region: {e}")))?;
    let hello = Hello {
        queues,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let hello = serde_json::to_vec(&hello).map_err(|e| err(e.to_string()))?;
    HELLO_SENT.store(true, Ordering::SeqCst);
    send_fd(stream.as_raw_fd(), &hello, relay.fd())
        .map_err(|e| err(format!("sending the hello: {e}")))?;
    let mut line = String::new();
    let reader = stream.try_clone().map_err(|e| err(e.to_string()))?;
    BufReader::new(reader)
        .read_line(&mut line)
        .map_err(|e| err(format!("waiting for the running engine: {e}")))?;
    let reply: Reply = serde_json::from_str(line.trim())
        .map_err(|e| err(format!("the running engine's answer {line:?}: {e}")))?;
    if !reply.ok {
        // It refuses before it changes anything.
        HELLO_SENT.store(false, Ordering::SeqCst);
        return Err(err(format!("the running engine refused: {}", reply.error)));
    }
    Ok((
        Predecessor {
            relay,
            handed_over: reply.handed_over(),
        },
        stream,
    ))
}

/// The successor's end of the upgrade stream, kept open while it lives:
/// the predecessor takes its EOF for the successor's end, and the
/// successor takes the predecessor's for its.
pub struct PredecessorLink {
    stream: UnixStream,
    gone: bool,
}

impl PredecessorLink {
    /// Tells the predecessor the successor serves.
    pub fn confirm(mut stream: UnixStream) -> Self {
        if let Err(e) = stream.write_all(b"serving\n") {
            tracing::warn!(error = %e, "telling the predecessor we serve");
        }
        let _ = stream.set_nonblocking(true);
        PredecessorLink {
            stream,
            gone: false,
        }
    }

    /// True once, when the predecessor's process has ended (exited or died).
    pub fn just_gone(&mut self) -> bool {
        if self.gone {
            return false;
        }
        let mut buf = [0u8; 64];
        self.gone = match self.stream.read(&mut buf) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        self.gone
    }
}
