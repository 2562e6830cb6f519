//! The HTTP/1 response body through the plugins' body phase (#22): the
//! origin's payload (its framing taken off) goes piece by piece through
//! `plugin_phase::ResponseBody`, and what the plugins pass on goes to the
//! client re-framed (chunked; close-delimited for HTTP/1.0), since a plugin
//! may change the length. The plain streaming path stays as it was for
//! requests without a body plugin.

use std::io::Write as _;

use super::{Body, Conn, Ctx, Phase};
use crate::error::ProxyError;
use crate::phases::ProxyHttp;
use crate::plugin_phase::ResponseBody;

/// Origin bytes taken per step: a plugin is called at most once per step.
const STEP: usize = 16 * 1024;

/// A response body on its way through the plugins.
#[derive(Debug, Default)]
pub(crate) struct PluginBody {
    chain: ResponseBody,
    /// Framed bytes for the client, sent from `sent` on.
    pub(crate) out: Vec<u8>,
    pub(crate) sent: usize,
    /// The origin's payload of one step.
    pub(crate) payload: Vec<u8>,
    /// Chunked to the client (else as the plugins left it: close-delimited
    /// on HTTP/1.0, DATA frames on HTTP/2).
    chunked: bool,
    /// The last piece went through the plugins: once `out` is sent, the
    /// response is complete.
    pub(crate) ended: bool,
    /// HTTP/2: END_STREAM went out.
    pub(crate) end_sent: bool,
    /// The length the head announced, still to come: the plugins left
    /// `content-length` in place, so their output must match it.
    length_left: Option<u64>,
    /// The origin's trailers (a chunked body's trailer section), once the
    /// body ended: they go after the body (the chunked end, or HTTP/2
    /// trailing HEADERS).
    pub(crate) trailers: Vec<crate::http::TrailerField>,
}

/// What [`PluginBody::pull`] did.
pub(crate) enum Pulled {
    /// Nothing new from the origin yet.
    Nothing,
    /// A piece went through the plugins (its output is in `out`).
    Piece,
    /// The origin's body is broken (bad chunking) or ended short.
    Broken,
    /// A plugin that is not `fail_open` failed.
    PluginFailed,
}

impl PluginBody {
    /// `chunked`: re-framed to the client; `length`: the announced length
    /// the output must keep (the head kept `content-length`).
    pub(crate) fn new(chunked: bool, length: Option<u64>) -> Box<Self> {
        Box::new(Self {
            chunked,
            length_left: length,
            ..Self::default()
        })
    }

    /// The request body's way up: the chain in request order; `chunked`:
    /// re-framed to the upstream; `length`: the client's, kept.
    pub(crate) fn for_request(chunked: bool, length: Option<u64>) -> Box<Self> {
        Box::new(Self {
            chain: ResponseBody::request(),
            chunked,
            length_left: length,
            ..Self::default()
        })
    }

    /// Bytes wait for the peer (the client, or the upstream for a
    /// request body).
    pub(crate) fn pending(&self) -> bool {
        self.sent < self.out.len()
    }

