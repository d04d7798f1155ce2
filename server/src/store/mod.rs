//! Persistence of task records behind one trait, so the engine runs unchanged
//! on every backend. Stores know records, indexes and leases; the state machine
//! itself lives in the engine. Every change is a compare-and-set on the task's
//! `revision`, and every lease change (claim, reap, release) bumps the revision
//! too, so the compare-and-set also fences writers whose lease was taken over.

pub(crate) mod embedded;
mod memory;
mod postgres;

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use async_trait::async_trait;

pub use embedded::{Durability, EmbeddedStore, OpenError};
pub use memory::MemoryStore;
pub use postgres::{PostgresOpenError, PostgresOptions, PostgresStore};

use crate::engine::task::{Lease, RemoteAttempt, TaskId, TaskRecord, TaskState};

/// Errors of any backend, classified once per backend.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("task not found")]
    NotFound,
    #[error("the task changed concurrently")]
    RevisionConflict,
    #[error("the idempotency key was used for a different request")]
    IdempotencyMismatch { existing: TaskId },
    #[error("the queue is full ({limit} tasks waiting)")]
    QueueFull { limit: usize },
    #[error("the lease is no longer held")]
    StaleLease,
    #[error("storage is unavailable: {0}")]
    Unavailable(String),
    #[error("storage failed: {0}")]
    Internal(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A task as stored, shared between the store, readers and watchers.
pub type SharedTask = Arc<TaskRecord>;

/// Receives every committed change, per task in revision order, right after
/// it is durable. The engine's event hub implements it.
pub trait ChangeFeed: Send + Sync + 'static {
    /// A task was created or changed.
    fn changed(&self, task: &SharedTask);
    /// A task was deleted.
    fn deleted(&self, id: TaskId);
    /// Changes of these tasks were committed but could not be reported:
    /// whoever follows them must read the store again.
    fn resync(&self, ids: &[TaskId]);
    /// Changes of any task may have been missed (the store lost track of
    /// other writers for longer than it can replay).
    fn resync_all(&self);
}

/// Receives a task that `create_and_claim` claimed.
pub type OnClaimed = Box<dyn FnOnce(SharedTask) + Send>;

/// Result of an insert that honours idempotency keys.
#[derive(Debug)]
pub enum CreateOutcome {
    Created(SharedTask),
    /// A task with the same idempotency key and the same request fingerprint.
    Existing(SharedTask),
}

/// Position in the newest-first listing order; a page starts strictly after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListCursor {
    pub created_at: SystemTime,
    pub id: TaskId,
}

/// Filters and page bounds of a listing. Empty filters match everything.
#[derive(Clone, Debug, Default)]
pub struct ListQuery {
    /// Only tasks of this namespace; `None`: of every namespace.
    pub namespace: Option<Arc<str>>,
    pub states: Vec<TaskState>,
    pub kinds: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub page_size: usize,
    pub after: Option<ListCursor>,
}

impl ListQuery {
    /// Whether a record passes the filters (not the cursor).
    pub fn matches(&self, task: &TaskRecord) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|namespace| *namespace == task.namespace)
            && (self.states.is_empty() || self.states.contains(&task.state))
            && (self.kinds.is_empty() || self.kinds.contains(&task.kind))
            && self
                .labels
                .iter()
                .all(|(key, value)| task.labels.get(key) == Some(value))
    }
}

/// One page of a listing, newest first.
#[derive(Debug)]
pub struct ListPage {
    pub tasks: Vec<SharedTask>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<ListCursor>,
}

/// What an executor asks for when it has free slots.
#[derive(Clone, Debug)]
pub struct ClaimRequest {
    pub now: SystemTime,
    pub limit: usize,
    /// The node, or the remote worker, that will run the attempts.
    pub owner: String,
    pub lease_duration: Duration,
    /// Only tasks of these kinds are claimed.
    pub kinds: Arc<[String]>,
    /// Only tasks of this namespace (a remote worker's); `None`: of any.
    pub namespace: Option<Arc<str>>,
    /// No tasks of these namespaces (at their quota of running attempts).
    pub excluded_namespaces: Arc<[Arc<str>]>,
    /// Set when a remote worker claims.
    pub remote: Option<RemoteClaim>,
}

