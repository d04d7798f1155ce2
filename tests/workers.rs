//! Remote workers against the real `vowd`: the WorkerService contract on
//! every store (memory, the embedded file, PostgreSQL), driven through the
//! generated stub, and the Rust `Worker` running the same `Handler` trait
//! as in-process kinds. Process-level cases (a worker or vowd killed with
//! SIGKILL, three replicas) are at the end.

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, SystemTime},
};

use common::{TempDir, TestDatabase, Vowd, metric_value, poll_until, scrape_metrics};
use futures::future::join_all;
use serde_json::json;
use tonic::{Code, transport::Channel};
use vow_client::{
    Client, Task, TaskExt, TaskState,
    proto::{self, worker_service_client::WorkerServiceClient},
    worker::{ErrorCode, Handler, HandlerContext, HandlerRegistry, Payload, TaskError, Worker},
};

const BOUND: Duration = Duration::from_secs(30);
/// Every test's vowd: two remote kinds, short leases (so lost ones lapse
/// within seconds), a short grace past attempt deadlines.
const REMOTE_ARGS: [&str; 10] = [
    "--remote-kind",
    "resize,mail",
    "--lease-duration",
    "3s",
    "--max-lease-duration",
    "1m",
    "--cancel-grace",
    "1s",
    "--metrics-listen",
    "127.0.0.1:0",
];

#[derive(Clone, Copy, Debug)]
enum StoreKind {
    Memory,
    Embedded,
    Postgres,
}

/// A vowd on one store, with what it needs kept alive.
struct Server {
    vowd: Vowd,
    _data_dir: Option<TempDir>,
    _database: Option<TestDatabase>,
}

async fn server(store: StoreKind, extra: &[&str]) -> Server {
    let mut args: Vec<&str> = REMOTE_ARGS.to_vec();
    args.extend_from_slice(extra);
    match store {
        StoreKind::Memory => Server {
            vowd: Vowd::start(&args),
            _data_dir: None,
            _database: None,
        },
        StoreKind::Embedded => {
            let data_dir = TempDir::new("workers");
            Server {
                vowd: Vowd::start_embedded(data_dir.path(), &args),
                _data_dir: Some(data_dir),
                _database: None,
            }
        }
        StoreKind::Postgres => {
            let database = TestDatabase::create().await;
            Server {
                vowd: Vowd::start_postgres(&database.url, &args),
                _data_dir: None,
                _database: Some(database),
            }
        }
    }
}

async fn client(vowd: &Vowd) -> Client {
    common::client_without_retries(vowd).await
}

async fn workers(vowd: &Vowd) -> WorkerServiceClient<Channel> {
    WorkerServiceClient::connect(vowd.url())
        .await
        .expect("connect a worker stub")
}

fn poll_request(kinds: &[&str], max_tasks: u32, wait: Duration) -> proto::PollRequest {
    proto::PollRequest {
        kinds: kinds.iter().map(|kind| (*kind).to_owned()).collect(),
        worker_id: "test-worker".into(),
        max_tasks,
        lease_duration: None,
        timeout: Some(wait.try_into().expect("a duration")),
    }
}

async fn poll(
    stub: &mut WorkerServiceClient<Channel>,
    kinds: &[&str],
    max_tasks: u32,
) -> Vec<proto::Lease> {
    stub.poll(poll_request(kinds, max_tasks, Duration::from_secs(10)))
        .await
        .expect("poll")
        .into_inner()
        .leases
}

async fn complete_with(
    stub: &mut WorkerServiceClient<Channel>,
    token: &str,
    outcome: proto::complete_request::Outcome,
) -> Result<Task, tonic::Status> {
    stub.complete(proto::CompleteRequest {
        token: token.to_owned(),
        outcome: Some(outcome),
    })
    .await
    .map(|response| response.into_inner().task.expect("a task"))
}

fn output(value: serde_json::Value) -> proto::complete_request::Outcome {
    proto::complete_request::Outcome::Output(proto::Payload {
        data: Some(proto::payload::Data::Json(vow_client::json_to_value(
            &value,
        ))),
        content_type: String::new(),
    })
}

