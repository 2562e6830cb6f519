//! Request and response heads: parse (httparse, which stays inside this
//! crate), validate the framing (the smuggling defences live here), and write
//! the rewritten head that goes to the other side.

use std::fmt::Write as _;

use super::ByteBuf;
use crate::HeaderLines;

/// Most headers a request or response head may carry.
pub const MAX_HEADERS: usize = 96;

/// One header field, borrowed from the bytes it was parsed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<'a> {
    pub name: &'a str,
    pub value: &'a [u8],
}

/// The header fields of a head in arrival order, whichever codec produced
/// them: routing, balancing and forwarding read fields through this, so they
/// do not depend on the HTTP version or the parser.
#[derive(Debug, Clone, Copy)]
pub struct Headers<'a>(Fields<'a>);

#[derive(Debug, Clone, Copy)]
enum Fields<'a> {
    Http1(&'a [httparse::Header<'a>]),
    List(&'a [Header<'a>]),
}

impl<'a> Headers<'a> {
    pub const EMPTY: Headers<'static> = Headers(Fields::List(&[]));

    /// Fields decoded elsewhere (tests, a later HTTP/2 decoder).
    pub fn from_list(list: &'a [Header<'a>]) -> Self {
        Headers(Fields::List(list))
    }

    pub fn len(&self) -> usize {
        match self.0 {
            Fields::Http1(h) => h.len(),
            Fields::List(h) => h.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn iter(&self) -> impl Iterator<Item = Header<'a>> + 'a {
        let (http1, list) = match self.0 {
            Fields::Http1(h) => (h, &[][..]),
            Fields::List(l) => (&[][..], l),
        };
        http1
            .iter()
            .map(|h| Header {
                name: h.name,
                value: h.value,
            })
            .chain(list.iter().copied())
    }

    /// The first value of `name` (case-insensitive), untrimmed.
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    fn count(&self, name: &str) -> usize {
        self.iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    }
}

/// Room for the fields of one request head; lives on the caller's stack so
/// parsing allocates nothing.
pub struct HeaderSlots<'b>([httparse::Header<'b>; MAX_HEADERS]);

impl Default for HeaderSlots<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl HeaderSlots<'_> {
    pub fn new() -> Self {
        HeaderSlots([httparse::EMPTY_HEADER; MAX_HEADERS])
    }
}

/// A parsed request head, borrowing the buffer it was parsed from.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The origin-form target: `/path?query` (or `*` for `OPTIONS`).
    pub target: &'a str,
    pub http10: bool,
    pub headers: Headers<'a>,
}

/// How the body of a message is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    None,
    Length(u64),
    Chunked,
    /// Response only: the body ends when the upstream closes.
    UntilClose,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("head larger than the buffer")]
    TooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    #[error("malformed head: {0}")]
    Malformed(&'static str),
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
}

impl HeadError {
    /// The status a client gets for a bad request head.
    pub fn status(&self) -> u16 {
        match self {
            HeadError::TooLarge | HeadError::TooManyHeaders => 431,
            HeadError::Malformed(_) => 400,
            HeadError::Unsupported(_) => 501,
        }
    }
}

/// What the proxy keeps of a request head after its bytes are consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHead {
    pub head_len: usize,
    /// The method, for known methods (retry rules); "OTHER" otherwise.
    pub method: &'static str,
    pub is_head: bool,
    pub idempotent: bool,
    pub framing: BodyFraming,
    /// The client wants the connection kept open after this exchange.
    pub keep_alive: bool,
    pub http10: bool,
    pub expect_continue: bool,
}

/// What the proxy keeps of a response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResponseHead {
    pub head_len: usize,
    pub status: u16,
    pub framing: BodyFraming,
    /// The upstream connection may carry another request afterwards.
    pub reusable: bool,
    /// An interim 1xx response: forward nothing, read the next head.
    pub interim: bool,
}

const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// Whether a `Connection` field of `headers` names `name`: such a field
/// describes the hop it came over and goes no further (RFC 9110 §7.6.1).
/// Never the fields that frame the message or name its host: a peer could
/// otherwise strip the `Content-Length` we framed the body by and smuggle
/// the body to the other side as a second message.
fn named_by_connection(headers: Headers<'_>, name: &str) -> bool {
    if ["content-length", "transfer-encoding", "host"]
        .iter()
        .any(|f| f.eq_ignore_ascii_case(name))
    {
        return false;
    }
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .any(|h| has_token(h.value, name))
}

fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

fn parse_content_length(value: &[u8]) -> Option<u64> {
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Framing facts gathered from a head's header fields.
struct Framing {
    content_length: Option<u64>,
    chunked: bool,
    transfer_encoding: bool,
    conn_close: bool,
    conn_keep_alive: bool,
}

fn scan_framing(headers: Headers<'_>) -> Result<Framing, HeadError> {
    let mut f = Framing {
        content_length: None,
        chunked: false,
        transfer_encoding: false,
        conn_close: false,
        conn_keep_alive: false,
    };
    for h in headers.iter() {
        if h.name.eq_ignore_ascii_case("content-length") {
            let v = parse_content_length(h.value.trim_ascii())
                .ok_or(HeadError::Malformed("invalid Content-Length"))?;
            if f.content_length.is_some_and(|prev| prev != v) {
                return Err(HeadError::Malformed("conflicting Content-Length"));
            }
            f.content_length = Some(v);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            f.transfer_encoding = true;
            // Only a final `chunked` delimits a body; remember the last coding.
            let last = h.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            f.chunked = last.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if h.name.eq_ignore_ascii_case("connection") {
            f.conn_close |= has_token(h.value, "close");
            f.conn_keep_alive |= has_token(h.value, "keep-alive");
        }
    }
    Ok(f)
}

/// Parses a request head at the start of `buf`. `Ok(None)`: incomplete.
pub fn parse_request<'b, 'h>(
    buf: &'b [u8],
    slots: &'h mut HeaderSlots<'b>,
    buffer_full: bool,
) -> Result<Option<(Request<'h>, RequestHead)>, HeadError> {
    let mut req = httparse::Request::new(&mut slots.0);
    let head_len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buffer_full => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("request head")),
    };
    // httparse accepts bare LF line endings; a proxy must not, or a peer that
    // splits lines differently can be fed a different request.
    if has_bare_lf(&buf[..head_len]) {
        return Err(HeadError::Malformed("bare LF in head"));
    }
    let method = req.method.unwrap_or("");
    let path = req.path.unwrap_or("");
    let http10 = req.version == Some(0);
    let origin_form = path.starts_with('/') || (method == "OPTIONS" && path == "*");
    if !origin_form {
        // Absolute-form and authority-form targets are for forward proxies.
        return Err(HeadError::Malformed("request target must be origin-form"));
    }
    let headers = Headers(Fields::Http1(req.headers));
    let f = scan_framing(headers)?;
    let hosts = headers.count("host");
    if hosts > 1 || (!http10 && hosts == 0) {
        return Err(HeadError::Malformed("exactly one Host header required"));
    }
    if let Some(h) = headers.get("host")
        && !valid_host(h)
    {
        return Err(HeadError::Malformed("invalid Host header"));
    }
    let framing = match (f.transfer_encoding, f.content_length) {
        (true, Some(_)) => {
            return Err(HeadError::Malformed(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        (true, None) if http10 => {
            return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
        }
        (true, None) if !f.chunked => {
            return Err(HeadError::Unsupported("transfer coding"));
        }
        (true, None) => BodyFraming::Chunked,
        (false, Some(0)) | (false, None) => BodyFraming::None,
        (false, Some(n)) => BodyFraming::Length(n),
    };
    let expect_continue = headers.iter().any(|h| {
        h.name.eq_ignore_ascii_case("expect")
            && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
    });
    let keep_alive = if http10 {
        f.conn_keep_alive && !f.conn_close
    } else {
        !f.conn_close
    };
    let info = RequestHead {
        head_len,
        method: static_method(method),
        is_head: method == "HEAD",
        idempotent: matches!(
            method,
            "GET" | "HEAD" | "OPTIONS" | "PUT" | "DELETE" | "TRACE"
        ),
        framing,
        keep_alive,
        http10,
        expect_continue,
    };
    let req = Request {
        method,
        target: path,
        http10,
        headers,
    };
    Ok(Some((req, info)))
}

/// The method as a static name for the known ones (retry rules), else "OTHER".
pub fn static_method(m: &str) -> &'static str {
    match m {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "PATCH" => "PATCH",
        "TRACE" => "TRACE",
        "CONNECT" => "CONNECT",
        _ => "OTHER",
    }
}

/// The client's `X-Request-Id`, if it sent one.
pub fn request_id<'a>(req: &Request<'a>) -> Option<&'a [u8]> {
    req.headers.get("x-request-id")
}

