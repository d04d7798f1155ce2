//! vowd against broken and hostile clients: requests over the size limit,
//! HTTP/2 limits announced and enforced (concurrent streams, header size),
//! keepalive pings that close a connection whose peer stopped answering,
//! connections recycled at their maximum age, and the rapid-reset pattern
//! (CVE-2023-44487) sent with a raw HTTP/2 client.

mod common;

use std::{
    pin::Pin,
    task::Poll,
    time::{Duration, Instant},
};

use common::Vowd;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use vow_client::proto;

/// Longest any single wait of these tests may take.
const BOUND: Duration = Duration::from_secs(20);

async fn task_stub(
    vowd: &Vowd,
) -> proto::task_service_client::TaskServiceClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_shared(vowd.url())
        .expect("a URL")
        .connect()
        .await
        .expect("connect to vowd");
    proto::task_service_client::TaskServiceClient::new(channel)
}

fn submit_of(input_bytes: usize) -> proto::SubmitRequest {
    proto::SubmitRequest {
        kind: "echo".into(),
        input: Some(proto::Payload {
            data: Some(proto::payload::Data::Binary(vec![7; input_bytes])),
            content_type: String::new(),
        }),
        ..Default::default()
    }
}

/// The status's `ErrorInfo` reason and metadata.
fn error_info(status: &tonic::Status) -> (String, std::collections::HashMap<String, String>) {
    use tonic_types::StatusExt;
    let info = status
        .get_details_error_info()
        .unwrap_or_else(|| panic!("an ErrorInfo in {status:?}"));
    assert_eq!(info.domain, "vow");
    (info.reason, info.metadata)
}

#[tokio::test]
async fn requests_over_the_size_limits_are_resource_exhausted_with_error_info() {
    let vowd = Vowd::start(&["--max-input-bytes", "1024", "--max-request-bytes", "4096"]);
    let mut stub = task_stub(&vowd).await;

    let over_request = stub
        .submit(submit_of(10_000))
        .await
        .expect_err("a request over --max-request-bytes");
    assert_eq!(
        over_request.code(),
        Code::ResourceExhausted,
        "{over_request:?}"
    );
    let (reason, metadata) = error_info(&over_request);
    assert_eq!(reason, "REQUEST_TOO_LARGE");
    assert_eq!(metadata["limit_bytes"], "4096");

    let over_input = stub
        .submit(submit_of(2_000))
        .await
        .expect_err("an input over --max-input-bytes");
    assert_eq!(over_input.code(), Code::ResourceExhausted, "{over_input:?}");
    let (reason, metadata) = error_info(&over_input);
    assert_eq!(reason, "PAYLOAD_TOO_LARGE");
    assert_eq!(metadata["field"], "input");
    assert_eq!(metadata["limit_bytes"], "1024");

    stub.submit(submit_of(1_000))
        .await
        .expect("an input within the limits");
    assert!(
        !vowd.logs().contains("panicked"),
        "vowd logs:\n{}",
        vowd.logs()
    );
}

#[tokio::test]
async fn by_default_a_5_mib_input_is_refused_as_too_large_a_request() {
    let vowd = Vowd::start(&[]);
    let mut stub = task_stub(&vowd).await;
    let refused = stub
        .submit(submit_of(5 * 1024 * 1024))
        .await
        .expect_err("5 MiB is over the 4 MiB input limit plus 1 MiB");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(error_info(&refused).0, "REQUEST_TOO_LARGE");
    let refused = stub
        .submit(submit_of(4 * 1024 * 1024 + 1))
        .await
        .expect_err("just over the 4 MiB input limit");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(error_info(&refused).0, "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn the_concurrent_stream_limit_is_announced_to_clients() {
    let vowd = Vowd::start(&["--http2-max-concurrent-streams", "2"]);
    let tcp = tokio::net::TcpStream::connect(&vowd.address)
        .await
        .expect("connect");
    let (_client, mut connection) = h2::client::handshake(tcp).await.expect("an h2 handshake");
    // Drive the connection until vowd's SETTINGS are applied.
    let limit = tokio::time::timeout(
        BOUND,
        std::future::poll_fn(|context| {
            if let Poll::Ready(result) = Pin::new(&mut connection).poll(context) {
                panic!("vowd closed the connection: {result:?}");
            }
            match connection.max_concurrent_send_streams() {
                2 => Poll::Ready(2),
                _ => Poll::Pending,
            }
        }),
    )
    .await
    .expect("vowd's SETTINGS in time");
    assert_eq!(limit, 2);
}

#[tokio::test]
async fn headers_over_the_header_list_limit_are_refused() {
    let vowd = Vowd::start(&["--http2-max-header-list-size", "16384"]);
    let channel = tonic::transport::Endpoint::from_shared(vowd.url())
        .expect("a URL")
        .connect()
        .await
        .expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let with_padding = |bytes: usize| {
        let mut request = tonic::Request::new(tonic_health::pb::HealthCheckRequest::default());
        let padding = "a".repeat(bytes).parse().expect("ASCII metadata");
        request.metadata_mut().insert("x-padding", padding);
        request
    };
    health
        .check(with_padding(8 * 1024))
        .await
        .expect("8 KiB of headers are within 16 KiB");
    health
        .check(with_padding(20 * 1024))
        .await
        .expect_err("20 KiB of headers are over 16 KiB");
    health
        .check(with_padding(100))
        .await
        .expect("the connection still serves");
}

/// Reads HTTP/2 frames from `stream` until it closes; returns the types seen.
async fn frame_types_until_closed(stream: &mut tokio::net::TcpStream) -> Vec<u8> {
    let mut types = Vec::new();
    let mut header = [0u8; 9];
    loop {
        if stream.read_exact(&mut header).await.is_err() {
            return types;
        }
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        types.push(header[3]);
        let mut payload = vec![0; length];
        if stream.read_exact(&mut payload).await.is_err() {
            return types;
        }
    }
}

/// The client preface and an empty SETTINGS frame: an HTTP/2 client that
/// then never answers anything.
const SILENT_CLIENT_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0";
const FRAME_TYPE_PING: u8 = 0x6;

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_disconnected() {
    let vowd = Vowd::start(&[
        "--http2-keepalive-interval",
        "1s",
        "--http2-keepalive-timeout",
        "1s",
    ]);
    let mut stream = tokio::net::TcpStream::connect(&vowd.address)
        .await
        .expect("connect");
    stream
        .write_all(SILENT_CLIENT_PREFACE)
        .await
        .expect("send the preface");
    let started = Instant::now();
    let types = tokio::time::timeout(BOUND, frame_types_until_closed(&mut stream))
        .await
        .expect("vowd closes the connection in time");
    assert!(types.contains(&FRAME_TYPE_PING), "frames {types:?}");
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "not before the first ping"
    );
}

