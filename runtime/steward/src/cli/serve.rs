//! `steward serve`: opens the store, loads plugins and workflows, starts
//! the worker and the API.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use steward::api::{AppState, health_router, router};
use steward::auth::{Authenticator, ENV_ADMIN_SUBJECT, NewToken, issue_token};
use steward::catalog::Catalog;
use steward::config::Config;
use steward::executor::Executor;
use steward::groups::Groups;
use steward::hooks::Hooks;
use steward::plugins::{add_uploaded, load_plugins};
use steward::schedule::{Scheduler, SchedulerHandle, SchedulerOptions};
use steward::store::{SqliteSync, Store, StoreOptions};
use steward::store_kv::StoreKeyValue;
use steward::worker::{self, WorkerOptions};
use steward::workflow::load_dir;

/// Which parts of the runtime a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// `steward serve`: the API, and executing runs, timers and schedules.
    Both,
    /// `steward serve --no-worker`: the API only; runs are created for
    /// the `steward worker` processes sharing the database.
    ApiOnly,
    /// `steward worker`: executing only (plus `/healthz` and `/metrics`
    /// when given a port).
    WorkerOnly,
}

/// Starts the server (or, by `role`, its API or its worker half) and runs
/// until SIGTERM or Ctrl-C.
pub async fn serve(config: &Config, role: Role) -> anyhow::Result<ExitCode> {
    private_data_dir(&config.data_dir)?;
    let hooks = Hooks::from_config(config)?;
    let calendars = config.calendars()?;
    // Checked before opening: opening SQLite drops the leases of a
    // previous process, which would be the running server's.
    let database = config.database();
    let postgres = database.starts_with("postgres://") || database.starts_with("postgresql://");
    if role != Role::Both && !postgres {
        bail!(
            "`steward worker` and `steward serve --no-worker` need PostgreSQL (database = \"postgres://...\"): \
             with SQLite, one `steward serve` is the only process"
        );
    }
    let store = open_store(config).await?;
    let kv = Arc::new(StoreKeyValue::new(store.clone()));
    let mut set = load_plugins(config, kv, true)?;
    add_uploaded(&mut set, config, &store.uploaded_plugins().await?);
    for warning in &set.warnings {
        tracing::warn!("{warning}");
    }
    for note in &set.notes {
        tracing::info!("{note}");
    }
    let catalog = Arc::new(Catalog::new(store.clone(), set.names()));
    for problem in catalog.restore().await? {
        tracing::error!("{problem}");
    }
    // Every folder is read before anything deploys: a workflow's
    // sub-workflows may sit in any of them.
    let mut loaded = Vec::new();
    for dir in &config.workflows {
        if !dir.exists() {
            tracing::warn!(
                "workflow folder {} does not exist: nothing loaded from it",
                dir.display()
            );
            continue;
        }
        for result in load_dir(dir, &catalog.plugins()).map_err(anyhow::Error::msg)? {
            match result {
                Ok(w) => loaded.push(Arc::new(w)),
                Err(errors) => tracing::error!("workflow not loaded:\n{errors}"),
            }
        }
    }
    let mut valid = Vec::new();
    for w in &loaded {
        let problems = catalog.link_errors(w, &loaded).await?;
        if problems.is_empty() {
            valid.push(w.clone());
        } else {
            let lines: Vec<String> = problems.iter().map(|e| e.to_string()).collect();
            tracing::error!("workflow not loaded:\n{}", lines.join("\n"));
        }
    }
    for w in valid {
        let file = w.file.clone();
        let (name, version) = (w.name.clone(), w.version);
        match catalog.deploy(w, steward::auth::SYSTEM_ACTOR).await {
            Ok((w, _)) => {
                tracing::info!(workflow = %w.name, version = w.version, "loaded {file}")
            }
            Err(e) => {
                tracing::error!("{file}: not deployed: {e}");
                // Keep serving what was deployed under that version.
                if let Ok(Some(_)) = catalog.version(&name, version).await {
                    tracing::warn!("{name} version {version} keeps its deployed definition");
                }
            }
        }
    }
    for workflow in catalog.list() {
        if let Some(name) = workflow.sla.as_ref().and_then(|s| s.calendar.as_ref())
            && !calendars.contains_key(name)
        {
            tracing::warn!(
                "workflow {}: sla.calendar {name} is not defined: add [calendars.{name}] to steward.toml; \
                 until then its SLA clock runs around the clock",
                workflow.name
            );
        }
    }
    for (name, hook) in hooks.iter() {
        if let steward::hooks::HookTarget::Workflow(workflow) = &hook.target
            && catalog.latest(workflow).is_none()
        {
            tracing::warn!(
                "[hooks.{name}] starts workflow {workflow}, which is not deployed: deliveries get 404 until it is",
            );
        }
    }
    let groups = Groups::new(config.groups.clone()).with_identity_provider_groups(
        config
            .auth
            .roles
            .values()
            // Without a provider nobody is a member through it.
            .filter(|_| config.auth.oidc.is_some())
            .flat_map(|role| role.approver_groups.iter().cloned()),
    );
    groups.refresh(&store).await?;
    groups.spawn_refresh(store.clone(), std::time::Duration::from_secs(2));
    let executor = Executor::new(set.engine.clone(), config.env_json())
        .with_groups(groups.clone())
        .with_calendars(calendars.clone())
        .with_default_retry(config.defaults.retry.policy())
        .with_for_each_max_items(config.defaults.for_each_max_items)
        .with_max_workflow_depth(config.defaults.max_workflow_depth);
    let executes = role != Role::ApiOnly;
    let options = WorkerOptions {
        lease: std::time::Duration::from_millis(config.worker.lease_ms.max(100)),
        poll: std::time::Duration::from_millis(config.worker.poll_ms.clamp(10, 60_000)),
        // Capacity 0: runs are created unleased and left to the workers.
        capacity: if executes {
            config.worker.capacity.max(1)
        } else {
            0
        },
        tags: worker_tags(config)?,
        ..WorkerOptions::default()
    };
    if executes {
        for workflow in catalog.list() {
            if !workflow.tags.iter().all(|t| options.tags.contains(t)) {
                tracing::info!(
                    "workflow {} requires worker tags [{}]; this process has [{}]: its runs wait for a \
                     worker started with those tags",
                    workflow.name,
                    workflow.tags.join(", "),
                    options.tags.join(", ")
                );
            }
        }
    }
    let worker = worker::spawn(store.clone(), executor, catalog.clone(), options);
    let scheduler = if executes {
        Scheduler::new(
            store.clone(),
            catalog.clone(),
            worker.clone(),
            SchedulerOptions {
                grace: std::time::Duration::from_millis(config.scheduler.grace_ms),
                ..SchedulerOptions::default()
            },
        )
        .spawn()
    } else {
        SchedulerHandle::detached()
    };
    // Off the request path: a task of each executing process.
    let retention = match config.retention.runs {
        Some(keep) if executes => Some(steward::store::retention::spawn(store.clone(), keep)),
        _ => None,
    };
    let mut auth = Authenticator::new(store.clone(), config.admin_token.as_deref());
    if let Some(oidc) = &config.auth.oidc {
        auth = auth.with_oidc(steward::oidc::Oidc::new(
            oidc.clone(),
            config.auth.roles.clone(),
        )?);
    }
    if role != Role::WorkerOnly {
        bootstrap_admin_token(config, &store).await?;
    }
    let state = Arc::new(AppState {
        auth,
        store: store.clone(),
        catalog,
        worker: worker.clone(),
        limits: config.api,
        hooks,
        engine: set.engine.clone(),
        config: Arc::new(config.clone()),
        calendars: Arc::new(calendars),
        scheduler: scheduler.clone(),
        groups,
    });
    let (app, listen) = match role {
        Role::WorkerOnly => (
            config.worker.listen.as_ref().map(|_| health_router(state)),
            config.worker.listen.clone(),
        ),
        _ => (Some(router(state)), Some(config.listen.clone())),
    };
    match (app, listen) {
        (Some(app), Some(listen)) => {
            let listener = tokio::net::TcpListener::bind(&listen)
                .await
                .with_context(|| {
                    format!(
                        "cannot listen on {listen}: is another server running? set listen or STEWARD_LISTEN \
                         ([worker] listen for a worker)"
                    )
                })?;
            tracing::info!(
                "steward {} on http://{}",
                if role == Role::WorkerOnly {
                    "worker, health and metrics"
                } else {
                    "listening"
                },
                listener.local_addr()?
            );
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown_signal())
                .await?;
        }
        _ => {
            tracing::info!(
                "steward worker running (no port: set [worker] listen for /healthz and /metrics)"
            );
            shutdown_signal().await;
        }
    }
    scheduler.stop();
    if let Some(retention) = retention {
        retention.abort();
    }
    let grace = std::time::Duration::from_millis(config.worker.shutdown_grace_ms);
    let handed_back = worker.shutdown(grace).await;
    if handed_back > 0 {
        tracing::warn!(
            "{handed_back} runs still had plugin calls in flight after {grace:?}: handed back, \
             those calls will run again under the same idempotency key"
        );
    }
    store.close().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

