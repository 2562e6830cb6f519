//! A streaming validator for `Transfer-Encoding: chunked` bodies. The proxy
//! forwards chunked bytes unchanged; the decoder only finds where the body
//! ends and rejects malformed framing (bad sizes, bare LF, overflow), the raw
//! material of request smuggling.

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("invalid chunk size")]
    BadSize,
    #[error("chunk size too large")]
    SizeOverflow,
    #[error("missing CRLF in chunked framing")]
    BadLineEnding,
    #[error("chunk extension or trailer line too long")]
    LineTooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    SizeStart,
    Size { digits: u8 },
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    FinalLf,
    Done,
}

/// Caps on the non-data parts so a peer cannot make us scan forever.
const MAX_SIZE_DIGITS: u8 = 15;
const MAX_LINE: u32 = 4096;

/// Bounds on a captured trailer section: past either, the trailers are
/// dropped (the body is still whole; RFC 9110 §6.5.1 lets a recipient
/// discard them).
pub const MAX_TRAILER_BYTES: usize = 8 * 1024;
pub const MAX_TRAILER_FIELDS: usize = 32;

/// One trailer field as it came (name as sent, value trimmed of OWS).
pub type TrailerField = (Vec<u8>, Vec<u8>);

/// The trailer section being kept: its raw lines, CRLF-terminated.
#[derive(Debug, Clone, Default)]
struct Capture {
    raw: Vec<u8>,
    fields: usize,
    over: bool,
}

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    remaining: u64,
    line_len: u32,
    last_chunk: bool,
    /// Bytes of framing and data consumed so far (body size limits).
    seen: u64,
    /// The trailer section, when asked for (allocated once per body, at
    /// its first trailer byte).
    capture: Option<Box<Capture>>,
    capturing: bool,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedDecoder {
    pub fn new() -> Self {
        Self {
            state: State::SizeStart,
            size: 0,
            remaining: 0,
            line_len: 0,
            last_chunk: false,
            seen: 0,
            capture: None,
            capturing: false,
        }
    }

    /// Keeps the trailer section (bounded by [`MAX_TRAILER_BYTES`] and
    /// [`MAX_TRAILER_FIELDS`]) for [`Self::take_trailers`].
    pub fn capture_trailers(&mut self) {
        self.capturing = true;
    }

    /// Whether a captured trailer section went over its bounds (and was
    /// dropped).
    pub fn trailers_over_limit(&self) -> bool {
        self.capture.as_ref().is_some_and(|c| c.over)
    }

    /// The captured trailer fields once the body is done: empty when
    /// there were none, when capture was not asked for, or when they went
    /// over the bounds. Lines that are no field (no colon, a bad name,
    /// obs-fold) are left out.
    pub fn take_trailers(&mut self) -> Vec<TrailerField> {
        let done = self.is_done();
        let Some(c) = self.capture.as_mut() else {
            return Vec::new();
        };
        if c.over || !done {
            return Vec::new();
        }
        let raw = std::mem::take(&mut c.raw);
        parse_fields(&raw)
    }

    /// One trailer byte (CR and LF are the line's end, not kept here).
    fn keep_trailer_byte(&mut self, b: u8) {
        if !self.capturing {
            return;
        }
        let c = self.capture.get_or_insert_with(Default::default);
        if c.over {
            return;
        }
        if c.raw.len() + 2 > MAX_TRAILER_BYTES {
            c.over = true;
            c.raw = Vec::new();
            return;
        }
        c.raw.push(b);
    }

    /// The end of one trailer line.
    fn end_trailer_line(&mut self) {
        let Some(c) = self.capture.as_mut().filter(|_| self.capturing) else {
            return;
        };
        if c.over {
            return;
        }
        c.fields += 1;
        if c.fields > MAX_TRAILER_FIELDS || c.raw.len() + 2 > MAX_TRAILER_BYTES {
            c.over = true;
            c.raw = Vec::new();
            return;
        }
        c.raw.extend_from_slice(b"\r\n");
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Bytes consumed so far, framing included.
    pub fn bytes_seen(&self) -> u64 {
        self.seen
    }

    /// Consumes bytes of the body framing; returns how many belong to the
    /// body (all of `input` unless the body ends inside it).
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        self.feed_with(input, |_| {})
    }

    /// As `feed`, and hands each run of payload octets (the body with the
    /// chunk framing removed) to `data`, in order: for a peer that frames
    /// the body itself (HTTP/2 DATA).
    pub fn feed_with(
        &mut self,
        input: &[u8],
        data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        self.feed_limited(input, usize::MAX, data)
    }

    /// As `feed_with`, handing out at most `budget` payload octets: input
    /// stops being consumed at the first payload octet over it, while
    /// framing (chunk sizes, CRLFs, trailers, the end) is consumed with a
    /// zero budget too, so a peer's window never holds back the end of a
    /// body that has no payload left.
    pub fn feed_limited(
        &mut self,
        input: &[u8],
        budget: usize,
        data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let n = self.feed_inner(input, budget, false, data)?;
        self.seen += n as u64;
        Ok(n)
    }

    /// As `feed_limited`, but returns right after the first run of payload
    /// octets it hands out: a caller whose capacity shrinks with each send
    /// (an HTTP/2 connection's output room, which every DATA frame's header
    /// also takes) checks it again before the next run.
    pub fn feed_piece(
        &mut self,
        input: &[u8],
        budget: usize,
        data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let n = self.feed_inner(input, budget, true, data)?;
        self.seen += n as u64;
        Ok(n)
    }

    fn feed_inner(
        &mut self,
        input: &[u8],
        mut budget: usize,
        one_piece: bool,
        mut data: impl FnMut(&[u8]),
    ) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => break,
                State::Data => {
                    let take = (self.remaining)
                        .min((input.len() - i) as u64)
                        .min(budget as u64) as usize;
                    if take == 0 {
                        break;
                    }
                    data(&input[i..i + take]);
                    budget -= take;
                    self.remaining -= take as u64;
                    i += take;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                    if one_piece {
                        break;
                    }
                    continue;
                }
                State::SizeStart | State::Size { .. } => {
                    let digits = match self.state {
                        State::Size { digits } => digits,
                        _ => 0,
                    };
                    if let Some(v) = hex_value(b) {
                        if digits == MAX_SIZE_DIGITS {
                            return Err(ChunkError::SizeOverflow);
                        }
                        self.size = (self.size << 4) | v as u64;
                        self.state = State::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkError::BadSize);
                    } else if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    } else if b == b';' {
                        self.line_len = 0;
                        self.state = State::Extension;
                    } else {
                        // Whitespace before extensions is tolerated by some
                        // peers and exploited by others: refuse it.
                        return Err(ChunkError::BadSize);
                    }
                }
                State::Extension => {
                    self.line_len += 1;
                    if self.line_len > MAX_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    if self.size == 0 {
                        self.last_chunk = true;
                        self.state = State::TrailerStart;
                    } else {
                        self.remaining = self.size;
                        self.state = State::Data;
                    }
                    self.size = 0;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.state = State::SizeStart;
                }
                State::TrailerStart => {
                    if b == b'\r' {
                        self.state = State::FinalLf;
                    } else if b == b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    } else {
                        self.line_len = 1;
                        self.keep_trailer_byte(b);
                        self.state = State::Trailer;
                    }
                }
                State::Trailer => {
                    self.line_len += 1;
                    if self.line_len > MAX_LINE {
                        return Err(ChunkError::LineTooLong);
                    }
                    if b == b'\r' {
                        self.state = State::TrailerLf;
                    } else if b == b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    } else {
                        self.keep_trailer_byte(b);
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    self.end_trailer_line();
                    self.state = State::TrailerStart;
                }
                State::FinalLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
                    debug_assert!(self.last_chunk);
                    self.state = State::Done;
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

