//! `ferrogate run`: enter the namespace, start the engine, serve until
//! SIGTERM/SIGINT, publish counters, detach cleanly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrogate_engine::Engine;

pub struct RunArgs {
    pub config: PathBuf,
    pub netns: Option<String>,
    pub stats_file: Option<PathBuf>,
    pub duration: Option<Duration>,
    pub queues: Option<u32>,
    pub backend: Option<ferrogate_engine::BackendChoice>,
}

/// Moves this process (it must not have spawned threads yet) into a named
/// network namespace.
pub fn enter_netns(name: &str) -> Result<()> {
    let path = format!("/var/run/netns/{name}");
    let f = std::fs::File::open(&path)
        .with_context(|| format!("opening {path} (does the namespace exist?)"))?;
    use std::os::fd::AsRawFd;
    // SAFETY: setns(2) with a valid namespace fd; the process is still
    // single-threaded, so every thread spawned later inherits the namespace.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        bail!("setns into {name}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn write_stats(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

/// SIGHUP: re-read the file; a bad file is logged and the running
/// configuration stays.
fn reload_config(engine: &mut Engine, args: &RunArgs, version: u64) {
    let mut compiled = match crate::config::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(config = %args.config.display(), errors = %e, "reload rejected; keeping the running configuration");
            return;
        }
    };
    let mut routes = (*compiled.engine.routes).clone();
    routes.version = version;
    compiled.engine.routes = Arc::new(routes);
    compiled.engine.queues = args.queues.unwrap_or(compiled.engine.queues);
    match engine.reload(&compiled.engine) {
        Ok(r) => {
            if !r.ignored.is_empty() {
                tracing::warn!(ignored = ?r.ignored, "these changes need a restart");
            }
            tracing::info!(
                version,
                filter_generation = r.filter.as_ref().map(|f| f.generation),
                filter_ms = r.filter.as_ref().map(|f| f.elapsed.as_millis() as u64),
                "configuration reloaded"
            );
        }
        Err(e) => tracing::error!(error = %e, "reload failed; keeping the running configuration"),
    }
}

pub fn run(args: RunArgs) -> Result<()> {
    let mut compiled = crate::config::load(&args.config).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(q) = args.queues {
        compiled.engine.queues = q;
    }
    if let Some(b) = args.backend {
        compiled.engine.backend = b;
    }
    if let Some(ns) = args.netns.as_ref().or(compiled.netns.as_ref()) {
        enter_netns(ns)?;
        tracing::info!(netns = %ns, "entered network namespace");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let reload = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGINT, stop.clone())?;
    signal_hook::flag::register(signal_hook::consts::SIGHUP, reload.clone())?;

    let mut version = compiled.engine.routes.version;
    let mut engine = Engine::start(compiled.engine).context("starting the engine")?;
    tracing::info!(backend = %engine.backend(), "ferrogate engine serving");
    let started = Instant::now();
    let mut last_stats = Instant::now();
    let mut failure = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        if let Some(path) = &args.stats_file
            && last_stats.elapsed() >= Duration::from_millis(250)
        {
            last_stats = Instant::now();
            write_stats(path, &engine.stats().render());
        }
        if reload.swap(false, Ordering::Relaxed) {
            version += 1;
            reload_config(&mut engine, &args, version);
        }
        if !engine.healthy() {
            failure = Some("a worker thread exited");
            break;
        }
        if args.duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    tracing::info!("shutting down");
    let stats = engine.shutdown().context("detaching XDP")?;
    let text = stats.render();
    if let Some(path) = &args.stats_file {
        write_stats(path, &text);
    }
    println!("{text}");
    if let Some(f) = failure {
        bail!("engine failed: {f}");
    }
    Ok(())
}
