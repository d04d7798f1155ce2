//! The ceiling server: the same `vow.v1.TaskService` contract with nothing of
//! the engine behind it. Submit stores a oneshot channel keyed by a fresh id
//! and completes it at once with the echoed input; Await takes the channel
//! and waits on it; Run does both in one call. What remains is the cost of
//! gRPC, HTTP/2 and protobuf on this machine: the best any task server built
//! on tonic could do, so `vow bench --ceiling` reports vowd as a fraction of it.
//!
//! It lives in the library so tests can serve it in-process, over TLS too;
//! `vow ceiling-server` runs it as a process of its own.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use tokio::{net::TcpListener, sync::oneshot};
use tonic::{
    Request, Response, Status,
    transport::{ServerTlsConfig, server::TcpIncoming},
};

use crate::proto::{
    self, Task, TaskState,
    task_service_server::{TaskService, TaskServiceServer},
};

/// Serves the ceiling service on `listener` until `shutdown` completes, over
/// TLS when `tls` is given (with `client_ca_root` set, it requires clients to
/// present a certificate).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// println!("ceiling server on {}", listener.local_addr()?);
/// vow_client::ceiling::serve(listener, None, std::future::pending()).await?;
/// # Ok(()) }
/// ```
pub async fn serve(
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(TaskServiceServer::new(CeilingService::default()))
        // The same socket option as vowd: small frames must not wait for Nagle.
        .serve_with_incoming_shutdown(
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown,
        )
        .await
}

/// Finished results waiting for their Await, keyed by task id.
#[derive(Default)]
struct CeilingService {
    results: Mutex<HashMap<String, oneshot::Receiver<Task>>>,
}

impl CeilingService {
    fn results(&self) -> std::sync::MutexGuard<'_, HashMap<String, oneshot::Receiver<Task>>> {
        // The map holds no invariant a panicking holder could break.
        self.results.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A task as vowd's echo would leave it, input and output both carried.
fn task(id: String, kind: String, input: Option<proto::Payload>, state: TaskState) -> Task {
    let output = (state == TaskState::Succeeded)
        .then(|| input.clone())
        .flatten();
    Task {
        id,
        kind,
        state: state as i32,
        input,
        output,
        attempt: u32::from(state == TaskState::Succeeded),
        max_attempts: 1,
        ..Default::default()
    }
}

fn unimplemented() -> Status {
    Status::unimplemented("the ceiling server has only Submit, Await and Run")
}

fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[tonic::async_trait]
impl TaskService for CeilingService {
    async fn submit(
        &self,
        request: Request<proto::SubmitRequest>,
    ) -> Result<Response<proto::SubmitResponse>, Status> {
        let request = request.into_inner();
        let id = new_id();
        let (complete, result) = oneshot::channel();
        let finished = task(
            id.clone(),
            request.kind.clone(),
            request.input.clone(),
            TaskState::Succeeded,
        );
        // The receiver is alive in this scope, so the send cannot fail.
        let _ = complete.send(finished);
        self.results().insert(id.clone(), result);
        let snapshot = task(id, request.kind, request.input, TaskState::Queued);
        Ok(Response::new(proto::SubmitResponse {
            task: Some(snapshot),
            deduplicated: false,
        }))
    }

    async fn r#await(
        &self,
        request: Request<proto::AwaitRequest>,
    ) -> Result<Response<proto::AwaitResponse>, Status> {
        let id = request.into_inner().id;
        let Some(result) = self.results().remove(&id) else {
            return Err(Status::not_found(format!("no task {id}")));
        };
        let task = result
            .await
            .map_err(|_| Status::internal("the result was dropped"))?;
        Ok(Response::new(proto::AwaitResponse {
            task: Some(task),
            done: true,
        }))
    }

    async fn run(
        &self,
        request: Request<proto::RunRequest>,
    ) -> Result<Response<proto::RunResponse>, Status> {
        let request = request.into_inner();
        let (complete, result) = oneshot::channel();
        let _ = complete.send(task(
            new_id(),
            request.kind,
            request.input,
            TaskState::Succeeded,
        ));
        let task = result
            .await
            .map_err(|_| Status::internal("the result was dropped"))?;
        Ok(Response::new(proto::RunResponse { task: Some(task) }))
    }

    async fn await_many(
        &self,
        _request: Request<proto::AwaitManyRequest>,
    ) -> Result<Response<proto::AwaitManyResponse>, Status> {
        Err(unimplemented())
    }

    type WatchStream = futures::stream::Empty<Result<proto::WatchResponse, Status>>;

    async fn watch(
        &self,
        _request: Request<proto::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        Err(unimplemented())
    }

    async fn get(
        &self,
        _request: Request<proto::GetRequest>,
    ) -> Result<Response<proto::GetResponse>, Status> {
        Err(unimplemented())
    }

    async fn cancel(
        &self,
        _request: Request<proto::CancelRequest>,
    ) -> Result<Response<proto::CancelResponse>, Status> {
        Err(unimplemented())
    }

    async fn list(
        &self,
        _request: Request<proto::ListRequest>,
    ) -> Result<Response<proto::ListResponse>, Status> {
        Err(unimplemented())
    }

    async fn delete(
        &self,
        _request: Request<proto::DeleteRequest>,
    ) -> Result<Response<proto::DeleteResponse>, Status> {
        Err(unimplemented())
    }

    async fn list_kinds(
        &self,
        _request: Request<proto::ListKindsRequest>,
    ) -> Result<Response<proto::ListKindsResponse>, Status> {
        Err(unimplemented())
    }
}
