//! Limits per namespace (noisy neighbours) and for the whole process, so
//! that no caller can grow vowd's memory or another namespace's wait
//! without bound. Quotas can change while vowd runs (the auth file is
//! reloaded), so readers take a snapshot per decision.

use std::{collections::HashMap, sync::Arc, time::Duration};

use super::EngineError;

/// What one namespace may hold at once; `None` is no limit of its own.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NamespaceQuota {
    /// Claimable tasks (QUEUED or RETRY_WAIT): past it Submit is refused.
    pub max_queued: Option<usize>,
    /// Attempts running at once: past it its tasks wait in the queue.
    pub max_running: Option<usize>,
    /// Open Awaits, AwaitManys and Runs on this replica.
    pub max_waiters: Option<usize>,
    /// Open Watch streams on this replica.
    pub max_watchers: Option<usize>,
}

/// Every namespace's quota, as last configured.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Quotas {
    pub namespaces: HashMap<String, NamespaceQuota>,
}

impl Quotas {
    pub fn of(&self, namespace: &str) -> NamespaceQuota {
        self.namespaces.get(namespace).copied().unwrap_or_default()
    }

    /// Whether any namespace caps its running attempts (claims then look).
    pub fn caps_running(&self) -> bool {
        self.namespaces
            .values()
            .any(|quota| quota.max_running.is_some())
    }
}

/// The quotas every part of the engine reads, swapped whole on a reload.
pub type SharedQuotas = Arc<arc_swap::ArcSwap<Quotas>>;

/// Process-wide bounds of open listeners, whatever the namespace.
#[derive(Clone, Copy, Debug)]
pub struct ListenerLimits {
    pub max_waiters: usize,
    pub max_watchers: usize,
}

impl Default for ListenerLimits {
    fn default() -> Self {
        Self {
            max_waiters: 100_000,
            max_watchers: 100_000,
        }
    }
}

/// How long a caller refused by a listener limit should wait: listeners
/// end within a max wait, most far sooner.
const LISTENER_RETRY_AFTER: Duration = Duration::from_secs(1);

/// A listener limit reached, as an engine error.
pub(crate) fn listeners_exhausted(what: &str, subject: String, limit: usize) -> EngineError {
    EngineError::QuotaExceeded {
        reason: "TOO_MANY_LISTENERS",
        subject,
        description: format!("at most {limit} open {what}; retry when some have ended"),
        retry_after: LISTENER_RETRY_AFTER,
    }
}

/// A namespace's queue quota reached.
pub(crate) fn queue_quota_exceeded(namespace: &str, limit: usize) -> EngineError {
    EngineError::QuotaExceeded {
        reason: "NAMESPACE_QUEUE_FULL",
        subject: format!("namespace:{namespace}"),
        description: format!(
            "namespace {namespace:?} may have at most {limit} tasks waiting; retry when some have started"
        ),
        retry_after: Duration::from_secs(1),
    }
}
