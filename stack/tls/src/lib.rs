//! TLS termination with rustls: certificates from PEM, SNI selection among
//! many certificates (wildcards, a default), ALPN, minimum version, optional or
//! required client certificates, session tickets shared by every worker, and a
//! byte-oriented session, and one plaintext byte stream (plain or TLS) over
//! the userspace stack's TCP streams for both sides of a proxied connection.

mod certs;
mod client;
mod identity;
mod peek;
mod server;
mod session;
mod sni;
mod stream;

pub use certs::{CertError, load_certified_key, load_roots};
pub use client::{UpstreamTls, UpstreamTlsConfig};
pub use identity::{ClientIdentity, IdentityHeaders};
pub use peek::{ClientHelloInfo, MAX_HELLO, PeekError, peek_client_hello};
pub use server::{
    CertSpec, ClientAuth, MinVersion, TlsConfigError, TlsListenerConfig, TlsServer, provider,
};
pub use session::{FailAlert, HandshakeKind, TlsSession, TlsSessionError, alert_for};
pub use sni::SniResolver;
pub use stream::{ByteStream, TlsStream};

/// A listener's TLS termination, compiled once per snapshot. Connections
/// take an `Arc` of it when they are accepted, so a reload changes what new
/// handshakes see and leaves established sessions alone.
#[derive(Debug, Clone)]
pub struct ListenerTls {
    pub server: TlsServer,
    /// Time a client has to complete its handshake.
    pub handshake_timeout: std::time::Duration,
    /// Headers carrying the verified client identity upstream (mTLS).
    pub identity_headers: IdentityHeaders,
}

impl ListenerTls {
    pub fn new(server: TlsServer) -> Self {
        Self {
            server,
            handshake_timeout: std::time::Duration::from_secs(10),
            identity_headers: IdentityHeaders::default(),
        }
    }
}
