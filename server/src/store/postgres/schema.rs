//! The PostgreSQL schema: versioned migrations embedded in the binary, and how
//! a task record maps onto a row (the whole record as JSON, plus the columns
//! that indexes need), mirroring the embedded store.

use std::{
    borrow::Cow,
    time::{Duration, SystemTime},
};

use futures::future::BoxFuture;
use sqlx::{Row, postgres::PgRow};
use sqlx_core::{
    error::BoxDynError,
    migrate::{Migration, MigrationSource, MigrationType, Migrator},
};

use super::errors;
use crate::{
    engine::task::{TaskId, TaskRecord, TaskState},
    store::{SharedTask, StoreError, StoreResult},
};

/// The schema versions, oldest first. Applied ones must never change: the
/// migrator refuses a database whose applied scripts differ from these.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "tasks", include_str!("migrations/0001_tasks.sql")),
    (2, "kinds", include_str!("migrations/0002_kinds.sql")),
    (
        3,
        "namespaces",
        include_str!("migrations/0003_namespaces.sql"),
    ),
];

/// The migrations compiled into this build (what `sqlx::migrate!` would
/// embed), resolved without touching the file system.
#[derive(Debug)]
struct Embedded;

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|&(version, description, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(description),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// The migrator of this build. It holds a PostgreSQL advisory lock while it
/// runs, so replicas starting at once migrate one after the other.
pub async fn migrator() -> Result<Migrator, sqlx_core::migrate::MigrateError> {
    Migrator::new(Embedded).await
}

/// Microseconds since the epoch, the unit of every time column.
pub fn micros(time: SystemTime) -> i64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| {
            i64::try_from(since.as_micros()).unwrap_or(i64::MAX)
        })
}

/// The inverse of [`micros`].
pub fn from_micros(value: i64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_micros(value.max(0) as u64)
}

pub fn state_code(state: TaskState) -> i16 {
    match state {
        TaskState::Queued => 1,
        TaskState::Running => 2,
        TaskState::RetryWait => 3,
        TaskState::Succeeded => 4,
        TaskState::Failed => 5,
        TaskState::Cancelled => 6,
    }
}

/// The columns of a row, derived from its record.
#[derive(Clone)]
pub struct Columns {
    pub id: Vec<u8>,
    pub kind: String,
    pub state: i16,
    pub priority: i32,
    pub created_at: i64,
    pub due_at: Option<i64>,
    pub deadline: Option<i64>,
    pub lease_expires_at: Option<i64>,
    pub lease_token: Option<i64>,
    pub expires_at: Option<i64>,
    pub revision: i64,
    pub idempotency_key: Option<String>,
    pub record: Vec<u8>,
    pub namespace: String,
}

impl Columns {
    pub fn of(task: &TaskRecord) -> StoreResult<Self> {
        let running_lease = task
            .lease
            .as_ref()
            .filter(|_| task.state == TaskState::Running);
        Ok(Self {
            id: task.id.to_bytes().to_vec(),
            kind: task.kind.clone(),
            state: state_code(task.state),
            priority: task.priority,
            created_at: micros(task.created_at),
            due_at: task.due_at().map(micros),
            deadline: task
                .deadline
                .filter(|_| task.state.is_claimable())
                .map(micros),
            lease_expires_at: running_lease.map(|lease| micros(lease.expires_at)),
            lease_token: running_lease.map(|lease| lease.token as i64),
            expires_at: task.expires_at.filter(|_| task.is_terminal()).map(micros),
            revision: task.revision as i64,
            idempotency_key: task.idempotency_key.clone(),
            record: encode(task)?,
            namespace: task.namespace.to_string(),
        })
    }
}

/// Column-wise arrays of many rows, bound to `unnest(...)` in one statement.
#[derive(Default)]
pub struct ColumnArrays {
    pub id: Vec<Vec<u8>>,
    pub kind: Vec<String>,
    pub state: Vec<i16>,
    pub priority: Vec<i32>,
    pub created_at: Vec<i64>,
    pub due_at: Vec<Option<i64>>,
    pub deadline: Vec<Option<i64>>,
    pub lease_expires_at: Vec<Option<i64>>,
    pub lease_token: Vec<Option<i64>>,
    pub expires_at: Vec<Option<i64>>,
    pub revision: Vec<i64>,
    pub idempotency_key: Vec<Option<String>>,
    pub record: Vec<Vec<u8>>,
    pub namespace: Vec<String>,
}

impl ColumnArrays {
    pub fn push(&mut self, columns: Columns) {
        self.id.push(columns.id);
        self.kind.push(columns.kind);
        self.state.push(columns.state);
        self.priority.push(columns.priority);
        self.created_at.push(columns.created_at);
        self.due_at.push(columns.due_at);
        self.deadline.push(columns.deadline);
        self.lease_expires_at.push(columns.lease_expires_at);
        self.lease_token.push(columns.lease_token);
        self.expires_at.push(columns.expires_at);
        self.revision.push(columns.revision);
        self.idempotency_key.push(columns.idempotency_key);
        self.record.push(columns.record);
        self.namespace.push(columns.namespace);
    }
}

/// The record as stored in the `record` columns.
pub fn encode(task: &TaskRecord) -> StoreResult<Vec<u8>> {
    serde_json::to_vec(task)
        .map_err(|error| StoreError::Internal(format!("cannot encode a task: {error}")))
}

/// Decodes a `record` column.
pub fn decode(bytes: &[u8]) -> StoreResult<TaskRecord> {
    serde_json::from_slice(bytes).map_err(|error| {
        tracing::error!(%error, "a stored task record does not decode");
        StoreError::Internal("a stored task record does not decode".into())
    })
}

/// Decodes the `record` column of a row.
pub fn record_of(row: &PgRow) -> StoreResult<SharedTask> {
    owned_record_of(row).map(SharedTask::new)
}

/// Decodes the `record` column of a row, for a caller that changes it. A
/// row of `tasks` read with its `lease_expires_at` column gets the lease's
/// expiry from there: renewals write only that column.
pub fn owned_record_of(row: &PgRow) -> StoreResult<TaskRecord> {
    let bytes: &[u8] = row.try_get("record").map_err(errors::classify)?;
    let mut task = decode(bytes)?;
    if let Ok(Some(renewed)) = row.try_get::<Option<i64>, _>("lease_expires_at")
        && let Some(lease) = task.lease.as_mut()
    {
        lease.expires_at = from_micros(renewed);
    }
    Ok(task)
}

/// Reads a 16-byte task id column.
pub fn task_id_of(row: &PgRow, column: &str) -> StoreResult<TaskId> {
    let bytes: &[u8] = row.try_get(column).map_err(errors::classify)?;
    let bytes: [u8; 16] = bytes
        .try_into()
        .map_err(|_| StoreError::Internal("a stored task id is malformed".into()))?;
    Ok(TaskId::from_bytes(bytes))
}