/// How a remote worker's claim differs from an in-process one.
#[derive(Clone, Copy, Debug)]
pub struct RemoteClaim {
    /// How long past its attempt deadline a remote attempt's lease still
    /// holds, so the worker can report its own timeout first.
    pub deadline_grace: Duration,
}

impl ClaimRequest {
    /// Turns a due task into a RUNNING one under a fresh lease: what every
    /// backend's `claim_due` does to each task it claims. A remote lease
    /// ends no later than the attempt's deadline (plus the grace), so the
    /// sweep that reaps lost leases also enforces remote attempts' time.
    pub fn claim(&self, task: &mut TaskRecord, fencing_token: u64) {
        task.state = TaskState::Running;
        task.attempt += 1;
        task.revision += 1;
        task.started_at = Some(self.now);
        task.updated_at = self.now;
        task.next_attempt_at = None;
        task.progress = None;
        task.worker_id.clone_from(&self.owner);
        let mut expires_at = self.now + self.lease_duration;
        let remote = self.remote.map(|remote| {
            let attempt_deadline = match (task.attempt_timeout, task.deadline) {
                (Some(timeout), Some(deadline)) => Some((self.now + timeout).min(deadline)),
                (timeout, deadline) => timeout.map(|timeout| self.now + timeout).or(deadline),
            };
            if let Some(deadline) = attempt_deadline {
                expires_at = expires_at.min(deadline + remote.deadline_grace);
            }
            RemoteAttempt {
                secret: format!("{:032x}", rand::random::<u128>()),
                lease_duration: self.lease_duration,
                attempt_deadline,
                trace: task.trace.child(rand::random()),
            }
        });
        task.lease = Some(Lease {
            owner: self.owner.clone(),
            token: fencing_token,
            expires_at,
            remote,
        });
    }

    /// Whether the request takes `task` (when it is due).
    pub fn takes(&self, task: &TaskRecord) -> bool {
        self.kinds.contains(&task.kind) && self.takes_namespace(&task.namespace)
    }

    /// Whether the request takes tasks of `namespace`.
    pub fn takes_namespace(&self, namespace: &str) -> bool {
        self.namespace
            .as_ref()
            .is_none_or(|wanted| **wanted == *namespace)
            && !self
                .excluded_namespaces
                .iter()
                .any(|excluded| **excluded == *namespace)
    }
}

impl crate::telemetry::metrics::record::KindCountsView for KindCounts {
    fn queued(&self) -> usize {
        self.queued
    }
    fn running(&self) -> usize {
        self.running
    }
}

/// Tasks of one kind waiting and running, as counted by the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KindCounts {
    /// QUEUED or RETRY_WAIT.
    pub queued: usize,
    /// RUNNING.
    pub running: usize,
}

