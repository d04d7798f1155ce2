//! Shared harness of the end-to-end tests: a real `vowd` process on an
//! ephemeral port, stopped on drop, and helpers that wait on conditions with
//! a bound instead of sleeping.

#![allow(dead_code)]

use std::{
    future::Future,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::Duration,
};

/// The built `vowd` binary (`cargo build --bins` puts it beside the test
/// executables), or `VOW_VOWD_BINARY` (benchmarks point it at a release build).
pub fn vowd_binary() -> PathBuf {
    match std::env::var_os("VOW_VOWD_BINARY") {
        Some(path) => PathBuf::from(path),
        None => binary("vowd"),
    }
}

/// The built `vow` CLI.
pub fn vow_binary() -> PathBuf {
    binary("vow")
}

fn binary(name: &str) -> PathBuf {
    let test_exe = std::env::current_exe().expect("the test binary has a path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let path = test_exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps")
        .join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
        path.display()
    );
    path
}

/// A running `vowd`, killed when dropped.
pub struct Vowd {
    pub child: Child,
    /// `host:port` it listens on.
    pub address: String,
    /// `host:port` of its `/metrics` endpoint, when started with `--metrics-listen`.
    pub metrics_address: Option<String>,
    stderr_log: PathBuf,
}

impl Vowd {
    /// Starts `vowd --store memory --listen 127.0.0.1:0 <extra args>` and waits
    /// for the line that announces its address.
    pub fn start(extra_args: &[&str]) -> Self {
        Self::start_with_env(extra_args, &[])
    }

    pub fn start_with_env(extra_args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(&["--store".into(), "memory".into()], extra_args, env)
    }

    /// Spawns `vowd --listen 127.0.0.1:0 <store args> <extra args>` and waits
    /// for the line that announces its address (the metrics line, if any,
    /// comes first).
    fn launch(
        store_args: &[std::ffi::OsString],
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let stderr_log = std::env::temp_dir().join(format!(
            "vowd-test-{}-{}.log",
            std::process::id(),
            rand_suffix()
        ));
        let stderr = std::fs::File::create(&stderr_log).expect("create the stderr log");
        let mut command = Command::new(vowd_binary());
        // A test restarting a replica on the port a proxy knows names it.
        if !extra_args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command
            .args(store_args)
            .args(extra_args)
            .env("VOW_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command.spawn().expect("spawn vowd");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut stdout = BufReader::new(stdout);
        let mut metrics_address = None;
        let address = loop {
            let mut line = String::new();
            stdout.read_line(&mut line).expect("read vowd's stdout");
            if let Some(address) = line.trim().strip_prefix("vowd metrics on ") {
                metrics_address = Some(address.to_owned());
                continue;
            }
            let Some(address) = line.trim().strip_prefix("vowd listening on ") else {
                let log = std::fs::read_to_string(&stderr_log).unwrap_or_default();
                panic!("vowd did not announce its address; stdout {line:?}; stderr:\n{log}");
            };
            break address.to_owned();
        };
        Self {
            address,
            metrics_address,
            child,
            stderr_log,
        }
    }

    /// `http://host:port`, for tonic channels.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// What the process wrote to stderr so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.stderr_log).unwrap_or_default()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).expect("signal vowd");
    }

    /// Waits (bounded) for the process to exit and returns its status.
    pub fn wait_exit(&mut self, bound: Duration) -> std::process::ExitStatus {
        let started = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("poll vowd") {
                return status;
            }
            assert!(
                started.elapsed() < bound,
                "vowd did not exit within {bound:?}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Vowd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr_log);
    }
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

/// A client of `vowd` that makes one attempt per call, so what the server
/// answers is what the test sees.
pub async fn client_without_retries(vowd: &Vowd) -> vow_client::Client {
    vow_client::Client::connect(&vowd.address)
        .await
        .expect("connect to vowd")
        .with_retry(vow_client::RetryConfig {
            max_attempts: 1,
            ..vow_client::RetryConfig::default()
        })
}

/// Polls `condition` until it holds, failing the test after `bound`.
pub async fn eventually<F, Fut>(bound: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = tokio::time::Instant::now();
    loop {
        if condition().await {
            return;
        }
        assert!(
            started.elapsed() < bound,
            "timed out after {bound:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The Python interpreter of the test venv that scripts/test prepares.
pub fn python() -> PathBuf {
    tool("VOW_PYTHON", "target/test-env/venv/bin/python")
}

/// The grpcurl binary that scripts/test installs into the venv.
pub fn grpcurl() -> PathBuf {
    tool("VOW_GRPCURL", "target/test-env/venv/bin/grpcurl")
}

fn tool(variable: &str, default_relative: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(default_relative));
    assert!(
        path.exists(),
        "{} is missing: run scripts/test, which installs the test tools (or set {variable})",
        path.display()
    );
    path
}

/// Polls `probe` until it yields a value, failing the test after `bound`.
pub async fn poll_until<T, F, Fut>(bound: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = tokio::time::Instant::now();
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            started.elapsed() < bound,
            "timed out after {bound:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Fetches `http://{address}/metrics` (plain HTTP/1.1, no client library needed).
pub fn scrape_metrics(address: &str) -> String {
    use std::io::{Read, Write};
    let mut stream =
        std::net::TcpStream::connect(address).expect("connect to the metrics endpoint");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("set a read timeout");
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n"
    )
    .expect("send the request");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("read the response");
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "metrics answered {head}");
    body.to_owned()
}

/// The value of an unlabelled gauge or counter in a Prometheus text body.
pub fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (metric, value) = line.rsplit_once(' ')?;
            (metric == name).then(|| value.parse().ok()).flatten()
        })
}

