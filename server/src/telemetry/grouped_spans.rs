//! Ended spans handed to the SDK's batch processor in groups.
//!
//! The SDK's Tokio batch processor queues every ended span on a channel
//! whose receiving task then wakes for it: at tens of thousands of spans a
//! second, one wake-up and one turn of its select loop per span. Handing it
//! spans in groups wakes it once per group; it drains the rest of the group
//! in the same turn.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak},
    time::Duration,
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    Resource,
    error::OTelSdkResult,
    trace::{Span, SpanData, SpanProcessor},
};

/// Spans handed over together.
const GROUP: usize = 64;

/// Longest a span waits here when fewer than a group end: a small share of
/// the batch processor's own delay (5 s by default).
const HOLD: Duration = Duration::from_millis(100);

/// A span processor that passes ended spans to `P` in groups of [`GROUP`],
/// or every [`HOLD`] at the latest.
#[derive(Debug)]
pub struct GroupedSpans<P: SpanProcessor> {
    shared: Arc<Shared<P>>,
}

#[derive(Debug)]
struct Shared<P> {
    /// Written only by `set_resource`, while the provider is built.
    inner: RwLock<P>,
    pending: Mutex<Vec<SpanData>>,
    /// Held by whoever hands a group over, taken while `pending` is still
    /// held: so a flush, which takes it after `pending`, waits for every
    /// group taken before it to reach `inner`.
    handing_over: Mutex<()>,
}

impl<P: SpanProcessor> Shared<P> {
    /// Takes what `pending` holds and hands it over after every group taken
    /// before it.
    fn hand_over(&self, mut pending: MutexGuard<'_, Vec<SpanData>>) {
        let group = if pending.is_empty() {
            Vec::new()
        } else {
            std::mem::replace(&mut *pending, Vec::with_capacity(GROUP))
        };
        let _handing_over = unpoisoned(self.handing_over.lock());
        drop(pending);
        let inner = unpoisoned(self.inner.read());
        for span in group {
            inner.on_end(span);
        }
    }

    /// Hands over everything pending, and waits for groups on their way.
    fn pass_on(&self) {
        self.hand_over(self.lock_pending());
    }

    fn lock_pending(&self) -> MutexGuard<'_, Vec<SpanData>> {
        unpoisoned(self.pending.lock())
    }
}

/// A lock's guard even after a panic while it was held: the data here (a
/// `Vec` of whole spans, a processor) stays usable.
fn unpoisoned<T>(result: Result<T, PoisonError<T>>) -> T {
    result.unwrap_or_else(PoisonError::into_inner)
}

impl<P: SpanProcessor + 'static> GroupedSpans<P> {
    /// Wraps `inner`. Must run inside the Tokio runtime: a task there passes
    /// on held spans.
    pub fn new(inner: P) -> Self {
        let shared = Arc::new(Shared {
            inner: RwLock::new(inner),
            pending: Mutex::new(Vec::with_capacity(GROUP)),
            handing_over: Mutex::new(()),
        });
        tokio::spawn(pass_on_held(Arc::downgrade(&shared)));
        Self { shared }
    }
}

/// Passes on what is held every [`HOLD`], for as long as the processor
/// lives (in vowd, as long as the process: the provider stays installed).
async fn pass_on_held<P: SpanProcessor>(shared: Weak<Shared<P>>) {
    let mut ticks = tokio::time::interval(HOLD);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.pass_on();
    }
}

impl<P: SpanProcessor> SpanProcessor for GroupedSpans<P> {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        unpoisoned(self.shared.inner.read()).on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let mut pending = self.shared.lock_pending();
        pending.push(span);
        if pending.len() >= GROUP {
            self.shared.hand_over(pending);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.shared.pass_on();
        unpoisoned(self.shared.inner.read()).force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.shared.pass_on();
        unpoisoned(self.shared.inner.read()).shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        unpoisoned(self.shared.inner.write()).set_resource(resource);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanKind, TraceId, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{
        SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
    };

    use super::*;

    /// An inner processor that keeps what it is handed, and whether it was
    /// flushed or shut down.
    #[derive(Clone, Debug, Default)]
    struct Recorder {
        ended: Arc<Mutex<Vec<SpanData>>>,
        shut_down: Arc<Mutex<bool>>,
        resource: Arc<Mutex<Option<Resource>>>,
        /// How long taking one span takes.
        slowness: Duration,
    }

    impl Recorder {
        fn names(&self) -> Vec<String> {
            let ended = self.ended.lock().unwrap();
            ended.iter().map(|span| span.name.to_string()).collect()
        }
    }

    impl SpanProcessor for Recorder {
        fn on_start(&self, _span: &mut Span, _cx: &Context) {}

        fn on_end(&self, span: SpanData) {
            std::thread::sleep(self.slowness);
            self.ended.lock().unwrap().push(span);
        }

        fn force_flush(&self) -> OTelSdkResult {
            Ok(())
        }

        fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
            *self.shut_down.lock().unwrap() = true;
            Ok(())
        }

        fn set_resource(&mut self, resource: &Resource) {
            *self.resource.lock().unwrap() = Some(resource.clone());
        }
    }

