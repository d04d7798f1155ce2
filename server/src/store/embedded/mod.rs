//! The embedded durable store: one SQLite file (WAL) under `--data-dir`.
//!
//! One writer thread owns the only writing connection and group-commits every
//! write waiting in its queue into one transaction, so a burst of RPCs costs
//! one fsync, and a change is published only once it is durable. Reads run on
//! a small pool of reader connections, which WAL lets proceed during writes.
//! A lock file keeps a second `vowd` off the same directory.

pub(crate) mod schema;
mod writer;

use std::{
    collections::BTreeMap,
    fs::File,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags, params_from_iter};
use tokio::sync::{mpsc, oneshot};

use self::{
    schema::{MIGRATIONS, TASK_COLUMNS, micros, state_code, task_of},
    writer::{Cache, Counts, Op, Writer},
};
use super::{
    ChangeFeed, ClaimRequest, CreateOutcome, KindCounts, ListCursor, ListPage, ListQuery,
    OnClaimed, SharedTask, Store, StoreError, StoreResult,
};
use crate::engine::task::{TaskId, TaskRecord};

/// File name of the database inside the data directory.
pub const DATABASE_FILE: &str = "vow.db";
const LOCK_FILE: &str = "vowd.lock";
/// Writes waiting for the writer at most; further writers wait their turn.
const WRITE_QUEUE: usize = 16_384;
/// Reader connections kept open between reads.
const IDLE_READERS: usize = 8;
/// Records kept in the write-through cache (about 1 KiB each).
const CACHED_TASKS: usize = 32_768;
/// SQLite's page cache of the writer. Reads of pages not in it come from
/// the memory map, so it need only hold what the writes touch. Larger is
/// slower: at 64 MiB, trimming the cache at the end of each commit
/// (pcache1Truncate) took 5 % of vowd's CPU under load; at 4-8 MiB, none.
const CACHE_KIB: i64 = 8 * 1024;
/// Readers and the writer map this much of the file instead of copying pages.
const MMAP_BYTES: i64 = 256 * 1024 * 1024;
/// The WAL is truncated back to this size after checkpoints.
const WAL_SIZE_LIMIT: i64 = 64 * 1024 * 1024;
/// WAL pages between checkpoints (SQLite's default is 1,000). A hot page
/// written many times between two checkpoints is copied back once, so
/// rarer checkpoints cost less in all (+14 % submit->await throughput at
/// 3,000), but each one pauses the writer longer (p99 13 -> 15 ms; 8,000
/// pages gave 22 ms).
const AUTOCHECKPOINT_PAGES: i64 = 3000;

/// How much a commit survives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: survives a crash of the process, the OS or the power.
    Full,
    /// fsync at WAL checkpoints only: survives a crash of the process; an OS
    /// crash or power loss may lose the last commits.
    Normal,
}

/// Why the store could not open; each names the remedy.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "the parent directory of the data directory {0} does not exist; create it or choose another --data-dir"
    )]
    MissingParent(PathBuf),
    #[error("the parent of the data directory {0} is not a directory")]
    ParentNotDirectory(PathBuf),
    #[error("cannot use the data directory {path}: {error}")]
    Directory {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("the data directory {0} is in use by another running vowd (its lock is held)")]
    Locked(PathBuf),
    #[error("{path} is not a Vow database or is corrupt ({reason}); it was left untouched")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0} was written by a newer version of vowd; upgrade vowd to open it")]
    TooNew(PathBuf),
    #[error("cannot open {path}: {reason}")]
    Database { path: PathBuf, reason: String },
}

/// The embedded durable store.
pub struct EmbeddedStore {
    writes: mpsc::Sender<Op>,
    readers: Arc<ReaderPool>,
    counts: Counts,
    cache: Cache,
    /// Held for the life of the store: the directory's exclusive lock.
    _lock: File,
}

struct ReaderPool {
    path: PathBuf,
    idle: Mutex<Vec<Connection>>,
}

impl ReaderPool {
    fn open(&self) -> rusqlite::Result<Connection> {
        let connection = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        connection.busy_timeout(std::time::Duration::from_secs(5))?;
        connection.execute_batch(&format!("PRAGMA mmap_size = {MMAP_BYTES};"))?;
        Ok(connection)
    }
}

impl EmbeddedStore {
    /// Whether no task of `kinds` is QUEUED or in RETRY_WAIT, from the
    /// counts the writer keeps as it commits (this process is the file's
    /// only writer).
    fn nothing_claimable(&self, kinds: &[String]) -> bool {
        let counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        kinds
            .iter()
            .all(|kind| counts.get(kind).is_none_or(|counts| counts.queued == 0))
    }

