//! Signed configuration bundles: the TOML plus every file it names
//! (certificates, keys, CA bundles, prefix lists, JWKS, wasm plugins), as
//! one JSON payload signed with ed25519 over its exact bytes.
//!
//! What etcd holds is an envelope:
//! `{"format", "key": base64 public key, "signature": base64, "payload": "<JSON text>"}`.
//! The payload stays text inside the envelope (not base64 again) so a bundle
//! grows ~4/3 over its files, not ~16/9: etcd refuses requests over 1.5 MiB
//! by default.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FORMAT: &str = "ferrogate-bundle/1";
/// A bundle with a rollout plan: daemons from before rollouts refuse it
/// (they know only /1, and would apply it everywhere at once, never
/// reporting a gate), newer ones accept both.
pub const FORMAT_ROLLOUT: &str = "ferrogate-bundle/2";

/// The format a payload is sealed in: /2 with a rollout plan.
pub fn format_for(payload: &Payload) -> &'static str {
    if payload.rollout.is_some() {
        FORMAT_ROLLOUT
    } else {
        FORMAT
    }
}

/// Largest envelope `publish` writes: etcd's default request limit is
/// 1.5 MiB, and the put carries the envelope base64-encoded in JSON.
pub const MAX_ENVELOPE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error(
        "{config}: names {file}, outside its directory; a bundle carries files relative to the configuration's directory"
    )]
    Outside { config: PathBuf, file: PathBuf },
    #[error("{path}: {message}")]
    Key { path: PathBuf, message: String },
    #[error("the bundle is {size} bytes; at most {max} fit one etcd request")]
    TooLarge { size: usize, max: usize },
    #[error("{0}")]
    Plan(#[from] super::rollout::PlanError),
}

/// Why a daemon refused a bundle (shown in its status, counted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("not a ferrogate bundle: {0}")]
    NotABundle(String),
    #[error("unsigned bundle")]
    Unsigned,
    #[error("signed by an untrusted key {0}")]
    UntrustedKey(String),
    #[error("bad signature (key {0}): the bundle was altered or signed with another key")]
    BadSignature(String),
    #[error("bundle for cluster {got:?}, this host follows {want:?}")]
    WrongCluster { want: String, got: String },
    #[error("bundle names an unsafe path {0:?}")]
    UnsafePath(String),
    #[error("{0}")]
    BadPlan(super::rollout::PlanError),
}

/// What is signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payload {
    pub format: String,
    pub cluster: String,
    pub version: String,
    /// Above the bundle it replaced (publish reads it under the same
    /// compare-and-swap) and at least the publish time in ms: hosts refuse
    /// one not above what they run, so an older signed bundle written back
    /// into etcd is not run again.
    pub serial: u64,
    pub created_unix_s: u64,
    /// The TOML's file name; unpacked under this name.
    pub config_name: String,
    pub config: String,
    /// Path relative to the TOML's directory → base64 content.
    pub files: BTreeMap<String, String>,
    /// A progressive rollout (`rollout.rs`); none: every host applies it
    /// at once. Signed with the rest, so nobody with write access to etcd
    /// can change the waves or the gates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<super::rollout::Plan>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Envelope {
    format: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    signature: Option<String>,
    payload: String,
}

/// A short, stable name of a public key: `ed25519:` + 16 hex of its SHA-256.
pub fn fingerprint(key: &VerifyingKey) -> String {
    let d = Sha256::digest(key.as_bytes());
    format!("ed25519:{}", hex(&d[..8]))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A relative path of plain components only (no `..`, no root).
fn safe_relative(p: &Path) -> bool {
    !p.as_os_str().is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))
}

