//! `ferrogate run`: one machine's supervisor. Starts the engine process
//! (`ferrogate engine`) and, when there is a config file to own, the control
//! daemon (`ferrogate control`), and keeps them up:
//!
//! - the control daemon is restarted whenever it dies (the engine keeps
//!   serving meanwhile and the new daemon reconnects);
//! - an engine that crashes is restarted from its last-known-good snapshot
//!   (not from the file: the daemon may have applied something newer); one
//!   that exits cleanly (`--duration`, a signal) ends the supervisor, and so
//!   does one that fails during its first start (a config or NIC error is
//!   not fixed by retrying);
//! - SIGTERM/SIGINT stop both (daemon first), SIGHUP goes to the daemon
//!   (re-read the file), or to the engine when there is no daemon;
//! - SIGUSR2 is a binary upgrade: a new engine process (from the binary
//!   now at ferrogate's path) starts with `--upgrade` beside the running
//!   one, takes over its NIC queues, and becomes the engine once the old
//!   one drained and exited. A successor that fails leaves the old engine
//!   serving (or, if it failed after taking over, the engine is restarted
//!   once the old one is done).
//!
//! Both children get PDEATHSIG=SIGTERM: a supervisor killed with SIGKILL
//! does not leave an engine holding the NIC.
//!
//! Under systemd (`Type=notify`, `$NOTIFY_SOCKET` set) the supervisor is
//! the unit's main process and speaks for it: `READY=1` once the engine
//! answers on its socket (it serves then), `WATCHDOG=1` every half
//! `$WATCHDOG_USEC` from its loop, `STOPPING=1` when asked to stop.

use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

pub struct SuperviseArgs {
    /// `ferrogate engine` arguments without `--config`/`--admin-socket`.
    pub engine_args: Vec<String>,
    pub config: Option<PathBuf>,
    /// The operator socket: the daemon's, or the engine's without a daemon.
    pub admin_socket: Option<PathBuf>,
    pub engine_socket: PathBuf,
    pub state_dir: PathBuf,
    /// Extra `ferrogate control` arguments (TCP address, token file).
    pub control_args: Vec<String>,
    pub control: bool,
}

/// An engine that fails within this long of its first start is not
/// restarted (its error is the answer).
const FIRST_START_GRACE: Duration = Duration::from_secs(10);
/// Restarts closer together than this are delayed to it.
const RESTART_BACKOFF: Duration = Duration::from_millis(500);
/// More engine restarts than this within `RESTART_WINDOW` end the
/// supervisor: a crash loop is an operator's problem, not a retry's.
const MAX_RESTARTS: usize = 5;
const RESTART_WINDOW: Duration = Duration::from_secs(60);

struct Proc {
    name: &'static str,
    child: Option<Child>,
    started: Instant,
    restarts: u32,
    recent: std::collections::VecDeque<Instant>,
}

impl Proc {
    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }

    fn signal(&self, sig: i32) {
        if let Some(pid) = self.pid() {
            // SAFETY: kill(2) on our own child's PID (not yet reaped, so
            // the PID cannot have been reused).
            unsafe { libc::kill(pid, sig) };
        }
    }

    fn try_exit(&mut self) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(st)) => {
                self.child = None;
                Some(st)
            }
            _ => None,
        }
    }

    /// SIGTERM, then SIGKILL after `grace`.
    fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.child.as_ref()?;
        self.signal(libc::SIGTERM);
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if let Some(st) = self.try_exit() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut c = self.child.take()?;
        tracing::warn!(process = self.name, "did not stop in time; killing");
        let _ = c.kill();
        c.wait().ok()
    }
}

