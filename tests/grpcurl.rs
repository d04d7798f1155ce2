//! The grpcurl experience of DESIGN.md, run for real: the grpcurl binary that
//! scripts/test installs, against a real `vowd`, relying on server reflection
//! alone (no .proto files on the grpcurl side).

mod common;

use std::{
    io::BufReader,
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use common::Vowd;
use serde_json::{Value, json};

/// Bounds every grpcurl call that has no tighter `-max-time` of its own, so a
/// hung server fails the test instead of hanging it.
const DEFAULT_MAX_TIME: &str = "20";

/// Runs `grpcurl -plaintext <flags> ADDRESS <rest>` and returns its output, whatever its exit.
fn grpcurl(vowd: &Vowd, flags: &[&str], rest: &[&str]) -> Output {
    let max_time_given = flags.contains(&"-max-time");
    let mut command = Command::new(common::grpcurl());
    command.arg("-plaintext");
    if !max_time_given {
        command.args(["-max-time", DEFAULT_MAX_TIME]);
    }
    command.args(flags).arg(&vowd.address).args(rest);
    command.output().expect("run grpcurl")
}

/// Invokes `method` with the JSON `request` and returns the JSON response;
/// fails the test when grpcurl reports an error.
fn invoke(vowd: &Vowd, flags: &[&str], method: &str, request: &Value) -> Value {
    let request = request.to_string();
    let mut all_flags = vec!["-d", request.as_str()];
    all_flags.extend_from_slice(flags);
    let output = grpcurl(vowd, &all_flags, &[method]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "grpcurl {method} failed ({}):\nstdout: {stdout}\nstderr: {stderr}\nvowd logs:\n{}",
        output.status,
        vowd.logs()
    );
    serde_json::from_str(&stdout)
        .unwrap_or_else(|error| panic!("grpcurl printed no JSON ({error}): {stdout}"))
}

fn submit(vowd: &Vowd, request: Value) -> String {
    let response = invoke(vowd, &[], "vow.v1.TaskService/Submit", &request);
    response["task"]["id"]
        .as_str()
        .expect("Submit answers a task id")
        .to_owned()
}

fn cancel(vowd: &Vowd, id: &str) {
    invoke(vowd, &[], "vow.v1.TaskService/Cancel", &json!({ "id": id }));
}

#[test]
fn list_shows_the_task_health_and_reflection_services() {
    let vowd = Vowd::start(&[]);

    let output = grpcurl(&vowd, &[], &["list"]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "grpcurl list failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let services: Vec<&str> = stdout.lines().map(str::trim).collect();
    assert!(services.contains(&"vow.v1.TaskService"), "{services:?}");
    assert!(services.contains(&"grpc.health.v1.Health"), "{services:?}");
    // grpcurl up to 1.8.x speaks only v1alpha, newer ones v1 first.
    assert!(
        services.contains(&"grpc.reflection.v1.ServerReflection")
            || services.contains(&"grpc.reflection.v1alpha.ServerReflection"),
        "{services:?}"
    );
}

#[test]
fn echo_submitted_then_awaited_by_id_returns_its_input() {
    let vowd = Vowd::start(&[]);
    let id = submit(
        &vowd,
        json!({"kind": "echo", "input": {"json": {"hello": "world"}}}),
    );

    let response = invoke(&vowd, &[], "vow.v1.TaskService/Await", &json!({ "id": id }));

    assert_eq!(response["done"], json!(true), "{response:#}");
    assert_eq!(response["task"]["id"], json!(id));
    assert_eq!(
        response["task"]["state"],
        json!("TASK_STATE_SUCCEEDED"),
        "{response:#}"
    );
    assert_eq!(
        response["task"]["output"]["json"],
        json!({"hello": "world"}),
        "{response:#}"
    );
}

#[test]
fn await_bounded_by_max_time_answers_ok_and_not_done() {
    let vowd = Vowd::start(&[]);
    let id = submit(
        &vowd,
        json!({"kind": "sleep", "input": {"json": {"ms": 10_000}}}),
    );

    // -emit-defaults makes `"done": false` explicit instead of omitted.
    let response = invoke(
        &vowd,
        &["-max-time", "0.3", "-emit-defaults"],
        "vow.v1.TaskService/Await",
        &json!({ "id": id }),
    );

    assert_eq!(response["done"], json!(false), "{response:#}");
    let state = response["task"]["state"]
        .as_str()
        .expect("the task has a state");
    assert!(
        matches!(state, "TASK_STATE_QUEUED" | "TASK_STATE_RUNNING"),
        "{response:#}"
    );
    cancel(&vowd, &id);
}

#[test]
fn run_bounded_by_max_time_fails_the_task_with_deadline_exceeded() {
    let vowd = Vowd::start(&[]);

    // The call's deadline is the task's: the server ends the task and still
    // answers within the deadline, so grpcurl prints the FAILED task and exits 0.
    let response = invoke(
        &vowd,
        &["-max-time", "0.2"],
        "vow.v1.TaskService/Run",
        &json!({"kind": "sleep", "input": {"json": {"ms": 2000}}}),
    );

    let task = &response["task"];
    assert_eq!(task["state"], json!("TASK_STATE_FAILED"), "{response:#}");
    const DEADLINE_EXCEEDED: i64 = 4;
    assert_eq!(
        task["error"]["code"],
        json!(DEADLINE_EXCEEDED),
        "{response:#}"
    );

    let id = task["id"].as_str().expect("the task has an id");
    let stored = invoke(&vowd, &[], "vow.v1.TaskService/Get", &json!({ "id": id }));
    assert_eq!(
        stored["task"]["state"],
        json!("TASK_STATE_FAILED"),
        "{stored:#}"
    );
}

#[test]
fn health_check_says_serving() {
    let vowd = Vowd::start(&[]);

    let response = invoke(&vowd, &[], "grpc.health.v1.Health/Check", &json!({}));

    assert_eq!(response, json!({"status": "SERVING"}));
}

/// Makes the sleep handler's progress reports reach watchers as written
/// (the default interval coalesces reports closer than 100 ms).
const FREQUENT_PROGRESS: [&str; 2] = ["--progress-interval", "10ms"];

/// Runs a Watch to its end and returns the messages grpcurl printed (a
/// stream of concatenated pretty-printed JSON objects) and grpcurl's output.
fn watch(vowd: &Vowd, request: &Value) -> (Vec<Value>, Output) {
    let request = request.to_string();
    let output = grpcurl(vowd, &["-d", &request], &["vow.v1.TaskService/Watch"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let events = serde_json::Deserializer::from_str(&stdout)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()
        .unwrap_or_else(|error| panic!("grpcurl printed no JSON stream ({error}): {stdout}"));
    (events, output)
}

/// The task revision of a watch message; grpcurl prints uint64 as a string.
fn revision(event: &Value) -> u64 {
    event["task"]["revision"]
        .as_str()
        .and_then(|revision| revision.parse().ok())
        .unwrap_or_else(|| panic!("a task revision in {event:#}"))
}

fn event_type(event: &Value) -> &str {
    event["type"].as_str().unwrap_or_default()
}

fn progress_percent(event: &Value) -> f64 {
    event["task"]["progress"]["percent"].as_f64().unwrap_or(0.0)
}

fn is_terminal(event: &Value) -> bool {
    matches!(
        event["task"]["state"].as_str(),
        Some("TASK_STATE_SUCCEEDED" | "TASK_STATE_FAILED" | "TASK_STATE_CANCELLED")
    )
}

/// Asserts each revision is the previous one plus one: in order, no gap, no duplicate.
fn assert_contiguous(events: &[Value]) {
    let revisions: Vec<u64> = events.iter().map(revision).collect();
    for pair in revisions.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "revisions {revisions:?}");
    }
}

/// Polls Get until the task's revision reaches `at_least`, failing after `bound`.
fn wait_for_revision(vowd: &Vowd, id: &str, at_least: u64, bound: Duration) {
    let started = Instant::now();
    loop {
        let response = invoke(vowd, &[], "vow.v1.TaskService/Get", &json!({ "id": id }));
        if revision(&response) >= at_least {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "task {id} did not reach revision {at_least} within {bound:?}: {response:#}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn watch_of_a_sleep_streams_snapshot_progress_then_succeeded_and_exits_0() {
    let vowd = Vowd::start(&FREQUENT_PROGRESS);
    let id = submit(
        &vowd,
        json!({"kind": "sleep", "input": {"json": {"ms": 600, "steps": 6}}}),
    );

    let (events, output) = watch(&vowd, &json!({ "id": id }));

    // grpcurl exits 0 only when the stream ended with OK.
    assert!(
        output.status.success(),
        "grpcurl Watch failed ({}): {}\nvowd logs:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr),
        vowd.logs()
    );
    let (first, changes) = events.split_first().expect("at least the snapshot");
    assert_eq!(event_type(first), "WATCH_EVENT_TYPE_SNAPSHOT", "{first:#}");
    assert_eq!(first["task"]["id"], json!(id));
    assert!(
        changes
            .iter()
            .all(|event| event_type(event) == "WATCH_EVENT_TYPE_CHANGE"),
        "{events:#?}"
    );
    assert_contiguous(&events);
    assert!(
        changes.iter().any(|event| {
            event["task"]["state"] == json!("TASK_STATE_RUNNING") && progress_percent(event) > 0.0
        }),
        "no progress was streamed: {events:#?}"
    );
    let last = events.last().expect("events");
    assert_eq!(
        last["task"]["state"],
        json!("TASK_STATE_SUCCEEDED"),
        "{last:#}"
    );
    // The stream closes right after the terminal change.
    assert!(
        !events[..events.len() - 1].iter().any(is_terminal),
        "{events:#?}"
    );
}

#[test]
fn watch_resumed_with_after_revision_k_prints_k_plus_1_onwards() {
    let vowd = Vowd::start(&FREQUENT_PROGRESS);
    // Long enough to still run when the second watch starts: the server
    // replays the missed changes of a running task from its retained history.
    let id = submit(
        &vowd,
        json!({"kind": "sleep", "input": {"json": {"ms": 2000, "steps": 20}}}),
    );

    // The first watch is broken on purpose: grpcurl is killed once it has
    // printed the first progress change (revision k).
    let request = json!({ "id": id }).to_string();
    let mut first_watch = Command::new(common::grpcurl())
        .args(["-plaintext", "-max-time", DEFAULT_MAX_TIME, "-d", &request])
        .arg(&vowd.address)
        .arg("vow.v1.TaskService/Watch")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("run grpcurl");
    let stdout = BufReader::new(first_watch.stdout.take().expect("stdout is piped"));
    let mut seen = Vec::new();
    // Each object is returned as soon as its closing brace is read; -max-time bounds the wait.
    for event in serde_json::Deserializer::from_reader(stdout).into_iter::<Value>() {
        let event = event.expect("grpcurl prints JSON objects");
        let progressed =
            event_type(&event) == "WATCH_EVENT_TYPE_CHANGE" && progress_percent(&event) > 0.0;
        seen.push(event);
        if progressed {
            break;
        }
    }
    first_watch.kill().expect("kill grpcurl");
    first_watch.wait().expect("reap grpcurl");
    let last_seen = seen.last().expect("the first watch printed events");
    assert!(
        progress_percent(last_seen) > 0.0 && !is_terminal(last_seen),
        "the first watch stopped before a progress change: {seen:#?}"
    );
    let k = revision(last_seen);
    // Let changes happen while nobody watches, so the resume has some to replay.
    wait_for_revision(&vowd, &id, k + 2, Duration::from_secs(10));

    let (replayed, output) = watch(&vowd, &json!({ "id": id, "after_revision": k.to_string() }));

    assert!(
        output.status.success(),
        "grpcurl Watch failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let first = replayed.first().expect("the resumed watch printed events");
    assert_eq!(
        event_type(first),
        "WATCH_EVENT_TYPE_CHANGE",
        "a replay, not a snapshot or a resync: {first:#}"
    );
    assert_eq!(revision(first), k + 1);
    assert!(
        replayed
            .iter()
            .all(|event| event_type(event) == "WATCH_EVENT_TYPE_CHANGE"),
        "{replayed:#?}"
    );
    let all: Vec<Value> = seen.iter().chain(&replayed).cloned().collect();
    assert_contiguous(&all);
    let last = replayed.last().expect("events");
    assert_eq!(
        last["task"]["state"],
        json!("TASK_STATE_SUCCEEDED"),
        "{last:#}"
    );
}
