//! An HTTP/2 or HTTP/3 stream's cache steps (#21), as on HTTP/1
//! (`proxy/cached.rs`): lookup after routing, waiting for another
//! request's fetch, deciding on the origin's response, and serving a stored
//! response as HEADERS and DATA within what the stream may send.

use std::sync::Arc;

use bytes::{Buf, Bytes};
use ferrogate_cache::{CacheStatus, Object, Read};

use super::{MuxStream, Peer, SEND_QUANTUM, Step};
use crate::cache::{self, Lookup, OnResponse, Part, Waited};
use crate::client_side::{ClientSide, StreamAbort};
use crate::detached_fill::{DetachedFill, FillStep};
use crate::error::ProxyError;
use crate::http::{BodyFraming, ResponseHead, head};
use crate::lb::Upstream;
use crate::phases::{ProxyHttp, ResponseInfo};
use crate::proxy::plugin_body::PluginBody;
use crate::proxy::{Ctx, after};
use crate::revalidation::BgFetch;

impl<P: ProxyHttp, C: ClientSide> MuxStream<P, C> {
    /// Counts what the cache did for the request (once); puts it in the
    /// access record; returns it for the `X-Cache` field.
    pub(super) fn note_cache(&mut self, cx: &mut Ctx<'_, P>) -> Option<CacheStatus> {
        let s = self.cache_status.take()?;
        cx.stats.cache.record(s);
        self.access.cache = s.as_str();
        Some(s)
    }

    pub(super) fn after_lookup(
        &mut self,
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
        lookup: Lookup,
        upstream: Arc<Upstream>,
        hash_key: u64,
    ) {
        match lookup {
            Lookup::Serve(obj, s) => self.serve_cached(cx, client, peer, &obj, s, Part::Whole),
            Lookup::ServeRange(obj, r) => {
                self.serve_cached(cx, client, peer, &obj, CacheStatus::Hit, Part::Range(r))
            }
            Lookup::NotModified(obj) => {
                self.serve_cached(cx, client, peer, &obj, CacheStatus::Hit, Part::NotModified)
            }
            Lookup::Invalidate(r) => {
                self.cache_status = Some(CacheStatus::Bypass);
                self.cache = Some(r);
                self.start_upstream(cx, client, peer, upstream, hash_key)
            }
            Lookup::GatewayTimeout => {
                self.cache_status = Some(CacheStatus::Miss);
                self.local_error(cx, client, peer, ProxyError::NotCached)
            }
            Lookup::Bypass => {
                self.cache_status = Some(CacheStatus::Bypass);
                self.start_upstream(cx, client, peer, upstream, hash_key)
            }
            Lookup::Fetch(r) => {
                if let Some(c) = r.conditional()
                    && !cache::add_request_fields(&mut self.request_head, None, c.fields())
                {
                    let e = ProxyError::BadRequest(head::HeadError::TooLarge);
                    return self.local_error(cx, client, peer, e);
                }
                self.cache_status = Some(r.status);
                self.cache = Some(r);
                self.start_upstream(cx, client, peer, upstream, hash_key)
            }
            Lookup::Background(obj, r) => {
                // The conditional request goes up from a session of its
                // own; this client has the stale copy at once.
                let identity = peer.identity.map(|(h, _)| h.clone());
                let head = self.request_head.filled();
                match BgFetch::new(head, None, upstream, hash_key, r, identity) {
                    Some(f) => cx.background.offer(f, cx.stats, cx.draining),
                    None => cx.stats.cache_background_skipped += 1,
                }
                self.serve_cached(cx, client, peer, &obj, CacheStatus::Stale, Part::Whole)
            }
            Lookup::Wait(r, ticket) => {
                self.cache_status = Some(r.status);
                self.cache = Some(r);
                self.step = Step::CacheWait {
                    ticket,
                    polls: 0,
                    upstream,
                    hash_key,
                };
                self.deadline = after(cx.now, cx.cache.edge.settings.wait_poll);
            }
        }
    }

