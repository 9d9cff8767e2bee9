//! Durable state: runs, their event histories, deployed workflow versions
//! and plugin key-value data, in SQLite (the embedded default) or
//! PostgreSQL (for many processes), with the same SQL for both.
//!
//! One module per table or concern, each adding its methods to [`Store`]:
//! `runs` (runs and their events), `retry` (a finished run made live
//! again), `claims` (claims and leases),
//! `workflows`, `tokens`, `uploads`, `kv`, `approvals`, `audit`,
//! `schedules`, `signals`, `groups` and `retention`; `open` connects, `writer` is the
//! group commit every durable write goes through, `error` says what failed.
//! Where SQLite and PostgreSQL differ in SQL or session settings,
//! `dialect` says how; beyond it only `open` branches on the backend, for
//! what only a PostgreSQL server has (TLS, a schema, a second pool for
//! the hot statements, announcements).
//!
//! Architecture invariant: only this crate knows SQL. Callers see runs,
//! events and leases.

mod announce;
mod approvals;
mod audit;
mod claims;
mod dialect;
mod error;
mod groups;
mod health;
mod kv;
mod migrate;
mod open;
mod params;
#[cfg(test)]
mod parity;
pub mod retention;
mod retry;
mod runs;
mod schedules;
mod signals;
mod tokens;
mod uploads;
mod workflows;
mod writer;

use chrono::{DateTime, TimeZone, Utc};
use sqlx::AnyPool;

pub use approvals::{ApprovalRow, Decided, Decision, Delegation, SelfApproval};
pub use audit::{AUDIT_ACTIONS, AuditEntry, AuditFilter};
pub use claims::{ClaimedRun, tag_subsets};
pub use dialect::Backend;
pub use error::StoreError;
pub use open::{SqliteSync, StoreOptions};
pub use retry::{RetryOutcome, RetryRun};
pub use runs::{CancelRequest, NewRun, Placement, RunRow};
pub use signals::{Delivered, NewSignal, OpenSignalWait, RunSignal, SignalDelivery};
pub use tokens::StoredToken;
pub use uploads::UploadedPlugin;

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// The statements every run goes through (the writer's, claims,
    /// renewals): on PostgreSQL, connections that plan them once, for index
    /// access (see `open::connect_pool`); on SQLite, `pool` itself.
    hot: AnyPool,
    backend: Backend,
    writer: tokio::sync::mpsc::Sender<writer::Write>,
    /// PostgreSQL only: tells other processes about new work.
    announcer: Option<std::sync::Arc<announce::Announcer>>,
}

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

impl Store {
    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}
