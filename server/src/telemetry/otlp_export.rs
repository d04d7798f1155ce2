//! vowd's OTLP/gRPC span exporter: batches encoded by
//! [`otlp_encoding`](super::otlp_encoding), sent to the collector's
//! `TraceService/Export` over tonic, retried with backoff as the OTLP
//! specification asks, and configured by the standard
//! `OTEL_EXPORTER_OTLP_*` variables as opentelemetry-otlp reads them.

use std::{
    fmt::{self, Write as _},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use bytes::{BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_sdk::{
    Resource,
    error::{OTelSdkError, OTelSdkResult},
    trace::{SpanData, SpanExporter},
};
use prost::Message;
use tonic::{
    Code, Request, Status,
    client::Grpc,
    codec::{
        BufferSettings, Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder,
        HEADER_SIZE,
    },
    metadata::MetadataMap,
    transport::{Channel, Endpoint},
};
use tonic_types::StatusExt;

use super::otlp_encoding::{EncodedResource, export_request};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where and how spans are sent, from the standard variables: the
/// traces-specific one wins over the general one.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    pub endpoint: String,
    pub headers: MetadataMap,
    /// The budget of one export, retries included.
    pub timeout: Duration,
    pub compression: Option<CompressionEncoding>,
}

const DEFAULT_ENDPOINT: &str = "http://localhost:4317";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest export timeout honoured: a longer one cannot travel as a
/// `grpc-timeout` header (tonic panics on it), and means "no limit" anyway.
const LONGEST_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

impl OtlpConfig {
    pub fn from_env() -> anyhow::Result<Self> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        // The variables setting `name` that are set, each with its value,
        // the traces-specific one first. Blank counts as unset.
        let settings = |name: &str| -> Vec<(String, String)> {
            [
                format!("OTEL_EXPORTER_OTLP_TRACES_{name}"),
                format!("OTEL_EXPORTER_OTLP_{name}"),
            ]
            .into_iter()
            .filter_map(|variable| {
                let value = lookup(&variable)?.trim().to_owned();
                (!value.is_empty()).then_some((variable, value))
            })
            .collect()
        };
        let setting = |name: &str| settings(name).into_iter().next();
        if let Some((variable, protocol)) = setting("PROTOCOL")
            && !protocol.eq_ignore_ascii_case("grpc")
        {
            anyhow::bail!(
                "{variable} is {protocol:?}: vowd exports spans over OTLP/gRPC only; set it to \
                 \"grpc\" or leave it unset, and point the endpoint at the collector's gRPC \
                 port (usually 4317)"
            );
        }
        let insecure =
            setting("INSECURE").is_some_and(|(_, value)| value.eq_ignore_ascii_case("true"));
        let endpoint = with_scheme(
            setting("ENDPOINT").map_or_else(|| DEFAULT_ENDPOINT.to_owned(), |(_, value)| value),
            insecure,
        );
        // An unparsable value is ignored, as the SDKs ignore it.
        let timeout = settings("TIMEOUT")
            .into_iter()
            .find_map(|(_, millis)| millis.parse().ok())
            .map_or(DEFAULT_TIMEOUT, Duration::from_millis)
            .min(LONGEST_TIMEOUT);
        let compression = match setting("COMPRESSION") {
            None => None,
            Some((variable, value)) => match value.to_ascii_lowercase().as_str() {
                "none" => None,
                "gzip" => Some(CompressionEncoding::Gzip),
                _ => anyhow::bail!(
                    "{variable} is {value:?}: vowd compresses spans with \"gzip\" or not at \
                     all (\"none\")"
                ),
            },
        };
        let headers = match setting("HEADERS") {
            None => MetadataMap::new(),
            Some((variable, list)) => parse_headers(&list)
                .map_err(|reason| anyhow::anyhow!("{variable} cannot be sent: {reason}"))?,
        };
        Ok(Self {
            endpoint,
            headers,
            timeout,
            compression,
        })
    }
}

