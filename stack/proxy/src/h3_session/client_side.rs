//! A worker's QUIC endpoint as the client side of HTTP/3 request streams.

use ferrogate_h3::ErrorCode;
use ferrogate_quic::{QuicEndpoint, StreamHandle};

use crate::client_side::{ClientSide, StreamAbort, StreamGone};
use crate::stats::StackStats;

/// Response octets a stream may have queued in HTTP/3 and not yet taken
/// by QUIC: a stream stops reading its upstream beyond it, so a slow
/// client holds the origin back instead of filling the worker's memory.
const SEND_WINDOW: usize = 64 * 1024;

impl ClientSide for QuicEndpoint {
    type Id = StreamHandle;
    const PROTOCOL: crate::access::Protocol = crate::access::Protocol::Http3;

    fn send_interim(&mut self, id: StreamHandle, status: u16) {
        let _ = self.send_response_head(id, status, &[]);
    }

    fn send_head(
        &mut self,
        id: StreamHandle,
        status: u16,
        fields: &[(&[u8], &[u8])],
        end_stream: bool,
    ) -> Result<(), StreamGone> {
        // A 1xx (103 Early Hints) is an interim head: the final one
        // follows on the same stream (RFC 9114 §4.1).
        self.send_response_head(id, status, fields)
            .map_err(|_| StreamGone)?;
        if end_stream {
            self.finish(id).map_err(|_| StreamGone)?;
        }
        Ok(())
    }

    fn send_data(
        &mut self,
        id: StreamHandle,
        data: &[u8],
        end_stream: bool,
    ) -> Result<(), StreamGone> {
        if !data.is_empty() {
            QuicEndpoint::send_data(self, id, data).map_err(|_| StreamGone)?;
        }
        if end_stream {
            self.finish(id).map_err(|_| StreamGone)?;
        }
        Ok(())
    }

    fn send_trailers(
        &mut self,
        id: StreamHandle,
        fields: &[(&[u8], &[u8])],
    ) -> Result<(), StreamGone> {
        // Trailers end the stream (the endpoint finishes it).
        QuicEndpoint::send_trailers(self, id, fields).map_err(|_| StreamGone)
    }

    fn send_capacity(&self, id: StreamHandle) -> usize {
        self.queued_output(id)
            .map_or(0, |q| SEND_WINDOW.saturating_sub(q))
    }

    fn request_body(&mut self, id: StreamHandle) -> &[u8] {
        match QuicEndpoint::request_body(self, id) {
            Some(b) => &b[..],
            None => &[],
        }
    }

    fn consume_body(&mut self, id: StreamHandle, n: usize) {
        if let Some(b) = QuicEndpoint::request_body(self, id) {
            let n = n.min(b.len());
            b.drain(..n);
        }
    }

    fn reset(&mut self, id: StreamHandle, why: StreamAbort) {
        let code = match why {
            StreamAbort::Internal => ErrorCode::InternalError,
            StreamAbort::Cancel => ErrorCode::RequestCancelled,
        };
        let _ = self.reset_stream(id, code);
    }

    fn count_request(stats: &mut StackStats) {
        stats.h3.requests += 1;
    }

    fn count_stalled_reset(stats: &mut StackStats) {
        stats.h3.stalled_resets += 1;
    }
}
