//! One client connection's HTTP/1.1 proxy state machine. It moves bytes
//! between the client socket and an upstream socket of the same stack, parses
//! heads, applies the route, and decides keep-alive, retries and errors.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use smoltcp::iface::Context;
use smoltcp::socket::tcp;
use smoltcp::time::Instant;
use smoltcp::wire::IpEndpoint;

use crate::config::StackConfig;
use crate::error::ProxyError;
use crate::http::head::{self, MAX_HEADERS};
use crate::http::{BodyFraming, ByteBuf, ChunkedDecoder, RequestHead};
use crate::ports::PortAllocator;
use crate::route::{RouteAction, RouteTable, Upstream};
use crate::sockets::{SockId, SocketTable};
use crate::stats::StackStats;

/// Buffers of one connection, recycled between connections.
pub(crate) struct ConnBufs {
    /// Bytes from the client not yet handled (request heads and bodies).
    from_client: ByteBuf,
    /// Bytes from the upstream not yet handled (response heads and bodies).
    from_upstream: ByteBuf,
    /// The rewritten request head, kept until a response arrives (retries).
    request_head: ByteBuf,
    /// A response head or local response waiting to go to the client.
    to_client: ByteBuf,
}

impl ConnBufs {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            from_client: ByteBuf::with_capacity(size),
            from_upstream: ByteBuf::with_capacity(size),
            request_head: ByteBuf::with_capacity(size),
            to_client: ByteBuf::with_capacity(size),
        }
    }

    fn clear(&mut self) {
        self.from_client.clear();
        self.from_upstream.clear();
        self.request_head.clear();
        self.to_client.clear();
    }
}

struct UpstreamConn {
    handle: SockId,
    local_port: u16,
    endpoint: SocketAddr,
    /// Requests completed on this connection (0: fresh).
    served: u32,
}

enum Body {
    Done,
    Length(u64),
    Chunked(ChunkedDecoder),
    UntilClose,
}

impl Body {
    fn from_framing(f: BodyFraming) -> Self {
        match f {
            BodyFraming::None => Body::Done,
            BodyFraming::Length(n) => Body::Length(n),
            BodyFraming::Chunked => Body::Chunked(ChunkedDecoder::new()),
            BodyFraming::UntilClose => Body::UntilClose,
        }
    }
}

enum Phase {
    ReadHead,
    WriteLocal {
        keep: bool,
    },
    Connect,
    SendRequest {
        head_sent: usize,
        body: Body,
    },
    ReadResponseHead,
    StreamResponse {
        body: Body,
        keep_client: bool,
        keep_upstream: bool,
    },
    Close,
    Finished,
}

/// Everything of the stack a connection may touch while it runs.
pub(crate) struct Ctx<'a> {
    /// Every socket of the stack; a connection touches only its own.
    pub sockets: &'a mut SocketTable,
    pub iface: &'a mut Context,
    /// This connection's index in the stack, recorded as the owner of the
    /// sockets it opens so that their frames and timers wake it.
    pub conn: u32,
    pub ports: &'a mut PortAllocator,
    pub routes: &'a RouteTable,
    pub stats: &'a mut StackStats,
    pub cfg: &'a StackConfig,
    pub rr_cursor: &'a mut usize,
    pub now: Instant,
}

impl Ctx<'_> {
    fn tcp(&mut self, h: SockId) -> &mut tcp::Socket<'static> {
        self.sockets.tcp(h)
    }

    /// Opens an upstream connection owned by this connection.
    fn connect(&mut self, remote: IpEndpoint, local_port: u16) -> Option<SockId> {
        self.sockets
            .connect(self.iface, self.cfg, self.conn, remote, local_port)
    }

    /// Hands a socket back to the stack to close (FIN) or reset and reuse.
    fn retire(&mut self, h: SockId, local_port: Option<u16>, reset: bool) {
        let linger =
            smoltcp::time::Duration::from_micros(self.cfg.timeouts.linger.as_micros() as u64);
        self.sockets.retire(h, local_port, reset, self.now, linger);
    }
}

