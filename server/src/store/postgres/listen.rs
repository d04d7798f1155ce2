//! Follows the changes replicas commit: a dedicated connection LISTENs on
//! `vow_changes`; each notification (`<origin>:<task id>:<revision or
//! "deleted">`, then `:<record JSON>` when the record fits in a payload; sent
//! at commit, in commit order) is delivered through the [`Publisher`], which
//! reads from the change table what was not carried. This replica's own
//! changes arrive too: those its writes already reported are skipped before
//! their record is decoded, and the rest (a write that committed but whose
//! answer was lost) are delivered like any other.
//!
//! The connection is checked every [`PING_INTERVAL`], each check bounded by
//! [`PING_TIMEOUT`]; the database clock read then marks how far this replica
//! is known to be in step. A connection that fails its check, or breaks, is
//! given up whatever state its socket is in: each connection has a pool of
//! its own, so one stuck in the kernel cannot hold the slot of the next.
//! While reconnecting (with backoff, each try bounded) the replica is deaf:
//! `vow_change_listener_deaf_seconds` says for how long, and the log says
//! since when. Once listening again it replays every change recorded since
//! shortly before the mark, its own included. Replay is exact as long as the
//! change table still holds those rows (they are pruned after
//! [`super::writes::CHANGE_RETENTION`]); after a longer outage every waiter
//! and watcher of this replica is resynced from the store instead.

use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use sqlx::postgres::{PgConnectOptions, PgListener, PgNotification, PgPoolOptions};
use tokio_util::sync::CancellationToken;

use super::{
    publish::{Notice, Publisher},
    writes::CHANGE_RETENTION,
};
use crate::{
    engine::task::{TaskId, TaskRecord},
    telemetry::metrics::record,
};

/// The channel every change is announced on.
pub const CHANNEL: &str = "vow_changes";
/// How often an idle listening connection is checked.
const PING_INTERVAL: Duration = Duration::from_secs(1);
/// How long a check may take before the connection counts as lost.
const PING_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one try to open a listening connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Replay starts this long before the last check, for transactions that
/// wrote their change row before it but committed after it.
const REPLAY_MARGIN: Duration = Duration::from_secs(30);
/// Most notifications handled in one batch (one read of the change table).
const BATCH: usize = 512;
/// Rows read per replay query.
const REPLAY_PAGE: i64 = 1_000;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(2);

const DATABASE_NOW: &str = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::BIGINT";

/// The parts of a notification payload; the record is decoded only when
/// the change is news to this replica.
#[derive(Debug, PartialEq)]
pub struct Announcement<'a> {
    pub origin: &'a str,
    pub task_id: TaskId,
    /// `None` for a deletion.
    pub revision: Option<u64>,
    record_json: Option<&'a str>,
}

impl Announcement<'_> {
    /// The notice to deliver. A record that does not decode, or is not of
    /// the announced revision, is left to be read from the change table.
    pub fn into_notice(self) -> Notice {
        let record = self
            .record_json
            .and_then(|json| serde_json::from_str::<TaskRecord>(json).ok())
            .filter(|record| record.id == self.task_id && Some(record.revision) == self.revision)
            .map(Arc::new);
        Notice {
            task_id: self.task_id,
            revision: self.revision,
            record,
        }
    }
}

/// Parses a notification payload, or `None` if it is not one of ours.
pub fn parse(payload: &str) -> Option<Announcement<'_>> {
    let mut parts = payload.splitn(4, ':');
    let origin = parts.next()?;
    let task_id: TaskId = parts.next()?.parse().ok()?;
    let revision = match parts.next()? {
        "deleted" => None,
        revision => Some(revision.parse().ok()?),
    };
    Some(Announcement {
        origin,
        task_id,
        revision,
        record_json: parts.next(),
    })
}

/// A listening connection, and the database time read once LISTEN took effect.
pub struct Listening {
    listener: PgListener,
    since: i64,
}

