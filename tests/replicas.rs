//! Several `vowd` replicas on one PostgreSQL database, as behind a load
//! balancer: any replica takes a Submit, runs the task, or answers an Await
//! or a Watch for a task another one ran. Every task finishes exactly once;
//! a replica killed with SIGKILL loses nothing (its attempts re-run once
//! their leases expire); one stopped with SIGTERM hands its attempts back at
//! once; a cancel asked of one replica stops the attempt running on another.
//!
//! Each test creates its own database (random name) and drops it at the end.

mod common;

use std::{
    collections::HashMap,
    os::unix::process::ExitStatusExt,
    time::{Duration, Instant, SystemTime},
};

use common::{TestDatabase, Vowd, poll_until};
use futures::{StreamExt, future::join_all};
use nix::sys::signal::Signal;
use serde_json::json;
use vow_client::{Client, Task, TaskExt, TaskState, WatchEventType};

const BOUND: Duration = Duration::from_secs(30);
/// Short leases, so that a dead replica's attempts are reaped within seconds.
const LEASE: &str = "2s";

async fn connect(vowd: &Vowd) -> Client {
    Client::connect(&vowd.address)
        .await
        .expect("connect to vowd")
}

fn time_of(timestamp: Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(timestamp.expect("the timestamp is set")).expect("a valid timestamp")
}

/// The parts of a task that make its result, as any replica reports it
/// (an error's details are left out: their metadata map has no fixed order
/// on the wire).
fn result_of(task: &Task) -> impl PartialEq + std::fmt::Debug {
    (
        task.revision,
        task.state(),
        task.attempt,
        task.output.clone(),
        task.end_time,
        task.error
            .as_ref()
            .map(|error| (error.code, error.message.clone())),
    )
}

/// Waits (bounded) until `predicate` holds for the task as `client` sees it.
async fn task_where(
    client: &Client,
    id: &str,
    what: &str,
    predicate: impl Fn(&Task) -> bool,
) -> Task {
    poll_until(BOUND, what, || async {
        let task = client.get(id).await.expect("get");
        predicate(&task).then_some(task)
    })
    .await
}

/// Follows one task's watch to its end and checks the stream: a snapshot,
/// then changes with revisions one apart, ending with the terminal change.
async fn watched_to_the_end(client: Client, id: String) -> Vec<Task> {
    let mut stream = std::pin::pin!(client.watch(&id));
    let mut tasks: Vec<Task> = Vec::new();
    while let Some(event) = tokio::time::timeout(BOUND, stream.next())
        .await
        .expect("the watch moves on")
    {
        let event = event.expect("a watch event");
        match event.event_type {
            WatchEventType::Heartbeat => continue,
            WatchEventType::Snapshot => assert!(tasks.is_empty(), "one snapshot, first"),
            WatchEventType::Change => {
                let last = tasks.last().expect("a snapshot comes first");
                let task = event.task.as_ref().expect("a change carries the task");
                assert_eq!(task.revision, last.revision + 1, "no gap in {id}'s watch");
            }
            other => panic!("unexpected {other:?} in the watch of {id}"),
        }
        tasks.push(event.task.expect("the event carries the task"));
    }
    let last = tasks.last().expect("the watch saw the task");
    assert_eq!(
        last.state(),
        TaskState::Succeeded,
        "the watch ends at the end"
    );
    tasks
}

