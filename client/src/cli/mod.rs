//! The `vow` command line: argument definitions (clap), the exit-code
//! contract, and dispatch to the commands. Talks to the server only through
//! the `vow_client` library.

pub mod commands;
mod exit;
mod input;
pub mod json;
pub mod render;
mod tls;
mod work;

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::bench::BenchArgs;
pub use exit::ExitStatus;

const EXIT_CODES: &str = "\
Exit codes:
  0  the command succeeded (for commands that wait: the task SUCCEEDED)
  1  the task FAILED, or the server refused the request (e.g. NOT_FOUND)
  2  usage or validation error (bad flag, bad input, INVALID_ARGUMENT)
  3  the task was CANCELLED
  4  timed out waiting for the task
  5  the server is unreachable";

/// Submit, await and inspect Vow tasks from the shell.
#[derive(Debug, Parser)]
#[command(name = "vow", version, after_help = EXIT_CODES, after_long_help = EXIT_CODES)]
pub struct Cli {
    /// Server to talk to: `host:port`, or an `http://` or `https://` URL; several replicas,
    /// balanced over: `a:50051,b:50051`, or `dns:///name:50051` (every address of the name).
    #[arg(
        long,
        short = 's',
        env = "VOW_SERVER",
        default_value = "127.0.0.1:50051",
        global = true
    )]
    pub server: String,

    /// Output format: text for people, or one JSON object per line for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Human, global = true)]
    pub output: OutputFormat,

    /// When to colour human output (`auto`: only on a terminal, and not with NO_COLOR set).
    #[arg(long, value_enum, default_value_t = ColorChoice::Auto, global = true)]
    pub color: ColorChoice,

    /// How long to keep trying to reach the server before giving up with exit code 5.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration, global = true)]
    pub connect_timeout: Duration,

    /// Print the trace id of this command's root span on stderr (find the server's
    /// spans of the command under it).
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,

    #[command(flatten)]
    pub tls: tls::TlsArgs,

    /// Credentials of a server with access control: an API key or a JWT, sent as
    /// `authorization: Bearer …` with every call.
    #[arg(long, env = "VOW_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

impl Command {
    /// The subcommand's name, for the root span.
    fn name(&self) -> &'static str {
        match self {
            Self::Submit(_) => "submit",
            Self::Get { .. } => "get",
            Self::Await { .. } => "await",
            Self::Run(_) => "run",
            Self::Watch { .. } => "watch",
            Self::Cancel { .. } => "cancel",
            Self::Ls(_) => "ls",
            Self::Rm { .. } => "rm",
            Self::Work(_) => "work",
            Self::Kinds => "kinds",
            Self::Completions { .. } => "completions",
            Self::Bench(_) => "bench",
            Self::CeilingServer { .. } => "ceiling-server",
        }
    }
}

impl Cli {
    /// Whether the command wants a multi-threaded runtime (load generation, serving).
    pub fn needs_all_cores(&self) -> bool {
        matches!(
            self.command,
            Command::Bench(_) | Command::CeilingServer { .. } | Command::Work(_)
        )
    }
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned text, coloured on a terminal.
    Human,
    /// One JSON object per line.
    Json,
}

/// When human output uses colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a task and print its id (or, with --wait, its result).
    Submit(SubmitArgs),
    /// Show a task's current state without waiting.
    Get {
        /// Task id.
        id: String,
    },
    /// Wait for a task to finish and show it.
    Await {
        /// Task id.
        id: String,
        /// Give up waiting after this long (exit code 4); the task keeps going.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        timeout: Option<Duration>,
    },
    /// Run a task and wait for it; the task is bound to this command (Ctrl-C cancels it).
    Run(RunArgs),
    /// Print a task's changes live (progress included) until it finishes; a broken
    /// connection resumes after the last change shown.
    Watch {
        /// Task id.
        id: String,
    },
    /// Ask a task to stop.
    Cancel {
        /// Task id.
        id: String,
        /// Why, recorded in the task's error.
        #[arg(long)]
        reason: Option<String>,
    },
    /// List tasks, newest first.
    Ls(ListArgs),
    /// Forget a finished task.
    Rm {
        /// Task id.
        id: String,
        /// Cancel the task first if it is still running.
        #[arg(long, short = 'f')]
        force: bool,
    },
    /// Run tasks of remote kinds with a command, one process per task: the input on stdin, the
    /// output from stdout (see `vow work --help` for exit codes and signals).
    Work(WorkArgs),
    /// List the kinds the server runs, with their queues and when a worker last polled.
    Kinds,
    /// Print a shell completion script.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Measure the server's throughput and latency under load.
    Bench(BenchArgs),
    /// Serve the bare two-RPC ceiling server that `vow bench --ceiling` compares against.
    #[command(hide = true)]
    CeilingServer {
        /// Address to listen on; port 0 picks a free one, printed on stdout.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        /// Exit when standard input closes (the bench that started it is gone).
        #[arg(long)]
        exit_on_stdin_close: bool,
    },
}

/// What a task is and how it runs; shared by `submit` and `run`.
#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Handler that runs the task (for example `echo`).
    pub kind: String,
    /// Input: JSON text, `@FILE` to read a file, or `-` to read standard input.
    pub input: Option<String>,
    /// A label `KEY=VALUE`; repeat for more.
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = input::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Retries after a failed attempt (so N+1 attempts in all); the server default otherwise.
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Bound of the whole task: past it, the task fails with DEADLINE_EXCEEDED.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Bound of one attempt.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub attempt_timeout: Option<Duration>,
    /// Higher runs first among due tasks (-1000 to 1000).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Deduplicates submits: the same key and request give the same task.
    #[arg(long, value_name = "KEY")]
    pub idempotency_key: Option<String>,
}

