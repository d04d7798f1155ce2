//! End-to-end behaviour of Watch and AwaitMany against the real `vowd`:
//! ordering, resumption without gaps, fan-out, slow consumers, deadlines,
//! drains, and the live-listener gauges returning to zero.

mod common;

use std::time::Duration;

use common::{Vowd, eventually, metric_value, rss_kib, scrape_metrics};
use futures::StreamExt;
use serde_json::json;
use tonic::{Code, Request, transport::Channel};
use vow_client::{AwaitMode, Client, TaskExt, TaskState, WatchEventType, proto};
use vow_proto::v1::task_service_client::TaskServiceClient;

const BOUND: Duration = Duration::from_secs(20);

async fn client(vowd: &Vowd) -> Client {
    Client::connect(&vowd.address)
        .await
        .expect("connect to vowd")
}

async fn raw(vowd: &Vowd) -> TaskServiceClient<Channel> {
    TaskServiceClient::connect(vowd.url())
        .await
        .expect("connect to vowd")
}

fn watch_request(id: &str, after_revision: u64) -> proto::WatchRequest {
    proto::WatchRequest {
        id: id.to_owned(),
        after_revision,
        ..Default::default()
    }
}

/// Opens a Watch of one task, after `after_revision` (0: from a snapshot).
async fn open_watch(
    raw: &mut TaskServiceClient<Channel>,
    id: &str,
    after_revision: u64,
) -> tonic::Streaming<proto::WatchResponse> {
    raw.watch(watch_request(id, after_revision))
        .await
        .expect("watch")
        .into_inner()
}

async fn submit_sleep(client: &Client, input: serde_json::Value) -> String {
    client
        .submit("sleep")
        .input_json(input)
        .send()
        .await
        .expect("submit")
        .task
        .id
}

/// Reads a stream to its end: every message, and the status it ended with.
async fn drain(
    stream: &mut tonic::Streaming<proto::WatchResponse>,
) -> (Vec<proto::WatchResponse>, Result<(), tonic::Status>) {
    let mut messages = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => return (messages, Ok(())),
            Err(status) => return (messages, Err(status)),
        }
    }
}

fn revisions(messages: &[proto::WatchResponse]) -> Vec<u64> {
    messages
        .iter()
        .filter_map(|message| message.task.as_ref())
        .map(|task| task.revision)
        .collect()
}

#[tokio::test]
async fn watch_streams_snapshot_progress_and_terminal_in_order_then_closes_ok() {
    let vowd = Vowd::start(&["--progress-interval", "10ms"]);
    let client = client(&vowd).await;
    let id = submit_sleep(&client, json!({"ms": 500})).await;
    let events: Vec<_> = client.watch(&id).collect().await;
    let events: Vec<_> = events
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("the stream ends OK");
    assert_eq!(events[0].event_type, WatchEventType::Snapshot);
    let tasks: Vec<_> = events
        .iter()
        .filter_map(|event| event.task.clone())
        .collect();
    let revisions: Vec<u64> = tasks.iter().map(|task| task.revision).collect();
    assert!(
        revisions.windows(2).all(|pair| pair[1] == pair[0] + 1),
        "every change, in order: {revisions:?}"
    );
    assert!(
        tasks
            .iter()
            .any(|task| task.progress.is_some() && !task.is_terminal()),
        "progress was streamed"
    );
    let last = tasks.last().expect("events");
    assert_eq!(last.state(), TaskState::Succeeded);
    let final_progress = last.progress.as_ref().expect("the final progress report");
    assert_eq!(
        final_progress.percent, 100.0,
        "the last report lands with the outcome"
    );
    assert!(
        events[1..]
            .iter()
            .all(|event| event.event_type == WatchEventType::Change
                || event.event_type == WatchEventType::Heartbeat)
    );
}

