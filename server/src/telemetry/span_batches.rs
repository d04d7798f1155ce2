//! Ended spans gathered into batches for the span exporter.
//!
//! The SDK's batch processor sends every ended span through a channel to
//! its task, which takes it with one turn of a select loop over that
//! channel and a ticker. Here an ended span is pushed onto the batch being
//! filled, under a mutex; only whole batches cross to the exporting task.
//! At three spans per task that saves vowd about 6,800 instructions per
//! task, a fifth of what exporting adds (BENCHMARKS.md, "Tracing
//! overhead"). Configured as the SDK's processor is, by the standard
//! `OTEL_BSP_*` variables.

use std::{
    str::FromStr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc::RecvTimeoutError,
    },
    time::Duration,
};

use opentelemetry::Context;
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{
        OTEL_BSP_EXPORT_TIMEOUT, OTEL_BSP_EXPORT_TIMEOUT_DEFAULT, OTEL_BSP_MAX_EXPORT_BATCH_SIZE,
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT, OTEL_BSP_MAX_QUEUE_SIZE,
        OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT, OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_SCHEDULE_DELAY_DEFAULT,
        Span, SpanData, SpanExporter, SpanProcessor,
    },
};
use tokio::sync::mpsc;

/// The shortest scheduled delay: a delay of 0 (allowed by the spec) means
/// as soon as possible, and a ticker needs a period.
const SHORTEST_DELAY: Duration = Duration::from_millis(1);

/// How spans are batched: the SDK's defaults, overridden by the standard
/// variables as the SDK reads them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchConfig {
    /// Spans held at most, filling or on their way to the exporter; more
    /// are dropped.
    pub max_queue_size: usize,
    /// Longest a span waits for its batch to fill.
    pub scheduled_delay: Duration,
    /// Spans per export, at most.
    pub max_export_batch_size: usize,
    /// Longest one export may take.
    pub max_export_timeout: Duration,
}

impl BatchConfig {
    /// The defaults, overridden by `OTEL_BSP_*` variables holding valid
    /// numbers (others are ignored, as the SDK ignores them).
    pub fn from_env() -> Self {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Self {
        let number = |name| lookup(name).and_then(|value| u64::from_str(value.trim()).ok());
        let count = |name| number(name).and_then(|value| usize::try_from(value).ok());
        let max_queue_size =
            count(OTEL_BSP_MAX_QUEUE_SIZE).unwrap_or(OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT);
        Self {
            max_queue_size,
            scheduled_delay: number(OTEL_BSP_SCHEDULE_DELAY)
                .map_or(OTEL_BSP_SCHEDULE_DELAY_DEFAULT, Duration::from_millis),
            max_export_batch_size: count(OTEL_BSP_MAX_EXPORT_BATCH_SIZE)
                .unwrap_or(OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT),
            max_export_timeout: number(OTEL_BSP_EXPORT_TIMEOUT)
                .map_or(OTEL_BSP_EXPORT_TIMEOUT_DEFAULT, Duration::from_millis),
        }
        .usable()
    }

    /// A ticker needs a period, a batch a span, and a batch no larger than
    /// the queue could ever fill (the SDK caps it the same way).
    fn usable(self) -> Self {
        Self {
            scheduled_delay: self.scheduled_delay.max(SHORTEST_DELAY),
            max_export_batch_size: self.max_export_batch_size.min(self.max_queue_size).max(1),
            ..self
        }
    }
}

/// A span processor that exports sampled spans in batches of
/// `max_export_batch_size`, or every `scheduled_delay` at the latest, one
/// export at a time, from a task on the Tokio runtime.
#[derive(Debug)]
pub struct SpanBatches {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

#[derive(Debug)]
struct Shared {
    config: BatchConfig,
    /// The batch being filled. Whatever is taken from it is sent on while
    /// the lock is held, so the exporting task gets batches in the order
    /// they were taken: a flush's reply then covers every span ended
    /// before the flush.
    filling: Mutex<Vec<SpanData>>,
    /// Spans filling or on their way, for `max_queue_size`.
    held: AtomicUsize,
    dropped: AtomicUsize,
    /// Set when the exporting task has ended, however it ended.
    stopped: AtomicBool,
}

/// Where the exporting task answers a flush or shutdown.
type Reply = std::sync::mpsc::SyncSender<OTelSdkResult>;

#[derive(Debug)]
enum Command {
    Export(Vec<SpanData>),
    Flush(Vec<SpanData>, Reply),
    Shutdown(Vec<SpanData>, Reply),
    SetResource(Resource),
}

impl Shared {
    fn lock_filling(&self) -> MutexGuard<'_, Vec<SpanData>> {
        // A panic while the lock was held leaves whole spans: still usable.
        self.filling.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn take(&self, filling: &mut Vec<SpanData>) -> Vec<SpanData> {
        std::mem::replace(
            filling,
            Vec::with_capacity(self.config.max_export_batch_size),
        )
    }
}

impl SpanBatches {
    /// Starts the exporting task. Must run inside the Tokio runtime.
    pub fn new<E: SpanExporter + 'static>(exporter: E, config: BatchConfig) -> Self {
        let config = config.usable();
        let shared = Arc::new(Shared {
            config,
            filling: Mutex::new(Vec::with_capacity(config.max_export_batch_size)),
            held: AtomicUsize::new(0),
            dropped: AtomicUsize::new(0),
            stopped: AtomicBool::new(false),
        });
        let (commands, received) = mpsc::unbounded_channel();
        tokio::spawn(export_batches(exporter, Arc::clone(&shared), received));
        tokio::spawn(report_drops(
            Arc::downgrade(&shared),
            config.scheduled_delay,
        ));
        Self { shared, commands }
    }

