//! A small HTTP/1.1 origin for the lab tests, which can be told to be slow,
//! to reset, to fail, or to stream large bodies.
//!
//! usage: fg-test-origin --listen ADDR [--name NAME]
//!
//! Paths: `/` and anything else → 200 "origin NAME path=..."; `/status/NNN`;
//! `/slow/MS` (waits before answering); `/reset` (RST, no response);
//! `/close` (close-delimited body); `/bytes/N` (N bytes, Content-Length);
//! `/drip/N/MS` (the same N bytes, written over MS milliseconds);
//! `/chunked/N` (N bytes, chunked); `/echo` (answers with the request body's
//! length and a checksum); `/ws` (101 Switching Protocols, then echoes bytes);
//! `/headers` (the request's header lines, `Name: value` one per line);
//! `/early/NNN/MS` (answers NNN before reading the request body, then
//! closes MS later with the body unread, which the kernel turns into a RST).
//! `/fault/KIND`: a misbehaving origin (`reset-mid-body`, `half-close`,
//! `short-body`, `stall-mid-body`, `trickle`, `long-body`, `garbage`,
//! `huge-head`; see `serve`).
//! `/cache/...`: a cacheable resource for the cache tests, shaped by the
//! origin-wide state that `POST /control/cache?cc=..&version=N&fail=0|1&delay=MS`
//! sets (`cc` percent-decoded): body `v<version> <path> <accept-language>`
//! (`/cache/big/N`: N bytes; a path with `chunked`: chunked framing),
//! `Cache-Control: <cc>`, `ETag: "v<version>"` (a matching If-None-Match
//! gets 304), `Surrogate-Key: <each path segment>`, `Vary: Accept-Language`
//! on paths with `vary`; `fail=1`: 503; `delay`: wait before answering.
//! `/control/count/<path>` answers how many requests `/<path>` got.
//! Every response carries `X-Origin: NAME` and echoes `X-Request-Id`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::Duration;

/// What `/cache/...` answers (see the module doc).
struct CacheState {
    cc: String,
    version: u32,
    fail: bool,
    delay_ms: u64,
}

static CACHE: Mutex<CacheState> = Mutex::new(CacheState {
    cc: String::new(),
    version: 1,
    fail: false,
    delay_ms: 0,
});