    /// Opens (or creates) the store in `data_dir`, reporting changes to `feed`.
    pub fn open(
        data_dir: &Path,
        durability: Durability,
        feed: Arc<dyn ChangeFeed>,
    ) -> Result<Self, OpenError> {
        prepare_directory(data_dir)?;
        let lock = lock_directory(data_dir)?;
        let path = data_dir.join(DATABASE_FILE);
        let mut connection = open_writer(&path, durability)?;
        let (counts, fencing_token) = recover(&mut connection, &path)?;
        let counts: Counts = Arc::new(Mutex::new(counts));
        let capacity =
            std::num::NonZeroUsize::new(CACHED_TASKS).expect("the cache holds some tasks");
        let cache: Cache = Arc::new(Mutex::new(lru::LruCache::new(capacity)));

        let (writes, ops) = mpsc::channel(WRITE_QUEUE);
        let writer = Writer {
            connection,
            feed,
            counts: counts.clone(),
            cache: cache.clone(),
            fencing_token,
        };
        std::thread::Builder::new()
            .name("vow-store-writer".into())
            .spawn(move || writer.run(ops))
            .map_err(|error| OpenError::Directory {
                path: data_dir.to_owned(),
                error,
            })?;
        Ok(Self {
            writes,
            readers: Arc::new(ReaderPool {
                path,
                idle: Mutex::new(Vec::new()),
            }),
            counts,
            cache,
            _lock: lock,
        })
    }

    async fn write<T>(
        &self,
        op: impl FnOnce(oneshot::Sender<StoreResult<T>>) -> Op,
    ) -> StoreResult<T> {
        let (reply, answer) = oneshot::channel();
        self.writes
            .send(op(reply))
            .await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| StoreError::Unavailable("the store writer has stopped".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        query: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> StoreResult<T> {
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = readers
                .idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .pop();
            let connection = match pooled {
                Some(connection) => connection,
                None => readers.open().map_err(schema::classify)?,
            };
            let result = query(&connection).map_err(schema::classify);
            let mut idle = readers
                .idle
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if idle.len() < IDLE_READERS {
                idle.push(connection);
            }
            result
        })
        .await
        .map_err(|error| StoreError::Internal(format!("a store read panicked: {error}")))?
    }
}

fn prepare_directory(data_dir: &Path) -> Result<(), OpenError> {
    if data_dir.is_dir() {
        return Ok(());
    }
    let parent = data_dir
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if parent.exists() && !parent.is_dir() {
        return Err(OpenError::ParentNotDirectory(data_dir.to_owned()));
    }
    if !parent.is_dir() {
        return Err(OpenError::MissingParent(data_dir.to_owned()));
    }
    std::fs::create_dir(data_dir).map_err(|error| OpenError::Directory {
        path: data_dir.to_owned(),
        error,
    })
}

fn lock_directory(data_dir: &Path) -> Result<File, OpenError> {
    let directory_error = |error| OpenError::Directory {
        path: data_dir.to_owned(),
        error,
    };
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join(LOCK_FILE))
        .map_err(directory_error)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(std::fs::TryLockError::WouldBlock) => Err(OpenError::Locked(data_dir.to_owned())),
        Err(std::fs::TryLockError::Error(error)) => Err(directory_error(error)),
    }
}

fn open_writer(path: &Path, durability: Durability) -> Result<Connection, OpenError> {
    let database_error = |error: rusqlite::Error| classify_open_error(path, error);
    let connection = Connection::open(path).map_err(database_error)?;
    // Read before writing anything: a file this build must refuse stays
    // byte-for-byte as it was.
    let version: i64 = connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(database_error)?;
    if version > schema::LATEST_VERSION {
        return Err(OpenError::TooNew(path.to_owned()));
    }
    let pages: i64 = connection
        .query_row("PRAGMA page_count", [], |row| row.get(0))
        .map_err(database_error)?;
    if pages == 0 {
        // auto_vacuum only takes effect on a new file, before its first table.
        connection
            .execute_batch("PRAGMA auto_vacuum = INCREMENTAL;")
            .map_err(database_error)?;
    }
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    connection
        .execute_batch(&format!(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = {synchronous};
             PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};
             PRAGMA wal_autocheckpoint = {AUTOCHECKPOINT_PAGES};
             PRAGMA busy_timeout = 5000;
             PRAGMA cache_size = -{CACHE_KIB};
             PRAGMA mmap_size = {MMAP_BYTES};"
        ))
        .map_err(database_error)?;
    Ok(connection)
}

/// Tells a file that is not (or no longer) a database from other failures.
fn classify_open_error(path: &Path, error: rusqlite::Error) -> OpenError {
    let reason = error.to_string();
    match error.sqlite_error_code() {
        Some(rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt) => {
            OpenError::Corrupt {
                path: path.to_owned(),
                reason,
            }
        }
        _ => OpenError::Database {
            path: path.to_owned(),
            reason,
        },
    }
}

