//! Worker-to-worker frame hand-off. A frame that arrives on a queue whose
//! worker does not own its flow (an upstream reply RSS-hashed elsewhere) is
//! copied into the owner's inbound ring. One bounded lock-free ring per
//! (sender, receiver) pair, so each ring has a single producer and consumer.
//! A sender wakes a sleeping receiver once per burst (`wake_receivers`).

use std::cell::Cell;
use std::io;
use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

use crate::wake::Waker;

/// Largest frame a hand-off slot carries (a full Ethernet frame fits).
pub const HANDOFF_FRAME: usize = 2048;

pub struct HandoffFrame {
    len: u16,
    /// Workers a stray segment has already been through (0: a frame handed
    /// straight to its owner).
    hops: u8,
    data: [u8; HANDOFF_FRAME],
}

impl HandoffFrame {
    /// Copies `frame`; None if it is larger than a slot.
    fn copy_of(frame: &[u8]) -> Option<Self> {
        if frame.len() > HANDOFF_FRAME {
            return None;
        }
        let mut f = HandoffFrame {
            len: frame.len() as u16,
            hops: 0,
            data: [0; HANDOFF_FRAME],
        };
        f.data[..frame.len()].copy_from_slice(frame);
        Some(f)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.data[..self.len as usize]
    }

    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len as usize]
    }
}

type Ring = Arc<ArrayQueue<HandoffFrame>>;

/// One worker's ends of the mesh.
pub struct HandoffPorts {
    pub me: usize,
    /// `outbound[w]`: ring to worker `w` (None for `me`).
    outbound: Vec<Option<Ring>>,
    inbound: Vec<Ring>,
    /// Every worker's waker, by worker index.
    wakers: Vec<Arc<Waker>>,
    /// Receivers this worker pushed to since its last `wake_receivers`.
    pushed: Vec<Cell<bool>>,
}

/// Builds the full mesh for `workers` workers with `depth` slots per ring.
pub fn mesh(workers: usize, depth: usize) -> io::Result<Vec<HandoffPorts>> {
    let wakers = (0..workers)
        .map(|_| Waker::new().map(Arc::new))
        .collect::<io::Result<Vec<_>>>()?;
    let rings: Vec<Vec<Option<Ring>>> = (0..workers)
        .map(|src| {
            (0..workers)
                .map(|dst| (src != dst).then(|| Arc::new(ArrayQueue::new(depth))))
                .collect()
        })
        .collect();
    Ok((0..workers)
        .map(|me| HandoffPorts {
            me,
            outbound: rings[me].clone(),
            inbound: (0..workers)
                .filter_map(|src| rings[src][me].clone())
                .collect(),
            wakers: wakers.clone(),
            pushed: (0..workers).map(|_| Cell::new(false)).collect(),
        })
        .collect())
}

impl HandoffPorts {
    pub fn workers(&self) -> usize {
        self.outbound.len()
    }

    /// Copies `frame` to worker `to`; false when its ring is full.
    pub fn send(&self, to: usize, frame: &[u8]) -> bool {
        self.send_with(to, frame, |_| {})
    }

    /// Like `send`, letting `edit` change the copy (e.g. an ARP rewrite).
    pub fn send_with(&self, to: usize, frame: &[u8], edit: impl FnOnce(&mut [u8])) -> bool {
        self.push(to, frame, 0, edit)
    }

    /// A segment no socket of this worker holds, to the next worker, as
    /// its `hops`-th try (see [`next_for_stray`](Self::next_for_stray)).
    pub fn send_stray(&self, frame: &[u8], hops: u8) -> bool {
        match self.next_for_stray(hops) {
            Some(to) => self.push(to, frame, hops, |_| {}),
            None => false,
        }
    }

    /// Where a stray goes on its `hops`-th try: round the ring of workers,
    /// so each other worker sees it once; None once all have (it is
    /// nobody's, and this worker answers it).
    pub fn next_for_stray(&self, hops: u8) -> Option<usize> {
        let n = self.workers();
        (hops >= 1 && (hops as usize) < n).then(|| (self.me + 1) % n)
    }

