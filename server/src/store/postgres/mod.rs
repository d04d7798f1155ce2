//! The PostgreSQL store, shared by several `vowd` replicas.
//!
//! Claims take due rows with `FOR UPDATE SKIP LOCKED`, so replicas never
//! claim the same task, and stamp each lease with a fencing token from a
//! sequence. Every change also lands in a change table and is announced with
//! `pg_notify` inside its transaction; each replica reports its own commits to
//! its feed at once and follows the others' through a LISTEN connection
//! ([`listen`]), so Await and Watch on one replica see what another did.
//!
//! Opening runs the embedded migrations (under sqlx's advisory lock, so
//! replicas may start together) and, unlike the embedded store, leaves leases
//! alone: they belong to replicas that may still be running, and the
//! engine's reaper requeues the ones that expire.
//!
//! Writes run in tasks of their own, so a caller that goes away (a dropped
//! RPC) never leaves a committed change unreported to this process's feed.
//!
//! What replicas must agree on besides the database: their clocks. A lease's
//! expiry is written by the replica holding it and compared by the others'
//! reapers with their own clocks, so a replica whose clock runs ahead reaps
//! early (the holder's result is then refused, and the task runs again).
//! Admission (`max_queued`) is approximate across replicas (see
//! [`admission`]).

mod admission;
mod batch;
mod errors;
mod listen;
mod publish;
mod reads;
mod schema;
mod settle;
mod writes;

use std::{
    collections::BTreeMap,
    str::FromStr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime},
};

