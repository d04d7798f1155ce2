//! In-memory store for tests and throwaway runs: a map of shared records plus
//! ordered indexes, all under one mutex that is never held across an `.await`.
//! Changes reach the feed inside the lock, so the feed sees commit order.

use std::{
    cmp::Reverse,
    collections::{BTreeMap, BTreeSet, HashMap},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use async_trait::async_trait;

use super::{
    ChangeFeed, ClaimRequest, CreateOutcome, KindCounts, ListCursor, ListPage, ListQuery,
    OnClaimed, SharedTask, Store, StoreError, StoreResult,
};
use crate::engine::task::{TaskId, TaskRecord, TaskState};

/// The memory backend. Everything is lost with the process.
pub struct MemoryStore {
    inner: Mutex<Indexed>,
    feed: Arc<dyn ChangeFeed>,
}

impl MemoryStore {
    pub fn new(feed: Arc<dyn ChangeFeed>) -> Self {
        Self {
            inner: Mutex::default(),
            feed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Indexed> {
        // Every operation leaves the indexes consistent before it can panic,
        // so a poisoned lock still guards usable data.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// `create` under the lock the caller holds.
    fn create_locked(
        &self,
        indexed: &mut Indexed,
        task: TaskRecord,
        max_queued: Option<usize>,
    ) -> StoreResult<CreateOutcome> {
        if let Some(key) = task.idempotency_index_key()
            && let Some(existing_id) = indexed.idempotency_keys.get(&key)
        {
            let existing = &indexed.tasks[existing_id];
            if existing.request_fingerprint != task.request_fingerprint {
                return Err(StoreError::IdempotencyMismatch {
                    existing: existing.id,
                });
            }
            return Ok(CreateOutcome::Existing(existing.clone()));
        }
        if let Some(limit) = max_queued
            && indexed.queued >= limit
        {
            return Err(StoreError::QueueFull { limit });
        }
        let task = Arc::new(task);
        indexed.insert(task.clone());
        self.feed.changed(&task);
        Ok(CreateOutcome::Created(task))
    }
}

/// Claimable tasks due now, in claim order.
type ReadyKey = (Reverse<i32>, SystemTime, TaskId);

/// The claimable tasks of one kind in one namespace.
#[derive(Default)]
struct NamespaceQueue {
    /// Claimable tasks found due by a claim, in claim order.
    ready: BTreeSet<ReadyKey>,
    /// Claimable tasks not yet promoted to `ready`, by due time.
    waiting: BTreeSet<(SystemTime, TaskId)>,
}

/// The claimable and running tasks of one kind. Queued tasks are kept per
/// namespace, so a worker of one namespace finds its next task without
/// passing over another namespace's.
#[derive(Default)]
struct KindQueue {
    namespaces: HashMap<Arc<str>, NamespaceQueue>,
    running: usize,
}

impl KindQueue {
    fn namespace(&mut self, namespace: &Arc<str>) -> &mut NamespaceQueue {
        if !self.namespaces.contains_key(namespace) {
            self.namespaces
                .insert(namespace.clone(), NamespaceQueue::default());
        }
        self.namespaces.get_mut(namespace).expect("just inserted")
    }

    /// The namespace queues a claim looks at (all without one).
    fn visible<'a>(
        &'a self,
        claim: Option<&'a ClaimRequest>,
    ) -> impl Iterator<Item = &'a NamespaceQueue> + 'a {
        self.namespaces
            .iter()
            .filter(move |(own, _)| claim.is_none_or(|claim| claim.takes_namespace(own)))
            .map(|(_, queue)| queue)
    }

    fn queued(&self) -> usize {
        self.namespaces
            .values()
            .map(|queue| queue.ready.len() + queue.waiting.len())
            .sum()
    }
}

#[derive(Default)]
struct Indexed {
    tasks: HashMap<TaskId, SharedTask>,
    idempotency_keys: HashMap<(Arc<str>, String), TaskId>,
    queues: HashMap<String, KindQueue>,
    /// Claimable tasks with a deadline.
    deadlines: BTreeSet<(SystemTime, TaskId)>,
    /// Running tasks by lease expiry.
    leases: BTreeSet<(SystemTime, TaskId)>,
    /// Finished tasks by removal time.
    expiring: BTreeSet<(SystemTime, TaskId)>,
    by_creation: BTreeSet<(SystemTime, TaskId)>,
    queued: usize,
    last_fencing_token: u64,
    last_polls: BTreeMap<String, SystemTime>,
}

impl Indexed {
    fn insert(&mut self, task: SharedTask) {
        self.index(&task);
        if let Some(key) = task.idempotency_index_key() {
            self.idempotency_keys.insert(key, task.id);
        }
        self.tasks.insert(task.id, task);
    }

    fn remove(&mut self, id: TaskId) -> Option<SharedTask> {
        let task = self.tasks.remove(&id)?;
        self.unindex(&task);
        if let Some(key) = task.idempotency_index_key()
            && self.idempotency_keys.get(&key) == Some(&id)
        {
            self.idempotency_keys.remove(&key);
        }
        Some(task)
    }

    fn queue(&mut self, kind: &str) -> &mut KindQueue {
        // Look up before inserting: `entry` would copy the kind every time.
        if !self.queues.contains_key(kind) {
            self.queues.insert(kind.to_owned(), KindQueue::default());
        }
        self.queues.get_mut(kind).expect("just inserted")
    }

    fn index(&mut self, task: &TaskRecord) {
        self.by_creation.insert((task.created_at, task.id));
        if let Some(due) = task.due_at() {
            // Claims promote what is due by their own clock.
            self.queue(&task.kind)
                .namespace(&task.namespace)
                .waiting
                .insert((due, task.id));
            self.queued += 1;
            if let Some(deadline) = task.deadline {
                self.deadlines.insert((deadline, task.id));
            }
        }
        if let (TaskState::Running, Some(lease)) = (task.state, &task.lease) {
            self.leases.insert((lease.expires_at, task.id));
            self.queue(&task.kind).running += 1;
        }
        if let Some(expires_at) = task.expires_at.filter(|_| task.is_terminal()) {
            self.expiring.insert((expires_at, task.id));
        }
    }

    fn unindex(&mut self, task: &TaskRecord) {
        self.by_creation.remove(&(task.created_at, task.id));
        if let Some(due) = task.due_at() {
            if let Some(queue) = self
                .queues
                .get_mut(&task.kind)
                .and_then(|queue| queue.namespaces.get_mut(&task.namespace))
            {
                queue.ready.remove(&ready_key(task));
                queue.waiting.remove(&(due, task.id));
            }
            self.queued -= 1;
            if let Some(deadline) = task.deadline {
                self.deadlines.remove(&(deadline, task.id));
            }
        }
        if let (TaskState::Running, Some(lease)) = (task.state, &task.lease) {
            self.leases.remove(&(lease.expires_at, task.id));
            if let Some(queue) = self.queues.get_mut(&task.kind) {
                queue.running -= 1;
            }
        }
        if let Some(expires_at) = task.expires_at {
            self.expiring.remove(&(expires_at, task.id));
        }
    }

    fn replace(&mut self, mut task: TaskRecord) -> SharedTask {
        if let Some(old) = self.tasks.remove(&task.id) {
            self.unindex(&old);
            if let (Some(old_lease), Some(new_lease)) = (&old.lease, &mut task.lease)
                && old_lease.token == new_lease.token
            {
                new_lease.expires_at = old_lease.expires_at;
            }
        }
        self.index(&task);
        let task = Arc::new(task);
        self.tasks.insert(task.id, task.clone());
        task
    }

    fn idempotency_key_is_free(&self, task: &TaskRecord) -> bool {
        task.idempotency_index_key()
            .is_none_or(|key| !self.idempotency_keys.contains_key(&key))
    }

    /// Moves waiting tasks of `kinds` that became due into their ready sets.
    fn promote_due(&mut self, kinds: &[String], now: SystemTime) {
        for kind in kinds {
            let Some(queue) = self.queues.get_mut(kind) else {
                continue;
            };
            for queue in queue.namespaces.values_mut() {
                while let Some(&(due, id)) = queue.waiting.first() {
                    if due > now {
                        break;
                    }
                    queue.waiting.pop_first();
                    if let Some(task) = self.tasks.get(&id) {
                        queue.ready.insert(ready_key(task));
                    }
                }
            }
        }
    }

    /// The next task the claim takes (promoted first), in claim order.
    fn first_ready(&self, claim: &ClaimRequest) -> Option<TaskId> {
        claim
            .kinds
            .iter()
            .filter_map(|kind| self.queues.get(kind))
            .flat_map(|queue| queue.visible(Some(claim)))
            .filter_map(|queue| queue.ready.first())
            .min()
            .map(|&(_, _, id)| id)
    }
}

fn ready_key(task: &TaskRecord) -> ReadyKey {
    (Reverse(task.priority), task.created_at, task.id)
}

#[async_trait]
impl Store for MemoryStore {
    async fn create(
        &self,
        task: TaskRecord,
        max_queued: Option<usize>,
    ) -> StoreResult<CreateOutcome> {
        self.create_locked(&mut self.lock(), task, max_queued)
    }

    async fn create_and_claim(
        &self,
        task: TaskRecord,
        max_queued: Option<usize>,
        claim: &ClaimRequest,
        on_claimed: OnClaimed,
    ) -> StoreResult<CreateOutcome> {
        let mut indexed = self.lock();
        indexed.promote_due(&claim.kinds, claim.now);
        // Admission comes first, as in `create`: a full queue refuses even
        // a task that could start at once.
        let claimable = claim.takes(&task)
            && indexed.first_ready(claim).is_none()
            && max_queued.is_none_or(|limit| indexed.queued < limit)
            && indexed.idempotency_key_is_free(&task)
            && task.due_at().is_some_and(|due| due <= claim.now);
        if !claimable {
            return self.create_locked(&mut indexed, task, max_queued);
        }
        let queued = Arc::new(task);
        let mut running = TaskRecord::clone(&queued);
        indexed.last_fencing_token += 1;
        claim.claim(&mut running, indexed.last_fencing_token);
        let running = Arc::new(running);
        indexed.insert(running.clone());
        self.feed.changed(&queued);
        self.feed.changed(&running);
        drop(indexed);
        on_claimed(running);
        Ok(CreateOutcome::Created(queued))
    }

    async fn get(&self, id: TaskId) -> StoreResult<Option<SharedTask>> {
        Ok(self.lock().tasks.get(&id).cloned())
    }

    async fn update(&self, task: TaskRecord, expected_revision: u64) -> StoreResult<SharedTask> {
        let mut indexed = self.lock();
        let Some(stored) = indexed.tasks.get(&task.id) else {
            return Err(StoreError::NotFound);
        };
        if stored.revision != expected_revision || task.revision <= expected_revision {
            return Err(StoreError::RevisionConflict);
        }
        let task = indexed.replace(task);
        self.feed.changed(&task);
        Ok(task)
    }

    async fn delete(&self, id: TaskId) -> StoreResult<bool> {
        let removed = self.lock().remove(id).is_some();
        if removed {
            self.feed.deleted(id);
        }
        Ok(removed)
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        let indexed = self.lock();
        let newest_first = match query.after {
            Some(cursor) => indexed.by_creation.range(..(cursor.created_at, cursor.id)),
            None => indexed.by_creation.range(..),
        }
        .rev();
        let mut tasks: Vec<SharedTask> = Vec::with_capacity(query.page_size.min(1_000));
        let mut next = None;
        for (_, id) in newest_first {
            let task = &indexed.tasks[id];
            if !query.matches(task) {
                continue;
            }
            if tasks.len() == query.page_size {
                next = tasks.last().map(|last| ListCursor {
                    created_at: last.created_at,
                    id: last.id,
                });
                break;
            }
            tasks.push(task.clone());
        }
        Ok(ListPage { tasks, next })
    }

    async fn claim_due(&self, request: &ClaimRequest) -> StoreResult<Vec<SharedTask>> {
        let mut indexed = self.lock();
        indexed.promote_due(&request.kinds, request.now);
        let mut claimed = Vec::new();
        while claimed.len() < request.limit {
            let Some(id) = indexed.first_ready(request) else {
                break;
            };
            let Some(stored) = indexed.tasks.get(&id) else {
                break;
            };
            let mut task = TaskRecord::clone(stored);
            indexed.last_fencing_token += 1;
            request.claim(&mut task, indexed.last_fencing_token);
            let task = indexed.replace(task);
            self.feed.changed(&task);
            claimed.push(task);
        }
        Ok(claimed)
    }

    async fn next_due_at(&self, kinds: &[String]) -> StoreResult<Option<SystemTime>> {
        let indexed = self.lock();
        Ok(kinds
            .iter()
            .filter_map(|kind| {
                let queue = indexed.queues.get(kind)?;
                queue
                    .visible(None)
                    .flat_map(|queue| {
                        let ready = queue
                            .ready
                            .first()
                            .and_then(|(_, _, id)| indexed.tasks.get(id)?.due_at());
                        let waiting = queue.waiting.first().map(|&(due, _)| due);
                        ready.into_iter().chain(waiting)
                    })
                    .min()
            })
            .min())
    }

    async fn extend_lease(
        &self,
        id: TaskId,
        token: u64,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> StoreResult<()> {
        let mut guard = self.lock();
        let indexed = &mut *guard;
        let Some(task) = indexed.tasks.get_mut(&id) else {
            return Err(StoreError::NotFound);
        };
        let Some(previous) = task
            .lease
            .as_ref()
            .filter(|lease| lease.token == token && lease.holds_at(now))
            .map(|lease| lease.expires_at)
        else {
            return Err(StoreError::StaleLease);
        };
        // The revision stays: a lease renewal is not a change anyone watches.
        let mut renewed = TaskRecord::clone(task);
        if let Some(lease) = renewed.lease.as_mut() {
            lease.expires_at = expires_at;
        }
        *task = Arc::new(renewed);
        indexed.leases.remove(&(previous, id));
        indexed.leases.insert((expires_at, id));
        Ok(())
    }

    async fn overdue(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<SharedTask>> {
        let indexed = self.lock();
        Ok(indexed
            .deadlines
            .iter()
            .take_while(|(deadline, _)| *deadline <= now)
            .take(limit)
            .map(|(_, id)| indexed.tasks[id].clone())
            .collect())
    }

    async fn expired_leases(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<SharedTask>> {
        let indexed = self.lock();
        Ok(indexed
            .leases
            .iter()
            .take_while(|(expires_at, _)| *expires_at <= now)
            .take(limit)
            .map(|(_, id)| indexed.tasks[id].clone())
            .collect())
    }

    async fn delete_expired(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<TaskId>> {
        let mut indexed = self.lock();
        let expired: Vec<TaskId> = indexed
            .expiring
            .iter()
            .take_while(|(expires_at, _)| *expires_at <= now)
            .take(limit)
            .map(|&(_, id)| id)
            .collect();
        for &id in &expired {
            indexed.remove(id);
            self.feed.deleted(id);
        }
        Ok(expired)
    }

    async fn kind_counts(&self) -> StoreResult<BTreeMap<String, KindCounts>> {
        Ok(self
            .lock()
            .queues
            .iter()
            .map(|(kind, queue)| {
                let counts = KindCounts {
                    queued: queue.queued(),
                    running: queue.running,
                };
                (kind.clone(), counts)
            })
            .collect())
    }

    async fn namespace_counts(&self, namespace: &str) -> StoreResult<KindCounts> {
        let indexed = self.lock();
        let mut counts = KindCounts::default();
        for queue in indexed.queues.values() {
            if let Some(queue) = queue.namespaces.get(namespace) {
                counts.queued += queue.ready.len() + queue.waiting.len();
            }
        }
        counts.running = indexed
            .leases
            .iter()
            .filter(|(_, id)| *indexed.tasks[id].namespace == *namespace)
            .count();
        Ok(counts)
    }

    async fn record_poll(&self, kinds: &[String], at: SystemTime) -> StoreResult<()> {
        let mut indexed = self.lock();
        for kind in kinds {
            indexed.last_polls.insert(kind.clone(), at);
        }
        Ok(())
    }

    async fn last_polls(&self) -> StoreResult<BTreeMap<String, SystemTime>> {
        Ok(self.lock().last_polls.clone())
    }
}
