//! HTTP/3 error codes (RFC 9114 §8.1) and QPACK's (RFC 9204 §6), and the
//! layer's error: a code plus the scope the QUIC layer applies it to.

/// An application error code, as carried by CONNECTION_CLOSE,
/// RESET_STREAM and STOP_SENDING.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    NoError,
    GeneralProtocolError,
    InternalError,
    StreamCreationError,
    ClosedCriticalStream,
    FrameUnexpected,
    FrameError,
    ExcessiveLoad,
    IdError,
    SettingsError,
    MissingSettings,
    RequestRejected,
    RequestCancelled,
    RequestIncomplete,
    MessageError,
    ConnectError,
    VersionFallback,
    QpackDecompressionFailed,
    QpackEncoderStreamError,
    QpackDecoderStreamError,
    /// Unknown codes (grease among them) carry no meaning (§9); kept to log.
    Unknown(u64),
}

const CODES: [(ErrorCode, u64); 20] = [
    (ErrorCode::NoError, 0x100),
    (ErrorCode::GeneralProtocolError, 0x101),
    (ErrorCode::InternalError, 0x102),
    (ErrorCode::StreamCreationError, 0x103),
    (ErrorCode::ClosedCriticalStream, 0x104),
    (ErrorCode::FrameUnexpected, 0x105),
    (ErrorCode::FrameError, 0x106),
    (ErrorCode::ExcessiveLoad, 0x107),
    (ErrorCode::IdError, 0x108),
    (ErrorCode::SettingsError, 0x109),
    (ErrorCode::MissingSettings, 0x10a),
    (ErrorCode::RequestRejected, 0x10b),
    (ErrorCode::RequestCancelled, 0x10c),
    (ErrorCode::RequestIncomplete, 0x10d),
    (ErrorCode::MessageError, 0x10e),
    (ErrorCode::ConnectError, 0x10f),
    (ErrorCode::VersionFallback, 0x110),
    (ErrorCode::QpackDecompressionFailed, 0x200),
    (ErrorCode::QpackEncoderStreamError, 0x201),
    (ErrorCode::QpackDecoderStreamError, 0x202),
];

impl ErrorCode {
    pub fn from_u64(code: u64) -> Self {
        CODES
            .iter()
            .find(|(_, v)| *v == code)
            .map_or(Self::Unknown(code), |(c, _)| *c)
    }

    pub fn to_u64(self) -> u64 {
        match self {
            Self::Unknown(code) => code,
            known => CODES
                .iter()
                .find(|(c, _)| *c == known)
                .map(|(_, v)| *v)
                .expect("every known code is in CODES"),
        }
    }
}

/// Whether an error closes the connection or one request stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Connection,
    /// The stream to reset (RESET_STREAM and STOP_SENDING with the code).
    Stream(u64),
}

/// A rule of RFC 9114 or RFC 9204 the peer broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/3 {code:?} ({scope:?}): {reason}")]
pub struct H3Error {
    pub code: ErrorCode,
    pub scope: Scope,
    /// Which rule was broken; for logs and the CONNECTION_CLOSE reason.
    pub reason: &'static str,
}

impl H3Error {
    pub(crate) const fn connection(code: ErrorCode, reason: &'static str) -> Self {
        Self {
            code,
            scope: Scope::Connection,
            reason,
        }
    }

    pub(crate) const fn stream(stream: u64, code: ErrorCode, reason: &'static str) -> Self {
        Self {
            code,
            scope: Scope::Stream(stream),
            reason,
        }
    }

    pub fn is_connection_error(&self) -> bool {
        self.scope == Scope::Connection
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_carry_their_rfc_values_and_unknown_round_trips() {
        assert_eq!(ErrorCode::NoError.to_u64(), 0x100);
        assert_eq!(ErrorCode::MessageError.to_u64(), 0x10e);
        assert_eq!(ErrorCode::VersionFallback.to_u64(), 0x110);
        assert_eq!(ErrorCode::QpackDecompressionFailed.to_u64(), 0x200);
        assert_eq!(ErrorCode::QpackDecoderStreamError.to_u64(), 0x202);
        for code in (0x100..=0x110).chain(0x200..=0x202) {
            let c = ErrorCode::from_u64(code);
            assert!(!matches!(c, ErrorCode::Unknown(_)), "{code:#x}");
            assert_eq!(c.to_u64(), code);
        }
        // A grease code (0x1f * N + 0x21) means nothing.
        assert_eq!(ErrorCode::from_u64(0x21), ErrorCode::Unknown(0x21));
        assert_eq!(ErrorCode::Unknown(0x21).to_u64(), 0x21);
    }
}
