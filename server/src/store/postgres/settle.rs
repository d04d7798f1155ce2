//! Writes whose outcome is unknown: the statement was sent, and the
//! connection broke before its answer came back, so it may have committed.
//!
//! A batch finds out at once where it can: every committed change left a
//! row in `task_changes` with this replica's origin and its revision, so
//! [`committed`] tells committed writes from the others exactly (the former
//! are reported as written, the latter run again). When even that cannot be
//! asked, the write is answered as unavailable and its task is remembered
//! in [`Unsettled`]: a background task reads those tasks once the database
//! answers again and publishes what they became, so a change this replica
//! committed always reaches its own waiters and watchers.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{
    errors::{classify, within_timeout},
    publish::{Change, Publisher},
    schema,
};
use crate::{
    engine::task::TaskId,
    store::{SharedTask, StoreResult},
};

/// How often the tasks of unsettled writes are read again.
const SETTLE_INTERVAL: Duration = Duration::from_millis(250);

/// Which of these changes (a task's record at a revision) this origin
/// committed. The record is compared too: a write refused by its
/// compare-and-set carries the revision another write of the task took.
pub async fn committed(
    pool: &PgPool,
    origin: &str,
    changes: &[(TaskId, u64, &[u8])],
) -> StoreResult<HashSet<TaskId>> {
    let ids: Vec<Vec<u8>> = changes
        .iter()
        .map(|(id, _, _)| id.to_bytes().to_vec())
        .collect();
    let revisions: Vec<i64> = changes
        .iter()
        .map(|(_, revision, _)| *revision as i64)
        .collect();
    let records: Vec<&[u8]> = changes.iter().map(|(_, _, record)| *record).collect();
    let rows = sqlx::query(
        "SELECT w.task_id FROM unnest($1::BYTEA[], $2::BIGINT[], $3::BYTEA[]) AS w(task_id, revision, record)
         WHERE EXISTS (SELECT 1 FROM task_changes c
                       WHERE c.task_id = w.task_id AND c.revision = w.revision
                           AND c.origin = $4 AND c.record = w.record)",
    )
    .bind(ids)
    .bind(revisions)
    .bind(records)
    .bind(origin)
    .fetch_all(pool);
    let rows = within_timeout(rows).await.map_err(classify)?;
    rows.iter()
        .map(|row| schema::task_id_of(row, "task_id"))
        .collect()
}

/// How long a task whose unsettled write left no row is looked for (the
/// insert's commit may still be on its way), before it counts as never made.
const MISSING_ROW_PATIENCE: Duration = Duration::from_secs(30);

/// Tasks whose last write by this replica has an unknown outcome.
#[derive(Default)]
pub struct Unsettled {
    writes: Mutex<HashMap<TaskId, UnsettledWrite>>,
}

#[derive(Clone, Copy)]
struct UnsettledWrite {
    /// The write deleted the task: no row means it did.
    deletion: bool,
    since: Instant,
}

impl Unsettled {
    /// Remembers tasks to read again once the database answers.
    pub fn add(&self, ids: impl IntoIterator<Item = TaskId>) {
        self.remember(ids, false);
    }

    /// Remembers a deletion to settle.
    pub fn add_deletion(&self, id: TaskId) {
        self.remember([id], true);
    }

    fn remember(&self, ids: impl IntoIterator<Item = TaskId>, deletion: bool) {
        let since = Instant::now();
        let mut writes = self.lock();
        for id in ids {
            writes.insert(id, UnsettledWrite { deletion, since });
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TaskId, UnsettledWrite>> {
        self.writes
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the unsettled tasks again every [`SETTLE_INTERVAL`] and
    /// publishes what is stored, until `stop` fires. A task without a row is
    /// published as deleted only if the unsettled write was its deletion;
    /// an insert's row may yet come, and is waited for a while.
    pub async fn run(
        self: Arc<Self>,
        pool: PgPool,
        publisher: Arc<Publisher>,
        stop: CancellationToken,
    ) {
        let mut ticks = tokio::time::interval(SETTLE_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = stop.cancelled() => return,
            }
            let pending: Vec<(TaskId, UnsettledWrite)> = self
                .lock()
                .iter()
                .map(|(id, write)| (*id, *write))
                .collect();
            if pending.is_empty() {
                continue;
            }
            let ids: Vec<TaskId> = pending.iter().map(|(id, _)| *id).collect();
            let stored = match stored(&pool, &ids).await {
                Ok(stored) => stored,
                Err(error) => {
                    tracing::debug!(%error, "unsettled writes wait for the database");
                    continue;
                }
            };
            let mut changes = Vec::with_capacity(pending.len());
            let mut settled = Vec::with_capacity(pending.len());
            for (id, write) in pending {
                match stored.get(&id) {
                    Some(task) => {
                        changes.push(Change::Changed(task.clone()));
                        settled.push(id);
                    }
                    None if write.deletion => {
                        changes.push(Change::Deleted {
                            id,
                            last_revision: None,
                        });
                        settled.push(id);
                    }
                    None if write.since.elapsed() >= MISSING_ROW_PATIENCE => settled.push(id),
                    None => {}
                }
            }
            publisher.publish_local(changes).await;
            let mut writes = self.lock();
            for id in &settled {
                writes.remove(id);
            }
            if !settled.is_empty() {
                tracing::info!(
                    tasks = settled.len(),
                    "published what writes with a lost answer left"
                );
            }
        }
    }
}

/// The stored records of those of `ids` that exist.
async fn stored(pool: &PgPool, ids: &[TaskId]) -> StoreResult<HashMap<TaskId, SharedTask>> {
    let keys: Vec<Vec<u8>> = ids.iter().map(|id| id.to_bytes().to_vec()).collect();
    let rows = sqlx::query("SELECT record, lease_expires_at FROM tasks WHERE id = ANY($1)")
        .bind(keys)
        .fetch_all(pool);
    let rows = within_timeout(rows).await.map_err(classify)?;
    rows.iter()
        .map(|row| schema::record_of(row).map(|task| (task.id, task)))
        .collect()
}
