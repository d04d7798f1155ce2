//! The task state machine as pure functions over a record: what each event
//! does to a task. The engine decides *when* they happen and stores the result.
//!
//! QUEUED -> RUNNING -> (RETRY_WAIT -> RUNNING)* -> SUCCEEDED | FAILED | CANCELLED

use std::time::SystemTime;

use super::{
    task::{ErrorCode, Payload, TaskError, TaskRecord, TaskState},
    validate::MAX_BACKOFF,
};

/// How an attempt ended, as the executor saw it.
#[derive(Clone, Debug)]
pub enum AttemptOutcome {
    /// The handler returned an output.
    Succeeded(Payload),
    /// The handler returned an error or panicked.
    Failed(TaskError),
    /// The attempt timeout expired.
    TimedOut { handler_stopped: bool },
    /// The task deadline passed during the attempt.
    DeadlineExceeded { handler_stopped: bool },
    /// A client cancelled the task.
    Cancelled {
        reason: String,
        handler_stopped: bool,
    },
    /// The server is shutting down; the task goes back to the queue.
    HandedBack,
}

impl AttemptOutcome {
    /// A short label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Succeeded(_) => "succeeded",
            Self::Failed(error) if error.reason == "HANDLER_PANICKED" => "panicked",
            Self::Failed(_) => "failed",
            Self::TimedOut { .. } => "timed_out",
            Self::DeadlineExceeded { .. } => "deadline_exceeded",
            Self::Cancelled { .. } => "cancelled",
            Self::HandedBack => "handed_back",
        }
    }

    /// What went wrong, if the attempt did not succeed.
    pub fn failure_message(&self) -> Option<String> {
        match self {
            Self::Succeeded(_) => None,
            Self::Failed(error) => Some(format!("{}: {}", error.code.as_str(), error.message)),
            Self::TimedOut { .. } => Some("the attempt timed out".into()),
            Self::DeadlineExceeded { .. } => Some("the task deadline passed".into()),
            Self::Cancelled { reason, .. } => Some(format!("cancelled: {reason}")),
            Self::HandedBack => Some("handed back at shutdown".into()),
        }
    }
}

/// Applies the end of an attempt to a RUNNING task. `unit_random` in [0, 1)
/// supplies the backoff jitter.
pub fn finish_attempt(
    task: &mut TaskRecord,
    outcome: AttemptOutcome,
    now: SystemTime,
    unit_random: f64,
) {
    task.lease = None;
    match outcome {
        AttemptOutcome::Succeeded(output) => {
            task.output = Some(std::sync::Arc::new(output));
            task.error = None;
            end(task, TaskState::Succeeded, now);
        }
        AttemptOutcome::Failed(error) => fail_attempt(task, error, now, unit_random),
        AttemptOutcome::TimedOut { handler_stopped } => {
            let timeout = task.attempt_timeout.unwrap_or_default();
            let error = TaskError::new(
                ErrorCode::DeadlineExceeded,
                format!(
                    "attempt {} timed out after {}",
                    task.attempt,
                    humantime::format_duration(timeout)
                ),
            )
            .with_reason("ATTEMPT_TIMEOUT")
            .with_metadata("handler_stopped", handler_stopped.to_string());
            fail_attempt(task, error, now, unit_random);
        }
        AttemptOutcome::DeadlineExceeded { handler_stopped } => {
            task.error = Some(
                deadline_error("the task deadline passed while an attempt was running")
                    .with_metadata("handler_stopped", handler_stopped.to_string()),
            );
            end(task, TaskState::Failed, now);
        }
        AttemptOutcome::Cancelled {
            reason,
            handler_stopped,
        } => {
            task.error = Some(
                cancelled_error(&reason)
                    .with_metadata("handler_stopped", handler_stopped.to_string()),
            );
            end(task, TaskState::Cancelled, now);
        }
        AttemptOutcome::HandedBack => {
            requeue_interrupted(task, "interrupted by server shutdown", now)
        }
    }
}

/// Returns a task whose attempt was interrupted (shutdown, restart) to the
/// queue, counting the attempt; fails it when none remain. A task asked to
/// stop ends CANCELLED instead: it never starts again.
pub fn requeue_interrupted(task: &mut TaskRecord, why: &str, now: SystemTime) {
    task.lease = None;
    if task.cancel_requested {
        end_cancelled(task, false, now);
        return;
    }
    if task.attempt >= task.retry.max_attempts {
        task.error = Some(
            TaskError::new(
                ErrorCode::Aborted,
                format!("attempt {} {why}; no attempts remain", task.attempt),
            )
            .with_reason("ATTEMPT_INTERRUPTED"),
        );
        end(task, TaskState::Failed, now);
        return;
    }
    task.state = TaskState::Queued;
    task.next_attempt_at = None;
    task.progress = None;
}

