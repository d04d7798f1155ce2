//! Background sweeps on a fixed period: fail waiting tasks whose deadline
//! passed, end attempts whose lease lapsed (through the retry policy), and
//! delete finished tasks whose retention ended, all in small batches so no
//! sweep holds the store long. At start, the in-process attempts of a
//! previous run of this store's only process are ended at once.

use std::time::{Duration, SystemTime};

use super::{Engine, Mutation, task::TaskState, transitions};
use crate::telemetry::{metrics::record, throttle};

/// Records handled per store call of a sweep.
const SWEEP_BATCH: usize = 256;
/// How often the kinds' last polls are read for their gauges.
const LAST_POLL_REFRESH: Duration = Duration::from_secs(5);

pub(super) async fn sweep_loop(engine: Engine) {
    if !engine.inner.config.shared_store
        && let Err(error) = end_previous_attempts(&engine).await
    {
        tracing::warn!(%error, "cannot end the attempts of the previous run yet; their leases will lapse");
    }
    let mut ticks = tokio::time::interval(engine.inner.config.sweep_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counted_kinds = Vec::new();
    let mut last_polls_read: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = engine.inner.shutdown.cancelled() => return,
        }
        if let Err(error) = sweep_once(&engine).await
            && let Some(suppressed) = throttle::admit("engine.sweep_failed")
        {
            tracing::warn!(%error, suppressed, "maintenance sweep failed; retrying next period");
        }
        // The queue depth per kind is what an autoscaler watches.
        match engine.inner.store.kind_counts().await {
            Ok(counts) => record::kind_counts(&counts, &mut counted_kinds),
            Err(error) => {
                if let Some(suppressed) = throttle::admit("engine.queue_depth_unread") {
                    tracing::warn!(%error, suppressed, "cannot read the queue depth");
                }
            }
        }
        if last_polls_read.is_none_or(|read| read.elapsed() >= LAST_POLL_REFRESH) {
            last_polls_read = Some(tokio::time::Instant::now());
            record_last_polls(&engine).await;
        }
    }
}

/// Sets how long ago a worker last polled for each remote kind (infinite
/// when none ever did): a kind nobody serves shows.
async fn record_last_polls(engine: &Engine) {
    let last_polls = match engine.inner.store.last_polls().await {
        Ok(last_polls) => last_polls,
        Err(error) => {
            tracing::debug!(%error, "cannot read the kinds' last polls");
            return;
        }
    };
    let now = SystemTime::now();
    for (kind, settings) in engine.inner.kinds.iter() {
        if !settings.remote {
            continue;
        }
        let age = last_polls
            .get(kind)
            .map(|at| now.duration_since(*at).unwrap_or_default());
        record::kind_last_poll_age(kind, age);
    }
}

/// Ends the in-process attempts a previous process left running (it
/// crashed, or was killed): with one process per store, nothing else runs
/// them. Remote workers' leases are left to run their course.
async fn end_previous_attempts(engine: &Engine) -> Result<(), super::EngineError> {
    let everything = SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 60 * 60);
    let node = &engine.inner.config.node_id;
    loop {
        let leased = engine
            .inner
            .store
            .expired_leases(everything, SWEEP_BATCH)
            .await?;
        let previous: Vec<_> = leased
            .iter()
            .filter(|task| {
                task.lease
                    .as_ref()
                    .is_some_and(|lease| lease.remote.is_none() && &lease.owner != node)
            })
            .collect();
        if previous.is_empty() {
            return Ok(());
        }
        for task in previous {
            let token = task.lease.as_ref().map(|lease| lease.token);
            let ended = engine
                .update_task(task.id, |task| {
                    let same = task.state == TaskState::Running
                        && task.lease.as_ref().map(|lease| lease.token) == token;
                    if !same {
                        return Mutation::Keep;
                    }
                    transitions::requeue_interrupted(
                        task,
                        "was interrupted when vowd stopped",
                        SystemTime::now(),
                    );
                    Mutation::Write
                })
                .await?;
            tracing::info!(task.id = %ended.id, task.attempt = ended.attempt, task.state = ended.state.as_str(), "ended an attempt of the previous run");
            engine.wake_executors(&ended);
        }
    }
}

/// Runs every sweep once.
pub(super) async fn sweep_once(engine: &Engine) -> Result<(), super::EngineError> {
    expire_overdue(engine).await?;
    reap_expired_leases(engine).await?;
    delete_expired(engine).await
}

async fn expire_overdue(engine: &Engine) -> Result<(), super::EngineError> {
    let now = SystemTime::now();
    for overdue in engine.inner.store.overdue(now, SWEEP_BATCH).await? {
        engine
            .update_task(overdue.id, |task| {
                if !task.state.is_claimable() || task.deadline.is_none_or(|deadline| deadline > now)
                {
                    return Mutation::Keep;
                }
                transitions::expire_waiting(task, now);
                Mutation::Write
            })
            .await?;
    }
    Ok(())
}

async fn reap_expired_leases(engine: &Engine) -> Result<(), super::EngineError> {
    let now = SystemTime::now();
    for expired in engine.inner.store.expired_leases(now, SWEEP_BATCH).await? {
        let expired_token = expired.lease.as_ref().map(|lease| lease.token);
        let mut lost = None;
        let task = engine
            .update_task(expired.id, |task| {
                let same_lease = task.lease.as_ref().map(|lease| lease.token) == expired_token;
                let still_expired = task
                    .lease
                    .as_ref()
                    .is_some_and(|lease| !lease.holds_at(now));
                if task.state != TaskState::Running || !same_lease || !still_expired {
                    return Mutation::Keep;
                }
                lost = task.lease.clone();
                transitions::lease_lost(task, now, rand::random());
                Mutation::Write
            })
            .await?;
        let Some(lease) = lost else { continue };
        let cause = match &task.error {
            Some(error) if error.reason == "ATTEMPT_TIMEOUT" => "attempt_timeout",
            Some(error) if error.reason == "TASK_DEADLINE_EXCEEDED" => "task_deadline",
            _ if task.state == TaskState::Cancelled => "cancelled",
            _ => "expired",
        };
        record::lease_lost(&task.kind, cause);
        if let Some(remote) = &lease.remote {
            super::workers::end_remote_attempt_span(&expired, remote, &task);
        }
        tracing::warn!(task.id = %task.id, task.attempt = task.attempt, task.state = task.state.as_str(), lease.owner = %lease.owner, cause, "ended an attempt whose lease lapsed");
        if task.state.is_claimable() {
            engine.wake_executors(&task);
        }
    }
    Ok(())
}

async fn delete_expired(engine: &Engine) -> Result<(), super::EngineError> {
    loop {
        let deleted = engine
            .inner
            .store
            .delete_expired(SystemTime::now(), SWEEP_BATCH)
            .await?;
        if deleted.len() < SWEEP_BATCH {
            return Ok(());
        }
        tokio::task::yield_now().await;
    }
}
