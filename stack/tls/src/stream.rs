//! A connection's plaintext byte stream over a TCP stream of the userspace
//! stack: plain, or through a TLS session (server side on listeners, client
//! side towards TLS pools). Both sides of a proxied connection use this one
//! type, so TLS is not a special case above it.
//!
//! Ciphertext moves between the socket buffers and rustls without an extra
//! copy: `recv` hands rustls a slice of the socket's receive buffer and
//! `flush` lets rustls write records straight into the send buffer.
//! Plaintext is accepted only as far as the socket can take its ciphertext
//! (`send_space`), so a slow peer holds back the other side instead of making
//! rustls buffer a whole body.

use std::sync::Arc;

use ferrogate_net::Stream;

use crate::{FailAlert, TlsSession, TlsSessionError};

/// Bytes of a TLS record beyond its plaintext: header (5), explicit nonce
/// (TLS 1.2 GCM, 8), tag (16), content type (TLS 1.3, 1), rounded up.
const RECORD_OVERHEAD: usize = 40;
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// rustls takes up to its buffer limit (64 KiB) at a time.
const MAX_PLAINTEXT_PER_SEND: usize = 48 * 1024;

/// A TLS session pumped over a TCP stream.
pub struct TlsStream {
    session: TlsSession,
    /// A protocol (or verification) error ended the session; what went back
    /// to the peer is `session.failure()`.
    failed: bool,
    closing: bool,
}

/// Plain TCP, or TLS over it.
pub enum ByteStream {
    Plain,
    Tls(Box<TlsStream>),
}

impl ByteStream {
    /// The server side of a TLS listener's connection.
    pub fn server(config: Arc<rustls::ServerConfig>) -> Result<Self, TlsSessionError> {
        Ok(Self::over(TlsSession::new(config)?))
    }

    /// The client side of a connection to a TLS origin.
    pub fn client(
        config: Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> Result<Self, TlsSessionError> {
        Ok(Self::over(TlsSession::client(config, name)?))
    }

    fn over(session: TlsSession) -> Self {
        ByteStream::Tls(Box::new(TlsStream {
            session,
            failed: false,
            closing: false,
        }))
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, ByteStream::Tls(_))
    }

    /// The TLS session, if any.
    pub fn session(&self) -> Option<&TlsSession> {
        match self {
            ByteStream::Tls(t) => Some(&t.session),
            ByteStream::Plain => None,
        }
    }

    /// A TLS protocol error ended the session.
    pub fn failed(&self) -> bool {
        matches!(self, ByteStream::Tls(t) if t.failed)
    }

    /// After a TLS error: the alert that went back to the peer.
    pub fn tls_failure(&self) -> Option<FailAlert> {
        self.session().and_then(TlsSession::failure)
    }

    pub fn is_handshaking(&self) -> bool {
        self.session().is_some_and(TlsSession::is_handshaking)
    }

    /// Whether a kept-alive connection can carry another exchange: the
    /// session neither failed, nor closes, nor still shakes hands.
    pub fn reusable(&self) -> bool {
        match self {
            ByteStream::Plain => true,
            ByteStream::Tls(t) => {
                !t.failed && !t.closing && !t.session.peer_closed() && !t.session.is_handshaking()
            }
        }
    }

    /// Moves what the peer sent, decrypted, into `out`; returns how much.
    /// On a TLS error its alert, if one can be sent, is already in the
    /// socket (as far as it fits; `flush` sends the rest).
    pub fn recv(
        &mut self,
        sock: &mut Stream<'_>,
        out: &mut [u8],
    ) -> Result<usize, TlsSessionError> {
        match self {
            ByteStream::Plain if sock.can_recv() && !out.is_empty() => Ok(sock.recv_slice(out)),
            ByteStream::Plain => Ok(0),
            ByteStream::Tls(t) => t.recv(sock, out),
        }
    }

    /// Whether the peer may still send: no FIN, no close_notify.
    pub fn may_recv(&self, sock: &Stream<'_>) -> bool {
        match self {
            ByteStream::Plain => sock.may_recv(),
            ByteStream::Tls(t) => !t.failed && !t.session.peer_closed() && sock.may_recv(),
        }
    }

    /// The peer sent close_notify (TLS; a plain stream has none).
    pub fn peer_closed(&self) -> bool {
        matches!(self, ByteStream::Tls(t) if t.session.peer_closed())
    }

    /// Bytes that may still yield plaintext to `recv`: what the socket holds
    /// (ciphertext on TLS, until close_notify or an error) and, on TLS, what
    /// rustls has decrypted. An upper bound: records carrying no data
    /// (handshake, alerts, padding) yield none.
    pub fn recv_pending(&self, sock: &Stream<'_>) -> usize {
        match self {
            ByteStream::Plain => sock.recv_queue(),
            ByteStream::Tls(t) if t.failed => 0,
            ByteStream::Tls(t) => {
                let wire = if t.session.peer_closed() {
                    0
                } else {
                    sock.recv_queue()
                };
                wire + t.session.plaintext_pending()
            }
        }
    }

    /// TLS: runs the handshake on what the socket holds, reading no
    /// plaintext (application data decrypted on the way stays in rustls
    /// for `recv`); returns the ciphertext bytes taken. Its answers (and,
    /// on an error, the alert) are flushed into the socket as far as they
    /// fit.
    pub fn handshake(&mut self, sock: &mut Stream<'_>) -> Result<usize, TlsSessionError> {
        match self {
            ByteStream::Plain => Ok(0),
            ByteStream::Tls(t) => t.handshake(sock),
        }
    }

