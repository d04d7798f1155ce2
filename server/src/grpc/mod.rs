//! The gRPC adapter: the only module that sees tonic and generated types.
//! It converts and validates input, calls the engine, converts output and
//! maps errors.

pub(crate) mod convert;
pub(crate) mod deadline;
mod request_size;
mod rpc_trace;
mod shared_encoding;
mod status;
mod task_service;
pub(crate) mod worker_convert;
mod worker_service;

pub use convert::ERROR_DOMAIN;
pub use deadline::parse_grpc_timeout;
pub use request_size::{REQUEST_TOO_LARGE, RequestSizeLayer};
pub use rpc_trace::RpcSpanLayer;
pub use task_service::TaskServiceImpl;
pub use worker_service::WorkerServiceImpl;
