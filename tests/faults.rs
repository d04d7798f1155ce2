//! No result lost, no completion missed, under network faults: real `vowd`
//! replicas on a real PostgreSQL, with the fault-injecting proxy of
//! `common::fault_proxy` between a replica and the database (resetting,
//! refusing and stalling connections, or swallowing the database's
//! replies), and a memory-store `vowd` for the event hub's topics.
//!
//! Each test creates its own database and drops it at the end. Faults are
//! switched on a schedule (they are what is injected); everything the test
//! then expects is waited for with a bound.

mod common;

use std::{
    collections::HashMap,
    net::SocketAddr,
    time::{Duration, SystemTime},
};

use common::{
    TestDatabase, Vowd,
    fault_proxy::{Connections, FaultProxy},
    metric_value, poll_until, scrape_metrics,
};
use futures::{StreamExt, future::join_all};
use serde_json::json;
use tonic::Code;
use vow_client::{
    Client, Task, TaskExt, TaskState, WatchEventType,
    proto::{self, task_service_client::TaskServiceClient},
};

const BOUND: Duration = Duration::from_secs(30);
/// What a replica's connections carry in their startup message when they
/// are the listener's (`application_name`).
const LISTENER_MARKER: &[u8] = b"vowd-listener";

fn postgres_address() -> SocketAddr {
    let server = common::postgres_server();
    let authority = server
        .rsplit('@')
        .next()
        .expect("a postgres:// URL with a host");
    authority
        .parse()
        .unwrap_or_else(|_| panic!("VOW_TEST_POSTGRES must name host:port by IP ({server})"))
}

/// A replica whose every database connection goes through a fault proxy.
async fn replica_behind_proxy(database: &TestDatabase, extra_args: &[&str]) -> (FaultProxy, Vowd) {
    let proxy = FaultProxy::start(postgres_address(), LISTENER_MARKER).await;
    let vowd = Vowd::start_postgres(&proxy.postgres_url(&database.name), extra_args);
    (proxy, vowd)
}

async fn connect(vowd: &Vowd) -> Client {
    common::client_without_retries(vowd).await
}

/// A one-second `sleep` task with one attempt, running by the time this returns.
async fn one_second_sleep(client: &Client) -> String {
    let id = client
        .submit("sleep")
        .input_json(json!({"ms": 1000, "steps": 1}))
        .max_attempts(1)
        .send()
        .await
        .expect("submit")
        .task
        .id;
    running(client, &id).await;
    id
}

async fn running(client: &Client, id: &str) -> Task {
    poll_until(BOUND, "the task to run", || async {
        let task = client.get(id).await.ok()?;
        (task.state() == TaskState::Running).then_some(task)
    })
    .await
}

fn start_time(task: &Task) -> SystemTime {
    SystemTime::try_from(task.start_time.expect("a running task has a start time"))
        .expect("a valid start time")
}

/// Sleeps until `at` (a point of the fault schedule).
async fn sleep_until(at: SystemTime) {
    let wait = at.duration_since(SystemTime::now()).unwrap_or_default();
    tokio::time::sleep(wait).await;
}

/// Follows a watch until the task is terminal; returns it then.
async fn watch_to_the_end(
    events: impl futures::Stream<Item = Result<vow_client::WatchEvent, vow_client::Error>>,
) -> Task {
    let mut events = std::pin::pin!(events);
    while let Some(event) = events.next().await {
        let event = event.expect("a watch event");
        if event.event_type == WatchEventType::Heartbeat {
            continue;
        }
        let task = event.task.expect("the event carries the task");
        if task.is_terminal() {
            return task;
        }
    }
    panic!("the watch ended before the task did");
}

/// The first message of a watch: its snapshot, which also proves the
/// watch is subscribed to the task's changes.
async fn watch_after_snapshot(
    client: &Client,
    id: &str,
) -> impl futures::Stream<Item = Result<vow_client::WatchEvent, vow_client::Error>> + use<> {
    let mut events = Box::pin(client.watch(id));
    let first = tokio::time::timeout(BOUND, events.next())
        .await
        .expect("the watch opens")
        .expect("a first message")
        .expect("a snapshot");
    assert_eq!(first.event_type, WatchEventType::Snapshot);
    events
}

