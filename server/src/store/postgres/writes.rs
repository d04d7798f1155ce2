//! Every write of the PostgreSQL store. Each one changes `tasks`, records
//! the change in `task_changes` and announces it with `pg_notify` in the same
//! transaction (most in one statement), then reports it to this process's
//! feed once committed. Semantics mirror the embedded store's writer.

use std::{
    sync::{Arc, LazyLock},
    time::{Duration, SystemTime},
};

use sqlx::{
    Postgres, Row,
    postgres::{PgArguments, PgRow},
    query::Query,
};

use super::{
    Shared,
    admission::{self, Estimate},
    errors::{classify, is_ambiguous},
    publish::Change,
    schema::{self, ColumnArrays, Columns, micros},
};
use crate::{
    engine::task::{TaskId, TaskRecord},
    store::{ClaimRequest, CreateOutcome, SharedTask, StoreError, StoreResult},
};

/// Inserts with a taken idempotency key whose task vanished before it could
/// be read (deleted concurrently) are retried this often.
const CREATE_ATTEMPTS: usize = 8;
/// How long change rows are kept for replicas that must replay them.
pub const CHANGE_RETENTION: Duration = Duration::from_secs(5 * 60);
/// Least time between two prunings of the change table by one process.
const PRUNE_INTERVAL: Duration = Duration::from_secs(10);
/// Change rows deleted per statement when pruning.
const PRUNE_BATCH: i64 = 5_000;

/// Records the rows of the `changed` CTE (id, revision, record) in the change
/// table and announces each with NOTIFY, carrying the record when it fits in
/// a payload (under 8,000 bytes); `$1` is this process's origin.
pub const LOG_CHANGES: &str = "logged AS (
        INSERT INTO task_changes (task_id, revision, record, origin)
        SELECT id, revision, record, $1 FROM changed
        RETURNING task_id, revision, record
    )
    SELECT logged.task_id FROM logged,
        pg_notify('vow_changes',
            $1 || ':' || encode(logged.task_id, 'hex') || ':' || logged.revision::text
            || CASE WHEN octet_length(logged.record) <= 7000
                    THEN ':' || convert_from(logged.record, 'UTF8') ELSE '' END
        ) AS notified";

pub const COLUMNS: &str = "id, kind, state, priority, created_at, due_at, deadline, \
    lease_expires_at, lease_token, expires_at, revision, idempotency_key, record, namespace";

/// Every column but the id, from the input row `i` of a batched update.
pub const SET_FROM_INPUT: &str = "kind = i.kind, state = i.state, priority = i.priority, \
    created_at = i.created_at, due_at = i.due_at, deadline = i.deadline, \
    lease_expires_at = i.lease_expires_at, lease_token = i.lease_token, \
    expires_at = i.expires_at, revision = i.revision, \
    idempotency_key = i.idempotency_key, record = i.record";

/// Replaces many rows (locked by the caller) from column arrays.
static REPLACE_ROWS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "WITH input AS (
            SELECT * FROM unnest($2::BYTEA[], $3::TEXT[], $4::SMALLINT[], $5::INTEGER[], $6::BIGINT[],
                $7::BIGINT[], $8::BIGINT[], $9::BIGINT[], $10::BIGINT[], $11::BIGINT[], $12::BIGINT[],
                $13::TEXT[], $14::BYTEA[], $15::TEXT[]) AS i({COLUMNS})
        ), changed AS (
            UPDATE tasks t SET {SET_FROM_INPUT}
            FROM input i WHERE t.id = i.id
            RETURNING t.id, t.revision, t.record
        ), {LOG_CHANGES}"
    )
});

/// Deletes one task; returns the revision it had.
const DELETE: &str = "WITH deleted AS (
        DELETE FROM tasks WHERE id = $2 RETURNING id, revision
    ), logged AS (
        INSERT INTO task_changes (task_id, revision, record, origin)
        SELECT id, NULL, NULL, $1 FROM deleted RETURNING task_id
    )
    SELECT deleted.revision FROM deleted JOIN logged ON logged.task_id = deleted.id,
        pg_notify('vow_changes', $1 || ':' || encode(deleted.id, 'hex') || ':deleted') AS notified";

