//! Trace context, metrics and logs of a real `vowd`, seen from outside: spans
//! arrive at a real OTLP receiver in this process (a tonic `TraceService`),
//! submitted by a Python client and by the Rust client with known trace
//! contexts; `/metrics` is scraped after a known workload; JSON log lines
//! are read from the process's stderr.

mod common;
#[path = "common/otlp.rs"]
mod otlp;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, SystemTime},
};

use common::{Vowd, poll_until, vowd_until_exit_with_env};
use opentelemetry::{
    Context,
    context::FutureExt as _,
    trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
    },
};
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind, status::StatusCode};
use otlp::{OtlpReceiver, ReceivedSpan, hex_id, int_attribute, string_attribute};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use vow_client::{
    Client, Task, TaskExt, TaskState,
    proto::{self, task_service_client::TaskServiceClient},
};

/// Spans leave vowd in batches every `OTEL_BSP_SCHEDULE_DELAY` ms; the
/// default (5 s) would make every test wait that long for its first span.
const EXPORT_DELAY_MS: &str = "100";
/// Bound of every wait on spans, metrics or logs: generous for a loaded CI box.
const BOUND: Duration = Duration::from_secs(30);

/// An OTLP receiver and `vowd --store memory` exporting spans to it, with extra flags.
async fn vowd_exporting(extra_args: &[&str]) -> (OtlpReceiver, Vowd) {
    let receiver = OtlpReceiver::start().await;
    let vowd = Vowd::start_with_env(
        extra_args,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", EXPORT_DELAY_MS),
        ],
    );
    (receiver, vowd)
}

