//! Signals: deliveries of outside events kept until the runs they are for
//! take them, the open waits of `wait_for` steps (so a keyed delivery wakes
//! the runs waiting with its key), and who took what.
//!
//! A delivery is taken at most once per run (primary key of
//! `signal_consumptions` on delivery and run) and a step takes at most one
//! (unique run and step), so two workers or two steps cannot both take
//! it; taking is idempotent per run and step, so a worker that took a
//! delivery and died before recording it finds the same one again.
//! Delivering makes the runs it is for due at once (`attention`, as a
//! decision does), so a parked run resumes without a poll.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;

pub use steward_core::run::signal::{OpenSignalWait, SignalDelivery};

use super::{Store, StoreError, audit, dialect, now_ms, to_time};

/// A delivery to record.
#[derive(Debug, Clone)]
pub struct NewSignal<'a> {
    pub id: &'a str,
    pub name: &'a str,
    /// The run it is for; `None` for a keyed delivery.
    pub run_id: Option<&'a str>,
    pub key: Option<&'a str>,
    pub payload: &'a Value,
    /// Unique across deliveries: a repeat returns the first delivery. The
    /// caller scopes it (by run or signal, and by who sent it).
    pub idempotency_key: Option<&'a str>,
    /// Who delivered it, for the audit log.
    pub actor: &'a str,
}

/// What recording a delivery found.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    /// Recorded now.
    Recorded(SignalDelivery),
    /// A delivery with the same idempotency key was recorded before: the
    /// first one stands.
    Repeated(SignalDelivery),
    /// No run has this id.
    RunNotFound,
    /// The run has finished (its status): nothing will take the signal.
    RunFinished(String),
}

/// A delivery as `GET /v1/runs/{id}/signals` shows it: with the step of the
/// run that took it, if one did.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct RunSignal {
    #[serde(flatten)]
    pub delivery: SignalDelivery,
    pub consumed: bool,
    pub step: Option<String>,
    pub consumed_at: Option<DateTime<Utc>>,
}

const TERMINAL: &str = "('succeeded', 'failed', 'rejected', 'cancelled')";

