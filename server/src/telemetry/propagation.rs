//! W3C trace context (`traceparent`, `tracestate`) and `baggage` across
//! process boundaries: read from gRPC metadata, stored on tasks, and turned
//! back into parent contexts and links.

use crate::engine::task::TraceContext;
use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt},
};
use opentelemetry_sdk::{
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{IdGenerator, RandomIdGenerator},
};

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
    extract_from(&HeaderExtractor(headers), headers.contains_key("baggage"))
}

/// The context of a task's submitter, as stored.
pub fn context_of(trace: &TraceContext) -> Context {
    extract_from(trace, !trace.baggage.is_empty())
}

/// What [`propagator`] extracts, from an empty parent context. Every RPC and
/// attempt extracts a context and few carry baggage: the composite
/// propagator would look for it, and copy the context, every time.
fn extract_from(extractor: &dyn Extractor, has_baggage: bool) -> Context {
    let context = TraceContextPropagator::new().extract_with_context(&Context::new(), extractor);
    if has_baggage {
        BaggagePropagator::new().extract_with_context(&context, extractor)
    } else {
        context
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            "traceparent" => &self.traceparent,
            "tracestate" => &self.tracestate,
            "baggage" => &self.baggage,
            _ => return None,
        };
        (!value.is_empty()).then_some(value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        ["traceparent", "tracestate", "baggage"]
            .into_iter()
            .filter(|key| self.get(key).is_some())
            .collect()
    }
}

/// The span context stored on a task, if it names a valid span.
pub fn span_context_of(trace: &TraceContext) -> Option<SpanContext> {
    let context = TraceContextPropagator::new().extract_with_context(&Context::new(), trace);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

impl Injector for TraceContext {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" => self.tracestate = value,
            "baggage" => self.baggage = value,
            _ => {}
        }
    }
}

/// The context to store on a task submitted now: the current span (the
/// Submit RPC's, a child of the caller's), so attempts become its children.
/// Without a valid current span (spans are not exported, or the RPC has
/// none), the caller's context as it came; without one of those either, a
/// new trace, so that every task has a trace id to search its logs by.
pub fn current_or(incoming: TraceContext) -> TraceContext {
    if crate::telemetry::exporting() {
        let context = Context::current();
        if context.span().span_context().is_valid() {
            let mut stored = TraceContext::default();
            TraceContextPropagator::new().inject_context(&context, &mut stored);
            BaggagePropagator::new().inject_context(&context, &mut stored);
            return stored;
        }
    }
    if incoming.trace_id().is_some() {
        return incoming;
    }
    let ids = RandomIdGenerator::default();
    let trace_id = ids.new_trace_id().to_string();
    let span_id = new_span_id();
    // The current RPC span stands for the span the task's context names.
    let span = tracing::Span::current();
    span.record("trace_id", trace_id.as_str());
    span.record("span_id", span_id.as_str());
    TraceContext {
        traceparent: format!("00-{trace_id}-{span_id}-01"),
        ..incoming
    }
}

/// A fresh 16-hex-digit span id, for spans that are logged but not exported.
pub fn new_span_id() -> String {
    RandomIdGenerator::default().new_span_id().to_string()
}

/// The context a handler runs in when spans are not exported: the
/// submitter's, with `span_id` (the attempt's, as logged) as the parent of
/// whatever the handler calls.
pub fn attempt_context(trace: &TraceContext, span_id: &str) -> Context {
    let submitter = context_of(trace);
    let parent = submitter.span().span_context().clone();
    match SpanId::from_hex(span_id) {
        Ok(span_id) if parent.is_valid() => submitter.with_remote_span_context(SpanContext::new(
            parent.trace_id(),
            span_id,
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        )),
        _ => submitter,
    }
}
