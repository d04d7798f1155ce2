//! Built-in task kinds that ship with `vowd`: `echo`, `sleep` and `fail`.
//! They double as examples of the `Handler` trait and as the tools the tests
//! and benchmarks use to exercise the engine.

mod echo;
mod fail;
mod sleep;

pub use echo::EchoHandler;
pub use fail::FailHandler;
pub use sleep::SleepHandler;

use crate::engine::handler::HandlerRegistry;

/// A registry with every built-in kind.
pub fn builtin_registry() -> HandlerRegistry {
    let mut registry = HandlerRegistry::new();
    registry
        .register("echo", EchoHandler)
        .register("sleep", SleepHandler)
        .register("fail", FailHandler);
    registry
}

/// Reads an optional JSON field of an object input.
fn field<'a>(input: &'a crate::engine::task::Payload, name: &str) -> Option<&'a serde_json::Value> {
    input.as_json().and_then(|value| value.get(name))
}
