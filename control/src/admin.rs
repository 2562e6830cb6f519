//! The admin API: HTTP/1.1, one request per connection, on a Unix socket
//! (mode 0600) and, for the control daemon, optionally on TCP with a bearer
//! token. The engine process serves it on its own socket: requests that
//! touch the engine are forwarded to the thread that owns it; the data path
//! never sees these threads. The control daemon (`ferrogate control`) serves
//! the same operator endpoints and talks to the engine through `/v1/…`.
//! `ferrogate ctl` is the client.
//!
//! | request | answer |
//! |---|---|
//! | `GET /status` | `name value` lines: version, uptime, backend, workers, filter generation |
//! | `GET /stats` | the engine's `name value` counters |
//! | `GET /metrics` | Prometheus text exposition |
//! | `GET /status.json`, `GET /stats.json` | the same as JSON (`{"control": …, "engine": …}` for status) |
//! | `GET /ui` (or `/`) | the live status page (HTML; on TCP the token may come as `?token=`) |
//! | `GET /blocked` | sources L7 rate limits escalated to the XDP deny set: `source limit expires_in_s offered_per_s since` lines |
//! | `POST /unblock/ADDR` | lifts ADDR's escalation deny now (404 when it is not denied) |
//! | `POST /purge` (`key=value` lines: `url=`, `prefix=` or `tag=`, optional `mode=light\|hard`) | purges the response cache: `purged N in memory, M on disk` (400 naming the problem for a malformed request) |
//! | `POST /drain` | a graceful stop, as SIGTERM: new connections are refused, open ones finish (bounded by `timeouts.drain_ms`), then the engine exits |
//! | `POST /validate` (TOML body) | `ok` or the `file:line:col: field: message` lines (422) |
//! | `POST /apply` (TOML body) | the new version, or the errors (422) and nothing changes |
//! | `GET /diff` | running config vs the file on disk, per section |
//! | `POST /rollback` | back to the previous kept version (409 when none is kept) |
//! | `GET /v1/hello` | engine only: `protocol`, `version`, `content_hash` |
//! | `GET /v1/snapshot` | engine only: `version`/`source` lines, a blank line, the running TOML |
//! | `POST /v1/snapshot` | engine only: apply the body if it hashes to `X-Ferrogate-Hash` |
//!
//! `X-Ferrogate-Path` names the file a body came from (errors name it and
//! relative paths in it resolve against it). `/v1/…` requests must carry
//! `Ferrogate-Protocol: 1` (426 for another version).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ferrogate_proxy::cache::core::PurgeMode;
use ferrogate_proxy::cache::{Purge, PurgeTarget};

/// Default admin socket.
pub const DEFAULT_SOCKET: &str = "/run/ferrogate/admin.sock";
/// Largest request body accepted (a config).
const MAX_BODY: usize = 16 << 20;

/// What the engine's owner is asked to do.
#[derive(Debug)]
pub enum Op {
    Status,
    Stats,
    Metrics,
    /// `GET /status.json`.
    StatusJson,
    /// `GET /stats.json`.
    StatsJson,
    /// `GET /blocked`: sources escalated to the XDP deny set.
    Blocked,
    /// `POST /unblock/ADDR`: lift a source's escalation deny now.
    Unblock(std::net::IpAddr),
    /// `POST /purge`: purge the response cache.
    Purge(Purge),
    /// `POST /drain`: a graceful stop (as SIGTERM).
    Drain,
    Apply {
        text: String,
        source: PathBuf,
    },
    Diff,
    Rollback,
    /// `GET /v1/hello`: protocol, running version and content hash.
    Hello,
    /// `GET /v1/snapshot`: the running snapshot's text.
    Running,
}

/// An answer: HTTP status and a text body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Self {
        Self {
            status: 200,
            body: body.into(),
        }
    }
    pub fn err(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            body: body.into(),
        }
    }
}

/// A forwarded request and where to send its answer.
pub struct Request {
    pub op: Op,
    pub reply: mpsc::Sender<Reply>,
}

/// The version of the control ↔ engine protocol (`/v1/…` endpoints, the
/// `Ferrogate-Protocol` header). A peer speaking another version is refused
/// with 426 instead of being misunderstood.
pub const PROTOCOL: u32 = 1;

