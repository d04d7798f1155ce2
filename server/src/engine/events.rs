//! The event path inside one process. The store reports every committed
//! change here in commit order; the hub fans it out to the waiters and
//! watchers of that task and to filter subscribers.
//!
//! A task gets a topic when someone first listens to it. The topic keeps the
//! last `history_len` changes, so a watcher that lost its stream can resume
//! after the revision it saw without a gap. A topic goes with its last
//! listener unless it holds history of an unfinished task (kept until the
//! task finishes or is deleted, for watchers that resume). A finished task's
//! history is kept a while longer (the most recently finished, up to
//! [`RETIRED_EVENTS`] changes in all): a watcher whose stream broke just
//! before the end resumes into the changes it missed rather than a resync.
//! So listeners of ids that name no task, or of finished tasks, leave
//! nothing behind; `vow_event_topics` counts the topics.
//!
//! When the store cannot tell what changed (a change it could not read, a
//! connection to other replicas that was lost for too long), it asks for a
//! resync: the topics concerned close, so their listeners read the store
//! again, and every all-task listener is told it missed changes.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::broadcast;

use super::{
    EngineError,
    namespace::Scope,
    quota::{self, ListenerLimits, Quotas, SharedQuotas},
    task::{TaskId, TaskRecord},
};
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

/// What the all-tasks topic carries.
#[derive(Clone, Debug)]
enum FirehoseEvent {
    Changed(TaskEvent),
    /// Changes of these tasks (`None`: of any) may have been missed:
    /// listeners read the store again.
    Resync(Option<Arc<[TaskId]>>),
}

/// What an all-tasks listener receives.
#[derive(Debug)]
pub enum AllTasksEvent {
    /// One change, per task in revision order.
    Changed(TaskEvent),
    /// Changes were missed (this listener fell behind, or the store lost
    /// track of these tasks, `None`: of any): what it follows must be read
    /// from the store again.
    Missed(Option<Arc<[TaskId]>>),
    /// The hub is gone.
    Closed,
}

/// A listener on every task's changes.
pub struct AllTasksSubscription {
    receiver: broadcast::Receiver<FirehoseEvent>,
}

impl AllTasksSubscription {
    /// The next change, or word that some were missed.
    pub async fn recv(&mut self) -> AllTasksEvent {
        match self.receiver.recv().await {
            Ok(FirehoseEvent::Changed(task)) => AllTasksEvent::Changed(task),
            Ok(FirehoseEvent::Resync(ids)) => AllTasksEvent::Missed(ids),
            Err(broadcast::error::RecvError::Lagged(_)) => AllTasksEvent::Missed(None),
            Err(broadcast::error::RecvError::Closed) => AllTasksEvent::Closed,
        }
    }
}

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
    /// Drops a topic nobody listens to, unless it holds history of an
    /// unfinished task; a finished task's history is retired.
    fn close_if_unheard(&mut self, id: TaskId) {
        let closes = self.live.get(&id).is_some_and(|topic| {
            topic.sender.receiver_count() == 0 && (topic.finished || topic.history.is_empty())
        });
        if closes && let Some(topic) = self.live.remove(&id) {
            if topic.finished {
                self.retired.retire(id, topic.history);
            }
            self.count_topics();
        }
    }

    fn count_topics(&self) {
        metrics::gauge!("vow_event_topics").set(self.live.len() as f64);
    }
}

/// Fan-out of task changes to whoever listens in this process.
pub struct EventHub {
    topics: Mutex<Topics>,
    /// Every namespace's changes, for listeners of every namespace.
    firehose: broadcast::Sender<FirehoseEvent>,
    /// One namespace's changes each: a busy namespace fills its own
    /// channel, and never makes another namespace's listeners lag.
    namespace_firehoses: RwLock<HashMap<Arc<str>, broadcast::Sender<FirehoseEvent>>>,
    history_len: usize,
    live_waiters: AtomicUsize,
    live_watchers: AtomicUsize,
    /// Open listeners per namespace, against their quotas.
    namespace_listeners: Mutex<HashMap<Arc<str>, [usize; 2]>>,
    limits: ListenerLimits,
    quotas: SharedQuotas,
}

