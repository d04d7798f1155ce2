//! Follows the changes other replicas commit: a dedicated connection LISTENs
//! on `vow_changes`; each notification (`<origin>:<task id>:<revision or
//! "deleted">`, then `:<record JSON>` when the record fits in a payload; sent
//! at commit, in commit order) of another origin is delivered through the
//! [`Publisher`], which reads from the change table what was not carried.
//!
//! The connection is checked every [`PING_INTERVAL`]; the database clock
//! read then marks how far this replica is known to be in step. When the
//! connection drops, notifications are lost, so after reconnecting (with
//! backoff) the listener replays every change of other origins recorded
//! since shortly before that mark. Replay is exact as long as the change
//! table still holds those rows (they are pruned after
//! [`super::writes::CHANGE_RETENTION`]); an outage longer than that loses events,
//! and waiters then see the current state on their next read.

use std::{sync::Arc, time::Duration};

use sqlx::{
    PgPool,
    postgres::{PgListener, PgNotification},
};
use tokio_util::sync::CancellationToken;

use super::publish::{Notice, Publisher};
use crate::engine::task::{TaskId, TaskRecord};

/// The channel every change is announced on.
pub const CHANNEL: &str = "vow_changes";
/// How often an idle listening connection is checked.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long a check may take before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// Replay starts this long before the last check, for transactions that
/// wrote their change row before it but committed after it.
const REPLAY_MARGIN: Duration = Duration::from_secs(30);
/// Most notifications handled in one batch (one read of the change table).
const BATCH: usize = 512;
/// Rows read per replay query.
const REPLAY_PAGE: i64 = 1_000;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

const DATABASE_NOW: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT";

/// Parses a notification payload, or `None` if it is not one of ours. A
/// record that does not decode is left to be read from the change table.
pub fn parse(payload: &str) -> Option<(&str, Notice)> {
    let mut parts = payload.splitn(4, ':');
    let origin = parts.next()?;
    let task_id: TaskId = parts.next()?.parse().ok()?;
    let revision = match parts.next()? {
        "deleted" => None,
        revision => Some(revision.parse().ok()?),
    };
    let record = parts
        .next()
        .and_then(|json| serde_json::from_str::<TaskRecord>(json).ok())
        .filter(|record| record.id == task_id && Some(record.revision) == revision)
        .map(Arc::new);
    Some((
        origin,
        Notice {
            task_id,
            revision,
            record,
        },
    ))
}

/// A listening connection, and the database time read once LISTEN took effect.
pub struct Listening {
    listener: PgListener,
    since: i64,
}

/// Follows other replicas' changes until `stop` fires, starting on `first`
/// (opened by the caller, so that nothing committed after the store opened
/// goes unheard).
pub async fn run(
    first: Listening,
    listen_pool: PgPool,
    pool: PgPool,
    origin: Arc<str>,
    publisher: Arc<Publisher>,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    // Database time (micros) up to which this replica is known to be in step.
    let mut in_step_at = first.since;
    let mut next = Some(first);
    let mut warned = false;
    loop {
        let reconnected = next.is_none();
        let connected = match next.take() {
            Some(first) => Ok(first),
            None => tokio::select! {
                connected = connect(&listen_pool) => connected,
                () = stop.cancelled() => return,
            },
        };
        let mut listening = match connected {
            Ok(listening) => listening,
            Err(error) => {
                if !warned {
                    tracing::warn!(%error, "cannot listen for other replicas' changes; retrying");
                    warned = true;
                }
                if pause(&mut backoff, &stop).await {
                    return;
                }
                continue;
            }
        };
        if reconnected {
            // What was committed while nobody listened was not heard.
            let replay_from = in_step_at - REPLAY_MARGIN.as_micros() as i64;
            match replay(&pool, &origin, &publisher, replay_from).await {
                Ok(replayed) => tracing::info!(
                    replayed,
                    "listening again for other replicas' changes; replayed what was missed"
                ),
                Err(error) => {
                    tracing::warn!(%error, "cannot replay missed changes; retrying");
                    if pause(&mut backoff, &stop).await {
                        return;
                    }
                    continue;
                }
            }
        }
        backoff = FIRST_BACKOFF;
        warned = false;
        in_step_at = in_step_at.max(listening.since);
        if follow(
            &mut listening.listener,
            &origin,
            &publisher,
            &mut in_step_at,
            &stop,
        )
        .await
        {
            return;
        }
        tracing::warn!("lost the connection listening for other replicas' changes; reconnecting");
    }
}

