//! Execution: the dispatcher claims due tasks while executor slots are free
//! (Submit claims a new task itself, in the write that stores it, when a
//! slot is free and nothing else is due), and each attempt runs its handler
//! under a cancellation token, the attempt timeout, the task deadline,
//! heartbeats and coalesced progress writes.

use std::{
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::{Duration, SystemTime},
};

use futures::FutureExt;
use opentelemetry::{
    KeyValue,
    context::FutureExt as _,
    trace::{SpanKind, Status, TraceContextExt as _, Tracer as _},
};
use tokio::{sync::OwnedSemaphorePermit, time::Instant};
use tracing::Instrument;

use super::{
    Engine, EngineError, Mutation, RunningAttempt, StopReason, TaskEvent,
    events::AllTasksEvent,
    handler::{HandlerContext, ProgressReport, ProgressReporter},
    sleep_until_opt,
    task::{Completion, ErrorCode, Progress, TaskError, TaskRecord, TaskState},
    transitions::{self, AttemptOutcome},
};
use crate::{
    store::StoreError,
    telemetry::{self, metrics::record, throttle},
};

/// Most tasks claimed in one store round trip.
const CLAIM_BATCH: usize = 64;
/// Longest the dispatcher sleeps without looking at the store, so tasks made
/// due by another process (or a missed wake-up) are still found.
const IDLE_POLL: Duration = Duration::from_secs(1);
/// How long before its lease lapses an attempt whose renewals fail is
/// stopped, beyond the handler's cancel grace.
const LAPSE_MARGIN: Duration = Duration::from_secs(1);

/// A lease renewal's answer, and the expiry it asked for.
struct Renewal {
    expires_at: SystemTime,
    renewed: Result<(), StoreError>,
}
/// Waits between tries of an outcome write the store did not take.
const OUTCOME_FIRST_BACKOFF: Duration = Duration::from_millis(50);
const OUTCOME_MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Tries of an outcome write that fails other than by unavailability.
const OUTCOME_INTERNAL_ATTEMPTS: u32 = 3;
/// The outcome digest of an in-process attempt's end: in-process attempts
/// are never completed twice by a caller, only retried by the executor.
const IN_PROCESS_OUTCOME: &str = "in-process";

/// Claims due tasks while slots are free and spawns their attempts.
pub(super) async fn dispatch_loop(engine: Engine) {
    let inner = &engine.inner;
    loop {
        let first_slot = tokio::select! {
            permit = inner.slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
            () = inner.stop_dispatch.cancelled() => return,
        };
        // Hold every free slot while claiming (Submit takes slots too), and
        // give back the ones left over. One at a time: taking them all at
        // once fails outright when a Submit takes one meanwhile.
        let mut slots = first_slot;
        while slots.num_permits() < CLAIM_BATCH {
            match inner.slots.clone().try_acquire_owned() {
                Ok(slot) => slots.merge(slot),
                Err(_) => break,
            }
        }
        // Held from before the drain check until the claimed attempts are
        // spawned: a drain starting meanwhile waits for them, and does not
        // close the store under a claim whose tasks would then sit RUNNING
        // until their leases expire.
        let in_flight = inner.attempts.token();
        if inner.stop_dispatch.is_cancelled() {
            return;
        }
        let claimed = {
            let _gate = inner.claim_gate.lock().await;
            match claim(&engine, slots.num_permits()).await {
                Ok(claimed) => claimed,
                Err(error) => {
                    if let Some(suppressed) = throttle::admit("engine.claim_failed") {
                        tracing::error!(%error, suppressed, "claiming due tasks failed; retrying");
                    }
                    drop(slots);
                    tokio::select! {
                        () = tokio::time::sleep(IDLE_POLL) => continue,
                        () = inner.stop_dispatch.cancelled() => return,
                    }
                }
            }
        };

        let claimed_any = !claimed.is_empty();
        for (task, attempt) in claimed {
            let slot = slots
                .split(1)
                .expect("a claim takes no more tasks than the slots it holds");
            inner
                .attempts
                .spawn(run_attempt(engine.clone(), task, attempt, slot));
        }
        drop(in_flight);
        drop(slots);
        if claimed_any {
            continue;
        }

        let next_due = inner
            .store
            .next_due_at(inner.kinds.local())
            .await
            .ok()
            .flatten();
        let mut sleep_for = next_due
            .map(|due| due.duration_since(SystemTime::now()).unwrap_or_default())
            .unwrap_or(IDLE_POLL)
            .min(IDLE_POLL);
        // What is due may belong to namespaces at their running quota: look
        // again when an attempt ends (it wakes this loop), or a while later.
        if inner.hub.quotas().load().caps_running() {
            sleep_for = IDLE_POLL;
        }
        tokio::select! {
            () = inner.dispatch_wakeup.notified() => {}
            () = tokio::time::sleep(sleep_for) => {}
            () = inner.stop_dispatch.cancelled() => return,
        }
    }
}

