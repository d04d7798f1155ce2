//! Valid requests of every method of TaskService and WorkerService, with
//! the ids and lease tokens of real tasks, for the mutations to start from.

use prost::Message;
use vow_proto::v1 as pb;

/// Every unary or server-streaming method vowd serves, by path.
pub const METHODS: &[&str] = &[
    "/vow.v1.TaskService/Submit",
    "/vow.v1.TaskService/Get",
    "/vow.v1.TaskService/Await",
    "/vow.v1.TaskService/AwaitMany",
    "/vow.v1.TaskService/Watch",
    "/vow.v1.TaskService/Run",
    "/vow.v1.TaskService/Cancel",
    "/vow.v1.TaskService/List",
    "/vow.v1.TaskService/Delete",
    "/vow.v1.TaskService/ListKinds",
    "/vow.v1.WorkerService/Poll",
    "/vow.v1.WorkerService/Heartbeat",
    "/vow.v1.WorkerService/Complete",
    "/vow.v1.WorkerService/Release",
];

/// Ids and tokens of live tasks the templates name.
#[derive(Clone, Debug, Default)]
pub struct Live {
    pub task_ids: Vec<String>,
    pub lease_tokens: Vec<String>,
}

fn duration(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

fn json_input() -> Option<pb::Payload> {
    let value = serde_json::json!({"n": 1, "nested": {"list": [1.5, "x", null, true]}});
    Some(pb::Payload {
        data: Some(pb::payload::Data::Json(vow_proto::json::to_value(&value))),
        content_type: "application/json".into(),
    })
}

fn retry() -> Option<pb::RetryPolicy> {
    Some(pb::RetryPolicy {
        max_attempts: 3,
        initial_backoff: duration(1, 0),
        max_backoff: duration(10, 0),
        backoff_multiplier: Some(2.0),
        jitter: Some(0.1),
        non_retryable_reasons: vec!["BAD".into()],
    })
}

fn worker_error() -> tonic_types::pb::Status {
    let info = tonic_types::pb::ErrorInfo {
        reason: "FUZZ".into(),
        domain: "worker".into(),
        metadata: [("k".to_owned(), "v".to_owned())].into(),
    };
    let retry = tonic_types::pb::RetryInfo {
        retry_delay: duration(2, 0),
    };
    tonic_types::pb::Status {
        code: 14,
        message: "unavailable".into(),
        details: vec![
            prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                value: info.encode_to_vec(),
            },
            prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: retry.encode_to_vec(),
            },
        ],
    }
}

/// A valid encoded request of `METHODS[method]`.
pub fn valid(method: usize, live: &Live, pick: usize) -> Vec<u8> {
    let id = live
        .task_ids
        .get(pick % live.task_ids.len().max(1))
        .cloned()
        .unwrap_or_default();
    let token = live
        .lease_tokens
        .get(pick % live.lease_tokens.len().max(1))
        .cloned()
        .unwrap_or_default();
    let kind = ["echo", "sleep", "fail", "remote"][pick % 4].to_owned();
    match METHODS[method].rsplit('/').next().expect("a method name") {
        "Submit" => pb::SubmitRequest {
            kind,
            input: json_input(),
            labels: [("team".to_owned(), "fuzz".to_owned())].into(),
            priority: 5,
            not_before: None,
            retry: retry(),
            attempt_timeout: duration(5, 0),
            deadline: None,
            ttl: duration(60, 0),
            retention: duration(30, 0),
            idempotency_key: format!("key-{}", pick % 16),
        }
        .encode_to_vec(),
        "Get" => pb::GetRequest { id }.encode_to_vec(),
        "Await" => pb::AwaitRequest {
            id,
            timeout: duration(0, 200_000_000),
        }
        .encode_to_vec(),
        "AwaitMany" => pb::AwaitManyRequest {
            ids: live.task_ids.iter().take(8).cloned().collect(),
            mode: 2,
            timeout: duration(0, 200_000_000),
        }
        .encode_to_vec(),
        "Watch" => pb::WatchRequest {
            id: if pick.is_multiple_of(2) {
                id
            } else {
                String::new()
            },
            after_revision: 0,
            kinds: vec![kind],
            labels: Default::default(),
            states: vec![1, 4],
        }
        .encode_to_vec(),
        "Run" => pb::RunRequest {
            kind: "echo".into(),
            input: json_input(),
            retry: retry(),
            ttl: duration(10, 0),
            ..Default::default()
        }
        .encode_to_vec(),
        "Cancel" => pb::CancelRequest {
            id,
            reason: "fuzz".into(),
        }
        .encode_to_vec(),
        "List" => pb::ListRequest {
            page_size: 20,
            page_token: String::new(),
            states: vec![1, 2, 3],
            kinds: vec![kind],
            labels: [("team".to_owned(), "fuzz".to_owned())].into(),
        }
        .encode_to_vec(),
        "Delete" => pb::DeleteRequest {
            id,
            cancel_if_running: pick.is_multiple_of(2),
        }
        .encode_to_vec(),
        "ListKinds" => pb::ListKindsRequest {}.encode_to_vec(),
        "Poll" => pb::PollRequest {
            kinds: vec!["remote".into()],
            worker_id: "wire-fuzz".into(),
            max_tasks: 2,
            lease_duration: duration(30, 0),
            timeout: duration(0, 100_000_000),
        }
        .encode_to_vec(),
        "Heartbeat" => pb::HeartbeatRequest {
            token,
            progress: Some(pb::Progress {
                percent: 50.0,
                message: "half".into(),
                update_time: None,
            }),
        }
        .encode_to_vec(),
        "Complete" => pb::CompleteRequest {
            token,
            outcome: Some(if pick.is_multiple_of(2) {
                pb::complete_request::Outcome::Error(worker_error())
            } else {
                pb::complete_request::Outcome::Output(json_input().expect("a payload"))
            }),
        }
        .encode_to_vec(),
        "Release" => pb::ReleaseRequest {
            tokens: vec![token],
            reason: "fuzz".into(),
        }
        .encode_to_vec(),
        other => unreachable!("no template for {other}"),
    }
}
