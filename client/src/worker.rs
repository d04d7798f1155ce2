//! A remote worker: runs [`Handler`]s (the trait `vowd` runs in-process
//! kinds with) for remote kinds, through the WorkerService. It long-polls
//! leases as slots free up, renews each lease at a third of its duration
//! while the handler runs (reporting its progress), fires the handler's
//! cancellation token when the task is cancelled, its attempt deadline
//! passes or the lease is lost, and completes the attempt with the
//! handler's output or error. On shutdown it stops polling, lets running
//! attempts finish for the drain timeout, then stops them and releases
//! their leases, so their tasks run again at once without losing an attempt.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vow_client::Error> {
//! use vow_client::worker::{Handler, HandlerContext, HandlerRegistry, Payload, TaskError, Worker};
//!
//! struct Resize;
//!
//! #[async_trait::async_trait]
//! impl Handler for Resize {
//!     async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError> {
//!         context.report_progress(50.0, "halfway");
//!         Ok(Payload::json(serde_json::json!({"resized": true})))
//!     }
//! }
//!
//! let client = vow_client::Client::connect("127.0.0.1:50051").await?;
//! let mut handlers = HandlerRegistry::new();
//! handlers.register("resize", Resize);
//! Worker::new(&client, handlers)
//!     .concurrency(8)
//!     .run(async { tokio::signal::ctrl_c().await.ok(); })
//!     .await?;
//! # Ok(()) }
//! ```

use std::{
    collections::BTreeMap,
    future::Future,
    panic::AssertUnwindSafe,
    sync::Arc,
    time::{Duration, SystemTime},
};

use futures::FutureExt;
use opentelemetry::{
    context::FutureExt as _,
    propagation::{Extractor, TextMapPropagator},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use prost::Message;
use tokio::sync::Semaphore;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tonic::{service::interceptor::InterceptedService, transport::Channel};
pub use vow_handler::{
    ErrorCode, Handler, HandlerContext, HandlerRegistry, Payload, PayloadData, ProgressReport,
    ProgressReporter, TaskError, TaskId,
};
use vow_proto::v1::{self as proto, worker_service_client::WorkerServiceClient};

use crate::{Client, Error, TraceInjector, duration_to_proto};

type Workers = WorkerServiceClient<InterceptedService<Channel, TraceInjector>>;

/// How long one Poll waits for work before asking again.
const POLL_WAIT: Duration = Duration::from_secs(30);
/// Pause after a failed Poll before the next.
const POLL_RETRY: Duration = Duration::from_secs(1);
/// How long a Complete is retried while the server is unreachable.
const COMPLETE_RETRY_BOUND: Duration = Duration::from_secs(60);

/// A worker of remote kinds; see the [module](self) docs.
pub struct Worker {
    workers: Workers,
    handlers: Arc<HandlerRegistry>,
    worker_id: String,
    concurrency: usize,
    lease_duration: Option<Duration>,
    drain_timeout: Duration,
}

impl Worker {
    /// A worker of every kind `handlers` has, over `client`'s connection.
    pub fn new(client: &Client, handlers: HandlerRegistry) -> Self {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".to_owned());
        Self {
            workers: WorkerServiceClient::with_interceptor(
                client.channel.clone(),
                client.injector().without_trace(),
            ),
            handlers: Arc::new(handlers),
            worker_id: format!("{host}-{}", std::process::id()),
            concurrency: 4,
            lease_duration: None,
            drain_timeout: Duration::from_secs(30),
        }
    }

    /// Names the worker in tasks and logs (default `<hostname>-<pid>`).
    pub fn worker_id(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_id = worker_id.into();
        self
    }

    /// Attempts run at once (default 4).
    pub fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// The lease asked for (default: the server's); renewed at a third of it.
    pub fn lease_duration(mut self, lease_duration: Duration) -> Self {
        self.lease_duration = Some(lease_duration);
        self
    }

    /// How long running attempts may finish after shutdown begins before
    /// they are stopped and their leases released (default 30 s).
    pub fn drain_timeout(mut self, drain_timeout: Duration) -> Self {
        self.drain_timeout = drain_timeout;
        self
    }

    /// Polls and runs attempts until `shutdown` completes, then drains.
    /// Fails only when the server refuses the worker's polls (an unknown
    /// kind, say); an unreachable server is retried.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let kinds: Vec<String> = self.handlers.kinds().map(str::to_owned).collect();
        let slots = Arc::new(Semaphore::new(self.concurrency));
        let attempts = TaskTracker::new();
        let stop_attempts = CancellationToken::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let first = tokio::select! {
                permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
                () = &mut shutdown => break,
            };
            let mut permits = vec![first];
            while let Ok(permit) = slots.clone().try_acquire_owned() {
                permits.push(permit);
            }
            let request = proto::PollRequest {
                kinds: kinds.clone(),
                worker_id: self.worker_id.clone(),
                max_tasks: permits.len() as u32,
                lease_duration: self.lease_duration.map(duration_to_proto),
                timeout: Some(duration_to_proto(POLL_WAIT)),
            };
            let mut call = tonic::Request::new(request);
            call.set_timeout(POLL_WAIT + Duration::from_secs(5));
            let mut workers = self.workers.clone();
            let polled = tokio::select! {
                polled = workers.poll(call) => polled,
                () = &mut shutdown => break,
            };
            let leases = match polled {
                Ok(response) => response.into_inner().leases,
                Err(status) => {
                    let error = Error::from(status);
                    if !error.is_transient() {
                        return Err(error);
                    }
                    tokio::select! {
                        () = tokio::time::sleep(POLL_RETRY) => continue,
                        () = &mut shutdown => break,
                    }
                }
            };
            for lease in leases {
                let Some(permit) = permits.pop() else { break };
                let attempt = Attempt {
                    workers: self.workers.clone(),
                    handlers: self.handlers.clone(),
                    stop: stop_attempts.child_token(),
                };
                attempts.spawn(async move {
                    attempt.run(lease).await;
                    drop(permit);
                });
            }
        }
        attempts.close();
        if tokio::time::timeout(self.drain_timeout, attempts.wait())
            .await
            .is_err()
        {
            // Each stopped attempt releases its lease instead of completing.
            stop_attempts.cancel();
            attempts.wait().await;
        }
        Ok(())
    }
}