fn has_bare_lf(head: &[u8]) -> bool {
    head.iter()
        .enumerate()
        .any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

/// RFC 3986 `host [":" port]`: a reg-name (unreserved, pct-encoded,
/// sub-delims), an IPv4 address or a bracketed IPv6 literal. Quotes, spaces,
/// slashes, `@` and the like would reach routing, logs and the upstream.
pub fn valid_host(v: &[u8]) -> bool {
    if v.is_empty() {
        return true; // HTTP/1.1 allows an empty Host (no authority).
    }
    let (host, port) = if v[0] == b'[' {
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &v[1..end];
        if inner.is_empty()
            || !inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'))
        {
            return false;
        }
        (&v[..=end], &v[end + 1..])
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i..]),
            None => (v, &v[v.len()..]),
        }
    };
    let reg_name_ok = host.first() == Some(&b'[')
        || host.iter().all(|&b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'-' | b'.'
                        | b'_'
                        | b'~'
                        | b'%'
                        | b'!'
                        | b'$'
                        | b'&'
                        | b'\''
                        | b'('
                        | b')'
                        | b'*'
                        | b'+'
                        | b','
                        | b';'
                        | b'='
                )
        });
    let port_ok = match port.split_first() {
        None => true,
        Some((b':', digits)) => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        Some(_) => false,
    };
    reg_name_ok && port_ok
}

/// The Host header without a port, lower-cased comparison left to the router.
/// One trailing `.` goes too: `partner.example.` (the name, fully
/// qualified) is `partner.example` to routes and rules, as to DNS.
pub fn request_host<'a>(req: &Request<'a>) -> Option<&'a str> {
    let v = std::str::from_utf8(req.headers.get("host")?).ok()?.trim();
    // Strip a port, but leave an IPv6 literal's brackets intact.
    let host = match v.rfind(':') {
        Some(i) if !v[i..].contains(']') => &v[..i],
        _ => v,
    };
    Some(match host.strip_suffix('.') {
        Some(name) if !name.is_empty() => name,
        _ => host,
    })
}

/// Writes the head sent to the upstream. False when `out` is too small.
/// Hop-by-hop fields and `Expect` never go (the proxy answers expectations
/// itself); `upgrade` keeps `Upgrade` + `Connection: upgrade`. Fields for
/// which `strip` says yes are left out; `add` appends the proxy's own lines
/// (forwarding, request id, identity) before the end of the head.
pub fn write_upstream_request(
    req: &Request<'_>,
    upgrade: bool,
    strip: impl Fn(&str) -> bool,
    add: impl FnOnce(&mut HeaderLines<'_>),
    refused: &mut u64,
    out: &mut ByteBuf,
) -> bool {
    let mut ok = write!(out, "{} {} HTTP/1.1\r\n", req.method, req.target).is_ok();
    // Most heads have no Connection field: then no field is looked up.
    let nominates = req.headers.contains("connection");
    for h in req.headers.iter() {
        let keep_for_upgrade = upgrade && h.name.eq_ignore_ascii_case("upgrade");
        if ((is_hop_by_hop(h.name) || (nominates && named_by_connection(req.headers, h.name)))
            && !keep_for_upgrade)
            || h.name.eq_ignore_ascii_case("expect")
            || strip(h.name)
        {
            continue;
        }
        ok &= out.extend(h.name.as_bytes())
            && out.extend(b": ")
            && out.extend(h.value)
            && out.extend(b"\r\n");
    }
    let mut lines = HeaderLines::new(out);
    add(&mut lines);
    ok &= lines.fits();
    *refused += u64::from(lines.refused());
    if upgrade {
        ok &= out.extend(b"Connection: upgrade\r\n");
    }
    ok && out.extend(b"\r\n")
}

/// A response head as the phases see it (status and fields), whichever
/// codec parsed it.
#[derive(Debug, Clone, Copy)]
pub struct ResponseView<'a> {
    pub status: u16,
    pub headers: Headers<'a>,
}

/// Whether the request asks to switch protocols (WebSocket and the like):
/// `Connection: upgrade` plus an `Upgrade` header.
pub fn wants_upgrade(req: &Request<'_>) -> bool {
    let conn_upgrade = req
        .headers
        .iter()
        .any(|h| h.name.eq_ignore_ascii_case("connection") && has_token(h.value, "upgrade"));
    conn_upgrade
        && req
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("upgrade"))
}

