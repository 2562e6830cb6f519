//! RACK (RFC 8985): loss detection by send time. A segment is lost once a
//! segment sent after it was delivered and a round trip plus a reordering
//! window passed since it was sent — whatever the number of duplicate ACKs
//! (a loss near the end of a flight has too few segments behind it for
//! three), and for retransmissions too (a lost retransmission is found
//! without waiting for the retransmission timer).
//!
//! The socket has no per-segment state (it sends from a byte ring), so the
//! send times live here: records covering `[base, snd.nxt)` contiguously,
//! each a run of bytes sent at one instant. A retransmission overlays its
//! bytes with a new record. The table is fixed (no allocation per socket or
//! per segment); when full, the two neighbouring records closest in time
//! merge and keep the later time, which can only delay a loss verdict for
//! the bytes of the earlier one, never make one up.

use crate::time::{Duration, Instant};
use crate::wire::TcpSeqNumber;

use super::scoreboard::Scoreboard;

/// Send records kept per socket.
pub(super) const RECORDS: usize = 32;

/// The record's bytes were retransmitted (their delivery may be the
/// original's: RTT samples from them are filtered).
const REXMIT: u8 = 1;
/// Detected lost and not resent since.
const LOST: u8 = 2;
/// Two runs merged into one with the later's time: only the delivery of
/// its last bytes (the later run's, for new data) dates it right.
const MERGED: u8 = 4;

/// Send times in microseconds.
fn stamp(t: Instant) -> i64 {
    t.total_micros()
}

fn micros_between(from: i64, to: i64) -> u64 {
    to.saturating_sub(from).max(0) as u64
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Rack {
    /// Start of the first record (SND.UNA once an ACK advanced it).
    base: TcpSeqNumber,
    ends: [TcpSeqNumber; RECORDS],
    sent_at: [i64; RECORDS],
    flags: [u8; RECORDS],
    len: usize,
    /// Send time and end of the most recently sent segment delivered
    /// (RACK.xmit_ts, RACK.end_seq), and its round trip (RACK.rtt).
    delivered_at: Option<i64>,
    delivered_end: TcpSeqNumber,
    rtt_us: u64,
    /// The smallest round trip of an unambiguous delivery.
    min_rtt_us: Option<u64>,
    /// The highest delivered byte, and whether data below it (never
    /// retransmitted) was delivered later: the path reorders.
    fack: Option<TcpSeqNumber>,
    fack_pending: Option<TcpSeqNumber>,
    reordering_seen: bool,
}

impl Default for Rack {
    fn default() -> Self {
        Self {
            base: TcpSeqNumber::default(),
            ends: [TcpSeqNumber::default(); RECORDS],
            sent_at: [0; RECORDS],
            flags: [0; RECORDS],
            len: 0,
            delivered_at: None,
            delivered_end: TcpSeqNumber::default(),
            rtt_us: 0,
            min_rtt_us: None,
            fack: None,
            fack_pending: None,
            reordering_seen: false,
        }
    }
}

/// What a detection pass found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Verdict {
    /// Bytes not marked lost before were marked now.
    pub newly_lost: bool,
    /// When the next undelivered record becomes lost if nothing arrives
    /// (RACK's reordering timer).
    pub timer: Option<Instant>,
}

impl Rack {
    /// Forgets every record (after a retransmission timeout everything is
    /// sent again); what was learnt about the path stays.
    pub fn clear(&mut self) {
        self.len = 0;
        self.delivered_at = None;
        self.fack = None;
    }

    fn start_of(&self, i: usize) -> TcpSeqNumber {
        if i == 0 { self.base } else { self.ends[i - 1] }
    }

    fn end(&self) -> Option<TcpSeqNumber> {
        self.len.checked_sub(1).map(|i| self.ends[i])
    }

