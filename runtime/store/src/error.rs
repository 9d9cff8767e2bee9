//! Why the store failed, and how database errors become [`StoreError`]s:
//! every one passes through `From<sqlx::Error>`, so a lost connection is
//! noticed wherever it surfaces (see `health`).

use crate::health;

/// Why the store failed. SQL text never reaches API clients through this.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error(
        "the database schema is at version {database} but this binary knows only up to {binary}: \
         a newer steward migrated it; run that version or restore a backup"
    )]
    NewerSchema { database: i64, binary: i64 },
    /// Checked before connecting: sqlx reads the file only during the TLS
    /// handshake, and its error there names neither the file nor the
    /// setting.
    #[error(
        "the database URL's sslrootcert {path:?} cannot be read: {reason}; \
         point it at the PEM file of the CA that signed the server's certificate"
    )]
    RootCert {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("migration {version} failed: {message}")]
    Migrate { version: i64, message: String },
    #[error(
        "workflow {name} version {version} is already deployed with different content: bump the version"
    )]
    VersionConflict { name: String, version: u32 },
    #[error("run {0} is no longer leased to this worker: another one took it over")]
    LeaseLost(String),
    #[error("the store's writer stopped: the process is shutting down")]
    WriterGone,
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database could not take a write (its storage failed); nothing
    /// of the request was committed.
    #[error("the database cannot write: {0}")]
    Unavailable(String),
}

impl From<StoreError> for steward_core::run::JournalError {
    fn from(e: StoreError) -> Self {
        use steward_core::run::JournalError;
        match e {
            StoreError::LeaseLost(run) => JournalError::LeaseLost(run),
            e if e.is_unavailable() => JournalError::Unavailable(e.to_string()),
            e @ StoreError::VersionConflict { .. } => JournalError::Conflict(e.to_string()),
            e => JournalError::Other(e.to_string()),
        }
    }
}

impl StoreError {
    /// Whether the database could not be reached (a connection lost, none
    /// to be had in time) rather than refused something: worth a retry.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => {
                health::is_connection_loss(e)
                    || health::is_storage_failure(e)
                    || matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
            }
            StoreError::Unavailable(_) => true,
            _ => false,
        }
    }
}

/// Every database error passes here: one that says a connection died is
/// recorded, so connections idle since are tested before their next use
/// (see `health`).
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        health::shared().check(&error);
        StoreError::Database(error)
    }
}