/// An endpoint without a scheme is `https`, or `http` when the `INSECURE`
/// variable says `true`.
fn with_scheme(endpoint: String, insecure: bool) -> String {
    let has_scheme = endpoint
        .split_once("://")
        .is_some_and(|(scheme, _)| !scheme.contains(['/', '?', '#']));
    match (has_scheme, insecure) {
        (true, _) => endpoint,
        (false, true) => format!("http://{endpoint}"),
        (false, false) => format!("https://{endpoint}"),
    }
}

/// `key=value` pairs separated by commas, values percent-encoded (the W3C
/// baggage format the specification names); a pair with an empty value is
/// left out. A pair that cannot be sent is refused, naming its key but not
/// its value, which may be a secret: a header silently left out would
/// surface only as a collector refusing every export.
fn parse_headers(list: &str) -> Result<MetadataMap, String> {
    let mut headers = http::HeaderMap::new();
    for pair in list.split(',').filter(|pair| !pair.trim().is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            return Err(format!("{:?} is not key=value", pair.trim()));
        };
        let key = key.trim();
        let name = http::HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| format!("{key:?} is not a header name"))?;
        let value = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| format!("the value of {key:?} is not percent-encoded UTF-8"))?;
        if value.is_empty() {
            continue;
        }
        let value = http::HeaderValue::from_str(&value)
            .map_err(|_| format!("the value of {key:?} is not a header value"))?;
        headers.append(name, value);
    }
    // Keys ending in `-bin` go as they are, their values taken to be
    // base64 already, as opentelemetry-otlp sends them.
    Ok(MetadataMap::from_headers(headers))
}

/// Exports spans to an OTLP/gRPC collector.
pub struct OtlpSpanExporter {
    grpc: Grpc<Channel>,
    config: OtlpConfig,
    resource: EncodedResource,
    shut_down: AtomicBool,
}

impl fmt::Debug for OtlpSpanExporter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OtlpSpanExporter")
            .field("endpoint", &self.config.endpoint)
            .finish_non_exhaustive()
    }
}

impl OtlpSpanExporter {
    /// Connects lazily: a collector that is down delays nothing but its
    /// spans. Must run inside the Tokio runtime.
    pub fn new(config: OtlpConfig) -> anyhow::Result<Self> {
        let endpoint = Endpoint::from_shared(config.endpoint.clone())
            .map_err(|error| {
                anyhow::anyhow!("invalid OTLP endpoint {:?}: {error}", config.endpoint)
            })?
            .user_agent(concat!("vowd/", env!("CARGO_PKG_VERSION")))?
            .connect_timeout(config.timeout);
        if endpoint.uri().scheme_str() == Some("https") {
            anyhow::bail!(
                "OTLP endpoint {:?} asks for TLS, which vowd's exporter does not speak: use an \
                 http:// endpoint (a local collector or the mesh sidecar), or set \
                 OTEL_EXPORTER_OTLP_INSECURE=true for an endpoint given without a scheme",
                config.endpoint
            );
        }
        let mut grpc = Grpc::new(endpoint.connect_lazy());
        if let Some(encoding) = config.compression {
            grpc = grpc.send_compressed(encoding).accept_compressed(encoding);
        }
        Ok(Self {
            grpc,
            config,
            resource: EncodedResource::default(),
            shut_down: AtomicBool::new(false),
        })
    }

    /// Sends `request`, retrying what the specification calls transient
    /// failures with exponential backoff, all within the timeout.
    async fn send(&self, request: Bytes) -> Result<(), Status> {
        let started = Instant::now();
        let mut backoff = Backoff::default();
        loop {
            let remaining = self.config.timeout.saturating_sub(started.elapsed());
            let failure = match self.send_once(request.clone(), remaining).await {
                Ok(response) => {
                    report_partial_success(response);
                    return Ok(());
                }
                Err(failure) => failure,
            };
            let Failure::Transient { told } = classify(&failure) else {
                return Err(failure);
            };
            let Some(delay) = backoff.next(told) else {
                return Err(failure);
            };
            if started.elapsed() + delay >= self.config.timeout {
                return Err(failure);
            }
            tokio::time::sleep(delay).await;
        }
    }

