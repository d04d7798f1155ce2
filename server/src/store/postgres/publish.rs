//! Hands committed changes to this process's [`ChangeFeed`], per task in
//! revision order, whichever path they arrive by: this replica's own commits
//! (reported right after they commit) or other replicas' (announced by
//! NOTIFY, with the record when it fits, else read from the change table).
//!
//! A small map remembers the last revision delivered per task. A change at
//! or below it was already delivered and is skipped; a change that skips
//! revisions (a later commit reported before an earlier one, or a replica
//! that announced two changes in a row) first fetches the missing revisions
//! from the change table, so listeners see every revision with no gap. The
//! map keeps two generations of bounded size; a task forgotten by it is
//! delivered as it comes, and watchers catch any gap by revision.
//!
//! Reading the change table is retried for a few seconds; when it still
//! fails, the followers of those tasks are told to read the store again
//! (a resync) rather than left waiting for a change they will never see.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use sqlx::{PgPool, Row};

use super::{errors, schema};
use crate::{
    engine::task::TaskId,
    store::{ChangeFeed, SharedTask, StoreResult},
    telemetry::metrics::record,
};

/// Tasks remembered per generation of the delivered-revision map.
const GENERATION_CAPACITY: usize = 65_536;
/// How long reading missed revisions from the change table is retried for
/// what other replicas announced (the listener's own time).
const FETCH_BOUND: std::time::Duration = std::time::Duration::from_secs(3);
/// The same for this replica's own commits, whose writers wait meanwhile.
const LOCAL_FETCH_BOUND: std::time::Duration = std::time::Duration::from_secs(1);
const FETCH_FIRST_BACKOFF: std::time::Duration = std::time::Duration::from_millis(100);
/// The revision recorded for a deleted task: nothing after it is delivered.
const DELETED: u64 = u64::MAX;

/// One committed change.
#[derive(Clone, Debug)]
pub enum Change {
    Changed(SharedTask),
    /// The task was deleted at `last_revision`, when known: revisions up to
    /// it not yet delivered are delivered before the deletion.
    Deleted {
        id: TaskId,
        last_revision: Option<u64>,
    },
}

impl Change {
    fn task_id(&self) -> TaskId {
        match self {
            Change::Changed(task) => task.id,
            Change::Deleted { id, .. } => *id,
        }
    }

    /// The revision this change needs delivered before it, if any is missing.
    fn missing_before(&self, last_delivered: Option<u64>) -> Option<Wanted> {
        let last = last_delivered.filter(|last| *last != DELETED)?;
        let (id, upto) = match self {
            Change::Changed(task) => (task.id, task.revision - 1),
            Change::Deleted {
                id,
                last_revision: Some(revision),
            } => (*id, *revision),
            Change::Deleted { .. } => return None,
        };
        (last < upto).then_some(Wanted {
            task_id: id,
            after: last,
            upto,
        })
    }
}

/// A change announced by another replica: a revision, or `None` for a
/// deletion, with the record when it fit in the notification.
#[derive(Clone, Debug, PartialEq)]
pub struct Notice {
    pub task_id: TaskId,
    pub revision: Option<u64>,
    pub record: Option<SharedTask>,
}

/// What one batch of notices says about one task.
#[derive(Default)]
struct Announced {
    /// Revisions in commit order, with their records when carried.
    revisions: Vec<(u64, Option<SharedTask>)>,
    deleted: bool,
}

impl Announced {
    /// The revisions to read from the change table, unless the records
    /// carried cover every revision after `last` delivered.
    fn wanted(&self, task_id: TaskId, last: Option<u64>) -> Option<Wanted> {
        let low = self.revisions.iter().map(|(revision, _)| *revision).min()?;
        let high = self.revisions.iter().map(|(revision, _)| *revision).max()?;
        if last.is_some_and(|last| last >= high) {
            return None;
        }
        let after = last.unwrap_or(low - 1);
        let mut carried: Vec<u64> = self
            .revisions
            .iter()
            .filter(|(revision, record)| *revision > after && record.is_some())
            .map(|(revision, _)| *revision)
            .collect();
        carried.sort_unstable();
        carried.dedup();
        let covered = carried.len() as u64 == high - after;
        (!covered).then_some(Wanted {
            task_id,
            after,
            upto: high,
        })
    }
}

