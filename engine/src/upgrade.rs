//! A binary upgrade between two engine processes on one NIC. The
//! predecessor lets go of its NIC queues (its workers swap their AF_XDP
//! sockets for relay ports, [`crate::relay`]) and drains; the successor
//! binds the queues, takes over the pinned XDP link with its counters, and
//! relays every frame that is not one of its own flows to the predecessor
//! until that one is done. Upstream ports are split by parity meanwhile, so
//! the two never use one 4-tuple.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ferrogate_ebpf::CounterTotals;

use crate::io::PacketIo;
use crate::relay::RelayShm;

/// What a predecessor reports once it let go of the NIC.
#[derive(Debug, Clone, Default)]
pub struct HandedOver {
    /// Per worker: the upstream ports it still holds.
    pub held_ports: Vec<Vec<u16>>,
    /// The XDP program's counters when it let go.
    pub xdp_counters: Option<CounterTotals>,
    /// The predecessor's QUIC generation: the successor issues connection
    /// ids with the other one.
    pub quic_generation: u8,
}

/// What a successor starts from.
pub struct Predecessor {
    pub relay: Arc<RelayShm>,
    pub handed_over: HandedOver,
}

/// One worker's mailbox for the hand-over: the engine offers a relay port,
/// the worker swaps it in between two bursts (closing its socket there)
/// and answers with the ports it holds. A lock here is taken once per
/// upgrade, never per frame: the worker only looks at `pending`.
#[derive(Default)]
pub(crate) struct HandoverSlot {
    pending: AtomicBool,
    port: Mutex<Option<Box<dyn PacketIo>>>,
    held: Mutex<Option<Vec<u16>>>,
}

impl HandoverSlot {
    pub(crate) fn offer(&self, port: Box<dyn PacketIo>) {
        *self.port.lock().expect("handover lock") = Some(port);
        self.pending.store(true, Ordering::Release);
    }

    pub(crate) fn pending(&self) -> bool {
        self.pending.load(Ordering::Relaxed)
    }

    pub(crate) fn take(&self) -> Option<Box<dyn PacketIo>> {
        self.port.lock().expect("handover lock").take()
    }

    pub(crate) fn done(&self, held: Vec<u16>) {
        *self.held.lock().expect("handover lock") = Some(held);
        self.pending.store(false, Ordering::Release);
    }

    /// The ports the worker held when it swapped, once it did.
    pub(crate) fn held(&self) -> Option<Vec<u16>> {
        if self.pending.load(Ordering::Acquire) {
            return None;
        }
        self.held.lock().expect("handover lock").clone()
    }
}
