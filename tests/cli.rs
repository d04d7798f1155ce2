//! End-to-end tests of the `vow` CLI against a real `vowd`: each subcommand
//! in human and JSON output, the exit-code contract, stdin input, waiting for
//! a server that starts late, and a short `vow bench` run.

mod common;

use std::{
    io::{BufRead, BufReader, Write},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::Vowd;
use serde_json::Value;

/// Longest any single CLI invocation may take before the test fails.
const BOUND: Duration = Duration::from_secs(20);

/// What one `vow` invocation did.
struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    /// stdout as one JSON object.
    fn json(&self) -> Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|error| {
            panic!("stdout is not one JSON object ({error}):\n{}", self.stdout)
        })
    }

    /// stdout as one JSON object per line.
    fn json_lines(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("each line is a JSON object"))
            .collect()
    }

    fn assert_code(&self, expected: i32) -> &Self {
        assert_eq!(
            self.code, expected,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `vow --server <vowd> <args>` with nothing on stdin.
fn vow(vowd: &Vowd, args: &[&str]) -> Outcome {
    vow_at(&vowd.address, args, None)
}

/// Runs `vow --server <address> <args>`, feeding `stdin` if given.
fn vow_at(address: &str, args: &[&str], stdin: Option<&str>) -> Outcome {
    let mut command = Command::new(common::vow_binary());
    command
        .args(["--server", address])
        .args(args)
        .env_remove("VOW_SERVER")
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn vow");
    if let Some(text) = stdin {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        pipe.write_all(text.as_bytes()).expect("write vow's stdin");
    }
    wait_bounded(child, BOUND)
}

/// Waits for a child, killing it and failing the test past `bound`.
fn wait_bounded(mut child: Child, bound: Duration) -> Outcome {
    let started = Instant::now();
    while child.try_wait().expect("poll vow").is_none() {
        if started.elapsed() > bound {
            let _ = child.kill();
            let output = child.wait_with_output().expect("collect vow's output");
            panic!(
                "vow ran longer than {bound:?}; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let output = child.wait_with_output().expect("collect vow's output");
    Outcome {
        code: output
            .status
            .code()
            .expect("vow exited, not killed by a signal"),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The value of `key` in the human key/value view of a task.
fn field<'a>(view: &'a str, key: &str) -> &'a str {
    view.lines()
        .find_map(|line| {
            let (name, value) = line.split_once("  ")?;
            (name.trim() == key).then(|| value.trim())
        })
        .unwrap_or_else(|| panic!("no {key:?} line in:\n{view}"))
}

#[test]
fn submit_prints_the_id_and_get_shows_the_task_in_both_formats() {
    let vowd = Vowd::start(&[]);
    let submitted = vow(
        &vowd,
        &["submit", "echo", r#"{"hello":"world"}"#, "-l", "team=core"],
    );
    submitted.assert_code(0);
    let id = submitted.stdout.trim();
    assert_eq!(
        id.len(),
        32,
        "submit prints the bare id: {:?}",
        submitted.stdout
    );

    vow(&vowd, &["await", id, "--timeout", "10s"]).assert_code(0);
    let human = vow(&vowd, &["get", id]);
    human.assert_code(0);
    assert_eq!(field(&human.stdout, "id"), id);
    assert_eq!(field(&human.stdout, "kind"), "echo");
    assert_eq!(field(&human.stdout, "state"), "SUCCEEDED");
    assert_eq!(field(&human.stdout, "labels"), "team=core");
    assert_eq!(field(&human.stdout, "output"), r#"{"hello":"world"}"#);
    assert!(!human.stdout.contains('\u{1b}'), "no colour off a terminal");

    let json = vow(&vowd, &["--output", "json", "get", id]);
    json.assert_code(0);
    let task = json.json();
    assert_eq!(task["id"], id);
    assert_eq!(task["state"], "SUCCEEDED");
    assert_eq!(task["labels"]["team"], "core");
    assert_eq!(task["output"]["json"]["hello"], "world");
    assert_eq!(task["attempt"], 1);
}

#[test]
fn submit_json_reports_deduplication_of_a_reused_idempotency_key() {
    let vowd = Vowd::start(&[]);
    let args = [
        "-o",
        "json",
        "submit",
        "echo",
        "{}",
        "--idempotency-key",
        "once",
    ];
    let first = vow(&vowd, &args);
    first.assert_code(0);
    let second = vow(&vowd, &args);
    second.assert_code(0);
    assert_eq!(first.json()["id"], second.json()["id"]);
    assert_eq!(first.json()["deduplicated"], false);
    assert_eq!(second.json()["deduplicated"], true);
}

#[test]
fn submit_wait_and_run_show_the_result_and_exit_zero() {
    let vowd = Vowd::start(&[]);
    let waited = vow(&vowd, &["submit", "--wait", "echo", "[1,2,3]"]);
    waited.assert_code(0);
    assert_eq!(field(&waited.stdout, "state"), "SUCCEEDED");
    assert_eq!(field(&waited.stdout, "output"), "[1,2,3]");

    let ran = vow(&vowd, &["-o", "json", "run", "echo", r#"{"n":7}"#]);
    ran.assert_code(0);
    assert_eq!(ran.json()["output"]["json"]["n"], 7);
    assert_eq!(ran.json()["state"], "SUCCEEDED");
}

#[test]
fn input_comes_from_stdin_with_a_dash_and_from_a_file_with_an_at_sign() {
    let vowd = Vowd::start(&[]);
    let ran = vow_at(
        &vowd.address,
        &["-o", "json", "run", "echo", "-"],
        Some(r#"{"from": "stdin"}"#),
    );
    ran.assert_code(0);
    assert_eq!(ran.json()["output"]["json"]["from"], "stdin");

    let path = std::env::temp_dir().join(format!("vow-cli-input-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"from": "file"}"#).expect("write the input file");
    let argument = format!("@{}", path.display());
    let ran = vow(&vowd, &["-o", "json", "run", "echo", &argument]);
    let _ = std::fs::remove_file(&path);
    ran.assert_code(0);
    assert_eq!(ran.json()["output"]["json"]["from"], "file");
}

#[test]
fn a_failed_task_exits_one_and_shows_its_error() {
    let vowd = Vowd::start(&[]);
    let input = r#"{"code":"INTERNAL"}"#;
    let human = vow(&vowd, &["run", "fail", input, "--retries", "0"]);
    human.assert_code(1);
    assert_eq!(field(&human.stdout, "state"), "FAILED");
    assert!(
        field(&human.stdout, "error").starts_with("INTERNAL: "),
        "{}",
        human.stdout
    );

    let json = vow(
        &vowd,
        &[
            "-o",
            "json",
            "submit",
            "--wait",
            "fail",
            input,
            "--retries",
            "0",
        ],
    );
    json.assert_code(1);
    assert_eq!(json.json()["state"], "FAILED");
    assert_eq!(json.json()["error"]["code"], "INTERNAL");
    assert_eq!(json.json()["max_attempts"], 1);
}

#[test]
fn cancel_shows_the_task_and_awaiting_a_cancelled_task_exits_three() {
    let vowd = Vowd::start(&[]);
    let submitted = vow(&vowd, &["submit", "sleep", r#"{"ms":30000}"#]);
    submitted.assert_code(0);
    let id = submitted.stdout.trim();

    let cancelled = vow(&vowd, &["cancel", id, "--reason", "not needed"]);
    cancelled.assert_code(0);
    assert_eq!(field(&cancelled.stdout, "id"), id);

    let awaited = vow(&vowd, &["-o", "json", "await", id, "--timeout", "10s"]);
    awaited.assert_code(3);
    assert_eq!(awaited.json()["state"], "CANCELLED");
    let human = vow(&vowd, &["await", id]);
    human.assert_code(3);
    assert_eq!(field(&human.stdout, "state"), "CANCELLED");
}

#[test]
fn an_await_that_times_out_exits_four_with_the_unfinished_task() {
    let vowd = Vowd::start(&[]);
    let submitted = vow(&vowd, &["submit", "sleep", r#"{"ms":30000}"#]);
    let id = submitted.stdout.trim();
    let awaited = vow(&vowd, &["-o", "json", "await", id, "--timeout", "200ms"]);
    awaited.assert_code(4);
    let state = awaited.json()["state"].clone();
    assert!(
        state == "QUEUED" || state == "RUNNING",
        "unfinished: {state}"
    );
    vow(&vowd, &["cancel", id]).assert_code(0);
}

#[test]
fn ls_filters_by_state_kind_and_label_and_honours_the_limit() {
    let vowd = Vowd::start(&[]);
    let mut ids = Vec::new();
    for index in 0..3 {
        let label = format!("batch=b{}", index % 2);
        let ran = vow(&vowd, &["-o", "json", "run", "echo", "{}", "-l", &label]);
        ran.assert_code(0);
        ids.push(ran.json()["id"].as_str().expect("an id").to_owned());
    }
    vow(
        &vowd,
        &["run", "fail", r#"{"code":"INTERNAL"}"#, "--retries", "0"],
    )
    .assert_code(1);

    let all = vow(&vowd, &["-o", "json", "ls"]);
    all.assert_code(0);
    assert_eq!(all.json_lines().len(), 4);

    let labelled = vow(
        &vowd,
        &["-o", "json", "ls", "--label", "batch=b0", "--kind", "echo"],
    );
    let listed: Vec<_> = labelled
        .json_lines()
        .iter()
        .map(|task| task["id"].clone())
        .collect();
    assert_eq!(listed, [ids[2].clone(), ids[0].clone()], "newest first");

    let failed = vow(&vowd, &["-o", "json", "ls", "--state", "failed"]);
    assert_eq!(failed.json_lines().len(), 1);
    assert_eq!(failed.json_lines()[0]["kind"], "fail");

    assert_eq!(
        vow(&vowd, &["-o", "json", "ls", "--limit", "2"])
            .json_lines()
            .len(),
        2
    );

    let table = vow(&vowd, &["ls", "--state", "succeeded"]);
    table.assert_code(0);
    let lines: Vec<_> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three rows:\n{}", table.stdout);
    assert!(lines[0].starts_with("ID") && lines[0].contains("STATE"));
    for id in &ids {
        assert!(table.stdout.contains(id.as_str()), "{id} listed");
    }
    let state_column = lines[0].find("STATE").expect("a STATE header");
    assert!(
        lines[1..]
            .iter()
            .all(|line| line[state_column..].starts_with("SUCCEEDED"))
    );
}

#[test]
fn rm_forgets_a_task_and_a_missing_task_exits_one() {
    let vowd = Vowd::start(&[]);
    let ran = vow(&vowd, &["-o", "json", "run", "echo", "{}"]);
    let id = ran.json()["id"].as_str().expect("an id").to_owned();

    let removed = vow(&vowd, &["rm", &id]);
    removed.assert_code(0);
    assert_eq!(removed.stdout.trim(), format!("deleted {id}"));

    let missing = vow(&vowd, &["get", &id]);
    missing.assert_code(1);
    assert!(missing.stderr.contains("NOT_FOUND"), "{}", missing.stderr);
    let missing = vow(&vowd, &["-o", "json", "rm", &id]);
    missing.assert_code(1);
    let error: Value = serde_json::from_str(missing.stderr.trim()).expect("a JSON error");
    assert_eq!(error["error"]["code"], "NOT_FOUND");
}

#[test]
fn usage_and_validation_errors_exit_two() {
    let vowd = Vowd::start(&[]);
    let bad_flag = vow(&vowd, &["submit", "echo", "--no-such-flag"]);
    bad_flag.assert_code(2);
    assert!(bad_flag.stderr.contains("--no-such-flag"));

    let bad_json = vow(&vowd, &["submit", "echo", "{not json"]);
    bad_json.assert_code(2);
    assert!(
        bad_json.stderr.contains("not valid JSON"),
        "{}",
        bad_json.stderr
    );

    let bad_duration = vow(&vowd, &["await", "abc", "--timeout", "soon"]);
    bad_duration.assert_code(2);

    let unknown_kind = vow(&vowd, &["submit", "no-such-kind", "{}"]);
    unknown_kind.assert_code(2);
}

#[test]
fn an_unreachable_server_exits_five() {
    let address = free_address();
    let outcome = vow_at(
        &address,
        &["--connect-timeout", "300ms", "get", "abc"],
        None,
    );
    outcome.assert_code(5);
    assert!(
        outcome.stderr.contains("cannot reach"),
        "{}",
        outcome.stderr
    );

    let json = vow_at(
        &address,
        &["-o", "json", "--connect-timeout", "100ms", "ls"],
        None,
    );
    json.assert_code(5);
    let error: Value = serde_json::from_str(json.stderr.trim()).expect("a JSON error");
    assert_eq!(error["error"]["code"], "UNAVAILABLE");
}

#[test]
fn a_command_started_before_the_server_waits_for_it() {
    let address = free_address();
    let mut command = Command::new(common::vow_binary());
    command
        .args([
            "--server",
            &address,
            "--connect-timeout",
            "15s",
            "-o",
            "json",
        ])
        .args(["run", "echo", r#"{"late":true}"#])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cli = command.spawn().expect("spawn vow");
    let _vowd = LateVowd::start(&address);
    let outcome = wait_bounded(cli, BOUND);
    outcome.assert_code(0);
    assert_eq!(outcome.json()["output"]["json"]["late"], true);
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let outcome = vow_at("127.0.0.1:1", &["completions", shell], None);
        outcome.assert_code(0);
        assert!(
            outcome.stdout.contains("submit"),
            "{shell} completes subcommands"
        );
    }
}

#[test]
fn help_documents_the_exit_codes() {
    let outcome = vow_at("127.0.0.1:1", &["--help"], None);
    outcome.assert_code(0);
    for line in [
        "0  the command succeeded",
        "3  the task was CANCELLED",
        "5  the server is unreachable",
    ] {
        assert!(outcome.stdout.contains(line), "--help lacks {line:?}");
    }
}

#[test]
fn bench_prints_one_sane_json_line_with_the_ceiling_ratio() {
    let vowd = Vowd::start(&[]);
    let outcome = vow(
        &vowd,
        &[
            "-o",
            "json",
            "bench",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--concurrency",
            "8",
            "--connections",
            "2",
            "--ceiling",
            "--rounds",
            "2",
        ],
    );
    outcome.assert_code(0);
    let report = outcome.json();
    assert_eq!(report["mode"], "submit-await");
    assert_eq!(report["concurrency"], 8);
    assert_eq!(report["rounds"], 2);
    for measured in [&report, &report["ceiling"]] {
        assert!(
            measured["tasks"].as_u64().expect("a task count") > 0,
            "{measured}"
        );
        assert!(measured["tasks_per_s"].as_f64().expect("a rate") > 0.0);
        assert_eq!(measured["errors"], serde_json::json!({}), "{measured}");
        let latency = &measured["latency_us"];
        let p50 = latency["p50"].as_u64().expect("p50");
        let p99 = latency["p99"].as_u64().expect("p99");
        let max = latency["max"].as_u64().expect("max");
        assert!(
            0 < p50 && p50 <= p99 && p99 <= max,
            "ordered percentiles: {latency}"
        );
    }
    let ratio = report["ceiling_ratio"].as_f64().expect("a ceiling ratio");
    assert!(ratio > 0.0 && ratio.is_finite());
}

#[test]
fn bench_watch_fanout_reports_delivery_delays_of_every_watcher() {
    let vowd = Vowd::start(&[]);
    let server_pid = vowd.child.id().to_string();
    let outcome = vow(
        &vowd,
        &[
            "-o",
            "json",
            "bench",
            "--mode",
            "watch-fanout",
            "--concurrency",
            "50",
            "--connections",
            "5",
            "--duration",
            "2s",
            "--warmup",
            "0s",
            "--server-pid",
            &server_pid,
        ],
    );
    outcome.assert_code(0);
    let report = outcome.json();
    assert_eq!(report["mode"], "watch-fanout");
    assert_eq!(report["kind"], "sleep");
    assert_eq!(report["watchers"], 50);
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
    let rounds = report["fanout_rounds"].as_u64().expect("a round count");
    assert!(rounds >= 1, "{report}");
    // Every watcher of every round got the terminal change.
    assert_eq!(report["tasks"].as_u64(), Some(rounds * 50), "{report}");
    assert!(report["tasks_per_s"].as_f64().expect("a rate") > 0.0);
    let latency = &report["latency_us"];
    let p50 = latency["p50"].as_u64().expect("p50");
    let p99 = latency["p99"].as_u64().expect("p99");
    let max = latency["max"].as_u64().expect("max");
    assert!(p50 <= p99 && p99 <= max, "ordered percentiles: {latency}");
    assert_eq!(report["ceiling"], Value::Null);
    // Sending 50 terminal changes and ending 50 streams takes the server some
    // CPU, and receiving them the bench.
    for process in ["server", "bench"] {
        let cpu = report[format!("{process}_cpu_per_delivery_us")].as_f64();
        assert!(
            cpu.is_some_and(|micros| micros > 0.0),
            "{process}: {report}"
        );
    }
}

#[test]
fn bench_refuses_a_server_pid_it_cannot_measure() {
    let vowd = Vowd::start(&[]);
    let no_such_process = free_pid();
    let outcome = vow(
        &vowd,
        &[
            "bench",
            "--mode",
            "watch-fanout",
            "--server-pid",
            &no_such_process,
        ],
    );
    outcome.assert_code(2);
    assert!(
        outcome.stderr.contains("--server-pid"),
        "{}",
        outcome.stderr
    );

    let server_pid = vowd.child.id().to_string();
    let outcome = vow(&vowd, &["bench", "--server-pid", &server_pid]);
    outcome.assert_code(2);
    assert!(
        outcome.stderr.contains("watch-fanout"),
        "{}",
        outcome.stderr
    );
}

/// A process id no process has: one above the kernel's maximum.
fn free_pid() -> String {
    let max = std::fs::read_to_string("/proc/sys/kernel/pid_max").expect("read pid_max");
    let max: u64 = max.trim().parse().expect("pid_max is a number");
    (max + 1).to_string()
}

#[test]
fn bench_refuses_the_ceiling_with_watch_fanout() {
    let vowd = Vowd::start(&[]);
    let outcome = vow(
        &vowd,
        &[
            "bench",
            "--mode",
            "watch-fanout",
            "--ceiling",
            "--duration",
            "1s",
        ],
    );
    outcome.assert_code(2);
    assert!(outcome.stderr.contains("--ceiling"), "{}", outcome.stderr);
}

/// An address nothing listens on (bound, then released).
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").to_string()
}

/// A `vowd` on a chosen address, for the cases where the client comes first.
struct LateVowd(Child);

impl LateVowd {
    fn start(address: &str) -> Self {
        let mut child = Command::new(common::vowd_binary())
            .args(["--store", "memory", "--listen", address])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vowd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped"))
            .read_line(&mut line)
            .expect("read vowd's stdout");
        assert!(line.starts_with("vowd listening on"), "vowd said {line:?}");
        Self(child)
    }
}

impl Drop for LateVowd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
