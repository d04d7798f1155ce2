//! Several PostgreSQL store instances on one database, as several `vowd`
//! replicas use it: fencing of stale lease holders, changes reaching the
//! other instances' feeds in order (also across a lost listening
//! connection), and idempotency keys and retention sweeps under concurrency.
//! Every test creates its own database and drops it at the end.

mod support;

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use sqlx::{Connection, PgConnection};
use vow_server::{
    engine::{
        retry::RetryPolicy,
        task::{Payload, TaskId, TaskRecord, TaskState, TraceContext},
    },
    store::{
        ChangeFeed, ClaimRequest, CreateOutcome, PostgresOptions, PostgresStore, SharedTask, Store,
        StoreError,
    },
};

const BOUND: Duration = Duration::from_secs(10);

/// Records what a store publishes, in order.
#[derive(Default)]
struct RecordingFeed {
    events: Mutex<Vec<(TaskId, Option<u64>)>>,
}

impl RecordingFeed {
    fn events(&self) -> Vec<(TaskId, Option<u64>)> {
        self.events.lock().expect("not poisoned").clone()
    }

    fn of(&self, id: TaskId) -> Vec<Option<u64>> {
        self.events()
            .into_iter()
            .filter(|(task, _)| *task == id)
            .map(|(_, revision)| revision)
            .collect()
    }

