//! Local ports for upstream connections. Each worker owns a disjoint range so
//! that the engine can tell from a frame's destination port which worker owns
//! the connection.

use std::ops::Range;

pub struct PortAllocator {
    range: Range<u16>,
    in_use: Vec<u64>,
    cursor: u16,
    used: usize,
    /// During a binary upgrade both engines connect from one range: each
    /// hands out ports of one parity only (the predecessor even, the
    /// successor odd), so their 4-tuples never meet at an origin.
    parity: Option<u16>,
    /// Ports the predecessor held when it handed over (any parity): the
    /// successor skips them until the predecessor is gone.
    peer: Vec<u64>,
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
            parity: None,
            peer: Vec::new(),
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

    /// From now on, hands out only ports whose low bit is `parity` (an
    /// engine handing over to, or taking over from, another).
    pub fn keep_parity(&mut self, parity: u16) {
        self.parity = Some(parity & 1);
    }

    /// The ports handed out and not freed (an upgrade's hand-over: the
    /// successor must not use them while this engine lives).
    pub fn held(&self) -> Vec<u16> {
        (0..self.range.len())
            .filter(|&i| self.in_use[i / 64] & (1 << (i % 64)) != 0)
            .map(|i| self.range.start + i as u16)
            .collect()
    }

    /// Skips `held` (the predecessor's ports) until [`end_split`](Self::end_split).
    pub fn reserve_for_peer(&mut self, held: &[u16]) {
        self.peer = vec![0; self.in_use.len()];
        for &port in held.iter().filter(|p| self.range.contains(p)) {
            let i = (port - self.range.start) as usize;
            self.peer[i / 64] |= 1 << (i % 64);
        }
    }

    /// The other engine is gone: every port is this one's again.
    pub fn end_split(&mut self) {
        self.parity = None;
        self.peer = Vec::new();
    }

    fn skipped(&self, port: u16, i: usize) -> bool {
        self.parity.is_some_and(|p| port & 1 != p)
            || self
                .peer
                .get(i / 64)
                .is_some_and(|w| w & (1 << (i % 64)) != 0)
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
            if self.in_use[i / 64] & (1 << (i % 64)) == 0 && !self.skipped(port, i) {
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
    fn an_upgrade_split_keeps_the_two_engines_ports_apart_until_it_ends() {
        let mut old = PortAllocator::new(100..110);
        let early: Vec<u16> = (0..3).map(|_| old.alloc().unwrap()).collect();
        assert_eq!(early, vec![100, 101, 102]);
        old.keep_parity(0);
        let held = old.held();
        assert_eq!(held, vec![100, 101, 102]);
        let mut new = PortAllocator::new(100..110);
        new.keep_parity(1);
        new.reserve_for_peer(&held);
        let new_ports: Vec<u16> = std::iter::from_fn(|| new.alloc()).collect();
        assert_eq!(new_ports, vec![103, 105, 107, 109], "odd, without 101");
        let old_ports: Vec<u16> = std::iter::from_fn(|| old.alloc()).collect();
        assert_eq!(old_ports, vec![104, 106, 108], "even only");
        new.end_split();
        let rest: Vec<u16> = std::iter::from_fn(|| new.alloc()).collect();
        assert_eq!(rest, vec![100, 101, 102, 104, 106, 108]);
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
