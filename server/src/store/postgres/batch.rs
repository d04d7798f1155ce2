//! Group commit of the hot writes: inserts of new tasks, and updates whose
//! compare-and-set needs no look at the stored row.
//!
//! PostgreSQL serializes the commits of every transaction that sent a NOTIFY
//! (it holds one lock from the NOTIFY until the commit is flushed, so that
//! notifications queue in commit order). One statement per write would
//! therefore cost one WAL flush after another. Instead, writes waiting here
//! go out together: one statement per batch, each row compare-and-set on its
//! own, every change logged and announced in that statement. A few batches
//! are in flight at once; under load each carries many writes.
//!
//! A batch that fails is retried one write at a time, so one bad row fails
//! only its own write. A batch whose answer was lost (the connection broke
//! after it was sent) may have committed: the change table tells which of
//! its writes did (see [`super::settle`]), and only the others run again.
//! Committed changes reach the feed from here, in batch order, before the
//! writers hear back.

use std::{
    collections::HashSet,
    sync::{Arc, LazyLock},
};

use sqlx::{PgPool, Row};
use tokio::sync::{Mutex, mpsc, oneshot};

use super::{
    errors::{classify, is_ambiguous, within_timeout},
    publish::{Change, Publisher},
    schema::{ColumnArrays, Columns},
    settle::{self, Unsettled},
    writes::{COLUMNS, LOG_CHANGES, SET_FROM_INPUT},
};
use crate::{
    engine::task::TaskId,
    store::{SharedTask, StoreError, StoreResult},
};

/// Writes carried by one statement at most.
const MAX_BATCH: usize = 256;
/// Statements in flight at once per kind of write.
const IN_FLIGHT: usize = 4;
/// Writes waiting for a statement at most; further writers wait their turn.
const QUEUE: usize = 8_192;

/// Inserts rows from column arrays unless their idempotency key (or their
/// id: a rerun of an insert whose answer was lost) is taken; returns the
/// ids inserted.
static INSERT_ROWS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH changed AS (
            INSERT INTO tasks ({COLUMNS})
            SELECT * FROM unnest($2::BYTEA[], $3::TEXT[], $4::SMALLINT[], $5::INTEGER[], $6::BIGINT[],
                $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[],
                $13::TEXT[], $14::BYTEA[], $15::TEXT[])
            ON CONFLICT DO NOTHING
            RETURNING id, revision, record
        ), {LOG_CHANGES}"
    )
});

/// Replaces each row at its expected revision (`$16`), unless the stored
/// lease has the same token and another expiry; returns the ids replaced.
static UPDATE_ROWS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH input AS (
            SELECT * FROM unnest($2::BYTEA[], $3::TEXT[], $4::SMALLINT[], $5::INTEGER[], $6::BIGINT[],
                $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[],
                $13::TEXT[], $14::BYTEA[], $15::TEXT[], $16::BIGINT[]) AS i({COLUMNS}, expected_revision)
        ), changed AS (
            UPDATE tasks t SET {SET_FROM_INPUT}
            FROM input i
            WHERE t.id = i.id AND t.revision = i.expected_revision
                AND (t.lease_token IS NULL OR i.lease_token IS NULL
                     OR t.lease_token <> i.lease_token OR t.lease_expires_at = i.lease_expires_at)
            RETURNING t.id, t.revision, t.record
        ), {LOG_CHANGES}"
    )
});

/// One write waiting for its batch.
struct Write {
    task: SharedTask,
    columns: Columns,
    /// For updates: the revision the stored row must have.
    expected_revision: Option<u64>,
    /// Whether the row was written (false: key taken, or not at that revision).
    reply: oneshot::Sender<StoreResult<bool>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Insert,
    Update,
}

/// The queues of batched writes.
pub struct Batcher {
    inserts: mpsc::Sender<Write>,
    updates: mpsc::Sender<Write>,
}

