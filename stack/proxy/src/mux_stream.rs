//! One HTTP/2 or HTTP/3 stream's exchange: the request goes through the
//! same phases, router, pools, retries and limits as an HTTP/1 request, and
//! upstream as HTTP/1.1 over a connection of the worker's pool
//! ([`Attempt`]); the response comes back as HEADERS and DATA within what
//! the client side lets the stream send ([`ClientSide::send_capacity`]:
//! flow-control windows, output room). The protocol is behind
//! [`ClientSide`]: the HTTP/2 session drives these streams over
//! `ferrogate_h2::Connection`.

mod cached;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::access::AccessRecord;
use crate::attempt::{Attempt, Connecting, Started};
use crate::client_io::ClientIo;
use crate::client_side::{ClientSide, StreamAbort};
use crate::error::ProxyError;
use crate::http::head::{self, HeadError, Header, Headers};
use crate::http::{BodyFraming, ByteBuf, RequestView};
use crate::lb::Upstream;
use crate::net::Instant;
use crate::phases::{ProxyHttp, RequestInfo, ResponseInfo};
use crate::proxy::plugin_body::{PluginBody, Pulled};
use crate::proxy::{
    Body, Ctx, REQUEST_ID_MAX, Routing, after, canary_arm, canary_record, choose_route,
    emit_access, hash_key, rewritten_pool, set_request_id,
};
use crate::route::{DirectResponse, RouteAction};
use crate::tls::{ClientIdentity, IdentityHeaders};

/// A request as HTTP/2 and HTTP/3 both decode it (`ferrogate_h3::Request`
/// is this type).
type Request = crate::h2::Request;

/// What a stream knows of its connection.
pub(crate) struct Peer<'a> {
    /// The client connection is TLS (QUIC always is).
    pub tls: bool,
    /// The verified client certificate's common name.
    pub client_cn: Option<&'a str>,
    /// The listener's identity headers and the verified client identity,
    /// on TLS (as [`ClientIo::identity`]).
    pub identity: Option<(&'a IdentityHeaders, Option<&'a ClientIdentity>)>,
    pub client: Option<SocketAddr>,
    pub listener_port: u16,
}

impl<'a> Peer<'a> {
    /// The peer of a TCP client connection (HTTP/2).
    pub(crate) fn of_io(io: &'a ClientIo, client: Option<SocketAddr>, listener_port: u16) -> Self {
        Self {
            tls: io.stream.is_tls(),
            client_cn: io.client_cn(),
            identity: io.identity(),
            client,
            listener_port,
        }
    }
}

/// How the request body goes upstream (fixed per request; every attempt
/// starts from it).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ReqBody {
    None,
    /// `content-length` said how much: forwarded as is.
    Length(u64),
    /// No length: sent chunked.
    Chunked,
}

enum Step {
    Connect,
    Send,
    ReadHead,
    Response {
        body: Body,
        keep_upstream: bool,
    },
    /// Another request is fetching the same key: wait, then look up again.
    CacheWait {
        ticket: ferrogate_cache::WaitTicket,
        polls: u8,
        upstream: Arc<Upstream>,
        hash_key: u64,
    },
    /// A stored body going out as DATA; `pending`: the part of a chunk
    /// the window did not take yet.
    CacheServe {
        reader: ferrogate_cache::BodyReader,
        /// The deadline is the client's window timeout (else the
        /// object's poll interval).
        client_wait: bool,
        slice: crate::cache::BodySlice,
        pending: bytes::Bytes,
    },
    /// The client is gone while the response is stored: the rest of the
    /// origin's body goes into the object only.
    CacheFill(crate::detached_fill::DetachedFill),
    /// A local answer's body waits for window.
    Local {
        sent: usize,
    },
    Done,
}

/// Most octets of framing before one chunk: the CRLF ending the previous
/// chunk, then its size line ("\r\nffffffff\r\n").
const CHUNK_FRAMING: usize = 12;
/// Most response octets a stream sends per turn: streams of a connection
/// take turns (round robin), so one large response cannot hold the
/// connection's window and output room while the others wait.
const SEND_QUANTUM: usize = 16 * 1024;
/// The end of a chunked body after at least one chunk.
const CHUNKED_END: &[u8] = b"\r\n0\r\n\r\n";

/// A stream's two head-sized buffers, reused by the connection's next
/// streams (see `H2Conn::spare`).
pub(crate) struct StreamBufs {
    request_head: ByteBuf,
    from_upstream: ByteBuf,
}

impl StreamBufs {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            request_head: ByteBuf::with_capacity(size),
            from_upstream: ByteBuf::with_capacity(size),
        }
    }
}

pub(crate) struct MuxStream<P: ProxyHttp, C: ClientSide> {
    pub(crate) id: C::Id,
    att: Attempt,
    method: &'static str,
    is_head: bool,
    body: ReqBody,
    /// This attempt's progress through the body: octets left (`Length`),
    /// chunks sent (`Chunked`), all of it (and the chunked end) sent.
    body_left: u64,
    chunks: u64,
    body_done: bool,
    /// The client ended the request (END_STREAM, or trailers).
    pub(crate) request_ended: bool,
    /// The client's trailers (trailing HEADERS), cleaned and bounded: they
    /// go up in the chunked end when the upstream request is chunked.
    pub(crate) request_trailers: Vec<crate::http::TrailerField>,
    /// `request_body_filter` was told the body ended.
    body_end_seen: bool,
    body_sent: u64,
    /// The upstream request head (kept for retries); once the response head
    /// arrived, the scratch space its response fields are read from.
    request_head: ByteBuf,
    head_sent: usize,
    from_upstream: ByteBuf,
    /// The upstream answered before the whole request went up.
    abandoned: bool,
    step: Step,
    /// The connection has room for one more fill (`detach_fill`); set by
    /// the connection before the stream runs.
    pub(crate) fill_allowed: bool,
    local_body: Vec<u8>,
    route_id: Option<usize>,
    /// What the allow rule that matched the request changes.
    rewrite: crate::rules::Rewrites,
    /// The route's canary split of this request, and its arm.
    canary: Option<(Arc<crate::canary::Canary>, bool)>,
    /// The rewritten upstream target, when a rule rewrites it.
    target_buf: String,
    started: Instant,
    deadline: Instant,
    request_id: [u8; REQUEST_ID_MAX],
    request_id_len: usize,
    access: AccessRecord,
    pctx: P::Ctx,
    /// The cache's state for this request (caching routes), what it did,
    /// and the stored object being written from the origin's body.
    cache: Option<Box<crate::cache::CacheReq>>,
    cache_status: Option<ferrogate_cache::CacheStatus>,
    cache_writer: Option<crate::cache::Filler>,
    /// The response body goes through plugins' body phase.
    plugin_body: Option<Box<PluginBody>>,
    /// The request body goes through plugins' body phase.
    request_plugin_body: Option<Box<PluginBody>>,
}

