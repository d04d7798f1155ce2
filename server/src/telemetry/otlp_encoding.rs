//! Batches of ended spans written straight to the bytes of an OTLP
//! `ExportTraceServiceRequest`.
//!
//! opentelemetry-otlp first deep-copies each batch (for retries), converts
//! it to opentelemetry-proto structs (an allocation per id, name, key and
//! value, string values formatted through `Display`), and then prost
//! encodes those, recomputing every nested message's length once per level
//! it is nested in. For vowd's three spans per task that came to 21,800
//! instructions per task, more than the whole 10 % budget for exporting
//! (BENCHMARKS.md, "Tracing overhead"). Here each span's length is worked
//! out once and its fields are written from the `SpanData` as they are,
//! into one buffer sized exactly; a retry resends the same bytes.
//!
//! The message is the one opentelemetry-proto's conversion and prost would
//! produce: the tests decode both and compare them field for field.

use bytes::{BufMut, Bytes, BytesMut};
use opentelemetry::{
    Array, InstrumentationScope, KeyValue, StringValue, Value,
    trace::{Event, Link, SpanContext, SpanId, SpanKind, Status},
};
use opentelemetry_sdk::{Resource, trace::SpanData};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

/// `Span.flags` bit: whether the parent's remoteness is known (it always
/// is here).
const CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
/// `Span.flags` bit: the parent (or linked span) is remote.
const CONTEXT_IS_REMOTE: u32 = 0x200;

/// The `Resource` message of every request, encoded once.
#[derive(Debug, Default, Clone)]
pub struct EncodedResource {
    body: Vec<u8>,
    schema_url: String,
}

impl EncodedResource {
    pub fn new(resource: &Resource) -> Self {
        let attributes: Vec<KeyValue> = resource
            .iter()
            .map(|(key, value)| KeyValue::new(key.clone(), value.clone()))
            .collect();
        let mut body = Vec::with_capacity(attributes_len(1, &attributes));
        write_attributes(&mut body, 1, &attributes);
        Self {
            body,
            schema_url: resource.schema_url().unwrap_or_default().to_owned(),
        }
    }
}

/// The encoded `ExportTraceServiceRequest` carrying `spans`: one
/// `ResourceSpans`, with a `ScopeSpans` per instrumentation scope in the
/// order the scopes first appear.
pub fn export_request(resource: &EncodedResource, spans: &[SpanData]) -> Bytes {
    let span_lens: Vec<usize> = spans.iter().map(span_len).collect();
    let scopes = group_by_scope(spans);
    let scope_spans_lens: Vec<usize> = scopes
        .iter()
        .map(|scope| scope_spans_len(scope, &span_lens))
        .collect();
    let resource_spans_len = field_len(1, resource.body.len())
        + repeated_len(2, scope_spans_lens.iter().copied())
        + string_len(3, &resource.schema_url);
    let request_len = field_len(1, resource_spans_len);

    let mut buffer = BytesMut::with_capacity(request_len);
    let out = &mut buffer;
    write_len_prefix(out, 1, resource_spans_len);
    write_len_prefix(out, 1, resource.body.len());
    out.put_slice(&resource.body);
    for (scope, &len) in scopes.iter().zip(&scope_spans_lens) {
        write_len_prefix(out, 2, len);
        write_len_prefix(out, 1, scope.scope_len);
        write_scope(out, scope.scope);
        for &index in &scope.spans {
            write_len_prefix(out, 2, span_lens[index]);
            write_span(out, &spans[index]);
        }
        write_string(out, 3, scope.scope.schema_url().unwrap_or_default());
    }
    write_string(out, 3, &resource.schema_url);
    debug_assert_eq!(buffer.len(), request_len);
    buffer.freeze()
}

/// The spans of one instrumentation scope, by index into the batch.
struct ScopeGroup<'a> {
    scope: &'a InstrumentationScope,
    scope_len: usize,
    spans: Vec<usize>,
}

fn group_by_scope(spans: &[SpanData]) -> Vec<ScopeGroup<'_>> {
    let mut groups: Vec<ScopeGroup<'_>> = Vec::new();
    for (index, span) in spans.iter().enumerate() {
        let scope = &span.instrumentation_scope;
        // A batch holds one or two scopes: a scan beats hashing each span's.
        match groups.iter_mut().find(|group| group.scope == scope) {
            Some(group) => group.spans.push(index),
            None => groups.push(ScopeGroup {
                scope,
                scope_len: scope_len(scope),
                spans: vec![index],
            }),
        }
    }
    groups
}

