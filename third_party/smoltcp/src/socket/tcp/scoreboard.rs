//! The sender's SACK scoreboard (RFC 6675, simplified): the ranges above
//! SND.UNA that the peer reported holding (RFC 2018 SACK blocks), so loss
//! recovery retransmits only the holes between them and a go-back-N resend
//! after a timeout skips what already arrived.

use crate::wire::TcpSeqNumber;

/// Ranges kept; beyond that the highest are dropped (the lowest holes are
/// the ones that hold SND.UNA back).
pub(super) const SCOREBOARD_RANGES: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Scoreboard {
    /// `[start, end)`, ascending, disjoint and not adjacent.
    ranges: [(TcpSeqNumber, TcpSeqNumber); SCOREBOARD_RANGES],
    len: usize,
}

impl Scoreboard {
    pub fn clear(&mut self) {
        self.len = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn ranges(&self) -> &[(TcpSeqNumber, TcpSeqNumber)] {
        &self.ranges[..self.len]
    }

    /// The end of the highest SACKed range.
    pub fn highest(&self) -> Option<TcpSeqNumber> {
        self.ranges().last().map(|r| r.1)
    }

    /// Forgets everything at or below the new SND.UNA.
    pub fn advance(&mut self, una: TcpSeqNumber) {
        let mut kept = 0;
        for i in 0..self.len {
            let (start, end) = self.ranges[i];
            if end > una {
                self.ranges[kept] = (start.max(una), end);
                kept += 1;
            }
        }
        self.len = kept;
    }

    /// Records a SACK block, clipped to `(una, limit]` (anything else is
    /// stale or bogus). True if it covered bytes not SACKed before.
    pub fn insert(
        &mut self,
        start: TcpSeqNumber,
        end: TcpSeqNumber,
        una: TcpSeqNumber,
        limit: TcpSeqNumber,
    ) -> bool {
        // A block outside the window, inverted, or reaching below SND.UNA
        // (a D-SACK, or bogus: clipping it would hide the real hole) says
        // nothing about what is missing.
        if end <= start || start < una || start >= limit {
            return false;
        }
        let end = if end > limit { limit } else { end };
        if end <= start {
            return false;
        }
        if self.ranges().iter().any(|&(s, e)| s <= start && end <= e) {
            return false;
        }
        // Merge with every range it overlaps or touches.
        let (mut new_start, mut new_end) = (start, end);
        let mut out = [(TcpSeqNumber::default(), TcpSeqNumber::default()); SCOREBOARD_RANGES];
        let mut n = 0;
        let mut placed = false;
        for &(s, e) in self.ranges() {
            if e < new_start {
                out[n] = (s, e);
                n += 1;
            } else if s > new_end {
                if !placed {
                    if n == SCOREBOARD_RANGES {
                        break;
                    }
                    out[n] = (new_start, new_end);
                    n += 1;
                    placed = true;
                }
                if n == SCOREBOARD_RANGES {
                    break;
                }
                out[n] = (s, e);
                n += 1;
            } else {
                new_start = new_start.min(s);
                new_end = new_end.max(e);
            }
        }
        if !placed && n < SCOREBOARD_RANGES {
            out[n] = (new_start, new_end);
            n += 1;
        }
        self.ranges = out;
        self.len = n;
        true
    }

    /// Bytes SACKed above `seq`.
    pub fn sacked_above(&self, seq: TcpSeqNumber) -> usize {
        self.ranges()
            .iter()
            .filter(|&&(_, e)| e > seq)
            .map(|&(s, e)| e - s.max(seq))
            .sum()
    }

    /// Calls `f` with each run of `[start, end)` not SACKed.
    pub fn for_each_unsacked(
        &self,
        start: TcpSeqNumber,
        end: TcpSeqNumber,
        mut f: impl FnMut(TcpSeqNumber, TcpSeqNumber),
    ) {
        let mut cur = start;
        for &(s, e) in self.ranges() {
            if cur >= end {
                return;
            }
            if e <= cur {
                continue;
            }
            if s > cur {
                f(cur, s.min(end));
            }
            cur = e;
        }
        if cur < end {
            f(cur, end);
        }
    }

    /// Calls `f` with each SACKed run within `[start, end)`.
    pub fn for_each_sacked(
        &self,
        start: TcpSeqNumber,
        end: TcpSeqNumber,
        mut f: impl FnMut(TcpSeqNumber, TcpSeqNumber),
    ) {
        for &(s, e) in self.ranges() {
            let (s, e) = (s.max(start), e.min(end));
            if s < e {
                f(s, e);
            }
        }
    }

    /// Bytes SACKed within `[start, end)`.
    pub fn sacked_between(&self, start: TcpSeqNumber, end: TcpSeqNumber) -> usize {
        self.ranges()
            .iter()
            .filter(|&&(s, e)| e > start && s < end)
            .map(|&(s, e)| e.min(end) - s.max(start))
            .sum()
    }

    /// If `seq` lies in a SACKed range, that range's end.
    pub fn covering(&self, seq: TcpSeqNumber) -> Option<TcpSeqNumber> {
        self.ranges()
            .iter()
            .find(|&&(s, e)| s <= seq && seq < e)
            .map(|r| r.1)
    }

    /// The first hole at or after `from` below the highest SACKed byte (RFC
    /// 6675's IsLost, simplified: any gap the peer has SACKed data above):
    /// its start and length.
    pub fn next_hole(&self, from: TcpSeqNumber) -> Option<(TcpSeqNumber, usize)> {
        let mut cur = from;
        for &(s, e) in self.ranges() {
            if cur < s {
                return Some((cur, s - cur));
            }
            if cur < e {
                cur = e;
            }
        }
        None
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn seq(n: i32) -> TcpSeqNumber {
        TcpSeqNumber(n)
    }

    fn board(blocks: &[(i32, i32)]) -> Scoreboard {
        let mut b = Scoreboard::default();
        for &(s, e) in blocks {
            b.insert(seq(s), seq(e), seq(0), seq(1_000_000));
        }
        b
    }

    #[test]
    fn test_insert_merges_overlapping_and_adjacent_blocks() {
        let b = board(&[(100, 200), (300, 400), (200, 250), (350, 500)]);
        assert_eq!(b.ranges(), &[(seq(100), seq(250)), (seq(300), seq(500))]);
        let b = board(&[(300, 400), (100, 200), (150, 350)]);
        assert_eq!(b.ranges(), &[(seq(100), seq(400))]);
    }

    #[test]
    fn test_insert_reports_only_new_bytes() {
        let mut b = board(&[(100, 200)]);
        assert!(!b.insert(seq(120), seq(180), seq(0), seq(1000)));
        assert!(b.insert(seq(150), seq(250), seq(0), seq(1000)));
    }

    #[test]
    fn test_insert_clips_to_what_was_sent_and_ignores_stale_blocks() {
        let mut b = Scoreboard::default();
        assert!(!b.insert(seq(10), seq(50), seq(50), seq(1000)));
        assert!(!b.insert(seq(2000), seq(3000), seq(50), seq(1000)));
        assert!(!b.insert(seq(300), seq(200), seq(50), seq(1000)));
        // Reaching below SND.UNA: ignored, not clipped.
        assert!(!b.insert(seq(10), seq(2000), seq(50), seq(1000)));
        assert!(b.insert(seq(60), seq(2000), seq(50), seq(1000)));
        assert_eq!(b.ranges(), &[(seq(60), seq(1000))]);
    }

    #[test]
    fn test_advance_drops_and_clips() {
        let mut b = board(&[(100, 200), (300, 400)]);
        b.advance(seq(350));
        assert_eq!(b.ranges(), &[(seq(350), seq(400))]);
        b.advance(seq(400));
        assert!(b.is_empty());
    }

    #[test]
    fn test_next_hole_walks_the_gaps_below_the_highest_sack() {
        let b = board(&[(100, 200), (300, 400)]);
        assert_eq!(b.next_hole(seq(0)), Some((seq(0), 100)));
        assert_eq!(b.next_hole(seq(150)), Some((seq(200), 100)));
        assert_eq!(b.next_hole(seq(250)), Some((seq(250), 50)));
        assert_eq!(b.next_hole(seq(400)), None);
        assert_eq!(b.covering(seq(399)), Some(seq(400)));
        assert_eq!(b.covering(seq(400)), None);
        assert_eq!(b.highest(), Some(seq(400)));
        assert_eq!(b.sacked_above(seq(0)), 200);
        assert_eq!(b.sacked_above(seq(350)), 50);
        assert_eq!(b.sacked_above(seq(400)), 0);
    }

    #[test]
    fn test_runs_sacked_and_not_within_a_span() {
        let b = board(&[(100, 200), (300, 400)]);
        let mut runs = std::vec::Vec::new();
        b.for_each_unsacked(seq(50), seq(350), |s, e| runs.push((s, e)));
        assert_eq!(runs, [(seq(50), seq(100)), (seq(200), seq(300))]);
        runs.clear();
        b.for_each_sacked(seq(150), seq(350), |s, e| runs.push((s, e)));
        assert_eq!(runs, [(seq(150), seq(200)), (seq(300), seq(350))]);
        assert_eq!(b.sacked_between(seq(150), seq(350)), 100);
        assert_eq!(b.sacked_between(seq(400), seq(500)), 0);
    }

    #[test]
    fn test_full_board_keeps_the_lowest_ranges() {
        let mut b = Scoreboard::default();
        for i in 0..(SCOREBOARD_RANGES as i32 + 4) {
            b.insert(seq(i * 100 + 10), seq(i * 100 + 50), seq(0), seq(100_000));
        }
        assert_eq!(b.len, SCOREBOARD_RANGES);
        assert_eq!(b.ranges()[0], (seq(10), seq(50)));
        // A low block still gets in, pushing the highest out.
        b.insert(seq(1), seq(5), seq(0), seq(100_000));
        assert_eq!(b.ranges()[0], (seq(1), seq(5)));
        assert_eq!(b.len, SCOREBOARD_RANGES);
    }

    #[test]
    fn test_sequence_numbers_wrap() {
        let una = TcpSeqNumber(i32::MAX - 50);
        let mut b = Scoreboard::default();
        assert!(b.insert(una + 100, una + 200, una, una + 1000));
        assert_eq!(b.next_hole(una), Some((una, 100)));
        assert_eq!(b.covering(una + 150), Some(una + 200));
    }
}
