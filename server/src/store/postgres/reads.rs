//! Reads of the PostgreSQL store: plain queries on the pool, served by the
//! same indexes as the embedded store's.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use sqlx::{PgPool, Row};

use super::{
    Shared,
    errors::classify,
    schema::{self, from_micros, micros, state_code},
};
use crate::{
    engine::task::TaskId,
    store::{KindCounts, ListCursor, ListPage, ListQuery, SharedTask, StoreResult},
};

/// How long a count of the queue depth is reused.
const QUEUE_DEPTH_MAX_AGE: Duration = Duration::from_secs(1);
/// Rows read per query of a listing; labels filter in Rust, so a page may
/// take several.
const LIST_CHUNK: usize = 256;

pub async fn get(pool: &PgPool, id: TaskId) -> StoreResult<Option<SharedTask>> {
    let row = sqlx::query("SELECT record, lease_expires_at FROM tasks WHERE id = $1")
        .bind(id.to_bytes().to_vec())
        .fetch_optional(pool)
        .await
        .map_err(classify)?;
    row.as_ref().map(schema::record_of).transpose()
}

/// Most revisions one resumed Watch replays from the change table.
const CHANGES_PAGE: i64 = 1_000;

pub async fn changes_after(
    pool: &PgPool,
    id: TaskId,
    after_revision: u64,
) -> StoreResult<Vec<SharedTask>> {
    let rows = sqlx::query(
        "SELECT record FROM task_changes
         WHERE task_id = $1 AND revision > $2
         ORDER BY revision LIMIT $3",
    )
    .bind(id.to_bytes().to_vec())
    .bind(i64::try_from(after_revision).unwrap_or(i64::MAX))
    .bind(CHANGES_PAGE)
    .fetch_all(pool)
    .await
    .map_err(classify)?;
    rows.iter().map(schema::record_of).collect()
}

pub async fn list(pool: &PgPool, query: &ListQuery) -> StoreResult<ListPage> {
    let mut sql =
        String::from("SELECT record, lease_expires_at, created_at, id FROM tasks WHERE TRUE");
    let mut next_parameter = 1;
    let mut parameter = || {
        let name = format!("${next_parameter}");
        next_parameter += 1;
        name
    };
    let cursor_parameters = (parameter(), parameter());
    sql.push_str(&format!(
        " AND (created_at, id) < ({}, {})",
        cursor_parameters.0, cursor_parameters.1
    ));
    if !query.states.is_empty() {
        sql.push_str(&format!(" AND state = ANY({})", parameter()));
    }
    if !query.kinds.is_empty() {
        sql.push_str(&format!(" AND kind = ANY({})", parameter()));
    }
    if query.namespace.is_some() {
        sql.push_str(&format!(" AND namespace = {}", parameter()));
    }
    let chunk = LIST_CHUNK.max(query.page_size.saturating_add(1));
    sql.push_str(&format!(
        " ORDER BY created_at DESC, id DESC LIMIT {}",
        parameter()
    ));
    let states: Vec<i16> = query
        .states
        .iter()
        .map(|state| state_code(*state))
        .collect();

    // Starts past every row when there is no cursor.
    let mut position: (i64, Vec<u8>) = match query.after {
        Some(cursor) => (micros(cursor.created_at), cursor.id.to_bytes().to_vec()),
        None => (i64::MAX, TaskId::MAX.to_bytes().to_vec()),
    };
    let mut tasks: Vec<SharedTask> = Vec::new();
    loop {
        let mut statement = sqlx::query(&sql).bind(position.0).bind(position.1.clone());
        if !query.states.is_empty() {
            statement = statement.bind(states.clone());
        }
        if !query.kinds.is_empty() {
            statement = statement.bind(query.kinds.clone());
        }
        if let Some(namespace) = &query.namespace {
            statement = statement.bind(namespace.to_string());
        }
        let rows = statement
            .bind(chunk as i64)
            .fetch_all(pool)
            .await
            .map_err(classify)?;
        for row in &rows {
            let task = schema::record_of(row)?;
            position = (
                row.try_get("created_at").map_err(classify)?,
                row.try_get("id").map_err(classify)?,
            );
            if !query.matches(&task) {
                continue;
            }
            if tasks.len() == query.page_size {
                let next = tasks.last().map(|last| ListCursor {
                    created_at: last.created_at,
                    id: last.id,
                });
                return Ok(ListPage { tasks, next });
            }
            tasks.push(task);
        }
        if rows.len() < chunk {
            return Ok(ListPage { tasks, next: None });
        }
    }
}

