//! Retrying a finished run (`POST /v1/runs/{id}/retry`): the run's row is
//! made live and due again, and its `run_retried` event appended, in one
//! transaction, only while the run is still failed, rejected or cancelled
//! and its history is the one the caller planned the retry on. Of two
//! concurrent retries one wins; the other finds the run live again.

use serde_json::Value;

use steward_core::run::{Event, Recorded};

use crate::runs::{Placement, event_rows};
use crate::{Store, StoreError, audit, now_ms};

/// A retry to record.
pub struct RetryRun<'a> {
    pub id: &'a str,
    /// The `run_retried` event, numbered after the last event the caller
    /// read: if the history grew since, nothing is written.
    pub event: &'a Recorded,
    /// The corrected input, when the retry gives one.
    pub input: Option<&'a Value>,
    /// The version the run continues on and its placement, when upgraded.
    pub upgrade: Option<(u32, Placement)>,
    /// Who asked, for the audit log.
    pub actor: &'a str,
}

/// What a retry found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RetryOutcome {
    /// Recorded: the run is running and due.
    Retried,
    /// The run is not failed, rejected or cancelled (its status).
    NotRetryable(String),
    /// The run's history changed since the caller read it.
    Changed,
    NotFound,
}

impl Store {
    /// Makes a finished run live again, atomically with appending its
    /// `run_retried` event and the audit entry `run.retry`: status
    /// `running`, its end, output, error and any cancel request forgotten,
    /// due now so a worker claims it at once (it resumes from its history
    /// like a run after a restart).
    pub async fn retry_run(&self, retry: RetryRun<'_>) -> Result<RetryOutcome, StoreError> {
        let Event::RunRetried {
            from_step, reset, ..
        } = &retry.event.event
        else {
            return Err(StoreError::Corrupt(
                "retry_run takes a run_retried event".into(),
            ));
        };
        let now = now_ms();
        let (version, tags, limit) = match &retry.upgrade {
            Some((version, placement)) => (
                Some(*version as i64),
                Some(placement.tags.clone()),
                placement.concurrency.map(i64::from),
            ),
            None => (None, None, None),
        };
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE runs SET status = 'running', output = NULL, error = NULL,
                 finished_at = NULL, cancel_requested = NULL, attention = 0,
                 wake_at = $2, updated_at = $2, lease_owner = NULL, lease_until = NULL,
                 sla_resolution_ms = NULL,
                 input = COALESCE($3, input),
                 version = COALESCE($4, version),
                 required_tags = COALESCE($5, required_tags),
                 concurrency_limit = CASE WHEN $4 IS NULL THEN concurrency_limit ELSE $6 END
             WHERE id = $1 AND status IN ('failed', 'rejected', 'cancelled')",
        )
        .bind(retry.id)
        .bind(now)
        .bind(retry.input.map(|i| i.to_string()))
        .bind(version)
        .bind(tags)
        .bind(limit)
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(match self.run(retry.id).await? {
                Some(row) => RetryOutcome::NotRetryable(row.status),
                None => RetryOutcome::NotFound,
            });
        }
        // The event's number is the next one only if nothing was appended
        // since the caller read the history (the key (run_id, seq) holds it).
        let row = event_rows(std::slice::from_ref(retry.event)).remove(0);
        let inserted = sqlx::query(
            "INSERT INTO run_events (run_id, seq, at, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(retry.id)
        .bind(row.seq)
        .bind(row.at)
        .bind(row.body)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(RetryOutcome::Changed);
        }
        let detail = serde_json::json!({
            "from_step": from_step,
            "reset": reset,
            "upgrade": retry.upgrade.as_ref().map(|(v, _)| v),
            "input_corrected": retry.input.is_some(),
        });
        audit::record(&mut tx, retry.actor, "run.retry", retry.id, &detail).await?;
        tx.commit().await?;
        self.announce();
        Ok(RetryOutcome::Retried)
    }
}
