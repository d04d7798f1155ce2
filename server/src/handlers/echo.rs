use async_trait::async_trait;

use crate::engine::{
    handler::{Handler, HandlerContext},
    task::{Payload, TaskError},
};

/// Returns its input as its output.
pub struct EchoHandler;

#[async_trait]
impl Handler for EchoHandler {
    async fn run(&self, context: HandlerContext) -> Result<Payload, TaskError> {
        Ok(Payload::clone(&context.input))
    }
}
