//! What a task kind does: the [`Handler`] trait, the context an attempt
//! gets, and the registry that maps kinds to handlers. `vowd` runs
//! handlers in its own process (its built-in kinds, or a custom build);
//! `vow_client::Worker` runs the same handlers in a worker process of its
//! own, through the WorkerService. A handler is written once for both.

mod types;

use std::{collections::BTreeMap, sync::Arc, time::SystemTime};

use async_trait::async_trait;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use types::{ErrorCode, MalformedTaskId, Payload, PayloadData, TaskError, TaskId};

/// Runs one kind of task. An attempt calls `run` once; returning `Err` fails
/// the attempt with that error's code, which decides whether it is retried.
/// A panic fails the attempt with `INTERNAL`, and the server keeps serving.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// Executes one attempt.
    async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError>;

    /// Checks an input at submit time, so a task that can never succeed is
    /// refused with `INVALID_ARGUMENT` instead of failing later. The default
    /// accepts everything.
    fn validate_input(&self, _input: &Payload) -> Result<(), String> {
        Ok(())
    }
}

/// Everything an attempt knows about its task.
pub struct HandlerContext {
    pub task_id: TaskId,
    pub kind: String,
    pub input: Arc<Payload>,
    pub labels: BTreeMap<String, String>,
    /// 1-based number of this attempt.
    pub attempt: u32,
    pub max_attempts: u32,
    /// When this attempt will be cancelled: the earlier of the attempt timeout
    /// and the task deadline.
    pub deadline: Option<SystemTime>,
    /// Fires when the attempt must stop: cancel, timeout, deadline or shutdown.
    pub cancellation: CancellationToken,
    pub progress: ProgressReporter,
}

impl HandlerContext {
    /// Reports progress. Cheap: reports are coalesced, and watchers see at
    /// most one per progress interval.
    pub fn report_progress(&self, percent: f32, message: impl Into<String>) {
        self.progress.report(percent, message.into());
    }

    /// True once the attempt has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// Completes when the attempt has been asked to stop.
    pub async fn cancelled(&self) {
        self.cancellation.cancelled().await
    }
}

/// One progress report.
#[derive(Clone, Debug, PartialEq)]
pub struct ProgressReport {
    pub percent: f32,
    pub message: String,
}

/// The handler's end of the progress channel; only the latest report is kept.
#[derive(Clone)]
pub struct ProgressReporter(Arc<watch::Sender<Option<ProgressReport>>>);

impl ProgressReporter {
    /// A reporter and the receiver the attempt loop reads.
    pub fn channel() -> (Self, watch::Receiver<Option<ProgressReport>>) {
        let (sender, receiver) = watch::channel(None);
        (Self(Arc::new(sender)), receiver)
    }

    fn report(&self, percent: f32, message: String) {
        let percent = if percent.is_finite() {
            percent.clamp(0.0, 100.0)
        } else {
            0.0
        };
        self.0
            .send_replace(Some(ProgressReport { percent, message }));
    }
}

/// Kinds the server can run.
#[derive(Clone, Default)]
pub struct HandlerRegistry {
    handlers: BTreeMap<String, Arc<dyn Handler>>,
}

impl HandlerRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers (or replaces) the handler of a kind.
    pub fn register(&mut self, kind: impl Into<String>, handler: impl Handler) -> &mut Self {
        self.handlers.insert(kind.into(), Arc::new(handler));
        self
    }

    /// The handler of a kind.
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(kind)
    }

    /// Known kinds, sorted.
    pub fn kinds(&self) -> impl Iterator<Item = &str> {
        self.handlers.keys().map(String::as_str)
    }
}

/// The message of a handler's panic, for the error that fails its attempt.
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    if let Some(message) = panic.downcast_ref::<&str>() {
        (*message).to_owned()
    } else if let Some(message) = panic.downcast_ref::<String>() {
        message.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}
