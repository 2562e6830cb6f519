//! The connection's bookkeeping shared by the receive path and the
//! application's calls: answering (with the output cap), the flood and reset
//! budgets, stream and connection errors, the stream table and the receive
//! windows.

use super::limits::Kind;
use super::stream::{Closed, SendState, Stream};
use super::{ANSWER_HEADROOM, Connection, Event};
use crate::emit;
use crate::error::{ErrorCode, FrameError, Scope};

/// Stream and connection bookkeeping.
impl Connection {
    pub(super) fn pending_len(&self) -> usize {
        self.out.len() - self.out_start
    }

    /// A stream id no frame has opened yet (§5.1 "idle"): even ids (we never
    /// push) and odd ids above the highest seen, unless we reset one.
    pub(super) fn is_idle(&self, id: u32) -> bool {
        (id.is_multiple_of(2) || id > self.highest) && self.closed.get(id).is_none()
    }

    /// Queues a frame the peer made us send; if the peer is not reading and
    /// the output would pass the cap (plus headroom), GOAWAY instead.
    pub(super) fn answer(&mut self, write: impl FnOnce(&mut Vec<u8>) -> usize) -> bool {
        let before = self.out.len();
        write(&mut self.out);
        if self.pending_len() > self.cfg.max_pending_output.saturating_add(ANSWER_HEADROOM) {
            self.out.truncate(before);
            self.stats.flood_goaways += 1;
            self.conn_error(
                ErrorCode::EnhanceYourCalm,
                "peer does not read the frames it makes us send",
            );
            return false;
        }
        true
    }

    /// Counts one frame of `kind`; true (and GOAWAY sent) over the budget.
    pub(super) fn flood(&mut self, kind: Kind) -> bool {
        let (window, max) = (
            self.cfg.flood_window,
            self.cfg.max_control_frames_per_window,
        );
        if self.limits.control(kind, self.now, window, max) {
            self.stats.flood_goaways += 1;
            self.conn_error(ErrorCode::EnhanceYourCalm, "control frame flood");
            return true;
        }
        false
    }

    /// One stream reset by the client, refused, or reset for breaking a rule
    /// (CVE-2023-44487 and its server-provoked variant).
    pub(super) fn count_reset(&mut self) {
        let (window, max) = (self.cfg.flood_window, self.cfg.max_resets_per_window);
        if !self.dead && self.limits.reset(self.now, window, max) {
            self.stats.rapid_reset_goaways += 1;
            self.conn_error(ErrorCode::EnhanceYourCalm, "too many stream resets");
        }
    }

    /// A stream error (§5.4.2): RST_STREAM, the stream leaves the table, and
    /// the application hears of it if it knew the stream.
    pub(super) fn stream_error(&mut self, id: u32, code: ErrorCode, reason: &'static str) {
        if self.dead {
            return;
        }
        self.stats.stream_errors += 1;
        self.last_stream_error = Some(FrameError {
            code,
            scope: Scope::Stream(id),
            reason,
        });
        if !self.answer(|out| emit::rst_stream(out, id, code)) {
            return;
        }
        if self.remove_stream(id).is_some() {
            self.events.push_back(Event::Reset { stream: id, code });
        }
        // An idle stream (a bad PRIORITY, say) stays idle: the client may
        // still open it.
        if !self.is_idle(id) {
            self.closed.push(id, Closed::ResetByUs);
        }
        self.count_reset();
    }

    pub(super) fn conn_error(&mut self, code: ErrorCode, reason: &'static str) {
        let e = FrameError {
            code,
            scope: Scope::Connection,
            reason,
        };
        self.fail(e, reason.as_bytes());
    }

    /// A connection error (§5.4.1): GOAWAY, then nothing more is read. The
    /// streams still open get a Reset event each.
    pub(super) fn fail(&mut self, e: FrameError, debug: &[u8]) {
        if self.dead {
            return;
        }
        self.dead = true;
        self.block = None;
        emit::goaway(&mut self.out, self.last_accepted, e.code, debug);
        self.stats.connection_errors += 1;
        self.error = Some(e);
        let mut ids: Vec<u32> = self.streams.keys().copied().collect();
        ids.sort_unstable();
        self.streams.clear();
        for stream in ids {
            self.events.push_back(Event::Reset {
                stream,
                code: e.code,
            });
        }
    }

    /// Removes a stream from the table, giving its undelivered body back to
    /// the connection window.
    pub(super) fn remove_stream(&mut self, id: u32) -> Option<Stream> {
        let s = self.streams.remove(&id)?;
        if !s.body.is_empty() {
            self.conn_give_back(s.body.len() as u32);
        }
        Some(s)
    }

    /// Encodes a response head (`Some(status)`) or a trailer block (`None`)
    /// into the reused scratch buffer; hand it back with `self.scratch =`.
    pub(super) fn encode_head(
        &mut self,
        status: Option<u16>,
        headers: &[(&[u8], &[u8])],
    ) -> Vec<u8> {
        let mut block = std::mem::take(&mut self.scratch);
        block.clear();
        match status {
            Some(status) => self.encoder.encode(status, headers, &mut block),
            None => self.encoder.encode_trailers(headers, &mut block),
        }
        block
    }

    /// Our response ended: the stream closes, with RST_STREAM(NO_ERROR) if
    /// the request is still arriving (§8.1).
    pub(super) fn end_send(&mut self, id: u32) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        s.send = SendState::Done;
        if s.recv_open {
            emit::rst_stream(&mut self.out, id, ErrorCode::NoError);
            self.closed.push(id, Closed::ResetByUs);
            self.remove_stream(id);
        } else {
            self.maybe_finish(id);
        }
    }

    /// Both sides ended: the stream leaves the table.
    pub(super) fn maybe_finish(&mut self, id: u32) {
        let done = self
            .streams
            .get(&id)
            .is_some_and(|s| !s.recv_open && s.send == SendState::Done);
        if done {
            self.remove_stream(id);
            self.closed.push(id, Closed::Finished);
        }
    }

    /// `n` octets of `id`'s window are owed back; one WINDOW_UPDATE once
    /// half the stream window is (none once the request has ended).
    pub(super) fn stream_give_back(&mut self, id: u32, n: u32) {
        let threshold = (self.cfg.stream_window / 2).max(1);
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        if !s.recv_open {
            return;
        }
        s.recv_owed = s.recv_owed.saturating_add(n);
        if s.recv_owed < threshold {
            return;
        }
        let inc = s.recv_owed;
        s.recv_owed = 0;
        s.recv_window += i64::from(inc);
        self.answer(|out| emit::window_update(out, id, inc));
    }

    pub(super) fn conn_give_back(&mut self, n: u32) {
        if let Some(inc) = self.conn_recv.give_back(n) {
            self.answer(|out| emit::window_update(out, 0, inc));
        }
    }
}