/// Requests per path (without the query), for `/control/count/`.
static COUNTS: Mutex<Option<HashMap<String, u64>>> = Mutex::new(None);

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) =
                u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn cache_response(req: &Request, common: &str) -> Vec<u8> {
    let (cc, version, fail, delay) = {
        let st = CACHE.lock().unwrap();
        let cc = if st.cc.is_empty() {
            "max-age=60".to_string()
        } else {
            st.cc.clone()
        };
        (cc, st.version, st.fail, st.delay_ms)
    };
    if delay > 0 {
        std::thread::sleep(Duration::from_millis(delay));
    }
    if fail {
        return format!(
            "HTTP/1.1 503 Service Unavailable\r\n{common}Content-Length: 5\r\n\r\ndown\n"
        )
        .into_bytes();
    }
    let path = req.path.split('?').next().unwrap_or("");
    let etag = format!("\"v{version}\"");
    let vary = if path.contains("vary") {
        "Vary: Accept-Language\r\n"
    } else {
        ""
    };
    let tags: Vec<&str> = path
        .trim_start_matches('/')
        .split('/')
        .filter(|t| !t.is_empty())
        .collect();
    let head = format!(
        "{common}ETag: {etag}\r\nCache-Control: {cc}\r\nLast-Modified: Mon, 30 Nov 2026 00:00:00 GMT\r\nSurrogate-Key: {}\r\n{vary}",
        tags.join(" ")
    );
    if req.header("if-none-match") == Some(etag.as_str()) {
        return format!("HTTP/1.1 304 Not Modified\r\n{head}\r\n").into_bytes();
    }
    let body: Vec<u8> = match path.strip_prefix("/cache/big/") {
        Some(n) => {
            let n: usize = n
                .split('/')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(1 << 20);
            (0..n).map(|i| b'a' + (i % 26) as u8).collect()
        }
        None => format!(
            "v{version} {path} {}\n",
            req.header("accept-language").unwrap_or("-")
        )
        .into_bytes(),
    };
    let mut out = Vec::with_capacity(body.len() + 512);
    if path.contains("chunked") {
        out.extend(
            format!("HTTP/1.1 200 OK\r\n{head}Transfer-Encoding: chunked\r\n\r\n").as_bytes(),
        );
        for c in body.chunks(1000).filter(|_| req.method != "HEAD") {
            out.extend(format!("{:x}\r\n", c.len()).as_bytes());
            out.extend(c);
            out.extend(b"\r\n");
        }
        out.extend(b"0\r\n\r\n");
    } else {
        out.extend(
            format!(
                "HTTP/1.1 200 OK\r\n{head}Content-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        if req.method != "HEAD" {
            out.extend(body);
        }
    }
    out
}

/// `POST /control/cache?...` and `GET /control/count/<path>`.
fn control(req: &Request) -> String {
    if let Some(p) = req.path.strip_prefix("/control/count") {
        let n = COUNTS
            .lock()
            .unwrap()
            .as_ref()
            .and_then(|m| m.get(p).copied())
            .unwrap_or(0);
        return format!("{n}\n");
    }
    let query = req.path.split_once('?').map_or("", |(_, q)| q);
    let mut st = CACHE.lock().unwrap();
    for kv in query.split('&') {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let v = percent_decode(v);
        match k {
            "cc" => st.cc = v,
            "version" => st.version = v.parse().unwrap_or(1),
            "fail" => st.fail = v == "1",
            "delay" => st.delay_ms = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    format!(
        "cc={} version={} fail={} delay={}\n",
        st.cc, st.version, st.fail, st.delay_ms
    )
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let get = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let listen = get("--listen").expect("--listen ADDR");
    let name = get("--name").unwrap_or_else(|| listen.clone());
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| panic!("bind {listen}: {e}"));
    eprintln!("fg-test-origin {name} listening on {listen}");
    for stream in listener.incoming().flatten() {
        let name = name.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, &name);
        });
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_head(r: &mut BufReader<TcpStream>) -> std::io::Result<Option<Request>> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    Ok(Some(Request {
        method,
        path,
        headers,
    }))
}

/// Reads the request body (Content-Length or chunked); returns (len, sum).
fn read_body(r: &mut BufReader<TcpStream>, req: &Request) -> std::io::Result<(u64, u64)> {
    let mut len = 0u64;
    let mut sum = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut take = |r: &mut BufReader<TcpStream>, mut n: u64| -> std::io::Result<()> {
        while n > 0 {
            let k = r.read(&mut buf[..n.min(65536) as usize])?;
            if k == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            for b in &buf[..k] {
                sum = sum.wrapping_mul(31).wrapping_add(*b as u64);
            }
            len += k as u64;
            n -= k as u64;
        }
        Ok(())
    };
    if let Some(cl) = req.header("content-length") {
        take(r, cl.parse().unwrap_or(0))?;
    } else if req
        .header("transfer-encoding")
        .is_some_and(|t| t.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            r.read_line(&mut size)?;
            let n =
                u64::from_str_radix(size.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
            if n == 0 {
                let mut end = String::new();
                r.read_line(&mut end)?;
                break;
            }
            take(r, n)?;
            let mut crlf = String::new();
            r.read_line(&mut crlf)?;
        }
    }
    Ok((len, sum))
}