    /// Records `[start, end)` as sent at `now`: new data is appended (runs
    /// sent at one instant share a record); bytes sent before get a record
    /// of their own, marked retransmitted. `resent`: appended bytes are
    /// resent all the same (go-back-N after a timeout cleared the records).
    pub fn on_send(&mut self, start: TcpSeqNumber, end: TcpSeqNumber, now: Instant, resent: bool) {
        if end <= start {
            return;
        }
        let at = stamp(now);
        let fresh = if resent { REXMIT } else { 0 };
        let Some(last_end) = self.end() else {
            self.base = start;
            self.push(end, at, fresh);
            return;
        };
        if start < self.base {
            // Below what the records cover (acknowledged already): a
            // retransmission of what is left of it.
            return self.on_send(self.base, end, now, resent);
        }
        if start >= last_end {
            // A gap is what the peer SACKed and go-back-N skipped: it
            // joins the last record.
            if start > last_end {
                self.ends[self.len - 1] = start;
            }
            let i = self.len - 1;
            if self.sent_at[i] == at && self.flags[i] == fresh {
                self.ends[i] = end;
            } else {
                self.push(end, at, fresh);
            }
            return;
        }
        self.overlay(start, end.min(last_end), at);
        if end > last_end {
            self.push(end, at, fresh);
        }
    }

    /// Replaces the times of `[start, end)` (within the records) by a
    /// retransmission's.
    fn overlay(&mut self, start: TcpSeqNumber, end: TcpSeqNumber, at: i64) {
        let mut out = *self;
        out.len = 0;
        let mut placed = false;
        for i in 0..self.len {
            let (s, e) = (self.start_of(i), self.ends[i]);
            if e <= start || s >= end {
                if s >= end && !placed {
                    out.push(end, at, REXMIT);
                    placed = true;
                }
                out.push(e, self.sent_at[i], self.flags[i]);
                continue;
            }
            if s < start {
                out.push(start, self.sent_at[i], self.flags[i]);
            }
            if !placed && e >= end {
                out.push(end, at, REXMIT);
                placed = true;
            }
            if e > end {
                out.push(e, self.sent_at[i], self.flags[i]);
            }
        }
        if !placed {
            out.push(end, at, REXMIT);
        }
        *self = out;
    }

    /// Cuts record `i` in two at `seq` (inside it), merging two others
    /// first if the table is full; where record `i` is then (None: no pair
    /// could merge without it).
    fn split(&mut self, i: usize, seq: TcpSeqNumber) -> Option<usize> {
        let i = if self.len == RECORDS {
            self.merge_closest(Some(i))?
        } else {
            i
        };
        for j in (i..self.len).rev() {
            self.ends[j + 1] = self.ends[j];
            self.sent_at[j + 1] = self.sent_at[j];
            self.flags[j + 1] = self.flags[j];
        }
        self.ends[i] = seq;
        self.len += 1;
        Some(i)
    }

    fn push(&mut self, end: TcpSeqNumber, at: i64, flags: u8) {
        if self.len == RECORDS {
            self.merge_closest(None);
        }
        self.ends[self.len] = end;
        self.sent_at[self.len] = at;
        self.flags[self.len] = flags;
        self.len += 1;
    }

    /// Makes room: the neighbours closest in send time (and alike: both
    /// lost or neither, both resent or neither, where such a pair exists)
    /// become one record with the later time, so a lost verdict on the
    /// earlier bytes may come later, never early; the merged record dates a
    /// delivery only by its last bytes. `keep`: a record not to merge;
    /// returns where it is afterwards.
    fn merge_closest(&mut self, keep: Option<usize>) -> Option<usize> {
        let mut best: Option<(usize, u64, bool)> = None;
        for i in 0..self.len - 1 {
            if keep.is_some_and(|k| k == i || k == i + 1) {
                continue;
            }
            let gap = self.sent_at[i].abs_diff(self.sent_at[i + 1]);
            let alike = (self.flags[i] ^ self.flags[i + 1]) & (LOST | REXMIT) == 0;
            let better = match best {
                None => true,
                Some((_, g, a)) => (alike && !a) || (alike == a && gap < g),
            };
            if better {
                best = Some((i, gap, alike));
            }
        }
        let (i, _, _) = best?;
        let at = self.sent_at[i].max(self.sent_at[i + 1]);
        // Lost only if both were; retransmitted if either was.
        let (a, b) = (self.flags[i], self.flags[i + 1]);
        let flags = (a | b) & REXMIT | a & b & LOST | MERGED;
        self.ends[i] = self.ends[i + 1];
        self.sent_at[i] = at;
        self.flags[i] = flags;
        for j in i + 1..self.len - 1 {
            self.ends[j] = self.ends[j + 1];
            self.sent_at[j] = self.sent_at[j + 1];
            self.flags[j] = self.flags[j + 1];
        }
        self.len -= 1;
        keep.map(|k| if k > i { k - 1 } else { k })
    }

