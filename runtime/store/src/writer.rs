//! Group commit: every durable write (a new run, a batch of a run's events)
//! goes through one writer task that commits whatever is queued together,
//! so throughput is not bounded by one fsync per write. A batch that fails,
//! or in which one write did not apply, is retried one write per
//! transaction, so one bad write cannot fail its neighbours.
//!
//! The writer's loop is the serial path of every durable write, so it keeps
//! one connection while writes keep coming (sqlx pings a connection on each
//! return to the pool) and gives it back when its queue runs dry; after a
//! failed batch it keeps the connection only when a `ROLLBACK` proves it
//! outside any transaction (a failed `COMMIT` may leave one open, and later
//! writes would join a transaction that never commits), and closes it
//! otherwise. A batch that fails for storage reasons
//! (`health::is_storage_failure`: disk full or failing, busy past the
//! timeout) is answered `Unavailable` write by write, which the API turns
//! into `503`; and it gathers a batch for as long as each turn of the
//! scheduler brings more writes, so the runs its last commit woke join the
//! next batch instead of making small ones. On SQLite a batch of several
//! writes is one query, `BEGIN` to `COMMIT` (each query is a round trip to
//! sqlx's SQLite thread): after each write statement an insert into a
//! per-connection temp view checks its row count (`changes()`), and the
//! view's trigger fails the query before `COMMIT` when a write did not
//! apply; the writer then rolls back and retries write by write.

use futures_util::TryStreamExt as _;
use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyConnection, AnyPool, Connection as _, Either, Executor as _, Row};
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};
use tokio::sync::{mpsc, oneshot};

