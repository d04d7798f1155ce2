//! Keeps vowd's own `tracing` spans (and the events inside them) away from
//! a layer, so that `tracing-opentelemetry` turns handlers' spans into
//! OpenTelemetry spans but leaves vowd's alone: those are made with the SDK
//! directly (see [`super::tracer`]). A per-layer filter would do the same
//! with less code, but it makes `tracing` ask the global filter about every
//! callsite at every call, disabled `trace!`s of hyper and h2 included,
//! which cost more than it saved.
//!
//! vowd's exported RPCs and attempts have no `tracing` span, so an event
//! written in one outside any span (vowd's own, or a handler's) would reach
//! no OpenTelemetry span at all. Such events are added to the span of the
//! attached context here, as `tracing-opentelemetry` adds events to its
//! spans: named by the message, with the level, target and fields as
//! attributes, and an ERROR event marking the span as failed.

use std::{any::TypeId, fmt};

use opentelemetry::{
    KeyValue,
    trace::{Status, TraceContextExt as _},
};
use tracing::{Event, Level, Metadata, Subscriber, field::Field, span};
use tracing_subscriber::{Layer, layer::Context, registry::LookupSpan};

/// `inner`, blind to the spans and events of this crate.
pub struct WithoutOwnSpans<L> {
    inner: L,
}

impl<L> WithoutOwnSpans<L> {
    pub fn new(inner: L) -> Self {
        Self { inner }
    }
}

