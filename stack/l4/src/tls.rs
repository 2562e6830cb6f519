//! A splice whose client end is TLS terminated here: plaintext is read
//! from and written to the client's [`ByteStream`] (rustls over the client
//! stream), the upstream is a plain stream.
//!
//! Back-pressure holds through the byte stream: `recv` decrypts only as
//! much as the upstream can take (the rest stays ciphertext in the
//! client's socket, whose window closes), and `send_space` is what rustls
//! can seal into the client's send buffer now. Half-close: the client's
//! close_notify (or its FIN) ends its direction; the upstream's FIN
//! becomes close_notify then FIN. A TLS error makes the client end gone,
//! which the splice turns into a reset of the upstream.

use ferrogate_net::{StreamId, StreamState, Streams};
use ferrogate_tls::ByteStream;

use crate::{End, Ends};

/// The client's TLS byte stream and the upstream's plain stream.
pub struct TlsPair<'s, 'n, 't> {
    pub net: &'s mut Streams<'n>,
    pub client: StreamId,
    pub upstream: StreamId,
    /// The client's session (a `ByteStream::Tls` past its handshake).
    pub tls: &'t mut ByteStream,
}

impl Ends for TlsPair<'_, '_, '_> {
    fn state(&mut self, e: End) -> StreamState {
        self.net.stream(self.id(e)).state()
    }

    fn recv_queue(&mut self, e: End) -> usize {
        let s = self.net.stream(self.id(e));
        match e {
            End::Client => self.tls.recv_pending(&s),
            End::Upstream => s.recv_queue(),
        }
    }

    fn recv(&mut self, e: End, buf: &mut [u8]) -> usize {
        let mut s = self.net.stream(self.id(e));
        match e {
            // An error marks the session failed (`gone`); its alert is in
            // the socket, which the caller resets.
            End::Client => self.tls.recv(&mut s, buf).unwrap_or(0),
            End::Upstream => s.recv_slice(buf),
        }
    }

    fn send_space(&mut self, e: End) -> usize {
        let mut s = self.net.stream(self.id(e));
        match e {
            End::Client => {
                // Records rustls still holds (a session ticket, the tail
                // of a write that did not fit) go first.
                self.tls.flush(&mut s);
                self.tls.send_space(&s)
            }
            End::Upstream if s.may_send() => s.send_space(),
            End::Upstream => 0,
        }
    }

    fn send(&mut self, e: End, data: &[u8]) -> usize {
        let mut s = self.net.stream(self.id(e));
        match e {
            End::Client => self.tls.send(&mut s, data),
            End::Upstream => s.send_slice(data),
        }
    }

    fn close(&mut self, e: End) -> bool {
        let mut s = self.net.stream(self.id(e));
        // The FIN only once close_notify is all in the socket before it.
        if e == End::Client && !self.tls.close(&mut s) {
            return false;
        }
        s.close();
        true
    }

    fn abort(&mut self, e: End) {
        self.net.stream(self.id(e)).abort()
    }

    fn peer_done(&mut self, e: End) -> bool {
        let fin = crate::fin_received(self.state(e));
        // A FIN without close_notify (a truncation) ends the direction too:
        // the bytes before it were authenticated, the origin gets a FIN.
        fin || (e == End::Client && self.tls.peer_closed())
    }

    fn gone(&mut self, e: End) -> bool {
        crate::is_closed(self.state(e)) || (e == End::Client && self.tls.failed())
    }
}

impl TlsPair<'_, '_, '_> {
    fn id(&self, e: End) -> StreamId {
        match e {
            End::Client => self.client,
            End::Upstream => self.upstream,
        }
    }
}
