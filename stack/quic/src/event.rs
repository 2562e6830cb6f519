//! What the endpoint reports to the worker, per connection and stream.

use ferrogate_h3::{ErrorCode, Field, Request};
use quinn_proto::ConnectionHandle;

/// One connection of the endpoint: quinn's handle, a slab index reused
/// once the connection is gone, and a serial number that is never reused,
/// so an id kept past its connection is refused rather than reaching the
/// next connection in that slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub handle: ConnectionHandle,
    pub serial: u64,
}

/// One request stream of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StreamHandle {
    pub conn: ConnId,
    pub stream: u64,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// QUIC ended it: the peer closed, idle timeout, a transport error.
    Quic(quinn_proto::ConnectionError),
    /// We closed it for an HTTP/3 connection error (RFC 9114 §8).
    H3 {
        code: ErrorCode,
        reason: &'static str,
    },
    /// The application closed it.
    Local(ErrorCode),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake completed.
    Connected(ConnId),
    /// A request head, once per stream, before its other events.
    /// `end_stream`: the request ended with it (its FIN came in the same
    /// read), so no body or `RequestEnd` follows — a proxy knows at once
    /// that a GET has no body, as HTTP/2's END_STREAM on HEADERS says.
    RequestHead {
        stream: StreamHandle,
        request: Request,
        end_stream: bool,
    },
    /// Body octets wait in `QuicEndpoint::request_body`.
    RequestData(StreamHandle),
    RequestTrailers {
        stream: StreamHandle,
        fields: Vec<Field>,
    },
    /// The request is complete.
    RequestEnd(StreamHandle),
    /// The stream is gone: the peer reset it or stopped our response, or
    /// it broke an HTTP/3 rule and we reset it with `code`.
    StreamAborted {
        stream: StreamHandle,
        code: ErrorCode,
    },
    /// The connection ended; no further events for it.
    ConnectionLost { conn: ConnId, reason: CloseReason },
}
