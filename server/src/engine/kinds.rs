//! The kinds the engine accepts: those with a handler compiled in (run
//! here), and remote ones (run by workers through `WorkerService`), each
//! with defaults for tasks whose submitter set none.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use super::{handler::HandlerRegistry, task::RetryOverrides};

/// How the server treats tasks of one kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct KindSettings {
    /// Run by remote workers rather than a handler of this process.
    pub remote: bool,
    /// Attempt timeout of tasks whose submitter set none.
    pub attempt_timeout: Option<Duration>,
    /// Retry settings under the submitter's, over the server's defaults.
    pub retry: RetryOverrides,
}

/// Why a set of kinds cannot be served.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KindsError {
    #[error("kind {0:?} has a handler built into this vowd and cannot also be remote")]
    RemoteAndBuiltIn(String),
    #[error("kind {0:?} has neither a handler built into this vowd nor remote = true")]
    NoExecutor(String),
    #[error("a kind name must be 1 to 128 bytes without spaces or control characters ({0:?})")]
    BadName(String),
}

/// Every kind the engine accepts.
#[derive(Clone, Debug, Default)]
pub struct Kinds {
    settings: BTreeMap<String, KindSettings>,
    /// Kinds with a handler here, the ones this process claims.
    local: Arc<[String]>,
}

impl Kinds {
    /// The built-in kinds of `handlers` with the configured `settings` (of
    /// built-in and remote kinds alike).
    pub fn new(
        handlers: &HandlerRegistry,
        configured: &BTreeMap<String, KindSettings>,
    ) -> Result<Self, KindsError> {
        let mut settings: BTreeMap<String, KindSettings> = handlers
            .kinds()
            .map(|kind| (kind.to_owned(), KindSettings::default()))
            .collect();
        for (kind, configured) in configured {
            if !valid_name(kind) {
                return Err(KindsError::BadName(kind.clone()));
            }
            let built_in = handlers.get(kind).is_some();
            match (built_in, configured.remote) {
                (true, true) => return Err(KindsError::RemoteAndBuiltIn(kind.clone())),
                (false, false) => return Err(KindsError::NoExecutor(kind.clone())),
                _ => {}
            }
            settings.insert(kind.clone(), configured.clone());
        }
        let local = handlers.kinds().map(str::to_owned).collect();
        Ok(Self { settings, local })
    }

    /// The settings of a kind, if the engine accepts it.
    pub fn get(&self, kind: &str) -> Option<&KindSettings> {
        self.settings.get(kind)
    }

    /// Whether workers run the kind.
    pub fn is_remote(&self, kind: &str) -> bool {
        self.get(kind).is_some_and(|settings| settings.remote)
    }

    /// Kinds run by handlers of this process.
    pub fn local(&self) -> &Arc<[String]> {
        &self.local
    }

    /// Every kind, sorted, with its settings.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &KindSettings)> {
        self.settings
            .iter()
            .map(|(kind, settings)| (kind.as_str(), settings))
    }

    /// Every kind's name, sorted, for error messages.
    pub fn names(&self) -> String {
        self.settings
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn valid_name(kind: &str) -> bool {
    (1..=128).contains(&kind.len())
        && kind
            .chars()
            .all(|character| !character.is_whitespace() && !character.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handlers() -> HandlerRegistry {
        let mut handlers = HandlerRegistry::new();
        handlers.register("echo", crate::handlers::EchoHandler);
        handlers
    }

    #[test]
    fn remote_kinds_join_the_built_in_ones() {
        let configured = BTreeMap::from([(
            "resize".to_owned(),
            KindSettings {
                remote: true,
                ..KindSettings::default()
            },
        )]);
        let kinds = Kinds::new(&handlers(), &configured).expect("valid");
        assert!(kinds.is_remote("resize"));
        assert!(!kinds.is_remote("echo"));
        assert_eq!(kinds.local().as_ref(), ["echo".to_owned()]);
        assert_eq!(kinds.names(), "echo, resize");
    }

    #[test]
    fn a_kind_is_run_one_way() {
        let remote = |kind: &str, remote| {
            BTreeMap::from([(
                kind.to_owned(),
                KindSettings {
                    remote,
                    ..KindSettings::default()
                },
            )])
        };
        assert_eq!(
            Kinds::new(&handlers(), &remote("echo", true)).unwrap_err(),
            KindsError::RemoteAndBuiltIn("echo".into())
        );
        assert_eq!(
            Kinds::new(&handlers(), &remote("nowhere", false)).unwrap_err(),
            KindsError::NoExecutor("nowhere".into())
        );
        assert!(Kinds::new(&handlers(), &remote("echo", false)).is_ok());
        assert!(matches!(
            Kinds::new(&handlers(), &remote("a b", true)),
            Err(KindsError::BadName(_))
        ));
    }
}