/// One parsed admin request.
#[derive(Debug, Default)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub source: Option<PathBuf>,
    /// `Ferrogate-Protocol` header, when present.
    pub protocol: Option<String>,
    /// `X-Ferrogate-Hash`: the content hash a pushed snapshot must have.
    pub hash: Option<String>,
    /// The `Authorization: Bearer …` token, when present.
    pub bearer: Option<String>,
    pub body: String,
}

/// Content type of the status page.
pub const HTML: &str = "text/html";

/// Answers one request: (reply, content type).
pub type Handler = Arc<dyn Fn(HttpRequest) -> (Reply, &'static str) + Send + Sync>;

/// Binds the socket: creates the directory, replaces a stale socket (one
/// nobody answers on), refuses to steal a live one, sets mode 0600.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("{}: another process serves this socket", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("binding {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", path.display()))?;
    Ok(l)
}

/// At most this many admin connections are served at once; more wait in
/// the listen backlog.
const MAX_CONCURRENT: usize = 16;

/// Serves the engine's API on a new thread until the process exits: every
/// request that touches the engine goes to the thread owning it.
pub fn spawn(listener: UnixListener, tx: mpsc::Sender<Request>) -> Result<()> {
    spawn_unix(listener, engine_handler(tx))
}

/// Serves `handler` on a Unix socket, one thread per connection.
pub fn spawn_unix(listener: UnixListener, handler: Handler) -> Result<()> {
    serve_loop(
        "fg-admin",
        move || listener.accept().map(|(s, _)| s),
        None,
        handler,
    )
}

/// Serves `handler` on TCP; every request must carry `Authorization:
/// Bearer <token>` (compared in constant time) or gets 401.
pub fn spawn_tcp(listener: TcpListener, token: String, handler: Handler) -> Result<()> {
    serve_loop(
        "fg-admin-tcp",
        move || listener.accept().map(|(s, _)| s),
        Some(Arc::new(token)),
        handler,
    )
}

fn serve_loop<S, A>(
    name: &str,
    mut accept: A,
    token: Option<Arc<String>>,
    handler: Handler,
) -> Result<()>
where
    S: Read + Write + Timeouts + Send + 'static,
    A: FnMut() -> std::io::Result<S> + Send + 'static,
{
    let active = Arc::new(AtomicUsize::new(0));
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            loop {
                let s = match accept() {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin accept");
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    }
                };
                while active.load(Ordering::Acquire) >= MAX_CONCURRENT {
                    std::thread::sleep(Duration::from_millis(5));
                }
                active.fetch_add(1, Ordering::AcqRel);
                let slot = active.clone();
                let (handler, token) = (handler.clone(), token.clone());
                let spawned = std::thread::Builder::new()
                    .name("fg-admin-conn".into())
                    .spawn(move || {
                        if let Err(e) = handle(s, token.as_deref().map(|t| t.as_str()), &handler) {
                            tracing::debug!(error = %e, "admin connection");
                        }
                        slot.fetch_sub(1, Ordering::AcqRel);
                    });
                if spawned.is_err() {
                    // The closure (and its stream) is gone: give the slot back.
                    active.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!("admin: cannot spawn a connection thread");
                }
            }
        })
        .context("spawning the admin thread")?;
    Ok(())
}

/// Read/write timeouts for both stream kinds.
pub trait Timeouts {
    fn timeouts(&self, d: Duration) -> std::io::Result<()>;
    /// Ends our side of the stream (FIN), keeping it readable.
    fn shutdown_write(&self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Timeouts for UnixStream {
    fn timeouts(&self, d: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(d))?;
        self.set_write_timeout(Some(d))
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

impl Timeouts for TcpStream {
    fn timeouts(&self, d: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(d))?;
        self.set_write_timeout(Some(d))
    }
    fn shutdown_write(&self) -> std::io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// After an answer given before the body was read (401, 413), what is
/// read and dropped of the unread rest, at most: closing with unread
/// bytes makes the kernel send a reset, which can reach the client before
/// the answer does. Bounded, so a refused client cannot hold the slot.
const DRAIN_AFTER_REFUSAL: u64 = 1 << 20;
const DRAIN_WITHIN: Duration = Duration::from_secs(1);

/// Largest request head accepted.
const MAX_HEAD: usize = 16 << 10;
/// Idle time allowed between two reads or writes of a connection.
const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// The whole request (head and body) must arrive within this: a client
/// trickling a byte now and then would otherwise hold a connection slot
/// for as long as it likes (the idle timeout restarts at every byte).
const REQUEST_WITHIN: Duration = Duration::from_secs(10);

/// The request's body is over `MAX_BODY` (answered 413).
#[derive(Debug, thiserror::Error)]
#[error("body of {0} bytes is over the {MAX_BODY}-byte limit")]
struct BodyTooLarge(usize);

/// A missing or wrong bearer token, found once the head is read: the body
/// of an unauthenticated request is never read or buffered (answered 401).
#[derive(Debug, thiserror::Error)]
#[error("{0} bearer token")]
struct Unauthorized(&'static str);

/// The request did not arrive within `REQUEST_WITHIN` (answered 408).
#[derive(Debug, thiserror::Error)]
#[error("the request did not arrive within {} s", REQUEST_WITHIN.as_secs())]
struct RequestTimeout;

/// Reads from `s` until `until`, each read waiting at most what is left.
struct DeadlineReader<'a, S: Read + Timeouts> {
    s: &'a mut S,
    until: Instant,
}

impl<S: Read + Timeouts> Read for DeadlineReader<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                RequestTimeout,
            ));
        }
        self.s.timeouts(left.min(IO_TIMEOUT))?;
        self.s.read(buf).map_err(|e| {
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) {
                std::io::Error::new(std::io::ErrorKind::TimedOut, RequestTimeout)
            } else {
                e
            }
        })
    }
}

