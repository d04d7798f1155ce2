//! Durability of the embedded store, against the real `vowd` binary: a
//! `kill -9` in the middle of a submit storm loses no acknowledged task and
//! changes no finished result, interrupted attempts re-run after a restart, a
//! clean restart keeps results and schedules, a second `vowd` cannot share the
//! data directory, bad directories and files are refused untouched, and the
//! file stops growing under steady submit + expire.
//!
//! Every test owns a fresh data directory under the system temp dir, removed
//! when the test ends (also on failure).

mod common;

use std::{
    collections::{HashMap, HashSet},
    ffi::OsStr,
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use common::{Refused, TempDir, Vowd, poll_until, vowd_until_exit};
use futures::{StreamExt, future::join_all};
use nix::sys::signal::Signal;
use serde_json::json;
use tokio::sync::Notify;
use tonic::Code;
use vow_client::{AwaitMode, Client, Error, RetryConfig, Submitted, Task, TaskExt, TaskState};

const BOUND: Duration = Duration::from_secs(10);
/// `google.rpc.Code.ABORTED`.
const ABORTED: i32 = 10;

async fn connect(vowd: &Vowd) -> Client {
    Client::connect(&vowd.address)
        .await
        .expect("connect to vowd")
}

/// One attempt per call, so a call cut off by the kill surfaces as an error
/// instead of being retried into the restarted server.
fn no_retries() -> RetryConfig {
    RetryConfig {
        max_attempts: 1,
        ..RetryConfig::default()
    }
}

/// Waits for every task of `ids` to finish (AwaitMany, at most 1,000 ids per
/// call, the server's default limit) and returns them in no particular order.
async fn await_all(client: &Client, ids: &[String], bound: Duration) -> Vec<Task> {
    let started = Instant::now();
    let mut finished = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(1_000) {
        loop {
            let awaited = client
                .await_many(chunk, AwaitMode::All, Duration::from_secs(5))
                .await
                .expect("AwaitMany answers");
            assert!(
                awaited.not_found_ids.is_empty(),
                "tasks are missing: {:?}",
                awaited.not_found_ids
            );
            if awaited.done {
                assert_eq!(
                    awaited.finished.len(),
                    chunk.len(),
                    "ALL returns every task"
                );
                finished.extend(awaited.finished);
                break;
            }
            assert!(
                started.elapsed() < bound,
                "{} of {} tasks still unfinished after {bound:?}",
                chunk.len() - awaited.finished.len(),
                chunk.len()
            );
        }
    }
    finished
}

fn time_of(timestamp: Option<prost_types::Timestamp>) -> SystemTime {
    SystemTime::try_from(timestamp.expect("the timestamp is set")).expect("a valid timestamp")
}

/// Stops `vowd` with SIGKILL (no chance to flush or clean up) and checks it died of it.
fn kill_9(mut vowd: Vowd) {
    vowd.signal(Signal::SIGKILL);
    let status = vowd.wait_exit(BOUND);
    assert_eq!(status.signal(), Some(9), "vowd died of SIGKILL: {status:?}");
}

// ---------------------------------------------------------------------------
// 1. kill -9 in the middle of 16 clients submitting 5,000 tasks
// ---------------------------------------------------------------------------

const CLIENTS: usize = 16;
const TOTAL: usize = 5_000;
/// Acknowledged submits after which vowd is killed: counted, not timed, so
/// the kill lands mid-run however fast the machine is.
const KILL_AFTER: usize = 2_000;
/// Acknowledged echo tasks whose finished state is recorded before the kill.
const SNAPSHOT_SAMPLE: usize = 300;

/// One submit of the crash test. Derived from (client, n) alone, so the
/// resubmit after the restart sends exactly the same request.
struct Request {
    key: String,
    kind: &'static str,
    input: serde_json::Value,
}

fn requests_of(client: usize) -> Vec<Request> {
    let count = TOTAL / CLIENTS + usize::from(client < TOTAL % CLIENTS);
    (0..count)
        .map(|n| {
            let key = format!("crash-{client}-{n}");
            if (client + n).is_multiple_of(2) {
                Request {
                    key,
                    kind: "echo",
                    input: json!({"client": client, "n": n}),
                }
            } else {
                Request {
                    key,
                    kind: "sleep",
                    input: json!({"ms": 1 + (client * 7 + n * 13) % 50}),
                }
            }
        })
        .collect()
}

async fn submit(client: &Client, request: &Request) -> Result<Submitted, Error> {
    client
        .submit(request.kind)
        .input_json(request.input.clone())
        .idempotency_key(&request.key)
        .send()
        .await
}

/// What became of one submit before the kill.
#[derive(Debug)]
enum Outcome {
    /// The server answered OK: the task must survive.
    Acknowledged(String),
    /// The call failed (the kill cut it off): the task may or may not exist.
    Failed(String),
    /// Never sent: the client had already seen the server die.
    NotSent,
}

/// Submits `requests` one after another until the first failure; the rest
/// are left unsent. Counts acknowledgements and wakes the killer at the threshold.
async fn submit_until_failure(
    address: String,
    requests: Arc<Vec<Request>>,
    acknowledged: Arc<AtomicUsize>,
    threshold: Arc<Notify>,
    acknowledged_echoes: Arc<Mutex<Vec<String>>>,
) -> Vec<Outcome> {
    let client = Client::connect(&address)
        .await
        .expect("connect to vowd")
        .with_retry(no_retries());
    let mut outcomes = Vec::with_capacity(requests.len());
    for request in requests.iter() {
        match submit(&client, request).await {
            Ok(submitted) => {
                assert!(!submitted.deduplicated, "first submit of {}", request.key);
                if request.kind == "echo" {
                    acknowledged_echoes
                        .lock()
                        .unwrap()
                        .push(submitted.task.id.clone());
                }
                outcomes.push(Outcome::Acknowledged(submitted.task.id));
                if acknowledged.fetch_add(1, Ordering::SeqCst) + 1 == KILL_AFTER {
                    threshold.notify_one();
                }
            }
            Err(error) => {
                outcomes.push(Outcome::Failed(error.to_string()));
                break;
            }
        }
    }
    outcomes.resize_with(requests.len(), || Outcome::NotSent);
    outcomes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_mid_run_loses_no_acknowledged_task_and_changes_no_result() {
    let dir = TempDir::new("crash");
    let data_dir = dir.path().join("data");
    let vowd = Vowd::start_embedded(&data_dir, &[]);

    let requests: Vec<Arc<Vec<Request>>> = (0..CLIENTS)
        .map(|client| Arc::new(requests_of(client)))
        .collect();
    assert_eq!(requests.iter().map(|r| r.len()).sum::<usize>(), TOTAL);
    let acknowledged = Arc::new(AtomicUsize::new(0));
    let threshold = Arc::new(Notify::new());
    let acknowledged_echoes = Arc::new(Mutex::new(Vec::new()));
    let submitters: Vec<_> = requests
        .iter()
        .map(|requests| {
            tokio::spawn(submit_until_failure(
                vowd.address.clone(),
                requests.clone(),
                acknowledged.clone(),
                threshold.clone(),
                acknowledged_echoes.clone(),
            ))
        })
        .collect();
    tokio::time::timeout(Duration::from_secs(40), threshold.notified())
        .await
        .expect("2,000 submits are acknowledged");

    // Finished results right before the kill; the oldest echoes are the ones
    // most likely done. They must read back identical after the restart.
    let observer = connect(&vowd).await;
    let sample: Vec<String> = acknowledged_echoes
        .lock()
        .unwrap()
        .iter()
        .take(SNAPSHOT_SAMPLE)
        .cloned()
        .collect();
    let finished_before: HashMap<String, Task> = join_all(sample.iter().map(|id| observer.get(id)))
        .await
        .into_iter()
        .map(|task| task.expect("an acknowledged task exists"))
        .filter(|task| task.state() == TaskState::Succeeded)
        .map(|task| (task.id.clone(), task))
        .collect();
    assert!(
        !finished_before.is_empty(),
        "none of the {} oldest echo tasks had finished before the kill",
        sample.len()
    );
    let acknowledged_at_kill = acknowledged.load(Ordering::SeqCst);
    kill_9(vowd);

    let outcomes: Vec<Vec<Outcome>> = tokio::time::timeout(BOUND, join_all(submitters))
        .await
        .expect("every submitter stops once vowd is dead")
        .into_iter()
        .map(|outcomes| outcomes.expect("a submitter did not panic"))
        .collect();
    let acknowledged_ids: Vec<String> = outcomes
        .iter()
        .flatten()
        .filter_map(|outcome| match outcome {
            Outcome::Acknowledged(id) => Some(id.clone()),
            _ => None,
        })
        .collect();
    let failures: Vec<&str> = outcomes
        .iter()
        .flatten()
        .filter_map(|outcome| match outcome {
            Outcome::Failed(error) => Some(error.as_str()),
            _ => None,
        })
        .collect();
    let failed = failures.len();
    assert!(
        acknowledged_ids.len() < TOTAL,
        "the kill came after every submit; nothing was cut off"
    );

    // Restart on the same directory: recovery runs before the listening line.
    let vowd = Vowd::start_embedded(&data_dir, &[]);
    let client = connect(&vowd).await;

    // Every acknowledged task exists and finishes (interrupted attempts re-run).
    let missing: Vec<String> = futures::stream::iter(acknowledged_ids.iter())
        .map(|id| {
            let client = client.clone();
            async move { (id, client.get(id).await) }
        })
        .buffer_unordered(32)
        .filter_map(|(id, got)| async move {
            match got {
                Ok(task) => {
                    assert_eq!(&task.id, id);
                    None
                }
                Err(error) if error.code() == Some(Code::NotFound) => Some(id.clone()),
                Err(error) => panic!("Get {id} failed: {error}"),
            }
        })
        .collect()
        .await;
    assert!(
        missing.is_empty(),
        "{} acknowledged tasks were lost: {missing:?}",
        missing.len()
    );
    let finished_after = await_all(&client, &acknowledged_ids, Duration::from_secs(30)).await;
    let not_succeeded: Vec<&Task> = finished_after
        .iter()
        .filter(|task| task.state() != TaskState::Succeeded)
        .collect();
    assert!(
        not_succeeded.is_empty(),
        "echo and sleep tasks succeed, also when re-run: {not_succeeded:#?}"
    );
    let rerun = finished_after
        .iter()
        .filter(|task| task.attempt > 1)
        .count();

    // Finished results are exactly as they were before the kill.
    for (id, before) in &finished_before {
        let after = client.get(id).await.expect("a finished task survives");
        assert_eq!(
            &after, before,
            "the finished task {id} changed across the kill"
        );
    }

    // The same requests again: the acknowledged ones (and those whose reply
    // was lost but which were stored) deduplicate; the rest are created now.
    let resubmitters: Vec<_> = requests
        .iter()
        .map(|requests| {
            let client = client.clone();
            let requests = requests.clone();
            tokio::spawn(async move {
                let mut answers = Vec::with_capacity(requests.len());
                for request in requests.iter() {
                    answers.push(submit(&client, request).await.expect("a resubmit succeeds"));
                }
                answers
            })
        })
        .collect();
    let answers: Vec<Vec<Submitted>> =
        tokio::time::timeout(Duration::from_secs(30), join_all(resubmitters))
            .await
            .expect("the resubmits finish")
            .into_iter()
            .map(|answers| answers.expect("a resubmitter did not panic"))
            .collect();
    let (mut reply_lost_but_stored, mut never_stored, mut created) = (0, 0, 0);
    for (client_outcomes, client_answers) in outcomes.iter().zip(&answers) {
        for (outcome, answer) in client_outcomes.iter().zip(client_answers) {
            match outcome {
                Outcome::Acknowledged(id) => {
                    assert!(answer.deduplicated, "the acknowledged {id} deduplicates");
                    assert_eq!(&answer.task.id, id, "the same key yields the same task");
                }
                Outcome::Failed(_) if answer.deduplicated => reply_lost_but_stored += 1,
                Outcome::Failed(_) => never_stored += 1,
                Outcome::NotSent => {
                    assert!(!answer.deduplicated, "an unsent request creates its task");
                    created += 1;
                }
            }
        }
    }
    let all_ids: Vec<String> = answers
        .iter()
        .flatten()
        .map(|answer| answer.task.id.clone())
        .collect();
    assert_eq!(
        all_ids.iter().collect::<HashSet<_>>().len(),
        TOTAL,
        "5,000 keys, 5,000 tasks"
    );
    let everything = await_all(&client, &all_ids, Duration::from_secs(40)).await;
    assert!(
        everything
            .iter()
            .all(|task| task.state() == TaskState::Succeeded),
        "every task succeeds in the end"
    );

    println!(
        "crash test: {acknowledged_at_kill} acknowledged when the kill was sent, {} acknowledged in all \
         (replies already on the wire), {} found after the restart, lost 0; {} finished results \
         compared unchanged; {rerun} tasks re-ran (attempt > 1); {failed} submits cut off by the \
         kill: {reply_lost_but_stored} had been stored (reply lost), {never_stored} had not; \
         {created} never sent, created on resubmit; first cut-off error: {:?}",
        acknowledged_ids.len(),
        finished_after.len(),
        finished_before.len(),
        failures.first(),
    );
}

// ---------------------------------------------------------------------------
// 2. RUNNING tasks at a kill -9 re-run (or fail ABORTED without attempts left)
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_tasks_at_a_kill_re_run_with_the_attempt_counted() {
    let dir = TempDir::new("running");
    let data_dir = dir.path().join("data");
    let vowd = Vowd::start_embedded(&data_dir, &[]);
    let client = connect(&vowd).await;
    let retried = client
        .submit("sleep")
        .input_json(json!({"ms": 60_000}))
        .max_attempts(3)
        .send()
        .await
        .expect("submit a long sleep with attempts to spare")
        .task;
    let last_chance = client
        .submit("sleep")
        .input_json(json!({"ms": 60_000}))
        .max_attempts(1)
        .send()
        .await
        .expect("submit a long sleep with one attempt")
        .task;
    for id in [&retried.id, &last_chance.id] {
        poll_until(BOUND, "the sleep to run its first attempt", || async {
            let task = client.get(id).await.expect("get the task");
            (task.state() == TaskState::Running && task.attempt == 1).then_some(())
        })
        .await;
    }
    kill_9(vowd);

    let vowd = Vowd::start_embedded(&data_dir, &[]);
    let client = connect(&vowd).await;
    let rerun = poll_until(BOUND, "the interrupted task to run attempt 2", || async {
        let task = client.get(&retried.id).await.expect("the task survives");
        assert!(
            task.attempt <= 2,
            "one interruption counts one attempt: {task:?}"
        );
        (task.state() == TaskState::Running && task.attempt == 2).then_some(task)
    })
    .await;
    assert_eq!(rerun.input, retried.input, "the same task re-runs");
    assert_eq!(rerun.max_attempts, 3);

    let aborted = poll_until(BOUND, "the task without attempts left to end", || async {
        let task = client
            .get(&last_chance.id)
            .await
            .expect("the task survives");
        task.is_terminal().then_some(task)
    })
    .await;
    assert_eq!(aborted.state(), TaskState::Failed, "{aborted:?}");
    assert_eq!(aborted.attempt, 1, "{aborted:?}");
    let error = aborted.error.as_ref().expect("a failed task has an error");
    assert_eq!(error.code, ABORTED, "{error:?}");
    assert_eq!(
        aborted.error_reason().as_deref(),
        Some("ATTEMPT_INTERRUPTED"),
        "{error:?}"
    );
}

// ---------------------------------------------------------------------------
// 3. A clean restart keeps results and schedules
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_restart_keeps_results_and_schedules() {
    let dir = TempDir::new("clean");
    let data_dir = dir.path().join("data");
    let mut vowd = Vowd::start_embedded(&data_dir, &[]);
    let client = connect(&vowd).await;

    let mut finished = Vec::new();
    for n in 0..5 {
        let submitted = client
            .submit("echo")
            .input_json(json!({"n": n}))
            .send()
            .await
            .expect("submit an echo");
        let awaited = client
            .await_task(&submitted.task.id, BOUND)
            .await
            .expect("await the echo");
        assert_eq!(awaited.task.state(), TaskState::Succeeded);
        // Get, not the Await answer, so both sides of the comparison are read
        // back from the store.
        finished.push(client.get(&submitted.task.id).await.expect("get the echo"));
    }
    // Far enough ahead that the restart (a few hundred ms) happens before it,
    // so the task is seen waiting with its timer after the restart.
    let not_before = SystemTime::now() + Duration::from_secs(5);
    let scheduled = client
        .submit("echo")
        .input_json(json!({"later": true}))
        .not_before(not_before)
        .send()
        .await
        .expect("submit a scheduled echo");
    let scheduled = client.get(&scheduled.task.id).await.expect("get it");
    assert_eq!(scheduled.state(), TaskState::Queued);

    vowd.signal(Signal::SIGTERM);
    let status = vowd.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "a clean stop exits 0: {status:?}");
    drop(vowd);

    let vowd = Vowd::start_embedded(&data_dir, &[]);
    let client = connect(&vowd).await;
    for before in &finished {
        let after = client
            .get(&before.id)
            .await
            .expect("a finished task survives");
        assert_eq!(
            &after, before,
            "the finished task changed across the restart"
        );
    }
    let waiting = client
        .get(&scheduled.id)
        .await
        .expect("the scheduled task survives");
    assert!(
        SystemTime::now() < not_before,
        "the restart took too long to see the task waiting"
    );
    assert_eq!(waiting.state(), TaskState::Queued, "{waiting:?}");
    assert_eq!(
        waiting.next_attempt_time, scheduled.next_attempt_time,
        "the schedule is kept"
    );
    let ran = client
        .await_task(&scheduled.id, Duration::from_secs(15))
        .await
        .expect("await the scheduled task");
    assert!(ran.done, "the scheduled task runs after its time");
    assert_eq!(ran.task.state(), TaskState::Succeeded);
    assert!(
        time_of(ran.task.start_time) >= time_of(scheduled.next_attempt_time),
        "it did not start before not_before"
    );
    assert_eq!(ran.task.output_json(), Some(json!({"later": true})));
}

// ---------------------------------------------------------------------------
// 4. One data directory, one vowd
// ---------------------------------------------------------------------------

fn embedded_args(data_dir: &Path) -> Vec<&OsStr> {
    vec![
        OsStr::new("--listen"),
        OsStr::new("127.0.0.1:0"),
        OsStr::new("--store"),
        OsStr::new("embedded"),
        OsStr::new("--data-dir"),
        data_dir.as_os_str(),
    ]
}

fn assert_refused(refused: &Refused, expected: &str) {
    assert!(
        !refused.status.success() && refused.status.code().is_some(),
        "vowd exits non-zero (not by a signal): {:?}; stderr:\n{}",
        refused.status,
        refused.stderr
    );
    assert!(
        refused.stderr.contains(expected),
        "stderr names the problem ({expected:?}):\n{}",
        refused.stderr
    );
    assert!(
        !refused.stdout.contains("listening"),
        "a refused vowd never announces an address: {}",
        refused.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_vowd_on_the_same_data_dir_refuses_to_start() {
    let dir = TempDir::new("locked");
    let data_dir = dir.path().join("data");
    let first = Vowd::start_embedded(&data_dir, &[]);
    let client = connect(&first).await;
    let submitted = client
        .submit("echo")
        .input_json(json!({"first": true}))
        .send()
        .await
        .expect("submit to the first vowd");
    client
        .await_task(&submitted.task.id, BOUND)
        .await
        .expect("await it");
    let before = client.get(&submitted.task.id).await.expect("get it");

    let second = vowd_until_exit(&embedded_args(&data_dir), BOUND);
    assert_refused(&second, "in use by another running vowd");

    // The first keeps serving, with its data intact.
    let after = client
        .get(&before.id)
        .await
        .expect("the first still serves");
    assert_eq!(after, before);
    let another = client
        .submit("echo")
        .input_json(json!({"still": "serving"}))
        .send()
        .await
        .expect("the first still takes tasks");
    let awaited = client
        .await_task(&another.task.id, BOUND)
        .await
        .expect("and runs them");
    assert_eq!(
        awaited.task.output_json(),
        Some(json!({"still": "serving"}))
    );
}

// ---------------------------------------------------------------------------
// 5. Bad environments: a clear error, a non-zero exit, nothing touched
// ---------------------------------------------------------------------------

#[test]
fn a_data_dir_whose_parent_is_missing_is_refused() {
    let dir = TempDir::new("missing-parent");
    let missing_parent = dir.path().join("missing");
    let data_dir = missing_parent.join("data");
    let refused = vowd_until_exit(&embedded_args(&data_dir), BOUND);
    assert_refused(&refused, "does not exist");
    assert!(
        refused.stderr.contains(&*data_dir.to_string_lossy()),
        "the message names the directory:\n{}",
        refused.stderr
    );
    assert!(!missing_parent.exists(), "vowd created no directory");
}

#[test]
fn an_unwritable_data_dir_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("unwritable");
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).expect("create the data dir");
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o500))
        .expect("make it read-only");
    // Root (the usual CI container user) writes through permission bits, so
    // probe whether they stop a write here before relying on them.
    let probe = data_dir.join("probe");
    let bits_stop_writes = std::fs::File::create(&probe).is_err();
    let _ = std::fs::remove_file(&probe);
    if bits_stop_writes {
        let refused = vowd_until_exit(&embedded_args(&data_dir), BOUND);
        assert_refused(&refused, "cannot use the data directory");
        assert_eq!(
            std::fs::read_dir(&data_dir).expect("list it").count(),
            0,
            "vowd wrote nothing"
        );
    }
    std::fs::set_permissions(&data_dir, std::fs::Permissions::from_mode(0o700))
        .expect("make it writable again, for the cleanup");

    // What stops even root: a path through a regular file. The file itself
    // as --data-dir, and a directory "under" it.
    let file = dir.path().join("a-file");
    std::fs::write(&file, b"not a directory").expect("write a file");
    let refused = vowd_until_exit(&embedded_args(&file), BOUND);
    assert_refused(&refused, "cannot use the data directory");
    // Held only to naming the path: vowd reports "the parent directory ...
    // does not exist" here, though the parent exists (as a file).
    let under_file = file.join("sub");
    let refused = vowd_until_exit(&embedded_args(&under_file), BOUND);
    assert!(
        !refused.status.success() && refused.stderr.contains(&*under_file.to_string_lossy()),
        "a data dir under a file is refused, naming it: {:?}\n{}",
        refused.status,
        refused.stderr
    );
    assert_eq!(
        std::fs::read(&file).expect("read the file"),
        b"not a directory",
        "the file is untouched"
    );
}

