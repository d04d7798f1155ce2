//! End-to-end behaviour of `vow.v1.TaskService` against the real `vowd`
//! binary, driven by the Rust client (and the raw stubs where a test needs
//! control of headers and deadlines).

mod common;

use std::time::{Duration, SystemTime};

use common::{Vowd, eventually, poll_until};
use serde_json::json;
use tonic::{Code, Request};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use vow_client::{Client, Error, ListFilter, TaskExt, TaskState, proto};
use vow_proto::v1::task_service_client::TaskServiceClient;

const BOUND: Duration = Duration::from_secs(10);

async fn client(vowd: &Vowd) -> Client {
    Client::connect(&vowd.address)
        .await
        .expect("connect to vowd")
}

async fn raw(vowd: &Vowd) -> TaskServiceClient<tonic::transport::Channel> {
    TaskServiceClient::connect(vowd.url())
        .await
        .expect("connect to vowd")
}

fn rpc_error(error: Error) -> (Code, Option<String>, Vec<(String, String)>) {
    let Some(rpc) = error.rpc() else {
        panic!("expected an RPC error, got {error:?}");
    };
    (rpc.code, rpc.reason.clone(), rpc.violations.clone())
}

fn error_code(task: &proto::Task) -> i32 {
    task.error.as_ref().map_or(0, |error| error.code)
}

fn error_metadata(task: &proto::Task) -> std::collections::HashMap<String, String> {
    use prost::Message;
    task.error
        .as_ref()
        .and_then(|error| error.details.first())
        .and_then(|any| tonic_types::pb::ErrorInfo::decode(any.value.as_slice()).ok())
        .map(|info| info.metadata)
        .unwrap_or_default()
}

async fn health_status(vowd: &Vowd) -> ServingStatus {
    let channel = tonic::transport::Channel::from_shared(vowd.url())
        .expect("valid url")
        .connect()
        .await
        .expect("connect health");
    let mut health = HealthClient::new(channel);
    let response = health
        .check(HealthCheckRequest {
            service: "vow.v1.TaskService".into(),
        })
        .await
        .expect("health check answers");
    response.into_inner().status()
}

#[tokio::test]
async fn echo_round_trip_with_get_before_and_after() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let input = json!({"hello": "world", "n": [1, 2.5]});
    let submitted = client
        .submit("echo")
        .input_json(input.clone())
        .send()
        .await
        .expect("submit");
    assert!(!submitted.deduplicated);
    let id = submitted.task.id.clone();
    assert_eq!(id.len(), 32);

    let before = client.get(&id).await.expect("get before");
    assert_eq!(before.kind, "echo");

    let awaited = client.await_task(&id, BOUND).await.expect("await");
    assert!(awaited.done);
    assert_eq!(awaited.task.state(), TaskState::Succeeded);
    assert_eq!(awaited.task.output_json(), Some(input));
    assert_eq!(awaited.task.attempt, 1);

    let after = client.get(&id).await.expect("get after");
    assert_eq!(after.state(), TaskState::Succeeded);
    assert!(after.revision > before.revision || before.state() == TaskState::Succeeded);
    assert!(after.end_time.is_some() && after.expire_time.is_some());
}

#[tokio::test]
async fn await_answers_ok_not_done_before_the_call_deadline() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let submitted = client
        .submit("sleep")
        .input_json(json!({"ms": 10_000}))
        .send()
        .await
        .expect("submit");

    let mut request = Request::new(proto::AwaitRequest {
        id: submitted.task.id.clone(),
        timeout: None,
    });
    request.set_timeout(Duration::from_millis(300));
    // Had the server answered after the call's deadline, the client would
    // have ended the call DEADLINE_EXCEEDED (no wall-clock check needed).
    let response = raw(&vowd)
        .await
        .r#await(request)
        .await
        .expect("Await answers OK at its deadline");
    let response = response.into_inner();
    assert!(!response.done);
    assert!(!response.task.expect("snapshot").is_terminal());
}

