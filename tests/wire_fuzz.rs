//! Process-level wire fuzzing: the real `vowd` on an ephemeral port gets
//! mutated protobuf bodies (bit flips, truncation, rewritten fields), lying
//! gRPC envelopes (length prefixes, the compressed flag, oversized
//! messages), odd headers, and broken HTTP/2 (bad prefaces, malformed
//! frames, floods, window abuse), on every method of TaskService and
//! WorkerService. After every batch it must still be alive and serving,
//! its log must show no panic, and at the end its resident memory must
//! not have grown past twice its size after warm-up plus 64 MiB.
//!
//! `VOW_WIRE_FUZZ_SECONDS` (default 30) bounds the run; a soak is the same
//! test with a larger value. `VOW_WIRE_FUZZ_SEED` replays a run.

mod common;
mod wire;

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::Vowd;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::IndexedRandom};
use vow_proto::v1::{
    self as pb, task_service_client::TaskServiceClient, worker_service_client::WorkerServiceClient,
};
use wire::{http2, mutate, requests};

/// Calls per batch, and how many are in flight at once on a connection.
const BATCH: usize = 300;
const IN_FLIGHT: usize = 32;
/// Longest a fuzzed call is waited for before its stream is dropped.
const CALL_BOUND: Duration = Duration::from_secs(3);
/// Longest vowd may take to answer the checks between batches.
const CHECK_BOUND: Duration = Duration::from_secs(10);
const RSS_SLACK_KIB: u64 = 64 * 1024;

/// What a fuzzed call came to.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Outcome {
    Status(String),
    Reset,
    TimedOut,
    ConnectionLost,
}

/// How the gRPC envelope of a body is built (or broken).
fn envelope(body: &[u8], rng: &mut StdRng) -> (Vec<u8>, &'static str) {
    let prefixed = |flag: u8, declared: u32| {
        let mut out = vec![flag];
        out.extend_from_slice(&declared.to_be_bytes());
        out.extend_from_slice(body);
        out
    };
    let length = body.len() as u32;
    match rng.random_range(0..20) {
        0 => (prefixed(1, length), "compressed flag without encoding"),
        1 => (
            prefixed(rng.random_range(2..=255), length),
            "bad compressed flag",
        ),
        2 => (
            prefixed(0, length + rng.random_range(1..100)),
            "length over the body",
        ),
        3 => (
            prefixed(0, length.saturating_sub(rng.random_range(1..4))),
            "length under",
        ),
        4 => (prefixed(0, u32::MAX), "length 4 GiB"),
        5 => (
            prefixed(0, length)[..rng.random_range(0..5)].to_vec(),
            "cut prefix",
        ),
        6 => {
            let mut twice = prefixed(0, length);
            twice.extend(prefixed(0, length));
            (twice, "two messages")
        }
        7 if rng.random_ratio(1, 10) => {
            let big = vec![0x0a; 5 * 1024 * 1024 + 7];
            let mut out = vec![0];
            out.extend_from_slice(&(big.len() as u32).to_be_bytes());
            out.extend(big);
            (out, "oversized")
        }
        8 => (Vec::new(), "no message"),
        _ => (prefixed(0, length), "valid"),
    }
}

/// Headers beyond the required ones, sometimes wrong.
fn extra_headers(rng: &mut StdRng, method: &str) -> Vec<(&'static str, String)> {
    let mut headers = Vec::new();
    let waits = ["Await", "AwaitMany", "Watch", "Run", "Poll", "Delete"]
        .iter()
        .any(|name| method.ends_with(name));
    if waits || rng.random_ratio(1, 4) {
        let timeouts = [
            "200m",
            "1S",
            "0n",
            "99999999H",
            "abc",
            "-1S",
            "1",
            "300000u",
        ];
        let timeout = if rng.random_ratio(3, 4) {
            "300m"
        } else {
            timeouts.choose(rng).expect("timeouts")
        };
        headers.push(("grpc-timeout", timeout.to_owned()));
    }
    if rng.random_ratio(1, 8) {
        let encodings = ["gzip", "identity", "br", "x-unknown", ""];
        headers.push((
            "grpc-encoding",
            encodings.choose(rng).expect("encodings").to_string(),
        ));
    }
    if rng.random_ratio(1, 8) {
        let parents = [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "garbage",
        ];
        headers.push((
            "traceparent",
            parents.choose(rng).expect("parents").to_string(),
        ));
        headers.push(("tracestate", "a=b,c=d,=bad".into()));
        headers.push(("baggage", "k=v;p, %zz=1".into()));
    }
    if rng.random_ratio(1, 16) {
        headers.push(("authorization", "Bearer a.b.c".into()));
        headers.push(("x-vow-namespace", "Not A Namespace".into()));
    }
    if rng.random_ratio(1, 40) {
        headers.push(("x-big", "b".repeat(rng.random_range(8_000..40_000))));
    }
    headers
}

