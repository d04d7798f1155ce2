//! The client's error type: an RPC status decoded into the rich error model
//! (ErrorInfo reason, RetryInfo delay, BadRequest violations).

use std::{collections::HashMap, time::Duration};

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
    /// The TLS handshake was refused: the server's certificate is not trusted
    /// or does not name the host, or the server refused the client's. Trying
    /// again does not help; the TLS settings must change.
    #[error("TLS handshake with {endpoint} failed: {reason}")]
    TlsRejected { endpoint: String, reason: String },
    /// The server answered with an error status.
    #[error("{}: {}", code_name(.0.code), .0.message)]
    Rpc(Box<RpcError>),
}

/// An error status with its rich details.
#[derive(Debug, Clone)]
pub struct RpcError {
    pub code: Code,
    pub message: String,
    /// `ErrorInfo.reason`, a stable UPPER_SNAKE_CASE identifier.
    pub reason: Option<String>,
    /// `ErrorInfo.metadata` (task_id, trace_id, …).
    pub metadata: HashMap<String, String>,
    /// `RetryInfo.retry_delay`: when to try again.
    pub retry_after: Option<Duration>,
    /// `BadRequest` field violations as (field, description).
    pub violations: Vec<(String, String)>,
}

impl Error {
    /// The gRPC code: the server's, or UNAVAILABLE when it could not be
    /// reached (also through TLS, as gRPC itself reports a failed handshake).
    pub fn code(&self) -> Option<Code> {
        match self {
            Self::Rpc(rpc) => Some(rpc.code),
            Self::Unreachable { .. } | Self::TlsRejected { .. } => Some(Code::Unavailable),
            Self::InvalidEndpoint { .. } => None,
        }
    }

    /// The rich details of a server error.
    pub fn rpc(&self) -> Option<&RpcError> {
        match self {
            Self::Rpc(rpc) => Some(rpc),
            _ => None,
        }
    }

    /// The `ErrorInfo.reason`, if any.
    pub fn reason(&self) -> Option<&str> {
        self.rpc().and_then(|rpc| rpc.reason.as_deref())
    }

    /// The `RetryInfo` delay, if the server gave one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.rpc().and_then(|rpc| rpc.retry_after)
    }

    /// The `BadRequest` field violations as (field, description).
    pub fn violations(&self) -> &[(String, String)] {
        self.rpc().map_or(&[], |rpc| rpc.violations.as_slice())
    }

    /// Whether a retry of the same call may succeed (AIP-194: only
    /// UNAVAILABLE, and not a refused TLS handshake).
    pub fn is_retryable(&self) -> bool {
        !matches!(self, Self::TlsRejected { .. }) && self.code() == Some(Code::Unavailable)
    }

    /// Whether a call that is safe to repeat (a read, a wait, a resumed
    /// Watch, a keyed Submit, Cancel, Delete) should be sent again:
    /// UNAVAILABLE, or what proxies make of a stream reset by a server going
    /// away (nginx answers CANCELLED or INTERNAL, tonic UNKNOWN for a broken
    /// connection). Such a call may have been served already, which is why
    /// only calls whose repetition changes nothing take this wider rule.
    pub fn is_transient(&self) -> bool {
        self.is_retryable()
            || matches!(
                self,
                Self::Rpc(rpc) if matches!(rpc.code, Code::Cancelled | Code::Internal | Code::Unknown)
            )
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
        Self::Rpc(Box::new(RpcError {
            code: status.code(),
            message: status.message().to_owned(),
            reason,
            metadata,
            retry_after,
            violations,
        }))
    }
}

fn code_name(code: Code) -> String {
    format!("{code:?}")
}