/// Revisions to fetch for one task: after `after`, up to and including `upto`.
#[derive(Clone, Copy, Debug)]
struct Wanted {
    task_id: TaskId,
    after: u64,
    upto: u64,
}

/// Delivers changes to the feed in revision order per task.
pub struct Publisher {
    feed: Arc<dyn ChangeFeed>,
    pool: PgPool,
    delivered: Mutex<Delivered>,
}

#[derive(Default)]
struct Delivered {
    current: HashMap<TaskId, u64>,
    previous: HashMap<TaskId, u64>,
}

impl Delivered {
    fn last(&self, id: TaskId) -> Option<u64> {
        self.current
            .get(&id)
            .or_else(|| self.previous.get(&id))
            .copied()
    }

    fn record(&mut self, id: TaskId, revision: u64) {
        if self.current.len() >= GENERATION_CAPACITY && !self.current.contains_key(&id) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(id, revision);
    }
}

impl Publisher {
    pub fn new(feed: Arc<dyn ChangeFeed>, pool: PgPool) -> Self {
        Self {
            feed,
            pool,
            delivered: Mutex::default(),
        }
    }

    fn delivered(&self) -> std::sync::MutexGuard<'_, Delivered> {
        // Delivery leaves the map consistent before calling out, so a
        // poisoned lock still guards usable data.
        self.delivered
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the change of `id` at `revision` (`None`: its deletion) was
    /// delivered already.
    pub fn is_delivered(&self, id: TaskId, revision: Option<u64>) -> bool {
        let last = self.delivered().last(id);
        match revision {
            Some(revision) => last.is_some_and(|last| last >= revision),
            None => last == Some(DELETED),
        }
    }

    /// Tells every follower to read the store again.
    pub fn resync_all(&self) {
        record::resynced("all");
        self.feed.resync_all();
    }

    /// Delivers one change unless it was already delivered.
    fn deliver(&self, delivered: &mut Delivered, change: &Change) {
        let id = change.task_id();
        let last = delivered.last(id);
        match change {
            Change::Changed(task) => {
                if last.is_some_and(|last| last >= task.revision) {
                    return;
                }
                delivered.record(id, task.revision);
                self.feed.changed(task);
            }
            Change::Deleted { .. } => {
                if last == Some(DELETED) {
                    return;
                }
                delivered.record(id, DELETED);
                self.feed.deleted(id);
            }
        }
    }

    /// Reports changes this process just committed, in commit order.
    pub async fn publish_local(&self, changes: Vec<Change>) {
        let mut gapped = Vec::new();
        let mut wanted = Vec::new();
        {
            let mut delivered = self.delivered();
            for change in changes {
                match change.missing_before(delivered.last(change.task_id())) {
                    Some(missing) => {
                        wanted.push(missing);
                        gapped.push(change);
                    }
                    None => self.deliver(&mut delivered, &change),
                }
            }
        }
        if gapped.is_empty() {
            return;
        }
        let missing = self.fetch(&wanted, LOCAL_FETCH_BOUND).await;
        let mut delivered = self.delivered();
        for change in missing.iter().chain(&gapped) {
            self.deliver(&mut delivered, change);
        }
    }