#[tokio::test]
async fn run_fails_with_deadline_exceeded_and_the_handler_sees_its_cancellation() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let task = client
        .submit("sleep")
        .input_json(json!({"ms": 2_000}))
        .run(Duration::from_millis(200))
        .await
        .expect("Run answers before its deadline");
    assert_eq!(task.state(), TaskState::Failed);
    assert_eq!(error_code(&task), Code::DeadlineExceeded as i32);
    assert_eq!(
        error_metadata(&task)
            .get("handler_stopped")
            .map(String::as_str),
        Some("true")
    );
}

#[tokio::test]
async fn a_dropped_run_cancels_its_task() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let marker = format!("run-{}", std::process::id());
    let run = tokio::spawn({
        let client = client.clone();
        let marker = marker.clone();
        async move {
            client
                .submit("sleep")
                .input_json(json!({"ms": 30_000}))
                .label("marker", &marker)
                .run(Duration::from_secs(60))
                .await
        }
    });
    let filter = ListFilter {
        labels: vec![("marker".into(), marker)],
        ..ListFilter::default()
    };
    let id = poll_until(BOUND, "the run's task to start", || {
        let client = client.clone();
        let filter = filter.clone();
        async move {
            let (tasks, _) = client
                .list_page(&filter, String::new())
                .await
                .expect("list");
            tasks
                .first()
                .filter(|task| task.state() == TaskState::Running)
                .map(|task| task.id.clone())
        }
    })
    .await;
    run.abort();
    let awaited = client.await_task(&id, BOUND).await.expect("await");
    assert!(awaited.done);
    assert_eq!(awaited.task.state(), TaskState::Cancelled);
}

#[tokio::test]
async fn retryable_failures_back_off_then_fail_and_others_do_not_retry() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;

    let retried = client
        .submit("fail")
        .input_json(json!({"code": "UNAVAILABLE", "message": "down"}))
        .max_attempts(3)
        .backoff(Duration::from_millis(200), Duration::from_secs(5), 2.0)
        .jitter(0.0)
        .send()
        .await
        .expect("submit");
    let id = retried.task.id.clone();
    // Each RETRY_WAIT snapshot records the chosen backoff exactly.
    let backoffs = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let task = poll_until(BOUND, "the failing task to end", || {
        let client = client.clone();
        let id = id.clone();
        let backoffs = &backoffs;
        async move {
            let task = client.get(&id).await.expect("get");
            if task.state() == TaskState::RetryWait {
                let next = SystemTime::try_from(task.next_attempt_time.expect("retry time"))
                    .expect("valid");
                let updated =
                    SystemTime::try_from(task.update_time.expect("update time")).expect("valid");
                backoffs.lock().expect("not poisoned").insert(
                    task.attempt,
                    next.duration_since(updated).unwrap_or_default(),
                );
            }
            task.is_terminal().then_some(task)
        }
    })
    .await;
    let backoffs = backoffs.into_inner().expect("not poisoned");
    assert_eq!(task.state(), TaskState::Failed);
    assert_eq!(task.attempt, 3);
    assert_eq!(error_code(&task), Code::Unavailable as i32);
    assert_eq!(
        backoffs.keys().copied().collect::<Vec<_>>(),
        vec![1, 2],
        "saw both waits"
    );
    let near = |actual: Duration, expected_ms: u64| {
        actual.abs_diff(Duration::from_millis(expected_ms)) < Duration::from_millis(20)
    };
    assert!(near(backoffs[&1], 200), "first backoff {:?}", backoffs[&1]);
    assert!(near(backoffs[&2], 400), "second backoff {:?}", backoffs[&2]);

    let not_retried = client
        .submit("fail")
        .input_json(json!({"code": "INVALID_ARGUMENT"}))
        .max_attempts(3)
        .send()
        .await
        .expect("submit");
    let awaited = client
        .await_task(&not_retried.task.id, BOUND)
        .await
        .expect("await");
    assert_eq!(awaited.task.state(), TaskState::Failed);
    assert_eq!(awaited.task.attempt, 1);
    assert_eq!(
        awaited.task.error_reason().as_deref(),
        Some("INVALID_ARGUMENT")
    );

    let second_time_lucky = client
        .submit("fail")
        .input_json(json!({"succeed_on_attempt": 2}))
        .max_attempts(3)
        .backoff(Duration::from_millis(10), Duration::from_millis(10), 1.0)
        .send()
        .await
        .expect("submit");
    let awaited = client
        .await_task(&second_time_lucky.task.id, BOUND)
        .await
        .expect("await");
    assert_eq!(awaited.task.state(), TaskState::Succeeded);
    assert_eq!(awaited.task.attempt, 2);
}