/// Deterministic bytes that are not a SQLite file (no "SQLite format 3" header).
fn garbage(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

#[test]
fn a_corrupt_database_file_is_refused_and_left_untouched() {
    let dir = TempDir::new("corrupt");
    let data_dir = dir.path().join("data");
    std::fs::create_dir(&data_dir).expect("create the data dir");
    let database = data_dir.join("vow.db");
    let contents = garbage(16 * 1024);
    std::fs::write(&database, &contents).expect("write garbage");

    let refused = vowd_until_exit(&embedded_args(&data_dir), BOUND);
    assert_refused(&refused, "corrupt");
    assert!(
        std::fs::read(&database).expect("the file is still there") == contents,
        "the corrupt file is byte-for-byte unchanged"
    );
}

/// Runs vowd once on `data_dir` to store one task, stops it cleanly, and
/// folds the WAL into `vow.db` (a clean stop may leave committed pages in the
/// WAL), so that the file alone holds everything. Returns the file's path
/// and the task's id.
async fn a_stored_database(data_dir: &Path) -> (PathBuf, String) {
    let mut vowd = Vowd::start_embedded(data_dir, &[]);
    let client = connect(&vowd).await;
    let submitted = client
        .submit("echo")
        .input_json(json!({"kept": true}))
        .send()
        .await
        .expect("submit");
    vowd.signal(Signal::SIGTERM);
    assert!(vowd.wait_exit(BOUND).success());
    drop(vowd);
    let database = data_dir.join("vow.db");
    let connection = rusqlite::Connection::open(&database).expect("open the file");
    connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .expect("checkpoint the WAL");
    drop(connection);
    assert!(
        !data_dir.join("vow.db-wal").exists(),
        "the last connection to close removes the WAL"
    );
    (database, submitted.task.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_from_a_newer_version_is_refused_and_left_untouched() {
    let dir = TempDir::new("newer");
    let data_dir = dir.path().join("data");
    let (database, id) = a_stored_database(&data_dir).await;
    // What a later vowd with more migrations would leave behind.
    rusqlite::Connection::open(&database)
        .and_then(|connection| connection.pragma_update(None, "user_version", 99))
        .expect("set user_version");
    let before = std::fs::read(&database).expect("read the file");

    let refused = vowd_until_exit(&embedded_args(&data_dir), BOUND);
    assert_refused(&refused, "newer version");
    assert!(
        std::fs::read(&database).expect("read the file") == before,
        "the file is byte-for-byte unchanged"
    );
    let connection = rusqlite::Connection::open(&database).expect("open the file");
    let version: i64 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .expect("read user_version");
    assert_eq!(version, 99);
    let tasks: i64 = connection
        .query_row("SELECT COUNT(*) FROM tasks", [], |row| row.get(0))
        .expect("count the tasks");
    assert_eq!(tasks, 1, "the task {id} is still stored");
}

/// A torn or bit-rotted file: a valid header over garbage pages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_with_corrupt_pages_is_refused_and_left_untouched() {
    let dir = TempDir::new("corrupt-pages");
    let data_dir = dir.path().join("data");
    let (database, _) = a_stored_database(&data_dir).await;
    let mut file = std::fs::read(&database).expect("read the file");
    // The page size is the big-endian u16 at offset 16 (1 stands for 65,536).
    let page_size = match u16::from_be_bytes([file[16], file[17]]) {
        1 => 65_536,
        size => usize::from(size),
    };
    assert!(
        file.len() > page_size,
        "the file has pages beyond the first"
    );
    let pages = file.len() - page_size;
    file[page_size..].copy_from_slice(&garbage(pages));
    std::fs::write(&database, &file).expect("corrupt the pages");

    let refused = vowd_until_exit(&embedded_args(&data_dir), BOUND);
    assert_refused(&refused, "corrupt");
    assert!(
        std::fs::read(&database).expect("read the file") == file,
        "the file is byte-for-byte unchanged"
    );
}

// ---------------------------------------------------------------------------
// 6. Bounded disk under steady submit + expire
// ---------------------------------------------------------------------------

/// Length of the steady load.
const LOAD_SECONDS: usize = 10;
/// Size of each task's input (and so of its output), so that keeping tasks
/// past their retention would show as growth well above the WAL's swings.
const PAYLOAD_BYTES: usize = 8 * 1024;
/// The steady load: submits (each then awaited) per second.
const TASKS_PER_SECOND: u32 = 50;

/// Sizes of `vow.db` and `vow.db-wal` (0 while one does not exist).
fn database_sizes(data_dir: &Path) -> (u64, u64) {
    let size = |name: &str| std::fs::metadata(data_dir.join(name)).map_or(0, |m| m.len());
    (size("vow.db"), size("vow.db-wal"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_stops_growing_under_steady_submit_and_expire() {
    let dir = TempDir::new("bounded");
    let data_dir = dir.path().join("data");
    let vowd = Vowd::start_embedded(&data_dir, &["--default-retention", "1s"]);
    let client = connect(&vowd).await;
    let first = client
        .submit("echo")
        .input_json(json!({"first": true}))
        .send()
        .await
        .expect("submit")
        .task;

    // A fixed offered rate, well below what a debug build sustains on two
    // busy cores: the size of the live data follows the rate, so a rate that
    // rose with the machine's idleness would read as growth.
    let completed = Arc::new(AtomicUsize::new(0));
    let payload = "x".repeat(PAYLOAD_BYTES);
    let mut tasks = Vec::new();
    let mut submits = tokio::time::interval(Duration::from_secs(1) / TASKS_PER_SECOND);
    let mut samples = tokio::time::interval(Duration::from_secs(1));
    samples.tick().await;
    let mut sizes = Vec::with_capacity(LOAD_SECONDS);
    let mut completed_at = Vec::with_capacity(LOAD_SECONDS);
    while sizes.len() < LOAD_SECONDS {
        tokio::select! {
            _ = submits.tick() => {
                let (client, completed) = (client.clone(), completed.clone());
                let input = json!({"n": tasks.len(), "payload": payload});
                tasks.push(tokio::spawn(async move {
                    let submitted = client.submit("echo").input_json(input).send().await.expect("submit");
                    let awaited = client
                        .await_task(&submitted.task.id, BOUND)
                        .await
                        .expect("await");
                    assert!(awaited.done, "the echo finished");
                    completed.fetch_add(1, Ordering::SeqCst);
                }));
            }
            _ = samples.tick() => {
                sizes.push(database_sizes(&data_dir));
                completed_at.push(completed.load(Ordering::SeqCst));
            }
        }
    }
    tokio::time::timeout(BOUND, join_all(tasks))
        .await
        .expect("the last tasks finish")
        .into_iter()
        .for_each(|task| task.expect("a submitter did not panic"));
    let completed = completed.load(Ordering::SeqCst);

    let totals: Vec<u64> = sizes.iter().map(|(db, wal)| db + wal).collect();
    let (first_half, last_half) = totals.split_at(LOAD_SECONDS / 2);
    let first_max = *first_half.iter().max().unwrap();
    let last_max = *last_half.iter().max().unwrap();
    let kib: Vec<(u64, u64)> = sizes
        .iter()
        .map(|(db, wal)| (db / 1024, wal / 1024))
        .collect();
    println!(
        "bounded disk: {completed} tasks of {PAYLOAD_BYTES} B at {TASKS_PER_SECOND}/s for {LOAD_SECONDS} s, 1 s retention \
         (completed by each second: {completed_at:?}); \
         (vow.db, vow.db-wal) each second in KiB: {kib:?}; max of the sum: first half {} KiB, \
         last half {} KiB",
        first_max / 1024,
        last_max / 1024
    );
    // The sharp test: kept past their retention, the tasks finished in the
    // last half would have grown the file by more than their input and output
    // (with `--default-retention 1h` it grows by about 1.25 times that);
    // expired and deleted, their pages are reused and it hardly grows.
    let last_half_tasks = completed_at[LOAD_SECONDS - 1] - completed_at[LOAD_SECONDS / 2 - 1];
    let written = (last_half_tasks * 2 * PAYLOAD_BYTES) as u64;
    assert!(
        last_max.saturating_sub(first_max) < written / 2,
        "the file grew with the tasks of the last half ({} KiB of payloads): {kib:?} KiB",
        written / 1024
    );
    // The coarse one: no more than half again the size of the first half.
    assert!(
        last_max as f64 <= 1.5 * first_max as f64,
        "the file kept growing: {kib:?} KiB"
    );
    assert!(
        last_max < 64 * 1024 * 1024,
        "the file stays small: {kib:?} KiB"
    );
    let gone = client
        .get(&first.id)
        .await
        .expect_err("the first task expired");
    assert_eq!(gone.code(), Some(Code::NotFound), "{gone}");
}
