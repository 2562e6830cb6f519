//! The packet-I/O boundary: one trait, one implementation per backend
//! (AF_XDP, AF_PACKET, DPDK, and an in-memory port for benches and tests). A backend owns exactly one NIC queue and is
//! driven by exactly one worker thread, so nothing here is shared or locked.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Which packet source a worker uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    AfXdp,
    AfPacket,
    Dpdk,
    /// In-memory port ([`crate::memio`]): no NIC, no kernel.
    Memory,
    /// A binary upgrade's predecessor: frames through its successor
    /// ([`crate::relay`]).
    Relay,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::AfXdp => "af_xdp",
            BackendKind::AfPacket => "af_packet",
            BackendKind::Dpdk => "dpdk",
            BackendKind::Memory => "memory",
            BackendKind::Relay => "relay",
        })
    }
}

/// Per-queue counters kept by a backend (owned by its worker; read by summing).
#[derive(Debug, Default, Clone, Copy)]
pub struct IoStats {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Times a frame found the tx ring full: it stays queued in the stack
    /// for the next flush (the close path and raw senders drop it).
    pub tx_ring_full: u64,
    /// Frames the kernel reported dropped before we saw them (ring overrun).
    pub rx_dropped: u64,
    /// Syscalls made to kick tx or wake rx (batched, never one per frame).
    pub kicks: u64,
}

impl IoStats {
    /// Counts a frame offered to a tx ring: sent, or refused by a full ring
    /// (the caller keeps it for the next try). Returns `sent`.
    pub fn count_tx(&mut self, sent: bool, len: usize) -> bool {
        if sent {
            self.tx_frames += 1;
            self.tx_bytes += len as u64;
        } else {
            self.tx_ring_full += 1;
        }
        sent
    }
}

/// One NIC queue's frame source and sink.
///
/// The per-frame methods must not allocate, lock or make a syscall; syscalls
/// are allowed once per burst (`rx_burst`, `tx_flush`, `wait`).
pub trait PacketIo: Send {
    fn kind(&self) -> BackendKind;

    /// Calls `on_frame` for up to `max` received frames (whole Ethernet frames)
    /// and returns how many it delivered. The slice is only valid during the
    /// call; the frame's buffer goes back to the NIC afterwards.
    fn rx_burst(&mut self, max: usize, on_frame: &mut dyn FnMut(&[u8])) -> io::Result<usize>;

    /// Queues one frame for transmission. Returns false (and counts it) when the
    /// tx ring is full: the caller keeps the frame and offers it again after
    /// `tx_flush`. A frame that can never be sent (larger than a buffer) is
    /// counted and dropped, and true returned, so it cannot block the frames
    /// behind it.
    fn tx_frame(&mut self, frame: &[u8]) -> bool;

    /// Makes queued frames visible to the NIC (one kick per burst at most) and
    /// reclaims completed tx buffers.
    fn tx_flush(&mut self) -> io::Result<()>;

    /// Sleeps until a frame may be available, `wake` (the worker's hand-off
    /// eventfd) is readable, or `timeout` passes; true when `wake` is
    /// readable (the caller then consumes it). Used by the adaptive and
    /// interrupt polling modes when a worker is idle.
    fn wait(&mut self, timeout: Duration, wake: RawFd) -> io::Result<bool>;

    fn stats(&self) -> IoStats;

    /// The port checks received checksums and fills those of sent frames
    /// (IPv4, TCP, UDP) itself, so the stack does neither.
    fn checksum_offload(&self) -> bool {
        false
    }
}
