//! TLS termination with rustls: certificates from PEM, SNI selection among
//! many certificates (wildcards, a default), ALPN, minimum version, optional or
//! required client certificates, session tickets shared by every worker, and a
//! byte-oriented session the proxy drives over its TCP sockets.

mod certs;
mod server;
mod session;
mod sni;

pub use certs::{CertError, load_certified_key};
pub use server::{
    CertSpec, ClientAuth, MinVersion, TlsConfigError, TlsListenerConfig, TlsServer, provider,
};
pub use session::{HandshakeKind, TlsSession, TlsSessionError};
pub use sni::SniResolver;
