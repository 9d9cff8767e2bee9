//! Opening a store: the database URL, the pools (each connection set up
//! with `dialect::session` before its first statement), the writer and
//! migrations. What only a PostgreSQL server has is set up here too: TLS,
//! a schema, a second pool for the hot statements, announcements.
//!
//! TLS to PostgreSQL is sqlx's (rustls with ring, already built for the
//! HTTP client, and the webpki roots), driven by the URL's `sslmode`;
//! `Store::open` checks that an `sslrootcert` can be read before
//! connecting, since sqlx reads it only mid-handshake.

use std::time::Duration;

use sqlx::AnyPool;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};

use crate::{Backend, Store, StoreError, announce, dialect, health, migrate, writer};

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

/// Connections of the hot pool on PostgreSQL: the writer, a claim and a
/// renewal at a time, and one to spare.
const HOT_CONNECTIONS: u32 = 4;

/// How long opening a store waits for PostgreSQL to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens a pool whose connections each run `session` (see
/// [`dialect::session`]) before their first statement.
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
    session: Vec<String>,
) -> Result<AnyPool, StoreError> {
    let session: std::sync::Arc<[String]> = session.into();
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
                for statement in session.iter() {
                    conn.execute(sqlx::AssertSqlSafe(statement.as_str()))
                        .await?;
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

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl Store {
    /// A transaction that will write, begun as [`dialect::begin_write`]
    /// says: on SQLite one that reads before it writes would otherwise fail
    /// at once when another connection committed in between, which the
    /// API would answer 503.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match dialect::begin_write(self.backend) {
            Some(begin) => self.pool.begin_with(begin).await?,
            None => self.pool.begin().await?,
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
            sqlx::query(sqlx::AssertSqlSafe(dialect::create_schema(schema)))
                .execute(&pool)
                .await?;
            pool.close().await;
        }
        let max = options
            .max_connections
            .unwrap_or(dialect::default_max_connections(backend));
        let session =
            |hot| dialect::session(backend, options.sqlite_sync, options.schema.as_deref(), hot);
        let pool = connect_pool(connect.clone(), max, session(false)).await?;
        // SQLite has one writer: the hot statements share the pool.
        let hot = if backend == Backend::Postgres {
            connect_pool(connect, HOT_CONNECTIONS, session(true)).await?
        } else {
            pool.clone()
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
}
