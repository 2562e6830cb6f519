//! A TLS session pumped over a TCP stream, used by both sides of a
//! proxied connection (`client_io`, `upstream_io`). Ciphertext moves between
//! the socket buffers and rustls without an extra copy: `recv` hands rustls a
//! slice of the socket's receive buffer and `flush` lets rustls write records
//! straight into the send buffer. Plaintext is accepted only as far as the
//! socket can take its ciphertext (`send_space`), so a slow peer holds back
//! the other side instead of making rustls buffer a whole body.

use crate::net::Stream;

use crate::http::ByteBuf;
use crate::tls::{TlsSession, TlsSessionError};

/// Bytes of a TLS record beyond its plaintext: header (5), explicit nonce
/// (TLS 1.2 GCM, 8), tag (16), content type (TLS 1.3, 1), rounded up.
const RECORD_OVERHEAD: usize = 40;
const MAX_RECORD_PLAINTEXT: usize = 16 * 1024;
/// rustls takes up to its buffer limit (64 KiB) at a time.
const MAX_PLAINTEXT_PER_SEND: usize = 48 * 1024;

pub(crate) struct TlsPipe {
    pub(crate) session: TlsSession,
    /// A protocol (or verification) error ended the session; what went back
    /// to the peer is `session.failure()`.
    pub(crate) failed: bool,
    pub(crate) closing: bool,
}

impl TlsPipe {
    pub(crate) fn new(session: TlsSession) -> Self {
        Self {
            session,
            failed: false,
            closing: false,
        }
    }

    /// Moves what the peer sent, decrypted, into `buf`. On a TLS error its
    /// alert, if one can be sent, is already in the socket (as far as it fits;
    /// `flush` sends the rest).
    pub(crate) fn recv(
        &mut self,
        sock: &mut Stream<'_>,
        buf: &mut ByteBuf,
    ) -> Result<usize, TlsSessionError> {
        if self.failed {
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
                let n = self.session.read_plain(space);
                if n == 0 {
                    break;
                }
                buf.commit(n);
                total += n;
            }
            if buf.space().is_empty() || !sock.can_recv() {
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

    /// Whether the peer may still send: no FIN, no close_notify.
    pub(crate) fn may_recv(&self, sock: &Stream<'_>) -> bool {
        !self.failed && !self.session.peer_closed() && sock.may_recv()
    }

    /// Plaintext bytes `send` takes now without buffering beyond the socket.
    pub(crate) fn send_space(&self, sock: &Stream<'_>) -> usize {
        if self.failed
            || !sock.may_send()
            || self.session.wants_write()
            || self.session.is_handshaking()
        {
            return 0;
        }
        let free = (sock.send_space()).min(MAX_PLAINTEXT_PER_SEND);
        let records = free / MAX_RECORD_PLAINTEXT + 1;
        free.saturating_sub(records * RECORD_OVERHEAD)
    }

    /// Sends plaintext, as much as `send_space` allows; returns how much.
    pub(crate) fn send(&mut self, sock: &mut Stream<'_>, data: &[u8]) -> usize {
        let data = &data[..data.len().min(self.send_space(sock))];
        if data.is_empty() {
            return 0;
        }
        let n = self.session.write_plain(data);
        self.flush(sock);
        n
    }

    /// Pushes ciphertext rustls holds into the socket; true when none is left.
    pub(crate) fn flush(&mut self, sock: &mut Stream<'_>) -> bool {
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

    /// Queues close_notify (once, not mid-handshake or after an error) and
    /// flushes; true once everything is in the socket.
    pub(crate) fn close(&mut self, sock: &mut Stream<'_>) -> bool {
        if !self.closing && !self.failed && !self.session.is_handshaking() {
            self.session.close();
        }
        self.closing = true;
        self.flush(sock)
    }
}
