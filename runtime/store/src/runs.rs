//! Runs and their histories: creating runs, appending events (both through
//! the group-commit writer), reading runs and events back, cancel requests
//! and counts. A write's events share one `run_events` row (see
//! [`event_rows`]), which is most of what a short run costs the database.
//!
//! The history (`run_events`) has one row per write, not per event: the
//! events of one append (a step's start, its outcome, the run's) share a
//! row whose body is a JSON array of `{seq, at, event}`, and a single event
//! keeps the plain form (the body is the event object, as in rows written
//! before this existed); every reader expands rows back into events. For a
//! short run that is most of the database's work per run (rows, index
//! entries, WAL records: 24 → 18 per one-step run on PostgreSQL). The
//! idempotency index is partial (only runs with a key).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;

use steward_core::run::{Event, ParentLink, Recorded, RunState, Status, StepError};

use crate::{Store, StoreError, audit, now_ms, to_time, writer};

/// A run as stored: the columns callers list and filter on.
#[derive(Debug, Clone)]
pub struct RunRow {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub status: String,
    pub input: Value,
    pub output: Option<Value>,
    pub error: Option<StepError>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Who started it: a token's subject, `hook:NAME` or `schedule:ID`
    /// (`None` for runs from before this was recorded). Approvals use it
    /// to keep people from approving their own requests.
    pub started_by: Option<String>,
    /// The run this one repeats, when it was started as its rerun.
    pub rerun_of: Option<String>,
}

/// What a cancel request found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelRequest {
    Requested,
    AlreadyFinished(String),
    NotFound,
}

/// A run to create, with its first event.
pub struct NewRun<'a> {
    pub id: &'a str,
    pub workflow: &'a str,
    pub version: u32,
    pub input: &'a Value,
    pub idempotency_key: Option<&'a str>,
    /// Who starts it (see [`RunRow::started_by`]).
    pub started_by: Option<&'a str>,
    /// The run this one repeats (`POST /v1/runs/{id}/rerun`).
    pub rerun_of: Option<&'a str>,
    /// The run whose `workflow:` step starts this one.
    pub parent: Option<&'a ParentLink>,
    /// Create it already claimed by this worker for this long, so the
    /// process that accepted it can drive it without a claim and a reload.
    pub lease: Option<(&'a str, Duration)>,
    pub placement: Placement,
}

pub use steward_core::workflow::Placement;

/// One of several events written together, packed in one `run_events`
/// row's body (see [`event_rows`]).
#[derive(serde::Serialize, serde::Deserialize)]
struct PackedEvent<E> {
    seq: u64,
    at: i64,
    event: E,
}

/// The `run_events` rows of one write. The events of a write (a step's
/// start, its outcome and the run's, say) share one row, its `seq` and `at`
/// the first event's and its body a JSON array of [`PackedEvent`]s: one
/// heap tuple and one index entry per write, not per event, which is most
/// of what a short run costs the database. A single event keeps the plain
/// form (its body is the event, a JSON object), as every row did before.
pub(crate) fn event_rows(events: &[Recorded]) -> Vec<writer::EventRow> {
    let body = match events {
        [] => return Vec::new(),
        [one] => serde_json::to_string(&one.event),
        several => serde_json::to_string(
            &several
                .iter()
                .map(|e| PackedEvent {
                    seq: e.seq,
                    at: e.at.timestamp_millis(),
                    event: &e.event,
                })
                .collect::<Vec<_>>(),
        ),
    };
    vec![writer::EventRow {
        seq: events[0].seq as i64,
        at: events[0].at.timestamp_millis(),
        body: body.expect("events serialise"),
    }]
}

/// The events of one `run_events` row (`seq`, `at`, `body`): one, or the
/// several of one write.
pub(crate) fn row_events(row: &sqlx::any::AnyRow) -> Result<Vec<Recorded>, StoreError> {
    let body: String = row.try_get("body")?;
    let corrupt = |e: serde_json::Error| StoreError::Corrupt(format!("a run event: {e}"));
    if body.starts_with('[') {
        let packed: Vec<PackedEvent<Event>> = serde_json::from_str(&body).map_err(corrupt)?;
        return Ok(packed
            .into_iter()
            .map(|p| Recorded {
                seq: p.seq,
                at: to_time(p.at),
                event: p.event,
            })
            .collect());
    }
    Ok(vec![Recorded {
        seq: row.try_get::<i64, _>("seq")? as u64,
        at: to_time(row.try_get("at")?),
        event: serde_json::from_str(&body).map_err(corrupt)?,
    }])
}

