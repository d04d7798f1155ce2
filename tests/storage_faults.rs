//! The storage itself failing: the embedded store's disk filling up (a
//! size-limited tmpfs, mounted by the test as root), and a private
//! PostgreSQL cluster (`initdb` on a temporary directory, another port)
//! killed with `kill -9` under load and started again.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{TempDir, Vowd, poll_until};
use futures::future::join_all;
use serde_json::json;
use tonic::Code;
use vow_client::{Client, TaskState};

const BOUND: Duration = Duration::from_secs(30);

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped.
struct SmallDisk {
    directory: TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> Self {
        let directory = TempDir::new("small-disk");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(directory.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mount a tmpfs (the test command runs as root): {status:?}"
        );
        Self { directory }
    }

    fn path(&self) -> &Path {
        self.directory.path()
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let filler = self.path().join("filler");
        let mut file = std::fs::File::create(&filler).expect("create the filler");
        let block = vec![0_u8; 64 * 1024];
        loop {
            match file.write(&block) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = file.sync_all();
        filler
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.directory.path())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_submits_unavailable_keeps_reads_and_recovers() {
    let disk = SmallDisk::mount("32m");
    let data = disk.path().join("data");
    std::fs::create_dir(&data).expect("data dir");
    let vowd = Vowd::start_embedded(&data, &[]);
    let client = common::client_without_retries(&vowd).await;
    let before = client
        .submit("echo")
        .input_json(json!({"before": "the disk filled"}))
        .run(BOUND)
        .await
        .expect("a task before the disk fills");

    let filler = disk.fill();
    let big = json!({"blob": "x".repeat(256 * 1024)});
    let refused = poll_until(BOUND, "a Submit refused on the full disk", || {
        let client = client.clone();
        let big = big.clone();
        async move { client.submit("echo").input_json(big).send().await.err() }
    })
    .await;
    assert_eq!(
        refused.code(),
        Some(Code::Unavailable),
        "{refused}\n{}",
        vowd.logs()
    );
    let read = client.get(&before.id).await.expect("reads keep working");
    assert_eq!(read.state(), TaskState::Succeeded);
    let listed = client.list_page(&Default::default(), String::new()).await;
    assert!(listed.is_ok(), "List keeps working: {listed:?}");

    std::fs::remove_file(&filler).expect("free the space");
    let after = poll_until(BOUND, "Submits to work again once space returns", || {
        let client = client.clone();
        async move {
            client
                .submit("echo")
                .input_json(json!({"after": "space returned"}))
                .run(BOUND)
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(after.state(), TaskState::Succeeded);
    drop(vowd);
    let restarted = Vowd::start_embedded(&data, &[]);
    let client = common::client_without_retries(&restarted).await;
    for id in [&before.id, &after.id] {
        let task = client.get(id).await.expect("kept across a restart");
        assert_eq!(task.state(), TaskState::Succeeded);
    }
}

/// A PostgreSQL cluster of the test's own, run as the `postgres` user.
struct PrivateCluster {
    directory: TempDir,
    port: u16,
    server: Option<Child>,
}

impl PrivateCluster {
    fn create() -> Self {
        let directory = TempDir::new("pg-cluster");
        chown_to_postgres(directory.path());
        let data = directory.path().join("data");
        let initdb = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(postgres_binary("initdb"))
            .args(["--auth=trust", "--username=postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null())
            .output()
            .expect("run initdb");
        assert!(
            initdb.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let mut cluster = Self {
            directory,
            port,
            server: None,
        };
        cluster.start();
        cluster
    }

    fn start(&mut self) {
        let server = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(postgres_binary("postgres"))
            .arg("-D")
            .arg(self.directory.path().join("data"))
            .args([
                "-p",
                &self.port.to_string(),
                "-c",
                "listen_addresses=127.0.0.1",
            ])
            .arg("-c")
            .arg(format!(
                "unix_socket_directories={}",
                self.directory.path().display()
            ))
            .args(["-c", "fsync=off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres");
        self.server = Some(server);
        let deadline = std::time::Instant::now() + BOUND;
        loop {
            let ready = Command::new(postgres_binary("pg_isready"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the private cluster did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `kill -9` of the postmaster: its backends exit as they find it gone.
    fn kill(&mut self) {
        let postmaster = std::fs::read_to_string(self.directory.path().join("data/postmaster.pid"))
            .ok()
            .and_then(|pid| pid.lines().next()?.trim().parse::<i32>().ok())
            .expect("the postmaster's pid");
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(postmaster),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("kill -9 postgres");
        if let Some(mut runuser) = self.server.take() {
            let _ = runuser.wait();
        }
        // Backends left behind hold the shared memory until they notice.
        let deadline = std::time::Instant::now() + BOUND;
        while Command::new("pgrep")
            .args(["-f", &format!("-p {}", self.port)])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "postgres processes outlived the kill"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        if self.server.is_some() {
            self.kill();
        }
    }
}

fn postgres_binary(name: &str) -> PathBuf {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL's binaries under /usr/lib/postgresql")
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    versions.sort();
    versions
        .pop()
        .expect("a PostgreSQL version")
        .join("bin")
        .join(name)
}

fn chown_to_postgres(path: &Path) {
    let status = Command::new("chown")
        .args(["postgres:postgres"])
        .arg(path)
        .status()
        .expect("chown");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_database_restarts_and_nothing_acknowledged_is_lost() {
    let mut cluster = PrivateCluster::create();
    let replicas = [
        Vowd::start_postgres(&cluster.url(), &[]),
        Vowd::start_postgres(&cluster.url(), &[]),
    ];
    let clients = join_all(replicas.iter().map(common::client_without_retries)).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let callers: Vec<_> = (0..8)
        .map(|index| {
            let client: Client = clients[index % 2]
                .clone()
                .with_call_timeout(Some(Duration::from_secs(3)));
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut acknowledged = Vec::new();
                let mut refused = Vec::new();
                while !stop.is_cancelled() {
                    match client
                        .submit("echo")
                        .input_json(json!({"caller": index}))
                        .send()
                        .await
                    {
                        Ok(submitted) => acknowledged.push(submitted.task.id),
                        Err(error) => {
                            refused.push(error.code());
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                (acknowledged, refused)
            })
        })
        .collect();

    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.start();
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let mut acknowledged = Vec::new();
    for caller in join_all(callers).await {
        let (ids, refused) = caller.expect("join");
        acknowledged.extend(ids);
        for code in refused {
            assert!(
                matches!(code, Some(Code::Unavailable | Code::DeadlineExceeded)),
                "a Submit failed with {code:?} while the database was away"
            );
        }
    }
    assert!(
        acknowledged.len() > 20,
        "too little load: {}",
        acknowledged.len()
    );
    // Awaited across replicas: the listener reconnected and replayed.
    for (index, id) in acknowledged.iter().enumerate() {
        common::await_success(&clients[(index + 1) % 2], id, BOUND).await;
    }
}
