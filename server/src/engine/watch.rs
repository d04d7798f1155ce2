//! Watching: streams of a task's changes (or of every task matching a
//! filter), and waiting for many tasks at once. Both read the store once and
//! then follow the event hub, so nothing committed after the read is missed.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Duration,
};

use futures::Stream;
use tokio::time::Instant;

use super::{
    Engine, EngineError, Scope, TaskEvent,
    events::AllTasksEvent,
    sleep_until_opt,
    task::{TaskId, TaskState},
};
use crate::store::ListQuery;

/// Most unfinished tasks a filter watch sends as its opening snapshot.
const FILTER_SNAPSHOT_LIMIT: usize = 1_000;

/// One message of a watch stream.
#[derive(Debug)]
pub enum WatchEvent {
    /// The state when the watch started.
    Snapshot(TaskEvent),
    /// One change, in revision order.
    Change(TaskEvent),
    /// Changes were missed; the current state if known (single-task watches).
    Resync(Option<TaskEvent>),
    /// Nothing happened for a heartbeat period.
    Heartbeat,
}

/// Bounds of a watch stream.
#[derive(Clone, Copy, Debug)]
pub struct WatchLimits {
    /// Idle time before a heartbeat.
    pub heartbeat: Duration,
    /// When the stream ends cleanly (the caller's deadline, less a margin).
    pub until: Option<Instant>,
}

/// Which tasks a filter watch follows.
#[derive(Clone, Debug, Default)]
pub struct WatchFilter {
    pub kinds: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub states: Vec<TaskState>,
}

impl WatchFilter {
    fn matches(&self, task: &TaskEvent) -> bool {
        (self.kinds.is_empty() || self.kinds.contains(&task.kind))
            && (self.states.is_empty() || self.states.contains(&task.state))
            && self
                .labels
                .iter()
                .all(|(key, value)| task.labels.get(key) == Some(value))
    }
}

/// What woke a watch loop; `select!` only picks, the stream body acts
/// (async-stream cannot yield from inside another macro).
enum Step<E> {
    Event(E),
    Heartbeat,
    Deadline,
    Shutdown,
}

/// How long a watch keeps trying to read its task again after missing
/// changes before it ends with the store's error (the client resumes).
const REREAD_BOUND: Duration = Duration::from_secs(10);

/// How AwaitMany decides it is done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwaitMode {
    All,
    Any,
}

/// Result of an AwaitMany.
#[derive(Debug)]
pub struct AwaitedMany {
    pub done: bool,
    /// Requested tasks that are terminal, in request order.
    pub finished: Vec<TaskEvent>,
    /// Requested tasks not yet terminal.
    pub unfinished: Vec<TaskEvent>,
    pub not_found: Vec<TaskId>,
}

