//! `vow bench`: drives a server with the load generator, optionally drives
//! the bare ceiling server with the very same load right after, and reports
//! throughput, latency percentiles and vowd's share of the ceiling; or, with
//! `--mode watch-fanout`, measures how fast one task's end reaches its
//! watchers (`fanout`).

pub mod ceiling;
mod fanout;
mod load;
mod remote;
mod report;

use std::{io::IsTerminal, process::Stdio, time::Duration};

/// The raw stub every load caller drives: credentials, no trace context.
pub(crate) type Stub = vow_client::proto::task_service_client::TaskServiceClient<
    tonic::service::interceptor::InterceptedService<
        tonic::transport::Channel,
        vow_client::TraceInjector,
    >,
>;

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncBufReadExt;
use vow_client::{ConnectOptions, proto};

use crate::cli::{
    ExitStatus, OutputFormat,
    commands::{Connection, Failure},
    parse_duration,
};
use load::{LoadPlan, LoadReport};

/// What one iteration of a caller does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Submit a task, then Await it: two RPCs per task.
    SubmitAwait,
    /// Run: submit and wait in one RPC.
    Run,
    /// Submit only; the server executes the tasks in the background.
    SubmitOnly,
    /// Rounds of Watch fan-out: one long sleep task, --concurrency Watch streams on it
    /// over --connections connections, cancelled once every stream has its snapshot.
    /// Latency is each watcher's delay from the task's end_time to the terminal
    /// change, by the server's clock: run the bench on the server's host. The rate
    /// is deliveries per second. Ignores --kind, --input and --payload-bytes; no --ceiling.
    WatchFanout,
    /// Submit then Await tasks of a remote --kind (declared on the server with
    /// --remote-kind), run by --workers Rust workers in this process that echo the
    /// input; also reports the dispatch latency, from each Submit acknowledged to
    /// its lease received by a waiting worker.
    Remote,
}

impl Mode {
    /// The name as typed on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::SubmitAwait => "submit-await",
            Self::Run => "run",
            Self::SubmitOnly => "submit-only",
            Self::WatchFanout => "watch-fanout",
            Self::Remote => "remote",
        }
    }
}

/// `vow bench` options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// What each iteration (with watch-fanout: each round) does.
    #[arg(long, value_enum, default_value_t = Mode::SubmitAwait)]
    pub mode: Mode,
    /// Callers, each with one iteration in flight at a time (with watch-fanout: watchers per round).
    #[arg(long, short = 'c', default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the callers are spread over.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to measure (with watch-fanout: rounds start until it has passed; at least one runs).
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
    /// With --ceiling: split the measurement into this many slices, alternating
    /// server and ceiling, so load from other processes hits both alike.
    #[arg(long, default_value_t = 1, requires = "ceiling")]
    pub rounds: u32,
    /// With watch-fanout: the server's process id on this host (Linux). The
    /// report adds the server's CPU time per delivery, from each cancel to the
    /// round's last delivery: what the server alone spends, apart from the bench's
    /// own share of the cores.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// With remote: Rust workers started in this process.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// With remote: attempts each worker runs at once (default: --concurrency).
    #[arg(long)]
    pub worker_concurrency: Option<usize>,
    /// With remote: the server the workers poll (default: --server), such as
    /// another PostgreSQL replica, to measure dispatch across replicas.
    #[arg(long)]
    pub worker_server: Option<String>,
    /// Retry what the project's clients retry (UNAVAILABLE, and the CANCELLED,
    /// INTERNAL or UNKNOWN a proxy makes of a reset stream), giving each Submit
    /// an idempotency key of its own: the load of an application riding
    /// through a rolling restart. Retries are counted apart from errors.
    #[arg(long)]
    pub retry: bool,
}

/// Unmeasured run-in before each later round, after the other server had the machine.
const REWARM: Duration = Duration::from_millis(250);

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
    /// Alternating slices of server and ceiling the measurement was split into.
    pub rounds: u32,
}

