//! Every difference between SQLite and PostgreSQL the store's SQL has to
//! know, in one place, so the rest of the crate writes one set of SQL and
//! asks here for the clause, session setting or statement form that
//! differs. `$N` placeholders, `ON CONFLICT` upserts, `RETURNING`,
//! `UPDATE ... FROM` and `WITH v(a, b) AS (VALUES ...)` are the same in
//! both and need nothing from here.

use crate::SqliteSync;
use crate::migrate::{self, Migration};
use crate::open::quote_ident;

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// Connections a pool opens at most unless told otherwise: SQLite has one
/// writer whatever the count, PostgreSQL serves many.
pub(crate) fn default_max_connections(backend: Backend) -> u32 {
    match backend {
        Backend::Sqlite => 4,
        Backend::Postgres => 10,
    }
}

/// The embedded migrations of the backend's folder, in order.
pub(crate) fn migrations(backend: Backend) -> &'static [Migration] {
    match backend {
        Backend::Sqlite => migrate::SQLITE,
        Backend::Postgres => migrate::POSTGRES,
    }
}

/// What every new connection of a pool runs before its first statement,
/// in order.
///
/// SQLite: WAL, the chosen `synchronous`, a busy timeout (a writer waits
/// for the lock instead of failing at once), and the writer's batch check
/// (see `writer::SQLITE_SESSION`).
///
/// PostgreSQL: the hot pool (`hot`) plans each statement once per
/// connection, for index access only; the general pool plans every
/// execution, since a report's best plan depends on its parameters (see
/// `open::connect_pool`). With a `schema`, the connection lives in it.
pub(crate) fn session(
    backend: Backend,
    sync: SqliteSync,
    schema: Option<&str>,
    hot: bool,
) -> Vec<String> {
    match backend {
        Backend::Sqlite => {
            let sync = match sync {
                SqliteSync::Full => "FULL",
                SqliteSync::Normal => "NORMAL",
            };
            vec![
                "PRAGMA journal_mode = WAL".to_string(),
                format!("PRAGMA synchronous = {sync}"),
                "PRAGMA busy_timeout = 10000".to_string(),
                crate::writer::SQLITE_SESSION.to_string(),
            ]
        }
        Backend::Postgres => {
            let plans = if hot {
                "SET plan_cache_mode = force_generic_plan; \
                 SET enable_seqscan = off; SET enable_hashjoin = off; \
                 SET enable_mergejoin = off"
            } else {
                "SET plan_cache_mode = force_custom_plan"
            };
            let mut statements = vec![plans.to_string()];
            if let Some(schema) = schema {
                statements.push(format!("SET search_path TO {}", quote_ident(schema)));
            }
            statements
        }
    }
}

/// Creates a PostgreSQL schema for a store to live in (see
/// `StoreOptions::schema`); SQLite has none.
pub(crate) fn create_schema(schema: &str) -> String {
    format!("CREATE SCHEMA IF NOT EXISTS {}", quote_ident(schema))
}

/// How a transaction that will write begins: `None` for the plain `BEGIN`.
/// SQLite takes the write lock at `BEGIN IMMEDIATE`, where waiting honours
/// the busy timeout; a deferred transaction that reads first and writes
/// later fails at once with "database is locked" when another connection
/// committed in between. PostgreSQL locks rows as it writes them.
pub(crate) fn begin_write(backend: Backend) -> Option<&'static str> {
    match backend {
        Backend::Sqlite => Some("BEGIN IMMEDIATE"),
        Backend::Postgres => None,
    }
}

/// Appended to a `SELECT` that picks rows to change, so concurrent
/// transactions skip each other's rows instead of waiting on them.
/// SQLite has one writer at a time and no row locks: nothing to skip.
pub(crate) fn skip_locked(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "",
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
    }
}

/// A statement that makes claimers of limited runs take turns within
/// their transaction (a PostgreSQL advisory lock, released at its end);
/// `None` on SQLite, whose single writer serialises them already.
pub(crate) fn claim_turn(backend: Backend) -> Option<&'static str> {
    match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some("SELECT pg_advisory_xact_lock(7310001)"),
    }
}

/// A statement that makes keyed signal deliveries and the opening of
/// signal waits take turns within their transaction (a PostgreSQL advisory
/// lock), so a delivery either sees a wait opened before it or is seen by
/// the run that opens it; `None` on SQLite, whose single writer serialises
/// them already.
pub(crate) fn signal_turn(backend: Backend) -> Option<&'static str> {
    match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some("SELECT pg_advisory_xact_lock(7310002)"),
    }
}

/// Follows a table name in `FROM` to make SQLite read `index`: without
/// statistics SQLite may prefer another plan; PostgreSQL has statistics
/// and takes no such hint.
pub(crate) fn indexed_by(backend: Backend, index: &str) -> String {
    match backend {
        Backend::Sqlite => format!(" INDEXED BY {index}"),
        Backend::Postgres => String::new(),
    }
}

/// Appends the placeholder of parameter `n` (1-based) to `sql`. SQLite
/// gets a plain `?` (parameters bound in order), since sqlx resolves each
/// `$N` there by scanning parameter names, which is quadratic in a
/// statement of thousands; a statement using these must therefore name
/// each parameter once, in bind order.
pub(crate) fn push_placeholder(sql: &mut String, backend: Backend, n: usize) {
    match backend {
        Backend::Sqlite => sql.push('?'),
        Backend::Postgres => {
            use std::fmt::Write as _;
            let _ = write!(sql, "${n}");
        }
    }
}

/// Whether a batch of several writes goes to the database as one query,
/// `BEGIN` to `COMMIT`. On SQLite each query is a round trip to the
/// connection's thread, which costs more than most statements; PostgreSQL
/// pipelines statements on one connection anyway.
pub(crate) fn batch_in_one_query(backend: Backend) -> bool {
    backend == Backend::Sqlite
}

/// Whether the writer's UPDATE of appended runs returns their pending
/// cancel requests. On PostgreSQL the rows come back in the statement's
/// one response; on SQLite every returned row is a hand-off between
/// threads, so one lookup per batch reads them instead.
pub(crate) fn update_returns_cancels(backend: Backend) -> bool {
    backend == Backend::Postgres
}

/// The histories of `runs` claimed runs: `run_id, seq, at, body` of their
/// events, a run's in order, for `runs` parameters (padded with NULLs by
/// the caller). SQLite reads an `IN` list by the primary key; on
/// PostgreSQL, one index lookup per run whatever the statistics say (a
/// `LATERAL` join), since with none yet (a young table) it scanned every
/// event for an `IN` list.
pub(crate) fn histories_sql(backend: Backend, runs: usize) -> String {
    match backend {
        Backend::Sqlite => format!(
            "SELECT run_id, seq, at, body
             FROM run_events
             WHERE run_id IN ({})
             ORDER BY run_id, seq",
            crate::params::numbered(1, runs)
        ),
        Backend::Postgres => format!(
            "SELECT e.run_id, e.seq, e.at, e.body
             FROM (VALUES {}) AS c(id)
             CROSS JOIN LATERAL (
                 SELECT run_id, seq, at, body FROM run_events
                 WHERE run_id = c.id ORDER BY seq
             ) e",
            crate::params::numbered_rows(1, runs)
        ),
    }
}
