//! Access-log records: one fixed-size, heap-free record per response, pushed
//! by the stack into a bounded queue that a logger thread (the engine's)
//! drains and writes as JSON lines. A full queue drops the record and counts
//! it; the data path never waits for the log.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

/// Text kept inline, truncated to `N` bytes.
#[derive(Clone, Copy)]
pub struct Field<const N: usize> {
    len: u16,
    truncated: bool,
    buf: [u8; N],
}

impl<const N: usize> Default for Field<N> {
    fn default() -> Self {
        Self {
            len: 0,
            truncated: false,
            buf: [0; N],
        }
    }
}

impl<const N: usize> Field<N> {
    pub fn set(&mut self, v: &[u8]) {
        let n = v.len().min(N);
        self.buf[..n].copy_from_slice(&v[..n]);
        self.len = n as u16;
        self.truncated = v.len() > N;
    }

    pub fn clear(&mut self) {
        self.len = 0;
        self.truncated = false;
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether the value was longer than the field (the log marks it).
    pub fn truncated(&self) -> bool {
        self.truncated
    }
}

/// The client's protocol.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Protocol {
    #[default]
    Http1,
    Http2,
    Http3,
    /// A TCP listener's connection (one record per connection).
    Tcp,
    /// A UDP listener's session (one record per session, at its end).
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::Http2 => "HTTP/2",
            Protocol::Http3 => "HTTP/3",
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// One response, as the access log sees it.
#[derive(Clone, Copy, Default)]
pub struct AccessRecord {
    /// Stack time (µs since the worker's clock start) of the response head.
    pub at_us: i64,
    /// Request head parsed → response head sent.
    pub duration_us: u64,
    pub status: u16,
    pub client: Option<SocketAddr>,
    pub listener_port: u16,
    pub tls: bool,
    pub protocol: Protocol,
    pub method: Field<16>,
    pub host: Field<96>,
    pub path: Field<192>,
    pub request_id: Field<64>,
    pub route: Field<48>,
    /// The L7 rule the request matched, and its tag.
    pub rule: Field<48>,
    pub tag: Field<48>,
    /// The rate limit that answered 429.
    pub limit: Field<48>,
    pub upstream: Option<SocketAddr>,
    /// Upstream retries of this request.
    pub retries: u8,
    /// Why the proxy answered itself, for local errors (`no_route`, …);
    /// for TCP connections, why the connection ended (`closed`,
    /// `idle_timeout`, `client_reset`, `upstream_reset`, an error code).
    pub error: &'static str,
    /// What the response cache did (`HIT`, `MISS`, …), on caching routes.
    pub cache: &'static str,
    /// TCP connections and UDP sessions: bytes client → upstream and
    /// upstream → client (written for protocols `TCP` and `UDP` only).
    pub bytes_up: u64,
    pub bytes_down: u64,
}

impl AccessRecord {
    /// Forgets the request (a keep-alive connection's next one starts
    /// empty, so a 400 before a parse does not show the last request).
    pub fn reset(&mut self) {
        self.method.clear();
        self.host.clear();
        self.path.clear();
        self.request_id.clear();
        self.route.clear();
        self.rule.clear();
        self.tag.clear();
        self.limit.clear();
        self.upstream = None;
        self.retries = 0;
        self.error = "";
        self.cache = "";
    }

    /// Appends the record as one JSON object (no newline). `time` is the
    /// wall-clock timestamp the writer computed.
    pub fn write_json(&self, worker: usize, time: &str, out: &mut String) {
        use std::fmt::Write;
        out.push('{');
        let _ = write!(out, "\"time\":\"{time}\",\"worker\":{worker}");
        match self.client {
            Some(c) => {
                let _ = write!(
                    out,
                    ",\"client\":\"{}\",\"client_port\":{}",
                    ip(c.ip()),
                    c.port()
                );
            }
            None => out.push_str(",\"client\":null"),
        }
        let _ = write!(
            out,
            ",\"listener\":{},\"tls\":{},\"protocol\":\"{}\"",
            self.listener_port,
            self.tls,
            self.protocol.as_str()
        );
        str_field(
            out,
            "method",
            self.method.as_bytes(),
            self.method.truncated(),
        );
        str_field(out, "host", self.host.as_bytes(), self.host.truncated());
        str_field(out, "path", self.path.as_bytes(), self.path.truncated());
        let _ = write!(
            out,
            ",\"status\":{},\"duration_us\":{}",
            self.status, self.duration_us
        );
        str_field(out, "route", self.route.as_bytes(), false);
        if !self.rule.as_bytes().is_empty() {
            str_field(out, "rule", self.rule.as_bytes(), false);
        }
        if !self.tag.as_bytes().is_empty() {
            str_field(out, "tag", self.tag.as_bytes(), false);
        }
        if !self.limit.as_bytes().is_empty() {
            str_field(out, "limit", self.limit.as_bytes(), false);
        }
        match self.upstream {
            Some(u) => {
                let _ = write!(out, ",\"upstream\":\"{u}\"");
            }
            None => out.push_str(",\"upstream\":null"),
        }
        let _ = write!(out, ",\"retries\":{}", self.retries);
        str_field(
            out,
            "request_id",
            self.request_id.as_bytes(),
            self.request_id.truncated(),
        );
        if matches!(self.protocol, Protocol::Tcp | Protocol::Udp) {
            let _ = write!(
                out,
                ",\"bytes_up\":{},\"bytes_down\":{}",
                self.bytes_up, self.bytes_down
            );
        }
        if !self.cache.is_empty() {
            let _ = write!(out, ",\"cache\":\"{}\"", self.cache);
        }
        if !self.error.is_empty() {
            let _ = write!(out, ",\"error\":\"{}\"", self.error);
        }
        out.push('}');
    }
}

fn ip(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(a),
        v4 => v4,
    }
}

