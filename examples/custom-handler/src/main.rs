//! Serves a custom task kind through the `vow-server` library: a `wordcount`
//! handler next to the built-in ones, on the same gRPC API.
//!
//! ```text
//! cargo run -p vow-example-custom-handler -- --listen 127.0.0.1:50052
//! grpcurl -plaintext -d '{"kind":"wordcount","input":{"json":{"text":"to be or not to be"}}}' \
//!     127.0.0.1:50052 vow.v1.TaskService/Run
//! ```

use async_trait::async_trait;
use clap::Parser;
use serde_json::json;
use vow_server::{
    Config,
    engine::{
        Handler, HandlerContext,
        task::{ErrorCode, Payload, TaskError},
    },
    handlers::builtin_registry,
};

/// Counts the words of `{"text": "..."}`, reporting progress as it goes.
struct WordCount;

#[async_trait]
impl Handler for WordCount {
    async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError> {
        let text = Self::text(&context.input)
            .map_err(|problem| TaskError::new(ErrorCode::InvalidArgument, problem))?;
        let lines: Vec<&str> = text.lines().collect();
        let mut words = 0;
        for (index, line) in lines.iter().enumerate() {
            if context.is_cancelled() {
                return Err(TaskError::new(ErrorCode::Cancelled, "stopped counting"));
            }
            words += line.split_whitespace().count();
            context.report_progress(
                100.0 * (index + 1) as f32 / lines.len() as f32,
                format!("line {}", index + 1),
            );
        }
        Ok(Payload::json(
            json!({ "words": words, "lines": lines.len() }),
        ))
    }

    fn validate_input(&self, input: &Payload) -> Result<(), String> {
        Self::text(input).map(drop)
    }
}

impl WordCount {
    fn text(input: &Payload) -> Result<&str, String> {
        input
            .as_json()
            .and_then(|value| value.get("text"))
            .and_then(|text| text.as_str())
            .ok_or_else(|| "input must be {\"text\": \"...\"}".to_owned())
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let mut handlers = builtin_registry();
    handlers.register("wordcount", WordCount);
    let listeners = vow_server::Listeners::bind(&config).await?;
    let storage = vow_server::Storage::open(&config).await?;
    println!("vowd listening on {}", listeners.grpc.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    vow_server::serve(config, listeners, storage, handlers, shutdown).await
}
