//! The event path inside one process. The store reports every committed
//! change here in commit order; the hub fans it out to the waiters and
//! watchers of that task and to filter subscribers.
//!
//! A task gets a topic when someone first listens to it. The topic keeps the
//! last `history_len` changes, so a watcher that lost its stream can resume
//! after the revision it saw without a gap. Topics of unfinished tasks stay
//! until the task finishes or is deleted; a finished task's topic goes with
//! its last listener, but its history is kept a while longer (the most
//! recently finished, up to [`RETIRED_EVENTS`] changes in all): a watcher
//! whose stream broke just before the end resumes into the changes it missed
//! rather than a resync.

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
/// Changes kept, over all finished topics, after their last listener left
/// (a record of about a kilobyte each: at most some 16 MiB).
const RETIRED_EVENTS: usize = 16_384;

/// A published change: the task as stored after it.
pub type TaskEvent = Arc<TaskRecord>;

struct Topic {
    sender: broadcast::Sender<TaskEvent>,
    /// The latest changes, contiguous in revision.
    history: VecDeque<TaskEvent>,
    finished: bool,
}

/// Live topics, and the histories of finished tasks nobody listens to any more.
#[derive(Default)]
struct Topics {
    live: HashMap<TaskId, Topic>,
    retired: RetiredHistories,
}

/// Histories of finished topics, least recently retired first out, bounded
/// by the number of changes they hold.
struct RetiredHistories {
    histories: lru::LruCache<TaskId, VecDeque<TaskEvent>>,
    events: usize,
}

impl Default for RetiredHistories {
    fn default() -> Self {
        Self {
            histories: lru::LruCache::unbounded(),
            events: 0,
        }
    }
}

impl RetiredHistories {
    fn retire(&mut self, id: TaskId, history: VecDeque<TaskEvent>) {
        if history.is_empty() || history.len() > RETIRED_EVENTS {
            return;
        }
        self.events += history.len();
        if let Some(replaced) = self.histories.put(id, history) {
            self.events -= replaced.len();
        }
        while self.events > RETIRED_EVENTS {
            let Some((_, evicted)) = self.histories.pop_lru() else {
                break;
            };
            self.events -= evicted.len();
        }
    }

    fn take(&mut self, id: &TaskId) -> Option<VecDeque<TaskEvent>> {
        let history = self.histories.pop(id)?;
        self.events -= history.len();
        Some(history)
    }
}

impl Topics {
    /// Drops a finished topic nobody listens to, keeping its history.
    fn close_if_unheard(&mut self, id: TaskId) {
        if self
            .live
            .get(&id)
            .is_some_and(|topic| topic.finished && topic.sender.receiver_count() == 0)
            && let Some(topic) = self.live.remove(&id)
        {
            self.retired.retire(id, topic.history);
        }
    }
}

/// Fan-out of task changes to whoever listens in this process.
pub struct EventHub {
    topics: Mutex<Topics>,
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

    fn topics(&self) -> std::sync::MutexGuard<'_, Topics> {
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
        let topics = &mut *topics;
        let topic = topics.live.entry(id).or_insert_with(|| {
            let retired = topics.retired.take(&id);
            Topic {
                sender: broadcast::channel(TOPIC_CAPACITY).0,
                finished: retired.is_some(),
                history: retired.unwrap_or_default(),
            }
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

    /// Topics open now (tasks with listeners, or unfinished with history).
    pub fn open_topics(&self) -> usize {
        self.topics().live.len()
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
            if let Some(topic) = topics.live.get_mut(&task.id) {
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
                topics.close_if_unheard(task.id);
            }
        }
        if self.firehose.receiver_count() > 0 {
            let _ = self.firehose.send(task.clone());
        }
    }

    fn deleted(&self, id: TaskId) {
        let mut topics = self.topics();
        // Dropping the sender ends every subscription to the task.
        topics.live.remove(&id);
        topics.retired.take(&id);
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
        self.hub.topics().close_if_unheard(self.id);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn history(len: usize) -> VecDeque<TaskEvent> {
        let record = crate::engine::transitions::tests::running(1, 1);
        (0..len).map(|_| Arc::new(record.clone())).collect()
    }

    #[test]
    fn retired_histories_keep_the_most_recent_within_the_event_bound() {
        let mut retired = RetiredHistories::default();
        let ids: Vec<TaskId> = (0..5).map(|_| TaskId::generate()).collect();
        for id in &ids {
            retired.retire(*id, history(RETIRED_EVENTS / 4));
        }
        assert!(retired.events <= RETIRED_EVENTS);
        assert!(retired.take(&ids[0]).is_none(), "the oldest went first");
        assert_eq!(
            retired.take(&ids[4]).map(|history| history.len()),
            Some(RETIRED_EVENTS / 4)
        );
        assert_eq!(retired.events, 3 * (RETIRED_EVENTS / 4));
    }
}
