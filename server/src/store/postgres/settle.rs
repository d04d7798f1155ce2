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
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::{
    errors::classify,
    publish::{Change, Publisher},
    schema,
};
use crate::{engine::task::TaskId, store::StoreResult};

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
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    rows.iter()
        .map(|row| schema::task_id_of(row, "task_id"))
        .collect()
}

/// Tasks whose last write by this replica has an unknown outcome.
#[derive(Default)]
pub struct Unsettled {
    ids: Mutex<HashSet<TaskId>>,
}

impl Unsettled {
    /// Remembers tasks to read again once the database answers.
    pub fn add(&self, ids: impl IntoIterator<Item = TaskId>) {
        self.lock().extend(ids);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<TaskId>> {
        self.ids
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Reads the unsettled tasks again every [`SETTLE_INTERVAL`] and
    /// publishes what is stored (a deletion for a task that is gone), until
    /// `stop` fires.
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
            let ids: Vec<TaskId> = self.lock().iter().copied().collect();
            if ids.is_empty() {
                continue;
            }
            match stored(&pool, &ids).await {
                Ok(changes) => {
                    publisher.publish_local(changes).await;
                    let mut unsettled = self.lock();
                    for id in &ids {
                        unsettled.remove(id);
                    }
                    tracing::info!(
                        tasks = ids.len(),
                        "published what writes with a lost answer left"
                    );
                }
                Err(error) => tracing::debug!(%error, "unsettled writes wait for the database"),
            }
        }
    }
}

/// The stored state of each task: its record, or its deletion.
async fn stored(pool: &PgPool, ids: &[TaskId]) -> StoreResult<Vec<Change>> {
    let keys: Vec<Vec<u8>> = ids.iter().map(|id| id.to_bytes().to_vec()).collect();
    let rows = sqlx::query("SELECT record FROM tasks WHERE id = ANY($1)")
        .bind(keys)
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    let mut changes = Vec::with_capacity(ids.len());
    let mut found = HashSet::with_capacity(rows.len());
    for row in &rows {
        let task = schema::record_of(row)?;
        found.insert(task.id);
        changes.push(Change::Changed(task));
    }
    changes.extend(
        ids.iter()
            .filter(|id| !found.contains(id))
            .map(|&id| Change::Deleted {
                id,
                last_revision: None,
            }),
    );
    Ok(changes)
}
