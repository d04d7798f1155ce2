//! Checks a submit specification against the server's limits and the known
//! kinds, collecting every violation so a client can fix them all at once.

use std::time::{Duration, SystemTime};

use super::{
    EngineConfig,
    error::{EngineError, FieldViolation},
    handler::HandlerRegistry,
    kinds::Kinds,
    task::{SubmitSpec, TaskDeadline},
};

const MAX_KIND_LEN: usize = 128;
const MAX_LABELS: usize = 64;
const MAX_LABEL_KEY_LEN: usize = 63;
const MAX_LABEL_VALUE_LEN: usize = 255;
const MAX_IDEMPOTENCY_KEY_LEN: usize = 256;
const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -1000..=1000;
/// Furthest into the future a schedule or deadline may lie.
pub const MAX_HORIZON: Duration = Duration::from_secs(366 * 24 * 60 * 60);
/// Longest backoff, or retry delay an error asks for.
pub(crate) const MAX_BACKOFF: Duration = Duration::from_secs(24 * 60 * 60);
const MAX_MULTIPLIER: f64 = 100.0;

/// Validates a spec; `Ok` means the engine can accept it.
pub fn validate(
    spec: &SubmitSpec,
    config: &EngineConfig,
    kinds: &Kinds,
    handlers: &HandlerRegistry,
    now: SystemTime,
) -> Result<(), EngineError> {
    // Size first: an input over the limit is refused as such, whatever else is wrong.
    let input_len = spec.input.encoded_len();
    if input_len > config.max_input_bytes {
        return Err(EngineError::TooLarge {
            field: "input",
            size_bytes: input_len,
            limit_bytes: config.max_input_bytes,
        });
    }
    let mut violations = Vec::new();
    let mut violation = |field: &str, description: String| {
        violations.push(FieldViolation::new(field, description));
    };

    let known_kinds = || kinds.names();
    match kinds.get(&spec.kind) {
        _ if spec.kind.is_empty() => violation(
            "kind",
            format!("must name a task kind; known kinds: {}", known_kinds()),
        ),
        _ if spec.kind.len() > MAX_KIND_LEN => {
            violation("kind", format!("must be at most {MAX_KIND_LEN} bytes"))
        }
        None => violation(
            "kind",
            format!(
                "unknown kind {:?}; known kinds: {}",
                spec.kind,
                known_kinds()
            ),
        ),
        Some(_) => {
            if let Some(handler) = handlers.get(&spec.kind)
                && let Err(problem) = handler.validate_input(&spec.input)
            {
                violation("input", problem);
            }
        }
    }

    if spec.labels.len() > MAX_LABELS {
        violation("labels", format!("at most {MAX_LABELS} labels are allowed"));
    }
    for (key, value) in &spec.labels {
        let key_ok = !key.is_empty()
            && key.len() <= MAX_LABEL_KEY_LEN
            && key
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || b"_-./".contains(&byte));
        if !key_ok {
            violation(
                "labels",
                format!(
                    "key {key:?} must be 1 to {MAX_LABEL_KEY_LEN} characters of [A-Za-z0-9_-./]"
                ),
            );
        }
        if value.len() > MAX_LABEL_VALUE_LEN {
            violation(
                "labels",
                format!("value of {key:?} must be at most {MAX_LABEL_VALUE_LEN} bytes"),
            );
        }
    }

    if !PRIORITY_RANGE.contains(&spec.priority) {
        violation(
            "priority",
            format!(
                "must be between {} and {}",
                PRIORITY_RANGE.start(),
                PRIORITY_RANGE.end()
            ),
        );
    }
    if let Some(not_before) = spec.not_before
        && not_before > now + MAX_HORIZON
    {
        violation("not_before", "must be within a year from now".into());
    }

    let retry = &spec.retry;
    if let Some(max_attempts) = retry.max_attempts
        && max_attempts > config.max_attempts_limit
    {
        violation(
            "retry.max_attempts",
            format!("must be at most {}", config.max_attempts_limit),
        );
    }
    for (field, backoff) in [
        ("retry.initial_backoff", retry.initial_backoff),
        ("retry.max_backoff", retry.max_backoff),
    ] {
        if backoff.is_some_and(|backoff| backoff > MAX_BACKOFF) {
            violation(field, "must be at most 24h".into());
        }
    }
    if let (Some(initial), Some(max)) = (retry.initial_backoff, retry.max_backoff)
        && initial > max
    {
        violation(
            "retry.initial_backoff",
            "must not exceed retry.max_backoff".into(),
        );
    }
    if let Some(multiplier) = retry.backoff_multiplier
        && !(1.0..=MAX_MULTIPLIER).contains(&multiplier)
    {
        violation(
            "retry.backoff_multiplier",
            format!("must be between 1 and {MAX_MULTIPLIER}"),
        );
    }
    if let Some(jitter) = retry.jitter
        && !(0.0..=1.0).contains(&jitter)
    {
        violation("retry.jitter", "must be between 0 and 1".into());
    }

    if let Some(timeout) = spec.attempt_timeout
        && (timeout.is_zero() || timeout > MAX_HORIZON)
    {
        violation(
            "attempt_timeout",
            "must be positive and at most a year".into(),
        );
    }
    match spec.deadline {
        Some(TaskDeadline::At(deadline)) if deadline <= now => {
            violation("deadline", "has already passed".into());
        }
        Some(TaskDeadline::At(deadline)) if deadline > now + MAX_HORIZON => {
            violation("deadline", "must be within a year from now".into());
        }
        Some(TaskDeadline::After(ttl)) if ttl.is_zero() || ttl > MAX_HORIZON => {
            violation("ttl", "must be positive and at most a year".into());
        }
        _ => {}
    }
    // PostgreSQL's text cannot hold a NUL.
    if let Some(key) = &spec.idempotency_key
        && (key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || key.contains('\0'))
    {
        violation(
            "idempotency_key",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes, without NUL"),
        );
    }

    if violations.is_empty() {
        Ok(())
    } else {
        Err(EngineError::InvalidArgument(violations))
    }
}
