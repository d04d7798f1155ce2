//! vowd serving TLS and mutual TLS: the real binary with certificates from
//! a CA the test makes (rcgen), reached by the Rust client, grpcurl and
//! Python's grpcio; certificates rotated under a running vowd (by swapping
//! a symlinked directory, as Kubernetes does with cert-manager's secrets);
//! bad files refused at start naming their flag; and the client
//! certificate's names as the access-control work will read them.

mod common;

use std::{path::Path, process::Command, sync::Arc, time::Duration};

use common::{TempDir, Vowd, pki::TestPki};
use vow_client::{Client, ConnectOptions, RetryConfig, TaskState};

/// Longest any single call, connection or rotation may take.
const BOUND: Duration = Duration::from_secs(20);

/// A directory laid out as Kubernetes mounts a secret: `tls.crt`, `tls.key`
/// and `ca.crt` are symlinks through `..data`, itself a symlink to a
/// timestamped directory that a rotation replaces at once.
struct SecretVolume {
    root: TempDir,
    generation: u32,
}

impl SecretVolume {
    fn new(pki: &TestPki) -> Self {
        let root = TempDir::new("tls-secret");
        let mut volume = Self {
            root,
            generation: 0,
        };
        volume.publish(
            &pki.server.certificate_pem,
            &pki.server.key_pem,
            &pki.ca_pem,
        );
        for name in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(Path::new("..data").join(name), volume.path(name))
                .expect("link a file through ..data");
        }
        volume
    }

    /// Writes a new generation and swaps `..data` to it in one rename.
    fn publish(&mut self, certificate_pem: &str, key_pem: &str, ca_pem: &str) {
        self.generation += 1;
        let generation = format!("..generation_{}", self.generation);
        let directory = self.root.path().join(&generation);
        std::fs::create_dir(&directory).expect("create a generation");
        std::fs::write(directory.join("tls.crt"), certificate_pem).expect("write tls.crt");
        std::fs::write(directory.join("tls.key"), key_pem).expect("write tls.key");
        std::fs::write(directory.join("ca.crt"), ca_pem).expect("write ca.crt");
        let staged = self.root.path().join("..data_tmp");
        std::os::unix::fs::symlink(&generation, &staged).expect("stage the ..data link");
        std::fs::rename(&staged, self.root.path().join("..data")).expect("swap ..data");
    }

    fn path(&self, name: &str) -> std::path::PathBuf {
        self.root.path().join(name)
    }

    fn arg(&self, name: &str) -> String {
        self.path(name).to_str().expect("a UTF-8 path").to_owned()
    }
}

/// Starts vowd serving TLS from `volume`, with mutual TLS if asked.
fn start_tls(volume: &SecretVolume, mutual: bool, extra: &[&str]) -> Vowd {
    let (certificate, key, ca) = (
        volume.arg("tls.crt"),
        volume.arg("tls.key"),
        volume.arg("ca.crt"),
    );
    let mut args = vec!["--tls-cert", &certificate, "--tls-key", &key];
    if mutual {
        args.extend(["--tls-client-ca", &ca]);
    }
    args.extend_from_slice(extra);
    Vowd::start(&args)
}

/// Trusts `ca_pem` and checks the name `localhost` (vowd is addressed by IP).
fn trusting(ca_pem: &str) -> ConnectOptions {
    ConnectOptions::new()
        .ca_certificate_pem(ca_pem.as_bytes())
        .domain_name("localhost")
}

/// Options presenting `pki`'s client certificate to a server `pki` signed.
fn with_client_certificate(pki: &TestPki) -> ConnectOptions {
    trusting(&pki.ca_pem).identity_pem(
        pki.client.certificate_pem.as_bytes(),
        pki.client.key_pem.as_bytes(),
    )
}

/// Submits an echo task and awaits it over `client`.
async fn round_trip(client: &Client) -> Result<(), vow_client::Error> {
    let submitted = client
        .submit("echo")
        .input_json(serde_json::json!({"over": "tls"}))
        .send()
        .await?;
    let awaited = client
        .await_task(&submitted.task.id, Duration::from_secs(5))
        .await?;
    assert_eq!(awaited.task.state(), TaskState::Succeeded);
    Ok(())
}

