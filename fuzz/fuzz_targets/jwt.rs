//! JWT handling: the JWKS checks, and the verification of bearer tokens.
//! Never panics on any JWKS or token; and for tokens signed with the
//! fixture key, accepts exactly those whose issuer, audience, expiry,
//! not-before, namespace and permissions are right, untampered, and never
//! one signed with HMAC over the public key.

#![no_main]

use std::{
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use arbitrary::Arbitrary;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use vow_server::fuzzing::{Grant, JwtVerifier, NamespaceGrant, jwt_verifier};

const JWKS: &str = include_str!("../keys/jwks.json");
/// The private half of the JWKS's key: a fixture of these targets only.
const PRIVATE_KEY: &str = include_str!("../keys/es256-private.pem");
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "vow";
/// The verifier's leeway on `exp` and `nbf`; within two seconds of its
/// edge the outcome depends on the clock, and is not checked.
const LEEWAY_SECONDS: i64 = 30;
const PERMISSIONS: [&str; 6] = ["submit", "read", "cancel", "delete", "work", "fly"];

#[derive(Debug, Arbitrary)]
enum Input {
    /// A bearer token as a caller sends it.
    Token(String),
    /// A JWKS as a file holds it, and a token checked against it.
    Jwks { jwks: String, token: String },
    /// A token signed with the fixture key.
    Signed(Claims),
    /// A token signed with HMAC, the JWKS's text as the secret.
    HmacOverPublicKey(Claims),
}

#[derive(Debug, Arbitrary)]
struct Claims {
    right_issuer: bool,
    right_audience: bool,
    audience_as_list: bool,
    expires_in: Option<i32>,
    not_before_in: Option<i32>,
    namespace: Option<String>,
    /// Indexes into [`PERMISSIONS`]; `None` leaves the claim out.
    permissions: Option<Vec<u8>>,
    subject: Option<String>,
    kid: Option<String>,
    /// A byte of the token to flip, and how.
    tamper: Option<(u16, u8)>,
}

fn verifier() -> &'static JwtVerifier {
    static VERIFIER: OnceLock<JwtVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| jwt_verifier(JWKS, ISSUER, AUDIENCE).expect("the fixture JWKS"))
}

fn encoding_key() -> &'static EncodingKey {
    static KEY: OnceLock<EncodingKey> = OnceLock::new();
    KEY.get_or_init(|| EncodingKey::from_ec_pem(PRIVATE_KEY.as_bytes()).expect("the fixture key"))
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

/// The token of `claims`, and whether the verifier must accept it (`None`
/// when a time claim is too close to the leeway's edge to say).
fn sign(claims: &Claims, algorithm: Algorithm, key: &EncodingKey) -> (String, Option<bool>) {
    let now = now();
    let mut body = serde_json::Map::new();
    let issuer = if claims.right_issuer {
        ISSUER
    } else {
        "https://other.test"
    };
    body.insert("iss".into(), issuer.into());
    let audience = if claims.right_audience {
        AUDIENCE
    } else {
        "other"
    };
    body.insert(
        "aud".into(),
        if claims.audience_as_list {
            serde_json::json!(["x", audience])
        } else {
            audience.into()
        },
    );
    let mut sure = true;
    let mut valid_times = true;
    if let Some(expires_in) = claims.expires_in {
        let expires_in = i64::from(expires_in);
        body.insert("exp".into(), (now + expires_in).into());
        sure &= (expires_in + LEEWAY_SECONDS).abs() > 2;
        valid_times &= expires_in > -LEEWAY_SECONDS;
    } else {
        valid_times = false;
    }
    if let Some(not_before_in) = claims.not_before_in {
        let not_before_in = i64::from(not_before_in);
        body.insert("nbf".into(), (now + not_before_in).into());
        sure &= (not_before_in - LEEWAY_SECONDS).abs() > 2;
        // A time before 1970 is no NumericDate the verifier takes.
        valid_times &= not_before_in <= LEEWAY_SECONDS && now + not_before_in >= 0;
    }
    if let Some(namespace) = &claims.namespace {
        body.insert("vow_namespace".into(), namespace.clone().into());
    }
    let mut known_permissions = true;
    if let Some(indexes) = &claims.permissions {
        let names: Vec<&str> = indexes
            .iter()
            .map(|index| PERMISSIONS[usize::from(*index) % PERMISSIONS.len()])
            .collect();
        known_permissions = !names.contains(&"fly");
        body.insert("vow_permissions".into(), names.into());
    }
    if let Some(subject) = &claims.subject {
        body.insert("sub".into(), subject.clone().into());
    }
    let namespace_ok = claims
        .namespace
        .as_deref()
        .is_some_and(|namespace| Grant::new("x", namespace, []).is_ok());
    let mut header = Header::new(algorithm);
    header.kid = claims.kid.clone();
    let kid_ok = claims.kid.as_deref().is_none_or(|kid| kid == "fuzz");
    let mut token = jsonwebtoken::encode(&header, &body, key).expect("claims encode");
    let mut tampered = false;
    if let Some((at, flip)) = claims.tamper
        && flip != 0
    {
        let mut bytes = token.clone().into_bytes();
        let at = usize::from(at) % bytes.len();
        bytes[at] ^= flip;
        if let Ok(text) = String::from_utf8(bytes) {
            token = text;
            tampered = true;
        }
    }
    let valid = claims.right_issuer
        && claims.right_audience
        && valid_times
        && namespace_ok
        && known_permissions
        && kid_ok
        && !tampered;
    (token, sure.then_some(valid))
}

fuzz_target!(|input: Input| {
    match input {
        Input::Token(token) => {
            let _ = verifier().verify(&token);
        }
        Input::Jwks { jwks, token } => {
            if let Ok(verifier) = jwt_verifier(&jwks, ISSUER, AUDIENCE) {
                let _ = verifier.verify(&token);
            }
        }
        Input::Signed(claims) => {
            let (token, expected) = sign(&claims, Algorithm::ES256, encoding_key());
            let verified = verifier().verify(&token);
            if let Some(expected) = expected {
                assert_eq!(verified.is_ok(), expected, "{claims:?}: {verified:?}");
            }
            if let Ok(grant) = verified {
                let namespace = claims.namespace.expect("a granted token names a namespace");
                match grant.namespace {
                    NamespaceGrant::All => assert_eq!(namespace, "*"),
                    NamespaceGrant::One(granted) => assert_eq!(*granted, namespace),
                }
                assert!(grant.name.starts_with("jwt:"));
            }
        }
        Input::HmacOverPublicKey(claims) => {
            let key = EncodingKey::from_secret(JWKS.as_bytes());
            let (token, _) = sign(&claims, Algorithm::HS256, &key);
            assert!(verifier().verify(&token).is_err(), "{claims:?}");
        }
    }
});