    /// Takes up to [`STEP`] of the origin's body from `from_upstream`
    /// (framing off; a copy to the object `writer` stores, if any), hands
    /// it through the plugins and frames what they pass on into `out`
    /// (which must be sent: it is replaced).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn pull<P: ProxyHttp>(
        &mut self,
        cx: &mut Ctx<'_, P>,
        edits: &crate::plugin_phase::PluginEdits,
        body: &mut Body,
        from_upstream: &mut crate::http::ByteBuf,
        upstream_open: bool,
        writer: &mut Option<crate::cache::Filler>,
        pctx: &mut P::Ctx,
    ) -> Pulled {
        let avail = from_upstream.filled();
        let window = &avail[..avail.len().min(STEP)];
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        let (take, done) = match body {
            Body::Done => (0, true),
            Body::Length(n) => {
                let t = (*n).min(window.len() as u64) as usize;
                *n -= t as u64;
                payload.extend_from_slice(&window[..t]);
                (t, *n == 0)
            }
            Body::Chunked(dec) => {
                // The body is re-framed here: its trailers must be kept
                // to go on.
                dec.capture_trailers();
                match dec.feed_with(window, |d| payload.extend_from_slice(d)) {
                    Ok(t) => {
                        if dec.is_done() {
                            self.trailers = crate::trailers::take(dec, cx.stats);
                        }
                        (t, dec.is_done())
                    }
                    Err(e) => {
                        cx.stats.upstream_errors += 1;
                        tracing::debug!(error = %ProxyError::BadResponseBody(e), "aborting response");
                        return Pulled::Broken;
                    }
                }
            }
            Body::UntilClose => {
                payload.extend_from_slice(window);
                (window.len(), !upstream_open && avail.len() == window.len())
            }
        };
        if take == 0 && !done {
            self.payload = payload;
            if !upstream_open && from_upstream.is_empty() {
                // The origin closed before the body was complete.
                cx.stats.upstream_errors += 1;
                return Pulled::Broken;
            }
            return Pulled::Nothing;
        }
        from_upstream.consume(take);
        // The object stores the origin's body, not the plugins' (a hit
        // goes through them again).
        if let Some(w) = writer
            && !payload.is_empty()
        {
            w.push(&payload);
        }
        if writer.as_ref().is_some_and(crate::cache::Filler::stop) {
            *writer = None;
        }
        // The phases see the body as it goes to the client (its end comes
        // with the response's).
        let phases = cx.phases;
        let pushed = self.push(cx.plugins, edits, &payload, done, cx.now, cx.stats, |d| {
            phases.response_body_filter(d, false, pctx)
        });
        self.payload = payload;
        if pushed {
            Pulled::Piece
        } else {
            Pulled::PluginFailed
        }
    }

    /// Hands `data` (payload, no framing) through the plugins and frames
    /// what they pass on into `out` (replaced: it must have been sent).
    /// False: a plugin that is not `fail_open` failed.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn push(
        &mut self,
        workers: &mut crate::plugin_phase::WorkerPlugins,
        edits: &crate::plugin_phase::PluginEdits,
        data: &[u8],
        done: bool,
        now: crate::net::Instant,
        stats: &mut crate::stats::StackStats,
        on_output: impl FnOnce(&[u8]),
    ) -> bool {
        self.out.clear();
        self.sent = 0;
        // Trailers to a chain that takes them: the body's last call says
        // more follows, then the trailers go through (Envoy's order).
        let with_trailers = done
            && !self.trailers.is_empty()
            && crate::plugin_phase::wants_trailers(workers, edits, self.chain.direction());
        let out = if with_trailers {
            self.chain
                .end_with_trailers(workers, edits, data, &mut self.trailers, now, stats)
        } else {
            self.chain.feed(workers, edits, data, done, now, stats)
        };
        let Ok(data) = out else {
            return false;
        };
        if let Some(left) = &mut self.length_left {
            let n = data.len() as u64;
            if n > *left || (done && n != *left) {
                // proxy-wasm: a plugin that changes the length removes
                // `content-length` at the head; these kept it.
                stats.plugin_failures += 1;
                tracing::debug!("plugins changed a response body whose length the head announces");
                return false;
            }
            *left -= n;
        }
        if !data.is_empty() {
            on_output(data);
        }
        if self.chunked {
            if !data.is_empty() {
                let _ = write!(self.out, "{:x}\r\n", data.len());
                self.out.extend_from_slice(data);
                self.out.extend_from_slice(b"\r\n");
            }
            if done {
                if !self.trailers.is_empty() {
                    stats.trailers_forwarded += 1;
                }
                crate::trailers::write_chunked_end(&self.trailers, &mut self.out);
            }
        } else {
            self.out.extend_from_slice(data);
        }
        self.ended = done;
        true
    }
}

/// What one step left the response in.
enum Step {
    /// Waiting (for the client to take bytes or the origin to send).
    Wait(bool),
    /// Sent in full: the plain path ends the response.
    Complete,
    /// Ended (cut); the connection is finishing.
    Cut,
}