/// `,"key":"value"` with JSON escaping (bytes that are not UTF-8 become
/// U+FFFD), `null` when empty, and `"key_truncated":true` when cut.
fn str_field(out: &mut String, key: &str, v: &[u8], truncated: bool) {
    use std::fmt::Write;
    if v.is_empty() {
        let _ = write!(out, ",\"{key}\":null");
        return;
    }
    let _ = write!(out, ",\"{key}\":\"");
    for c in String::from_utf8_lossy(v).chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    if truncated {
        let _ = write!(out, ",\"{key}_truncated\":true");
    }
}

/// A worker's bounded access-log queue.
pub type AccessQueue = ArrayQueue<AccessRecord>;

/// The stack's end of the queue.
#[derive(Clone, Default)]
pub struct AccessSink {
    queue: Option<Arc<AccessQueue>>,
}

impl AccessSink {
    pub fn new(queue: Arc<AccessQueue>) -> Self {
        Self { queue: Some(queue) }
    }

    pub fn enabled(&self) -> bool {
        self.queue.is_some()
    }

    /// Queues the record; false when the queue is full (the caller counts).
    pub fn push(&self, r: &AccessRecord) -> bool {
        match &self.queue {
            Some(q) => q.push(*r).is_ok(),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_escapes_and_marks_truncation() {
        let mut r = AccessRecord {
            status: 404,
            client: Some("[::ffff:10.0.0.1]:5000".parse().unwrap()),
            listener_port: 80,
            ..Default::default()
        };
        r.method.set(b"GET");
        r.path.set(b"/a\"b\\c\n\x01");
        r.host.set(&[b'h'; 200]);
        r.error = "no_route";
        let mut s = String::new();
        r.write_json(3, "2026-01-01T00:00:00.000000Z", &mut s);
        assert!(
            s.contains(r#""client":"10.0.0.1","client_port":5000"#),
            "{s}"
        );
        assert!(s.contains(r#""path":"/a\"b\\c\n\u0001""#), "{s}");
        assert!(s.contains(r#""host_truncated":true"#), "{s}");
        assert!(s.contains(r#""route":null"#), "{s}");
        assert!(s.contains(r#""error":"no_route""#), "{s}");
        assert!(s.starts_with('{') && s.ends_with('}'));
    }

    #[test]
    fn tcp_records_carry_bytes_each_way_and_http_ones_do_not() {
        let mut r = AccessRecord {
            protocol: Protocol::Tcp,
            listener_port: 6379,
            bytes_up: 12,
            bytes_down: 34,
            error: "closed",
            ..Default::default()
        };
        let mut s = String::new();
        r.write_json(0, "t", &mut s);
        assert!(s.contains(r#""protocol":"TCP""#), "{s}");
        assert!(s.contains(r#""bytes_up":12,"bytes_down":34"#), "{s}");
        assert!(s.contains(r#""error":"closed""#), "{s}");
        r.protocol = Protocol::Http1;
        s.clear();
        r.write_json(0, "t", &mut s);
        assert!(!s.contains("bytes_up"), "{s}");
    }

    #[test]
    fn http3_records_say_http3_and_carry_no_byte_counts() {
        let r = AccessRecord {
            protocol: Protocol::Http3,
            bytes_up: 12,
            ..Default::default()
        };
        let mut s = String::new();
        r.write_json(0, "t", &mut s);
        assert!(s.contains(r#""protocol":"HTTP/3""#), "{s}");
        assert!(!s.contains("bytes_up"), "{s}");
    }

    #[test]
    fn a_full_queue_refuses_instead_of_waiting() {
        let sink = AccessSink::new(Arc::new(AccessQueue::new(2)));
        let r = AccessRecord::default();
        assert!(sink.push(&r) && sink.push(&r));
        assert!(!sink.push(&r));
    }
}
