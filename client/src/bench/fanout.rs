//! `vow bench --mode watch-fanout`: how long one task's terminal change takes
//! to reach each of many watchers. A round submits one long `sleep` task,
//! attaches the watchers to it over the bench's connections, waits until
//! every stream holds its snapshot, cancels the task, and times each
//! watcher's arrival of the terminal change against the `end_time` the server
//! recorded. The two clocks agree only when the bench runs on the server's
//! host; elsewhere every delay carries their offset.
//!
//! Like the load generator it talks to the raw tonic stub over plain
//! channels, so the client library's retries never stretch a measurement.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use futures::future::join_all;
use indicatif::ProgressBar;
use tokio::{sync::oneshot, task::JoinSet, time::Instant};
use tonic::transport::Channel;
use vow_client::proto::{self, task_service_client::TaskServiceClient};

use super::load::{DeliveryCpu, IterationError, LoadReport, MAX_RECORDED_MICROS, backoff};
use crate::cli::render::human_duration;

/// The task every round watches: it would sleep for an hour in one step, so
/// it ends only when the round cancels it.
const SLEEP_MS: u64 = 3_600_000;

/// How long the watchers of one round may take to receive their snapshots.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the terminal change may take to reach every watcher of a round.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The kind of the watched task, as the report restates it.
pub const TASK_KIND: &str = "sleep";

/// A process on this host whose CPU time a round's deliveries cost: the
/// server's (`--server-pid`) or the bench's own.
#[derive(Clone, Copy, Debug)]
pub struct ProcessCpu(u32);

impl ProcessCpu {
    /// The process `pid`, if this host shows its threads' CPU time (Linux).
    pub fn find(pid: u32) -> Option<Self> {
        let process = Self(pid);
        process.threads_cpu().map(|_| process)
    }

    /// CPU time each of its threads has used, by thread id, to the
    /// nanosecond: the first field of each thread's `schedstat` (`stat`
    /// counts 10 ms ticks, a tenth of a whole round's deliveries). A running
    /// thread's count lags by up to a scheduler tick (1–4 ms), at both ends
    /// of a round alike.
    fn threads_cpu(self) -> Option<ThreadsCpu> {
        let threads = std::fs::read_dir(format!("/proc/{}/task", self.0)).ok()?;
        let mut used = HashMap::new();
        for thread in threads.flatten() {
            let Ok(schedstat) = std::fs::read_to_string(thread.path().join("schedstat")) else {
                continue; // ended since the listing
            };
            let nanos = schedstat.split_whitespace().next()?.parse::<u64>().ok()?;
            used.insert(thread.file_name(), nanos);
        }
        Some(ThreadsCpu(used))
    }
}

/// What [`ProcessCpu::threads_cpu`] read.
struct ThreadsCpu(HashMap<std::ffi::OsString, u64>);

impl ThreadsCpu {
    /// CPU time used between `self` and `later`: each thread's growth, a
    /// thread started in between in full. A thread that ended in between
    /// takes its last stretch with it (Tokio's blocking threads end after
    /// 10 s idle), so this can only read low, never below zero.
    fn used_until(&self, later: &ThreadsCpu) -> Duration {
        let nanos = later
            .0
            .iter()
            .map(|(thread, &after)| after.saturating_sub(self.0.get(thread).copied().unwrap_or(0)))
            .sum();
        Duration::from_nanos(nanos)
    }
}

/// Runs rounds of `watchers` watchers over `channels`: unrecorded ones until
/// `warmup` has passed, then recorded ones until `duration` has (at least
/// one). The report's latency is the delivery delays, its count the
/// deliveries and its window the wall time of the recorded rounds, and with
/// them the bench's CPU time spent delivering (on Linux) and, with `server`,
/// the server's.
pub async fn drive(
    channels: &[Channel],
    injector: &vow_client::TraceInjector,
    watchers: usize,
    warmup: Duration,
    duration: Duration,
    server: Option<ProcessCpu>,
    progress: &ProgressBar,
) -> LoadReport {
    let clients: Vec<_> = channels
        .iter()
        .map(|channel| TaskServiceClient::with_interceptor(channel.clone(), injector.clone()))
        .collect();
    let started = Instant::now();
    let warmup_end = started + warmup;
    while Instant::now() < warmup_end {
        progress.set_message(format!(
            "warming up {} / {}",
            human_duration(started.elapsed()),
            human_duration(warmup)
        ));
        progress.tick();
        run_round(&clients, watchers, None, None).await;
    }

    let bench = ProcessCpu::find(std::process::id());
    let mut report = LoadReport::empty();
    let window_start = Instant::now();
    loop {
        progress.set_message(format!(
            "measuring {} / {}  ·  round {}",
            human_duration(window_start.elapsed()),
            human_duration(duration),
            report.fanout_rounds + 1
        ));
        progress.tick();
        let round = run_round(&clients, watchers, server, bench).await;
        report.fanout_rounds += 1;
        let delivered = round.delays.len() as u64;
        // Only rounds whose deliveries were counted count their CPU.
        if delivered > 0 {
            for (total, spent) in [
                (&mut report.fanout_server_cpu, round.server_cpu),
                (&mut report.fanout_bench_cpu, round.bench_cpu),
            ] {
                if let Some(spent) = spent {
                    *total.get_or_insert_default() += DeliveryCpu {
                        spent,
                        deliveries: delivered,
                    };
                }
            }
        }
        report.completed += delivered;
        for delay in round.delays {
            let micros = delay.as_micros().min(u128::from(MAX_RECORDED_MICROS)) as u64;
            report.latency.saturating_record(micros.max(1));
        }
        for (error, count) in round.errors {
            report.record_errors(error, count);
        }
        if window_start.elapsed() >= duration {
            break;
        }
    }
    report.window = window_start.elapsed();
    progress.finish_and_clear();
    report
}