fn scope_spans_len(group: &ScopeGroup<'_>, span_lens: &[usize]) -> usize {
    field_len(1, group.scope_len)
        + repeated_len(2, group.spans.iter().map(|&index| span_lens[index]))
        + string_len(3, group.scope.schema_url().unwrap_or_default())
}

fn scope_len(scope: &InstrumentationScope) -> usize {
    string_len(1, scope.name())
        + string_len(2, scope.version().unwrap_or_default())
        + repeated_len(3, scope.attributes().map(key_value_len))
}

fn write_scope(out: &mut impl BufMut, scope: &InstrumentationScope) {
    write_string(out, 1, scope.name());
    write_string(out, 2, scope.version().unwrap_or_default());
    for kv in scope.attributes() {
        write_key_value(out, 3, kv);
    }
}

// `Span`, fields in tag order, as prost writes them.

fn span_len(span: &SpanData) -> usize {
    let context = &span.span_context;
    field_len(1, 16)
        + field_len(2, 8)
        + string_len(3, &context.trace_state().header())
        + parent_span_id_len(span.parent_span_id)
        + string_len(5, &span.name)
        + varint_len(6, span_kind_number(&span.span_kind))
        + fixed64_len(7, unix_nanos(span.start_time))
        + fixed64_len(8, unix_nanos(span.end_time))
        + attributes_len(9, &span.attributes)
        + varint_len(10, span.dropped_attributes_count.into())
        + repeated_len(11, span.events.iter().map(event_len))
        + varint_len(12, span.events.dropped_count.into())
        + repeated_len(13, span.links.iter().map(link_len))
        + varint_len(14, span.links.dropped_count.into())
        + field_len(15, status_len(&span.status))
        + fixed32_len(16, span_flags(context, span.parent_span_is_remote))
}

fn write_span(out: &mut impl BufMut, span: &SpanData) {
    let context = &span.span_context;
    write_bytes(out, 1, &context.trace_id().to_bytes());
    write_bytes(out, 2, &context.span_id().to_bytes());
    write_string(out, 3, &context.trace_state().header());
    if span.parent_span_id != SpanId::INVALID {
        write_bytes(out, 4, &span.parent_span_id.to_bytes());
    }
    write_string(out, 5, &span.name);
    write_varint(out, 6, span_kind_number(&span.span_kind));
    write_fixed64(out, 7, unix_nanos(span.start_time));
    write_fixed64(out, 8, unix_nanos(span.end_time));
    write_attributes(out, 9, &span.attributes);
    write_varint(out, 10, span.dropped_attributes_count.into());
    for event in span.events.iter() {
        write_len_prefix(out, 11, event_len(event));
        write_event(out, event);
    }
    write_varint(out, 12, span.events.dropped_count.into());
    for link in span.links.iter() {
        write_len_prefix(out, 13, link_len(link));
        write_link(out, link);
    }
    write_varint(out, 14, span.links.dropped_count.into());
    write_len_prefix(out, 15, status_len(&span.status));
    write_status(out, &span.status);
    write_fixed32(out, 16, span_flags(context, span.parent_span_is_remote));
}

fn parent_span_id_len(parent: SpanId) -> usize {
    if parent == SpanId::INVALID {
        0
    } else {
        field_len(4, 8)
    }
}

fn span_flags(context: &SpanContext, parent_is_remote: bool) -> u32 {
    let remote = if parent_is_remote {
        CONTEXT_IS_REMOTE
    } else {
        0
    };
    u32::from(context.trace_flags().to_u8()) | CONTEXT_HAS_IS_REMOTE | remote
}

