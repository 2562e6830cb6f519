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
        let Ok((take, done)) = feed_fill(&mut self.body, from_upstream.filled(), open, w) else {
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

/// Feeds the origin's body octets in `avail` to `w`: the octets taken and
/// whether the body ended. `Err` when the chunk framing is broken.
fn feed_fill(
    body: &mut Body,
    avail: &[u8],
    open: bool,
    w: &mut Filler,
) -> Result<(usize, bool), ()> {
    let push = |w: &mut Filler, d: &[u8]| {
        if !d.is_empty() {
            w.push(d);
        }
    };
    Ok(match body {
        Body::Done => (0, true),
        Body::Length(n) => {
            let t = (*n).min(avail.len() as u64) as usize;
            *n -= t as u64;
            push(w, &avail[..t]);
            (t, *n == 0)
        }
        Body::Chunked(dec) => {
            let t = dec.feed_with(avail, |d| push(w, d)).map_err(|_| ())?;
            (t, dec.is_done())
        }
        Body::UntilClose => {
            push(w, avail);
            (avail.len(), !open)
        }
    })
}
