//! JWT bearer authentication of a listener's requests (HS256, RS256,
//! ES256): the token from `Authorization: Bearer …` is verified against the
//! keys of a JWKS file (compiled into the snapshot: a changed file is a
//! new snapshot, applied by the control daemon like any config file), with
//! `exp`/`nbf` (and `iss`/`aud` when configured) checked with a clock
//! skew. A request without a valid token gets 401 with `WWW-Authenticate`.
//!
//! Verification runs the maintained `jsonwebtoken` crate (constant-time
//! HMAC, aws-lc-rs signatures): it parses the claims with serde, so a
//! request with a token allocates; requests without one do not.

use std::sync::Arc;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyOperations, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

use crate::route::DirectResponse;

/// The algorithms a provider may accept.
pub const ALGORITHMS: [(&str, Algorithm); 3] = [
    ("HS256", Algorithm::HS256),
    ("RS256", Algorithm::RS256),
    ("ES256", Algorithm::ES256),
];

/// Why a JWKS or a provider is refused (at config check).
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    #[error("not a JWKS document: {0}")]
    Jwks(String),
    #[error("key {index} (kid {kid:?}): {reason}")]
    Key {
        index: usize,
        kid: Option<String>,
        reason: String,
    },
    #[error("the JWKS has no key for the accepted algorithms")]
    NoKeys,
}

/// One verification key.
struct Key {
    kid: Option<String>,
    alg: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?}, {:?})", self.kid, self.alg)
    }
}

/// A configured JWT provider (`[[jwt]]`), compiled.
#[derive(Debug)]
pub struct JwtAuth {
    pub name: String,
    keys: Vec<Key>,
    /// Per algorithm: what is checked besides the signature.
    validation: Vec<(Algorithm, Validation)>,
    /// 401 answers: no token, an invalid one.
    missing: Arc<DirectResponse>,
    invalid: Arc<DirectResponse>,
}

/// What a provider's settings are.
#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub name: String,
    pub algorithms: Vec<Algorithm>,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub clock_skew_s: u64,
}

/// The verified token's claims a request carries on.
#[derive(Debug, Clone, Default)]
pub struct Claims {
    pub sub: Option<String>,
    pub all: serde_json::Map<String, serde_json::Value>,
}

impl Claims {
    /// A claim as text: strings as they are, numbers and booleans printed;
    /// None for objects, arrays and absent claims.
    pub fn text(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        match self.all.get(name)? {
            serde_json::Value::String(s) => Some(s.as_str().into()),
            v @ (serde_json::Value::Number(_) | serde_json::Value::Bool(_)) => {
                Some(v.to_string().into())
            }
            _ => None,
        }
    }
}

fn unauthorized(realm: &str, error: Option<&str>) -> Arc<DirectResponse> {
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"{realm}\", error=\"{e}\""),
        None => format!("Bearer realm=\"{realm}\""),
    };
    Arc::new(DirectResponse {
        status: 401,
        content_type: "text/plain".into(),
        body: b"unauthorized\n".to_vec(),
        location: None,
        retry_after: None,
        www_authenticate: Some(challenge),
    })
}

/// A token longer than this is refused before any parsing or signature
/// check (a bound on the work a bad request can cost).
pub const MAX_TOKEN: usize = 8 * 1024;