/// Migrates the schema and loads the writer's counters. Leases are left
/// as they are: a remote worker's outlives a restart, and the engine
/// decides about the attempts of the process that ran before.
fn recover(
    connection: &mut Connection,
    path: &Path,
) -> Result<(BTreeMap<String, KindCounts>, u64), OpenError> {
    MIGRATIONS
        .to_latest(connection)
        .map_err(|error| match error {
            rusqlite_migration::Error::MigrationDefinition(
                rusqlite_migration::MigrationDefinitionError::DatabaseTooFarAhead,
            ) => OpenError::TooNew(path.to_owned()),
            rusqlite_migration::Error::RusqliteError { err, .. } => classify_open_error(path, err),
            other => OpenError::Database {
                path: path.to_owned(),
                reason: other.to_string(),
            },
        })?;
    let database_error = |error: rusqlite::Error| classify_open_error(path, error);
    let counts = connection
        .prepare(
            "SELECT kind, COUNT(due_at), COUNT(lease_expires_at) FROM tasks
             WHERE due_at IS NOT NULL OR lease_expires_at IS NOT NULL GROUP BY kind",
        )
        .and_then(|mut statement| {
            statement
                .query_map([], |row| {
                    let counts = KindCounts {
                        queued: row.get::<_, i64>(1)? as usize,
                        running: row.get::<_, i64>(2)? as usize,
                    };
                    Ok((row.get::<_, String>(0)?, counts))
                })?
                .collect::<rusqlite::Result<BTreeMap<_, _>>>()
        })
        .map_err(database_error)?;
    let fencing_token: i64 = connection
        .query_row(
            "SELECT value FROM counters WHERE name = 'fencing_token'",
            [],
            |row| row.get(0),
        )
        .map_err(database_error)?;
    Ok((counts, fencing_token as u64))
}