/// An error outcome as a worker reports it, with a RetryInfo when given a delay.
fn failure(code: Code, retry_after: Option<Duration>) -> proto::complete_request::Outcome {
    let mut error = TaskError::new(
        ErrorCode::from_i32(code as i32).expect("a code"),
        "the thumbnail service is down",
    );
    error.retry_after = retry_after;
    proto::complete_request::Outcome::Error(vow_client::worker::status_of(&error))
}

fn assert_lease_lost(status: &tonic::Status) {
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    let error = vow_client::Error::from(status.clone());
    assert_eq!(error.reason(), Some("LEASE_LOST"), "{status:?}");
}

fn assert_invalid(status: &tonic::Status, field: &str) {
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let error = vow_client::Error::from(status.clone());
    assert!(
        error
            .violations()
            .iter()
            .any(|(name, _)| name.starts_with(field)),
        "a violation of {field}: {status:?}"
    );
}

fn time_of(timestamp: Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(timestamp.expect("a timestamp")).expect("a valid timestamp")
}

/// The whole contract of a lease, on one store.
async fn lease_contract(store: StoreKind) {
    let server = server(store, &[]).await;
    let vowd = &server.vowd;
    let client = client(vowd).await;
    let mut stub = workers(vowd).await;

    // A poll that waits gets a task submitted meanwhile at once.
    let mut waiting = stub.clone();
    let polling = tokio::spawn(async move {
        waiting
            .poll(poll_request(&["resize"], 1, Duration::from_secs(20)))
            .await
            .expect("poll")
            .into_inner()
            .leases
    });
    poll_until(BOUND, "a poller to wait", || async {
        let body = scrape_metrics(vowd.metrics_address.as_deref().expect("metrics"));
        (metric_value(&body, "vow_pollers{kind=\"resize\"}") == Some(1.0)).then_some(())
    })
    .await;
    let first = client
        .submit("resize")
        .input_json(json!({"image": 1}))
        .send()
        .await
        .expect("submit")
        .task;
    let leases = tokio::time::timeout(Duration::from_secs(5), polling)
        .await
        .expect("the waiting poll answers at once")
        .expect("the poll task");
    assert_eq!(leases.len(), 1);
    let lease = &leases[0];
    let leased = lease.task.as_ref().expect("the task");
    assert_eq!(leased.id, first.id);
    assert_eq!(leased.state(), TaskState::Running);
    assert_eq!(leased.worker_id, "test-worker");
    assert!(
        lease.traceparent.contains(&first.trace_id),
        "the submitter's trace"
    );

    // Heartbeats renew, carry progress, and say when a cancel was asked.
    let expire = time_of(lease.expire_time);
    let beat = stub
        .heartbeat(proto::HeartbeatRequest {
            token: lease.token.clone(),
            progress: Some(proto::Progress {
                percent: 40.0,
                message: "resizing".into(),
                update_time: None,
            }),
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(time_of(beat.expire_time) >= expire, "renewed");
    assert!(!beat.cancel_requested);
    let seen = client.get(&first.id).await.expect("get");
    assert_eq!(seen.progress.map(|progress| progress.percent), Some(40.0));
    assert_eq!(seen.worker_id, "test-worker");

    // Completing stores the output; the same Complete again answers the
    // same; another outcome with the same token is refused.
    let done = complete_with(&mut stub, &lease.token, output(json!({"w": 10})))
        .await
        .expect("complete");
    assert_eq!(done.state(), TaskState::Succeeded);
    assert_eq!(done.output_json(), Some(json!({"w": 10})));
    let again = complete_with(&mut stub, &lease.token, output(json!({"w": 10})))
        .await
        .expect("a repeated complete");
    assert_eq!(again.revision, done.revision);
    let other = complete_with(&mut stub, &lease.token, output(json!({"w": 11})))
        .await
        .expect_err("another outcome");
    assert_lease_lost(&other);
    let late = stub
        .heartbeat(proto::HeartbeatRequest {
            token: lease.token.clone(),
            progress: None,
        })
        .await
        .expect_err("a heartbeat after the end");
    assert_lease_lost(&late);

    // Batching, in priority-then-age order.
    let mut ids = Vec::new();
    for priority in [0, 5, 0, 9, 0] {
        ids.push(
            client
                .submit("mail")
                .priority(priority)
                .send()
                .await
                .expect("submit")
                .task
                .id,
        );
    }
    let batch = poll(&mut stub, &["mail"], 3).await;
    let leased_ids: Vec<&str> = batch
        .iter()
        .map(|lease| lease.task.as_ref().expect("task").id.as_str())
        .collect();
    assert_eq!(leased_ids, [&ids[3], &ids[1], &ids[0]]);

    // A retryable error is retried after the delay its RetryInfo asks for;
    // a non-retryable one fails the task.
    let retried = complete_with(
        &mut stub,
        &batch[0].token,
        failure(Code::Unavailable, Some(Duration::from_secs(3))),
    )
    .await
    .expect("complete with an error");
    assert_eq!(retried.state(), TaskState::RetryWait);
    let next = time_of(retried.next_attempt_time);
    let delay = next
        .duration_since(time_of(retried.update_time))
        .unwrap_or_default();
    assert!(
        (Duration::from_millis(2900)..=Duration::from_millis(3100)).contains(&delay),
        "the RetryInfo delay: {delay:?}"
    );
    let failed = complete_with(
        &mut stub,
        &batch[1].token,
        failure(Code::InvalidArgument, None),
    )
    .await
    .expect("complete with an error");
    assert_eq!(failed.state(), TaskState::Failed);
    assert_eq!(
        failed.error.map(|error| error.code),
        Some(Code::InvalidArgument as i32)
    );

    // Release hands the lease back without counting the attempt.
    let released = stub
        .release(proto::ReleaseRequest {
            tokens: vec![batch[2].token.clone()],
            reason: "shutting down".into(),
        })
        .await
        .expect("release")
        .into_inner();
    assert_eq!(released.released, 1);
    let back = client.get(&ids[0]).await.expect("get");
    assert_eq!(back.state(), TaskState::Queued);
    assert_eq!(back.attempt, 0);

    // A lease that is not renewed lapses: the attempt fails as UNAVAILABLE
    // (worker lost), the retry policy runs it again, and the late Complete
    // of the lost lease is refused.
    let lapsing = poll(&mut stub, &["mail"], 1).await.remove(0);
    let lapsed_id = lapsing.task.as_ref().expect("task").id.clone();
    let retried = poll_until(
        BOUND,
        "the lapsed lease's task to wait for a retry",
        || async {
            let task = client.get(&lapsed_id).await.ok()?;
            (task.state() == TaskState::RetryWait).then_some(task)
        },
    )
    .await;
    assert_eq!(retried.error_reason().as_deref(), Some("LEASE_EXPIRED"));
    assert_eq!(
        retried.error.as_ref().map(|error| error.code),
        Some(Code::Unavailable as i32)
    );
    let refused = complete_with(&mut stub, &lapsing.token, output(json!("late")))
        .await
        .expect_err("a late complete");
    assert_lease_lost(&refused);
}

/// Bad requests are refused with a field, and change nothing.
async fn bad_requests(store: StoreKind) {
    let server = server(store, &["--max-input-bytes", "65536"]).await;
    let vowd = &server.vowd;
    let client = client(vowd).await;
    let mut stub = workers(vowd).await;
    for (request, field) in [
        (
            poll_request(&["echo"], 1, Duration::from_secs(1)),
            "kinds[0]",
        ),
        (
            poll_request(&["nonesuch"], 1, Duration::from_secs(1)),
            "kinds[0]",
        ),
        (poll_request(&[], 1, Duration::from_secs(1)), "kinds"),
        (
            poll_request(&["resize"], 1000, Duration::from_secs(1)),
            "max_tasks",
        ),
        (
            proto::PollRequest {
                lease_duration: Some(Duration::from_secs(3600).try_into().expect("a duration")),
                ..poll_request(&["resize"], 1, Duration::from_secs(1))
            },
            "lease_duration",
        ),
        (
            proto::PollRequest {
                worker_id: String::new(),
                ..poll_request(&["resize"], 1, Duration::from_secs(1))
            },
            "worker_id",
        ),
    ] {
        let status = stub.poll(request).await.expect_err("a bad poll");
        assert_invalid(&status, field);
    }
    let unknown = client
        .submit("nonesuch")
        .send()
        .await
        .expect_err("an undeclared kind");
    assert_eq!(unknown.code(), Some(Code::InvalidArgument));

    let submitted = client.submit("resize").send().await.expect("submit").task;
    let lease = poll(&mut stub, &["resize"], 1).await.remove(0);
    let malformed = complete_with(&mut stub, "not-a-token", output(json!(1)))
        .await
        .expect_err("a malformed token");
    assert_invalid(&malformed, "token");
    let forged = format!(
        "{}.{}.{}",
        submitted.id,
        lease.token.split('.').nth(1).expect("a fencing token"),
        "0".repeat(32)
    );
    let refused = complete_with(&mut stub, &forged, output(json!(1)))
        .await
        .expect_err("a forged token");
    assert_lease_lost(&refused);
    let neither = stub
        .complete(proto::CompleteRequest {
            token: lease.token.clone(),
            outcome: None,
        })
        .await
        .expect_err("no outcome");
    assert_invalid(&neither, "outcome");
    let too_large = complete_with(
        &mut stub,
        &lease.token,
        proto::complete_request::Outcome::Output(proto::Payload {
            data: Some(proto::payload::Data::Binary(vec![0; 100_000])),
            content_type: String::new(),
        }),
    )
    .await
    .map(|task| task.state())
    .expect_err("an output over the limit is refused");
    assert_eq!(too_large.code(), Code::ResourceExhausted, "{too_large:?}");
    let too_large = vow_client::Error::from(too_large);
    assert_eq!(too_large.reason(), Some("PAYLOAD_TOO_LARGE"));
    assert!(
        too_large
            .violations()
            .iter()
            .any(|(field, _)| field == "output")
    );
    // Nothing changed: the lease still holds, and the worker can report an error.
    let still = client.get(&submitted.id).await.expect("get");
    assert_eq!(still.state(), TaskState::Running);
    let failed = complete_with(
        &mut stub,
        &lease.token,
        failure(Code::InvalidArgument, None),
    )
    .await
    .expect("an error instead");
    assert_eq!(failed.state(), TaskState::Failed);

    // Delete with cancel_if_running waits for the attempt to stop: the
    // worker learns of the cancel, completes, then the task is gone, and a
    // heartbeat after that is refused.
    let other = client.submit("resize").send().await.expect("submit").task;
    let lease = poll(&mut stub, &["resize"], 1).await.remove(0);
    let deleting = {
        let client = client.clone();
        let id = other.id.clone();
        tokio::spawn(async move { client.delete(&id, true).await })
    };
    poll_until(BOUND, "the heartbeat to tell of the cancel", || {
        let mut stub = stub.clone();
        let token = lease.token.clone();
        async move {
            let beat = stub
                .heartbeat(proto::HeartbeatRequest {
                    token,
                    progress: None,
                })
                .await
                .ok()?;
            beat.into_inner().cancel_requested.then_some(())
        }
    })
    .await;
    assert!(!deleting.is_finished(), "the delete waits for the attempt");
    let cancelled = complete_with(&mut stub, &lease.token, failure(Code::Cancelled, None))
        .await
        .expect("complete the cancelled task");
    assert_eq!(cancelled.state(), TaskState::Cancelled);
    deleting
        .await
        .expect("the delete task")
        .expect("deleted once stopped");
    let gone = stub
        .heartbeat(proto::HeartbeatRequest {
            token: lease.token,
            progress: None,
        })
        .await
        .expect_err("a heartbeat after the delete");
    assert_lease_lost(&gone);
    let missing = client.get(&other.id).await.expect_err("deleted");
    assert_eq!(missing.code(), Some(Code::NotFound));
}

/// The server ends a remote attempt at its deadline, whatever the worker
/// does, and the task deadline bounds everything.
async fn deadlines(store: StoreKind) {
    let server = server(store, &[]).await;
    let vowd = &server.vowd;
    let client = client(vowd).await;
    let mut stub = workers(vowd).await;
    let timed = client
        .submit("resize")
        .attempt_timeout(Duration::from_secs(1))
        .max_attempts(1)
        .send()
        .await
        .expect("submit")
        .task;
    let lease = poll(&mut stub, &["resize"], 1).await.remove(0);
    let deadline = time_of(lease.attempt_deadline);
    assert!(deadline <= SystemTime::now() + Duration::from_secs(1));
    // Heartbeats do not carry it past its deadline (plus the 1 s grace).
    let beat = stub
        .heartbeat(proto::HeartbeatRequest {
            token: lease.token.clone(),
            progress: None,
        })
        .await
        .expect("heartbeat")
        .into_inner();
    assert!(time_of(beat.expire_time) <= deadline + Duration::from_secs(1));
    let ended = poll_until(BOUND, "the timed-out attempt to end", || async {
        let task = client.get(&timed.id).await.ok()?;
        task.is_terminal().then_some(task)
    })
    .await;
    assert_eq!(ended.state(), TaskState::Failed);
    assert_eq!(ended.error_reason().as_deref(), Some("ATTEMPT_TIMEOUT"));
}

macro_rules! on_every_store {
    ($($case:ident),* $(,)?) => {
        $(
            mod $case {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn memory() {
                    super::$case(super::StoreKind::Memory).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn embedded() {
                    super::$case(super::StoreKind::Embedded).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    super::$case(super::StoreKind::Postgres).await;
                }
            }
        )*
    };
}

on_every_store!(lease_contract, bad_requests, deadlines, rust_worker);

/// A handler written once for vowd, run by the Rust `Worker`: it reports
/// progress, sees its deadline, and stops when cancelled.
struct Thumbnail {
    runs: Arc<AtomicU32>,
}

#[async_trait::async_trait]
impl Handler for Thumbnail {
    async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let input = context.input.as_json().cloned().unwrap_or_default();
        if input.get("wait").is_some() {
            context.report_progress(10.0, "waiting to be stopped");
            context.cancelled().await;
            return Err(TaskError::new(ErrorCode::Cancelled, "stopped"));
        }
        context.report_progress(100.0, "done");
        Ok(Payload::json(json!({
            "width": input.get("width").cloned().unwrap_or_default(),
            "attempt": context.attempt,
            "has_deadline": context.deadline.is_some(),
        })))
    }
}

/// A task whose handler waits to be stopped, once the handler has started.
async fn started_waiting_task(client: &Client) -> Task {
    let task = client
        .submit("resize")
        .input_json(json!({"wait": true}))
        .send()
        .await
        .expect("submit")
        .task;
    poll_until(BOUND, "the handler to start", || async {
        let task = client.get(&task.id).await.ok()?;
        (task.progress.is_some()).then_some(())
    })
    .await;
    task
}

async fn rust_worker(store: StoreKind) {
    let server = server(store, &[]).await;
    let vowd = &server.vowd;
    let client = client(vowd).await;
    let runs = Arc::new(AtomicU32::new(0));
    let mut handlers = HandlerRegistry::new();
    handlers.register("resize", Thumbnail { runs: runs.clone() });
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = Worker::new(&client, handlers)
        .worker_id("rust-worker")
        .concurrency(4)
        .lease_duration(Duration::from_secs(3))
        .drain_timeout(Duration::from_secs(1));
    let running = tokio::spawn(worker.run(stop.clone().cancelled_owned()));

    let submitted: Vec<Task> = join_all((0..8).map(|width| {
        let client = client.clone();
        async move {
            client
                .submit("resize")
                .input_json(json!({"width": width}))
                .attempt_timeout(Duration::from_secs(20))
                .send()
                .await
                .expect("submit")
                .task
        }
    }))
    .await;
    for (width, task) in submitted.iter().enumerate() {
        let awaited = client.await_task(&task.id, BOUND).await.expect("await");
        assert_eq!(awaited.task.state(), TaskState::Succeeded);
        assert_eq!(
            awaited.task.output_json(),
            Some(json!({"width": width, "attempt": 1, "has_deadline": true}))
        );
        assert_eq!(awaited.task.worker_id, "rust-worker");
    }

    // A cancel reaches the handler within one heartbeat (a second here).
    let waiting = started_waiting_task(&client).await;
    client
        .cancel(&waiting.id, "not needed")
        .await
        .expect("cancel");
    let cancelled = client
        .await_task(&waiting.id, Duration::from_secs(10))
        .await
        .expect("await");
    assert_eq!(cancelled.task.state(), TaskState::Cancelled);
    assert_eq!(runs.load(Ordering::SeqCst), 9, "every task ran once");

    // Shut down with a handler still running: its lease is released, and
    // the task waits for another worker with its attempt not counted.
    let stuck = started_waiting_task(&client).await;
    stop.cancel();
    tokio::time::timeout(BOUND, running)
        .await
        .expect("the worker drains and stops")
        .expect("the worker task")
        .expect("the worker ran");
    let handed_back = client.get(&stuck.id).await.expect("get");
    assert_eq!(handed_back.state(), TaskState::Queued);
    assert_eq!(handed_back.attempt, 0);

    // Pollers and leases come back to zero.
    let metrics = vowd.metrics_address.clone().expect("metrics");
    poll_until(BOUND, "the gauges to return to zero", || async {
        let body = scrape_metrics(&metrics);
        let pollers = metric_value(&body, "vow_pollers{kind=\"resize\"}");
        let leases = metric_value(&body, "vow_leases_held{kind=\"resize\"}");
        (pollers == Some(0.0) && leases == Some(0.0)).then_some(())
    })
    .await;
}

/// `vowd` killed with SIGKILL while workers hold leases: after a restart on
/// the same file the workers complete with the tokens they hold, and no
/// result is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_outlive_a_killed_vowd() {
    let data_dir = TempDir::new("workers-restart");
    let args = ["--remote-kind", "resize", "--lease-duration", "30s"];
    let mut vowd = Vowd::start_embedded(data_dir.path(), &args);
    let client = client(&vowd).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        ids.push(
            client
                .submit("resize")
                .input_json(json!({"n": n}))
                .send()
                .await
                .expect("submit")
                .task
                .id,
        );
    }
    let mut stub = workers(&vowd).await;
    let leases = poll(&mut stub, &["resize"], 3).await;
    assert_eq!(leases.len(), 3);
    vowd.signal(nix::sys::signal::Signal::SIGKILL);
    vowd.wait_exit(BOUND);

    let restarted = Vowd::start_embedded(data_dir.path(), &args);
    let client = self::client(&restarted).await;
    let mut stub = workers(&restarted).await;
    for lease in &leases {
        let beat = stub
            .heartbeat(proto::HeartbeatRequest {
                token: lease.token.clone(),
                progress: None,
            })
            .await
            .expect("the lease survived the restart");
        assert!(!beat.into_inner().cancel_requested);
        let id = lease.task.as_ref().expect("task").id.clone();
        let done = complete_with(&mut stub, &lease.token, output(json!({"id": id})))
            .await
            .expect("complete after the restart");
        assert_eq!(done.state(), TaskState::Succeeded);
    }
    for id in &ids {
        let task = client.get(id).await.expect("get");
        assert_eq!(task.state(), TaskState::Succeeded);
        assert_eq!(task.attempt, 1, "no attempt ran twice");
        assert_eq!(task.output_json(), Some(json!({"id": id})));
    }
}