fn is_own(metadata: &Metadata<'_>) -> bool {
    let crate_name = env!("CARGO_CRATE_NAME");
    metadata
        .target()
        .strip_prefix(crate_name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
}

/// Adds `event` to the exported span of vowd's that is running, if the
/// event was written outside every `tracing` span; true if it did.
fn add_to_own_span(event: &Event<'_>) -> bool {
    let metadata = event.metadata();
    let Some((context, _)) = super::own_span_context(metadata.target()) else {
        return false;
    };
    let mut fields = EventFields {
        message: None,
        attributes: vec![
            KeyValue::new("level", metadata.level().as_str()),
            KeyValue::new("target", metadata.target().to_owned()),
        ],
    };
    event.record(&mut fields);
    let span = context.span();
    if *metadata.level() == Level::ERROR {
        span.set_status(Status::error(fields.message.clone().unwrap_or_default()));
    }
    span.add_event(
        fields.message.unwrap_or_else(|| metadata.name().to_owned()),
        fields.attributes,
    );
    true
}

struct EventFields {
    message: Option<String>,
    attributes: Vec<KeyValue>,
}

impl tracing::field::Visit for EventFields {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = Some(value.to_owned());
        } else {
            self.attributes
                .push(KeyValue::new(field.name(), value.to_owned()));
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        match i64::try_from(value) {
            Ok(value) => self.record_i64(field, value),
            Err(_) => self.record_str(field, &value.to_string()),
        }
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.attributes.push(KeyValue::new(field.name(), value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

fn is_own_span<S>(id: &span::Id, context: &Context<'_, S>) -> bool
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    context.metadata(id).is_none_or(is_own)
}

impl<S, L> Layer<S> for WithoutOwnSpans<L>
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
    L: Layer<S>,
{
    fn on_register_dispatch(&self, subscriber: &tracing::Dispatch) {
        self.inner.on_register_dispatch(subscriber);
    }

    fn on_layer(&mut self, subscriber: &mut S) {
        self.inner.on_layer(subscriber);
    }

    fn on_new_span(
        &self,
        attributes: &span::Attributes<'_>,
        id: &span::Id,
        context: Context<'_, S>,
    ) {
        if !is_own(attributes.metadata()) {
            self.inner.on_new_span(attributes, id, context);
        }
    }

    fn on_record(&self, id: &span::Id, values: &span::Record<'_>, context: Context<'_, S>) {
        if !is_own_span(id, &context) {
            self.inner.on_record(id, values, context);
        }
    }

    fn on_follows_from(&self, id: &span::Id, follows: &span::Id, context: Context<'_, S>) {
        if !is_own_span(id, &context) {
            self.inner.on_follows_from(id, follows, context);
        }
    }

    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let in_a_span = event.parent().is_some()
            || (event.is_contextual() && context.lookup_current().is_some());
        if !in_a_span && add_to_own_span(event) {
            return;
        }
        if !is_own(event.metadata()) {
            self.inner.on_event(event, context);
        }
    }

    fn on_enter(&self, id: &span::Id, context: Context<'_, S>) {
        if !is_own_span(id, &context) {
            self.inner.on_enter(id, context);
        }
    }

    fn on_exit(&self, id: &span::Id, context: Context<'_, S>) {
        if !is_own_span(id, &context) {
            self.inner.on_exit(id, context);
        }
    }

    fn on_close(&self, id: span::Id, context: Context<'_, S>) {
        if !is_own_span(&id, &context) {
            self.inner.on_close(id, context);
        }
    }

    fn on_id_change(&self, old: &span::Id, new: &span::Id, context: Context<'_, S>) {
        self.inner.on_id_change(old, new, context);
    }

    // `tracing-opentelemetry` finds its layer through this to read a span's
    // OpenTelemetry context (log lines of handlers' spans use it).
    unsafe fn downcast_raw(&self, id: TypeId) -> Option<*const ()> {
        if id == TypeId::of::<Self>() {
            Some(std::ptr::from_ref(self).cast())
        } else {
            // SAFETY: forwarded unchanged; the inner layer upholds the contract.
            unsafe { self.inner.downcast_raw(id) }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::{
        Context, KeyValue,
        trace::{Span as _, Status, TraceContextExt, Tracer as _, TracerProvider as _},
    };
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SdkTracerProvider, SpanData, SpanExporter},
    };
    use tracing_subscriber::layer::SubscriberExt;

    use super::WithoutOwnSpans;
    use crate::telemetry::NamedOwnSpan;

    #[derive(Clone, Debug, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    /// A subscriber as vowd's with spans exported, whose spans are
    /// collected as they end; and the provider for vowd's own spans.
    fn exporting_subscriber() -> (Collect, SdkTracerProvider, impl tracing::Subscriber) {
        let exported = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exported.clone())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_context_activation(false);
        let subscriber = tracing_subscriber::registry().with(WithoutOwnSpans::new(layer));
        (exported, provider, subscriber)
    }

    #[test]
    fn handler_spans_join_the_attempt_and_own_spans_stay_out() {
        let (exported, provider, subscriber) = exporting_subscriber();
        let attempt = provider.tracer("vowd").start("task.attempt");
        let attempt_id = attempt.span_context().span_id();
        let attempt = Context::current_with_span(attempt);

        tracing::subscriber::with_default(subscriber, || {
            let _attached = attempt.clone().attach();
            // vowd's own log span, as the export-off path opens it.
            let own = tracing::info_span!("task.attempt", trace_id = "x", span_id = "y");
            let _in_own = own.enter();
            let handler = tracing::info_span!(target: "a_handler", "handler.work");
            handler.in_scope(|| {
                tracing::info!(target: "a_handler", "inside");
                tracing::warn!("an event of vowd's own, inside a handler's span");
            });
        });
        attempt.span().end();

        let spans = exported.0.lock().unwrap();
        let names: Vec<&str> = spans.iter().map(|span| span.name.as_ref()).collect();
        assert_eq!(names, ["handler.work", "task.attempt"], "{names:?}");
        assert_eq!(spans[0].parent_span_id, attempt_id);
        assert_eq!(
            spans[0].span_context.trace_id(),
            spans[1].span_context.trace_id()
        );
        let events: Vec<&str> = spans[0]
            .events
            .iter()
            .map(|event| event.name.as_ref())
            .collect();
        assert_eq!(events, ["inside"], "only the handler's own event");
    }

    /// Exported RPCs and attempts have no `tracing` span: events written in
    /// them outside any span land on the span of the attached context.
    #[test]
    fn events_outside_spans_land_on_the_running_own_span() {
        let (exported, provider, subscriber) = exporting_subscriber();
        let attempt = Context::current_with_span(provider.tracer("vowd").start("task.attempt"));

        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!("before: no span is running");
            let _attached = attempt.clone().attach();
            let _named = NamedOwnSpan::enter("task.attempt");
            tracing::warn!(task.attempt = 2_u64, "attempt failed");
            tracing::error!(target: "a_handler", "the handler gave up");
        });
        attempt.span().end();

        let spans = exported.0.lock().unwrap();
        assert_eq!(spans.len(), 1);
        let span = &spans[0];
        let events: Vec<&str> = span
            .events
            .iter()
            .map(|event| event.name.as_ref())
            .collect();
        assert_eq!(events, ["attempt failed", "the handler gave up"]);
        assert!(
            span.events[0]
                .attributes
                .contains(&KeyValue::new("task.attempt", 2_i64)),
            "{:?}",
            span.events[0].attributes
        );
        assert_eq!(span.status, Status::error("the handler gave up"));
    }
}