/// One call on `client`; the body is sent whole, the answer read to its
/// trailers (or for `CALL_BOUND`, then the stream is dropped).
async fn call(
    client: h2::client::SendRequest<Bytes>,
    path: &str,
    content_type: &str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
) -> Outcome {
    let Ok(mut client) = client.ready().await else {
        return Outcome::ConnectionLost;
    };
    let mut request = http::Request::post(format!("http://127.0.0.1{path}"))
        .header("content-type", content_type)
        .header("te", "trailers");
    for (name, value) in headers {
        if let Ok(value) = http::HeaderValue::from_str(&value) {
            request = request.header(name, value);
        }
    }
    let request = request.body(()).expect("a request");
    let Ok((response, mut stream)) = client.send_request(request, false) else {
        return Outcome::ConnectionLost;
    };
    if stream.send_data(Bytes::from(body), true).is_err() {
        return Outcome::Reset;
    }
    let answered = tokio::time::timeout(CALL_BOUND, async {
        let response = match response.await {
            Ok(response) => response,
            Err(error) if error.is_reset() => return Outcome::Reset,
            Err(_) => return Outcome::ConnectionLost,
        };
        if let Some(status) = response.headers().get("grpc-status") {
            // A trailers-only answer.
            return Outcome::Status(status.to_str().unwrap_or("?").to_owned());
        }
        let mut body = response.into_body();
        let mut read = 0usize;
        while let Some(chunk) = body.data().await {
            let Ok(chunk) = chunk else {
                return Outcome::Reset;
            };
            read += chunk.len();
            let _ = body.flow_control().release_capacity(chunk.len());
            if read > 16 * 1024 * 1024 {
                return Outcome::Status("answer over 16 MiB".into());
            }
        }
        match body.trailers().await {
            Ok(Some(trailers)) => Outcome::Status(
                trailers
                    .get("grpc-status")
                    .and_then(|status| status.to_str().ok())
                    .unwrap_or("no grpc-status")
                    .to_owned(),
            ),
            Ok(None) => Outcome::Status("no trailers".into()),
            Err(_) => Outcome::Reset,
        }
    })
    .await;
    answered.unwrap_or(Outcome::TimedOut)
}

/// Runs `BATCH` fuzzed calls over one new connection.
async fn fuzz_batch(
    address: &str,
    live: &requests::Live,
    rng: &mut StdRng,
    outcomes: &mut BTreeMap<(String, Outcome), u64>,
    envelopes: &mut BTreeMap<&'static str, u64>,
) {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect to vowd");
    let (client, connection) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake::<_, Bytes>(tcp)
        .await
        .expect("an h2 handshake");
    let driver = tokio::spawn(connection);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..BATCH {
        let method_index = rng.random_range(0..requests::METHODS.len());
        let path = requests::METHODS[method_index];
        let valid = requests::valid(method_index, live, rng.random_range(0..1 << 20));
        let body = if rng.random_ratio(1, 10) {
            valid
        } else {
            mutate::mutate(&valid, rng)
        };
        let (framed, shape) = envelope(&body, rng);
        *envelopes.entry(shape).or_default() += 1;
        let content_type = match rng.random_range(0..30) {
            0 => "application/json",
            1 => "application/grpc+json",
            2 => "",
            _ => "application/grpc",
        };
        let headers = extra_headers(rng, path);
        let method = path.rsplit('/').next().expect("a method").to_owned();
        let client = client.clone();
        let content_type = content_type.to_owned();
        calls.spawn(async move {
            let outcome = call(client, path, &content_type, headers, framed).await;
            (method, outcome)
        });
        while calls.len() >= IN_FLIGHT {
            let (method, outcome) = calls.join_next().await.expect("a call").expect("no panic");
            *outcomes.entry((method, outcome)).or_default() += 1;
        }
    }
    while let Some(done) = calls.join_next().await {
        let (method, outcome) = done.expect("no panic");
        *outcomes.entry((method, outcome)).or_default() += 1;
    }
    drop(client);
    driver.abort();
}

