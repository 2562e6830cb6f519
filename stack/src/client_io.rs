//! The client side of a proxied connection as a plaintext byte stream, over
//! a plain TCP socket or through a TLS session. Every phase of the proxy reads
//! and writes the client through this, so TLS is not a special case there.
//!
//! With TLS, ciphertext goes between the socket buffers and rustls without an
//! extra copy: `recv` hands rustls a slice of the socket's receive buffer and
//! `flush` lets rustls write records straight into the socket's send buffer.
//! Plaintext is accepted only as far as the socket can take its ciphertext
//! (`send_space`), so a slow client holds back the upstream instead of making
//! rustls buffer a whole body.

use std::sync::Arc;

use smoltcp::socket::tcp;

use crate::http::ByteBuf;
use crate::tls::{ClientIdentity, HandshakeKind, ListenerTls, TlsSession, TlsSessionError};

/// Bytes of a TLS record beyond its plaintext: header (5), explicit nonce
/// (TLS 1.2 GCM, 8), tag (16), content type (TLS 1.3, 1), rounded up.
const RECORD_OVERHEAD: usize = 40;
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
const MAX_PLAINTEXT_PER_SEND: usize = 48 * 1024;

pub(crate) struct TlsIo {
    session: TlsSession,
    pub(crate) cfg: Arc<ListenerTls>,
    /// Identity header lines rendered when the handshake completed (mTLS).
    identity_lines: Vec<u8>,
    common_name: Option<String>,
    /// A protocol error ended the session (its alert has been queued).
    failed: bool,
    closing: bool,
}

pub(crate) enum ClientIo {
    Plain,
    Tls(Box<TlsIo>),
}

impl ClientIo {
    /// None: the TLS session could not be created (the client is refused).
    pub(crate) fn for_listener(tls: Option<&Arc<ListenerTls>>) -> Option<Self> {
        Some(match tls {
            None => ClientIo::Plain,
            Some(cfg) => match TlsSession::new(cfg.server.config.clone()) {
                Ok(session) => ClientIo::Tls(Box::new(TlsIo {
                    session,
                    cfg: cfg.clone(),
                    identity_lines: Vec::new(),
                    common_name: None,
                    failed: false,
                    closing: false,
                })),
                // Only fails for a config without a usable protocol version,
                // which validation rules out.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot start a TLS session");
                    return None;
                }
            },
        })
    }

    /// A TLS protocol error ended the session.
    pub(crate) fn failed(&self) -> bool {
        matches!(self, ClientIo::Tls(t) if t.failed)
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        matches!(self, ClientIo::Tls(t) if t.session.is_handshaking())
    }

    /// Moves what the client sent, decrypted, into `buf`. On a TLS error
    /// the alert is already on its way to the client.
    pub(crate) fn recv(
        &mut self,
        sock: &mut tcp::Socket<'static>,
        buf: &mut ByteBuf,
    ) -> Result<usize, TlsSessionError> {
        let t = match self {
            ClientIo::Plain => {
                if !sock.can_recv() {
                    return Ok(0);
                }
                let n = sock.recv_slice(buf.space()).unwrap_or(0);
                buf.commit(n);
                return Ok(n);
            }
            ClientIo::Tls(t) => t,
        };
        if t.failed {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            // Plaintext rustls holds goes first; feed more only once it is out.
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
            // Handshake messages (and alerts) to send back.
            t.flush(sock);
            if n == 0 {
                break;
            }
        }
        Ok(total)
    }

    /// Whether the client may still send: no FIN (and no close_notify).
    pub(crate) fn may_recv(&self, sock: &tcp::Socket<'static>) -> bool {
        match self {
            ClientIo::Plain => sock.may_recv(),
            ClientIo::Tls(t) => !t.failed && !t.session.peer_closed() && sock.may_recv(),
        }
    }

    /// Plaintext bytes `send` takes now without buffering beyond the socket.
    pub(crate) fn send_space(&self, sock: &tcp::Socket<'static>) -> usize {
        if !sock.may_send() {
            return 0;
        }
        let free = sock.send_capacity() - sock.send_queue();
        match self {
            ClientIo::Plain => free,
            ClientIo::Tls(t) => {
                if t.failed || t.session.wants_write() {
                    return 0;
                }
                // rustls takes up to its buffer limit (64 KiB) at a time.
                let free = free.min(MAX_PLAINTEXT_PER_SEND);
                let records = free / MAX_RECORD_PLAINTEXT + 1;
                free.saturating_sub(records * RECORD_OVERHEAD)
            }
        }
    }

    /// Sends plaintext; returns how much was taken (see `send_space`).
    pub(crate) fn send(&mut self, sock: &mut tcp::Socket<'static>, data: &[u8]) -> usize {
        match self {
            ClientIo::Plain => sock.send_slice(data).unwrap_or(0),
            ClientIo::Tls(t) => {
                if t.failed {
                    return 0;
                }
                let n = t.session.write_plain(data);
                t.flush(sock);
                n
            }
        }
    }

    /// Pushes ciphertext rustls still holds into the socket; true when none
    /// is left.
    pub(crate) fn flush(&mut self, sock: &mut tcp::Socket<'static>) -> bool {
        match self {
            ClientIo::Plain => true,
            ClientIo::Tls(t) => t.flush(sock),
        }
    }

    /// Starts an orderly close (close_notify for TLS); true once everything,
    /// the notify included, is in the socket and it may get its FIN.
    pub(crate) fn close(&mut self, sock: &mut tcp::Socket<'static>) -> bool {
        match self {
            ClientIo::Plain => true,
            ClientIo::Tls(t) => {
                if !t.closing && !t.failed && !t.session.is_handshaking() {
                    t.session.close();
                }
                t.closing = true;
                t.flush(sock)
            }
        }
    }

    /// After the handshake: how it went, and the client's identity.
    pub(crate) fn handshake_done(&mut self) -> Option<HandshakeKind> {
        let ClientIo::Tls(t) = self else {
            return None;
        };
        if let Some(leaf) = t.session.peer_certificates().and_then(|c| c.first())
            && let Some(id) = ClientIdentity::from_der(leaf)
        {
            t.identity_lines = t.cfg.identity_headers.render(&id);
            t.common_name = id.common_name;
        }
        t.session.handshake_kind()
    }

    /// Subject CN of the verified client certificate.
    pub(crate) fn client_cn(&self) -> Option<&str> {
        match self {
            ClientIo::Tls(t) => t.common_name.as_deref(),
            ClientIo::Plain => None,
        }
    }

    /// What the upstream request head says about this connection.
    pub(crate) fn forwarding(&self) -> crate::http::head::Forwarding<'_> {
        match self {
            ClientIo::Plain => Default::default(),
            ClientIo::Tls(t) => crate::http::head::Forwarding {
                https: true,
                identity: Some(&t.cfg.identity_headers),
                extra: &t.identity_lines,
            },
        }
    }

    pub(crate) fn handshake_timeout(&self) -> Option<std::time::Duration> {
        match self {
            ClientIo::Tls(t) => Some(t.cfg.handshake_timeout),
            ClientIo::Plain => None,
        }
    }
}

impl TlsIo {
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