/// Waits (bounded) until the received spans satisfy `find`, and returns
/// what it found; on timeout, fails with every span received, for diagnosis.
async fn wait_for_spans<T>(
    receiver: &OtlpReceiver,
    what: &str,
    find: impl Fn(&[ReceivedSpan]) -> Option<T>,
) -> T {
    let started = tokio::time::Instant::now();
    loop {
        let spans = receiver.spans();
        if let Some(found) = find(&spans) {
            return found;
        }
        if started.elapsed() > BOUND {
            let summary: Vec<String> = spans
                .iter()
                .map(|received| {
                    let span = &received.span;
                    format!(
                        "{} trace={} span={} parent={} attributes={:?}",
                        span.name,
                        hex_id(&span.trace_id),
                        hex_id(&span.span_id),
                        hex_id(&span.parent_span_id),
                        span.attributes
                            .iter()
                            .filter(|attribute| !attribute.key.starts_with("code.")
                                && attribute.key != "thread.id"
                                && attribute.key != "thread.name")
                            .map(|attribute| (&attribute.key, &attribute.value))
                            .collect::<Vec<_>>()
                    )
                })
                .collect();
            panic!(
                "timed out after {BOUND:?} waiting for {what}; received:\n{}",
                summary.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn submit_span_of(spans: &[ReceivedSpan], trace_id: &str) -> Option<Span> {
    spans
        .iter()
        .map(|received| &received.span)
        .find(|span| span.name == "vow.v1.TaskService/Submit" && hex_id(&span.trace_id) == trace_id)
        .cloned()
}

/// The `task.attempt` spans of `task_id`, by attempt number.
fn attempt_spans_of(spans: &[ReceivedSpan], task_id: &str) -> BTreeMap<i64, Span> {
    spans
        .iter()
        .map(|received| &received.span)
        .filter(|span| {
            span.name == "task.attempt"
                && string_attribute(&span.attributes, "task.id") == Some(task_id)
        })
        .filter_map(|span| Some((attempt_number(span)?, span.clone())))
        .collect()
}

/// The `task.attempt` attribute. vowd records a `u32` field, which
/// tracing-opentelemetry 0.34 exports as its `Debug` text (it has no `u64`
/// visitor, only `i64`), so a string of digits is accepted as well as an
/// integer until the server records it as an `i64`.
fn attempt_number(span: &Span) -> Option<i64> {
    int_attribute(&span.attributes, "task.attempt").or_else(|| {
        string_attribute(&span.attributes, "task.attempt")?
            .parse()
            .ok()
    })
}

fn status_code(span: &Span) -> StatusCode {
    span.status
        .as_ref()
        .map_or(StatusCode::Unset, |status| status.code())
}

/// Runs examples/python/traced_submit.py with the test venv's Python and
/// returns the JSON object it prints.
async fn traced_python(args: &[&str]) -> serde_json::Value {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/python");
    let run = tokio::process::Command::new(common::python())
        .arg("traced_submit.py")
        .args(args)
        .current_dir(&directory)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("traced_submit.py finishes within a minute")
        .expect("run traced_submit.py");
    assert!(
        output.status.success(),
        "traced_submit.py {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("traced_submit.py prints one JSON object")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_submit_with_traceparent_reaches_every_attempt_and_await_links_to_it() {
    const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    const SPAN_ID: &str = "b7ad6b7169203331";
    const AWAIT_TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const AWAIT_SPAN_ID: &str = "00f067aa0ba902b7";
    let (receiver, vowd) = vowd_exporting(&[]).await;

    let submitted = traced_python(&[
        &vowd.address,
        "--trace-id",
        TRACE_ID,
        "--span-id",
        SPAN_ID,
        "submit",
        "fail",
        r#"{"code": "UNAVAILABLE", "succeed_on_attempt": 3}"#,
        "--max-attempts",
        "3",
        "--backoff-ms",
        "20",
    ])
    .await;
    assert_eq!(
        submitted["traceparent"],
        format!("00-{TRACE_ID}-{SPAN_ID}-01"),
        "the Python client sent the context it was asked to"
    );
    let task_id = submitted["task"]["id"]
        .as_str()
        .expect("a task id")
        .to_owned();
    assert_eq!(submitted["task"]["trace_id"], TRACE_ID, "Task.trace_id");

    // An Await from another trace: its span must link back to the task's.
    let awaited = traced_python(&[
        &vowd.address,
        "--trace-id",
        AWAIT_TRACE_ID,
        "--span-id",
        AWAIT_SPAN_ID,
        "await",
        &task_id,
        "--wait",
        "20",
    ])
    .await;
    assert_eq!(awaited["done"], true, "the task finished: {awaited}");
    assert_eq!(awaited["task"]["state"], "TASK_STATE_SUCCEEDED");
    assert_eq!(awaited["task"]["attempt"], 3);

    let submit = wait_for_spans(&receiver, "the Submit span", |spans| {
        submit_span_of(spans, TRACE_ID)
    })
    .await;
    assert_eq!(
        hex_id(&submit.parent_span_id),
        SPAN_ID,
        "child of the caller"
    );
    assert_eq!(submit.kind(), SpanKind::Server);
    assert_eq!(
        string_attribute(&submit.attributes, "rpc.system"),
        Some("grpc")
    );
    assert_eq!(
        string_attribute(&submit.attributes, "rpc.service"),
        Some("vow.v1.TaskService")
    );
    assert_eq!(
        string_attribute(&submit.attributes, "rpc.method"),
        Some("Submit")
    );
    assert_eq!(
        int_attribute(&submit.attributes, "rpc.grpc.status_code"),
        Some(0)
    );
    assert!(
        receiver
            .spans()
            .iter()
            .all(|received| received.service_name == "vowd"),
        "spans come from the resource named vowd by default"
    );

    let attempts = wait_for_spans(&receiver, "three task.attempt spans", |spans| {
        let attempts = attempt_spans_of(spans, &task_id);
        (attempts.len() == 3).then_some(attempts)
    })
    .await;
    assert_eq!(attempts.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
    for (number, attempt) in &attempts {
        assert_eq!(hex_id(&attempt.trace_id), TRACE_ID, "attempt {number}");
        assert_eq!(
            attempt.parent_span_id, submit.span_id,
            "attempt {number} is a child of the Submit span"
        );
        assert_eq!(
            string_attribute(&attempt.attributes, "task.kind"),
            Some("fail")
        );
        let expected = if *number < 3 {
            StatusCode::Error
        } else {
            StatusCode::Unset
        };
        assert_eq!(status_code(attempt), expected, "status of attempt {number}");
        // vowd's "attempt failed" log event, on the span it was written in.
        let failure_events = attempt
            .events
            .iter()
            .filter(|event| event.name == "attempt failed")
            .count();
        assert_eq!(
            failure_events,
            usize::from(*number < 3),
            "events of attempt {number}: {:?}",
            attempt.events
        );
    }

    assert_waiter_span_links_to(&receiver, "Await", AWAIT_TRACE_ID, AWAIT_SPAN_ID, &submit).await;
}

/// Waits for the span of a `method` call made from (`trace_id`, `span_id`)
/// and checks that it is that caller's child and links to the task's
/// `submit` span.
async fn assert_waiter_span_links_to(
    receiver: &OtlpReceiver,
    method: &str,
    trace_id: &str,
    span_id: &str,
    submit: &Span,
) {
    let name = format!("vow.v1.TaskService/{method}");
    let span = wait_for_spans(receiver, &format!("the {method} span"), |spans| {
        spans
            .iter()
            .map(|received| &received.span)
            .find(|span| span.name == name && hex_id(&span.trace_id) == trace_id)
            .cloned()
    })
    .await;
    assert_eq!(hex_id(&span.parent_span_id), span_id, "child of its caller");
    assert!(
        span.links
            .iter()
            .any(|link| link.trace_id == submit.trace_id && link.span_id == submit.span_id),
        "the {method} span links to the Submit span: {:?}",
        span.links
    );
}

fn known_span_context(trace_id: &str, span_id: &str) -> SpanContext {
    SpanContext::new(
        TraceId::from_hex(trace_id).expect("a valid trace id"),
        SpanId::from_hex(span_id).expect("a valid span id"),
        TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_injects_the_current_context() {
    const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
    const SPAN_ID: &str = "eee19b7ec3c1b174";
    let (receiver, vowd) = vowd_exporting(&[]).await;
    let client = Client::connect(&vowd.address).await.expect("connect");

    // A context made current with the OpenTelemetry API (attached on every poll).
    let caller = Context::new().with_remote_span_context(known_span_context(TRACE_ID, SPAN_ID));
    let submitted = client
        .submit("echo")
        .input_json(serde_json::json!({"traced": true}))
        .send()
        .with_context(caller)
        .await
        .expect("submit");
    assert_eq!(submitted.task.trace_id, TRACE_ID);
    let submit = wait_for_spans(&receiver, "the Submit span", |spans| {
        submit_span_of(spans, TRACE_ID)
    })
    .await;
    assert_eq!(hex_id(&submit.parent_span_id), SPAN_ID);

    // Without a current context the call starts a trace of its own.
    let untraced = client.submit("echo").send().await.expect("submit");
    assert_ne!(untraced.task.trace_id, TRACE_ID);
    assert_eq!(untraced.task.trace_id.len(), 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_client_injects_the_context_of_the_current_tracing_span() {
    let (receiver, vowd) = vowd_exporting(&[]).await;
    let client = Client::connect(&vowd.address).await.expect("connect");

    // How a traced application looks: `tracing` spans backed by an SDK
    // tracer. The subscriber is this thread's only, where the test body runs.
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("telemetry-test")));
    let _subscriber = tracing::subscriber::set_default(subscriber);
    let checkout = tracing::info_span!("checkout");
    let caller = checkout.context().span().span_context().clone();
    assert!(caller.is_valid(), "the SDK gave the span ids");

    let submitted = client
        .submit("echo")
        .send()
        .instrument(checkout)
        .await
        .expect("submit");
    let trace_id = caller.trace_id().to_string();
    assert_eq!(submitted.task.trace_id, trace_id);
    let submit = wait_for_spans(&receiver, "the Submit span", |spans| {
        submit_span_of(spans, &trace_id)
    })
    .await;
    assert_eq!(hex_id(&submit.parent_span_id), caller.span_id().to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_span_links_to_the_task_it_watches() {
    const TRACE_ID: &str = "6e0c63257de34c92bf9efcd03927272e";
    const SPAN_ID: &str = "1b5c5a1d2c3e4f60";
    const WATCH_TRACE_ID: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    const WATCH_SPAN_ID: &str = "0f1e2d3c4b5a6978";
    let (receiver, vowd) = vowd_exporting(&[]).await;
    let client = Client::connect(&vowd.address).await.expect("connect");
    let caller = Context::new().with_remote_span_context(known_span_context(TRACE_ID, SPAN_ID));
    let submitted = client
        .submit("echo")
        .send()
        .with_context(caller)
        .await
        .expect("submit");
    let submit = wait_for_spans(&receiver, "the Submit span", |spans| {
        submit_span_of(spans, TRACE_ID)
    })
    .await;

    // A watcher from another trace, with the raw stub and its own traceparent.
    let mut raw = TaskServiceClient::connect(vowd.url())
        .await
        .expect("connect the raw stub");
    let mut request = tonic::Request::new(proto::WatchRequest {
        id: submitted.task.id.clone(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{WATCH_TRACE_ID}-{WATCH_SPAN_ID}-01")
            .parse()
            .expect("an ASCII header"),
    );
    let mut stream = raw.watch(request).await.expect("watch").into_inner();
    // The echo task ends at once: the stream closes with OK after its end.
    while stream
        .message()
        .await
        .expect("the watch ends cleanly")
        .is_some()
    {}

    assert_waiter_span_links_to(&receiver, "Watch", WATCH_TRACE_ID, WATCH_SPAN_ID, &submit).await;
}

/// The value of `name` whose labels are exactly `labels`, in a Prometheus text body.
fn labelled_value(body: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let wanted: BTreeSet<String> = labels
        .iter()
        .map(|(key, value)| format!("{key}=\"{value}\""))
        .collect();
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            let found: BTreeSet<String> = label_text
                .split(',')
                .filter(|label| !label.is_empty())
                .map(str::to_owned)
                .collect();
            (metric == name && found == wanted)
                .then(|| value.parse().ok())
                .flatten()
        })
}

/// A series (name and labels) and the value it must reach.
type Expected = (&'static str, &'static [(&'static str, &'static str)], f64);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_known_workload() {
    let vowd = Vowd::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics_address = vowd
        .metrics_address
        .clone()
        .expect("vowd announced its metrics address");
    let client = Client::connect(&vowd.address).await.expect("connect");

    let mut finishing = Vec::new();
    for index in 0..5 {
        let submitted = client
            .submit("echo")
            .input_json(serde_json::json!({ "index": index }))
            .send()
            .await
            .expect("submit echo");
        finishing.push(submitted.task.id);
    }
    for _ in 0..2 {
        // INVALID_ARGUMENT is not retried: one attempt each despite max_attempts 3.
        let submitted = client
            .submit("fail")
            .input_json(serde_json::json!({"code": "INVALID_ARGUMENT"}))
            .max_attempts(3)
            .send()
            .await
            .expect("submit fail");
        finishing.push(submitted.task.id);
    }
    let far_future = SystemTime::now() + Duration::from_secs(24 * 3600);
    for _ in 0..3 {
        client
            .submit("echo")
            .not_before(far_future)
            .send()
            .await
            .expect("submit a scheduled echo");
    }
    for id in &finishing {
        let awaited = client.await_task(id, BOUND).await.expect("await");
        assert!(awaited.done, "task {id} finished");
    }

    let expected: &[Expected] = &[
        (
            "vow_tasks_submitted_total",
            &[("kind", "echo"), ("namespace", "default")],
            8.0,
        ),
        (
            "vow_tasks_submitted_total",
            &[("kind", "fail"), ("namespace", "default")],
            2.0,
        ),
        (
            "vow_tasks_finished_total",
            &[
                ("kind", "echo"),
                ("namespace", "default"),
                ("state", "succeeded"),
            ],
            5.0,
        ),
        (
            "vow_tasks_finished_total",
            &[
                ("kind", "fail"),
                ("namespace", "default"),
                ("state", "failed"),
            ],
            2.0,
        ),
        ("vow_attempts_total", &[("kind", "echo")], 5.0),
        ("vow_attempts_total", &[("kind", "fail")], 2.0),
        // Set by the maintenance sweep (every 200 ms): only the scheduled echoes wait.
        ("vow_queue_depth", &[("kind", "echo")], 3.0),
        (
            "vow_rpc_requests_total",
            &[("method", "Submit"), ("code", "OK")],
            10.0,
        ),
        (
            "vow_rpc_requests_total",
            &[("method", "Await"), ("code", "OK")],
            7.0,
        ),
    ];
    let mut body = String::new();
    let matches = |body: &str| {
        expected
            .iter()
            .all(|(name, labels, value)| labelled_value(body, name, labels) == Some(*value))
    };
    let started = tokio::time::Instant::now();
    while started.elapsed() < BOUND {
        body = common::scrape_metrics(&metrics_address);
        if matches(&body) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (name, labels, value) in expected {
        assert_eq!(
            labelled_value(&body, name, labels),
            Some(*value),
            "{name}{labels:?} in:\n{body}"
        );
    }
    // Failing with a non-retryable code schedules no retry.
    assert_eq!(
        labelled_value(&body, "vow_retries_total", &[("kind", "fail")]).unwrap_or(0.0),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_line_of_a_failed_attempt_carries_the_trace_id() {
    let vowd = Vowd::start(&["--log-format", "json"]);
    let (task, line) = failed_attempt_log_line(&vowd).await;
    assert_eq!(line["trace_id"], task.trace_id.as_str(), "{line}");
    let span_id = line["span_id"].as_str().expect("a span_id");
    assert!(
        span_id.len() == 16
            && span_id.bytes().all(|byte| byte.is_ascii_hexdigit())
            && span_id != "0000000000000000",
        "span_id {span_id:?}"
    );
    // Every line vowd wrote is JSON, not just this one (the last line may
    // still be in the middle of being written).
    let logs = vowd.logs();
    let complete = logs.rsplit_once('\n').map_or("", |(complete, _)| complete);
    for line in complete.lines() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not a JSON line: {line}"
        );
    }
}

/// With spans exported, the log line of an attempt names the very span the
/// receiver got: vowd's own spans have no `tracing` span, so the ids come
/// from the context the attempt attaches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_line_of_an_exported_attempt_carries_its_span_ids() {
    let (receiver, vowd) = vowd_exporting(&["--log-format", "json"]).await;
    let (task, line) = failed_attempt_log_line(&vowd).await;
    let attempt = wait_for_spans(&receiver, "the task.attempt span", |spans| {
        attempt_spans_of(spans, &task.id).remove(&1)
    })
    .await;
    assert_eq!(line["trace_id"], task.trace_id.as_str(), "{line}");
    assert_eq!(line["trace_id"], hex_id(&attempt.trace_id), "{line}");
    assert_eq!(line["span_id"], hex_id(&attempt.span_id), "{line}");
}

/// Submits a `fail` task, awaits it, and finds vowd's "attempt failed" log
/// line of it (checked to be at WARN, in the `task.attempt` span).
async fn failed_attempt_log_line(vowd: &Vowd) -> (Task, serde_json::Value) {
    let client = Client::connect(&vowd.address).await.expect("connect");
    let submitted = client
        .submit("fail")
        .input_json(serde_json::json!({"code": "INVALID_ARGUMENT", "message": "bad on purpose"}))
        .send()
        .await
        .expect("submit");
    let task = client
        .await_task(&submitted.task.id, BOUND)
        .await
        .expect("await")
        .task;
    assert_eq!(task.state(), TaskState::Failed);
    assert!(task.is_terminal());
    assert_eq!(task.trace_id.len(), 32, "the task has a trace id");

    let line = poll_until(BOUND, "the 'attempt failed' log line", || {
        let line = vowd.logs().lines().find_map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).ok()?;
            (line["message"] == "attempt failed" && line["task.id"] == task.id.as_str())
                .then_some(line)
        });
        async move { line }
    })
    .await;
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["span"], "task.attempt");
    (task, line)
}

/// A collector that accepts connections and never answers: exports hang,
/// yet calls go on being served, and the spans beyond the queue are
/// dropped and reported in the log while it happens, not only at exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_costs_spans_not_calls() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", silent.local_addr().expect("address"));
    // Holds every connection open without a byte in reply.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in silent.incoming() {
            held.push(connection);
        }
    });
    let vowd = Vowd::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "600000"),
            ("OTEL_BSP_EXPORT_TIMEOUT", "600000"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "2"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
            ("OTEL_BSP_SCHEDULE_DELAY", EXPORT_DELAY_MS),
        ],
    );
    let client = Client::connect(&vowd.address).await.expect("connect");
    for _ in 0..3 {
        let submitted = client.submit("echo").send().await.expect("submit");
        let task = client
            .await_task(&submitted.task.id, BOUND)
            .await
            .expect("await")
            .task;
        assert_eq!(task.state(), TaskState::Succeeded);
    }
    common::eventually(BOUND, "the log to report dropped spans", || {
        let reported = vowd.logs().contains("SpanDroppingStarted");
        async move { reported }
    })
    .await;
    // Shutting down waits for the hung export a few seconds, not forever.
    let mut vowd = vowd;
    vowd.signal(nix::sys::signal::Signal::SIGTERM);
    assert!(vowd.wait_exit(BOUND).success());
    assert!(
        vowd.logs().contains("flushing spans failed"),
        "{}",
        vowd.logs()
    );
}