#[tokio::test]
async fn a_resumed_watch_continues_after_revision_k_without_gap_or_duplicate() {
    let vowd = Vowd::start(&["--progress-interval", "5ms"]);
    let client = client(&vowd).await;
    let id = submit_sleep(&client, json!({"ms": 1_000, "steps": 40})).await;
    let mut raw = raw(&vowd).await;

    let mut first = open_watch(&mut raw, &id, 0).await;
    let mut seen = Vec::new();
    while seen.last().is_none_or(|revision| *revision < 5) {
        let message = first
            .message()
            .await
            .expect("message")
            .expect("more messages");
        seen.extend(message.task.map(|task| task.revision));
    }
    drop(first);
    let k = *seen.last().expect("revisions");

    let mut resumed = open_watch(&mut raw, &id, k).await;
    let (messages, end) = drain(&mut resumed).await;
    end.expect("the resumed stream ends OK");
    assert!(
        messages
            .iter()
            .all(|message| message.r#type() == proto::WatchEventType::Change
                || message.r#type() == proto::WatchEventType::Heartbeat)
    );
    let resumed_revisions = revisions(&messages);
    assert_eq!(
        resumed_revisions.first(),
        Some(&(k + 1)),
        "starts right after k"
    );
    assert!(
        resumed_revisions
            .windows(2)
            .all(|pair| pair[1] == pair[0] + 1),
        "no gap: {resumed_revisions:?}"
    );
    let last = messages
        .iter()
        .rev()
        .find_map(|message| message.task.clone())
        .expect("a task");
    assert_eq!(last.state(), TaskState::Succeeded);
}

#[tokio::test]
async fn a_watch_broken_before_the_end_resumes_into_the_missed_changes_after_the_task_finished() {
    let vowd = Vowd::start(&["--progress-interval", "5ms"]);
    let client = client(&vowd).await;
    let id = submit_sleep(&client, json!({"ms": 600, "steps": 6})).await;
    let mut raw = raw(&vowd).await;

    let mut first = open_watch(&mut raw, &id, 0).await;
    let snapshot = first
        .message()
        .await
        .expect("message")
        .and_then(|message| message.task)
        .expect("a snapshot");
    // The only watcher goes away while the task still runs...
    drop(first);
    let k = snapshot.revision;
    // ...and the task finishes with nobody listening.
    let finished = client.await_task(&id, BOUND).await.expect("await").task;
    assert!(finished.is_terminal());
    assert!(finished.revision > k + 1, "changes happened after k");

    let mut resumed = open_watch(&mut raw, &id, k).await;
    let (messages, end) = drain(&mut resumed).await;
    end.expect("the resumed stream ends OK");
    assert!(
        messages
            .iter()
            .all(|message| message.r#type() == proto::WatchEventType::Change),
        "replayed changes, not a resync: {messages:?}"
    );
    let replayed = revisions(&messages);
    let expected: Vec<u64> = (k + 1..=finished.revision).collect();
    assert_eq!(replayed, expected, "every change after k, once, in order");
}

#[tokio::test]
async fn resuming_from_compacted_history_yields_a_resync() {
    let vowd = Vowd::start(&["--progress-interval", "5ms", "--event-history", "2"]);
    let client = client(&vowd).await;
    let id = submit_sleep(&client, json!({"ms": 2_000, "steps": 40})).await;
    let mut raw = raw(&vowd).await;
    // Hold a watch so the task's history is being kept, and let it grow past 2.
    let mut holder = open_watch(&mut raw, &id, 0).await;
    while holder
        .message()
        .await
        .expect("message")
        .and_then(|message| message.task)
        .is_none_or(|task| task.revision < 8)
    {}

    let mut resumed = open_watch(&mut raw, &id, 1).await;
    let first = resumed
        .message()
        .await
        .expect("message")
        .expect("a first message");
    assert_eq!(first.r#type(), proto::WatchEventType::Resync);
    let task = first.task.expect("a resync carries the current state");
    assert!(task.revision >= 8);
}

#[tokio::test]
async fn a_thousand_watchers_all_receive_the_terminal_event() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let id = submit_sleep(&client, json!({"ms": 3_000, "steps": 3})).await;
    let mut channels = Vec::new();
    for _ in 0..10 {
        channels.push(raw(&vowd).await);
    }
    let mut opened = Vec::new();
    for index in 0..1_000 {
        let mut raw = channels[index % channels.len()].clone();
        let stream = open_watch(&mut raw, &id, 0).await;
        opened.push(stream);
    }
    let watchers: Vec<_> = opened
        .into_iter()
        .map(|mut stream| tokio::spawn(async move { drain(&mut stream).await }))
        .collect();
    let mut terminal = 0;
    for watcher in watchers {
        let (messages, end) = watcher.await.expect("watcher task");
        end.expect("each stream ends OK");
        let last = messages
            .iter()
            .rev()
            .find_map(|message| message.task.as_ref())
            .expect("a task");
        terminal += usize::from(last.state() == TaskState::Succeeded);
    }
    assert_eq!(terminal, 1_000);
}

#[tokio::test]
async fn a_watcher_that_never_reads_leaves_server_memory_bounded() {
    let vowd = Vowd::start(&["--progress-interval", "1us"]);
    let client = client(&vowd).await;
    let id = client
        .submit("sleep")
        .input_json(json!({"ms": 0, "steps": 150_000}))
        .not_before(std::time::SystemTime::now() + Duration::from_millis(500))
        .send()
        .await
        .expect("submit")
        .task
        .id;
    let mut raw = raw(&vowd).await;
    // Opened, then never read again.
    let _stalled = open_watch(&mut raw, &id, 0).await;
    let before = rss_kib(vowd.child.id());

    let awaited = client
        .await_task(&id, Duration::from_secs(120))
        .await
        .expect("await");
    assert!(awaited.done);
    assert_eq!(awaited.task.state(), TaskState::Succeeded);
    assert!(
        awaited.task.revision >= 100_000,
        "100,000 progress events were produced: {}",
        awaited.task.revision
    );
    let after = rss_kib(vowd.child.id());
    let grown_mib = after.saturating_sub(before) / 1024;
    assert!(
        grown_mib < 64,
        "vowd grew by {grown_mib} MiB for a stalled watcher"
    );
}

#[tokio::test]
async fn cancelled_awaits_and_watches_bring_the_gauges_back_to_zero() {
    let vowd = Vowd::start(&["--metrics-listen", "127.0.0.1:0"]);
    let metrics = vowd.metrics_address.clone().expect("a metrics address");
    let client = client(&vowd).await;
    let id = submit_sleep(&client, json!({"ms": 120_000})).await;
    let mut channels = Vec::new();
    for _ in 0..60 {
        channels.push(raw(&vowd).await);
    }
    let mut calls = Vec::new();
    for index in 0..10_000 {
        let mut raw = channels[index % channels.len()].clone();
        let request = proto::AwaitRequest {
            id: id.clone(),
            timeout: Some(prost_types::Duration {
                seconds: 120,
                nanos: 0,
            }),
        };
        calls.push(tokio::spawn(
            async move { raw.r#await(request).await.map(drop) },
        ));
    }
    for index in 0..1_000 {
        let mut raw = channels[index % channels.len()].clone();
        let request = watch_request(&id, 0);
        calls.push(tokio::spawn(async move {
            let mut stream = raw.watch(request).await?.into_inner();
            while stream.message().await?.is_some() {}
            Ok(())
        }));
    }
    let gauges = |name: &'static str| {
        let metrics = metrics.clone();
        move || {
            let metrics = metrics.clone();
            async move { metric_value(&scrape_metrics(&metrics), name).unwrap_or(0.0) }
        }
    };
    let waiters = gauges("vow_live_waiters");
    let watchers = gauges("vow_live_watchers");
    eventually(
        BOUND,
        "10,000 waiters and 1,000 watchers to be live",
        || {
            let (waiters, watchers) = (waiters(), watchers());
            async move { waiters.await == 10_000.0 && watchers.await == 1_000.0 }
        },
    )
    .await;

    for call in &calls {
        call.abort();
    }
    drop(channels);
    eventually(BOUND, "the gauges to return to zero", || {
        let (waiters, watchers) = (waiters(), watchers());
        async move { waiters.await == 0.0 && watchers.await == 0.0 }
    })
    .await;
}

#[tokio::test]
async fn await_many_all_summarizes_mixed_outcomes() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let mut ids = Vec::new();
    for index in 0..40 {
        ids.push(
            client
                .submit("echo")
                .input_json(json!(index))
                .send()
                .await
                .expect("submit")
                .task
                .id,
        );
    }
    for _ in 0..30 {
        let input = json!({"code": "INVALID_ARGUMENT"});
        ids.push(
            client
                .submit("fail")
                .input_json(input)
                .send()
                .await
                .expect("submit")
                .task
                .id,
        );
    }
    for _ in 0..20 {
        let input = json!({"code": "NOT_FOUND"});
        ids.push(
            client
                .submit("fail")
                .input_json(input)
                .send()
                .await
                .expect("submit")
                .task
                .id,
        );
    }
    for _ in 0..10 {
        let id = submit_sleep(&client, json!({"ms": 60_000})).await;
        client.cancel(&id, "not needed").await.expect("cancel");
        ids.push(id);
    }
    ids.push("0".repeat(32));
    ids.push("f".repeat(32));

    let awaited = client
        .await_many(&ids, AwaitMode::All, BOUND)
        .await
        .expect("await many");
    assert!(awaited.done);
    let summary = &awaited.summary;
    assert_eq!(
        (summary.succeeded, summary.failed, summary.cancelled),
        (40, 50, 10)
    );
    assert_eq!((summary.unfinished, summary.not_found), (0, 2));
    assert_eq!(summary.failed_by_code.get("INVALID_ARGUMENT"), Some(&30));
    assert_eq!(summary.failed_by_code.get("NOT_FOUND"), Some(&20));
    assert_eq!(awaited.finished.len(), 100);
    assert_eq!(awaited.not_found_ids.len(), 2);
}

#[tokio::test]
async fn await_many_any_returns_when_the_first_finishes() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(submit_sleep(&client, json!({"ms": 60_000})).await);
    }
    let quick = submit_sleep(&client, json!({"ms": 200})).await;
    ids.push(quick.clone());
    let awaited = client
        .await_many(&ids, AwaitMode::Any, Duration::from_secs(50))
        .await
        .expect("await many");
    assert!(awaited.done);
    assert_eq!(awaited.finished.len(), 1);
    assert_eq!(awaited.finished[0].id, quick);
    assert_eq!(awaited.summary.unfinished, 5);
}

