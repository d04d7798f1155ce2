//! The OTLP span exporter: opentelemetry-otlp's, over gRPC (tonic) or HTTP
//! with protobuf bodies (reqwest), configured by the standard variables.
//! The crate reads the endpoint, headers, timeout and compression itself;
//! the TLS files it does not read, so they are read here:
//! `OTEL_EXPORTER_OTLP_CERTIFICATE` (a CA to trust besides the public
//! roots), `OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE` and
//! `OTEL_EXPORTER_OTLP_CLIENT_KEY` (mutual TLS), each `TRACES_` form first.
//! A setting that cannot be honoured stops vowd at start, naming the
//! variable.

use std::path::PathBuf;

use opentelemetry_otlp::{SpanExporter, WithHttpConfig, WithTonicConfig};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Why no exporter could be made; each names the variable at fault.
#[derive(Debug, thiserror::Error)]
pub enum OtlpSetupError {
    #[error("{variable}={value:?}: vowd exports OTLP over \"grpc\" or \"http/protobuf\"")]
    Protocol { variable: String, value: String },
    #[error("{variable}: cannot read {path}: {error}")]
    File {
        variable: String,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{0} is set without {1}: a client identity needs both")]
    HalfIdentity(String, &'static str),
    #[error("cannot build the OTLP exporter: {0}")]
    Build(String),
}

/// The value of a standard variable, its `TRACES_` form first, with the
/// name that was set.
fn setting(name: &str) -> Option<(String, String)> {
    [
        format!("OTEL_EXPORTER_OTLP_TRACES_{name}"),
        format!("OTEL_EXPORTER_OTLP_{name}"),
    ]
    .into_iter()
    .find_map(|variable| {
        let value = std::env::var(&variable).ok()?;
        (!value.trim().is_empty()).then_some((variable, value))
    })
}

/// The PEM a variable names, read now so a mistake shows at start.
fn pem_of(name: &str) -> Result<Option<(String, Vec<u8>)>, OtlpSetupError> {
    let Some((variable, path)) = setting(name) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    match std::fs::read(&path) {
        Ok(pem) => Ok(Some((variable, pem))),
        Err(error) => Err(OtlpSetupError::File {
            variable,
            path,
            error,
        }),
    }
}

/// The TLS files of the standard variables.
struct TlsFiles {
    ca: Option<Vec<u8>>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    fn from_env() -> Result<Self, OtlpSetupError> {
        let ca = pem_of("CERTIFICATE")?.map(|(_, pem)| pem);
        let identity = match (pem_of("CLIENT_CERTIFICATE")?, pem_of("CLIENT_KEY")?) {
            (Some((_, certificate)), Some((_, key))) => Some((certificate, key)),
            (Some((variable, _)), None) => {
                return Err(OtlpSetupError::HalfIdentity(
                    variable,
                    "OTEL_EXPORTER_OTLP_CLIENT_KEY",
                ));
            }
            (None, Some((variable, _))) => {
                return Err(OtlpSetupError::HalfIdentity(
                    variable,
                    "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                ));
            }
            (None, None) => None,
        };
        Ok(Self { ca, identity })
    }

    fn configured(&self) -> bool {
        self.ca.is_some() || self.identity.is_some()
    }
}

/// The exporter the standard variables describe.
pub fn exporter() -> Result<SpanExporter, OtlpSetupError> {
    let protocol = setting("PROTOCOL");
    let tls = TlsFiles::from_env()?;
    let endpoint_is_https = setting("ENDPOINT").is_some_and(|(_, endpoint)| {
        endpoint
            .trim_start()
            .to_ascii_lowercase()
            .starts_with("https:")
    });
    let built = match protocol.as_ref().map(|(_, value)| value.as_str()) {
        None | Some("grpc") => {
            let mut builder = SpanExporter::builder().with_tonic();
            if endpoint_is_https || tls.configured() {
                let mut config = ClientTlsConfig::new().with_webpki_roots();
                if let Some(ca) = &tls.ca {
                    config = config.ca_certificate(Certificate::from_pem(ca));
                }
                if let Some((certificate, key)) = &tls.identity {
                    config = config.identity(Identity::from_pem(certificate, key));
                }
                builder = builder.with_tls_config(config);
            }
            builder.build()
        }
        Some("http/protobuf") => {
            let mut client = reqwest::Client::builder();
            if let Some(ca) = &tls.ca {
                let certificate = reqwest::Certificate::from_pem(ca)
                    .map_err(|error| OtlpSetupError::Build(error.to_string()))?;
                client = client.add_root_certificate(certificate);
            }
            if let Some((certificate, key)) = &tls.identity {
                let pem = [certificate.as_slice(), b"\n", key.as_slice()].concat();
                let identity = reqwest::Identity::from_pem(&pem)
                    .map_err(|error| OtlpSetupError::Build(error.to_string()))?;
                client = client.identity(identity);
            }
            let client = client
                .build()
                .map_err(|error| OtlpSetupError::Build(error.to_string()))?;
            SpanExporter::builder()
                .with_http()
                .with_http_client(client)
                .build()
        }
        Some(_) => {
            let (variable, value) = protocol.expect("a protocol was given");
            return Err(OtlpSetupError::Protocol { variable, value });
        }
    };
    built.map_err(|error| OtlpSetupError::Build(error.to_string()))
}
