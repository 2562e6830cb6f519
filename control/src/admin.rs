//! The admin API: HTTP/1.1 over a Unix socket (mode 0600), one request per
//! connection, served on its own thread. Requests that touch the engine are
//! forwarded to the thread that owns it (`ferrogate run`'s main loop); the
//! data path never sees this thread. `ferrogate ctl` is the client.
//!
//! | request | answer |
//! |---|---|
//! | `GET /status` | `name value` lines: version, uptime, backend, workers, filter generation |
//! | `GET /stats` | the engine's `name value` counters |
//! | `GET /metrics` | Prometheus text exposition |
//! | `POST /validate` (TOML body) | `ok` or the `file:line:col: field: message` lines (422) |
//! | `POST /apply` (TOML body) | the new version, or the errors (422) and nothing changes |
//! | `GET /diff` | running config vs the file on disk, per section |
//! | `POST /rollback` | back to the previous kept version (409 when none is kept) |
//!
//! `X-Ferrogate-Path` names the file a body came from (errors name it and
//! relative paths in it resolve against it).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

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
    Apply { text: String, source: PathBuf },
    Diff,
    Rollback,
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

/// Serves the socket on a new thread until the process exits.
pub fn spawn(listener: UnixListener, tx: mpsc::Sender<Request>) -> Result<()> {
    std::thread::Builder::new()
        .name("fg-admin".into())
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(s) => {
                        if let Err(e) = handle(s, &tx) {
                            tracing::debug!(error = %e, "admin connection");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "admin accept"),
                }
            }
        })
        .context("spawning the admin thread")?;
    Ok(())
}

struct HttpRequest {
    method: String,
    path: String,
    source: Option<PathBuf>,
    body: String,
}

fn read_request(s: &UnixStream) -> Result<HttpRequest> {
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        bail!("bad request line {line:?}");
    };
    let (method, path) = (method.to_string(), target.to_string());
    let mut len = 0usize;
    let mut source = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            bail!("connection closed inside the head");
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                len = v.parse().context("content-length")?;
            } else if k.eq_ignore_ascii_case("x-ferrogate-path") && !v.is_empty() {
                source = Some(PathBuf::from(v));
            }
        }
    }
    if len > MAX_BODY {
        bail!("body of {len} bytes is over the limit");
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok(HttpRequest {
        method,
        path,
        source,
        body: String::from_utf8(body).context("the body is not UTF-8")?,
    })
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

fn handle(mut s: UnixStream, tx: &mpsc::Sender<Request>) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let (reply, ctype) = match read_request(&s) {
        Err(e) => (Reply::err(400, format!("bad request: {e}\n")), "text/plain"),
        Ok(req) => dispatch(req, tx),
    };
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {ctype}; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reply.status,
        reason(reply.status),
        reply.body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(reply.body.as_bytes())?;
    Ok(())
}

fn dispatch(req: HttpRequest, tx: &mpsc::Sender<Request>) -> (Reply, &'static str) {
    let path = req.path.split('?').next().unwrap_or("");
    let source = || {
        req.source
            .clone()
            .unwrap_or_else(|| PathBuf::from("<admin-request>"))
    };
    let op = match (req.method.as_str(), path) {
        ("GET", "/status") => Op::Status,
        ("GET", "/stats") => Op::Stats,
        ("GET", "/metrics") => Op::Metrics,
        ("GET", "/diff") => Op::Diff,
        ("POST", "/validate") => {
            return (validate(&req.body, &source()), "text/plain");
        }
        ("POST", "/apply") => Op::Apply {
            text: req.body.clone(),
            source: source(),
        },
        ("POST", "/rollback") => Op::Rollback,
        (_, "/status" | "/stats" | "/metrics" | "/diff" | "/validate" | "/apply" | "/rollback") => {
            return (
                Reply::err(405, format!("{} not allowed on {path}\n", req.method)),
                "text/plain",
            );
        }
        _ => {
            return (
                Reply::err(404, format!("no such endpoint {path}\n")),
                "text/plain",
            );
        }
    };
    let ctype = if matches!(op, Op::Metrics) {
        "text/plain; version=0.0.4"
    } else {
        "text/plain"
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

/// The client side: one request, the whole answer.
pub fn call(socket: &Path, method: &str, path: &str, body: Option<(&str, &Path)>) -> Result<Reply> {
    let mut s = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to {} (is `ferrogate run` up?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: ferrogate\r\nConnection: close\r\n");
    let (text, src) = body.unwrap_or(("", Path::new("")));
    if !src.as_os_str().is_empty() {
        req.push_str(&format!("X-Ferrogate-Path: {}\r\n", src.display()));
    }
    req.push_str(&format!("Content-Length: {}\r\n\r\n", text.len()));
    s.write_all(req.as_bytes())?;
    s.write_all(text.as_bytes())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
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
        assert_eq!(call(&sock, "GET", "/nope", None).unwrap().status, 404);
        assert_eq!(call(&sock, "GET", "/apply", None).unwrap().status, 405);
        assert!(bind(&sock).is_err(), "a live socket is not stolen");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