    /// Waits for another request's fetch of the same key.
    pub(super) fn cache_wait(
        &mut self,
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
    ) -> bool {
        let Step::CacheWait { ticket, polls, .. } = &mut self.step else {
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
        let Step::CacheWait {
            upstream, hash_key, ..
        } = std::mem::replace(&mut self.step, Step::Done)
        else {
            unreachable!()
        };
        self.after_lookup(cx, client, peer, lookup, upstream, hash_key);
        true
    }

    /// The origin's head arrived for a request the cache looked at: true
    /// when the cache answered instead (the response is dropped).
    pub(super) fn cache_response(
        &mut self,
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
        resp: &ResponseHead,
    ) -> bool {
        let Some(mut req) = self.cache.take() else {
            return false;
        };
        let identity = peer.identity.map(|(h, _)| h);
        let rw = &self.rewrite;
        let Some(out) = cache::origin_head(
            cx.cache,
            &mut req,
            &self.from_upstream.filled()[..resp.head_len],
            resp,
            |n| identity.is_some_and(|h| h.is_identity_header(n)) || rw.strips_request(n),
            cx.now,
        ) else {
            return false;
        };
        self.cache_status = Some(req.status);
        match out {
            OnResponse::Pass => false,
            OnResponse::Mismatch => {
                self.upstream_failed(cx, client, peer, cache::mismatch());
                true
            }
            OnResponse::Store(w) => {
                self.cache_writer = Some(cache::Filler::new(w));
                false
            }
            OnResponse::Serve(obj) => {
                let reusable = resp.reusable
                    && resp.framing == BodyFraming::None
                    && !self.abandoned
                    && self.from_upstream.len() == resp.head_len;
                self.from_upstream.consume(resp.head_len);
                self.att.settle(cx, Some(!matches!(resp.status, 502..=504)));
                if reusable {
                    if let Some(up) = self.att.conn.as_mut() {
                        up.served += 1;
                    }
                    self.att.release(cx);
                } else {
                    self.from_upstream.clear();
                    self.att.close(cx, false);
                }
                self.serve_cached(cx, client, peer, &obj, req.status, Part::Whole);
                true
            }
        }
    }

    /// The origin failed: a stored response that may stand in for the
    /// error (`stale-if-error`) is served instead.
    pub(super) fn stale_for_error(
        &mut self,
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
    ) -> bool {
        let mono = cx.cache.anchor.mono(cx.now);
        let Some(obj) = self
            .cache
            .as_mut()
            .and_then(|c| c.take_stale_for_error(mono))
        else {
            return false;
        };
        self.att.settle(cx, None);
        self.att.close(cx, true);
        self.from_upstream.clear();
        self.serve_cached(cx, client, peer, &obj, CacheStatus::Stale, Part::Whole);
        true
    }

    /// Answers from a stored object: the head rewritten like an origin's,
    /// as HEADERS; the body from the object as DATA.
    pub(super) fn serve_cached(
        &mut self,
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
        obj: &Arc<Object>,
        s: CacheStatus,
        part: Part,
    ) {
        // As on HTTP/1: a body plugin gets the whole body, not a Range.
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
        self.att.retries = 0;
        self.canary = None;
        let wall = cx.cache.anchor.wall(cx.now);
        self.from_upstream.clear();
        let Some(length) =
            cache::write_stored_head(obj, wall, false, part, &mut self.from_upstream)
        else {
            self.from_upstream.clear();
            let e = ProxyError::BadResponse(head::HeadError::TooLarge);
            return self.local_error(cx, client, peer, e);
        };
        // The stored head goes through the response phases as the origin's
        // did (their edits are not stored: a hit looks like the miss).
        if let Err(e) = crate::plugin_phase::viewer_response(
            cx.plugins,
            self.from_upstream.filled(),
            cx.now,
            &mut self.rewrite.plugin,
            cx.stats,
        ) {
            self.from_upstream.clear();
            return self.local_error(cx, client, peer, e);
        }
        let plugin_lines = self.rewrite.plugin.adds_response();
        let xcache = self.note_cache(cx);
        self.request_head.clear();
        let phases = cx.phases;
        let rinfo = ResponseInfo {
            request_id: &self.request_id[..self.request_id_len],
            now: cx.now,
        };
        let pctx = &mut self.pctx;
        let rw = &self.rewrite;
        let status_header = cx.cache.edge.settings.status_header.as_deref();
        let ok = head::write_client_response(
            self.from_upstream.filled(),
            true,
            false,
            |name| rw.strips_response(name),
            |view, lines| {
                phases.response_filter(view, &rinfo, pctx, lines);
                rw.add_response(lines);
                if let (Some(h), Some(s)) = (status_header, xcache) {
                    lines.add(h, s.as_str().as_bytes());
                }
            },
            &mut cx.stats.header_lines_refused,
            &mut self.request_head,
        );
        self.from_upstream.clear();
        let end = self.is_head || length == Some(0) || part == Part::NotModified;
        // A body plugin sees the stored body as it saw the origin's (see
        // `proxy::plugin_body`); the contexts end with the body, and the
        // length stands unless a plugin removed it.
        let body_plugins = ok
            && !end
            && head::status_allows_body(part.status(obj.meta().headers.status))
            && crate::plugin_phase::wants_response_body(cx.plugins, &self.rewrite.plugin);
        let kept_length = length.filter(|_| !self.rewrite.plugin.response_unframed());
        if body_plugins {
            self.plugin_body = Some(PluginBody::new(false, kept_length));
        } else {
            // The head is committed (or refused): the contexts end.
            self.end_plugins(cx);
        }
        self.rewrite.plugin.clear_edits();
        if !ok {
            // Lines the plugins added that do not fit are theirs.
            let e = if plugin_lines {
                cx.stats.plugin_failures += 1;
                ProxyError::PluginFailed
            } else {
                ProxyError::BadResponse(head::HeadError::TooLarge)
            };
            return self.local_error(cx, client, peer, e);
        }
        if !self.send_head(
            client,
            end,
            length.is_some() && (!body_plugins || kept_length.is_some()),
        ) {
            client.reset(self.id, StreamAbort::Internal);
            self.finish(cx, true);
            return;
        }
        let status = part.status(obj.meta().headers.status);
        cx.stats.count_status(status);
        self.log_access(cx, peer, status, "");
        self.count_route_response(cx, status);
        if end {
            self.step = Step::Done;
            return;
        }
        let range = match part {
            Part::Range(r) => Some(r),
            _ => None,
        };
        self.step = Step::CacheServe {
            reader: obj.reader(),
            client_wait: true,
            slice: cache::BodySlice::new(range),
            pending: Bytes::new(),
        };
        self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
    }

    /// Streams a stored body as DATA, one quantum per turn.
    pub(super) fn cache_serve(&mut self, cx: &mut Ctx<'_, P>, client: &mut C) -> bool {
        if self.plugin_body.is_some() {
            return self.cache_serve_through_plugins(cx, client);
        }
        let id = self.id;
        let Step::CacheServe {
            reader,
            client_wait,
            slice,
            pending,
        } = &mut self.step
        else {
            unreachable!()
        };
        // One quantum per turn; the capacity is read again before each
        // send, as every DATA frame's header takes output room too.
        let mut quantum = SEND_QUANTUM;
        let mut moved = false;
        let mut waiting_on_object = false;
        loop {
            if !pending.is_empty() {
                let n = pending.len().min(client.send_capacity(id).min(quantum));
                if n == 0 {
                    break;
                }
                if client.send_data(id, &pending[..n], false).is_err() {
                    // The client reset the stream.
                    self.finish(cx, true);
                    return true;
                }
                pending.advance(n);
                quantum -= n;
                cx.stats.cache.bytes_served += n as u64;
                moved = true;
                continue;
            }
            if slice.done() {
                let _ = client.send_data(id, &[], true);
                self.step = Step::Done;
                return true;
            }
            match reader.poll() {
                Read::Chunk(b) => *pending = slice.cut(b),
                Read::Pending => {
                    waiting_on_object = true;
                    break;
                }
                Read::End => {
                    let _ = client.send_data(id, &[], true);
                    self.step = Step::Done;
                    return true;
                }
                Read::Aborted => {
                    cx.stats.upstream_errors += 1;
                    client.reset(id, StreamAbort::Internal);
                    self.finish(cx, true);
                    return true;
                }
            }
        }
        if waiting_on_object {
            *client_wait = false;
            self.deadline = after(cx.now, cx.cache.edge.settings.wait_poll);
        } else if moved || !*client_wait {
            *client_wait = true;
            self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
        } else if cx.now >= self.deadline {
            C::count_stalled_reset(cx.stats);
            client.reset(id, StreamAbort::Cancel);
            self.finish(cx, true);
            return true;
        }
        moved
    }
}

impl<P: ProxyHttp, C: ClientSide> MuxStream<P, C> {
    /// A stored body through the plugins (a hit whose request has a body
    /// plugin), one quantum per turn: each chunk of the object takes the
    /// way the origin's did, and their output goes out as DATA.
    fn cache_serve_through_plugins(&mut self, cx: &mut Ctx<'_, P>, client: &mut C) -> bool {
        let Some(mut pb) = self.plugin_body.take() else {
            return false;
        };
        let id = self.id;
        let Step::CacheServe {
            reader,
            client_wait,
            slice,
            ..
        } = &mut self.step
        else {
            unreachable!()
        };
        let mut moved = false;
        let mut turn = 0;
        let mut waiting_on_object = false;
        loop {
            match super::send_plugin_output(&mut pb, client, cx.stats, id, &mut turn, &mut moved) {
                super::SendStep::Go => {}
                super::SendStep::Wait => break,
                super::SendStep::Reset => {
                    self.finish(cx, true);
                    return true;
                }
            }
            if pb.end_sent {
                self.end_plugins(cx);
                self.step = Step::Done;
                return true;
            }
            let (data, end) = if slice.done() {
                (Bytes::new(), true)
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
                        waiting_on_object = true;
                        break;
                    }
                    Read::End => (Bytes::new(), true),
                    Read::Aborted => {
                        cx.stats.upstream_errors += 1;
                        client.reset(id, StreamAbort::Internal);
                        self.finish(cx, true);
                        return true;
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
                client.reset(id, StreamAbort::Internal);
                self.finish(cx, true);
                return true;
            }
            moved = true;
        }
        self.plugin_body = Some(pb);
        if waiting_on_object {
            *client_wait = false;
            self.deadline = after(cx.now, cx.cache.edge.settings.wait_poll);
        } else if moved || !*client_wait {
            *client_wait = true;
            self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
        } else if cx.now >= self.deadline {
            C::count_stalled_reset(cx.stats);
            client.reset(id, StreamAbort::Cancel);
            self.finish(cx, true);
            return true;
        }
        moved
    }

