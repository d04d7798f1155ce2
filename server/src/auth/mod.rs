//! Access control, when `--auth-file` is given: every call (streams
//! included) proves who it is with `authorization: Bearer <API key or
//! JWT>` or a client certificate, and is given the one namespace (or, for
//! an administrator, all) and the permissions of that identity. Health and
//! reflection stay open for probes. The file is reloaded when it changes; a
//! bad edit keeps what was there.

pub(crate) mod file;
pub(crate) mod jwt;
pub mod keys;
mod layer;
mod peer;
mod reload;

use std::{collections::BTreeSet, sync::Arc};

use serde::Deserialize;

pub use file::AccessConfig;
pub use layer::AccessLayer;
pub use reload::AccessControl;

use crate::engine::{
    Scope,
    namespace::{DEFAULT_NAMESPACE, check_namespace_name},
};

/// Metadata an administrator names the namespace of a call with.
pub const NAMESPACE_HEADER: &str = "x-vow-namespace";

/// What an identity may do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Submit,
    Read,
    Cancel,
    Delete,
    Work,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Submit => "submit",
            Self::Read => "read",
            Self::Cancel => "cancel",
            Self::Delete => "delete",
            Self::Work => "work",
        }
    }
}

/// Which namespaces an identity acts in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NamespaceGrant {
    One(Arc<str>),
    /// `"*"`: an administrator, who may name one per call.
    All,
}

/// An identity and what it was granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// For logs: the entry's name, never the credential.
    pub name: String,
    pub namespace: NamespaceGrant,
    pub permissions: BTreeSet<Permission>,
}

impl Grant {
    pub fn new(
        name: impl Into<String>,
        namespace: &str,
        permissions: impl IntoIterator<Item = Permission>,
    ) -> Result<Self, String> {
        let namespace = if namespace == "*" {
            NamespaceGrant::All
        } else {
            check_namespace_name(namespace)?;
            NamespaceGrant::One(namespace.into())
        };
        Ok(Self {
            name: name.into(),
            namespace,
            permissions: permissions.into_iter().collect(),
        })
    }

    fn namespace_label(&self) -> &str {
        match &self.namespace {
            NamespaceGrant::One(namespace) => namespace,
            NamespaceGrant::All => "*",
        }
    }
}

/// Why a call was refused, as the caller learns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Denial {
    /// No credentials, or ones that prove nothing: UNAUTHENTICATED.
    Unauthenticated(String),
    /// A known identity without the permission: PERMISSION_DENIED.
    Forbidden(String),
}

/// The permission a method needs; `None` for methods open to everyone.
pub fn permission_for(path: &str) -> Option<Option<Permission>> {
    let path = path.trim_start_matches('/');
    if path.starts_with("grpc.health.") || path.starts_with("grpc.reflection.") {
        return None;
    }
    let permission = match path.split_once('/') {
        Some(("vow.v1.WorkerService", _)) => Some(Permission::Work),
        Some(("vow.v1.TaskService", method)) => match method {
            "Submit" | "Run" => Some(Permission::Submit),
            "Cancel" => Some(Permission::Cancel),
            "Delete" => Some(Permission::Delete),
            _ => Some(Permission::Read),
        },
        // Anything else is unknown to vowd: the caller must still be known.
        _ => None,
    };
    Some(permission)
}

/// Whom the credentials name, if anyone.
pub fn authenticate(
    config: &AccessConfig,
    bearer: Option<&str>,
    client_sans: &[String],
) -> Result<Grant, Denial> {
    if let Some(token) = bearer {
        let digest = keys::digest(token);
        if let Some(grant) = config.api_keys.get(&digest) {
            return Ok(grant.clone());
        }
        return match &config.jwt {
            Some(verifier) if token.split('.').count() == 3 => verifier
                .verify(token)
                .map_err(|reason| Denial::Unauthenticated(format!("invalid token: {reason}"))),
            _ => Err(Denial::Unauthenticated("unknown API key".into())),
        };
    }
    if let Some(grant) = client_sans.iter().find_map(|san| config.mtls.get(san)) {
        return Ok(grant.clone());
    }
    if client_sans.is_empty() {
        Err(Denial::Unauthenticated(
            "missing credentials: send authorization: Bearer <key or token>".into(),
        ))
    } else {
        Err(Denial::Unauthenticated(
            "the client certificate names no known identity".into(),
        ))
    }
}

/// The scope of a call by `grant` that needs `permission`, with the
/// namespace an administrator named, if any.
pub fn authorize(
    grant: &Grant,
    permission: Option<Permission>,
    named_namespace: Option<&str>,
) -> Result<Scope, Denial> {
    if let Some(permission) = permission
        && !grant.permissions.contains(&permission)
    {
        return Err(Denial::Forbidden(format!(
            "identity {:?} lacks the {:?} permission",
            grant.name,
            permission.as_str()
        )));
    }
    match (&grant.namespace, named_namespace) {
        (NamespaceGrant::One(own), None) => Ok(Scope::One(own.clone())),
        (NamespaceGrant::One(own), Some(named)) if **own == *named => Ok(Scope::One(own.clone())),
        (NamespaceGrant::One(_), Some(_)) => Err(Denial::Forbidden(format!(
            "identity {:?} may not choose a namespace with {NAMESPACE_HEADER}",
            grant.name
        ))),
        (NamespaceGrant::All, Some(named)) => {
            check_namespace_name(named).map_err(Denial::Forbidden)?;
            Ok(Scope::one(named))
        }
        (NamespaceGrant::All, None) => Ok(Scope::All),
    }
}

/// The scope of every call when access control is off.
pub fn open_scope() -> Scope {
    Scope::one(DEFAULT_NAMESPACE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_need_their_permission_and_probes_none() {
        assert_eq!(permission_for("/grpc.health.v1.Health/Check"), None);
        assert_eq!(
            permission_for("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"),
            None
        );
        assert_eq!(
            permission_for("/vow.v1.TaskService/Run"),
            Some(Some(Permission::Submit))
        );
        assert_eq!(
            permission_for("/vow.v1.TaskService/Watch"),
            Some(Some(Permission::Read))
        );
        assert_eq!(
            permission_for("/vow.v1.WorkerService/Poll"),
            Some(Some(Permission::Work))
        );
        assert_eq!(permission_for("/other.Service/X"), Some(None));
    }

    #[test]
    fn namespaces_are_the_identitys_unless_an_administrator_names_one() {
        let team = Grant::new("ci", "team-a", [Permission::Read]).unwrap();
        assert_eq!(
            authorize(&team, Some(Permission::Read), None),
            Ok(Scope::one("team-a"))
        );
        assert!(matches!(
            authorize(&team, Some(Permission::Submit), None),
            Err(Denial::Forbidden(_))
        ));
        assert!(matches!(
            authorize(&team, Some(Permission::Read), Some("team-b")),
            Err(Denial::Forbidden(_))
        ));
        let admin = Grant::new("ops", "*", [Permission::Read]).unwrap();
        assert_eq!(
            authorize(&admin, Some(Permission::Read), None),
            Ok(Scope::All)
        );
        assert_eq!(
            authorize(&admin, Some(Permission::Read), Some("team-b")),
            Ok(Scope::one("team-b"))
        );
        assert!(authorize(&admin, Some(Permission::Read), Some("Bad Name")).is_err());
    }
}
