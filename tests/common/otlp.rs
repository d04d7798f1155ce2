//! A real OTLP/gRPC trace receiver: a tonic server implementing the
//! collector's `TraceService` with the `opentelemetry-proto` types, on an
//! ephemeral loopback port. It keeps every span it is sent (or, for load
//! runs, only counts them), so tests can assert on what `vowd` exported.
//! Shared by tests/telemetry.rs and the `otlp_sink` example (benchmarks).

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::Span,
};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_stream::wrappers::TcpListenerStream;

/// A span as received, with the `service.name` of the resource it came with.
#[derive(Clone, Debug)]
pub struct ReceivedSpan {
    pub service_name: String,
    pub span: Span,
}

#[derive(Default)]
struct Collected {
    /// `None` when only counting.
    spans: Option<Mutex<Vec<ReceivedSpan>>>,
    count: AtomicU64,
    requests: AtomicU64,
}

#[derive(Clone)]
struct Collector(Arc<Collected>);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let collected = &self.0;
        collected.requests.fetch_add(1, Ordering::Relaxed);
        for resource_spans in request.into_inner().resource_spans {
            let service_name = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| string_attribute(&resource.attributes, "service.name"))
                .unwrap_or_default()
                .to_owned();
            for scope_spans in resource_spans.scope_spans {
                collected
                    .count
                    .fetch_add(scope_spans.spans.len() as u64, Ordering::Relaxed);
                let Some(spans) = &collected.spans else {
                    continue;
                };
                spans
                    .lock()
                    .expect("no test panics while holding the span list")
                    .extend(scope_spans.spans.into_iter().map(|span| ReceivedSpan {
                        service_name: service_name.clone(),
                        span,
                    }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The same `Export` method for load runs: it counts the spans of a request
/// without decoding them ([`SpanCount`]), so that the receiver, sharing the
/// machine with the `vowd` it measures, takes as little CPU as it can.
#[derive(Clone)]
struct CountingTraceService(Arc<Collected>);

impl tonic::server::NamedService for CountingTraceService {
    const NAME: &'static str = "opentelemetry.proto.collector.trace.v1.TraceService";
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>>
    for CountingTraceService
{
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let collected = self.0.clone();
        Box::pin(async move {
            if !request.uri().path().ends_with("/Export") {
                return Ok(tonic::Status::unimplemented("only Export").into_http());
            }
            let codec = tonic_prost::ProstCodec::<ExportTraceServiceResponse, SpanCount>::default();
            let mut grpc = tonic::server::Grpc::new(codec);
            Ok(grpc.unary(CountSpans(collected), request).await)
        })
    }
}

struct CountSpans(Arc<Collected>);

impl tonic::server::UnaryService<SpanCount> for CountSpans {
    type Response = ExportTraceServiceResponse;
    type Future = std::future::Ready<Result<tonic::Response<Self::Response>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<SpanCount>) -> Self::Future {
        self.0.requests.fetch_add(1, Ordering::Relaxed);
        self.0
            .count
            .fetch_add(request.into_inner().spans, Ordering::Relaxed);
        std::future::ready(Ok(tonic::Response::new(
            ExportTraceServiceResponse::default(),
        )))
    }
}

/// An `ExportTraceServiceRequest` read only as far as counting its spans
/// (`resource_spans` = 1 → `scope_spans` = 2 → `spans` = 2); every other
/// field, and every span's content, is skipped undecoded.
#[derive(Debug, Default)]
struct SpanCount {
    spans: u64,
}

impl SpanCount {
    /// Counts the fields `path` leads to inside one length-delimited message.
    fn count_in(
        path: &[u32],
        mut buf: &mut dyn prost::bytes::Buf,
    ) -> Result<u64, prost::DecodeError> {
        use prost::bytes::Buf as _;
        use prost::encoding::{DecodeContext, decode_key, skip_field};
        let Some((&tag, rest)) = path.split_first() else {
            return Ok(1);
        };
        let mut count = 0;
        while buf.has_remaining() {
            let (field, wire_type) = decode_key(&mut buf)?;
            if field == tag && wire_type == prost::encoding::WireType::LengthDelimited {
                let length = checked_length(&mut buf)?;
                let mut inner = (&mut *buf).take(length);
                count += Self::count_in(rest, &mut inner)?;
                // Whatever the inner count left unread (none, unless `rest` is empty).
                inner.advance(inner.remaining());
            } else {
                skip_field(wire_type, field, &mut buf, DecodeContext::default())?;
            }
        }
        Ok(count)
    }
}

/// The length of a length-delimited field, refused if it runs past the
/// message (as prost's own decoding would).
fn checked_length(buf: &mut impl prost::bytes::Buf) -> Result<usize, prost::DecodeError> {
    let length = prost::encoding::decode_varint(buf)?;
    if length > buf.remaining() as u64 {
        // prost offers no other way to make a DecodeError.
        #[allow(deprecated)]
        return Err(prost::DecodeError::new("a field runs past its message"));
    }
    Ok(length as usize)
}

impl prost::Message for SpanCount {
    fn encode_raw(&self, _: &mut impl prost::bytes::BufMut) {
        unreachable!("the receiver only decodes requests")
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        context: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        if tag == 1 && wire_type == prost::encoding::WireType::LengthDelimited {
            let length = checked_length(buf)?;
            let mut resource_spans = prost::bytes::Buf::take(&mut *buf, length);
            self.spans += Self::count_in(&[2, 2], &mut resource_spans)?;
            Ok(())
        } else {
            prost::encoding::skip_field(wire_type, tag, buf, context)
        }
    }

    fn encoded_len(&self) -> usize {
        0
    }

    fn clear(&mut self) {
        self.spans = 0;
    }
}

/// A running receiver; stops serving when dropped.
pub struct OtlpReceiver {
    address: SocketAddr,
    collected: Arc<Collected>,
    server: JoinHandle<()>,
    tls: bool,
}

impl OtlpReceiver {
    /// Serves on `127.0.0.1:0` and keeps every span.
    pub async fn start() -> Self {
        Self::serve("127.0.0.1:0", true).await
    }

    /// Serves on `address` and only counts spans (for long load runs, where
    /// keeping them would grow without bound).
    pub async fn start_counting(address: &str) -> Self {
        Self::serve(address, false).await
    }

    /// Serves over TLS on `127.0.0.1:0` and keeps every span.
    pub async fn start_tls(tls: tonic::transport::ServerTlsConfig) -> Self {
        Self::serve_with("127.0.0.1:0", true, Some(tls)).await
    }

    async fn serve(address: &str, keep: bool) -> Self {
        Self::serve_with(address, keep, None).await
    }

    async fn serve_with(
        address: &str,
        keep: bool,
        tls: Option<tonic::transport::ServerTlsConfig>,
    ) -> Self {
        // Bound before serving, so the port is ready once this returns.
        let listener = TcpListener::bind(address)
            .await
            .expect("bind the OTLP receiver");
        let address = listener
            .local_addr()
            .expect("a bound listener has an address");
        let collected = Arc::new(Collected {
            spans: keep.then(Default::default),
            ..Default::default()
        });
        let incoming = TcpListenerStream::new(listener);
        let served_over_tls = tls.is_some();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).expect("a valid TLS configuration");
        }
        let router = if keep {
            builder.add_service(TraceServiceServer::new(Collector(collected.clone())))
        } else {
            builder.add_service(CountingTraceService(collected.clone()))
        };
        // One task, so that aborting it (on drop) stops the server.
        let server = tokio::spawn(async move {
            router
                .serve_with_incoming(incoming)
                .await
                .expect("the OTLP receiver serves");
        });
        Self {
            address,
            collected,
            server,
            tls: served_over_tls,
        }
    }

    /// `http://127.0.0.1:PORT` (`https://localhost:PORT` over TLS, the
    /// name its certificate bears), the value of `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        match self.tls {
            true => format!("https://localhost:{}", self.address.port()),
            false => format!("http://{}", self.address),
        }
    }

    /// Every span received so far (empty when only counting).
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collected
            .spans
            .as_ref()
            .map_or_else(Vec::new, |spans| {
                spans
                    .lock()
                    .expect("no test panics while holding the span list")
                    .clone()
            })
    }

    /// Spans received so far.
    pub fn span_count(&self) -> u64 {
        self.collected.count.load(Ordering::Relaxed)
    }

    /// Export requests received so far.
    pub fn request_count(&self) -> u64 {
        self.collected.requests.load(Ordering::Relaxed)
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The value of attribute `key`, if present.
pub fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attributes
        .iter()
        .find(|attribute| attribute.key == key)
        .and_then(|attribute| attribute.value.as_ref())
        .and_then(|value: &AnyValue| value.value.as_ref())
}