    /// TLS: ciphertext that was read from the socket before the session
    /// had it (what followed a PROXY header); returns how much it took,
    /// which is all of it unless decrypted data is waiting for `recv`.
    pub fn feed_read(
        &mut self,
        sock: &mut Stream<'_>,
        data: &[u8],
    ) -> Result<usize, TlsSessionError> {
        match self {
            ByteStream::Plain => Ok(0),
            ByteStream::Tls(t) => {
                let fed = t.feed(data);
                t.flush(sock);
                fed
            }
        }
    }

    /// Plaintext bytes `send` takes now without buffering beyond the socket.
    pub fn send_space(&self, sock: &Stream<'_>) -> usize {
        match self {
            ByteStream::Plain if sock.may_send() => sock.send_space(),
            ByteStream::Plain => 0,
            ByteStream::Tls(t) => t.send_space(sock),
        }
    }

    /// Sends plaintext, as much as `send_space` allows; returns how much.
    pub fn send(&mut self, sock: &mut Stream<'_>, data: &[u8]) -> usize {
        match self {
            ByteStream::Plain => sock.send_slice(data),
            ByteStream::Tls(t) => {
                let data = &data[..data.len().min(t.send_space(sock))];
                if data.is_empty() {
                    return 0;
                }
                let n = t.session.write_plain(data);
                t.flush(sock);
                n
            }
        }
    }

    /// Sends `first` then `second` as one write, as much as `send_space`
    /// allows; returns how much (`first` counted first). On TLS both go
    /// into the same records.
    pub fn send_parts(&mut self, sock: &mut Stream<'_>, first: &[u8], second: &[u8]) -> usize {
        match self {
            ByteStream::Plain => {
                let n = sock.send_slice(first);
                if n < first.len() {
                    return n;
                }
                n + sock.send_slice(second)
            }
            ByteStream::Tls(t) => {
                let space = t.send_space(sock);
                let a = first.len().min(space);
                let b = second.len().min(space - a);
                if a + b == 0 {
                    return 0;
                }
                let n = t.session.write_plain_parts(&first[..a], &second[..b]);
                t.flush(sock);
                n
            }
        }
    }

    /// Pushes ciphertext rustls holds (a ClientHello, handshake answers,
    /// records that did not fit) into the socket; true when none is left.
    pub fn flush(&mut self, sock: &mut Stream<'_>) -> bool {
        match self {
            ByteStream::Plain => true,
            ByteStream::Tls(t) => t.flush(sock),
        }
    }

    /// Starts an orderly close: close_notify (once, not mid-handshake or
    /// after an error) and a flush; true once everything is in the socket
    /// and it may get its FIN.
    pub fn close(&mut self, sock: &mut Stream<'_>) -> bool {
        match self {
            ByteStream::Plain => true,
            ByteStream::Tls(t) => {
                if !t.closing && !t.failed && !t.session.is_handshaking() {
                    t.session.close();
                }
                t.closing = true;
                t.flush(sock)
            }
        }
    }
}

impl TlsStream {
    /// Feeds ciphertext to the session; an error marks the stream failed.
    fn feed(&mut self, data: &[u8]) -> Result<usize, TlsSessionError> {
        if self.failed {
            return Ok(0);
        }
        self.session
            .feed_some(data)
            .inspect_err(|_| self.failed = true)
    }

    fn handshake(&mut self, sock: &mut Stream<'_>) -> Result<usize, TlsSessionError> {
        let mut taken = 0;
        while !self.failed && self.session.is_handshaking() && sock.can_recv() {
            let session = &mut self.session;
            let fed = sock.recv_with(|data| match session.feed_some(data) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (data.len(), Err(e)),
            });
            match fed {
                Some(Ok(0)) | None => break,
                Some(Ok(n)) => taken += n,
                Some(Err(e)) => {
                    self.failed = true;
                    self.flush(sock);
                    return Err(e);
                }
            }
            self.flush(sock);
        }
        self.flush(sock);
        Ok(taken)
    }

    fn recv(&mut self, sock: &mut Stream<'_>, out: &mut [u8]) -> Result<usize, TlsSessionError> {
        if self.failed {
            return Ok(0);
        }
        let mut total = 0;
        loop {
            // Plaintext rustls holds goes first; feed more only once it is out.
            while total < out.len() {
                let n = self.session.read_plain(&mut out[total..]);
                if n == 0 {
                    break;
                }
                total += n;
            }
            if total == out.len() || !sock.can_recv() {
                break;
            }
            let session = &mut self.session;
            let fed = sock.recv_with(|data| match session.feed_some(data) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (data.len(), Err(e)),
            });
            let n = match fed {
                Some(Ok(n)) => n,
                Some(Err(e)) => {
                    self.failed = true;
                    self.flush(sock);
                    return Err(e);
                }
                None => 0,
            };
            // Handshake messages (and alerts) to send back.
            self.flush(sock);
            if n == 0 {
                break;
            }
        }
        Ok(total)
    }

    fn send_space(&self, sock: &Stream<'_>) -> usize {
        if self.failed
            || !sock.may_send()
            || self.session.wants_write()
            || self.session.is_handshaking()
        {
            return 0;
        }
        let free = sock.send_space().min(MAX_PLAINTEXT_PER_SEND);
        let records = free / MAX_RECORD_PLAINTEXT + 1;
        free.saturating_sub(records * RECORD_OVERHEAD)
    }

    fn flush(&mut self, sock: &mut Stream<'_>) -> bool {
        while self.session.wants_write() {
            let session = &mut self.session;
            let wrote = sock.send_with(|space| {
                let n = session.take_tls(space);
                (n, n)
            });
            if !matches!(wrote, Some(n) if n > 0) {
                break;
            }
        }
        !self.session.wants_write()
    }
}
