//! The load generator: `concurrency` callers spread over `connections`
//! HTTP/2 connections, each looping on one iteration (Submit+Await, Run or
//! Submit) as fast as the server answers. It talks to the raw tonic stub, not
//! the retrying `Client`, so the only per-request work beyond tonic's own is
//! one clone of a prepared request. Each caller records into its own
//! histogram (no shared lock on the hot path); they are merged at the end.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hdrhistogram::Histogram;
use indicatif::ProgressBar;
use tokio::{task::JoinSet, time::Instant};
use tonic::{Code, transport::Channel};
use vow_client::{
    ConnectOptions, Error,
    proto::{self, TaskState, task_service_client::TaskServiceClient},
};

use super::{
    Mode,
    remote::{DispatchClock, Moment},
};
use crate::cli::{json::code_name, render::human_duration};

/// Largest latency recorded exactly; slower iterations count as this.
pub(super) const MAX_RECORDED_MICROS: u64 = 60_000_000;

/// How long one Await may wait on the server.
const AWAIT_TIMEOUT: prost_types::Duration = prost_types::Duration {
    seconds: 30,
    nanos: 0,
};

/// How long in-flight iterations may take to finish once the window closed.
const DRAIN_GRACE: Duration = Duration::from_secs(40);

/// What to send, how hard, for how long.
#[derive(Clone, Debug)]
pub struct LoadPlan {
    pub mode: Mode,
    pub concurrency: usize,
    pub connections: usize,
    /// The task submitted by every iteration (Run sends the same fields).
    pub request: proto::SubmitRequest,
    /// Told of every acknowledged Submit (remote mode: dispatch latency).
    pub dispatch: Option<Arc<DispatchClock>>,
    /// Credentials every call carries (no trace context: the load is not traced).
    pub injector: vow_client::TraceInjector,
    /// Retry transient failures as the project's clients do (`--retry`),
    /// every Submit with a key of its own so that a repeat is safe.
    pub retry: Option<vow_client::RetryConfig>,
}

/// What one load run measured, over the window after the warmup.
pub struct LoadReport {
    /// Iterations that completed successfully inside the window.
    pub completed: u64,
    /// Length of the measured window.
    pub window: Duration,
    /// Latency of successful iterations, in microseconds.
    pub latency: Histogram<u64>,
    /// Calls sent again after a transient failure (with `--retry`).
    pub retried: u64,
    /// Failed iterations inside the window, by gRPC code or task state.
    pub errors: BTreeMap<String, u64>,
    /// The first error seen, to explain the counts.
    pub first_error: Option<String>,
    /// Watch fan-out rounds measured (0 in the other modes).
    pub fanout_rounds: u64,
    /// Watch fan-out with `--server-pid`: the server's CPU time from each
    /// measured round's cancel to its last delivery.
    pub fanout_server_cpu: Option<DeliveryCpu>,
    /// Watch fan-out: the bench's own CPU time over the same stretches.
    pub fanout_bench_cpu: Option<DeliveryCpu>,
    /// Remote mode: from each Submit acknowledged to its lease received, µs.
    pub dispatch: Option<Histogram<u64>>,
}

/// CPU time spent on watch fan-out rounds, and the deliveries they made.
#[derive(Clone, Copy, Debug, Default)]
pub struct DeliveryCpu {
    pub spent: Duration,
    pub deliveries: u64,
}

impl std::ops::AddAssign for DeliveryCpu {
    fn add_assign(&mut self, other: Self) {
        self.spent += other.spent;
        self.deliveries += other.deliveries;
    }
}

impl DeliveryCpu {
    /// The time per delivery, if any was made.
    pub fn per_delivery(self) -> Option<Duration> {
        let deliveries = u32::try_from(self.deliveries)
            .ok()
            .filter(|&count| count > 0)?;
        Some(self.spent / deliveries)
    }
}

impl LoadReport {
    /// Successful iterations per second.
    pub fn throughput(&self) -> f64 {
        self.completed as f64 / self.window.as_secs_f64()
    }
}

