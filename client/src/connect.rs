//! How the client reaches a server: plain HTTP/2 or TLS (rustls, with the
//! Mozilla roots compiled in), an extra CA, the name to verify, a client
//! identity for mutual TLS, and the connect timeout. [`ConnectOptions`] turns
//! an endpoint string into a tonic [`Endpoint`]; it holds no connection.

use std::time::Duration;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{
    Error,
    balance::{self, Target},
};

/// How long a connection (TCP, then the TLS handshake) may take by default.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How to connect to a server: TLS and its certificates, and the connect
/// timeout. The default is what [`Client::connect`](crate::Client::connect)
/// does: TLS only for `https://` URLs, verified against the Mozilla roots.
///
/// TLS is on when asked for with [`tls(true)`](Self::tls), for an `https://`
/// URL, or as soon as a CA, a domain name or an identity is given; a
/// `host:port` endpoint then means `https://host:port`.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use vow_client::{Client, ConnectOptions};
/// let options = ConnectOptions::new()
///     .ca_certificate_pem(std::fs::read("ca.pem")?)
///     .domain_name("vow.internal");
/// let client = Client::connect_with("10.0.0.7:50051", &options).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// `Some(false)` forces plain HTTP/2, `Some(true)` TLS; `None` decides by
    /// the URL and the settings given.
    tls: Option<bool>,
    ca_certificate_pem: Option<Vec<u8>>,
    domain_name: Option<String>,
    identity_pem: Option<(Vec<u8>, Vec<u8>)>,
    connect_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            tls: None,
            ca_certificate_pem: None,
            domain_name: None,
            identity_pem: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        }
    }
}

