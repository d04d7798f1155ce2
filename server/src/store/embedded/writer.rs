//! The single writer of the embedded store: a thread that applies every
//! pending write inside one open transaction (group commit: one fsync for
//! many RPCs), then publishes the committed changes in order and answers.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::SystemTime,
};

use rusqlite::{Connection, params};
use tokio::sync::{mpsc, oneshot};

use super::schema::{self, Columns, TASK_COLUMNS, micros};
use crate::{
    engine::task::{TaskId, TaskRecord, TaskState},
    store::{
        ChangeFeed, ClaimRequest, CreateOutcome, KindCounts, OnClaimed, SharedTask, StoreError,
        StoreResult,
    },
};

/// Writes committed together at most; bounds the latency one batch adds.
const MAX_BATCH: usize = 512;
/// How long a batch that already holds several writes waits for more, with
/// its transaction open: writes arriving meanwhile (among them the outcomes
/// of attempts claimed by this batch's inserts) share its commit. Only
/// taken under load (a lone write commits at once).
const GROUP_COMMIT_WINDOW: std::time::Duration = std::time::Duration::from_micros(200);

pub type Reply<T> = oneshot::Sender<StoreResult<T>>;

/// A write request and where its answer goes.
pub enum Op {
    Create {
        task: TaskRecord,
        max_queued: Option<usize>,
        /// Claim the task in the same write if nothing else is due.
        claim: Option<(ClaimRequest, OnClaimed)>,
        reply: Reply<CreateOutcome>,
    },
    Update {
        task: TaskRecord,
        expected_revision: u64,
        reply: Reply<SharedTask>,
    },
    Delete {
        id: TaskId,
        reply: Reply<bool>,
    },
    Claim {
        request: ClaimRequest,
        reply: Reply<Vec<SharedTask>>,
    },
    ExtendLease {
        id: TaskId,
        token: u64,
        expires_at: SystemTime,
        now: SystemTime,
        reply: Reply<()>,
    },
    RecordPoll {
        kinds: Vec<String>,
        at: SystemTime,
        reply: Reply<()>,
    },
    DeleteExpired {
        now: SystemTime,
        limit: usize,
        reply: Reply<Vec<TaskId>>,
    },
    /// Checkpoints the log into the main file and stops the writer.
    Close {
        reply: Reply<()>,
    },
}

enum Change {
    Changed(SharedTask),
    Deleted(TaskId),
}

/// Waiting and running tasks per kind, shared with readers.
pub type Counts = Arc<Mutex<BTreeMap<String, KindCounts>>>;

/// Recently written records as committed. Only the writer fills it, right
/// after COMMIT, so it is never older than the file: this process owns the
/// file, and every write goes through the writer.
pub type Cache = Arc<Mutex<lru::LruCache<TaskId, SharedTask>>>;

pub struct Writer {
    pub connection: Connection,
    pub feed: Arc<dyn ChangeFeed>,
    pub counts: Counts,
    pub cache: Cache,
    pub fencing_token: u64,
}

/// The outcome of one op inside a batch, delivered once the batch commits.
struct Applied {
    changes: Vec<Change>,
    answer: Box<dyn FnOnce(Option<StoreError>) + Send>,
}

impl Applied {
    fn new<T: Send + 'static>(
        reply: Reply<T>,
        result: StoreResult<T>,
        changes: Vec<Change>,
    ) -> Self {
        Self {
            changes,
            answer: Box::new(move |commit_error| {
                let _ = reply.send(match commit_error {
                    Some(error) => Err(error),
                    None => result,
                });
            }),
        }
    }
}

/// One batch's open transaction and what it did so far.
struct Transaction {
    batch: Batch,
    applied: Vec<Applied>,
    failure: Option<rusqlite::Error>,
    /// Ops taken from the queue after the transaction failed.
    unapplied: Vec<Op>,
}

/// Working state of one batch, kept only if the batch commits.
struct Batch {
    counts: BTreeMap<String, KindCounts>,
    fencing_token: u64,
    /// Records written by this batch (None: deleted), newer than the cache.
    written: HashMap<TaskId, Option<SharedTask>>,
}