/// Why one iteration did not succeed.
pub(super) enum IterationError {
    Rpc(tonic::Status),
    /// The task ended in another state than SUCCEEDED (or Await gave up).
    Task(&'static str),
    /// A watch stream did not deliver the terminal change (watch fan-out).
    Watch(&'static str),
}

impl IterationError {
    /// The key it is counted under (a gRPC code name or an UPPER_SNAKE_CASE
    /// outcome) and a sentence for the first-error line.
    fn describe(self) -> (String, String) {
        match self {
            Self::Rpc(status) => (
                code_name(status.code() as i32),
                format!("{:?}: {}", status.code(), status.message()),
            ),
            Self::Task(what) | Self::Watch(what) => {
                (what.to_owned(), what.to_lowercase().replace('_', " "))
            }
        }
    }
}

impl LoadReport {
    /// A report of nothing yet, to absorb the rounds into.
    pub fn empty() -> Self {
        Self {
            completed: 0,
            window: Duration::ZERO,
            latency: new_histogram(),
            retried: 0,
            errors: BTreeMap::new(),
            first_error: None,
            fanout_rounds: 0,
            fanout_server_cpu: None,
            fanout_bench_cpu: None,
            dispatch: None,
        }
    }

    /// Counts `count` failures of one kind.
    pub(super) fn record_errors(&mut self, error: IterationError, count: u64) {
        let (key, text) = error.describe();
        *self.errors.entry(key).or_default() += count;
        self.first_error.get_or_insert(text);
    }

    /// Adds another measured window (a later round against the same server).
    pub fn absorb(&mut self, other: LoadReport) {
        self.completed += other.completed;
        self.retried += other.retried;
        self.window += other.window;
        // Every histogram here has the same bounds, so adding cannot fail.
        let _ = self.latency.add(&other.latency);
        for (key, count) in other.errors {
            *self.errors.entry(key).or_default() += count;
        }
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        match (&mut self.dispatch, other.dispatch) {
            (Some(mine), Some(theirs)) => {
                let _ = mine.add(&theirs);
            }
            (mine @ None, theirs) => *mine = theirs,
            _ => {}
        }
        self.fanout_rounds += other.fanout_rounds;
        for (mine, theirs) in [
            (&mut self.fanout_server_cpu, other.fanout_server_cpu),
            (&mut self.fanout_bench_cpu, other.fanout_bench_cpu),
        ] {
            if let Some(theirs) = theirs {
                *mine.get_or_insert_default() += theirs;
            }
        }
    }
}

/// Runs `plan`'s callers over `channels` for `warmup` (not measured), then
/// measures for `duration`, showing progress on `progress`.
pub async fn drive(
    channels: &[Channel],
    plan: &LoadPlan,
    warmup: Duration,
    duration: Duration,
    progress: &ProgressBar,
) -> LoadReport {
    let started = Instant::now();
    let window_start = started + warmup;
    let window_end = window_start + duration;
    let iterations = Arc::new(AtomicU64::new(0));

    let mut callers = JoinSet::new();
    for index in 0..plan.concurrency {
        let caller = Caller {
            client: TaskServiceClient::with_interceptor(
                channels[index % channels.len()].clone(),
                plan.injector.clone(),
            ),
            mode: plan.mode,
            submit: plan.request.clone(),
            run: run_request(&plan.request),
            window_start,
            window_end,
            iterations: Arc::clone(&iterations),
            dispatch: plan.dispatch.clone(),
            retry: plan.retry.clone(),
            retried: 0,
        };
        callers.spawn(caller.run());
    }

    let ticker = tokio::spawn(show_progress(
        progress.clone(),
        Arc::clone(&iterations),
        started,
        window_start,
        window_end,
    ));
    let mut report = LoadReport::empty();
    report.window = duration;
    let drained = tokio::time::timeout(window_end - Instant::now() + DRAIN_GRACE, async {
        while let Some(result) = callers.join_next().await {
            let Ok(tally) = result else { continue };
            report.absorb(LoadReport {
                completed: tally.completed,
                retried: tally.retried,
                window: Duration::ZERO,
                latency: tally.latency,
                errors: tally.errors,
                first_error: tally.first_error,
                fanout_rounds: 0,
                fanout_server_cpu: None,
                fanout_bench_cpu: None,
                dispatch: None,
            });
        }
    })
    .await;
    if drained.is_err() {
        callers.abort_all();
        *report
            .errors
            .entry("STUCK_AFTER_WINDOW".into())
            .or_default() += callers.len() as u64;
    }
    ticker.abort();
    progress.finish_and_clear();
    report
}

/// Opens `count` separate HTTP/2 connections (a tonic `Channel` is one).
pub async fn connect(
    server: &str,
    options: &ConnectOptions,
    count: usize,
) -> Result<Vec<Channel>, Error> {
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        channels.push(options.channel(server).await?);
    }
    Ok(channels)
}

fn run_request(request: &proto::SubmitRequest) -> proto::RunRequest {
    proto::RunRequest {
        kind: request.kind.clone(),
        input: request.input.clone(),
        labels: request.labels.clone(),
        priority: request.priority,
        not_before: request.not_before,
        retry: request.retry.clone(),
        attempt_timeout: request.attempt_timeout,
        deadline: request.deadline,
        ttl: request.ttl,
        retention: request.retention,
        idempotency_key: request.idempotency_key.clone(),
    }
}

pub(super) fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RECORDED_MICROS, 3)
        .expect("1 µs to 60 s at 3 significant figures is a valid histogram")
}

