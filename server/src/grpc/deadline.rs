//! The caller's deadline, read from the `grpc-timeout` header. tonic does not
//! hand handlers their deadline, and its own timeout answers CANCELLED, so
//! waits end a margin before the deadline and answer OK themselves.

use std::time::Duration;

use tonic::metadata::MetadataMap;

use crate::engine::EngineError;

const HEADER: &str = "grpc-timeout";
/// Least and most time kept between the end of a wait and the call deadline,
/// so the answer reaches the caller before its deadline fires.
const MIN_MARGIN: Duration = Duration::from_millis(5);
const MAX_MARGIN: Duration = Duration::from_millis(100);

/// The time left for this call, if the caller set a deadline.
pub fn call_timeout(metadata: &MetadataMap) -> Result<Option<Duration>, EngineError> {
    let Some(value) = metadata.get(HEADER) else {
        return Ok(None);
    };
    let text = value.to_str().unwrap_or("");
    parse_grpc_timeout(text).map(Some).ok_or_else(|| {
        EngineError::invalid(
            HEADER,
            "must be 1 to 8 digits followed by a unit (H, M, S, m, u or n), as gRPC specifies",
        )
    })
}

/// Parses `TimeoutValue TimeoutUnit` of the gRPC over HTTP/2 spec.
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    if text.len() < 2 || !text.is_ascii() {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

/// The part of a call's remaining time a wait may use: all of it but a
/// margin of a tenth, kept between 5 ms and 100 ms.
pub fn usable(call_timeout: Duration) -> Duration {
    let margin = (call_timeout / 10).clamp(MIN_MARGIN, MAX_MARGIN);
    call_timeout.saturating_sub(margin)
}

/// How long an Await may wait: min(requested timeout, call deadline - margin,
/// server maximum).
pub fn await_bound(
    requested: Option<Duration>,
    call_timeout: Option<Duration>,
    server_max: Duration,
) -> Duration {
    [requested, call_timeout.map(usable), Some(server_max)]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(server_max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("4S"), Some(Duration::from_secs(4)));
        assert_eq!(parse_grpc_timeout("300m"), Some(Duration::from_millis(300)));
        assert_eq!(
            parse_grpc_timeout("99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(parse_grpc_timeout("0n"), Some(Duration::ZERO));
    }

    #[test]
    fn refuses_malformed_values() {
        for text in [
            "",
            "m",
            "10",
            "10x",
            "-1S",
            "123456789S",
            "1.5S",
            "1 S",
            "١S",
        ] {
            assert_eq!(parse_grpc_timeout(text), None, "{text:?}");
        }
    }

    #[test]
    fn malformed_headers_are_invalid_arguments() {
        let mut metadata = MetadataMap::new();
        metadata.insert(HEADER, "soon".parse().expect("ascii"));
        assert!(matches!(
            call_timeout(&metadata),
            Err(EngineError::InvalidArgument(_))
        ));
        assert_eq!(call_timeout(&MetadataMap::new()).ok(), Some(None));
    }

    #[test]
    fn waits_end_a_margin_before_the_call_deadline() {
        let max = Duration::from_secs(300);
        assert_eq!(
            await_bound(None, Some(Duration::from_millis(300)), max),
            Duration::from_millis(270)
        );
        assert_eq!(
            await_bound(None, Some(Duration::from_secs(60)), max),
            Duration::from_millis(59_900)
        );
        assert_eq!(
            await_bound(None, Some(Duration::from_millis(20)), max),
            Duration::from_millis(15)
        );
        assert_eq!(
            await_bound(
                Some(Duration::from_millis(50)),
                Some(Duration::from_secs(1)),
                max
            ),
            Duration::from_millis(50)
        );
        assert_eq!(await_bound(None, None, max), max);
        assert_eq!(
            await_bound(None, Some(Duration::from_millis(3)), max),
            Duration::ZERO
        );
    }
}
