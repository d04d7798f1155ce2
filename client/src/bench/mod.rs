//! `vow bench`: drives a server with the load generator, optionally drives
//! the bare ceiling server with the very same load right after, and reports
//! throughput, latency percentiles and vowd's share of the ceiling.

pub mod ceiling;
mod load;
mod report;

use std::{io::IsTerminal, process::Stdio, time::Duration};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncBufReadExt;
use vow_client::{endpoint_url, proto};

use crate::cli::{ExitStatus, OutputFormat, commands::Failure, parse_duration};
pub use load::{LoadPlan, LoadReport};

/// What one iteration of a caller does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Submit a task, then Await it: two RPCs per task.
    SubmitAwait,
    /// Run: submit and wait in one RPC.
    Run,
    /// Submit only; the server executes the tasks in the background.
    SubmitOnly,
}

impl Mode {
    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::SubmitAwait => "submit-await",
            Self::Run => "run",
            Self::SubmitOnly => "submit-only",
        }
    }
}

/// `vow bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What each iteration does.
    #[arg(long, value_enum, default_value_t = Mode::SubmitAwait)]
    pub mode: Mode,
    /// Callers, each with one iteration in flight at a time.
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the callers are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to measure.
    #[arg(long, short = 'd', value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// How long to run before measuring (connections, allocators and caches warm up).
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Kind of the tasks submitted.
    #[arg(long, default_value = "echo")]
    pub kind: String,
    /// Size of each task's input: this many bytes of binary payload.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// JSON input instead of a binary payload (for kinds that read it, e.g. `{"ms": 5}` for sleep).
    #[arg(long, conflicts_with = "payload_bytes")]
    pub input: Option<String>,
    /// Also run the same load against the bare ceiling server and report vowd's ratio of it.
    #[arg(long)]
    pub ceiling: bool,
}

/// The settings a report restates, so a result is never read without them.
pub struct BenchSetup {
    pub mode: Mode,
    pub kind: String,
    pub concurrency: usize,
    pub connections: usize,
    pub duration: Duration,
    pub warmup: Duration,
    pub payload_bytes: usize,
    pub server: String,
}

/// Runs `vow bench`.
pub async fn run(
    server: &str,
    format: OutputFormat,
    args: BenchArgs,
) -> Result<ExitStatus, Failure> {
    if args.concurrency == 0 || args.connections == 0 || args.duration.is_zero() {
        return Err(Failure::Usage(
            "--concurrency, --connections and --duration must be above zero".into(),
        ));
    }
    let input = match &args.input {
        Some(text) => {
            let json: serde_json::Value = serde_json::from_str(text)
                .map_err(|error| Failure::Usage(format!("--input is not valid JSON: {error}")))?;
            proto::payload::Data::Json(vow_client::json_to_value(&json))
        }
        None => proto::payload::Data::Binary(vec![b'x'; args.payload_bytes]),
    };
    let plan = LoadPlan {
        mode: args.mode,
        concurrency: args.concurrency,
        connections: args.connections,
        warmup: args.warmup,
        duration: args.duration,
        request: proto::SubmitRequest {
            kind: args.kind.clone(),
            input: Some(proto::Payload {
                data: Some(input),
                content_type: String::new(),
            }),
            ..Default::default()
        },
    };
    let setup = BenchSetup {
        mode: args.mode,
        kind: args.kind,
        concurrency: args.concurrency,
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        payload_bytes: args.payload_bytes,
        server: server.to_owned(),
    };
    let show_progress = format == OutputFormat::Human && std::io::stderr().is_terminal();

    let target = load::drive(
        &endpoint_url(server),
        &plan,
        &progress_bar(show_progress, "server"),
    )
    .await?;
    let ceiling = if args.ceiling {
        Some(drive_ceiling(&plan, show_progress).await?)
    } else {
        None
    };

    report::print(format, &setup, &target, ceiling.as_ref());
    if target.completed == 0 {
        return Ok(ExitStatus::Failed);
    }
    Ok(ExitStatus::Succeeded)
}

/// Starts the ceiling server as a child process (`vow ceiling-server`), so it
/// runs apart from the load generator exactly as vowd does, and drives it.
async fn drive_ceiling(plan: &LoadPlan, show_progress: bool) -> Result<LoadReport, Failure> {
    let executable = std::env::current_exe()
        .map_err(|error| Failure::Other(format!("cannot find the vow executable: {error}")))?;
    let mut child = tokio::process::Command::new(executable)
        .args([
            "ceiling-server",
            "--listen",
            "127.0.0.1:0",
            "--exit-on-stdin-close",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|error| Failure::Other(format!("cannot start the ceiling server: {error}")))?;
    let stdout = child.stdout.take().expect("stdout is piped");
    let mut first_line = String::new();
    tokio::io::BufReader::new(stdout)
        .read_line(&mut first_line)
        .await
        .map_err(|error| Failure::Other(format!("cannot read the ceiling server: {error}")))?;
    let Some(address) = first_line.trim().strip_prefix(ceiling::LISTENING_PREFIX) else {
        return Err(Failure::Other(format!(
            "the ceiling server did not start: {first_line:?}"
        )));
    };
    let report = load::drive(
        &endpoint_url(address),
        plan,
        &progress_bar(show_progress, "ceiling"),
    )
    .await?;
    // Dropping the child kills it (kill_on_drop); closing stdin would too.
    drop(child);
    Ok(report)
}

fn progress_bar(visible: bool, target: &str) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner().with_prefix(target.to_owned());
    bar.set_style(
        ProgressStyle::with_template("{spinner} {prefix:8} {msg}").expect("the template is valid"),
    );
    bar
}
