//! Group commit: every durable write (a new run, a batch of a run's events)
//! goes through one writer task that commits whatever is queued together,
//! so throughput is not bounded by one fsync per write. A batch that fails,
//! or in which one write did not apply, is retried one write per
//! transaction, so one bad write cannot fail its neighbours.

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, Row};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
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
    // The connection is kept from one batch to the next while writes keep
    // coming: sqlx pings a connection each time it goes back to the pool, a
    // round trip per batch otherwise. It goes back when the queue runs dry
    // (so the pool can close) and after any error (the pool then tests it).
    let mut held: Option<PoolConnection<Any>> = None;
    loop {
        let first = match queue.try_recv() {
            Ok(write) => write,
            Err(_) => {
                held = None;
                match queue.recv().await {
                    Some(write) => write,
                    None => return,
                }
            }
        };
        batch.push(first);
        // The writers answered by the last commit are mostly runnable, not
        // yet queued: turns of the scheduler let them join this batch
        // instead of making small ones of their own, for as long as each
        // turn brings more (at once, when nothing else is coming).
        loop {
            tokio::task::yield_now().await;
            let before = batch.len();
            while batch.len() < MAX_BATCH {
                match queue.try_recv() {
                    Ok(write) => batch.push(write),
                    Err(_) => break,
                }
            }
            if batch.len() == before || batch.len() == MAX_BATCH {
                break;
            }
        }
        match commit(&pool, &mut held, backend, &batch).await {
            Ok(Some(results)) => {
                for (write, done) in batch.drain(..).zip(results) {
                    reply(write, Ok(done));
                }
            }
            Ok(None) | Err(_) => {
                // Find the culprit: each write alone, in its own transaction.
                for write in batch.drain(..) {
                    let result = commit(&pool, &mut held, backend, std::slice::from_ref(&write))
                        .await
                        .map(|r| r.expect("a write alone is always answered").remove(0));
                    let result = match (&write, result) {
                        // A keyless run's INSERT has no conflict clause: an
                        // id taken after all fails it, which means "not created".
                        (
                            Write::Create(..),
                            Err(StoreError::Database(sqlx::Error::Database(e))),
                        ) if e.is_unique_violation() => Ok(Done::Created(false)),
                        (_, result) => result,
                    };
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

/// Rows per multi-row statement of each kind, powers of two well under
/// every bind-parameter limit.
const CREATE_ROWS: usize = 64;
const APPEND_ROWS: usize = 64;
const EVENT_ROWS: usize = 256;
const CANCEL_ROWS: usize = 512;

/// The columns of an append's VALUES row, in [`append_sql`]'s order.
const APPEND_COLS: [Col; 12] = {
    use Col::{Int, Text};
    [
        Text, Text, Text, Text, Int, Int, Int, Int, Text, Text, Int, Int,
    ]
};

/// [`commit_on`] the held connection, taking one from the pool first if
/// none is held; a connection that failed goes back to the pool, which
/// tests it before lending it again.
async fn commit(
    pool: &AnyPool,
    held: &mut Option<PoolConnection<Any>>,
    backend: Backend,
    batch: &[Write],
) -> Result<Option<Vec<Done>>, StoreError> {
    let conn = match held {
        Some(conn) => conn,
        None => held.insert(pool.acquire().await?),
    };
    let result = commit_on(conn, backend, batch).await;
    if result.is_err() {
        *held = None;
    }
    result
}

/// Commits a batch with a handful of statements, whatever its size: one
/// INSERT of new runs, one UPDATE of all runs, one INSERT of all events and,
/// on SQLite, one SELECT of pending cancels. On SQLite no statement returns
/// a row per write (each returned row is a hand-off between threads); row
/// counts tell whether every write applied. When one did not (an id or
/// idempotency key taken, a lease lost), a batch answers `None` and is
/// rolled back, and the caller commits each write alone, where the count
/// says which.
async fn commit_on(
    conn: &mut AnyConnection,
    backend: Backend,
    batch: &[Write],
) -> Result<Option<Vec<Done>>, StoreError> {
    use Col::{Int, Text};
    let alone = batch.len() == 1;
    let mut tx = conn.begin().await?;
    let creates: Vec<&CreateRow> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Create(row, _) => Some(row),
            Write::Append(..) => None,
        })
        .collect();
    let mut appends: Vec<&AppendRow> = batch
        .iter()
        .filter_map(|w| match w {
            Write::Append(row, _) => Some(row),
            Write::Create(..) => None,
        })
        .collect();
    // Rows locked in one order (by id, as an `IN` list locks them) by every
    // statement that locks several: two such transactions cannot deadlock.
    appends.sort_unstable_by(|a, b| a.id.cmp(&b.id));

    // A run with an idempotency key may lose a race for it: its INSERT
    // skips a taken key (`ON CONFLICT DO NOTHING`, told by the row count).
    // A keyless run has a fresh id nothing else holds, and a plain INSERT
    // spares PostgreSQL the speculative insertion (a probe of every unique
    // index and a confirmation record per row); were its id taken after
    // all, the batch fails and is retried write by write like any other.
    let (keyed, keyless): (Vec<&CreateRow>, Vec<&CreateRow>) = creates
        .iter()
        .partition(|row| row.idempotency_key.is_some());
    let mut all_created = true;
    for (chunk, conflict) in keyless.chunks(CREATE_ROWS).map(|c| (c, "")).chain(
        keyed
            .chunks(CREATE_ROWS)
            .map(|c| (c, " ON CONFLICT DO NOTHING")),
    ) {
        const COLS: [Col; 10] = [Text, Text, Int, Text, Text, Int, Text, Int, Text, Int];
        let kind = if conflict.is_empty() {
            "create"
        } else {
            "create-keyed"
        };
        let sql = statement(kind, backend, chunk.len(), |rows| {
            format!(
                "INSERT INTO runs (id, workflow, version, status, input, idempotency_key, created_at, updated_at, wake_at, \
                 lease_owner, lease_until, required_tags, concurrency_limit) \
                 SELECT column1, column2, column3, 'pending', column4, column5, column6, column6, column6, \
                 column7, column8, column9, column10 FROM (VALUES {}) AS v WHERE column1 IS NOT NULL{conflict}",
                values(backend, rows, COLS.len())
            )
        });
        let mut query = sqlx::query(sql);
        for row in chunk {
            query = query
                .bind(&row.id)
                .bind(&row.workflow)
                .bind(row.version)
                .bind(&row.input)
                .bind(&row.idempotency_key)
                .bind(row.now)
                .bind(row.lease.as_ref().map(|l| l.0.clone()))
                .bind(row.lease.as_ref().map(|l| l.1))
                .bind(&row.placement.tags)
                .bind(row.placement.concurrency.map(i64::from));
        }
        let query = pad(query, &COLS, chunk.len());
        if query.execute(&mut *tx).await?.rows_affected() != chunk.len() as u64 {
            if !alone {
                return Ok(None);
            }
            all_created = false;
        }
    }

    let mut all_applied = true;
    let mut cancels = HashMap::new();
    for chunk in appends.chunks(APPEND_ROWS) {
        let sql = statement("append", backend, chunk.len(), |rows| {
            append_sql(backend, rows)
        });
        let mut query = sqlx::query(sql);
        for row in chunk {
            let sla = row.sla.as_ref();
            query = query
                .bind(&row.id)
                .bind(row.status)
                .bind(&row.output)
                .bind(&row.error)
                .bind(row.now)
                .bind(row.finished_at)
                .bind(row.wake_at)
                .bind(row.terminal as i64)
                .bind(&row.owner)
                .bind(sla.map(|s| s.0.clone()))
                .bind(sla.and_then(|s| s.1))
                .bind(sla.map(|s| s.2 as i64));
        }
        let query = pad(query, &APPEND_COLS, chunk.len());
        let applied = match backend {
            // Rows come back in the statement's one response here.
            Backend::Postgres => {
                let rows = query.fetch_all(&mut *tx).await?;
                for row in &rows {
                    if let Some(reason) = row.try_get::<Option<String>, _>(1)? {
                        cancels.insert(row.try_get::<String, _>(0)?, reason);
                    }
                }
                rows.len() as u64
            }
            Backend::Sqlite => query.execute(&mut *tx).await?.rows_affected(),
        };
        if applied != chunk.len() as u64 {
            if !alone {
                return Ok(None);
            }
            all_applied = false;
        }
    }

    let mut events: Vec<(&str, i64, i64, &str)> = Vec::new();
    if all_created {
        for row in &creates {
            events.push((&row.id, 1, row.now, &row.first_event));
        }
    }
    if all_applied {
        for row in &appends {
            events.extend(
                row.events
                    .iter()
                    .map(|e| (row.id.as_str(), e.seq, e.at, e.body.as_str())),
            );
        }
    }
    for chunk in events.chunks(EVENT_ROWS) {
        const COLS: [Col; 4] = [Text, Int, Int, Text];
        let sql = statement("events", backend, chunk.len(), |rows| {
            format!(
                "INSERT INTO run_events (run_id, seq, at, body) \
                 SELECT column1, column2, column3, column4 FROM (VALUES {}) AS v WHERE column1 IS NOT NULL",
                values(backend, rows, COLS.len())
            )
        });
        let mut query = sqlx::query(sql);
        for (run, seq, at, body) in chunk {
            query = query.bind(*run).bind(*seq).bind(*at).bind(*body);
        }
        pad(query, &COLS, chunk.len()).execute(&mut *tx).await?;
    }

    // Cancel requests are rare: on SQLite, one lookup for the batch, by
    // primary key (PostgreSQL's UPDATE returned them).
    if all_applied && backend == Backend::Sqlite {
        for chunk in appends.chunks(CANCEL_ROWS) {
            let sql = statement("cancels", backend, chunk.len(), |rows| {
                format!(
                    "SELECT id, cancel_requested FROM runs WHERE cancel_requested IS NOT NULL AND id IN {}",
                    values(backend, 1, rows)
                )
            });
            let mut query = sqlx::query_as::<_, (String, String)>(sql);
            for row in chunk {
                query = query.bind(&row.id);
            }
            for _ in chunk.len()..chunk.len().next_power_of_two() {
                query = query.bind(None::<String>);
            }
            cancels.extend(query.fetch_all(&mut *tx).await?);
        }
    }

    tx.commit().await?;

    Ok(Some(
        batch
            .iter()
            .map(|w| match w {
                Write::Create(..) => Done::Created(all_created),
                Write::Append(row, _) if all_applied => Done::Appended(cancels.remove(&row.id)),
                Write::Append(row, _) => Done::LeaseLost(row.id.clone()),
            })
            .collect(),
    ))
}

/// The UPDATE that applies `rows` appends (padded, see [`values`]): VALUES
/// columns are column1..column12 in both SQLite and PostgreSQL. A run whose
/// lease another worker holds is not updated (and gets no events): the
/// caller learns it lost the run. A finished run gives up its lease here,
/// saving the worker a write, and records its SLA outcome (column10..12)
/// for reports.
pub(super) fn append_sql(backend: Backend, rows: usize) -> String {
    format!(
        "UPDATE runs SET status = v.column2, output = v.column3, error = v.column4, updated_at = v.column5, \
         finished_at = v.column6, \
         wake_at = CASE WHEN v.column8 = 1 THEN NULL \
           WHEN runs.cancel_requested IS NOT NULL OR runs.attention = 1 THEN v.column5 ELSE v.column7 END, \
         attention = CASE WHEN v.column7 IS NULL OR v.column7 > v.column5 THEN 0 ELSE runs.attention END, \
         lease_owner = CASE WHEN v.column8 = 1 THEN NULL ELSE runs.lease_owner END, \
         lease_until = CASE WHEN v.column8 = 1 THEN NULL ELSE runs.lease_until END, \
         sla_priority = CASE WHEN v.column10 IS NULL THEN runs.sla_priority ELSE v.column10 END, \
         sla_target_ms = CASE WHEN v.column10 IS NULL THEN runs.sla_target_ms ELSE v.column11 END, \
         sla_breached = CASE WHEN v.column10 IS NULL THEN runs.sla_breached ELSE v.column12 END, \
         sla_resolution_ms = CASE WHEN v.column10 IS NULL THEN runs.sla_resolution_ms \
           WHEN v.column2 = 'succeeded' THEN v.column6 - runs.created_at END \
         FROM (VALUES {}) AS v WHERE runs.id = v.column1 \
         AND (v.column9 IS NULL OR runs.lease_owner = v.column9){}",
        values(backend, rows, APPEND_COLS.len()),
        match backend {
            Backend::Postgres => " RETURNING runs.id, runs.cancel_requested",
            Backend::Sqlite => "",
        }
    )
}

/// The text of a batch statement of `kind` for `rows` rows, padded to the
/// next power of two as [`values`] pads them: built once per process, not
/// per batch (a statement of 64 rows is kilobytes of placeholders, built
/// on the writer's one serial path).
fn statement(
    kind: &'static str,
    backend: Backend,
    rows: usize,
    build: impl FnOnce(usize) -> String,
) -> sqlx::AssertSqlSafe<Arc<str>> {
    type Texts = HashMap<(&'static str, Backend, usize), Arc<str>>;
    static TEXTS: LazyLock<Mutex<Texts>> = LazyLock::new(Default::default);
    let rows = rows.next_power_of_two();
    let mut texts = TEXTS.lock().unwrap();
    let text = texts
        .entry((kind, backend, rows))
        .or_insert_with(|| build(rows).into());
    sqlx::AssertSqlSafe(text.clone())
}

/// PostgreSQL's names for an append row's parameter types, in order, for
/// preparing the append by hand (the hot-plan test in `store`).
#[cfg(test)]
pub(super) fn append_types() -> impl Iterator<Item = &'static str> {
    APPEND_COLS.iter().map(|col| match col {
        Col::Text => "text",
        Col::Int => "bigint",
    })
}

/// A column's type, for binding the NULLs of a padding row.
#[derive(Clone, Copy)]
enum Col {
    Text,
    Int,
}

/// The VALUES rows of a multi-row statement: `rows` rows of `width`
/// placeholders, padded with rows of NULLs to the next power of two. A
/// statement's text (and the plan each connection caches for it) is then
/// one of a few per kind, not one per batch size; every statement filters
/// the padding out (`column1 IS NOT NULL`, or a match a NULL never makes).
/// SQLite gets plain `?`, since sqlx resolves each `$N` there by scanning
/// parameter names, which is quadratic in a statement of thousands.
fn values(backend: Backend, rows: usize, width: usize) -> String {
    let mut sql = String::with_capacity(rows.next_power_of_two() * width * 6);
    for r in 0..rows.next_power_of_two() {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            match backend {
                Backend::Sqlite => sql.push('?'),
                Backend::Postgres => {
                    use std::fmt::Write as _;
                    let _ = write!(sql, "${}", r * width + c + 1);
                }
            }
        }
        sql.push(')');
    }
    sql
}

/// Binds the padding rows `values` added after `rows` real ones.
fn pad<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    cols: &[Col],
    rows: usize,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for _ in rows..rows.next_power_of_two() {
        for col in cols {
            query = match col {
                Col::Text => query.bind(None::<String>),
                Col::Int => query.bind(None::<i64>),
            };
        }
    }
    query
}