#[tokio::test]
async fn await_many_answers_not_done_at_the_call_deadline() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let ids = vec![
        submit_sleep(&client, json!({"ms": 60_000})).await,
        submit_sleep(&client, json!({"ms": 60_000})).await,
    ];
    let mut request = Request::new(proto::AwaitManyRequest {
        ids,
        mode: proto::AwaitMode::Any as i32,
        timeout: None,
    });
    request.set_timeout(Duration::from_millis(300));
    let response = raw(&vowd)
        .await
        .await_many(request)
        .await
        .expect("answers OK")
        .into_inner();
    assert!(!response.done);
    assert_eq!(response.summary.expect("summary").unfinished, 2);

    let bad = proto::AwaitManyRequest {
        ids: vec!["nope".into()],
        ..Default::default()
    };
    let status = raw(&vowd)
        .await
        .await_many(bad)
        .await
        .expect_err("malformed id");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn filter_watches_follow_matching_tasks() {
    let vowd = Vowd::start(&[]);
    let client = client(&vowd).await;
    let request = proto::WatchRequest {
        kinds: vec!["echo".into()],
        labels: [("batch".to_owned(), "w1".to_owned())].into(),
        states: vec![proto::TaskState::Succeeded as i32],
        ..Default::default()
    };
    let mut request = Request::new(request);
    request.set_timeout(Duration::from_secs(15));
    let mut stream = raw(&vowd)
        .await
        .watch(request)
        .await
        .expect("watch")
        .into_inner();
    let mut expected = std::collections::BTreeSet::new();
    for index in 0..3 {
        let submitted = client
            .submit("echo")
            .input_json(json!(index))
            .label("batch", "w1")
            .send()
            .await
            .expect("submit");
        expected.insert(submitted.task.id);
        client
            .submit("echo")
            .label("batch", "other")
            .send()
            .await
            .expect("submit");
    }
    let mut seen = std::collections::BTreeSet::new();
    while seen != expected {
        let message = stream
            .message()
            .await
            .expect("message")
            .expect("more messages");
        if let Some(task) = message.task {
            assert_eq!(task.state(), TaskState::Succeeded);
            assert_eq!(task.labels.get("batch").map(String::as_str), Some("w1"));
            seen.insert(task.id);
        }
    }
}

