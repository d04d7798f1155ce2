//! Watch fan-out, measured (not asserted): 10,000 watchers on one task of a
//! real vowd; how long the terminal change takes to reach each of them, and
//! how much server memory an idle watcher costs. Run against a release build:
//!
//! ```text
//! cargo build --release --bins
//! VOW_VOWD_BINARY=target/release/vowd cargo test --release --test watch_fanout -- --ignored --nocapture
//! ```

mod common;

use std::time::{Duration, SystemTime};

use common::{Vowd, rss_kib};
use tonic::transport::Channel;
use vow_client::{Client, proto};
use vow_proto::v1::task_service_client::TaskServiceClient;

const WATCHERS: usize = 10_000;
const CONNECTIONS: usize = 50;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "a benchmark: run it by hand against a release build"]
async fn ten_thousand_watchers() {
    let vowd = Vowd::start(&["--watch-heartbeat", "1h"]);
    let client = Client::connect(&vowd.address).await.expect("connect");
    let id = client
        .submit("sleep")
        .input_json(serde_json::json!({"ms": 3_600_000, "steps": 1}))
        .send()
        .await
        .expect("submit")
        .task
        .id;
    let mut channels: Vec<TaskServiceClient<Channel>> = Vec::new();
    for _ in 0..CONNECTIONS {
        channels.push(
            TaskServiceClient::connect(vowd.url())
                .await
                .expect("connect"),
        );
    }
    let before = rss_kib(vowd.child.id());
    let mut streams = Vec::with_capacity(WATCHERS);
    for index in 0..WATCHERS {
        let mut channel = channels[index % CONNECTIONS].clone();
        let request = proto::WatchRequest {
            id: id.clone(),
            ..Default::default()
        };
        let mut stream = channel.watch(request).await.expect("watch").into_inner();
        stream
            .message()
            .await
            .expect("snapshot")
            .expect("a first message");
        streams.push(stream);
    }
    let idle = rss_kib(vowd.child.id());
    let per_watcher = (idle.saturating_sub(before) * 1024) as f64 / WATCHERS as f64;

    let receivers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            tokio::spawn(async move {
                while let Some(message) = stream.message().await.expect("message") {
                    if message
                        .task
                        .as_ref()
                        .is_some_and(|task| task.end_time.is_some())
                    {
                        return SystemTime::now();
                    }
                }
                panic!("the stream ended before the terminal change");
            })
        })
        .collect();
    // The terminal change happens once every watcher is attached.
    client
        .cancel(&id, "fan-out measured")
        .await
        .expect("cancel");
    let mut received = Vec::with_capacity(WATCHERS);
    for receiver in receivers {
        received.push(receiver.await.expect("watcher"));
    }
    let ended = client
        .get(&id)
        .await
        .expect("get")
        .end_time
        .expect("finished");
    let ended = SystemTime::try_from(ended).expect("a valid time");
    let mut delays: Vec<Duration> = received
        .iter()
        .map(|at| at.duration_since(ended).unwrap_or_default())
        .collect();
    delays.sort();
    let percentile = |p: f64| delays[((delays.len() as f64 * p) as usize).min(delays.len() - 1)];
    println!(
        "watch fan-out: {WATCHERS} watchers over {CONNECTIONS} connections; idle server memory {per_watcher:.0} B per watcher \
         (RSS {before} KiB -> {idle} KiB); completion to delivery p50 {:?}, p99 {:?}, last {:?}",
        percentile(0.50),
        percentile(0.99),
        delays.last().expect("delays"),
    );
}
