//! An in-memory port: frames pass between a worker and a userspace peer
//! through bounded queues of recycled buffers, with no kernel in the path.
//! It measures what the engine itself costs (the L7 ceiling bench) and lets
//! tests run the real engine without root, NICs or namespaces.
//!
//! Buffers are allocated once, when the port is made, and go round: the
//! peer fills a free buffer and queues it to the worker, the worker hands
//! it to its stack and returns it to the free list; the other direction
//! likewise. No allocation, lock or syscall per frame (crossbeam's
//! `ArrayQueue` is lock-free).

use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use crossbeam::queue::ArrayQueue;

use crate::io::{BackendKind, IoStats, PacketIo};

/// Largest frame a port carries (an Ethernet frame with a 1500-byte MTU).
pub const MAX_FRAME: usize = 1514;

struct Lane {
    full: ArrayQueue<Vec<u8>>,
    free: ArrayQueue<Vec<u8>>,
}

impl Lane {
    fn new(frames: usize) -> Self {
        let free = ArrayQueue::new(frames);
        for _ in 0..frames {
            let _ = free.push(Vec::with_capacity(MAX_FRAME));
        }
        Self {
            full: ArrayQueue::new(frames),
            free,
        }
    }

    /// Copies `frame` into a free buffer and queues it; false when no buffer
    /// is free (the receiver is behind) or the frame is too large.
    fn send(&self, frame: &[u8]) -> bool {
        if frame.len() > MAX_FRAME {
            return false;
        }
        let Some(mut b) = self.free.pop() else {
            return false;
        };
        b.clear();
        b.extend_from_slice(frame);
        // Cannot fail: there are as many slots as buffers.
        let _ = self.full.push(b);
        true
    }

    fn recv(&self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        let mut n = 0;
        while n < max {
            let Some(b) = self.full.pop() else {
                break;
            };
            f(&b);
            let _ = self.free.push(b);
            n += 1;
        }
        n
    }
}

struct Shared {
    /// Peer → worker.
    to_worker: Lane,
    /// Worker → peer.
    to_peer: Lane,
}

/// The worker's end of an in-memory port.
pub struct MemPort {
    shared: Arc<Shared>,
    stats: IoStats,
    checksum_offload: bool,
}

/// The peer's end of an in-memory port.
pub struct MemPeer {
    shared: Arc<Shared>,
}

/// A port with room for `frames` frames in flight each way.
pub fn mem_port(frames: usize) -> (MemPort, MemPeer) {
    let shared = Arc::new(Shared {
        to_worker: Lane::new(frames),
        to_peer: Lane::new(frames),
    });
    (
        MemPort {
            shared: shared.clone(),
            stats: IoStats::default(),
            checksum_offload: false,
        },
        MemPeer { shared },
    )
}

impl MemPort {
    /// Models a NIC with checksum offload: the worker's stack neither
    /// verifies nor computes IPv4/TCP/UDP checksums, so the peer must not
    /// either (frames on this port never carry them).
    pub fn with_checksum_offload(mut self, on: bool) -> Self {
        self.checksum_offload = on;
        self
    }
}

impl MemPeer {
    /// Queues a frame to the worker; false when the worker is behind.
    pub fn send(&self, frame: &[u8]) -> bool {
        self.shared.to_worker.send(frame)
    }

    /// Takes up to `max` frames the worker sent.
    pub fn recv(&self, max: usize, f: &mut dyn FnMut(&[u8])) -> usize {
        self.shared.to_peer.recv(max, f)
    }
}

impl PacketIo for MemPort {
    fn kind(&self) -> BackendKind {
        BackendKind::Memory
    }

    fn rx_burst(&mut self, max: usize, on_frame: &mut dyn FnMut(&[u8])) -> io::Result<usize> {
        let stats = &mut self.stats;
        let n = self.shared.to_worker.recv(max, &mut |f| {
            stats.rx_bytes += f.len() as u64;
            on_frame(f)
        });
        stats.rx_frames += n as u64;
        Ok(n)
    }

    fn tx_frame(&mut self, frame: &[u8]) -> bool {
        let sent = self.shared.to_peer.send(frame);
        self.stats.count_tx(sent, frame.len())
    }

    fn tx_flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn wait(&mut self, timeout: Duration, wake: RawFd) -> io::Result<bool> {
        // No fd for the peer's frames: nap briefly (or until a hand-off
        // wakes the worker) so an idle worker does not spin.
        crate::io_error::poll_readable(&[wake], timeout.min(Duration::from_micros(100)))
            .map(|ready| ready & 1 != 0)
    }

    fn stats(&self) -> IoStats {
        self.stats
    }

    fn checksum_offload(&self) -> bool {
        self.checksum_offload
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_cross_both_ways_and_a_full_lane_refuses_without_allocating() {
        let (mut port, peer) = mem_port(2);
        assert!(peer.send(b"one") && peer.send(b"two"));
        assert!(!peer.send(b"three"), "two buffers, both in flight");
        let mut got = Vec::new();
        assert_eq!(port.rx_burst(8, &mut |f| got.push(f.to_vec())).unwrap(), 2);
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec()]);
        assert!(peer.send(b"three"), "buffers came back");
        assert!(port.tx_frame(b"a") && port.tx_frame(b"b") && !port.tx_frame(b"c"));
        assert_eq!(port.stats().tx_ring_full, 1);
        let mut back = 0;
        peer.recv(8, &mut |_| back += 1);
        assert_eq!(back, 2);
        assert!(!peer.send(&[0; MAX_FRAME + 1]));
    }
}
