//! TLS and mutual TLS for vowd's listeners, with rustls (the ring provider,
//! as everywhere in Vow). vowd accepts TCP itself and hands finished TLS
//! streams to tonic (and to the metrics endpoint), so that:
//!
//! - certificates reload while serving ([`ReloadingServerConfig`]): every new
//!   connection gets the configuration current at its accept, existing ones
//!   keep theirs;
//! - each handshake runs in a task of its own under a timeout
//!   ([`TlsIncoming`]), so a slow or silent client never holds up accepts;
//! - the client's verified certificate lands in each request's extensions
//!   (tonic's `TlsConnectInfo`), where [`client_certificate_names`] reads its
//!   names for access control.
//!
//! Nothing here knows of the engine or of gRPC services.

mod files;
mod incoming;
mod peer;
mod reload;

pub use files::{TlsError, TlsFiles};
pub use incoming::{TlsIncoming, TlsListener};
pub use peer::{
    ClientCertificateNames, client_certificate_names, client_certificate_names_in_http,
};
pub use reload::{RELOAD_INTERVAL, ReloadingServerConfig};

/// The ALPN protocol gRPC speaks: HTTP/2 only (grpc-go and grpcurl refuse
/// a TLS server that negotiates none).
pub const ALPN_GRPC: &[&[u8]] = &[b"h2"];
/// The ALPN protocol of the metrics endpoint: it speaks HTTP/1.1 only.
pub const ALPN_METRICS: &[&[u8]] = &[b"http/1.1"];
