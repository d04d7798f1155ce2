//! The span of each RPC: a child of the caller's W3C context, named after
//! the method, with the `rpc.*` attributes of the OpenTelemetry conventions.
//! Handlers run inside it; `handle` records the status when they finish.

use std::time::Instant;

use tonic::Code;
use tracing::{Span, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{engine::task::TraceContext, telemetry};

/// Builds the span of one request (used as tonic's `trace_fn`). Health
/// checks and reflection get none: probes would drown real traces.
pub fn rpc_span(request: &http::Request<()>) -> Span {
    let path = request.uri().path().trim_start_matches('/');
    let Some((service, method)) = path.split_once('/') else {
        return Span::none();
    };
    if service.starts_with("grpc.") {
        return Span::none();
    }
    let span = tracing::info_span!(
        "rpc",
        // Plain &str values: recorded as they are, not through Display.
        otel.name = path,
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
        // For log lines when spans are not exported (see telemetry::exporting).
        trace_id = Empty,
        span_id = Empty,
    );
    if telemetry::exporting() {
        let _ = span.set_parent(telemetry::propagation::extract(request.headers()));
    } else if let Some(trace_id) = request
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(crate::engine::task::trace_id_of)
    {
        span.record("trace_id", trace_id);
        span.record("span_id", telemetry::propagation::new_span_id().as_str());
    }
    span
}

/// Records how an RPC ended on its span and in the metrics.
pub fn finish_rpc(method: &'static str, code: Code, started: Instant) {
    let span = Span::current();
    span.record("rpc.grpc.status_code", code as i64);
    // Server spans are errors only for the server's own faults (OTel semconv).
    if matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    ) {
        span.record("otel.status_code", "ERROR");
    }
    telemetry::metrics::record::rpc(method, code_name(code), started.elapsed());
}

/// Links the current span to the span that submitted a task, so a waiter's
/// trace leads to the task's own.
pub fn link_to_task(trace: &TraceContext) {
    if !telemetry::exporting() {
        return;
    }
    if let Some(task_span) = telemetry::propagation::span_context_of(trace) {
        Span::current().add_link(task_span);
    }
}

fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
