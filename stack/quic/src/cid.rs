//! Connection ids that name the worker owning the connection, so a packet
//! that RSS put on another queue (NAT rebinding, migration) can be handed
//! to its owner without a shared table. Layout (QUIC-LB's plaintext
//! scheme, draft-ietf-quic-load-balancers): octet 0 is the worker index,
//! the rest is random. The index is visible on the wire; it only tells an
//! observer which of a few workers serves the connection.

use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use rustls::crypto::SecureRandom;

/// Length of every connection id this endpoint issues.
pub const CID_LEN: usize = 8;

/// Octet 0's top bit: the engine generation. A binary upgrade's successor
/// issues ids with the other value than its predecessor, so while both
/// run, a datagram of the predecessor's connections is told apart from
/// the successor's by its id alone (and relayed to the predecessor).
const GENERATION_BIT: u8 = 0x80;

/// Octet 0 of a connection id of ours; None for another length.
fn tag_of(dcid: &[u8]) -> Option<u8> {
    (dcid.len() == CID_LEN).then(|| dcid[0])
}

/// The worker that issued `dcid`, read from a short-header packet's
/// destination connection id (or a Handshake packet's). None when it has
/// the wrong length, so it cannot be one of ours. A client's first DCID
/// (Initial, 0-RTT) is random: such packets stay where they land.
pub fn owner_of(dcid: &[u8]) -> Option<usize> {
    tag_of(dcid).map(|t| usize::from(t & !GENERATION_BIT))
}

/// The generation (0 or 1) of the engine that issued `dcid`.
pub fn generation_of(dcid: &[u8]) -> Option<u8> {
    tag_of(dcid).map(|t| t >> 7)
}

/// The destination connection id of `datagram`'s first packet when it
/// names a connection of ours: short header → its DCID; long header → the
/// DCID of a Handshake packet; None for Initial, 0-RTT, Retry and version
/// negotiation (they belong to whoever receives them).
fn connection_dcid(datagram: &[u8]) -> Option<&[u8]> {
    let first = *datagram.first()?;
    if first & 0x80 == 0 {
        return datagram.get(1..1 + CID_LEN);
    }
    let version = datagram.get(1..5)?;
    // Handshake packets are type 2 in QUIC v1 (RFC 9000 §17.2).
    if version != [0, 0, 0, 1] || (first >> 4) & 0x3 != 2 {
        return None;
    }
    let len = usize::from(*datagram.get(5)?);
    datagram.get(6..6 + len)
}

/// The worker that should handle `datagram` (see [`connection_dcid`]).
pub fn owner_of_datagram(datagram: &[u8]) -> Option<usize> {
    owner_of(connection_dcid(datagram)?)
}

/// The generation of the engine whose connection `datagram` belongs to;
/// None for a datagram that opens a connection.
pub fn generation_of_datagram(datagram: &[u8]) -> Option<u8> {
    generation_of(connection_dcid(datagram)?)
}

/// Issues this worker's connection ids.
pub struct WorkerCidGenerator {
    /// Octet 0 of every id: the worker index and the generation bit.
    tag: u8,
    rng: &'static dyn SecureRandom,
}

impl WorkerCidGenerator {
    /// `worker` < 128; `generation` 0 or 1 (other bits ignored).
    pub fn new(worker: u8, generation: u8) -> Self {
        debug_assert!(worker & GENERATION_BIT == 0, "worker index {worker} >= 128");
        Self {
            tag: (worker & !GENERATION_BIT) | ((generation & 1) << 7),
            rng: rustls::crypto::aws_lc_rs::default_provider().secure_random,
        }
    }
}

impl ConnectionIdGenerator for WorkerCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut id = [0u8; CID_LEN];
        id[0] = self.tag;
        // aws-lc's RNG does not fail once initialised; a zero tail is still a
        // valid (if guessable) id rather than a panic.
        let _ = self.rng.fill(&mut id[1..]);
        ConnectionId::new(&id)
    }

    /// A short-header packet for no known connection whose id is another
    /// worker's (or another generation's) is dropped, not answered with a
    /// stateless reset: it belongs to a live connection elsewhere.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if tag_of(cid) == Some(self.tag) {
            Ok(())
        } else {
            Err(InvalidCid)
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_carry_the_worker_and_differ() {
        let mut g = WorkerCidGenerator::new(7, 0);
        let a = g.generate_cid();
        let b = g.generate_cid();
        assert_eq!(a.len(), CID_LEN);
        assert_eq!(owner_of(&a), Some(7));
        assert_ne!(a, b, "random tail");
        assert!(g.validate(&a).is_ok());
        assert!(WorkerCidGenerator::new(6, 0).validate(&a).is_err());
    }

    #[test]
    fn a_successors_ids_name_the_same_worker_and_the_other_generation() {
        let old = WorkerCidGenerator::new(5, 0).generate_cid();
        let new = WorkerCidGenerator::new(5, 1).generate_cid();
        assert_eq!((owner_of(&old), owner_of(&new)), (Some(5), Some(5)));
        assert_eq!(
            (generation_of(&old), generation_of(&new)),
            (Some(0), Some(1))
        );
        // Each generation's endpoint takes only its own ids.
        assert!(WorkerCidGenerator::new(5, 1).validate(&old).is_err());
        assert!(WorkerCidGenerator::new(5, 0).validate(&new).is_err());
        let mut short = vec![0x40];
        short.extend_from_slice(&new);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(generation_of_datagram(&short), Some(1));
        assert_eq!(owner_of_datagram(&short), Some(5));
        short[0] = 0xc0; // an Initial: nobody's yet
        assert_eq!(generation_of_datagram(&short), None);
    }

    #[test]
    fn datagram_owner_from_headers() {
        let mut short = vec![0x40];
        short.extend_from_slice(&[5, 1, 2, 3, 4, 5, 6, 7]);
        short.extend_from_slice(&[0; 20]);
        assert_eq!(owner_of_datagram(&short), Some(5));
        // Handshake (type 2), version 1, DCID of ours.
        let mut hs = vec![0xe0, 0, 0, 0, 1, 8, 9, 0, 0, 0, 0, 0, 0, 0, 0];
        hs.extend_from_slice(&[0; 20]);
        assert_eq!(owner_of_datagram(&hs), Some(9));
        // Initial (type 0): the client's random DCID says nothing.
        hs[0] = 0xc0;
        assert_eq!(owner_of_datagram(&hs), None);
        // Truncated or empty: no panic, no owner.
        assert_eq!(owner_of_datagram(&short[..4]), None);
        assert_eq!(owner_of_datagram(&[]), None);
        assert_eq!(owner_of_datagram(&[0xe0, 0, 0, 0, 1, 200]), None);
    }
}
