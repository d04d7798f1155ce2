//! Every TaskService request as its handler converts and checks it before
//! the engine sees it. The first byte picks the method, the second the
//! call's `grpc-timeout`, the rest is the protobuf body as it arrives (or,
//! for one method number, the parts of a Submit, built into one).
//!
//! Beyond "never panics": a body that decodes re-encodes to a message that
//! decodes the same; what a conversion keeps matches the request; ids and
//! page tokens round-trip; waits stay within their bounds; and a Submit the
//! engine accepts describes times the engine can compute with.

#![no_main]

use std::time::{Duration, SystemTime};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use tonic::metadata::MetadataMap;
use vow_proto::v1 as pb;
use vow_server::fuzzing::{
    EngineError, SubmitChecks, SubmitSpec, TaskDeadline, await_bound, await_many, await_timeout,
    call_timeout, cancel_reason, encode_page_token, list_query, run_as_submit, submit_spec,
    task_id, watch_filter,
};

/// The call deadlines the second byte chooses from, as clients send them.
const TIMEOUTS: &[&str] = &["", "1S", "250m", "99999999H", "0n", "7u", "12345678M", "1x"];

/// Decodes `body` as `M`; a body that decodes must survive a round trip.
fn decode<M: Message + Default + PartialEq + std::fmt::Debug>(body: &[u8]) -> Option<M> {
    let message = M::decode(body).ok()?;
    let encoded = message.encode_to_vec();
    let again = M::decode(encoded.as_slice()).expect("a re-encoded message decodes");
    assert_eq!(again.encoded_len(), encoded.len());
    // Maps encode in any order, so messages are compared, not bytes; a
    // NaN is not equal to itself.
    assert!(
        again == message || format!("{message:?}").contains("NaN"),
        "a message changed through re-encoding"
    );
    Some(message)
}

fn metadata(choice: u8) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    let timeout = TIMEOUTS[usize::from(choice) % TIMEOUTS.len()];
    if !timeout.is_empty() {
        metadata.insert("grpc-timeout", timeout.parse().expect("ascii"));
    }
    metadata
}

/// An id field: valid ids are exactly 32 lowercase hex digits, and print
/// as they were written.
fn check_id(text: &str) {
    match task_id("id", text) {
        Ok(id) => assert_eq!(id.to_string(), text),
        Err(error) => assert!(matches!(error, EngineError::InvalidArgument(_))),
    }
}

/// A wait computed as a handler computes it never exceeds what was asked,
/// the call's deadline or the server's maximum.
fn check_wait(
    requested: Option<prost_types::Duration>,
    metadata: &MetadataMap,
    max_await: Duration,
) {
    let Ok(call) = call_timeout(metadata) else {
        return;
    };
    let Ok(requested) = await_timeout(requested) else {
        return;
    };
    let wait = await_bound(requested, call, max_await);
    assert!(wait <= max_await);
    assert!(requested.is_none_or(|requested| wait <= requested));
    assert!(call.is_none_or(|call| wait <= call));
}

/// Checks a converted Submit (or Run) against the request it came from,
/// then through the engine's validation.
fn check_submit(request: &pb::SubmitRequest, converted: Result<SubmitSpec, EngineError>) {
    let spec = match converted {
        Ok(spec) => spec,
        Err(error) => {
            assert!(matches!(error, EngineError::InvalidArgument(ref v) if !v.is_empty()));
            return;
        }
    };
    assert_eq!(spec.kind, request.kind);
    assert_eq!(spec.priority, request.priority);
    assert_eq!(spec.labels.len(), request.labels.len());
    assert_eq!(
        spec.idempotency_key.is_none(),
        request.idempotency_key.is_empty()
    );
    assert!(!(request.deadline.is_some() && request.ttl.is_some()));
    // The input's size is what quotas count: computing it must not panic.
    let _ = spec.input.encoded_len();
    let _ = spec.fingerprint();
    let checks = SubmitChecks::default();
    let now = SystemTime::now();
    if checks.validate(&spec, now).is_err() {
        return;
    }
    // What the engine computes from an accepted spec is in range.
    if let Some(TaskDeadline::After(ttl)) = spec.deadline {
        assert!(now.checked_add(ttl).is_some());
    }
    for backoff in [spec.retry.initial_backoff, spec.retry.max_backoff]
        .into_iter()
        .flatten()
    {
        assert!(now.checked_add(backoff).is_some());
    }
    if let Some(timeout) = spec.attempt_timeout {
        assert!(now.checked_add(timeout).is_some() && !timeout.is_zero());
    }
}

/// A Submit whose every time and number the fuzzer picks.
#[derive(Debug, Arbitrary)]
struct StructuredSubmit {
    kind: u8,
    priority: i32,
    not_before: Option<(i64, i32)>,
    deadline: Option<(i64, i32)>,
    ttl: Option<(i64, i32)>,
    attempt_timeout: Option<(i64, i32)>,
    retention: Option<(i64, i32)>,
    retry: Option<StructuredRetry>,
    labels: Vec<(String, String)>,
    idempotency_key: String,
}

#[derive(Debug, Arbitrary)]
struct StructuredRetry {
    max_attempts: u32,
    initial_backoff: Option<(i64, i32)>,
    max_backoff: Option<(i64, i32)>,
    backoff_multiplier: Option<f64>,
    jitter: Option<f64>,
}

