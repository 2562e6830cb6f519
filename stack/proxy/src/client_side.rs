//! The client side of a multiplexed stream ([`crate::mux_stream`]): what
//! an HTTP/2 connection (and next an HTTP/3 one) lets a stream do towards
//! its client, so the per-request machinery does not depend on which
//! protocol carries it.

use ferrogate_h2::{Connection, ErrorCode};

/// Why a stream is aborted (mapped to each protocol's code: HTTP/2 INTERNAL_ERROR / CANCEL, HTTP/3 H3_INTERNAL_ERROR / H3_REQUEST_CANCELLED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StreamAbort {
    /// The response broke on our side (the origin failed mid-body, a head
    /// that cannot be sent).
    Internal,
    /// The client stopped taking the response.
    Cancel,
}

/// The stream is gone (reset, or the connection failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamGone;

pub(crate) trait ClientSide {
    /// A stream's name on its connection.
    type Id: Copy + Eq + std::fmt::Debug;
    /// What the access log says the client spoke.
    const PROTOCOL: crate::access::Protocol;
    /// An interim (1xx) head; a protocol without them ignores it.
    fn send_interim(&mut self, id: Self::Id, status: u16);
    /// A response head. A 1xx `status` (with `end_stream` false) is an
    /// interim head with fields: the origin's 103 Early Hints go out so.
    fn send_head(
        &mut self,
        id: Self::Id,
        status: u16,
        fields: &[(&[u8], &[u8])],
        end_stream: bool,
    ) -> Result<(), StreamGone>;
    fn send_data(&mut self, id: Self::Id, data: &[u8], end_stream: bool) -> Result<(), StreamGone>;
    /// Ends the response with a trailer section.
    fn send_trailers(&mut self, id: Self::Id, fields: &[(&[u8], &[u8])]) -> Result<(), StreamGone>;
    /// Response octets the stream may send now (flow control, output room).
    fn send_capacity(&self, id: Self::Id) -> usize;
    /// Request body octets received and not yet consumed.
    fn request_body(&mut self, id: Self::Id) -> &[u8];
    fn consume_body(&mut self, id: Self::Id, n: usize);
    fn reset(&mut self, id: Self::Id, why: StreamAbort);
    fn count_request(stats: &mut crate::stats::StackStats);
    fn count_stalled_reset(stats: &mut crate::stats::StackStats);
}

/// HTTP/2: streams of one connection, named by their stream ID.
impl ClientSide for Connection {
    type Id = u32;
    const PROTOCOL: crate::access::Protocol = crate::access::Protocol::Http2;

    fn send_interim(&mut self, id: u32, status: u16) {
        // A stream already gone learns nothing from it: nothing to do.
        let _ = self.send_headers(id, status, &[], false);
    }

    fn send_head(
        &mut self,
        id: u32,
        status: u16,
        fields: &[(&[u8], &[u8])],
        end_stream: bool,
    ) -> Result<(), StreamGone> {
        self.send_headers(id, status, fields, end_stream)
            .map_err(|_| StreamGone)
    }

    fn send_data(&mut self, id: u32, data: &[u8], end_stream: bool) -> Result<(), StreamGone> {
        Connection::send_data(self, id, data, end_stream).map_err(|_| StreamGone)
    }

    fn send_trailers(&mut self, id: u32, fields: &[(&[u8], &[u8])]) -> Result<(), StreamGone> {
        Connection::send_trailers(self, id, fields).map_err(|_| StreamGone)
    }

    fn send_capacity(&self, id: u32) -> usize {
        Connection::send_capacity(self, id)
    }

    fn request_body(&mut self, id: u32) -> &[u8] {
        Connection::request_body(self, id)
    }

    fn consume_body(&mut self, id: u32, n: usize) {
        Connection::consume_body(self, id, n);
    }

    fn reset(&mut self, id: u32, why: StreamAbort) {
        let code = match why {
            StreamAbort::Internal => ErrorCode::InternalError,
            StreamAbort::Cancel => ErrorCode::Cancel,
        };
        self.reset_stream(id, code);
    }

    fn count_request(stats: &mut crate::stats::StackStats) {
        stats.h2.requests += 1;
    }

    fn count_stalled_reset(stats: &mut crate::stats::StackStats) {
        stats.h2.stalled_resets += 1;
    }
}