/// Three replicas; clients submit round-robin and await and watch each task
/// on another replica than the one that took the Submit. Every task runs
/// once and all replicas agree on its final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_the_work_and_agree_on_every_result() {
    const TASKS: usize = 150;
    let database = TestDatabase::create().await;
    // Leases long enough that a starved CI machine renews them in time:
    // no replica dies here, and "ran once" must not hinge on scheduling.
    let replicas: Vec<Vowd> = (0..3)
        .map(|_| Vowd::start_postgres(&database.url, &["--lease-duration", "15s"]))
        .collect();
    let clients: Vec<Client> = join_all(replicas.iter().map(connect)).await;

    let runs = (0..TASKS).map(|n| {
        let submit_to = clients[n % 3].clone();
        let await_on = clients[(n + 1) % 3].clone();
        let watch_on = clients[(n + 2) % 3].clone();
        async move {
            let (kind, input) = if n % 2 == 0 {
                ("echo", json!({"n": n}))
            } else {
                ("sleep", json!({"ms": 20 + n % 50, "steps": 2}))
            };
            let submitted = submit_to
                .submit(kind)
                .input_json(input.clone())
                .send()
                .await
                .expect("submit");
            let id = submitted.task.id.clone();
            // Watch every third task from its start on the third replica.
            let watch =
                (n % 3 == 0).then(|| tokio::spawn(watched_to_the_end(watch_on, id.clone())));
            let awaited = await_on
                .await_task(&id, BOUND)
                .await
                .expect("await on another replica");
            assert!(awaited.done, "task {id} finished within {BOUND:?}");
            let watched = match watch {
                Some(watch) => Some(watch.await.expect("the watch task")),
                None => None,
            };
            (id, kind, input, awaited.task, watched)
        }
    });
    let finished = join_all(runs).await;

    for (id, kind, input, awaited, watched) in finished {
        assert_eq!(awaited.state(), TaskState::Succeeded, "{id}: {awaited:?}");
        assert_eq!(awaited.attempt, 1, "{id} ran once");
        if kind == "echo" {
            assert_eq!(awaited.output_json(), Some(input), "{id}'s output");
        }
        if let Some(watched) = watched {
            let last = watched.last().expect("watched");
            assert_eq!(
                last.revision, awaited.revision,
                "{id}: the watch ends where Await did"
            );
            let running = watched
                .iter()
                .filter(|task| task.state() == TaskState::Running)
                .map(|task| task.attempt)
                .max();
            assert!(
                running.is_none_or(|attempt| attempt == 1),
                "{id}: one attempt"
            );
        }
        // Every replica reads the same final record.
        for client in &clients {
            let task = client.get(&id).await.expect("get");
            assert_eq!(
                task.revision, awaited.revision,
                "{id}: same revision everywhere"
            );
            assert_eq!(task.end_time, awaited.end_time, "{id}: same end everywhere");
            assert_eq!(task.output, awaited.output, "{id}: same output everywhere");
        }
    }
}

/// A replica killed with SIGKILL while it runs `sleep` tasks: once their
/// leases expire, the other replicas re-run them; nothing is lost and no
/// task ends with two different results.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replicas_attempts_rerun_elsewhere_after_their_leases_expire() {
    const TASKS: usize = 12;
    let database = TestDatabase::create().await;
    let args = ["--lease-duration", LEASE];
    // The victim starts alone, so it claims every task.
    let victim = Vowd::start_postgres(&database.url, &args);
    let to_victim = connect(&victim).await;
    let mut ids = Vec::new();
    for n in 0..TASKS {
        let submitted = to_victim
            .submit("sleep")
            .input_json(json!({"ms": 1500 + 10 * n, "steps": 3}))
            .send()
            .await
            .expect("submit");
        ids.push(submitted.task.id);
    }
    for id in &ids {
        task_where(&to_victim, id, "the victim runs every task", |task| {
            task.state() == TaskState::Running
        })
        .await;
    }
    let survivors = [
        Vowd::start_postgres(&database.url, &args),
        Vowd::start_postgres(&database.url, &args),
    ];
    let clients: Vec<Client> = join_all(survivors.iter().map(connect)).await;
    let mut victim = victim;
    victim.signal(Signal::SIGKILL);
    let killed_at = SystemTime::now();
    let status = victim.wait_exit(BOUND);
    assert_eq!(status.signal(), Some(9), "the victim died of SIGKILL");

    let mut results: HashMap<String, Task> = HashMap::new();
    for (n, id) in ids.iter().enumerate() {
        let awaited = clients[n % 2]
            .await_task(id, BOUND)
            .await
            .expect("await on a survivor");
        assert!(awaited.done, "{id} finished after the kill");
        let task = awaited.task;
        assert_eq!(task.state(), TaskState::Succeeded, "{id}: {task:?}");
        assert_eq!(task.attempt, 2, "{id} re-ran once, after the lost attempt");
        assert!(
            time_of(task.start_time) >= killed_at + Duration::from_millis(500),
            "{id} re-ran only once its lease had expired"
        );
        results.insert(id.clone(), task);
    }
    // Later reads on every survivor show the same single result.
    for (id, result) in &results {
        for client in &clients {
            let task = client.get(id).await.expect("get");
            assert_eq!(
                result_of(&task),
                result_of(result),
                "{id} has one final result"
            );
        }
    }
}