#[tokio::test]
async fn a_panicking_handler_fails_its_attempt_and_the_server_keeps_serving() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let submitted = client
        .submit("fail")
        .input_json(json!({"panic": true, "message": "boom"}))
        .max_attempts(1)
        .send()
        .await
        .expect("submit");
    let awaited = client
        .await_task(&submitted.task.id, BOUND)
        .await
        .expect("await");
    assert_eq!(awaited.task.state(), TaskState::Failed);
    assert_eq!(error_code(&awaited.task), Code::Internal as i32);
    let message = awaited
        .task
        .error
        .as_ref()
        .map(|error| error.message.clone())
        .unwrap_or_default();
    assert_eq!(message, "panicked: boom");
    assert_eq!(health_status(&vowd).await, ServingStatus::Serving);
    let echo = client
        .submit("echo")
        .send()
        .await
        .expect("still accepts tasks");
    assert!(
        client
            .await_task(&echo.task.id, BOUND)
            .await
            .expect("await")
            .done
    );
}

#[tokio::test]
async fn cancel_stops_a_running_sleep_promptly_and_is_idempotent() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let submitted = client
        .submit("sleep")
        .input_json(json!({"ms": 30_000}))
        .send()
        .await
        .expect("submit");
    let id = submitted.task.id.clone();
    eventually(BOUND, "the sleep to start", || {
        let client = client.clone();
        let id = id.clone();
        async move { client.get(&id).await.expect("get").state() == TaskState::Running }
    })
    .await;

    let after_cancel = client.cancel(&id, "changed my mind").await.expect("cancel");
    assert!(after_cancel.cancel_requested);
    let awaited = client.await_task(&id, BOUND).await.expect("await");
    assert_eq!(awaited.task.state(), TaskState::Cancelled);
    let requested = SystemTime::try_from(after_cancel.update_time.expect("time")).expect("valid");
    let ended = SystemTime::try_from(awaited.task.end_time.expect("end time")).expect("valid");
    let took = ended.duration_since(requested).unwrap_or_default();
    assert!(
        took < Duration::from_millis(100),
        "cancellation took {took:?}"
    );
    assert_eq!(
        awaited
            .task
            .error
            .as_ref()
            .map(|error| error.message.as_str()),
        Some("cancelled: changed my mind")
    );

    let again = client
        .cancel(&id, "again")
        .await
        .expect("cancel is idempotent");
    assert_eq!(again.state(), TaskState::Cancelled);
    assert_eq!(
        again.revision, awaited.task.revision,
        "a second cancel changes nothing"
    );
}

#[tokio::test]
async fn queued_tasks_cancel_at_once() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let later = SystemTime::now() + Duration::from_secs(3600);
    let submitted = client
        .submit("echo")
        .not_before(later)
        .send()
        .await
        .expect("submit");
    assert_eq!(submitted.task.state(), TaskState::Queued);
    let cancelled = client.cancel(&submitted.task.id, "").await.expect("cancel");
    assert_eq!(cancelled.state(), TaskState::Cancelled);
}

#[tokio::test]
async fn unknown_and_malformed_ids() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let (code, reason, _) = rpc_error(client.get(&"0".repeat(32)).await.expect_err("unknown id"));
    assert_eq!(code, Code::NotFound);
    assert_eq!(reason.as_deref(), Some("TASK_NOT_FOUND"));

    for malformed in ["", "not-an-id", "ABCDEF0123456789ABCDEF0123456789"] {
        let (code, reason, violations) =
            rpc_error(client.get(malformed).await.expect_err("malformed id"));
        assert_eq!(code, Code::InvalidArgument, "{malformed:?}");
        assert_eq!(reason.as_deref(), Some("INVALID_REQUEST"));
        assert_eq!(
            violations.first().map(|violation| violation.0.as_str()),
            Some("id")
        );
    }
    let (code, _, _) = rpc_error(
        client
            .await_task("zzz", BOUND)
            .await
            .expect_err("malformed id"),
    );
    assert_eq!(code, Code::InvalidArgument);
    let (code, _, _) = rpc_error(
        client
            .cancel(&"f".repeat(32), "")
            .await
            .expect_err("unknown id"),
    );
    assert_eq!(code, Code::NotFound);
}

