//! Bearer JWTs checked against a JWKS file: signature, `exp`, `nbf`, `iss`
//! and `aud`. Each key admits only the algorithms of its own type, so an
//! `alg: none` token, or one signed with HMAC using a public key as the
//! secret, is refused before any signature is computed.

use std::{collections::HashSet, path::Path};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet},
};

use super::{Grant, Permission, file::JwtEntry};

/// Leeway for clocks that disagree a little, on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 30;

/// One usable key of the JWKS.
struct VerifyingKey {
    kid: Option<String>,
    key: DecodingKey,
    algorithms: Vec<Algorithm>,
}

/// Checks tokens against the keys and claims of the auth file.
pub struct JwtVerifier {
    keys: Vec<VerifyingKey>,
    entry: JwtEntry,
}

impl JwtVerifier {
    pub(super) fn new(entry: JwtEntry, base: &Path) -> Result<Self, String> {
        let path = base.join(&entry.jwks_file);
        let text = std::fs::read_to_string(&path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        Self::from_jwks(entry, &text, &path)
    }

    /// Checks the text of a JWKS, read from `path` (named in errors).
    pub(crate) fn from_jwks(entry: JwtEntry, text: &str, path: &Path) -> Result<Self, String> {
        let set: JwkSet = serde_json::from_str(text)
            .map_err(|error| format!("{} is not a JWKS: {error}", path.display()))?;
        let mut keys = Vec::new();
        for (index, jwk) in set.keys.iter().enumerate() {
            let algorithms =
                algorithms_of(jwk).map_err(|error| format!("keys[{index}]: {error}"))?;
            let key =
                DecodingKey::from_jwk(jwk).map_err(|error| format!("keys[{index}]: {error}"))?;
            keys.push(VerifyingKey {
                kid: jwk.common.key_id.clone(),
                key,
                algorithms,
            });
        }
        if keys.is_empty() {
            return Err(format!("{} holds no key", path.display()));
        }
        Ok(Self { keys, entry })
    }

    /// The grant a valid token carries; the error says why it is not one
    /// (never echoing the token).
    pub fn verify(&self, token: &str) -> Result<Grant, String> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|error| format!("not a JWT: {error}"))?;
        let candidates = self
            .keys
            .iter()
            .filter(|key| header.kid.is_none() || key.kid.is_none() || key.kid == header.kid);
        let mut last_error = "no key of the JWKS matches the token's kid".to_owned();
        for candidate in candidates {
            if !candidate.algorithms.contains(&header.alg) {
                last_error = format!("algorithm {:?} is not that of the key", header.alg);
                continue;
            }
            let mut validation = Validation::new(header.alg);
            validation.algorithms = vec![header.alg];
            validation.leeway = LEEWAY_SECONDS;
            validation.validate_exp = true;
            validation.validate_nbf = true;
            validation.set_issuer(&[&self.entry.issuer]);
            validation.set_audience(&[&self.entry.audience]);
            validation.required_spec_claims =
                HashSet::from(["exp", "iss", "aud"].map(String::from));
            match jsonwebtoken::decode::<serde_json::Value>(token, &candidate.key, &validation) {
                Ok(data) => return self.grant_of(&data.claims),
                Err(error) => last_error = error.to_string(),
            }
        }
        Err(last_error)
    }

    fn grant_of(&self, claims: &serde_json::Value) -> Result<Grant, String> {
        let namespace = claims
            .get(&self.entry.namespace_claim)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("the token has no {:?} claim", self.entry.namespace_claim))?;
        let permissions: Vec<Permission> = match claims.get(&self.entry.permissions_claim) {
            Some(value) => serde_json::from_value(value.clone())
                .map_err(|error| format!("claim {:?}: {error}", self.entry.permissions_claim))?,
            None => Vec::new(),
        };
        let name = claims
            .get(&self.entry.name_claim)
            .and_then(serde_json::Value::as_str)
            .unwrap_or("jwt");
        Grant::new(format!("jwt:{name}"), namespace, permissions)
    }
}

/// The algorithms a key may verify: those of its type (and its `alg`, if
/// it names one). Symmetric keys are refused: a shared secret does not
/// belong in a file of public keys.
fn algorithms_of(jwk: &Jwk) -> Result<Vec<Algorithm>, String> {
    let of_type = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => vec![
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(params) => match &params.curve {
            EllipticCurve::P256 => vec![Algorithm::ES256],
            EllipticCurve::P384 => vec![Algorithm::ES384],
            other => return Err(format!("curve {other:?} is not supported")),
        },
        AlgorithmParameters::OctetKeyPair(_) => vec![Algorithm::EdDSA],
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are refused: use public keys".into());
        }
    };
    match jwk.common.key_algorithm {
        None => Ok(of_type),
        Some(named) => {
            let named: Algorithm = named
                .to_string()
                .parse()
                .map_err(|_| format!("alg {named} is not a signature algorithm"))?;
            if of_type.contains(&named) {
                Ok(vec![named])
            } else {
                Err(format!("alg {named:?} does not fit the key's type"))
            }
        }
    }
}