pub async fn open_store(config: &Config) -> anyhow::Result<Store> {
    let sqlite_sync = match config.sqlite_synchronous.as_str() {
        "full" => SqliteSync::Full,
        "normal" => SqliteSync::Normal,
        other => bail!("sqlite_synchronous = {other:?}: use \"full\" or \"normal\""),
    };
    let options = StoreOptions {
        sqlite_sync,
        schema: config.database_schema.clone(),
        max_connections: None,
    };
    let database = config.database();
    // Before the database followed data_dir, a data_dir without a database
    // still kept it at ./steward-data/steward.db: rather than start on an
    // empty one beside it, say where the old one is.
    let moved_from = std::path::Path::new("steward-data/steward.db");
    if config.database.is_none()
        && config.data_dir != std::path::Path::new("steward-data")
        && moved_from.exists()
        && !config.data_dir.join("steward.db").exists()
    {
        bail!(
            "the database is now {} (database defaults to steward.db in data_dir), but {} holds \
             one from an older steward: move it (with its -wal and -shm files) to data_dir, or set \
             database = \"sqlite://steward-data/steward.db\" to keep it where it is",
            config.data_dir.join("steward.db").display(),
            moved_from.display()
        );
    }
    let store = Store::open(&database, options).await.with_context(|| {
        format!(
            "cannot open the database {}",
            steward::config::redact_url(&database)
        )
    })?;
    if store.backend() == steward::store::Backend::Sqlite {
        // SQLite has one server process: leases left by a killed one are stale.
        store.release_all_leases().await?;
    }
    Ok(store)
}