/// Parses a response head at the start of `buf`. `Ok(None)`: incomplete.
pub fn parse_response(
    buf: &[u8],
    request_was_head: bool,
    buffer_full: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buffer_full => return Err(HeadError::TooLarge),
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(_) => return Err(HeadError::Malformed("response head")),
    };
    let status = resp.code.unwrap_or(0);
    if status == 101 {
        // Switching protocols: the caller tunnels, if it asked to upgrade.
        return Ok(Some(ResponseHead {
            head_len,
            status,
            framing: BodyFraming::UntilClose,
            reusable: false,
            interim: false,
        }));
    }
    if (100..200).contains(&status) {
        return Ok(Some(ResponseHead {
            head_len,
            status,
            framing: BodyFraming::None,
            reusable: true,
            interim: true,
        }));
    }
    let f = scan_framing(Headers(Fields::Http1(resp.headers)))?;
    let framing = if request_was_head || status == 204 || status == 304 {
        BodyFraming::None
    } else if f.transfer_encoding {
        if f.chunked {
            BodyFraming::Chunked
        } else {
            BodyFraming::UntilClose
        }
    } else {
        match f.content_length {
            Some(0) => BodyFraming::None,
            Some(n) => BodyFraming::Length(n),
            None => BodyFraming::UntilClose,
        }
    };
    let http11 = resp.version == Some(1);
    let reusable = http11 && !f.conn_close && framing != BodyFraming::UntilClose;
    Ok(Some(ResponseHead {
        head_len,
        status,
        framing,
        reusable,
        interim: false,
    }))
}

/// Writes the response head sent to the client, dropping hop-by-hop fields.
pub fn write_client_response(
    buf: &[u8],
    keep_client: bool,
    client_http10: bool,
    strip: impl Fn(&str) -> bool,
    add: impl FnOnce(&ResponseView<'_>, &mut HeaderLines<'_>),
    refused: &mut u64,
    out: &mut ByteBuf,
) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    if !matches!(resp.parse(buf), Ok(httparse::Status::Complete(_))) {
        return false;
    }
    let status = resp.code.unwrap_or(502);
    let mut ok = write!(out, "HTTP/1.1 {} {}\r\n", status, resp.reason.unwrap_or("")).is_ok();
    let switching = status == 101;
    let fields = Headers(Fields::Http1(resp.headers));
    let nominates = fields.contains("connection");
    // Both framings: chunked wins, and a proxy forwarding it must drop the
    // length (RFC 9112 §6.3) or a client trusting it reads out of step.
    let chunked = fields.contains("transfer-encoding");
    for h in resp.headers.iter() {
        let upgrade = switching && h.name.eq_ignore_ascii_case("upgrade");
        if ((is_hop_by_hop(h.name) || (nominates && named_by_connection(fields, h.name)))
            && !upgrade)
            || (chunked && h.name.eq_ignore_ascii_case("content-length"))
            || strip(h.name)
        {
            continue;
        }
        ok &= out.extend(h.name.as_bytes())
            && out.extend(b": ")
            && out.extend(h.value)
            && out.extend(b"\r\n");
    }
    let view = ResponseView {
        status,
        headers: Headers(Fields::Http1(resp.headers)),
    };
    let mut lines = HeaderLines::new(out);
    add(&view, &mut lines);
    ok &= lines.fits();
    *refused += u64::from(lines.refused());
    if switching {
        ok &= out.extend(b"Connection: upgrade\r\n");
    } else if !keep_client {
        ok &= out.extend(b"Connection: close\r\n");
    } else if client_http10 {
        ok &= out.extend(b"Connection: keep-alive\r\n");
    }
    ok && out.extend(b"\r\n")
}

/// Turns a head that `write_client_response` wrote (its framing fields
/// left out by the caller's `strip`) into a chunked one: the proxy re-frames
/// a body whose length it does not know in advance. False: no room.
pub fn frame_head_chunked(out: &mut ByteBuf) -> bool {
    let n = out.len();
    if !out.filled().ends_with(b"\r\n\r\n") {
        return false;
    }
    out.truncate(n - 2);
    if out.extend(b"Transfer-Encoding: chunked\r\n\r\n") {
        return true;
    }
    out.truncate(n - 2);
    let _ = out.extend(b"\r\n");
    false
}