use crate::{Backend, StoreError, dialect, health};

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
    pub started_by: Option<String>,
    pub rerun_of: Option<String>,
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
    let mut held: Option<Held> = None;
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
        let mut outcome = commit(&pool, &mut held, backend, &batch).await;
        if matches!(&outcome, Err(StoreError::Database(e)) if health::is_connection_loss(e)) {
            // The connection died under the batch: no write of it is at
            // fault. Once more, on another connection (those idle since
            // are tested before they are lent), before looking for a
            // culprit. Had the COMMIT itself gone through before the
            // connection died, the retry meets its own rows and answers
            // as a duplicate would (unknowable, as for any client).
            outcome = commit(&pool, &mut held, backend, &batch).await;
        }
        match outcome {
            Ok(Some(results)) => {
                for (write, done) in batch.drain(..).zip(results) {
                    reply(write, Ok(done));
                }
            }
            // The storage failed (a disk full or failing): no write of the
            // batch is at fault and none would commit alone; each is told
            // the database is unavailable, so its caller answers 503.
            Err(e) if health::is_storage_failure_of(&e) => {
                let reason = e.to_string();
                for write in batch.drain(..) {
                    reply(write, Err(StoreError::Unavailable(reason.clone())));
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

/// A column of a batch statement's VALUES rows (`WITH v(...) AS (VALUES
/// ...)`): its name there and what a row binds to it. A statement's column
/// list and its binds both come from one array of these, in order, so they
/// cannot drift apart; the statement then names the columns (`v.terminal`).
type Column<T, I> = (&'static str, Value<T, I>);

/// What a row binds to a column, by the column's type: `T` reads a text,
/// `I` an integer, from a row.
enum Value<T, I> {
    Text(T),
    Int(I),
}

impl<T, I> Value<T, I> {
    fn ty(&self) -> Col {
        match self {
            Value::Text(_) => Col::Text,
            Value::Int(_) => Col::Int,
        }
    }
}

/// A column of rows of type `R` (a new run, an append).
type RowColumn<R> = Column<for<'r> fn(&'r R) -> Option<&'r str>, fn(&R) -> Option<i64>>;

/// A column of event rows.
type EventColumn = Column<for<'r> fn(NewEvent<'r>) -> Option<&'r str>, fn(NewEvent) -> Option<i64>>;

/// A new run's VALUES columns (see [`Kind::sql`]).
const CREATE_COLUMNS: [RowColumn<CreateRow>; 12] = {
    use Value::{Int, Text};
    [
        ("id", Text(|r| Some(&r.id))),
        ("workflow", Text(|r| Some(&r.workflow))),
        ("version", Int(|r| Some(r.version))),
        ("input", Text(|r| Some(&r.input))),
        ("idempotency_key", Text(|r| r.idempotency_key.as_deref())),
        ("now", Int(|r| Some(r.now))),
        (
            "lease_owner",
            Text(|r| r.lease.as_ref().map(|l| l.0.as_str())),
        ),
        ("lease_until", Int(|r| r.lease.as_ref().map(|l| l.1))),
        ("required_tags", Text(|r| Some(&r.placement.tags))),
        (
            "concurrency_limit",
            Int(|r| r.placement.concurrency.map(i64::from)),
        ),
        ("started_by", Text(|r| r.started_by.as_deref())),
        ("rerun_of", Text(|r| r.rerun_of.as_deref())),
    ]
};

/// An append's VALUES columns (see [`append_sql`]). `owner`: write only
/// while this worker holds the lease; `sla_*`: a finished run's SLA
/// outcome, all NULL otherwise.
const APPEND_COLUMNS: [RowColumn<AppendRow>; 12] = {
    use Value::{Int, Text};
    [
        ("id", Text(|r| Some(&r.id))),
        ("status", Text(|r| Some(r.status))),
        ("output", Text(|r| r.output.as_deref())),
        ("error", Text(|r| r.error.as_deref())),
        ("now", Int(|r| Some(r.now))),
        ("finished_at", Int(|r| r.finished_at)),
        ("wake_at", Int(|r| r.wake_at)),
        ("terminal", Int(|r| Some(r.terminal as i64))),
        ("owner", Text(|r| r.owner.as_deref())),
        (
            "sla_priority",
            Text(|r| r.sla.as_ref().map(|s| s.0.as_str())),
        ),
        ("sla_target_ms", Int(|r| r.sla.as_ref().and_then(|s| s.1))),
        ("sla_breached", Int(|r| r.sla.as_ref().map(|s| s.2 as i64))),
    ]
};

/// An event's VALUES columns (see [`Kind::sql`]).
const EVENT_COLUMNS: [EventColumn; 4] = {
    use Value::{Int, Text};
    [
        ("run_id", Text(|e| Some(e.run_id))),
        ("seq", Int(|e| Some(e.seq))),
        ("at", Int(|e| Some(e.at))),
        ("body", Text(|e| Some(e.body))),
    ]
};

/// The looked-up runs' ids of [`Kind::Cancels`].
const ID_COLUMNS: [RowColumn<AppendRow>; 1] = [("id", Value::Text(|r| Some(&r.id)))];

/// `name, name, ...` of `columns`, for `WITH v(...)`.
fn names<T, I>(columns: &[Column<T, I>]) -> String {
    columns
        .iter()
        .map(|(name, _)| *name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// One row of `run_events` to insert: a new run's first event or the
/// events of an append (see [`EventRow`]).
#[derive(Clone, Copy)]
struct NewEvent<'a> {
    run_id: &'a str,
    seq: i64,
    at: i64,
    body: &'a str,
}

/// Set up on each SQLite connection: a view whose insert fails unless
/// `expected` equals `actual`, the check that ends a one-query batch early
/// (SQLite has no conditional statement outside triggers). `ABORT` leaves
/// the transaction open, for the writer's `ROLLBACK`.
pub(super) const SQLITE_SESSION: &str = "\
    CREATE TEMP VIEW IF NOT EXISTS steward_batch_check (expected, actual) AS SELECT 0, 0 WHERE 0;\
    CREATE TEMP TRIGGER IF NOT EXISTS steward_batch_check INSTEAD OF INSERT ON steward_batch_check \
    WHEN NEW.expected IS NOT NEW.actual \
    BEGIN SELECT RAISE(ABORT, 'a write of the batch did not apply'); END";

/// The message of [`SQLITE_SESSION`]'s check when it fails a batch.
const BATCH_CHECK_FAILED: &str = "a write of the batch did not apply";

/// Follows a statement of a one-query batch: its row count (`changes()`)
/// must be the rows bound after it.
const BATCH_CHECK: &str = "INSERT INTO temp.steward_batch_check VALUES (?, changes())";

/// A batch statement's kind. Each builds its own text and knows its row's
/// columns, so a cached text always matches the rows bound to it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    /// New runs without an idempotency key.
    Create,
    /// New runs with one, which another run may hold already.
    CreateKeyed,
    /// New events of runs and their columns after them.
    Append,
    /// Every event row of the batch.
    Events,
    /// Pending cancel requests of the appended runs, where the UPDATE does
    /// not return them (see [`dialect::update_returns_cancels`]).
    Cancels,
}

impl Kind {
    /// Rows per statement at most: powers of two well under every
    /// bind-parameter limit.
    fn max_rows(self) -> usize {
        match self {
            Kind::Create | Kind::CreateKeyed | Kind::Append => 64,
            Kind::Events => 256,
            Kind::Cancels => 512,
        }
    }

    /// The statement for `rows` rows, `rows` a power of two (see [`values`]).
    ///
    /// A run with an idempotency key may lose a race for it: its INSERT
    /// skips a taken key (`ON CONFLICT DO NOTHING`, told by the row count).
    /// A keyless run has a fresh id nothing else holds, and a plain INSERT
    /// spares PostgreSQL the speculative insertion (a probe of every unique
    /// index and a confirmation record per row); were its id taken after
    /// all, the batch fails and is retried write by write like any other.
    fn sql(self, backend: Backend, rows: usize) -> String {
        match self {
            // A new run is due at once, created and updated now.
            Kind::Create | Kind::CreateKeyed => format!(
                "WITH v({columns}) AS (VALUES {values})
                 INSERT INTO runs (
                     id, workflow, version, status, input, idempotency_key,
                     created_at, updated_at, wake_at,
                     lease_owner, lease_until, required_tags, concurrency_limit, started_by,
                     rerun_of
                 )
                 SELECT id, workflow, version, 'pending', input, idempotency_key,
                        now, now, now,
                        lease_owner, lease_until, required_tags, concurrency_limit, started_by,
                        rerun_of
                 FROM v
                 WHERE id IS NOT NULL{conflict}",
                columns = names(&CREATE_COLUMNS),
                values = values(backend, rows, CREATE_COLUMNS.len()),
                conflict = if self == Kind::CreateKeyed {
                    " ON CONFLICT DO NOTHING"
                } else {
                    ""
                }
            ),
            Kind::Append => append_sql(backend, rows),
            Kind::Events => format!(
                "WITH v({columns}) AS (VALUES {values})
                 INSERT INTO run_events (run_id, seq, at, body)
                 SELECT run_id, seq, at, body
                 FROM v
                 WHERE run_id IS NOT NULL",
                columns = names(&EVENT_COLUMNS),
                values = values(backend, rows, EVENT_COLUMNS.len())
            ),
            Kind::Cancels => format!(
                "SELECT id, cancel_requested
                 FROM runs
                 WHERE cancel_requested IS NOT NULL AND id IN {ids}",
                ids = values(backend, 1, rows)
            ),
        }
    }

    /// Whether the statement's row count must equal its rows for the batch
    /// to stand (the events' INSERT either writes every row or fails).
    fn counted(self) -> bool {
        matches!(self, Kind::Create | Kind::CreateKeyed | Kind::Append)
    }
}

/// The rows one batch statement writes or looks up.
enum Rows<'a> {
    Creates(&'a [&'a CreateRow]),
    Appends(&'a [&'a AppendRow]),
    Events(&'a [NewEvent<'a>]),
    Ids(&'a [&'a AppendRow]),
}

