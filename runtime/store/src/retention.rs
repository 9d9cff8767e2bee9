//! Retention: finished runs older than `[retention] runs` are deleted with
//! their history, approvals and signals, so the database does not grow
//! forever; keyed signal deliveries go once no run can take them.
//!
//! Deletion runs in a background task of each executing process (`serve`,
//! `worker`), never on a request, in small transactions: a long delete
//! would hold locks (and, on SQLite, the one write lock) that the writer's
//! group commits wait on. A run still open (pending, running, waiting) is
//! never deleted, however old.
//!
//! Run ids are UUIDv7, so the primary key orders runs by creation time: a
//! sweep reads only the key range of runs created before the cutoff (a run
//! that finished before it was created before it), instead of scanning the
//! table for `finished_at`, which has no index (one would cost every run a
//! write on the hot path).

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::params::{bind_padded, numbered};
use crate::{Store, StoreError, dialect};

/// Runs deleted per transaction.
pub const BATCH: usize = 500;

/// How often the background task sweeps.
pub const EVERY: Duration = Duration::from_secs(5 * 60);

/// The smallest run id created at `at` or later: every UUIDv7 created
/// before `at` sorts below it (its first 48 bits are Unix milliseconds,
/// written as hex in the same positions).
fn first_id_at(at: DateTime<Utc>) -> String {
    let ms = at.timestamp_millis().max(0) as u64;
    format!("{:08x}-{:04x}", ms >> 16, ms & 0xffff)
}

impl Store {
    /// Deletes up to `batch` runs that finished before `cutoff`, with their
    /// events and approval rows, in one transaction; returns how many.
    /// On PostgreSQL the runs are locked first and locked ones skipped, so
    /// several processes sweeping at once neither wait on nor deadlock
    /// each other.
    pub async fn delete_finished_runs(
        &self,
        cutoff: DateTime<Utc>,
        batch: usize,
    ) -> Result<usize, StoreError> {
        let lock = dialect::skip_locked(self.backend);
        let mut tx = self.begin_write().await?;
        let ids: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT id FROM runs
             WHERE id < $1 AND finished_at < $2
               AND status NOT IN ('pending', 'running', 'waiting')
             ORDER BY id
             LIMIT $3{lock}"
        )))
        .bind(first_id_at(cutoff))
        .bind(cutoff.timestamp_millis())
        .bind(batch as i64)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            tx.commit().await?;
            return Ok(0);
        }
        let list = numbered(1, ids.len().next_power_of_two());
        for sql in [
            format!(
                "DELETE FROM approval_decisions
                 WHERE approval_id IN (SELECT id FROM approvals WHERE run_id IN ({list}))"
            ),
            format!(
                "DELETE FROM approval_approvers
                 WHERE approval_id IN (SELECT id FROM approvals WHERE run_id IN ({list}))"
            ),
            format!("DELETE FROM approvals WHERE run_id IN ({list})"),
            format!("DELETE FROM signal_consumptions WHERE run_id IN ({list})"),
            format!("DELETE FROM signal_waits WHERE run_id IN ({list})"),
            format!("DELETE FROM signal_deliveries WHERE run_id IN ({list})"),
            format!("DELETE FROM run_events WHERE run_id IN ({list})"),
            format!("DELETE FROM runs WHERE id IN ({list})"),
        ] {
            bind_padded(sqlx::query(sqlx::AssertSqlSafe(sql)), &ids)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(ids.len())
    }

    /// Deletes every run that finished before `cutoff`, `batch` at a time;
    /// returns how many.
    pub async fn sweep_finished_runs(
        &self,
        cutoff: DateTime<Utc>,
        batch: usize,
    ) -> Result<usize, StoreError> {
        let mut total = 0;
        loop {
            let deleted = self.delete_finished_runs(cutoff, batch).await?;
            total += deleted;
            if deleted < batch {
                self.delete_old_keyed_signals(cutoff).await?;
                return Ok(total);
            }
            // Lets the writer's waiting commits in between batches.
            tokio::task::yield_now().await;
        }
    }
}

impl Store {
    /// Deletes keyed signal deliveries received before `cutoff` that no
    /// run can take any more (every run created before one arrived has
    /// finished), with the records of the runs that took them; returns
    /// how many.
    pub async fn delete_old_keyed_signals(
        &self,
        cutoff: DateTime<Utc>,
    ) -> Result<usize, StoreError> {
        let old = "SELECT d.id FROM signal_deliveries d
                   WHERE d.run_id IS NULL AND d.received_at < $1
                     AND NOT EXISTS (SELECT 1 FROM runs r
                                     WHERE r.status IN ('pending', 'running', 'waiting')
                                       AND r.created_at <= d.received_at)";
        let mut tx = self.begin_write().await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM signal_consumptions WHERE delivery_id IN ({old})"
        )))
        .bind(cutoff.timestamp_millis())
        .execute(&mut *tx)
        .await?;
        let deleted = sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM signal_deliveries WHERE id IN ({old})"
        )))
        .bind(cutoff.timestamp_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() as usize)
    }
}

/// Sweeps runs finished more than `keep` ago now and every [`EVERY`],
/// until the task is aborted. Failures are logged and retried at the next
/// sweep.
pub fn spawn(store: Store, keep: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let keep = chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::MAX);
            let cutoff = Utc::now()
                .checked_sub_signed(keep)
                .unwrap_or(DateTime::<Utc>::MIN_UTC);
            match store.sweep_finished_runs(cutoff, BATCH).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("retention: deleted {n} runs finished before {cutoff}"),
                Err(e) => tracing::warn!("retention: deleting old runs failed: {e}"),
            }
            tokio::time::sleep(EVERY).await;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_id_at_a_time_sorts_above_every_uuid7_created_before() {
        let at = Utc::now();
        let before = uuid::Uuid::new_v7(uuid::Timestamp::from_unix(
            uuid::NoContext,
            (at.timestamp_millis() as u64 - 1) / 1000,
            (((at.timestamp_millis() - 1) % 1000) * 1_000_000) as u32,
        ))
        .to_string();
        let after = uuid::Uuid::now_v7().to_string();
        let bound = first_id_at(at);
        assert!(before < bound, "{before} < {bound}");
        assert!(after >= bound, "{after} >= {bound}");
    }
}