pub(crate) struct Conn {
    client: SockId,
    client_ip: Option<IpAddr>,
    listener_port: u16,
    upstream: Option<UpstreamConn>,
    upstream_pool: Option<Arc<Upstream>>,
    request: Option<RequestHead>,
    attempts: u8,
    phase: Phase,
    deadline: Instant,
    bufs: ConnBufs,
}

fn after(now: Instant, d: std::time::Duration) -> Instant {
    now + smoltcp::time::Duration::from_micros(d.as_micros() as u64)
}

impl Conn {
    pub(crate) fn new(
        client: SockId,
        listener_port: u16,
        mut bufs: ConnBufs,
        cfg: &StackConfig,
        now: Instant,
    ) -> Self {
        bufs.clear();
        Self {
            client,
            client_ip: None,
            listener_port,
            upstream: None,
            upstream_pool: None,
            request: None,
            attempts: 0,
            phase: Phase::ReadHead,
            deadline: after(now, cfg.timeouts.client_header),
            bufs,
        }
    }

    pub(crate) fn is_finished(&self) -> bool {
        matches!(self.phase, Phase::Finished)
    }

    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The client socket and the current upstream socket, if any.
    pub(crate) fn sockets(&self) -> (SockId, Option<SockId>) {
        (self.client, self.upstream.as_ref().map(|u| u.handle))
    }

    /// Hands back the buffers and the sockets still open, for recycling.
    pub(crate) fn into_parts(self) -> (ConnBufs, SockId, Option<(SockId, u16)>) {
        (
            self.bufs,
            self.client,
            self.upstream.map(|u| (u.handle, u.local_port)),
        )
    }

    /// Runs the state machine until it cannot progress. True if anything moved.
    pub(crate) fn drive(&mut self, cx: &mut Ctx<'_>) -> bool {
        let mut progressed = false;
        for _ in 0..16 {
            let step = match self.phase {
                Phase::ReadHead => self.read_head(cx),
                Phase::WriteLocal { keep } => self.write_local(cx, keep),
                Phase::Connect => self.connect(cx),
                Phase::SendRequest { .. } => self.send_request(cx),
                Phase::ReadResponseHead => self.read_response_head(cx),
                Phase::StreamResponse { .. } => self.stream_response(cx),
                Phase::Close => self.close(cx),
                Phase::Finished => false,
            };
            if !step {
                break;
            }
            progressed = true;
        }
        progressed
    }

    fn client_gone(&self, cx: &mut Ctx<'_>) -> bool {
        !cx.tcp(self.client).is_active()
    }

    /// Reads what the client socket has into `from_client`.
    fn fill_from_client(&mut self, cx: &mut Ctx<'_>) -> usize {
        let sock = cx.tcp(self.client);
        if self.client_ip.is_none() {
            self.client_ip = sock.remote_endpoint().map(|e| e.addr.into());
        }
        if !sock.can_recv() {
            return 0;
        }
        let space = self.bufs.from_client.space();
        let n = sock.recv_slice(space).unwrap_or(0);
        self.bufs.from_client.commit(n);
        n
    }

