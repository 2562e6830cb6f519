//! Worker-to-worker frame hand-off. A frame that arrives on a queue whose
//! worker does not own its flow (an upstream reply RSS-hashed elsewhere) is
//! copied into the owner's inbound ring. One bounded lock-free ring per
//! (sender, receiver) pair, so each ring has a single producer and consumer.

use std::sync::Arc;

use crossbeam::queue::ArrayQueue;

/// Largest frame a hand-off slot carries (a full Ethernet frame fits).
pub const HANDOFF_FRAME: usize = 2048;

pub struct HandoffFrame {
    len: u16,
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
}

/// Builds the full mesh for `workers` workers with `depth` slots per ring.
pub fn mesh(workers: usize, depth: usize) -> Vec<HandoffPorts> {
    let rings: Vec<Vec<Option<Ring>>> = (0..workers)
        .map(|src| {
            (0..workers)
                .map(|dst| (src != dst).then(|| Arc::new(ArrayQueue::new(depth))))
                .collect()
        })
        .collect();
    (0..workers)
        .map(|me| HandoffPorts {
            me,
            outbound: rings[me].clone(),
            inbound: (0..workers)
                .filter_map(|src| rings[src][me].clone())
                .collect(),
        })
        .collect()
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
        let Some(ring) = self.outbound.get(to).and_then(|r| r.as_ref()) else {
            return false;
        };
        let Some(mut f) = HandoffFrame::copy_of(frame) else {
            return false;
        };
        edit(f.bytes_mut());
        ring.push(f).is_ok()
    }

    /// Hands up to `max` inbound frames to `on_frame`; returns how many.
    pub fn receive(&self, max: usize, mut on_frame: impl FnMut(&[u8])) -> usize {
        let mut n = 0;
        for ring in &self.inbound {
            while n < max {
                match ring.pop() {
                    Some(f) => {
                        on_frame(f.bytes());
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
        let m = mesh(3, 4);
        assert!(m[0].send(2, b"to-two"));
        assert!(!m[0].send(0, b"self"), "no ring to itself");
        let mut got = vec![];
        assert_eq!(m[1].receive(8, |f| got.push(f.to_vec())), 0);
        assert_eq!(m[2].receive(8, |f| got.push(f.to_vec())), 1);
        assert_eq!(got, vec![b"to-two".to_vec()]);
    }

    #[test]
    fn full_ring_refuses() {
        let m = mesh(2, 2);
        assert!(m[0].send(1, b"a"));
        assert!(m[0].send(1, b"b"));
        assert!(!m[0].send(1, b"c"));
    }
}