    async fn send_once(
        &self,
        request: Bytes,
        timeout: Duration,
    ) -> Result<ExportTraceServiceResponse, Status> {
        let mut grpc = self.grpc.clone();
        let call = async {
            grpc.ready()
                .await
                .map_err(|error| Status::unavailable(format!("collector unreachable: {error}")))?;
            let mut request = Request::new(request);
            *request.metadata_mut() = self.config.headers.clone();
            request.set_timeout(timeout);
            let codec = PreEncoded {
                len: request.get_ref().len(),
            };
            let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
            grpc.unary(request, path, codec).await
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(response) => response.map(tonic::Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer from the collector within {timeout:?}"
            ))),
        }
    }
}

impl SpanExporter for OtlpSpanExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        if self.shut_down.load(Ordering::Acquire) {
            return Err(OTelSdkError::AlreadyShutdown);
        }
        let request = export_request(&self.resource, &batch);
        drop(batch);
        self.send(request).await.map_err(|status| {
            OTelSdkError::InternalFailure(format!(
                "OTLP export to {} failed: {}",
                self.config.endpoint,
                described(&status)
            ))
        })
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.shut_down.swap(true, Ordering::AcqRel) {
            Err(OTelSdkError::AlreadyShutdown)
        } else {
            Ok(())
        }
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.resource = EncodedResource::new(resource);
    }
}

#[derive(Debug, PartialEq)]
enum Failure {
    /// Worth retrying, after the delay the collector asked for, if any.
    Transient {
        told: Option<Duration>,
    },
    Final,
}

/// The transient codes of the OTLP specification, and `RESOURCE_EXHAUSTED`
/// only when the collector sends a `RetryInfo`.
fn classify(failure: &Status) -> Failure {
    let retry_info = failure.get_details_retry_info();
    let told = retry_info
        .as_ref()
        .and_then(|info| info.retry_delay)
        .filter(|delay| !delay.is_zero());
    match failure.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Failure::Transient { told },
        // The `RetryInfo` says the collector will recover, even one
        // without a delay (then the backoff's own is used).
        Code::ResourceExhausted if retry_info.is_some() => Failure::Transient { told },
        _ => Failure::Final,
    }
}

/// Three retries after 100 ms, 200 ms and 400 ms, each with up to 100 ms of
/// jitter (opentelemetry-otlp's recommended policy); a delay the collector
/// asks for is honoured instead.
#[derive(Debug, Default)]
struct Backoff {
    retries: u32,
}

impl Backoff {
    const MAX_RETRIES: u32 = 3;
    const INITIAL: Duration = Duration::from_millis(100);
    const MAX_JITTER_MILLIS: u64 = 100;
    /// The longest a collector may make an export wait.
    const LONGEST_TOLD: Duration = Duration::from_secs(600);

    /// The delay before the next retry; `None` once retries are used up.
    fn next(&mut self, told: Option<Duration>) -> Option<Duration> {
        if self.retries == Self::MAX_RETRIES {
            return None;
        }
        let delay = match told {
            Some(told) => told.min(Self::LONGEST_TOLD),
            None => {
                let jitter = rand::random_range(0..=Self::MAX_JITTER_MILLIS);
                Self::INITIAL * 2_u32.pow(self.retries) + Duration::from_millis(jitter)
            }
        };
        self.retries += 1;
        Some(delay)
    }
}

/// The code and message of `status`, and the chain of errors under it
/// (a connection refused, a name not resolved) when tonic made it.
fn described(status: &Status) -> String {
    let mut description = format!("{:?}: {}", status.code(), status.message());
    let mut cause = std::error::Error::source(status);
    while let Some(error) = cause {
        let _ = write!(description, ": {error}");
        cause = error.source();
    }
    description
}