/// An HTTP/2 or HTTP/3 request as the HTTP/1-shaped view the phases and
/// the router read: Host from `:authority` when the client sent none
/// (RFC 9113 §8.3.1, RFC 9114 §4.3.1).
fn fields<'a>(request: &'a Request) -> Result<Vec<Header<'a>>, ProxyError> {
    let bad = |why| ProxyError::BadRequest(HeadError::Malformed(why));
    let mut list = Vec::with_capacity(request.headers.len() + 1);
    if !request.headers.iter().any(|f| f.name == b"host") {
        list.push(Header {
            name: "host",
            value: &request.authority,
        });
    }
    for f in &request.headers {
        // Names were checked to be lowercase tokens: ASCII.
        let name = std::str::from_utf8(&f.name).map_err(|_| bad("field name"))?;
        list.push(Header {
            name,
            value: &f.value,
        });
    }
    Ok(list)
}

impl<P: ProxyHttp, C: ClientSide> MuxStream<P, C> {
    fn new(id: C::Id, now: Instant, mut bufs: StreamBufs) -> Self {
        bufs.request_head.clear();
        bufs.from_upstream.clear();
        Self {
            id,
            att: Attempt::default(),
            method: "OTHER",
            is_head: false,
            body: ReqBody::None,
            body_left: 0,
            chunks: 0,
            body_done: false,
            request_ended: false,
            body_end_seen: false,
            body_sent: 0,
            request_head: bufs.request_head,
            head_sent: 0,
            from_upstream: bufs.from_upstream,
            abandoned: false,
            step: Step::Done,
            fill_allowed: false,
            local_body: Vec::new(),
            route_id: None,
            rewrite: crate::rules::Rewrites::default(),
            canary: None,
            target_buf: String::new(),
            started: now,
            deadline: now,
            request_id: [0; REQUEST_ID_MAX],
            request_id_len: 0,
            access: AccessRecord::default(),
            pctx: P::Ctx::default(),
            cache: None,
            cache_status: None,
            cache_writer: None,
            plugin_body: None,
            request_plugin_body: None,
            request_trailers: Vec::new(),
        }
    }

    pub(crate) fn is_done(&self) -> bool {
        matches!(self.step, Step::Done)
    }

    /// The buffers, for the connection's next stream.
    pub(crate) fn into_bufs(self) -> StreamBufs {
        StreamBufs {
            request_head: self.request_head,
            from_upstream: self.from_upstream,
        }
    }