/// The status a failed read is answered with.
fn read_error_status(e: &anyhow::Error) -> u16 {
    if e.downcast_ref::<Unauthorized>().is_some() {
        return 401;
    }
    if e.downcast_ref::<BodyTooLarge>().is_some() {
        return 413;
    }
    let timed_out = e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
    });
    if timed_out { 408 } else { 400 }
}

/// Requests refused for a missing or wrong bearer token, since start.
static AUTH_FAILURES: AtomicU64 = AtomicU64::new(0);
/// When a refused token was last logged (at most one line per
/// `AUTH_LOG_EVERY`: a client guessing tokens must not flood the log).
static AUTH_LOGGED: Mutex<Option<(Instant, u64)>> = Mutex::new(None);
const AUTH_LOG_EVERY: Duration = Duration::from_secs(10);

/// Requests refused for a missing or wrong bearer token, since start.
pub fn auth_failures() -> u64 {
    AUTH_FAILURES.load(Ordering::Relaxed)
}

fn count_auth_failure(why: &str) {
    let total = AUTH_FAILURES.fetch_add(1, Ordering::Relaxed) + 1;
    let mut last = AUTH_LOGGED.lock().unwrap_or_else(|e| e.into_inner());
    let due = last.is_none_or(|(at, _)| at.elapsed() >= AUTH_LOG_EVERY);
    if due {
        let since = total - last.map_or(0, |(_, n)| n);
        tracing::warn!(
            reason = why,
            refused_since_last_line = since,
            refused_total = total,
            "admin requests refused for their bearer token (logged at most every {} s)",
            AUTH_LOG_EVERY.as_secs()
        );
        *last = Some((Instant::now(), total));
    }
}

/// Reads one request; with a `token`, a request without it ends after
/// its head.
fn read_request<S: Read + Timeouts>(s: &mut S, token: Option<&str>) -> Result<HttpRequest> {
    let mut dl = DeadlineReader {
        s,
        until: Instant::now() + REQUEST_WITHIN,
    };
    let mut r = BufReader::new(&mut dl);
    let mut head_bytes = 0usize;
    let mut next_line = |r: &mut BufReader<&mut DeadlineReader<'_, S>>| -> Result<String> {
        let mut line = String::new();
        let n = r.by_ref().take(MAX_HEAD as u64).read_line(&mut line)?;
        head_bytes += n;
        if head_bytes >= MAX_HEAD {
            bail!("request head over {MAX_HEAD} bytes");
        }
        if n == 0 {
            bail!("connection closed inside the head");
        }
        Ok(line)
    };
    let line = next_line(&mut r)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("bad request line {line:?}");
    };
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut req = HttpRequest {
        method: method.to_string(),
        path: path.to_string(),
        ..Default::default()
    };
    let mut len = 0usize;
    loop {
        let h = next_line(&mut r)?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let Some((k, v)) = h.split_once(':') else {
            bail!("bad header line {h:?}");
        };
        let v = v.trim();
        if k.eq_ignore_ascii_case("content-length") {
            len = v.parse().context("content-length")?;
        } else if k.eq_ignore_ascii_case("x-ferrogate-path") && !v.is_empty() {
            req.source = Some(PathBuf::from(v));
        } else if k.eq_ignore_ascii_case("ferrogate-protocol") {
            req.protocol = Some(v.to_string());
        } else if k.eq_ignore_ascii_case("x-ferrogate-hash") {
            req.hash = Some(v.to_string());
        } else if k.eq_ignore_ascii_case("authorization") {
            req.bearer = v
                .strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
                .map(|t| t.trim().to_string());
        }
    }
    // A browser's first load of the page cannot carry a header: the page
    // (and only it, on GET) takes the token from the query; its script
    // sends the header from then on.
    if req.bearer.is_none()
        && req.method == "GET"
        && crate::status::PAGE_PATHS.contains(&req.path.as_str())
    {
        req.bearer = query_param(query, "token");
    }
    if let Some(want) = token {
        match req.bearer.as_deref() {
            None => return Err(Unauthorized("missing").into()),
            Some(given) if !token_matches(given, want) => {
                return Err(Unauthorized("wrong").into());
            }
            Some(_) => {}
        }
    }
    if len > MAX_BODY {
        return Err(BodyTooLarge(len).into());
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    req.body = String::from_utf8(body).context("the body is not UTF-8")?;
    Ok(req)
}

