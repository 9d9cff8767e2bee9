//! Schedules, their fire records and the scheduler's leader lease. A fire
//! happens once because its record's primary key is (schedule, fire time):
//! whoever inserts it handles it, whoever conflicts does nothing.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Store, StoreError, audit, now_ms, to_time};
use steward_core::schedule::{
    CatchUp, Fire, InvalidSchedule, Outcome, Overlap, Schedule, ScheduleSpec, Source,
};

const COLUMNS: &str = "id, workflow, cron, timezone, input, overlap, catch_up, catch_up_window_ms, \
     paused, source, created_at, updated_at, next_fire_at, last_run_id, queued_fire_at";

fn ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(|t| t.timestamp_millis())
}

fn corrupt(e: InvalidSchedule) -> StoreError {
    StoreError::Corrupt(format!("a stored schedule is invalid: {e}"))
}

/// Binds what the owner sets, in the order both the insert and the update
/// place it (`$2` to `$9`: workflow to paused).
fn bind_spec<'q>(
    query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    spec: &'q ScheduleSpec,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    query
        .bind(&spec.workflow)
        .bind(&spec.cron)
        .bind(&spec.timezone)
        .bind(spec.input.to_string())
        .bind(spec.overlap.as_str())
        .bind(spec.catch_up.as_str())
        .bind(spec.catch_up_window.as_millis() as i64)
        .bind(spec.paused as i64)
}

/// What the audit log keeps of a schedule change.
fn spec_detail(s: &Schedule) -> serde_json::Value {
    serde_json::json!({ "workflow": s.spec.workflow, "cron": s.spec.cron })
}

fn schedule_row(r: &sqlx::any::AnyRow) -> Result<Schedule, StoreError> {
    let input: String = r.try_get("input")?;
    let window: i64 = r.try_get("catch_up_window_ms")?;
    let paused: i64 = r.try_get("paused")?;
    let source: String = r.try_get("source")?;
    Ok(Schedule {
        id: r.try_get("id")?,
        spec: ScheduleSpec {
            workflow: r.try_get("workflow")?,
            cron: r.try_get("cron")?,
            timezone: r.try_get("timezone")?,
            input: serde_json::from_str(&input).map_err(|e| StoreError::Corrupt(e.to_string()))?,
            overlap: Overlap::parse(&r.try_get::<String, _>("overlap")?).map_err(corrupt)?,
            catch_up: CatchUp::parse(&r.try_get::<String, _>("catch_up")?).map_err(corrupt)?,
            catch_up_window: Duration::from_millis(window.max(0) as u64),
            paused: paused != 0,
        },
        source: if source == "workflow" {
            Source::Workflow
        } else {
            Source::Api
        },
        created_at: to_time(r.try_get("created_at")?),
        updated_at: to_time(r.try_get("updated_at")?),
        next_fire_at: r.try_get::<Option<i64>, _>("next_fire_at")?.map(to_time),
        last_run_id: r.try_get("last_run_id")?,
        queued_fire_at: r.try_get::<Option<i64>, _>("queued_fire_at")?.map(to_time),
    })
}

