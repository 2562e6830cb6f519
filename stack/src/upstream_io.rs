//! The upstream side of a proxied connection as a plaintext byte stream,
//! over a plain TCP socket or through a TLS client session (`tls = true` on
//! the pool), pumped by the same [`TlsPipe`] as the client side.

use std::net::SocketAddr;

use crate::net::Stream;

use crate::http::ByteBuf;
use crate::route::Upstream;
use crate::tls::{TlsSession, TlsSessionError};
use crate::tls_pipe::TlsPipe;

pub(crate) enum UpstreamIo {
    Plain,
    Tls(Box<TlsPipe>),
}

impl UpstreamIo {
    /// The stream for a new connection to `endpoint` of `pool`.
    pub(crate) fn for_pool(pool: &Upstream, endpoint: SocketAddr) -> Result<Self, TlsSessionError> {
        Ok(match &pool.tls {
            None => UpstreamIo::Plain,
            Some(tls) => {
                let name = tls.server_name(endpoint.ip());
                UpstreamIo::Tls(Box::new(TlsPipe::new(TlsSession::client(
                    tls.config.clone(),
                    name,
                )?)))
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
        sock: &mut Stream<'_>,
        buf: &mut ByteBuf,
    ) -> Result<usize, TlsSessionError> {
        match self {
            UpstreamIo::Plain => {
                if !sock.can_recv() || buf.is_full() {
                    return Ok(0);
                }
                let n = sock.recv_slice(buf.space());
                buf.commit(n);
                Ok(n)
            }
            UpstreamIo::Tls(t) => t.recv(sock, buf),
        }
    }

    /// Whether the upstream may still send: no FIN, no close_notify.
    pub(crate) fn may_recv(&self, sock: &Stream<'_>) -> bool {
        match self {
            UpstreamIo::Plain => sock.may_recv(),
            UpstreamIo::Tls(t) => t.may_recv(sock),
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
    pub(crate) fn send_space(&self, sock: &Stream<'_>) -> usize {
        match self {
            UpstreamIo::Plain if sock.may_send() => sock.send_space(),
            UpstreamIo::Plain => 0,
            UpstreamIo::Tls(t) => t.send_space(sock),
        }
    }

    /// Sends plaintext; returns how much was taken (see `send_space`).
    pub(crate) fn send(&mut self, sock: &mut Stream<'_>, data: &[u8]) -> usize {
        match self {
            UpstreamIo::Plain => sock.send_slice(data),
            UpstreamIo::Tls(t) => t.send(sock, data),
        }
    }

    /// Pushes ciphertext rustls holds (the ClientHello first) into the
    /// socket; true when none is left.
    pub(crate) fn flush(&mut self, sock: &mut Stream<'_>) -> bool {
        match self {
            UpstreamIo::Plain => true,
            UpstreamIo::Tls(t) => t.flush(sock),
        }
    }

    /// Queues close_notify before the socket gets its FIN (best effort).
    pub(crate) fn close(&mut self, sock: &mut Stream<'_>) {
        if let UpstreamIo::Tls(t) = self {
            t.close(sock);
        }
    }
}