    /// Waits (bounded) until the feed holds `expected` for the task.
    async fn wait_for(&self, id: TaskId, expected: &[Option<u64>]) {
        let started = tokio::time::Instant::now();
        loop {
            let seen = self.of(id);
            if seen == expected {
                return;
            }
            assert!(
                started.elapsed() < BOUND,
                "task {id}: the feed holds {seen:?}, expected {expected:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
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

/// One store instance (a "replica") with its feed.
struct Replica {
    store: Arc<PostgresStore>,
    feed: Arc<RecordingFeed>,
}

async fn replica(database: &support::TestDatabase) -> Replica {
    let feed = Arc::new(RecordingFeed::default());
    let options = PostgresOptions {
        url: database.url.clone(),
        max_connections: 8,
        min_connections: 0,
        acquire_timeout: Duration::from_secs(10),
    };
    let store = PostgresStore::open(&options, feed.clone())
        .await
        .expect("open the PostgreSQL store");
    Replica {
        store: Arc::new(store),
        feed,
    }
}

fn task(kind: &str) -> TaskRecord {
    let now = SystemTime::now();
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
        created_at: now,
        updated_at: now,
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

fn next(task: &TaskRecord, change: impl FnOnce(&mut TaskRecord)) -> TaskRecord {
    let mut next = task.clone();
    change(&mut next);
    next.revision += 1;
    next
}

fn claim(owner: &str, now: SystemTime, lease: Duration) -> ClaimRequest {
    ClaimRequest {
        now,
        limit: 10,
        owner: owner.into(),
        lease_duration: lease,
        kinds: ["echo", "sleep"].map(str::to_owned).into(),
        namespace: None,
        excluded_namespaces: Arc::from([]),
        remote: None,
    }
}

async fn created(store: &PostgresStore, task: TaskRecord) -> SharedTask {
    match store.create(task, None).await.expect("create") {
        CreateOutcome::Created(task) => task,
        CreateOutcome::Existing(task) => panic!("expected a new task, got {}", task.id),
    }
}

/// A replica whose lease expired and was taken over cannot store its result,
/// nor renew the lease; the new holder's result stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_replica_cannot_overwrite_the_new_result() {
    let database = support::TestDatabase::create().await;
    let a = replica(&database).await;
    let b = replica(&database).await;
    let submitted = created(&a.store, task("sleep")).await;

    let start = SystemTime::now();
    let claimed_by_a = a
        .store
        .claim_due(&claim("replica-a", start, Duration::from_secs(1)))
        .await
        .expect("claim")
        .remove(0);
    assert_eq!(claimed_by_a.id, submitted.id);
    assert!(
        b.store
            .claim_due(&claim("replica-b", start, Duration::from_secs(1)))
            .await
            .expect("claim")
            .is_empty(),
        "a running task is not claimed twice"
    );

    // B's reaper finds the lease expired and requeues the task, then B claims it.
    let later = start + Duration::from_secs(2);
    let expired = b.store.expired_leases(later, 10).await.expect("expired");
    assert_eq!(expired.len(), 1);
    let requeued = next(&expired[0], |task| {
        task.state = TaskState::Queued;
        task.lease = None;
    });
    b.store
        .update(requeued, expired[0].revision)
        .await
        .expect("requeue");
    let claimed_by_b = b
        .store
        .claim_due(&claim("replica-b", later, Duration::from_secs(30)))
        .await
        .expect("claim")
        .remove(0);
    let token_a = claimed_by_a.lease.as_ref().expect("lease").token;
    let token_b = claimed_by_b.lease.as_ref().expect("lease").token;
    assert!(token_b > token_a, "fencing tokens grow across replicas");
    assert_eq!(claimed_by_b.attempt, 2);

    let result_of_b = next(&claimed_by_b, |task| {
        task.state = TaskState::Succeeded;
        task.output = Some(Arc::new(Payload::json(serde_json::json!("from b"))));
        task.lease = None;
    });
    b.store
        .update(result_of_b, claimed_by_b.revision)
        .await
        .expect("B stores its result");

    // A wakes up: its renewal and its result are both refused.
    assert!(matches!(
        a.store
            .extend_lease(
                submitted.id,
                token_a,
                later + Duration::from_secs(30),
                later
            )
            .await,
        Err(StoreError::StaleLease)
    ));
    let result_of_a = next(&claimed_by_a, |task| {
        task.state = TaskState::Succeeded;
        task.output = Some(Arc::new(Payload::json(serde_json::json!("from a"))));
        task.lease = None;
    });
    assert!(matches!(
        a.store.update(result_of_a, claimed_by_a.revision).await,
        Err(StoreError::RevisionConflict)
    ));
    let stored = a.store.get(submitted.id).await.expect("get").expect("kept");
    assert_eq!(stored.state, TaskState::Succeeded);
    assert_eq!(
        stored.output.as_ref().and_then(|output| output.as_json()),
        Some(&serde_json::json!("from b"))
    );
}

/// What one replica commits reaches the other's feed, every revision in
/// order, deletion included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_reach_the_other_replicas_feed_in_order() {
    let database = support::TestDatabase::create().await;
    let a = replica(&database).await;
    let b = replica(&database).await;
    let submitted = created(&a.store, task("echo")).await;
    // B claims once it heard of the task, as its dispatcher would.
    b.feed.wait_for(submitted.id, &[Some(1)]).await;
    let claimed = b
        .store
        .claim_due(&claim(
            "replica-b",
            SystemTime::now(),
            Duration::from_secs(30),
        ))
        .await
        .expect("claim")
        .remove(0);
    let mut current = claimed;
    for percent in [10.0, 50.0, 90.0] {
        let progressed = next(&current, |task| {
            task.progress = Some(vow_server::engine::task::Progress {
                percent,
                message: String::new(),
                updated_at: SystemTime::now(),
            });
        });
        current = b
            .store
            .update(progressed, current.revision)
            .await
            .expect("progress");
    }
    let finished = next(&current, |task| {
        task.state = TaskState::Succeeded;
        task.lease = None;
    });
    b.store
        .update(finished, current.revision)
        .await
        .expect("finish");
    assert!(a.store.delete(submitted.id).await.expect("delete"));

    let every_change = [Some(1), Some(2), Some(3), Some(4), Some(5), Some(6), None];
    a.feed.wait_for(submitted.id, &every_change).await;
    b.feed.wait_for(submitted.id, &every_change).await;
}

/// A record too large for a notification payload is read back from the
/// change table; small and large records interleave in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_too_large_to_notify_are_read_from_the_change_table() {
    let database = support::TestDatabase::create().await;
    let a = replica(&database).await;
    let b = replica(&database).await;
    let large = TaskRecord {
        input: Arc::new(Payload::json(
            serde_json::json!({"blob": "x".repeat(20_000)}),
        )),
        ..task("echo")
    };
    let submitted = created(&a.store, large).await;
    let mut current = submitted.clone();
    for round in 0..4 {
        let changed = next(&current, |task| {
            task.priority += 1;
            // Every other revision shrinks below the payload limit.
            task.input = Arc::new(Payload::json(if round % 2 == 0 {
                serde_json::json!({"small": round})
            } else {
                serde_json::json!({"blob": "y".repeat(20_000)})
            }));
        });
        current = a
            .store
            .update(changed, current.revision)
            .await
            .expect("update");
    }
    let expected: Vec<Option<u64>> = (1..=5).map(Some).collect();
    b.feed.wait_for(submitted.id, &expected).await;
}

/// A replica that loses its listening connection reconnects and replays
/// what other replicas committed meanwhile, with no gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_listening_connection_is_resynced_without_gaps() {
    let database = support::TestDatabase::create().await;
    let a = replica(&database).await;
    let b = replica(&database).await;
    let first = created(&a.store, task("echo")).await;
    b.feed.wait_for(first.id, &[Some(1)]).await;

    let mut admin = PgConnection::connect(&database.url)
        .await
        .expect("connect as admin");
    let terminated: Vec<(bool,)> = sqlx::query_as(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND application_name = 'vowd-listener'",
    )
    .fetch_all(&mut admin)
    .await
    .expect("terminate the listeners");
    assert_eq!(
        terminated.len(),
        2,
        "both replicas listen on their own connection"
    );

    // Committed while the listeners are down (they come back within moments).
    let mut tasks = vec![first.clone()];
    let mut current = first;
    for _ in 0..5 {
        let bumped = next(&current, |task| task.priority += 1);
        current = a
            .store
            .update(bumped, current.revision)
            .await
            .expect("update");
        tasks.push(created(&a.store, task("echo")).await);
    }
    let expected: Vec<Option<u64>> = (1..=6).map(Some).collect();
    b.feed.wait_for(current.id, &expected).await;
    for task in &tasks[1..] {
        b.feed.wait_for(task.id, &[Some(1)]).await;
    }
    admin.close().await.expect("close");
}

/// The same idempotency key submitted to two replicas at once makes one task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_replicas_deduplicate_idempotency_keys() {
    let database = support::TestDatabase::create().await;
    let a = replica(&database).await;
    let b = replica(&database).await;
    for round in 0..20 {
        let key = format!("key-{round}");
        let on_a = TaskRecord {
            idempotency_key: Some(key.clone()),
            ..task("echo")
        };
        let on_b = TaskRecord {
            idempotency_key: Some(key),
            ..task("echo")
        };
        let (from_a, from_b) = tokio::join!(a.store.create(on_a, None), b.store.create(on_b, None));
        let outcomes = [from_a.expect("create on a"), from_b.expect("create on b")];
        let created: Vec<TaskId> = outcomes
            .iter()
            .filter_map(|outcome| match outcome {
                CreateOutcome::Created(task) => Some(task.id),
                CreateOutcome::Existing(_) => None,
            })
            .collect();
        assert_eq!(created.len(), 1, "exactly one replica creates the task");
        for outcome in &outcomes {
            let (CreateOutcome::Created(task) | CreateOutcome::Existing(task)) = outcome;
            assert_eq!(task.id, created[0]);
        }
    }
}