/// A worker process killed with SIGKILL mid-task: its lease lapses, and
/// another worker runs the task as attempt 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_task_runs_again_on_another_worker() {
    use std::os::unix::process::CommandExt;
    let vowd = Vowd::start(&["--remote-kind", "resize", "--lease-duration", "2s"]);
    let client = client(&vowd).await;
    let vow = |worker_id: &str, script: &str| {
        let mut command = std::process::Command::new(common::vow_binary());
        command
            .args([
                "--server",
                &vowd.address,
                "work",
                "resize",
                "--worker-id",
                worker_id,
            ])
            .args(["--", "sh", "-c", script])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            // Its own process group: the kill takes its commands too.
            .process_group(0);
        command.spawn().expect("start vow work")
    };
    let mut doomed = vow("doomed", "cat > /dev/null; sleep 60");
    let task = client
        .submit("resize")
        .input_json(json!({"image": 7}))
        .backoff(Duration::from_millis(100), Duration::from_millis(100), 1.0)
        .send()
        .await
        .expect("submit")
        .task;
    poll_until(BOUND, "the doomed worker to take the task", || async {
        let task = client.get(&task.id).await.ok()?;
        (task.worker_id == "doomed").then_some(())
    })
    .await;
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(doomed.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the worker");
    doomed.wait().expect("reap the worker");

    let mut survivor = vow("survivor", "cat");
    let awaited = client.await_task(&task.id, BOUND).await.expect("await");
    let _ = survivor.kill();
    let _ = survivor.wait();
    assert_eq!(awaited.task.state(), TaskState::Succeeded);
    assert_eq!(awaited.task.attempt, 2, "the lost attempt counts");
    assert_eq!(awaited.task.worker_id, "survivor");
    assert_eq!(awaited.task.output_json(), Some(json!({"image": 7})));
}