/// Reacts to changes made by other processes sharing the store: a task that
/// became claimable wakes the dispatcher; a cancel asked of another replica
/// stops the attempt running here. Own changes pass through harmlessly.
pub(super) async fn follow_other_writers(engine: Engine) {
    let mut changes = engine.inner.hub.subscribe_all(&super::Scope::All);
    loop {
        let change = tokio::select! {
            change = changes.recv() => change,
            () = engine.inner.stop_dispatch.cancelled() => return,
        };
        match change {
            AllTasksEvent::Changed(task) => {
                if task.state.is_claimable() {
                    engine.wake_executors(&task);
                }
                if task.state == TaskState::Running && task.cancel_requested {
                    let reason = StopReason::Cancelled(task.cancel_reason.clone());
                    engine.stop_local_attempt(task.id, reason).await;
                }
            }
            // Missed some: look at the store, and at the attempts running here.
            AllTasksEvent::Missed(ids) => {
                engine.inner.dispatch_wakeup.notify_one();
                engine.inner.remote.wake_all();
                let running: Vec<_> = engine
                    .lock_running()
                    .keys()
                    .copied()
                    .filter(|id| ids.as_ref().is_none_or(|ids| ids.contains(id)))
                    .collect();
                for id in running {
                    if let Ok(task) = engine.read(id).await
                        && task.cancel_requested
                    {
                        engine
                            .stop_local_attempt(
                                id,
                                StopReason::Cancelled(task.cancel_reason.clone()),
                            )
                            .await;
                    }
                }
            }
            AllTasksEvent::Closed => return,
        }
    }
}

/// Claims up to `limit` tasks and registers their attempts, so Cancel can
/// reach them as soon as the store shows them running.
async fn claim(
    engine: &Engine,
    limit: usize,
) -> Result<Vec<(TaskEvent, Arc<RunningAttempt>)>, StoreError> {
    let inner = &engine.inner;
    // Under running quotas each claim takes one task, so that the count
    // the exclusion rests on is never more than one attempt behind.
    let capped = inner.hub.quotas().load().caps_running();
    let mut request = engine.claim_request(if capped { 1 } else { limit });
    request.excluded_namespaces = engine.namespaces_at_running_quota().await?;
    let claimed = inner.store.claim_due(&request).await?;
    let mut running = engine.lock_running();
    Ok(claimed
        .into_iter()
        .map(|task| {
            let attempt = RunningAttempt::new(&inner.shutdown);
            running.insert(task.id, attempt.clone());
            (task, attempt)
        })
        .collect())
}

/// Why the attempt loop stopped waiting for the handler.
enum Interruption {
    Stopped(StopReason),
    AttemptTimeout,
    TaskDeadline,
}

/// Runs one attempt of a claimed task and stores its outcome, inside a
/// `task.attempt` span whose parent is the span that submitted the task, so
/// the handler's own spans and calls join the submitter's trace.
pub(super) async fn run_attempt(
    engine: Engine,
    task: TaskEvent,
    attempt: Arc<RunningAttempt>,
    _slot: OwnedSemaphorePermit,
) {
    let attempt_run = async {
        let task_id = task.id;
        let started = Instant::now();
        // A first attempt waited since submit; a retry's due time is gone by now.
        let queue_wait = (task.attempt == 1)
            .then(|| task.started_at?.duration_since(task.created_at).ok())
            .flatten();
        record::attempt_started(&task.kind, queue_wait);
        record::running(engine.running_count());
        let (outcome, unwritten_progress, lease_expires_at) =
            execute(&engine, &task, &attempt).await;
        engine.lock_running().remove(&task_id);
        record::attempt_finished(&task.kind, outcome.label(), started.elapsed());
        if let Some(message) = outcome.failure_message() {
            opentelemetry::trace::get_active_span(|span| {
                span.set_status(Status::error(message.clone()));
            });
            tracing::warn!(task.id = %task_id, task.kind = %task.kind, task.attempt = task.attempt, error.message = %message, "attempt failed");
        }
        store_outcome(
            &engine,
            &task,
            outcome,
            unwritten_progress,
            lease_expires_at,
        )
        .await;
        record::running(engine.running_count());
        engine.inner.dispatch_wakeup.notify_one();
    };
    // The handler runs in the attempt's context, so its own spans and its
    // outgoing calls join the trace.
    match telemetry::tracer() {
        // Exported: the attempt span, a child of the submit span (made with
        // the SDK directly, see telemetry::tracer); log lines take their ids
        // from its context.
        Some(tracer) => {
            let submitter = telemetry::propagation::context_of(&task.trace);
            let attempt_span = tracer
                .span_builder("task.attempt")
                .with_kind(SpanKind::Consumer)
                .with_attributes([
                    KeyValue::new("task.id", task.id.to_string()),
                    KeyValue::new("task.kind", task.kind.to_string()),
                    KeyValue::new("task.attempt", i64::from(task.attempt)),
                ])
                .start_with_context(tracer, &submitter);
            let context = submitter.with_span(attempt_span);
            telemetry::in_own_span(attempt_run, context.clone(), "task.attempt").await;
            // Ended here, not when the last clone of the context goes: a
            // handler may keep one in work it leaves behind.
            context.span().end();
        }
        // Not exported: the submitter's context with a made-up span id for
        // the attempt, which a `tracing` span carries to log lines.
        None => {
            let span_id = telemetry::propagation::new_span_id();
            let log_span = tracing::info_span!(
                "task.attempt",
                trace_id = task.trace.trace_id().unwrap_or_default(),
                span_id = span_id.as_str(),
            );
            let context = telemetry::propagation::attempt_context(&task.trace, &span_id);
            attempt_run.instrument(log_span).with_context(context).await;
        }
    }
}

