//! Sums and differences of [`ConnStats`], for a worker's totals.

use crate::conn::ConnStats;

impl ConnStats {
    /// Field-wise sum (a worker's total over its connections).
    pub fn add(&mut self, o: &ConnStats) {
        self.frames_received += o.frames_received;
        self.streams_opened += o.streams_opened;
        self.streams_refused += o.streams_refused;
        self.streams_reset_by_peer += o.streams_reset_by_peer;
        self.stream_errors += o.stream_errors;
        self.headers_too_large += o.headers_too_large;
        self.connection_errors += o.connection_errors;
        self.rapid_reset_goaways += o.rapid_reset_goaways;
        self.flood_goaways += o.flood_goaways;
        self.continuation_flood_goaways += o.continuation_flood_goaways;
        self.settings_timeouts += o.settings_timeouts;
        self.pings_answered += o.pings_answered;
    }

    /// What grew since `earlier` (counters only grow).
    pub fn since(&self, earlier: &ConnStats) -> ConnStats {
        ConnStats {
            frames_received: self.frames_received - earlier.frames_received,
            streams_opened: self.streams_opened - earlier.streams_opened,
            streams_refused: self.streams_refused - earlier.streams_refused,
            streams_reset_by_peer: self.streams_reset_by_peer - earlier.streams_reset_by_peer,
            stream_errors: self.stream_errors - earlier.stream_errors,
            headers_too_large: self.headers_too_large - earlier.headers_too_large,
            connection_errors: self.connection_errors - earlier.connection_errors,
            rapid_reset_goaways: self.rapid_reset_goaways - earlier.rapid_reset_goaways,
            flood_goaways: self.flood_goaways - earlier.flood_goaways,
            continuation_flood_goaways: self.continuation_flood_goaways
                - earlier.continuation_flood_goaways,
            settings_timeouts: self.settings_timeouts - earlier.settings_timeouts,
            pings_answered: self.pings_answered - earlier.pings_answered,
        }
    }
}
