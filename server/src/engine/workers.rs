//! Remote attempts: workers in other processes poll leases of remote
//! kinds, renew them with heartbeats, and complete them. A remote attempt
//! is a claim like an in-process one, held by the worker instead of this
//! process, so the same store, fencing and sweeps apply: a lease that is
//! not renewed lapses (the sweep ends its attempt as a retryable
//! `UNAVAILABLE`), and a remote lease lapses at its attempt deadline too.
//!
//! A lease's token (`<task id>.<fencing token>.<secret>`) is opaque to
//! workers; the secret is random per lease and kept in the store, so a
//! token cannot be made up from ids, and any replica can check it.

use std::{
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use sha2::{Digest, Sha256};
use tokio::sync::Notify;

use super::{
    Engine, EngineError, Kinds, Mutation, Scope, TaskEvent,
    task::{
        Completion, Payload, Progress, RemoteAttempt, TaskError, TaskId, TaskRecord, TaskState,
        TraceContext,
    },
    transitions::{self, AttemptOutcome},
};
use crate::{
    store::{ClaimRequest, RemoteClaim, StoreError},
    telemetry::{self, metrics::record},
};

/// Most leases one Poll may ask for.
pub const MAX_POLL_TASKS: usize = 256;
/// Shortest lease a worker may ask for.
const MIN_LEASE: Duration = Duration::from_secs(1);
const MAX_WORKER_ID_LEN: usize = 128;
/// How often one replica records that a kind was polled.
const POLL_RECORD_INTERVAL: Duration = Duration::from_secs(5);
/// Longest a poller sleeps without looking at the store, for tasks made
/// due without a wake-up here (a retry's backoff ending on another replica).
const IDLE_POLL: Duration = Duration::from_secs(1);

/// The pollers of this process and what wakes them.
#[derive(Default)]
pub struct RemoteWork {
    /// One wake-up per kind; a task that becomes claimable wakes one poller.
    wakeups: Mutex<HashMap<String, Arc<Notify>>>,
    /// Pollers waiting per kind.
    pollers: Mutex<HashMap<String, usize>>,
    /// When this replica last recorded a poll of each kind.
    polls_recorded: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl RemoteWork {
    fn wakeup(&self, kind: &str) -> Arc<Notify> {
        let mut wakeups = lock(&self.wakeups);
        match wakeups.get(kind) {
            Some(wakeup) => wakeup.clone(),
            None => wakeups
                .entry(kind.to_owned())
                .or_insert_with(|| Arc::new(Notify::new()))
                .clone(),
        }
    }

    /// A task of `kind` became claimable: one poller is told (or the next
    /// one to wait, if none waits now).
    pub fn wake(&self, kind: &str) {
        self.wakeup(kind).notify_one();
    }

    /// Changes may have been missed: every poller looks at the store.
    pub fn wake_all(&self) {
        for wakeup in lock(&self.wakeups).values() {
            wakeup.notify_waiters();
        }
    }

    /// Pollers waiting for `kind` here now.
    pub fn pollers(&self, kind: &str) -> usize {
        lock(&self.pollers).get(kind).copied().unwrap_or(0)
    }

    /// Kinds of `kinds` whose poll this replica has not recorded lately.
    fn polls_to_record(&self, kinds: &[String]) -> Vec<String> {
        let mut recorded = lock(&self.polls_recorded);
        kinds
            .iter()
            .filter(|kind| {
                let due = recorded
                    .get(*kind)
                    .is_none_or(|at| at.elapsed() >= POLL_RECORD_INTERVAL);
                if due {
                    recorded.insert((*kind).clone(), Instant::now());
                }
                due
            })
            .cloned()
            .collect()
    }
}

/// Counts a poller of some kinds until dropped.
struct PollerGuard<'a> {
    work: &'a RemoteWork,
    kinds: &'a [String],
}

impl<'a> PollerGuard<'a> {
    fn new(work: &'a RemoteWork, kinds: &'a [String]) -> Self {
        let mut pollers = lock(&work.pollers);
        for kind in kinds {
            let count = pollers.entry(kind.clone()).or_default();
            *count += 1;
            record::pollers(kind, *count);
        }
        Self { work, kinds }
    }
}

impl Drop for PollerGuard<'_> {
    fn drop(&mut self) {
        let mut pollers = lock(&self.work.pollers);
        for kind in self.kinds {
            if let Some(count) = pollers.get_mut(kind) {
                *count -= 1;
                record::pollers(kind, *count);
            }
        }
    }
}

