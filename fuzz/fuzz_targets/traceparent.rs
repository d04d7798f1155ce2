//! The W3C `traceparent`/`tracestate` parser vowd uses instead of the
//! SDK's propagator: it must read every pair of headers exactly as the
//! SDK's `TraceContextPropagator` reads them (same span or none, same
//! sampled flag, same trace state), write what it reads back unchanged,
//! and derive child contexts that stay in the same trace.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{SpanContext, TraceContextExt},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use vow_server::fuzzing::{TraceContext, parse_traceparent, trace_id_of, traceparent_of};

/// Whether a header is well formed as the spec writes it: four fields of
/// 2, 32, 16 and 2 lowercase hex digits, a version other than `ff`, and
/// more fields only after a later version's flags.
fn well_formed_by_the_spec(traceparent: &str) -> bool {
    let parts: Vec<&str> = traceparent.trim().split('-').collect();
    let lowercase_hex = |part: &str, length: usize| {
        part.len() == length
            && part
                .bytes()
                .all(|byte| matches!(byte, b'0'..=b'9' | b'a'..=b'f'))
    };
    parts.len() >= 4
        && lowercase_hex(parts[0], 2)
        && lowercase_hex(parts[1], 32)
        && lowercase_hex(parts[2], 16)
        && lowercase_hex(parts[3], 2)
        && parts[0] != "ff"
        && (parts.len() == 4 || parts[0] != "00")
}

fn extracted_by_sdk(traceparent: &str, tracestate: &str) -> Option<SpanContext> {
    let headers = HashMap::from([
        ("traceparent".to_owned(), traceparent.to_owned()),
        ("tracestate".to_owned(), tracestate.to_owned()),
    ]);
    let context = TraceContextPropagator::new().extract(&headers);
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

// The input: `traceparent`, a newline, `tracestate`, a newline, and the
// child's span id (up to 8 bytes, big-endian).
fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, '\n');
    let traceparent = parts.next().unwrap_or_default().to_owned();
    let tracestate = parts.next().unwrap_or_default().to_owned();
    let child_span_id = parts
        .next()
        .unwrap_or_default()
        .bytes()
        .take(8)
        .fold(0u64, |id, byte| id << 8 | u64::from(byte));
    let parsed = parse_traceparent(&traceparent, &tracestate);
    let by_sdk = extracted_by_sdk(&traceparent, &tracestate);
    match (&parsed, &by_sdk) {
        (Some(ours), Some(sdk)) => {
            assert_eq!(ours.trace_id(), sdk.trace_id(), "{traceparent:?}");
            assert_eq!(ours.span_id(), sdk.span_id(), "{traceparent:?}");
            assert_eq!(ours.is_sampled(), sdk.is_sampled(), "{traceparent:?}");
            assert_eq!(
                ours.trace_state().header(),
                sdk.trace_state().header(),
                "{tracestate:?}"
            );
        }
        (None, None) => {}
        // The SDK takes uppercase hex and flags of any length, which the
        // spec (and vowd) refuse.
        (None, Some(_)) if !well_formed_by_the_spec(&traceparent) => {}
        _ => panic!("{traceparent:?}: vowd reads {parsed:?}, the SDK {by_sdk:?}"),
    }
    let Some(span_context) = parsed else {
        return;
    };
    assert!(span_context.is_valid() && span_context.is_remote());
    let trace_id = span_context.trace_id().to_string();
    assert_eq!(trace_id_of(&traceparent), Some(trace_id.as_str()));

    // What vowd writes reads back as the same span.
    let written = traceparent_of(&span_context);
    let reread = parse_traceparent(&written, "").expect("vowd reads what it writes");
    assert_eq!(reread.trace_id(), span_context.trace_id());
    assert_eq!(reread.span_id(), span_context.span_id());
    assert_eq!(reread.trace_flags(), span_context.trace_flags());

    // A child stays in the trace and names its own span.
    let stored = TraceContext {
        traceparent: traceparent.clone(),
        tracestate: tracestate.clone(),
        baggage: String::new(),
    };
    let child = stored.child(child_span_id);
    assert_eq!(child.trace_id(), Some(trace_id.as_str()));
    if child.traceparent != traceparent {
        let child_context =
            parse_traceparent(&child.traceparent, &child.tracestate).expect("a child parses");
        assert_eq!(child_context.trace_id(), span_context.trace_id());
        assert_eq!(
            u64::from_be_bytes(child_context.span_id().to_bytes()),
            child_span_id.max(1)
        );
    }
});