/// Three PostgreSQL replicas, a worker on each, tasks submitted to each:
/// every task runs exactly once, whichever replica its worker polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn workers_on_three_replicas_run_every_task_once() {
    const TASKS: usize = 90;
    let database = TestDatabase::create().await;
    let replicas: Vec<Vowd> = (0..3)
        .map(|_| Vowd::start_postgres(&database.url, &["--remote-kind", "resize"]))
        .collect();
    let clients: Vec<Client> = join_all(replicas.iter().map(client)).await;
    let runs = Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        u32,
    >::new()));
    let stop = tokio_util::sync::CancellationToken::new();
    let mut running = Vec::new();
    for (n, client) in clients.iter().enumerate() {
        let mut handlers = HandlerRegistry::new();
        handlers.register("resize", Counting(runs.clone()));
        let worker = Worker::new(client, handlers)
            .worker_id(format!("worker-{n}"))
            .concurrency(4);
        running.push(tokio::spawn(worker.run(stop.clone().cancelled_owned())));
    }
    let ids: Vec<String> = join_all((0..TASKS).map(|n| {
        let client = clients[n % 3].clone();
        async move {
            client
                .submit("resize")
                .input_json(json!({"n": n}))
                .send()
                .await
                .expect("submit")
                .task
                .id
        }
    }))
    .await;
    for (n, id) in ids.iter().enumerate() {
        let awaited = clients[(n + 1) % 3]
            .await_task(id, BOUND)
            .await
            .expect("await on another replica");
        assert_eq!(awaited.task.state(), TaskState::Succeeded, "{id}");
        assert_eq!(awaited.task.attempt, 1, "{id} ran once");
    }
    stop.cancel();
    for worker in running {
        worker
            .await
            .expect("the worker task")
            .expect("the worker ran");
    }
    {
        let runs = runs.lock().expect("not poisoned");
        assert_eq!(runs.len(), TASKS);
        assert!(
            runs.values().all(|count| *count == 1),
            "every task ran once"
        );
    }
    let served: std::collections::BTreeSet<String> =
        join_all(ids.iter().map(|id| clients[0].get(id)))
            .await
            .into_iter()
            .map(|task| task.expect("get").worker_id)
            .collect();
    assert!(
        served.len() > 1,
        "more than one worker took tasks: {served:?}"
    );
}