/// Replicas sweeping expired tasks at once delete each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sweeps_delete_each_task_once() {
    let database = support::TestDatabase::create().await;
    let a = replica(&database).await;
    let b = replica(&database).await;
    let past = SystemTime::now() - Duration::from_secs(60);
    let mut finished = HashSet::new();
    for _ in 0..300 {
        let submitted = created(&a.store, task("echo")).await;
        let done = next(&submitted, |task| {
            task.state = TaskState::Succeeded;
            task.expires_at = Some(past);
        });
        a.store.update(done, 1).await.expect("finish");
        finished.insert(submitted.id);
    }
    let sweep = |store: Arc<PostgresStore>| async move {
        let mut deleted = Vec::new();
        loop {
            let batch = store
                .delete_expired(SystemTime::now(), 16)
                .await
                .expect("sweep");
            if batch.is_empty() {
                return deleted;
            }
            deleted.extend(batch);
        }
    };
    let (from_a, from_b) = tokio::join!(sweep(a.store.clone()), sweep(b.store.clone()));
    let mut all: Vec<TaskId> = from_a.iter().chain(&from_b).copied().collect();
    assert_eq!(all.len(), finished.len(), "no task is deleted twice");
    all.sort();
    all.dedup();
    assert_eq!(all.into_iter().collect::<HashSet<_>>(), finished);
}

/// Writes submitted together go out in batches; a write the database
/// refuses (here a duplicate id) fails alone, the others land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_write_fails_alone_in_its_batch() {
    let database = support::TestDatabase::create().await;
    let a = replica(&database).await;
    let mut tasks: Vec<TaskRecord> = (0..64).map(|_| task("echo")).collect();
    let duplicate_id = tasks[0].id;
    tasks[32].id = duplicate_id;
    let outcomes =
        futures::future::join_all(tasks.into_iter().map(|task| a.store.create(task, None))).await;
    let refused = outcomes.iter().filter(|outcome| outcome.is_err()).count();
    assert_eq!(refused, 1, "only the duplicate is refused: {outcomes:?}");
    let page = a
        .store
        .list(&vow_server::store::ListQuery {
            page_size: 100,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(page.tasks.len(), 63);
}

/// Many writers racing on one task's revision: each batch takes one write
/// per task and the rest wait for later batches; exactly one write wins,
/// every other one hears of its conflict, and none is left waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_writes_of_one_task_all_get_an_answer() {
    let database = support::TestDatabase::create().await;
    let a = replica(&database).await;
    for _ in 0..20 {
        let submitted = created(&a.store, task("echo")).await;
        let racers = (0..64).map(|priority| {
            let store = a.store.clone();
            let bumped = next(&submitted, |task| task.priority = priority);
            async move { store.update(bumped, 1).await }
        });
        let outcomes = tokio::time::timeout(BOUND, futures::future::join_all(racers))
            .await
            .expect("every write is answered");
        let won = outcomes.iter().filter(|outcome| outcome.is_ok()).count();
        assert_eq!(won, 1, "one compare-and-set wins");
        assert!(
            outcomes
                .iter()
                .filter_map(|outcome| outcome.as_ref().err())
                .all(|error| matches!(error, StoreError::RevisionConflict)),
            "the others conflict: {outcomes:?}"
        );
    }
}
