//! The client side of a proxied connection: its byte stream (plain or TLS,
//! see [`ByteStream`]) and what the TLS handshake told about the client.

use std::sync::Arc;

use crate::http::ByteBuf;
use crate::net::Stream;
use crate::tls::{
    ByteStream, ClientIdentity, HandshakeKind, IdentityHeaders, ListenerTls, TlsSessionError,
};

/// What a TLS listener knows about its client.
pub(crate) struct ClientTls {
    pub(crate) cfg: Arc<ListenerTls>,
    /// The verified client certificate's identity (mTLS), once the
    /// handshake completed.
    identity: Option<ClientIdentity>,
}

pub(crate) struct ClientIo {
    pub(crate) stream: ByteStream,
    tls: Option<Box<ClientTls>>,
}

/// Reads what `stream` has, decrypted, into the free space of `buf`.
pub(crate) fn recv_into(
    stream: &mut ByteStream,
    sock: &mut Stream<'_>,
    buf: &mut ByteBuf,
) -> Result<usize, TlsSessionError> {
    let n = stream.recv(sock, buf.space())?;
    buf.commit(n);
    Ok(n)
}

impl ClientIo {
    /// None: the TLS session could not be created (the client is refused).
    pub(crate) fn for_listener(tls: Option<&Arc<ListenerTls>>) -> Option<Self> {
        let Some(cfg) = tls else {
            return Some(Self {
                stream: ByteStream::Plain,
                tls: None,
            });
        };
        match ByteStream::server(cfg.server.config.clone()) {
            Ok(stream) => Some(Self {
                stream,
                tls: Some(Box::new(ClientTls {
                    cfg: cfg.clone(),
                    identity: None,
                })),
            }),
            // Only fails for a config without a usable protocol version,
            // which validation rules out.
            Err(e) => {
                tracing::warn!(error = %e, "cannot start a TLS session");
                None
            }
        }
    }

    /// Moves what the client sent, decrypted, into `buf`. On a TLS error
    /// its alert (`stream.tls_failure()`) is on its way to the client.
    pub(crate) fn recv(
        &mut self,
        sock: &mut Stream<'_>,
        buf: &mut ByteBuf,
    ) -> Result<usize, TlsSessionError> {
        recv_into(&mut self.stream, sock, buf)
    }

    /// After the handshake: how it went, and the client's identity.
    pub(crate) fn handshake_done(&mut self) -> Option<HandshakeKind> {
        let (Some(t), Some(session)) = (self.tls.as_mut(), self.stream.session()) else {
            return None;
        };
        if let Some(leaf) = session.peer_certificates().and_then(|c| c.first())
            && let Some(id) = ClientIdentity::from_der(leaf)
        {
            t.identity = Some(id);
        }
        session.handshake_kind()
    }

    /// Subject CN of the verified client certificate.
    pub(crate) fn client_cn(&self) -> Option<&str> {
        self.tls
            .as_ref()
            .and_then(|t| t.identity.as_ref()?.common_name.as_deref())
    }

    /// TLS listeners: the headers that carry the client's identity
    /// upstream, and the identity (None without a client certificate).
    pub(crate) fn identity(&self) -> Option<(&IdentityHeaders, Option<&ClientIdentity>)> {
        self.tls
            .as_ref()
            .map(|t| (&t.cfg.identity_headers, t.identity.as_ref()))
    }

    pub(crate) fn handshake_timeout(&self) -> Option<std::time::Duration> {
        self.tls.as_ref().map(|t| t.cfg.handshake_timeout)
    }
}
