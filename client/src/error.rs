//! The client's error type: an RPC status decoded into the rich error model
//! (ErrorInfo reason, RetryInfo delay, BadRequest violations).

use std::time::Duration;

use tonic::Code;
use tonic_types::StatusExt;

/// An error from a Vow call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not a valid URI or `host:port`.
    #[error("invalid endpoint {endpoint:?}: {reason}")]
    InvalidEndpoint { endpoint: String, reason: String },
    /// No connection could be made.
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// The server answered with an error status.
    #[error("{}: {message}", code_name(*.code))]
    Rpc {
        code: Code,
        message: String,
        /// `ErrorInfo.reason`, a stable UPPER_SNAKE_CASE identifier.
        reason: Option<String>,
        /// `ErrorInfo.metadata` (task_id, trace_id, …).
        metadata: std::collections::HashMap<String, String>,
        /// `RetryInfo.retry_delay`: when to try again.
        retry_after: Option<Duration>,
        /// `BadRequest` field violations as (field, description).
        violations: Vec<(String, String)>,
    },
}

impl Error {
    /// The gRPC code, if the server answered.
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Rpc { code, .. } => Some(*code),
            Self::Unreachable { .. } => Some(Code::Unavailable),
            Self::InvalidEndpoint { .. } => None,
        }
    }

    /// The `ErrorInfo.reason`, if any.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Rpc { reason, .. } => reason.as_deref(),
            _ => None,
        }
    }

    /// Whether a retry of the same call may succeed (AIP-194: only UNAVAILABLE).
    pub fn is_retryable(&self) -> bool {
        self.code() == Some(Code::Unavailable)
    }
}

impl From<tonic::Status> for Error {
    fn from(status: tonic::Status) -> Self {
        let details = status.get_error_details();
        let (reason, metadata) = details
            .error_info()
            .map(|info| (Some(info.reason.clone()), info.metadata.clone()))
            .unwrap_or_default();
        let retry_after = details.retry_info().and_then(|info| info.retry_delay);
        let violations = details
            .bad_request()
            .map(|bad_request| {
                bad_request
                    .field_violations
                    .iter()
                    .map(|violation| (violation.field.clone(), violation.description.clone()))
                    .collect()
            })
            .unwrap_or_default();
        Self::Rpc {
            code: status.code(),
            message: status.message().to_owned(),
            reason,
            metadata,
            retry_after,
            violations,
        }
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}
