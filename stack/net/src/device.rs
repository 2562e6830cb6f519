//! The stack's view of a NIC queue: two pre-allocated frame queues (rx filled
//! by the engine, tx drained by it) wrapped as a smoltcp `Device`. Frames are
//! copied once into fixed slots; nothing allocates after construction.

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// A fixed-capacity FIFO of frames stored in fixed-size slots.
pub struct FrameQueue {
    storage: Box<[u8]>,
    lens: Box<[u16]>,
    slot_size: usize,
    head: usize,
    len: usize,
}

impl FrameQueue {
    pub fn new(slots: usize, slot_size: usize) -> Self {
        assert!(slots > 0 && slot_size > 0 && slot_size <= u16::MAX as usize);
        Self {
            storage: vec![0u8; slots * slot_size].into_boxed_slice(),
            lens: vec![0u16; slots].into_boxed_slice(),
            slot_size,
            head: 0,
            len: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.lens.len()
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len == self.capacity()
    }

    pub fn slot_size(&self) -> usize {
        self.slot_size
    }

    /// Copies `frame` in; false when full or the frame does not fit a slot.
    pub fn push(&mut self, frame: &[u8]) -> bool {
        if frame.len() > self.slot_size {
            return false;
        }
        self.push_with(frame.len(), |buf| buf.copy_from_slice(frame))
            .is_some()
    }

    /// Reserves a slot of `len` bytes and lets `fill` write it.
    pub fn push_with<R>(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> R) -> Option<R> {
        if self.is_full() || len > self.slot_size {
            return None;
        }
        let idx = (self.head + self.len) % self.capacity();
        let start = idx * self.slot_size;
        let r = fill(&mut self.storage[start..start + len]);
        self.lens[idx] = len as u16;
        self.len += 1;
        Some(r)
    }

    /// Removes the oldest frame and returns its slot index; the slot stays
    /// intact until the next `push`.
    pub(crate) fn pop_index(&mut self) -> Option<usize> {
        if self.len == 0 {
            return None;
        }
        let idx = self.head;
        self.head = (self.head + 1) % self.capacity();
        self.len -= 1;
        Some(idx)
    }

    pub(crate) fn slot(&self, idx: usize) -> &[u8] {
        let start = idx * self.slot_size;
        &self.storage[start..start + self.lens[idx] as usize]
    }

    /// Removes the oldest frame, handing it to `f`.
    pub fn pop_with<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Option<R> {
        let idx = self.pop_index()?;
        Some(f(self.slot(idx)))
    }

    /// Offers the oldest frame to `take`; removes it only if `take` says it
    /// took it. None when empty.
    pub fn pop_if(&mut self, take: impl FnOnce(&[u8]) -> bool) -> Option<bool> {
        if self.is_empty() {
            return None;
        }
        let idx = self.head;
        let taken = take(self.slot(idx));
        if taken {
            self.pop_index();
        }
        Some(taken)
    }
}

/// Counters of the device layer.
#[derive(Debug, Default, Clone, Copy)]
pub struct DeviceStats {
    /// Frames smoltcp wanted to send while the tx queue was full.
    pub tx_queue_full: u64,
}

/// What smoltcp sees for one call: at most one received frame (the stack
/// demultiplexes frames itself and feeds them one at a time, each with the
/// sockets of its own connection) and the tx queue.
pub(crate) struct QueueDevice<'a> {
    pub rx: Option<&'a [u8]>,
    pub tx: &'a mut FrameQueue,
    pub scratch: &'a mut [u8],
    pub stats: &'a mut DeviceStats,
    pub checksum_rx: bool,
    /// The port fills IPv4/TCP/UDP checksums of sent frames.
    pub checksum_tx_offload: bool,
}

pub(crate) struct RxToken<'a> {
    frame: &'a [u8],
}

pub(crate) struct TxToken<'a> {
    tx: &'a mut FrameQueue,
    scratch: &'a mut [u8],
    stats: &'a mut DeviceStats,
}

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut f = Some(f);
        if let Some(r) = self
            .tx
            .push_with(len, |buf| (f.take().expect("fill once"))(buf))
        {
            return r;
        }
        // Full queue: smoltcp still needs a buffer to build into; the frame is
        // dropped and TCP recovers by retransmission.
        self.stats.tx_queue_full += 1;
        let len = len.min(self.scratch.len());
        (f.take().expect("fill once"))(&mut self.scratch[..len])
    }
}

impl phy::Device for QueueDevice<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _timestamp: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let frame = self.rx.take()?;
        Some((
            RxToken { frame },
            TxToken {
                tx: self.tx,
                scratch: self.scratch,
                stats: self.stats,
            },
        ))
    }

    fn transmit(&mut self, _timestamp: Instant) -> Option<TxToken<'_>> {
        Some(TxToken {
            tx: self.tx,
            scratch: self.scratch,
            stats: self.stats,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = self.tx.slot_size().min(1514);
        caps.max_burst_size = None;
        let mut csum = ChecksumCapabilities::default();
        // Emitted frames carry full checksums unless the port offloads
        // them (IPv4, TCP, UDP: what NICs offload; ICMP is always computed);
        // verification on receive is a config choice.
        let mode =
            |offloadable: bool| match (self.checksum_rx, offloadable && self.checksum_tx_offload) {
                (true, false) => Checksum::Both,
                (true, true) => Checksum::Rx,
                (false, false) => Checksum::Tx,
                (false, true) => Checksum::None,
            };
        csum.ipv4 = mode(true);
        csum.tcp = mode(true);
        csum.udp = mode(true);
        csum.icmpv4 = mode(false);
        csum.icmpv6 = mode(false);
        caps.checksum = csum;
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_is_fifo_and_bounded() {
        let mut q = FrameQueue::new(2, 16);
        assert!(q.push(b"one"));
        assert!(q.push(b"two"));
        assert!(!q.push(b"three"), "full queue refuses");
        assert_eq!(q.pop_with(|f| f.to_vec()).unwrap(), b"one");
        assert!(q.push(b"four"));
        assert_eq!(q.pop_with(|f| f.to_vec()).unwrap(), b"two");
        assert_eq!(q.pop_with(|f| f.to_vec()).unwrap(), b"four");
        assert!(q.pop_with(|_| ()).is_none());
    }

    #[test]
    fn a_refused_frame_stays_at_the_head_in_order() {
        let mut q = FrameQueue::new(4, 16);
        for f in [&b"a"[..], b"b", b"c"] {
            assert!(q.push(f));
        }
        let mut sent = Vec::new();
        // The sink takes one frame, then is full.
        let mut room = 1;
        while q.pop_if(|f| {
            if room == 0 {
                return false;
            }
            room -= 1;
            sent.push(f.to_vec());
            true
        }) == Some(true)
        {}
        assert_eq!(sent, [b"a".to_vec()]);
        assert_eq!(q.len(), 2);
        // Room again: the rest in order.
        while q.pop_if(|f| {
            sent.push(f.to_vec());
            true
        }) == Some(true)
        {}
        assert_eq!(sent, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(q.pop_if(|_| true), None);
    }

    #[test]
    fn oversized_frame_is_refused() {
        let mut q = FrameQueue::new(2, 4);
        assert!(!q.push(b"12345"));
        assert!(q.is_empty());
    }
}
