//! The one place where engine errors become gRPC statuses, with the rich
//! error model: an `ErrorInfo` on every error, `BadRequest` field violations
//! for invalid input, `RetryInfo` when the client should come back later.

use std::collections::HashMap;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::convert::ERROR_DOMAIN;
use crate::engine::EngineError;

/// Maps an engine error to a status; `trace_id` (if the call had one) goes
/// into the `ErrorInfo` metadata.
pub fn engine_error_status(error: EngineError, trace_id: Option<&str>) -> Status {
    let mut metadata = HashMap::new();
    if let Some(trace_id) = trace_id {
        metadata.insert("trace_id".to_owned(), trace_id.to_owned());
    }
    let code = match &error {
        EngineError::InvalidArgument(_) => Code::InvalidArgument,
        EngineError::NotFound(id) => {
            metadata.insert("task_id".into(), id.to_string());
            Code::NotFound
        }
        EngineError::IdempotencyConflict { existing, .. } => {
            metadata.insert("task_id".into(), existing.to_string());
            Code::AlreadyExists
        }
        EngineError::TooLarge {
            field,
            size_bytes,
            limit_bytes,
        } => {
            metadata.insert("field".into(), (*field).to_owned());
            metadata.insert("size_bytes".into(), size_bytes.to_string());
            metadata.insert("limit_bytes".into(), limit_bytes.to_string());
            // gRPC's code for a message over a size limit; the field says which part.
            Code::ResourceExhausted
        }
        EngineError::QueueFull { .. } | EngineError::QuotaExceeded { .. } => {
            Code::ResourceExhausted
        }
        EngineError::FailedPrecondition { .. } => Code::FailedPrecondition,
        EngineError::ShuttingDown | EngineError::StorageUnavailable(_) => Code::Unavailable,
        EngineError::StorageFailed(_) => Code::Internal,
    };
    if matches!(
        error,
        EngineError::StorageFailed(_) | EngineError::StorageUnavailable(_)
    ) {
        // The client gets a plain message; the cause stays in the server log.
        if let Some(suppressed) = crate::telemetry::throttle::admit("rpc.storage_error") {
            tracing::error!(error = ?error, suppressed, "storage error");
        }
    }
    let mut details = ErrorDetails::with_error_info(error.reason(), ERROR_DOMAIN, metadata);
    match &error {
        EngineError::InvalidArgument(violations) => {
            for violation in violations {
                details.add_bad_request_violation(
                    violation.field.clone(),
                    violation.description.clone(),
                );
            }
        }
        EngineError::TooLarge { field, .. } => {
            details.add_bad_request_violation(*field, error.to_string());
        }
        EngineError::QueueFull { retry_after, .. } => {
            details.set_retry_info(Some(*retry_after));
        }
        EngineError::QuotaExceeded {
            subject,
            description,
            retry_after,
            ..
        } => {
            details.set_retry_info(Some(*retry_after));
            details.add_quota_failure_violation(subject.clone(), description.clone());
        }
        _ => {}
    }
    Status::with_error_details(code, error.to_string(), details)
}