/// Ends an attempt whose lease lapsed without a renewal or an outcome: its
/// executor or worker is gone, or a remote attempt overran its deadline
/// (its lease ends then). The task deadline and the attempt timeout fail as
/// they would in-process; otherwise the attempt fails `UNAVAILABLE` ("worker
/// lost") and the retry policy decides. A task asked to stop ends CANCELLED.
pub fn lease_lost(task: &mut TaskRecord, now: SystemTime, unit_random: f64) {
    let attempt_deadline = task
        .lease
        .as_ref()
        .and_then(|lease| lease.remote.as_ref()?.attempt_deadline);
    if task.cancel_requested {
        task.lease = None;
        end_cancelled(task, false, now);
        return;
    }
    let outcome = if task.deadline.is_some_and(|deadline| deadline <= now) {
        AttemptOutcome::DeadlineExceeded {
            handler_stopped: false,
        }
    } else if attempt_deadline.is_some_and(|deadline| deadline <= now) {
        AttemptOutcome::TimedOut {
            handler_stopped: false,
        }
    } else {
        let holder = task
            .lease
            .as_ref()
            .map(|lease| lease.owner.clone())
            .unwrap_or_default();
        AttemptOutcome::Failed(
            TaskError::new(
                ErrorCode::Unavailable,
                format!(
                    "worker lost: attempt {} of {holder} stopped renewing its lease",
                    task.attempt
                ),
            )
            .with_reason("LEASE_EXPIRED"),
        )
    };
    finish_attempt(task, outcome, now, unit_random);
}

/// Gives a leased task back unfinished without counting its attempt: it is
/// due again at once (a worker shutting down). A task asked to stop ends
/// CANCELLED instead.
pub fn release(task: &mut TaskRecord, now: SystemTime) {
    task.lease = None;
    if task.cancel_requested {
        end_cancelled(task, true, now);
        return;
    }
    task.attempt = task.attempt.saturating_sub(1);
    task.state = TaskState::Queued;
    task.next_attempt_at = None;
    task.progress = None;
}

fn end_cancelled(task: &mut TaskRecord, handler_stopped: bool, now: SystemTime) {
    let reason = task.cancel_reason.clone();
    task.error = Some(
        cancelled_error(&reason).with_metadata("handler_stopped", handler_stopped.to_string()),
    );
    end(task, TaskState::Cancelled, now);
}

/// Cancels a task that is not running: it ends at once.
pub fn cancel_waiting(task: &mut TaskRecord, reason: &str, now: SystemTime) {
    task.cancel_requested = true;
    task.error = Some(cancelled_error(reason).with_metadata("handler_stopped", "true"));
    end(task, TaskState::Cancelled, now);
}

/// Fails a task whose deadline passed before it could run again.
pub fn expire_waiting(task: &mut TaskRecord, now: SystemTime) {
    let mut error = deadline_error("the task deadline passed before an attempt could start");
    if let Some(last) = &task.error {
        error = error.with_metadata("last_error", last.message.clone());
    }
    task.error = Some(error);
    end(task, TaskState::Failed, now);
}

fn fail_attempt(task: &mut TaskRecord, error: TaskError, now: SystemTime, unit_random: f64) {
    let error = error.with_metadata("attempt", task.attempt.to_string());
    let attempts_remain = task.attempt < task.retry.max_attempts;
    if !(attempts_remain && task.retry.is_retryable(&error)) {
        task.error = Some(error);
        end(task, TaskState::Failed, now);
        return;
    }
    // A delay the error asked for (a RetryInfo) wins over the backoff, up
    // to the longest backoff a submitter may set: a worker's hint must not
    // push the next attempt past what a clock (or a store) can hold.
    let delay = error
        .retry_after
        .map(|asked| asked.min(MAX_BACKOFF))
        .unwrap_or_else(|| task.retry.backoff(task.attempt, unit_random));
    let next_attempt_at = now + delay;
    if task
        .deadline
        .is_some_and(|deadline| next_attempt_at >= deadline)
    {
        task.error = Some(
            deadline_error("the task deadline falls before the next attempt")
                .with_metadata("last_error", error.message),
        );
        end(task, TaskState::Failed, now);
        return;
    }
    task.error = Some(error);
    task.state = TaskState::RetryWait;
    task.next_attempt_at = Some(next_attempt_at);
}

