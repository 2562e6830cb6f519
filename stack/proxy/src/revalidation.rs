//! Background revalidation (RFC 5861 `stale-while-revalidate`, #21): the
//! request that finds an object stale within its window is served the
//! stale copy at once, and the conditional request it would have made goes
//! to the origin from a session of its own (`Session::Revalidation` in the
//! stack), tied to no client connection. It holds the key's cache lock
//! (one revalidation per key at a time); a 304 refreshes the stored object
//! and a cacheable response replaces it, both through the cache's usual
//! response path (`cache::origin_head`), the new body read into the store
//! as a detached fill reads it (`detached_fill`). An error or an
//! uncacheable answer leaves the stale copy; the lock is released, so a
//! later stale hit tries again. At most [`MAX_BACKGROUND`] run per worker.

use std::sync::Arc;

use crate::attempt::{Attempt, Connecting, Started};
use crate::cache::{self, CacheReq, OnResponse};
use crate::detached_fill::{DetachedFill, FillStep};
use crate::error::ProxyError;
use crate::http::{BodyFraming, ByteBuf, head};
use crate::lb::{Upstream, UpstreamRegistry};
use crate::net::{Instant, StreamId};
use crate::phases::ProxyHttp;
use crate::proxy::{Body, Ctx};
use crate::tls::IdentityHeaders;

/// Background revalidations in flight per worker; more are skipped (the
/// stale copy is served, the lock released) and counted.
pub(crate) const MAX_BACKGROUND: usize = 64;

/// A revalidation a request asked for, waiting for its session.
pub(crate) struct BgFetch {
    /// The request's upstream head with the stored validators in it.
    pub head: ByteBuf,
    /// Where a Host field goes, per endpoint (the client sent none).
    pub host_at: Option<usize>,
    pub pool: Arc<Upstream>,
    pub hash_key: u64,
    pub req: Box<CacheReq>,
    /// The listener's identity fields (a response varying on one is not
    /// stored).
    pub identity: Option<IdentityHeaders>,
}

impl BgFetch {
    /// The upstream request head `head` (as the client's request would go
    /// up, its own validators stripped) with `req`'s conditional fields.
    /// None: they do not fit.
    pub fn new(
        head: &[u8],
        mut host_at: Option<usize>,
        pool: Arc<Upstream>,
        hash_key: u64,
        req: Box<CacheReq>,
        identity: Option<IdentityHeaders>,
    ) -> Option<Self> {
        let mut buf = ByteBuf::with_capacity(head.len() + 512);
        buf.extend(head);
        let c = req.conditional()?;
        if !cache::add_request_fields(&mut buf, host_at.as_mut(), c.fields()) {
            return None;
        }
        Some(BgFetch {
            head: buf,
            host_at,
            pool,
            hash_key,
            req,
            identity,
        })
    }
}

/// The worker's background revalidations: those asked for in this drive
/// (started by the stack right after it) and how many run.
#[derive(Default)]
pub(crate) struct Background {
    pub pending: Vec<BgFetch>,
    pub running: usize,
}

impl Background {
    /// Queues `f` unless the worker drains or runs its maximum already
    /// (then `f` is dropped: its lock is released, the stale copy stays).
    pub fn offer(&mut self, f: BgFetch, stats: &mut crate::stats::StackStats, draining: bool) {
        if draining || self.running + self.pending.len() >= MAX_BACKGROUND {
            stats.cache_background_skipped += 1;
            return;
        }
        stats.cache_background_revalidations += 1;
        self.pending.push(f);
    }
}

enum Step {
    Start,
    Connect,
    Send {
        sent: usize,
    },
    ReadHead,
    /// A replacing response's body into the store.
    Fill(DetachedFill),
    Done,
}

/// One background revalidation: a client-less exchange with the origin.
pub(crate) struct Revalidation {
    att: Attempt,
    fetch: BgFetch,
    from_upstream: ByteBuf,
    writer: Option<cache::Filler>,
    step: Step,
    deadline: Instant,
}

impl Revalidation {
    pub fn new(fetch: BgFetch, head_buffer: usize, now: Instant) -> Self {
        Revalidation {
            att: Attempt::default(),
            fetch,
            from_upstream: ByteBuf::with_capacity(head_buffer),
            writer: None,
            step: Step::Start,
            deadline: now,
        }
    }

