//! The client certificate of a call under mTLS, as names to map.

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::{extensions::GeneralName, prelude::FromDer};

/// The DNS and URI SANs (a SPIFFE id, say) of the verified certificate
/// the client presented, if it presented one.
pub fn client_sans(extensions: &http::Extensions) -> Vec<String> {
    let Some(certificates) = extensions
        .get::<TlsConnectInfo<TcpConnectInfo>>()
        .and_then(TlsConnectInfo::peer_certs)
    else {
        return Vec::new();
    };
    let Some(leaf) = certificates.first() else {
        return Vec::new();
    };
    let Ok((_, certificate)) = x509_parser::certificate::X509Certificate::from_der(leaf.as_ref())
    else {
        return Vec::new();
    };
    let Ok(Some(names)) = certificate.subject_alternative_name() else {
        return Vec::new();
    };
    names
        .value
        .general_names
        .iter()
        .filter_map(|name| match name {
            GeneralName::DNSName(dns) => Some((*dns).to_owned()),
            GeneralName::URI(uri) => Some((*uri).to_owned()),
            _ => None,
        })
        .collect()
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