fn serve(stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let mut w = stream.try_clone()?;
    let mut r = BufReader::new(stream);
    while let Some(req) = read_head(&mut r)? {
        if let Some(rest) = req.path.strip_prefix("/early/") {
            let mut p = rest.split('/');
            let code: u16 = p.next().and_then(|s| s.parse().ok()).unwrap_or(200);
            let ms: u64 = p.next().and_then(|s| s.parse().ok()).unwrap_or(2000);
            let body = format!("early {code} from {name}\n");
            write!(
                w,
                "HTTP/1.1 {code} X\r\nX-Origin: {name}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )?;
            w.flush()?;
            std::thread::sleep(Duration::from_millis(ms));
            return Ok(());
        }
        let (body_len, body_sum) = read_body(&mut r, &req)?;
        let rid = req
            .header("x-request-id")
            .map(|v| format!("X-Request-Id: {v}\r\n"))
            .unwrap_or_default();
        let common = format!("X-Origin: {name}\r\n{rid}");
        let path = req.path.clone();
        {
            let bare = path.split('?').next().unwrap_or("").to_string();
            *COUNTS
                .lock()
                .unwrap()
                .get_or_insert_with(HashMap::new)
                .entry(bare)
                .or_default() += 1;
        }
        let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        match seg[0] {
            "cache" => {
                w.write_all(&cache_response(&req, &common))?;
            }
            "control" => {
                let body = control(&req);
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\n{common}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
            "status" => {
                let code: u16 = seg.get(1).and_then(|s| s.parse().ok()).unwrap_or(500);
                let body = format!("status {code} from {name}\n");
                write!(
                    w,
                    "HTTP/1.1 {code} X\r\n{common}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
            "hints" => {
                // 103 Early Hints ahead of the response (RFC 8297).
                let body = format!("hinted by {name}\n");
                write!(
                    w,
                    "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n{common}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
            "drip" => {
                // `/bytes/N`'s bytes, in 16 KiB writes spread over MS.
                let n: usize = seg.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let ms: u64 = seg.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
                write!(w, "HTTP/1.1 200 OK\r\n{common}Content-Length: {n}\r\n\r\n")?;
                let body: Vec<u8> = (0..n).map(|i| b'a' + ((i % 65536) % 26) as u8).collect();
                let pieces = n.div_ceil(16384).max(1) as u64;
                for piece in body.chunks(16384) {
                    w.write_all(piece)?;
                    w.flush()?;
                    std::thread::sleep(Duration::from_millis(ms / pieces));
                }
            }
            "slow" => {
                let ms: u64 = seg.get(1).and_then(|s| s.parse().ok()).unwrap_or(1000);
                std::thread::sleep(Duration::from_millis(ms));
                let body = format!("slow {ms} from {name}\n");
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\n{common}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
            "fault" => {
                // Misbehaving origins for the fault-injection tests. The
                // head announces 1000 bytes of body unless said otherwise.
                let kind = seg.get(1).copied().unwrap_or("");
                let head = format!("HTTP/1.1 200 OK\r\n{common}Content-Length: 1000\r\n\r\n");
                let part = [b'p'; 100];
                match kind {
                    "reset-mid-body" => {
                        w.write_all(head.as_bytes())?;
                        w.write_all(&part)?;
                        w.flush()?;
                        std::thread::sleep(Duration::from_millis(100));
                        let _ = socket2_linger_zero(r.get_ref());
                        return Ok(());
                    }
                    "half-close" => {
                        // FIN after the head; keep reading until the peer
                        // closes its side.
                        w.write_all(head.as_bytes())?;
                        w.flush()?;
                        w.shutdown(std::net::Shutdown::Write)?;
                        let mut sink = [0u8; 1024];
                        while r.read(&mut sink)? > 0 {}
                        return Ok(());
                    }
                    "short-body" => {
                        // Content-Length larger than the body, then close.
                        w.write_all(head.as_bytes())?;
                        w.write_all(&part)?;
                        w.flush()?;
                        return Ok(());
                    }
                    "stall-mid-body" => {
                        w.write_all(head.as_bytes())?;
                        w.write_all(&part)?;
                        w.flush()?;
                        // Silent (not closed) until the peer gives up.
                        let s = r.get_ref();
                        s.set_read_timeout(Some(Duration::from_secs(60)))?;
                        let mut sink = [0u8; 1024];
                        while r.read(&mut sink).unwrap_or(0) > 0 {}
                        return Ok(());
                    }
                    "trickle" => {
                        // 20 bytes, one every 100 ms.
                        write!(w, "HTTP/1.1 200 OK\r\n{common}Content-Length: 20\r\n\r\n")?;
                        w.flush()?;
                        for b in b"trickled-20-bytes-ok" {
                            std::thread::sleep(Duration::from_millis(100));
                            w.write_all(&[*b])?;
                            w.flush()?;
                        }
                    }
                    "long-body" => {
                        // More bytes than Content-Length: what follows looks
                        // like a response and must never reach a client. One
                        // write: extra bytes that come later than the next
                        // request are indistinguishable from its response.
                        w.write_all(
                            format!("HTTP/1.1 200 OK\r\n{common}Content-Length: 5\r\n\r\nshortHTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nSMUGGLED!").as_bytes(),
                        )?;
                    }
                    "garbage" => {
                        w.write_all(b"HELLO THIS IS NOT HTTP\r\n\r\n")?;
                        w.flush()?;
                        return Ok(());
                    }
                    "huge-head" => {
                        write!(w, "HTTP/1.1 200 OK\r\n{common}")?;
                        let line = format!("X-Filler: {}\r\n", "f".repeat(1000));
                        for _ in 0..200 {
                            w.write_all(line.as_bytes())?;
                        }
                        w.write_all(b"Content-Length: 2\r\n\r\nok")?;
                        w.flush()?;
                        return Ok(());
                    }
                    _ => write!(w, "HTTP/1.1 404 X\r\n{common}Content-Length: 0\r\n\r\n")?,
                }
            }
            "reset" => {
                // SO_LINGER 0 + close = RST.
                let s = r.get_ref();
                let _ = socket2_linger_zero(s);
                return Ok(());
            }
            "close" => {
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\n{common}Connection: close\r\n\r\nclose-delimited from {name}\n"
                )?;
                return Ok(());
            }
            "bytes" | "chunked" => {
                let n: u64 = seg.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                let chunked = seg[0] == "chunked";
                if chunked {
                    write!(
                        w,
                        "HTTP/1.1 200 OK\r\n{common}Transfer-Encoding: chunked\r\n\r\n"
                    )?;
                } else {
                    write!(w, "HTTP/1.1 200 OK\r\n{common}Content-Length: {n}\r\n\r\n")?;
                }
                let block: Vec<u8> = (0..65536u32).map(|i| b'a' + (i % 26) as u8).collect();
                let mut left = n;
                while left > 0 {
                    let k = left.min(block.len() as u64) as usize;
                    if chunked {
                        write!(w, "{k:x}\r\n")?;
                    }
                    w.write_all(&block[..k])?;
                    if chunked {
                        w.write_all(b"\r\n")?;
                    }
                    left -= k as u64;
                }
                if chunked {
                    w.write_all(b"0\r\n\r\n")?;
                }
            }
            "headers" => {
                let body: String = req
                    .headers
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}\n"))
                    .collect();
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\n{common}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
            "echo" => {
                let body = format!("len={body_len} sum={body_sum}\n");
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\n{common}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
            "ws" => {
                write!(
                    w,
                    "HTTP/1.1 101 Switching Protocols\r\n{common}Upgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
                )?;
                w.flush()?;
                // Echo whatever comes until the peer closes.
                let mut buf = [0u8; 4096];
                loop {
                    let n = r.read(&mut buf)?;
                    if n == 0 {
                        return Ok(());
                    }
                    w.write_all(&buf[..n])?;
                }
            }
            _ => {
                let body = format!("origin {name} method={} path={path}\n", req.method);
                write!(
                    w,
                    "HTTP/1.1 200 OK\r\n{common}Content-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
        }
        w.flush()?;
        if req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
    Ok(())
}

fn socket2_linger_zero(s: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let l = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt on a valid socket fd with a correctly sized linger.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&l as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as u32,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