fn end(task: &mut TaskRecord, state: TaskState, now: SystemTime) {
    debug_assert!(state.is_terminal());
    task.state = state;
    task.ended_at = Some(now);
    task.expires_at = Some(now + task.retention);
    task.next_attempt_at = None;
    task.lease = None;
}

fn deadline_error(message: &str) -> TaskError {
    TaskError::new(ErrorCode::DeadlineExceeded, message).with_reason("TASK_DEADLINE_EXCEEDED")
}

fn cancelled_error(reason: &str) -> TaskError {
    let message = if reason.is_empty() {
        "cancelled".to_owned()
    } else {
        format!("cancelled: {reason}")
    };
    TaskError::new(ErrorCode::Cancelled, message).with_reason("TASK_CANCELLED")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::engine::{
        retry::RetryPolicy,
        task::{TaskId, TraceContext},
    };

    /// A running task record, for tests anywhere in the engine.
    pub(crate) fn running(attempt: u32, max_attempts: u32) -> TaskRecord {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000);
        TaskRecord {
            id: TaskId::generate(),
            kind: "fail".into(),
            state: TaskState::Running,
            input: Default::default(),
            output: None,
            error: None,
            attempt,
            retry: RetryPolicy {
                max_attempts,
                initial_backoff: Duration::from_secs(1),
                max_backoff: Duration::from_secs(10),
                backoff_multiplier: 2.0,
                jitter: 0.0,
                non_retryable_reasons: vec![],
            },
            progress: None,
            labels: Default::default(),
            priority: 0,
            trace: TraceContext::default(),
            revision: 3,
            created_at: now,
            updated_at: now,
            started_at: Some(now),
            ended_at: None,
            next_attempt_at: None,
            expires_at: None,
            deadline: None,
            attempt_timeout: Some(Duration::from_millis(500)),
            retention: Duration::from_secs(60),
            idempotency_key: None,
            request_fingerprint: String::new(),
            cancel_requested: false,
            cancel_reason: String::new(),
            lease: None,
            worker_id: String::new(),
            completed_by: None,
            namespace: "default".into(),
        }
    }

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(2_000)
    }

    #[test]
    fn success_is_terminal_and_expires_after_retention() {
        let mut task = running(1, 3);
        finish_attempt(
            &mut task,
            AttemptOutcome::Succeeded(Payload::default()),
            now(),
            0.5,
        );
        assert_eq!(task.state, TaskState::Succeeded);
        assert_eq!(task.ended_at, Some(now()));
        assert_eq!(task.expires_at, Some(now() + Duration::from_secs(60)));
    }

    #[test]
    fn retryable_failures_wait_with_growing_backoff() {
        let mut task = running(1, 3);
        finish_attempt(
            &mut task,
            AttemptOutcome::Failed(TaskError::new(ErrorCode::Unavailable, "x")),
            now(),
            0.5,
        );
        assert_eq!(task.state, TaskState::RetryWait);
        assert_eq!(task.next_attempt_at, Some(now() + Duration::from_secs(1)));

        let mut task = running(2, 3);
        finish_attempt(
            &mut task,
            AttemptOutcome::Failed(TaskError::new(ErrorCode::Unavailable, "x")),
            now(),
            0.5,
        );
        assert_eq!(task.next_attempt_at, Some(now() + Duration::from_secs(2)));
    }

    #[test]
    fn the_last_attempt_fails_the_task() {
        let mut task = running(3, 3);
        finish_attempt(
            &mut task,
            AttemptOutcome::Failed(TaskError::new(ErrorCode::Unavailable, "x")),
            now(),
            0.5,
        );
        assert_eq!(task.state, TaskState::Failed);
        assert_eq!(
            task.error.as_ref().map(|error| error.code),
            Some(ErrorCode::Unavailable)
        );
    }

    #[test]
    fn non_retryable_codes_fail_at_once() {
        let mut task = running(1, 3);
        finish_attempt(
            &mut task,
            AttemptOutcome::Failed(TaskError::new(ErrorCode::InvalidArgument, "x")),
            now(),
            0.5,
        );
        assert_eq!(task.state, TaskState::Failed);
    }

    #[test]
    fn attempt_timeouts_are_retried() {
        let mut task = running(1, 2);
        finish_attempt(
            &mut task,
            AttemptOutcome::TimedOut {
                handler_stopped: true,
            },
            now(),
            0.5,
        );
        assert_eq!(task.state, TaskState::RetryWait);
        let error = task.error.expect("a timed-out attempt records its error");
        assert_eq!(error.code, ErrorCode::DeadlineExceeded);
        assert_eq!(error.reason, "ATTEMPT_TIMEOUT");
    }

    #[test]
    fn a_retry_past_the_deadline_fails_with_deadline_exceeded() {
        let mut task = running(1, 3);
        task.deadline = Some(now() + Duration::from_millis(500));
        finish_attempt(
            &mut task,
            AttemptOutcome::Failed(TaskError::new(ErrorCode::Unavailable, "x")),
            now(),
            0.5,
        );
        assert_eq!(task.state, TaskState::Failed);
        assert_eq!(
            task.error.map(|error| error.code),
            Some(ErrorCode::DeadlineExceeded)
        );
    }

    #[test]
    fn cancellation_records_whether_the_handler_stopped() {
        let mut task = running(1, 3);
        finish_attempt(
            &mut task,
            AttemptOutcome::Cancelled {
                reason: "user".into(),
                handler_stopped: true,
            },
            now(),
            0.5,
        );
        assert_eq!(task.state, TaskState::Cancelled);
        let error = task.error.expect("a cancelled task records why");
        assert_eq!(error.code, ErrorCode::Cancelled);
        assert_eq!(error.message, "cancelled: user");
        assert_eq!(error.metadata["handler_stopped"], "true");
    }

    #[test]
    fn handed_back_tasks_requeue_until_attempts_run_out() {
        let mut task = running(1, 2);
        finish_attempt(&mut task, AttemptOutcome::HandedBack, now(), 0.5);
        assert_eq!(task.state, TaskState::Queued);

        let mut task = running(2, 2);
        finish_attempt(&mut task, AttemptOutcome::HandedBack, now(), 0.5);
        assert_eq!(task.state, TaskState::Failed);
        assert_eq!(task.error.map(|error| error.code), Some(ErrorCode::Aborted));
    }

    #[test]
    fn a_lapsed_lease_fails_its_attempt_as_the_retry_policy_says() {
        let mut task = running(1, 3);
        task.lease = Some(crate::engine::task::Lease {
            owner: "worker-7".into(),
            token: 4,
            expires_at: now(),
            remote: None,
        });
        lease_lost(&mut task, now(), 0.5);
        assert_eq!(task.state, TaskState::RetryWait);
        let error = task.error.as_ref().expect("why");
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert_eq!(error.reason, "LEASE_EXPIRED");
        assert!(error.message.contains("worker-7"));
        assert_eq!(task.next_attempt_at, Some(now() + Duration::from_secs(1)));

        let mut last = running(3, 3);
        lease_lost(&mut last, now(), 0.5);
        assert_eq!(last.state, TaskState::Failed);
    }

    #[test]
    fn a_cancelled_task_never_runs_again() {
        for lost in [
            |task: &mut TaskRecord| lease_lost(task, now(), 0.5),
            |task: &mut TaskRecord| requeue_interrupted(task, "restart", now()),
            |task: &mut TaskRecord| release(task, now()),
        ] {
            let mut task = running(1, 3);
            task.cancel_requested = true;
            task.cancel_reason = "no longer needed".into();
            lost(&mut task);
            assert_eq!(task.state, TaskState::Cancelled);
            assert_eq!(
                task.error.map(|error| error.message),
                Some("cancelled: no longer needed".to_owned())
            );
        }
    }

    #[test]
    fn a_released_attempt_is_not_counted() {
        let mut task = running(2, 3);
        release(&mut task, now());
        assert_eq!(task.state, TaskState::Queued);
        assert_eq!(task.attempt, 1);
        assert_eq!(task.due_at(), Some(task.created_at));
    }

    #[test]
    fn a_retry_delay_the_error_asks_for_wins_over_the_backoff() {
        let mut task = running(1, 3);
        let mut error = TaskError::new(ErrorCode::Unavailable, "later");
        error.retry_after = Some(Duration::from_secs(42));
        finish_attempt(&mut task, AttemptOutcome::Failed(error), now(), 0.5);
        assert_eq!(task.next_attempt_at, Some(now() + Duration::from_secs(42)));
    }

    /// Found by the `worker_service_requests` fuzz target: a worker's
    /// RetryInfo of i64::MAX seconds overflowed `now + delay` and panicked.
    #[test]
    fn a_retry_delay_past_any_clock_waits_the_longest_backoff() {
        let mut task = running(1, 3);
        let mut error = TaskError::new(ErrorCode::Unavailable, "much later");
        error.retry_after = Some(Duration::from_secs(i64::MAX as u64));
        finish_attempt(&mut task, AttemptOutcome::Failed(error), now(), 0.5);
        assert_eq!(task.state, TaskState::RetryWait);
        assert_eq!(task.next_attempt_at, Some(now() + MAX_BACKOFF));
    }
}
