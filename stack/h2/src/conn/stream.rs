//! One stream's state (RFC 9113 §5.1) as the server sees it, and the
//! bounded memory of streams that were closed, so frames arriving late can be
//! told apart (ignore after our RST_STREAM; STREAM_CLOSED otherwise) without
//! remembering every id ever used.

use std::collections::VecDeque;

/// A stream in the table: open, or half-closed on one side. Only streams
/// whose Request event was emitted are here, so the application knows all of
/// them.
#[derive(Debug)]
pub(crate) struct Stream {
    /// The request side: false once END_STREAM arrived (half-closed remote).
    pub recv_open: bool,
    /// Octets the client may still send on this stream (our window).
    pub recv_window: i64,
    /// Consumed octets not yet given back with a WINDOW_UPDATE.
    pub recv_owed: u32,
    /// Request-body octets received and not yet consumed.
    pub body: Vec<u8>,
    /// Declared content-length and the DATA octets counted against it.
    pub content_length: Option<u64>,
    pub received: u64,
    /// The response side.
    pub send: SendState,
    /// Octets we may still send (the client's window; may be negative after
    /// a SETTINGS_INITIAL_WINDOW_SIZE decrease, §6.9.2).
    pub send_window: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendState {
    /// No final response head yet (1xx heads may have gone).
    AwaitingHead,
    /// The final head went; DATA and trailers may follow.
    Body,
    /// END_STREAM sent.
    Done,
}

impl Stream {
    pub(crate) fn new(recv_window: i64, send_window: i64, content_length: Option<u64>) -> Self {
        Self {
            recv_open: true,
            recv_window,
            recv_owed: 0,
            body: Vec::new(),
            content_length,
            received: 0,
            send: SendState::AwaitingHead,
            send_window,
        }
    }
}

/// How a stream left the table; decides what a late frame means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Closed {
    /// We sent RST_STREAM (a stream error, a refusal, the application's
    /// reset, an early response end): the client may have frames in flight,
    /// so they are ignored (§5.1 "closed").
    ResetByUs,
    /// The client reset it: later frames are stream errors (§5.1).
    ResetByPeer,
    /// Both sides ended: later frames are errors, HEADERS a connection one.
    Finished,
}

/// The last `cap` closed streams, oldest first. Older ids fall out: a frame
/// on one is then treated as on a stream closed long ago.
#[derive(Debug)]
pub(crate) struct ClosedRing {
    ids: VecDeque<(u32, Closed)>,
    cap: usize,
}

impl ClosedRing {
    pub(crate) fn new(cap: usize) -> Self {
        Self {
            ids: VecDeque::with_capacity(cap.min(64)),
            cap: cap.max(1),
        }
    }

    pub(crate) fn push(&mut self, id: u32, how: Closed) {
        if let Some(slot) = self.ids.iter_mut().find(|(i, _)| *i == id) {
            slot.1 = how;
            return;
        }
        if self.ids.len() == self.cap {
            self.ids.pop_front();
        }
        self.ids.push_back((id, how));
    }

    pub(crate) fn get(&self, id: u32) -> Option<Closed> {
        self.ids
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|&(_, c)| c)
    }
}
