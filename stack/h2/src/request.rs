//! A request's header block and trailer block checked against RFC 9113
//! §8.1-8.3 and §8.5. Every violation makes the request malformed (§8.1.1):
//! a stream PROTOCOL_ERROR whose reason names the rule.

use crate::error::{ErrorCode, FrameError};
use crate::fields::{Field, check_name, check_value, is_connection_specific};

/// A well-formed request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Vec<u8>,
    /// Absent only for CONNECT (§8.5).
    pub scheme: Option<Vec<u8>>,
    /// `:authority`, or Host when `:authority` is absent (§8.3.1).
    pub authority: Vec<u8>,
    /// Absent only for CONNECT (§8.5).
    pub path: Option<Vec<u8>>,
    /// The regular fields in block order, Host included.
    pub headers: Vec<Field>,
    /// The declared body length, for the connection to check the DATA
    /// frames' total against (§8.1.1).
    pub content_length: Option<u64>,
}

fn malformed(stream: u32, reason: &'static str) -> FrameError {
    FrameError::stream(stream, ErrorCode::ProtocolError, reason)
}

/// Validates the decoded fields of a request HEADERS block on `stream`.
///
/// Choices where the RFC leaves room:
/// - Host and `:authority` both present must name the same authority
///   (compared case-insensitively); a mismatch is malformed rather than
///   `:authority` silently winning, so a proxy and its origin can never route
///   one request two ways (§8.3.1 "SHOULD treat as malformed").
/// - `:protocol` (extended CONNECT, RFC 8441) is refused: we do not send
///   SETTINGS_ENABLE_CONNECT_PROTOCOL, and without it the field is malformed.
/// - `content-length` must be plain digits; repeated fields must be equal.
pub fn validate_request(stream: u32, fields: Vec<Field>) -> Result<Request, FrameError> {
    let err = |reason| malformed(stream, reason);
    let (mut method, mut scheme, mut authority, mut path) = (None, None, None, None);
    let mut headers = Vec::with_capacity(fields.len());
    let mut regular_seen = false;
    for field in fields {
        check_value(&field.value).map_err(err)?;
        if field.is_pseudo() {
            // §8.3: pseudo-headers come first, each once, and only these.
            if regular_seen {
                return Err(err("pseudo-header field after a regular field"));
            }
            let slot = match &field.name[..] {
                b":method" => &mut method,
                b":scheme" => &mut scheme,
                b":authority" => &mut authority,
                b":path" => &mut path,
                b":protocol" => return Err(err("extended CONNECT (:protocol) is not enabled")),
                _ => return Err(err("unknown or response pseudo-header field in a request")),
            };
            if slot.replace(field.value).is_some() {
                return Err(err("duplicate pseudo-header field"));
            }
            continue;
        }
        regular_seen = true;
        check_regular(&field).map_err(err)?;
        headers.push(field);
    }

    let method = method.ok_or_else(|| err("missing :method"))?;
    if !crate::fields::is_token(&method) {
        return Err(err(":method is not a token"));
    }
    let host = single_host(&headers).map_err(err)?;
    let has_authority = authority.is_some();
    let authority = match (authority, host) {
        (Some(a), Some(h)) if !a.eq_ignore_ascii_case(h) => {
            return Err(err("Host and :authority disagree"));
        }
        (Some(a), _) => Some(a),
        (None, h) => h.map(<[u8]>::to_vec),
    };
    if let Some(a) = &authority {
        check_authority(a).map_err(err)?;
    }

    if method == b"CONNECT" {
        // §8.5: only :method and :authority.
        if scheme.is_some() || path.is_some() {
            return Err(err("CONNECT with :scheme or :path"));
        }
        // The target is :authority itself, not a Host stand-in.
        let authority = authority
            .filter(|_| has_authority)
            .ok_or_else(|| err("CONNECT without :authority"))?;
        let content_length = content_length(&headers).map_err(err)?;
        return Ok(Request {
            method,
            scheme: None,
            authority,
            path: None,
            headers,
            content_length,
        });
    }

    let scheme = scheme.ok_or_else(|| err("missing :scheme"))?;
    if !is_scheme(&scheme) {
        return Err(err(":scheme is not a URI scheme"));
    }
    let path = path.ok_or_else(|| err("missing :path"))?;
    if path.is_empty() {
        return Err(err("empty :path"));
    }
    // §8.3.1: origin-form, or "*" for OPTIONS only. For every scheme: the
    // path becomes an HTTP/1.1 request line upstream, where a space,
    // control byte or `#` would change what the origin reads (bytes as
    // httparse takes a target: 0x21..=0x7E, `#` aside, and 0x80 up).
    let asterisk = path == b"*" && method == b"OPTIONS";
    if path[0] != b'/' && !asterisk {
        return Err(err(":path is neither origin-form nor * for OPTIONS"));
    }
    if !path
        .iter()
        .all(|&b| ((0x21..=0x7e).contains(&b) && b != b'#') || b >= 0x80)
    {
        return Err(err(":path holds a space, control byte or '#'"));
    }
    let authority = authority.ok_or_else(|| err("neither :authority nor Host"))?;
    let content_length = content_length(&headers).map_err(err)?;
    Ok(Request {
        method,
        scheme: Some(scheme),
        authority,
        path: Some(path),
        headers,
        content_length,
    })
}