    /// Forgets what is at or below the new SND.UNA.
    pub fn advance(&mut self, una: TcpSeqNumber) {
        let drop = (0..self.len).take_while(|&i| self.ends[i] <= una).count();
        if drop > 0 {
            for j in 0..self.len - drop {
                self.ends[j] = self.ends[j + drop];
                self.sent_at[j] = self.sent_at[j + drop];
                self.flags[j] = self.flags[j + drop];
            }
            self.len -= drop;
        }
        if una > self.base {
            self.base = una;
        }
    }

    /// `[start, end)` reached the peer for the first time (cumulatively or
    /// SACKed) with an ACK that echoed a segment sent at `echoed` (its
    /// timestamp): the most recent send among its records becomes RACK's
    /// reference if it is newer (RFC 8985 §6.2 step 2), unless it was a
    /// retransmission the ACK may not be about — acked sooner than the
    /// minimum round trip after it, or the echo is older than it (the ACK
    /// is the original's). Call `end_ack` once the ACK's runs are in.
    pub fn on_delivered(
        &mut self,
        start: TcpSeqNumber,
        end: TcpSeqNumber,
        now: Instant,
        echoed: Option<Instant>,
    ) {
        let now_at = stamp(now);
        for i in 0..self.len {
            let (s, e) = (self.start_of(i).max(start), self.ends[i].min(end));
            if s >= e {
                continue;
            }
            let (at, flags) = (self.sent_at[i], self.flags[i]);
            let rexmit = flags & REXMIT != 0;
            if flags & MERGED != 0 && e < self.ends[i] {
                // Its time is its last bytes'.
                continue;
            }
            let rtt = micros_between(at, now_at);
            if rexmit
                && (self.min_rtt_us.is_none_or(|m| rtt < m)
                    || echoed.is_some_and(|t| stamp(t) + 1_000 < at))
            {
                continue;
            }
            if !rexmit {
                self.min_rtt_us = Some(self.min_rtt_us.map_or(rtt, |m| m.min(rtt)));
                // Data below the highest byte delivered before this ACK,
                // sent once and delivered only now, arrived out of order.
                if self.fack.is_some_and(|f| e < f) {
                    self.reordering_seen = true;
                }
            }
            let newer = match self.delivered_at {
                None => true,
                Some(d) => at > d || (at == d && e > self.delivered_end),
            };
            if newer {
                self.delivered_at = Some(at);
                self.delivered_end = e;
                self.rtt_us = rtt;
            }
        }
        if self.fack_pending.is_none_or(|f| end > f) {
            self.fack_pending = Some(end);
        }
    }

    /// The ACK's deliveries are in: its highest byte is the one later
    /// deliveries are compared with (not during the ACK: its blocks come
    /// in no particular order).
    pub fn end_ack(&mut self) {
        if let Some(p) = self.fack_pending.take()
            && self.fack.is_none_or(|f| p > f)
        {
            self.fack = Some(p);
        }
    }

    /// The reordering window (RFC 8985 §6.2 step 4): none once loss is
    /// certain (in recovery, or three segments' worth SACKed) on a path not
    /// seen reordering; else a quarter of the minimum round trip, at most
    /// the smoothed one.
    pub fn reo_wnd(&self, certain: bool, srtt: Duration) -> Duration {
        if certain && !self.reordering_seen {
            return Duration::ZERO;
        }
        let quarter = Duration::from_micros(self.min_rtt_us.unwrap_or(0) / 4);
        quarter.min(srtt)
    }