impl Store {
    /// Stores a new schedule, and `actor` creating it in the audit log;
    /// `false` (nothing recorded) when its id is taken.
    pub async fn create_schedule(&self, s: &Schedule, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let query = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO schedules ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) \
             ON CONFLICT (id) DO NOTHING"
        )))
        .bind(&s.id);
        let done = bind_spec(query, &s.spec)
            .bind(s.source.as_str())
            .bind(s.created_at.timestamp_millis())
            .bind(s.updated_at.timestamp_millis())
            .bind(ms(s.next_fire_at))
            .bind(s.last_run_id.as_deref())
            .bind(ms(s.queued_fire_at))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        audit::record(&mut tx, actor, "schedule.create", &s.id, &spec_detail(s)).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Replaces what the owner set and where the clock stands (after an
    /// edit, a pause or a resume), and `actor` changing it in the audit log;
    /// `false` (nothing recorded) when the schedule is gone.
    pub async fn update_schedule(&self, s: &Schedule, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let query = sqlx::query(
            "UPDATE schedules SET workflow = $2, cron = $3, timezone = $4, input = $5, overlap = $6, \
             catch_up = $7, catch_up_window_ms = $8, paused = $9, updated_at = $10, next_fire_at = $11 \
             WHERE id = $1",
        )
        .bind(&s.id);
        let done = bind_spec(query, &s.spec)
            .bind(s.updated_at.timestamp_millis())
            .bind(ms(s.next_fire_at))
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        audit::record(&mut tx, actor, "schedule.update", &s.id, &spec_detail(s)).await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Moves a schedule's clock after a scheduler pass. The next fire time
    /// is kept when the owner edited the schedule meanwhile (`updated_at`
    /// changed): the edit computed its own.
    pub async fn advance_schedule(
        &self,
        s: &Schedule,
        next_fire_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE schedules SET last_run_id = $2, queued_fire_at = $3, \
             next_fire_at = CASE WHEN updated_at = $4 THEN $5 ELSE next_fire_at END WHERE id = $1",
        )
        .bind(&s.id)
        .bind(s.last_run_id.as_deref())
        .bind(ms(s.queued_fire_at))
        .bind(s.updated_at.timestamp_millis())
        .bind(ms(next_fire_at))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Deletes a schedule and its fire history, and `actor` deleting it in
    /// the audit log; `false` (nothing recorded) when it did not exist.
    pub async fn delete_schedule(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let Some(row) = sqlx::query("SELECT workflow, cron FROM schedules WHERE id = $1")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?
        else {
            return Ok(false);
        };
        let workflow: String = row.try_get("workflow")?;
        let cron: String = row.try_get("cron")?;
        sqlx::query("DELETE FROM schedule_fires WHERE schedule_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM schedules WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() != 1 {
            return Ok(false);
        }
        let detail = serde_json::json!({ "workflow": workflow, "cron": cron });
        audit::record(&mut tx, actor, "schedule.delete", id, &detail).await?;
        tx.commit().await?;
        Ok(true)
    }

    pub async fn schedule(&self, id: &str) -> Result<Option<Schedule>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM schedules WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(schedule_row).transpose()
    }

    /// Every schedule, or those of one workflow, by id.
    pub async fn list_schedules(
        &self,
        workflow: Option<&str>,
    ) -> Result<Vec<Schedule>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM schedules WHERE ($1 IS NULL OR workflow = $1) ORDER BY id"
        )))
        .bind(workflow)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule_row).collect()
    }

    /// Schedules with a fire time due by `now`, or a queued fire to look at.
    pub async fn due_schedules(&self, now: DateTime<Utc>) -> Result<Vec<Schedule>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM schedules WHERE paused = 0 \
             AND (next_fire_at <= $1 OR queued_fire_at IS NOT NULL) ORDER BY next_fire_at"
        )))
        .bind(now.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(schedule_row).collect()
    }

    /// The earliest fire time of any running schedule, to sleep until.
    pub async fn next_fire_time(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let at: Option<i64> =
            sqlx::query_scalar("SELECT MIN(next_fire_at) FROM schedules WHERE paused = 0")
                .fetch_one(&self.pool)
                .await?;
        Ok(at.map(to_time))
    }

    /// Records what became of a fire time. `false` when it was recorded
    /// already (by this or another scheduler): then nothing must be done.
    pub async fn record_fire(
        &self,
        schedule_id: &str,
        fire_at: DateTime<Utc>,
        outcome: Outcome,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO schedule_fires (schedule_id, fire_at, outcome, reason, run_id, recorded_at) \
             VALUES ($1, $2, $3, $4, NULL, $5) ON CONFLICT (schedule_id, fire_at) DO NOTHING",
        )
        .bind(schedule_id)
        .bind(fire_at.timestamp_millis())
        .bind(outcome.as_str())
        .bind(reason)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Completes a fire's record: the run it started, or why it did not.
    pub async fn settle_fire(
        &self,
        schedule_id: &str,
        fire_at: DateTime<Utc>,
        outcome: Outcome,
        reason: Option<&str>,
        run_id: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE schedule_fires SET outcome = $3, reason = COALESCE($4, reason), run_id = $5, recorded_at = $6 \
             WHERE schedule_id = $1 AND fire_at = $2",
        )
        .bind(schedule_id)
        .bind(fire_at.timestamp_millis())
        .bind(outcome.as_str())
        .bind(reason)
        .bind(run_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Fires recorded as fired whose run was never started (the process
    /// died in between), older than `before`.
    pub async fn unstarted_fires(
        &self,
        before: DateTime<Utc>,
    ) -> Result<Vec<(String, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT schedule_id, fire_at FROM schedule_fires \
             WHERE run_id IS NULL AND outcome = 'fired' AND recorded_at < $1",
        )
        .bind(before.timestamp_millis())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("schedule_id")?, to_time(r.try_get("fire_at")?))))
            .collect()
    }

    /// The latest `limit` fire records of a schedule, newest first.
    pub async fn fires(&self, schedule_id: &str, limit: i64) -> Result<Vec<Fire>, StoreError> {
        let rows = sqlx::query(
            "SELECT fire_at, outcome, reason, run_id, recorded_at FROM schedule_fires \
             WHERE schedule_id = $1 ORDER BY fire_at DESC LIMIT $2",
        )
        .bind(schedule_id)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Fire {
                    fire_at: to_time(r.try_get("fire_at")?),
                    outcome: r.try_get("outcome")?,
                    reason: r.try_get("reason")?,
                    run_id: r.try_get("run_id")?,
                    recorded_at: to_time(r.try_get("recorded_at")?),
                })
            })
            .collect()
    }

    /// How many fires of a schedule ended each way.
    pub async fn fire_counts(&self, schedule_id: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT outcome, COUNT(*) AS n FROM schedule_fires WHERE schedule_id = $1 GROUP BY outcome",
        )
        .bind(schedule_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("outcome")?, r.try_get("n")?)))
            .collect()
    }

    /// Takes or renews the scheduler lease: one process at a time runs the
    /// scheduler, so overlap policies see a consistent history; a dead
    /// leader's lease runs out after `ttl`.
    pub async fn lead_scheduler(&self, owner: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE scheduler_leader SET owner = $1, lease_until = $2 \
             WHERE id = 1 AND (owner = $1 OR owner IS NULL OR lease_until < $3)",
        )
        .bind(owner)
        .bind(now + ttl.as_millis() as i64)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Gives the scheduler lease up at shutdown, so another process takes
    /// over without waiting for it to run out.
    pub async fn resign_scheduler(&self, owner: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE scheduler_leader SET owner = NULL, lease_until = 0 WHERE id = 1 AND owner = $1",
        )
        .bind(owner)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The highest deployed version of `name`, also when another process
    /// deployed it.
    pub async fn latest_version(&self, name: &str) -> Result<Option<u32>, StoreError> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT MAX(version) FROM workflow_versions WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?;
        Ok(v.map(|v| v as u32))
    }
}