/// One leased attempt.
struct Attempt {
    workers: Workers,
    handlers: Arc<HandlerRegistry>,
    /// Fires when the worker gives the attempt up (shutdown past the drain).
    stop: CancellationToken,
}

/// Why an attempt's handler was told to stop.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stopped {
    Cancelled,
    DeadlinePassed,
    LeaseLost,
    WorkerStopping,
}

impl Attempt {
    async fn run(self, lease: proto::Lease) {
        let Some(task) = lease.task.clone() else {
            return;
        };
        let Some(handler) = self.handlers.get(&task.kind).cloned() else {
            // The server sends only kinds this worker polled for.
            let error = TaskError::new(
                ErrorCode::Unimplemented,
                format!("this worker has no handler for {:?}", task.kind),
            );
            self.complete(&lease.token, Err(error)).await;
            return;
        };
        let deadline = lease
            .attempt_deadline
            .and_then(|deadline| SystemTime::try_from(deadline).ok());
        let cancellation = CancellationToken::new();
        let (progress, progress_updates) = ProgressReporter::channel();
        let context = HandlerContext {
            task_id: task.id.parse().unwrap_or(TaskId::MIN),
            kind: task.kind.clone(),
            input: Arc::new(payload_from_proto(task.input.unwrap_or_default())),
            labels: task.labels.into_iter().collect::<BTreeMap<_, _>>(),
            attempt: task.attempt,
            max_attempts: task.max_attempts,
            deadline,
            cancellation: cancellation.clone(),
            progress,
        };
        // The handler's spans and calls continue the attempt's span.
        let trace = TraceContextPropagator::new().extract(&LeaseTrace(&lease));
        let handler_run = AssertUnwindSafe(handler.run(context))
            .catch_unwind()
            .with_context(trace);
        let mut handler_run = std::pin::pin!(handler_run);
        let expire_time = lease
            .expire_time
            .and_then(|time| SystemTime::try_from(time).ok())
            .unwrap_or_else(SystemTime::now);
        let lease_duration = expire_time
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::from_secs(3));
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + lease_duration / 3,
            (lease_duration / 3).max(Duration::from_millis(100)),
        );
        let deadline_at = deadline.map(|deadline| {
            tokio::time::Instant::now()
                + deadline
                    .duration_since(SystemTime::now())
                    .unwrap_or_default()
        });
        let mut stopped: Option<Stopped> = None;
        let result = loop {
            tokio::select! {
                result = &mut handler_run => break result,
                _ = heartbeat.tick() => {
                    match self.heartbeat(&lease.token, &progress_updates).await {
                        Ok(true) if stopped.is_none() => {
                            stopped = Some(Stopped::Cancelled);
                            cancellation.cancel();
                        }
                        Err(()) if stopped.is_none() => {
                            stopped = Some(Stopped::LeaseLost);
                            cancellation.cancel();
                        }
                        _ => {}
                    }
                }
                () = sleep_until(deadline_at), if stopped.is_none() => {
                    stopped = Some(Stopped::DeadlinePassed);
                    cancellation.cancel();
                }
                () = self.stop.cancelled(), if stopped.is_none() => {
                    stopped = Some(Stopped::WorkerStopping);
                    cancellation.cancel();
                }
            }
        };
        match stopped {
            Some(Stopped::LeaseLost) => {}
            Some(Stopped::WorkerStopping) => self.release(&lease.token).await,
            Some(Stopped::Cancelled) => {
                let error = TaskError::new(ErrorCode::Cancelled, "cancelled");
                self.complete(&lease.token, Err(error)).await;
            }
            Some(Stopped::DeadlinePassed) if !matches!(result, Ok(Ok(_))) => {
                let error =
                    TaskError::new(ErrorCode::DeadlineExceeded, "the attempt deadline passed")
                        .with_reason("ATTEMPT_TIMEOUT");
                self.complete(&lease.token, Err(error)).await;
            }
            _ => {
                let outcome = match result {
                    Ok(outcome) => outcome,
                    Err(panic) => Err(TaskError::new(
                        ErrorCode::Internal,
                        format!("panicked: {}", vow_handler::panic_message(&*panic)),
                    )
                    .with_reason("HANDLER_PANICKED")),
                };
                self.complete(&lease.token, outcome).await;
            }
        }
    }

    /// Renews the lease with the latest progress; `Ok(true)` when the task
    /// was asked to stop, `Err` when the lease is lost. A failed call is
    /// not a lost lease: the next heartbeat tries again.
    async fn heartbeat(
        &self,
        token: &str,
        progress: &tokio::sync::watch::Receiver<Option<ProgressReport>>,
    ) -> Result<bool, ()> {
        let progress = progress.borrow().clone().map(|report| proto::Progress {
            percent: report.percent,
            message: report.message,
            update_time: None,
        });
        let request = proto::HeartbeatRequest {
            token: token.to_owned(),
            progress,
        };
        match self.workers.clone().heartbeat(request).await {
            Ok(response) => Ok(response.into_inner().cancel_requested),
            Err(status) if is_lease_lost(&status) => Err(()),
            Err(_) => Ok(false),
        }
    }

    /// Completes the attempt, retrying while the server is unreachable (a
    /// repeated Complete with the same outcome answers as the first).
    async fn complete(&self, token: &str, outcome: Result<Payload, TaskError>) {
        let outcome = match outcome {
            Ok(output) => proto::complete_request::Outcome::Output(payload_to_proto(&output)),
            Err(error) => proto::complete_request::Outcome::Error(status_of(&error)),
        };
        let request = proto::CompleteRequest {
            token: token.to_owned(),
            outcome: Some(outcome),
        };
        let give_up_at = tokio::time::Instant::now() + COMPLETE_RETRY_BOUND;
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.workers.clone().complete(request.clone()).await {
                Ok(_) => return,
                Err(status)
                    if is_transient(&status) && tokio::time::Instant::now() < give_up_at =>
                {
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                // Lost lease, or a refused outcome: nothing more to do here.
                Err(_) => return,
            }
        }
    }

    async fn release(&self, token: &str) {
        let request = proto::ReleaseRequest {
            tokens: vec![token.to_owned()],
            reason: "the worker is shutting down".into(),
        };
        let _ = self.workers.clone().release(request).await;
    }
}