/// The ferrogate binary to start: the path this process was started by
/// (argv[0], made absolute but not resolved), so that a restart or a binary
/// upgrade runs what is at that path now: a package upgrade replaces the
/// file, a symlink flip changes where it points. `/proc/self/exe` would
/// name the old inode ("PATH (deleted)", or the resolved old target).
fn exe_path() -> Result<PathBuf> {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    if let Some(p) = EXE.get() {
        return Ok(p.clone());
    }
    let argv0 = std::env::args_os().next().map(PathBuf::from);
    let exe = match argv0.filter(|p| p.components().count() > 1) {
        Some(p) => std::path::absolute(p).context("locating the ferrogate binary")?,
        None => {
            let exe = std::env::current_exe().context("locating the ferrogate binary")?;
            let s = exe.to_string_lossy();
            match s.strip_suffix(" (deleted)") {
                Some(p) => PathBuf::from(p),
                None => exe,
            }
        }
    };
    Ok(EXE.get_or_init(|| exe).clone())
}

fn spawn(name: &'static str, args: &[String]) -> Result<Child> {
    let exe = exe_path()?;
    let mut cmd = Command::new(exe);
    cmd.args(args);
    // Only the supervisor talks to systemd (NotifyAccess=main).
    for k in crate::sd_notify::ENV {
        cmd.env_remove(k);
    }
    // SAFETY: the closure runs in the child between fork and exec and only
    // calls prctl(2), which is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .with_context(|| format!("starting the {name}"))?;
    tracing::info!(process = name, pid = child.id(), "started");
    Ok(child)
}

/// The supervisor's side of systemd's notify protocol (nothing without
/// `$NOTIFY_SOCKET`).
struct Systemd {
    notifier: Option<crate::sd_notify::Notifier>,
    ready: std::cell::Cell<bool>,
    /// When the engine's socket was last asked whether it serves.
    probed: std::cell::Cell<Option<Instant>>,
    watchdog: Option<Duration>,
    petted: std::cell::Cell<Option<Instant>>,
}

/// How often (and how long) an engine not yet ready is asked.
const READY_PROBE: Duration = Duration::from_millis(200);

impl Systemd {
    fn from_env() -> Result<Self> {
        let notifier = crate::sd_notify::Notifier::from_env()?;
        let watchdog = notifier
            .as_ref()
            .and_then(|_| crate::sd_notify::watchdog_from_env());
        if notifier.is_some() {
            tracing::info!(
                watchdog_ms = watchdog.map(|w| w.as_millis() as u64),
                "systemd notify socket found"
            );
        }
        Ok(Self {
            notifier,
            ready: false.into(),
            probed: None.into(),
            watchdog,
            petted: None.into(),
        })
    }

    fn send(&self, state: &str) {
        if let Some(n) = &self.notifier
            && let Err(e) = n.notify(state)
        {
            tracing::warn!(error = %e, state, "sd_notify");
        }
    }

    /// Keep-alives when due; `READY=1` once the engine answers a hello on
    /// `socket` (it answers from its main loop, which runs once it serves;
    /// without a socket there is nothing to ask: ready once started).
    fn tick(&self, socket: Option<&std::path::Path>, engine_running: bool) {
        if self.notifier.is_none() {
            return;
        }
        if let Some(every) = self.watchdog
            && self.petted.get().is_none_or(|t| t.elapsed() >= every)
        {
            self.petted.set(Some(Instant::now()));
            self.send("WATCHDOG=1");
        }
        if self.ready.get() || !engine_running {
            return;
        }
        if self.probed.get().is_some_and(|t| t.elapsed() < READY_PROBE) {
            return;
        }
        self.probed.set(Some(Instant::now()));
        let serving = match socket {
            None => true,
            Some(p) => crate::admin::call_with(p, "GET", "/v1/hello", None, &[], READY_PROBE)
                .is_ok_and(|r| r.status == 200),
        };
        if serving {
            self.ready.set(true);
            tracing::info!("the engine serves: READY=1 to systemd");
            self.send(&format!(
                "READY=1\nSTATUS=serving\nMAINPID={}",
                std::process::id()
            ));
        }
    }
}

fn describe(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (_, Some(s)) => format!("signal {s}"),
        _ => "unknown status".into(),
    }
}

