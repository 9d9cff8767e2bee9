//! Why a run's history could not be made durable. The executor stops a
//! drive on any of these; what happens next depends on which: a lost lease
//! means another worker has the run, an unavailable database is retried,
//! a conflict or anything else is reported.

/// A failed write or read of a run's journal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JournalError {
    /// Another worker took the run over; this drive must stop writing.
    #[error("run {0} is no longer leased to this worker: another one took it over")]
    LeaseLost(String),
    /// The database could not be reached or could not write; nothing of
    /// the write was committed, so trying again later is safe.
    #[error("the database is unavailable: {0}")]
    Unavailable(String),
    /// The write contradicts what is stored (an id taken, a version
    /// deployed with other content).
    #[error("{0}")]
    Conflict(String),
    /// Anything else, with its message.
    #[error("{0}")]
    Other(String),
}

impl JournalError {
    /// Whether the same write may succeed later without anyone acting.
    pub fn is_transient(&self) -> bool {
        matches!(self, JournalError::Unavailable(_))
    }
}
