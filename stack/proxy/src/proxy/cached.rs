//! The HTTP/1 connection's cache steps (#21): the lookup once routing
//! chose a caching route, waiting for another request's fetch of the same
//! key, deciding on the origin's response (store, 304 refresh,
//! stale-if-error), and serving a stored response — from a complete body
//! or from one still being stored, chunk by chunk.

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::{Buf, Bytes};
use ferrogate_cache::{CacheStatus, Object, Read};

use super::{Conn, Ctx, Phase, after};
use crate::cache::{self, Lookup, OnResponse, Part, Waited};
use crate::detached_fill::{DetachedFill, FillStep};
use crate::error::ProxyError;
use crate::http::{BodyFraming, ResponseHead, head};
use crate::lb::Upstream;
use crate::phases::{ProxyHttp, ResponseInfo};
use crate::revalidation::BgFetch;

/// Most steps of one `cache_serve` run (each moves a chunk or its framing).
pub(super) const SERVE_STEPS: usize = 64;

impl<P: ProxyHttp> Conn<P> {
    /// Counts what the cache did for the request in flight (once) and
    /// puts it in the access record; returns it for the `X-Cache` line.
    pub(super) fn note_cache(&mut self, cx: &mut Ctx<'_, P>) -> Option<CacheStatus> {
        let s = self.cache_status.take()?;
        cx.stats.cache.record(s);
        self.access.cache = s.as_str();
        Some(s)
    }

    /// Forgets the cache state of the request in flight (a stored body
    /// being written is aborted unless it was finished).
    pub(super) fn clear_cache(&mut self) {
        self.cache = None;
        self.cache_writer = None;
        self.cache_status = None;
    }

    /// Goes on from a cache decision: serve, wait, or send the request
    /// (its head is in `request_head`) to `upstream`.
    pub(super) fn after_lookup(
        &mut self,
        cx: &mut Ctx<'_, P>,
        lookup: Lookup,
        upstream: Arc<Upstream>,
        hash_key: u64,
    ) -> bool {
        match lookup {
            Lookup::Serve(obj, s) => self.serve_cached(cx, &obj, s, Part::Whole),
            Lookup::ServeRange(obj, r) => {
                self.serve_cached(cx, &obj, CacheStatus::Hit, Part::Range(r))
            }
            Lookup::NotModified(obj) => {
                self.serve_cached(cx, &obj, CacheStatus::Hit, Part::NotModified)
            }
            Lookup::Invalidate(r) => {
                self.cache_status = Some(CacheStatus::Bypass);
                self.cache = Some(r);
                self.start_upstream(cx, upstream, hash_key)
            }
            Lookup::GatewayTimeout => {
                self.cache_status = Some(CacheStatus::Miss);
                let keep = self.request.is_some_and(|r| r.keep_alive) && !cx.draining;
                self.local_error(cx, ProxyError::NotCached, keep)
            }
            Lookup::Bypass => {
                self.cache_status = Some(CacheStatus::Bypass);
                self.start_upstream(cx, upstream, hash_key)
            }
            Lookup::Fetch(r) => {
                if let Some(c) = r.conditional()
                    && !cache::add_request_fields(
                        &mut self.bufs.request_head,
                        self.host_at.as_mut(),
                        c.fields(),
                    )
                {
                    return self
                        .fail_to_client(cx, ProxyError::BadRequest(head::HeadError::TooLarge));
                }
                self.cache_status = Some(r.status);
                self.cache = Some(r);
                self.start_upstream(cx, upstream, hash_key)
            }
            Lookup::Background(obj, r) => {
                // The conditional request goes up from a session of its
                // own; this client has the stale copy at once.
                let identity = self.io.identity().map(|(h, _)| h.clone());
                let head = self.bufs.request_head.filled();
                match BgFetch::new(head, self.host_at, upstream, hash_key, r, identity) {
                    Some(f) => cx.background.offer(f, cx.stats, cx.draining),
                    None => cx.stats.cache_background_skipped += 1,
                }
                self.serve_cached(cx, &obj, CacheStatus::Stale, Part::Whole)
            }
            Lookup::Wait(r, ticket) => {
                self.cache_status = Some(r.status);
                self.cache = Some(r);
                self.phase = Phase::CacheWait {
                    ticket,
                    polls: 0,
                    upstream,
                    hash_key,
                };
                self.deadline = after(cx.now, cx.cache.edge.settings.wait_poll);
                true
            }
        }
    }

