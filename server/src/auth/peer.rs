//! The client certificate of a call under mTLS, as names to map.

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

/// The DNS and URI SANs (a SPIFFE id, say) of the verified certificate
/// the client presented, if it presented one.
pub fn client_sans(extensions: &http::Extensions) -> Vec<String> {
    crate::tls::client_certificate_names_in_http(extensions)
        .map(|names| names.uris.into_iter().chain(names.dns_names).collect())
        .unwrap_or_default()
}

/// The peer address of a call, for audit lines.
pub fn peer_address(extensions: &http::Extensions) -> String {
    let address = extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|info| info.get_ref().remote_addr())
        });
    address.map_or_else(|| "unknown".to_owned(), |address| address.to_string())
}