/// Deletes up to `$3` tasks whose retention ended by `$2`, skipping rows
/// another replica is deleting; returns each with its expiry and revision.
const DELETE_EXPIRED: &str = "WITH doomed AS (
        SELECT id FROM tasks WHERE expires_at <= $2
        ORDER BY expires_at, id LIMIT $3 FOR UPDATE SKIP LOCKED
    ), deleted AS (
        DELETE FROM tasks t USING doomed WHERE t.id = doomed.id
        RETURNING t.id, t.expires_at, t.revision
    ), logged AS (
        INSERT INTO task_changes (task_id, revision, record, origin)
        SELECT id, NULL, NULL, $1 FROM deleted RETURNING task_id
    )
    SELECT deleted.id, deleted.expires_at, deleted.revision
    FROM deleted JOIN logged ON logged.task_id = deleted.id,
        pg_notify('vow_changes', $1 || ':' || encode(deleted.id, 'hex') || ':deleted') AS notified";

/// Claims up to `$2` tasks due by `$1` of the kinds `$3`, of no namespace
/// of `$4` (those at their running quota): each kind read in
/// its claim index's order (so a long queue of one kind is never sorted),
/// then merged. Rows locked but not taken are released at commit.
const CLAIM: &str = "SELECT due.record, nextval('task_fencing_tokens') AS token FROM (
        SELECT t.record, t.priority, t.created_at, t.id
        FROM unnest($3::TEXT[]) AS k(kind)
        CROSS JOIN LATERAL (
            SELECT record, priority, created_at, id FROM tasks
            WHERE kind = k.kind AND due_at <= $1 AND NOT (namespace = ANY($4::TEXT[]))
            ORDER BY priority DESC, created_at, id
            LIMIT $2 FOR UPDATE SKIP LOCKED
        ) AS t
        ORDER BY t.priority DESC, t.created_at, t.id
        LIMIT $2
    ) AS due
    ORDER BY due.priority DESC, due.created_at, due.id";

/// [`CLAIM`] of a worker, within its namespace `$5` (read in that
/// namespace's part of the claim index).
const CLAIM_IN_NAMESPACE: &str = "SELECT due.record, nextval('task_fencing_tokens') AS token FROM (
        SELECT t.record, t.priority, t.created_at, t.id
        FROM unnest($3::TEXT[]) AS k(kind)
        CROSS JOIN LATERAL (
            SELECT record, priority, created_at, id FROM tasks
            WHERE namespace = $5 AND kind = k.kind AND due_at <= $1
                AND NOT (namespace = ANY($4::TEXT[]))
            ORDER BY priority DESC, created_at, id
            LIMIT $2 FOR UPDATE SKIP LOCKED
        ) AS t
        ORDER BY t.priority DESC, t.created_at, t.id
        LIMIT $2
    ) AS due
    ORDER BY due.priority DESC, due.created_at, due.id";

type PgQuery<'q> = Query<'q, Postgres, PgArguments>;

/// Binds `$2..$15` to column arrays.
pub fn bind_rows(query: PgQuery<'_>, rows: ColumnArrays) -> PgQuery<'_> {
    query
        .bind(rows.id)
        .bind(rows.kind)
        .bind(rows.state)
        .bind(rows.priority)
        .bind(rows.created_at)
        .bind(rows.due_at)
        .bind(rows.deadline)
        .bind(rows.lease_expires_at)
        .bind(rows.lease_token)
        .bind(rows.expires_at)
        .bind(rows.revision)
        .bind(rows.idempotency_key)
        .bind(rows.record)
        .bind(rows.namespace)
}

/// Replaces rows the transaction holds locked, logging and announcing them.
async fn replace_rows(
    connection: &mut sqlx::PgConnection,
    origin: &str,
    tasks: &[SharedTask],
) -> StoreResult<()> {
    let mut rows = ColumnArrays::default();
    for task in tasks {
        rows.push(Columns::of(task)?);
    }
    bind_rows(sqlx::query(&REPLACE_ROWS).bind(origin.to_owned()), rows)
        .fetch_all(&mut *connection)
        .await
        .map_err(classify)?;
    Ok(())
}

/// Checks `max_queued` against this process's estimate, counting exactly
/// only near the limit (see [`admission`]).
async fn admit(shared: &Shared, limit: usize) -> StoreResult<()> {
    let estimate = match shared.admission.estimate() {
        Estimate::Fresh(estimate) => estimate,
        Estimate::Refresh => match count_queued(shared, limit).await {
            Ok(counted) => {
                shared.admission.counted(counted);
                counted
            }
            Err(error) => {
                shared.admission.refresh_failed();
                return Err(error);
            }
        },
    };
    if estimate + admission::margin(limit) < limit {
        return Ok(());
    }
    if count_queued(shared, limit).await? >= limit {
        return Err(StoreError::QueueFull { limit });
    }
    Ok(())
}

/// Claimable tasks, counted up to `limit`.
async fn count_queued(shared: &Shared, limit: usize) -> StoreResult<usize> {
    let counted: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT 1 FROM tasks WHERE due_at IS NOT NULL LIMIT $1) AS queued",
    )
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_one(&shared.pool)
    .await
    .map_err(classify)?;
    Ok(counted as usize)
}