fn run_row(r: &sqlx::any::AnyRow) -> Result<RunRow, StoreError> {
    let json = |text: Option<String>| -> Result<Option<Value>, StoreError> {
        text.map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()
    };
    let error: Option<String> = r.try_get("error")?;
    Ok(RunRow {
        id: r.try_get("id")?,
        workflow: r.try_get("workflow")?,
        version: r.try_get::<i64, _>("version")? as u32,
        status: r.try_get("status")?,
        input: json(Some(r.try_get("input")?))?.unwrap_or_default(),
        output: json(r.try_get("output")?)?,
        error: error
            .map(|e| serde_json::from_str(&e).map_err(|e| StoreError::Corrupt(e.to_string())))
            .transpose()?,
        created_at: to_time(r.try_get("created_at")?),
        finished_at: r.try_get::<Option<i64>, _>("finished_at")?.map(to_time),
        started_by: r.try_get("started_by")?,
        rerun_of: r.try_get("rerun_of")?,
    })
}

impl Store {
    /// Creates a run and its `run_started` event in one transaction. With an
    /// idempotency key already used for this workflow, returns that run
    /// instead (`false`: nothing was created).
    pub async fn create_run(&self, new: NewRun<'_>) -> Result<(RunRow, bool), StoreError> {
        if let Some(key) = new.idempotency_key
            && let Some(existing) = self.run_by_key(new.workflow, key).await?
        {
            return Ok((existing, false));
        }
        let now = now_ms();
        let first_event = serde_json::to_string(&Event::RunStarted {
            input: new.input.clone(),
            parent: new.parent.cloned(),
        })
        .expect("events serialise");
        let row = writer::CreateRow {
            id: new.id.to_string(),
            workflow: new.workflow.to_string(),
            version: new.version as i64,
            input: new.input.to_string(),
            idempotency_key: new.idempotency_key.map(str::to_string),
            started_by: new.started_by.map(str::to_string),
            rerun_of: new.rerun_of.map(str::to_string),
            now,
            first_event,
            lease: new
                .lease
                .map(|(owner, d)| (owner.to_string(), now + d.as_millis() as i64)),
            placement: new.placement.clone(),
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(writer::Write::Create(row, reply)).await?;
        let created = answer.await.map_err(|_| StoreError::WriterGone)??;
        if !created {
            // Lost a race on the idempotency key: the winner's run is the answer.
            if let Some(key) = new.idempotency_key
                && let Some(existing) = self.run_by_key(new.workflow, key).await?
            {
                return Ok((existing, false));
            }
            return Err(StoreError::Corrupt(format!(
                "run {} exists already",
                new.id
            )));
        }
        if new.lease.is_none() {
            self.announce();
        }
        let row = RunRow {
            id: new.id.to_string(),
            workflow: new.workflow.to_string(),
            version: new.version,
            status: Status::Pending.as_str().to_string(),
            input: new.input.clone(),
            output: None,
            error: None,
            created_at: to_time(now),
            finished_at: None,
            started_by: new.started_by.map(str::to_string),
            rerun_of: new.rerun_of.map(str::to_string),
        };
        Ok((row, true))
    }

    async fn submit(&self, write: writer::Write) -> Result<(), StoreError> {
        self.writer
            .send(write)
            .await
            .map_err(|_| StoreError::WriterGone)
    }

    async fn run_by_key(&self, workflow: &str, key: &str) -> Result<Option<RunRow>, StoreError> {
        let id: Option<String> =
            sqlx::query_scalar("SELECT id FROM runs WHERE workflow = $1 AND idempotency_key = $2")
                .bind(workflow)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        match id {
            Some(id) => self.run(&id).await,
            None => Ok(None),
        }
    }

    /// Whether a run with this id exists (a cursor check, without reading
    /// the run's input and output).
    pub async fn run_exists(&self, id: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar("SELECT 1 FROM runs WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(found.is_some())
    }

    pub async fn run(&self, id: &str) -> Result<Option<RunRow>, StoreError> {
        let row = sqlx::query(
            "SELECT id, workflow, version, status, input, output, error,
                    created_at, finished_at, started_by, rerun_of
             FROM runs
             WHERE id = $1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_row).transpose()
    }

    /// Runs, newest first, optionally of one workflow and one status,
    /// starting after the run `after` (the previous page's last id: run ids
    /// are UUIDv7, so they sort by creation time).
    pub async fn list_runs(
        &self,
        workflow: Option<&str>,
        status: Option<Status>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<RunRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, workflow, version, status, input, output, error,
                    created_at, finished_at, started_by, rerun_of
             FROM runs
             WHERE ($1 IS NULL OR workflow = $1)
               AND ($2 IS NULL OR status = $2)
               AND ($3 IS NULL OR id < $3)
             ORDER BY id DESC
             LIMIT $4",
        )
        .bind(workflow)
        .bind(status.map(Status::as_str))
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_row).collect()
    }

