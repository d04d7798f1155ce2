//! `vow work KIND -- COMMAND ARGS…`: a remote worker that runs a command
//! per task, so any script in any language becomes a worker.
//!
//! The task's input goes to the command's standard input (JSON as text,
//! bytes as they are); its standard output becomes the output (JSON when it
//! parses as JSON, bytes otherwise). The command also gets `VOW_TASK_ID`,
//! `VOW_TASK_KIND`, `VOW_TASK_ATTEMPT`, `VOW_TASK_DEADLINE` (RFC 3339, when
//! the attempt has one) and `TRACEPARENT`. On cancel or at the attempt
//! deadline it gets SIGTERM, then SIGKILL after the grace period. Exit
//! status to error code: 0 succeeds; 64 (EX_USAGE) and 65 (EX_DATAERR) are
//! INVALID_ARGUMENT, not retried; 75 (EX_TEMPFAIL) is UNAVAILABLE; 124 (as
//! `timeout` exits) is DEADLINE_EXCEEDED; anything else, a signal included,
//! is INTERNAL; the three last are retried. The end of standard error
//! (4 KiB) is the error's message.

use std::{process::Stdio, sync::Arc, time::Duration};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use vow_client::worker::{
    ErrorCode, Handler, HandlerContext, HandlerRegistry, Payload, PayloadData, TaskError, Worker,
};

use super::{
    ExitStatus, WorkArgs,
    commands::{Connection, Failure},
};

/// How much of standard error an error message keeps.
const STDERR_TAIL: usize = 4096;

/// `vow work`.
pub async fn work(connection: &Connection, args: WorkArgs) -> Result<ExitStatus, Failure> {
    let Some((program, program_args)) = args.command.split_first() else {
        return Err(Failure::Usage(
            "name the command to run after --, as in: vow work KIND -- ./handle.sh".into(),
        ));
    };
    let client = connection.client().await?;
    let command = Arc::new(CommandHandler {
        program: program.clone(),
        args: program_args.to_vec(),
        kill_grace: args.kill_grace,
    });
    let mut handlers = HandlerRegistry::new();
    for kind in &args.kinds {
        handlers.register(kind.clone(), Shared(command.clone()));
    }
    let mut worker = Worker::new(&client, handlers)
        .concurrency(args.concurrency)
        .drain_timeout(args.drain_timeout);
    if let Some(worker_id) = args.worker_id {
        worker = worker.worker_id(worker_id);
    }
    if let Some(lease) = args.lease_duration {
        worker = worker.lease_duration(lease);
    }
    eprintln!(
        "vow work: running {} for {} ({} at once); SIGTERM or Ctrl-C stops",
        program,
        args.kinds.join(", "),
        args.concurrency
    );
    worker.run(stop_signal()).await?;
    Ok(ExitStatus::Succeeded)
}

/// Completes at SIGTERM or SIGINT.
async fn stop_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = terminate.recv() => {}
        _ = interrupt.recv() => {}
    }
}

struct CommandHandler {
    program: String,
    args: Vec<String>,
    kill_grace: Duration,
}

/// One command for every kind it is registered under.
struct Shared(Arc<CommandHandler>);

#[async_trait]
impl Handler for Shared {
    async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError> {
        self.0.run(context).await
    }
}