/// Connects (one attempt per call) and runs a round trip, within [`BOUND`].
async fn connect_and_round_trip(address: &str, options: &ConnectOptions) -> Result<(), String> {
    let attempt = async {
        let client = Client::connect_with(address, options)
            .await?
            .with_retry(RetryConfig {
                max_attempts: 1,
                ..RetryConfig::default()
            });
        round_trip(&client).await
    };
    tokio::time::timeout(BOUND, attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|error| error.to_string())
}

#[tokio::test]
async fn the_rust_client_submits_and_awaits_over_tls_and_plain_http2_is_refused() {
    let pki = TestPki::new();
    let volume = SecretVolume::new(&pki);
    let vowd = start_tls(&volume, false, &[]);
    connect_and_round_trip(&vowd.address, &trusting(&pki.ca_pem))
        .await
        .expect("a client trusting the CA gets through");

    let other = TestPki::new();
    let refused = connect_and_round_trip(&vowd.address, &trusting(&other.ca_pem))
        .await
        .expect_err("a client trusting another CA is refused");
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    let plain = connect_and_round_trip(&vowd.address, &ConnectOptions::new().tls(false)).await;
    assert!(plain.is_err(), "plain HTTP/2 to a TLS port must fail");
}

#[test]
fn grpcurl_and_python_reach_vowd_over_tls_with_the_ca() {
    let pki = TestPki::new();
    let volume = SecretVolume::new(&pki);
    let vowd = start_tls(&volume, false, &[]);
    let ca = volume.arg("ca.crt");

    let output = Command::new(common::grpcurl())
        .args([
            "-cacert",
            &ca,
            "-servername",
            "localhost",
            "-max-time",
            "10",
        ])
        .args([
            "-d",
            r#"{"kind":"echo","input":{"json":{"via":"grpcurl"}}}"#,
        ])
        .args([&vowd.address, "vow.v1.TaskService/Run"])
        .output()
        .expect("run grpcurl");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("TASK_STATE_SUCCEEDED"), "{stdout}");

    let untrusted = Command::new(common::grpcurl())
        .args(["-servername", "localhost", "-max-time", "10"])
        .args([&vowd.address, "list"])
        .output()
        .expect("run grpcurl");
    assert!(
        !untrusted.status.success(),
        "grpcurl without the CA must fail"
    );

    let reply = python_health_check(&vowd.address, &ca, None);
    // HealthCheckResponse { status: SERVING }: field 1, varint 1.
    assert_eq!(reply.trim(), "0801");
}

/// Runs a health check with Python's grpcio over TLS; prints the reply's
/// bytes in hex. `client` names a certificate and key to present.
fn python_health_check(address: &str, ca: &str, client: Option<(&str, &str)>) -> String {
    const SCRIPT: &str = r#"
import sys, grpc
address, ca, cert, key = sys.argv[1], sys.argv[2], sys.argv[3] or None, sys.argv[4] or None
read = lambda path: open(path, "rb").read() if path else None
credentials = grpc.ssl_channel_credentials(
    root_certificates=read(ca), private_key=read(key), certificate_chain=read(cert))
channel = grpc.secure_channel(address, credentials,
    options=[("grpc.ssl_target_name_override", "localhost")])
check = channel.unary_unary("/grpc.health.v1.Health/Check")
print(check(b"", timeout=10).hex())
"#;
    let (certificate, key) = client.unwrap_or(("", ""));
    let output = Command::new(common::python())
        .args(["-c", SCRIPT, address, ca, certificate, key])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "python: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn mutual_tls_admits_the_cas_clients_and_refuses_others() {
    let pki = TestPki::new();
    let volume = SecretVolume::new(&pki);
    let vowd = start_tls(&volume, true, &[]);

    connect_and_round_trip(&vowd.address, &with_client_certificate(&pki))
        .await
        .expect("a client certificate from the CA is admitted");

    // Under TLS 1.3 vowd judges the client's certificate after the client
    // finished its handshake: the refusal comes with the first call, and its
    // wording (the alert, or a broken pipe) depends on when the client reads
    // the alert.
    connect_and_round_trip(&vowd.address, &trusting(&pki.ca_pem))
        .await
        .expect_err("a client without a certificate is refused");

    // A certificate from another CA, for a client that trusts the server.
    let stranger = TestPki::new();
    let foreign = trusting(&pki.ca_pem).identity_pem(
        stranger.client.certificate_pem.as_bytes(),
        stranger.client.key_pem.as_bytes(),
    );
    connect_and_round_trip(&vowd.address, &foreign)
        .await
        .expect_err("a certificate from another CA is refused");

    // grpcio and grpcurl present certificates too.
    let files = TempDir::new("mtls-client");
    pki.write_to(files.path());
    let path = |name: &str| files.path().join(name).to_str().expect("UTF-8").to_owned();
    let reply = python_health_check(
        &vowd.address,
        &path("ca.pem"),
        Some((&path("client.pem"), &path("client.key"))),
    );
    assert_eq!(reply.trim(), "0801");
    let grpcurl = Command::new(common::grpcurl())
        .args(["-cacert", &path("ca.pem"), "-servername", "localhost"])
        .args(["-cert", &path("client.pem"), "-key", &path("client.key")])
        .args([
            "-max-time",
            "10",
            &vowd.address,
            "grpc.health.v1.Health/Check",
        ])
        .output()
        .expect("run grpcurl");
    assert!(
        grpcurl.status.success(),
        "{}",
        String::from_utf8_lossy(&grpcurl.stderr)
    );
}

