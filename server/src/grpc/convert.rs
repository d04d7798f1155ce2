//! Conversions between the wire messages of `vow.v1` and the engine's domain
//! types. Inbound conversions validate shape (ids, enums, durations,
//! timestamps) and report every bad field at once.

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use prost::Message;
use vow_proto::v1 as pb;

use super::shared_encoding::SharedTaskEncodings;
use crate::{
    engine::watch::{AwaitMode, AwaitedMany, WatchEvent, WatchFilter},
    engine::{
        EngineError, FieldViolation,
        retry::RetryPolicy,
        task::{
            Payload, PayloadData, Progress, RetryOverrides, SubmitSpec, TaskDeadline, TaskError,
            TaskId, TaskRecord, TaskState,
        },
    },
    store::{ListCursor, ListQuery},
};

/// The `ErrorInfo.domain` of every error Vow produces.
pub const ERROR_DOMAIN: &str = "vow";
/// Type URLs of the error details a task error carries.
pub(super) const ERROR_INFO_TYPE: &str = "type.googleapis.com/google.rpc.ErrorInfo";
pub(super) const RETRY_INFO_TYPE: &str = "type.googleapis.com/google.rpc.RetryInfo";
const DEFAULT_PAGE_SIZE: usize = 100;
const MAX_PAGE_SIZE: i32 = 1_000;
const MAX_CANCEL_REASON_LEN: usize = 1_024;

/// Collects field violations while a request is converted.
#[derive(Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    pub fn add(&mut self, field: &str, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    /// `Ok(value)` when nothing was wrong.
    pub fn finish<T>(self, value: T) -> Result<T, EngineError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(EngineError::InvalidArgument(self.0))
        }
    }
}

/// Parses a task id field.
pub fn task_id(field: &str, text: &str) -> Result<TaskId, EngineError> {
    text.parse()
        .map_err(|error: crate::engine::task::MalformedTaskId| {
            EngineError::invalid(field, error.to_string())
        })
}

/// A non-negative protobuf duration as a std duration.
pub fn duration(
    field: &str,
    value: Option<prost_types::Duration>,
    violations: &mut Violations,
) -> Option<Duration> {
    let value = value?;
    if !(0..1_000_000_000).contains(&value.nanos) {
        violations.add(field, "nanos must be between 0 and 999,999,999");
        return None;
    }
    // Checked here: prost-types negates the seconds of a negative duration,
    // which overflows (and panics with overflow checks) for i64::MIN.
    if value.seconds < 0 {
        violations.add(field, "must not be negative");
        return None;
    }
    match Duration::try_from(value) {
        Ok(duration) => Some(duration),
        Err(_) => {
            violations.add(field, "must not be negative");
            None
        }
    }
}

pub(super) fn timestamp(
    field: &str,
    value: Option<prost_types::Timestamp>,
    violations: &mut Violations,
) -> Option<SystemTime> {
    let value = value?;
    if !(0..1_000_000_000).contains(&value.nanos) || value.seconds < 0 {
        violations.add(field, "must be a valid timestamp after 1970");
        return None;
    }
    match SystemTime::try_from(value) {
        Ok(time) => Some(time),
        Err(_) => {
            violations.add(field, "is out of range");
            None
        }
    }
}

pub(super) fn to_timestamp(time: SystemTime) -> prost_types::Timestamp {
    time.into()
}