impl ConnectOptions {
    /// The defaults: TLS for `https://` URLs only, a 5 s connect timeout.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), vow_client::Error> {
    /// let options = vow_client::ConnectOptions::new();
    /// let client = vow_client::Client::connect_with("https://vow.example.com", &options).await?;
    /// # Ok(()) }
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Forces TLS on (`true`; a `host:port` endpoint becomes `https://`) or
    /// off (`false`; an `https://` URL or a TLS setting is then an error).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), vow_client::Error> {
    /// // A server with a certificate from a public CA, addressed as host:port.
    /// let options = vow_client::ConnectOptions::new().tls(true);
    /// let client = vow_client::Client::connect_with("vow.example.com:443", &options).await?;
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, enabled: bool) -> Self {
        self.tls = Some(enabled);
        self
    }

    /// Trusts the CA certificate(s) in `pem` besides the Mozilla roots, e.g.
    /// a private CA that signed the server's certificate. Turns TLS on.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = vow_client::ConnectOptions::new()
    ///     .ca_certificate_pem(std::fs::read("/etc/vow/ca.pem")?);
    /// let client = vow_client::Client::connect_with("vow.internal:50051", &options).await?;
    /// # Ok(()) }
    /// ```
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_certificate_pem = Some(pem.into());
        self
    }

    /// Verifies the server's certificate against `name` instead of the
    /// endpoint's host (an IP address, or a name the certificate lacks; it
    /// is also the SNI sent). Turns TLS on.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = vow_client::ConnectOptions::new()
    ///     .ca_certificate_pem(std::fs::read("ca.pem")?)
    ///     .domain_name("vow.internal");
    /// let client = vow_client::Client::connect_with("10.0.0.7:50051", &options).await?;
    /// # Ok(()) }
    /// ```
    pub fn domain_name(mut self, name: impl Into<String>) -> Self {
        self.domain_name = Some(name.into());
        self
    }

    /// Presents this certificate chain and private key (both PEM) to the
    /// server, for servers that require mutual TLS. Turns TLS on.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = vow_client::ConnectOptions::new()
    ///     .ca_certificate_pem(std::fs::read("ca.pem")?)
    ///     .identity_pem(std::fs::read("client.pem")?, std::fs::read("client.key")?);
    /// let client = vow_client::Client::connect_with("vow.internal:50051", &options).await?;
    /// # Ok(()) }
    /// ```
    pub fn identity_pem(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.identity_pem = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// Bounds one connection attempt, TCP and TLS handshake each (default 5 s).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), vow_client::Error> {
    /// use std::time::Duration;
    /// let options = vow_client::ConnectOptions::new().connect_timeout(Duration::from_secs(1));
    /// let client = vow_client::Client::connect_with("127.0.0.1:50051", &options).await?;
    /// # Ok(()) }
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Whether connecting to `endpoint` with these options uses TLS.
    ///
    /// ```no_run
    /// let options = vow_client::ConnectOptions::new();
    /// assert!(options.uses_tls("https://vow.example.com"));
    /// assert!(!options.uses_tls("127.0.0.1:50051"));
    /// ```
    pub fn uses_tls(&self, endpoint: &str) -> bool {
        let has_tls_settings = self.ca_certificate_pem.is_some()
            || self.domain_name.is_some()
            || self.identity_pem.is_some();
        self.tls
            .unwrap_or_else(|| endpoint.starts_with("https://") || has_tls_settings)
    }

    /// The URL to connect to: `endpoint` as given if it is a URL, otherwise
    /// `https://` or `http://` in front of `host:port` as TLS is on or off.
    /// Fails when the URL's scheme contradicts the TLS settings (tonic would
    /// quietly send plain HTTP/2 to an `http://` URL despite them).
    ///
    /// ```no_run
    /// let options = vow_client::ConnectOptions::new().tls(true);
    /// assert_eq!(options.url("vow.example.com:443")?, "https://vow.example.com:443");
    /// # Ok::<(), vow_client::Error>(())
    /// ```
    pub fn url(&self, endpoint: &str) -> Result<String, Error> {
        let tls = self.uses_tls(endpoint);
        let Some((scheme, _)) = endpoint.split_once("://") else {
            let scheme = if tls { "https" } else { "http" };
            return Ok(format!("{scheme}://{endpoint}"));
        };
        let contradiction = match (scheme, tls) {
            ("https", false) => "an https:// URL needs TLS, which is turned off",
            ("http", true) => "TLS is on but the URL says http://: use https:// or host:port",
            _ => return Ok(endpoint.to_owned()),
        };
        Err(invalid(endpoint, contradiction))
    }

    /// A tonic endpoint for `endpoint` with these options, for callers that
    /// build their own channels (one per connection, say). Checks the PEM
    /// given, so a file without a certificate or a key fails here, not at
    /// the first handshake.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let options = vow_client::ConnectOptions::new().ca_certificate_pem(std::fs::read("ca.pem")?);
    /// let channel = options.endpoint("vow.internal:50051")?.connect().await?;
    /// let client = vow_client::Client::from_channel(channel);
    /// # Ok(()) }
    /// ```
    pub fn endpoint(&self, endpoint: &str) -> Result<Endpoint, Error> {
        let url = self.url(endpoint)?;
        let plain = Endpoint::from_shared(url.clone())
            .map_err(|error| invalid(&url, &error.to_string()))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if !self.uses_tls(endpoint) {
            return Ok(plain);
        }
        plain
            .tls_config(self.tls_config(&url)?)
            .map_err(|error| invalid(&url, &crate::source_chain(&error)))
    }

    /// Opens one HTTP/2 connection to `endpoint` (a tonic [`Channel`]), for
    /// callers that spread work over several. `endpoint` may also name several
    /// servers, `a:50051,b:50051` or `dns:///name:50051` (every address of the
    /// name, looked up again every 15 s): the channel then balances calls over
    /// them, connecting to each on first use. Fails like
    /// [`Client::connect_with`](crate::Client::connect_with).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), vow_client::Error> {
    /// use vow_client::proto::task_service_client::TaskServiceClient;
    /// let options = vow_client::ConnectOptions::new();
    /// let mut stubs = Vec::new();
    /// for _ in 0..4 {
    ///     stubs.push(TaskServiceClient::new(options.channel("127.0.0.1:50051").await?));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn channel(&self, endpoint: &str) -> Result<Channel, Error> {
        match Target::parse(endpoint)? {
            Target::One(endpoint) => self.one_channel(&endpoint).await,
            Target::List(endpoints) => balance::list_channel(self, &endpoints),
            Target::Dns { host, port } => balance::dns_channel(self, &host, port, true).await,
        }
    }

    /// Like [`channel`](Self::channel), connecting on first use (and, for a
    /// `dns:///` target, looking the name up then).
    pub async fn lazy_channel(&self, endpoint: &str) -> Result<Channel, Error> {
        match Target::parse(endpoint)? {
            Target::One(endpoint) => Ok(self.endpoint(&endpoint)?.connect_lazy()),
            Target::List(endpoints) => balance::list_channel(self, &endpoints),
            Target::Dns { host, port } => balance::dns_channel(self, &host, port, false).await,
        }
    }

    /// Whether a name to verify was given.
    pub(crate) fn has_domain_name(&self) -> bool {
        self.domain_name.is_some()
    }

    async fn one_channel(&self, endpoint: &str) -> Result<Channel, Error> {
        let url = self.url(endpoint)?;
        self.endpoint(endpoint)?.connect().await.map_err(|error| {
            let reason = crate::source_chain(&error);
            if is_tls_rejection(&error) {
                Error::TlsRejected {
                    endpoint: url,
                    reason,
                }
            } else {
                Error::Unreachable {
                    endpoint: url,
                    reason,
                }
            }
        })
    }

    fn tls_config(&self, url: &str) -> Result<ClientTlsConfig, Error> {
        let mut config = ClientTlsConfig::new()
            .with_webpki_roots()
            .timeout(self.connect_timeout);
        if let Some(pem) = &self.ca_certificate_pem {
            check_certificates(pem).map_err(|reason| {
                invalid(url, &format!("the CA certificate is unusable: {reason}"))
            })?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        if let Some(name) = &self.domain_name {
            config = config.domain_name(name);
        }
        if let Some((certificate_pem, key_pem)) = &self.identity_pem {
            check_certificates(certificate_pem).map_err(|reason| {
                invalid(
                    url,
                    &format!("the client certificate is unusable: {reason}"),
                )
            })?;
            PrivateKeyDer::from_pem_slice(key_pem)
                .map_err(|error| invalid(url, &format!("the client key is unusable: {error}")))?;
            config = config.identity(Identity::from_pem(certificate_pem, key_pem));
        }
        Ok(config)
    }
}

/// At least one certificate, and every PEM section a readable one.
fn check_certificates(pem: &[u8]) -> Result<(), String> {
    let mut count = 0;
    for certificate in CertificateDer::pem_slice_iter(pem) {
        certificate.map_err(|error| error.to_string())?;
        count += 1;
    }
    if count == 0 {
        return Err("no PEM certificate in it".to_owned());
    }
    Ok(())
}

fn invalid(endpoint: &str, reason: &str) -> Error {
    Error::InvalidEndpoint {
        endpoint: endpoint.to_owned(),
        reason: reason.to_owned(),
    }
}

/// Whether a connect error is rustls refusing the handshake (a certificate
/// not trusted or not matching, or the server refusing ours): no retry fixes it.
fn is_tls_rejection(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(cause) = source {
        if cause.is::<rustls::Error>() {
            return true;
        }
        // tokio-rustls hands rustls' errors over inside an io::Error.
        let wrapped = cause
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .is_some_and(|inner| inner.is::<rustls::Error>());
        if wrapped {
            return true;
        }
        source = cause.source();
    }
    false
}