/// Tasks and leases for the templates to name: a few echo tasks, and
/// remote tasks leased to this test.
async fn refresh_live(
    tasks: &mut TaskServiceClient<tonic::transport::Channel>,
    workers: &mut WorkerServiceClient<tonic::transport::Channel>,
    live: &mut requests::Live,
) {
    live.task_ids.truncate(32);
    live.lease_tokens.clear();
    for kind in ["echo", "remote", "remote", "fail"] {
        let submitted = tasks
            .submit(pb::SubmitRequest {
                kind: kind.into(),
                retention: Some(prost_types::Duration {
                    seconds: 5,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .expect("a valid submit");
        let id = submitted.into_inner().task.expect("a task").id;
        live.task_ids.insert(0, id);
    }
    let polled = workers
        .poll(pb::PollRequest {
            kinds: vec!["remote".into()],
            worker_id: "wire-fuzz-setup".into(),
            max_tasks: 4,
            lease_duration: Some(prost_types::Duration {
                seconds: 30,
                nanos: 0,
            }),
            timeout: Some(prost_types::Duration {
                seconds: 0,
                nanos: 100_000_000,
            }),
        })
        .await
        .expect("a valid poll");
    live.lease_tokens.extend(
        polled
            .into_inner()
            .leases
            .into_iter()
            .map(|lease| lease.token),
    );
}

/// vowd is alive, its health says SERVING, a Get of a task answers, and
/// its log shows no panic.
async fn check_serving(vowd: &mut Vowd, live: &requests::Live, seed: u64, after: &str) {
    if let Some(status) = vowd.child.try_wait().expect("poll vowd") {
        panic!(
            "vowd exited with {status} after {after} (seed {seed}); logs:\n{}",
            tail(&vowd.logs())
        );
    }
    let context = || format!("after {after} (seed {seed}); logs:\n{}", tail(&vowd.logs()));
    let checked = tokio::time::timeout(CHECK_BOUND, async {
        let channel = tonic::transport::Endpoint::from_shared(vowd.url())
            .expect("a URL")
            .connect()
            .await
            .expect("connect");
        let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
        let status = health
            .check(tonic_health::pb::HealthCheckRequest::default())
            .await
            .expect("a health check")
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
        let id = live.task_ids.last().cloned().unwrap_or_default();
        let found = TaskServiceClient::new(channel)
            .get(pb::GetRequest { id })
            .await
            .map(|_| ())
            .or_else(|status| match status.code() {
                // Retention may have removed it meanwhile.
                tonic::Code::NotFound => Ok(()),
                _ => Err(status),
            });
        found.expect("a Get answers");
    })
    .await;
    assert!(checked.is_ok(), "vowd stopped serving {}", context());
    let logs = vowd.logs();
    assert!(!logs.contains("panicked"), "vowd panicked {}", context());
}

fn tail(logs: &str) -> String {
    let lines: Vec<&str> = logs.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vowd_survives_mutated_requests_and_broken_http2_with_bounded_memory() {
    let seconds: u64 = std::env::var("VOW_WIRE_FUZZ_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(30);
    let seed: u64 = std::env::var("VOW_WIRE_FUZZ_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("wire fuzz: {seconds} s, VOW_WIRE_FUZZ_SEED={seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    // Retention and the queue are bounded, so that what vowd keeps of the
    // tasks the fuzzer creates cannot pass for a leak, nor hide one.
    let mut vowd = Vowd::start(&[
        "--remote-kind",
        "remote",
        "--max-await",
        "1s",
        "--default-retention",
        "2s",
        "--max-retention",
        "5s",
        "--max-queued-tasks",
        "2000",
    ]);
    let channel = tonic::transport::Endpoint::from_shared(vowd.url())
        .expect("a URL")
        .connect()
        .await
        .expect("connect");
    let mut tasks = TaskServiceClient::new(channel.clone());
    let mut workers = WorkerServiceClient::new(channel);
    let mut live = requests::Live::default();
    let list_body = {
        use prost::Message;
        pb::ListRequest {
            page_size: 1_000,
            ..Default::default()
        }
        .encode_to_vec()
    };

    let (mut outcomes, mut envelopes) = (BTreeMap::new(), BTreeMap::new());
    let mut attacks = 0usize;
    let mut rss_after_warm_up = None;
    let started = Instant::now();
    let mut batches = 0u64;
    while batches < 3 || started.elapsed() < Duration::from_secs(seconds) {
        refresh_live(&mut tasks, &mut workers, &mut live).await;
        fuzz_batch(
            &vowd.address,
            &live,
            &mut rng,
            &mut outcomes,
            &mut envelopes,
        )
        .await;
        check_serving(&mut vowd, &live, seed, &format!("batch {batches}")).await;
        for _ in 0..2 {
            let attack = attacks % http2::ATTACKS.len();
            http2::attack(&vowd.address, attack, &mut rng, &list_body).await;
            check_serving(&mut vowd, &live, seed, http2::ATTACKS[attack]).await;
            attacks += 1;
        }
        batches += 1;
        // Warm-up: every attack once, every allocator arena in use.
        if batches == 8 {
            rss_after_warm_up = Some(common::rss_kib(vowd.child.id()));
        }
    }
    // Let retention and the sweeps catch up before the last look.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_final = common::rss_kib(vowd.child.id());
    let rss_after_warm_up = rss_after_warm_up.unwrap_or(rss_final);

    let calls: u64 = outcomes.values().sum();
    eprintln!(
        "wire fuzz: {calls} calls in {batches} batches, {attacks} HTTP/2 attacks, {:.0} s; \
         RSS {rss_after_warm_up} KiB after warm-up, {rss_final} KiB at the end",
        started.elapsed().as_secs_f64()
    );
    for ((method, outcome), count) in &outcomes {
        eprintln!("  {method:<10} {outcome:?}: {count}");
    }
    for (shape, count) in &envelopes {
        eprintln!("  envelope {shape}: {count}");
    }
    assert!(
        rss_final < 2 * rss_after_warm_up + RSS_SLACK_KIB,
        "vowd grew from {rss_after_warm_up} KiB after warm-up to {rss_final} KiB (seed {seed})"
    );
}