/// One statement of a batch: its kind and its rows.
struct Part<'a> {
    kind: Kind,
    rows: Rows<'a>,
}

type AnyQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>;

impl<'a> Part<'a> {
    /// Splits `rows` into statements of `kind` of at most its rows each.
    fn chunks<T>(
        kind: Kind,
        rows: &'a [T],
        wrap: fn(&'a [T]) -> Rows<'a>,
    ) -> impl Iterator<Item = Part<'a>> {
        rows.chunks(kind.max_rows()).map(move |chunk| Part {
            kind,
            rows: wrap(chunk),
        })
    }

    fn len(&self) -> usize {
        match self.rows {
            Rows::Creates(rows) => rows.len(),
            Rows::Appends(rows) | Rows::Ids(rows) => rows.len(),
            Rows::Events(rows) => rows.len(),
        }
    }

    /// Binds this statement's parameters after those already in `query`,
    /// padding rows included.
    fn bind(&self, query: AnyQuery<'a>) -> AnyQuery<'a> {
        match self.rows {
            Rows::Creates(rows) => bind_rows(query, &CREATE_COLUMNS, rows),
            Rows::Appends(rows) => bind_rows(query, &APPEND_COLUMNS, rows),
            Rows::Ids(rows) => bind_rows(query, &ID_COLUMNS, rows),
            Rows::Events(rows) => {
                let mut query = query;
                for &event in rows {
                    for (_, value) in &EVENT_COLUMNS {
                        query = match value {
                            Value::Text(text) => query.bind(text(event)),
                            Value::Int(int) => query.bind(int(event)),
                        };
                    }
                }
                pad(query, &EVENT_COLUMNS, rows.len())
            }
        }
    }
}

/// Binds `rows`, each column by column in `columns`' order, then the
/// padding rows' NULLs.
fn bind_rows<'q, R>(
    mut query: AnyQuery<'q>,
    columns: &[RowColumn<R>],
    rows: &[&R],
) -> AnyQuery<'q> {
    for row in rows {
        for (_, value) in columns {
            query = match value {
                Value::Text(text) => query.bind(text(row)),
                Value::Int(int) => query.bind(int(row)),
            };
        }
    }
    pad(query, columns, rows.len())
}

