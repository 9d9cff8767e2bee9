//! Group commit: every durable write (a new run, a batch of a run's events)
//! goes through one writer task that commits whatever is queued together,
//! so throughput is not bounded by one fsync per write. A batch that fails
//! is retried one write per transaction, so one bad write cannot fail its
//! neighbours.

use sqlx::{Any, AnyPool, Transaction};
use tokio::sync::{mpsc, oneshot};

use super::StoreError;

/// Writes committed together at most.
const MAX_BATCH: usize = 512;

/// One event row.
pub struct EventRow {
    pub seq: i64,
    pub at: i64,
    pub body: String,
}

/// A new run with its first event.
pub struct CreateRow {
    pub id: String,
    pub workflow: String,
    pub version: i64,
    pub input: String,
    pub idempotency_key: Option<String>,
    pub now: i64,
    pub first_event: String,
}

/// New events of a run and its columns after them.
pub struct AppendRow {
    pub id: String,
    pub events: Vec<EventRow>,
    pub status: &'static str,
    pub output: Option<String>,
    pub error: Option<String>,
    pub now: i64,
    pub finished_at: Option<i64>,
    pub wake_at: Option<i64>,
    pub terminal: bool,
}

pub enum Write {
    /// Answers whether the run was created (false: the id or key exists).
    Create(CreateRow, oneshot::Sender<Result<bool, StoreError>>),
    /// Answers a pending cancel request's reason.
    Append(
        AppendRow,
        oneshot::Sender<Result<Option<String>, StoreError>>,
    ),
}

enum Done {
    Created(bool),
    Appended(Option<String>),
}

/// Starts the writer; it stops when every sender is dropped.
pub fn spawn(pool: AnyPool) -> mpsc::Sender<Write> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(run(pool, rx));
    tx
}

async fn run(pool: AnyPool, mut queue: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        match commit(&pool, &batch).await {
            Ok(results) => {
                for (write, done) in batch.drain(..).zip(results) {
                    reply(write, Ok(done));
                }
            }
            Err(_) => {
                // Find the culprit: each write alone, in its own transaction.
                for write in batch.drain(..) {
                    let result = commit(&pool, std::slice::from_ref(&write))
                        .await
                        .map(|mut r| r.remove(0));
                    reply(write, result);
                }
            }
        }
    }
}

fn reply(write: Write, result: Result<Done, StoreError>) {
    match (write, result) {
        (Write::Create(_, tx), Ok(Done::Created(created))) => {
            let _ = tx.send(Ok(created));
        }
        (Write::Append(_, tx), Ok(Done::Appended(cancel))) => {
            let _ = tx.send(Ok(cancel));
        }
        (Write::Create(_, tx), Err(e)) => {
            let _ = tx.send(Err(e));
        }
        (Write::Append(_, tx), Err(e)) => {
            let _ = tx.send(Err(e));
        }
        _ => unreachable!("a write's result matches its kind"),
    }
}

async fn commit(pool: &AnyPool, batch: &[Write]) -> Result<Vec<Done>, StoreError> {
    let mut tx = pool.begin().await?;
    let mut results = Vec::with_capacity(batch.len());
    for write in batch {
        results.push(match write {
            Write::Create(row, _) => Done::Created(create(&mut tx, row).await?),
            Write::Append(row, _) => Done::Appended(append(&mut tx, row).await?),
        });
    }
    tx.commit().await?;
    Ok(results)
}

async fn create(tx: &mut Transaction<'static, Any>, row: &CreateRow) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO runs (id, workflow, version, status, input, idempotency_key, created_at, updated_at, wake_at) \
         VALUES ($1, $2, $3, 'pending', $4, $5, $6, $6, $6) ON CONFLICT DO NOTHING",
    )
    .bind(&row.id)
    .bind(&row.workflow)
    .bind(row.version)
    .bind(&row.input)
    .bind(&row.idempotency_key)
    .bind(row.now)
    .execute(&mut **tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Ok(false);
    }
    sqlx::query("INSERT INTO run_events (run_id, seq, at, body) VALUES ($1, 1, $2, $3)")
        .bind(&row.id)
        .bind(row.now)
        .bind(&row.first_event)
        .execute(&mut **tx)
        .await?;
    Ok(true)
}

async fn append(
    tx: &mut Transaction<'static, Any>,
    row: &AppendRow,
) -> Result<Option<String>, StoreError> {
    if !row.events.is_empty() {
        // One statement for all of the run's new events.
        let mut sql = String::from("INSERT INTO run_events (run_id, seq, at, body) VALUES ");
        for i in 0..row.events.len() {
            let b = i * 4;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("(${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4));
        }
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for e in &row.events {
            query = query.bind(&row.id).bind(e.seq).bind(e.at).bind(&e.body);
        }
        query.execute(&mut **tx).await?;
    }
    // A finished run gives up its lease here, saving the worker a write.
    let cancel: Option<Option<String>> = sqlx::query_scalar(
        "UPDATE runs SET status = $2, output = $3, error = $4, updated_at = $5, finished_at = $6, \
         wake_at = CASE WHEN $8 = 1 THEN NULL WHEN cancel_requested IS NOT NULL THEN $5 ELSE $7 END, \
         lease_owner = CASE WHEN $8 = 1 THEN NULL ELSE lease_owner END, \
         lease_until = CASE WHEN $8 = 1 THEN NULL ELSE lease_until END \
         WHERE id = $1 RETURNING cancel_requested",
    )
    .bind(&row.id)
    .bind(row.status)
    .bind(&row.output)
    .bind(&row.error)
    .bind(row.now)
    .bind(row.finished_at)
    .bind(row.wake_at)
    .bind(row.terminal as i64)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(cancel.flatten())
}
