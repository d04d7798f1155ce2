//! Retry policy: which failures are retried, and how long to wait before the
//! next attempt (exponential backoff with jitter). Pure functions of their
//! inputs, so the arithmetic is tested without clocks.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::task::{ErrorCode, RetryOverrides, TaskError};

/// The retry policy in force for one task: the submitter's overrides over the
/// server's defaults.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts in all, the first included.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub backoff_multiplier: f64,
    /// Fraction in [0, 1] by which each wait is randomly spread.
    pub jitter: f64,
    pub non_retryable_reasons: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            backoff_multiplier: 2.0,
            jitter: 0.2,
            non_retryable_reasons: Vec::new(),
        }
    }
}

impl RetryPolicy {
    /// Applies a submitter's overrides on top of this policy.
    pub fn with_overrides(&self, overrides: &RetryOverrides) -> Self {
        let mut non_retryable_reasons = self.non_retryable_reasons.clone();
        non_retryable_reasons.extend(overrides.non_retryable_reasons.iter().cloned());
        Self {
            max_attempts: overrides.max_attempts.unwrap_or(self.max_attempts),
            initial_backoff: overrides.initial_backoff.unwrap_or(self.initial_backoff),
            max_backoff: overrides.max_backoff.unwrap_or(self.max_backoff),
            backoff_multiplier: overrides
                .backoff_multiplier
                .unwrap_or(self.backoff_multiplier),
            jitter: overrides.jitter.unwrap_or(self.jitter),
            non_retryable_reasons,
        }
    }

    /// Whether a failed attempt may be followed by another, attempts aside.
    pub fn is_retryable(&self, error: &TaskError) -> bool {
        is_retryable_code(error.code) && !self.non_retryable_reasons.contains(&error.reason)
    }

    /// Wait before the attempt after `failed_attempt` (1-based), with
    /// `unit_random` in [0, 1) supplying the jitter.
    pub fn backoff(&self, failed_attempt: u32, unit_random: f64) -> Duration {
        let exponent = failed_attempt.saturating_sub(1).min(1_000) as i32;
        let base = self.initial_backoff.as_secs_f64() * self.backoff_multiplier.powi(exponent);
        let capped = base.min(self.max_backoff.as_secs_f64());
        let spread = 1.0 + self.jitter * (2.0 * unit_random - 1.0);
        let jittered = (capped * spread).clamp(0.0, self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(jittered)
    }
}

/// DESIGN.md's classification: transient conditions are retried, mistakes and
/// refusals are not. Codes it does not name are treated as not retryable.
pub fn is_retryable_code(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::Unavailable
            | ErrorCode::DeadlineExceeded
            | ErrorCode::ResourceExhausted
            | ErrorCode::Aborted
            | ErrorCode::Internal
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            backoff_multiplier: 2.0,
            jitter: 0.0,
            non_retryable_reasons: vec!["QUOTA_GONE".into()],
        }
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let waits: Vec<u128> = (1..=6)
            .map(|attempt| policy().backoff(attempt, 0.5).as_millis())
            .collect();
        assert_eq!(waits, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_spreads_within_its_fraction() {
        let jittery = RetryPolicy {
            jitter: 0.2,
            ..policy()
        };
        assert_eq!(jittery.backoff(2, 0.0).as_millis(), 160);
        assert_eq!(jittery.backoff(2, 0.5).as_millis(), 200);
        assert!(jittery.backoff(2, 0.999_999).as_millis() <= 240);
        // Jitter never pushes a wait past the cap.
        assert_eq!(jittery.backoff(9, 0.999_999), Duration::from_secs(1));
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        assert_eq!(policy().backoff(u32::MAX, 0.5), Duration::from_secs(1));
    }

    #[test]
    fn classification_follows_the_design() {
        for code in [
            ErrorCode::Unavailable,
            ErrorCode::DeadlineExceeded,
            ErrorCode::ResourceExhausted,
            ErrorCode::Aborted,
            ErrorCode::Internal,
        ] {
            assert!(
                policy().is_retryable(&TaskError::new(code, "x")),
                "{code:?}"
            );
        }
        for code in [
            ErrorCode::InvalidArgument,
            ErrorCode::FailedPrecondition,
            ErrorCode::NotFound,
            ErrorCode::PermissionDenied,
            ErrorCode::Unimplemented,
            ErrorCode::Cancelled,
        ] {
            assert!(
                !policy().is_retryable(&TaskError::new(code, "x")),
                "{code:?}"
            );
        }
    }

    #[test]
    fn non_retryable_reasons_override_the_code() {
        let error = TaskError::new(ErrorCode::Unavailable, "x").with_reason("QUOTA_GONE");
        assert!(!policy().is_retryable(&error));
    }

    #[test]
    fn overrides_replace_only_what_they_set() {
        let overrides = RetryOverrides {
            max_attempts: Some(1),
            jitter: Some(0.5),
            ..RetryOverrides::default()
        };
        let merged = policy().with_overrides(&overrides);
        assert_eq!(merged.max_attempts, 1);
        assert_eq!(merged.jitter, 0.5);
        assert_eq!(merged.initial_backoff, policy().initial_backoff);
    }
}
