use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;

use super::field;
use crate::engine::{
    handler::{Handler, HandlerContext},
    task::{ErrorCode, Payload, TaskError},
};

/// Longest sleep accepted, so a typo cannot park an executor slot for years.
const MAX_SLEEP: Duration = Duration::from_secs(24 * 60 * 60);
/// Progress reports per sleep.
const PROGRESS_STEPS: u32 = 10;

/// Sleeps `{"ms": N}` milliseconds, reporting progress in ten steps, and stops
/// at once when cancelled.
pub struct SleepHandler;

impl SleepHandler {
    fn duration(input: &Payload) -> Result<Duration, String> {
        let Some(value) = field(input, "ms") else {
            return Err("input must be a JSON object like {\"ms\": 250}".into());
        };
        let Some(millis) = value.as_u64() else {
            return Err("\"ms\" must be a non-negative integer".into());
        };
        let duration = Duration::from_millis(millis);
        if duration > MAX_SLEEP {
            return Err(format!("\"ms\" must be at most {}", MAX_SLEEP.as_millis()));
        }
        Ok(duration)
    }
}

#[async_trait]
impl Handler for SleepHandler {
    async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError> {
        let total = Self::duration(&context.input)
            .map_err(|message| TaskError::new(ErrorCode::InvalidArgument, message))?;
        let step = total / PROGRESS_STEPS;
        let started = tokio::time::Instant::now();
        for done in 1..=PROGRESS_STEPS {
            let step_end = started + step * done;
            tokio::select! {
                () = tokio::time::sleep_until(step_end) => {}
                () = context.cancelled() => {
                    let slept = started.elapsed().as_millis();
                    return Err(TaskError::new(
                        ErrorCode::Cancelled,
                        format!("sleep interrupted after {slept} ms"),
                    )
                    .with_reason("SLEEP_INTERRUPTED"));
                }
            }
            let percent = (done * 100 / PROGRESS_STEPS) as f32;
            context.report_progress(percent, format!("slept {} ms", (step * done).as_millis()));
        }
        Ok(Payload::json(
            json!({ "slept_ms": total.as_millis() as u64 }),
        ))
    }

    fn validate_input(&self, input: &Payload) -> Result<(), String> {
        Self::duration(input).map(drop)
    }
}
