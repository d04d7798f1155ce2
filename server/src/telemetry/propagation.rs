//! W3C trace context (`traceparent`, `tracestate`) and `baggage` across
//! process boundaries: read from gRPC metadata, stored on tasks, and turned
//! back into parent contexts and links.
//!
//! `traceparent` is read and written here rather than through the SDK's
//! `TraceContextPropagator`: each task's context is written once and read
//! back for its attempts and every Await link, and the propagator's `Vec` of
//! parts, radix parsing, `format!` and wrapping `Context` made that about
//! 2 % of vowd's CPU per task. Baggage still goes through the SDK.

use std::str::FromStr;

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use opentelemetry_sdk::{
    propagation::{BaggagePropagator, TraceContextPropagator},
    trace::{IdGenerator, RandomIdGenerator},
};
use serde::{Deserialize, Serialize};

/// W3C trace context as it travels in headers and is stored with a task:
/// the submitter's, or an attempt's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: String,
    pub baggage: String,
}

impl TraceContext {
    /// The 32-hex-digit trace id of a well-formed `traceparent`.
    pub fn trace_id(&self) -> Option<&str> {
        trace_id_of(&self.traceparent)
    }

    /// The context of a child span with id `span_id` (16 hex digits come
    /// from it): the same trace, flags and state. A context without a
    /// well-formed `traceparent` is returned as it is.
    pub fn child(&self, span_id: u64) -> TraceContext {
        let parts: Vec<&str> = self.traceparent.split('-').collect();
        let [version, _, _, flags] = parts.as_slice() else {
            return self.clone();
        };
        let Some(trace_id) = self.trace_id() else {
            return self.clone();
        };
        // A span id of zero is invalid.
        let span_id = span_id.max(1);
        TraceContext {
            traceparent: format!("{version}-{trace_id}-{span_id:016x}-{flags}"),
            tracestate: self.tracestate.clone(),
            baggage: self.baggage.clone(),
        }
    }
}

/// The 32-hex-digit trace id of a well-formed W3C `traceparent`.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let _version = parts.next()?;
    let trace_id = parts.next()?;
    let valid = trace_id.len() == 32
        && trace_id.bytes().all(|byte| byte.is_ascii_hexdigit())
        && trace_id.bytes().any(|byte| byte != b'0');
    valid.then_some(trace_id)
}

/// The standard propagators: trace context and baggage.
pub fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

/// Length of a version-00 `traceparent`: `vv-` 32 hex `-` 16 hex `-ff`.
const TRACEPARENT_LEN: usize = 55;

/// The span context a W3C `traceparent` and `tracestate` name, if the
/// `traceparent` is well formed and names a valid span: lowercase hex of
/// the exact lengths, version `ff` refused, a later version's extra fields
/// allowed after the flags. Only the sampled flag is kept; a malformed
/// `tracestate` is dropped, as the SDK's propagator does.
pub fn parse_traceparent(traceparent: &str, tracestate: &str) -> Option<SpanContext> {
    let header = traceparent.trim().as_bytes();
    let (fixed, extra) = header.split_at_checked(TRACEPARENT_LEN)?;
    if fixed[2] != b'-' || fixed[35] != b'-' || fixed[52] != b'-' {
        return None;
    }
    let [version] = lowercase_hex::<1>(&fixed[0..2])?;
    let extra_allowed = version != 0 && extra.first().is_none_or(|&byte| byte == b'-');
    if version == 0xff || !(extra.is_empty() || extra_allowed) {
        return None;
    }
    let trace_id = TraceId::from_bytes(lowercase_hex(&fixed[3..35])?);
    let span_id = SpanId::from_bytes(lowercase_hex(&fixed[36..52])?);
    let [flags] = lowercase_hex::<1>(&fixed[53..55])?;
    let trace_state = if tracestate.is_empty() {
        TraceState::NONE
    } else {
        TraceState::from_str(tracestate).unwrap_or_default()
    };
    let span_context = SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags) & TraceFlags::SAMPLED,
        true,
        trace_state,
    );
    span_context.is_valid().then_some(span_context)
}

/// `N` bytes from `2 * N` lowercase hex digits.
fn lowercase_hex<const N: usize>(digits: &[u8]) -> Option<[u8; N]> {
    if digits.iter().any(u8::is_ascii_uppercase) {
        return None;
    }
    let mut bytes = [0; N];
    hex::decode_to_slice(digits, &mut bytes).ok()?;
    Some(bytes)
}

