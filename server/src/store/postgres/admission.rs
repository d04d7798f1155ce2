//! Admission (`max_queued`) without counting the queue on every submit.
//!
//! Each process keeps an estimate of the queue depth: the last count it read
//! (refreshed at most every [`REFRESH_INTERVAL`], and by every `queue_depth`
//! call) plus the tasks it created since. Far below the limit a submit is
//! admitted on the estimate alone; within [`margin`] of it, the queue is
//! counted exactly (up to the limit). Across replicas admission is therefore
//! approximate: replicas that submit at once near the limit may together
//! overshoot it by what they admit between two refreshes.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// How old an estimate may be before a submit refreshes it.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(250);

/// Below `limit - margin(limit)` the estimate decides alone.
pub fn margin(limit: usize) -> usize {
    limit / 10
}

/// The queue-depth estimate of this process.
#[derive(Default)]
pub struct Admission {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    counted: usize,
    created_since: usize,
    counted_at: Option<Instant>,
    refreshing: bool,
}

/// What a submit should do about the queue depth.
#[derive(Debug, PartialEq, Eq)]
pub enum Estimate {
    /// The estimate is fresh enough; this is it.
    Fresh(usize),
    /// The estimate is stale and this caller should refresh it.
    Refresh,
}

impl Admission {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The current estimate, or a request to refresh it (made to one caller
    /// at a time; the others get the stale estimate meanwhile).
    pub fn estimate(&self) -> Estimate {
        let mut state = self.state();
        let fresh = state
            .counted_at
            .is_some_and(|at| at.elapsed() < REFRESH_INTERVAL);
        if fresh || (state.refreshing && state.counted_at.is_some()) {
            return Estimate::Fresh(state.counted + state.created_since);
        }
        state.refreshing = true;
        Estimate::Refresh
    }

    /// Records a fresh count of the queue.
    pub fn counted(&self, queued: usize) {
        let mut state = self.state();
        state.counted = queued;
        state.created_since = 0;
        state.counted_at = Some(Instant::now());
        state.refreshing = false;
    }

    /// A refresh failed; the next submit tries again.
    pub fn refresh_failed(&self) {
        self.state().refreshing = false;
    }

    /// This process created a claimable task.
    pub fn created(&self) {
        self.state().created_since += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_refreshes_while_others_use_the_estimate() {
        let admission = Admission::default();
        assert_eq!(admission.estimate(), Estimate::Refresh);
        admission.counted(5);
        admission.created();
        assert_eq!(admission.estimate(), Estimate::Fresh(6));
        assert_eq!(margin(2), 0);
        assert_eq!(margin(100_000), 10_000);
    }
}
