//! The 9-octet frame header (RFC 9113 §4.1), frame types and flags.

/// Octets in a frame header.
pub const HEADER_LEN: usize = 9;
/// The largest length the 24-bit field can carry (and SETTINGS_MAX_FRAME_SIZE's cap).
pub const MAX_LENGTH: u32 = (1 << 24) - 1;
/// Stream ids and window increments are 31 bits; the top bit is reserved.
pub const STREAM_ID_MASK: u32 = 0x7fff_ffff;

/// Frame flags (RFC 9113 §6). Each is meaningful only on some frame types;
/// the rest must be ignored on receipt, so the parser reads only those.
pub mod flags {
    pub const END_STREAM: u8 = 0x01;
    /// SETTINGS and PING use bit 0 as ACK.
    pub const ACK: u8 = 0x01;
    pub const END_HEADERS: u8 = 0x04;
    pub const PADDED: u8 = 0x08;
    pub const PRIORITY: u8 = 0x20;
}

/// A frame type (RFC 9113 §6); unknown types are kept so they can be skipped (§5.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameType {
    Data,
    Headers,
    Priority,
    RstStream,
    Settings,
    PushPromise,
    Ping,
    GoAway,
    WindowUpdate,
    Continuation,
    Unknown(u8),
}

impl From<u8> for FrameType {
    fn from(kind: u8) -> Self {
        match kind {
            0x0 => Self::Data,
            0x1 => Self::Headers,
            0x2 => Self::Priority,
            0x3 => Self::RstStream,
            0x4 => Self::Settings,
            0x5 => Self::PushPromise,
            0x6 => Self::Ping,
            0x7 => Self::GoAway,
            0x8 => Self::WindowUpdate,
            0x9 => Self::Continuation,
            other => Self::Unknown(other),
        }
    }
}

impl From<FrameType> for u8 {
    fn from(kind: FrameType) -> Self {
        match kind {
            FrameType::Data => 0x0,
            FrameType::Headers => 0x1,
            FrameType::Priority => 0x2,
            FrameType::RstStream => 0x3,
            FrameType::Settings => 0x4,
            FrameType::PushPromise => 0x5,
            FrameType::Ping => 0x6,
            FrameType::GoAway => 0x7,
            FrameType::WindowUpdate => 0x8,
            FrameType::Continuation => 0x9,
            FrameType::Unknown(other) => other,
        }
    }
}

/// A parsed frame header. `stream` has the reserved bit cleared, as §4.1
/// says it must be ignored on receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameHeader {
    pub length: u32,
    pub kind: FrameType,
    pub flags: u8,
    pub stream: u32,
}

impl FrameHeader {
    /// Reads a header from the front of `buf`; `None` until 9 octets are there.
    pub fn parse(buf: &[u8]) -> Option<Self> {
        let h: &[u8; HEADER_LEN] = buf.get(..HEADER_LEN)?.try_into().ok()?;
        Some(Self {
            length: u32::from_be_bytes([0, h[0], h[1], h[2]]),
            kind: FrameType::from(h[3]),
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & STREAM_ID_MASK,
        })
    }

    /// Writes the header; the reserved bit is sent as 0 (§4.1).
    pub fn emit(&self, buf: &mut [u8; HEADER_LEN]) {
        debug_assert!(self.length <= MAX_LENGTH, "frame length over 24 bits");
        let len = self.length.to_be_bytes();
        buf[..3].copy_from_slice(&len[1..]);
        buf[3] = self.kind.into();
        buf[4] = self.flags;
        buf[5..].copy_from_slice(&(self.stream & STREAM_ID_MASK).to_be_bytes());
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_needs_nine_octets() {
        let bytes = [0, 0, 8, 6, 1, 0, 0, 0, 0];
        for n in 0..HEADER_LEN {
            assert_eq!(FrameHeader::parse(&bytes[..n]), None);
        }
        let h = FrameHeader::parse(&bytes).unwrap();
        assert_eq!(h.length, 8);
        assert_eq!(h.kind, FrameType::Ping);
        assert!(h.has(flags::ACK));
        assert_eq!(h.stream, 0);
    }

    #[test]
    fn header_reserved_bit_is_ignored_on_receipt() {
        let h = FrameHeader::parse(&[0, 0, 0, 0, 0, 0x80, 0, 0, 3]).unwrap();
        assert_eq!(h.stream, 3);
    }

    #[test]
    fn header_round_trips() {
        let h = FrameHeader {
            length: MAX_LENGTH,
            kind: FrameType::Unknown(0xfa),
            flags: 0xff,
            stream: STREAM_ID_MASK,
        };
        let mut buf = [0; HEADER_LEN];
        h.emit(&mut buf);
        assert_eq!(buf, [0xff, 0xff, 0xff, 0xfa, 0xff, 0x7f, 0xff, 0xff, 0xff]);
        assert_eq!(FrameHeader::parse(&buf), Some(h));
    }

    #[test]
    fn frame_types_round_trip() {
        for kind in 0..=u8::MAX {
            assert_eq!(u8::from(FrameType::from(kind)), kind);
        }
        assert_eq!(FrameType::from(0xa), FrameType::Unknown(0xa));
    }
}
