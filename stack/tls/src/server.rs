//! A listener's TLS settings compiled into a shared rustls `ServerConfig`.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;

use super::certs::{CertError, load_certified_key, load_roots};
use super::sni::SniResolver;

/// The crypto provider compiled in (aws-lc-rs by default, ring as a feature).
pub fn provider() -> Arc<CryptoProvider> {
    #[cfg(feature = "aws-lc-rs")]
    return Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return Arc::new(rustls::crypto::ring::default_provider());
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum ClientAuth {
    #[default]
    None,
    /// Ask for a certificate; connections without one are accepted.
    Optional { ca: PathBuf },
    /// Refuse the handshake without a certificate from `ca`.
    Required { ca: PathBuf },
}

#[derive(Debug, Clone)]
pub struct CertSpec {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Names served with it (`host` or `*.suffix`); also the default when
    /// `default` is set.
    pub names: Vec<String>,
    pub default: bool,
}

#[derive(Debug, Clone, Default)]
pub struct TlsListenerConfig {
    pub certs: Vec<CertSpec>,
    pub alpn: Vec<Vec<u8>>,
    pub min_version: MinVersion,
    pub client_auth: ClientAuth,
    /// Stateless resumption tickets (keys rotate; shared by every worker).
    pub session_tickets: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error(transparent)]
    Cert(#[from] CertError),
    #[error("no certificate configured")]
    NoCert,
    #[error("no ca configured to verify the upstream (set insecure_skip_verify = true to skip)")]
    NoCa,
    #[error("rustls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// A compiled listener TLS config, cheap to clone into every worker.
#[derive(Clone, Debug)]
pub struct TlsServer {
    pub config: Arc<ServerConfig>,
}

impl TlsServer {
    pub fn build(cfg: &TlsListenerConfig) -> Result<Self, TlsConfigError> {
        let provider = provider();
        if cfg.certs.is_empty() {
            return Err(TlsConfigError::NoCert);
        }
        let mut resolver = SniResolver::new();
        for spec in &cfg.certs {
            let key = load_certified_key(&spec.cert, &spec.key, &provider)?;
            for n in &spec.names {
                resolver.add(n, key.clone());
            }
            if spec.default || cfg.certs.len() == 1 {
                resolver.set_default(key);
            }
        }
        let versions: &[&'static rustls::SupportedProtocolVersion] = match cfg.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?;
        let builder = match &cfg.client_auth {
            ClientAuth::None => builder.with_no_client_auth(),
            ClientAuth::Optional { ca } | ClientAuth::Required { ca } => {
                let roots = Arc::new(load_roots(ca)?);
                let mut v = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
                if matches!(cfg.client_auth, ClientAuth::Optional { .. }) {
                    v = v.allow_unauthenticated();
                }
                let v = v
                    .build()
                    .map_err(|e| TlsConfigError::Verifier(e.to_string()))?;
                builder.with_client_cert_verifier(v)
            }
        };
        let mut config = builder.with_cert_resolver(Arc::new(resolver));
        config.alpn_protocols = cfg.alpn.clone();
        // The server's cipher suite order (AEADs, strongest first) wins over
        // the client's, as reviewers and scanners expect.
        config.ignore_client_order = true;
        if cfg.session_tickets {
            config.ticketer = ticketer()?;
        }
        Ok(Self {
            config: Arc::new(config),
        })
    }
}

fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::Ticketer::new();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return rustls::crypto::ring::Ticketer::new();
}
