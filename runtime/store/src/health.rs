//! Lost database connections: when PostgreSQL restarts or fails over, every
//! connection in the pools dies at once, but each finds out only at its
//! next query, which then fails. Pinging every connection before use would
//! cost a round trip per query, so connections are pinged only when they
//! sat idle across a loss seen anywhere in the process (a query failing
//! for want of its connection, or the `LISTEN` connection dropping): after
//! a restart, one query fails instead of one per pooled connection.
//!
//! A storage failure (the disk full or failing, the database file unable to
//! grow) counts as a loss too: a COMMIT that failed that way can leave its
//! connection inside a transaction that neither COMMIT nor ROLLBACK ended,
//! and such a connection, handed out again, would take later writes into a
//! transaction that never commits. Connections idle across it are rolled
//! back before their next use; the writer discards its own outright.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// When connections were last seen lost, for every store of the process
/// (each store's pools reach the same database servers, usually one).
#[derive(Debug, Default)]
pub(crate) struct Health {
    /// Milliseconds since [`START`] plus one; 0 for never.
    lost_at: AtomicU64,
}

/// The clock `Health` counts from.
static START: LazyLock<Instant> = LazyLock::new(Instant::now);

/// The process's one record (see [`Health`]).
pub(crate) fn shared() -> &'static Health {
    static SHARED: Health = Health {
        lost_at: AtomicU64::new(0),
    };
    &SHARED
}

impl Health {
    /// Records a loss now.
    pub fn lost(&self) {
        self.lost_at
            .fetch_max(millis(Instant::now()) + 1, Ordering::AcqRel);
    }

    /// Records a loss when `error` says a connection died or the storage
    /// failed (see [`is_connection_loss`], [`is_storage_failure`]); answers
    /// whether it did.
    pub fn check(&self, error: &sqlx::Error) -> bool {
        let lost = is_connection_loss(error) || is_storage_failure(error);
        if lost {
            self.lost();
        }
        lost
    }

    /// Whether a connection idle for `idle_for` was idle when the last loss
    /// was seen, and so may be dead.
    pub fn idle_across_loss(&self, idle_for: Duration) -> bool {
        let lost_at = self.lost_at.load(Ordering::Acquire);
        lost_at != 0 && millis(Instant::now().checked_sub(idle_for).unwrap_or(*START)) < lost_at
    }

    /// Whether a loss was seen after `since` (a connection held since then
    /// may be dead).
    pub fn lost_since(&self, since: Instant) -> bool {
        self.lost_at.load(Ordering::Acquire) > millis(since)
    }
}

fn millis(at: Instant) -> u64 {
    at.saturating_duration_since(*START).as_millis() as u64
}

/// Whether `error` means the connection is gone rather than the query
/// wrong: an I/O error, or PostgreSQL ending the session (class 57P:
/// administrator or crash shutdown; class 08: connection exceptions).
pub(crate) fn is_connection_loss(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(e) => e
            .code()
            .is_some_and(|code| code.starts_with("57P") || code.starts_with("08")),
        _ => false,
    }
}

/// Whether `error` means the database's storage failed rather than the
/// query was wrong: nothing can be written until the disk recovers, so the
/// caller is told to come back later (503), not that its request is bad.
/// SQLite: I/O errors (`SQLITE_IOERR` and its extended codes, e.g. 778 when
/// the file cannot grow), a full disk, a file that cannot be opened or is
/// read-only, and a database still locked after the busy timeout.
/// PostgreSQL: insufficient resources (class 53: disk full, out of memory,
/// too many connections) and system errors (class 58: I/O).
pub(crate) fn is_storage_failure(error: &sqlx::Error) -> bool {
    let sqlx::Error::Database(e) = error else {
        return false;
    };
    if let Some(e) = e.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
        use sqlx::error::DatabaseError as _;
        const BUSY: i32 = 5;
        const LOCKED: i32 = 6;
        const READONLY: i32 = 8;
        const IOERR: i32 = 10;
        const FULL: i32 = 13;
        const CANTOPEN: i32 = 14;
        let code = e
            .code()
            .and_then(|c| c.parse::<i32>().ok())
            .unwrap_or_default();
        return matches!(
            code & 0xff,
            BUSY | LOCKED | READONLY | IOERR | FULL | CANTOPEN
        );
    }
    e.code()
        .is_some_and(|code| code.starts_with("53") || code.starts_with("58"))
}

/// [`is_storage_failure`] of a store error.
pub(crate) fn is_storage_failure_of(error: &super::StoreError) -> bool {
    matches!(error, super::StoreError::Database(e) if is_storage_failure(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_idle_across_a_loss_are_suspect_and_later_ones_are_not() {
        let health = Health::default();
        assert!(!health.idle_across_loss(Duration::from_secs(3600)));
        let held_since = Instant::now();
        std::thread::sleep(Duration::from_millis(5));
        health.lost();
        assert!(health.lost_since(held_since));
        // Idle since before the loss: suspect. Used after it: not.
        assert!(health.idle_across_loss(Duration::from_millis(50)));
        std::thread::sleep(Duration::from_millis(5));
        assert!(!health.idle_across_loss(Duration::ZERO));
        assert!(!health.lost_since(Instant::now()));
    }

    #[test]
    fn only_errors_of_the_connection_count_as_a_loss() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(is_connection_loss(&io));
        assert!(!is_connection_loss(&sqlx::Error::RowNotFound));
        assert!(!is_connection_loss(&sqlx::Error::PoolTimedOut));
        assert!(!is_connection_loss(&sqlx::Error::Protocol("x".into())));
    }
}