/// The writer's connection and when it last answered.
struct Held {
    conn: PoolConnection<Any>,
    since: std::time::Instant,
}

/// [`commit_on`] the held connection, taking one from the pool first if
/// none is held (or if connections were seen lost since it last
/// answered); a connection that failed is kept only when it is outside
/// any transaction.
async fn commit(
    pool: &AnyPool,
    held: &mut Option<Held>,
    backend: Backend,
    batch: &[Write],
) -> Result<Option<Vec<Done>>, StoreError> {
    if held
        .as_ref()
        .is_some_and(|h| health::shared().lost_since(h.since))
    {
        *held = None;
    }
    let conn = match held {
        Some(held) => &mut held.conn,
        None => {
            let conn = pool.acquire().await?;
            let since = std::time::Instant::now();
            &mut held.insert(Held { conn, since }).conn
        }
    };
    let result = commit_on(conn, backend, batch).await;
    if result.is_ok() {
        // Alive as of now, whatever was lost before.
        if let Some(held) = held.as_mut() {
            held.since = std::time::Instant::now();
        }
    } else if let Some(mut failed) = held.take() {
        // A statement of it failed: if that was the COMMIT (a disk that
        // cannot grow fails it), the connection may still be inside the
        // transaction, and handed out again it would take later writes
        // into one that never commits, answered as if they had. It is
        // kept only when a ROLLBACK now proves it outside any
        // transaction; otherwise it is closed, never returned to the
        // pool. (Closing every such connection would leave none: while
        // the disk fails, a SQLite file cannot be opened anew either.)
        if outside_transaction(&mut failed.conn).await {
            *held = Some(failed);
        } else {
            failed.conn.close_on_drop();
        }
    }
    result
}

/// Ends whatever transaction `conn` is in; whether it is now outside one.
/// SQLite answers "no transaction is active" when the failure ended it
/// already; PostgreSQL only warns.
async fn outside_transaction(conn: &mut AnyConnection) -> bool {
    match conn.execute("ROLLBACK").await {
        Ok(_) => true,
        Err(e) => e.to_string().contains("no transaction is active"),
    }
}

