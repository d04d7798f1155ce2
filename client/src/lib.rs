//! Typed Rust client of the Vow task service.
//!
//! ```no_run
//! # async fn demo() -> Result<(), vow_client::Error> {
//! use std::time::Duration;
//! let client = vow_client::Client::connect("127.0.0.1:50051").await?;
//! let submitted = client
//!     .submit("echo")
//!     .input_json(serde_json::json!({"hello": "world"}))
//!     .send()
//!     .await?;
//! let awaited = client.await_task(&submitted.task.id, Duration::from_secs(10)).await?;
//! assert!(awaited.done);
//! println!("{:?}", vow_client::TaskExt::output_json(&awaited.task));
//! # Ok(()) }
//! ```
//!
//! Every call carries the caller's OpenTelemetry context (W3C `traceparent`,
//! `tracestate`, `baggage`), so the server's spans and each attempt of a
//! submitted task join the caller's trace; see [`TraceInjector`].
//!
//! Calls are retried with exponential backoff and jitter, within their
//! deadline. Calls that are safe to repeat (Get, Await, AwaitMany, Watch, which
//! resumes after the last revision it delivered, Submit, Cancel, Delete, List)
//! are retried on `UNAVAILABLE` and on what proxies make of a stream a
//! replica reset as it went away (`CANCELLED`, `INTERNAL`, `UNKNOWN`), so a
//! rolling restart behind haproxy or nginx fails no call. Submits are safe to
//! repeat because the client fills in an idempotency key when the caller
//! gives none. Run is retried on `UNAVAILABLE` only (AIP-194).
//!
//! TLS (rustls; no system OpenSSL) is on for `https://` URLs; a private CA,
//! the name to verify and a client identity for mutual TLS are
//! [`ConnectOptions`], used by [`Client::connect_with`].

mod balance;
pub mod ceiling;
mod connect;
mod error;
mod propagation;
mod submit;
mod watch;
pub mod worker;

use std::time::Duration;

use futures::Stream;
use tonic::{service::interceptor::InterceptedService, transport::Channel};
pub use vow_proto::v1 as proto;
use vow_proto::v1::task_service_client::TaskServiceClient;

pub use connect::ConnectOptions;
pub use error::{Error, RpcError};
pub use propagation::TraceInjector;
pub use proto::{Task, TaskState};
pub use submit::{SubmitBuilder, Submitted};
pub use watch::{AwaitManySummary, AwaitMode, AwaitedMany, WatchEvent, WatchEventType};
pub use worker::Worker;

/// Extra time given to the transport beyond a server-side wait, so the
/// server's own answer (`done = false`) arrives before the call deadline.
const WAIT_SLACK: Duration = Duration::from_secs(5);

/// How failed calls are retried.
#[derive(Clone, Debug)]
pub struct RetryConfig {
    /// Attempts in all (1 disables retries).
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            // Enough to ride through a replica's restart behind a proxy:
            // up to about 7 s of backoff in all.
            max_attempts: 8,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// The stub every call goes through: the channel behind the trace-context
/// interceptor.
pub(crate) type Tasks = TaskServiceClient<InterceptedService<Channel, TraceInjector>>;

/// A connection to a Vow server. Cheap to clone; clones share the channel.
#[derive(Clone)]
pub struct Client {
    tasks: Tasks,
    /// The bare channel, to rebuild `tasks` with another interceptor.
    channel: Channel,
    /// What every call is given: trace context, credentials.
    injector: TraceInjector,
    retry: RetryConfig,
    call_timeout: Option<Duration>,
}

/// The result of a bounded wait.
#[derive(Clone, Debug)]
pub struct Awaited {
    pub task: Task,
    /// The task is terminal.
    pub done: bool,
}

/// Filters of a listing; empty filters match everything.
#[derive(Clone, Debug, Default)]
pub struct ListFilter {
    pub states: Vec<TaskState>,
    pub kinds: Vec<String>,
    pub labels: Vec<(String, String)>,
    /// Tasks per page (server default when 0).
    pub page_size: i32,
}

/// Turns `host:port` into `http://host:port`; keeps URLs as they are.
pub fn endpoint_url(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.to_owned()
    } else {
        format!("http://{endpoint}")
    }
}