use async_trait::async_trait;
use sqlx::{
    PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::{admission::Admission, batch::Batcher, publish::Publisher, settle::Unsettled};
use super::{
    ChangeFeed, ClaimRequest, CreateOutcome, KindCounts, ListPage, ListQuery, SharedTask, Store,
    StoreError, StoreResult,
};
use crate::engine::task::{TaskId, TaskRecord};

/// `application_name` of the connection that listens for changes (the
/// others are `vowd`), so operators can tell it apart in pg_stat_activity.
const LISTENER_NAME: &str = "vowd-listener";
/// Longest a caller waits for one store operation (a few statements).
const OPERATION_TIMEOUT: Duration = Duration::from_secs(30);
/// TCP keepalives of every connection, set on the database's side of it
/// (sqlx cannot set them on its own sockets, launchbadge/sqlx#3540): a
/// connection whose peer vanished without a reset (a dropped NAT mapping,
/// a failover) is closed after about 15 + 3 × 5 s of silence, and one with
/// unacknowledged data after 30 s, so its locks and its slot come back. On
/// this side, vowd bounds every wait itself (the listener's checks, the
/// pool's acquire timeout).
const KEEPALIVE_SETTINGS: [(&str, &str); 4] = [
    ("tcp_keepalives_idle", "15"),
    ("tcp_keepalives_interval", "5"),
    ("tcp_keepalives_count", "3"),
    ("tcp_user_timeout", "30000"),
];

/// How a replica connects to PostgreSQL.
#[derive(Clone, Debug)]
pub struct PostgresOptions {
    /// `postgres://user:password@host:port/database?options`.
    pub url: String,
    /// Most pooled connections for queries (the listener has one more of its own).
    pub max_connections: u32,
    /// Connections kept open while idle.
    pub min_connections: u32,
    /// How long a query waits for a free connection (or a new one) before
    /// it fails as unavailable; also bounds connecting at start.
    pub acquire_timeout: Duration,
}

/// Why the store could not open; each names the database, never the password.
#[derive(Debug, thiserror::Error)]
pub enum PostgresOpenError {
    #[error("the database URL is not valid: {0}")]
    InvalidUrl(String),
    #[error("cannot connect to PostgreSQL at {target}: {reason}")]
    Unreachable { target: String, reason: String },
    #[error("cannot bring the schema of {target} up to date: {reason}")]
    Migration { target: String, reason: String },
}

/// What the store's writes, reads and listener share.
struct Shared {
    pool: PgPool,
    /// Names this process in change rows and notifications.
    origin: Arc<str>,
    publisher: Arc<Publisher>,
    batcher: Batcher,
    admission: Admission,
    /// Tasks whose last write here may have committed unreported.
    unsettled: Arc<Unsettled>,
    /// The last count of waiting and running tasks, and when it was taken.
    kind_counts: Mutex<Option<(Instant, BTreeMap<String, KindCounts>)>>,
    pruned_at: Mutex<Option<Instant>>,
}

/// The PostgreSQL backend.
pub struct PostgresStore {
    shared: Arc<Shared>,
    /// Stops the listener and the settling of unsettled writes.
    stop_listening: CancellationToken,
    listener: Mutex<Option<JoinHandle<()>>>,
}

impl PostgresStore {
    /// Connects, migrates, and starts following other replicas' changes,
    /// reporting every change to `feed`. Must be called inside a tokio runtime.
    pub async fn open(
        options: &PostgresOptions,
        feed: Arc<dyn ChangeFeed>,
    ) -> Result<Self, PostgresOpenError> {
        let connect_options = PgConnectOptions::from_str(&options.url)
            .map_err(|error| PostgresOpenError::InvalidUrl(error.to_string()))?
            .application_name("vowd")
            .options(KEEPALIVE_SETTINGS);
        let target = format!(
            "{}:{}/{}",
            connect_options.get_host(),
            connect_options.get_port(),
            connect_options
                .get_database()
                .unwrap_or("(default database)")
        );
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(1))
            .min_connections(options.min_connections.min(options.max_connections))
            .acquire_timeout(options.acquire_timeout)
            // One line per slow acquire buries an outage (vowd reports the
            // database unavailable itself, throttled).
            .acquire_slow_level(log::LevelFilter::Debug)
            .connect_with(connect_options.clone())
            .await
            .map_err(|error| PostgresOpenError::Unreachable {
                target: target.clone(),
                reason: error.to_string(),
            })?;
        let migrator = schema::migrator()
            .await
            .map_err(|error| PostgresOpenError::Migration {
                target: target.clone(),
                reason: error.to_string(),
            })?;
        migrator
            .run(&pool)
            .await
            .map_err(|error| PostgresOpenError::Migration {
                target: target.clone(),
                reason: error.to_string(),
            })?;
        let listen_options = connect_options.application_name(LISTENER_NAME);
        // Listening before serving: a waiter on this replica must not miss a
        // change committed elsewhere after it read the store.
        let listening = listen::connect(&listen_options).await.map_err(|error| {
            PostgresOpenError::Unreachable {
                target: target.clone(),
                reason: format!("cannot LISTEN: {error}"),
            }
        })?;

        let origin: Arc<str> = format!("{:016x}", rand::random::<u64>()).into();
        let publisher = Arc::new(Publisher::new(feed, pool.clone()));
        let unsettled = Arc::new(Unsettled::default());
        let stop_listening = CancellationToken::new();
        let listener = tokio::spawn(listen::run(
            listening,
            listen_options,
            pool.clone(),
            publisher.clone(),
            stop_listening.clone(),
        ));
        tokio::spawn(unsettled.clone().run(
            pool.clone(),
            publisher.clone(),
            stop_listening.clone(),
        ));
        tracing::info!(database = %target, origin = %origin, "opened the PostgreSQL store");
        Ok(Self {
            shared: Arc::new(Shared {
                batcher: Batcher::start(
                    pool.clone(),
                    origin.clone(),
                    publisher.clone(),
                    unsettled.clone(),
                ),
                pool,
                origin,
                publisher,
                admission: Admission::default(),
                unsettled,
                kind_counts: Mutex::new(None),
                pruned_at: Mutex::new(None),
            }),
            stop_listening,
            listener: Mutex::new(Some(listener)),
        })
    }

    /// Runs a write in a task of its own: it commits and reports its change
    /// even if the caller stops waiting (or gives up, see [`bounded`]).
    async fn detached<T: Send + 'static>(
        &self,
        write: impl Future<Output = StoreResult<T>> + Send + 'static,
    ) -> StoreResult<T> {
        let write = tokio::spawn(write);
        bounded(async {
            write
                .await
                .map_err(|error| StoreError::Internal(format!("a store write failed: {error}")))?
        })
        .await
    }
}