/// Follows every replica's changes until `stop` fires, starting on `first`
/// (opened by the caller, so that nothing committed after the store opened
/// goes unheard).
pub async fn run(
    first: Listening,
    connect_options: PgConnectOptions,
    pool: sqlx::PgPool,
    publisher: Arc<Publisher>,
    stop: CancellationToken,
) {
    let mut backoff = FIRST_BACKOFF;
    // Database time (micros) up to which this replica is known to be in step.
    let mut in_step_at = first.since;
    let mut next = Some(first);
    let mut deaf_since: Option<SystemTime> = None;
    loop {
        let connected = match next.take() {
            Some(first) => Ok(first),
            None => tokio::select! {
                connected = connect(&connect_options) => connected,
                () = stop.cancelled() => return,
            },
        };
        let mut listening = match connected {
            Ok(listening) => listening,
            Err(error) => {
                tracing::debug!(%error, "cannot listen for other replicas' changes yet");
                report_deaf(deaf_since);
                if pause(&mut backoff, &stop).await {
                    return;
                }
                continue;
            }
        };
        if let Some(since) = deaf_since {
            // What was committed while nobody listened was not heard.
            let outage = Duration::from_micros((listening.since - in_step_at).max(0) as u64);
            let replayed = if outage + REPLAY_MARGIN >= CHANGE_RETENTION {
                publisher.resync_all();
                Ok(None)
            } else {
                let replay_from = in_step_at - REPLAY_MARGIN.as_micros() as i64;
                replay(&pool, &publisher, replay_from).await.map(Some)
            };
            match replayed {
                Ok(replayed) => {
                    let deaf_for = since.elapsed().unwrap_or_default();
                    match replayed {
                        Some(replayed) => tracing::info!(
                            deaf_for = ?deaf_for,
                            replayed,
                            "listening to other replicas' changes again; replayed what was missed"
                        ),
                        None => tracing::warn!(
                            deaf_for = ?deaf_for,
                            "listening to other replicas' changes again; the outage outlasted the change table, so every waiter and watcher reads the store again"
                        ),
                    }
                }
                Err(error) => {
                    tracing::debug!(%error, "cannot replay missed changes yet");
                    report_deaf(deaf_since);
                    if pause(&mut backoff, &stop).await {
                        return;
                    }
                    continue;
                }
            }
        }
        record::listener_deaf(Duration::ZERO);
        backoff = FIRST_BACKOFF;
        in_step_at = in_step_at.max(listening.since);
        let ended = follow(&mut listening.listener, &publisher, &mut in_step_at, &stop).await;
        // A connection that failed its check may be stuck: dropping it
        // leaves its pool (and only that) waiting on the socket.
        drop(listening);
        match ended {
            FollowEnd::Stopped => return,
            FollowEnd::Lost(why) => {
                let since = SystemTime::now();
                deaf_since = Some(since);
                report_deaf(deaf_since);
                tracing::warn!(
                    deaf_since = %humantime::format_rfc3339_millis(since),
                    cause = why,
                    "deaf to other replicas' changes since the listening connection failed; reconnecting"
                );
            }
        }
    }
}