    fn push(&self, to: usize, frame: &[u8], hops: u8, edit: impl FnOnce(&mut [u8])) -> bool {
        let Some(ring) = self.outbound.get(to).and_then(|r| r.as_ref()) else {
            return false;
        };
        let Some(mut f) = HandoffFrame::copy_of(frame) else {
            return false;
        };
        f.hops = hops;
        edit(f.bytes_mut());
        let ok = ring.push(f).is_ok();
        if ok {
            self.pushed[to].set(true);
        }
        ok
    }

    /// After a burst of sends: wakes each receiver that got frames and
    /// sleeps (an eventfd write only then). Returns how many were woken.
    pub fn wake_receivers(&self) -> usize {
        let mut woken = 0;
        for (to, pushed) in self.pushed.iter().enumerate() {
            if pushed.replace(false) && self.wakers[to].wake_if_sleeping() {
                woken += 1;
            }
        }
        woken
    }

    /// This worker's own waker (its fd goes into the worker's sleep).
    pub fn waker(&self) -> &Waker {
        &self.wakers[self.me]
    }

    /// True if some inbound ring holds a frame: checked after announcing a
    /// sleep, so a frame pushed just before is not left waiting.
    pub fn has_inbound(&self) -> bool {
        self.inbound.iter().any(|r| !r.is_empty())
    }

    /// Hands up to `max` inbound frames to `on_frame` with their hop count
    /// (0 unless a stray); returns how many.
    pub fn receive(&self, max: usize, mut on_frame: impl FnMut(&[u8], u8)) -> usize {
        let mut n = 0;
        for ring in &self.inbound {
            while n < max {
                match ring.pop() {
                    Some(f) => {
                        on_frame(f.bytes(), f.hops);
                        n += 1;
                    }
                    None => break,
                }
            }
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_reach_only_their_target() {
        let m = mesh(3, 4).unwrap();
        assert!(m[0].send(2, b"to-two"));
        assert!(!m[0].send(0, b"self"), "no ring to itself");
        let mut got = vec![];
        assert_eq!(m[1].receive(8, |f, _| got.push(f.to_vec())), 0);
        assert_eq!(m[2].receive(8, |f, _| got.push(f.to_vec())), 1);
        assert_eq!(got, vec![b"to-two".to_vec()]);
    }

    #[test]
    fn a_stray_goes_round_every_other_worker_once() {
        let m = mesh(3, 4).unwrap();
        // Worker 1 misses it first; then 2, then 0, which answers it.
        assert!(m[1].send_stray(b"seg", 1));
        let mut hops = vec![];
        assert_eq!(m[2].receive(8, |_, h| hops.push(h)), 1);
        assert!(m[2].send_stray(b"seg", hops[0] + 1));
        assert_eq!(m[0].receive(8, |_, h| hops.push(h)), 1);
        assert_eq!(hops, vec![1, 2]);
        assert_eq!(m[0].next_for_stray(hops[1] + 1), None, "all have seen it");
        assert!(!m[0].send_stray(b"seg", 3));
        // A lone worker has nobody to ask.
        assert_eq!(mesh(1, 4).unwrap()[0].next_for_stray(1), None);
    }

    #[test]
    fn full_ring_refuses() {
        let m = mesh(2, 2).unwrap();
        assert!(m[0].send(1, b"a"));
        assert!(m[0].send(1, b"b"));
        assert!(!m[0].send(1, b"c"));
    }

    #[test]
    fn a_sender_wakes_only_a_sleeping_receiver_it_pushed_to() {
        let m = mesh(3, 4).unwrap();
        assert!(m[0].send(1, b"x"));
        assert_eq!(m[0].wake_receivers(), 0, "receiver 1 is awake");
        m[2].waker().going_to_sleep();
        assert!(m[0].send(1, b"y"));
        assert_eq!(m[0].wake_receivers(), 0, "2 sleeps but got nothing");
        assert!(m[1].send(2, b"z"));
        assert!(m[2].has_inbound());
        assert_eq!(m[1].wake_receivers(), 1);
        assert_eq!(m[1].wake_receivers(), 0, "a burst wakes once");
    }
}
