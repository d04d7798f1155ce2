//! `vow.v1.TaskService`: converts and validates requests, calls the engine,
//! converts results, maps errors. No storage calls, no spawning.

use std::{
    pin::Pin,
    sync::Arc,
    time::{Instant, SystemTime},
};

use futures::{Stream, StreamExt, future::Either};
use tonic::{Request, Response, Status, metadata::MetadataMap};
use vow_proto::v1::{self as pb, task_service_server::TaskService};

use super::{
    convert, deadline, rpc_trace, shared_encoding::SharedTaskEncodings, status::engine_error_status,
};
use crate::engine::{Engine, EngineError, Scope, task::TraceContext, watch::WatchLimits};
use crate::telemetry;

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// Longest a Delete with `cancel_if_running` waits for the attempt to stop.
const DELETE_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// The gRPC face of the engine.
pub struct TaskServiceImpl {
    engine: Engine,
    watch_encodings: Arc<SharedTaskEncodings>,
}

impl TaskServiceImpl {
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            watch_encodings: Arc::default(),
        }
    }
}

/// The namespaces a call may see: what the access layer decided, or the
/// default namespace when access control is off.
pub(super) fn scope_of(extensions: &tonic::Extensions) -> Scope {
    extensions.get::<Scope>().cloned().unwrap_or_default()
}

/// The trace context to store on a task submitted by this call: the RPC
/// span's (a child of the caller's), the caller's headers as they came when
/// spans carry no context, or a new trace.
fn trace_context(metadata: &MetadataMap) -> TraceContext {
    telemetry::propagation::current_or(incoming_trace_context(metadata))
}

/// The trace id of this call, if it has one: the RPC span's when spans are
/// exported, else the caller's. Never a new one, so that a long stream does
/// not make up a trace it may never need.
fn call_trace_id(metadata: &MetadataMap) -> Option<String> {
    let trace = if telemetry::exporting() {
        trace_context(metadata)
    } else {
        incoming_trace_context(metadata)
    };
    trace.trace_id().map(str::to_owned)
}