/// Validates `config` like `ferrogate check` and gathers it and the files
/// it names into a payload.
pub fn build(
    config: &Path,
    cluster: &str,
    version: Option<String>,
    serial: u64,
) -> Result<Payload, BundleError> {
    let text = std::fs::read_to_string(config).map_err(|e| BundleError::File {
        path: config.to_path_buf(),
        message: format!("cannot read: {e}"),
    })?;
    let compiled =
        crate::config::compile(config, &text).map_err(|e| BundleError::Config(e.to_string()))?;
    let base = config.parent().unwrap_or(Path::new(""));
    let mut files = BTreeMap::new();
    for f in &compiled.files {
        let rel = f
            .strip_prefix(base)
            .ok()
            .filter(|r| safe_relative(r))
            .ok_or_else(|| BundleError::Outside {
                config: config.to_path_buf(),
                file: f.clone(),
            })?;
        let body = std::fs::read(f).map_err(|e| BundleError::File {
            path: f.clone(),
            message: format!("cannot read: {e}"),
        })?;
        files.insert(rel.to_string_lossy().into_owned(), B64.encode(body));
    }
    let config_name = config
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "ferrogate.toml".into());
    let created_unix_s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut p = Payload {
        format: FORMAT.into(),
        cluster: cluster.into(),
        version: String::new(),
        serial,
        created_unix_s,
        config_name,
        config: text,
        files,
        rollout: None,
    };
    p.version = version.unwrap_or_else(|| {
        // When, and what: two publishes of the same content differ in time only.
        let d = Sha256::digest(serde_json::to_vec(&p).unwrap_or_default());
        format!("{created_unix_s}-{}", hex(&d[..4]))
    });
    Ok(p)
}

/// The envelope etcd stores: `payload` signed with `key`.
pub fn seal(payload: &Payload, key: &SigningKey) -> Vec<u8> {
    let format = format_for(payload);
    let text = if payload.format == format {
        serde_json::to_string(payload)
    } else {
        let mut p = payload.clone();
        p.format = format.into();
        serde_json::to_string(&p)
    }
    .expect("a payload serializes");
    let sig: Signature = key.sign(text.as_bytes());
    serde_json::to_vec(&Envelope {
        format: format.into(),
        key: Some(B64.encode(key.verifying_key().as_bytes())),
        signature: Some(B64.encode(sig.to_bytes())),
        payload: text,
    })
    .expect("an envelope serializes")
}

/// An envelope without a signature (what an attacker or a careless tool
/// might write); only tests and the refusal path need it.
pub fn seal_unsigned(payload: &Payload) -> Vec<u8> {
    serde_json::to_vec(&Envelope {
        format: format_for(payload).into(),
        key: None,
        signature: None,
        payload: serde_json::to_string(payload).expect("a payload serializes"),
    })
    .expect("an envelope serializes")
}

fn bounded_fmt(s: &str) -> String {
    super::bounded(s, 64)
}

/// A verified payload and who signed it.
#[derive(Debug, Clone)]
pub struct Verified {
    pub payload: Payload,
    pub signer: String,
    /// SHA-256 of the signed bytes (hex, 16): names the unpacked directory.
    pub digest: String,
}