/// Runs the handler; returns how the attempt ended, the last progress
/// report if coalescing had held it back (so it lands with the outcome),
/// and when the lease expires as last renewed.
async fn execute(
    engine: &Engine,
    task: &TaskRecord,
    attempt: &RunningAttempt,
) -> (AttemptOutcome, Option<ProgressReport>, SystemTime) {
    let config = &engine.inner.config;
    let now = SystemTime::now();
    let mut lease_expires_at = task
        .lease
        .as_ref()
        .map_or(now + config.lease_duration, |lease| lease.expires_at);
    if task.deadline.is_some_and(|deadline| deadline <= now) {
        return (
            AttemptOutcome::DeadlineExceeded {
                handler_stopped: true,
            },
            None,
            lease_expires_at,
        );
    }
    let Some(handler) = engine.inner.handlers.get(&task.kind).cloned() else {
        // Possible when a store holds tasks of a kind this build lacks.
        let error = TaskError::new(
            ErrorCode::Unimplemented,
            format!("no handler for kind {:?}", task.kind),
        )
        .with_reason("UNKNOWN_KIND");
        return (AttemptOutcome::Failed(error), None, lease_expires_at);
    };

    let attempt_deadline = task.attempt_timeout.map(|timeout| Instant::now() + timeout);
    let task_deadline = task.deadline.map(|deadline| instant_of(deadline, now));
    let handler_deadline = match (task.attempt_timeout, task.deadline) {
        (Some(timeout), Some(deadline)) => Some((now + timeout).min(deadline)),
        (timeout, deadline) => timeout.map(|timeout| now + timeout).or(deadline),
    };
    let (progress, mut progress_updates) = ProgressReporter::channel();
    let context = HandlerContext {
        task_id: task.id,
        kind: task.kind.clone(),
        input: task.input.clone(),
        labels: task.labels.clone(),
        attempt: task.attempt,
        max_attempts: task.retry.max_attempts,
        deadline: handler_deadline,
        cancellation: attempt.cancellation.clone(),
        progress,
    };
    let mut handler_run = AssertUnwindSafe(handler.run(context)).catch_unwind();
    let lease_token = task.lease.as_ref().map_or(0, |lease| lease.token);
    let mut interruption: Option<Interruption> = None;
    let mut written_progress: Option<ProgressReport> = None;

    // Many handlers finish on their first poll: those need no timers armed.
    let result = if let Poll::Ready(result) = futures::poll!(&mut handler_run) {
        Some(result)
    } else {
        let mut heartbeat = tokio::time::interval_at(
            Instant::now() + config.lease_duration / 3,
            config.lease_duration / 3,
        );
        let mut grace_end: Option<Instant> = None;
        let mut progress_due: Option<Instant> = None;
        let mut last_progress_write: Option<Instant> = None;
        // In flight beside the handler, so that a renewal stuck on a frozen
        // connection holds up nothing else (the lapse guard least of all).
        let mut renewal: Option<Pin<Box<dyn Future<Output = Renewal> + Send + '_>>> = None;
        // An attempt whose lease is about to lapse unrenewed stops, so that
        // its handler ends (dropped at the lapse at the latest) before
        // another replica may start the task again. A late renewal that
        // would have landed in the margin costs the attempt: the margin is
        // small next to the lease (a sixth), and at most the cancel grace.
        let lapse_margin = (config.cancel_grace + LAPSE_MARGIN).min(config.lease_duration / 6);
        loop {
            let stopping = interruption.is_some();
            let lapse_guard = (lease_token != 0).then(|| {
                let expiry = instant_of(lease_expires_at, SystemTime::now());
                expiry
                    .checked_sub(lapse_margin)
                    .unwrap_or_else(Instant::now)
            });
            tokio::select! {
                result = &mut handler_run => break Some(result),
                () = attempt.cancellation.cancelled(), if !stopping => {
                    let reason = attempt.stop_reason().unwrap_or(StopReason::HandedBack);
                    interruption = Some(Interruption::Stopped(reason));
                    grace_end = Some(Instant::now() + config.cancel_grace);
                }
                () = sleep_until_opt(attempt_deadline), if !stopping => {
                    interruption = Some(Interruption::AttemptTimeout);
                    attempt.cancellation.cancel();
                    grace_end = Some(Instant::now() + config.cancel_grace);
                }
                () = sleep_until_opt(task_deadline), if !stopping => {
                    interruption = Some(Interruption::TaskDeadline);
                    attempt.cancellation.cancel();
                    grace_end = Some(Instant::now() + config.cancel_grace);
                }
                () = sleep_until_opt(grace_end), if stopping => break None,
                () = sleep_until_opt(lapse_guard), if !stopping => {
                    tracing::warn!(task.id = %task.id, task.attempt = task.attempt, "the lease could not be renewed and is about to lapse; stopping the attempt");
                    interruption = Some(Interruption::Stopped(StopReason::HandedBack));
                    attempt.cancellation.cancel();
                    let lapse = instant_of(lease_expires_at, SystemTime::now());
                    grace_end = Some((Instant::now() + config.cancel_grace).min(lapse));
                }
                Ok(()) = progress_updates.changed(), if progress_due.is_none() => {
                    let now = Instant::now();
                    match last_progress_write.map(|last| last + config.progress_interval) {
                        // Too soon after the last write: coalesce until the interval ends.
                        Some(earliest) if earliest > now => progress_due = Some(earliest),
                        _ => {
                            last_progress_write = Some(now);
                            written_progress = bounded_flush(engine, task, lease_token, &mut progress_updates).await;
                        }
                    }
                }
                () = sleep_until_opt(progress_due) => {
                    progress_due = None;
                    last_progress_write = Some(Instant::now());
                    written_progress = bounded_flush(engine, task, lease_token, &mut progress_updates).await;
                }
                _ = heartbeat.tick(), if renewal.is_none() => {
                    let expires_at = SystemTime::now() + config.lease_duration;
                    let store = &engine.inner.store;
                    renewal = Some(Box::pin(async move {
                        let renewed = store.extend_lease(task.id, lease_token, expires_at, SystemTime::now()).await;
                        Renewal { expires_at, renewed }
                    }));
                }
                Renewal { expires_at, renewed } = async { renewal.as_mut().expect("a renewal in flight").await }, if renewal.is_some() => {
                    renewal = None;
                    match renewed {
                        Ok(()) => lease_expires_at = expires_at,
                        Err(error) => {
                            if let Some(suppressed) = throttle::admit("engine.renewal_failed") {
                                tracing::warn!(task.id = %task.id, %error, suppressed, "lease renewal failed");
                            }
                        }
                    }
                }
            }
        }
    };

    // A handler that saw its token fire may return its own error before the
    // loop saw the stop: the stop (a cancel or a hand-back) decides then,
    // or a handed-back attempt would end as a failure. A success stands.
    if interruption.is_none()
        && matches!(result, Some(Ok(Err(_))))
        && let Some(reason) = attempt.stop_reason()
    {
        interruption = Some(Interruption::Stopped(reason));
    }
    let latest_progress = progress_updates.borrow().clone();
    let unwritten_progress =
        latest_progress.filter(|latest| Some(latest) != written_progress.as_ref());
    let handler_stopped = result.is_some();
    let outcome = match (interruption, result) {
        (None, Some(Ok(Ok(output)))) => AttemptOutcome::Succeeded(output),
        (None, Some(Ok(Err(error)))) => AttemptOutcome::Failed(error),
        (None, Some(Err(panic))) => {
            let message = vow_handler::panic_message(&*panic);
            tracing::error!(task.id = %task.id, task.kind = %task.kind, panic.message = %message, "handler panicked");
            AttemptOutcome::Failed(
                TaskError::new(ErrorCode::Internal, format!("panicked: {message}"))
                    .with_reason("HANDLER_PANICKED"),
            )
        }
        (None, None) => unreachable!("the loop only gives up on a handler after an interruption"),
        (Some(Interruption::AttemptTimeout), _) => AttemptOutcome::TimedOut { handler_stopped },
        (Some(Interruption::TaskDeadline), _) => {
            AttemptOutcome::DeadlineExceeded { handler_stopped }
        }
        (Some(Interruption::Stopped(StopReason::Cancelled(reason))), _) => {
            AttemptOutcome::Cancelled {
                reason,
                handler_stopped,
            }
        }
        (Some(Interruption::Stopped(StopReason::HandedBack)), _) => AttemptOutcome::HandedBack,
    };
    (outcome, unwritten_progress, lease_expires_at)
}