/// SIGTERM with `--drain-timeout 0s` hands running attempts back at once:
/// another replica runs the task again well before its lease would expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_graceful_shutdown_hands_leases_back_at_once() {
    let database = TestDatabase::create().await;
    // A lease long enough that waiting for it would fail the bound below.
    let args = ["--lease-duration", "30s", "--drain-timeout", "0s"];
    let mut leaving = Vowd::start_postgres(&database.url, &args);
    let to_leaving = connect(&leaving).await;
    let id = to_leaving
        .submit("sleep")
        .input_json(json!({"ms": 3000, "steps": 3}))
        .send()
        .await
        .expect("submit")
        .task
        .id;
    task_where(
        &to_leaving,
        &id,
        "the first replica runs the task",
        |task| task.state() == TaskState::Running,
    )
    .await;
    let staying = Vowd::start_postgres(&database.url, &args);
    let to_staying = connect(&staying).await;

    let stopped_at = Instant::now();
    leaving.signal(Signal::SIGTERM);
    let rerun = task_where(
        &to_staying,
        &id,
        "another replica takes the task over",
        |task| task.state() == TaskState::Running && task.attempt == 2,
    )
    .await;
    let taken_over_after = stopped_at.elapsed();
    assert!(
        taken_over_after < Duration::from_secs(5),
        "taken over after {taken_over_after:?}, not at the lease's expiry"
    );
    assert_eq!(rerun.attempt, 2);
    let status = leaving.wait_exit(BOUND);
    assert!(status.success(), "a clean exit: {status:?}");
    let awaited = to_staying.await_task(&id, BOUND).await.expect("await");
    assert!(awaited.done);
    assert_eq!(awaited.task.state(), TaskState::Succeeded);
}

/// A cancel asked of one replica stops the attempt running on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancel_on_one_replica_stops_the_attempt_on_another() {
    let database = TestDatabase::create().await;
    let args = ["--lease-duration", LEASE];
    let runner = Vowd::start_postgres(&database.url, &args);
    let to_runner = connect(&runner).await;
    let id = to_runner
        .submit("sleep")
        .input_json(json!({"ms": 60_000}))
        .send()
        .await
        .expect("submit")
        .task
        .id;
    task_where(&to_runner, &id, "the runner runs the task", |task| {
        task.state() == TaskState::Running
    })
    .await;
    let other = Vowd::start_postgres(&database.url, &args);
    let to_other = connect(&other).await;

    let asked_at = Instant::now();
    to_other
        .cancel(&id, "changed my mind")
        .await
        .expect("cancel");
    let awaited = to_other
        .await_task(&id, Duration::from_secs(10))
        .await
        .expect("await");
    let took = asked_at.elapsed();
    assert!(awaited.done, "cancelled within the wait");
    assert_eq!(awaited.task.state(), TaskState::Cancelled);
    assert_eq!(awaited.task.attempt, 1, "never re-run");
    assert!(
        took < Duration::from_secs(3),
        "cancelled promptly: {took:?}"
    );
    let on_runner = to_runner.get(&id).await.expect("get");
    assert_eq!(
        result_of(&on_runner),
        result_of(&awaited.task),
        "both replicas agree"
    );
}

/// An unreachable database, or none named, stops vowd at start with a
/// message that names the database but not the password.
#[test]
fn vowd_refuses_to_start_without_a_reachable_database() {
    let refused = common::vowd_until_exit(
        &[
            "--listen".as_ref(),
            "127.0.0.1:0".as_ref(),
            "--store".as_ref(),
            "postgres".as_ref(),
            "--database-url".as_ref(),
            "postgres://vow:secret@127.0.0.1:1/vow".as_ref(),
        ],
        BOUND,
    );
    assert!(!refused.status.success(), "vowd exits non-zero");
    assert!(
        refused
            .stderr
            .contains("cannot connect to PostgreSQL at 127.0.0.1:1/vow"),
        "names the database: {}",
        refused.stderr
    );
    assert!(
        !refused.stderr.contains("secret"),
        "never prints the password"
    );
    assert!(refused.stdout.is_empty(), "never announces an address");

    let refused = common::vowd_until_exit(&["--store".as_ref(), "postgres".as_ref()], BOUND);
    assert_eq!(refused.status.code(), Some(2), "a configuration error");
    assert!(
        refused.stderr.contains("--database-url"),
        "{}",
        refused.stderr
    );
}