    /// Takes what is filling and asks the exporting task to export it,
    /// then to answer; waits for the answer, `timeout` at most if given.
    fn ask(
        &self,
        command: impl FnOnce(Vec<SpanData>, Reply) -> Command,
        timeout: Option<Duration>,
    ) -> OTelSdkResult {
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        {
            let mut filling = self.shared.lock_filling();
            let batch = self.shared.take(&mut filling);
            self.commands
                .send(command(batch, reply))
                .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        }
        // Blocks the calling thread, as the SDK's processor does: called
        // from a Tokio worker, the exporting task needs another worker.
        let Some(timeout) = timeout else {
            return answer.recv().map_err(|_| OTelSdkError::AlreadyShutdown)?;
        };
        answer.recv_timeout(timeout).map_err(|error| match error {
            RecvTimeoutError::Timeout => OTelSdkError::Timeout(timeout),
            RecvTimeoutError::Disconnected => OTelSdkError::AlreadyShutdown,
        })?
    }
}

impl SpanProcessor for SpanBatches {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        let shared = &self.shared;
        if shared.held.fetch_add(1, Ordering::Relaxed) >= shared.config.max_queue_size {
            shared.held.fetch_sub(1, Ordering::Relaxed);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut filling = shared.lock_filling();
        filling.push(span);
        if filling.len() >= shared.config.max_export_batch_size {
            let batch = shared.take(&mut filling);
            if let Err(mpsc::error::SendError(Command::Export(lost))) =
                self.commands.send(Command::Export(batch))
            {
                // The exporting task has ended: these spans are dropped.
                shared.held.fetch_sub(lost.len(), Ordering::Relaxed);
                shared.dropped.fetch_add(lost.len(), Ordering::Relaxed);
            }
        }
    }

    /// Waits for every batch ahead of it, each bounded by the export
    /// timeout, as the SDK's processor does.
    fn force_flush(&self) -> OTelSdkResult {
        self.ask(Command::Flush, None)
    }

    /// Gives up waiting after `timeout`; the exporting task goes on with
    /// what it holds until the runtime stops.
    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let result = self.ask(Command::Shutdown, Some(timeout));
        let dropped = self.shared.dropped.load(Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped_spans = dropped,
                max_queue_size = self.shared.config.max_queue_size,
                "spans were dropped: more ended than the exporter kept up with; \
                 raise OTEL_BSP_MAX_QUEUE_SIZE"
            );
        }
        result
    }

    fn set_resource(&mut self, resource: &Resource) {
        let _ = self.commands.send(Command::SetResource(resource.clone()));
    }
}