    fn read_head(&mut self, cx: &mut Ctx<'_>) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, false);
            return true;
        }
        let got = self.fill_from_client(cx);
        if self.bufs.from_client.is_empty() {
            let sock = cx.tcp(self.client);
            if sock.state() != tcp::State::SynReceived && !sock.may_recv() {
                // Client finished sending and has nothing pending: done.
                self.phase = Phase::Close;
                return true;
            }
            if cx.now >= self.deadline {
                // Idle keep-alive connection or a silent new one: close quietly.
                self.phase = Phase::Close;
                return true;
            }
            return got > 0;
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let full = self.bufs.from_client.is_full();
        let parsed = head::parse_request(self.bufs.from_client.filled(), &mut headers, full);
        let (req, info) = match parsed {
            Ok(Some(p)) => p,
            Ok(None) => {
                let sock = cx.tcp(self.client);
                if !sock.may_recv() {
                    // Truncated head followed by FIN.
                    let e = ProxyError::BadRequest(head::HeadError::Malformed("truncated head"));
                    return self.fail_to_client(cx, e);
                }
                if cx.now >= self.deadline {
                    return self.fail_to_client(cx, ProxyError::ClientHeaderTimeout);
                }
                return got > 0;
            }
            Err(e) => return self.fail_to_client(cx, ProxyError::BadRequest(e)),
        };
        cx.stats.requests += 1;
        let host = head::request_host(&req);
        let path = req.path.unwrap_or("/");
        let route = cx
            .routes
            .listener(self.listener_port)
            .and_then(|l| l.route(host, path));
        let Some(route) = route else {
            // Skipping an unread body is not worth it for a 404: close after.
            let keep = info.keep_alive && info.framing == BodyFraming::None;
            self.bufs.from_client.consume(info.head_len);
            return self.local_error(cx, ProxyError::NoRoute, keep);
        };
        match &route.action {
            RouteAction::Respond(r) => {
                let keep = info.keep_alive && info.framing == BodyFraming::None;
                self.bufs.to_client.clear();
                let r = r.clone();
                let ok = head::write_local_response(
                    r.status,
                    &r.content_type,
                    &r.body,
                    keep,
                    !info.is_head,
                    &mut self.bufs.to_client,
                );
                self.bufs.from_client.consume(info.head_len);
                cx.stats.responses_local += 1;
                cx.stats.count_status(r.status);
                if !ok {
                    // Direct body larger than the head buffer: configuration
                    // validation bounds it, so this is an internal error.
                    self.bufs.to_client.clear();
                    head::write_local_response(
                        500,
                        "text/plain",
                        b"",
                        false,
                        true,
                        &mut self.bufs.to_client,
                    );
                    self.phase = Phase::WriteLocal { keep: false };
                } else {
                    self.phase = Phase::WriteLocal { keep };
                }
                true
            }
            RouteAction::Proxy(upstream) => {
                let upstream = upstream.clone();
                let client_ip = self.client_ip.unwrap_or(IpAddr::from([0, 0, 0, 0]));
                self.bufs.request_head.clear();
                if !head::write_upstream_request(&req, client_ip, &mut self.bufs.request_head) {
                    self.bufs.from_client.consume(info.head_len);
                    return self
                        .fail_to_client(cx, ProxyError::BadRequest(head::HeadError::TooLarge));
                }
                self.bufs.from_client.consume(info.head_len);
                if info.expect_continue {
                    // Answer the expectation ourselves; the upstream never sees it.
                    let _ = cx
                        .tcp(self.client)
                        .send_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
                }
                self.request = Some(info);
                self.attempts = 0;
                self.start_upstream(cx, upstream)
            }
        }
    }

    /// Uses the kept-alive upstream connection or opens a new one.
    fn start_upstream(&mut self, cx: &mut Ctx<'_>, pool: Arc<Upstream>) -> bool {
        let same_pool = self
            .upstream_pool
            .as_ref()
            .is_some_and(|p| Arc::ptr_eq(p, &pool) || p.name == pool.name);
        if let Some(up) = &self.upstream {
            let sock = cx.tcp(up.handle);
            if same_pool && sock.state() == tcp::State::Established && sock.may_send() {
                cx.stats.upstream_reused += 1;
                self.begin_send();
                return true;
            }
            self.drop_upstream(cx, false);
        }
        self.upstream_pool = Some(pool);
        self.open_upstream(cx)
    }

    fn open_upstream(&mut self, cx: &mut Ctx<'_>) -> bool {
        let pool = self.upstream_pool.clone().expect("pool chosen");
        if pool.endpoints.is_empty() {
            return self.fail_to_client(cx, ProxyError::UpstreamConnectFailed);
        }
        let endpoint = pool.endpoints[*cx.rr_cursor % pool.endpoints.len()];
        *cx.rr_cursor = cx.rr_cursor.wrapping_add(1);
        let Some(port) = cx.ports.alloc() else {
            return self.fail_to_client(cx, ProxyError::NoLocalPort);
        };
        let remote = IpEndpoint::new(endpoint.ip().into(), endpoint.port());
        let Some(handle) = cx.connect(remote, port) else {
            cx.ports.free(port);
            return self.fail_to_client(cx, ProxyError::UpstreamConnectFailed);
        };
        cx.stats.upstream_connects += 1;
        self.upstream = Some(UpstreamConn {
            handle,
            local_port: port,
            endpoint,
            served: 0,
        });
        self.phase = Phase::Connect;
        self.deadline = after(cx.now, cx.cfg.timeouts.upstream_connect);
        true
    }

