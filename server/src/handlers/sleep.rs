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
/// Progress reports per sleep unless the input says otherwise.
const DEFAULT_STEPS: u32 = 10;
const MAX_STEPS: u64 = 1_000_000;

/// Sleeps `{"ms": N}` milliseconds, reporting progress in `"steps"` equal
/// steps (10 by default), and stops at once when cancelled.
pub struct SleepHandler;

impl SleepHandler {
    fn plan(input: &Payload) -> Result<(Duration, u32), String> {
        let duration = Self::duration(input)?;
        let steps = match field(input, "steps") {
            None => DEFAULT_STEPS,
            Some(value) => value
                .as_u64()
                .filter(|steps| (1..=MAX_STEPS).contains(steps))
                .ok_or(format!(
                    "\"steps\" must be an integer from 1 to {MAX_STEPS}"
                ))? as u32,
        };
        Ok((duration, steps))
    }

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
        let (total, steps) = Self::plan(&context.input)
            .map_err(|message| TaskError::new(ErrorCode::InvalidArgument, message))?;
        let step = total / steps;
        let started = tokio::time::Instant::now();
        for done in 1..=steps {
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
            let percent = (u64::from(done) * 100 / u64::from(steps)) as f32;
            context.report_progress(percent, format!("slept {} ms", (step * done).as_millis()));
            // Let the attempt loop see each report, even when steps are due at once.
            tokio::task::yield_now().await;
        }
        Ok(Payload::json(
            json!({ "slept_ms": total.as_millis() as u64 }),
        ))
    }

    fn validate_input(&self, input: &Payload) -> Result<(), String> {
        Self::plan(input).map(drop)
    }
}