fn records(
    connection: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<Vec<SharedTask>> {
    let mut statement = connection.prepare_cached(sql)?;
    statement
        .query_map(params, |row| task_of(row).map(Arc::new))?
        .collect()
}

/// `?, ?, ...` for `count` parameters.
fn placeholders(count: usize) -> String {
    vec!["?"; count].join(", ")
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn create(
        &self,
        task: TaskRecord,
        max_queued: Option<usize>,
    ) -> StoreResult<CreateOutcome> {
        self.write(|reply| Op::Create {
            task,
            max_queued,
            claim: None,
            reply,
        })
        .await
    }

    async fn create_and_claim(
        &self,
        task: TaskRecord,
        max_queued: Option<usize>,
        claim: &ClaimRequest,
        on_claimed: OnClaimed,
    ) -> StoreResult<CreateOutcome> {
        self.write(|reply| Op::Create {
            task,
            max_queued,
            claim: Some((claim.clone(), on_claimed)),
            reply,
        })
        .await
    }

    async fn get(&self, id: TaskId) -> StoreResult<Option<SharedTask>> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(&id)
            .cloned();
        if cached.is_some() {
            return Ok(cached);
        }
        self.read(move |connection| Ok(schema::get(connection, id)?.map(Arc::new)))
            .await
    }

    async fn update(&self, task: TaskRecord, expected_revision: u64) -> StoreResult<SharedTask> {
        self.write(|reply| Op::Update {
            task,
            expected_revision,
            reply,
        })
        .await
    }

    async fn delete(&self, id: TaskId) -> StoreResult<bool> {
        self.write(|reply| Op::Delete { id, reply }).await
    }

    async fn list(&self, query: &ListQuery) -> StoreResult<ListPage> {
        let query = query.clone();
        self.read(move |connection| {
            let mut sql = format!("SELECT {TASK_COLUMNS} FROM tasks WHERE 1 = 1");
            let mut values: Vec<rusqlite::types::Value> = Vec::new();
            if let Some(namespace) = &query.namespace {
                sql.push_str(" AND namespace = ?");
                values.push(namespace.to_string().into());
            }
            if let Some(cursor) = query.after {
                sql.push_str(" AND (created_at, id) < (?, ?)");
                values.push(micros(cursor.created_at).into());
                values.push(cursor.id.to_bytes().to_vec().into());
            }
            if !query.states.is_empty() {
                sql.push_str(&format!(
                    " AND state IN ({})",
                    placeholders(query.states.len())
                ));
                values.extend(query.states.iter().map(|state| state_code(*state).into()));
            }
            if !query.kinds.is_empty() {
                sql.push_str(&format!(
                    " AND kind IN ({})",
                    placeholders(query.kinds.len())
                ));
                values.extend(query.kinds.iter().map(|kind| kind.clone().into()));
            }
            sql.push_str(" ORDER BY created_at DESC, id DESC");
            let mut statement = connection.prepare(&sql)?;
            let mut rows = statement.query(params_from_iter(values))?;
            let mut tasks: Vec<SharedTask> = Vec::new();
            let mut next = None;
            // Labels live inside the record, so they filter here.
            while let Some(row) = rows.next()? {
                let task = task_of(row)?;
                if !query.matches(&task) {
                    continue;
                }
                if tasks.len() == query.page_size {
                    next = tasks.last().map(|last| ListCursor {
                        created_at: last.created_at,
                        id: last.id,
                    });
                    break;
                }
                tasks.push(Arc::new(task));
            }
            Ok(ListPage { tasks, next })
        })
        .await
    }

    async fn claim_due(&self, request: &ClaimRequest) -> StoreResult<Vec<SharedTask>> {
        // The dispatcher asks after every finished attempt; with nothing
        // queued that would be an empty transaction.
        if self.nothing_claimable(&request.kinds) {
            return Ok(Vec::new());
        }
        let request = request.clone();
        self.write(|reply| Op::Claim { request, reply }).await
    }

    async fn next_due_at(&self, kinds: &[String]) -> StoreResult<Option<SystemTime>> {
        if self.nothing_claimable(kinds) {
            return Ok(None);
        }
        let kinds = kinds.to_vec();
        self.read(move |connection| {
            let sql = format!(
                "SELECT MIN(due_at) FROM tasks WHERE due_at IS NOT NULL AND kind IN ({})",
                placeholders(kinds.len())
            );
            let due: Option<i64> =
                connection.query_row(&sql, params_from_iter(&kinds), |row| row.get(0))?;
            Ok(due.map(schema::from_micros))
        })
        .await
    }

    async fn extend_lease(
        &self,
        id: TaskId,
        token: u64,
        expires_at: SystemTime,
        now: SystemTime,
    ) -> StoreResult<()> {
        self.write(|reply| Op::ExtendLease {
            id,
            token,
            expires_at,
            now,
            reply,
        })
        .await
    }

    async fn overdue(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<SharedTask>> {
        self.read(move |connection| {
            records(
                connection,
                "SELECT record, lease_expires_at FROM tasks WHERE deadline IS NOT NULL AND deadline <= ?1 ORDER BY deadline LIMIT ?2",
                rusqlite::params![micros(now), limit as i64],
            )
        })
        .await
    }

    async fn expired_leases(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<SharedTask>> {
        self.read(move |connection| {
            records(
                connection,
                "SELECT record, lease_expires_at FROM tasks WHERE lease_expires_at IS NOT NULL AND lease_expires_at <= ?1
                 ORDER BY lease_expires_at LIMIT ?2",
                rusqlite::params![micros(now), limit as i64],
            )
        })
        .await
    }

    async fn delete_expired(&self, now: SystemTime, limit: usize) -> StoreResult<Vec<TaskId>> {
        self.write(|reply| Op::DeleteExpired { now, limit, reply })
            .await
    }

    async fn close(&self) -> StoreResult<()> {
        self.write(|reply| Op::Close { reply }).await
    }

    async fn kind_counts(&self) -> StoreResult<BTreeMap<String, KindCounts>> {
        Ok(self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone())
    }

    async fn namespace_counts(&self, namespace: &str) -> StoreResult<KindCounts> {
        let namespace = namespace.to_owned();
        self.read(move |connection| {
            let count = |sql: &str| -> rusqlite::Result<usize> {
                let count: i64 = connection
                    .prepare_cached(sql)?
                    .query_row([&namespace], |row| row.get(0))?;
                Ok(count as usize)
            };
            Ok(KindCounts {
                queued: count(
                    "SELECT count(*) FROM tasks WHERE namespace = ?1 AND due_at IS NOT NULL",
                )?,
                running: count(
                    "SELECT count(*) FROM tasks WHERE namespace = ?1 AND lease_token IS NOT NULL",
                )?,
            })
        })
        .await
    }

    async fn record_poll(&self, kinds: &[String], at: SystemTime) -> StoreResult<()> {
        let kinds = kinds.to_vec();
        self.write(|reply| Op::RecordPoll { kinds, at, reply })
            .await
    }

    async fn last_polls(&self) -> StoreResult<BTreeMap<String, SystemTime>> {
        self.read(|connection| {
            let mut statement = connection.prepare_cached(
                "SELECT name, last_poll_at FROM kinds WHERE last_poll_at IS NOT NULL",
            )?;
            statement
                .query_map([], |row| {
                    Ok((row.get::<_, String>(0)?, schema::from_micros(row.get(1)?)))
                })?
                .collect()
        })
        .await
    }
}