    fn begin_send(&mut self) {
        let framing = self.request.map(|r| r.framing).unwrap_or(BodyFraming::None);
        self.phase = Phase::SendRequest {
            head_sent: 0,
            body: Body::from_framing(framing),
        };
    }

    fn connect(&mut self, cx: &mut Ctx<'_>) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, false);
            return true;
        }
        let up = self.upstream.as_ref().expect("connecting upstream");
        match cx.tcp(up.handle).state() {
            tcp::State::Established => {
                self.begin_send();
                true
            }
            tcp::State::Closed | tcp::State::TimeWait => {
                self.upstream_failed(cx, ProxyError::UpstreamConnectFailed)
            }
            _ if cx.now >= self.deadline => {
                self.upstream_failed(cx, ProxyError::UpstreamConnectTimeout)
            }
            _ => false,
        }
    }

    fn send_request(&mut self, cx: &mut Ctx<'_>) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, false);
            return true;
        }
        let up_handle = self.upstream.as_ref().expect("upstream").handle;
        let Phase::SendRequest { head_sent, body } = &mut self.phase else {
            unreachable!()
        };
        let mut moved = false;
        let up = cx.tcp(up_handle);
        if !up.may_send() {
            return self.upstream_failed(cx, ProxyError::UpstreamClosedEarly);
        }
        let head = self.bufs.request_head.filled();
        if *head_sent < head.len() {
            let n = up.send_slice(&head[*head_sent..]).unwrap_or(0);
            *head_sent += n;
            moved |= n > 0;
            if *head_sent < head.len() {
                return moved;
            }
        }
        // Stream the request body from the client, bounded by its framing.
        let space = up.send_capacity() - up.send_queue();
        let avail = self.bufs.from_client.filled();
        let (take, done) = match body {
            Body::Done => (0, true),
            Body::Length(n) => {
                let t = (*n).min(avail.len() as u64).min(space as u64) as usize;
                *n -= t as u64;
                (t, *n == 0)
            }
            Body::Chunked(dec) => {
                let window = &avail[..avail.len().min(space)];
                match dec.feed(window) {
                    Ok(t) => (t, dec.is_done()),
                    Err(e) => {
                        return self.fail_to_client(cx, ProxyError::BadRequestBody(e));
                    }
                }
            }
            Body::UntilClose => unreachable!("requests are never close-delimited"),
        };
        if take > 0 {
            let sent = up.send_slice(&avail[..take]).unwrap_or(0);
            debug_assert_eq!(sent, take);
            self.bufs.from_client.consume(sent);
            moved = true;
        }
        if done {
            self.phase = Phase::ReadResponseHead;
            self.deadline = after(cx.now, cx.cfg.timeouts.upstream_response);
            return true;
        }
        if self.fill_from_client(cx) > 0 {
            moved = true;
        } else if !cx.tcp(self.client).may_recv() && self.bufs.from_client.is_empty() {
            // Client stopped sending mid-body: nothing sensible to forward.
            cx.stats.client_aborts += 1;
            self.finish(cx, true);
            return true;
        }
        moved
    }

    fn read_response_head(&mut self, cx: &mut Ctx<'_>) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, true);
            return true;
        }
        let up_handle = self.upstream.as_ref().expect("upstream").handle;
        let up = cx.tcp(up_handle);
        let mut got = 0;
        if up.can_recv() {
            let space = self.bufs.from_upstream.space();
            got = up.recv_slice(space).unwrap_or(0);
            self.bufs.from_upstream.commit(got);
        }
        let upstream_open = up.may_recv();
        let is_head = self.request.is_some_and(|r| r.is_head);
        let full = self.bufs.from_upstream.is_full();
        match head::parse_response(self.bufs.from_upstream.filled(), is_head, full) {
            Ok(Some(resp)) if resp.interim => {
                self.bufs.from_upstream.consume(resp.head_len);
                true
            }
            Ok(Some(resp)) => {
                let req = self.request.expect("request in flight");
                let keep_client = req.keep_alive && resp.framing != BodyFraming::UntilClose;
                self.bufs.to_client.clear();
                let ok = head::write_client_response(
                    &self.bufs.from_upstream.filled()[..resp.head_len],
                    keep_client,
                    req.http10,
                    &mut self.bufs.to_client,
                );
                self.bufs.from_upstream.consume(resp.head_len);
                if !ok {
                    return self
                        .upstream_failed(cx, ProxyError::BadResponse(head::HeadError::TooLarge));
                }
                cx.stats.count_status(resp.status);
                self.phase = Phase::StreamResponse {
                    body: Body::from_framing(resp.framing),
                    keep_client,
                    keep_upstream: resp.reusable,
                };
                true
            }
            Ok(None) => {
                if !upstream_open {
                    let e = if self.bufs.from_upstream.is_empty() {
                        ProxyError::UpstreamClosedEarly
                    } else {
                        ProxyError::BadResponse(head::HeadError::Malformed("truncated head"))
                    };
                    return self.upstream_failed(cx, e);
                }
                if cx.now >= self.deadline {
                    return self.upstream_failed(cx, ProxyError::UpstreamTimeout);
                }
                got > 0
            }
            Err(e) => self.upstream_failed(cx, ProxyError::BadResponse(e)),
        }
    }

    /// Writes pending `to_client` bytes; true when all are written.
    fn flush_to_client(&mut self, cx: &mut Ctx<'_>) -> (bool, bool) {
        if self.bufs.to_client.is_empty() {
            return (true, false);
        }
        let sock = cx.tcp(self.client);
        let n = sock.send_slice(self.bufs.to_client.filled()).unwrap_or(0);
        self.bufs.to_client.consume(n);
        (self.bufs.to_client.is_empty(), n > 0)
    }

    fn stream_response(&mut self, cx: &mut Ctx<'_>) -> bool {
        if self.client_gone(cx) || !cx.tcp(self.client).may_send() {
            cx.stats.client_aborts += 1;
            self.finish(cx, true);
            return true;
        }
        let (flushed, mut moved) = self.flush_to_client(cx);
        if !flushed {
            return moved;
        }
        let up_handle = self.upstream.as_ref().expect("upstream").handle;
        let up = cx.tcp(up_handle);
        if up.can_recv() && !self.bufs.from_upstream.is_full() {
            let space = self.bufs.from_upstream.space();
            let n = up.recv_slice(space).unwrap_or(0);
            self.bufs.from_upstream.commit(n);
            moved |= n > 0;
        }
        let upstream_open = up.may_recv();
        let client = cx.tcp(self.client);
        let space = client.send_capacity() - client.send_queue();
        let Phase::StreamResponse {
            body,
            keep_client,
            keep_upstream,
        } = &mut self.phase
        else {
            unreachable!()
        };
        let avail = self.bufs.from_upstream.filled();
        let window = &avail[..avail.len().min(space)];
        let (take, done) = match body {
            Body::Done => (0, true),
            Body::Length(n) => {
                let t = (*n).min(window.len() as u64) as usize;
                *n -= t as u64;
                (t, *n == 0)
            }
            Body::Chunked(dec) => match dec.feed(window) {
                Ok(t) => (t, dec.is_done()),
                Err(e) => {
                    cx.stats.upstream_errors += 1;
                    tracing::debug!(error = %ProxyError::BadResponseBody(e), "aborting response");
                    self.finish(cx, true);
                    return true;
                }
            },
            Body::UntilClose => (window.len(), !upstream_open && avail.len() == window.len()),
        };
        if take > 0 {
            let n = client.send_slice(&window[..take]).unwrap_or(0);
            debug_assert_eq!(n, take);
            self.bufs.from_upstream.consume(n);
            moved = true;
        }
        if done {
            let keep_client = *keep_client;
            // Bytes past the end of the body mean the upstream is out of step.
            let keep_upstream = *keep_upstream && self.bufs.from_upstream.is_empty();
            if let Some(up) = self.upstream.as_mut() {
                up.served += 1;
            }
            if !keep_upstream {
                self.drop_upstream(cx, false);
            }
            self.request = None;
            if keep_client {
                self.phase = Phase::ReadHead;
                self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
            } else {
                self.phase = Phase::Close;
            }
            return true;
        }
        if !upstream_open && self.bufs.from_upstream.is_empty() {
            // Upstream closed before the body was complete: make the
            // truncation visible to the client with a reset.
            cx.stats.upstream_errors += 1;
            self.finish(cx, true);
            return true;
        }
        moved
    }

    fn write_local(&mut self, cx: &mut Ctx<'_>, keep: bool) -> bool {
        if self.client_gone(cx) {
            self.finish(cx, false);
            return true;
        }
        let (flushed, moved) = self.flush_to_client(cx);
        if !flushed {
            return moved;
        }
        if keep {
            self.phase = Phase::ReadHead;
            self.deadline = after(cx.now, cx.cfg.timeouts.client_idle);
        } else {
            self.phase = Phase::Close;
        }
        true
    }

    fn close(&mut self, cx: &mut Ctx<'_>) -> bool {
        if !self.client_gone(cx) {
            let (flushed, moved) = self.flush_to_client(cx);
            if !flushed {
                return moved;
            }
            cx.tcp(self.client).close();
        }
        self.drop_upstream(cx, false);
        self.phase = Phase::Finished;
        true
    }

    /// Ends the connection now; `reset` aborts the client socket.
    fn finish(&mut self, cx: &mut Ctx<'_>, reset: bool) {
        if reset {
            cx.tcp(self.client).abort();
        } else {
            cx.tcp(self.client).close();
        }
        self.drop_upstream(cx, reset);
        self.phase = Phase::Finished;
    }

    /// Moves the upstream socket to the pool's closing list.
    fn drop_upstream(&mut self, cx: &mut Ctx<'_>, reset: bool) {
        if let Some(up) = self.upstream.take() {
            cx.retire(up.handle, Some(up.local_port), reset);
        }
    }

    fn upstream_failed(&mut self, cx: &mut Ctx<'_>, err: ProxyError) -> bool {
        cx.stats.upstream_errors += 1;
        let was_reused = self.upstream.as_ref().is_some_and(|u| u.served > 0);
        if let Some(up) = &self.upstream {
            tracing::debug!(endpoint = %up.endpoint, error = %err, "upstream failed");
        }
        let req = self.request;
        self.drop_upstream(cx, true);
        let body_unsent = req.is_some_and(|r| r.framing == BodyFraming::None);
        let retry = err.retry_safe()
            && req.is_some_and(|r| r.idempotent)
            && body_unsent
            && (self.attempts == 0 || (was_reused && self.attempts < 2));
        if retry {
            self.attempts += 1;
            cx.stats.retries += 1;
            return self.open_upstream(cx);
        }
        self.fail_to_client(cx, err)
    }

    /// Answers the client with the error's status and closes.
    fn fail_to_client(&mut self, cx: &mut Ctx<'_>, err: ProxyError) -> bool {
        if err.side() == crate::error::Side::Client {
            cx.stats.bad_requests += 1;
        }
        self.local_error(cx, err, false)
    }

    fn local_error(&mut self, cx: &mut Ctx<'_>, err: ProxyError, keep: bool) -> bool {
        let status = err.status();
        cx.stats.count_status(status);
        cx.stats.responses_local += 1;
        self.drop_upstream(cx, true);
        self.request = None;
        self.bufs.to_client.clear();
        let body = head::reason(status);
        head::write_local_response(
            status,
            "text/plain",
            body.as_bytes(),
            keep,
            true,
            &mut self.bufs.to_client,
        );
        self.phase = Phase::WriteLocal { keep };
        true
    }
}