/// The value of `key` in a query string, form-decoded (`+` is a space,
/// `%XX` a byte), as a browser's `URLSearchParams` reads it.
fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == key).then(|| form_decode(v))
    })
}

fn form_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |i: usize| b.get(i).and_then(|&c| (c as char).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'+', _, _) => out.push(b' '),
            (b'%', Some(h), Some(l)) => {
                out.push((h << 4 | l) as u8);
                i += 2;
            }
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        422 => "Unprocessable Entity",
        426 => "Upgrade Required",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// Equal-length-independent comparison whose time does not depend on
/// where the first differing byte is.
fn token_matches(given: &str, want: &str) -> bool {
    let (g, w) = (given.as_bytes(), want.as_bytes());
    let mut diff = u8::from(g.len() != w.len());
    for (i, b) in w.iter().enumerate() {
        diff |= b ^ g.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

fn handle<S: Read + Write + Timeouts>(
    mut s: S,
    token: Option<&str>,
    handler: &Handler,
) -> Result<()> {
    s.timeouts(IO_TIMEOUT)?;
    let mut refused_early = false;
    let (reply, ctype) = match read_request(&mut s, token) {
        Err(e) => {
            refused_early = e.downcast_ref::<Unauthorized>().is_some()
                || e.downcast_ref::<BodyTooLarge>().is_some();
            if let Some(Unauthorized(why)) = e.downcast_ref::<Unauthorized>() {
                count_auth_failure(why);
                (Reply::err(401, format!("{e}\n")), "text/plain")
            } else {
                (
                    Reply::err(read_error_status(&e), format!("bad request: {e:#}\n")),
                    "text/plain",
                )
            }
        }
        Ok(req) => handler(req),
    };
    let auth = if reply.status == 401 {
        "WWW-Authenticate: Bearer realm=\"ferrogate\"\r\n"
    } else {
        ""
    };
    // The page runs only its own inline script and talks only to this
    // listener; nothing is cached (answers carry live counters, and the
    // page may have come with the token in its URL).
    let page = if ctype == HTML {
        "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'\r\nX-Frame-Options: DENY\r\nReferrer-Policy: no-referrer\r\nX-Content-Type-Options: nosniff\r\n"
    } else {
        ""
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {ctype}; charset=utf-8\r\nContent-Length: {}\r\n{auth}{page}Cache-Control: no-store\r\nFerrogate-Protocol: {PROTOCOL}\r\nConnection: close\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.body.len()
    );
    s.timeouts(IO_TIMEOUT)?;
    s.write_all(head.as_bytes())?;
    s.write_all(reply.body.as_bytes())?;
    if refused_early {
        s.shutdown_write()?;
        let mut dl = DeadlineReader {
            s: &mut s,
            until: Instant::now() + DRAIN_WITHIN,
        };
        let _ = std::io::copy(
            &mut (&mut dl).take(DRAIN_AFTER_REFUSAL),
            &mut std::io::sink(),
        );
    }
    Ok(())
}

/// 405 for a known path with the wrong method, else 404.
pub fn unknown(method: &str, path: &str, known: &[&str]) -> Reply {
    if known.contains(&path) {
        Reply::err(405, format!("{method} not allowed on {path}\n"))
    } else {
        Reply::err(404, format!("no such endpoint {path}\n"))
    }
}

/// Checks the `Ferrogate-Protocol` header of a `/v1/…` request.
pub fn check_protocol(req: &HttpRequest) -> Result<(), Reply> {
    match req.protocol.as_deref() {
        None => Err(Reply::err(
            400,
            format!("missing Ferrogate-Protocol header (this side speaks {PROTOCOL})\n"),
        )),
        Some(v) if v.trim() == PROTOCOL.to_string() => Ok(()),
        Some(v) => Err(Reply::err(
            426,
            format!("protocol {v} not supported (this side speaks {PROTOCOL})\n"),
        )),
    }
}

/// The address of `POST /unblock/ADDR`.
pub(crate) fn unblock_addr(path: &str) -> Result<std::net::IpAddr, Reply> {
    let text = path.strip_prefix("/unblock/").unwrap_or("");
    text.parse()
        .map_err(|_| Reply::err(400, format!("{text:?} is not an IP address\n")))
}

/// The body of `POST /purge`: `key=value` lines, `url=`, `prefix=` or
/// `tag=` (exactly one) and `mode=light|hard` (default light). A value is
/// the rest of its line, taken as written (URLs hold `=` and `&`).
pub fn parse_purge(body: &str) -> Result<Purge, Reply> {
    let bad = |why: String| Reply::err(400, format!("bad purge request: {why}\n"));
    let (mut mode, mut target) = (None, None);
    for (n, line) in body.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(bad(format!("line {}: {line:?} is not key=value", n + 1)));
        };
        let (k, v) = (k.trim(), v.trim());
        if v.is_empty() {
            return Err(bad(format!("line {}: {k} is empty", n + 1)));
        }
        let t = match k {
            "mode" => {
                if mode.is_some() {
                    return Err(bad("mode given twice".into()));
                }
                mode = Some(match v {
                    "light" => PurgeMode::Light,
                    "hard" => PurgeMode::Hard,
                    _ => return Err(bad(format!("mode {v:?} is not light or hard"))),
                });
                continue;
            }
            "url" => PurgeTarget::Url(v.to_string()),
            "prefix" => PurgeTarget::Prefix(v.to_string()),
            "tag" => PurgeTarget::Tag(v.to_string()),
            _ => {
                return Err(bad(format!(
                    "line {}: unknown key {k:?} (url, prefix, tag, mode)",
                    n + 1
                )));
            }
        };
        if target.is_some() {
            return Err(bad("one of url, prefix or tag, once".into()));
        }
        target = Some(t);
    }
    let Some(target) = target else {
        return Err(bad("needs url=, prefix= or tag=".into()));
    };
    Ok(Purge {
        mode: mode.unwrap_or(PurgeMode::Light),
        target,
    })
}