/// Checks a Poll against the kinds the engine knows and its longest lease.
pub(crate) fn check_poll(
    spec: &PollSpec,
    kinds: &Kinds,
    max_lease: Duration,
) -> Result<(), EngineError> {
    let mut violations = Vec::new();
    let mut violation = |field: String, description: String| {
        violations.push(super::FieldViolation::new(field, description));
    };
    if spec.kinds.is_empty() {
        violation("kinds".into(), "must name at least one remote kind".into());
    }
    for (index, kind) in spec.kinds.iter().enumerate() {
        match kinds.get(kind) {
            Some(settings) if settings.remote => {}
            Some(_) => violation(
                format!("kinds[{index}]"),
                format!("{kind:?} runs inside vowd, not on workers"),
            ),
            None => violation(
                format!("kinds[{index}]"),
                format!(
                    "unknown kind {kind:?}; declare it with --remote-kind or in the kinds file"
                ),
            ),
        }
    }
    let worker_id_ok = !spec.worker_id.is_empty()
        && spec.worker_id.len() <= MAX_WORKER_ID_LEN
        && !spec.worker_id.chars().any(char::is_control);
    if !worker_id_ok {
        violation(
            "worker_id".into(),
            format!("must be 1 to {MAX_WORKER_ID_LEN} bytes without control characters"),
        );
    }
    if spec.max_tasks > MAX_POLL_TASKS {
        violation(
            "max_tasks".into(),
            format!("must be at most {MAX_POLL_TASKS}"),
        );
    }
    if let Some(lease) = spec.lease_duration
        && !(MIN_LEASE..=max_lease).contains(&lease)
    {
        violation(
            "lease_duration".into(),
            format!(
                "must be from {} to the server's maximum of {}",
                humantime::format_duration(MIN_LEASE),
                humantime::format_duration(max_lease)
            ),
        );
    }
    if violations.is_empty() {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument(violations))
    }
}

/// The opaque token of a remote lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseToken {
    pub task_id: TaskId,
    pub fencing_token: u64,
    pub secret: String,
}

impl fmt::Display for LeaseToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.task_id, self.fencing_token, self.secret)
    }
}

impl FromStr for LeaseToken {
    type Err = EngineError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || EngineError::invalid("token", "is not a lease token of this server");
        let mut parts = text.split('.');
        let (Some(task_id), Some(fencing_token), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let task_id = task_id.parse().map_err(|_| malformed())?;
        let fencing_token = fencing_token.parse().map_err(|_| malformed())?;
        let well_formed = secret.len() == 32
            && secret
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte));
        if !well_formed {
            return Err(malformed());
        }
        Ok(Self {
            task_id,
            fencing_token,
            secret: secret.to_owned(),
        })
    }
}

impl LeaseToken {
    fn of(task: &TaskRecord) -> Option<Self> {
        let lease = task.lease.as_ref()?;
        Some(Self {
            task_id: task.id,
            fencing_token: lease.token,
            secret: lease.remote.as_ref()?.secret.clone(),
        })
    }

    /// Whether `task` is RUNNING under this lease, unexpired at `now`.
    fn holds(&self, task: &TaskRecord, now: SystemTime) -> bool {
        task.state == TaskState::Running
            && task.lease.as_ref().is_some_and(|lease| {
                lease.token == self.fencing_token
                    && lease.holds_at(now)
                    && lease
                        .remote
                        .as_ref()
                        .is_some_and(|remote| remote.secret == self.secret)
            })
    }
}

fn lease_lost(message: impl Into<String>) -> EngineError {
    EngineError::FailedPrecondition {
        reason: "LEASE_LOST",
        message: message.into(),
    }
}

/// What a worker asks of Poll.
#[derive(Clone, Debug)]
pub struct PollSpec {
    /// Whose tasks the worker may lease.
    pub scope: Scope,
    pub kinds: Vec<String>,
    pub worker_id: String,
    pub max_tasks: usize,
    /// `None` takes the server's lease duration.
    pub lease_duration: Option<Duration>,
    /// Longest wait for a lease.
    pub wait: Duration,
}

/// A lease granted to a worker.
#[derive(Clone, Debug)]
pub struct GrantedLease {
    pub task: TaskEvent,
    pub token: String,
    pub expires_at: SystemTime,
    pub attempt_deadline: Option<SystemTime>,
    /// The attempt span's context, for the worker's own spans.
    pub trace: TraceContext,
}