/// How long a stopping engine gets before SIGKILL: its drain bound (the
/// config file's `timeouts.drain_ms`, else the default) and 15 s to detach
/// and exit.
fn engine_stop_grace(config: Option<&std::path::Path>) -> Duration {
    let drain = config
        .and_then(|p| crate::config::load(p).ok())
        .map_or(crate::config::DEFAULT_DRAIN_TIMEOUT, |c| c.drain_timeout);
    drain + Duration::from_secs(15)
}

pub fn run(args: SuperviseArgs) -> Result<()> {
    let stop = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGHUP, hup.clone())?;
    // Before any upgrade can have replaced the binary.
    exe_path()?;
    let usr2 = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGUSR2, usr2.clone())?;

    let with_control = args.control && args.config.is_some();
    let engine_socket = if with_control {
        Some(args.engine_socket.clone())
    } else {
        args.admin_socket.clone()
    };
    let engine_argv = |first: bool| -> Vec<String> {
        let mut v = vec!["engine".to_string()];
        if first && let Some(c) = &args.config {
            v.push("--config".into());
            v.push(c.display().to_string());
        }
        v.push("--admin-socket".into());
        v.push(
            engine_socket
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into()),
        );
        v.push("--state-dir".into());
        v.push(args.state_dir.display().to_string());
        v.extend(args.engine_args.iter().cloned());
        v
    };
    let control_argv = || -> Vec<String> {
        let mut v = vec![
            "control".to_string(),
            "--config".into(),
            args.config
                .as_ref()
                .map(|c| c.display().to_string())
                .unwrap_or_default(),
            "--engine-socket".into(),
            args.engine_socket.display().to_string(),
            "--socket".into(),
            args.admin_socket
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "none".into()),
            "--state-dir".into(),
            args.state_dir.display().to_string(),
        ];
        v.extend(args.control_args.iter().cloned());
        v
    };

    let mut engine = Proc {
        name: "engine",
        child: Some(spawn("engine", &engine_argv(true))?),
        started: Instant::now(),
        restarts: 0,
        recent: Default::default(),
    };
    let mut control = if with_control {
        Some(Proc {
            name: "control daemon",
            child: Some(spawn("control daemon", &control_argv())?),
            started: Instant::now(),
            restarts: 0,
            recent: Default::default(),
        })
    } else {
        None
    };

    let sd = Systemd::from_env()?;
    let mut result = Ok(());
    // A binary upgrade's new engine, until the old one exits.
    let mut successor: Option<Child> = None;
    // The engine is a promoted successor: not a first start (its failure
    // is restarted, not taken for a config or NIC error).
    let mut promoted = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            tracing::info!("stopping");
            sd.send("STOPPING=1");
            break;
        }
        sd.tick(engine_socket.as_deref(), engine.child.is_some());
        if hup.swap(false, Ordering::Relaxed) {
            match &control {
                Some(c) => c.signal(libc::SIGHUP),
                None => engine.signal(libc::SIGHUP),
            }
        }
        if usr2.swap(false, Ordering::Relaxed) {
            if successor.is_some() {
                tracing::warn!("a binary upgrade is under way already; SIGUSR2 ignored");
            } else if engine.child.is_some() {
                let mut argv = engine_argv(!with_control);
                argv.push("--upgrade".into());
                match spawn("engine (successor)", &argv) {
                    Ok(c) => {
                        tracing::info!(pid = c.id(), "binary upgrade: successor started");
                        successor = Some(c);
                    }
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "binary upgrade: cannot start the successor")
                    }
                }
            }
        }
        if let Some(c) = successor.as_mut()
            && let Ok(Some(st)) = c.try_wait()
        {
            successor = None;
            if st.code() == Some(crate::upgrade::UNTOUCHED_EXIT) {
                tracing::error!(status = %describe(st), "binary upgrade failed: the successor exited before the hand-over; the running engine keeps serving");
            } else {
                // Whether it had taken the NIC queues only the old engine
                // knows: if so it ends now with ORPHANED_EXIT and a fresh
                // one starts; if not (a binary without `--upgrade`, a crash
                // before its hello) it serves on.
                tracing::error!(status = %describe(st), "binary upgrade failed: the successor exited; a running engine that handed over ends and is replaced, one that did not keeps serving");
            }
        }
        if let Some(st) = engine.try_exit() {
            if let Some(mut c) = successor.take() {
                if let Ok(Some(died)) = c.try_wait() {
                    // Both ended: nothing to promote.
                    tracing::error!(status = %describe(died), "binary upgrade failed: the successor exited after the hand-over; starting a new one");
                    engine.child = Some(spawn("engine", &engine_argv(false))?);
                    engine.started = Instant::now();
                    engine.restarts += 1;
                    continue;
                }
                tracing::info!(old = %describe(st), pid = c.id(), "binary upgrade complete: the successor is the engine");
                engine.child = Some(c);
                engine.started = Instant::now();
                promoted = true;
                continue;
            }
            let first =
                !promoted && engine.restarts == 0 && engine.started.elapsed() < FIRST_START_GRACE;
            if st.code() == Some(crate::upgrade::ORPHANED_EXIT) {
                tracing::warn!(
                    "the engine that handed over to a failed successor exited; starting a new one"
                );
                engine.child = Some(spawn("engine", &engine_argv(false))?);
                engine.started = Instant::now();
                engine.restarts += 1;
                continue;
            }
            if st.success() {
                tracing::info!("engine exited");
                break;
            }
            if first {
                result = Err(anyhow::anyhow!(
                    "the engine failed to start ({})",
                    describe(st)
                ));
                break;
            }
            engine.recent.push_back(Instant::now());
            while engine
                .recent
                .front()
                .is_some_and(|t| t.elapsed() > RESTART_WINDOW)
            {
                engine.recent.pop_front();
            }
            if engine.recent.len() > MAX_RESTARTS {
                result = Err(anyhow::anyhow!(
                    "the engine died {} times within {} s ({}); giving up",
                    engine.recent.len(),
                    RESTART_WINDOW.as_secs(),
                    describe(st)
                ));
                break;
            }
            tracing::error!(status = %describe(st), "engine died; restarting it from its last-known-good snapshot");
            let wait = RESTART_BACKOFF.saturating_sub(engine.started.elapsed());
            std::thread::sleep(wait);
            engine.child = Some(spawn("engine", &engine_argv(false))?);
            engine.started = Instant::now();
            engine.restarts += 1;
        }
        if let Some(c) = control.as_mut()
            && let Some(st) = c.try_exit()
        {
            // A daemon that refuses to start (bad token file, address in
            // use) says why and exits 1: retrying does not fix that.
            if c.restarts == 0 && st.code().is_some() && c.started.elapsed() < FIRST_START_GRACE {
                result = Err(anyhow::anyhow!(
                    "the control daemon failed to start ({})",
                    describe(st)
                ));
                break;
            }
            tracing::warn!(status = %describe(st), "control daemon exited; restarting it (the engine keeps serving)");
            std::thread::sleep(RESTART_BACKOFF.saturating_sub(c.started.elapsed()));
            c.child = Some(spawn("control daemon", &control_argv())?);
            c.started = Instant::now();
            c.restarts += 1;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if let Some(c) = control.as_mut() {
        c.stop(Duration::from_secs(5));
    }
    // Mid-upgrade both engines drain at once: the old one's flows run
    // through the new one's queues, so the new one ends last (it waits for
    // the old one's exit itself), and the stop takes one drain, not two.
    let mut successor = successor.map(|c| Proc {
        name: "engine (successor)",
        child: Some(c),
        started: Instant::now(),
        restarts: 0,
        recent: Default::default(),
    });
    if let Some(p) = &successor {
        p.signal(libc::SIGTERM);
        engine.signal(libc::SIGTERM);
    }
    let engine_exit = engine.stop(engine_stop_grace(args.config.as_deref()));
    if let Some(p) = successor.as_mut() {
        p.stop(engine_stop_grace(args.config.as_deref()));
    }
    if let Some(st) = engine_exit
        && !st.success()
        && result.is_ok()
        && !stop.load(Ordering::Relaxed)
    {
        bail!("the engine exited with {}", describe(st));
    }
    result
}