#[tokio::test]
async fn a_rotated_certificate_is_served_to_new_connections_while_open_ones_keep_working() {
    let before = TestPki::new();
    let mut volume = SecretVolume::new(&before);
    let vowd = start_tls(&volume, false, &[]);
    // One HTTP/2 connection, opened before the rotation and kept after it.
    let channel = tokio::time::timeout(BOUND, trusting(&before.ca_pem).channel(&vowd.address))
        .await
        .expect("connect in time")
        .expect("connect before the rotation");
    let open = Client::from_channel(channel);
    round_trip(&open).await.expect("a call before the rotation");

    // A certificate from a new CA: only clients trusting the new CA accept it.
    let after = TestPki::new();
    volume.publish(
        &after.server.certificate_pem,
        &after.server.key_pem,
        &after.ca_pem,
    );
    common::eventually(BOUND, "the new certificate served", || async {
        connect_and_round_trip(&vowd.address, &trusting(&after.ca_pem))
            .await
            .is_ok()
    })
    .await;
    let old_ca = connect_and_round_trip(&vowd.address, &trusting(&before.ca_pem))
        .await
        .expect_err("new connections no longer get the old certificate");
    assert!(old_ca.contains("UnknownIssuer"), "{old_ca}");
    round_trip(&open)
        .await
        .expect("the connection opened before the rotation still works");

    // A renewal from the same CA (a new serial and key) is picked up too,
    // and a broken rotation keeps the current certificate.
    let renewed = after.renewed_server();
    volume.publish(
        &renewed.certificate_pem,
        &before.server.key_pem,
        &after.ca_pem,
    );
    common::eventually(BOUND, "the refused reload logged", || async {
        vowd.logs().contains("the changed TLS files are invalid")
    })
    .await;
    connect_and_round_trip(&vowd.address, &trusting(&after.ca_pem))
        .await
        .expect("the last good certificate is still served");
    volume.publish(&renewed.certificate_pem, &renewed.key_pem, &after.ca_pem);
    common::eventually(BOUND, "the renewal reloaded", || async {
        vowd.logs().matches("reloaded the TLS files").count() >= 2
    })
    .await;
    connect_and_round_trip(&vowd.address, &trusting(&after.ca_pem))
        .await
        .expect("the renewed certificate is served");
}

#[test]
fn bad_tls_files_stop_vowd_naming_the_flag() {
    let pki = TestPki::new();
    let files = TempDir::new("bad-tls");
    pki.write_to(files.path());
    let path = |name: &str| files.path().join(name);
    std::fs::write(path("empty.pem"), "").expect("write an empty file");
    let cases: [(&[&Path], &str); 5] = [
        (
            &[Path::new("/nonexistent/cert.pem"), &path("server.key")],
            "cannot read --tls-cert",
        ),
        (&[&path("server.pem"), &path("empty.pem")], "--tls-key"),
        (&[&path("empty.pem"), &path("server.key")], "--tls-cert"),
        (
            &[&path("server.pem"), &path("client.key")],
            "--tls-cert and --tls-key",
        ),
        (
            &[&path("server.pem"), &path("server.key"), &path("empty.pem")],
            "--tls-client-ca",
        ),
    ];
    for (files, expected) in cases {
        let mut args: Vec<&std::ffi::OsStr> = ["--store", "memory", "--listen", "127.0.0.1:0"]
            .map(std::ffi::OsStr::new)
            .to_vec();
        for (flag, file) in ["--tls-cert", "--tls-key", "--tls-client-ca"]
            .iter()
            .zip(files)
        {
            args.extend([std::ffi::OsStr::new(flag), file.as_os_str()]);
        }
        let refused = common::vowd_until_exit(&args, BOUND);
        assert_eq!(refused.status.code(), Some(2), "{}", refused.stderr);
        assert!(
            refused.stderr.contains(expected),
            "{expected}: {}",
            refused.stderr
        );
        assert!(!refused.stdout.contains("listening"), "{}", refused.stdout);
    }

    let alone = common::vowd_until_exit(
        &["--tls-cert".as_ref(), path("server.pem").as_os_str()],
        BOUND,
    );
    assert_eq!(alone.status.code(), Some(2), "{}", alone.stderr);
    assert!(alone.stderr.contains("--tls-key"), "{}", alone.stderr);
}