/// Checks an envelope against the trusted keys and the cluster, then the
/// payload's paths. Nothing of an unverified payload is looked at but its
/// bytes.
pub fn verify(bytes: &[u8], trusted: &[VerifyingKey], cluster: &str) -> Result<Verified, Refusal> {
    let env: Envelope =
        serde_json::from_slice(bytes).map_err(|e| Refusal::NotABundle(e.to_string()))?;
    if env.format != FORMAT && env.format != FORMAT_ROLLOUT {
        return Err(Refusal::NotABundle(format!(
            "format {:?}, expected {FORMAT:?} or {FORMAT_ROLLOUT:?}",
            env.format
        )));
    }
    let (Some(key), Some(sig)) = (env.key.as_deref(), env.signature.as_deref()) else {
        return Err(Refusal::Unsigned);
    };
    let key = B64
        .decode(key)
        .ok()
        .and_then(|k| <[u8; 32]>::try_from(k).ok())
        .and_then(|k| VerifyingKey::from_bytes(&k).ok())
        .ok_or_else(|| Refusal::NotABundle("malformed key".into()))?;
    let fp = fingerprint(&key);
    if !trusted.iter().any(|t| t.as_bytes() == key.as_bytes()) {
        return Err(Refusal::UntrustedKey(fp));
    }
    let sig = B64
        .decode(sig)
        .ok()
        .and_then(|s| <[u8; 64]>::try_from(s).ok())
        .map(|s| Signature::from_bytes(&s))
        .ok_or_else(|| Refusal::BadSignature(fp.clone()))?;
    key.verify_strict(env.payload.as_bytes(), &sig)
        .map_err(|_| Refusal::BadSignature(fp.clone()))?;
    let payload: Payload = serde_json::from_str(&env.payload)
        .map_err(|e| Refusal::NotABundle(format!("payload: {e}")))?;
    // The signed format is the envelope's, and /2 exactly when a plan is
    // in it (a /1 with a plan would be applied at once by an older daemon).
    if payload.format != env.format || payload.format != format_for(&payload) {
        return Err(Refusal::NotABundle(format!(
            "payload format {:?} in a {:?} envelope, {} rollout plan",
            bounded_fmt(&payload.format),
            bounded_fmt(&env.format),
            if payload.rollout.is_some() {
                "with a"
            } else {
                "without"
            }
        )));
    }
    if let Some(plan) = &payload.rollout {
        plan.validate().map_err(Refusal::BadPlan)?;
    }
    if payload.cluster != cluster {
        return Err(Refusal::WrongCluster {
            want: cluster.into(),
            got: payload.cluster,
        });
    }
    for name in std::iter::once(&payload.config_name).chain(payload.files.keys()) {
        if !safe_relative(Path::new(name)) {
            return Err(Refusal::UnsafePath(name.clone()));
        }
    }
    if !Path::new(&payload.config_name)
        .parent()
        .is_some_and(|p| p.as_os_str().is_empty())
    {
        return Err(Refusal::UnsafePath(payload.config_name.clone()));
    }
    // Names that could never unpack (a file where another needs a
    // directory, a component past NAME_MAX) are refused here: an unpack
    // error would be taken for a passing one and tried again forever.
    let names: std::collections::BTreeSet<&str> = std::iter::once(payload.config_name.as_str())
        .chain(payload.files.keys().map(String::as_str))
        .collect();
    for name in std::iter::once(&payload.config_name).chain(payload.files.keys()) {
        let mut parts = name.split('/').peekable();
        let mut prefix = String::new();
        while let Some(part) = parts.next() {
            if part.len() > 255 {
                return Err(Refusal::UnsafePath(name.clone()));
            }
            if !prefix.is_empty() {
                prefix.push('/');
            }
            prefix.push_str(part);
            if parts.peek().is_some() && names.contains(prefix.as_str()) {
                return Err(Refusal::UnsafePath(name.clone()));
            }
        }
    }
    let digest = hex(&Sha256::digest(env.payload.as_bytes())[..8]);
    Ok(Verified {
        payload,
        signer: fp,
        digest,
    })
}

/// Writes `v` under `base` as `rev-<revision>-<digest>/` (its TOML and
/// files, private: they hold keys), atomically: a temporary directory
/// renamed into place. Returns the TOML's path. An existing directory of
/// that name already holds exactly this bundle.
pub fn unpack(v: &Verified, base: &Path, revision: i64) -> std::io::Result<PathBuf> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let name = format!("rev-{revision:012}-{}", v.digest);
    let dir = base.join(&name);
    let toml = dir.join(&v.payload.config_name);
    if dir.is_dir() {
        return Ok(toml);
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(base)?;
    let tmp = base.join(format!(".tmp-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    let write = |rel: &str, body: &[u8]| -> std::io::Result<()> {
        let p = tmp.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)?;
        f.write_all(body)?;
        f.sync_all()
    };
    let r = (|| {
        std::fs::DirBuilder::new().mode(0o700).create(&tmp)?;
        write(&v.payload.config_name, v.payload.config.as_bytes())?;
        for (rel, body) in &v.payload.files {
            let body = B64.decode(body).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{rel}: {e}"))
            })?;
            write(rel, &body)?;
        }
        std::fs::rename(&tmp, &dir)?;
        std::fs::File::open(base)?.sync_all()
    })();
    if r.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    r.map(|()| toml)
}