#[tokio::test]
async fn idempotency_keys_deduplicate_and_refuse_different_requests() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let first = client
        .submit("echo")
        .input_json(json!(1))
        .idempotency_key("order-42")
        .send()
        .await
        .expect("submit");
    let again = client
        .submit("echo")
        .input_json(json!(1))
        .idempotency_key("order-42")
        .send()
        .await
        .expect("resubmit");
    assert!(again.deduplicated);
    assert_eq!(again.task.id, first.task.id);

    let error = client
        .submit("echo")
        .input_json(json!(2))
        .idempotency_key("order-42")
        .send()
        .await
        .expect_err("a different request with the same key");
    let (code, reason, _) = rpc_error(error);
    assert_eq!(code, Code::AlreadyExists);
    assert_eq!(reason.as_deref(), Some("IDEMPOTENCY_KEY_REUSED"));
}

#[tokio::test]
async fn a_full_queue_answers_resource_exhausted_with_retry_info() {
    let vowd = Vowd::start(&["--max-concurrent-tasks", "1", "--max-queued-tasks", "2"]);
    let client = client(&vowd).await.with_retry(vow_client::RetryConfig {
        max_attempts: 1,
        ..Default::default()
    });
    let later = SystemTime::now() + Duration::from_secs(3600);
    for _ in 0..2 {
        client
            .submit("echo")
            .not_before(later)
            .send()
            .await
            .expect("room in the queue");
    }
    let error = client
        .submit("echo")
        .send()
        .await
        .expect_err("the queue is full");
    assert_eq!(error.code(), Some(Code::ResourceExhausted), "{error:?}");
    assert_eq!(error.reason(), Some("QUEUE_FULL"));
    assert!(
        error
            .retry_after()
            .is_some_and(|delay| delay > Duration::ZERO)
    );
}

#[tokio::test]
async fn bad_submits_are_refused_with_field_violations() {
    let vowd = Vowd::start(&["--max-input-bytes", "1024"]);
    let client = client(&vowd).await;
    let expect_violation = |result: Result<vow_client::Submitted, Error>, field: &str| {
        let (code, _, violations) = rpc_error(result.expect_err("invalid submit"));
        assert_eq!(code, Code::InvalidArgument);
        assert!(
            violations.iter().any(|(name, _)| name == field),
            "expected a violation of {field}, got {violations:?}"
        );
        violations
    };

    let violations = expect_violation(client.submit("").send().await, "kind");
    assert!(
        violations[0].1.contains("echo"),
        "names the known kinds: {violations:?}"
    );
    let violations = expect_violation(client.submit("nope").send().await, "kind");
    assert!(
        violations[0].1.contains("echo") && violations[0].1.contains("sleep"),
        "{violations:?}"
    );
    // Over the input limit: RESOURCE_EXHAUSTED (gRPC's code for too large a
    // message), with the field, the size and the limit.
    let too_large = client
        .submit("echo")
        .input_json(json!("x".repeat(2_000)))
        .send()
        .await
        .expect_err("an input over the limit");
    let rpc = too_large.rpc().expect("an RPC error");
    assert_eq!(rpc.code, Code::ResourceExhausted, "{too_large:?}");
    assert_eq!(rpc.reason.as_deref(), Some("PAYLOAD_TOO_LARGE"));
    assert_eq!(rpc.metadata.get("field").map(String::as_str), Some("input"));
    assert_eq!(
        rpc.metadata.get("limit_bytes").map(String::as_str),
        Some("1024")
    );
    assert!(rpc.violations.iter().any(|(field, _)| field == "input"));
    expect_violation(
        client
            .submit("sleep")
            .input_json(json!({"ms": "soon"}))
            .send()
            .await,
        "input",
    );
    expect_violation(
        client
            .submit("fail")
            .input_json(json!({"code": "WHATEVER"}))
            .send()
            .await,
        "input",
    );
    expect_violation(
        client.submit("echo").priority(5_000).send().await,
        "priority",
    );
    expect_violation(
        client.submit("echo").max_attempts(1_000).send().await,
        "retry.max_attempts",
    );
    expect_violation(
        client.submit("echo").jitter(3.0).send().await,
        "retry.jitter",
    );
    expect_violation(
        client
            .submit("echo")
            .ttl(Duration::from_secs(10 * 365 * 86_400))
            .send()
            .await,
        "ttl",
    );
    expect_violation(
        client
            .submit("echo")
            .deadline(SystemTime::now() - Duration::from_secs(5))
            .send()
            .await,
        "deadline",
    );
    expect_violation(
        client.submit("echo").label("bad key!", "v").send().await,
        "labels",
    );

    // Negative durations cannot be built with std types: send raw.
    let negative = proto::SubmitRequest {
        kind: "echo".into(),
        attempt_timeout: Some(prost_types::Duration {
            seconds: -5,
            nanos: 0,
        }),
        ..Default::default()
    };
    let status = raw(&vowd)
        .await
        .submit(negative)
        .await
        .expect_err("negative duration");
    let (code, _, violations) = rpc_error(status.into());
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(violations[0].0, "attempt_timeout");
}

