//! Certificate chains and private keys from PEM files.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{path}: cannot read certificates: {reason}")]
    Certs { path: PathBuf, reason: String },
    #[error("{path}: no certificate in the file")]
    NoCert { path: PathBuf },
    #[error("{path}: cannot read a private key (PKCS#8, PKCS#1 or SEC1 PEM): {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("{cert} / {key}: the key does not match the certificate ({reason})")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{path}: cannot read CA bundle: {reason}")]
    Ca { path: PathBuf, reason: String },
}

pub fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_file_iter(path)
        .map_err(|e| CertError::Certs {
            path: path.into(),
            reason: e.to_string(),
        })?
        .collect();
    let certs = certs.map_err(|e| CertError::Certs {
        path: path.into(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(CertError::NoCert { path: path.into() });
    }
    Ok(certs)
}

/// Loads a chain and its key and checks that they belong together, so a
/// mismatched pair is rejected when the configuration is validated, not on
/// the first handshake.
pub fn load_certified_key(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<Arc<CertifiedKey>, CertError> {
    let chain = load_chain(cert_path)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| CertError::Key {
        path: key_path.into(),
        reason: e.to_string(),
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| CertError::Key {
            path: key_path.into(),
            reason: e.to_string(),
        })?;
    let ck = CertifiedKey::new(chain, signing);
    match ck.keys_match() {
        Ok(()) => Ok(Arc::new(ck)),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => Ok(Arc::new(ck)),
        Err(e) => Err(CertError::Mismatch {
            cert: cert_path.into(),
            key: key_path.into(),
            reason: e.to_string(),
        }),
    }
}

/// Trust anchors for verifying client certificates.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, CertError> {
    let mut roots = rustls::RootCertStore::empty();
    for c in load_chain(path).map_err(|e| CertError::Ca {
        path: path.into(),
        reason: e.to_string(),
    })? {
        roots.add(c).map_err(|e| CertError::Ca {
            path: path.into(),
            reason: e.to_string(),
        })?;
    }
    Ok(roots)
}
