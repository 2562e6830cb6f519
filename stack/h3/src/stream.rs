//! Stream ids (RFC 9000 §2.1) and unidirectional stream types (RFC 9114
//! §6.2, RFC 9204 §4.2).

/// Whether `id` is a bidirectional stream a client opened: the only kind
/// that carries requests (RFC 9114 §6.1).
pub fn is_client_bidi(id: u64) -> bool {
    id & 0x3 == 0
}

/// Whether `id` is a unidirectional stream a client opened.
pub fn is_client_uni(id: u64) -> bool {
    id & 0x3 == 0x2
}

/// The type a unidirectional stream opens with (a varint).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UniStreamType {
    Control,
    /// Only servers push; from a client it is H3_STREAM_CREATION_ERROR.
    Push,
    QpackEncoder,
    QpackDecoder,
    /// Grease or an extension we do not speak: its data is discarded (§6.2).
    Unknown(u64),
}

impl From<u64> for UniStreamType {
    fn from(kind: u64) -> Self {
        match kind {
            0x00 => Self::Control,
            0x01 => Self::Push,
            0x02 => Self::QpackEncoder,
            0x03 => Self::QpackDecoder,
            other => Self::Unknown(other),
        }
    }
}

impl From<UniStreamType> for u64 {
    fn from(kind: UniStreamType) -> Self {
        match kind {
            UniStreamType::Control => 0x00,
            UniStreamType::Push => 0x01,
            UniStreamType::QpackEncoder => 0x02,
            UniStreamType::QpackDecoder => 0x03,
            UniStreamType::Unknown(other) => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_id_low_bits_give_initiator_and_direction() {
        assert!(is_client_bidi(0) && is_client_bidi(4) && !is_client_bidi(1));
        assert!(!is_client_bidi(2) && !is_client_bidi(3));
        assert!(is_client_uni(2) && is_client_uni(6) && !is_client_uni(3));
    }

    #[test]
    fn uni_stream_types_round_trip() {
        for kind in 0..0x40u64 {
            assert_eq!(u64::from(UniStreamType::from(kind)), kind);
        }
        assert_eq!(UniStreamType::from(0x21), UniStreamType::Unknown(0x21));
    }
}
