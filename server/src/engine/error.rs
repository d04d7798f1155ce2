//! Errors of engine operations, in domain terms. The gRPC layer maps each to
//! a status code with rich details in one place.

use std::time::Duration;

use super::task::TaskId;
use crate::store::StoreError;

/// One invalid field of a request, named as in the public API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    pub field: String,
    pub description: String,
}

impl FieldViolation {
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

/// Why an engine operation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid request: {}", summarize(.0))]
    InvalidArgument(Vec<FieldViolation>),
    #[error("task {0} not found")]
    NotFound(TaskId),
    #[error("idempotency key {key:?} was already used for a different request (task {existing})")]
    IdempotencyConflict { key: String, existing: TaskId },
    #[error("{field} is {size_bytes} bytes, over the limit of {limit_bytes} bytes")]
    TooLarge {
        field: &'static str,
        size_bytes: usize,
        limit_bytes: usize,
    },
    #[error("the queue is full ({limit} tasks waiting); retry later")]
    QueueFull { limit: usize, retry_after: Duration },
    /// A quota or a listener limit was reached.
    #[error("{description}")]
    QuotaExceeded {
        reason: &'static str,
        /// Whose quota, as `QuotaFailure` names it (`namespace:team-a`).
        subject: String,
        description: String,
        retry_after: Duration,
    },
    #[error("{message}")]
    FailedPrecondition {
        reason: &'static str,
        message: String,
    },
    #[error("the server is shutting down")]
    ShuttingDown,
    #[error("storage is unavailable")]
    StorageUnavailable(#[source] StoreError),
    #[error("internal storage error")]
    StorageFailed(#[source] StoreError),
}

impl EngineError {
    /// A single-field validation error.
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument(vec![FieldViolation::new(field, description)])
    }

    /// Stable `ErrorInfo.reason` of this error.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument(_) => "INVALID_REQUEST",
            Self::NotFound(_) => "TASK_NOT_FOUND",
            Self::IdempotencyConflict { .. } => "IDEMPOTENCY_KEY_REUSED",
            Self::TooLarge { .. } => "PAYLOAD_TOO_LARGE",
            Self::QueueFull { .. } => "QUEUE_FULL",
            Self::QuotaExceeded { reason, .. } => reason,
            Self::FailedPrecondition { reason, .. } => reason,
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::StorageUnavailable(_) => "STORAGE_UNAVAILABLE",
            Self::StorageFailed(_) => "STORAGE_FAILED",
        }
    }
}

impl From<StoreError> for EngineError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(_) => Self::StorageUnavailable(error),
            _ => Self::StorageFailed(error),
        }
    }
}

fn summarize(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(|violation| format!("{}: {}", violation.field, violation.description))
        .collect::<Vec<_>>()
        .join("; ")
}