pub(super) fn to_duration(duration: Duration) -> prost_types::Duration {
    duration.try_into().unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// Builds the engine's submit spec from a Submit request.
pub fn submit_spec(request: pb::SubmitRequest) -> Result<SubmitSpec, EngineError> {
    let mut violations = Violations::default();
    let input = match request.input {
        None => Payload::default(),
        Some(input) => payload("input", input, &mut violations),
    };
    let retry = request
        .retry
        .map(|retry| RetryOverrides {
            max_attempts: (retry.max_attempts > 0).then_some(retry.max_attempts),
            initial_backoff: duration(
                "retry.initial_backoff",
                retry.initial_backoff,
                &mut violations,
            ),
            max_backoff: duration("retry.max_backoff", retry.max_backoff, &mut violations),
            backoff_multiplier: retry.backoff_multiplier,
            jitter: retry.jitter,
            non_retryable_reasons: retry.non_retryable_reasons,
        })
        .unwrap_or_default();
    let deadline = match (request.deadline, request.ttl) {
        (Some(_), Some(_)) => {
            violations.add("ttl", "set at most one of deadline and ttl");
            None
        }
        (Some(deadline), None) => {
            timestamp("deadline", Some(deadline), &mut violations).map(TaskDeadline::At)
        }
        (None, ttl) => duration("ttl", ttl, &mut violations).map(TaskDeadline::After),
    };
    let spec = SubmitSpec {
        kind: request.kind,
        input,
        labels: request.labels.into_iter().collect(),
        priority: request.priority,
        not_before: timestamp("not_before", request.not_before, &mut violations),
        retry,
        attempt_timeout: duration("attempt_timeout", request.attempt_timeout, &mut violations),
        deadline,
        retention: duration("retention", request.retention, &mut violations),
        idempotency_key: Some(request.idempotency_key).filter(|key| !key.is_empty()),
    };
    violations.finish(spec)
}

/// A Run request carries exactly the fields of a Submit request.
pub fn run_as_submit(request: pb::RunRequest) -> pb::SubmitRequest {
    pb::SubmitRequest {
        kind: request.kind,
        input: request.input,
        labels: request.labels,
        priority: request.priority,
        not_before: request.not_before,
        retry: request.retry,
        attempt_timeout: request.attempt_timeout,
        deadline: request.deadline,
        ttl: request.ttl,
        retention: request.retention,
        idempotency_key: request.idempotency_key,
    }
}

pub(super) fn payload(field: &str, input: pb::Payload, violations: &mut Violations) -> Payload {
    let data = match input.data {
        None => PayloadData::Json(serde_json::Value::Null),
        Some(pb::payload::Data::Binary(bytes)) => PayloadData::Binary(bytes),
        Some(pb::payload::Data::Json(value)) => match vow_proto::json::from_value(&value) {
            Ok(json) => PayloadData::Json(json),
            Err(problem) => {
                violations.add(&format!("{field}.json"), problem.to_string());
                PayloadData::Json(serde_json::Value::Null)
            }
        },
    };
    Payload {
        data,
        content_type: input.content_type,
    }
}

pub(super) fn payload_to_proto(payload: &Payload) -> pb::Payload {
    let data = match &payload.data {
        PayloadData::Json(json) => pb::payload::Data::Json(vow_proto::json::to_value(json)),
        PayloadData::Binary(bytes) => pb::payload::Data::Binary(bytes.clone()),
    };
    pb::Payload {
        data: Some(data),
        content_type: payload.content_type.clone(),
    }
}

/// A task record as the wire shows it.
pub fn task_to_proto(task: &TaskRecord) -> pb::Task {
    pb::Task {
        id: task.id.to_string(),
        kind: task.kind.clone(),
        state: state_to_proto(task.state) as i32,
        input: Some(payload_to_proto(&task.input)),
        output: task.output.as_deref().map(payload_to_proto),
        error: task
            .error
            .as_ref()
            .map(|error| error_to_status(error, task.trace_id())),
        attempt: task.attempt,
        max_attempts: task.retry.max_attempts,
        progress: task.progress.as_ref().map(progress_to_proto),
        labels: task
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        priority: task.priority,
        trace_id: task.trace_id().unwrap_or_default().to_owned(),
        revision: task.revision,
        create_time: Some(to_timestamp(task.created_at)),
        start_time: task.started_at.map(to_timestamp),
        end_time: task.ended_at.map(to_timestamp),
        next_attempt_time: task.next_attempt_at.map(to_timestamp),
        expire_time: task.expires_at.map(to_timestamp),
        deadline: task.deadline.map(to_timestamp),
        attempt_timeout: task.attempt_timeout.map(to_duration),
        retry: Some(retry_to_proto(&task.retry)),
        retention: Some(to_duration(task.retention)),
        idempotency_key: task.idempotency_key.clone().unwrap_or_default(),
        cancel_requested: task.cancel_requested,
        update_time: Some(to_timestamp(task.updated_at)),
        worker_id: task.worker_id.clone(),
        namespace: task.namespace.to_string(),
    }
}

pub(super) fn progress_to_proto(progress: &Progress) -> pb::Progress {
    pb::Progress {
        percent: progress.percent,
        message: progress.message.clone(),
        update_time: Some(to_timestamp(progress.updated_at)),
    }
}

fn retry_to_proto(retry: &RetryPolicy) -> pb::RetryPolicy {
    pb::RetryPolicy {
        max_attempts: retry.max_attempts,
        initial_backoff: Some(to_duration(retry.initial_backoff)),
        max_backoff: Some(to_duration(retry.max_backoff)),
        backoff_multiplier: Some(retry.backoff_multiplier),
        jitter: Some(retry.jitter),
        non_retryable_reasons: retry.non_retryable_reasons.clone(),
    }
}

/// A task error as a `google.rpc.Status` carrying an `ErrorInfo`.
fn error_to_status(error: &TaskError, trace_id: Option<&str>) -> tonic_types::pb::Status {
    let mut metadata: std::collections::HashMap<String, String> = error
        .metadata
        .iter()
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    if let Some(trace_id) = trace_id {
        metadata.insert("trace_id".into(), trace_id.to_owned());
    }
    let info = tonic_types::pb::ErrorInfo {
        reason: error.reason.clone(),
        domain: ERROR_DOMAIN.into(),
        metadata,
    };
    let mut details = vec![prost_types::Any {
        type_url: ERROR_INFO_TYPE.into(),
        value: info.encode_to_vec(),
    }];
    if let Some(delay) = error.retry_after {
        let retry = tonic_types::pb::RetryInfo {
            retry_delay: Some(to_duration(delay)),
        };
        details.push(prost_types::Any {
            type_url: RETRY_INFO_TYPE.into(),
            value: retry.encode_to_vec(),
        });
    }
    tonic_types::pb::Status {
        code: error.code.as_i32(),
        message: error.message.clone(),
        details,
    }
}

pub fn state_to_proto(state: TaskState) -> pb::TaskState {
    match state {
        TaskState::Queued => pb::TaskState::Queued,
        TaskState::Running => pb::TaskState::Running,
        TaskState::RetryWait => pb::TaskState::RetryWait,
        TaskState::Succeeded => pb::TaskState::Succeeded,
        TaskState::Failed => pb::TaskState::Failed,
        TaskState::Cancelled => pb::TaskState::Cancelled,
    }
}

fn state_from_proto(value: i32) -> Option<TaskState> {
    match pb::TaskState::try_from(value).ok()? {
        pb::TaskState::Unspecified => None,
        pb::TaskState::Queued => Some(TaskState::Queued),
        pb::TaskState::Running => Some(TaskState::Running),
        pb::TaskState::RetryWait => Some(TaskState::RetryWait),
        pb::TaskState::Succeeded => Some(TaskState::Succeeded),
        pb::TaskState::Failed => Some(TaskState::Failed),
        pb::TaskState::Cancelled => Some(TaskState::Cancelled),
    }
}

/// Builds a store query from a List request.
pub fn list_query(request: pb::ListRequest) -> Result<ListQuery, EngineError> {
    let mut violations = Violations::default();
    let page_size = match request.page_size {
        0 => DEFAULT_PAGE_SIZE,
        size if (1..=MAX_PAGE_SIZE).contains(&size) => size as usize,
        _ => {
            violations.add(
                "page_size",
                format!("must be between 0 and {MAX_PAGE_SIZE}"),
            );
            DEFAULT_PAGE_SIZE
        }
    };
    let after = match request.page_token.as_str() {
        "" => None,
        token => {
            let cursor = decode_page_token(token);
            if cursor.is_none() {
                violations.add("page_token", "is not a token this server issued");
            }
            cursor
        }
    };
    let mut states = Vec::with_capacity(request.states.len());
    for value in request.states {
        match state_from_proto(value) {
            Some(state) => states.push(state),
            None => violations.add("states", format!("{value} is not a task state")),
        }
    }
    let query = ListQuery {
        namespace: None,
        states,
        kinds: request.kinds,
        labels: request.labels.into_iter().collect::<BTreeMap<_, _>>(),
        page_size,
        after,
    };
    violations.finish(query)
}

/// An opaque-looking but stable page token: creation time and id of the last
/// task of the previous page.
pub fn encode_page_token(cursor: ListCursor) -> String {
    let micros = cursor
        .created_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros();
    format!("v1.{micros:x}.{}", cursor.id)
}

fn decode_page_token(token: &str) -> Option<ListCursor> {
    let rest = token.strip_prefix("v1.")?;
    let (micros, id) = rest.split_once('.')?;
    let micros = u64::from_str_radix(micros, 16).ok()?;
    Some(ListCursor {
        created_at: SystemTime::UNIX_EPOCH + Duration::from_micros(micros),
        id: id.parse().ok()?,
    })
}

/// A watch filter from the filter fields of a Watch request.
pub fn watch_filter(request: &pb::WatchRequest) -> Result<WatchFilter, EngineError> {
    let mut violations = Violations::default();
    let mut states = Vec::with_capacity(request.states.len());
    for &value in &request.states {
        match state_from_proto(value) {
            Some(state) => states.push(state),
            None => violations.add("states", format!("{value} is not a task state")),
        }
    }
    if request.after_revision != 0 {
        violations.add("after_revision", "applies to a single-task watch; set id");
    }
    let filter = WatchFilter {
        kinds: request.kinds.clone(),
        labels: request
            .labels
            .iter()
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect(),
        states,
    };
    violations.finish(filter)
}

/// The ids and mode of an AwaitMany request.
pub fn await_many(
    request: &pb::AwaitManyRequest,
    limit: usize,
) -> Result<(Vec<TaskId>, AwaitMode), EngineError> {
    let mut violations = Violations::default();
    if request.ids.is_empty() {
        violations.add("ids", "name at least one task");
    }
    if request.ids.len() > limit {
        violations.add("ids", format!("at most {limit} ids per call"));
    }
    let mut ids = Vec::with_capacity(request.ids.len());
    for (index, text) in request.ids.iter().enumerate() {
        match text.parse::<TaskId>() {
            Ok(id) => ids.push(id),
            Err(error) => violations.add(&format!("ids[{index}]"), error.to_string()),
        }
    }
    let mode = match pb::AwaitMode::try_from(request.mode) {
        Ok(pb::AwaitMode::Unspecified | pb::AwaitMode::All) => AwaitMode::All,
        Ok(pb::AwaitMode::Any) => AwaitMode::Any,
        Err(_) => {
            violations.add("mode", format!("{} is not an await mode", request.mode));
            AwaitMode::All
        }
    };
    violations.finish((ids, mode))
}

/// The response of an AwaitMany, with its summary.
pub fn await_many_response(awaited: AwaitedMany) -> pb::AwaitManyResponse {
    let mut summary = pb::AwaitManySummary {
        unfinished: awaited.unfinished.len() as u32,
        not_found: awaited.not_found.len() as u32,
        ..Default::default()
    };
    for task in &awaited.finished {
        match task.state {
            TaskState::Succeeded => summary.succeeded += 1,
            TaskState::Failed => {
                summary.failed += 1;
                let code = task
                    .error
                    .as_ref()
                    .map_or("UNKNOWN", |error| error.code.as_str());
                *summary.failed_by_code.entry(code.to_owned()).or_default() += 1;
            }
            TaskState::Cancelled => summary.cancelled += 1,
            TaskState::Queued | TaskState::Running | TaskState::RetryWait => {}
        }
    }
    pb::AwaitManyResponse {
        done: awaited.done,
        finished: awaited
            .finished
            .iter()
            .map(|task| task_to_proto(task))
            .collect(),
        not_found_ids: awaited.not_found.iter().map(ToString::to_string).collect(),
        summary: Some(summary),
    }
}

/// A watch event as a Watch message, its task encoded once for all streams.
pub fn watch_response(event: WatchEvent, encodings: &SharedTaskEncodings) -> pb::WatchResponse {
    let (event_type, task) = match event {
        WatchEvent::Snapshot(task) => (pb::WatchEventType::Snapshot, Some(task)),
        WatchEvent::Change(task) => (pb::WatchEventType::Change, Some(task)),
        WatchEvent::Resync(task) => (pb::WatchEventType::Resync, task),
        WatchEvent::Heartbeat => (pb::WatchEventType::Heartbeat, None),
    };
    match task {
        Some(task) => pb::WatchResponse::with_encoded_task(event_type, encodings.encode(&task)),
        None => {
            let mut message = pb::WatchResponse::default();
            message.set_type(event_type);
            message
        }
    }
}

/// Checks a cancel reason.
pub fn cancel_reason(reason: String) -> Result<String, EngineError> {
    if reason.len() > MAX_CANCEL_REASON_LEN {
        return Err(EngineError::invalid(
            "reason",
            format!("must be at most {MAX_CANCEL_REASON_LEN} bytes"),
        ));
    }
    Ok(reason)
}

/// The optional `timeout` of an Await request.
pub fn await_timeout(
    value: Option<prost_types::Duration>,
) -> Result<Option<Duration>, EngineError> {
    let mut violations = Violations::default();
    let timeout = duration("timeout", value, &mut violations);
    violations.finish(timeout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        let cursor = ListCursor {
            created_at: SystemTime::UNIX_EPOCH + Duration::from_micros(1_234_567),
            id: TaskId::generate(),
        };
        assert_eq!(decode_page_token(&encode_page_token(cursor)), Some(cursor));
        for garbage in [
            "",
            "v1.",
            "v1.zz.00",
            "v2.1.00000000000000000000000000000001",
        ] {
            assert_eq!(decode_page_token(garbage), None, "{garbage:?}");
        }
    }

    #[test]
    fn negative_durations_are_field_violations() {
        let mut violations = Violations::default();
        let parsed = duration(
            "ttl",
            Some(prost_types::Duration {
                seconds: -1,
                nanos: 0,
            }),
            &mut violations,
        );
        assert_eq!(parsed, None);
        let error = violations
            .finish(())
            .expect_err("a negative duration is invalid");
        assert!(matches!(error, EngineError::InvalidArgument(ref v) if v[0].field == "ttl"));
    }

    /// Found by the `worker_service_requests` fuzz target: a RetryInfo of
    /// i64::MIN seconds overflowed inside prost-types' conversion.
    #[test]
    fn the_most_negative_duration_is_a_field_violation() {
        let mut violations = Violations::default();
        let parsed = duration(
            "retry_delay",
            Some(prost_types::Duration {
                seconds: i64::MIN,
                nanos: 0,
            }),
            &mut violations,
        );
        assert_eq!(parsed, None);
        assert!(violations.finish(()).is_err());
    }

    #[test]
    fn deadline_and_ttl_are_mutually_exclusive() {
        let request = pb::SubmitRequest {
            kind: "echo".into(),
            deadline: Some(prost_types::Timestamp {
                seconds: 4_000_000_000,
                nanos: 0,
            }),
            ttl: Some(prost_types::Duration {
                seconds: 5,
                nanos: 0,
            }),
            ..Default::default()
        };
        assert!(submit_spec(request).is_err());
    }
}