/// Item 1: an attempt that succeeded while the database was unreachable is
/// stored once it is back, and the handler does not run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_successful_attempt_survives_a_database_outage_at_its_end() {
    let database = TestDatabase::create().await;
    let (proxy, vowd) = replica_behind_proxy(&database, &[]).await;
    let client = connect(&vowd).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let submitted = client
            .submit("sleep")
            .input_json(json!({"ms": 2000}))
            .max_attempts(1)
            .send()
            .await
            .expect("submit");
        ids.push(submitted.task.id);
    }
    let mut first_start = None;
    for id in &ids {
        let started = start_time(&running(&client, id).await);
        first_start = Some(first_start.map_or(started, |first: SystemTime| first.min(started)));
    }
    let first_start = first_start.expect("three tasks");
    // Every connection cut, and none let through, from 1.7 s to 2.9 s of
    // the sleeps: their outcomes are due in the middle of it.
    sleep_until(first_start + Duration::from_millis(1700)).await;
    proxy.refuse(Some(Connections::All));
    proxy.reset(Connections::All);
    sleep_until(first_start + Duration::from_millis(2900)).await;
    proxy.refuse(None);

    for id in &ids {
        let awaited = client
            .await_task(id, Duration::from_secs(20))
            .await
            .expect("await");
        assert!(
            awaited.done,
            "task {id} is still {:?}",
            awaited.task.state()
        );
        assert_eq!(awaited.task.state(), TaskState::Succeeded, "task {id}");
        assert_eq!(awaited.task.attempt, 1, "the handler ran once");
    }
    let logs = vowd.logs();
    assert!(
        logs.contains("could not store an attempt's outcome yet"),
        "the outage did fall on an outcome write:\n{logs}"
    );
    assert!(
        !logs.contains("gave up storing an attempt's outcome"),
        "no outcome was given up:\n{logs}"
    );
}

/// Item 1, with a connection that freezes without a reset (a sidecar that
/// stops forwarding) under the outcome write: the statement is given up
/// after its timeout, found not to have committed, and written again on
/// another connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_written_on_a_frozen_connection_is_written_again() {
    let database = TestDatabase::create().await;
    let (proxy, vowd) = replica_behind_proxy(&database, &[]).await;
    let client = connect(&vowd).await;
    let id = one_second_sleep(&client).await;
    proxy.stall_at(Some(b"\"Succeeded\""));
    poll_until(BOUND, "the outcome write to freeze", || async {
        (proxy.triggered() > 0).then_some(())
    })
    .await;
    proxy.stall_at(None);
    let finished = poll_until(
        Duration::from_secs(60),
        "the outcome to be stored",
        || async {
            let task = client.get(&id).await.ok()?;
            task.is_terminal().then_some(task)
        },
    )
    .await;
    assert_eq!(
        finished.state(),
        TaskState::Succeeded,
        "{:?}",
        finished.error
    );
    assert_eq!(finished.attempt, 1, "the handler ran once");
}

/// Item 2: an outcome write that committed but whose reply was lost still
/// reaches the watchers on the replica that wrote it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_write_whose_reply_was_lost_reaches_its_own_watchers() {
    let database = TestDatabase::create().await;
    let (proxy, vowd) = replica_behind_proxy(&database, &[]).await;
    let client = connect(&vowd).await;
    let id = one_second_sleep(&client).await;
    let watch = watch_after_snapshot(&client, &id).await;
    // The write that stores the outcome (its record says "Succeeded")
    // runs and commits; its answer is lost, then its connection breaks.
    proxy.drop_replies_after(Some(b"\"Succeeded\""));
    poll_until(BOUND, "the outcome write", || async {
        (proxy.triggered() > 0).then_some(())
    })
    .await;
    proxy.drop_replies_after(None);
    tokio::time::sleep(Duration::from_millis(500)).await;
    proxy.reset(Connections::Unmarked);

    let finished = tokio::time::timeout(BOUND, watch_to_the_end(watch))
        .await
        .expect("the watch on the writing replica sees the task finish");
    assert_eq!(
        finished.state(),
        TaskState::Succeeded,
        "{:?}\n{}",
        finished.error,
        vowd.logs()
    );
    let awaited = client
        .await_task(&id, Duration::from_secs(5))
        .await
        .expect("await");
    assert_eq!(awaited.task.state(), TaskState::Succeeded);
    assert_eq!(awaited.task.attempt, 1, "the handler ran once");
}