/// The status and fields of a complete response head (one written by
/// `write_client_response`), for a client codec that frames fields itself
/// (HTTP/2): `out` gets every field in order, borrowed from `buf`.
pub fn response_fields<'b>(buf: &'b [u8], out: &mut Vec<(&'b [u8], &'b [u8])>) -> Option<u16> {
    // Room for the origin's fields plus the lines the phases added.
    let mut headers = [httparse::EMPTY_HEADER; 2 * MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    if !matches!(resp.parse(buf), Ok(httparse::Status::Complete(_))) {
        return None;
    }
    let status = resp.code?;
    out.extend(resp.headers.iter().map(|h| (h.name.as_bytes(), h.value)));
    Some(status)
}

/// A response the proxy itself makes (errors, direct routes).
#[derive(Debug, Clone, Copy)]
pub struct LocalResponse<'a> {
    pub status: u16,
    pub content_type: &'a str,
    pub body: &'a [u8],
    pub keep_alive: bool,
    /// False for HEAD: the head announces the body's length, no body.
    pub include_body: bool,
}

/// Whether a response with this status may carry content: 1xx, 204 and
/// 304 end with their head (RFC 9112 §6.3), and a 205 must not carry any
/// (RFC 9110 §15.3.6).
pub fn status_allows_body(status: u16) -> bool {
    !(status < 200 || status == 204 || status == 205 || status == 304)
}

