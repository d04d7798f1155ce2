//! The domain: task records, the state machine, scheduling, execution, waiting
//! and events. It knows nothing of gRPC; `grpc/` adapts it to the wire.
//!
//! Every change follows one path: compare-and-set in the store, then publish
//! the stored snapshot on the [`EventHub`]. A waiter subscribes before it reads
//! the store, so it cannot miss a change.

pub mod error;
pub mod events;
pub mod kinds;
pub mod namespace;
pub mod quota;
pub mod retry;
pub mod task;
pub mod transitions;

mod executor;
mod maintenance;
pub(crate) mod validate;
pub mod watch;
pub mod workers;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use opentelemetry::context::FutureExt as _;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, broadcast::error::RecvError};
use tokio_util::{
    sync::CancellationToken,
    task::{TaskTracker, task_tracker::TaskTrackerToken},
};
use tracing::Instrument as _;

pub use error::{EngineError, FieldViolation};
pub use events::{EventHub, TaskEvent};
pub use vow_handler::{Handler, HandlerContext, HandlerRegistry};
/// The handler vocabulary, where the engine's paths always found it.
pub mod handler {
    pub use vow_handler::*;
}
pub use kinds::{KindSettings, Kinds, KindsError};
pub use namespace::Scope;
use retry::RetryPolicy;
use task::{SubmitSpec, TaskDeadline, TaskId, TaskRecord, TaskState, TraceContext};

use crate::{
    store::{ClaimRequest, CreateOutcome, ListPage, ListQuery, Store, StoreError},
    telemetry::metrics::record,
};

/// Changes retained per watched task for resuming watchers, by default.
pub const DEFAULT_EVENT_HISTORY: usize = 256;
/// Waits between reads of a task that followers retry while the store is
/// unavailable.
const REREAD_FIRST_BACKOFF: Duration = Duration::from_millis(50);
const REREAD_MAX_BACKOFF: Duration = Duration::from_secs(1);
/// How long the cancel of a Run whose caller went away is retried while
/// the store is unavailable.
const ABANDONED_RUN_CANCEL_BOUND: Duration = Duration::from_secs(60);

/// Tunables of the engine; `vowd` fills them from flags.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Names this process in leases.
    pub node_id: String,
    /// Attempts running at once.
    pub max_concurrent_tasks: usize,
    /// Claimable tasks allowed before Submit answers RESOURCE_EXHAUSTED.
    pub max_queued_tasks: usize,
    /// Largest accepted input.
    pub max_input_bytes: usize,
    /// Policy for fields a submitter leaves unset.
    pub default_retry: RetryPolicy,
    /// Highest `max_attempts` a submitter may ask for.
    pub max_attempts_limit: u32,
    /// How long finished tasks are kept unless the submitter says otherwise.
    pub default_retention: Duration,
    /// Longest retention a submitter may ask for.
    pub max_retention: Duration,
    /// Longest single Await, whatever the caller asks.
    pub max_await: Duration,
    /// Lease of a running attempt; heartbeats renew it at a third of this.
    pub lease_duration: Duration,
    /// How long a cancelled handler may take to return before it is abandoned.
    pub cancel_grace: Duration,
    /// Least time between two progress writes of one attempt.
    pub progress_interval: Duration,
    /// Period of the deadline, lease and retention sweeps.
    pub sweep_interval: Duration,
    /// Idle time after which a watch stream gets a heartbeat.
    pub watch_heartbeat: Duration,
    /// Most ids one AwaitMany may name.
    pub await_many_limit: usize,
    /// Other processes write to the same store (PostgreSQL replicas): their
    /// changes arrive through the event hub and must wake this dispatcher and
    /// reach the attempts running here (a cancel asked of another replica).
    pub shared_store: bool,
    /// Remote kinds, and defaults per kind (built in or remote).
    pub kinds: BTreeMap<String, KindSettings>,
    /// Longest lease a remote worker may ask for.
    pub max_lease_duration: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            // Random: replicas in containers all run as pid 1.
            node_id: format!("vowd-{:08x}", rand::random::<u32>()),
            max_concurrent_tasks: 256,
            max_queued_tasks: 100_000,
            max_input_bytes: 4 * 1024 * 1024,
            default_retry: RetryPolicy::default(),
            max_attempts_limit: 100,
            default_retention: Duration::from_secs(24 * 60 * 60),
            max_retention: Duration::from_secs(30 * 24 * 60 * 60),
            max_await: Duration::from_secs(5 * 60),
            lease_duration: Duration::from_secs(30),
            cancel_grace: Duration::from_secs(5),
            progress_interval: Duration::from_millis(100),
            sweep_interval: Duration::from_millis(200),
            watch_heartbeat: Duration::from_secs(15),
            await_many_limit: 1_000,
            shared_store: false,
            kinds: BTreeMap::new(),
            max_lease_duration: Duration::from_secs(10 * 60),
        }
    }
}

