//! What ferrogate's tests and benches share, so each helper exists once:
//! a test PKI ([`Ca`], [`Pem`], [`client_config`]), unique temp dirs ([`temp_dir`]), the lab's
//! namespace list ([`netns_list`]), a process's children ([`children_of`]) and the corpora under `tests/corpus`
//! ([`corpus`]).

pub mod peer;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

pub use rcgen;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    /// A self-signed certificate for `cn` (also its only DNS name).
    pub fn self_signed(cn: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut p = CertificateParams::new(vec![cn.to_string()]).expect("params");
        p.distinguished_name.push(DnType::CommonName, cn);
        Pem {
            cert: p.self_signed(&key).expect("self-signed").pem(),
            key: key.serialize_pem(),
        }
    }

    /// Writes `<tag>.crt` and `<tag>.key` into `dir`; returns their paths.
    pub fn write(&self, dir: &Path, tag: &str) -> (PathBuf, PathBuf) {
        (
            write(dir, &format!("{tag}.crt"), &self.cert),
            write(dir, &format!("{tag}.key"), &self.key),
        )
    }
}

/// A certificate authority made for one test run.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("CA certificate");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate (PEM), for trust stores.
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A leaf for the DNS names / IP addresses `names` with subject CN `cn`
    /// (None: no subject CN), signed by this CA.
    pub fn leaf(&self, cn: Option<&str>, names: &[&str]) -> Pem {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .expect("params");
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        self.sign(params)
    }

    /// A certificate made from `params` (validity, CRL pointers, …) with a
    /// new key, signed by this CA.
    pub fn sign(&self, params: CertificateParams) -> Pem {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("signed leaf");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }
}

/// A rustls client config that trusts `ca`, offers `alpn` and, with
/// `identity`, presents that client certificate (mTLS).
pub fn client_config(
    provider: Arc<rustls::crypto::CryptoProvider>,
    ca: &Ca,
    alpn: &[&[u8]],
    identity: Option<&Pem>,
) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(ca.pem().as_bytes()).expect("CA PEM"))
        .expect("CA certificate");
    let b = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots);
    let mut c = match identity {
        None => b.with_no_client_auth(),
        Some(id) => b
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(id.cert.as_bytes()).expect("cert PEM")],
                PrivateKeyDer::from_pem_slice(id.key.as_bytes()).expect("key PEM"),
            )
            .expect("client certificate"),
    };
    c.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(c)
}

/// A new empty directory under the system temp dir, unique per process and
/// call: `<tmp>/<tag>-<pid>-<n>`.
pub fn temp_dir(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let d = std::env::temp_dir().join(format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Writes `text` to `dir/name`; returns the path.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    p
}

/// Network namespaces that exist now (`ip netns list`), by name.
pub fn netns_list() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(String::from)
                .collect()
        })
        .unwrap_or_default()
}

/// `tests/corpus/<name>` of the workspace.
pub fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(name)
}

/// Every file of corpus `name`, sorted by name, with its bytes.
pub fn corpus_files(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus(name);
    let mut cases: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("corpus entry").path())
        .collect();
    cases.sort();
    cases
        .into_iter()
        .map(|p| {
            let name = p
                .file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned();
            let bytes = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (name, bytes)
        })
        .collect()
}

/// Processes whose parent is `ppid` (from /proc/*/stat).
pub fn children_of(ppid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...: comm may hold spaces, so split after ')'.
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<i32>().ok());
        if parent == Some(ppid) {
            out.push(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_leaf_names_its_ca_as_issuer_and_the_corpus_is_found() {
        let ca = Ca::new("kit CA");
        let leaf = ca.leaf(Some("svc"), &["svc.test"]);
        assert!(ca.pem().starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(leaf.key.contains("PRIVATE KEY"));
        let d = temp_dir("fg-kit");
        let (c, k) = leaf.write(&d, "svc");
        assert!(c.exists() && k.exists());
        std::fs::remove_dir_all(d).unwrap();
        assert!(corpus_files("http-bad").len() >= 20);
    }
}
