//! Background sweeps on a fixed period: fail waiting tasks whose deadline
//! passed, return expired leases to the queue, and delete finished tasks whose
//! retention ended, all in small batches so no sweep holds the store long.

use std::time::SystemTime;

use super::{Engine, Mutation, task::TaskState, transitions};
use crate::telemetry::metrics::record;

/// Records handled per store call of a sweep.
const SWEEP_BATCH: usize = 256;

pub(super) async fn sweep_loop(engine: Engine) {
    let mut ticks = tokio::time::interval(engine.inner.config.sweep_interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut queued_kinds = Vec::new();
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = engine.inner.shutdown.cancelled() => return,
        }
        if let Err(error) = sweep_once(&engine).await {
            tracing::warn!(%error, "maintenance sweep failed; retrying next period");
        }
        // The queue depth per kind is what an autoscaler watches.
        match engine.inner.store.queue_depth().await {
            Ok(depth) => record::queue_depth(&depth, &mut queued_kinds),
            Err(error) => tracing::warn!(%error, "cannot read the queue depth"),
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
    let mut requeued = false;
    for expired in engine.inner.store.expired_leases(now, SWEEP_BATCH).await? {
        let expired_token = expired.lease.as_ref().map(|lease| lease.token);
        let task = engine
            .update_task(expired.id, |task| {
                let same_lease = task.lease.as_ref().map(|lease| lease.token) == expired_token;
                let still_expired = task
                    .lease
                    .as_ref()
                    .is_some_and(|lease| lease.expires_at <= now);
                if task.state != TaskState::Running || !same_lease || !still_expired {
                    return Mutation::Keep;
                }
                transitions::requeue_interrupted(
                    task,
                    "lost its lease (the executor stopped renewing it)",
                    now,
                );
                Mutation::Write
            })
            .await?;
        tracing::warn!(task.id = %task.id, task.attempt = task.attempt, "reaped an expired lease");
        requeued |= task.state == TaskState::Queued;
    }
    if requeued {
        engine.inner.dispatch_wakeup.notify_one();
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