impl<P: ProxyHttp> Conn<P> {
    /// One step of a response whose body the plugins see; true on progress.
    pub(super) fn plugin_body_step(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let Some(mut pb) = self.plugin_body.take() else {
            return false;
        };
        match self.plugin_body_run(cx, &mut pb) {
            Step::Wait(moved) => {
                self.plugin_body = Some(pb);
                moved
            }
            Step::Cut => true,
            Step::Complete => {
                // The contexts end with the body (on_done, on_log); the
                // plain path does the rest with nothing left to stream.
                self.end_plugins(cx);
                if let Phase::StreamResponse { body, .. } = &mut self.phase {
                    *body = Body::Done;
                }
                self.stream_response_step(cx);
                true
            }
        }
    }

    fn plugin_body_run(&mut self, cx: &mut Ctx<'_, P>, pb: &mut PluginBody) -> Step {
        // The head first.
        let (flushed, mut moved) = self.flush_to_client(cx);
        if !flushed {
            return Step::Wait(moved);
        }
        loop {
            if pb.pending() {
                let client = &mut cx.net.stream(self.client);
                let n = self.io.stream.send(client, &pb.out[pb.sent..]);
                pb.sent += n;
                moved |= n > 0;
                if pb.pending() {
                    return Step::Wait(moved);
                }
            }
            if pb.ended {
                return Step::Complete;
            }
            moved |= self.fill_from_upstream(cx) > 0;
            let upstream_open = self.upstream_may_recv(cx);
            let Phase::StreamResponse { body, .. } = &mut self.phase else {
                unreachable!("plugin body outside a streamed response")
            };
            match pb.pull(
                cx,
                &self.rewrite.plugin,
                body,
                &mut self.bufs.from_upstream,
                upstream_open,
                &mut self.cache_writer,
                &mut self.pctx,
            ) {
                Pulled::Nothing => return Step::Wait(moved),
                Pulled::Piece => moved = true,
                // The head is out: the client sees the body cut.
                Pulled::Broken => {
                    self.finish(cx, true);
                    return Step::Cut;
                }
                // This client's plugin failed, not the origin: a body
                // being stored is read on for its other readers.
                Pulled::PluginFailed => {
                    if !self.fill_without_client(cx) {
                        self.finish(cx, true);
                    }
                    return Step::Cut;
                }
            }
        }
    }

    /// A stored body through the plugins (a cache hit whose request has a
    /// body plugin): each chunk of the object, as the store serves it,
    /// takes the way the origin's did.
    pub(super) fn cache_serve_through_plugins(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        use ferrogate_cache::Read;
        enum Next {
            Client,
            Object,
            Done,
            Cut,
        }
        let Some(mut pb) = self.plugin_body.take() else {
            return false;
        };
        // The head first.
        let (flushed, mut moved) = self.flush_to_client(cx);
        if !flushed {
            self.plugin_body = Some(pb);
            return moved;
        }
        let Phase::CacheServe {
            reader,
            client_wait,
            slice,
            keep_client,
            ..
        } = &mut self.phase
        else {
            unreachable!("plugin body outside a cache serve")
        };
        let keep = *keep_client;
        let mut next = Next::Client;
        for _ in 0..super::cached::SERVE_STEPS {
            if pb.pending() {
                let client = &mut cx.net.stream(self.client);
                let n = self.io.stream.send(client, &pb.out[pb.sent..]);
                pb.sent += n;
                moved |= n > 0;
                if pb.pending() {
                    break;
                }
            }
            if pb.ended {
                next = Next::Done;
                break;
            }
            let (data, end) = if slice.done() {
                (bytes::Bytes::new(), true)
            } else {
                match reader.poll() {
                    Read::Chunk(b) => {
                        let b = slice.cut(b);
                        if b.is_empty() {
                            continue;
                        }
                        cx.stats.cache.bytes_served += b.len() as u64;
                        (b, false)
                    }
                    Read::Pending => {
                        next = Next::Object;
                        break;
                    }
                    Read::End => (bytes::Bytes::new(), true),
                    Read::Aborted => {
                        // The fetch that was storing it failed.
                        cx.stats.upstream_errors += 1;
                        next = Next::Cut;
                        break;
                    }
                }
            };
            if !pb.push(
                cx.plugins,
                &self.rewrite.plugin,
                &data,
                end,
                cx.now,
                cx.stats,
                |_| {},
            ) {
                next = Next::Cut;
                break;
            }
            moved = true;
        }
        match next {
            Next::Done => {
                self.end_plugins(cx);
                self.phase = Phase::WriteLocal { keep };
                true
            }
            Next::Cut => {
                self.finish(cx, true);
                true
            }
            Next::Object => {
                *client_wait = false;
                self.deadline = super::after(cx.now, cx.cache.edge.settings.wait_poll);
                self.plugin_body = Some(pb);
                moved
            }
            Next::Client => {
                self.plugin_body = Some(pb);
                if moved || !*client_wait {
                    *client_wait = true;
                    self.deadline = super::after(cx.now, cx.cfg.timeouts.client_idle);
                } else if cx.now >= self.deadline {
                    // The client took nothing for the idle timeout.
                    cx.stats.client_aborts += 1;
                    self.finish(cx, true);
                    return true;
                }
                moved
            }
        }
    }

