//! Local ports for upstream connections. Each worker owns a disjoint range so
//! that the engine can tell from a frame's destination port which worker owns
//! the connection.

use std::ops::Range;

pub struct PortAllocator {
    range: Range<u16>,
    in_use: Vec<u64>,
    cursor: u16,
    used: usize,
}

impl PortAllocator {
    pub fn new(range: Range<u16>) -> Self {
        assert!(!range.is_empty(), "empty port range");
        let words = (range.len()).div_ceil(64);
        Self {
            cursor: range.start,
            range,
            in_use: vec![0; words],
            used: 0,
        }
    }

    /// Like `new`, but the first port handed out is `seed` mod the range's
    /// length into it: a restarted engine does not begin with the 4-tuples
    /// its predecessor used (an origin may still hold them open, and a SYN
    /// on one gets a challenge ACK and a one-second retransmit).
    pub fn starting_at(range: Range<u16>, seed: u64) -> Self {
        let mut p = Self::new(range);
        p.cursor = p.range.start + (seed % p.range.len() as u64) as u16;
        p
    }

    pub fn range(&self) -> Range<u16> {
        self.range.clone()
    }

    pub fn in_use(&self) -> usize {
        self.used
    }

    /// Next free port after the last one handed out (spreads reuse in time).
    pub fn alloc(&mut self) -> Option<u16> {
        let len = self.range.len();
        if self.used == len {
            return None;
        }
        for _ in 0..len {
            let port = self.cursor;
            self.cursor = if self.cursor + 1 >= self.range.end {
                self.range.start
            } else {
                self.cursor + 1
            };
            let i = (port - self.range.start) as usize;
            if self.in_use[i / 64] & (1 << (i % 64)) == 0 {
                self.in_use[i / 64] |= 1 << (i % 64);
                self.used += 1;
                return Some(port);
            }
        }
        None
    }

    pub fn free(&mut self, port: u16) {
        if !self.range.contains(&port) {
            return;
        }
        let i = (port - self.range.start) as usize;
        if self.in_use[i / 64] & (1 << (i % 64)) != 0 {
            self.in_use[i / 64] &= !(1 << (i % 64));
            self.used -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_allocator_starts_inside_the_range_and_still_hands_out_every_port() {
        let mut p = PortAllocator::starting_at(100..110, 7);
        assert_eq!(p.alloc(), Some(107));
        let mut got: Vec<u16> = (0..9).map(|_| p.alloc().unwrap()).collect();
        got.push(107);
        got.sort();
        assert_eq!(got, (100..110).collect::<Vec<_>>());
        assert_eq!(p.alloc(), None);
        let mut q = PortAllocator::starting_at(100..110, u64::MAX);
        assert!((100..110).contains(&q.alloc().unwrap()));
    }

    #[test]
    fn hands_out_every_port_once_then_none() {
        let mut p = PortAllocator::new(100..103);
        let mut got = vec![p.alloc().unwrap(), p.alloc().unwrap(), p.alloc().unwrap()];
        got.sort();
        assert_eq!(got, vec![100, 101, 102]);
        assert_eq!(p.alloc(), None);
        p.free(101);
        assert_eq!(p.alloc(), Some(101));
    }
}