#[tokio::test]
async fn bad_list_requests_and_grpc_timeouts_are_refused() {
    let vowd = Vowd::start(&[]);
    let mut raw = raw(&vowd).await;
    for (request, field) in [
        (
            proto::ListRequest {
                page_size: -1,
                ..Default::default()
            },
            "page_size",
        ),
        (
            proto::ListRequest {
                page_size: 5_000,
                ..Default::default()
            },
            "page_size",
        ),
        (
            proto::ListRequest {
                states: vec![42],
                ..Default::default()
            },
            "states",
        ),
        (
            proto::ListRequest {
                page_token: "garbage".into(),
                ..Default::default()
            },
            "page_token",
        ),
    ] {
        let (code, _, violations) =
            rpc_error(raw.list(request).await.expect_err("invalid list").into());
        assert_eq!(code, Code::InvalidArgument);
        assert_eq!(violations[0].0, field);
    }

    let mut request = Request::new(proto::AwaitRequest {
        id: "0".repeat(32),
        timeout: None,
    });
    request
        .metadata_mut()
        .insert("grpc-timeout", "soon".parse().expect("ascii"));
    let (code, _, violations) = rpc_error(
        raw.r#await(request)
            .await
            .expect_err("malformed grpc-timeout")
            .into(),
    );
    assert_eq!(code, Code::InvalidArgument);
    assert_eq!(violations[0].0, "grpc-timeout");
}

#[tokio::test]
async fn list_filters_and_pages_newest_first_and_delete_forgets() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let mut ids = Vec::new();
    for index in 0..5 {
        let submitted = client
            .submit("echo")
            .input_json(json!(index))
            .label("batch", "b1")
            .send()
            .await
            .expect("submit");
        ids.push(submitted.task.id.clone());
        client
            .await_task(&submitted.task.id, BOUND)
            .await
            .expect("await");
    }
    client
        .submit("echo")
        .label("batch", "other")
        .send()
        .await
        .expect("submit");

    let filter = ListFilter {
        labels: vec![("batch".into(), "b1".into())],
        states: vec![TaskState::Succeeded],
        page_size: 2,
        ..ListFilter::default()
    };
    let (first_page, token) = client
        .list_page(&filter, String::new())
        .await
        .expect("list");
    assert_eq!(first_page.len(), 2);
    assert!(!token.is_empty());
    use futures::TryStreamExt;
    let listed: Vec<String> = client
        .list(filter.clone())
        .map_ok(|task| task.id)
        .try_collect()
        .await
        .expect("list all");
    let newest_first: Vec<String> = ids.iter().rev().cloned().collect();
    assert_eq!(listed, newest_first);

    client
        .delete(&ids[0], false)
        .await
        .expect("delete a finished task");
    let (code, _, _) = rpc_error(client.get(&ids[0]).await.expect_err("deleted"));
    assert_eq!(code, Code::NotFound);

    let running = client
        .submit("sleep")
        .input_json(json!({"ms": 30_000}))
        .send()
        .await
        .expect("submit");
    let (code, reason, _) = rpc_error(
        client
            .delete(&running.task.id, false)
            .await
            .expect_err("still running"),
    );
    assert_eq!(code, Code::FailedPrecondition);
    assert_eq!(reason.as_deref(), Some("TASK_NOT_FINISHED"));
    client
        .delete(&running.task.id, true)
        .await
        .expect("cancel and delete");
    let (code, _, _) = rpc_error(client.get(&running.task.id).await.expect_err("deleted"));
    assert_eq!(code, Code::NotFound);
}

