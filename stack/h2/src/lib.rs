//! ferrogate's HTTP/2 frame codec (RFC 9113 §3.4, §4-7), sans-IO: the client
//! preface, frame headers, borrowed views of every frame type with the checks
//! a frame allows alone (each mapped to its error code and scope), and the
//! frames a server emits. No allocation in parsing. HPACK (RFC 7541, through
//! `loona-hpack`) with the server's limits, and the request and trailer rules
//! of RFC 9113 §8. [`Connection`] is the server side of one connection on
//! top: stream states, CONTINUATION sequencing, flow control, SETTINGS ACK
//! timing and the flood limits.

pub mod conn;
mod conn_stats;
pub mod emit;
pub mod error;
pub mod fields;
pub mod frame;
pub mod header;
pub mod hpack;
#[cfg(test)]
mod hpack_tests;
pub mod request;
#[cfg(test)]
mod request_tests;
pub mod settings;
#[cfg(test)]
mod tests;

pub use conn::{ConnStats, Connection, Event, SendError, ServerConfig};
pub use error::{ErrorCode, FrameError, Scope};
pub use fields::{Field, join_cookies};
pub use frame::{Frame, PrioritySpec, decode, frame_len, parse};
pub use header::{FrameHeader, FrameType, HEADER_LEN, flags};
pub use hpack::{HeaderDecoder, HeaderError, ResponseEncoder};
pub use request::{Request, validate_request, validate_trailers};
pub use settings::{Setting, SettingId, SettingsIter};

/// What a client sends first on a connection (§3.4), before its SETTINGS.
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Checks the client preface at the front of `buf`: `Ok(None)` while what is
/// there matches but is short, `Ok(Some(24))` once complete. A mismatch is a
/// connection PROTOCOL_ERROR (§3.4); checking prefixes rejects an HTTP/1
/// request on the first octet rather than after 24.
pub fn check_preface(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let n = buf.len().min(PREFACE.len());
    if buf[..n] != PREFACE[..n] {
        return Err(FrameError {
            code: ErrorCode::ProtocolError,
            scope: Scope::Connection,
            reason: "invalid client connection preface",
        });
    }
    Ok((n == PREFACE.len()).then_some(n))
}
