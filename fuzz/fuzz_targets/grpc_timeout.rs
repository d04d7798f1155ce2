//! The `grpc-timeout` header parser: never panics, accepts exactly what
//! the gRPC over HTTP/2 spec allows (1 to 8 digits and a unit), and a
//! parsed value is the amount times its unit, which a wait bound built
//! from it never exceeds.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use vow_server::fuzzing::{await_bound, parse_grpc_timeout, usable};

/// The spec's grammar, written the slow and obvious way.
fn reference(text: &str) -> Option<Duration> {
    let mut chars: Vec<char> = text.chars().collect();
    let unit = chars.pop()?;
    if chars.is_empty() || chars.len() > 8 || !chars.iter().all(char::is_ascii_digit) {
        return None;
    }
    let amount: u64 = chars.iter().collect::<String>().parse().ok()?;
    let nanos_per_unit: u128 = match unit {
        'H' => 3_600_000_000_000,
        'M' => 60_000_000_000,
        'S' => 1_000_000_000,
        'm' => 1_000_000,
        'u' => 1_000,
        'n' => 1,
        _ => return None,
    };
    let nanos = u128::from(amount) * nanos_per_unit;
    Some(Duration::new(
        u64::try_from(nanos / 1_000_000_000).ok()?,
        (nanos % 1_000_000_000) as u32,
    ))
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = parse_grpc_timeout(text);
    assert_eq!(parsed, reference(text), "{text:?}");
    if let Some(timeout) = parsed {
        // A wait never outlasts the call, nor the server's own bound.
        assert!(usable(timeout) <= timeout);
        let server_max = Duration::from_secs(300);
        let bound = await_bound(None, Some(timeout), server_max);
        assert!(bound <= timeout && bound <= server_max);
    }
});