    /// Marks lost every record with undelivered bytes sent before the
    /// reference (RFC 8985 §6.2 step 5) whose round trip and reordering
    /// window have passed; reports the earliest time another will be.
    pub fn detect(&mut self, now: Instant, board: &Scoreboard, reo_wnd: Duration) -> Verdict {
        let mut v = Verdict::default();
        let Some(ref_at) = self.delivered_at else {
            return v;
        };
        let now_at = stamp(now);
        let wait = self.rtt_us + reo_wnd.total_micros();
        // (`split` below adds a record: the bound is read each time.)
        let mut next = 0;
        while next < self.len {
            let mut i = next;
            next += 1;
            if self.flags[i] & LOST != 0 {
                continue;
            }
            let Some(first) = undelivered(board, self.start_of(i), self.ends[i]) else {
                continue;
            };
            let at = self.sent_at[i];
            if at == ref_at {
                // Sent in the same run as the reference: only the bytes
                // below it were sent before it.
                if first >= self.delivered_end {
                    continue;
                }
                if self.ends[i] > self.delivered_end {
                    match self.split(i, self.delivered_end) {
                        Some(j) => i = j,
                        None => continue,
                    }
                    next = i + 1;
                }
            } else if at > ref_at {
                continue;
            }
            let age = micros_between(at, now_at);
            if age >= wait {
                self.flags[i] |= LOST;
                v.newly_lost = true;
            } else {
                let at = now + Duration::from_micros(wait - age);
                v.timer = Some(v.timer.map_or(at, |t| t.min(at)));
            }
        }
        v
    }

    /// The first bytes at or after `from` to retransmit: undelivered ones
    /// marked lost, or never retransmitted below `fack_limit` (every hole
    /// below the highest SACK counts as lost once in recovery, as Linux's
    /// FACK did); their start and length.
    pub fn next_to_resend(
        &self,
        from: TcpSeqNumber,
        board: &Scoreboard,
        fack_limit: TcpSeqNumber,
    ) -> Option<(TcpSeqNumber, usize)> {
        for i in 0..self.len {
            let (s, e) = (self.start_of(i).max(from), self.ends[i]);
            let e = if self.flags[i] & LOST != 0 {
                e
            } else if self.flags[i] & REXMIT == 0 {
                e.min(fack_limit)
            } else {
                continue;
            };
            if let Some(first) = undelivered(board, s, e) {
                let stop = board.next_hole(first).map_or(e, |(h, len)| (h + len).min(e));
                return Some((first, stop.max(first + 1) - first));
            }
        }
        None
    }

    /// Bytes `next_to_resend` would return from `from` on: in flight by
    /// the books but counted lost (RFC 6675's pipe leaves them out).
    pub fn to_resend_bytes(
        &self,
        from: TcpSeqNumber,
        board: &Scoreboard,
        fack_limit: TcpSeqNumber,
    ) -> usize {
        let mut n = 0;
        for i in 0..self.len {
            let (s, e) = (self.start_of(i).max(from), self.ends[i]);
            let e = if self.flags[i] & LOST != 0 {
                e
            } else if self.flags[i] & REXMIT == 0 {
                e.min(fack_limit)
            } else {
                continue;
            };
            if s < e {
                n += (e - s) - board.sacked_between(s, e);
            }
        }
        n
    }

    /// Whether any undelivered bytes are marked lost.
    pub fn has_lost(&self, board: &Scoreboard) -> bool {
        (0..self.len).any(|i| {
            self.flags[i] & LOST != 0 && undelivered(board, self.start_of(i), self.ends[i]).is_some()
        })
    }
}

/// The first byte of `[start, end)` the peer has not SACKed.
fn undelivered(board: &Scoreboard, start: TcpSeqNumber, end: TcpSeqNumber) -> Option<TcpSeqNumber> {
    let mut cur = start;
    while cur < end {
        match board.covering(cur) {
            Some(e) => cur = e,
            None => return Some(cur),
        }
    }
    None
}

#[cfg(test)]
mod test {
    use super::*;

    fn seq(n: i32) -> TcpSeqNumber {
        TcpSeqNumber(n)
    }

    fn ms(n: i64) -> Instant {
        Instant::from_millis(n)
    }

    fn board(blocks: &[(i32, i32)]) -> Scoreboard {
        let mut b = Scoreboard::default();
        for &(s, e) in blocks {
            b.insert(seq(s), seq(e), seq(0), seq(1_000_000));
        }
        b
    }