#[test]
fn an_exporter_setting_vowd_cannot_honour_stops_it_at_start_with_the_reason() {
    let args = ["--store", "memory", "--listen", "127.0.0.1:0"].map(std::ffi::OsStr::new);
    for (setting, value, reason) in [
        (
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "http/json",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        (
            "OTEL_EXPORTER_OTLP_CERTIFICATE",
            "/nonexistent/ca.pem",
            "OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read",
        ),
        (
            "OTEL_EXPORTER_OTLP_CLIENT_KEY",
            "/etc/hostname",
            "a client identity needs both",
        ),
    ] {
        let env = vec![
            (setting, value),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
        ];
        let refused = vowd_until_exit_with_env(&args, &env, BOUND);
        assert!(!refused.status.success(), "{setting}={value} was accepted");
        assert!(
            refused.stderr.contains(reason),
            "{setting}={value}: {}",
            refused.stderr
        );
    }
}

/// Spans reach a collector served over TLS, trusted through the standard
/// `OTEL_EXPORTER_OTLP_CERTIFICATE`; without it the handshake fails and the
/// calls are still served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_tls_to_a_collector_whose_ca_is_given() {
    let pki = common::pki::TestPki::new();
    let receiver = OtlpReceiver::start_tls(pki.server_tls()).await;
    let files = common::TempDir::new("otlp-tls");
    let ca = files.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).expect("write the CA");
    let ca = ca.to_string_lossy().into_owned();
    let vowd = Vowd::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", &ca),
            ("OTEL_BSP_SCHEDULE_DELAY", EXPORT_DELAY_MS),
        ],
    );
    let client = Client::connect(&vowd.address).await.expect("connect");
    let submitted = client.submit("echo").send().await.expect("submit").task;
    wait_for_spans(&receiver, "the Submit span over TLS", |spans| {
        submit_span_of(spans, &submitted.trace_id)
    })
    .await;

    let untrusting = Vowd::start_with_env(
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint()),
            ("OTEL_BSP_SCHEDULE_DELAY", EXPORT_DELAY_MS),
        ],
    );
    let client = Client::connect(&untrusting.address).await.expect("connect");
    let refused = client.submit("echo").send().await.expect("submit").task;
    let awaited = client.await_task(&refused.id, BOUND).await.expect("await");
    assert_eq!(awaited.task.state(), TaskState::Succeeded, "calls go on");
    common::eventually(BOUND, "the export failure in the log", || {
        let logged = untrusting.logs().contains("ExportError");
        async move { logged }
    })
    .await;
    assert!(submit_span_of(&receiver.spans(), &refused.trace_id).is_none());
}