/// The string value of attribute `key`, if it is a string.
pub fn string_attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attribute(attributes, key)? {
        Value::StringValue(text) => Some(text),
        _ => None,
    }
}

/// The integer value of attribute `key`, if it is an integer.
pub fn int_attribute(attributes: &[KeyValue], key: &str) -> Option<i64> {
    match attribute(attributes, key)? {
        Value::IntValue(number) => Some(*number),
        _ => None,
    }
}

/// Lowercase hex of an id (trace, span) as OTLP carries it: raw bytes.
pub fn hex_id(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::{
        collector::trace::v1::ExportTraceServiceRequest,
        common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value::Value},
        resource::v1::Resource,
        trace::v1::{ResourceSpans, ScopeSpans, Span},
    };
    use prost::Message as _;

    use super::SpanCount;

    fn span(name: &str) -> Span {
        Span {
            trace_id: vec![7; 16],
            span_id: vec![9; 8],
            name: name.into(),
            attributes: vec![KeyValue {
                key: "task.id".into(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue("x".repeat(32))),
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn scope(name: &str, spans: usize) -> ScopeSpans {
        ScopeSpans {
            scope: Some(InstrumentationScope {
                name: name.into(),
                ..Default::default()
            }),
            spans: (0..spans)
                .map(|index| span(&format!("span {index}")))
                .collect(),
            schema_url: "https://example.com/schema".into(),
        }
    }

    #[test]
    fn counts_the_spans_of_every_resource_and_scope() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource::default()),
                    scope_spans: vec![scope("vowd", 3), scope("handler", 2)],
                    schema_url: String::new(),
                },
                ResourceSpans {
                    resource: None,
                    scope_spans: vec![scope("other", 4), scope("empty", 0)],
                    schema_url: "x".into(),
                },
            ],
        };
        let encoded = request.encode_to_vec();
        let counted = SpanCount::decode(encoded.as_slice()).expect("a valid request");
        assert_eq!(counted.spans, 9);
    }

    #[test]
    fn a_truncated_request_is_refused() {
        let request = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![scope("vowd", 2)],
                ..Default::default()
            }],
        };
        let encoded = request.encode_to_vec();
        assert!(SpanCount::decode(&encoded[..encoded.len() - 5]).is_err());
    }
}
