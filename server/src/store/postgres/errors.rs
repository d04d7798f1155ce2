//! Classifies PostgreSQL errors once: what a caller may retry (the database
//! is unreachable, restarting, overloaded, or aborted a transaction to break a
//! conflict) is `Unavailable`; anything else is `Internal`. Messages stay
//! generic: the details (SQL, constraint names) go to the log only.

use crate::{store::StoreError, telemetry::throttle};

/// SQLSTATE classes a retry may cure: connection exceptions, insufficient
/// resources, operator intervention (shutdown, cancelled statement),
/// transaction rollbacks (serialization failures, deadlocks).
const TRANSIENT_CLASSES: &[&str] = &["08", "53", "57", "40"];
/// `lock_not_available` (a lock timeout).
const LOCK_NOT_AVAILABLE: &str = "55P03";

/// Longest one statement may take before vowd stops waiting for it. sqlx
/// sets no keepalive on its sockets (launchbadge/sqlx#3540), so a flow that
/// froze without a reset would otherwise hold a query for the kernel's
/// retransmission timeout, a quarter of an hour.
pub const STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// Runs a statement for at most [`STATEMENT_TIMEOUT`]. One that got no
/// answer in time may have run: it fails as a broken connection would
/// (see [`is_ambiguous`]).
pub async fn within_timeout<T>(
    statement: impl Future<Output = Result<T, sqlx::Error>>,
) -> Result<T, sqlx::Error> {
    match tokio::time::timeout(STATEMENT_TIMEOUT, statement).await {
        Ok(result) => result,
        Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the database did not answer in time",
        ))),
    }
}

/// Maps a driver error to a store error, logging the details.
pub fn classify(error: sqlx::Error) -> StoreError {
    if is_transient(&error) {
        if let Some(suppressed) = throttle::admit("postgres.unavailable") {
            tracing::warn!(%error, suppressed, "the database is unavailable");
        }
        StoreError::Unavailable("the database is unreachable or overloaded".into())
    } else {
        if let Some(suppressed) = throttle::admit("postgres.failed") {
            tracing::error!(%error, suppressed, "a database operation failed");
        }
        StoreError::Internal("a database operation failed".into())
    }
}

/// Whether a failed statement may have run anyway: the connection broke,
/// so its answer (a commit among them) may have been lost on the way.
pub fn is_ambiguous(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_) | sqlx::Error::Protocol(_) | sqlx::Error::WorkerCrashed
    )
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(database) => database.code().is_some_and(|code| {
            code == LOCK_NOT_AVAILABLE
                || TRANSIENT_CLASSES
                    .iter()
                    .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable_and_say_nothing_internal() {
        let error = classify(sqlx::Error::PoolTimedOut);
        assert!(matches!(error, StoreError::Unavailable(_)));
        let error = classify(sqlx::Error::RowNotFound);
        let StoreError::Internal(message) = error else {
            panic!("expected an internal error");
        };
        assert!(!message.contains("SELECT"));
    }
}
