//! Task records and their vocabulary: ids, states, payloads, errors, and the
//! submit specification. Plain data shared by the engine and the stores; no I/O.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

pub use vow_handler::{ErrorCode, MalformedTaskId, Payload, PayloadData, TaskError, TaskId};

pub use crate::telemetry::propagation::{TraceContext, trace_id_of};

use super::retry::RetryPolicy;

/// Where a task is in its lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TaskState {
    Queued,
    Running,
    RetryWait,
    Succeeded,
    Failed,
    Cancelled,
}

impl TaskState {
    /// True for the states a task never leaves.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// True for the states an executor may claim.
    pub fn is_claimable(self) -> bool {
        matches!(self, Self::Queued | Self::RetryWait)
    }

    /// Lowercase name, for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::RetryWait => "retry_wait",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

/// The latest progress a handler reported.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub percent: f32,
    pub message: String,
    pub updated_at: SystemTime,
}

/// An executor's claim on a running task. Every lease change also bumps the
/// task's revision, so a compare-and-set on revision fences stale holders.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The node that holds it, or the remote worker's id.
    pub owner: String,
    /// Fencing token, increasing with every claim in the store.
    pub token: u64,
    pub expires_at: SystemTime,
    /// Set when a remote worker holds the lease.
    #[serde(default)]
    pub remote: Option<RemoteAttempt>,
}

impl Lease {
    /// Whether the lease still holds at `now`: an expired lease is lost
    /// even before a sweep reaps it.
    pub fn holds_at(&self, now: SystemTime) -> bool {
        self.expires_at > now
    }
}

/// What a remote worker's lease carries beyond the claim itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteAttempt {
    /// 32 random hex digits in the worker's token, so that a token cannot
    /// be made up from a task id and a fencing token.
    pub secret: String,
    /// How long each renewal extends the lease, as the worker asked.
    pub lease_duration: Duration,
    /// The earlier of the attempt timeout and the task deadline.
    pub attempt_deadline: Option<SystemTime>,
    /// W3C context of the attempt's span (a child of the submitter's),
    /// which the worker continues and whichever replica ends the attempt
    /// records.
    pub trace: TraceContext,
}

/// Bound of the whole task, as the submitter gave it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaskDeadline {
    At(SystemTime),
    After(Duration),
}

/// What a client asks for at submit, validated for shape but not yet against
/// the server's limits. Its digest identifies the request for idempotency.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SubmitSpec {
    pub kind: String,
    pub input: Payload,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub not_before: Option<SystemTime>,
    pub retry: RetryOverrides,
    pub attempt_timeout: Option<Duration>,
    pub deadline: Option<TaskDeadline>,
    pub retention: Option<Duration>,
    pub idempotency_key: Option<String>,
}

impl SubmitSpec {
    /// SHA-256 of the request, so a reused idempotency key with a different
    /// request can be told apart from a retry of the same one.
    pub fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        // serde_json maps are sorted, so equal specs serialize identically.
        let canonical = serde_json::to_vec(self).expect("a submit spec always serializes");
        hex::encode(Sha256::digest(canonical))
    }
}

/// Retry settings a submitter may override; `None` takes the server default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RetryOverrides {
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<Duration>,
    pub max_backoff: Option<Duration>,
    pub backoff_multiplier: Option<f64>,
    pub jitter: Option<f64>,
    pub non_retryable_reasons: Vec<String>,
}