impl Batch {
    fn queued(&self) -> usize {
        self.counts.values().map(|counts| counts.queued).sum()
    }

    fn queued_of(&self, kinds: &[String]) -> usize {
        kinds
            .iter()
            .filter_map(|kind| self.counts.get(kind))
            .map(|counts| counts.queued)
            .sum()
    }

    fn count(&mut self, before: Option<&TaskRecord>, after: Option<&TaskRecord>) {
        if let Some(task) = before
            && let Some(counts) = self.counts.get_mut(&task.kind)
        {
            if task.state.is_claimable() {
                counts.queued -= 1;
            } else if task.state == TaskState::Running {
                counts.running -= 1;
            }
        }
        if let Some(task) = after {
            let claimable = task.state.is_claimable();
            if claimable || task.state == TaskState::Running {
                // Look up before inserting: `entry` would copy the kind every time.
                if !self.counts.contains_key(&task.kind) {
                    self.counts.insert(task.kind.clone(), KindCounts::default());
                }
                let counts = self.counts.get_mut(&task.kind).expect("just inserted");
                if claimable {
                    counts.queued += 1;
                } else {
                    counts.running += 1;
                }
            }
        }
    }
}

impl Writer {
    /// Serves writes until every sender is gone.
    pub fn run(mut self, mut ops: mpsc::Receiver<Op>) {
        while let Some(first) = ops.blocking_recv() {
            if let Op::Close { reply } = first {
                return self.close(reply);
            }
            let mut transaction = self.begin();
            let mut close = None;
            let mut next = Some(first);
            let mut waited = false;
            while let Some(op) = next.take() {
                let applied = transaction.applied.len();
                if !self.apply_in(&mut transaction, op) || applied + 1 >= MAX_BATCH {
                    break;
                }
                next = match ops.try_recv() {
                    Ok(Op::Close { reply }) => {
                        close = Some(reply);
                        None
                    }
                    Ok(op) => Some(op),
                    // Under load, a moment's wait lets more writes share the
                    // commit (each commit rewrites the index pages it touched).
                    Err(_) if !waited && transaction.applied.len() > 1 => {
                        waited = true;
                        std::thread::sleep(GROUP_COMMIT_WINDOW);
                        match ops.try_recv() {
                            Ok(Op::Close { reply }) => {
                                close = Some(reply);
                                None
                            }
                            Ok(op) => Some(op),
                            Err(_) => None,
                        }
                    }
                    Err(_) => None,
                };
            }
            self.end(transaction);
            if let Some(reply) = close {
                return self.close(reply);
            }
        }
    }

    /// Checkpoints the log into the main file; the writer stops after it.
    fn close(&mut self, reply: Reply<()>) {
        let checkpoint = self
            .connection
            .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
            .map_err(schema::classify);
        let _ = reply.send(checkpoint);
    }

