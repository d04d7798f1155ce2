//! TLS end to end: a CA and certificates made by the test (rcgen), the
//! ceiling server serving over TLS on an ephemeral port in-process, and the
//! client library and the `vow` CLI (a command and the bench) trusting the
//! CA, not trusting it, and presenting (or not) a client certificate to a
//! server that requires one.

mod common;

use std::{net::SocketAddr, process::Stdio, time::Duration};

use common::pki::TestPki;
use tonic::transport::ServerTlsConfig;
use vow_client::{Client, ConnectOptions, Error, RetryConfig, TaskExt, TaskState};

/// Longest any single call or CLI run may take before the test fails.
const BOUND: Duration = Duration::from_secs(20);

/// The ceiling server over TLS on `127.0.0.1:0`, stopped when dropped.
struct TlsCeiling {
    address: SocketAddr,
    serving: tokio::task::JoinHandle<()>,
}

impl TlsCeiling {
    async fn start(tls: ServerTlsConfig) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind an ephemeral port");
        let address = listener.local_addr().expect("local address");
        let serving = tokio::spawn(async move {
            vow_client::ceiling::serve(listener, Some(tls), std::future::pending())
                .await
                .expect("the ceiling server serves");
        });
        Self { address, serving }
    }
}

impl Drop for TlsCeiling {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

/// Options that trust the test CA and verify the name `localhost` (the
/// server is addressed by its IP).
fn trusting(pki: &TestPki) -> ConnectOptions {
    ConnectOptions::new()
        .ca_certificate_pem(pki.ca_pem.as_bytes())
        .domain_name("localhost")
}

/// Submits an echo task and awaits it: the proof that calls go through.
async fn submit_and_await(client: &Client) -> Result<vow_client::Awaited, Error> {
    let input = serde_json::json!({"over": "tls"});
    let submitted = client.submit("echo").input_json(input).send().await?;
    client
        .await_task(&submitted.task.id, Duration::from_secs(5))
        .await
}

#[tokio::test]
async fn a_client_trusting_the_ca_submits_and_awaits_over_tls() {
    let pki = TestPki::new();
    let server = TlsCeiling::start(pki.server_tls()).await;
    let client = tokio::time::timeout(
        BOUND,
        Client::connect_with(&server.address.to_string(), &trusting(&pki)),
    )
    .await
    .expect("connect in time")
    .expect("a TLS connection to a server the CA vouches for");
    let awaited = tokio::time::timeout(BOUND, submit_and_await(&client))
        .await
        .expect("calls in time")
        .expect("submit and await over TLS");
    assert!(awaited.done);
    assert_eq!(awaited.task.state(), TaskState::Succeeded);
    assert_eq!(
        awaited.task.output_json(),
        Some(serde_json::json!({"over": "tls"}))
    );
}

#[tokio::test]
async fn an_untrusted_or_misnamed_certificate_is_refused_with_a_clear_error() {
    let pki = TestPki::new();
    let server = TlsCeiling::start(pki.server_tls()).await;
    let address = server.address.to_string();

    let not_trusting = ConnectOptions::new().tls(true).domain_name("localhost");
    let refused = tokio::time::timeout(BOUND, Client::connect_with(&address, &not_trusting))
        .await
        .expect("refused in time");
    let Err(error) = refused else {
        panic!("a server signed by an unknown CA must be refused");
    };
    assert!(matches!(error, Error::TlsRejected { .. }), "{error:?}");
    assert!(!error.is_retryable());
    let message = error.to_string();
    assert!(
        message.contains("TLS handshake") && message.contains("UnknownIssuer"),
        "{message}"
    );

    let misnamed = ConnectOptions::new()
        .ca_certificate_pem(pki.ca_pem.as_bytes())
        .domain_name("not-localhost");
    let refused = tokio::time::timeout(BOUND, Client::connect_with(&address, &misnamed))
        .await
        .expect("refused in time");
    let Err(error) = refused else {
        panic!("a certificate for another name must be refused");
    };
    assert!(matches!(error, Error::TlsRejected { .. }), "{error:?}");
    assert!(
        error
            .to_string()
            .contains("not valid for name \"not-localhost\""),
        "{error}"
    );
}

#[tokio::test]
async fn unusable_pem_is_an_invalid_endpoint_before_any_connection() {
    let pki = TestPki::new();
    let not_pem = ConnectOptions::new().ca_certificate_pem("just text");
    let Err(Error::InvalidEndpoint { reason, .. }) =
        Client::connect_lazy_with("127.0.0.1:1", &not_pem)
    else {
        panic!("a CA file without a certificate must be refused");
    };
    assert!(reason.contains("no PEM certificate"), "{reason}");

    let key_for_certificate = trusting(&pki).identity_pem(
        pki.client.certificate_pem.as_bytes(),
        pki.client.certificate_pem.as_bytes(),
    );
    let Err(Error::InvalidEndpoint { reason, .. }) =
        Client::connect_lazy_with("127.0.0.1:1", &key_for_certificate)
    else {
        panic!("a key file without a key must be refused");
    };
    assert!(reason.contains("client key"), "{reason}");

    let plain_url = trusting(&pki);
    let Err(Error::InvalidEndpoint { reason, .. }) =
        Client::connect_lazy_with("http://127.0.0.1:1", &plain_url)
    else {
        panic!("an http:// URL with TLS settings must be refused");
    };
    assert!(reason.contains("https://"), "{reason}");
}

#[tokio::test]
async fn mutual_tls_admits_a_client_certificate_signed_by_the_ca_and_refuses_none() {
    let pki = TestPki::new();
    let server = TlsCeiling::start(pki.server_tls_requiring_client_certificates()).await;
    let address = server.address.to_string();

    let with_identity = trusting(&pki).identity_pem(
        pki.client.certificate_pem.as_bytes(),
        pki.client.key_pem.as_bytes(),
    );
    let admitted = tokio::time::timeout(BOUND, async {
        let client = Client::connect_with(&address, &with_identity).await?;
        submit_and_await(&client).await
    })
    .await
    .expect("calls in time")
    .expect("a client with a certificate from the CA is admitted");
    assert_eq!(admitted.task.state(), TaskState::Succeeded);

    // With TLS 1.3 the server judges the client's certificate after the
    // client has finished its side of the handshake, so the refusal may come
    // with the connection or with the first call.
    let refused = tokio::time::timeout(BOUND, async {
        let client = Client::connect_with(&address, &trusting(&pki))
            .await?
            .with_retry(RetryConfig {
                max_attempts: 1,
                ..RetryConfig::default()
            });
        submit_and_await(&client).await
    })
    .await
    .expect("refused in time");
    let Err(error) = refused else {
        panic!("a client without a certificate must be refused");
    };
    let message = error.to_string();
    assert!(message.contains("CertificateRequired"), "{message}");
}

/// Runs `vow <args>` against the TLS ceiling server without blocking the
/// runtime that serves it; fails the test past [`BOUND`].
async fn vow(server: &TlsCeiling, args: &[&str]) -> std::process::Output {
    let child = tokio::process::Command::new(common::vow_binary())
        .args(["--server", &server.address.to_string()])
        .args(args)
        .env_remove("VOW_SERVER")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn vow");
    tokio::time::timeout(BOUND, child.wait_with_output())
        .await
        .expect("vow finishes in time")
        .expect("vow's output")
}

/// The test CA written to a file in a fresh temporary directory (kept
/// while the returned guard lives), and the file's path.
fn write_ca_file(pki: &TestPki, name: &str) -> (common::TempDir, String) {
    let files = common::TempDir::new(name);
    let ca_file = files.path().join("ca.pem");
    std::fs::write(&ca_file, &pki.ca_pem).expect("write the CA");
    let path = ca_file.to_str().expect("a UTF-8 temp path").to_owned();
    (files, path)
}

#[tokio::test]
async fn the_cli_runs_a_task_over_tls_with_the_ca_given_and_is_refused_without() {
    let pki = TestPki::new();
    let server = TlsCeiling::start(pki.server_tls()).await;
    let (_files, ca_file) = write_ca_file(&pki, "tls");
    let ca_file = ca_file.as_str();

    let trusted = vow(
        &server,
        &[
            "--tls-ca-cert",
            ca_file,
            "--tls-domain",
            "localhost",
            "-o",
            "json",
            "run",
            "echo",
            r#"{"cli":"tls"}"#,
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&trusted.stdout);
    let stderr = String::from_utf8_lossy(&trusted.stderr);
    assert_eq!(trusted.status.code(), Some(0), "{stdout}\n{stderr}");
    let task: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON task");
    assert_eq!(task["output"]["json"]["cli"], "tls", "{task}");

    // Refused at once with exit 5, not retried until --connect-timeout.
    let untrusted = vow(
        &server,
        &[
            "--tls",
            "--tls-domain",
            "localhost",
            "--connect-timeout",
            "60s",
            "get",
            "abc",
        ],
    )
    .await;
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert_eq!(untrusted.status.code(), Some(5), "{stderr}");
    assert!(stderr.contains("TLS handshake"), "{stderr}");

    let missing = vow(
        &server,
        &["--tls-ca-cert", "/nonexistent/ca.pem", "get", "abc"],
    )
    .await;
    let stderr = String::from_utf8_lossy(&missing.stderr);
    assert_eq!(missing.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cannot read --tls-ca-cert /nonexistent/ca.pem"),
        "{stderr}"
    );
}

#[tokio::test]
async fn bench_connects_with_the_cli_tls_options() {
    let pki = TestPki::new();
    let server = TlsCeiling::start(pki.server_tls()).await;
    let (_files, ca_file) = write_ca_file(&pki, "tls-bench");
    let ca_file = ca_file.as_str();

    let bench = vow(
        &server,
        &[
            "--tls-ca-cert",
            ca_file,
            "--tls-domain",
            "localhost",
            "-o",
            "json",
            "bench",
            "--duration",
            "1s",
            "--warmup",
            "0s",
            "--concurrency",
            "2",
            "--connections",
            "1",
        ],
    )
    .await;
    let stdout = String::from_utf8_lossy(&bench.stdout);
    let stderr = String::from_utf8_lossy(&bench.stderr);
    assert_eq!(bench.status.code(), Some(0), "{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON report");
    assert!(
        report["tasks"].as_u64().expect("a task count") > 0,
        "{report}"
    );
    assert_eq!(report["errors"], serde_json::json!({}), "{report}");
}
