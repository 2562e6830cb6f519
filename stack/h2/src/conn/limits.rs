//! Per-connection rate limits against hostile peers: rapid reset
//! (CVE-2023-44487) and control-frame floods (CVE-2019-9512/9515/9518 and
//! kin). Each is a fixed window counter over the `now` that `recv` was given:
//! cheap and allocation-free; a burst straddling two windows may reach twice
//! the limit, which still bounds the work per second.

use std::time::Duration;

/// The frames counted against `max_control_frames_per_window`, each kind
/// alone so a busy but honest client (many WINDOW_UPDATEs) is not cut off
/// for another kind's count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Ping,
    Settings,
    Priority,
    WindowUpdate,
    /// DATA without payload nor END_STREAM.
    EmptyData,
    /// HEADERS or CONTINUATION with an empty fragment and no END_HEADERS.
    EmptyFragment,
    /// Frames that do nothing: unknown types, RST_STREAM or WINDOW_UPDATE on
    /// closed streams.
    Ignored,
}

const KINDS: usize = 7;

/// One fixed window.
#[derive(Debug, Clone, Copy, Default)]
struct Counter {
    start: Duration,
    count: u32,
}

impl Counter {
    /// Counts one event at `now`; true once more than `max` fell in the
    /// current window.
    fn hit(&mut self, now: Duration, window: Duration, max: u32) -> bool {
        if now.saturating_sub(self.start) >= window {
            self.start = now;
            self.count = 0;
        }
        self.count = self.count.saturating_add(1);
        self.count > max
    }
}

/// The connection's counters.
#[derive(Debug, Default)]
pub(crate) struct Limits {
    resets: Counter,
    control: [Counter; KINDS],
}

impl Limits {
    pub(crate) fn new(now: Duration) -> Self {
        let c = Counter {
            start: now,
            count: 0,
        };
        Self {
            resets: c,
            control: [c; KINDS],
        }
    }

    /// A stream reset by the client while open, or refused: true when the
    /// budget is exceeded.
    pub(crate) fn reset(&mut self, now: Duration, window: Duration, max: u32) -> bool {
        self.resets.hit(now, window, max)
    }

    /// One control frame of `kind`: true when its budget is exceeded.
    pub(crate) fn control(
        &mut self,
        kind: Kind,
        now: Duration,
        window: Duration,
        max: u32,
    ) -> bool {
        self.control[kind as usize].hit(now, window, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_allows_max_per_window_and_restarts_after_it() {
        let w = Duration::from_secs(1);
        let mut l = Limits::new(Duration::ZERO);
        for _ in 0..3 {
            assert!(!l.control(Kind::Ping, Duration::ZERO, w, 3));
        }
        assert!(l.control(Kind::Ping, Duration::from_millis(10), w, 3));
        // Another kind has its own budget.
        assert!(!l.control(Kind::Settings, Duration::from_millis(10), w, 3));
        // A new window starts the count again.
        assert!(!l.control(Kind::Ping, Duration::from_secs(2), w, 3));
    }
}