/// Result of a submit.
#[derive(Debug)]
pub struct Submitted {
    pub task: TaskEvent,
    /// An earlier submit with the same idempotency key created the task.
    pub deduplicated: bool,
}

/// What a wait does when the server starts draining.
#[derive(Clone, Copy, PartialEq, Eq)]
enum AtDrain {
    /// End with `ShuttingDown`: the caller can wait again at another replica.
    Fail,
    /// Keep waiting: the caller's own call is bound to the task (Run, Delete).
    Wait,
}

/// Result of a bounded wait.
#[derive(Debug)]
pub struct Awaited {
    pub task: TaskEvent,
    /// The task is terminal.
    pub done: bool,
}

/// Why a running attempt is being stopped.
#[derive(Clone, Debug)]
enum StopReason {
    Cancelled(String),
    HandedBack,
}

/// A locally running attempt, reachable by Cancel and by shutdown.
struct RunningAttempt {
    cancellation: CancellationToken,
    stop_reason: Mutex<Option<StopReason>>,
}

impl RunningAttempt {
    /// A new attempt, stopped at the latest when the engine shuts down.
    fn new(shutdown: &CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            cancellation: shutdown.child_token(),
            stop_reason: Mutex::new(None),
        })
    }

    /// Whether this attempt (not another of the same task) is the one
    /// registered under `id`.
    fn is_registered(self: &Arc<Self>, running: &HashMap<TaskId, Arc<Self>>, id: TaskId) -> bool {
        running
            .get(&id)
            .is_some_and(|registered| Arc::ptr_eq(registered, self))
    }
}

/// An executor slot and a registered attempt, held for a task being
/// created; given back unless the store claims the task.
struct ReservedAttempt {
    engine: Engine,
    /// The store may hand the task over on a thread of its own.
    runtime: tokio::runtime::Handle,
    task_id: TaskId,
    slot: Option<OwnedSemaphorePermit>,
    attempt: Arc<RunningAttempt>,
    _in_flight: TaskTrackerToken,
}

impl ReservedAttempt {
    /// Runs the first attempt of the task the store claimed.
    fn start(mut self, claimed: TaskEvent) {
        let Some(slot) = self.slot.take() else {
            return;
        };
        let attempt =
            executor::run_attempt(self.engine.clone(), claimed, self.attempt.clone(), slot);
        self.engine.inner.attempts.spawn_on(attempt, &self.runtime);
    }
}

impl Drop for ReservedAttempt {
    fn drop(&mut self) {
        if self.slot.is_none() {
            return;
        }
        let mut running = self.engine.lock_running();
        if self.attempt.is_registered(&running, self.task_id) {
            running.remove(&self.task_id);
        }
    }
}

/// What a read-modify-write decided to do with the record it read.
enum Mutation {
    Write,
    Keep,
}

/// The task engine. Cheap to clone; all clones share one engine.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    config: EngineConfig,
    store: Arc<dyn Store>,
    hub: Arc<EventHub>,
    handlers: HandlerRegistry,
    kinds: Kinds,
    /// Pollers of remote kinds, and what wakes them.
    remote: workers::RemoteWork,
    dispatch_wakeup: Notify,
    /// Held while claiming and registering attempts, so Cancel finds every
    /// attempt the store shows as running here.
    claim_gate: tokio::sync::Mutex<()>,
    running: Mutex<HashMap<TaskId, Arc<RunningAttempt>>>,
    accepting: AtomicBool,
    /// Fired when draining starts: stops claiming new work and ends watch
    /// streams (UNAVAILABLE) so their clients resume on another replica.
    stop_dispatch: CancellationToken,
    /// Ends waits and background loops; fired last at shutdown.
    shutdown: CancellationToken,
    attempts: TaskTracker,
    background: TaskTracker,
    slots: Arc<Semaphore>,
}

