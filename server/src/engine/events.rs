//! The event path inside one process. The store reports every committed
//! change here in commit order; the hub fans it out to the waiters and
//! watchers of that task and to filter subscribers.
//!
//! A task gets a topic when someone first listens to it. The topic keeps the
//! last `history_len` changes, so a watcher that lost its stream can resume
//! after the revision it saw without a gap. Topics of unfinished tasks stay
//! until the task finishes or is deleted; a finished task's topic goes with
//! its last listener.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::broadcast;

use super::task::{TaskId, TaskRecord};
use crate::store::ChangeFeed;

/// Changes buffered per topic for listeners that are briefly behind; one who
/// falls further behind is told it lagged and re-reads the current state.
const TOPIC_CAPACITY: usize = 32;
/// Buffer of the all-tasks topic used by filter subscribers.
const FIREHOSE_CAPACITY: usize = 4096;

/// A published change: the task as stored after it.
pub type TaskEvent = Arc<TaskRecord>;

struct Topic {
    sender: broadcast::Sender<TaskEvent>,
    /// The latest changes, contiguous in revision.
    history: VecDeque<TaskEvent>,
    finished: bool,
}

/// Fan-out of task changes to whoever listens in this process.
pub struct EventHub {
    topics: Mutex<HashMap<TaskId, Topic>>,
    firehose: broadcast::Sender<TaskEvent>,
    history_len: usize,
    live_waiters: AtomicUsize,
    live_watchers: AtomicUsize,
}

impl EventHub {
    /// A hub keeping up to `history_len` changes per watched task.
    pub fn new(history_len: usize) -> Self {
        Self {
            topics: Mutex::default(),
            firehose: broadcast::channel(FIREHOSE_CAPACITY).0,
            history_len: history_len.max(1),
            live_waiters: AtomicUsize::new(0),
            live_watchers: AtomicUsize::new(0),
        }
    }

    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, Topic>> {
        self.topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Starts listening to one task. Subscribe before reading the store, so no
    /// change committed after the read can be missed.
    pub fn subscribe(self: &Arc<Self>, id: TaskId) -> TaskSubscription {
        self.subscribe_with_history(id).0
    }

    /// Starts listening to one task and returns the retained changes, taken
    /// atomically with the subscription: every later change arrives on the
    /// subscription, every earlier retained one is in the history.
    pub fn subscribe_with_history(
        self: &Arc<Self>,
        id: TaskId,
    ) -> (TaskSubscription, Vec<TaskEvent>) {
        let mut topics = self.topics();
        let topic = topics.entry(id).or_insert_with(|| Topic {
            sender: broadcast::channel(TOPIC_CAPACITY).0,
            history: VecDeque::new(),
            finished: false,
        });
        let receiver = topic.sender.subscribe();
        let history = topic.history.iter().cloned().collect();
        let subscription = TaskSubscription {
            hub: self.clone(),
            id,
            receiver: Some(receiver),
        };
        (subscription, history)
    }

    /// Starts listening to every task's changes.
    pub fn subscribe_all(&self) -> broadcast::Receiver<TaskEvent> {
        self.firehose.subscribe()
    }

    /// Counts a waiter (Await, Run, AwaitMany) until the guard drops.
    pub fn waiter_guard(self: &Arc<Self>) -> GaugeGuard {
        GaugeGuard::new(self.clone(), Gauge::Waiters)
    }

    /// Counts a watcher (Watch stream) until the guard drops.
    pub fn watcher_guard(self: &Arc<Self>) -> GaugeGuard {
        GaugeGuard::new(self.clone(), Gauge::Watchers)
    }

    /// Waiters alive now.
    pub fn live_waiters(&self) -> usize {
        self.live_waiters.load(Ordering::Relaxed)
    }

    /// Watchers alive now.
    pub fn live_watchers(&self) -> usize {
        self.live_watchers.load(Ordering::Relaxed)
    }

    /// Topics open now (tasks with listeners or retained history).
    pub fn open_topics(&self) -> usize {
        self.topics().len()
    }

    fn gauge(&self, gauge: Gauge) -> &AtomicUsize {
        match gauge {
            Gauge::Waiters => &self.live_waiters,
            Gauge::Watchers => &self.live_watchers,
        }
    }
}

impl ChangeFeed for EventHub {
    fn changed(&self, task: &TaskEvent) {
        {
            let mut topics = self.topics();
            if let Some(topic) = topics.get_mut(&task.id) {
                let contiguous = topic
                    .history
                    .back()
                    .is_none_or(|last| last.revision + 1 == task.revision);
                if !contiguous {
                    // Only contiguous runs can be replayed without a gap.
                    topic.history.clear();
                }
                if topic.history.len() == self.history_len {
                    topic.history.pop_front();
                }
                topic.history.push_back(task.clone());
                // An error only means nobody listens right now.
                let _ = topic.sender.send(task.clone());
                topic.finished = task.is_terminal();
                if topic.finished && topic.sender.receiver_count() == 0 {
                    topics.remove(&task.id);
                }
            }
        }
        if self.firehose.receiver_count() > 0 {
            let _ = self.firehose.send(task.clone());
        }
    }

    fn deleted(&self, id: TaskId) {
        // Dropping the sender ends every subscription to the task.
        self.topics().remove(&id);
    }
}

/// A listener on one task's changes. Dropping the last listener of a
/// finished task closes its topic.
pub struct TaskSubscription {
    hub: Arc<EventHub>,
    id: TaskId,
    receiver: Option<broadcast::Receiver<TaskEvent>>,
}

impl TaskSubscription {
    /// The next change, or an error if this listener lagged or the topic closed.
    pub async fn recv(&mut self) -> Result<TaskEvent, broadcast::error::RecvError> {
        self.receiver
            .as_mut()
            .expect("the receiver is only taken on drop")
            .recv()
            .await
    }
}

impl Drop for TaskSubscription {
    fn drop(&mut self) {
        drop(self.receiver.take());
        let mut topics = self.hub.topics();
        if topics
            .get(&self.id)
            .is_some_and(|topic| topic.finished && topic.sender.receiver_count() == 0)
        {
            topics.remove(&self.id);
        }
    }
}

#[derive(Clone, Copy)]
enum Gauge {
    Waiters,
    Watchers,
}

/// Keeps a live-listener gauge incremented while it exists.
pub struct GaugeGuard {
    hub: Arc<EventHub>,
    gauge: Gauge,
}

impl Gauge {
    fn metric_name(self) -> &'static str {
        match self {
            Gauge::Waiters => "vow_live_waiters",
            Gauge::Watchers => "vow_live_watchers",
        }
    }
}

impl GaugeGuard {
    fn new(hub: Arc<EventHub>, gauge: Gauge) -> Self {
        hub.gauge(gauge).fetch_add(1, Ordering::Relaxed);
        metrics::gauge!(gauge.metric_name()).increment(1.0);
        Self { hub, gauge }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.hub.gauge(self.gauge).fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!(self.gauge.metric_name()).decrement(1.0);
    }
}
