//! Telemetry of the process: logs (text or JSON, every line with the trace
//! id of its span), OpenTelemetry spans exported over OTLP when the standard
//! `OTEL_EXPORTER_OTLP_*` variables ask for it, W3C trace-context
//! propagation, and Prometheus metrics. A leaf: the rest of the server only
//! calls in.

mod format;
mod ids;
pub mod metrics;
mod otlp;
mod own_spans;
pub mod propagation;
pub mod throttle;

use std::{
    cell::Cell,
    pin::Pin,
    sync::OnceLock,
    task::{self, Poll},
};

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    Resource,
    trace::{SdkTracer, SdkTracerProvider},
};
use tracing_subscriber::{EnvFilter, layer::SubscriberExt, util::SubscriberInitExt};

pub use ids::{FinishedSpan, record_span_with_context};
pub use metrics::{metrics_handle, serve_metrics};

/// Longest the flush of spans at exit may take.
const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(5);

/// The tracer of vowd's own spans (RPCs and attempts), set when spans are
/// exported.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Whether this process exports spans. Without an exporter, vowd makes no
/// OpenTelemetry spans at all (they would cost a fifth of the CPU per task
/// for nothing): trace ids still flow, taken from the callers' `traceparent`
/// or made up for a task submitted without one.
pub fn exporting() -> bool {
    TRACER.get().is_some()
}

/// The tracer for vowd's RPC and attempt spans, when spans are exported.
///
/// Those spans are made with the SDK directly, not from `tracing` spans
/// through `tracing-opentelemetry`: that layer's bookkeeping per span (a
/// builder filled field by field, extensions, a context lookup per parent)
/// cost more CPU per task than the SDK's own recording. Log lines written
/// in them take their ids and name from [`InOwnSpan`].
pub fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

thread_local! {
    /// The name of vowd's exported RPC or attempt span being polled on this
    /// thread (see [`InOwnSpan`]).
    static OWN_SPAN_NAME: Cell<Option<&'static str>> = const { Cell::new(None) };
}

pin_project_lite::pin_project! {
    /// A future that runs in one of vowd's exported spans: while it is
    /// polled, the span's context is current, and log lines written in it
    /// take their ids from that context and `name` as their span's name.
    /// Such spans have no `tracing` span (see [`tracer`]). The name is kept
    /// on the thread, not as a context value: a value would cost every
    /// RPC and attempt a map allocated for it.
    pub struct InOwnSpan<F> {
        #[pin]
        inner: F,
        context: opentelemetry::Context,
        name: &'static str,
    }
}

impl<F: Future> Future for InOwnSpan<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, task: &mut task::Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _attached = this.context.clone().attach();
        let _named = NamedOwnSpan::enter(this.name);
        this.inner.poll(task)
    }
}

/// Runs `inner` in the exported span of `context`, named `name` in logs.
pub fn in_own_span<F: Future>(
    inner: F,
    context: opentelemetry::Context,
    name: &'static str,
) -> InOwnSpan<F> {
    InOwnSpan {
        inner,
        context,
        name,
    }
}

/// Names the own span on this thread until dropped, then restores the
/// name of the one it was nested in, if any.
struct NamedOwnSpan(Option<&'static str>);

impl NamedOwnSpan {
    fn enter(name: &'static str) -> Self {
        Self(OWN_SPAN_NAME.replace(Some(name)))
    }
}

impl Drop for NamedOwnSpan {
    fn drop(&mut self) {
        OWN_SPAN_NAME.set(self.0);
    }
}

/// The context and name of vowd's exported RPC or attempt running on this
/// thread, for an event of `event_target` written in it; `None` outside one.
fn own_span_context(event_target: &str) -> Option<(opentelemetry::Context, &'static str)> {
    // The SDK's own diagnostics are written while it holds the current
    // context; reading the context again then would be a reentrant borrow.
    if event_target.starts_with("opentelemetry") {
        return None;
    }
    let name = OWN_SPAN_NAME.get()?;
    Some((opentelemetry::Context::current(), name))
}

/// Keeps the tracer provider alive; [`Telemetry::shutdown`] flushes spans.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans leave the process.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is still buffered, waiting at most [`SHUTDOWN_BOUND`]
    /// (a collector that stopped answering must not keep vowd from
    /// exiting). Call once, at the end.
    pub fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let (done, finished) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done.send(provider.shutdown());
        });
        match finished.recv_timeout(SHUTDOWN_BOUND) {
            Ok(Ok(())) => {}
            Ok(Err(error)) => eprintln!("vowd: flushing spans failed: {error}"),
            Err(_) => eprintln!(
                "vowd: flushing spans failed: the collector did not take them within {SHUTDOWN_BOUND:?}"
            ),
        }
    }
}

/// True when the standard variables name an OTLP endpoint for traces.
fn otlp_configured() -> bool {
    [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|name| std::env::var(name).is_ok_and(|value| !value.trim().is_empty()))
}

/// The resource from `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES`, named
/// `vowd` unless those say otherwise.
fn resource() -> Resource {
    let named_by_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|name| !name.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|attributes| attributes.contains("service.name="));
    let builder = Resource::builder();
    if named_by_env {
        builder.build()
    } else {
        builder.with_service_name("vowd").build()
    }
}

/// Installs the global subscriber and propagator. Must run inside the Tokio
/// runtime (the OTLP exporter and its batch processor live on it).
pub fn init(json_logs: bool) -> anyhow::Result<Telemetry> {
    opentelemetry::global::set_text_map_propagator(propagation::propagator());
    let provider = if otlp_configured() {
        // tonic's and reqwest's TLS both take ring, as the client's does.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let exporter = otlp::exporter()?;
        // The SDK's batch processor, on Tokio: it reads the OTEL_BSP_* variables.
        let batches = opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
        Some(
            SdkTracerProvider::builder()
                .with_id_generator(ids::PresetSpanIds::default())
                .with_resource(resource())
                .with_span_processor(batches)
                .build(),
        )
    } else {
        None
    };
    if let Some(provider) = &provider {
        let _ = TRACER.set(provider.tracer("vowd"));
    }
    // `tracing` spans of handlers (and the libraries they call) become
    // OpenTelemetry spans too, children of the attempt's context, which the
    // attempt makes current for its handler. vowd's own spans are left out
    // (see `tracer`). Code locations, thread names and busy/idle timings
    // would cost a clock read or an allocation on every poll of every task
    // for attributes nobody asked for. Making each span's context current on
    // every poll would too.
    let spans = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("vowd"))
            .with_error_records_to_exceptions(false)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_context_activation(false)
    });
    let spans = spans.map(own_spans::WithoutOwnSpans::new);
    let filter = std::env::var("VOW_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .and_then(|directives| EnvFilter::try_new(directives).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter).with(spans);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .fmt_fields(format::TraceIdFieldOnly);
    let json = json_logs;
    registry
        .with(logs.event_format(format::WithTrace { json }))
        .try_init()?;
    Ok(Telemetry { provider })
}
