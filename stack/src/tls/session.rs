//! One TLS session (server side for listeners, client side for upstreams)
//! driven with byte slices: ciphertext in from the
//! TCP socket, plaintext out to the HTTP layer and back. No I/O of its own.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, Connection, ServerConfig, ServerConnection};

#[derive(Debug, thiserror::Error)]
pub enum TlsSessionError {
    /// The peer sent something TLS forbids; an alert is queued for it.
    #[error("TLS: {0}")]
    Protocol(#[from] rustls::Error),
    #[error("TLS session I/O: {0}")]
    Io(#[from] std::io::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeKind {
    Full,
    Resumed,
}

pub struct TlsSession {
    conn: Connection,
    peer_closed: bool,
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsSessionError> {
        Ok(Self {
            conn: Connection::Server(ServerConnection::new(config)?),
            peer_closed: false,
        })
    }

    /// A client session to an upstream; the ClientHello is queued at once
    /// (`take_tls`).
    pub fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, TlsSessionError> {
        Ok(Self {
            conn: Connection::Client(ClientConnection::new(config, name)?),
            peer_closed: false,
        })
    }

    /// Like `feed`, but stops as soon as decrypted data waits to be read, so
    /// rustls never holds more than about one batch of records of plaintext
    /// (the caller drains it with `read_plain` before feeding more).
    pub fn feed_some(&mut self, mut tls: &[u8]) -> Result<usize, TlsSessionError> {
        let mut taken = 0;
        while !tls.is_empty() && !self.peer_closed {
            let n = self.conn.read_tls(&mut tls)?;
            if n == 0 {
                break;
            }
            taken += n;
            let st = self.conn.process_new_packets()?;
            self.peer_closed |= st.peer_has_closed();
            if st.plaintext_bytes_to_read() > 0 {
                break;
            }
        }
        Ok(taken)
    }

    /// The peer sent close_notify: it will send nothing more.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Feeds ciphertext from the peer; returns how much was taken. On error
    /// the caller still flushes `take_tls` (it holds the alert) and closes.
    pub fn feed(&mut self, mut tls: &[u8]) -> Result<usize, TlsSessionError> {
        let mut taken = 0;
        while !tls.is_empty() {
            let n = self.conn.read_tls(&mut tls)?;
            if n == 0 {
                break;
            }
            taken += n;
            self.conn.process_new_packets()?;
        }
        Ok(taken)
    }

    /// Decrypted application data available to read.
    pub fn read_plain(&mut self, out: &mut [u8]) -> usize {
        // WouldBlock (nothing decrypted yet) reads as zero bytes.
        self.conn.reader().read(out).unwrap_or_default()
    }

    /// Queues plaintext for encryption; returns how much was accepted.
    pub fn write_plain(&mut self, data: &[u8]) -> usize {
        self.conn.writer().write(data).unwrap_or(0)
    }

    /// Moves pending ciphertext (handshake, records, alerts) into `out`.
    pub fn take_tls(&mut self, out: &mut [u8]) -> usize {
        let mut cursor = std::io::Cursor::new(out);
        let mut total = 0;
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut cursor) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    }

    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Sends close_notify.
    pub fn close(&mut self) {
        self.conn.send_close_notify();
    }

    /// The name the client asked for (server sessions).
    pub fn sni(&self) -> Option<&str> {
        match &self.conn {
            Connection::Server(c) => c.server_name(),
            Connection::Client(_) => None,
        }
    }

    pub fn alpn(&self) -> Option<&[u8]> {
        self.conn.alpn_protocol()
    }

    pub fn handshake_kind(&self) -> Option<HandshakeKind> {
        self.conn.handshake_kind().map(|k| match k {
            rustls::HandshakeKind::Resumed => HandshakeKind::Resumed,
            _ => HandshakeKind::Full,
        })
    }

    /// The client's certificate chain (mTLS), leaf first.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        self.conn.peer_certificates()
    }
}
