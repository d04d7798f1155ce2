//! Outgoing trace context: every call carries the caller's current
//! OpenTelemetry context as W3C `traceparent`, `tracestate` and `baggage`
//! metadata, so the server's spans (and every attempt of a submitted task)
//! join the caller's trace.

use opentelemetry::{
    Context,
    propagation::{Injector, TextMapCompositePropagator, TextMapPropagator},
};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataKey, MetadataMap, MetadataValue},
    service::Interceptor,
};

/// A tonic interceptor that injects the current OpenTelemetry context into
/// each request's metadata.
///
/// The context is `opentelemetry::Context::current()`: the active span of a
/// `tracing` span when the `tracing-opentelemetry` layer is installed (it
/// activates the span's context while the span is entered), or a context
/// attached with the OpenTelemetry API. The propagator is the global one
/// (`opentelemetry::global::set_text_map_propagator`); while none is set, the
/// W3C trace-context and baggage propagators are used, so an application
/// that only installs a tracer still propagates.
///
/// It also sends the caller's credentials, `authorization: Bearer …`, on
/// every call when given a token (see [`crate::Client::with_token`]).
#[derive(Clone, Debug)]
pub struct TraceInjector {
    enabled: bool,
    authorization: Option<MetadataValue<Ascii>>,
}

impl TraceInjector {
    /// Injects when `enabled`; otherwise passes requests through untouched.
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            authorization: None,
        }
    }

    /// The same, injecting trace context when `enabled`.
    pub fn with_trace(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// The same credentials, without trace context (a worker's calls
    /// belong to no caller's trace).
    pub fn without_trace(&self) -> Self {
        self.clone().with_trace(false)
    }

    /// Also sends `authorization: Bearer <token>` (an API key or a JWT);
    /// `None` when the token cannot be a header value.
    pub fn with_bearer_token(mut self, token: &str) -> Option<Self> {
        let mut value: MetadataValue<Ascii> = format!("Bearer {token}").parse().ok()?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Some(self)
    }

    /// Whether requests get trace context.
    pub fn enabled(&self) -> bool {
        self.enabled
    }
}

impl Default for TraceInjector {
    fn default() -> Self {
        Self::new(true)
    }
}

impl Interceptor for TraceInjector {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if self.enabled {
            inject(&Context::current(), request.metadata_mut());
        }
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        Ok(request)
    }
}

/// Writes `context` into `metadata` with the global propagator, or the W3C
/// ones when the global propagator is still the no-op default.
pub fn inject(context: &Context, metadata: &mut MetadataMap) {
    let mut injector = MetadataInjector(metadata);
    opentelemetry::global::get_text_map_propagator(|propagator| {
        // The no-op default names no fields; any real propagator names some.
        if propagator.fields().next().is_some() {
            propagator.inject_context(context, &mut injector);
        } else {
            w3c_propagator().inject_context(context, &mut injector);
        }
    });
}

fn w3c_propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // A key or value that is not valid ASCII metadata is dropped rather
        // than failing the call: tracing must never break a request.
        let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes()),
            MetadataValue::try_from(value),
        ) else {
            return;
        };
        self.0.insert(key, value);
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::{
        KeyValue,
        baggage::BaggageExt,
        trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
    };

    use super::*;

    fn known_context() -> Context {
        let span = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "value")]).unwrap(),
        );
        Context::new()
            .with_remote_span_context(span)
            .with_baggage([KeyValue::new("tenant", "acme")])
    }

    fn intercepted(injector: &mut TraceInjector, context: Context) -> MetadataMap {
        let _attached = context.attach();
        injector
            .call(Request::new(()))
            .expect("the interceptor never refuses")
            .metadata()
            .clone()
    }

    #[test]
    fn injects_the_current_context_as_w3c_headers() {
        let metadata = intercepted(&mut TraceInjector::default(), known_context());
        assert_eq!(
            metadata.get("traceparent").unwrap(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(metadata.get("tracestate").unwrap(), "vendor=value");
        assert_eq!(metadata.get("baggage").unwrap(), "tenant=acme");
    }

    #[test]
    fn adds_nothing_without_a_span_or_when_disabled() {
        let metadata = intercepted(&mut TraceInjector::default(), Context::new());
        assert!(metadata.get("traceparent").is_none());
        let metadata = intercepted(&mut TraceInjector::new(false), known_context());
        assert!(metadata.is_empty());
    }
}