/// The `POST /purge` body of `p` (what `ctl purge` sends and the daemon
/// forwards).
pub fn purge_body(p: &Purge) -> String {
    let mode = match p.mode {
        PurgeMode::Light => "light",
        PurgeMode::Hard => "hard",
    };
    let (k, v) = match &p.target {
        PurgeTarget::Url(v) => ("url", v),
        PurgeTarget::Prefix(v) => ("prefix", v),
        PurgeTarget::Tag(v) => ("tag", v),
    };
    format!("mode={mode}\n{k}={v}\n")
}

const ENGINE_PATHS: &[&str] = &[
    "/status",
    "/stats",
    "/metrics",
    "/status.json",
    "/stats.json",
    "/",
    "/ui",
    "/blocked",
    "/unblock/ADDR",
    "/purge",
    "/drain",
    "/diff",
    "/validate",
    "/apply",
    "/rollback",
    "/v1/hello",
    "/v1/snapshot",
];

/// The engine process's API: the operator endpoints plus the `/v1/…`
/// protocol the control daemon speaks.
pub fn engine_handler(tx: mpsc::Sender<Request>) -> Handler {
    Arc::new(move |req: HttpRequest| engine_dispatch(req, &tx))
}

fn engine_dispatch(req: HttpRequest, tx: &mpsc::Sender<Request>) -> (Reply, &'static str) {
    let source = || {
        req.source
            .clone()
            .unwrap_or_else(|| PathBuf::from("<admin-request>"))
    };
    if req.path.starts_with("/v1/")
        && let Err(r) = check_protocol(&req)
    {
        return (r, "text/plain");
    }
    let op = match (req.method.as_str(), req.path.as_str()) {
        ("GET", "/status") => Op::Status,
        ("GET", "/stats") => Op::Stats,
        ("GET", "/metrics") => Op::Metrics,
        ("GET", "/status.json") => Op::StatusJson,
        ("GET", "/stats.json") => Op::StatsJson,
        ("GET", p) if crate::status::PAGE_PATHS.contains(&p) => {
            return (Reply::ok(crate::status::PAGE), HTML);
        }
        ("GET", "/blocked") => Op::Blocked,
        ("POST", p) if p.starts_with("/unblock/") => match unblock_addr(p) {
            Ok(a) => Op::Unblock(a),
            Err(r) => return (r, "text/plain"),
        },
        ("POST", "/purge") => match parse_purge(&req.body) {
            Ok(p) => Op::Purge(p),
            Err(r) => return (r, "text/plain"),
        },
        ("POST", "/drain") => Op::Drain,
        ("GET", "/diff") => Op::Diff,
        ("POST", "/validate") => {
            return (validate(&req.body, &source()), "text/plain");
        }
        ("POST", "/apply") => Op::Apply {
            text: req.body.clone(),
            source: source(),
        },
        ("POST", "/rollback") => Op::Rollback,
        ("GET", "/v1/hello") => Op::Hello,
        ("GET", "/v1/snapshot") => Op::Running,
        ("POST", "/v1/snapshot") => {
            let want = req
                .hash
                .as_deref()
                .and_then(|h| u64::from_str_radix(h, 16).ok());
            let Some(want) = want else {
                return (
                    Reply::err(400, "a pushed snapshot needs X-Ferrogate-Hash\n"),
                    "text/plain",
                );
            };
            let got = crate::snapshot::content_hash(&req.body);
            if got != want {
                return (
                    Reply::err(
                        400,
                        format!(
                            "snapshot hash {got:016x} does not match X-Ferrogate-Hash {want:016x}\n"
                        ),
                    ),
                    "text/plain",
                );
            }
            Op::Apply {
                text: req.body.clone(),
                source: source(),
            }
        }
        (m, p) => return (unknown(m, p, ENGINE_PATHS), "text/plain"),
    };
    let ctype = match op {
        Op::Metrics => crate::metrics::CONTENT_TYPE,
        Op::StatusJson | Op::StatsJson => crate::status::JSON,
        _ => "text/plain",
    };
    let (rtx, rrx) = mpsc::channel();
    if tx.send(Request { op, reply: rtx }).is_err() {
        return (Reply::err(503, "the engine is shutting down\n"), ctype);
    }
    match rrx.recv_timeout(Duration::from_secs(30)) {
        Ok(r) => (r, ctype),
        Err(_) => (Reply::err(503, "the engine did not answer\n"), ctype),
    }
}