/// A task as stored: the spec with defaults applied, its state and its result.
/// The embedded store writes it by field position: see `encode_record`
/// before reordering or retyping fields here or in the types it holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: TaskId,
    pub kind: String,
    pub state: TaskState,
    /// Shared, so copies of the record for updates and events stay cheap.
    pub input: Arc<Payload>,
    pub output: Option<Arc<Payload>>,
    pub error: Option<TaskError>,
    pub attempt: u32,
    pub retry: RetryPolicy,
    pub progress: Option<Progress>,
    pub labels: BTreeMap<String, String>,
    pub priority: i32,
    pub trace: TraceContext,
    pub revision: u64,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
    pub started_at: Option<SystemTime>,
    pub ended_at: Option<SystemTime>,
    /// When the task may next be claimed (QUEUED or RETRY_WAIT); `None` means now.
    pub next_attempt_at: Option<SystemTime>,
    pub expires_at: Option<SystemTime>,
    pub deadline: Option<SystemTime>,
    pub attempt_timeout: Option<Duration>,
    pub retention: Duration,
    pub idempotency_key: Option<String>,
    /// Digest of the submit request, compared on idempotent resubmits.
    pub request_fingerprint: String,
    pub cancel_requested: bool,
    /// Why a client asked to cancel, for the error message.
    pub cancel_reason: String,
    pub lease: Option<Lease>,
    /// Who runs the current attempt or ran the last: a worker's id, or the
    /// node of an in-process attempt.
    #[serde(default)]
    pub worker_id: String,
    /// The remote attempt that ended the task's last attempt, so that a
    /// worker repeating its Complete gets the same answer.
    #[serde(default)]
    pub completed_by: Option<Completion>,
    /// Records written before namespaces existed read as the default one.
    #[serde(default = "default_namespace")]
    pub namespace: Arc<str>,
}

fn default_namespace() -> Arc<str> {
    super::namespace::DEFAULT_NAMESPACE.into()
}

/// A remote Complete that was applied: its fencing token and a digest of
/// its outcome.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completion {
    pub token: u64,
    pub outcome_digest: String,
}

impl TaskRecord {
    /// True once the task can no longer change state.
    pub fn is_terminal(&self) -> bool {
        self.state.is_terminal()
    }

    /// When the task becomes claimable, if it is waiting to be claimed.
    pub fn due_at(&self) -> Option<SystemTime> {
        self.state
            .is_claimable()
            .then(|| self.next_attempt_at.unwrap_or(self.created_at))
    }

    /// The trace id of the submitter's context, if any.
    pub fn trace_id(&self) -> Option<&str> {
        self.trace.trace_id()
    }

    /// What the stores keep unique: the idempotency key in its namespace.
    pub fn idempotency_index_key(&self) -> Option<(Arc<str>, String)> {
        self.idempotency_key
            .clone()
            .map(|key| (self.namespace.clone(), key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_ids_round_trip_through_text() {
        let id = TaskId::generate();
        let text = id.to_string();
        assert_eq!(text.len(), 32);
        assert_eq!(text.parse::<TaskId>(), Ok(id));
    }

    #[test]
    fn malformed_task_ids_are_refused() {
        for text in [
            "",
            "xyz",
            &"A".repeat(32),
            &"0".repeat(31),
            &"0".repeat(33),
            "+0000000000000000000000000000001",
        ] {
            assert_eq!(text.parse::<TaskId>(), Err(MalformedTaskId), "{text:?}");
        }
    }

    #[test]
    fn fingerprints_depend_on_every_field() {
        let base = SubmitSpec {
            kind: "echo".into(),
            input: Payload::json(serde_json::json!({"a": 1, "b": 2})),
            ..SubmitSpec::default()
        };
        let reordered = SubmitSpec {
            input: Payload::json(serde_json::json!({"b": 2, "a": 1})),
            ..base.clone()
        };
        assert_eq!(base.fingerprint(), reordered.fingerprint());
        let other_priority = SubmitSpec {
            priority: 1,
            ..base.clone()
        };
        assert_ne!(base.fingerprint(), other_priority.fingerprint());
    }

    #[test]
    fn trace_ids_come_from_well_formed_traceparents_only() {
        let trace = |traceparent: &str| TraceContext {
            traceparent: traceparent.into(),
            ..TraceContext::default()
        };
        assert_eq!(
            trace("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").trace_id(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(
            trace("00-00000000000000000000000000000000-00f067aa0ba902b7-01").trace_id(),
            None
        );
        assert_eq!(trace("garbage").trace_id(), None);
    }
}