    /// Delivers changes other replicas announced: with the records the
    /// notifications carried, or else (a record too large to carry, or
    /// revisions this process has not seen yet) read from the change table.
    pub async fn publish_remote(&self, notices: Vec<Notice>) {
        let mut order: Vec<TaskId> = Vec::new();
        let mut per_task: HashMap<TaskId, Announced> = HashMap::new();
        for notice in notices {
            let announced = per_task.entry(notice.task_id).or_insert_with(|| {
                order.push(notice.task_id);
                Announced::default()
            });
            match notice.revision {
                Some(revision) => announced.revisions.push((revision, notice.record)),
                None => announced.deleted = true,
            }
        }
        let wanted: Vec<Wanted> = {
            let delivered = self.delivered();
            order
                .iter()
                .filter_map(|id| per_task[id].wanted(*id, delivered.last(*id)))
                .collect()
        };
        let mut fetched: HashMap<TaskId, Vec<Change>> = HashMap::new();
        for change in self.fetch(&wanted, FETCH_BOUND).await {
            fetched.entry(change.task_id()).or_default().push(change);
        }
        let mut delivered = self.delivered();
        for id in order {
            let announced = per_task.remove(&id).unwrap_or_default();
            match fetched.remove(&id) {
                Some(changes) => {
                    for change in changes {
                        self.deliver(&mut delivered, &change);
                    }
                }
                None => {
                    for (_, record) in announced.revisions {
                        if let Some(task) = record {
                            self.deliver(&mut delivered, &Change::Changed(task));
                        }
                    }
                }
            }
            if announced.deleted {
                let deleted = Change::Deleted {
                    id,
                    last_revision: None,
                };
                self.deliver(&mut delivered, &deleted);
            }
        }
    }

    /// Delivers changes replayed from the change table, in commit order.
    pub fn publish_replayed(&self, changes: &[Change]) {
        let mut delivered = self.delivered();
        for change in changes {
            self.deliver(&mut delivered, change);
        }
    }

    /// Reads the wanted revisions from the change table, per task in
    /// revision order, retrying for `bound`. When that fails, the
    /// followers of those tasks are resynced from the store, and nothing is
    /// returned: what was announced stays undelivered, so a later change
    /// of those tasks asks for the gap again.
    async fn fetch(&self, wanted: &[Wanted], bound: std::time::Duration) -> Vec<Change> {
        if wanted.is_empty() {
            return Vec::new();
        }
        let give_up_at = tokio::time::Instant::now() + bound;
        let mut backoff = FETCH_FIRST_BACKOFF;
        loop {
            let remaining = give_up_at.saturating_duration_since(tokio::time::Instant::now());
            let error =
                match tokio::time::timeout(remaining, fetch_revisions(&self.pool, wanted)).await {
                    Ok(Ok(changes)) => return changes,
                    Ok(Err(error)) => error.to_string(),
                    Err(_) => "no answer in time".to_owned(),
                };
            if tokio::time::Instant::now() + backoff >= give_up_at {
                tracing::warn!(%error, tasks = wanted.len(), "cannot read committed changes from the change table; their waiters and watchers read the store again");
                let ids: Vec<TaskId> = wanted.iter().map(|wanted| wanted.task_id).collect();
                record::resynced("tasks");
                self.feed.resync(&ids);
                return Vec::new();
            }
            tokio::time::sleep(backoff).await;
            backoff *= 2;
        }
    }
}

async fn fetch_revisions(pool: &PgPool, wanted: &[Wanted]) -> StoreResult<Vec<Change>> {
    let ids: Vec<Vec<u8>> = wanted
        .iter()
        .map(|wanted| wanted.task_id.to_bytes().to_vec())
        .collect();
    let after: Vec<i64> = wanted.iter().map(|wanted| wanted.after as i64).collect();
    let upto: Vec<i64> = wanted.iter().map(|wanted| wanted.upto as i64).collect();
    let rows = sqlx::query(
        "SELECT c.record FROM unnest($1::bytea[], $2::bigint[], $3::bigint[]) AS w(task_id, after_revision, upto_revision)
         JOIN task_changes c ON c.task_id = w.task_id
              AND c.revision > w.after_revision AND c.revision <= w.upto_revision
         ORDER BY c.task_id, c.revision",
    )
    .bind(ids)
    .bind(after)
    .bind(upto)
    .fetch_all(pool)
    .await
    .map_err(errors::classify)?;
    rows.iter()
        .map(|row| schema::record_of(row).map(Change::Changed))
        .collect()
}

/// Decodes a change-table row (`task_id`, `revision`, `record`).
pub fn change_of(row: &sqlx::postgres::PgRow) -> StoreResult<Change> {
    let revision: Option<i64> = row.try_get("revision").map_err(errors::classify)?;
    match revision {
        Some(_) => schema::record_of(row).map(Change::Changed),
        None => schema::task_id_of(row, "task_id").map(|id| Change::Deleted {
            id,
            last_revision: None,
        }),
    }
}