    /// Ten segments of 100 bytes, one per millisecond from t = 0.
    fn ten_segments() -> Rack {
        let mut r = Rack::default();
        for i in 0..10 {
            r.on_send(seq(i * 100), seq(i * 100 + 100), ms(i as i64), false);
        }
        r
    }

    #[test]
    fn test_segments_sent_at_one_instant_share_a_record() {
        let mut r = Rack::default();
        r.on_send(seq(0), seq(100), ms(1), false);
        r.on_send(seq(100), seq(200), ms(1), false);
        r.on_send(seq(200), seq(300), ms(2), false);
        assert_eq!(r.len, 2);
        assert_eq!(r.ends[0], seq(200));
    }

    #[test]
    fn test_a_segment_sent_before_a_delivered_one_is_lost_after_a_round_trip() {
        let mut r = ten_segments();
        // Segment 0 lost; 1 and 2 SACKed at t = 30 (RTT ~ 28 ms): only two
        // duplicate ACKs, too few for the classic rule.
        let b = board(&[(100, 300)]);
        r.on_delivered(seq(100), seq(300), ms(30), None);
        r.end_ack();
        let v = r.detect(ms(30), &b, Duration::ZERO);
        assert!(v.newly_lost);
        assert_eq!(r.next_to_resend(seq(0), &b, seq(0)), Some((seq(0), 100)));
        // Later segments were sent after the reference: not lost.
        assert_eq!(r.to_resend_bytes(seq(0), &b, seq(0)), 100);
    }

    #[test]
    fn test_of_a_run_sent_at_one_instant_only_the_bytes_below_the_delivered_are_lost() {
        let mut r = Rack::default();
        r.on_send(seq(0), seq(600), ms(0), false);
        let b = board(&[(100, 200)]);
        r.on_delivered(seq(100), seq(200), ms(30), None);
        r.end_ack();
        assert!(r.detect(ms(30), &b, Duration::ZERO).newly_lost);
        assert_eq!(r.to_resend_bytes(seq(0), &b, seq(0)), 100);
        assert_eq!(r.next_to_resend(seq(0), &b, seq(0)), Some((seq(0), 100)));
        assert_eq!(r.next_to_resend(seq(100), &b, seq(0)), None);
    }

    #[test]
    fn test_the_reordering_window_defers_the_verdict_to_a_timer() {
        let mut r = ten_segments();
        let b = board(&[(100, 200)]);
        r.on_delivered(seq(100), seq(200), ms(30), None);
        r.end_ack();
        // Sent at 0, reference sent at 1 and delivered at 30: RTT 29 ms,
        // plus a 5 ms window: lost at 34.
        let v = r.detect(ms(30), &b, Duration::from_millis(5));
        assert!(!v.newly_lost);
        assert_eq!(v.timer, Some(ms(34)));
        let v = r.detect(ms(34), &b, Duration::from_millis(5));
        assert!(v.newly_lost);
    }

    #[test]
    fn test_a_lost_retransmission_is_found_by_what_was_sent_after_it() {
        let mut r = ten_segments();
        let b = board(&[(100, 1000)]);
        r.on_delivered(seq(100), seq(1000), ms(30), None);
        r.end_ack();
        assert!(r.detect(ms(30), &b, Duration::ZERO).newly_lost);
        // Resent at 30: no longer to resend.
        r.on_send(seq(0), seq(100), ms(30), false);
        assert_eq!(r.next_to_resend(seq(0), &b, seq(1000)), None);
        // New data sent at 31 is SACKed at 60; the retransmission is not.
        r.on_send(seq(1000), seq(1100), ms(31), false);
        let b = board(&[(100, 1100)]);
        r.on_delivered(seq(1000), seq(1100), ms(60), None);
        r.end_ack();
        assert!(r.detect(ms(60), &b, Duration::ZERO).newly_lost);
        assert_eq!(r.next_to_resend(seq(0), &b, seq(1100)), Some((seq(0), 100)));
    }