/// `POST /validate`: parses and checks without touching the engine.
pub fn validate(text: &str, source: &Path) -> Reply {
    match crate::config::compile(source, text) {
        Ok(_) => Reply::ok("ok\n"),
        Err(e) => Reply::err(422, format!("{e}\nconfiguration invalid\n")),
    }
}

/// The client side: one request, the whole answer. Every request says
/// which protocol version it speaks.
pub fn call(socket: &Path, method: &str, path: &str, body: Option<(&str, &Path)>) -> Result<Reply> {
    call_with(socket, method, path, body, &[], Duration::from_secs(60))
}

/// `call` with extra headers and a timeout.
pub fn call_with(
    socket: &Path,
    method: &str,
    path: &str,
    body: Option<(&str, &Path)>,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<Reply> {
    let s = connect_unix(socket, timeout).with_context(|| {
        format!(
            "connecting to {} (is `ferrogate run` up?)",
            socket.display()
        )
    })?;
    exchange(s, method, path, body, headers, timeout)
}

/// Connects, retrying while the listener's backlog is full (Linux answers a
/// Unix-socket connect with EAGAIN then, even for a blocking socket when
/// the server is slow to accept, e.g. under load), up to `timeout`.
fn connect_unix(socket: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match UnixStream::connect(socket) {
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => return r,
        }
    }
}

/// Where `ferrogate ctl` sends its requests.
#[derive(Debug, Clone)]
pub enum Endpoint {
    Unix(PathBuf),
    /// The daemon's TCP listener, with the bearer token.
    Tcp {
        addr: String,
        token: String,
    },
}