pub async fn create(
    shared: Arc<Shared>,
    task: TaskRecord,
    max_queued: Option<usize>,
) -> StoreResult<CreateOutcome> {
    if let Some(limit) = max_queued
        && task.state.is_claimable()
        && let Err(full) = admit(&shared, limit).await
    {
        // A retry of a submit that was accepted is answered as the first
        // was, however full the queue is now.
        if let StoreError::QueueFull { .. } = full
            && let Some(existing) = existing_for_key(&shared, &task).await?
        {
            return existing;
        }
        return Err(full);
    }
    let task = Arc::new(task);
    for _ in 0..CREATE_ATTEMPTS {
        if shared.batcher.insert(task.clone()).await? {
            if task.state.is_claimable() {
                shared.admission.created();
            }
            return Ok(CreateOutcome::Created(task));
        }
        // This very insert, run again after its answer was lost, finds
        // its own committed change: it was created.
        if inserted_before(&shared, &task).await? {
            // Its change may not have reached this replica's feed.
            shared.unsettled.add([task.id]);
            if task.state.is_claimable() {
                shared.admission.created();
            }
            return Ok(CreateOutcome::Created(task));
        }
        // Otherwise only a taken idempotency key makes the insert do nothing.
        if task.idempotency_key.is_none() {
            return Err(StoreError::Internal("a task insert did nothing".into()));
        }
        if let Some(existing) = existing_for_key(&shared, &task).await? {
            return existing;
        }
    }
    Err(StoreError::Unavailable(
        "the idempotency key is being reused concurrently".into(),
    ))
}

/// Whether this replica committed the insert of exactly this record (the
/// change table says so, whatever the row became since).
async fn inserted_before(shared: &Shared, task: &TaskRecord) -> StoreResult<bool> {
    let record = schema::encode(task)?;
    let committed = super::settle::committed(
        &shared.pool,
        &shared.origin,
        &[(task.id, task.revision, record.as_slice())],
    )
    .await?;
    Ok(committed.contains(&task.id))
}

/// What a create answers when its idempotency key is taken: the task that
/// holds it, or a refusal if that task came from another request. `None`
/// when no task holds the key (or the task has none).
async fn existing_for_key(
    shared: &Shared,
    task: &TaskRecord,
) -> StoreResult<Option<StoreResult<CreateOutcome>>> {
    let Some(key) = &task.idempotency_key else {
        return Ok(None);
    };
    let existing = sqlx::query(
        "SELECT record, lease_expires_at FROM tasks WHERE namespace = $1 AND idempotency_key = $2",
    )
    .bind(task.namespace.to_string())
    .bind(key)
    .fetch_optional(&shared.pool)
    .await
    .map_err(classify)?;
    let Some(existing) = existing else {
        return Ok(None);
    };
    let existing = schema::record_of(&existing)?;
    if existing.request_fingerprint != task.request_fingerprint {
        return Ok(Some(Err(StoreError::IdempotencyMismatch {
            existing: existing.id,
        })));
    }
    Ok(Some(Ok(CreateOutcome::Existing(existing))))
}

pub async fn update(
    shared: Arc<Shared>,
    task: TaskRecord,
    expected_revision: u64,
) -> StoreResult<SharedTask> {
    let grows = task.revision > expected_revision;
    if grows {
        let task = Arc::new(task);
        if shared
            .batcher
            .update(task.clone(), expected_revision)
            .await?
        {
            return Ok(task);
        }
        return update_carefully(&shared, TaskRecord::clone(&task), expected_revision).await;
    }
    update_carefully(&shared, task, expected_revision).await
}