    #[test]
    fn test_an_early_ack_of_a_retransmission_is_the_originals() {
        let mut r = ten_segments();
        let b = board(&[(100, 1000)]);
        r.on_delivered(seq(100), seq(1000), ms(30), None);
        r.end_ack();
        r.detect(ms(30), &b, Duration::ZERO);
        r.on_send(seq(0), seq(100), ms(30), false);
        // Cumulatively acked 1 ms after the retransmission: the original's
        // ACK (min RTT ~ 20 ms); the reference stays on the original data.
        r.on_delivered(seq(0), seq(100), ms(31), None);
        r.end_ack();
        assert_eq!(r.rtt_us, 21_000);
        assert_eq!(r.delivered_at, Some(stamp(ms(9))));
    }

    #[test]
    fn test_delivery_below_the_highest_delivered_byte_is_reordering() {
        let mut r = ten_segments();
        r.on_delivered(seq(200), seq(300), ms(30), None);
        r.end_ack();
        assert!(!r.reordering_seen);
        r.on_delivered(seq(0), seq(200), ms(31), None);
        r.end_ack();
        assert!(r.reordering_seen);
        assert_eq!(
            r.reo_wnd(true, Duration::from_millis(100)),
            Duration::from_micros(7_000)
        );
    }

    #[test]
    fn test_fack_limit_counts_unsent_holes_below_the_highest_sack_as_lost() {
        let r = ten_segments();
        let b = board(&[(300, 400), (600, 700)]);
        // One record per segment here: the first hole comes a record at a
        // time (the caller sends at most a segment anyway).
        assert_eq!(r.next_to_resend(seq(0), &b, seq(700)), Some((seq(0), 100)));
        assert_eq!(r.next_to_resend(seq(300), &b, seq(700)), Some((seq(400), 100)));
        assert_eq!(r.to_resend_bytes(seq(0), &b, seq(700)), 500);
        assert_eq!(r.next_to_resend(seq(700), &b, seq(700)), None);
    }

    #[test]
    fn test_a_full_table_merges_neighbours_closest_in_time_keeping_the_later() {
        let mut r = Rack::default();
        for i in 0..(RECORDS as i32 + 5) {
            // Pairs 1 ms apart, pairs 10 ms apart from each other.
            let t = i64::from(i / 2) * 10 + i64::from(i % 2);
            r.on_send(seq(i * 100), seq(i * 100 + 100), ms(t), false);
        }
        assert_eq!(r.len, RECORDS);
        // Coverage stays contiguous and complete.
        assert_eq!(r.base, seq(0));
        assert_eq!(r.end(), Some(seq((RECORDS as i32 + 5) * 100)));
        for i in 1..r.len {
            assert!(r.ends[i] > r.ends[i - 1]);
        }
        assert_eq!(r.ends[0], seq(200));
        assert_eq!(r.sent_at[0], stamp(ms(1)));
    }

    #[test]
    fn test_overlay_splits_records_and_advance_drops_them() {
        let mut r = Rack::default();
        r.on_send(seq(0), seq(1000), ms(0), false);
        r.on_send(seq(300), seq(500), ms(5), false);
        assert_eq!(r.len, 3);
        assert_eq!(
            (r.ends[0], r.ends[1], r.ends[2]),
            (seq(300), seq(500), seq(1000))
        );
        assert_eq!(r.flags[1], REXMIT);
        r.advance(seq(400));
        assert_eq!(r.base, seq(400));
        assert_eq!(r.len, 2);
        r.advance(seq(1000));
        assert_eq!(r.len, 0);
    }

    #[test]
    fn test_sequence_numbers_wrap() {
        let mut r = Rack::default();
        let s = TcpSeqNumber(i32::MAX - 150);
        let t0 = Instant::from_millis(5_000);
        for i in 0..3 {
            r.on_send(s + i * 100, s + i * 100 + 100, t0 + Duration::from_millis(i as u64), false);
        }
        let mut b = Scoreboard::default();
        b.insert(s + 100, s + 300, s, s + 1000);
        r.on_delivered(s + 100, s + 300, t0 + Duration::from_millis(30), None);
        r.end_ack();
        assert!(r.detect(t0 + Duration::from_millis(30), &b, Duration::ZERO).newly_lost);
        assert_eq!(r.next_to_resend(s, &b, s), Some((s, 100)));
    }
}

#[cfg(test)]
mod invariants {
    use super::*;