/// A renewed lease.
#[derive(Clone, Copy, Debug)]
pub struct Renewal {
    pub expires_at: SystemTime,
    pub cancel_requested: bool,
}

/// How a worker says its attempt ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RemoteOutcome {
    Output(Payload),
    Error(TaskError),
}

impl RemoteOutcome {
    fn digest(&self) -> String {
        let encoded = match self {
            Self::Output(output) => serde_json::to_vec(&("output", output)),
            Self::Error(error) => serde_json::to_vec(&("error", error)),
        }
        .expect("an outcome always serializes");
        hex::encode(Sha256::digest(encoded))
    }
}

/// A kind as `ListKinds` shows it.
#[derive(Clone, Debug)]
pub struct KindView {
    pub name: String,
    pub remote: bool,
    pub queued: usize,
    /// Workers polling this replica for it now.
    pub pollers: usize,
    pub last_poll: Option<SystemTime>,
    pub attempt_timeout: Option<Duration>,
}

impl Engine {
    /// Every kind the engine accepts, with its queue and its workers.
    pub async fn list_kinds(&self) -> Result<Vec<KindView>, EngineError> {
        let counts = self.inner.store.kind_counts().await?;
        let last_polls = self.inner.store.last_polls().await?;
        Ok(self
            .inner
            .kinds
            .iter()
            .map(|(name, settings)| KindView {
                name: name.to_owned(),
                remote: settings.remote,
                queued: counts.get(name).map_or(0, |counts| counts.queued),
                pollers: self.inner.remote.pollers(name),
                last_poll: last_polls.get(name).copied(),
                attempt_timeout: settings.attempt_timeout,
            })
            .collect())
    }

    /// Waits up to `spec.wait` for due tasks of `spec.kinds` and leases up to
    /// `spec.max_tasks` of them to the worker, highest priority then oldest
    /// first. Returns at once when leases are granted; empty at the bound,
    /// or when the server drains.
    pub async fn poll(&self, spec: PollSpec) -> Result<Vec<GrantedLease>, EngineError> {
        check_poll(
            &spec,
            &self.inner.kinds,
            self.inner.config.max_lease_duration,
        )?;
        let started = Instant::now();
        let work = &self.inner.remote;
        let _poller = PollerGuard::new(work, &spec.kinds);
        let to_record = work.polls_to_record(&spec.kinds);
        if !to_record.is_empty()
            && let Err(error) = self
                .inner
                .store
                .record_poll(&to_record, SystemTime::now())
                .await
        {
            tracing::debug!(%error, "cannot record a poll");
        }
        let wait_until = tokio::time::Instant::now() + spec.wait;
        let kinds: Arc<[String]> = spec.kinds.clone().into();
        let wakeups: Vec<Arc<Notify>> = kinds.iter().map(|kind| work.wakeup(kind)).collect();
        loop {
            // Listening before claiming: a task made claimable after the
            // claim looked still wakes this poller.
            let mut woken: Vec<_> = wakeups
                .iter()
                .map(|wakeup| Box::pin(wakeup.notified()))
                .collect();
            for notified in &mut woken {
                notified.as_mut().enable();
            }
            // A draining replica leases nothing: its poller goes on elsewhere.
            if self.inner.stop_dispatch.is_cancelled() {
                return Err(EngineError::ShuttingDown);
            }
            let mut claim = self.remote_claim(&spec, &kinds);
            claim.excluded_namespaces = self.namespaces_at_running_quota().await?;
            if let Some(namespace) = &claim.namespace
                && let Some(limit) = self.inner.hub.quotas().load().of(namespace).max_running
            {
                let running = self.inner.store.namespace_counts(namespace).await?.running;
                claim.limit = claim.limit.min(limit.saturating_sub(running));
            }
            let held_back = claim.limit == 0 || !claim.excluded_namespaces.is_empty();
            let claimed = if claim.limit == 0 {
                Vec::new()
            } else {
                self.inner.store.claim_due(&claim).await?
            };
            if !claimed.is_empty() {
                record::poll_ended(true, started.elapsed());
                return Ok(claimed
                    .iter()
                    .filter_map(|task| self.granted(task))
                    .collect());
            }
            let next_due = self.inner.store.next_due_at(&kinds).await.ok().flatten();
            let mut sleep_for = next_due
                .map(|due| due.duration_since(SystemTime::now()).unwrap_or_default())
                .unwrap_or(IDLE_POLL)
                .min(IDLE_POLL);
            // Due tasks held back by a running quota are no reason to spin.
            if held_back {
                sleep_for = IDLE_POLL;
            }
            let wake_at = (tokio::time::Instant::now() + sleep_for).min(wait_until);
            tokio::select! {
                _ = futures::future::select_all(woken) => {}
                () = tokio::time::sleep_until(wake_at) => {}
                () = self.inner.stop_dispatch.cancelled() => {}
            }
            if tokio::time::Instant::now() >= wait_until {
                record::poll_ended(false, started.elapsed());
                return Ok(Vec::new());
            }
        }
    }

