//! Access control end to end: `vowd --auth-file` with API keys, JWTs and
//! quotas, driven by real clients. Another namespace's task is never seen,
//! bad credentials are refused with the right code, and the file reloads.

mod common;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use base64::Engine as _;
use common::{TempDir, Vowd, poll_until};
use futures::StreamExt;
use tonic::{Code, service::interceptor::InterceptedService, transport::Channel};
use tonic_types::StatusExt;
use vow_client::{
    TraceInjector,
    proto::{
        self, task_service_client::TaskServiceClient, worker_service_client::WorkerServiceClient,
    },
};
use vow_server::auth::{Permission, keys::new_key};

type Tasks = TaskServiceClient<InterceptedService<Channel, TraceInjector>>;
type Workers = WorkerServiceClient<InterceptedService<Channel, TraceInjector>>;

const ALL: [Permission; 5] = [
    Permission::Submit,
    Permission::Read,
    Permission::Cancel,
    Permission::Delete,
    Permission::Work,
];
const ISSUER: &str = "https://issuer.test";
const AUDIENCE: &str = "vow";

/// The identities of the auth file, by role, with the keys themselves.
struct Identities {
    keys: HashMap<&'static str, String>,
    entries: String,
}

fn identities() -> Identities {
    let mut keys = HashMap::new();
    let mut entries = String::new();
    for (role, namespace, permissions) in [
        ("team-a", "team-a", &ALL[..]),
        ("team-b", "team-b", &ALL[..]),
        ("reader-a", "team-a", &[Permission::Read][..]),
        ("admin", "*", &ALL[..]),
        ("capped", "capped", &ALL[..]),
        ("slow", "slow", &ALL[..]),
    ] {
        let (key, entry) = new_key(role, namespace, permissions).expect("a key");
        keys.insert(role, key);
        entries.push_str(&entry);
        entries.push('\n');
    }
    Identities { keys, entries }
}

/// A P-256 signing key and the JWKS that publishes it.
struct Signer {
    encoding: jsonwebtoken::EncodingKey,
    public_key: Vec<u8>,
}

impl Signer {
    fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("a P-256 key");
        Self {
            encoding: jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())
                .expect("a PKCS#8 EC key"),
            public_key: key.public_key_raw().to_vec(),
        }
    }

    fn jwks(&self, kid: &str) -> String {
        // An uncompressed point: 0x04, then x and y of 32 bytes each.
        let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        serde_json::json!({"keys": [{
            "kty": "EC", "crv": "P-256", "kid": kid, "alg": "ES256", "use": "sig",
            "x": encode(&self.public_key[1..33]), "y": encode(&self.public_key[33..65]),
        }]})
        .to_string()
    }

    fn token(&self, kid: &str, claims: serde_json::Value) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(kid.into());
        jsonwebtoken::encode(&header, &claims, &self.encoding).expect("a signed token")
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn claims(overrides: serde_json::Value) -> serde_json::Value {
    let mut claims = serde_json::json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": "svc-b", "exp": now() + 600, "nbf": now() - 10,
        "vow_namespace": "team-b", "vow_permissions": ["submit", "read"],
    });
    for (key, value) in overrides.as_object().expect("an object") {
        claims[key] = value.clone();
    }
    claims
}

fn write_auth_file(dir: &Path, identities: &Identities, signer: &Signer) -> PathBuf {
    std::fs::write(dir.join("jwks.json"), signer.jwks("k1")).expect("write the JWKS");
    let path = dir.join("auth.toml");
    let text = format!(
        "{}\n[jwt]\njwks_file = \"jwks.json\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\n\n\
         [namespaces.capped]\nmax_queued = 2\nmax_waiters = 1\n\n[namespaces.slow]\nmax_running = 1\n",
        identities.entries
    );
    std::fs::write(&path, text).expect("write the auth file");
    path
}

struct Setup {
    vowd: Vowd,
    identities: Identities,
    signer: Signer,
    dir: TempDir,
}