    /// A small deterministic generator (no dev-dependency needed).
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, n: u32) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((self.0 >> 33) as u32) % n
        }
    }

    fn check(r: &Rack, una: TcpSeqNumber, nxt: TcpSeqNumber) {
        if r.len == 0 {
            return;
        }
        assert_eq!(r.base, una, "records start at SND.UNA");
        assert_eq!(r.ends[r.len - 1], nxt, "records end at SND.NXT");
        let mut prev = r.base;
        for i in 0..r.len {
            assert!(r.ends[i] > prev, "records ascend and are not empty");
            prev = r.ends[i];
        }
    }

    #[test]
    fn test_records_cover_the_flight_whatever_is_sent_resent_sacked_and_acked() {
        for seed in 0..200u64 {
            let mut g = Lcg(seed);
            let mut r = Rack::default();
            let mut board = Scoreboard::default();
            let start = TcpSeqNumber(i32::MAX - 20_000 + seed as i32 * 97);
            let (mut una, mut nxt) = (start, start);
            let mut now = Instant::from_millis(1_000);
            for _ in 0..400 {
                now += Duration::from_micros(u64::from(g.next(3_000)));
                match g.next(10) {
                    0..=3 => {
                        let len = 1 + g.next(1_500) as usize;
                        r.on_send(nxt, nxt + len, now, false);
                        nxt += len;
                    }
                    4..=5 if nxt > una => {
                        let off = g.next((nxt - una) as u32) as usize;
                        let len = (1 + g.next(1_500) as usize).min(nxt - (una + off));
                        r.on_send(una + off, una + off + len, now, true);
                    }
                    6..=7 if nxt > una => {
                        let a = una + g.next((nxt - una) as u32) as usize;
                        let b = a + (1 + g.next((nxt - a) as u32) as usize);
                        board.insert(a, b, una, nxt);
                        r.on_delivered(a, b, now, None);
                        r.end_ack();
                    }
                    8 if nxt > una => {
                        let ack = una + (1 + g.next((nxt - una) as u32) as usize);
                        r.on_delivered(una, ack, now, None);
                        r.end_ack();
                        una = ack;
                        board.advance(una);
                        r.advance(una);
                    }
                    _ => {
                        let v = r.detect(now, &board, Duration::from_micros(500));
                        assert!(v.timer.is_none_or(|t| t > now), "a timer in the past");
                        if let Some((s, len)) = r.next_to_resend(una, &board, nxt) {
                            assert!(s >= una && s + len <= nxt && len > 0);
                            assert!(board.covering(s).is_none(), "resending SACKed bytes");
                        }
                        assert!(r.to_resend_bytes(una, &board, nxt) <= nxt - una);
                    }
                }
                check(&r, una, nxt);
            }
        }
    }

    #[test]
    fn test_overlay_and_split_on_a_full_table_keep_the_records_whole() {
        let mut r = Rack::default();
        for i in 0..RECORDS as i32 {
            r.on_send(TcpSeqNumber(i * 100), TcpSeqNumber(i * 100 + 100), Instant::from_millis(i64::from(i)), false);
        }
        assert_eq!(r.len, RECORDS);
        // A retransmission in the middle of a record needs two more.
        r.on_send(TcpSeqNumber(1_520), TcpSeqNumber(1_540), Instant::from_millis(100), true);
        assert_eq!(r.len, RECORDS);
        check(&r, TcpSeqNumber(0), TcpSeqNumber(RECORDS as i32 * 100));
        let j = (0..r.len).find(|&i| r.flags[i] & REXMIT != 0).expect("the resent record");
        assert_eq!((r.start_of(j), r.ends[j]), (TcpSeqNumber(1_520), TcpSeqNumber(1_540)));
        // Splitting a record of a full table merges two others first.
        let i = (0..r.len).find(|&i| r.ends[i] == TcpSeqNumber(3_000)).unwrap();
        let k = r.split(i, TcpSeqNumber(2_950)).expect("room made");
        assert_eq!((r.start_of(k), r.ends[k]), (TcpSeqNumber(2_900), TcpSeqNumber(2_950)));
        check(&r, TcpSeqNumber(0), TcpSeqNumber(RECORDS as i32 * 100));
    }
}
