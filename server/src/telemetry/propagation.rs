//! W3C trace context (`traceparent`, `tracestate`) and `baggage` across
//! process boundaries: read from gRPC metadata, stored on tasks, and turned
//! back into parent contexts and links.

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator},
    trace::{SpanContext, TraceContextExt},
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::engine::task::TraceContext;

/// The standard propagators: trace context and baggage.
pub fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// Reads propagation headers from HTTP/2 (gRPC) headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The caller's context from request headers.
pub fn extract(headers: &http::HeaderMap) -> Context {
    propagator().extract(&HeaderExtractor(headers))
}

/// The context of a task's submitter, as stored.
pub fn context_of(trace: &TraceContext) -> Context {
    let carrier: HashMap<String, String> = [
        ("traceparent", &trace.traceparent),
        ("tracestate", &trace.tracestate),
        ("baggage", &trace.baggage),
    ]
    .into_iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(key, value)| (key.to_owned(), value.clone()))
    .collect();
    propagator().extract(&carrier)
}

/// The span context stored on a task, if it names a valid span.
pub fn span_context_of(trace: &TraceContext) -> Option<SpanContext> {
    let context = context_of(trace);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

struct MapInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// The context to store on a task submitted now: the current span (the
/// Submit RPC's, a child of the caller's), so attempts become its children.
/// Without a valid current span, the caller's headers as they came.
pub fn current_or(incoming: TraceContext) -> TraceContext {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return incoming;
    }
    let mut carrier = HashMap::new();
    propagator().inject_context(&context, &mut MapInjector(&mut carrier));
    let mut take = |key: &str| carrier.remove(key).unwrap_or_default();
    TraceContext {
        traceparent: take("traceparent"),
        tracestate: take("tracestate"),
        baggage: take("baggage"),
    }
}