/// Counts the runs of each task.
struct Counting(Arc<std::sync::Mutex<std::collections::HashMap<String, u32>>>);

#[async_trait::async_trait]
impl Handler for Counting {
    async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError> {
        *self
            .0
            .lock()
            .expect("not poisoned")
            .entry(context.task_id.to_string())
            .or_default() += 1;
        Ok(Payload::json(json!("done")))
    }
}

/// Tasks running on a replica killed with SIGKILL, cancelled through the
/// other replica: they end CANCELLED and never start again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_task_of_a_dead_replica_never_starts_again() {
    let database = TestDatabase::create().await;
    let mut doomed = Vowd::start_postgres(&database.url, &["--lease-duration", "2s"]);
    let on_doomed = client(&doomed).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(
            on_doomed
                .submit("sleep")
                .input_json(json!({"ms": 60_000}))
                .send()
                .await
                .expect("submit")
                .task
                .id,
        );
    }
    for id in &ids {
        poll_until(BOUND, "the task to run", || async {
            let task = on_doomed.get(id).await.ok()?;
            (task.state() == TaskState::Running).then_some(())
        })
        .await;
    }
    doomed.signal(nix::sys::signal::Signal::SIGKILL);
    doomed.wait_exit(BOUND);
    let survivor = Vowd::start_postgres(&database.url, &["--lease-duration", "2s"]);
    let client = client(&survivor).await;
    for id in &ids {
        client.cancel(id, "no longer needed").await.expect("cancel");
    }
    for id in &ids {
        let awaited = client.await_task(id, BOUND).await.expect("await");
        assert_eq!(awaited.task.state(), TaskState::Cancelled, "{id}");
        assert_eq!(awaited.task.attempt, 1, "{id} never started again");
    }
}

