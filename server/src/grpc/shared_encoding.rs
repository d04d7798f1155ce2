//! One protobuf encoding per task revision, shared by every watch stream that
//! sends it.
//!
//! A change to a task that many streams watch reaches each of them as the
//! same record. Converting and encoding it once per stream was a quarter of
//! the server's work per watcher; the streams now take the encoding the first
//! of them made. The same holds for the snapshots of watchers that attach to
//! a task at the same revision.

use std::{num::NonZeroUsize, sync::Mutex};

use lru::LruCache;
use prost::{Message, bytes::Bytes};

use super::convert::task_to_proto;
use crate::engine::task::{TaskId, TaskRecord};

/// Task revisions whose encoding is kept: the ones being fanned out now.
const KEPT_REVISIONS: NonZeroUsize = NonZeroUsize::new(128).unwrap();
/// Larger encodings are made per stream, so that a few large tasks cannot
/// pin much memory (at most `KEPT_REVISIONS` × this: 4 MiB).
const MAX_SHARED_BYTES: usize = 32 * 1024;

/// Recently sent encodings of task revisions.
pub struct SharedTaskEncodings {
    recent: Mutex<LruCache<(TaskId, u64), Bytes>>,
}

impl Default for SharedTaskEncodings {
    fn default() -> Self {
        Self {
            recent: Mutex::new(LruCache::new(KEPT_REVISIONS)),
        }
    }
}

impl SharedTaskEncodings {
    /// The encoding of `task` as a `vow.v1.Task`, made now unless a stream
    /// already made it. A revision names one state of a task, so the key is
    /// (id, revision).
    pub fn encode(&self, task: &TaskRecord) -> Bytes {
        let key = (task.id, task.revision);
        if let Some(encoded) = self.lock().get(&key) {
            return encoded.clone();
        }
        // Encoded outside the lock: two streams may both encode a revision
        // the first time, which costs less than making every other one wait.
        let encoded = Bytes::from(task_to_proto(task).encode_to_vec());
        if encoded.len() <= MAX_SHARED_BYTES {
            self.lock().put(key, encoded.clone());
        }
        encoded
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LruCache<(TaskId, u64), Bytes>> {
        // The cache holds no invariant a panicking holder could break.
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::engine::{
        task::{Payload, TaskState},
        transitions::tests::running,
    };

    #[test]
    fn a_revision_is_encoded_once_and_as_the_task_converts() {
        let encodings = SharedTaskEncodings::default();
        let task = running(1, 3);
        let first = encodings.encode(&task);
        assert_eq!(first, task_to_proto(&task).encode_to_vec());
        // The same allocation: the second stream did not encode again.
        assert_eq!(encodings.encode(&task).as_ptr(), first.as_ptr());
    }

    #[test]
    fn each_revision_and_task_has_its_own_encoding() {
        let encodings = SharedTaskEncodings::default();
        let task = running(1, 3);
        let before = encodings.encode(&task);

        let mut next = task.clone();
        next.revision += 1;
        next.state = TaskState::Succeeded;
        let after = encodings.encode(&next);
        assert_ne!(before, after);
        assert_eq!(after, task_to_proto(&next).encode_to_vec());

        let other = running(1, 3);
        assert_eq!(other.revision, task.revision);
        assert_eq!(
            encodings.encode(&other),
            task_to_proto(&other).encode_to_vec()
        );
    }

    #[test]
    fn large_encodings_are_not_kept() {
        let encodings = SharedTaskEncodings::default();
        let mut task = running(1, 3);
        task.input = Arc::new(Payload::json(serde_json::json!(
            "x".repeat(MAX_SHARED_BYTES)
        )));
        let first = encodings.encode(&task);
        assert_eq!(first, task_to_proto(&task).encode_to_vec());
        assert_ne!(encodings.encode(&task).as_ptr(), first.as_ptr());
        assert!(encodings.lock().is_empty());
    }

    #[test]
    fn only_recent_revisions_are_kept() {
        let encodings = SharedTaskEncodings::default();
        for _ in 0..KEPT_REVISIONS.get() * 2 {
            encodings.encode(&running(1, 3));
        }
        assert_eq!(encodings.lock().len(), KEPT_REVISIONS.get());
    }
}
