//! The event path inside one process: after a change is stored, its snapshot
//! is published here, to the waiters of that task and to filter subscribers.
//! Topics exist only while someone listens, and end with the task.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::broadcast;

use super::task::{TaskId, TaskRecord};

/// Snapshots kept per topic for a subscriber that is briefly behind; one who
/// falls further behind is told it lagged and re-reads the current state.
const TOPIC_CAPACITY: usize = 16;
/// Buffer of the all-tasks topic used by filter subscribers.
const FIREHOSE_CAPACITY: usize = 1024;

/// A published change: the task as stored after it.
pub type TaskEvent = Arc<TaskRecord>;

/// Fan-out of task changes to whoever listens in this process.
pub struct EventHub {
    topics: Mutex<HashMap<TaskId, broadcast::Sender<TaskEvent>>>,
    firehose: broadcast::Sender<TaskEvent>,
    live_waiters: AtomicUsize,
    live_watchers: AtomicUsize,
}

impl Default for EventHub {
    fn default() -> Self {
        Self {
            topics: Mutex::default(),
            firehose: broadcast::channel(FIREHOSE_CAPACITY).0,
            live_waiters: AtomicUsize::new(0),
            live_watchers: AtomicUsize::new(0),
        }
    }
}

impl EventHub {
    fn topics(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, broadcast::Sender<TaskEvent>>> {
        self.topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Delivers a stored change. A terminal change closes the task's topic
    /// after delivery: nothing follows it but deletion.
    pub fn publish(&self, task: TaskEvent) {
        {
            let mut topics = self.topics();
            if let Some(sender) = topics.get(&task.id) {
                // An error only means every receiver has gone.
                let _ = sender.send(task.clone());
                if task.is_terminal() || sender.receiver_count() == 0 {
                    topics.remove(&task.id);
                }
            }
        }
        if self.firehose.receiver_count() > 0 {
            let _ = self.firehose.send(task);
        }
    }

    /// Tells the subscribers of a deleted task that it is gone.
    pub fn forget(&self, id: TaskId) {
        self.topics().remove(&id);
    }

    /// Starts listening to one task. Subscribe before reading the store, so no
    /// change made after the read can be missed.
    pub fn subscribe(self: &Arc<Self>, id: TaskId) -> TaskSubscription {
        let receiver = self
            .topics()
            .entry(id)
            .or_insert_with(|| broadcast::channel(TOPIC_CAPACITY).0)
            .subscribe();
        TaskSubscription {
            hub: self.clone(),
            id,
            receiver: Some(receiver),
        }
    }

    /// Starts listening to every task's changes.
    pub fn subscribe_all(&self) -> broadcast::Receiver<TaskEvent> {
        self.firehose.subscribe()
    }

    /// Counts a waiter (Await, Run) until the guard drops.
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

    /// Topics currently open (one per task with listeners).
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

/// A listener on one task's changes. Dropping it closes the topic when it was
/// the last listener.
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
            .is_some_and(|sender| sender.receiver_count() == 0)
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

impl GaugeGuard {
    fn new(hub: Arc<EventHub>, gauge: Gauge) -> Self {
        hub.gauge(gauge).fetch_add(1, Ordering::Relaxed);
        Self { hub, gauge }
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.hub.gauge(self.gauge).fetch_sub(1, Ordering::Relaxed);
    }
}