/// Persistence of task records. Implementations must be linearizable per task
/// and report every committed change to their [`ChangeFeed`] in commit order.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Inserts a new task unless its idempotency key is taken. With the same
    /// fingerprint the existing task is returned; with another, the insert is
    /// refused. `max_queued` bounds the number of claimable tasks.
    async fn create(
        &self,
        task: TaskRecord,
        max_queued: Option<usize>,
    ) -> StoreResult<CreateOutcome>;

    /// Like [`Store::create`], and when the new task is due by `claim.now`
    /// and no other task is due, also claims it in the same write, as
    /// `claim_due` would, saving the claim's own write. Both changes (the task
    /// queued, then running) reach the feed. A claimed task goes to
    /// `on_claimed`, possibly before the write is durable, so a short attempt
    /// can finish in the same commit; if that write then fails, the task does
    /// not exist and the attempt's own writes fail. `on_claimed` is dropped
    /// uncalled when the task was not claimed. A backend that gains nothing
    /// from it may never claim.
    async fn create_and_claim(
        &self,
        task: TaskRecord,
        max_queued: Option<usize>,
        claim: &ClaimRequest,
        on_claimed: OnClaimed,
    ) -> StoreResult<CreateOutcome> {
        let _ = (claim, on_claimed);
        self.create(task, max_queued).await
    }

    /// Reads one task.
    async fn get(&self, id: TaskId) -> StoreResult<Option<SharedTask>>;

    /// Replaces a task if its stored revision is `expected_revision`. The new
    /// record must carry a higher revision. A lease whose token is unchanged
    /// keeps the stored expiry, which only `extend_lease` moves.
    async fn update(&self, task: TaskRecord, expected_revision: u64) -> StoreResult<SharedTask>;

    /// Removes a task and its idempotency key; false if it did not exist.
    async fn delete(&self, id: TaskId) -> StoreResult<bool>;

    /// Lists tasks newest first.
    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage>;

    /// Moves up to `limit` due tasks (QUEUED or RETRY_WAIT, due by `now`), highest
    /// priority then oldest first, to RUNNING: attempt + 1, a fresh lease with a
    /// new fencing token, revision + 1. Returns them as stored.
    async fn claim_due(&self, request: &ClaimRequest) -> StoreResult<Vec<SharedTask>>;

    /// When the earliest claimable task of one of `kinds` becomes due, if
    /// any is claimable.
    async fn next_due_at(&self, kinds: &[String]) -> StoreResult<Option<SystemTime>>;

    /// Pushes a lease's expiry out without changing the revision (nor
    /// rewriting the record: a renewal is frequent and small). Refused as
    /// `StaleLease` when the task holds another lease, or this one expired
    /// by `now`, reaped or not.
    async fn extend_lease(
        &self,
        id: TaskId,
        token: u64,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> StoreResult<()>;

    /// Claimable tasks whose deadline has passed, oldest deadline first.
    async fn overdue(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<SharedTask>>;

    /// Running tasks whose lease expired before `now`, for reaping and recovery.
    async fn expired_leases(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<SharedTask>>;

    /// Deletes up to `limit` finished tasks whose retention ended; returns their ids.
    async fn delete_expired(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<TaskId>>;

    /// Tasks waiting and running per kind (the queue depth, and the
    /// attempts in flight on every executor).
    async fn kind_counts(&self) -> StoreResult<BTreeMap<String, KindCounts>>;

    /// Tasks of one namespace waiting and running (for its quotas).
    async fn namespace_counts(&self, namespace: &str) -> StoreResult<KindCounts>;

    /// Records that a worker polled for `kinds` at `at`. Stores may keep
    /// only the latest time per kind, and write it at most every few seconds.
    async fn record_poll(&self, kinds: &[String], at: SystemTime) -> StoreResult<()>;

    /// When a worker last polled for each kind (any replica, for a shared store).
    async fn last_polls(&self) -> StoreResult<BTreeMap<String, SystemTime>>;

    /// The recorded revisions of task `id` after `after_revision`, in
    /// order, for a Watch that resumes on a replica that did not see them:
    /// `None` from a store that keeps no history of its own (memory and
    /// embedded, whose one process holds it in memory). PostgreSQL keeps its
    /// change table for minutes; older revisions are gone, which the caller
    /// sees as a gap.
    async fn changes_after(
        &self,
        _id: TaskId,
        _after_revision: u64,
    ) -> StoreResult<Option<Vec<SharedTask>>> {
        Ok(None)
    }

    /// Leaves the storage tidy at a clean shutdown (a file store folds its
    /// log into the main file). Later writes fail as unavailable.
    async fn close(&self) -> StoreResult<()> {
        Ok(())
    }
}