/// The update path that reads the stored row under its lock: reports a
/// missing task or a conflict, and keeps a renewed lease expiry.
async fn update_carefully(
    shared: &Shared,
    mut task: TaskRecord,
    expected_revision: u64,
) -> StoreResult<SharedTask> {
    let grows = task.revision > expected_revision;
    let mut transaction = shared.pool.begin().await.map_err(classify)?;
    let stored = sqlx::query("SELECT record, lease_expires_at FROM tasks WHERE id = $1 FOR UPDATE")
        .bind(task.id.to_bytes().to_vec())
        .fetch_optional(&mut *transaction)
        .await
        .map_err(classify)?;
    let Some(stored) = stored else {
        return Err(StoreError::NotFound);
    };
    let stored = schema::record_of(&stored)?;
    if stored.revision != expected_revision || !grows {
        return Err(StoreError::RevisionConflict);
    }
    if let (Some(stored_lease), Some(lease)) = (&stored.lease, &mut task.lease)
        && stored_lease.token == lease.token
    {
        lease.expires_at = stored_lease.expires_at;
    }
    let task = Arc::new(task);
    replace_rows(
        &mut transaction,
        &shared.origin,
        std::slice::from_ref(&task),
    )
    .await?;
    commit(shared, transaction, [task.id]).await?;
    shared
        .publisher
        .publish_local(vec![Change::Changed(task.clone())])
        .await;
    Ok(task)
}

/// Commits a transaction that changed `ids`; if its answer is lost, the
/// tasks are settled later (see [`super::settle`]).
async fn commit(
    shared: &Shared,
    transaction: sqlx::Transaction<'_, Postgres>,
    ids: impl IntoIterator<Item = TaskId>,
) -> StoreResult<()> {
    transaction.commit().await.map_err(|error| {
        if is_ambiguous(&error) {
            shared.unsettled.add(ids);
        }
        classify(error)
    })
}

pub async fn delete(shared: Arc<Shared>, id: TaskId) -> StoreResult<bool> {
    let deleted = sqlx::query(DELETE)
        .bind(shared.origin.to_string())
        .bind(id.to_bytes().to_vec())
        .fetch_optional(&shared.pool)
        .await
        .map_err(|error| {
            if is_ambiguous(&error) {
                shared.unsettled.add_deletion(id);
            }
            classify(error)
        })?;
    let Some(deleted) = deleted else {
        return Ok(false);
    };
    let revision: i64 = deleted.try_get("revision").map_err(classify)?;
    shared
        .publisher
        .publish_local(vec![Change::Deleted {
            id,
            last_revision: Some(revision as u64),
        }])
        .await;
    Ok(true)
}

pub async fn claim_due(shared: Arc<Shared>, request: ClaimRequest) -> StoreResult<Vec<SharedTask>> {
    if request.limit == 0 {
        return Ok(Vec::new());
    }
    let mut transaction = shared.pool.begin().await.map_err(classify)?;
    let claim = match &request.namespace {
        None => sqlx::query(CLAIM),
        Some(_) => sqlx::query(CLAIM_IN_NAMESPACE),
    }
    .bind(micros(request.now))
    .bind(i64::try_from(request.limit).unwrap_or(i64::MAX))
    .bind(request.kinds.to_vec())
    .bind(
        request
            .excluded_namespaces
            .iter()
            .map(|namespace| namespace.to_string())
            .collect::<Vec<_>>(),
    );
    let claim = match &request.namespace {
        None => claim,
        Some(namespace) => claim.bind(namespace.to_string()),
    };
    let due: Vec<PgRow> = claim.fetch_all(&mut *transaction).await.map_err(classify)?;
    if due.is_empty() {
        transaction.rollback().await.map_err(classify)?;
        return Ok(Vec::new());
    }
    // Tokens in claim order, whatever order the database drew them in.
    let mut tokens = due
        .iter()
        .map(|row| row.try_get::<i64, _>("token").map(|token| token as u64))
        .collect::<Result<Vec<_>, _>>()
        .map_err(classify)?;
    tokens.sort_unstable();
    let mut claimed = Vec::with_capacity(due.len());
    for (row, token) in due.iter().zip(tokens) {
        let mut task = schema::owned_record_of(row)?;
        request.claim(&mut task, token);
        claimed.push(Arc::new(task));
    }
    replace_rows(&mut transaction, &shared.origin, &claimed).await?;
    commit(&shared, transaction, claimed.iter().map(|task| task.id)).await?;
    shared
        .publisher
        .publish_local(claimed.iter().cloned().map(Change::Changed).collect())
        .await;
    Ok(claimed)
}