/// `vow submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    #[command(flatten)]
    pub task: TaskArgs,
    /// Wait for the task to finish and show its result.
    #[arg(long, short = 'w')]
    pub wait: bool,
}

/// `vow run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub task: TaskArgs,
}

/// `vow ls`.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only tasks in this state; repeat for more.
    #[arg(long = "state", value_enum)]
    pub states: Vec<StateFilter>,
    /// Only tasks of this kind; repeat for more.
    #[arg(long = "kind")]
    pub kinds: Vec<String>,
    /// Only tasks carrying this label `KEY=VALUE`; repeat to require more.
    #[arg(long = "label", short = 'l', value_name = "KEY=VALUE", value_parser = input::parse_label)]
    pub labels: Vec<(String, String)>,
    /// Show at most this many tasks.
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
}

const WORK_HELP: &str = "\
The task's input goes to the command's stdin (JSON as text, bytes as they are); its stdout becomes
the output (JSON when it parses, bytes otherwise). The command gets VOW_TASK_ID, VOW_TASK_KIND,
VOW_TASK_ATTEMPT, VOW_TASK_DEADLINE and TRACEPARENT. On cancel or at the attempt deadline it gets
SIGTERM, then SIGKILL after --kill-grace.

Exit status to error code:
  0          the task succeeds with the output
  64, 65     INVALID_ARGUMENT (not retried)
  75         UNAVAILABLE (retried)
  124        DEADLINE_EXCEEDED (retried)
  any other  INTERNAL (retried), also when killed by a signal
The last 4 KiB of stderr are the error's message.";

/// `vow work`.
#[derive(Debug, Args)]
#[command(after_long_help = WORK_HELP)]
pub struct WorkArgs {
    /// Remote kind to run; repeat for more (comma-separated works too).
    #[arg(required = true, value_delimiter = ',')]
    pub kinds: Vec<String>,
    /// The command and its arguments, after `--`.
    #[arg(last = true, required = true)]
    pub command: Vec<String>,
    /// Commands run at once.
    #[arg(long, short = 'c', default_value_t = 4)]
    pub concurrency: usize,
    /// Names this worker in tasks (`worker_id`); default `<hostname>-<pid>`.
    #[arg(long)]
    pub worker_id: Option<String>,
    /// The lease to ask for (the server's default otherwise); renewed at a third of it.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lease_duration: Option<Duration>,
    /// How long a command has between SIGTERM and SIGKILL.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub kill_grace: Duration,
    /// On SIGTERM, how long running commands may finish before they are stopped and their tasks handed back.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
}

/// Task states as typed on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StateFilter {
    Queued,
    Running,
    RetryWait,
    Succeeded,
    Failed,
    Cancelled,
}

impl StateFilter {
    /// The wire state it stands for.
    pub fn task_state(self) -> vow_client::TaskState {
        use vow_client::TaskState;
        match self {
            Self::Queued => TaskState::Queued,
            Self::Running => TaskState::Running,
            Self::RetryWait => TaskState::RetryWait,
            Self::Succeeded => TaskState::Succeeded,
            Self::Failed => TaskState::Failed,
            Self::Cancelled => TaskState::Cancelled,
        }
    }
}

/// Durations as people type them: `500ms`, `8s`, `2m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|error| format!("{error} (try 500ms, 8s, 2m)"))
}

/// Runs the parsed command and returns its exit status.
/// Runs a command inside a root span of its own: every call it makes carries
/// that span's context, so the server's spans (and the task's attempts) are
/// one trace per command.
pub async fn run(cli: Cli) -> ExitStatus {
    use opentelemetry::{
        context::FutureExt as _,
        trace::{TraceContextExt as _, Tracer as _, TracerProvider as _},
    };
    // No exporter: the CLI's span exists to give the command one trace id.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let root = provider
        .tracer("vow")
        .start(format!("vow {}", cli.command.name()));
    let context = opentelemetry::Context::current_with_span(root);
    if cli.verbose {
        eprintln!("trace {}", context.span().span_context().trace_id());
    }
    let status = run_command(cli).with_context(context.clone()).await;
    context.span().end();
    status
}

async fn run_command(cli: Cli) -> ExitStatus {
    let output = render::Output::new(cli.output, cli.color);
    let connection = commands::Connection {
        server: cli.server,
        connect_timeout: cli.connect_timeout,
        tls: cli.tls,
        token: cli.token,
    };
    let result = match cli.command {
        Command::Submit(args) => commands::submit(&connection, &output, args).await,
        Command::Get { id } => commands::get(&connection, &output, &id).await,
        Command::Await { id, timeout } => {
            commands::await_task(&connection, &output, &id, timeout).await
        }
        Command::Run(args) => commands::run(&connection, &output, args).await,
        Command::Watch { id } => commands::watch(&connection, &output, &id).await,
        Command::Cancel { id, reason } => {
            commands::cancel(&connection, &output, &id, reason.as_deref()).await
        }
        Command::Ls(args) => commands::list(&connection, &output, args).await,
        Command::Rm { id, force } => commands::remove(&connection, &output, &id, force).await,
        Command::Work(args) => work::work(&connection, args).await,
        Command::Kinds => commands::kinds(&connection, &output).await,
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "vow",
                &mut std::io::stdout(),
            );
            Ok(ExitStatus::Succeeded)
        }
        Command::Bench(args) => crate::bench::run(&connection, cli.output, args).await,
        Command::CeilingServer {
            listen,
            exit_on_stdin_close,
        } => crate::bench::ceiling::serve_forever(listen, exit_on_stdin_close)
            .await
            .map(|()| ExitStatus::Succeeded)
            .map_err(|error| commands::Failure::Other(format!("{error:#}"))),
    };
    match result {
        Ok(status) => status,
        Err(failure) => output.failure(&failure),
    }
}
