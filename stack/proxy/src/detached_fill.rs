//! The detached cache fill (#21): the rest of an origin's body read into
//! the object being stored while no client of its own reads it — an
//! HTTP/1 client that left mid-body (`Phase::CacheFill`), a multiplexed
//! stream whose client went away (`Step::CacheFill`), a background
//! revalidation's replacing response (`Revalidation`). Other requests may
//! be streaming the object as it grows. One step of it is here; how the
//! exchange ends (its upstream connection, its session) is the caller's.

use crate::attempt::Attempt;
use crate::cache::Filler;
use crate::http::ByteBuf;
use crate::net::Instant;
use crate::phases::ProxyHttp;
use crate::proxy::{Body, Ctx};

/// A detached fill in progress: the rest of the origin's body and what
/// becomes of the connection after it.
pub(crate) struct DetachedFill {
    body: Body,
    /// The origin may keep the connection alive after the body.
    keep_upstream: bool,
}

/// What one step of a detached fill came to.
pub(crate) enum FillStep {
    /// Still reading; whether anything moved (then the read deadline was
    /// renewed; else it has not run out yet).
    Running(bool),
    /// The body is stored whole: the writer finished, the connection's
    /// `served` counted. `reuse`: it may go back to the pool (kept alive,
    /// nothing read past the body); else it closes.
    Done { reuse: bool },
    /// The fill cannot finish (no writer, broken framing, nobody reads it
    /// any more, truncated, timed out; an origin's fault counted in
    /// `upstream_errors`): the caller drops the writer, so its readers see
    /// the object end short, and resets the connection.
    Failed,
}

impl DetachedFill {
    pub(crate) fn new(body: Body, keep_upstream: bool) -> Self {
        DetachedFill {
            body,
            keep_upstream,
        }
    }

    /// Reads what the origin sent over `att`'s connection into
    /// `from_upstream` and feeds the body's octets to `writer`. `deadline`
    /// is the origin's read deadline, renewed whenever octets move. On
    /// `Failed` the writer is dropped (the object aborted: its readers see
    /// it end short) whatever the caller does next.
    pub(crate) fn step<P: ProxyHttp>(
        &mut self,
        cx: &mut Ctx<'_, P>,
        att: &mut Attempt,
        from_upstream: &mut ByteBuf,
        writer: &mut Option<Filler>,
        deadline: &mut Instant,
    ) -> FillStep {
        let step = self.advance(cx, att, from_upstream, writer, deadline);
        if matches!(step, FillStep::Failed) {
            *writer = None;
        }
        step
    }

    fn advance<P: ProxyHttp>(
        &mut self,
        cx: &mut Ctx<'_, P>,
        att: &mut Attempt,
        from_upstream: &mut ByteBuf,
        writer: &mut Option<Filler>,
        deadline: &mut Instant,
    ) -> FillStep {
        let got = att.fill(cx, from_upstream);
        let open = att.may_recv(cx);
        let Some(w) = writer.as_mut() else {
            return FillStep::Failed;
        };
        let fed = feed_fill(&mut self.body, from_upstream.filled(), open, |d| w.push(d));
        let Ok((take, done)) = fed else {
            cx.stats.upstream_errors += 1;
            return FillStep::Failed;
        };
        from_upstream.consume(take);
        if w.stop() {
            // Nobody reads it any more (or far behind): stop here.
            return FillStep::Failed;
        }
        if done {
            if let Some(w) = writer.take() {
                w.finish();
            }
            if let Some(up) = att.conn.as_mut() {
                up.served += 1;
            }
            return FillStep::Done {
                reuse: self.keep_upstream && from_upstream.is_empty(),
            };
        }
        if !open && from_upstream.is_empty() {
            // Truncated by the origin: the readers see it end short.
            cx.stats.upstream_errors += 1;
            return FillStep::Failed;
        }
        if got > 0 || take > 0 {
            *deadline = att.read_deadline(cx);
            return FillStep::Running(true);
        }
        if cx.now >= *deadline {
            cx.stats.upstream_errors += 1;
            return FillStep::Failed;
        }
        FillStep::Running(false)
    }
}

