//! One function per subcommand: build the request from the arguments, call
//! the server through `vow_client`, hand the result to the renderer, and
//! say which exit status it means.

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use tokio::time::Instant;
use vow_client::{Awaited, Client, Error, ListFilter, SubmitBuilder};

use super::{
    ExitStatus, ListArgs, RunArgs, SubmitArgs, TaskArgs, input, render::Output, tls::TlsArgs,
};

/// Longest single Await; a longer wait is a loop of these, so a server's own
/// cap on one Await (`--max-await`) never ends the command early.
const AWAIT_SLICE: Duration = Duration::from_secs(60);

/// The call deadline of `vow run` without `--timeout`; it is also the task's deadline.
const RUN_DEFAULT_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Why a command did not complete.
#[derive(Debug)]
pub enum Failure {
    /// The client library or the server reported an error.
    Client(Error),
    /// The command line or the input was unusable (exit code 2).
    Usage(String),
    /// Anything else (exit code 1).
    Other(String),
}

impl From<Error> for Failure {
    fn from(error: Error) -> Self {
        Self::Client(error)
    }
}

impl Failure {
    /// The exit status this failure means.
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            Self::Client(error) => ExitStatus::of_error(error),
            Self::Usage(_) => ExitStatus::Usage,
            Self::Other(_) => ExitStatus::Failed,
        }
    }
}

/// Where the server is, how long to try reaching it, and over what TLS.
pub struct Connection {
    pub server: String,
    pub connect_timeout: Duration,
    pub tls: TlsArgs,
    /// Sent as `authorization: Bearer …` with every call.
    pub token: Option<String>,
}

impl Connection {
    pub fn with_credentials(&self, client: Client) -> Result<Client, Failure> {
        match &self.token {
            Some(token) => client.with_token(token).map_err(Failure::from),
            None => Ok(client),
        }
    }

    /// What raw stubs over this connection's channels send with every
    /// call: the token, and no trace context.
    pub fn injector(&self) -> Result<vow_client::TraceInjector, Failure> {
        let injector = vow_client::TraceInjector::new(false);
        match &self.token {
            Some(token) => injector.with_bearer_token(token).ok_or_else(|| {
                Failure::Usage("--token must be visible ASCII without spaces".into())
            }),
            None => Ok(injector),
        }
    }