/// Writes a response the proxy itself generates (errors, direct routes,
/// plugins' local answers). Every field but the codec's own framing goes
/// through [`HeaderLines`], so a content type or an added line with CR, LF
/// or NUL (a plugin's, say) is left out and counted in `refused` instead of
/// splitting the head. A status without content (1xx, 204, 205, 304) gets
/// no body and no length (a 205 says `Content-Length: 0`: it is not among
/// the statuses that end with their head, so a client would otherwise read
/// to the close).
pub fn write_local_response(
    r: &LocalResponse<'_>,
    add: impl FnOnce(&mut HeaderLines<'_>),
    refused: &mut u64,
    out: &mut ByteBuf,
) -> bool {
    let LocalResponse {
        status,
        content_type,
        body,
        keep_alive,
        include_body,
    } = *r;
    let allows_body = status_allows_body(status);
    let mut ok = write!(
        out,
        "HTTP/1.1 {} {}\r\nServer: ferrogate\r\n",
        status,
        reason(status)
    )
    .is_ok();
    if allows_body {
        ok &= write!(out, "Content-Length: {}\r\n", body.len()).is_ok();
    } else if status == 205 {
        ok &= out.extend(b"Content-Length: 0\r\n");
    }
    if !keep_alive {
        ok &= out.extend(b"Connection: close\r\n");
    }
    let mut lines = HeaderLines::new(out);
    if allows_body {
        lines.add("Content-Type", content_type.as_bytes());
    }
    add(&mut lines);
    *refused += u64::from(lines.refused());
    ok && lines.fits() && out.extend(b"\r\n") && (!include_body || !allows_body || out.extend(body))
}

pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        204 => "No Content",
        301 => "Moved Permanently",
        302 => "Found",
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        413 => "Content Too Large",
        101 => "Switching Protocols",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(status: u16, content_type: &str, body: &[u8], refused: &mut u64) -> Vec<u8> {
        let mut out = ByteBuf::with_capacity(512);
        assert!(write_local_response(
            &LocalResponse {
                status,
                content_type,
                body,
                keep_alive: true,
                include_body: true,
            },
            |lines| {
                lines.add("X-Evil", b"a\r\nSet-Cookie: owned=1");
                lines.add("X-Ok", b"1");
            },
            refused,
            &mut out,
        ));
        out.filled().to_vec()
    }

    #[test]
    fn a_local_answer_refuses_a_content_type_or_line_that_would_split_its_head() {
        let mut refused = 0;
        let out = local(403, "text/html\r\nSet-Cookie: owned=1", b"no", &mut refused);
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("Set-Cookie"), "{text}");
        assert!(!text.contains("Content-Type"), "{text}");
        assert!(text.contains("X-Ok: 1\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\nno"), "{text}");
        assert_eq!(refused, 2);
        let mut refused = 0;
        let text = String::from_utf8(local(200, "text/plain", b"ok", &mut refused)).unwrap();
        assert!(
            text.contains("Content-Type: text/plain\r\nX-Ok: 1\r\n"),
            "{text}"
        );
        assert_eq!(refused, 1);
    }

    #[test]
    fn a_local_answer_without_content_has_no_body_and_no_length() {
        for status in [204, 304] {
            let text = String::from_utf8(local(status, "text/plain", b"body", &mut 0)).unwrap();
            assert!(text.ends_with("X-Ok: 1\r\n\r\n"), "{status}: {text}");
            assert!(!text.contains("Content-Length"), "{status}: {text}");
            assert!(!text.contains("Content-Type"), "{status}: {text}");
        }
        let text = String::from_utf8(local(205, "text/plain", b"body", &mut 0)).unwrap();
        assert!(text.ends_with("X-Ok: 1\r\n\r\n"), "{text}");
        assert!(text.contains("Content-Length: 0\r\n"), "{text}");
        let text = String::from_utf8(local(200, "text/plain", b"body", &mut 0)).unwrap();
        assert!(text.contains("Content-Length: 4\r\n") && text.ends_with("\r\n\r\nbody"));
    }

    fn parse(raw: &[u8]) -> Result<Option<RequestHead>, HeadError> {
        let mut h = HeaderSlots::new();
        parse_request(raw, &mut h, false).map(|o| o.map(|(_, i)| i))
    }

    #[test]
    fn simple_get_keeps_alive() {
        let i = parse(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(i.keep_alive && i.idempotent && !i.http10);
        assert_eq!(i.framing, BodyFraming::None);
    }

    #[test]
    fn partial_head_needs_more_until_buffer_full() {
        assert!(parse(b"GET / HTTP/1.1\r\nHo").unwrap().is_none());
        let mut h = HeaderSlots::new();
        assert_eq!(
            parse_request(b"GET / HTTP/1.1\r\nHo", &mut h, true).unwrap_err(),
            HeadError::TooLarge
        );
    }

    #[test]
    fn request_host_drops_the_port_and_one_trailing_dot() {
        for (host, want) in [
            ("partner.example", "partner.example"),
            ("partner.example.", "partner.example"),
            ("partner.example.:8080", "partner.example"),
            ("[fd77::10]:443", "[fd77::10]"),
            (".", "."),
        ] {
            let list = [Header {
                name: "Host",
                value: host.as_bytes(),
            }];
            let req = Request {
                method: "GET",
                target: "/",
                http10: false,
                headers: Headers::from_list(&list),
            };
            assert_eq!(request_host(&req), Some(want), "{host}");
        }
    }

    #[test]
    fn valid_host_forms_are_accepted() {
        for host in [
            "a",
            "a.example:8080",
            "10.77.0.10",
            "10.77.0.10:80",
            "[fd77::10]",
            "[fd77::10]:443",
            "xn--bcher-kva.example",
            "under_score.example",
        ] {
            let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
            assert!(parse(raw.as_bytes()).is_ok(), "{host}");
        }
    }

    #[test]
    fn smuggling_shapes_are_rejected() {
        let cases: &[&[u8]] = &[
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3 3\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET http://evil/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\nHost: a\n\n",
            b"GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: y\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\"b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: evil.com/x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: user@evil\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: [zz::1]\r\n\r\n",
        ];
        for raw in cases {
            let err = parse(raw).expect_err(&String::from_utf8_lossy(raw));
            assert_eq!(err.status(), 400, "{}", String::from_utf8_lossy(raw));
        }
        let e = parse(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n")
            .unwrap_err();
        assert_eq!(e.status(), 501);
    }

    #[test]
    fn repeated_equal_content_length_is_accepted() {
        let i =
            parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(i.framing, BodyFraming::Length(3));
    }

    #[test]
    fn http10_closes_unless_keep_alive_asked() {
        assert!(
            !parse(b"GET / HTTP/1.0\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
        assert!(
            parse(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .unwrap()
                .keep_alive
        );
    }

    #[test]
    fn upstream_head_drops_hop_by_hop_expect_and_stripped_fields_then_adds_lines() {
        let raw = b"GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, foo\r\nKeep-Alive: 5\r\nFoo: hop\r\nExpect: 100-continue\r\nX-Client-CN: forged\r\n\r\n";
        let mut h = HeaderSlots::new();
        let (req, _) = parse_request(raw, &mut h, false).unwrap().unwrap();
        let mut out = ByteBuf::with_capacity(1024);
        assert!(write_upstream_request(
            &req,
            false,
            |name| name.eq_ignore_ascii_case("x-client-cn"),
            |l| {
                l.add("X-Request-Id", b"abc-1");
            },
            &mut 0,
            &mut out
        ));
        let s = std::str::from_utf8(out.filled()).unwrap();
        assert_eq!(
            s,
            "GET /x HTTP/1.1\r\nHost: a\r\nX-Request-Id: abc-1\r\n\r\n"
        );
    }

    #[test]
    fn a_connection_header_cannot_strip_the_framing_or_the_host() {
        // Smuggling: the body framed by Content-Length must reach the
        // origin with that Content-Length, whatever Connection names.
        let raw = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: content-length, host, x-hop\r\nX-Hop: 1\r\n\r\n";
        let mut h = HeaderSlots::new();
        let (req, info) = parse_request(raw, &mut h, false).unwrap().unwrap();
        assert_eq!(info.framing, BodyFraming::Length(5));
        let mut out = ByteBuf::with_capacity(1024);
        assert!(write_upstream_request(
            &req,
            false,
            |_| false,
            |_| {},
            &mut 0,
            &mut out
        ));
        let s = std::str::from_utf8(out.filled()).unwrap();
        assert_eq!(s, "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n");
        let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: content-length\r\n\r\n";
        let mut out = ByteBuf::with_capacity(1024);
        assert!(write_client_response(
            resp,
            true,
            false,
            |_| false,
            |_, _| {},
            &mut 0,
            &mut out
        ));
        assert!(
            std::str::from_utf8(out.filled())
                .unwrap()
                .contains("Content-Length: 2\r\n")
        );
    }

    #[test]
    fn client_head_drops_the_fields_the_origins_connection_header_names() {
        let raw = b"HTTP/1.1 200 OK\r\nConnection: close, X-Hop\r\nX-Hop: 1\r\nX-End: 2\r\n\r\n";
        let mut out = ByteBuf::with_capacity(1024);
        assert!(write_client_response(
            raw,
            true,
            false,
            |_| false,
            |_, _| {},
            &mut 0,
            &mut out
        ));
        let s = std::str::from_utf8(out.filled()).unwrap();
        assert_eq!(s, "HTTP/1.1 200 OK\r\nX-End: 2\r\n\r\n");
    }

    #[test]
    fn upstream_head_that_does_not_fit_is_refused() {
        let raw = b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut h = HeaderSlots::new();
        let (req, _) = parse_request(raw, &mut h, false).unwrap().unwrap();
        let mut out = ByteBuf::with_capacity(40);
        let big = [b'v'; 64];
        assert!(!write_upstream_request(
            &req,
            false,
            |_| false,
            |l| {
                l.add("X-Big", &big);
            },
            &mut 0,
            &mut out
        ));
    }

    #[test]
    fn client_head_shows_the_response_to_the_phase_and_keeps_its_lines() {
        let raw = b"HTTP/1.1 200 OK\r\nX-Request-Id: up\r\nKeep-Alive: 5\r\n\r\n";
        let mut out = ByteBuf::with_capacity(1024);
        let mut seen = None;
        assert!(write_client_response(
            raw,
            false,
            false,
            |_| false,
            |resp, l| {
                seen = Some((
                    resp.status,
                    resp.headers.get("x-request-id").map(<[u8]>::to_vec),
                ));
                l.add("X-Extra", b"1");
            },
            &mut 0,
            &mut out
        ));
        assert_eq!(seen, Some((200, Some(b"up".to_vec()))));
        let s = std::str::from_utf8(out.filled()).unwrap();
        assert_eq!(
            s,
            "HTTP/1.1 200 OK\r\nX-Request-Id: up\r\nX-Extra: 1\r\nConnection: close\r\n\r\n"
        );
    }

    #[test]
    fn response_framing() {
        let r = parse_response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
            false,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!(r.framing, BodyFraming::Length(5));
        assert!(r.reusable);
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, false)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, BodyFraming::None);
        let r = parse_response(b"HTTP/1.0 200 OK\r\n\r\n", false, false)
            .unwrap()
            .unwrap();
        assert_eq!(r.framing, BodyFraming::UntilClose);
        assert!(!r.reusable);
        let r = parse_response(b"HTTP/1.1 100 Continue\r\n\r\n", false, false)
            .unwrap()
            .unwrap();
        assert!(r.interim);
    }
}