impl Engine {
    /// Starts an engine with its dispatcher and maintenance loops over a store
    /// that reports its changes to `hub`. Must be called inside a tokio
    /// runtime. Fails if the configured kinds do not fit the handlers.
    pub fn start(
        config: EngineConfig,
        store: Arc<dyn Store>,
        hub: Arc<EventHub>,
        handlers: HandlerRegistry,
    ) -> Result<Self, KindsError> {
        let kinds = Kinds::new(&handlers, &config.kinds)?;
        let slots = Arc::new(Semaphore::new(config.max_concurrent_tasks.max(1)));
        hub.publish_gauges();
        let engine = Self {
            inner: Arc::new(Inner {
                config,
                store,
                hub,
                handlers,
                kinds,
                remote: workers::RemoteWork::default(),
                dispatch_wakeup: Notify::new(),
                claim_gate: tokio::sync::Mutex::new(()),
                running: Mutex::default(),
                accepting: AtomicBool::new(true),
                stop_dispatch: CancellationToken::new(),
                shutdown: CancellationToken::new(),
                attempts: TaskTracker::new(),
                background: TaskTracker::new(),
                slots,
            }),
        };
        engine
            .inner
            .background
            .spawn(executor::dispatch_loop(engine.clone()));
        engine
            .inner
            .background
            .spawn(maintenance::sweep_loop(engine.clone()));
        if engine.inner.config.shared_store {
            engine
                .inner
                .background
                .spawn(executor::follow_other_writers(engine.clone()));
        }
        Ok(engine)
    }