    /// The run's whole history, in order.
    pub async fn events(&self, run_id: &str) -> Result<Vec<Recorded>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, at, body FROM run_events WHERE run_id = $1 ORDER BY seq")
                .bind(run_id)
                .fetch_all(&self.pool)
                .await?;
        let mut history = Vec::with_capacity(rows.len());
        for r in rows {
            history.extend(row_events(&r)?);
        }
        Ok(history)
    }

    /// Appends events and updates the run's columns from `state`, in one
    /// transaction: a step's result is durable before the next step starts.
    /// `wake_at` is when the run next needs a worker (`None` when finished).
    /// Returns the reason of a pending cancel request, if any.
    ///
    /// With `owner`, the write happens only while that worker still holds
    /// the run's lease; otherwise it fails with [`StoreError::LeaseLost`] and
    /// writes nothing, so a worker that lost a run cannot add to its history.
    pub async fn append(
        &self,
        state: &RunState,
        events: &[Recorded],
        wake_at: Option<DateTime<Utc>>,
        owner: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let terminal = state.status.is_terminal();
        let row = writer::AppendRow {
            id: state.id.clone(),
            events: event_rows(events),
            status: state.status.as_str(),
            output: state.output.as_ref().map(|o| o.to_string()),
            error: state
                .error
                .as_ref()
                .map(|e| serde_json::to_string(e).expect("errors serialise")),
            now: now_ms(),
            finished_at: state
                .finished_at
                .filter(|_| terminal)
                .map(|t| t.timestamp_millis()),
            wake_at: if terminal {
                None
            } else {
                wake_at.map(|t| t.timestamp_millis())
            },
            terminal,
            owner: owner.map(str::to_string),
            sla: state.sla.as_ref().filter(|_| terminal).map(|sla| {
                (
                    sla.priority.clone(),
                    sla.target_ms.map(|t| t as i64),
                    sla.breached,
                )
            }),
        };
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.submit(writer::Write::Append(row, reply)).await?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Asks for a run to be cancelled: recorded for the worker driving it,
    /// and the run made due so a parked one is picked up at once; logged as
    /// `actor` cancelling it when the request took, and only then.
    pub async fn request_cancel(
        &self,
        id: &str,
        reason: &str,
        actor: &str,
    ) -> Result<CancelRequest, StoreError> {
        let mut tx = self.begin_write().await?;
        let updated = sqlx::query(
            "UPDATE runs SET cancel_requested = $2, wake_at = $3
             WHERE id = $1
               AND status NOT IN ('succeeded', 'failed', 'rejected', 'cancelled')",
        )
        .bind(id)
        .bind(reason)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        if updated.rows_affected() == 1 {
            let detail = serde_json::json!({"reason": reason});
            audit::record(&mut tx, actor, "run.cancel", id, &detail).await?;
            tx.commit().await?;
            self.announce();
            return Ok(CancelRequest::Requested);
        }
        tx.rollback().await?;
        Ok(match self.run(id).await? {
            Some(row) => CancelRequest::AlreadyFinished(row.status),
            None => CancelRequest::NotFound,
        })
    }

    /// Makes a waiting run due at once, for news it must read (its
    /// sub-workflow finished): like a decision, it is kept due even if the
    /// run's worker parks it a moment later.
    pub async fn nudge(&self, id: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE runs SET attention = 1, wake_at = $2 \
             WHERE id = $1 AND status NOT IN ('succeeded', 'failed', 'rejected', 'cancelled')",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        self.announce();
        Ok(())
    }

    /// The reason of a pending cancel request.
    pub async fn cancel_requested(&self, id: &str) -> Result<Option<String>, StoreError> {
        let reason: Option<Option<String>> =
            sqlx::query_scalar("SELECT cancel_requested FROM runs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(reason.flatten())
    }

    /// Runs not finished, per status (pending, running, waiting), for the
    /// queue-depth metric: read through the index of open runs, so a
    /// scrape costs the open runs, not the history (the literal list is
    /// what lets SQLite use that partial index).
    pub async fn count_open(&self) -> Result<Vec<(Status, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*)
             FROM runs
             WHERE status IN ('pending', 'running', 'waiting')
             GROUP BY status",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok([Status::Pending, Status::Running, Status::Waiting]
            .into_iter()
            .map(|status| {
                let runs = rows
                    .iter()
                    .find(|(s, _)| s == status.as_str())
                    .map_or(0, |(_, n)| *n);
                (status, runs)
            })
            .collect())
    }

    /// Counts runs per status, for tests and metrics.
    pub async fn count_by_status(&self, status: Status) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM runs WHERE status = $1")
                .bind(status.as_str())
                .fetch_one(&self.pool)
                .await?,
        )
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::StoreOptions;

    /// A new run of version 1 of workflow `demo`, unleased and keyless.
    pub(crate) fn demo_run<'a>(id: &'a str, input: &'a Value) -> NewRun<'a> {
        NewRun {
            id,
            workflow: "demo",
            version: 1,
            input,
            idempotency_key: None,
            started_by: None,
            rerun_of: None,
            parent: None,
            lease: None,
            placement: Placement::default(),
        }
    }

    /// The events of one write share a `run_events` row; every reader
    /// gets them back one by one, in order, beside rows of a single event.
    #[tokio::test]
    async fn the_events_of_one_write_share_a_row_and_read_back_one_by_one() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/steward.db", dir.path().display());
        let store = Store::open(&url, StoreOptions::default()).await.unwrap();
        let input = serde_json::json!({"ticket": "INC0001"});
        store.create_run(demo_run("r1", &input)).await.unwrap();
        let mut state = RunState::new("r1", "demo", 1, Utc::now());
        let step = |seq, event| Recorded::at(seq, Utc::now(), event);
        let together = vec![
            step(
                2,
                Event::StepStarted {
                    step: "a".into(),
                    attempt: 1,
                    input: input.clone(),
                },
            ),
            step(
                3,
                Event::StepSucceeded {
                    step: "a".into(),
                    attempt: 1,
                    output: serde_json::json!([1, 2]),
                },
            ),
        ];
        let alone = vec![step(4, Event::StepSkipped { step: "b".into() })];
        for write in [&together, &alone] {
            for e in write.iter() {
                state.apply(e);
            }
            // Due at once, so the claim below takes it.
            store
                .append(&state, write, Some(Utc::now()), None)
                .await
                .unwrap();
        }

        let history = store.events("r1").await.unwrap();
        let seqs: Vec<u64> = history.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        assert_eq!(history[1..], [together.clone(), alone.clone()].concat()[..]);
        let claimed = store
            .claim_due_runs("w1", Duration::from_secs(30), 10, &[])
            .await
            .unwrap();
        assert_eq!(
            claimed[0].history, history,
            "a claim reads the same history"
        );
        let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM run_events")
            .fetch_one(&store.pool)
            .await
            .unwrap();
        assert_eq!(rows, 3, "one row per write: the start, the pair, the skip");
    }
}
