//! `vow.v1.WorkerService`: adapts the wire to the engine's remote attempts
//! (`engine::workers`). No storage calls, no spawning.

use tonic::{Request, Response, Status};
use vow_proto::v1::{self as pb, worker_service_server::WorkerService};

use super::{
    convert, deadline,
    task_service::{handle, scope_of},
    worker_convert,
};
use crate::engine::Engine;

/// The gRPC face of remote attempts.
pub struct WorkerServiceImpl {
    engine: Engine,
}

impl WorkerServiceImpl {
    pub fn new(engine: Engine) -> Self {
        Self { engine }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerServiceImpl {
    async fn poll(
        &self,
        request: Request<pb::PollRequest>,
    ) -> Result<Response<pb::PollResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("Poll", &metadata, async {
            let call_timeout = deadline::call_timeout(&metadata)?;
            let requested = convert::await_timeout(request.timeout)?;
            let wait =
                deadline::await_bound(requested, call_timeout, self.engine.config().max_await);
            let spec = worker_convert::poll_spec(request, wait, scope)?;
            let leases = self.engine.poll(spec).await?;
            Ok(pb::PollResponse {
                leases: leases
                    .into_iter()
                    .map(worker_convert::lease_to_proto)
                    .collect(),
            })
        })
        .await
    }

    async fn heartbeat(
        &self,
        request: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("Heartbeat", &metadata, async {
            let progress = worker_convert::progress(request.progress)?;
            let renewal = self
                .engine
                .heartbeat(&scope, &request.token, progress)
                .await?;
            Ok(pb::HeartbeatResponse {
                expire_time: Some(convert::to_timestamp(renewal.expires_at)),
                cancel_requested: renewal.cancel_requested,
            })
        })
        .await
    }

    async fn complete(
        &self,
        request: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("Complete", &metadata, async {
            let outcome = worker_convert::outcome(request.outcome)?;
            let task = self
                .engine
                .complete(&scope, &request.token, outcome)
                .await?;
            Ok(pb::CompleteResponse {
                task: Some(convert::task_to_proto(&task)),
            })
        })
        .await
    }

    async fn release(
        &self,
        request: Request<pb::ReleaseRequest>,
    ) -> Result<Response<pb::ReleaseResponse>, Status> {
        let (metadata, extensions, request) = request.into_parts();
        let scope = scope_of(&extensions);
        handle("Release", &metadata, async {
            let (tokens, reason) = worker_convert::release(request)?;
            let released = self.engine.release(&scope, &tokens, &reason).await?;
            Ok(pb::ReleaseResponse {
                released: released as u32,
            })
        })
        .await
    }
}