fn is_lease_lost(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && Error::from(status.clone()).reason() == Some("LEASE_LOST")
}

fn is_transient(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::Unknown
            | tonic::Code::DeadlineExceeded
            // What proxies make of a stream reset by a replica going away.
            | tonic::Code::Cancelled
            | tonic::Code::Internal
    )
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// The lease's trace context, as the W3C propagator reads it.
struct LeaseTrace<'a>(&'a proto::Lease);

impl Extractor for LeaseTrace<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.0.traceparent.as_str()),
            "tracestate" => Some(self.0.tracestate.as_str()),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent", "tracestate"]
    }
}

/// A wire payload as a handler's.
pub fn payload_from_proto(payload: proto::Payload) -> Payload {
    let data = match payload.data {
        Some(proto::payload::Data::Binary(bytes)) => PayloadData::Binary(bytes),
        Some(proto::payload::Data::Json(value)) => {
            PayloadData::Json(vow_proto::json::from_value(&value).unwrap_or_default())
        }
        None => PayloadData::Json(serde_json::Value::Null),
    };
    Payload {
        data,
        content_type: payload.content_type,
    }
}

/// A handler's payload as the wire's.
pub fn payload_to_proto(payload: &Payload) -> proto::Payload {
    let data = match &payload.data {
        PayloadData::Json(value) => proto::payload::Data::Json(vow_proto::json::to_value(value)),
        PayloadData::Binary(bytes) => proto::payload::Data::Binary(bytes.clone()),
    };
    proto::Payload {
        data: Some(data),
        content_type: payload.content_type.clone(),
    }
}

/// A handler's error as a `google.rpc.Status` with its `ErrorInfo` (and a
/// `RetryInfo` when it asks for a delay).
pub fn status_of(error: &TaskError) -> tonic_types::pb::Status {
    let info = tonic_types::pb::ErrorInfo {
        reason: error.reason.clone(),
        domain: "vow.worker".into(),
        metadata: error.metadata.clone().into_iter().collect(),
    };
    let mut details = vec![prost_types::Any {
        type_url: "type.googleapis.com/google.rpc.ErrorInfo".into(),
        value: info.encode_to_vec(),
    }];
    if let Some(delay) = error.retry_after {
        let retry = tonic_types::pb::RetryInfo {
            retry_delay: Some(duration_to_proto(delay)),
        };
        details.push(prost_types::Any {
            type_url: "type.googleapis.com/google.rpc.RetryInfo".into(),
            value: retry.encode_to_vec(),
        });
    }
    tonic_types::pb::Status {
        code: error.code.as_i32(),
        message: error.message.clone(),
        details,
    }
}
