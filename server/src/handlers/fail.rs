use async_trait::async_trait;
use serde_json::json;

use super::field;
use crate::engine::{
    handler::{Handler, HandlerContext},
    task::{ErrorCode, Payload, TaskError},
};

/// Fails on purpose, to exercise retries and panics. Input:
/// `{"code": "UNAVAILABLE", "message": "...", "panic": false, "succeed_on_attempt": 0}`;
/// every field is optional. With `succeed_on_attempt = n > 0`, attempt n and
/// later succeed. With `panic`, the attempt panics instead of returning.
pub struct FailHandler;

struct FailPlan {
    code: ErrorCode,
    message: String,
    panic: bool,
    succeed_on_attempt: u32,
}

impl FailHandler {
    fn plan(input: &Payload) -> Result<FailPlan, String> {
        if !input
            .as_json()
            .is_some_and(|value| value.is_object() || value.is_null())
        {
            return Err("input must be a JSON object (or null)".into());
        }
        let code = match field(input, "code") {
            None => ErrorCode::Unavailable,
            Some(value) => value
                .as_str()
                .and_then(ErrorCode::from_name)
                .ok_or("\"code\" must be a gRPC code name such as \"UNAVAILABLE\"")?,
        };
        let message = match field(input, "message") {
            None => "failing on purpose".to_owned(),
            Some(value) => value
                .as_str()
                .ok_or("\"message\" must be a string")?
                .to_owned(),
        };
        let panic = match field(input, "panic") {
            None => false,
            Some(value) => value.as_bool().ok_or("\"panic\" must be a boolean")?,
        };
        let succeed_on_attempt = match field(input, "succeed_on_attempt") {
            None => 0,
            Some(value) => value
                .as_u64()
                .and_then(|attempt| u32::try_from(attempt).ok())
                .ok_or("\"succeed_on_attempt\" must be a non-negative integer")?,
        };
        Ok(FailPlan {
            code,
            message,
            panic,
            succeed_on_attempt,
        })
    }
}

#[async_trait]
impl Handler for FailHandler {
    async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError> {
        let plan = Self::plan(&context.input)
            .map_err(|message| TaskError::new(ErrorCode::InvalidArgument, message))?;
        if plan.succeed_on_attempt > 0 && context.attempt >= plan.succeed_on_attempt {
            return Ok(Payload::json(
                json!({ "succeeded_on_attempt": context.attempt }),
            ));
        }
        if plan.panic {
            panic!("{}", plan.message);
        }
        Err(TaskError::new(plan.code, plan.message))
    }

    fn validate_input(&self, input: &Payload) -> Result<(), String> {
        Self::plan(input).map(drop)
    }
}