/// Resident memory of a process in KiB, from /proc.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

impl Vowd {
    /// Starts `vowd --store embedded --data-dir <data_dir> --listen 127.0.0.1:0
    /// <extra args>`; starting it again on the same directory is a restart.
    /// The listening line is printed only once the store is open and
    /// recovered, so a returned `Vowd` serves the data of earlier runs.
    pub fn start_embedded(data_dir: &std::path::Path, extra_args: &[&str]) -> Self {
        let store_args = [
            "--store".into(),
            "embedded".into(),
            "--data-dir".into(),
            data_dir.into(),
        ];
        Self::launch(&store_args, extra_args, &[])
    }
}

/// How a `vowd` that was expected to refuse to start ended.
pub struct Refused {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `vowd <args>` (no defaults added) and waits, bounded, for it to exit
/// on its own: for start-up errors. Fails the test if it is still running
/// after `bound` (it is killed then).
pub fn vowd_until_exit(args: &[&std::ffi::OsStr], bound: Duration) -> Refused {
    vowd_until_exit_with_env(args, &[], bound)
}

/// [`vowd_until_exit`] with `env` added to vowd's environment.
pub fn vowd_until_exit_with_env(
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
    bound: Duration,
) -> Refused {
    let log = |stream: &str| {
        std::env::temp_dir().join(format!(
            "vowd-test-{}-{}.{stream}",
            std::process::id(),
            rand_suffix()
        ))
    };
    let (stdout_log, stderr_log) = (log("stdout"), log("stderr"));
    let mut child = Command::new(vowd_binary())
        .args(args)
        .env("VOW_LOG", "info")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_log).expect("create the stdout log"))
        .stderr(std::fs::File::create(&stderr_log).expect("create the stderr log"))
        .spawn()
        .expect("spawn vowd");
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("poll vowd") {
            break Some(status);
        }
        if started.elapsed() > bound {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let stdout = std::fs::read_to_string(&stdout_log).unwrap_or_default();
    let stderr = std::fs::read_to_string(&stderr_log).unwrap_or_default();
    let _ = std::fs::remove_file(&stdout_log);
    let _ = std::fs::remove_file(&stderr_log);
    let Some(status) = status else {
        panic!(
            "vowd {args:?} was still running after {bound:?}; stdout:\n{stdout}\nstderr:\n{stderr}"
        );
    };
    Refused {
        status,
        stdout,
        stderr,
    }
}

/// A fresh directory under the system temp dir, removed (with everything in
/// it) when dropped, also when the test panics.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "vow-{name}-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir(&path).expect("create a temp dir");
        Self(path)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// The server's integration tests create their databases the same way: one
// harness for both.
#[path = "../../server/tests/support/mod.rs"]
mod postgres_support;
#[allow(unused_imports)] // Only the tests that need PostgreSQL use it.
pub use postgres_support::{TestDatabase, postgres_server};

pub mod fault_proxy;
pub mod pki;

impl Vowd {
    /// Starts `vowd --store postgres --database-url <database_url> --listen
    /// 127.0.0.1:0 <extra args>`: one replica; several on one URL share the
    /// work. Returns once the store is open (migrated, listening for the
    /// other replicas' changes) and the replica serves.
    pub fn start_postgres(database_url: &str, extra_args: &[&str]) -> Self {
        let store_args = [
            "--store".into(),
            "postgres".into(),
            "--database-url".into(),
            database_url.into(),
        ];
        Self::launch(&store_args, extra_args, &[])
    }
}

/// Awaits `id` again and again (the server may be recovering) until it is
/// done within `bound`, and checks that it succeeded.
#[allow(dead_code)] // Only the fault tests use it.
pub async fn await_success(client: &vow_client::Client, id: &str, bound: Duration) {
    let awaited = poll_until(bound, "an acknowledged task to finish", || async {
        client
            .await_task(id, Duration::from_secs(5))
            .await
            .ok()
            .filter(|awaited| awaited.done)
    })
    .await;
    assert_eq!(
        awaited.task.state(),
        vow_client::TaskState::Succeeded,
        "{id}"
    );
}