/// Runs `vow bench` against `connection`'s server (with its TLS options).
pub async fn run(
    connection: &Connection,
    format: OutputFormat,
    args: BenchArgs,
) -> Result<ExitStatus, Failure> {
    let server = connection.server.as_str();
    if args.concurrency == 0 || args.connections == 0 || args.duration.is_zero() {
        return Err(Failure::Usage(
            "--concurrency, --connections and --duration must be above zero".into(),
        ));
    }
    if args.mode == Mode::WatchFanout {
        if args.ceiling {
            return Err(Failure::Usage(
                "--ceiling does not apply to --mode watch-fanout: the ceiling server has no Watch"
                    .into(),
            ));
        }
        return run_watch_fanout(connection, format, args).await;
    }
    if args.server_pid.is_some() {
        return Err(Failure::Usage(
            "--server-pid applies only to --mode watch-fanout".into(),
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
    if args.mode == Mode::Remote && args.ceiling {
        return Err(Failure::Usage(
            "--ceiling does not apply to --mode remote: compare with --mode submit-await and an in-process kind"
                .into(),
        ));
    }
    let dispatch =
        (args.mode == Mode::Remote).then(|| std::sync::Arc::new(remote::DispatchClock::default()));
    let plan = LoadPlan {
        injector: connection.injector()?,
        mode: args.mode,
        concurrency: args.concurrency,
        connections: args.connections,
        dispatch: dispatch.clone(),
        retry: args.retry.then(vow_client::RetryConfig::default),
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
        rounds: args.rounds.max(1),
    };
    let show_progress = format == OutputFormat::Human && std::io::stderr().is_terminal();

    let options = connection.tls.connect_options()?;
    let server_channels = load::connect(server, &options, plan.connections).await?;
    let ceiling = match args.ceiling {
        true => Some(CeilingProcess::start().await?),
        false => None,
    };
    let ceiling_channels = match &ceiling {
        Some(process) => {
            // The ceiling server is ours, on this host: plain HTTP/2.
            let plain = ConnectOptions::new();
            Some(load::connect(&process.address, &plain, plan.connections).await?)
        }
        None => None,
    };
    let workers = match &dispatch {
        Some(clock) => {
            let worker_server = args.worker_server.as_deref().unwrap_or(server);
            let client = connection.with_credentials(
                vow_client::Client::connect_with(worker_server, &options).await?,
            )?;
            let concurrency = args.worker_concurrency.unwrap_or(args.concurrency);
            Some(remote::Workers::start(
                &client,
                &setup.kind,
                args.workers,
                concurrency,
                clock.clone(),
            ))
        }
        None => None,
    };
    if let Some(clock) = &dispatch {
        let clock = clock.clone();
        let warmup = args.warmup;
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            clock.start_measuring();
        });
    }
    let rounds = setup.rounds;
    let slice = args.duration / rounds;
    let mut target = LoadReport::empty();
    let mut ceiling_report = ceiling_channels.as_ref().map(|_| LoadReport::empty());
    for round in 0..rounds {
        let warmup = if round == 0 {
            args.warmup
        } else {
            REWARM.min(args.warmup)
        };
        let progress = progress_bar(show_progress, "server");
        target.absorb(load::drive(&server_channels, &plan, warmup, slice, &progress).await);
        if let (Some(channels), Some(report)) = (&ceiling_channels, &mut ceiling_report) {
            let progress = progress_bar(show_progress, "ceiling");
            report.absorb(load::drive(channels, &plan, warmup, slice, &progress).await);
        }
    }
    drop(ceiling);
    if let Some(workers) = workers {
        workers.stop().await;
    }
    target.dispatch = dispatch.and_then(|clock| clock.take());

    report::print(format, &setup, &target, ceiling_report.as_ref());
    if target.completed == 0 {
        return Ok(ExitStatus::Failed);
    }
    Ok(ExitStatus::Succeeded)
}

/// Runs `vow bench --mode watch-fanout` (no ceiling: it has no Watch).
async fn run_watch_fanout(
    connection: &Connection,
    format: OutputFormat,
    args: BenchArgs,
) -> Result<ExitStatus, Failure> {
    let server = connection.server.as_str();
    let server_process = match args.server_pid {
        Some(pid) => Some(fanout::ProcessCpu::find(pid).ok_or_else(|| {
            Failure::Usage(format!(
                "--server-pid {pid}: no such process whose CPU time this host shows (/proc/{pid}/task)"
            ))
        })?),
        None => None,
    };
    let setup = BenchSetup {
        mode: args.mode,
        kind: fanout::TASK_KIND.to_owned(),
        concurrency: args.concurrency,
        connections: args.connections,
        duration: args.duration,
        warmup: args.warmup,
        // The watched task's input is a small JSON object, no binary payload.
        payload_bytes: 0,
        server: server.to_owned(),
        rounds: 1,
    };
    let show_progress = format == OutputFormat::Human && std::io::stderr().is_terminal();
    let options = connection.tls.connect_options()?;
    let channels = load::connect(server, &options, args.connections).await?;
    let progress = progress_bar(show_progress, "server");
    let report = fanout::drive(
        &channels,
        &connection.injector()?,
        args.concurrency,
        args.warmup,
        args.duration,
        server_process,
        &progress,
    )
    .await;
    report::print(format, &setup, &report, None);
    if report.completed == 0 {
        return Ok(ExitStatus::Failed);
    }
    Ok(ExitStatus::Succeeded)
}

/// The ceiling server as a child process (`vow ceiling-server`), so it runs
/// apart from the load generator exactly as vowd does. Killed on drop.
struct CeilingProcess {
    address: String,
    _child: tokio::process::Child,
}

impl CeilingProcess {
    async fn start() -> Result<Self, Failure> {
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
        Ok(Self {
            address: address.to_owned(),
            _child: child,
        })
    }
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