impl Engine {
    /// Streams one task's changes. `after_revision = 0` opens with a snapshot;
    /// otherwise the changes after it are replayed from the retained history,
    /// or a resync carries the current state when they are gone. The stream
    /// ends after the terminal change, or at `limits.until`; it fails with
    /// `ShuttingDown` when the server drains and `NotFound` if the task is deleted.
    /// Also returns the task as read when the watch started.
    pub async fn watch_task(
        &self,
        scope: &Scope,
        id: TaskId,
        after_revision: u64,
        limits: WatchLimits,
    ) -> Result<
        (
            TaskEvent,
            impl Stream<Item = Result<WatchEvent, EngineError>> + Send + 'static,
        ),
        EngineError,
    > {
        let engine = self.clone();
        // Looked at before subscribing, so an id of another namespace
        // leaves no topic behind; the snapshot is read after.
        let seen = self.get(scope, id).await?;
        let watcher = self.inner.hub.watcher_guard(&seen.namespace)?;
        let (mut subscription, history) = self.inner.hub.subscribe_with_history(id);
        let current = self.read(id).await?;
        let started = current.clone();
        let events = async_stream::try_stream! {
            let _watcher = watcher;
            let mut last = current.clone();
            if after_revision == 0 {
                yield WatchEvent::Snapshot(current);
            } else if after_revision < current.revision {
                let mut replay: Vec<TaskEvent> =
                    history.into_iter().filter(|task| task.revision > after_revision).collect();
                if replay.first().is_none_or(|first| first.revision != after_revision + 1) {
                    // Resumed on a replica that did not follow this task: the
                    // store may still have what it missed.
                    replay = engine.stored_changes(id, after_revision, &current).await;
                }
                if replay.first().is_some_and(|first| first.revision == after_revision + 1) {
                    for task in replay {
                        last = task.clone();
                        yield WatchEvent::Change(task);
                    }
                } else {
                    yield WatchEvent::Resync(Some(current));
                }
            } else if after_revision > current.revision {
                // The client holds a revision this task never had.
                yield WatchEvent::Resync(Some(current));
            }

            let mut heartbeat_at = Instant::now() + limits.heartbeat;
            while !last.is_terminal() {
                let step = tokio::select! {
                    event = subscription.recv() => Step::Event(event),
                    () = tokio::time::sleep_until(heartbeat_at) => Step::Heartbeat,
                    () = sleep_until_opt(limits.until) => Step::Deadline,
                    () = engine.inner.stop_dispatch.cancelled() => Step::Shutdown,
                };
                heartbeat_at = Instant::now() + limits.heartbeat;
                match step {
                    Step::Event(Ok(task)) if task.revision <= last.revision => {}
                    Step::Event(Ok(task)) if task.revision == last.revision + 1 => {
                        last = task.clone();
                        yield WatchEvent::Change(task);
                    }
                    // Behind, out of step, closed (deleted) or resynced: the store decides.
                    Step::Event(_) => {
                        subscription = engine.inner.hub.subscribe(id);
                        let bound = Instant::now() + REREAD_BOUND;
                        let current = match engine.reread(id, Some(limits.until.map_or(bound, |until| until.min(bound)))).await? {
                            Some(current) => current,
                            None if limits.until.is_some_and(|until| until <= Instant::now()) => break,
                            None => Err(EngineError::StorageUnavailable(crate::store::StoreError::Unavailable(
                                "the task could not be read again".into(),
                            )))?,
                        };
                        if current.revision > last.revision {
                            last = current.clone();
                            yield WatchEvent::Resync(Some(current));
                        }
                    }
                    Step::Heartbeat => yield WatchEvent::Heartbeat,
                    Step::Deadline => break,
                    Step::Shutdown => Err(EngineError::ShuttingDown)?,
                }
            }
        };
        Ok((started, events))
    }

    /// The revisions after `after_revision` up to `current`, from the
    /// store, when it has every one of them; empty otherwise (the watch then
    /// resyncs, as it does when a store keeps no history).
    async fn stored_changes(
        &self,
        id: TaskId,
        after_revision: u64,
        current: &TaskEvent,
    ) -> Vec<TaskEvent> {
        let Ok(Some(changes)) = self.inner.store.changes_after(id, after_revision).await else {
            return Vec::new();
        };
        let gapless = changes
            .iter()
            .zip(after_revision + 1..)
            .all(|(task, expected)| task.revision == expected);
        let reaches = changes
            .last()
            .is_some_and(|last| last.revision >= current.revision);
        if gapless && reaches {
            changes
        } else {
            Vec::new()
        }
    }

    /// Streams the changes of every task matching `filter`, opening with a
    /// snapshot of the matching unfinished tasks. Ends at `limits.until`.
    pub async fn watch_filtered(
        &self,
        scope: &Scope,
        filter: WatchFilter,
        limits: WatchLimits,
    ) -> Result<impl Stream<Item = Result<WatchEvent, EngineError>> + Send + 'static, EngineError>
    {
        let engine = self.clone();
        let watcher = self.inner.hub.watcher_guard(scope.home())?;
        let mut changes = self.inner.hub.subscribe_all(scope);
        let unfinished = [TaskState::Queued, TaskState::Running, TaskState::RetryWait];
        let query = ListQuery {
            namespace: None,
            states: if filter.states.is_empty() {
                unfinished.to_vec()
            } else {
                filter
                    .states
                    .iter()
                    .copied()
                    .filter(|state| unfinished.contains(state))
                    .collect()
            },
            kinds: filter.kinds.clone(),
            labels: filter.labels.clone(),
            page_size: FILTER_SNAPSHOT_LIMIT,
            after: None,
        };
        let opening = if query.states.is_empty() {
            Vec::new()
        } else {
            self.list(scope, &query).await?.tasks
        };
        Ok(async_stream::try_stream! {
            let _watcher = watcher;
            // Changes already covered by the opening snapshot are skipped.
            let mut snapshot_revisions: HashMap<TaskId, u64> =
                opening.iter().map(|task| (task.id, task.revision)).collect();
            for task in opening {
                yield WatchEvent::Snapshot(task);
            }
            let mut heartbeat_at = Instant::now() + limits.heartbeat;
            loop {
                let step = tokio::select! {
                    event = changes.recv() => Step::Event(event),
                    () = tokio::time::sleep_until(heartbeat_at) => Step::Heartbeat,
                    () = sleep_until_opt(limits.until) => Step::Deadline,
                    () = engine.inner.stop_dispatch.cancelled() => Step::Shutdown,
                };
                heartbeat_at = Instant::now() + limits.heartbeat;
                match step {
                    Step::Event(AllTasksEvent::Changed(task)) => {
                        if let Some(seen) = snapshot_revisions.get(&task.id) {
                            if task.revision <= *seen {
                                continue;
                            }
                            snapshot_revisions.remove(&task.id);
                        }
                        if filter.matches(&task) {
                            yield WatchEvent::Change(task);
                        }
                    }
                    Step::Event(AllTasksEvent::Missed(_)) => {
                        snapshot_revisions.clear();
                        yield WatchEvent::Resync(None);
                    }
                    Step::Event(AllTasksEvent::Closed) | Step::Shutdown => Err(EngineError::ShuttingDown)?,
                    Step::Heartbeat => yield WatchEvent::Heartbeat,
                    Step::Deadline => break,
                }
            }
        })
    }

