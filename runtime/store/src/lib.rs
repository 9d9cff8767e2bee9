//! Durable state: runs, their event histories, deployed workflow versions
//! and plugin key-value data, in SQLite (the embedded default) or
//! PostgreSQL (for many processes), with the same SQL for both.
//!
//! Architecture invariant: only this module knows SQL. Callers see runs,
//! events and leases.

mod announce;
mod approvals;
mod audit;
mod groups;
mod health;
mod migrate;
#[cfg(test)]
mod parity;
pub mod retention;
mod schedules;
mod writer;

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};

use steward_core::run::{Event, Recorded, RunState, Status, StepError};

pub use approvals::{ApprovalRow, Decided, Decision, Delegation, SelfApproval};
pub use audit::{AUDIT_ACTIONS, AuditEntry, AuditFilter};

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How SQLite syncs commits: FULL survives power loss, NORMAL (in WAL mode)
/// may lose the last commits on power loss but never corrupts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SqliteSync {
    #[default]
    Full,
    Normal,
}

/// How to open a store.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub sqlite_sync: SqliteSync,
    /// A PostgreSQL schema to live in (created if missing): how tests get a
    /// database of their own.
    pub schema: Option<String>,
    pub max_connections: Option<u32>,
}

/// Why the store failed. SQL text never reaches API clients through this.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    #[error(
        "the database schema is at version {database} but this binary knows only up to {binary}: \
         a newer steward migrated it; run that version or restore a backup"
    )]
    NewerSchema { database: i64, binary: i64 },
    /// Checked before connecting: sqlx reads the file only during the TLS
    /// handshake, and its error there names neither the file nor the
    /// setting.
    #[error(
        "the database URL's sslrootcert {path:?} cannot be read: {reason}; \
         point it at the PEM file of the CA that signed the server's certificate"
    )]
    RootCert {
        path: std::path::PathBuf,
        reason: String,
    },
    #[error("migration {version} failed: {message}")]
    Migrate { version: i64, message: String },
    #[error(
        "workflow {name} version {version} is already deployed with different content: bump the version"
    )]
    VersionConflict { name: String, version: u32 },
    #[error("run {0} is no longer leased to this worker: another one took it over")]
    LeaseLost(String),
    #[error("the store's writer stopped: the process is shutting down")]
    WriterGone,
    #[error("stored data is unreadable: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// The database could not take a write (its storage failed); nothing
    /// of the request was committed.
    #[error("the database cannot write: {0}")]
    Unavailable(String),
}

impl From<StoreError> for steward_core::run::JournalError {
    fn from(e: StoreError) -> Self {
        use steward_core::run::JournalError;
        match e {
            StoreError::LeaseLost(run) => JournalError::LeaseLost(run),
            e if e.is_unavailable() => JournalError::Unavailable(e.to_string()),
            e @ StoreError::VersionConflict { .. } => JournalError::Conflict(e.to_string()),
            e => JournalError::Other(e.to_string()),
        }
    }
}

impl StoreError {
    /// Whether the database could not be reached (a connection lost, none
    /// to be had in time) rather than refused something: worth a retry.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Database(e) => {
                health::is_connection_loss(e)
                    || health::is_storage_failure(e)
                    || matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed)
            }
            StoreError::Unavailable(_) => true,
            _ => false,
        }
    }
}

/// Every database error passes here: one that says a connection died is
/// recorded, so connections idle since are tested before their next use
/// (see `health`).
impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> StoreError {
        health::shared().check(&error);
        StoreError::Database(error)
    }
}

/// A run this worker just claimed, with its history, ready to drive.
#[derive(Debug, Clone)]
pub struct ClaimedRun {
    pub id: String,
    pub workflow: String,
    pub version: u32,
    pub created_at: DateTime<Utc>,
    pub history: Vec<Recorded>,
    /// A cancel requested before the claim, read by the claim itself so
    /// the drive need not ask the database again before it starts.
    pub cancel_requested: Option<String>,
}

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
}

/// An API token as stored: its secret is never kept, only its hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredToken {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub scopes: Vec<String>,
    /// Who acts with it: a person (`max`) or a service (`svc:servicenow`).
    pub subject: String,
    pub created_at: DateTime<Utc>,
    /// After this it is refused (401 `token-expired`); `None` never.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used, to the minute (see `Store::touch_token`).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// A plugin uploaded through the API: its `plugin.toml` and component.
#[derive(Debug, Clone)]
pub struct UploadedPlugin {
    pub name: String,
    pub manifest: String,
    pub component: Vec<u8>,
    pub digest: String,
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
    /// Create it already claimed by this worker for this long, so the
    /// process that accepted it can drive it without a claim and a reload.
    pub lease: Option<(&'a str, Duration)>,
    pub placement: Placement,
}

/// Where a run may execute, from its workflow: claims honour it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Placement {
    /// Required worker tags, sorted and comma-separated; empty for any.
    pub tags: String,
    /// At most this many runs of the workflow leased at once.
    pub concurrency: Option<u32>,
}