    /// The in-process event hub (waiter and watcher gauges live there).
    pub fn hub(&self) -> &Arc<EventHub> {
        &self.inner.hub
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// Kinds this engine accepts, built in and remote.
    pub fn kinds(&self) -> &Kinds {
        &self.inner.kinds
    }

    /// Accepts a task. It is stored before this returns.
    pub async fn submit(
        &self,
        scope: &Scope,
        spec: SubmitSpec,
        trace: TraceContext,
    ) -> Result<Submitted, EngineError> {
        let record = self.new_submission(scope, spec, trace, None)?;
        self.store_submission(record).await
    }

    /// Validates a submit and makes the record of its task, whose deadline
    /// is also bounded by `deadline_bound`.
    fn new_submission(
        &self,
        scope: &Scope,
        spec: SubmitSpec,
        trace: TraceContext,
        deadline_bound: Option<SystemTime>,
    ) -> Result<TaskRecord, EngineError> {
        if !self.inner.accepting.load(Ordering::Acquire) {
            return Err(EngineError::ShuttingDown);
        }
        let now = SystemTime::now();
        validate::validate(
            &spec,
            &self.inner.config,
            &self.inner.kinds,
            &self.inner.handlers,
            now,
        )?;
        Ok(self.new_record(scope.home(), spec, trace, deadline_bound, now))
    }

    /// Stores a new task (or finds the one its idempotency key names).
    async fn store_submission(&self, record: TaskRecord) -> Result<Submitted, EngineError> {
        let now = SystemTime::now();
        let idempotency_key = record.idempotency_key.clone();
        let max_queued = Some(self.inner.config.max_queued_tasks);
        let quota = self.inner.hub.quotas().load().of(&record.namespace);
        if let Some(limit) = quota.max_queued
            && self
                .inner
                .store
                .namespace_counts(&record.namespace)
                .await?
                .queued
                >= limit
        {
            if idempotency_key.is_none() {
                return Err(quota::queue_quota_exceeded(&record.namespace, limit));
            }
            // The store still answers a retry of a request it already holds;
            // anything new is refused as over the quota.
            return match self.inner.store.create(record.clone(), Some(0)).await {
                Ok(CreateOutcome::Existing(task)) => Ok(Submitted {
                    task,
                    deduplicated: true,
                }),
                Err(StoreError::IdempotencyMismatch { existing }) => {
                    Err(EngineError::IdempotencyConflict {
                        key: idempotency_key.unwrap_or_default(),
                        existing,
                    })
                }
                Err(StoreError::QueueFull { .. }) | Ok(CreateOutcome::Created(_)) => {
                    Err(quota::queue_quota_exceeded(&record.namespace, limit))
                }
                Err(other) => Err(other.into()),
            };
        }
        if quota.max_running.is_some() {
            // Started only by a claim, which counts the namespace's attempts.
            return self.finish_submission(
                self.inner.store.create(record, max_queued).await,
                idempotency_key,
            );
        }
        let created = match self.reserve_attempt(&record, now) {
            Some(reserved) => {
                let (task_id, attempt) = (reserved.task_id, reserved.attempt.clone());
                let claim = self.claim_request(1);
                let on_claimed = Box::new(move |claimed| reserved.start(claimed));
                let created = self
                    .inner
                    .store
                    .create_and_claim(record, max_queued, &claim, on_claimed)
                    .await;
                if created.is_err() {
                    // The store may have started the attempt before its write
                    // failed; the task does not exist, so stop it.
                    self.stop_orphaned_attempt(task_id, &attempt);
                }
                created
            }
            None => self.inner.store.create(record, max_queued).await,
        };
        self.finish_submission(created, idempotency_key)
    }

    /// What a Submit answers once the store has spoken.
    fn finish_submission(
        &self,
        created: Result<CreateOutcome, StoreError>,
        idempotency_key: Option<String>,
    ) -> Result<Submitted, EngineError> {
        let outcome = created.map_err(|error| match error {
            StoreError::IdempotencyMismatch { existing } => EngineError::IdempotencyConflict {
                key: idempotency_key.unwrap_or_default(),
                existing,
            },
            StoreError::QueueFull { limit } => EngineError::QueueFull {
                limit,
                retry_after: self.queue_retry_hint(),
            },
            other => other.into(),
        })?;
        match outcome {
            CreateOutcome::Created(task) => {
                tracing::debug!(task.id = %task.id, task.kind = %task.kind, "task submitted");
                record::submitted(&task.kind, &task.namespace);
                self.wake_executors(&task);
                Ok(Submitted {
                    task,
                    deduplicated: false,
                })
            }
            CreateOutcome::Existing(task) => Ok(Submitted {
                task,
                deduplicated: true,
            }),
        }
    }

    /// Takes a free executor slot for a task about to be created, so the
    /// store can claim it in the same write as its insert (a whole write
    /// saved per task when nothing waits in the queue). The attempt is
    /// registered before the store shows the task running, so Cancel and
    /// shutdown can always reach it; the tracker token keeps shutdown
    /// waiting for the attempt this submit may yet start.
    fn reserve_attempt(&self, task: &TaskRecord, now: SystemTime) -> Option<ReservedAttempt> {
        let inner = &self.inner;
        // Taken before looking at the drain, so a shutdown starting now
        // waits for the attempt this submit may start.
        let in_flight = inner.attempts.token();
        if inner.stop_dispatch.is_cancelled()
            || task.due_at().is_none_or(|due| due > now)
            || inner.handlers.get(&task.kind).is_none()
        {
            return None;
        }
        let slot = inner.slots.clone().try_acquire_owned().ok()?;
        let attempt = RunningAttempt::new(&inner.shutdown);
        self.lock_running().insert(task.id, attempt.clone());
        Some(ReservedAttempt {
            engine: self.clone(),
            runtime: tokio::runtime::Handle::current(),
            task_id: task.id,
            slot: Some(slot),
            attempt,
            _in_flight: in_flight,
        })
    }

    /// Stops an attempt started for a task whose creation was not stored.
    fn stop_orphaned_attempt(&self, id: TaskId, attempt: &Arc<RunningAttempt>) {
        if attempt.is_registered(&self.lock_running(), id) {
            attempt.stop(StopReason::Cancelled(
                "the task was not stored: its Submit failed".into(),
            ));
        }
    }

    /// A claim by this process of its in-process kinds, as of now.
    fn claim_request(&self, limit: usize) -> ClaimRequest {
        ClaimRequest {
            now: SystemTime::now(),
            limit,
            owner: self.inner.config.node_id.clone(),
            lease_duration: self.inner.config.lease_duration,
            kinds: self.inner.kinds.local().clone(),
            namespace: None,
            excluded_namespaces: Arc::from([]),
            remote: None,
        }
    }

    /// The namespaces whose running attempts reached their quota now, so
    /// claims pass over their tasks. Counted per claim, and only for
    /// namespaces that have such a quota; a claim of several tasks may go
    /// past a quota by the rest of its batch.
    async fn namespaces_at_running_quota(&self) -> Result<Arc<[Arc<str>]>, StoreError> {
        let quotas = self.inner.hub.quotas().load_full();
        if !quotas.caps_running() {
            return Ok(Arc::from([]));
        }
        let mut full = Vec::new();
        for (namespace, quota) in &quotas.namespaces {
            if let Some(limit) = quota.max_running
                && self.inner.store.namespace_counts(namespace).await?.running >= limit
            {
                full.push(Arc::from(namespace.as_str()));
            }
        }
        Ok(full.into())
    }

    /// Tells whoever runs a task that became claimable: the dispatcher, or
    /// a worker polling for its kind.
    fn wake_executors(&self, task: &TaskRecord) {
        if self.inner.kinds.is_remote(&task.kind) {
            self.inner.remote.wake(&task.kind);
        } else if !self.lock_running().contains_key(&task.id) {
            self.inner.dispatch_wakeup.notify_one();
        }
    }

    fn new_record(
        &self,
        namespace: &str,
        spec: SubmitSpec,
        trace: TraceContext,
        deadline_bound: Option<SystemTime>,
        now: SystemTime,
    ) -> TaskRecord {
        let config = &self.inner.config;
        let kind_defaults = self
            .inner
            .kinds
            .get(&spec.kind)
            .cloned()
            .unwrap_or_default();
        // Only compared when a key is reused; without a key nobody reads it.
        let fingerprint = if spec.idempotency_key.is_some() {
            spec.fingerprint()
        } else {
            String::new()
        };
        let requested_deadline = spec.deadline.map(|deadline| match deadline {
            TaskDeadline::At(at) => at,
            TaskDeadline::After(ttl) => now + ttl,
        });
        let deadline = match (requested_deadline, deadline_bound) {
            (Some(requested), Some(bound)) => Some(requested.min(bound)),
            (requested, bound) => requested.or(bound),
        };
        TaskRecord {
            id: TaskId::generate(),
            kind: spec.kind,
            state: TaskState::Queued,
            input: Arc::new(spec.input),
            output: None,
            error: None,
            attempt: 0,
            retry: config
                .default_retry
                .with_overrides(&kind_defaults.retry)
                .with_overrides(&spec.retry),
            progress: None,
            labels: spec.labels,
            priority: spec.priority,
            trace,
            revision: 1,
            created_at: now,
            updated_at: now,
            started_at: None,
            ended_at: None,
            next_attempt_at: spec.not_before.filter(|not_before| *not_before > now),
            expires_at: None,
            deadline,
            attempt_timeout: spec.attempt_timeout.or(kind_defaults.attempt_timeout),
            retention: spec
                .retention
                .unwrap_or(config.default_retention)
                .min(config.max_retention),
            idempotency_key: spec.idempotency_key,
            request_fingerprint: fingerprint,
            cancel_requested: false,
            cancel_reason: String::new(),
            lease: None,
            worker_id: String::new(),
            completed_by: None,
            namespace: namespace.into(),
        }
    }

    /// A hint for clients refused by a full queue: roughly how long the
    /// executors need to free a slot.
    fn queue_retry_hint(&self) -> Duration {
        Duration::from_secs(1)
    }

    /// The current snapshot of a task the caller may see; another
    /// namespace's task is not found, as if it did not exist.
    pub async fn get(&self, scope: &Scope, id: TaskId) -> Result<TaskEvent, EngineError> {
        let task = self.read(id).await?;
        if scope.sees(&task.namespace) {
            Ok(task)
        } else {
            Err(EngineError::NotFound(id))
        }
    }

    /// The current snapshot of a task, whatever its namespace.
    pub(crate) async fn read(&self, id: TaskId) -> Result<TaskEvent, EngineError> {
        self.inner
            .store
            .get(id)
            .await?
            .ok_or(EngineError::NotFound(id))
    }

    /// Waits up to `wait` (capped by the server's max wait) for a task to be
    /// terminal. Never reports an unfinished task as failed: at the bound it
    /// returns `done = false` with the latest snapshot.
    pub async fn await_task(
        &self,
        scope: &Scope,
        id: TaskId,
        wait: Duration,
    ) -> Result<Awaited, EngineError> {
        let wait = Some(wait.min(self.inner.config.max_await));
        self.wait_terminal(scope, id, wait, AtDrain::Fail).await
    }

    /// Waits for a task of `scope` to be terminal, for at most `wait` if given.
    async fn wait_terminal(
        &self,
        scope: &Scope,
        id: TaskId,
        wait: Option<Duration>,
        at_drain: AtDrain,
    ) -> Result<Awaited, EngineError> {
        let wait_until = wait.map(|wait| tokio::time::Instant::now() + wait);
        // A task already finished needs no subscription.
        let finished = self.get(scope, id).await?;
        let _waiter = self.inner.hub.waiter_guard(&finished.namespace)?;
        if finished.is_terminal() {
            return Ok(Awaited {
                task: finished,
                done: true,
            });
        }
        let mut subscription = self.inner.hub.subscribe(id);
        // Read again now that changes are followed: none can fall in between.
        let mut latest = self.read(id).await?;
        loop {
            if latest.is_terminal() {
                return Ok(Awaited {
                    task: latest,
                    done: true,
                });
            }
            tokio::select! {
                // A change that is already there beats a deadline reached at the same moment.
                biased;
                event = subscription.recv() => match event {
                    Ok(task) => {
                        if task.revision > latest.revision {
                            latest = task;
                        }
                    }
                    // Behind, or the topic closed (a terminal change, a
                    // deletion, a resync): the store has the truth.
                    Err(RecvError::Lagged(_) | RecvError::Closed) => {
                        subscription = self.inner.hub.subscribe(id);
                        match self.reread(id, wait_until).await? {
                            Some(task) if task.revision > latest.revision => latest = task,
                            Some(_) => {}
                            // The store stayed away until the drain: wait again elsewhere.
                            None if at_drain == AtDrain::Fail && self.inner.stop_dispatch.is_cancelled() => {
                                return Err(EngineError::ShuttingDown);
                            }
                            None => break,
                        }
                    }
                },
                () = sleep_until_opt(wait_until) => break,
                () = self.inner.stop_dispatch.cancelled(), if at_drain == AtDrain::Fail => {
                    return Err(EngineError::ShuttingDown);
                }
                () = self.inner.shutdown.cancelled() => break,
            }
        }
        Ok(Awaited {
            task: latest,
            done: false,
        })
    }

    /// Reads a task again after its changes were missed, retrying while the
    /// store is unavailable, until `until` (or shutdown): `None` then. A
    /// follower must not turn a store that is briefly away into an error,
    /// nor into silence.
    async fn reread(
        &self,
        id: TaskId,
        until: Option<tokio::time::Instant>,
    ) -> Result<Option<TaskEvent>, EngineError> {
        let mut backoff = REREAD_FIRST_BACKOFF;
        loop {
            let read = match until {
                Some(until) => match tokio::time::timeout_at(until, self.read(id)).await {
                    Ok(read) => read,
                    Err(_) => return Ok(None),
                },
                None => self.read(id).await,
            };
            match read {
                Ok(task) => return Ok(Some(task)),
                Err(EngineError::StorageUnavailable(_)) => {}
                Err(error) => return Err(error),
            }
            let retry_at = tokio::time::Instant::now() + backoff;
            if until.is_some_and(|until| retry_at >= until) {
                return Ok(None);
            }
            tokio::select! {
                () = tokio::time::sleep_until(retry_at) => {}
                () = self.inner.shutdown.cancelled() => return Ok(None),
            }
            backoff = (backoff * 2).min(REREAD_MAX_BACKOFF);
        }
    }

    /// Submits a task bound to the caller: its deadline is at most
    /// `call_deadline`, and if the returned future is dropped before the task
    /// finishes, the task is cancelled, also when that happens while the
    /// task is being stored.
    pub async fn run(
        &self,
        scope: &Scope,
        spec: SubmitSpec,
        trace: TraceContext,
        call_deadline: Option<SystemTime>,
        wait: Option<Duration>,
    ) -> Result<Awaited, EngineError> {
        let record = self.new_submission(scope, spec, trace, call_deadline)?;
        let record_id = record.id;
        // The write runs on its own, so that a caller going away meanwhile
        // leaves the guard a settled outcome to act on.
        let engine = self.clone();
        let storing = self.inner.background.spawn(
            // In the call's span and context: its log lines keep their trace id.
            async move { engine.store_submission(record).await }
                .in_current_span()
                .with_current_context(),
        );
        let mut cancel_on_drop = CancelOnDrop {
            engine: self.clone(),
            task: RunTask::Storing {
                handle: storing,
                id: record_id,
            },
            armed: true,
        };
        let RunTask::Storing { handle, .. } = &mut cancel_on_drop.task else {
            unreachable!("the write was just started");
        };
        let submitted = match handle.await {
            Ok(Ok(submitted)) => submitted,
            // The write may have been stored after all: the guard cancels
            // the task if it exists (the cancel tolerates one that does not).
            Ok(Err(error @ EngineError::StorageUnavailable(_))) => {
                cancel_on_drop.task = RunTask::Stored(record_id);
                return Err(error);
            }
            Ok(Err(error)) => {
                cancel_on_drop.armed = false;
                return Err(error);
            }
            Err(panicked) => {
                cancel_on_drop.armed = false;
                return Err(EngineError::StorageFailed(StoreError::Internal(format!(
                    "storing a task panicked: {panicked}"
                ))));
            }
        };
        let id = submitted.task.id;
        cancel_on_drop.task = RunTask::Stored(id);
        // A deduplicated run belongs to the caller that created it.
        cancel_on_drop.armed = !submitted.deduplicated;
        let awaited = self.wait_terminal(scope, id, wait, AtDrain::Wait).await?;
        // A task that outlives its call is cancelled as the guard drops.
        cancel_on_drop.armed &= !awaited.done;
        Ok(awaited)
    }

    /// Asks a task to stop. Waiting tasks end CANCELLED at once; a running
    /// handler sees its token fire (a remote worker learns it from its next
    /// heartbeat), and the task ends CANCELLED whatever the attempt returns.
    /// A running task whose lease has lapsed (its executor is gone) ends at
    /// once. Finished tasks are returned unchanged.
    pub async fn cancel(
        &self,
        scope: &Scope,
        id: TaskId,
        reason: &str,
    ) -> Result<TaskEvent, EngineError> {
        // The namespace never changes, so one look before the write is enough.
        self.get(scope, id).await?;
        let now = SystemTime::now();
        let task = self
            .update_task(id, |task| {
                let lapsed = task.state == TaskState::Running
                    && task.lease.as_ref().is_none_or(|lease| !lease.holds_at(now));
                if task.is_terminal() || (task.cancel_requested && !lapsed) {
                    return Mutation::Keep;
                }
                task.cancel_reason = reason.to_owned();
                if task.state == TaskState::Running && !lapsed {
                    task.cancel_requested = true;
                } else {
                    transitions::cancel_waiting(task, reason, now);
                }
                Mutation::Write
            })
            .await?;
        if task.state == TaskState::Running {
            self.stop_local_attempt(id, StopReason::Cancelled(reason.to_owned()))
                .await;
        }
        Ok(task)
    }

    /// Forgets a task. An unfinished task is refused unless `cancel_if_running`:
    /// then it is cancelled, and deleted once its attempt has stopped, waiting
    /// up to `wait` for that (the attempt's own stop, or its lease lapsing).
    pub async fn delete(
        &self,
        scope: &Scope,
        id: TaskId,
        cancel_if_running: bool,
        wait: Duration,
    ) -> Result<(), EngineError> {
        let task = self.get(scope, id).await?;
        if !task.is_terminal() {
            if !cancel_if_running {
                return Err(EngineError::FailedPrecondition {
                    reason: "TASK_NOT_FINISHED",
                    message: format!(
                        "task {id} is {}; set cancel_if_running to stop and delete it",
                        task.state.as_str()
                    ),
                });
            }
            self.cancel(scope, id, "deleted").await?;
            let stopped = self
                .wait_terminal(scope, id, Some(wait), AtDrain::Wait)
                .await?;
            if !stopped.done {
                return Err(EngineError::FailedPrecondition {
                    reason: "TASK_STILL_STOPPING",
                    message: format!(
                        "task {id} was cancelled and its attempt has not stopped yet; delete it again once it has"
                    ),
                });
            }
        }
        if !self.inner.store.delete(id).await? {
            return Err(EngineError::NotFound(id));
        }
        Ok(())
    }

    /// Lists the tasks of `scope` newest first.
    pub async fn list(&self, scope: &Scope, query: &ListQuery) -> Result<ListPage, EngineError> {
        let query = ListQuery {
            namespace: scope.only().cloned(),
            ..query.clone()
        };
        Ok(self.inner.store.list(&query).await?)
    }

    /// Starts draining: new tasks are refused, nothing more is claimed, and
    /// Awaits, AwaitManys, Watches and Polls end with `ShuttingDown`, so
    /// their callers go on at another replica instead of hearing `done =
    /// false` long before their deadline. Running attempts go on.
    pub fn begin_drain(&self) {
        self.inner.accepting.store(false, Ordering::Release);
        self.inner.stop_dispatch.cancel();
    }

    /// Drains and stops: [`begin_drain`](Self::begin_drain), lets running
    /// attempts finish within `drain_timeout`, hands the rest back, then ends
    /// every wait and background loop.
    pub async fn shutdown(&self, drain_timeout: Duration) {
        self.begin_drain();
        self.inner.attempts.close();
        let running = self.running_count();
        if running > 0 {
            tracing::info!(running, drain_timeout = ?drain_timeout, "draining running attempts");
        }
        if tokio::time::timeout(drain_timeout, self.inner.attempts.wait())
            .await
            .is_err()
        {
            let handed_back = self.running_count();
            tracing::warn!(
                handed_back,
                "drain timeout passed; handing unfinished attempts back"
            );
            let attempts: Vec<Arc<RunningAttempt>> =
                self.lock_running().values().cloned().collect();
            for attempt in attempts {
                attempt.stop(StopReason::HandedBack);
            }
            let grace = self.inner.config.cancel_grace + Duration::from_secs(1);
            let _ = tokio::time::timeout(grace, self.inner.attempts.wait()).await;
        }
        self.inner.shutdown.cancel();
        self.inner.background.close();
        self.inner.background.wait().await;
        if let Err(error) = self.inner.store.close().await {
            tracing::warn!(%error, "the store did not close cleanly");
        }
    }

    /// Attempts running in this process.
    pub fn running_count(&self) -> usize {
        self.lock_running().len()
    }

    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Arc<RunningAttempt>>> {
        self.inner
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn stop_local_attempt(&self, id: TaskId, reason: StopReason) {
        // Wait for an in-flight claim to register its attempts.
        let _gate = self.inner.claim_gate.lock().await;
        let attempt = self.lock_running().get(&id).cloned();
        if let Some(attempt) = attempt {
            attempt.stop(reason);
        }
    }

    /// Read-modify-write of one task with compare-and-set on its revision,
    /// retried on conflict. The store publishes what it commits.
    async fn update_task(
        &self,
        id: TaskId,
        mutate: impl FnMut(&mut TaskRecord) -> Mutation,
    ) -> Result<TaskEvent, EngineError> {
        self.update_task_from(id, None, mutate).await
    }

    /// Like [`Engine::update_task`], starting from a snapshot the caller
    /// already holds (saving a read when nothing changed since).
    async fn update_task_from(
        &self,
        id: TaskId,
        mut known: Option<TaskEvent>,
        mut mutate: impl FnMut(&mut TaskRecord) -> Mutation,
    ) -> Result<TaskEvent, EngineError> {
        loop {
            let stored = match known.take() {
                Some(snapshot) => snapshot,
                None => match self.inner.store.get(id).await? {
                    Some(stored) => stored,
                    None => return Err(EngineError::NotFound(id)),
                },
            };
            let mut task = TaskRecord::clone(&stored);
            if let Mutation::Keep = mutate(&mut task) {
                return Ok(stored);
            }
            task.revision += 1;
            task.updated_at = SystemTime::now();
            match self.inner.store.update(task, stored.revision).await {
                Ok(task) => {
                    record_transition(&stored, &task);
                    return Ok(task);
                }
                Err(StoreError::RevisionConflict) => continue,
                Err(StoreError::NotFound) => return Err(EngineError::NotFound(id)),
                Err(error) => return Err(error.into()),
            }
        }
    }
}

/// Metrics of a state change written by this process.
fn record_transition(before: &TaskRecord, after: &TaskRecord) {
    if before.state == after.state {
        return;
    }
    if after.is_terminal() {
        let submit_to_finish = after
            .updated_at
            .duration_since(after.created_at)
            .unwrap_or_default();
        record::finished(
            &after.kind,
            &after.namespace,
            after.state.as_str(),
            submit_to_finish,
        );
    } else if after.state == TaskState::RetryWait {
        record::retry_scheduled(&after.kind);
    }
}

impl RunningAttempt {
    fn stop(&self, reason: StopReason) {
        let mut stop_reason = self
            .stop_reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        stop_reason.get_or_insert(reason);
        self.cancellation.cancel();
    }

    fn stop_reason(&self) -> Option<StopReason> {
        self.stop_reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Turns a dropped Run call into a cancellation of its task. While the
/// task is being stored, the cancellation waits for that write: a task
/// that was created is then cancelled, one that was not (or that an
/// earlier call created) is left alone.
struct CancelOnDrop {
    engine: Engine,
    task: RunTask,
    armed: bool,
}

/// The task of a Run, as far as the run got.
enum RunTask {
    /// Being written; the write answers whether it created the task `id`.
    Storing {
        handle: tokio::task::JoinHandle<Result<Submitted, EngineError>>,
        id: TaskId,
    },
    Stored(TaskId),
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let engine = self.engine.clone();
        let task = std::mem::replace(&mut self.task, RunTask::Stored(TaskId::MIN));
        self.engine.inner.background.spawn(async move {
            let id = match task {
                RunTask::Stored(id) => id,
                RunTask::Storing { handle, id } => match handle.await {
                    Ok(Ok(submitted)) if !submitted.deduplicated => submitted.task.id,
                    Ok(Err(EngineError::StorageUnavailable(_))) => id,
                    _ => return,
                },
            };
            // The store may be briefly away: a run must not outlive its caller for that.
            let mut backoff = REREAD_FIRST_BACKOFF;
            let give_up_at = tokio::time::Instant::now() + ABANDONED_RUN_CANCEL_BOUND;
            loop {
                match engine
                    .cancel(&Scope::All, id, "the Run caller went away")
                    .await
                {
                    Ok(_) | Err(EngineError::NotFound(_)) => return,
                    Err(EngineError::StorageUnavailable(_))
                        if tokio::time::Instant::now() + backoff < give_up_at =>
                    {
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = engine.inner.shutdown.cancelled() => return,
                        }
                        backoff = (backoff * 2).min(REREAD_MAX_BACKOFF);
                    }
                    Err(error) => {
                        tracing::warn!(task.id = %id, %error, "could not cancel an abandoned run");
                        return;
                    }
                }
            }
        });
    }
}