/// Stores the end of an attempt, unless this process no longer holds the
/// lease. A write that fails is tried again with backoff for as long as the
/// lease holds, and the lease is renewed meanwhile: an outcome is given up
/// (and counted) only when the lease is lost, since another executor may
/// then run the task again, or when the store keeps failing in a way a
/// retry cannot mend.
async fn store_outcome(
    engine: &Engine,
    claimed: &TaskEvent,
    outcome: AttemptOutcome,
    unwritten_progress: Option<ProgressReport>,
    mut lease_expires_at: SystemTime,
) {
    let config = &engine.inner.config;
    let lease_token = claimed.lease.as_ref().map(|lease| lease.token);
    // Usually nothing changed since the claim but progress; the first try
    // uses the claimed snapshot and a conflict falls back to reading. The
    // snapshot carries the claim's expiry, and renewals may have written
    // only the store's lease column (PostgreSQL): without the renewed expiry,
    // an attempt longer than its lease looked lost and its outcome was
    // dropped, so it ran again.
    // Copied only when a renewal moved the expiry: most attempts end
    // within their first lease, and the record (inputs and all) is shared.
    let mut snapshot = claimed.clone();
    let renewed = snapshot
        .lease
        .as_ref()
        .is_some_and(|lease| lease.expires_at < lease_expires_at);
    if renewed && let Some(lease) = Arc::make_mut(&mut snapshot).lease.as_mut() {
        lease.expires_at = lease_expires_at;
    }
    let mut known = Some(snapshot);
    let mut backoff = OUTCOME_FIRST_BACKOFF;
    let mut internal_failures = 0;
    let mut lease_refused = false;
    let mut failing_since: Option<Instant> = None;
    let why_lost = loop {
        let result = engine
            .update_task_from(claimed.id, known.take(), |task| {
                let now = SystemTime::now();
                let holds_lease = task.state == TaskState::Running
                    && task.lease.as_ref().is_some_and(|lease| {
                        Some(lease.token) == lease_token && lease.holds_at(now)
                    });
                if !holds_lease {
                    return Mutation::Keep;
                }
                // Cloned: a compare-and-set conflict runs this closure again.
                let mut this_outcome = outcome.clone();
                if let Some(report) = &unwritten_progress {
                    task.progress = Some(Progress {
                        percent: report.percent,
                        message: report.message.clone(),
                        updated_at: SystemTime::now(),
                    });
                }
                // A cancel acknowledged (asked here or through the store by
                // another process) wins over whatever the attempt returned.
                if task.cancel_requested
                    && !matches!(this_outcome, AttemptOutcome::Cancelled { .. })
                {
                    this_outcome = AttemptOutcome::Cancelled {
                        reason: task.cancel_reason.clone(),
                        handler_stopped: true,
                    };
                }
                transitions::finish_attempt(task, this_outcome, now, rand::random());
                // Marks the end as this attempt's, for a retry of a write
                // whose answer was lost to recognise.
                task.completed_by = lease_token.map(|token| Completion {
                    token,
                    outcome_digest: IN_PROCESS_OUTCOME.into(),
                });
                Mutation::Write
            })
            .await;
        let error = match result {
            Ok(task) => {
                if let Some(since) = failing_since {
                    tracing::info!(task.id = %claimed.id, retried_for = ?since.elapsed(), "stored an attempt's outcome after retrying");
                }
                let ours = task
                    .completed_by
                    .as_ref()
                    .is_some_and(|completion| Some(completion.token) == lease_token);
                if !ours {
                    // The lease went first (reaped, taken over, or lapsed).
                    break "the lease was lost before the outcome was stored".to_owned();
                }
                if task.state == TaskState::RetryWait {
                    engine.inner.dispatch_wakeup.notify_one();
                }
                tracing::debug!(task.id = %task.id, task.state = task.state.as_str(), task.attempt = task.attempt, "attempt finished");
                return;
            }
            // Deleted meanwhile: there is nothing left to finish.
            Err(EngineError::NotFound(_)) => return,
            Err(error) => error,
        };
        if failing_since.is_none() {
            failing_since = Some(Instant::now());
            if let Some(suppressed) = throttle::admit("engine.outcome_unstored") {
                tracing::warn!(task.id = %claimed.id, %error, suppressed, "could not store an attempt's outcome yet; retrying while the lease holds");
            }
        }
        if !matches!(error, EngineError::StorageUnavailable(_)) {
            internal_failures += 1;
            if internal_failures >= OUTCOME_INTERNAL_ATTEMPTS {
                break format!("the store keeps failing: {error}");
            }
        }
        if lease_refused {
            break "the lease was taken over".to_owned();
        }
        // Renewed once two thirds of the lease are left, as heartbeats do.
        let left = lease_expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if left < config.lease_duration * 2 / 3 {
            let expires_at = SystemTime::now() + config.lease_duration;
            match engine
                .inner
                .store
                .extend_lease(
                    claimed.id,
                    lease_token.unwrap_or_default(),
                    expires_at,
                    SystemTime::now(),
                )
                .await
            {
                Ok(()) => lease_expires_at = expires_at,
                // The outcome may have been stored after all (an answer that
                // was lost): one more try tells.
                Err(StoreError::StaleLease) => lease_refused = true,
                Err(StoreError::NotFound) => return,
                // Unavailable too: the next round tries again.
                Err(_) => {}
            }
        }
        let retry_at = Instant::now() + backoff;
        if SystemTime::now() + backoff >= lease_expires_at {
            break "the lease expired while the store was unavailable".to_owned();
        }
        tokio::select! {
            () = tokio::time::sleep_until(retry_at) => {}
            // Shutdown waits for attempts first: by now the drain is over.
            () = engine.inner.shutdown.cancelled() => break "the server shut down".to_owned(),
        }
        backoff = (backoff * 2).min(OUTCOME_MAX_BACKOFF);
    };
    record::outcome_lost(&claimed.kind);
    tracing::error!(task.id = %claimed.id, task.kind = %claimed.kind, task.attempt = claimed.attempt, reason = %why_lost, "gave up storing an attempt's outcome; the task will run again if attempts remain");
}

