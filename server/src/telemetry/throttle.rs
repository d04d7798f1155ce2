//! Bounded logging during outages: a line of one class (the database is
//! unavailable, a storage error answered to a call, …) is written at most
//! once per [`INTERVAL`], and the next one written says how many were left
//! out. Sixteen callers against a database cut for five seconds otherwise
//! wrote 9,362 warning lines, burying the one that says what happened.

use std::{
    collections::HashMap,
    sync::{LazyLock, Mutex},
    time::{Duration, Instant},
};

/// Least time between two lines of one class.
pub const INTERVAL: Duration = Duration::from_secs(5);

struct Class {
    written_at: Instant,
    suppressed: u64,
}

static CLASSES: LazyLock<Mutex<HashMap<&'static str, Class>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Whether a line of `class` may be written now: `Some(n)` with the number
/// of lines of that class left out since the last one written, or `None`
/// (counted) when one was written less than [`INTERVAL`] ago.
pub fn admit(class: &'static str) -> Option<u64> {
    admit_at(class, Instant::now())
}

fn admit_at(class: &'static str, now: Instant) -> Option<u64> {
    let mut classes = CLASSES
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    match classes.get_mut(class) {
        Some(state) if now.saturating_duration_since(state.written_at) < INTERVAL => {
            state.suppressed += 1;
            None
        }
        Some(state) => {
            let suppressed = std::mem::take(&mut state.suppressed);
            state.written_at = now;
            Some(suppressed)
        }
        None => {
            classes.insert(
                class,
                Class {
                    written_at: now,
                    suppressed: 0,
                },
            );
            Some(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_then_the_count_of_those_left_out() {
        let start = Instant::now();
        let class = "test.one_line_per_interval";
        assert_eq!(admit_at(class, start), Some(0));
        for offset in [1, 100, 4_999] {
            assert_eq!(admit_at(class, start + Duration::from_millis(offset)), None);
        }
        assert_eq!(admit_at(class, start + INTERVAL), Some(3));
        assert_eq!(
            admit_at(class, start + INTERVAL + Duration::from_millis(1)),
            None
        );
        assert_eq!(admit_at("test.another_class", start + INTERVAL), Some(0));
    }
}
