//! An upstream pool's TLS settings compiled into a shared rustls
//! `ClientConfig` (once per snapshot; every connection of the pool clones
//! the `Arc`).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::certs::load_roots;
use super::server::{TlsConfigError, provider};

#[derive(Debug, Clone, Default)]
pub struct UpstreamTlsConfig {
    /// Trust anchors (PEM) for the upstream's certificate.
    pub ca: Option<PathBuf>,
    /// Accept any certificate (no `ca` needed). For labs only.
    pub insecure_skip_verify: bool,
    /// Server name sent and verified; default: the endpoint's IP address.
    pub sni: Option<String>,
}

/// A pool's compiled upstream TLS.
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub config: Arc<ClientConfig>,
    sni: Option<ServerName<'static>>,
}

impl UpstreamTls {
    pub fn build(cfg: &UpstreamTlsConfig) -> Result<Self, TlsConfigError> {
        let roots = match (&cfg.ca, cfg.insecure_skip_verify) {
            (Some(ca), _) => Some(load_roots(ca)?),
            (None, true) => None,
            (None, false) => return Err(TlsConfigError::NoCa),
        };
        let sni = cfg
            .sni
            .as_deref()
            .map(|s| {
                ServerName::try_from(s.to_owned())
                    .map_err(|e| TlsConfigError::Verifier(format!("sni {s:?}: {e}")))
            })
            .transpose()?;
        Self::with_roots(roots, sni)
    }

    /// `roots: None` skips verification.
    pub fn with_roots(
        roots: Option<RootCertStore>,
        sni: Option<ServerName<'static>>,
    ) -> Result<Self, TlsConfigError> {
        let provider = provider();
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut config = match roots {
            Some(r) => builder.with_root_certificates(r).with_no_client_auth(),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            config: Arc::new(config),
            sni,
        })
    }

    /// The name to send and verify for an endpoint.
    pub fn server_name(&self, ip: IpAddr) -> ServerName<'static> {
        self.sni.clone().unwrap_or(ServerName::IpAddress(ip.into()))
    }
}

/// `insecure_skip_verify`: any certificate, but signatures still checked.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