/// Writes the latest progress report, if there is one not yet written.
/// [`flush_progress`] within a heartbeat period: a write stuck on a frozen
/// connection must not hold up the attempt loop (its renewals, its lapse
/// guard). A report not written in time lands with the outcome.
async fn bounded_flush(
    engine: &Engine,
    task: &TaskRecord,
    lease_token: u64,
    updates: &mut tokio::sync::watch::Receiver<Option<ProgressReport>>,
) -> Option<ProgressReport> {
    let bound = engine.inner.config.lease_duration / 3;
    tokio::time::timeout(bound, flush_progress(engine, task, lease_token, updates))
        .await
        .ok()
        .flatten()
}

async fn flush_progress(
    engine: &Engine,
    task: &TaskRecord,
    lease_token: u64,
    updates: &mut tokio::sync::watch::Receiver<Option<ProgressReport>>,
) -> Option<ProgressReport> {
    let report = updates.borrow_and_update().clone()?;
    // A report not stored (say, made before the claim was committed) stays
    // unwritten, so it lands with the outcome.
    write_progress(
        engine,
        task,
        lease_token,
        report.percent,
        report.message.clone(),
    )
    .await
    .then_some(report)
}

async fn write_progress(
    engine: &Engine,
    claimed: &TaskRecord,
    lease_token: u64,
    percent: f32,
    message: String,
) -> bool {
    let result = engine
        .update_task(claimed.id, |task| {
            let holds_lease = task.state == TaskState::Running
                && task
                    .lease
                    .as_ref()
                    .is_some_and(|lease| lease.token == lease_token);
            if !holds_lease {
                return Mutation::Keep;
            }
            task.progress = Some(Progress {
                percent,
                message: message.clone(),
                updated_at: SystemTime::now(),
            });
            Mutation::Write
        })
        .await;
    if let Err(error) = &result {
        tracing::debug!(task.id = %claimed.id, %error, "progress not stored");
    }
    result.is_ok()
}