/// The version-00 `traceparent` of `span_context`, as the SDK's propagator
/// writes it.
pub fn traceparent_of(span_context: &SpanContext) -> String {
    let mut header = [0; TRACEPARENT_LEN];
    let flags = (span_context.trace_flags() & TraceFlags::SAMPLED).to_u8();
    header[..3].copy_from_slice(b"00-");
    header[35] = b'-';
    header[52] = b'-';
    let fits = "two hex digits per byte fit each field";
    hex::encode_to_slice(span_context.trace_id().to_bytes(), &mut header[3..35]).expect(fits);
    hex::encode_to_slice(span_context.span_id().to_bytes(), &mut header[36..52]).expect(fits);
    hex::encode_to_slice([flags], &mut header[53..55]).expect(fits);
    String::from_utf8(header.to_vec()).expect("hex digits and dashes are ASCII")
}

/// A context whose remote parent is `span_context`, or an empty one.
fn remote_context(span_context: Option<SpanContext>) -> Context {
    match span_context {
        Some(span_context) => Context::new().with_remote_span_context(span_context),
        None => Context::new(),
    }
}

/// Reads propagation headers from HTTP/2 (gRPC) headers.
pub struct HeaderExtractor<'a>(pub &'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The caller's context from request headers.
pub fn extract(headers: &http::HeaderMap) -> Context {
    let extractor = HeaderExtractor(headers);
    // Each header lookup hashes its name: calls without a context (most
    // of them) pay for one.
    let span_context = extractor.get("traceparent").and_then(|traceparent| {
        parse_traceparent(traceparent, extractor.get("tracestate").unwrap_or_default())
    });
    with_baggage(remote_context(span_context), &extractor)
}

/// The context of a task's submitter, as stored.
pub fn context_of(trace: &TraceContext) -> Context {
    with_baggage(remote_context(span_context_of(trace)), trace)
}