/// Feeds the origin's body octets in `avail` to `push` (never an empty
/// slice): the octets taken and whether the body ended. Octets past the
/// body's end are not taken (they are the origin's, and mean the
/// connection cannot be reused). `Err` when the chunk framing is broken.
fn feed_fill(
    body: &mut Body,
    avail: &[u8],
    open: bool,
    mut push: impl FnMut(&[u8]),
) -> Result<(usize, bool), ()> {
    let mut push = |d: &[u8]| {
        if !d.is_empty() {
            push(d);
        }
    };
    Ok(match body {
        Body::Done => (0, true),
        Body::Length(n) => {
            let t = (*n).min(avail.len() as u64) as usize;
            *n -= t as u64;
            push(&avail[..t]);
            (t, *n == 0)
        }
        Body::Chunked(dec) => {
            let t = dec.feed_with(avail, push).map_err(|_| ())?;
            (t, dec.is_done())
        }
        Body::UntilClose => {
            push(avail);
            (avail.len(), !open)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrogate_http::ChunkedDecoder;

    /// Feeds `parts` one after the other (as successive reads): what was
    /// pushed, the octets taken from each part, and whether the body ended.
    fn feed(body: &mut Body, parts: &[&[u8]], open: bool) -> (Vec<u8>, Vec<usize>, bool) {
        let mut out = Vec::new();
        let mut taken = Vec::new();
        let mut done = false;
        for p in parts {
            let (t, d) = feed_fill(body, p, open, |d| {
                assert!(!d.is_empty(), "no empty pushes");
                out.extend_from_slice(d);
            })
            .unwrap();
            taken.push(t);
            done = d;
        }
        (out, taken, done)
    }

    #[test]
    fn length_body_ends_at_its_length_and_leaves_what_follows() {
        let mut body = Body::Length(8);
        let (out, taken, done) = feed(&mut body, &[b"abc", b"defgh", b""], true);
        assert_eq!(
            (out.as_slice(), taken, done),
            (&b"abcdefgh"[..], vec![3, 5, 0], true)
        );
        // Octets after the body (a pipelined answer, garbage) stay unread:
        // the caller sees them and does not reuse the connection.
        let mut body = Body::Length(3);
        let (out, taken, done) = feed(&mut body, &[b"abcXYZ"], true);
        assert_eq!((out.as_slice(), taken, done), (&b"abc"[..], vec![3], true));
    }

    #[test]
    fn length_body_cut_short_is_not_done() {
        let mut body = Body::Length(10);
        let (out, _, done) = feed(&mut body, &[b"abcd"], false);
        assert_eq!((out.as_slice(), done), (&b"abcd"[..], false));
        assert!(matches!(body, Body::Length(6)));
    }

    #[test]
    fn chunked_body_yields_the_payload_across_splits_and_ends_at_the_last_chunk() {
        let wire = b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
        for split in 1..wire.len() {
            let mut body = Body::Chunked(ChunkedDecoder::new());
            let (out, taken, done) = feed(&mut body, &[&wire[..split], &wire[split..]], true);
            assert_eq!(out, b"hello world", "split {split}");
            assert_eq!(taken.iter().sum::<usize>(), wire.len(), "split {split}");
            assert!(done, "split {split}");
        }
    }

    #[test]
    fn chunked_body_with_broken_framing_is_an_error() {
        let mut body = Body::Chunked(ChunkedDecoder::new());
        assert!(feed_fill(&mut body, b"zz\r\nhello\r\n", true, |_| {}).is_err());
    }

    #[test]
    fn body_until_close_ends_only_when_the_origin_closes() {
        let mut body = Body::UntilClose;
        let (out, taken, done) = feed(&mut body, &[b"abc", b"de"], true);
        assert_eq!(
            (out.as_slice(), taken, done),
            (&b"abcde"[..], vec![3, 2], false)
        );
        let (out, _, done) = feed(&mut body, &[b"f"], false);
        assert_eq!((out.as_slice(), done), (&b"f"[..], true));
    }

    #[test]
    fn empty_body_is_done_at_once_and_takes_nothing() {
        let mut body = Body::Done;
        let (out, taken, done) = feed(&mut body, &[b"HTTP/1.1 200"], true);
        assert_eq!((out.len(), taken, done), (0, vec![0], true));
    }
}