impl JwtAuth {
    /// Compiles a provider from its settings and the JWKS document's text.
    /// Keys it cannot use (another algorithm, `use: enc`, EdDSA, a curve
    /// other than P-256, an unknown `alg`) are skipped and returned as
    /// notes; keys too weak to trust (RSA under 2048 bits, an HMAC secret
    /// under 32 bytes) and a set with no usable key are errors.
    pub fn new(s: &JwtSettings, jwks: &str) -> Result<(Self, Vec<String>), JwtConfigError> {
        let doc: serde_json::Value =
            serde_json::from_str(jwks).map_err(|e| JwtConfigError::Jwks(e.to_string()))?;
        let list = doc
            .get("keys")
            .and_then(|k| k.as_array())
            .ok_or_else(|| JwtConfigError::Jwks("no \"keys\" array".into()))?;
        let mut keys = Vec::new();
        let mut skipped = Vec::new();
        for (index, raw) in list.iter().enumerate() {
            let kid_of =
                |v: &serde_json::Value| v.get("kid").and_then(|k| k.as_str()).map(str::to_string);
            let jwk: Jwk = match serde_json::from_value(raw.clone()) {
                Ok(j) => j,
                Err(e) => {
                    skipped.push(format!("key {index} (kid {:?}): {e}", kid_of(raw)));
                    continue;
                }
            };
            let kid = jwk.common.key_id.clone();
            let mut skip = |why: &str| skipped.push(format!("key {index} (kid {kid:?}): {why}"));
            if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
                skip("use is enc");
                continue;
            }
            if jwk
                .common
                .key_operations
                .as_ref()
                .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
            {
                skip("key_ops has no verify");
                continue;
            }
            let weak = |reason: String| JwtConfigError::Key {
                index,
                kid: kid.clone(),
                reason,
            };
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(p) => {
                    if p.n.trim_end_matches('=').len() * 6 / 8 < 256 {
                        return Err(weak("an RSA modulus under 2048 bits".into()));
                    }
                    Algorithm::RS256
                }
                AlgorithmParameters::EllipticCurve(p) => {
                    if p.curve != EllipticCurve::P256 {
                        skip("not a P-256 key (only ES256 is accepted)");
                        continue;
                    }
                    Algorithm::ES256
                }
                AlgorithmParameters::OctetKey(p) => {
                    if p.value.trim_end_matches('=').len() * 6 / 8 < 32 {
                        return Err(weak("an HMAC secret under 32 bytes".into()));
                    }
                    Algorithm::HS256
                }
                AlgorithmParameters::OctetKeyPair(_) => {
                    skip("OKP (EdDSA) keys are not accepted");
                    continue;
                }
            };
            if let Some(declared) = jwk.common.key_algorithm
                && format!("{declared:?}") != format!("{alg:?}")
            {
                skip(&format!("declares alg {declared:?}, not {alg:?}"));
                continue;
            }
            if !s.algorithms.contains(&alg) {
                skip(&format!("{alg:?} is not among the accepted algorithms"));
                continue;
            }
            let key = DecodingKey::from_jwk(&jwk).map_err(|e| weak(e.to_string()))?;
            keys.push(Key { kid, alg, key });
        }
        if keys.is_empty() {
            return Err(JwtConfigError::NoKeys);
        }
        let mut required = vec!["exp"];
        if s.issuer.is_some() {
            required.push("iss");
        }
        if s.audience.is_some() {
            required.push("aud");
        }
        let validation = s
            .algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = s.clock_skew_s;
                v.validate_nbf = true;
                v.set_required_spec_claims(&required);
                // Without a configured audience, a token that names one
                // is refused (it was minted for another service).
                v.validate_aud = true;
                if let Some(a) = &s.audience {
                    v.set_audience(&[a]);
                }
                if let Some(i) = &s.issuer {
                    v.set_issuer(&[i]);
                }
                (alg, v)
            })
            .collect();
        Ok((
            Self {
                name: s.name.clone(),
                keys,
                validation,
                missing: unauthorized(&s.name, None),
                invalid: unauthorized(&s.name, Some("invalid_token")),
            },
            skipped,
        ))
    }

    /// Verifies the request's bearer token (`authorization`: the values of
    /// its `Authorization` fields; more than one is refused, as an origin
    /// might read another than the one checked). `Err`: the 401 to answer.
    pub fn verify<'v>(
        &self,
        mut authorization: impl Iterator<Item = &'v [u8]>,
    ) -> Result<Claims, Arc<DirectResponse>> {
        let Some(value) = authorization.next() else {
            return Err(self.missing.clone());
        };
        if authorization.next().is_some() || value.len() > MAX_TOKEN + 16 {
            return Err(self.invalid.clone());
        }
        let value = std::str::from_utf8(value.trim_ascii()).map_err(|_| self.invalid.clone())?;
        let token = match value.split_once(' ') {
            Some((scheme, t)) if scheme.eq_ignore_ascii_case("bearer") => t.trim(),
            _ => return Err(self.missing.clone()),
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| self.invalid.clone())?;
        let (_, validation) = self
            .validation
            .iter()
            .find(|(a, _)| *a == header.alg)
            .ok_or_else(|| self.invalid.clone())?;
        // The key the token names (and keys without a kid); a token
        // without a kid tries the keys without one — or, when every key
        // has one, is refused (no trying each key per request).
        let of_alg = || self.keys.iter().filter(|k| k.alg == header.alg);
        let all_named = of_alg().all(|k| k.kid.is_some());
        if header.kid.is_none() && all_named {
            return Err(self.invalid.clone());
        }
        let candidates =
            of_alg().filter(|k| k.kid.is_none() || (header.kid.is_some() && k.kid == header.kid));
        for k in candidates {
            if let Ok(data) = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, &k.key, validation,
            ) {
                let mut c = Claims {
                    sub: None,
                    all: data.claims,
                };
                c.sub = c.text("sub").map(|s| s.into_owned());
                return Ok(c);
            }
        }
        Err(self.invalid.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn b64(b: &[u8]) -> String {
        use std::fmt::Write;
        // Only for the test's JWKS: the crate's own engine is private.
        const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (u32::from(c[0]) << 16)
                | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
                | u32::from(*c.get(2).unwrap_or(&0));
            for i in 0..=c.len() {
                let _ = out.write_char(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    fn provider(issuer: Option<&str>, audience: Option<&str>, kid: Option<&str>) -> JwtAuth {
        let kid = kid.map_or(String::new(), |k| format!(r#","kid":"{k}""#));
        let jwks = format!(
            r#"{{"keys":[{{"kty":"oct","k":"{}"{kid}}},{{"kty":"EC","crv":"P-384","x":"AA","y":"AA"}},{{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}}]}}"#,
            b64(SECRET)
        );
        let s = JwtSettings {
            name: "t".into(),
            algorithms: vec![Algorithm::HS256, Algorithm::RS256, Algorithm::ES256],
            issuer: issuer.map(Into::into),
            audience: audience.map(Into::into),
            clock_skew_s: 0,
        };
        let (p, skipped) = JwtAuth::new(&s, &jwks).expect("compiles");
        assert_eq!(skipped.len(), 2, "the P-384 and the enc key: {skipped:?}");
        p
    }

    fn token(kid: Option<&str>, claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::HS256);
        h.kid = kid.map(Into::into);
        encode(&h, &claims, &EncodingKey::from_secret(SECRET)).unwrap()
    }

    fn exp() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 600
    }

    fn check(p: &JwtAuth, tok: &str) -> Result<Claims, u16> {
        let v = format!("Bearer {tok}");
        p.verify([v.as_bytes()].into_iter()).map_err(|r| r.status)
    }

    #[test]
    fn configured_issuer_and_audience_are_required_claims() {
        let p = provider(Some("iss.example"), Some("edge"), None);
        let full =
            serde_json::json!({"sub": "u", "exp": exp(), "iss": "iss.example", "aud": "edge"});
        assert_eq!(
            check(&p, &token(None, full)).unwrap().sub.as_deref(),
            Some("u")
        );
        let no_iss = serde_json::json!({"sub": "u", "exp": exp(), "aud": "edge"});
        let no_aud = serde_json::json!({"sub": "u", "exp": exp(), "iss": "iss.example"});
        let num_iss = serde_json::json!({"sub": "u", "exp": exp(), "iss": 1, "aud": "edge"});
        for c in [no_iss, no_aud, num_iss] {
            assert_eq!(check(&p, &token(None, c.clone())).err(), Some(401), "{c}");
        }
    }

    #[test]
    fn without_an_audience_a_token_that_names_one_is_refused() {
        let p = provider(None, None, None);
        let plain = serde_json::json!({"sub": 7, "exp": exp()});
        assert_eq!(
            check(&p, &token(None, plain)).unwrap().sub.as_deref(),
            Some("7")
        );
        let other = serde_json::json!({"sub": "u", "exp": exp(), "aud": "another-app"});
        assert_eq!(check(&p, &token(None, other)).err(), Some(401));
    }

    #[test]
    fn kids_duplicates_and_oversized_tokens() {
        let p = provider(None, None, Some("k1"));
        let c = serde_json::json!({"sub": "u", "exp": exp()});
        assert!(check(&p, &token(Some("k1"), c.clone())).is_ok());
        assert_eq!(check(&p, &token(Some("k2"), c.clone())).err(), Some(401));
        // Every key has a kid: a token without one is not tried per key.
        assert_eq!(check(&p, &token(None, c.clone())).err(), Some(401));
        // Two Authorization fields: refused even if the first is good.
        let good = format!("Bearer {}", token(Some("k1"), c.clone()));
        let twice = [good.as_bytes(), b"Bearer x".as_slice()];
        assert_eq!(
            p.verify(twice.into_iter()).map_err(|r| r.status).err(),
            Some(401)
        );
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN + 100));
        assert_eq!(
            p.verify([huge.as_bytes()].into_iter())
                .map_err(|r| r.status)
                .err(),
            Some(401)
        );
        // No field: the challenge without an error.
        let none = p.verify(std::iter::empty()).unwrap_err();
        assert_eq!(none.www_authenticate.as_deref(), Some("Bearer realm=\"t\""));
    }

    #[test]
    fn weak_keys_and_empty_sets_are_refused() {
        let s = JwtSettings {
            name: "t".into(),
            algorithms: vec![Algorithm::HS256],
            issuer: None,
            audience: None,
            clock_skew_s: 0,
        };
        let short = format!(r#"{{"keys":[{{"kty":"oct","k":"{}"}}]}}"#, b64(b"short"));
        assert!(matches!(
            JwtAuth::new(&s, &short),
            Err(JwtConfigError::Key { .. })
        ));
        assert!(matches!(
            JwtAuth::new(&s, r#"{"keys":[]}"#),
            Err(JwtConfigError::NoKeys)
        ));
        assert!(matches!(
            JwtAuth::new(&s, "[]"),
            Err(JwtConfigError::Jwks(_))
        ));
    }
}
