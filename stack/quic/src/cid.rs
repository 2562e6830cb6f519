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

/// The worker that issued `dcid`, read from a short-header packet's
/// destination connection id (or a Handshake packet's). None when it has
/// the wrong length, so it cannot be one of ours. A client's first DCID
/// (Initial, 0-RTT) is random: such packets stay where they land.
pub fn owner_of(dcid: &[u8]) -> Option<usize> {
    (dcid.len() == CID_LEN).then(|| usize::from(dcid[0]))
}

/// The worker that should handle `datagram`, from its first packet's
/// header: short header → its DCID's owner; long header → the DCID's owner
/// for Handshake packets, None for Initial, 0-RTT, Retry and version
/// negotiation (they belong to whoever receives them).
pub fn owner_of_datagram(datagram: &[u8]) -> Option<usize> {
    let first = *datagram.first()?;
    if first & 0x80 == 0 {
        return owner_of(datagram.get(1..1 + CID_LEN)?);
    }
    let version = datagram.get(1..5)?;
    // Handshake packets are type 2 in QUIC v1 (RFC 9000 §17.2).
    if version != [0, 0, 0, 1] || (first >> 4) & 0x3 != 2 {
        return None;
    }
    let len = usize::from(*datagram.get(5)?);
    owner_of(datagram.get(6..6 + len)?)
}

/// Issues this worker's connection ids.
pub struct WorkerCidGenerator {
    worker: u8,
    rng: &'static dyn SecureRandom,
}

impl WorkerCidGenerator {
    pub fn new(worker: u8) -> Self {
        Self {
            worker,
            rng: rustls::crypto::aws_lc_rs::default_provider().secure_random,
        }
    }
}

impl ConnectionIdGenerator for WorkerCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut id = [0u8; CID_LEN];
        id[0] = self.worker;
        // aws-lc's RNG does not fail once initialised; a zero tail is still a
        // valid (if guessable) id rather than a panic.
        let _ = self.rng.fill(&mut id[1..]);
        ConnectionId::new(&id)
    }

    /// A short-header packet for no known connection whose id is another
    /// worker's is dropped, not answered with a stateless reset: it belongs
    /// to a live connection elsewhere.
    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        if owner_of(cid) == Some(usize::from(self.worker)) {
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
        let mut g = WorkerCidGenerator::new(7);
        let a = g.generate_cid();
        let b = g.generate_cid();
        assert_eq!(a.len(), CID_LEN);
        assert_eq!(owner_of(&a), Some(7));
        assert_ne!(a, b, "random tail");
        assert!(g.validate(&a).is_ok());
        assert!(WorkerCidGenerator::new(6).validate(&a).is_err());
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