/// The exporting task: exports each batch it is sent, and what is filling
/// every `scheduled_delay`, until shut down or dropped.
async fn export_batches<E: SpanExporter>(
    mut exporter: E,
    shared: Arc<Shared>,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let delay = shared.config.scheduled_delay;
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + delay, delay);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let _stopped = StoppedOnExit(&shared);
    let mut health = ExportHealth::default();
    // The first export to fail since the last flush: a flush answers for
    // every span ended before it, not only for the batch it took.
    let mut failed_since_flush = None;
    loop {
        let command = tokio::select! {
            // Commands first: the resource, sent first, goes ahead of any
            // batch a tick takes.
            biased;
            command = commands.recv() => command,
            _ = ticks.tick() => Some(Command::Export(shared.take(&mut shared.lock_filling()))),
        };
        match command {
            // Nothing filled since the last tick: no export to judge.
            Some(Command::Export(batch)) if batch.is_empty() => {}
            Some(Command::Export(batch)) => {
                let exported = export(&exporter, &shared, batch).await;
                match (health.turn(exported.is_ok()), &exported) {
                    (Some(Turn::Failing), Err(error)) => {
                        tracing::warn!(%error, "exporting spans failed; the spans are dropped");
                    }
                    (Some(Turn::Recovered), _) => tracing::info!("exporting spans again"),
                    _ => {}
                }
                if let Err(error) = exported {
                    failed_since_flush.get_or_insert(error);
                }
            }
            Some(Command::Flush(batch, reply)) => {
                let exported = export(&exporter, &shared, batch).await;
                let _ = reply.send(failed_since_flush.take().map_or(exported, Err));
            }
            Some(Command::Shutdown(batch, reply)) => {
                let exported = export(&exporter, &shared, batch).await;
                let exported = failed_since_flush.take().map_or(exported, Err);
                let _ = reply.send(exported.and(exporter.shutdown()));
                return;
            }
            Some(Command::SetResource(resource)) => exporter.set_resource(&resource),
            // The processor was dropped without a shutdown.
            None => return,
        }
    }
}

/// Marks the exporting task ended when dropped: on return, and on a panic
/// of the exporter, after which every span is dropped.
struct StoppedOnExit<'a>(&'a Shared);

impl Drop for StoppedOnExit<'_> {
    fn drop(&mut self) {
        self.0.stopped.store(true, Ordering::Relaxed);
        if std::thread::panicking() {
            tracing::error!("the span exporter panicked: spans are no longer exported");
        }
    }
}

/// Tells the log, every `scheduled_delay` at most, how many spans have
/// been dropped, while they are: on its own task, since exports that hang
/// hold up the exporting one.
async fn report_drops(shared: Weak<Shared>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut told = 0;
    loop {
        ticks.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        // Once exporting has ended, drops are the exporter's story, told
        // at shutdown or by the panic.
        if shared.stopped.load(Ordering::Relaxed) {
            return;
        }
        let dropped = shared.dropped.load(Ordering::Relaxed);
        if dropped > told {
            told = dropped;
            tracing::warn!(
                dropped_spans = dropped,
                max_queue_size = shared.config.max_queue_size,
                "spans are being dropped: more end than the exporter keeps up with; \
                 raise OTEL_BSP_MAX_QUEUE_SIZE"
            );
        }
    }
}

/// Whether exports have been failing. With the collector gone every batch
/// fails: the log gets a line when exports start failing and one when they
/// work again, not one per batch.
#[derive(Debug, Default)]
struct ExportHealth {
    failing: bool,
}

#[derive(Debug, PartialEq, Eq)]
enum Turn {
    Failing,
    Recovered,
}

impl ExportHealth {
    /// Notes how an export went; says so when that is a turn.
    fn turn(&mut self, exported: bool) -> Option<Turn> {
        let failing = !exported;
        if failing == self.failing {
            return None;
        }
        self.failing = failing;
        Some(if failing {
            Turn::Failing
        } else {
            Turn::Recovered
        })
    }
}

