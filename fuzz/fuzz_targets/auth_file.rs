//! The `--auth-file` parser and the decisions made with what it accepts:
//! any text either is refused with a message or gives a configuration
//! under which authenticating any credentials and authorizing any method
//! never panics, and a scope never reaches past the grant.

#![no_main]

use std::{path::PathBuf, sync::OnceLock};

use libfuzzer_sys::fuzz_target;
use vow_server::fuzzing::{
    AccessConfig, NamespaceGrant, Scope, authenticate, authorize, permission_for,
};

/// The input, in parts split by NUL bytes: the file's text, an
/// `authorization: Bearer` value (none when empty), the SANs of a client
/// certificate (split by newlines), the `:path` of a call, and an
/// `x-vow-namespace` header (none when empty).
struct Input<'a> {
    text: &'a str,
    bearer: Option<&'a str>,
    client_sans: Vec<String>,
    method: &'a str,
    named_namespace: Option<&'a str>,
}

impl<'a> Input<'a> {
    fn of(text: &'a str) -> Self {
        let mut parts = text.split('\0');
        let mut next = || parts.next().unwrap_or_default();
        let non_empty = |part: &'a str| (!part.is_empty()).then_some(part);
        Self {
            text: next(),
            bearer: non_empty(next()),
            client_sans: next()
                .split('\n')
                .filter(|san| !san.is_empty())
                .map(str::to_owned)
                .collect(),
            method: next(),
            named_namespace: non_empty(next()),
        }
    }
}

/// A directory with the JWKS that `jwt.jwks_file = "jwks.json"` names.
fn base() -> &'static PathBuf {
    static BASE: OnceLock<PathBuf> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = std::env::temp_dir().join(format!("vow-fuzz-auth-{}", std::process::id()));
        std::fs::create_dir_all(&base).expect("a temporary directory");
        std::fs::write(base.join("jwks.json"), include_str!("../keys/jwks.json"))
            .expect("write the JWKS");
        base
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let input = Input::of(text);
    let config = match AccessConfig::parse(input.text, base()) {
        Ok(config) => config,
        Err(message) => {
            assert!(!message.is_empty());
            return;
        }
    };
    let Ok(grant) = authenticate(&config, input.bearer, &input.client_sans) else {
        return;
    };
    let Some(permission) = permission_for(input.method) else {
        return;
    };
    let Ok(scope) = authorize(&grant, permission, input.named_namespace) else {
        return;
    };
    if let Some(permission) = permission {
        assert!(grant.permissions.contains(&permission));
    }
    match (&grant.namespace, &scope) {
        (NamespaceGrant::One(own), Scope::One(scoped)) => assert_eq!(own, scoped),
        (NamespaceGrant::One(_), Scope::All) => panic!("a one-namespace grant saw all"),
        (NamespaceGrant::All, Scope::One(scoped)) => {
            assert_eq!(input.named_namespace, Some(&**scoped));
        }
        (NamespaceGrant::All, Scope::All) => assert!(input.named_namespace.is_none()),
    }
});