#[tokio::test]
async fn watches_end_ok_at_the_deadline_send_heartbeats_and_refuse_bad_ids() {
    let vowd = Vowd::start(&["--watch-heartbeat", "100ms"]);
    let client = client(&vowd).await;
    let id = submit_sleep(&client, json!({"ms": 60_000, "steps": 1})).await;
    let mut request = Request::new(watch_request(&id, 0));
    request.set_timeout(Duration::from_millis(800));
    let started = std::time::Instant::now();
    let mut stream = raw(&vowd)
        .await
        .watch(request)
        .await
        .expect("watch")
        .into_inner();
    let (messages, end) = drain(&mut stream).await;
    end.expect("the stream ends OK at the deadline");
    assert!(started.elapsed() < Duration::from_millis(800));
    assert!(
        messages
            .iter()
            .any(|message| message.r#type() == proto::WatchEventType::Heartbeat),
        "idle streams get heartbeats"
    );

    let status = raw(&vowd)
        .await
        .watch(watch_request(&"0".repeat(32), 0))
        .await
        .expect_err("unknown id");
    assert_eq!(status.code(), Code::NotFound);
    let status = raw(&vowd)
        .await
        .watch(watch_request("bad", 0))
        .await
        .expect_err("malformed id");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn watches_end_unavailable_when_the_server_drains() {
    let vowd = Vowd::start(&["--drain-timeout", "1s"]);
    let client = client(&vowd).await;
    let id = submit_sleep(&client, json!({"ms": 60_000})).await;
    let mut stream = open_watch(&mut raw(&vowd).await, &id, 0).await;
    stream
        .message()
        .await
        .expect("snapshot")
        .expect("a first message");
    vowd.signal(nix::sys::signal::Signal::SIGTERM);
    let (_, end) = drain(&mut stream).await;
    assert_eq!(
        end.expect_err("draining ends the stream").code(),
        Code::Unavailable
    );
}