/// Item 2: submits whose batched insert committed while its reply was lost
/// answer OK or UNAVAILABLE, never INTERNAL, and every OK names a task that
/// exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_whose_replies_were_lost_are_never_internal_errors() {
    let database = TestDatabase::create().await;
    let (proxy, vowd) = replica_behind_proxy(&database, &[]).await;
    let stub = TaskServiceClient::connect(vowd.url())
        .await
        .expect("connect a stub");
    // Every insert of these tasks commits, and its answer is lost.
    proxy.drop_replies_after(Some(b"lost-reply"));
    let submits = (0..48).map(|n| {
        let mut stub = stub.clone();
        async move {
            let mut request = tonic::Request::new(proto::SubmitRequest {
                kind: "sleep".into(),
                input: Some(proto::Payload {
                    data: Some(proto::payload::Data::Json(vow_client::json_to_value(
                        &json!({"ms": 60_000, "n": n, "tag": "lost-reply"}),
                    ))),
                    content_type: String::new(),
                }),
                ..proto::SubmitRequest::default()
            });
            request.set_timeout(Duration::from_secs(20));
            stub.submit(request).await
        }
    });
    let submitting = tokio::spawn(join_all(submits));
    poll_until(BOUND, "inserts to be sent", || async {
        (proxy.triggered() > 0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    proxy.drop_replies_after(None);
    proxy.reset(Connections::Unmarked);
    let answers = submitting.await.expect("the submits end");

    let client = connect(&vowd).await;
    let mut acknowledged = 0;
    for answer in answers {
        match answer {
            Ok(response) => {
                let task = response.into_inner().task.expect("a task");
                client
                    .get(&task.id)
                    .await
                    .expect("an acknowledged task exists");
                acknowledged += 1;
            }
            Err(status) => assert_eq!(
                status.code(),
                Code::Unavailable,
                "an ambiguous insert is UNAVAILABLE, not {status:?}"
            ),
        }
    }
    assert!(
        acknowledged > 0,
        "the inserts that committed are acknowledged once settled"
    );
}

/// Item 3: a change too large for its notification, whose record cannot be
/// read from the change table when it is announced, still reaches the
/// watchers on the other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_change_reaches_the_other_replica_when_reading_it_fails() {
    let database = TestDatabase::create().await;
    let (proxy, watching) = replica_behind_proxy(&database, &[]).await;
    let running_on = Vowd::start_postgres(&database.url, &[]);
    let submitter = connect(&running_on).await;
    let watcher = connect(&watching).await;
    let id = submitter
        .submit("sleep")
        .input_json(json!({"ms": 1000, "steps": 1, "padding": "x".repeat(8 * 1024)}))
        .send()
        .await
        .expect("submit")
        .task
        .id;
    let started = start_time(&running(&submitter, &id).await);
    let watch = watch_after_snapshot(&watcher, &id).await;
    // The watching replica keeps hearing notifications, but none of its
    // queries reach the database from before the end until 3 s after it.
    sleep_until(started + Duration::from_millis(500)).await;
    proxy.refuse(Some(Connections::Unmarked));
    proxy.reset(Connections::Unmarked);
    sleep_until(started + Duration::from_millis(4000)).await;
    proxy.refuse(None);

    let finished = tokio::time::timeout(BOUND, watch_to_the_end(watch))
        .await
        .expect("the watch on the other replica sees the task finish");
    assert_eq!(finished.state(), TaskState::Succeeded);
}

/// Item 4: a listener whose connection froze without a reset reconnects
/// within a bounded time, and what was missed reaches its waiters.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_listener_reconnects_and_replays() {
    let database = TestDatabase::create().await;
    let (proxy, deaf) = replica_behind_proxy(&database, &["--metrics-listen", "127.0.0.1:0"]).await;
    let other = Vowd::start_postgres(&database.url, &[]);
    let submitter = connect(&other).await;
    let waiter = connect(&deaf).await;
    assert_eq!(proxy.open(Connections::Marked), 1, "one listener");
    let id = submitter
        .submit("sleep")
        .input_json(json!({"ms": 60_000}))
        .send()
        .await
        .expect("submit")
        .task
        .id;
    running(&submitter, &id).await;
    let watch = watch_after_snapshot(&waiter, &id).await;
    proxy.stall(Connections::Marked, true);
    submitter.cancel(&id, "test").await.expect("cancel");
    let watching = tokio::spawn(watch_to_the_end(watch));

    let metrics_address = deaf.metrics_address.clone().expect("metrics");
    let deaf_gauge = || {
        metric_value(
            &scrape_metrics(&metrics_address),
            "vow_change_listener_deaf_seconds",
        )
    };
    // The log line, not the gauge: a reconnect can be over between two
    // scrapes, and the gauge is back at zero by then.
    poll_until(BOUND, "the outage to be logged", || async {
        deaf.logs()
            .contains("deaf to other replicas' changes since")
            .then_some(())
    })
    .await;
    // The check fails within 6 s of the freeze (a second between checks,
    // 5 s for an answer); reconnecting and replaying take the rest.
    let finished = tokio::time::timeout(Duration::from_secs(15), watching)
        .await
        .expect("the deaf replica hears the cancel once it listens again")
        .expect("the watch task");
    assert_eq!(finished.state(), TaskState::Cancelled);
    poll_until(BOUND, "the deaf gauge back at zero", || async {
        (deaf_gauge() == Some(0.0)).then_some(())
    })
    .await;
}