#[tokio::test]
async fn a_silent_client_is_dropped_after_the_handshake_timeout_without_blocking_others() {
    use tokio::io::AsyncReadExt;
    let pki = TestPki::new();
    let volume = SecretVolume::new(&pki);
    let vowd = start_tls(&volume, false, &["--tls-handshake-timeout", "1s"]);
    let mut silent = tokio::net::TcpStream::connect(&vowd.address)
        .await
        .expect("connect TCP");
    connect_and_round_trip(&vowd.address, &trusting(&pki.ca_pem))
        .await
        .expect("others are served while a handshake waits");
    let mut buffer = [0; 64];
    let closed = tokio::time::timeout(BOUND, silent.read(&mut buffer))
        .await
        .expect("vowd closes the silent connection in time");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
}

#[test]
fn metrics_are_served_over_the_same_tls() {
    let pki = TestPki::new();
    let volume = SecretVolume::new(&pki);
    let vowd = start_tls(&volume, false, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = vowd.metrics_address.clone().expect("a metrics address");
    // By the name in the certificate: localhost is 127.0.0.1, where vowd listens.
    const SCRIPT: &str = r#"
import sys, ssl, http.client
context = ssl.create_default_context(cafile=sys.argv[2])
port = int(sys.argv[1].rsplit(":", 1)[1])
connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
connection.request("GET", "/metrics")
response = connection.getresponse()
print(response.status)
print(response.read().decode())
"#;
    let output = Command::new(common::python())
        .args(["-c", SCRIPT, &metrics, &volume.arg("ca.crt")])
        .output()
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.starts_with("200"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("vow_"), "{stdout}");
}

#[tokio::test]
async fn the_client_certificate_names_reach_the_request() {
    use vow_server::tls::{ALPN_GRPC, ReloadingServerConfig, TlsFiles, TlsIncoming};

    let pki = TestPki::new();
    let files = TempDir::new("tls-names");
    pki.write_to(files.path());
    let tls = ReloadingServerConfig::load(
        TlsFiles {
            certificate: files.path().join("server.pem"),
            key: files.path().join("server.key"),
            client_ca: Some(files.path().join("ca.pem")),
        },
        ALPN_GRPC,
    )
    .expect("valid TLS files");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("an address").to_string();
    let incoming = TlsIncoming::new(
        tonic::transport::server::TcpIncoming::from(listener),
        tls,
        Duration::from_secs(5),
    );
    let seen = Arc::new(std::sync::Mutex::new(None));
    let record = seen.clone();
    let (_, health) = tonic_health::server::health_reporter();
    let server = tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(
            move |request: tonic::Request<()>| {
                *record.lock().expect("not poisoned") =
                    vow_server::tls::client_certificate_names(request.extensions());
                Ok(request)
            },
        ))
        .add_service(health)
        .serve_with_incoming(incoming);
    let serving = tokio::spawn(server);

    let channel = tokio::time::timeout(BOUND, with_client_certificate(&pki).channel(&address))
        .await
        .expect("connect in time")
        .expect("connect with a client certificate");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("a health check");
    let names = seen
        .lock()
        .expect("not poisoned")
        .clone()
        .expect("the client certificate's names");
    assert_eq!(names.dns_names, ["vow-test-client"]);
    assert_eq!(names.uris, [common::pki::CLIENT_SPIFFE_ID]);
    serving.abort();
}
