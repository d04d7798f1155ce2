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
    pub client: KeyedCertificate,
}

impl TestPki {
    pub fn new() -> Self {
        let mut ca_params = CertificateParams::new(Vec::new()).expect("no names is valid");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "vow test CA");
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

fn leaf(
    issuer: &Issuer<'static, KeyPair>,
    name: &str,
    purpose: ExtendedKeyUsagePurpose,
) -> KeyedCertificate {
    let mut params = CertificateParams::new(vec![name.to_owned()]).expect("a valid name");
    params.extended_key_usages = vec![purpose];
    params.use_authority_key_identifier_extension = true;
    let key = KeyPair::generate().expect("a leaf key");
    let certificate = params.signed_by(&key, issuer).expect("a signed leaf");
    KeyedCertificate {
        certificate_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
    }
}