/// Item 4: the database side of every connection of a replica has TCP
/// keepalives on, so a flow dropped silently (NAT, failover) is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_database_connection_has_keepalives() {
    let database = TestDatabase::create().await;
    let vowd = Vowd::start_postgres(&database.url, &[]);
    let client = connect(&vowd).await;
    client.submit("echo").send().await.expect("submit");
    let pid = vowd.child.id();
    let ports = poll_until(BOUND, "vowd's database connections", || async {
        let ports = local_ports_of(pid, postgres_address().port());
        (ports.len() >= 2).then_some(ports)
    })
    .await;
    // An idle socket shows its keepalive timer: the time left until the
    // first probe, which the operating system's default puts at two hours.
    let timers = poll_until(BOUND, "idle connections", || async {
        let timers = keepalive_timers(postgres_address().port());
        ports
            .iter()
            .all(|port| timers.get(port).is_some_and(|timer| timer.0 == "keepalive"))
            .then_some(timers)
    })
    .await;
    for port in ports {
        let (_, left) = &timers[&port];
        assert!(
            *left <= Duration::from_secs(60),
            "the database's side of vowd's connection from port {port} probes within a minute ({left:?})"
        );
    }
}

/// Local ports of the TCP connections that process `pid` holds to `port`.
fn local_ports_of(pid: u32, port: u16) -> Vec<u16> {
    let output = std::process::Command::new("ss")
        .args(["-tnpH", "state", "established"])
        .arg(format!("( dport = :{port} )"))
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(&format!("pid={pid},")))
        .filter_map(|line| {
            let local = line.split_whitespace().nth(2)?;
            local.rsplit(':').next()?.parse().ok()
        })
        .collect()
}