/// One request to `ep`.
pub fn request(
    ep: &Endpoint,
    method: &str,
    path: &str,
    body: Option<(&str, &Path)>,
) -> Result<Reply> {
    let timeout = Duration::from_secs(60);
    match ep {
        Endpoint::Unix(p) => call_with(p, method, path, body, &[], timeout),
        Endpoint::Tcp { addr, token } => {
            let s = TcpStream::connect(addr)
                .with_context(|| format!("connecting to the admin API on {addr}"))?;
            exchange(
                s,
                method,
                path,
                body,
                &[("Authorization", format!("Bearer {token}"))],
                timeout,
            )
        }
    }
}

fn exchange<S: Read + Write + Timeouts>(
    mut s: S,
    method: &str,
    path: &str,
    body: Option<(&str, &Path)>,
    headers: &[(&str, String)],
    timeout: Duration,
) -> Result<Reply> {
    s.timeouts(timeout)?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: ferrogate\r\nConnection: close\r\nFerrogate-Protocol: {PROTOCOL}\r\n"
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    let (text, src) = body.unwrap_or(("", Path::new("")));
    if text.len() > MAX_BODY {
        // Refused before a byte is sent: the server would answer 413 and
        // reset the rest, and a reset can overtake the answer.
        bail!(
            "{}: {} bytes is over the admin API's {MAX_BODY}-byte limit",
            if src.as_os_str().is_empty() {
                Path::new("body")
            } else {
                src
            }
            .display(),
            text.len()
        );
    }
    if !src.as_os_str().is_empty() {
        req.push_str(&format!("X-Ferrogate-Path: {}\r\n", src.display()));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", text.len()));
    // A server that refuses after the head (401) may close before the
    // body is written: its answer is still there to read.
    let sent = s
        .write_all(req.as_bytes())
        .and_then(|_| s.write_all(text.as_bytes()));
    let mut resp = Vec::new();
    let read = s.read_to_end(&mut resp);
    if resp.is_empty() {
        sent?;
        read?;
    }
    let resp = String::from_utf8_lossy(&resp);
    let (head, body) = resp
        .split_once("\r\n\r\n")
        .context("malformed answer from the admin socket")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .context("malformed status line")?;
    Ok(Reply {
        status,
        body: body.to_string(),
    })
}

/// One exchange of the admin protocol over any byte stream: what a
/// connection thread does (read one request, check the token, answer,
/// close). Public for the `engine_api` fuzz target.
pub fn serve_stream<S: Read + Write + Timeouts>(
    s: S,
    token: Option<&str>,
    handler: &Handler,
) -> Result<()> {
    handle(s, token, handler)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_forwarded_requests_and_validates_locally() {
        let dir = std::env::temp_dir().join(format!("fg-admin-{}", std::process::id()));
        let sock = dir.join("a.sock");
        let l = bind(&sock).unwrap();
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let (tx, rx) = mpsc::channel::<Request>();
        spawn(l, tx).unwrap();
        std::thread::spawn(move || {
            for r in rx {
                let _ = r.reply.send(Reply::ok(format!("{:?}\n", r.op)));
            }
        });
        let r = call(&sock, "GET", "/status", None).unwrap();
        assert_eq!(r, Reply::ok("Status\n"));
        let r = call(
            &sock,
            "POST",
            "/validate",
            Some(("vips = 1", Path::new("/x.toml"))),
        )
        .unwrap();
        assert_eq!(r.status, 422);
        assert!(r.body.starts_with("/x.toml:1:"), "{}", r.body);
        let r = call(
            &sock,
            "POST",
            "/purge",
            Some(("tag=product-1\nmode=hard\n", Path::new(""))),
        )
        .unwrap();
        assert_eq!(
            r,
            Reply::ok("Purge(Purge { mode: Hard, target: Tag(\"product-1\") })\n")
        );
        let r = call(&sock, "POST", "/purge", Some(("mode=hard", Path::new("")))).unwrap();
        assert_eq!(r.status, 400, "refused before the engine: {}", r.body);
        assert!(r.body.contains("needs url=, prefix= or tag="), "{}", r.body);
        assert_eq!(call(&sock, "GET", "/purge", None).unwrap().status, 405);
        assert_eq!(call(&sock, "GET", "/nope", None).unwrap().status, 404);
        assert_eq!(call(&sock, "GET", "/apply", None).unwrap().status, 405);
        assert!(bind(&sock).is_err(), "a live socket is not stolen");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn purge_requests_parse_and_malformed_ones_name_the_problem() {
        let p = |mode, target| Purge { mode, target };
        assert_eq!(
            parse_purge("url=http://a.example/x?y=1&z=2\n"),
            Ok(p(
                PurgeMode::Light,
                PurgeTarget::Url("http://a.example/x?y=1&z=2".into())
            ))
        );
        assert_eq!(
            parse_purge("\r\n mode = hard \r\nprefix=https://a.example/img/\r\n"),
            Ok(p(
                PurgeMode::Hard,
                PurgeTarget::Prefix("https://a.example/img/".into())
            ))
        );
        for (body, why) in [
            ("", "needs url=, prefix= or tag="),
            ("mode=hard", "needs url=, prefix= or tag="),
            ("tag", "line 1: \"tag\" is not key=value"),
            ("tag=", "line 1: tag is empty"),
            ("mode=soft\ntag=a", "mode \"soft\" is not light or hard"),
            ("mode=hard\nmode=light\ntag=a", "mode given twice"),
            ("tag=a\nurl=http://a/", "one of url, prefix or tag, once"),
            ("tag=a\nkey=b", "line 2: unknown key \"key\""),
        ] {
            let r = parse_purge(body).unwrap_err();
            assert_eq!(r.status, 400, "{body:?}");
            assert!(r.body.contains(why), "{body:?}: {}", r.body);
        }
        for target in [
            PurgeTarget::Url("http://a.example/x=1".into()),
            PurgeTarget::Prefix("https://a.example/".into()),
            PurgeTarget::Tag("t".into()),
        ] {
            for mode in [PurgeMode::Light, PurgeMode::Hard] {
                let want = p(mode, target.clone());
                assert_eq!(parse_purge(&purge_body(&want)), Ok(want));
            }
        }
    }

    #[test]
    fn a_request_without_the_token_is_refused_at_its_head_and_the_client_reads_the_401() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let handler: Handler = Arc::new(|_| (Reply::ok("served\n"), "text/plain"));
        spawn_tcp(l, "a-token-of-sixteen+".into(), handler).unwrap();
        // Only the head of an 8 MiB body: refused now, not after waiting
        // for (and buffering) a body from a client without the token.
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"POST /apply HTTP/1.1\r\nContent-Length: 8388608\r\n\r\n")
            .unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).unwrap();
        assert!(resp.starts_with("HTTP/1.1 401 "), "{resp}");
        // A whole 2 MiB body with a wrong token: the answer reaches the
        // client although the server stops reading early.
        let body = "x".repeat(2 << 20);
        let s = TcpStream::connect(addr).unwrap();
        let r = exchange(
            s,
            "POST",
            "/apply",
            Some((&body, Path::new(""))),
            &[("Authorization", "Bearer wrong".into())],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r.status, 401, "{}", r.body);
        let s = TcpStream::connect(addr).unwrap();
        let r = exchange(
            s,
            "GET",
            "/status",
            None,
            &[("Authorization", "Bearer a-token-of-sixteen+".into())],
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(r, Reply::ok("served\n"));
    }

    #[test]
    fn the_page_alone_takes_the_token_from_its_query() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let handler: Handler = Arc::new(|r: HttpRequest| (Reply::ok(r.path), "text/plain"));
        spawn_tcp(l, "tok+en/0123456789ab".into(), handler).unwrap();
        let get = |target: &str| {
            let s = TcpStream::connect(addr).unwrap();
            exchange(s, "GET", target, None, &[], Duration::from_secs(10)).unwrap()
        };
        // Form-encoded as a browser reads it: `+` is a space, %2B a plus.
        assert_eq!(
            get("/ui?x=1&token=tok%2Ben%2F0123456789ab"),
            Reply::ok("/ui")
        );
        assert_eq!(get("/?token=tok%2Ben/0123456789ab"), Reply::ok("/"));
        assert_eq!(get("/ui?token=tok+en/0123456789ab").status, 401);
        assert_eq!(get("/ui?token=wrong").status, 401);
        assert_eq!(get("/ui").status, 401);
        // Every other endpoint needs the header.
        assert_eq!(get("/stats.json?token=tok%2Ben/0123456789ab").status, 401);
        assert_eq!(get("/status?token=tok%2Ben/0123456789ab").status, 401);
        assert_eq!(form_decode("a%2b%zz%4"), "a+%zz%4");
    }
}