/// Latency from a task finishing on one replica to an Await on another
/// returning (the cross-replica notification path), over many tasks.
/// Not part of the suite: run it by hand, on a release build, with
/// `cargo test --release --test replicas -- --ignored --nocapture`
/// (`VOW_LATENCY_SAMPLES`, default 500; `VOW_LATENCY_LOAD` background callers,
/// default none).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement, run by hand"]
async fn cross_replica_await_latency() {
    let samples: usize = std::env::var("VOW_LATENCY_SAMPLES")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(500);
    let database = TestDatabase::create().await;
    // B's one executor slot is kept busy, so A runs every sampled task and B
    // only waits for them.
    let b = Vowd::start_postgres(&database.url, &["--max-concurrent-tasks", "1"]);
    let to_b = connect(&b).await;
    let blocker = to_b
        .submit("sleep")
        .input_json(json!({"ms": 3_600_000}))
        .send()
        .await
        .expect("submit")
        .task
        .id;
    task_where(&to_b, &blocker, "B is busy", |task| {
        task.state() == TaskState::Running
    })
    .await;
    let a = Vowd::start_postgres(&database.url, &[]);
    let to_a = connect(&a).await;
    // Optional background load: callers submitting echo tasks to A and
    // awaiting them on B, as fast as they can.
    let load: usize = std::env::var("VOW_LATENCY_LOAD")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loaders: Vec<_> = (0..load)
        .map(|_| {
            let (to_a, to_b, stop) = (to_a.clone(), to_b.clone(), stop.clone());
            tokio::spawn(async move {
                let mut done = 0_u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = to_a.submit("echo").send().await.expect("submit").task.id;
                    to_b.await_task(&id, BOUND).await.expect("await on B");
                    done += 1;
                }
                done
            })
        })
        .collect();
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(samples);
    for n in 0..samples {
        // The task's end is in the future when Await starts on B.
        let id = to_a
            .submit("sleep")
            .input_json(json!({"ms": 30, "steps": 1}))
            .label("sample", &n.to_string())
            .send()
            .await
            .expect("submit")
            .task
            .id;
        let awaited = to_b.await_task(&id, BOUND).await.expect("await on B");
        let returned_at = SystemTime::now();
        assert!(awaited.done);
        let ended_at = time_of(awaited.task.end_time);
        latencies.push(returned_at.duration_since(ended_at).unwrap_or_default());
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut background = 0;
    for loader in loaders {
        background += loader.await.expect("a load caller");
    }
    let elapsed = started.elapsed();
    latencies.sort();
    let percentile =
        |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "cross-replica finish -> Await return over {samples} tasks: p50 {:?}, p90 {:?}, p99 {:?}, max {:?} \
         (background: {load} callers, {:.0} tasks/s)",
        percentile(0.50),
        percentile(0.90),
        percentile(0.99),
        latencies[latencies.len() - 1],
        background as f64 / elapsed.as_secs_f64()
    );
}

/// An attempt that runs longer than its lease, renewed all along, keeps its
/// outcome. PostgreSQL renews in the lease column alone, and the outcome
/// write used to judge the lease by the claim's expiry: the success was
/// dropped as "lease lost" and the task ran again.
#[tokio::test]
async fn an_attempt_longer_than_its_lease_keeps_its_outcome() {
    let database = TestDatabase::create().await;
    let replica = Vowd::start_postgres(&database.url, &["--lease-duration", "2s"]);
    let client = connect(&replica).await;
    let task = client
        .submit("sleep")
        .input_json(json!({"ms": 5_000}))
        .max_attempts(2)
        .run(Duration::from_secs(30))
        .await
        .expect("run");
    assert_eq!(
        task.state(),
        TaskState::Succeeded,
        "{task:?}\n{}",
        replica.logs()
    );
    assert_eq!(task.attempt, 1, "ran once: {}", replica.logs());
}
