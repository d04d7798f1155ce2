//! The task state machine as pure functions over a record: what each event
//! does to a task. The engine decides *when* they happen and stores the result.
//!
//! QUEUED -> RUNNING -> (RETRY_WAIT -> RUNNING)* -> SUCCEEDED | FAILED | CANCELLED

use std::time::SystemTime;

use super::task::{ErrorCode, Payload, TaskError, TaskRecord, TaskState};

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

/// Returns a task whose attempt was interrupted (shutdown, restart, lost
/// lease) to the queue, counting the attempt; fails it when none remain.
pub fn requeue_interrupted(task: &mut TaskRecord, why: &str, now: SystemTime) {
    task.lease = None;
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
    let next_attempt_at = now + task.retry.backoff(task.attempt, unit_random);
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
}
