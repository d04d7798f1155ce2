//! vowd reaching PostgreSQL over TLS, as `sslmode=verify-full` and
//! `sslrootcert=` in `--database-url` ask: against a cluster the test starts
//! itself (initdb, then postgres with `ssl=on` and a certificate from the
//! test's CA, on an ephemeral port), a replica with the right CA serves
//! over an encrypted connection; with another CA, or a host name the
//! certificate lacks, vowd refuses to start and says why.

mod common;

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{TempDir, Vowd, pki::TestPki};
use sqlx::{Connection, Row};
use vow_client::TaskState;

/// Where Debian's PostgreSQL 15 puts its programs (`VOW_PG_BIN` to override).
fn postgres_bin(program: &str) -> PathBuf {
    let directory = std::env::var_os("VOW_PG_BIN").map_or_else(
        || PathBuf::from("/usr/lib/postgresql/15/bin"),
        PathBuf::from,
    );
    let path = directory.join(program);
    assert!(
        path.exists(),
        "{} is missing: these tests need PostgreSQL's server programs (set VOW_PG_BIN)",
        path.display()
    );
    path
}

/// Runs as the `postgres` user when the test runs as root: initdb and
/// postgres refuse root.
fn as_cluster_owner(command: &mut Command, owner: Option<&nix::unistd::User>) {
    if let Some(user) = owner {
        command.uid(user.uid.as_raw()).gid(user.gid.as_raw());
    }
}

/// A PostgreSQL cluster serving TLS on 127.0.0.1, stopped and removed on drop.
struct TlsCluster {
    postgres: Child,
    port: u16,
    // Dropped after the server has stopped.
    _directory: TempDir,
}

impl TlsCluster {
    fn start(pki: &TestPki) -> Self {
        let owner = nix::unistd::geteuid()
            .is_root()
            .then(|| nix::unistd::User::from_name("postgres").ok().flatten())
            .map(|user| user.expect("a postgres user to own the cluster"));
        let directory = TempDir::new("postgres-tls");
        let data = directory.path().join("data");
        let server_certificate = directory.path().join("server.pem");
        let server_key = directory.path().join("server.key");
        std::fs::write(&server_certificate, &pki.server.certificate_pem).expect("write the cert");
        std::fs::write(&server_key, &pki.server.key_pem).expect("write the key");
        // PostgreSQL refuses a key that others may read.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&server_key, std::fs::Permissions::from_mode(0o600))
            .expect("restrict the key");
        if let Some(user) = &owner {
            for path in [directory.path(), &server_certificate, &server_key] {
                std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw()))
                    .expect("hand the cluster's files to postgres");
            }
        }

        let mut initdb = Command::new(postgres_bin("initdb"));
        initdb
            .args(["-D", path_str(&data), "-U", "postgres", "-A", "trust"])
            .args(["--no-sync", "--no-instructions"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        as_cluster_owner(&mut initdb, owner.as_ref());
        let output = initdb.output().expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut postgres = Command::new(postgres_bin("postgres"));
        postgres
            .args(["-D", path_str(&data), "-p", &port.to_string()])
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args([
                "-c",
                &format!("unix_socket_directories={}", path_str(directory.path())),
            ])
            .args(["-c", "ssl=on", "-c", "fsync=off"])
            .args([
                "-c",
                &format!("ssl_cert_file={}", path_str(&server_certificate)),
            ])
            .args(["-c", &format!("ssl_key_file={}", path_str(&server_key))])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_cluster_owner(&mut postgres, owner.as_ref());
        let postgres = postgres.spawn().expect("start postgres");
        Self {
            postgres,
            port,
            _directory: directory,
        }
    }

    /// Waits (bounded) until the cluster answers.
    async fn ready(&self) {
        let url = format!(
            "postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable",
            self.port
        );
        common::eventually(
            Duration::from_secs(30),
            "PostgreSQL to accept connections",
            || {
                let url = url.clone();
                async move { sqlx::PgConnection::connect(&url).await.is_ok() }
            },
        )
        .await;
    }

    fn url(&self, host: &str, root_certificate: &Path) -> String {
        format!(
            "postgres://postgres@{host}:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.port,
            path_str(root_certificate)
        )
    }
}

impl Drop for TlsCluster {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown.
        let pid = nix::unistd::Pid::from_raw(self.postgres.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let _ = self.postgres.wait();
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temp path")
}

#[tokio::test]
async fn vowd_verifies_postgres_certificates_with_verify_full() {
    let pki = TestPki::new();
    let cluster = TlsCluster::start(&pki);
    cluster.ready().await;
    let files = TempDir::new("postgres-tls-client");
    let right_ca = files.path().join("ca.pem");
    let wrong_ca = files.path().join("other-ca.pem");
    std::fs::write(&right_ca, &pki.ca_pem).expect("write the CA");
    std::fs::write(&wrong_ca, &TestPki::new().ca_pem).expect("write another CA");

    // Refusals first: each names the database and why.
    for (url, why) in [
        (cluster.url("localhost", &wrong_ca), "UnknownIssuer"),
        (cluster.url("127.0.0.1", &right_ca), "not valid for name"),
    ] {
        let refused = common::vowd_until_exit(
            &[
                "--store",
                "postgres",
                "--listen",
                "127.0.0.1:0",
                "--database-url",
                &url,
            ]
            .map(std::ffi::OsStr::new),
            Duration::from_secs(30),
        );
        assert!(!refused.status.success(), "{}", refused.stderr);
        assert!(
            refused.stderr.contains("cannot connect to PostgreSQL") && refused.stderr.contains(why),
            "expected {why}: {}",
            refused.stderr
        );
        assert!(!refused.stdout.contains("listening"), "{}", refused.stdout);
    }

    let url = cluster.url("localhost", &right_ca);
    let vowd = Vowd::start_postgres(&url, &[]);
    let client = common::client_without_retries(&vowd).await;
    let submitted = client
        .submit("echo")
        .input_json(serde_json::json!({"over": "postgres tls"}))
        .send()
        .await
        .expect("submit");
    let awaited = client
        .await_task(&submitted.task.id, Duration::from_secs(10))
        .await
        .expect("await");
    assert_eq!(awaited.task.state(), TaskState::Succeeded);

    // Every connection vowd holds is encrypted.
    let mut admin = sqlx::PgConnection::connect(&url)
        .await
        .expect("connect with verify-full");
    let row = sqlx::query(
        "SELECT count(*) FILTER (WHERE s.ssl) AS encrypted, count(*) AS total \
         FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
         WHERE a.application_name LIKE 'vowd%'",
    )
    .fetch_one(&mut admin)
    .await
    .expect("read pg_stat_ssl");
    let (encrypted, total): (i64, i64) = (row.get("encrypted"), row.get("total"));
    assert!(total >= 2, "vowd holds a pool connection and a listener");
    assert_eq!(encrypted, total, "every vowd connection uses TLS");
}