/// Removes unpacked bundles but the `keep` newest (by revision) and the
/// ones holding a file of `running` (the applied bundle's TOML, the one the
/// engine's persisted snapshot names: it may restart from it), and
/// leftovers of unpacks that did not finish.
pub fn prune(base: &Path, keep: usize, running: &[&Path]) {
    let Ok(rd) = std::fs::read_dir(base) else {
        return;
    };
    let mut revs: Vec<PathBuf> = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(".tmp-rev-") && !name.ends_with(&format!("-{}", std::process::id())) {
            let _ = std::fs::remove_dir_all(e.path());
        } else if name.starts_with("rev-") {
            revs.push(e.path());
        }
    }
    revs.sort(); // zero-padded revisions sort by name
    let n = revs.len();
    for old in revs.into_iter().take(n.saturating_sub(keep)) {
        if running.iter().any(|r| r.starts_with(&old)) {
            continue;
        }
        let _ = std::fs::remove_dir_all(old);
    }
}

fn key_err(path: &Path, message: impl Into<String>) -> BundleError {
    BundleError::Key {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// A private key in PKCS#8 PEM (`ferrogate ctl keygen`, or
/// `openssl genpkey -algorithm ed25519`).
pub fn load_signing_key(path: &Path) -> Result<SigningKey, BundleError> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| key_err(path, format!("cannot read: {e}")))?;
    SigningKey::from_pkcs8_pem(&pem).map_err(|e| {
        key_err(
            path,
            format!("not an ed25519 private key (PKCS#8 PEM): {e}"),
        )
    })
}

/// A public key in SPKI PEM (`openssl pkey -pubout` writes the same).
pub fn load_verifying_key(path: &Path) -> Result<VerifyingKey, BundleError> {
    let pem =
        std::fs::read_to_string(path).map_err(|e| key_err(path, format!("cannot read: {e}")))?;
    VerifyingKey::from_public_key_pem(&pem)
        .map_err(|e| key_err(path, format!("not an ed25519 public key (SPKI PEM): {e}")))
}

