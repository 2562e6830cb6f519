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

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
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

impl JwtAuth {
    /// Compiles a provider from its settings and the JWKS document's text.
    pub fn new(s: &JwtSettings, jwks: &str) -> Result<Self, JwtConfigError> {
        let set: JwkSet =
            serde_json::from_str(jwks).map_err(|e| JwtConfigError::Jwks(e.to_string()))?;
        let mut keys = Vec::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            let kid = jwk.common.key_id.clone();
            let err = |reason: String| JwtConfigError::Key {
                index,
                kid: kid.clone(),
                reason,
            };
            let alg = match &jwk.algorithm {
                AlgorithmParameters::RSA(_) => Algorithm::RS256,
                AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
                AlgorithmParameters::OctetKeyPair(_) => {
                    return Err(err("OKP (EdDSA) keys are not accepted".into()));
                }
            };
            if !s.algorithms.contains(&alg) {
                continue;
            }
            if let Some(declared) = jwk.common.key_algorithm {
                let named = format!("{declared:?}");
                if named != format!("{alg:?}") {
                    return Err(err(format!(
                        "declares alg {named}, this key type is {alg:?}"
                    )));
                }
            }
            let key = DecodingKey::from_jwk(jwk).map_err(|e| err(e.to_string()))?;
            keys.push(Key { kid, alg, key });
        }
        if keys.is_empty() {
            return Err(JwtConfigError::NoKeys);
        }
        let validation = s
            .algorithms
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = s.clock_skew_s;
                v.validate_nbf = true;
                v.set_required_spec_claims(&["exp"]);
                match &s.audience {
                    Some(a) => v.set_audience(&[a]),
                    None => v.validate_aud = false,
                }
                if let Some(i) = &s.issuer {
                    v.set_issuer(&[i]);
                }
                (alg, v)
            })
            .collect();
        Ok(Self {
            name: s.name.clone(),
            keys,
            validation,
            missing: unauthorized(&s.name, None),
            invalid: unauthorized(&s.name, Some("invalid_token")),
        })
    }

    /// Verifies the request's bearer token (`authorization`: the field's
    /// value). `Err`: the 401 to answer.
    pub fn verify(&self, authorization: Option<&[u8]>) -> Result<Claims, Arc<DirectResponse>> {
        let Some(value) = authorization else {
            return Err(self.missing.clone());
        };
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
        // The key the token names; without a kid, each key of its
        // algorithm in turn.
        let candidates = self.keys.iter().filter(|k| {
            k.alg == header.alg
                && header
                    .kid
                    .as_ref()
                    .is_none_or(|kid| k.kid.as_ref() == Some(kid))
        });
        for k in candidates {
            if let Ok(data) = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token, &k.key, validation,
            ) {
                let all = data.claims;
                let sub = all.get("sub").and_then(|v| v.as_str()).map(str::to_string);
                return Ok(Claims { sub, all });
            }
        }
        Err(self.invalid.clone())
    }
}