impl Batcher {
    /// Starts the batch writers on the current runtime; they stop once the
    /// batcher is dropped and the queues are drained.
    pub fn start(
        pool: PgPool,
        origin: Arc<str>,
        publisher: Arc<Publisher>,
        unsettled: Arc<Unsettled>,
    ) -> Self {
        let writer = Arc::new(Writer {
            pool,
            origin,
            publisher,
            unsettled,
        });
        let queue = |kind: Kind| {
            let (sender, receiver) = mpsc::channel(QUEUE);
            let receiver = Arc::new(Mutex::new(receiver));
            for _ in 0..IN_FLIGHT {
                tokio::spawn(writer.clone().run(kind, receiver.clone()));
            }
            sender
        };
        Self {
            inserts: queue(Kind::Insert),
            updates: queue(Kind::Update),
        }
    }

    /// Inserts a task unless its idempotency key is taken; true if inserted.
    pub async fn insert(&self, task: SharedTask) -> StoreResult<bool> {
        self.submit(&self.inserts, task, None).await
    }

    /// Replaces a task at `expected_revision` unless a renewed lease must be
    /// kept; true if replaced, false if the careful path must decide.
    pub async fn update(&self, task: SharedTask, expected_revision: u64) -> StoreResult<bool> {
        self.submit(&self.updates, task, Some(expected_revision))
            .await
    }

