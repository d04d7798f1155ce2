//! Span ids, random as the SDK makes them, except for a span whose id was
//! chosen earlier: a remote attempt's span gets its id when the task is
//! leased (the worker's spans become its children at once), and is
//! recorded when the attempt ends, maybe on another replica. The SDK's
//! builder takes no span id, so the chosen one is handed to the generator
//! through a thread-local for the one synchronous `start` call.

use std::{cell::Cell, time::SystemTime};

use opentelemetry::{
    KeyValue,
    trace::{SpanId, Status, TraceContextExt as _, TraceId, Tracer as _},
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer};

use super::propagation::{self, TraceContext};

thread_local! {
    static NEXT_SPAN_ID: Cell<Option<SpanId>> = const { Cell::new(None) };
}

/// The SDK's random ids, but for a span id set just before its span starts.
#[derive(Debug, Default)]
pub struct PresetSpanIds(RandomIdGenerator);

impl IdGenerator for PresetSpanIds {
    fn new_trace_id(&self) -> TraceId {
        self.0.new_trace_id()
    }

    fn new_span_id(&self) -> SpanId {
        NEXT_SPAN_ID
            .with(Cell::take)
            .unwrap_or_else(|| self.0.new_span_id())
    }
}

/// A span that already happened, to record in one go.
pub struct FinishedSpan<'a> {
    pub name: &'static str,
    /// The context it is a child of.
    pub parent: &'a TraceContext,
    /// Its own context, as handed out when it started (its span id).
    pub own: &'a TraceContext,
    pub start: SystemTime,
    pub attributes: Vec<KeyValue>,
    /// Its error status, if it failed.
    pub error: Option<String>,
}

/// Records `span` with the span id of its own context, ending it now.
pub fn record_span_with_context(tracer: &SdkTracer, span: FinishedSpan<'_>) {
    let parent = propagation::context_of(span.parent);
    let span_id = propagation::span_context_of(span.own).map(|own| own.span_id());
    NEXT_SPAN_ID.with(|next| next.set(span_id));
    let started = tracer
        .span_builder(span.name)
        .with_kind(opentelemetry::trace::SpanKind::Consumer)
        .with_start_time(span.start)
        .with_attributes(span.attributes)
        .start_with_context(tracer, &parent);
    // Not sampled, the SDK asks for no id: do not leave it for another span.
    NEXT_SPAN_ID.with(Cell::take);
    let context = parent.with_span(started);
    if let Some(error) = span.error {
        context.span().set_status(Status::error(error));
    }
    context.span().end();
}