impl CommandHandler {
    async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError> {
        let mut command = tokio::process::Command::new(&self.program);
        command
            .args(&self.args)
            .env("VOW_TASK_ID", context.task_id.to_string())
            .env("VOW_TASK_KIND", &context.kind)
            .env("VOW_TASK_ATTEMPT", context.attempt.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        if let Some(deadline) = context.deadline {
            command.env(
                "VOW_TASK_DEADLINE",
                humantime::format_rfc3339_millis(deadline).to_string(),
            );
        }
        if let Some(traceparent) = current_traceparent() {
            command.env("TRACEPARENT", traceparent);
        }
        let mut child = command.spawn().map_err(|error| {
            TaskError::new(
                ErrorCode::FailedPrecondition,
                format!("cannot start {}: {error}", self.program),
            )
            .with_reason("COMMAND_NOT_STARTED")
        })?;
        let input = match &context.input.data {
            PayloadData::Json(value) => value.to_string().into_bytes(),
            PayloadData::Binary(bytes) => bytes.clone(),
        };
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let mut stdout = child.stdout.take().expect("stdout is piped");
        let mut stderr = child.stderr.take().expect("stderr is piped");
        // Written, read and waited for together: a command that answers
        // before reading all of its input must not block on a full pipe.
        let feed = async move {
            let _ = stdin.write_all(&input).await;
            drop(stdin);
        };
        let read_out = async move {
            let mut output = Vec::new();
            let _ = stdout.read_to_end(&mut output).await;
            output
        };
        let read_err = async move {
            let mut output = Vec::new();
            let _ = stderr.read_to_end(&mut output).await;
            output
        };
        let kill_grace = self.kill_grace;
        let exited = async {
            tokio::select! {
                status = child.wait() => status,
                () = context.cancelled() => {
                    terminate(&child);
                    tokio::select! {
                        status = child.wait() => status,
                        () = tokio::time::sleep(kill_grace) => {
                            let _ = child.start_kill();
                            child.wait().await
                        }
                    }
                }
            }
        };
        let (((), output, errors), status) =
            tokio::join!(async { tokio::join!(feed, read_out, read_err) }, exited);
        let status = status.map_err(|error| {
            TaskError::new(
                ErrorCode::Internal,
                format!("cannot wait for the command: {error}"),
            )
        })?;
        if status.success() {
            return Ok(output_payload(output));
        }
        Err(command_error(status, &errors))
    }
}

fn terminate(child: &tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
    }
}

/// The context the handler runs in, as a `traceparent` for the command.
fn current_traceparent() -> Option<String> {
    use opentelemetry::trace::TraceContextExt as _;
    let context = opentelemetry::Context::current();
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            span_context.trace_id(),
            span_context.span_id(),
            span_context.trace_flags().to_u8()
        )
    })
}

/// Standard output as the task's output: JSON when it parses, else bytes.
fn output_payload(output: Vec<u8>) -> Payload {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(&output) {
        return Payload::json(value);
    }
    Payload {
        data: PayloadData::Binary(output),
        content_type: "application/octet-stream".into(),
    }
}

/// The documented mapping of an exit status to an error.
fn command_error(status: std::process::ExitStatus, stderr: &[u8]) -> TaskError {
    use std::os::unix::process::ExitStatusExt;
    let tail_start = stderr.len().saturating_sub(STDERR_TAIL);
    let tail = String::from_utf8_lossy(&stderr[tail_start..])
        .trim()
        .to_owned();
    let (code, how) = match (status.code(), status.signal()) {
        (Some(64 | 65), _) => (ErrorCode::InvalidArgument, status.to_string()),
        (Some(75), _) => (ErrorCode::Unavailable, status.to_string()),
        (Some(124), _) => (ErrorCode::DeadlineExceeded, status.to_string()),
        (_, Some(signal)) => (ErrorCode::Internal, format!("killed by signal {signal}")),
        _ => (ErrorCode::Internal, status.to_string()),
    };
    let message = if tail.is_empty() {
        format!("the command failed: {how}")
    } else {
        format!("the command failed: {how}: {tail}")
    };
    let mut error = TaskError::new(code, message).with_reason("COMMAND_FAILED");
    if let Some(exit_code) = status.code() {
        error = error.with_metadata("exit_code", exit_code.to_string());
    }
    error
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn exit_statuses_map_to_codes() {
        let code_of = |raw: i32| command_error(std::process::ExitStatus::from_raw(raw), b"").code;
        assert_eq!(code_of(64 << 8), ErrorCode::InvalidArgument);
        assert_eq!(code_of(75 << 8), ErrorCode::Unavailable);
        assert_eq!(code_of(124 << 8), ErrorCode::DeadlineExceeded);
        assert_eq!(code_of(1 << 8), ErrorCode::Internal);
        assert_eq!(code_of(9), ErrorCode::Internal, "SIGKILL");
        let error = command_error(std::process::ExitStatus::from_raw(3 << 8), b"boom\n");
        assert!(error.message.ends_with(": boom"), "{}", error.message);
        assert_eq!(error.metadata["exit_code"], "3");
    }

    #[test]
    fn output_is_json_when_it_parses() {
        assert_eq!(
            output_payload(b"{\"a\": 1}\n".to_vec()),
            Payload::json(serde_json::json!({"a": 1}))
        );
        let bytes = output_payload(b"not json".to_vec());
        assert_eq!(bytes.data, PayloadData::Binary(b"not json".to_vec()));
    }
}