/// Waits at most [`OPERATION_TIMEOUT`] for a store operation: a caller never
/// waits on a database that stopped answering (each statement is bounded
/// too, see [`errors::within_timeout`]).
async fn bounded<T>(operation: impl Future<Output = StoreResult<T>>) -> StoreResult<T> {
    tokio::time::timeout(OPERATION_TIMEOUT, operation)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the database did not answer in time".into(),
            ))
        })
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.stop_listening.cancel();
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn create(
        &self,
        task: TaskRecord,
        max_queued: Option<usize>,
    ) -> StoreResult<CreateOutcome> {
        self.detached(writes::create(self.shared.clone(), task, max_queued))
            .await
    }

    async fn get(&self, id: TaskId) -> StoreResult<Option<SharedTask>> {
        bounded(reads::get(&self.shared.pool, id)).await
    }

    async fn update(&self, task: TaskRecord, expected_revision: u64) -> StoreResult<SharedTask> {
        self.detached(writes::update(self.shared.clone(), task, expected_revision))
            .await
    }

    async fn delete(&self, id: TaskId) -> StoreResult<bool> {
        self.detached(writes::delete(self.shared.clone(), id)).await
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        bounded(reads::list(&self.shared.pool, query)).await
    }

    async fn changes_after(
        &self,
        id: TaskId,
        after_revision: u64,
    ) -> StoreResult<Option<Vec<SharedTask>>> {
        bounded(reads::changes_after(&self.shared.pool, id, after_revision))
            .await
            .map(Some)
    }

    async fn claim_due(&self, request: &ClaimRequest) -> StoreResult<Vec<SharedTask>> {
        self.detached(writes::claim_due(self.shared.clone(), request.clone()))
            .await
    }

    async fn next_due_at(&self, kinds: &[String]) -> StoreResult<Option<SystemTime>> {
        bounded(reads::next_due_at(&self.shared.pool, kinds)).await
    }

    async fn extend_lease(
        &self,
        id: TaskId,
        token: u64,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> StoreResult<()> {
        self.detached(writes::extend_lease(
            self.shared.clone(),
            id,
            token,
            expires_at,
            now,
        ))
        .await
    }

    async fn overdue(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<SharedTask>> {
        bounded(reads::overdue(&self.shared.pool, now, limit)).await
    }

    async fn expired_leases(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<SharedTask>> {
        bounded(reads::expired_leases(&self.shared.pool, now, limit)).await
    }

    async fn delete_expired(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<TaskId>> {
        self.detached(writes::delete_expired(self.shared.clone(), now, limit))
            .await
    }

    async fn kind_counts(&self) -> StoreResult<BTreeMap<String, KindCounts>> {
        bounded(reads::kind_counts(&self.shared)).await
    }

    async fn namespace_counts(&self, namespace: &str) -> StoreResult<KindCounts> {
        bounded(reads::namespace_counts(&self.shared, namespace)).await
    }

    async fn record_poll(&self, kinds: &[String], at: SystemTime) -> StoreResult<()> {
        self.detached(writes::record_poll(self.shared.clone(), kinds.to_vec(), at))
            .await
    }

    async fn last_polls(&self) -> StoreResult<BTreeMap<String, SystemTime>> {
        bounded(reads::last_polls(&self.shared.pool)).await
    }

    async fn close(&self) -> StoreResult<()> {
        self.stop_listening.cancel();
        let listener = self
            .listener
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .take();
        if let Some(listener) = listener {
            let _ = listener.await;
        }
        self.shared.pool.close().await;
        Ok(())
    }
}
