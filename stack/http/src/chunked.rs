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

#[derive(Debug, Clone)]
pub struct ChunkedDecoder {
    state: State,
    size: u64,
    remaining: u64,
    line_len: u32,
    last_chunk: bool,
    /// Bytes of framing and data consumed so far (body size limits).
    seen: u64,
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
        }
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
        let n = self.feed_inner(input, budget, data)?;
        self.seen += n as u64;
        Ok(n)
    }

    fn feed_inner(
        &mut self,
        input: &[u8],
        mut budget: usize,
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
                    }
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::BadLineEnding);
                    }
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