    /// Waits until all (or any) of `ids` are terminal, for at most `wait`
    /// (capped by the server's max wait).
    pub async fn await_many(
        &self,
        scope: &Scope,
        ids: &[TaskId],
        mode: AwaitMode,
        wait: Duration,
    ) -> Result<AwaitedMany, EngineError> {
        let _waiter = self.inner.hub.waiter_guard(scope.home())?;
        let wait_until = Instant::now() + wait.min(self.inner.config.max_await);
        let mut changes = self.inner.hub.subscribe_all(scope);
        let mut latest: HashMap<TaskId, TaskEvent> = HashMap::with_capacity(ids.len());
        let mut not_found = Vec::new();
        let mut seen = HashSet::with_capacity(ids.len());
        let requested: Vec<TaskId> = ids.iter().copied().filter(|id| seen.insert(*id)).collect();
        for &id in &requested {
            match self.inner.store.get(id).await? {
                // Another namespace's task is reported as unknown.
                Some(task) if scope.sees(&task.namespace) => {
                    latest.insert(id, task);
                }
                _ => not_found.push(id),
            }
        }
        let is_done = |latest: &HashMap<TaskId, TaskEvent>| {
            let mut tasks = latest.values();
            match mode {
                AwaitMode::All => tasks.all(|task| task.is_terminal()),
                AwaitMode::Any => tasks.any(|task| task.is_terminal()),
            }
        };
        let mut done = is_done(&latest);
        while !done && !latest.is_empty() {
            tokio::select! {
                event = changes.recv() => match event {
                    AllTasksEvent::Changed(task) => {
                        if let Some(known) = latest.get_mut(&task.id)
                            && task.revision > known.revision
                        {
                            *known = task;
                        }
                    }
                    AllTasksEvent::Missed(ids) => {
                        let missed: Vec<TaskId> = latest
                            .keys()
                            .copied()
                            .filter(|id| ids.as_ref().is_none_or(|ids| ids.contains(id)))
                            .collect();
                        // Together: one slow read must not hold up the others.
                        let reads = missed.iter().map(|id| self.reread(*id, Some(wait_until)));
                        for (id, read) in missed.iter().zip(futures::future::join_all(reads).await) {
                            match read {
                                Ok(Some(task)) if task.revision > latest[id].revision => {
                                    latest.insert(*id, task);
                                }
                                Ok(_) => {}
                                // Deleted meanwhile: what was last seen stands.
                                Err(EngineError::NotFound(_)) => {}
                                Err(error) => return Err(error),
                            }
                        }
                    }
                    AllTasksEvent::Closed => break,
                },
                () = tokio::time::sleep_until(wait_until) => break,
                // Waited for again at another replica, not answered `done = false`.
                () = self.inner.stop_dispatch.cancelled() => return Err(EngineError::ShuttingDown),
            }
            done = is_done(&latest);
        }
        let (finished, unfinished) = requested
            .iter()
            .filter_map(|id| latest.remove(id))
            .partition(|task| task.is_terminal());
        Ok(AwaitedMany {
            done,
            finished,
            unfinished,
            not_found,
        })
    }
}