/// Writes a new key pair: `<out>` (private, 0600, refuses to overwrite)
/// and `<out>.pub` (public). Returns the public key's fingerprint.
pub fn keygen(out: &Path) -> Result<String, BundleError> {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| key_err(Path::new("/dev/urandom"), e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let private = key
        .to_pkcs8_pem(Default::default())
        .map_err(|e| key_err(out, e.to_string()))?;
    let public = key
        .verifying_key()
        .to_public_key_pem(Default::default())
        .map_err(|e| key_err(out, e.to_string()))?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(out)
        .map_err(|e| key_err(out, format!("cannot create: {e}")))?;
    f.write_all(private.as_bytes())
        .map_err(|e| key_err(out, e.to_string()))?;
    let pub_path = PathBuf::from(format!("{}.pub", out.display()));
    std::fs::write(&pub_path, public).map_err(|e| key_err(&pub_path, e.to_string()))?;
    Ok(fingerprint(&key.verifying_key()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn payload() -> Payload {
        Payload {
            format: FORMAT.into(),
            cluster: "eu".into(),
            version: "v1".into(),
            serial: 1,
            created_unix_s: 1,
            config_name: "edge.toml".into(),
            config: "[engine]\n".into(),
            files: BTreeMap::from([("certs/a.pem".to_string(), B64.encode(b"PEM"))]),
            rollout: None,
        }
    }

    #[test]
    fn a_sealed_bundle_verifies_with_a_trusted_key_only() {
        let (k, other) = (key(1), key(2));
        let sealed = seal(&payload(), &k);
        let v = verify(&sealed, &[other.verifying_key(), k.verifying_key()], "eu").unwrap();
        assert_eq!(v.payload, payload());
        assert_eq!(v.signer, fingerprint(&k.verifying_key()));
        assert_eq!(v.digest.len(), 16);
        assert_eq!(
            verify(&sealed, &[other.verifying_key()], "eu").unwrap_err(),
            Refusal::UntrustedKey(fingerprint(&k.verifying_key()))
        );
        assert!(matches!(
            verify(&sealed, &[k.verifying_key()], "us").unwrap_err(),
            Refusal::WrongCluster { .. }
        ));
        assert_eq!(
            verify(&seal_unsigned(&payload()), &[k.verifying_key()], "eu").unwrap_err(),
            Refusal::Unsigned
        );
        assert!(matches!(
            verify(b"[engine]\n", &[k.verifying_key()], "eu").unwrap_err(),
            Refusal::NotABundle(_)
        ));
    }

    #[test]
    fn any_change_to_the_signed_bytes_is_detected() {
        let k = key(3);
        let trusted = [k.verifying_key()];
        let sealed = seal(&payload(), &k);
        let mut env: Envelope = serde_json::from_slice(&sealed).unwrap();
        // A file swapped, the config edited, one byte of whitespace.
        for tamper in [
            env.payload
                .replace(&B64.encode(b"PEM"), &B64.encode(b"EVIL")),
            env.payload.replace("[engine]", "[engine ]"),
            format!("{} ", env.payload),
        ] {
            let mut e = env.clone();
            e.payload = tamper;
            let bytes = serde_json::to_vec(&e).unwrap();
            assert!(
                matches!(
                    verify(&bytes, &trusted, "eu"),
                    Err(Refusal::BadSignature(_))
                ),
                "tampered payload accepted"
            );
        }
        // Another trusted key's name on this signature.
        let other = key(4);
        env.key = Some(B64.encode(other.verifying_key().as_bytes()));
        let bytes = serde_json::to_vec(&env).unwrap();
        assert!(matches!(
            verify(&bytes, &[k.verifying_key(), other.verifying_key()], "eu"),
            Err(Refusal::BadSignature(_))
        ));
    }

    #[test]
    fn a_signed_plan_travels_with_the_bundle_and_a_bad_one_is_refused() {
        let k = key(9);
        let mut p = payload();
        p.rollout = Some(crate::fleet::rollout::Plan::new("1,25%,100%"));
        let v = verify(&seal(&p, &k), &[k.verifying_key()], "eu").unwrap();
        assert_eq!(v.payload.rollout, p.rollout);
        // Signed, but not a plan a host can follow.
        p.rollout = Some(crate::fleet::rollout::Plan::new("1,0%"));
        assert!(matches!(
            verify(&seal(&p, &k), &[k.verifying_key()], "eu"),
            Err(Refusal::BadPlan(_))
        ));
        // A plan added to a signed bundle in etcd breaks its signature.
        let sealed = seal(&payload(), &k);
        let mut env: Envelope = serde_json::from_slice(&sealed).unwrap();
        env.payload = env.payload.replace(
            "\"files\"",
            "\"rollout\":{\"waves\":\"100%\",\"max_error_ratio\":1.0,\"max_p99_ratio\":100.0,\"bake_s\":0,\"min_requests\":1},\"files\"",
        );
        assert!(env.payload.contains("rollout"));
        let bytes = serde_json::to_vec(&env).unwrap();
        assert!(matches!(
            verify(&bytes, &[k.verifying_key()], "eu"),
            Err(Refusal::BadSignature(_))
        ));
    }

    #[test]
    fn a_bundle_with_a_plan_is_format_2_which_older_daemons_refuse() {
        let k = key(9);
        let plain = seal(&payload(), &k);
        let env: Envelope = serde_json::from_slice(&plain).unwrap();
        assert_eq!(env.format, FORMAT);
        let mut p = payload();
        p.rollout = Some(crate::fleet::rollout::Plan::new("1,100%"));
        let sealed = seal(&p, &k);
        let env: Envelope = serde_json::from_slice(&sealed).unwrap();
        // A daemon from before rollouts checks for exactly /1.
        assert_eq!(env.format, FORMAT_ROLLOUT);
        assert!(env.payload.contains("\"format\":\"ferrogate-bundle/2\""));
        let v = verify(&sealed, &[k.verifying_key()], "eu").unwrap();
        assert_eq!(v.payload.format, FORMAT_ROLLOUT);
        assert!(verify(&plain, &[k.verifying_key()], "eu").is_ok());
        // A plan signed into a /1 payload (another tool): refused.
        let mut p1 = p.clone();
        p1.format = FORMAT.into();
        let text = serde_json::to_string(&p1).unwrap();
        let sig: Signature = k.sign(text.as_bytes());
        let bytes = serde_json::to_vec(&Envelope {
            format: FORMAT.into(),
            key: Some(B64.encode(k.verifying_key().as_bytes())),
            signature: Some(B64.encode(sig.to_bytes())),
            payload: text,
        })
        .unwrap();
        assert!(matches!(
            verify(&bytes, &[k.verifying_key()], "eu"),
            Err(Refusal::NotABundle(_))
        ));
    }

    #[test]
    fn unsafe_paths_in_a_signed_bundle_are_refused() {
        let k = key(5);
        for bad in ["../etc/passwd", "/etc/passwd", "a/../../b", ""] {
            let mut p = payload();
            p.files.insert(bad.into(), B64.encode(b"x"));
            let r = verify(&seal(&p, &k), &[k.verifying_key()], "eu");
            assert_eq!(r.unwrap_err(), Refusal::UnsafePath(bad.into()), "{bad}");
        }
        let mut p = payload();
        p.config_name = "sub/edge.toml".into();
        assert!(matches!(
            verify(&seal(&p, &k), &[k.verifying_key()], "eu"),
            Err(Refusal::UnsafePath(_))
        ));
    }

    /// Names that could never unpack are refused, not retried forever as
    /// an I/O error: a file where another needs a directory, a component
    /// past NAME_MAX.
    #[test]
    fn names_that_cannot_unpack_are_refused() {
        let k = key(6);
        let long = format!("certs/{}", "x".repeat(256));
        for (bad, refused) in [
            ("certs", "certs/a.pem"),
            ("edge.toml/x", "edge.toml/x"),
            (long.as_str(), long.as_str()),
        ] {
            let mut p = payload();
            p.files.insert(bad.into(), B64.encode(b"x"));
            let r = verify(&seal(&p, &k), &[k.verifying_key()], "eu");
            assert_eq!(r.unwrap_err(), Refusal::UnsafePath(refused.into()), "{bad}");
        }
        // Siblings that only share a prefix are fine.
        let mut p = payload();
        p.files.insert("certs-old/a.pem".into(), B64.encode(b"x"));
        p.files.insert("cert".into(), B64.encode(b"x"));
        assert!(verify(&seal(&p, &k), &[k.verifying_key()], "eu").is_ok());
    }

    #[test]
    fn unpack_writes_a_private_directory_per_revision_and_prune_keeps_the_newest() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("fg-bundle-unpack-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let k = key(6);
        let v = verify(&seal(&payload(), &k), &[k.verifying_key()], "eu").unwrap();
        let toml = unpack(&v, &base, 7).unwrap();
        assert!(toml.ends_with("edge.toml"));
        assert_eq!(std::fs::read_to_string(&toml).unwrap(), "[engine]\n");
        let cert = toml.parent().unwrap().join("certs/a.pem");
        assert_eq!(std::fs::read(&cert).unwrap(), b"PEM");
        assert_eq!(
            std::fs::metadata(&cert).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Again: the same directory, untouched.
        assert_eq!(unpack(&v, &base, 7).unwrap(), toml);
        let mut dirs = Vec::new();
        for rev in [8, 9, 10] {
            dirs.push(unpack(&v, &base, rev).unwrap());
        }
        prune(&base, 2, &[&toml]);
        let mut left: Vec<String> = std::fs::read_dir(&base)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let d = &v.digest;
        assert_eq!(
            left,
            [
                format!("rev-000000000007-{d}"),
                format!("rev-000000000009-{d}"),
                format!("rev-000000000010-{d}")
            ],
            "the running one (7) and the two newest stay"
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn keygen_writes_pem_keys_that_load_and_refuses_to_overwrite() {
        let dir = std::env::temp_dir().join(format!("fg-bundle-keygen-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("ops.key");
        let fp = keygen(&out).unwrap();
        let sk = load_signing_key(&out).unwrap();
        let vk = load_verifying_key(&dir.join("ops.key.pub")).unwrap();
        assert_eq!(sk.verifying_key(), vk);
        assert_eq!(fingerprint(&vk), fp);
        assert!(
            keygen(&out).is_err(),
            "an existing key is never overwritten"
        );
        assert!(load_verifying_key(&out).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