/// Commits a batch with a handful of statements, whatever its size: one
/// INSERT of new runs, one UPDATE of all runs, one INSERT of all events and,
/// on SQLite, one SELECT of pending cancels. On SQLite no statement returns
/// a row per write (each returned row is a hand-off between threads), and a
/// batch of several writes sends all its statements as one query (each
/// query is a round trip to the connection's thread); row counts tell
/// whether every write applied. When one did not (an id or idempotency key
/// taken, a lease lost), a batch answers `None` and is rolled back, and the
/// caller commits each write alone, where the count says which.
async fn commit_on(
    conn: &mut AnyConnection,
    backend: Backend,
    batch: &[Write],
) -> Result<Option<Vec<Done>>, StoreError> {
    let alone = batch.len() == 1;
    let (keyed, keyless): (Vec<&CreateRow>, Vec<&CreateRow>) = batch
        .iter()
        .filter_map(|w| match w {
            Write::Create(row, _) => Some(row),
            Write::Append(..) => None,
        })
        .partition(|row| row.idempotency_key.is_some());
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
    let writes: Vec<Part> = Part::chunks(Kind::Create, &keyless, Rows::Creates)
        .chain(Part::chunks(Kind::CreateKeyed, &keyed, Rows::Creates))
        .chain(Part::chunks(Kind::Append, &appends, Rows::Appends))
        .collect();
    let events = |created: bool, applied: bool| {
        let mut events: Vec<NewEvent> = Vec::new();
        if created {
            for row in keyless.iter().chain(&keyed) {
                events.push(NewEvent {
                    run_id: &row.id,
                    seq: 1,
                    at: row.now,
                    body: &row.first_event,
                });
            }
        }
        if applied {
            for row in &appends {
                events.extend(row.events.iter().map(|e| NewEvent {
                    run_id: &row.id,
                    seq: e.seq,
                    at: e.at,
                    body: &e.body,
                }));
            }
        }
        events
    };
    // A rerun is audited in its creating transaction (below); reruns are
    // rare, so a batch holding one is committed statement by statement.
    let reruns = keyless
        .iter()
        .chain(&keyed)
        .any(|row| row.rerun_of.is_some());
    if dialect::batch_in_one_query(backend) && !alone && !reruns {
        return commit_in_one_query(conn, backend, batch, writes, &appends, &events(true, true))
            .await;
    }
    let mut tx = conn.begin().await?;
    let mut cancels = HashMap::new();
    let (mut all_created, mut all_applied) = (true, true);
    for part in &writes {
        let sql = statement(backend, &[(part.kind, part.len())], false);
        let query = part.bind(sqlx::query(sql));
        let applied = match part.kind {
            // Rows come back in the statement's one response here.
            Kind::Append if dialect::update_returns_cancels(backend) => {
                let rows = query.fetch_all(&mut *tx).await?;
                for row in &rows {
                    if let Some(reason) = row.try_get::<Option<String>, _>(1)? {
                        cancels.insert(row.try_get::<String, _>(0)?, reason);
                    }
                }
                rows.len() as u64
            }
            _ => query.execute(&mut *tx).await?.rows_affected(),
        };
        if applied != part.len() as u64 {
            if !alone {
                return Ok(None);
            }
            match part.kind {
                Kind::Append => all_applied = false,
                _ => all_created = false,
            }
        }
    }
    let events = events(all_created, all_applied);
    for part in Part::chunks(Kind::Events, &events, Rows::Events) {
        let sql = statement(backend, &[(part.kind, part.len())], false);
        part.bind(sqlx::query(sql)).execute(&mut *tx).await?;
    }
    if all_created {
        for row in keyless.iter().chain(&keyed) {
            audit_rerun(&mut tx, row).await?;
        }
    }
    // Cancel requests are rare: where the UPDATE did not return them, one
    // lookup for the batch, by primary key.
    if all_applied && !dialect::update_returns_cancels(backend) {
        for part in Part::chunks(Kind::Cancels, &appends, Rows::Ids) {
            let sql = statement(backend, &[(part.kind, part.len())], false);
            let rows = part.bind(sqlx::query(sql)).fetch_all(&mut *tx).await?;
            for row in &rows {
                cancels.insert(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
            }
        }
    }

    tx.commit().await?;
    Ok(Some(answers(batch, all_created, all_applied, cancels)))
}

/// The audit entry `run.rerun` of a run created as the rerun of another,
/// by its starter, in the transaction that creates it.
async fn audit_rerun(tx: &mut AnyConnection, row: &CreateRow) -> Result<(), StoreError> {
    let Some(rerun_of) = &row.rerun_of else {
        return Ok(());
    };
    let actor = row.started_by.as_deref().unwrap_or("system");
    let detail = serde_json::json!({ "rerun_of": rerun_of });
    crate::audit::record(tx, actor, "run.rerun", &row.id, &detail).await
}

/// Each write's answer, from what its batch learnt.
fn answers(
    batch: &[Write],
    all_created: bool,
    all_applied: bool,
    mut cancels: HashMap<String, String>,
) -> Vec<Done> {
    batch
        .iter()
        .map(|w| match w {
            Write::Create(..) => Done::Created(all_created),
            Write::Append(row, _) if all_applied => Done::Appended(cancels.remove(&row.id)),
            Write::Append(row, _) => Done::LeaseLost(row.id.clone()),
        })
        .collect()
}

/// Commits a batch of several writes on SQLite in one query, `BEGIN` to
/// `COMMIT`: each query is a round trip to the connection's thread, which
/// sleeps between them, and waking it costs more than most statements. A
/// statement whose row count says one of its writes did not apply is
/// followed by a check (see [`SQLITE_SESSION`]) that fails the query before
/// `COMMIT`; after any failure the transaction is rolled back and the batch
/// answers `None`, so the caller commits each write alone and learns which.
async fn commit_in_one_query(
    conn: &mut AnyConnection,
    backend: Backend,
    batch: &[Write],
    writes: Vec<Part<'_>>,
    appends: &[&AppendRow],
    events: &[NewEvent<'_>],
) -> Result<Option<Vec<Done>>, StoreError> {
    let parts: Vec<Part> = writes
        .into_iter()
        .chain(Part::chunks(Kind::Events, events, Rows::Events))
        .chain(Part::chunks(Kind::Cancels, appends, Rows::Ids))
        .collect();
    let shape: Vec<(Kind, usize)> = parts.iter().map(|p| (p.kind, p.len())).collect();
    let mut query = sqlx::query(statement(backend, &shape, true));
    for part in &parts {
        query = part.bind(query);
        if part.kind.counted() {
            query = query.bind(part.len() as i64);
        }
    }
    let mut cancels = HashMap::new();
    let outcome: Result<(), sqlx::Error> = async {
        let mut results = conn.fetch_many(query);
        while let Some(result) = results.try_next().await? {
            if let Either::Right(row) = result {
                cancels.insert(row.try_get::<String, _>(0)?, row.try_get::<String, _>(1)?);
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = outcome {
        // The failed statement is undone but its transaction stays open,
        // for this ROLLBACK. Only a write that did not apply (the check's
        // abort, a taken id) is the batch's own fault, answered `None` so
        // each write is tried alone; any other failure, or a ROLLBACK that
        // fails, is an error and the caller closes the connection.
        let rolled_back = conn.execute("ROLLBACK").await;
        let did_not_apply = matches!(&e, sqlx::Error::Database(db)
            if db.is_unique_violation() || db.message().contains(BATCH_CHECK_FAILED));
        if rolled_back.is_err() || !did_not_apply {
            return Err(e.into());
        }
        return Ok(None);
    }
    Ok(Some(answers(batch, true, true, cancels)))
}

/// The UPDATE that applies `rows` appends (padded, see [`values`]). A run
/// whose lease another worker holds is not updated (and gets no events):
/// the caller learns it lost the run. A finished run gives up its lease
/// here, saving the worker a write, and records its SLA outcome for
/// reports. A run with a cancel request or a decision waiting
/// (`attention`) is due now, whatever the append says.
pub(super) fn append_sql(backend: Backend, rows: usize) -> String {
    format!(
        "WITH v({columns}) AS (VALUES {values})
         UPDATE runs SET
             status = v.status,
             output = v.output,
             error = v.error,
             updated_at = v.now,
             finished_at = v.finished_at,
             wake_at = CASE
                 WHEN v.terminal = 1 THEN NULL
                 WHEN runs.cancel_requested IS NOT NULL OR runs.attention = 1 THEN v.now
                 ELSE v.wake_at
             END,
             attention = CASE
                 WHEN v.wake_at IS NULL OR v.wake_at > v.now THEN 0
                 ELSE runs.attention
             END,
             lease_owner = CASE WHEN v.terminal = 1 THEN NULL ELSE runs.lease_owner END,
             lease_until = CASE WHEN v.terminal = 1 THEN NULL ELSE runs.lease_until END,
             sla_priority = CASE
                 WHEN v.sla_priority IS NULL THEN runs.sla_priority ELSE v.sla_priority
             END,
             sla_target_ms = CASE
                 WHEN v.sla_priority IS NULL THEN runs.sla_target_ms ELSE v.sla_target_ms
             END,
             sla_breached = CASE
                 WHEN v.sla_priority IS NULL THEN runs.sla_breached ELSE v.sla_breached
             END,
             sla_resolution_ms = CASE
                 WHEN v.sla_priority IS NULL THEN runs.sla_resolution_ms
                 WHEN v.status = 'succeeded' THEN v.finished_at - runs.created_at
             END
         FROM v
         WHERE runs.id = v.id
           AND (v.owner IS NULL OR runs.lease_owner = v.owner){returning}",
        columns = names(&APPEND_COLUMNS),
        values = values(backend, rows, APPEND_COLUMNS.len()),
        returning = if dialect::update_returns_cancels(backend) {
            " RETURNING runs.id, runs.cancel_requested"
        } else {
            ""
        }
    )
}

/// The text of a query of one or more batch statements, each `(kind,
/// rows)` padded to the next power of two as [`values`] pads them: built
/// once per process, not per batch (a statement of 64 rows is kilobytes of
/// placeholders, built on the writer's one serial path). As a
/// `transaction`, they make one SQLite query, `BEGIN` to `COMMIT`, with a
/// [`BATCH_CHECK`] after each statement whose row count matters; SQLite
/// runs them in turn, binding `?`s across them in order.
fn statement(
    backend: Backend,
    parts: &[(Kind, usize)],
    transaction: bool,
) -> sqlx::AssertSqlSafe<Arc<str>> {
    static TEXTS: LazyLock<Mutex<Texts>> = LazyLock::new(|| Mutex::new(Texts::new(MAX_TEXTS)));
    let key: Vec<(Kind, usize)> = parts
        .iter()
        .map(|&(kind, rows)| (kind, rows.next_power_of_two()))
        .collect();
    let text = TEXTS
        .lock()
        .unwrap()
        .get_or_build((backend, transaction, key), |(_, _, key)| {
            let mut statements = Vec::new();
            for &(kind, rows) in key {
                statements.push(kind.sql(backend, rows));
                if transaction && kind.counted() {
                    statements.push(BATCH_CHECK.to_string());
                }
            }
            if transaction {
                statements.insert(0, "BEGIN".to_string());
                statements.push("COMMIT".to_string());
            }
            statements.join(";\n")
        });
    sqlx::AssertSqlSafe(text)
}

/// Statement texts kept at most. A one-query batch's text depends on the
/// mix of its writes, so a long-running server under varied load meets
/// ever more shapes, each tens of kilobytes; past this many, a new shape's
/// text is built each time it is met (a few microseconds per kilobyte).
const MAX_TEXTS: usize = 1024;

/// A batch's shape: backend, whether one transaction, each statement's
/// kind and padded rows.
type Shape = (Backend, bool, Vec<(Kind, usize)>);

/// Statement texts by shape, at most `limit` of them.
struct Texts {
    texts: HashMap<Shape, Arc<str>>,
    limit: usize,
}

impl Texts {
    fn new(limit: usize) -> Texts {
        Texts {
            texts: HashMap::new(),
            limit,
        }
    }

    fn get_or_build(&mut self, shape: Shape, build: impl FnOnce(&Shape) -> String) -> Arc<str> {
        if let Some(text) = self.texts.get(&shape) {
            return text.clone();
        }
        let text: Arc<str> = build(&shape).into();
        if self.texts.len() < self.limit {
            self.texts.insert(shape, text.clone());
        }
        text
    }
}

/// PostgreSQL's names for an append row's parameter types, in order, for
/// preparing the append by hand (the hot-plan test in `store`).
#[cfg(test)]
pub(super) fn append_types() -> impl Iterator<Item = &'static str> {
    APPEND_COLUMNS.iter().map(|(_, value)| match value.ty() {
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
/// the padding out (`id IS NOT NULL`, or a match a NULL never makes).
/// Placeholders as [`dialect::push_placeholder`] writes them, so each is
/// named once, in bind order.
fn values(backend: Backend, rows: usize, width: usize) -> String {
    let mut sql = String::with_capacity(rows.next_power_of_two() * width * 6);
    for r in 0..rows.next_power_of_two() {
        sql.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..width {
            if c > 0 {
                sql.push_str(", ");
            }
            dialect::push_placeholder(&mut sql, backend, r * width + c + 1);
        }
        sql.push(')');
    }
    sql
}

/// Binds the padding rows `values` added after `rows` real ones.
fn pad<'q, T, I>(mut query: AnyQuery<'q>, columns: &[Column<T, I>], rows: usize) -> AnyQuery<'q> {
    for _ in rows..rows.next_power_of_two() {
        for (_, value) in columns {
            query = match value.ty() {
                Col::Text => query.bind(None::<String>),
                Col::Int => query.bind(None::<i64>),
            };
        }
    }
    query
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statement_texts_are_kept_up_to_their_limit_and_built_past_it() {
        let mut texts = Texts::new(2);
        let shape = |rows| (Backend::Sqlite, true, vec![(Kind::Create, rows)]);
        for rows in [1, 2, 4, 1] {
            let text = texts.get_or_build(shape(rows), |(_, _, key)| format!("{key:?}"));
            assert_eq!(&*text, format!("{:?}", shape(rows).2));
        }
        assert_eq!(texts.texts.len(), 2);
        assert!(!texts.texts.contains_key(&shape(4)));
    }
}