/// One simulated caller.
struct Caller {
    client: super::Stub,
    mode: Mode,
    submit: proto::SubmitRequest,
    run: proto::RunRequest,
    window_start: Instant,
    window_end: Instant,
    iterations: Arc<AtomicU64>,
    dispatch: Option<Arc<DispatchClock>>,
    retry: Option<vow_client::RetryConfig>,
    retried: u64,
}

/// What one caller counted.
struct Tally {
    completed: u64,
    retried: u64,
    latency: Histogram<u64>,
    errors: BTreeMap<String, u64>,
    first_error: Option<String>,
}

impl Caller {
    async fn run(mut self) -> Tally {
        let mut tally = Tally {
            completed: 0,
            retried: 0,
            latency: new_histogram(),
            errors: BTreeMap::new(),
            first_error: None,
        };
        loop {
            let started = Instant::now();
            if started >= self.window_end {
                tally.retried = self.retried;
                return tally;
            }
            let outcome = self.iterate().await;
            let finished = Instant::now();
            self.iterations.fetch_add(1, Ordering::Relaxed);
            // An iteration counts where it ends: inside the window or not at all.
            let counted = finished >= self.window_start && finished <= self.window_end;
            match outcome {
                Ok(()) if counted => {
                    tally.completed += 1;
                    let micros = (finished - started).as_micros() as u64;
                    tally
                        .latency
                        .saturating_record(micros.clamp(1, MAX_RECORDED_MICROS));
                }
                Ok(()) => {}
                Err(error) => {
                    let pause = backoff(&error);
                    if counted {
                        tally.record_error(error);
                    }
                    if let Some(pause) = pause {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
    }

    async fn iterate(&mut self) -> Result<(), IterationError> {
        match self.mode {
            Mode::SubmitAwait | Mode::Remote => {
                let mut submit = self.submit.clone();
                if self.retry.is_some() {
                    submit.idempotency_key = format!("bench-{}", uuid::Uuid::now_v7().simple());
                }
                let submitted = self
                    .retrying(|mut client| {
                        let submit = submit.clone();
                        async move { client.submit(submit).await }
                    })
                    .await?;
                let id = submitted.task.map(|task| task.id).unwrap_or_default();
                if let Some(dispatch) = &self.dispatch {
                    dispatch.mark(&id, Moment::Acknowledged);
                }
                let request = proto::AwaitRequest {
                    id,
                    timeout: Some(AWAIT_TIMEOUT),
                };
                let awaited = self
                    .retrying(|mut client| {
                        let request = request.clone();
                        async move { client.r#await(request).await }
                    })
                    .await?;
                if !awaited.done {
                    return Err(IterationError::Task("AWAIT_NOT_DONE"));
                }
                succeeded(awaited.task.as_ref())
            }
            Mode::Run => {
                let response = self.client.run(self.run.clone()).await;
                let task = response.map_err(IterationError::Rpc)?.into_inner().task;
                succeeded(task.as_ref())
            }
            Mode::SubmitOnly => {
                self.client
                    .submit(self.submit.clone())
                    .await
                    .map_err(IterationError::Rpc)?;
                Ok(())
            }
            Mode::WatchFanout => {
                unreachable!(
                    "watch-fanout runs in rounds (bench::fanout), never in the caller loop"
                )
            }
        }
    }
}

impl Caller {
    /// Sends a call that is safe to repeat; with `--retry`, again after a
    /// transient failure (as `vow_client::Client` does), with backoff.
    async fn retrying<T, F, Fut>(&mut self, mut call: F) -> Result<T, IterationError>
    where
        F: FnMut(super::Stub) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let mut failures = 0;
        let mut ceiling = Duration::ZERO;
        loop {
            let status = match call(self.client.clone()).await {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            let Some(retry) = &self.retry else {
                return Err(IterationError::Rpc(status));
            };
            failures += 1;
            if failures >= retry.max_attempts || !Error::from(status.clone()).is_transient() {
                return Err(IterationError::Rpc(status));
            }
            ceiling = match ceiling.is_zero() {
                true => retry.initial_backoff,
                false => (ceiling * 2).min(retry.max_backoff),
            };
            self.retried += 1;
            tokio::time::sleep(ceiling.mul_f64(rand::random::<f64>())).await;
        }
    }
}

fn succeeded(task: Option<&proto::Task>) -> Result<(), IterationError> {
    match task.map(|task| task.state()) {
        Some(TaskState::Succeeded) => Ok(()),
        Some(TaskState::Failed) => Err(IterationError::Task("TASK_FAILED")),
        Some(TaskState::Cancelled) => Err(IterationError::Task("TASK_CANCELLED")),
        _ => Err(IterationError::Task("TASK_NOT_FINISHED")),
    }
}

/// How long a caller pauses after an error, so an overloaded or absent
/// server is not hammered in a tight loop.
pub(super) fn backoff(error: &IterationError) -> Option<Duration> {
    let IterationError::Rpc(status) = error else {
        return None;
    };
    match status.code() {
        Code::ResourceExhausted => Some(
            Error::from(status.clone())
                .retry_after()
                .unwrap_or(Duration::from_millis(10))
                .min(Duration::from_secs(1)),
        ),
        Code::Unavailable => Some(Duration::from_millis(10)),
        _ => None,
    }
}

impl Tally {
    fn record_error(&mut self, error: IterationError) {
        let (key, text) = error.describe();
        *self.errors.entry(key).or_default() += 1;
        self.first_error.get_or_insert(text);
    }
}

/// Redraws the progress line a few times a second.
async fn show_progress(
    progress: ProgressBar,
    iterations: Arc<AtomicU64>,
    started: Instant,
    window_start: Instant,
    window_end: Instant,
) {
    let mut ticks = tokio::time::interval(Duration::from_millis(250));
    let mut last = (Instant::now(), 0_u64);
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let count = iterations.load(Ordering::Relaxed);
        let rate = (count - last.1) as f64 / (now - last.0).as_secs_f64().max(1e-3);
        last = (now, count);
        let phase = if now < window_start {
            format!(
                "warming up {} / {}",
                human_duration(now - started),
                human_duration(window_start - started)
            )
        } else {
            format!(
                "measuring {} / {}",
                human_duration(now.min(window_end) - window_start),
                human_duration(window_end - window_start)
            )
        };
        progress.set_message(format!("{phase}  ·  {rate:>9.0} iterations/s"));
        progress.tick();
    }
}
