//! Conversions of `WorkerService` messages: poll requests, leases, progress
//! and the outcome a worker reports (a `google.rpc.Status` becomes a task
//! error, its `ErrorInfo` and `RetryInfo` included).

use std::time::Duration;

use prost::Message;
use vow_proto::v1 as pb;

use super::convert::{self, ERROR_INFO_TYPE, RETRY_INFO_TYPE, Violations, payload, to_timestamp};
use crate::engine::{
    EngineError,
    task::{ErrorCode, TaskError},
    workers::{GrantedLease, PollSpec, RemoteOutcome},
};

/// Longest error message a worker may report.
const MAX_ERROR_MESSAGE_LEN: usize = 16 * 1024;
/// Longest progress message.
const MAX_PROGRESS_MESSAGE_LEN: usize = 1024;
/// Longest release reason.
const MAX_REASON_LEN: usize = 1024;
/// Most tokens one Release may name.
const MAX_RELEASE_TOKENS: usize = 1024;

/// The engine's view of a Poll; `wait` is the bound the call allows.
pub fn poll_spec(
    request: pb::PollRequest,
    wait: Duration,
    scope: crate::engine::Scope,
) -> Result<PollSpec, EngineError> {
    let mut violations = Violations::default();
    let lease_duration =
        convert::duration("lease_duration", request.lease_duration, &mut violations);
    violations.finish(PollSpec {
        scope,
        kinds: request.kinds,
        worker_id: request.worker_id,
        max_tasks: request.max_tasks as usize,
        lease_duration,
        wait,
    })
}

/// A granted lease as the wire shows it.
pub fn lease_to_proto(lease: GrantedLease) -> pb::Lease {
    pb::Lease {
        task: Some(convert::task_to_proto(&lease.task)),
        token: lease.token,
        expire_time: Some(to_timestamp(lease.expires_at)),
        attempt_deadline: lease.attempt_deadline.map(to_timestamp),
        traceparent: lease.trace.traceparent,
        tracestate: lease.trace.tracestate,
    }
}

/// The progress of a heartbeat, if it carries one.
pub fn progress(progress: Option<pb::Progress>) -> Result<Option<(f32, String)>, EngineError> {
    let Some(progress) = progress else {
        return Ok(None);
    };
    if progress.message.len() > MAX_PROGRESS_MESSAGE_LEN {
        return Err(EngineError::invalid(
            "progress.message",
            format!("must be at most {MAX_PROGRESS_MESSAGE_LEN} bytes"),
        ));
    }
    if !progress.percent.is_finite() || !(0.0..=100.0).contains(&progress.percent) {
        return Err(EngineError::invalid(
            "progress.percent",
            "must be from 0 to 100",
        ));
    }
    Ok(Some((progress.percent, progress.message)))
}

/// The outcome of a Complete: exactly one of an output and an error.
pub fn outcome(
    outcome: Option<pb::complete_request::Outcome>,
) -> Result<RemoteOutcome, EngineError> {
    match outcome {
        None => Err(EngineError::invalid(
            "outcome",
            "set exactly one of output and error",
        )),
        Some(pb::complete_request::Outcome::Output(output)) => {
            let mut violations = Violations::default();
            let output = payload("output", output, &mut violations);
            violations.finish(RemoteOutcome::Output(output))
        }
        Some(pb::complete_request::Outcome::Error(status)) => {
            task_error(status).map(RemoteOutcome::Error)
        }
    }
}

/// A worker's `google.rpc.Status` as a task error: the code decides the
/// retry, an `ErrorInfo` gives the reason and metadata, a `RetryInfo` the
/// delay before the next attempt.
fn task_error(status: tonic_types::pb::Status) -> Result<TaskError, EngineError> {
    let mut violations = Violations::default();
    let code = ErrorCode::from_i32(status.code);
    if code.is_none() {
        violations.add(
            "error.code",
            "must be a google.rpc.Code from 1 (CANCELLED) to 16 (UNAUTHENTICATED)",
        );
    }
    if status.message.len() > MAX_ERROR_MESSAGE_LEN {
        violations.add(
            "error.message",
            format!("must be at most {MAX_ERROR_MESSAGE_LEN} bytes"),
        );
    }
    let mut error = TaskError::new(code.unwrap_or(ErrorCode::Unknown), status.message);
    for (index, detail) in status.details.iter().enumerate() {
        match detail.type_url.as_str() {
            ERROR_INFO_TYPE => match tonic_types::pb::ErrorInfo::decode(detail.value.as_slice()) {
                Ok(info) => {
                    if !info.reason.is_empty() {
                        error.reason = info.reason;
                    }
                    error.metadata.extend(info.metadata);
                }
                Err(_) => violations.add(&format!("error.details[{index}]"), "is not an ErrorInfo"),
            },
            RETRY_INFO_TYPE => match tonic_types::pb::RetryInfo::decode(detail.value.as_slice()) {
                Ok(retry) => {
                    error.retry_after = convert::duration(
                        &format!("error.details[{index}].retry_delay"),
                        retry.retry_delay,
                        &mut violations,
                    );
                }
                Err(_) => violations.add(&format!("error.details[{index}]"), "is not a RetryInfo"),
            },
            // Other details are the worker's own; the task keeps what it understands.
            _ => {}
        }
    }
    violations.finish(error)
}

/// The tokens and reason of a Release.
pub fn release(request: pb::ReleaseRequest) -> Result<(Vec<String>, String), EngineError> {
    let mut violations = Violations::default();
    if request.tokens.len() > MAX_RELEASE_TOKENS {
        violations.add("tokens", format!("at most {MAX_RELEASE_TOKENS} per call"));
    }
    if request.reason.len() > MAX_REASON_LEN {
        violations.add("reason", format!("must be at most {MAX_REASON_LEN} bytes"));
    }
    violations.finish((request.tokens, request.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_keeps_its_reason_and_retry_delay() {
        let info = tonic_types::pb::ErrorInfo {
            reason: "THUMBNAIL_SERVICE_DOWN".into(),
            domain: "worker".into(),
            metadata: [("host".to_owned(), "a".to_owned())].into(),
        };
        let retry = tonic_types::pb::RetryInfo {
            retry_delay: Some(prost_types::Duration {
                seconds: 7,
                nanos: 0,
            }),
        };
        let status = tonic_types::pb::Status {
            code: 14,
            message: "down".into(),
            details: vec![
                prost_types::Any {
                    type_url: ERROR_INFO_TYPE.into(),
                    value: info.encode_to_vec(),
                },
                prost_types::Any {
                    type_url: RETRY_INFO_TYPE.into(),
                    value: retry.encode_to_vec(),
                },
            ],
        };
        let error = task_error(status).expect("valid");
        assert_eq!(error.code, ErrorCode::Unavailable);
        assert_eq!(error.reason, "THUMBNAIL_SERVICE_DOWN");
        assert_eq!(error.metadata["host"], "a");
        assert_eq!(error.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn an_ok_or_unknown_code_is_refused() {
        for code in [0, 17, -1] {
            let status = tonic_types::pb::Status {
                code,
                ..Default::default()
            };
            assert!(task_error(status).is_err(), "code {code}");
        }
        assert!(outcome(None).is_err());
    }
}