impl EventHub {
    /// A hub keeping up to `history_len` changes per watched task, with the
    /// default listener limits and no quotas.
    pub fn new(history_len: usize) -> Self {
        Self::with_limits(history_len, ListenerLimits::default())
    }

    /// A hub whose open listeners are bounded by `limits`.
    pub fn with_limits(history_len: usize, limits: ListenerLimits) -> Self {
        Self {
            topics: Mutex::default(),
            firehose: broadcast::channel(FIREHOSE_CAPACITY).0,
            namespace_firehoses: RwLock::default(),
            history_len: history_len.max(1),
            live_waiters: AtomicUsize::new(0),
            live_watchers: AtomicUsize::new(0),
            namespace_listeners: Mutex::default(),
            limits,
            quotas: SharedQuotas::default(),
        }
    }

    /// The namespaces' quotas, which the engine reads as well.
    pub fn quotas(&self) -> &SharedQuotas {
        &self.quotas
    }

    /// Replaces every namespace's quota (the auth file changed).
    pub fn set_quotas(&self, quotas: Quotas) {
        self.quotas.store(Arc::new(quotas));
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
        let mut opened = false;
        let topic = topics.live.entry(id).or_insert_with(|| {
            opened = true;
            let retired = topics.retired.take(&id);
            Topic {
                sender: broadcast::channel(TOPIC_CAPACITY).0,
                finished: retired.is_some(),
                history: retired.unwrap_or_default(),
            }
        });
        let receiver = topic.sender.subscribe();
        let history = topic.history.iter().cloned().collect();
        if opened {
            topics.count_topics();
        }
        let subscription = TaskSubscription {
            hub: self.clone(),
            id,
            receiver: Some(receiver),
        };
        (subscription, history)
    }

    /// Starts listening to the changes of every task `scope` sees.
    pub fn subscribe_all(&self, scope: &Scope) -> AllTasksSubscription {
        let Some(namespace) = scope.only() else {
            return AllTasksSubscription {
                receiver: self.firehose.subscribe(),
            };
        };
        if let Some(sender) = self.read_namespace_firehoses().get(namespace) {
            return AllTasksSubscription {
                receiver: sender.subscribe(),
            };
        }
        let mut firehoses = self
            .namespace_firehoses
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Channels nobody listens to any more go when a new one opens, so
        // they number at most the namespaces listened to at once.
        firehoses.retain(|_, sender| sender.receiver_count() > 0);
        let receiver = firehoses
            .entry(namespace.clone())
            .or_insert_with(|| broadcast::channel(FIREHOSE_CAPACITY).0)
            .subscribe();
        AllTasksSubscription { receiver }
    }