    pub fn is_finished(&self) -> bool {
        matches!(self.step, Step::Done)
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The upstream socket and its local port, if one is open.
    pub fn upstream(&self) -> Option<(StreamId, u16)> {
        self.att.conn.as_ref().map(|u| (u.handle, u.local_port))
    }

    /// Reading a replacing body into the store: other requests may be
    /// streaming the new object already.
    pub fn is_filling(&self) -> bool {
        matches!(self.step, Step::Fill { .. })
    }

    /// A drain or a stop: the exchange ends here (its socket is reset by
    /// the caller); its pick, if not yet judged, goes back to the pool
    /// unjudged, the lock is released and the stale copy stays.
    pub fn abandon(&mut self, registry: &mut UpstreamRegistry, now: Instant) {
        self.att.cancel(registry, now);
        self.att.conn = None;
        self.writer = None;
        self.step = Step::Done;
    }

    /// Moves the exchange on; true if anything moved.
    pub fn drive<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if let Some(up) = self.att.conn.as_mut() {
            up.io.flush(&mut cx.net.stream(up.handle));
        }
        let mut moved = false;
        for _ in 0..8 {
            let step = match self.step {
                Step::Start => {
                    self.att
                        .begin(cx, self.fetch.pool.clone(), self.fetch.hash_key);
                    match self.att.pick(cx) {
                        Ok(ep) => self.use_endpoint(cx, ep),
                        Err(e) => self.fail(cx, e.into()),
                    }
                    true
                }
                Step::Connect => {
                    match self
                        .att
                        .poll_connect(cx, &mut self.from_upstream, self.deadline)
                    {
                        Connecting::Ready => {
                            self.begin_send(cx);
                            true
                        }
                        Connecting::Pending => false,
                        Connecting::Failed(e) => {
                            self.upstream_failed(cx, e);
                            true
                        }
                    }
                }
                Step::Send { .. } => self.send(cx),
                Step::ReadHead => self.read_head(cx),
                Step::Fill { .. } => self.fill(cx),
                Step::Done => false,
            };
            if !step {
                break;
            }
            moved = true;
        }
        moved
    }