/// The timer of each server-side socket on `port` and the time it has
/// left, by the peer's port.
fn keepalive_timers(port: u16) -> HashMap<u16, (String, Duration)> {
    let output = std::process::Command::new("ss")
        .args(["-tnoH", "state", "established"])
        .arg(format!("( sport = :{port} )"))
        .output()
        .expect("run ss");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let peer = fields.nth(3)?;
            let peer_port = peer.rsplit(':').next()?.parse().ok()?;
            // timer:(keepalive,59sec,0)
            let timer = line.split("timer:(").nth(1)?;
            let mut parts = timer.split(',');
            let name = parts.next()?.to_owned();
            let left = parse_ss_duration(parts.next()?)?;
            Some((peer_port, (name, left)))
        })
        .collect()
}

/// `ss`'s timer durations: `850ms`, `59sec`, `1min59sec`, `119min`.
fn parse_ss_duration(text: &str) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut number = String::new();
    let mut unit = String::new();
    for character in text.chars().chain(std::iter::once('0')) {
        if character.is_ascii_digit() || character == '.' {
            if !unit.is_empty() {
                let value: f64 = number.parse().ok()?;
                total += match unit.as_str() {
                    "ms" => Duration::from_secs_f64(value / 1000.0),
                    "sec" => Duration::from_secs_f64(value),
                    "min" => Duration::from_secs_f64(value * 60.0),
                    "h" | "hour" => Duration::from_secs_f64(value * 3600.0),
                    _ => return None,
                };
                number.clear();
                unit.clear();
            }
            number.push(character);
        } else {
            unit.push(character);
        }
    }
    Some(total)
}

/// Item 5: watches of ids that name no task, of a finished task, and
/// waits on a deleted one leave no topic behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_topics_return_to_their_baseline() {
    let vowd = Vowd::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics_address = vowd.metrics_address.clone().expect("metrics");
    let client = connect(&vowd).await;
    let topics =
        || metric_value(&scrape_metrics(&metrics_address), "vow_event_topics").unwrap_or(f64::NAN);
    let finished = client.submit("echo").send().await.expect("submit").task.id;
    client
        .await_task(&finished, BOUND)
        .await
        .expect("await the echo");
    let baseline = poll_until(BOUND, "the topic gauge", || async {
        let value = topics();
        (!value.is_nan()).then_some(value)
    })
    .await;

    let unknown = (0..12_000).map(|_| {
        let client = client.clone();
        async move {
            let id = format!("{:032x}", rand_id());
            let mut events = std::pin::pin!(client.watch(&id));
            let first = events.next().await.expect("an answer");
            assert_eq!(
                first.expect_err("no such task").code(),
                Some(Code::NotFound)
            );
        }
    });
    futures::stream::iter(unknown)
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    for _ in 0..100 {
        let mut events = std::pin::pin!(client.watch(&finished));
        while events.next().await.is_some() {}
    }
    let deleted = client.submit("echo").send().await.expect("submit").task.id;
    client.await_task(&deleted, BOUND).await.expect("await");
    client.delete(&deleted, false).await.expect("delete");
    for _ in 0..100 {
        let error = client
            .await_task(&deleted, Duration::from_millis(50))
            .await
            .expect_err("deleted");
        assert_eq!(error.code(), Some(Code::NotFound));
    }

    poll_until(BOUND, "the topic gauge back at its baseline", || async {
        (topics() <= baseline).then_some(())
    })
    .await;
}

fn rand_id() -> u128 {
    use std::hash::{BuildHasher, RandomState};
    let low = RandomState::new().hash_one(0) as u128;
    let high = RandomState::new().hash_one(1) as u128;
    (high << 64) | low
}

/// Item 6: a submit retried with its idempotency key near the queue limit
/// is deduplicated, not refused as over the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_submit_near_the_queue_limit_is_deduplicated() {
    let database = TestDatabase::create().await;
    let vowd = Vowd::start_postgres(&database.url, &["--max-queued-tasks", "2"]);
    let client = connect(&vowd).await;
    let later = SystemTime::now() + Duration::from_secs(3600);
    let first = client
        .submit("echo")
        .not_before(later)
        .idempotency_key("retried")
        .send()
        .await
        .expect("the first submit");
    client
        .submit("echo")
        .not_before(later)
        .send()
        .await
        .expect("fills the queue");
    let full = client
        .submit("echo")
        .not_before(later)
        .send()
        .await
        .expect_err("the queue is full");
    assert_eq!(full.code(), Some(Code::ResourceExhausted));
    let retried = client
        .submit("echo")
        .not_before(later)
        .idempotency_key("retried")
        .send()
        .await
        .expect("a retry of the accepted submit");
    assert!(retried.deduplicated);
    assert_eq!(retried.task.id, first.task.id);
}

