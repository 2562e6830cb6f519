//! Flow-control arithmetic (RFC 9113 §6.9): windows are kept as i64 so a
//! SETTINGS_INITIAL_WINDOW_SIZE decrease can take them below zero (§6.9.2)
//! and an increase past 2^31-1 can be seen and refused.

use crate::settings::MAX_WINDOW_SIZE;

/// The protocol's initial window for streams and the connection (§6.9.2).
pub(crate) const DEFAULT_WINDOW: u32 = 65_535;

/// `window + inc`, or None when it passes 2^31-1 (a FLOW_CONTROL_ERROR).
pub(crate) fn grow(window: i64, inc: i64) -> Option<i64> {
    let w = window.checked_add(inc)?;
    (w <= i64::from(MAX_WINDOW_SIZE)).then_some(w)
}

/// The receive side of the connection window: what the client may still
/// send over all streams, and what we owe it back. Updates are batched: one
/// WINDOW_UPDATE once half the window is owed, not one per consumed chunk.
#[derive(Debug)]
pub(crate) struct RecvWindow {
    /// Octets the client may still send.
    pub window: i64,
    /// Octets consumed (or discarded) and not yet given back.
    pub owed: u32,
    /// The full window we keep the client at.
    pub target: u32,
}

impl RecvWindow {
    pub(crate) fn new(target: u32) -> Self {
        Self {
            window: i64::from(DEFAULT_WINDOW),
            owed: 0,
            target,
        }
    }

    /// Charges a received frame's flow-controlled length; false on overflow.
    pub(crate) fn take(&mut self, n: u32) -> bool {
        if i64::from(n) > self.window {
            return false;
        }
        self.window -= i64::from(n);
        true
    }

    /// Records `n` octets given back; returns the increment to send now, if
    /// enough is owed.
    pub(crate) fn give_back(&mut self, n: u32) -> Option<u32> {
        self.owed = self.owed.saturating_add(n);
        self.flush(false)
    }

    /// The increment to send: all that is owed when at least half the target
    /// is (or `force` and anything is).
    pub(crate) fn flush(&mut self, force: bool) -> Option<u32> {
        let due = self.owed >= (self.target / 2).max(1) || (force && self.owed > 0);
        if !due {
            return None;
        }
        // Never raise the window past the target nor past 2^31-1.
        let room = (i64::from(self.target) - self.window).clamp(0, i64::from(MAX_WINDOW_SIZE));
        let inc = i64::from(self.owed).min(room) as u32;
        self.owed = 0;
        if inc == 0 {
            return None;
        }
        self.window += i64::from(inc);
        Some(inc)
    }
}