fn start() -> Setup {
    let dir = TempDir::new("access");
    let identities = identities();
    let signer = Signer::new();
    let path = write_auth_file(dir.path(), &identities, &signer);
    let vowd = Vowd::start(&[
        "--auth-file",
        path.to_str().expect("a UTF-8 path"),
        "--remote-kind",
        "resize",
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    Setup {
        vowd,
        identities,
        signer,
        dir,
    }
}

async fn channel(vowd: &Vowd) -> Channel {
    Channel::from_shared(vowd.url())
        .expect("a URL")
        .connect()
        .await
        .expect("connect")
}

fn injector(token: Option<&str>) -> TraceInjector {
    let injector = TraceInjector::new(false);
    match token {
        Some(token) => injector.with_bearer_token(token).expect("a header value"),
        None => injector,
    }
}

async fn tasks(vowd: &Vowd, token: Option<&str>) -> Tasks {
    TaskServiceClient::with_interceptor(channel(vowd).await, injector(token))
}

async fn workers(vowd: &Vowd, token: &str) -> Workers {
    WorkerServiceClient::with_interceptor(channel(vowd).await, injector(Some(token)))
}

impl Setup {
    async fn tasks_of(&self, role: &str) -> Tasks {
        tasks(&self.vowd, Some(&self.identities.keys[role])).await
    }
}

fn submit(kind: &str) -> proto::SubmitRequest {
    proto::SubmitRequest {
        kind: kind.into(),
        ..proto::SubmitRequest::default()
    }
}

async fn submitted(stub: &mut Tasks, request: proto::SubmitRequest) -> proto::Task {
    stub.submit(request)
        .await
        .expect("submit")
        .into_inner()
        .task
        .expect("a task")
}

fn reason(status: &tonic::Status) -> String {
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

fn assert_not_found<T: std::fmt::Debug>(result: Result<T, tonic::Status>, what: &str) {
    match result {
        Err(status) => assert_eq!(
            status.code(),
            Code::NotFound,
            "{what}: {}",
            status.message()
        ),
        Ok(_) => panic!("{what}: another namespace's task was answered"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_namespaces_task_is_never_seen() {
    let setup = start();
    let mut a = setup.tasks_of("team-a").await;
    let mut b = setup.tasks_of("team-b").await;

    // B's filter Watch is open before A's changes happen.
    let mut b_watch = b
        .watch(proto::WatchRequest {
            kinds: vec!["echo".into()],
            ..proto::WatchRequest::default()
        })
        .await
        .expect("B's filter watch")
        .into_inner();

    let keyed = proto::SubmitRequest {
        idempotency_key: "order-1".into(),
        ..submit("echo")
    };
    let a_task = submitted(&mut a, keyed.clone()).await;
    assert_eq!(a_task.namespace, "team-a");
    let a_queued = submitted(&mut a, submit("resize")).await;
    let id = || a_task.id.clone();

    assert_not_found(b.get(proto::GetRequest { id: id() }).await, "Get");
    assert_not_found(
        b.r#await(proto::AwaitRequest {
            id: id(),
            timeout: None,
        })
        .await,
        "Await",
    );
    assert_not_found(
        b.cancel(proto::CancelRequest {
            id: a_queued.id.clone(),
            reason: String::new(),
        })
        .await,
        "Cancel",
    );
    assert_not_found(
        b.delete(proto::DeleteRequest {
            id: id(),
            cancel_if_running: true,
        })
        .await,
        "Delete",
    );
    assert_not_found(
        b.watch(proto::WatchRequest {
            id: id(),
            ..proto::WatchRequest::default()
        })
        .await,
        "Watch by id",
    );
    let many = b
        .await_many(proto::AwaitManyRequest {
            ids: vec![id()],
            timeout: Some(Duration::from_millis(100).try_into().expect("a duration")),
            ..proto::AwaitManyRequest::default()
        })
        .await
        .expect("AwaitMany")
        .into_inner();
    assert!(many.finished.is_empty(), "AwaitMany showed A's task");
    assert_eq!(many.not_found_ids, vec![id()]);
    let listed = b
        .list(proto::ListRequest::default())
        .await
        .expect("List")
        .into_inner();
    assert!(listed.tasks.is_empty(), "B's List showed A's tasks");
    // The same idempotency key in B names a task of B's own.
    let b_task = submitted(&mut b, keyed).await;
    assert_ne!(b_task.id, a_task.id);
    assert_eq!(b_task.namespace, "team-b");

    // A worker of B leases nothing of A's; A's worker does, and B cannot
    // renew or complete A's lease.
    let mut b_worker = workers(&setup.vowd, &setup.identities.keys["team-b"]).await;
    let polled = b_worker
        .poll(proto::PollRequest {
            kinds: vec!["resize".into()],
            worker_id: "b-worker".into(),
            max_tasks: 1,
            lease_duration: None,
            timeout: Some(Duration::from_millis(300).try_into().expect("a duration")),
        })
        .await
        .expect("B's poll")
        .into_inner();
    assert!(polled.leases.is_empty(), "B leased A's task");
    let mut a_worker = workers(&setup.vowd, &setup.identities.keys["team-a"]).await;
    let lease = a_worker
        .poll(proto::PollRequest {
            kinds: vec!["resize".into()],
            worker_id: "a-worker".into(),
            max_tasks: 1,
            lease_duration: None,
            timeout: Some(Duration::from_secs(10).try_into().expect("a duration")),
        })
        .await
        .expect("A's poll")
        .into_inner()
        .leases
        .pop()
        .expect("A's worker leases A's task");
    let stolen = b_worker
        .heartbeat(proto::HeartbeatRequest {
            token: lease.token.clone(),
            progress: None,
        })
        .await
        .expect_err("B renewing A's lease");
    assert_eq!(stolen.code(), Code::FailedPrecondition);
    assert_eq!(reason(&stolen), "LEASE_LOST");

    // B's filter Watch saw B's task and nothing of A's.
    let seen = tokio::time::timeout(Duration::from_secs(10), async {
        let mut ids = Vec::new();
        while let Some(message) = b_watch.next().await {
            if let Some(task) = message.expect("B's watch").task {
                let done = task.id == b_task.id && task.state() == proto::TaskState::Succeeded;
                ids.push(task.id);
                if done {
                    break;
                }
            }
        }
        ids
    })
    .await
    .expect("B's watch delivers B's task within 10 s");
    assert!(!seen.contains(&a_task.id), "B's watch delivered A's task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_are_refused_with_the_right_code_and_an_audit_line() {
    let setup = start();
    let vowd = &setup.vowd;
    let mut anonymous = tasks(vowd, None).await;
    let refused = anonymous
        .submit(submit("echo"))
        .await
        .expect_err("no credentials");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(reason(&refused), "UNAUTHENTICATED");

    let guessed = "vow_0000000000000000000000000000000000000000000000000000000000000000";
    let mut guessing = tasks(vowd, Some(guessed)).await;
    let refused = guessing
        .get(proto::GetRequest { id: "0".repeat(32) })
        .await
        .expect_err("an unknown key");
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(
        !refused.message().contains(guessed),
        "the error names the key"
    );

    let mut reader = setup.tasks_of("reader-a").await;
    let refused = reader
        .submit(submit("echo"))
        .await
        .expect_err("a reader submitting");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert_eq!(reason(&refused), "PERMISSION_DENIED");
    let mut a = setup.tasks_of("team-a").await;
    let own = submitted(&mut a, submit("echo")).await;
    reader
        .get(proto::GetRequest { id: own.id })
        .await
        .expect("a reader reads its namespace's task");

    // Streams are checked too, and a namespace may not be chosen by a non-admin.
    let refused = anonymous
        .watch(proto::WatchRequest::default())
        .await
        .expect_err("an anonymous watch");
    assert_eq!(refused.code(), Code::Unauthenticated);
    let mut chooser = tonic::Request::new(proto::ListRequest::default());
    chooser
        .metadata_mut()
        .insert("x-vow-namespace", "team-b".parse().expect("a header"));
    let refused = a.list(chooser).await.expect_err("team-a choosing team-b");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // Health needs no credentials.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(vowd).await);
    health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health is open");

    let logs = vowd.logs();
    let audit = logs
        .lines()
        .find(|line| line.contains("call denied") && line.contains("reader-a"))
        .expect("an audit line for the reader");
    assert!(audit.contains("vow.v1.TaskService/Submit"), "{audit}");
    assert!(audit.contains("team-a"), "{audit}");
    for key in setup.identities.keys.values() {
        assert!(!logs.contains(key.as_str()), "a key was logged");
    }
    assert!(!logs.contains(guessed), "a guessed key was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_submits_with_a_key_and_lists_services_without_one() {
    let setup = start();
    let key = &setup.identities.keys["team-a"];
    let listed = std::process::Command::new(common::grpcurl())
        .args(["-plaintext", &setup.vowd.address, "list"])
        .output()
        .expect("run grpcurl");
    assert!(
        String::from_utf8_lossy(&listed.stdout).contains("vow.v1.TaskService"),
        "reflection is open: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let submitted = std::process::Command::new(common::grpcurl())
        .args(["-plaintext", "-H", &format!("authorization: Bearer {key}")])
        .args([
            "-d",
            r#"{"kind": "echo", "input": {"json": {"hello": "world"}}}"#,
        ])
        .args([&setup.vowd.address, "vow.v1.TaskService/Submit"])
        .output()
        .expect("run grpcurl");
    let text = String::from_utf8_lossy(&submitted.stdout);
    assert!(
        text.contains("\"namespace\": \"team-a\""),
        "grpcurl with a key: {text} {}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let refused = std::process::Command::new(common::grpcurl())
        .args(["-plaintext", "-d", r#"{"kind": "echo"}"#])
        .args([&setup.vowd.address, "vow.v1.TaskService/Submit"])
        .output()
        .expect("run grpcurl");
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("Unauthenticated"),
        "grpcurl without a key: {}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_lists_across_namespaces_or_names_one() {
    let setup = start();
    let mut a = setup.tasks_of("team-a").await;
    let mut b = setup.tasks_of("team-b").await;
    let in_a = submitted(&mut a, submit("echo")).await;
    let in_b = submitted(&mut b, submit("echo")).await;
    let mut admin = setup.tasks_of("admin").await;
    let everything: Vec<String> = admin
        .list(proto::ListRequest::default())
        .await
        .expect("list")
        .into_inner()
        .tasks
        .into_iter()
        .map(|task| task.id)
        .collect();
    assert!(everything.contains(&in_a.id) && everything.contains(&in_b.id));
    let mut named = tonic::Request::new(proto::ListRequest::default());
    named
        .metadata_mut()
        .insert("x-vow-namespace", "team-b".parse().expect("a header"));
    let only_b: Vec<String> = admin
        .list(named)
        .await
        .expect("list team-b")
        .into_inner()
        .tasks
        .into_iter()
        .map(|task| task.id)
        .collect();
    assert_eq!(only_b, vec![in_b.id.clone()]);
    admin
        .get(proto::GetRequest { id: in_a.id })
        .await
        .expect("an administrator reads any namespace's task");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwts_are_checked_for_signature_time_issuer_audience_and_algorithm() {
    let setup = start();
    let vowd = &setup.vowd;
    let good = setup.signer.token("k1", claims(serde_json::json!({})));
    let mut holder = tasks(vowd, Some(&good)).await;
    let task = submitted(&mut holder, submit("echo")).await;
    assert_eq!(task.namespace, "team-b");

    let stranger = Signer::new();
    let encode = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let unsigned = format!(
        "{}.{}.",
        encode(br#"{"alg":"none","typ":"JWT"}"#),
        encode(claims(serde_json::json!({})).to_string().as_bytes())
    );
    // HMAC keyed with the public key, the classic algorithm confusion.
    let confused = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("k1".into());
        jsonwebtoken::encode(
            &header,
            &claims(serde_json::json!({})),
            &jsonwebtoken::EncodingKey::from_secret(setup.signer.jwks("k1").as_bytes()),
        )
        .expect("an HMAC token")
    };
    for (what, token) in [
        (
            "expired",
            setup
                .signer
                .token("k1", claims(serde_json::json!({"exp": now() - 300}))),
        ),
        (
            "not yet valid",
            setup
                .signer
                .token("k1", claims(serde_json::json!({"nbf": now() + 300}))),
        ),
        (
            "wrong audience",
            setup
                .signer
                .token("k1", claims(serde_json::json!({"aud": "other"}))),
        ),
        (
            "wrong issuer",
            setup.signer.token(
                "k1",
                claims(serde_json::json!({"iss": "https://evil.test"})),
            ),
        ),
        (
            "bad signature",
            stranger.token("k1", claims(serde_json::json!({}))),
        ),
        ("alg none", unsigned),
        ("HMAC with the public key", confused),
    ] {
        let mut stub = tasks(vowd, Some(&token)).await;
        let refused = stub.submit(submit("echo")).await.expect_err(what);
        assert_eq!(
            refused.code(),
            Code::Unauthenticated,
            "{what}: {}",
            refused.message()
        );
    }
    let no_permission = setup.signer.token(
        "k1",
        claims(serde_json::json!({"vow_permissions": ["read"]})),
    );
    let refused = tasks(vowd, Some(&no_permission))
        .await
        .submit(submit("echo"))
        .await
        .expect_err("a token without submit");
    assert_eq!(refused.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_auth_file_reloads_and_an_invalid_edit_keeps_the_previous_one() {
    let setup = start();
    let path = setup.dir.path().join("auth.toml");
    let (new_key_text, entry) = new_key("late", "team-c", &ALL).expect("a key");
    let original = std::fs::read_to_string(&path).expect("read the auth file");
    std::fs::write(&path, format!("{original}\n{entry}")).expect("add a key");
    let vowd = &setup.vowd;
    let task = poll_until(
        Duration::from_secs(10),
        "the added key is honoured",
        || async {
            let mut stub = tasks(vowd, Some(&new_key_text)).await;
            stub.submit(submit("echo"))
                .await
                .ok()
                .and_then(|response| response.into_inner().task)
        },
    )
    .await;
    assert_eq!(task.namespace, "team-c");

    std::fs::write(&path, "this is [not toml").expect("break the auth file");
    poll_until(
        Duration::from_secs(10),
        "the invalid edit is logged",
        || async { vowd.logs().contains("is not valid").then_some(()) },
    )
    .await;
    let mut stub = tasks(vowd, Some(&new_key_text)).await;
    stub.submit(submit("echo"))
        .await
        .expect("the previous config stays in force");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_past_its_quotas_is_refused_with_quota_details() {
    let setup = start();
    let mut capped = setup.tasks_of("capped").await;
    // A remote kind with no worker: the tasks stay queued.
    submitted(&mut capped, submit("resize")).await;
    let waiting = submitted(&mut capped, submit("resize")).await;
    let refused = capped
        .submit(submit("resize"))
        .await
        .expect_err("a third queued task");
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(reason(&refused), "NAMESPACE_QUEUE_FULL");
    let details = refused.get_error_details();
    assert!(details.retry_info().is_some(), "RetryInfo");
    let quota = details.quota_failure().expect("QuotaFailure");
    assert_eq!(quota.violations[0].subject, "namespace:capped");
    // Another namespace is not held back by it.
    submitted(&mut setup.tasks_of("team-a").await, submit("resize")).await;

    // One open wait is the namespace's limit.
    let mut first = capped.clone();
    let id = waiting.id.clone();
    let open = tokio::spawn(async move {
        first
            .r#await(proto::AwaitRequest {
                id,
                timeout: Some(Duration::from_secs(20).try_into().expect("a duration")),
            })
            .await
    });
    let metrics = setup
        .vowd
        .metrics_address
        .clone()
        .expect("metrics are served");
    poll_until(Duration::from_secs(10), "the first wait is open", || {
        let metrics = metrics.clone();
        async move {
            let body = tokio::task::spawn_blocking(move || common::scrape_metrics(&metrics))
                .await
                .expect("scraped");
            (common::metric_value(&body, "vow_live_waiters") == Some(1.0)).then_some(())
        }
    })
    .await;
    let refused = poll_until(Duration::from_secs(10), "a second wait is refused", || {
        let mut second = capped.clone();
        let id = waiting.id.clone();
        async move {
            let answer = second
                .r#await(proto::AwaitRequest {
                    id,
                    timeout: Some(Duration::from_millis(50).try_into().expect("a duration")),
                })
                .await;
            answer.err()
        }
    })
    .await;
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(reason(&refused), "TOO_MANY_LISTENERS");
    open.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_from_vowd_keys_new_works_with_vow_token() {
    let made = std::process::Command::new(common::vowd_binary())
        .args([
            "keys",
            "new",
            "--namespace",
            "team-d",
            "--permissions",
            "submit,read",
        ])
        .args(["--name", "cli"])
        .output()
        .expect("run vowd keys new");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let printed = String::from_utf8(made.stdout).expect("UTF-8");
    let (key, entry) = printed.split_once('\n').expect("the key, then the entry");
    assert!(
        !entry.contains(key),
        "the entry holds only the key's digest"
    );
    let dir = TempDir::new("access-cli");
    let path = dir.path().join("auth.toml");
    std::fs::write(&path, entry).expect("write the auth file");
    let vowd = Vowd::start(&["--auth-file", path.to_str().expect("a UTF-8 path")]);
    let vow = |token: Option<&str>| {
        let mut command = std::process::Command::new(common::vow_binary());
        command.args([
            "-s",
            &vowd.address,
            "-o",
            "json",
            "submit",
            "echo",
            "{}",
            "--wait",
        ]);
        if let Some(token) = token {
            command.env("VOW_TOKEN", token);
        }
        command.output().expect("run vow")
    };
    let accepted = vow(Some(key));
    let answer: serde_json::Value = serde_json::from_slice(&accepted.stdout)
        .unwrap_or_else(|_| panic!("vow: {}", String::from_utf8_lossy(&accepted.stderr)));
    assert_eq!(answer["state"], "SUCCEEDED");
    assert_eq!(answer["namespace"], "team-d");
    let refused = vow(None);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("UNAUTHENTICATED")
            || String::from_utf8_lossy(&refused.stderr).contains("nauthenticated"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
}

fn sleep_for(ms: u64) -> proto::SubmitRequest {
    proto::SubmitRequest {
        input: Some(proto::Payload {
            data: Some(proto::payload::Data::Json(prost_types::Value {
                kind: Some(prost_types::value::Kind::StructValue(prost_types::Struct {
                    fields: [(
                        "ms".to_owned(),
                        prost_types::Value {
                            kind: Some(prost_types::value::Kind::NumberValue(ms as f64)),
                        },
                    )]
                    .into(),
                })),
            })),
            ..proto::Payload::default()
        }),
        ..submit("sleep")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_runs_at_most_its_quota_of_attempts_and_holds_no_one_else_back() {
    let setup = start();
    let mut slow = setup.tasks_of("slow").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(submitted(&mut slow, sleep_for(300)).await.id);
    }
    // Another namespace's task starts while the slow ones wait their turn.
    let mut a = setup.tasks_of("team-a").await;
    let other = submitted(&mut a, sleep_for(10)).await;
    let finished = a
        .r#await(proto::AwaitRequest {
            id: other.id,
            timeout: Some(Duration::from_secs(10).try_into().expect("a duration")),
        })
        .await
        .expect("await")
        .into_inner();
    assert!(
        finished.done,
        "team-a's task ran past the slow namespace's queue"
    );
    let finished = poll_until(Duration::from_secs(20), "every slow task finished", || {
        let mut slow = slow.clone();
        let ids = ids.clone();
        async move {
            let mut tasks = Vec::new();
            for id in ids {
                let task = slow
                    .get(proto::GetRequest { id })
                    .await
                    .expect("get")
                    .into_inner()
                    .task
                    .expect("a task");
                if task.state() != proto::TaskState::Succeeded {
                    return None;
                }
                tasks.push(task);
            }
            Some(tasks)
        }
    })
    .await;
    // From the tasks' own times, not from reads one after another (which
    // see one attempt end and the next start between two Gets).
    let mut spans: Vec<(std::time::SystemTime, std::time::SystemTime)> = finished
        .iter()
        .map(|task| {
            let time = |at: Option<prost_types::Timestamp>| {
                std::time::SystemTime::try_from(at.expect("a finished task's times"))
                    .expect("a time")
            };
            (time(task.start_time), time(task.end_time))
        })
        .collect();
    spans.sort();
    for pair in spans.windows(2) {
        assert!(
            pair[1].0 >= pair[0].1,
            "at most one attempt of the namespace ran at once: {spans:?}"
        );
    }
}

/// A client certificate's SPIFFE id names an identity of the auth file:
/// its calls need no token and land in that identity's namespace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_is_an_identity_of_the_auth_file() {
    let pki = common::pki::TestPki::new();
    let dir = TempDir::new("access-mtls");
    pki.write_to(dir.path());
    let path = dir.path().join("auth.toml");
    std::fs::write(
        &path,
        format!(
            "[[mtls]]\nname = \"spiffe-worker\"\nsan = \"{}\"\nnamespace = \"team-a\"\npermissions = [\"submit\", \"read\"]\n",
            common::pki::CLIENT_SPIFFE_ID
        ),
    )
    .expect("write the auth file");
    let file = |name: &str| dir.path().join(name).to_str().expect("UTF-8").to_owned();
    let vowd = Vowd::start(&[
        "--tls-cert",
        &file("server.pem"),
        "--tls-key",
        &file("server.key"),
        "--tls-client-ca",
        &file("ca.pem"),
        "--auth-file",
        path.to_str().expect("UTF-8"),
    ]);
    let options = vow_client::ConnectOptions::new()
        .ca_certificate_pem(pki.ca_pem.as_bytes())
        .domain_name("localhost")
        .identity_pem(
            pki.client.certificate_pem.as_bytes(),
            pki.client.key_pem.as_bytes(),
        );
    let client = vow_client::Client::connect_with(&vowd.address, &options)
        .await
        .expect("connect with the client certificate");
    let submitted = client
        .submit("echo")
        .input_json(serde_json::json!({"by": "certificate"}))
        .send()
        .await
        .expect("a call by the certificate's identity");
    assert_eq!(submitted.task.namespace, "team-a");
    let refused = client
        .delete(&submitted.task.id, true)
        .await
        .expect_err("the identity may not delete");
    assert_eq!(
        refused.rpc().map(|rpc| rpc.code),
        Some(Code::PermissionDenied)
    );
}
