//! The PEM files of `--tls-cert`, `--tls-key` and `--tls-client-ca`, read
//! together and turned into a rustls server configuration. Every error names
//! the flag whose file is at fault, so an operator knows what to fix.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    RootCertStore, ServerConfig,
    crypto::CryptoProvider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};

/// Why the TLS files cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {}: {source}", path.display())]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{flag} {}: {reason}", path.display())]
    Invalid {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--tls-cert and --tls-key do not make a usable pair: {0}")]
    Unusable(String),
}

/// Where the server's certificate chain, its key and (for mutual TLS) the
/// CA of client certificates are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub certificate: PathBuf,
    pub key: PathBuf,
    /// When set, every client must present a certificate this CA signed.
    pub client_ca: Option<PathBuf>,
}

/// The bytes of the files, as read at one moment: reloading compares them
/// with the last ones read to see a change, whatever a rotation did to
/// timestamps or symlinks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct FileContents {
    certificate: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

impl TlsFiles {
    /// Reads and checks the files: the configuration they make, with `alpn`.
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        self.build(&self.read()?, alpn)
    }

    pub(super) fn read(&self) -> Result<FileContents, TlsError> {
        Ok(FileContents {
            certificate: read("--tls-cert", &self.certificate)?,
            key: read("--tls-key", &self.key)?,
            client_ca: match &self.client_ca {
                Some(path) => Some(read("--tls-client-ca", path)?),
                None => None,
            },
        })
    }

    pub(super) fn build(
        &self,
        contents: &FileContents,
        alpn: &[&[u8]],
    ) -> Result<ServerConfig, TlsError> {
        let chain = certificates("--tls-cert", &self.certificate, &contents.certificate)?;
        let key = PrivateKeyDer::from_pem_slice(&contents.key).map_err(|error| {
            invalid(
                "--tls-key",
                &self.key,
                format!("no usable private key: {error}"),
            )
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|error| TlsError::Unusable(error.to_string()))?;
        let builder = match (&self.client_ca, &contents.client_ca) {
            (Some(path), Some(pem)) => {
                builder.with_client_cert_verifier(client_verifier(path, pem, provider)?)
            }
            _ => builder.with_no_client_auth(),
        };
        // Also checks that the key is the certificate's.
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|error| TlsError::Unusable(error.to_string()))?;
        config.alpn_protocols = alpn.iter().map(|protocol| protocol.to_vec()).collect();
        Ok(config)
    }
}

/// Admits only clients whose certificate chains up to a CA in `pem`.
fn client_verifier(
    path: &Path,
    pem: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for certificate in certificates("--tls-client-ca", path, pem)? {
        roots.add(certificate).map_err(|error| {
            invalid("--tls-client-ca", path, format!("not a usable CA: {error}"))
        })?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|error| invalid("--tls-client-ca", path, error.to_string()))
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        flag,
        path: path.to_owned(),
        source,
    })
}

/// Every certificate in `pem`; at least one, and no unreadable section.
fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| invalid(flag, path, format!("unreadable PEM: {error}")))?;
    if certificates.is_empty() {
        return Err(invalid(flag, path, "no PEM certificate in it".to_owned()));
    }
    Ok(certificates)
}

fn invalid(flag: &'static str, path: &Path, reason: String) -> TlsError {
    TlsError::Invalid {
        flag,
        path: path.to_owned(),
        reason,
    }
}