/// Publishes how long this replica has not been hearing changes (never
/// zero while deaf: zero means listening).
fn report_deaf(since: Option<SystemTime>) {
    if let Some(since) = since {
        let deaf_for = since.elapsed().unwrap_or_default();
        record::listener_deaf(deaf_for.max(Duration::from_millis(1)));
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

/// Opens a listening connection on a pool of its own, within
/// [`CONNECT_TIMEOUT`]; returns it with the database time read after
/// LISTEN took effect.
pub async fn connect(connect_options: &PgConnectOptions) -> Result<Listening, sqlx::Error> {
    let open = async {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .min_connections(0)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_lazy_with(connect_options.clone());
        let mut listener = PgListener::connect_with(&pool).await?;
        // A lost connection ends `follow`; reconnecting is `run`'s job.
        listener.eager_reconnect(false);
        listener.listen(CHANNEL).await?;
        let since: i64 = sqlx::query_scalar(DATABASE_NOW)
            .fetch_one(&mut listener)
            .await?;
        Ok(Listening { listener, since })
    };
    tokio::time::timeout(CONNECT_TIMEOUT, open)
        .await
        .unwrap_or(Err(sqlx::Error::PoolTimedOut))
}

/// Why following stopped.
enum FollowEnd {
    Stopped,
    Lost(&'static str),
}

/// Delivers notifications until the connection is lost or `stop` fires.
async fn follow(
    listener: &mut PgListener,
    publisher: &Publisher,
    in_step_at: &mut i64,
    stop: &CancellationToken,
) -> FollowEnd {
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
                    Ok(Err(_)) => return FollowEnd::Lost("the liveness check failed"),
                    Err(_) => return FollowEnd::Lost("the liveness check got no answer in time"),
                }
                // Notifications that arrived during the check wait in the buffer.
                let mut batch = Vec::new();
                while batch.len() < BATCH
                    && let Some(notification) = listener.next_buffered()
                {
                    batch.push(notification);
                }
                deliver(&batch, publisher).await;
                continue;
            }
            () = stop.cancelled() => return FollowEnd::Stopped,
        };
        let Ok(Some(first)) = received else {
            return FollowEnd::Lost("the connection broke");
        };
        let mut batch = vec![first];
        while batch.len() < BATCH
            && let Some(notification) = listener.next_buffered()
        {
            batch.push(notification);
        }
        deliver(&batch, publisher).await;
    }
}

/// Delivers what a batch announces that this replica has not delivered
/// yet, whichever replica made it.
async fn deliver(batch: &[PgNotification], publisher: &Publisher) {
    let notices: Vec<Notice> = batch
        .iter()
        .filter_map(|notification| parse(notification.payload()))
        .filter(|announced| !publisher.is_delivered(announced.task_id, announced.revision))
        .map(Announcement::into_notice)
        .collect();
    if !notices.is_empty() {
        publisher.publish_remote(notices).await;
    }
}

/// Delivers every change recorded since `since` (database micros), this
/// replica's own included (a write whose answer was lost while nobody
/// listened is then heard; the publisher skips what was delivered); returns
/// how many rows were read. Rows come in `seq` order, which is commit order
/// per task: every change holds its task's row lock when it takes its `seq`.
async fn replay(
    pool: &sqlx::PgPool,
    publisher: &Publisher,
    since: i64,
) -> Result<usize, crate::store::StoreError> {
    let mut after_seq = 0_i64;
    let mut replayed = 0;
    loop {
        let rows = sqlx::query(
            "SELECT seq, task_id, revision, record FROM task_changes
             WHERE changed_at >= $1 AND seq > $2
             ORDER BY seq LIMIT $3",
        )
        .bind(since)
        .bind(after_seq)
        .bind(REPLAY_PAGE)
        .fetch_all(pool);
        let rows = super::errors::within_timeout(rows)
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
        let notice = |payload: &str| {
            parse(payload).map(|announced| (announced.origin.to_owned(), announced.into_notice()))
        };
        assert_eq!(
            notice(&format!("a1b2:{id}:7")),
            Some((
                "a1b2".to_owned(),
                Notice {
                    task_id: id,
                    revision: Some(7),
                    record: None,
                }
            ))
        );
        assert_eq!(
            notice(&format!("a1b2:{id}:deleted")),
            Some((
                "a1b2".to_owned(),
                Notice {
                    task_id: id,
                    revision: None,
                    record: None,
                }
            ))
        );
        // A record that is not of this revision is not trusted.
        assert_eq!(
            notice(&format!("a1b2:{id}:7:{{\"not\":\"a record\"}}"))
                .map(|(_, notice)| notice.record),
            Some(None)
        );
        assert_eq!(parse("garbage"), None);
        assert_eq!(parse(&format!("a1b2:{id}:x")), None);
    }
}