pub async fn next_due_at(pool: &PgPool, kinds: &[String]) -> StoreResult<Option<SystemTime>> {
    let due: Option<i64> = sqlx::query_scalar(
        "SELECT min(due_at) FROM tasks WHERE due_at IS NOT NULL AND kind = ANY($1)",
    )
    .bind(kinds)
    .fetch_one(pool)
    .await
    .map_err(classify)?;
    Ok(due.map(from_micros))
}

async fn records(
    pool: &PgPool,
    sql: &'static str,
    now: SystemTime,
    limit: usize,
) -> StoreResult<Vec<SharedTask>> {
    let rows = sqlx::query(sql)
        .bind(micros(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    rows.iter().map(schema::record_of).collect()
}

pub async fn overdue(pool: &PgPool, now: SystemTime, limit: usize) -> StoreResult<Vec<SharedTask>> {
    records(
        pool,
        "SELECT record, lease_expires_at FROM tasks WHERE deadline <= $1 ORDER BY deadline LIMIT $2",
        now,
        limit,
    )
    .await
}

pub async fn expired_leases(
    pool: &PgPool,
    now: SystemTime,
    limit: usize,
) -> StoreResult<Vec<SharedTask>> {
    records(
        pool,
        "SELECT record, lease_expires_at FROM tasks WHERE lease_expires_at <= $1 ORDER BY lease_expires_at LIMIT $2",
        now,
        limit,
    )
    .await
}

/// Waiting and running tasks per kind, counted at most once per
/// [`QUEUE_DEPTH_MAX_AGE`] (every replica's sweep asks several times a
/// second, and a count walks the whole queue); also refreshes the admission
/// estimate.
pub async fn kind_counts(shared: &Arc<Shared>) -> StoreResult<BTreeMap<String, KindCounts>> {
    if let Some((counted_at, counts)) = &*shared
        .kind_counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        && counted_at.elapsed() < QUEUE_DEPTH_MAX_AGE
    {
        return Ok(counts.clone());
    }
    let rows = sqlx::query(
        "SELECT kind, count(due_at) AS queued, count(lease_token) AS running FROM tasks
         WHERE due_at IS NOT NULL OR lease_token IS NOT NULL GROUP BY kind",
    )
    .fetch_all(&shared.pool)
    .await
    .map_err(classify)?;
    let mut counts = BTreeMap::new();
    for row in &rows {
        let kind: String = row.try_get("kind").map_err(classify)?;
        let queued: i64 = row.try_get("queued").map_err(classify)?;
        let running: i64 = row.try_get("running").map_err(classify)?;
        counts.insert(
            kind,
            KindCounts {
                queued: queued as usize,
                running: running as usize,
            },
        );
    }
    shared.admission.counted(
        counts
            .values()
            .map(|counts: &KindCounts| counts.queued)
            .sum(),
    );
    *shared
        .kind_counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((Instant::now(), counts.clone()));
    Ok(counts)
}

/// When a worker last polled for each kind, on any replica.
pub async fn last_polls(pool: &PgPool) -> StoreResult<BTreeMap<String, SystemTime>> {
    let rows = sqlx::query("SELECT name, last_poll_at FROM kinds WHERE last_poll_at IS NOT NULL")
        .fetch_all(pool)
        .await
        .map_err(classify)?;
    rows.iter()
        .map(|row| {
            let name: String = row.try_get("name").map_err(classify)?;
            let at: i64 = row.try_get("last_poll_at").map_err(classify)?;
            Ok((name, from_micros(at)))
        })
        .collect()
}

/// One namespace's waiting and running tasks, for its quotas: each count
/// reads that namespace's part of a partial index.
pub async fn namespace_counts(shared: &Arc<Shared>, namespace: &str) -> StoreResult<KindCounts> {
    let row = sqlx::query(
        "SELECT
            (SELECT count(*) FROM tasks WHERE namespace = $1 AND due_at IS NOT NULL) AS queued,
            (SELECT count(*) FROM tasks WHERE namespace = $1 AND lease_token IS NOT NULL) AS running",
    )
    .bind(namespace)
    .fetch_one(&shared.pool)
    .await
    .map_err(classify)?;
    let queued: i64 = row.try_get("queued").map_err(classify)?;
    let running: i64 = row.try_get("running").map_err(classify)?;
    Ok(KindCounts {
        queued: queued as usize,
        running: running as usize,
    })
}
