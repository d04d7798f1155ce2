//! Every WorkerService request as its handler converts and checks it, and
//! a Complete's outcome applied to a running task as the engine applies
//! it. The first byte picks the method, the second the attempt of the
//! running task, the rest is the protobuf body as it arrives (or, for a
//! fifth method, the parts of a worker's error, built into a Complete).
//!
//! Beyond "never panics": lease tokens round-trip; an accepted Poll asks
//! for a lease the engine can compute with; an accepted progress is a
//! percentage; a completed attempt leaves the task in a state the engine
//! knows, with times in range, and a record the stores can write and read
//! back, and the wire can show.

#![no_main]

use std::time::{Duration, SystemTime};

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use prost::Message;
use vow_proto::v1 as pb;
use vow_server::fuzzing::{
    LeaseToken, SubmitChecks, TaskState, await_bound, await_timeout, decode_record, encode_record,
    finish_remote_attempt, outcome, poll_spec, progress, release, running_remote_task,
    task_to_proto,
};

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

/// A token field: valid tokens print as they were written.
fn check_token(text: &str) {
    if let Ok(token) = text.parse::<LeaseToken>() {
        assert_eq!(token.to_string(), text);
    }
}

/// A worker's error with every part a fuzzer might get wrong.
#[derive(Debug, Arbitrary)]
struct StructuredError {
    code: i32,
    message: String,
    reason: Option<String>,
    metadata: Vec<(String, String)>,
    retry_delay: Option<(i64, i32)>,
    garbage_detail: Option<(String, Vec<u8>)>,
}

impl StructuredError {
    fn into_request(self) -> pb::CompleteRequest {
        let mut details = Vec::new();
        if let Some(reason) = self.reason {
            let info = tonic_types::pb::ErrorInfo {
                reason,
                domain: "worker".into(),
                metadata: self.metadata.into_iter().collect(),
            };
            details.push(prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
                value: info.encode_to_vec(),
            });
        }
        if let Some((seconds, nanos)) = self.retry_delay {
            let retry = tonic_types::pb::RetryInfo {
                retry_delay: Some(prost_types::Duration { seconds, nanos }),
            };
            details.push(prost_types::Any {
                type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
                value: retry.encode_to_vec(),
            });
        }
        if let Some((type_url, value)) = self.garbage_detail {
            details.push(prost_types::Any { type_url, value });
        }
        pb::CompleteRequest {
            token: String::new(),
            outcome: Some(pb::complete_request::Outcome::Error(
                tonic_types::pb::Status {
                    code: self.code,
                    message: self.message,
                    details,
                },
            )),
        }
    }
}

/// Applies a Complete to a running task, and checks what it leaves.
fn check_complete(request: pb::CompleteRequest, attempt: u8) {
    check_token(&request.token);
    let Ok(outcome) = outcome(request.outcome) else {
        return;
    };
    let now = SystemTime::now();
    let attempt = u32::from(attempt % 4) + 1;
    let mut task = running_remote_task(attempt, 3, now);
    finish_remote_attempt(&mut task, &outcome, now, 0.5);
    match task.state {
        TaskState::Succeeded | TaskState::Failed => {
            assert!(task.ended_at.is_some() && task.expires_at.is_some());
        }
        TaskState::RetryWait => {
            let next = task.next_attempt_at.expect("a retry has a time");
            assert!(next >= now);
        }
        state => panic!("a completed attempt left the task {state:?}"),
    }
    assert!(task.lease.is_none());
    // The stores write it and read it back; the wire shows it.
    let encoded = encode_record(&task).expect("a task record encodes");
    let decoded = decode_record(&encoded).expect("an encoded record decodes");
    assert_eq!(encode_record(&decoded).expect("encodes again"), encoded);
    let _ = task_to_proto(&task).encode_to_vec();
}

fuzz_target!(|data: &[u8]| {
    let [method, attempt, body @ ..] = data else {
        return;
    };
    let checks = SubmitChecks::default();
    match method % 5 {
        0 => {
            let Some(request) = decode::<pb::PollRequest>(body) else {
                return;
            };
            let Ok(requested) = await_timeout(request.timeout) else {
                return;
            };
            let max_await = checks.config.max_await;
            let wait = await_bound(requested, None, max_await);
            let Ok(spec) = poll_spec(request.clone(), wait, Default::default()) else {
                return;
            };
            assert_eq!(spec.kinds, request.kinds);
            assert_eq!(spec.max_tasks, request.max_tasks as usize);
            if checks.check_poll(&spec).is_ok() {
                let lease = spec.lease_duration.unwrap_or(checks.config.lease_duration);
                assert!(lease >= Duration::from_secs(1));
                assert!(lease <= checks.config.max_lease_duration);
                assert!(SystemTime::now().checked_add(lease).is_some());
            }
        }
        1 => {
            let Some(request) = decode::<pb::HeartbeatRequest>(body) else {
                return;
            };
            check_token(&request.token);
            if let Ok(Some((percent, message))) = progress(request.progress) {
                assert!((0.0..=100.0).contains(&percent));
                assert!(message.len() <= 1_024);
            }
        }
        2 => {
            let Some(request) = decode::<pb::CompleteRequest>(body) else {
                return;
            };
            check_complete(request, *attempt);
        }
        3 => {
            // The nested details a byte mutation rarely keeps well formed,
            // built from the bytes instead.
            let Ok(error) = StructuredError::arbitrary(&mut Unstructured::new(body)) else {
                return;
            };
            check_complete(error.into_request(), *attempt);
        }
        _ => {
            let Some(request) = decode::<pb::ReleaseRequest>(body) else {
                return;
            };
            let (count, length) = (request.tokens.len(), request.reason.len());
            for token in &request.tokens {
                check_token(token);
            }
            assert_eq!(release(request).is_ok(), count <= 1_024 && length <= 1_024);
        }
    }
});