fn report_partial_success(response: ExportTraceServiceResponse) {
    if let Some(partial) = response.partial_success
        && (partial.rejected_spans > 0 || !partial.error_message.is_empty())
    {
        tracing::warn!(
            rejected_spans = partial.rejected_spans,
            message = %partial.error_message,
            "the OTLP collector rejected spans"
        );
    }
}

/// A request of `len` bytes already encoded by [`export_request`], and the
/// collector's answer decoded with prost.
#[derive(Debug, Clone, Copy)]
struct PreEncoded {
    len: usize,
}

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }

    /// tonic's buffer starts at 8 KiB and doubles into a batch of a few
    /// hundred KiB, copying it each time: here it is made the right size
    /// at once.
    fn buffer_settings(&self) -> BufferSettings {
        // The yield threshold is tonic's default; it matters to streams only.
        BufferSettings::new(self.len + HEADER_SIZE, 32 * 1024)
    }
}

impl Decoder for PreEncoded {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|error| Status::internal(format!("undecodable collector answer: {error}")))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::{HashMap, VecDeque},
        sync::{Arc, Mutex},
    };

    use opentelemetry::trace::{Tracer, TracerProvider as _};
    use opentelemetry_proto::tonic::collector::trace::v1::{
        ExportTraceServiceRequest,
        trace_service_server::{TraceService, TraceServiceServer},
    };
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
    use tokio_stream::wrappers::TcpListenerStream;
    use tonic::Response;

    use super::*;

    fn lookup(variables: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let variables: HashMap<String, String> = variables
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        move |name| variables.get(name).cloned()
    }

    #[test]
    fn the_config_defaults_to_a_local_collector() {
        let config = OtlpConfig::from_lookup(lookup(&[])).unwrap();
        assert_eq!(config.endpoint, "http://localhost:4317");
        assert_eq!(config.timeout, Duration::from_secs(10));
        assert!(config.headers.is_empty());
        assert_eq!(config.compression, None);
    }

    #[test]
    fn traces_variables_win_over_the_general_ones() {
        let config = OtlpConfig::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", " http://traces:4317 "),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "general=1"),
            ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "traces=2"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ]))
        .unwrap();
        assert_eq!(config.endpoint, "http://traces:4317");
        assert_eq!(config.timeout, Duration::from_millis(2500));
        assert_eq!(config.headers.get("traces").unwrap(), "2");
        assert!(config.headers.get("general").is_none());
        assert_eq!(config.compression, Some(CompressionEncoding::Gzip));
    }

    #[test]
    fn headers_are_percent_decoded_and_empty_values_left_out() {
        let config = OtlpConfig::from_lookup(lookup(&[(
            "OTEL_EXPORTER_OTLP_HEADERS",
            "Authorization=Bearer%20abc%3D%3D, x-tenant = blue ,,x-empty=,x-trace-bin=AAEC,x-tenant=red",
        )]))
        .unwrap();
        assert_eq!(config.headers.get("authorization").unwrap(), "Bearer abc==");
        let tenants: Vec<_> = config.headers.get_all("x-tenant").iter().collect();
        assert_eq!(tenants, ["blue", "red"]);
        assert_eq!(
            config
                .headers
                .get_bin("x-trace-bin")
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            [0, 1, 2]
        );
        assert!(config.headers.get("x-empty").is_none());
        assert_eq!(config.headers.len(), 4, "{:?}", config.headers);
    }

    #[test]
    fn a_header_that_cannot_be_sent_is_refused_without_its_value() {
        for (list, reason) in [
            ("no-equals", "\"no-equals\" is not key=value"),
            ("bad key=secret", "\"bad key\" is not a header name"),
            ("=secret", "\"\" is not a header name"),
            (
                "x-token=secret%0A",
                "the value of \"x-token\" is not a header value",
            ),
            (
                "x-token=secret%FF",
                "the value of \"x-token\" is not percent-encoded UTF-8",
            ),
        ] {
            let refusal =
                OtlpConfig::from_lookup(lookup(&[("OTEL_EXPORTER_OTLP_TRACES_HEADERS", list)]))
                    .unwrap_err()
                    .to_string();
            assert!(
                refusal.starts_with("OTEL_EXPORTER_OTLP_TRACES_HEADERS cannot be sent: "),
                "{refusal}"
            );
            assert!(refusal.ends_with(reason), "{list}: {refusal}");
            assert!(!refusal.contains("secret"), "{refusal}");
        }
    }

    #[test]
    fn an_endpoint_without_a_scheme_is_https_unless_insecure() {
        let endpoint = |variables: &[(&str, &str)]| {
            OtlpConfig::from_lookup(lookup(variables)).unwrap().endpoint
        };
        let bare = ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317");
        assert_eq!(endpoint(&[bare]), "https://collector:4317");
        assert_eq!(
            endpoint(&[bare, ("OTEL_EXPORTER_OTLP_INSECURE", "TRUE")]),
            "http://collector:4317"
        );
        assert_eq!(
            endpoint(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                ("OTEL_EXPORTER_OTLP_INSECURE", "false")
            ]),
            "http://collector:4317"
        );
    }

    #[test]
    fn an_unparsable_timeout_is_ignored_and_a_huge_one_capped() {
        let timeout = |variables: &[(&str, &str)]| {
            OtlpConfig::from_lookup(lookup(variables)).unwrap().timeout
        };
        assert_eq!(
            timeout(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")]),
            DEFAULT_TIMEOUT
        );
        assert_eq!(
            timeout(&[
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "soon"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "1500")
            ]),
            Duration::from_millis(1500)
        );
        assert_eq!(
            timeout(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "999999999999999")]),
            LONGEST_TIMEOUT
        );
    }

    #[tokio::test]
    async fn the_longest_timeout_can_be_sent() {
        let collector = Collector::default();
        let exporter = exporter(
            collector.serve().await,
            &[("OTEL_EXPORTER_OTLP_TIMEOUT", "999999999999999")],
        )
        .await;
        exporter.export(spans(&["patient"])).await.unwrap();
        let (metadata, _) = &collector.received()[0];
        assert!(metadata.get("grpc-timeout").is_some(), "{metadata:?}");
    }

    #[test]
    fn settings_vowd_cannot_honour_are_refused_with_the_reason() {
        let refusal = |variables: &[(&str, &str)]| {
            OtlpConfig::from_lookup(lookup(variables))
                .unwrap_err()
                .to_string()
        };
        let protocol = refusal(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]);
        assert!(
            protocol.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL is \"http/protobuf\"")
                && protocol.contains("OTLP/gRPC only"),
            "{protocol}"
        );
        let compression = refusal(&[
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ]);
        assert!(
            compression.starts_with("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION is \"zstd\"")
                && compression.contains("gzip"),
            "{compression}"
        );
        let accepted = OtlpConfig::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "GRPC"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "GZip"),
        ]))
        .unwrap();
        assert_eq!(accepted.compression, Some(CompressionEncoding::Gzip));
    }

    #[tokio::test]
    async fn tls_endpoints_and_unparsable_ones_are_refused() {
        let exporter = |endpoint: &str| {
            OtlpSpanExporter::new(OtlpConfig {
                endpoint: endpoint.to_owned(),
                ..OtlpConfig::from_lookup(lookup(&[])).unwrap()
            })
        };
        let tls = exporter("https://collector:4317").unwrap_err().to_string();
        assert!(tls.contains("TLS"), "{tls}");
        let garbage = exporter("http://bad host").unwrap_err().to_string();
        assert!(garbage.contains("invalid OTLP endpoint"), "{garbage}");
    }

    #[test]
    fn transient_failures_are_retried_and_final_ones_not() {
        for code in [
            Code::Cancelled,
            Code::DeadlineExceeded,
            Code::Aborted,
            Code::OutOfRange,
            Code::Unavailable,
            Code::DataLoss,
        ] {
            assert_eq!(
                classify(&Status::new(code, "")),
                Failure::Transient { told: None },
                "{code:?}"
            );
        }
        for code in [
            Code::InvalidArgument,
            Code::Unauthenticated,
            Code::PermissionDenied,
            Code::Unimplemented,
            Code::Internal,
            Code::ResourceExhausted,
        ] {
            assert_eq!(classify(&Status::new(code, "")), Failure::Final, "{code:?}");
        }
    }

    fn throttled(code: Code, delay: Duration) -> Status {
        let details = tonic_types::ErrorDetails::with_retry_info(Some(delay));
        Status::with_error_details(code, "slow down", details)
    }

    #[test]
    fn a_collector_can_ask_for_a_delay() {
        let told = Duration::from_secs(2);
        assert_eq!(
            classify(&throttled(Code::ResourceExhausted, told)),
            Failure::Transient { told: Some(told) }
        );
        assert_eq!(
            classify(&throttled(Code::Unavailable, told)),
            Failure::Transient { told: Some(told) }
        );
        // A `RetryInfo` without a delay still says the collector recovers.
        assert_eq!(
            classify(&throttled(Code::ResourceExhausted, Duration::ZERO)),
            Failure::Transient { told: None }
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_after_three_retries() {
        let mut backoff = Backoff::default();
        for base in [100, 200, 400] {
            let delay = backoff.next(None).unwrap();
            let base = Duration::from_millis(base);
            assert!(
                delay >= base && delay <= base + Duration::from_millis(100),
                "{delay:?}"
            );
        }
        assert_eq!(backoff.next(None), None);
        let mut backoff = Backoff::default();
        assert_eq!(
            backoff.next(Some(Duration::from_secs(5))),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            backoff.next(Some(Duration::from_secs(3600))),
            Some(Backoff::LONGEST_TOLD)
        );
    }

    /// A collector answering each export with the next scripted status
    /// (then `Ok`), keeping what it received.
    #[derive(Clone, Default)]
    struct Collector {
        script: Arc<Mutex<VecDeque<Option<Status>>>>,
        received: Arc<Mutex<Vec<(MetadataMap, ExportTraceServiceRequest)>>>,
    }

    #[tonic::async_trait]
    impl TraceService for Collector {
        async fn export(
            &self,
            request: Request<ExportTraceServiceRequest>,
        ) -> Result<Response<ExportTraceServiceResponse>, Status> {
            let (metadata, _, request) = request.into_parts();
            self.received.lock().unwrap().push((metadata, request));
            let next = self.script.lock().unwrap().pop_front();
            match next {
                // A `None` in the script: never answer.
                Some(None) => std::future::pending().await,
                Some(Some(status)) => Err(status),
                None => Ok(Response::new(ExportTraceServiceResponse::default())),
            }
        }
    }

    impl Collector {
        fn answering(script: impl IntoIterator<Item = Option<Status>>) -> Self {
            let collector = Self::default();
            collector.script.lock().unwrap().extend(script);
            collector
        }

        async fn serve(&self) -> String {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap();
            let service =
                TraceServiceServer::new(self.clone()).accept_compressed(CompressionEncoding::Gzip);
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(service)
                    .serve_with_incoming(TcpListenerStream::new(listener)),
            );
            format!("http://{address}")
        }

        fn received(&self) -> Vec<(MetadataMap, ExportTraceServiceRequest)> {
            self.received.lock().unwrap().clone()
        }
    }

    /// Ended spans named `names`, as the SDK hands them to an exporter.
    fn spans(names: &[&'static str]) -> Vec<SpanData> {
        let recorded = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(recorded.clone())
            .build();
        let tracer = provider.tracer("vowd");
        for name in names {
            tracer.in_span(*name, |_| {});
        }
        recorded.get_finished_spans().unwrap()
    }

    async fn exporter(endpoint: String, variables: &[(&str, &str)]) -> OtlpSpanExporter {
        let mut exporter = OtlpSpanExporter::new(OtlpConfig {
            endpoint,
            ..OtlpConfig::from_lookup(lookup(variables)).unwrap()
        })
        .unwrap();
        exporter.set_resource(&Resource::builder().with_service_name("exported").build());
        exporter
    }

    fn span_names(request: &ExportTraceServiceRequest) -> Vec<String> {
        request
            .resource_spans
            .iter()
            .flat_map(|resource| &resource.scope_spans)
            .flat_map(|scope| &scope.spans)
            .map(|span| span.name.clone())
            .collect()
    }

    #[tokio::test]
    async fn spans_reach_the_collector_compressed_with_the_headers() {
        let collector = Collector::default();
        let endpoint = collector.serve().await;
        let exporter = exporter(
            endpoint,
            &[
                ("OTEL_EXPORTER_OTLP_HEADERS", "x-tenant=blue"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ],
        )
        .await;
        exporter.export(spans(&["first", "second"])).await.unwrap();
        let received = collector.received();
        assert_eq!(received.len(), 1);
        let (metadata, request) = &received[0];
        assert_eq!(metadata.get("x-tenant").unwrap(), "blue");
        assert_eq!(metadata.get("grpc-encoding").unwrap(), "gzip");
        assert!(
            metadata
                .get("user-agent")
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("vowd/")
        );
        assert_eq!(span_names(request), ["first", "second"]);
        let resource = request.resource_spans[0].resource.as_ref().unwrap();
        assert!(
            resource.attributes.iter().any(
                |kv| kv.key == "service.name" && format!("{:?}", kv.value).contains("exported")
            )
        );
    }

    #[tokio::test]
    async fn a_transient_failure_is_retried_with_the_same_spans() {
        let collector = Collector::answering([
            Some(Status::unavailable("restarting")),
            Some(throttled(
                Code::ResourceExhausted,
                Duration::from_millis(50),
            )),
        ]);
        let exporter = exporter(collector.serve().await, &[]).await;
        exporter.export(spans(&["retried"])).await.unwrap();
        let received = collector.received();
        assert_eq!(received.len(), 3);
        for (_, request) in &received {
            assert_eq!(span_names(request), ["retried"]);
        }
    }

    #[tokio::test]
    async fn a_final_failure_is_reported_at_once() {
        let collector = Collector::answering([Some(Status::invalid_argument("no"))]);
        let exporter = exporter(collector.serve().await, &[]).await;
        let error = exporter.export(spans(&["refused"])).await.unwrap_err();
        assert!(error.to_string().contains("InvalidArgument"), "{error}");
        assert_eq!(collector.received().len(), 1);
    }

    #[tokio::test]
    async fn a_collector_that_never_answers_costs_at_most_the_timeout() {
        let collector = Collector::answering([None, None, None, None, None]);
        let exporter = exporter(
            collector.serve().await,
            &[("OTEL_EXPORTER_OTLP_TIMEOUT", "300")],
        )
        .await;
        let started = Instant::now();
        let error = exporter
            .export(spans(&["lost"]))
            .await
            .unwrap_err()
            .to_string();
        // The 300 ms and a retry's backoff, with slack for a slow machine:
        // not ten times that.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
        // Whichever end gives up first: vowd, or tonic's server honouring
        // the `grpc-timeout` vowd sent.
        assert!(
            error.contains("DeadlineExceeded") || error.contains("Cancelled: Timeout expired"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn a_collector_that_is_down_fails_the_export() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let exporter = exporter(endpoint, &[("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")]).await;
        let error = exporter.export(spans(&["lost"])).await.unwrap_err();
        // With tonic's cause under it, not only the code.
        assert!(
            error.to_string().contains("Unavailable") && error.to_string().contains("refused"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn after_shutdown_nothing_is_sent() {
        let collector = Collector::default();
        let exporter = exporter(collector.serve().await, &[]).await;
        exporter.shutdown().unwrap();
        assert!(matches!(
            exporter.export(spans(&["late"])).await,
            Err(OTelSdkError::AlreadyShutdown)
        ));
        assert!(matches!(
            exporter.shutdown(),
            Err(OTelSdkError::AlreadyShutdown)
        ));
        assert!(collector.received().is_empty());
    }
}