    fn remote_claim(&self, spec: &PollSpec, kinds: &Arc<[String]>) -> ClaimRequest {
        ClaimRequest {
            now: SystemTime::now(),
            limit: spec.max_tasks.max(1),
            owner: spec.worker_id.clone(),
            lease_duration: spec
                .lease_duration
                .unwrap_or(self.inner.config.lease_duration),
            kinds: kinds.clone(),
            namespace: spec.scope.only().cloned(),
            excluded_namespaces: Arc::from([]),
            remote: Some(RemoteClaim {
                deadline_grace: self.inner.config.cancel_grace,
            }),
        }
    }

    fn granted(&self, task: &TaskEvent) -> Option<GrantedLease> {
        let lease = task.lease.as_ref()?;
        let remote = lease.remote.as_ref()?;
        let queue_wait = (task.attempt == 1)
            .then(|| task.started_at?.duration_since(task.created_at).ok())
            .flatten();
        record::attempt_started(&task.kind, queue_wait);
        tracing::debug!(task.id = %task.id, task.attempt = task.attempt, worker.id = %lease.owner, "leased to a worker");
        Some(GrantedLease {
            task: task.clone(),
            token: LeaseToken::of(task)?.to_string(),
            expires_at: lease.expires_at,
            attempt_deadline: remote.attempt_deadline,
            trace: remote.trace.clone(),
        })
    }

    /// Renews a remote lease (at most to the attempt's deadline, plus the
    /// grace), stores the progress reported if the last report is older
    /// than the progress interval, and tells whether a cancel was asked.
    pub async fn heartbeat(
        &self,
        scope: &Scope,
        token: &str,
        progress: Option<(f32, String)>,
    ) -> Result<Renewal, EngineError> {
        let result = self.renew(scope, token, progress).await;
        record::worker_call("Heartbeat", call_result(&result));
        result
    }

    async fn renew(
        &self,
        scope: &Scope,
        token: &str,
        progress: Option<(f32, String)>,
    ) -> Result<Renewal, EngineError> {
        let token: LeaseToken = token.parse()?;
        let now = SystemTime::now();
        let task = match self.get(scope, token.task_id).await {
            Ok(task) => task,
            Err(EngineError::NotFound(_)) => return Err(lease_lost("the task was deleted")),
            Err(error) => return Err(error),
        };
        if !token.holds(&task, now) {
            return Err(lease_lost(lost_because(&task, now)));
        }
        let remote = task
            .lease
            .as_ref()
            .and_then(|lease| lease.remote.clone())
            .ok_or_else(|| lease_lost("the task holds no remote lease"))?;
        let mut expires_at = now + remote.lease_duration;
        if let Some(deadline) = remote.attempt_deadline {
            expires_at = expires_at.min(deadline + self.inner.config.cancel_grace);
        }
        match self
            .inner
            .store
            .extend_lease(token.task_id, token.fencing_token, expires_at, now)
            .await
        {
            Ok(()) => {}
            Err(StoreError::StaleLease) => return Err(lease_lost("the lease was lost")),
            Err(StoreError::NotFound) => return Err(lease_lost("the task was deleted")),
            Err(error) => return Err(error.into()),
        }
        if let Some((percent, message)) = progress {
            self.store_remote_progress(&token, &task, percent, message)
                .await;
        }
        Ok(Renewal {
            expires_at,
            cancel_requested: task.cancel_requested,
        })
    }

