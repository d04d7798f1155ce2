//! An OTLP/gRPC trace sink for benchmarks: the receiver of tests/telemetry.rs,
//! counting spans instead of keeping them, so `vowd` can export at full load
//! without an external collector. Prints its address, then the running span
//! count once a second while it changes; stops on Ctrl-C or SIGTERM.
//!
//!     cargo run --release --example otlp_sink -- [ADDRESS]   # default 127.0.0.1:4317
//!     OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 vowd ...

#[path = "../tests/common/otlp.rs"]
mod otlp;

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:4317".into());
    let receiver = otlp::OtlpReceiver::start_counting(&address).await;
    println!("otlp sink on {}", receiver.endpoint());
    let mut terminate = signal(SignalKind::terminate())?;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let mut reported = 0;
    loop {
        tokio::select! {
            _ = ticks.tick() => {
                let count = receiver.span_count();
                if count != reported {
                    println!("spans {count} requests {}", receiver.request_count());
                    reported = count;
                }
            }
            _ = tokio::signal::ctrl_c() => break,
            _ = terminate.recv() => break,
        }
    }
    println!(
        "total spans {} requests {}",
        receiver.span_count(),
        receiver.request_count()
    );
    Ok(())
}