/// A span the handler of a remote worker starts is a child of the
/// `task.attempt` span the server records, in the submitter's trace: the
/// lease's traceparent is the attempt span's context, and whichever replica
/// ends the attempt records that span with the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_workers_spans_are_children_of_the_attempt() {
    use opentelemetry::trace::{Tracer as _, TracerProvider as _};
    use vow_client::worker::{
        Handler, HandlerContext, HandlerRegistry, Payload, TaskError, Worker,
    };

    struct Traced(opentelemetry_sdk::trace::SdkTracer);

    #[async_trait::async_trait]
    impl Handler for Traced {
        async fn run(&self, _context: HandlerContext) -> Result<Payload, TaskError> {
            // Started under the context the worker made current: the lease's.
            let span = self.0.start("resize.work");
            drop(span);
            Ok(Payload::json(serde_json::json!("done")))
        }
    }

    let (receiver, vowd) = vowd_exporting(&["--remote-kind", "resize"]).await;
    let client = Client::connect(&vowd.address).await.expect("connect");
    let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let mut handlers = HandlerRegistry::new();
    handlers.register("resize", Traced(provider.tracer("worker")));
    let stop = tokio_util::sync::CancellationToken::new();
    let worker = tokio::spawn(Worker::new(&client, handlers).run(stop.clone().cancelled_owned()));

    let submitted = client.submit("resize").send().await.expect("submit").task;
    let awaited = client
        .await_task(&submitted.id, BOUND)
        .await
        .expect("await");
    assert_eq!(awaited.task.state(), TaskState::Succeeded);
    stop.cancel();
    worker
        .await
        .expect("the worker task")
        .expect("the worker ran");

    let attempt = wait_for_spans(&receiver, "the remote attempt's span", |spans| {
        attempt_spans_of(spans, &submitted.id).remove(&1)
    })
    .await;
    assert_eq!(hex_id(&attempt.trace_id), submitted.trace_id);
    let submit = wait_for_spans(&receiver, "the Submit span", |spans| {
        submit_span_of(spans, &submitted.trace_id)
    })
    .await;
    assert_eq!(
        attempt.parent_span_id, submit.span_id,
        "a child of the submit"
    );
    let worker_span = exporter
        .get_finished_spans()
        .expect("the worker's spans")
        .into_iter()
        .find(|span| span.name == "resize.work")
        .expect("the handler's span");
    assert_eq!(
        worker_span.span_context.trace_id().to_string(),
        submitted.trace_id,
        "the submitter's trace"
    );
    assert_eq!(
        worker_span.parent_span_id.to_string(),
        hex_id(&attempt.span_id),
        "a child of task.attempt"
    );
    assert_eq!(
        string_attribute(&attempt.attributes, "worker.id"),
        Some(awaited.task.worker_id.as_str())
    );
}
