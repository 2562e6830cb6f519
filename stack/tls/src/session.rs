//! One TLS session (server side for listeners, client side for upstreams)
//! driven with byte slices: ciphertext in from the
//! TCP socket, plaintext out to the HTTP layer and back. No I/O of its own.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::ServerName;
use rustls::{
    AlertDescription, ClientConfig, ClientConnection, Connection, PeerMisbehaved, ServerConfig,
    ServerConnection,
};

#[derive(Debug, thiserror::Error)]
pub enum TlsSessionError {
    /// The peer sent something TLS forbids; `TlsSession::failure` says
    /// which alert (if any) goes back.
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

/// What went back to the peer when a session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailAlert {
    /// rustls queued its own fatal alert.
    Rustls,
    /// rustls queued none; ferrogate added this one (plaintext, before our
    /// side encrypts).
    Added(AlertDescription),
    /// rustls queued none and our records are already encrypted: sending
    /// this one would need the traffic keys rustls keeps private, so the
    /// peer gets the FIN alone (see `TlsSession::fail`).
    Withheld(AlertDescription),
    /// No alert is due: the peer sent a fatal alert itself, or we had
    /// already sent close_notify.
    NotDue,
}

impl FailAlert {
    /// Whether a fatal alert is on its way to the peer.
    pub fn sent(self) -> bool {
        matches!(self, FailAlert::Rustls | FailAlert::Added(_))
    }
}

pub struct TlsSession {
    conn: Connection,
    peer_closed: bool,
    close_sent: bool,
    /// Watches the records we send until one says our side encrypts.
    out: OutScan,
    /// After an error: what rustls still had queued, then our own alert.
    tail: Vec<u8>,
    tail_sent: usize,
    failure: Option<FailAlert>,
    /// Decrypted bytes rustls holds for `read_plain`.
    plain: usize,
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<Self, TlsSessionError> {
        Ok(Self::with_conn(Connection::Server(ServerConnection::new(
            config,
        )?)))
    }

    /// A client session to an upstream; the ClientHello is queued at once
    /// (`take_tls`).
    pub fn client(
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
    ) -> Result<Self, TlsSessionError> {
        Ok(Self::with_conn(Connection::Client(ClientConnection::new(
            config, name,
        )?)))
    }

    fn with_conn(conn: Connection) -> Self {
        Self {
            conn,
            peer_closed: false,
            close_sent: false,
            out: OutScan::default(),
            tail: Vec::new(),
            tail_sent: 0,
            failure: None,
            plain: 0,
        }
    }