#[tokio::test]
async fn sigterm_ends_open_awaits_unavailable_and_still_finishes_running_attempts() {
    let data = common::TempDir::new("drain");
    let metrics = ["--metrics-listen", "127.0.0.1:0", "--drain-timeout", "20s"];
    let mut vowd = Vowd::start_embedded(data.path(), &metrics);
    let client = client(&vowd).await;
    let submitted = client
        .submit("sleep")
        .input_json(json!({"ms": 1_500}))
        .send()
        .await
        .expect("submit");
    let id = submitted.task.id.clone();
    eventually(BOUND, "the sleep to start", || {
        let client = client.clone();
        let id = id.clone();
        async move { client.get(&id).await.expect("get").state() == TaskState::Running }
    })
    .await;
    let waiting = tokio::spawn({
        let client = common::client_without_retries(&vowd).await;
        let id = id.clone();
        async move { client.await_task(&id, Duration::from_secs(60)).await }
    });
    let metrics_address = vowd.metrics_address.clone().expect("metrics address");
    eventually(BOUND, "the Await to be waiting", || {
        let metrics_address = metrics_address.clone();
        async move {
            let body =
                tokio::task::spawn_blocking(move || common::scrape_metrics(&metrics_address))
                    .await
                    .expect("scrape");
            common::metric_value(&body, "vow_live_waiters") == Some(1.0)
        }
    })
    .await;

    vowd.signal(nix::sys::signal::Signal::SIGTERM);
    // Not `done = false` 58 s before its deadline: UNAVAILABLE, to wait again elsewhere.
    let ended = waiting
        .await
        .expect("join")
        .expect_err("the drain ends the Await");
    assert_eq!(ended.code(), Some(Code::Unavailable), "{ended}");
    assert_eq!(ended.reason(), Some("SHUTTING_DOWN"));
    let status = vowd.wait_exit(BOUND);
    assert!(
        status.success(),
        "vowd exited with {status:?}; logs:\n{}",
        vowd.logs()
    );

    let vowd = Vowd::start_embedded(data.path(), &[]);
    let task = Client::connect(&vowd.address)
        .await
        .expect("connect")
        .get(&id)
        .await
        .expect("get after restart");
    assert_eq!(
        task.state(),
        TaskState::Succeeded,
        "the running attempt finished in the drain"
    );
    assert_eq!(task.attempt, 1, "and was not handed back");
}

#[tokio::test]
async fn sigterm_turns_health_not_serving_and_keeps_serving_for_the_shutdown_delay() {
    let vowd = Vowd::start(&["--shutdown-delay", "1h"]);
    let client = client(&vowd).await;
    vowd.signal(nix::sys::signal::Signal::SIGTERM);
    eventually(BOUND, "health to turn NOT_SERVING", || async {
        health_status(&vowd).await == ServingStatus::NotServing
    })
    .await;
    // Load balancers still send calls until they see it: they must all work.
    let task = client
        .submit("echo")
        .input_json(json!({"during": "the delay"}))
        .run(BOUND)
        .await
        .expect("a Run while NOT_SERVING");
    assert_eq!(task.state(), TaskState::Succeeded);
    let awaited = client.await_task(&task.id, BOUND).await.expect("await");
    assert!(awaited.done);
}