#[tokio::test]
async fn connections_are_recycled_at_their_maximum_age_and_clients_carry_on() {
    let vowd = Vowd::start(&[
        "--max-connection-age",
        "1s",
        "--max-connection-age-grace",
        "1s",
    ]);
    // An HTTP/2 client is asked to go away (GOAWAY), and the connection ends.
    let tcp = tokio::net::TcpStream::connect(&vowd.address)
        .await
        .expect("connect");
    let (_client, connection) = h2::client::handshake(tcp).await.expect("an h2 handshake");
    let started = Instant::now();
    tokio::time::timeout(BOUND, connection)
        .await
        .expect("vowd ends an old connection in time")
        .expect("a graceful end");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "not before its age"
    );

    // One that never finished its HTTP/2 handshake is closed too.
    let mut silent = tokio::net::TcpStream::connect(&vowd.address)
        .await
        .expect("connect");
    silent
        .write_all(SILENT_CLIENT_PREFACE)
        .await
        .expect("send the preface");
    tokio::time::timeout(BOUND, frame_types_until_closed(&mut silent))
        .await
        .expect("vowd closes a silent connection in time");

    // A client reconnects on GOAWAY: calls across several ages all succeed.
    // A call can still race the close of a connection past its grace, so
    // the client retries as real ones do (an idempotency key makes the
    // Submit safe to repeat).
    let client = vow_client::Client::connect(&vowd.url())
        .await
        .expect("connect");
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_secs(3) {
        round += 1;
        client
            .submit("echo")
            .idempotency_key(&format!("across-ages-{round}"))
            .send()
            .await
            .expect("a submit across connection ages");
    }
}

/// Opens `streams` streams on one connection, resetting each right after
/// its HEADERS; returns how many were sent and whether vowd closed the
/// connection (GOAWAY) before the end.
async fn open_and_reset(address: &str, streams: usize) -> (usize, bool) {
    let tcp = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    let (mut client, connection) = h2::client::handshake(tcp).await.expect("an h2 handshake");
    let mut driver = tokio::spawn(connection);
    let mut sent = 0;
    for _ in 0..streams {
        client = match tokio::time::timeout(BOUND, client.ready()).await {
            Ok(Ok(client)) => client,
            Ok(Err(_)) => return (sent, true),
            Err(_) => panic!("no stream capacity within {BOUND:?}"),
        };
        let request = http::Request::post(format!("http://{address}/vow.v1.TaskService/Await"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .expect("a request");
        let Ok((_response, mut stream)) = client.send_request(request, false) else {
            return (sent, true);
        };
        stream.send_reset(h2::Reason::CANCEL);
        sent += 1;
        if sent % 64 == 0 {
            tokio::task::yield_now().await;
        }
    }
    drop(client);
    let closed = tokio::time::timeout(Duration::from_secs(2), &mut driver)
        .await
        .is_ok_and(|ended| matches!(ended, Ok(Err(_))));
    driver.abort();
    (sent, closed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_floods_leave_vowd_serving_with_bounded_memory() {
    const STREAMS: usize = 20_000;
    let vowd = Vowd::start(&[]);
    let client = common::client_without_retries(&vowd).await;
    client.submit("echo").send().await.expect("a warm-up call");
    let rss_before = common::rss_kib(vowd.child.id());

    let (mut total, mut closed_by_vowd, mut connections) = (0, 0, 0);
    while total < STREAMS {
        let (sent, closed) = open_and_reset(&vowd.address, STREAMS - total).await;
        total += sent;
        connections += 1;
        closed_by_vowd += usize::from(closed);
        assert!(connections < STREAMS, "no stream gets through");
    }
    // h2 answers more than --http2-max-pending-accept-reset-streams (20)
    // resets before the server reads the streams with GOAWAY.
    assert!(
        closed_by_vowd > 0,
        "{total} resets over {connections} connections and vowd closed none"
    );

    let started = Instant::now();
    let submitted = tokio::time::timeout(BOUND, client.submit("echo").send())
        .await
        .expect("a call after the flood, in time")
        .expect("vowd still serves after the flood");
    assert!(!submitted.task.id.is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "served promptly"
    );
    let grown_mib = (common::rss_kib(vowd.child.id()) as f64 - rss_before as f64) / 1024.0;
    assert!(
        grown_mib < 64.0,
        "vowd grew by {grown_mib:.0} MiB over {total} reset streams"
    );
    eprintln!(
        "rapid reset: {total} streams over {connections} connections, {closed_by_vowd} closed by vowd, rss +{grown_mib:.1} MiB"
    );
}