/// The W3C trace context headers of a call.
fn incoming_trace_context(metadata: &MetadataMap) -> TraceContext {
    let header = |name: &str| {
        metadata
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    TraceContext {
        traceparent: header("traceparent"),
        tracestate: header("tracestate"),
        baggage: header("baggage"),
    }
}

fn to_watch_message(
    event: Result<crate::engine::watch::WatchEvent, EngineError>,
    encodings: &SharedTaskEncodings,
    trace_id: Option<&str>,
) -> Result<pb::WatchResponse, Status> {
    event
        .map(|event| convert::watch_response(event, encodings))
        .map_err(|error| engine_error_status(error, trace_id))
}

/// Runs an RPC body, maps its engine error (with the call's trace id), and
/// records the outcome on the RPC's span and in the metrics.
pub(super) async fn handle<T>(
    method: &'static str,
    metadata: &MetadataMap,
    body: impl Future<Output = Result<T, EngineError>>,
) -> Result<Response<T>, Status> {
    let started = Instant::now();
    let result = match body.await {
        Ok(response) => Ok(Response::new(response)),
        // On the error path only: an untraced call gets a trace id here,
        // recorded on its span too, so the error and its log lines match.
        Err(error) => Err(engine_error_status(
            error,
            trace_context(metadata).trace_id(),
        )),
    };
    let code = result
        .as_ref()
        .map_or_else(Status::code, |_| tonic::Code::Ok);
    rpc_trace::finish_rpc(method, code, started);
    result
}

#[tonic::async_trait]
impl TaskService for TaskServiceImpl {
    async fn submit(
        &self,
        request: Request<pb::SubmitRequest>,
    ) -> Result<Response<pb::SubmitResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("Submit", &metadata, async {
            let spec = convert::submit_spec(request)?;
            let submitted = self
                .engine
                .submit(&scope, spec, trace_context(&metadata))
                .await?;
            Ok(pb::SubmitResponse {
                task: Some(convert::task_to_proto(&submitted.task)),
                deduplicated: submitted.deduplicated,
            })
        })
        .await
    }

    async fn get(
        &self,
        request: Request<pb::GetRequest>,
    ) -> Result<Response<pb::GetResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("Get", &metadata, async {
            let id = convert::task_id("id", &request.id)?;
            let task = self.engine.get(&scope, id).await?;
            Ok(pb::GetResponse {
                task: Some(convert::task_to_proto(&task)),
            })
        })
        .await
    }

    async fn r#await(
        &self,
        request: Request<pb::AwaitRequest>,
    ) -> Result<Response<pb::AwaitResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("Await", &metadata, async {
            let call_timeout = deadline::call_timeout(&metadata)?;
            let id = convert::task_id("id", &request.id)?;
            let requested = convert::await_timeout(request.timeout)?;
            let wait =
                deadline::await_bound(requested, call_timeout, self.engine.config().max_await);
            let awaited = self.engine.await_task(&scope, id, wait).await?;
            rpc_trace::link_to_task(&awaited.task.trace);
            Ok(pb::AwaitResponse {
                task: Some(convert::task_to_proto(&awaited.task)),
                done: awaited.done,
            })
        })
        .await
    }

    async fn await_many(
        &self,
        request: Request<pb::AwaitManyRequest>,
    ) -> Result<Response<pb::AwaitManyResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("AwaitMany", &metadata, async {
            let call_timeout = deadline::call_timeout(&metadata)?;
            let (ids, mode) = convert::await_many(&request, self.engine.config().await_many_limit)?;
            let requested = convert::await_timeout(request.timeout)?;
            let wait =
                deadline::await_bound(requested, call_timeout, self.engine.config().max_await);
            let awaited = self.engine.await_many(&scope, &ids, mode, wait).await?;
            for task in awaited.finished.iter().chain(&awaited.unfinished) {
                rpc_trace::link_to_task(&task.trace);
            }
            Ok(convert::await_many_response(awaited))
        })
        .await
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        let trace_id = call_trace_id(&metadata);
        handle("Watch", &metadata, async {
            let call_timeout = deadline::call_timeout(&metadata)?;
            let limits = WatchLimits {
                heartbeat: self.engine.config().watch_heartbeat,
                until: call_timeout
                    .map(|timeout| tokio::time::Instant::now() + deadline::usable(timeout)),
            };
            let encodings = Arc::clone(&self.watch_encodings);
            let events = if request.id.is_empty() {
                let filter = convert::watch_filter(&request)?;
                Either::Left(self.engine.watch_filtered(&scope, filter, limits).await?)
            } else {
                let id = convert::task_id("id", &request.id)?;
                let (task, events) = self
                    .engine
                    .watch_task(&scope, id, request.after_revision, limits)
                    .await?;
                rpc_trace::link_to_task(&task.trace);
                Either::Right(events)
            };
            let messages: WatchStream = Box::pin(
                events.map(move |event| to_watch_message(event, &encodings, trace_id.as_deref())),
            );
            Ok(messages)
        })
        .await
    }

    async fn run(
        &self,
        request: Request<pb::RunRequest>,
    ) -> Result<Response<pb::RunResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("Run", &metadata, async {
            let call_timeout = deadline::call_timeout(&metadata)?;
            let spec = convert::submit_spec(convert::run_as_submit(request))?;
            // The task must end (and its end reach the caller) before the call does.
            let usable = call_timeout.map(deadline::usable);
            let task_deadline =
                usable.map(|usable| SystemTime::now() + usable.saturating_sub(usable / 10));
            let awaited = self
                .engine
                .run(
                    &scope,
                    spec,
                    trace_context(&metadata),
                    task_deadline,
                    usable,
                )
                .await?;
            Ok(pb::RunResponse {
                task: Some(convert::task_to_proto(&awaited.task)),
            })
        })
        .await
    }

    async fn cancel(
        &self,
        request: Request<pb::CancelRequest>,
    ) -> Result<Response<pb::CancelResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("Cancel", &metadata, async {
            let id = convert::task_id("id", &request.id)?;
            let reason = convert::cancel_reason(request.reason)?;
            let task = self.engine.cancel(&scope, id, &reason).await?;
            Ok(pb::CancelResponse {
                task: Some(convert::task_to_proto(&task)),
            })
        })
        .await
    }

    async fn list(
        &self,
        request: Request<pb::ListRequest>,
    ) -> Result<Response<pb::ListResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("List", &metadata, async {
            let query = convert::list_query(request)?;
            let page = self.engine.list(&scope, &query).await?;
            Ok(pb::ListResponse {
                tasks: page
                    .tasks
                    .iter()
                    .map(|task| convert::task_to_proto(task))
                    .collect(),
                next_page_token: page
                    .next
                    .map(convert::encode_page_token)
                    .unwrap_or_default(),
            })
        })
        .await
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteRequest>,
    ) -> Result<Response<pb::DeleteResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("Delete", &metadata, async {
            let call_timeout = deadline::call_timeout(&metadata)?;
            let id = convert::task_id("id", &request.id)?;
            // How long a cancelled attempt may take to stop before the delete gives up.
            let wait = deadline::await_bound(None, call_timeout, self.engine.config().max_await)
                .min(DELETE_STOP_WAIT);
            self.engine
                .delete(&scope, id, request.cancel_if_running, wait)
                .await?;
            Ok(pb::DeleteResponse {})
        })
        .await
    }

    async fn list_kinds(
        &self,
        request: Request<pb::ListKindsRequest>,
    ) -> Result<Response<pb::ListKindsResponse>, Status> {
        let (metadata, _, _) = request.into_parts();
        handle("ListKinds", &metadata, async {
            let kinds = self.engine.list_kinds().await?;
            Ok(pb::ListKindsResponse {
                kinds: kinds
                    .into_iter()
                    .map(|kind| pb::KindInfo {
                        name: kind.name,
                        remote: kind.remote,
                        queued: kind.queued as u64,
                        pollers: kind.pollers as u32,
                        last_poll_time: kind.last_poll.map(convert::to_timestamp),
                        default_attempt_timeout: kind.attempt_timeout.map(convert::to_duration),
                    })
                    .collect(),
            })
        })
        .await
    }
}
