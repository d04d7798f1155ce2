//! Stores written by the release before namespaces (tests/fixtures, made by
//! `tests/fixtures/make.sh`) open in this one with nothing lost: every task
//! in the `default` namespace, its idempotency key still deduplicating, and
//! a queued remote task still leased and finished by a worker.

mod common;

use std::{process::Command, time::Duration};

use common::{TempDir, TestDatabase, Vowd};
use futures::TryStreamExt;
use vow_client::{
    ListFilter,
    proto::{self, TaskState, worker_service_client::WorkerServiceClient},
};

fn fixture(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(path)
}

/// What the fixtures hold, checked through the API of the new release.
async fn the_old_tasks_are_all_there(vowd: &Vowd) {
    let client = common::client_without_retries(vowd).await;
    let tasks: Vec<proto::Task> = client
        .list(ListFilter::default())
        .try_collect()
        .await
        .expect("list");
    let mut summary: Vec<(String, TaskState, String)> = tasks
        .iter()
        .map(|task| (task.kind.clone(), task.state(), task.namespace.clone()))
        .collect();
    summary.sort_by(|left, right| left.0.cmp(&right.0).then(left.2.cmp(&right.2)));
    let default = || "default".to_owned();
    assert_eq!(
        summary,
        vec![
            ("echo".to_owned(), TaskState::Succeeded, default()),
            ("echo".to_owned(), TaskState::Succeeded, default()),
            ("fail".to_owned(), TaskState::Failed, default()),
            ("resize".to_owned(), TaskState::Queued, default()),
        ]
    );
    let order = tasks
        .iter()
        .find(|task| task.idempotency_key == "order-1")
        .expect("the keyed echo task");
    assert_eq!(order.labels.get("team").map(String::as_str), Some("a"));

    // The same request under the same key is the old task, as it was then.
    let resubmit = Command::new(common::vow_binary())
        .args([
            "-s",
            &vowd.address,
            "-o",
            "json",
            "submit",
            "echo",
            r#"{"order": 1}"#,
        ])
        .args(["--idempotency-key", "order-1", "--label", "team=a"])
        .output()
        .expect("run vow submit");
    let answer: serde_json::Value =
        serde_json::from_slice(&resubmit.stdout).expect("vow submit prints JSON");
    assert_eq!(answer["deduplicated"], true);
    assert_eq!(answer["id"], order.id.as_str());

    // The queued remote task is leased to a worker of its namespace and finishes.
    let mut workers = WorkerServiceClient::connect(vowd.url())
        .await
        .expect("a worker stub");
    let leases = workers
        .poll(proto::PollRequest {
            kinds: vec!["resize".into()],
            worker_id: "migrated-worker".into(),
            max_tasks: 1,
            lease_duration: None,
            timeout: Some(Duration::from_secs(10).try_into().expect("a duration")),
        })
        .await
        .expect("poll")
        .into_inner()
        .leases;
    assert_eq!(leases.len(), 1, "the queued resize task is leased");
    let done = workers
        .complete(proto::CompleteRequest {
            token: leases[0].token.clone(),
            outcome: Some(proto::complete_request::Outcome::Output(proto::Payload {
                data: Some(proto::payload::Data::Json(prost_types::Value {
                    kind: Some(prost_types::value::Kind::StringValue("resized".into())),
                })),
                ..proto::Payload::default()
            })),
        })
        .await
        .expect("complete")
        .into_inner()
        .task
        .expect("a task");
    assert_eq!(done.state(), TaskState::Succeeded);
    assert_eq!(done.namespace, "default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_embedded_file_of_the_previous_release_opens_with_nothing_lost() {
    let data_dir = TempDir::new("migrate-embedded");
    std::fs::copy(
        fixture("embedded-v3/vow.db"),
        data_dir.path().join("vow.db"),
    )
    .expect("copy the old file");
    let vowd = Vowd::start_embedded(data_dir.path(), &["--remote-kind", "resize"]);
    the_old_tasks_are_all_there(&vowd).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_database_of_the_previous_release_opens_with_nothing_lost() {
    let database = TestDatabase::create().await;
    let loaded = Command::new("psql")
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-d", &database.url, "-f"])
        .arg(fixture("postgres-v2.sql"))
        .output()
        .expect("run psql (PostgreSQL's client)");
    assert!(
        loaded.status.success(),
        "loading the old database failed: {}",
        String::from_utf8_lossy(&loaded.stderr)
    );
    let vowd = Vowd::start_postgres(&database.url, &["--remote-kind", "resize"]);
    the_old_tasks_are_all_there(&vowd).await;
}