/// `context` with the baggage `extractor` carries, if any. Few calls carry
/// baggage: the others skip the SDK's propagator and its copy of `context`.
fn with_baggage(context: Context, extractor: &dyn Extractor) -> Context {
    if extractor.get("baggage").is_some() {
        BaggagePropagator::new().extract_with_context(&context, extractor)
    } else {
        context
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        let value = match key {
            "traceparent" => &self.traceparent,
            "tracestate" => &self.tracestate,
            "baggage" => &self.baggage,
            _ => return None,
        };
        (!value.is_empty()).then_some(value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        ["traceparent", "tracestate", "baggage"]
            .into_iter()
            .filter(|key| self.get(key).is_some())
            .collect()
    }
}

/// The span context stored on a task, if it names a valid span.
pub fn span_context_of(trace: &TraceContext) -> Option<SpanContext> {
    parse_traceparent(&trace.traceparent, &trace.tracestate)
}

impl Injector for TraceContext {
    fn set(&mut self, key: &str, value: String) {
        match key {
            "traceparent" => self.traceparent = value,
            "tracestate" => self.tracestate = value,
            "baggage" => self.baggage = value,
            _ => {}
        }
    }
}

/// The context to store on a task submitted now: the current span (the
/// Submit RPC's, a child of the caller's), so attempts become its children.
/// Without a valid current span (spans are not exported, or the RPC has
/// none), the caller's context as it came; without one of those either, a
/// new trace, so that every task has a trace id to search its logs by.
pub fn current_or(incoming: TraceContext) -> TraceContext {
    if crate::telemetry::exporting() {
        let context = Context::current();
        let span = context.span();
        let span_context = span.span_context();
        if span_context.is_valid() {
            let mut stored = TraceContext {
                traceparent: traceparent_of(span_context),
                tracestate: span_context.trace_state().header(),
                baggage: String::new(),
            };
            BaggagePropagator::new().inject_context(&context, &mut stored);
            return stored;
        }
    }
    if incoming.trace_id().is_some() {
        return incoming;
    }
    let ids = RandomIdGenerator::default();
    let made_up = SpanContext::new(
        ids.new_trace_id(),
        ids.new_span_id(),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    let traceparent = traceparent_of(&made_up);
    // The current RPC span stands for the span the task's context names.
    let span = tracing::Span::current();
    span.record("trace_id", &traceparent[3..35]);
    span.record("span_id", &traceparent[36..52]);
    TraceContext {
        traceparent,
        ..incoming
    }
}

/// A fresh 16-hex-digit span id, for spans that are logged but not exported.
pub fn new_span_id() -> String {
    hex::encode(RandomIdGenerator::default().new_span_id().to_bytes())
}

/// The context a handler runs in when spans are not exported: the
/// submitter's, with `span_id` (the attempt's, as logged) as the parent of
/// whatever the handler calls.
pub fn attempt_context(trace: &TraceContext, span_id: &str) -> Context {
    let submitter = context_of(trace);
    let parent = submitter.span().span_context().clone();
    match SpanId::from_hex(span_id) {
        Ok(span_id) if parent.is_valid() => submitter.with_remote_span_context(SpanContext::new(
            parent.trace_id(),
            span_id,
            parent.trace_flags(),
            false,
            parent.trace_state().clone(),
        )),
        _ => submitter,
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// What the SDK's propagator extracts from the same two headers.
    fn extracted_by_sdk(traceparent: &str, tracestate: &str) -> Option<SpanContext> {
        let headers = HashMap::from([
            ("traceparent".to_owned(), traceparent.to_owned()),
            ("tracestate".to_owned(), tracestate.to_owned()),
        ]);
        let context = TraceContextPropagator::new().extract(&headers);
        let span_context = context.span().span_context().clone();
        span_context.is_valid().then_some(span_context)
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn well_formed_headers_read_as_the_sdk_reads_them() {
        let cases = [
            (format!("00-{TRACE}-{SPAN}-01"), ""),
            (format!("00-{TRACE}-{SPAN}-00"), "vendor=value"),
            (format!("00-{TRACE}-{SPAN}-03"), "a=1,b=2"),
            (format!("00-{TRACE}-{SPAN}-ff"), "not a tracestate"),
            (format!("  00-{TRACE}-{SPAN}-01 "), ""),
            (format!("01-{TRACE}-{SPAN}-01"), ""),
            (format!("cc-{TRACE}-{SPAN}-01-what-the-future-holds"), ""),
        ];
        for (traceparent, tracestate) in cases {
            let ours = parse_traceparent(&traceparent, tracestate);
            assert!(ours.is_some(), "{traceparent:?} is well formed");
            assert_eq!(
                ours,
                extracted_by_sdk(&traceparent, tracestate),
                "{traceparent:?}"
            );
        }
    }

    #[test]
    fn malformed_or_invalid_headers_name_no_span() {
        let zero_trace = "0".repeat(32);
        let zero_span = "0".repeat(16);
        let cases = [
            String::new(),
            "garbage".to_owned(),
            format!("00-{TRACE}-{SPAN}"),
            format!("00-{TRACE}-{SPAN}-01-extra"),
            format!("ff-{TRACE}-{SPAN}-01"),
            format!("01-{TRACE}-{SPAN}-01extra"),
            format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
            format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
            format!("00-{TRACE}-{SPAN}-0A"),
            format!("00-{}-{SPAN}-01", &TRACE[1..]),
            format!("00-{TRACE}x-{SPAN}-01"),
            format!("00-{zero_trace}-{SPAN}-01"),
            format!("00-{TRACE}-{zero_span}-01"),
            format!("00_{TRACE}_{SPAN}_01"),
            format!("0g-{TRACE}-{SPAN}-01"),
        ];
        for traceparent in cases {
            assert_eq!(parse_traceparent(&traceparent, ""), None, "{traceparent:?}");
        }
    }

    #[test]
    fn written_headers_are_the_sdks_and_read_back() {
        let span_context = SpanContext::new(
            TraceId::from_hex(TRACE).unwrap(),
            SpanId::from_hex(SPAN).unwrap(),
            TraceFlags::SAMPLED,
            false,
            TraceState::from_str("vendor=value").unwrap(),
        );
        let mut by_sdk = TraceContext::default();
        TraceContextPropagator::new().inject_context(
            &Context::new().with_remote_span_context(span_context.clone()),
            &mut by_sdk,
        );
        assert_eq!(traceparent_of(&span_context), by_sdk.traceparent);
        let read_back = parse_traceparent(&by_sdk.traceparent, &by_sdk.tracestate).unwrap();
        assert_eq!(read_back.trace_id(), span_context.trace_id());
        assert_eq!(read_back.span_id(), span_context.span_id());
        assert_eq!(read_back.trace_state(), span_context.trace_state());
    }

    #[test]
    fn a_task_without_a_caller_context_gets_a_new_trace() {
        let made_up = current_or(TraceContext::default());
        let span_context = parse_traceparent(&made_up.traceparent, "").unwrap();
        assert_eq!(
            made_up.trace_id(),
            Some(span_context.trace_id().to_string().as_str())
        );
        assert!(span_context.is_sampled());
        assert_eq!(new_span_id().len(), 16);
    }
}