    /// Still waiting for request-body octets from the client.
    pub(crate) fn awaits_body(&self) -> bool {
        !self.request_ended && !self.is_done()
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    pub(crate) fn upstream_socket(&self) -> Option<crate::net::StreamId> {
        self.att.conn.as_ref().map(|u| u.handle)
    }

    /// A new request: routes it and starts its upstream attempt, or answers it.
    pub(crate) fn start(
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
        id: C::Id,
        request: Request,
        end_stream: bool,
        bufs: StreamBufs,
    ) -> Self {
        let mut st = Self::new(id, cx.now, bufs);
        cx.stats.requests += 1;
        C::count_request(cx.stats);
        st.request_ended = end_stream;
        st.route(cx, client, peer, &request);
        st
    }

    fn route(&mut self, cx: &mut Ctx<'_, P>, client: &mut C, peer: &Peer<'_>, r: &Request) {
        let bad = |why| ProxyError::BadRequest(HeadError::Malformed(why));
        let method = std::str::from_utf8(&r.method).unwrap_or("");
        self.method = crate::http::head::static_method(method);
        self.is_head = method == "HEAD";
        self.access.method.set(method.as_bytes());
        let Some(path) = &r.path else {
            // CONNECT (RFC 9113 §8.5): a tunnel, which this proxy does not open.
            return self.local_error(
                cx,
                client,
                peer,
                ProxyError::BadRequest(HeadError::Unsupported("CONNECT")),
            );
        };
        let list = match fields(r) {
            Ok(l) => l,
            Err(e) => return self.local_error(cx, client, peer, e),
        };
        let Ok(target) = std::str::from_utf8(path) else {
            return self.local_error(cx, client, peer, bad(":path is not UTF-8"));
        };
        let req = crate::http::Request {
            method,
            target,
            http10: false,
            headers: Headers::from_list(&list),
        };
        let host = head::request_host(&req);
        if host.is_none_or(|h| !head::valid_host(h.as_bytes())) {
            return self.local_error(cx, client, peer, bad("invalid :authority"));
        }
        set_request_id(&mut self.request_id, &mut self.request_id_len, &req, cx);
        let mut view = RequestView::new(method, host, target, req.headers);
        view.client_cn = peer.client_cn;
        let client_ip = peer
            .client
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]));
        let mut info = RequestInfo {
            view,
            target,
            http10: false,
            client_ip,
            listener_port: peer.listener_port,
            https: peer.tls,
            identity: peer.identity,
            request_id: &self.request_id[..self.request_id_len],
            client_sent_request_id: head::request_id(&req).is_some(),
            now: cx.now,
            looked_up: None,
        };
        self.access.host.set(host.unwrap_or("").as_bytes());
        self.access.path.set(target.as_bytes());
        self.access.request_id.set(info.request_id);
        let route = match choose_route(
            cx,
            &mut info,
            &mut self.pctx,
            &mut self.access,
            &mut self.rewrite,
            C::PROTOCOL.as_str(),
            !self.request_ended,
        ) {
            Routing::Route(route) => route,
            Routing::Respond(d) => return self.respond_direct(cx, client, peer, &d),
            Routing::Fail(e) => return self.local_error(cx, client, peer, e),
            Routing::NoRoute => return self.local_error(cx, client, peer, ProxyError::NoRoute),
        };
        self.route_id = Some(route.id);
        let mut canary_arm_taken = false;
        let upstream = match &route.action {
            RouteAction::Respond(d) => {
                let d = d.clone();
                return self.respond_direct(cx, client, peer, &d);
            }
            RouteAction::Proxy(upstream) => {
                let mut pool = rewritten_pool(&self.rewrite, upstream);
                if let Some(c) = &route.canary
                    && self.rewrite.pool().is_none()
                {
                    let arm = canary_arm(c, &info, cx);
                    canary_arm_taken = arm;
                    if arm {
                        pool = c.pool.clone();
                        cx.stats.canary_requests += 1;
                    }
                    if c.brake.is_some() && !c.tripped() {
                        self.canary = Some((c.clone(), arm));
                    }
                }
                pool
            }
        };
        let max = cx.cfg.max_request_body;
        if max > 0 && r.content_length.is_some_and(|n| n > max) {
            return self.local_error(cx, client, peer, ProxyError::BodyTooLarge);
        }
        self.body = match r.content_length {
            _ if self.request_ended => ReqBody::None,
            Some(0) => ReqBody::None,
            Some(n) => ReqBody::Length(n),
            None => ReqBody::Chunked,
        };
        // A plugin with a request body phase sees the body on its way up;
        // the client's length stands unless a request phase removed it
        // (the body will change): then it goes up chunked.
        let body_plugins = self.body != ReqBody::None
            && crate::plugin_phase::wants_request_body(cx.plugins, &self.rewrite.plugin);
        let kept_length = match self.body {
            ReqBody::Length(n) if !self.rewrite.plugin.request_unframed() => Some(n),
            _ => None,
        };
        let reframe = body_plugins && kept_length.is_none();
        if reframe {
            self.body = ReqBody::Chunked;
        }
        self.request_plugin_body =
            body_plugins.then(|| PluginBody::for_request(reframe, kept_length));
        let key = hash_key(&upstream, &info);
        let mut lookup = None;
        if let Some(rc) = &route.cache {
            let k = crate::cache::RequestKey {
                https: peer.tls,
                host: host.unwrap_or(""),
                target,
                method,
                headers: req.headers,
                has_body: self.body != ReqBody::None,
                route: &route.name,
                port: peer.listener_port,
                diverted: canary_arm_taken || self.rewrite.changes_request(),
                identity: peer.identity.is_some_and(|(_, id)| id.is_some()),
            };
            match crate::cache::lookup(cx.cache, rc, &k, cx.now) {
                crate::cache::Lookup::Serve(obj, s) => {
                    return self.serve_cached(cx, client, peer, &obj, s, crate::cache::Part::Whole);
                }
                l => lookup = Some(l),
            }
        }
        let caching = lookup
            .as_ref()
            .is_some_and(crate::cache::Lookup::strips_client_validators);
        let chunked = self.body == ReqBody::Chunked;
        let phases = cx.phases;
        let pctx = &mut self.pctx;
        self.request_head.clear();
        let rw = &self.rewrite;
        let upstream_req = crate::http::Request {
            target: rw.target(req.target, &mut self.target_buf),
            ..req
        };
        let written = head::write_upstream_request(
            &upstream_req,
            false,
            |name| {
                phases.strip_request_header(&info, name)
                    || rw.strips_request(name)
                    || (caching && crate::cache::is_client_validator(name))
                    || (reframe && name.eq_ignore_ascii_case("content-length"))
            },
            |lines| {
                phases.upstream_request_filter(&info, pctx, lines);
                rw.add_request(lines);
            },
            &mut cx.stats.header_lines_refused,
            &mut self.request_head,
        ) && (!chunked || {
            // A framing field, which phases may not add: ours, before the
            // blank line that ends the head.
            let out = &mut self.request_head;
            out.truncate(out.len() - 2);
            out.extend(b"Transfer-Encoding: chunked\r\n\r\n")
        });
        if !written {
            // Lines the plugins added that do not fit are theirs to answer
            // for, not the client's.
            let err = if self.rewrite.plugin.adds_request() {
                cx.stats.plugin_failures += 1;
                ProxyError::PluginFailed
            } else {
                ProxyError::BadRequest(HeadError::TooLarge)
            };
            return self.local_error(cx, client, peer, err);
        }
        let expects_continue = !self.request_ended
            && req.headers.iter().any(|h| {
                h.name == "expect" && h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue")
            });
        if expects_continue {
            // Answered here, as for HTTP/1: the origin never sees Expect.
            client.send_interim(self.id, 100);
        }
        match lookup {
            Some(l) => self.after_lookup(cx, client, peer, l, upstream, key),
            None => self.start_upstream(cx, client, peer, upstream, key),
        }
    }

    fn start_upstream(
        &mut self,
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
        pool: Arc<Upstream>,
        key: u64,
    ) {
        self.att.begin(cx, pool, key);
        match self.att.pick(cx) {
            Ok(ep) => self.use_endpoint(cx, client, peer, ep),
            Err(e) => self.local_error(cx, client, peer, e.into()),
        }
    }

    fn use_endpoint(&mut self, cx: &mut Ctx<'_, P>, client: &mut C, peer: &Peer<'_>, ep: usize) {
        match self.att.start(cx, ep) {
            Ok(Started::Reused) => self.begin_send(cx),
            Ok(Started::Connecting { deadline }) => {
                self.step = Step::Connect;
                self.deadline = deadline;
            }
            Err(e) => self.local_error(cx, client, peer, e),
        }
    }

    /// Starts an attempt's request: the head, then the body from its start
    /// (an attempt after the first only comes before any body octet left).
    fn begin_send(&mut self, cx: &mut Ctx<'_, P>) {
        if let Some(c) = self.cache.as_mut() {
            c.mark_sent(cx.cache.anchor.wall(cx.now));
        }
        debug_assert_eq!(self.body_sent, 0, "no retry once the body started");
        self.head_sent = 0;
        self.chunks = 0;
        (self.body_left, self.body_done) = match self.body {
            ReqBody::None => (0, true),
            ReqBody::Length(n) => (n, false),
            ReqBody::Chunked => (0, false),
        };
        self.step = Step::Send;
        self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
    }

    /// Moves the exchange on; true if anything moved.
    pub(crate) fn drive(&mut self, cx: &mut Ctx<'_, P>, client: &mut C, peer: &Peer<'_>) -> bool {
        let mut moved = false;
        if let Some(up) = self.att.conn.as_mut() {
            up.io.flush(&mut cx.net.stream(up.handle));
        }
        for _ in 0..8 {
            let step = match self.step {
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
                            self.upstream_failed(cx, client, peer, e);
                            true
                        }
                    }
                }
                Step::Send => self.send_request(cx, client, peer),
                Step::ReadHead => self.read_response_head(cx, client, peer),
                // One quantum per turn: the other streams get theirs first.
                Step::Response { .. } => return self.stream_response(cx, client) || moved,
                Step::Local { .. } => self.send_local(cx, client),
                Step::CacheWait { .. } => self.cache_wait(cx, client, peer),
                Step::CacheServe { .. } => return self.cache_serve(cx, client) || moved,
                Step::CacheFill { .. } => self.cache_fill(cx),
                Step::Done => false,
            };
            if !step {
                break;
            }
            moved = true;
        }
        moved
    }

    fn send_request(&mut self, cx: &mut Ctx<'_, P>, client: &mut C, peer: &Peer<'_>) -> bool {
        if self.early_response(cx, client) {
            return true;
        }
        let upc = self.att.conn.as_mut().expect("upstream");
        let up = &mut cx.net.stream(upc.handle);
        if !up.may_send() || upc.io.failed() {
            self.upstream_failed(cx, client, peer, ProxyError::UpstreamClosedEarly);
            return true;
        }
        let mut moved = false;
        let head = self.request_head.filled();
        if self.head_sent < head.len() {
            let n = upc.io.send(up, &head[self.head_sent..]);
            self.head_sent += n;
            moved |= n > 0;
        }
        let head_done = self.head_sent == self.request_head.len();
        if head_done && self.request_plugin_body.is_some() {
            return self.request_body_through_plugins(cx, client, peer) || moved;
        }
        let space = if head_done { upc.io.send_space(up) } else { 0 };
        let avail = client.request_body(self.id);
        let max = cx.cfg.max_request_body;
        let take = match self.body {
            _ if !head_done || self.body_done => 0,
            ReqBody::None => 0,
            ReqBody::Length(_) => self.body_left.min(avail.len() as u64).min(space as u64) as usize,
            ReqBody::Chunked => avail.len().min(space.saturating_sub(CHUNK_FRAMING)),
        };
        if max > 0 && self.body_sent + take as u64 > max {
            // Already streaming: the client gets 413, the upstream a reset.
            self.local_error(cx, client, peer, ProxyError::BodyTooLarge);
            return true;
        }
        let all_taken = match self.body {
            ReqBody::None => true,
            ReqBody::Length(_) => self.body_left == take as u64,
            ReqBody::Chunked => self.request_ended && take == avail.len(),
        };
        let end = head_done && all_taken && !self.body_end_seen;
        if take > 0 || end {
            if let Err(e) = cx
                .phases
                .request_body_filter(&avail[..take], end, &mut self.pctx)
            {
                self.local_error(cx, client, peer, e);
                return true;
            }
            self.body_end_seen |= end;
        }
        if take > 0 {
            let sent = if self.body == ReqBody::Chunked {
                // The previous chunk's CRLF rides with this chunk's size
                // line: one write per chunk, within the space checked.
                let mut prefix = [0u8; CHUNK_FRAMING];
                let n = chunk_prefix(self.chunks > 0, take, &mut prefix);
                self.chunks += 1;
                upc.io.send_parts(up, &prefix[..n], &avail[..take]) - n
            } else {
                self.body_left -= take as u64;
                upc.io.send(up, &avail[..take])
            };
            debug_assert_eq!(sent, take);
            client.consume_body(self.id, take);
            self.body_sent += take as u64;
            self.att.body_started = true;
            moved = true;
        }
        if head_done && all_taken && !self.body_done {
            if self.body == ReqBody::Chunked && !self.request_trailers.is_empty() {
                // The chunked end with the client's trailers (kept for a
                // retry, which sends them again).
                let mut end = Vec::with_capacity(256);
                if self.chunks > 0 {
                    end.extend_from_slice(b"\r\n");
                }
                crate::trailers::write_chunked_end(&self.request_trailers, &mut end);
                if upc.io.send_space(up) >= end.len() {
                    upc.io.send(up, &end);
                    self.body_done = true;
                    moved = true;
                    cx.stats.trailers_forwarded += 1;
                }
            } else if self.body == ReqBody::Chunked {
                let end: &[u8] = if self.chunks > 0 {
                    CHUNKED_END
                } else {
                    &CHUNKED_END[2..]
                };
                if upc.io.send_space(up) >= end.len() {
                    upc.io.send(up, end);
                    self.body_done = true;
                    moved = true;
                }
            } else {
                // A body that goes up with its length has no place for
                // the client's trailers: dropped, and counted.
                if !self.request_trailers.is_empty() {
                    self.request_trailers.clear();
                    cx.stats.trailers_dropped += 1;
                }
                self.body_done = true;
            }
        }
        if self.body_done && head_done {
            self.await_response(cx);
            return true;
        }
        if moved {
            self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
        } else if cx.now >= self.deadline {
            // Body octets wait for an upstream that stopped reading, or none
            // come from the client.
            let e = if head_done && client.request_body(self.id).is_empty() {
                ProxyError::ClientHeaderTimeout
            } else {
                ProxyError::UpstreamTimeout
            };
            self.local_error(cx, client, peer, e);
            return true;
        }
        moved
    }

    /// The request body through the plugins (see `proxy::plugin_body`),
    /// once the head went up: the client's DATA, piece by piece, takes the
    /// plugins' way, and what they pass on goes up framed.
    fn request_body_through_plugins(
        &mut self,
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
    ) -> bool {
        let Some(mut pb) = self.request_plugin_body.take() else {
            return false;
        };
        let mut moved = false;
        let max = cx.cfg.max_request_body;
        loop {
            if pb.pending() {
                let upc = self.att.conn.as_mut().expect("upstream");
                let up = &mut cx.net.stream(upc.handle);
                let n = upc.io.send(up, &pb.out[pb.sent..]);
                pb.sent += n;
                moved |= n > 0;
                if pb.pending() {
                    break;
                }
            }
            if pb.ended {
                self.body_done = true;
                self.await_response(cx);
                return true;
            }
            let avail = client.request_body(self.id);
            let take = avail.len().min(SEND_QUANTUM);
            let done = self.request_ended && take == avail.len();
            if take == 0 && !done {
                break;
            }
            if max > 0 && self.body_sent + take as u64 > max {
                self.local_error(cx, client, peer, ProxyError::BodyTooLarge);
                return true;
            }
            let mut payload = std::mem::take(&mut pb.payload);
            payload.clear();
            payload.extend_from_slice(&avail[..take]);
            client.consume_body(self.id, take);
            self.body_sent += take as u64;
            // Bytes of the body are the plugins' now: no retry can resend
            // them.
            self.att.body_started = true;
            let end = done && !self.body_end_seen;
            if !payload.is_empty() || end {
                if let Err(e) = cx.phases.request_body_filter(&payload, end, &mut self.pctx) {
                    self.local_error(cx, client, peer, e);
                    return true;
                }
                self.body_end_seen |= end;
            }
            if done {
                // The client's trailers go through the plugins' trailers
                // phase and up in the chunked end.
                pb.trailers = std::mem::take(&mut self.request_trailers);
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
                self.local_error(cx, client, peer, ProxyError::PluginFailed);
                return true;
            }
            moved = true;
        }
        self.request_plugin_body = Some(pb);
        if moved {
            self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
        } else if cx.now >= self.deadline {
            // Body octets wait for an upstream that stopped reading, or none
            // come from the client.
            let e = if client.request_body(self.id).is_empty() {
                ProxyError::ClientHeaderTimeout
            } else {
                ProxyError::UpstreamTimeout
            };
            self.local_error(cx, client, peer, e);
            return true;
        }
        moved
    }

    /// While the request is still going up: has the upstream answered
    /// already (an early 413, or an origin that does not read the body)?
    /// Then the rest of the body stays with the client and the answer goes
    /// out. 1xx heads on the way are handled as in `read_response_head`; an
    /// incomplete head keeps the request going.
    fn early_response(&mut self, cx: &mut Ctx<'_, P>, client: &mut C) -> bool {
        self.att.fill(cx, &mut self.from_upstream);
        loop {
            if self.from_upstream.is_empty() {
                return false;
            }
            let full = self.from_upstream.is_full();
            match head::parse_response(self.from_upstream.filled(), self.is_head, full) {
                Ok(Some(resp)) if resp.interim && resp.status != 101 => {
                    self.forward_interim(client, resp.status, resp.head_len)
                }
                Ok(None) => return false,
                // A final head, or a broken one: read_response_head says which.
                Ok(Some(_)) | Err(_) => break,
            }
        }
        let unsent = self.head_sent < self.request_head.len() || !self.body_done;
        if unsent {
            self.abandoned = true;
            cx.stats.early_responses += 1;
        }
        self.await_response(cx);
        true
    }

    /// Sends a 1xx head from the origin on (103 Early Hints and the like:
    /// HTTP/2 and HTTP/3 carry any number of them); 100 Continue was ours to
    /// send.
    fn forward_interim(&mut self, client: &mut C, status: u16, head_len: usize) {
        let head = &self.from_upstream.filled()[..head_len];
        let mut fields = Vec::new();
        if status != 100 && head::response_fields(head, &mut fields).is_some() {
            // A rule's removals hold for early hints too.
            let rw = &self.rewrite;
            fields.retain(|(n, _)| std::str::from_utf8(n).map_or(true, |n| !rw.strips_response(n)));
            let _ = client.send_head(self.id, status, &fields, false);
        }
        self.from_upstream.consume(head_len);
    }

    fn await_response(&mut self, cx: &mut Ctx<'_, P>) {
        self.step = Step::ReadHead;
        self.deadline = self.att.response_deadline(cx);
    }

    fn read_response_head(&mut self, cx: &mut Ctx<'_, P>, client: &mut C, peer: &Peer<'_>) -> bool {
        let got = self.att.fill(cx, &mut self.from_upstream);
        let open = self.att.may_recv(cx);
        let full = self.from_upstream.is_full();
        let resp = match head::parse_response(self.from_upstream.filled(), self.is_head, full) {
            Ok(Some(resp)) if resp.interim => {
                self.forward_interim(client, resp.status, resp.head_len);
                return true;
            }
            Ok(Some(resp)) if resp.status == 101 => {
                // No upgrade was asked for: HTTP/2 (and HTTP/3) has no protocol
                // switch.
                let why = match C::PROTOCOL {
                    crate::access::Protocol::Http3 => "101 to an HTTP/3 request",
                    _ => "101 to an HTTP/2 request",
                };
                let e = ProxyError::BadResponse(HeadError::Unsupported(why));
                self.upstream_failed(cx, client, peer, e);
                return true;
            }
            Ok(Some(resp)) => {
                if self.cache.is_some() && self.cache_response(cx, client, peer, &resp) {
                    return true;
                }
                resp
            }
            Ok(None) => {
                if !open {
                    let e = if self.from_upstream.is_empty() {
                        ProxyError::UpstreamClosedEarly
                    } else {
                        ProxyError::BadResponse(HeadError::Malformed("truncated head"))
                    };
                    self.upstream_failed(cx, client, peer, e);
                    return true;
                }
                if cx.now >= self.deadline {
                    self.upstream_failed(cx, client, peer, ProxyError::UpstreamTimeout);
                    return true;
                }
                return got > 0;
            }
            Err(e) => {
                self.upstream_failed(cx, client, peer, ProxyError::BadResponse(e));
                return true;
            }
        };
        // The request head is not needed any more (no retry after a
        // response): its buffer holds the client's response head.
        self.request_head.clear();
        let plugins = crate::plugin_phase::viewer_response(
            cx.plugins,
            &self.from_upstream.filled()[..resp.head_len],
            cx.now,
            &mut self.rewrite.plugin,
            cx.stats,
        );
        if let Err(e) = plugins {
            self.from_upstream.clear();
            self.cache_writer = None;
            self.local_error(cx, client, peer, e);
            return true;
        }
        let plugin_lines = self.rewrite.plugin.adds_response();
        let xcache = self.note_cache(cx);
        let status_header = cx.cache.edge.settings.status_header.as_deref();
        let phases = cx.phases;
        let info = ResponseInfo {
            request_id: &self.request_id[..self.request_id_len],
            now: cx.now,
        };
        let pctx = &mut self.pctx;
        let rw = &self.rewrite;
        let ok = head::write_client_response(
            &self.from_upstream.filled()[..resp.head_len],
            true,
            false,
            |name| rw.strips_response(name),
            |view, lines| {
                phases.response_filter(view, &info, pctx, lines);
                rw.add_response(lines);
                if let (Some(h), Some(s)) = (status_header, xcache) {
                    lines.add(h, s.as_str().as_bytes());
                }
            },
            &mut cx.stats.header_lines_refused,
            &mut self.request_head,
        );
        self.from_upstream.consume(resp.head_len);
        if !ok && plugin_lines {
            // The plugins' lines did not fit: their failure, not the
            // origin's (no retry, no breaker).
            cx.stats.plugin_failures += 1;
            self.from_upstream.clear();
            self.cache_writer = None;
            self.local_error(cx, client, peer, ProxyError::PluginFailed);
            return true;
        }
        if !ok {
            // Another endpoint may answer (a retry): its head goes through
            // the plugins afresh.
            self.rewrite.plugin.clear_response_edits();
            self.upstream_failed(
                cx,
                client,
                peer,
                ProxyError::BadResponse(HeadError::TooLarge),
            );
            return true;
        }
        let mut body = Body::from_framing(resp.framing);
        if let Body::Chunked(dec) = &mut body {
            // An HTTP/2 or HTTP/3 client gets a chunked origin's trailers as
            // a trailing HEADERS section.
            dec.capture_trailers();
        }
        let end = matches!(body, Body::Done);
        // With a body plugin the contexts end with the body, else with the
        // head. The announced length stands unless a plugin removed it (it
        // will change the body): then none goes out.
        let body_plugins =
            !end && crate::plugin_phase::wants_response_body(cx.plugins, &self.rewrite.plugin);
        let kept_length = match resp.framing {
            BodyFraming::Length(n) if !self.rewrite.plugin.response_unframed() => Some(n),
            _ => None,
        };
        if body_plugins {
            self.plugin_body = Some(PluginBody::new(false, kept_length));
        } else {
            self.end_plugins(cx);
        }
        let length = matches!(resp.framing, BodyFraming::Length(_))
            && (!body_plugins || kept_length.is_some());
        if !self.send_head(client, end, length) {
            // The stream is gone, or the head has more fields than fit.
            cx.stats.upstream_errors += 1;
            client.reset(self.id, StreamAbort::Internal);
            self.finish(cx, true);
            return true;
        }
        cx.stats.count_status(resp.status);
        self.log_access(cx, peer, resp.status, "");
        self.att.settle(cx, Some(!matches!(resp.status, 502..=504)));
        self.count_route_response(cx, resp.status);
        self.step = Step::Response {
            body,
            keep_upstream: resp.reusable && !self.abandoned,
        };
        // The body comes from the origin next: its read timeout applies.
        self.deadline = self.att.read_deadline(cx);
        true
    }

    /// Sends the HTTP/1 head in `request_head` as HEADERS. `content-length`
    /// goes only with a body of that length: an origin's chunked response
    /// that also names a length (RFC 9112 §6.3 says chunked wins) would
    /// otherwise be a malformed HTTP/2 response (RFC 9113 §8.1.1; RFC 9114
    /// §4.1.2 for HTTP/3).
    fn send_head(&mut self, client: &mut C, end_stream: bool, length: bool) -> bool {
        let mut list = Vec::with_capacity(16);
        let Some(status) = head::response_fields(self.request_head.filled(), &mut list) else {
            return false;
        };
        if !length {
            list.retain(|(n, _)| !n.eq_ignore_ascii_case(b"content-length"));
        }
        client.send_head(self.id, status, &list, end_stream).is_ok()
    }

    fn stream_response(&mut self, cx: &mut Ctx<'_, P>, client: &mut C) -> bool {
        if self.plugin_body.is_some() {
            return self.stream_plugin_body(cx, client);
        }
        let mut moved = self.att.fill(cx, &mut self.from_upstream) > 0;
        let open = self.att.may_recv(cx);
        let id = self.id;
        let cap = client.send_capacity(id).min(SEND_QUANTUM);
        let Step::Response {
            body,
            keep_upstream,
        } = &mut self.step
        else {
            unreachable!()
        };
        let avail = self.from_upstream.filled();
        let window = &avail[..avail.len().min(cap)];
        let chunked_input = avail;
        let phases = cx.phases;
        let pctx = &mut self.pctx;
        let mut sent_ok = true;
        let (used, done) = match body {
            Body::Done => (0, true),
            Body::Length(n) => {
                let t = (*n).min(window.len() as u64) as usize;
                *n -= t as u64;
                let end = *n == 0;
                if let Some(w) = &mut self.cache_writer
                    && t > 0
                {
                    w.push(&window[..t]);
                }
                if t > 0 || end {
                    phases.response_body_filter(&window[..t], end, pctx);
                    sent_ok = client.send_data(id, &window[..t], end).is_ok();
                }
                (t, end)
            }
            Body::Chunked(dec) => {
                // Framing costs no window: the whole input, a payload
                // budget. Run by run: every DATA frame's header takes output
                // room too, so the capacity is read again before each run
                // (one grant spent over several sends would pass it).
                let writer = &mut self.cache_writer;
                let mut quantum = SEND_QUANTUM;
                let mut taken = 0;
                let fed = loop {
                    let budget = client.send_capacity(id).min(quantum);
                    let piece = dec.feed_piece(&chunked_input[taken..], budget, |data| {
                        if let Some(w) = writer.as_mut() {
                            w.push(data);
                        }
                        phases.response_body_filter(data, false, pctx);
                        sent_ok &= client.send_data(id, data, false).is_ok();
                        quantum -= data.len();
                    });
                    match piece {
                        Ok(0) => break Ok(taken),
                        Ok(n) => {
                            taken += n;
                            if dec.is_done() || !sent_ok {
                                break Ok(taken);
                            }
                        }
                        Err(e) => break Err(e),
                    }
                };
                match fed {
                    Ok(n) => {
                        let end = dec.is_done();
                        if end {
                            phases.response_body_filter(&[], true, pctx);
                            let trailers = crate::trailers::take(dec, cx.stats);
                            sent_ok &= if trailers.is_empty() {
                                client.send_data(id, &[], true).is_ok()
                            } else {
                                cx.stats.trailers_forwarded += 1;
                                crate::trailers::send(client, id, &trailers).is_ok()
                            };
                        }
                        (n, end)
                    }
                    Err(e) => {
                        cx.stats.upstream_errors += 1;
                        tracing::debug!(error = %ProxyError::BadResponseBody(e), "aborting {} response", C::PROTOCOL.as_str());
                        client.reset(id, StreamAbort::Internal);
                        self.finish(cx, true);
                        return true;
                    }
                }
            }
            Body::UntilClose => {
                let end = !open && avail.len() == window.len();
                if let Some(w) = &mut self.cache_writer
                    && !window.is_empty()
                {
                    w.push(window);
                }
                if !window.is_empty() || end {
                    phases.response_body_filter(window, end, pctx);
                    sent_ok = client.send_data(id, window, end).is_ok();
                }
                (window.len(), end)
            }
        };
        let keep_upstream = *keep_upstream;
        if self
            .cache_writer
            .as_ref()
            .is_some_and(crate::cache::Filler::stop)
        {
            self.cache_writer = None;
        }
        self.from_upstream.consume(used);
        moved |= used > 0;
        if !sent_ok {
            // The stream is gone (the client reset it): nothing to send to,
            // but a body being stored is read on for its other readers.
            if !self.detach_fill(cx) {
                self.finish(cx, true);
            }
            return true;
        }
        if done {
            self.response_done(cx, keep_upstream);
            return true;
        }
        if !open && self.from_upstream.is_empty() {
            // Truncated by the origin: the client must not take it as whole.
            cx.stats.upstream_errors += 1;
            client.reset(id, StreamAbort::Internal);
            self.finish(cx, true);
            return true;
        }
        // The deadline follows the side the stream waits on: the client to
        // open its window for buffered bytes (client_idle), or the origin
        // to send more (the read timeout, as on HTTP/1).
        let waiting_on_client = !self.from_upstream.is_empty();
        if moved {
            self.deadline = if waiting_on_client {
                after(cx.now, cx.cfg.timeouts.client_idle)
            } else {
                self.att.read_deadline(cx)
            };
        } else if cx.now >= self.deadline {
            if waiting_on_client {
                C::count_stalled_reset(cx.stats);
                client.reset(id, StreamAbort::Cancel);
                // The client stopped reading: the object is read on for
                // its other readers.
                if self.detach_fill(cx) {
                    return true;
                }
            } else {
                // The origin went silent mid-body: the client must not
                // take the short body as whole.
                cx.stats.upstream_errors += 1;
                client.reset(id, StreamAbort::Internal);
            }
            self.finish(cx, true);
            return true;
        }
        moved
    }

    /// The whole body went out: the upstream connection is kept or
    /// closed, the stream is done.
    fn response_done(&mut self, cx: &mut Ctx<'_, P>, keep_upstream: bool) {
        if let Some(w) = self.cache_writer.take() {
            w.finish();
        }
        if let Some(up) = self.att.conn.as_mut() {
            up.served += 1;
        }
        // Bytes past the end of the body mean the upstream is out of
        // step (an origin error, counted as on HTTP/1).
        let out_of_step = !self.from_upstream.is_empty();
        if out_of_step && keep_upstream {
            cx.stats.upstream_errors += 1;
        }
        if keep_upstream && !out_of_step {
            self.att.release(cx);
        } else {
            self.att.close(cx, false);
        }
        self.step = Step::Done;
    }

    /// One quantum of a response whose body the plugins see (see
    /// `proxy::plugin_body`): their output goes out as DATA.
    fn stream_plugin_body(&mut self, cx: &mut Ctx<'_, P>, client: &mut C) -> bool {
        let Some(mut pb) = self.plugin_body.take() else {
            return false;
        };
        let id = self.id;
        let mut moved = false;
        let mut turn = 0;
        loop {
            match send_plugin_output(&mut pb, client, cx.stats, id, &mut turn, &mut moved) {
                SendStep::Go => {}
                SendStep::Wait => break,
                SendStep::Reset => {
                    // The client reset the stream: a body being stored is
                    // read on for its other readers, as without plugins.
                    if !self.detach_fill(cx) {
                        self.finish(cx, true);
                    }
                    return true;
                }
            }
            if pb.end_sent {
                let Step::Response { keep_upstream, .. } = self.step else {
                    unreachable!("plugin body outside a response")
                };
                cx.phases.response_body_filter(&[], true, &mut self.pctx);
                self.end_plugins(cx);
                self.response_done(cx, keep_upstream);
                return true;
            }
            moved |= self.att.fill(cx, &mut self.from_upstream) > 0;
            let open = self.att.may_recv(cx);
            let Step::Response { body, .. } = &mut self.step else {
                unreachable!("plugin body outside a response")
            };
            match pb.pull(
                cx,
                &self.rewrite.plugin,
                body,
                &mut self.from_upstream,
                open,
                &mut self.cache_writer,
                &mut self.pctx,
            ) {
                Pulled::Nothing => break,
                Pulled::Piece => moved = true,
                Pulled::Broken => {
                    client.reset(id, StreamAbort::Internal);
                    self.finish(cx, true);
                    return true;
                }
                // This client's plugin failed, not the origin: a body
                // being stored is read on for its other readers.
                Pulled::PluginFailed => {
                    client.reset(id, StreamAbort::Internal);
                    if !self.detach_fill(cx) {
                        self.finish(cx, true);
                    }
                    return true;
                }
            }
        }
        let waiting_on_client = pb.pending();
        self.plugin_body = Some(pb);
        if moved {
            self.deadline = if waiting_on_client {
                after(cx.now, cx.cfg.timeouts.client_idle)
            } else {
                self.att.read_deadline(cx)
            };
        } else if cx.now >= self.deadline {
            if waiting_on_client {
                C::count_stalled_reset(cx.stats);
                client.reset(id, StreamAbort::Cancel);
                // The client stopped reading: the object is read on for
                // its other readers.
                if self.detach_fill(cx) {
                    return true;
                }
            } else {
                cx.stats.upstream_errors += 1;
                client.reset(id, StreamAbort::Internal);
            }
            self.finish(cx, true);
            return true;
        }
        moved
    }

    fn upstream_failed(
        &mut self,
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
        err: ProxyError,
    ) {
        self.from_upstream.clear();
        // A body being stored came from this attempt's response.
        self.cache_writer = None;
        let framing = match self.body {
            ReqBody::None => BodyFraming::None,
            ReqBody::Length(n) => BodyFraming::Length(n),
            ReqBody::Chunked => BodyFraming::Chunked,
        };
        match self
            .att
            .failed(cx, err, Some((self.method, framing)), self.route_id)
        {
            Ok(ep) => self.use_endpoint(cx, client, peer, ep),
            Err(e) => self.local_error(cx, client, peer, e),
        }
    }

    /// Answers with the error's status.
    fn local_error(
        &mut self,
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
        err: ProxyError,
    ) {
        if err.side() == crate::error::Side::Upstream && self.stale_for_error(cx, client, peer) {
            return;
        }
        self.end_plugins(cx);
        self.note_cache(cx);
        self.cache = None;
        self.cache_writer = None;
        if err.side() == crate::error::Side::Client {
            cx.stats.bad_requests += 1;
        }
        if let Some(id) = self.route_id
            && err.side() == crate::error::Side::Upstream
        {
            cx.route_stats.get_mut(id).upstream_errors += 1;
        }
        self.att.settle(cx, None);
        self.att.close(cx, true);
        let status = err.status();
        let phases = cx.phases;
        let info = ResponseInfo {
            request_id: &self.request_id[..self.request_id_len],
            now: cx.now,
        };
        let body = head::reason(status).as_bytes();
        self.request_head.clear();
        let mut refused = 0;
        let ok = head::write_local_response(
            &head::LocalResponse {
                status,
                content_type: "text/plain",
                body,
                keep_alive: true,
                include_body: false,
            },
            |lines| phases.error_response_filter(&err, &info, lines),
            &mut refused,
            &mut self.request_head,
        );
        cx.stats.header_lines_refused += refused;
        self.answer(cx, client, peer, status, ok, body, err.code());
    }

    fn respond_direct(
        &mut self,
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
        d: &DirectResponse,
    ) {
        self.request_head.clear();
        let ok = head::write_local_response(
            &head::LocalResponse {
                status: d.status,
                content_type: &d.content_type,
                body: &d.body,
                keep_alive: true,
                include_body: false,
            },
            |lines| {
                crate::proxy::direct_lines(d, lines);
                self.rewrite.plugin.add_response(lines);
            },
            &mut cx.stats.header_lines_refused,
            &mut self.request_head,
        );
        self.end_plugins(cx);
        self.rewrite.plugin.clear_edits();
        self.answer(cx, client, peer, d.status, ok, &d.body, "");
    }

    /// Sends a local answer whose head is in `request_head`.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        cx: &mut Ctx<'_, P>,
        client: &mut C,
        peer: &Peer<'_>,
        status: u16,
        head_ok: bool,
        body: &[u8],
        code: &'static str,
    ) {
        // HEAD, and statuses without content (204, 205, 304), send none.
        let body = if self.is_head || !head::status_allows_body(status) {
            &[][..]
        } else {
            body
        };
        let sent = head_ok && self.send_head(client, body.is_empty(), true);
        // Counted and logged as what goes out: a head that did not fit is
        // answered with a bare 500.
        let status = if sent { status } else { status.max(500) };
        cx.stats.responses_local += 1;
        cx.stats.count_status(status);
        self.count_route_response(cx, status);
        self.log_access(cx, peer, status, code);
        if !sent {
            // The phases' lines did not fit, or the stream is gone.
            if client.send_head(self.id, status, &[], true).is_err() {
                client.reset(self.id, StreamAbort::Internal);
            }
            self.step = Step::Done;
            return;
        }
        if body.is_empty() {
            self.step = Step::Done;
        } else {
            self.local_body.clear();
            self.local_body.extend_from_slice(body);
            self.step = Step::Local { sent: 0 };
            self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
        }
    }

    fn send_local(&mut self, cx: &mut Ctx<'_, P>, client: &mut C) -> bool {
        let Step::Local { sent } = &mut self.step else {
            unreachable!()
        };
        let rest = &self.local_body[*sent..];
        let n = rest.len().min(client.send_capacity(self.id));
        if n == 0 {
            if cx.now >= self.deadline {
                C::count_stalled_reset(cx.stats);
                client.reset(self.id, StreamAbort::Cancel);
                self.step = Step::Done;
                return true;
            }
            return false;
        }
        let end = n == rest.len();
        if client.send_data(self.id, &rest[..n], end).is_err() || end {
            self.step = Step::Done;
            return true;
        }
        *sent += n;
        true
    }

    fn count_route_response(&mut self, cx: &mut Ctx<'_, P>, status: u16) {
        if let Some(id) = self.route_id {
            let us = (cx.now - self.started).total_micros();
            cx.route_stats.get_mut(id).count_response(status, us);
            let now_us = cx.now.total_micros().max(0) as u64;
            canary_record(cx.stats, self.canary.take(), status, us, now_us);
        }
    }

    fn log_access(
        &mut self,
        cx: &mut Ctx<'_, P>,
        peer: &Peer<'_>,
        status: u16,
        error: &'static str,
    ) {
        let a = &mut self.access;
        a.at_us = cx.now.total_micros();
        a.duration_us = (cx.now - self.started).total_micros();
        a.status = status;
        a.client = peer.client;
        a.listener_port = peer.listener_port;
        a.tls = peer.tls;
        a.protocol = C::PROTOCOL;
        a.upstream = self.att.conn.as_ref().map(|u| u.endpoint);
        a.retries = self.att.retries;
        a.error = error;
        emit_access(cx, a, &mut self.pctx);
    }

    /// Ends the exchange now (the client reset the stream, the connection
    /// ends, or the response broke): the pick is given back, the upstream
    /// connection closed (`reset`: aborted).
    pub(crate) fn finish(&mut self, cx: &mut Ctx<'_, P>, reset: bool) {
        self.plugin_body = None;
        self.request_plugin_body = None;
        // Given up before a response: against its canary arm.
        if self.canary.is_some() {
            let us = (cx.now - self.started).total_micros();
            let now_us = cx.now.total_micros().max(0) as u64;
            canary_record(cx.stats, self.canary.take(), 499, us, now_us);
        }
        self.att.settle(cx, None);
        self.att.close(cx, reset);
        self.from_upstream.clear();
        // A body being stored is aborted: its readers see it end short.
        self.cache = None;
        self.cache_writer = None;
        self.end_plugins(cx);
        self.step = Step::Done;
    }

    /// Ends the request's plugin contexts (see `plugin_phase::finish`):
    /// every way a stream ends comes here.
    pub(crate) fn end_plugins(&mut self, cx: &mut Ctx<'_, P>) {
        crate::plugin_phase::finish(cx.plugins, &mut self.rewrite.plugin, cx.stats);
    }
}