    /// The client of a response being stored is gone (it reset the stream,
    /// or the connection ended): the rest of the body is read into the
    /// object for the requests reading it, as on HTTP/1 (bounded by the
    /// object size and the origin's read timeout). False when nothing is
    /// being stored.
    pub(crate) fn detach_fill(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        if self.cache_writer.is_none() || !matches!(self.step, Step::Response { .. }) {
            return false;
        }
        if !self.fill_allowed {
            // The connection reads on as many as it may already.
            cx.stats.cache_fills_refused += 1;
            return false;
        }
        let Step::Response {
            body,
            keep_upstream,
        } = std::mem::replace(&mut self.step, Step::Done)
        else {
            unreachable!()
        };
        // No client: a body phase in flight ends here (its contexts too).
        self.plugin_body = None;
        self.end_plugins(cx);
        self.step = Step::CacheFill(DetachedFill::new(body, keep_upstream));
        self.deadline = self.att.read_deadline(cx);
        true
    }

    /// Storing a body with no client (`Step::CacheFill`).
    pub(crate) fn is_detached(&self) -> bool {
        matches!(self.step, Step::CacheFill { .. })
    }

    /// Reads the origin's body into the object (`Step::CacheFill`).
    pub(super) fn cache_fill(&mut self, cx: &mut Ctx<'_, P>) -> bool {
        let Step::CacheFill(fill) = &mut self.step else {
            unreachable!()
        };
        let writer = &mut self.cache_writer;
        match fill.step(
            cx,
            &mut self.att,
            &mut self.from_upstream,
            writer,
            &mut self.deadline,
        ) {
            FillStep::Running(moved) => moved,
            FillStep::Done { reuse } => {
                self.att.release_or_close(cx, reuse);
                self.step = Step::Done;
                true
            }
            FillStep::Failed => {
                self.finish(cx, true);
                true
            }
        }
    }
}
