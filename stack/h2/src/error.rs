//! HTTP/2 error codes (RFC 9113 §7) and the codec's error: a code plus the
//! scope the connection layer must apply it to (§5.4).

/// An HTTP/2 error code, as carried by RST_STREAM and GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    NoError,
    ProtocolError,
    InternalError,
    FlowControlError,
    SettingsTimeout,
    StreamClosed,
    FrameSizeError,
    RefusedStream,
    Cancel,
    CompressionError,
    ConnectError,
    EnhanceYourCalm,
    InadequateSecurity,
    Http11Required,
    /// Unknown codes must not trigger special behaviour (§7); kept to log them.
    Unknown(u32),
}

impl ErrorCode {
    pub fn from_u32(code: u32) -> Self {
        match code {
            0x0 => Self::NoError,
            0x1 => Self::ProtocolError,
            0x2 => Self::InternalError,
            0x3 => Self::FlowControlError,
            0x4 => Self::SettingsTimeout,
            0x5 => Self::StreamClosed,
            0x6 => Self::FrameSizeError,
            0x7 => Self::RefusedStream,
            0x8 => Self::Cancel,
            0x9 => Self::CompressionError,
            0xa => Self::ConnectError,
            0xb => Self::EnhanceYourCalm,
            0xc => Self::InadequateSecurity,
            0xd => Self::Http11Required,
            other => Self::Unknown(other),
        }
    }

    pub fn to_u32(self) -> u32 {
        match self {
            Self::NoError => 0x0,
            Self::ProtocolError => 0x1,
            Self::InternalError => 0x2,
            Self::FlowControlError => 0x3,
            Self::SettingsTimeout => 0x4,
            Self::StreamClosed => 0x5,
            Self::FrameSizeError => 0x6,
            Self::RefusedStream => 0x7,
            Self::Cancel => 0x8,
            Self::CompressionError => 0x9,
            Self::ConnectError => 0xa,
            Self::EnhanceYourCalm => 0xb,
            Self::InadequateSecurity => 0xc,
            Self::Http11Required => 0xd,
            Self::Unknown(code) => code,
        }
    }
}

impl From<u32> for ErrorCode {
    fn from(code: u32) -> Self {
        Self::from_u32(code)
    }
}

impl From<ErrorCode> for u32 {
    fn from(code: ErrorCode) -> Self {
        code.to_u32()
    }
}

/// Whether an error ends the connection (GOAWAY) or one stream (RST_STREAM).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Connection,
    /// The stream to reset; the frame was consumed and the connection goes on.
    Stream(u32),
}

/// A received frame broke a rule of RFC 9113 that the codec can check alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/2 {code:?} ({scope:?}): {reason}")]
pub struct FrameError {
    pub code: ErrorCode,
    pub scope: Scope,
    /// Which rule was broken; for logs and GOAWAY debug data.
    pub reason: &'static str,
}

impl FrameError {
    pub(crate) const fn connection(code: ErrorCode, reason: &'static str) -> Self {
        Self {
            code,
            scope: Scope::Connection,
            reason,
        }
    }

    pub(crate) const fn stream(stream: u32, code: ErrorCode, reason: &'static str) -> Self {
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
    fn error_codes_round_trip_including_unknown() {
        for code in 0..=0xe_u32 {
            assert_eq!(ErrorCode::from_u32(code).to_u32(), code);
        }
        assert_eq!(ErrorCode::from_u32(0xe), ErrorCode::Unknown(0xe));
        assert_eq!(ErrorCode::from_u32(0xd), ErrorCode::Http11Required);
        assert_eq!(u32::from(ErrorCode::Unknown(0xdead_beef)), 0xdead_beef);
    }
}