/// Validates a trailer block (a HEADERS block after the request's first one):
/// it must end the stream and hold no pseudo-header fields (§8.1).
pub fn validate_trailers(
    stream: u32,
    fields: Vec<Field>,
    end_stream: bool,
) -> Result<Vec<Field>, FrameError> {
    let err = |reason| malformed(stream, reason);
    if !end_stream {
        return Err(err("trailer block without END_STREAM"));
    }
    for field in &fields {
        if field.is_pseudo() {
            return Err(err("pseudo-header field in trailers"));
        }
        check_value(&field.value).map_err(err)?;
        check_regular(field).map_err(err)?;
    }
    Ok(fields)
}

/// The rules one regular field obeys wherever it appears (§8.2).
fn check_regular(field: &Field) -> Result<(), &'static str> {
    check_name(&field.name)?;
    if is_connection_specific(&field.name) {
        return Err("connection-specific header field");
    }
    // §8.2.2: TE is allowed, but only to say "trailers".
    if field.name == b"te" && !field.value.eq_ignore_ascii_case(b"trailers") {
        return Err("te header field with a value other than trailers");
    }
    Ok(())
}

fn single_host(headers: &[Field]) -> Result<Option<&[u8]>, &'static str> {
    let mut hosts = headers.iter().filter(|f| f.name == b"host");
    let first = hosts.next().map(|f| &f.value[..]);
    if hosts.next().is_some() {
        return Err("more than one Host header field");
    }
    Ok(first)
}

/// §8.3.1: no userinfo; and no characters a URI authority cannot hold.
fn check_authority(a: &[u8]) -> Result<(), &'static str> {
    if a.contains(&b'@') {
        return Err("authority with userinfo");
    }
    if a.iter()
        .any(|&b| b <= b' ' || b >= 0x7f || b"/?#".contains(&b))
    {
        return Err("authority with characters outside host[:port]");
    }
    Ok(())
}

/// RFC 3986 §3.1: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
fn is_scheme(s: &[u8]) -> bool {
    s.first().is_some_and(u8::is_ascii_alphabetic)
        && s.iter()
            .all(|&b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
}

fn content_length(headers: &[Field]) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for f in headers.iter().filter(|f| f.name == b"content-length") {
        let n = parse_digits(&f.value).ok_or("content-length is not a decimal number")?;
        if length.replace(n).is_some_and(|prev| prev != n) {
            return Err("content-length fields disagree");
        }
    }
    Ok(length)
}

fn parse_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}