    /// Opens the transaction of a batch.
    fn begin(&mut self) -> Transaction {
        Transaction {
            batch: Batch {
                counts: self
                    .counts
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner())
                    .clone(),
                fencing_token: self.fencing_token,
                written: HashMap::new(),
            },
            applied: Vec::with_capacity(16),
            failure: self.connection.execute_batch("BEGIN IMMEDIATE").err(),
            unapplied: Vec::new(),
        }
    }

    /// Applies one op to the open transaction; false once the transaction
    /// has failed (the op is then answered with the failure at the end).
    fn apply_in(&mut self, transaction: &mut Transaction, op: Op) -> bool {
        if transaction.failure.is_some() {
            transaction.unapplied.push(op);
            return false;
        }
        match self.apply(op, &mut transaction.batch) {
            Ok(done) => {
                transaction.applied.push(done);
                true
            }
            Err((error, done)) => {
                transaction.applied.push(done);
                transaction.failure = Some(error);
                false
            }
        }
    }

    /// Commits (or, after a failure, rolls back) a batch, then publishes
    /// what it committed, in order, and answers every op in it.
    fn end(&mut self, transaction: Transaction) {
        let Transaction {
            batch,
            applied,
            mut failure,
            unapplied,
        } = transaction;
        if failure.is_none() {
            failure = self.connection.execute_batch("COMMIT").err();
        }
        if let Some(error) = failure {
            let _ = self.connection.execute_batch("ROLLBACK");
            // Attempts may have started under tokens of this batch: never
            // hand those out again.
            self.fencing_token = self.fencing_token.max(batch.fencing_token);
            tracing::error!(%error, "the embedded store could not commit a batch of writes");
            let error = schema::classify(error);
            for done in applied {
                (done.answer)(Some(clone_error(&error)));
            }
            for op in unapplied {
                answer_unapplied(op, &error);
            }
            return;
        }
        self.fencing_token = batch.fencing_token;
        {
            let mut cache = self
                .cache
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (id, record) in batch.written {
                match record {
                    Some(record) => {
                        cache.put(id, record);
                    }
                    None => {
                        cache.pop(&id);
                    }
                }
            }
        }
        *self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = batch.counts;
        // Durable now: publish in commit order, then answer.
        let deleted_any = applied.iter().any(|done| {
            done.changes
                .iter()
                .any(|change| matches!(change, Change::Deleted(_)))
        });
        for done in applied {
            for change in &done.changes {
                match change {
                    Change::Changed(task) => self.feed.changed(task),
                    Change::Deleted(id) => self.feed.deleted(*id),
                }
            }
            (done.answer)(None);
        }
        if deleted_any {
            self.return_free_pages();
        }
    }

    /// Gives free pages back to the file system once they are a large share
    /// of the file, so the file shrinks after a burst instead of only being
    /// reused. Small free lists are left for new rows to reuse.
    fn return_free_pages(&self) {
        const MIN_FREE_PAGES: i64 = 1024;
        let pages = |pragma: &str| {
            self.connection
                .query_row(pragma, [], |row| row.get::<_, i64>(0))
        };
        let (Ok(free), Ok(total)) = (pages("PRAGMA freelist_count"), pages("PRAGMA page_count"))
        else {
            return;
        };
        if free >= MIN_FREE_PAGES && free * 4 >= total {
            let result = self.connection.query_row(
                &format!("PRAGMA incremental_vacuum({})", free / 2),
                [],
                |_| Ok(()),
            );
            if let Err(error) = result
                && !matches!(error, rusqlite::Error::QueryReturnedNoRows)
            {
                tracing::warn!(%error, "incremental vacuum failed");
            }
        }
    }

    /// Applies one op inside the open transaction. A SQL error aborts the batch.
    fn apply(&mut self, op: Op, batch: &mut Batch) -> Result<Applied, (rusqlite::Error, Applied)> {
        macro_rules! sql {
            ($reply:expr, $result:expr) => {
                match $result {
                    Ok(value) => value,
                    Err(error) => {
                        let placeholder = StoreError::Internal(String::new());
                        return Err((error, Applied::new($reply, Err(placeholder), Vec::new())));
                    }
                }
            };
        }
        Ok(match op {
            Op::Create {
                task,
                max_queued,
                claim,
                reply,
            } => {
                if let Some(key) = &task.idempotency_key {
                    let existing = sql!(reply, self.by_idempotency_key(&task.namespace, key));
                    if let Some(existing) = existing {
                        let result = if existing.request_fingerprint == task.request_fingerprint {
                            Ok(CreateOutcome::Existing(Arc::new(existing)))
                        } else {
                            Err(StoreError::IdempotencyMismatch {
                                existing: existing.id,
                            })
                        };
                        return Ok(Applied::new(reply, result, Vec::new()));
                    }
                }
                if let Some(limit) = max_queued
                    && task.state.is_claimable()
                    && batch.queued() >= limit
                {
                    return Ok(Applied::new(
                        reply,
                        Err(StoreError::QueueFull { limit }),
                        Vec::new(),
                    ));
                }
                let claim = match claim {
                    Some((request, on_claimed)) => {
                        let due_now = request.takes(&task)
                            && task.due_at().is_some_and(|due| due <= request.now);
                        let claimable = due_now && sql!(reply, self.nothing_due(&request, batch));
                        claimable.then_some((request, on_claimed))
                    }
                    None => None,
                };
                let queued = Arc::new(task);
                // Claimed, the row is stored as running; otherwise as submitted.
                let (stored, on_claimed) = match claim {
                    Some((request, on_claimed)) => {
                        let mut running = TaskRecord::clone(&queued);
                        batch.fencing_token += 1;
                        request.claim(&mut running, batch.fencing_token);
                        sql!(reply, self.store_fencing_token(batch.fencing_token));
                        (Arc::new(running), Some(on_claimed))
                    }
                    None => (queued.clone(), None),
                };
                let columns = sql!(reply, Columns::of(&stored).map_err(to_sql_error));
                sql!(reply, columns.insert(&self.connection));
                batch.count(None, Some(&stored));
                batch.written.insert(stored.id, Some(stored.clone()));
                let changes = match on_claimed {
                    Some(on_claimed) => {
                        on_claimed(stored.clone());
                        vec![Change::Changed(queued.clone()), Change::Changed(stored)]
                    }
                    None => vec![Change::Changed(stored)],
                };
                Applied::new(reply, Ok(CreateOutcome::Created(queued)), changes)
            }
            Op::Update {
                mut task,
                expected_revision,
                reply,
            } => {
                let stored = sql!(reply, self.lookup(task.id, batch));
                let Some(stored) = stored else {
                    return Ok(Applied::new(reply, Err(StoreError::NotFound), Vec::new()));
                };
                if stored.revision != expected_revision || task.revision <= expected_revision {
                    return Ok(Applied::new(
                        reply,
                        Err(StoreError::RevisionConflict),
                        Vec::new(),
                    ));
                }
                if let (Some(stored_lease), Some(lease)) = (&stored.lease, &mut task.lease)
                    && stored_lease.token == lease.token
                {
                    lease.expires_at = stored_lease.expires_at;
                }
                let columns = sql!(reply, Columns::of(&task).map_err(to_sql_error));
                sql!(reply, columns.update(&self.connection));
                batch.count(Some(&stored), Some(&task));
                let task = Arc::new(task);
                batch.written.insert(task.id, Some(task.clone()));
                Applied::new(reply, Ok(task.clone()), vec![Change::Changed(task)])
            }
            Op::Delete { id, reply } => {
                let stored = sql!(reply, self.lookup(id, batch));
                let Some(stored) = stored else {
                    return Ok(Applied::new(reply, Ok(false), Vec::new()));
                };
                sql!(
                    reply,
                    self.connection
                        .prepare_cached("DELETE FROM tasks WHERE id = ?1")
                        .and_then(|mut statement| statement.execute([id.to_bytes()]))
                );
                batch.count(Some(&stored), None);
                batch.written.insert(id, None);
                Applied::new(reply, Ok(true), vec![Change::Deleted(id)])
            }
            Op::Claim { request, reply } => {
                let due = sql!(reply, self.due_tasks(&request, batch));
                let mut claimed = Vec::with_capacity(due.len());
                let mut changes = Vec::with_capacity(due.len());
                for stored in due {
                    let mut task = stored.clone();
                    batch.fencing_token += 1;
                    request.claim(&mut task, batch.fencing_token);
                    let columns = sql!(reply, Columns::of(&task).map_err(to_sql_error));
                    sql!(reply, columns.update(&self.connection));
                    batch.count(Some(&stored), Some(&task));
                    let task = Arc::new(task);
                    batch.written.insert(task.id, Some(task.clone()));
                    changes.push(Change::Changed(task.clone()));
                    claimed.push(task);
                }
                if !claimed.is_empty() {
                    sql!(reply, self.store_fencing_token(batch.fencing_token));
                }
                Applied::new(reply, Ok(claimed), changes)
            }
            Op::ExtendLease {
                id,
                token,
                expires_at,
                now,
                reply,
            } => {
                let stored = sql!(reply, self.lookup(id, batch));
                let Some(mut task) = stored else {
                    return Ok(Applied::new(reply, Err(StoreError::NotFound), Vec::new()));
                };
                let Some(lease) = task
                    .lease
                    .as_mut()
                    .filter(|lease| lease.token == token && lease.holds_at(now))
                else {
                    return Ok(Applied::new(reply, Err(StoreError::StaleLease), Vec::new()));
                };
                lease.expires_at = expires_at;
                // The revision stays: a lease renewal is not a change anyone
                // watches. Only the column is written; reads take it from there.
                sql!(reply, schema::renew_lease(&self.connection, id, expires_at));
                batch.written.insert(id, Some(Arc::new(task)));
                Applied::new(reply, Ok(()), Vec::new())
            }
            Op::RecordPoll { kinds, at, reply } => {
                let mut upsert = sql!(
                    reply,
                    self.connection.prepare_cached(
                        "INSERT INTO kinds (name, last_poll_at) VALUES (?1, ?2)
                         ON CONFLICT (name) DO UPDATE SET last_poll_at = MAX(last_poll_at, excluded.last_poll_at)",
                    )
                );
                for kind in &kinds {
                    sql!(reply, upsert.execute(params![kind, micros(at)]));
                }
                Applied::new(reply, Ok(()), Vec::new())
            }
            // The run loop takes Close out of every batch before applying it.
            Op::Close { reply } => Applied::new(reply, Ok(()), Vec::new()),
            Op::DeleteExpired { now, limit, reply } => {
                let deleted = sql!(reply, self.delete_expired(now, limit));
                for id in &deleted {
                    batch.written.insert(*id, None);
                }
                let changes = deleted.iter().map(|id| Change::Deleted(*id)).collect();
                Applied::new(reply, Ok(deleted), changes)
            }
        })
    }

    /// Deletes up to `limit` expired tasks, oldest expiry first.
    fn delete_expired(&self, now: SystemTime, limit: usize) -> rusqlite::Result<Vec<TaskId>> {
        let expired: Vec<TaskId> = self
            .connection
            .prepare_cached(
                "SELECT id FROM tasks WHERE expires_at <= ?1 ORDER BY expires_at, id LIMIT ?2",
            )?
            .query_map(params![micros(now), limit as i64], |row| {
                row.get::<_, [u8; 16]>(0)
            })?
            .map(|bytes| bytes.map(TaskId::from_bytes))
            .collect::<rusqlite::Result<_>>()?;
        let mut delete = self
            .connection
            .prepare_cached("DELETE FROM tasks WHERE id = ?1")?;
        for id in &expired {
            delete.execute([id.to_bytes()])?;
        }
        Ok(expired)
    }

    fn store_fencing_token(&self, token: u64) -> rusqlite::Result<()> {
        self.connection
            .prepare_cached("UPDATE counters SET value = ?1 WHERE name = 'fencing_token'")?
            .execute([token as i64])
            .map(drop)
    }

    /// Whether no claimable task of the request's kinds is due by
    /// `request.now`. The counts answer without a query when nothing of
    /// those kinds is claimable at all.
    fn nothing_due(&self, request: &ClaimRequest, batch: &Batch) -> rusqlite::Result<bool> {
        if batch.queued_of(&request.kinds) == 0 {
            return Ok(true);
        }
        let mut statement = self.connection.prepare_cached(
            "SELECT 1 FROM tasks WHERE kind = ?1 AND due_at IS NOT NULL AND due_at <= ?2
             AND (?3 IS NULL OR namespace = ?3) LIMIT 1",
        )?;
        let namespace = request.namespace.as_deref();
        for kind in request.kinds.iter() {
            if statement.exists(params![kind, micros(request.now), namespace])? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn by_idempotency_key(
        &self,
        namespace: &str,
        key: &str,
    ) -> rusqlite::Result<Option<TaskRecord>> {
        let mut statement = self.connection.prepare_cached(&format!(
            "SELECT {TASK_COLUMNS} FROM tasks WHERE namespace = ?1 AND idempotency_key = ?2"
        ))?;
        let mut rows = statement.query([namespace, key])?;
        match rows.next()? {
            Some(row) => schema::task_of(row).map(Some),
            None => Ok(None),
        }
    }

    /// Up to `request.limit` due tasks of the request's kinds, in claim
    /// order: each kind read in its index order, then merged.
    fn due_tasks(
        &self,
        request: &ClaimRequest,
        batch: &Batch,
    ) -> rusqlite::Result<Vec<TaskRecord>> {
        // A worker's claim stays in its namespace's part of the index.
        let mut statement = match &request.namespace {
            None => self.connection.prepare_cached(
                "SELECT id FROM tasks WHERE kind = ?1 AND due_at IS NOT NULL AND due_at <= ?2
                 AND namespace NOT IN (SELECT value FROM json_each(?4))
                 ORDER BY priority DESC, created_at, id LIMIT ?3",
            )?,
            Some(_) => self.connection.prepare_cached(
                "SELECT id FROM tasks WHERE namespace = ?5 AND kind = ?1 AND due_at IS NOT NULL
                 AND due_at <= ?2 AND namespace NOT IN (SELECT value FROM json_each(?4))
                 ORDER BY priority DESC, created_at, id LIMIT ?3",
            )?,
        };
        let excluded =
            serde_json::to_string(&request.excluded_namespaces).expect("names always serialize");
        let mut due = Vec::new();
        for kind in request.kinds.iter() {
            if batch
                .counts
                .get(kind)
                .is_none_or(|counts| counts.queued == 0)
            {
                continue;
            }
            let id_of = |row: &rusqlite::Row<'_>| row.get::<_, [u8; 16]>(0).map(TaskId::from_bytes);
            let (now, limit) = (micros(request.now), request.limit as i64);
            let ids: Vec<TaskId> = match &request.namespace {
                None => statement.query_map(params![kind, now, limit, excluded], id_of)?,
                Some(namespace) => statement.query_map(
                    params![kind, now, limit, excluded, namespace.as_ref()],
                    id_of,
                )?,
            }
            .collect::<rusqlite::Result<_>>()?;
            for id in ids {
                if let Some(task) = self.lookup(id, batch)? {
                    due.push(task);
                }
            }
        }
        due.sort_by(|left, right| {
            (std::cmp::Reverse(left.priority), left.created_at, left.id).cmp(&(
                std::cmp::Reverse(right.priority),
                right.created_at,
                right.id,
            ))
        });
        due.truncate(request.limit);
        Ok(due)
    }

    /// The latest committed (or batch-written) record: from this batch, the
    /// cache, or the file, in that order.
    fn lookup(&self, id: TaskId, batch: &Batch) -> rusqlite::Result<Option<TaskRecord>> {
        if let Some(written) = batch.written.get(&id) {
            return Ok(written.as_deref().cloned());
        }
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .peek(&id)
            .cloned();
        match cached {
            Some(task) => Ok(Some(TaskRecord::clone(&task))),
            None => schema::get(&self.connection, id),
        }
    }
}

fn to_sql_error(error: StoreError) -> rusqlite::Error {
    rusqlite::Error::ToSqlConversionFailure(Box::new(std::io::Error::other(error.to_string())))
}

fn clone_error(error: &StoreError) -> StoreError {
    match error {
        StoreError::Unavailable(message) => StoreError::Unavailable(message.clone()),
        other => StoreError::Internal(other.to_string()),
    }
}

fn answer_unapplied(op: Op, error: &StoreError) {
    match op {
        Op::Create { reply, .. } => drop(reply.send(Err(clone_error(error)))),
        Op::Update { reply, .. } => drop(reply.send(Err(clone_error(error)))),
        Op::Delete { reply, .. } => drop(reply.send(Err(clone_error(error)))),
        Op::Claim { reply, .. } => drop(reply.send(Err(clone_error(error)))),
        Op::ExtendLease { reply, .. } => drop(reply.send(Err(clone_error(error)))),
        Op::RecordPoll { reply, .. } => drop(reply.send(Err(clone_error(error)))),
        Op::DeleteExpired { reply, .. } => drop(reply.send(Err(clone_error(error)))),
        Op::Close { reply } => drop(reply.send(Err(clone_error(error)))),
    }
}
