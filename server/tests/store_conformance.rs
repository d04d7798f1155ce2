//! One conformance suite for every `Store` backend: each case is written once
//! and instantiated per backend by `conformance!`. A backend passes when it
//! behaves exactly like the others, down to the order of its change feed.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use vow_server::{
    engine::{
        retry::RetryPolicy,
        task::{Lease, Payload, TaskId, TaskRecord, TaskState, TraceContext},
    },
    store::{
        ChangeFeed, ClaimRequest, CreateOutcome, Durability, EmbeddedStore, ListQuery, MemoryStore,
        OnClaimed, PostgresOptions, PostgresStore, RemoteClaim, SharedTask, Store, StoreError,
    },
};

mod support;

/// Records what a store publishes, in order.
#[derive(Default)]
struct RecordingFeed {
    events: Mutex<Vec<(TaskId, Option<u64>)>>,
}

impl RecordingFeed {
    fn events(&self) -> Vec<(TaskId, Option<u64>)> {
        self.events.lock().expect("not poisoned").clone()
    }
}

impl ChangeFeed for RecordingFeed {
    fn changed(&self, task: &SharedTask) {
        self.events
            .lock()
            .expect("not poisoned")
            .push((task.id, Some(task.revision)));
    }

    fn deleted(&self, id: TaskId) {
        self.events.lock().expect("not poisoned").push((id, None));
    }

    fn resync(&self, _ids: &[TaskId]) {}

    fn resync_all(&self) {}
}

