//! Log lines, as text or JSON, that carry the `trace_id` and `span_id` of
//! the span they were written in, so a log search and a trace lead to each
//! other.
//!
//! The ids come from the span's OpenTelemetry context when spans are
//! exported, and otherwise from the `trace_id` and `span_id` fields of the
//! span or one of its parents. No other span field is formatted
//! ([`TraceIdFieldOnly`]): the
//! trace id leads to them, and formatting every span's fields as it opens
//! cost more CPU per task than anything else in the logging path.

use std::fmt;

use opentelemetry::trace::TraceContextExt;
use serde_json::{Map, Value};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    registry::LookupSpan,
};

/// Log lines with the trace and span ids of the span they were written in,
/// as text or as JSON.
pub struct WithTrace {
    pub json: bool,
}

impl<S, N> FormatEvent<S, N> for WithTrace
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, N>,
        writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let current = current_span(context, event.metadata().target());
        if self.json {
            write_json(writer, event, current)
        } else {
            write_text(writer, event, current)
        }
    }
}

/// One JSON object per event: timestamp, level, target, message, the
/// event's fields, the current span's name, and its trace and span ids.
fn write_json(
    mut writer: Writer<'_>,
    event: &Event<'_>,
    current: Option<CurrentSpan>,
) -> fmt::Result {
    let mut line = Map::new();
    line.insert(
        "timestamp".into(),
        Value::String(humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string()),
    );
    line.insert(
        "level".into(),
        Value::String(event.metadata().level().to_string()),
    );
    line.insert(
        "target".into(),
        Value::String(event.metadata().target().to_owned()),
    );
    event.record(&mut FieldVisitor(&mut line));
    if let Some(current) = current {
        line.insert("span".into(), Value::String(current.name.to_owned()));
        if let Some((trace_id, span_id)) = current.ids {
            line.insert("trace_id".into(), Value::String(trace_id));
            if let Some(span_id) = span_id {
                line.insert("span_id".into(), Value::String(span_id));
            }
        }
    }
    let text = serde_json::to_string(&line).map_err(|_| fmt::Error)?;
    writeln!(writer, "{text}")
}

/// `2026-11-26T18:00:00.123456Z  WARN vow_server::engine::executor: attempt
/// failed task.id=… span=task.attempt trace_id=… span_id=…`
fn write_text(
    mut writer: Writer<'_>,
    event: &Event<'_>,
    current: Option<CurrentSpan>,
) -> fmt::Result {
    let metadata = event.metadata();
    write!(
        writer,
        "{} {:>5} {}:",
        humantime::format_rfc3339_micros(std::time::SystemTime::now()),
        metadata.level(),
        metadata.target()
    )?;
    let mut fields = TextVisitor {
        writer: &mut writer,
        result: Ok(()),
    };
    event.record(&mut fields);
    fields.result?;
    if let Some(current) = current {
        write!(writer, " span={}", current.name)?;
        if let Some((trace_id, span_id)) = current.ids {
            write!(writer, " trace_id={trace_id}")?;
            if let Some(span_id) = span_id {
                write!(writer, " span_id={span_id}")?;
            }
        }
    }
    writeln!(writer)
}

/// Formats only a span's `trace_id` and `span_id` fields, as the bare ids
/// separated by a space (see the module's comment).
pub struct TraceIdFieldOnly;

impl<'writer> FormatFields<'writer> for TraceIdFieldOnly {
    fn format_fields<R: tracing_subscriber::field::RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        let mut ids = SpanIds::default();
        fields.record(&mut ids);
        match ids {
            SpanIds {
                trace_id: Some(trace_id),
                span_id,
            } => write!(writer, "{trace_id} {}", span_id.unwrap_or_default()),
            _ => Ok(()),
        }
    }

    fn add_fields(
        &self,
        current: &'writer mut tracing_subscriber::fmt::FormattedFields<Self>,
        fields: &tracing::span::Record<'_>,
    ) -> fmt::Result {
        // Later ids replace earlier ones rather than appending to them.
        let mut ids = SpanIds::parse(&current.fields);
        fields.record(&mut ids);
        if let Some(trace_id) = ids.trace_id {
            current.fields = format!("{trace_id} {}", ids.span_id.unwrap_or_default());
        }
        Ok(())
    }
}

#[derive(Default)]
struct SpanIds {
    trace_id: Option<String>,
    span_id: Option<String>,
}

impl SpanIds {
    fn parse(formatted: &str) -> Self {
        let mut parts = formatted.split(' ').filter(|part| !part.is_empty());
        Self {
            trace_id: parts.next().map(str::to_owned),
            span_id: parts.next().map(str::to_owned),
        }
    }
}

impl tracing::field::Visit for SpanIds {
    fn record_str(&mut self, field: &Field, value: &str) {
        let slot = match field.name() {
            "trace_id" => &mut self.trace_id,
            "span_id" => &mut self.span_id,
            _ => return,
        };
        if !value.is_empty() {
            *slot = Some(value.to_owned());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.record_str(field, &format!("{value:?}"));
    }
}

struct CurrentSpan {
    name: &'static str,
    /// Hex trace id, and span id if the span has an OpenTelemetry context.
    ids: Option<(String, Option<String>)>,
}

fn current_span<S, N>(context: &FmtContext<'_, S, N>, event_target: &str) -> Option<CurrentSpan>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let Some(span) = context.lookup_current() else {
        return exported_own_span(event_target);
    };
    let otel_context = tracing::dispatcher::get_default(|dispatch| {
        tracing_opentelemetry::get_otel_context(&span.id(), dispatch)
    });
    let otel_ids = otel_context.and_then(|otel_context| ids_of(&otel_context));
    let ids = otel_ids.or_else(|| {
        span.scope().find_map(|ancestor| {
            let extensions = ancestor.extensions();
            let fields = extensions.get::<tracing_subscriber::fmt::FormattedFields<N>>()?;
            let ids = SpanIds::parse(&fields.fields);
            Some((ids.trace_id?, ids.span_id))
        })
    });
    // A span without ids of its own, inside an exported RPC or attempt.
    let ids = ids.or_else(|| exported_own_span(event_target).and_then(|own| own.ids));
    Some(CurrentSpan {
        name: span.name(),
        ids,
    })
}

/// The exported RPC or attempt span of vowd's that the event was written
/// in, from the OpenTelemetry context it attached (see `super::InOwnSpan`).
fn exported_own_span(event_target: &str) -> Option<CurrentSpan> {
    let (context, name) = super::own_span_context(event_target)?;
    Some(CurrentSpan {
        name,
        ids: ids_of(&context),
    })
}

fn ids_of(context: &opentelemetry::Context) -> Option<(String, Option<String>)> {
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        (
            span_context.trace_id().to_string(),
            Some(span_context.span_id().to_string()),
        )
    })
}

/// Writes `message` first, then ` key=value` for the other fields.
struct TextVisitor<'a, 'writer> {
    writer: &'a mut Writer<'writer>,
    result: fmt::Result,
}

impl tracing::field::Visit for TextVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.result = self.result.and_then(|()| write!(self.writer, " {value}"));
        } else {
            self.record_debug(field, &value);
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.result = self.result.and_then(|()| {
            if field.name() == "message" {
                write!(self.writer, " {value:?}")
            } else {
                write!(self.writer, " {}={value:?}", field.name())
            }
        });
    }
}

struct FieldVisitor<'a>(&'a mut Map<String, Value>);

impl tracing::field::Visit for FieldVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), value.into());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
}