impl Placement {
    /// The placement `workflow` asks for.
    pub fn of(workflow: &steward_core::workflow::Workflow) -> Placement {
        Placement {
            tags: workflow.tags.join(","),
            concurrency: workflow.concurrency,
        }
    }

    /// True when a worker with `worker_tags` may take the run at creation,
    /// without a claim: it has the tags and no limit needs counting.
    pub fn fits_locally(&self, worker_tags: &[String]) -> bool {
        self.concurrency.is_none()
            && (self.tags.is_empty()
                || self
                    .tags
                    .split(',')
                    .all(|t| worker_tags.iter().any(|w| w == t)))
    }
}

/// `$from, $from+1, ...`: `count` numbered placeholders.
fn numbered(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| format!("${n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `($from), ($from+1), ...`: `count` one-column VALUES rows.
fn numbered_rows(from: usize, count: usize) -> String {
    (from..from + count)
        .map(|n| format!("(${n})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Binds `ids` and then NULLs up to the next power of two: an `IN` list
/// of [`numbered`] placeholders padded so, whatever the count, the
/// statement is one of a few and stays prepared (a NULL matches nothing).
fn bind_padded<'q>(
    mut query: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    ids: &[String],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for id in ids {
        query = query.bind(id.clone());
    }
    for _ in ids.len()..ids.len().next_power_of_two() {
        query = query.bind(None::<String>);
    }
    query
}

/// A claim statement with its parameters: $1 owner, $2 lease end, $3 now,
/// $4 how many, then the tag sets.
/// The claim of runs free of a concurrency limit, for `tag_sets` sets of
/// required tags; parameters as [`claim_query`] binds them.
fn claim_free_sql(backend: Backend, tag_sets: usize) -> String {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    format!(
        "UPDATE runs SET lease_owner = $1, lease_until = $2 WHERE id IN (\
           SELECT id FROM runs WHERE wake_at IS NOT NULL AND wake_at <= $3 \
           AND (lease_until IS NULL OR lease_until < $3) AND concurrency_limit IS NULL \
           AND required_tags IN ({}) ORDER BY wake_at LIMIT $4{lock}) \
         RETURNING id, workflow, version, created_at, cancel_requested",
        numbered(5, tag_sets)
    )
}

fn claim_query(
    sql: String,
    owner: &str,
    now: i64,
    lease: Duration,
    limit: i64,
    tag_sets: &[String],
) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(owner.to_string())
        .bind(now + lease.as_millis() as i64)
        .bind(now)
        .bind(limit);
    for set in tag_sets {
        query = query.bind(set.clone());
    }
    query
}

fn claimed_run(r: &sqlx::any::AnyRow) -> Result<ClaimedRun, StoreError> {
    Ok(ClaimedRun {
        id: r.try_get("id")?,
        workflow: r.try_get("workflow")?,
        version: r.try_get::<i64, _>("version")? as u32,
        created_at: to_time(r.try_get("created_at")?),
        history: Vec::new(),
        cancel_requested: r.try_get("cancel_requested")?,
    })
}

/// Every subset of `tags` in [`Placement::tags`] form: a run is claimable
/// by a worker when its required tags are one of them.
pub fn tag_subsets(tags: &[String]) -> Vec<String> {
    let mut sorted: Vec<&String> = tags.iter().collect();
    sorted.sort();
    sorted.dedup();
    (0u32..1 << sorted.len())
        .map(|mask| {
            sorted
                .iter()
                .enumerate()
                .filter(|(i, _)| mask & (1 << i) != 0)
                .map(|(_, t)| t.as_str())
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect()
}

/// The store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    /// The statements every run goes through (the writer's, claims,
    /// renewals): on PostgreSQL, connections that plan them once, for index
    /// access (see [`connect_pool`]); on SQLite, `pool` itself.
    hot: AnyPool,
    backend: Backend,
    writer: tokio::sync::mpsc::Sender<writer::Write>,
    /// PostgreSQL only: tells other processes about new work.
    announcer: Option<std::sync::Arc<announce::Announcer>>,
}

pub(crate) fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

fn to_time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

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
fn event_rows(events: &[Recorded]) -> Vec<writer::EventRow> {
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
fn row_events(row: &sqlx::any::AnyRow) -> Result<Vec<Recorded>, StoreError> {
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

/// Connections of the hot pool on PostgreSQL: the writer, a claim and a
/// renewal at a time, and one to spare.
const HOT_CONNECTIONS: u32 = 4;

/// How long opening a store waits for PostgreSQL to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every new connection of a pool is set up with.
#[derive(Clone)]
enum Session {
    Sqlite {
        sync: &'static str,
    },
    Postgres {
        schema: Option<String>,
        /// Plan once, for index access only (the hot pool).
        hot: bool,
    },
}

/// Opens a pool whose connections are set up per `session`.
///
/// PostgreSQL plans a prepared statement anew at each execution while its
/// plan may depend on the parameters (and always under
/// `force_custom_plan`, which the general pool uses: a report's best plan
/// depends on its time range). For the hot statements, small batches by key
/// that index access always serves best, that planning was a quarter of
/// the database's CPU under load. Their pool plans each statement once per
/// connection (`force_generic_plan`) with sequential scans, hash and merge
/// joins priced out: a plan made while a table was small (a hash join over
/// a sequential scan of `runs`) would otherwise outlive its growth, since a
/// fresh table is analyzed only a minute or so late.
async fn connect_pool(
    connect: AnyConnectOptions,
    max: u32,
    session: Session,
) -> Result<AnyPool, StoreError> {
    Ok(AnyPoolOptions::new()
        .max_connections(max)
        // A connection in steady use is alive: checking each one before
        // it is handed out (sqlx's default) costs a round trip per
        // query. Only one idle for a while (the database may have
        // restarted meanwhile) or idle when another connection was seen
        // lost is pinged first; a dead one is dropped, and the pool hands
        // out another.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                let suspect = health::shared().idle_across_loss(meta.idle_for);
                if suspect {
                    // A storage failure may have left it inside a
                    // transaction (see `health`): end any such one first.
                    // Outside a transaction this fails (SQLite) or warns
                    // (PostgreSQL), harmlessly.
                    use sqlx::Executor as _;
                    match conn.execute("ROLLBACK").await {
                        Ok(_) => {}
                        Err(e) if e.to_string().contains("no transaction is active") => {}
                        // Still inside it, or unusable: closed instead.
                        Err(_) => return Ok(false),
                    }
                }
                if suspect || meta.idle_for > Duration::from_secs(5) {
                    use sqlx::Connection as _;
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .after_connect(move |conn, _meta| {
            let session = session.clone();
            Box::pin(async move {
                use sqlx::Executor as _;
                match session {
                    Session::Sqlite { sync } => {
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA synchronous = {sync}")))
                            .await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute(writer::SQLITE_SESSION).await?;
                    }
                    Session::Postgres { schema, hot } => {
                        if hot {
                            conn.execute(
                                "SET plan_cache_mode = force_generic_plan; \
                                 SET enable_seqscan = off; SET enable_hashjoin = off; \
                                 SET enable_mergejoin = off",
                            )
                            .await?;
                        } else {
                            conn.execute("SET plan_cache_mode = force_custom_plan")
                                .await?;
                        }
                        if let Some(schema) = schema {
                            conn.execute(sqlx::AssertSqlSafe(format!(
                                "SET search_path TO {}",
                                quote_ident(&schema)
                            )))
                            .await?;
                        }
                    }
                }
                Ok(())
            })
        })
        .connect_with(connect)
        .await?)
}

/// Refuses a PostgreSQL URL whose `sslrootcert` (or, when the URL sets
/// none, `PGSSLROOTCERT`) names a file that cannot be read. TLS itself is
/// sqlx's: `sslmode=disable|prefer|require|verify-ca|verify-full` as in
/// libpq.
fn check_root_cert(url: &str) -> Result<(), StoreError> {
    let from_url = url::Url::parse(url).ok().and_then(|u| {
        u.query_pairs()
            .find(|(k, _)| matches!(&**k, "sslrootcert" | "ssl-root-cert" | "ssl-ca"))
            .map(|(_, v)| v.into_owned())
    });
    let Some(path) = from_url.or_else(|| std::env::var("PGSSLROOTCERT").ok()) else {
        return Ok(());
    };
    let path = std::path::PathBuf::from(path);
    match std::fs::File::open(&path) {
        Ok(_) => Ok(()),
        Err(e) => Err(StoreError::RootCert {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Makes the SQLite database readable by its owner only, whatever the
/// process's umask: a folder made for it is created 0700, the database
/// file is created 0600 before SQLite opens it (or set to 0600 when an
/// older version left it wider), and so are `-wal`, `-shm` and `-journal`
/// files already there. SQLite creates those files later with the
/// permissions of the database file, so they follow.
///
/// Chosen over setting the process umask to 077 at start: the umask is
/// process-wide state that every other file the process writes would
/// inherit, it does nothing for files an older version left readable, and
/// it is one call away from being undone; the modes here are set on the
/// files themselves.
fn private_sqlite_files(file: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    if let Some(parent) = file.parent()
        && !parent.as_os_str().is_empty()
        && !parent.exists()
    {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let mut name = file.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::Path::new(&name);
        match std::fs::metadata(path) {
            Ok(meta) if meta.permissions().mode() & 0o077 != 0 => {
                std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

impl Store {
    /// A transaction that will write. On SQLite it takes the write lock at
    /// `BEGIN IMMEDIATE`, where waiting honours the busy timeout: a
    /// deferred transaction that reads first and writes later fails at once
    /// with "database is locked" when another connection committed in
    /// between, which the API would answer 503.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Connects, tunes SQLite (WAL, synchronous, busy timeout) and applies
    /// migrations.
    pub async fn open(url: &str, options: StoreOptions) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if let Some(path) = url.strip_prefix("sqlite://") {
            let file = path.split('?').next().unwrap_or(path);
            if file != ":memory:" && !path.contains("mode=memory") {
                private_sqlite_files(std::path::Path::new(file)).map_err(sqlx::Error::Io)?;
            }
            let url = if path.contains("mode=") {
                url.to_string()
            } else {
                format!("sqlite://{file}?mode=rwc")
            };
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        if backend == Backend::Postgres {
            check_root_cert(&url)?;
        }
        let connect: AnyConnectOptions = url.parse()?;
        if backend == Backend::Postgres {
            // A pool retries a refused connection until its acquire
            // timeout (30 s) and then says only that it timed out: one
            // attempt first, so an unreachable server fails the start at
            // once, with its reason.
            use sqlx::ConnectOptions as _;
            match tokio::time::timeout(CONNECT_TIMEOUT, connect.connect()).await {
                Ok(Ok(conn)) => {
                    use sqlx::Connection as _;
                    conn.close().await.ok();
                }
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => {
                    return Err(sqlx::Error::Io(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                    ))
                    .into());
                }
            }
        }
        if let (Backend::Postgres, Some(schema)) = (backend, &options.schema) {
            let pool = AnyPoolOptions::new()
                .max_connections(1)
                .connect_with(connect.clone())
                .await?;
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "CREATE SCHEMA IF NOT EXISTS {}",
                quote_ident(schema)
            )))
            .execute(&pool)
            .await?;
            pool.close().await;
        }
        let sync = match options.sqlite_sync {
            SqliteSync::Full => "FULL",
            SqliteSync::Normal => "NORMAL",
        };
        let max = options.max_connections.unwrap_or(match backend {
            Backend::Sqlite => 4,
            Backend::Postgres => 10,
        });
        let session = match backend {
            Backend::Sqlite => Session::Sqlite { sync },
            Backend::Postgres => Session::Postgres {
                schema: options.schema.clone(),
                hot: false,
            },
        };
        let pool = connect_pool(connect.clone(), max, session.clone()).await?;
        let hot = match session {
            Session::Postgres { schema, .. } => {
                connect_pool(
                    connect,
                    HOT_CONNECTIONS,
                    Session::Postgres { schema, hot: true },
                )
                .await?
            }
            Session::Sqlite { .. } => pool.clone(),
        };
        migrate::migrate(&pool, backend).await?;
        let writer = writer::spawn(hot.clone(), backend);
        let announcer = (backend == Backend::Postgres).then(|| {
            announce::Announcer::spawn(pool.clone(), url.clone(), options.schema.as_deref())
        });
        Ok(Store {
            pool,
            hot,
            backend,
            writer,
            announcer,
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Tells other processes' workers that work is due now (PostgreSQL;
    /// with SQLite there is one process, which wakes its own worker).
    pub(crate) fn announce(&self) {
        if let Some(announcer) = &self.announcer {
            announcer.announce();
        }
    }

    /// Wakes `wake` when another process announces work (PostgreSQL).
    pub fn listen_for_work(&self, wake: std::sync::Arc<tokio::sync::Notify>) {
        if let Some(announcer) = &self.announcer {
            announce::listen(announcer.url.clone(), announcer.channel.clone(), wake);
        }
    }

    /// Records a workflow version, and `actor` deploying it in the audit
    /// log; deploying the same text again is a no-op and is not logged.
    pub async fn deploy_workflow(
        &self,
        name: &str,
        version: u32,
        source: &str,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let existing: Option<String> = sqlx::query_scalar(
            "SELECT source FROM workflow_versions WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(version as i64)
        .fetch_optional(&mut *tx)
        .await?;
        match existing {
            Some(s) if s == source => Ok(false),
            Some(_) => Err(StoreError::VersionConflict {
                name: name.to_string(),
                version,
            }),
            None => {
                let inserted = sqlx::query(
                    "INSERT INTO workflow_versions (name, version, source, deployed_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT DO NOTHING",
                )
                .bind(name)
                .bind(version as i64)
                .bind(source)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
                // Another process deployed it first: its entry is the one.
                if inserted.rows_affected() == 1 {
                    audit::record(
                        &mut tx,
                        actor,
                        "workflow.deploy",
                        &format!("{name}@{version}"),
                        &serde_json::json!({"name": name, "version": version}),
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(true)
            }
        }
    }

    /// The highest version of every deployed workflow with its YAML, so a
    /// restart serves what was deployed through the API.
    pub async fn latest_workflows(&self) -> Result<Vec<(String, u32, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, version, source FROM workflow_versions w \
             WHERE version = (SELECT MAX(version) FROM workflow_versions v WHERE v.name = w.name) \
             ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let version: i64 = r.try_get("version")?;
                Ok((r.try_get("name")?, version as u32, r.try_get("source")?))
            })
            .collect()
    }

    /// Every deployed version of `name` with its deployment time, oldest first.
    pub async fn workflow_versions(
        &self,
        name: &str,
    ) -> Result<Vec<(u32, DateTime<Utc>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT version, deployed_at FROM workflow_versions WHERE name = $1 ORDER BY version",
        )
        .bind(name)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let version: i64 = r.try_get("version")?;
                Ok((version as u32, to_time(r.try_get("deployed_at")?)))
            })
            .collect()
    }

    /// The YAML of a deployed version, so a run keeps the version it started on.
    pub async fn workflow_source(
        &self,
        name: &str,
        version: u32,
    ) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT source FROM workflow_versions WHERE name = $1 AND version = $2",
        )
        .bind(name)
        .bind(version as i64)
        .fetch_optional(&self.pool)
        .await?)
    }

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
        })
        .expect("events serialise");
        let row = writer::CreateRow {
            id: new.id.to_string(),
            workflow: new.workflow.to_string(),
            version: new.version as i64,
            input: new.input.to_string(),
            idempotency_key: new.idempotency_key.map(str::to_string),
            started_by: new.started_by.map(str::to_string),
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
            "SELECT id, workflow, version, status, input, output, error, created_at, finished_at, started_by FROM runs WHERE id = $1",
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
            "SELECT id, workflow, version, status, input, output, error, created_at, finished_at, started_by FROM runs \
             WHERE ($1 IS NULL OR workflow = $1) AND ($2 IS NULL OR status = $2) AND ($3 IS NULL OR id < $3) \
             ORDER BY id DESC LIMIT $4",
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
            "UPDATE runs SET cancel_requested = $2, wake_at = $3 \
             WHERE id = $1 AND status NOT IN ('succeeded', 'failed', 'rejected', 'cancelled')",
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

    /// The reason of a pending cancel request.
    pub async fn cancel_requested(&self, id: &str) -> Result<Option<String>, StoreError> {
        let reason: Option<Option<String>> =
            sqlx::query_scalar("SELECT cancel_requested FROM runs WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?;
        Ok(reason.flatten())
    }

    /// Claims up to `limit` runs that are due and not leased by a live
    /// worker. On PostgreSQL concurrent claimers skip each other's rows.
    pub async fn claim_due(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        tags: &[String],
    ) -> Result<Vec<String>, StoreError> {
        Ok(self
            .claim(owner, lease, limit, tags)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect())
    }

    /// Claims like [`Store::claim_due`] and loads what driving the runs
    /// needs (their identity and histories) in one more query for all of
    /// them, instead of two per run.
    pub async fn claim_due_runs(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        tags: &[String],
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let mut claimed = self.claim(owner, lease, limit, tags).await?;
        if claimed.is_empty() {
            return Ok(claimed);
        }
        // Padded with NULLs to a power of two, so the statement is one of a
        // few and stays prepared.
        let padded = claimed.len().next_power_of_two();
        let sql = match self.backend {
            Backend::Sqlite => format!(
                "SELECT run_id, seq, at, body FROM run_events WHERE run_id IN ({}) ORDER BY run_id, seq",
                numbered(1, padded)
            ),
            // One index lookup per run, whatever the statistics say: with
            // none yet (a young table) PostgreSQL scanned every event for
            // an `IN` list.
            Backend::Postgres => format!(
                "SELECT e.run_id, e.seq, e.at, e.body FROM (VALUES {}) AS c(id) \
                 CROSS JOIN LATERAL (SELECT run_id, seq, at, body FROM run_events \
                 WHERE run_id = c.id ORDER BY seq) e",
                numbered_rows(1, padded)
            ),
        };
        let ids: Vec<String> = claimed.iter().map(|c| c.id.clone()).collect();
        let rows = bind_padded(sqlx::query(sqlx::AssertSqlSafe(sql)), &ids)
            .fetch_all(&self.hot)
            .await?;
        let index: std::collections::HashMap<String, usize> = claimed
            .iter()
            .enumerate()
            .map(|(i, c)| (c.id.clone(), i))
            .collect();
        for r in rows {
            let run_id: String = r.try_get("run_id")?;
            if let Some(&i) = index.get(&run_id) {
                claimed[i].history.extend(row_events(&r)?);
            }
        }
        Ok(claimed)
    }

    /// Claims runs free of a concurrency limit, then, with what room is
    /// left, runs whose workflow has one; both only runs whose required
    /// tags the worker has.
    async fn claim(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        tags: &[String],
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let subsets = tag_subsets(tags);
        let mut claimed = self.claim_free(owner, lease, limit, &subsets).await?;
        let room = limit - claimed.len() as i64;
        if room > 0 && self.limited_runs_due().await? {
            claimed.extend(self.claim_limited(owner, lease, room, &subsets).await?);
        }
        Ok(claimed)
    }

    /// Whether any run of a workflow with a concurrency limit is due: one
    /// probe of a mostly empty index, which spares the usual claim the
    /// limited claim's locked transaction.
    async fn limited_runs_due(&self) -> Result<bool, StoreError> {
        let due: Option<String> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE concurrency_limit IS NOT NULL AND wake_at IS NOT NULL \
             AND wake_at <= $1 ORDER BY wake_at LIMIT 1",
        )
        .bind(now_ms())
        .fetch_optional(&self.hot)
        .await?;
        Ok(due.is_some())
    }

    async fn claim_free(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        tag_sets: &[String],
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let sql = claim_free_sql(self.backend, tag_sets.len());
        let rows = claim_query(sql, owner, now_ms(), lease, limit, tag_sets)
            .fetch_all(&self.hot)
            .await?;
        rows.iter().map(claimed_run).collect()
    }

    /// Claims runs of workflows with a concurrency limit, each workflow up
    /// to its limit minus the runs of it leased now. Claimers take turns
    /// (an advisory lock on PostgreSQL, the single writer on SQLite), so
    /// two workers cannot both fill the last slot.
    async fn claim_limited(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        tag_sets: &[String],
    ) -> Result<Vec<ClaimedRun>, StoreError> {
        let now = now_ms();
        let sql = format!(
            "UPDATE runs SET lease_owner = $1, lease_until = $2 WHERE id IN (\
               SELECT id FROM (\
                 SELECT c.id, c.concurrency_limit AS cap, \
                   ROW_NUMBER() OVER (PARTITION BY c.workflow ORDER BY c.wake_at, c.id) AS rn, \
                   (SELECT COUNT(*) FROM runs o WHERE o.workflow = c.workflow \
                      AND o.concurrency_limit IS NOT NULL AND o.lease_until >= $3) AS busy \
                 FROM runs c WHERE c.concurrency_limit IS NOT NULL AND c.wake_at IS NOT NULL \
                   AND c.wake_at <= $3 AND (c.lease_until IS NULL OR c.lease_until < $3) \
                   AND c.required_tags IN ({})) ranked \
               WHERE rn + busy <= cap ORDER BY rn LIMIT $4) \
             RETURNING id, workflow, version, created_at, cancel_requested",
            numbered(5, tag_sets.len())
        );
        let mut tx = self.hot.begin().await?;
        if self.backend == Backend::Postgres {
            sqlx::query("SELECT pg_advisory_xact_lock(7310001)")
                .execute(&mut *tx)
                .await?;
        }
        let rows = claim_query(sql, owner, now, lease, limit, tag_sets)
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        rows.iter().map(claimed_run).collect()
    }

    /// Extends the leases `owner` holds on `ids` (the runs it drives).
    /// Looked up by primary key, so a renewal costs the runs in flight, not
    /// a scan of the whole history, and holds no lock on other rows.
    pub async fn renew_leases(
        &self,
        owner: &str,
        lease: Duration,
        ids: &[String],
    ) -> Result<(), StoreError> {
        let until = now_ms() + lease.as_millis() as i64;
        for chunk in ids.chunks(512) {
            let ids = numbered(3, chunk.len().next_power_of_two());
            let sql = match self.backend {
                Backend::Sqlite => format!(
                    "UPDATE runs SET lease_until = $1 WHERE lease_owner = $2 AND id IN ({ids})"
                ),
                // A row the writer holds is being written by this worker
                // right now: skipped, it is renewed next time, and the two
                // never wait on each other (waiting could deadlock them).
                Backend::Postgres => format!(
                    "UPDATE runs SET lease_until = $1 WHERE id IN (SELECT id FROM runs \
                     WHERE lease_owner = $2 AND id IN ({ids}) FOR UPDATE SKIP LOCKED)"
                ),
            };
            let query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(until)
                .bind(owner.to_string());
            bind_padded(query, chunk).execute(&self.hot).await?;
        }
        Ok(())
    }

    /// Gives a run back: another claim may take it once it is due, or not
    /// before `retry_in` has passed (after a failure, to avoid a hot loop).
    pub async fn release(
        &self,
        owner: &str,
        id: &str,
        retry_in: Option<Duration>,
    ) -> Result<(), StoreError> {
        let not_before = retry_in.map(|d| now_ms() + d.as_millis() as i64);
        sqlx::query(
            "UPDATE runs SET lease_owner = NULL, lease_until = NULL, \
             wake_at = CASE WHEN $3 IS NULL OR wake_at IS NULL THEN wake_at ELSE $3 END \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(not_before)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Drops every lease (runs and the scheduler's): for SQLite, whose single server process starts
    /// after the previous one died.
    pub async fn release_all_leases(&self) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE runs SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL",
        )
        .execute(&self.pool)
        .await?;
        sqlx::query("UPDATE scheduler_leader SET owner = NULL, lease_until = 0")
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores a new API token (only the secret's hash), and `actor`
    /// creating it in the audit log (never the secret).
    pub async fn create_token(&self, token: &StoredToken, actor: &str) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "INSERT INTO api_tokens (id, name, secret_hash, scopes, created_at, subject, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&token.id)
        .bind(&token.name)
        .bind(&token.secret_hash)
        .bind(token.scopes.join(","))
        .bind(token.created_at.timestamp_millis())
        .bind(&token.subject)
        .bind(token.expires_at.map(|t| t.timestamp_millis()))
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            actor,
            "token.create",
            &token.id,
            &serde_json::json!({"subject": token.subject, "scopes": token.scopes}),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// The live (not revoked) token with this secret hash, expired or not:
    /// the caller tells an expired token from an unknown one.
    pub async fn token_by_hash(
        &self,
        secret_hash: &str,
    ) -> Result<Option<StoredToken>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TOKEN} WHERE secret_hash = $1 AND revoked_at IS NULL"
        )))
        .bind(secret_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(token_row).transpose()
    }

    /// Tokens neither revoked nor expired, oldest first.
    pub async fn live_tokens(&self) -> Result<Vec<StoredToken>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{SELECT_TOKEN} WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $1) \
             ORDER BY created_at, id"
        )))
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_row).collect()
    }

    /// Records that token `id` was used at `at` (Unix ms). Never moves the
    /// time back, so late writes from several processes settle on the
    /// latest.
    pub async fn touch_token(&self, id: &str, at: i64) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE api_tokens SET last_used_at = $2 WHERE id = $1 \
             AND (last_used_at IS NULL OR last_used_at < $2)",
        )
        .bind(id)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// How many tokens are live: zero on a fresh installation.
    pub async fn count_live_tokens(&self) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM api_tokens WHERE revoked_at IS NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// Revokes a token, and logs `actor` revoking it; false (and nothing
    /// logged) when there is no live token with this id.
    pub async fn revoke_token(&self, id: &str, actor: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let revoked = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $2 WHERE id = $1 AND revoked_at IS NULL \
             RETURNING id, name, secret_hash, scopes, subject, created_at, expires_at, last_used_at",
        )
        .bind(id)
        .bind(now_ms())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = revoked else {
            tx.rollback().await?;
            return Ok(false);
        };
        let token = token_row(&row)?;
        audit::record(
            &mut tx,
            actor,
            "token.revoke",
            id,
            &serde_json::json!({"subject": token.subject, "scopes": token.scopes}),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Runs not finished, per status (pending, running, waiting), for the
    /// queue-depth metric: read through the index of open runs, so a
    /// scrape costs the open runs, not the history (the literal list is
    /// what lets SQLite use that partial index).
    pub async fn count_open(&self) -> Result<Vec<(Status, i64)>, StoreError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT status, COUNT(*) FROM runs \
             WHERE status IN ('pending', 'running', 'waiting') GROUP BY status",
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

    /// Saves an uploaded plugin, replacing one of the same name, and
    /// `actor` uploading it in the audit log; `true` when the name is new.
    pub async fn save_plugin(
        &self,
        plugin: &UploadedPlugin,
        actor: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let existed: Option<String> =
            sqlx::query_scalar("SELECT name FROM uploaded_plugins WHERE name = $1")
                .bind(&plugin.name)
                .fetch_optional(&mut *tx)
                .await?;
        sqlx::query(
            "INSERT INTO uploaded_plugins (name, manifest, component, digest, uploaded_at) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (name) DO UPDATE SET \
             manifest = excluded.manifest, component = excluded.component, \
             digest = excluded.digest, uploaded_at = excluded.uploaded_at",
        )
        .bind(&plugin.name)
        .bind(&plugin.manifest)
        .bind(plugin.component.clone())
        .bind(&plugin.digest)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        audit::record(
            &mut tx,
            actor,
            "plugin.upload",
            &plugin.name,
            &serde_json::json!({ "sha256": plugin.digest }),
        )
        .await?;
        tx.commit().await?;
        Ok(existed.is_none())
    }

    /// Every uploaded plugin, loaded at start after the configured ones.
    pub async fn uploaded_plugins(&self) -> Result<Vec<UploadedPlugin>, StoreError> {
        let rows = sqlx::query(
            "SELECT name, manifest, component, digest FROM uploaded_plugins ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(UploadedPlugin {
                    name: r.try_get("name")?,
                    manifest: r.try_get("manifest")?,
                    component: r.try_get("component")?,
                    digest: r.try_get("digest")?,
                })
            })
            .collect()
    }

    pub async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT value FROM plugin_kv WHERE plugin = $1 AND key = $2")
                .bind(plugin)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn kv_set(&self, plugin: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO plugin_kv (plugin, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value",
        )
        .bind(plugin)
        .bind(key)
        .bind(value.to_vec())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn kv_delete(&self, plugin: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM plugin_kv WHERE plugin = $1 AND key = $2")
            .bind(plugin)
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
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
    })
}

fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

const SELECT_TOKEN: &str = "SELECT id, name, secret_hash, scopes, subject, created_at, expires_at, \
                            last_used_at FROM api_tokens";

fn token_row(r: &sqlx::any::AnyRow) -> Result<StoredToken, StoreError> {
    let name: String = r.try_get("name")?;
    let scopes: String = r.try_get("scopes")?;
    let subject: Option<String> = r.try_get("subject")?;
    let expires_at: Option<i64> = r.try_get("expires_at")?;
    let last_used_at: Option<i64> = r.try_get("last_used_at")?;
    Ok(StoredToken {
        id: r.try_get("id")?,
        // Migration 14 gave older tokens this subject; kept here too so a
        // row written without one still names a principal.
        subject: subject.unwrap_or_else(|| format!("svc:{name}")),
        name,
        secret_hash: r.try_get("secret_hash")?,
        scopes: scopes
            .split(',')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect(),
        created_at: to_time(r.try_get("created_at")?),
        expires_at: expires_at.map(to_time),
        last_used_at: last_used_at.map(to_time),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A new run of version 1 of workflow `demo`, unleased and keyless.
    fn demo_run<'a>(id: &'a str, input: &'a Value) -> NewRun<'a> {
        NewRun {
            id,
            workflow: "demo",
            version: 1,
            input,
            idempotency_key: None,
            started_by: None,
            lease: None,
            placement: Placement::default(),
        }
    }

    /// The plan `pool`'s session makes for `sql`, a statement with
    /// parameters of `types`, given `args` (SQL literals).
    async fn plan(pool: &AnyPool, sql: &str, types: &[&str], args: &[&str]) -> String {
        use sqlx::Executor as _;
        let mut conn = pool.acquire().await.unwrap();
        conn.execute(sqlx::AssertSqlSafe(format!(
            "PREPARE probe ({}) AS {sql}",
            types.join(", ")
        )))
        .await
        .unwrap();
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "EXPLAIN EXECUTE probe ({})",
            args.join(", ")
        )))
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        conn.execute("DEALLOCATE probe").await.unwrap();
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).unwrap())
            .collect::<Vec<_>>()
            .join("\n")
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

    /// A young table (a few rows, no statistics yet) is where PostgreSQL
    /// plans a scan of `runs` (the general pool's plan for the append is a
    /// hash join over a sequential scan here); the hot pool's plans, made
    /// once and kept while the table grows, must read it by index all the
    /// same.
    #[tokio::test]
    async fn on_postgresql_the_hot_statements_read_runs_by_index_on_a_young_table() {
        let Some(url) = std::env::var("STEWARD_TEST_DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            eprintln!("skipped: STEWARD_TEST_DATABASE_URL is not set");
            return;
        };
        let schema = format!("unit_hot_plans_{}", std::process::id());
        let options = StoreOptions {
            schema: Some(schema.clone()),
            ..StoreOptions::default()
        };
        let store = Store::open(&url, options).await.unwrap();
        let input = serde_json::json!({});
        for id in ["r1", "r2", "r3"] {
            store.create_run(demo_run(id, &input)).await.unwrap();
        }

        let claim = claim_free_sql(Backend::Postgres, 1);
        let claim_types = ["text", "bigint", "bigint", "bigint", "text"];
        let claim_args = ["'w1'", "2", "1", "64", "''"];
        let rows = 64;
        let append = writer::append_sql(Backend::Postgres, rows);
        let append_types: Vec<&str> = (0..rows).flat_map(|_| writer::append_types()).collect();
        let append_args: Vec<&str> = (0..rows)
            .flat_map(|r| {
                let id = if r < 3 { "'r1'" } else { "NULL" };
                [id, "'running'", "NULL", "NULL", "1", "NULL", "NULL", "0"]
                    .into_iter()
                    .chain(["NULL", "NULL", "NULL", "NULL"])
            })
            .collect();

        for (what, sql, types, args) in [
            ("claim", &claim, &claim_types[..], &claim_args[..]),
            ("append", &append, &append_types[..], &append_args[..]),
        ] {
            let hot = plan(&store.hot, sql, types, args).await;
            assert!(
                !hot.contains("Seq Scan on runs") && !hot.contains("Hash Join"),
                "the hot pool's {what} plan scans runs:\n{hot}"
            );
            assert!(hot.contains("Index"), "{what}:\n{hot}");
        }
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA {} CASCADE",
            quote_ident(&schema)
        )))
        .execute(&store.pool)
        .await
        .unwrap();
    }
}