/// A backend under test, with whatever it must keep alive.
struct Backend {
    store: Arc<dyn Store>,
    feed: Arc<RecordingFeed>,
    _data_dir: Option<TempDir>,
    /// Whether `create_and_claim` claims (it may always decline).
    claims_on_create: bool,
    /// Dropped after the store: a database of this test's own.
    _database: Option<support::TestDatabase>,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        let path = std::env::temp_dir().join(format!("vow-conformance-{}", TaskId::generate()));
        std::fs::create_dir(&path).expect("create a temp dir");
        Self(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn memory() -> Backend {
    let feed = Arc::new(RecordingFeed::default());
    Backend {
        store: Arc::new(MemoryStore::new(feed.clone())),
        feed,
        _data_dir: None,
        claims_on_create: true,
        _database: None,
    }
}

async fn embedded() -> Backend {
    let data_dir = TempDir::new();
    let feed = Arc::new(RecordingFeed::default());
    let store = EmbeddedStore::open(&data_dir.0, Durability::Normal, feed.clone())
        .expect("open the embedded store");
    Backend {
        store: Arc::new(store),
        feed,
        _data_dir: Some(data_dir),
        claims_on_create: true,
        _database: None,
    }
}

fn postgres_options(url: &str) -> PostgresOptions {
    PostgresOptions {
        url: url.to_owned(),
        max_connections: 8,
        min_connections: 0,
        acquire_timeout: Duration::from_secs(10),
    }
}

async fn postgres() -> Backend {
    let database = support::TestDatabase::create().await;
    let feed = Arc::new(RecordingFeed::default());
    let store = PostgresStore::open(&postgres_options(&database.url), feed.clone())
        .await
        .expect("open the PostgreSQL store");
    Backend {
        store: Arc::new(store),
        feed,
        _data_dir: None,
        claims_on_create: false,
        _database: Some(database),
    }
}

fn at(seconds: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + seconds)
}

fn task(kind: &str) -> TaskRecord {
    TaskRecord {
        id: TaskId::generate(),
        kind: kind.into(),
        state: TaskState::Queued,
        input: Arc::new(Payload::json(serde_json::json!({"n": 1}))),
        output: None,
        error: None,
        attempt: 0,
        retry: RetryPolicy::default(),
        progress: None,
        labels: BTreeMap::new(),
        priority: 0,
        trace: TraceContext::default(),
        revision: 1,
        created_at: at(0),
        updated_at: at(0),
        started_at: None,
        ended_at: None,
        next_attempt_at: None,
        expires_at: None,
        deadline: None,
        attempt_timeout: None,
        retention: Duration::from_secs(60),
        idempotency_key: None,
        request_fingerprint: "fingerprint".into(),
        cancel_requested: false,
        cancel_reason: String::new(),
        lease: None,
        worker_id: String::new(),
        completed_by: None,
        namespace: "default".into(),
    }
}

fn task_in(namespace: &str, kind: &str) -> TaskRecord {
    TaskRecord {
        namespace: namespace.into(),
        ..task(kind)
    }
}

async fn create(store: &Arc<dyn Store>, task: TaskRecord) -> SharedTask {
    match store.create(task, None).await.expect("create") {
        CreateOutcome::Created(task) => task,
        CreateOutcome::Existing(task) => panic!("expected a new task, got existing {}", task.id),
    }
}

/// Every kind the cases use.
const KINDS: [&str; 3] = ["echo", "sleep", "fail"];

fn claim_request(now: SystemTime, limit: usize) -> ClaimRequest {
    claim_of(&KINDS, now, limit)
}

fn claim_of(kinds: &[&str], now: SystemTime, limit: usize) -> ClaimRequest {
    ClaimRequest {
        now,
        limit,
        owner: "node-a".into(),
        lease_duration: Duration::from_secs(30),
        kinds: kinds.iter().map(|kind| (*kind).to_owned()).collect(),
        namespace: None,
        excluded_namespaces: Arc::from([]),
        remote: None,
    }
}

fn all_kinds() -> Vec<String> {
    KINDS.iter().map(|kind| (*kind).to_owned()).collect()
}

/// The next version of a record, as the engine writes it.
fn next(task: &TaskRecord, change: impl FnOnce(&mut TaskRecord)) -> TaskRecord {
    let mut next = task.clone();
    change(&mut next);
    next.revision += 1;
    next
}

async fn creates_and_reads_back(backend: Backend) {
    let store = backend.store;
    let mut original = task("echo");
    original.labels.insert("team".into(), "a".into());
    original.trace.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into();
    let created = create(&store, original.clone()).await;
    assert_eq!(*created, original);
    let read = store.get(original.id).await.expect("get").expect("stored");
    assert_eq!(
        *read, original,
        "every field survives, trace context included"
    );
    assert!(store.get(TaskId::generate()).await.expect("get").is_none());
    assert_eq!(backend.feed.events(), vec![(original.id, Some(1))]);
}

async fn idempotency_keys_deduplicate_or_refuse(backend: Backend) {
    let store = backend.store;
    let first = TaskRecord {
        idempotency_key: Some("k1".into()),
        ..task("echo")
    };
    create(&store, first.clone()).await;
    let retry = TaskRecord {
        idempotency_key: Some("k1".into()),
        ..task("echo")
    };
    match store.create(retry, None).await.expect("a retry") {
        CreateOutcome::Existing(existing) => assert_eq!(existing.id, first.id),
        CreateOutcome::Created(_) => panic!("the same key and request must deduplicate"),
    }
    let different = TaskRecord {
        idempotency_key: Some("k1".into()),
        request_fingerprint: "another request".into(),
        ..task("echo")
    };
    match store.create(different, None).await {
        Err(StoreError::IdempotencyMismatch { existing }) => assert_eq!(existing, first.id),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    // Deleting the task frees its key.
    assert!(store.delete(first.id).await.expect("delete"));
    let reused = TaskRecord {
        idempotency_key: Some("k1".into()),
        ..task("echo")
    };
    create(&store, reused).await;
}

async fn admission_is_bounded(backend: Backend) {
    let store = backend.store;
    for _ in 0..2 {
        store.create(task("echo"), Some(2)).await.expect("room");
    }
    assert!(matches!(
        store.create(task("echo"), Some(2)).await,
        Err(StoreError::QueueFull { limit: 2 })
    ));
    let counts = store.kind_counts().await.expect("counts");
    assert_eq!(counts.get("echo").map(|counts| counts.queued), Some(2));
}

/// A retry of an accepted create is deduplicated even when the queue is
/// full by now: the idempotency key is looked at before the queue limit.
async fn idempotency_keys_come_before_the_queue_limit(backend: Backend) {
    let store = backend.store;
    let first = TaskRecord {
        idempotency_key: Some("accepted".into()),
        ..task("echo")
    };
    create(&store, first.clone()).await;
    store.create(task("echo"), Some(2)).await.expect("room");
    let retry = TaskRecord {
        idempotency_key: Some("accepted".into()),
        ..task("echo")
    };
    match store.create(retry, Some(2)).await {
        Ok(CreateOutcome::Existing(existing)) => assert_eq!(existing.id, first.id),
        other => panic!("a retry near the limit must deduplicate, got {other:?}"),
    }
    let reused = TaskRecord {
        idempotency_key: Some("accepted".into()),
        request_fingerprint: "another request".into(),
        ..task("echo")
    };
    assert!(matches!(
        store.create(reused, Some(2)).await,
        Err(StoreError::IdempotencyMismatch { .. })
    ));
    assert!(matches!(
        store.create(task("echo"), Some(2)).await,
        Err(StoreError::QueueFull { limit: 2 })
    ));
}

async fn updates_are_compare_and_set_on_revision(backend: Backend) {
    let store = backend.store;
    let created = create(&store, task("echo")).await;
    let changed = next(&created, |task| task.priority = 5);
    let stored = store
        .update(changed.clone(), 1)
        .await
        .expect("update at the current revision");
    assert_eq!(stored.revision, 2);
    assert!(
        matches!(
            store.update(next(&created, |_| {}), 1).await,
            Err(StoreError::RevisionConflict)
        ),
        "stale"
    );
    let not_newer = TaskRecord {
        revision: 2,
        ..changed.clone()
    };
    assert!(
        matches!(
            store.update(not_newer, 2).await,
            Err(StoreError::RevisionConflict)
        ),
        "revision must grow"
    );
    assert!(matches!(
        store.update(task("echo"), 1).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(
        store
            .get(created.id)
            .await
            .expect("get")
            .expect("stored")
            .priority,
        5
    );
    assert_eq!(
        backend.feed.events(),
        vec![(created.id, Some(1)), (created.id, Some(2))]
    );
}

async fn claims_follow_priority_then_age_and_honour_not_before(backend: Backend) {
    let store = backend.store;
    let old_low = create(
        &store,
        TaskRecord {
            created_at: at(1),
            ..task("echo")
        },
    )
    .await;
    let new_high = create(
        &store,
        TaskRecord {
            created_at: at(3),
            priority: 10,
            ..task("echo")
        },
    )
    .await;
    let old_high = create(
        &store,
        TaskRecord {
            created_at: at(2),
            priority: 10,
            ..task("echo")
        },
    )
    .await;
    let later = create(
        &store,
        TaskRecord {
            created_at: at(0),
            priority: 99,
            next_attempt_at: Some(at(100)),
            ..task("echo")
        },
    )
    .await;
    assert_eq!(
        store.next_due_at(&all_kinds()).await.expect("next due"),
        Some(at(1)),
        "the earliest due task"
    );

    let claimed = store
        .claim_due(&claim_request(at(50), 2))
        .await
        .expect("claim");
    let ids: Vec<TaskId> = claimed.iter().map(|task| task.id).collect();
    assert_eq!(
        ids,
        vec![old_high.id, new_high.id],
        "priority first, then age"
    );
    for task in &claimed {
        assert_eq!(task.state, TaskState::Running);
        assert_eq!(task.attempt, 1);
        assert_eq!(task.revision, 2);
        let lease = task.lease.as_ref().expect("a lease");
        assert_eq!(lease.owner, "node-a");
        assert_eq!(lease.expires_at, at(80));
    }
    assert!(
        claimed[0].lease.as_ref().unwrap().token < claimed[1].lease.as_ref().unwrap().token,
        "tokens grow"
    );

    let rest = store
        .claim_due(&claim_request(at(50), 10))
        .await
        .expect("claim");
    assert_eq!(
        rest.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![old_low.id],
        "not_before holds back the rest"
    );
    assert_eq!(
        store.next_due_at(&all_kinds()).await.expect("next due"),
        Some(at(100))
    );
    let due_later = store
        .claim_due(&claim_request(at(100), 10))
        .await
        .expect("claim");
    assert_eq!(
        due_later.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![later.id]
    );
    assert!(
        store
            .kind_counts()
            .await
            .expect("counts")
            .values()
            .all(|counts| counts.queued == 0)
    );
    assert_eq!(
        store.next_due_at(&all_kinds()).await.expect("next due"),
        None
    );
}

async fn leases_extend_fence_and_expire(backend: Backend) {
    let store = backend.store;
    let created = create(&store, task("sleep")).await;
    let claimed = store
        .claim_due(&claim_request(at(10), 1))
        .await
        .expect("claim")
        .remove(0);
    let token = claimed.lease.as_ref().expect("lease").token;

    store
        .extend_lease(created.id, token, at(100), at(20))
        .await
        .expect("extend with the right token");
    assert!(matches!(
        store
            .extend_lease(created.id, token + 1, at(200), at(20))
            .await,
        Err(StoreError::StaleLease)
    ));
    let extended = store.get(created.id).await.expect("get").expect("stored");
    assert_eq!(extended.lease.as_ref().expect("lease").expires_at, at(100));
    assert_eq!(
        extended.revision, claimed.revision,
        "a renewal is not a revision"
    );

    // A write that keeps the token keeps the renewed expiry, whatever expiry it carries.
    let progress = next(&claimed, |task| task.priority = 1);
    let written = store
        .update(progress, claimed.revision)
        .await
        .expect("update");
    assert_eq!(written.lease.as_ref().expect("lease").expires_at, at(100));

    assert!(
        store
            .expired_leases(at(99), 10)
            .await
            .expect("expired")
            .is_empty()
    );
    let expired = store.expired_leases(at(100), 10).await.expect("expired");
    assert_eq!(
        expired.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![created.id]
    );
    // Expired but not reaped yet: the lease is lost all the same.
    assert!(matches!(
        store
            .extend_lease(created.id, token, at(200), at(100))
            .await,
        Err(StoreError::StaleLease)
    ));

    // Reaped and claimed again: a new token, and the stale holder's write is refused.
    let requeued = next(&written, |task| {
        task.state = TaskState::Queued;
        task.lease = None;
    });
    store
        .update(requeued, written.revision)
        .await
        .expect("requeue");
    let reclaimed = store
        .claim_due(&claim_request(at(101), 1))
        .await
        .expect("claim")
        .remove(0);
    assert!(reclaimed.lease.as_ref().expect("lease").token > token);
    assert_eq!(reclaimed.attempt, 2);
    let stale_result = next(&written, |task| task.state = TaskState::Succeeded);
    assert!(matches!(
        store.update(stale_result, written.revision).await,
        Err(StoreError::RevisionConflict)
    ));
    assert!(matches!(
        store
            .extend_lease(created.id, token, at(300), at(101))
            .await,
        Err(StoreError::StaleLease)
    ));
}

/// Claims take only the kinds asked for; the rest wait for their own
/// executors, and the counts say how many wait and run per kind.
async fn claims_take_only_the_kinds_asked_for(backend: Backend) {
    let store = backend.store;
    let remote = create(
        &store,
        TaskRecord {
            created_at: at(0),
            ..task("resize")
        },
    )
    .await;
    let local = create(
        &store,
        TaskRecord {
            created_at: at(1),
            ..task("echo")
        },
    )
    .await;
    assert_eq!(
        store
            .next_due_at(&["resize".to_owned()])
            .await
            .expect("next"),
        Some(at(0))
    );
    let claimed = store
        .claim_due(&claim_of(&["echo"], at(10), 10))
        .await
        .expect("claim");
    assert_eq!(
        claimed.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![local.id]
    );
    assert_eq!(claimed[0].worker_id, "node-a");
    assert!(
        store
            .claim_due(&claim_of(&["echo", "sleep"], at(10), 10))
            .await
            .expect("claim")
            .is_empty()
    );
    let counts = store.kind_counts().await.expect("counts");
    assert_eq!(
        counts
            .get("resize")
            .map(|counts| (counts.queued, counts.running)),
        Some((1, 0))
    );
    assert_eq!(
        counts
            .get("echo")
            .map(|counts| (counts.queued, counts.running)),
        Some((0, 1))
    );
    let taken = store
        .claim_due(&claim_of(&["resize", "echo"], at(10), 10))
        .await
        .expect("claim");
    assert_eq!(
        taken.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![remote.id]
    );
}

/// A remote claim gives each lease its own secret and the attempt span's
/// context, and ends the lease at the attempt deadline (plus the grace).
async fn remote_leases_end_at_their_attempt_deadline(backend: Backend) {
    let store = backend.store;
    let bounded = create(
        &store,
        TaskRecord {
            created_at: at(0),
            attempt_timeout: Some(Duration::from_secs(5)),
            trace: TraceContext {
                traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
                ..TraceContext::default()
            },
            ..task("resize")
        },
    )
    .await;
    let mut claim = claim_of(&["resize"], at(10), 1);
    claim.owner = "worker-1".into();
    claim.remote = Some(RemoteClaim {
        deadline_grace: Duration::from_secs(1),
    });
    let claimed = store.claim_due(&claim).await.expect("claim").remove(0);
    assert_eq!(claimed.id, bounded.id);
    assert_eq!(claimed.worker_id, "worker-1");
    let lease = claimed.lease.as_ref().expect("a lease");
    assert_eq!(
        lease.expires_at,
        at(16),
        "the attempt deadline plus the grace"
    );
    let remote = lease.remote.as_ref().expect("a remote lease");
    assert_eq!(remote.attempt_deadline, Some(at(15)));
    assert_eq!(remote.secret.len(), 32);
    assert!(
        remote
            .trace
            .traceparent
            .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    );
    assert!(!remote.trace.traceparent.contains("00f067aa0ba902b7"));
    let stored = store.get(claimed.id).await.expect("get").expect("stored");
    assert_eq!(stored.lease, claimed.lease, "as claimed");
    store
        .extend_lease(claimed.id, lease.token, at(16), at(12))
        .await
        .expect("renew");
    let renewed = store.get(claimed.id).await.expect("get").expect("stored");
    assert_eq!(renewed.lease.as_ref().expect("lease").remote, lease.remote);
}

/// The last poll of each kind is kept, the latest winning.
async fn polls_are_recorded_per_kind(backend: Backend) {
    let store = backend.store;
    assert!(store.last_polls().await.expect("polls").is_empty());
    let kinds = ["resize".to_owned(), "mail".to_owned()];
    store.record_poll(&kinds, at(10)).await.expect("record");
    store
        .record_poll(&kinds[..1], at(20))
        .await
        .expect("record");
    let polls = store.last_polls().await.expect("polls");
    assert_eq!(polls.get("resize"), Some(&at(20)));
    assert_eq!(polls.get("mail"), Some(&at(10)));
}

async fn overdue_lists_waiting_tasks_past_their_deadline(backend: Backend) {
    let store = backend.store;
    let bounded = create(
        &store,
        TaskRecord {
            deadline: Some(at(10)),
            ..task("echo")
        },
    )
    .await;
    create(
        &store,
        TaskRecord {
            deadline: Some(at(20)),
            ..task("echo")
        },
    )
    .await;
    create(&store, task("echo")).await;
    assert!(store.overdue(at(9), 10).await.expect("overdue").is_empty());
    let overdue = store.overdue(at(10), 10).await.expect("overdue");
    assert_eq!(
        overdue.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![bounded.id]
    );
    // A running task is the executor's to bound, not the sweep's.
    store
        .claim_due(&claim_request(at(5), 10))
        .await
        .expect("claim all");
    assert!(store.overdue(at(30), 10).await.expect("overdue").is_empty());
}

async fn lists_filter_and_page_newest_first(backend: Backend) {
    let store = backend.store;
    let mut ids = Vec::new();
    for index in 0..7u64 {
        let mut record = TaskRecord {
            created_at: at(index),
            ..task(if index % 2 == 0 { "even" } else { "odd" })
        };
        record.labels.insert(
            "batch".into(),
            if index < 5 {
                "one".into()
            } else {
                "two".into()
            },
        );
        ids.push(create(&store, record).await.id);
    }
    let query = |page_size, after| ListQuery {
        kinds: vec!["even".into()],
        labels: [("batch".to_owned(), "one".to_owned())].into(),
        page_size,
        after,
        ..ListQuery::default()
    };
    let first = store.list(&query(2, None)).await.expect("list");
    assert_eq!(
        first.tasks.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![ids[4], ids[2]]
    );
    let second = store.list(&query(2, first.next)).await.expect("list");
    assert_eq!(
        second.tasks.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    assert!(second.next.is_none());

    store
        .claim_due(&claim_of(&["even", "odd"], at(100), 1))
        .await
        .expect("claim one");
    let running = ListQuery {
        states: vec![TaskState::Running],
        page_size: 10,
        ..ListQuery::default()
    };
    assert_eq!(store.list(&running).await.expect("list").tasks.len(), 1);
    let everything = ListQuery {
        page_size: 100,
        ..ListQuery::default()
    };
    let all = store.list(&everything).await.expect("list");
    assert_eq!(
        all.tasks.iter().map(|task| task.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>()
    );
}

async fn deletes_and_sweeps_expired_tasks_in_batches(backend: Backend) {
    let store = backend.store;
    let mut finished = Vec::new();
    for index in 0..5 {
        let created = create(&store, task("echo")).await;
        let done = next(&created, |task| {
            task.state = TaskState::Succeeded;
            task.ended_at = Some(at(index));
            task.expires_at = Some(at(10 + index));
        });
        store.update(done, 1).await.expect("finish");
        finished.push(created.id);
    }
    let unfinished = create(&store, task("echo")).await;
    assert!(
        store
            .delete_expired(at(9), 10)
            .await
            .expect("sweep")
            .is_empty()
    );
    let swept = store.delete_expired(at(100), 2).await.expect("sweep");
    assert_eq!(
        swept,
        finished[..2].to_vec(),
        "oldest first, at most the batch"
    );
    let swept = store.delete_expired(at(100), 10).await.expect("sweep");
    assert_eq!(swept, finished[2..].to_vec());
    assert!(store.get(finished[0]).await.expect("get").is_none());
    assert!(
        store.get(unfinished.id).await.expect("get").is_some(),
        "unfinished tasks never expire"
    );
    assert!(store.delete(unfinished.id).await.expect("delete"));
    assert!(!store.delete(unfinished.id).await.expect("delete again"));
    let deletions: Vec<TaskId> = backend
        .feed
        .events()
        .into_iter()
        .filter(|(_, revision)| revision.is_none())
        .map(|(id, _)| id)
        .collect();
    let mut expected = finished.clone();
    expected.push(unfinished.id);
    assert_eq!(deletions, expected, "every deletion reaches the feed");
}

async fn the_feed_sees_every_change_in_commit_order(backend: Backend) {
    let store = backend.store;
    let first = create(&store, task("echo")).await;
    let second = create(&store, task("echo")).await;
    let claimed = store
        .claim_due(&claim_request(at(10), 2))
        .await
        .expect("claim");
    let finished = next(&claimed[0], |task| task.state = TaskState::Succeeded);
    store
        .update(finished, claimed[0].revision)
        .await
        .expect("finish");
    let expected = vec![
        (first.id, Some(1)),
        (second.id, Some(1)),
        (claimed[0].id, Some(2)),
        (claimed[1].id, Some(2)),
        (claimed[0].id, Some(3)),
    ];
    assert_eq!(backend.feed.events(), expected);
}

/// Where `create_and_claim` hands a claimed task.
fn claimed_slot() -> (Arc<Mutex<Option<SharedTask>>>, OnClaimed) {
    let slot = Arc::new(Mutex::new(None));
    let handed = slot.clone();
    let on_claimed: OnClaimed = Box::new(move |task| {
        *handed.lock().expect("not poisoned") = Some(task);
    });
    (slot, on_claimed)
}

async fn create_and_claim_takes_a_new_task_only_when_nothing_else_is_due(backend: Backend) {
    let store = backend.store;
    let created = |outcome| match outcome {
        Ok(CreateOutcome::Created(task)) => task,
        other => panic!("expected a new task, got {other:?}"),
    };

    // Nothing queued: the new task may be claimed in the same write.
    let (slot, on_claimed) = claimed_slot();
    let first = created(
        store
            .create_and_claim(
                task("echo"),
                Some(10),
                &claim_request(at(10), 1),
                on_claimed,
            )
            .await,
    );
    assert_eq!((first.state, first.revision), (TaskState::Queued, 1));
    let handed = slot.lock().expect("not poisoned").take();
    let Some(running) = handed else {
        assert!(!backend.claims_on_create, "this backend claims on create");
        return;
    };
    assert_eq!(running.id, first.id);
    assert_eq!(running.state, TaskState::Running);
    assert_eq!((running.attempt, running.revision), (1, 2));
    assert_eq!(running.started_at, Some(at(10)));
    let lease = running.lease.as_ref().expect("a lease");
    assert_eq!((lease.owner.as_str(), lease.expires_at), ("node-a", at(40)));
    let stored = store.get(first.id).await.expect("get").expect("stored");
    assert_eq!(stored, running, "the claim is what was stored");
    assert_eq!(
        backend.feed.events(),
        vec![(first.id, Some(1)), (first.id, Some(2))],
        "watchers see it queued, then running"
    );

    // A task not yet due is only created.
    let mut later = task("echo");
    later.next_attempt_at = Some(at(100));
    let (slot, on_claimed) = claimed_slot();
    let later = created(
        store
            .create_and_claim(later, None, &claim_request(at(10), 1), on_claimed)
            .await,
    );
    assert!(slot.lock().expect("not poisoned").is_none());
    assert_eq!(later.state, TaskState::Queued);

    // Once it is due, a new task waits its turn behind it.
    let (slot, on_claimed) = claimed_slot();
    let mut behind = task("echo");
    behind.created_at = at(150);
    let behind = created(
        store
            .create_and_claim(behind, None, &claim_request(at(200), 1), on_claimed)
            .await,
    );
    assert!(slot.lock().expect("not poisoned").is_none());
    assert_eq!(behind.state, TaskState::Queued);
    let next = store
        .claim_due(&claim_request(at(200), 2))
        .await
        .expect("claim");
    assert_eq!(
        next.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![later.id, behind.id]
    );
    let tokens: Vec<u64> = next
        .iter()
        .map(|task| task.lease.as_ref().expect("lease").token)
        .collect();
    assert!(
        tokens.iter().all(|&token| token > lease.token),
        "fencing tokens keep rising across both kinds of claim"
    );

    // A full queue refuses even a task that could start at once.
    let mut waiting = task("echo");
    waiting.next_attempt_at = Some(at(1_000));
    create(&store, waiting).await;
    let (slot, on_claimed) = claimed_slot();
    assert!(matches!(
        store
            .create_and_claim(
                task("echo"),
                Some(1),
                &claim_request(at(300), 1),
                on_claimed
            )
            .await,
        Err(StoreError::QueueFull { limit: 1 })
    ));
    assert!(slot.lock().expect("not poisoned").is_none());

    // A reused idempotency key answers with the existing task, unclaimed.
    let mut keyed = task("echo");
    keyed.idempotency_key = Some("once".into());
    let (_, on_claimed) = claimed_slot();
    store
        .create_and_claim(keyed.clone(), None, &claim_request(at(300), 1), on_claimed)
        .await
        .expect("create");
    let (slot, on_claimed) = claimed_slot();
    keyed.id = TaskId::generate();
    let again = store
        .create_and_claim(keyed, None, &claim_request(at(300), 1), on_claimed)
        .await
        .expect("create again");
    assert!(matches!(again, CreateOutcome::Existing(_)));
    assert!(slot.lock().expect("not poisoned").is_none());
}

async fn concurrent_writers_lose_no_update(backend: Backend) {
    let store = backend.store;
    let id = create(&store, task("echo")).await.id;
    let mut writers = Vec::new();
    for _ in 0..16 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let mut done = 0;
            while done < 10 {
                let current = store.get(id).await.expect("get").expect("stored");
                let bumped = next(&current, |task| task.priority += 1);
                match store.update(bumped, current.revision).await {
                    Ok(_) => done += 1,
                    Err(StoreError::RevisionConflict) => continue,
                    Err(error) => panic!("unexpected {error}"),
                }
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let last = store.get(id).await.expect("get").expect("stored");
    assert_eq!(last.priority, 160);
    assert_eq!(last.revision, 161);
}

/// The same idempotency key in two namespaces names two tasks; within one
/// it deduplicates as ever.
async fn idempotency_keys_are_per_namespace(backend: Backend) {
    let store = backend.store;
    let keyed = |namespace: &str| TaskRecord {
        idempotency_key: Some("order-1".into()),
        ..task_in(namespace, "echo")
    };
    let in_default = create(&store, keyed("default")).await;
    let in_a = create(&store, keyed("team-a")).await;
    assert_ne!(in_default.id, in_a.id);
    assert_eq!(in_a.idempotency_key.as_deref(), Some("order-1"));
    match store.create(keyed("team-a"), None).await.expect("a retry") {
        CreateOutcome::Existing(existing) => assert_eq!(existing.id, in_a.id),
        CreateOutcome::Created(_) => panic!("the same key in one namespace must deduplicate"),
    }
    let read = store.get(in_a.id).await.expect("get").expect("stored");
    assert_eq!(&*read.namespace, "team-a");
}

/// Listings, claims and counts of one namespace see only its tasks, and
/// claims pass over namespaces at their running quota without starving
/// the others.
async fn namespaces_scope_lists_claims_and_counts(backend: Backend) {
    let store = backend.store;
    let a_old = create(
        &store,
        TaskRecord {
            created_at: at(0),
            ..task_in("team-a", "echo")
        },
    )
    .await;
    let b = create(
        &store,
        TaskRecord {
            created_at: at(1),
            ..task_in("team-b", "echo")
        },
    )
    .await;
    let a_new = create(
        &store,
        TaskRecord {
            created_at: at(2),
            ..task_in("team-a", "echo")
        },
    )
    .await;
    let listed = store
        .list(&ListQuery {
            namespace: Some("team-a".into()),
            page_size: 10,
            ..ListQuery::default()
        })
        .await
        .expect("list");
    assert_eq!(
        listed.tasks.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![a_new.id, a_old.id]
    );
    let counts = store.namespace_counts("team-a").await.expect("counts");
    assert_eq!((counts.queued, counts.running), (2, 0));
    let only_b = ClaimRequest {
        namespace: Some("team-b".into()),
        ..claim_request(at(10), 10)
    };
    let claimed = store.claim_due(&only_b).await.expect("claim");
    assert_eq!(
        claimed.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![b.id]
    );
    assert_eq!(
        store
            .namespace_counts("team-b")
            .await
            .expect("counts")
            .running,
        1
    );
    let requeued = store
        .update(
            next(&claimed[0], |task| {
                task.state = TaskState::Queued;
                task.lease = None;
            }),
            claimed[0].revision,
        )
        .await
        .expect("back in the queue");
    let not_a = ClaimRequest {
        excluded_namespaces: Arc::from([Arc::from("team-a")]),
        ..claim_request(at(10), 1)
    };
    let claimed = store.claim_due(&not_a).await.expect("claim");
    assert_eq!(
        claimed.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![requeued.id]
    );
    assert!(store.claim_due(&not_a).await.expect("claim").is_empty());
    let claimed = store
        .claim_due(&claim_request(at(10), 10))
        .await
        .expect("claim");
    assert_eq!(
        claimed.iter().map(|task| task.id).collect::<Vec<_>>(),
        vec![a_old.id, a_new.id]
    );
}

macro_rules! conformance {
    ($backend:ident: $($case:ident),* $(,)?) => {
        mod $backend {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    super::$case(super::$backend().await).await;
                }
            )*
        }
    };
}

macro_rules! all_cases {
    ($backend:ident) => {
        conformance!($backend:
            creates_and_reads_back,
            idempotency_keys_deduplicate_or_refuse,
            admission_is_bounded,
            idempotency_keys_come_before_the_queue_limit,
            updates_are_compare_and_set_on_revision,
            claims_follow_priority_then_age_and_honour_not_before,
            leases_extend_fence_and_expire,
            overdue_lists_waiting_tasks_past_their_deadline,
            lists_filter_and_page_newest_first,
            deletes_and_sweeps_expired_tasks_in_batches,
            the_feed_sees_every_change_in_commit_order,
            create_and_claim_takes_a_new_task_only_when_nothing_else_is_due,
            concurrent_writers_lose_no_update,
            claims_take_only_the_kinds_asked_for,
            remote_leases_end_at_their_attempt_deadline,
            polls_are_recorded_per_kind,
            idempotency_keys_are_per_namespace,
            namespaces_scope_lists_claims_and_counts,
        );
    };
}

all_cases!(memory);
all_cases!(embedded);
all_cases!(postgres);

/// Reopening the embedded file keeps every record and every lease (a
/// remote worker's outlives a restart; the engine ends the in-process
/// attempts of the previous run itself), renewals included.
#[tokio::test]
async fn embedded_reopen_keeps_records_and_leases() {
    let data_dir = TempDir::new();
    let feed = Arc::new(RecordingFeed::default());
    let (running_id, queued_id, token) = {
        let store = EmbeddedStore::open(&data_dir.0, Durability::Full, feed.clone()).expect("open");
        let running = store.create(task("sleep"), None).await.expect("create");
        let CreateOutcome::Created(running) = running else {
            panic!("created")
        };
        let claimed = store
            .claim_due(&claim_request(SystemTime::now(), 1))
            .await
            .expect("claim")
            .remove(0);
        let token = claimed
            .lease
            .as_ref()
            .map(|lease: &Lease| lease.token)
            .expect("lease");
        let renewed_to = SystemTime::now() + Duration::from_secs(3600);
        store
            .extend_lease(running.id, token, renewed_to, SystemTime::now())
            .await
            .expect("renew");
        let CreateOutcome::Created(queued) =
            store.create(task("echo"), None).await.expect("create")
        else {
            panic!("created")
        };
        assert!(matches!(
            EmbeddedStore::open(&data_dir.0, Durability::Full, feed.clone()),
            Err(vow_server::store::OpenError::Locked(_))
        ));
        (running.id, queued.id, token)
    };
    // The writer thread lets go of the file once the store is dropped.
    let reopened =
        vow_server::store::EmbeddedStore::open(&data_dir.0, Durability::Full, feed.clone());
    let store = match reopened {
        Ok(store) => store,
        Err(error) => panic!("reopen: {error}"),
    };
    let queued = store.get(queued_id).await.expect("get").expect("kept");
    assert_eq!(queued.state, TaskState::Queued);
    assert!(
        store
            .expired_leases(SystemTime::now(), 10)
            .await
            .expect("expired")
            .is_empty(),
        "the renewed lease holds"
    );
    let running = store.get(running_id).await.expect("get").expect("kept");
    assert!(
        running.lease.as_ref().expect("lease").expires_at
            > SystemTime::now() + Duration::from_secs(3000),
        "the renewal survived the restart"
    );
    let CreateOutcome::Created(_) = store.create(task("echo"), None).await.expect("create") else {
        panic!("created")
    };
    let claimed = store
        .claim_due(&claim_request(SystemTime::now(), 10))
        .await
        .expect("claim");
    assert!(
        claimed
            .iter()
            .all(|task| task.lease.as_ref().is_some_and(|lease| lease.token > token)),
        "tokens keep growing across restarts"
    );
}