    /// Like `feed`, but stops as soon as decrypted data waits to be read, so
    /// rustls never holds more than about one batch of records of plaintext
    /// (the caller drains it with `read_plain` before feeding more).
    pub fn feed_some(&mut self, mut tls: &[u8]) -> Result<usize, TlsSessionError> {
        let mut taken = 0;
        while !tls.is_empty() && !self.peer_closed && self.failure.is_none() {
            let n = self.conn.read_tls(&mut tls).map_err(|e| self.fail_io(e))?;
            if n == 0 {
                break;
            }
            taken += n;
            let st = self.conn.process_new_packets().map_err(|e| self.fail(e))?;
            self.peer_closed |= st.peer_has_closed();
            self.plain = st.plaintext_bytes_to_read();
            if self.plain > 0 {
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
        while !tls.is_empty() && self.failure.is_none() {
            let n = self.conn.read_tls(&mut tls).map_err(|e| self.fail_io(e))?;
            if n == 0 {
                break;
            }
            taken += n;
            let st = self.conn.process_new_packets().map_err(|e| self.fail(e))?;
            self.plain = st.plaintext_bytes_to_read();
        }
        Ok(taken)
    }

    /// After an error: what went back to the peer.
    pub fn failure(&self) -> Option<FailAlert> {
        self.failure
    }

    /// rustls refused what the peer sent. Some of its errors queue no alert
    /// (an inner plaintext of zeros, a message interleaved with a fragmented
    /// handshake message, a handshake message over 64 KiB, too many empty
    /// records, ...); for those the peer would see a bare FIN, so ferrogate
    /// adds the fatal alert RFC 8446 §6.2 asks for.
    ///
    /// rustls encrypts its own alerts, but the only alert its public API
    /// lets us send is close_notify (`send_fatal_alert` is private and
    /// `dangerous_extract_secrets` refuses a failed connection). So our alert
    /// is a plaintext record, sent only while none of our records has been
    /// encrypted: the peer then still reads plaintext (a TLS 1.3 peer takes a
    /// plaintext alert until it has decrypted something). Once we encrypt, a
    /// plaintext record would only look like a corrupt record to the peer,
    /// and a close_notify would claim an orderly end (a truncated response
    /// would read as complete); the FIN alone, a truncation to the peer's
    /// TLS stack, says the truth.
    fn fail(&mut self, err: rustls::Error) -> TlsSessionError {
        let desc = alert_for(&err);
        self.fail_with(desc);
        TlsSessionError::Protocol(err)
    }

    /// `read_tls` refused bytes: a handshake message grows past the 64 KiB
    /// rustls buffers (`InvalidData`), or, which `feed_some` rules out,
    /// decrypted data was left unread.
    fn fail_io(&mut self, err: std::io::Error) -> TlsSessionError {
        self.fail_with(Some(match err.kind() {
            std::io::ErrorKind::InvalidData => AlertDescription::DecodeError,
            _ => AlertDescription::InternalError,
        }));
        TlsSessionError::Io(err)
    }

    fn fail_with(&mut self, desc: Option<AlertDescription>) {
        if self.failure.is_some() {
            return;
        }
        // What rustls queued (its alert, if any, comes last) goes first.
        let mut queued = Vec::new();
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut queued) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        self.out.see(&queued);
        let failure = if self.close_sent {
            // Our close_notify went first; nothing may follow it.
            FailAlert::NotDue
        } else if self.rustls_queued_alert() {
            FailAlert::Rustls
        } else {
            match desc {
                None => FailAlert::NotDue,
                Some(d) if self.out.encrypting || !self.conn.is_handshaking() => {
                    FailAlert::Withheld(d)
                }
                Some(d) => {
                    queued.extend_from_slice(&[0x15, 0x03, 0x03, 0x00, 0x02, 0x02, u8::from(d)]);
                    FailAlert::Added(d)
                }
            }
        };
        self.failure = Some(failure);
        self.tail = queued;
        self.tail_sent = 0;
    }

    /// Whether rustls queued a fatal alert for its error. send_close_notify
    /// is documented to do nothing once a fatal alert (or close_notify) is
    /// queued, so it probes that; the notify it may queue is thrown away: a
    /// failed session must not claim an orderly close.
    fn rustls_queued_alert(&mut self) -> bool {
        self.conn.send_close_notify();
        let probe_queued = self.conn.wants_write();
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut std::io::sink()) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        !probe_queued
    }

    /// Decrypted application data available to read.
    pub fn read_plain(&mut self, out: &mut [u8]) -> usize {
        // WouldBlock (nothing decrypted yet) reads as zero bytes.
        let n = self.conn.reader().read(out).unwrap_or_default();
        self.plain = self.plain.saturating_sub(n);
        n
    }

    /// Decrypted bytes waiting for `read_plain`.
    pub fn plaintext_pending(&self) -> usize {
        self.plain
    }

    /// Queues plaintext for encryption; returns how much was accepted.
    pub fn write_plain(&mut self, data: &[u8]) -> usize {
        if self.failure.is_some() {
            return 0;
        }
        self.conn.writer().write(data).unwrap_or(0)
    }

    /// Queues `first` then `second` for encryption in one write, so they
    /// share records (a response head and its first body bytes: one AEAD
    /// seal and one record header instead of two); returns how much was
    /// accepted, `first` counted first.
    pub fn write_plain_parts(&mut self, first: &[u8], second: &[u8]) -> usize {
        if self.failure.is_some() {
            return 0;
        }
        if second.is_empty() {
            // rustls collects several slices into a Vec: one is cheaper.
            return self.write_plain(first);
        }
        let parts = [std::io::IoSlice::new(first), std::io::IoSlice::new(second)];
        self.conn.writer().write_vectored(&parts).unwrap_or(0)
    }