async fn export<E: SpanExporter>(
    exporter: &E,
    shared: &Shared,
    batch: Vec<SpanData>,
) -> OTelSdkResult {
    if batch.is_empty() {
        return Ok(());
    }
    let spans = batch.len();
    let timeout = shared.config.max_export_timeout;
    let result = tokio::time::timeout(timeout, exporter.export(batch)).await;
    shared.held.fetch_sub(spans, Ordering::Relaxed);
    result.unwrap_or(Err(OTelSdkError::Timeout(timeout)))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::{SpanKind, TraceId, Tracer as _, TracerProvider as _};
    use opentelemetry_sdk::trace::{
        SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
    };
    use tokio::sync::Semaphore;

    use super::*;

    /// An exporter that keeps the names of what it is sent, batch by batch.
    /// Each export first takes a permit from `gate`, when there is one.
    #[derive(Clone, Debug, Default)]
    struct Recorder {
        batches: Arc<Mutex<Vec<Vec<String>>>>,
        shut_down: Arc<Mutex<bool>>,
        resource: Arc<Mutex<Option<Resource>>>,
        gate: Option<Arc<Semaphore>>,
        /// Exports still to fail, without keeping their spans.
        failures: Arc<AtomicUsize>,
    }

    impl Recorder {
        fn gated() -> (Self, Arc<Semaphore>) {
            let gate = Arc::new(Semaphore::new(0));
            let recorder = Self {
                gate: Some(Arc::clone(&gate)),
                ..Self::default()
            };
            (recorder, gate)
        }

        fn batches(&self) -> Vec<Vec<String>> {
            self.batches.lock().unwrap().clone()
        }

        fn names(&self) -> Vec<String> {
            self.batches().concat()
        }

        /// Waits, boundedly, until `done` holds for the batches exported.
        fn wait_for(&self, what: &str, done: impl Fn(&[Vec<String>]) -> bool) {
            wait_until(what, || done(&self.batches()));
        }
    }

    /// Waits until `done` holds, failing the test after 10 s.
    fn wait_until(what: &str, done: impl Fn() -> bool) {
        let bound = std::time::Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(std::time::Instant::now() < bound, "never {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    impl SpanExporter for Recorder {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            if let Some(gate) = &self.gate {
                gate.acquire().await.expect("the gate stays open").forget();
            }
            let fail = |left: usize| left.checked_sub(1);
            if self
                .failures
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, fail)
                .is_ok()
            {
                return Err(OTelSdkError::InternalFailure("refused".into()));
            }
            let names = batch.iter().map(|span| span.name.to_string()).collect();
            self.batches.lock().unwrap().push(names);
            Ok(())
        }

        fn shutdown(&self) -> OTelSdkResult {
            *self.shut_down.lock().unwrap() = true;
            Ok(())
        }

        fn set_resource(&mut self, resource: &Resource) {
            *self.resource.lock().unwrap() = Some(resource.clone());
        }
    }

    fn config(max_queue_size: usize, max_export_batch_size: usize) -> BatchConfig {
        BatchConfig {
            max_queue_size,
            scheduled_delay: Duration::from_secs(3600),
            max_export_batch_size,
            max_export_timeout: Duration::from_secs(30),
        }
    }

    fn provider_over(batches: SpanBatches) -> SdkTracerProvider {
        SdkTracerProvider::builder()
            .with_span_processor(batches)
            .build()
    }

    fn end_spans(provider: &SdkTracerProvider, names: std::ops::Range<usize>) {
        let tracer = provider.tracer("test");
        for index in names {
            tracer.in_span(format!("span {index}"), |_| {});
        }
    }

    fn names(range: std::ops::Range<usize>) -> Vec<String> {
        range.map(|index| format!("span {index}")).collect()
    }

    // Flushes block the calling thread until the exporting task answers:
    // that task needs a worker of a multi-threaded runtime.

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_batch_is_exported_at_once_the_rest_when_flushed() {
        let recorder = Recorder::default();
        let provider = provider_over(SpanBatches::new(recorder.clone(), config(100, 4)));
        end_spans(&provider, 0..5);
        recorder.wait_for("exported a batch", |batches| !batches.is_empty());
        assert_eq!(recorder.batches(), [names(0..4)], "the full batch alone");
        provider.force_flush().unwrap();
        assert_eq!(recorder.batches(), [names(0..4), names(4..5)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_are_exported_within_the_scheduled_delay() {
        let recorder = Recorder::default();
        let config = BatchConfig {
            scheduled_delay: Duration::from_millis(20),
            ..config(100, 50)
        };
        let provider = provider_over(SpanBatches::new(recorder.clone(), config));
        end_spans(&provider, 0..3);
        recorder.wait_for("exported on the delay", |batches| {
            batches.concat() == names(0..3)
        });
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn flush_and_shutdown_export_what_is_filling() {
        let recorder = Recorder::default();
        let provider = provider_over(SpanBatches::new(recorder.clone(), config(100, 50)));
        end_spans(&provider, 0..2);
        provider.force_flush().unwrap();
        assert_eq!(recorder.names(), names(0..2));
        end_spans(&provider, 2..3);
        provider.shutdown().unwrap();
        assert_eq!(recorder.names(), names(0..3));
        assert!(
            *recorder.shut_down.lock().unwrap(),
            "the exporter shut down"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_waits_for_batches_on_their_way() {
        let (recorder, gate) = Recorder::gated();
        let provider = provider_over(SpanBatches::new(recorder.clone(), config(100, 2)));
        end_spans(&provider, 0..5);
        let flushing = std::thread::spawn({
            let provider = provider.clone();
            move || provider.force_flush()
        });
        gate.add_permits(3);
        flushing.join().unwrap().unwrap();
        assert_eq!(recorder.batches(), [names(0..2), names(2..4), names(4..5)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_beyond_the_queue_are_dropped_and_counted() {
        let (recorder, gate) = Recorder::gated();
        let batches = SpanBatches::new(recorder.clone(), config(4, 2));
        let shared = Arc::clone(&batches.shared);
        let provider = provider_over(batches);
        end_spans(&provider, 0..7);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 3, "three over four");
        gate.add_permits(2);
        recorder.wait_for("exported both batches", |batches| batches.len() == 2);
        assert_eq!(recorder.names(), names(0..4));
        // Exported spans leave the queue: there is room again.
        end_spans(&provider, 7..8);
        gate.add_permits(1);
        provider.force_flush().unwrap();
        assert_eq!(recorder.names().last().map(String::as_str), Some("span 7"));
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_flush_answers_for_batches_that_failed_before_it() {
        let recorder = Recorder {
            failures: Arc::new(AtomicUsize::new(1)),
            ..Recorder::default()
        };
        let provider = provider_over(SpanBatches::new(recorder.clone(), config(100, 2)));
        end_spans(&provider, 0..3);
        assert!(provider.force_flush().is_err(), "spans 0 and 1 were lost");
        assert_eq!(recorder.names(), names(2..3));
        end_spans(&provider, 3..4);
        provider
            .force_flush()
            .expect("nothing lost since the last flush");
    }

    /// An exporter that panics.
    #[derive(Debug)]
    struct Panicking;

    impl SpanExporter for Panicking {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            panic!("the exporter broke")
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn after_the_exporter_panics_spans_are_counted_as_dropped() {
        let batches = SpanBatches::new(Panicking, config(100, 1));
        let shared = Arc::clone(&batches.shared);
        let provider = provider_over(batches);
        end_spans(&provider, 0..1);
        wait_until("the task ended", || shared.stopped.load(Ordering::Relaxed));
        end_spans(&provider, 1..3);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 2);
        assert_eq!(
            shared.held.load(Ordering::Relaxed),
            1,
            "only the span lost in the panic"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_scheduled_delay_of_zero_exports_soon() {
        let recorder = Recorder::default();
        let config = BatchConfig {
            scheduled_delay: Duration::ZERO,
            ..config(100, 50)
        };
        let provider = provider_over(SpanBatches::new(recorder.clone(), config));
        end_spans(&provider, 0..2);
        recorder.wait_for("exported soon", |batches| batches.concat() == names(0..2));
    }

    /// An exporter whose exports never finish.
    #[derive(Debug)]
    struct Hanging;

    impl SpanExporter for Hanging {
        async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
            std::future::pending().await
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_export_that_hangs_times_out_and_frees_its_room() {
        let config = BatchConfig {
            max_export_timeout: Duration::from_millis(20),
            ..config(2, 2)
        };
        let batches = SpanBatches::new(Hanging, config);
        let shared = Arc::clone(&batches.shared);
        let provider = provider_over(batches);
        end_spans(&provider, 0..1);
        // The provider wraps its processors' errors in one of its own.
        let flushed = provider.force_flush();
        assert!(format!("{flushed:?}").contains("Timeout"), "{flushed:?}");
        end_spans(&provider, 1..3);
        assert_eq!(shared.dropped.load(Ordering::Relaxed), 0, "room again");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_providers_resource_reaches_the_exporter() {
        let recorder = Recorder::default();
        let resource = Resource::builder().with_service_name("batched").build();
        let provider = SdkTracerProvider::builder()
            .with_resource(resource.clone())
            .with_span_processor(SpanBatches::new(recorder.clone(), config(10, 10)))
            .build();
        // The resource goes ahead of any batch: a flush answers after it.
        provider.force_flush().unwrap();
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

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spans_not_sampled_are_not_exported() {
        let recorder = Recorder::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(RecordOnly)
            .with_span_processor(SpanBatches::new(recorder.clone(), config(10, 1)))
            .build();
        end_spans(&provider, 0..3);
        provider.force_flush().unwrap();
        assert_eq!(recorder.names(), Vec::<String>::new());
    }

    #[test]
    fn export_failures_are_told_once_per_turn() {
        let mut health = ExportHealth::default();
        let turns: Vec<Option<Turn>> = [true, false, false, false, true, true, false]
            .into_iter()
            .map(|exported| health.turn(exported))
            .collect();
        assert_eq!(
            turns,
            [
                None,
                Some(Turn::Failing),
                None,
                None,
                Some(Turn::Recovered),
                None,
                Some(Turn::Failing),
            ]
        );
    }

    #[test]
    fn the_config_is_the_sdks_defaults_overridden_by_valid_variables() {
        let from = |pairs: &[(&str, &str)]| {
            let pairs: Vec<(String, String)> = pairs
                .iter()
                .map(|(name, value)| (name.to_string(), value.to_string()))
                .collect();
            BatchConfig::from_lookup(move |name| {
                pairs
                    .iter()
                    .find(|(set, _)| set == name)
                    .map(|(_, value)| value.clone())
            })
        };
        assert_eq!(
            from(&[]),
            BatchConfig {
                max_queue_size: 2048,
                scheduled_delay: Duration::from_secs(5),
                max_export_batch_size: 512,
                max_export_timeout: Duration::from_secs(30),
            }
        );
        assert_eq!(
            from(&[
                ("OTEL_BSP_MAX_QUEUE_SIZE", "65536"),
                ("OTEL_BSP_SCHEDULE_DELAY", " 200 "),
                ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "64"),
                ("OTEL_BSP_EXPORT_TIMEOUT", "1000"),
            ]),
            BatchConfig {
                max_queue_size: 65536,
                scheduled_delay: Duration::from_millis(200),
                max_export_batch_size: 64,
                max_export_timeout: Duration::from_secs(1),
            }
        );
        let odd = from(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1000"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "-1"),
        ]);
        assert_eq!(odd.max_export_batch_size, 100, "no larger than the queue");
        assert_eq!(odd.scheduled_delay, Duration::from_secs(5));
        assert_eq!(odd.max_export_timeout, Duration::from_secs(30));
        let at_once = from(&[("OTEL_BSP_SCHEDULE_DELAY", "0")]);
        assert_eq!(at_once.scheduled_delay, Duration::from_millis(1));
        let empty_batches = from(&[("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "0")]);
        assert_eq!(empty_batches.max_export_batch_size, 1);
    }
}