    /// Waits for another request's fetch of the same key.
    pub(super) fn cache_wait(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, false);
            return true;
        }
        let Phase::CacheWait { ticket, polls, .. } = &mut self.phase else {
            unreachable!()
        };
        let Some(req) = self.cache.take() else {
            unreachable!("a waiting request keeps its cache state")
        };
        let (next, back) = cache::poll_wait(cx.cache, req, ticket, cx.now);
        self.cache = back;
        let lookup = match next {
            Waited::Pending => {
                *polls = polls.saturating_add(1);
                self.deadline = after(cx.now, cache::poll_delay(&cx.cache.edge.settings, *polls));
                return false;
            }
            Waited::Lookup(l) => l,
        };
        let Phase::CacheWait {
            upstream, hash_key, ..
        } = std::mem::replace(&mut self.phase, Phase::Close)
        else {
            unreachable!()
        };
        self.after_lookup(cx, lookup, upstream, hash_key)
    }

    /// The origin's response head arrived for a request the cache looked
    /// at: `Some(step)` when the cache answers instead (the response is
    /// dropped), `None` to send it on (and store its body, if so decided).
    pub(super) fn cache_response(
        &mut self,
        cx: &mut Ctx<'_, P>,
        resp: &ResponseHead,
    ) -> Option<bool> {
        let mut req = self.cache.take()?;
        let identity = self.io.identity().map(|(h, _)| h);
        let rw = &self.rewrite;
        let out = cache::origin_head(
            cx.cache,
            &mut req,
            &self.bufs.from_upstream.filled()[..resp.head_len],
            resp,
            |n| identity.is_some_and(|h| h.is_identity_header(n)) || rw.strips_request(n),
            cx.now,
        )?;
        self.cache_status = Some(req.status);
        match out {
            OnResponse::Pass => None,
            OnResponse::Mismatch => Some(self.upstream_failed(cx, cache::mismatch())),
            OnResponse::Store(w) => {
                self.cache_writer = Some(cache::Filler::new(w));
                None
            }
            OnResponse::Serve(obj) => {
                let reusable = resp.reusable
                    && resp.framing == BodyFraming::None
                    && !self.body_abandoned
                    && self.bufs.from_upstream.len() == resp.head_len;
                self.bufs.from_upstream.consume(resp.head_len);
                self.settle(cx, Some(!matches!(resp.status, 502..=504)));
                if reusable {
                    if let Some(up) = self.att.conn.as_mut() {
                        up.served += 1;
                    }
                    self.release_upstream(cx);
                } else {
                    self.drop_upstream(cx, false);
                }
                Some(self.serve_cached(cx, &obj, req.status, Part::Whole))
            }
        }
    }

    /// The client of a response being stored is gone (or stopped reading):
    /// its side ends with a reset, and the rest of the body is read into
    /// the object for the requests reading it (bounded by the object size
    /// and the origin's read timeout). False when nothing is being stored.
    pub(super) fn fill_without_client(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.cache_writer.is_none() {
            return false;
        }
        let Phase::StreamResponse {
            body,
            keep_upstream,
            ..
        } = std::mem::replace(&mut self.phase, Phase::Close)
        else {
            return false;
        };
        cx.net.stream(self.client).abort();
        self.bufs.to_client.clear();
        // No client: a body phase in flight ends here (its contexts too).
        self.plugin_body = None;
        self.end_plugins(cx);
        self.phase = Phase::CacheFill(DetachedFill::new(body, keep_upstream));
        self.deadline = self.att.read_deadline(cx);
        true
    }

    /// Reads the origin's body into the object (`Phase::CacheFill`).
    pub(super) fn cache_fill(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let Phase::CacheFill(fill) = &mut self.phase else {
            unreachable!()
        };
        let (buf, writer) = (&mut self.bufs.from_upstream, &mut self.cache_writer);
        match fill.step(cx, &mut self.att, buf, writer, &mut self.deadline) {
            FillStep::Running(moved) => moved,
            FillStep::Done { reuse } => {
                if reuse {
                    self.release_upstream(cx);
                }
                self.finish(cx, false);
                true
            }
            FillStep::Failed => {
                self.finish(cx, true);
                true
            }
        }
    }

    /// The origin failed: a stored response that may stand in for the
    /// error (`stale-if-error`) is served instead.
    pub(super) fn stale_for_error(&mut self, cx: &mut Ctx<'_, P>) -> Option<bool> {
        let mono = cx.cache.anchor.mono(cx.now);
        let obj = self.cache.as_mut()?.take_stale_for_error(mono)?;
        self.settle(cx, None);
        self.drop_upstream(cx, true);
        Some(self.serve_cached(cx, &obj, CacheStatus::Stale, Part::Whole))
    }

    /// Answers the request in flight from a stored object: its head goes
    /// through the same client-side rewrite as an origin's (phases, rules,
    /// `Connection`), then the body streams from the object.
    pub(super) fn serve_cached(
        &mut self,
        cx: &mut Ctx<'_, P>,
        obj: &Arc<Object>,
        s: CacheStatus,
        part: Part,
    ) -> bool {
        let info = self.request.expect("request in flight");
        // A body plugin sees (and may rewrite) the whole body: a slice of
        // the rewrite is not the rewrite of a slice, so a Range request
        // gets all of it (RFC 9110 §14.2 lets a server ignore Range).
        let part = match part {
            Part::Range(_)
                if crate::plugin_phase::wants_response_body(cx.plugins, &self.rewrite.plugin) =>
            {
                Part::Whole
            }
            p => p,
        };
        self.cache = None;
        self.cache_writer = None;
        self.cache_status = Some(s);
        // Not a pick: the access log shows no retries, the canary arm is
        // not judged by the store's answer.
        self.att.retries = 0;
        self.canary = None;
        let wall = cx.cache.anchor.wall(cx.now);
        // The stored head, as an origin would send it, in the (idle)
        // upstream buffer; then rewritten into `to_client`.
        self.bufs.from_upstream.clear();
        let Some(length) =
            cache::write_stored_head(obj, wall, !info.http10, part, &mut self.bufs.from_upstream)
        else {
            self.bufs.from_upstream.clear();
            return self.local_error(
                cx,
                ProxyError::BadResponse(head::HeadError::TooLarge),
                false,
            );
        };
        // The stored head goes through the response phases as the origin's
        // did (their edits are not stored: a hit looks like the miss).
        if let Err(e) = crate::plugin_phase::viewer_response(
            cx.plugins,
            self.bufs.from_upstream.filled(),
            cx.now,
            &mut self.rewrite.plugin,
            cx.stats,
        ) {
            self.bufs.from_upstream.clear();
            return self.local_error(cx, e, false);
        }
        // A body plugin sees the stored body as it saw the origin's; the
        // length stands unless a plugin removed it (see `plugin_body`).
        let body_plugins = !info.is_head
            && part != Part::NotModified
            && length != Some(0)
            && head::status_allows_body(part.status(obj.meta().headers.status))
            && crate::plugin_phase::wants_response_body(cx.plugins, &self.rewrite.plugin);
        let kept_length = length.filter(|_| !self.rewrite.plugin.response_unframed());
        let reframe = body_plugins && kept_length.is_none();
        // Length unknown (a body still being stored from a chunked
        // origin, or one a plugin rewrites): chunked to HTTP/1.1 clients,
        // close-delimited to 1.0.
        let chunked = (length.is_none() || reframe) && !info.http10;
        let keep = info.keep_alive && !cx.draining && ((length.is_some() && !reframe) || chunked);
        let plugin_lines = self.rewrite.plugin.adds_response();
        let xcache = self.note_cache(cx);
        self.bufs.to_client.clear();
        let phases = cx.phases;
        let rinfo = ResponseInfo {
            request_id: &self.request_id[..self.request_id_len],
            now: cx.now,
        };
        let pctx = &mut self.pctx;
        let rw = &self.rewrite;
        let status_header = cx.cache.edge.settings.status_header.as_deref();
        let mut ok = head::write_client_response(
            self.bufs.from_upstream.filled(),
            keep,
            info.http10,
            |name| {
                rw.strips_response(name)
                    || (reframe
                        && (name.eq_ignore_ascii_case("content-length")
                            || name.eq_ignore_ascii_case("transfer-encoding")))
            },
            |view, lines| {
                phases.response_filter(view, &rinfo, pctx, lines);
                rw.add_response(lines);
                if let (Some(h), Some(s)) = (status_header, xcache) {
                    lines.add(h, s.as_str().as_bytes());
                }
            },
            &mut cx.stats.header_lines_refused,
            &mut self.bufs.to_client,
        );
        if ok && chunked && reframe {
            ok = head::frame_head_chunked(&mut self.bufs.to_client);
        }
        self.bufs.from_upstream.clear();
        // The head is committed (or refused): the contexts end, with the
        // body when a plugin sees it.
        if ok && body_plugins {
            self.plugin_body = Some(super::plugin_body::PluginBody::new(
                chunked && reframe,
                kept_length.filter(|_| !reframe),
            ));
        } else {
            self.end_plugins(cx);
        }
        self.rewrite.clear();
        if !ok {
            // Lines the plugins added that do not fit are theirs.
            let e = if plugin_lines {
                cx.stats.plugin_failures += 1;
                ProxyError::PluginFailed
            } else {
                ProxyError::BadResponse(head::HeadError::TooLarge)
            };
            return self.local_error(cx, e, false);
        }
        let status = part.status(obj.meta().headers.status);
        cx.stats.count_status(status);
        self.log_access(cx, status, "");
        self.count_route_response(cx, status);
        self.request = None;
        self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
        if info.is_head || part == Part::NotModified {
            self.phase = Phase::WriteLocal { keep };
            return true;
        }
        let range = match part {
            Part::Range(r) => Some(r),
            _ => None,
        };
        self.phase = Phase::CacheServe {
            reader: obj.reader(),
            client_wait: true,
            slice: cache::BodySlice::new(range),
            chunked,
            pending: Bytes::new(),
            keep_client: keep,
        };
        true
    }

    /// Streams a stored body to the client, as fast as the client takes
    /// it and the object grows.
    pub(super) fn cache_serve(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.client_gone(cx) || !cx.net.stream(self.client).may_send() {
            cx.stats.client_aborts += 1;
            self.finish(cx, true);
            return true;
        }
        if self.plugin_body.is_some() {
            return self.cache_serve_through_plugins(cx);
        }
        enum Next {
            Client,
            Object,
            Done,
            Aborted,
        }
        let Phase::CacheServe {
            reader,
            client_wait,
            slice,
            chunked,
            pending,
            keep_client,
        } = &mut self.phase
        else {
            unreachable!()
        };
        let keep = *keep_client;
        let sock = &mut cx.net.stream(self.client);
        let mut moved = false;
        let mut next = Next::Client;
        for _ in 0..SERVE_STEPS {
            if !self.bufs.to_client.is_empty() {
                let n = self.io.stream.send(sock, self.bufs.to_client.filled());
                self.bufs.to_client.consume(n);
                moved |= n > 0;
                if !self.bufs.to_client.is_empty() {
                    next = Next::Client;
                    break;
                }
            }
            if !pending.is_empty() {
                let n = self.io.stream.send(sock, pending);
                pending.advance(n);
                cx.stats.cache.bytes_served += n as u64;
                moved |= n > 0;
                if !pending.is_empty() {
                    next = Next::Client;
                    break;
                }
                if *chunked {
                    self.bufs.to_client.extend(b"\r\n");
                }
                continue;
            }
            if slice.done() {
                next = Next::Done;
                break;
            }
            match reader.poll() {
                Read::Chunk(b) => {
                    let b = slice.cut(b);
                    if b.is_empty() {
                        continue;
                    }
                    if *chunked {
                        let _ = write!(self.bufs.to_client, "{:x}\r\n", b.len());
                    }
                    *pending = b;
                }
                Read::Pending => {
                    next = Next::Object;
                    break;
                }
                Read::End => {
                    next = Next::Done;
                    break;
                }
                Read::Aborted => {
                    next = Next::Aborted;
                    break;
                }
            }
        }
        match next {
            Next::Done => {
                if *chunked {
                    self.bufs.to_client.extend(b"0\r\n\r\n");
                }
                // `WriteLocal` sends what is left of the framing, then the
                // next request (or the close).
                self.phase = Phase::WriteLocal { keep };
                true
            }
            Next::Aborted => {
                // The fetch that was storing it failed: the client must
                // see the body is short.
                cx.stats.upstream_errors += 1;
                self.finish(cx, true);
                true
            }
            Next::Object => {
                *client_wait = false;
                self.deadline = after(cx.now, cx.cache.edge.settings.wait_poll);
                moved
            }
            Next::Client => {
                if moved || !*client_wait {
                    // Waiting on the client from now: its idle timeout
                    // (not the object's poll interval) runs.
                    *client_wait = true;
                    self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
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
}
