//! `vow watch` against a real vowd: live lines in order, JSON lines with
//! strictly increasing revisions, and `vow await`'s exit codes at the end.

mod common;

use std::process::Command;

use common::{Vowd, vow_binary};

fn vow(vowd: &Vowd, args: &[&str]) -> std::process::Output {
    Command::new(vow_binary())
        .args(["--server", &vowd.address, "--color", "never"])
        .args(args)
        .output()
        .expect("run vow")
}

fn submit(vowd: &Vowd, kind: &str, input: &str) -> String {
    let output = vow(vowd, &["submit", kind, input]);
    assert!(
        output.status.success(),
        "submit: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

#[test]
fn watch_prints_every_change_until_the_task_ends() {
    let vowd = Vowd::start(&["--progress-interval", "10ms"]);
    let id = submit(&vowd, "sleep", r#"{"ms": 300, "steps": 3}"#);
    let output = vow(&vowd, &["watch", &id]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines[0].starts_with("snapshot"), "{text}");
    assert!(
        lines.iter().any(|line| line.contains('%')),
        "progress is shown: {text}"
    );
    assert!(lines.last().expect("lines").contains("SUCCEEDED"), "{text}");
}

#[test]
fn watch_json_lines_have_increasing_revisions_and_failures_exit_one() {
    let vowd = Vowd::start(&[]);
    let id = submit(&vowd, "fail", r#"{"code": "INVALID_ARGUMENT"}"#);
    let output = vow(&vowd, &["--output", "json", "watch", &id]);
    assert_eq!(output.status.code(), Some(1), "a failed task exits 1");
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let revisions: Vec<u64> = text
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).expect("a JSON line"))
        .filter_map(|event| event["task"]["revision"].as_u64())
        .collect();
    assert!(!revisions.is_empty(), "{text}");
    assert!(
        revisions.windows(2).all(|pair| pair[1] > pair[0]),
        "{revisions:?}"
    );
    assert_eq!(
        vow(&vowd, &["watch", &"0".repeat(32)]).status.code(),
        Some(1),
        "an unknown id is a refused request"
    );
}

/// `--verbose` names the command's trace, and the task it submits carries it.
#[test]
fn verbose_prints_the_trace_the_task_joins() {
    let vowd = Vowd::start(&[]);
    let output = vow(
        &vowd,
        &["--verbose", "--output", "json", "run", "echo", "{}"],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stderr = String::from_utf8(output.stderr).expect("utf-8");
    let trace_id = stderr
        .lines()
        .find_map(|line| line.strip_prefix("trace "))
        .expect("a trace line on stderr");
    let task: serde_json::Value = serde_json::from_slice(&output.stdout).expect("a JSON task");
    assert_eq!(task["trace_id"], trace_id);
}
