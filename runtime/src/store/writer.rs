//! Group commit: every durable write (a new run, a batch of a run's events)
//! goes through one writer task that commits whatever is queued together,
//! so throughput is not bounded by one fsync per write. A batch that fails
//! is retried one write per transaction, so one bad write cannot fail its
//! neighbours.

use sqlx::AnyPool;
use tokio::sync::{mpsc, oneshot};

use super::{Backend, StoreError};

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
    /// Created already claimed by this worker (owner, lease end).
    pub lease: Option<(String, i64)>,
    pub placement: super::Placement,
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
    /// Write only while this worker holds the run's lease.
    pub owner: Option<String>,
    /// A finished run's SLA outcome: priority, target, breached.
    pub sla: Option<(String, Option<i64>, bool)>,
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
    LeaseLost(String),
}

/// Starts the writer; it stops when every sender is dropped.
pub fn spawn(pool: AnyPool, backend: Backend) -> mpsc::Sender<Write> {
    let (tx, rx) = mpsc::channel(4096);
    tokio::spawn(run(pool, backend, rx));
    tx
}

async fn run(pool: AnyPool, backend: Backend, mut queue: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.recv().await {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        match commit(&pool, backend, &batch).await {
            Ok(results) => {
                for (write, done) in batch.drain(..).zip(results) {
                    reply(write, Ok(done));
                }
            }
            Err(_) => {
                // Find the culprit: each write alone, in its own transaction.
                for write in batch.drain(..) {
                    let result = commit(&pool, backend, std::slice::from_ref(&write))
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
        (Write::Append(_, tx), Ok(Done::LeaseLost(id))) => {
            let _ = tx.send(Err(StoreError::LeaseLost(id)));
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

/// Rows per multi-row statement, well under every bind-parameter limit.
const ROWS_PER_STATEMENT: usize = 1000;

/// Commits a batch with a handful of statements, whatever its size: one
/// INSERT of new runs, one INSERT of all events, one UPDATE of all runs.
async fn commit(
    pool: &AnyPool,
    backend: Backend,
    batch: &[Write],
) -> Result<Vec<Done>, StoreError> {
    let mut tx = pool.begin().await?;
    let creates: Vec<&CreateRow> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Create(row, _) => Some(row),
            Write::Append(..) => None,
        })
        .collect();
    let appends: Vec<&AppendRow> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Append(row, _) => Some(row),
            Write::Create(..) => None,
        })
        .collect();

    let mut created = std::collections::HashSet::new();
    for chunk in creates.chunks(ROWS_PER_STATEMENT / 12) {
        let sql = format!(
            "INSERT INTO runs (id, workflow, version, status, input, idempotency_key, created_at, updated_at, wake_at, \
             lease_owner, lease_until, required_tags, concurrency_limit) VALUES {} ON CONFLICT DO NOTHING RETURNING id",
            placeholders(backend, chunk.len(), 12, |p| format!(
                "({}, {}, {}, 'pending', {}, {}, {}, {}, {}, {}, {}, {}, {})",
                p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8], p[9], p[10], p[11]
            ))
        );
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            query = query
                .bind(&row.id)
                .bind(&row.workflow)
                .bind(row.version)
                .bind(&row.input)
                .bind(&row.idempotency_key)
                .bind(row.now)
                .bind(row.now)
                .bind(row.now)
                .bind(row.lease.as_ref().map(|l| l.0.clone()))
                .bind(row.lease.as_ref().map(|l| l.1))
                .bind(&row.placement.tags)
                .bind(row.placement.concurrency.map(i64::from));
        }
        created.extend(query.fetch_all(&mut *tx).await?);
    }

    let mut cancels = std::collections::HashMap::new();
    for chunk in appends.chunks(ROWS_PER_STATEMENT / 9) {
        // VALUES columns are column1..column9 in both SQLite and PostgreSQL.
        // A run whose lease another worker holds is not updated (and gets
        // no events below): the caller learns it lost the run.
        // A finished run gives up its lease here, saving the worker a write.
        let sql = format!(
            "UPDATE runs SET status = v.column2, output = v.column3, error = v.column4, updated_at = v.column5, \
             finished_at = v.column6, \
             wake_at = CASE WHEN v.column8 = 1 THEN NULL \
               WHEN runs.cancel_requested IS NOT NULL OR runs.attention = 1 THEN v.column5 ELSE v.column7 END, \
             attention = CASE WHEN v.column7 IS NULL OR v.column7 > v.column5 THEN 0 ELSE runs.attention END, \
             lease_owner = CASE WHEN v.column8 = 1 THEN NULL ELSE runs.lease_owner END, \
             lease_until = CASE WHEN v.column8 = 1 THEN NULL ELSE runs.lease_until END \
             FROM (VALUES {}) AS v WHERE runs.id = v.column1 \
             AND (v.column9 IS NULL OR runs.lease_owner = v.column9) RETURNING runs.id, runs.cancel_requested",
            placeholders(backend, chunk.len(), 9, |p| format!("({})", p.join(", ")))
        );
        let mut query = sqlx::query_as::<_, (String, Option<String>)>(sqlx::AssertSqlSafe(sql));
        for row in chunk {
            query = query
                .bind(&row.id)
                .bind(row.status)
                .bind(&row.output)
                .bind(&row.error)
                .bind(row.now)
                .bind(row.finished_at)
                .bind(row.wake_at)
                .bind(row.terminal as i64)
                .bind(&row.owner);
        }
        cancels.extend(query.fetch_all(&mut *tx).await?);
    }
    let mut events: Vec<(&str, i64, i64, &str)> = Vec::new();
    for row in creates.iter().filter(|r| created.contains(&r.id)) {
        events.push((&row.id, 1, row.now, &row.first_event));
    }
    for row in appends.iter().filter(|r| cancels.contains_key(&r.id)) {
        events.extend(
            row.events
                .iter()
                .map(|e| (row.id.as_str(), e.seq, e.at, e.body.as_str())),
        );
    }
    for chunk in events.chunks(ROWS_PER_STATEMENT) {
        let sql = format!(
            "INSERT INTO run_events (run_id, seq, at, body) VALUES {}",
            placeholders(backend, chunk.len(), 4, |p| format!(
                "({}, {}, {}, {})",
                p[0], p[1], p[2], p[3]
            ))
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for (run, seq, at, body) in chunk {
            query = query.bind(*run).bind(*seq).bind(*at).bind(*body);
        }
        query.execute(&mut *tx).await?;
    }

    for row in appends.iter().filter(|r| cancels.contains_key(&r.id)) {
        if let Some((priority, target, breached)) = &row.sla {
            sqlx::query(
                "UPDATE runs SET sla_priority = $2, sla_target_ms = $3, sla_breached = $4, \
                 sla_resolution_ms = CASE WHEN status = 'succeeded' THEN finished_at - created_at END \
                 WHERE id = $1",
            )
            .bind(&row.id)
            .bind(priority)
            .bind(*target)
            .bind(*breached as i64)
            .execute(&mut *tx)
            .await?;
        }
    }

    tx.commit().await?;

    Ok(batch
        .iter()
        .map(|w| match w {
            Write::Create(row, _) => Done::Created(created.contains(&row.id)),
            Write::Append(row, _) => match cancels.get(&row.id) {
                Some(cancel) => Done::Appended(cancel.clone()),
                None => Done::LeaseLost(row.id.clone()),
            },
        })
        .collect())
}

/// `rows` groups of `per_row` placeholders, each group shaped by `shape`,
/// joined with commas. Every placeholder is used once, in bind order: SQLite
/// gets plain `?`, since sqlx resolves each `$N` there by scanning parameter
/// names, which is quadratic in a statement of thousands of parameters.
fn placeholders(
    backend: Backend,
    rows: usize,
    per_row: usize,
    shape: impl Fn(&[String]) -> String,
) -> String {
    (0..rows)
        .map(|r| {
            let p: Vec<String> = (1..=per_row)
                .map(|i| match backend {
                    Backend::Sqlite => "?".to_string(),
                    Backend::Postgres => format!("${}", r * per_row + i),
                })
                .collect();
            shape(&p)
        })
        .collect::<Vec<_>>()
        .join(", ")
}
