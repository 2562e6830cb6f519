//! Serving a stored response: its head as an origin would send it (whole,
//! one range, or 304) and the part of its body that goes out.

use std::time::SystemTime;

use ferrogate_cache::Object;

/// What of a stored response goes to the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Part {
    Whole,
    /// 206 with one range.
    Range(ByteRange),
    /// 304: the client's validators match (its head only).
    NotModified,
}

impl Part {
    /// The status this part of a stored response goes out with.
    pub fn status(self, stored: u16) -> u16 {
        match self {
            Part::Whole => stored,
            Part::Range(_) => 206,
            Part::NotModified => 304,
        }
    }
}

/// Fields a 304 carries from the stored response (RFC 9110 §15.4.5).
const NOT_MODIFIED_FIELDS: [&[u8]; 6] = [
    b"cache-control",
    b"content-location",
    b"date",
    b"etag",
    b"expires",
    b"vary",
];

/// One satisfiable byte range of a body of known length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub first: u64,
    pub last: u64,
    pub total: u64,
}

impl ByteRange {
    /// `bytes=a-b`, `bytes=a-`, `bytes=-n` (one range; RFC 9110 §14.1.2).
    /// `None`: several ranges, another unit, malformed or unsatisfiable —
    /// the origin answers those.
    pub fn parse(spec: &[u8], total: u64) -> Option<ByteRange> {
        let spec = std::str::from_utf8(spec).ok()?.trim();
        let (unit, set) = spec.split_once('=')?;
        if !unit.trim().eq_ignore_ascii_case("bytes") || set.contains(',') || total == 0 {
            return None;
        }
        let (a, b) = set.trim().split_once('-')?;
        let num = |x: &str| -> Option<u64> {
            (!x.is_empty() && x.bytes().all(|c| c.is_ascii_digit()))
                .then(|| x.parse().ok())
                .flatten()
        };
        let (first, last) = match (a.trim(), b.trim()) {
            ("", n) => {
                let n = num(n)?;
                if n == 0 {
                    return None;
                }
                (total.saturating_sub(n), total - 1)
            }
            (a, "") => (num(a)?, total - 1),
            (a, b) => (num(a)?, num(b)?.min(total - 1)),
        };
        (first <= last && first < total).then_some(ByteRange { first, last, total })
    }

    pub fn len(&self) -> u64 {
        self.last - self.first + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What of a stored body a response carries: all, or one range.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BodySlice {
    skip: u64,
    left: u64,
}

impl BodySlice {
    pub fn new(range: Option<ByteRange>) -> Self {
        match range {
            Some(r) => BodySlice {
                skip: r.first,
                left: r.len(),
            },
            None => BodySlice {
                skip: 0,
                left: u64::MAX,
            },
        }
    }

    /// The part of the next stored chunk that goes out (maybe empty).
    pub fn cut(&mut self, mut b: bytes::Bytes) -> bytes::Bytes {
        let skip = self.skip.min(b.len() as u64) as usize;
        self.skip -= skip as u64;
        let _ = b.split_to(skip);
        if (b.len() as u64) > self.left {
            b.truncate(self.left as usize);
        }
        self.left -= b.len() as u64;
        b
    }

    /// The range is complete (nothing more to send).
    pub fn done(&self) -> bool {
        self.left == 0
    }
}

/// Writes the head of a response served from the cache as an HTTP/1.1
/// response head as an origin would send it (status, stored fields, `Age`,
/// framing), for the client codec to rewrite like any upstream head.
/// Returns how the body is framed: `Some(len)` with a length, `None` chunked.
pub(crate) fn write_stored_head(
    object: &Object,
    now: SystemTime,
    allow_chunked: bool,
    part: Part,
    out: &mut crate::http::ByteBuf,
) -> Option<Option<u64>> {
    use std::fmt::Write as _;
    let meta = object.meta();
    let h = &meta.headers;
    let range = match part {
        Part::Range(r) => Some(r),
        _ => None,
    };
    if part == Part::NotModified {
        let mut ok = out.extend(b"HTTP/1.1 304 Not Modified\r\n");
        for (n, v) in &h.fields {
            if NOT_MODIFIED_FIELDS
                .iter()
                .any(|f| n.eq_ignore_ascii_case(f))
            {
                ok &= out.extend(n) && out.extend(b": ") && out.extend(v) && out.extend(b"\r\n");
            }
        }
        ok &= write!(out, "Age: {}\r\n\r\n", meta.age_header(now)).is_ok();
        return ok.then_some(Some(0));
    }
    // No body by definition (RFC 9110 §6.4.1): no framing field either.
    let bodiless = matches!(h.status, 204 | 304) || (100..200).contains(&h.status);
    let known = if let Some(r) = range {
        Some(r.len())
    } else if object.is_complete() {
        Some(object.body_len() as u64)
    } else {
        h.get("content-length")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let status = if range.is_some() { 206 } else { h.status };
    let mut ok = write!(out, "HTTP/1.1 {} {}\r\n", status, reason(status)).is_ok();
    if let Some(r) = range {
        ok &= write!(
            out,
            "Content-Range: bytes {}-{}/{}\r\n",
            r.first, r.last, r.total
        )
        .is_ok();
    }
    for (n, v) in &h.fields {
        if n.eq_ignore_ascii_case(b"content-length")
            || (range.is_some() && n.eq_ignore_ascii_case(b"content-range"))
        {
            continue;
        }
        ok &= out.extend(n) && out.extend(b": ") && out.extend(v) && out.extend(b"\r\n");
    }
    ok &= write!(out, "Age: {}\r\n", meta.age_header(now)).is_ok();
    ok &= match known {
        _ if bodiless => true,
        Some(n) => write!(out, "Content-Length: {n}\r\n").is_ok(),
        None if allow_chunked => out.extend(b"Transfer-Encoding: chunked\r\n"),
        None => true,
    };
    ok &= out.extend(b"\r\n");
    ok.then_some(known)
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        203 => "Non-Authoritative Information",
        204 => "No Content",
        206 => "Partial Content",
        300 => "Multiple Choices",
        301 => "Moved Permanently",
        308 => "Permanent Redirect",
        404 => "Not Found",
        405 => "Method Not Allowed",
        410 => "Gone",
        414 => "URI Too Long",
        501 => "Not Implemented",
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_ranges_are_one_satisfiable_range_or_none() {
        let r = |s: &str, n| ByteRange::parse(s.as_bytes(), n).map(|r| (r.first, r.last));
        assert_eq!(r("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(r("bytes=90-", 100), Some((90, 99)));
        assert_eq!(r("bytes=-10", 100), Some((90, 99)));
        assert_eq!(r("bytes=-1000", 100), Some((0, 99)));
        assert_eq!(r("bytes=50-1000", 100), Some((50, 99)));
        assert_eq!(r("BYTES = 1-2", 100), Some((1, 2)));
        for bad in [
            "bytes=100-",
            "bytes=5-4",
            "bytes=0-1,3-4",
            "items=0-1",
            "bytes=-0",
            "bytes=a-b",
            "bytes=-",
            "bytes=+1-2",
        ] {
            assert_eq!(r(bad, 100), None, "{bad}");
        }
        assert_eq!(r("bytes=0-9", 0), None);
        let mut s = BodySlice::new(ByteRange::parse(b"bytes=3-7", 20));
        assert_eq!(&s.cut(bytes::Bytes::from_static(b"0123"))[..], b"3");
        assert_eq!(&s.cut(bytes::Bytes::from_static(b"456789"))[..], b"4567");
        assert!(s.done());
        assert!(s.cut(bytes::Bytes::from_static(b"abc")).is_empty());
    }
}