/// `vow work KIND -- COMMAND`: the input on stdin, the output from stdout,
/// exit statuses mapped to codes with stderr's tail as the message, and a
/// cancel delivered to the command as SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vow_work_runs_a_command_per_task() {
    let vowd = Vowd::start(&["--remote-kind", "shell", "--lease-duration", "3s"]);
    let client = client(&vowd).await;
    let scratch = TempDir::new("vow-work");
    let terminated = scratch.path().join("terminated");
    // The input says what to do: echo it back, fail, or wait to be stopped.
    let script = format!(
        r#"input=$(cat)
case "$input" in
  *fail*) echo "the image is corrupt" >&2; exit 64 ;;
  *later*) exit 75 ;;
  *wait*) trap 'echo "$VOW_TASK_ID" > {terminated}; exit 143' TERM; while true; do sleep 0.1; done ;;
  *) printf '{{"got": %s, "task": "%s", "attempt": %s}}' "$input" "$VOW_TASK_ID" "$VOW_TASK_ATTEMPT" ;;
esac"#,
        terminated = terminated.display()
    );
    let mut worker = std::process::Command::new(common::vow_binary())
        .args([
            "--server",
            &vowd.address,
            "work",
            "shell",
            "-c",
            "2",
            "--kill-grace",
            "5s",
        ])
        .args(["--", "sh", "-c", &script])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start vow work");

    let echoed = client
        .submit("shell")
        .input_json(json!({"n": 1}))
        .send()
        .await
        .expect("submit")
        .task;
    let awaited = client.await_task(&echoed.id, BOUND).await.expect("await");
    assert_eq!(awaited.task.state(), TaskState::Succeeded);
    assert_eq!(
        awaited.task.output_json(),
        Some(json!({"got": {"n": 1}, "task": echoed.id, "attempt": 1}))
    );

    let refused = client
        .submit("shell")
        .input_json(json!("fail"))
        .send()
        .await
        .expect("submit")
        .task;
    let awaited = client.await_task(&refused.id, BOUND).await.expect("await");
    assert_eq!(awaited.task.state(), TaskState::Failed, "64 is not retried");
    let error = awaited.task.error.expect("an error");
    assert_eq!(error.code, Code::InvalidArgument as i32);
    assert!(
        error.message.ends_with("the image is corrupt"),
        "{}",
        error.message
    );

    let retried = client
        .submit("shell")
        .input_json(json!("later"))
        .max_attempts(2)
        .backoff(Duration::from_millis(50), Duration::from_millis(50), 1.0)
        .send()
        .await
        .expect("submit")
        .task;
    let awaited = client.await_task(&retried.id, BOUND).await.expect("await");
    assert_eq!(awaited.task.state(), TaskState::Failed);
    assert_eq!(awaited.task.attempt, 2, "75 is retried");
    assert_eq!(
        awaited.task.error.map(|error| error.code),
        Some(Code::Unavailable as i32)
    );

    let waiting = client
        .submit("shell")
        .input_json(json!("wait"))
        .send()
        .await
        .expect("submit")
        .task;
    poll_until(BOUND, "the command to run", || async {
        let task = client.get(&waiting.id).await.ok()?;
        (task.state() == TaskState::Running).then_some(())
    })
    .await;
    client.cancel(&waiting.id, "stop").await.expect("cancel");
    let awaited = client.await_task(&waiting.id, BOUND).await.expect("await");
    assert_eq!(awaited.task.state(), TaskState::Cancelled);
    let got_term = std::fs::read_to_string(&terminated).expect("the command saw SIGTERM");
    assert_eq!(got_term.trim(), waiting.id);

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(worker.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop the worker");
    let status = worker.wait().expect("the worker exits");
    assert!(status.success(), "a graceful stop: {status:?}");
}
