//! Who is on the other end of a mutual-TLS connection: the names in the
//! subject alternative names of the client's certificate, which rustls has
//! verified against `--tls-client-ca` before the first request.

use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use x509_parser::{certificate::X509Certificate, extensions::GeneralName, prelude::FromDer};

/// The subject alternative names of a verified client certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientCertificateNames {
    /// `dNSName` entries, such as `worker-1.team-a.svc`.
    pub dns_names: Vec<String>,
    /// `uniformResourceIdentifier` entries, such as a SPIFFE id
    /// `spiffe://cluster.local/ns/team-a/sa/worker`.
    pub uris: Vec<String>,
}

/// The names of the client certificate of the connection a request came on
/// (`request.extensions()` in a gRPC handler). `None` when the connection is
/// not TLS, when vowd asks for no client certificates (no
/// `--tls-client-ca`), or when the certificate cannot be parsed.
pub fn client_certificate_names(extensions: &tonic::Extensions) -> Option<ClientCertificateNames> {
    names_of_connection(extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?)
}

/// [`client_certificate_names`] for an `http::Request`'s extensions, as a
/// tower layer in front of the services sees them.
pub fn client_certificate_names_in_http(
    extensions: &http::Extensions,
) -> Option<ClientCertificateNames> {
    names_of_connection(extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?)
}

fn names_of_connection(
    connection: &TlsConnectInfo<TcpConnectInfo>,
) -> Option<ClientCertificateNames> {
    let chain = connection.peer_certs()?;
    // The leaf comes first; the rest are the intermediates it sent.
    names_of_certificate(chain.first()?)
}

/// The DNS and URI names of one DER certificate.
fn names_of_certificate(der: &[u8]) -> Option<ClientCertificateNames> {
    let (_, certificate) = X509Certificate::from_der(der).ok()?;
    let mut names = ClientCertificateNames::default();
    let Ok(Some(alternative_names)) = certificate.subject_alternative_name() else {
        return Some(names);
    };
    for name in &alternative_names.value.general_names {
        match name {
            GeneralName::DNSName(dns_name) => names.dns_names.push((*dns_name).to_owned()),
            GeneralName::URI(uri) => names.uris.push((*uri).to_owned()),
            _ => {}
        }
    }
    Some(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dns_and_spiffe_names() {
        let mut params = rcgen::CertificateParams::new(vec!["worker.team-a.svc".to_owned()])
            .expect("a valid name");
        params.subject_alt_names.push(rcgen::SanType::URI(
            "spiffe://cluster.local/ns/team-a/sa/worker"
                .try_into()
                .expect("a valid URI"),
        ));
        let key = rcgen::KeyPair::generate().expect("a key");
        let certificate = params.self_signed(&key).expect("a certificate");
        let names = names_of_certificate(certificate.der()).expect("parsable");
        assert_eq!(names.dns_names, ["worker.team-a.svc"]);
        assert_eq!(names.uris, ["spiffe://cluster.local/ns/team-a/sa/worker"]);
    }

    #[test]
    fn garbage_has_no_names() {
        assert_eq!(names_of_certificate(b"not a certificate"), None);
    }
}