/// Item 7: a Run whose caller goes away while its submit is being written
/// ends CANCELLED (or never starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_abandoned_during_its_submit_is_cancelled() {
    let database = TestDatabase::create().await;
    let (proxy, vowd) = replica_behind_proxy(&database, &[]).await;
    let mut stub = TaskServiceClient::connect(vowd.url())
        .await
        .expect("connect a stub");
    // No query reaches the database, on an open connection or a new one.
    proxy.stall_new(true);
    proxy.stall(Connections::All, true);
    let run = stub.run(proto::RunRequest {
        kind: "sleep".into(),
        input: Some(proto::Payload {
            data: Some(proto::payload::Data::Json(vow_client::json_to_value(
                &json!({"ms": 60_000}),
            ))),
            content_type: String::new(),
        }),
        ..proto::RunRequest::default()
    });
    // The caller gives up while the insert waits on the stalled database.
    assert!(
        tokio::time::timeout(Duration::from_millis(500), run)
            .await
            .is_err(),
        "the run cannot end while the database is stalled"
    );
    proxy.stall_new(false);
    proxy.stall(Connections::All, false);

    let client = connect(&vowd).await;
    let task = poll_until(BOUND, "the abandoned run's task", || async {
        let (tasks, _) = client
            .list_page(&vow_client::ListFilter::default(), String::new())
            .await
            .ok()?;
        tasks.into_iter().next()
    })
    .await;
    let awaited = client.await_task(&task.id, BOUND).await.expect("await");
    assert!(
        awaited.done,
        "the task still runs: {:?}",
        awaited.task.state()
    );
    assert_eq!(awaited.task.state(), TaskState::Cancelled);
}