fn instant_of(at: SystemTime, now: SystemTime) -> Instant {
    Instant::now() + at.duration_since(now).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use async_trait::async_trait;

    use super::*;
    use crate::engine::Scope;
    use crate::{
        engine::{
            EngineConfig, EventHub, Handler, HandlerContext, HandlerRegistry,
            task::{Payload, SubmitSpec, TaskId, TraceContext},
        },
        store::{
            ClaimRequest, CreateOutcome, KindCounts, ListPage, ListQuery, MemoryStore, OnClaimed,
            SharedTask, Store,
        },
    };

    /// Returns its own error the moment its token fires, racing the
    /// executor's view of the stop.
    struct QuitsOnCancel;

    #[async_trait]
    impl Handler for QuitsOnCancel {
        async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError> {
            context.cancelled().await;
            Err(TaskError::new(ErrorCode::Cancelled, "stopped"))
        }
    }

    /// A memory store with faults of the embedded and PostgreSQL stores.
    #[derive(Default)]
    struct Faults {
        /// The claiming create hands the task over, then fails, as the
        /// embedded store does when the commit after the hand-over fails.
        create_fails_after_hand_over: bool,
        /// Writes that make a task SUCCEEDED fail as unavailable this often.
        failing_outcome_writes: std::sync::atomic::AtomicUsize,
        /// Lease renewals fail as unavailable.
        renewals_fail: bool,
    }

    struct FaultyStore(MemoryStore, Faults);

    #[async_trait]
    impl Store for FaultyStore {
        async fn create(
            &self,
            task: TaskRecord,
            max_queued: Option<usize>,
        ) -> Result<CreateOutcome, StoreError> {
            self.0.create(task, max_queued).await
        }
        async fn create_and_claim(
            &self,
            mut task: TaskRecord,
            max_queued: Option<usize>,
            claim: &ClaimRequest,
            on_claimed: OnClaimed,
        ) -> Result<CreateOutcome, StoreError> {
            if !self.1.create_fails_after_hand_over {
                return self
                    .0
                    .create_and_claim(task, max_queued, claim, on_claimed)
                    .await;
            }
            claim.claim(&mut task, 1);
            on_claimed(Arc::new(task));
            Err(StoreError::Unavailable("the commit failed".into()))
        }
        async fn get(&self, id: TaskId) -> Result<Option<SharedTask>, StoreError> {
            self.0.get(id).await
        }
        async fn update(
            &self,
            task: TaskRecord,
            expected_revision: u64,
        ) -> Result<SharedTask, StoreError> {
            use std::sync::atomic::Ordering;
            let failing = &self.1.failing_outcome_writes;
            if task.state == TaskState::Succeeded
                && failing
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        left.checked_sub(1)
                    })
                    .is_ok()
            {
                return Err(StoreError::Unavailable("the database is away".into()));
            }
            self.0.update(task, expected_revision).await
        }
        async fn delete(&self, id: TaskId) -> Result<bool, StoreError> {
            self.0.delete(id).await
        }
        async fn list(&self, query: &ListQuery) -> Result<ListPage, StoreError> {
            self.0.list(query).await
        }
        async fn claim_due(&self, request: &ClaimRequest) -> Result<Vec<SharedTask>, StoreError> {
            self.0.claim_due(request).await
        }
        async fn next_due_at(&self, kinds: &[String]) -> Result<Option<SystemTime>, StoreError> {
            self.0.next_due_at(kinds).await
        }
        async fn extend_lease(
            &self,
            id: TaskId,
            token: u64,
            expires_at: SystemTime,
            now: SystemTime,
        ) -> Result<(), StoreError> {
            if self.1.renewals_fail {
                return Err(StoreError::Unavailable("the database is away".into()));
            }
            self.0.extend_lease(id, token, expires_at, now).await
        }
        async fn overdue(
            &self,
            now: SystemTime,
            limit: usize,
        ) -> Result<Vec<SharedTask>, StoreError> {
            self.0.overdue(now, limit).await
        }
        async fn expired_leases(
            &self,
            now: SystemTime,
            limit: usize,
        ) -> Result<Vec<SharedTask>, StoreError> {
            self.0.expired_leases(now, limit).await
        }
        async fn delete_expired(
            &self,
            now: SystemTime,
            limit: usize,
        ) -> Result<Vec<TaskId>, StoreError> {
            self.0.delete_expired(now, limit).await
        }
        async fn kind_counts(&self) -> Result<BTreeMap<String, KindCounts>, StoreError> {
            self.0.kind_counts().await
        }
        async fn namespace_counts(&self, namespace: &str) -> Result<KindCounts, StoreError> {
            self.0.namespace_counts(namespace).await
        }
        async fn record_poll(&self, kinds: &[String], at: SystemTime) -> Result<(), StoreError> {
            self.0.record_poll(kinds, at).await
        }
        async fn last_polls(&self) -> Result<BTreeMap<String, SystemTime>, StoreError> {
            self.0.last_polls().await
        }
    }

    /// An attempt the store started before its create failed belongs to a
    /// task that does not exist: it is stopped and its slot comes back.
    #[tokio::test]
    async fn an_attempt_handed_over_by_a_failed_create_is_stopped() {
        let hub = Arc::new(EventHub::new(16));
        let faults = Faults {
            create_fails_after_hand_over: true,
            ..Faults::default()
        };
        let store = Arc::new(FaultyStore(MemoryStore::new(hub.clone()), faults));
        let mut handlers = HandlerRegistry::new();
        handlers.register("quits", QuitsOnCancel);
        let config = EngineConfig::default();
        let slots = config.max_concurrent_tasks;
        let engine = Engine::start(config, store, hub, handlers).expect("valid kinds");
        let spec = SubmitSpec {
            kind: "quits".into(),
            ..SubmitSpec::default()
        };
        assert!(
            engine
                .submit(&Scope::default(), spec, TraceContext::default())
                .await
                .is_err()
        );
        tokio::time::timeout(Duration::from_secs(10), async {
            while engine.running_count() > 0 || engine.inner.slots.available_permits() < slots {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the orphaned attempt stops and frees its slot");
        engine.shutdown(Duration::ZERO).await;
    }

    /// A handed-back attempt goes back to the queue even when the handler
    /// returns its cancellation error before the executor sees the stop.
    #[tokio::test]
    async fn a_handed_back_attempt_is_requeued_whoever_returns_first() {
        for _ in 0..20 {
            let hub = Arc::new(EventHub::new(16));
            let store = Arc::new(MemoryStore::new(hub.clone()));
            let mut handlers = HandlerRegistry::new();
            handlers.register("quits", QuitsOnCancel);
            let engine = Engine::start(EngineConfig::default(), store.clone(), hub, handlers)
                .expect("valid kinds");
            let spec = SubmitSpec {
                kind: "quits".into(),
                ..SubmitSpec::default()
            };
            let id = engine
                .submit(&Scope::default(), spec, TraceContext::default())
                .await
                .expect("submit")
                .task
                .id;
            while engine.running_count() == 0 {
                tokio::task::yield_now().await;
            }
            engine.shutdown(Duration::ZERO).await;
            let task = engine.read(id).await.expect("get");
            assert_eq!(task.state, TaskState::Queued, "handed back, not failed");
            assert_eq!(task.attempt, 1);
        }
    }

    /// Counts its runs and succeeds after a moment.
    #[derive(Default)]
    struct CountsRuns(std::sync::atomic::AtomicUsize);

    struct Counted(Arc<CountsRuns>);

    #[async_trait]
    impl Handler for Counted {
        async fn run(&self, _context: HandlerContext) -> Result<Payload, TaskError> {
            self.0.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(20)).await;
            Ok(Payload::json(serde_json::json!("done")))
        }
    }

    async fn engine_on(faults: Faults, config: EngineConfig) -> (Engine, Arc<CountsRuns>) {
        let hub = Arc::new(EventHub::new(16));
        let store = Arc::new(FaultyStore(MemoryStore::new(hub.clone()), faults));
        let runs = Arc::new(CountsRuns::default());
        let mut handlers = HandlerRegistry::new();
        handlers.register("counted", Counted(runs.clone()));
        (
            Engine::start(config, store, hub, handlers).expect("valid kinds"),
            runs,
        )
    }

    async fn submit_once(engine: &Engine) -> TaskId {
        let spec = SubmitSpec {
            kind: "counted".into(),
            retry: crate::engine::task::RetryOverrides {
                max_attempts: Some(1),
                ..Default::default()
            },
            ..SubmitSpec::default()
        };
        engine
            .submit(&Scope::default(), spec, TraceContext::default())
            .await
            .expect("submit")
            .task
            .id
    }

    /// An outcome the store did not take at first is stored once it does,
    /// and the handler does not run again.
    #[tokio::test]
    async fn an_outcome_is_retried_while_the_lease_holds() {
        let faults = Faults {
            failing_outcome_writes: 4.into(),
            ..Faults::default()
        };
        let (engine, runs) = engine_on(faults, EngineConfig::default()).await;
        let id = submit_once(&engine).await;
        let awaited = engine
            .await_task(&Scope::default(), id, Duration::from_secs(10))
            .await
            .expect("await");
        assert!(awaited.done);
        assert_eq!(awaited.task.state, TaskState::Succeeded);
        assert_eq!(awaited.task.attempt, 1);
        assert_eq!(runs.0.load(std::sync::atomic::Ordering::SeqCst), 1);
        engine.shutdown(Duration::ZERO).await;
    }

    /// An outcome is given up once the lease it was made under expires; the
    /// reaper then decides, and the slot comes back.
    #[tokio::test]
    async fn an_outcome_is_given_up_when_its_lease_expires() {
        let faults = Faults {
            failing_outcome_writes: usize::MAX.into(),
            renewals_fail: true,
            ..Faults::default()
        };
        let config = EngineConfig {
            lease_duration: Duration::from_millis(600),
            ..EngineConfig::default()
        };
        let slots = config.max_concurrent_tasks;
        let (engine, _runs) = engine_on(faults, config).await;
        let id = submit_once(&engine).await;
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let task = engine.read(id).await.expect("get");
                let idle = engine.inner.slots.available_permits() == slots;
                if task.state == TaskState::Failed && idle {
                    let error = task.error.as_ref().expect("an error");
                    assert_eq!(error.reason, "LEASE_EXPIRED");
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the lost attempt is reaped and its slot freed");
        engine.shutdown(Duration::ZERO).await;
    }
}