    /// Connects, retrying refused connections with backoff until the connect
    /// timeout, so a server that is still starting is waited for. A refused
    /// TLS handshake is not retried: only other settings can change it.
    pub async fn client(&self) -> Result<Client, Failure> {
        let options = self.tls.connect_options()?;
        let deadline = Instant::now() + self.connect_timeout;
        let mut backoff = Duration::from_millis(20);
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let connect = Client::connect_with(&self.server, &options);
            let error = match tokio::time::timeout(remaining, connect).await {
                Ok(Ok(client)) => return self.with_credentials(client),
                Ok(Err(error @ Error::Unreachable { .. })) => error,
                Ok(Err(other)) => return Err(other.into()),
                Err(_elapsed) => Error::Unreachable {
                    endpoint: self.server.clone(),
                    reason: format!("no connection within {:?}", self.connect_timeout),
                },
            };
            if Instant::now() + backoff >= deadline {
                return Err(error.into());
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}

/// `vow submit`.
pub async fn submit(
    connection: &Connection,
    output: &Output,
    args: SubmitArgs,
) -> Result<ExitStatus, Failure> {
    let input = input::read_input(args.task.input.as_deref()).map_err(Failure::Usage)?;
    let client = connection.client().await?;
    let mut builder = task_builder(&client, &args.task, input);
    if let Some(timeout) = args.task.timeout {
        builder = builder.ttl(timeout);
    }
    let submitted = builder.send().await?;
    if !args.wait {
        output.submitted(&submitted);
        return Ok(ExitStatus::Succeeded);
    }
    let awaited = wait_for(&client, &submitted.task.id, None).await?;
    output.task(&awaited.task);
    Ok(ExitStatus::of_waited_task(&awaited.task, awaited.done))
}

/// `vow run`: the task's deadline is the call's, so `--timeout` bounds both.
pub async fn run(
    connection: &Connection,
    output: &Output,
    args: RunArgs,
) -> Result<ExitStatus, Failure> {
    let input = input::read_input(args.task.input.as_deref()).map_err(Failure::Usage)?;
    let client = connection.client().await?;
    let builder = task_builder(&client, &args.task, input);
    let task = builder
        .run(args.task.timeout.unwrap_or(RUN_DEFAULT_TIMEOUT))
        .await?;
    output.task(&task);
    let done = vow_client::TaskExt::is_terminal(&task);
    Ok(ExitStatus::of_waited_task(&task, done))
}

/// `vow get`.
pub async fn get(
    connection: &Connection,
    output: &Output,
    id: &str,
) -> Result<ExitStatus, Failure> {
    let task = connection.client().await?.get(id).await?;
    output.task(&task);
    Ok(ExitStatus::Succeeded)
}

/// `vow await`.
pub async fn await_task(
    connection: &Connection,
    output: &Output,
    id: &str,
    timeout: Option<Duration>,
) -> Result<ExitStatus, Failure> {
    let client = connection.client().await?;
    let awaited = wait_for(&client, id, timeout).await?;
    output.task(&awaited.task);
    Ok(ExitStatus::of_waited_task(&awaited.task, awaited.done))
}

/// `vow watch`: one line per change until the task finishes; exits like `vow await`.
pub async fn watch(
    connection: &Connection,
    output: &Output,
    id: &str,
) -> Result<ExitStatus, Failure> {
    let client = connection.client().await?;
    let mut events = std::pin::pin!(client.watch(id));
    let mut last = None;
    while let Some(event) = events.next().await {
        let event = event?;
        output.watch_event(&event);
        if let Some(task) = event.task {
            last = Some(task);
        }
    }
    // The stream ends after the terminal change (or at the server's deadline).
    Ok(last.map_or(ExitStatus::TimedOut, |task| {
        let done = vow_client::TaskExt::is_terminal(&task);
        ExitStatus::of_waited_task(&task, done)
    }))
}

/// `vow cancel`.
pub async fn cancel(
    connection: &Connection,
    output: &Output,
    id: &str,
    reason: Option<&str>,
) -> Result<ExitStatus, Failure> {
    let client = connection.client().await?;
    let task = client
        .cancel(id, reason.unwrap_or("cancelled with the vow CLI"))
        .await?;
    output.task(&task);
    Ok(ExitStatus::Succeeded)
}

/// `vow ls`.
pub async fn list(
    connection: &Connection,
    output: &Output,
    args: ListArgs,
) -> Result<ExitStatus, Failure> {
    let client = connection.client().await?;
    let filter = ListFilter {
        states: args.states.iter().map(|state| state.task_state()).collect(),
        kinds: args.kinds,
        labels: args.labels,
        // One page when the limit allows it; the server caps a page at 1000.
        page_size: args.limit.clamp(1, 1000) as i32,
    };
    let tasks: Vec<_> = client.list(filter).take(args.limit).try_collect().await?;
    output.tasks(&tasks);
    Ok(ExitStatus::Succeeded)
}

/// `vow rm`.
pub async fn remove(
    connection: &Connection,
    output: &Output,
    id: &str,
    force: bool,
) -> Result<ExitStatus, Failure> {
    connection.client().await?.delete(id, force).await?;
    output.deleted(id);
    Ok(ExitStatus::Succeeded)
}

/// `vow kinds`.
pub async fn kinds(connection: &Connection, output: &Output) -> Result<ExitStatus, Failure> {
    let kinds = connection.client().await?.list_kinds().await?;
    output.kinds(&kinds);
    Ok(ExitStatus::Succeeded)
}

/// Waits for a task, in slices, until it is done or `timeout` has passed
/// (forever without one).
async fn wait_for(client: &Client, id: &str, timeout: Option<Duration>) -> Result<Awaited, Error> {
    let deadline = timeout.map(|timeout| Instant::now() + timeout);
    loop {
        let slice = match deadline {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .min(AWAIT_SLICE),
            None => AWAIT_SLICE,
        };
        let awaited = client.await_task(id, slice).await?;
        let out_of_time = deadline.is_some_and(|deadline| Instant::now() >= deadline);
        if awaited.done || out_of_time {
            return Ok(awaited);
        }
    }
}

/// The options shared by `submit` and `run`, as a builder.
fn task_builder(
    client: &Client,
    args: &TaskArgs,
    input: Option<serde_json::Value>,
) -> SubmitBuilder {
    let mut builder = client.submit(&args.kind);
    if let Some(input) = input {
        builder = builder.input_json(input);
    }
    for (key, value) in &args.labels {
        builder = builder.label(key, value);
    }
    if let Some(retries) = args.retries {
        builder = builder.max_attempts(retries.saturating_add(1));
    }
    if let Some(timeout) = args.attempt_timeout {
        builder = builder.attempt_timeout(timeout);
    }
    if let Some(priority) = args.priority {
        builder = builder.priority(priority);
    }
    if let Some(key) = &args.idempotency_key {
        builder = builder.idempotency_key(key);
    }
    builder
}
