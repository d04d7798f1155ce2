//! The grpcurl experience of DESIGN.md, run for real: the grpcurl binary that
//! scripts/test installs, against a real `vowd`, relying on server reflection
//! alone (no .proto files on the grpcurl side).

mod common;

use std::process::{Command, Output};

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
