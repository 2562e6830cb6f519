//! Reads frames off one stream's bytes as they arrive in pieces: the
//! header first, then the payload either streamed (DATA, frames to skip),
//! so no frame of any size is buffered, or collected whole (HEADERS and
//! control frames, whose size the caller bounded from the header).

use crate::frame::{FrameHeader, FrameType, MAX_HEADER_LEN};

/// How the payload of the frame whose header was just read is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Stream,
    Collect,
}

#[derive(Debug)]
pub(crate) enum Read<'a> {
    /// The input is used up with no frame boundary reached.
    NeedMore,
    /// A frame header; the caller then calls [`FrameReader::begin`].
    Header(FrameHeader),
    /// Part of a streamed payload (an empty frame gives one empty part).
    Chunk(&'a [u8]),
    /// A whole collected payload.
    Frame { kind: FrameType, payload: &'a [u8] },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Header,
    Decide(FrameHeader),
    Stream { remaining: u64 },
    Collect { kind: FrameType, len: usize },
}

#[derive(Debug)]
pub(crate) struct FrameReader {
    head: [u8; MAX_HEADER_LEN],
    head_len: usize,
    state: State,
    /// A collected payload that arrived in pieces; reused, so a stream
    /// allocates at most once for its largest such frame.
    buf: Vec<u8>,
}

impl Default for FrameReader {
    fn default() -> Self {
        Self {
            head: [0; MAX_HEADER_LEN],
            head_len: 0,
            state: State::Header,
            buf: Vec::new(),
        }
    }
}

impl FrameReader {
    /// At a frame boundary: a stream may end cleanly only here (RFC 9114 §7.1).
    pub fn is_idle(&self) -> bool {
        matches!(self.state, State::Header) && self.head_len == 0
    }

    /// Chooses how the payload of the header just returned is delivered.
    /// Collected frames must have been bounded by the caller.
    pub fn begin(&mut self, mode: Mode) {
        let State::Decide(h) = self.state else {
            debug_assert!(false, "begin without a header");
            return;
        };
        self.state = match mode {
            Mode::Stream => State::Stream {
                remaining: h.length,
            },
            Mode::Collect => {
                self.buf.clear();
                State::Collect {
                    kind: h.kind,
                    len: usize::try_from(h.length).expect("collected frames are bounded"),
                }
            }
        };
    }

    /// Takes what it can from `input`: the step and the octets it used.
    pub fn read<'a>(&'a mut self, input: &'a [u8]) -> (Read<'a>, usize) {
        match self.state {
            State::Header => {
                if self.head_len == 0
                    && let Some((h, n)) = FrameHeader::parse(input)
                {
                    self.state = State::Decide(h);
                    return (Read::Header(h), n);
                }
                let old = self.head_len;
                let take = (MAX_HEADER_LEN - old).min(input.len());
                self.head[old..old + take].copy_from_slice(&input[..take]);
                self.head_len += take;
                match FrameHeader::parse(&self.head[..self.head_len]) {
                    Some((h, n)) => {
                        self.head_len = 0;
                        self.state = State::Decide(h);
                        (Read::Header(h), n - old)
                    }
                    None => (Read::NeedMore, take),
                }
            }
            State::Decide(_) => (Read::NeedMore, 0),
            State::Stream { remaining } => {
                if remaining > 0 && input.is_empty() {
                    return (Read::NeedMore, 0);
                }
                let n = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(input.len());
                let remaining = remaining - n as u64;
                self.state = if remaining == 0 {
                    State::Header
                } else {
                    State::Stream { remaining }
                };
                (Read::Chunk(&input[..n]), n)
            }
            State::Collect { kind, len } => {
                if self.buf.is_empty() && input.len() >= len {
                    self.state = State::Header;
                    return (
                        Read::Frame {
                            kind,
                            payload: &input[..len],
                        },
                        len,
                    );
                }
                let take = (len - self.buf.len()).min(input.len());
                self.buf.extend_from_slice(&input[..take]);
                if self.buf.len() < len {
                    return (Read::NeedMore, take);
                }
                self.state = State::Header;
                (
                    Read::Frame {
                        kind,
                        payload: &self.buf,
                    },
                    take,
                )
            }
        }
    }
}