/// What one round measured.
struct RoundOutcome {
    /// From the task's `end_time` to each delivery of the terminal change.
    delays: Vec<Duration>,
    /// Failures, each with how many watchers (or calls) it hit.
    errors: Vec<(IterationError, u64)>,
    /// The server's CPU time from the cancel to the last delivery.
    server_cpu: Option<Duration>,
    /// The bench's own over the same span.
    bench_cpu: Option<Duration>,
}

/// One round: submit, attach every watcher, cancel, collect the deliveries,
/// read `end_time`. Never fails as a whole: what went wrong is in the errors.
async fn run_round(
    clients: &[super::Stub],
    watchers: usize,
    server: Option<ProcessCpu>,
    bench: Option<ProcessCpu>,
) -> RoundOutcome {
    let mut outcome = RoundOutcome {
        delays: Vec::with_capacity(watchers),
        errors: Vec::new(),
        server_cpu: None,
        bench_cpu: None,
    };
    let mut control = clients[0].clone();
    let id = match control.submit(sleep_request()).await {
        Ok(response) => response.into_inner().task.unwrap_or_default().id,
        Err(status) => {
            let error = IterationError::Rpc(status);
            // An overloaded or absent server is not asked again in a tight loop.
            let pause = backoff(&error);
            outcome.errors.push((error, 1));
            if let Some(pause) = pause {
                tokio::time::sleep(pause).await;
            }
            return outcome;
        }
    };

    let mut snapshots = Vec::with_capacity(watchers);
    let mut deliveries = JoinSet::new();
    for index in 0..watchers {
        let (attached, snapshot_received) = oneshot::channel();
        snapshots.push(snapshot_received);
        let client = clients[index % clients.len()].clone();
        deliveries.spawn(watch_until_end(client, id.clone(), attached));
    }
    // Cancelling only once every stream holds its snapshot makes the terminal
    // change a delivery to each of them, never a late watcher's first snapshot.
    // A watcher that failed before its snapshot drops its sender: it is
    // counted with the deliveries below.
    let attached = tokio::time::timeout(ATTACH_TIMEOUT, join_all(snapshots)).await;
    if attached.is_err() {
        // Whatever the stragglers would deliver after a late cancel is not a fan-out.
        collect(
            &mut deliveries,
            Instant::now(),
            "SNAPSHOT_TIMEOUT",
            &mut outcome,
        )
        .await;
        let _ = control.cancel(cancel_request(&id)).await;
        return outcome;
    }
    let server_before = server.and_then(ProcessCpu::threads_cpu);
    let bench_before = bench.and_then(ProcessCpu::threads_cpu);
    if let Err(status) = control.cancel(cancel_request(&id)).await {
        outcome.errors.push((IterationError::Rpc(status), 1));
        collect(
            &mut deliveries,
            Instant::now(),
            "NOT_CANCELLED",
            &mut outcome,
        )
        .await;
        return outcome;
    }
    let received = collect(
        &mut deliveries,
        Instant::now() + DELIVERY_TIMEOUT,
        "DELIVERY_TIMEOUT",
        &mut outcome,
    )
    .await;
    // The bench first: reading the server's threads is the bench's work.
    let bench_after = bench.and_then(ProcessCpu::threads_cpu);
    let server_after = server.and_then(ProcessCpu::threads_cpu);
    let used =
        |before: Option<ThreadsCpu>, after: Option<ThreadsCpu>| Some(before?.used_until(&after?));
    outcome.server_cpu = used(server_before, server_after);
    outcome.bench_cpu = used(bench_before, bench_after);

    let ended = match control.get(proto::GetRequest { id }).await {
        Ok(response) => response
            .into_inner()
            .task
            .and_then(|task| task.end_time)
            .and_then(|end_time| SystemTime::try_from(end_time).ok()),
        Err(status) => {
            outcome.errors.push((IterationError::Rpc(status), 1));
            return outcome;
        }
    };
    let Some(ended) = ended else {
        outcome
            .errors
            .push((IterationError::Task("TASK_NOT_FINISHED"), 1));
        return outcome;
    };
    // A delivery cannot precede the stored end (the store is written before
    // anything is published), so a negative delay is clock jitter: zero.
    outcome.delays.extend(
        received
            .iter()
            .map(|at| at.duration_since(ended).unwrap_or_default()),
    );
    outcome
}

