//! The Rust client's retries against a real `vowd`: a call made before the
//! server is up is retried on UNAVAILABLE until it is, and a Submit whose
//! reply is lost on the network is retried with the same idempotency key, so
//! the server creates one task.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use common::{Vowd, eventually};
use futures::TryStreamExt;
use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tonic::Code;
use vow_client::{Client, ListFilter, RetryConfig};

const BOUND: Duration = Duration::from_secs(10);

fn patient_retries() -> RetryConfig {
    RetryConfig {
        max_attempts: 100,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn a_call_made_before_the_server_starts_is_retried_until_it_answers() {
    let address = free_address();
    let no_retries = RetryConfig {
        max_attempts: 1,
        ..RetryConfig::default()
    };
    let impatient = Client::connect_lazy(&address)
        .expect("a valid endpoint")
        .with_retry(no_retries);
    let refused = impatient
        .get("0123")
        .await
        .expect_err("nothing listens yet");
    assert_eq!(refused.code(), Some(Code::Unavailable), "{refused}");

    let patient = Client::connect_lazy(&address)
        .expect("a valid endpoint")
        .with_retry(patient_retries());
    let mut submit = tokio::spawn(async move {
        patient
            .submit("echo")
            .input_json(serde_json::json!({"late": true}))
            .send()
            .await
    });
    // A refused connection fails in microseconds, so a call still pending
    // after this long has been refused and is retrying.
    let pending = tokio::time::timeout(Duration::from_millis(300), &mut submit).await;
    assert!(
        pending.is_err(),
        "the submit ended before vowd started: {pending:?}"
    );

    let _vowd = VowdOn::start(&address);
    let submitted = tokio::time::timeout(BOUND, submit)
        .await
        .expect("the submit ends once vowd is up")
        .expect("the submit task did not panic")
        .expect("the retried submit succeeds");
    let direct = Client::connect(&address).await.expect("connect to vowd");
    let task = direct
        .get(&submitted.task.id)
        .await
        .expect("the task exists");
    assert_eq!(task.kind, "echo");
}

#[tokio::test]
async fn a_submit_whose_reply_is_lost_is_retried_into_the_same_task() {
    let vowd = Vowd::start(&[]);
    let proxy = ReplyLosingProxy::start(vowd.address.clone()).await;
    let client = Client::connect_lazy(&proxy.address)
        .expect("a valid endpoint")
        .with_retry(patient_retries());
    let submit = tokio::spawn(async move {
        client
            .submit("echo")
            .input_json(serde_json::json!({"once": true}))
            .send()
            .await
    });

    // The first attempt reaches vowd and creates the task...
    let direct = Client::connect(&vowd.address)
        .await
        .expect("connect to vowd");
    let listed = || async {
        direct
            .list(ListFilter::default())
            .try_collect::<Vec<_>>()
            .await
            .expect("list tasks")
    };
    eventually(BOUND, "the first attempt to reach vowd", || async {
        !listed().await.is_empty()
    })
    .await;
    // ...but its reply never arrives: the connection dies under it.
    proxy.cut_first_connection.notify_one();

    let submitted = tokio::time::timeout(BOUND, submit)
        .await
        .expect("the retry ends")
        .expect("the submit task did not panic")
        .expect("the retried submit succeeds");
    assert!(
        submitted.deduplicated,
        "the retry found the first attempt's task"
    );
    let tasks = listed().await;
    assert_eq!(tasks.len(), 1, "one task for one submit: {tasks:?}");
    assert_eq!(tasks[0].id, submitted.task.id);
}

/// An address nothing listens on (bound, then released).
fn free_address() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").to_string()
}

/// A `vowd` on a chosen address, for the cases where the client comes first.
struct VowdOn(Child);

impl VowdOn {
    fn start(address: &str) -> Self {
        let mut child = Command::new(common::vowd_binary())
            .args(["--store", "memory", "--listen", address])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn vowd");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout is piped"))
            .read_line(&mut line)
            .expect("read vowd's stdout");
        assert!(line.starts_with("vowd listening on"), "vowd said {line:?}");
        Self(child)
    }
}

impl Drop for VowdOn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A TCP relay in front of vowd. Its first connection carries requests to
/// vowd but swallows every reply, until the test cuts it: to the client, a
/// request the server acted on whose answer was lost. Later connections
/// relay both ways.
struct ReplyLosingProxy {
    address: String,
    cut_first_connection: Arc<Notify>,
}

impl ReplyLosingProxy {
    async fn start(upstream: String) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the proxy");
        let address = listener.local_addr().expect("local address").to_string();
        let cut_first_connection = Arc::new(Notify::new());
        let cut = Arc::clone(&cut_first_connection);
        tokio::spawn(async move {
            let mut first = true;
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                if std::mem::take(&mut first) {
                    tokio::spawn(swallow_replies(inbound, outbound, Arc::clone(&cut)));
                } else {
                    tokio::spawn(async move {
                        let (mut inbound, mut outbound) = (inbound, outbound);
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    });
                }
            }
        });
        Self {
            address,
            cut_first_connection,
        }
    }
}

async fn swallow_replies(inbound: TcpStream, outbound: TcpStream, cut: Arc<Notify>) {
    let (mut from_client, mut to_client) = inbound.into_split();
    let (mut from_server, mut to_server) = outbound.into_split();
    let requests = tokio::io::copy(&mut from_client, &mut to_server);
    let mut nowhere = tokio::io::sink();
    let replies = tokio::io::copy(&mut from_server, &mut nowhere);
    tokio::select! {
        _ = requests => {}
        _ = replies => {}
        () = cut.notified() => {}
    }
    // Reset rather than close, as a dead peer or middlebox would.
    let _ = to_client.shutdown().await;
}