    fn read_namespace_firehoses(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, broadcast::Sender<FirehoseEvent>>> {
        self.namespace_firehoses
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Counts a waiter (Await, Run, AwaitMany) of `namespace` until the
    /// guard drops; refused past the process's or the namespace's limit.
    pub fn waiter_guard(self: &Arc<Self>, namespace: &str) -> Result<GaugeGuard, EngineError> {
        GaugeGuard::new(self.clone(), Gauge::Waiters, namespace)
    }

    /// Counts a watcher (Watch stream) of `namespace` until the guard
    /// drops; refused past the process's or the namespace's limit.
    pub fn watcher_guard(self: &Arc<Self>, namespace: &str) -> Result<GaugeGuard, EngineError> {
        GaugeGuard::new(self.clone(), Gauge::Watchers, namespace)
    }

    /// Waiters alive now.
    pub fn live_waiters(&self) -> usize {
        self.live_waiters.load(Ordering::Relaxed)
    }

    /// Watchers alive now.
    pub fn live_watchers(&self) -> usize {
        self.live_watchers.load(Ordering::Relaxed)
    }

    /// Publishes the gauges of the hub, so they show before anything changes.
    pub fn publish_gauges(&self) {
        self.topics().count_topics();
    }

    /// Topics open now (tasks with listeners, or unfinished with history).
    pub fn open_topics(&self) -> usize {
        self.topics().live.len()
    }

    /// Tells every all-task listener, of any namespace.
    fn broadcast(&self, event: FirehoseEvent) {
        for sender in self.read_namespace_firehoses().values() {
            let _ = sender.send(event.clone());
        }
        let _ = self.firehose.send(event);
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
                // A revision already seen (delivered again by a replay) is
                // no news, and must not break the history's run.
                if topic
                    .history
                    .back()
                    .is_some_and(|last| last.revision >= task.revision)
                {
                    return;
                }
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
            let _ = self.firehose.send(FirehoseEvent::Changed(task.clone()));
        }
        if let Some(sender) = self.read_namespace_firehoses().get(&task.namespace)
            && sender.receiver_count() > 0
        {
            let _ = sender.send(FirehoseEvent::Changed(task.clone()));
        }
    }

    fn deleted(&self, id: TaskId) {
        let mut topics = self.topics();
        // Dropping the sender ends every subscription to the task.
        if topics.live.remove(&id).is_some() {
            topics.count_topics();
        }
        topics.retired.take(&id);
    }

    fn resync(&self, ids: &[TaskId]) {
        {
            let mut topics = self.topics();
            for id in ids {
                // Closed, the topic's listeners read the store again; its
                // history has a gap, so it goes too.
                topics.live.remove(id);
                topics.retired.take(id);
            }
            topics.count_topics();
        }
        self.broadcast(FirehoseEvent::Resync(Some(ids.into())));
    }

    fn resync_all(&self) {
        {
            let mut topics = self.topics();
            topics.live.clear();
            topics.retired = RetiredHistories::default();
            topics.count_topics();
        }
        self.broadcast(FirehoseEvent::Resync(None));
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
    namespace: Arc<str>,
}

impl Gauge {
    fn metric_name(self) -> &'static str {
        match self {
            Gauge::Waiters => "vow_live_waiters",
            Gauge::Watchers => "vow_live_watchers",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Gauge::Waiters => "waits (Await, AwaitMany, Run)",
            Gauge::Watchers => "Watch streams",
        }
    }

    fn index(self) -> usize {
        match self {
            Gauge::Waiters => 0,
            Gauge::Watchers => 1,
        }
    }

    fn process_limit(self, limits: &ListenerLimits) -> usize {
        match self {
            Gauge::Waiters => limits.max_waiters,
            Gauge::Watchers => limits.max_watchers,
        }
    }

    fn namespace_limit(self, quotas: &Quotas, namespace: &str) -> Option<usize> {
        let quota = quotas.of(namespace);
        match self {
            Gauge::Waiters => quota.max_waiters,
            Gauge::Watchers => quota.max_watchers,
        }
    }
}

impl GaugeGuard {
    fn new(hub: Arc<EventHub>, gauge: Gauge, namespace: &str) -> Result<Self, EngineError> {
        let limit = gauge.process_limit(&hub.limits);
        if hub.gauge(gauge).fetch_add(1, Ordering::Relaxed) >= limit {
            hub.gauge(gauge).fetch_sub(1, Ordering::Relaxed);
            return Err(quota::listeners_exhausted(
                gauge.plural(),
                "vowd".into(),
                limit,
            ));
        }
        let namespace_limit = gauge.namespace_limit(&hub.quotas.load(), namespace);
        let namespace = {
            let mut open = hub
                .namespace_listeners
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let entry = match open.get_key_value(namespace) {
                Some((key, _)) => key.clone(),
                None => {
                    let key: Arc<str> = namespace.into();
                    open.insert(key.clone(), [0; 2]);
                    key
                }
            };
            let count = &mut open.get_mut(&entry).expect("just found")[gauge.index()];
            if namespace_limit.is_some_and(|limit| *count >= limit) {
                drop(open);
                hub.gauge(gauge).fetch_sub(1, Ordering::Relaxed);
                return Err(quota::listeners_exhausted(
                    gauge.plural(),
                    format!("namespace:{namespace}"),
                    namespace_limit.unwrap_or_default(),
                ));
            }
            *count += 1;
            entry
        };
        metrics::gauge!(gauge.metric_name()).increment(1.0);
        Ok(Self {
            hub,
            gauge,
            namespace,
        })
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.hub.gauge(self.gauge).fetch_sub(1, Ordering::Relaxed);
        {
            let mut open = self
                .hub
                .namespace_listeners
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(counts) = open.get_mut(&self.namespace) {
                counts[self.gauge.index()] -= 1;
                if *counts == [0, 0] {
                    open.remove(&self.namespace);
                }
            }
        }
        metrics::gauge!(self.gauge.metric_name()).decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(revision: u64, terminal: bool) -> TaskEvent {
        let mut record = crate::engine::transitions::tests::running(1, 1);
        record.revision = revision;
        if terminal {
            record.state = crate::engine::task::TaskState::Succeeded;
        }
        Arc::new(record)
    }

    #[test]
    fn listeners_of_unknown_or_finished_tasks_leave_no_topic() {
        let hub = Arc::new(EventHub::new(16));
        drop(hub.subscribe(TaskId::generate()));
        assert_eq!(hub.open_topics(), 0, "an id that never changed");

        let finished = task(3, true);
        let subscription = hub.subscribe(finished.id);
        hub.changed(&finished);
        drop(subscription);
        assert_eq!(hub.open_topics(), 0, "a finished task");
        let (_again, history) = hub.subscribe_with_history(finished.id);
        assert_eq!(history.len(), 1, "its history was retired, not lost");
    }

    /// The same task at another revision.
    fn at(task: &TaskEvent, revision: u64, terminal: bool) -> TaskEvent {
        let mut next = TaskRecord::clone(&super::tests::task(revision, terminal));
        next.id = task.id;
        Arc::new(next)
    }

    #[test]
    fn an_unfinished_task_keeps_its_history_for_resuming_watchers() {
        let hub = Arc::new(EventHub::new(16));
        let running = task(2, false);
        let subscription = hub.subscribe(running.id);
        hub.changed(&running);
        hub.changed(&at(&running, 3, false));
        drop(subscription);
        assert_eq!(hub.open_topics(), 1, "kept for a watcher that resumes");
        let subscription = hub.subscribe(running.id);
        hub.changed(&at(&running, 4, true));
        drop(subscription);
        assert_eq!(hub.open_topics(), 0, "closed once finished and unheard");
    }

    #[test]
    fn a_revision_seen_again_keeps_the_history_whole() {
        let hub = Arc::new(EventHub::new(16));
        let first = task(2, false);
        let _subscription = hub.subscribe(first.id);
        hub.changed(&first);
        let mut second = TaskRecord::clone(&first);
        second.revision = 3;
        hub.changed(&Arc::new(second));
        hub.changed(&first);
        let (_, history) = hub.subscribe_with_history(first.id);
        let revisions: Vec<u64> = history.iter().map(|task| task.revision).collect();
        assert_eq!(revisions, [2, 3]);
    }

    #[tokio::test]
    async fn a_resync_closes_the_topics_and_tells_all_task_listeners() {
        let hub = Arc::new(EventHub::new(16));
        let watched = task(2, false);
        let mut subscription = hub.subscribe(watched.id);
        let mut all = hub.subscribe_all(&Scope::All);
        hub.resync(&[watched.id]);
        assert!(matches!(
            subscription.recv().await,
            Err(broadcast::error::RecvError::Closed)
        ));
        assert!(
            matches!(all.recv().await, AllTasksEvent::Missed(Some(ids)) if ids[..] == [watched.id])
        );
        assert_eq!(hub.open_topics(), 0);
    }

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

    #[tokio::test]
    async fn a_busy_namespace_never_makes_another_namespaces_listener_lag() {
        let hub = Arc::new(EventHub::new(16));
        let mut quiet = hub.subscribe_all(&Scope::one("quiet"));
        let mut everything = hub.subscribe_all(&Scope::All);
        let in_namespace = |namespace: &str, revision| {
            let mut record = TaskRecord::clone(&task(revision, false));
            record.namespace = namespace.into();
            Arc::new(record)
        };
        for revision in 0..(FIREHOSE_CAPACITY as u64 * 2) {
            hub.changed(&in_namespace("busy", revision));
        }
        hub.changed(&in_namespace("quiet", 1));
        match quiet.recv().await {
            AllTasksEvent::Changed(task) => assert_eq!(&*task.namespace, "quiet"),
            other => panic!("the quiet namespace's listener got {other:?}"),
        }
        // A listener of every namespace does fall behind the busy one.
        assert!(matches!(
            everything.recv().await,
            AllTasksEvent::Missed(None)
        ));
    }
}