    async fn store_remote_progress(
        &self,
        token: &LeaseToken,
        task: &TaskRecord,
        percent: f32,
        message: String,
    ) {
        let interval = self.inner.config.progress_interval;
        let recent = task.progress.as_ref().is_some_and(|progress| {
            progress
                .updated_at
                .elapsed()
                .is_ok_and(|since| since < interval)
        });
        let unchanged = task
            .progress
            .as_ref()
            .is_some_and(|progress| progress.percent == percent && progress.message == message);
        if recent || unchanged {
            return;
        }
        let percent = if percent.is_finite() {
            percent.clamp(0.0, 100.0)
        } else {
            0.0
        };
        let written = self
            .update_task(token.task_id, |task| {
                let now = SystemTime::now();
                if !token.holds(task, now) {
                    return Mutation::Keep;
                }
                task.progress = Some(Progress {
                    percent,
                    message: message.clone(),
                    updated_at: now,
                });
                Mutation::Write
            })
            .await;
        if let Err(error) = written {
            tracing::debug!(task.id = %token.task_id, %error, "remote progress not stored");
        }
    }

    /// Ends a remote attempt with the worker's outcome, under the retry
    /// rules of in-process attempts. A cancel that was asked wins. The same
    /// Complete repeated (same token, same outcome) answers as the first.
    pub async fn complete(
        &self,
        scope: &Scope,
        token: &str,
        outcome: RemoteOutcome,
    ) -> Result<TaskEvent, EngineError> {
        let result = self.apply_completion(scope, token, outcome).await;
        let label = match &result {
            Ok((_, false)) => "repeated",
            Ok((_, true)) => "ok",
            Err(error) => error_label(error),
        };
        record::worker_call("Complete", label);
        result.map(|(task, _)| task)
    }

    /// The task after the Complete, and whether this call applied it.
    async fn apply_completion(
        &self,
        scope: &Scope,
        token: &str,
        outcome: RemoteOutcome,
    ) -> Result<(TaskEvent, bool), EngineError> {
        let token: LeaseToken = token.parse()?;
        // Another namespace's lease is as good as lost; the namespace never
        // changes, so one look before the write is enough.
        if let Err(EngineError::NotFound(_)) = self.get(scope, token.task_id).await {
            return Err(lease_lost("the task was deleted"));
        }
        if let RemoteOutcome::Output(output) = &outcome {
            let size = output.encoded_len();
            let limit = self.inner.config.max_input_bytes;
            if size > limit {
                // Refused before anything changes: the lease stays, and the
                // worker may still complete with an error.
                return Err(EngineError::TooLarge {
                    field: "output",
                    size_bytes: size,
                    limit_bytes: limit,
                });
            }
        }
        let digest = outcome.digest();
        let mut claimed: Option<TaskRecord> = None;
        let ended = self
            .update_task(token.task_id, |task| {
                let now = SystemTime::now();
                if !token.holds(task, now) {
                    claimed = None;
                    return Mutation::Keep;
                }
                claimed = Some(task.clone());
                let attempt_outcome = if task.cancel_requested {
                    AttemptOutcome::Cancelled {
                        reason: task.cancel_reason.clone(),
                        handler_stopped: true,
                    }
                } else {
                    match &outcome {
                        RemoteOutcome::Output(output) => AttemptOutcome::Succeeded(output.clone()),
                        RemoteOutcome::Error(error) => AttemptOutcome::Failed(error.clone()),
                    }
                };
                transitions::finish_attempt(task, attempt_outcome, now, rand::random());
                task.completed_by = Some(Completion {
                    token: token.fencing_token,
                    outcome_digest: digest.clone(),
                });
                Mutation::Write
            })
            .await;
        let task = match ended {
            Ok(task) => task,
            Err(EngineError::NotFound(_)) => return Err(lease_lost("the task was deleted")),
            Err(error) => return Err(error),
        };
        let Some(claimed) = claimed else {
            let repeated = task.completed_by.as_ref().is_some_and(|completion| {
                completion.token == token.fencing_token && completion.outcome_digest == digest
            });
            if repeated {
                return Ok((task, false));
            }
            return Err(lease_lost(lost_because(&task, SystemTime::now())));
        };
        if let Some(remote) = claimed
            .lease
            .as_ref()
            .and_then(|lease| lease.remote.as_ref())
        {
            end_remote_attempt_span(&claimed, remote, &task);
        }
        let started = claimed
            .started_at
            .and_then(|started| started.elapsed().ok())
            .unwrap_or_default();
        record::attempt_finished(&task.kind, remote_outcome_label(&task), started);
        if task.state.is_claimable() {
            self.wake_executors(&task);
        }
        Ok((task, true))
    }

