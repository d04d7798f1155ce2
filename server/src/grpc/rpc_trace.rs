//! The span of each RPC: a child of the caller's W3C context, named after
//! the method, with the `rpc.*` attributes of the OpenTelemetry conventions.
//! [`RpcSpanLayer`] opens it around every call; handlers run inside it and
//! `finish_rpc` records the status when they finish. Health checks and
//! reflection get none: probes would drown real traces.

use std::{
    borrow::Cow,
    collections::HashMap,
    sync::LazyLock,
    task::{Context, Poll},
    time::Instant,
};

use futures::future::Either;
use opentelemetry::{
    KeyValue, Value,
    trace::{SpanKind, Status, TraceContextExt, Tracer as _},
};
use prost::Message as _;
use tonic::Code;
use tracing::{Instrument, Span, instrument::Instrumented};

use crate::{
    engine::task::TraceContext,
    telemetry::{self, InOwnSpan},
};

/// Wraps the gRPC services so that each call runs in its RPC span.
#[derive(Clone, Copy, Debug, Default)]
pub struct RpcSpanLayer;

impl<S> tower::Layer<S> for RpcSpanLayer {
    type Service = RpcSpans<S>;

    fn layer(&self, inner: S) -> RpcSpans<S> {
        RpcSpans { inner }
    }
}

/// See [`RpcSpanLayer`].
#[derive(Clone, Debug)]
pub struct RpcSpans<S> {
    inner: S,
}

impl<S, B> tower::Service<http::Request<B>> for RpcSpans<S>
where
    S: tower::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<Instrumented<S::Future>, InOwnSpan<S::Future>>;

    fn poll_ready(&mut self, context: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(context)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let path = request.uri().path().trim_start_matches('/');
        let Some((service, method)) = path
            .split_once('/')
            .filter(|(service, _)| !service.starts_with("grpc."))
        else {
            return Either::Left(self.inner.call(request).instrument(Span::none()));
        };
        let Some(tracer) = telemetry::tracer() else {
            let span = untraced_rpc_span(request.headers());
            return Either::Left(self.inner.call(request).instrument(span));
        };
        let parent = telemetry::propagation::extract(request.headers());
        let (name, service, method) = match OWN_METHODS.get(path) {
            Some(own) => (own.path.into(), own.service.into(), own.method.into()),
            None => (
                Cow::Owned(path.to_owned()),
                Value::from(service.to_owned()),
                Value::from(method.to_owned()),
            ),
        };
        let rpc = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", service),
                KeyValue::new("rpc.method", method),
            ])
            .start_with_context(tracer, &parent);
        // No `tracing` span: log lines written in the call take their ids
        // from this context (see telemetry::InOwnSpan). The span ends when
        // the call's future is dropped, as it completes: nothing a handler
        // does keeps a clone of this context.
        let context = parent.with_span(rpc);
        Either::Right(telemetry::in_own_span(
            self.inner.call(request),
            context,
            "rpc",
        ))
    }
}

/// The span name and `rpc.*` values of one of vowd's methods.
struct OwnMethod {
    path: &'static str,
    service: &'static str,
    method: &'static str,
}

/// vowd's methods by path, from its file descriptor set: made once, so an
/// RPC span copies no string for them (a span's strings are copied again
/// by the exporter before it converts them).
static OWN_METHODS: LazyLock<HashMap<&'static str, OwnMethod>> = LazyLock::new(|| {
    let files = prost_types::FileDescriptorSet::decode(vow_proto::FILE_DESCRIPTOR_SET)
        .expect("the file descriptor set built with the server decodes");
    let mut methods = HashMap::new();
    for file in &files.file {
        for service in &file.service {
            let service_name: &'static str =
                format!("{}.{}", file.package(), service.name()).leak();
            for method in &service.method {
                let path: &'static str = format!("{service_name}/{}", method.name()).leak();
                let method = &path[service_name.len() + 1..];
                methods.insert(
                    path,
                    OwnMethod {
                        path,
                        service: service_name,
                        method,
                    },
                );
            }
        }
    }
    methods
});

/// The log span of an RPC when spans are not exported: the caller's trace
/// id, if it sent one, and a span id for the call, for its log lines.
fn untraced_rpc_span(headers: &http::HeaderMap) -> Span {
    let trace_id = headers
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(crate::engine::task::trace_id_of);
    match trace_id {
        Some(trace_id) => tracing::info_span!(
            "rpc",
            trace_id,
            span_id = telemetry::propagation::new_span_id().as_str(),
        ),
        // Recorded by `current_or` if the call makes up a trace.
        None => tracing::info_span!(
            "rpc",
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
        ),
    }
}

/// Records how an RPC ended on its span and in the metrics.
pub fn finish_rpc(method: &'static str, code: Code, started: Instant) {
    if telemetry::exporting() {
        opentelemetry::trace::get_active_span(|span| {
            span.set_attribute(KeyValue::new("rpc.grpc.status_code", code as i64));
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
                span.set_status(Status::error(""));
            }
        });
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
        opentelemetry::trace::get_active_span(|span| span.add_link(task_span, Vec::new()));
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

#[cfg(test)]
mod tests {
    use super::OWN_METHODS;

    #[test]
    fn own_methods_name_their_spans_as_the_path_does() {
        let submit = &OWN_METHODS["vow.v1.TaskService/Submit"];
        assert_eq!(submit.path, "vow.v1.TaskService/Submit");
        assert_eq!(submit.service, "vow.v1.TaskService");
        assert_eq!(submit.method, "Submit");
        assert!(OWN_METHODS.contains_key("vow.v1.TaskService/Watch"));
        for (path, own) in OWN_METHODS.iter() {
            assert_eq!(format!("{}/{}", own.service, own.method), *path);
        }
    }
}