/// Joins every watcher and returns when each received the terminal change.
/// Watchers still running at `give_up` are stopped and counted under `late`;
/// the others' failures are counted as they are.
async fn collect(
    deliveries: &mut JoinSet<Result<SystemTime, IterationError>>,
    give_up: Instant,
    late: &'static str,
    outcome: &mut RoundOutcome,
) -> Vec<SystemTime> {
    let mut received = Vec::with_capacity(deliveries.len());
    loop {
        let joined = match tokio::time::timeout_at(give_up, deliveries.join_next()).await {
            Ok(Some(joined)) => joined,
            Ok(None) => return received,
            Err(_elapsed) => {
                deliveries.abort_all();
                // Aborted watchers now join at once, as cancelled.
                let Some(joined) = deliveries.join_next().await else {
                    return received;
                };
                joined
            }
        };
        match joined {
            Ok(Ok(at)) => received.push(at),
            Ok(Err(error)) => outcome.errors.push((error, 1)),
            Err(stopped) if stopped.is_cancelled() => {
                outcome.errors.push((IterationError::Watch(late), 1));
            }
            Err(_panicked) => outcome
                .errors
                .push((IterationError::Watch("WATCHER_LOST"), 1)),
        }
    }
}

/// One watcher: opens the stream, signals `attached` on the first message
/// (the snapshot), and returns when the terminal change arrived (a task with
/// `end_time` set).
async fn watch_until_end(
    mut client: super::Stub,
    id: String,
    attached: oneshot::Sender<()>,
) -> Result<SystemTime, IterationError> {
    let request = proto::WatchRequest {
        id,
        ..Default::default()
    };
    let mut stream = client
        .watch(request)
        .await
        .map_err(IterationError::Rpc)?
        .into_inner();
    let mut attached = Some(attached);
    loop {
        let message = stream.message().await.map_err(IterationError::Rpc)?;
        let received = SystemTime::now();
        let Some(message) = message else {
            return Err(IterationError::Watch("STREAM_ENDED"));
        };
        let terminal = message
            .task
            .as_ref()
            .is_some_and(|task| task.end_time.is_some());
        if let Some(attached) = attached.take() {
            if terminal {
                // Not the cancel of this round: nothing to time.
                return Err(IterationError::Watch("ENDED_BEFORE_CANCEL"));
            }
            // The round may already have given up waiting: nothing to tell then.
            let _ = attached.send(());
            continue;
        }
        if terminal {
            // Read the stream to its OK: dropping it early would reset it, and
            // thousands of resets a round make the server's HTTP/2 layer
            // refuse the connection as a rapid-reset flood.
            while stream
                .message()
                .await
                .map_err(IterationError::Rpc)?
                .is_some()
            {}
            return Ok(received);
        }
    }
}

fn sleep_request() -> proto::SubmitRequest {
    let input = serde_json::json!({"ms": SLEEP_MS, "steps": 1});
    proto::SubmitRequest {
        kind: TASK_KIND.to_owned(),
        input: Some(proto::Payload {
            data: Some(proto::payload::Data::Json(vow_client::json_to_value(
                &input,
            ))),
            content_type: String::new(),
        }),
        ..Default::default()
    }
}

fn cancel_request(id: &str) -> proto::CancelRequest {
    proto::CancelRequest {
        id: id.to_owned(),
        reason: "vow bench: watch fan-out round".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn threads(used: &[(&str, u64)]) -> ThreadsCpu {
        ThreadsCpu(used.iter().map(|&(id, nanos)| (id.into(), nanos)).collect())
    }

    #[test]
    fn cpu_used_counts_each_threads_growth_and_new_threads_in_full() {
        let before = threads(&[("1", 1_000), ("2", 5_000), ("3", 900_000)]);
        // Thread 3 ended, taking its 900 µs out of any total; 4 started.
        let after = threads(&[("1", 4_000), ("2", 5_000), ("4", 2_000)]);
        assert_eq!(
            before.used_until(&after),
            Duration::from_nanos(3_000 + 2_000)
        );
    }

    #[test]
    fn this_process_shows_its_cpu_time() {
        let process = ProcessCpu::find(std::process::id()).expect("Linux shows /proc");
        let before = process.threads_cpu().unwrap();
        // A running thread's count moves at the scheduler's next tick: spin
        // until it has, within a bound.
        let bound = std::time::Instant::now() + Duration::from_secs(10);
        let mut spin = 0_u64;
        loop {
            for step in 0..1_000_000_u64 {
                spin = std::hint::black_box(spin.wrapping_add(step));
            }
            let after = process.threads_cpu().unwrap();
            if before.used_until(&after) > Duration::ZERO {
                break;
            }
            assert!(std::time::Instant::now() < bound, "no CPU time shown");
        }
    }
}