    /// Hands leases back unfinished: each task is due again at once, its
    /// attempt not counted. Tokens whose lease is lost are skipped; returns
    /// how many were released.
    pub async fn release(
        &self,
        scope: &Scope,
        tokens: &[String],
        reason: &str,
    ) -> Result<usize, EngineError> {
        let tokens: Vec<LeaseToken> = tokens
            .iter()
            .map(|token| token.parse())
            .collect::<Result<_, _>>()?;
        let mut released = 0;
        for token in tokens {
            let mut applied = false;
            let task = match self
                .update_task(token.task_id, |task| {
                    applied = scope.sees(&task.namespace) && token.holds(task, SystemTime::now());
                    if !applied {
                        return Mutation::Keep;
                    }
                    transitions::release(task, SystemTime::now());
                    Mutation::Write
                })
                .await
            {
                Ok(task) => task,
                Err(EngineError::NotFound(_)) => continue,
                Err(error) => return Err(error),
            };
            if applied {
                released += 1;
                tracing::info!(task.id = %task.id, reason, "a worker released its lease");
                self.wake_executors(&task);
            }
        }
        record::worker_call("Release", "ok");
        Ok(released)
    }
}

/// Why a token no longer holds its task, for the worker.
fn lost_because(task: &TaskRecord, now: SystemTime) -> String {
    match &task.lease {
        _ if task.is_terminal() => format!("the task is {}", task.state.as_str()),
        Some(lease) if !lease.holds_at(now) => "the lease expired".to_owned(),
        Some(_) => "the task is leased to another attempt".to_owned(),
        None => format!("the task is {} and leased to no one", task.state.as_str()),
    }
}

fn call_result<T>(result: &Result<T, EngineError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(error) => error_label(error),
    }
}

fn error_label(error: &EngineError) -> &'static str {
    match error {
        EngineError::FailedPrecondition {
            reason: "LEASE_LOST",
            ..
        } => "lease_lost",
        EngineError::InvalidArgument(_) | EngineError::TooLarge { .. } => "invalid",
        _ => "error",
    }
}

fn remote_outcome_label(task: &TaskRecord) -> &'static str {
    match task.state {
        TaskState::Succeeded => "succeeded",
        TaskState::Cancelled => "cancelled",
        _ => "failed",
    }
}

/// Records the span of a remote attempt that ended: its id was chosen at
/// the claim (the worker's spans are its children), it starts at the claim,
/// and it ends now, on whichever replica saw the end.
pub(super) fn end_remote_attempt_span(
    claimed: &TaskRecord,
    remote: &RemoteAttempt,
    ended: &TaskRecord,
) {
    let Some(tracer) = telemetry::tracer() else {
        return;
    };
    let error = match ended.state {
        TaskState::Succeeded => None,
        _ => ended
            .error
            .as_ref()
            .map(|error| format!("{}: {}", error.code.as_str(), error.message)),
    };
    telemetry::record_span_with_context(
        tracer,
        telemetry::FinishedSpan {
            name: "task.attempt",
            parent: &claimed.trace,
            own: &remote.trace,
            start: claimed.started_at.unwrap_or_else(SystemTime::now),
            attributes: vec![
                opentelemetry::KeyValue::new("task.id", claimed.id.to_string()),
                opentelemetry::KeyValue::new("task.kind", claimed.kind.clone()),
                opentelemetry::KeyValue::new("task.attempt", i64::from(claimed.attempt)),
                opentelemetry::KeyValue::new("worker.id", claimed.worker_id.clone()),
            ],
            error,
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_what_is_not_one() {
        let token = LeaseToken {
            task_id: TaskId::generate(),
            fencing_token: 42,
            secret: format!("{:032x}", 7u128),
        };
        assert_eq!(token.to_string().parse::<LeaseToken>().unwrap(), token);
        for bad in [
            "",
            "x.y.z",
            &format!("{}.42", token.task_id),
            &format!("{}.42.{}.1", token.task_id, token.secret),
            &format!("{}.-1.{}", token.task_id, token.secret),
            &format!("{}.42.{}", token.task_id, "G".repeat(32)),
        ] {
            assert!(bad.parse::<LeaseToken>().is_err(), "{bad:?}");
        }
    }
}
