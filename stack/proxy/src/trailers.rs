//! HTTP trailers on their way through the proxy (#22): an HTTP/1.1
//! origin's chunked trailer section, kept by the decoder (bounded), goes to
//! an HTTP/2 client as trailing HEADERS and to an HTTP/1.1 client in the
//! chunked end the proxy writes when it re-frames a body. Without either
//! (an HTTP/1.1 client on the plain path) the origin's chunked bytes pass
//! through unchanged, trailers and all, and nothing is kept.

use crate::http::{ChunkedDecoder, TrailerField, chunked::forbidden_trailer};
use crate::stats::StackStats;

/// The decoder's trailer fields as they may go on: framing and hop-by-hop
/// fields out, names lower-cased (HTTP/2 requires it; HTTP/1 does not
/// care). An over-bound section is counted.
pub(crate) fn take(dec: &mut ChunkedDecoder, stats: &mut StackStats) -> Vec<TrailerField> {
    if dec.trailers_over_limit() {
        stats.trailers_dropped += 1;
    }
    let mut fields = dec.take_trailers();
    clean(&mut fields);
    fields
}

/// Drops the fields that never travel as trailers, lower-cases names.
pub(crate) fn clean(fields: &mut Vec<TrailerField>) {
    fields.retain(|(n, _)| !forbidden_trailer(n));
    for (n, _) in fields.iter_mut() {
        n.make_ascii_lowercase();
    }
}

/// The last chunk and the trailer section of a chunked body.
pub(crate) fn write_chunked_end(fields: &[TrailerField], out: &mut Vec<u8>) {
    out.extend_from_slice(b"0\r\n");
    for (n, v) in fields {
        out.extend_from_slice(n);
        out.extend_from_slice(b": ");
        out.extend_from_slice(v);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Ends an HTTP/2 response with `fields` as its trailing HEADERS.
pub(crate) fn send_h2(
    h2: &mut ferrogate_h2::Connection,
    id: u32,
    fields: &[TrailerField],
) -> Result<(), ferrogate_h2::SendError> {
    let list: Vec<(&[u8], &[u8])> = fields.iter().map(|(n, v)| (&n[..], &v[..])).collect();
    h2.send_trailers(id, &list)
}