    fn provider_over(recorder: &Recorder) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_span_processor(GroupedSpans::new(recorder.clone()))
            .build()
    }

    fn end_spans(provider: &SdkTracerProvider, count: usize) {
        let tracer = provider.tracer("test");
        for index in 0..count {
            tracer.in_span(format!("span {index}"), |_| {});
        }
    }

    #[tokio::test]
    async fn a_full_group_is_handed_over_at_once_in_order() {
        let recorder = Recorder::default();
        let provider = provider_over(&recorder);
        end_spans(&provider, GROUP + 1);
        let expected: Vec<String> = (0..GROUP).map(|index| format!("span {index}")).collect();
        assert_eq!(
            recorder.names(),
            expected,
            "the group, not the span after it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn held_spans_are_handed_over_within_the_hold() {
        let recorder = Recorder::default();
        let provider = provider_over(&recorder);
        // The passing task's first tick is immediate: spans ended after it
        // wait for the next one, a hold later.
        tokio::time::sleep(Duration::from_millis(1)).await;
        end_spans(&provider, 3);
        tokio::time::sleep(HOLD / 2).await;
        assert_eq!(recorder.names(), Vec::<String>::new(), "still held");
        tokio::time::sleep(HOLD / 2).await;
        assert_eq!(recorder.names(), ["span 0", "span 1", "span 2"]);
    }

    #[tokio::test]
    async fn flush_and_shutdown_hand_over_what_is_held() {
        let recorder = Recorder::default();
        let provider = provider_over(&recorder);
        end_spans(&provider, 2);
        provider.force_flush().unwrap();
        assert_eq!(recorder.names(), ["span 0", "span 1"]);
        end_spans(&provider, 1);
        provider.shutdown().unwrap();
        assert_eq!(recorder.names(), ["span 0", "span 1", "span 0"]);
        assert!(*recorder.shut_down.lock().unwrap());
    }

    #[tokio::test]
    async fn a_flush_waits_for_a_group_on_its_way() {
        let recorder = Recorder {
            slowness: Duration::from_millis(1),
            ..Recorder::default()
        };
        let provider = provider_over(&recorder);
        let ending = std::thread::spawn({
            let provider = provider.clone();
            move || end_spans(&provider, GROUP)
        });
        // The group is on its way once the first of it has arrived.
        let bound = std::time::Instant::now() + Duration::from_secs(10);
        while recorder.names().is_empty() {
            assert!(std::time::Instant::now() < bound, "no group handed over");
            std::thread::yield_now();
        }
        provider.force_flush().unwrap();
        assert_eq!(
            recorder.names().len(),
            GROUP,
            "the whole group before the flush"
        );
        ending.join().unwrap();
    }

    #[tokio::test]
    async fn the_providers_resource_reaches_the_inner_processor() {
        let recorder = Recorder::default();
        let resource = Resource::builder().with_service_name("grouped").build();
        let _provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(GroupedSpans::new(recorder.clone()))
            .build();
        assert_eq!(*recorder.resource.lock().unwrap(), Some(resource));
    }

    /// Records every span but marks none sampled.
    #[derive(Clone, Debug)]
    struct RecordOnly;

    impl ShouldSample for RecordOnly {
        fn should_sample(
            &self,
            _parent: Option<&Context>,
            _trace_id: TraceId,
            _name: &str,
            _kind: &SpanKind,
            _attributes: &[opentelemetry::KeyValue],
            _links: &[opentelemetry::trace::Link],
        ) -> SamplingResult {
            SamplingResult {
                decision: SamplingDecision::RecordOnly,
                attributes: Vec::new(),
                trace_state: Default::default(),
            }
        }
    }

    #[tokio::test]
    async fn spans_not_sampled_are_not_handed_over() {
        let recorder = Recorder::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(RecordOnly)
            .with_span_processor(GroupedSpans::new(recorder.clone()))
            .build();
        end_spans(&provider, GROUP);
        provider.force_flush().unwrap();
        assert_eq!(recorder.names(), Vec::<String>::new());
    }
}
