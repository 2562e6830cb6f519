//! HTTP trailers on their way through the proxy (#22): an HTTP/1.1
//! origin's chunked trailer section, kept by the decoder (bounded), goes to
//! an HTTP/2 client as trailing HEADERS and to an HTTP/1.1 client in the
//! chunked end the proxy writes when it re-frames a body. Without either
//! (an HTTP/1.1 client on the plain path) the origin's chunked bytes pass
//! through unchanged, trailers and all, and nothing is kept.

use crate::client_side::{ClientSide, StreamGone};
use crate::http::chunked::{
    MAX_TRAILER_BYTES, MAX_TRAILER_FIELDS, forbidden_trailer, valid_trailer,
};
use crate::http::{ChunkedDecoder, TrailerField};
use crate::stats::StackStats;

/// The decoder's trailer fields as they may go on: framing and hop-by-hop
/// fields out, names lower-cased (HTTP/2 requires it; HTTP/1 does not
/// care). An over-bound section is counted.
pub(crate) fn take(dec: &mut ChunkedDecoder, stats: &mut StackStats) -> Vec<TrailerField> {
    if dec.trailers_over_limit() {
        stats.trailers_dropped += 1;
    }
    let mut fields = dec.take_trailers();
    clean(&mut fields, stats);
    fields
}

/// Drops the fields that never travel as trailers and those that cannot
/// be written as they are (a plugin's CR or LF would end the chunked
/// body early: request smuggling), lower-cases names; a section past
/// [`MAX_TRAILER_FIELDS`] or [`MAX_TRAILER_BYTES`] (a plugin may hand back
/// more than a peer may send) goes whole. Returns how many fields went;
/// a dropped section is counted in `trailers_dropped`.
pub(crate) fn clean(fields: &mut Vec<TrailerField>, stats: &mut StackStats) -> usize {
    let before = fields.len();
    fields.retain(|(n, v)| !forbidden_trailer(n) && valid_trailer(n, v));
    for (n, _) in fields.iter_mut() {
        n.make_ascii_lowercase();
    }
    let bytes: usize = fields.iter().map(|(n, v)| n.len() + v.len() + 4).sum();
    if fields.len() > MAX_TRAILER_FIELDS || bytes > MAX_TRAILER_BYTES {
        fields.clear();
        stats.trailers_dropped += 1;
    }
    before - fields.len()
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

/// Ends an HTTP/2 or HTTP/3 response with `fields` as its trailer section.
pub(crate) fn send<C: ClientSide>(
    client: &mut C,
    id: C::Id,
    fields: &[TrailerField],
) -> Result<(), StreamGone> {
    let list: Vec<(&[u8], &[u8])> = fields.iter().map(|(n, v)| (&n[..], &v[..])).collect();
    client.send_trailers(id, &list)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(n: &str, v: &str) -> TrailerField {
        (n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn fields_that_cannot_be_written_as_they_are_are_dropped() {
        let mut stats = StackStats::default();
        let mut t = vec![
            f("X-Sum", "abc"),
            f("x-smuggle", "a\r\n\r\nGET /admin HTTP/1.1"),
            f("x\r\ntransfer-encoding", "chunked"),
            f("x-nul", "a\0b"),
            f("x-ctl", "a\x01b"),
            f("x-space", " padded"),
            f("bad name", "v"),
            f("Content-Type", "text/html"),
            f("x-tab", "a\tb"),
        ];
        assert_eq!(clean(&mut t, &mut stats), 7);
        assert_eq!(t, [f("x-sum", "abc"), f("x-tab", "a\tb")]);
        assert_eq!(stats.trailers_dropped, 0);
    }

    #[test]
    fn a_section_past_its_bounds_goes_whole_and_is_counted() {
        let mut stats = StackStats::default();
        let mut t: Vec<TrailerField> = (0..=MAX_TRAILER_FIELDS)
            .map(|i| f(&format!("x-{i}"), "v"))
            .collect();
        clean(&mut t, &mut stats);
        assert!(t.is_empty());
        let mut t = vec![f("x-big", &"v".repeat(MAX_TRAILER_BYTES))];
        clean(&mut t, &mut stats);
        assert!(t.is_empty());
        assert_eq!(stats.trailers_dropped, 2);
        let mut t = vec![f("x-ok", "v")];
        clean(&mut t, &mut stats);
        assert_eq!(t.len(), 1);
    }
}