    async fn submit(
        &self,
        queue: &mpsc::Sender<Write>,
        task: SharedTask,
        expected_revision: Option<u64>,
    ) -> StoreResult<bool> {
        let stopped = || crate::store::StoreError::Unavailable("the store is closed".into());
        let (reply, answer) = oneshot::channel();
        let write = Write {
            columns: Columns::of(&task)?,
            task,
            expected_revision,
            reply,
        };
        queue.send(write).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// The writes of one statement, each of another task.
#[derive(Default)]
struct Batch {
    writes: Vec<Write>,
    ids: HashSet<TaskId>,
}

impl Batch {
    fn push(&mut self, write: Write) {
        self.ids.insert(write.task.id);
        self.writes.push(write);
    }

    /// Takes what waits in the queue, up to the batch limit; returns a write
    /// of a task already in the batch, which must wait for the next one.
    fn fill(&mut self, queue: &mut mpsc::Receiver<Write>) -> Option<Write> {
        while self.writes.len() < MAX_BATCH {
            let Ok(write) = queue.try_recv() else {
                return None;
            };
            if self.ids.contains(&write.task.id) {
                return Some(write);
            }
            self.push(write);
        }
        None
    }
}

struct Writer {
    pool: PgPool,
    origin: Arc<str>,
    publisher: Arc<Publisher>,
    unsettled: Arc<Unsettled>,
}

impl Writer {
    async fn run(self: Arc<Self>, kind: Kind, queue: Arc<Mutex<mpsc::Receiver<Write>>>) {
        // A write of a task already in the batch waits for the next one:
        // one statement must not update a row twice.
        let mut carried: Option<Write> = None;
        loop {
            let mut batch = Batch::default();
            match carried.take() {
                // Never wait for the queue with a write in hand: the worker
                // holding the queue may be waiting for writes that wait on it.
                Some(first) => {
                    batch.push(first);
                    if let Ok(mut queue) = queue.try_lock() {
                        carried = batch.fill(&mut queue);
                    }
                }
                None => {
                    let mut queue = queue.lock().await;
                    let Some(first) = queue.recv().await else {
                        return;
                    };
                    batch.push(first);
                    carried = batch.fill(&mut queue);
                }
            }
            self.write(kind, batch.writes).await;
        }
    }

    /// Writes a batch, then one write at a time if the batch failed.
    async fn write(&self, kind: Kind, batch: Vec<Write>) {
        let error = match self.execute(kind, &batch).await {
            Ok(written) => return self.finish(batch, &written).await,
            Err(error) => error,
        };
        let batch = if is_ambiguous(&error) {
            match self.settle(batch).await {
                Some(uncommitted) => uncommitted,
                None => return,
            }
        } else if batch.len() == 1 {
            let write = batch.into_iter().next().expect("one write");
            let _ = write.reply.send(Err(classify(error)));
            return;
        } else {
            tracing::debug!(%error, writes = batch.len(), "a batch failed; writing one at a time");
            batch
        };
        for write in batch {
            match self.execute(kind, std::slice::from_ref(&write)).await {
                Ok(written) => self.finish(vec![write], &written).await,
                Err(error) if is_ambiguous(&error) => {
                    let uncommitted = self.settle(vec![write]).await.unwrap_or_default();
                    let error = classify(error);
                    for write in uncommitted {
                        let _ = write
                            .reply
                            .send(Err(StoreError::Unavailable(error.to_string())));
                    }
                }
                Err(error) => drop(write.reply.send(Err(classify(error)))),
            }
        }
    }

    /// Finds out which writes of a batch whose answer was lost committed,
    /// and finishes those; returns the others. If that cannot be asked
    /// either, every write is answered as unavailable and remembered as
    /// unsettled (`None`).
    async fn settle(&self, batch: Vec<Write>) -> Option<Vec<Write>> {
        let changes: Vec<(TaskId, u64, &[u8])> = batch
            .iter()
            .map(|write| {
                (
                    write.task.id,
                    write.task.revision,
                    write.columns.record.as_slice(),
                )
            })
            .collect();
        match settle::committed(&self.pool, &self.origin, &changes).await {
            Ok(committed) => {
                let (done, uncommitted): (Vec<Write>, Vec<Write>) = batch
                    .into_iter()
                    .partition(|write| committed.contains(&write.task.id));
                if !done.is_empty() {
                    tracing::info!(
                        writes = done.len(),
                        "writes whose answer was lost had committed"
                    );
                    self.finish(done, &committed).await;
                }
                Some(uncommitted)
            }
            Err(_) => {
                self.unsettled.add(batch.iter().map(|write| write.task.id));
                for write in batch {
                    let _ = write.reply.send(Err(StoreError::Unavailable(
                        "the database did not answer; the write may have been stored".into(),
                    )));
                }
                None
            }
        }
    }

    /// Runs one statement for the batch; returns the ids written.
    async fn execute(&self, kind: Kind, batch: &[Write]) -> Result<HashSet<TaskId>, sqlx::Error> {
        // Every batch takes its locks (rows, idempotency keys) in the same
        // order, so two batches in flight cannot deadlock each other.
        let mut order: Vec<&Write> = batch.iter().collect();
        order.sort_by(|left, right| {
            (&left.task.idempotency_key, left.task.id)
                .cmp(&(&right.task.idempotency_key, right.task.id))
        });
        let mut rows = ColumnArrays::default();
        for write in &order {
            rows.push(write.columns.clone());
        }
        let statement = match kind {
            Kind::Insert => INSERT_ROWS.as_str(),
            Kind::Update => UPDATE_ROWS.as_str(),
        };
        let mut query =
            super::writes::bind_rows(sqlx::query(statement).bind(self.origin.to_string()), rows);
        if kind == Kind::Update {
            let expected: Vec<i64> = order
                .iter()
                .map(|write| write.expected_revision.unwrap_or_default() as i64)
                .collect();
            query = query.bind(expected);
        }
        let written = within_timeout(query.fetch_all(&self.pool)).await?;
        written
            .iter()
            .map(|row| {
                let bytes: &[u8] = row.try_get("task_id")?;
                let bytes: [u8; 16] = bytes
                    .try_into()
                    .map_err(|_| sqlx::Error::Decode("a stored task id is not 16 bytes".into()))?;
                Ok(TaskId::from_bytes(bytes))
            })
            .collect()
    }

    /// Reports what the batch wrote to the feed, in batch order, then answers.
    async fn finish(&self, batch: Vec<Write>, written: &HashSet<TaskId>) {
        let changes: Vec<Change> = batch
            .iter()
            .filter(|write| written.contains(&write.task.id))
            .map(|write| Change::Changed(write.task.clone()))
            .collect();
        if !changes.is_empty() {
            self.publisher.publish_local(changes).await;
        }
        for write in batch {
            let _ = write.reply.send(Ok(written.contains(&write.task.id)));
        }
    }
}