impl Store {
    /// Records a delivery and makes the runs it is for due: the run it is
    /// addressed to, or every unfinished run whose open wait has its name
    /// and key. A delivery to a finished or unknown run is refused.
    pub async fn deliver_signal(&self, new: &NewSignal<'_>) -> Result<Delivered, StoreError> {
        if let Some(key) = new.idempotency_key
            && let Some(first) = self.delivery_by_key(key).await?
        {
            return Ok(Delivered::Repeated(first));
        }
        let now = now_ms();
        let mut tx = self.begin_write().await?;
        if let Some(turn) = dialect::signal_turn(self.backend) {
            sqlx::query(turn).execute(&mut *tx).await?;
        }
        if let Some(run_id) = new.run_id {
            let woken = sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE runs SET attention = 1, wake_at = $2 WHERE id = $1 AND status NOT IN {TERMINAL}"
            )))
            .bind(run_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            if woken.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(match self.run(run_id).await? {
                    Some(row) => Delivered::RunFinished(row.status),
                    None => Delivered::RunNotFound,
                });
            }
        }
        let inserted = sqlx::query(
            "INSERT INTO signal_deliveries (id, name, signal_key, run_id, payload, idempotency_key, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
        )
        .bind(new.id)
        .bind(new.name)
        .bind(new.key)
        .bind(new.run_id)
        .bind(new.payload.to_string())
        .bind(new.idempotency_key)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 0 {
            // Lost a race on the idempotency key: the winner's delivery stands.
            tx.rollback().await?;
            let key = new.idempotency_key.unwrap_or_default();
            return match self.delivery_by_key(key).await? {
                Some(first) => Ok(Delivered::Repeated(first)),
                None => Err(StoreError::Corrupt(format!(
                    "signal delivery {} exists already",
                    new.id
                ))),
            };
        }
        if new.run_id.is_none() {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE runs SET attention = 1, wake_at = $3 \
                 WHERE id IN (SELECT run_id FROM signal_waits WHERE name = $1 AND signal_key = $2) \
                 AND status NOT IN {TERMINAL}"
            )))
            .bind(new.name)
            .bind(new.key)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let detail = serde_json::json!({"name": new.name, "run": new.run_id, "key": new.key});
        audit::record(&mut tx, new.actor, "signal.deliver", new.id, &detail).await?;
        tx.commit().await?;
        self.announce();
        Ok(Delivered::Recorded(SignalDelivery {
            id: new.id.to_string(),
            name: new.name.to_string(),
            run_id: new.run_id.map(str::to_string),
            key: new.key.map(str::to_string),
            payload: new.payload.clone(),
            received_at: to_time(now),
            taken_by: None,
        }))
    }

    async fn delivery_by_key(&self, key: &str) -> Result<Option<SignalDelivery>, StoreError> {
        let row = sqlx::query(
            "SELECT id, name, signal_key, run_id, payload, received_at, NULL AS taken_by \
             FROM signal_deliveries WHERE idempotency_key = $1",
        )
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(delivery_row).transpose()
    }

    /// Records an open wait (idempotent), after which keyed deliveries of
    /// its name and key wake its run.
    pub async fn open_signal_wait(&self, wait: &OpenSignalWait) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        if let Some(turn) = dialect::signal_turn(self.backend) {
            sqlx::query(turn).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT INTO signal_waits (run_id, step, name, signal_key, opened_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        )
        .bind(&wait.run_id)
        .bind(&wait.step)
        .bind(&wait.signal)
        .bind(&wait.key)
        .bind(wait.opened_at.timestamp_millis())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The deliveries `wait` may take, oldest first: the one its step took
    /// already, and those of its name not taken by its run that are
    /// addressed to the run, or keyed with its key and received once the
    /// run existed (a keyed delivery is for the runs created before it
    /// arrived, so a new run never takes an old signal).
    pub async fn signal_candidates(
        &self,
        wait: &OpenSignalWait,
    ) -> Result<Vec<SignalDelivery>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.name, d.signal_key, d.run_id, d.payload, d.received_at, c.step AS taken_by \
             FROM signal_deliveries d \
             LEFT JOIN signal_consumptions c ON c.delivery_id = d.id AND c.run_id = $1 \
             WHERE d.name = $2 \
               AND (d.run_id = $1 OR (d.run_id IS NULL AND d.signal_key = $3 \
                    AND d.received_at >= (SELECT r.created_at FROM runs r WHERE r.id = $1))) \
               AND (c.step IS NULL OR c.step = $4) \
             ORDER BY d.received_at, d.id LIMIT 100",
        )
        .bind(&wait.run_id)
        .bind(&wait.signal)
        .bind(&wait.key)
        .bind(&wait.step)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(delivery_row).collect()
    }

    /// Takes `delivery` for the wait's step: `true` when the step has it
    /// (now, or taken by the same step before), `false` when another step
    /// of the run has it or the step took another one. The wait is closed
    /// with the take.
    pub async fn take_signal(
        &self,
        wait: &OpenSignalWait,
        delivery: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let taken: Option<String> = sqlx::query_scalar(
            "SELECT delivery_id FROM signal_consumptions WHERE run_id = $1 AND step = $2",
        )
        .bind(&wait.run_id)
        .bind(&wait.step)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(taken) = taken {
            tx.commit().await?;
            return Ok(taken == delivery);
        }
        let inserted = sqlx::query(
            "INSERT INTO signal_consumptions (delivery_id, run_id, step, consumed_at) \
             VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        )
        .bind(delivery)
        .bind(&wait.run_id)
        .bind(&wait.step)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if inserted.rows_affected() == 1 {
            sqlx::query("DELETE FROM signal_waits WHERE run_id = $1 AND step = $2")
                .bind(&wait.run_id)
                .bind(&wait.step)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(inserted.rows_affected() == 1)
    }

    /// The deliveries of a run, oldest first: those addressed to it and the
    /// keyed ones it took, each with the step that took it.
    pub async fn run_signals(&self, run_id: &str) -> Result<Vec<RunSignal>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.name, d.signal_key, d.run_id, d.payload, d.received_at, \
                    c.step AS taken_by, c.consumed_at \
             FROM signal_deliveries d \
             LEFT JOIN signal_consumptions c ON c.delivery_id = d.id AND c.run_id = $1 \
             WHERE d.run_id = $1 \
                OR d.id IN (SELECT delivery_id FROM signal_consumptions WHERE run_id = $1) \
             ORDER BY d.received_at, d.id",
        )
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let delivery = delivery_row(r)?;
                let consumed_at: Option<i64> = r.try_get("consumed_at")?;
                Ok(RunSignal {
                    consumed: delivery.taken_by.is_some(),
                    step: delivery.taken_by.clone(),
                    consumed_at: consumed_at.map(to_time),
                    delivery,
                })
            })
            .collect()
    }
}

fn delivery_row(r: &sqlx::any::AnyRow) -> Result<SignalDelivery, StoreError> {
    let payload: String = r.try_get("payload")?;
    Ok(SignalDelivery {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        run_id: r.try_get("run_id")?,
        key: r.try_get("signal_key")?,
        payload: serde_json::from_str(&payload)
            .map_err(|e| StoreError::Corrupt(format!("signal_deliveries.payload: {e}")))?,
        received_at: to_time(r.try_get("received_at")?),
        taken_by: r.try_get("taken_by")?,
    })
}
