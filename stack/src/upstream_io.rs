//! The upstream side of a proxied connection as a plaintext byte stream,
//! over a plain TCP socket or through a TLS client session (`tls = true` on
//! the pool). Mirrors [`crate::client_io`]: ciphertext moves between the
//! socket buffers and rustls without an extra copy, and plaintext is taken
//! only as far as the socket can hold its ciphertext (`send_space`), so a
//! slow upstream holds back the client instead of making rustls buffer.

use std::net::SocketAddr;

use smoltcp::socket::tcp;

use crate::http::ByteBuf;
use crate::route::Upstream;
use crate::tls::{TlsSession, TlsSessionError};

const RECORD_OVERHEAD: usize = 40;
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
const MAX_PLAINTEXT_PER_SEND: usize = 48 * 1024;

pub(crate) struct UpstreamTlsIo {
    session: TlsSession,
    /// A protocol or verification error ended the session.
    failed: bool,
    closing: bool,
}

pub(crate) enum UpstreamIo {
    Plain,
    Tls(Box<UpstreamTlsIo>),
}

impl UpstreamIo {
    /// The stream for a new connection to `endpoint` of `pool`.
    pub(crate) fn for_pool(pool: &Upstream, endpoint: SocketAddr) -> Result<Self, TlsSessionError> {
        Ok(match &pool.tls {
            None => UpstreamIo::Plain,
            Some(tls) => {
                let name = tls.server_name(endpoint.ip());
                UpstreamIo::Tls(Box::new(UpstreamTlsIo {
                    session: TlsSession::client(tls.config.clone(), name)?,
                    failed: false,
                    closing: false,
                }))
            }
        })
    }

    pub(crate) fn failed(&self) -> bool {
        matches!(self, UpstreamIo::Tls(t) if t.failed)
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        matches!(self, UpstreamIo::Tls(t) if t.session.is_handshaking())
    }

    /// Moves what the upstream sent, decrypted, into `buf`.
    pub(crate) fn recv(
        &mut self,
        sock: &mut tcp::Socket<'static>,
        buf: &mut ByteBuf,
    ) -> Result<usize, TlsSessionError> {
        let t = match self {
            UpstreamIo::Plain => {
                if !sock.can_recv() || buf.is_full() {
                    return Ok(0);
                }
                let n = sock.recv_slice(buf.space()).unwrap_or(0);
                buf.commit(n);
                return Ok(n);
            }
            UpstreamIo::Tls(t) => t,
        };
        if t.failed {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            loop {
                let space = buf.space();
                if space.is_empty() {
                    break;
                }
                let n = t.session.read_plain(space);
                if n == 0 {
                    break;
                }
                buf.commit(n);
                total += n;
            }
            if buf.space().is_empty() || !sock.can_recv() {
                break;
            }
            let fed = sock.recv(|data| match t.session.feed_some(data) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (data.len(), Err(e)),
            });
            let n = match fed {
                Ok(Ok(n)) => n,
                Ok(Err(e)) => {
                    t.failed = true;
                    t.flush(sock);
                    return Err(e);
                }
                Err(_) => 0,
            };
            t.flush(sock);
            if n == 0 {
                break;
            }
        }
        Ok(total)
    }

    /// Whether the upstream may still send: no FIN, no close_notify.
    pub(crate) fn may_recv(&self, sock: &tcp::Socket<'static>) -> bool {
        match self {
            UpstreamIo::Plain => sock.may_recv(),
            UpstreamIo::Tls(t) => !t.failed && !t.session.peer_closed() && sock.may_recv(),
        }
    }

    /// Whether a kept-alive connection can carry another request.
    pub(crate) fn reusable(&self) -> bool {
        match self {
            UpstreamIo::Plain => true,
            UpstreamIo::Tls(t) => {
                !t.failed && !t.closing && !t.session.peer_closed() && !t.session.is_handshaking()
            }
        }
    }

    /// Plaintext bytes `send` takes now without buffering beyond the socket.
    pub(crate) fn send_space(&self, sock: &tcp::Socket<'static>) -> usize {
        match self {
            UpstreamIo::Plain if sock.may_send() => sock.send_capacity() - sock.send_queue(),
            UpstreamIo::Plain => 0,
            UpstreamIo::Tls(t) if t.failed => 0,
            UpstreamIo::Tls(t) => Self::tls_space(t, sock),
        }
    }

    /// Sends plaintext; returns how much was taken (see `send_space`).
    pub(crate) fn send(&mut self, sock: &mut tcp::Socket<'static>, data: &[u8]) -> usize {
        match self {
            UpstreamIo::Plain => sock.send_slice(data).unwrap_or(0),
            UpstreamIo::Tls(t) => {
                if t.failed {
                    return 0;
                }
                let data = &data[..data.len().min(Self::tls_space(t, sock))];
                if data.is_empty() {
                    return 0;
                }
                let n = t.session.write_plain(data);
                t.flush(sock);
                n
            }
        }
    }

    fn tls_space(t: &UpstreamTlsIo, sock: &tcp::Socket<'static>) -> usize {
        if !sock.may_send() || t.session.wants_write() || t.session.is_handshaking() {
            return 0;
        }
        let free = (sock.send_capacity() - sock.send_queue()).min(MAX_PLAINTEXT_PER_SEND);
        let records = free / MAX_RECORD_PLAINTEXT + 1;
        free.saturating_sub(records * RECORD_OVERHEAD)
    }

    /// Pushes ciphertext rustls holds (the ClientHello first) into the
    /// socket; true when none is left.
    pub(crate) fn flush(&mut self, sock: &mut tcp::Socket<'static>) -> bool {
        match self {
            UpstreamIo::Plain => true,
            UpstreamIo::Tls(t) => t.flush(sock),
        }
    }

    /// Queues close_notify before the socket gets its FIN (best effort).
    pub(crate) fn close(&mut self, sock: &mut tcp::Socket<'static>) {
        if let UpstreamIo::Tls(t) = self {
            if !t.closing && !t.failed && !t.session.is_handshaking() {
                t.session.close();
            }
            t.closing = true;
            t.flush(sock);
        }
    }
}

impl UpstreamTlsIo {
    fn flush(&mut self, sock: &mut tcp::Socket<'static>) -> bool {
        while self.session.wants_write() {
            let wrote = sock.send(|space| {
                let n = self.session.take_tls(space);
                (n, n)
            });
            if !matches!(wrote, Ok(n) if n > 0) {
                break;
            }
        }
        !self.session.wants_write()
    }
}