/// Sixteen callers on one replica while every database connection is cut
/// (reset, new ones refused) for five seconds, then stalled for two: calls
/// fail only with UNAVAILABLE or their deadline, never with a lie; every
/// acknowledged task finishes after healing; and the outage writes a
/// bounded number of warning lines (9,362 before they were throttled).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_under_load_fails_calls_honestly_loses_nothing_and_logs_little() {
    let database = TestDatabase::create().await;
    let (proxy, vowd) = replica_behind_proxy(&database, &[]).await;
    let client = connect(&vowd)
        .await
        .with_call_timeout(Some(Duration::from_secs(3)));
    let stop = tokio_util::sync::CancellationToken::new();
    let callers: Vec<_> = (0..16)
        .map(|_| {
            let client = client.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut failures: HashMap<Code, u64> = HashMap::new();
                while !stop.is_cancelled() {
                    match client
                        .submit("echo")
                        .input_json(json!({"n": 1}))
                        .send()
                        .await
                    {
                        Ok(submitted) => {
                            acknowledged.push(submitted.task.id.clone());
                            if let Err(error) = client
                                .await_task(&submitted.task.id, Duration::from_secs(2))
                                .await
                            {
                                *failures
                                    .entry(error.code().unwrap_or(Code::Unknown))
                                    .or_default() += 1;
                            }
                        }
                        Err(error) => {
                            *failures
                                .entry(error.code().unwrap_or(Code::Unknown))
                                .or_default() += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (acknowledged, failures)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    let logged_before = vowd.logs().lines().count();
    proxy.refuse(Some(Connections::All));
    proxy.reset(Connections::All);
    tokio::time::sleep(Duration::from_secs(5)).await;
    proxy.refuse(None);
    proxy.stall_new(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.stall_new(false);
    proxy.stall(Connections::All, false);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();

    let mut acknowledged = Vec::new();
    let mut failures: HashMap<Code, u64> = HashMap::new();
    for caller in join_all(callers).await {
        let (ids, caller_failures) = caller.expect("join a caller");
        acknowledged.extend(ids);
        for (code, count) in caller_failures {
            *failures.entry(code).or_default() += count;
        }
    }
    let honest = [Code::Unavailable, Code::DeadlineExceeded];
    assert!(
        failures.keys().all(|code| honest.contains(code)),
        "calls failed with {failures:?}; logs:\n{}",
        vowd.logs()
    );
    assert!(!acknowledged.is_empty());
    let healed = common::client_without_retries(&vowd).await;
    for id in &acknowledged {
        common::await_success(&healed, id, BOUND).await;
    }
    let logs = vowd.logs();
    let outage_lines: Vec<&str> = logs
        .lines()
        .skip(logged_before)
        .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
        .collect();
    eprintln!(
        "{} tasks acknowledged, failures {failures:?}, {} warning lines:\n{}",
        acknowledged.len(),
        outage_lines.len(),
        outage_lines.join("\n")
    );
    assert!(
        outage_lines.len() <= 40,
        "the outage wrote {} warning lines:\n{}",
        outage_lines.len(),
        outage_lines.join("\n")
    );
}

/// A replica whose database connections freeze cannot renew its lease: it
/// stops the attempt before the lease lapses, another replica runs the task
/// once the lease expired (attempt 2), and when the first replica can reach
/// the database again, fencing refuses its stale write: the task finished once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_that_cannot_renew_stops_its_attempt_before_the_lease_lapses() {
    let database = TestDatabase::create().await;
    // Renewals every 2 s: a loaded machine still renews in time.
    let args = ["--lease-duration", "6s", "--cancel-grace", "1s"];
    let (proxy, frozen) = replica_behind_proxy(&database, &args).await;
    let on_frozen = connect(&frozen).await;
    let id = on_frozen
        .submit("sleep")
        .input_json(json!({"ms": 12_000, "steps": 60}))
        .max_attempts(3)
        .send()
        .await
        .expect("submit")
        .task
        .id;
    running(&on_frozen, &id).await;
    let healthy = Vowd::start_postgres(&database.url, &args);
    let on_healthy = connect(&healthy).await;

    proxy.stall_new(true);
    proxy.stall(Connections::All, true);
    let stopped_seen_at = poll_until(BOUND, "the frozen replica to stop its attempt", || async {
        frozen
            .logs()
            .contains("about to lapse; stopping the attempt")
            .then(SystemTime::now)
    })
    .await;
    let finished = poll_until(
        Duration::from_secs(60),
        "the healthy replica to finish the task",
        || async {
            let awaited = on_healthy
                .await_task(&id, Duration::from_secs(5))
                .await
                .ok()?;
            awaited.done.then_some(awaited.task)
        },
    )
    .await;
    assert_eq!(
        finished.state(),
        TaskState::Succeeded,
        "{finished:#?}\nhealthy:\n{}\nfrozen:\n{}",
        healthy.logs(),
        frozen.logs()
    );
    assert_eq!(finished.attempt, 2, "the healthy replica ran it again");
    assert!(
        stopped_seen_at < start_time(&finished),
        "the first attempt stopped before the second began ({:?} after): {finished:#?}\nhealthy:\n{}\nfrozen:\n{}",
        stopped_seen_at
            .duration_since(start_time(&finished))
            .unwrap_or_default(),
        healthy.logs(),
        frozen.logs()
    );

    proxy.stall_new(false);
    proxy.stall(Connections::All, false);
    proxy.reset(Connections::All);
    poll_until(BOUND, "the frozen replica to serve again", || async {
        on_frozen.get(&id).await.ok()
    })
    .await;
    // Its late write of the first attempt's end, if any, was fenced off.
    let settled = on_healthy.get(&id).await.expect("get");
    assert_eq!(settled.revision, finished.revision, "{settled:?}");
    assert_eq!(settled.state(), TaskState::Succeeded);
}