/// Renews a lease in its column only: the record keeps the expiry of the
/// claim, and reads take the renewed one from the column.
pub async fn extend_lease(
    shared: Arc<Shared>,
    id: TaskId,
    token: u64,
    expires_at: SystemTime,
    now: SystemTime,
) -> StoreResult<()> {
    let renewed = sqlx::query(
        "UPDATE tasks SET lease_expires_at = $3
         WHERE id = $1 AND lease_token = $2 AND lease_expires_at > $4",
    )
    .bind(id.to_bytes().to_vec())
    .bind(token as i64)
    .bind(micros(expires_at))
    .bind(micros(now))
    .execute(&shared.pool)
    .await
    .map_err(classify)?;
    if renewed.rows_affected() == 1 {
        return Ok(());
    }
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM tasks WHERE id = $1")
        .bind(id.to_bytes().to_vec())
        .fetch_optional(&shared.pool)
        .await
        .map_err(classify)?;
    Err(match exists {
        Some(_) => StoreError::StaleLease,
        None => StoreError::NotFound,
    })
}

/// Records that a worker polled for `kinds` at `at`.
pub async fn record_poll(
    shared: Arc<Shared>,
    kinds: Vec<String>,
    at: SystemTime,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO kinds (name, last_poll_at) SELECT unnest($1::TEXT[]), $2
         ON CONFLICT (name) DO UPDATE SET last_poll_at = GREATEST(kinds.last_poll_at, excluded.last_poll_at)",
    )
    .bind(kinds)
    .bind(micros(at))
    .execute(&shared.pool)
    .await
    .map_err(classify)?;
    Ok(())
}

pub async fn delete_expired(
    shared: Arc<Shared>,
    now: SystemTime,
    limit: usize,
) -> StoreResult<Vec<TaskId>> {
    let rows = sqlx::query(DELETE_EXPIRED)
        .bind(shared.origin.to_string())
        .bind(micros(now))
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&shared.pool)
        .await
        .map_err(classify)?;
    let mut deleted = Vec::with_capacity(rows.len());
    for row in &rows {
        let expires_at: i64 = row.try_get("expires_at").map_err(classify)?;
        let revision: i64 = row.try_get("revision").map_err(classify)?;
        deleted.push((expires_at, schema::task_id_of(row, "id")?, revision as u64));
    }
    // Oldest expiry first, as the sweep selected them.
    deleted.sort_unstable();
    if !deleted.is_empty() {
        let changes = deleted
            .iter()
            .map(|&(_, id, revision)| Change::Deleted {
                id,
                last_revision: Some(revision),
            })
            .collect();
        shared.publisher.publish_local(changes).await;
    }
    let deleted: Vec<TaskId> = deleted.into_iter().map(|(_, id, _)| id).collect();
    prune_changes(&shared).await;
    Ok(deleted)
}

/// Deletes change rows older than [`CHANGE_RETENTION`] (by the database's
/// clock), at most once per [`PRUNE_INTERVAL`] in this process.
async fn prune_changes(shared: &Shared) {
    {
        let mut pruned_at = shared
            .pruned_at
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if pruned_at.is_some_and(|at| at.elapsed() < PRUNE_INTERVAL) {
            return;
        }
        *pruned_at = Some(std::time::Instant::now());
    }
    loop {
        let pruned = sqlx::query(
            "DELETE FROM task_changes WHERE seq IN (
                SELECT seq FROM task_changes
                WHERE changed_at < (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT - $1
                ORDER BY changed_at LIMIT $2
            )",
        )
        .bind(CHANGE_RETENTION.as_micros() as i64)
        .bind(PRUNE_BATCH)
        .execute(&shared.pool)
        .await;
        match pruned {
            Ok(done) if (done.rows_affected() as i64) < PRUNE_BATCH => return,
            Ok(_) => tokio::task::yield_now().await,
            Err(error) => {
                tracing::warn!(%error, "cannot prune the change table; retrying later");
                return;
            }
        }
    }
}
