//! A CA of a test's own (rcgen) and the certificates it signs, for TLS
//! servers and clients in the end-to-end tests.

#![allow(dead_code)]

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// A certificate and its private key, both PEM.
pub struct KeyedCertificate {
    pub certificate_pem: String,
    pub key_pem: String,
}

/// A CA of the test's own and what it signed: a server certificate for
/// `localhost` and a client certificate.
pub struct TestPki {
    pub ca_pem: String,
    pub server: KeyedCertificate,
    /// Names `vow-test-client` (DNS) and [`CLIENT_SPIFFE_ID`] (URI).
    pub client: KeyedCertificate,
    issuer: Issuer<'static, KeyPair>,
}

/// The URI name of [`TestPki::client`], as a SPIFFE workload would carry.
pub const CLIENT_SPIFFE_ID: &str = "spiffe://vow.test/ns/team-a/sa/worker";

impl TestPki {
    pub fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::new()).expect("no names is valid");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params.distinguished_name.push(
            rcgen::DnType::CommonName,
            format!("vow test CA {}", ca_serial()),
        );
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca_pem = ca_params.self_signed(&ca_key).expect("a CA").pem();
        let issuer = Issuer::new(ca_params, ca_key);
        Self {
            ca_pem,
            server: leaf(&issuer, "localhost", ExtendedKeyUsagePurpose::ServerAuth),
            client: leaf(
                &issuer,
                "vow-test-client",
                ExtendedKeyUsagePurpose::ClientAuth,
            ),
            issuer,
        }
    }

    /// Another server certificate for `localhost` from the same CA (a new
    /// serial and key): what a renewal brings.
    pub fn renewed_server(&self) -> KeyedCertificate {
        leaf(
            &self.issuer,
            "localhost",
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// Writes the CA, the server's certificate and key, and the client's
    /// certificate and key into `directory` as `ca.pem`, `server.pem`,
    /// `server.key`, `client.pem` and `client.key`.
    pub fn write_to(&self, directory: &std::path::Path) {
        let files = [
            ("ca.pem", &self.ca_pem),
            ("server.pem", &self.server.certificate_pem),
            ("server.key", &self.server.key_pem),
            ("client.pem", &self.client.certificate_pem),
            ("client.key", &self.client.key_pem),
        ];
        for (name, contents) in files {
            std::fs::write(directory.join(name), contents).expect("write a PEM file");
        }
    }

    pub fn server_tls(&self) -> ServerTlsConfig {
        ServerTlsConfig::new().identity(Identity::from_pem(
            &self.server.certificate_pem,
            &self.server.key_pem,
        ))
    }

    /// A server that admits only clients with a certificate signed by the CA.
    pub fn server_tls_requiring_client_certificates(&self) -> ServerTlsConfig {
        self.server_tls()
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
    }
}

/// A number of each CA of this process, so that two CAs never share a name
/// (a verifier then tells "unknown issuer" from "bad signature").
fn ca_serial() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    purpose: ExtendedKeyUsagePurpose,
) -> KeyedCertificate {
    let mut params = CertificateParams::new(vec![name.to_owned()]).expect("a valid name");
    if purpose == ExtendedKeyUsagePurpose::ClientAuth {
        params.subject_alt_names.push(rcgen::SanType::URI(
            CLIENT_SPIFFE_ID.try_into().expect("a valid URI"),
        ));
    }
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("a leaf key");
    let certificate = params.signed_by(&key, issuer).expect("a signed leaf");
    KeyedCertificate {
        certificate_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
    }
}