/// Fields of CRLF-terminated `name: value` lines; a line that is none is
/// left out (a trailer is advisory: dropping one beats failing a body
/// that is already out).
pub fn parse_fields(raw: &[u8]) -> Vec<TrailerField> {
    let mut out = Vec::new();
    for line in raw.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            continue;
        }
        let value = trim_ows(&line[colon + 1..]);
        if !valid_trailer(name, value) {
            continue;
        }
        out.push((name.to_vec(), value.to_vec()));
    }
    out
}

/// Fields that never travel as trailers through the proxy: framing,
/// routing, request modifiers, authentication, response control and
/// content processing (RFC 9110 §6.5.1), hop-by-hop fields (RFC 9113
/// §8.2.2). Go's net/http refuses the same list.
pub fn forbidden_trailer(name: &[u8]) -> bool {
    const NAMES: [&[u8]; 21] = [
        b"content-length",
        b"transfer-encoding",
        b"connection",
        b"te",
        b"host",
        b"keep-alive",
        b"upgrade",
        b"trailer",
        b"authorization",
        b"www-authenticate",
        b"cache-control",
        b"content-encoding",
        b"content-range",
        b"content-type",
        b"expect",
        b"max-forwards",
        b"pragma",
        b"range",
        b"set-cookie",
        b"cookie",
        b"location",
    ];
    NAMES.iter().any(|n| name.eq_ignore_ascii_case(n))
        || (name.len() >= 6 && name[..6].eq_ignore_ascii_case(b"proxy-"))
        || name.first() == Some(&b':')
}

