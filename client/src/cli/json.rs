//! The JSON shape of `--output json`: one object per line, snake_case field
//! names as in the proto, states without their `TASK_STATE_` prefix, times
//! in RFC 3339, payloads as on the wire (`{"json": …}` or base64 `{"binary": …}`).

use std::time::SystemTime;

use base64::Engine as _;
use prost::Message;
use serde_json::{Map, Value, json};
use vow_client::{Error, Task, TaskState, proto, value_to_json};

/// A task as one JSON object.
pub fn task(task: &Task) -> Value {
    json!({
        "id": task.id,
        "kind": task.kind,
        "state": state_name(task.state()),
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "priority": task.priority,
        "labels": task.labels,
        "input": payload(task.input.as_ref()),
        "output": payload(task.output.as_ref()),
        "error": task.error.as_ref().map(task_error),
        "progress": task.progress.as_ref().map(|progress| json!({
            "percent": progress.percent,
            "message": progress.message,
        })),
        "cancel_requested": task.cancel_requested,
        "trace_id": task.trace_id,
        "revision": task.revision,
        "idempotency_key": task.idempotency_key,
        "namespace": task.namespace,
        "worker_id": task.worker_id,
        "create_time": timestamp(task.create_time.as_ref()),
        "start_time": timestamp(task.start_time.as_ref()),
        "end_time": timestamp(task.end_time.as_ref()),
        "next_attempt_time": timestamp(task.next_attempt_time.as_ref()),
        "expire_time": timestamp(task.expire_time.as_ref()),
        "deadline": timestamp(task.deadline.as_ref()),
    })
}

/// A failed command as `{"error": {…}}`.
pub fn error(code: &str, message: &str, error: Option<&Error>) -> Value {
    let mut fields = Map::new();
    fields.insert("code".into(), code.into());
    fields.insert("message".into(), message.into());
    if let Some(crate_error_rpc) = error.and_then(Error::rpc) {
        let vow_client::RpcError {
            reason,
            metadata,
            violations,
            retry_after,
            ..
        } = crate_error_rpc;
        fields.insert("reason".into(), json!(reason));
        fields.insert("metadata".into(), json!(metadata));
        let violations: Vec<_> = violations
            .iter()
            .map(|(field, description)| json!({"field": field, "description": description}))
            .collect();
        fields.insert("violations".into(), violations.into());
        fields.insert(
            "retry_after_ms".into(),
            json!(retry_after.map(|delay| delay.as_millis() as u64)),
        );
    }
    json!({ "error": fields })
}

/// `SUCCEEDED`, `RETRY_WAIT`, …: the enum name without its prefix.
pub fn state_name(state: TaskState) -> &'static str {
    let name = state.as_str_name();
    name.strip_prefix("TASK_STATE_").unwrap_or(name)
}

/// The canonical name of a gRPC code, as in `google.rpc.Code` (`NOT_FOUND`).
pub fn code_name(code: i32) -> String {
    let name = format!("{:?}", tonic::Code::from_i32(code));
    // `NotFound` -> `NOT_FOUND`
    let mut snake = String::with_capacity(name.len() + 4);
    for (index, character) in name.chars().enumerate() {
        if character.is_uppercase() && index > 0 {
            snake.push('_');
        }
        snake.push(character.to_ascii_uppercase());
    }
    snake
}

/// The `ErrorInfo` inside a task's error, if any: (reason, metadata).
pub fn error_info(
    status: &tonic_types::pb::Status,
) -> Option<(String, std::collections::HashMap<String, String>)> {
    status
        .details
        .iter()
        .find(|any| any.type_url.ends_with("google.rpc.ErrorInfo"))
        .and_then(|any| tonic_types::pb::ErrorInfo::decode(any.value.as_slice()).ok())
        .map(|info| (info.reason, info.metadata))
}

fn task_error(status: &tonic_types::pb::Status) -> Value {
    let (reason, metadata) = error_info(status).unzip();
    json!({
        "code": code_name(status.code),
        "message": status.message,
        "reason": reason,
        "metadata": metadata,
    })
}

fn payload(payload: Option<&proto::Payload>) -> Value {
    let Some(payload) = payload else {
        return Value::Null;
    };
    let mut fields = Map::new();
    match &payload.data {
        Some(proto::payload::Data::Json(value)) => {
            fields.insert("json".into(), value_to_json(value));
        }
        Some(proto::payload::Data::Binary(bytes)) => {
            fields.insert(
                "binary".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into(),
            );
        }
        None => {}
    }
    if !payload.content_type.is_empty() {
        fields.insert("content_type".into(), payload.content_type.clone().into());
    }
    Value::Object(fields)
}

/// RFC 3339 with milliseconds, or null.
pub fn timestamp(timestamp: Option<&prost_types::Timestamp>) -> Value {
    system_time(timestamp)
        .map(|time| humantime::format_rfc3339_millis(time).to_string().into())
        .unwrap_or(Value::Null)
}

/// A wire timestamp as a `SystemTime`.
pub fn system_time(timestamp: Option<&prost_types::Timestamp>) -> Option<SystemTime> {
    SystemTime::try_from(*timestamp?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_are_upper_snake_case() {
        assert_eq!(code_name(5), "NOT_FOUND");
        assert_eq!(code_name(4), "DEADLINE_EXCEEDED");
        assert_eq!(code_name(13), "INTERNAL");
    }

    #[test]
    fn states_lose_their_prefix() {
        assert_eq!(state_name(TaskState::RetryWait), "RETRY_WAIT");
        assert_eq!(state_name(TaskState::Succeeded), "SUCCEEDED");
    }
}