fn proto_duration(value: Option<(i64, i32)>) -> Option<prost_types::Duration> {
    value.map(|(seconds, nanos)| prost_types::Duration { seconds, nanos })
}

fn proto_timestamp(value: Option<(i64, i32)>) -> Option<prost_types::Timestamp> {
    value.map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos })
}

impl StructuredSubmit {
    fn into_request(self) -> pb::SubmitRequest {
        pb::SubmitRequest {
            kind: ["echo", "sleep", "fail", "remote", ""][usize::from(self.kind) % 5].into(),
            input: None,
            labels: self.labels.into_iter().collect(),
            priority: self.priority,
            not_before: proto_timestamp(self.not_before),
            retry: self.retry.map(|retry| pb::RetryPolicy {
                max_attempts: retry.max_attempts,
                initial_backoff: proto_duration(retry.initial_backoff),
                max_backoff: proto_duration(retry.max_backoff),
                backoff_multiplier: retry.backoff_multiplier,
                jitter: retry.jitter,
                non_retryable_reasons: Vec::new(),
            }),
            attempt_timeout: proto_duration(self.attempt_timeout),
            deadline: proto_timestamp(self.deadline),
            ttl: proto_duration(self.ttl),
            retention: proto_duration(self.retention),
            idempotency_key: self.idempotency_key,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [method, timeout, body @ ..] = data else {
        return;
    };
    let metadata = metadata(*timeout);
    let max_await = Duration::from_secs(300);
    match method % 12 {
        0 => {
            let Some(request) = decode::<pb::SubmitRequest>(body) else {
                return;
            };
            check_submit(&request, submit_spec(request.clone()));
        }
        1 => {
            let Some(request) = decode::<pb::GetRequest>(body) else {
                return;
            };
            check_id(&request.id);
        }
        2 => {
            let Some(request) = decode::<pb::AwaitRequest>(body) else {
                return;
            };
            check_id(&request.id);
            check_wait(request.timeout, &metadata, max_await);
        }
        3 => {
            let Some(request) = decode::<pb::AwaitManyRequest>(body) else {
                return;
            };
            let limit = 1_000;
            if let Ok((ids, _mode)) = await_many(&request, limit) {
                assert!(!ids.is_empty() && ids.len() <= limit);
                assert_eq!(ids.len(), request.ids.len());
                for (id, text) in ids.iter().zip(&request.ids) {
                    assert_eq!(&id.to_string(), text);
                }
            }
            check_wait(request.timeout, &metadata, max_await);
        }
        4 => {
            let Some(request) = decode::<pb::WatchRequest>(body) else {
                return;
            };
            let _ = call_timeout(&metadata);
            if request.id.is_empty() {
                if let Ok(filter) = watch_filter(&request) {
                    assert_eq!(filter.states.len(), request.states.len());
                    assert_eq!(request.after_revision, 0);
                }
            } else {
                check_id(&request.id);
            }
        }
        5 => {
            let Some(request) = decode::<pb::RunRequest>(body) else {
                return;
            };
            let submit = run_as_submit(request.clone());
            assert_eq!(submit.encode_to_vec().len(), request.encode_to_vec().len());
            if let Ok(Some(call)) = call_timeout(&metadata) {
                // The handler's task deadline: now + a part of the call's time.
                let usable = vow_server::fuzzing::usable(call);
                assert!(SystemTime::now().checked_add(usable).is_some());
            }
            check_submit(&submit, submit_spec(submit.clone()));
        }
        6 => {
            let Some(request) = decode::<pb::CancelRequest>(body) else {
                return;
            };
            check_id(&request.id);
            let length = request.reason.len();
            assert_eq!(cancel_reason(request.reason).is_ok(), length <= 1_024);
        }
        7 => {
            let Some(request) = decode::<pb::ListRequest>(body) else {
                return;
            };
            let Ok(query) = list_query(request.clone()) else {
                return;
            };
            assert!((1..=1_000).contains(&query.page_size));
            assert_eq!(query.states.len(), request.states.len());
            // The next page's token names the same cursor.
            if let Some(after) = query.after {
                let token = encode_page_token(after);
                let again = list_query(pb::ListRequest {
                    page_token: token,
                    ..Default::default()
                })
                .expect("a token this server issued");
                assert_eq!(again.after, Some(after));
            }
        }
        8 => {
            let Some(request) = decode::<pb::DeleteRequest>(body) else {
                return;
            };
            check_id(&request.id);
            check_wait(None, &metadata, max_await);
        }
        9 => {
            let _ = decode::<pb::ListKindsRequest>(body);
        }
        10 => {
            // Times and numbers on their edges, which byte mutations of
            // nested messages rarely reach intact.
            let Ok(submit) = StructuredSubmit::arbitrary(&mut Unstructured::new(body)) else {
                return;
            };
            let request = submit.into_request();
            check_submit(&request, submit_spec(request.clone()));
        }
        _ => {
            // The call deadline header alone, as every waiting method reads it.
            if let Ok(Some(call)) = call_timeout(&metadata) {
                assert!(vow_server::fuzzing::usable(call) <= call);
            }
        }
    }
});
