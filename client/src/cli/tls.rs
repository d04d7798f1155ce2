//! The `--tls*` options every connecting command shares, and the
//! `vow_client::ConnectOptions` they stand for. Files are read only when a
//! command connects, so `vow completions` never trips over a stale variable.

use std::path::{Path, PathBuf};

use clap::Args;
use vow_client::ConnectOptions;

use super::commands::Failure;

/// TLS options (also from `VOW_TLS*` variables).
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "TLS")]
pub struct TlsArgs {
    /// Use TLS for a `host:port` server too (an `https://` URL, or any other --tls-* option,
    /// turns it on by itself). Certificates are verified against the Mozilla roots.
    #[arg(
        long,
        env = "VOW_TLS",
        global = true,
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub tls: bool,

    /// Also trust this CA certificate (PEM), e.g. a private CA that signed the server's.
    #[arg(long, value_name = "FILE", env = "VOW_TLS_CA_CERT", global = true)]
    pub tls_ca_cert: Option<PathBuf>,

    /// Verify the server's certificate for this name instead of the --server host
    /// (for an IP address, or a name the certificate lacks).
    #[arg(long, value_name = "NAME", env = "VOW_TLS_DOMAIN", global = true)]
    pub tls_domain: Option<String>,

    /// Present this client certificate (PEM) to servers that require mutual TLS;
    /// needs --tls-client-key.
    #[arg(
        long,
        value_name = "FILE",
        env = "VOW_TLS_CLIENT_CERT",
        global = true,
        requires = "tls_client_key"
    )]
    pub tls_client_cert: Option<PathBuf>,

    /// The private key (PEM) of --tls-client-cert.
    #[arg(
        long,
        value_name = "FILE",
        env = "VOW_TLS_CLIENT_KEY",
        global = true,
        requires = "tls_client_cert"
    )]
    pub tls_client_key: Option<PathBuf>,
}

impl TlsArgs {
    /// The connect options these flags ask for; an unreadable file is a usage error.
    pub fn connect_options(&self) -> Result<ConnectOptions, Failure> {
        let mut options = ConnectOptions::new();
        if self.tls {
            options = options.tls(true);
        }
        if let Some(path) = &self.tls_ca_cert {
            options = options.ca_certificate_pem(read("--tls-ca-cert", path)?);
        }
        if let Some(name) = &self.tls_domain {
            options = options.domain_name(name);
        }
        if let (Some(certificate), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
            options = options.identity_pem(
                read("--tls-client-cert", certificate)?,
                read("--tls-client-key", key)?,
            );
        }
        Ok(options)
    }
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, Failure> {
    std::fs::read(path)
        .map_err(|error| Failure::Usage(format!("cannot read {flag} {}: {error}", path.display())))
}