    /// Moves pending ciphertext (handshake, records, alerts) into `out`.
    pub fn take_tls(&mut self, out: &mut [u8]) -> usize {
        if self.failure.is_some() {
            let n = (self.tail.len() - self.tail_sent).min(out.len());
            out[..n].copy_from_slice(&self.tail[self.tail_sent..self.tail_sent + n]);
            self.tail_sent += n;
            return n;
        }
        let mut cursor = std::io::Cursor::new(&mut *out);
        let mut total = 0;
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut cursor) {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        self.out.see(&out[..total]);
        total
    }

    pub fn wants_write(&self) -> bool {
        if self.failure.is_some() {
            return self.tail_sent < self.tail.len();
        }
        self.conn.wants_write()
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Sends close_notify.
    pub fn close(&mut self) {
        if self.failure.is_none() {
            self.conn.send_close_notify();
            self.close_sent = true;
        }
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

/// The fatal alert RFC 8446 §6.2 (and RFC 5246 §7.2.2) names for an error
/// rustls reports; None when no alert is due (the peer's own fatal alert).
pub fn alert_for(err: &rustls::Error) -> Option<AlertDescription> {
    use rustls::Error as E;
    Some(match err {
        E::AlertReceived(_) => return None,
        E::InappropriateMessage { .. } | E::InappropriateHandshakeMessage { .. } => {
            AlertDescription::UnexpectedMessage
        }
        E::InvalidMessage(m) => AlertDescription::from(*m),
        E::PeerSentOversizedRecord => AlertDescription::RecordOverflow,
        E::DecryptError => AlertDescription::BadRecordMac,
        E::PeerMisbehaved(p) => match p {
            // Wrong content or a wrong sequence of records (RFC 8446 §5,
            // §5.1, §5.4): an inner plaintext of zeros, a record between
            // the fragments of a handshake message, floods of empty records,
            // warnings, key updates or renegotiations.
            PeerMisbehaved::IllegalTlsInnerPlaintext
            | PeerMisbehaved::MessageInterleavedWithHandshakeMessage
            | PeerMisbehaved::RejectedEarlyDataInterleavedWithHandshakeMessage
            | PeerMisbehaved::KeyEpochWithPendingFragment
            | PeerMisbehaved::IllegalMiddleboxChangeCipherSpec
            | PeerMisbehaved::TooManyEmptyFragments
            | PeerMisbehaved::TooManyKeyUpdateRequests
            | PeerMisbehaved::TooManyRenegotiationRequests
            | PeerMisbehaved::TooManyWarningAlertsReceived
            | PeerMisbehaved::TooMuchEarlyDataReceived => AlertDescription::UnexpectedMessage,
            // The rest are handshake fields that contradict each other.
            _ => AlertDescription::IllegalParameter,
        },
        E::PeerIncompatible(_) => AlertDescription::HandshakeFailure,
        E::InvalidCertificate(c) => AlertDescription::from(c.clone()),
        E::NoCertificatesPresented => AlertDescription::CertificateRequired,
        E::NoApplicationProtocol => AlertDescription::NoApplicationProtocol,
        E::UnsupportedNameType => AlertDescription::UnrecognisedName,
        _ => AlertDescription::InternalError,
    })
}

/// Follows the record headers of what we send, only until the first
/// change_cipher_spec (TLS 1.2, and TLS 1.3's compatibility one) or
/// application_data record (every encrypted TLS 1.3 record): from then on
/// the peer expects our records encrypted.
#[derive(Debug, Default)]
struct OutScan {
    encrypting: bool,
    header: [u8; 5],
    have: usize,
    body_left: usize,
}

impl OutScan {
    fn see(&mut self, mut bytes: &[u8]) {
        while !self.encrypting && !bytes.is_empty() {
            if self.body_left > 0 {
                let k = self.body_left.min(bytes.len());
                self.body_left -= k;
                bytes = &bytes[k..];
                continue;
            }
            let k = (5 - self.have).min(bytes.len());
            self.header[self.have..self.have + k].copy_from_slice(&bytes[..k]);
            self.have += k;
            bytes = &bytes[k..];
            if self.have == 5 {
                self.have = 0;
                self.encrypting = matches!(self.header[0], 0x14 | 0x17);
                self.body_left = u16::from_be_bytes([self.header[3], self.header[4]]) as usize;
            }
        }
    }
}