/// Ctrl-C or SIGTERM (what service managers send) stops accepting requests;
/// then the worker drains (see `WorkerHandle::shutdown`).
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down");
}

/// `[worker] tags` (or `--tags`), checked: a bad tag stops the start.
fn worker_tags(config: &Config) -> anyhow::Result<Vec<String>> {
    let mut tags = config.worker.tags.clone();
    for tag in &tags {
        steward::workflow::check_tag(tag)
            .map_err(|e| anyhow::anyhow!("[worker] tags / --tags: {e}"))?;
    }
    tags.sort();
    tags.dedup();
    if tags.len() > steward::workflow::MAX_TAGS {
        anyhow::bail!(
            "[worker] tags / --tags: at most {} tags",
            steward::workflow::MAX_TAGS
        );
    }
    Ok(tags)
}

/// A fresh installation without `STEWARD_ADMIN_TOKEN` gets one admin token,
/// written to `DATA_DIR/admin-token` (readable by its owner only), so the
/// API is never open and never locked.
async fn bootstrap_admin_token(config: &Config, store: &Store) -> anyhow::Result<()> {
    if config.admin_token.is_some() || store.count_live_tokens().await? > 0 {
        return Ok(());
    }
    let (_, secret) = issue_token(
        store,
        NewToken {
            name: "bootstrap admin",
            subject: ENV_ADMIN_SUBJECT.to_string(),
            scopes: vec!["admin".into()],
            expires_in: None,
            by: steward::auth::SYSTEM_ACTOR,
        },
    )
    .await?;
    let path = config.data_dir.join("admin-token");
    private_data_dir(&config.data_dir)?;
    write_private(&path, format!("{secret}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    tracing::warn!(
        "created an admin API token in {}: use it as `Authorization: Bearer TOKEN`, create narrower \
         tokens with POST /v1/tokens, then delete the file",
        path.display()
    );
    Ok(())
}

/// Creates `data_dir` readable by its owner only (0700, whatever the
/// umask), or narrows one that exists to that: it holds the admin token
/// and, by default, the database. A folder that cannot be changed (owned
/// by another user) is left as it is, with a warning.
fn private_data_dir(dir: &std::path::Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .with_context(|| format!("cannot create data_dir {}", dir.display()))?;
        return Ok(());
    }
    let mode = std::fs::metadata(dir)?.permissions().mode();
    if mode & 0o077 != 0
        && let Err(e) = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    {
        tracing::warn!(
            "data_dir {} is open to other users (mode {:o}) and cannot be narrowed to 0700: {e}",
            dir.display(),
            mode & 0o777
        );
    }
    Ok(())
}

/// Writes `bytes` to `path` so that no other user can ever read them: a
/// temporary file beside it is created 0600 (never existing with wider
/// permissions, not even between a write and a chmod), then renamed over
/// `path`.
fn write_private(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    match std::fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}