/// Writes what goes before a chunk of `size` octets into `out` (the CRLF
/// that ends the previous chunk, if any, then `<hex>\r\n`); its length.
fn chunk_prefix(after_chunk: bool, size: usize, out: &mut [u8; CHUNK_FRAMING]) -> usize {
    use std::io::Write as _;
    let mut w = &mut out[..];
    let before = w.len();
    let crlf = if after_chunk { "\r\n" } else { "" };
    let _ = write!(w, "{crlf}{size:x}\r\n");
    before - w.len()
}

/// What sending a plugin body's output as DATA left to do.
enum SendStep {
    /// All sent (or nothing to send): take the next piece.
    Go,
    /// Flow control or this turn's quantum: the next turn goes on.
    Wait,
    /// The client reset the stream.
    Reset,
}

/// Sends what the plugins made (`pb.out`), and END_STREAM once it ended,
/// within the stream's window and one [`SEND_QUANTUM`] per turn (`turn`:
/// sent so far this turn).
fn send_plugin_output<C: ClientSide>(
    pb: &mut PluginBody,
    client: &mut C,
    stats: &mut crate::stats::StackStats,
    id: C::Id,
    turn: &mut usize,
    moved: &mut bool,
) -> SendStep {
    if !pb.pending() && (!pb.ended || pb.end_sent) {
        return SendStep::Go;
    }
    let cap = client.send_capacity(id).min(SEND_QUANTUM);
    let rest = &pb.out[pb.sent..];
    let n = rest.len().min(cap);
    let last = pb.ended && n == rest.len();
    if n == 0 && !last {
        return SendStep::Wait;
    }
    // Trailers end the stream themselves (trailing HEADERS).
    let trailers = last && !pb.trailers.is_empty();
    if (n > 0 || !trailers) && client.send_data(id, &rest[..n], last && !trailers).is_err() {
        return SendStep::Reset;
    }
    if trailers {
        if crate::trailers::send(client, id, &pb.trailers).is_err() {
            return SendStep::Reset;
        }
        stats.trailers_forwarded += 1;
    }
    pb.sent += n;
    pb.end_sent = last;
    *moved = true;
    *turn += n;
    // One quantum per turn: the other streams get theirs.
    if pb.pending() || *turn >= SEND_QUANTUM {
        SendStep::Wait
    } else {
        SendStep::Go
    }
}
