//! The client side of a proxied connection as a plaintext byte stream, over
//! a plain TCP socket or through a TLS session (pumped by [`TlsPipe`]). Every
//! phase of the proxy reads and writes the client through this, so TLS is not
//! a special case there.

use std::sync::Arc;

use crate::net::Stream;

use crate::http::ByteBuf;
use crate::tls::{ClientIdentity, HandshakeKind, ListenerTls, TlsSession, TlsSessionError};
use crate::tls_pipe::TlsPipe;

pub(crate) struct TlsIo {
    pipe: TlsPipe,
    pub(crate) cfg: Arc<ListenerTls>,
    /// Identity header lines rendered when the handshake completed (mTLS).
    identity_lines: Vec<u8>,
    common_name: Option<String>,
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
                    pipe: TlsPipe::new(session),
                    cfg: cfg.clone(),
                    identity_lines: Vec::new(),
                    common_name: None,
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
        matches!(self, ClientIo::Tls(t) if t.pipe.failed)
    }

    /// After a TLS error: the alert that went back to the client.
    pub(crate) fn tls_failure(&self) -> Option<crate::tls::FailAlert> {
        match self {
            ClientIo::Tls(t) => t.pipe.session.failure(),
            ClientIo::Plain => None,
        }
    }

    pub(crate) fn is_handshaking(&self) -> bool {
        matches!(self, ClientIo::Tls(t) if t.pipe.session.is_handshaking())
    }

    /// Moves what the client sent, decrypted, into `buf`. On a TLS error
    /// its alert (`tls_failure`) is on its way to the client.
    pub(crate) fn recv(
        &mut self,
        sock: &mut Stream<'_>,
        buf: &mut ByteBuf,
    ) -> Result<usize, TlsSessionError> {
        match self {
            ClientIo::Plain => {
                if !sock.can_recv() {
                    return Ok(0);
                }
                let n = sock.recv_slice(buf.space());
                buf.commit(n);
                Ok(n)
            }
            ClientIo::Tls(t) => t.pipe.recv(sock, buf),
        }
    }

    /// Whether the client may still send: no FIN (and no close_notify).
    pub(crate) fn may_recv(&self, sock: &Stream<'_>) -> bool {
        match self {
            ClientIo::Plain => sock.may_recv(),
            ClientIo::Tls(t) => t.pipe.may_recv(sock),
        }
    }

    /// Plaintext bytes `send` takes now without buffering beyond the socket.
    pub(crate) fn send_space(&self, sock: &Stream<'_>) -> usize {
        match self {
            ClientIo::Plain if sock.may_send() => sock.send_space(),
            ClientIo::Plain => 0,
            ClientIo::Tls(t) => t.pipe.send_space(sock),
        }
    }

    /// Sends plaintext; returns how much was taken (see `send_space`).
    pub(crate) fn send(&mut self, sock: &mut Stream<'_>, data: &[u8]) -> usize {
        match self {
            ClientIo::Plain => sock.send_slice(data),
            ClientIo::Tls(t) => t.pipe.send(sock, data),
        }
    }

    /// Pushes ciphertext rustls still holds into the socket; true when none
    /// is left.
    pub(crate) fn flush(&mut self, sock: &mut Stream<'_>) -> bool {
        match self {
            ClientIo::Plain => true,
            ClientIo::Tls(t) => t.pipe.flush(sock),
        }
    }

    /// Starts an orderly close (close_notify for TLS); true once everything,
    /// the notify included, is in the socket and it may get its FIN.
    pub(crate) fn close(&mut self, sock: &mut Stream<'_>) -> bool {
        match self {
            ClientIo::Plain => true,
            ClientIo::Tls(t) => t.pipe.close(sock),
        }
    }

    /// After the handshake: how it went, and the client's identity.
    pub(crate) fn handshake_done(&mut self) -> Option<HandshakeKind> {
        let ClientIo::Tls(t) = self else {
            return None;
        };
        if let Some(leaf) = t.pipe.session.peer_certificates().and_then(|c| c.first())
            && let Some(id) = ClientIdentity::from_der(leaf)
        {
            t.identity_lines = t.cfg.identity_headers.render(&id);
            t.common_name = id.common_name;
        }
        t.pipe.session.handshake_kind()
    }

    /// Subject CN of the verified client certificate.
    pub(crate) fn client_cn(&self) -> Option<&str> {
        match self {
            ClientIo::Tls(t) => t.common_name.as_deref(),
            ClientIo::Plain => None,
        }
    }

    /// What the upstream request head says about this connection.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, ClientIo::Tls(_))
    }

    /// `owned_by_proxy`: header names the proxy sets itself, see
    /// [`Self::is_identity_header`].
    pub(crate) fn forwarding<'a>(
        &'a self,
        owned_by_proxy: &'a dyn Fn(&str) -> bool,
    ) -> crate::http::head::Forwarding<'a> {
        match self {
            ClientIo::Plain => Default::default(),
            ClientIo::Tls(t) => crate::http::head::Forwarding {
                https: true,
                owned_by_proxy: Some(owned_by_proxy),
                extra: &t.identity_lines,
            },
        }
    }

    /// A header carrying the verified client identity upstream: a client's
    /// own copy must not reach the upstream.
    pub(crate) fn is_identity_header(&self, name: &str) -> bool {
        match self {
            ClientIo::Tls(t) => t.cfg.identity_headers.is_identity_header(name),
            ClientIo::Plain => false,
        }
    }

    pub(crate) fn handshake_timeout(&self) -> Option<std::time::Duration> {
        match self {
            ClientIo::Tls(t) => Some(t.cfg.handshake_timeout),
            ClientIo::Plain => None,
        }
    }
}
