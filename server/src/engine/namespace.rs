//! Namespaces: every task lives in one, and every call sees only the tasks
//! of the namespaces its caller may see. The engine is told the scope of
//! each call; who the caller is, and how that was proven, is not its
//! business.

use std::sync::Arc;

/// Where tasks live when access control is off, and where tasks written
/// before namespaces existed now live.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest namespace name.
pub const MAX_NAMESPACE_LEN: usize = 63;

/// What one call may see and where what it creates goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// The tasks of one namespace.
    One(Arc<str>),
    /// Every namespace (an administrator that named none); what it
    /// creates goes to [`DEFAULT_NAMESPACE`].
    All,
}

impl Default for Scope {
    fn default() -> Self {
        Self::One(DEFAULT_NAMESPACE.into())
    }
}

impl Scope {
    pub fn one(namespace: &str) -> Self {
        Self::One(namespace.into())
    }

    /// Whether a task of `namespace` is visible to this call.
    pub fn sees(&self, namespace: &str) -> bool {
        match self {
            Self::One(own) => **own == *namespace,
            Self::All => true,
        }
    }

    /// The namespace new tasks of this call go to.
    pub fn home(&self) -> &str {
        match self {
            Self::One(own) => own,
            Self::All => DEFAULT_NAMESPACE,
        }
    }

    /// The one namespace this call is limited to, if it is.
    pub fn only(&self) -> Option<&Arc<str>> {
        match self {
            Self::One(own) => Some(own),
            Self::All => None,
        }
    }
}

/// Why a namespace name is refused, if it is: names go into metrics labels,
/// logs and headers, so they stay short and plain.
pub fn check_namespace_name(name: &str) -> Result<(), String> {
    let plain = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_';
    if name.is_empty() || name.len() > MAX_NAMESPACE_LEN {
        return Err(format!(
            "a namespace has 1 to {MAX_NAMESPACE_LEN} characters"
        ));
    }
    if !name.chars().all(plain) || name.starts_with('-') {
        return Err(format!(
            "namespace {name:?}: only lowercase letters, digits, '-' and '_', not starting with '-'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_see_their_own_namespace_only() {
        let team_a = Scope::one("team-a");
        assert!(team_a.sees("team-a"));
        assert!(!team_a.sees("team-b"));
        assert!(!team_a.sees(DEFAULT_NAMESPACE));
        assert!(Scope::All.sees("team-b"));
        assert_eq!(Scope::All.home(), DEFAULT_NAMESPACE);
        assert_eq!(team_a.home(), "team-a");
    }

    #[test]
    fn namespace_names_are_plain() {
        for good in ["default", "team-a", "t_1", "a"] {
            assert!(check_namespace_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Team", "a b", "a/b", "-a", "*", &"a".repeat(64), "a\0b"] {
            assert!(check_namespace_name(bad).is_err(), "{bad:?}");
        }
    }
}