    fn use_endpoint<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, ep: usize) {
        match self.att.start(cx, ep) {
            Ok(Started::Reused) => self.begin_send(cx),
            Ok(Started::Connecting { deadline }) => {
                self.step = Step::Connect;
                self.deadline = deadline;
            }
            Err(e) => self.fail(cx, e),
        }
    }

    fn begin_send<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) {
        self.fetch.req.mark_sent(cx.cache.anchor.wall(cx.now));
        if let (Some(at), Some(up)) = (self.fetch.host_at, &self.att.conn) {
            // Every HTTP/1.1 request carries Host; the endpoint may differ
            // from one attempt to the next.
            let out = &mut self.fetch.head;
            out.truncate(at);
            let ok = out.extend(b"Host: ")
                && self.fetch.pool.write_host(up.endpoint, out).is_ok()
                && out.extend(b"\r\n\r\n");
            if !ok {
                return self.fail(cx, ProxyError::BadRequest(head::HeadError::TooLarge));
            }
        }
        self.from_upstream.clear();
        self.step = Step::Send { sent: 0 };
        self.deadline = self.att.response_deadline(cx);
    }

    fn send<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let Step::Send { sent } = &mut self.step else {
            unreachable!()
        };
        let upc = self.att.conn.as_mut().expect("upstream");
        let up = &mut cx.net.stream(upc.handle);
        if !up.may_send() || upc.io.failed() {
            self.upstream_failed(cx, ProxyError::UpstreamClosedEarly);
            return true;
        }
        let head = self.fetch.head.filled();
        let n = upc.io.send(up, &head[*sent..]);
        *sent += n;
        if *sent == head.len() {
            self.step = Step::ReadHead;
            self.deadline = self.att.response_deadline(cx);
            return true;
        }
        if n == 0 && cx.now >= self.deadline {
            self.upstream_failed(cx, ProxyError::UpstreamTimeout);
            return true;
        }
        n > 0
    }

    fn read_head<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let got = self.att.fill(cx, &mut self.from_upstream);
        let open = self.att.may_recv(cx);
        let full = self.from_upstream.is_full();
        let resp = match head::parse_response(self.from_upstream.filled(), false, full) {
            Ok(Some(resp)) if resp.interim => {
                self.from_upstream.consume(resp.head_len);
                return true;
            }
            Ok(Some(resp)) if resp.status == 101 => {
                let e = ProxyError::BadResponse(head::HeadError::Unsupported("101 to a GET"));
                self.upstream_failed(cx, e);
                return true;
            }
            Ok(Some(resp)) => resp,
            Ok(None) => {
                if !open {
                    let e = if self.from_upstream.is_empty() {
                        ProxyError::UpstreamClosedEarly
                    } else {
                        ProxyError::BadResponse(head::HeadError::Malformed("truncated head"))
                    };
                    self.upstream_failed(cx, e);
                    return true;
                }
                if cx.now >= self.deadline {
                    self.upstream_failed(cx, ProxyError::UpstreamTimeout);
                    return true;
                }
                return got > 0;
            }
            Err(e) => {
                self.upstream_failed(cx, ProxyError::BadResponse(e));
                return true;
            }
        };
        let identity = self.fetch.identity.as_ref();
        let out = cache::origin_head(
            cx.cache,
            &mut self.fetch.req,
            &self.from_upstream.filled()[..resp.head_len],
            &resp,
            |n| identity.is_some_and(|h| h.is_identity_header(n)),
            cx.now,
        );
        self.att.settle(cx, Some(!matches!(resp.status, 502..=504)));
        let reusable_304 = resp.reusable
            && resp.framing == BodyFraming::None
            && self.from_upstream.len() == resp.head_len;
        self.from_upstream.consume(resp.head_len);
        match out {
            Some(OnResponse::Serve(_)) if resp.status == 304 => {
                if self.fetch.req.refreshed() {
                    // The stored object has the 304's fields and freshness.
                    cx.stats.cache_background_refreshed += 1;
                } else {
                    // Nothing refreshed: the merged response may no longer
                    // be stored (the stale copy went with it), or the
                    // object was evicted or replaced meanwhile.
                    cx.stats.cache_background_failed += 1;
                }
                if reusable_304 {
                    if let Some(up) = self.att.conn.as_mut() {
                        up.served += 1;
                    }
                    self.att.release(cx);
                } else {
                    self.att.close(cx, false);
                }
                self.step = Step::Done;
            }
            // Counted replaced once the store has the whole new body
            // (`fill`), failed if it ends short.
            Some(OnResponse::Store(w)) => {
                self.writer = Some(cache::Filler::new(w));
                let body = Body::from_framing(resp.framing);
                self.step = Step::Fill(DetachedFill::new(body, resp.reusable));
                self.deadline = self.att.read_deadline(cx);
            }
            // An error, an uncacheable answer, a 304 selecting nothing:
            // the stale copy (if still stored) stays; the lock is gone.
            _ => {
                cx.stats.cache_background_failed += 1;
                self.att.close(cx, false);
                self.step = Step::Done;
            }
        }
        true
    }

    /// Reads the new body into the object (as a client that left has it
    /// read, `detached_fill`).
    fn fill<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let Step::Fill(fill) = &mut self.step else {
            unreachable!()
        };
        let (buf, writer) = (&mut self.from_upstream, &mut self.writer);
        match fill.step(cx, &mut self.att, buf, writer, &mut self.deadline) {
            FillStep::Running(moved) => return moved,
            FillStep::Done { reuse } => {
                cx.stats.cache_background_replaced += 1;
                self.att.release_or_close(cx, reuse);
            }
            FillStep::Failed => {
                // The object is aborted (its readers see it end short), the
                // connection reset.
                cx.stats.cache_background_failed += 1;
                self.writer = None;
                self.att.close(cx, true);
            }
        }
        self.step = Step::Done;
        true
    }

    /// The attempt failed: retried as the pool allows (a GET without a
    /// body), else the revalidation ends with the stale copy kept.
    fn upstream_failed<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, err: ProxyError) {
        self.from_upstream.clear();
        match self
            .att
            .failed(cx, err, Some(("GET", BodyFraming::None)), None)
        {
            Ok(ep) => self.use_endpoint(cx, ep),
            Err(e) => self.fail(cx, e),
        }
    }

    fn fail<P: ProxyHttp>(&mut self, cx: &mut Ctx<'_, P>, err: ProxyError) {
        tracing::debug!(error = %err, "background revalidation failed");
        cx.stats.cache_background_failed += 1;
        // A pick that failed was judged already (`Attempt::failed`); one
        // never sent (no Host fits) goes back unjudged.
        self.att.settle(cx, None);
        self.att.close(cx, true);
        self.step = Step::Done;
    }
}