/// The number of `Span.SpanKind` (0 is "unspecified", never sent).
fn span_kind_number(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn unix_nanos(time: std::time::SystemTime) -> u64 {
    time.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

fn event_len(event: &Event) -> usize {
    fixed64_len(1, unix_nanos(event.timestamp))
        + string_len(2, &event.name)
        + attributes_len(3, &event.attributes)
        + varint_len(4, event.dropped_attributes_count.into())
}

fn write_event(out: &mut impl BufMut, event: &Event) {
    write_fixed64(out, 1, unix_nanos(event.timestamp));
    write_string(out, 2, &event.name);
    write_attributes(out, 3, &event.attributes);
    write_varint(out, 4, event.dropped_attributes_count.into());
}

fn link_len(link: &Link) -> usize {
    let context = &link.span_context;
    field_len(1, 16)
        + field_len(2, 8)
        + string_len(3, &context.trace_state().header())
        + attributes_len(4, &link.attributes)
        + varint_len(5, link.dropped_attributes_count.into())
        + fixed32_len(6, span_flags(context, context.is_remote()))
}

fn write_link(out: &mut impl BufMut, link: &Link) {
    let context = &link.span_context;
    write_bytes(out, 1, &context.trace_id().to_bytes());
    write_bytes(out, 2, &context.span_id().to_bytes());
    write_string(out, 3, &context.trace_state().header());
    write_attributes(out, 4, &link.attributes);
    write_varint(out, 5, link.dropped_attributes_count.into());
    write_fixed32(out, 6, span_flags(context, context.is_remote()));
}

/// `Status.code` and `Status.message`.
fn status_parts(status: &Status) -> (u64, &str) {
    match status {
        Status::Unset => (0, ""),
        Status::Ok => (1, ""),
        Status::Error { description } => (2, description),
    }
}

fn status_len(status: &Status) -> usize {
    let (code, message) = status_parts(status);
    string_len(2, message) + varint_len(3, code)
}

fn write_status(out: &mut impl BufMut, status: &Status) {
    let (code, message) = status_parts(status);
    write_string(out, 2, message);
    write_varint(out, 3, code);
}

// `KeyValue` and `AnyValue`.

fn attributes_len(tag: u32, attributes: &[KeyValue]) -> usize {
    repeated_len(tag, attributes.iter().map(key_value_len))
}

fn write_attributes(out: &mut impl BufMut, tag: u32, attributes: &[KeyValue]) {
    for kv in attributes {
        write_key_value(out, tag, kv);
    }
}

fn key_value_len(kv: &KeyValue) -> usize {
    string_len(1, kv.key.as_str()) + field_len(2, any_value_len(&kv.value))
}

fn write_key_value(out: &mut impl BufMut, tag: u32, kv: &KeyValue) {
    write_len_prefix(out, tag, key_value_len(kv));
    write_string(out, 1, kv.key.as_str());
    write_len_prefix(out, 2, any_value_len(&kv.value));
    write_any_value(out, &kv.value);
}

fn any_value_len(value: &Value) -> usize {
    match value {
        Value::String(text) => field_len(1, text.as_str().len()),
        Value::Bool(_) => key_len(2) + 1,
        Value::I64(number) => key_len(3) + encoded_len_varint(*number as u64),
        Value::F64(_) => key_len(4) + 8,
        Value::Array(array) => field_len(5, array_len(array)),
        // A kind of value newer than this encoder: sent as an empty value
        // (opentelemetry-proto's conversion would panic on it).
        _ => 0,
    }
}

fn write_any_value(out: &mut impl BufMut, value: &Value) {
    match value {
        Value::String(text) => {
            write_len_prefix(out, 1, text.as_str().len());
            out.put_slice(text.as_str().as_bytes());
        }
        Value::Bool(flag) => {
            put_key(2, WireType::Varint, out);
            put_varint(u64::from(*flag), out);
        }
        Value::I64(number) => {
            put_key(3, WireType::Varint, out);
            put_varint(*number as u64, out);
        }
        Value::F64(number) => {
            put_key(4, WireType::SixtyFourBit, out);
            out.put_f64_le(*number);
        }
        Value::Array(array) => {
            write_len_prefix(out, 5, array_len(array));
            write_array(out, array);
        }
        _ => {}
    }
}

/// An `ArrayValue`: each element an `AnyValue` in field 1.
fn array_len(array: &Array) -> usize {
    fn elements<T>(values: &[T], element_len: impl Fn(&T) -> usize) -> usize {
        repeated_len(1, values.iter().map(element_len))
    }
    match array {
        Array::Bool(values) => elements(values, |_| key_len(2) + 1),
        Array::I64(values) => elements(values, |number| {
            key_len(3) + encoded_len_varint(*number as u64)
        }),
        Array::F64(values) => elements(values, |_| key_len(4) + 8),
        Array::String(values) => elements(values, |text: &StringValue| {
            field_len(1, text.as_str().len())
        }),
        _ => 0,
    }
}

fn write_array(out: &mut impl BufMut, array: &Array) {
    match array {
        Array::Bool(values) => {
            for &flag in values {
                write_len_prefix(out, 1, key_len(2) + 1);
                write_any_value(out, &Value::Bool(flag));
            }
        }
        Array::I64(values) => {
            for &number in values {
                write_len_prefix(out, 1, key_len(3) + encoded_len_varint(number as u64));
                write_any_value(out, &Value::I64(number));
            }
        }
        Array::F64(values) => {
            for &number in values {
                write_len_prefix(out, 1, key_len(4) + 8);
                write_any_value(out, &Value::F64(number));
            }
        }
        Array::String(values) => {
            for text in values {
                write_len_prefix(out, 1, field_len(1, text.as_str().len()));
                write_bytes(out, 1, text.as_str().as_bytes());
            }
        }
        _ => {}
    }
}

// Fields. proto3 leaves out scalars holding their default value.

/// A length-delimited field of `len` bytes.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// A repeated message field, its elements of `lens` bytes.
fn repeated_len(tag: u32, lens: impl IntoIterator<Item = usize>) -> usize {
    lens.into_iter().map(|len| field_len(tag, len)).sum()
}

fn string_len(tag: u32, text: &str) -> usize {
    if text.is_empty() {
        0
    } else {
        field_len(tag, text.len())
    }
}

fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

fn fixed64_len(tag: u32, value: u64) -> usize {
    if value == 0 { 0 } else { key_len(tag) + 8 }
}

fn fixed32_len(tag: u32, value: u32) -> usize {
    if value == 0 { 0 } else { key_len(tag) + 4 }
}

fn write_len_prefix(out: &mut impl BufMut, tag: u32, len: usize) {
    put_key(tag, WireType::LengthDelimited, out);
    put_varint(len as u64, out);
}

fn write_bytes(out: &mut impl BufMut, tag: u32, bytes: &[u8]) {
    write_len_prefix(out, tag, bytes.len());
    out.put_slice(bytes);
}

fn write_string(out: &mut impl BufMut, tag: u32, text: &str) {
    if !text.is_empty() {
        write_bytes(out, tag, text.as_bytes());
    }
}

fn write_varint(out: &mut impl BufMut, tag: u32, value: u64) {
    if value != 0 {
        put_key(tag, WireType::Varint, out);
        put_varint(value, out);
    }
}

fn write_fixed64(out: &mut impl BufMut, tag: u32, value: u64) {
    if value != 0 {
        put_key(tag, WireType::SixtyFourBit, out);
        out.put_u64_le(value);
    }
}

fn write_fixed32(out: &mut impl BufMut, tag: u32, value: u32) {
    if value != 0 {
        put_key(tag, WireType::ThirtyTwoBit, out);
        out.put_u32_le(value);
    }
}

// Keys and lengths are nearly all one byte: written as such, without
// prost's loop (a call per key or length, a few hundred per task).

#[inline]
fn put_key(tag: u32, wire_type: WireType, out: &mut impl BufMut) {
    if tag < 16 {
        out.put_u8(((tag << 3) | wire_type as u32) as u8);
    } else {
        encode_key(tag, wire_type, out);
    }
}

#[inline]
fn put_varint(value: u64, out: &mut impl BufMut) {
    if value < 0x80 {
        out.put_u8(value as u8);
    } else {
        encode_varint(value, out);
    }
}

#[cfg(test)]
mod tests {
    use std::{borrow::Cow, time::Duration};

    use opentelemetry::{
        KeyValue,
        trace::{SpanContext, TraceFlags, TraceId, TraceState},
    };
    use opentelemetry_proto::{
        tonic::collector::trace::v1::ExportTraceServiceRequest,
        transform::{
            common::tonic::ResourceAttributesWithSchema,
            trace::tonic::group_spans_by_resource_and_scope,
        },
    };
    use opentelemetry_sdk::trace::{SpanEvents, SpanLinks};
    use prost::Message;

    use super::*;

    fn context(trace: u128, span: u64, state: &str, remote: bool) -> SpanContext {
        SpanContext::new(
            TraceId::from(trace),
            SpanId::from(span),
            TraceFlags::SAMPLED,
            remote,
            state.parse::<TraceState>().unwrap(),
        )
    }

    fn every_kind_of_value() -> Vec<KeyValue> {
        vec![
            KeyValue::new("text", "hello"),
            KeyValue::new("owned", String::from("a longer value, owned by the span")),
            KeyValue::new("empty", ""),
            KeyValue::new("yes", true),
            KeyValue::new("no", false),
            KeyValue::new("zero", 0_i64),
            KeyValue::new("negative", -42_i64),
            KeyValue::new("big", i64::MAX),
            KeyValue::new("ratio", 0.25_f64),
            KeyValue::new("flags", Value::Array(Array::Bool(vec![true, false]))),
            KeyValue::new("counts", Value::Array(Array::I64(vec![0, -1, 300]))),
            KeyValue::new("weights", Value::Array(Array::F64(vec![1.5, 0.0]))),
            KeyValue::new(
                "names",
                Value::Array(Array::String(vec!["a".into(), "".into()])),
            ),
            KeyValue::new("none", Value::Array(Array::I64(vec![]))),
            KeyValue::new("", "a value without a key"),
        ]
    }

    fn span(name: &'static str, scope: &InstrumentationScope, id: u64) -> SpanData {
        let start = std::time::UNIX_EPOCH + Duration::from_nanos(1_764_000_000_123_456_789);
        SpanData {
            span_context: context(0xfeed_f00d, id, "", false),
            parent_span_id: SpanId::INVALID,
            parent_span_is_remote: false,
            span_kind: SpanKind::Internal,
            name: Cow::Borrowed(name),
            start_time: start,
            end_time: start + Duration::from_micros(1500),
            attributes: vec![KeyValue::new("task.attempt", 2_i64)],
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            instrumentation_scope: scope.clone(),
        }
    }

    /// Spans using every field, in two scopes.
    fn batch() -> Vec<SpanData> {
        let vowd = InstrumentationScope::builder("vowd").build();
        let library = InstrumentationScope::builder("a.library")
            .with_version("1.2.3")
            .with_schema_url("https://opentelemetry.io/schemas/1.30.0")
            .with_attributes([KeyValue::new("scope.attribute", 7_i64)])
            .build();
        let mut server = span("vow.v1.TaskService/Submit", &vowd, 1);
        server.span_kind = SpanKind::Server;
        server.parent_span_id = SpanId::from(0xabc);
        server.parent_span_is_remote = true;
        server.span_context = context(0xfeed_f00d, 1, "vendor=value,other=2", false);
        server.attributes = every_kind_of_value();
        server.dropped_attributes_count = 3;
        server.status = Status::error("the handler failed: ünïcödé");
        let mut linked = span("vow.v1.TaskService/Await", &vowd, 2);
        linked.span_kind = SpanKind::Client;
        linked.links.links = vec![
            Link::new(
                context(0x1234, 0x5678, "k=v", true),
                vec![KeyValue::new("link.reason", "awaits")],
                1,
            ),
            Link::with_context(context(0x9, 0xa, "", false)),
        ];
        linked.links.dropped_count = 2;
        linked.status = Status::Ok;
        let mut eventful = span("handler.work", &library, 3);
        eventful.span_kind = SpanKind::Producer;
        eventful.parent_span_id = SpanId::from(2);
        eventful.events.events = vec![
            Event::new(
                "retrying",
                eventful.start_time + Duration::from_micros(10),
                vec![KeyValue::new("delay_ms", 100_i64)],
                4,
            ),
            Event::new("", std::time::UNIX_EPOCH, vec![], 0),
        ];
        eventful.events.dropped_count = 5;
        let mut consumer = span("", &vowd, 4);
        consumer.span_kind = SpanKind::Consumer;
        consumer.attributes.clear();
        consumer.start_time = std::time::UNIX_EPOCH;
        vec![
            server,
            linked,
            eventful,
            consumer,
            span("last", &library, 5),
        ]
    }

    fn resource() -> Resource {
        Resource::builder_empty()
            .with_service_name("vowd")
            .with_attributes([
                KeyValue::new("deployment.environment", "test"),
                KeyValue::new("replica", 3_i64),
            ])
            .with_schema_url([], "https://opentelemetry.io/schemas/1.30.0")
            .build()
    }

    fn reference(resource: &Resource, spans: Vec<SpanData>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: group_spans_by_resource_and_scope(
                spans,
                &ResourceAttributesWithSchema::from(resource),
            ),
        }
    }

    #[test]
    fn the_request_is_the_one_opentelemetry_otlp_would_send() {
        let resource = resource();
        let spans = batch();
        let encoded = export_request(&EncodedResource::new(&resource), &spans);
        let expected = reference(&resource, spans);
        let decoded = ExportTraceServiceRequest::decode(encoded.clone()).unwrap();
        assert_eq!(decoded, expected);
        // prost writes fields in tag order, and so does the encoder: the
        // bytes match too, not only the message.
        assert_eq!(encoded.as_ref(), expected.encode_to_vec().as_slice());
    }

    #[test]
    fn edge_values_match_too() {
        // Equal scopes whose attributes come in another order, long values
        // (lengths of three bytes), extreme numbers, invalid ids, a time
        // before the epoch and one past what fits.
        let scope = |attributes: [KeyValue; 2]| {
            InstrumentationScope::builder("")
                .with_attributes(attributes)
                .build()
        };
        let first = scope([KeyValue::new("b", 1_i64), KeyValue::new("a", "x")]);
        let second = scope([KeyValue::new("a", "x"), KeyValue::new("b", 1_i64)]);
        let long = "é".repeat(20_000);
        let mut extreme = span("x", &first, 1);
        extreme.attributes = vec![
            KeyValue::new("min", i64::MIN),
            KeyValue::new("nan", f64::NAN),
            KeyValue::new("negative zero", -0.0_f64),
            KeyValue::new("long", long.clone()),
            KeyValue::new(
                "longs",
                Value::Array(Array::String(vec![long.clone().into(); 3])),
            ),
            KeyValue::new("mins", Value::Array(Array::I64(vec![i64::MIN, -1]))),
            KeyValue::new("no strings", Value::Array(Array::String(vec![]))),
            KeyValue::new("no flags", Value::Array(Array::Bool(vec![]))),
        ];
        extreme.dropped_attributes_count = u32::MAX;
        extreme.status = Status::error("");
        extreme.span_context = SpanContext::new(
            TraceId::INVALID,
            SpanId::INVALID,
            TraceFlags::default(),
            true,
            TraceState::default(),
        );
        extreme.end_time = std::time::UNIX_EPOCH - Duration::from_secs(5);
        extreme.events.events = vec![Event::new(
            long.clone(),
            std::time::UNIX_EPOCH + Duration::from_nanos(u64::MAX),
            vec![],
            u32::MAX,
        )];
        let mut linked = span("y", &second, 2);
        linked.links.links = vec![Link::new(
            context(1, 2, "", false),
            vec![KeyValue::new("k", long.clone())],
            0,
        )];
        linked.links.dropped_count = u32::MAX;
        let resource = Resource::builder_empty()
            .with_attributes([KeyValue::new("big", long)])
            .build();
        let spans = vec![extreme, linked.clone(), linked];
        let encoded = export_request(&EncodedResource::new(&resource), &spans);
        assert_eq!(
            encoded.as_ref(),
            reference(&resource, spans).encode_to_vec().as_slice()
        );
        let empty = export_request(&EncodedResource::new(&resource), &[]);
        assert_eq!(
            empty.as_ref(),
            reference(&resource, vec![]).encode_to_vec().as_slice()
        );
    }

    #[test]
    fn a_batch_of_one_span_without_a_resource_matches_too() {
        let resource = Resource::builder_empty().build();
        let vowd = InstrumentationScope::builder("vowd").build();
        let spans = vec![span("task.attempt", &vowd, 9)];
        let encoded = export_request(&EncodedResource::new(&resource), &spans);
        assert_eq!(
            encoded.as_ref(),
            reference(&resource, spans).encode_to_vec().as_slice()
        );
    }

    #[test]
    fn a_resource_set_after_spans_were_made_is_the_one_sent() {
        let vowd = InstrumentationScope::builder("vowd").build();
        let spans = vec![span("task.attempt", &vowd, 9)];
        let unset = export_request(&EncodedResource::default(), &spans);
        let set = export_request(&EncodedResource::new(&resource()), &spans);
        let unset = ExportTraceServiceRequest::decode(unset).unwrap();
        let set = ExportTraceServiceRequest::decode(set).unwrap();
        assert_eq!(
            unset.resource_spans[0]
                .resource
                .as_ref()
                .unwrap()
                .attributes,
            []
        );
        let attributes = &set.resource_spans[0].resource.as_ref().unwrap().attributes;
        assert!(
            attributes.iter().any(|kv| kv.key == "service.name"),
            "{attributes:?}"
        );
        assert_eq!(
            set.resource_spans[0].scope_spans,
            unset.resource_spans[0].scope_spans
        );
    }
}
