//! Keeps vowd's own `tracing` spans (and the events inside them) away from
//! a layer, so that `tracing-opentelemetry` turns handlers' spans into
//! OpenTelemetry spans but leaves vowd's alone: those are made with the SDK
//! directly (see [`super::tracer`]). A per-layer filter would do the same
//! with less code, but it makes `tracing` ask the global filter about every
//! callsite at every call, disabled `trace!`s of hyper and h2 included,
//! which cost more than it saved.

use std::any::TypeId;

use tracing::{Event, Metadata, Subscriber, span};
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
    metadata.target().starts_with(env!("CARGO_CRATE_NAME"))
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
        Context,
        trace::{Span as _, TraceContextExt, Tracer as _, TracerProvider as _},
    };
    use opentelemetry_sdk::{
        error::OTelSdkResult,
        trace::{SdkTracerProvider, SpanData, SpanExporter},
    };
    use tracing_subscriber::layer::SubscriberExt;

    use super::WithoutOwnSpans;

    #[derive(Clone, Debug, Default)]
    struct Collect(Arc<Mutex<Vec<SpanData>>>);

    impl SpanExporter for Collect {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            self.0.lock().unwrap().extend(batch);
            Ok(())
        }
    }

    #[test]
    fn handler_spans_join_the_attempt_and_own_spans_stay_out() {
        let exported = Collect::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exported.clone())
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("test"))
            .with_context_activation(false);
        let subscriber = tracing_subscriber::registry().with(WithoutOwnSpans::new(layer));
        let attempt = provider.tracer("vowd").start("task.attempt");
        let attempt_id = attempt.span_context().span_id();
        let attempt = Context::current_with_span(attempt);

        tracing::subscriber::with_default(subscriber, || {
            let _attached = attempt.clone().attach();
            // vowd's own log span of the attempt, as the executor opens it.
            let own = tracing::info_span!("task.attempt", trace_id = "x", span_id = "y");
            let _in_own = own.enter();
            tracing::warn!("an event of vowd's own, inside its span");
            let handler = tracing::info_span!(target: "a_handler", "handler.work");
            handler.in_scope(|| tracing::info!(target: "a_handler", "inside"));
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
        assert_eq!(spans[0].events.len(), 1, "the handler's own event is kept");
    }
}