    /// The request body through the plugins, once the head went up: each
    /// piece the client sends (framing off) takes the plugins' way, and
    /// what they pass on goes up framed. True on progress or an end.
    pub(super) fn request_body_through_plugins(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let Some(mut pb) = self.request_plugin_body.take() else {
            return false;
        };
        let mut moved = false;
        let max_body = cx.cfg.max_request_body;
        loop {
            if pb.pending() {
                let upc = self.att.conn.as_mut().expect("upstream");
                let up = &mut cx.net.stream(upc.handle);
                let n = upc.io.send(up, &pb.out[pb.sent..]);
                pb.sent += n;
                moved |= n > 0;
                if pb.pending() {
                    self.request_plugin_body = Some(pb);
                    return moved;
                }
            }
            if pb.ended {
                self.phase = Phase::ReadResponseHead;
                self.deadline = self.att.response_deadline(cx);
                return true;
            }
            let Phase::SendRequest { body, .. } = &mut self.phase else {
                unreachable!("request body outside a request being sent")
            };
            let avail = self.bufs.from_client.filled();
            let window = &avail[..avail.len().min(STEP)];
            let mut payload = std::mem::take(&mut pb.payload);
            payload.clear();
            let (take, done) = match body {
                Body::Done => (0, true),
                Body::Length(n) => {
                    let t = (*n).min(window.len() as u64) as usize;
                    *n -= t as u64;
                    payload.extend_from_slice(&window[..t]);
                    (t, *n == 0)
                }
                Body::Chunked(dec) => {
                    if max_body > 0 && dec.bytes_seen() > max_body {
                        return self.fail_to_client(cx, ProxyError::BodyTooLarge);
                    }
                    // Re-framed here: the client's trailers are kept to
                    // go through the plugins and up.
                    dec.capture_trailers();
                    match dec.feed_with(window, |d| payload.extend_from_slice(d)) {
                        Ok(t) => {
                            if dec.is_done() {
                                pb.trailers = crate::trailers::take(dec, cx.stats);
                            }
                            (t, dec.is_done())
                        }
                        Err(e) => return self.fail_to_client(cx, ProxyError::BadRequestBody(e)),
                    }
                }
                Body::UntilClose => unreachable!("requests are never close-delimited"),
            };
            if take == 0 && !done {
                pb.payload = payload;
                if self.fill_from_client(cx) > 0 {
                    moved = true;
                    continue;
                }
                if !self.client_may_recv(cx) && self.bufs.from_client.is_empty() {
                    // The client stopped sending mid-body.
                    cx.stats.client_aborts += 1;
                    self.finish(cx, true);
                    return true;
                }
                self.request_plugin_body = Some(pb);
                return moved;
            }
            self.bufs.from_client.consume(take);
            // Bytes of the body are the plugins' now: no retry can resend
            // them.
            self.att.body_started = true;
            let end = done && !self.body_end_seen;
            if !payload.is_empty() || end {
                if let Err(e) = cx.phases.request_body_filter(&payload, end, &mut self.pctx) {
                    return self.fail_to_client(cx, e);
                }
                self.body_end_seen |= end;
            }
            let pushed = pb.push(
                cx.plugins,
                &self.rewrite.plugin,
                &payload,
                done,
                cx.now,
                cx.stats,
                |_| {},
            );
            pb.payload = payload;
            if !pushed {
                // No response has begun: the client gets the plugin's 500.
                return self.fail_to_client(cx, ProxyError::PluginFailed);
            }
            moved = true;
        }
    }
}