impl Client {
    /// Connects to `endpoint` (`host:port` or an `http://`/`https://` URL),
    /// or balances over several servers: `a:50051,b:50051`, or
    /// `dns:///name:50051` for every address of a name (a headless Service).
    /// Fails with [`Error::Unreachable`] if no connection can be made now.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), vow_client::Error> {
    /// let client = vow_client::Client::connect("127.0.0.1:50051").await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(endpoint: &str) -> Result<Self, Error> {
        Self::connect_with(endpoint, &ConnectOptions::default()).await
    }

    /// Connects to `endpoint` as `options` say (TLS, certificates, connect
    /// timeout). Fails with [`Error::InvalidEndpoint`] for unusable settings
    /// (a PEM file without a certificate, say), [`Error::TlsRejected`] when
    /// the handshake is refused, [`Error::Unreachable`] otherwise.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// use vow_client::{Client, ConnectOptions};
    /// let options = ConnectOptions::new()
    ///     .ca_certificate_pem(std::fs::read("ca.pem")?)
    ///     .identity_pem(std::fs::read("client.pem")?, std::fs::read("client.key")?);
    /// let client = Client::connect_with("vow.internal:50051", &options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_with(endpoint: &str, options: &ConnectOptions) -> Result<Self, Error> {
        Ok(Self::from_channel(options.channel(endpoint).await?))
    }

    /// Prepares a client that connects on first use, so calls made while the
    /// server is still starting are retried instead of failing at once.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), vow_client::Error> {
    /// // No connection yet: the first call connects, retrying while the server starts.
    /// let client = vow_client::Client::connect_lazy("http://127.0.0.1:50051")?;
    /// let task = client.get("0123456789abcdef0123456789abcdef").await?;
    /// # Ok(()) }
    /// ```
    pub fn connect_lazy(endpoint: &str) -> Result<Self, Error> {
        Self::connect_lazy_with(endpoint, &ConnectOptions::default())
    }

    /// Like [`connect_lazy`](Self::connect_lazy), with `options`; settings
    /// are checked now, the handshake happens on first use.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = vow_client::ConnectOptions::new().ca_certificate_pem(std::fs::read("ca.pem")?);
    /// let client = vow_client::Client::connect_lazy_with("vow.internal:50051", &options)?;
    /// # Ok(()) }
    /// ```
    pub fn connect_lazy_with(endpoint: &str, options: &ConnectOptions) -> Result<Self, Error> {
        Ok(Self::from_channel(
            options.endpoint(endpoint)?.connect_lazy(),
        ))
    }

    /// Like [`connect_lazy_with`](Self::connect_lazy_with), for any target
    /// [`ConnectOptions::channel`] takes, several servers included.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), vow_client::Error> {
    /// let options = vow_client::ConnectOptions::new();
    /// let client = vow_client::Client::connect_lazy_to("dns:///vow-headless.vow.svc:50051", &options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_lazy_to(target: &str, options: &ConnectOptions) -> Result<Self, Error> {
        Ok(Self::from_channel(options.lazy_channel(target).await?))
    }

    /// Wraps an existing channel (custom connectors, in-memory tests; for
    /// TLS see [`connect_with`](Self::connect_with)).
    pub fn from_channel(channel: Channel) -> Self {
        Self {
            tasks: TaskServiceClient::with_interceptor(channel.clone(), TraceInjector::default()),
            channel,
            injector: TraceInjector::default(),
            retry: RetryConfig::default(),
            call_timeout: Some(Duration::from_secs(30)),
        }
    }

    /// Replaces the retry policy of failed calls.
    ///
    /// ```no_run
    /// # async fn demo(client: vow_client::Client) -> Result<(), vow_client::Error> {
    /// use std::time::Duration;
    /// let client = client.with_retry(vow_client::RetryConfig {
    ///     max_attempts: 10,
    ///     initial_backoff: Duration::from_millis(50),
    ///     max_backoff: Duration::from_secs(1),
    /// });
    /// # Ok(()) }
    /// ```
    pub fn with_retry(mut self, retry: RetryConfig) -> Self {
        self.retry = retry;
        self
    }

    /// Turns the injection of the current trace context into every call on
    /// (the default) or off, e.g. to keep baggage from a server outside
    /// one's trust boundary.
    ///
    /// ```no_run
    /// # async fn demo(client: vow_client::Client) -> Result<(), vow_client::Error> {
    /// let client = client.with_trace_propagation(false);
    /// # Ok(()) }
    /// ```
    pub fn with_trace_propagation(mut self, enabled: bool) -> Self {
        let injector = self.injector.clone().with_trace(enabled);
        self.set_injector(injector);
        self
    }

    /// Sends `authorization: Bearer <token>` (an API key or a JWT) with
    /// every call, streams included. Fails with [`Error::InvalidEndpoint`]
    /// for a token that cannot be a header value.
    ///
    /// ```no_run
    /// # async fn demo(client: vow_client::Client) -> Result<(), vow_client::Error> {
    /// let client = client.with_token(&std::env::var("VOW_TOKEN").unwrap_or_default())?;
    /// # Ok(()) }
    /// ```
    pub fn with_token(mut self, token: &str) -> Result<Self, Error> {
        let injector = self
            .injector
            .clone()
            .with_bearer_token(token)
            .ok_or_else(|| Error::InvalidEndpoint {
                endpoint: "token".into(),
                reason: "a token must be visible ASCII without spaces".into(),
            })?;
        self.set_injector(injector);
        Ok(self)
    }

    fn set_injector(&mut self, injector: TraceInjector) {
        // A fresh stub over the same channel: clones share the connection.
        self.tasks = TaskServiceClient::with_interceptor(self.channel.clone(), injector.clone());
        self.injector = injector;
    }

    /// What every call of this client is given, for other stubs over its channel.
    pub(crate) fn injector(&self) -> &TraceInjector {
        &self.injector
    }

    /// Sets the deadline of calls that do not wait for a task (default 30 s).
    pub fn with_call_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Starts building a submit of a task of `kind`.
    pub fn submit(&self, kind: &str) -> SubmitBuilder {
        SubmitBuilder::new(self.clone(), kind)
    }

    /// The current snapshot of a task; never blocks.
    ///
    /// ```no_run
    /// # async fn demo(client: vow_client::Client) -> Result<(), vow_client::Error> {
    /// let task = client.get("0123456789abcdef0123456789abcdef").await?;
    /// println!("{:?} after {} attempt(s)", task.state(), task.attempt);
    /// # Ok(()) }
    /// ```
    pub async fn get(&self, id: &str) -> Result<Task, Error> {
        let request = proto::GetRequest { id: id.to_owned() };
        let response = self
            .call(
                self.call_timeout,
                Repeat::Safe,
                |mut tasks, request| async move { tasks.get(request).await },
                request,
            )
            .await?;
        Ok(response.task.unwrap_or_default())
    }

    /// Waits up to `timeout` for a task to finish; `done = false` when it has not.
    ///
    /// ```no_run
    /// # async fn demo(client: vow_client::Client) -> Result<(), vow_client::Error> {
    /// use std::time::Duration;
    /// use vow_client::TaskExt;
    /// let awaited = client.await_task("0123456789abcdef0123456789abcdef", Duration::from_secs(30)).await?;
    /// if awaited.done {
    ///     println!("output: {:?}", awaited.task.output_json());
    /// } else {
    ///     println!("still {:?}", awaited.task.state());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn await_task(&self, id: &str, timeout: Duration) -> Result<Awaited, Error> {
        let request = proto::AwaitRequest {
            id: id.to_owned(),
            timeout: Some(duration_to_proto(timeout)),
        };
        let response = self
            .call_shrinking(
                Some(timeout + WAIT_SLACK),
                Repeat::Safe,
                |mut tasks, request| async move { tasks.r#await(request).await },
                request,
                |request, left| {
                    request.timeout = Some(duration_to_proto(left.saturating_sub(WAIT_SLACK)))
                },
            )
            .await?;
        Ok(Awaited {
            task: response.task.unwrap_or_default(),
            done: response.done,
        })
    }

    /// Asks a task to stop; idempotent.
    ///
    /// ```no_run
    /// # async fn demo(client: vow_client::Client) -> Result<(), vow_client::Error> {
    /// let task = client.cancel("0123456789abcdef0123456789abcdef", "no longer needed").await?;
    /// // CANCELLED, or RUNNING with cancel_requested until the handler stops.
    /// println!("{:?} cancel_requested={}", task.state(), task.cancel_requested);
    /// # Ok(()) }
    /// ```
    pub async fn cancel(&self, id: &str, reason: &str) -> Result<Task, Error> {
        let request = proto::CancelRequest {
            id: id.to_owned(),
            reason: reason.to_owned(),
        };
        let response = self
            .call(
                self.call_timeout,
                Repeat::Safe,
                |mut tasks, request| async move { tasks.cancel(request).await },
                request,
            )
            .await?;
        Ok(response.task.unwrap_or_default())
    }

    /// Forgets a finished task (or stops and forgets a running one).
    ///
    /// ```no_run
    /// # async fn demo(client: vow_client::Client) -> Result<(), vow_client::Error> {
    /// // `true` cancels the task first if it has not finished yet.
    /// client.delete("0123456789abcdef0123456789abcdef", true).await?;
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, id: &str, cancel_if_running: bool) -> Result<(), Error> {
        let request = proto::DeleteRequest {
            id: id.to_owned(),
            cancel_if_running,
        };
        self.call(
            self.call_timeout,
            Repeat::Safe,
            |mut tasks, request| async move { tasks.delete(request).await },
            request,
        )
        .await?;
        Ok(())
    }

    /// The kinds the server runs (built in and remote), with their queues
    /// and when a worker last polled for them.
    pub async fn list_kinds(&self) -> Result<Vec<proto::KindInfo>, Error> {
        let response = self
            .call(
                self.call_timeout,
                Repeat::Safe,
                |mut tasks, request| async move { tasks.list_kinds(request).await },
                proto::ListKindsRequest {},
            )
            .await?;
        Ok(response.kinds)
    }

    /// One page of a listing, newest first, and the token of the next.
    pub async fn list_page(
        &self,
        filter: &ListFilter,
        page_token: String,
    ) -> Result<(Vec<Task>, String), Error> {
        let request = proto::ListRequest {
            page_size: filter.page_size,
            page_token,
            states: filter.states.iter().map(|state| *state as i32).collect(),
            kinds: filter.kinds.clone(),
            labels: filter.labels.iter().cloned().collect(),
        };
        let response = self
            .call(
                self.call_timeout,
                Repeat::Safe,
                |mut tasks, request| async move { tasks.list(request).await },
                request,
            )
            .await?;
        Ok((response.tasks, response.next_page_token))
    }

    /// Every task that matches, newest first, fetching pages as the stream is read.
    ///
    /// ```no_run
    /// # async fn demo(client: vow_client::Client) -> Result<(), vow_client::Error> {
    /// use futures::TryStreamExt;
    /// let filter = vow_client::ListFilter {
    ///     states: vec![vow_client::TaskState::Failed],
    ///     labels: vec![("team".into(), "search".into())],
    ///     ..Default::default()
    /// };
    /// let failed: Vec<_> = client.list(filter).try_collect().await?;
    /// # Ok(()) }
    /// ```
    pub fn list(&self, filter: ListFilter) -> impl Stream<Item = Result<Task, Error>> + use<> {
        use futures::TryStreamExt;
        let client = self.clone();
        futures::stream::try_unfold(Some(String::new()), move |page_token| {
            let client = client.clone();
            let filter = filter.clone();
            async move {
                let Some(page_token) = page_token else {
                    return Ok::<_, Error>(None);
                };
                let (tasks, next) = client.list_page(&filter, page_token).await?;
                let next = (!next.is_empty()).then_some(next);
                Ok(Some((tasks, next)))
            }
        })
        .map_ok(|tasks| futures::stream::iter(tasks.into_iter().map(Ok)))
        .try_flatten()
    }

    /// Sends one unary call with a deadline, retrying with exponential
    /// backoff and full jitter as `repeat` allows, within the deadline.
    pub(crate) async fn call<Req, Resp, F, Fut>(
        &self,
        deadline: Option<Duration>,
        repeat: Repeat,
        send: F,
        request: Req,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(Tasks, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        self.call_shrinking(deadline, repeat, send, request, |_, _| {})
            .await
    }

    /// Like [`call`](Self::call), for a request that carries its own wait:
    /// `shrink` fits it to the time left before each retry, so that retries
    /// never wait past the first call's deadline.
    pub(crate) async fn call_shrinking<Req, Resp, F, Fut>(
        &self,
        deadline: Option<Duration>,
        repeat: Repeat,
        send: F,
        mut request: Req,
        shrink: impl Fn(&mut Req, Duration),
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        F: Fn(Tasks, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    {
        let give_up_at = deadline.map(|deadline| tokio::time::Instant::now() + deadline);
        let mut backoff = self.retry.initial_backoff;
        let mut attempt = 1;
        loop {
            let left =
                give_up_at.map(|at| at.saturating_duration_since(tokio::time::Instant::now()));
            let mut call = tonic::Request::new(request.clone());
            if let Some(left) = left {
                call.set_timeout(left);
            }
            let result = match left {
                Some(left) => tokio::time::timeout(left, send(self.tasks.clone(), call))
                    .await
                    .unwrap_or_else(|_| {
                        Err(tonic::Status::deadline_exceeded("the call deadline passed"))
                    }),
                None => send(self.tasks.clone(), call).await,
            };
            let status = match result {
                Ok(response) => return Ok(response.into_inner()),
                Err(status) => status,
            };
            let error = Error::from(unavailable_if_connection_lost(status));
            let may_repeat = match repeat {
                Repeat::Safe => error.is_transient(),
                Repeat::IfUnserved => error.is_retryable(),
            };
            if !may_repeat || attempt >= self.retry.max_attempts {
                return Err(error);
            }
            let wait = error
                .retry_after()
                .unwrap_or_else(|| backoff.mul_f64(rand::random::<f64>()));
            let retry_at = tokio::time::Instant::now() + wait;
            if let Some(give_up_at) = give_up_at {
                if retry_at >= give_up_at {
                    return Err(error);
                }
                shrink(&mut request, give_up_at - retry_at);
            }
            tokio::time::sleep_until(retry_at).await;
            backoff = (backoff * 2).min(self.retry.max_backoff);
            attempt += 1;
        }
    }
}

/// Which failures a call may be sent again after.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// Any transient failure ([`Error::is_transient`]): the call changes
    /// nothing when repeated.
    Safe,
    /// Only UNAVAILABLE (AIP-194), which says the call was not served; for
    /// Run, whose repetition after a served call is not the same call.
    IfUnserved,
}

/// tonic reports a connection that broke under a call as UNKNOWN "transport
/// error" (hyperium/tonic#628) where gRPC says UNAVAILABLE. Such a call may or
/// may not have reached the server: exactly the lost reply that retrying with
/// the same idempotency key makes safe, so it is retried like UNAVAILABLE.
fn unavailable_if_connection_lost(status: tonic::Status) -> tonic::Status {
    use std::error::Error as _;
    let transport_failure = status
        .source()
        .filter(|source| source.is::<tonic::transport::Error>());
    match transport_failure {
        // The transport error's own chain: Status's Display would add its
        // Debug form ("code: 'Unknown error', … source: …") to the message.
        Some(source) if status.code() == tonic::Code::Unknown => {
            tonic::Status::unavailable(format!("connection lost: {}", source_chain(source)))
        }
        _ => status,
    }
}

/// Conveniences on the wire `Task`.
pub trait TaskExt {
    /// The output as JSON, if the task succeeded with a JSON output.
    fn output_json(&self) -> Option<serde_json::Value>;
    /// True once the task is SUCCEEDED, FAILED or CANCELLED.
    fn is_terminal(&self) -> bool;
    /// The `ErrorInfo.reason` of the task's error.
    fn error_reason(&self) -> Option<String>;
}

impl TaskExt for Task {
    fn output_json(&self) -> Option<serde_json::Value> {
        match self.output.as_ref()?.data.as_ref()? {
            proto::payload::Data::Json(value) => Some(value_to_json(value)),
            proto::payload::Data::Binary(_) => None,
        }
    }

    fn is_terminal(&self) -> bool {
        matches!(
            self.state(),
            TaskState::Succeeded | TaskState::Failed | TaskState::Cancelled
        )
    }

    fn error_reason(&self) -> Option<String> {
        use prost::Message;
        let error = self.error.as_ref()?;
        error
            .details
            .iter()
            .find(|any| any.type_url.ends_with("google.rpc.ErrorInfo"))
            .and_then(|any| tonic_types::pb::ErrorInfo::decode(any.value.as_slice()).ok())
            .map(|info| info.reason)
    }
}

/// `google.protobuf.Value` as JSON; integral numbers become integers. The
/// server never sends a non-finite number (JSON cannot hold one).
pub fn value_to_json(value: &prost_types::Value) -> serde_json::Value {
    vow_proto::json::from_value(value).unwrap_or_default()
}

/// JSON as a `google.protobuf.Value`.
pub use vow_proto::json::to_value as json_to_value;

pub(crate) fn duration_to_proto(duration: Duration) -> prost_types::Duration {
    duration.try_into().unwrap_or(prost_types::Duration {
        seconds: i64::MAX,
        nanos: 0,
    })
}

/// An error and its causes, `: `-separated; a cause that only repeats the
/// link before it (an `io::Error` shows its inner error) is left out.
pub(crate) fn source_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut previous = text.clone();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if cause_text != previous {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        previous = cause_text;
        source = cause.source();
    }
    text
}
