//! The `--kinds-file` (TOML): per kind, whether workers run it and the
//! defaults of its tasks. Unknown keys and values out of range are refused
//! with the kind and the key named, so a typo never passes silently.
//!
//! ```toml
//! [kinds.resize]
//! remote = true
//! attempt_timeout = "30s"
//! retry = { max_attempts = 5, initial_backoff = "1s" }
//! ```

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::Deserialize;

use crate::engine::{KindSettings, task::RetryOverrides};

/// Longest backoff or timeout the file may set.
const MAX_DURATION: Duration = Duration::from_secs(24 * 60 * 60);
const MAX_ATTEMPTS: u32 = 100;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    kinds: BTreeMap<String, Kind>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kind {
    #[serde(default)]
    remote: bool,
    attempt_timeout: Option<String>,
    retry: Option<Retry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Retry {
    max_attempts: Option<u32>,
    initial_backoff: Option<String>,
    max_backoff: Option<String>,
    backoff_multiplier: Option<f64>,
    jitter: Option<f64>,
    #[serde(default)]
    non_retryable_reasons: Vec<String>,
}

/// Reads and checks a kinds file.
pub fn load(path: &Path) -> Result<BTreeMap<String, KindSettings>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read --kinds-file {}: {error}", path.display()))?;
    parse(&text).map_err(|problem| format!("--kinds-file {}: {problem}", path.display()))
}

/// Parses and checks the text of a kinds file.
pub fn parse(text: &str) -> Result<BTreeMap<String, KindSettings>, String> {
    let file: File = toml::from_str(text).map_err(|error| error.to_string())?;
    file.kinds
        .into_iter()
        .map(|(name, kind)| {
            let settings = kind
                .settings()
                .map_err(|(key, problem)| format!("[kinds.{name}] {key}: {problem}"))?;
            Ok((name, settings))
        })
        .collect()
}

impl Kind {
    fn settings(self) -> Result<KindSettings, (&'static str, String)> {
        let attempt_timeout = self
            .attempt_timeout
            .as_deref()
            .map(|text| positive_duration(text).map_err(|problem| ("attempt_timeout", problem)))
            .transpose()?;
        let retry = match self.retry {
            Some(retry) => retry.overrides()?,
            None => RetryOverrides::default(),
        };
        Ok(KindSettings {
            remote: self.remote,
            attempt_timeout,
            retry,
        })
    }
}

impl Retry {
    fn overrides(self) -> Result<RetryOverrides, (&'static str, String)> {
        if let Some(attempts) = self.max_attempts
            && !(1..=MAX_ATTEMPTS).contains(&attempts)
        {
            return Err((
                "retry.max_attempts",
                format!("must be from 1 to {MAX_ATTEMPTS}"),
            ));
        }
        let duration = |key: &'static str, text: Option<String>| {
            text.as_deref()
                .map(|text| positive_duration(text).map_err(|problem| (key, problem)))
                .transpose()
        };
        let initial_backoff = duration("retry.initial_backoff", self.initial_backoff)?;
        let max_backoff = duration("retry.max_backoff", self.max_backoff)?;
        if let (Some(initial), Some(max)) = (initial_backoff, max_backoff)
            && initial > max
        {
            return Err((
                "retry.initial_backoff",
                "must not exceed retry.max_backoff".into(),
            ));
        }
        if let Some(multiplier) = self.backoff_multiplier
            && !(1.0..=100.0).contains(&multiplier)
        {
            return Err(("retry.backoff_multiplier", "must be from 1 to 100".into()));
        }
        if let Some(jitter) = self.jitter
            && !(0.0..=1.0).contains(&jitter)
        {
            return Err(("retry.jitter", "must be from 0 to 1".into()));
        }
        Ok(RetryOverrides {
            max_attempts: self.max_attempts,
            initial_backoff,
            max_backoff,
            backoff_multiplier: self.backoff_multiplier,
            jitter: self.jitter,
            non_retryable_reasons: self.non_retryable_reasons,
        })
    }
}

fn positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|error| format!("{text:?} is not a duration like \"30s\" ({error})"))?;
    if duration.is_zero() || duration > MAX_DURATION {
        return Err(format!("{text:?} must be positive and at most 24h"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kind_with_defaults_parses() {
        let kinds = parse(
            r#"
            [kinds.resize]
            remote = true
            attempt_timeout = "30s"
            retry = { max_attempts = 5, initial_backoff = "1s", non_retryable_reasons = ["BAD_IMAGE"] }

            [kinds.sleep]
            attempt_timeout = "2m"
            "#,
        )
        .expect("valid");
        let resize = &kinds["resize"];
        assert!(resize.remote);
        assert_eq!(resize.attempt_timeout, Some(Duration::from_secs(30)));
        assert_eq!(resize.retry.max_attempts, Some(5));
        assert_eq!(resize.retry.initial_backoff, Some(Duration::from_secs(1)));
        assert_eq!(resize.retry.non_retryable_reasons, ["BAD_IMAGE"]);
        assert!(!kinds["sleep"].remote);
    }

    #[test]
    fn mistakes_name_the_kind_and_the_key() {
        for (text, expected) in [
            ("[kinds.a]\nremote = true\nmax_runing = 4", "max_runing"),
            (
                "[kinds.a]\nattempt_timeout = \"soon\"",
                "[kinds.a] attempt_timeout",
            ),
            (
                "[kinds.a]\nattempt_timeout = \"0s\"",
                "[kinds.a] attempt_timeout",
            ),
            (
                "[kinds.a]\nretry = { max_attempts = 0 }",
                "[kinds.a] retry.max_attempts",
            ),
            (
                "[kinds.a]\nretry = { jitter = 2.0 }",
                "[kinds.a] retry.jitter",
            ),
            (
                "[kinds.a]\nretry = { initial_backoff = \"2m\", max_backoff = \"1m\" }",
                "[kinds.a] retry.initial_backoff",
            ),
            ("[kind.a]\nremote = true", "kind"),
        ] {
            let problem = parse(text).expect_err(text);
            assert!(problem.contains(expected), "{text:?}: {problem}");
        }
    }
}
