//! A hand-written tonic load loop, the yardstick for `vow bench`'s own
//! overhead: the plainest way to drive Submit+Await with N callers over M
//! connections, no histograms, no progress, no error accounting. If `vow
//! bench` drives a server as fast as this does, the load generator is not
//! what limits the numbers it reports.
//!
//!     cargo run --release -p vow-client --example tonic_loop -- ADDRESS [CALLERS] [CONNECTIONS] [SECONDS]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::time::Instant;
use tonic::transport::Endpoint;
use vow_client::proto::{self, task_service_client::TaskServiceClient};

const WARMUP: Duration = Duration::from_secs(2);

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let address = args.next().unwrap_or_else(|| "127.0.0.1:50051".into());
    let callers: usize = args.next().map_or(Ok(64), |text| text.parse())?;
    let connections: usize = args.next().map_or(Ok(4), |text| text.parse())?;
    let seconds: u64 = args.next().map_or(Ok(10), |text| text.parse())?;

    let endpoint = Endpoint::from_shared(format!("http://{address}"))?.tcp_nodelay(true);
    let mut channels = Vec::new();
    for _ in 0..connections {
        channels.push(endpoint.connect().await?);
    }
    let request = proto::SubmitRequest {
        kind: "echo".into(),
        input: Some(proto::Payload {
            data: Some(proto::payload::Data::Binary(vec![b'x'; 64])),
            content_type: String::new(),
        }),
        ..Default::default()
    };
    let start = Instant::now() + WARMUP;
    let end = start + Duration::from_secs(seconds);
    let completed = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for index in 0..callers {
        let mut client = TaskServiceClient::new(channels[index % connections].clone());
        let request = request.clone();
        let completed = Arc::clone(&completed);
        handles.push(tokio::spawn(async move {
            while Instant::now() < end {
                let submitted = client.submit(request.clone()).await.expect("submit");
                let id = submitted.into_inner().task.expect("a task").id;
                let awaited = client
                    .r#await(proto::AwaitRequest { id, timeout: None })
                    .await
                    .expect("await");
                assert!(awaited.into_inner().done);
                let now = Instant::now();
                if now >= start && now <= end {
                    completed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for handle in handles {
        handle.await?;
    }
    let count = completed.load(Ordering::Relaxed);
    println!(
        "{count} tasks in {seconds}s: {:.0} tasks/s",
        count as f64 / seconds as f64
    );
    Ok(())
}
