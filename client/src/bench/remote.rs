//! `vow bench --mode remote`: the submit-then-await load of a remote kind,
//! run by Rust workers (`vow_client::Worker`) in this process, and the
//! dispatch latency: from the Submit acknowledged to the lease received by
//! a waiting worker (zero when the lease arrives first).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use hdrhistogram::Histogram;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vow_client::{
    Client,
    worker::{Handler, HandlerContext, HandlerRegistry, Payload, TaskError, Worker},
};

use super::load::{MAX_RECORDED_MICROS, new_histogram};

/// The two moments of each task's dispatch, matched by task id.
#[derive(Debug, Default)]
pub struct DispatchClock {
    pending: Mutex<HashMap<String, (Moment, Instant)>>,
    latency: Mutex<Option<Histogram<u64>>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Moment {
    Acknowledged,
    Leased,
}

impl DispatchClock {
    /// Records one moment of a task; the second completes a measurement.
    pub fn mark(&self, id: &str, moment: Moment) {
        let now = Instant::now();
        let first = {
            let mut pending = self.pending.lock().expect("not poisoned");
            match pending.remove(id) {
                Some(first) => first,
                None => {
                    pending.insert(id.to_owned(), (moment, now));
                    return;
                }
            }
        };
        let (acknowledged, leased) = match first.0 {
            Moment::Acknowledged => (first.1, now),
            Moment::Leased => (now, first.1),
        };
        let micros = leased.saturating_duration_since(acknowledged).as_micros() as u64;
        if let Some(latency) = self.latency.lock().expect("not poisoned").as_mut() {
            latency.saturating_record(micros.clamp(1, MAX_RECORDED_MICROS));
        }
    }

    /// Starts measuring (after the warmup).
    pub fn start_measuring(&self) {
        *self.latency.lock().expect("not poisoned") = Some(new_histogram());
    }

    /// What was measured.
    pub fn take(&self) -> Option<Histogram<u64>> {
        self.latency.lock().expect("not poisoned").take()
    }
}

/// Echoes its input and marks when its lease arrived.
struct Echo(Arc<DispatchClock>);

#[async_trait::async_trait]
impl Handler for Echo {
    async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError> {
        self.0.mark(&context.task_id.to_string(), Moment::Leased);
        Ok(Payload::clone(&context.input))
    }
}

/// Rust workers of one kind, running until dropped.
pub struct Workers {
    stop: CancellationToken,
    running: Vec<JoinHandle<Result<(), vow_client::Error>>>,
}

impl Workers {
    /// Starts `count` workers of `kind` on `client`, each running up to
    /// `concurrency` attempts at once.
    pub fn start(
        client: &Client,
        kind: &str,
        count: usize,
        concurrency: usize,
        clock: Arc<DispatchClock>,
    ) -> Self {
        let stop = CancellationToken::new();
        let running = (0..count.max(1))
            .map(|index| {
                let mut handlers = HandlerRegistry::new();
                handlers.register(kind.to_owned(), Echo(clock.clone()));
                let worker = Worker::new(client, handlers)
                    .worker_id(format!("bench-{}-{index}", std::process::id()))
                    .concurrency(concurrency);
                tokio::spawn(worker.run(stop.clone().cancelled_owned()))
            })
            .collect();
        Self { stop, running }
    }

    /// Stops the workers and waits for them to drain.
    pub async fn stop(self) {
        self.stop.cancel();
        for worker in self.running {
            let _ = worker.await;
        }
    }
}
