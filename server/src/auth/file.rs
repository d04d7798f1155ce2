//! The `--auth-file`: who may call, in which namespace, with what
//! permissions, and each namespace's quotas. Parsed whole and checked
//! before it replaces the previous one, so a bad edit changes nothing.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use super::{Grant, Permission, jwt::JwtVerifier};
use crate::engine::{
    namespace::check_namespace_name,
    quota::{NamespaceQuota, Quotas},
};

/// An auth file as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    #[serde(default)]
    api_keys: Vec<ApiKeyEntry>,
    jwt: Option<JwtEntry>,
    #[serde(default)]
    mtls: Vec<MtlsEntry>,
    #[serde(default)]
    namespaces: HashMap<String, QuotaEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiKeyEntry {
    name: String,
    namespace: String,
    permissions: Vec<Permission>,
    sha256: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct JwtEntry {
    /// Relative to the auth file.
    pub jwks_file: PathBuf,
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_namespace_claim")]
    pub namespace_claim: String,
    #[serde(default = "default_permissions_claim")]
    pub permissions_claim: String,
    /// The claim that names the caller in logs.
    #[serde(default = "default_name_claim")]
    pub name_claim: String,
}

fn default_namespace_claim() -> String {
    "vow_namespace".into()
}
fn default_permissions_claim() -> String {
    "vow_permissions".into()
}
fn default_name_claim() -> String {
    "sub".into()
}

/// A client certificate identity: its SAN (a DNS name or a URI such as a
/// SPIFFE id) maps to a namespace.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MtlsEntry {
    name: String,
    san: String,
    namespace: String,
    permissions: Vec<Permission>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct QuotaEntry {
    max_queued: Option<usize>,
    max_running: Option<usize>,
    max_waiters: Option<usize>,
    max_watchers: Option<usize>,
}

/// A checked auth file, ready to answer calls.
pub struct AccessConfig {
    /// By the SHA-256 of the key.
    pub(super) api_keys: HashMap<[u8; 32], Grant>,
    pub(super) jwt: Option<JwtVerifier>,
    /// By SAN.
    pub(super) mtls: HashMap<String, Grant>,
    pub quotas: Quotas,
}

impl AccessConfig {
    /// Reads and checks `path`; the error says what is wrong and where.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
        let base = path.parent().unwrap_or_else(|| Path::new("."));
        Self::parse(&text, base).map_err(|error| format!("{}: {error}", path.display()))
    }

    /// Checks the text of an auth file whose relative paths start at `base`.
    pub fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let file: AuthFile = toml::from_str(text).map_err(|error| error.to_string())?;
        let mut api_keys = HashMap::new();
        for (index, entry) in file.api_keys.into_iter().enumerate() {
            let at = format!("api_keys[{index}] ({:?})", entry.name);
            let digest = hex::decode(entry.sha256.trim())
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| format!("{at}: sha256 must be 64 hex digits"))?;
            let grant = Grant::new(entry.name, &entry.namespace, entry.permissions)
                .map_err(|error| format!("{at}: {error}"))?;
            if api_keys.insert(digest, grant).is_some() {
                return Err(format!("{at}: the same key is listed twice"));
            }
        }
        let mut mtls = HashMap::new();
        for (index, entry) in file.mtls.into_iter().enumerate() {
            let at = format!("mtls[{index}] ({:?})", entry.name);
            if entry.san.is_empty() {
                return Err(format!("{at}: san must name a DNS name or a URI"));
            }
            let grant = Grant::new(entry.name, &entry.namespace, entry.permissions)
                .map_err(|error| format!("{at}: {error}"))?;
            if mtls.insert(entry.san, grant).is_some() {
                return Err(format!("{at}: the same san is listed twice"));
            }
        }
        let jwt = match file.jwt {
            Some(entry) => {
                Some(JwtVerifier::new(entry, base).map_err(|error| format!("jwt: {error}"))?)
            }
            None => None,
        };
        let mut quotas = Quotas::default();
        for (namespace, entry) in file.namespaces {
            check_namespace_name(&namespace).map_err(|error| format!("namespaces: {error}"))?;
            let quota = NamespaceQuota {
                max_queued: entry.max_queued,
                max_running: entry.max_running,
                max_waiters: entry.max_waiters,
                max_watchers: entry.max_watchers,
            };
            quotas.namespaces.insert(namespace, quota);
        }
        if api_keys.is_empty() && mtls.is_empty() && jwt.is_none() {
            return Err("no api_keys, mtls identities or jwt: nobody could call".into());
        }
        Ok(Self {
            api_keys,
            jwt,
            mtls,
            quotas,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY_HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn parse(text: &str) -> Result<AccessConfig, String> {
        AccessConfig::parse(text, Path::new("."))
    }

    #[test]
    fn a_key_with_its_namespace_and_permissions_is_accepted() {
        let config = parse(&format!(
            r#"
            [[api_keys]]
            name = "ci"
            namespace = "team-a"
            permissions = ["submit", "read"]
            sha256 = "{KEY_HASH}"

            [namespaces.team-a]
            max_queued = 10
            "#
        ))
        .expect("valid");
        assert_eq!(config.api_keys.len(), 1);
        assert_eq!(config.quotas.of("team-a").max_queued, Some(10));
    }

    #[test]
    fn mistakes_are_refused_with_where_they_are() {
        for (text, expected) in [
            ("", "nobody could call"),
            (
                "[[api_keys]]\nname = \"x\"\nnamespace = \"a\"\npermissions = []\nsha256 = \"00\"",
                "64 hex digits",
            ),
            (
                &format!(
                    "[[api_keys]]\nname = \"x\"\nnamespace = \"A B\"\npermissions = []\nsha256 = \"{KEY_HASH}\""
                ),
                "namespace",
            ),
            (
                &format!(
                    "[[api_keys]]\nname = \"x\"\nnamespace = \"a\"\npermissions = [\"fly\"]\nsha256 = \"{KEY_HASH}\""
                ),
                "unknown variant",
            ),
            (
                &format!(
                    "[[api_keys]]\nname = \"x\"\nnamespace = \"a\"\npermissions = []\nsha256 = \"{KEY_HASH}\"\ncolour = 1"
                ),
                "unknown field",
            ),
            (
                "[jwt]\njwks_file = \"missing.json\"\nissuer = \"i\"\naudience = \"a\"",
                "missing.json",
            ),
        ] {
            let error = parse(text).err().expect(text);
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }
}