/// Sleeps for the backoff (doubling it); true if `stop` fired meanwhile.
async fn pause(backoff: &mut Duration, stop: &CancellationToken) -> bool {
    let stopped = tokio::select! {
        () = tokio::time::sleep(*backoff) => false,
        () = stop.cancelled() => true,
    };
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    stopped
}

/// Opens the listening connection; returns it with the database time read
/// after LISTEN took effect.
pub async fn connect(listen_pool: &PgPool) -> Result<Listening, sqlx::Error> {
    let mut listener = PgListener::connect_with(listen_pool).await?;
    // A lost connection ends `follow`; reconnecting is `run`'s job.
    listener.eager_reconnect(false);
    listener.listen(CHANNEL).await?;
    let since: i64 = sqlx::query_scalar(DATABASE_NOW)
        .fetch_one(&mut listener)
        .await?;
    Ok(Listening { listener, since })
}

/// Delivers notifications until the connection is lost (false) or `stop`
/// fires (true).
async fn follow(
    listener: &mut PgListener,
    origin: &str,
    publisher: &Publisher,
    in_step_at: &mut i64,
    stop: &CancellationToken,
) -> bool {
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let received = tokio::select! {
            received = listener.try_recv() => received,
            _ = ping.tick() => {
                let checked = tokio::time::timeout(
                    PING_TIMEOUT,
                    sqlx::query_scalar::<_, i64>(DATABASE_NOW).fetch_one(&mut *listener),
                )
                .await;
                match checked {
                    Ok(Ok(now)) => *in_step_at = now,
                    _ => return false,
                }
                // Notifications that arrived during the check wait in the buffer.
                let mut batch = Vec::new();
                while batch.len() < BATCH
                    && let Some(notification) = listener.next_buffered()
                {
                    batch.push(notification);
                }
                deliver(&batch, origin, publisher).await;
                continue;
            }
            () = stop.cancelled() => return true,
        };
        let Ok(Some(first)) = received else {
            return false;
        };
        let mut batch = vec![first];
        while batch.len() < BATCH
            && let Some(notification) = listener.next_buffered()
        {
            batch.push(notification);
        }
        deliver(&batch, origin, publisher).await;
    }
}

async fn deliver(batch: &[PgNotification], origin: &str, publisher: &Publisher) {
    let notices: Vec<Notice> = batch
        .iter()
        .filter_map(|notification| parse(notification.payload()))
        .filter(|(from, _)| *from != origin)
        .map(|(_, notice)| notice)
        .collect();
    if !notices.is_empty() {
        publisher.publish_remote(notices).await;
    }
}

/// Delivers every change of other origins recorded since `since` (database
/// micros); returns how many rows were read. Rows come in `seq` order, which
/// is commit order per task: every change holds its task's row lock when it
/// takes its `seq`.
async fn replay(
    pool: &PgPool,
    origin: &str,
    publisher: &Publisher,
    since: i64,
) -> Result<usize, crate::store::StoreError> {
    let mut after_seq = 0_i64;
    let mut replayed = 0;
    loop {
        let rows = sqlx::query(
            "SELECT seq, task_id, revision, record FROM task_changes
             WHERE changed_at >= $1 AND seq > $2 AND origin <> $3
             ORDER BY seq LIMIT $4",
        )
        .bind(since)
        .bind(after_seq)
        .bind(origin)
        .bind(REPLAY_PAGE)
        .fetch_all(pool)
        .await
        .map_err(super::errors::classify)?;
        let mut changes = Vec::with_capacity(rows.len());
        for row in &rows {
            after_seq = sqlx::Row::try_get(row, "seq").map_err(super::errors::classify)?;
            changes.push(super::publish::change_of(row)?);
        }
        publisher.publish_replayed(&changes);
        replayed += rows.len();
        if (rows.len() as i64) < REPLAY_PAGE {
            return Ok(replayed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_parse() {
        let id = TaskId::generate();
        assert_eq!(
            parse(&format!("a1b2:{id}:7")),
            Some((
                "a1b2",
                Notice {
                    task_id: id,
                    revision: Some(7),
                    record: None,
                }
            ))
        );
        assert_eq!(
            parse(&format!("a1b2:{id}:deleted")),
            Some((
                "a1b2",
                Notice {
                    task_id: id,
                    revision: None,
                    record: None,
                }
            ))
        );
        // A record that is not of this revision is not trusted.
        assert_eq!(
            parse(&format!("a1b2:{id}:7:{{\"not\":\"a record\"}}"))
                .map(|(_, notice)| notice.record),
            Some(None)
        );
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse(&format!("a1b2:{id}:x")), None);
    }
}