/// A field that can be written as it is: a token name, a value without
/// control bytes (HTAB allowed) and without surrounding whitespace. What a
/// plugin hands back is checked with this before it reaches a peer, as
/// what the decoder parsed was.
pub fn valid_trailer(name: &[u8], value: &[u8]) -> bool {
    !name.is_empty()
        && name.iter().all(|&b| is_tchar(b))
        && value
            .iter()
            .all(|&b| b == b'\t' || (b >= 0x20 && b != 0x7f))
        && trim_ows(value).len() == value.len()
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v
        .iter()
        .position(|&b| b != b' ' && b != b'\t')
        .unwrap_or(v.len());
    let end = v
        .iter()
        .rposition(|&b| b != b' ' && b != b'\t')
        .map_or(start, |e| e + 1);
    &v[start..end]
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(input: &[u8]) -> Result<(usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let n = d.feed(input)?;
        Ok((n, d.is_done()))
    }

    #[test]
    fn feed_piece_hands_out_one_run_per_call_and_ends_the_body() {
        let body = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut runs = Vec::new();
        let mut at = 0;
        while !d.is_done() {
            let mut got = Vec::new();
            let n = d
                .feed_piece(&body[at..], usize::MAX, |p| got.push(p.to_vec()))
                .unwrap();
            assert!(n > 0, "progress at {at}");
            assert!(got.len() <= 1, "one run per call: {got:?}");
            runs.extend(got);
            at += n;
        }
        assert_eq!(runs, vec![b"abc".to_vec(), b"de".to_vec()]);
        assert_eq!(at, body.len());
        // A budget splits a run; framing goes on with none left.
        let mut d = ChunkedDecoder::new();
        let mut got = Vec::new();
        let n = d.feed_piece(body, 2, |p| got.extend_from_slice(p)).unwrap();
        assert_eq!((n, got.as_slice()), (5, &b"ab"[..]));
    }

    #[test]
    fn feed_with_yields_the_payload_without_framing_across_splits() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-t: 1\r\n\r\n";
        for split in 0..body.len() {
            let mut d = ChunkedDecoder::new();
            let mut out = Vec::new();
            let a = d
                .feed_with(&body[..split], |p| out.extend_from_slice(p))
                .unwrap();
            assert_eq!(a, split);
            let b = d
                .feed_with(&body[split..], |p| out.extend_from_slice(p))
                .unwrap();
            assert_eq!(a + b, body.len());
            assert!(d.is_done());
            assert_eq!(out, b"hello world");
        }
    }

    #[test]
    fn feed_limited_stops_at_the_budget_but_consumes_framing_with_none_left() {
        let body = b"5\r\nhello\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut out = Vec::new();
        // Budget 3: "5\r\n" + "hel", then stops inside the chunk.
        let n = d
            .feed_limited(body, 3, |p| out.extend_from_slice(p))
            .unwrap();
        assert_eq!((n, &out[..]), (6, &b"hel"[..]));
        // Budget 0 in the middle of data: nothing moves.
        assert_eq!(
            d.feed_limited(&body[n..], 0, |_| panic!("no payload"))
                .unwrap(),
            0
        );
        let m = d
            .feed_limited(&body[n..], 2, |p| out.extend_from_slice(p))
            .unwrap();
        assert_eq!(out, b"hello");
        // The framing after the last payload octet went too, though the
        // budget was spent: the end of a body never waits for window.
        assert_eq!(n + m, body.len());
        assert!(d.is_done());
    }

    #[test]
    fn complete_body_ends_at_final_crlf() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let (n, done) = feed_all(body).unwrap();
        assert!(done);
        assert_eq!(&body[n..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn trailers_are_consumed() {
        let body = b"1\r\na\r\n0\r\nX-Trailer: v\r\n\r\n";
        assert_eq!(feed_all(body).unwrap(), (body.len(), true));
    }

    #[test]
    fn trailers_are_kept_when_asked_across_every_split() {
        let body = b"1\r\na\r\n0\r\nX-Check: abc \r\ngrpc-status:0\r\nbad line\r\n\r\n";
        for split in 0..=body.len() {
            let mut d = ChunkedDecoder::new();
            d.capture_trailers();
            let a = d.feed(&body[..split]).unwrap();
            let b = d.feed(&body[split..]).unwrap();
            assert_eq!(a + b, body.len(), "split {split}");
            assert!(d.is_done());
            assert!(!d.trailers_over_limit());
            assert_eq!(
                d.take_trailers(),
                vec![
                    (b"X-Check".to_vec(), b"abc".to_vec()),
                    (b"grpc-status".to_vec(), b"0".to_vec())
                ],
                "split {split}"
            );
        }
    }

    #[test]
    fn framing_and_hop_by_hop_fields_are_forbidden_trailers() {
        for n in [
            "Content-Length",
            "transfer-encoding",
            "TE",
            "proxy-authorization",
            ":status",
        ] {
            assert!(forbidden_trailer(n.as_bytes()), "{n}");
        }
        for n in ["grpc-status", "x-checksum", "proxy"] {
            assert!(!forbidden_trailer(n.as_bytes()), "{n}");
        }
    }

    #[test]
    fn trailers_are_not_kept_unless_asked() {
        let mut d = ChunkedDecoder::new();
        d.feed(b"0\r\nx: 1\r\n\r\n").unwrap();
        assert!(d.is_done());
        assert!(d.take_trailers().is_empty());
    }

    #[test]
    fn too_many_trailer_fields_are_dropped_and_the_body_still_ends() {
        let mut body = b"1\r\na\r\n0\r\n".to_vec();
        for i in 0..=MAX_TRAILER_FIELDS {
            body.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        let mut d = ChunkedDecoder::new();
        d.capture_trailers();
        assert_eq!(d.feed(&body).unwrap(), body.len());
        assert!(d.is_done());
        assert!(d.trailers_over_limit());
        assert!(d.take_trailers().is_empty());

        // One fewer fits.
        let mut body = b"0\r\n".to_vec();
        for i in 0..MAX_TRAILER_FIELDS {
            body.extend_from_slice(format!("x-{i}: v\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        let mut d = ChunkedDecoder::new();
        d.capture_trailers();
        d.feed(&body).unwrap();
        assert!(!d.trailers_over_limit());
        assert_eq!(d.take_trailers().len(), MAX_TRAILER_FIELDS);
    }

    #[test]
    fn a_trailer_section_past_its_byte_bound_is_dropped() {
        let value = "v".repeat(3000);
        let mut body = b"0\r\n".to_vec();
        for i in 0..3 {
            body.extend_from_slice(format!("x-{i}: {value}\r\n").as_bytes());
        }
        body.extend_from_slice(b"\r\n");
        for split in [0, 5, 3000, 6100, body.len() - 1] {
            let mut d = ChunkedDecoder::new();
            d.capture_trailers();
            let a = d.feed(&body[..split]).unwrap();
            let b = d.feed(&body[split..]).unwrap();
            assert_eq!(a + b, body.len());
            assert!(d.is_done());
            assert!(d.trailers_over_limit(), "split {split}");
            assert!(d.take_trailers().is_empty());
        }
    }

    #[test]
    fn byte_at_a_time_equals_whole() {
        let body = b"a\r\n0123456789\r\n0\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        for (i, b) in body.iter().enumerate() {
            assert_eq!(d.feed(std::slice::from_ref(b)).unwrap(), 1, "byte {i}");
        }
        assert!(d.is_done());
    }

    #[test]
    fn bad_framing_is_rejected() {
        assert_eq!(feed_all(b"x\r\n"), Err(ChunkError::BadSize));
        assert_eq!(feed_all(b"5 \r\n"), Err(ChunkError::BadSize));
        assert_eq!(feed_all(b"5\nhello"), Err(ChunkError::BadLineEnding));
        assert_eq!(feed_all(b"1\r\naX\r\n"), Err(ChunkError::BadLineEnding));
        assert_eq!(
            feed_all(b"ffffffffffffffff\r\n"),
            Err(ChunkError::SizeOverflow)
        );
        assert_eq!(feed_all(b"0\r\n\n"), Err(ChunkError::BadLineEnding));
    }
}
